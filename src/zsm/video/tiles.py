"""Overlapping spatial tiles: bounded memory for large frames, no visible seams.

Each tile is a *core* (the LR pixels whose output it keeps) grown by a halo
of ``overlap`` pixels on every side that has a neighbour; the halo's outputs
are computed and cropped away in HR, so what is kept never saw the tile's
artificial border. Tile origins are multiples of the model's size multiple
(``align``; 4 for ours, whose two stride-2 pyramid levels then sample the
same grid as on the whole frame).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

DEFAULT_TILE_OVERLAP = 16  # LR pixels of halo on each inner side


@dataclass(frozen=True)
class Tile:
    """LR input region ``[y0, y1) x [x0, x1)``; keeps the core ``[ky0, ky1) x [kx0, kx1)``."""

    y0: int
    y1: int
    x0: int
    x1: int
    ky0: int
    ky1: int
    kx0: int
    kx1: int

    @property
    def pixels(self) -> int:
        return (self.y1 - self.y0) * (self.x1 - self.x0)


def _round_up(v: int, m: int) -> int:
    return -(-v // m) * m


def _spans(length: int, core: int, align: int) -> list[tuple[int, int]]:
    """Split ``[0, length)`` into near-equal cores of at most ``core`` (multiples of align)."""
    if core >= length:
        return [(0, length)]
    count = math.ceil(length / core)
    step = _round_up(math.ceil(length / count), align)
    return [(a, min(a + step, length)) for a in range(0, length, step)]


def plan_tiles(
    height: int,
    width: int,
    tile: int | None,
    overlap: int = DEFAULT_TILE_OVERLAP,
    *,
    align: int = 4,
) -> list[Tile]:
    """Tiles covering an ``height`` x ``width`` LR frame.

    ``tile`` is the largest core side in LR pixels (rounded up to a multiple
    of ``align``); ``None`` or a size covering the frame gives one tile, the
    whole frame.
    """
    if height < 1 or width < 1:
        raise ValueError(f"expected a frame of at least 1x1 pixels, got {width}x{height}")
    if tile is not None and tile < 1:
        raise ValueError(f"tile size must be >= 1 pixel, got {tile}")
    if overlap < 0:
        raise ValueError(f"tile overlap must be >= 0, got {overlap}")
    core = max(align, _round_up(tile, align)) if tile else max(height, width)
    halo = _round_up(overlap, align)
    tiles = []
    for ky0, ky1 in _spans(height, core, align):
        for kx0, kx1 in _spans(width, core, align):
            tiles.append(
                Tile(
                    y0=max(0, ky0 - halo),
                    y1=min(height, ky1 + halo),
                    x0=max(0, kx0 - halo),
                    x1=min(width, kx1 + halo),
                    ky0=ky0,
                    ky1=ky1,
                    kx0=kx0,
                    kx1=kx1,
                )
            )
    return tiles


def tile_for_budget(
    height: int,
    width: int,
    *,
    frames: int,
    bytes_per_pixel_frame: float,
    budget: float,
    overlap: int = DEFAULT_TILE_OVERLAP,
    align: int = 4,
) -> int | None:
    """The largest core side whose tile (core plus halo) fits ``budget`` bytes of working
    memory for a window of ``frames`` input frames; ``None`` when the whole frame fits."""
    per_pixel = frames * bytes_per_pixel_frame
    if height * width * per_pixel <= budget:
        return None
    side = math.isqrt(max(1, int(budget / per_pixel)))  # tile side including the halo
    core = side - 2 * _round_up(overlap, align)
    # Below 2x the halo, tiles are mostly halo; accept more memory rather than crawl.
    return max(core - core % align, 2 * align, _round_up(overlap, align))
