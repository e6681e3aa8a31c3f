"""Encoding RGB frames: container and codec choice, and a video-only stream writer.

H.264 (``libx264``, ``yuv420p``, ``--crf``) by default; WebM gets VP9. When an
encoder is missing from the PyAV build or refused by the container, the
next one in line is used. Frames are converted to BT.709 limited range and
tagged so, the usual convention for HD video that players assume.
"""

from __future__ import annotations

import contextlib
import io
import logging
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from av.video.reformatter import ColorRange, Colorspace

from zsm.atomic import describe_os_error
from zsm.errors import OutputError

log = logging.getLogger("zsm")

DEFAULT_CRF = 18

# Output extension -> FFmpeg muxer.
CONTAINERS = {
    ".mp4": "mp4",
    ".m4v": "mp4",
    ".mov": "mov",
    ".mkv": "matroska",
    ".webm": "webm",
    ".avi": "avi",
    ".ts": "mpegts",
    ".m2ts": "mpegts",
    ".nut": "nut",
}

_H264_FIRST = ("libx264", "h264", "libopenh264", "libx265", "mpeg4")
_PREFERRED = {"webm": ("libvpx-vp9", "libvpx", "libsvtav1", "libaom-av1")}

_BT709 = 1  # AVCOL_SPC_BT709 == AVCOL_PRI_BT709 == AVCOL_TRC_BT709
_TV_RANGE = 1  # AVCOL_RANGE_MPEG


def container_format(path: Path) -> str:
    """The FFmpeg muxer for an output file name (by extension)."""
    fmt = CONTAINERS.get(path.suffix.lower())
    if fmt is None:
        known = ", ".join(sorted(CONTAINERS))
        raise OutputError(
            f"cannot write {path.name}: unknown video extension {path.suffix or '(none)'!r} "
            f"(use {known}, or end OUTPUT with / for PNG frames)"
        )
    return fmt


def supports(fmt: str, codec: str) -> bool:
    """Whether muxer ``fmt`` accepts an encoder named ``codec`` (and the encoder exists)."""
    try:
        av.Codec(codec, "w")
    except (av.FFmpegError, ValueError):
        return False
    with av.open(io.BytesIO(), mode="w", format=fmt) as probe:
        try:
            probe.add_stream(codec)
        except (ValueError, av.FFmpegError):
            return False
    return True


def choose_codec(fmt: str, requested: str | None = None) -> str:
    """The video encoder to use for muxer ``fmt`` (``requested`` must then exist and fit)."""
    if requested:
        try:
            codec = av.Codec(requested, "w")
        except (av.FFmpegError, ValueError):
            raise OutputError(f"unknown video encoder {requested!r} in this PyAV build") from None
        if codec.type != "video":
            raise OutputError(f"{requested!r} is a {codec.type} encoder, not a video one")
        if not supports(fmt, requested):
            raise OutputError(f"the {fmt} container cannot hold {requested!r} video")
        return requested
    candidates = _PREFERRED.get(fmt, _H264_FIRST)
    for name in candidates:
        if supports(fmt, name):
            if name != candidates[0]:
                log.warning("zsm: %s encoder not available; encoding with %s", candidates[0], name)
            return name
    raise OutputError(f"no video encoder for the {fmt} container in this PyAV build")


def segment_format(codec: str) -> str:
    """Container for intermediate segments: MP4 (exact decode timestamps) when it fits."""
    return "mp4" if supports("mp4", codec) else "matroska"


# Above this many output pixels, x264/x265 look ahead 10 frames instead of 40: at 5120x2880
# their frames in flight take ~2.5 GB by default, ~1.2 GB so (a little less compression).
LARGE_FRAME = 1920 * 1088


