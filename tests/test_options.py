"""One options object: library defaults, validation, the CLI's mapping, progress and cancel."""

from __future__ import annotations

import threading
from fractions import Fraction

import pytest

import zsm
from zsm.cli import build_parser
from zsm.cli.upscale import options_from_args
from zsm.options import DEFAULTS, UpscaleOptions

pytestmark = pytest.mark.usefixtures("single_thread")


def test_cli_without_options_gives_the_library_defaults() -> None:
    args = build_parser().parse_args(["upscale", "in.mp4", "-o", "out.mp4"])
    assert options_from_args(args) == DEFAULTS == UpscaleOptions()


def test_cli_options_map_to_fields() -> None:
    args = build_parser().parse_args(
        [
            *("upscale", "in.mp4", "-o", "o.mp4", "--window", "8", "--frames", "5", "--half"),
            *("--input-fps", "30000/1001", "--ensemble", "4", "--time-factor", "1"),
        ]
    )
    options = options_from_args(args)
    assert options == UpscaleOptions(
        window=8,
        max_frames=5,
        precision="fp16",
        input_fps=Fraction(30000, 1001),
        ensemble=4,
        time_factor=1,
    )


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"window": 1}, "window must be >= 2, got 1"),
        ({"ensemble": 3}, "ensemble passes must be one of 1, 2, 4, 8, 16, got 3"),
        ({"time_factor": 0}, "time_factor must be >= 1, got 0"),
        ({"time_factor": 2.5}, "time_factor must be an integer >= 1, got 2.5"),
        ({"time_factor": 3, "fps": 60}, r"give time_factor \(3\) or fps \(60\), not both"),
        ({"precision": "fp8"}, "precision must be one of"),
        ({"max_frames": 1}, "max_frames must be >= 2, got 1"),
        ({"fps": -1}, "fps must be > 0"),
        ({"input_fps": 0}, "input_fps must be > 0"),
    ],
)
def test_bad_values_name_themselves(changes, message) -> None:
    with pytest.raises(ValueError, match=message):
        UpscaleOptions(**changes)


def test_replace_rejects_unknown_names_and_half_means_fp16() -> None:
    with pytest.raises(TypeError, match=r"unknown upscale option.*windw"):
        DEFAULTS.replace(windw=3)
    assert UpscaleOptions.of(None, half=True).precision == "fp16"
    assert UpscaleOptions.of(UpscaleOptions(window=6), crf=20) == UpscaleOptions(window=6, crf=20)
    assert UpscaleOptions(fps=29.97).fps == Fraction(2997, 100)
    assert UpscaleOptions(input_fps=29.97).input_fps == Fraction(2997, 100)


def test_progress_reaches_the_total(tmp_path, video_make_clip, video_tiny_model) -> None:
    src = video_make_clip(frames=7)
    seen: list[zsm.Progress] = []
    result = zsm.upscale_video(
        src,
        tmp_path / "o.mp4",
        model=video_tiny_model,
        device="cpu",
        window=4,
        on_progress=seen.append,
    )
    assert result.output_frames == 14
    assert seen[0].done == 0 and seen[-1].done == 14
    assert all(p.total == 14 for p in seen)
    assert [p.done for p in seen] == sorted(p.done for p in seen)
    assert seen[-1].frames_per_second > 0 and seen[-1].seconds_left == 0


def test_cancel_stops_and_leaves_nothing(tmp_path, video_make_clip, video_tiny_model) -> None:
    src = video_make_clip(frames=12)
    cancel = threading.Event()

    def stop_after_first_window(p: zsm.Progress) -> None:
        if p.done > 0:
            cancel.set()

    with pytest.raises(zsm.Cancelled):
        zsm.upscale_video(
            src,
            tmp_path / "o.mp4",
            model=video_tiny_model,
            device="cpu",
            window=4,
            segment_seconds=0,
            on_progress=stop_after_first_window,
            cancel=cancel,
        )
    assert sorted(p.name for p in tmp_path.iterdir()) == [src.name]  # no output, no work dir


def test_cancel_before_start_runs_no_tile(video_tiny_model) -> None:
    import numpy as np

    cancel = threading.Event()
    cancel.set()
    frames = [np.zeros((8, 8, 3), np.uint8)] * 3
    with pytest.raises(zsm.Cancelled):
        list(zsm.upscale_frames(frames, model=video_tiny_model, device="cpu", cancel=cancel))


@pytest.mark.parametrize(
    "changes, name",
    [
        ({}, "zsm-compact-flow"),
        ({"time_factor": 1}, "zsm-compact-flow"),
        ({"time_factor": 2}, "zsm-compact-flow"),
        ({"time_factor": 3}, "zsm-compact-time"),
        ({"time_factor": 8}, "zsm-compact-time"),
        ({"fps": Fraction(60)}, "zsm-compact-time"),
        ({"time_factor": 4, "weights": "zsm-compact"}, "zsm-compact"),  # asked for: kept
    ],
)
def test_default_weights_follow_the_time_steps_asked(changes, name) -> None:
    assert UpscaleOptions(**changes).weights_name == name


def test_the_default_time_weights_make_any_time_step_and_x2_is_the_default() -> None:
    from zsm.models.descriptor import describe
    from zsm.models.registry import DEFAULT_TIME_WEIGHTS, DEFAULT_WEIGHTS

    assert describe(zsm.load_model(DEFAULT_TIME_WEIGHTS)).time_steps
    assert not describe(zsm.load_model(DEFAULT_WEIGHTS)).time_steps
