"""Sequences of feature maps, (B, T, C, H, W), whatever the memory layout of their frames.

The network is written in NCHW. Its ops along B and T (slices, flips,
concatenation, stacking, flattening frames into the batch) go through these
helpers, which keep each frame's layout: the inference engine
(:mod:`zsm.engine`) feeds the network channels-last (NHWC) frames on the CPU,
whose whole sequence is then (B, T, H, W, C) memory, a layout PyTorch's 5-D
memory formats do not describe (they would copy it back to NCHW).
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def is_channels_last(t: torch.Tensor) -> bool:
    """Whether the channels (dim -3) of a (..., C, H, W) tensor are innermost in memory."""
    return t.dim() >= 4 and t.shape[-3] > 1 and t.stride(-3) == 1


def seq_op(fn: Callable[..., torch.Tensor], *seqs: torch.Tensor) -> torch.Tensor:
    """``fn(*seqs)`` for an op along B and T of (B, T, C, H, W) sequences, keeping their layout."""
    if seqs and all(is_channels_last(s) for s in seqs):
        return fn(*(s.movedim(2, -1) for s in seqs)).movedim(-1, 2)
    return fn(*seqs)


def flatten_frames(seq: torch.Tensor) -> torch.Tensor:
    """(B, T, C, H, W) -> (B*T, C, H, W), channels-last frames staying channels-last."""
    if is_channels_last(seq):
        return seq.movedim(2, -1).flatten(0, 1).movedim(-1, 1)
    return seq.flatten(0, 1)


def stack_frames(frames: list[torch.Tensor]) -> torch.Tensor:
    """T tensors (B, C, H, W) -> (B, T, C, H, W), channels-last frames staying channels-last."""
    if frames and all(is_channels_last(f) for f in frames):
        return torch.stack([f.movedim(1, -1) for f in frames], dim=1).movedim(-1, 2)
    return torch.stack(frames, dim=1)
