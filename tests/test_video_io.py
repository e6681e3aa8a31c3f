"""Decoding, probing, orientation, image folders, encoding and muxing (real files, tiny sizes)."""

from __future__ import annotations

import logging
import math
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from zsm.errors import InputError, OutputError
from zsm.video.encode import EncodeSettings, VideoWriter, choose_codec, container_format
from zsm.video.io import (
    Orientation,
    frame_name,
    iter_frames,
    list_images,
    natural_key,
    probe,
    read_image,
    write_png,
)
from zsm.video.mux import SegmentFile, join


def test_probe_and_decode(video_make_clip) -> None:
    path = video_make_clip(frames=5, width=24, height=16, fps=Fraction(30000, 1001))
    info = probe(path)
    assert (info.width, info.height, info.frame_count) == (24, 16, 5)
    assert info.fps == Fraction(30000, 1001)
    assert info.pix_fmt == "yuv420p" and not info.has_alpha and info.audio == ()
    frames = list(iter_frames(info))
    assert len(frames) == 5
    assert frames[0].shape == (16, 24, 3) and frames[0].dtype == np.uint8
    # Lossy, but the pattern survives: red left third, blue ramp.
    assert frames[0][8, 2, 0] > 180 and frames[0][8, 20, 0] < 60
    assert frames[2][8, 23, 2] > frames[2][8, 9, 2]


def test_skip_yields_placeholders(video_make_clip) -> None:
    info = probe(video_make_clip(frames=4))
    frames = list(iter_frames(info, skip=3))
    assert frames[:3] == [None, None, None] and frames[3].shape == (16, 24, 3)


@pytest.mark.parametrize(
    "codec,pix_fmt,name",
    [
        ("libx264", "yuv420p10le", "ten.mkv"),
        ("ffv1", "gray", "gray.mkv"),
        ("png", "rgba", "alpha.mov"),
        ("libvpx-vp9", "yuv420p", "clip.webm"),
        ("mpeg4", "yuv420p", "clip.avi"),
    ],
)
def test_any_pixel_format_decodes(video_make_clip, caplog, codec, pix_fmt, name) -> None:
    info = probe(video_make_clip(name, frames=3, codec=codec, pix_fmt=pix_fmt))
    with caplog.at_level(logging.WARNING, logger="zsm"):
        frames = list(iter_frames(info))
    assert len(frames) == 3 and all(f.shape == (16, 24, 3) for f in frames)
    assert info.has_alpha == (pix_fmt == "rgba")
    assert ("alpha" in caplog.text) == info.has_alpha
    if pix_fmt == "gray":
        assert np.array_equal(frames[0][..., 0], frames[0][..., 1])


