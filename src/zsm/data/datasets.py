"""HR clip sources: Vimeo-90K septuplets, Vid4-style frame folders, any folder of videos.

A *clip source* is anything with ``len(source)`` and
``source.clip(index, rng) -> uint8 array (T, H, W, 3)``: the ``index``-th
clip of ``T`` consecutive HR frames (7 by default, the Vimeo-90K septuplet
length). File sources ignore ``rng``; the synthetic source
(:mod:`zsm.data.synthetic`) draws its motion from it. Degradation and
augmentation happen later (:mod:`zsm.data.pairs`), the same way for every
source.

For training at several time steps (:mod:`zsm.data.timesteps`) a source is
also a :class:`TimedClipSource`: ``span(index)`` tells how many consecutive
frames clip ``index`` can reach and ``frames_at(index, offsets, rng)`` reads
only the frames at ``offsets`` of a longer span around it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from itertools import pairwise
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
from PIL import Image

from zsm.errors import InputError

CLIP_LENGTH = 7  # frames per training clip: 4 LR inputs (odd frames), 7 HR targets
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
VIDEO_SUFFIXES = (".mp4", ".mkv", ".mov", ".avi", ".webm", ".m4v", ".mpg", ".mpeg", ".y4m", ".ts")


@runtime_checkable
class ClipSource(Protocol):
    """A finite, indexable set of HR clips of ``length`` frames each."""

    length: int

    def __len__(self) -> int: ...

    def clip(self, index: int, rng: np.random.Generator) -> np.ndarray:
        """Clip ``index`` as uint8 (T, H, W, 3)."""
        ...


@runtime_checkable
class TimedClipSource(ClipSource, Protocol):
    """A clip source that also reads spans longer than its clips, frame by chosen frame.

    ``span(index)``: the most consecutive frames a span of clip ``index`` can
    cover (``None``: any number, for rendered sources). ``frames_at(index,
    offsets, rng)``: the frames at ``offsets`` (increasing, from 0) of a span of
    ``offsets[-1] + 1`` frames placed around clip ``index`` (file sources spread
    the spans' starts evenly over those that fit, see :func:`span_start`); with
    ``offsets = range(length)`` it is ``clip(index, rng)``.
    """

    def span(self, index: int) -> int | None: ...

    def frames_at(
        self, index: int, offsets: Sequence[int], rng: np.random.Generator
    ) -> np.ndarray: ...


def span_start(start: int, frames: int, length: int, span: int, where: str) -> int:
    """Where a span of ``span`` frames begins for the clip of ``length`` frames at ``start``
    in a sequence of ``frames``: ``start`` scaled from 0..frames-length to 0..frames-span, so
    that the windows of a source cover its sequence evenly at every span."""
    if span > frames:
        raise IndexError(f"a span of {span} frames does not fit the {frames} frames of {where}")
    if frames == length:
        return 0
    return start * (frames - span) // (frames - length)


def _check_offsets(offsets: Sequence[int]) -> list[int]:
    out = [int(o) for o in offsets]
    if not out or out[0] < 0 or any(b <= a for a, b in pairwise(out)):
        raise ValueError(f"frame offsets must be increasing from >= 0, got {out}")
    return out


def read_image(path: Path) -> np.ndarray:
    """An image file as uint8 (H, W, 3) RGB."""
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read image {path}: {exc}") from exc


def _natural_key(path: Path) -> list[object]:
    """Sort key so that ``im2.png`` comes before ``im10.png``."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path.name)]


def _check_index(index: int, n: int, what: str) -> int:
    if not -n <= index < n:
        raise IndexError(f"{what} index {index} out of range for {n} clips")
    return index % n


def _stack(frames: Sequence[np.ndarray], where: str) -> np.ndarray:
    shapes = {f.shape for f in frames}
    if len(shapes) != 1:
        raise InputError(f"frames of {where} differ in size: {sorted(shapes)}")
    return np.stack(frames)


# --- Vimeo-90K ------------------------------------------------------------------------


class VimeoSeptuplets:
    """Vimeo-90K septuplets: ``ROOT/sequences/<a>/<b>/im1..im7.png`` listed in a split file.

    ``split`` is ``"train"`` (``sep_trainlist.txt``) or ``"test"``
    (``sep_testlist.txt``); ``list_file`` overrides the file name. With
    ``length`` < 7, each clip is a window of the septuplet at an offset drawn
    from ``rng`` (the first frames without one).
    """

    def __init__(
        self,
        root: Path | str,
        *,
        split: str = "train",
        list_file: str | None = None,
        length: int = CLIP_LENGTH,
    ) -> None:
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        if not 1 <= length <= CLIP_LENGTH:
            raise ValueError(f"length must be in 1..{CLIP_LENGTH}, got {length}")
        self.root = Path(root)
        self.length = length
        listing = self.root / (list_file or f"sep_{split}list.txt")
        if not listing.is_file():
            raise InputError(
                f"{self.root} is not a Vimeo-90K septuplet folder: {listing.name} not found"
            )
        self.names = [ln.strip() for ln in listing.read_text().splitlines() if ln.strip()]
        if not self.names:
            raise InputError(f"{listing} lists no sequences")
        missing = self.root / "sequences" / self.names[0] / "im1.png"
        if not missing.is_file():
            raise InputError(f"Vimeo-90K frame not found: {missing}")

    def __len__(self) -> int:
        return len(self.names)

    def __repr__(self) -> str:
        return f"VimeoSeptuplets({str(self.root)!r}, {len(self)} sequences)"

    def clip(self, index: int, rng: np.random.Generator | None = None) -> np.ndarray:
        name = self.names[_check_index(index, len(self), "Vimeo-90K")]
        folder = self.root / "sequences" / name
        first = 1 + (int(rng.integers(0, CLIP_LENGTH - self.length + 1)) if rng else 0)
        frames = range(first, first + self.length)
        return _stack([read_image(folder / f"im{i}.png") for i in frames], str(folder))

    def span(self, index: int) -> int:
        return CLIP_LENGTH

    def frames_at(
        self, index: int, offsets: Sequence[int], rng: np.random.Generator | None = None
    ) -> np.ndarray:
        """The frames at ``offsets`` of a span at an offset in the septuplet drawn from ``rng``."""
        name = self.names[_check_index(index, len(self), "Vimeo-90K")]
        folder = self.root / "sequences" / name
        offsets = _check_offsets(offsets)
        span = offsets[-1] + 1
        if span > CLIP_LENGTH:
            raise IndexError(f"a span of {span} frames does not fit a septuplet ({folder})")
        first = 1 + (int(rng.integers(0, CLIP_LENGTH - span + 1)) if rng else 0)
        return _stack([read_image(folder / f"im{first + o}.png") for o in offsets], str(folder))


# --- Vid4-style frame folders ---------------------------------------------------------


@dataclass(frozen=True)
class _Window:
    clip: int
    start: int


class FrameFolderClips:
    """Windows of ``length`` consecutive frames from ``ROOT/<clip>/*.png`` (Vid4 layout).

    Frames sort naturally by name. If ``ROOT`` itself holds images it is one
    clip. Windows start every ``stride`` frames; clips shorter than
    ``length`` are skipped.
    """

    def __init__(
        self,
        root: Path | str,
        *,
        length: int = CLIP_LENGTH,
        stride: int = 1,
        clips: Sequence[str] | None = None,
    ) -> None:
        if length < 1 or stride < 1:
            raise ValueError(f"length and stride must be >= 1, got {length}, {stride}")
        self.root = Path(root)
        self.length = length
        if not self.root.is_dir():
            raise InputError(f"frame folder not found: {self.root}")
        folders = (
            [self.root]
            if _images_in(self.root)
            else sorted((p for p in self.root.iterdir() if p.is_dir()), key=_natural_key)
        )
        if clips is not None:
            wanted = set(clips)
            unknown = sorted(wanted - {f.name for f in folders})
            if unknown:
                raise InputError(f"clips {unknown} not found under {self.root}")
            folders = [f for f in folders if f.name in wanted]
        self.clip_names: list[str] = []
        self.frames: list[list[Path]] = []
        self.windows: list[_Window] = []
        for folder in folders:
            frames = _images_in(folder)
            if len(frames) < length:
                continue
            k = len(self.frames)
            self.clip_names.append(folder.name)
            self.frames.append(frames)
            self.windows += [_Window(k, s) for s in range(0, len(frames) - length + 1, stride)]
        if not self.windows:
            raise InputError(f"no clip of at least {length} frames under {self.root}")

    def __len__(self) -> int:
        return len(self.windows)

    def __repr__(self) -> str:
        return (
            f"FrameFolderClips({str(self.root)!r}, {len(self.frames)} clips, {len(self)} windows)"
        )

    def clip(self, index: int, rng: np.random.Generator | None = None) -> np.ndarray:
        w = self.windows[_check_index(index, len(self), "frame-folder")]
        paths = self.frames[w.clip][w.start : w.start + self.length]
        return _stack([read_image(p) for p in paths], str(paths[0].parent))

    def span(self, index: int) -> int:
        return len(self.frames[self.windows[_check_index(index, len(self), "frame-folder")].clip])

    def frames_at(
        self, index: int, offsets: Sequence[int], rng: np.random.Generator | None = None
    ) -> np.ndarray:
        """The frames at ``offsets`` of a span around window ``index`` (only those are read)."""
        w = self.windows[_check_index(index, len(self), "frame-folder")]
        frames, offsets = self.frames[w.clip], _check_offsets(offsets)
        where = str(frames[0].parent)
        first = span_start(w.start, len(frames), self.length, offsets[-1] + 1, where)
        return _stack([read_image(frames[first + o]) for o in offsets], where)


def _images_in(folder: Path) -> list[Path]:
    files = [p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
    return sorted(files, key=_natural_key)


# --- folders of video files -----------------------------------------------------------


@dataclass
class _VideoInfo:
    path: Path
    pts: list[int]  # presentation timestamps of the frames in use, in order
    first: int  # index in the file of pts[0]
    width: int  # size after HR down-scaling
    height: int


class VideoFolderClips:
    """Windows of ``length`` consecutive frames from every video file under ``root``.

    ``root`` is a video file or a folder searched recursively. Frames are
    decoded with PyAV per window: a seek to the key frame before the window,
    then decoding up to its last frame, never the whole video per sample.
    Frame timestamps are read once up front by demuxing (no decoding).

    Args:
        frames: ``(start, stop)`` slice of each video's frames to use
            (Python semantics, negatives count from the end); e.g. ``(0, 100)``
            to train on the start of a clip and ``(110, None)`` to validate
            on its end.
        hr_scale: down-scale the decoded frames by this factor first
            (area averaging, sizes rounded to multiples of 4); 0.5 turns
            1280x720 into 640x360, which keeps CPU training affordable and
            removes compression noise from the HR targets.
        cache_mb: videos whose used frames (after ``hr_scale``) fit in this
            many MB in all are decoded once, on first use, and kept in memory
            (per process: each data-loader worker keeps its own copy); the
            rest are decoded window by window. 0 disables the cache.
        stride: windows start every ``stride`` frames.
    """

    def __init__(
        self,
        root: Path | str | Sequence[Path | str],
        *,
        length: int = CLIP_LENGTH,
        stride: int = 1,
        frames: tuple[int | None, int | None] | None = None,
        hr_scale: float = 1.0,
        cache_mb: float = 512.0,
    ) -> None:
        if length < 1 or stride < 1:
            raise ValueError(f"length and stride must be >= 1, got {length}, {stride}")
        if not 0 < hr_scale <= 1:
            raise ValueError(f"hr_scale must be in (0, 1], got {hr_scale}")
        self.length = length
        self.hr_scale = hr_scale
        paths = _video_files(root)
        self.videos: list[_VideoInfo] = []
        self.windows: list[_Window] = []
        for path in paths:
            info = _probe(path, frames, hr_scale)
            if len(info.pts) < length:
                continue
            k = len(self.videos)
            self.videos.append(info)
            self.windows += [_Window(k, s) for s in range(0, len(info.pts) - length + 1, stride)]
        if not self.windows:
            raise InputError(f"no video of at least {length} frames (in range {frames}) in {root}")
        budget = cache_mb * 2**20
        self._cacheable: set[int] = set()
        for k, v in enumerate(self.videos):
            size = len(v.pts) * v.width * v.height * 3
            if size <= budget:
                self._cacheable.add(k)
                budget -= size
        self._cache: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.windows)

    def __repr__(self) -> str:
        return f"VideoFolderClips({len(self.videos)} videos, {len(self)} windows)"

    def __getstate__(self) -> dict[str, object]:
        # Data-loader workers build their own caches; never ship decoded frames to them.
        return {**self.__dict__, "_cache": {}}

    def clip(self, index: int, rng: np.random.Generator | None = None) -> np.ndarray:
        w = self.windows[_check_index(index, len(self), "video")]
        if w.clip in self._cacheable:
            if w.clip not in self._cache:
                info = self.videos[w.clip]
                self._cache[w.clip] = decode_frames(info, 0, len(info.pts))
            return self._cache[w.clip][w.start : w.start + self.length].copy()
        return decode_frames(self.videos[w.clip], w.start, self.length)

    def span(self, index: int) -> int:
        return len(self.videos[self.windows[_check_index(index, len(self), "video")].clip].pts)

    def frames_at(
        self, index: int, offsets: Sequence[int], rng: np.random.Generator | None = None
    ) -> np.ndarray:
        """The frames at ``offsets`` of a span around window ``index``: the span is decoded,
        only these frames are converted to RGB (or taken from the cache)."""
        w = self.windows[_check_index(index, len(self), "video")]
        info, offsets = self.videos[w.clip], _check_offsets(offsets)
        span = offsets[-1] + 1
        first = span_start(w.start, len(info.pts), self.length, span, str(info.path))
        if w.clip in self._cacheable:
            if w.clip not in self._cache:
                self._cache[w.clip] = decode_frames(info, 0, len(info.pts))
            return self._cache[w.clip][[first + o for o in offsets]]
        return decode_frames(info, first, span, keep=offsets)


def _video_files(root: Path | str | Sequence[Path | str]) -> list[Path]:
    if isinstance(root, (str, Path)):
        root = [root]
    files: list[Path] = []
    for item in map(Path, root):
        if item.is_file():
            files.append(item)
        elif item.is_dir():
            found = sorted(p for p in item.rglob("*") if p.suffix.lower() in VIDEO_SUFFIXES)
            files += [p for p in found if p.is_file()]
        else:
            raise InputError(f"video file or folder not found: {item}")
    if not files:
        raise InputError(f"no video files ({', '.join(VIDEO_SUFFIXES)}) in {list(map(str, root))}")
    return files


def _scaled_size(width: int, height: int, scale: float) -> tuple[int, int]:
    if scale == 1:
        return width, height
    return max(4, round(width * scale / 4) * 4), max(4, round(height * scale / 4) * 4)


def _open(path: Path):  # -> av.container.InputContainer
    import av

    try:
        return av.open(str(path))
    except (av.error.FFmpegError, OSError) as exc:
        raise InputError(f"cannot open video {path}: {exc}") from exc


def _probe(path: Path, frames: tuple[int | None, int | None] | None, hr_scale: float) -> _VideoInfo:
    """Frame timestamps (demuxed, not decoded) and the HR size of one video."""
    import av

    with _open(path) as container:
        if not container.streams.video:
            raise InputError(f"{path} has no video stream")
        stream = container.streams.video[0]
        try:
            pts = sorted(p.pts for p in container.demux(stream) if p.pts is not None and p.size)
        except av.error.FFmpegError as exc:
            raise InputError(f"cannot read video {path}: {exc}") from exc
        width, height = stream.codec_context.width, stream.codec_context.height
    if not pts:
        raise InputError(f"{path}: no frame timestamps (unsupported container)")
    start, stop, _ = slice(*(frames or (None, None))).indices(len(pts))
    w, h = _scaled_size(width, height, hr_scale)
    return _VideoInfo(path, pts[start:stop], start, w, h)


def decode_frames(
    info: _VideoInfo, start: int, count: int, *, keep: Sequence[int] | None = None
) -> np.ndarray:
    """Frames ``start .. start+count-1`` (of those in use) as uint8 (count, H, W, 3).

    Seeks to the key frame at or before the first one, decodes forward and
    keeps the frames whose timestamps are wanted. ``keep``: only the frames at
    these positions of the ``count`` are converted to RGB and returned, in order.
    """
    import av

    wanted = info.pts[start : start + count]
    if len(wanted) != count:
        raise IndexError(f"frames {start}..{start + count - 1} out of range in {info.path}")
    kept = set(range(count) if keep is None else keep)
    count = max(kept) + 1  # nothing after the last kept frame is decoded
    seen = 0
    out: list[np.ndarray] = []
    with _open(info.path) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        try:
            container.seek(wanted[0], stream=stream, backward=True, any_frame=False)
            for frame in container.decode(stream):
                if frame.pts is None or frame.pts < wanted[0]:
                    continue
                if seen in kept:
                    out.append(_to_rgb(frame, info))
                seen += 1
                if seen == count:
                    break
        except av.error.FFmpegError as exc:
            raise InputError(f"cannot decode {info.path}: {exc}") from exc
    if seen != count:
        raise InputError(
            f"{info.path}: decoded {seen} of {count} frames from timestamp {wanted[0]} "
            f"({Fraction(wanted[0]) * stream.time_base} s)"
        )
    return np.stack(out)


def _to_rgb(frame, info: _VideoInfo) -> np.ndarray:  # frame: av.VideoFrame
    if (frame.width, frame.height) == (info.width, info.height):
        return frame.to_ndarray(format="rgb24")
    # Area averaging: the right anti-aliasing for a pure down-scale of the HR source.
    return frame.reformat(
        width=info.width, height=info.height, format="rgb24", interpolation="AREA"
    ).to_ndarray()


# --- combining sources ----------------------------------------------------------------
