"""The inference engine: every rewrite of the reference network equals it, alone and together."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
from torch.nn import functional as F

from zsm import ZoomingSlowMo, ZSMConfig
from zsm.engine import NAMES, InferenceModel, SelfEnsemble, fused, prepare
from zsm.engine.banded import BandedReconstructor, _conv_rows, _few_outputs_conv_rows
from zsm.engine.lstm import InplaceGatesConvLSTM
from zsm.engine.offsets import FusedOffsetMaskConv2d
from zsm.engine.rewrites import rewrites_for, swap_class
from zsm.models.convlstm import DeformableConvLSTM
from zsm.models.deform import ModulatedDeformConv2d, OffsetMaskConv2d
from zsm.models.descriptor import ModelDescriptor, describe
from zsm.models.reconstruct import Reconstructor
from zsm.models.sequence import is_channels_last

pytestmark = pytest.mark.usefixtures("single_thread")

SMALL = ZSMConfig(nf=16, groups=2, front_RBs=1, back_RBs=1, hr_nf=8, global_skip=True)
CPU = torch.device("cpu")


def _randomised(config: ZSMConfig = SMALL, seed: int = 0) -> ZoomingSlowMo:
    """A network whose every conv matters: offsets and masks far from their zero init."""
    torch.manual_seed(seed)
    model = ZoomingSlowMo(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "offset_mask" in name:
                p.normal_(0, 0.05)
    return model


@pytest.mark.parametrize("name", NAMES)
def test_each_rewrite_alone_equals_the_reference(name: str) -> None:
    model = _randomised()
    frames = torch.rand(2, 3, 3, 10, 13)  # batch 2, odd sizes: padding and copies inside
    with torch.no_grad():
        want = model(frames)
    got = prepare(model, CPU, rewrites=(name,))(frames)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_each_rewrite_keeps_a_flow_guided_network(name: str) -> None:
    from zsm.ops.flow import frame_flows

    model = _randomised(dataclasses.replace(SMALL, flow_guided=True))
    with torch.no_grad():
        model.reconstruct.out_conv.weight.normal_(0, 0.05)  # zero at init: make it count
    frames = torch.rand(1, 3, 3, 12, 16)
    flow = frame_flows(frames) * 3.0  # motion of a few pixels
    with torch.no_grad():
        want = model(frames, flow)
    got = prepare(model, CPU, rewrites=(name,))(frames, flow)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_all_cpu_rewrites_equal_the_reference_and_leave_it_alone() -> None:
    model = _randomised()
    before = copy.deepcopy(model.state_dict())
    frames = torch.rand(1, 4, 3, 12, 16)
    with torch.no_grad():
        want = model(frames)
    net = prepare(model, CPU)
    assert isinstance(net, InferenceModel)
    assert set(net.rewrites) == {"fused-offset-conv", "inplace-lstm-gates", "channels-last"} | {
        "banded-hr-tail",
        "fused-conv-act",
        "native-offsets",
    }
    torch.testing.assert_close(net(frames), want, rtol=1e-5, atol=1e-5)
    # The argument is untouched: its classes, hooks and parameters are the reference's.
    assert type(model.reconstruct) is Reconstructor
    assert type(model.aggregate.cell) is DeformableConvLSTM
    assert not model.extract._forward_pre_hooks
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    # The copy keeps every parameter name (state dicts load either way).
    assert list(net.network.state_dict()) == list(model.state_dict())


def test_the_reference_still_trains_after_prepare() -> None:
    model = _randomised()
    prepare(model, CPU)
    frames = torch.rand(1, 2, 3, 8, 8)
    model.train()
    model(frames).mean().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_official_test_vector_through_the_engine() -> None:
    from test_model import load_test_vector
    from zsm.models.weights import model_from_official_state

    weights, x, expected = load_test_vector()
    model = model_from_official_state(weights, "test vector")
    out = prepare(model, CPU)(x.float())
    assert (out.double() - expected).abs().max().item() <= 1e-4


def _layouts_seen(model: torch.nn.Module, frames: torch.Tensor) -> dict[str, set[bool]]:
    """Per top-level stage, whether each conv and deformable conv it ran had NHWC input."""
    seen: dict[str, set[bool]] = {}

    def hooked(stage: str):
        def hook(module: torch.nn.Module, inputs: tuple[torch.Tensor, ...], _: object) -> None:
            seen.setdefault(stage, set()).add(is_channels_last(inputs[0]))

        return hook

    handles = [
        m.register_forward_hook(hooked(name.split(".")[0]))
        for name, m in model.named_modules()
        if isinstance(m, torch.nn.Conv2d | ModulatedDeformConv2d)
    ]
    try:
        model(frames)
    finally:
        for h in handles:
            h.remove()
    return seen


def test_cpu_inference_runs_channels_last_end_to_end() -> None:
    """Prepared for the CPU every feature map stays NHWC; the reference is NCHW but for the
    reconstruction, which is NHWC inside in any case. Batch 2 and 3 frames: the per-frame
    flattening of (B, T, ...) sequences is a copy there, which must keep the layout too."""
    model = _randomised()
    frames = torch.rand(2, 3, 3, 10, 13)
    stages = ["extract", "interpolate", "aggregate", "reconstruct"]
    net = prepare(model, CPU).network
    with torch.inference_mode():
        assert _layouts_seen(net, frames) == {s: {True} for s in stages}
        want = {s: {False} for s in stages[:-1]} | {"reconstruct": {True}}
        assert _layouts_seen(model, frames) == want


def test_channels_last_weights_give_the_same_frames() -> None:
    """The CUDA rewrite (NCHW input, NHWC weights), run on the CPU."""
    model = _randomised()
    frames = torch.rand(2, 3, 3, 12, 16)
    with torch.no_grad():
        want = model(frames)
    got = prepare(model, CPU, rewrites=("channels-last-weights", "fused-offset-conv"))(frames)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_rewrites_by_device_and_unknown_names() -> None:
    assert {r.name for r in rewrites_for(torch.device("cuda"))} == {
        "fused-offset-conv",
        "inplace-lstm-gates",
        "channels-last-weights",
    }
    with pytest.raises(ValueError, match="unknown rewrite"):
        rewrites_for(CPU, ("fast",))
    with pytest.raises(TypeError, match="must subclass"):
        swap_class(torch.nn.Linear(1, 1), torch.nn.Linear, BandedReconstructor)
    with pytest.raises(TypeError, match="ZoomingSlowMo"):
        prepare(torch.nn.Identity(), CPU)  # type: ignore[arg-type]


# --- the rewritten modules, one by one ------------------------------------------------------


@pytest.mark.parametrize("n,h,w", [(1, 5, 7), (3, 9, 4), (2, 16, 3)])
def test_banded_hr_tail_equals_whole_frames(n: int, h: int, w: int) -> None:
    torch.manual_seed(0)
    rec = Reconstructor(nf=8, back_RBs=1, hr_nf=8).eval()
    for p in rec.parameters():  # not the near-identity init: every conv must matter
        torch.nn.init.normal_(p, std=0.2)
    x = torch.randn(n, 8, h, w)
    with torch.no_grad():
        whole = rec(x)
    assert whole.shape == (n, 3, 4 * h, 4 * w)
    banded = copy.deepcopy(rec)
    swap_class(banded, Reconstructor, BandedReconstructor)
    for band_bytes in (1, 8 * 4 * 8 * 2 * w * 12):  # 8 rows (the least) and 12 rows a band
        banded.band_bytes = band_bytes
        assert banded._band_rows(torch.empty(1, 8, 2 * h, 2 * w)) in (8, 12)
        with torch.no_grad():
            got = banded(x)
        assert got.is_contiguous()
        torch.testing.assert_close(got, whole, rtol=1e-5, atol=1e-5)  # float rounding


def test_offset_mask_conv_two_convs_and_one_agree() -> None:
    """The reference runs the offset conv as two convs (offsets, mask logits), the engine as
    one: the same numbers, forward and backward, and the official parameter names."""
    torch.manual_seed(0)
    conv = OffsetMaskConv2d(8, 27, 3, padding=1)  # 27 = 3 * 1 group * 9
    x = torch.randn(2, 8, 10, 12, requires_grad=True)
    offset, logits = conv(x)
    ref = F.conv2d(x, conv.weight, conv.bias, padding=1)
    assert offset.shape == (2, 18, 10, 12) and logits.shape == (2, 9, 10, 12)
    assert offset.is_contiguous()  # the DCN kernel reads it without a copy
    got_all = torch.cat((offset, logits), dim=1)
    torch.testing.assert_close(got_all, ref, rtol=1e-6, atol=1e-6)
    g = torch.randn_like(ref)
    got = torch.autograd.grad(got_all, (conv.weight, conv.bias, x), g)
    want = torch.autograd.grad(ref, (conv.weight, conv.bias, x), g)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    fused = copy.deepcopy(conv)
    swap_class(fused, OffsetMaskConv2d, FusedOffsetMaskConv2d)
    nhwc = x.detach().contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        f_off, f_logits = fused(nhwc)
        torch.testing.assert_close(torch.cat((f_off, f_logits), dim=1), ref, rtol=1e-6, atol=1e-6)
    assert list(fused.state_dict()) == list(conv.state_dict()) == ["weight", "bias"]


def test_in_place_lstm_update_equals_the_plain_formula() -> None:
    """tanh as 2 sigmoid(2v) - 1, one sigmoid over all gates, in place (inference only)."""
    torch.manual_seed(0)
    nf = 6
    cell = DeformableConvLSTM(nf=nf, groups=2)
    gates = 4 * torch.randn(2, 4 * nf, 5, 7)
    c_aligned = 3 * torch.randn(2, nf, 5, 7)
    h, c = cell.update(gates, c_aligned)
    swap_class(cell, DeformableConvLSTM, InplaceGatesConvLSTM)
    got_h, got_c = cell.update(gates.clone(), c_aligned)
    torch.testing.assert_close(got_c, c, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(got_h, h, rtol=1e-6, atol=1e-6)


def test_rgb_conv_as_shifted_taps_equals_the_conv() -> None:
    """The banded tail's output conv, one GEMM over all taps + shifted sums, at each border."""
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(8, 3, 3, padding=1)
    x = torch.randn(1, 8, 9, 11).contiguous(memory_format=torch.channels_last)
    for top, bottom in ((False, False), (True, False), (False, True), (True, True)):
        want = _conv_rows(conv, x, top, bottom)
        got = _few_outputs_conv_rows(conv, x, top, bottom)
        assert got.shape == want.shape
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    whole = F.conv2d(x, conv.weight, conv.bias, padding=1)
    torch.testing.assert_close(_few_outputs_conv_rows(conv, x, True, True), whole)


