"""The Ray actor through which segment tasks report their output frames to the driver.

Kept free of imports: the driver sends the class by value, so the actor's
process starts without importing zsm (and torch).
"""

from __future__ import annotations

Key = tuple[int, int]  # (job, segment index)


class ProgressBoard:
    """Output frames of each running segment attempt, and attempts per segment."""

    def __init__(self) -> None:
        self.frames: dict[Key, int] = {}
        self.attempts: dict[Key, int] = {}

    def start(self, key: Key) -> None:
        self.attempts[key] = self.attempts.get(key, 0) + 1
        self.frames[key] = 0  # a retry starts its segment over

    def report(self, key: Key, frames: int) -> None:
        self.frames[key] = frames

    def snapshot(self) -> tuple[dict[Key, int], dict[Key, int]]:
        return dict(self.frames), dict(self.attempts)
