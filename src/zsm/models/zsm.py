"""Zooming Slow-Mo (Xiang et al., CVPR 2020): one-stage space-time video super-resolution."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from zsm.models.config import MULTIPLE, SCALE, ZSMConfig, preset
from zsm.models.convlstm import BiDeformableConvLSTM
from zsm.models.deform import ModulatedDeformConv2d
from zsm.models.descriptor import ModelDescriptor
from zsm.models.extract import FeatureExtractor
from zsm.models.flowguide import add_flow_skip_, check_flow, mid_flows, split, state_flows
from zsm.models.flowguide import flow_skip_at as _skip_frames_at
from zsm.models.interp import FeatureInterpolation
from zsm.models.reconstruct import Reconstructor
from zsm.models.sequence import flatten_frames, seq_op
from zsm.models.timesteps import Times, TimeSteps, resolve_times


class ZoomingSlowMo(nn.Module):
    """n LR frames (B, n, 3, H, W) in [0, 1] -> 2n-1 HR frames (B, 2n-1, 3, 4H, 4W).

    Output frame 2k is input frame k at 4x the size; output frame 2k+1 is the
    frame halfway between inputs k and k+1, interpolated in feature space.
    Any H, W >= 1 work: they are replicate-padded to multiples of 4 inside and
    the output is cropped back. The output is not clamped.

    A flow-guided network (``config.flow_guided``) also needs ``flow``, the LR
    optical flow (B, n-1, 4, H, W) of every neighbouring pair
    (:func:`zsm.ops.flow.frame_flows`; the inference engine computes it when
    not given). Untrained, its output is the ``bicubic-flow-lr`` baseline's:
    the offsets follow the flow and the output conv starts at zero.

    A flow-guided network also makes frames at any time steps between its
    inputs (``times=``, :mod:`zsm.models.timesteps`): its offsets and skip
    follow the flow scaled to each step, and a time-conditioned one
    (``config.time_conditioned``) also modulates its offset features and blend
    by the step (:mod:`zsm.models.timemod`); it is trained for them. The
    output then holds n + P frames in time order.
    """

    def __init__(self, config: ZSMConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or ZSMConfig()
        residual = config.max_residual if config.flow_guided else None
        self.extract = FeatureExtractor(nf=config.nf, front_RBs=config.front_RBs)
        self.interpolate = FeatureInterpolation(
            nf=config.nf,
            groups=config.groups,
            max_residual=residual,
            time_conditioned=config.time_conditioned,
        )
        self.aggregate = BiDeformableConvLSTM(
            nf=config.nf, groups=config.groups, max_residual=residual
        )
        self.reconstruct = Reconstructor(nf=config.nf, back_RBs=config.back_RBs, hr_nf=config.hr_nf)
        if config.flow_guided:
            nn.init.zeros_(self.reconstruct.out_conv.weight)
            nn.init.zeros_(self.reconstruct.out_conv.bias)

    def zero_offset_residuals_(self) -> int:
        """Zero the learned offset residual of every deformable conv (see
        :meth:`~zsm.models.deform.ModulatedDeformConv2d.zero_offset_residual_`): a
        flow-guided network initialised from a learned-offset one starts at the flow.
        Returns how many layers were reset."""
        layers = [m for m in self.modules() if isinstance(m, ModulatedDeformConv2d)]
        for layer in layers:
            layer.zero_offset_residual_()
        return len(layers)

    @classmethod
    def from_preset(cls, name: str, **overrides: object) -> ZoomingSlowMo:
        """Build a randomly initialised network from a named preset (``official``, ``compact``,
        ``compact-flow``)."""
        base = preset(name)
        return cls(ZSMConfig(**{**base.__dict__, **overrides}))

    @property
    def descriptor(self) -> ModelDescriptor:
        """The pipeline's view of this network (:mod:`zsm.models.descriptor`).

        Working memory on whole frames is dominated by the HR tail (2 outputs
        per input, 16 HR pixels per LR pixel, ``hr_nf`` channels, a few
        tensors alive at once): peak RSS growth measured on CPU at 9-11 KB
        per LR pixel-frame (compact preset) and 19.5 KB (official); this gives
        19.5 KB and 39 KB.
        """
        c = self.config
        # The flow skip's HR flows, occlusion masks and warps: about 40 floats per HR pixel.
        flow_bytes = 16 * 160.0 if c.flow_guided else 0.0
        return ModelDescriptor(
            scale=SCALE,
            size_multiple=MULTIPLE,
            bytes_per_pixel_frame=512.0 * c.hr_nf + 96.0 * c.nf + flow_bytes,
            time_steps=c.time_conditioned,
            precisions=("fp32", "fp16", "bf16"),
            needs_flow=c.flow_guided,
        )

    def forward(
        self, frames: torch.Tensor, flow: torch.Tensor | None = None, times: Times = None
    ) -> torch.Tensor:
        """(B, n, 3, H, W) in [0, 1] -> (B, n + P, 3, 4H, 4W), P in-between frames (n - 1
        halfway ones by default); ``flow`` and ``times``: see the class."""
        b, n, _, h, w = _check_input(frames)
        steps = resolve_times(times, b, n, frames.device)
        x = _pad_to_multiple(frames, MULTIPLE)
        pair_flows = None
        if self.config.flow_guided:
            pair_flows = split(_pad_to_multiple(check_flow(flow, b, n, h, w), MULTIPLE))
        elif flow is not None:
            raise ValueError("flow= is for flow-guided networks; this one learns its offsets")
        if pair_flows is None and not steps.is_half:
            raise ValueError(
                "this network makes only the frame halfway between two inputs; other time "
                "steps need a flow-guided one (preset compact-time)"
            )
        feats = self.extract(x.flatten(0, 1))  # pyramid levels of (B*n, nf, h, w)
        feats = self._interpolate(feats, b, n, pair_flows, steps)  # (B, n + P, nf, H', W')
        feats = self.aggregate(
            feats, None if pair_flows is None else state_flows(*pair_flows, steps)
        )
        out = self.reconstruct(flatten_frames(feats)).unflatten(0, (b, steps.frames))
        if pair_flows is not None:
            add_flow_skip_(out, _bicubic_x4(x), *pair_flows, steps)
        elif self.config.global_skip:
            _add_bicubic_skip_(out, x)
        return out[..., : SCALE * h, : SCALE * w]

    def _interpolate(
        self,
        pyr: list[torch.Tensor],
        b: int,
        n: int,
        pair_flows: tuple[torch.Tensor, torch.Tensor] | None,
        steps: TimeSteps,
    ) -> torch.Tensor:
        """Input features and the features interpolated between neighbours, in time order."""
        pyr = [level.unflatten(0, (b, n)) for level in pyr]
        # Every in-between frame at once, each with its pair's two features, on the batch axis.
        first = [_gap_frames(level, steps, 0) for level in pyr]
        second = [_gap_frames(level, steps, 1) for level in pyr]
        flows = None if pair_flows is None else mid_flows(*pair_flows, steps)
        t = steps.t.reshape(-1) if self.config.time_conditioned else None
        mids = self.interpolate(first, second, flows, t).unflatten(0, (b, steps.count))
        if steps.gap == tuple(range(n - 1)):
            return _interleave(pyr[0], mids)
        order = steps.order()
        return seq_op(lambda k, m: torch.cat((k, m), dim=1)[:, order], pyr[0], mids)


def _gap_frames(level: torch.Tensor, steps: TimeSteps, offset: int) -> torch.Tensor:
    """Input ``k + offset``'s features (B, n, ...) for every in-between frame of gap k,
    flattened into the batch (B*P, ...), keeping the frames' layout."""
    n = level.shape[1]
    if steps.gap == tuple(range(n - 1)):  # one per gap: a view
        return flatten_frames(level[:, offset : n - 1 + offset])
    index = [g + offset for g in steps.gap]
    return flatten_frames(seq_op(lambda s: s[:, index], level))


