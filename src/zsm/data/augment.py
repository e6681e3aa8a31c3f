"""Training augmentation of HR clips: random crop, flips, rotation, temporal reversal.

Everything here works on uint8 clips of shape (T, H, W, 3) *before* the
degradation, so cropping first keeps the bicubic down-scaling cheap, and the
flips, 90-degree rotations and time reversal commute with it (the bicubic
kernel is symmetric), so the LR input sees exactly the same transform as the
HR target. Randomness comes only from the ``numpy.random.Generator`` passed
in, which the data order derives from (seed, sample position): a sample is a
pure function of its position, which is what makes resuming exact.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from zsm.errors import InputError

SCALE = 4  # HR pixels per LR pixel; crops are aligned to this grid


@dataclass(frozen=True)
class AugmentConfig:
    """Which augmentations to apply; ``lr_patch`` is the LR crop side (HR side is 4x)."""

    lr_patch: int = 32
    flips: bool = True
    rotate: bool = True
    reverse: bool = True

    def __post_init__(self) -> None:
        if self.lr_patch < 1:
            raise ValueError(f"lr_patch must be >= 1, got {self.lr_patch}")

    @property
    def hr_patch(self) -> int:
        return SCALE * self.lr_patch


def random_crop(clip: np.ndarray, hr_patch: int, rng: np.random.Generator) -> np.ndarray:
    """The same random ``hr_patch`` square of every frame of (T, H, W, C), aligned to 4 px.

    Raises :class:`InputError` when the frames are smaller than the patch.
    """
    h, w = clip.shape[1:3]
    if h < hr_patch or w < hr_patch:
        raise InputError(
            f"frames of {w}x{h} pixels are smaller than the HR training patch "
            f"{hr_patch}x{hr_patch}; lower data.lr_patch or the HR down-scaling"
        )
    # Offsets on the 4-px grid, so an LR pixel covers the same HR pixels as it
    # would had the full frame been degraded first.
    top = SCALE * int(rng.integers(0, (h - hr_patch) // SCALE + 1))
    left = SCALE * int(rng.integers(0, (w - hr_patch) // SCALE + 1))
    return clip[:, top : top + hr_patch, left : left + hr_patch]


def random_flip_rotate(
    clip: np.ndarray, rng: np.random.Generator, *, flips: bool = True, rotate: bool = True
) -> np.ndarray:
    """Random horizontal/vertical flips and transpose (90-degree rotation) of (T, H, W, C).

    Together they give all 8 symmetries of the square. Draws are made even
    when a transform is disabled, so toggling one does not reshuffle the others.
    """
    hflip, vflip, transpose = (bool(b) for b in rng.integers(0, 2, size=3))
    if flips and hflip:
        clip = clip[:, :, ::-1]
    if flips and vflip:
        clip = clip[:, ::-1]
    if rotate and transpose:
        clip = clip.transpose(0, 2, 1, 3)  # swap H and W of every frame
    return clip


def random_reverse(clip: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Play the clip backwards with probability 1/2 (motion in either direction is plausible)."""
    return clip[::-1] if rng.integers(0, 2) else clip


def augment_clip(clip: np.ndarray, rng: np.random.Generator, config: AugmentConfig) -> np.ndarray:
    """Crop, flip/rotate and maybe reverse a (T, H, W, C) uint8 clip; returns a contiguous copy."""
    return augment_clip_timed(clip, rng, config)[0]


def augment_clip_timed(
    clip: np.ndarray, rng: np.random.Generator, config: AugmentConfig
) -> tuple[np.ndarray, bool]:
    """:func:`augment_clip` (the same draws) and whether it reversed the clip in time."""
    clip = random_crop(clip, config.hr_patch, rng)
    clip = random_flip_rotate(clip, rng, flips=config.flips, rotate=config.rotate)
    backwards = bool(rng.integers(0, 2))  # drawn even when off: toggling it reshuffles nothing
    if config.reverse and backwards:
        clip = clip[::-1]
    return np.ascontiguousarray(clip), config.reverse and backwards
