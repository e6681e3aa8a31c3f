"""Evaluation clips: where ``zsm evaluate DATA`` finds its HR ground-truth sequences.

DATA may be
- a Vid4-style folder of clips, ``<root>/<clip>/*.png`` (one sub-folder per clip),
- a folder of frames, ``<folder>/*.png`` (one clip),
- the Vimeo-90K septuplet test list (``sep_testlist.txt``, lines ``00001/0266``,
  frames in ``sequences/00001/0266/im1.png .. im7.png`` beside the list),
- a single video file (decoded with PyAV).

Frames are read only when a clip is evaluated, one at a time, as uint8 RGB
(H, W, 3): a clip never needs to fit in memory.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from zsm.errors import InputError

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"})


@dataclass(frozen=True)
class Clip:
    """A named HR sequence; ``frames(max_frames)`` reads it anew, one frame at a time."""

    name: str
    frames: Callable[[int | None], Iterator[np.ndarray]]

    def load(self, max_frames: int | None = None) -> np.ndarray:
        """The first ``max_frames`` frames (all by default) at once, (T, H, W, 3)."""
        frames = list(self.frames(max_frames))
        if not frames:
            raise InputError(f"{self.name} contains no frames")
        return np.stack(frames)


def find_clips(data: Path | str) -> list[Clip]:
    """The clips in ``data`` (see the module docstring), in name order."""
    data = Path(data).expanduser()
    if not data.exists():
        raise InputError(f"evaluation data not found: {data}")
    if data.is_file():
        if data.suffix.lower() == ".txt":
            return _vimeo_clips(data)
        if data.suffix.lower() in IMAGE_SUFFIXES:
            raise InputError(f"{data} is a single image; evaluation needs a sequence of frames")
        return [Clip(data.stem, lambda m, path=data: iter_video(path, m))]
    frames = _image_files(data)
    if frames:
        return [Clip(data.name, lambda m, files=frames: iter_images(files, m))]
    clips = []
    for sub in sorted((d for d in data.iterdir() if d.is_dir()), key=lambda d: natural_key(d.name)):
        files = _image_files(sub)
        if files:
            clips.append(Clip(sub.name, lambda m, files=files: iter_images(files, m)))
    if not clips:
        raise InputError(
            f"no frames in {data}: expected images (PNG, JPEG, ...) in it or in its sub-folders"
        )
    return clips


def natural_key(name: str) -> list[int | str]:
    """Sort key that puts ``frame9`` before ``frame10``."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


def _image_files(folder: Path) -> list[Path]:
    files = [p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
    return sorted(files, key=lambda p: natural_key(p.name))


def _vimeo_clips(listing: Path) -> list[Clip]:
    root = listing.parent / "sequences"
    if not root.is_dir():
        root = listing.parent
    names = [line.strip() for line in listing.read_text().splitlines() if line.strip()]
    if not names:
        raise InputError(f"the test list {listing} names no sequences")
    clips = []
    for name in names:
        folder = root / name
        files = [folder / f"im{i}.png" for i in range(1, 8)]
        clips.append(Clip(name, lambda m, files=files: iter_images(files, m)))
    return clips


def iter_images(files: list[Path], max_frames: int | None = None) -> Iterator[np.ndarray]:
    """Image files -> uint8 RGB frames (H, W, 3), one at a time; all must have one size."""
    files = files[:max_frames] if max_frames else files
    first: tuple[int, ...] | None = None
    for path in files:
        try:
            with Image.open(path) as image:
                frame = np.asarray(image.convert("RGB"))
        except FileNotFoundError as exc:
            raise InputError(f"frame not found: {path}") from exc
        except (UnidentifiedImageError, OSError) as exc:
            raise InputError(f"cannot read frame {path}: {exc}") from exc
        first = first or frame.shape
        if frame.shape != first:
            h0, w0 = first[:2]
            h, w = frame.shape[:2]
            raise InputError(f"frame {path} is {w}x{h}, but the clip's first frame is {w0}x{h0}")
        yield frame


def iter_video(path: Path, max_frames: int | None = None) -> Iterator[np.ndarray]:
    """A video file's first ``max_frames`` frames (all by default), uint8 RGB (H, W, 3).

    Decoded by :mod:`zsm.video.io`, as ``zsm upscale`` does: rotation metadata
    honoured, any pixel format converted alike.
    """
    from zsm.video.io import iter_frames, probe

    frames = itertools.islice(iter_frames(probe(path)), max_frames)
    yield from (f for f in frames if f is not None)
