"""Classical space-time upscaling baselines: n LR frames -> 2n-1 frames at 4x the size.

Every baseline enlarges each input frame with MATLAB-style bicubic (the
inverse of the benchmarks' degradation, as in the SR literature's "Bicubic"
rows) and differs only in how the frame halfway between inputs k and k+1 is
made:

- ``bicubic-repeat``: input k's frame again (what a frame-rate doubler does),
- ``bicubic-blend``: the mean of the two neighbours (cross-fade; ghosts on motion),
- ``bicubic-flow``: both neighbours warped to t = 1/2 along OpenCV DIS optical
  flow and blended with occlusion-aware weights (see :func:`flow_midpoint`).
- ``bicubic-flow-lr``: the same along the DIS flow of the *LR* frames, enlarged;
  exactly the in-between frames of an untrained flow-guided network, whose
  global skip this is (:func:`zsm.models.zsm.flow_skip`; its enlargement is
  PyTorch's bicubic, not MATLAB's).

Each takes LR frames as uint8 RGB (n, h, w, 3) and yields the 2n-1 uint8 RGB
output frames (4h, 4w, 3) one at a time, in order, so that long clips are
scored without holding every output in memory.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Sequence

import cv2
import numpy as np
import torch

from zsm.data.degrade import SCALE, bicubic_upscale
from zsm.models.zsm import flow_skip
from zsm.ops.flow import DISFlow

Baseline = Callable[[Sequence[np.ndarray]], Iterator[np.ndarray]]


def _upscale(frame: np.ndarray, scale: int = SCALE) -> np.ndarray:
    """uint8 (h, w, 3) -> float64 (sh, sw, 3) in 0..255, MATLAB bicubic, not yet rounded."""
    x = torch.from_numpy(frame.astype(np.float64)).permute(2, 0, 1)  # (3, h, w)
    return bicubic_upscale(x, scale).permute(1, 2, 0).numpy()


def _to_uint8(image: np.ndarray) -> np.ndarray:
    return np.floor(np.clip(image, 0.0, 255.0) + 0.5).astype(np.uint8)


def _check_lr(lr: Sequence[np.ndarray]) -> None:
    if len(lr) < 2:
        raise ValueError(f"expected n >= 2 LR frames, got {len(lr)}")
    first = lr[0]
    if first.dtype != np.uint8 or first.ndim != 3 or first.shape[2] != 3:
        raise ValueError(
            f"expected uint8 RGB LR frames (h, w, 3), got dtype {first.dtype} shape {first.shape}"
        )


def _with_midpoints(
    lr: Sequence[np.ndarray], midpoint: Callable[[np.ndarray, np.ndarray], np.ndarray]
) -> Iterator[np.ndarray]:
    """Yield up(0), mid(0, 1), up(1), ..., up(n-1); ``midpoint`` sees unrounded frames."""
    _check_lr(lr)
    previous = _upscale(lr[0])
    yield _to_uint8(previous)
    for frame in lr[1:]:
        current = _upscale(frame)
        yield _to_uint8(midpoint(previous, current))
        yield _to_uint8(current)
        previous = current


def bicubic_repeat(lr: Sequence[np.ndarray]) -> Iterator[np.ndarray]:
    """Bicubic x4 of every input; the in-between frame repeats the earlier input."""
    return _with_midpoints(lr, lambda a, b: a)


def bicubic_blend(lr: Sequence[np.ndarray]) -> Iterator[np.ndarray]:
    """Bicubic x4 of every input; the in-between frame is the mean of its neighbours."""
    return _with_midpoints(lr, lambda a, b: 0.5 * (a + b))


def bicubic_flow(lr: Sequence[np.ndarray]) -> Iterator[np.ndarray]:
    """Bicubic x4 of every input; the in-between frame is interpolated along optical flow."""
    dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    return _with_midpoints(lr, lambda a, b: flow_midpoint(a, b, dis=dis))


def bicubic_flow_lr(lr: Sequence[np.ndarray]) -> Iterator[np.ndarray]:
    """Bicubic x4 of every input; the in-between frame is the flow-guided network's skip."""
    _check_lr(lr)
    dis = DISFlow()
    yield _to_uint8(_upscale(lr[0]))
    for a, b in itertools.pairwise(lr):
        pair = torch.from_numpy(np.stack((a, b))).permute(0, 3, 1, 2).float().div_(255.0)
        flow = torch.from_numpy(dis.pair(a, b))
        mid = flow_skip(pair[None], flow[None, None])[0, 1]  # (3, 4h, 4w) in [0, 1]
        yield _to_uint8(mid.permute(1, 2, 0).double().mul_(255.0).numpy())
        yield _to_uint8(_upscale(b))


