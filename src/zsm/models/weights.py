"""Weights I/O: our safetensors files and official Zooming Slow-Mo checkpoints.

Our files are safetensors whose metadata carries the model config
(``zsm.config``), so a file alone rebuilds its model. Official checkpoints
(``.pth`` pickles) are read only through ``torch.load(weights_only=True)``,
which refuses anything but plain tensors and containers, then renamed
through the explicit map in :mod:`zsm.models.official_names`.
"""

from __future__ import annotations

import json
import pickle
import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from zsm.atomic import atomic_path
from zsm.errors import WeightsError
from zsm.models.config import ZSMConfig
from zsm.models.official_names import official_name_map
from zsm.models.zsm import ZoomingSlowMo

FORMAT_VERSION = "1"
CONFIG_KEY = "zsm.config"


def save_weights(
    model: ZoomingSlowMo,
    path: Path | str,
    *,
    dtype: torch.dtype | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``model``'s weights and config to a safetensors file, atomically.

    ``dtype`` (e.g. ``torch.float16``) converts floating tensors on the way;
    ``metadata`` values that are not strings are stored as JSON.
    """
    path = Path(path)
    tensors = {}
    for name, t in model.state_dict().items():
        t = t.detach().to("cpu")
        if dtype is not None and t.is_floating_point():
            t = t.to(dtype)
        tensors[name] = t.contiguous()
    meta = {
        "zsm.format": FORMAT_VERSION,
        CONFIG_KEY: model.config.to_json(),
        "zsm.parameters": str(sum(p.numel() for p in model.parameters())),
        "zsm.scale": "4",
        # informational: "2" makes the frame halfway only; "any" makes any time step
        "zsm.time_factor": "any" if model.config.time_conditioned else "2",
    }
    for key, value in (metadata or {}).items():
        meta[key] = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)
    return path


def read_weights(path: Path | str) -> tuple[ZSMConfig, dict[str, torch.Tensor], dict[str, str]]:
    """Read (config, float32 state dict, metadata) from one of our safetensors files."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (not a dict)
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise WeightsError(
            f"cannot read weights {path}: not a valid safetensors file ({exc})"
        ) from exc
    if CONFIG_KEY not in metadata:
        raise WeightsError(
            f"weights {path} carry no model config (metadata '{CONFIG_KEY}'); "
            "convert official checkpoints first: zsm convert-weights IN.pth OUT.safetensors"
        )
    try:
        config = ZSMConfig.from_json(metadata[CONFIG_KEY])
    except (ValueError, TypeError) as exc:
        raise WeightsError(f"weights {path} have an invalid model config: {exc}") from exc
    state = {k: v.float() if v.is_floating_point() else v for k, v in tensors.items()}
    return config, state, metadata


def load_state_strict(model: ZoomingSlowMo, state: Mapping[str, torch.Tensor], source: str) -> None:
    """Load ``state`` into ``model``, raising :class:`WeightsError` listing every mismatch."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(
        f"{k} {tuple(state[k].shape)} (model expects {tuple(expected[k].shape)})"
        for k in set(state) & set(expected)
        if state[k].shape != expected[k].shape
    )
    problems = []
    if missing:
        problems.append(f"missing keys {_abbrev(missing)}")
    if unexpected:
        problems.append(f"unexpected keys {_abbrev(unexpected)}")
    if wrong:
        problems.append(f"wrong shapes {_abbrev(wrong)}")
    if problems:
        raise WeightsError(f"weights {source} do not fit the model: " + "; ".join(problems))
    model.load_state_dict(dict(state), strict=True)


def _abbrev(items: list[str], limit: int = 8) -> str:
    shown = ", ".join(items[:limit])
    return f"[{shown}{f', ... ({len(items)} in all)' if len(items) > limit else ''}]"


def model_from_file(path: Path | str) -> ZoomingSlowMo:
    """Rebuild the model stored in one of our safetensors files (eval mode, CPU)."""
    config, state, _ = read_weights(path)
    model = ZoomingSlowMo(config)
    load_state_strict(model, state, str(path))
    return model.eval()


# --- official checkpoints -------------------------------------------------------------

_WRAPPERS = ("state_dict", "params_ema", "params", "model")


def canonicalize_state_dict(obj: Any, source: str) -> dict[str, torch.Tensor]:
    """Unwrap ``state_dict``/``params_ema``/``params``/``model`` and strip ``module.`` prefixes."""
    for _ in range(3):
        if isinstance(obj, Mapping) and not _is_tensor_dict(obj):
            inner = next((obj[k] for k in _WRAPPERS if k in obj), None)
            if inner is None:
                break
            obj = inner
    if not isinstance(obj, Mapping) or not _is_tensor_dict(obj):
        raise WeightsError(f"{source} holds no state dict of tensors")
    return {re.sub(r"^(module\.)+", "", k): v for k, v in obj.items()}


def _is_tensor_dict(obj: Mapping[Any, Any]) -> bool:
    return bool(obj) and all(isinstance(k, str) and torch.is_tensor(v) for k, v in obj.items())


def infer_official_config(
    state: Mapping[str, torch.Tensor], source: str = "checkpoint"
) -> ZSMConfig:
    """Infer nf, groups, front_RBs, back_RBs and hr_nf from an official state dict's shapes."""
    try:
        nf = state["conv_first.weight"].shape[0]
        groups = state["pcd_align.L3_dcnpack_1.conv_offset_mask.weight"].shape[0] // 27
        hr_nf = state["HRconv.weight"].shape[0]
    except KeyError as exc:
        raise WeightsError(
            f"{source} is not an official Zooming Slow-Mo checkpoint: missing key {exc.args[0]}"
        ) from None

    def count(prefix: str) -> int:
        pat = re.compile(rf"^{re.escape(prefix)}\.(\d+)\.")
        return len({m.group(1) for k in state if (m := pat.match(k))})

    try:
        return ZSMConfig(
            nf=nf,
            groups=groups,
            front_RBs=count("feature_extraction"),
            back_RBs=count("recon_trunk"),
            hr_nf=hr_nf,
        )
    except ValueError as exc:
        raise WeightsError(f"{source}: inconsistent official checkpoint ({exc})") from exc


def model_from_official_state(state: Mapping[str, torch.Tensor], source: str) -> ZoomingSlowMo:
    """Build a model from an official-layout state dict (names mapped explicitly, strict)."""
    state = canonicalize_state_dict(state, source)
    config = infer_official_config(state, source)
    names = official_name_map(config)
    missing = sorted(set(names) - set(state))
    unexpected = sorted(set(state) - set(names))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing keys {_abbrev(missing)}")
        if unexpected:
            parts.append(f"unexpected keys {_abbrev(unexpected)}")
        raise WeightsError(f"{source} does not match the official layout: " + "; ".join(parts))
    model = ZoomingSlowMo(config)
    load_state_strict(model, {names[k]: v.float() for k, v in state.items()}, source)
    return model.eval()


def read_official_checkpoint(path: Path | str) -> ZoomingSlowMo:
    """Load an official ``.pth`` checkpoint safely (``weights_only=True``) into our model."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        try:
            with safe_open(str(path), framework="pt") as f:
                state = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
        except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
            raise WeightsError(f"cannot read {path}: not a valid safetensors file ({exc})") from exc
        return model_from_official_state(state, str(path))
    with path.open("rb") as f:
        head = f.read(4)
    # torch.save writes a zip archive (PK..) or, in legacy format, a pickle (0x80 proto).
    if not (head.startswith(b"PK") or head[:1] == b"\x80"):
        raise WeightsError(f"cannot read checkpoint {path}: not a PyTorch checkpoint")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch warns about pickle protocols; we refuse anyway
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise WeightsError(
            f"refused to load {path}: it holds objects other than tensors "
            f"({_unpickler_reason(exc)}); nothing in it was run"
        ) from exc
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise WeightsError(f"cannot read checkpoint {path}: {exc}") from exc
    return model_from_official_state(obj, str(path))


def _unpickler_reason(exc: pickle.UnpicklingError) -> str:
    """The one informative line of torch's long weights-only refusal message."""
    text = str(exc)
    m = re.search(r"(unsupported GLOBAL \S+)", text) or re.search(
        r"WeightsUnpickler error:\s*(.+?)\s*(?:\n\s*\n|Check the documentation|$)", text, re.S
    )
    return " ".join(m.group(1).split()) if m else "unsupported pickle content"
