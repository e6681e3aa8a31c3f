"""Frame feature temporal interpolation (the paper's Sec. 3.1).

The feature of a missing frame between frames ``a`` and ``b`` is
``blend([align_a(a <- b), align_b(b <- a)])``: each side is sampled by a
coarse-to-fine pyramid of modulated deformable convs whose offsets are
learned from *both* frames; no LR frame is ever synthesised.

Flow-guided (``max_residual`` given): each side also takes a flow from the
target time to its own frame, at full (L1) resolution; at every level it is
averaged down to that level, both features are warped along it before the
offset convs see them, and it is the deformable conv's base offset (see
:class:`~zsm.models.deform.ModulatedDeformConv2d`).
"""

from __future__ import annotations

from functools import partial

import torch
from torch import nn
from torch.nn import functional as F

from zsm.models.blocks import conv3x3, lrelu_
from zsm.models.deform import ModulatedDeformConv2d
from zsm.models.timemod import TimeModulation
from zsm.ops.warp import resize_flow, warp

LevelFlows = tuple[torch.Tensor, torch.Tensor]  # the flows of p and q at one level


def up2(x: torch.Tensor) -> torch.Tensor:
    """Bilinear x2 resize (align_corners=False), as between pyramid levels."""
    return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)


class AlignLevel(nn.Module):
    """One pyramid level of the deformable alignment.

    Offsets: ``lrelu(offset_in([p, q]))``, merged with the coarser level's
    offset features (``2 * up2``, since displacements double) by
    ``offset_merge``, then ``lrelu(offset_out(.))``. The sampled feature is
    fused with the coarser level's aligned feature by ``fuse``.
    """

    def __init__(
        self,
        *,
        nf: int,
        groups: int,
        coarsest: bool,
        max_residual: float | None = None,
        time_conditioned: bool = False,
    ) -> None:
        super().__init__()
        self.coarsest = coarsest
        self.time_mod = TimeModulation(nf) if time_conditioned else None
        self.offset_in = conv3x3(2 * nf, nf)
        if not coarsest:
            self.offset_merge = conv3x3(2 * nf, nf)
        self.offset_out = conv3x3(nf, nf)
        self.dcn = ModulatedDeformConv2d(nf, nf, offset_groups=groups, max_residual=max_residual)
        if not coarsest:
            self.fuse = conv3x3(2 * nf, nf)

    def conv_lrelu(self, conv: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """``lrelu(conv(x))`` (the inference engine fuses the two on the CPU)."""
        return lrelu_(conv(x))

    def forward(
        self,
        p: torch.Tensor,
        q: torch.Tensor,
        coarser: tuple[torch.Tensor, torch.Tensor] | None,
        flows: LevelFlows | None = None,
        t: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Align ``p`` using offsets from ``[p, q]``; returns (offset feature, aligned).

        With ``flows`` (of ``p`` and of ``q``), the offsets see both features
        warped along their flows, and ``p``'s flow is the base offset. With
        ``t`` (N,) (time-conditioned layers only), the offset feature is
        modulated by the time step (:class:`~zsm.models.timemod.TimeModulation`)
        before it predicts the offsets and is handed to the finer level.
        """
        pw, qw, base = p, q, None
        if flows is not None:
            base = flows[0]
            pw, qw = warp(p, flows[0]), warp(q, flows[1])
        off = self.conv_lrelu(self.offset_in, torch.cat((pw, qw), dim=1))
        if coarser is None:
            off = self._modulate(self.conv_lrelu(self.offset_out, off), t)
            return off, self.dcn(p, off, base)
        coarse_off, coarse_fea = coarser
        off = self.conv_lrelu(self.offset_merge, torch.cat((off, up2(coarse_off).mul_(2)), dim=1))
        off = self._modulate(self.conv_lrelu(self.offset_out, off), t)
        fea = self.fuse(torch.cat((self.dcn(p, off, base), up2(coarse_fea)), dim=1))
        return off, fea

    def _modulate(self, off: torch.Tensor, t: torch.Tensor | None) -> torch.Tensor:
        if self.time_mod is None:
            if t is not None:
                raise ValueError("t= is for time-conditioned layers")
            return off
        if t is None:
            raise ValueError("a time-conditioned layer needs the time step t=")
        return self.time_mod(off, t)


class PyramidAlign(nn.Module):
    """Aligns the pyramid of ``p`` guided by ``q``, coarse (L3) to fine (L1).

    The L3 and L2 outputs pass through LeakyReLU; the L1 output does not (it
    is the aligned feature handed on).
    """

    def __init__(
        self,
        *,
        nf: int = 64,
        groups: int = 8,
        max_residual: float | None = None,
        time_conditioned: bool = False,
    ) -> None:
        super().__init__()
        level = partial(
            AlignLevel,
            nf=nf,
            groups=groups,
            max_residual=max_residual,
            time_conditioned=time_conditioned,
        )
        self.l3 = level(coarsest=True)
        self.l2 = level(coarsest=False)
        self.l1 = level(coarsest=False)

    def forward(
        self,
        p: list[torch.Tensor],
        q: list[torch.Tensor],
        flows: LevelFlows | None = None,
        t: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``flows``: the L1 flows of ``p`` and ``q`` (flow-guided networks only);
        ``t``: the time steps (N,) (time-conditioned networks only)."""
        f1 = f2 = f3 = None
        if flows is not None:
            f1 = flows
            f2 = (resize_flow(f1[0], -2), resize_flow(f1[1], -2))
            f3 = (resize_flow(f2[0], -2), resize_flow(f2[1], -2))
        off3, fea3 = self.l3(p[2], q[2], None, f3, t)
        fea3 = lrelu_(fea3)
        off2, fea2 = self.l2(p[1], q[1], (off3, fea3), f2, t)
        fea2 = lrelu_(fea2)
        _, fea1 = self.l1(p[0], q[0], (off2, fea2), f1, t)
        return fea1


class FeatureInterpolation(nn.Module):
    """``blend([T1(a; a, b), T3(b; b, a)])``: the feature between ``a`` and ``b``.

    Both samplings share the design but not the weights (``align_a`` and
    ``align_b``); ``blend`` is a learned 1x1 conv.

    Time-conditioned (the frame at any time step t, not only halfway): every
    level's offset feature and the blend's input are modulated by t
    (:class:`~zsm.models.timemod.TimeModulation`, identity when untrained).
    """

    def __init__(
        self,
        *,
        nf: int = 64,
        groups: int = 8,
        max_residual: float | None = None,
        time_conditioned: bool = False,
    ) -> None:
        super().__init__()
        pyramid = partial(
            PyramidAlign,
            nf=nf,
            groups=groups,
            max_residual=max_residual,
            time_conditioned=time_conditioned,
        )
        self.align_a = pyramid()
        self.align_b = pyramid()
        self.blend_time = TimeModulation(2 * nf) if time_conditioned else None
        self.blend = nn.Conv2d(2 * nf, nf, 1)

    def forward(
        self,
        a: list[torch.Tensor],
        b: list[torch.Tensor],
        flows: LevelFlows | None = None,
        t: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``a`` and ``b`` are pyramids ``[L1, L2, L3]``; returns (B, nf, H, W).

        ``flows``: the flows (N, 2, H, W) from the target time to ``a``'s frame
        and to ``b``'s (flow-guided networks only); ``t``: the time steps (N,)
        of the frames made (time-conditioned networks only).
        """
        swapped = None if flows is None else (flows[1], flows[0])
        both = torch.cat((self.align_a(a, b, flows, t), self.align_b(b, a, swapped, t)), dim=1)
        if self.blend_time is not None:
            if t is None:
                raise ValueError("a time-conditioned interpolation needs the time steps t=")
            both = self.blend_time(both, t)
        return self.blend(both)
