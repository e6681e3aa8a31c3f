"""Deformable ConvLSTM and its bidirectional wrapper (the paper's Sec. 3.2).

Before the gates, the hidden and cell states are aligned to the current
input feature by deformable sampling, so that the recurrence aggregates
temporal context that has been moved into place rather than blurred.

Flow-guided: each step also takes the flow from the current time to the
previous step's time (:func:`zsm.models.flowguide.state_flows`); the state
is sampled along it and the input along zero motion.
"""

from __future__ import annotations

import torch
from torch import nn

from zsm.models.blocks import conv3x3
from zsm.models.interp import FeatureInterpolation
from zsm.models.pyramid import FeaturePyramid
from zsm.models.sequence import flatten_frames, seq_op, stack_frames


class StateAlign(nn.Module):
    """Aligns a recurrent state ``s`` with the input ``x``.

    Builds pyramids of both with its own convs and returns
    ``interp(pyramid(x), pyramid(s))``, the same pyramid alignment and blend
    that interpolates frame features.
    """

    def __init__(self, *, nf: int, groups: int, max_residual: float | None = None) -> None:
        super().__init__()
        self.pyramid = FeaturePyramid(nf=nf)
        self.interp = FeatureInterpolation(nf=nf, groups=groups, max_residual=max_residual)

    def forward(
        self, x: torch.Tensor, s: torch.Tensor, flow: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``flow``: from ``x``'s time to ``s``'s (N, 2, H, W), flow-guided networks only."""
        flows = None if flow is None else (torch.zeros_like(flow), flow)
        return self.interp(self.pyramid(x), self.pyramid(s), flows)


class DeformableConvLSTM(nn.Module):
    """ConvLSTM whose states are deformably aligned to each input before the gates.

    ``forward`` takes (B, T, nf, H, W) and returns the hidden states, same
    shape. Initial states are zero.
    """

    def __init__(self, *, nf: int = 64, groups: int = 8, max_residual: float | None = None) -> None:
        super().__init__()
        self.align_h = StateAlign(nf=nf, groups=groups, max_residual=max_residual)
        self.align_c = StateAlign(nf=nf, groups=groups, max_residual=max_residual)
        self.gates = conv3x3(2 * nf, 4 * nf)

    def step(
        self, x: torch.Tensor, h: torch.Tensor, c: torch.Tensor, flow: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One time step: aligned states, then the usual LSTM gates (order i, f, o, g)."""
        h_aligned = self.align_h(x, h, flow)
        c_aligned = self.align_c(x, c, flow)
        gates = self.gates(torch.cat((x, h_aligned), dim=1))
        return self.update(gates, c_aligned)

    def update(
        self, gates: torch.Tensor, c_aligned: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The LSTM cell update from the gate pre-activations: new (h, c)."""
        i, f, o, g = torch.chunk(gates, 4, dim=1)
        c = torch.sigmoid(f) * c_aligned + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        return h, c

    def forward(self, seq: torch.Tensor, flows: torch.Tensor | None = None) -> torch.Tensor:
        """``flows`` (B, T, 2, H, W): step k's flow to step k-1's time (flow-guided only)."""
        h = torch.zeros_like(seq[:, 0])  # the input's layout (NCHW or channels-last)
        c = torch.zeros_like(h)
        outputs = []
        for k in range(seq.shape[1]):
            h, c = self.step(seq[:, k], h, c, None if flows is None else flows[:, k])
            outputs.append(h)
        return stack_frames(outputs)


class BiDeformableConvLSTM(nn.Module):
    """Runs one :class:`DeformableConvLSTM` forwards and backwards, merged by a 1x1 conv.

    Both directions share the cell's weights (as in the official release), so
    they are computed in one pass with the reversed sequence stacked on the
    batch axis: same numbers, half the Python overhead, larger GEMMs.
    """

    def __init__(self, *, nf: int = 64, groups: int = 8, max_residual: float | None = None) -> None:
        super().__init__()
        self.cell = DeformableConvLSTM(nf=nf, groups=groups, max_residual=max_residual)
        self.merge = nn.Conv2d(2 * nf, nf, 1)

    def forward(
        self, seq: torch.Tensor, flows: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> torch.Tensor:
        """(B, T, nf, H, W) -> (B, T, nf, H, W).

        ``flows``: each step's flow (B, T, 2, H, W) to the previous step's time
        and to the next one's (:func:`zsm.models.flowguide.state_flows`).
        """
        b, t = seq.shape[:2]
        both_flows = None if flows is None else torch.cat((flows[0], flows[1].flip(1)), dim=0)
        both = self.cell(
            seq_op(lambda s: torch.cat((s, s.flip(1)), dim=0), seq), both_flows
        )  # (2B, T, ...)
        fwd, bwd = both[:b], seq_op(lambda s: s.flip(1), both[b:])
        merged = self.merge(torch.cat((flatten_frames(fwd), flatten_frames(bwd)), dim=1))
        return merged.unflatten(0, (b, t))  # (B, T, nf, H, W)
