"""The fast CPU deformable conv: equal to torchvision's, forward and every gradient."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from torchvision.ops import deform_conv2d as tv_deform_conv2d

from zsm.models.deform import ModulatedDeformConv2d
from zsm.ops.dcn import (
    available_backends,
    deform_conv2d_cpu,
    modulated_deform_conv2d,
    native_available,
    native_sampler,
    pure,
    select_backend,
    set_backend,
)
from zsm.ops.dcn import native as native_mod
from zsm.ops.dcn.geometry import channels_last

TOL = 1e-4

native = pytest.param(
    True,
    id="native",
    marks=pytest.mark.skipif(not native_available(), reason="no C compiler for the kernel"),
)
PATHS = [native, pytest.param(False, id="pure")]


def make_case(
    b: int = 2,
    c: int = 16,
    h: int = 9,
    w: int = 11,
    groups: int = 2,
    cout: int = 6,
    k: int = 3,
    pad: int = 1,
    scale: float = 3.0,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> dict[str, torch.Tensor | int]:
    """Random inputs; offsets of ``scale`` px put many samples near or outside the border."""
    g = torch.Generator().manual_seed(seed)
    ho, wo = h + 2 * pad - k + 1, w + 2 * pad - k + 1
    return {
        "x": torch.randn(b, c, h, w, generator=g, dtype=dtype),
        "offset": scale * torch.randn(b, 2 * groups * k * k, ho, wo, generator=g, dtype=dtype),
        "mask": torch.rand(b, groups * k * k, ho, wo, generator=g, dtype=dtype),
        "weight": 0.2 * torch.randn(cout, c, k, k, generator=g, dtype=dtype),
        "bias": torch.randn(cout, generator=g, dtype=dtype),
        "grad": torch.randn(b, cout, ho, wo, generator=g, dtype=dtype),
        "pad": pad,
    }


def run(fn, case, names=("x", "offset", "mask", "weight", "bias")):
    """Output and the gradients of ``names`` (a float mask/offset/... requiring grad)."""
    inputs = {n: case[n].clone().requires_grad_(n in names) for n in ("x", "offset", "mask")}
    inputs["weight"] = case["weight"].clone().requires_grad_("weight" in names)
    bias = case["bias"]
    if bias is not None:
        bias = bias.clone().requires_grad_("bias" in names)
    out = fn(inputs["x"], inputs["offset"], inputs["mask"], inputs["weight"], bias, case["pad"])
    out.backward(case["grad"])
    grads = {n: inputs[n].grad for n in ("x", "offset", "mask", "weight") if n in names}
    if bias is not None and "bias" in names:
        grads["bias"] = bias.grad
    return out.detach(), grads


def torchvision(x, offset, mask, weight, bias, pad):
    return tv_deform_conv2d(x, offset, weight, bias, padding=pad, mask=mask)


def ours(use_native: bool):
    def fn(x, offset, mask, weight, bias, pad):
        return deform_conv2d_cpu(x, offset, mask, weight, bias, pad, native=use_native)

    return fn


def assert_same(case, use_native: bool, names=("x", "offset", "mask", "weight", "bias")):
    expected_out, expected_grads = run(torchvision, case, names)
    out, grads = run(ours(use_native), case, names)
    assert (out - expected_out).abs().max().item() <= TOL
    assert grads.keys() == expected_grads.keys()
    for name, grad in grads.items():
        err = (grad - expected_grads[name]).abs().max().item()
        assert err <= TOL, f"grad {name}: max abs error {err}"


@pytest.mark.parametrize("use_native", PATHS)
@pytest.mark.parametrize(
    "shape",
    [
        dict(c=16, groups=2),  # 8 channels per group: the kernel's fast path
        dict(c=16, groups=1, cout=5),  # 16 per group
        dict(c=12, groups=1),  # 12 per group: 8 + a scalar tail
        dict(c=6, groups=2, cout=4),  # 3 per group: scalar only
        dict(c=8, groups=8, h=5, w=4),  # 1 per group
        dict(c=8, groups=2, k=1, pad=0),
        dict(c=8, groups=2, k=5, pad=2, scale=5.0),
        dict(c=8, groups=2, k=3, pad=0, h=6, w=7),  # output smaller than input
        dict(c=8, groups=1, h=1, w=1),  # a single pixel
    ],
    ids=lambda s: "-".join(f"{k}{v}" for k, v in s.items()),
)
def test_matches_torchvision_random_offsets(use_native: bool, shape: dict) -> None:
    assert_same(make_case(**shape), use_native)


@pytest.mark.parametrize("use_native", PATHS)
def test_matches_torchvision_at_integer_positions(use_native: bool) -> None:
    """Zero and whole-pixel offsets: positions exactly on pixels, on -1 and on H/W.

    The coordinate gradient is one-sided there; torchvision takes the corner
    below (floor) and judges corners one by one, even at exactly -1.
    """
    for seed, scale in ((0, 0.0), (1, 2.0), (2, 0.5)):
        case = make_case(scale=1.0, seed=seed, h=6, w=7)
        case["offset"] = torch.round(case["offset"] * scale * 2) / 2  # whole and half pixels
        assert_same(case, use_native)


@pytest.mark.parametrize("use_native", PATHS)
def test_subsets_of_gradients_and_no_bias(use_native: bool) -> None:
    case = make_case(seed=3)
    for names in (("x",), ("offset",), ("mask",), ("weight",), ("offset", "mask"), ("x", "bias")):
        assert_same(case, use_native, names)
    case["bias"] = None
    assert_same(case, use_native, ("x", "offset", "mask", "weight"))


@pytest.mark.parametrize("use_native", PATHS)
@pytest.mark.parametrize("chunk_bytes", [1, 300 * 72 * 4, 2 * 99 * 72 * 4])
def test_chunking_does_not_change_results(
    use_native: bool, chunk_bytes: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Chunks of one tile, runs of tiles within an image, and several whole images."""
    monkeypatch.setattr(native_sampler, "CHUNK_BYTES", chunk_bytes)
    monkeypatch.setattr(native_sampler, "CHUNK_BYTES_THREADED", chunk_bytes)
    monkeypatch.setattr(pure, "PURE_CHUNK_POINTS", 1)
    assert_same(make_case(b=3, c=16, h=9, w=11, groups=2, seed=4), use_native)


