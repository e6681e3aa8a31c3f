"""What an evaluation is asked for and what it gives: options, per-frame scores, results.

The types here are what :mod:`~zsm.evaluation.report` and
:mod:`~zsm.evaluation.plots` read; they hold no logic of how scores are made.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from zsm.engine.ensemble import check_passes
from zsm.engine.precision import PRECISIONS

RECONSTRUCTED = "reconstructed"
INTERPOLATED = "interpolated"
KINDS = ("all", RECONSTRUCTED, INTERPOLATED)
MODEL_METHOD = "zsm"


@dataclass(frozen=True)
class EvalOptions:
    """How clips are cut and scored."""

    crop_border: int = 0  # pixels dropped on each side before scoring (0: none)
    max_frames: int | None = None  # use at most this many HR frames of each clip
    lpips: bool = False  # also LPIPS (needs the optional ``lpips`` package)
    progress: bool = True  # a progress bar per clip on stderr
    device: str = "cpu"  # where the model runs
    ensemble: int = 1  # passes of the model's self-ensemble (zsm.engine.ensemble)
    precision: str = "fp32"  # of the model (zsm.engine.precision)

    def __post_init__(self) -> None:
        check_passes(self.ensemble)
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.crop_border < 0:
            raise ValueError(f"crop_border must be >= 0, got {self.crop_border}")
        if self.max_frames is not None and self.max_frames < 3:
            raise ValueError(f"max_frames must be >= 3 (two inputs), got {self.max_frames}")


@dataclass
class MethodScores:
    """One method's per-frame scores on one clip and the time it took."""

    psnr: list[float] = field(default_factory=list)
    ssim: list[float] = field(default_factory=list)
    lpips: list[float] | None = None
    seconds: float = 0.0

    def mean(self, kinds: Sequence[str], which: str) -> dict[str, float]:
        """Mean PSNR/SSIM (and LPIPS) over the frames of kind ``which`` ("all" for every one)."""
        keep = [i for i, k in enumerate(kinds) if which in ("all", k)]
        out = {
            "psnr": _mean([self.psnr[i] for i in keep]),
            "ssim": _mean([self.ssim[i] for i in keep]),
        }
        if self.lpips is not None:
            out["lpips"] = _mean([self.lpips[i] for i in keep])
        return out

    def fps(self) -> float:
        return len(self.psnr) / self.seconds if self.seconds > 0 else math.inf


@dataclass
class CropExample:
    """A crop of one frame for every shown method: where the subject gains most or least."""

    label: str  # "most gain" / "least gain"
    frame: int
    kind: str
    subject: str
    reference: str  # the best other method on that frame
    gain_db: float  # subject PSNR minus reference PSNR on the whole frame
    box: tuple[int, int, int]  # top, left, side (HR pixels)
    tiles: dict[str, np.ndarray]  # "GT" and method names -> uint8 crops
    psnr: dict[str, float]  # whole-frame PSNR-Y of each shown method


@dataclass
class ClipResult:
    name: str
    width: int
    height: int
    kinds: list[str]  # per scored frame: reconstructed / interpolated
    scores: dict[str, MethodScores]
    notes: list[str] = field(default_factory=list)
    crops: list[CropExample] = field(default_factory=list)


@dataclass
class EvaluationResult:
    data: str
    methods: list[str]
    options: EvalOptions
    weights: str | None
    clips: list[ClipResult]

    def summary(self) -> dict[str, dict]:
        """Per method: mean over clips of each clip's mean, per kind; fps over all frames."""
        out: dict[str, dict] = {}
        for method in self.methods:
            entry: dict = {}
            for which in KINDS:
                per_clip = [c.scores[method].mean(c.kinds, which) for c in self.clips]
                entry[which] = {k: _mean([m[k] for m in per_clip]) for k in per_clip[0]}
            frames = sum(len(c.kinds) for c in self.clips)
            seconds = sum(c.scores[method].seconds for c in self.clips)
            entry["frames"] = frames
            entry["seconds"] = seconds
            entry["fps"] = frames / seconds if seconds > 0 else math.inf
            out[method] = entry
        return out


def _mean(values: Sequence[float]) -> float:
    return float(np.mean(values)) if values else math.nan
