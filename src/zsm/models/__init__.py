"""The Zooming Slow-Mo network and its parts (imports only torch, torchvision and itself)."""

from zsm.models.config import PRESETS, ZSMConfig, preset
from zsm.models.zsm import ZoomingSlowMo

__all__ = ["PRESETS", "ZSMConfig", "ZoomingSlowMo", "preset"]
