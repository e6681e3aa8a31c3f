"""The crop grid's examples: frames where a subject method beats the others most and least."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import cv2
import numpy as np

from zsm.evaluation.metrics import rgb_to_y
from zsm.evaluation.results import INTERPOLATED, MODEL_METHOD, CropExample

CROP_SIZE = 96  # side of the crops shown in the crop grid, in HR pixels


@dataclass
class _Candidate:
    gain: float
    index: int
    kind: str
    reference: str
    target: np.ndarray
    frames: dict[str, np.ndarray]
    psnr: dict[str, float]


class GainTracker:
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
            box = crop_box(c.target, c.frames[c.reference], c.frames[self.subject], sign, border)
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


def crop_box(
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
