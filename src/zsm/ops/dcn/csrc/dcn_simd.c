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

/* tile_corners, 16 points per step. */
SIMD_TARGET static void simd_corners(Tile *restrict t, i64 n, const float *restrict oy,
                                     const float *restrict ox, const float *restrict mk,
                                     float fi, float fj, i64 H, i64 W, i64 C, int full) {
    const float hm1f = (float)(H - 1), wm1f = (float)(W - 1);
    const __m512 zero = _mm512_setzero_ps(), one = _mm512_set1_ps(1.0f);
    const __m512 mone = _mm512_set1_ps(-1.0f);
    const __m512 hm1 = _mm512_set1_ps(hm1f), wm1 = _mm512_set1_ps(wm1f);
    const __m512 hm2 = _mm512_set1_ps(hm1f - 1.0f), wm2 = _mm512_set1_ps(wm1f - 1.0f);
    const __m512 vfi = _mm512_set1_ps(fi), vfj = _mm512_set1_ps(fj);
    const __m512i Wi = _mm512_set1_epi32((int)W), Ci = _mm512_set1_epi32((int)C);
    for (i64 p = 0; p < n; p += 16) {
        const __mmask16 k = n - p >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (n - p)) - 1u);
        const __m512 y = _mm512_add_ps(_mm512_add_ps(_mm512_loadu_ps(t->by + p), vfi),
                                       _mm512_maskz_loadu_ps(k, oy + p));
        const __m512 x = _mm512_add_ps(_mm512_add_ps(_mm512_loadu_ps(t->bx + p), vfj),
                                       _mm512_maskz_loadu_ps(k, ox + p));
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
        _mm512_storeu_si512(t->o[0] + p, _mm512_mullo_epi32(_mm512_add_epi32(r0, x0), Ci));
        _mm512_storeu_si512(t->o[1] + p, _mm512_mullo_epi32(_mm512_add_epi32(r0, x1), Ci));
        _mm512_storeu_si512(t->o[2] + p, _mm512_mullo_epi32(_mm512_add_epi32(r1, x0), Ci));
        _mm512_storeu_si512(t->o[3] + p, _mm512_mullo_epi32(_mm512_add_epi32(r1, x1), Ci));
        const __m512 m = _mm512_maskz_loadu_ps(k, mk + p);
        const __m512 hy = _mm512_sub_ps(one, ly), hx = _mm512_sub_ps(one, lx);
        const __mmask16 c0 = vy0 & vx0, c1 = vy0 & vx1, c2 = vy1 & vx0, c3 = vy1 & vx1;
        _mm512_storeu_ps(t->w[0] + p, _mm512_maskz_mul_ps(c0, m, _mm512_mul_ps(hy, hx)));
        _mm512_storeu_ps(t->w[1] + p, _mm512_maskz_mul_ps(c1, m, _mm512_mul_ps(hy, lx)));
        _mm512_storeu_ps(t->w[2] + p, _mm512_maskz_mul_ps(c2, m, _mm512_mul_ps(ly, hx)));
        _mm512_storeu_ps(t->w[3] + p, _mm512_maskz_mul_ps(c3, m, _mm512_mul_ps(ly, lx)));
        if (!full) continue;
        const __mmask16 in = (vy0 | vy1) & (vx0 | vx1);
        _mm512_storeu_ps(t->v[0] + p, _mm512_maskz_mov_ps(c0, one));
        _mm512_storeu_ps(t->v[1] + p, _mm512_maskz_mov_ps(c1, one));
        _mm512_storeu_ps(t->v[2] + p, _mm512_maskz_mov_ps(c2, one));
        _mm512_storeu_ps(t->v[3] + p, _mm512_maskz_mov_ps(c3, one));
        _mm512_storeu_ps(t->ly + p, _mm512_maskz_mov_ps(in, ly));
        _mm512_storeu_ps(t->lx + p, _mm512_maskz_mov_ps(in, lx));
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

/* The forward rows of a tile for one (group, kernel point): bf16 x -> bf16 columns
   (the row of point p at cols + p * K), Cg % 8 == 0. */
SIMD_TARGET static void simd_rows_bf16(const Tile *restrict t, i64 n, const bf16 *restrict xg,
                                       bf16 *restrict cols, i64 K, i64 Cg) {
    for (i64 p = 0; p < n; ++p, cols += K) {
        const __m256 a0 = _mm256_set1_ps(t->w[0][p]), a1 = _mm256_set1_ps(t->w[1][p]);
        const __m256 a2 = _mm256_set1_ps(t->w[2][p]), a3 = _mm256_set1_ps(t->w[3][p]);
        const bf16 *r0 = xg + t->o[0][p], *r1 = xg + t->o[1][p];
        const bf16 *r2 = xg + t->o[2][p], *r3 = xg + t->o[3][p];
        for (i64 c = 0; c < Cg; c += 8)
            simd_st8(cols + c, simd_sample(a0, a1, a2, a3, simd_ld8(r0 + c), simd_ld8(r1 + c),
                                           simd_ld8(r2 + c), simd_ld8(r3 + c)));
    }
}

/* The same from float32 x. */
SIMD_TARGET static void simd_rows_f32(const Tile *restrict t, i64 n, const float *restrict xg,
                                      bf16 *restrict cols, i64 K, i64 Cg) {
    for (i64 p = 0; p < n; ++p, cols += K) {
        const __m256 a0 = _mm256_set1_ps(t->w[0][p]), a1 = _mm256_set1_ps(t->w[1][p]);
        const __m256 a2 = _mm256_set1_ps(t->w[2][p]), a3 = _mm256_set1_ps(t->w[3][p]);
        const float *r0 = xg + t->o[0][p], *r1 = xg + t->o[1][p];
        const float *r2 = xg + t->o[2][p], *r3 = xg + t->o[3][p];
        for (i64 c = 0; c < Cg; c += 8)
            simd_st8(cols + c, simd_sample(a0, a1, a2, a3, _mm256_loadu_ps(r0 + c),
                                           _mm256_loadu_ps(r1 + c), _mm256_loadu_ps(r2 + c),
                                           _mm256_loadu_ps(r3 + c)));
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