# --- descriptors ------------------------------------------------------------------------------


def test_memory_estimate_follows_the_banded_tail() -> None:
    """On the CPU the HR tail runs in bands: the estimate per pixel is smaller there."""
    model = ZoomingSlowMo.from_preset("compact")
    whole = model.descriptor.bytes_per_pixel_frame
    banded = prepare(model, CPU).descriptor.bytes_per_pixel_frame
    # measured peak RSS growth per LR pixel-frame: 4.2-5.0 KB banded, 9.4-11.4 KB whole
    assert 1.5 * 5.0e3 <= banded < whole and whole >= 1.5 * 11.4e3  # margins over them
    unbanded = prepare(model, CPU, rewrites=("channels-last",)).descriptor
    assert unbanded.bytes_per_pixel_frame == whole
    assert model.descriptor.scale == 4 and model.descriptor.size_multiple == 4


def test_ensemble_adds_its_running_sum() -> None:
    model = ZoomingSlowMo(SMALL)
    plain = prepare(model, CPU).descriptor.bytes_per_pixel_frame
    eight = prepare(model, CPU, ensemble=8)
    assert eight.descriptor.bytes_per_pixel_frame - plain == 768.0
    assert isinstance(eight.network, SelfEnsemble) and eight.network.passes == 8
    assert prepare(SelfEnsemble(model, 4), CPU).network.passes == 4
    assert SelfEnsemble(model, 2).descriptor.bytes_per_pixel_frame == (
        model.descriptor.bytes_per_pixel_frame + 768.0
    )


