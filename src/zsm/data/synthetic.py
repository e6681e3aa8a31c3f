"""Synthetic motion from still photos, for training when no video data set is at hand.

Each clip looks at a photo through a virtual camera that moves along a
random smooth trajectory (translation, rotation and zoom, each a quadratic
in time, so velocity changes smoothly), with a few occluding patches cut from
other photos moving on their own smooth trajectories in front of it. Frames
are rendered directly at the HR patch size by bicubic sampling with
:func:`torch.nn.functional.grid_sample` and rounded to uint8 like real video.

The trajectories are continuous in time, so :meth:`SyntheticMotion.frames_at`
renders any instants of them exactly: training at several time steps
(:mod:`zsm.data.timesteps`) gets its in-between targets at t = j/N as renders,
not as resamples of neighbouring frames.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from zsm.data.datasets import CLIP_LENGTH, IMAGE_SUFFIXES, read_image
from zsm.errors import InputError

# Photos shipped inside scikit-image (no download needed), in colour.
SKIMAGE_PHOTOS = (
    "astronaut",
    "coffee",
    "chelsea",
    "rocket",
    "hubble_deep_field",
    "immunohistochemistry",
    "retina",
    "stereo_motorcycle",
)


@dataclass(frozen=True)
class MotionConfig:
    """Ranges of the random motion, in HR pixels and degrees per frame.

    Attributes:
        max_speed: camera speed (pixels/frame) is drawn uniformly up to this.
        max_accel: change of velocity over the clip, as a fraction of max_speed.
        max_rotation: rotation speed up to this many degrees/frame.
        max_zoom: zoom speed up to this relative change per frame (0.02 = 2 %).
        occluders: the number of occluding patches is drawn from 0..occluders.
        occluder_size: their side as a fraction of the frame side (min, max).
        occluder_speed: their speed relative to the frame, pixels/frame.
    """

    max_speed: float = 6.0
    max_accel: float = 0.5
    max_rotation: float = 1.5
    max_zoom: float = 0.02
    occluders: int = 2
    occluder_size: tuple[float, float] = (0.2, 0.5)
    occluder_speed: float = 8.0


class SyntheticMotion:
    """A clip source of ``size`` clips of ``length`` frames of (height, width) pixels.

    ``clip(index, rng)`` uses photo ``index % len(photos)`` as the background
    and draws everything else from ``rng``, so the same (index, rng seed)
    always renders the same clip.
    """

    def __init__(
        self,
        photos: Sequence[np.ndarray],
        *,
        size: int = 1000,
        frame_size: tuple[int, int] = (128, 128),
        length: int = CLIP_LENGTH,
        motion: MotionConfig | None = None,
    ) -> None:
        if not photos:
            raise InputError("synthetic motion needs at least one photo")
        if size < 1 or length < 1:
            raise ValueError(f"size and length must be >= 1, got {size}, {length}")
        self.photos = [_as_rgb_uint8(p) for p in photos]
        self._tensors = [_to_tensor(p) for p in self.photos]  # float (3, H, W), made once
        self.size = size
        self.frame_size = frame_size
        self.length = length
        self.motion = motion or MotionConfig()

    def __len__(self) -> int:
        return self.size

    def __repr__(self) -> str:
        return f"SyntheticMotion({len(self.photos)} photos, {self.size} clips, {self.frame_size})"

    def clip(self, index: int, rng: np.random.Generator) -> np.ndarray:
        return self._render_at(index, rng, np.arange(self.length))

    def span(self, index: int) -> None:
        """Any span: a rendered clip has frames at every instant."""
        return None

    def frames_at(self, index: int, offsets: Sequence[int], rng: np.random.Generator) -> np.ndarray:
        """The clip's motion rendered at ``offsets`` of a span of ``offsets[-1] + 1`` frames
        laid over the clip's ``length``: the same motion, finer in time. Offset o is frame
        position ``o * (length - 1) / offsets[-1]``, fractional ones exact renders; the
        same ``rng`` gives the frames of ``clip`` at the integer positions."""
        last = int(offsets[-1])
        positions = np.asarray(offsets, dtype=np.float64)
        if last > 0:
            positions = positions * ((self.length - 1) / last)
        return self._render_at(index, rng, positions)

    def _render_at(self, index: int, rng: np.random.Generator, positions: np.ndarray) -> np.ndarray:
        """Frames at ``positions`` (frame units of the clip, 0..length-1) of clip ``index``."""
        h, w = self.frame_size
        t = Timeline(self.length, positions)
        m = self.motion
        photo = self._tensors[index % len(self.photos)]
        frames = _render(photo, _camera_path(rng, photo.shape[-2:], (h, w), t, m), (h, w))
        for _ in range(int(rng.integers(0, m.occluders + 1))):
            other = self._tensors[int(rng.integers(0, len(self.photos)))]
            texture, mask = _occluder(other, rng, (h, w), m)
            path = _occluder_path(rng, texture.shape[-2:], (h, w), t, m)
            fg = _render(texture, path, (h, w))
            alpha = _render(mask, path, (h, w), mode="bilinear")
            frames = frames * (1 - alpha) + fg * alpha
        out = frames.clamp_(0, 1).mul_(255).round_().to(torch.uint8)
        return out.permute(0, 2, 3, 1).numpy()  # (T, H, W, 3)


def load_photos(
    folder: Path | str | None = None, *, skimage: Sequence[str] = ()
) -> list[np.ndarray]:
    """Photos from an image folder and/or scikit-image's bundled samples (by name)."""
    photos: list[np.ndarray] = []
    if folder is not None:
        folder = Path(folder)
        if not folder.is_dir():
            raise InputError(f"photo folder not found: {folder}")
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise InputError(f"no images in {folder}")
        photos += [read_image(p) for p in files]
    if skimage:
        try:
            from skimage import data as skdata
        except ImportError as exc:
            raise InputError("scikit-image is not installed (pip install scikit-image)") from exc
        for name in skimage:
            loader = getattr(skdata, name, None)
            if loader is None:
                raise InputError(f"scikit-image has no sample image {name!r}")
            image = loader()
            photos.append(_as_rgb_uint8(image[0] if isinstance(image, tuple) else image))
    return photos


