"""What the web app says: the input and what it becomes, progress, a job's outcome."""

from __future__ import annotations

from fractions import Fraction

from zsm.video.io import VideoInfo
from zsm.video.progress import Progress

# The web app's frame-rate choices (label, time factor); any N >= 1 works in the API and CLI.
TIME_FACTOR_CHOICES = [
    ("2x frame rate (smoother)", 2),
    ("same frame rate", 1),
    ("3x frame rate", 3),
    ("4x frame rate", 4),
    ("8x frame rate", 8),
]


def clock(seconds: float) -> str:
    """``75.4`` -> ``1:15``; hours when needed (``1:02:03``)."""
    s = max(0, round(seconds))
    h, rest = divmod(s, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def rate(fps: Fraction) -> str:
    return f"{float(fps):.3f}".rstrip("0").rstrip(".")


def describe(name: str, info: VideoInfo, time_factor: int) -> str:
    """Markdown: the input's size, rate, duration and frames, and the output's."""
    frames = info.frame_count
    duration = info.duration or (float(frames / info.fps) if frames else None)
    about = "" if info.frame_count_exact else "about "
    parts = [f"{info.width}x{info.height}", f"{rate(info.fps)} fps"]
    if duration is not None:
        parts.append(f"{duration:.2f} s")
    if frames is not None:
        parts.append(f"{about}{frames} frames")
    if info.audio:
        parts.append("audio")
    out = [f"{4 * info.width}x{4 * info.height}", f"{rate(info.fps * time_factor)} fps"]
    if frames is not None:
        out.append(f"{about}{frames * time_factor} frames")
    change = f"{time_factor}x frame rate" if time_factor > 1 else "same frame rate"
    change = f"4x size, {change}"
    return f"**Input** {name}: {', '.join(parts)}  \n**Output** {', '.join(out)} ({change})"


def progress_line(p: Progress) -> str:
    """``24/66 frames · 3.1 frames/s · 0:14 left``."""
    done = f"{p.done}/{p.total} frames" if p.total is not None else f"{p.done} frames"
    parts = [done]
    if p.frames_per_second > 0:
        parts.append(f"{p.frames_per_second:.3g} frames/s")
    if p.seconds_left is not None:
        parts.append(f"{clock(p.seconds_left)} left")
    return " · ".join(parts)


def waiting_line(ahead: int) -> str:
    return f"waiting: {ahead} job{'s' if ahead != 1 else ''} ahead on this device"
