"""Per-frame feature extraction: conv + LeakyReLU, residual blocks, pyramid."""

from __future__ import annotations

import torch
from torch import nn

from zsm.models.blocks import ResidualBlock, conv3x3, lrelu_, make_layer
from zsm.models.pyramid import FeaturePyramid


class FeatureExtractor(nn.Module):
    """(N, 3, H, W) frames -> pyramid ``[L1, L2, L3]`` of (N, nf, H/2^k, W/2^k)."""

    def __init__(self, *, nf: int = 64, front_RBs: int = 5) -> None:
        super().__init__()
        self.head = conv3x3(3, nf)
        self.trunk = make_layer(lambda: ResidualBlock(nf=nf), front_RBs)
        self.pyramid = FeaturePyramid(nf=nf)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.pyramid(self.trunk(lrelu_(self.head(x))))
