"""Precision names (``fp32``, ``fp16``, ``bf16``, ``auto``) to autocast dtypes on a device.

bfloat16 on a CPU is fast only where the processor computes it natively
(AVX512-BF16: AMD Zen 4, Intel Cooper Lake and later; AMX: Sapphire Rapids
and later), where oneDNN's bf16 convolutions run about twice as fast as
float32. Elsewhere it is emulated and slower than float32, so ``auto`` picks
bf16 only on such CPUs, and asking for bf16 on another CPU warns once.
"""

from __future__ import annotations

import functools
import logging
import os
from pathlib import Path

import torch

from zsm.errors import ZSMError
from zsm.models import deform

log = logging.getLogger("zsm")

DTYPES: dict[str, torch.dtype | None] = {
    "fp32": None,
    "fp16": torch.float16,
    "bf16": torch.bfloat16,
}
PRECISIONS = (*DTYPES, "auto")
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
# Whether ``auto`` may pick bf16 on a CPU with native bf16. Decided by measurement (README,
# "Precision"): bf16 must not lower the scores of the public clips by more than 0.05 dB, and
# must be faster end to end. Measured on a 2-vCPU Intel Xeon VM with AVX512-BF16 and AMX,
# 1 thread, bf16 with the offset convs in bf16 (BF16_OFFSET_CONVS): `zsm evaluate` Y-PSNR
# fp32 -> bf16, all frames, bundled zsm-compact-flow (the default) carphone_pristine (119
# frames) 27.6601 -> 27.6619 dB (+0.0017), bikes (249) 32.2414 -> 32.2369 dB (-0.0044; the
# worst kind, reconstructed frames, -0.0070); zsm-compact carphone 27.2935 -> 27.2927
# (-0.0008), bikes 31.7815 -> 31.7760 (-0.0055); speed: the compact network's forward
# pass 2.46x fp32, one training step of configs/zsm-compact.toml 1.78x
# (benchmarks/precision.py). Earlier, with the offset convs in float32: `zsm upscale` of a
# 640x360 clip (24 frames, back to back) 0.033 -> 0.068 output frames/s (2.06x wall, 1.95x
# CPU time).
AUTO_BF16_ON_CPU = True
# Whether, under bf16 autocast on the CPU, the offset/mask conv of every deformable conv
# runs in bf16 like the other convs (its output made float32 at once: the mask's sigmoid,
# the flow-guided tanh bound and flow, and the sampling stay float32) rather than as a
# float32 island on a float32 copy of its input. fp16 (GPUs) and bf16 on GPUs keep the
# island. Env ZSM_BF16_OFFSET_CONVS=0 turns it off; in code, set_bf16_offset_convs().
# Decided by measurement (README, "Precision"; benchmarks/README.md, "bf16 on the CPU";
# same VM, 1 thread, interleaved in one process, `python benchmarks/precision.py`): one
# training step of configs/zsm-compact.toml fp32 2.07 s, bf16 with float32 offset convs
# 1.31 s (1.58x), with bf16 ones 1.16 s (1.78x); configs/zsm-compact-flow.toml 4.25 / 2.76 /
# 2.47 s (1.54x -> 1.72x); the compact forward pass 3.80 / 1.91 / 1.54 s (1.99x -> 2.46x);
# the scores of the public clips within 0.01 dB of fp32 (above), the demo clip's bf16
# frames 55.96-55.98 dB PSNR from the fp32 ones either way.
BF16_OFFSET_CONVS: bool = os.environ.get("ZSM_BF16_OFFSET_CONVS", "1").strip() != "0"


def set_bf16_offset_convs(enabled: bool) -> None:
    """Set :data:`BF16_OFFSET_CONVS` (read by :mod:`zsm.models.deform` through its flag)."""
    global BF16_OFFSET_CONVS
    BF16_OFFSET_CONVS = bool(enabled)
    deform.set_bf16_offset_convs(BF16_OFFSET_CONVS)


set_bf16_offset_convs(BF16_OFFSET_CONVS)


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (Linux ``/proc/cpuinfo``; empty elsewhere)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def cpu_has_native_bf16() -> bool:
    """Whether the CPU computes bfloat16 natively (AVX512-BF16 or AMX)."""
    return any(flag in cpu_flags() for flag in NATIVE_BF16_FLAGS)


def resolve_precision(device: torch.device, precision: str) -> str:
    """``precision`` with ``auto`` made concrete for ``device``.

    ``auto``: bf16 on a CPU with native bf16 where :data:`AUTO_BF16_ON_CPU`
    allows it, else fp32 (also on GPUs, where fp16 halves the memory but was
    not faster at our sizes; see benchmarks/README.md).
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision != "auto":
        return precision
    if device.type == "cpu" and AUTO_BF16_ON_CPU and cpu_has_native_bf16():
        return "bf16"
    return "fp32"


@functools.cache
def _warn_once(message: str) -> None:
    log.warning(message)


def autocast_dtype(device: torch.device, precision: str) -> torch.dtype | None:
    """The autocast dtype for ``precision`` on ``device`` (``None``: float32)."""
    precision = resolve_precision(device, precision)
    dtype = DTYPES[precision]
    if device.type == "cpu":
        if precision == "fp16":
            _warn_once("zsm: fp16 applies to GPUs only; running in float32 on the CPU")
            return None
        if precision == "bf16" and not cpu_has_native_bf16():
            _warn_once(
                "zsm: this CPU has no native bfloat16 (AVX512-BF16 or AMX): bf16 runs "
                "emulated, slower than fp32"
            )
    elif device.type == "cuda" and precision == "bf16" and not torch.cuda.is_bf16_supported():
        raise ZSMError("bf16 needs a GPU that supports bfloat16; use --precision fp16 or fp32")
    return dtype
