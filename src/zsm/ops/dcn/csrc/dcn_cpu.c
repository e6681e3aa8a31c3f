/* zsm: modulated deformable conv (DCNv2) sampling kernels; see zsm/ops/dcn/native.py.

   The exported functions' parameter lists (ZSM_DCN_*_PARAMS) and TILE come
   from zsm_dcn_api.h, which the build generates from native.py's table: the
   Python side declares each parameter once, by name and type, and calls by
   name, so the two sides cannot disagree on order or count. */
#include "zsm_dcn_api.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
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

#define TILE ZSM_DCN_TILE /* output positions per tile */

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

#if defined(__AVX__)
/* dst[k * ds + j] = src[j * ss + k] for an 8x8 block, transposed in registers. */
static inline void transpose8(float *restrict dst, i64 ds, const float *restrict src, i64 ss) {
    __m256 r[8], t[8], u[8];
    for (int k = 0; k < 8; ++k) r[k] = _mm256_loadu_ps(src + k * ss);
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
        _mm256_storeu_ps(dst + k * ds, _mm256_permute2f128_ps(u[k], u[k + 4], 0x20));
        _mm256_storeu_ps(dst + (k + 4) * ds, _mm256_permute2f128_ps(u[k], u[k + 4], 0x31));
    }
}
#endif

/* n rows of nc channels (element (p, c) at src[p * ps + c * cs]) -> dst[c * TILE + p]:
   a tile's offsets or mask made contiguous per channel, as tile_corners reads them. */
static void tile_gather(float *restrict dst, const float *restrict src, i64 n, i64 nc, i64 ps,
                        i64 cs) {
    i64 p = 0;
#if defined(__AVX__)
    if (cs == 1) /* NHWC: 8x8 blocks */
        for (; p + 8 <= n; p += 8) {
            i64 c = 0;
            for (; c + 8 <= nc; c += 8) transpose8(dst + c * TILE + p, TILE, src + p * ps + c, ps);
            for (; c < nc; ++c)
                for (int k = 0; k < 8; ++k) dst[c * TILE + p + k] = src[(p + k) * ps + c];
        }
#endif
    for (; p < n; ++p)
        for (i64 c = 0; c < nc; ++c) dst[c * TILE + p] = src[p * ps + c * cs];
}

/* The inverse, from rows ld apart: src[c * ld + p] -> dst[p * ps + c * cs] (a block's
   offset and mask gradients into their tensors, NCHW or NHWC). */
static void block_scatter(float *restrict dst, const float *restrict src, i64 n, i64 nc, i64 ps,
                          i64 cs, i64 ld) {
    if (cs != 1) { /* NCHW: rows of positions */
        for (i64 c = 0; c < nc; ++c) memcpy(dst + c * cs, src + c * ld, (size_t)n * sizeof(float));
        return;
    }
    i64 p = 0;
#if defined(__AVX__)
    for (; p + 8 <= n; p += 8) {
        i64 c = 0;
        for (; c + 8 <= nc; c += 8) transpose8(dst + p * ps + c, ps, src + c * ld + p, ld);
        for (; c < nc; ++c)
            for (int k = 0; k < 8; ++k) dst[(p + k) * ps + c] = src[c * ld + p + k];
    }
#endif
    for (; p < n; ++p)
        for (i64 c = 0; c < nc; ++c) dst[p * ps + c] = src[c * ld + p];
}

/* bfloat16: the upper half of a float32.  Widening is exact; narrowing rounds to
   nearest even, NaN to a quiet NaN (as torch rounds).  The 8-lane forms are macros
   (statement expressions), not functions: without AVX, gcc notes (-Wpsabi) every
   32-byte vector passed by value. */
typedef uint16_t bf16;
typedef uint16_t v8h __attribute__((vector_size(16), aligned(2)));
typedef uint32_t v8u __attribute__((vector_size(32), aligned(4)));

#define LOAD8_BF16(p) \
    ({ \
        const v8h h_ = *(const v8h *)(p); \
        (v8f)(__builtin_convertvector(h_, v8u) << 16); \
    })
#define STORE8_BF16(p, value) \
    do { \
        const v8f v_ = (value); \
        const v8u u_ = (v8u)v_, nan_ = (v8u)(v_ != v_); \
        v8u r_ = (u_ + 0x7FFFu + ((u_ >> 16) & 1u)) >> 16; \
        r_ = (r_ & ~nan_) | (nan_ & 0x7FC0u); \
        *(v8h *)(p) = __builtin_convertvector(r_, v8h); \
    } while (0)
