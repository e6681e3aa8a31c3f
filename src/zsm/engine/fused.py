"""Convolutions with their activation fused in (oneDNN post-ops), for CPU inference.

``lrelu(conv(x))`` as two ops writes the conv's output and then reads and
rewrites it for the activation; oneDNN applies the activation to the
accumulator before the output is stored. Used under bf16 only, where it matters: torch's
CPU elementwise ops on bf16 widen every value and round it back, so a
LeakyReLU over a conv's output costs a third to a half of the conv itself
(measured on AMX, 1 thread: a 32 -> 32 conv on (2, 32, 144, 176), NHWC, 1.37
ms with the activation after it, 0.95 ms fused; ``up1``'s band of the HR tail,
(1, 32, 99, 352) -> 128, 3.32 vs 1.85 ms). The output is the same up to float
rounding: the activation is applied before the conv's result is rounded to
the output dtype instead of after.

:func:`conv_act` runs one conv module so, where it can (a CPU with oneDNN,
float32 or bf16, no autograd), else as the conv and then the activation in
place. The rewrite ``fused-conv-act`` (:mod:`zsm.engine.rewrites`) swaps in
the subclasses below, which compute what the reference modules compute with
:func:`conv_act`; the banded HR tail (:mod:`zsm.engine.banded`) uses it
directly.
"""

from __future__ import annotations

import functools

import torch
from torch import nn
from torch.nn import functional as F

from zsm.models.blocks import ResidualBlock
from zsm.models.extract import FeatureExtractor
from zsm.models.interp import AlignLevel
from zsm.models.pyramid import FeaturePyramid

SLOPE = 0.1  # the network's LeakyReLU (zsm.models.blocks.lrelu)
ACTS = {"lrelu": ("leaky_relu", [SLOPE]), "relu": ("relu", [])}


@functools.cache
def _fused_op() -> object | None:
    """oneDNN's conv with a post-op (``torch.ops.mkldnn._convolution_pointwise``), if present."""
    if not torch.backends.mkldnn.is_available():
        return None
    try:
        return torch.ops.mkldnn._convolution_pointwise
    except (AttributeError, RuntimeError):
        return None


@functools.cache
def _bf16_supported() -> bool:
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype the conv runs in: autocast's where it is on (as ``F.conv2d`` would), else x's."""
    if torch.is_autocast_enabled("cpu") and x.dtype == torch.float32:
        return torch.get_autocast_dtype("cpu")
    return x.dtype


def conv_act(
    conv: nn.Conv2d, x: torch.Tensor, act: str, padding: tuple[int, int] | None = None
) -> torch.Tensor:
    """``act(conv(x))``, the activation fused into the conv where oneDNN can run it.

    ``act``: ``lrelu`` (slope 0.1) or ``relu``; ``padding`` overrides the
    conv's (the banded tail's rows). Fused only without autograd, on the CPU,
    in bf16 (x's dtype, or autocast's), for an ungrouped conv with zero
    padding; else the conv, then the activation in place. Not in float32:
    there the activation costs a few percent of the conv, and fusing it was
    no faster for the whole network (4.30 s plain, 4.35 s fused, compact, 3
    frames of 176x144, 1 thread), so float32 inference stays as it was.
    """
    pad = padding if padding is not None else conv.padding
    op = _fused_op()
    dtype = _compute_dtype(x)
    if (
        op is None
        or x.device.type != "cpu"
        or torch.is_grad_enabled()
        or conv.groups != 1
        or conv.padding_mode != "zeros"
        or isinstance(pad, str)
        or dtype != torch.bfloat16
        or not _bf16_supported()
    ):
        y = F.conv2d(x, conv.weight, conv.bias, conv.stride, pad, conv.dilation, conv.groups)
        return F.leaky_relu_(y, SLOPE) if act == "lrelu" else F.relu_(y)
    name, scalars = ACTS[act]
    bias = conv.bias.to(dtype) if conv.bias is not None else None
    return op(  # type: ignore[operator]
        x.to(dtype),
        conv.weight.to(dtype),
        bias,
        list(pad),
        list(conv.stride),
        list(conv.dilation),
        conv.groups,
        name,
        scalars,
        "",
    )


class FusedResidualBlock(ResidualBlock):
    """:class:`~zsm.models.blocks.ResidualBlock` with the ReLU fused into ``conv1``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(conv_act(self.conv1, x, "relu")).add_(x)


class FusedFeatureExtractor(FeatureExtractor):
    """:class:`~zsm.models.extract.FeatureExtractor` with the head's LeakyReLU fused."""

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.pyramid(self.trunk(conv_act(self.head, x, "lrelu")))


class FusedFeaturePyramid(FeaturePyramid):
    """:class:`~zsm.models.pyramid.FeaturePyramid` with every LeakyReLU fused."""

    def forward(self, l1: torch.Tensor) -> list[torch.Tensor]:
        l2 = conv_act(self.l2_conv, conv_act(self.l2_down, l1, "lrelu"), "lrelu")
        l3 = conv_act(self.l3_conv, conv_act(self.l3_down, l2, "lrelu"), "lrelu")
        return [l1, l2, l3]


class FusedAlignLevel(AlignLevel):
    """:class:`~zsm.models.interp.AlignLevel` with the offset convs' LeakyReLUs fused."""

    def conv_lrelu(self, conv: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return conv_act(conv, x, "lrelu")  # type: ignore[arg-type]


# reference class -> its fused subclass (the rewrite swaps each)
FUSED_CLASSES: dict[type[nn.Module], type[nn.Module]] = {
    ResidualBlock: FusedResidualBlock,
    FeatureExtractor: FusedFeatureExtractor,
    FeaturePyramid: FusedFeaturePyramid,
    AlignLevel: FusedAlignLevel,
}
