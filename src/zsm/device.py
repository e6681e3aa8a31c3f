"""Device choice (``auto``/``cpu``/``cuda``/``mps``), half precision and free memory."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator

import torch

from zsm.errors import ZSMError

log = logging.getLogger("zsm")

DEVICES = ("auto", "cpu", "cuda", "mps")
GiB = 1 << 30
# Working memory the model may use on a CPU, at most: keeps a 720p run well
# under 6 GB resident, with the stitched window and the encoder beside it.
CPU_BUDGET_CAP = int(2.5 * GiB)


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps and mps.is_available())


def resolve_device(name: str | torch.device | None = "auto") -> torch.device:
    """``auto`` picks CUDA, then MPS, then CPU; an explicit device must exist."""
    if isinstance(name, torch.device):
        return name
    name = (name or "auto").lower()
    kind = name.split(":")[0]
    if kind not in DEVICES:
        raise ZSMError(f"unknown device {name!r}; choose one of {', '.join(DEVICES)}")
    if kind == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps") if _mps_available() else torch.device("cpu")
    if kind == "cuda" and not torch.cuda.is_available():
        why = "this torch build has no CUDA" if torch.version.cuda is None else "no CUDA GPU found"
        raise ZSMError(
            f"device {name!r} requested but CUDA is not available ({why}); use --device cpu"
        )
    if kind == "mps" and not _mps_available():
        raise ZSMError(
            f"device {name!r} requested but Apple MPS is not available; use --device cpu"
        )
    return torch.device(name)


@contextlib.contextmanager
def precision(device: torch.device, dtype: torch.dtype | None) -> Iterator[None]:
    """Inference mode, under autocast when ``dtype`` is set.

    Autocast rather than ``model.half()``: ops that need float32 (the
    deformable convolutions, norms) keep it.
    """
    with torch.inference_mode():
        if dtype is None:
            yield
        else:
            with torch.autocast(device_type=device.type, dtype=dtype):
                yield


def memory_budget(device: torch.device) -> int:
    """Bytes the model may use for one tile on ``device``."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(0.6 * free)
    if device.type == "mps":
        with contextlib.suppress(Exception):
            free = torch.mps.recommended_max_memory() - torch.mps.driver_allocated_memory()
            return int(0.5 * free)
        return 2 * GiB
    return min(int(0.4 * available_ram()), CPU_BUDGET_CAP)


def available_ram() -> int:
    """Available physical memory in bytes (``MemAvailable``; a guess where unknown)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    with contextlib.suppress(ValueError, OSError, AttributeError):
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return 4 * GiB


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Run with ``threads`` intra-op CPU threads (``None``: torch's default), then restore."""
    if not threads:
        yield
        return
    if threads < 1:
        raise ZSMError(f"--threads must be >= 1, got {threads}")
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)
