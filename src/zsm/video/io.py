"""Reading video: probe metadata, decode to RGB uint8 frames; image folders in and out.

Frames are ``(H, W, 3)`` uint8 RGB arrays, already turned upright: a rotated
input (display matrix in the container) is rotated in pixels here, so every
later stage sees the picture as a player would show it.
"""

from __future__ import annotations

import logging
import re
import struct
from collections.abc import Collection, Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np

from zsm.atomic import describe_os_error
from zsm.errors import InputError, OutputError
from zsm.video.rate import CHECKED_FRAMES, stream_rate

log = logging.getLogger("zsm")

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"})
VIDEO_EXTENSIONS = frozenset(
    {".mp4", ".m4v", ".mkv", ".webm", ".avi", ".mov", ".ts", ".mts", ".m2ts", ".mpg", ".mpeg"}
    | {".flv", ".wmv", ".ogv", ".3gp", ".y4m", ".gif", ".nut"}
)
DEFAULT_FOLDER_FPS = Fraction(25)


def natural_key(name: str) -> tuple[object, ...]:
    """Sort key putting ``2.png`` before ``10.png``."""
    return tuple(int(p) if p.isdigit() else p.lower() for p in re.split(r"(\d+)", name))


# --- orientation ------------------------------------------------------------------------


@dataclass(frozen=True)
class Orientation:
    """The pixel transform a display matrix asks for: optional transpose, then flips."""

    transpose: bool = False
    flip_x: bool = False  # mirror columns (after the transpose)
    flip_y: bool = False  # mirror rows (after the transpose)

    @classmethod
    def from_matrix(cls, m: tuple[int, ...]) -> Orientation:
        """From FFmpeg's 3x3 display matrix (row-major, 16.16 fixed point).

        A source pixel (x, y) is shown at (a*x + c*y, b*x + d*y) with
        ``a, b, c, d = m[0], m[1], m[3], m[4]``; only multiples of 90 degrees
        (and mirrors) exist in practice, so each entry is -1, 0 or 1 in sign.
        """
        a, b, c, d = m[0], m[1], m[3], m[4]
        if abs(a) + abs(d) >= abs(b) + abs(c):  # no transpose: x' = a*x, y' = d*y
            return cls(transpose=False, flip_x=a < 0, flip_y=d < 0)
        return cls(transpose=True, flip_x=c < 0, flip_y=b < 0)  # x' = c*y, y' = b*x

    @property
    def identity(self) -> bool:
        return not (self.transpose or self.flip_x or self.flip_y)

    def apply(self, a: np.ndarray) -> np.ndarray:
        """Apply to an (H, W, C) array; returns a contiguous array."""
        if self.identity:
            return a
        if self.transpose:
            a = a.transpose(1, 0, 2)
        if self.flip_x:
            a = a[:, ::-1]
        if self.flip_y:
            a = a[::-1]
        return np.ascontiguousarray(a)

    def size(self, width: int, height: int) -> tuple[int, int]:
        """Displayed (width, height) of a coded width x height picture."""
        return (height, width) if self.transpose else (width, height)


def _frame_orientation(frame: av.VideoFrame) -> Orientation:
    for sd in frame.side_data:
        if str(sd.type).endswith("DISPLAYMATRIX"):
            data = bytes(sd)
            if len(data) >= 36:
                return Orientation.from_matrix(struct.unpack("<9i", data[:36]))
    return Orientation()


# --- metadata ---------------------------------------------------------------------------


@dataclass(frozen=True)
class StreamInfo:
    """An audio or subtitle stream of the input."""

    index: int
    type: str
    codec: str
    duration: float | None


@dataclass(frozen=True)
class VideoInfo:
    """What the pipeline needs to know about an input before decoding it.

    ``width``/``height`` are as displayed (after rotation). ``frame_count`` is
    exact when ``frame_count_exact`` (image folders, containers that store it),
    otherwise estimated from the duration; the pipeline never relies on it
    for correctness, only for the progress bar.
    """

    path: Path
    is_folder: bool
    width: int
    height: int
    fps: Fraction
    frame_count: int | None
    frame_count_exact: bool
    pix_fmt: str
    orientation: Orientation = Orientation()
    rotation: int = 0  # degrees counterclockwise, as VideoFrame.rotation reports it
    has_alpha: bool = False
    duration: float | None = None
    start_time: float = 0.0  # time of the first video frame, seconds
    audio: tuple[StreamInfo, ...] = ()
    subtitles: tuple[StreamInfo, ...] = ()
    images: tuple[Path, ...] = field(default=(), repr=False)  # folder inputs only


