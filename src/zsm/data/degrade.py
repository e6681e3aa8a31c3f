"""The degradation shared by training and evaluation: MATLAB-style bicubic x4, odd frames kept.

Space-time SR benchmarks (Vid4, Vimeo-90K, as used by Zooming Slow-Mo) build
their LR inputs with MATLAB's ``imresize(hr, 1/4, 'bicubic')``: Keys' cubic
kernel with a = -0.5, stretched by the scale when shrinking (antialiasing),
weights normalised to sum to one, and "symmetric" boundaries (the edge pixel
repeated: ``... b a | a b c ... x y | y x ...``). Any other resize (PIL, OpenCV,
``torch.nn.functional.interpolate``) differs in kernel, antialiasing or
borders, and scores against the benchmarks' numbers stop being comparable.

Why our own implementation rather than a library: ``resize-right`` (PyPI
0.0.2, last released 2022) is the candidate that claims MATLAB equivalence.
Measured here, it matches MATLAB only for numpy input with
``pad_mode="symmetric"``; its default zero padding is off by up to 0.11 (of
1.0) at the borders, and for torch tensors, which training needs on the
GPU, there is no symmetric padding mode at all (``reflect`` is off by 0.05).
The algorithm is short, so it lives here: for integer factors the weights are
periodic, which turns each axis into one strided (down) or polyphase (up)
``conv1d`` on a mirror-padded signal. ``tests/test_degrade.py`` checks it
against an independent float64 transcription of MATLAB's ``contributions()``,
against exact kernel values, and against Pillow's bicubic (same kernel,
different borders) away from the borders.

All frames are RGB; float tensors are in [0, 1] with layout (..., C, H, W).
"""

from __future__ import annotations

import io
import math
from functools import lru_cache

import numpy as np
import torch
from PIL import Image
from torch.nn import functional as F

SCALE = 4


def matlab_cubic(x: np.ndarray) -> np.ndarray:
    """Keys' cubic convolution kernel with a = -0.5 (MATLAB ``imresize``'s ``cubic``)."""
    ax = np.abs(x)
    near = 1.5 * ax**3 - 2.5 * ax**2 + 1.0  # |x| <= 1
    far = -0.5 * ax**3 + 2.5 * ax**2 - 4.0 * ax + 2.0  # 1 < |x| <= 2
    return np.where(ax <= 1, near, np.where(ax <= 2, far, 0.0))


@lru_cache(maxsize=32)
def _down_kernel(factor: int) -> tuple[np.ndarray, int]:
    """Taps of a 1/factor shrink (same for every output) and the input offset of tap 0.

    0-based, output i is centred on input coordinate ``factor * i + (factor - 1) / 2``
    (MATLAB's ``u = x/scale + 0.5 * (1 - 1/scale)`` shifted by one); the kernel is
    ``cubic(d / factor) / factor``, support 4 * factor input pixels.
    """
    centre = (factor - 1) / 2
    first = math.floor(centre - 2 * factor)  # leftmost tap that can carry weight
    taps = np.arange(first, math.ceil(centre + 2 * factor) + 1)
    weights = matlab_cubic((centre - taps) / factor)
    return weights / weights.sum(), first


@lru_cache(maxsize=32)
def _up_kernels(factor: int) -> np.ndarray:
    """(factor, 5) taps of an x factor enlargement, one row per output phase.

    Output ``factor * m + r`` is centred on input coordinate ``m + (r + 0.5) / factor - 0.5``,
    which lies within half a pixel of m, so taps m-2..m+2 cover the kernel's support of 2.
    """
    phase = (np.arange(factor) + 0.5) / factor - 0.5  # (factor,)
    offsets = np.arange(-2, 3)  # (5,)
    weights = matlab_cubic(phase[:, None] - offsets[None, :])
    return weights / weights.sum(axis=1, keepdims=True)


def _mirror_index(start: int, stop: int, length: int) -> np.ndarray:
    """Indices start..stop-1 folded into 0..length-1 the way MATLAB does (edge repeated)."""
    aux = np.concatenate([np.arange(length), np.arange(length - 1, -1, -1)])
    return aux[np.mod(np.arange(start, stop), 2 * length)]


