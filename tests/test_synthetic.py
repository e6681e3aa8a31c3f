"""Synthetic motion from still photos: determinism, smoothness, occluders, photo loading."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from zsm.data.synthetic import MotionConfig, SyntheticMotion, load_photos
from zsm.errors import InputError


def photo(seed: int, h: int = 160, w: int = 200) -> np.ndarray:
    """A smooth random 'photo': low-frequency noise upsampled, so motion is measurable."""
    small = np.random.default_rng(seed).integers(0, 256, (h // 8, w // 8, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(small).resize((w, h), Image.BICUBIC))


def still(**kw: object) -> MotionConfig:
    base = dict(max_speed=0.0, max_rotation=0.0, max_zoom=0.0, occluders=0)
    return MotionConfig(**{**base, **kw})  # type: ignore[arg-type]


def test_clip_shape_type_and_determinism() -> None:
    src = SyntheticMotion([photo(0), photo(1)], size=10, frame_size=(48, 64))
    assert len(src) == 10 and src.length == 7
    a = src.clip(3, np.random.default_rng(5))
    b = src.clip(3, np.random.default_rng(5))
    c = src.clip(3, np.random.default_rng(6))
    assert a.shape == (7, 48, 64, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_no_motion_gives_identical_frames() -> None:
    src = SyntheticMotion([photo(2)], frame_size=(32, 32), motion=still())
    clip = src.clip(0, np.random.default_rng(0))
    assert all(np.array_equal(clip[0], f) for f in clip)


def test_motion_is_smooth_in_time() -> None:
    """Neighbouring frames differ less than distant ones, and every step moves."""
    src = SyntheticMotion([photo(3)], frame_size=(64, 64), motion=still(max_speed=4.0))
    for seed in range(5):
        clip = src.clip(0, np.random.default_rng(seed)).astype(float)
        step = [np.abs(clip[t + 1] - clip[t]).mean() for t in range(6)]
        far = np.abs(clip[6] - clip[0]).mean()
        assert min(step) > 0
        assert far > max(step)


def test_pure_translation_moves_content_along_a_smooth_path() -> None:
    """With translation only, each frame is the first one shifted; shifts follow a quadratic."""
    img = photo(4, 240, 240)
    src = SyntheticMotion([img], frame_size=(64, 64), motion=still(max_speed=3.0))
    rng = np.random.default_rng(11)
    clip = src.clip(0, rng).astype(float)
    # Locate each frame in the photo by brute-force search around the first frame's position.
    ref = clip[0]
    shifts = []
    for t in range(7):
        best = min(
            ((dy, dx) for dy in range(-14, 15) for dx in range(-14, 15)),
            key=lambda d: np.abs(
                np.roll(clip[t], (d[0], d[1]), axis=(0, 1))[16:48, 16:48] - ref[16:48, 16:48]
            ).mean(),
        )
        shifts.append(best)
    dy = np.array([s[0] for s in shifts], dtype=float)
    dx = np.array([s[1] for s in shifts], dtype=float)
    # Second differences of a quadratic path are constant (up to the 1-px search grid).
    assert np.abs(np.diff(dx, 2)).max() <= 2 and np.abs(np.diff(dy, 2)).max() <= 2
    assert np.abs(dx).max() + np.abs(dy).max() > 0


def test_occluders_cover_part_of_the_frame() -> None:
    bg, fg = photo(5), np.zeros((160, 200, 3), np.uint8)  # black occluders on a textured scene
    plain = SyntheticMotion([bg], frame_size=(64, 64), motion=still())
    covered = SyntheticMotion(
        [bg, fg], frame_size=(64, 64), motion=still(occluders=3, occluder_speed=4.0)
    )
    found = False
    for seed in range(10):
        a = plain.clip(0, np.random.default_rng(seed))
        b = covered.clip(0, np.random.default_rng(seed))
        changed = (np.abs(a.astype(int) - b.astype(int)).max(axis=-1) > 0).mean()
        found |= 0.02 < changed < 0.98
    assert found


def test_photo_loading(tmp_path: Path) -> None:
    Image.fromarray(photo(6)).save(tmp_path / "a.png")
    Image.fromarray(photo(7)[..., 0]).save(tmp_path / "b.png")  # greyscale becomes RGB
    photos = load_photos(tmp_path)
    assert [p.shape for p in photos] == [(160, 200, 3), (160, 200, 3)]
    with pytest.raises(InputError, match="not found"):
        load_photos(tmp_path / "missing")
    with pytest.raises(InputError, match="at least one photo"):
        SyntheticMotion([])


def test_scikit_image_samples() -> None:
    pytest.importorskip("skimage")
    photos = load_photos(skimage=["astronaut", "camera"])
    assert photos[0].shape == (512, 512, 3) and photos[1].shape == (512, 512, 3)
    with pytest.raises(InputError, match="no sample image"):
        load_photos(skimage=["no_such_photo"])
