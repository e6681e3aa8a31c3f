"""Any time factor N and any output rate (--fps): the time plan, and the pipeline making every
output frame at its exact time, through windows, tiles, files, the CLI and Ray's segments.

A fake time-step model blends the nearest-upscaled inputs k and k+1 with weights (1-t, t) at
time t of gap k, so an input frame filled with ``step * i`` makes, at output time T (in input
frames), a frame filled with ``step * T``: each output frame's value tells its time.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
import torch

from zsm.cli import build_parser, main
from zsm.cli.upscale import options_from_args
from zsm.distributed.segments import plan_segments
from zsm.distributed.tasks import SegmentSpec, run_segment
from zsm.errors import InputError, WeightsError
from zsm.models.descriptor import ModelDescriptor
from zsm.options import UpscaleOptions
from zsm.upscale import build_pipeline, upscale_frames, upscale_video
from zsm.video.io import iter_frames, probe
from zsm.video.timing import OutputTime, TimePlan, plan_times
from zsm.video.windows import WindowPlan

pytestmark = pytest.mark.usefixtures("single_thread")


class BlendModel:
    """Time steps by linear blending of nearest-upscaled neighbours; records its calls."""

    def __init__(self, *, time_steps: bool = True, needs_flow: bool = False) -> None:
        self.descriptor = ModelDescriptor(
            scale=4,
            size_multiple=4,
            bytes_per_pixel_frame=1e3,
            time_steps=time_steps,
            needs_flow=needs_flow,
        )
        self.calls: list[list[tuple[float, ...]] | None] = []

    def __call__(
        self,
        x: torch.Tensor,
        *,
        flow: torch.Tensor | None = None,
        times: list[tuple[float, ...]] | None = None,
    ) -> torch.Tensor:
        _, n, _, h, w = x.shape
        assert (flow is not None) == self.descriptor.needs_flow
        if flow is not None:
            assert tuple(flow.shape) == (1, n - 1, 4, h, w)  # cropped with the tile
        self.calls.append(times)
        if times is None:
            times = [(0.5,)] * (n - 1)
        else:
            assert self.descriptor.time_steps, "times= passed to a halfway model"
            assert len(times) == n - 1
            for gap in times:
                assert all(0 < t < 1 for t in gap) and list(gap) == sorted(set(gap))
        up = x[0].repeat_interleave(4, -2).repeat_interleave(4, -1)
        out = []
        for k in range(n):
            out.append(up[k])
            if k < n - 1:
                out += [(1 - t) * up[k] + t * up[k + 1] for t in times[k]]
        return torch.stack(out)[None]


def _flat(n: int, step: int, h: int = 8, w: int = 12) -> list[np.ndarray]:
    return [np.full((h, w, 3), step * i, np.uint8) for i in range(n)]


def _values(frames) -> list[float]:
    """Each frame's value (all its pixels equal, checked)."""
    out = []
    for f in frames:
        f = np.asarray(f)
        assert (f == f.flat[0]).all()
        out.append(float(f.flat[0]))
    return out


def _expected(n: int, step: int, plan: TimePlan) -> list[float]:
    return [float(step * min(plan.time(k), n - 1)) for k in range(plan.count(n))]


# --- the plan -------------------------------------------------------------------------------


def test_plan_times_for_time_factors() -> None:
    assert plan_times(3, TimePlan.factor(1)) == [OutputTime(0), OutputTime(1), OutputTime(2)]
    third = Fraction(1, 3)
    assert plan_times(2, TimePlan.factor(3)) == [
        OutputTime(0),
        OutputTime(0, third),
        OutputTime(0, 2 * third),
        OutputTime(1),  # the last input
        OutputTime(1),  # held
        OutputTime(1),
    ]
    for n in (2, 5, 9):
        for factor in (1, 2, 3, 4, 8):
            assert len(plan_times(n, TimePlan.factor(factor))) == n * factor


