"""``zsm demo``: upscale the bundled clip and show the result beside the classical baseline.

Writes into the output folder (``zsm-demo/`` by default):

* ``input.mp4`` — the bundled clip (128x72, 12.5 fps, 2.6 s of Big Buck Bunny, audio);
* ``zsm.mp4`` — its space-time upscaling (512x288, 25 fps, audio carried over);
* ``side_by_side.mp4`` — bicubic x4 with each frame shown twice (left) and zsm (right);
* ``contact_sheet.png`` — a few moments: bicubic, zsm at the input time, and zsm's
  new in-between frame.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from importlib import resources
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from zsm.atomic import atomic_path, describe_os_error
from zsm.device import resolve_device
from zsm.errors import OutputError, WeightsError
from zsm.models.registry import DEFAULT_WEIGHTS, registered_weights, resolve_weights
from zsm.options import UpscaleOptions
from zsm.upscale import UpscaleResult, upscale_video
from zsm.video.encode import EncodeSettings, VideoWriter, choose_codec
from zsm.video.io import iter_frames, probe, write_png
from zsm.video.mux import SegmentFile, join

DEMO_CLIP = "bbb-demo.mp4"
SHEET_ROWS = 3
SEPARATOR = 4  # pixels between the halves of the side-by-side video


@dataclass(frozen=True)
class DemoResult:
    """The files :func:`run_demo` wrote."""

    input: Path
    result: Path
    side_by_side: Path
    contact_sheet: Path
    upscale: UpscaleResult


def demo_clip() -> Path:
    """The bundled demo clip."""
    return Path(str(resources.files("zsm") / "assets" / DEMO_CLIP))


def run_demo(
    output_dir: Path | str = "zsm-demo",
    options: UpscaleOptions | None = None,
    *,
    progress: bool | None = None,
    **changes: Any,
) -> DemoResult:
    """Run the demo (see the module docstring) with ``options`` and option ``changes``
    (:class:`~zsm.options.UpscaleOptions`; ``max_frames`` shortens it)."""
    options = UpscaleOptions.of(options, **changes)
    weights, max_frames = options.weights, options.max_frames
    if weights is None:
        entry = registered_weights()[DEFAULT_WEIGHTS]
        if not entry.path.is_file():
            raise WeightsError(
                f"zsm demo needs the bundled weights {DEFAULT_WEIGHTS!r}, which are missing "
                f"from this installation ({entry.path}); pass --weights FILE to use others"
            )
    else:
        resolve_weights(weights)
    resolve_device(options.device)
    out = Path(output_dir)
    created = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(describe_os_error(exc, out)) from exc
    clip = demo_clip()
    paths = {
        name: out / name
        for name in ("input.mp4", "zsm.mp4", "side_by_side.mp4", "contact_sheet.png")
    }
    try:
        result = upscale_video(clip, paths["zsm.mp4"], options, progress=progress)
        write_comparison(
            clip,
            paths["zsm.mp4"],
            paths["side_by_side.mp4"],
            paths["contact_sheet.png"],
            max_frames,
        )
        with atomic_path(paths["input.mp4"]) as tmp:
            shutil.copyfile(clip, tmp)
    except BaseException:
        if created and not any(out.iterdir()):
            out.rmdir()
        raise
    return DemoResult(
        input=paths["input.mp4"],
        result=paths["zsm.mp4"],
        side_by_side=paths["side_by_side.mp4"],
        contact_sheet=paths["contact_sheet.png"],
        upscale=result,
    )


def _pairs(
    clip: Path, result: Path, max_frames: int | None
) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """(output index, bicubic x4 of the input frame shown then, zsm frame)."""
    src = iter_frames(probe(clip))
    outs = iter_frames(probe(result))
    for k, lr in enumerate(src):
        if max_frames is not None and k >= max_frames:
            break
        assert lr is not None
        h, w = lr.shape[:2]
        bicubic = cv2.resize(lr, (4 * w, 4 * h), interpolation=cv2.INTER_CUBIC)
        for j in (2 * k, 2 * k + 1):  # frame repeat: each input frame shown twice
            hr = next(outs, None)
            if hr is None:
                return
            yield j, bicubic, hr


def _label(img: np.ndarray, text: str) -> np.ndarray:
    img = img.copy()
    scale = max(0.35, img.shape[1] / 1000)
    (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
    cv2.rectangle(img, (0, 0), (tw + 8, th + base + 8), (0, 0, 0), thickness=-1)
    cv2.putText(
        img, text, (4, th + 4), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1, cv2.LINE_AA
    )
    return img


def write_comparison(
    clip: Path, result: Path, video: Path, sheet: Path, max_frames: int | None = None
) -> None:
    """Write the side-by-side video of ``clip`` (bicubic x4, each frame twice) against its
    upscaling ``result`` (with the clip's audio) and the contact sheet, as ``zsm demo`` does.

    ``result`` is a time-factor-2 upscaling of ``clip`` (its first ``max_frames`` frames).
    """
    info = probe(result)
    n_in = max(2, (info.frame_count or 2) // 2)
    # Input frames at 1/4, 1/2, 3/4 of the clip; each row: bicubic, zsm, zsm's next frame.
    picks = {2 * round((n_in - 1) * (r + 1) / (SHEET_ROWS + 1)) for r in range(SHEET_ROWS)}
    rows: dict[int, list[np.ndarray]] = {}
    gap = np.full((info.height, SEPARATOR, 3), 255, np.uint8)
    width = 2 * info.width + SEPARATOR
    settings = EncodeSettings(choose_codec("mp4"), info.fps, width, info.height, crf=18)
    raw = video.with_name(f".{video.stem}.video-only.mp4")
    try:
        with VideoWriter(raw, settings, fmt="mp4") as writer:
            for j, bicubic, hr in _pairs(clip, result, max_frames):
                left = _label(bicubic, "bicubic x4 + frame repeat")
                right = _label(hr, "zsm x4, 2x fps")
                writer.write(np.hstack((left, gap, right)))
                key = j - j % 2
                if key in picks:
                    rows.setdefault(key, [bicubic]).append(hr)
            frames = writer.frames
        with atomic_path(video) as tmp:
            segment = SegmentFile(raw, 0, frames)
            join([segment], tmp, fmt="mp4", fps=info.fps, source=clip, end_time=frames / info.fps)
    finally:
        raw.unlink(missing_ok=True)
    _write_sheet(sheet, rows, info.fps)


def _write_sheet(path: Path, rows: dict[int, list[np.ndarray]], fps: Fraction) -> None:
    lines = []
    for j, row in sorted(rows.items()):
        if len(row) < 3:
            continue
        t = float(j / fps)
        bicubic, key, mid = row[:3]
        lines.append(
            np.hstack(
                (
                    _label(bicubic, f"bicubic x4  t={t:.2f}s"),
                    _label(key, f"zsm  t={t:.2f}s"),
                    _label(mid, f"zsm new frame  t={t + float(1 / fps):.2f}s"),
                )
            )
        )
    if not lines:
        raise OutputError(f"no frames for the contact sheet {path}")
    with atomic_path(path) as tmp:
        write_png(tmp, np.vstack(lines))
