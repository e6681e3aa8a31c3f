"""MATLAB-style bicubic resizing and the LR clip degradation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from zsm.data.degrade import (
    add_gaussian_noise,
    bicubic_downscale,
    bicubic_upscale,
    jpeg_compress,
    make_lr_clip,
)

# --- an independent, deliberately plain float64 transcription of MATLAB's imresize.m ---


def _cubic(x: float) -> float:
    a = abs(x)
    if a <= 1:
        return 1.5 * a**3 - 2.5 * a**2 + 1
    if a <= 2:
        return -0.5 * a**3 + 2.5 * a**2 - 4 * a + 2
    return 0.0


def _contributions(in_len: int, out_len: int, scale: float) -> np.ndarray:
    """(out_len, in_len) weights, following imresize.m's contributions() line by line."""
    kernel_width = 4.0 / scale if scale < 1 else 4.0  # antialiasing stretches the kernel
    aux = list(range(1, in_len + 1)) + list(range(in_len, 0, -1))  # symmetric boundary
    weights = np.zeros((out_len, in_len))
    for x in range(1, out_len + 1):  # 1-based, as in MATLAB
        u = x / scale + 0.5 * (1 - 1 / scale)
        left = math.floor(u - kernel_width / 2)
        taps = [left + p for p in range(math.ceil(kernel_width) + 2)]
        if scale < 1:
            w = [scale * _cubic(scale * (u - j)) for j in taps]
        else:
            w = [_cubic(u - j) for j in taps]
        total = sum(w)
        for j, wj in zip(taps, w, strict=True):
            weights[x - 1, aux[(j - 1) % len(aux)] - 1] += wj / total
    return weights


def _reference_resize(image: np.ndarray, scale: float) -> np.ndarray:
    """(C, H, W) float64 -> MATLAB imresize(image, scale, 'bicubic')."""
    _, h, w = image.shape
    wh = _contributions(h, math.ceil(h * scale), scale)
    ww = _contributions(w, math.ceil(w * scale), scale)
    return np.einsum("ih,chw,jw->cij", wh, image, ww)


@pytest.mark.parametrize(("h", "w", "factor"), [(16, 24, 4), (8, 12, 4), (36, 20, 4), (9, 12, 3)])
def test_downscale_matches_matlab_reference(h: int, w: int, factor: int) -> None:
    image = np.random.default_rng(h * w).random((3, h, w))
    ours = bicubic_downscale(torch.from_numpy(image), factor).numpy()
    np.testing.assert_allclose(ours, _reference_resize(image, 1 / factor), rtol=0, atol=1e-12)


@pytest.mark.parametrize(("h", "w", "factor"), [(4, 6, 4), (1, 3, 4), (7, 5, 4), (5, 4, 2)])
def test_upscale_matches_matlab_reference(h: int, w: int, factor: int) -> None:
    image = np.random.default_rng(h + w).random((3, h, w))
    ours = bicubic_upscale(torch.from_numpy(image), factor).numpy()
    np.testing.assert_allclose(ours, _reference_resize(image, factor), rtol=0, atol=1e-12)


def test_known_interior_weights_x4() -> None:
    # MATLAB's x4 shrink kernel, cubic(d/4)/4 at d = 0.5 .. 7.5, is exactly these fractions
    # (the 16 taps sum to 1 without normalisation); the x4 enlargement's first phase is
    # [-0.0439, 0.3896, 0.7275, -0.0732], the familiar MATLAB weights.
    half = np.array([987, 745, 399, 93, -49, -75, -45, -7]) / 4096
    down_taps = np.concatenate([half[::-1], half])
    impulse = torch.zeros(1, 64, 64, dtype=torch.float64)
    impulse[0, 32, 32] = 1.0  # in block 8 of 16, at offset 0
    out = bicubic_downscale(impulse).numpy()[0]
    # Output (i, j) weighs input (32, 32) by tap[32 - 4*i + 6] along each axis (i = 5..12).
    taps = np.array(
        [down_taps[32 - 4 * i + 6] if 0 <= 32 - 4 * i + 6 < 16 else 0 for i in range(16)]
    )
    np.testing.assert_allclose(out, np.outer(taps, taps), atol=1e-15)

    up = bicubic_upscale(torch.eye(8, dtype=torch.float64)[None, 3:4, :]).numpy()[0, 0]
    # Output 4*m (phase 0) of a unit impulse at input 3 is the tap for offset 3 - m.
    phase0 = {-2: -45 / 1024, -1: 399 / 1024, 0: 745 / 1024, 1: -75 / 1024}
    for m in range(1, 6):
        assert up[4 * m] == pytest.approx(phase0.get(3 - m, 0.0), abs=1e-15)


def test_interior_agrees_with_pillow_bicubic() -> None:
    # Pillow's BICUBIC is the same a = -0.5 kernel, stretched and normalised the same way;
    # it only treats borders differently (it truncates the kernel rather than mirroring).
    image = np.random.default_rng(3).random((48, 64)).astype(np.float32)
    pil = np.asarray(Image.fromarray(image).resize((16, 12), Image.Resampling.BICUBIC))
    ours = bicubic_downscale(torch.from_numpy(image)[None].double()).numpy()[0]
    np.testing.assert_allclose(ours[2:-2, 2:-2], pil[2:-2, 2:-2], atol=1e-5)


