/* zsm: AVX-512 (with AVX512-BF16) forms of the DCN kernel's inner loops; included by
   dcn_cpu.c after its Tile and bf16 definitions.

   Compiled for that ISA by function attributes whatever -march says, and called only
   where the CPU has it (simd_level(); zsm_dcn_simd switches it off, as
   ZSM_DCN_SIMD=0 does from Python): the portable loops in dcn_cpu.c stay the
   fallback and the reference.  Same arithmetic as those loops: the corners and
   weights bit for bit, the samples as fused multiply-adds in the same order, bf16
   rounded to nearest even (vcvtneps2bf16).  -DZSM_NO_SIMD builds without them, as on
   other CPUs (tests/test_dcn_native.py checks that it compiles cleanly). */
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__)) && !defined(ZSM_NO_SIMD)
#define ZSM_SIMD 1
#include <immintrin.h>
#define SIMD_TARGET __attribute__((target("avx512f,avx512dq,avx512bw,avx512vl,avx512bf16,fma")))

/* 1: AVX-512 with BF16 here and not switched off; 0: portable. */
static int simd_state = -1;

static int simd_level(void) {
    if (simd_state < 0) {
        __builtin_cpu_init();
        simd_state = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw")
                     && __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq")
                     && __builtin_cpu_supports("avx512bf16");
    }
    return simd_state;
}

/* The corners of 16 sampling positions (y, x) with masks m: tile_corners' arithmetic,
   lane by lane.  Corner offsets are in elements of one group's image (pixels C apart). */
typedef struct {
    __m512i o[4];    /* corner element offsets 00, 01, 10, 11 */
    __m512 w[4];     /* bilinear weight x mask, 0 outside */
    __mmask16 c[4];  /* the corner is inside the image */
    __mmask16 in;    /* some corner is */
    __m512 ly, lx;   /* fractions of the position */
} SimdCorners;

SIMD_TARGET static inline __attribute__((always_inline)) void
simd_corner_math(SimdCorners *restrict r, __m512 y, __m512 x, __m512 m, float hm1f, float wm1f,
                 __m512i Wi, __m512i Ci) {
    const __m512 zero = _mm512_setzero_ps(), one = _mm512_set1_ps(1.0f);
    const __m512 mone = _mm512_set1_ps(-1.0f);
    const __m512 hm1 = _mm512_set1_ps(hm1f), wm1 = _mm512_set1_ps(wm1f);
    const __m512 hm2 = _mm512_set1_ps(hm1f - 1.0f), wm2 = _mm512_set1_ps(wm1f - 1.0f);
    const __m512 fy = _mm512_roundscale_ps(y, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
    const __m512 fx = _mm512_roundscale_ps(x, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
    const __m512 ly = _mm512_sub_ps(y, fy), lx = _mm512_sub_ps(x, fx);
    const __mmask16 vy0 =
        _mm512_cmp_ps_mask(fy, zero, _CMP_GE_OQ) & _mm512_cmp_ps_mask(fy, hm1, _CMP_LE_OQ);
    const __mmask16 vy1 =
        _mm512_cmp_ps_mask(fy, mone, _CMP_GE_OQ) & _mm512_cmp_ps_mask(fy, hm2, _CMP_LE_OQ);
    const __mmask16 vx0 =
        _mm512_cmp_ps_mask(fx, zero, _CMP_GE_OQ) & _mm512_cmp_ps_mask(fx, wm1, _CMP_LE_OQ);
    const __mmask16 vx1 =
        _mm512_cmp_ps_mask(fx, mone, _CMP_GE_OQ) & _mm512_cmp_ps_mask(fx, wm2, _CMP_LE_OQ);
    /* clamped into the image; max(NaN, 0) is 0 (the second operand) */
    const __m512 fy1 = _mm512_add_ps(fy, one), fx1 = _mm512_add_ps(fx, one);
    const __m512i y0 = _mm512_cvttps_epi32(_mm512_min_ps(_mm512_max_ps(fy, zero), hm1));
    const __m512i y1 = _mm512_cvttps_epi32(_mm512_min_ps(_mm512_max_ps(fy1, zero), hm1));
    const __m512i x0 = _mm512_cvttps_epi32(_mm512_min_ps(_mm512_max_ps(fx, zero), wm1));
    const __m512i x1 = _mm512_cvttps_epi32(_mm512_min_ps(_mm512_max_ps(fx1, zero), wm1));
    const __m512i r0 = _mm512_mullo_epi32(y0, Wi), r1 = _mm512_mullo_epi32(y1, Wi);
    r->o[0] = _mm512_mullo_epi32(_mm512_add_epi32(r0, x0), Ci);
    r->o[1] = _mm512_mullo_epi32(_mm512_add_epi32(r0, x1), Ci);
    r->o[2] = _mm512_mullo_epi32(_mm512_add_epi32(r1, x0), Ci);
    r->o[3] = _mm512_mullo_epi32(_mm512_add_epi32(r1, x1), Ci);
    const __m512 hy = _mm512_sub_ps(one, ly), hx = _mm512_sub_ps(one, lx);
    r->c[0] = vy0 & vx0, r->c[1] = vy0 & vx1, r->c[2] = vy1 & vx0, r->c[3] = vy1 & vx1;
    r->w[0] = _mm512_maskz_mul_ps(r->c[0], m, _mm512_mul_ps(hy, hx));
    r->w[1] = _mm512_maskz_mul_ps(r->c[1], m, _mm512_mul_ps(hy, lx));
    r->w[2] = _mm512_maskz_mul_ps(r->c[2], m, _mm512_mul_ps(ly, hx));
    r->w[3] = _mm512_maskz_mul_ps(r->c[3], m, _mm512_mul_ps(ly, lx));
    r->in = (vy0 | vy1) & (vx0 | vx1);
    r->ly = ly, r->lx = lx;
}

/* tile_corners, 16 points per step. */
SIMD_TARGET static void simd_corners(Tile *restrict t, i64 n, const float *restrict oy,
                                     const float *restrict ox, const float *restrict mk,
                                     float fi, float fj, i64 H, i64 W, i64 C, int full) {
    const __m512 one = _mm512_set1_ps(1.0f);
    const __m512 vfi = _mm512_set1_ps(fi), vfj = _mm512_set1_ps(fj);
    const __m512i Wi = _mm512_set1_epi32((int)W), Ci = _mm512_set1_epi32((int)C);
    SimdCorners r;
    for (i64 p = 0; p < n; p += 16) {
        const __mmask16 k = n - p >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (n - p)) - 1u);
        const __m512 y = _mm512_add_ps(_mm512_add_ps(_mm512_loadu_ps(t->by + p), vfi),
                                       _mm512_maskz_loadu_ps(k, oy + p));
        const __m512 x = _mm512_add_ps(_mm512_add_ps(_mm512_loadu_ps(t->bx + p), vfj),
                                       _mm512_maskz_loadu_ps(k, ox + p));
        simd_corner_math(&r, y, x, _mm512_maskz_loadu_ps(k, mk + p), (float)(H - 1),
                         (float)(W - 1), Wi, Ci);
        for (int c = 0; c < 4; ++c) {
            _mm512_storeu_si512(t->o[c] + p, r.o[c]);
            _mm512_storeu_ps(t->w[c] + p, r.w[c]);
        }
        if (!full) continue;
        for (int c = 0; c < 4; ++c) _mm512_storeu_ps(t->v[c] + p, _mm512_maskz_mov_ps(r.c[c], one));
        _mm512_storeu_ps(t->ly + p, _mm512_maskz_mov_ps(r.in, r.ly));
        _mm512_storeu_ps(t->lx + p, _mm512_maskz_mov_ps(r.in, r.lx));
    }
}

