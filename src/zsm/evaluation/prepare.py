"""A clip's first pass: the LR input built frame by frame, the HR targets kept or re-read.

An evaluation reads each HR clip twice at most: once to build the model's and
baselines' LR input (and to keep the HR frames while they are small), and once
more for the targets if they were too large to keep; a clip of any length can
then be scored in bounded memory.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from zsm.data.degrade import SCALE, make_lr_clip
from zsm.errors import InputError


@dataclass
class PreparedClip:
    """What the first pass over a clip's HR frames gives (see :func:`prepare_clip`)."""

    lr: np.ndarray  # (n, h, w, 3) uint8: the model's and baselines' input
    count: int  # HR frames scored: the first ``count``, N(n-1)+1 at time factor N
    height: int  # HR frames are cropped to height x width (multiples of 4)
    width: int
    notes: list[str]
    frames: list[np.ndarray] | None  # the cropped HR frames, if they were small enough to keep

    def targets(self, read: Callable[[], Iterable[np.ndarray]]) -> Iterator[np.ndarray]:
        """The ``count`` ground-truth frames: the kept ones, else the clip read anew."""
        if self.frames is not None:
            yield from self.frames[: self.count]
            return
        got = 0
        for frame in itertools.islice(read(), self.count):
            got += 1
            yield frame[: self.height, : self.width]
        if got != self.count:
            raise InputError(f"the clip gave {got} frames on a second reading, {self.count} first")


KEEP_FRAMES_BYTES = 512 * 2**20  # HR frames up to this size are kept between the two passes


def prepare_clip(
    frames: Iterable[np.ndarray], *, keep_bytes: int | None = None, time_factor: int = 2
) -> PreparedClip:
    """One pass over HR frames: the LR input (:func:`~zsm.data.degrade.make_lr_clip` of
    frames 0, N, 2N, ..., N = ``time_factor``, one frame at a time), H, W cropped to
    multiples of 4, T to N(n-1)+1 (the last input's frame ends the clip); notes say what
    was cut. Memory: the LR frames (1/(16N) of the HR clip) plus the HR frames while they
    fit ``keep_bytes`` (default :data:`KEEP_FRAMES_BYTES`), so that a clip of any length
    can be scored.
    """
    if isinstance(time_factor, bool) or not isinstance(time_factor, int) or time_factor < 2:
        raise ValueError(f"time_factor must be an integer >= 2, got {time_factor!r}")
    keep_bytes = KEEP_FRAMES_BYTES if keep_bytes is None else keep_bytes
    lr: list[np.ndarray] = []
    kept: list[np.ndarray] | None = []
    t = h = w = h4 = w4 = 0
    for t, frame in enumerate(frames, start=1):
        if t == 1:
            h, w = frame.shape[:2]
            h4, w4 = h - h % SCALE, w - w % SCALE
            if h4 == 0 or w4 == 0:
                raise InputError(f"frames of {w}x{h} are too small for x{SCALE}")
        elif frame.shape[:2] != (h, w):
            fh, fw = frame.shape[:2]
            raise InputError(f"frame {t} is {fw}x{fh}, but the clip's first frame is {w}x{h}")
        frame = frame[:h4, :w4]
        if (t - 1) % time_factor == 0:
            lr.append(make_lr_clip(frame[None])[0][0])
        if kept is not None:
            kept.append(frame.copy())  # owns its bytes (a decoded frame may pin more)
            if len(kept) * frame.nbytes > keep_bytes:
                kept = None
    if t < time_factor + 1:
        at = f" at time factor {time_factor}" if time_factor != 2 else ""
        raise InputError(f"a clip needs at least {time_factor + 1} frames (2 inputs{at}), got {t}")
    notes = []
    if (h4, w4) != (h, w):
        notes.append(f"cropped {w}x{h} to {w4}x{h4} (multiple of {SCALE}, bottom/right)")
    count = t - (t - 1) % time_factor
    if count == t - 1:
        notes.append(f"dropped the last of {t} frames (no input follows it to interpolate from)")
    elif count != t:
        notes.append(
            f"dropped the last {t - count} of {t} frames (no input follows them to "
            "interpolate from)"
        )
    lr = lr[: (count - 1) // time_factor + 1]
    return PreparedClip(np.stack(lr), count, h4, w4, notes, kept)