def _as_rgb_uint8(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.dtype == bool:
        image = image.astype(np.uint8) * 255
    if image.dtype != np.uint8:
        raise InputError(f"expected uint8 photos, got {image.dtype}")
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] not in (3, 4):
        raise InputError(f"expected (H, W, 3) photos, got shape {image.shape}")
    return np.ascontiguousarray(image[..., :3])


def _to_tensor(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(image)).permute(2, 0, 1).float().div_(255)  # (3, H, W)


@dataclass(frozen=True)
class Timeline:
    """A clip of ``length`` frames, rendered at ``positions`` (frame units, 0..length-1)."""

    length: int
    positions: np.ndarray

    @property
    def grid(self) -> np.ndarray:
        """The clip's own frames 0..length-1 (what keeps the view inside the photo)."""
        return np.arange(self.length)


def _quadratic(
    rng: np.random.Generator, speed: float, accel: float, t: Timeline
) -> tuple[np.ndarray, np.ndarray]:
    """A smooth 1-D motion v*s + a*s^2 (s centred on the clip) drawn from ``rng``: its
    offsets at ``t.positions`` and at the clip's frames ``t.grid``."""
    n = t.length
    v = rng.uniform(-speed, speed)
    a = rng.uniform(-accel, accel) * speed / max(n - 1, 1)

    def at(x: np.ndarray) -> np.ndarray:
        s = x - (n - 1) / 2
        return v * s + a * s**2

    return at(t.positions), at(t.grid)


@dataclass(frozen=True)
class _Path:
    """Per frame: centre in source pixels (x, y), rotation (radians), zoom (source px / out px)."""

    cx: np.ndarray
    cy: np.ndarray
    angle: np.ndarray
    zoom: np.ndarray


def _camera_path(
    rng: np.random.Generator,
    src_hw: tuple[int, int],
    out_hw: tuple[int, int],
    t: Timeline,
    m: MotionConfig,
) -> _Path:
    dx, grid_dx = _quadratic(rng, m.max_speed, m.max_accel, t)
    dy, grid_dy = _quadratic(rng, m.max_speed, m.max_accel, t)
    angle = np.deg2rad(rng.uniform(-180, 180) + _quadratic(rng, m.max_rotation, m.max_accel, t)[0])
    log_zoom = np.log(rng.uniform(0.8, 1.25))
    zoom, grid_zoom = (np.exp(log_zoom + z) for z in _quadratic(rng, m.max_zoom, m.max_accel, t))
    # Keep the rotated view inside the photo where it can; reflection padding covers the rest.
    # Judged on the clip's frames, so that rendering other instants keeps the same path.
    reach = 0.5 * math.hypot(*out_hw) * float(grid_zoom.max())
    sh, sw = src_hw
    cx = _centre(rng, sw, reach, grid_dx) + dx
    cy = _centre(rng, sh, reach, grid_dy) + dy
    return _Path(cx, cy, angle, zoom)