SIMD_TARGET static inline __m256 simd_ld8(const bf16 *p) {
    return _mm256_castsi256_ps(
        _mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p)), 16));
}

SIMD_TARGET static inline void simd_st8(bf16 *p, __m256 v) {
    _mm_storeu_si128((__m128i *)p, (__m128i)_mm256_cvtneps_pbh(v));
}

/* Sample = sum of the 4 weighted corners, 8 channels at a time (Cg % 8 == 0). */
SIMD_TARGET static inline __m256 simd_sample(__m256 a0, __m256 a1, __m256 a2, __m256 a3,
                                             __m256 x0, __m256 x1, __m256 x2, __m256 x3) {
    __m256 acc = _mm256_mul_ps(a0, x0);
    acc = _mm256_fmadd_ps(a1, x1, acc);
    acc = _mm256_fmadd_ps(a2, x2, acc);
    return _mm256_fmadd_ps(a3, x3, acc);
}

/* One row of Cg columns (Cg % 8 == 0): the 4 corners of x at o0..o3, weighted. */
#define SIMD_ROW(LD, x, o0, o1, o2, o3, w0, w1, w2, w3, dst, Cg) \
    do { \
        const __m256 a0_ = _mm256_set1_ps(w0), a1_ = _mm256_set1_ps(w1); \
        const __m256 a2_ = _mm256_set1_ps(w2), a3_ = _mm256_set1_ps(w3); \
        for (i64 c_ = 0; c_ < (Cg); c_ += 8) \
            simd_st8((dst) + c_, simd_sample(a0_, a1_, a2_, a3_, LD((x) + (o0) + c_), \
                                             LD((x) + (o1) + c_), LD((x) + (o2) + c_), \
                                             LD((x) + (o3) + c_))); \
    } while (0)
#define SIMD_LD_F32(p) _mm256_loadu_ps(p)

/* The forward rows of a tile for one (group, kernel point): bf16 x -> bf16 columns
   (the row of point p at cols + p * K), Cg % 8 == 0. */
SIMD_TARGET static void simd_rows_bf16(const Tile *restrict t, i64 n, const bf16 *restrict xg,
                                       bf16 *restrict cols, i64 K, i64 Cg) {
    for (i64 p = 0; p < n; ++p, cols += K)
        SIMD_ROW(simd_ld8, xg, t->o[0][p], t->o[1][p], t->o[2][p], t->o[3][p], t->w[0][p],
                 t->w[1][p], t->w[2][p], t->w[3][p], cols, Cg);
}

/* The same from float32 x. */
SIMD_TARGET static void simd_rows_f32(const Tile *restrict t, i64 n, const float *restrict xg,
                                      bf16 *restrict cols, i64 K, i64 Cg) {
    for (i64 p = 0; p < n; ++p, cols += K)
        SIMD_ROW(SIMD_LD_F32, xg, t->o[0][p], t->o[1][p], t->o[2][p], t->o[3][p], t->w[0][p],
                 t->w[1][p], t->w[2][p], t->w[3][p], cols, Cg);
}

