"""Training checkpoints: everything needed to continue a run as if it had never stopped.

Layout under the run folder::

    checkpoints/iter_00001000/model.safetensors   weights + config (loadable by zsm.load_model)
    checkpoints/iter_00001000/ema.safetensors     EMA weights, when EMA is on
    checkpoints/iter_00001000/state.pt            optimizer, scheduler, AMP scaler, RNG states,
                                                  data-stream position, config (plain tensors and
                                                  containers only: read with weights_only=True)
    checkpoints/latest.json                       {"iteration": 1000, "path": "iter_00001000"}

A checkpoint folder is written under a temporary name and renamed when
complete, then ``latest.json`` is replaced atomically: a crash at any point
leaves the previous checkpoint in force.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from zsm.atomic import atomic_path
from zsm.errors import ZSMError
from zsm.models.weights import read_weights, save_weights
from zsm.models.zsm import ZoomingSlowMo

STATE_FORMAT = 1
LATEST = "latest.json"


@dataclass
class Checkpoint:
    """A loaded checkpoint: weights, optional EMA weights and the training state."""

    path: Path
    iteration: int
    model: dict[str, torch.Tensor]
    ema: dict[str, torch.Tensor] | None
    state: dict[str, Any]


def checkpoint_dir(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints"


def save_checkpoint(
    run_dir: Path,
    *,
    iteration: int,
    model: ZoomingSlowMo,
    ema: ZoomingSlowMo | None,
    state: dict[str, Any],
    metadata: dict[str, Any],
    keep: int = 2,
) -> Path:
    """Write checkpoint ``iteration`` (complete or not at all); returns its folder."""
    root = checkpoint_dir(run_dir)
    root.mkdir(parents=True, exist_ok=True)
    name = f"iter_{iteration:08d}"
    final = root / name
    if not final.is_dir():
        partial = root / f".{name}.partial-{os.getpid()}"
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir()
        try:
            meta = {**metadata, "zsm.train.iteration": iteration}
            save_weights(model, partial / "model.safetensors", metadata=meta)
            if ema is not None:
                save_weights(ema, partial / "ema.safetensors", metadata={**meta, "zsm.ema": True})
            with atomic_path(partial / "state.pt") as tmp:
                torch.save({"format": STATE_FORMAT, "iteration": iteration, **state}, tmp)
            os.replace(partial, final)
        finally:
            shutil.rmtree(partial, ignore_errors=True)
    with atomic_path(root / LATEST) as tmp:
        tmp.write_text(json.dumps({"iteration": iteration, "path": name}) + "\n")
    _prune(root, keep, protect=final)
    return final


def _prune(root: Path, keep: int, *, protect: Path) -> None:
    folders = sorted(p for p in root.glob("iter_*") if p.is_dir())
    for old in folders[: max(0, len(folders) - keep)]:
        if old != protect:
            shutil.rmtree(old, ignore_errors=True)


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete checkpoint folder of a run, or None."""
    root = checkpoint_dir(run_dir)
    pointer = root / LATEST
    if pointer.is_file():
        try:
            path = root / json.loads(pointer.read_text())["path"]
        except (ValueError, KeyError, TypeError) as exc:
            raise ZSMError(f"corrupt checkpoint pointer {pointer}: {exc}") from exc
        if (path / "state.pt").is_file():
            return path
    complete = sorted(p for p in root.glob("iter_*") if (p / "state.pt").is_file())
    return complete[-1] if complete else None


def load_checkpoint(path: Path) -> Checkpoint:
    """Read a checkpoint folder (weights via safetensors, state via ``weights_only=True``)."""
    path = Path(path)
    try:
        state = torch.load(path / "state.pt", map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, ValueError) as exc:
        raise ZSMError(f"cannot read training state {path / 'state.pt'}: {exc}") from exc
    if state.get("format") != STATE_FORMAT:
        raise ZSMError(f"{path / 'state.pt'}: unknown training-state format {state.get('format')}")
    _, weights, _ = read_weights(path / "model.safetensors")
    ema = None
    if (path / "ema.safetensors").is_file():
        _, ema, _ = read_weights(path / "ema.safetensors")
    return Checkpoint(path, int(state["iteration"]), weights, ema, state)


# --- RNG states -----------------------------------------------------------------------


def rng_state() -> dict[str, Any]:
    """Every global RNG's state, as plain tensors and containers."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
