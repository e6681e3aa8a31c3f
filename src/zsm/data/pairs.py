"""(LR input, HR target) training pairs from any clip source.

``TrainingPairs[(index, seed)]`` reads clip ``index``, augments it with a
generator seeded by ``seed`` (crop, flips, rotation, reversal), and applies
the shared degradation (:func:`zsm.data.degrade.make_lr_clip`: MATLAB bicubic
x4, frames 0, 2, 4, 6 kept as input). The sample is a pure function of the
key, so the data order (:mod:`zsm.training.sampler`) fully determines a run.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from zsm.data.augment import AugmentConfig, augment_clip
from zsm.data.datasets import ClipSource
from zsm.data.degrade import make_lr_clip


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
    and reconstructor.
    """

    def __init__(
        self,
        source: ClipSource,
        *,
        augment: AugmentConfig | None = None,
        degrade: DegradeConfig | None = None,
        static_prob: float = 0.0,
    ) -> None:
        if source.length % 2 == 0:
            raise ValueError(f"clips need an odd number of frames, got {source.length}")
        self.source = source
        self.augment = augment or AugmentConfig()
        self.degrade = degrade or DegradeConfig()
        self.static_prob = static_prob

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        index, seed = key
        rng = np.random.default_rng(seed)
        clip = self.source.clip(index, rng)
        clip = augment_clip(clip, rng, self.augment)
        if self.static_prob and rng.random() < self.static_prob:
            clip = np.repeat(clip[len(clip) // 2][None], len(clip), axis=0)
        return self._degrade(clip_to_tensor(clip), rng)

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