/* The len < 16 floats before end in lanes 0 .. len-1, the other lanes 0; avail floats
   before end are readable.  An unmasked load and a lane shift where 16 are: a masked
   load stalls on AMD Zen 4 (simd_pairs with masked loads: 1.3-1.4x slower than the
   per-tile forward; with these, 1.1-1.3x faster). */
SIMD_TARGET static inline __m512 simd_tail(const float *end, i64 len, i64 avail) {
    const __mmask16 k = (__mmask16)((1u << len) - 1u);
    if (avail < 16) return _mm512_maskz_loadu_ps(k, end - len);
    const __m512i lanes = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    const __m512i idx = _mm512_add_epi32(lanes, _mm512_set1_epi32((int)(16 - len)));
    return _mm512_maskz_permutexvar_ps(k, idx, _mm512_loadu_ps(end - 16));
}

/* The corners of 16 (group, kernel point) pairs of a position, as simd_pairs keeps them. */
typedef struct {
    i32 o[4][16];   /* element offsets of corners 00, 01, 10, 11 (the group's included) */
    float w[4][16]; /* their bilinear weights x mask */
} PairBlock;

/* Positions whose corners simd_pairs computes before sampling their rows: far enough
   apart that the rows' scalar loads of the corners find their vector stores retired
   (store-to-load forwarding from a 64-byte store to a 4-byte load stalls). */
#define PAIR_BATCH 2
#ifndef PF_AHEAD
#define PF_AHEAD 4
#endif

/* The bf16 columns of n output positions from p0 on (image-relative), for offsets and
   mask whose channels are adjacent (NHWC: op[2 * ch] = dy, op[2 * ch + 1] = dx and mp[ch]
   of position p at ob + p * osp, mb + p * msp), vectorised over the (group, kernel point)
   pairs ch of each position rather than over positions: no transposition of the
   offsets and mask, and each position's row of columns written in order.  The same
   positions, corners and samples as simd_corners + simd_rows_*, bit for bit.
   xb: image b's first element; group g's channels at xb + g * xsg. */
SIMD_TARGET static void simd_pairs(i64 p0, i64 n, const float *restrict ob, i64 osp,
                                   const float *restrict mb, i64 msp, const void *restrict xb,
                                   const int xbf, bf16 *restrict cols, i64 H, i64 W, i64 xsp,
                                   i64 xsg, i64 G, i64 kh, i64 kw, i64 pad, i64 Wo, i64 Cg) {
    const i64 KK = kh * kw, GKK = G * KK, K = GKK * Cg, NB = (GKK + 15) / 16 * 16;
    float fi[NB], fj[NB];
    i32 go[NB];
    /* the corners of 16 pairs: one pointer and constant displacements reach all eight of
       a pair's (with eight arrays gcc ran out of registers and kept a pointer on the
       stack, a store-to-load round trip every pair) */
    PairBlock blk[PAIR_BATCH * NB / 16];
    for (i64 ch = 0; ch < NB; ++ch) { /* kernel point and group of pair ch */
        const i64 kp = ch % KK;
        fi[ch] = (float)(kp / kw);
        fj[ch] = (float)(kp % kw);
        go[ch] = (i32)((ch / KK) * xsg);
    }
    const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26,
                                           28, 30);
    const __m512i odd = _mm512_add_epi32(even, _mm512_set1_epi32(1));
    const __m512i Wi = _mm512_set1_epi32((int)W), Ci = _mm512_set1_epi32((int)xsp);
    const float hm1 = (float)(H - 1), wm1 = (float)(W - 1);
    SimdCorners r;
    i64 h = p0 / Wo, x = p0 - h * Wo;
    for (i64 q0 = 0; q0 < n; q0 += PAIR_BATCH) {
        const i64 nq = n - q0 < PAIR_BATCH ? n - q0 : PAIR_BATCH;
        for (i64 q = 0; q < nq; ++q) { /* the corners of the batch's positions */
            const __m512 by = _mm512_set1_ps((float)(h - pad));
            const __m512 bx = _mm512_set1_ps((float)(x - pad));
            const float *op = ob + (q0 + q) * osp, *mp = mb + (q0 + q) * msp;
            if (q0 + q + PF_AHEAD < n) { /* the offsets and mask of a position ahead */
                const char *po = (const char *)(op + PF_AHEAD * osp);
                const char *pm = (const char *)(mp + PF_AHEAD * msp);
                for (i64 l = 0; l < 2 * GKK * 4; l += 64) _mm_prefetch(po + l, _MM_HINT_T0);
                for (i64 l = 0; l < GKK * 4; l += 64) _mm_prefetch(pm + l, _MM_HINT_T0);
            }
            for (i64 c0 = 0; c0 < GKK; c0 += 16) {
                const i64 nb = GKK - c0 < 16 ? GKK - c0 : 16, n2 = 2 * nb;
                /* The last block's tails end where the position's channels end. */
                const __m512 lo = n2 >= 16 ? _mm512_loadu_ps(op + 2 * c0)
                                           : simd_tail(op + 2 * GKK, n2, 2 * GKK);
                const __m512 hi = n2 >= 32  ? _mm512_loadu_ps(op + 2 * c0 + 16)
                                  : n2 > 16 ? simd_tail(op + 2 * GKK, n2 - 16, 2 * GKK)
                                            : _mm512_setzero_ps();
                const __m512 m = nb == 16 ? _mm512_loadu_ps(mp + c0) : simd_tail(mp + GKK, nb, GKK);
                const __m512 y = _mm512_add_ps(_mm512_add_ps(by, _mm512_loadu_ps(fi + c0)),
                                               _mm512_permutex2var_ps(lo, even, hi));
                const __m512 xx = _mm512_add_ps(_mm512_add_ps(bx, _mm512_loadu_ps(fj + c0)),
                                                _mm512_permutex2var_ps(lo, odd, hi));
                simd_corner_math(&r, y, xx, m, hm1, wm1, Wi, Ci);
                const __m512i g = _mm512_loadu_si512(go + c0);
                PairBlock *pb = blk + (q * NB + c0) / 16;
                for (int c = 0; c < 4; ++c) {
                    _mm512_storeu_si512(pb->o[c], _mm512_add_epi32(r.o[c], g));
                    _mm512_storeu_ps(pb->w[c], r.w[c]);
                }
            }
            if (++x == Wo) {
                x = 0;
                ++h;
            }
        }
        for (i64 q = 0; q < nq; ++q, cols += K) { /* their rows, in order */
            bf16 *dst = cols;
            for (i64 c0 = 0; c0 < GKK; c0 += 16) {
                const PairBlock *pb = blk + (q * NB + c0) / 16;
                const i64 nj = GKK - c0 < 16 ? GKK - c0 : 16;
#define PAIR_ROW(LD, X, CG) \
    SIMD_ROW(LD, X, pb->o[0][j], pb->o[1][j], pb->o[2][j], pb->o[3][j], pb->w[0][j], pb->w[1][j], \
             pb->w[2][j], pb->w[3][j], dst, CG)
                if (xbf && Cg == 8) /* both presets: one register a row, no channel loop */
                    for (i64 j = 0; j < nj; ++j, dst += 8) PAIR_ROW(simd_ld8, (const bf16 *)xb, 8);
                else if (xbf)
                    for (i64 j = 0; j < nj; ++j, dst += Cg) PAIR_ROW(simd_ld8, (const bf16 *)xb, Cg);
                else
                    for (i64 j = 0; j < nj; ++j, dst += Cg)
                        PAIR_ROW(SIMD_LD_F32, (const float *)xb, Cg);
#undef PAIR_ROW
            }
        }
    }
}

