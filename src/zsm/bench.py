"""Where the time goes: the network stage by stage, against a dense conv on the same device.

``zsm benchmark`` runs a randomly initialised network (weights do not change
the speed) on random frames and reports, per stage and per *output* frame,
the time, the work (GFLOP) and the achieved GFLOP/s; and, measured in the
same process on the same device, a dense 3x3 convolution of the model's
typical shape (``nf -> nf`` at the input size, batch = frames). Each figure is
also given relative to that dense conv, which is what the hardware and the
conv library can do on such tensors: a stage at 100% of the dense conv's
GFLOP/s loses nothing to overheads, sampling or memory traffic.

FLOPs are counted analytically: 2 x the multiply-accumulates of every
convolution. A deformable conv counts as the dense conv of the same shape
(its sampling is overhead, not work), plus its offset conv, which is an
ordinary conv. Elementwise ops, resizes and PixelShuffle are not counted.

The deformable conv alone is also timed, forward and backward: the fast
backend (what ``auto`` picks for the device), torchvision's, and the dense
conv of the same shape.

Offsets: an untrained layer predicts zero offsets, i.e. the regular grid,
which makes the sampling unrealistically cache-friendly; so the offset convs
are re-initialised to give offsets of a few pixels (and masks around 0.5),
as a trained network does.

Timings are the best of ``repeats`` runs (after one warm-up run), with the
stages and the dense conv interleaved in every round, so that a machine
shared with other work biases both sides alike. On such a machine two more
knobs make the figures steadier (``zsm benchmark --help``): one thread with
the process's CPU time as the clock (with several threads every parallel op
waits whenever the scheduler has given a core to someone else), and
:func:`tune_malloc` (without it, every large new tensor is page-faulted in
again, which the network, allocating hundreds per frame, pays far more often
than the single dense conv it is compared with).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import math
import platform
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from zsm.device import precision
from zsm.models.config import PRESETS, ZSMConfig
from zsm.models.deform import ModulatedDeformConv2d
from zsm.models.zsm import MULTIPLE, STAGES, ZoomingSlowMo
from zsm.ops.dcn import modulated_deform_conv2d, select_backend

# The dense reference conv is timed in both memory layouts; the faster one counts.
DENSE_LAYOUTS = {"NCHW": torch.contiguous_format, "NHWC": torch.channels_last}

# ``--precision`` names -> autocast dtype (None: float32, no autocast).
PRECISIONS: dict[str, torch.dtype | None] = {
    "fp32": None,
    "fp16": torch.float16,
    "bf16": torch.bfloat16,
}

# Standard deviation (pixels) the offsets are calibrated to; trained ZSM
# offsets are of this order at the finest pyramid level.
OFFSET_STD_PX = 2.0


# ---------------------------------------------------------------------------
# timing helpers


# The clock timings use: wall time, or (``use_process_clock``) this process's
# CPU time, which on a machine shared with other work does not count the
# time the scheduler gives to others; with one thread it is the op's time.
_clock: Callable[[], float] = time.perf_counter


def use_process_clock(on: bool) -> None:
    """Time with the process's CPU time (``True``) or wall time (``False``, the default)."""
    global _clock
    _clock = time.process_time if on else time.perf_counter


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Callable[[], object], device: torch.device) -> float:
    """Seconds one call of ``fn`` takes, device work included."""
    _sync(device)
    t0 = _clock()
    fn()
    _sync(device)
    return _clock() - t0


def _best_of(
    fn: Callable[[], object], device: torch.device, repeats: int, budget_s: float
) -> list[float]:
    """Run ``fn`` up to ``repeats`` times (at least once), stopping once ``budget_s`` is spent."""
    times: list[float] = []
    while len(times) < max(1, repeats) and sum(times) < budget_s:
        times.append(_timed(fn, device))
    return times


# ---------------------------------------------------------------------------
# the network, stage by stage


