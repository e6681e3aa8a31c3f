"""The inference rewrites of the reference network, each a module swap or a hook.

Every rewrite keeps the parameters and their names and computes what the
reference computes, to float rounding (``tests/test_engine.py`` checks each
one alone and all together); which apply depends on the device. They run
without autograd only: some overwrite their inputs in place.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from zsm.engine.banded import BandedReconstructor
from zsm.engine.deform import NativeOffsetsDeformConv2d
from zsm.engine.fused import FUSED_CLASSES
from zsm.engine.lstm import InplaceGatesConvLSTM
from zsm.engine.offsets import FusedOffsetMaskConv2d
from zsm.models.convlstm import DeformableConvLSTM
from zsm.models.deform import ModulatedDeformConv2d, OffsetMaskConv2d
from zsm.models.reconstruct import Reconstructor
from zsm.models.zsm import ZoomingSlowMo


@dataclass(frozen=True)
class Rewrite:
    """``apply(network)`` changes ``network`` in place; used on devices of ``devices``."""

    name: str
    devices: frozenset[str]
    apply: Callable[[ZoomingSlowMo], None]


def swap_class(root: nn.Module, old: type[nn.Module], new: type[nn.Module]) -> int:
    """Make every submodule of exact type ``old`` an instance of its subclass ``new``.

    ``new`` only overrides methods, so the module keeps its parameters, buffers,
    children and state-dict names. Returns how many were swapped.
    """
    if not issubclass(new, old):
        raise TypeError(f"{new.__name__} must subclass {old.__name__}")
    count = 0
    for module in root.modules():
        if type(module) is old:
            module.__class__ = new
            count += 1
    return count


def _swap(old: type[nn.Module], new: type[nn.Module]) -> Callable[[ZoomingSlowMo], None]:
    def apply(network: ZoomingSlowMo) -> None:
        swap_class(network, old, new)

    return apply


def _fused_conv_act(network: ZoomingSlowMo) -> None:
    # oneDNN applies the activation before storing the conv's output (zsm.engine.fused;
    # bf16 only): the compact network, 3 frames of 176x144, 1 thread, with the banded
    # tail's fused too: 2.36 -> 2.19 s per forward pass (interleaved, best of 3).
    for old, new in FUSED_CLASSES.items():
        swap_class(network, old, new)


def _channels_last_input(network: ZoomingSlowMo) -> None:
    # oneDNN runs NCHW convs as reorder -> blocked conv -> reorder: two extra passes over
    # every activation, which cost this network's small convs (32 -> 32 channels at
    # 144x176: 19.2 ms NCHW, 8.9 ms NHWC; the 64 -> 128 ConvLSTM gates: 95.6 vs 65.7 ms,
    # 1 thread). NHWC convs run as they are, the deformable conv samples NHWC in place,
    # and the network's sequence ops keep the layout (zsm.models.sequence): so frames go
    # in channels-last and every feature map stays so up to the output.
    def to_nhwc(module: nn.Module, args: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        return (args[0].contiguous(memory_format=torch.channels_last), *args[1:])

    network.extract.register_forward_pre_hook(to_nhwc)


def _channels_last_weights(network: ZoomingSlowMo) -> None:
    # NHWC convs on CUDA: the official network makes 14% more frames/s on an H200 (fp32
    # and fp16), same output to 1e-4; see benchmarks/README.md.
    network.to(memory_format=torch.channels_last)


ALL = frozenset({"cpu", "cuda", "mps"})
REWRITES: tuple[Rewrite, ...] = (
    Rewrite("fused-offset-conv", ALL, _swap(OffsetMaskConv2d, FusedOffsetMaskConv2d)),
    Rewrite("inplace-lstm-gates", ALL, _swap(DeformableConvLSTM, InplaceGatesConvLSTM)),
    Rewrite("channels-last", frozenset({"cpu"}), _channels_last_input),
    Rewrite("channels-last-weights", frozenset({"cuda"}), _channels_last_weights),
    Rewrite("banded-hr-tail", frozenset({"cpu"}), _swap(Reconstructor, BandedReconstructor)),
    Rewrite("fused-conv-act", frozenset({"cpu"}), _fused_conv_act),
    # sigmoid and flow-guided tanh + flow of the offsets in one native pass (AVX-512)
    Rewrite(
        "native-offsets",
        frozenset({"cpu"}),
        _swap(ModulatedDeformConv2d, NativeOffsetsDeformConv2d),
    ),
)
NAMES = tuple(r.name for r in REWRITES)


def rewrites_for(device: torch.device, names: tuple[str, ...] | None = None) -> list[Rewrite]:
    """The rewrites for ``device`` (``names``: just these, whatever the device)."""
    if names is None:
        return [r for r in REWRITES if device.type in r.devices]
    unknown = sorted(set(names) - set(NAMES))
    if unknown:
        raise ValueError(f"unknown rewrite(s) {unknown}; known: {list(NAMES)}")
    return [r for r in REWRITES if r.name in names]
