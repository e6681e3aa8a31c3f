"""Classical baselines on a translating pattern, where every exact answer is known."""

from __future__ import annotations

import itertools

import cv2
import numpy as np
import pytest
import torch

from zsm.data.degrade import bicubic_upscale, make_lr_clip
from zsm.evaluation import BASELINES, bicubic_blend, bicubic_flow, bicubic_repeat, psnr_y
from zsm.evaluation.baselines import (
    _gray,
    _sample,
    _upscale,
    between_times,
    bicubic_flow_lr,
    flow_at_times,
    flow_lr_at_times,
    flow_midpoint,
    occlusion_mask,
)
from zsm.models.zsm import flow_skip
from zsm.ops.flow import DISFlow

SHIFT = 4  # HR pixels per HR frame: 8 (2 LR pixels) between inputs, 4 (1 LR pixel) to the middle
MARGIN = 24  # HR pixels near the borders, where content enters the frame, are not compared


def pattern(h: int, w: int, shift: float) -> np.ndarray:
    """A smooth colour texture moved ``shift`` pixels to the right, uint8 (h, w, 3)."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    x = x - shift
    v = (
        0.5
        + 0.2 * np.sin(2 * np.pi * x / 37) * np.cos(2 * np.pi * y / 23)
        + 0.15 * np.sin(2 * np.pi * (x + 2 * y) / 17)
        + 0.1 * np.cos(2 * np.pi * (x - y) / 29)
    )
    rgb = np.stack([v, 0.8 * v + 0.1, 1 - 0.7 * v], axis=-1)
    return np.floor(np.clip(rgb, 0, 1) * 255 + 0.5).astype(np.uint8)


@pytest.fixture(scope="module")
def clip() -> tuple[np.ndarray, np.ndarray]:
    hr = np.stack([pattern(96, 128, SHIFT * t) for t in range(5)])  # (5, 96, 128, 3)
    return make_lr_clip(hr)  # LR (3, 24, 32, 3), GT (5, ...)


def _inner(image: np.ndarray) -> np.ndarray:
    return image[MARGIN:-MARGIN, MARGIN:-MARGIN]


def _up(frame: np.ndarray) -> np.ndarray:
    return bicubic_upscale(frame)  # MATLAB bicubic x4, rounded to uint8


@pytest.mark.parametrize("factor", [2, 3, 4])
@pytest.mark.parametrize("name", list(BASELINES))
def test_every_baseline_enlarges_the_inputs_with_matlab_bicubic(name: str, factor: int, clip):
    lr, gt = clip
    out = list(BASELINES[name](lr, time_factor=factor))
    assert len(out) == factor * (len(lr) - 1) + 1
    for k, frame in enumerate(lr):
        assert out[factor * k].dtype == np.uint8 and out[factor * k].shape == gt[0].shape
        np.testing.assert_array_equal(out[factor * k], _up(frame))
    assert all(f.dtype == np.uint8 and f.shape == gt[0].shape for f in out)


def test_repeat_and_blend_midpoints_are_exact(clip) -> None:
    lr, _ = clip
    repeat, blend = list(bicubic_repeat(lr)), list(bicubic_blend(lr))
    for k in range(len(lr) - 1):
        np.testing.assert_array_equal(repeat[2 * k + 1], repeat[2 * k])
        exact = 0.5 * (_float_up(lr[k]) + _float_up(lr[k + 1]))
        np.testing.assert_array_equal(blend[2 * k + 1], np.floor(np.clip(exact, 0, 255) + 0.5))


def _float_up(frame: np.ndarray) -> np.ndarray:
    x = torch.from_numpy(frame.astype(np.float64)).permute(2, 0, 1)
    return bicubic_upscale(x).permute(1, 2, 0).numpy()


def test_flow_midpoint_is_the_input_moved_halfway(clip) -> None:
    lr, _ = clip
    flow = list(bicubic_flow(lr))
    for k in range(len(lr) - 1):
        # The exact answer: input k's enlargement moved by half the motion (4 px right),
        # which is also what bicubic would make of the true middle frame.
        moved = np.roll(_up(lr[k]), SHIFT, axis=1).astype(int)
        diff = np.abs(_inner(flow[2 * k + 1]).astype(int) - _inner(moved))
        assert diff.max() <= 1  # bilinear sampling at integer positions: rounding only


def test_flow_beats_blending_and_repetition_on_motion(clip) -> None:
    lr, gt = clip
    scores = {}
    for name, method in BASELINES.items():
        out = list(method(lr))
        scores[name] = [psnr_y(_inner(out[i]), _inner(gt[i])) for i in range(len(gt))]
    interp = {name: np.mean(s[1::2]) for name, s in scores.items()}
    recon = np.mean(scores["bicubic-flow"][0::2])
    assert interp["bicubic-flow"] > interp["bicubic-blend"] + 2.0  # measured: +2.9 dB
    assert interp["bicubic-blend"] > interp["bicubic-repeat"]
    # Motion compensated, the middle frame is as good as the enlarged inputs.
    assert interp["bicubic-flow"] == pytest.approx(recon, abs=0.1)


def test_flow_midpoint_of_a_still_frame_is_the_frame() -> None:
    frame = pattern(48, 64, 0).astype(np.float64)
    np.testing.assert_allclose(flow_midpoint(frame, frame), frame, atol=1e-3)


def test_occlusion_mask_flags_inconsistent_flow() -> None:
    h, w = 8, 10
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    grid = np.stack([xs, ys], axis=-1)
    forward = np.zeros((h, w, 2), np.float32)
    forward[..., 0] = 3.0
    assert occlusion_mask(forward, -forward, grid).sum() == 0  # consistent both ways
    assert occlusion_mask(forward, forward, grid).all()  # backward flow does not come back


def test_baselines_refuse_single_frames() -> None:
    with pytest.raises(ValueError, match="n >= 2"):
        list(bicubic_blend(np.zeros((1, 8, 8, 3), np.uint8)))


# --- any time step ------------------------------------------------------------------------------

STEP = 2  # HR pixels per HR frame; at time factor 4 the inputs are 8 px (2 LR px) apart


@pytest.fixture(scope="module")
def quarter_clip() -> tuple[np.ndarray, np.ndarray]:
    """9 HR frames of the texture moving STEP px each; LR = every 4th (3 inputs), GT = all."""
    hr = np.stack([pattern(96, 128, STEP * t) for t in range(9)])
    lr = np.stack([make_lr_clip(frame[None])[0][0] for frame in hr[::4]])  # (3, 24, 32, 3)
    return lr, hr


def test_between_times_and_bad_time_steps() -> None:
    assert between_times(2) == [0.5] and between_times(4) == [0.25, 0.5, 0.75]
    for bad in (1, 0, 2.0, True):
        with pytest.raises(ValueError, match="integer >= 2"):
            between_times(bad)  # type: ignore[arg-type]
    frame = np.zeros((16, 16, 3), np.float32)
    with pytest.raises(ValueError, match=r"t in \(0, 1\)"):
        flow_at_times(frame, frame, [1.0])
    with pytest.raises(ValueError, match=r"t in \(0, 1\)"):
        flow_lr_at_times(frame.astype(np.uint8), frame.astype(np.uint8), [0.0])


def test_repeat_and_blend_at_any_time_are_exact(quarter_clip) -> None:
    lr, _ = quarter_clip
    repeat, blend = list(bicubic_repeat(lr, 4)), list(bicubic_blend(lr, 4))
    for k in range(len(lr) - 1):
        a, b = _float_up(lr[k]), _float_up(lr[k + 1])
        for j, t in enumerate((0.25, 0.5, 0.75), start=1):
            np.testing.assert_array_equal(repeat[4 * k + j], repeat[4 * k])
            exact = np.floor(np.clip((1 - t) * a + t * b, 0, 255) + 0.5)
            np.testing.assert_array_equal(blend[4 * k + j], exact)


def test_flow_at_a_quarter_is_the_input_moved_a_quarter(quarter_clip) -> None:
    """Texture moving 8 px between inputs: the frame at t = j/4 is input k moved 2j px,
    which is the true HR frame there up to bicubic's loss; blending is far worse."""
    lr, hr = quarter_clip
    flow, blend = list(bicubic_flow(lr, 4)), list(bicubic_blend(lr, 4))
    for k in range(len(lr) - 1):
        for j in (1, 2, 3):
            i = 4 * k + j
            moved = np.roll(_up(lr[k]), STEP * j, axis=1).astype(int)
            assert np.abs(_inner(flow[i]).astype(int) - _inner(moved)).max() <= 1
            truth = psnr_y(_inner(flow[i]), _inner(hr[i]))
            reconstructed = psnr_y(_inner(flow[4 * k]), _inner(hr[4 * k]))
            assert truth == pytest.approx(reconstructed, abs=0.3)
            # measured: +2.0 dB at t = 1/4 and 3/4, +2.9 at 1/2
            assert truth > psnr_y(_inner(blend[i]), _inner(hr[i])) + 1.5