def test_plan_24_to_60_drops_inputs_between_output_times_and_holds_the_last() -> None:
    plan = TimePlan.between(Fraction(24), Fraction(60))
    assert plan.rate == Fraction(5, 2) and plan.steps == 5 and not plan.halfway_only
    times = plan_times(48, plan)
    assert len(times) == 120  # 2 s at 60 fps, as 48 frames at 24
    assert times[:6] == [
        OutputTime(0),
        OutputTime(0, Fraction(2, 5)),
        OutputTime(0, Fraction(4, 5)),
        OutputTime(1, Fraction(1, 5)),  # input 1 (at output time 2.5) is not shown
        OutputTime(1, Fraction(3, 5)),
        OutputTime(2),
    ]
    assert times[-3:] == [OutputTime(46, Fraction(4, 5)), OutputTime(47), OutputTime(47)]
    assert plan.gap_times(0) == (Fraction(2, 5), Fraction(4, 5))
    assert plan.gap_times(1) == (Fraction(1, 5), Fraction(3, 5))
    # NTSC rates: the same ratio, exactly.
    ntsc = TimePlan.between(Fraction(24000, 1001), Fraction(60000, 1001))
    assert ntsc == plan


@pytest.mark.parametrize(
    ("n", "in_fps", "out_fps"),
    [(48, 24, 60), (10, 25, 24), (7, 30, 12), (13, Fraction(30000, 1001), 25), (5, 24, 24)],
)
def test_duration_is_kept_to_a_frame(n: int, in_fps, out_fps) -> None:
    plan = TimePlan.between(Fraction(in_fps), Fraction(out_fps))
    count = plan.count(n)
    assert 0 <= Fraction(count, 1) / out_fps - Fraction(n) / in_fps < Fraction(1) / out_fps
    assert len(plan_times(n, plan)) == count


def test_halfway_plans() -> None:
    assert TimePlan.factor(2).halfway_only and TimePlan.factor(1).halfway_only
    assert TimePlan.between(Fraction(25), Fraction(50)).halfway_only
    assert TimePlan.between(Fraction(24), Fraction(12)).halfway_only  # every other input
    assert not TimePlan.factor(3).halfway_only


# --- the pipeline: every frame at its time ----------------------------------------------------


@pytest.mark.parametrize("factor", [1, 2, 3, 4, 8])
def test_time_factor_n_counts_and_times(factor: int) -> None:
    n, step = 7, 24  # 24: a whole value at every time k/8, k/3
    model = BlendModel()
    frames = _flat(n, step)
    out = list(upscale_frames(frames, model=model, device="cpu", window=4, time_factor=factor))
    assert len(out) == n * factor
    assert all(f.shape == (32, 48, 3) for f in out)
    assert _values(out) == _expected(n, step, TimePlan.factor(factor))
    assert all(call is not None for call in model.calls)  # a time-step model gets times=
    if factor == 1:
        assert all(all(g == () for g in call) for call in model.calls)  # no in-betweens made


def test_fps_60_from_24_frames() -> None:
    model = BlendModel()
    frames = _flat(48, 5)  # 5: a whole value at every time k * 2/5
    out = list(upscale_frames(frames, model=model, device="cpu", input_fps=24, fps=60))
    plan = TimePlan.between(Fraction(24), Fraction(60))
    assert len(out) == 120
    assert _values(out) == _expected(48, 5, plan)
    with pytest.raises(ValueError, match="input_fps"):
        list(upscale_frames(frames, model=model, device="cpu", fps=60))


@pytest.mark.parametrize("needs_flow", [False, True])
@pytest.mark.parametrize(
    "changes",
    [
        {"time_factor": 3},
        {"time_factor": 8},
        {"input_fps": 24, "fps": 60},
        {"input_fps": 25, "fps": 10},  # below the input's rate: inputs dropped, some in-between
    ],
)
def test_windows_and_tiles_do_not_change_the_output(changes, needs_flow: bool) -> None:
    n, step = 11, 20
    frames = _flat(n, step, h=12, w=20)
    results = []
    for window, overlap, tile in [(12, 2, None), (2, 0, None), (3, 0, 4), (4, 1, None), (6, 2, 4)]:
        model = BlendModel(needs_flow=needs_flow)
        options = dict(window=window, window_overlap=overlap, tile=tile, tile_overlap=4)
        out = upscale_frames(frames, model=model, device="cpu", **options, **changes)
        results.append(list(out))
    first = results[0]
    plan = UpscaleOptions(**changes).time_plan(Fraction(changes.get("input_fps", 25)))
    assert len(first) == plan.count(n)
    for other in results[1:]:
        assert len(other) == len(first)
        assert all(np.array_equal(a, b) for a, b in zip(first, other, strict=True))


def test_each_window_asks_for_the_plan_times_of_its_gaps() -> None:
    model = BlendModel()
    pipe = build_pipeline(model=model, device="cpu", window=6, window_overlap=1, time_factor=3)
    wins = [win for win, _ in pipe.run(iter(_flat(14, 10)))]
    assert len(model.calls) == len(wins) > 1
    for win, call in zip(wins, model.calls, strict=True):
        assert call == [(1 / 3, 2 / 3)] * (win.stop - win.start - 1)


