"""Several clip sources as one (:class:`ConcatSources`)."""

from __future__ import annotations

import bisect
from collections.abc import Sequence

import numpy as np

from zsm.data.datasets import ClipSource, TimedClipSource, _check_index
from zsm.errors import InputError


class ConcatSources:
    """Several clip sources indexed one after the other (all must share a clip length)."""

    def __init__(self, sources: Sequence[ClipSource]) -> None:
        if not sources:
            raise ValueError("expected at least one clip source")
        lengths = {s.length for s in sources}
        if len(lengths) != 1:
            raise ValueError(f"clip sources differ in clip length: {sorted(lengths)}")
        self.sources = list(sources)
        self.length = lengths.pop()
        self._ends = list(np.cumsum([len(s) for s in sources]))

    def __len__(self) -> int:
        return int(self._ends[-1])

    def __repr__(self) -> str:
        return f"ConcatSources({self.sources!r})"

    def clip(self, index: int, rng: np.random.Generator) -> np.ndarray:
        k, local = self._locate(index)
        return self.sources[k].clip(local, rng)

    def span(self, index: int) -> int | None:
        k, local = self._locate(index)
        return _timed(self.sources[k]).span(local)

    def frames_at(self, index: int, offsets: Sequence[int], rng: np.random.Generator) -> np.ndarray:
        k, local = self._locate(index)
        return _timed(self.sources[k]).frames_at(local, offsets, rng)

    def _locate(self, index: int) -> tuple[int, int]:
        """(which source, index in it) of combined index ``index``."""
        index = _check_index(index, len(self), "combined")
        k = bisect.bisect_right(self._ends, index)
        return k, index - (int(self._ends[k - 1]) if k else 0)


def _timed(source: ClipSource) -> TimedClipSource:
    if not isinstance(source, TimedClipSource):
        raise InputError(f"{source!r} cannot read clips at several time steps")
    return source
