"""FLOPs counted analytically, per stage: forward hooks on every (deformable) conv."""

from __future__ import annotations

from typing import Any

from torch import nn

from zsm.models.deform import ModulatedDeformConv2d

OUTSIDE = ""  # the stage of convs run outside the four stage modules (none, today)


class ConvFlops:
    """Forward hooks that add each conv's FLOPs (2 x MACs) to the stage that is running.

    A deformable conv counts as the dense conv of its shape (its sampling is
    overhead, not work); its offset conv is an ordinary conv and hooks
    itself. The running stage is set by :meth:`enter` / :meth:`leave`, which
    :func:`zsm.bench.stages.stage_hooks` calls.
    """

    def __init__(self, model: nn.Module) -> None:
        self.current = OUTSIDE
        self.flops: dict[str, float] = {}
        self._handles = []
        for module in model.modules():
            if isinstance(module, nn.Conv2d | ModulatedDeformConv2d):
                self._handles.append(module.register_forward_hook(self._hook))

    def _hook(self, module: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
        if isinstance(module, nn.Conv2d):
            kh, kw = module.kernel_size
            parts = output if isinstance(output, tuple) else (output,)  # offsets, mask logits
            macs = sum(o.numel() for o in parts) * (module.in_channels // module.groups) * kh * kw
        else:  # deformable: the dense conv of the same shape (its offset conv hooks itself)
            weight = module.weight
            macs = output.numel() * weight.shape[1] * weight.shape[2] * weight.shape[3]
        self.flops[self.current] = self.flops.get(self.current, 0.0) + 2.0 * macs

    def enter(self, stage: str) -> None:
        self.current = stage

    def leave(self, stage: str) -> None:
        self.current = OUTSIDE

    def total(self) -> float:
        """Every counted FLOP, in the stages or outside them."""
        return sum(self.flops.values())

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
