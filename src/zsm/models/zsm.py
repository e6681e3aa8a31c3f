"""Zooming Slow-Mo (Xiang et al., CVPR 2020): one-stage space-time video super-resolution."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch
from torch import nn
from torch.nn import functional as F

from zsm.models.config import ZSMConfig, preset
from zsm.models.convlstm import BiDeformableConvLSTM
from zsm.models.extract import FeatureExtractor
from zsm.models.interp import FeatureInterpolation
from zsm.models.layout import channels_last_on, flatten_frames, seq_op
from zsm.models.reconstruct import Reconstructor

SCALE = 4  # spatial factor (two x2 PixelShuffles)
MULTIPLE = 4  # H, W must be multiples of this inside (two stride-2 pyramid levels)


class ZoomingSlowMo(nn.Module):
    """n LR frames (B, n, 3, H, W) in [0, 1] -> 2n-1 HR frames (B, 2n-1, 3, 4H, 4W).

    Output frame 2k is input frame k at 4x the size; output frame 2k+1 is the
    frame halfway between inputs k and k+1, interpolated in feature space.
    Any H, W >= 1 work: they are replicate-padded to multiples of 4 inside and
    the output is cropped back. The output is not clamped.
    """

    def __init__(self, config: ZSMConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or ZSMConfig()
        self.extract = FeatureExtractor(nf=config.nf, front_RBs=config.front_RBs)
        self.interpolate = FeatureInterpolation(nf=config.nf, groups=config.groups)
        self.aggregate = BiDeformableConvLSTM(nf=config.nf, groups=config.groups)
        self.reconstruct = Reconstructor(nf=config.nf, back_RBs=config.back_RBs, hr_nf=config.hr_nf)

    @classmethod
    def from_preset(cls, name: str, **overrides: object) -> ZoomingSlowMo:
        """Build a randomly initialised network from a named preset (``official``, ``compact``)."""
        base = preset(name)
        return cls(ZSMConfig(**{**base.__dict__, **overrides}))

    def forward(
        self,
        frames: torch.Tensor,
        stage: Callable[[str], contextlib.AbstractContextManager[object]] | None = None,
    ) -> torch.Tensor:
        """The HR frames; ``stage(name)``, if given, wraps each of :data:`STAGES`.

        (``zsm benchmark`` times and counts the stages through it.)
        """
        stage = stage or _no_stage
        b, n, _, h, w = _check_input(frames)
        x = _pad_to_multiple(frames, MULTIPLE)
        with stage("extract"):
            pyr = self.extract(frames_in(x))  # levels of (B*n, nf, h, w)
        with stage("interpolate"):
            pyr = [level.unflatten(0, (b, n)) for level in pyr]
            # Every neighbouring pair (k, k+1) at once, pairs stacked on the batch axis.
            first = [flatten_frames(level[:, :-1]) for level in pyr]
            second = [flatten_frames(level[:, 1:]) for level in pyr]
            mid = self.interpolate(first, second).unflatten(0, (b, n - 1))
            feats = _interleave(pyr[0], mid)  # (B, 2n-1, nf, H', W')
        with stage("ConvLSTM"):
            feats = self.aggregate(feats)
        with stage("reconstruct"):
            out = self.reconstruct(flatten_frames(feats)).unflatten(0, (b, 2 * n - 1))
            if self.config.global_skip:
                _add_bicubic_skip_(out, x)
            return out[..., : SCALE * h, : SCALE * w]


STAGES = ("extract", "interpolate", "ConvLSTM", "reconstruct")


def _no_stage(name: str) -> contextlib.AbstractContextManager[object]:
    return contextlib.nullcontext()


def _check_input(frames: torch.Tensor) -> tuple[int, int, int, int, int]:
    if frames.dim() != 5 or frames.shape[2] != 3:
        raise ValueError(f"expected frames of shape (B, n, 3, H, W), got {tuple(frames.shape)}")
    b, n, c, h, w = frames.shape
    if n < 2:
        raise ValueError(f"expected n >= 2 input frames, got {n}")
    if h < 1 or w < 1:
        raise ValueError(f"expected frames of at least 1x1 pixels, got {h}x{w}")
    return b, n, c, h, w


def _pad_to_multiple(frames: torch.Tensor, multiple: int) -> torch.Tensor:
    """Replicate-pad H and W of (B, n, C, H, W) up to multiples of ``multiple``."""
    h, w = frames.shape[-2:]
    ph, pw = -h % multiple, -w % multiple
    if ph == 0 and pw == 0:
        return frames
    b, n = frames.shape[:2]
    flat = frames.flatten(0, 1)
    # Replicate padding needs a size >= 1 on each side; it is, since H, W >= 1.
    flat = F.pad(flat, (0, pw, 0, ph), mode="replicate")
    return flat.unflatten(0, (b, n))


def frames_in(x: torch.Tensor) -> torch.Tensor:
    """(B, n, 3, H, W) -> (B*n, 3, H, W), channels-last where the network runs so."""
    flat = x.flatten(0, 1)
    if channels_last_on(flat.device):
        return flat.contiguous(memory_format=torch.channels_last)
    return flat


def _interleave(keys: torch.Tensor, mids: torch.Tensor) -> torch.Tensor:
    """[k0, m0, k1, m1, ..., k_{n-1}] from keys (B, n, C, H, W) and mids (B, n-1, C, H, W)."""

    def interleave(k: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        pairs = torch.stack((k[:, :-1], m), dim=2).flatten(1, 2)  # (B, 2n-2, ...)
        return torch.cat((pairs, k[:, -1:]), dim=1)

    return seq_op(interleave, keys, mids)


def _bicubic_x4(frames: torch.Tensor) -> torch.Tensor:
    """(B, n, 3, H, W) -> (B, n, 3, 4H, 4W), bicubic."""
    b, n = frames.shape[:2]
    up = F.interpolate(
        frames.flatten(0, 1), scale_factor=SCALE, mode="bicubic", align_corners=False
    )
    return up.unflatten(0, (b, n))


def _add_bicubic_skip_(out: torch.Tensor, frames: torch.Tensor) -> None:
    """``out += bicubic_skip(frames)`` in place, without building the interleaved skip."""
    up = _bicubic_x4(frames)
    out[:, 0::2] += up
    out[:, 1::2] += 0.5 * (up[:, :-1] + up[:, 1:])


def bicubic_skip(frames: torch.Tensor) -> torch.Tensor:
    """Bicubic x4 of each input frame, interleaved with the mean of each neighbouring pair.

    (B, n, 3, H, W) -> (B, 2n-1, 3, 4H, 4W); the classical baseline that
    ``global_skip`` adds to the network's output.
    """
    up = _bicubic_x4(frames)
    return _interleave(up, 0.5 * (up[:, :-1] + up[:, 1:]))