@pytest.mark.parametrize("degrees", [90, 180, -90])
def test_rotation_is_applied(video_make_clip, video_frame_pattern, degrees: int) -> None:
    info = probe(video_make_clip(frames=2, width=32, height=16, rotation=degrees))
    assert (info.rotation - degrees) % 360 == 0
    frame = next(iter_frames(info))
    upright = np.rot90(video_frame_pattern(0, 32, 16), degrees // 90)
    assert (info.height, info.width) == frame.shape[:2] == upright.shape[:2]
    red = upright[..., 0] > 128  # the red third of the coded picture, turned upright
    assert frame[red][:, 0].mean() > 180 and frame[~red][:, 0].mean() < 60


@pytest.mark.parametrize("degrees", [0, 90, 180, -90])
@pytest.mark.parametrize("hflip", [False, True])
def test_orientation_from_display_matrix(degrees: int, hflip: bool) -> None:
    """Matrices built as FFmpeg builds them (PyAV's set_display_rotation: CCW degrees, then
    a mirror) give the pixels np.rot90 then np.fliplr give."""
    r = math.radians(degrees)
    cos, sin = round(math.cos(r)), round(math.sin(r))
    m = [cos, -sin, 0, sin, cos, 0, 0, 0, 1]
    if hflip:  # av_display_matrix_flip negates the first column
        m[0], m[3], m[6] = -m[0], -m[3], -m[6]
    orient = Orientation.from_matrix(tuple(v << 16 for v in m))
    a = np.arange(2 * 3).reshape(2, 3, 1)
    expected = np.rot90(a, degrees // 90)
    if hflip:
        expected = np.fliplr(expected)
    assert np.array_equal(orient.apply(a), expected)
    assert orient.size(3, 2) == expected.shape[1::-1]


def test_image_folder(tmp_path: Path, video_frame_pattern) -> None:
    folder = tmp_path / "frames"
    folder.mkdir()
    for i in (10, 2, 1):
        write_png(folder / f"{i}.png", video_frame_pattern(i, 12, 8))
    (folder / "notes.txt").write_text("not a frame")
    assert [p.name for p in list_images(folder)] == ["1.png", "2.png", "10.png"]
    info = probe(folder, fps=12)
    assert info.is_folder and info.frame_count == 3 and info.fps == 12
    frames = list(iter_frames(info))
    assert np.array_equal(frames[2], video_frame_pattern(10, 12, 8))  # PNG is lossless


def test_image_folder_errors(tmp_path: Path, video_frame_pattern) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="holds no images"):
        probe(empty)
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    write_png(mixed / "1.png", video_frame_pattern(0, 12, 8))
    write_png(mixed / "2.png", video_frame_pattern(0, 8, 8))
    with pytest.raises(InputError, match="differs from the first"):
        list(iter_frames(probe(mixed)))
    (mixed / "3.png").write_bytes(b"garbage")
    with pytest.raises(InputError, match="not a decodable image"):
        read_image(mixed / "3.png")


def test_read_image_variants(tmp_path: Path, caplog) -> None:
    import cv2

    rgba = np.zeros((4, 5, 4), np.uint16)
    rgba[..., 2] = 65535  # BGRA: red
    cv2.imwrite(str(tmp_path / "a.png"), rgba)
    with caplog.at_level(logging.WARNING, logger="zsm"):
        img = read_image(tmp_path / "a.png")
    assert img.shape == (4, 5, 3) and img.dtype == np.uint8 and img[0, 0].tolist() == [255, 0, 0]
    assert "alpha" in caplog.text
    cv2.imwrite(str(tmp_path / "g.png"), np.full((4, 5), 7, np.uint8))
    assert read_image(tmp_path / "g.png")[0, 0].tolist() == [7, 7, 7]


def test_natural_sort_and_names() -> None:
    names = ["f10.png", "f2.png", "F1.png"]
    assert sorted(names, key=natural_key) == ["F1.png", "f2.png", "f10.png"]
    assert frame_name(0) == "00000001.png"


def test_container_and_codec_choice() -> None:
    assert container_format(Path("a.MKV")) == "matroska"
    assert choose_codec("mp4") == "libx264"
    assert choose_codec("webm") == "libvpx-vp9"
    with pytest.raises(OutputError, match="unknown video extension"):
        container_format(Path("a.xyz"))
    with pytest.raises(OutputError, match="unknown video encoder"):
        choose_codec("mp4", "nope264")
    with pytest.raises(OutputError, match="cannot hold"):
        choose_codec("webm", "libx264")


def _write_segments(
    tmp_path: Path, counts: list[int], fps: Fraction, pattern, codec: str = "libx264"
) -> list[SegmentFile]:
    segs, first = [], 0
    for i, n in enumerate(counts):
        path = tmp_path / f"seg{i}.mp4"
        with VideoWriter(path, EncodeSettings(codec, fps, 32, 16), fmt="mp4") as w:
            for k in range(n):
                w.write(pattern(first + k, 32, 16))
        segs.append(SegmentFile(path, first, n))
        first += n
    return segs


@pytest.mark.parametrize("ext", [".mp4", ".mkv", ".mov", ".avi", ".ts"])
def test_join_segments_with_audio(
    tmp_path: Path, video_make_clip, video_frame_pattern, video_audio_seconds, ext: str
) -> None:
    src = video_make_clip(frames=6, audio=True)
    fps = Fraction(50)
    segs = _write_segments(tmp_path, [5, 4, 3], fps, video_frame_pattern)
    out = tmp_path / f"joined{ext}"
    join(segs, out, fmt=container_format(out), fps=fps, source=src)
    info = probe(out)
    assert info.fps == fps and (info.width, info.height) == (32, 16)
    frames = list(iter_frames(info))
    assert len(frames) == 12
    # Each frame is the nearest to the pattern it was made from: in order across the seams.
    patterns = np.stack([video_frame_pattern(k, 32, 16) for k in range(12)]).astype(int)
    nearest = [int(np.abs(patterns - f).sum(axis=(1, 2, 3)).argmin()) for f in frames]
    assert nearest == list(range(12))
    (audio,) = info.audio
    assert audio.codec == "aac"
    assert abs(video_audio_seconds(out) - video_audio_seconds(src)) <= 1 / 25


def test_audio_reencoded_when_container_needs_it(
    tmp_path: Path, video_make_clip, video_frame_pattern, video_audio_seconds, caplog
) -> None:
    src = video_make_clip("pcm.mkv", frames=6, audio=True, audio_codec="pcm_s16le", subtitle=True)
    segs = _write_segments(tmp_path, [12], Fraction(50), video_frame_pattern, "libvpx-vp9")
    out = tmp_path / "out.webm"
    with caplog.at_level(logging.WARNING, logger="zsm"):
        join(segs, out, fmt="webm", fps=Fraction(50), source=src)
    info = probe(out)
    assert [a.codec for a in info.audio] == ["opus"]
    assert "re-encoded" in caplog.text
    assert abs(video_audio_seconds(out) - video_audio_seconds(src)) <= 1 / 25
    # The subtitle stream is copied where the container can hold it.
    mkv = tmp_path / "out.mkv"
    join(segs, mkv, fmt="matroska", fps=Fraction(50), source=src)
    assert len(probe(mkv).subtitles) == 1


def test_writer_timestamps_survive_the_header(tmp_path: Path) -> None:
    """More frames than the encoder's lookahead: the header is written mid-stream (and the
    MP4 muxer changes the stream's time base then); every frame keeps its own timestamp."""
    path = tmp_path / "long.mp4"
    rng = np.random.default_rng(0)
    with VideoWriter(path, EncodeSettings("libx264", Fraction(50), 32, 16), fmt="mp4") as w:
        for _ in range(60):
            w.write(rng.integers(0, 256, (16, 32, 3), dtype=np.uint8))
    with av.open(str(path)) as c:
        times = [f.time for f in c.decode(video=0)]
    assert times == [k / 50 for k in range(60)]


@pytest.mark.parametrize(
    "kind,fps",
    [
        ("zero.mp4", Fraction(25)),
        ("zero.mp4", Fraction(30000, 1001)),
        ("pairs.mkv", Fraction(24)),
        ("raw.h264", Fraction(24)),
    ],
)
def test_broken_timestamps_fall_back_to_the_declared_rate(
    video_broken_clip, caplog, kind: str, fps: Fraction
) -> None:
    path = video_broken_clip(kind, fps=fps)
    with caplog.at_level(logging.WARNING, logger="zsm"):
        info = probe(path)
    assert info.fps == fps
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert path.name in warnings[0] and "timestamps" in warnings[0]
    assert f"{fps} fps" in warnings[0] or f"{float(fps):.3f}" in warnings[0]
    assert info.frame_count in (None, 12)  # never a count made from the broken duration
    assert len(list(iter_frames(info))) == 12


def test_timestamp_problems_and_the_fallback_rate(caplog) -> None:
    from types import SimpleNamespace

    from zsm.video.rate import FALLBACK_RATE, stream_rate, timestamp_problem

    assert timestamp_problem([0, 1, 2, 4]) is None  # variable frame rate is fine
    assert timestamp_problem([-2, -1, 0]) is None and timestamp_problem([7]) is None
    assert timestamp_problem([0, 0, 0]) == "every frame at pts 0"
    assert timestamp_problem([3, 2, 1]) == timestamp_problem([0, 1, 1, 2]) == "not increasing"
    assert timestamp_problem([None, None]) == "none at all"
    assert timestamp_problem([0, None, 2]) == "some missing"
    # Nothing plausible declared (a clock tick of 30000 is not a frame rate): 25 fps, warned.
    stream = SimpleNamespace(
        average_rate=Fraction(300),
        guessed_rate=None,
        base_rate=Fraction(0),
        codec_context=SimpleNamespace(framerate=Fraction(30000)),
    )
    with caplog.at_level(logging.WARNING, logger="zsm"):
        assert stream_rate(stream, [0, 0, 0], "a.mp4") == (FALLBACK_RATE, True)
        assert stream_rate(stream, [0, 1, 2], "b.mp4") == (Fraction(300), False)
    (warning,) = caplog.records
    assert "a.mp4" in warning.getMessage() and "assuming 25 fps" in warning.getMessage()