@pytest.mark.skipif(not native_available(), reason="no C compiler for the kernel")
def test_python_threads_when_the_kernel_lacks_openmp(monkeypatch: pytest.MonkeyPatch) -> None:
    lib = native_mod.load_native()
    monkeypatch.setattr(lib, "openmp", False)
    threads = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        assert_same(make_case(b=3, c=16, groups=4, seed=5), True)
        assert_same(make_case(b=3, c=16, groups=1, seed=6), True)  # fewer groups than parts
    finally:
        torch.set_num_threads(threads)


def test_falls_back_to_pure_when_the_kernel_cannot_be_built(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(path):
        raise RuntimeError("no compiler")

    monkeypatch.setattr(native_mod, "_native_tried", False)
    monkeypatch.setattr(native_mod, "_native_lib", None)
    monkeypatch.setattr(native_mod, "_cache_dir", lambda: Path("/nonexistent/zsm"))
    monkeypatch.setattr(native_mod, "_compile", broken)
    with caplog.at_level(logging.WARNING, logger=native_mod.__name__):
        assert not native_available()
        assert not native_available()
        assert_same(make_case(seed=7), True)  # native requested, pure used
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1, warnings  # one warning, not one per call
    assert "no compiler" in warnings[0].getMessage()


def test_disabled_by_environment(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("ZSM_DCN_NATIVE", "0")
    with caplog.at_level(logging.WARNING, logger=native_mod.__name__):
        assert not native_available()
        assert_same(make_case(seed=8), True)
    assert not caplog.records  # asked for: no warning


@pytest.mark.parametrize("use_native", PATHS)
def test_offsets_as_views(use_native: bool) -> None:
    """Offsets as a slice of a larger tensor, as ModulatedDeformConv2d passes them."""
    case = make_case(b=3, seed=12)
    n = case["offset"].shape[1]
    results = []
    for fn in (torchvision, ours(use_native)):
        base = torch.cat((case["offset"], torch.ones_like(case["offset"])), dim=1)
        base.requires_grad_()
        offset = base[:, :n]  # batch-strided view: the native kernel reads it in place
        x = case["x"].clone().requires_grad_()
        out = fn(x, offset, case["mask"], case["weight"], case["bias"], case["pad"])
        out.backward(case["grad"])
        results.append((out, x.grad, base.grad))
    for got, expected in zip(results[1], results[0], strict=True):
        assert (got - expected).abs().max().item() <= TOL


@pytest.mark.parametrize("use_native", PATHS)
@pytest.mark.parametrize(
    "shape",
    [
        dict(c=16, groups=2),  # 36 offset, 18 mask channels: 8x8 blocks and a tail
        dict(c=32, groups=4, h=12, w=13),  # 72 / 36 channels, 156 positions: a part tile
        dict(c=6, groups=2, cout=4, h=5, w=3),  # 3 channels per group, fewer than 8 positions
    ],
    ids=lambda s: "-".join(f"{k}{v}" for k, v in s.items()),
)
def test_channels_last_input_and_offsets(use_native: bool, shape: dict) -> None:
    """NHWC input, offsets and mask as channel slices of one NHWC tensor (the CPU network's case).

    Same values and gradients as torchvision; the output is NHWC too (the
    native kernel samples NHWC in place and writes NHWC rows).
    """
    case = make_case(b=2, seed=5, **shape)
    n = case["offset"].shape[1]
    results = []
    for fn in (torchvision, ours(use_native)):
        om = torch.cat((case["offset"], case["mask"]), dim=1)
        om = om.contiguous(memory_format=torch.channels_last).requires_grad_()
        x = case["x"].contiguous(memory_format=torch.channels_last).requires_grad_()
        out = fn(x, om[:, :n], om[:, n:], case["weight"], case["bias"], case["pad"])
        out.backward(case["grad"])
        results.append((out, x.grad, om.grad))
    if use_native:
        assert results[1][0].is_contiguous(memory_format=torch.channels_last)
    for got, expected in zip(results[1], results[0], strict=True):
        assert (got - expected).abs().max().item() <= TOL


def test_channels_last_float64_falls_back_to_pure_sampling_with_nhwc_output() -> None:
    """A dtype the kernel lacks: pure sampling of a group-major copy, output rows still NHWC."""
    case = make_case(b=2, c=16, groups=2, seed=7, dtype=torch.float64)
    x = case["x"].contiguous(memory_format=torch.channels_last)
    args = (case["offset"], case["mask"], case["weight"], case["bias"], case["pad"])
    got = deform_conv2d_cpu(x, *args)
    assert got.dtype == torch.float64
    assert (got - torchvision(case["x"], *args)).abs().max().item() <= 1e-10


def test_a_frame_of_a_channels_last_sequence_is_sampled_in_place() -> None:
    """``seq[:, k]`` of a (B, T, H, W, C)-memory sequence: NHWC images, batch-strided."""
    case = make_case(b=2, c=16, groups=2, seed=6)
    seq = torch.stack((case["x"], -case["x"], case["x"]), dim=1)  # (B, T, C, H, W)
    seq = seq.movedim(2, -1).contiguous().movedim(-1, 2)
    frame = seq[:, 1]
    assert not frame.is_contiguous(memory_format=torch.channels_last)  # batch stride
    assert channels_last(frame)
    args = (case["offset"], case["mask"], case["weight"], case["bias"], case["pad"])
    got = deform_conv2d_cpu(frame, *args)
    expected = torchvision(-case["x"], *args)
    assert (got - expected).abs().max().item() <= TOL


@pytest.mark.parametrize("use_native", PATHS)
def test_non_finite_offsets_sample_zero(use_native: bool) -> None:
    case = make_case(seed=9)
    off = case["offset"]
    off[0, 0, 0, 0], off[0, 1, 1, 1], off[1, 3, 2, 2] = float("nan"), float("inf"), -float("inf")
    off[1, 5, 3, 3] = 1e30
    out, grads = run(ours(use_native), case)
    assert torch.isfinite(out).all()
    assert all(torch.isfinite(g).all() for g in grads.values())


def test_float64_gradcheck() -> None:
    """The pure path in float64 against finite differences (positions off the pixel grid)."""
    case = make_case(b=1, c=4, h=3, w=4, groups=2, cout=2, scale=1.0, dtype=torch.float64)
    off = case["offset"]
    off = torch.floor(off) + 0.2 + 0.6 * torch.rand(off.shape, dtype=torch.float64)
    inputs = (
        case["x"].requires_grad_(),
        off.requires_grad_(),
        case["mask"].requires_grad_(),
        case["weight"].requires_grad_(),
        case["bias"].requires_grad_(),
    )
    assert torch.autograd.gradcheck(
        lambda *t: deform_conv2d_cpu(*t, 1), inputs, eps=1e-6, atol=1e-6, fast_mode=True
    )


def test_registered_and_chosen_automatically_on_cpu() -> None:
    assert {"cpu", "cpu-pure", "torchvision"} <= set(available_backends())
    assert select_backend(torch.device("cpu")).name == "cpu"
    case = make_case(seed=10)
    args = (case["x"], case["offset"], case["mask"], case["weight"], case["bias"])
    expected = torchvision(*args, 1)
    for name in ("cpu", "cpu-pure"):
        set_backend(name)
        try:
            out = modulated_deform_conv2d(*args)
        finally:
            set_backend(None)
        assert (out - expected).abs().max().item() <= TOL


def test_grouped_weights_are_delegated_to_torchvision() -> None:
    case = make_case(c=8, groups=2, cout=4, seed=11)
    weight = case["weight"][:, :4]  # two weight groups
    args = (case["x"], case["offset"], case["mask"], weight, case["bias"])
    expected = torchvision(*args, 1)
    assert torch.equal(deform_conv2d_cpu(*args, 1), expected)


def test_shape_errors() -> None:
    case = make_case()
    with pytest.raises(ValueError, match="offset"):
        deform_conv2d_cpu(case["x"], case["offset"][:, :-1], case["mask"], case["weight"], None, 1)
    with pytest.raises(ValueError, match="mask"):
        deform_conv2d_cpu(case["x"], case["offset"], case["mask"][:, :-1], case["weight"], None, 1)


@pytest.mark.parametrize("bf16_offset_convs", [False, True], ids=["fp32-conv", "bf16-conv"])
def test_autocast_keeps_offsets_and_sampling_in_float32(bf16_offset_convs: bool) -> None:
    """Under autocast the offsets, the mask and the sampling are fp32 (CPU autocast here);
    the offset conv itself runs in fp32 or, with BF16_OFFSET_CONVS, in bf16
    (tests/test_bf16_offsets.py); the CPU backend's GEMM runs in bf16, so the output is
    bf16 (tests/test_dcn_bf16.py)."""
    from zsm.engine import precision

    torch.manual_seed(0)
    layer = ModulatedDeformConv2d(16, 8, offset_groups=2)
    torch.nn.init.normal_(layer.offset_mask.weight, std=0.2)
    x = torch.randn(2, 16, 6, 7).bfloat16()
    feat = torch.randn(2, 16, 6, 7).bfloat16()
    before = precision.BF16_OFFSET_CONVS
    precision.set_bf16_offset_convs(bf16_offset_convs)
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            offset, mask = layer.offsets_and_mask(feat)
            out = layer(x, feat)
    finally:
        precision.set_bf16_offset_convs(before)
    assert offset.dtype == mask.dtype == torch.float32
    assert out.dtype == torch.bfloat16
    if bf16_offset_convs:  # the same offsets and mask, sampled without autocast
        expected = modulated_deform_conv2d(
            x.float(), offset, mask, layer.weight, layer.bias, padding=layer.padding
        )
    else:
        expected = layer(x.float(), feat.float())  # same bf16-rounded inputs, no autocast
    rel = (out.float() - expected).norm() / expected.norm()
    assert rel.item() < 1e-2  # bf16 GEMM rounding only