def open_container(path: Path) -> av.container.InputContainer:
    """Open a media file for reading; errors become one-line :class:`InputError`."""
    if not path.exists():
        raise InputError(f"input not found: {path}")
    if not path.is_file():
        raise InputError(f"input is not a file: {path}")
    try:
        return av.open(str(path), mode="r", metadata_errors="ignore")
    except PermissionError as exc:
        raise InputError(f"cannot read {path}: permission denied") from exc
    except (av.FFmpegError, OSError, ValueError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read {path}: not a video PyAV can decode ({_why(exc)})") from exc


def _why(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    # PyAV messages end with ": '<path>'"; the caller names the path already.
    return re.sub(r":\s*'[^']*'$", "", text)


def probe(path: Path | str, *, fps: Fraction | float | None = None) -> VideoInfo:
    """Metadata of a video file or an image folder (``fps`` applies to folders only)."""
    path = Path(path)
    if path.is_dir():
        return _probe_folder(path, Fraction(fps) if fps else DEFAULT_FOLDER_FPS)
    with open_container(path) as container:
        if not container.streams.video:
            raise InputError(f"{path} has no video stream")
        if _is_still_image(container):
            raise InputError(
                f"{path} is a still image ({container.format.name}), no video stream; "
                "to upscale image frames, pass the folder that holds them"
            )
        stream = container.streams.video[0]
        first, pts = _first_frames(container, stream, path)
        orient = _frame_orientation(first)
        rate, broken = stream_rate(stream, pts, path.name)
        exact = bool(stream.frames and stream.frames > 0)
        duration = _duration(container, stream)
        if broken:  # the duration is made of the same timestamps
            duration = int(stream.frames) / rate if exact else None
        count = int(stream.frames) if exact else (round(duration * rate) if duration else None)
        width, height = orient.size(first.width, first.height)
        src_fmt = stream.codec_context.pix_fmt or first.format.name
        return VideoInfo(
            path=path,
            is_folder=False,
            width=width,
            height=height,
            fps=rate,
            frame_count=count,
            frame_count_exact=exact,
            pix_fmt=src_fmt,
            orientation=orient,
            rotation=int(first.rotation),
            # WebM marks VP8/VP9 alpha in metadata; FFmpeg's decoders drop the alpha plane.
            has_alpha=_has_alpha(src_fmt) or stream.metadata.get("alpha_mode") == "1",
            duration=duration,
            start_time=float(first.time or 0.0),
            audio=tuple(_stream_info(s) for s in container.streams.audio),
            subtitles=tuple(_stream_info(s) for s in container.streams.subtitles),
        )


def _is_still_image(container: av.container.InputContainer) -> bool:
    """FFmpeg's single-image demuxers (``png_pipe``, ``jpeg_pipe``, ..., ``image2``)."""
    name = container.format.name
    return name == "image2" or name.endswith("_pipe")


def _first_frames(
    container: av.container.InputContainer, stream: av.video.VideoStream, path: Path
) -> tuple[av.VideoFrame, list[int | None]]:
    """The first decoded frame, and the pts of the first :data:`CHECKED_FRAMES`."""
    first: av.VideoFrame | None = None
    pts: list[int | None] = []
    try:
        for frame in container.decode(stream):
            first = first or frame
            pts.append(frame.pts)
            if len(pts) == CHECKED_FRAMES:
                break
    except (av.FFmpegError, ValueError) as exc:
        if first is None:
            raise InputError(f"cannot decode {path}: {_why(exc)}") from exc
        # A later frame fails: decoding the clip says so, with its frame number.
    if first is None:
        raise InputError(f"{path} has a video stream but no decodable frames")
    return first, pts


def _duration(container: av.container.InputContainer, stream: av.video.VideoStream) -> float | None:
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    if container.duration:
        return container.duration / 1_000_000
    return None


def _stream_info(s: av.stream.Stream) -> StreamInfo:
    dur = float(s.duration * s.time_base) if s.duration and s.time_base else None
    name = s.codec_context.name if s.codec_context is not None else "unknown"
    return StreamInfo(index=s.index, type=s.type, codec=name, duration=dur)


def _has_alpha(pix_fmt: str) -> bool:
    try:
        return any(c.is_alpha for c in av.VideoFormat(pix_fmt).components)
    except (ValueError, av.FFmpegError):
        return False


def _probe_folder(path: Path, fps: Fraction) -> VideoInfo:
    images = list_images(path)
    if not images:
        raise InputError(f"folder {path} holds no images ({', '.join(sorted(IMAGE_EXTENSIONS))})")
    first = read_image(images[0])
    h, w = first.shape[:2]
    return VideoInfo(
        path=path,
        is_folder=True,
        width=w,
        height=h,
        fps=fps,
        frame_count=len(images),
        frame_count_exact=True,
        pix_fmt="rgb24",
        duration=len(images) / fps,
        images=tuple(images),
    )


def _list_files(folder: Path, extensions: Collection[str]) -> list[Path]:
    """Files of ``folder`` whose extension is in ``extensions``, in natural order."""
    try:
        entries = list(folder.iterdir())
    except OSError as exc:
        raise InputError(f"cannot list {folder}: {exc.strerror or exc}") from exc
    files = [p for p in entries if p.is_file() and p.suffix.lower() in extensions]
    return sorted(files, key=lambda p: natural_key(p.name))


def list_images(folder: Path) -> list[Path]:
    """Image files of ``folder`` in natural order (``2.png`` before ``10.png``)."""
    return _list_files(folder, IMAGE_EXTENSIONS)


def list_videos(folder: Path) -> list[Path]:
    """Video files of ``folder`` (by extension) in natural order."""
    return _list_files(folder, VIDEO_EXTENSIONS)


# --- decoding ---------------------------------------------------------------------------


def iter_frames(info: VideoInfo, *, skip: int = 0) -> Iterator[np.ndarray | None]:
    """Decode every frame of ``info.path`` as upright (H, W, 3) uint8 RGB.

    The first ``skip`` frames are decoded but not converted and come out as
    ``None`` (cheap fast-forward when resuming). Alpha is dropped (warned once).
    """
    if info.has_alpha:
        log.warning(
            "zsm: %s has an alpha channel (%s); it is dropped", info.path.name, info.pix_fmt
        )
    if info.is_folder:
        yield from _iter_images(info, skip)
    else:
        yield from _iter_video(info, skip)


def count_frames(info: VideoInfo) -> int:
    """Frames of ``info``: exact for folders and containers that state it, otherwise
    counted from the video packets (read, not decoded)."""
    if info.is_folder:
        return len(info.images)
    if info.frame_count_exact and info.frame_count is not None:
        return info.frame_count
    with open_container(info.path) as container:
        stream = container.streams.video[0]
        try:
            return sum(1 for pkt in container.demux(stream) if pkt.size)
        except (av.FFmpegError, ValueError) as exc:
            raise InputError(f"cannot read {info.path}: {_why(exc)}") from exc


def _iter_video(info: VideoInfo, skip: int) -> Iterator[np.ndarray | None]:
    count = 0
    with open_container(info.path) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        try:
            for frame in container.decode(stream):
                if count < skip:
                    count += 1
                    yield None
                    continue
                yield _to_rgb(frame, info)
                count += 1
        except (av.FFmpegError, ValueError) as exc:
            raise InputError(
                f"cannot decode {info.path} after {count} frames: {_why(exc)}"
            ) from exc


def _to_rgb(frame: av.VideoFrame, info: VideoInfo) -> np.ndarray:
    kwargs = {}
    if frame.color_range:  # full-range (JPEG) sources would otherwise be stretched
        kwargs["src_color_range"] = frame.color_range
    rgb = frame.to_ndarray(format="rgb24", **kwargs)
    out = info.orientation.apply(rgb)
    if out.shape[:2] != (info.height, info.width):
        raise InputError(
            f"{info.path}: frame size changes mid-stream ({out.shape[1]}x{out.shape[0]}, "
            f"first frame {info.width}x{info.height}); not supported"
        )
    return out


def _iter_images(info: VideoInfo, skip: int) -> Iterator[np.ndarray | None]:
    for k, p in enumerate(info.images):
        if k < skip:
            yield None
            continue
        img = read_image(p)
        if img.shape[:2] != (info.height, info.width):
            raise InputError(
                f"{p}: {img.shape[1]}x{img.shape[0]} differs from the first image "
                f"({info.width}x{info.height}); all frames must have one size"
            )
        yield img


def read_image(path: Path) -> np.ndarray:
    """An image file as (H, W, 3) uint8 RGB (16-bit scaled down, alpha dropped with a warning)."""
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror or exc}") from exc
    img = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    if img is None:
        raise InputError(f"cannot read {path}: not a decodable image")
    if img.dtype == np.uint16:
        img = (img >> 8).astype(np.uint8)
    elif img.dtype != np.uint8:
        img = np.clip(img, 0, 255).astype(np.uint8)
    if img.ndim == 2:
        return np.repeat(img[:, :, None], 3, axis=2)
    if img.shape[2] == 4:
        log.warning("zsm: %s has an alpha channel; it is dropped", path.name)
        img = img[:, :, :3]
    return np.ascontiguousarray(img[:, :, ::-1])  # BGR -> RGB


def write_png(path: Path, rgb: np.ndarray) -> None:
    """Write an (H, W, 3) uint8 RGB frame as PNG (fast compression)."""
    ok, buf = cv2.imencode(".png", rgb[:, :, ::-1], [cv2.IMWRITE_PNG_COMPRESSION, 3])
    if not ok:
        raise OutputError(f"cannot encode PNG frame {path}")
    try:
        buf.tofile(path)
    except OSError as exc:
        raise OutputError(describe_os_error(exc, path)) from exc


def frame_name(index: int) -> str:
    """File name of output frame ``index`` (0-based): ``00000001.png`` for the first."""
    return f"{index + 1:08d}.png"


FRAME_NAME = re.compile(r"^\d{8}\.png$")
