"""Overlapping temporal windows over a stream of frames.

The network's ConvLSTM runs forwards and backwards over its input, so the
outputs near either end of a window lack half their temporal context.
Windows therefore overlap: window ``k`` reads input frames
``[k*S, k*S + size)`` (stride ``S = size - 2*overlap - 1``) and *owns* only
its central outputs, from output ``2*(k*S + overlap)`` up to where the next
window's ownership begins; the first window owns from output 0, the last one
to the end. Output index ``j`` is time ``j / 2`` in input frames (even: an
input frame at 4x; odd: the frame halfway between two inputs). Every owned
output thus has at least ``overlap`` input frames of context on each side
inside its window (except at the ends of the video). Consecutive windows
share ``2*overlap + 1`` frames: one shared frame is the least that lets the
frame halfway across the seam be made at all.

At any other output rate (:mod:`zsm.video.timing`) a window owns the same
stretch of time: the output frames whose times lie in
:attr:`Window.owned_times` (the last window: to the end, held frames
included), so each output frame still comes from exactly one window.

The layout depends only on ``size``, ``overlap`` and the frame index, never
on when the stream ends or where a run was resumed, so a resumed run
reproduces an uninterrupted one exactly.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np

log = logging.getLogger("zsm")

DEFAULT_WINDOW = 12
DEFAULT_WINDOW_OVERLAP = 2


class TooFewFrames(ValueError):
    """The stream ended with fewer than the 2 frames the model needs."""

    def __init__(self, count: int) -> None:
        super().__init__(f"expected at least 2 frames, got {count}")
        self.count = count


@dataclass(frozen=True)
class Window:
    """Model call on inputs ``[start, stop)``, owning outputs ``[keep_start, keep_stop)``."""

    index: int
    start: int
    stop: int
    keep_start: int
    keep_stop: int
    last: bool

    @property
    def owned_times(self) -> tuple[int, int | None]:
        """The input-frame times this window owns, ``[start, stop)``; ``stop`` is ``None``
        for the last window, which owns everything after its start (held frames too)."""
        return self.keep_start // 2, None if self.last else self.keep_stop // 2


@dataclass(frozen=True)
class WindowPlan:
    """Window size and overlap (in input frames); see the module docstring."""

    size: int = DEFAULT_WINDOW
    overlap: int = DEFAULT_WINDOW_OVERLAP

    def __post_init__(self) -> None:
        if self.size < 2:
            raise ValueError(f"window must hold at least 2 input frames, got {self.size}")
        if self.overlap < 0 or self.stride < 1:
            raise ValueError(
                f"window overlap must be in [0, {(self.size - 2) // 2}] for a window of "
                f"{self.size} frames, got {self.overlap}"
            )

    @classmethod
    def fitted(cls, size: int, overlap: int | None = None) -> WindowPlan:
        """A plan for ``size`` frames, with ``overlap`` (default 2) reduced to fit small windows."""
        want = DEFAULT_WINDOW_OVERLAP if overlap is None else overlap
        if size < 2:
            raise ValueError(f"window must hold at least 2 input frames, got {size}")
        return cls(size=size, overlap=max(0, min(want, (size - 2) // 2)))

    @classmethod
    def fitted_warning(cls, size: int, overlap: int | None = None) -> WindowPlan:
        """:meth:`fitted`, with one warning when the overlap asked for had to be reduced."""
        plan = cls.fitted(size, overlap)
        if overlap is not None and plan.overlap < overlap:
            log.warning(
                "zsm: a window of %d frames allows an overlap of at most %d; using %d",
                size,
                plan.overlap,
                plan.overlap,
            )
        return plan

    @property
    def stride(self) -> int:
        return self.size - 2 * self.overlap - 1

    def start(self, k: int) -> int:
        return k * self.stride

    def keep_start(self, k: int) -> int:
        return 0 if k == 0 else 2 * (self.start(k) + self.overlap)

    def regular(self, k: int) -> Window:
        a = self.start(k)
        return Window(k, a, a + self.size, self.keep_start(k), self.keep_start(k + 1), last=False)

    def final(self, k: int, n: int) -> Window:
        """The last window once the stream is known to hold ``n`` frames: the last ``size``
        frames (all of them if fewer), owning everything after window ``k - 1``."""
        return Window(k, max(0, n - self.size), n, self.keep_start(k), 2 * n - 1, last=True)

    def skippable(self, k: int) -> int:
        """How many leading frames a run starting at window ``k`` never needs.

        Windows before ``k`` were regular, so the stream holds at least
        ``start(k - 1) + size + 1 = start(k) + 2*overlap + 2`` frames and the
        final window starts at or after that minus ``size``.
        """
        if k == 0:
            return 0
        return max(0, self.start(k) + 2 * self.overlap + 2 - self.size)


def iter_windows(
    frames: Iterable[np.ndarray | None], plan: WindowPlan, *, first: int = 0
) -> Iterator[tuple[Window, list[np.ndarray]]]:
    """Cut ``frames`` into the windows of ``plan``, starting at window ``first``.

    Holds at most ``size + 1`` frames: a window is issued once the frame
    after it has arrived (so the last window is known to be last). ``None``
    frames stand for skipped ones that no issued window may contain.
    Raises :class:`TooFewFrames` when the stream holds fewer than 2 frames.
    """
    buf: deque[np.ndarray | None] = deque(maxlen=plan.size + 1)
    n = 0
    k = first
    for frame in frames:
        buf.append(frame)
        n += 1
        while n >= plan.start(k) + plan.size + 1:
            win = plan.regular(k)
            yield win, _take(buf, n, win)
            k += 1
    if n < 2:
        raise TooFewFrames(n)
    win = plan.final(k, n)
    yield win, _take(buf, n, win)


def _take(buf: deque[np.ndarray | None], n: int, win: Window) -> list[np.ndarray]:
    offset = n - len(buf)  # global index of buf[0]
    if win.start < offset:
        raise RuntimeError(f"window {win} needs frames already dropped (buffer starts at {offset})")
    out = [buf[i - offset] for i in range(win.start, win.stop)]
    if any(f is None for f in out):
        raise RuntimeError(f"window {win} contains skipped frames")
    return out  # type: ignore[return-value]
