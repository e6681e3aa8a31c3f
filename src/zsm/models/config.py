"""Model sizes (:class:`ZSMConfig`) and the named presets."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any

SCALE = 4  # spatial factor of every preset (two x2 PixelShuffles); the degradation's too
MULTIPLE = 4  # H, W are padded to multiples of this inside (two stride-2 pyramid levels)


@dataclass(frozen=True)
class ZSMConfig:
    """Sizes of a :class:`~zsm.models.zsm.ZoomingSlowMo` network.

    Attributes:
        nf: feature channels in LR space.
        groups: offset groups of every deformable conv (``nf % groups == 0``).
        front_RBs: residual blocks of the feature extractor (k1 in the paper).
        back_RBs: residual blocks of the reconstructor (k2 in the paper).
        hr_nf: channels after the second PixelShuffle (64 in the paper).
        global_skip: our extension, not in the paper: add the bicubic x4
            upsampling of the input frames (of the mean of the two neighbours
            for interpolated frames) to the output, so the network predicts a
            residual and an untrained model starts at the classical baseline.
        flow_guided: our extension, not in the paper (as BasicVSR++ guides its
            deformable alignment): every deformable alignment takes the optical
            flow of the LR frames (:mod:`zsm.ops.flow`, given to ``forward``),
            scaled to its time step and pyramid level, as its base offset, and
            learns a residual bounded by ``max_residual * tanh(.)``; the global
            skip of an in-between frame is the occlusion-aware flow warp of the
            bicubic frames (needs ``global_skip``).
        max_residual: bound of the learned offset residual, in pixels of each
            pyramid level (flow-guided networks only).
        time_conditioned: our extension, after TMNet (CVPR 2021): the frame
            interpolation's offset features and blend are modulated by the time
            step t of the frame made (:mod:`zsm.models.timemod`), so one network
            makes frames at any t in (0, 1), not only halfway (needs ``flow_guided``).
    """

    nf: int = 64
    groups: int = 8
    front_RBs: int = 5
    back_RBs: int = 40
    hr_nf: int = 64
    global_skip: bool = False
    flow_guided: bool = False
    max_residual: float = 5.0
    time_conditioned: bool = False

    def __post_init__(self) -> None:
        for name in ("nf", "groups", "hr_nf"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("front_RBs", "back_RBs"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.nf % self.groups:
            raise ValueError(f"nf ({self.nf}) must be divisible by groups ({self.groups})")
        if self.flow_guided and not self.global_skip:
            raise ValueError("flow_guided needs global_skip (the flow-warped bicubic skip)")
        if self.time_conditioned and not self.flow_guided:
            raise ValueError("time_conditioned needs flow_guided (offsets follow the flow to t)")
        if self.max_residual <= 0:
            raise ValueError(f"max_residual must be > 0, got {self.max_residual}")

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ZSMConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown model config fields: {unknown}")
        return cls(**data)

    @classmethod
    def from_json(cls, text: str) -> ZSMConfig:
        return cls.from_dict(json.loads(text))


PRESETS: dict[str, ZSMConfig] = {
    # The paper's network: 11,102,771 parameters, official checkpoints load into it.
    "official": ZSMConfig(nf=64, groups=8, front_RBs=5, back_RBs=40, hr_nf=64),
    # Sized for training on a 2-core CPU (see MODEL_CARD.md): fewer offset
    # groups and a thinner HR tail, which dominate the cost at small nf.
    "compact": ZSMConfig(nf=32, groups=4, front_RBs=2, back_RBs=6, hr_nf=32, global_skip=True),
    # compact with flow-guided alignment: the same parameters (its weights initialise it).
    "compact-flow": ZSMConfig(
        nf=32, groups=4, front_RBs=2, back_RBs=6, hr_nf=32, global_skip=True, flow_guided=True
    ),
    # compact-flow making frames at any time step (x3, x4, x8, any fps): the same
    # network plus a temporal modulation of its interpolation (its weights initialise it).
    "compact-time": ZSMConfig(
        nf=32,
        groups=4,
        front_RBs=2,
        back_RBs=6,
        hr_nf=32,
        global_skip=True,
        flow_guided=True,
        time_conditioned=True,
    ),
}


def preset(name: str) -> ZSMConfig:
    """The config of a named preset (``official``, ``compact``, ``compact-flow``,
    ``compact-time``)."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}") from None
