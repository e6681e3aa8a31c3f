"""The Ray actor through which segment tasks report their output frames to the driver.

Kept free of imports: the driver sends the class by value, so the actor's
process starts without importing zsm (and torch).
"""

from __future__ import annotations

Key = tuple[int, int]  # (job, segment index)


class ProgressBoard:
    """Output frames made so far by the latest attempt of each segment."""

    def __init__(self) -> None:
        self.frames: dict[Key, int] = {}

    def report(self, key: Key, frames: int) -> None:
        self.frames[key] = frames  # a retry reports 0 first: it starts its segment over

    def snapshot(self) -> dict[Key, int]:
        return dict(self.frames)