def test_flow_lr_at_any_time_follows_the_motion(quarter_clip) -> None:
    lr, hr = quarter_clip
    flow_lr, blend = list(bicubic_flow_lr(lr, 4)), list(bicubic_blend(lr, 4))
    reconstructed = psnr_y(_inner(flow_lr[0]), _inner(hr[0]))
    for i in (1, 2, 3, 5, 6, 7):
        score = psnr_y(_inner(flow_lr[i]), _inner(hr[i]))
        assert score > reconstructed - 0.5  # as good as the inputs' enlargement (measured: +0.2)
        assert score > psnr_y(_inner(blend[i]), _inner(hr[i])) + 1.5  # measured: +2.2


# --- t = 1/2 is what it was ---------------------------------------------------------------------


def _legacy_flow_midpoint(frame0: np.ndarray, frame1: np.ndarray) -> np.ndarray:
    """``flow_midpoint`` as it was before any time step (frozen copy)."""
    dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    g0, g1 = _gray(frame0), _gray(frame1)
    f01, f10 = dis.calc(g0, g1, None), dis.calc(g1, g0, None)
    h, w = g0.shape
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    grid = np.stack([xs, ys], axis=-1)
    ft0 = 0.25 * (f10 - f01)
    ft1 = -ft0
    o0 = _sample(occlusion_mask(f01, f10, grid), grid, ft0)
    o1 = _sample(occlusion_mask(f10, f01, grid), grid, ft1)
    w0 = 0.5 * (1.0 - o1 * (1.0 - o0))
    w1 = 0.5 * (1.0 - o0 * (1.0 - o1))
    warped0 = _sample(frame0.astype(np.float32), grid, ft0)
    warped1 = _sample(frame1.astype(np.float32), grid, ft1)
    total = w0 + w1
    return (w0[..., None] * warped0 + w1[..., None] * warped1) / total[..., None]


