"""The training loss."""

from __future__ import annotations

import torch


def charbonnier(output: torch.Tensor, target: torch.Tensor, eps: float = 1e-3) -> torch.Tensor:
    """Mean of ``sqrt((output - target)^2 + eps^2)``: a smooth L1 loss (the paper's, eps 1e-3)."""
    return torch.sqrt((output - target) ** 2 + eps * eps).mean()
