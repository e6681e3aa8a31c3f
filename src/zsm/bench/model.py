"""The whole network, stage by stage, against a dense 3x3 conv timed in the same rounds."""

from __future__ import annotations

import functools
import statistics
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from zsm.bench.flops import ConvFlops
from zsm.bench.offsets import realistic_offsets
from zsm.bench.stages import STAGES, StageTimer, stage_hooks
from zsm.bench.system import peak_rss_mb
from zsm.bench.timing import best_of, timed
from zsm.device import precision
from zsm.engine import prepare, rewrites_for
from zsm.models.config import MULTIPLE, ZSMConfig
from zsm.models.zsm import ZoomingSlowMo
from zsm.ops.flow import frame_flows

# The dense reference conv is timed in both memory layouts; the faster one counts.
DENSE_LAYOUTS = {"NCHW": torch.contiguous_format, "NHWC": torch.channels_last}
FP32 = "fp32"  # the label of the float32 figures a low-precision run also times


@dataclass
class StageResult:
    """One stage's figures, per output frame."""

    ms_per_frame: float
    gflop_per_frame: float
    gflops: float  # achieved GFLOP/s
    vs_dense_gflops: float  # gflops / dense conv's GFLOP/s
    ms_per_frame_median: float


def bench_model(
    config: ZSMConfig,
    *,
    size: tuple[int, int],
    frames: int,
    device: torch.device,
    repeats: int,
    dtype: torch.dtype | None = None,
    channels_last: bool = False,
    seed: int = 0,
) -> dict[str, Any]:
    """Per-stage time, GFLOP and GFLOP/s of one forward pass, and the dense reference.

    Stages are timed at the network's four top-level modules
    (:mod:`zsm.bench.stages`); ``total`` is the same forward pass as a whole,
    so the ops between those modules count in it only.
    ``dtype``: autocast dtype (``None``: float32), as ``zsm upscale
    --precision`` runs the network; the dense reference then runs under the
    same autocast on activations of that dtype (as the network's convs get
    them). A low-precision run also times, in the same rounds, the float32
    network and the float32 dense conv: each stage gets its GFLOP/s as a
    fraction of the float32 dense conv's too (``vs_fp32_dense_gflops``) and
    its speed-up over the same stage in float32 (``speedup_vs_fp32``).
    Also times the whole forward pass with no synchronisation between the
    stages, which gives the output frames per second. The network timed is
    the inference engine's (:func:`zsm.engine.prepare`), as ``zsm upscale``
    runs it; ``channels_last`` stores its conv weights as NHWC (the engine
    does so by default on CUDA only; without it they stay NCHW there too).
    FLOPs are counted on the reference network, on whole frames.
    """
    torch.manual_seed(seed)
    width, height = size
    reference = ZoomingSlowMo(config).to(device).eval()
    probe_frames = torch.rand(1, 2, 3, 32, 32, device=device)
    probe_args = _with_flow(config, probe_frames)
    realistic_offsets(reference, lambda: reference(*probe_args))
    names = tuple(
        r.name for r in rewrites_for(device) if channels_last or r.name != "channels-last-weights"
    )
    model = prepare(reference, device, rewrites=names).network
    if channels_last:
        model.to(memory_format=torch.channels_last)
    x = torch.rand(1, frames, 3, height, width, device=device)
    flow_s = timed(lambda: frame_flows(x), device) if config.flow_guided else None
    args = _with_flow(config, x)  # a flow-guided network's flow is computed once, timed apart
    out_frames = 2 * frames - 1
    hp, wp = -(-height // MULTIPLE) * MULTIPLE, -(-width // MULTIPLE) * MULTIPLE
    # The reference: a dense 3x3 conv nf -> nf at the (padded) input size, batch = frames.
    dense_shape = (frames, config.nf, hp, wp)
    dense_flops = 2.0 * frames * config.nf * hp * wp * config.nf * 9
    # One run per precision: the one asked for, and float32 beside a low-precision one.
    dtypes: dict[str, torch.dtype | None] = {"": dtype}
    if dtype is not None:
        dtypes[FP32] = None
    refs = {label: _dense_refs(dense_shape, device, dt) for label, dt in dtypes.items()}

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    counter = ConvFlops(reference)
    with precision(device, dtype), stage_hooks(reference, counter.enter, counter.leave):
        # On the reference: the FLOPs of whole frames (the banded HR tail calls its convs
        # directly, past the hooks, and recomputes halo rows: not counted as work).
        reference(*args)
    counter.remove()
    for label, dt in dtypes.items():  # warm-up
        with precision(device, dt):
            model(*args)
            for ref in refs[label].values():
                ref()

    timers = {label: StageTimer(device) for label in dtypes}
    hooked_times: dict[str, list[float]] = {label: [] for label in dtypes}  # synced per stage
    whole_times: dict[str, list[float]] = {label: [] for label in dtypes}  # no sync inside
    dense_times = {label: {name: [] for name in refs[label]} for label in dtypes}
    for _ in range(max(1, repeats)):
        # Interleaved: each round runs every precision, network and dense conv alike.
        for label, dt in dtypes.items():
            timer = timers[label]
            with precision(device, dt):
                with stage_hooks(model, timer.enter, timer.leave):
                    hooked_times[label].append(timed(lambda: model(*args), device))
                timer.end_run()
                whole_times[label].append(timed(lambda: model(*args), device))
                for name, ref in refs[label].items():
                    dense_times[label][name] += best_of(ref, device, 3, 1.0)
    if device.type == "cuda":
        peak_mb, peak_kind = torch.cuda.max_memory_allocated(device) / 2**20, "cuda_allocated"
    else:
        peak_mb, peak_kind = peak_rss_mb(), "rss"

    dense = {
        label: _dense_summary(dense_times[label], dense_shape, dense_flops) for label in dtypes
    }
    results = {
        label: _stage_results(timers[label], hooked_times[label], counter, out_frames, dense[label])
        for label in dtypes
    }
    stages = results[""]
    out: dict[str, Any] = {
        "dense_conv": dense[""],
        "stages": stages,
        "output_frames": out_frames,
        "whole_ms": min(whole_times[""]) * 1e3,
        "output_fps": out_frames / min(whole_times[""]),
        "peak_memory_mb": peak_mb,
        "peak_memory_kind": peak_kind,
        # the DIS optical flow of the frames (CPU), for flow-guided networks
        "flow_ms": None if flow_s is None else flow_s * 1e3,
    }
    if dtype is not None:
        fp32_stages, fp32_dense = results[FP32], dense[FP32]
        for name, s in stages.items():
            s["vs_fp32_dense_gflops"] = s["gflops"] / fp32_dense["gflops"]
            s["fp32_ms_per_frame"] = fp32_stages[name]["ms_per_frame"]
            s["speedup_vs_fp32"] = s["fp32_ms_per_frame"] / s["ms_per_frame"]
        fp32_whole = min(whole_times[FP32])
        out["dense_conv_fp32"] = fp32_dense
        out["fp32"] = {
            "stages": fp32_stages,
            "whole_ms": fp32_whole * 1e3,
            "output_fps": out_frames / fp32_whole,
        }
        out["speedup_vs_fp32"] = fp32_whole / min(whole_times[""])
        out["dense_speedup_vs_fp32"] = fp32_dense["ms"] / dense[""]["ms"]
    return out


def _dense_refs(
    shape: tuple[int, int, int, int], device: torch.device, dtype: torch.dtype | None
) -> dict[str, Callable[[], object]]:
    """The dense conv ``nf -> nf`` on ``shape`` in each layout; input in ``dtype`` if set."""
    nf = shape[1]
    dense_in = torch.randn(shape, device=device, dtype=dtype or torch.float32)
    refs: dict[str, Callable[[], object]] = {}
    for name, fmt in DENSE_LAYOUTS.items():
        ref_conv = nn.Conv2d(nf, nf, 3, padding=1).to(device, memory_format=fmt)
        refs[name] = functools.partial(ref_conv, dense_in.contiguous(memory_format=fmt))
    return refs


def _dense_summary(
    times: dict[str, list[float]], shape: tuple[int, int, int, int], flops: float
) -> dict[str, Any]:
    """The faster layout's figures (the network runs NHWC on the CPU), and both layouts' times."""
    layout = min(times, key=lambda name: min(times[name]))
    dense_s = min(times[layout])
    return {
        "shape": list(shape),
        "ms": dense_s * 1e3,
        "gflop": flops / 1e9,
        "gflops": flops / dense_s / 1e9,
        "ms_per_frame": dense_s * 1e3 / shape[0],
        "layout": layout,
        "ms_by_layout": {name: min(t) * 1e3 for name, t in times.items()},
    }


def _stage_results(
    timer: StageTimer,
    hooked_times: list[float],
    counter: ConvFlops,
    out_frames: int,
    dense: dict[str, Any],
) -> dict[str, dict[str, float]]:
    stages: dict[str, dict[str, float]] = {}
    for name in STAGES:
        best, med = min(timer.times[name]), statistics.median(timer.times[name])
        flops = counter.flops.get(name, 0.0)
        stages[name] = asdict(_stage_result(best, med, flops, out_frames, dense["gflops"]))
    total_best, total_med = min(hooked_times), statistics.median(hooked_times)
    stages["total"] = asdict(
        _stage_result(total_best, total_med, counter.total(), out_frames, dense["gflops"])
    )
    return stages


def _with_flow(config: ZSMConfig, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The network's arguments for frames ``x``: with their flow if it is flow-guided."""
    return (x, frame_flows(x)) if config.flow_guided else (x,)


def _stage_result(
    best_s: float, median_s: float, flops: float, out_frames: int, dense_gflops: float
) -> StageResult:
    gflops = flops / best_s / 1e9 if best_s > 0 else 0.0
    return StageResult(
        ms_per_frame=best_s * 1e3 / out_frames,
        gflop_per_frame=flops / 1e9 / out_frames,
        gflops=gflops,
        vs_dense_gflops=gflops / dense_gflops,
        ms_per_frame_median=median_s * 1e3 / out_frames,
    )
