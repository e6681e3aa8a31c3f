"""What an evaluation is asked for and what it gives: options, per-frame scores, results.

The types here are what :mod:`~zsm.evaluation.report` and
:mod:`~zsm.evaluation.plots` read; they hold no logic of how scores are made.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from fractions import Fraction

import numpy as np

from zsm.engine.ensemble import check_passes
from zsm.engine.precision import PRECISIONS

RECONSTRUCTED = "reconstructed"
INTERPOLATED = "interpolated"
KINDS = ("all", RECONSTRUCTED, INTERPOLATED)
MODEL_METHOD = "zsm"


def time_label(step: int, factor: int) -> str:
    """The label of frame ``step`` (0 .. factor-1) after an input: ``"t=1/4"`` for 1 of 4,
    ``"t=1/2"`` for 2 of 4 (reduced), ``"t=0"`` for the input itself."""
    t = Fraction(step, factor)
    return f"t={t}"


def time_labels(factor: int) -> list[str]:
    """The labels of the frames a time factor puts between two inputs, in time order."""
    return [time_label(j, factor) for j in range(1, factor)]


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
    time_factor: int = 2  # LR inputs are every N-th HR frame; N-1 frames between are made

    def __post_init__(self) -> None:
        check_passes(self.ensemble)
        tf = self.time_factor
        if isinstance(tf, bool) or not isinstance(tf, int) or tf < 2:
            raise ValueError(f"time_factor must be an integer >= 2, got {tf!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.crop_border < 0:
            raise ValueError(f"crop_border must be >= 0, got {self.crop_border}")
        if self.max_frames is not None and self.max_frames < tf + 1:
            raise ValueError(
                f"max_frames must be >= {tf + 1} (two inputs, time factor {tf}), "
                f"got {self.max_frames}"
            )


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
    time_factor: int = 2  # frame i is at t = (i mod N) / N after input i // N

    @property
    def times(self) -> list[str]:
        """Per scored frame, its time step's label (``"t=0"`` for reconstructed frames)."""
        n = self.time_factor
        return [time_label(i % n, n) for i in range(len(self.kinds))]

    def time_means(self, method: str) -> dict[str, dict[str, float]]:
        """Per in-between time step (``"t=1/4"``, ...), ``method``'s mean scores there."""
        s, times = self.scores[method], self.times
        return {label: s.mean(times, label) for label in time_labels(self.time_factor)}


@dataclass
class EvaluationResult:
    data: str
    methods: list[str]
    options: EvalOptions
    weights: str | None
    clips: list[ClipResult]
    skipped: dict[str, str] = field(default_factory=dict)  # method -> why it was not scored

    def summary(self) -> dict[str, dict]:
        """Per method: mean over clips of each clip's mean, per kind and per in-between time
        step (``entry["times"]["t=1/4"]``); fps over all frames."""
        out: dict[str, dict] = {}
        for method in self.methods:
            entry: dict = {}
            for which in KINDS:
                per_clip = [c.scores[method].mean(c.kinds, which) for c in self.clips]
                entry[which] = {k: _mean([m[k] for m in per_clip]) for k in per_clip[0]}
            per_time = [c.time_means(method) for c in self.clips]
            entry["times"] = {
                label: {k: _mean([m[label][k] for m in per_time]) for k in per_time[0][label]}
                for label in time_labels(self.options.time_factor)
            }
            frames = sum(len(c.kinds) for c in self.clips)
            seconds = sum(c.scores[method].seconds for c in self.clips)
            entry["frames"] = frames
            entry["seconds"] = seconds
            entry["fps"] = frames / seconds if seconds > 0 else math.inf
            out[method] = entry
        return out


def _mean(values: Sequence[float]) -> float:
    return float(np.mean(values)) if values else math.nan
