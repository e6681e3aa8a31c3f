"""The output's time plan: which instant of the input each output frame shows.

Times are in input frames: input frame ``i`` is at time ``i`` and is shown
until ``i + 1``, so n inputs last ``n`` frame times. The output runs at
``rate`` output frames per input frame (the time factor N, or the target
frame rate over the input's, an exact :class:`~fractions.Fraction`), and
output frame ``k`` is at time ``k / rate``:

* exactly on an input frame ``i``: that input, upscaled (no in-between is made);
* between inputs ``i`` and ``i + 1``: the frame ``t = time - i`` of the way from
  one to the other, ``0 < t < 1`` (the model makes it);
* after the last input (``time > n - 1``): there is nothing to interpolate towards,
  so the last input is *held*, as a player holds the last frame for its full
  frame time.

The output has ``ceil(n * rate)`` frames: every output frame whose time falls
within the input's ``n`` frame times, so its duration equals the input's to
within one output frame (exactly, when ``n * rate`` is whole: time factor N
gives ``n * N`` frames, the last ``N - 1`` of them holding the last input).
Input frames at no output time (24 to 60 fps: input 1 is at output time 2.5)
are simply not shown.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

HALFWAY = Fraction(1, 2)


@dataclass(frozen=True)
class OutputTime:
    """Where one output frame lies: input frame ``gap`` itself (``t == 0``), or ``t`` of the
    way from input ``gap`` to input ``gap + 1`` (``0 < t < 1``)."""

    gap: int
    t: Fraction = Fraction(0)

    @property
    def on_input(self) -> bool:
        return self.t == 0


@dataclass(frozen=True)
class TimePlan:
    """``rate`` output frames per input frame; see the module docstring."""

    rate: Fraction

    def __post_init__(self) -> None:
        if not isinstance(self.rate, Fraction):
            object.__setattr__(self, "rate", Fraction(self.rate))
        if self.rate <= 0:
            raise ValueError(f"output frames per input frame must be > 0, got {self.rate}")

    @classmethod
    def factor(cls, time_factor: int) -> TimePlan:
        """Time factor N: N output frames per input frame."""
        return cls(Fraction(time_factor))

    @classmethod
    def between(cls, in_fps: Fraction, out_fps: Fraction) -> TimePlan:
        """From an input at ``in_fps`` to an output at ``out_fps`` frames per second."""
        return cls(Fraction(out_fps) / Fraction(in_fps))

    @property
    def steps(self) -> int:
        """Every output time is a multiple of ``1 / steps`` input frames (and each multiple
        occurs, given enough frames): the time steps the model is asked to make."""
        return self.rate.numerator

    @property
    def halfway_only(self) -> bool:
        """Whether every output frame is on an input or halfway between two (a model that
        makes only ``t = 1/2`` can make this plan)."""
        return self.steps <= 2

    def count(self, n: int) -> int:
        """Output frames for ``n`` input frames."""
        return math.ceil(n * self.rate)

    def time(self, k: int) -> Fraction:
        """The time of output frame ``k``, in input frames."""
        return k / self.rate

    def first_at(self, time: Fraction | int) -> int:
        """The first output frame at or after ``time``."""
        return math.ceil(time * self.rate)

    def at(self, k: int, n: int | None = None) -> OutputTime:
        """Where output frame ``k`` lies, for a stream of ``n`` inputs (``None``: not known
        to end before output ``k``'s time)."""
        time = self.time(k)
        if n is not None and time >= n - 1:
            return OutputTime(n - 1)  # on the last input, or held at it
        gap = math.floor(time)
        return OutputTime(gap, time - gap)

    def gap_times(self, gap: int) -> tuple[Fraction, ...]:
        """The in-between times ``0 < t < 1`` the plan has between inputs ``gap`` and
        ``gap + 1``, increasing (none when no output frame falls inside that gap)."""
        ks = range(self.first_at(gap), self.first_at(gap + 1))
        return tuple(t for t in (self.time(k) - gap for k in ks) if t > 0)

    def outputs(self, start: int, stop: int | None, n: int | None = None) -> range:
        """The output frames at times in ``[start, stop)``; ``stop=None``: to the end of a
        stream of ``n`` inputs (held frames included)."""
        if stop is None:
            if n is None:
                raise ValueError("an open-ended range needs the stream's frame count n")
            return range(self.first_at(start), self.count(n))
        return range(self.first_at(start), self.first_at(stop))


def plan_times(n: int, plan: TimePlan) -> list[OutputTime]:
    """Where each of the ``plan.count(n)`` output frames of ``n`` inputs lies."""
    return [plan.at(k, n) for k in range(plan.count(n))]


__all__ = ["HALFWAY", "OutputTime", "TimePlan", "plan_times"]
