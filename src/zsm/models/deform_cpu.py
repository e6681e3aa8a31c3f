"""Fast CPU backend for the modulated deformable conv (DCNv2).

torchvision's CPU kernel builds its im2col matrix one input channel at a
time, recomputing the sampling position and bilinear weights for every
channel; on a 2-core machine that is ~30x a dense conv of the same shape.
Here the work is organised the way a dense conv's is:

1. **Sampling** (im2col). The input is laid out (B, G, H, W, Cg): the ``Cg``
   channels of an offset group are adjacent, and one group's image is one
   dense block (cache lines hold no other group's data). NHWC input (CPU
   inference, :mod:`zsm.engine`) already has a group's channels
   adjacent and is read in place, its NHWC offsets and mask transposed tile
   by tile in registers. For each output position,
   group and kernel point, the four bilinear corners and their weights (mask
   folded in) are computed *once* and applied to ``Cg`` contiguous floats.
   The result is the column matrix ``(B*Ho*Wo, K)``, ``K = C*kh*kw`` ordered
   (group, kernel point, channel in group).
2. **One GEMM** per chunk of rows with the weight permuted to that order,
   written straight into the NCHW output (NHWC input: ``columns @ W^T``,
   the NHWC output's rows). Chunks of a few MB keep the columns
   in cache between the sampling and the GEMM and bound the extra memory.

The backward pass is hand-written: ``grad_W += grad_out^T @ columns`` (the
columns are sampled again rather than kept, as torchvision does, so a DCN
holds no extra activation memory), ``grad_columns = grad_out @ W``, and a
col2im pass that scatters ``grad_columns`` back to the input and derives the
offset and mask gradients from the same four corners.

Steps 1 and col2im have two implementations:

* **native**: a small C kernel (source below), compiled on first use with the
  system C compiler into ``~/.cache/zsm/kernels`` (``$ZSM_CACHE_DIR``) and
  called through :mod:`ctypes`; OpenMP when the compiler has it (the same
  ``libgomp`` torch has loaded, so one thread pool), else one Python thread
  per core (ctypes releases the GIL). Optional: any failure (no compiler, an
  odd platform) falls back to the pure path; ``ZSM_DCN_NATIVE=0`` disables it.
* **pure**: PyTorch ops only. Corners and weights are elementwise ops;
  sampling is one :func:`torch.nn.functional.embedding_bag` (a fused
  gather-multiply-add over rows of ``Cg`` floats), whose autograd supplies
  the scatter and the per-corner dot products. Also the path for float64
  (``gradcheck``) and other dtypes.

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

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.nn import functional as F

from zsm.models.deform import register_backend

log = logging.getLogger(__name__)

_TILE = 64  # output positions per tile of the native kernel; TILE in _C_SOURCE
# Column-matrix bytes per chunk: sampled, multiplied and (backward) scattered
# while in L2 (1 MB measured best on a 1 MB-L2 core: 17% faster than 4 MB);
# also bounds the extra memory of a call. With several threads every chunk
# costs a few fork/joins, and on a machine shared with other work each can
# wait a scheduler slice (ms) for a busy core: measured 2.3x a dense conv with
# one 132 MB chunk, 9.9x with 4 MB ones. So chunks are larger then, trading
# cache locality for far fewer joins.
_CHUNK_BYTES = 1 << 20
# NHWC input (the GEMM writes output rows, columns @ W^T): 2 MB measured 3-6% faster
# than 1 MB and 4 MB for the whole deformable conv (compact and official shapes).
_CHUNK_BYTES_NHWC = 2 << 20
_CHUNK_BYTES_THREADED = 64 << 20
# Sampling points per chunk of the pure path: bounds its temporaries (~100 B a point).
_PURE_CHUNK_POINTS = 1 << 19

# ---------------------------------------------------------------------------
# geometry and chunks


@dataclass(frozen=True)
class _Geom:
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


def _geometry(
    x: torch.Tensor, offset: torch.Tensor, mask: torch.Tensor, weight: torch.Tensor, padding: int
) -> _Geom:
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
    return _Geom(b, c, h, w, g, kh, kw, padding, ho, wo)


def _group_major(x: torch.Tensor, geo: _Geom) -> torch.Tensor:
    """(B, C, H, W) -> (B, G, H, W, Cg): each offset group's image, channels last, in one block."""
    return x.reshape(geo.b, geo.g, geo.cg, geo.h, geo.w).permute(0, 1, 3, 4, 2).contiguous()


def _per_sample_dense(t: torch.Tensor) -> torch.Tensor:
    """``t`` itself if each sample is one dense block (any batch stride), else a contiguous copy.

    The offsets usually are the first 2/3 of the offset conv's output: a view
    the kernel reads in place instead of copying.
    """
    if t.shape[0] == 0 or not t[0].is_contiguous():
        return t.contiguous()
    if t.shape[0] > 1 and t.stride(0) < t[0].numel():
        return t.contiguous()
    return t


def _weight_to_cols(weight: torch.Tensor, geo: _Geom) -> torch.Tensor:
    """(Cout, C, kh, kw) -> (Cout, K) with K ordered (group, kernel point, channel in group)."""
    cout = weight.shape[0]
    return weight.reshape(cout, geo.g, geo.cg, geo.kk).transpose(2, 3).reshape(cout, geo.k)


def _cols_to_weight(wcols: torch.Tensor, geo: _Geom) -> torch.Tensor:
    """Inverse of :func:`_weight_to_cols`."""
    cout = wcols.shape[0]
    return (
        wcols.reshape(cout, geo.g, geo.kk, geo.cg)
        .transpose(2, 3)
        .reshape(cout, geo.c, geo.kh, geo.kw)
    )


@dataclass(frozen=True)
class _Chunk:
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