/* 8 floats of x (float32 or bf16 as xbf says) at element i; the same for cols. */
#define LOAD8(x, i, xbf) \
    ((xbf) ? LOAD8_BF16((const bf16 *)(x) + (i)) : *(const v8f *)((const float *)(x) + (i)))
#define STORE8(cols, i, value, cbf) \
    do { \
        if (cbf) \
            STORE8_BF16((bf16 *)(cols) + (i), value); \
        else \
            *(v8f *)((float *)(cols) + (i)) = (value); \
    } while (0)

static inline float load1(const void *x, i64 i, const int xbf) {
    if (!xbf) return ((const float *)x)[i];
    const uint32_t u = (uint32_t)((const bf16 *)x)[i] << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static inline void store1(void *cols, i64 i, float f, const int cbf) {
    if (!cbf) {
        ((float *)cols)[i] = f;
        return;
    }
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    ((bf16 *)cols)[i] = f != f ? (bf16)0x7FC0u : (bf16)((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
}

#include "dcn_simd.c"

/* tile_corners, by the SIMD form where simd says. */
static inline __attribute__((always_inline)) void
corners(Tile *restrict t, i64 n, const float *restrict oy, const float *restrict ox,
        const float *restrict mk, float fi, float fj, i64 H, i64 W, i64 C, const int full,
        const int simd) {
#if ZSM_SIMD
    if (simd) {
        simd_corners(t, n, oy, ox, mk, fi, fj, H, W, C, full);
        return;
    }
#endif
    (void)simd;
    tile_corners(t, n, oy, ox, mk, fi, fj, H, W, C, full);
}

/* 1: the SIMD forward of NHWC offsets and mask runs per position (simd_pairs); 0: per
   tile, as the other layouts (simd_corners + simd_rows_*), for comparisons. */
static int pairs_state = 1;

/* The SIMD level in use (0: portable loops), after setting it: request 0 switches
   the SIMD forms off, 1 on where the CPU has them, 2 on but the forward per tile
   (pairs_state 0), -1 leaves it. */
int zsm_dcn_simd(ZSM_DCN_SIMD_PARAMS) {
    if (request >= 0) {
        simd_state = -1;
        if (request == 0 || !simd_level()) simd_state = 0;
        pairs_state = request != 2;
    }
    return simd_level();
}

/* Columns of tiles [t0, t1).  Tile t covers output positions from
   (t % tiles_per_image) * TILE of image t / tiles_per_image, i.e. rows
   q = b * Ho * Wo + p of the column matrix; cols holds the rows from q_base on.
   x: element (b, channel c of group g, y, x) at b*xsb + g*xsg + (y*W + x)*xsp + c,
   i.e. each group's Cg channels adjacent: (B, G, H, W, Cg) or NHWC.
   offset (B, 2*G*KK, Ho, Wo) and mask (B, G*KK, Ho, Wo): element (b, c, position p)
   at b*sb + c*sc + p*sp (NCHW or NHWC); cols: (rows, G, KK, Cg), mask applied.
   x and cols are float32, or bfloat16 where xbf / cbf say (the sampling itself is
   float32 either way); the exported functions below fix the two. */
static inline __attribute__((always_inline)) void
im2col(const void *restrict x, const float *restrict offset, const float *restrict mask,
       void *restrict cols, i64 H, i64 W, i64 C, i64 G, i64 kh, i64 kw, i64 pad, i64 Ho, i64 Wo,
       i64 xsb, i64 xsg, i64 xsp, i64 osb, i64 osc, i64 osp, i64 msb, i64 msc, i64 msp,
       i64 q_base, i64 t0, i64 t1, int nthreads, const int xbf, const int cbf) {
    const i64 Cg = C / G, KK = kh * kw, HWo = Ho * Wo, K = G * KK * Cg;
    const i64 ntiles = (HWo + TILE - 1) / TILE;
    const int gather_o = osp != 1, gather_m = msp != 1;
    const int simd = simd_level(), simd_rows = ZSM_SIMD && simd && cbf && Cg % 8 == 0;
    const int simd_pos = simd_rows && pairs_state && osc == 1 && msc == 1;
    (void)nthreads, (void)simd_rows, (void)simd_pos;
#if defined(_OPENMP) /* without OpenMP an unknown pragma is a warning */
#pragma omp parallel for schedule(static) num_threads(nthreads) if (nthreads > 1)
#endif
    for (i64 t = t0; t < t1; ++t) {
        Tile tl;
        float obuf[gather_o ? 2 * G * KK * TILE : 1], mbuf[gather_m ? G * KK * TILE : 1];
        const i64 b = t / ntiles, p0 = (t - b * ntiles) * TILE;
        const i64 n = p0 + TILE < HWo ? TILE : HWo - p0;
        const float *ob = offset + b * osb + p0 * osp;
        const float *mb = mask + b * msb + p0 * msp;
        const i64 cb = (b * HWo + p0 - q_base) * K; /* the tile's first element of cols */
#if ZSM_SIMD
        if (simd_pos) {
            const void *xb = xbf ? (const void *)((const bf16 *)x + b * xsb)
                                 : (const void *)((const float *)x + b * xsb);
            simd_pairs(p0, n, ob, osp, mb, msp, xb, xbf, (bf16 *)cols + cb, H, W, xsp, xsg, G, kh,
                       kw, pad, Wo, Cg);
            continue;
        }
#endif
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
        tile_base(&tl, p0, n, Wo, pad);
        for (i64 g = 0; g < G; ++g) {
            const i64 xg = b * xsb + g * xsg; /* the group's first element of x */
            for (i64 i = 0; i < kh; ++i) {
                for (i64 j = 0; j < kw; ++j) {
                    const i64 ch = g * KK + i * kw + j;
                    const float *oy = ob + 2 * ch * oc, *ox = ob + (2 * ch + 1) * oc;
                    corners(&tl, n, oy, ox, mb + ch * mc, (float)i, (float)j, H, W, xsp, 0, simd);
                    i64 o = cb + ch * Cg;
#if ZSM_SIMD
                    if (simd_rows && xbf) {
                        simd_rows_bf16(&tl, n, (const bf16 *)x + xg, (bf16 *)cols + o, K, Cg);
                        continue;
                    }
                    if (simd_rows) {
                        simd_rows_f32(&tl, n, (const float *)x + xg, (bf16 *)cols + o, K, Cg);
                        continue;
                    }
#endif
                    if (Cg == 8) { /* the common case: a row is one AVX register */
                        for (i64 p = 0; p < n; ++p, o += K)
                            STORE8(cols, o,
                                   tl.w[0][p] * LOAD8(x, xg + tl.o[0][p], xbf)
                                       + tl.w[1][p] * LOAD8(x, xg + tl.o[1][p], xbf)
                                       + tl.w[2][p] * LOAD8(x, xg + tl.o[2][p], xbf)
                                       + tl.w[3][p] * LOAD8(x, xg + tl.o[3][p], xbf),
                                   cbf);
                        continue;
                    }
                    for (i64 p = 0; p < n; ++p, o += K) {
                        const float a0 = tl.w[0][p], a1 = tl.w[1][p];
                        const float a2 = tl.w[2][p], a3 = tl.w[3][p];
                        const i64 r0 = xg + tl.o[0][p], r1 = xg + tl.o[1][p];
                        const i64 r2 = xg + tl.o[2][p], r3 = xg + tl.o[3][p];
                        i64 c = 0;
                        for (; c + 8 <= Cg; c += 8)
                            STORE8(cols, o + c,
                                   a0 * LOAD8(x, r0 + c, xbf) + a1 * LOAD8(x, r1 + c, xbf)
                                       + a2 * LOAD8(x, r2 + c, xbf) + a3 * LOAD8(x, r3 + c, xbf),
                                   cbf);
                        for (; c < Cg; ++c)
                            store1(cols, o + c,
                                   a0 * load1(x, r0 + c, xbf) + a1 * load1(x, r1 + c, xbf)
                                       + a2 * load1(x, r2 + c, xbf) + a3 * load1(x, r3 + c, xbf),
                                   cbf);
                    }
                }
            }
        }
    }
}

#define IM2COL_ARGS \
    H, W, C, G, kh, kw, pad, Ho, Wo, xsb, xsg, xsp, osb, osc, osp, msb, msc, msp, q_base, t0, \
        t1, nthreads

/* float32 x -> float32 columns */
void zsm_dcn_im2col(ZSM_DCN_IM2COL_PARAMS) {
    im2col(x, offset, mask, cols, IM2COL_ARGS, 0, 0);
}

/* bfloat16 x -> bfloat16 columns (a bf16 GEMM's input), sampled in float32 */
void zsm_dcn_im2col_bf16(ZSM_DCN_IM2COL_BF16_PARAMS) {
    im2col(x, offset, mask, cols, IM2COL_ARGS, 1, 1);
}

/* float32 x -> bfloat16 columns */
void zsm_dcn_im2col_f32_bf16(ZSM_DCN_IM2COL_F32_BF16_PARAMS) {
    im2col(x, offset, mask, cols, IM2COL_ARGS, 0, 1);
}

/* 1 if built with OpenMP: the kernels then split their loops over threads
   themselves, in the OpenMP runtime torch already uses (same soname). */
int zsm_dcn_openmp(ZSM_DCN_OPENMP_PARAMS) {
#if defined(_OPENMP)
    return 1;
#else
    return 0;
#endif
}

/* s[0..3] = the sums of the 8 lanes of a[0..3].  By pointer: without AVX, gcc notes
   (-Wpsabi) every 32-byte vector passed by value. */
static inline void hsum4x8(const v8f *a, float *s) {
#if defined(__AVX__)
    const __m256 t0 = _mm256_hadd_ps((__m256)a[0], (__m256)a[1]);
    const __m256 t1 = _mm256_hadd_ps((__m256)a[2], (__m256)a[3]);
    const __m256 t2 = _mm256_hadd_ps(t0, t1);
    _mm_storeu_ps(s, _mm_add_ps(_mm256_castps256_ps128(t2), _mm256_extractf128_ps(t2, 1)));
#else
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
                const v8f acc[4] = {a0, a1, a2, a3};
                hsum4x8(acc, s);
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
/* Part `part` of `nparts` of a backward pass over groups [0, G) x batches [bfirst, bend):
   the groups are split where there are enough of them (each part owns its groups' input
   gradients), else the batches. */
static void split_parts(i64 G, i64 bfirst, i64 bend, int part, int nparts, i64 *glo, i64 *ghi,
                        i64 *blo, i64 *bhi) {
    *glo = 0, *ghi = G, *blo = bfirst, *bhi = bend;
    if (G >= nparts) {
        *glo = G * part / nparts;
        *ghi = G * (part + 1) / nparts;
    } else {
        *blo = bfirst + (bend - bfirst) * part / nparts;
        *bhi = bfirst + (bend - bfirst) * (part + 1) / nparts;
    }
}

static void col2im_part(const float *x, const float *offset, const float *mask,
                        const float *gcols, float *gx, float *goff, float *gmask, i64 H, i64 W,
                        i64 C, i64 G, i64 kh, i64 kw, i64 pad, i64 Ho, i64 Wo, i64 ostride,
                        i64 q0, i64 q1, int part, int nparts) {
    const i64 Cg = C / G, KK = kh * kw, HWo = Ho * Wo, K = G * KK * Cg;
    const int need_s = goff != 0 || gmask != 0;
    const i64 bfirst = q0 / HWo, bend = (q1 - 1) / HWo + 1;
    i64 glo, ghi, blo, bhi;
    split_parts(G, bfirst, bend, part, nparts, &glo, &ghi, &blo, &bhi);
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
void zsm_dcn_col2im(ZSM_DCN_COL2IM_PARAMS) {
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

/* backward_part for one (group, kernel point) of a tile, the portable form:
   bf16 x rows at xg + o (all C channels a pixel apart), bf16 grad_col rows gq
   (point p's at gq + p * K), the sampled rows into cq (NULL: not wanted), gx (float32,
   the same element offsets) += weight * grad_col, s = grad_col . corner if need_s. */
static void backward_tile(Tile *restrict t, i64 n, const bf16 *xg, const bf16 *gq, bf16 *cq,
                          float *gxg, i64 K, i64 Cg, int need_s, int simd) {
#if ZSM_SIMD
    if (simd && Cg % 8 == 0) {
        simd_backward_bf16(t, n, xg, gq, cq, gxg, K, Cg, need_s);
        return;
    }
#endif
    (void)simd;
    for (i64 p = 0; p < n; ++p, gq += K) {
        const i32 o[4] = {t->o[0][p], t->o[1][p], t->o[2][p], t->o[3][p]};
        float s[4] = {0.0f, 0.0f, 0.0f, 0.0f};
        for (i64 c = 0; c < Cg; ++c) {
            const float g = load1(gq, c, 1);
            float v = 0.0f;
            for (int k = 0; k < 4; ++k) {
                const float xv = load1(xg, o[k] + c, 1);
                v += t->w[k][p] * xv;
                s[k] += need_s ? g * xv : 0.0f;
                if (gxg && t->w[k][p] != 0.0f) gxg[o[k] + c] += t->w[k][p] * g;
            }
            if (cq) store1(cq, p * K + c, v, 1);
        }
        if (need_s)
            for (int k = 0; k < 4; ++k) t->s[k][p] = s[k];
    }
}

/* Whether the fused backward (grad_col and grad_W made tile by tile, see backward_part)
   runs here: AVX512-BF16, Cg % 8 == 0, Cout even, and parts that split the groups. */
static int fused_backward_ok(i64 G, i64 Cg, i64 Cout, int nparts) {
    return ZSM_SIMD && simd_level() && Cg % 8 == 0 && Cout % 2 == 0 && (nparts == 1 || G >= nparts);
}

/* The backward pass of bf16 NHWC input, rows [q0, q1), part `part` of `nparts` (as
   col2im_part splits them), in one pass over the corners: the columns again (cols,
   bf16, for grad_W; may be NULL), gx (float32 (B, H, W, C), accumulated; may be NULL)
   from the bf16 grad_col rows gcols, and the offset and mask gradients (float32,
   contiguous NCHW; may be NULL).  x, offset, mask and the rows as in im2col.  Fused
   (gout given: grad_out's bf16 NHWC rows of Cout; wq: W packed (Cout / 2, K, 2) bf16,
   GEMM_W_PAD readable past its end; gw: float32 (Cout, K), accumulated, may be NULL):
   each tile's grad_col rows are gout's @ W and its columns are multiplied into gw
   while in cache (simd_tile_gcols, simd_tile_gw); gcols and cols are then not used.
   0 where that cannot run (fused_backward_ok), else 1. */
static int backward_part(const bf16 *x, const float *offset, const float *mask,
                         const bf16 *gcols, bf16 *cols, float *gx, float *goff, float *gmask,
                         const bf16 *gout, const bf16 *wq, float *gw, i64 H, i64 W, i64 C, i64 G,
                         i64 kh, i64 kw, i64 pad, i64 Ho, i64 Wo, i64 Cout, i64 xsb, i64 xsp,
                         i64 osb, i64 osc, i64 osp, i64 msb, i64 msc, i64 msp, i64 gosb, i64 gosc,
                         i64 gosp, i64 gmsb, i64 gmsc, i64 gmsp, i64 q0, i64 q1, int part,
                         int nparts) {
    const i64 Cg = C / G, KK = kh * kw, HWo = Ho * Wo, K = G * KK * Cg;
    const int need_s = goff != 0 || gmask != 0, simd = simd_level();
    const i64 bfirst = q0 / HWo, bend = (q1 - 1) / HWo + 1;
    i64 glo, ghi, blo, bhi;
    split_parts(G, bfirst, bend, part, nparts, &glo, &ghi, &blo, &bhi);
    /* fused: grad_col and grad_W made here, tile by tile (gout, wq given; gcols, cols
       unused); each part owns its groups' columns of gw, so the parts must split groups */
    const int fused = gout != 0;
    if (fused && !fused_backward_ok(G, Cg, Cout, nparts)) return 0;
#if ZSM_SIMD
    FusedBwd fb = {0};
    if (fused) {
        fb.go = calloc((size_t)(GEMM_ROWS(TILE) * Cout), sizeof(bf16));
        fb.gc = malloc(sizeof(bf16) * (size_t)(TILE * K));
        fb.c = malloc(sizeof(bf16) * (size_t)(TILE * K));
        fb.ci = malloc(sizeof(bf16) * (size_t)(TILE * K + TILE + GEMM_W_PAD));
        fb.goi = malloc(sizeof(bf16) * (size_t)((TILE + 2) * Cout + 2 * GEMM_ROWS(Cout)));
        if (!fb.go || !fb.gc || !fb.c || !fb.ci || !fb.goi) abort();
    }
#else
    if (fused) return 0;
    (void)wq, (void)gw, (void)Cout;
#endif
    Tile tl;
    float obuf[2 * G * KK * TILE], mbuf[G * KK * TILE];
    /* The gradients of SUPER positions, written out together: long rows for NCHW (one
       tile's 64-position rows, 3 * G * KK streams at once: the compact model's backward
       kernel 54 -> 39 ms, (3, 32, 144, 176), 4 groups, 1 thread). */
    enum { SUPER = 8 * TILE };
    float *gobuf = goff ? malloc(sizeof(float) * 2 * G * KK * SUPER) : 0;
    float *gmbuf = gmask ? malloc(sizeof(float) * G * KK * SUPER) : 0;
    float scratch[2 * TILE], gms[TILE]; /* the gradients not wanted */
    if ((goff && !gobuf) || (gmask && !gmbuf)) abort();
    for (i64 b = blo; b < bhi; ++b) {
        const i64 pa = (b * HWo > q0 ? b * HWo : q0) - b * HWo;
        const i64 pb = ((b + 1) * HWo < q1 ? (b + 1) * HWo : q1) - b * HWo;
        for (i64 s0 = pa; s0 < pb; s0 += SUPER) {
            const i64 s1 = s0 + SUPER < pb ? s0 + SUPER : pb;
            for (i64 p0 = s0; p0 < s1; p0 += TILE) {
                const i64 n = p0 + TILE < s1 ? TILE : s1 - p0;
                tile_gather(obuf, offset + b * osb + p0 * osp, n, 2 * G * KK, osp, osc);
                tile_gather(mbuf, mask + b * msb + p0 * msp, n, G * KK, msp, msc);
                tile_base(&tl, p0, n, Wo, pad);
                /* the tile's grad_col and column rows, K apart */
                const bf16 *gt = fused ? 0 : gcols + (b * HWo + p0 - q0) * K;
                bf16 *ct = fused || !cols ? 0 : cols + (b * HWo + p0 - q0) * K;
#if ZSM_SIMD
                if (fused) {
                    simd_tile_gcols(&fb, gout + (b * HWo + p0) * Cout, n, Cout, wq, K,
                                    glo * KK * Cg, ghi * KK * Cg);
                    gt = fb.gc;
                    ct = gw ? fb.c : 0;
                }
#endif
                for (i64 g = glo; g < ghi; ++g) {
                    const bf16 *xg = x + b * xsb + g * Cg;
                    float *gxg = gx ? gx + b * H * W * C + g * Cg : 0;
                    for (i64 k = 0; k < KK; ++k) {
                        const i64 ch = g * KK + k, at = ch * Cg;
                        const float *mk = mbuf + ch * TILE;
                        corners(&tl, n, obuf + 2 * ch * TILE, obuf + (2 * ch + 1) * TILE, mk,
                                (float)(k / kw), (float)(k % kw), H, W, xsp, 1, simd);
                        backward_tile(&tl, n, xg, gt + at, ct ? ct + at : 0, gxg, K, Cg,
                                      need_s, simd);
                        if (!need_s) continue;
                        float *gy = scratch, *gxo = scratch + TILE, *gm = gms;
                        if (goff) {
                            gy = gobuf + 2 * ch * SUPER + (p0 - s0);
                            gxo = gy + SUPER;
                        }
                        if (gmask) gm = gmbuf + ch * SUPER + (p0 - s0);
                        tile_offset_grads(&tl, n, mk, gy, gxo, gm);
                    }
                }
#if ZSM_SIMD
                if (fused && gw) simd_tile_gw(&fb, n, Cout, K, glo * KK * Cg, ghi * KK * Cg, gw);
#endif
            }
            /* the part's channels of the block's gradients, in their tensors' layout */
            const i64 c0 = glo * KK, nc = (ghi - glo) * KK, ns = s1 - s0;
            if (goff)
                block_scatter(goff + b * gosb + s0 * gosp + 2 * c0 * gosc,
                              gobuf + 2 * c0 * SUPER, ns, 2 * nc, gosp, gosc, SUPER);
            if (gmask)
                block_scatter(gmask + b * gmsb + s0 * gmsp + c0 * gmsc, gmbuf + c0 * SUPER, ns,
                              nc, gmsp, gmsc, SUPER);
        }
    }
    free(gobuf);
    free(gmbuf);
#if ZSM_SIMD
    free(fb.go), free(fb.gc), free(fb.c), free(fb.ci), free(fb.goi);
#endif
    return 1;
}

/* nthreads > 1 (OpenMP builds): all nthreads parts in parallel; else part `part`.  1 if
   it ran; 0 (nothing written) where the fused form (gout given) cannot run. */
int zsm_dcn_backward_bf16(ZSM_DCN_BACKWARD_BF16_PARAMS) {
    if (gout && !fused_backward_ok(G, C / G, Cout, nthreads > 1 ? nthreads : nparts)) return 0;
#if defined(_OPENMP)
    if (nthreads > 1) {
#pragma omp parallel num_threads(nthreads)
        backward_part(x, offset, mask, gcols, cols, gx, goff, gmask, gout, wq, gw, H, W, C, G, kh,
                      kw, pad, Ho, Wo, Cout, xsb, xsp, osb, osc, osp, msb, msc, msp, gosb, gosc,
                      gosp, gmsb, gmsc, gmsp, q0, q1, omp_get_thread_num(),
                      omp_get_num_threads());
        return 1;
    }
#endif
    (void)nthreads;
    return backward_part(x, offset, mask, gcols, cols, gx, goff, gmask, gout, wq, gw, H, W, C, G,
                         kh, kw, pad, Ho, Wo, Cout, xsb, xsp, osb, osc, osp, msb, msc, msp, gosb,
                         gosc, gosp, gmsb, gmsc, gmsp, q0, q1, part, nparts);
}

/* The fused bf16 forward (simd_forward) of output rows [q0, q1), q = b * Ho * Wo + p,
   part `part` of `nparts` (each part a run of whole FUSED_ROWS blocks): out (bf16, NHWC
   rows of Cout) = the deformable conv of bf16 x (NHWC) with NHWC float32 offsets and
   mask, the weights packed as (K / 2, Cout, 2) bf16 (wp), plus bias (float32, may be
   NULL).  1 if it ran; 0 (nothing written) where it cannot: no AVX512-BF16 here or
   switched off (or the forward asked per tile), Cg % 8, Cout % 16, offsets or mask not
   NHWC, or K so large that the block's columns would not fit the cache (nor the stack). */
static int forward_part(const bf16 *x, const float *offset, const float *mask, const bf16 *wp,
                        const float *bias, bf16 *out, i64 H, i64 W, i64 C, i64 G, i64 kh,
                        i64 kw, i64 pad, i64 Ho, i64 Wo, i64 Cout, i64 xsb, i64 xsp, i64 osb,
                        i64 osc, i64 osp, i64 msb, i64 msc, i64 msp, i64 q0, i64 q1, int part,
                        int nparts) {
#if ZSM_SIMD
    const i64 Cg = C / G, HWo = Ho * Wo, K = G * kh * kw * Cg;
    if (!simd_level() || !pairs_state || Cg % 8 || Cout % 16 || osc != 1 || msc != 1
        || K > FUSED_MAX_K)
        return 0;
    const i64 nblocks = (q1 - q0 + FUSED_ROWS - 1) / FUSED_ROWS;
    const i64 qa = q0 + nblocks * part / nparts * FUSED_ROWS;
    i64 qb = q0 + nblocks * (part + 1) / nparts * FUSED_ROWS;
    qb = qb < q1 ? qb : q1;
    bf16 buf[FUSED_ROWS * K];
    for (i64 q = qa; q < qb;) { /* the part's rows, image by image */
        const i64 b = q / HWo, p0 = q - b * HWo;
        const i64 n = (b + 1) * HWo < qb ? (b + 1) * HWo - q : qb - q;
        simd_forward(p0, n, offset + b * osb + p0 * osp, osp, mask + b * msb + p0 * msp, msp,
                     x + b * xsb, wp, bias, out + (q - q0) * Cout, buf, Cout, H, W, xsp, Cg, G,
                     kh, kw, pad, Wo, Cg);
        q += n;
    }
    return 1;
#else
    (void)x, (void)offset, (void)mask, (void)wp, (void)bias, (void)out, (void)H, (void)W;
    (void)C, (void)G, (void)kh, (void)kw, (void)pad, (void)Ho, (void)Wo, (void)Cout;
    (void)xsb, (void)xsp, (void)osb, (void)osc, (void)osp, (void)msb, (void)msc, (void)msp;
    (void)q0, (void)q1, (void)part, (void)nparts;
    return 0;
#endif
}

/* nthreads > 1 (OpenMP builds): all nthreads parts in parallel; else part `part`. */
int zsm_dcn_forward_bf16(ZSM_DCN_FORWARD_BF16_PARAMS) {
#if defined(_OPENMP)
    if (nthreads > 1) {
        int ok = 1;
#pragma omp parallel num_threads(nthreads) reduction(& : ok)
        ok = forward_part(x, offset, mask, wp, bias, out, H, W, C, G, kh, kw, pad, Ho, Wo, Cout,
                          xsb, xsp, osb, osc, osp, msb, msc, msp, q0, q1, omp_get_thread_num(),
                          omp_get_num_threads());
        return ok;
    }
#endif
    (void)nthreads;
    return forward_part(x, offset, mask, wp, bias, out, H, W, C, G, kh, kw, pad, Ho, Wo, Cout,
                        xsb, xsp, osb, osc, osp, msb, msc, msp, q0, q1, part, nparts);
}

/* The offsets and mask of a deformable conv from its offset/mask conv's output (see
   simd_offsets_mask), rows [q0, q1) of B * HW positions: in (bf16 or float32, one of
   in_f32 / in_bf16 given) and out float32 rows of C3 channels, base (dx, dy) of position
   q at base + (q / HW) * bsb + (q % HW) * bsp, dy bsc further (may be NULL).  1 if it
   ran; 0 (nothing written) without AVX-512 here or with over 1024 channels. */
int zsm_dcn_offsets_mask(ZSM_DCN_OFFSETS_MASK_PARAMS) {
#if ZSM_SIMD
    if (!simd_level() || C3 > 1024) return 0;
    const void *in = in_bf16 ? (const void *)in_bf16 : (const void *)in_f32;
    const int bf = in_bf16 != 0;
    const i64 bfirst = q0 / HW, bend = (q1 - 1) / HW + 1;
    (void)nthreads;
#if defined(_OPENMP)
#pragma omp parallel for schedule(static) num_threads(nthreads) if (nthreads > 1)
#endif
    for (i64 b = bfirst; b < bend; ++b) {
        const i64 pa = (b * HW > q0 ? b * HW : q0), pb = ((b + 1) * HW < q1 ? (b + 1) * HW : q1);
        const float *bx = base ? base + b * bsb + (pa - b * HW) * bsp : 0;
        const void *ib = bf ? (const void *)((const bf16 *)in + pa * C3)
                            : (const void *)((const float *)in + pa * C3);
        simd_offsets_mask(ib, bf, bx, bx ? bx + bsc : 0, bsp, out + pa * C3, pb - pa, C3, P2, r);
    }
    return 1;
#else
    (void)in_f32, (void)in_bf16, (void)base, (void)out, (void)HW, (void)C3, (void)P2;
    (void)bsb, (void)bsc, (void)bsp, (void)q0, (void)q1, (void)r, (void)nthreads;
    return 0;
#endif
}

/* An NHWC image batch (B x H x W pixels of C channels; bf16 or float32, one of in_f32 /
   in_bf16, out the same dtype) warped along a flow (dx, dy) in pixels, element (b, ch, p)
   at flow + b * fsb + ch * fsc + p * fsp (see simd_warp_rows).  1 if it ran; 0 (nothing
   written) without AVX-512 here. */
int zsm_warp_nhwc(ZSM_WARP_NHWC_PARAMS) {
#if ZSM_SIMD
    if (!simd_level()) return 0;
    const int bf = in_bf16 != 0;
    const void *in = bf ? (const void *)in_bf16 : (const void *)in_f32;
    void *out = bf ? (void *)out_bf16 : (void *)out_f32;
    const i64 HW = H * W, rows = 64;
    const i64 nblk = (HW + rows - 1) / rows;
    (void)nthreads;
#if defined(_OPENMP)
#pragma omp parallel for schedule(static) num_threads(nthreads) if (nthreads > 1)
#endif
    for (i64 t = 0; t < B * nblk; ++t) {
        const i64 b = t / nblk, p0 = (t - b * nblk) * rows;
        const i64 n = p0 + rows < HW ? rows : HW - p0;
        const i64 ioff = b * HW * C;
        const void *ib = bf ? (const void *)((const bf16 *)in + ioff)
                            : (const void *)((const float *)in + ioff);
        void *ob = bf ? (void *)((bf16 *)out + ioff) : (void *)((float *)out + ioff);
        simd_warp_rows(ib, bf, flow + b * fsb, flow + b * fsb + fsc, fsp, ob, p0, n, H, W, C);
    }
    return 1;
#else
    (void)in_f32, (void)in_bf16, (void)flow, (void)fsb, (void)fsc, (void)fsp, (void)out_f32;
    (void)out_bf16, (void)B, (void)H, (void)W, (void)C, (void)nthreads;
    return 0;
#endif
}
