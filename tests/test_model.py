"""The network: shapes, gradients, presets and the official forward-pass test vector."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from zsm import ZoomingSlowMo, ZSMConfig
from zsm.models.official_names import official_name_map

DATA = Path(__file__).parent / "data"
TINY = ZSMConfig(nf=8, groups=2, front_RBs=1, back_RBs=1, hr_nf=8)


def official_reference_shapes() -> dict[str, tuple[int, ...]]:
    shapes = {}
    for line in (DATA / "zsm_official_keys.tsv").read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        name, shape = line.split("\t")
        shapes[name] = tuple(int(s) for s in shape.split("x"))
    return shapes


@pytest.mark.parametrize(("n", "h", "w"), [(2, 4, 4), (3, 7, 9), (4, 1, 1), (2, 13, 6)])
@pytest.mark.parametrize("global_skip", [False, True])
def test_output_shape_any_size(n: int, h: int, w: int, global_skip: bool) -> None:
    model = ZoomingSlowMo(ZSMConfig(**{**TINY.__dict__, "global_skip": global_skip})).eval()
    with torch.no_grad():
        out = model(torch.rand(2, n, 3, h, w))
    assert out.shape == (2, 2 * n - 1, 3, 4 * h, 4 * w)
    assert torch.isfinite(out).all()


def test_single_frame_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="n >= 2 input frames, got 1"):
        ZoomingSlowMo(TINY)(torch.rand(1, 1, 3, 8, 8))


def test_wrong_rank_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match=r"\(B, n, 3, H, W\)"):
        ZoomingSlowMo(TINY)(torch.rand(1, 3, 8, 8))


def test_gradient_reaches_every_parameter() -> None:
    torch.manual_seed(0)
    model = ZoomingSlowMo(TINY)
    # The release zero-initialises every offset conv; perturb them so that the
    # gradient path through offsets and masks is exercised too.
    for name, p in model.named_parameters():
        if "offset_mask" in name:
            torch.nn.init.normal_(p, std=0.01)
    out = model(torch.rand(1, 3, 3, 8, 12))
    out.square().mean().backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert no_grad == []


def test_global_skip_untrained_starts_at_bicubic_baseline() -> None:
    model = ZoomingSlowMo(ZSMConfig(**{**TINY.__dict__, "global_skip": True}))
    # Zero the output conv: the network's residual vanishes and only the skip remains.
    torch.nn.init.zeros_(model.reconstruct.out_conv.weight)
    torch.nn.init.zeros_(model.reconstruct.out_conv.bias)
    frames = torch.rand(1, 2, 3, 8, 8)
    with torch.no_grad():
        out = model(frames)
    up = torch.nn.functional.interpolate(frames[0], scale_factor=4, mode="bicubic")
    torch.testing.assert_close(out[0, 0], up[0])
    torch.testing.assert_close(out[0, 2], up[1])
    torch.testing.assert_close(out[0, 1], 0.5 * (up[0] + up[1]))


def test_official_preset_parameter_count() -> None:
    model = ZoomingSlowMo.from_preset("official")
    assert sum(p.numel() for p in model.parameters()) == 11_102_771


def test_official_state_dict_maps_onto_reference_names_and_shapes() -> None:
    model = ZoomingSlowMo.from_preset("official")
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    reference = official_reference_shapes()
    names = official_name_map(model.config)
    assert set(names) == set(reference)
    assert sorted(names.values()) == sorted(ours)
    mismatched = [k for k, shape in reference.items() if ours[names[k]] != shape]
    assert mismatched == []


def test_unknown_preset_and_bad_config() -> None:
    with pytest.raises(ValueError, match="unknown preset 'huge'"):
        ZoomingSlowMo.from_preset("huge")
    with pytest.raises(ValueError, match="divisible by groups"):
        ZSMConfig(nf=10, groups=4)


def test_padding_is_cropped_consistently() -> None:
    """An odd-size input gives the same pixels as the same input padded by hand, then cropped."""
    torch.manual_seed(1)
    model = ZoomingSlowMo(TINY).eval()
    frames = torch.rand(1, 2, 3, 5, 7)
    padded = torch.nn.functional.pad(frames.flatten(0, 1), (0, 1, 0, 3), mode="replicate")
    with torch.no_grad():
        odd = model(frames)
        full = model(padded.unflatten(0, (1, 2)))
    torch.testing.assert_close(odd, full[..., :20, :28])


def load_test_vector() -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
    with safe_open(str(DATA / "zsm_official_small_vector.safetensors"), framework="pt") as f:
        weights = {k.removeprefix("weights."): f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
        weights = {k: v for k, v in weights.items() if k not in ("input", "output")}
        return weights, f.get_tensor("input"), f.get_tensor("output")


def test_official_forward_vector_through_convert_weights(tmp_path: Path) -> None:
    """Save the vector's weights as an official .pth, convert with the CLI, reproduce the output."""
    from zsm import load_model
    from zsm.cli import main

    weights, x, expected = load_test_vector()
    pth = tmp_path / "official.pth"
    # DataParallel-style prefix and a wrapper dict, as official training saves them.
    torch.save({"state_dict": {f"module.{k}": v for k, v in weights.items()}}, pth)
    out_file = tmp_path / "converted.safetensors"
    assert main(["convert-weights", str(pth), str(out_file)]) == 0
    model = load_model(out_file)
    assert model.config == ZSMConfig(nf=16, groups=4, front_RBs=1, back_RBs=2, hr_nf=64)
    with torch.no_grad():
        out = model(x.float())
    assert out.shape == expected.shape
    assert (out.double() - expected).abs().max().item() <= 1e-4