def test_constant_stays_constant() -> None:
    image = torch.full((2, 3, 16, 20), 0.37, dtype=torch.float64)
    torch.testing.assert_close(bicubic_downscale(image), torch.full((2, 3, 4, 5), 0.37).double())
    torch.testing.assert_close(bicubic_upscale(image), torch.full((2, 3, 64, 80), 0.37).double())


def test_linear_ramp_keeps_its_mean_and_interior_block_means() -> None:
    ramp = torch.arange(32, dtype=torch.float64).repeat(3, 16, 1)  # (3, 16, 32), ramp along W
    small = bicubic_downscale(ramp)
    assert small.mean().item() == pytest.approx(ramp.mean().item(), abs=1e-12)
    # Away from the borders, a linear signal comes out as each 4-pixel block's mean.
    np.testing.assert_allclose(small[0, 0, 2:-2].numpy(), [9.5, 13.5, 17.5, 21.5], atol=1e-12)


def test_sizes_not_divisible_are_refused_with_the_sizes() -> None:
    with pytest.raises(ValueError, match=r"18x17.*16x16"):
        bicubic_downscale(torch.zeros(3, 17, 18))


def test_numpy_uint8_convenience_rounds_like_matlab() -> None:
    image = np.random.default_rng(5).integers(0, 256, (16, 24, 3), dtype=np.uint8)
    small = bicubic_downscale(image)
    assert small.dtype == np.uint8 and small.shape == (4, 6, 3)
    exact = _reference_resize(image.transpose(2, 0, 1).astype(np.float64), 0.25).transpose(1, 2, 0)
    np.testing.assert_array_equal(small, np.floor(np.clip(exact, 0, 255) + 0.5).astype(np.uint8))
    assert bicubic_upscale(small).shape == (16, 24, 3)
    with pytest.raises(ValueError, match="uint8"):
        bicubic_downscale(image.astype(np.float32))


def test_make_lr_clip_keeps_even_frames_and_all_targets() -> None:
    hr = torch.rand(7, 3, 16, 24, dtype=torch.float64)
    lr, gt = make_lr_clip(hr)
    assert lr.shape == (4, 3, 4, 6)
    assert gt is hr
    expected = torch.floor(bicubic_downscale(hr[[0, 2, 4, 6]]).clamp(0, 1) * 255 + 0.5) / 255
    torch.testing.assert_close(lr, expected)
    lr_even, _ = make_lr_clip(hr[:4])  # any T: frames 0 and 2
    assert lr_even.shape[0] == 2
    raw, _ = make_lr_clip(hr, quantize_lr=False)
    torch.testing.assert_close(raw, bicubic_downscale(hr[0::2]))


def test_make_lr_clip_uint8_path() -> None:
    hr = np.random.default_rng(1).integers(0, 256, (5, 8, 12, 3), dtype=np.uint8)
    lr, gt = make_lr_clip(hr)
    assert lr.dtype == np.uint8 and lr.shape == (3, 2, 3, 3)
    assert gt is hr
    np.testing.assert_array_equal(lr[1], bicubic_downscale(hr[2]))
    # Long clips are degraded a few frames at a time (bounded memory), with the same result.
    long = np.random.default_rng(2).integers(0, 256, (21, 8, 12, 3), dtype=np.uint8)
    lr, _ = make_lr_clip(long)
    assert lr.shape == (11, 2, 3, 3)
    for i in range(11):
        np.testing.assert_array_equal(lr[i], bicubic_downscale(long[2 * i]))
    with pytest.raises(ValueError, match="at least one"):
        make_lr_clip(long[:0])


def test_augmentations_are_off_by_default_and_seeded() -> None:
    hr = torch.rand(3, 3, 16, 16)
    a, _ = make_lr_clip(hr)
    b, _ = make_lr_clip(hr)
    torch.testing.assert_close(a, b)
    g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    noisy1, _ = make_lr_clip(hr, noise_sigma=0.05, quantize_lr=False, generator=g1)
    noisy2, _ = make_lr_clip(hr, noise_sigma=0.05, quantize_lr=False, generator=g2)
    torch.testing.assert_close(noisy1, noisy2)
    clean, _ = make_lr_clip(hr, quantize_lr=False)
    assert (noisy1 - clean).std().item() == pytest.approx(0.05, rel=0.3)
    assert add_gaussian_noise(clean, 0.0) is clean
    with pytest.raises(ValueError, match="sigma"):
        add_gaussian_noise(clean, -1.0)


def test_jpeg_compression() -> None:
    y, x = torch.meshgrid(torch.arange(32.0), torch.arange(48.0), indexing="ij")
    smooth = torch.stack([x / 47, y / 31, (x + y) / 78])[None].repeat(2, 1, 1, 1)  # (2,3,32,48)
    good = jpeg_compress(smooth, 95)
    bad = jpeg_compress(smooth, 5)
    assert good.shape == smooth.shape and good.dtype == smooth.dtype
    torch.testing.assert_close(good * 255, torch.round(good * 255))  # 8-bit levels
    assert (good - smooth).abs().mean() < (bad - smooth).abs().mean()
    assert (good - smooth).abs().mean() < 0.01
    lr, _ = make_lr_clip(torch.rand(3, 3, 32, 32), jpeg_quality=50)
    assert lr.shape == (2, 3, 8, 8)
    with pytest.raises(ValueError, match="quality"):
        jpeg_compress(smooth, 0)
