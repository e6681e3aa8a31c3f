"""One set of upscaling options, shared by the API, the CLI, the web app and the Ray runner.

Defaults live here and only here: the command line leaves an option unset
(``None``) unless the user gives it, and :meth:`UpscaleOptions.replace`
keeps the library's default for anything not named.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

from zsm.engine.ensemble import ENSEMBLE_PASSES
from zsm.engine.precision import PRECISIONS
from zsm.models.registry import DEFAULT_TIME_WEIGHTS, DEFAULT_WEIGHTS, default_weights
from zsm.video.encode import DEFAULT_CRF
from zsm.video.io import DEFAULT_FOLDER_FPS
from zsm.video.tiles import DEFAULT_TILE_OVERLAP
from zsm.video.timing import TimePlan
from zsm.video.windows import DEFAULT_WINDOW, DEFAULT_WINDOW_OVERLAP

DEFAULT_SEGMENT_SECONDS = 60.0
DEFAULT_TIME_FACTOR = 2


@dataclass(frozen=True, kw_only=True)
class UpscaleOptions:
    """How to upscale: the network, where it runs, how the video is cut, how it is written.

    Attributes:
        weights: a registered weights name or a ``.safetensors`` file (``None``: the
            bundled :data:`DEFAULT_WEIGHTS`, or :data:`DEFAULT_TIME_WEIGHTS` where the
            output needs time steps other than halfway: ``time_factor`` > 2 or ``fps``).
        device: ``auto`` (CUDA, then MPS, then CPU), ``cpu``, ``cuda[:N]``, ``mps``.
        precision: ``fp32``; ``bf16`` (bfloat16 autocast; fast on CPUs with native bf16
            and on GPUs); ``fp16`` (float16 autocast on a GPU; float32 on a CPU); ``auto``
            (:func:`zsm.engine.precision.resolve_precision`).
        window: input frames per temporal window.
        window_overlap: frames of context each window drops at each edge (``None``:
            :data:`DEFAULT_WINDOW_OVERLAP`, or less if the window is too short for it).
        tile: core side of the spatial tiles in input pixels (``None``: automatic,
            from free memory).
        tile_overlap: halo around each tile in input pixels, cropped after upscaling.
        ensemble: passes of the self-ensemble (1, 2, 4, 8 or 16).
        time_factor: N output frames per input frame, any integer >= 1 (``None``: 2
            unless ``fps`` is given): 2 doubles the frame rate, 1 keeps it (4x size only);
            N > 2 needs time-step weights. Excludes ``fps``.
        threads: CPU threads for the network and the encoder (``None``: torch's default).
        codec: video encoder (``None``: the container's first available one).
        crf: encoder quality, lower is better and larger.
        fps: the output's frame rate (any positive rate: ``60``, ``Fraction(60000, 1001)``),
            each output frame made at its exact time between the inputs
            (:mod:`zsm.video.timing`); ``None``: the time factor decides. Excludes
            ``time_factor``.
        input_fps: frame rate of an image-folder input or of the frames given to
            :func:`~zsm.upscale.upscale_frames` (``None``: :data:`DEFAULT_FOLDER_FPS` for a
            folder; a video file states its own).
        max_frames: only the first N input frames (``None``: all).
        segment_seconds: close a finished segment of the work folder this often (what
            ``resume`` keeps after an interruption).
        ray: run on a Ray cluster: its address, or ``auto`` (the cluster ``RAY_ADDRESS``
            names, else a running one, else a new local one); ``None``: in this process
            (see :mod:`zsm.distributed`).
        ray_cpus_per_task: CPUs each segment task asks for where the cluster has no GPUs
            (``None``: 1); with GPUs each task asks for one GPU.
        ray_segments: time segments per video (``None``: twice the tasks the cluster runs
            at once, shared among the videos of a folder).
    """

    weights: str | None = None
    device: str = "auto"
    precision: str = "fp32"
    window: int = DEFAULT_WINDOW
    window_overlap: int | None = None
    tile: int | None = None
    tile_overlap: int = DEFAULT_TILE_OVERLAP
    ensemble: int = 1
    time_factor: int | None = None
    threads: int | None = None
    codec: str | None = None
    crf: int = DEFAULT_CRF
    fps: Fraction | None = None
    input_fps: Fraction | None = None
    max_frames: int | None = None
    segment_seconds: float = DEFAULT_SEGMENT_SECONDS
    ray: str | None = None
    ray_cpus_per_task: float | None = None
    ray_segments: int | None = None

    def __post_init__(self) -> None:
        if isinstance(self.weights, Path):
            object.__setattr__(self, "weights", str(self.weights))
        for name in ("fps", "input_fps"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, Fraction):
                object.__setattr__(self, name, Fraction(value).limit_denominator(1_000_000))
        _at_least("window", self.window, 2)
        _at_least("window_overlap", self.window_overlap, 0)
        _at_least("tile", self.tile, 1)
        _at_least("tile_overlap", self.tile_overlap, 0)
        _at_least("threads", self.threads, 1)
        _at_least("crf", self.crf, 0)
        _at_least("max_frames", self.max_frames, 2)
        _one_of("ensemble passes", self.ensemble, ENSEMBLE_PASSES)
        if self.time_factor is not None and (
            isinstance(self.time_factor, bool) or not isinstance(self.time_factor, int)
        ):
            raise ValueError(f"time_factor must be an integer >= 1, got {self.time_factor!r}")
        _at_least("time_factor", self.time_factor, 1)
        _one_of("precision", self.precision, PRECISIONS)
        for name in ("fps", "input_fps"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be > 0, got {value}")
        if self.fps is not None and self.time_factor is not None:
            raise ValueError(f"give time_factor ({self.time_factor}) or fps ({self.fps}), not both")
        _at_least("ray_segments", self.ray_segments, 1)
        if self.ray_cpus_per_task is not None and self.ray_cpus_per_task <= 0:
            raise ValueError(f"ray_cpus_per_task must be > 0, got {self.ray_cpus_per_task}")
        if self.ray is not None and not self.ray.strip():
            raise ValueError("ray must be a cluster address or 'auto', got an empty string")
        if self.segment_seconds < 0:  # 0: a segment per window
            raise ValueError(f"segment_seconds must be >= 0, got {self.segment_seconds}")

    def replace(self, **changes: Any) -> UpscaleOptions:
        """A copy with ``changes``; an unknown name is a ``TypeError`` naming it."""
        unknown = sorted(set(changes) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            raise TypeError(f"unknown upscale option(s): {', '.join(unknown)}")
        return dataclasses.replace(self, **changes)

    @classmethod
    def of(cls, options: UpscaleOptions | None = None, **changes: Any) -> UpscaleOptions:
        """``options`` (default: all defaults) with ``changes``; ``half=True`` means fp16."""
        if changes.pop("half", False):
            changes["precision"] = "fp16"
        return (options or cls()).replace(**changes)

    @property
    def weights_name(self) -> str:
        """The weights to load: :attr:`weights`, else the bundled default for the time
        steps asked (:func:`~zsm.models.registry.default_weights`)."""
        return self.weights or default_weights(self.effective_time_factor)

    @property
    def effective_time_factor(self) -> int | None:
        """The time factor: :attr:`time_factor`, or 2 unless :attr:`fps` is given (then
        ``None``: the ratio of the rates decides)."""
        if self.time_factor is not None:
            return self.time_factor
        return None if self.fps is not None else DEFAULT_TIME_FACTOR

    def time_plan(self, in_fps: Fraction | None) -> TimePlan:
        """The output's time plan for an input at ``in_fps`` (needed only with :attr:`fps`)."""
        factor = self.effective_time_factor
        if factor is not None:
            return TimePlan.factor(factor)
        assert self.fps is not None
        if in_fps is None:
            raise ValueError(f"fps={self.fps} needs the input's frame rate (input_fps=)")
        return TimePlan.between(in_fps, self.fps)

    def time_label(self) -> str:
        """The option that sets the output's rate, as the command line writes it."""
        if self.fps is not None:
            return f"--fps {self.fps}"
        return f"--time-factor {self.effective_time_factor}"

    @property
    def overlap(self) -> int:
        """The window overlap asked for (the default when unset)."""
        return DEFAULT_WINDOW_OVERLAP if self.window_overlap is None else self.window_overlap


def _at_least(name: str, value: int | None, minimum: int) -> None:
    if value is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")


def _one_of(name: str, value: object, allowed: tuple[object, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(map(str, allowed))}, got {value!r}")


DEFAULTS = UpscaleOptions()  # what the CLI's help shows

__all__ = [
    "DEFAULTS",
    "DEFAULT_FOLDER_FPS",
    "DEFAULT_TIME_FACTOR",
    "DEFAULT_TIME_WEIGHTS",
    "DEFAULT_WEIGHTS",
    "ENSEMBLE_PASSES",
    "PRECISIONS",
    "UpscaleOptions",
]
