"""GPU paths: CUDA results against the CPU reference, and half precision against fp32.

Skipped where no CUDA device is present (CI has none); run on a GPU machine with
``pytest tests/test_gpu.py``. Figures are printed (``-s``) for the notes.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from zsm.device import precision
from zsm.models import ZoomingSlowMo, ZSMConfig
from zsm.ops.dcn import modulated_deform_conv2d
from zsm.upscale import upscale_frames

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

CUDA = torch.device("cuda")


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = (a.double() - b.double()).pow(2).mean().item()
    return float("inf") if mse == 0 else 10 * np.log10(1.0 / mse)


def _trained_like(config: ZSMConfig, seed: int = 0) -> ZoomingSlowMo:
    """A random network whose offsets are a few pixels, as a trained one's are."""
    from zsm.bench import realistic_offsets

    torch.manual_seed(seed)
    model = ZoomingSlowMo(config).eval()
    probe = torch.rand(1, 2, 3, 32, 32)
    realistic_offsets(model, lambda: model(probe))
    return model


def test_cuda_dcn_equals_cpu_backend() -> None:
    """torchvision's CUDA kernel and our CPU kernel agree, forward and gradients."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 16, 12, 15, generator=gen)
    offset = 2 * torch.randn(2, 2 * 9 * 4, 12, 15, generator=gen)
    mask = torch.rand(2, 9 * 4, 12, 15, generator=gen)
    weight = 0.1 * torch.randn(8, 16, 3, 3, generator=gen)
    bias = torch.randn(8, generator=gen)

    def run(device: torch.device, backend: str) -> list[torch.Tensor]:
        args = [t.detach().to(device).requires_grad_(True) for t in (x, offset, mask, weight, bias)]
        out = modulated_deform_conv2d(*args, padding=1, backend=backend)
        out.square().sum().backward()
        return [out.detach().cpu()] + [a.grad.cpu() for a in args]

    cpu = run(torch.device("cpu"), "cpu")
    gpu = run(CUDA, "torchvision")
    for name, a, b in zip(("out", "x", "offset", "mask", "weight", "bias"), cpu, gpu, strict=True):
        scale = a.abs().max().item() + 1e-6
        assert (a - b).abs().max().item() <= 1e-4 * max(1.0, scale), name


def test_cuda_forward_equals_cpu() -> None:
    model = _trained_like(ZSMConfig(nf=16, groups=4, front_RBs=1, back_RBs=1, hr_nf=16))
    x = torch.rand(1, 3, 3, 20, 28)
    with torch.no_grad():
        cpu = model(x)
        gpu = model.to(CUDA)(x.to(CUDA)).cpu()
    assert (cpu - gpu).abs().max().item() < 1e-4


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_is_close_to_fp32(dtype: torch.dtype) -> None:
    """The official-size network under autocast stays within a few 8-bit levels of fp32."""
    model = _trained_like(ZSMConfig(nf=64, groups=8, front_RBs=5, back_RBs=10)).to(CUDA)
    x = torch.rand(1, 3, 3, 64, 64, device=CUDA)
    with precision(CUDA, None):
        ref = model(x).float()
    with precision(CUDA, dtype):
        out = model(x).float()
    assert torch.isfinite(out).all()
    psnr = _psnr(out.clamp(0, 1), ref.clamp(0, 1))
    print(f"{dtype}: PSNR vs fp32 {psnr:.1f} dB, max abs {(out - ref).abs().max().item():.4f}")
    assert psnr > 40.0


def test_upscale_frames_half_on_cuda_matches_cpu() -> None:
    model = _trained_like(ZSMConfig(nf=16, groups=4, front_RBs=1, back_RBs=1, hr_nf=16))
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (24, 32, 3), dtype=np.uint8) for _ in range(5)]
    cpu = np.stack(list(upscale_frames(frames, model=model, device="cpu", window=3)))
    gpu = np.stack(list(upscale_frames(frames, model=model, device="cuda", half=True, window=3)))
    assert cpu.shape == gpu.shape == (10, 96, 128, 3)
    diff = np.abs(cpu.astype(int) - gpu.astype(int))
    print(f"fp16 on CUDA vs fp32 on CPU: max {diff.max()} levels, mean {diff.mean():.3f}")
    assert diff.mean() < 0.5
    assert diff.max() <= 8


def test_channels_last_changes_nothing_on_cuda() -> None:
    model = _trained_like(ZSMConfig(nf=32, groups=4, front_RBs=1, back_RBs=2)).to(CUDA)
    x = torch.rand(1, 3, 3, 40, 48, device=CUDA)
    with precision(CUDA, None):
        ref = model(x)
        out = model.to(memory_format=torch.channels_last)(x)
    assert (out - ref).abs().max().item() < 1e-4
