"""The native pass that makes a deformable conv's offsets and mask (inference)."""

from __future__ import annotations

import pytest
import torch

from zsm.models.deform import add_flow_offsets
from zsm.ops.dcn import native_available
from zsm.ops.dcn.native import load_native
from zsm.ops.dcn.native_offsets import offsets_and_mask

pytestmark = [
    pytest.mark.usefixtures("single_thread"),
    pytest.mark.skipif(not native_available(), reason="no C compiler for the kernel"),
]


def _simd() -> None:
    lib = load_native()
    assert lib is not None
    if lib.set_simd(True) == 0:
        pytest.skip("no AVX-512 on this CPU")


def _reference(
    raw: torch.Tensor, p2: int, base: torch.Tensor | None, r: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """What ModulatedDeformConv2d does with the offset/mask conv's output."""
    raw = raw.float()
    offset, logits = raw[:, :p2], raw[:, p2:]
    if base is not None:
        offset = add_flow_offsets(torch.tanh(offset).mul(r), base)
    return offset, torch.sigmoid(logits)


def _raw(b: int, c3: int, h: int, w: int, dtype: torch.dtype, scale: float = 3.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(c3 + h)
    raw = scale * torch.randn(b, c3, h, w, generator=g)
    return raw.contiguous(memory_format=torch.channels_last).to(dtype)


# (channels: 3 x groups x 9) 27, 108 (compact), 216 (official): tails of 11, 12 and 8
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("c3", [27, 108, 216])
@pytest.mark.parametrize("flow", ["nchw", "nhwc", "none"])
def test_offsets_and_mask_match_the_reference(c3: int, dtype: torch.dtype, flow: str) -> None:
    """base + r tanh(offsets) (or the offsets as they are, without a flow) and the
    logits' sigmoid, to float32 rounding; NHWC float32 views of one tensor."""
    _simd()
    b, h, w, p2 = 2, 5, 7, 2 * c3 // 3
    raw = _raw(b, c3, h, w, dtype)
    base = None
    if flow != "none":
        base = 6.0 * torch.randn(b, 2, h, w, generator=torch.Generator().manual_seed(1))
        if flow == "nhwc":
            base = base.contiguous(memory_format=torch.channels_last)
    r = 2.5 if base is not None else 0.0
    got = offsets_and_mask(raw, p2, base, r)
    assert got is not None
    offset, mask = got
    want_offset, want_mask = _reference(raw, p2, base, r)
    assert offset.dtype == mask.dtype == torch.float32
    assert offset.shape == want_offset.shape and mask.shape == want_mask.shape
    assert offset.stride(1) == 1 and mask.stride(1) == 1  # NHWC, as the DCN reads them
    assert offset.data_ptr() + 4 * p2 == mask.data_ptr()  # one tensor
    torch.testing.assert_close(offset, want_offset, rtol=1e-6, atol=2e-6)
    torch.testing.assert_close(mask, want_mask, rtol=1e-6, atol=1e-6)


def test_extreme_logits_saturate() -> None:
    """Far outside the exp's range the bound and the sigmoid saturate, finite."""
    _simd()
    raw = torch.tensor([-1e4, -100.0, -20.0, 0.0, 20.0, 100.0, 1e4, 0.5, -0.5]).view(1, 9, 1, 1)
    raw = raw.repeat(1, 3, 1, 1).contiguous(memory_format=torch.channels_last)  # 27 channels
    base = torch.zeros(1, 2, 1, 1)
    got = offsets_and_mask(raw, 18, base, 1.5)
    assert got is not None
    want = _reference(raw, 18, base, 1.5)
    for a, b in zip(got, want, strict=True):
        assert torch.isfinite(a).all()
        torch.testing.assert_close(a, b, rtol=1e-6, atol=2e-6)


@pytest.mark.parametrize("case", ["nchw", "grad", "portable"])
def test_it_declines_what_it_cannot_run(case: str) -> None:
    """NCHW input, a tensor that wants a gradient, or the SIMD loops off: None."""
    lib = load_native()
    assert lib is not None
    _simd()
    raw = _raw(1, 27, 4, 5, torch.float32)
    if case == "nchw":
        raw = raw.contiguous()
    if case == "grad":
        raw.requires_grad_(True)
    try:
        if case == "portable":
            lib.set_simd(False)
        assert offsets_and_mask(raw, 18, None, 0.0) is None
    finally:
        lib.set_simd(True)
