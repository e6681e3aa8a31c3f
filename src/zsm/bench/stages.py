"""The network's stages, seen from outside: hooks on its four top-level modules.

The benchmark calls ``model(x)`` only; forward pre-hooks and forward hooks on
``model.extract``, ``model.interpolate``, ``model.aggregate`` and
``model.reconstruct`` mark where each stage starts and ends. What runs between
those modules (padding to a multiple of 4, building the frame pairs,
interleaving the key and middle frames, the global bicubic skip, the crop)
belongs to no stage and counts in the total only.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

from zsm.bench.timing import now, sync

# Top-level child of ZoomingSlowMo -> the stage name the report uses (the paper's names).
STAGE_MODULES = {
    "extract": "extract",
    "interpolate": "interpolate",
    "aggregate": "ConvLSTM",
    "reconstruct": "reconstruct",
}
STAGES = tuple(STAGE_MODULES.values())


@contextlib.contextmanager
def stage_hooks(
    model: nn.Module, enter: Callable[[str], None], leave: Callable[[str], None]
) -> Iterator[None]:
    """While open, ``enter(stage)`` runs before each stage module and ``leave(stage)`` after."""
    handles = []
    for attr, stage in STAGE_MODULES.items():
        module = getattr(model, attr)

        def pre(module: nn.Module, args: tuple[Any, ...], stage: str = stage) -> None:
            enter(stage)

        def post(module: nn.Module, args: tuple[Any, ...], out: Any, stage: str = stage) -> None:
            leave(stage)

        handles += [module.register_forward_pre_hook(pre), module.register_forward_hook(post)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


class StageTimer:
    """Seconds per stage, one entry per forward pass (:meth:`end_run` closes a pass).

    The device is synchronised on entering and leaving each stage, so that a
    stage's time holds its own GPU work and none of its neighbours'.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.times: dict[str, list[float]] = {s: [] for s in STAGES}
        self._run: dict[str, float] = {}
        self._start = 0.0

    def enter(self, stage: str) -> None:
        sync(self.device)
        self._start = now()

    def leave(self, stage: str) -> None:
        sync(self.device)
        # Summed, in case a stage module is ever called more than once per pass.
        self._run[stage] = self._run.get(stage, 0.0) + now() - self._start

    def end_run(self) -> None:
        missing = [s for s in STAGES if s not in self._run]
        if missing:
            raise RuntimeError(f"the forward pass never ran the stage(s) {missing}")
        for stage in STAGES:
            self.times[stage].append(self._run[stage])
        self._run = {}
