"""The CPU deformable conv (DCNv2) as an autograd function; backends ``cpu`` and ``cpu-pure``.

torchvision's CPU kernel builds its im2col matrix one input channel at a
time, recomputing the sampling position and bilinear weights for every
channel; on a 2-core machine that is ~30x a dense conv of the same shape.
Here the work is organised the way a dense conv's is:

1. **Sampling** (im2col). The input is laid out (B, G, H, W, Cg): the ``Cg``
   channels of an offset group are adjacent, and one group's image is one
   dense block (cache lines hold no other group's data). NHWC input (CPU
   inference, channels-last) already has a group's channels adjacent and is
   read in place, its NHWC offsets and mask transposed tile by tile in
   registers. For each output position, group and kernel point, the four
   bilinear corners and their weights (mask folded in) are computed *once*
   and applied to ``Cg`` contiguous floats (with AVX-512 and NHWC offsets and
   mask, vectorised over each position's (group, kernel point) pairs, which
   lie side by side there, rather than over positions; the offsets are then
   never transposed, and each position's row of columns is written in order).
   The result is the column matrix
   ``(B*Ho*Wo, K)``, ``K = C*kh*kw`` ordered (group, kernel point, channel in
   group).
2. **One GEMM** per chunk of rows with the weight permuted to that order,
   written straight into the NCHW output (NHWC input: ``columns @ W^T``,
   the NHWC output's rows). Chunks of a few MB keep the columns
   in cache between the sampling and the GEMM and bound the extra memory.
   bf16 NHWC input with NHWC offsets and mask on an AVX512-BF16 CPU (the
   network under bf16 autocast there) takes the **fused forward** instead
   (:data:`FUSED_BF16_FORWARD`, ``zsm_dcn_forward_bf16``): the columns of 24
   positions at a time are sampled into a buffer that stays in L1/L2 and
   multiplied at once by a hand-written ``vdpbf16ps`` kernel (24 float32
   accumulators in registers: 450 GFLOP/s on one core of the AMD EPYC VM with
   its operands in cache, oneDNN's dense conv 420-460), so no column goes out
   to L3 or memory (figures: benchmarks/README.md, "bf16 on the CPU"); the
   same columns, the sums in another order.

The backward pass is hand-written: ``grad_W += grad_out^T @ columns`` (the
columns are sampled again rather than kept, as torchvision does, so a DCN
holds no extra activation memory), ``grad_columns = grad_out @ W``, and a
col2im pass that scatters ``grad_columns`` back to the input and derives the
offset and mask gradients from the same four corners.

Sampling and col2im have two implementations: the native C kernel
(:mod:`zsm.ops.dcn.native`, :mod:`zsm.ops.dcn.native_sampler`) where it can
be built, for float32; else PyTorch ops (:mod:`zsm.ops.dcn.pure`). Under
bf16 autocast (bf16 GEMMs) the kernel reads bf16 activations as they are and
writes bf16 columns, sampling in float32 (no widened copy of the input, no
conversion pass over the columns: the forward pass 33 -> 28 ms at the compact
model's (3, 32, 144, 176), NHWC, 1 thread). The backward pass of bf16 NHWC
input is one native pass (:func:`_backward_nhwc_bf16`) reading the bf16 input
and bf16 column gradients as they are (compact shape, 1 thread: 153 -> 62 ms;
on AVX512-BF16 its two GEMMs are made by the kernel too, tile by tile, with the
fused forward's ``vdpbf16ps`` blocks: ``grad_columns`` of a tile's 64
positions just before they are scattered, ``grad_W`` summed in float32 from
the columns just sampled, :data:`FUSED_BF16_BACKWARD_GEMMS`);
elsewhere col2im reads float32.

Semantics are torchvision's, exactly: positions are ``(base + offset)``
rounded in the input's dtype and floored as torchvision does; each bilinear
corner outside the image contributes 0 on its own (so a point outside
``(-1, H) x (-1, W)`` samples 0); the coordinate gradient is judged corner by
corner too, so even the one-sided gradient at integer positions (zero
offsets, an untrained layer) and at exactly -1 matches.

Registered as backend ``"cpu"`` (native where available, else pure) and
``"cpu-pure"`` (always pure, for comparisons).
"""

from __future__ import annotations

from typing import Any

import torch

