"""Flow-guided alignment: the LR flow, the warps, the network's use of them, and their plumbing."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from conftest import TINY_CONFIG
from zsm import ZoomingSlowMo, ZSMConfig
from zsm.data.datasets import ClipSource
from zsm.data.pairs import TrainingPairs
from zsm.engine import prepare
from zsm.engine.ensemble import transform, transform_flow
from zsm.evaluation.baselines import bicubic_flow_lr, flow_midpoint
from zsm.models.flowguide import state_flows
from zsm.models.timesteps import resolve_times
from zsm.models.zsm import flow_skip
from zsm.ops.flow import FLOW_SCALE, MAX_FLOW_PIXELS, DISFlow, frame_flows, to_uint8_frames
from zsm.ops.warp import blend_at_time, flow_between, flows_to_time, resize_flow, warp
from zsm.upscale import build_pipeline
from zsm.video.pipeline import PairFlows

pytestmark = pytest.mark.usefixtures("single_thread")

FLOW_CONFIG = {**TINY_CONFIG, "flow_guided": True}


def texture(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A smooth random colour texture (uint8 (h, w, 3)) that optical flow can follow."""
    rng = np.random.default_rng(seed)
    small = torch.from_numpy(rng.random((1, 3, h // 4 + 2, w // 4 + 2))).float()
    big = torch.nn.functional.interpolate(small, size=(h + 8, w + 8), mode="bicubic")
    return (big[0].permute(1, 2, 0).clamp(0, 1) * 255).round().to(torch.uint8).numpy()


def moving(n: int, h: int, w: int, dx: int, dy: int = 0, seed: int = 0) -> np.ndarray:
    """n frames (n, h, w, 3) of a texture translated by (dx, dy) pixels per frame."""
    big = texture(h + abs(dx) * n + 8, w + abs(dx) * n + abs(dy) * n + 8, seed)
    ox, oy = abs(dx) * n, abs(dy) * n
    crops = [big[oy - k * dy : oy - k * dy + h, ox - k * dx : ox - k * dx + w] for k in range(n)]
    return np.stack(crops)


def as_tensor(frames: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(frames).permute(0, 3, 1, 2).float().div(255)[None]


def tiny_flow_model(seed: int = 0, trained: bool = False) -> ZoomingSlowMo:
    torch.manual_seed(seed)
    model = ZoomingSlowMo(ZSMConfig(**FLOW_CONFIG)).eval()
    if trained:  # as if trained: non-zero output conv and offset residuals
        with torch.no_grad():
            for p in model.parameters():
                if not p.any():
                    p.normal_(0, 0.05)
    return model


# --- optical flow and warps -----------------------------------------------------------------


def test_dis_flow_follows_a_translation_both_ways() -> None:
    frames = moving(3, 40, 48, dx=3, dy=-1)
    flow = DISFlow().clip(frames)
    assert flow.shape == (2, 4, 40, 48) and flow.dtype == np.float32
    inner = flow[..., 8:-8, 8:-8]
    np.testing.assert_allclose(np.median(inner, axis=(2, 3)), [[3, -1, -3, 1]] * 2, atol=0.2)


def test_dis_flow_on_enlarged_frames_is_finer_and_in_frame_pixels() -> None:
    """FLOW_SCALE: DIS on the frames enlarged 2x or 4x measures a sub-pixel motion (0.75 px
    of area-reduced frames, as LR inputs are made) closer than DIS on the frames
    themselves, and gives it in the frames' pixels; whole-pixel motion is found either way."""
    errors = {1: 0.0, 2: 0.0, 4: 0.0}
    for seed in range(4):
        big = texture(192, 256, seed)
        frames = [
            cv2.resize(
                np.ascontiguousarray(big[8:168, 8 + 3 * k : 232 + 3 * k]),
                (56, 40),
                interpolation=cv2.INTER_AREA,
            )
            for k in range(2)
        ]
        for scale in errors:
            flow = DISFlow(scale).pair(*frames)[:, 8:-8, 8:-8]
            assert flow.shape == (4, 24, 40) and flow.dtype == np.float32
            errors[scale] += float(np.hypot(flow[0] + 0.75, flow[1]).mean())
    assert DISFlow().scale == FLOW_SCALE == 4
    assert errors[2] < 0.6 * errors[1] and errors[4] < 0.6 * errors[1], errors
    for scale in (1, 4):
        flow = DISFlow(scale).clip(moving(2, 40, 48, dx=3, dy=-1))[..., 8:-8, 8:-8]
        np.testing.assert_allclose(np.median(flow, axis=(2, 3)), [[3, -1, -3, 1]], atol=0.2)
    with pytest.raises(ValueError, match="flow scale"):
        DISFlow(0)
    # large frames are enlarged less: never past MAX_FLOW_PIXELS
    dis = DISFlow()
    assert [dis.scale_for(h, w) for h, w in ((90, 160), (360, 640), (720, 1280))] == [4, 4, 2]
    assert dis.scale_for(1080, 1920) == 1 == DISFlow(1).scale_for(36, 44)
    assert 4 * 360 * 4 * 640 <= MAX_FLOW_PIXELS < 3 * 720 * 3 * 1280


def test_dis_flow_of_frames_smaller_than_opencv_accepts() -> None:
    flow = frame_flows(torch.rand(1, 2, 3, 5, 7))
    assert flow.shape == (1, 1, 4, 5, 7) and torch.isfinite(flow).all()


def test_warp_by_whole_pixels_is_a_shift() -> None:
    image = torch.rand(1, 3, 12, 16)
    flow = torch.zeros(1, 2, 12, 16)
    flow[:, 0] = 2.0  # sample 2 px to the right
    out = warp(image, flow)
    torch.testing.assert_close(out[..., :-2], image[..., 2:])
    torch.testing.assert_close(out[..., -2:], image[..., -1:].expand(-1, -1, -1, 2))  # edge


def test_flow_to_time_and_between_have_the_right_ends() -> None:
    f01, f10 = torch.randn(2, 2, 6, 6), torch.randn(2, 2, 6, 6)
    ft0, ft1 = flows_to_time(f01, f10, 0.5)
    torch.testing.assert_close(ft0, 0.25 * (f10 - f01))
    torch.testing.assert_close(ft1, -ft0)
    torch.testing.assert_close(flow_between(f01, f10, 0.0, 1.0), f01)
    torch.testing.assert_close(flow_between(f01, f10, 1.0, 0.0), f10)
    torch.testing.assert_close(flow_between(f01, f10, 0.0, 0.5), 0.5 * f01)
    still = torch.full((1, 2, 8, 8), 3.0)  # a uniform motion, measured at other resolutions
    torch.testing.assert_close(resize_flow(still, 4), torch.full((1, 2, 32, 32), 12.0))
    torch.testing.assert_close(resize_flow(still, -2), torch.full((1, 2, 4, 4), 1.5))


def test_torch_blend_matches_the_opencv_flow_baseline() -> None:
    """The skip's blend is the ``bicubic-flow`` baseline's math: given the same flows, the
    torch warp (grid_sample) and the OpenCV one (remap) agree."""
    frames = moving(2, 32, 40, dx=2).astype(np.float32)
    flows = torch.from_numpy(DISFlow().clip(frames.astype(np.uint8)))[0]
    f01, f10 = flows[None, :2], flows[None, 2:]
    ours = blend_at_time(
        torch.from_numpy(frames[0]).permute(2, 0, 1)[None],
        torch.from_numpy(frames[1]).permute(2, 0, 1)[None],
        f01,
        f10,
        0.5,
    )[0].permute(1, 2, 0)

    class Given:  # a DIS stand-in returning the same flows
        def __init__(self) -> None:
            self.calls = [f01[0].permute(1, 2, 0).numpy(), f10[0].permute(1, 2, 0).numpy()]

        def calc(self, a, b, _):
            return self.calls.pop(0)

    theirs = flow_midpoint(frames[0], frames[1], dis=Given())
    np.testing.assert_allclose(ours.numpy(), theirs, atol=0.05)


# --- the network --------------------------------------------------------------------------


def test_untrained_flow_guided_network_is_the_flow_skip_and_the_lr_flow_baseline() -> None:
    frames = moving(3, 20, 24, dx=2)
    x, model = as_tensor(frames), tiny_flow_model()
    flow = frame_flows(x)
    with torch.no_grad():
        out = model(x, flow)
    torch.testing.assert_close(out, flow_skip(x, flow), atol=1e-6, rtol=0)
    baseline = list(bicubic_flow_lr(list(frames)))
    mids = to_uint8_frames(out[0, 1::2])
    for k in range(2):
        np.testing.assert_array_equal(mids[k], baseline[2 * k + 1])


def test_flow_guided_network_asks_for_flow_and_others_refuse_it() -> None:
    x = torch.rand(1, 2, 3, 8, 8)
    with pytest.raises(ValueError, match="needs flow="):
        tiny_flow_model()(x)
    with pytest.raises(ValueError, match="expected flow of shape"):
        tiny_flow_model()(x, torch.zeros(1, 1, 4, 8, 4))
    with pytest.raises(ValueError, match="flow-guided"):
        ZoomingSlowMo(ZSMConfig(**TINY_CONFIG))(x, torch.zeros(1, 1, 4, 8, 8))
    with pytest.raises(ValueError, match="global_skip"):
        ZSMConfig(**{**FLOW_CONFIG, "global_skip": False})


def test_offsets_follow_the_flow_within_the_residual_bound() -> None:
    model = tiny_flow_model(trained=True)
    layer = model.interpolate.align_a.l1.dcn
    seen = {}
    layer.register_forward_hook(lambda m, args, out: seen.update(args=args))
    x = as_tensor(moving(2, 16, 16, dx=2))
    flow = frame_flows(x)
    with torch.no_grad():
        model(x, flow)
    _, feat, base = seen["args"]
    offset, _ = layer.offsets_and_mask(feat)
    full = base.flip(1).repeat(1, offset.shape[1] // 2, 1, 1)
    total = full + layer.max_residual * torch.tanh(offset)
    assert (total - full).abs().max() <= layer.max_residual
    assert base.abs().max() > 0.5  # the flow (halfway: a quarter of F10 - F01) is there


def test_state_flows_point_to_the_neighbouring_steps() -> None:
    f01, f10 = torch.full((1, 2, 2, 4, 4), 2.0), torch.full((1, 2, 2, 4, 4), -2.0)
    prev, nxt = state_flows(f01, f10, resolve_times(None, 1, 3))
    assert prev.shape == nxt.shape == (1, 5, 2, 4, 4)
    assert prev[0, :, 0, 0, 0].tolist() == [0.0, -1.0, -1.0, -1.0, -1.0]
    assert nxt[0, :, 0, 0, 0].tolist() == [1.0, 1.0, 1.0, 1.0, 0.0]
    # frames at 0.25 and 0.75 in gap 0, none in gap 1: steps of 0.5, 1 and 2 pixels
    prev, nxt = state_flows(f01, f10, resolve_times([(0.25, 0.75), ()], 1, 3))
    assert prev[0, :, 0, 0, 0].tolist() == [0.0, -0.5, -1.0, -0.5, -2.0]
    assert nxt[0, :, 0, 0, 0].tolist() == [0.5, 1.0, 0.5, 2.0, 0.0]


def test_flow_guided_network_trains_its_offsets() -> None:
    model = tiny_flow_model().train()
    x = as_tensor(moving(3, 16, 16, dx=2))
    out = model(x, frame_flows(x))
    out.square().mean().backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    assert grads["reconstruct.out_conv.weight"].abs().sum() > 0
    # the zero output conv blocks gradients into the network only on the first step
    with torch.no_grad():
        model.reconstruct.out_conv.weight.normal_(0, 0.1)
    model.zero_grad()
    model(x, frame_flows(x)).square().mean().backward()
    offset_grad = model.interpolate.align_a.l1.dcn.offset_mask.weight.grad
    assert offset_grad is not None and offset_grad.abs().sum() > 0


def test_learned_offset_weights_initialise_a_flow_guided_network(tmp_path) -> None:
    from zsm import save_weights
    from zsm.training.config import TrainConfig
    from zsm.training.loop import Trainer

    torch.manual_seed(3)
    source = ZoomingSlowMo(ZSMConfig(**TINY_CONFIG))
    path = save_weights(source, tmp_path / "learned.safetensors")
    model = {"preset": "compact", **FLOW_CONFIG}
    data = {"train": [{"kind": "vimeo", "path": "."}]}
    cfg = TrainConfig.from_dict(
        {"name": "x", "model": model, "data": data, "train": {"init": str(path)}}
    )
    net = Trainer(cfg, run_dir=tmp_path / "run")._build_model()
    state, loaded = net.state_dict(), load_file(path)
    for name, tensor in loaded.items():
        if "offset_mask" in name:
            rows = 2 * tensor.shape[0] // 3
            assert not state[name][:rows].any(), name
            torch.testing.assert_close(state[name][rows:], tensor[rows:])
        else:
            torch.testing.assert_close(state[name], tensor, msg=name)


# --- inference plumbing ----------------------------------------------------------------------


def test_engine_computes_the_flow_when_not_given() -> None:
    model = tiny_flow_model(trained=True)
    x = as_tensor(moving(3, 16, 20, dx=1))
    net = prepare(model, "cpu")
    assert net.descriptor.needs_flow
    torch.testing.assert_close(net(x), net(x, frame_flows(x)), atol=0, rtol=0)
    with torch.no_grad():
        torch.testing.assert_close(net(x), model(x, frame_flows(x)), atol=1e-4, rtol=0)


@pytest.mark.parametrize("k", [1, 2, 4, 8, 15])
def test_ensemble_transforms_the_flow_like_the_frames(k: int) -> None:
    frames = as_tensor(moving(3, 32, 32, dx=2, dy=1))
    ours = transform_flow(frame_flows(frames), k)
    direct = frame_flows(transform(frames, k))
    inner = (..., slice(8, -8), slice(8, -8))
    for c in range(4):
        ours_c, direct_c = ours[:, :, c][inner].median(), direct[:, :, c][inner].median()
        assert abs(ours_c - direct_c) < 0.2, (c, ours_c, direct_c)


def test_ensemble_of_a_flow_guided_network_runs() -> None:
    x = as_tensor(moving(3, 16, 16, dx=2))
    out = prepare(tiny_flow_model(trained=True), "cpu", ensemble=8)(x)
    assert out.shape == (1, 5, 3, 64, 64) and torch.isfinite(out).all()


def test_pipeline_gives_tiles_the_whole_frames_flow() -> None:
    frames = list(moving(5, 24, 32, dx=3))
    model = tiny_flow_model(trained=True)
    calls: list[torch.Tensor] = []
    net = prepare(model, "cpu")
    inner = net.forward

    def spy(x, flow=None):
        calls.append(flow)
        return inner(x, flow)

    net.forward = spy  # type: ignore[method-assign]
    untiled = build_pipeline(model=net, device="cpu", window=5)
    tiled = build_pipeline(model=net, device="cpu", window=5, tile=8, tile_overlap=16)
    a = torch.cat([c for _, c in untiled.run(iter(frames), as_float=True)])
    calls.clear()
    b = torch.cat([c for _, c in tiled.run(iter(frames), as_float=True)])
    whole = DISFlow().clip(np.stack(frames))
    assert len(calls) > 1 and all(c is not None for c in calls)
    h, w = calls[0].shape[-2:]  # the first tile's, at the frame's top-left corner
    torch.testing.assert_close(calls[0][0], torch.from_numpy(whole)[..., :h, :w])
    torch.testing.assert_close(b, a, atol=1e-4, rtol=0)


def test_pair_flows_are_shared_by_overlapping_windows_only() -> None:
    frames = list(moving(6, 16, 16, dx=1))
    flows = PairFlows()
    computed = []
    pair = flows._dis.pair
    flows._dis.pair = lambda a, b: computed.append(1) or pair(a, b)  # type: ignore[method-assign]
    first = flows.window(frames[0:4], 0)
    second = flows.window(frames[2:6], 2)
    assert len(computed) == 3 + 2  # pair (2, 3) computed once
    torch.testing.assert_close(second[0, 0], first[0, 2], atol=0, rtol=0)
    other = [f.copy() for f in frames]  # another stream, same indices: computed anew
    third = flows.window(other[2:6], 2)
    assert len(computed) == 5 + 3
    torch.testing.assert_close(third, second)


# --- training data ----------------------------------------------------------------------------


class Moving:
    """A clip source of one translating texture, larger than the patch."""

    length = 7

    def __len__(self) -> int:
        return 4

    def clip(self, index: int, rng: np.random.Generator) -> np.ndarray:
        return moving(7, 192, 224, dx=4 + index, seed=index)


def test_training_flow_is_computed_on_whole_frames_then_cropped() -> None:
    from zsm.data.augment import AugmentConfig

    assert isinstance(Moving(), ClipSource)
    pairs = TrainingPairs(Moving(), augment=AugmentConfig(lr_patch=8), flow=True)
    lr, hr, flow = pairs[(1, 7)]
    assert lr.shape == (4, 3, 8, 8) and hr.shape == (7, 3, 32, 32) and flow.shape == (3, 4, 8, 8)
    # 5 HR px per frame, 2 frames per input step, a quarter in LR: 2.5 LR px per input step,
    # in whichever direction the flips, rotation and reversal left it.
    speed = flow[:, :2].square().sum(1).sqrt().median()
    assert abs(speed - 2.5) < 0.3, speed
    again = pairs[(1, 7)]
    for a, b in zip(again, (lr, hr, flow), strict=True):
        torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_warp_under_bf16_autocast_keeps_a_float32_grid() -> None:
    """A bf16 feature map warped under bf16 autocast (the network's feature warps on
    a CPU): the sample positions are the float32 ones, not rounded to bf16 (which at 640
    px across would be up to 0.6 px off), so only the image's own rounding remains."""
    w = 640
    ramp = torch.linspace(0, 1, w).view(1, 1, 1, w).expand(1, 2, 3, w)  # smooth in x
    flow = torch.zeros(1, 2, 3, w)
    flow[:, 0] = 0.3 + 0.01 * torch.arange(w, dtype=torch.float32) / w  # sub-pixel motion
    image = ramp.bfloat16()
    want = warp(image.float(), flow)  # the same bf16 values, float32 positions
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = warp(image, flow)
    assert got.dtype == torch.float32  # grid_sample runs in float32 under autocast
    # a bf16 grid would be up to 0.6 px x 1/640 per px = 1e-3 off
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("channels", [8, 32, 40])
def test_native_feature_warp_matches_grid_sample(
    dtype: torch.dtype, channels: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Channels-last feature maps, no gradient: the native warp samples where grid_sample
    does (border padding, motions far out of the frame included), in the map's dtype."""
    import zsm.ops.warp as warp_module
    from zsm.ops.dcn.native import load_native

    lib = load_native()
    if lib is None or lib.set_simd() == 0:
        pytest.skip("no native kernel with AVX-512 here")
    g = torch.Generator().manual_seed(3)
    image = torch.randn(2, channels, 7, 11, generator=g)
    image = image.contiguous(memory_format=torch.channels_last).to(dtype)
    flow = 5.0 * torch.randn(2, 2, 7, 11, generator=g)
    flow[0, 0, 0, :4] = torch.tensor([-40.0, 40.0, 10.5, -10.5])  # out of the frame
    calls: list[torch.Tensor | None] = []
    native = warp_module._native_warp

    def recorded(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor | None:
        calls.append(native(a, b))
        return calls[-1]

    monkeypatch.setattr(warp_module, "_native_warp", recorded)
    with torch.no_grad():
        got = warp(image, flow)
    assert calls and calls[0] is not None
    assert got.dtype == dtype and got.is_contiguous(memory_format=torch.channels_last)
    monkeypatch.setattr(warp_module, "NATIVE_WARP_MIN_CHANNELS", 10**9)
    want = warp(image.float(), flow)  # grid_sample, float32
    tol = 2**-8 if dtype == torch.bfloat16 else 1e-5  # the output's own rounding
    torch.testing.assert_close(got.float(), want, rtol=tol, atol=1e-5)


def test_native_feature_warp_leaves_gradients_frames_and_nchw_to_grid_sample() -> None:
    """A map that wants a gradient (training), an RGB frame, or an NCHW map: grid_sample."""
    import zsm.ops.warp as warp_module

    flow = torch.randn(1, 2, 5, 6)
    feat = torch.randn(1, 16, 5, 6).contiguous(memory_format=torch.channels_last)
    assert warp_module._native_warp(feat.clone().requires_grad_(True), flow) is None
    assert (
        warp_module._native_warp(feat[:, :3].contiguous(memory_format=torch.channels_last), flow)
        is None
    )
    assert warp_module._native_warp(feat.contiguous(), flow) is None
    leaf = feat.clone().requires_grad_(True)
    warp(leaf, flow).sum().backward()  # the gradient still flows
    assert leaf.grad is not None and torch.isfinite(leaf.grad).all()
