"""Training samples at several time steps: the per-sample draw of a time factor and targets.

With time factors (config ``[data] time_factors = [2, 3, 4, 8]``), each
training sample draws a factor N (``weights`` give the odds) and, for each of
its n-1 gaps, one step j uniformly in 1..N-1, all from the sample's seeded
generator, so a sample stays a pure function of its key. Its clip spans
(n-1)*N+1 consecutive source frames: the n inputs are every N-th of them,
the HR targets are the n inputs and, in every gap, the frame j/N of the way
to the next input. Only these 2n-1 frames are read (:class:`SampleTimes.offsets`),
so every sample has 2n-1 targets, as without time factors, and batches mix
factors and steps freely; the network is told the time of each in-between
target (:meth:`SampleTimes.times`, shape (n-1, 1)).

N = 2 is the classic setting (j = 1, t = 1/2: the 7-frame clip of 4 inputs).
A clip shorter than the span of a factor draws only from the factors whose
span fits (:meth:`TimeFactors.draw` with ``max_span``); one shorter than the
smallest factor's span is left out by the sources (they are built with that
span as their clip length).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class SampleTimes:
    """One sample's time factor ``factor`` (N) and in-between step ``steps[k]`` (j) per gap."""

    factor: int
    steps: tuple[int, ...]

    @property
    def inputs(self) -> int:
        return len(self.steps) + 1

    @property
    def span(self) -> int:
        """Consecutive source frames the sample covers: (n-1)*N + 1."""
        return len(self.steps) * self.factor + 1

    @property
    def offsets(self) -> tuple[int, ...]:
        """The targets' frames within the span, in time order: input 0 (offset 0), gap 0's
        frame (j0), input 1 (N), ...; the inputs are the even positions, as in a 7-frame clip."""
        out = [0]
        for k, j in enumerate(self.steps):
            out += [k * self.factor + j, (k + 1) * self.factor]
        return tuple(out)

    def reversed(self) -> SampleTimes:
        """The plan of the clip played backwards: gaps in reverse order, t -> 1 - t."""
        return SampleTimes(self.factor, tuple(self.factor - j for j in reversed(self.steps)))

    def times(self) -> torch.Tensor:
        """float32 (n-1, 1): the time j/N of each gap's in-between target, in (0, 1)."""
        t = np.asarray(self.steps, dtype=np.float64) / self.factor
        return torch.from_numpy(t.astype(np.float32)).reshape(-1, 1)


@dataclass(frozen=True)
class TimeFactors:
    """The time factors a sample draws from, their weights (``None``: equal) and ``inputs`` (n)."""

    factors: tuple[int, ...]
    weights: tuple[float, ...] | None = None
    inputs: int = 4

    def __post_init__(self) -> None:
        if not self.factors:
            raise ValueError("time factors: expected at least one factor")
        if any(int(f) != f or f < 2 for f in self.factors):
            raise ValueError(f"time factors must be integers >= 2, got {list(self.factors)}")
        if len(set(self.factors)) != len(self.factors):
            raise ValueError(f"time factors repeat: {list(self.factors)}")
        if self.weights is not None:
            if len(self.weights) != len(self.factors):
                raise ValueError(
                    f"time factor weights: {len(self.weights)} weights for "
                    f"{len(self.factors)} factors"
                )
            if any(not w > 0 for w in self.weights):
                raise ValueError(f"time factor weights must be > 0, got {list(self.weights)}")
        if self.inputs < 2:
            raise ValueError(f"time factors need >= 2 inputs per sample, got {self.inputs}")

    def span(self, factor: int) -> int:
        """Consecutive frames a sample of time factor ``factor`` covers."""
        return (self.inputs - 1) * factor + 1

    @property
    def min_span(self) -> int:
        return self.span(min(self.factors))

    def fitting(self, max_span: int | None) -> list[int]:
        """The factors whose span fits in ``max_span`` frames (``None``: all)."""
        return [f for f in self.factors if max_span is None or self.span(f) <= max_span]

    def draw(self, rng: np.random.Generator, max_span: int | None = None) -> SampleTimes:
        """A factor among those that fit ``max_span`` (by their weights), then a step per gap."""
        weights = dict(zip(self.factors, self.weights or [1.0] * len(self.factors), strict=True))
        fit = self.fitting(max_span)
        if not fit:
            raise ValueError(
                f"no time factor of {list(self.factors)} fits a clip of {max_span} frames "
                f"({self.inputs} inputs)"
            )
        cumulative = np.cumsum([weights[f] for f in fit])
        pick = int(np.searchsorted(cumulative, rng.random() * cumulative[-1], side="right"))
        factor = fit[min(pick, len(fit) - 1)]
        steps = rng.integers(1, factor, size=self.inputs - 1)
        return SampleTimes(factor, tuple(int(j) for j in steps))