def test_a_foreign_callable_must_declare_its_descriptor() -> None:
    import numpy as np

    from zsm.upscale import upscale_frames

    frames = [np.zeros((8, 8, 3), np.uint8)] * 2
    with pytest.raises(TypeError, match=r"declares no zsm\.ModelDescriptor"):
        list(upscale_frames(frames, model=lambda x: x, device="cpu"))

    def nearest(x: torch.Tensor) -> torch.Tensor:  # (1, n, 3, h, w) -> (1, 2n-1, 3, 2h, 2w)
        up = x.repeat_interleave(2, dim=-1).repeat_interleave(2, dim=-2)
        return torch.cat([up, up[:, 1:]], dim=1)[:, : 2 * x.shape[1] - 1]

    nearest.descriptor = ModelDescriptor(scale=2, size_multiple=1, bytes_per_pixel_frame=100.0)
    assert describe(nearest).scale == 2
    out = list(upscale_frames(frames, model=nearest, device="cpu"))
    assert len(out) == 4 and out[0].shape == (16, 16, 3)
    with pytest.raises(ValueError, match="need a zsm network"):
        list(upscale_frames(frames, model=nearest, device="cpu", ensemble=2))


needs_bf16_onednn = pytest.mark.skipif(
    not fused._bf16_supported(), reason="oneDNN has no bf16 convs on this CPU"
)


