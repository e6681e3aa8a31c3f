"""The CPU deformable conv under bf16 autocast: fp32 sampling, bf16 GEMMs, both passes.

bf16 activations are read by the native kernel as they are, into bf16 columns."""

from __future__ import annotations

import pytest
import torch

from zsm.ops.dcn import modulated_deform_conv2d, native_available
from zsm.ops.dcn.function import deform_conv2d_cpu, make_sampler
from zsm.ops.dcn.geometry import geometry, group_major
from zsm.ops.dcn.native_sampler import NativeSampler

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


needs_native = pytest.mark.skipif(not native_available(), reason="no C compiler for the kernel")


@needs_native
@pytest.mark.parametrize("nhwc", [False, True])
@pytest.mark.parametrize("channels", [16, 12], ids=["Cg8", "Cg6"])
def test_bf16_activations_are_sampled_natively_as_they_are(
    nhwc: bool, channels: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """bf16 input with a bf16 GEMM: the kernel reads bf16 and writes bf16 columns (no widened
    copy of the input, no conversion of the columns), sampling in float32: the very numbers
    of the widened input, both passes."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, channels, 9, 11, generator=g).bfloat16()
    if nhwc:
        x = x.contiguous(memory_format=torch.channels_last)
    _, offset, mask, _, bias = _case(nhwc)
    weight = 0.1 * torch.randn(24, channels, 3, 3, generator=g)
    seen: list[tuple[torch.dtype, torch.dtype]] = []
    init = NativeSampler.__init__

    def spy(self, lib, x, offset, mask, geo, cols_dtype=torch.float32) -> None:
        seen.append((x.dtype, cols_dtype))
        init(self, lib, x, offset, mask, geo, cols_dtype)

    monkeypatch.setattr(NativeSampler, "__init__", spy)
    a, b = x.clone().requires_grad_(), x.float().requires_grad_()
    got = deform_conv2d_cpu(a, offset, mask, weight, bias, 1, gemm_dtype=torch.bfloat16)
    assert seen == [(torch.bfloat16, torch.bfloat16)]  # the forward pass: bf16 in, bf16 out
    ref = deform_conv2d_cpu(b, offset, mask, weight, bias, 1, gemm_dtype=torch.bfloat16)
    assert got.dtype == torch.bfloat16 and torch.equal(got, ref)
    grad = torch.randn(got.shape, generator=g).bfloat16()
    got.backward(grad)
    ref.backward(grad)
    # the backward pass samples a float32 copy (col2im reads float32) into bf16 columns
    assert (torch.float32, torch.bfloat16) in seen[1:]
    assert a.grad is not None and b.grad is not None and a.grad.dtype == torch.bfloat16
    assert torch.equal(a.grad, b.grad.bfloat16())


@needs_native
def test_bf16_columns_round_to_nearest_even_as_torch_does() -> None:
    """The kernel's float32 -> bf16 rounding of the columns is torch's (ties to even, NaN kept)."""
    x = torch.randn(1, 8, 6, 7, dtype=torch.float64).float()
    x[0, 0, 0, :3] = torch.tensor([float("nan"), float("inf"), 1.0 + 2**-8])  # a tie: to even
    offset = torch.zeros(1, 18, 6, 7)  # integer positions: the columns are x itself
    mask = torch.ones(1, 9, 6, 7)
    geo = geometry(x, offset, mask, torch.empty(8, 8, 3, 3), 1)
    wide = make_sampler(group_major(x, geo), offset, mask, geo, True)
    narrow = make_sampler(group_major(x, geo), offset, mask, geo, True, torch.bfloat16)
    assert isinstance(narrow, NativeSampler)
    cols = narrow.im2col(0).clone()
    want = wide.im2col(0).bfloat16()
    assert cols.dtype == torch.bfloat16
    nan = want.isnan()
    assert nan.any() and torch.equal(cols.isnan(), nan)  # (NaN payloads may differ)
    assert torch.equal(cols[~nan].view(torch.int16), want[~nan].view(torch.int16))
    # positions 1 and 2, the kernel's centre (column 4 * Cg), channel 0: x[0, 0, 0, 1:3]
    assert cols[1, 32].item() == float("inf") and cols[2, 32].item() == 1.0  # a tie: to even
