"""Classical space-time upscaling baselines: n LR frames -> N(n-1)+1 frames at 4x the size.

Every baseline enlarges each input frame with MATLAB-style bicubic (the
inverse of the benchmarks' degradation, as in the SR literature's "Bicubic"
rows) and differs only in how the frames at times t = 1/N, ..., (N-1)/N
between inputs k (t = 0) and k+1 (t = 1) are made, N the time factor
(default 2: the one frame halfway):

- ``bicubic-repeat``: input k's frame again (what a frame-rate doubler does),
- ``bicubic-blend``: the neighbours weighted 1 - t and t (cross-fade; ghosts on motion),
- ``bicubic-flow``: both neighbours warped to t along OpenCV DIS optical flow and
  blended with occlusion-aware weights (see :func:`flow_at_times`).
- ``bicubic-flow-lr``: the same along the DIS flow of the *LR* frames, enlarged
  (:func:`zsm.ops.warp.blend_at_time`); at t = 1/2 exactly the in-between frames
  of an untrained flow-guided network, whose global skip this is
  (:func:`zsm.models.zsm.flow_skip`; its enlargement is PyTorch's bicubic, not MATLAB's).

Each takes LR frames as uint8 RGB (n, h, w, 3) and a time factor N, and
yields the N(n-1)+1 uint8 RGB output frames (4h, 4w, 3) one at a time, in
order, so that long clips are scored without holding every output in memory.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Protocol

import cv2
import numpy as np
import torch

from zsm.data.degrade import SCALE, bicubic_upscale
from zsm.models.zsm import flow_skip_at
from zsm.ops.flow import DISFlow

DEFAULT_TIME_FACTOR = 2  # one frame halfway between inputs, as Zooming Slow-Mo makes


class Baseline(Protocol):
    """A baseline: n uint8 LR frames and a time factor N -> N(n-1)+1 uint8 HR frames."""

    def __call__(
        self, lr: Sequence[np.ndarray], time_factor: int = DEFAULT_TIME_FACTOR
    ) -> Iterator[np.ndarray]: ...


def between_times(time_factor: int) -> list[float]:
    """The times j / N, j = 1 .. N-1, of the frames a time factor N puts between two inputs."""
    if isinstance(time_factor, bool) or not isinstance(time_factor, int) or time_factor < 2:
        raise ValueError(f"time factor must be an integer >= 2, got {time_factor!r}")
    return [j / time_factor for j in range(1, time_factor)]


def _check_time(t: float) -> None:
    if not 0.0 < t < 1.0:
        raise ValueError(f"expected a time step t in (0, 1), got {t}")


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


def _with_times(
    lr: Sequence[np.ndarray],
    between: Callable[[np.ndarray, np.ndarray, list[float]], Iterable[np.ndarray]],
    time_factor: int,
) -> Iterator[np.ndarray]:
    """Yield up(0), the frames between 0 and 1, up(1), ..., up(n-1); ``between`` sees the
    unrounded enlargements of both neighbours."""
    times = between_times(time_factor)
    _check_lr(lr)
    previous = _upscale(lr[0])
    yield _to_uint8(previous)
    for frame in lr[1:]:
        current = _upscale(frame)
        for image in between(previous, current, times):
            yield _to_uint8(image)
        yield _to_uint8(current)
        previous = current


def bicubic_repeat(
    lr: Sequence[np.ndarray], time_factor: int = DEFAULT_TIME_FACTOR
) -> Iterator[np.ndarray]:
    """Bicubic x4 of every input; the frames between repeat the earlier input."""
    return _with_times(lr, lambda a, b, times: (a for _ in times), time_factor)


def bicubic_blend(
    lr: Sequence[np.ndarray], time_factor: int = DEFAULT_TIME_FACTOR
) -> Iterator[np.ndarray]:
    """Bicubic x4 of every input; the frame at t is (1 - t) * earlier + t * later."""
    return _with_times(lr, lambda a, b, times: ((1.0 - t) * a + t * b for t in times), time_factor)


def bicubic_flow(
    lr: Sequence[np.ndarray], time_factor: int = DEFAULT_TIME_FACTOR
) -> Iterator[np.ndarray]:
    """Bicubic x4 of every input; the frames between are interpolated along optical flow."""
    dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    return _with_times(lr, lambda a, b, times: flow_at_times(a, b, times, dis=dis), time_factor)


def bicubic_flow_lr(
    lr: Sequence[np.ndarray], time_factor: int = DEFAULT_TIME_FACTOR
) -> Iterator[np.ndarray]:
    """Bicubic x4 of every input; the frames between are the flow-guided network's skip
    at each t (along the LR flow, enlarged)."""
    times = between_times(time_factor)
    _check_lr(lr)
    dis = DISFlow()
    yield _to_uint8(_upscale(lr[0]))
    for a, b in itertools.pairwise(lr):
        for image in flow_lr_at_times(a, b, times, dis=dis):
            yield _to_uint8(image)
        yield _to_uint8(_upscale(b))


def flow_lr_at_times(
    frame0: np.ndarray, frame1: np.ndarray, times: Sequence[float], *, dis: DISFlow | None = None
) -> list[np.ndarray]:
    """The frames at ``times`` in (0, 1) between two uint8 LR frames (h, w, 3), as float64
    (4h, 4w, 3) in 0..255, unrounded: the flow-guided network's global skip at each t
    (:func:`zsm.models.zsm.flow_skip_at`): the frames enlarged with PyTorch's bicubic,
    warped along their LR DIS flow enlarged x4 and blended (:func:`zsm.ops.warp.blend_at_time`).
    """
    for t in times:
        _check_time(t)
    dis = dis or DISFlow()
    pair = torch.from_numpy(np.stack((frame0, frame1))).permute(0, 3, 1, 2).float().div_(255.0)
    flow = torch.from_numpy(dis.pair(frame0, frame1))[None, None]
    frames = flow_skip_at(pair[None], flow, times)
    return [f[0, 0].permute(1, 2, 0).double().mul_(255.0).numpy() for f in frames]


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


def flow_at_times(
    frame0: np.ndarray,
    frame1: np.ndarray,
    times: Sequence[float],
    *,
    dis: cv2.DISOpticalFlow | None = None,
) -> list[np.ndarray]:
    """The frames at ``times`` in (0, 1) between two float RGB frames (H, W, 3), along
    DIS optical flow; float32 (H, W, 3), unrounded.

    1. Flow both ways, F01 and F10, with DIS on the (bicubic-enlarged) gray frames.
    2. Flow from the frame at t to each end, under locally constant motion
       (Jiang et al., Super SloMo, CVPR 2018, eq. 4):
       F_t0 = -(1 - t) t F01 + t^2 F10, F_t1 = (1 - t)^2 F01 - t (1 - t) F10.
    3. Backward-warp both frames to t and blend them, weighted 1 - t and t.
       Occlusion-aware: where the sample taken from frame 0 is occluded in frame 1
       (forward-backward check), the sample from frame 1 is wrong and gets no
       weight, and vice versa; where both or neither are, the weights are 1 - t and t.

    The flows and occlusion masks are computed once for all ``times``.
    """
    if frame0.shape != frame1.shape:
        raise ValueError(f"frames differ in shape: {frame0.shape} vs {frame1.shape}")
    for t in times:
        _check_time(t)
    dis = dis or cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    g0, g1 = _gray(frame0), _gray(frame1)
    f01 = dis.calc(g0, g1, None)  # (H, W, 2) as (dx, dy): g0(x) ~ g1(x + f01(x))
    f10 = dis.calc(g1, g0, None)
    h, w = g0.shape
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    grid = np.stack([xs, ys], axis=-1)  # (H, W, 2) pixel positions as (x, y)
    occ0 = occlusion_mask(f01, f10, grid)  # pixels of frame 0 that vanish in frame 1
    occ1 = occlusion_mask(f10, f01, grid)  # pixels of frame 1 not present in frame 0
    image0, image1 = frame0.astype(np.float32), frame1.astype(np.float32)
    out = []
    for t in times:
        # Float32 flows times Python floats stay float32; at t = 1/2 the factors are powers
        # of two, so these are exactly (F10 - F01) / 4 and its negative.
        ft0 = f01 * (-(1.0 - t) * t) + f10 * (t * t)
        ft1 = f01 * ((1.0 - t) ** 2) + f10 * (-t * (1.0 - t))
        o0 = _sample(occ0, grid, ft0)  # is the sample taken from frame 0 such a pixel?
        o1 = _sample(occ1, grid, ft1)
        w0 = (1.0 - t) * (1.0 - o1 * (1.0 - o0))
        w1 = t * (1.0 - o0 * (1.0 - o1))
        warped0 = _sample(image0, grid, ft0)
        warped1 = _sample(image1, grid, ft1)
        total = w0 + w1  # >= min(t, 1 - t) everywhere: the weights never both vanish
        out.append((w0[..., None] * warped0 + w1[..., None] * warped1) / total[..., None])
    return out


def flow_midpoint(
    frame0: np.ndarray,
    frame1: np.ndarray,
    *,
    dis: cv2.DISOpticalFlow | None = None,
) -> np.ndarray:
    """The frame halfway between two float RGB frames (H, W, 3): :func:`flow_at_times` at 1/2."""
    return flow_at_times(frame0, frame1, (0.5,), dis=dis)[0]
