"""Training Zooming Slow-Mo: configs, the deterministic data stream, the loop, checkpoints.

    from zsm.training import load_config, train
    result = train(load_config("compact-cpu", ["train.iterations=100"]))

Multi-GPU / multi-node: launch the same command under ``torchrun``; each
process reads RANK / WORLD_SIZE / LOCAL_RANK and joins a DDP group.
"""

from zsm.training.config import ConfigError, TrainConfig, load_config
from zsm.training.loop import Trainer, TrainResult, charbonnier, train

__all__ = [
    "ConfigError",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "charbonnier",
    "load_config",
    "train",
]
