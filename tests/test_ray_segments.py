"""Segments of the Ray runner (no Ray needed): runs of whole windows that, cut apart and run
one by one, give exactly the windows of a single pass; and --ray's options."""

from __future__ import annotations

import numpy as np
import pytest

from zsm.cli import build_parser
from zsm.cli.upscale import options_from_args
from zsm.distributed.segments import from_meta, plan_segments, to_meta, window_count
from zsm.options import UpscaleOptions
from zsm.video.windows import WindowPlan, iter_windows


def _segment_windows(n: int, plan: WindowPlan, count: int) -> list:
    """The windows each segment of ``plan_segments`` makes, as a task would read its frames."""
    out = []
    for seg in plan_segments(n, plan, count):
        frames = [None] * seg.skip(plan) + [np.zeros(1)] * (n - seg.skip(plan))
        stop = seg.stop(plan)
        if stop is not None:
            assert stop <= n
            frames = frames[:stop]
        for win, _ in iter_windows(frames, plan, first=seg.first_window):
            assert seg.last or not win.last  # a closed segment ends on a regular window
            out.append(win)
            if seg.end_window is not None and win.index == seg.end_window - 1:
                break
    return out


@pytest.mark.parametrize(("size", "overlap"), [(2, 0), (4, 1), (8, 2), (12, 2), (7, 3)])
def test_segments_reproduce_the_single_pass_windows(size: int, overlap: int) -> None:
    plan = WindowPlan.fitted(size, overlap)
    for n in [2, 3, size, size + 1, size + 2, 40, 61]:
        whole = [w for w, _ in iter_windows([np.zeros(1)] * n, plan)]
        assert window_count(n, plan) == len(whole)
        for count in (1, 2, 4, 50):
            assert _segment_windows(n, plan, count) == whole, (n, count)


def test_plan_is_balanced_and_round_trips() -> None:
    plan = WindowPlan.fitted(8, 2)
    segs = plan_segments(40, plan, 4)
    assert [(s.first_window, s.end_window) for s in segs] == [(0, 3), (3, 6), (6, 9), (9, None)]
    assert [s.first_output(plan, 2) for s in segs] == [0, 22, 40, 58]
    assert from_meta(to_meta(segs)) == segs
    assert len(plan_segments(5, plan, 4)) == 1  # never more segments than windows


def test_ray_options_from_the_command_line() -> None:
    parse = build_parser().parse_args
    args = parse(["upscale", "in.mp4", "-o", "o.mp4", "--ray"])
    assert options_from_args(args) == UpscaleOptions(ray="auto")
    args = parse(["upscale", "in.mp4", "-o", "o.mp4", "--ray", "10.0.0.1:6379"])
    args2 = parse(
        ["upscale", "in.mp4", "-o", "o.mp4", "--ray-cpus-per-task", "2", "--ray-segments", "8"]
    )
    assert options_from_args(args).ray == "10.0.0.1:6379"
    assert options_from_args(args2) == UpscaleOptions(ray_cpus_per_task=2, ray_segments=8)
    with pytest.raises(ValueError, match="ray_segments must be >= 1"):
        UpscaleOptions(ray_segments=0)
    with pytest.raises(ValueError, match="upscale_frames runs here"):
        from zsm import upscale_frames

        list(upscale_frames([], ray="auto"))
