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


def test_simd_and_portable_loops_agree_at_the_edges() -> None:
    """Positions at -1, 0, H-1, H, outside, NaN and infinite: the same columns either way."""
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
