"""The native kernel's AVX-512 loops and its fused bf16 NHWC backward pass.

Each against the pure-PyTorch reference (the same bf16 GEMMs, float32 sampling),
with the SIMD loops on (where the CPU has them) and off (the portable fallback)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from zsm.ops.dcn import function, native_available
from zsm.ops.dcn.function import deform_conv2d_cpu
from zsm.ops.dcn.native import NativeLib, load_native
from zsm.ops.dcn.native_sampler import NativeSampler

pytestmark = [
    pytest.mark.usefixtures("single_thread"),
    pytest.mark.skipif(not native_available(), reason="no C compiler for the kernel"),
]

SRC = Path(__file__).resolve().parents[1] / "src"


def _lib() -> NativeLib:
    lib = load_native()
    assert lib is not None
    return lib


@pytest.fixture(params=["simd", "portable"])
def simd(request: pytest.FixtureRequest) -> Iterator[bool]:
    """The SIMD loops on (skipped without AVX-512 BF16), or the portable ones."""
    lib, on = _lib(), request.param == "simd"
    if lib.set_simd(on) != int(on):
        lib.set_simd(None)
        pytest.skip("no AVX-512 BF16 on this CPU")
    yield on
    lib.set_simd(True)


# (batch, channels, offset groups, H, W): Cg 8 and 16 (the SIMD rows), odd Cg, one group
SHAPES = [(2, 32, 4, 7, 9), (1, 32, 2, 5, 13), (2, 15, 5, 6, 5), (1, 8, 1, 11, 3)]


def _case(shape: tuple[int, ...], nhwc: bool, seed: int = 0) -> list[torch.Tensor]:
    b, c, groups, h, w = shape
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, c, h, w, generator=g)
    k = groups * 9
    both = torch.cat((2.0 * torch.randn(b, 2 * k, h, w, generator=g), torch.rand(b, k, h, w)), 1)
    if nhwc:  # as the network runs on a CPU: NHWC input, offsets and mask slices of one NHWC conv
        x = x.contiguous(memory_format=torch.channels_last)
        both = both.contiguous(memory_format=torch.channels_last)
    offset, mask = both[:, : 2 * k], both[:, 2 * k :]
    weight = 0.1 * torch.randn(12, c, 3, 3, generator=g)
    bias = torch.randn(12, generator=g)
    return [x, offset, mask, weight, bias]


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().float(), b.detach().float()
    return float((a - b).norm() / b.norm().clamp_min(1e-12))


def _run(
    leaves: list[torch.Tensor], native: bool, gemm: torch.dtype | None, grad: torch.Tensor
) -> list[torch.Tensor]:
    leaves = [t.detach().requires_grad_() for t in leaves]
    out = deform_conv2d_cpu(*leaves, 1, native=native, gemm_dtype=gemm)
    return [out, *torch.autograd.grad(out, leaves, grad.to(out.dtype))]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_bf16_nhwc_forward_and_gradients_match_the_pure_path(
    shape: tuple[int, ...], simd: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """bf16 NHWC input (the fused backward pass): output and every gradient."""
    leaves = _case(shape, nhwc=True)
    leaves[0] = leaves[0].bfloat16()
    grad = torch.randn(shape[0], 12, shape[3], shape[4])
    calls: list[int] = []
    fused = function._backward_nhwc_bf16

    def counted(*args: Any) -> tuple[torch.Tensor | None, ...]:
        calls.append(1)
        return fused(*args)

    monkeypatch.setattr(function, "_backward_nhwc_bf16", counted)
    got = _run(leaves, True, torch.bfloat16, grad)
    assert calls == [1]  # the path under test
    want = _run(leaves, False, torch.bfloat16, grad)
    names = ("out", "x", "offset", "mask", "weight", "bias")
    # The same bf16 columns and GEMMs: the output to bf16 rounding at most; the input,
    # offset and mask gradients from the same bf16 operands, summed in float32.
    tols = {"out": 1e-2, "x": 1e-4, "offset": 1e-4, "mask": 1e-4, "weight": 2e-2, "bias": 1e-6}
    for name, a, b in zip(names, got, want, strict=True):
        assert a.dtype == b.dtype and a.shape == b.shape, name
        assert _rel(a, b) < tols[name], name
    assert got[1].dtype == torch.bfloat16 and got[1].is_contiguous(
        memory_format=torch.channels_last
    )


@pytest.mark.parametrize("shape", SHAPES[:3], ids=lambda s: "x".join(map(str, s)))
def test_the_fused_backward_matches_the_general_one(
    shape: tuple[int, ...], simd: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    leaves = _case(shape, nhwc=True, seed=1)
    leaves[0] = leaves[0].bfloat16()
    grad = torch.randn(shape[0], 12, shape[3], shape[4])
    fused = _run(leaves, True, torch.bfloat16, grad)
    monkeypatch.setattr(function, "FUSED_BF16_BACKWARD", False)
    general = _run(leaves, True, torch.bfloat16, grad)
    for i, (a, b) in enumerate(zip(fused, general, strict=True)):
        assert _rel(a, b) < (2e-2 if i == 4 else 1e-4), i


@pytest.mark.parametrize("nhwc", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("shape", SHAPES[1:3], ids=lambda s: "x".join(map(str, s)))
def test_fp32_matches_the_pure_path(shape: tuple[int, ...], nhwc: bool, simd: bool) -> None:
    """float32 (the SIMD corners serve every im2col and col2im)."""
    leaves = _case(shape, nhwc)
    grad = torch.randn(shape[0], 12, shape[3], shape[4])
    got, want = _run(leaves, True, None, grad), _run(leaves, False, None, grad)
    for i, (a, b) in enumerate(zip(got, want, strict=True)):
        assert _rel(a, b) < 1e-5, i


def test_simd_and_portable_loops_agree_at_the_edges(monkeypatch: pytest.MonkeyPatch) -> None:
    """Positions at -1, 0, H-1, H, outside, NaN and infinite: the same columns either way
    (the backward's GEMMs through torch.mm both ways: the loops are under test)."""
    monkeypatch.setattr(function, "FUSED_BF16_BACKWARD_GEMMS", False)
    lib = _lib()
    leaves = _case((1, 16, 2, 5, 6), nhwc=True, seed=3)
    offset = leaves[1]
    special = torch.tensor([-1.0, 0.0, 4.0, 5.0, -7.5, 9.25, float("nan"), float("inf"), -0.0])
    flat = offset.permute(0, 2, 3, 1).reshape(-1)
    flat[: 8 * special.numel()] = special.repeat(8)
    leaves[1] = flat.view(1, 5, 6, -1).permute(0, 3, 1, 2)
    leaves[0] = leaves[0].bfloat16()
    grad = torch.randn(1, 12, 5, 6)
    if lib.set_simd(True) == 0:
        pytest.skip("no AVX-512 BF16 on this CPU")
    try:
        on = _run(leaves, True, torch.bfloat16, grad)
        lib.set_simd(False)
        off = _run(leaves, True, torch.bfloat16, grad)
    finally:
        lib.set_simd(True)
    for i, (a, b) in enumerate(zip(on, off, strict=True)):
        assert torch.isfinite(a).all() == torch.isfinite(b).all(), i
        assert _rel(a, b) < 1e-5, i


# Cg 8 with 9, 36, 45 and 72 (group, kernel point) pairs (full and partial blocks of 16),
# Cg 16; several tiles and images
PAIR_SHAPES = [(2, 32, 4, 12, 13), (1, 8, 1, 11, 3), (1, 40, 5, 5, 6), (1, 64, 8, 6, 7)]


@pytest.mark.parametrize("x_dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
@pytest.mark.parametrize("shape", [*PAIR_SHAPES, SHAPES[1]], ids=lambda s: "x".join(map(str, s)))
def test_the_per_position_forward_equals_the_per_tile_one(
    shape: tuple[int, ...], x_dtype: torch.dtype
) -> None:
    """The SIMD forward of NHWC offsets and mask, vectorised over the (group, kernel point)
    pairs of a position, makes the same bf16 columns, bit for bit, as the one vectorised
    over a tile's positions; edge, outside, NaN and infinite positions included."""
    lib = _lib()
    if lib.set_simd(True) == 0:
        pytest.skip("no AVX-512 BF16 on this CPU")
    leaves = _case(shape, nhwc=True, seed=4)
    flat = leaves[1].permute(0, 2, 3, 1).reshape(-1)  # NHWC: the offsets' own storage order
    special = torch.tensor([-1.0, 0.0, 4.0, 5.0, -7.5, 9.25, float("nan"), float("inf"), -0.0])
    flat[: 8 * special.numel()] = special.repeat(8)
    leaves[1] = flat.view(shape[0], shape[3], shape[4], -1).permute(0, 3, 1, 2)
    leaves[0] = leaves[0].to(x_dtype)
    try:
        new = deform_conv2d_cpu(*leaves, 1, native=True, gemm_dtype=torch.bfloat16)
        lib.set_simd(True, pairs=False)
        old = deform_conv2d_cpu(*leaves, 1, native=True, gemm_dtype=torch.bfloat16)
    finally:
        lib.set_simd(True)
    assert new.dtype == torch.bfloat16 and torch.isfinite(new).all()  # NaN positions weigh 0
    torch.testing.assert_close(new, old, rtol=0, atol=0)


def test_env_switch_keeps_the_portable_loops() -> None:
    code = "from zsm.ops.dcn.native import load_native; print(load_native().set_simd())"
    env = {**os.environ, "ZSM_DCN_SIMD": "0", "PYTHONPATH": str(SRC)}
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "0"


@pytest.mark.parametrize("shape", [SHAPES[0], SHAPES[3]], ids=lambda s: "x".join(map(str, s)))
def test_the_fused_backward_with_two_threads_matches_one(shape: tuple[int, ...]) -> None:
    """Parts split by offset groups (4 groups) or by images (1 group): the same gradients."""
    leaves = _case(shape, nhwc=True, seed=2)
    leaves[0] = leaves[0].bfloat16()
    grad = torch.randn(shape[0], 12, shape[3], shape[4])
    one = _run(leaves, True, torch.bfloat16, grad)
    torch.set_num_threads(2)  # the single_thread fixture restores the count
    two = _run(leaves, True, torch.bfloat16, grad)
    for i, (a, b) in enumerate(zip(one, two, strict=True)):
        assert _rel(a, b) < (2e-2 if i == 4 else 1e-5), i


# (batch, channels, offset groups, H, W, Cout): Cout 16, 32, 48, 64 and 144 (1 to 4
# blocks of 16 outputs, and 64 + 64 + 16); rows not a multiple of the 24-row blocks
FUSED_SHAPES = [
    (2, 32, 4, 7, 9, 16),
    (1, 32, 4, 12, 13, 32),
    (2, 16, 2, 5, 11, 48),
    (1, 64, 8, 6, 7, 64),
    (2, 16, 1, 9, 5, 144),
]


def _fused_case(shape: tuple[int, ...], bias: bool) -> list[Any]:
    b, c, groups, h, w, cout = shape
    leaves = _case((b, c, groups, h, w), nhwc=True, seed=5)
    g = torch.Generator().manual_seed(6)
    leaves[0] = leaves[0].bfloat16()
    leaves[3] = 0.1 * torch.randn(cout, c, 3, 3, generator=g)
    leaves[4] = torch.randn(cout, generator=g) if bias else None
    return leaves


def _run_bias(leaves: list[Any], grad: torch.Tensor) -> list[torch.Tensor]:
    """_run, where the bias may be None."""
    leaves = [t.detach().requires_grad_() if t is not None else None for t in leaves]
    out = deform_conv2d_cpu(*leaves, 1, native=True, gemm_dtype=torch.bfloat16)
    wrt = [t for t in leaves if t is not None]
    return [out, *torch.autograd.grad(out, wrt, grad.to(out.dtype))]


def _forward(leaves: list[Any], fused: bool, monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Point the forward at the fused kernel or not; the fused kernel's answers, recorded."""
    ran: list[bool] = []
    kernel = function.fused_forward_bf16

    def recorded(*args: Any) -> bool:
        ran.append(kernel(*args))
        return ran[-1]

    monkeypatch.setattr(function, "fused_forward_bf16", recorded)
    monkeypatch.setattr(function, "FUSED_BF16_FORWARD", fused)
    return ran


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
@pytest.mark.parametrize("shape", FUSED_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_the_fused_forward_matches_im2col_and_a_gemm(
    shape: tuple[int, ...], bias: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """bf16 NHWC input, NHWC offsets and mask: the columns sampled and multiplied a block
    of rows at a time (vdpbf16ps) give im2col + GEMM's output to bf16 rounding, and the
    same gradients (the backward pass does not depend on how the forward ran)."""
    if _lib().set_simd(True) == 0:
        pytest.skip("no AVX-512 BF16 on this CPU")
    leaves = _fused_case(shape, bias)
    grad = torch.randn(shape[0], shape[5], shape[3], shape[4])
    ran = _forward(leaves, True, monkeypatch)
    got = _run_bias(leaves, grad)
    assert ran == [True]
    _forward(leaves, False, monkeypatch)
    want = _run_bias(leaves, grad)
    assert got[0].dtype == torch.bfloat16
    assert got[0].is_contiguous(memory_format=torch.channels_last)
    # The same bf16 columns and weights, products exact in float32, sums in another
    # order: at most a unit or two in bf16's last place of the output
    torch.testing.assert_close(got[0].float(), want[0].float(), rtol=2**-7, atol=1e-3)
    assert _rel(got[0], want[0]) < 2e-3
    for a, b in zip(got[1:], want[1:], strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_the_fused_forward_with_two_threads_matches_one(monkeypatch: pytest.MonkeyPatch) -> None:
    """Parts split by rows, across images: each row's sums do not depend on the split."""
    if _lib().set_simd(True) == 0:
        pytest.skip("no AVX-512 BF16 on this CPU")
    leaves = _fused_case((3, 32, 4, 5, 7, 32), bias=True)
    ran = _forward(leaves, True, monkeypatch)
    one = deform_conv2d_cpu(*leaves, 1, native=True, gemm_dtype=torch.bfloat16)
    torch.set_num_threads(2)  # the single_thread fixture restores the count
    two = deform_conv2d_cpu(*leaves, 1, native=True, gemm_dtype=torch.bfloat16)
    assert ran == [True, True]
    torch.testing.assert_close(one, two, rtol=0, atol=0)


@pytest.mark.parametrize("case", ["cout-12", "nchw-offsets", "portable", "per-tile"])
def test_the_fused_forward_declines_what_it_cannot_run(
    case: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Cout not a multiple of 16, offsets not NHWC, or the SIMD loops off (or the forward
    asked per tile): the fused kernel declines and im2col + GEMM give the output."""
    lib = _lib()
    if lib.set_simd(True) == 0:
        pytest.skip("no AVX-512 BF16 on this CPU")
    shape = (1, 32, 4, 6, 5, 12 if case == "cout-12" else 32)
    leaves = _fused_case(shape, bias=True)
    if case == "nchw-offsets":
        leaves[1], leaves[2] = leaves[1].contiguous(), leaves[2].contiguous()
    ran = _forward(leaves, True, monkeypatch)
    try:
        if case == "portable":
            lib.set_simd(False)
        if case == "per-tile":
            lib.set_simd(True, pairs=False)
        got = deform_conv2d_cpu(*leaves, 1, native=True, gemm_dtype=torch.bfloat16)
        monkeypatch.setattr(function, "FUSED_BF16_FORWARD", False)
        want = deform_conv2d_cpu(*leaves, 1, native=True, gemm_dtype=torch.bfloat16)
    finally:
        lib.set_simd(True)
    assert ran == [False]
    torch.testing.assert_close(got, want, rtol=0, atol=0)


@pytest.mark.parametrize("cout", [12, 64, 2, 13])
@pytest.mark.parametrize(
    "shape", [SHAPES[0], SHAPES[1], (1, 64, 8, 6, 7)], ids=lambda s: "x".join(map(str, s))
)
def test_the_backward_gemms_made_tile_by_tile_match_torch_mm(
    shape: tuple[int, ...], cout: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """grad_col and grad_W made by the kernel tile by tile (vdpbf16ps, grad_W summed in
    float32) against chunks through torch.mm (grad_W rounded to bf16 per chunk): the
    input, offset and mask gradients alike, grad_W at least as close to float32 GEMMs'.
    An odd Cout declines and torch.mm does it all."""
    if _lib().set_simd(True) == 0:
        pytest.skip("no AVX-512 BF16 on this CPU")
    leaves = _case(shape, nhwc=True, seed=7)
    g = torch.Generator().manual_seed(8)
    leaves[0] = leaves[0].bfloat16()
    leaves[3] = 0.1 * torch.randn(cout, shape[1], 3, 3, generator=g)
    leaves[4] = torch.randn(cout, generator=g)
    grad = torch.randn(shape[0], cout, shape[3], shape[4], generator=g)
    ran: list[bool] = []
    fused_call = NativeSampler.backward_bf16_fused

    def recorded(self: NativeSampler, *args: Any) -> bool:
        ran.append(fused_call(self, *args))
        return ran[-1]

    monkeypatch.setattr(NativeSampler, "backward_bf16_fused", recorded)
    fused = _run(leaves, True, torch.bfloat16, grad)
    assert ran == [cout % 2 == 0]
    monkeypatch.setattr(function, "FUSED_BF16_BACKWARD_GEMMS", False)
    chunked = _run(leaves, True, torch.bfloat16, grad)
    assert len(ran) == 1
    exact = [leaves[0].float(), *leaves[1:]]  # float32 GEMMs of the same bf16 input
    ref = _run(exact, True, None, grad)
    torch.testing.assert_close(fused[0], chunked[0], rtol=0, atol=0)  # the same forward
    for i in (1, 2, 3, 5):  # x, offset, mask, bias
        assert _rel(fused[i], chunked[i]) < 1e-3, i
    if cout % 2:
        torch.testing.assert_close(fused[4], chunked[4], rtol=0, atol=0)
    else:
        assert _rel(fused[4], ref[4]) <= _rel(chunked[4], ref[4]) + 1e-4
        assert _rel(fused[4], ref[4]) < 1e-2
