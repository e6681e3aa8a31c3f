"""Optical flow of LR frames: OpenCV's DIS (Kroeger et al., ECCV 2016), both directions.

The flow-guided network (:class:`~zsm.models.config.ZSMConfig` ``flow_guided``)
takes, for every neighbouring pair of its n input frames, the forward and
backward flow as one ``(n-1, 4, H, W)`` tensor per clip: channels
``(dx01, dy01, dx10, dy10)`` in LR pixels (see :mod:`zsm.ops.warp`). It is
computed on whole frames, before the video pipeline cuts them into tiles, so
that a tile sees motion larger than itself.

DIS runs on the gray LR frames enlarged ``FLOW_SCALE`` = 4 times (bicubic), and its
flow is area-reduced back to LR pixels: DIS matches 8-px patches (preset ``medium``)
from half its input's resolution, so on LR frames of 40 to 200 pixels a side the
enlarged frames give it finer patches and sub-pixel detail. Chosen on the validation
sets (Y-PSNR dB at flow scale 1 / 2 / 4, the same weights): ``zsm-compact-flow`` x2
30.03 / 30.17 / 30.31 (its flow skip alone 28.64 / 28.87 / 29.07); ``zsm-compact-time``
x2 31.98 / 32.00 / 32.23, x4 29.57 / 29.90 / 30.28. It costs 16x the DIS time of scale
1, a few percent of the network's (``benchmarks/flow_cost.py``). ``DISFlow(scale=1)``
gives the flow the weights were first trained with (see MODEL_CARD). Frames are never
enlarged past ``MAX_FLOW_PIXELS`` (2560x1440's worth): LR frames above 640x360 get a
smaller factor (1280x720: 2, 1920x1080: 1), where DIS has patches enough, so its time
and memory stay bounded (at 4x, a 1280x720 pair took 2.1 s and 1.6 GB).
"""

from __future__ import annotations

import itertools
import math

import cv2
import numpy as np
import torch

FLOW_CHANNELS = 4  # (dx, dy) forward, then (dx, dy) backward
_MIN_SIDE = 16  # DIS refuses frames under 12 px; smaller ones are edge-padded to this
FLOW_SCALE = 4  # DIS runs on the LR frames enlarged this many times (see above)
MAX_FLOW_PIXELS = 2560 * 1440  # ... but never past this many pixels


def _gray(frame: np.ndarray) -> np.ndarray:
    gray = cv2.cvtColor(np.ascontiguousarray(frame), cv2.COLOR_RGB2GRAY)
    h, w = gray.shape
    if h < _MIN_SIDE or w < _MIN_SIDE:
        gray = cv2.copyMakeBorder(
            gray, 0, max(0, _MIN_SIDE - h), 0, max(0, _MIN_SIDE - w), cv2.BORDER_REPLICATE
        )
    return gray


class DISFlow:
    """DIS optical flow (preset ``medium``) of uint8 RGB frames, both ways for each pair,
    computed on the frames enlarged ``scale`` times and given in the frames' pixels."""

    def __init__(self, scale: int = FLOW_SCALE) -> None:
        if scale < 1:
            raise ValueError(f"flow scale must be >= 1, got {scale}")
        self.scale = scale
        self._dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)

    def scale_for(self, h: int, w: int) -> int:
        """The factor frames of h x w pixels are enlarged by: ``scale``, or less where that
        would exceed :data:`MAX_FLOW_PIXELS` (at least 1)."""
        fits = math.isqrt(MAX_FLOW_PIXELS // max(1, h * w))
        return max(1, min(self.scale, fits))

    def pair(self, frame0: np.ndarray, frame1: np.ndarray) -> np.ndarray:
        """(4, H, W) float32: the flow 0 -> 1 then 1 -> 0, of uint8 (H, W, 3) frames."""
        h, w = frame0.shape[:2]
        g0, g1 = _gray(frame0), _gray(frame1)
        gh, gw = g0.shape
        s = self.scale_for(gh, gw)
        if s > 1:  # both frames enlarged once, for both directions
            big = (gw * s, gh * s)
            g0 = cv2.resize(g0, big, interpolation=cv2.INTER_CUBIC)
            g1 = cv2.resize(g1, big, interpolation=cv2.INTER_CUBIC)
        f01 = self._reduced(self._dis.calc(g0, g1, None), s, gh, gw)[:h, :w]
        f10 = self._reduced(self._dis.calc(g1, g0, None), s, gh, gw)[:h, :w]
        return np.concatenate((f01, f10), axis=-1).transpose(2, 0, 1)

    @staticmethod
    def _reduced(flow: np.ndarray, s: int, h: int, w: int) -> np.ndarray:
        """A flow of frames enlarged ``s`` times, area-reduced to (h, w) and in their pixels."""
        if s == 1:
            return flow
        return cv2.resize(flow, (w, h), interpolation=cv2.INTER_AREA) * np.float32(1.0 / s)

    def clip(self, frames: np.ndarray | list[np.ndarray]) -> np.ndarray:
        """(n-1, 4, H, W) float32 for uint8 frames (n, H, W, 3)."""
        return np.stack([self.pair(a, b) for a, b in itertools.pairwise(frames)])


def to_uint8_frames(frames: torch.Tensor) -> np.ndarray:
    """(n, 3, H, W) floats in [0, 1] -> uint8 (n, H, W, 3), rounded as the video writer does."""
    x = frames.detach().float().clamp(0.0, 1.0).mul(255.0).add(0.5).floor()
    return x.to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def frame_flows(frames: torch.Tensor, estimator: DISFlow | None = None) -> torch.Tensor:
    """The flows of every neighbouring pair of (B, n, 3, H, W) frames in [0, 1]:
    (B, n-1, 4, H, W) float32 on the frames' device."""
    estimator = estimator or DISFlow()
    out = [torch.from_numpy(estimator.clip(to_uint8_frames(clip))) for clip in frames]
    return torch.stack(out).to(frames.device)
