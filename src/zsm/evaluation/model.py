"""The model as an evaluated method: its HR frames at the time steps a time factor asks for.

At time factor N the LR inputs are every N-th HR frame and a method makes the
N-1 frames at t = 1/N, ..., (N-1)/N between each pair. The model is asked for
them through :func:`model_frames`, which goes through the same pipeline as
``zsm upscale`` (:func:`zsm.upscale.upscale_frames` with ``time_factor=N``:
N output frames per input, the last one held). Whether a model can is its
descriptor's ``time_steps`` (:class:`zsm.models.descriptor.ModelDescriptor`);
:func:`time_step_problem` says, in one line, why not. The pipeline makes any N
(:mod:`zsm.video.timing`), so a model that makes any time step needs nothing
else here.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import numpy as np
import torch

from zsm.evaluation.results import time_labels
from zsm.models.descriptor import describe
from zsm.upscale import upscale_frames

HALFWAY = 2  # the time factor every Zooming Slow-Mo network makes: one frame at t = 1/2


def time_step_problem(model: object, time_factor: int) -> str | None:
    """Why ``model`` cannot make the frames time factor ``time_factor`` needs, in one line,
    or ``None`` if it can."""
    if time_factor == HALFWAY:
        return None
    wanted = ", ".join(label.removeprefix("t=") for label in time_labels(time_factor))
    try:
        descriptor = describe(model)
    except TypeError as exc:
        return str(exc)
    if not descriptor.time_steps:
        return (
            f"the model makes only t = 1/2 between inputs (its descriptor's time_steps is "
            f"False), time factor {time_factor} needs t = {wanted}"
        )
    return None


def model_frames(
    model: torch.nn.Module,
    lr_frames: np.ndarray,
    *,
    device: str | torch.device = "cpu",
    ensemble: int = 1,
    precision: str = "fp32",
    time_factor: int = HALFWAY,
) -> Iterator[np.ndarray]:
    """The model's N(n-1)+1 uint8 RGB HR frames for n uint8 RGB LR frames (n, h, w, 3), N =
    ``time_factor``: each input, then the frames at t = 1/N .. (N-1)/N after it; lazily, the
    pipeline holding one window at a time.

    ``ensemble``: passes of the self-ensemble (:mod:`zsm.engine.ensemble`);
    ``precision``: see :mod:`zsm.engine.precision`. A model that cannot make these time
    steps is a ``ValueError`` saying why (:func:`time_step_problem`).
    """
    problem = time_step_problem(model, time_factor)
    if problem is not None:
        raise ValueError(problem)
    n = len(lr_frames)
    wanted = time_factor * (n - 1) + 1
    # The pipeline holds the last frame for N-1 more slots (N x the frame rate); the scored
    # frames are those on or between inputs.
    count = 0
    frames = upscale_frames(
        lr_frames,
        model=model,
        device=str(device),
        ensemble=ensemble,
        precision=precision,
        time_factor=time_factor,
    )
    for frame in itertools.islice(frames, wanted):
        count += 1
        yield frame
    if count != wanted:
        raise RuntimeError(f"the pipeline gave {count} frames for {n} inputs, not {wanted}")


def run_model_on_clip(
    model: torch.nn.Module, lr_frames: np.ndarray, *, device: str | torch.device = "cpu"
) -> list[np.ndarray]:
    """The model's 2n-1 uint8 RGB HR frames for n uint8 RGB LR frames (n, h, w, 3)."""
    return list(model_frames(model, lr_frames, device=device))
