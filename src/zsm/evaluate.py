"""Score Zooming Slow-Mo and the classical baselines on HR clips: PSNR/SSIM on Y, per frame.

For each clip: the HR frames are the ground truth; the LR input is made
with the training degradation (:func:`zsm.data.degrade.make_lr_clip`: MATLAB
bicubic x4, frames 0, 2, 4, ... kept); every method turns the n LR frames into
2n-1 HR frames, and all of them are scored against the HR frames, frame by
frame, after the whole sequence went through the method (windows stitched;
not per 7-frame window). Even frames are *reconstructed* (their LR version was
an input), odd frames *interpolated* (not seen at all); both are reported
apart, as the two tasks differ.
"""

from __future__ import annotations

import functools
import itertools
import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch
from tqdm import tqdm

from zsm.baselines import BASELINES
from zsm.data.degrade import SCALE, make_lr_clip
from zsm.errors import InputError
from zsm.eval_data import find_clips
from zsm.metrics import LPIPS, psnr_y, rgb_to_y, ssim_y
from zsm.models.ensemble import check_passes
from zsm.upscale import upscale_frames

RECONSTRUCTED = "reconstructed"
INTERPOLATED = "interpolated"
KINDS = ("all", RECONSTRUCTED, INTERPOLATED)
MODEL_METHOD = "zsm"
CROP_SIZE = 96  # side of the crops shown in the crop grid, in HR pixels

Method = Callable[[np.ndarray], Iterable[np.ndarray]]


@dataclass(frozen=True)
class EvalOptions:
    """How clips are cut and scored."""

    crop_border: int = 0  # pixels dropped on each side before scoring (0: none)
    max_frames: int | None = None  # use at most this many HR frames of each clip
    lpips: bool = False  # also LPIPS (needs the optional ``lpips`` package)
    progress: bool = True  # a progress bar per clip on stderr
    device: str = "cpu"  # where the model runs
    ensemble: int = 1  # passes of the model's self-ensemble (zsm.models.ensemble)

    def __post_init__(self) -> None:
        check_passes(self.ensemble)
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


def run_model_on_clip(
    model: torch.nn.Module, lr_frames: np.ndarray, *, device: str | torch.device = "cpu"
) -> list[np.ndarray]:
    """The model's 2n-1 uint8 RGB HR frames for n uint8 RGB LR frames (n, h, w, 3)."""
    return list(model_frames(model, lr_frames, device=device))


def model_frames(
    model: torch.nn.Module,
    lr_frames: np.ndarray,
    *,
    device: str | torch.device = "cpu",
    ensemble: int = 1,
) -> Iterator[np.ndarray]:
    """Like :func:`run_model_on_clip`, lazily: the pipeline holds one window at a time.

    ``ensemble``: passes of the self-ensemble (:mod:`zsm.models.ensemble`).
    """
    n = len(lr_frames)
    # The pipeline holds the last frame for a 2n-th slot (2x frame rate); the scored frames
    # are the 2n-1 that lie on or between inputs.
    count = 0
    frames = upscale_frames(lr_frames, model=model, device=device, ensemble=ensemble)
    for frame in itertools.islice(frames, 2 * n - 1):
        count += 1
        yield frame
    if count != 2 * n - 1:
        raise RuntimeError(f"the pipeline gave {count} frames for {n} inputs")


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


@dataclass
class PreparedClip:
    """What the first pass over a clip's HR frames gives (see :func:`prepare_clip`)."""

    lr: np.ndarray  # (n, h, w, 3) uint8: the model's and baselines' input
    count: int  # HR frames scored: the first ``count`` (odd, 2n-1)
    height: int  # HR frames are cropped to height x width (multiples of 4)
    width: int
    notes: list[str]
    frames: list[np.ndarray] | None  # the cropped HR frames, if they were small enough to keep

    def targets(self, read: Callable[[], Iterable[np.ndarray]]) -> Iterator[np.ndarray]:
        """The ``count`` ground-truth frames: the kept ones, else the clip read anew."""
        if self.frames is not None:
            yield from self.frames[: self.count]
            return
        got = 0
        for frame in itertools.islice(read(), self.count):
            got += 1
            yield frame[: self.height, : self.width]
        if got != self.count:
            raise InputError(f"the clip gave {got} frames on a second reading, {self.count} first")


