"""Final assembly: join encoded video segments and carry the input's audio and subtitles.

Video packets are copied from the segments (no re-encode) with timestamps
rebuilt from frame indices; audio and subtitle packets are copied from the
input when the output container can hold their codec, audio is re-encoded
(AAC, or Opus for WebM) when it cannot, and a subtitle it cannot hold is
dropped with a warning. Packets are interleaved by time as they are read,
so memory stays bounded however long the video.
"""

from __future__ import annotations

import contextlib
import heapq
import io
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
from av.bitstream import BitStreamFilterContext

from zsm.atomic import describe_os_error
from zsm.errors import InputError, OutputError

log = logging.getLogger("zsm")

_AUDIO_FALLBACKS = ("aac", "libopus", "libmp3lame", "flac")


@dataclass(frozen=True)
class SegmentFile:
    """An encoded video-only segment: output frames ``[first_frame, first_frame + frames)``."""

    path: Path
    first_frame: int
    frames: int


def _fits(fmt: str, template: av.stream.Stream) -> bool:
    """Whether muxer ``fmt`` accepts a stream copied from ``template`` (header test in memory)."""
    try:
        with av.open(io.BytesIO(), mode="w", format=fmt) as probe:
            probe.add_stream_from_template(template)
            probe.start_encoding()
    except (ValueError, av.FFmpegError, OSError):
        return False
    return True


def _audio_encoder(fmt: str) -> str | None:
    from zsm.video.encode import supports

    return next((c for c in _AUDIO_FALLBACKS if supports(fmt, c)), None)


@dataclass
class _Carried:
    """How one input stream reaches the output."""

    source: av.stream.Stream
    target: av.stream.Stream
    encode: bool  # decode + re-encode (audio only) instead of copying packets


def join(
    segments: Sequence[SegmentFile],
    output: Path,
    *,
    fmt: str,
    fps: Fraction,
    source: Path | None = None,
    video_start: float = 0.0,
    end_time: float | None = None,
) -> None:
    """Write ``output`` (muxer ``fmt``): the segments' video at ``fps`` plus ``source``'s
    audio and subtitle streams (packets at or after ``end_time`` seconds are cut)."""
    if not segments:
        raise ValueError("no segments to join")
    try:
        out = av.open(str(output), mode="w", format=fmt)
    except OSError as exc:
        raise OutputError(describe_os_error(exc, output)) from exc
    src = None
    try:
        with av.open(str(segments[0].path)) as first:
            template = first.streams.video[0]
            vstream = out.add_stream_from_template(template)
            vstream.time_base = Fraction(1) / fps
            vstream.codec_context.framerate = fps
            bsf = _annexb_filter(fmt, template, vstream)
        carried: list[_Carried] = []
        if source is not None and source.is_file():
            src = av.open(str(source), metadata_errors="ignore")
            carried = _plan_streams(src, out, fmt, source)
        offset = round(video_start * fps)
        packets = heapq.merge(
            _video_packets(segments, vstream, fps, offset, bsf),
            _carried_packets(src, carried, end_time) if src is not None else iter(()),
            key=lambda item: item[0],
        )
        for _, pkt in packets:
            out.mux(pkt)
        for c in carried:
            if c.encode:
                out.mux(c.target.encode(None))
        out.close()
    except OSError as exc:
        out.close()
        raise OutputError(describe_os_error(exc, output)) from exc
    except BaseException:
        with contextlib.suppress(av.FFmpegError, OSError):
            out.close()
        raise
    finally:
        if src is not None:
            src.close()


def _plan_streams(
    src: av.container.InputContainer, out: av.container.OutputContainer, fmt: str, source: Path
) -> list[_Carried]:
    carried = []
    for s in (*src.streams.audio, *src.streams.subtitles):
        if s.codec_context is None:
            continue
        if _fits(fmt, s):
            carried.append(_Carried(s, out.add_stream_from_template(s), encode=False))
            continue
        name = s.codec_context.name
        if s.type == "audio":
            encoder = _audio_encoder(fmt)
            if encoder is None:
                log.warning(
                    "zsm: audio stream #%d (%s) cannot be stored in %s; dropped", s.index, name, fmt
                )
                continue
            target = out.add_stream(encoder, rate=s.codec_context.sample_rate or 48000)
            target.layout = s.codec_context.layout
            log.warning(
                "zsm: audio stream #%d (%s) re-encoded to %s for %s", s.index, name, encoder, fmt
            )
            carried.append(_Carried(s, target, encode=True))
        else:
            log.warning(
                "zsm: subtitle stream #%d (%s) cannot be stored in %s; dropped "
                "(use .mkv to keep it)",
                s.index,
                name,
                fmt,
            )
    return carried