class _ConvFlops:
    """Forward hooks that add each conv's FLOPs to the stage that is running."""

    def __init__(self, model: nn.Module) -> None:
        self.current = ""
        self.flops: dict[str, float] = {}
        self._handles = []
        for module in model.modules():
            if isinstance(module, nn.Conv2d | ModulatedDeformConv2d):
                self._handles.append(module.register_forward_hook(self._hook))

    def _hook(self, module: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
        if isinstance(module, nn.Conv2d):
            kh, kw = module.kernel_size
            parts = output if isinstance(output, tuple) else (output,)  # offsets, mask logits
            macs = sum(o.numel() for o in parts) * (module.in_channels // module.groups) * kh * kw
        else:  # deformable: the dense conv of the same shape (its offset conv hooks itself)
            weight = module.weight
            macs = output.numel() * weight.shape[1] * weight.shape[2] * weight.shape[3]
        self.flops[self.current] = self.flops.get(self.current, 0.0) + 2.0 * macs

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        self.current = name
        yield

    def remove(self) -> None:
        for h in self._handles:
            h.remove()


def realistic_offsets(
    model: nn.Module, probe: Callable[[], object], std_px: float = OFFSET_STD_PX
) -> None:
    """Re-initialise every offset conv so its offsets have std ``std_px`` on ``probe``'s input.

    Random weights first, then one run of ``probe`` (a small forward pass)
    measures each layer's offset spread and the offset channels are rescaled
    to ``std_px``; mask logits keep random weights (masks spread around 0.5).
    """
    dcns = [m for m in model.modules() if isinstance(m, ModulatedDeformConv2d)]
    gen = torch.Generator().manual_seed(1234)
    for dcn in dcns:
        conv = dcn.offset_mask
        fan_in = conv.in_channels * conv.kernel_size[0] * conv.kernel_size[1]
        with torch.no_grad():
            w = torch.randn(conv.weight.shape, generator=gen) / math.sqrt(fan_in)
            conv.weight.copy_(w.to(conv.weight))
            conv.bias.copy_((0.5 * torch.randn(conv.bias.shape, generator=gen)).to(conv.bias))
    spread: dict[ModulatedDeformConv2d, float] = {}

    def hook(module: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
        dcn = owner[module]
        spread[dcn] = max(spread.get(dcn, 0.0), output[0].float().std().item())  # the offsets

    owner = {dcn.offset_mask: dcn for dcn in dcns}
    handles = [dcn.offset_mask.register_forward_hook(hook) for dcn in dcns]
    try:
        with torch.no_grad():
            probe()
    finally:
        for h in handles:
            h.remove()
    with torch.no_grad():
        for dcn in dcns:
            scale = std_px / max(spread.get(dcn, 1.0), 1e-6)
            n_off = 2 * dcn.offset_mask.out_channels // 3
            dcn.offset_mask.weight[:n_off] *= scale
            dcn.offset_mask.bias[:n_off] *= scale


def tune_malloc() -> bool:
    """Keep freed memory in glibc's heap for reuse instead of returning it to the OS.

    By default glibc serves every block over 32 MB (and, adaptively, smaller
    ones) with a fresh ``mmap`` and unmaps it on free, so each new activation
    tensor is page-faulted in again: on the 2-core VM measured that costs
    ~0.6 ms per MB, as much as a conv over the same tensor. The network
    allocates hundreds of such tensors per frame; a dense conv allocates one.
    Returns whether it applied (glibc only). Affects the whole process.
    """
    if platform.system() != "Linux":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        ok = libc.mallopt(m_mmap_threshold, 1 << 30) and libc.mallopt(m_trim_threshold, 2**31 - 1)
    except (OSError, AttributeError):
        return False
    return bool(ok)


# ---------------------------------------------------------------------------
# results


@dataclass
class StageResult:
    """One stage's figures, per output frame."""

    ms_per_frame: float
    gflop_per_frame: float
    gflops: float  # achieved GFLOP/s
    vs_dense_gflops: float  # gflops / dense conv's GFLOP/s
    ms_per_frame_median: float


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _peak_rss_mb() -> float | None:
    """Peak resident set size of this process so far (None where unknown, e.g. Windows)."""
    try:
        import resource
    except ImportError:  # pragma: no cover - Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports KiB, macOS bytes.
    return peak / (1024 * 1024) if platform.system() == "Darwin" else peak / 1024


def backend_label(device: torch.device) -> str:
    """The deformable-conv backend ``auto`` uses on ``device``, with its variant."""
    name = select_backend(device).name
    if name == "cpu":
        from zsm.ops.dcn import native_available

        return "cpu (native C kernel)" if native_available() else "cpu (pure PyTorch)"
    return name


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; anything else as torch spells it."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        from zsm.errors import ZSMError

        raise ZSMError("--device cuda: CUDA is not available here")
    return device


# ---------------------------------------------------------------------------
# the benchmark


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

    ``dtype``: autocast dtype (``None``: float32), as ``zsm upscale --half``
    runs the network; the dense reference runs under the same autocast.
    Also times the whole forward pass with no synchronisation between the
    stages, which gives the output frames per second. ``channels_last`` stores
    the conv weights (hence the activations they make) as NHWC.
    """
    torch.manual_seed(seed)
    width, height = size
    model = ZoomingSlowMo(config).to(device).eval()
    probe_frames = torch.rand(1, 2, 3, 32, 32, device=device)
    realistic_offsets(model, lambda: model(probe_frames))
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model.to(memory_format=memory_format)
    x = torch.rand(1, frames, 3, height, width, device=device)
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
    counter = _ConvFlops(model)
    band_bytes, model.reconstruct.band_bytes = model.reconstruct.band_bytes, 0
    with precision(device, dtype):
        # Warm-up; counts the FLOPs of whole frames (the banded HR tail calls its convs
        # directly, past the hooks, and recomputes halo rows: not counted as work).
        model(x, counter.stage)
        for ref in refs.values():
            ref()
    counter.remove()
    model.reconstruct.band_bytes = band_bytes

    times: dict[str, list[float]] = {s: [] for s in STAGES}
    dense_times: dict[str, list[float]] = {name: [] for name in refs}

    @contextlib.contextmanager
    def timed_stage(name: str) -> Iterator[None]:
        _sync(device)
        t0 = _clock()
        yield
        _sync(device)
        times[name].append(_clock() - t0)

    whole_times: list[float] = []
    with precision(device, dtype):
        for _ in range(max(1, repeats)):
            model(x, timed_stage)
            whole_times.append(_timed(lambda: model(x), device))
            for name, ref in refs.items():
                dense_times[name] += _best_of(ref, device, 3, 1.0)
    if device.type == "cuda":
        peak_mb, peak_kind = torch.cuda.max_memory_allocated(device) / 2**20, "cuda_allocated"
    else:
        peak_mb, peak_kind = _peak_rss_mb(), "rss"

    layout = min(dense_times, key=lambda name: min(dense_times[name]))
    dense_s = min(dense_times[layout])
    dense_gflops = dense_flops / dense_s / 1e9
    stages: dict[str, dict[str, float]] = {}
    total_s = total_flops = total_med = 0.0
    for name in STAGES:
        best, flops = min(times[name]), counter.flops.get(name, 0.0)
        med = statistics.median(times[name])
        total_s, total_flops, total_med = total_s + best, total_flops + flops, total_med + med
        stages[name] = asdict(_stage_result(best, med, flops, out_frames, dense_gflops))
    stages["total"] = asdict(
        _stage_result(total_s, total_med, total_flops, out_frames, dense_gflops)
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
    }


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


def bench_dcn(
    *,
    nf: int,
    groups: int,
    shape: tuple[int, int, int],
    device: torch.device,
    repeats: int,
    backends: list[str],
    seed: int = 0,
    budget_s: float = 30.0,
    channels_last: bool = False,
) -> dict[str, Any]:
    """The deformable conv alone (``nf -> nf``, 3x3): each backend and the dense conv.

    ``shape`` is (batch, H, W). Offsets have std :data:`OFFSET_STD_PX` (some
    samples fall outside the image), masks are uniform in [0, 1].
    ``channels_last``: input, dense conv and output NHWC, offsets and mask
    channel slices of one NHWC tensor, as in the network's CPU inference.
    """
    gen = torch.Generator().manual_seed(seed)
    n, h, w = shape
    k = 9 * groups

    def rand(*s: int, scale: float = 1.0) -> torch.Tensor:
        return (scale * torch.randn(s, generator=gen)).to(device)

    x, weight, bias = rand(n, nf, h, w), rand(nf, nf, 3, 3, scale=0.04), rand(nf)
    offset = rand(n, 2 * k, h, w, scale=OFFSET_STD_PX)
    mask = torch.rand(n, k, h, w, generator=gen).to(device)
    grad = rand(n, nf, h, w)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
        both = torch.cat((offset, mask), dim=1).contiguous(memory_format=torch.channels_last)
        offset, mask = both[:, : 2 * k], both[:, 2 * k :]
    flops = 2.0 * n * h * w * nf * nf * 9

    def dense() -> torch.Tensor:
        return F.conv2d(x, weight, bias, padding=1)

    impls: dict[str, Callable[[], torch.Tensor]] = {"dense": dense}
    for name in backends:
        impls[name] = lambda name=name: modulated_deform_conv2d(
            x, offset, mask, weight, bias, padding=1, backend=name
        )

    def fwd_bwd(fn: Callable[[], torch.Tensor], inputs: tuple[torch.Tensor, ...]) -> None:
        for t in inputs:
            t.requires_grad_(True)
        fn().backward(grad)
        for t in inputs:
            t.grad = None
            t.requires_grad_(False)

    def forward(fn: Callable[[], torch.Tensor]) -> None:
        with torch.no_grad():
            fn()

    runs: dict[str, tuple[Callable[[], object], Callable[[], object]]] = {}
    for name, fn in impls.items():
        inputs = (x, weight, bias) if name == "dense" else (x, offset, mask, weight, bias)
        runs[name] = (
            lambda fn=fn: forward(fn),
            lambda fn=fn, inputs=inputs: fwd_bwd(fn, inputs),
        )
    fwd_t: dict[str, list[float]] = {name: [] for name in runs}
    both_t: dict[str, list[float]] = {name: [] for name in runs}
    for f, _ in runs.values():
        f()  # warm-up (also builds the native kernel on first use)
    # Rounds interleave the implementations, so a machine shared with other
    # work biases them alike; slow ones stop after ~budget_s.
    for _ in range(max(1, repeats)):
        for name, (f, fb) in runs.items():
            if fwd_t[name] and sum(fwd_t[name]) + sum(both_t[name]) > budget_s:
                continue
            fwd_t[name].append(_timed(f, device))
            both_t[name].append(_timed(fb, device))
    results: dict[str, dict[str, float]] = {}
    for name in runs:
        fwd, both = min(fwd_t[name]), min(both_t[name])
        results[name] = {
            "forward_ms": fwd * 1e3,
            "backward_ms": max(both - fwd, 0.0) * 1e3,
            "forward_gflops": flops / fwd / 1e9,
        }
    base = results["dense"]
    for r in results.values():
        r["forward_vs_dense"] = r["forward_ms"] / base["forward_ms"]
        r["backward_vs_dense"] = r["backward_ms"] / base["backward_ms"]
    layout = "NHWC" if channels_last else "NCHW"
    return {"shape": [n, nf, h, w], "groups": groups, "layout": layout, "impls": results}


def run_benchmark(
    *,
    preset: str = "compact",
    size: tuple[int, int] = (176, 144),
    frames: int = 3,
    device: str = "auto",
    repeats: int = 2,
    dcn_backends: list[str] | None = None,
    overrides: dict[str, Any] | None = None,
    malloc_tuned: bool = False,
    precision_name: str = "fp32",
    channels_last: bool = False,
) -> dict[str, Any]:
    """Everything ``zsm benchmark`` reports, as a JSON-ready dict.

    ``dcn_backends``: backends to time for the DCN alone (default: the one
    ``auto`` picks on the device, plus ``torchvision`` if different);
    ``overrides``: model config fields replacing the preset's (tests use a tiny net);
    ``malloc_tuned``: only recorded (the caller applied :func:`tune_malloc`);
    ``precision_name``: ``fp32``, or ``fp16``/``bf16`` autocast (GPU only) for
    the network (the DCN-alone figures stay float32, as the network keeps them).
    """
    if frames < 2:
        raise ValueError(f"--frames must be >= 2, got {frames}")
    if min(size) < 1:
        raise ValueError(f"--size must be positive, got {size[0]}x{size[1]}")
    dev = resolve_device(device)
    if precision_name not in PRECISIONS:
        raise ValueError(f"unknown precision {precision_name!r}; choose one of {list(PRECISIONS)}")
    if precision_name != "fp32" and dev.type == "cpu":
        raise ValueError(f"precision {precision_name} is for GPUs; the CPU path runs in fp32")
    base = PRESETS.get(preset)
    if base is None:
        raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    config = ZSMConfig(**{**asdict(base), **(overrides or {})})
    auto = select_backend(dev).name
    if dcn_backends is None:
        dcn_backends = [auto] + (["torchvision"] if auto != "torchvision" else [])
    width, height = size
    net = bench_model(
        config,
        size=size,
        frames=frames,
        device=dev,
        repeats=repeats,
        dtype=PRECISIONS[precision_name],
        channels_last=channels_last,
    )
    hp, wp = net["dense_conv"]["shape"][2:]
    dcn = bench_dcn(
        nf=config.nf,
        groups=config.groups,
        shape=(frames, hp, wp),
        device=dev,
        repeats=repeats,
        backends=dcn_backends,
    )
    return {
        "device": str(dev),
        "device_name": _device_name(dev),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "preset": preset,
        "config": asdict(config),
        "size": [width, height],
        "frames": frames,
        "repeats": repeats,
        "precision": precision_name,
        "channels_last": channels_last,
        "malloc_tuned": malloc_tuned,
        "clock": "process" if _clock is time.process_time else "wall",
        "dcn_backend": backend_label(dev),
        **net,
        "dcn": dcn,
    }


def format_report(r: dict[str, Any]) -> str:
    """The human-readable table ``zsm benchmark`` prints."""
    c, d = r["config"], r["dense_conv"]
    w, h = r["size"]
    lines = [
        f"zsm benchmark: preset {r['preset']} (nf={c['nf']}, groups={c['groups']}, "
        f"front_RBs={c['front_RBs']}, back_RBs={c['back_RBs']}, hr_nf={c['hr_nf']})",
        f"input {r['frames']} frames {w}x{h} -> {r['output_frames']} frames {4 * w}x{4 * h}; "
        f"device {r['device']} ({r['device_name']}, {r['threads']} threads); "
        f"DCN backend {r['dcn_backend']}; {r.get('precision', 'fp32')}"
        + ("; channels_last" if r.get("channels_last") else "")
        + f"; best of {r['repeats']}"
        + ("; malloc tuned" if r.get("malloc_tuned") else "")
        + ("; CPU-time clock" if r.get("clock") == "process" else ""),
        f"dense 3x3 conv {c['nf']}->{c['nf']} on {tuple(d['shape'])}: {d['ms']:.1f} ms, "
        f"{d['gflops']:.1f} GFLOP/s"
        + (
            f" ({d['layout']}, the faster layout: "
            + ", ".join(f"{k} {v:.1f} ms" for k, v in d["ms_by_layout"].items())
            + ")"
            if "layout" in d
            else ""
        ),
        "",
        f"{'stage':<12}{'ms/frame':>10}{'GFLOP/frame':>13}{'GFLOP/s':>9}"
        f"{'% of dense GFLOP/s':>20}{'median ms/frame':>17}",
    ]
    for name, s in r["stages"].items():
        lines.append(
            f"{name:<12}{s['ms_per_frame']:>10.1f}{s['gflop_per_frame']:>13.2f}"
            f"{s['gflops']:>9.1f}{100 * s['vs_dense_gflops']:>19.0f}%"
            f"{s['ms_per_frame_median']:>17.1f}"
        )
    lines.append(
        f"whole forward, no sync between stages: {r['whole_ms']:.1f} ms for "
        f"{r['output_frames']} output frames = {r['output_fps']:.1f} output frames/s"
    )
    mem = r["peak_memory_mb"]
    kind = "peak RSS" if r["peak_memory_kind"] == "rss" else "peak CUDA memory allocated"
    lines.append(f"{kind}: {mem:.0f} MB" if mem is not None else f"{kind}: unknown")
    dcn = r["dcn"]
    lines += [
        "",
        f"deformable conv alone: {tuple(dcn['shape'])}, 3x3, {dcn['groups']} offset groups",
        f"{'impl':<14}{'fwd ms':>9}{'x dense':>9}{'bwd ms':>10}{'x dense':>9}{'fwd GFLOP/s':>13}",
    ]
    for name, v in dcn["impls"].items():
        lines.append(
            f"{name:<14}{v['forward_ms']:>9.1f}{v['forward_vs_dense']:>9.2f}"
            f"{v['backward_ms']:>10.1f}{v['backward_vs_dense']:>9.2f}{v['forward_gflops']:>13.1f}"
        )
    return "\n".join(lines)