def _centre(rng: np.random.Generator, side: int, reach: float, offsets: np.ndarray) -> float:
    lo = reach - offsets.min()
    hi = side - reach - offsets.max()
    return rng.uniform(lo, hi) if hi > lo else side / 2 - offsets.mean()


def _occluder(
    photo: torch.Tensor, rng: np.random.Generator, out_hw: tuple[int, int], m: MotionConfig
) -> tuple[torch.Tensor, torch.Tensor]:
    """A texture patch cut from ``photo`` and its soft mask (rectangle or ellipse)."""
    side = min(out_hw)
    ph = max(4, int(side * rng.uniform(*m.occluder_size)))
    pw = max(4, int(side * rng.uniform(*m.occluder_size)))
    sh, sw = photo.shape[-2:]
    ph, pw = min(ph, sh), min(pw, sw)
    top = int(rng.integers(0, sh - ph + 1))
    left = int(rng.integers(0, sw - pw + 1))
    texture = photo[:, top : top + ph, left : left + pw]
    if rng.integers(0, 2):
        yy, xx = torch.meshgrid(torch.linspace(-1, 1, ph), torch.linspace(-1, 1, pw), indexing="ij")
        mask = (xx**2 + yy**2 <= 1).float()
    else:
        mask = torch.ones(ph, pw)
    # A zero border lets bilinear sampling fade the edge over one pixel.
    return F.pad(texture, (1, 1, 1, 1), mode="replicate"), F.pad(mask, (1, 1, 1, 1))[None]


def _occluder_path(
    rng: np.random.Generator,
    patch_hw: tuple[int, int],
    out_hw: tuple[int, int],
    t: Timeline,
    m: MotionConfig,
) -> _Path:
    """Where the patch centre goes: inverse map from output pixels to patch pixels."""
    h, w = out_hw
    ph, pw = patch_hw
    # Position of the patch centre in output pixels; it moves, the output frame stays.
    px = rng.uniform(0, w) + _quadratic(rng, m.occluder_speed, m.max_accel, t)[0]
    py = rng.uniform(0, h) + _quadratic(rng, m.occluder_speed, m.max_accel, t)[0]
    tilt = rng.uniform(-30, 30)
    angle = np.deg2rad(tilt + _quadratic(rng, 2 * m.max_rotation, m.max_accel, t)[0])
    zoom = np.full(len(t.positions), 1.0)
    # _render maps output pixel p to source pixel c + zoom * R(angle) (p - out_centre);
    # shift the centre so that output point (px, py) lands on the patch centre.
    cos, sin = np.cos(angle), np.sin(angle)
    ox, oy = (w - 1) / 2 - px, (h - 1) / 2 - py
    cx = (pw - 1) / 2 + zoom * (cos * ox - sin * oy)
    cy = (ph - 1) / 2 + zoom * (sin * ox + cos * oy)
    return _Path(cx, cy, angle, zoom)


def _render(
    src: torch.Tensor, path: _Path, out_hw: tuple[int, int], *, mode: str = "bicubic"
) -> torch.Tensor:
    """Sample ``src`` (C, Hs, Ws) along ``path``: (T, C, H, W), zero outside for masks."""
    h, w = out_hw
    sh, sw = src.shape[-2:]
    n = len(path.cx)
    cos = torch.from_numpy(np.cos(path.angle) * path.zoom).float()
    sin = torch.from_numpy(np.sin(path.angle) * path.zoom).float()
    ys, xs = torch.meshgrid(
        torch.arange(h, dtype=torch.float32) - (h - 1) / 2,
        torch.arange(w, dtype=torch.float32) - (w - 1) / 2,
        indexing="ij",
    )
    # Source pixel coordinates of every output pixel, per frame: (T, H, W).
    sx = torch.from_numpy(path.cx).float()[:, None, None] + cos[:, None, None] * xs
    sx = sx - sin[:, None, None] * ys
    sy = torch.from_numpy(path.cy).float()[:, None, None] + sin[:, None, None] * xs
    sy = sy + cos[:, None, None] * ys
    # Pixel centres -> grid_sample's [-1, 1] coordinates (align_corners=False).
    grid = torch.stack(((2 * sx + 1) / sw - 1, (2 * sy + 1) / sh - 1), dim=-1)
    padding = "zeros" if mode == "bilinear" else "reflection"
    # All frames in one call, stacked along the grid's height: (1, T*H, W, 2); expanding
    # the photo to T copies instead would copy it T times.
    out = F.grid_sample(
        src[None],
        grid.reshape(1, n * h, w, 2),
        mode=mode,
        padding_mode=padding,
        align_corners=False,
    )
    return out.reshape(src.shape[0], n, h, w).transpose(0, 1)  # (T, C, H, W)
