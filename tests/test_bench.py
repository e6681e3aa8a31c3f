"""``zsm benchmark``: the report's structure on a tiny network (no timing assertions)."""

from __future__ import annotations

import json

import pytest
import torch

from zsm.bench import (
    STAGES,
    ConvFlops,
    StageTimer,
    format_report,
    realistic_offsets,
    run_benchmark,
    stage_hooks,
    use_process_clock,
)
from zsm.cli import main
from zsm.models.deform import ModulatedDeformConv2d
from zsm.models.zsm import ZoomingSlowMo

pytestmark = pytest.mark.usefixtures("single_thread")

TINY = {"nf": 8, "groups": 2, "front_RBs": 0, "back_RBs": 1, "hr_nf": 8}
CLOCK = ["--clock", "process"]


def assert_positive_report(r: dict, precision: str = "fp32") -> None:
    assert set(r["stages"]) == {*STAGES, "total"}
    for stage in r["stages"].values():
        for key in ("ms_per_frame", "gflop_per_frame", "gflops", "vs_dense_gflops"):
            assert stage[key] > 0, key
    total = r["stages"]["total"]
    parts = [r["stages"][s]["gflop_per_frame"] for s in STAGES]
    assert total["gflop_per_frame"] == pytest.approx(sum(parts))
    dense = r["dense_conv"]
    assert dense["gflops"] > 0 and dense["ms"] > 0
    # timed in both layouts; the faster one is the reference
    assert set(dense["ms_by_layout"]) == {"NCHW", "NHWC"}
    assert dense["ms"] == min(dense["ms_by_layout"].values())
    assert dense["ms"] == dense["ms_by_layout"][dense["layout"]]
    assert r["output_frames"] == 2 * r["frames"] - 1
    assert r["output_fps"] == pytest.approx(r["output_frames"] / r["whole_ms"] * 1e3)
    assert r["precision"] == precision
    if r["peak_memory_mb"] is not None:
        assert r["peak_memory_mb"] > 0
    impls = r["dcn"]["impls"]
    assert "dense" in impls and "torchvision" in impls
    for v in impls.values():
        assert v["forward_ms"] > 0 and v["forward_gflops"] > 0 and v["backward_ms"] >= 0


def test_run_benchmark_tiny_network() -> None:
    r = run_benchmark(preset="compact", size=(20, 12), frames=2, repeats=1, overrides=TINY)
    assert r["config"]["nf"] == 8 and r["device"] == "cpu"
    assert_positive_report(r)
    json.dumps(r)  # JSON-ready
    text = format_report(r)
    assert all(s in text for s in STAGES) and "torchvision" in text
    assert r["stage_timing"] == "module_hooks" and "top-level modules" in text


def test_run_benchmark_flow_guided_network_times_its_flow_apart() -> None:
    tiny = {**TINY, "global_skip": True, "flow_guided": True}
    r = run_benchmark(preset="compact-flow", size=(20, 12), frames=2, repeats=1, overrides=tiny)
    assert_positive_report(r)
    assert r["config"]["flow_guided"] and r["flow_ms"] > 0
    assert "DIS optical flow" in format_report(r)


def assert_bf16_references(r: dict) -> None:
    """A bf16 run holds the fp32 network and both dense convs, timed in the same run."""
    assert_positive_report(r, "bf16")
    for key in ("dense_conv", "dense_conv_fp32"):
        d = r[key]
        assert d["shape"] == r["dense_conv"]["shape"] and d["gflops"] > 0
        assert set(d["ms_by_layout"]) == {"NCHW", "NHWC"}
    assert r["dense_speedup_vs_fp32"] > 0 and r["speedup_vs_fp32"] > 0
    assert set(r["fp32"]["stages"]) == set(r["stages"]) and r["fp32"]["output_fps"] > 0
    for name, s in r["stages"].items():
        assert s["vs_fp32_dense_gflops"] > 0 and s["speedup_vs_fp32"] > 0
        assert s["fp32_ms_per_frame"] == r["fp32"]["stages"][name]["ms_per_frame"]
        # the same FLOPs either way; each precision against its own dense conv
        assert s["gflop_per_frame"] == r["fp32"]["stages"][name]["gflop_per_frame"]
        assert s["vs_dense_gflops"] == pytest.approx(s["gflops"] / r["dense_conv"]["gflops"])
        fp32_dense = r["dense_conv_fp32"]["gflops"]
        assert s["vs_fp32_dense_gflops"] == pytest.approx(s["gflops"] / fp32_dense)
    # The DCN alone: in bf16 and NHWC (the network's CPU path), against the bf16 dense conv,
    # with the fp32 dense conv and DCN beside it.
    dcn = r["dcn"]
    assert dcn["precision"] == "bf16" and dcn["layout"] == "NHWC"
    impls = dcn["impls"]
    assert {"dense", "cpu", "dense-fp32", "cpu-fp32"} <= set(impls)
    assert impls["dense"]["forward_vs_dense"] == 1.0 and impls["dense"]["backward_vs_dense"] == 1.0
    for v in impls.values():
        assert v["forward_ms"] > 0 and v["backward_ms"] >= 0