def test_a_halfway_model_still_runs_factors_1_and_2_without_times() -> None:
    frames = _flat(5, 20)
    for factor in (1, 2):
        model = BlendModel(time_steps=False)
        out = list(upscale_frames(frames, model=model, device="cpu", window=4, time_factor=factor))
        assert _values(out) == _expected(5, 20, TimePlan.factor(factor))
        assert model.calls and all(call is None for call in model.calls)
    model = BlendModel(time_steps=False)  # 50 fps from 25: only halfway frames
    out = list(upscale_frames(frames, model=model, device="cpu", input_fps=25, fps=50))
    assert _values(out) == _expected(5, 20, TimePlan.factor(2))


def test_a_halfway_model_refuses_other_time_steps_before_any_frame() -> None:
    def frames():
        raise AssertionError("decoded")
        yield

    model = BlendModel(time_steps=False)
    with pytest.raises(WeightsError, match="--time-factor 3 needs time-step weights"):
        list(upscale_frames(frames(), model=model, device="cpu", time_factor=3))
    with pytest.raises(WeightsError, match="--fps 60 from 24 fps needs time-step weights"):
        list(upscale_frames(frames(), model=model, device="cpu", input_fps=24, fps=60))
    assert model.calls == []


# --- files, audio, the command line -----------------------------------------------------------


def _flat_pattern(step: int):
    def pattern(index: int, width: int, height: int) -> np.ndarray:
        return np.full((height, width, 3), step * index, np.uint8)

    return pattern


def test_fps_60_from_24_video_keeps_duration_and_audio(
    tmp_path, video_make_clip, video_audio_seconds
) -> None:
    src = video_make_clip(
        "in.mp4", frames=48, fps=24, audio=True, width=16, height=8, pattern=_flat_pattern(5)
    )
    result = upscale_video(
        src, tmp_path / "out.mp4", model=BlendModel(), device="cpu", fps=60, progress=False
    )
    assert result.fps == 60 and result.input_frames == 48 and result.output_frames == 120
    info = probe(tmp_path / "out.mp4")
    assert info.fps == 60 and info.audio
    out = list(iter_frames(info))
    assert len(out) == 120 and Fraction(len(out), 60) == Fraction(48, 24)
    assert abs(video_audio_seconds(tmp_path / "out.mp4") - video_audio_seconds(src)) <= 1 / 24
    # Lossy H.264 both ways: each frame near its time's value (5 per input frame).
    means = [float(f.mean()) for f in out]
    expected = _expected(48, 5, TimePlan(Fraction(5, 2)))
    assert max(abs(a - b) for a, b in zip(means, expected, strict=True)) < 3
    assert {p.name for p in tmp_path.iterdir()} == {"in.mp4", "out.mp4"}


@pytest.fixture
def blend_cli(video_tiny_weights, capsys, monkeypatch):
    """``zsm upscale ARGS`` whose weights load as a :class:`BlendModel`."""
    import zsm.upscale

    monkeypatch.setattr(zsm.upscale, "load_model", lambda *_a, **_k: BlendModel())

    def run(*args: str) -> tuple[int, str, str]:
        argv = ["upscale", *map(str, args), "--device", "cpu", "--threads", "1"]
        code = main([*argv, "--weights", str(video_tiny_weights), "--window", "4"])
        out, err = capsys.readouterr()
        return code, out, err

    return run


def test_cli_fps_ntsc(tmp_path, video_make_clip, blend_cli) -> None:
    src = video_make_clip(frames=12, fps=Fraction(24000, 1001), audio=True)
    code, out, err = blend_cli(src, "-o", tmp_path / "o.mp4", "--fps", "60000/1001")
    assert code == 0, err
    info = probe(tmp_path / "o.mp4")
    assert info.fps == Fraction(60000, 1001) and len(list(iter_frames(info))) == 30
    assert "30 frames" in out and info.audio


def test_cli_time_factor_4_png(tmp_path, video_make_clip, blend_cli) -> None:
    src = video_make_clip(frames=5)
    code, _, err = blend_cli(src, "-o", f"{tmp_path}/png/", "--time-factor", "4")
    assert code == 0, err
    assert len(list((tmp_path / "png").iterdir())) == 20


