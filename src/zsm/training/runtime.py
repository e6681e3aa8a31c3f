"""Small pieces of the training loop: batch unpacking, run sizes, seeding, progress."""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from zsm.data.pairs import TrainingPairs
from zsm.models.config import ZSMConfig
from zsm.models.zsm import ZoomingSlowMo
from zsm.training.ema import EMA
from zsm.training.schedule import CosineRestarts


def _unpack(
    batch: list[torch.Tensor], dataset: TrainingPairs, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """(lr, hr, flow or None, times or None) of a batch of ``dataset``, on ``device``."""
    lr, hr, *rest = (t.to(device) for t in batch)
    flow = rest.pop(0) if dataset.flow else None
    times = rest.pop(0) if dataset.times is not None else None
    return lr, hr, flow, times


_FLOW_FIELDS = ("flow_guided", "max_residual")
_TIME_FIELDS = ("time_conditioned",)


def _sizes(config: ZSMConfig, *, flow: bool = False, time: bool = False) -> dict[str, Any]:
    """A model config's fields, without those of flow guidance (``flow``) and of the time
    input (``time``)."""
    drop = (_FLOW_FIELDS if flow else ()) + (_TIME_FIELDS if time else ())
    return {k: v for k, v in dataclasses.asdict(config).items() if k not in drop}


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class _NoProgress:
    def update(self, n: int = 1) -> None: ...

    def set_postfix(self, **kwargs: object) -> None: ...

    def write(self, text: str) -> None: ...

    def close(self) -> None: ...


def _progress(start: int, total: int, *, enabled: bool):  # -> tqdm | _NoProgress
    """Progress bar of iteration / total with loss, it/s (or s/it) and ETA."""
    if not enabled:
        return _NoProgress()
    from tqdm import tqdm

    return tqdm(total=total, initial=start, unit="it", dynamic_ncols=True, desc="train")


@dataclass
class _State:
    """What one process holds during a run."""

    model: ZoomingSlowMo
    net: nn.Module  # the model, DDP-wrapped when distributed
    params: list[nn.Parameter]
    optimizer: torch.optim.Optimizer
    scheduler: CosineRestarts
    scaler: torch.amp.GradScaler
    ema: EMA | None
    amp_dtype: torch.dtype | None
    iteration: int = 0
    samples_seen: int = 0
    loss_sum: torch.Tensor | None = None  # loss summed since the last log line
    loss_count: int = 0