/* Positions whose columns the fused forward samples at a time (simd_forward): a
   buffer of FUSED_ROWS * K bf16 that stays in L1 for the compact preset (K 288:
   14 KB) and in L2 for the official one (K 576: 28 KB), multiplied while there. */
#define FUSED_ROWS 24
#define FUSED_MAX_K 8192 /* columns per row: 384 KB a block */

/* Small GEMMs with vdpbf16ps, the reduction in pairs: row r of A holds its pair k at
   a[r * lda + k * ska] (two bf16 in one 32-bit word), and pair row k of W holds output o's
   two bf16 at w[k * ldw + 2 o] and the next, so one 32-bit broadcast of A's pair times
   one 64-byte load of W (16 outputs' pairs) is 32 multiply-adds.  A block of NP rows
   x 16 NB outputs (nout of them valid, np rows stored): ACC 0 stores acc + bias
   (float32, may be NULL) as bf16 rows (ldo apart), ACC 1 adds acc to float32 rows.
   One function per (ACC, NP, NB), the sizes literal, so that the NP x NB
   accumulators (24 of the 32 registers) stay in registers (with the sizes as inlined
   arguments gcc kept them in memory).  Rows past np and outputs past nout are
   computed from whatever A and W hold there (in bounds: the callers pad both). */
#define SIMD_GEMM_BLOCK(ACC, NP, NB) \
    SIMD_TARGET static void simd_gemm_##ACC##_##NP##x##NB( \
        const i32 *restrict a, i64 lda, i64 ska, const bf16 *restrict w, i64 ldw, \
        i64 npairs, const float *restrict bias, void *restrict out, i64 ldo, i64 np, \
        i64 nout) { \
        __m512 acc[NP][NB]; \
        __mmask16 m[NB]; \
        _Pragma("GCC unroll 8") for (int j = 0; j < NB; ++j) { \
            const i64 r = nout - 16 * j; \
            m[j] = r >= 16 ? (__mmask16)0xFFFF : r > 0 ? (__mmask16)((1u << r) - 1u) : 0; \
            const __m512 b = \
                !ACC && bias ? _mm512_maskz_loadu_ps(m[j], bias + 16 * j) : _mm512_setzero_ps(); \
            _Pragma("GCC unroll 24") for (int p = 0; p < NP; ++p) acc[p][j] = b; \
        } \
        for (i64 k = 0; k < npairs; ++k, w += ldw) { \
            __m512bh wv[NB]; \
            _Pragma("GCC unroll 8") for (int j = 0; j < NB; ++j) \
                wv[j] = (__m512bh)_mm512_loadu_si512(w + 32 * j); \
            _Pragma("GCC unroll 24") for (int p = 0; p < NP; ++p) { \
                const __m512bh av = (__m512bh)_mm512_set1_epi32(a[p * lda + k * ska]); \
                _Pragma("GCC unroll 8") for (int j = 0; j < NB; ++j) \
                    acc[p][j] = _mm512_dpbf16_ps(acc[p][j], av, wv[j]); \
            } \
        } \
        _Pragma("GCC unroll 24") for (int p = 0; p < NP; ++p) { \
            if (p >= np) break; \
            _Pragma("GCC unroll 8") for (int j = 0; j < NB; ++j) { \
                if (ACC) { \
                    float *o = (float *)out + p * ldo + 16 * j; \
                    _mm512_mask_storeu_ps( \
                        o, m[j], _mm512_add_ps(acc[p][j], _mm512_maskz_loadu_ps(m[j], o))); \
                } else { \
                    _mm256_mask_storeu_epi16((bf16 *)out + p * ldo + 16 * j, m[j], \
                                             (__m256i)_mm512_cvtneps_pbh(acc[p][j])); \
                } \
            } \
        } \
    }
