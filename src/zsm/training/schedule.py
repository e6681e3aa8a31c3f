"""Cosine annealing with restarts (SGDR, Loshchilov & Hutter 2017), as Zooming Slow-Mo trains.

The official recipe runs 4 periods of 150,000 iterations, restarting at the
base learning rate (weights 1) and annealing to ``eta_min = 1e-7``. The rate
is a closed-form function of the iteration, so the scheduler's state is one
integer and resuming reproduces it exactly.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler


def cosine_restart_factor(
    iteration: int,
    *,
    periods: Sequence[int],
    restart_weights: Sequence[float],
    eta_min_ratio: float,
    warmup: int = 0,
) -> float:
    """Learning rate at ``iteration`` as a fraction of the base rate.

    Within period ``j`` (length ``T``, weight ``w``) at offset ``t``:
    ``m + (w - m) * (1 + cos(pi * t / T)) / 2`` with ``m = eta_min_ratio``;
    ``eta_min_ratio`` after the last period; times ``iteration / warmup``
    during a linear warm-up.
    """
    ends = list(_cumsum(periods))
    j = bisect.bisect_right(ends, iteration)
    if j >= len(periods):
        factor = eta_min_ratio
    else:
        t = iteration - (ends[j - 1] if j else 0)
        w = restart_weights[j]
        factor = eta_min_ratio + (w - eta_min_ratio) * 0.5 * (
            1 + math.cos(math.pi * t / periods[j])
        )
    if warmup and iteration < warmup:
        factor *= (iteration + 1) / warmup
    return factor


def _cumsum(values: Sequence[int]) -> list[int]:
    out, total = [], 0
    for v in values:
        total += v
        out.append(total)
    return out


class CosineRestarts(LRScheduler):
    """:class:`LRScheduler` wrapper of :func:`cosine_restart_factor`; step once per iteration."""

    def __init__(
        self,
        optimizer: Optimizer,
        *,
        periods: Sequence[int],
        restart_weights: Sequence[float] | None = None,
        eta_min: float = 0.0,
        warmup: int = 0,
        last_epoch: int = -1,
    ) -> None:
        if not periods or any(p < 1 for p in periods):
            raise ValueError(f"periods must be positive iteration counts, got {list(periods)}")
        weights = list(restart_weights) if restart_weights else [1.0] * len(periods)
        if len(weights) != len(periods):
            raise ValueError(f"{len(weights)} restart weights for {len(periods)} periods")
        self.periods = [int(p) for p in periods]
        self.restart_weights = [float(w) for w in weights]
        self.eta_min = float(eta_min)
        self.warmup = int(warmup)
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:  # type: ignore[override]
        return [
            base
            * cosine_restart_factor(
                self.last_epoch,
                periods=self.periods,
                restart_weights=self.restart_weights,
                eta_min_ratio=self.eta_min / base if base else 0.0,
                warmup=self.warmup,
            )
            for base in self.base_lrs
        ]