def _resize_last_axis(x: torch.Tensor, factor: int, *, down: bool) -> torch.Tensor:
    """MATLAB bicubic resize of the last axis of ``x`` by an integer factor (down or up)."""
    length = x.shape[-1]
    lead = x.shape[:-1]
    flat = x.reshape(-1, 1, length)  # conv1d wants (N, C=1, L)
    if down:
        taps, first = _down_kernel(factor)
        n_out = length // factor
        stop = first + factor * (n_out - 1) + len(taps)
        padded = flat.index_select(-1, _as_index(_mirror_index(first, stop, length), x))
        kernel = torch.as_tensor(taps, dtype=x.dtype, device=x.device).view(1, 1, -1)
        out = F.conv1d(padded, kernel, stride=factor)  # (N, 1, n_out)
        return out.reshape(*lead, n_out)
    taps = _up_kernels(factor)
    padded = flat.index_select(-1, _as_index(_mirror_index(-2, length + 2, length), x))
    kernel = torch.as_tensor(taps, dtype=x.dtype, device=x.device).unsqueeze(1)  # (f, 1, 5)
    out = F.conv1d(padded, kernel)  # (N, factor, L): one channel per output phase
    return out.transpose(1, 2).reshape(*lead, length * factor)  # interleave the phases


def _as_index(index: np.ndarray, like: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(index, dtype=torch.long, device=like.device)


def _check_factor(scale: int) -> int:
    if isinstance(scale, bool) or not isinstance(scale, int) or scale < 1:
        raise ValueError(f"scale must be a positive integer, got {scale!r}")
    return scale


def _resize(x: torch.Tensor, scale: int, *, down: bool) -> torch.Tensor:
    if x.dim() < 2:
        raise ValueError(f"expected a tensor (..., H, W), got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"expected a float tensor in [0, 1], got dtype {x.dtype}")
    # Rows first, then columns: MATLAB's order for equal scales (the result is the
    # same either way up to rounding, as the resize is separable and linear).
    x = _resize_last_axis(x.transpose(-1, -2), scale, down=down).transpose(-1, -2)
    return _resize_last_axis(x, scale, down=down)


def _to_uint8(x: np.ndarray) -> np.ndarray:
    """Clamp and round half away from zero, as MATLAB converts double to uint8."""
    return np.floor(np.clip(x, 0.0, 255.0) + 0.5).astype(np.uint8)


def quantize(x: torch.Tensor) -> torch.Tensor:
    """Float in [0, 1] -> the nearest of the 256 8-bit levels (clamped), still float."""
    return torch.floor(x.clamp(0.0, 1.0) * 255.0 + 0.5) / 255.0


def bicubic_downscale(frames: torch.Tensor | np.ndarray, scale: int = SCALE):
    """MATLAB ``imresize(frames, 1/scale, 'bicubic')`` (antialiased), H and W divisible by scale.

    ``frames``: a float tensor (..., C, H, W) in [0, 1] -> float tensor (..., C, H/s, W/s),
    not clamped (bicubic overshoots slightly, as in MATLAB on doubles); or, for
    convenience, a numpy uint8 image (H, W, 3) -> uint8 (H/s, W/s, 3), rounded and
    clamped as MATLAB does for uint8 input. Sizes not divisible by ``scale`` raise
    ``ValueError`` (crop first: benchmark frames are cropped to a multiple of 4).
    """
    scale = _check_factor(scale)
    if isinstance(frames, np.ndarray):
        return _numpy_uint8(frames, scale, down=True)
    h, w = frames.shape[-2:]
    if h % scale or w % scale:
        raise ValueError(
            f"frame size {w}x{h} (WxH) is not divisible by the scale {scale}; "
            f"crop it to {w - w % scale}x{h - h % scale} first"
        )
    return _resize(frames, scale, down=True)


def bicubic_upscale(frames: torch.Tensor | np.ndarray, scale: int = SCALE):
    """MATLAB ``imresize(frames, scale, 'bicubic')``: float (..., C, H, W) -> (..., C, sH, sW).

    A numpy uint8 image (H, W, 3) gives uint8 (sH, sW, 3), rounded and clamped.
    """
    scale = _check_factor(scale)
    if isinstance(frames, np.ndarray):
        return _numpy_uint8(frames, scale, down=False)
    return _resize(frames, scale, down=False)


def _numpy_uint8(image: np.ndarray, scale: int, *, down: bool) -> np.ndarray:
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(
            f"expected a uint8 image (H, W, 3), got dtype {image.dtype} shape {image.shape}"
        )
    x = torch.from_numpy(image.astype(np.float64)).permute(2, 0, 1)  # (3, H, W), 0..255
    y = (bicubic_downscale if down else bicubic_upscale)(x, scale)
    return _to_uint8(y.permute(1, 2, 0).numpy())


def add_gaussian_noise(
    x: torch.Tensor, sigma: float, *, generator: torch.Generator | None = None
) -> torch.Tensor:
    """``x`` plus white Gaussian noise of standard deviation ``sigma`` (in [0, 1] units)."""
    if sigma < 0:
        raise ValueError(f"noise sigma must be >= 0, got {sigma}")
    if sigma == 0:
        return x
    noise = torch.randn(x.shape, generator=generator, dtype=x.dtype, device="cpu")
    return x + sigma * noise.to(x.device)


def jpeg_compress(frames: torch.Tensor, quality: int) -> torch.Tensor:
    """Encode and decode each RGB frame of (..., 3, H, W) in [0, 1] as JPEG at ``quality``."""
    if not 1 <= quality <= 100:
        raise ValueError(f"JPEG quality must be in 1..100, got {quality}")
    if frames.dim() < 3 or frames.shape[-3] != 3:
        raise ValueError(f"expected RGB frames (..., 3, H, W), got {tuple(frames.shape)}")
    flat = frames.reshape(-1, *frames.shape[-3:])
    images = _to_uint8(flat.detach().cpu().permute(0, 2, 3, 1).double().numpy() * 255.0)
    out = np.empty_like(images)
    for i, image in enumerate(images):
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="JPEG", quality=int(quality))
        out[i] = np.asarray(Image.open(buffer).convert("RGB"))
    decoded = torch.from_numpy(out).permute(0, 3, 1, 2).to(frames.dtype) / 255.0
    return decoded.reshape(frames.shape).to(frames.device)


def make_lr_clip(
    hr: torch.Tensor | np.ndarray,
    *,
    scale: int = SCALE,
    quantize_lr: bool = True,
    noise_sigma: float = 0.0,
    jpeg_quality: int | None = None,
    generator: torch.Generator | None = None,
):
    """HR clip -> (LR inputs, HR ground truth): frames 0, 2, 4, ... shrunk by ``scale``, all T kept.

    In the benchmarks' 1-based words: the odd frames 1, 3, 5, 7 of a Vimeo
    septuplet are the input and all seven are the target. Any T >= 1 works;
    with odd T the model's 2n-1 outputs for the n = (T+1)/2 inputs are exactly
    the T targets (with even T the last target has no right neighbour).

    ``hr``: float tensor (T, 3, H, W) in [0, 1] -> (float (n, 3, H/s, W/s), ``hr``);
    or numpy uint8 (T, H, W, 3) -> (uint8 (n, H/s, W/s, 3), ``hr``).

    ``quantize_lr`` rounds the LR frames to 8-bit levels (clamped), as benchmark
    LR frames are stored as PNGs; the uint8 path always does. Augmentation for
    training, off by default: ``noise_sigma`` adds Gaussian noise before the
    rounding; ``jpeg_quality`` then JPEG-compresses each LR frame.
    """
    if isinstance(hr, np.ndarray):
        if hr.dtype != np.uint8 or hr.ndim != 4 or hr.shape[-1] != 3:
            raise ValueError(
                f"expected a uint8 clip (T, H, W, 3), got dtype {hr.dtype} shape {hr.shape}"
            )
        if len(hr) < 1:
            raise ValueError("expected at least one HR frame, got 0")
        # A few input frames at a time: float64 copies of a whole clip would take 8x its
        # bytes (5 GB peak for a 250-frame 640x272 clip when done at once).
        chunks = []
        for start in range(0, (len(hr) + 1) // 2, _UINT8_CHUNK):
            kept = hr[2 * start : 2 * (start + _UINT8_CHUNK) : 2]
            frames = torch.from_numpy(kept.astype(np.float64)).permute(0, 3, 1, 2) / 255.0
            lr = _degrade(frames, scale, True, noise_sigma, jpeg_quality, generator)
            chunks.append(_to_uint8(lr.permute(0, 2, 3, 1).numpy() * 255.0))
        return np.concatenate(chunks), hr
    if hr.dim() != 4 or hr.shape[1] != 3:
        raise ValueError(f"expected an HR clip (T, 3, H, W), got shape {tuple(hr.shape)}")
    if hr.shape[0] < 1:
        raise ValueError("expected at least one HR frame, got 0")
    return _degrade(hr[0::2], scale, quantize_lr, noise_sigma, jpeg_quality, generator), hr


_UINT8_CHUNK = 4  # input frames degraded at once on the uint8 path


def _degrade(
    frames: torch.Tensor,
    scale: int,
    quantize_lr: bool,
    noise_sigma: float,
    jpeg_quality: int | None,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """The LR version of every one of ``frames`` (float (t, 3, H, W)): see make_lr_clip."""
    lr = bicubic_downscale(frames, scale)
    lr = add_gaussian_noise(lr, noise_sigma, generator=generator)
    if quantize_lr or jpeg_quality is not None:
        lr = quantize(lr)
    if jpeg_quality is not None:
        lr = jpeg_compress(lr, jpeg_quality)
    return lr
