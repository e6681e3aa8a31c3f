"""Offsets of a few pixels in an untrained network, so that its sampling costs what it will.

An untrained layer predicts zero offsets, i.e. the regular grid, which makes
the sampling unrealistically cache-friendly; so the offset convs are
re-initialised to give offsets of a few pixels (and masks around 0.5), as a
trained network does.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from zsm.models.deform import ModulatedDeformConv2d

# Standard deviation (pixels) the offsets are calibrated to; trained ZSM
# offsets are of this order at the finest pyramid level.
OFFSET_STD_PX = 2.0


def realistic_offsets(
    model: nn.Module, probe: Callable[[], object], std_px: float = OFFSET_STD_PX
) -> None:
    """Re-initialise every offset conv so its offsets have std ``std_px`` on ``probe``'s input.

    Random weights first, then one run of ``probe`` (a small forward pass)
    measures each layer's offset spread and the offset channels are rescaled
    to ``std_px``; mask logits keep random weights (masks spread around 0.5).
    """
    dcns = [m for m in model.modules() if isinstance(m, ModulatedDeformConv2d)]
    gen = torch.Generator().manual_seed(1234)
    for dcn in dcns:
        conv = dcn.offset_mask
        fan_in = conv.in_channels * conv.kernel_size[0] * conv.kernel_size[1]
        with torch.no_grad():
            w = torch.randn(conv.weight.shape, generator=gen) / math.sqrt(fan_in)
            conv.weight.copy_(w.to(conv.weight))
            conv.bias.copy_((0.5 * torch.randn(conv.bias.shape, generator=gen)).to(conv.bias))
    spread: dict[ModulatedDeformConv2d, float] = {}

    def hook(module: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
        dcn = owner[module]
        spread[dcn] = max(spread.get(dcn, 0.0), output[0].float().std().item())  # the offsets

    owner = {dcn.offset_mask: dcn for dcn in dcns}
    handles = [dcn.offset_mask.register_forward_hook(hook) for dcn in dcns]
    try:
        with torch.no_grad():
            probe()
    finally:
        for h in handles:
            h.remove()
    with torch.no_grad():
        for dcn in dcns:
            scale = std_px / max(spread.get(dcn, 1.0), 1e-6)
            n_off = 2 * dcn.offset_mask.out_channels // 3
            dcn.offset_mask.weight[:n_off] *= scale
            dcn.offset_mask.bias[:n_off] *= scale
