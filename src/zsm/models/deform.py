"""The DCNv2 layers of the network: the offset/mask conv and the deformable conv "pack".

The deformable convolution itself is :func:`zsm.ops.dcn.modulated_deform_conv2d`
(backends, native CPU kernel); these modules hold its parameters. Offsets use
torchvision's layout: ``(B, 2 * G * k * k, H, W)`` holding, for each offset
group G and kernel point, a (dy, dx) pair; the mask is ``(B, G * k * k, H, W)``
in [0, 1].
"""

from __future__ import annotations

import math

import torch
from torch import nn

from zsm.ops.dcn import modulated_deform_conv2d


def add_flow_offsets(residual: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """Offsets (N, 2P, H, W) + a flow (N, 2, H, W) as (dx, dy), added to every (dy, dx) pair."""
    c = residual.shape[1]
    pairs = residual.unflatten(1, (c // 2, 2)) + flow.float().flip(1)[:, None]
    return pairs.flatten(1, 2)


# Whether, under bf16 autocast on the CPU, the offset/mask convs run in bf16 (see
# ModulatedDeformConv2d.offsets_and_mask). The package's knob is
# zsm.engine.precision.BF16_OFFSET_CONVS, which sets this flag when zsm is imported and
# whenever it is changed through zsm.engine.precision.set_bf16_offset_convs (the models
# package imports nothing of the engine).
_bf16_offset_convs = True


def set_bf16_offset_convs(enabled: bool) -> None:
    """Run the offset/mask convs in bf16 under bf16 autocast on the CPU (else float32)."""
    global _bf16_offset_convs
    _bf16_offset_convs = bool(enabled)


def bf16_offset_convs_enabled() -> bool:
    """Whether the offset/mask convs run in bf16 under bf16 autocast on the CPU."""
    return _bf16_offset_convs


class OffsetMaskConv2d(nn.Conv2d):
    """The conv that predicts offsets and mask logits: ``forward`` returns both, apart.

    One ``nn.Conv2d`` of ``3 * G * k * k`` outputs (its parameters and state
    dict are the official ``conv_offset_mask``'s); the first two thirds are the
    offsets, the last third the mask logits. They are computed as two convs
    over slices of the weight: oneDNN runs 108 outputs (4 groups) in NCHW
    poorly, 72 + 36 well (forward and backward over (28, 32, 24, 24), the
    compact model's training batch: 31.5 ms as one conv, 22.5 as two; official,
    216 outputs: 112 vs 74 ms). For NHWC inference, where one conv is faster,
    the engine swaps in :class:`zsm.engine.offsets.FusedOffsetMaskConv2d`.
    """

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[override]
        n = 2 * self.out_channels // 3
        w, b = self.weight, self.bias
        return (
            self._conv_forward(x, w[:n], b[:n] if b is not None else None),
            self._conv_forward(x, w[n:], b[n:] if b is not None else None),
        )


class ModulatedDeformConv2d(nn.Module):
    """DCNv2 "pack": a deformable conv whose offsets and mask come from a separate feature.

    ``forward(x, feat)`` computes ``offset_mask(feat)`` (3 * G * k * k
    channels), splits it into equal chunks ``o1, o2, m``, uses
    ``cat(o1, o2)`` as offsets and ``sigmoid(m)`` as the mask, and samples
    ``x`` with them. ``offset_mask`` starts at zero, so an untrained layer
    samples the regular grid with mask 0.5 (as in the official release).

    Flow-guided (``max_residual`` set, and a ``base`` flow given to
    ``forward``): the offsets are ``base + max_residual * tanh(o)``, the base
    flow ``(N, 2, H, W)`` as (dx, dy) shared by every group and kernel point;
    an untrained layer samples exactly along the flow.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        kernel_size: int = 3,
        offset_groups: int = 8,
        offset_in_channels: int | None = None,
        max_residual: float | None = None,
    ) -> None:
        super().__init__()
        self.max_residual = max_residual
        if in_channels % offset_groups:
            raise ValueError(
                f"in_channels ({in_channels}) must be divisible by offset_groups ({offset_groups})"
            )
        self.padding = kernel_size // 2
        self.offset_groups = offset_groups
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.offset_mask = OffsetMaskConv2d(
            offset_in_channels or in_channels,
            3 * offset_groups * kernel_size * kernel_size,
            kernel_size,
            padding=self.padding,
        )
        bound = 1.0 / math.sqrt(in_channels * kernel_size * kernel_size)
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.zeros_(self.offset_mask.weight)
        nn.init.zeros_(self.offset_mask.bias)

    def zero_offset_residual_(self) -> None:
        """Zero the offset part of ``offset_mask`` (the mask part is kept): with a base
        flow, the layer then samples exactly along it."""
        n = 2 * self.offset_mask.out_channels // 3
        with torch.no_grad():
            self.offset_mask.weight[:n].zero_()
            if self.offset_mask.bias is not None:
                self.offset_mask.bias[:n].zero_()

    def offsets_and_mask(self, feat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Offsets (B, 2*G*k*k, H, W) and mask (B, G*k*k, H, W) predicted from ``feat``.

        Both come out float32 under autocast. Under fp16 (GPUs) the conv itself
        runs in float32 on a float32 copy of ``feat`` (an *fp32 island*): fp16 has
        1/128 px resolution at offsets of 8 px, a visible misalignment. Under
        bf16 autocast on the CPU it runs in bf16, as every other conv does, where
        :func:`bf16_offset_convs_enabled` (``zsm.engine.precision.BF16_OFFSET_CONVS``)
        says so, and its output is made float32 at once: the mask's sigmoid, the
        flow-guided ``tanh`` bound and the flow added to it, and the sampling are
        float32 all the same. bf16 rounds the conv's result to 1/16 px at 8 px,
        yet the public clips' scores stayed within 0.01 dB of fp32, and a
        training step got 1.12x faster (README, "Precision").
        """
        device_type = feat.device.type
        if not torch.is_autocast_enabled(device_type):
            offset, logits = self.offset_mask(feat)
            # offset = cat(o1, o2) of the three chunks; backends also take it as a view
            return offset, torch.sigmoid(logits)
        bf16 = device_type == "cpu" and torch.get_autocast_dtype("cpu") == torch.bfloat16
        if bf16 and _bf16_offset_convs:
            offset, logits = self.offset_mask(feat)  # bf16 conv, float32 from here on
        else:
            with torch.autocast(device_type, enabled=False):
                offset, logits = self.offset_mask(feat.float())
        return offset.float(), torch.sigmoid(logits.float())

    def forward(
        self, x: torch.Tensor, feat: torch.Tensor, base: torch.Tensor | None = None
    ) -> torch.Tensor:
        offset, mask = self.offsets_and_mask(feat)
        if base is not None:
            if self.max_residual is None:
                raise ValueError("a base flow needs a flow-guided layer (max_residual)")
            offset = add_flow_offsets(torch.tanh(offset).mul(self.max_residual), base)
        return modulated_deform_conv2d(
            x, offset, mask, self.weight, self.bias, padding=self.padding
        )
