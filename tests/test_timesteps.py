"""Frames at any time step: the time-conditioned network, its time plan and the engine."""

from __future__ import annotations

import pytest
import torch

from conftest import TINY_CONFIG
from test_flow import as_tensor, moving
from zsm import ZoomingSlowMo, ZSMConfig
from zsm.engine import prepare
from zsm.engine.ensemble import SelfEnsemble, transform_times
from zsm.models.timemod import TimeModulation, embed_time
from zsm.models.timesteps import resolve_times
from zsm.models.zsm import flow_skip_at
from zsm.ops.flow import frame_flows

TIME_CONFIG = {**TINY_CONFIG, "flow_guided": True, "time_conditioned": True}


def time_model(seed: int = 0, trained: bool = False) -> ZoomingSlowMo:
    torch.manual_seed(seed)
    model = ZoomingSlowMo(ZSMConfig(**TIME_CONFIG)).eval()
    if trained:  # as if trained: non-zero output conv, offset residuals and modulations
        with torch.no_grad():
            for p in model.parameters():
                if not p.any():
                    p.normal_(0, 0.05)
    return model


@pytest.fixture(scope="module")
def clip() -> tuple[torch.Tensor, torch.Tensor]:
    x = as_tensor(moving(3, 16, 20, dx=2, dy=1))
    return x, frame_flows(x)


# --- the time plan ---------------------------------------------------------------------------


def test_default_times_are_one_halfway_frame_per_gap() -> None:
    steps = resolve_times(None, 2, 4)
    assert steps.gap == (0, 1, 2) and steps.t.shape == (2, 3) and bool((steps.t == 0.5).all())
    assert steps.is_half and steps.frames == 7
    assert steps.order() == [0, 4, 1, 5, 2, 6, 3]


def test_ragged_times_in_time_order() -> None:
    steps = resolve_times([(0.4, 0.8), (), (0.2,)], 1, 4)
    assert steps.gap == (0, 0, 2) and steps.frames == 7 and not steps.is_half
    assert steps.order() == [0, 4, 5, 1, 2, 6, 3]
    assert steps.input_positions() == [0, 3, 4, 6]
    assert steps.between_positions() == [1, 2, 5]
    times = [(g, round(float(t[0]), 6)) for g, t in steps.sequence_times()]
    assert times == [(0, 0.0), (0, 0.4), (0, 0.8), (1, 0.0), (2, 0.0), (2, 0.2), (3, 0.0)]


def test_tensor_times_per_sample() -> None:
    t = torch.tensor([[[0.25], [0.5]], [[0.75], [0.125]]])
    steps = resolve_times(t, 2, 3)
    assert steps.gap == (0, 1)
    torch.testing.assert_close(steps.t, torch.tensor([[0.25, 0.5], [0.75, 0.125]]))


