"""Time segments of one video: runs of consecutive windows of its :class:`WindowPlan`.

A segment holds windows ``[first_window, end_window)`` of the single-machine
layout (:mod:`zsm.video.windows`), so each of its windows reads the same
input frames and owns the same outputs as on one machine: the output is the
same whichever node makes it. A task decodes input frames from the first
frame its first window needs up to the frame after its last window (which
tells :func:`~zsm.video.windows.iter_windows` that window is a regular one),
and keeps exactly the outputs its windows own. The last segment runs to the
end of the stream and holds the final window.
"""

from __future__ import annotations

from dataclasses import dataclass

from zsm.video.timing import TimePlan
from zsm.video.windows import WindowPlan


@dataclass(frozen=True)
class Segment:
    """Windows ``[first_window, end_window)``; ``end_window`` is None for the last segment."""

    index: int
    first_window: int
    end_window: int | None

    @property
    def last(self) -> bool:
        return self.end_window is None

    def skip(self, plan: WindowPlan) -> int:
        """Leading input frames this segment's windows never read."""
        return plan.skippable(self.first_window)

    def stop(self, plan: WindowPlan) -> int | None:
        """Input frames to read (``None``: to the end): up to the one after the last window."""
        if self.end_window is None:
            return None
        return plan.start(self.end_window - 1) + plan.size + 1

    def first_output(self, plan: WindowPlan, times: TimePlan | int) -> int:
        """Index of this segment's first output frame (that of the first time its first
        window owns) under the time plan ``times`` (an int: a time factor)."""
        if isinstance(times, int):
            times = TimePlan.factor(times)
        return times.first_at(plan.keep_start(self.first_window) // 2)


def window_count(frames: int, plan: WindowPlan) -> int:
    """Windows :func:`~zsm.video.windows.iter_windows` cuts ``frames`` input frames into."""
    if frames < 2:
        raise ValueError(f"need at least 2 frames, got {frames}")
    regular = 0 if frames < plan.size + 1 else (frames - plan.size - 1) // plan.stride + 1
    return regular + 1  # and the final window


def plan_segments(frames: int, plan: WindowPlan, count: int) -> list[Segment]:
    """``count`` segments (fewer if there are fewer windows) of nearly equal window counts."""
    if count < 1:
        raise ValueError(f"need at least 1 segment, got {count}")
    windows = window_count(frames, plan)
    count = min(count, windows)
    bounds = [round(i * windows / count) for i in range(count + 1)]
    return [Segment(i, bounds[i], None if i == count - 1 else bounds[i + 1]) for i in range(count)]


def to_meta(segments: list[Segment]) -> list[list[int | None]]:
    """Segments as JSON for the work folder's manifest."""
    return [[s.first_window, s.end_window] for s in segments]


def from_meta(data: list[list[int | None]]) -> list[Segment]:
    """Inverse of :func:`to_meta`."""
    return [Segment(i, int(a), None if b is None else int(b)) for i, (a, b) in enumerate(data)]