SIMD_GEMM_BLOCK(0, 6, 4)
SIMD_GEMM_BLOCK(0, 8, 3)
SIMD_GEMM_BLOCK(0, 12, 2)
SIMD_GEMM_BLOCK(0, 24, 1)
SIMD_GEMM_BLOCK(1, 6, 4)
SIMD_GEMM_BLOCK(1, 8, 3)
SIMD_GEMM_BLOCK(1, 12, 2)
SIMD_GEMM_BLOCK(1, 24, 1)

/* Rows that simd_gemm reads past n: a multiple of every NP above. */
#define GEMM_ROWS(n) (((n) + 23) / 24 * 24)
/* bf16 that simd_gemm reads past the last output of W's last pair row. */
#define GEMM_W_PAD 128

/* The n rows x nout outputs of A @ W (see SIMD_GEMM_BLOCK; acc: add to float32 out,
   else store bf16 out + bias), 64 outputs at a time; A readable for GEMM_ROWS(n)
   rows, W for GEMM_W_PAD bf16 past its last output. */
SIMD_TARGET static void simd_gemm(int acc, const i32 *restrict a, i64 lda, i64 ska,
                                  const bf16 *restrict w, i64 ldw, i64 npairs,
                                  const float *restrict bias, void *restrict out, i64 ldo, i64 n,
                                  i64 nout) {
    const i64 osize = acc ? 4 : 2;
    for (i64 o0 = 0; o0 < nout; o0 += 64) {
        const i64 no = nout - o0 < 64 ? nout - o0 : 64, nb = (no + 15) / 16;
        const i64 NP = nb == 4 ? 6 : nb == 3 ? 8 : nb == 2 ? 12 : 24;
        const bf16 *wb = w + 2 * o0;
        const float *bb = bias ? bias + o0 : NULL;
        for (i64 r = 0; r < n; r += NP) {
            const i64 np = n - r < NP ? n - r : NP;
            const i32 *ar = a + r * lda;
            void *ob = (char *)out + (r * ldo + o0) * osize;
#define SIMD_GEMM_CALL(NP_, NB_) \
    (acc ? simd_gemm_1_##NP_##x##NB_(ar, lda, ska, wb, ldw, npairs, bb, ob, ldo, np, no) \
         : simd_gemm_0_##NP_##x##NB_(ar, lda, ska, wb, ldw, npairs, bb, ob, ldo, np, no))
            switch (nb) {
            case 4: SIMD_GEMM_CALL(6, 4); break;
            case 3: SIMD_GEMM_CALL(8, 3); break;
            case 2: SIMD_GEMM_CALL(12, 2); break;
            default: SIMD_GEMM_CALL(24, 1); break;
            }
#undef SIMD_GEMM_CALL
        }
    }
}

/* The deformable conv's output rows (NHWC, bf16, Cout apart) of n positions from p0 on:
   simd_pairs' columns of FUSED_ROWS positions at a time into buf (FUSED_ROWS * K bf16,
   rows past a block's end are read and not stored), each block multiplied at once by
   the packed weights (see SIMD_GEMM_BLOCK; Cout % 16 == 0), 64 outputs at a time.  The
   columns never leave the cache, unlike im2col's chunks + a GEMM. */
SIMD_TARGET static void simd_forward(i64 p0, i64 n, const float *restrict ob, i64 osp,
                                     const float *restrict mb, i64 msp, const bf16 *restrict xb,
                                     const bf16 *restrict wp, const float *restrict bias,
                                     bf16 *restrict out, bf16 *restrict buf, i64 Cout, i64 H,
                                     i64 W, i64 xsp, i64 xsg, i64 G, i64 kh, i64 kw, i64 pad,
                                     i64 Wo, i64 Cg) {
    const i64 K = G * kh * kw * Cg;
    for (i64 q = 0; q < n; q += FUSED_ROWS) {
        const i64 m = n - q < FUSED_ROWS ? n - q : FUSED_ROWS;
        simd_pairs(p0 + q, m, ob + q * osp, osp, mb + q * msp, msp, xb, 1, buf, H, W, xsp, xsg,
                   G, kh, kw, pad, Wo, Cg);
        if (m < FUSED_ROWS) /* rows multiplied but not stored: finite, whatever was there */
            memset(buf + m * K, 0, sizeof(bf16) * (size_t)((FUSED_ROWS - m) * K));
        simd_gemm(0, (const i32 *)buf, K / 2, 1, wp, 2 * Cout, K / 2, bias, out + q * Cout, Cout,
                  m, Cout);
    }
}

/* dst[(pp * ld + k) * 2 + e] = src[(2 pp + e) * ld + k] for rows 2 pp + e < n (rows past n:
   0) and k in [k0, k1): pairs of rows interleaved, the layout of a reduction over rows
   in pairs (SIMD_GEMM_BLOCK's A or W). */
SIMD_TARGET static void simd_pair_rows(const bf16 *restrict src, i64 ld, i64 n, i64 k0, i64 k1,
                                       bf16 *restrict dst) {
    static const uint16_t lanes[32] = {0,  32, 1,  33, 2,  34, 3,  35, 4,  36, 5,
                                       37, 6,  38, 7,  39, 8,  40, 9,  41, 10, 42,
                                       11, 43, 12, 44, 13, 45, 14, 46, 15, 47};
    const __m512i lo = _mm512_loadu_si512(lanes); /* row 0's element i, row 1's, i + 1 ... */
    const __m512i hi = _mm512_add_epi16(lo, _mm512_set1_epi16(16));
    for (i64 pp = 0; 2 * pp < n; ++pp) {
        const bf16 *r0 = src + 2 * pp * ld, *r1 = r0 + ld;
        const int has1 = 2 * pp + 1 < n;
        bf16 *d = dst + 2 * pp * ld;
        for (i64 k = k0; k < k1; k += 32) {
            const i64 left = k1 - k;
            const __mmask32 m = left >= 32 ? (__mmask32)0xFFFFFFFFu : (__mmask32)((1u << left) - 1u);
            const __m512i v0 = _mm512_maskz_loadu_epi16(m, r0 + k);
            const __m512i v1 = has1 ? _mm512_maskz_loadu_epi16(m, r1 + k) : _mm512_setzero_si512();
            const __mmask32 m0 = left >= 16 ? (__mmask32)0xFFFFFFFFu : (__mmask32)((1u << 2 * left) - 1u);
            const __mmask32 m1 = left >= 32 ? (__mmask32)0xFFFFFFFFu
                                 : left > 16 ? (__mmask32)((1u << 2 * (left - 16)) - 1u)
                                             : 0;
            _mm512_mask_storeu_epi16(d + 2 * k, m0, _mm512_permutex2var_epi16(v0, lo, v1));
            _mm512_mask_storeu_epi16(d + 2 * k + 32, m1, _mm512_permutex2var_epi16(v0, hi, v1));
        }
    }
}

/* The fused backward's scratch for one tile (allocated once per part). */
typedef struct {
    bf16 *go;  /* GEMM_ROWS(TILE) x Cout: the tile's grad_out rows, then zeros */
    bf16 *gc;  /* TILE x K: the tile's grad_col rows (bf16, as a bf16 GEMM gives them) */
    bf16 *c;   /* TILE x K: its columns, sampled again */
    bf16 *ci;  /* the columns, rows paired (simd_pair_rows), + GEMM_W_PAD */
    bf16 *goi; /* grad_out rows paired, + GEMM_ROWS(Cout) pairs */
} FusedBwd;

/* grad_col rows [k0, k1) of a tile of n positions: its grad_out rows (Cout, bf16, at
   go) @ W, W packed as (Cout / 2, K, 2) bf16 (wq, GEMM_W_PAD readable past its end). */
SIMD_TARGET static void simd_tile_gcols(FusedBwd *f, const bf16 *restrict go, i64 n, i64 Cout,
                                        const bf16 *restrict wq, i64 K, i64 k0, i64 k1) {
    memcpy(f->go, go, sizeof(bf16) * (size_t)(n * Cout));
    if (n < TILE) memset(f->go + n * Cout, 0, sizeof(bf16) * (size_t)((TILE - n) * Cout));
    simd_gemm(0, (const i32 *)f->go, Cout / 2, 1, wq + 2 * k0, 2 * K, Cout / 2, NULL, f->gc + k0,
              K, n, k1 - k0);
}

/* gw (float32 Cout x K) columns [k0, k1) += the tile's grad_out rows^T @ its columns
   (f->c), the reduction over the n positions in pairs. */
SIMD_TARGET static void simd_tile_gw(FusedBwd *f, i64 n, i64 Cout, i64 K, i64 k0, i64 k1,
                                     float *restrict gw) {
    const i64 npp = (n + 1) / 2;
    simd_pair_rows(f->c, K, n, k0, k1, f->ci);
    simd_pair_rows(f->go, Cout, n, 0, Cout, f->goi);
    /* A: row o = output channel o, pair pp at goi[pp * Cout + o]; W: the paired columns */
    simd_gemm(1, (const i32 *)f->goi, 1, Cout, f->ci + 2 * k0, 2 * K, npp, NULL, gw + k0, K,
              Cout, k1 - k0);
}

/* exp(x), 16 lanes: Cephes' expf (a degree-6 polynomial on x - n ln 2, scaled by 2^n),
   about 2 ulp; x clamped to [-88, 88]. */
SIMD_TARGET static inline __m512 simd_exp(__m512 x) {
    x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-88.0f)), _mm512_set1_ps(88.0f));
    const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                          _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
    __m512 p = _mm512_set1_ps(1.9875691500e-4f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
    const __m512 y = _mm512_add_ps(_mm512_fmadd_ps(_mm512_mul_ps(p, r), r, r),
                                   _mm512_set1_ps(1.0f));
    return _mm512_scalef_ps(y, n);
}

