"""A video file's frame rate, and what to do when its frame timestamps cannot be trusted.

FFmpeg's average rate is frames / duration, both taken from the timestamps. A
file whose frames all carry one pts (some muxers and screen recorders write
0 everywhere), or whose pts repeat or go backwards, has a nonsense average:
12 frames stamped 0 read as 300 fps. Such a file is recognised from the pts
of its first decoded frames (presentation order, so B-frames do not matter)
and timed by the rate its container or codec header *declares* instead; the
output is stamped by frame index (:mod:`zsm.video.encode`, :mod:`zsm.video.mux`),
so no broken pts reaches it.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Sequence
from fractions import Fraction

import av

log = logging.getLogger("zsm")

CHECKED_FRAMES = 8  # decoded frames whose pts the probe compares
FALLBACK_RATE = Fraction(25)  # when a file states no usable rate
MAX_DECLARED_RATE = 1000  # above this a declared rate is a clock tick, not a frame rate


def timestamp_problem(pts: Sequence[int | None]) -> str | None:
    """What is wrong with the pts of a file's first decoded frames, or ``None`` if nothing.

    Fewer than two frames cannot be judged and pass.
    """
    if len(pts) < 2:
        return None
    if all(p is None for p in pts):
        return "none at all"
    if any(p is None for p in pts):
        return "some missing"
    if len(set(pts)) == 1:
        return f"every frame at pts {pts[0]}"
    if any(b <= a for a, b in itertools.pairwise(pts)):  # type: ignore[operator]
        return "not increasing"
    return None


def _sane(rate: Fraction | None) -> Fraction | None:
    if rate is None or not rate or rate <= 0 or rate > MAX_DECLARED_RATE:
        return None
    return Fraction(rate)


def declared_rate(stream: av.video.VideoStream) -> Fraction | None:
    """The rate a stream declares, without its timestamps: FFmpeg's guess (which weighs the
    codec's and the container's), the codec header's, then the container's; ``None`` if
    none is a plausible frame rate."""
    for rate in (stream.guessed_rate, stream.codec_context.framerate, stream.base_rate):
        sane = _sane(rate)
        if sane is not None:
            return sane
    return None


def stream_rate(
    stream: av.video.VideoStream, pts: Sequence[int | None], name: str
) -> tuple[Fraction, bool]:
    """(frame rate, whether the timestamps are broken) of a video stream.

    ``pts``: those of its first decoded frames (:data:`CHECKED_FRAMES`). Logs one
    warning, naming ``name`` and the rate used, when it has to guess.
    """
    problem = timestamp_problem(pts)
    if problem is not None:
        declared = declared_rate(stream)
        if declared is None:
            log.warning(
                "zsm: %s has broken frame timestamps (%s) and declares no frame rate; "
                "assuming %s fps",
                name,
                problem,
                FALLBACK_RATE,
            )
            return FALLBACK_RATE, True
        log.warning(
            "zsm: %s has broken frame timestamps (%s); using the frame rate it declares, %s fps",
            name,
            problem,
            declared,
        )
        return declared, True
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    if not rate or rate <= 0:
        log.warning("zsm: %s does not state its frame rate; assuming %s fps", name, FALLBACK_RATE)
        return FALLBACK_RATE, False
    return Fraction(rate), False
