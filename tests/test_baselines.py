"""Classical baselines on a translating pattern, where every exact answer is known."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from zsm.data.degrade import bicubic_upscale, make_lr_clip
from zsm.evaluation import BASELINES, bicubic_blend, bicubic_flow, bicubic_repeat, psnr_y
from zsm.evaluation.baselines import flow_midpoint, occlusion_mask

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


@pytest.mark.parametrize("name", list(BASELINES))
def test_every_baseline_enlarges_the_inputs_with_matlab_bicubic(name: str, clip) -> None:
    lr, gt = clip
    out = list(BASELINES[name](lr))
    assert len(out) == 2 * len(lr) - 1 == len(gt)
    for k, frame in enumerate(lr):
        assert out[2 * k].dtype == np.uint8 and out[2 * k].shape == gt[0].shape
        np.testing.assert_array_equal(out[2 * k], _up(frame))


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
