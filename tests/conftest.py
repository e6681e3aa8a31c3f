"""Shared fixtures. Keep each group clearly named after its user."""

from __future__ import annotations

from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

import pytest

# --- shared ------------------------------------------------------------------------------------


@pytest.fixture
def single_thread():
    """One torch thread: tiny tensors run far faster without thread hand-offs (2-core CI)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# --- video pipeline tests (test_video_io, test_pipeline, test_upscale_cli, test_demo) ----------

TINY_CONFIG = dict(nf=8, groups=2, front_RBs=1, back_RBs=1, hr_nf=8, global_skip=True)


@pytest.fixture(scope="session")
def video_tiny_model():
    """A tiny random ZoomingSlowMo (seeded), eval mode, on the CPU."""
    import torch

    from zsm import ZoomingSlowMo, ZSMConfig

    torch.manual_seed(0)
    return ZoomingSlowMo(ZSMConfig(**TINY_CONFIG)).eval()


@pytest.fixture(scope="session")
def video_tiny_weights(tmp_path_factory, video_tiny_model) -> Path:
    """The tiny random model saved as a safetensors file."""
    from zsm import save_weights

    path = tmp_path_factory.mktemp("video-weights") / "tiny.safetensors"
    save_weights(video_tiny_model, path)
    return path


def video_pattern(index: int, width: int, height: int):
    """Frame ``index`` of the test clips: a red left third (to see rotations), a moving
    green bar, and a blue ramp, so that neighbouring frames differ."""
    import numpy as np

    img = np.zeros((height, width, 3), np.uint8)
    img[:, : max(1, width // 3), 0] = 230
    x = (3 * index) % width
    img[:, x : x + 3, 1] = 200
    img[:, :, 2] = np.linspace(0, 160, width, dtype=np.uint8)[None, :]
    return img


@pytest.fixture(scope="session")
def video_frame_pattern():
    """The frame function of the test clips (see :func:`video_pattern`)."""
    return video_pattern


def audio_seconds(path: Path) -> float | None:
    """Duration of the first audio stream of ``path`` by decoding it (None: no audio)."""
    import av

    with av.open(str(path)) as c:
        if not c.streams.audio:
            return None
        stream = c.streams.audio[0]
        frames = list(c.decode(stream))
    rate = frames[0].sample_rate
    return sum(f.samples for f in frames) / rate


@pytest.fixture(scope="session")
def video_audio_seconds():
    """:func:`audio_seconds`: decoded duration of a file's audio, seconds."""
    return audio_seconds


@pytest.fixture
def video_make_clip(tmp_path) -> Callable[..., Path]:
    """Factory writing a small real clip with PyAV; returns its path.

    ``make(name, frames=6, width=24, height=16, fps=25, audio=False, rotation=None,
    codec="libx264", pix_fmt="yuv420p", subtitle=False, audio_codec="aac",
    pattern=video_pattern)``; ``pattern(index, width, height)`` makes frame ``index``.
    """
    import av
    import numpy as np

    def make(
        name: str = "clip.mp4",
        *,
        frames: int = 6,
        width: int = 24,
        height: int = 16,
        fps: int | Fraction = 25,
        audio: bool = False,
        audio_codec: str = "aac",
        rotation: int | None = None,
        codec: str = "libx264",
        pix_fmt: str = "yuv420p",
        subtitle: bool = False,
        folder: Path | None = None,
        pattern: Callable[[int, int, int], np.ndarray] = video_pattern,
    ) -> Path:
        path = (folder or tmp_path) / name
        rate = Fraction(fps)
        with av.open(str(path), "w") as c:
            v = c.add_stream(codec, rate=rate)
            v.width, v.height, v.pix_fmt = width, height, pix_fmt
            if rotation is not None:
                v.set_display_rotation(rotation)
            a = None
            if audio:
                a = c.add_stream(audio_codec, rate=48000)
                a.layout = "stereo"
            s = c.add_mux_stream("subrip") if subtitle else None
            if s is not None:
                s.time_base = Fraction(1, 1000)
            for i in range(frames):
                f = av.VideoFrame.from_ndarray(pattern(i, width, height), format="rgb24")
                f.pts, f.time_base = i, 1 / rate
                c.mux(v.encode(f))
            c.mux(v.encode(None))
            if s is not None:
                pkt = av.Packet(b"hello")
                pkt.stream, pkt.time_base = s, Fraction(1, 1000)
                pkt.pts = pkt.dts = 0
                pkt.duration = 100
                c.mux(pkt)
            if a is not None:
                rng = np.random.default_rng(0)
                total, t = round(48000 * frames / rate), 0
                while t < total:
                    k = min(1024, total - t)
                    data = (rng.random((2, k), dtype=np.float32) - 0.5) * 0.2
                    fr = av.AudioFrame.from_ndarray(data, format="fltp", layout="stereo")
                    fr.sample_rate, fr.pts = 48000, t
                    t += k
                    c.mux(a.encode(fr))
                c.mux(a.encode(None))
        return path

    return make


@pytest.fixture
def video_broken_clip(tmp_path) -> Callable[..., Path]:
    """Factory writing a real clip whose frame timestamps are broken; returns its path.

    ``make(kind, frames=12, fps=25)``, ``kind`` one of
    - ``"zero.mp4"``: H.264 in MP4, every packet's pts and dts 0 (FFmpeg reads the average
      rate as frames / one frame's duration: 300 fps for 12 frames at 25),
    - ``"pairs.mkv"``: MPEG-4 in Matroska, pts 0, 0, 1, 1, 2, 2, ... (not increasing),
    - ``"raw.h264"``: an H.264 Annex-B stream, which carries no timestamps at all.
    The codec's own header states ``fps`` in every case.
    """
    import av

    def make(kind: str, *, frames: int = 12, fps: int | Fraction = 25) -> Path:
        path = tmp_path / kind
        rate = Fraction(fps)
        codec = "mpeg4" if kind.endswith(".mkv") else "libx264"
        fmt = "h264" if kind.endswith(".h264") else None
        with av.open(str(path), "w", format=fmt) as c:
            # No B-frames: a decoder then outputs the frames in the order they were stored.
            options = {"bframes": "0"} if codec == "libx264" else {}
            v = c.add_stream(codec, rate=rate, options=options)
            v.width, v.height, v.pix_fmt = 32, 16, "yuv420p"
            packets = 0

            def stamp(packets_out: list) -> list:
                nonlocal packets
                for p in packets_out:
                    if kind.startswith("zero"):
                        p.pts = p.dts = 0
                    elif kind.startswith("pairs"):
                        p.pts = p.dts = packets // 2
                    packets += 1
                return packets_out

            for i in range(frames):
                f = av.VideoFrame.from_ndarray(video_pattern(i, 32, 16), format="rgb24")
                f.pts, f.time_base = i, 1 / rate
                c.mux(stamp(v.encode(f)))
            c.mux(stamp(v.encode(None)))
        return path

    return make
