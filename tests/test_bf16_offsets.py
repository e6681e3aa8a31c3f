"""The offset/mask convs under bf16 autocast on the CPU (``BF16_OFFSET_CONVS``).

On: the conv runs in bf16 (autocast on, the bf16 input as it is), its output
made float32 at once, so the offsets, mask, flow base and sampling are float32.
Off: the float32 island (float32 copy of the input, autocast off)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator

import pytest
import torch
from torch import nn

from zsm import ZoomingSlowMo, ZSMConfig
from zsm.engine import precision as P
from zsm.engine.offsets import FusedOffsetMaskConv2d
from zsm.engine.rewrites import swap_class
from zsm.models import deform
from zsm.models.deform import ModulatedDeformConv2d, OffsetMaskConv2d

pytestmark = pytest.mark.usefixtures("single_thread")
BF16 = torch.bfloat16
TINY = ZSMConfig(nf=8, groups=2, front_RBs=1, back_RBs=1, hr_nf=8, global_skip=True)


@pytest.fixture(params=[True, False], ids=["on", "off"])
def knob(request: pytest.FixtureRequest) -> Iterator[bool]:
    before = P.BF16_OFFSET_CONVS
    P.set_bf16_offset_convs(request.param)
    yield request.param
    P.set_bf16_offset_convs(before)


def _layer(fused: bool, seed: int = 0, max_residual: float | None = None) -> nn.Module:
    torch.manual_seed(seed)
    layer = ModulatedDeformConv2d(8, 8, offset_groups=2, max_residual=max_residual)
    nn.init.normal_(layer.offset_mask.weight, std=0.1)
    nn.init.normal_(layer.offset_mask.bias, std=0.1)
    if fused:
        swap_class(layer, OffsetMaskConv2d, FusedOffsetMaskConv2d)
    return layer


def test_the_knob_is_on_and_reaches_the_models_package() -> None:
    """On by default (measured: README, "Precision"); set_bf16_offset_convs sets both."""
    assert P.BF16_OFFSET_CONVS is (os.environ.get("ZSM_BF16_OFFSET_CONVS", "1") != "0")
    assert deform.bf16_offset_convs_enabled() is P.BF16_OFFSET_CONVS
    before = P.BF16_OFFSET_CONVS
    try:
        for on in (False, True):
            P.set_bf16_offset_convs(on)
            assert P.BF16_OFFSET_CONVS is deform.bf16_offset_convs_enabled() is on
    finally:
        P.set_bf16_offset_convs(before)


def test_the_environment_turns_it_off() -> None:
    code = "import zsm.models.deform as d; print(d.bf16_offset_convs_enabled())"
    env = {**os.environ, "ZSM_BF16_OFFSET_CONVS": "0"}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("fused", [False, True], ids=["two-convs", "fused"])
def test_offset_conv_dtype_follows_the_knob_and_outputs_are_float32(
    knob: bool, fused: bool
) -> None:
    layer = _layer(fused)
    seen: dict[str, object] = {}

    def pre(module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        seen["autocast"] = torch.is_autocast_enabled("cpu")
        seen["input"] = args[0].dtype

    def post(module: nn.Module, args: object, out: tuple[torch.Tensor, ...]) -> None:
        seen["out"] = {t.dtype for t in out}

    layer.offset_mask.register_forward_pre_hook(pre)
    layer.offset_mask.register_forward_hook(post)
    feat = torch.randn(2, 8, 6, 7).to(BF16)  # the network's activations are bf16
    with torch.autocast("cpu", dtype=BF16):
        offset, mask = layer.offsets_and_mask(feat)
    assert seen["autocast"] is knob
    assert seen["input"] == (BF16 if knob else torch.float32)  # no float32 copy when on
    # the two convs return the bf16 conv's output; the fused one makes it float32 itself
    assert seen["out"] == ({BF16} if knob and not fused else {torch.float32})
    assert offset.dtype == mask.dtype == torch.float32
    assert offset.shape == (2, 2 * 2 * 9, 6, 7) and mask.shape == (2, 2 * 9, 6, 7)
    assert float(mask.detach().min()) >= 0 and float(mask.detach().max()) <= 1


def test_fp16_and_no_autocast_are_unchanged(knob: bool) -> None:
    layer = _layer(False)
    feat = torch.randn(2, 8, 6, 7)
    ref = layer.offsets_and_mask(feat)
    with torch.autocast("cpu", dtype=torch.float16):  # not bf16: the float32 island
        got = layer.offsets_and_mask(feat.half())
    for a, b in zip(got, ref, strict=True):
        assert a.dtype == torch.float32
        torch.testing.assert_close(a, b, atol=2e-3, rtol=2e-3)  # from the fp16 input
    double = layer.double().offsets_and_mask(feat.double())  # no autocast: dtypes kept
    assert {t.dtype for t in double} == {torch.float64}


def test_on_and_off_agree_on_a_tiny_model() -> None:
    torch.manual_seed(0)
    model = ZoomingSlowMo(TINY).eval()
    for name, p in model.named_parameters():
        if "offset_mask" in name:
            nn.init.normal_(p, std=0.02)
    frames = torch.rand(1, 3, 3, 8, 12)
    before = P.BF16_OFFSET_CONVS
    outs = {}
    try:
        for on in (False, True):
            P.set_bf16_offset_convs(on)
            with torch.no_grad(), torch.autocast("cpu", dtype=BF16):
                outs[on] = model(frames).float()
    finally:
        P.set_bf16_offset_convs(before)
    with torch.no_grad():
        ref = model(frames)
    assert not torch.equal(outs[True], outs[False])  # the knob changes what runs
    for out in outs.values():
        assert torch.isfinite(out).all()
        assert float((out - ref).abs().max()) < 0.05  # bf16 rounding of a [0, 1] image
    assert float((outs[True] - outs[False]).abs().max()) < 0.05


@pytest.mark.parametrize("fused", [False, True], ids=["two-convs", "fused"])
def test_flow_base_is_added_in_float32(knob: bool, fused: bool, monkeypatch) -> None:
    """A zero residual conv samples exactly along the flow, bf16 offset conv or not."""
    layer = _layer(fused, max_residual=5.0)
    layer.zero_offset_residual_()
    sampled: dict[str, torch.Tensor] = {}

    def spy(x, offset, mask, weight, bias, **kwargs):  # type: ignore[no-untyped-def]
        sampled["offset"], sampled["mask"] = offset, mask
        return torch.zeros(x.shape[0], weight.shape[0], *x.shape[2:])

    monkeypatch.setattr(deform, "modulated_deform_conv2d", spy)
    flow = 3 * torch.randn(2, 2, 6, 7)  # (dx, dy), not representable in bf16
    feat = torch.randn(2, 8, 6, 7).to(BF16)
    with torch.autocast("cpu", dtype=BF16):
        layer(feat, feat, flow)
    offset = sampled["offset"]
    assert offset.dtype == sampled["mask"].dtype == torch.float32
    pairs = offset.unflatten(1, (-1, 2))  # (dy, dx) for every group and kernel point
    assert torch.equal(pairs, flow.flip(1)[:, None].expand_as(pairs))


@pytest.mark.parametrize("flow_guided", [False, True], ids=["learned", "flow-guided"])
def test_both_passes_under_bf16(knob: bool, flow_guided: bool) -> None:
    torch.manual_seed(0)
    model = ZoomingSlowMo(ZSMConfig(**{**TINY.__dict__, "flow_guided": flow_guided}))
    model.to(memory_format=torch.channels_last)  # as bf16 training on the CPU runs
    for p in model.parameters():  # the zero-initialised ones (offset convs, flow-guided tail)
        if not p.any():
            nn.init.normal_(p, std=0.02)
    frames = torch.rand(1, 3, 3, 8, 12)
    flow = torch.randn(1, 2, 4, 8, 12) if flow_guided else None
    with torch.autocast("cpu", dtype=BF16):
        out = model(frames, flow)
    out.float().square().mean().backward()
    grads = {n: p.grad for n, p in model.named_parameters() if "offset_mask" in n}
    assert grads and all(g is not None and g.dtype == torch.float32 for g in grads.values())
    assert all(torch.isfinite(g).all() and g.abs().sum() > 0 for g in grads.values())
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