def _check_input(frames: torch.Tensor) -> tuple[int, int, int, int, int]:
    if frames.dim() != 5 or frames.shape[2] != 3:
        raise ValueError(f"expected frames of shape (B, n, 3, H, W), got {tuple(frames.shape)}")
    b, n, c, h, w = frames.shape
    if n < 2:
        raise ValueError(f"expected n >= 2 input frames, got {n}")
    if h < 1 or w < 1:
        raise ValueError(f"expected frames of at least 1x1 pixels, got {h}x{w}")
    return b, n, c, h, w


def _pad_to_multiple(frames: torch.Tensor, multiple: int) -> torch.Tensor:
    """Replicate-pad H and W of (B, n, C, H, W) up to multiples of ``multiple``."""
    h, w = frames.shape[-2:]
    ph, pw = -h % multiple, -w % multiple
    if ph == 0 and pw == 0:
        return frames
    b, n = frames.shape[:2]
    flat = frames.flatten(0, 1)
    # Replicate padding needs a size >= 1 on each side; it is, since H, W >= 1.
    flat = F.pad(flat, (0, pw, 0, ph), mode="replicate")
    return flat.unflatten(0, (b, n))


def _interleave(keys: torch.Tensor, mids: torch.Tensor) -> torch.Tensor:
    """[k0, m0, k1, m1, ..., k_{n-1}] from keys (B, n, C, H, W) and mids (B, n-1, C, H, W)."""

    def interleave(k: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        pairs = torch.stack((k[:, :-1], m), dim=2).flatten(1, 2)  # (B, 2n-2, ...)
        return torch.cat((pairs, k[:, -1:]), dim=1)

    return seq_op(interleave, keys, mids)


def _bicubic_x4(frames: torch.Tensor) -> torch.Tensor:
    """(B, n, 3, H, W) -> (B, n, 3, 4H, 4W), bicubic."""
    b, n = frames.shape[:2]
    up = F.interpolate(
        frames.flatten(0, 1), scale_factor=SCALE, mode="bicubic", align_corners=False
    )
    return up.unflatten(0, (b, n))


def _add_bicubic_skip_(out: torch.Tensor, frames: torch.Tensor) -> None:
    """``out += bicubic_skip(frames)`` in place, without building the interleaved skip."""
    up = _bicubic_x4(frames)
    out[:, 0::2] += up
    out[:, 1::2] += 0.5 * (up[:, :-1] + up[:, 1:])


def flow_skip(frames: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """The flow-guided network's global skip: what an untrained one outputs.

    (B, n, 3, H, W) frames and their flow (B, n-1, 4, H, W) -> (B, 2n-1, 3, 4H, 4W):
    the bicubic x4 of each input interleaved with the occlusion-aware flow
    blend of each neighbouring pair, padded and cropped as inside the network.
    """
    up, (mids,) = _flow_skip_parts(frames, flow, (0.5,))
    return _interleave(up, mids)


def flow_skip_at(
    frames: torch.Tensor, flow: torch.Tensor, times: Sequence[float]
) -> list[torch.Tensor]:
    """The flow skip's frames at each of ``times`` in (0, 1) between neighbouring inputs:
    one (B, n-1, 3, 4H, 4W) per time (:func:`flow_skip` holds those at 1/2)."""
    return _flow_skip_parts(frames, flow, times)[1]


def _flow_skip_parts(
    frames: torch.Tensor, flow: torch.Tensor, times: Sequence[float]
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The bicubic x4 of the inputs and the flow skip's frames at ``times``, padded and
    cropped as inside the network."""
    b, n, _, h, w = _check_input(frames)
    x = _pad_to_multiple(frames, MULTIPLE)
    pair_flows = split(_pad_to_multiple(check_flow(flow, b, n, h, w), MULTIPLE))
    up = _bicubic_x4(x)
    between = _skip_frames_at(up, *pair_flows, times)
    crop = (..., slice(0, SCALE * h), slice(0, SCALE * w))
    return up[crop], [frame[crop] for frame in between]


def bicubic_skip(frames: torch.Tensor) -> torch.Tensor:
    """Bicubic x4 of each input frame, interleaved with the mean of each neighbouring pair.

    (B, n, 3, H, W) -> (B, 2n-1, 3, 4H, 4W); the classical baseline that
    ``global_skip`` adds to the network's output.
    """
    up = _bicubic_x4(frames)
    return _interleave(up, 0.5 * (up[:, :-1] + up[:, 1:]))