def _annexb_filter(
    fmt: str, template: av.stream.Stream, target: av.stream.Stream
) -> BitStreamFilterContext | None:
    """AVI stores H.264/HEVC in Annex B form; the MP4 segments hold it length-prefixed.

    (MPEG-TS converts by itself; AVI needs the bitstream filter done here.)
    """
    name = template.codec_context.name
    if fmt != "avi" or name not in ("h264", "hevc"):
        return None
    return BitStreamFilterContext(f"{name}_mp4toannexb", template, target)


def _video_packets(
    segments: Sequence[SegmentFile],
    stream: av.stream.Stream,
    fps: Fraction,
    offset: int,
    bsf: BitStreamFilterContext | None = None,
) -> Iterator[tuple[float, av.Packet]]:
    """The segments' packets in decode order, timestamps rebuilt in frames.

    Each segment was encoded on its own, so their B-frame delays may differ
    (a short segment may have none); decode timestamps are therefore
    renumbered with the largest delay of all, which keeps them strictly
    increasing across seams and never after the presentation time.
    """
    tb = Fraction(1) / fps
    delay = max(_reorder_delay(seg.path, fps) for seg in segments)
    for seg in segments:
        base = seg.first_frame + offset
        with av.open(str(seg.path)) as container:
            vs = container.streams.video[0]
            decode_index = 0
            for pkt in container.demux(vs):
                if pkt.size == 0 or pkt.pts is None:
                    continue  # demuxer flush packet
                pts = round(pkt.pts * vs.time_base * fps)  # segment time -> frame index
                dts = base + decode_index - delay
                pkt.pts, pkt.dts, pkt.duration = pts + base, dts, 1
                pkt.time_base = tb
                decode_index += 1
                for out in bsf.filter(pkt) if bsf is not None else (pkt,):
                    out.stream = stream
                    out.time_base = tb
                    yield float(dts * tb), out


def _reorder_delay(path: Path, fps: Fraction) -> int:
    """Frames between a segment's first decode and first presentation time (B-frame delay)."""
    with av.open(str(path)) as container:
        vs = container.streams.video[0]
        for pkt in container.demux(vs):
            if pkt.size == 0 or pkt.pts is None:
                continue
            if pkt.dts is None:
                return 0
            return max(0, round((pkt.pts - pkt.dts) * vs.time_base * fps))
    return 0


def _carried_packets(
    src: av.container.InputContainer, carried: list[_Carried], end_time: float | None
) -> Iterator[tuple[float, av.Packet]]:
    if not carried:
        return
    by_index = {c.source.index: c for c in carried}
    try:
        for pkt in src.demux([c.source for c in carried]):
            c = by_index[pkt.stream.index]
            if pkt.pts is None and pkt.dts is None:
                if c.encode:  # flush packet: drain the decoder
                    yield from _reencode(c, None, end_time)
                continue
            t = float((pkt.dts if pkt.dts is not None else pkt.pts) * pkt.time_base)
            if end_time is not None and t >= end_time:
                continue
            if c.encode:
                yield from _reencode(c, pkt, end_time)
            else:
                pkt.stream = c.target
                yield t, pkt
    except (av.FFmpegError, ValueError) as exc:
        raise InputError(f"cannot read the audio/subtitles of {src.name}: {exc}") from exc


def _reencode(
    c: _Carried, pkt: av.Packet | None, end_time: float | None
) -> Iterator[tuple[float, av.Packet]]:
    for frame in c.source.codec_context.decode(pkt):
        if end_time is not None and frame.time is not None and frame.time >= end_time:
            continue
        for out_pkt in c.target.encode(frame):
            t = out_pkt.dts if out_pkt.dts is not None else out_pkt.pts
            yield float((t or 0) * out_pkt.time_base), out_pkt
