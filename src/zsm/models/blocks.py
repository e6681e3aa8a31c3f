"""Shared building blocks: 3x3 convs, the residual block and ``make_layer``."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.nn import functional as F


def conv3x3(in_channels: int, out_channels: int, *, stride: int = 1) -> nn.Conv2d:
    """3x3 convolution with bias and 'same' padding (stride 2 halves H and W)."""
    return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=True)


def lrelu(x: torch.Tensor) -> torch.Tensor:
    """LeakyReLU with slope 0.1, the activation used throughout the paper."""
    return F.leaky_relu(x, 0.1, inplace=False)


def lrelu_(x: torch.Tensor) -> torch.Tensor:
    """:func:`lrelu` in place, for a tensor just computed and used nowhere else.

    Same numbers (autograd differentiates it through its output); saves a
    buffer and a pass over memory, which at HR sizes costs as much as the op.
    """
    return F.leaky_relu_(x, 0.1)


class ResidualBlock(nn.Module):
    """``x + conv2(relu(conv1(x)))``: residual block without batch norm (EDVR/ZSM style).

    Initialised as in the official release: Kaiming-normal (fan_in) scaled by
    0.1 and zero bias, so a deep stack starts close to the identity.
    """

    def __init__(self, *, nf: int = 64) -> None:
        super().__init__()
        self.conv1 = conv3x3(nf, nf)
        self.conv2 = conv3x3(nf, nf)
        for conv in (self.conv1, self.conv2):
            nn.init.kaiming_normal_(conv.weight, a=0, mode="fan_in")
            conv.weight.data.mul_(0.1)
            nn.init.zeros_(conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # In place on the fresh conv outputs (y + x == x + y exactly): no extra buffers.
        return self.conv2(F.relu(self.conv1(x), inplace=True)).add_(x)


def make_layer(block: Callable[[], nn.Module], n: int) -> nn.Sequential:
    """``n`` freshly built blocks in sequence (an empty stack is the identity)."""
    if n < 0:
        raise ValueError(f"expected a non-negative block count, got {n}")
    return nn.Sequential(*(block() for _ in range(n)))
