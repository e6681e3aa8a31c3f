"""A deformable conv's offsets and mask from its offset/mask conv, in one native pass.

The reference (:class:`~zsm.models.deform.ModulatedDeformConv2d`) makes the
offset/mask conv's output float32, takes ``sigmoid`` of the mask logits and,
flow-guided, ``base + max_residual * tanh(offsets)``: five passes over the
tensor and four new ones, and torch's CPU ``tanh`` alone cost 12% of the
flow-guided compact network's bf16 forward pass (profile of ``zsm-compact-flow``,
3 frames of 176x144, 1 thread). ``zsm_dcn_offsets_mask`` reads the conv's NHWC
output (bf16 or float32) once and writes both, float32 NHWC, into one tensor,
the layout the deformable conv reads in place; ``tanh(v) = 2 sigmoid(2 v) - 1``
and one AVX-512 ``exp`` per 16 channels, whichever part they are in (about
1e-7 from torch's). Inference only: no gradient flows through it.
"""

from __future__ import annotations

import torch

from zsm.ops.dcn.geometry import position_strides
from zsm.ops.dcn.native import load_native


def offsets_and_mask(
    raw: torch.Tensor, offset_channels: int, base: torch.Tensor | None, max_residual: float
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(offset, mask), float32 NHWC views of one new tensor, from the offset/mask conv's
    output ``raw`` (B, C3, H, W) (offsets first, then mask logits; bf16 or float32,
    channels-last): ``base`` (B, 2, H, W) as (dx, dy) + ``max_residual * tanh`` of the
    offsets (``max_residual`` 0: the offsets as they are, no base), and the logits'
    sigmoid. None where the native kernel cannot (no AVX-512, not CPU, not NHWC)."""
    if raw.device.type != "cpu" or raw.dtype not in (torch.float32, torch.bfloat16):
        return None
    b, c3, h, w = raw.shape
    if not raw.permute(0, 2, 3, 1).is_contiguous() or raw.requires_grad:
        return None
    lib = load_native()
    if lib is None or not lib.set_simd():
        return None
    bstrides = (0, 0, 0)
    if base is not None:
        base = base.float()
        if position_strides(base) is None:
            base = base.contiguous()
        bstrides = position_strides(base) or (0, 0, 0)
    out = torch.empty((b, c3, h, w), dtype=torch.float32, memory_format=torch.channels_last)
    bf16 = raw.dtype == torch.bfloat16
    ok = lib.offsets_mask(
        in_f32=None if bf16 else raw, in_bf16=raw if bf16 else None, base=base, out=out,
        HW=h * w, C3=c3, P2=offset_channels, bsb=bstrides[0], bsc=bstrides[1], bsp=bstrides[2],
        q0=0, q1=b * h * w, r=float(max_residual), nthreads=torch.get_num_threads(),
    )  # fmt: skip
    if ok != 1:
        return None
    return out[:, :offset_channels], out[:, offset_channels:]