from zsm.ops.dcn.backends import register_backend
from zsm.ops.dcn.geometry import (
    Geom,
    channels_last,
    cols_to_weight,
    flat_positions,
    geometry,
    group_major,
    image_strides,
    per_sample_dense,
    weight_to_cols,
    workspace,
)
from zsm.ops.dcn.native import load_native, native_available
from zsm.ops.dcn.native_sampler import NativeSampler, fused_forward_bf16, supports
from zsm.ops.dcn.pure import PureSampler

Sampler = NativeSampler | PureSampler

# The fused native backward pass for bf16 NHWC input (False: the general path, for
# comparisons: the widened group-major copy, float32 col2im).
FUSED_BF16_BACKWARD = True
# The fused native forward pass for bf16 NHWC input with NHWC offsets and mask on
# AVX512-BF16 CPUs: columns sampled and multiplied a few rows at a time, never leaving
# the cache (False: im2col chunks and a GEMM, for comparisons).
FUSED_BF16_FORWARD = True
# The same for the backward pass's GEMMs (AVX512-BF16): each tile's grad_col rows and its
# share of grad_W made by the kernel while its columns are in cache (False: chunks of
# grad_col and columns through torch.mm, for comparisons).
FUSED_BF16_BACKWARD_GEMMS = True


def make_sampler(
    x: torch.Tensor,
    offset: torch.Tensor,
    mask: torch.Tensor,
    geo: Geom,
    allow_native: bool,
    cols_dtype: torch.dtype | None = None,
) -> Sampler:
    """The native sampler where it can run, else the pure one.

    ``x``: group-major (B, G, H, W, Cg), or NHWC (B, C, H, W) (the pure
    sampler then gets a group-major copy). ``cols_dtype`` (a low-precision
    GEMM's): the native kernel writes its columns in it, from float32 or
    bfloat16 ``x``, sampling in float32 either way; without it, native for
    float32 only. The pure sampler computes in ``x``'s dtype.
    """
    if allow_native and x.device.type == "cpu":
        lib = load_native()
        want = (x.dtype, cols_dtype or x.dtype)
        ok = cols_dtype is not None or x.dtype == torch.float32
        if lib is not None and ok and supports(lib, *want):
            pixel = image_strides(x, geo)[2]
            if geo.h * geo.w * pixel < 2**31:  # 32-bit offsets in an image
                off, msk = flat_positions(offset), flat_positions(mask)
                return NativeSampler(lib, x, off, msk, geo, want[1])
    if x.dim() == 4:
        x = group_major(x, geo)
    return PureSampler(x, offset, mask, geo)


def native_samples(x: torch.Tensor, cols_dtype: torch.dtype) -> bool:
    """Whether the native kernel can sample ``x`` as it is into ``cols_dtype`` columns."""
    lib = load_native() if x.device.type == "cpu" else None
    return lib is not None and supports(lib, x.dtype, cols_dtype)


def _gemm_nchw(
    sampler: Sampler, wcols: torch.Tensor, bias: torch.Tensor | None, out: torch.Tensor
) -> None:
    """``out`` (B, Cout, Ho*Wo) = W @ columns (+ bias), chunk by chunk."""
    geo = sampler.geo
    for i, ch in enumerate(sampler.chunks):
        cols = sampler.im2col(i).to(wcols.dtype)  # (rows, K), in the GEMM's dtype
        if ch.b1 == ch.b0 + 1:  # part of one image: (Cout, K) @ (K, rows)
            dst = out[ch.b0, :, ch.p0 : ch.p1]
            if bias is None:
                torch.mm(wcols, cols.t(), out=dst)
            else:
                torch.addmm(bias[:, None].expand_as(dst), wcols, cols.t(), out=dst)
        else:  # whole images
            dst = out[ch.b0 : ch.b1]
            cols3 = cols.view(ch.b1 - ch.b0, geo.hwo, geo.k).transpose(1, 2)
            if bias is None:
                torch.matmul(wcols, cols3, out=dst)
            else:
                w3 = wcols.expand(dst.shape[0], *wcols.shape)
                torch.baddbmm(bias.view(1, -1, 1).expand_as(dst), w3, cols3, out=dst)