@pytest.mark.parametrize(("n", "h", "w"), [(2, 7, 9), (3, 16, 5), (1, 30, 11)])
def test_banded_hr_tail_equals_whole_frames(n: int, h: int, w: int) -> None:
    """On the CPU without autograd the HR tail runs in bands of rows: same frames."""
    from zsm.models.reconstruct import Reconstructor

    torch.manual_seed(0)
    rec = Reconstructor(nf=8, back_RBs=1, hr_nf=8).eval()
    for p in rec.parameters():  # not the near-identity init: every conv must matter
        torch.nn.init.normal_(p, std=0.2)
    x = torch.randn(n, 8, h, w)
    rec.band_bytes = 0
    with torch.no_grad():
        whole = rec(x)
    assert whole.shape == (n, 3, 4 * h, 4 * w)
    for band_bytes in (1, 8 * 4 * 8 * 2 * w * 12):  # 8 rows (the least) and 12 rows a band
        rec.band_bytes = band_bytes
        assert rec._band_rows(torch.empty(1, 8, 2 * h, 2 * w)) in (8, 12)
        with torch.no_grad():
            banded = rec(x)
        assert banded.is_contiguous()
        torch.testing.assert_close(banded, whole, rtol=1e-5, atol=1e-5)  # float rounding
    # With autograd (training) it runs whole frames: the same numbers, a graph to the input.
    y = rec(x.requires_grad_())
    torch.testing.assert_close(y.detach(), whole, rtol=1e-5, atol=1e-5)
    assert y.grad_fn is not None


def test_offset_mask_conv_split_changes_nothing() -> None:
    """On the CPU the offset conv runs as two convs (offsets, mask logits): same numbers."""
    from torch.nn import functional as F

    from zsm.models.deform import OffsetMaskConv2d

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
    assert list(conv.state_dict()) == ["weight", "bias"]
    assert conv.weight.shape == (27, 8, 3, 3)


def _layouts_seen(model: ZoomingSlowMo, frames: torch.Tensor) -> dict[str, set[bool]]:
    """Per top-level stage, whether each conv and deformable conv it ran had NHWC input."""
    from zsm.models.deform import ModulatedDeformConv2d
    from zsm.models.layout import is_channels_last

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


def test_cpu_inference_runs_channels_last_end_to_end_and_matches_nchw() -> None:
    """Without autograd on the CPU every feature map stays NHWC; with it, NCHW; same frames.

    Batch 2 and 3 frames: the per-frame flattening of (B, T, ...) sequences is a
    copy there, which must keep the layout too.
    """
    torch.manual_seed(0)
    model = ZoomingSlowMo(ZSMConfig(nf=16, groups=2, front_RBs=1, back_RBs=1, hr_nf=8)).eval()
    frames = torch.rand(2, 3, 3, 10, 13)
    stages = ["extract", "interpolate", "aggregate", "reconstruct"]
    with torch.no_grad():
        nhwc = model(frames)
        assert _layouts_seen(model, frames) == {s: {True} for s in stages}
    with torch.enable_grad():
        nchw = model(frames)
        # training: NCHW, but for the reconstruction, which is NHWC inside in any case
        want = {s: {False} for s in stages[:-1]} | {"reconstruct": {True}}
        assert _layouts_seen(model, frames) == want
    torch.testing.assert_close(nhwc, nchw.detach(), rtol=1e-5, atol=1e-5)


def test_lstm_update_without_autograd_equals_the_plain_formula() -> None:
    """tanh as 2 sigmoid(2v) - 1, one sigmoid over all gates, in place (inference only)."""
    from zsm.models.convlstm import _lstm_update_inference

    torch.manual_seed(0)
    nf = 6
    gates = 4 * torch.randn(2, 4 * nf, 5, 7)
    c_aligned = 3 * torch.randn(2, nf, 5, 7)
    i, f, o, g = torch.chunk(gates, 4, dim=1)
    c = torch.sigmoid(f) * c_aligned + torch.sigmoid(i) * torch.tanh(g)
    h = torch.sigmoid(o) * torch.tanh(c)
    got_h, got_c = _lstm_update_inference(gates.clone(), c_aligned)
    torch.testing.assert_close(got_c, c, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(got_h, h, rtol=1e-6, atol=1e-6)


def test_rgb_conv_as_shifted_taps_equals_the_conv() -> None:
    """The banded tail's output conv, one GEMM over all taps + shifted sums, at each border case."""
    from torch.nn import functional as F

    from zsm.models.reconstruct import _conv_rows, _few_outputs_conv_rows

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


def test_channels_last_weights_without_the_cpu_policy_give_the_same_frames(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """As on CUDA: NCHW input, NHWC weights (``zsm upscale`` there), the layout helpers on."""
    import zsm.models.zsm as zsm_module

    torch.manual_seed(0)
    model = ZoomingSlowMo(ZSMConfig(nf=16, groups=2, front_RBs=1, back_RBs=1, hr_nf=8)).eval()
    frames = torch.rand(2, 3, 3, 12, 16)
    with torch.no_grad():
        expected = model(frames)
        monkeypatch.setattr(zsm_module, "channels_last_on", lambda device: False)
        model.to(memory_format=torch.channels_last)
        got = model(frames)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
