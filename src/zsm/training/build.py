"""Config tables -> clip sources, the training data set and the validation clips.

A source table has a ``kind`` and that kind's options:

- ``vimeo``: ``path`` (the folder holding ``sequences/`` and the split lists),
  ``split`` (``train``/``test``), ``list_file``.
- ``frames``: Vid4-style ``path/<clip>/*.png``; ``stride``, ``clips`` (names).
- ``videos``: ``path`` (a video file or folder, or a list of them),
  ``frames = [start, stop]``, ``hr_scale``, ``cache_mb``, ``stride``.
- ``synthetic``: ``photos`` (an image folder) and/or ``skimage`` (names of
  scikit-image sample photos), ``size`` (clips per epoch), ``frame_size``
  (default: the HR patch), and any :class:`~zsm.data.synthetic.MotionConfig` field.

Validation tables take the same keys plus ``crop`` (side of the HR centre
crop, 0 = whole frame) and ``windows`` (how many 7-frame windows, evenly
spread over the source, are scored). ``[[data.val]]`` lists several (e.g. a
held-out video and synthetic fast motion): their windows are scored together.

With ``data.time_factors`` every training source is built with clips of the
smallest factor's span (:mod:`zsm.data.timesteps`), and
:func:`build_validation_at` gives the same validation windows at one time
factor, every in-between frame a target.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import torch

from zsm.data.augment import AugmentConfig
from zsm.data.concat import ConcatSources
from zsm.data.datasets import (
    CLIP_LENGTH,
    ClipSource,
    FrameFolderClips,
    TimedClipSource,
    VideoFolderClips,
    VimeoSeptuplets,
)
from zsm.data.degrade import make_lr_clip
from zsm.data.pairs import DegradeConfig, TrainingPairs, clip_to_tensor
from zsm.data.synthetic import MotionConfig, SyntheticMotion, load_photos
from zsm.errors import InputError
from zsm.training.config import ConfigError, DataSection, time_factors, val_tables
from zsm.training.validate import TimedValidationClip, ValidationClip


def _path(value: Any, root: Path) -> Path:
    path = Path(str(value)).expanduser()
    return path if path.is_absolute() else root / path


def _take(spec: dict[str, Any], allowed: set[str], where: str) -> dict[str, Any]:
    unknown = sorted(set(spec) - allowed - {"kind"})
    if unknown:
        raise ConfigError(f"{where}: unknown keys {unknown} for kind {spec['kind']!r}")
    return {k: v for k, v in spec.items() if k != "kind"}


def build_source(
    spec: dict[str, Any],
    *,
    root: Path,
    frame_size: int,
    length: int = CLIP_LENGTH,
    where: str = "data source",
) -> ClipSource:
    """One clip source from its config table.

    ``frame_size``: default side of synthetic frames; ``length``: frames per clip.
    """
    kind = spec.get("kind")
    if kind == "vimeo":
        o = _take(spec, {"path", "split", "list_file"}, where)
        return VimeoSeptuplets(
            _path(o["path"], root),
            split=o.get("split", "train"),
            list_file=o.get("list_file"),
            length=length,
        )
    if kind == "frames":
        o = _take(spec, {"path", "stride", "clips"}, where)
        return FrameFolderClips(
            _path(o["path"], root), stride=o.get("stride", 1), clips=o.get("clips"), length=length
        )
    if kind == "videos":
        o = _take(spec, {"path", "frames", "hr_scale", "cache_mb", "stride"}, where)
        paths = o["path"] if isinstance(o["path"], list) else [o["path"]]
        frames = o.get("frames")
        return VideoFolderClips(
            [_path(p, root) for p in paths],
            frames=tuple(frames) if frames is not None else None,
            hr_scale=float(o.get("hr_scale", 1.0)),
            cache_mb=float(o.get("cache_mb", 512.0)),
            stride=int(o.get("stride", 1)),
            length=length,
        )
    if kind == "synthetic":
        motion_keys = {f.name for f in dataclasses.fields(MotionConfig)}
        o = _take(spec, {"photos", "skimage", "size", "frame_size", *motion_keys}, where)
        photos = load_photos(
            _path(o["photos"], root) if o.get("photos") else None, skimage=o.get("skimage", ())
        )
        side = o.get("frame_size", frame_size)
        size = (side, side) if isinstance(side, int) else tuple(side)
        motion = MotionConfig(**{k: v for k, v in o.items() if k in motion_keys})
        return SyntheticMotion(
            photos, size=int(o.get("size", 1000)), frame_size=size, length=length, motion=motion
        )
    raise ConfigError(f"{where}: unknown kind {kind!r}; use vimeo, frames, videos or synthetic")


def build_training_set(data: DataSection, *, flow: bool = False) -> TrainingPairs:
    """The training pairs of ``data``; ``flow``: with each sample's LR flow (flow-guided)."""
    root = Path(data.root).expanduser()
    augment = AugmentConfig(
        lr_patch=data.lr_patch, flips=data.flips, rotate=data.rotate, reverse=data.reverse
    )
    times = time_factors(data)
    length = data.clip_frames if times is None else times.min_span
    sources = []
    for i, spec in enumerate(data.train):
        where = f"data.train[{i}]"
        try:
            source = build_source(
                spec, root=root, frame_size=augment.hr_patch, length=length, where=where
            )
        except (InputError, ValueError) as exc:
            if times is None:
                raise
            raise ConfigError(
                f"{where}: {exc} (data.time_factors {list(times.factors)} with "
                f"{times.inputs} inputs need clips of at least {length} frames)"
            ) from exc
        if times is not None and not isinstance(source, TimedClipSource):
            raise ConfigError(f"{where}: {source!r} cannot read clips at several time steps")
        sources.append(source)
    source = sources[0] if len(sources) == 1 else ConcatSources(sources)
    jpeg = tuple(data.jpeg_quality) if data.jpeg_quality else None
    degrade = DegradeConfig(
        noise_sigma=data.noise_sigma, jpeg_quality=jpeg, jpeg_prob=data.jpeg_prob
    )
    return TrainingPairs(
        source,
        augment=augment,
        degrade=degrade,
        static_prob=data.static_prob,
        flow=flow,
        times=times,
    )


