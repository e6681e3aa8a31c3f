"""``zsm ui``: the job queue, the work folder, the launcher, the app through gradio_client,
and the page in a real headless Chromium (tiny random weights, clips of a few frames).

The server and browser tests need the ``ui`` extra (and Selenium with Debian's
``chromium``/``chromedriver`` for the browser); without them they are skipped with
the reason, shown in pytest's summary.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest

from zsm.cli import main
from zsm.errors import Cancelled, InputError, OutputError
from zsm.ui import text
from zsm.ui.files import Sweeper, WorkFolder, check_upload
from zsm.ui.jobs import JobQueue, JobState
from zsm.ui.server import INSTALL_HINT, is_loopback
from zsm.video.io import iter_frames, probe
from zsm.video.progress import Progress

pytestmark = [
    pytest.mark.usefixtures("single_thread"),
    # Gradio 6.31's queue statistics use pandas options that pandas 3 deprecates.
    pytest.mark.filterwarnings("ignore:.*no_silent_downcasting:Warning"),
    pytest.mark.filterwarnings("ignore:The copy keyword is deprecated:Warning"),
]


def _wait_until(condition, timeout: float = 20.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


# --- the job queue (no Gradio) ---------------------------------------------------------------


def test_queue_runs_one_job_at_a_time_per_device_in_order() -> None:
    queue = JobQueue()
    active: dict[str, int] = {"cpu": 0, "cuda:0": 0}
    most = dict(active)
    order: list[str] = []
    lock = threading.Lock()

    def work(name: str):
        def fn(job):
            with lock:
                active[job.device] += 1
                most[job.device] = max(most[job.device], active[job.device])
                order.append(name)
            time.sleep(0.05)
            with lock:
                active[job.device] -= 1
            return name

        return fn

    jobs = [queue.submit("cpu", work(f"cpu{i}")) for i in range(3)]
    jobs.append(queue.submit("cuda:0", work("gpu")))
    assert queue.ahead(jobs[2]) == 2  # one running, one waiting before it
    try:
        for job in jobs:
            assert job.wait(5)
        assert [j.state for j in jobs] == [JobState.DONE] * 4
        assert [j.result for j in jobs] == ["cpu0", "cpu1", "cpu2", "gpu"]
        assert most == {"cpu": 1, "cuda:0": 1}  # never two on a device ...
        assert order.index("gpu") < order.index("cpu2")  # ... but devices run side by side
    finally:
        queue.close()


def test_queue_cancel_waiting_and_running_jobs_and_survive_failures() -> None:
    queue = JobQueue()
    started = threading.Event()

    def long(job):
        started.set()
        while not job.cancel.wait(0.01):
            pass
        raise Cancelled("cancelled")

    def broken(job):
        raise RuntimeError("a bug")

    try:
        running = queue.submit("cpu", long)
        waiting = queue.submit("cpu", lambda job: "never")
        failing = queue.submit("cpu", broken)
        after = queue.submit("cpu", lambda job: "still works")
        assert started.wait(5)
        queue.cancel(waiting)
        assert waiting.state == JobState.CANCELLED and waiting.wait(0)
        queue.cancel(running)
        assert running.wait(5) and running.state == JobState.CANCELLED
        assert failing.wait(5) and failing.state == JobState.FAILED
        assert "RuntimeError: a bug" in failing.error
        assert after.wait(5) and after.result == "still works"
    finally:
        queue.close()
    with pytest.raises(RuntimeError, match="closed"):
        queue.submit("cpu", lambda job: None)


# --- the work folder, upload checks, expiry, texts -------------------------------------------


def test_upload_checks(tmp_path) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("hello")
    with pytest.raises(InputError, match=r"^notes.txt is not a video file; accepted: .*mp4"):
        check_upload(notes, 1000)
    big = tmp_path / "big.mp4"
    big.write_bytes(b"\0" * 2_000_000)
    with pytest.raises(InputError, match=r"big.mp4 is 2 MB; this app accepts uploads up to 1 MB"):
        check_upload(big, 1_000_000)
    assert check_upload(big, 3_000_000) == big


def test_expired_uploads_and_results_are_removed(tmp_path) -> None:
    work = WorkFolder.open(tmp_path / "work")
    old_upload = work.root / "abc" / "old.mp4"
    new_upload = work.root / "def" / "new.mp4"
    old_result = work.jobs / "job-1" / "old-zsm.mp4"
    busy = work.jobs / "job-2" / "busy-zsm.mp4"
    for path in (old_upload, new_upload, old_result, busy):
        path.parent.mkdir(parents=True)
        path.write_bytes(b"x")
    hour_ago = time.time() - 3600
    for path in (old_upload, old_result, busy):
        os.utime(path, (hour_ago, hour_ago))
        os.utime(path.parent, (hour_ago, hour_ago))
    sweeper = Sweeper(work, max_age=600, keep=lambda: [busy], interval=0.02).start()
    try:
        _wait_until(lambda: not old_result.exists() and not old_upload.exists(), 5, "expiry")
    finally:
        sweeper.stop()
    assert new_upload.exists() and busy.exists()  # recent, and in use by a job
    assert work.jobs.is_dir()
    work.close()  # a folder the user named is theirs: kept
    assert work.root.is_dir()
    assert WorkFolder.open(work.root).root == work.root  # the app's own: reused
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "holiday.mp4").write_bytes(b"x")
    with pytest.raises(OutputError, match="holds other files; give an empty or new folder"):
        WorkFolder.open(tmp_path / "mine")  # never sweep a folder of the user's
    owned = WorkFolder.open(None)
    assert owned.owned and owned.jobs.is_dir()
    owned.close()
    assert not owned.root.exists()


def test_texts() -> None:
    assert text.clock(75.4) == "1:15" and text.clock(3723) == "1:02:03"
    assert text.progress_line(Progress(24, 66, 3.14, 13.6)) == (
        "24/66 frames · 3.14 frames/s · 0:14 left"
    )
    assert text.progress_line(Progress(5, None, 0.0, None)) == "5 frames"
    assert text.waiting_line(1) == "waiting: 1 job ahead on this device"
    from fractions import Fraction

    from zsm.video.io import VideoInfo

    info = VideoInfo(Path("c.mp4"), False, 24, 16, Fraction(25), 10, True, "yuv420p")
    assert text.describe("c.mp4", info, 4).endswith(
        "**Output** 96x64, 100 fps, 40 frames (4x size, 4x frame rate)"
    )
    assert [factor for _, factor in text.TIME_FACTOR_CHOICES] == [2, 1, 3, 4, 8]


# --- the launcher ------------------------------------------------------------------------------


def test_ui_without_gradio_says_how_to_install(monkeypatch, capsys) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "gradio" else real(name, *a)
    )
    assert main(["ui"]) == 2
    _, err = capsys.readouterr()
    assert err == f"zsm: error: {INSTALL_HINT}\n"
    assert 'pip install -e ".[ui]"' in err


def test_ui_warns_when_listening_beyond_loopback(monkeypatch, capsys) -> None:
    from zsm.errors import ZSMError
    from zsm.ui import server

    def refuse(settings, *, host, port):  # stop before anything binds
        raise ZSMError(f"not started on {host}")

    monkeypatch.setattr(server, "start", refuse)
    assert main(["ui", "--host", "0.0.0.0"]) == 2
    _, err = capsys.readouterr()
    assert "warning: listening on 0.0.0.0: anyone who can reach this machine" in err
    assert main(["ui"]) == 2
    assert "warning" not in capsys.readouterr().err
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("example.org")


def test_ui_start_errors_are_one_line(tmp_path, capsys) -> None:
    pytest.importorskip("gradio", reason='the ui extra is not installed (pip install -e ".[ui]")')
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "holiday.mp4").write_bytes(b"x")
    cases = [
        (["--weights", str(tmp_path / "none.safetensors")], "weights file not found"),
        (["--work-dir", str(mine)], "holds other files"),
    ]
    import torch

    if not torch.cuda.is_available():
        cases.append((["--device", "cuda"], "CUDA is not available"))
    for extra, message in cases:
        assert main(["ui", *extra]) == 2, extra
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err and "Traceback" not in err
    assert [p.name for p in mine.iterdir()] == ["holiday.mp4"]  # untouched


# --- the app, through gradio_client ----------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ui(tmp_path_factory, video_tiny_weights):
    """The app on 127.0.0.1 with the tiny weights as default, CPU, 1 MB uploads."""
    pytest.importorskip("gradio", reason='the ui extra is not installed (pip install -e ".[ui]")')
    from zsm.ui.config import UiSettings
    from zsm.ui.server import start

    settings = UiSettings(
        work_dir=tmp_path_factory.mktemp("ui-work"),
        max_upload_mb=1,
        weights=(str(video_tiny_weights),),
        device="cpu",
        threads=1,
    )
    app = start(settings, port=_free_port())
    yield app
    app.close()


@pytest.fixture
def client(ui, tmp_path):
    from gradio_client import Client

    return Client(ui.url, verbose=False, download_files=str(tmp_path / "client"))


@pytest.fixture
def slow_model(monkeypatch):
    """Each window of the network takes 0.25 s more: time to watch and cancel a job."""
    from zsm.models.zsm import ZoomingSlowMo

    forward = ZoomingSlowMo.forward

    def slow(self, *args, **kwargs):
        time.sleep(0.25)
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(ZoomingSlowMo, "forward", slow)


def _job_files(ui) -> list[Path]:
    return [p for p in ui.service.work.jobs.rglob("*") if p.is_file()]


def test_api_upscales_a_clip(ui, client, video_make_clip) -> None:
    from gradio_client import handle_file

    clip = video_make_clip("clip.mp4", frames=5, width=24, height=16, fps=10)
    out = client.predict(handle_file(str(clip)), api_name="/upscale")
    info = probe(out)
    assert (info.width, info.height, info.fps) == (96, 64, 20)
    assert len(list(iter_frames(info))) == 10
    assert Path(out).name == "clip-zsm.mp4"
    # time factor 1: n frames, same rate
    out = client.predict(handle_file(str(clip)), time_factor=1, crf=30, api_name="/upscale")
    info = probe(out)
    assert (info.width, info.height, info.fps) == (96, 64, 10)
    assert len(list(iter_frames(info))) == 5


def test_api_errors_are_the_cli_line_and_the_app_goes_on(
    ui, client, video_make_clip, tmp_path, monkeypatch, capsys
) -> None:
    import httpx
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"this is not a video" * 20)
    monkeypatch.chdir(tmp_path)
    assert main(["upscale", "broken.mp4", "-o", "out.mp4", "--device", "cpu"]) == 2
    cli_line = capsys.readouterr().err.removeprefix("zsm: error: ").rstrip("\n")
    assert cli_line.startswith("cannot read broken.mp4")
    with pytest.raises(AppError) as exc:
        client.predict(handle_file(str(broken)), api_name="/upscale")
    assert str(exc.value) == cli_line

    notes = tmp_path / "notes.txt"
    notes.write_text("hello")
    with pytest.raises(AppError, match=r"^notes.txt is not a video file"):
        client.predict(handle_file(str(notes)), api_name="/upscale")
    assert not list(ui.service.work.root.rglob("notes.txt"))  # refused: not kept
    big = tmp_path / "big.mp4"
    big.write_bytes(os.urandom(1_500_000))
    with pytest.raises(ValueError, match="exceeds the maximum file size of 1000000 bytes"):
        client.predict(handle_file(str(big)), api_name="/upscale")
    # The server refuses it too, for a client that does not check first.
    response = httpx.post(
        f"{ui.url}gradio_api/upload", files={"files": ("big.mp4", big.read_bytes(), "video/mp4")}
    )
    assert response.status_code == 413
    assert not list(ui.service.work.root.rglob("big.mp4"))
    clip = video_make_clip("fine.mp4", frames=3)
    with pytest.raises(AppError, match="nope is not in the list of choices"):
        client.predict(handle_file(str(clip)), weights="nope", api_name="/upscale")
    with pytest.raises(AppError, match=r"halfway .* --time-factor 3 needs time-step weights$"):
        client.predict(handle_file(str(clip)), time_factor=3, api_name="/upscale")
    assert _job_files(ui) == [] or all(p.name.endswith("-zsm.mp4") for p in _job_files(ui))

    out = client.predict(handle_file(str(clip)), api_name="/upscale")  # still answers
    assert len(list(iter_frames(probe(out)))) == 6


def test_cancel_stops_the_job_and_leaves_no_file(ui, client, video_make_clip, slow_model) -> None:
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    before = set(_job_files(ui))
    clip = video_make_clip("long.mp4", frames=40, width=16, height=16)
    pending = client.submit(handle_file(str(clip)), api_name="/upscale")
    job = _wait_until(
        lambda: (
            (j := ui.service.latest(client.session_hash))
            and j.progress is not None
            and j.progress.done > 0
            and j
        ),
        what="the job's first frames",
    )
    assert job.state == JobState.RUNNING and job.progress.total == 80
    assert client.predict(api_name="/cancel") == "Cancelling..."
    with pytest.raises(AppError, match="cancelled"):
        pending.result(timeout=20)
    assert job.state == JobState.CANCELLED
    assert job.progress.done < 80  # stopped early, not run to the end
    assert set(_job_files(ui)) == before  # no result, no partial file, no work folder
    assert not list(ui.service.work.jobs.rglob("*.zsm-work"))
    assert client.predict(api_name="/cancel") == "Nothing to cancel."


def test_jobs_queue_one_at_a_time(ui, client, video_make_clip, slow_model, tmp_path) -> None:
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError

    other = Client(ui.url, verbose=False, download_files=str(tmp_path / "other"))
    clip = video_make_clip("q.mp4", frames=24, width=16, height=16)
    first = client.submit(handle_file(str(clip)), api_name="/upscale")
    _wait_until(
        lambda: (j := ui.service.latest(client.session_hash)) and j.state == JobState.RUNNING,
        what="the first job to run",
    )
    second = other.submit(handle_file(str(clip)), api_name="/upscale")
    waiting = _wait_until(lambda: ui.service.latest(other.session_hash), what="the second job")
    assert waiting.state == JobState.QUEUED and ui.service.ahead(waiting) == 1
    # A third waits too, and is cancelled before it starts: dropped, its folder gone.
    third = Client(ui.url, verbose=False, download_files=str(tmp_path / "third"))
    dropped = third.submit(handle_file(str(clip)), api_name="/upscale")
    job = _wait_until(lambda: ui.service.latest(third.session_hash), what="the third job")
    assert ui.service.ahead(job) == 2
    assert third.predict(api_name="/cancel") == "Cancelling..."
    with pytest.raises(AppError, match="cancelled before it started"):
        dropped.result(timeout=30)
    assert job.state == JobState.CANCELLED and not job.context.folder.exists()
    for pending in (first, second):
        assert len(list(iter_frames(probe(pending.result(timeout=30))))) == 48


# --- the page, in a real headless Chromium ------------------------------------------------------

CHROMIUM = ("/usr/bin/chromium", "/usr/bin/chromedriver")


@pytest.fixture
def browser(tmp_path):
    """Selenium driving Debian's chromium, headless; downloads go to tmp_path/downloads."""
    pytest.importorskip("selenium", reason="Selenium is not installed (the dev extra has it)")
    missing = [p for p in CHROMIUM if not os.access(p, os.X_OK)]
    if missing:
        pytest.skip(
            f"no Chromium for the browser test ({', '.join(missing)} missing): "
            "apt-get install chromium chromium-driver"
        )
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM[0]
    for arg in (
        "--headless=new",
        "--no-sandbox",  # root in a container
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1280,1150",
        "--lang=en-US",
    ):
        options.add_argument(arg)
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    options.add_experimental_option(
        "prefs",
        {"download.default_directory": str(downloads), "download.prompt_for_download": False},
    )
    # An explicit driver: Selenium Manager never looks for (or downloads) one.
    driver = webdriver.Chrome(service=Service(CHROMIUM[1]), options=options)
    driver.execute_cdp_cmd(
        "Page.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)}
    )
    driver.downloads = downloads
    yield driver
    driver.quit()