@pytest.mark.parametrize(
    ("times", "match"),
    [
        ([(0.5,)], "2 sequences"),
        ([(0.0,), (0.5,)], r"in \(0, 1\)"),
        ([(0.5, 1.0), (0.5,)], r"in \(0, 1\)"),
        ([(0.6, 0.3), (0.5,)], "increase"),
        (torch.full((1, 3, 1), 0.5), "shape"),
    ],
)
def test_bad_times_are_refused(times: object, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        resolve_times(times, 1, 3)  # type: ignore[arg-type]


def test_reversed_time_steps() -> None:
    assert transform_times([(0.25, 0.5), ()], 1) == [(), (0.5, 0.75)]
    assert transform_times([(0.25,)], 2) == [(0.25,)]
    t = torch.tensor([[[0.25, 0.5], [0.125, 0.75]]])
    torch.testing.assert_close(transform_times(t, 1), torch.tensor([[[0.25, 0.875], [0.5, 0.75]]]))


# --- the modulation --------------------------------------------------------------------------


def test_time_modulation_starts_as_identity_and_learns() -> None:
    mod = TimeModulation(6)
    x = torch.randn(3, 6, 4, 5)
    t = torch.tensor([0.1, 0.5, 0.9])
    assert torch.equal(mod(x, t), x)
    assert embed_time(t).shape == (3, 9)
    torch.nn.init.normal_(mod.out.weight, 0, 0.5)
    y = mod(x, t)
    assert not torch.allclose(y[0], x[0]) and not torch.allclose(y[0] / x[0], y[2] / x[2])
    y.square().mean().backward()
    assert mod.out.weight.grad is not None and mod.out.weight.grad.abs().sum() > 0


def test_time_modulation_keeps_channels_last_and_is_float32_under_bf16() -> None:
    mod = TimeModulation(4)
    torch.nn.init.normal_(mod.out.weight, 0, 0.5)
    x = torch.randn(2, 4, 3, 3).contiguous(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        scale, _ = mod.scale_shift(torch.tensor([0.49, 0.5]))
        y = mod(x.bfloat16(), torch.tensor([0.49, 0.5]))
    assert scale.dtype == torch.float32 and not torch.equal(scale[0], scale[1])
    assert y.is_contiguous(memory_format=torch.channels_last)


# --- the network -----------------------------------------------------------------------------


def test_untrained_network_makes_the_flow_skip_at_every_time(clip) -> None:
    x, flow = clip
    model = time_model()
    with torch.no_grad():
        out = model(x, flow, times=[(0.25, 0.5, 0.75)] * 2)
    assert out.shape == (1, 9, 3, 64, 80)
    skips = flow_skip_at(x, flow, (0.25, 0.5, 0.75))
    for gap in range(2):
        torch.testing.assert_close(
            out[:, 4 * gap],
            torch.nn.functional.interpolate(
                x[:, gap], scale_factor=4, mode="bicubic", align_corners=False
            ),
            atol=1e-5,
            rtol=0,
        )
        for j, skip in enumerate(skips):
            torch.testing.assert_close(out[:, 4 * gap + 1 + j], skip[:, gap], atol=1e-5, rtol=0)


def test_ragged_times_come_out_in_time_order(clip) -> None:
    x, flow = clip
    with torch.no_grad():
        out = time_model()(x, flow, times=[(0.3,), ()])
    assert out.shape[1] == 4  # input 0, 0.3, input 1, input 2
    (skip,) = flow_skip_at(x, flow, (0.3,))
    torch.testing.assert_close(out[:, 1], skip[:, 0], atol=1e-5, rtol=0)


def test_default_times_equal_halfway_times_in_every_form(clip) -> None:
    x, flow = clip
    model = time_model(trained=True)
    with torch.no_grad():
        a = model(x, flow)
        b = model(x, flow, times=[(0.5,), (0.5,)])
        c = model(x, flow, times=torch.full((1, 2, 1), 0.5))
    assert torch.equal(a, b) and torch.equal(a, c)


def test_time_conditioned_network_starts_as_the_flow_guided_one(clip) -> None:
    x, flow = clip
    torch.manual_seed(3)
    source = ZoomingSlowMo(ZSMConfig(**{**TIME_CONFIG, "time_conditioned": False})).eval()
    with torch.no_grad():
        for p in source.parameters():
            if not p.any():
                p.normal_(0, 0.05)
    model = time_model()
    missing, unexpected = model.load_state_dict(source.state_dict(), strict=False)
    assert not unexpected and missing and all("time" in k for k in missing)
    times = [(0.25, 0.5, 0.75)] * 2
    with torch.no_grad():
        torch.testing.assert_close(model(x, flow, times=times), source(x, flow, times=times))


def test_samples_of_a_batch_keep_their_own_times(clip) -> None:
    x, flow = clip
    model = time_model(trained=True)
    t = torch.tensor([[[0.25], [0.5]], [[0.75], [0.125]]])
    xb, fb = torch.cat((x, x.flip(-1))), torch.cat((flow, flow))
    with torch.no_grad():
        both = model(xb, fb, times=t)
        for i in range(2):
            alone = model(xb[i : i + 1], fb[i : i + 1], times=t[i : i + 1])
            torch.testing.assert_close(both[i : i + 1], alone, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(both[0, 1], model(x, flow, times=t[1:])[0, 1], atol=1e-3)


def test_time_steps_change_a_trained_networks_frames(clip) -> None:
    x, flow = clip
    model = time_model(trained=True).train()
    out = model(x, flow, times=[(0.25, 0.75), (0.5,)])
    assert out.shape[1] == 6
    assert not torch.allclose(out[:, 1], out[:, 2], atol=1e-3)
    out.square().mean().backward()
    grad = model.interpolate.align_a.l1.time_mod.out.weight.grad
    assert grad is not None and grad.abs().sum() > 0
    assert model.interpolate.blend_time.out.weight.grad.abs().sum() > 0


def test_descriptor_says_which_networks_make_any_time_step() -> None:
    assert time_model().descriptor.time_steps
    assert not ZoomingSlowMo(
        ZSMConfig(**{**TIME_CONFIG, "time_conditioned": False})
    ).descriptor.time_steps
    with pytest.raises(ValueError, match="flow_guided"):
        ZSMConfig(**{**TINY_CONFIG, "time_conditioned": True})


def test_learned_offset_network_refuses_other_time_steps() -> None:
    torch.manual_seed(0)
    model = ZoomingSlowMo(ZSMConfig(**TINY_CONFIG)).eval()
    x = torch.rand(1, 3, 3, 8, 8)
    with torch.no_grad():
        assert model(x, times=[(0.5,), (0.5,)]).shape[1] == 5
        with pytest.raises(ValueError, match="halfway"):
            model(x, times=[(0.25, 0.5), (0.5,)])


# --- the engine --------------------------------------------------------------------------------


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_prepared_network_takes_times(clip, precision: str) -> None:
    x, flow = clip
    model = time_model(trained=True)
    times = [(0.2, 0.6), (0.4,)]
    with torch.no_grad():
        want = model(x, flow, times=times)
    got = prepare(model, "cpu", precision=precision)(x, flow, times=times)
    tol = 1e-4 if precision == "fp32" else 0.05
    torch.testing.assert_close(got.float(), want, atol=tol, rtol=0)


def test_self_ensemble_reverses_the_time_steps_with_the_frames(clip) -> None:
    x, flow = clip
    model = time_model()  # untrained: the flow skip, symmetric under time reversal
    times = [(0.2, 0.6), (0.4,)]
    with torch.no_grad():
        want = model(x, flow, times=times)
        got = SelfEnsemble(model, passes=2)(x, flow, times=times)
    torch.testing.assert_close(got, want, atol=2e-3, rtol=0)
