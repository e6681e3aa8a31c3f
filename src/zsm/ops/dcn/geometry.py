"""Sizes, memory layouts and chunks of one deformable-conv call (stride 1, dilation 1)."""

from __future__ import annotations

import threading
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Geom:
    """Sizes of one call (stride 1, dilation 1)."""

    b: int
    c: int
    h: int
    w: int
    g: int  # offset groups
    kh: int
    kw: int
    pad: int
    ho: int
    wo: int

    @property
    def cg(self) -> int:
        return self.c // self.g

    @property
    def kk(self) -> int:
        return self.kh * self.kw

    @property
    def hwo(self) -> int:
        return self.ho * self.wo

    @property
    def k(self) -> int:
        """Columns per output position: C * kh * kw."""
        return self.c * self.kk


def geometry(
    x: torch.Tensor, offset: torch.Tensor, mask: torch.Tensor, weight: torch.Tensor, padding: int
) -> Geom:
    b, c, h, w = x.shape
    _, cin_w, kh, kw = weight.shape
    ho, wo = h + 2 * padding - kh + 1, w + 2 * padding - kw + 1
    if cin_w != c:
        raise ValueError(f"weight expects {cin_w} input channels, input has {c}")
    if ho < 1 or wo < 1:
        raise ValueError(f"kernel {kh}x{kw} with padding {padding} does not fit a {h}x{w} input")
    kk = kh * kw
    if offset.shape[1] % (2 * kk) or offset.shape[1] == 0:
        raise ValueError(f"offset channels ({offset.shape[1]}) must be a multiple of 2*{kk}")
    g = offset.shape[1] // (2 * kk)
    if c % g:
        raise ValueError(f"input channels ({c}) must be divisible by offset groups ({g})")
    if tuple(offset.shape) != (b, 2 * g * kk, ho, wo):
        raise ValueError(f"offset shape {tuple(offset.shape)} != {(b, 2 * g * kk, ho, wo)}")
    if tuple(mask.shape) != (b, g * kk, ho, wo):
        raise ValueError(f"mask shape {tuple(mask.shape)} != {(b, g * kk, ho, wo)}")
    return Geom(b, c, h, w, g, kh, kw, padding, ho, wo)


# ---------------------------------------------------------------------------
# layouts


def group_major(x: torch.Tensor, geo: Geom, dtype: torch.dtype | None = None) -> torch.Tensor:
    """(B, C, H, W) -> (B, G, H, W, Cg): each offset group's image, channels last, in one block.

    ``dtype``: converted to it in the same copy.
    """
    t = x.reshape(geo.b, geo.g, geo.cg, geo.h, geo.w).permute(0, 1, 3, 4, 2)
    if dtype is None or dtype == x.dtype:
        return t.contiguous()
    return torch.empty(t.shape, dtype=dtype, device=x.device).copy_(t)


def per_sample_dense(t: torch.Tensor) -> torch.Tensor:
    """``t`` itself if each sample is one dense block (any batch stride), else a contiguous copy.

    The offsets usually are the first 2/3 of the offset conv's output: a view
    the kernel reads in place instead of copying.
    """
    if t.shape[0] == 0 or not t[0].is_contiguous():
        return t.contiguous()
    if t.shape[0] > 1 and t.stride(0) < t[0].numel():
        return t.contiguous()
    return t


def channels_last(x: torch.Tensor) -> bool:
    """Whether each image of (B, C, H, W) ``x`` is dense NHWC memory (any batch stride), C > 1.

    A frame of a channels-last sequence, ``seq[:, k]``, is such a view.
    """
    _, c, h, w = x.shape
    return (
        c > 1
        and x.stride(1) == 1
        and (w == 1 or x.stride(3) == c)
        and (h == 1 or x.stride(2) == w * c)
    )


def image_strides(x: torch.Tensor, geo: Geom) -> tuple[int, int, int]:
    """(batch, group, pixel) strides of the sampled input, as the kernel reads it.

    Group-major (B, G, H, W, Cg) or NHWC (B, C, H, W) in channels-last memory:
    either way a group's ``Cg`` channels of a pixel are adjacent.
    """
    if x.dim() == 5:
        return x.stride(0), x.stride(1), x.stride(3)
    return x.stride(0), geo.cg, x.stride(3)


