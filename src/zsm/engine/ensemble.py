"""Self-ensemble: average the network over flips, transposition and time reversal.

The network is trained with all of these augmentations, so each transformed
input gives another valid estimate; running it on every transform, undoing
the transform on the output and averaging costs ``passes`` times the compute
and gains a little quality (EDVR's and RCAN's "+" results are made so).
Transform ``k`` of ``passes`` is the combination of the bits of ``k``:

* bit 0: time reversal (in-between frames come out at the same times),
* bit 1: left-right flip,
* bit 2: up-down flip,
* bit 3: transposition (height and width swapped).

So ``passes=2`` is time reversal alone, 8 is every flip with and without
time reversal, 16 adds transposition. Measured on the validation windows of
``configs/zsm-compact-motion.toml`` with ``zsm-compact`` (27.55 dB Y-PSNR
alone): 2 passes +0.03 dB, 4 +0.08, 8 +0.12, 16 +0.13.
"""

from __future__ import annotations

import torch
from torch import nn

from zsm.models.descriptor import ModelDescriptor, describe
from zsm.models.timesteps import Times

ENSEMBLE_PASSES = (1, 2, 4, 8, 16)
# The running sum and one untransformed output, float32 (2 x 384 bytes per LR pixel-frame:
# 2 outputs per input frame, 16 HR pixels, 3 channels, 4 bytes).
ENSEMBLE_BYTES_PER_PIXEL_FRAME = 768.0


def transform(x: torch.Tensor, k: int) -> torch.Tensor:
    """Transform ``k`` (see the module docstring) of a ``(B, T, C, H, W)`` sequence."""
    if k & 1:
        x = x.flip(1)
    if k & 2:
        x = x.flip(-1)
    if k & 4:
        x = x.flip(-2)
    if k & 8:
        x = x.transpose(-1, -2)
    return x


def transform_flow(flow: torch.Tensor, k: int) -> torch.Tensor:
    """The flow (B, n-1, 4, H, W) of the frames transformed by :func:`transform` ``k``.

    Time reversal reverses the pairs and swaps each pair's two directions; a
    flip mirrors the field and negates the flipped axis' component; the
    transposition swaps the axes and the components.
    """
    if k & 1:
        flow = flow.flip(1)[:, :, [2, 3, 0, 1]]
    if k & 2:
        flow = flow.flip(-1) * flow.new_tensor([-1.0, 1.0, -1.0, 1.0]).view(4, 1, 1)
    if k & 4:
        flow = flow.flip(-2) * flow.new_tensor([1.0, -1.0, 1.0, -1.0]).view(4, 1, 1)
    if k & 8:
        flow = flow.transpose(-1, -2)[:, :, [1, 0, 3, 2]]
    return flow


def transform_times(times: Times, k: int) -> Times:
    """The time steps of the frames transformed by :func:`transform` ``k``: time reversal
    reverses the gaps and maps each step t to 1 - t (the same frames, in reverse order)."""
    if times is None or not k & 1:
        return times
    if isinstance(times, torch.Tensor):
        return (1.0 - times).flip(1, 2)
    return [tuple(1.0 - t for t in reversed(steps)) for steps in reversed(times)]


def untransform(y: torch.Tensor, k: int) -> torch.Tensor:
    """The inverse of :func:`transform` (the same steps in reverse order)."""
    if k & 8:
        y = y.transpose(-1, -2)
    if k & 4:
        y = y.flip(-2)
    if k & 2:
        y = y.flip(-1)
    if k & 1:
        y = y.flip(1)
    return y


def check_passes(passes: int) -> int:
    """``passes`` if it is one of :data:`ENSEMBLE_PASSES`, else a ``ValueError``."""
    if passes not in ENSEMBLE_PASSES:
        raise ValueError(
            f"ensemble passes must be one of {', '.join(map(str, ENSEMBLE_PASSES))}, got {passes}"
        )
    return passes


class SelfEnsemble(nn.Module):
    """``model``'s output averaged over ``passes`` transforms of the input.

    Same call as the wrapped network: ``(B, n, 3, H, W) -> (B, 2n-1, 3, 4H,
    4W)``. The passes run one after another, so memory grows only by the
    running sum and one untransformed output, not ``passes`` times.
    """

    def __init__(self, model: nn.Module, passes: int = 8) -> None:
        super().__init__()
        self.model = model
        self.passes = check_passes(passes)

    def forward(
        self, frames: torch.Tensor, flow: torch.Tensor | None = None, times: Times = None
    ) -> torch.Tensor:
        """``flow``: the frames' LR flow, for a flow-guided network (transformed with them);
        ``times``: the time steps of the in-between frames (:mod:`zsm.models.timesteps`)."""
        total: torch.Tensor | None = None
        for k in range(self.passes):
            x = transform(frames, k).contiguous()
            kwargs = {} if times is None else {"times": transform_times(times, k)}
            if flow is None:
                y = untransform(self.model(x, **kwargs), k)
            else:
                y = untransform(self.model(x, transform_flow(flow, k).contiguous(), **kwargs), k)
            if total is None:
                total = y.float().contiguous()
            else:
                total += y
            del x, y
        assert total is not None
        return total.div_(self.passes)

    @property
    def descriptor(self) -> ModelDescriptor:
        """The wrapped model's, with the memory of the running sum added."""
        return self.descriptor_of(describe(self.model))

    def descriptor_of(self, inner: ModelDescriptor) -> ModelDescriptor:
        """``inner`` (the wrapped model's descriptor) as this ensemble's."""
        extra = ENSEMBLE_BYTES_PER_PIXEL_FRAME
        return inner.replace(bytes_per_pixel_frame=inner.bytes_per_pixel_frame + extra)

    def extra_repr(self) -> str:
        return f"passes={self.passes}"


def with_ensemble(model: nn.Module, passes: int) -> nn.Module:
    """``model`` itself for 1 pass, else wrapped in :class:`SelfEnsemble`."""
    return model if check_passes(passes) == 1 else SelfEnsemble(model, passes)
