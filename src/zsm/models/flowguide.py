"""How the LR optical flow guides a flow-guided network: the flows each alignment takes.

The network gets, for each neighbouring pair (k, k+1) of its n inputs, the
flows ``F01`` (frame k to k+1) and ``F10`` as channels ``0:2`` and ``2:4``
of a (B, n-1, 4, H, W) tensor (:mod:`zsm.ops.flow`). Its feature frames
sit at the inputs and at the time steps of its in-between frames
(:class:`~zsm.models.timesteps.TimeSteps`; the paper's network: halfway in
every gap); every flow below is derived from the pair's two under locally
constant motion (:func:`zsm.ops.warp.flow_between`), scaled to the frames'
times.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch

from zsm.models.config import SCALE
from zsm.models.timesteps import TimeSteps
from zsm.ops.warp import blend_at_time, flow_between, flows_to_time, resize_flow


def check_flow(flow: torch.Tensor | None, b: int, n: int, h: int, w: int) -> torch.Tensor:
    """``flow`` if it is (B, n-1, 4, H, W), else a ``ValueError`` saying what is expected."""
    expected = (b, n - 1, 4, h, w)
    if flow is None:
        raise ValueError(
            "a flow-guided network needs flow= (B, n-1, 4, H, W): the LR optical flow of every "
            "neighbouring pair (zsm.ops.flow.frame_flows), or run it through zsm.engine.prepare"
        )
    if tuple(flow.shape) != expected:
        raise ValueError(f"expected flow of shape {expected}, got {tuple(flow.shape)}")
    return flow.float()


def split(flow: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, n-1, 4, H, W) -> F01, F10, each (B, n-1, 2, H, W)."""
    return flow[:, :, 0:2], flow[:, :, 2:4]


def gap_items(x: torch.Tensor, steps: TimeSteps, offset: int = 0) -> torch.Tensor:
    """``x`` (B, G, ...) of each in-between frame's gap (+ ``offset``), frames flattened into
    the batch: (B*P, ...)."""
    index = torch.tensor(steps.gap, dtype=torch.long, device=x.device) + offset
    return x[:, index].flatten(0, 1)


def step_times(steps: TimeSteps) -> torch.Tensor:
    """The in-between frames' time steps as (B*P, 1, 1, 1), to scale (N, C, H, W) flows."""
    return steps.t.reshape(-1, 1, 1, 1)


def mid_flows(
    f01: torch.Tensor, f10: torch.Tensor, steps: TimeSteps
) -> tuple[torch.Tensor, torch.Tensor]:
    """The flows from each in-between frame to the first and to the second frame of its
    pair, frames flattened into the batch: two (B*P, 2, H, W)."""
    t = step_times(steps)
    return flows_to_time(gap_items(f01, steps), gap_items(f10, steps), t)


def state_flows(
    f01: torch.Tensor, f10: torch.Tensor, steps: TimeSteps
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each feature frame's (time order, n + P of them) flow to the previous frame's time
    and to the next's: two (B, n + P, 2, H, W); zero where there is no such frame (the ends)."""
    times = steps.sequence_times()
    zero = torch.zeros_like(f01[:, 0])
    prev: list[torch.Tensor] = [zero]
    nxt: list[torch.Tensor] = []
    for (gap, s), (next_gap, r) in itertools.pairwise(times):
        if next_gap != gap:  # the next input: the end of this gap
            r = torch.ones_like(r)
        a, b = f01[:, gap], f10[:, gap]
        s4, r4 = s.view(-1, 1, 1, 1), r.view(-1, 1, 1, 1)
        nxt.append(flow_between(a, b, s4, r4))
        prev.append(flow_between(a, b, r4, s4))
    nxt.append(zero)
    return torch.stack(prev, dim=1), torch.stack(nxt, dim=1)


def add_flow_skip_(
    out: torch.Tensor, up: torch.Tensor, f01: torch.Tensor, f10: torch.Tensor, steps: TimeSteps
) -> None:
    """``out`` (B, n + P, 3, sH, sW) += the bicubic frames ``up`` (B, n, 3, sH, sW) at input
    times and their occlusion-aware flow blend at each in-between frame's time, in place."""
    out[:, steps.input_positions()] += up
    out[:, steps.between_positions()] += flow_skip_steps(up, f01, f10, steps)


def flow_skip_steps(
    up: torch.Tensor, f01: torch.Tensor, f10: torch.Tensor, steps: TimeSteps
) -> torch.Tensor:
    """The flow skip's in-between frames (B, P, 3, sH, sW) from the enlarged frames ``up``
    (B, n, 3, sH, sW) and the LR flows, enlarged to ``up``'s size."""
    b, pairs = f01.shape[:2]
    hr01 = resize_flow(f01.flatten(0, 1), SCALE).unflatten(0, (b, pairs))
    hr10 = resize_flow(f10.flatten(0, 1), SCALE).unflatten(0, (b, pairs))
    first, second = gap_items(up, steps).float(), gap_items(up, steps, 1).float()
    frames = blend_at_time(
        first, second, gap_items(hr01, steps), gap_items(hr10, steps), step_times(steps)
    )
    return frames.to(up.dtype).unflatten(0, (b, steps.count))


def flow_skip_at(
    up: torch.Tensor, f01: torch.Tensor, f10: torch.Tensor, times: Sequence[float]
) -> list[torch.Tensor]:
    """The flow skip's frames at each of ``times`` in (0, 1) between neighbours: one
    (B, n-1, 3, sH, sW) per time, the flows enlarged once for all of them."""
    b, pairs = f01.shape[:2]
    hr01 = resize_flow(f01.flatten(0, 1), SCALE)
    hr10 = resize_flow(f10.flatten(0, 1), SCALE)
    first, second = up[:, :-1].flatten(0, 1).float(), up[:, 1:].flatten(0, 1).float()
    return [
        blend_at_time(first, second, hr01, hr10, t).to(up.dtype).unflatten(0, (b, pairs))
        for t in times
    ]