def test_cli_parses_rates_and_refuses_both() -> None:
    parse = build_parser().parse_args
    args = parse(["upscale", "in.mp4", "-o", "o.mp4", "--fps", "60000/1001"])
    assert options_from_args(args) == UpscaleOptions(fps=Fraction(60000, 1001))
    assert options_from_args(parse(["upscale", "i", "-o", "o", "--fps", "29.97"])).fps == Fraction(
        2997, 100
    )
    args = parse(["upscale", "in.mp4", "-o", "o.mp4", "--time-factor", "8"])
    assert options_from_args(args).time_factor == 8
    for bad in (["--time-factor", "3", "--fps", "60"], ["--time-factor", "0"], ["--fps", "0"]):
        with pytest.raises(SystemExit) as exc:
            parse(["upscale", "in.mp4", "-o", "o.mp4", *bad])
        assert exc.value.code == 2


def test_cli_refuses_time_steps_a_halfway_network_cannot_make(
    tmp_path, video_make_clip, video_tiny_weights, capsys, monkeypatch
) -> None:
    import zsm.video.job

    def no_decoding(*_a, **_k):
        raise AssertionError("decoding started")

    monkeypatch.setattr(zsm.video.job, "iter_frames", no_decoding)
    src = video_make_clip(frames=5)
    base = ["upscale", str(src), "--device", "cpu", "--weights", str(video_tiny_weights)]
    for extra, cause in [
        (["--time-factor", "3"], "--time-factor 3 needs time-step weights"),
        (["--fps", "60"], "--fps 60 from 25 fps needs time-step weights"),
    ]:
        assert main([*base, "-o", str(tmp_path / "o.mp4"), *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and "only the frame halfway" in err and cause in err
        assert f"weights {video_tiny_weights}" in err
    assert {p.name for p in tmp_path.iterdir()} == {src.name}  # no output, no work folder


def test_a_folder_of_images_needs_its_rate_with_fps(tmp_path, video_frame_pattern) -> None:
    from zsm.video.io import write_png

    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(1, 4):
        write_png(folder / f"{i}.png", video_frame_pattern(i, 16, 8))
    with pytest.raises(InputError, match="--input-fps"):
        upscale_video(folder, tmp_path / "o.mp4", model=BlendModel(), device="cpu", fps=60)
    r = upscale_video(
        folder, tmp_path / "o.mp4", model=BlendModel(), device="cpu", fps=60, input_fps=24
    )
    assert r.output_frames == math.ceil(3 * 60 / 24) == 8 and probe(tmp_path / "o.mp4").fps == 60


# --- Ray's segments (run here, without Ray) ---------------------------------------------------


@pytest.mark.parametrize("changes", [{"time_factor": 3}, {"fps": Fraction(60)}])
def test_segments_make_the_frames_of_one_process(tmp_path, video_make_clip, changes) -> None:
    src = video_make_clip(frames=20, fps=24, width=16, height=8, pattern=_flat_pattern(10))
    options = UpscaleOptions(device="cpu", window=5, **changes)
    whole = upscale_video(src, f"{tmp_path}/one/", options, model=BlendModel(), progress=False)
    expected = sorted((tmp_path / "one").iterdir())
    assert len(expected) == whole.output_frames == options.time_plan(Fraction(24)).count(20)
    work = tmp_path / "work"
    work.mkdir()
    info = probe(src)
    plan = WindowPlan.fitted(options.window, options.window_overlap)
    segments = plan_segments(20, plan, 3)
    assert len(segments) == 3
    made: dict[str, bytes] = {}
    next_frame = 0
    for seg in segments:
        spec = SegmentSpec(0, seg, info, options, work, 20, None)
        res = run_segment(spec, BlendModel())
        assert res.first_frame == next_frame
        next_frame += res.frames
        for p in (work / res.file).iterdir():
            made[p.name] = p.read_bytes()
    assert next_frame == len(expected)
    assert sorted(made) == [p.name for p in expected]
    assert all(made[p.name] == p.read_bytes() for p in expected)  # the same PNG files


def test_resume_key_names_the_output_rate(tmp_path, video_make_clip) -> None:
    from zsm.upscale import run_key

    src = video_make_clip(frames=3)
    info = probe(src)
    plan = WindowPlan.fitted(4)
    key = run_key(info, UpscaleOptions(fps=60), None, BlendModel(), plan, "png")
    assert key["output_fps"] == "60" and "time_factor" not in key
    key = run_key(info, UpscaleOptions(), None, BlendModel(), plan, "png")
    assert key["time_factor"] == 2  # as before: older work folders still resume