def _screenshot(driver, path: Path) -> Path:
    driver.save_screenshot(str(path))
    print(f"screenshot: {path}")
    shots = os.environ.get("ZSM_UI_SCREENSHOTS")
    if shots:  # keep them for a look after the run
        Path(shots).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(shots) / path.name)
    return path


def test_page_upload_upscale_compare_download(
    ui, browser, video_make_clip, slow_model, tmp_path
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, 30)
    clip = video_make_clip("bunny.mp4", frames=30, width=32, height=24, fps=12)
    browser.get(ui.url)
    upload = wait.until(
        ec.presence_of_element_located((By.CSS_SELECTOR, "#zsm-input input[type=file]"))
    )
    upload.send_keys(str(clip))
    info = wait.until(ec.text_to_be_present_in_element((By.ID, "zsm-info"), "Output"))
    assert info
    info_text = browser.find_element(By.ID, "zsm-info").text
    assert "32x24, 12 fps, 2.50 s, 30 frames" in info_text
    assert "128x96, 24 fps, 60 frames" in info_text
    _screenshot(browser, tmp_path / "ui-before.png")

    browser.find_element(By.ID, "zsm-start").click()
    wait.until(ec.text_to_be_present_in_element((By.ID, "zsm-result"), "frames/s"))
    _screenshot(browser, tmp_path / "ui-during.png")

    video = wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "#zsm-result video")))
    size = WebDriverWait(browser, 30).until(
        lambda d: d.execute_script(
            "const v = arguments[0]; return v.readyState >= 1 ? [v.videoWidth, v.videoHeight,"
            " v.duration] : null;",
            video,
        )
    )
    assert size[:2] == [128, 96] and abs(size[2] - 2.5) < 0.2
    wait.until(ec.text_to_be_present_in_element((By.ID, "zsm-status"), "Done: 60 frames"))
    wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "#zsm-side video")))
    wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "#zsm-sheet img")))

    wait.until(ec.element_to_be_clickable((By.ID, "zsm-download"))).click()
    got = _wait_until(
        lambda: [p for p in browser.downloads.iterdir() if p.suffix == ".mp4"],
        30,
        "the download",
    )
    assert [p.name for p in got] == ["bunny-zsm.mp4"]
    downloaded = probe(got[0])
    assert (downloaded.width, downloaded.height, downloaded.fps) == (128, 96, 24)
    assert len(list(iter_frames(downloaded))) == 60
    _screenshot(browser, tmp_path / "ui-after.png")
    # The page asked nothing of any other server (fonts, scripts, analytics).
    fetched = browser.execute_script(
        "return performance.getEntriesByType('resource').map(e => e.name)"
    )
    elsewhere = [u for u in fetched if u.startswith("http") and not u.startswith(ui.url)]
    assert fetched and elsewhere == []