@needs_bf16_onednn
@pytest.mark.parametrize("act", ["lrelu", "relu"])
@pytest.mark.parametrize("padding", [None, (0, 1)], ids=["own", "rows"])
def test_conv_act_fuses_bf16_and_equals_the_conv_then_the_activation(
    act: str, padding: tuple[int, int] | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(8, 12, 3, padding=1)
    x = torch.randn(2, 8, 9, 11).contiguous(memory_format=torch.channels_last)
    pad = padding or (1, 1)
    calls = []
    op = fused._fused_op()
    monkeypatch.setattr(fused, "_fused_op", lambda: lambda *a: calls.append(a) or op(*a))
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        got = fused.conv_act(conv, x, act, padding)  # float32 input, cast as autocast would
        y = F.conv2d(x, conv.weight, conv.bias, padding=pad)
        want = F.leaky_relu(y, 0.1) if act == "lrelu" else F.relu(y)
        again = fused.conv_act(conv, x.bfloat16(), act, padding)  # bf16 activations
    assert len(calls) == 2 and got.dtype == want.dtype == torch.bfloat16
    assert got.is_contiguous(memory_format=torch.channels_last)
    # the activation before the output's rounding instead of after: one bf16 step at most
    torch.testing.assert_close(got.float(), want.float(), rtol=1e-2, atol=1e-2)
    assert torch.equal(got, again)
    # float32, or with autograd: the plain conv and activation, unfused
    with torch.inference_mode():
        plain = fused.conv_act(conv, x, act, padding)
    traced = fused.conv_act(conv, x, act, padding)
    assert len(calls) == 2
    assert traced.requires_grad and torch.equal(plain, traced.detach())
    with torch.no_grad():
        y = F.conv2d(x, conv.weight, conv.bias, padding=pad)
        assert torch.equal(plain, F.leaky_relu(y, 0.1) if act == "lrelu" else F.relu(y))


@needs_bf16_onednn
def test_fused_rewrite_under_bf16_matches_the_reference() -> None:
    """All CPU rewrites (the fused activations among them) under bf16: the reference's
    frames to bf16 rounding, and the fused classes swapped in."""
    model = _randomised()
    frames = torch.rand(1, 3, 3, 12, 16)
    net = prepare(model, CPU, precision="bf16")
    assert type(net.network.interpolate.align_a.l1) is fused.FusedAlignLevel
    assert type(net.network.extract.pyramid) is fused.FusedFeaturePyramid
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        want = model(frames).float()
    got = net(frames).float()
    assert (got - want).abs().max() < 0.02 and (got - want).abs().mean() < 2e-3