def _plan_chunks(geo: _Geom, rows_per_chunk: int, tile: int) -> list[_Chunk]:
    """Chunks of about ``rows_per_chunk`` rows, in whole tiles, never splitting a tile."""
    hwo = geo.hwo
    if hwo >= rows_per_chunk:  # large images: runs of tiles within an image
        step = max(tile, rows_per_chunk // tile * tile)
        return [
            _Chunk(b, b + 1, p, min(hwo, p + step), hwo)
            for b in range(geo.b)
            for p in range(0, hwo, step)
        ]
    per = max(1, rows_per_chunk // hwo)  # small images: several whole images
    return [_Chunk(b, min(geo.b, b + per), 0, hwo, hwo) for b in range(0, geo.b, per)]


_scratch = threading.local()


def _workspace(name: str, rows: int, cols: int, like: torch.Tensor) -> torch.Tensor:
    """A (rows, cols) scratch matrix kept between calls (per thread).

    Fresh multi-megabyte tensors cost page faults on every call (about as
    much as sampling them, on the VMs measured); the chunk buffers are reused.
    """
    need = rows * cols
    buf = getattr(_scratch, name, None)
    if buf is None or buf.numel() < need or buf.dtype != like.dtype or buf.device != like.device:
        buf = like.new_empty(need)
        setattr(_scratch, name, buf)
    return buf[:need].view(rows, cols)


# ---------------------------------------------------------------------------
# native kernel (optional)

_C_SOURCE = r"""
/* zsm: modulated deformable conv (DCNv2) sampling kernels, see deform_cpu.py. */
#include <math.h>
#include <stdint.h>
#include <string.h>
#if defined(__AVX__)
#include <immintrin.h>
#endif
#if defined(_OPENMP)
#include <omp.h>
#endif

typedef int64_t i64;
typedef int32_t i32;
/* 8 floats at any 4-byte alignment (gcc/clang vector extension): one AVX register. */
typedef float v8f __attribute__((vector_size(32), aligned(4)));

#define TILE 64 /* output positions per tile; TILE in deform_cpu.py must match */

/* Per-tile scratch: corners and weights of TILE sampling points. */
typedef struct {
    float by[TILE], bx[TILE];               /* integer base positions h - pad, w - pad */
    i32 o[4][TILE];                         /* corner element offsets 00, 01, 10, 11 */
    float w[4][TILE];                       /* bilinear weight x mask, 0 outside */
    float v[4][TILE];                       /* 1 if the corner is inside the image */
    float ly[TILE], lx[TILE];               /* fractions of the position */
    float s[4][TILE];                       /* backward: grad_col . corner */
} Tile;

/* Integer base positions (h - pad, w - pad) of output positions p0 .. p0+n-1, as floats. */
static void tile_base(Tile *t, i64 p0, i64 n, i64 Wo, i64 pad) {
    i64 h = p0 / Wo, w = p0 - h * Wo;
    for (i64 p = 0; p < n; ++p) {
        t->by[p] = (float)(h - pad);
        t->bx[p] = (float)(w - pad);
        if (++w == Wo) {
            w = 0;
            ++h;
        }
    }
}

/* Corners of the tile's n sampling points for kernel point (fi, fj) of one
   group, vectorised over the points.  The position is (base + i) + offset,
   rounded as torchvision rounds it.  Corners are judged one by one, as
   torchvision does: a corner outside the image gets weight 0 (and v = 0) and
   an offset clamped into the image; NaN or infinite positions get weight 0
   everywhere.  Corner offsets are in elements of one group's image, whose pixels
   are C floats apart (Cg in the group-major layout, all channels in NHWC). */
static inline __attribute__((always_inline)) void
tile_corners(Tile *restrict t, i64 n, const float *restrict oy, const float *restrict ox,
             const float *restrict mk, float fi, float fj, i64 H, i64 W, i64 C, const int full) {
    const float hm1 = (float)(H - 1), wm1 = (float)(W - 1);
    const i32 Wi = (i32)W, Ci = (i32)C;
    for (i64 p = 0; p < n; ++p) {
        const float y = (t->by[p] + fi) + oy[p], x = (t->bx[p] + fj) + ox[p];
        const float fy = floorf(y), fx = floorf(x);
        const float ly = y - fy, lx = x - fx;
        const int vy0 = (fy >= 0.0f) & (fy <= hm1), vy1 = (fy >= -1.0f) & (fy <= hm1 - 1.0f);
        const int vx0 = (fx >= 0.0f) & (fx <= wm1), vx1 = (fx >= -1.0f) & (fx <= wm1 - 1.0f);
        /* clamp before converting (NaN -> 0) */
        float cy0 = fy >= 0.0f ? fy : 0.0f, cy1 = fy + 1.0f >= 0.0f ? fy + 1.0f : 0.0f;
        float cx0 = fx >= 0.0f ? fx : 0.0f, cx1 = fx + 1.0f >= 0.0f ? fx + 1.0f : 0.0f;
        cy0 = cy0 <= hm1 ? cy0 : hm1;
        cy1 = cy1 <= hm1 ? cy1 : hm1;
        cx0 = cx0 <= wm1 ? cx0 : wm1;
        cx1 = cx1 <= wm1 ? cx1 : wm1;
        const i32 r0 = (i32)cy0 * Wi, r1 = (i32)cy1 * Wi, c0 = (i32)cx0, c1 = (i32)cx1;
        t->o[0][p] = (r0 + c0) * Ci;
        t->o[1][p] = (r0 + c1) * Ci;
        t->o[2][p] = (r1 + c0) * Ci;
        t->o[3][p] = (r1 + c1) * Ci;
        const int in = (vy0 | vy1) & (vx0 | vx1);
        const float m = mk[p], hy = 1.0f - ly, hx = 1.0f - lx;
        t->w[0][p] = (vy0 & vx0) ? m * (hy * hx) : 0.0f;
        t->w[1][p] = (vy0 & vx1) ? m * (hy * lx) : 0.0f;
        t->w[2][p] = (vy1 & vx0) ? m * (ly * hx) : 0.0f;
        t->w[3][p] = (vy1 & vx1) ? m * (ly * lx) : 0.0f;
        if (!full) continue; /* the rest is for the backward pass */
        t->v[0][p] = (vy0 & vx0) ? 1.0f : 0.0f;
        t->v[1][p] = (vy0 & vx1) ? 1.0f : 0.0f;
        t->v[2][p] = (vy1 & vx0) ? 1.0f : 0.0f;
        t->v[3][p] = (vy1 & vx1) ? 1.0f : 0.0f;
        t->ly[p] = in ? ly : 0.0f;
        t->lx[p] = in ? lx : 0.0f;
    }
}

/* n rows of nc channels (element (p, c) at src[p * ps + c * cs]) -> dst[c * TILE + p]:
   a tile's offsets or mask made contiguous per channel, as tile_corners reads them. */
static void tile_gather(float *restrict dst, const float *restrict src, i64 n, i64 nc, i64 ps,
                        i64 cs) {
    i64 p = 0;
#if defined(__AVX__)
    if (cs == 1) { /* NHWC: 8x8 blocks, transposed in registers */
        for (; p + 8 <= n; p += 8) {
            const float *s = src + p * ps;
            i64 c = 0;
            for (; c + 8 <= nc; c += 8) {
                __m256 r[8], t[8], u[8];
                for (int k = 0; k < 8; ++k) r[k] = _mm256_loadu_ps(s + k * ps + c);
                for (int k = 0; k < 8; k += 2) {
                    t[k] = _mm256_unpacklo_ps(r[k], r[k + 1]);
                    t[k + 1] = _mm256_unpackhi_ps(r[k], r[k + 1]);
                }
                for (int k = 0; k < 8; k += 4) {
                    u[k] = _mm256_shuffle_ps(t[k], t[k + 2], 0x44);
                    u[k + 1] = _mm256_shuffle_ps(t[k], t[k + 2], 0xEE);
                    u[k + 2] = _mm256_shuffle_ps(t[k + 1], t[k + 3], 0x44);
                    u[k + 3] = _mm256_shuffle_ps(t[k + 1], t[k + 3], 0xEE);
                }
                for (int k = 0; k < 4; ++k) {
                    _mm256_storeu_ps(dst + (c + k) * TILE + p,
                                     _mm256_permute2f128_ps(u[k], u[k + 4], 0x20));
                    _mm256_storeu_ps(dst + (c + k + 4) * TILE + p,
                                     _mm256_permute2f128_ps(u[k], u[k + 4], 0x31));
                }
            }
            for (; c < nc; ++c)
                for (int k = 0; k < 8; ++k) dst[c * TILE + p + k] = s[k * ps + c];
        }
    }
#endif
    for (; p < n; ++p)
        for (i64 c = 0; c < nc; ++c) dst[c * TILE + p] = src[p * ps + c * cs];
}

/* Columns of tiles [t0, t1).  Tile t covers output positions from
   (t % tiles_per_image) * TILE of image t / tiles_per_image, i.e. rows
   q = b * Ho * Wo + p of the column matrix; cols holds the rows from q_base on.
   x: element (b, channel c of group g, y, x) at b*xsb + g*xsg + (y*W + x)*xsp + c,
   i.e. each group's Cg channels adjacent: (B, G, H, W, Cg) or NHWC.
   offset (B, 2*G*KK, Ho, Wo) and mask (B, G*KK, Ho, Wo): element (b, c, position p)
   at b*sb + c*sc + p*sp (NCHW or NHWC); cols: (rows, G, KK, Cg), mask applied. */
void zsm_dcn_im2col(const float *x, const float *offset, const float *mask, float *cols,
                    i64 H, i64 W, i64 C, i64 G, i64 kh, i64 kw, i64 pad, i64 Ho, i64 Wo,
                    i64 xsb, i64 xsg, i64 xsp, i64 osb, i64 osc, i64 osp, i64 msb, i64 msc,
                    i64 msp, i64 q_base, i64 t0, i64 t1, int nthreads) {
    const i64 Cg = C / G, KK = kh * kw, HWo = Ho * Wo, K = G * KK * Cg;
    const i64 ntiles = (HWo + TILE - 1) / TILE;
    const int gather_o = osp != 1, gather_m = msp != 1;
    (void)nthreads;
#pragma omp parallel for schedule(static) num_threads(nthreads) if (nthreads > 1)
    for (i64 t = t0; t < t1; ++t) {
        Tile tl;
        float obuf[gather_o ? 2 * G * KK * TILE : 1], mbuf[gather_m ? G * KK * TILE : 1];
        const i64 b = t / ntiles, p0 = (t - b * ntiles) * TILE;
        const i64 n = p0 + TILE < HWo ? TILE : HWo - p0;
        const float *ob = offset + b * osb + p0 * osp;
        const float *mb = mask + b * msb + p0 * msp;
        i64 oc = osc, mc = msc;
        if (gather_o) {
            tile_gather(obuf, ob, n, 2 * G * KK, osp, osc);
            ob = obuf;
            oc = TILE;
        }
        if (gather_m) {
            tile_gather(mbuf, mb, n, G * KK, msp, msc);
            mb = mbuf;
            mc = TILE;
        }
        float *cb = cols + (b * HWo + p0 - q_base) * K;
        tile_base(&tl, p0, n, Wo, pad);
        for (i64 g = 0; g < G; ++g) {
            const float *xg = x + b * xsb + g * xsg;
            for (i64 i = 0; i < kh; ++i) {
                for (i64 j = 0; j < kw; ++j) {
                    const i64 ch = g * KK + i * kw + j;
                    tile_corners(&tl, n, ob + 2 * ch * oc, ob + (2 * ch + 1) * oc, mb + ch * mc,
                                 (float)i, (float)j, H, W, xsp, 0);
                    float *o = cb + ch * Cg;
                    if (Cg == 8) { /* the common case: a row is one AVX register */
                        for (i64 p = 0; p < n; ++p, o += K)
                            *(v8f *)o = tl.w[0][p] * *(const v8f *)(xg + tl.o[0][p])
                                        + tl.w[1][p] * *(const v8f *)(xg + tl.o[1][p])
                                        + tl.w[2][p] * *(const v8f *)(xg + tl.o[2][p])
                                        + tl.w[3][p] * *(const v8f *)(xg + tl.o[3][p]);
                        continue;
                    }
                    for (i64 p = 0; p < n; ++p, o += K) {
                        const float a0 = tl.w[0][p], a1 = tl.w[1][p];
                        const float a2 = tl.w[2][p], a3 = tl.w[3][p];
                        const float *r0 = xg + tl.o[0][p], *r1 = xg + tl.o[1][p];
                        const float *r2 = xg + tl.o[2][p], *r3 = xg + tl.o[3][p];
                        i64 c = 0;
                        for (; c + 8 <= Cg; c += 8)
                            *(v8f *)(o + c) = a0 * *(const v8f *)(r0 + c)
                                              + a1 * *(const v8f *)(r1 + c)
                                              + a2 * *(const v8f *)(r2 + c)
                                              + a3 * *(const v8f *)(r3 + c);
                        for (; c < Cg; ++c)
                            o[c] = a0 * r0[c] + a1 * r1[c] + a2 * r2[c] + a3 * r3[c];
                    }
                }
            }
        }
    }
}

/* 1 if built with OpenMP: the kernels then split their loops over threads
   themselves, in the OpenMP runtime torch already uses (same soname). */
int zsm_dcn_openmp(void) {
#if defined(_OPENMP)
    return 1;
#else
    return 0;
#endif
}

/* s[0..3] = the sums of the 8 lanes of a0..a3. */
static inline void hsum4x8(v8f a0, v8f a1, v8f a2, v8f a3, float *s) {
#if defined(__AVX__)
    const __m256 t0 = _mm256_hadd_ps((__m256)a0, (__m256)a1);
    const __m256 t1 = _mm256_hadd_ps((__m256)a2, (__m256)a3);
    const __m256 t2 = _mm256_hadd_ps(t0, t1);
    _mm_storeu_ps(s, _mm_add_ps(_mm256_castps256_ps128(t2), _mm256_extractf128_ps(t2, 1)));
#else
    const v8f a[4] = {a0, a1, a2, a3};
    for (int t = 0; t < 4; ++t)
        s[t] = ((a[t][0] + a[t][1]) + (a[t][2] + a[t][3]))
               + ((a[t][4] + a[t][5]) + (a[t][6] + a[t][7]));
#endif
}

/* Backward of im2col for one tile of n points and one (group, kernel point):
   s[c][p] = grad_col . corner c (the gradient of the unmasked sample w.r.t.
   corner c's bilinear weight) if need_s; gx rows += weight * grad_col if gxg. */
static void tile_backward(Tile *restrict t, i64 n, const float *go, i64 K, i64 Cg,
                          const float *xg, float *gxg, int need_s) {
    for (i64 p = 0; p < n; ++p, go += K) {
        const i32 o0 = t->o[0][p], o1 = t->o[1][p], o2 = t->o[2][p], o3 = t->o[3][p];
        if (need_s) {
            float s[4] = {0.0f, 0.0f, 0.0f, 0.0f};
            i64 c = 0;
            if (Cg >= 8) {
                v8f a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0};
                for (; c + 8 <= Cg; c += 8) {
                    const v8f gv = *(const v8f *)(go + c);
                    a0 += gv * *(const v8f *)(xg + o0 + c);
                    a1 += gv * *(const v8f *)(xg + o1 + c);
                    a2 += gv * *(const v8f *)(xg + o2 + c);
                    a3 += gv * *(const v8f *)(xg + o3 + c);
                }
                hsum4x8(a0, a1, a2, a3, s);
            }
            for (; c < Cg; ++c) {
                s[0] += go[c] * xg[o0 + c];
                s[1] += go[c] * xg[o1 + c];
                s[2] += go[c] * xg[o2 + c];
                s[3] += go[c] * xg[o3 + c];
            }
            for (int k = 0; k < 4; ++k) t->s[k][p] = s[k];
        }
        if (gxg) {
            const i32 o[4] = {o0, o1, o2, o3};
            for (int k = 0; k < 4; ++k) {
                const float a = t->w[k][p];
                if (a == 0.0f) continue;
                float *dst = gxg + o[k];
                i64 c = 0;
                for (; c + 8 <= Cg; c += 8) *(v8f *)(dst + c) += a * *(const v8f *)(go + c);
                for (; c < Cg; ++c) dst[c] += a * go[c];
            }
        }
    }
}

/* Offset and mask gradients of a tile from s, vectorised over the points;
   corners outside the image count as 0. */
static void tile_offset_grads(const Tile *restrict t, i64 n, const float *restrict mk,
                              float *restrict gy, float *restrict gx, float *restrict gm) {
    for (i64 p = 0; p < n; ++p) {
        const float s0 = t->v[0][p] != 0.0f ? t->s[0][p] : 0.0f;
        const float s1 = t->v[1][p] != 0.0f ? t->s[1][p] : 0.0f;
        const float s2 = t->v[2][p] != 0.0f ? t->s[2][p] : 0.0f;
        const float s3 = t->v[3][p] != 0.0f ? t->s[3][p] : 0.0f;
        const float m = mk[p], fy = t->ly[p], fx = t->lx[p];
        const float hy = 1.0f - fy, hx = 1.0f - fx;
        gm[p] = hy * hx * s0 + hy * fx * s1 + fy * hx * s2 + fy * fx * s3;
        gy[p] = m * (hx * (s2 - s0) + fx * (s3 - s1));
        gx[p] = m * (hy * (s1 - s0) + fy * (s3 - s2));
    }
}

/* Backward of im2col for the rows [q0, q1) of the column matrix (gcols holds
   them from q0 on), part `part` of `nparts`: the parts split the offset
   groups (or, with fewer groups than parts, the images), so each touches only
   its own channels of gx and its own offset and mask channels, and parts run
   in parallel without races.  Tile by tile, a part handles all its groups
   before moving on, so the tile's rows of gcols are read while in cache.
   gx: like x, accumulated; goff, gmask: like offset and
   mask, written for the rows' positions.  Any of gx, goff, gmask may be NULL. */
static void col2im_part(const float *x, const float *offset, const float *mask,
                        const float *gcols, float *gx, float *goff, float *gmask, i64 H, i64 W,
                        i64 C, i64 G, i64 kh, i64 kw, i64 pad, i64 Ho, i64 Wo, i64 ostride,
                        i64 q0, i64 q1, int part, int nparts) {
    const i64 Cg = C / G, KK = kh * kw, HWo = Ho * Wo, K = G * KK * Cg;
    const int need_s = goff != 0 || gmask != 0;
    const i64 bfirst = q0 / HWo, bend = (q1 - 1) / HWo + 1;
    i64 glo = 0, ghi = G, blo = bfirst, bhi = bend;
    if (G >= nparts) {
        glo = G * part / nparts;
        ghi = G * (part + 1) / nparts;
    } else {
        blo = bfirst + (bend - bfirst) * part / nparts;
        bhi = bfirst + (bend - bfirst) * (part + 1) / nparts;
    }
    Tile tl;
    float gys[TILE], gxs[TILE], gms[TILE];
    for (i64 b = blo; b < bhi; ++b) {
        const i64 pa = (b * HWo > q0 ? b * HWo : q0) - b * HWo;
        const i64 pb = ((b + 1) * HWo < q1 ? (b + 1) * HWo : q1) - b * HWo;
        const float *ob = offset + b * ostride;
        const float *mb = mask + b * G * KK * HWo;
        for (i64 p0 = pa; p0 < pb; p0 += TILE) {
            const i64 n = p0 + TILE < pb ? TILE : pb - p0;
            tile_base(&tl, p0, n, Wo, pad);
            for (i64 g = glo; g < ghi; ++g) {
                const float *xg = x + (b * G + g) * H * W * Cg;
                float *gxg = gx ? gx + (b * G + g) * H * W * Cg : 0;
                const float *gq = gcols + (b * HWo + p0 - q0) * K + g * KK * Cg;
                for (i64 i = 0; i < kh; ++i) {
                    for (i64 j = 0; j < kw; ++j) {
                        const i64 k = i * kw + j, ch = g * KK + k;
                        const float *mk = mb + ch * HWo + p0;
                        tile_corners(&tl, n, ob + 2 * ch * HWo + p0,
                                     ob + (2 * ch + 1) * HWo + p0, mk, (float)i, (float)j, H, W,
                                     Cg, 1);
                        tile_backward(&tl, n, gq + k * Cg, K, Cg, xg, gxg, need_s);
                        if (!need_s) continue;
                        tile_offset_grads(&tl, n, mk, gys, gxs, gms);
                        const size_t bytes = (size_t)n * sizeof(float);
                        if (goff) {
                            memcpy(goff + (b * 2 * G * KK + 2 * ch) * HWo + p0, gys, bytes);
                            memcpy(goff + (b * 2 * G * KK + 2 * ch + 1) * HWo + p0, gxs, bytes);
                        }
                        if (gmask) memcpy(gmask + (b * G * KK + ch) * HWo + p0, gms, bytes);
                    }
                }
            }
        }
    }
}

/* nthreads > 1 (OpenMP builds): all nthreads parts in parallel; else part `part`. */
void zsm_dcn_col2im(const float *x, const float *offset, const float *mask, const float *gcols,
                    float *gx, float *goff, float *gmask, i64 H, i64 W, i64 C, i64 G, i64 kh,
                    i64 kw, i64 pad, i64 Ho, i64 Wo, i64 ostride, i64 q0, i64 q1, int part,
                    int nparts, int nthreads) {
#if defined(_OPENMP)
    if (nthreads > 1) {
#pragma omp parallel num_threads(nthreads)
        col2im_part(x, offset, mask, gcols, gx, goff, gmask, H, W, C, G, kh, kw, pad, Ho, Wo,
                    ostride, q0, q1, omp_get_thread_num(), omp_get_num_threads());
        return;
    }
#endif
    (void)nthreads;
    col2im_part(x, offset, mask, gcols, gx, goff, gmask, H, W, C, G, kh, kw, pad, Ho, Wo,
                ostride, q0, q1, part, nparts);
}
"""

_native_lock = threading.Lock()
_native_lib: ctypes.CDLL | None = None
_native_tried = False
_pool: ThreadPoolExecutor | None = None
_pool_size = 0


def _cache_dir() -> Path:
    """``$ZSM_CACHE_DIR/kernels``, else ``$XDG_CACHE_HOME/zsm/kernels`` (``~/.cache``)."""
    if os.environ.get("ZSM_CACHE_DIR"):
        return Path(os.environ["ZSM_CACHE_DIR"]) / "kernels"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "zsm" / "kernels"


def _cpu_signature() -> str:
    """What the compiled code depends on (-march=native): ISA flags where Linux tells them."""
    parts = [platform.machine(), platform.system()]
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                parts.append(line)
                break
    except OSError:
        pass
    return "\n".join(parts)


# -fno-trapping-math lets gcc vectorise floorf (no FP exceptions are used);
# results are IEEE as without it. Added when the compiler takes them:
# -march=native (AVX for the 8-float rows) and -fopenmp (libgomp.so.1, which
# resolves to the copy torch has already loaded, so both share one pool of
# threads instead of spinning against each other).
_CFLAGS = ("-O3", "-std=gnu99", "-fPIC", "-shared", "-fno-trapping-math")
_CFLAG_VARIANTS = (("-march=native", "-fopenmp"), ("-fopenmp",), ("-march=native",), ())


def _compile(path: Path) -> None:
    """Compile the kernel to ``path`` atomically (concurrent processes may race)."""
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if not cc:
        raise RuntimeError("no C compiler found")
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        src = Path(tmp) / "zsm_dcn.c"
        src.write_text(_C_SOURCE)
        out = Path(tmp) / path.name
        errors = []
        # Best first; a compiler that refuses an option gets the next variant.
        for extra in _CFLAG_VARIANTS:
            cmd = [cc, *_CFLAGS, *extra, str(src), "-o", str(out), "-lm"]
            res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
            if res.returncode == 0:
                os.replace(out, path)
                return
            errors.append(res.stderr.strip()[-500:])
        raise RuntimeError("C compiler failed: " + " | ".join(errors))


def _load_native() -> ctypes.CDLL | None:
    """The compiled kernel, building it on first use; ``None`` if unavailable or disabled."""
    global _native_lib, _native_tried
    if os.environ.get("ZSM_DCN_NATIVE", "1").strip().lower() in ("0", "false", "no", "off"):
        return None
    if _native_tried:
        return _native_lib
    with _native_lock:
        if _native_tried:
            return _native_lib
        try:
            text = _C_SOURCE + repr((_CFLAGS, _CFLAG_VARIANTS)) + _cpu_signature()
            key = hashlib.sha256(text.encode()).hexdigest()[:16]
            path = _cache_dir() / f"zsm_dcn_{key}.so"
            if not path.is_file():
                _compile(path)
            lib = ctypes.CDLL(str(path))
            ptr, i64, cint = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
            lib.zsm_dcn_im2col.argtypes = [ptr] * 4 + [i64] * 21 + [cint]
            lib.zsm_dcn_im2col.restype = None
            lib.zsm_dcn_col2im.argtypes = [ptr] * 7 + [i64] * 12 + [cint] * 3
            lib.zsm_dcn_col2im.restype = None
            lib.zsm_dcn_openmp.argtypes = []
            lib.zsm_dcn_openmp.restype = cint
            lib.openmp = bool(lib.zsm_dcn_openmp())
            _native_lib = lib
        except Exception as exc:  # any failure: fall back to the pure path
            log.info("native deformable-conv kernel unavailable (%s); using PyTorch ops", exc)
            _native_lib = None
        _native_tried = True
    return _native_lib


def native_available() -> bool:
    """Whether the compiled kernel is (or can be made) available here."""
    return _load_native() is not None


def _thread_pool(workers: int) -> ThreadPoolExecutor:
    """Worker threads for kernels built without OpenMP (created once, grown on demand)."""
    global _pool, _pool_size
    with _native_lock:
        if _pool is None or _pool_size < workers:
            _pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="zsm-dcn")
            _pool_size = workers
        return _pool


def _run_parallel(fn: Callable[..., None], args: tuple[Any, ...], start: int, stop: int) -> None:
    """Call the kernel ``fn(*args, lo, hi, nthreads)`` on ``range(start, stop)`` in parallel.

    An OpenMP build splits the range itself. Otherwise the range is cut into
    one piece per thread, run by plain Python threads (ctypes drops the GIL).
    """
    total = stop - start
    n = max(1, min(torch.get_num_threads(), total))
    lib = _native_lib
    if n == 1 or (lib is not None and lib.openmp):
        fn(*args, start, stop, n)
        return
    bounds = [start + total * i // n for i in range(n + 1)]
    pool = _thread_pool(n - 1)
    futures = [pool.submit(fn, *args, bounds[i], bounds[i + 1], 1) for i in range(1, n)]
    fn(*args, bounds[0], bounds[1], 1)
    for f in futures:
        f.result()


def _run_parts(fn: Callable[..., None], args: tuple[Any, ...]) -> None:
    """Call the kernel ``fn(*args, part, nparts, nthreads)`` for every part, in parallel."""
    n = max(1, torch.get_num_threads())
    lib = _native_lib
    if n == 1 or (lib is not None and lib.openmp):
        fn(*args, 0, 1, n)
        return
    pool = _thread_pool(n - 1)
    futures = [pool.submit(fn, *args, i, n, 1) for i in range(1, n)]
    fn(*args, 0, n, 1)
    for f in futures:
        f.result()


def _image_strides(x: torch.Tensor, geo: _Geom) -> tuple[int, int, int]:
    """(batch, group, pixel) strides of the sampled input, as the kernel reads it.

    Group-major (B, G, H, W, Cg) or NHWC (B, C, H, W) in channels-last memory:
    either way a group's ``Cg`` channels of a pixel are adjacent.
    """
    if x.dim() == 5:
        return x.stride(0), x.stride(1), x.stride(3)
    return x.stride(0), geo.cg, x.stride(3)


def _position_strides(t: torch.Tensor) -> tuple[int, int, int] | None:
    """(batch, channel, position) strides of (B, C, Ho, Wo) offsets or mask, if positions are flat.

    Positions are flat when row ``y`` starts ``Wo`` positions after row ``y-1``
    (NCHW, NHWC, and channel slices of either); else ``None``.
    """
    if t.shape[3] > 1 and t.shape[2] > 1 and t.stride(2) != t.shape[3] * t.stride(3):
        return None
    return t.stride(0), t.stride(1), t.stride(3)


def _flat_positions(t: torch.Tensor) -> torch.Tensor:
    """``t`` itself if :func:`_position_strides` can describe it, else a contiguous copy."""
    return t if _position_strides(t) is not None else t.contiguous()


def _channels_last(x: torch.Tensor) -> bool:
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


class _NativeSampler:
    """im2col / col2im by the compiled kernel.

    ``x``: group-major (B, G, H, W, Cg), or NHWC (im2col only). ``offset`` and
    ``mask`` in any layout :func:`_position_strides` describes (col2im: NCHW,
    per-sample dense, ``offset`` possibly batch-strided).
    """

    def __init__(
        self,
        lib: ctypes.CDLL,
        x: torch.Tensor,
        offset: torch.Tensor,
        mask: torch.Tensor,
        geo: _Geom,
    ) -> None:
        self.lib, self.x, self.offset, self.mask, self.geo = lib, x, offset, mask, geo
        self.ntiles = -(-geo.hwo // _TILE)
        size = _CHUNK_BYTES_NHWC if x.dim() == 4 else _CHUNK_BYTES
        if torch.get_num_threads() > 1:
            size = _CHUNK_BYTES_THREADED
        self.chunks = _plan_chunks(geo, max(1, size // (geo.k * 4)), _TILE)
        self.dims = (geo.h, geo.w, geo.c, geo.g, geo.kh, geo.kw, geo.pad, geo.ho, geo.wo)
        ostrides, mstrides = _position_strides(offset), _position_strides(mask)
        assert ostrides is not None and mstrides is not None
        self.strides = (*_image_strides(x, geo), *ostrides, *mstrides)
        self.ostride = offset.stride(0)

    def im2col(self, i: int) -> torch.Tensor:
        """Columns of chunk ``i``, (rows, K): a scratch buffer, overwritten by the next call."""
        ch = self.chunks[i]
        cols = _workspace("cols", ch.rows, self.geo.k, self.x)
        t0 = ch.b0 * self.ntiles + ch.p0 // _TILE
        t1 = (ch.b1 - 1) * self.ntiles + -(-ch.p1 // _TILE)
        ptrs = (self.x.data_ptr(), self.offset.data_ptr(), self.mask.data_ptr())
        args = (*ptrs, cols.data_ptr(), *self.dims, *self.strides, ch.qa)
        _run_parallel(self.lib.zsm_dcn_im2col, args, t0, t1)
        return cols

    def col2im(
        self,
        i: int,
        gcols: torch.Tensor,
        gx: torch.Tensor | None,
        goff: torch.Tensor | None,
        gmask: torch.Tensor | None,
    ) -> None:
        """Accumulate chunk ``i``'s input gradient into ``gx``; write its offset/mask gradients."""
        ch = self.chunks[i]
        ptrs = (self.x.data_ptr(), self.offset.data_ptr(), self.mask.data_ptr())
        outs = tuple(t.data_ptr() if t is not None else None for t in (gx, goff, gmask))
        args = (*ptrs, gcols.data_ptr(), *outs, *self.dims, self.ostride, ch.qa, ch.qb)
        _run_parts(self.lib.zsm_dcn_col2im, args)


# ---------------------------------------------------------------------------
# pure PyTorch path


@dataclass
class _Corners:
    """Bilinear corners of the sampling points of a batch slice, (n, Ho, Wo, G, KK[, 4])."""

    rows: torch.Tensor  # int64 row of each corner in the (B*G*H*W, Cg) table
    bil: torch.Tensor  # bilinear weight of each corner, 0 outside the image
    valid: torch.Tensor  # 1 where the corner is inside the image, else 0
    ly: torch.Tensor
    lx: torch.Tensor
    mask: torch.Tensor  # (n, Ho, Wo, G, KK)


def _pure_corners(
    offset: torch.Tensor, mask: torch.Tensor, geo: _Geom, b0: int, b1: int
) -> _Corners:
    n, dev, dt = b1 - b0, offset.device, offset.dtype
    off = offset[b0:b1].reshape(n, geo.g, geo.kk, 2, geo.ho, geo.wo).permute(0, 4, 5, 1, 2, 3)
    m = mask[b0:b1].reshape(n, geo.g, geo.kk, geo.ho, geo.wo).permute(0, 3, 4, 1, 2)
    ki = torch.arange(geo.kh, device=dev).repeat_interleave(geo.kw)
    kj = torch.arange(geo.kw, device=dev).repeat(geo.kh)
    base_y = (torch.arange(geo.ho, device=dev) - geo.pad).view(geo.ho, 1, 1, 1) + ki
    base_x = (torch.arange(geo.wo, device=dev) - geo.pad).view(1, geo.wo, 1, 1) + kj
    # Integer base + offset in the working dtype, as torchvision rounds it.
    y = base_y.to(dt) + off[..., 0]
    x = base_x.to(dt) + off[..., 1]
    # Some corner inside (else everything is 0; also keeps NaN/inf away from .long()).
    inside = (y > -2) & (y < geo.h) & (x > -2) & (x < geo.w)
    y = torch.where(inside, y, 0.0)
    x = torch.where(inside, x, 0.0)
    fy, fx = torch.floor(y), torch.floor(x)
    ly, lx = y - fy, x - fx
    y0, x0 = fy.long(), fx.long()
    vy0 = inside & (y0 >= 0) & (y0 < geo.h)
    vy1 = inside & (y0 >= -1) & (y0 + 1 < geo.h)
    vx0, vx1 = (x0 >= 0) & (x0 < geo.w), (x0 >= -1) & (x0 + 1 < geo.w)
    cy0, cy1 = y0.clamp(0, geo.h - 1), (y0 + 1).clamp(0, geo.h - 1)
    cx0, cx1 = x0.clamp(0, geo.w - 1), (x0 + 1).clamp(0, geo.w - 1)
    bidx = torch.arange(b0, b1, device=dev).view(n, 1, 1, 1, 1)
    gidx = torch.arange(geo.g, device=dev).view(1, 1, 1, geo.g, 1)
    image = (bidx * geo.g + gidx) * geo.h  # first row of each group's image
    r0, r1 = (image + cy0) * geo.w, (image + cy1) * geo.w
    rows = torch.stack((r0 + cx0, r0 + cx1, r1 + cx0, r1 + cx1), -1)
    valid = torch.stack((vy0 & vx0, vy0 & vx1, vy1 & vx0, vy1 & vx1), -1).to(dt)
    hy, hx = 1 - ly, 1 - lx
    bil = torch.stack((hy * hx, hy * lx, ly * hx, ly * lx), -1) * valid
    return _Corners(rows, bil, valid, ly, lx, m)


class _PureSampler:
    """im2col / col2im with PyTorch ops (any dtype), over chunks of whole images.

    Sampling is one ``embedding_bag`` (sum of the four corner rows of ``Cg``
    floats, weighted by bilinear weight x mask); its autograd gives the
    scatter back to the input and the per-corner dot products.
    """

    def __init__(
        self, x_gm: torch.Tensor, offset: torch.Tensor, mask: torch.Tensor, geo: _Geom
    ) -> None:
        self.table = x_gm.detach().reshape(-1, geo.cg)  # row ((b*G + g)*H + y)*W + x
        self.offset, self.mask, self.geo = offset, mask, geo
        per = max(1, _PURE_CHUNK_POINTS // max(1, geo.hwo * geo.g * geo.kk))
        self.chunks = [
            _Chunk(b, min(geo.b, b + per), 0, geo.hwo, geo.hwo) for b in range(0, geo.b, per)
        ]

    def _corners(self, i: int) -> _Corners:
        ch = self.chunks[i]
        return _pure_corners(self.offset, self.mask, self.geo, ch.b0, ch.b1)

    def im2col(self, i: int) -> torch.Tensor:
        cor = self._corners(i)
        weights = (cor.bil * cor.mask.unsqueeze(-1)).reshape(-1, 4)
        cols = F.embedding_bag(
            cor.rows.reshape(-1, 4), self.table, mode="sum", per_sample_weights=weights
        )
        return cols.reshape(-1, self.geo.k)

    def col2im(
        self,
        i: int,
        gcols: torch.Tensor,
        gx: torch.Tensor | None,
        goff: torch.Tensor | None,
        gmask: torch.Tensor | None,
    ) -> None:
        geo, b0, b1 = self.geo, self.chunks[i].b0, self.chunks[i].b1
        n = b1 - b0
        cor = self._corners(i)
        need_s = goff is not None or gmask is not None
        with torch.enable_grad():
            t = self.table.detach().requires_grad_(gx is not None)
            w = (cor.bil * cor.mask.unsqueeze(-1)).reshape(-1, 4).detach().requires_grad_(need_s)
            out = F.embedding_bag(cor.rows.reshape(-1, 4), t, mode="sum", per_sample_weights=w)
            inputs = [v for v in (t, w) if v.requires_grad]
            grads = list(torch.autograd.grad(out, inputs, gcols.reshape(-1, geo.cg)))
        if gx is not None:
            gx.view(-1, geo.cg).add_(grads.pop(0))
        if not need_s:
            return
        # s: grad_col . corner (0 outside), the gradient w.r.t. the unmasked bilinear weight.
        s = grads.pop(0).reshape(cor.bil.shape) * cor.valid
        s00, s01, s10, s11 = s.unbind(-1)
        if gmask is not None:
            gm = (s * cor.bil).sum(-1).permute(0, 3, 4, 1, 2)  # (n, G, KK, Ho, Wo)
            gmask[b0:b1] = gm.reshape(n, geo.g * geo.kk, geo.ho, geo.wo)
        if goff is not None:
            hy, hx = 1 - cor.ly, 1 - cor.lx
            gy = cor.mask * (hx * (s10 - s00) + cor.lx * (s11 - s01))
            gxx = cor.mask * (hy * (s01 - s00) + cor.ly * (s11 - s10))
            go = torch.stack((gy, gxx), -1).permute(0, 3, 4, 5, 1, 2)  # (n, G, KK, 2, Ho, Wo)
            goff[b0:b1] = go.reshape(n, 2 * geo.g * geo.kk, geo.ho, geo.wo)


# ---------------------------------------------------------------------------
# autograd function

_Sampler = _NativeSampler | _PureSampler


def _sampler(
    x: torch.Tensor, offset: torch.Tensor, mask: torch.Tensor, geo: _Geom, allow_native: bool
) -> _Sampler:
    """The native sampler where it can run, else the pure one.

    ``x``: group-major (B, G, H, W, Cg), or NHWC (B, C, H, W) (the pure
    sampler then gets a group-major copy).
    """
    if allow_native and x.dtype == torch.float32 and x.device.type == "cpu":
        lib = _load_native()
        pixel = _image_strides(x, geo)[2]
        if lib is not None and geo.h * geo.w * pixel < 2**31:  # 32-bit offsets in an image
            return _NativeSampler(lib, x, _flat_positions(offset), _flat_positions(mask), geo)
    if x.dim() == 4:
        x = _group_major(x, geo)
    return _PureSampler(x, offset, mask, geo)


def _gemm_nchw(
    sampler: _Sampler, wcols: torch.Tensor, bias: torch.Tensor | None, out: torch.Tensor
) -> None:
    """``out`` (B, Cout, Ho*Wo) = W @ columns (+ bias), chunk by chunk."""
    geo = sampler.geo
    for i, ch in enumerate(sampler.chunks):
        cols = sampler.im2col(i)  # (rows, K)
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
    sampler: _Sampler, wcols: torch.Tensor, bias: torch.Tensor | None, out: torch.Tensor
) -> None:
    """``out`` (B*Ho*Wo, Cout), NHWC rows, = columns @ W^T (+ bias), chunk by chunk."""
    wt = wcols.t()
    for i, ch in enumerate(sampler.chunks):
        cols = sampler.im2col(i)  # (rows, K): the rows of out are the same positions
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
    ) -> torch.Tensor:
        geo = _geometry(x, offset, mask, weight, padding)
        # NHWC input (channels-last convs around it) is sampled in place and gives
        # NHWC output, whose rows the GEMM writes directly; else group-major, NCHW.
        nhwc = allow_native and _channels_last(x) and native_available()
        x_s = x.detach() if nhwc else _group_major(x.detach(), geo)
        offset, mask = offset.detach(), mask.detach()
        sampler = _sampler(x_s, offset, mask, geo, allow_native)
        wcols = _weight_to_cols(weight.detach(), geo)  # (Cout, K)
        cout = weight.shape[0]
        b = bias.detach() if bias is not None else None
        # Returned as is, not as a view: callers may modify it in place.
        if nhwc:
            result = torch.empty(
                (geo.b, cout, geo.ho, geo.wo),
                dtype=x.dtype,
                device=x.device,
                memory_format=torch.channels_last,
            )
            _gemm_nhwc(sampler, wcols, b, result.permute(0, 2, 3, 1).view(-1, cout))
        else:
            result = x.new_empty(geo.b, cout, geo.ho, geo.wo)
            _gemm_nchw(sampler, wcols, b, result.view(geo.b, cout, geo.hwo))
        ctx.save_for_backward(x_s, offset, mask, weight)
        ctx.geo = geo
        ctx.has_bias = bias is not None
        ctx.allow_native = allow_native
        return result

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: Any, grad_out: torch.Tensor
    ) -> tuple[torch.Tensor | None, ...]:
        x_s, offset, mask, weight = ctx.saved_tensors
        geo: _Geom = ctx.geo
        x_gm = _group_major(x_s, geo) if x_s.dim() == 4 else x_s  # NHWC input: group-major copy
        offset, mask = _per_sample_dense(offset), mask.contiguous()
        need_x, need_off, need_mask, need_w, need_b = ctx.needs_input_grad[:5]
        cout = weight.shape[0]
        gout = grad_out.reshape(geo.b, cout, geo.hwo)  # the GEMMs read it transposed
        grad_bias = gout.sum((0, 2)) if need_b and ctx.has_bias else None
        gw = weight.new_zeros(cout, geo.k) if need_w else None
        gx = torch.zeros_like(x_gm) if need_x else None
        goff = offset.new_empty(offset.shape) if need_off else None  # contiguous
        gmask = torch.empty_like(mask) if need_mask else None
        need_cols = gx is not None or goff is not None or gmask is not None
        if gw is None and not need_cols:
            return None, None, None, None, grad_bias, None, None
        sampler = _sampler(x_gm, offset, mask, geo, ctx.allow_native)
        wcols = _weight_to_cols(weight, geo)  # (Cout, K)
        for i, ch in enumerate(sampler.chunks):
            one = ch.b1 == ch.b0 + 1
            go = gout[ch.b0, :, ch.p0 : ch.p1] if one else gout[ch.b0 : ch.b1]
            if gw is not None:
                cols = sampler.im2col(i)  # recomputed, not kept
                if one:
                    gw.addmm_(go, cols)
                else:
                    gw += torch.bmm(go, cols.view(ch.b1 - ch.b0, geo.hwo, geo.k)).sum(0)
            if need_cols:
                gcols = _workspace("gcols", ch.rows, geo.k, gout)
                if one:
                    torch.mm(go.t(), wcols, out=gcols)
                else:
                    gc3 = gcols.view(ch.b1 - ch.b0, geo.hwo, geo.k)
                    torch.matmul(go.transpose(1, 2), wcols, out=gc3)
                sampler.col2im(i, gcols, gx, goff, gmask)
        grad_x = None
        if gx is not None:  # (B, G, H, W, Cg) -> (B, C, H, W)
            grad_x = gx.permute(0, 1, 4, 2, 3).reshape(geo.b, geo.c, geo.h, geo.w)
        grad_w = _cols_to_weight(gw, geo) if gw is not None else None
        return grad_x, goff, gmask, grad_w, grad_bias, None, None


def deform_conv2d_cpu(
    x: torch.Tensor,
    offset: torch.Tensor,
    mask: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    padding: int,
    *,
    native: bool = True,
) -> torch.Tensor:
    """Modulated deformable conv (stride 1, dilation 1), torchvision's semantics and layout.

    ``native=False`` forces the pure-PyTorch sampling even where the compiled
    kernel is available (for comparisons, and as its reference).
    """
    if weight.shape[1] != x.shape[1]:  # grouped weights: not used by the model, delegate
        from torchvision.ops import deform_conv2d

        return deform_conv2d(x, offset, weight, bias, padding=padding, mask=mask)
    return _ModulatedDeformConv.apply(x, offset, mask, weight, bias, padding, native)


def _pure(
    x: torch.Tensor,
    offset: torch.Tensor,
    mask: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    padding: int,
) -> torch.Tensor:
    return deform_conv2d_cpu(x, offset, mask, weight, bias, padding, native=False)


register_backend("cpu", deform_conv2d_cpu, devices=("cpu",), priority=20)
register_backend("cpu-pure", _pure, devices=("cpu",), priority=10)
