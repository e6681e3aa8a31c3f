"""Precision names (``fp32``, ``fp16``, ``bf16``) to autocast dtypes on a device."""

from __future__ import annotations

import logging

import torch

log = logging.getLogger("zsm")

DTYPES = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}


def autocast_dtype(device: torch.device, precision: str) -> torch.dtype | None:
    """The autocast dtype for ``precision`` on ``device`` (``None``: float32)."""
    if precision not in DTYPES:
        raise ValueError(f"precision must be one of {', '.join(DTYPES)}, got {precision!r}")
    dtype = DTYPES[precision]
    if dtype is not None and device.type == "cpu":
        log.warning("zsm: %s applies to GPUs only; running in float32 on the CPU", precision)
        return None
    return dtype
