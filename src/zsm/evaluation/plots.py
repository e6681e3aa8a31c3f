"""PNG figures of an evaluation, drawn with Pillow (no plotting library needed)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageDraw, ImageFont

if TYPE_CHECKING:
    from zsm.evaluation.results import ClipResult

COLORS = {
    "bicubic-repeat": (148, 103, 189),
    "bicubic-blend": (255, 127, 14),
    "bicubic-flow": (44, 160, 44),
    "zsm": (31, 119, 180),
}
FALLBACK_COLORS = [(214, 39, 40), (140, 86, 75), (227, 119, 194), (127, 127, 127)]
BACKGROUND = (255, 255, 255)
INK = (30, 30, 30)
GRID = (225, 225, 225)


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)  # scalable when Pillow has FreeType
    except (TypeError, OSError):
        return ImageFont.load_default()


def _color(method: str, index: int) -> tuple[int, int, int]:
    return COLORS.get(method, FALLBACK_COLORS[index % len(FALLBACK_COLORS)])


def nice_ticks(lo: float, hi: float, count: int = 6) -> list[float]:
    """Round tick values covering [lo, hi] (steps of 1, 2 or 5 times a power of ten)."""
    if hi <= lo:
        hi = lo + 1.0
    raw = (hi - lo) / max(count - 1, 1)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    start = math.floor(lo / step) * step
    ticks = []
    value = start
    while value <= hi + 1e-9 * step:
        ticks.append(round(value, 10))
        value += step
    if ticks[-1] < hi:
        ticks.append(round(value, 10))
    return ticks


def plot_psnr_per_frame(clip: ClipResult, path: Path | str) -> None:
    """Line plot of PSNR-Y against frame index, one line per method; PNG at ``path``."""
    width, height = 960, 440
    left, right, top, bottom = 70, 190, 40, 50
    image = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(image)
    font, small = _font(15), _font(12)
    values = [v for s in clip.scores.values() for v in s.psnr if math.isfinite(v)]
    lo, hi = (min(values), max(values)) if values else (0.0, 1.0)
    pad = max(0.05 * (hi - lo), 0.1)
    yticks = nice_ticks(lo - pad, hi + pad)
    ylo, yhi = yticks[0], yticks[-1]
    n = len(clip.kinds)
    x0, x1, y0, y1 = left, width - right, top, height - bottom

    def sx(i: float) -> float:
        return x0 + (x1 - x0) * (i / max(n - 1, 1))

    def sy(v: float) -> float:
        return y1 - (y1 - y0) * (v - ylo) / (yhi - ylo)

    for v in yticks:
        draw.line([(x0, sy(v)), (x1, sy(v))], fill=GRID)
        draw.text((x0 - 8, sy(v)), f"{v:g}", fill=INK, font=small, anchor="rm")
    for i in nice_ticks(0, max(n - 1, 1)):
        if i <= n - 1 and float(i).is_integer():
            draw.line([(sx(i), y1), (sx(i), y1 + 5)], fill=INK)
            draw.text((sx(i), y1 + 8), f"{int(i)}", fill=INK, font=small, anchor="mt")
    draw.rectangle([x0, y0, x1, y1], outline=INK)
    for k, (method, scores) in enumerate(clip.scores.items()):
        color = _color(method, k)
        pts = [(sx(i), sy(v)) for i, v in enumerate(scores.psnr) if math.isfinite(v)]
        if len(pts) > 1:
            draw.line(pts, fill=color, width=2)
        for x, y in pts if n <= 120 else []:
            draw.ellipse([x - 2, y - 2, x + 2, y + 2], fill=color)
        ly = y0 + 10 + 22 * k
        draw.line([(x1 + 15, ly), (x1 + 40, ly)], fill=color, width=3)
        draw.text((x1 + 47, ly), method, fill=INK, font=small, anchor="lm")
    title = f"PSNR-Y per frame - {clip.name} (even frames reconstructed, odd interpolated)"
    draw.text((width / 2, 12), title, fill=INK, font=font, anchor="mt")
    draw.text(((x0 + x1) / 2, height - 14), "frame", fill=INK, font=small, anchor="mb")
    label = Image.new("RGB", (140, 18), BACKGROUND)
    ImageDraw.Draw(label).text((70, 9), "PSNR-Y (dB)", fill=INK, font=small, anchor="mm")
    image.paste(label.rotate(90, expand=True), (6, (y0 + y1) // 2 - 70))
    image.save(path, format="PNG")


def plot_crop_grid(clip: ClipResult, path: Path | str) -> None:
    """Crops of GT and each shown method, one row per example frame; PNG at ``path``."""
    font, small = _font(14), _font(12)
    examples = clip.crops
    columns = list(examples[0].tiles)
    side = max(e.box[2] for e in examples)
    zoom = max(1, 192 // side)  # nearest-neighbour zoom so pixels stay visible
    tile = side * zoom
    gap, caption, header = 8, 20, 26
    width = gap + len(columns) * (tile + gap)
    height = len(examples) * (header + caption + tile + gap) + gap
    image = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(image)
    y = gap
    for ex in examples:
        text = (
            f"{clip.name} frame {ex.frame} ({ex.kind}) - {ex.label}: {ex.subject} "
            f"{ex.gain_db:+.2f} dB vs {ex.reference}"
        )
        draw.text((gap, y + header / 2), text, fill=INK, font=font, anchor="lm")
        y += header
        for c, name in enumerate(columns):
            x = gap + c * (tile + gap)
            crop = np.ascontiguousarray(ex.tiles[name])
            shown = Image.fromarray(crop).resize(
                (crop.shape[1] * zoom, crop.shape[0] * zoom), Image.Resampling.NEAREST
            )
            label = name if name == "GT" else f"{name} {ex.psnr[name]:.2f} dB"
            draw.text((x + tile / 2, y + caption / 2), label, fill=INK, font=small, anchor="mm")
            image.paste(shown, (x, y + caption))
        y += caption + tile + gap
    image.save(path, format="PNG")