BASELINES: dict[str, Baseline] = {
    "bicubic-repeat": bicubic_repeat,
    "bicubic-blend": bicubic_blend,
    "bicubic-flow": bicubic_flow,
    "bicubic-flow-lr": bicubic_flow_lr,
}


def _gray(image: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(_to_uint8(image), cv2.COLOR_RGB2GRAY)


def _sample(image: np.ndarray, grid: np.ndarray, flow: np.ndarray) -> np.ndarray:
    """Backward warp: ``image`` sampled at ``grid + flow`` (bilinear, edges replicated)."""
    pos = (grid + flow).astype(np.float32)
    return cv2.remap(
        image, pos[..., 0], pos[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
    )


def occlusion_mask(forward: np.ndarray, backward: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """1.0 where a pixel of the first frame has no match in the second, else 0.0.

    Forward-backward consistency (Sundaram et al., ECCV 2010): following the
    forward flow and then the backward flow found there should return to the
    start, up to a tolerance that grows with the motion.
    """
    back_at_target = _sample(backward, grid, forward)
    err = np.sum((forward + back_at_target) ** 2, axis=-1)
    tol = 0.01 * (np.sum(forward**2, axis=-1) + np.sum(back_at_target**2, axis=-1)) + 0.5
    return (err > tol).astype(np.float32)


def flow_midpoint(
    frame0: np.ndarray,
    frame1: np.ndarray,
    *,
    dis: cv2.DISOpticalFlow | None = None,
) -> np.ndarray:
    """The frame halfway between two float RGB frames (H, W, 3), along DIS optical flow.

    1. Flow both ways, F01 and F10, with DIS on the (bicubic-enlarged) gray frames.
    2. Flow from the middle frame to each end, under locally constant motion
       (Jiang et al., Super SloMo, CVPR 2018, eq. 4 at t = 1/2):
       F_t0 = (F10 - F01) / 4, F_t1 = (F01 - F10) / 4.
    3. Backward-warp both frames to the middle and blend them. Occlusion-aware
       weights: where the sample taken from frame 0 is occluded in frame 1
       (forward-backward check), the sample from frame 1 is wrong and gets no
       weight, and vice versa; where both or neither are, it is a plain mean.
    """
    if frame0.shape != frame1.shape:
        raise ValueError(f"frames differ in shape: {frame0.shape} vs {frame1.shape}")
    dis = dis or cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    g0, g1 = _gray(frame0), _gray(frame1)
    f01 = dis.calc(g0, g1, None)  # (H, W, 2) as (dx, dy): g0(x) ~ g1(x + f01(x))
    f10 = dis.calc(g1, g0, None)
    h, w = g0.shape
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    grid = np.stack([xs, ys], axis=-1)  # (H, W, 2) pixel positions as (x, y)

    ft0 = 0.25 * (f10 - f01)
    ft1 = -ft0
    occ0 = occlusion_mask(f01, f10, grid)  # pixels of frame 0 that vanish in frame 1
    occ1 = occlusion_mask(f10, f01, grid)  # pixels of frame 1 not present in frame 0
    o0 = _sample(occ0, grid, ft0)  # is the sample taken from frame 0 such a pixel?
    o1 = _sample(occ1, grid, ft1)
    w0 = 0.5 * (1.0 - o1 * (1.0 - o0))
    w1 = 0.5 * (1.0 - o0 * (1.0 - o1))
    warped0 = _sample(frame0.astype(np.float32), grid, ft0)
    warped1 = _sample(frame1.astype(np.float32), grid, ft1)
    total = w0 + w1  # >= 0.5 everywhere: the weights never both vanish
    return (w0[..., None] * warped0 + w1[..., None] * warped1) / total[..., None]
