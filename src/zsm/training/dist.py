"""Processes and devices: single process, or DDP under ``torchrun`` (NCCL on GPUs, gloo on CPUs)."""

from __future__ import annotations

import os
import signal
import sys
import threading
from dataclasses import dataclass
from types import FrameType

import torch
import torch.distributed as dist

from zsm.errors import ZSMError


@dataclass(frozen=True)
class Dist:
    """Where this process stands: rank, world size and its device."""

    rank: int
    world_size: int
    device: torch.device
    owns_group: bool = False  # we initialised the process group (and must destroy it)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def all_reduce_mean(self, value: torch.Tensor) -> torch.Tensor:
        if self.distributed:
            value = value.clone()
            dist.all_reduce(value)
            value /= self.world_size
        return value

    def any(self, flag: bool) -> bool:
        """True on every process if ``flag`` is true on any of them."""
        if not self.distributed:
            return flag
        t = torch.tensor([int(flag)], device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())

    def close(self) -> None:
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()


def setup(device: str = "auto") -> Dist:
    """Read ``torchrun``'s environment (RANK, WORLD_SIZE, LOCAL_RANK) and join the group."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ZSMError("train.device asks for CUDA, but no CUDA device is available")
        dev = torch.device("cuda", local if dev.index is None else dev.index)
        torch.cuda.set_device(dev)
    owns = False
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
        owns = True
    return Dist(rank=rank, world_size=world, device=dev, owns_group=owns)


class StopSignals:
    """Turns the first SIGINT/SIGTERM into a request to stop after the current iteration.

    The loop then saves a checkpoint and returns; a second Ctrl-C raises
    :class:`KeyboardInterrupt` at once. Installed only in the main thread.
    """

    def __init__(self, *, announce: bool = True) -> None:
        self.received: str | None = None
        self.announce = announce
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.received = signal.Signals(signum).name
        if self.announce:
            print(
                f"\nzsm: {self.received} received: saving a checkpoint after this iteration "
                "(Ctrl-C again to quit without one)",
                file=sys.stderr,
                flush=True,
            )


def ignore_sigint_in_worker(worker_id: int) -> None:
    """Data-loader workers leave Ctrl-C to the main process, which stops cleanly."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