def position_strides(t: torch.Tensor) -> tuple[int, int, int] | None:
    """(batch, channel, position) strides of (B, C, Ho, Wo) offsets or mask, if positions are flat.

    Positions are flat when row ``y`` starts ``Wo`` positions after row ``y-1``
    (NCHW, NHWC, and channel slices of either); else ``None``.
    """
    if t.shape[3] > 1 and t.shape[2] > 1 and t.stride(2) != t.shape[3] * t.stride(3):
        return None
    return t.stride(0), t.stride(1), t.stride(3)


def flat_positions(t: torch.Tensor) -> torch.Tensor:
    """``t`` itself if :func:`position_strides` can describe it, else a contiguous copy."""
    return t if position_strides(t) is not None else t.contiguous()


def weight_to_cols(weight: torch.Tensor, geo: Geom) -> torch.Tensor:
    """(Cout, C, kh, kw) -> (Cout, K) with K ordered (group, kernel point, channel in group)."""
    cout = weight.shape[0]
    return weight.reshape(cout, geo.g, geo.cg, geo.kk).transpose(2, 3).reshape(cout, geo.k)


def cols_to_weight(wcols: torch.Tensor, geo: Geom) -> torch.Tensor:
    """Inverse of :func:`weight_to_cols`."""
    cout = wcols.shape[0]
    return (
        wcols.reshape(cout, geo.g, geo.kk, geo.cg)
        .transpose(2, 3)
        .reshape(cout, geo.c, geo.kh, geo.kw)
    )


# ---------------------------------------------------------------------------
# chunks


@dataclass(frozen=True)
class Chunk:
    """Rows ``[qa, qb)`` of the column matrix: positions ``[p0, p1)`` of images ``[b0, b1)``.

    Either part of one image (``b1 == b0 + 1``) or whole images, so that the
    GEMM can write straight into the (B, Cout, Ho*Wo) output.
    """

    b0: int
    b1: int
    p0: int
    p1: int
    hwo: int

    @property
    def qa(self) -> int:
        return self.b0 * self.hwo + self.p0

    @property
    def qb(self) -> int:
        return (self.b1 - 1) * self.hwo + self.p1

    @property
    def rows(self) -> int:
        return self.qb - self.qa


def plan_chunks(geo: Geom, rows_per_chunk: int, tile: int) -> list[Chunk]:
    """Chunks of about ``rows_per_chunk`` rows, in whole tiles, never splitting a tile."""
    hwo = geo.hwo
    if hwo >= rows_per_chunk:  # large images: runs of tiles within an image
        step = max(tile, rows_per_chunk // tile * tile)
        return [
            Chunk(b, b + 1, p, min(hwo, p + step), hwo)
            for b in range(geo.b)
            for p in range(0, hwo, step)
        ]
    per = max(1, rows_per_chunk // hwo)  # small images: several whole images
    return [Chunk(b, min(geo.b, b + per), 0, hwo, hwo) for b in range(0, geo.b, per)]


_scratch = threading.local()


def workspace(
    name: str, rows: int, cols: int, like: torch.Tensor, dtype: torch.dtype | None = None
) -> torch.Tensor:
    """A (rows, cols) scratch matrix kept between calls (per thread, name and dtype).

    Fresh multi-megabyte tensors cost page faults on every call (about as
    much as sampling them, on the VMs measured); the chunk buffers are reused.
    ``dtype``: the matrix's (default ``like``'s); one buffer per dtype, so that
    float32 and bfloat16 calls in turn do not reallocate.
    """
    dtype = dtype or like.dtype
    key = f"{name}_{str(dtype).removeprefix('torch.')}"
    need = rows * cols
    buf = getattr(_scratch, key, None)
    if buf is None or buf.numel() < need or buf.device != like.device:
        buf = like.new_empty(need, dtype=dtype)
        setattr(_scratch, key, buf)
    return buf[:need].view(rows, cols)
