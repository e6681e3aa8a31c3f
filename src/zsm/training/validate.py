"""Periodic validation: PSNR on Y (BT.601) of uint8-rounded outputs on held-out clips."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from zsm.engine import prepare
from zsm.evaluation.metrics import psnr_y
from zsm.models.zsm import ZoomingSlowMo, bicubic_skip, flow_skip
from zsm.ops.flow import frame_flows

ValidationClip = tuple[torch.Tensor, torch.Tensor]  # lr (n, 3, h, w), hr (2n-1, 3, 4h, 4w)


def to_uint8(frame: torch.Tensor) -> np.ndarray:
    """(3, H, W) float in [0, 1] -> uint8 (H, W, 3), rounded like a saved PNG."""
    return frame.clamp(0, 1).mul(255).round().to(torch.uint8).permute(1, 2, 0).numpy()


def clip_psnr_y(output: torch.Tensor, target: torch.Tensor) -> list[float]:
    """Per-frame PSNR-Y of (T, 3, H, W) outputs against targets, no border crop."""
    return [psnr_y(to_uint8(o), to_uint8(t)) for o, t in zip(output, target, strict=True)]


def validate(
    model: nn.Module,
    clips: list[ValidationClip],
    *,
    device: torch.device,
    amp_dtype: torch.dtype | None = None,
) -> tuple[float, torch.Tensor | None]:
    """Mean PSNR-Y over every frame of every clip, and the first clip's output (for samples).

    A :class:`~zsm.models.zsm.ZoomingSlowMo` runs through the inference engine, as
    ``zsm upscale`` and ``zsm evaluate`` run it (``model`` itself is not changed).
    """
    net = prepare(model, device) if isinstance(model, ZoomingSlowMo) else model
    was_training = model.training
    model.eval()
    values: list[float] = []
    first = None
    try:
        with torch.inference_mode():
            for lr, hr in clips:
                with torch.autocast(
                    device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None
                ):
                    out = net(lr[None].to(device))[0].float().cpu()
                first = out if first is None else first
                values += clip_psnr_y(out, hr)
    finally:
        model.train(was_training)
    return float(np.mean(values)), first


def bicubic_psnr_y(clips: list[ValidationClip]) -> float:
    """The classical baseline's score on the same clips: bicubic x4, mean of neighbours between."""
    return _mean_psnr_y(clips, bicubic_skip)


def flow_skip_psnr_y(clips: list[ValidationClip]) -> float:
    """The flow-guided network's skip on the same clips: bicubic x4, LR flow blend between
    (the ``bicubic-flow-lr`` baseline; what an untrained flow-guided network makes)."""
    return _mean_psnr_y(clips, lambda lr: flow_skip(lr, frame_flows(lr)))


def _mean_psnr_y(
    clips: list[ValidationClip], method: Callable[[torch.Tensor], torch.Tensor]
) -> float:
    """Mean PSNR-Y over every frame of ``method``'s output (B=1 batches) on the clips."""
    values: list[float] = []
    for lr, hr in clips:
        values += clip_psnr_y(method(lr[None])[0], hr)
    return float(np.mean(values))
