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
    ``dtype``: autocast dtype (``None``: float32), as ``zsm upscale --half``
    runs the network; the dense reference runs under the same autocast.
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
    # The reference: a dense 3x3 conv nf -> nf at the (padded) input size, batch = frames,
    # in both memory layouts; the faster one counts (the network runs NHWC on the CPU).
    dense_in = torch.randn(frames, config.nf, hp, wp, device=device)
    dense_flops = 2.0 * dense_in.numel() * config.nf * 9
    refs: dict[str, Callable[[], object]] = {}
    for name, fmt in DENSE_LAYOUTS.items():
        ref_conv = nn.Conv2d(config.nf, config.nf, 3, padding=1).to(device, memory_format=fmt)
        refs[name] = functools.partial(ref_conv, dense_in.contiguous(memory_format=fmt))

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    counter = ConvFlops(reference)
    with precision(device, dtype), stage_hooks(reference, counter.enter, counter.leave):
        # On the reference: the FLOPs of whole frames (the banded HR tail calls its convs
        # directly, past the hooks, and recomputes halo rows: not counted as work).
        reference(*args)
    counter.remove()
    with precision(device, dtype):  # warm-up
        model(*args)
        for ref in refs.values():
            ref()

    timer = StageTimer(device)
    hooked_times: list[float] = []  # the forward pass synced at every stage boundary
    whole_times: list[float] = []  # the forward pass unhooked: no sync inside
    dense_times: dict[str, list[float]] = {name: [] for name in refs}
    with precision(device, dtype):
        for _ in range(max(1, repeats)):
            with stage_hooks(model, timer.enter, timer.leave):
                hooked_times.append(timed(lambda: model(*args), device))
            timer.end_run()
            whole_times.append(timed(lambda: model(*args), device))
            for name, ref in refs.items():
                dense_times[name] += best_of(ref, device, 3, 1.0)
    if device.type == "cuda":
        peak_mb, peak_kind = torch.cuda.max_memory_allocated(device) / 2**20, "cuda_allocated"
    else:
        peak_mb, peak_kind = peak_rss_mb(), "rss"

    layout = min(dense_times, key=lambda name: min(dense_times[name]))
    dense_s = min(dense_times[layout])
    dense_gflops = dense_flops / dense_s / 1e9
    stages: dict[str, dict[str, float]] = {}
    for name in STAGES:
        best, med = min(timer.times[name]), statistics.median(timer.times[name])
        flops = counter.flops.get(name, 0.0)
        stages[name] = asdict(_stage_result(best, med, flops, out_frames, dense_gflops))
    total_best, total_med = min(hooked_times), statistics.median(hooked_times)
    stages["total"] = asdict(
        _stage_result(total_best, total_med, counter.total(), out_frames, dense_gflops)
    )
    return {
        "dense_conv": {
            "shape": [frames, config.nf, hp, wp],
            "ms": dense_s * 1e3,
            "gflop": dense_flops / 1e9,
            "gflops": dense_gflops,
            "ms_per_frame": dense_s * 1e3 / frames,
            "layout": layout,
            "ms_by_layout": {name: min(t) * 1e3 for name, t in dense_times.items()},
        },
        "stages": stages,
        "output_frames": out_frames,
        "whole_ms": min(whole_times) * 1e3,
        "output_fps": out_frames / min(whole_times),
        "peak_memory_mb": peak_mb,
        "peak_memory_kind": peak_kind,
        # the DIS optical flow of the frames (CPU), for flow-guided networks
        "flow_ms": None if flow_s is None else flow_s * 1e3,
    }


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