def test_page_shows_a_corrupt_upload_s_error_and_goes_on(ui, browser, tmp_path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, 30)
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"this is not a video" * 20)
    browser.get(ui.url)
    upload = wait.until(
        ec.presence_of_element_located((By.CSS_SELECTOR, "#zsm-input input[type=file]"))
    )
    upload.send_keys(str(broken))
    wait.until(ec.text_to_be_present_in_element((By.ID, "zsm-info"), "zsm: error:"))
    assert "cannot read broken.mp4: not a video PyAV can decode" in (
        browser.find_element(By.ID, "zsm-info").text
    )
    browser.find_element(By.ID, "zsm-start").click()
    wait.until(ec.text_to_be_present_in_element((By.ID, "zsm-status"), "cannot read broken.mp4"))
    toast = wait.until(ec.visibility_of_element_located((By.CSS_SELECTOR, ".toast-body")))
    assert "cannot read broken.mp4" in toast.text
    _screenshot(browser, tmp_path / "ui-error.png")

    # The app goes on: the sample clip replaces the upload and is described.
    browser.find_element(By.XPATH, "//button[contains(., 'Use the sample clip')]").click()
    wait.until(ec.text_to_be_present_in_element((By.ID, "zsm-info"), "bbb-demo.mp4: 128x72"))
    assert "512x288, 25 fps, 66 frames" in browser.find_element(By.ID, "zsm-info").text