def _legacy(lr: np.ndarray, name: str) -> list[np.ndarray]:
    """The 2n-1 frames each baseline made before any time step (frozen copies)."""
    out = [_up(lr[0])]
    for a, b in itertools.pairwise(lr):
        fa, fb = _float_up(a), _float_up(b)
        if name == "bicubic-repeat":
            mid = fa
        elif name == "bicubic-blend":
            mid = 0.5 * (fa + fb)
        elif name == "bicubic-flow":
            mid = _legacy_flow_midpoint(fa, fb)
        else:  # the flow-guided network's skip, from zsm.models
            pair = torch.from_numpy(np.stack((a, b))).permute(0, 3, 1, 2).float().div_(255.0)
            flow = torch.from_numpy(DISFlow().pair(a, b))
            mid = flow_skip(pair[None], flow[None, None])[0, 1].permute(1, 2, 0).double() * 255
            mid = mid.numpy()
        out += [np.floor(np.clip(mid, 0, 255) + 0.5).astype(np.uint8), _up(b)]
    return out


def _occluding_clip() -> np.ndarray:
    """LR frames (4, 13, 18, 3), sizes not multiples of 4: a blurred noise background with
    a square moving over it (occlusions both ways) and a global drift."""
    rng = np.random.default_rng(3)
    background = cv2.GaussianBlur(rng.integers(0, 256, (20, 40, 3), dtype=np.uint8), (5, 5), 1.5)
    frames = []
    for k in range(4):
        frame = background[3 : 3 + 13, k : k + 18].copy()
        frame[4:9, 2 + 3 * k : 7 + 3 * k] = (230, 40, 40)
        frames.append(frame)
    return np.stack(frames)


@pytest.mark.parametrize("name", list(BASELINES))
def test_half_time_outputs_are_bit_identical_to_before(name: str, clip) -> None:
    for lr in (clip[0], _occluding_clip()):
        before = _legacy(lr, name)
        for factor_2 in (list(BASELINES[name](lr)), list(BASELINES[name](lr, time_factor=2))):
            assert len(factor_2) == len(before)
            for new, old in zip(factor_2, before, strict=True):
                np.testing.assert_array_equal(new, old)


def test_flow_midpoint_is_flow_at_half_bit_for_bit() -> None:
    lr = _occluding_clip()
    a, b = _upscale(lr[0]), _upscale(lr[1])
    np.testing.assert_array_equal(flow_midpoint(a, b), _legacy_flow_midpoint(a, b))
    np.testing.assert_array_equal(flow_at_times(a, b, [0.25, 0.5])[1], flow_midpoint(a, b))