/* The offsets and mask of a deformable conv from its offset/mask conv's NHWC rows (C3 =
   P2 offsets then P2 / 2 mask logits per position, bf16 or float32): out rows (float32,
   C3 apart) = base + r tanh(offset) (or the offset as it is where r is 0) then
   sigmoid(logit); base (dx, dy) per position (may be NULL: 0), added as (dy, dx) to
   every pair.  tanh(v) = 2 sigmoid(2 v) - 1 and one sigmoid per 16 lanes, whichever
   part they are in: lane constants k (2 or 1), a and b (2 r, -r or 1, 0). */
SIMD_TARGET static void simd_offsets_mask(const void *restrict in, int in_bf16,
                                          const float *restrict bx, const float *restrict by,
                                          i64 bsp, float *restrict out, i64 n, i64 C3, i64 P2,
                                          float r) {
    enum { MAXV = 64 }; /* 1024 channels */
    __m512 kv[MAXV], av[MAXV], bv[MAXV];
    __mmask16 offm[MAXV], ldm[MAXV];
    const i64 nv = (C3 + 15) / 16;
    for (i64 v = 0; v < nv; ++v) {
        float k[16], a[16], b[16];
        __mmask16 om = 0, lm = 0;
        for (int l = 0; l < 16; ++l) {
            const i64 c = 16 * v + l;
            const int off = c < P2, tanh_ = off && r != 0.0f;
            k[l] = tanh_ ? 2.0f : 1.0f;
            a[l] = tanh_ ? 2.0f * r : 1.0f;
            b[l] = tanh_ ? -r : 0.0f;
            om |= (__mmask16)((off && c < C3) << l);
            lm |= (__mmask16)((c < C3) << l);
        }
        kv[v] = _mm512_loadu_ps(k), av[v] = _mm512_loadu_ps(a), bv[v] = _mm512_loadu_ps(b);
        offm[v] = om, ldm[v] = lm;
    }
    const __m512 one = _mm512_set1_ps(1.0f);
    for (i64 q = 0; q < n; ++q) {
        /* (dy, dx) in every pair of lanes */
        const float dy = by ? by[q * bsp] : 0.0f, dx = bx ? bx[q * bsp] : 0.0f;
        const __m512 base =
            _mm512_mask_blend_ps((__mmask16)0xAAAA, _mm512_set1_ps(dy), _mm512_set1_ps(dx));
        float *o = out + q * C3;
        for (i64 v = 0; v < nv; ++v) {
            const i64 c = 16 * v;
            __m512 x;
            if (in_bf16) {
                const __m256i h = _mm256_maskz_loadu_epi16(ldm[v], (const bf16 *)in + q * C3 + c);
                x = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
            } else {
                x = _mm512_maskz_loadu_ps(ldm[v], (const float *)in + q * C3 + c);
            }
            /* s = sigmoid(k x); out = a s + b (+ the base on offset lanes) */
            const __m512 e = simd_exp(_mm512_mul_ps(_mm512_sub_ps(_mm512_setzero_ps(), kv[v]), x));
            const __m512 sg = _mm512_div_ps(one, _mm512_add_ps(one, e));
            __m512 y = _mm512_fmadd_ps(av[v], sg, bv[v]);
            if (r == 0.0f) y = _mm512_mask_mov_ps(y, offm[v], x); /* the offsets as they are */
            y = _mm512_mask_add_ps(y, offm[v], y, base);
            _mm512_mask_storeu_ps(o + c, ldm[v], y);
        }
    }
}

