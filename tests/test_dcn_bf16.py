"""The CPU deformable conv under bf16 autocast: fp32 sampling, bf16 GEMMs, both passes."""

from __future__ import annotations

import pytest
import torch

from zsm.ops.dcn import modulated_deform_conv2d
from zsm.ops.dcn.function import deform_conv2d_cpu

pytestmark = pytest.mark.usefixtures("single_thread")


def _case(nhwc: bool, batch: int = 2, seed: int = 0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    b, c, h, w, groups = batch, 16, 9, 11, 2
    x = torch.randn(b, c, h, w, generator=g)
    if nhwc:
        x = x.contiguous(memory_format=torch.channels_last)
    offset = 1.5 * torch.randn(b, 2 * groups * 9, h, w, generator=g)
    mask = torch.rand(b, groups * 9, h, w, generator=g)
    weight = 0.1 * torch.randn(24, c, 3, 3, generator=g)
    bias = torch.randn(24, generator=g)
    return x, offset, mask, weight, bias


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().float(), b.detach().float()
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("nhwc", [False, True])
@pytest.mark.parametrize("native", [True, False])
def test_bf16_gemm_matches_fp32_to_bf16_rounding(nhwc: bool, native: bool) -> None:
    x, offset, mask, weight, bias = _case(nhwc)
    leaves = [t.requires_grad_() for t in (x, offset, mask, weight, bias)]
    ref = deform_conv2d_cpu(*leaves, 1, native=native)
    got = deform_conv2d_cpu(*leaves, 1, native=native, gemm_dtype=torch.bfloat16)
    assert got.dtype == torch.bfloat16 and got.shape == ref.shape
    assert _rel(got, ref) < 1e-2  # bf16 has 8 bits of mantissa: ~0.4% per value
    g = torch.randn_like(ref)
    want = torch.autograd.grad(ref, leaves, g)
    have = torch.autograd.grad(got, leaves, g.bfloat16())
    for name, a, b in zip(("x", "offset", "mask", "weight", "bias"), have, want, strict=True):
        assert a.dtype == b.dtype == torch.float32, name
        assert _rel(a, b) < 2e-2, name


def test_autocast_runs_the_cpu_gemm_in_bf16_and_keeps_sampling_fp32() -> None:
    x, offset, mask, weight, bias = _case(nhwc=True, batch=1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = modulated_deform_conv2d(x.bfloat16(), offset, mask, weight, bias, padding=1)
    assert got.dtype == torch.bfloat16
    ref = modulated_deform_conv2d(x.bfloat16().float(), offset, mask, weight, bias, padding=1)
    assert _rel(got, ref) < 1e-2
    # The torchvision backend has no bf16 GEMM: it runs fp32 under autocast.
    with torch.autocast("cpu", dtype=torch.bfloat16):
        tv = modulated_deform_conv2d(
            x, offset, mask, weight, bias, padding=1, backend="torchvision"
        )
    assert tv.dtype == torch.float32
