"""``--ray``: one clip in time segments on a local Ray cluster (loopback), equal to one process;
a video output with audio; a killed worker; interrupt and resume; a folder of videos; errors.
One two-CPU cluster for the module, a tiny random model, CPU only."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

# Loopback only: Ray otherwise binds to the machine's address (this is its switch for that).
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
ray = pytest.importorskip("ray")

from zsm.cli import main  # noqa: E402
from zsm.distributed import cluster as zcluster  # noqa: E402
from zsm.engine import prepare  # noqa: E402
from zsm.errors import WeightsError  # noqa: E402
from zsm.models.descriptor import ModelDescriptor  # noqa: E402
from zsm.upscale import upscale_video  # noqa: E402
from zsm.video.io import iter_frames, probe  # noqa: E402

pytestmark = pytest.mark.usefixtures("single_thread")

FRAMES = 40
SETTINGS = dict(device="cpu", window=8, progress=False)  # 12 windows of 8 frames for 40


@pytest.fixture(scope="module")
def ray_cluster():
    """A local cluster of 2 CPUs, no GPU, on 127.0.0.1 for this module (its workers run this
    checkout: they inherit PYTHONPATH)."""
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Wrapped, below
    ray.init(
        num_cpus=2,
        num_gpus=0,
        include_dashboard=False,
        object_store_memory=80 * 1024 * 1024,
        logging_level="WARNING",
    )
    yield ray
    ray.shutdown()


class Wrapped:
    """The tiny model prepared for the CPU behind a plain callable, optionally slowed down or
    killing its worker (SIGKILL) the first time any copy of it runs."""

    def __init__(self, model, *, kill_flag: Path | None = None, sleep: float = 0.0) -> None:
        self.model = prepare(model, "cpu")
        self.descriptor = self.model.descriptor
        self.kill_flag, self.sleep = kill_flag, sleep

    def __call__(self, x):
        if self.kill_flag is not None:
            try:
                os.close(os.open(self.kill_flag, os.O_CREAT | os.O_EXCL))
            except FileExistsError:
                pass
            else:
                os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(self.sleep)
        return self.model(x)


class Blend:
    """A time-step model (any t): the blend of the nearest-upscaled neighbours at (1-t, t)."""

    descriptor = ModelDescriptor(
        scale=4, size_multiple=4, bytes_per_pixel_frame=1e3, time_steps=True
    )

    def __call__(self, x, *, times):
        up = x[0].repeat_interleave(4, -2).repeat_interleave(4, -1)
        out = []
        for k in range(x.shape[1]):
            out.append(up[k])
            if k < x.shape[1] - 1:
                out += [(1 - t) * up[k] + t * up[k + 1] for t in times[k]]
        return torch.stack(out)[None]


def _frames(folder: Path) -> list[np.ndarray]:
    return list(iter_frames(probe(folder)))


def _same(a: list[np.ndarray], b: list[np.ndarray]) -> bool:
    return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


def _files(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()}


@pytest.fixture
def clip(tmp_path, video_make_clip, video_tiny_model):
    """A 40-frame clip with audio, and its PNG frames upscaled in this process."""
    src = video_make_clip("long.mp4", frames=FRAMES, audio=True)
    upscale_video(src, f"{tmp_path}/one/", model=video_tiny_model, **SETTINGS)
    return src, _frames(tmp_path / "one")


def test_four_segments_give_the_frames_of_one_process(
    ray_cluster, tmp_path, clip, video_tiny_model
) -> None:
    src, reference = clip
    seen = []
    r = upscale_video(
        src,
        f"{tmp_path}/ray/",
        model=video_tiny_model,
        ray="auto",
        ray_segments=4,
        on_progress=seen.append,
        **SETTINGS,
    )
    assert _same(_frames(tmp_path / "ray"), reference)
    assert r.output_frames == 2 * FRAMES and (r.width, r.height) == (96, 64)
    assert r.cluster is not None and r.cluster.segments == 4 and r.cluster.slots == 2
    assert [n.node for n in r.cluster.nodes] == ["127.0.0.1"] and r.cluster.frames == 80
    assert seen[-1].done == seen[-1].total == 2 * FRAMES
    assert _files(tmp_path) == {"long.mp4", "one", "ray"}  # no work folder left


def test_any_output_rate_gives_the_frames_of_one_process(
    ray_cluster, tmp_path, video_make_clip, video_tiny_model
) -> None:
    src = video_make_clip("in.mp4", frames=FRAMES, fps=24)
    one = upscale_video(src, f"{tmp_path}/one/", model=Blend(), fps=60, **SETTINGS)
    r = upscale_video(
        src, f"{tmp_path}/ray/", model=Blend(), fps=60, ray="auto", ray_segments=4, **SETTINGS
    )
    assert r.output_frames == one.output_frames == 100 and r.fps == 60
    assert r.input_frames == FRAMES and r.cluster is not None and r.cluster.segments == 4
    assert _same(_frames(tmp_path / "ray"), _frames(tmp_path / "one"))
    # A network that makes only halfway frames: refused before any task runs.
    with pytest.raises(WeightsError, match="--time-factor 3 needs time-step weights"):
        upscale_video(
            src, tmp_path / "x.mp4", model=video_tiny_model, time_factor=3, ray="auto", **SETTINGS
        )
    assert _files(tmp_path) == {"in.mp4", "one", "ray"}


def test_video_output_with_audio(
    ray_cluster, tmp_path, clip, video_tiny_weights, video_audio_seconds, capsys
) -> None:
    src, reference = clip
    out = tmp_path / "ray.mp4"
    argv = ["upscale", str(src), "-o", str(out), "--ray", "--ray-segments", "4"]
    code = main([*argv, "--weights", str(video_tiny_weights), "--device", "cpu", "--window", "8"])
    stdout, err = capsys.readouterr()
    assert code == 0, err
    info = probe(out)
    assert info.frame_count == 2 * FRAMES and info.fps == 50 and info.width == 96
    got = list(iter_frames(info))
    assert len(got) == 2 * FRAMES
    assert max(np.abs(g.astype(int) - r).mean() for g, r in zip(got, reference, strict=True)) < 6
    assert abs(video_audio_seconds(out) - video_audio_seconds(src)) <= 1 / 25
    assert "ray: 4 segments on 1 node(s)" in stdout and "node 127.0.0.1: " in stdout
    assert _files(tmp_path) == {"long.mp4", "one", "ray.mp4"}


def test_a_killed_worker_is_retried(ray_cluster, tmp_path, clip, video_tiny_model) -> None:
    src, reference = clip
    flag = tmp_path / "killed"
    model = Wrapped(video_tiny_model, kill_flag=flag)
    r = upscale_video(src, f"{tmp_path}/ray/", model=model, ray="auto", ray_segments=4, **SETTINGS)
    assert flag.exists()  # a worker did die
    assert r.cluster is not None and r.cluster.retried_segments == 1
    assert _same(_frames(tmp_path / "ray"), reference)


def test_interrupt_then_resume_runs_only_unfinished_segments(
    ray_cluster, tmp_path, clip, video_tiny_model
) -> None:
    src, reference = clip
    dst = f"{tmp_path}/ray/"
    manifest = tmp_path / ".ray.zsm-work" / "manifest.json"

    def interrupt_after_a_segment(_progress) -> None:
        if manifest.exists() and json.loads(manifest.read_text())["segments"]:
            raise KeyboardInterrupt

    slow = Wrapped(video_tiny_model, sleep=0.3)
    with pytest.raises(KeyboardInterrupt):
        upscale_video(
            src,
            dst,
            model=slow,
            ray="auto",
            ray_segments=4,
            on_progress=interrupt_after_a_segment,
            **SETTINGS,
        )
    assert not (tmp_path / "ray").exists()  # no partial output
    finished = json.loads(manifest.read_text())["segments"]
    assert 1 <= len(finished) <= 3
    r = upscale_video(src, dst, model=slow, ray="auto", resume=True, **SETTINGS)
    assert r.cluster is not None
    assert r.cluster.resumed_segments == len(finished)
    assert r.cluster.segments == 4 - len(finished)
    assert r.resumed_frames == sum(s["frames"] for s in finished)
    assert _same(_frames(tmp_path / "ray"), reference)
    assert _files(tmp_path) == {"long.mp4", "one", "ray"}


def test_a_folder_of_videos(ray_cluster, tmp_path, video_make_clip, video_tiny_weights, capsys):
    videos = tmp_path / "videos"
    videos.mkdir()
    video_make_clip("a.mp4", frames=12, folder=videos)
    video_make_clip("b.mkv", frames=9, folder=videos, audio=True)
    video_make_clip("c.mp4", frames=5, folder=videos)
    (videos / "bad.mp4").write_bytes(b"not a video at all")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "c.mp4").write_bytes(b"done before")
    argv = ["upscale", str(videos), "-o", str(tmp_path / "out"), "--ray", "--device", "cpu"]
    code = main([*argv, "--weights", str(video_tiny_weights), "--window", "4"])
    out, err = capsys.readouterr()
    assert code == 2 and "bad.mp4" in err.splitlines()[-1]
    assert "2 done, 1 skipped (already done), 1 failed" in out and "ray: " in out
    assert _files(tmp_path / "out") == {"a.mp4", "b.mp4", "c.mp4"}
    assert probe(tmp_path / "out" / "a.mp4").frame_count == 24
    assert probe(tmp_path / "out" / "b.mp4").frame_count == 18


def _not_shared(monkeypatch) -> None:
    monkeypatch.setattr(zcluster, "marker_text", lambda token: "another disk")


ERRORS = {
    "ray missing": (lambda m: m.setitem(sys.modules, "ray", None), [], "pip install 'zsm[ray]'"),
    "work folder not shared": (_not_shared, [], "cannot see the work folder"),
    "too many cpus": (None, ["--ray-cpus-per-task", "64"], "no node of the Ray cluster has"),
    "cuda without gpus": (None, ["--device", "cuda"], "the Ray cluster has no GPUs"),
    "bad address": (None, ["--ray", "127.0.0.1:1"], "cannot connect to the Ray cluster at 127"),
}


@pytest.mark.parametrize("case", ERRORS)
def test_errors_are_one_line(
    ray_cluster, tmp_path, video_make_clip, video_tiny_weights, capsys, monkeypatch, case
) -> None:
    patch, extra, message = ERRORS[case]
    if patch is not None:
        patch(monkeypatch)
    if case == "bad address":  # connect() must not reuse this module's cluster
        monkeypatch.setattr(ray, "is_initialized", lambda: False)
    src = video_make_clip("in.mp4", frames=6)
    argv = ["upscale", str(src), "-o", str(tmp_path / "o.mp4"), "--ray", "--device", "cpu"]
    code = main([*argv, *extra, "--weights", str(video_tiny_weights), "--window", "4"])
    _, err = capsys.readouterr()
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith("zsm: error: ") and message in err, err
    assert _files(tmp_path) == {"in.mp4"}