/* Rows [p0, p0 + n) of one NHWC image (H x W pixels of C channels, bf16 or float32 in
   and out) sampled at (x + fx, y + fy): bilinear, the position clamped into the image
   (grid_sample's border padding, align_corners=False), in float32; flow (dx, dy) of
   pixel p at fx[p * fsp], fy[p * fsp]. */
SIMD_TARGET static void simd_warp_rows(const void *restrict in, int in_bf16, const float *fx,
                                       const float *fy, i64 fsp, void *restrict out, i64 p0,
                                       i64 n, i64 H, i64 W, i64 C) {
    const float wm1 = (float)(W - 1), hm1 = (float)(H - 1);
    for (i64 p = p0; p < p0 + n; ++p) {
        const i64 y = p / W, x = p - y * W;
        float px = (float)x + fx[p * fsp], py = (float)y + fy[p * fsp];
        px = px > 0.0f ? (px < wm1 ? px : wm1) : 0.0f; /* NaN -> 0 */
        py = py > 0.0f ? (py < hm1 ? py : hm1) : 0.0f;
        const i64 x0 = (i64)px, y0 = (i64)py;
        const i64 x1 = x0 + 1 < W ? x0 + 1 : x0, y1 = y0 + 1 < H ? y0 + 1 : y0;
        const float lx = px - (float)x0, ly = py - (float)y0;
        const __m512 w00 = _mm512_set1_ps((1.0f - ly) * (1.0f - lx));
        const __m512 w01 = _mm512_set1_ps((1.0f - ly) * lx);
        const __m512 w10 = _mm512_set1_ps(ly * (1.0f - lx));
        const __m512 w11 = _mm512_set1_ps(ly * lx);
        const i64 r00 = (y0 * W + x0) * C, r01 = (y0 * W + x1) * C;
        const i64 r10 = (y1 * W + x0) * C, r11 = (y1 * W + x1) * C;
        for (i64 c = 0; c < C; c += 16) {
            const __mmask16 m = C - c >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (C - c)) - 1u);
#define WARP_LD(r) \
    (in_bf16 ? _mm512_castsi512_ps(_mm512_slli_epi32( \
                   _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, (const bf16 *)in + (r) + c)), \
                   16)) \
             : _mm512_maskz_loadu_ps(m, (const float *)in + (r) + c))
            __m512 v = _mm512_mul_ps(w00, WARP_LD(r00));
            v = _mm512_fmadd_ps(w01, WARP_LD(r01), v);
            v = _mm512_fmadd_ps(w10, WARP_LD(r10), v);
            v = _mm512_fmadd_ps(w11, WARP_LD(r11), v);
