"""The web app's job queue: one worker thread per device, jobs in order, each cancellable.

A GPU (or the CPU's cores) runs one upscaling well and two badly: they would
share its memory and time, and both finish later than one after the other.
So :class:`JobQueue` keeps a first-in-first-out queue per device and one
thread per device that runs its jobs one at a time; the page's request only
waits on its :class:`Job` and shows its progress. Cancelling a queued job drops
it; cancelling a running one sets its ``cancel`` event, which the job's function
passes to :func:`zsm.upscale_video` (it stops before its next window).

Nothing here imports Gradio: the queue is tested on its own.
"""

from __future__ import annotations

import enum
import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from zsm.errors import ZSMError

log = logging.getLogger("zsm")


class JobState(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


FINISHED = frozenset({JobState.DONE, JobState.FAILED, JobState.CANCELLED})


@dataclass(eq=False)
class Job:
    """One queued piece of work; its worker fills in ``state``, ``result`` or ``error``."""

    id: str
    device: str
    fn: Callable[[Job], Any]
    context: Any = None  # what the submitter needs to know about the job afterwards
    cancel: threading.Event = field(default_factory=threading.Event)
    state: JobState = JobState.QUEUED
    progress: Any = None  # the latest zsm.Progress the job reported
    result: Any = None
    error: str | None = None  # one line for the user
    created: float = field(default_factory=time.monotonic)
    _finished: threading.Event = field(default_factory=threading.Event, repr=False)

    @classmethod
    def refused(cls, error: str) -> Job:
        """A job that never ran: its upload or options were refused with ``error``."""
        job = cls(id="refused", device="", fn=lambda job: None, state=JobState.FAILED, error=error)
        job._finished.set()
        return job

    @property
    def finished(self) -> bool:
        return self.state in FINISHED

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until the job has finished; False if ``timeout`` passed first."""
        return self._finished.wait(timeout)


class JobQueue:
    """First-in-first-out jobs, run one at a time per device by a thread of that device."""

    def __init__(self) -> None:
        self._lock = threading.Condition()
        self._queues: dict[str, deque[Job]] = {}
        self._running: dict[str, Job] = {}
        self._workers: dict[str, threading.Thread] = {}
        self._ids = itertools.count(1)
        self._closed = False

    def submit(self, device: str, fn: Callable[[Job], Any], context: Any = None) -> Job:
        """Queue ``fn(job)`` to run on ``device``'s worker; returns the job at once."""
        with self._lock:
            if self._closed:
                raise RuntimeError("the job queue is closed")
            job = Job(id=f"{next(self._ids):04d}", device=device, fn=fn, context=context)
            self._queues.setdefault(device, deque()).append(job)
            if device not in self._workers:
                worker = threading.Thread(
                    target=self._work, args=(device,), name=f"zsm-ui-{device}", daemon=True
                )
                self._workers[device] = worker
                worker.start()
            self._lock.notify_all()
        return job

    def ahead(self, job: Job) -> int:
        """How many jobs run or wait before ``job`` on its device (0 once it runs)."""
        with self._lock:
            queue = self._queues.get(job.device, deque())
            if job not in queue:
                return 0
            return queue.index(job) + (job.device in self._running)

    def running(self) -> list[Job]:
        with self._lock:
            return list(self._running.values())

    def cancel(self, job: Job) -> None:
        """Drop ``job`` if it waits; ask it to stop if it runs; nothing if it has finished."""
        job.cancel.set()
        with self._lock:
            queue = self._queues.get(job.device)
            if queue is not None and job in queue:
                queue.remove(job)
                self._finish(job, JobState.CANCELLED, error="cancelled before it started")

    def close(self, timeout: float = 30.0) -> None:
        """Cancel every job and stop the workers (waiting up to ``timeout`` for each)."""
        with self._lock:
            self._closed = True
            for queue in self._queues.values():
                while queue:
                    job = queue.popleft()
                    job.cancel.set()
                    self._finish(job, JobState.CANCELLED, error="the app is shutting down")
            for job in self._running.values():
                job.cancel.set()
            workers = list(self._workers.values())
            self._lock.notify_all()
        for worker in workers:
            worker.join(timeout)

    def _work(self, device: str) -> None:
        while True:
            with self._lock:
                queue = self._queues[device]
                while not queue and not self._closed:
                    self._lock.wait()
                if self._closed:
                    return
                job = queue.popleft()
                job.state = JobState.RUNNING
                self._running[device] = job
            try:
                result = job.fn(job)
            except ZSMError as exc:
                cancelled = job.cancel.is_set()
                self._done(job, JobState.CANCELLED if cancelled else JobState.FAILED, str(exc))
            except Exception as exc:  # a bug: keep the worker alive for the next job
                log.exception("zsm ui: job %s failed", job.id)
                self._done(job, JobState.FAILED, f"internal error ({type(exc).__name__}: {exc})")
            else:
                job.result = result
                self._done(job, JobState.DONE, None)

    def _done(self, job: Job, state: JobState, error: str | None) -> None:
        with self._lock:
            self._running.pop(job.device, None)
            self._finish(job, state, error)

    @staticmethod
    def _finish(job: Job, state: JobState, error: str | None) -> None:
        job.state, job.error = state, error
        job._finished.set()
