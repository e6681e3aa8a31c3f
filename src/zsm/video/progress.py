"""Progress of a run: a tqdm bar for the terminal, a callback for other front ends, cancel.

:class:`Progress` is what a callback sees (the web app draws its own bar from
it); the ``cancel`` event is how a front end stops a run between windows or
tiles (:class:`~zsm.errors.Cancelled` is raised where the run is, so it
unwinds like Ctrl-C and removes what it started).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from tqdm import tqdm

from zsm.errors import Cancelled


@dataclass(frozen=True)
class Progress:
    """Output frames ``done`` of ``total`` (``None``: unknown), speed of this run, time left."""

    done: int
    total: int | None
    frames_per_second: float
    seconds_left: float | None


ProgressCallback = Callable[[Progress], None]


def check_cancel(cancel: threading.Event | None) -> None:
    """Raise :class:`~zsm.errors.Cancelled` if ``cancel`` is set."""
    if cancel is not None and cancel.is_set():
        raise Cancelled("cancelled")


class ProgressReporter:
    """Counts output frames into a tqdm bar and/or a callback (closed by :meth:`close`)."""

    def __init__(
        self,
        *,
        total: int | None,
        initial: int,
        desc: str,
        bar: bool | None,
        callback: ProgressCallback | None,
    ) -> None:
        self.total, self.initial, self.done = total, initial, initial
        self.callback = callback
        self.started = time.monotonic()
        self.bar = tqdm(
            total=total,
            initial=initial,
            unit="frame",
            desc=desc,
            disable=None if bar is None else not bar,
            dynamic_ncols=True,
            leave=False,
        )
        self._report()

    def update(self, frames: int) -> None:
        """``frames`` more output frames written."""
        self.done += frames
        self.bar.update(frames)
        self._report()

    def _report(self) -> None:
        if self.callback is None:
            return
        made = self.done - self.initial
        seconds = time.monotonic() - self.started
        fps = made / seconds if made and seconds > 0 else 0.0
        left = None
        if self.total is not None and fps > 0:
            left = max(self.total - self.done, 0) / fps
        self.callback(Progress(self.done, self.total, fps, left))

    def close(self) -> None:
        self.bar.close()
