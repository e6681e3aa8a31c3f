"""Three-level feature pyramid (full, 1/2 and 1/4 resolution)."""

from __future__ import annotations

import torch
from torch import nn

from zsm.models.blocks import conv3x3, lrelu_


class FeaturePyramid(nn.Module):
    """Builds ``[L1, L2, L3]`` from a feature map ``L1`` of shape (B, nf, H, W).

    Each coarser level is ``lrelu(conv(lrelu(strided_conv(finer))))``; H and W
    must be multiples of 4 so that every level halves exactly.
    """

    def __init__(self, *, nf: int = 64) -> None:
        super().__init__()
        self.l2_down = conv3x3(nf, nf, stride=2)
        self.l2_conv = conv3x3(nf, nf)
        self.l3_down = conv3x3(nf, nf, stride=2)
        self.l3_conv = conv3x3(nf, nf)

    def forward(self, l1: torch.Tensor) -> list[torch.Tensor]:
        l2 = lrelu_(self.l2_conv(lrelu_(self.l2_down(l1))))
        l3 = lrelu_(self.l3_conv(lrelu_(self.l3_down(l2))))
        return [l1, l2, l3]
