"""Inference engine: the reference network, rewritten for a device, behind one call.

:func:`prepare` copies a :class:`~zsm.models.zsm.ZoomingSlowMo` (the
reference network, what training runs), applies the rewrites for the device
(:mod:`zsm.engine.rewrites`: channels-last, the banded HR tail, the fused
offset conv, in-place LSTM gates), optionally wraps it in the self-ensemble,
and runs it under inference mode and autocast::

    net = prepare(model, torch.device("cpu"))
    hr = net(lr)            # same frames as model(lr), to float rounding
    net.descriptor          # what the video pipeline reads (zsm.models.descriptor)
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from zsm.engine.banded import BandedReconstructor
from zsm.engine.ensemble import SelfEnsemble, with_ensemble
from zsm.engine.precision import autocast_dtype
from zsm.engine.rewrites import NAMES, Rewrite, rewrites_for
from zsm.models.descriptor import ModelDescriptor
from zsm.models.timesteps import Times
from zsm.models.zsm import ZoomingSlowMo
from zsm.ops.flow import frame_flows

__all__ = ["NAMES", "InferenceModel", "Rewrite", "SelfEnsemble", "prepare", "rewrites_for"]


class InferenceModel(nn.Module):
    """A prepared network: ``(B, n, 3, H, W) -> (B, 2n-1, 3, 4H, 4W)`` without autograd."""

    def __init__(
        self,
        network: nn.Module,
        *,
        device: torch.device,
        dtype: torch.dtype | None,
        descriptor: ModelDescriptor,
        rewrites: tuple[str, ...],
    ) -> None:
        super().__init__()
        self.network = network
        self.device = device
        self.dtype = dtype
        self.descriptor = descriptor
        self.rewrites = rewrites

    def forward(
        self, frames: torch.Tensor, flow: torch.Tensor | None = None, times: Times = None
    ) -> torch.Tensor:
        """``flow``: for a flow-guided network, the LR flow of ``frames``; computed from
        them (:func:`zsm.ops.flow.frame_flows`) when not given. The video pipeline gives
        the whole frame's flow, cropped to each tile. ``times``: the time steps of the
        in-between frames (:mod:`zsm.models.timesteps`; default: one halfway per gap)."""
        args: tuple[torch.Tensor, ...] = (frames,)
        if self.descriptor.needs_flow:
            args = (frames, frame_flows(frames) if flow is None else flow)
        elif flow is not None:
            raise ValueError("flow= is for flow-guided networks; this one learns its offsets")
        kwargs = {} if times is None else {"times": times}
        # No autocast context for float32, so that an enclosing one (zsm benchmark's) holds.
        with torch.inference_mode():
            if self.dtype is None:
                return self.network(*args, **kwargs)
            with torch.autocast(self.device.type, dtype=self.dtype):
                return self.network(*args, **kwargs)

    def extra_repr(self) -> str:
        return f"device={self.device}, dtype={self.dtype}, rewrites={list(self.rewrites)}"


def prepare(
    model: ZoomingSlowMo | SelfEnsemble,
    device: torch.device | str,
    *,
    precision: str = "fp32",
    ensemble: int = 1,
    rewrites: tuple[str, ...] | None = None,
) -> InferenceModel:
    """``model`` copied to ``device`` in eval mode, rewritten for it, ready for inference.

    ``model`` is not changed. ``ensemble`` > 1 averages that many transformed
    passes (:class:`SelfEnsemble`; a ``SelfEnsemble`` given as ``model``
    keeps its own passes). ``rewrites``: just these (by name, see
    :data:`NAMES`), whatever the device; ``()`` runs the reference as it is.
    """
    device = torch.device(device)
    if isinstance(model, SelfEnsemble):
        model, ensemble = model.model, model.passes
    if not isinstance(model, ZoomingSlowMo):
        raise TypeError(f"prepare needs a ZoomingSlowMo network, got {type(model).__name__}")
    network = copy.deepcopy(model).to(device).eval()
    applied = rewrites_for(device, rewrites)
    for rewrite in applied:
        rewrite.apply(network)
    descriptor = _descriptor(network, device)
    wrapped = with_ensemble(network, ensemble)
    if isinstance(wrapped, SelfEnsemble):
        descriptor = wrapped.descriptor_of(descriptor)
    return InferenceModel(
        wrapped,
        device=device,
        dtype=autocast_dtype(device, precision),
        descriptor=descriptor,
        rewrites=tuple(r.name for r in applied),
    )


def _descriptor(network: ZoomingSlowMo, device: torch.device) -> ModelDescriptor:
    """The network's descriptor, with the banded tail's smaller memory where it runs.

    With the HR tail in bands (:mod:`zsm.engine.banded`) the LR features
    dominate: peak RSS growth measured at 4.2-5.0 KB (compact) and 7.5 KB
    (official) per LR pixel-frame, 2.5 KB and 5.1 KB since CPU inference runs
    channels-last; this gives 9.2 KB and 18.4 KB. (A smaller estimate, 4.6 KB,
    made 348-px instead of 236-px tiles for a 720p input and was no faster:
    236.1 s vs 224.5-234.5 s for 4 -> 8 frames.)
    """
    descriptor = network.descriptor
    if isinstance(network.reconstruct, BandedReconstructor):
        c = network.config
        descriptor = descriptor.replace(bytes_per_pixel_frame=128.0 * c.hr_nf + 160.0 * c.nf)
    return descriptor