def _gemm_nhwc(
    sampler: Sampler, wcols: torch.Tensor, bias: torch.Tensor | None, out: torch.Tensor
) -> None:
    """``out`` (B*Ho*Wo, Cout), NHWC rows, = columns @ W^T (+ bias), chunk by chunk."""
    wt = wcols.t()
    for i, ch in enumerate(sampler.chunks):
        # (rows, K), in the GEMM's dtype: the rows of out are the same positions
        cols = sampler.im2col(i).to(wcols.dtype)
        dst = out[ch.qa : ch.qb]
        if bias is None:
            torch.mm(cols, wt, out=dst)
        else:
            torch.addmm(bias, cols, wt, out=dst)


class _ModulatedDeformConv(torch.autograd.Function):
    """DCNv2 as sampling + GEMM, chunk by chunk, with a hand-written backward.

    See the module docstring. Columns are never kept: the backward pass
    samples again (cheap next to the GEMMs) instead of holding ``K`` floats
    per output position between the passes.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        x: torch.Tensor,
        offset: torch.Tensor,
        mask: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        padding: int,
        allow_native: bool,
        gemm_dtype: torch.dtype | None,
    ) -> torch.Tensor:
        geo = geometry(x, offset, mask, weight, padding)
        gemm = gemm_dtype or x.dtype  # of the GEMMs and the output; sampling in x.dtype
        ctx.x_dtype = x.dtype
        x = x.detach()
        # Activations in the GEMM's dtype (autocast): sampled in float32 all the same,
        # by the native kernel as they are, else widened first.
        low_x = gemm_dtype is not None and x.dtype != torch.float32
        if low_x and not (allow_native and native_samples(x, gemm)):
            x = x.float()
        # NHWC input (channels-last convs around it) is sampled in place and gives
        # NHWC output, whose rows the GEMM writes directly; else group-major, NCHW.
        nhwc = allow_native and channels_last(x) and native_available()
        x_s = x if nhwc else group_major(x, geo)
        offset, mask = offset.detach(), mask.detach()
        wcols = weight_to_cols(weight.detach(), geo).to(gemm)  # (Cout, K)
        cout = weight.shape[0]
        b = bias.detach().to(gemm) if bias is not None else None
        # Returned as is, not as a view: callers may modify it in place.
        if nhwc:
            result = torch.empty(
                (geo.b, cout, geo.ho, geo.wo),
                dtype=gemm,
                device=x.device,
                memory_format=torch.channels_last,
            )
            rows = result.permute(0, 2, 3, 1).view(-1, cout)
            fused = FUSED_BF16_FORWARD and x_s.dtype == wcols.dtype == torch.bfloat16
            lib = load_native() if fused else None
            off, msk = flat_positions(offset), flat_positions(mask)
            if lib is None or not fused_forward_bf16(lib, x_s, off, msk, wcols, b, geo, rows):
                sampler = make_sampler(x_s, offset, mask, geo, allow_native, gemm_dtype)
                _gemm_nhwc(sampler, wcols, b, rows)
        else:
            result = x.new_empty(geo.b, cout, geo.ho, geo.wo, dtype=gemm)
            sampler = make_sampler(x_s, offset, mask, geo, allow_native, gemm_dtype)
            _gemm_nchw(sampler, wcols, b, result.view(geo.b, cout, geo.hwo))
        ctx.save_for_backward(x_s, offset, mask, weight)
        ctx.geo = geo
        ctx.has_bias = bias is not None
        ctx.allow_native = allow_native
        ctx.gemm = gemm
        return result

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: Any, grad_out: torch.Tensor
    ) -> tuple[torch.Tensor | None, ...]:
        x_s, offset, mask, weight = ctx.saved_tensors
        geo: Geom = ctx.geo
        if _fused_bf16(ctx, x_s):
            return _backward_nhwc_bf16(ctx, grad_out, x_s, offset, mask, weight)
        low = ctx.gemm != weight.dtype  # a low-precision GEMM: col2im float32 all the same
        wide = torch.float32 if low else x_s.dtype
        # NHWC input: a group-major copy (widened, as bf16 activations need)
        x_gm = group_major(x_s, geo, wide) if x_s.dim() == 4 else x_s.to(wide)
        offset, mask = per_sample_dense(offset), mask.contiguous()
        need_x, need_off, need_mask, need_w, need_b = ctx.needs_input_grad[:5]
        cout, gemm = weight.shape[0], ctx.gemm
        # (B, Cout, Ho*Wo) in the GEMMs' dtype; they read it transposed
        gout = grad_out.reshape(geo.b, cout, geo.hwo).to(gemm)
        grad_bias = gout.sum((0, 2), dtype=weight.dtype) if need_b and ctx.has_bias else None
        gw = weight.new_zeros(cout, geo.k) if need_w else None
        gx = torch.zeros_like(x_gm) if need_x else None
        goff = offset.new_empty(offset.shape) if need_off else None  # contiguous
        gmask = torch.empty_like(mask) if need_mask else None
        need_cols = gx is not None or goff is not None or gmask is not None
        if gw is None and not need_cols:
            return None, None, None, None, grad_bias, None, None, None
        sampler = make_sampler(x_gm, offset, mask, geo, ctx.allow_native, gemm if low else None)
        wcols = weight_to_cols(weight, geo).to(gemm)  # (Cout, K)
        for i, ch in enumerate(sampler.chunks):
            one = ch.b1 == ch.b0 + 1
            go = gout[ch.b0, :, ch.p0 : ch.p1] if one else gout[ch.b0 : ch.b1]
            if gw is not None:
                cols = sampler.im2col(i).to(gemm)  # recomputed, not kept
                if one and gemm == gw.dtype:
                    gw.addmm_(go, cols)
                elif one:  # a low-precision GEMM, summed in float32
                    gw += torch.mm(go, cols)
                else:
                    gw += torch.bmm(go, cols.view(ch.b1 - ch.b0, geo.hwo, geo.k)).sum(
                        0, dtype=gw.dtype
                    )
            if need_cols:
                # col2im reads float32 columns; a low-precision GEMM is widened into them
                gcols = workspace("gcols", ch.rows, geo.k, x_gm)
                if gemm != gcols.dtype:
                    gc = torch.mm(go.t(), wcols) if one else torch.matmul(go.transpose(1, 2), wcols)
                    gcols.view_as(gc).copy_(gc)
                elif one:
                    torch.mm(go.t(), wcols, out=gcols)
                else:
                    gc3 = gcols.view(ch.b1 - ch.b0, geo.hwo, geo.k)
                    torch.matmul(go.transpose(1, 2), wcols, out=gc3)
                sampler.col2im(i, gcols, gx, goff, gmask)
        grad_x = None
        if gx is not None:  # (B, G, H, W, Cg) -> (B, C, H, W), in the input's dtype
            grad_x = gx.permute(0, 1, 4, 2, 3).reshape(geo.b, geo.c, geo.h, geo.w)
            grad_x = grad_x.to(ctx.x_dtype)
        grad_w = cols_to_weight(gw, geo) if gw is not None else None
        return grad_x, goff, gmask, grad_w, grad_bias, None, None, None


def _fused_bf16(ctx: Any, x: torch.Tensor) -> bool:
    """Whether the fused native backward pass takes this call: bf16 NHWC input, bf16 GEMMs."""
    bf16 = x.dtype == ctx.gemm == torch.bfloat16
    if not (FUSED_BF16_BACKWARD and ctx.allow_native and x.dim() == 4 and bf16):
        return False
    geo: Geom = ctx.geo
    return native_available() and x.stride(3) == geo.c and geo.h * geo.w * geo.c < 2**31


def _backward_nhwc_bf16(
    ctx: Any,
    grad_out: torch.Tensor,
    x: torch.Tensor,
    offset: torch.Tensor,
    mask: torch.Tensor,
    weight: torch.Tensor,
) -> tuple[torch.Tensor | None, ...]:
    """The backward pass of bf16 NHWC input in bf16 GEMMs, chunk by chunk, NHWC rows
    (or, on AVX512-BF16, in one native pass with the GEMMs inside, tile by tile:
    :meth:`~zsm.ops.dcn.native_sampler.NativeSampler.backward_bf16_fused`).

    ``grad_columns = grad_out_rows @ W`` (bf16), then one native pass over the
    corners that samples the columns again (for ``grad_W += grad_out_rows^T @
    columns``), scatters ``grad_columns`` into a float32 NHWC ``grad_x`` and
    derives the offset and mask gradients: the bf16 input and ``grad_columns``
    are read as they are, no float32 copy of either.
    """
    geo: Geom = ctx.geo
    need_x, need_off, need_mask, need_w, need_b = ctx.needs_input_grad[:5]
    cout, gemm = weight.shape[0], ctx.gemm
    lib = load_native()
    assert lib is not None
    gout = grad_out.permute(0, 2, 3, 1).reshape(-1, cout).to(gemm)  # (B*Ho*Wo, Cout)
    # summed chunk by chunk (in cache; one float32 copy of gout would cost a pass more)
    grad_bias = weight.new_zeros(cout) if need_b and ctx.has_bias else None
    gw = weight.new_zeros(cout, geo.k) if need_w else None
    f32 = torch.float32
    gx = None  # float32 NHWC, kept between calls (fresh, its pages would fault in again)
    if need_x:
        gx = workspace("gx", geo.b * geo.h * geo.w, geo.c, x, f32).zero_()
        gx = gx.view(geo.b, geo.h, geo.w, geo.c)
    # NCHW, contiguous: what a slice's backward (offset and mask are slices of the
    # offset conv's output) and a leaf that is one expect; NHWC here costs a copy there
    goff = offset.new_empty(offset.shape, dtype=f32) if need_off else None
    gmask = mask.new_empty(mask.shape, dtype=f32) if need_mask else None
    need_cols = gx is not None or goff is not None or gmask is not None
    if gw is not None or need_cols or grad_bias is not None:
        offset, mask = flat_positions(offset), flat_positions(mask)
        sampler = NativeSampler(lib, x, offset, mask, geo, gemm)
        wcols = weight_to_cols(weight, geo).to(gemm)  # (Cout, K)
        fused = FUSED_BF16_BACKWARD_GEMMS and need_cols
        if fused and sampler.backward_bf16_fused(gout, wcols, gx, goff, gmask, gw):
            if grad_bias is not None:
                grad_bias += gout.sum(0, dtype=grad_bias.dtype)
            sampler.chunks = []  # all done
        for i, ch in enumerate(sampler.chunks):
            go, cols = gout[ch.qa : ch.qb], None
            if grad_bias is not None:
                grad_bias += go.sum(0, dtype=grad_bias.dtype)
            if need_cols:
                gcols = torch.mm(go, wcols, out=workspace("gcols", ch.rows, geo.k, x, gemm))
                cols = workspace("cols", ch.rows, geo.k, x, gemm) if gw is not None else None
                sampler.backward_bf16(i, gcols, cols, gx, goff, gmask)
            elif gw is not None:
                cols = sampler.im2col(i)
            if gw is not None and cols is not None:
                gw += torch.mm(go.t(), cols)  # a bf16 GEMM, summed in float32
    grad_x = gx.permute(0, 3, 1, 2).to(ctx.x_dtype) if gx is not None else None
    grad_w = cols_to_weight(gw, geo) if gw is not None else None
    return grad_x, goff, gmask, grad_w, grad_bias, None, None, None


def deform_conv2d_cpu(
    x: torch.Tensor,
    offset: torch.Tensor,
    mask: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    padding: int,
    *,
    native: bool = True,
    gemm_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Modulated deformable conv (stride 1, dilation 1), torchvision's semantics and layout.

    ``native=False`` forces the pure-PyTorch sampling even where the compiled
    kernel is available (for comparisons, and as its reference).
    ``gemm_dtype`` (bfloat16): the GEMMs of both passes in it, the output too;
    the sampling and col2im stay float32, the gradients of the weight are
    summed in it. ``x`` may then be float32 or in ``gemm_dtype`` (activations
    under autocast): the native kernel samples bf16 ``x`` as it is, in float32,
    into bf16 columns; elsewhere it is widened first. Without ``gemm_dtype``
    everything runs in ``x``'s dtype.
    """
    if weight.shape[1] != x.shape[1]:  # grouped weights: not used by the model, delegate
        from torchvision.ops import deform_conv2d

        return deform_conv2d(x, offset, weight, bias, padding=padding, mask=mask)
    return _ModulatedDeformConv.apply(x, offset, mask, weight, bias, padding, native, gemm_dtype)


def _pure(
    x: torch.Tensor,
    offset: torch.Tensor,
    mask: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    padding: int,
    *,
    gemm_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    return deform_conv2d_cpu(
        x, offset, mask, weight, bias, padding, native=False, gemm_dtype=gemm_dtype
    )


register_backend(
    "cpu", deform_conv2d_cpu, devices=("cpu",), priority=20, gemm_dtypes=(torch.bfloat16,)
)
register_backend("cpu-pure", _pure, devices=("cpu",), priority=10, gemm_dtypes=(torch.bfloat16,))
