"""``zsm upscale`` end to end on real files: counts, rates, sizes, audio, rotation, folders,
errors, interruption and resume, many inputs. Tiny random model, tiny clips, CPU."""

from __future__ import annotations

import logging
import os
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from zsm.cli import main
from zsm.errors import InputError
from zsm.upscale import upscale_video
from zsm.video.io import iter_frames, list_images, probe, write_png
from zsm.video.pipeline import Pipeline

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture
def run_cli(video_tiny_weights, capsys):
    """``zsm upscale ARGS`` with the tiny weights on one CPU thread; (code, stdout, stderr)."""

    def run(*args: str, weights: str | None = None) -> tuple[int, str, str]:
        argv = ["upscale", *map(str, args), "--device", "cpu", "--threads", "1"]
        argv += ["--weights", weights or str(video_tiny_weights), "--window", "4"]
        code = main(argv)
        out, err = capsys.readouterr()
        return code, out, err

    return run


def _files(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


def test_video_round_trip_with_audio(tmp_path, video_make_clip, video_audio_seconds, run_cli):
    src = video_make_clip("in.mp4", frames=7, audio=True)
    code, out, err = run_cli(src, "-o", tmp_path / "out.mp4")
    assert code == 0, err
    assert "wrote" in out
    info = probe(tmp_path / "out.mp4")
    assert info.frame_count == 14 and len(list(iter_frames(info))) == 14
    assert info.fps == 50 and (info.width, info.height) == (96, 64)
    assert abs(video_audio_seconds(tmp_path / "out.mp4") - video_audio_seconds(src)) <= 1 / 25
    assert _files(tmp_path) == {"in.mp4", "out.mp4"}  # no work folder or temporary left


def test_frames_match_the_api(tmp_path, video_make_clip, video_tiny_model, run_cli):
    """The written PNG frames are exactly what upscale_frames gives."""
    from zsm import upscale_frames

    src = video_make_clip(frames=5)
    assert run_cli(src, "-o", f"{tmp_path}/frames/")[0] == 0
    assert len(list_images(tmp_path / "frames")) == 10
    written = list(iter_frames(probe(tmp_path / "frames")))
    lr = iter_frames(probe(src))
    expected = list(upscale_frames(lr, model=video_tiny_model, device="cpu", window=4))
    assert len(written) == len(expected) == 10
    for a, b in zip(written, expected, strict=True):
        assert np.array_equal(a, b)  # PNG frames are exact


def test_folder_in_video_out(tmp_path, video_frame_pattern, run_cli):
    frames = tmp_path / "in"
    frames.mkdir()
    for i in range(1, 6):
        write_png(frames / f"{i}.png", video_frame_pattern(i, 20, 12))
    code, _, err = run_cli(frames, "-o", tmp_path / "out.mkv", "--fps", "12")
    assert code == 2 and "--input-fps" in err  # --fps is the output's rate now
    code, _, err = run_cli(frames, "-o", tmp_path / "out.mkv", "--input-fps", "12")
    assert code == 0, err
    info = probe(tmp_path / "out.mkv")
    assert info.fps == 24 and (info.width, info.height) == (80, 48)
    assert len(list(iter_frames(info))) == 10 and info.audio == ()


def test_video_in_folder_out(tmp_path, video_make_clip, run_cli):
    src = video_make_clip(frames=5)
    code, _, err = run_cli(src, "-o", f"{tmp_path / 'png'}/")
    assert code == 0, err
    names = sorted(p.name for p in (tmp_path / "png").iterdir())
    assert names == [f"{i:08d}.png" for i in range(1, 11)]
    assert probe(tmp_path / "png").width == 96
    # An existing folder of zsm frames is replaced; one holding anything else is refused.
    assert run_cli(src, "-o", tmp_path / "png", "--time-factor", "1")[0] == 0
    assert len(list((tmp_path / "png").iterdir())) == 5
    (tmp_path / "png" / "keep.txt").write_text("mine")
    code, _, err = run_cli(src, "-o", tmp_path / "png")
    assert code == 2 and "holds other files" in err


def test_time_factor_one(tmp_path, video_make_clip, run_cli):
    src = video_make_clip(frames=5, fps=Fraction(24000, 1001))
    assert run_cli(src, "-o", tmp_path / "x4.mp4", "--time-factor", "1")[0] == 0
    info = probe(tmp_path / "x4.mp4")
    assert info.frame_count == 5 and info.fps == Fraction(24000, 1001) and info.width == 96


def test_fps_is_exactly_doubled(tmp_path, video_make_clip, run_cli):
    src = video_make_clip(frames=4, fps=Fraction(30000, 1001))
    assert run_cli(src, "-o", tmp_path / "o.mp4")[0] == 0
    assert probe(tmp_path / "o.mp4").fps == Fraction(60000, 1001)


def test_broken_timestamps_use_the_declared_rate(tmp_path, video_broken_clip, run_cli, caplog):
    """12 frames whose pts are all 0 (read as 300 fps before): 24 frames at 2 x 25 fps out,
    timed by frame index, and one warning."""
    src = video_broken_clip("zero.mp4", frames=12, fps=25)
    with caplog.at_level(logging.WARNING, logger="zsm"):
        code, _, err = run_cli(src, "-o", tmp_path / "o.mp4")
    assert code == 0, err
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "zero.mp4" in warnings[0] and "25 fps" in warnings[0]
    info = probe(tmp_path / "o.mp4")
    assert info.fps == 50 and info.frame_count == 24
    with av.open(str(tmp_path / "o.mp4")) as c:
        times = [f.time for f in c.decode(video=0)]
    assert times == pytest.approx([k / 50 for k in range(24)])


def test_rotated_input_plays_upright(tmp_path, video_make_clip, video_frame_pattern, run_cli):
    src = video_make_clip(frames=3, width=32, height=16, rotation=90)
    assert run_cli(src, "-o", tmp_path / "up.mp4")[0] == 0
    info = probe(tmp_path / "up.mp4")
    assert info.rotation == 0  # pixels turned, no display matrix left to honour
    assert (info.width, info.height) == (64, 128)
    frame = next(iter_frames(info))
    red = np.rot90(video_frame_pattern(0, 32, 16))[..., 0] > 128
    red = np.repeat(np.repeat(red, 4, axis=0), 4, axis=1)
    assert frame[red][:, 0].mean() > 150 and frame[~red][:, 0].mean() < 80


def test_subtitles_carried_into_mkv(tmp_path, video_make_clip, run_cli):
    src = video_make_clip("s.mkv", frames=4, subtitle=True, audio=True)
    assert run_cli(src, "-o", tmp_path / "s4.mkv")[0] == 0
    info = probe(tmp_path / "s4.mkv")
    assert len(info.subtitles) == 1 and len(info.audio) == 1


def test_preview_frames_cut_audio(tmp_path, video_make_clip, video_audio_seconds, run_cli):
    src = video_make_clip(frames=8, audio=True)
    assert run_cli(src, "-o", tmp_path / "p.mp4", "--frames", "3")[0] == 0
    assert probe(tmp_path / "p.mp4").frame_count == 6
    assert abs(video_audio_seconds(tmp_path / "p.mp4") - 3 / 25) <= 1 / 25


# --- errors -------------------------------------------------------------------------------


def _corrupt(tmp_path: Path, _make) -> Path:
    path = tmp_path / "corrupt.mp4"
    path.write_bytes(np.random.default_rng(0).bytes(4000))
    return path


def _truncated(tmp_path: Path, make) -> Path:
    data = make("whole.mp4", frames=6).read_bytes()
    (tmp_path / "whole.mp4").unlink()
    path = tmp_path / "truncated.mp4"
    path.write_bytes(data[: len(data) // 3])
    return path


def _audio_only(tmp_path: Path, _make) -> Path:
    path = tmp_path / "sound.mka"
    with av.open(str(path), "w") as c:
        a = c.add_stream("aac", rate=48000)
        frame = av.AudioFrame.from_ndarray(
            np.zeros((1, 1024), np.float32), format="fltp", layout="mono"
        )
        frame.sample_rate, frame.pts = 48000, 0
        c.mux(a.encode(frame))
        c.mux(a.encode(None))
    return path


INPUT_ERRORS = {
    "missing": (lambda tmp, make: tmp / "nope.mp4", "input not found"),
    "corrupt": (_corrupt, "not a video PyAV can decode"),
    "truncated": (_truncated, "corrupt|cannot"),
    "no video": (_audio_only, "has no video stream"),
    "one frame": (lambda tmp, make: make("one.mp4", frames=1), "only 1 frame"),
    "empty folder": (lambda tmp, make: (tmp / "empty").mkdir() or tmp / "empty", "no images"),
}


@pytest.mark.parametrize("case", INPUT_ERRORS)
def test_input_errors(tmp_path, video_make_clip, run_cli, case: str) -> None:
    make_input, message = INPUT_ERRORS[case]
    src = make_input(tmp_path, video_make_clip)
    before = _files(tmp_path)
    code, _, err = run_cli(src, "-o", tmp_path / "out.mp4")
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("zsm: error: ") and "Traceback" not in err
    import re

    assert re.search(message, err), err
    assert _files(tmp_path) == before


def _output_errors(tmp_path: Path, weights: Path) -> dict[str, tuple[list[str], str]]:
    return {
        "missing folder": (["-o", str(tmp_path / "no" / "out.mp4")], "does not exist"),
        "parent is a file": (["-o", str(tmp_path / "in.mp4" / "out.mp4")], "does not exist"),
        "unknown extension": (["-o", str(tmp_path / "out.xyz")], "unknown video extension"),
        "unknown codec": (["-o", str(tmp_path / "o.mp4"), "--codec", "nope"], "unknown video"),
        "same as input": (["-o", str(tmp_path / "in.mp4")], "is the input"),
        "unknown weights": (["-o", str(tmp_path / "o.mp4"), "--weights", "zsm-nope"], "unknown"),
        "missing weights": (
            ["-o", str(tmp_path / "o.mp4"), "--weights", str(tmp_path / "w.safetensors")],
            "weights file not found",
        ),
        "corrupt weights": (
            ["-o", str(tmp_path / "o.mp4"), "--weights", str(tmp_path / "in.mp4")],
            "cannot read weights",
        ),
        "cuda absent": (["-o", str(tmp_path / "o.mp4"), "--device", "cuda"], "CUDA is not"),
    }


@pytest.mark.parametrize(
    "case",
    [
        "missing folder",
        "parent is a file",
        "unknown extension",
        "unknown codec",
        "same as input",
        "unknown weights",
        "missing weights",
        "corrupt weights",
        "cuda absent",
    ],
)
def test_output_weights_device_errors(
    tmp_path, video_make_clip, video_tiny_weights, capsys, case: str
) -> None:
    import torch

    if case == "cuda absent" and torch.cuda.is_available():
        pytest.skip("CUDA is present here")
    src = video_make_clip("in.mp4", frames=3)
    args, message = _output_errors(tmp_path, video_tiny_weights)[case]
    argv = ["upscale", str(src), "--device", "cpu", "--threads", "1"]
    if "--weights" not in args:
        argv += ["--weights", str(video_tiny_weights)]
    argv += args  # a later --device / --weights wins
    before = _files(tmp_path)
    code = main(argv)
    _, err = capsys.readouterr()
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("zsm: error: ") and message in err, err
    assert _files(tmp_path) == before


def test_unreadable_input(tmp_path, video_make_clip, run_cli, monkeypatch) -> None:
    src = video_make_clip(frames=3)

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(src))

    monkeypatch.setattr(av, "open", denied)  # as root, chmod cannot make a file unreadable
    code, _, err = run_cli(src, "-o", tmp_path / "o.mp4")
    assert code == 2 and err.strip() == f"zsm: error: cannot read {src}: permission denied"
    assert _files(tmp_path) == {"clip.mp4"}


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_unwritable_output_folder(tmp_path, video_make_clip, run_cli) -> None:
    src = video_make_clip(frames=3)
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        code, _, err = run_cli(src, "-o", locked / "o.mp4")
    finally:
        locked.chmod(0o700)
    assert code == 2 and "permission denied" in err and err.count("\n") == 1
    assert list(locked.iterdir()) == []


def test_debug_shows_the_traceback(tmp_path, video_tiny_weights) -> None:
    with pytest.raises(InputError):
        main(
            [
                "--debug",
                "upscale",
                str(tmp_path / "nope.mp4"),
                "-o",
                str(tmp_path / "o.mp4"),
                "--weights",
                str(video_tiny_weights),
            ]
        )


# --- interruption and resume ---------------------------------------------------------------


def _interrupt_after(monkeypatch, calls: int, exc: BaseException) -> None:
    original = Pipeline.run_window
    count = {"n": 0}

    def run_window(self, *args, **kwargs):
        count["n"] += 1
        if count["n"] > calls:
            raise exc
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Pipeline, "run_window", run_window)


@pytest.mark.parametrize("out_name", ["res.mp4", "res/"])
def test_interrupt_then_resume(
    tmp_path, video_make_clip, video_tiny_weights, run_cli, monkeypatch, out_name
) -> None:
    src = video_make_clip(frames=12, audio=True)
    dst_arg = f"{tmp_path}/{out_name}"  # keeps a trailing "/": PNG frames
    dst = Path(dst_arg)
    opts = dict(weights=video_tiny_weights, device="cpu", window=4, segment_seconds=0)
    with monkeypatch.context() as m:
        _interrupt_after(m, 3, KeyboardInterrupt())
        with pytest.raises(KeyboardInterrupt):
            upscale_video(src, dst_arg, **opts)
    assert not dst.exists()  # nothing under OUTPUT's name
    work = tmp_path / f".{dst.name}.zsm-work"
    assert (work / "manifest.json").is_file()
    code, out, err = run_cli(src, "-o", dst_arg, "--resume")
    assert code == 0, err
    assert "resumed" in out
    assert not work.exists()
    info = probe(dst)
    assert len(list(iter_frames(info))) == 24
    # An uninterrupted run gives the same frames: exactly (PNG), or up to H.264 loss, in order.
    upscale_video(src, f"{tmp_path}/whole/", **opts)
    got, ref = list(iter_frames(info)), list(iter_frames(probe(tmp_path / "whole")))
    if out_name.endswith("/"):
        assert all(np.array_equal(x, y) for x, y in zip(got, ref, strict=True))
        return
    err = [[np.abs(g.astype(int) - r).mean() for r in ref] for g in got]
    for k in range(24):
        assert err[k][k] < 6
        others = [j for j in (k - 1, k + 1) if 0 <= j < 24 and not np.array_equal(ref[j], ref[k])]
        assert all(err[k][j] > err[k][k] for j in others)


@pytest.mark.parametrize(
    ("option", "key"), [(("--time-factor", "1"), "time_factor"), (("--ensemble", "2"), "ensemble")]
)
def test_resume_refuses_other_settings(
    tmp_path, video_make_clip, video_tiny_weights, run_cli, monkeypatch, caplog, option, key
) -> None:
    src = video_make_clip(frames=12)
    dst = tmp_path / "r.mp4"
    with monkeypatch.context() as m:
        _interrupt_after(m, 2, KeyboardInterrupt())
        with pytest.raises(KeyboardInterrupt):
            upscale_video(
                src, dst, weights=video_tiny_weights, device="cpu", window=4, segment_seconds=0
            )
    code, _, err = run_cli(src, "-o", dst, "--resume", *option)
    assert code == 2 and "cannot resume" in err and key in err
    # Without --resume the old work is discarded and the run starts over.
    code, _, err = run_cli(src, "-o", dst)
    assert code == 0 and "discarding" in caplog.text
    assert _files(tmp_path) == {"clip.mp4", "r.mp4"}


def test_error_before_any_segment_leaves_nothing(
    tmp_path, video_make_clip, video_tiny_weights, monkeypatch
) -> None:
    src = video_make_clip(frames=6)
    _interrupt_after(monkeypatch, 0, RuntimeError("boom"))
    with pytest.raises(RuntimeError):
        upscale_video(src, tmp_path / "o.mp4", weights=video_tiny_weights, device="cpu")
    assert _files(tmp_path) == {"clip.mp4"}


# --- many inputs ----------------------------------------------------------------------------


def test_folder_of_videos(tmp_path, video_make_clip, run_cli) -> None:
    videos = tmp_path / "videos"
    videos.mkdir()
    video_make_clip("b.mp4", frames=3, folder=videos)
    video_make_clip("a.mkv", frames=4, folder=videos)
    (videos / "bad.mp4").write_bytes(b"not a video at all")
    code, out, err = run_cli(videos, "-o", f"{tmp_path / 'out'}/")
    assert code == 2
    assert "bad.mp4" in err.splitlines()[-1] and "1 of 3 inputs failed" in err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.mp4", "b.mp4"]
    assert probe(tmp_path / "out" / "a.mp4").frame_count == 8
    code, out, err = run_cli(videos, "-o", tmp_path / "out")
    assert code == 2 and "2 skipped" in out
