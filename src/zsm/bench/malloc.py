"""glibc malloc tuning, so that large tensors are not page-faulted in anew each time."""

from __future__ import annotations

import ctypes
import platform


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
