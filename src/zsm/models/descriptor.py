"""What the video pipeline needs to know of a model, and nothing more.

The pipeline (:mod:`zsm.video.pipeline`) never looks inside a network: it
reads this descriptor, which :class:`~zsm.models.zsm.ZoomingSlowMo`, the
inference engine's prepared models and the self-ensemble export as their
``descriptor`` attribute. A model callable that is not ours must declare one
(``fn.descriptor = ModelDescriptor(...)``) or is refused by :func:`describe`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass


@dataclass(frozen=True)
class ModelDescriptor:
    """A model's contract with the pipeline.

    Attributes:
        scale: spatial factor: ``(1, n, 3, h, w)`` in, ``(1, 2n-1, 3, scale*h, scale*w)`` out.
        size_multiple: the model pads H and W to multiples of this inside; tiles start on
            multiples of it so that every tile sees the whole frame's grid.
        bytes_per_pixel_frame: estimated working memory, in bytes, per LR pixel per
            input frame (sizes the automatic tiles).
        time_steps: whether the model makes frames at any time step between two inputs
            (``False``: only halfway).
        precisions: the precisions it runs in (``fp32``, ``fp16``, ``bf16``).
        needs_flow: whether the model takes ``flow=``, the LR optical flow of every
            neighbouring pair of its input frames, (1, n-1, 4, h, w) as
            :func:`zsm.ops.flow.frame_flows` makes it; the pipeline computes it on
            whole frames and crops it with each tile.
    """

    scale: int
    size_multiple: int
    bytes_per_pixel_frame: float
    time_steps: bool = False
    precisions: tuple[str, ...] = ("fp32",)
    needs_flow: bool = False

    def __post_init__(self) -> None:
        if self.scale < 1 or self.size_multiple < 1:
            raise ValueError(
                f"scale and size_multiple must be >= 1, got {self.scale}, {self.size_multiple}"
            )
        if self.bytes_per_pixel_frame <= 0:
            raise ValueError(f"bytes_per_pixel_frame must be > 0, got {self.bytes_per_pixel_frame}")

    def replace(self, **changes: object) -> ModelDescriptor:
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]


def describe(model: object) -> ModelDescriptor:
    """``model.descriptor``, or a ``TypeError`` saying how to declare one."""
    descriptor = getattr(model, "descriptor", None)
    if isinstance(descriptor, ModelDescriptor):
        return descriptor
    raise TypeError(
        f"model {type(model).__name__} declares no zsm.ModelDescriptor; give it a "
        "`descriptor` attribute (scale, size multiple, bytes per LR pixel-frame, ...) "
        "or pass a zsm network"
    )
