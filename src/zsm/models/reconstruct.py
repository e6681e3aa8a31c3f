"""HR frame reconstruction: residual trunk, two x2 PixelShuffles, output convs."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from zsm.models.blocks import ResidualBlock, conv3x3, lrelu_, make_layer


class Reconstructor(nn.Module):
    """(N, nf, H, W) features -> (N, 3, 4H, 4W) frames.

    ``back_RBs`` residual blocks, then ``lrelu(shuffle2(up1(.)))`` (nf
    channels), ``lrelu(shuffle2(up2(.)))`` (``hr_nf`` channels, 64 in the
    paper), ``lrelu(hr_conv(.))`` and ``out_conv``.
    """

    def __init__(self, *, nf: int = 64, back_RBs: int = 40, hr_nf: int = 64) -> None:
        super().__init__()
        self.trunk = make_layer(lambda: ResidualBlock(nf=nf), back_RBs)
        self.up1 = conv3x3(nf, 4 * nf)
        self.up2 = conv3x3(nf, 4 * hr_nf)
        self.hr_conv = conv3x3(hr_nf, hr_nf)
        self.out_conv = conv3x3(hr_nf, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Channels-last inside: the HR convs run faster in it (CPU: oneDNN's NHWC kernels;
        # GPU: tensor cores), and a pixel shuffle in NHWC moves whole channel runs instead
        # of single floats (on the CPU 7x faster: 190 -> 28 ms for five 704x576 frames).
        # (CPU inference is NHWC from the first conv on: zsm.engine.)
        x = x.contiguous(memory_format=torch.channels_last)
        x = lrelu_(F.pixel_shuffle(self.up1(self.trunk(x)), 2))
        x = lrelu_(F.pixel_shuffle(self.up2(x), 2))
        return self.out_conv(lrelu_(self.hr_conv(x))).contiguous()
