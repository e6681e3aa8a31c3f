"""What the benchmark ran on: the device's name, the DCN backend, the process's peak memory."""

from __future__ import annotations

import platform
from pathlib import Path

import torch

from zsm.ops.dcn import select_backend


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU's model name where the OS tells it."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def peak_rss_mb() -> float | None:
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