def _options(codec: str, crf: int, pixels: int = 0) -> dict[str, str]:
    if codec in ("libx264", "libx265", "h264"):
        options = {"crf": str(crf), "preset": "medium"}
        if pixels > LARGE_FRAME:
            params = "x265-params" if codec == "libx265" else "x264-params"
            options[params] = "rc-lookahead=10"
        return options
    if codec in ("libvpx-vp9", "libaom-av1"):
        return {"crf": str(crf), "b": "0", "row-mt": "1", "cpu-used": "4"}
    if codec == "libvpx":
        return {"crf": str(crf), "b": "20M"}
    if codec == "libsvtav1":
        return {"crf": str(crf), "preset": "8"}
    return {}


@dataclass(frozen=True)
class EncodeSettings:
    """How the video stream is encoded."""

    codec: str
    fps: Fraction
    width: int
    height: int
    crf: int = DEFAULT_CRF
    threads: int | None = None


class VideoWriter:
    """Writes (H, W, 3) uint8 RGB frames to a video-only file at a constant ``fps``.

    Timestamps are frame indices in a ``1/fps`` time base, starting at 0.
    Use as a context manager; on error the file is left for the caller to delete.
    """

    def __init__(self, path: Path, settings: EncodeSettings, *, fmt: str | None = None) -> None:
        self.path = path
        self.settings = s = settings
        self.frames = 0
        try:
            self.container = av.open(str(path), mode="w", format=fmt)
        except (av.FFmpegError, OSError) as exc:
            raise OutputError(
                describe_os_error(exc, path)
                if isinstance(exc, OSError)
                else f"cannot write {path}: {exc}"
            ) from exc
        try:
            options = _options(s.codec, s.crf, s.width * s.height)
            self.stream = st = self.container.add_stream(s.codec, rate=s.fps, options=options)
            st.width, st.height = s.width, s.height
            formats = [f.name for f in (av.Codec(s.codec, "w").video_formats or [])]
            st.pix_fmt = "yuv420p" if not formats or "yuv420p" in formats else formats[0]
            # Kept here: once the header is written, the muxer may change the stream's
            # time base (MP4: 1/12800), while frames are stamped in 1/fps.
            self.time_base = Fraction(1) / s.fps
            st.time_base = self.time_base
            ctx = st.codec_context
            ctx.colorspace = ctx.color_primaries = ctx.color_trc = _BT709
            ctx.color_range = _TV_RANGE
            if s.codec == "mpeg4":  # no CRF: a generous bitrate instead
                ctx.bit_rate = int(0.25 * s.width * s.height * float(s.fps))
            if s.threads:
                ctx.thread_count = s.threads
            ctx.open()  # now, not at the first frame: an encoder may refuse these settings
        except av.FFmpegError as exc:
            self.container.close()
            raise OutputError(
                f"the {s.codec} encoder refuses {s.width}x{s.height} {st.pix_fmt} video "
                f"({exc}); choose another --codec"
            ) from exc
        except BaseException:
            self.container.close()
            raise

    def write(self, rgb: np.ndarray) -> None:
        s = self.settings
        if rgb.shape != (s.height, s.width, 3) or rgb.dtype != np.uint8:
            raise ValueError(
                f"expected a ({s.height}, {s.width}, 3) uint8 frame, got {rgb.shape} {rgb.dtype}"
            )
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
        frame = frame.reformat(
            format=self.stream.pix_fmt,
            dst_colorspace=Colorspace.ITU709,
            dst_color_range=ColorRange.MPEG,
        )
        frame.pts = self.frames
        frame.time_base = self.time_base
        self._mux(self.stream.encode(frame))
        self.frames += 1

    def _mux(self, packets: list[av.Packet]) -> None:
        try:
            self.container.mux(packets)
        except OSError as exc:
            raise OutputError(describe_os_error(exc, self.path)) from exc

    def close(self) -> None:
        """Flush the encoder and finish the file."""
        try:
            self._mux(self.stream.encode(None))
        finally:
            self.container.close()

    def abort(self) -> None:
        """Close without flushing (the file is incomplete)."""
        with contextlib.suppress(av.FFmpegError, OSError):
            self.container.close()

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, exc_type: object, *_: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
