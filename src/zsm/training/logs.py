"""Run logs: a JSON-lines file always, TensorBoard scalars and sample frames when installed."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import torch

from zsm.atomic import atomic_path, describe_os_error, make_folder
from zsm.errors import OutputError

LOG_NAME = "log.jsonl"


def read_log(run_dir: Path | str) -> list[dict[str, Any]]:
    """Every entry of a run's ``log.jsonl``, in order."""
    path = Path(run_dir) / LOG_NAME
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class RunLog:
    """Appends ``{"iter": i, ...}`` lines to ``RUN/log.jsonl``; mirrors them to TensorBoard.

    On resume from iteration ``resume_from``, entries logged after it (by a run
    that went on past its last checkpoint before dying) are dropped first, so
    the log reads as one uninterrupted run. TensorBoard is used only if
    ``tensorboard`` is true and the package is installed.
    """

    def __init__(
        self,
        run_dir: Path,
        *,
        tensorboard: bool = True,
        resume_from: int | None = None,
        config: str | None = None,
    ) -> None:
        """``config``: the run's config as JSON, written (atomically) to ``RUN/config.json``."""
        self.run_dir = make_folder(run_dir)
        self.path = self.run_dir / LOG_NAME
        kept = []
        if resume_from is not None:
            kept = [e for e in read_log(self.run_dir) if e.get("iter", 0) <= resume_from]
        with atomic_path(self.path) as tmp:
            tmp.write_text("".join(json.dumps(e) + "\n" for e in kept))
        if config is not None:
            with atomic_path(self.run_dir / "config.json") as tmp:
                tmp.write_text(config + "\n")
        try:
            self._file = self.path.open("a")
        except OSError as exc:
            raise OutputError(describe_os_error(exc, self.path)) from exc
        self._tb = None
        if tensorboard:
            self._tb = _tensorboard_writer(self.run_dir / "tensorboard", purge_step=resume_from)

    @property
    def tensorboard(self) -> bool:
        return self._tb is not None

    def scalars(self, iteration: int, **values: float) -> None:
        entry = {"iter": iteration, **{k: _finite(v) for k, v in values.items()}}
        entry["time"] = round(time.time(), 3)
        self._file.write(json.dumps(entry) + "\n")
        self._file.flush()
        if self._tb is not None:
            for key, value in values.items():
                self._tb.add_scalar(key, value, iteration)

    def images(self, iteration: int, tag: str, images: torch.Tensor) -> None:
        """(N, 3, H, W) float frames in [0, 1] to TensorBoard (nothing without it)."""
        if self._tb is not None:
            self._tb.add_images(tag, images.clamp(0, 1).cpu(), iteration)

    def close(self) -> None:
        self._file.close()
        if self._tb is not None:
            self._tb.close()


def _finite(value: float) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


def _tensorboard_writer(folder: Path, purge_step: int | None):  # -> SummaryWriter | None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is optional
        return None
    # purge_step hides events a crashed run wrote after the checkpoint we resume from.
    return SummaryWriter(str(folder), purge_step=None if purge_step is None else purge_step + 1)
