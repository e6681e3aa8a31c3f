"""Temporal modulation: a feature map adapted to the time step t of the frame being made.

Our design, after TMNet's temporal modulation block (Xu et al., CVPR 2021),
which scales the offset features of its deformable alignment by a vector
computed from t: here each modulated feature gets a per-channel scale and
shift (FiLM, Perez et al., AAAI 2018), ``x * (1 + gamma(t)) + beta(t)``,
from a two-layer MLP of t's Fourier features. Why this one:

- the flow-guided network already moves its samples to time t (the base
  offsets are the flow scaled by t and 1 - t), so what t must still change is
  how the residual offsets and masks are predicted and how the two sides are
  weighed, which a per-channel scale and shift of those features can do;
- its last layer starts at zero, so a network initialised from the x2
  weights computes exactly what they compute, at every t, before training;
- it costs one tiny MLP per modulated feature (a few thousand parameters),
  evaluated once per frame, not per pixel.

t is computed on in float32 (autocast off): the embedding is a handful of
numbers and bf16's 8 bits would round t = 0.49 and 0.5 together.
"""

from __future__ import annotations

import math

import torch
from torch import nn

FREQUENCIES = 4  # sin/cos of 2^k * pi * t for k < 4, plus t itself
HIDDEN = 32


def embed_time(t: torch.Tensor) -> torch.Tensor:
    """(N,) time steps -> (N, 1 + 2 * FREQUENCIES) features."""
    t = t.float()[:, None]
    scales = (2.0 ** torch.arange(FREQUENCIES, device=t.device, dtype=torch.float32)) * math.pi
    angles = t * scales
    return torch.cat((t, torch.sin(angles), torch.cos(angles)), dim=1)


class TimeModulation(nn.Module):
    """``x (N, C, H, W) * (1 + gamma(t)) + beta(t)`` for per-sample time steps ``t (N,)``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.channels = channels
        self.hidden = nn.Linear(1 + 2 * FREQUENCIES, HIDDEN)
        self.out = nn.Linear(HIDDEN, 2 * channels)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def scale_shift(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, C, 1, 1) scale ``1 + gamma`` and shift ``beta``, float32."""
        with torch.autocast(t.device.type, enabled=False):
            h = nn.functional.leaky_relu(self.hidden(embed_time(t)), 0.1)
            gamma, beta = self.out(h).chunk(2, dim=1)
        return (1.0 + gamma)[..., None, None], beta[..., None, None]

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if t.shape != (x.shape[0],):
            raise ValueError(f"expected {x.shape[0]} time steps, got shape {tuple(t.shape)}")
        scale, shift = self.scale_shift(t)
        return torch.addcmul(shift.to(x.dtype), x, scale.to(x.dtype))

    def extra_repr(self) -> str:
        return f"channels={self.channels}"
