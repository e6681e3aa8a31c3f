"""Score Zooming Slow-Mo and the classical baselines on HR clips: PSNR/SSIM on Y, per frame.

For each clip: the HR frames are the ground truth; the LR input is made
with the training degradation (:func:`zsm.data.degrade.make_lr_clip`: MATLAB
bicubic x4, frames 0, N, 2N, ... kept, N the time factor, 2 by default); every
method turns the n LR frames into N(n-1)+1 HR frames, and all of them are
scored against the HR frames, frame by frame, after the whole sequence went
through the method (windows stitched; not per 7-frame window). Frames 0, N,
2N, ... are *reconstructed* (their LR version was an input), the others
*interpolated* (not seen at all), at t = 1/N, ..., (N-1)/N; the two kinds and
each time step are reported apart, as the tasks differ.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from zsm.engine.precision import resolve_precision
from zsm.errors import InputError
from zsm.evaluation.baselines import BASELINES
from zsm.evaluation.crops import GainTracker
from zsm.evaluation.data import find_clips
from zsm.evaluation.metrics import LPIPS, SSIM_WINDOW, psnr_y, ssim_y
from zsm.evaluation.model import model_frames, time_step_problem
from zsm.evaluation.prepare import prepare_clip
from zsm.evaluation.results import (
    INTERPOLATED,
    MODEL_METHOD,
    RECONSTRUCTED,
    ClipResult,
    EvalOptions,
    EvaluationResult,
    MethodScores,
)

log = logging.getLogger("zsm")

Method = Callable[[np.ndarray], Iterable[np.ndarray]]  # n LR frames -> N(n-1)+1 HR frames


class _Timed:
    """An iterator over a method's outputs that adds up the time spent making them."""

    def __init__(self, start: Callable[[], Iterable[np.ndarray]]) -> None:
        self._start = start
        self._it: Iterator[np.ndarray] | None = None
        self.seconds = 0.0

    def __next__(self) -> np.ndarray:
        t0 = time.perf_counter()
        try:
            if self._it is None:
                self._it = iter(self._start())
            return next(self._it)
        finally:
            self.seconds += time.perf_counter() - t0


def evaluate_clip(
    name: str,
    hr: np.ndarray | Callable[[], Iterable[np.ndarray]],
    methods: dict[str, Method],
    options: EvalOptions,
    *,
    lpips: LPIPS | None = None,
    subject: str | None = None,
) -> ClipResult:
    """Score every method on one HR clip, frame by frame.

    ``hr``: the clip as uint8 (T, H, W, 3), or a function that reads its
    frames anew each call (two passes: the LR input first, then the targets).
    ``methods`` make the frames of ``options.time_factor`` (see :func:`evaluate`).
    """
    read = (lambda: iter(hr)) if isinstance(hr, np.ndarray) else hr
    factor = options.time_factor
    prep = prepare_clip(read(), time_factor=factor)
    border = options.crop_border
    if min(prep.width, prep.height) - 2 * border < SSIM_WINDOW:
        cropped = f" less a border crop of {border}" if border else ""
        raise InputError(
            f"{name}'s {prep.width}x{prep.height} frames{cropped} are too small to score: "
            f"SSIM needs at least {SSIM_WINDOW}x{SSIM_WINDOW} pixels"
        )
    lr = prep.lr
    gt = prep.targets(read)
    kinds = [RECONSTRUCTED if i % factor == 0 else INTERPOLATED for i in range(prep.count)]
    runs = {m: _Timed(lambda fn=fn: fn(lr)) for m, fn in methods.items()}
    scores = {m: MethodScores(lpips=[] if lpips else None) for m in methods}
    tracker = GainTracker(subject, methods) if subject in methods else None
    bar = tqdm(total=prep.count, desc=name, unit="frame", disable=not options.progress, leave=True)
    with bar:
        for i, target in enumerate(gt):
            frames: dict[str, np.ndarray] = {}
            for method, run in runs.items():
                try:
                    frame = next(run)
                except StopIteration:
                    raise RuntimeError(f"{method} gave {i} of {prep.count} frames") from None
                if frame.shape != target.shape or frame.dtype != np.uint8:
                    raise RuntimeError(
                        f"{method} gave a {frame.dtype} frame of shape {frame.shape}, "
                        f"expected uint8 {target.shape}"
                    )
                frames[method] = frame
                s = scores[method]
                s.psnr.append(psnr_y(frame, target, border=options.crop_border))
                s.ssim.append(ssim_y(frame, target, border=options.crop_border))
                if lpips is not None and s.lpips is not None:
                    s.lpips.append(lpips(frame, target))
            if tracker is not None:
                tracker.update(i, kinds[i], target, frames, {m: scores[m].psnr[i] for m in frames})
            bar.update(1)
    for method, run in runs.items():
        scores[method].seconds = run.seconds
    crops = tracker.examples(options.crop_border) if tracker else []
    return ClipResult(name, prep.width, prep.height, kinds, scores, prep.notes, crops, factor)


def evaluate(
    data: Path | str,
    *,
    model: torch.nn.Module | None = None,
    weights: str | None = None,
    baselines: Sequence[str] = tuple(BASELINES),
    options: EvalOptions | None = None,
) -> EvaluationResult:
    """Score the model (if given) and the named baselines on every clip in ``data``.

    At ``options.time_factor`` other than 2 a model that cannot make those time steps
    (:func:`~zsm.evaluation.model.time_step_problem`) is skipped with a warning and the
    reason in ``EvaluationResult.skipped``, or, with no baselines to score, an
    :class:`~zsm.errors.InputError`.
    """
    options = options or EvalOptions()
    factor = options.time_factor
    # The report names the precision that ran, not "auto".
    used = resolve_precision(torch.device(options.device), options.precision)
    options = dataclasses.replace(options, precision=used)
    unknown = [b for b in baselines if b not in BASELINES]
    if unknown:
        raise InputError(f"unknown baselines {unknown}; choose from {', '.join(BASELINES)}")
    methods: dict[str, Method] = {
        b: functools.partial(BASELINES[b], time_factor=factor) for b in baselines
    }
    skipped: dict[str, str] = {}
    problem = time_step_problem(model, factor) if model is not None else None
    if problem is not None:
        if not methods:
            raise InputError(f"cannot evaluate the model: {problem}; score baselines instead")
        log.warning("zsm: skipping the model: %s", problem)
        skipped[MODEL_METHOD] = problem
        model = None
    if model is not None:
        model = model.to(options.device).eval()
        methods[MODEL_METHOD] = lambda lr: model_frames(
            model,
            lr,
            device=options.device,
            ensemble=options.ensemble,
            precision=options.precision,
            time_factor=factor,
        )
    if not methods:
        raise InputError("nothing to evaluate: no model and no baselines")
    subject = MODEL_METHOD if model is not None else "bicubic-flow"
    lpips = LPIPS(device=options.device) if options.lpips else None
    results = []
    for clip in find_clips(data):
        read = functools.partial(clip.frames, options.max_frames)
        results.append(
            evaluate_clip(clip.name, read, methods, options, lpips=lpips, subject=subject)
        )
    return EvaluationResult(str(data), list(methods), options, weights, results, skipped)
