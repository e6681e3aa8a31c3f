"""Periodic validation: PSNR on Y (BT.601) of uint8-rounded outputs on held-out clips.

:func:`validate` scores the classic x2 (t = 1/2); :func:`validate_at` scores a
time-conditioned network at several times per gap (``times=``), e.g. inputs
every 4th frame and the in-betweens at 1/4, 1/2 and 3/4
(:func:`zsm.training.build.build_validation_at`).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from zsm.engine import prepare
from zsm.evaluation.metrics import psnr_y
from zsm.models.zsm import ZoomingSlowMo, bicubic_skip, flow_skip, flow_skip_at
from zsm.ops.flow import frame_flows

ValidationClip = tuple[torch.Tensor, torch.Tensor]  # lr (n, 3, h, w), hr (2n-1, 3, 4h, 4w)
# lr (n, 3, h, w), hr (n + (n-1)K, 3, 4h, 4w) in time order, times (n-1, K)
TimedValidationClip = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


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
    return _validate(model, [(lr, hr, None) for lr, hr in clips], device, amp_dtype)


def validate_at(
    model: nn.Module,
    clips: list[TimedValidationClip],
    *,
    device: torch.device,
    amp_dtype: torch.dtype | None = None,
) -> tuple[float, torch.Tensor | None]:
    """:func:`validate` of a time-conditioned network given each clip's ``times``."""
    return _validate(model, clips, device, amp_dtype)


def _validate(
    model: nn.Module,
    clips: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]],
    device: torch.device,
    amp_dtype: torch.dtype | None,
) -> tuple[float, torch.Tensor | None]:
    net = prepare(model, device) if isinstance(model, ZoomingSlowMo) else model
    was_training = model.training
    model.eval()
    values: list[float] = []
    first = None
    try:
        with torch.inference_mode():
            for lr, hr, times in clips:
                kwargs = {} if times is None else {"times": times[None].to(device)}
                with torch.autocast(
                    device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None
                ):
                    out = net(lr[None].to(device), **kwargs)[0].float().cpu()
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


def flow_skip_psnr_y_at(clips: list[TimedValidationClip]) -> float:
    """:func:`flow_skip_psnr_y` on clips at several times per gap (the same times in every
    gap of a clip, as :func:`~zsm.training.build.build_validation_at` makes them)."""

    def skip(lr: torch.Tensor, times: torch.Tensor) -> torch.Tensor:
        flow = frame_flows(lr)
        between = flow_skip_at(lr, flow, [float(t) for t in times[0]])
        up = flow_skip(lr, flow)[:, ::2]  # the inputs' bicubic x4, as the skip pads it
        frames = [up[:, 0]]
        for k in range(lr.shape[1] - 1):
            frames += [b[:, k] for b in between] + [up[:, k + 1]]
        return torch.stack(frames, dim=1)

    values: list[float] = []
    for lr, hr, times in clips:
        values += clip_psnr_y(skip(lr[None], times)[0], hr)
    return float(np.mean(values))


def _mean_psnr_y(
    clips: list[ValidationClip], method: Callable[[torch.Tensor], torch.Tensor]
) -> float:
    """Mean PSNR-Y over every frame of ``method``'s output (B=1 batches) on the clips."""
    values: list[float] = []
    for lr, hr in clips:
        values += clip_psnr_y(method(lr[None])[0], hr)
    return float(np.mean(values))
