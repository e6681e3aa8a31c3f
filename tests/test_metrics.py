"""PSNR/SSIM on Y against known values and scikit-image as an independent reference."""

from __future__ import annotations

import importlib.util
import math

import numpy as np
import pytest
from skimage import data as skdata
from skimage.color import rgb2ycbcr
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from zsm.errors import ZSMError
from zsm.evaluation import LPIPS, crop_border, psnr, psnr_y, rgb_to_y, ssim, ssim_y


def _wang_ssim_reference(a: np.ndarray, b: np.ndarray) -> float:
    # scikit-image's documented settings for Wang et al.'s MATLAB ssim.m.
    return structural_similarity(
        a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255
    )


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    return skdata.astronaut()[100:228, 150:310]  # uint8 RGB (128, 160, 3)


def _degraded(image: np.ndarray, seed: int, amount: int = 25) -> np.ndarray:
    noise = np.random.default_rng(seed).integers(-amount, amount + 1, image.shape)
    return np.clip(image.astype(int) + noise, 0, 255).astype(np.uint8)


def test_y_channel_known_values_and_skimage() -> None:
    colors = np.array([[[0, 0, 0], [255, 255, 255], [255, 0, 0], [0, 255, 0]]], dtype=np.uint8)
    np.testing.assert_allclose(rgb_to_y(colors)[0], [16.0, 235.0, 16 + 65.481, 16 + 128.553])
    image = np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    np.testing.assert_allclose(rgb_to_y(image), rgb2ycbcr(image)[..., 0], atol=1e-10)


def test_psnr_known_values() -> None:
    a = np.zeros((8, 8))
    assert psnr(a, a + 1) == pytest.approx(20 * math.log10(255), abs=1e-12)  # MSE 1: 48.13 dB
    assert psnr(a, a + 255) == pytest.approx(0.0, abs=1e-12)
    assert psnr(a, a) == math.inf
    b = a.copy()
    b[0, 0] = 16  # MSE = 256 / 64 = 4
    assert psnr(a, b) == pytest.approx(10 * math.log10(255**2 / 4), abs=1e-12)


def test_psnr_y_matches_skimage(photo: np.ndarray) -> None:
    noisy = _degraded(photo, 1)
    expected = peak_signal_noise_ratio(
        rgb2ycbcr(photo)[..., 0], rgb2ycbcr(noisy)[..., 0], data_range=255
    )
    assert psnr_y(noisy, photo) == pytest.approx(expected, abs=1e-9)


def test_ssim_matches_skimage_within_1e3(photo: np.ndarray) -> None:
    y = rgb_to_y(photo)
    for other in (_degraded(photo, 2), _degraded(photo, 3, 60), np.roll(photo, 2, axis=1)):
        ours = ssim_y(other, photo)
        assert abs(ours - _wang_ssim_reference(rgb_to_y(other), y)) < 1e-3
        assert ours == pytest.approx(_wang_ssim_reference(rgb_to_y(other), y), abs=1e-9)


def test_ssim_known_values() -> None:
    assert ssim(np.full((16, 16), 50.0), np.full((16, 16), 50.0)) == pytest.approx(1.0)
    # Flat images: no variance, so SSIM is the luminance term alone.
    c1 = (0.01 * 255) ** 2
    expected = (2 * 100 * 120 + c1) / (100**2 + 120**2 + c1)
    assert ssim(np.full((16, 20), 100.0), np.full((16, 20), 120.0)) == pytest.approx(expected)
    # An image and its negative: structure term -1 where there is contrast.
    rng = np.random.default_rng(4)
    img = rng.integers(0, 256, (32, 32)).astype(float)
    assert ssim(img, 255 - img) < 0


def test_border_crop(photo: np.ndarray) -> None:
    noisy = _degraded(photo, 5)
    y, yn = rgb_to_y(photo)[4:-4, 4:-4], rgb_to_y(noisy)[4:-4, 4:-4]
    assert psnr_y(noisy, photo, border=4) == pytest.approx(
        peak_signal_noise_ratio(y, yn, data_range=255), abs=1e-9
    )
    assert ssim_y(noisy, photo, border=4) == pytest.approx(_wang_ssim_reference(yn, y), abs=1e-9)
    assert crop_border(photo, 0) is photo
    with pytest.raises(ValueError, match="leaves nothing"):
        crop_border(photo, 64)


def test_bad_inputs_are_refused(photo: np.ndarray) -> None:
    with pytest.raises(ValueError, match="uint8"):
        psnr_y(photo.astype(np.float32), photo.astype(np.float32))
    with pytest.raises(ValueError, match="shape"):
        psnr_y(photo, photo[:-1])
    with pytest.raises(ValueError, match="11x11"):
        ssim(np.zeros((10, 40)), np.zeros((10, 40)))


@pytest.mark.skipif(importlib.util.find_spec("lpips") is not None, reason="lpips installed")
def test_lpips_without_the_package_says_how_to_install() -> None:
    with pytest.raises(ZSMError, match=r"zsm\[lpips\]"):
        LPIPS()
