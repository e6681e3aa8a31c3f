"""Hostile inputs and events, each through the CLI and the API: the issue's table, row by row.

Rows already covered elsewhere: missing/corrupt/truncated/audio-only/one-frame inputs and
empty folders (test_upscale_cli.test_input_errors), unreadable input and unwritable
output (test_upscale_cli), Ctrl-C then --resume (test_upscale_cli.test_interrupt_then_resume),
pixel formats and rotation (test_video_io), malicious pickles and truncated or wrong-shape
safetensors (test_weights). This file adds the rest.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import signal
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from zsm.cli import main
from zsm.errors import InputError, OutputError, WeightsError
from zsm.models.registry import load_model
from zsm.upscale import upscale_video
from zsm.video.encode import VideoWriter
from zsm.video.io import iter_frames, probe, write_png

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture
def cli(video_tiny_weights, capsys):
    """``zsm upscale SRC -o DST ...`` in process; (exit code, stderr)."""

    def run(src: Path | str, dst: Path | str, *extra: str) -> tuple[int, str]:
        argv = ["upscale", str(src), "-o", str(dst), "--device", "cpu", "--threads", "1"]
        argv += ["--weights", str(video_tiny_weights), "--window", "4", "--quiet", *extra]
        code = main(argv)
        return code, capsys.readouterr().err

    return run


def _listing(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


def _one_line_error(err: str, pattern: str) -> None:
    assert err.count("\n") == 1 and err.startswith("zsm: error: "), err
    assert "Traceback" not in err and re.search(pattern, err), err


# --- inputs that are not videos -------------------------------------------------------------


def _zero_bytes(tmp: Path) -> Path:
    (tmp / "empty.mp4").write_bytes(b"")
    return tmp / "empty.mp4"


def _random_bytes(tmp: Path) -> Path:
    (tmp / "random.mp4").write_bytes(np.random.default_rng(1).bytes(20000))
    return tmp / "random.mp4"


def _image_as_video(tmp: Path) -> Path:
    write_png(tmp / "still.png", np.zeros((8, 8, 3), np.uint8))
    return tmp / "still.png"


def _jpeg_named_mp4(tmp: Path) -> Path:
    from PIL import Image

    Image.fromarray(np.full((8, 8, 3), 90, np.uint8)).save(tmp / "photo.jpg")
    (tmp / "photo.jpg").rename(tmp / "photo.mp4")
    return tmp / "photo.mp4"


def _folder_with_non_image(tmp: Path) -> Path:
    folder = tmp / "frames"
    folder.mkdir()
    write_png(folder / "1.png", np.zeros((8, 8, 3), np.uint8))
    (folder / "2.png").write_bytes(b"not a png at all")
    write_png(folder / "3.png", np.zeros((8, 8, 3), np.uint8))
    return folder


def _folder_with_mixed_sizes(tmp: Path) -> Path:
    folder = tmp / "frames"
    folder.mkdir()
    write_png(folder / "1.png", np.zeros((8, 8, 3), np.uint8))
    write_png(folder / "2.png", np.zeros((8, 8, 3), np.uint8))
    write_png(folder / "10.png", np.zeros((8, 12, 3), np.uint8))
    return folder


NOT_VIDEOS = {
    "zero-byte file": (_zero_bytes, r"cannot read .*empty\.mp4: not a video PyAV can decode"),
    "random bytes": (_random_bytes, r"cannot (read|decode) .*random\.mp4"),
    "image as video": (_image_as_video, r"still\.png is a still image .*no video stream"),
    "jpeg named .mp4": (_jpeg_named_mp4, r"photo\.mp4 is a still image .*no video stream"),
    "non-image in folder": (_folder_with_non_image, r"2\.png.* not a decodable image"),
    "mixed frame sizes": (_folder_with_mixed_sizes, r"10\.png.*differs from the first"),
}


@pytest.mark.parametrize("case", NOT_VIDEOS)
def test_not_a_video_cli(tmp_path, cli, case: str) -> None:
    make, pattern = NOT_VIDEOS[case]
    src = make(tmp_path)
    before = _listing(tmp_path)
    code, err = cli(src, tmp_path / "out.mp4")
    assert code == 2
    _one_line_error(err, pattern)
    assert _listing(tmp_path) == before


@pytest.mark.parametrize("case", NOT_VIDEOS)
def test_not_a_video_api(tmp_path, video_tiny_model, case: str) -> None:
    make, pattern = NOT_VIDEOS[case]
    src = make(tmp_path)
    before = _listing(tmp_path)
    with pytest.raises(InputError, match=pattern):
        upscale_video(src, tmp_path / "out.mp4", model=video_tiny_model, device="cpu")
    assert _listing(tmp_path) == before


# --- lengths, rates and sizes ---------------------------------------------------------------


@pytest.mark.parametrize("frames", [2, 3, 5])
def test_short_and_odd_lengths_double(tmp_path, video_make_clip, cli, frames: int) -> None:
    src = video_make_clip(f"n{frames}.mp4", frames=frames)
    code, err = cli(src, tmp_path / "out.mp4")
    assert code == 0, err
    info = probe(tmp_path / "out.mp4")
    assert len(list(iter_frames(info))) == 2 * frames
    assert info.fps == 50 and (info.width, info.height) == (96, 64)


def _vfr_clip(path: Path, pts: list[int]) -> Path:
    """H.264 in MP4 with irregular timestamps (time base 1/100 s)."""
    with av.open(str(path), "w") as c:
        v = c.add_stream("libx264", rate=25)
        v.width, v.height, v.pix_fmt = 24, 16, "yuv420p"
        v.codec_context.time_base = Fraction(1, 100)
        for i, t in enumerate(pts):
            img = np.zeros((16, 24, 3), np.uint8)
            img[:, (3 * i) % 24 :, 1] = 200
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts, frame.time_base = t, Fraction(1, 100)
            c.mux(v.encode(frame))
        c.mux(v.encode(None))
    return path


def test_variable_frame_rate(tmp_path, cli, video_tiny_model) -> None:
    """VFR in: 2n frames out at twice the average rate, spanning the same time."""
    pts = [0, 4, 8, 20, 24, 40, 44]  # gaps of 40 ms, 120 ms and 160 ms
    src = _vfr_clip(tmp_path / "vfr.mp4", pts)
    src_info = probe(src)
    code, err = cli(src, tmp_path / "out.mp4")
    assert code == 0, err
    out = probe(tmp_path / "out.mp4")
    assert len(list(iter_frames(out))) == 2 * len(pts)
    assert out.fps == 2 * src_info.fps
    assert src_info.duration is not None and out.duration is not None
    assert abs(out.duration - src_info.duration) <= 1 / float(src_info.fps) + 1e-6
    api = upscale_video(src, tmp_path / "api.mp4", model=video_tiny_model, device="cpu")
    assert api.output_frames == 2 * len(pts)


@pytest.mark.parametrize("size", [(1, 1), (3, 5), (15, 15), (7, 2)])
def test_tiny_frames(tmp_path, cli, video_tiny_model, size: tuple[int, int]) -> None:
    """Frames smaller than the network's stride: padded inside, cropped back to exactly 4x."""
    h, w = size
    folder = tmp_path / "in"
    folder.mkdir()
    rng = np.random.default_rng(h * 100 + w)
    for i in range(3):
        write_png(folder / f"{i}.png", rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    code, err = cli(folder, f"{tmp_path}/cli/")
    assert code == 0, err
    frames = list(iter_frames(probe(tmp_path / "cli")))
    assert len(frames) == 6 and all(f.shape == (4 * h, 4 * w, 3) for f in frames)
    upscale_video(folder, f"{tmp_path}/api/", model=video_tiny_model, device="cpu")
    api = list(iter_frames(probe(tmp_path / "api")))
    assert all(np.array_equal(a, b) for a, b in zip(api, frames, strict=True))


def test_odd_size_video(tmp_path, video_make_clip, cli) -> None:
    src = video_make_clip("odd.mkv", frames=3, width=15, height=9, codec="ffv1", pix_fmt="yuv444p")
    code, err = cli(src, f"{tmp_path}/out/")
    assert code == 0, err
    frames = list(iter_frames(probe(tmp_path / "out")))
    assert len(frames) == 6 and frames[0].shape == (36, 60, 3)


@pytest.mark.parametrize(
    "codec,pix_fmt,ext",
    [
        ("libx264", "yuv420p10le", "mp4"),
        ("ffv1", "gray", "mkv"),
        ("png", "rgba", "mov"),
        ("libvpx-vp9", "yuva420p", "webm"),
    ],
)
def test_deep_gray_and_alpha_inputs_upscale(
    tmp_path, video_make_clip, cli, caplog, codec: str, pix_fmt: str, ext: str
) -> None:
    """10-bit, gray and alpha inputs go all the way through to a playable 8-bit output."""
    src = video_make_clip(f"in.{ext}", frames=3, codec=codec, pix_fmt=pix_fmt)
    with caplog.at_level(logging.WARNING, logger="zsm"):
        code, err = cli(src, tmp_path / "out.mp4")
    assert code == 0, err
    out = probe(tmp_path / "out.mp4")
    assert out.pix_fmt == "yuv420p" and len(list(iter_frames(out))) == 6
    if pix_fmt in ("rgba", "yuva420p"):
        assert "alpha channel" in caplog.text and "it is dropped" in caplog.text


# --- output failures --------------------------------------------------------------------------


class _DiskFillsUp:
    """Stands in for an output container whose disk fills up after ``room`` mux calls."""

    def __init__(self, container: av.container.OutputContainer, room: int) -> None:
        self._container, self._room = container, room

    def mux(self, packets: object) -> None:
        if self._room <= 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self._room -= 1
        self._container.mux(packets)

    def __getattr__(self, name: str) -> object:
        return getattr(self._container, name)


@pytest.fixture
def disk_full(monkeypatch):
    original = VideoWriter.__init__

    def init(self, *args, **kwargs) -> None:
        original(self, *args, **kwargs)
        self.container = _DiskFillsUp(self.container, room=2)

    monkeypatch.setattr(VideoWriter, "__init__", init)


@pytest.mark.usefixtures("disk_full")
def test_disk_full_video_output(tmp_path, video_make_clip, cli, video_tiny_model) -> None:
    src = video_make_clip(frames=12)
    code, err = cli(src, tmp_path / "out.mp4")
    assert code == 2
    _one_line_error(err, r"no space left on device while writing")
    assert _listing(tmp_path) == {"clip.mp4"}
    with pytest.raises(OutputError, match="no space left"):
        upscale_video(src, tmp_path / "out.mp4", model=video_tiny_model, device="cpu")
    assert _listing(tmp_path) == {"clip.mp4"}


def test_disk_full_png_output(tmp_path, video_make_clip, cli, monkeypatch) -> None:
    import zsm.video.job as job

    written = {"n": 0}
    real = job.write_png

    def write_png_until_full(path, rgb) -> None:
        written["n"] += 1
        if written["n"] > 3:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        real(path, rgb)

    monkeypatch.setattr(job, "write_png", write_png_until_full)
    src = video_make_clip(frames=6)
    code, err = cli(src, f"{tmp_path}/frames/")
    assert code == 2
    _one_line_error(err, r"no space left on device")
    assert _listing(tmp_path) == {"clip.mp4"}


# --- SIGTERM --------------------------------------------------------------------------------


def test_sigterm_mid_run_then_resume(tmp_path, video_make_clip, video_tiny_weights) -> None:
    """A real process gets SIGTERM while it works: exit 143, nothing under the output name,
    the finished segments kept; ``--resume`` then completes the same output."""
    src = video_make_clip(frames=40)
    dst = tmp_path / "out.mp4"
    work = tmp_path / ".out.mp4.zsm-work"
    args = [sys.executable, "-m", "zsm", "upscale", str(src), "-o", str(dst), "--quiet"]
    args += ["--weights", str(video_tiny_weights), "--device", "cpu", "--threads", "1"]
    args += ["--window", "4", "--tile", "16", "--segment-seconds", "0"]
    proc = subprocess.Popen(args, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not list(work.glob("seg*")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    if proc.poll() is not None:
        pytest.fail(f"finished before it could be stopped: {proc.stderr.read()}")
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 143, err
    assert err.count("\n") == 1 and "Traceback" not in err, err  # one line, with the way on
    assert re.match(r"zsm: terminated \(SIGTERM\); \d+ finished output frames kept in ", err)
    assert err.rstrip().endswith("rerun with --resume to continue"), err
    assert not dst.exists()
    assert not [p for p in tmp_path.iterdir() if ".part" in p.name]  # temporary files removed
    assert (work / "manifest.json").is_file()
    done = subprocess.run([*args, "--resume"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert len(list(iter_frames(probe(dst)))) == 80 and not work.exists()


# --- weights ---------------------------------------------------------------------------------


def test_weights_of_another_preset_are_named(tmp_path, video_make_clip, video_tiny_model, capsys):
    """A file whose tensors belong to another configuration than its metadata states."""
    import json

    from safetensors import safe_open
    from safetensors.torch import save_file

    from zsm import save_weights

    good = save_weights(video_tiny_model, tmp_path / "tiny.safetensors")
    with safe_open(str(good), "pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    config = json.loads(meta["zsm.config"])
    meta["zsm.config"] = json.dumps({**config, "nf": 16})  # claims another size
    bad = tmp_path / "claims-nf16.safetensors"
    save_file(tensors, str(bad), metadata=meta)
    with pytest.raises(WeightsError, match=r"claims-nf16\.safetensors.*shape"):
        load_model(bad)
    src = video_make_clip(frames=3)
    code = main(["upscale", str(src), "-o", str(tmp_path / "o.mp4"), "--weights", str(bad)])
    assert code == 2
    _one_line_error(capsys.readouterr().err, r"claims-nf16\.safetensors.*shape")
    assert not (tmp_path / "o.mp4").exists()


# --- bad option values: one line, never the usage or a traceback -----------------------------

BAD_OPTIONS = {
    "--time-factor 0": (["upscale", "in.mp4", "-o", "o.mp4", "--time-factor", "0"], "must be >= 1"),
    "--fps -1": (["upscale", "in.mp4", "-o", "o.mp4", "--fps", "-1"], "must be > 0"),
    "--fps abc": (["upscale", "in.mp4", "-o", "o.mp4", "--fps", "abc"], "not a frame rate"),
    "--segment-seconds -1": (
        ["upscale", "in.mp4", "-o", "o.mp4", "--segment-seconds", "-1"],
        "must be >= 0",
    ),
    "--segment-seconds nan": (
        ["upscale", "in.mp4", "-o", "o.mp4", "--segment-seconds", "nan"],
        "finite",
    ),
    "no -o": (["upscale", "in.mp4"], "required: -o/--output"),
    "ui --port 70000": (["ui", "--port", "70000"], "must be 1 to 65535"),
    "ui --max-upload-mb nan": (["ui", "--max-upload-mb", "nan"], "finite"),
    "train --stop-after -1": (["train", "x.toml", "--stop-after", "-1"], "must be >= 0"),
    "benchmark --size": (["benchmark", "--size", "16by12"], "WIDTHxHEIGHT"),
    "unknown command": (["upscal"], "invalid choice: 'upscal'"),
}


@pytest.mark.parametrize("case", BAD_OPTIONS)
def test_bad_option_values_are_one_line(capsys, case: str) -> None:
    argv, message = BAD_OPTIONS[case]
    with pytest.raises(SystemExit) as stop:
        main(argv)
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and ": error: " in err and "usage:" not in err, err
    assert message in err and err.rstrip().endswith("--help)"), err


def test_option_the_library_refuses_is_one_line(tmp_path, video_make_clip, cli) -> None:
    src = video_make_clip(frames=3)
    code, err = cli(src, tmp_path / "out.mp4", "--ray=")
    assert code == 2
    _one_line_error(err, r"ray must be a cluster address")


def test_encoder_that_refuses_the_settings(tmp_path, video_make_clip, cli) -> None:
    """mjpeg exists and fits MKV but will not open for yuv420p: said before any work."""
    src = video_make_clip(frames=3)
    code, err = cli(src, tmp_path / "out.mkv", "--codec", "mjpeg")
    assert code == 2
    _one_line_error(err, r"the mjpeg encoder refuses 96x64 yuv420p video.*another --codec")
    assert _listing(tmp_path) == {"clip.mp4"}
