"""Registry of bundled weights: a name -> file, preset, recipe and measured scores.

``load_model("zsm-compact")`` needs nothing but this table and the file
shipped in ``zsm/weights/``; any other argument is taken as a path to one of
our safetensors files.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from zsm.errors import WeightsError
from zsm.models.weights import model_from_file
from zsm.models.zsm import ZoomingSlowMo


@dataclass(frozen=True)
class WeightsEntry:
    """A bundled weights file and what is known about it."""

    name: str
    filename: str
    preset: str
    description: str
    recipe: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)

    @property
    def path(self) -> Path:
        return Path(str(resources.files("zsm") / "weights" / self.filename))


_REGISTRY: dict[str, WeightsEntry] = {}

DEFAULT_WEIGHTS = "zsm-compact-flow"
# the default where the output needs frames at other times than halfway (x3, x4, --fps)
DEFAULT_TIME_WEIGHTS = "zsm-compact-time"


def default_weights(time_factor: int | None) -> str:
    """The bundled weights for output frames per input ``time_factor`` (``None``: a target
    frame rate): :data:`DEFAULT_TIME_WEIGHTS` where other time steps than halfway may be
    needed (above 2, or a rate), else :data:`DEFAULT_WEIGHTS` (halfway only, its best x2)."""
    return DEFAULT_TIME_WEIGHTS if time_factor is None or time_factor > 2 else DEFAULT_WEIGHTS


def register_weights(entry: WeightsEntry) -> None:
    if entry.name in _REGISTRY:
        raise ValueError(f"weights name {entry.name!r} is already registered")
    _REGISTRY[entry.name] = entry


def registered_weights() -> dict[str, WeightsEntry]:
    """Every registered weights name and its entry."""
    return dict(_REGISTRY)


def resolve_weights(name_or_path: str | Path) -> Path:
    """The safetensors file for a registered name or an explicit path."""
    key = str(name_or_path)
    if key in _REGISTRY:
        path = _REGISTRY[key].path
        if not path.is_file():
            raise WeightsError(
                f"bundled weights {key!r} are missing from the installation ({path})"
            )
        return path
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return path
    if path.suffix or path.parent != Path("."):
        raise WeightsError(f"weights file not found: {path}")
    raise WeightsError(
        f"unknown weights {key!r}: not a registered name ({', '.join(sorted(_REGISTRY)) or 'none'})"
        " and no such file"
    )


def load_model(
    name_or_path: str | Path = DEFAULT_WEIGHTS, *, device: str | torch.device = "cpu"
) -> ZoomingSlowMo:
    """A registered weights name or a safetensors file -> the model, eval mode, on ``device``."""
    return model_from_file(resolve_weights(name_or_path)).to(device).eval()


register_weights(
    WeightsEntry(
        name="zsm-compact",
        filename="zsm-compact.safetensors",
        preset="compact",
        description="Compact Zooming Slow-Mo trained on a 2-core CPU, fine-tuned on one GPU "
        "(see MODEL_CARD.md)",
        recipe="configs/zsm-compact.toml, 3,451 iterations (CPU), then "
        "configs/zsm-compact-gpu.toml, 600 iterations, and configs/zsm-compact-motion.toml, "
        "900 + 560 iterations (H200); scripts/train_zsm_compact.sh",
        # `zsm evaluate CLIP` (Y-PSNR dB, Y-SSIM), all frames, no border crop.
        metrics={
            "carphone_pristine": {"all": (27.29, 0.8492), "interpolated": (26.94, 0.8390)},
            "bikes": {"all": (31.78, 0.8926), "interpolated": (28.30, 0.8647)},
        },
    )
)

register_weights(
    WeightsEntry(
        name="zsm-compact-flow",
        filename="zsm-compact-flow.safetensors",
        preset="compact-flow",
        description="Flow-guided compact Zooming Slow-Mo: zsm-compact's weights fine-tuned with "
        "DIS-flow-guided alignment on a 2-core CPU (see MODEL_CARD.md)",
        recipe="configs/zsm-compact-flow.toml from zsm-compact, 4,461 iterations (CPU, bf16), "
        "EMA weights",
        # `zsm evaluate CLIP` (Y-PSNR dB, Y-SSIM), all frames, no border crop, the flow at
        # zsm.ops.flow.FLOW_SCALE 4 (at scale 1: carphone 27.66 / 27.49, bikes 32.24 / 29.23).
        metrics={
            "carphone_pristine": {"all": (27.66, 0.8603), "interpolated": (27.49, 0.8575)},
            "bikes": {"all": (32.33, 0.8980), "interpolated": (29.41, 0.8747)},
        },
    )
)

register_weights(
    WeightsEntry(
        name="zsm-compact-time",
        filename="zsm-compact-time.safetensors",
        preset="compact-time",
        description="Time-conditioned flow-guided compact Zooming Slow-Mo: frames at any time "
        "step between two inputs (x3, x4, x8, --fps); zsm-compact-flow's weights trained with "
        "targets at several t on a 2-core CPU (see MODEL_CARD.md)",
        recipe="configs/zsm-compact-time.toml from zsm-compact-flow (4,461), 1,500 iterations "
        "(CPU, bf16), raw weights (validation preferred them to the EMA)",
        # `zsm evaluate CLIP [--time-factor 4]` (Y-PSNR dB, Y-SSIM), all frames, no border crop,
        # the flow at zsm.ops.flow.FLOW_SCALE 4 (MODEL_CARD.md has scale 1 too).
        metrics={
            "carphone_pristine": {"all": (27.72, 0.8613), "interpolated": (27.54, 0.8582)},
            "bikes": {"all": (32.29, 0.8980), "interpolated": (29.37, 0.8746)},
            "carphone_pristine x4": {"all": (26.83, 0.8315), "interpolated": (26.48, 0.8203)},
            "bikes x4": {"all": (29.09, 0.8545), "interpolated": (27.01, 0.8319)},
        },
    )
)