def test_run_benchmark_bf16_on_the_cpu_against_bf16_and_fp32_references() -> None:
    r = run_benchmark(
        preset="compact", size=(20, 12), frames=2, repeats=1, overrides=TINY,
        precision_name="bf16", dcn_backends=["cpu", "torchvision"],
    )  # fmt: skip
    assert_bf16_references(r)
    assert r["cpu_bf16"] is not None  # which native bf16 flags the CPU has (maybe none)
    json.dumps(r)
    text = format_report(r)
    for row in ("dense 3x3 conv 8->8, bf16", "% of fp32 dense", "x fp32", "dense-fp32", "cpu-fp32"):
        assert row in text, row


def test_dcn_alone_in_the_networks_cpu_layout() -> None:
    """``channels_last``: NHWC input and offsets/mask slices of one NHWC tensor, as in inference."""
    from zsm.bench import bench_dcn

    r = bench_dcn(
        nf=8, groups=2, shape=(1, 12, 16), device=torch.device("cpu"), repeats=1,
        backends=["cpu", "torchvision"], channels_last=True,
    )  # fmt: skip
    assert r["layout"] == "NHWC" and set(r["impls"]) == {"dense", "cpu", "torchvision"}
    assert all(v["forward_ms"] > 0 for v in r["impls"].values())


def test_cli_json(capsys: pytest.CaptureFixture[str]) -> None:
    args = ["benchmark", "--size", "16x12", "--frames", "2", "--repeats", "1", "--json"]
    try:
        code = main([*args, "--dcn-backends", "cpu,torchvision", "--threads", "1", *CLOCK])
    finally:
        use_process_clock(False)
    assert code == 0
    r = json.loads(capsys.readouterr().out)
    assert r["clock"] == "process"
    assert r["preset"] == "compact" and r["size"] == [16, 12]
    assert set(r["dcn"]["impls"]) == {"dense", "cpu", "torchvision"}
    assert_positive_report(r)


def test_cli_bf16_on_the_cpu(capsys: pytest.CaptureFixture[str]) -> None:
    args = ["benchmark", "--size", "16x12", "--frames", "2", "--repeats", "1", "--json"]
    args += ["--precision", "bf16", "--dcn-backends", "cpu,torchvision", "--threads", "1"]
    try:
        code = main([*args, *CLOCK])
    finally:
        use_process_clock(False)
    assert code == 0
    r = json.loads(capsys.readouterr().out)
    assert r["device"] == "cpu" and r["preset"] == "compact"
    assert_bf16_references(r)


def test_cli_rejects_bad_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["benchmark", "--dcn-backends", "nope"]) == 2
    assert "unknown DCN backend" in capsys.readouterr().err
    assert main(["benchmark", "--frames", "1"]) == 2
    assert main(["benchmark", "--device", "cpu", "--precision", "fp16"]) == 2
    assert "precision fp16 is for GPUs" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["benchmark", "--size", "16by12"])


def test_stage_hooks_see_each_stage_once_in_order_without_changing_the_result() -> None:
    torch.manual_seed(0)
    model = ZoomingSlowMo.from_preset("compact", **TINY).eval()
    frames = torch.rand(1, 3, 3, 10, 13)  # padded inside, cropped back
    seen: list[tuple[str, str]] = []

    def enter(stage: str) -> None:
        seen.append(("in", stage))

    def leave(stage: str) -> None:
        seen.append(("out", stage))

    with torch.no_grad():
        expected = model(frames)
        with stage_hooks(model, enter, leave):
            out = model(frames)
        after = model(frames)  # the hooks are gone
    assert seen == [(edge, s) for s in STAGES for edge in ("in", "out")]
    assert torch.equal(out, expected) and torch.equal(after, expected)


def test_stage_timer_and_flops_split_one_pass_by_stage() -> None:
    torch.manual_seed(0)
    model = ZoomingSlowMo.from_preset("compact", **TINY).eval()
    frames = torch.rand(1, 2, 3, 8, 8)
    timer, counter = StageTimer(torch.device("cpu")), ConvFlops(model)

    def enter(stage: str) -> None:
        timer.enter(stage)
        counter.enter(stage)

    def leave(stage: str) -> None:
        timer.leave(stage)
        counter.leave(stage)

    with torch.no_grad(), stage_hooks(model, enter, leave):
        model(frames)
    counter.remove()
    timer.end_run()
    assert all(len(timer.times[s]) == 1 and timer.times[s][0] > 0 for s in STAGES)
    assert set(counter.flops) == set(STAGES)  # no conv runs between the stage modules
    assert all(counter.flops[s] > 0 for s in STAGES)
    with pytest.raises(RuntimeError, match="never ran"):
        timer.end_run()  # no pass since the last one


def test_realistic_offsets_are_a_few_pixels() -> None:
    torch.manual_seed(0)
    model = ZoomingSlowMo.from_preset("compact", **TINY).eval()
    frames = torch.rand(1, 2, 3, 32, 32)
    realistic_offsets(model, lambda: model(frames))
    dcn = next(m for m in model.modules() if isinstance(m, ModulatedDeformConv2d))
    feat = torch.randn(1, 8, 16, 16)
    with torch.no_grad():
        offset, mask = dcn.offsets_and_mask(feat)
    assert 0.3 < offset.std().item() < 20
    assert 0.05 < mask.mean().item() < 0.95
