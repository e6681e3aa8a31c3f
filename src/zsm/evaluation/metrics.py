"""Image quality metrics as the video super-resolution literature computes them.

- Scores are on the luma channel Y of ITU-R BT.601 in studio range (16-235),
  computed in float from 8-bit RGB (as the Zooming Slow-Mo and BasicSR test
  code do; MATLAB's ``rgb2ycbcr`` on uint8 would also round Y to integers).
- Outputs are scored after rounding to uint8, like saved PNGs: the functions
  here take uint8 RGB frames only, so nothing unrounded slips through.
- ``crop_border`` pixels are removed on every side before scoring (default 0:
  none; many image-SR tables crop the scale factor, 4).
- SSIM is Wang et al.'s reference ``ssim.m`` (also what BasicSR and
  scikit-image with ``gaussian_weights=True, use_sample_covariance=False``
  compute): 11x11 Gaussian window with sigma 1.5, K1 = 0.01, K2 = 0.03,
  L = 255, averaged over the "valid" positions where the window fits.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

# ITU-R BT.601 luma for R, G, B in [0, 1], studio range: Y = 16 + Y' * 219.
_BT601_Y = np.array([65.481, 128.553, 24.966])
SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1, SSIM_K2 = 0.01, 0.03


def rgb_to_y(rgb: np.ndarray) -> np.ndarray:
    """uint8 RGB (..., H, W, 3) -> float64 Y (..., H, W) in [16, 235], ITU-R BT.601."""
    _check_uint8_rgb(rgb, "image")
    return rgb.astype(np.float64) @ (_BT601_Y / 255.0) + 16.0


def crop_border(image: np.ndarray, border: int) -> np.ndarray:
    """Drop ``border`` pixels from each side of (H, W, ...) ``image``."""
    if border < 0:
        raise ValueError(f"border crop must be >= 0, got {border}")
    if border == 0:
        return image
    h, w = image.shape[:2]
    if 2 * border >= min(h, w):
        raise ValueError(f"border crop {border} leaves nothing of a {w}x{h} frame")
    return image[border:-border, border:-border]


def psnr(a: np.ndarray, b: np.ndarray, *, data_range: float = 255.0) -> float:
    """Peak signal-to-noise ratio in dB of two same-shape arrays; ``inf`` when identical."""
    _check_same_shape(a, b)
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10.0 * math.log10(data_range**2 / mse)


def gaussian_window(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> np.ndarray:
    """Normalised 1D Gaussian taps; their outer product is MATLAB's ``fspecial('gaussian')``."""
    x = np.arange(size) - (size - 1) / 2
    g = np.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


def ssim(a: np.ndarray, b: np.ndarray, *, data_range: float = 255.0) -> float:
    """Mean SSIM of two same-shape 2D images (Wang et al. 2004, valid window positions)."""
    _check_same_shape(a, b)
    if a.ndim != 2:
        raise ValueError(f"ssim takes single-channel 2D images, got shape {a.shape}")
    if min(a.shape) < SSIM_WINDOW:
        raise ValueError(
            f"ssim needs at least {SSIM_WINDOW}x{SSIM_WINDOW} pixels, got {a.shape[1]}x{a.shape[0]}"
        )
    x, y = a.astype(np.float64), b.astype(np.float64)
    g = gaussian_window()
    pad = SSIM_WINDOW // 2

    def blur(img: np.ndarray) -> np.ndarray:
        # Separable Gaussian, then keep only positions where the window fits (MATLAB 'valid').
        return cv2.sepFilter2D(img, cv2.CV_64F, g, g)[pad:-pad, pad:-pad]

    c1 = (SSIM_K1 * data_range) ** 2
    c2 = (SSIM_K2 * data_range) ** 2
    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x**2
    var_y = blur(y * y) - mu_y**2
    cov = blur(x * y) - mu_x * mu_y
    num = (2 * mu_x * mu_y + c1) * (2 * cov + c2)
    den = (mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2)
    return float(np.mean(num / den))


def psnr_y(output: np.ndarray, target: np.ndarray, *, border: int = 0) -> float:
    """PSNR on Y (BT.601, 16-235) of two uint8 RGB frames (H, W, 3), ``border`` px cropped."""
    _check_same_shape(output, target)
    return psnr(crop_border(rgb_to_y(output), border), crop_border(rgb_to_y(target), border))


def ssim_y(output: np.ndarray, target: np.ndarray, *, border: int = 0) -> float:
    """SSIM on Y (BT.601, 16-235) of two uint8 RGB frames (H, W, 3), ``border`` px cropped."""
    _check_same_shape(output, target)
    return ssim(crop_border(rgb_to_y(output), border), crop_border(rgb_to_y(target), border))


def _check_same_shape(a: np.ndarray, b: np.ndarray) -> None:
    if a.shape != b.shape:
        raise ValueError(f"images differ in shape: {a.shape} vs {b.shape}")


def _check_uint8_rgb(image: np.ndarray, name: str) -> None:
    if image.dtype != np.uint8 or image.ndim < 3 or image.shape[-1] != 3:
        raise ValueError(
            f"{name} must be uint8 RGB (..., H, W, 3), got dtype {image.dtype} shape {image.shape}"
        )


class LPIPS:
    """Learned perceptual distance (Zhang et al. 2018) through the optional ``lpips`` package.

    Install with ``pip install "zsm[lpips]"``. The package ships its linear
    heads, but the AlexNet backbone comes from torchvision's pretrained weights,
    which must already be in the torch hub cache (they are fetched on first use
    where a network is available).
    """

    def __init__(self, *, net: str = "alex", device: str = "cpu") -> None:
        from zsm.errors import ZSMError

        try:
            import lpips  # type: ignore[import-not-found]
        except ImportError as exc:
            raise ZSMError('LPIPS needs the optional package: pip install "zsm[lpips]"') from exc
        try:
            self._model = lpips.LPIPS(net=net, verbose=False).to(device).eval()
        except Exception as exc:  # network or cache failure inside the package
            raise ZSMError(f"LPIPS could not load its {net} backbone weights: {exc}") from exc
        self._device = device

    def __call__(self, output: np.ndarray, target: np.ndarray) -> float:
        """Distance between two uint8 RGB frames (H, W, 3); lower is better."""
        import torch

        _check_same_shape(output, target)
        _check_uint8_rgb(output, "output")

        def to_tensor(img: np.ndarray) -> torch.Tensor:
            t = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)[None].float()
            return (t / 127.5 - 1.0).to(self._device)  # lpips expects [-1, 1]

        with torch.no_grad():
            return float(self._model(to_tensor(output), to_tensor(target)).item())
