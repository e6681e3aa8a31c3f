"""Timers: the clock (wall or process CPU time), device sync, one timed call, best of many."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

# The clock timings use: wall time, or (``use_process_clock``) this process's
# CPU time, which on a machine shared with other work does not count the
# time the scheduler gives to others; with one thread it is the op's time.
_clock: Callable[[], float] = time.perf_counter


def use_process_clock(on: bool) -> None:
    """Time with the process's CPU time (``True``) or wall time (``False``, the default)."""
    global _clock
    _clock = time.process_time if on else time.perf_counter


def clock_name() -> str:
    """``process`` or ``wall``: the clock :func:`now` reads (for the report)."""
    return "process" if _clock is time.process_time else "wall"


def now() -> float:
    """The current reading of the clock chosen by :func:`use_process_clock`, in seconds."""
    return _clock()


def sync(device: torch.device) -> None:
    """Wait for the work queued on ``device``: GPU kernels run asynchronously to Python."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def timed(fn: Callable[[], object], device: torch.device) -> float:
    """Seconds one call of ``fn`` takes, device work included."""
    sync(device)
    t0 = now()
    fn()
    sync(device)
    return now() - t0


def best_of(
    fn: Callable[[], object], device: torch.device, repeats: int, budget_s: float
) -> list[float]:
    """Run ``fn`` up to ``repeats`` times (at least once), stopping once ``budget_s`` is spent."""
    times: list[float] = []
    while len(times) < max(1, repeats) and sum(times) < budget_s:
        times.append(timed(fn, device))
    return times
