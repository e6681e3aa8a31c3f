"""(LR input, HR target) training pairs from any clip source.

``TrainingPairs[(index, seed)]`` reads clip ``index``, augments it with a
generator seeded by ``seed`` (crop, flips, rotation, reversal), and applies
the shared degradation (:func:`zsm.data.degrade.make_lr_clip`: MATLAB bicubic
x4, frames 0, 2, 4, 6 kept as input). The sample is a pure function of the
key, so the data order (:mod:`zsm.training.sampler`) fully determines a run.

For a flow-guided network (``flow=True``) a sample is a triple: the LR
optical flow of every neighbouring input pair is computed on the *whole*
degraded frames of the clip and then cropped with the patch, so that the
network learns motions larger than its patch; flips, rotation and reversal
then come before the crop and the degradation runs on whole frames.

With time factors (``times``, :class:`~zsm.data.timesteps.TimeFactors`) each
sample first draws its factor N and in-between steps, reads only its 2n-1
target frames from a span of (n-1)*N+1 (:mod:`zsm.data.timesteps`), and ends
with the float32 times (n-1, 1) of its in-between targets: ``(lr, hr, times)``,
or ``(lr, hr, flow, times)``. A reversed clip maps every t to 1 - t and
reverses the gaps. Without them a sample is what it always was, draw for draw.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from zsm.data.augment import SCALE, AugmentConfig, augment_clip_timed, random_flip_rotate
from zsm.data.datasets import ClipSource, TimedClipSource
from zsm.data.degrade import make_lr_clip
from zsm.data.timesteps import TimeFactors
from zsm.errors import InputError
from zsm.ops.flow import DISFlow, to_uint8_frames


@dataclass(frozen=True)
class DegradeConfig:
    """Optional LR corruptions on top of the bicubic x4 degradation (all off by default).

    ``noise_sigma``: Gaussian noise up to this standard deviation (in [0, 1]
    units; each sample draws its sigma uniformly); ``jpeg_quality``: JPEG
    compression of the LR frames at a quality drawn from this (min, max) range,
    with probability ``jpeg_prob``.
    """

    noise_sigma: float = 0.0
    jpeg_quality: tuple[int, int] | None = None
    jpeg_prob: float = 1.0


def clip_to_tensor(clip: np.ndarray) -> torch.Tensor:
    """uint8 (T, H, W, 3) -> float32 (T, 3, H, W) in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(clip)).permute(0, 3, 1, 2).float().div_(255)


class TrainingPairs(Dataset):
    """Keys ``(index, seed)`` -> ``(lr (n, 3, p, p), hr (2n-1, 3, 4p, 4p))`` float32 tensors.

    ``static_prob``: with this probability the clip is replaced by its middle
    frame repeated (no motion), a single-image SR curriculum for the extractor
    and reconstructor. ``flow``: with the LR flow (n-1, 4, p, p) after ``hr``;
    ``times``: samples at several time steps, with their times (n-1, 1) last
    (the source must be a :class:`~zsm.data.datasets.TimedClipSource`).
    """

    def __init__(
        self,
        source: ClipSource,
        *,
        augment: AugmentConfig | None = None,
        degrade: DegradeConfig | None = None,
        static_prob: float = 0.0,
        flow: bool = False,
        times: TimeFactors | None = None,
    ) -> None:
        if times is None and source.length % 2 == 0:
            raise ValueError(f"clips need an odd number of frames, got {source.length}")
        if times is not None and not isinstance(source, TimedClipSource):
            raise InputError(f"{source!r} cannot read clips at several time steps")
        self.source = source
        self.times = times
        self.augment = augment or AugmentConfig()
        self.degrade = degrade or DegradeConfig()
        self.static_prob = static_prob
        self.flow = flow
        self._dis: DISFlow | None = None

    def __getstate__(self) -> dict[str, object]:  # DataLoader workers: OpenCV objects don't pickle
        return {**self.__dict__, "_dis": None}

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, ...]:
        index, seed = key
        rng = np.random.default_rng(seed)
        plan = None
        if self.times is None:
            clip = self.source.clip(index, rng)
        else:
            source: TimedClipSource = self.source  # type: ignore[assignment]
            plan = self.times.draw(rng, source.span(index))
            clip = source.frames_at(index, plan.offsets, rng)
        if self.flow:
            sample, backwards = self._with_flow(clip, rng)
        else:
            clip, backwards = augment_clip_timed(clip, rng, self.augment)
            clip = self._maybe_static(clip, rng)
            sample = self._degrade(clip_to_tensor(clip), rng)
        if plan is None:
            return sample
        return (*sample, (plan.reversed() if backwards else plan).times())

    def _maybe_static(self, clip: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """With probability ``static_prob``, the clip's middle frame repeated (no motion)."""
        if self.static_prob and rng.random() < self.static_prob:
            return np.repeat(clip[len(clip) // 2][None], len(clip), axis=0)
        return clip

    def _with_flow(
        self, clip: np.ndarray, rng: np.random.Generator
    ) -> tuple[tuple[torch.Tensor, torch.Tensor, torch.Tensor], bool]:
        """(lr, hr, flow (n-1, 4, p, p)), degraded and flow-estimated whole, then cropped;
        and whether the clip was reversed."""
        a = self.augment
        h, w = (clip.shape[1] // SCALE) * SCALE, (clip.shape[2] // SCALE) * SCALE
        clip = random_flip_rotate(clip[:, :h, :w], rng, flips=a.flips, rotate=a.rotate)
        backwards = bool(a.reverse and rng.integers(0, 2))
        if backwards:
            clip = clip[::-1]
        clip = self._maybe_static(clip, rng)
        lh, lw = clip.shape[1] // SCALE, clip.shape[2] // SCALE
        p = a.lr_patch
        if lh < p or lw < p:  # before the degradation of the whole clip
            raise InputError(
                f"frames of {lw * SCALE}x{lh * SCALE} pixels are smaller than the HR training "
                f"patch {a.hr_patch}x{a.hr_patch}; lower data.lr_patch or the HR down-scaling"
            )
        lr, hr = self._degrade(clip_to_tensor(clip), rng)
        if self._dis is None:
            self._dis = DISFlow()
        flow = torch.from_numpy(self._dis.clip(to_uint8_frames(lr)))
        top, left = int(rng.integers(0, lh - p + 1)), int(rng.integers(0, lw - p + 1))
        ys, xs = slice(top, top + p), slice(left, left + p)
        hys, hxs = slice(SCALE * top, SCALE * (top + p)), slice(SCALE * left, SCALE * (left + p))
        crops = (
            lr[..., ys, xs].contiguous(),
            hr[..., hys, hxs].contiguous(),
            flow[..., ys, xs].contiguous(),
        )
        return crops, backwards

    def _degrade(
        self, hr: torch.Tensor, rng: np.random.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        d = self.degrade
        sigma = float(rng.uniform(0, d.noise_sigma)) if d.noise_sigma > 0 else 0.0
        quality = None
        if d.jpeg_quality is not None and rng.random() < d.jpeg_prob:
            quality = int(rng.integers(d.jpeg_quality[0], d.jpeg_quality[1] + 1))
        generator = None
        if sigma > 0:
            generator = torch.Generator().manual_seed(int(rng.integers(0, 2**63 - 1)))
        lr, hr = make_lr_clip(hr, noise_sigma=sigma, jpeg_quality=quality, generator=generator)
        return lr.float().contiguous(), hr.contiguous()
