"""Exponential moving average of a model's weights (scored and exported beside the raw ones)."""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    """``shadow = decay * shadow + (1 - decay) * weights`` after every optimizer step.

    The shadow is a full float32 copy of the model (parameters and buffers) in
    eval mode; ``state_dict`` and ``load_state_dict`` make it checkpointable.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0 < decay < 1:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        shadow = self.module.state_dict()
        for name, value in model.state_dict().items():
            target = shadow[name]
            if target.is_floating_point():
                target.lerp_(value.detach(), 1 - self.decay)
            else:
                target.copy_(value)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.module.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.module.load_state_dict(state, strict=True)