def build_validation(data: DataSection, *, seed: int) -> list[ValidationClip]:
    """The held-out clips scored during training: fixed windows, centre-cropped, degraded."""
    clips: list[ValidationClip] = []
    for source, i, key, crop in _validation_windows(data, seed):
        frames = source.clip(i, np.random.default_rng(key))
        lr, hr = make_lr_clip(clip_to_tensor(_centre_crop(frames, crop)))
        clips.append((lr.float(), hr))
    return clips


def build_validation_at(
    data: DataSection, *, seed: int, factor: int, inputs: int = 4
) -> list[TimedValidationClip]:
    """The validation windows at time factor ``factor``: ``inputs`` frames every ``factor``-th
    of a span of (inputs-1)*factor+1, all of them targets, and the times (inputs-1,
    factor-1) of the in-between ones (1/factor, 2/factor, ...). A synthetic source renders
    the same motion as in :func:`build_validation` (its inputs are those frames), finer in
    time; a file source's span spreads over its frames, and windows of clips too short for
    it (a Vimeo-90K septuplet) are left out. Only even factors (the degradation keeps every
    other frame)."""
    if factor < 2 or factor % 2:
        raise ValueError(f"validation at a time factor needs an even factor, got {factor}")
    offsets = range((inputs - 1) * factor + 1)
    times = (torch.arange(1, factor, dtype=torch.float64) / factor).float()
    clips: list[TimedValidationClip] = []
    for source, i, key, crop in _validation_windows(data, seed):
        if not isinstance(source, TimedClipSource):
            continue
        reach = source.span(i)
        if reach is not None and reach < len(offsets):
            continue
        frames = source.frames_at(i, offsets, np.random.default_rng(key))
        hr = clip_to_tensor(_centre_crop(frames, crop))
        lr, _ = make_lr_clip(hr[:: factor // 2])  # keeps every other: every factor-th
        clips.append((lr.float(), hr, times.repeat(inputs - 1, 1)))
    return clips


def _validation_windows(
    data: DataSection, seed: int
) -> list[tuple[ClipSource, int, list[int], int]]:
    """(source, window index, generator key, HR crop) of every validation window."""
    windows = []
    root = Path(data.root).expanduser()
    for n, table in enumerate(val_tables(data)):
        spec = dict(table)
        crop = int(spec.pop("crop", 0))
        count = int(spec.pop("windows", 1))
        where = f"data.val[{n}]" if isinstance(data.val, list) else "data.val"
        if crop % 4 or crop < 0 or count < 1:
            raise ConfigError(
                f"{where}: crop must be a multiple of 4 and windows >= 1 ({crop}, {count})"
            )
        source = build_source(spec, root=root, frame_size=crop or 128, where=where)
        picks = np.unique(np.linspace(0, len(source) - 1, count).round().astype(int))
        for i in picks:
            # The first table keeps the seeds it had when only one table was allowed.
            key = [seed, int(i), 0x7A1] if n == 0 else [seed, int(i), 0x7A1, n]
            windows.append((source, int(i), key, crop))
    return windows


def _centre_crop(clip: np.ndarray, side: int) -> np.ndarray:
    """Centre ``side`` square (0: whole frame), trimmed to multiples of 4 either way."""
    h, w = clip.shape[1:3]
    ch, cw = (min(side, h), min(side, w)) if side else (h, w)
    ch, cw = ch - ch % 4, cw - cw % 4
    top, left = (h - ch) // 2, (w - cw) // 2
    return clip[:, top : top + ch, left : left + cw]
