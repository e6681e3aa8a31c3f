"""Where the time goes: the network stage by stage, against a dense conv on the same device.

``zsm benchmark`` runs a randomly initialised network (weights do not change
the speed) on random frames and reports, per stage and per *output* frame,
the time, the work (GFLOP) and the achieved GFLOP/s; and, measured in the
same process on the same device, a dense 3x3 convolution of the model's
typical shape (``nf -> nf`` at the input size, batch = frames). Each figure is
also given relative to that dense conv, which is what the hardware and the
conv library can do on such tensors: a stage at 100% of the dense conv's
GFLOP/s loses nothing to overheads, sampling or memory traffic.

Stages are timed and counted at the network's four top-level modules, through
forward hooks (:mod:`~zsm.bench.stages`); the model is only called. The ops
between them (padding, building the frame pairs, interleaving, the global
skip) belong to no stage and count in the total only.

FLOPs are counted analytically (:mod:`~zsm.bench.flops`): 2 x the
multiply-accumulates of every convolution. A deformable conv counts as the
dense conv of the same shape (its sampling is overhead, not work), plus its
offset conv, which is an ordinary conv. Elementwise ops, resizes and
PixelShuffle are not counted.

The deformable conv alone is also timed, forward and backward
(:mod:`~zsm.bench.dcn`): the fast backend (what ``auto`` picks for the
device), torchvision's, and the dense conv of the same shape. The offset
convs are re-initialised to give offsets of a few pixels, as a trained
network's are (:mod:`~zsm.bench.offsets`).

``--precision bf16`` (CPU or GPU) or ``fp16`` (GPU) runs the network under
autocast, as ``zsm upscale`` does, against the dense conv in that precision
on activations of that dtype; the float32 network and the float32 dense conv
are timed in the same rounds, so every stage also gets its GFLOP/s as a
fraction of the float32 dense conv's and its speed-up over itself in
float32. The deformable conv alone then runs under the same autocast (its
sampling float32, its GEMMs in bf16 where the backend can) against the dense
conv in that precision, with the float32 dense conv and DCN beside them.

Timings are the best of ``repeats`` runs (after one warm-up run), with the
stages and the dense conv interleaved in every round, so that a machine
shared with other work biases both sides alike. On such a machine two more
knobs make the figures steadier (``zsm benchmark --help``): one thread with
the process's CPU time as the clock (:func:`use_process_clock`; with several
threads every parallel op waits whenever the scheduler has given a core to
someone else), and :func:`tune_malloc` (without it, every large new tensor is
page-faulted in again, which the network, allocating hundreds per frame, pays
far more often than the single dense conv it is compared with).
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import torch

from zsm.bench.dcn import bench_dcn
from zsm.bench.flops import ConvFlops
from zsm.bench.malloc import tune_malloc
from zsm.bench.model import StageResult, bench_model
from zsm.bench.offsets import OFFSET_STD_PX, realistic_offsets
from zsm.bench.report import format_report
from zsm.bench.stages import STAGE_MODULES, STAGES, StageTimer, stage_hooks
from zsm.bench.system import backend_label, device_name
from zsm.bench.timing import clock_name, use_process_clock
from zsm.device import resolve_device
from zsm.engine.precision import NATIVE_BF16_FLAGS, autocast_dtype, cpu_flags
from zsm.models.config import PRESETS, ZSMConfig
from zsm.ops.dcn import select_backend

__all__ = [
    "OFFSET_STD_PX",
    "PRECISIONS",
    "STAGES",
    "STAGE_MODULES",
    "ConvFlops",
    "StageResult",
    "StageTimer",
    "backend_label",
    "bench_dcn",
    "bench_model",
    "device_name",
    "format_report",
    "realistic_offsets",
    "run_benchmark",
    "stage_hooks",
    "tune_malloc",
    "use_process_clock",
]

# ``--precision`` names -> autocast dtype (None: float32, no autocast).
PRECISIONS: dict[str, torch.dtype | None] = {
    "fp32": None,
    "fp16": torch.float16,
    "bf16": torch.bfloat16,
}


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
    ``precision_name``: ``fp32``, or the network under ``bf16`` (CPU or GPU)
    or ``fp16`` (GPU) autocast, as ``zsm upscale --precision`` runs it; the
    float32 network and dense conv are then timed in the same rounds too
    (:func:`~zsm.bench.model.bench_model`), and the DCN alone runs under the
    same autocast against the dense conv in that precision, on the CPU in the
    network's NHWC layout (:func:`~zsm.bench.dcn.bench_dcn`).
    """
    if frames < 2:
        raise ValueError(f"--frames must be >= 2, got {frames}")
    if min(size) < 1:
        raise ValueError(f"--size must be positive, got {size[0]}x{size[1]}")
    dev = resolve_device(device)
    if precision_name not in PRECISIONS:
        raise ValueError(f"unknown precision {precision_name!r}; choose one of {list(PRECISIONS)}")
    if precision_name == "fp16" and dev.type == "cpu":
        raise ValueError("precision fp16 is for GPUs; on a CPU use fp32 or bf16")
    base = PRESETS.get(preset)
    if base is None:
        raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    config = ZSMConfig(**{**asdict(base), **(overrides or {})})
    auto = select_backend(dev).name
    if dcn_backends is None:
        dcn_backends = [auto] + (["torchvision"] if auto != "torchvision" else [])
    width, height = size
    dtype = PRECISIONS[precision_name]
    if dtype is not None:
        autocast_dtype(dev, precision_name)  # a GPU without bf16 is refused; an emulated CPU warns
    net = bench_model(
        config,
        size=size,
        frames=frames,
        device=dev,
        repeats=repeats,
        dtype=dtype,
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
        # Low precision on the CPU: NHWC, as the network runs there (oneDNN's NCHW bf16
        # conv is several times slower than its NHWC one: no fair reference).
        channels_last=channels_last or (dtype is not None and dev.type == "cpu"),
        dtype=dtype,
    )
    return {
        "device": str(dev),
        "device_name": device_name(dev),
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
        "clock": clock_name(),
        "stage_timing": "module_hooks",
        "dcn_backend": backend_label(dev),
        "cpu_bf16": _native_bf16_flags() if dev.type == "cpu" else None,
        **net,
        "dcn": dcn,
    }


def _native_bf16_flags() -> list[str]:
    """The CPU's native bfloat16 features (empty: bf16 runs emulated)."""
    return [flag for flag in NATIVE_BF16_FLAGS if flag in cpu_flags()]
