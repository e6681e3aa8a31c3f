"""How the LR optical flow guides a flow-guided network: the flows each alignment takes.

The network gets, for each neighbouring pair (k, k+1) of its n inputs, the
flows ``F01`` (frame k to k+1) and ``F10`` as channels ``0:2`` and ``2:4``
of a (B, n-1, 4, H, W) tensor (:mod:`zsm.ops.flow`). Its 2n-1 feature
frames sit at times ``j / 2`` (j even: input ``j / 2``; odd: halfway); every
flow below is derived from the pair's two under locally constant motion
(:func:`zsm.ops.warp.flow_between`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from zsm.models.config import SCALE
from zsm.ops.warp import blend_at_time, flow_between, flows_to_time, resize_flow

MID = 0.5  # the time of the in-between frame within its pair


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


def mid_flows(f01: torch.Tensor, f10: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The flows from each pair's in-between frame to its first and to its second frame,
    pairs flattened into the batch: two (B*(n-1), 2, H, W)."""
    ft0, ft1 = flows_to_time(f01.flatten(0, 1), f10.flatten(0, 1), MID)
    return ft0, ft1


def state_flows(f01: torch.Tensor, f10: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each of the 2n-1 feature frames' flow to the previous frame's time and to the next's:
    two (B, 2n-1, 2, H, W); zero where there is no such frame (the ends)."""
    _b, pairs = f01.shape[:2]
    zero = torch.zeros_like(f01[:, :1])
    prev: list[torch.Tensor] = [zero[:, 0]]
    nxt: list[torch.Tensor] = []
    for k in range(pairs):
        a, r = f01[:, k], f10[:, k]
        nxt.append(flow_between(a, r, 0.0, MID))  # input k -> halfway
        prev.append(flow_between(a, r, MID, 0.0))  # halfway -> input k
        nxt.append(flow_between(a, r, MID, 1.0))  # halfway -> input k + 1
        prev.append(flow_between(a, r, 1.0, MID))  # input k + 1 -> halfway
    nxt.append(zero[:, 0])
    return torch.stack(prev, dim=1), torch.stack(nxt, dim=1)


def add_flow_skip_(
    out: torch.Tensor, up: torch.Tensor, f01: torch.Tensor, f10: torch.Tensor
) -> None:
    """``out`` (B, 2n-1, 3, sH, sW) += the bicubic frames ``up`` (B, n, 3, sH, sW) at input
    times and their occlusion-aware flow blend halfway between, in place."""
    out[:, 0::2] += up
    out[:, 1::2] += flow_skip_mids(up, f01, f10)


def flow_skip_mids(up: torch.Tensor, f01: torch.Tensor, f10: torch.Tensor) -> torch.Tensor:
    """The in-between frames of the flow skip: (B, n-1, 3, sH, sW) from the enlarged frames
    ``up`` (B, n, 3, sH, sW) and the LR flows, enlarged to ``up``'s size."""
    return flow_skip_at(up, f01, f10, (MID,))[0]


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