KEEP_FRAMES_BYTES = 512 * 2**20  # HR frames up to this size are kept between the two passes


def prepare_clip(frames: Iterable[np.ndarray], *, keep_bytes: int | None = None) -> PreparedClip:
    """One pass over HR frames: the LR input (:func:`~zsm.data.degrade.make_lr_clip`, one
    frame at a time), H, W cropped to multiples of 4, T to an odd count; notes say what was
    cut. Memory: the LR frames (1/32 of the HR clip) plus the HR frames while they fit
    ``keep_bytes`` (default :data:`KEEP_FRAMES_BYTES`), so that a clip of any length can
    be scored.
    """
    keep_bytes = KEEP_FRAMES_BYTES if keep_bytes is None else keep_bytes
    lr: list[np.ndarray] = []
    kept: list[np.ndarray] | None = []
    t = h = w = h4 = w4 = 0
    for t, frame in enumerate(frames, start=1):
        if t == 1:
            h, w = frame.shape[:2]
            h4, w4 = h - h % SCALE, w - w % SCALE
            if h4 == 0 or w4 == 0:
                raise InputError(f"frames of {w}x{h} are too small for x{SCALE}")
        elif frame.shape[:2] != (h, w):
            fh, fw = frame.shape[:2]
            raise InputError(f"frame {t} is {fw}x{fh}, but the clip's first frame is {w}x{h}")
        frame = frame[:h4, :w4]
        if t % 2 == 1:
            lr.append(make_lr_clip(frame[None])[0][0])
        if kept is not None:
            kept.append(frame.copy())  # owns its bytes (a decoded frame may pin more)
            if len(kept) * frame.nbytes > keep_bytes:
                kept = None
    if t < 3:
        raise InputError(f"a clip needs at least 3 frames (2 inputs), got {t}")
    notes = []
    if (h4, w4) != (h, w):
        notes.append(f"cropped {w}x{h} to {w4}x{h4} (multiple of {SCALE}, bottom/right)")
    count = t if t % 2 else t - 1
    if count != t:
        notes.append(f"dropped the last of {t} frames (no input follows it to interpolate from)")
    lr = lr[: (count + 1) // 2]
    return PreparedClip(np.stack(lr), count, h4, w4, notes, kept)


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
    """
    read = (lambda: iter(hr)) if isinstance(hr, np.ndarray) else hr
    prep = prepare_clip(read())
    lr = prep.lr
    gt = prep.targets(read)
    kinds = [RECONSTRUCTED if i % 2 == 0 else INTERPOLATED for i in range(prep.count)]
    runs = {m: _Timed(lambda fn=fn: fn(lr)) for m, fn in methods.items()}
    scores = {m: MethodScores(lpips=[] if lpips else None) for m in methods}
    tracker = _GainTracker(subject, methods) if subject in methods else None
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
    return ClipResult(name, prep.width, prep.height, kinds, scores, prep.notes, crops)


@dataclass
class _Candidate:
    gain: float
    index: int
    kind: str
    reference: str
    target: np.ndarray
    frames: dict[str, np.ndarray]
    psnr: dict[str, float]


class _GainTracker:
    """Keeps the frames where the subject method beats the best other method most and least."""

    # Shown in the crop grid, in this order, when evaluated.
    SHOWN = ("bicubic-blend", "bicubic-flow", MODEL_METHOD)

    def __init__(self, subject: str, methods: Iterable[str]) -> None:
        self.subject = subject
        self.methods = list(methods)
        # Bicubic baselines agree on reconstructed frames: a baseline subject only gains on
        # interpolated ones, the model on every frame.
        self.all_frames = subject == MODEL_METHOD
        self.best: _Candidate | None = None
        self.worst: _Candidate | None = None

    def update(
        self,
        index: int,
        kind: str,
        target: np.ndarray,
        frames: dict[str, np.ndarray],
        psnrs: dict[str, float],
    ) -> None:
        others = {m: p for m, p in psnrs.items() if m != self.subject}
        if not others or (kind != INTERPOLATED and not self.all_frames):
            return
        reference = max(others, key=lambda m: others[m])
        gain = psnrs[self.subject] - others[reference]
        if not math.isfinite(gain):
            return
        best = self.best is None or gain > self.best.gain
        worst = self.worst is None or gain < self.worst.gain
        if not (best or worst):
            return
        copies = {m: f.copy() for m, f in frames.items()}
        entry = _Candidate(gain, index, kind, reference, target.copy(), copies, dict(psnrs))
        if best:
            self.best = entry
        if worst:
            self.worst = entry

    def examples(self, border: int) -> list[CropExample]:
        picks = [("most gain", self.best, 1.0), ("least gain", self.worst, -1.0)]
        picks = [(label, c, sign) for label, c, sign in picks if c is not None]
        # The same columns in every row: the usual methods, plus each row's reference.
        wanted = {*self.SHOWN, self.subject, *(c.reference for _, c, _ in picks)}
        shown = [m for m in self.methods if m in wanted]
        out = []
        for label, c, sign in picks:
            box = _crop_box(c.target, c.frames[c.reference], c.frames[self.subject], sign, border)
            top, left, side = box
            tiles = {"GT": c.target[top : top + side, left : left + side]}
            tiles.update({m: c.frames[m][top : top + side, left : left + side] for m in shown})
            psnr = {m: c.psnr[m] for m in shown}
            out.append(
                CropExample(
                    label, c.index, c.kind, self.subject, c.reference, c.gain, box, tiles, psnr
                )
            )
        return out


def _crop_box(
    target: np.ndarray, reference: np.ndarray, subject: np.ndarray, sign: float, border: int
) -> tuple[int, int, int]:
    """The square where the subject's squared Y error falls most (sign 1) or least (-1)
    below the reference's, inside the scored area."""
    y = rgb_to_y(target)
    gain = (rgb_to_y(reference) - y) ** 2 - (rgb_to_y(subject) - y) ** 2
    h, w = gain.shape
    side = min(CROP_SIZE, h - 2 * border, w - 2 * border)
    sums = cv2.integral(sign * gain)  # (h+1, w+1) summed-area table
    window = sums[side:, side:] - sums[:-side, side:] - sums[side:, :-side] + sums[:-side, :-side]
    inner = window[border : h - border - side + 1, border : w - border - side + 1]
    top, left = np.unravel_index(int(np.argmax(inner)), inner.shape)
    return int(top) + border, int(left) + border, int(side)


def evaluate(
    data: Path | str,
    *,
    model: torch.nn.Module | None = None,
    weights: str | None = None,
    baselines: Sequence[str] = tuple(BASELINES),
    options: EvalOptions | None = None,
) -> EvaluationResult:
    """Score the model (if given) and the named baselines on every clip in ``data``."""
    options = options or EvalOptions()
    unknown = [b for b in baselines if b not in BASELINES]
    if unknown:
        raise InputError(f"unknown baselines {unknown}; choose from {', '.join(BASELINES)}")
    methods: dict[str, Method] = {b: BASELINES[b] for b in baselines}
    if model is not None:
        model = model.to(options.device).eval()
        methods[MODEL_METHOD] = lambda lr: model_frames(
            model, lr, device=options.device, ensemble=options.ensemble
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
    return EvaluationResult(str(data), list(methods), options, weights, results)
