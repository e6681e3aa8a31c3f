"""``zsm evaluate``: Zooming Slow-Mo and classical baselines scored on HR clips.

- :mod:`~zsm.evaluation.data`: where the HR clips are found and how they are read,
- :mod:`~zsm.evaluation.prepare`: a clip's first pass (the LR input, the targets kept),
- :mod:`~zsm.evaluation.metrics`: PSNR/SSIM on Y as the literature computes them, LPIPS,
- :mod:`~zsm.evaluation.baselines`: bicubic repeat / blend / optical flow, at any time step,
- :mod:`~zsm.evaluation.model`: the model's frames at the time steps asked for, or why not,
- :mod:`~zsm.evaluation.run`: the scoring loop over clips and methods,
- :mod:`~zsm.evaluation.crops`: the frames where the model gains most and least,
- :mod:`~zsm.evaluation.results`: options and results (what the report reads),
- :mod:`~zsm.evaluation.report`, :mod:`~zsm.evaluation.plots`: report.json/.md and PNGs.
"""

from zsm.evaluation.baselines import BASELINES, bicubic_blend, bicubic_flow, bicubic_repeat
from zsm.evaluation.data import Clip, find_clips
from zsm.evaluation.metrics import LPIPS, crop_border, psnr, psnr_y, rgb_to_y, ssim, ssim_y
from zsm.evaluation.model import model_frames, run_model_on_clip, time_step_problem
from zsm.evaluation.prepare import PreparedClip, prepare_clip
from zsm.evaluation.report import write_report
from zsm.evaluation.results import (
    INTERPOLATED,
    KINDS,
    MODEL_METHOD,
    RECONSTRUCTED,
    ClipResult,
    CropExample,
    EvalOptions,
    EvaluationResult,
    MethodScores,
)
from zsm.evaluation.run import evaluate, evaluate_clip

__all__ = [
    "BASELINES",
    "INTERPOLATED",
    "KINDS",
    "LPIPS",
    "MODEL_METHOD",
    "RECONSTRUCTED",
    "Clip",
    "ClipResult",
    "CropExample",
    "EvalOptions",
    "EvaluationResult",
    "MethodScores",
    "PreparedClip",
    "bicubic_blend",
    "bicubic_flow",
    "bicubic_repeat",
    "crop_border",
    "evaluate",
    "evaluate_clip",
    "find_clips",
    "model_frames",
    "prepare_clip",
    "psnr",
    "psnr_y",
    "rgb_to_y",
    "run_model_on_clip",
    "ssim",
    "ssim_y",
    "time_step_problem",
    "write_report",
]
