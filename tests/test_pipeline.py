"""Windows over time, tiles over space, and their stitching (tiny random model, CPU)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from zsm.errors import InputError
from zsm.upscale import build_pipeline, upscale_frames
from zsm.video.pipeline import output_frames
from zsm.video.tiles import plan_tiles, tile_for_budget
from zsm.video.timing import TimePlan
from zsm.video.windows import TooFewFrames, WindowPlan, iter_windows

pytestmark = pytest.mark.usefixtures("single_thread")


def _frames(n: int, h: int = 16, w: int = 24, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for _ in range(n)]


def _one_pass(model, frames: list[np.ndarray]) -> torch.Tensor:
    """The model over all frames at once: (2n-1, 4H, 4W, 3) float."""
    x = torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).float().div(255)[None]
    with torch.inference_mode():
        return model(x)[0].permute(0, 2, 3, 1)


def _stitched(pipe, frames, *, first_window: int = 0) -> tuple[list[int], torch.Tensor]:
    indices, chunks = [], []
    for win, chunk in pipe.run(iter(frames), first_window=first_window, as_float=True):
        chunks.append(chunk)
        indices.extend(range(win.keep_start, win.keep_stop))
    return indices, torch.cat(chunks)


# --- window layout ----------------------------------------------------------------------


@pytest.mark.parametrize("size,overlap", [(2, 0), (3, 0), (4, 1), (6, 2), (8, 3), (12, 2)])
@pytest.mark.parametrize("n", [2, 3, 5, 12, 13, 20, 31])
def test_windows_own_every_output_once(size: int, overlap: int, n: int) -> None:
    plan = WindowPlan(size, overlap)
    owned: list[int] = []
    for win, chunk in iter_windows(range(n), plan):
        assert chunk == list(range(win.start, win.stop))
        assert win.stop - win.start == min(size, n)
        local = (win.keep_start - 2 * win.start, win.keep_stop - 2 * win.start)
        assert 0 <= local[0] <= local[1] <= 2 * len(chunk) - 1  # within its own outputs
        if win.keep_start > 0:  # inner edges have `overlap` frames of context before them
            assert win.keep_start >= 2 * (win.start + overlap)
        if not win.last:  # the last owned output has `overlap` frames after it too
            assert (win.keep_stop - 1) / 2 + overlap <= win.stop - 1
        owned.extend(range(win.keep_start, win.keep_stop))
    assert owned == list(range(2 * n - 1))
    assert win.last


@pytest.mark.parametrize("n", [13, 17, 22, 40])
def test_resumed_windows_match_and_skip_safely(n: int) -> None:
    plan = WindowPlan(8, 2)
    full = list(iter_windows(range(n), plan))
    for k in range(1, len(full)):
        skip = plan.skippable(k)
        frames = [None if i < skip else i for i in range(n)]
        assert list(iter_windows(frames, plan, first=k)) == full[k:]


def test_fewer_than_two_frames(video_tiny_model) -> None:
    with pytest.raises(TooFewFrames):
        list(iter_windows(range(1), WindowPlan(4, 1)))
    with pytest.raises(InputError, match="at least 2 frames"):
        list(upscale_frames(_frames(1), model=video_tiny_model, device="cpu"))


def test_bad_window_arguments() -> None:
    with pytest.raises(ValueError, match="at least 2"):
        WindowPlan(1, 0)
    with pytest.raises(ValueError, match="overlap"):
        WindowPlan(5, 2)
    assert WindowPlan.fitted(4).overlap == 1
    assert WindowPlan.fitted(3).overlap == 0
    assert WindowPlan.fitted(12).stride == 7


# --- tile layout ------------------------------------------------------------------------


@pytest.mark.parametrize("h,w,tile,overlap", [(16, 24, 8, 4), (37, 53, 12, 5), (9, 7, 4, 0)])
def test_tiles_cover_once_and_align(h: int, w: int, tile: int, overlap: int) -> None:
    cover = np.zeros((h, w), int)
    for t in plan_tiles(h, w, tile, overlap):
        assert t.y0 % 4 == 0 and t.x0 % 4 == 0  # same stride-2 grid as the whole frame
        assert t.y0 <= t.ky0 < t.ky1 <= t.y1 and t.x0 <= t.kx0 < t.kx1 <= t.x1
        assert t.ky0 - t.y0 >= min(overlap, t.ky0) and t.y1 - t.ky1 >= min(overlap, h - t.ky1)
        cover[t.ky0 : t.ky1, t.kx0 : t.kx1] += 1
    assert (cover == 1).all()
    assert len(plan_tiles(h, w, None)) == 1


def test_tile_for_budget() -> None:
    assert tile_for_budget(72, 128, frames=12, bytes_per_pixel_frame=20e3, budget=4e9) is None
    side = tile_for_budget(720, 1280, frames=12, bytes_per_pixel_frame=20e3, budget=2e9, overlap=16)
    assert side is not None and side % 4 == 0
    assert 12 * 20e3 * (side + 32) ** 2 <= 2e9


# --- stitching equals one pass ------------------------------------------------------------


def test_windowed_equals_one_pass(video_tiny_model) -> None:
    frames = _frames(20)
    reference = _one_pass(video_tiny_model, frames)
    pipe = build_pipeline(model=video_tiny_model, device="cpu", window=8, window_overlap=2)
    indices, out = _stitched(pipe, frames)
    assert indices == list(range(39))
    torch.testing.assert_close(out, reference, atol=1e-4, rtol=0)


def test_resumed_run_equals_full_run(video_tiny_model) -> None:
    frames = _frames(20)
    pipe = build_pipeline(model=video_tiny_model, device="cpu", window=8, window_overlap=2)
    _, full = _stitched(pipe, frames)
    k = 3
    skip = pipe.plan.skippable(k)
    indices, tail = _stitched(pipe, [None] * skip + frames[skip:], first_window=k)
    assert indices[0] == pipe.plan.keep_start(k)
    torch.testing.assert_close(tail, full[indices[0] :], atol=0, rtol=0)


@pytest.mark.parametrize("h,w,tile", [(16, 24, 8), (20, 30, 12), (13, 17, 4)])
def test_tiled_equals_untiled(video_tiny_model, h: int, w: int, tile: int) -> None:
    frames = _frames(5, h, w, seed=1)
    untiled = build_pipeline(model=video_tiny_model, device="cpu", window=5)
    tiled = build_pipeline(
        model=video_tiny_model, device="cpu", window=5, tile=tile, tile_overlap=16
    )
    assert len(plan_tiles(h, w, tiled.tile, 16)) > 1
    _, a = _stitched(untiled, frames)
    _, b = _stitched(tiled, frames)
    assert a.shape == (9, 4 * h, 4 * w, 3)
    torch.testing.assert_close(b, a, atol=1e-4, rtol=0)


def test_uint8_output_is_rounded_clamped_float(video_tiny_model) -> None:
    frames = _frames(4)
    pipe = build_pipeline(model=video_tiny_model, device="cpu", window=4)
    ((_, as_float),) = pipe.run(iter(frames), as_float=True)
    ((_, as_uint8),) = pipe.run(iter(frames))
    assert as_uint8.dtype == torch.uint8
    expected = torch.floor(as_float.clamp(0, 1) * 255 + 0.5).to(torch.uint8)
    assert torch.equal(as_uint8, expected)


# --- frame counts ---------------------------------------------------------------------------


@pytest.mark.parametrize("n", [2, 3, 7])
def test_upscale_frames_counts_and_last_frame(video_tiny_model, n: int) -> None:
    frames = _frames(n)
    out = list(upscale_frames(frames, model=video_tiny_model, device="cpu", window=4))
    assert len(out) == 2 * n
    assert all(f.shape == (64, 96, 3) and f.dtype == np.uint8 for f in out)
    assert np.array_equal(out[-1], out[-2])  # the last frame is held for its successor's slot
    keys = list(
        upscale_frames(frames, model=video_tiny_model, device="cpu", window=4, time_factor=1)
    )
    assert len(keys) == n
    for k in range(n):
        assert np.array_equal(keys[k], out[2 * k])


def test_output_frames_indices() -> None:
    plan = WindowPlan(4, 1)
    seen2, seen1 = [], []
    for win, chunk in iter_windows(range(9), plan):
        fake = torch.arange(win.keep_start, win.keep_stop)  # the frames made, at times j/2
        seen2 += [(i, int(v)) for i, v in output_frames(win, fake, times=TimePlan.factor(2))]
        first, stop = win.owned_times
        keys = torch.arange(first, win.stop if stop is None else stop)  # at input times
        seen1 += [(i, int(v)) for i, v in output_frames(win, keys, times=TimePlan.factor(1))]
        assert len(chunk) == 4
    assert [i for i, _ in seen2] == list(range(18))
    assert seen2[-1] == (17, 16)
    assert seen1 == [(k, k) for k in range(9)]


def test_upscale_frames_rejects_bad_frames(video_tiny_model) -> None:
    bad = [np.zeros((16, 24), np.uint8)] * 3
    with pytest.raises(InputError, match="uint8"):
        list(upscale_frames(bad, model=video_tiny_model, device="cpu"))
    mixed = [*_frames(2), *_frames(1, 8, 8)]
    with pytest.raises(InputError, match="sizes must match"):
        list(upscale_frames(mixed, model=video_tiny_model, device="cpu"))


# --- property: any small clip, any window and tile layout -------------------------------------


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    n=st.integers(2, 9),
    h=st.integers(1, 21),
    w=st.integers(1, 21),
    window=st.integers(2, 6),
    overlap=st.integers(0, 3),
    tile=st.one_of(st.none(), st.integers(4, 16)),
    seed=st.integers(0, 2**16),
)
def test_pipeline_property(video_tiny_model, n, h, w, window, overlap, tile, seed) -> None:
    """Every layout gives 2n-1 frames of exactly 4x the size, each output frame once and in
    order; with one window and one tile it is the single pass, and tiles (overlap 16) never
    change the result."""
    frames = _frames(n, h, w, seed=seed)
    pipe = build_pipeline(
        model=video_tiny_model,
        device="cpu",
        window=window,
        window_overlap=min(overlap, window - 2),
        tile=tile,
        tile_overlap=16,
    )
    indices, out = _stitched(pipe, frames)
    assert indices == list(range(2 * n - 1))
    assert out.shape == (2 * n - 1, 4 * h, 4 * w, 3)
    if tile is not None:
        untiled = build_pipeline(
            model=video_tiny_model, device="cpu", window=window, window_overlap=pipe.plan.overlap
        )
        torch.testing.assert_close(out, _stitched(untiled, frames)[1], atol=1e-4, rtol=0)
    if n <= pipe.plan.size:
        torch.testing.assert_close(out, _one_pass(video_tiny_model, frames), atol=1e-4, rtol=0)
