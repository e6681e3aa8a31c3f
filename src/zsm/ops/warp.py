"""Warping along optical flow, in torch: backward warp, occlusion test, flow to a time step.

A flow field is ``(N, 2, H, W)`` holding ``(dx, dy)`` in pixels: ``flow01``
maps a pixel ``x`` of frame 0 to ``x + flow01(x)`` in frame 1. A *backward*
warp samples an image at ``x + flow(x)``, so warping frame 1 along ``flow01``
gives (where nothing is occluded) frame 0. These are the operations of the
``bicubic-flow`` baseline (:mod:`zsm.evaluation.baselines`, OpenCV there) and
of the flow-guided network's global skip, which must agree exactly.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

# Channels of a channels-last image from which the native warp takes it (the network's
# feature maps; frames and flows go through grid_sample).
NATIVE_WARP_MIN_CHANNELS = 8


def warp(image: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """``image`` (N, C, H, W) sampled at ``x + flow(x)``: bilinear, edges replicated.

    A channels-last feature map on a CPU with AVX-512, with no gradient wanted (the
    inference engine's feature warps of the flow-guided alignment), is warped by the
    native kernel (``zsm_warp_nhwc``), in its own dtype: no float32 copy of it, no
    grid, and the result as the conv after it would round it (torch's under autocast
    is float32, cast to bf16 by that conv); else by ``grid_sample``.
    """
    fast = _native_warp(image, flow)
    if fast is not None:
        return fast
    _n, _, h, w = image.shape
    flow = flow.to(torch.float32)
    ys = torch.arange(h, device=flow.device, dtype=torch.float32).view(1, h, 1)
    xs = torch.arange(w, device=flow.device, dtype=torch.float32).view(1, 1, w)
    # grid_sample's align_corners=False coordinates: pixel i of W is at (2i + 1) / W - 1.
    gx = (2.0 * (xs + flow[:, 0]) + 1.0) / w - 1.0
    gy = (2.0 * (ys + flow[:, 1]) + 1.0) / h - 1.0
    grid = torch.stack((gx, gy), dim=-1)  # (N, H, W, 2), float32
    if not torch.is_autocast_enabled(image.device.type):
        grid = grid.to(image.dtype)
    # Under autocast grid_sample runs in float32 (CPU and CUDA): a grid rounded to bf16
    # first would be 1/256 of the frame coarse, up to 0.6 px at 640 px across.
    out = F.grid_sample(image, grid, mode="bilinear", padding_mode="border", align_corners=False)
    if image.dim() == 4 and image.shape[1] > 1 and image.stride(1) == 1:
        # Channels-last in, channels-last out (grid_sample's is NCHW): the convs that
        # read it run 2x faster so on the CPU (see zsm.engine.rewrites).
        out = out.contiguous(memory_format=torch.channels_last)
    return out


def _native_warp(image: torch.Tensor, flow: torch.Tensor) -> torch.Tensor | None:
    """:func:`warp` by the native kernel, or None where it does not take the call."""
    if image.device.type != "cpu" or image.dim() != 4 or image.shape[1] < NATIVE_WARP_MIN_CHANNELS:
        return None
    if image.dtype not in (torch.float32, torch.bfloat16):
        return None
    if torch.is_grad_enabled() and (image.requires_grad or flow.requires_grad):
        return None
    if not image.permute(0, 2, 3, 1).is_contiguous():
        return None
    from zsm.ops.dcn.geometry import position_strides
    from zsm.ops.dcn.native import load_native

    lib = load_native()
    if lib is None or not lib.set_simd():
        return None
    flow = flow.detach().float()
    strides = position_strides(flow)
    if strides is None:
        flow = flow.contiguous()
        strides = position_strides(flow)
    assert strides is not None
    n, c, h, w = image.shape
    out = torch.empty_like(image, memory_format=torch.channels_last)
    bf16 = image.dtype == torch.bfloat16
    ok = lib.warp_nhwc(
        in_f32=None if bf16 else image, in_bf16=image if bf16 else None, flow=flow,
        fsb=strides[0], fsc=strides[1], fsp=strides[2],
        out_f32=None if bf16 else out, out_bf16=out if bf16 else None,
        B=n, H=h, W=w, C=c, nthreads=torch.get_num_threads(),
    )  # fmt: skip
    return out if ok == 1 else None


def occlusion(forward: torch.Tensor, backward: torch.Tensor) -> torch.Tensor:
    """(N, 1, H, W): 1.0 where a pixel of the first frame has no match in the second, else 0.

    Forward-backward consistency (Sundaram et al., ECCV 2010): following the
    forward flow and then the backward flow found there should come back to
    the start, up to a tolerance that grows with the motion.
    """
    back_at_target = warp(backward, forward)
    err = (forward + back_at_target).square().sum(1, keepdim=True)
    mag = forward.square().sum(1, keepdim=True) + back_at_target.square().sum(1, keepdim=True)
    return (err > 0.01 * mag + 0.5).to(forward.dtype)


Time = float | torch.Tensor  # a time step, or one per image as (N, 1, 1, 1)


def flows_to_time(
    flow01: torch.Tensor, flow10: torch.Tensor, t: Time
) -> tuple[torch.Tensor, torch.Tensor]:
    """The flows from the frame at time ``t`` in (0, 1) to frames 0 and 1 (``t`` a float,
    or a (N, 1, 1, 1) tensor of one time per flow).

    Under locally constant motion (Jiang et al., Super SloMo, CVPR 2018, eq. 4):
    ``F_t0 = -(1 - t) t F01 + t^2 F10`` and ``F_t1 = (1 - t)^2 F01 - t (1 - t) F10``.
    """
    ft0 = flow01 * (-(1.0 - t) * t) + flow10 * (t * t)
    ft1 = flow01 * ((1.0 - t) ** 2) + flow10 * (-t * (1.0 - t))
    return ft0, ft1


def flow_between(flow01: torch.Tensor, flow10: torch.Tensor, s: Time, r: Time) -> torch.Tensor:
    """The flow from the frame at time ``s`` to the frame at time ``r``, both in [0, 1].

    Constant motion through ``s``: ``F_sr = (1 - r) F_s0 + r F_s1`` with the
    flows of :func:`flows_to_time` (``F_00 = 0``, ``F_01 = F01``, ``F_10 = F10``).
    """
    fs0, fs1 = flows_to_time(flow01, flow10, s)
    return fs0 * (1.0 - r) + fs1 * r


def blend_at_time(
    frame0: torch.Tensor,
    frame1: torch.Tensor,
    flow01: torch.Tensor,
    flow10: torch.Tensor,
    t: Time = 0.5,
) -> torch.Tensor:
    """The frame at time ``t`` between ``frame0`` and ``frame1`` (N, C, H, W), along the flows.

    Both frames are backward-warped to ``t`` (:func:`flows_to_time`) and
    blended, weighted ``1 - t`` and ``t``. Occlusion-aware: where the sample
    taken from frame 0 is occluded in frame 1 (forward-backward check), the
    sample from frame 1 is wrong and gets no weight, and vice versa; where both
    or neither are, the weights are ``1 - t`` and ``t``. The flows are at the
    frames' resolution.
    """
    ft0, ft1 = flows_to_time(flow01, flow10, t)
    o0 = warp(occlusion(flow01, flow10), ft0)  # is the sample taken from frame 0 occluded in 1?
    o1 = warp(occlusion(flow10, flow01), ft1)
    w0 = (1.0 - t) * (1.0 - o1 * (1.0 - o0))
    w1 = t * (1.0 - o0 * (1.0 - o1))
    total = w0 + w1  # >= min(t, 1 - t) everywhere: the weights never both vanish
    out = warp(frame0, ft0) * w0 + warp(frame1, ft1) * w1
    return out / total


def resize_flow(flow: torch.Tensor, factor: int) -> torch.Tensor:
    """A flow field at ``factor`` times (> 0) or ``1/-factor`` times (< 0) its resolution.

    Enlarging is bilinear (align_corners=False) and multiplies the vectors by
    ``factor``; shrinking by ``-factor`` averages ``-factor`` x ``-factor`` blocks
    (H and W must divide) and divides them by it.
    """
    if factor > 0:
        up = F.interpolate(flow, scale_factor=factor, mode="bilinear", align_corners=False)
        return up.mul_(factor)
    return F.avg_pool2d(flow, -factor).div_(-factor)
