"""Which frames a network makes between its inputs: the time steps of its in-between frames.

A network of n inputs makes, between inputs k and k+1 (gap k), frames at
time steps t in (0, 1) (0 is input k, 1 is input k+1). ``forward(times=)``
takes them in one of three forms, all resolved to one :class:`TimeSteps`:

- ``None``: one frame halfway in every gap (the paper's network, 2n-1 outputs);
- n-1 sequences of floats, one per gap, each strictly increasing, shared by
  the batch; a gap may have none (the video pipeline's form: ``--fps``);
- a tensor (B, n-1, K), every gap K steps, which may differ per sample
  (training: one target at a drawn t per gap).

The outputs are in time order: input 0, gap 0's frames, input 1, ..., input n-1.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

HALF = 0.5  # the paper's one in-between frame

Times = Sequence[Sequence[float]] | torch.Tensor | None


@dataclass(frozen=True)
class TimeSteps:
    """The in-between frames of one forward pass.

    Attributes:
        gap: the gap of each in-between frame (P entries, non-decreasing).
        t: (B, P) float32, each frame's time step within its gap, increasing within a gap.
        n: the number of inputs.
    """

    gap: tuple[int, ...]
    t: torch.Tensor
    n: int

    @property
    def count(self) -> int:
        """P, the number of in-between frames."""
        return len(self.gap)

    @property
    def frames(self) -> int:
        """n + P, the number of output frames."""
        return self.n + self.count

    @property
    def is_half(self) -> bool:
        """Whether this is the paper's case: one frame at exactly 1/2 in every gap."""
        return self.gap == tuple(range(self.n - 1)) and bool((self.t == HALF).all())

    def order(self) -> list[int]:
        """Output frame j's index into ``cat(inputs, in-betweens)`` (n + P), in time order."""
        out: list[int] = []
        p = 0
        for k in range(self.n):
            out.append(k)
            while p < self.count and self.gap[p] == k:
                out.append(self.n + p)
                p += 1
        return out

    def input_positions(self) -> list[int]:
        """The output index of each input frame."""
        order = self.order()
        return [order.index(k) for k in range(self.n)]

    def between_positions(self) -> list[int]:
        """The output index of each in-between frame."""
        order = self.order()
        return [order.index(self.n + p) for p in range(self.count)]

    def sequence_times(self) -> list[tuple[int, torch.Tensor]]:
        """Each output frame's (gap, time within it) in time order, input k at (k, 0) (so
        also the last, past the last gap); the times are (B,) tensors."""
        zero = self.t.new_zeros(self.t.shape[0])
        out: list[tuple[int, torch.Tensor]] = []
        for j in self.order():
            if j < self.n:
                out.append((j, zero))
            else:
                out.append((self.gap[j - self.n], self.t[:, j - self.n]))
        return out


def resolve_times(times: Times, b: int, n: int, device: torch.device | None = None) -> TimeSteps:
    """``times`` in any of the module's forms as :class:`TimeSteps`, or a ``ValueError``."""
    if times is None:
        return TimeSteps(tuple(range(n - 1)), torch.full((b, n - 1), HALF, device=device), n)
    if isinstance(times, torch.Tensor):
        if times.dim() != 3 or times.shape[:2] != (b, n - 1):
            raise ValueError(
                f"expected times of shape ({b}, {n - 1}, K) for {n} inputs, "
                f"got {tuple(times.shape)}"
            )
        k = times.shape[2]
        steps = times.detach().float().to(device)
        _check_steps(steps.flatten(0, 1))
        gap = tuple(g for g in range(n - 1) for _ in range(k))
        return TimeSteps(gap, steps.flatten(1), n)
    if len(times) != n - 1:
        raise ValueError(
            f"expected {n - 1} sequences of time steps (one per gap), got {len(times)}"
        )
    gap = tuple(g for g, steps in enumerate(times) for _ in steps)
    flat = [float(t) for steps in times for t in steps]
    for steps in times:
        _check_steps(torch.tensor([[float(t) for t in steps]]))
    t = torch.tensor(flat, dtype=torch.float32, device=device).expand(b, len(flat)).clone()
    return TimeSteps(gap, t, n)


def _check_steps(steps: torch.Tensor) -> None:
    """(G, K) time steps: each in (0, 1), strictly increasing along K."""
    if steps.numel() == 0:
        return
    if not bool(((steps > 0) & (steps < 1)).all()):
        raise ValueError(f"time steps must lie in (0, 1), got {steps.flatten().tolist()}")
    if steps.shape[-1] > 1 and not bool((steps[..., 1:] > steps[..., :-1]).all()):
        raise ValueError(f"time steps must increase within a gap, got {steps.tolist()}")