#undef WARP_LD
            if (in_bf16)
                _mm256_mask_storeu_epi16((bf16 *)out + p * C + c, m, (__m256i)_mm512_cvtneps_pbh(v));
            else
                _mm512_mask_storeu_ps((float *)out + p * C + c, m, v);
        }
    }
}

/* gx row += a * g where the corner's weight is not 0. */
#define SIMD_SCATTER(d, a, w, g) \
    do { \
        if ((w) != 0.0f) _mm256_storeu_ps((d), _mm256_fmadd_ps((a), (g), _mm256_loadu_ps(d))); \
    } while (0)

/* backward_tile (dcn_cpu.c), Cg % 8 == 0.  Unrolled over the corners by hand: no
   per-point arrays (gcc keeps them on the stack, a store and a load each). */
SIMD_TARGET static void simd_backward_bf16(Tile *restrict t, i64 n, const bf16 *restrict xg,
                                           const bf16 *restrict gq, bf16 *restrict cq,
                                           float *restrict gxg, i64 K, i64 Cg, int need_s) {
    float sp[4 * TILE];
    if (Cg == 8 && cq && gxg && need_s) { /* training, both presets: one register a row */
        for (i64 p = 0; p < n; ++p, gq += K, cq += K) {
            /* a position's corners at constant displacements from one pointer each */
            const i32 *op = t->o[0] + p;
            const float *wp = t->w[0] + p;
            const i32 o0 = op[0], o1 = op[TILE], o2 = op[2 * TILE], o3 = op[3 * TILE];
            const float w0 = wp[0], w1 = wp[TILE], w2 = wp[2 * TILE], w3 = wp[3 * TILE];
            const __m256 a0 = _mm256_set1_ps(w0), a1 = _mm256_set1_ps(w1);
            const __m256 a2 = _mm256_set1_ps(w2), a3 = _mm256_set1_ps(w3);
            const __m256 x0 = simd_ld8(xg + o0), x1 = simd_ld8(xg + o1);
            const __m256 x2 = simd_ld8(xg + o2), x3 = simd_ld8(xg + o3);
            const __m256 g = simd_ld8(gq);
            simd_st8(cq, simd_sample(a0, a1, a2, a3, x0, x1, x2, x3));
            const __m256 zero = _mm256_setzero_ps();
            const __m256 h = _mm256_hadd_ps(
                _mm256_hadd_ps(_mm256_fmadd_ps(g, x0, zero), _mm256_fmadd_ps(g, x1, zero)),
                _mm256_hadd_ps(_mm256_fmadd_ps(g, x2, zero), _mm256_fmadd_ps(g, x3, zero)));
            _mm_storeu_ps(sp + 4 * p,
                          _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1)));
            SIMD_SCATTER(gxg + o0, a0, w0, g);
            SIMD_SCATTER(gxg + o1, a1, w1, g);
            SIMD_SCATTER(gxg + o2, a2, w2, g);
            SIMD_SCATTER(gxg + o3, a3, w3, g);
        }
        for (i64 p = 0; p < n; ++p)
            for (int k = 0; k < 4; ++k) t->s[k][p] = sp[4 * p + k];
        return;
    }
    for (i64 p = 0; p < n; ++p, gq += K) {
        const i32 o0 = t->o[0][p], o1 = t->o[1][p], o2 = t->o[2][p], o3 = t->o[3][p];
        const float w0 = t->w[0][p], w1 = t->w[1][p], w2 = t->w[2][p], w3 = t->w[3][p];
        const __m256 a0 = _mm256_set1_ps(w0), a1 = _mm256_set1_ps(w1);
        const __m256 a2 = _mm256_set1_ps(w2), a3 = _mm256_set1_ps(w3);
        __m256 s0 = _mm256_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
        for (i64 c = 0; c < Cg; c += 8) {
            const __m256 x0 = simd_ld8(xg + o0 + c), x1 = simd_ld8(xg + o1 + c);
            const __m256 x2 = simd_ld8(xg + o2 + c), x3 = simd_ld8(xg + o3 + c);
            const __m256 g = simd_ld8(gq + c);
            if (cq) simd_st8(cq + p * K + c, simd_sample(a0, a1, a2, a3, x0, x1, x2, x3));
            if (need_s) {
                s0 = _mm256_fmadd_ps(g, x0, s0);
                s1 = _mm256_fmadd_ps(g, x1, s1);
                s2 = _mm256_fmadd_ps(g, x2, s2);
                s3 = _mm256_fmadd_ps(g, x3, s3);
            }
            if (gxg) {
                SIMD_SCATTER(gxg + o0 + c, a0, w0, g);
                SIMD_SCATTER(gxg + o1 + c, a1, w1, g);
                SIMD_SCATTER(gxg + o2 + c, a2, w2, g);
                SIMD_SCATTER(gxg + o3 + c, a3, w3, g);
            }
        }
        if (!need_s) continue;
        const __m256 h = _mm256_hadd_ps(_mm256_hadd_ps(s0, s1), _mm256_hadd_ps(s2, s3));
        _mm_storeu_ps(sp + 4 * p,
                      _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1)));
    }
    if (!need_s) return;
    for (i64 p = 0; p < n; ++p) /* point-major sums -> t->s[corner][point] */
        for (int k = 0; k < 4; ++k) t->s[k][p] = sp[4 * p + k];
}
#else
#define ZSM_SIMD 0
static int simd_state = 0;
static int simd_level(void) { return 0; }
#endif
