"""Memory layout of the feature maps: NCHW, or channels-last (NHWC) kept end to end.

On the CPU, oneDNN runs NCHW convs as reorder -> blocked conv -> reorder:
two extra passes over every activation, which cost the small convs of this
network (32 -> 32 channels at 144x176: 19.2 ms NCHW, 8.9 ms NHWC; the 64 ->
128 ConvLSTM gates: 95.6 vs 65.7 ms, 1 thread). NHWC convs run as they are,
and our deformable-conv kernel samples NHWC in place. So CPU inference keeps
every feature map channels-last, from the first conv to the output.

Sequences of feature maps are (B, T, C, H, W) tensors. Channels-last, each
frame is NHWC and the whole sequence is (B, T, H, W, C) memory; ops along B
and T (slices, flips, concatenation, stacking) run on that view, since
PyTorch's 5-D memory formats do not describe this layout and would copy it
back to NCHW.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def channels_last_on(device: torch.device) -> bool:
    """Whether the network runs channels-last on ``device``: CPU inference (no autograd).

    Training keeps NCHW (the deformable conv's backward reads NCHW), as do
    GPUs (``zsm benchmark --channels-last`` measures NHWC there).
    """
    return device.type == "cpu" and not torch.is_grad_enabled()


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
