"""zsm: one-stage space-time video super-resolution (Zooming Slow-Mo, CVPR 2020).

Public API::

    import zsm
    model = zsm.load_model("zsm-compact")        # or a .safetensors path
    hr = model(lr)                                # (B, n, 3, H, W) -> (B, 2n-1, 3, 4H, 4W)
    hr = zsm.SelfEnsemble(model, 8)(lr)           # the same, averaged over 8 flips/reversals
"""

from zsm.engine import SelfEnsemble
from zsm.errors import Cancelled, InputError, OutputError, WeightsError, ZSMError
from zsm.models import PRESETS, ZoomingSlowMo, ZSMConfig
from zsm.models.registry import load_model, registered_weights
from zsm.models.weights import read_official_checkpoint, save_weights
from zsm.options import UpscaleOptions
from zsm.upscale import upscale_batch, upscale_frames, upscale_video
from zsm.video.progress import Progress

__version__ = "0.1.0"

__all__ = [
    "PRESETS",
    "Cancelled",
    "InputError",
    "OutputError",
    "Progress",
    "SelfEnsemble",
    "UpscaleOptions",
    "WeightsError",
    "ZSMConfig",
    "ZSMError",
    "ZoomingSlowMo",
    "__version__",
    "load_model",
    "read_official_checkpoint",
    "registered_weights",
    "save_weights",
    "upscale_batch",
    "upscale_frames",
    "upscale_video",
]
