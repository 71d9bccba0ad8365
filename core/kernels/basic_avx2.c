/*
 * basic_avx2.c - AVX2/FMA/F16C kernels for the float types, the 32-element
 * block types and the activation quantizers (x86-64, chosen at run time).
 * Every kernel computes the same bits as its reference in <type>_ref.c.
 *
 * This file holds the float-type dot products (F32, F16, BF16), the
 * conversions, the activation quantizers, the attention and SwiGLU vector
 * operations, and nbi_avx2_add_basic, which installs them together with
 * the quantized dot products of q4_avx2.c (Q4_0, IQ4_NL: lanes across
 * rows) and qlane_avx2.c (Q8_0, Q4_1, Q5_0, Q5_1: lanes within a row).
 *
 * Float dot products: the references are ggml's AVX2 loops, four
 * accumulators of eight lanes, element 32c + 8j + p fused into
 * accumulator j, lane p.  That is exactly one FMA per 8-float load here;
 * the reductions reproduce the references' orders (nbx_hadd8 /
 * nbx_hsum8), and leftover elements are added one at a time as they are
 * there.  The tiles (several weight or activation rows per pass) only
 * share loads between independent outputs; each output still runs its
 * own four accumulators.
 *
 * Quantizers: per block, the largest magnitude by vector max (order does
 * not matter for max of non-NaN values) and, alongside, an unordered
 * compare of pairs of vectors that flags any NaN (maxps does not carry
 * one through reliably); a degenerate block (nbi_q8_degenerate: a NaN,
 * an infinity, or amax below NBI_Q8_AMAX_MIN) is written as zeros, as
 * the references write it.  Otherwise the scale in scalar code exactly
 * as the reference computes it, then the multiply and the round-to-
 * nearest-even conversion (cvtps2dq under the default rounding mode, like
 * nearbyintf/lrintf) eight at a time, packed to bytes.
 *
 * Run-time gating: dispatch.c installs this table after checking AVX2,
 * FMA and F16C (and the OS's YMM support).  Two optional extensions are
 * used on top, each only when CPUID (through __builtin_cpu_supports, which
 * also checks that the OS saves the wider registers) reports all its
 * features:
 *   "vnni"   AVX-VNNI: the Q4_0/IQ4_NL tiles with 256-bit vpdpbusd;
 *   "avx512" AVX-512 F, BW, DQ, VL and VNNI: the tiles of Q4_0, IQ4_NL
 *            (16 rows per register, for three or more activation rows),
 *            Q8_0, Q4_1, Q5_0 and Q5_1 (two rows per register).
 * The table's level lists those in use, e.g. "avx2+vnni+avx512";
 * NIBBLE_KERNELS set to such a string ("avx2", "avx2+vnni") restricts the
 * extensions to the ones it names, so every variant can be run and tested
 * on one machine.  All variants compute the same bits.
 */
#include <math.h>
#include <stdlib.h>

#include "attn.h"
#include "simd_x86.h"

/* ------------------------------------------------------------------ */
/* Float element loads: eight elements widened to float (exact).        */

enum { F_F32, F_F16, F_BF16 };

static inline __attribute__((always_inline)) __m256 load8(int t, const void *p, int i)
{
    if (t == F_F32)
        return _mm256_loadu_ps((const float *)p + i);
    const __m128i h = _mm_loadu_si128((const __m128i *)((const uint16_t *)p + i));
    if (t == F_F16)
        return _mm256_cvtph_ps(h);
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

static inline float load1(int t, const void *p, int i)
{
    if (t == F_F32)
        return ((const float *)p)[i];
    const uint16_t h = ((const uint16_t *)p)[i];
    return t == F_F16 ? nbi_fp16_to_fp32(h) : nbi_bf16_to_fp32(h);
}

/* The reference's reduction of the four accumulators and its tail. */
static inline __attribute__((always_inline)) float
float_finish(int t, const __m256 acc[4], int np, int n, const void *x, const void *y)
{
    if (t == F_F32) {
        const __m256 v = _mm256_add_ps(_mm256_add_ps(acc[0], acc[2]), _mm256_add_ps(acc[1], acc[3]));
        float sum = nbx_hadd8(v);
        for (int i = np; i < n; i++)
            sum += load1(t, x, i) * load1(t, y, i);
        return sum;
    }
    double sum = 0.0;
    if (np > 0) {
        /* F16: acc0 += acc2, acc1 += acc3, acc0 += acc1, hadd order;
         * BF16: (acc0 + acc2) + (acc1 + acc3), hsum_float_8 order.  The
         * lane-wise additions are the same; the final orders differ. */
        const __m256 v = _mm256_add_ps(_mm256_add_ps(acc[0], acc[2]), _mm256_add_ps(acc[1], acc[3]));
        sum = t == F_F16 ? nbx_hadd8(v) : nbx_hsum8(v);
    }
    for (int i = np; i < n; i++)
        sum += (double)(load1(t, x, i) * load1(t, y, i));
    return (float)sum;
}

/* NR rows of x against NC rows of y (NR*NC <= 2, so at most eight
 * accumulators live in registers); out[r * NC + c]. */
static inline __attribute__((always_inline)) void
float_kernel(int t, int NR, int NC, int n, const void *const *x, const void *const *y,
             float *const *out)
{
    const int np = n & ~31;
    __m256 acc[2][4];
#pragma GCC unroll 8
    for (int k = 0; k < NR * NC; k++)
#pragma GCC unroll 8
        for (int j = 0; j < 4; j++)
            acc[k][j] = _mm256_setzero_ps();
    for (int i = 0; i < np; i += 32)
#pragma GCC unroll 8
        for (int j = 0; j < 4; j++) {
            __m256 xv[2], yv[2];
#pragma GCC unroll 8
            for (int r = 0; r < NR; r++)
                xv[r] = load8(t, x[r], i + 8 * j);
#pragma GCC unroll 8
            for (int c = 0; c < NC; c++)
                yv[c] = load8(t, y[c], i + 8 * j);
#pragma GCC unroll 8
            for (int r = 0; r < NR; r++)
#pragma GCC unroll 8
                for (int c = 0; c < NC; c++)
                    acc[r * NC + c][j] = _mm256_fmadd_ps(xv[r], yv[c], acc[r * NC + c][j]);
        }
#pragma GCC unroll 8
    for (int r = 0; r < NR; r++)
#pragma GCC unroll 8
        for (int c = 0; c < NC; c++)
            *out[r * NC + c] = float_finish(t, acc[r * NC + c], np, n, x[r], y[c]);
}

/* Weight rows per block of the tile: eight F16 rows of 2048 elements
 * (32 KB) stay in L1/L2 while every activation row passes them. */
#define FLOAT_ROWS 8

static inline __attribute__((always_inline)) void
float_tile(int t, int n, int n_rows, int n_cols, float *s, size_t s_stride, const uint8_t *w,
           size_t w_stride, const uint8_t *a, size_t a_stride)
{
    if (n_cols == 1) { /* generation: two weight rows per pass */
        const void *y[1] = {a};
        int r = 0;
        for (; r + 2 <= n_rows; r += 2) {
            const void *x[2] = {w + (size_t)r * w_stride, w + (size_t)(r + 1) * w_stride};
            float *out[2] = {s + r, s + r + 1};
            float_kernel(t, 2, 1, n, x, y, out);
        }
        if (r < n_rows) {
            const void *x[1] = {w + (size_t)r * w_stride};
            float *out[1] = {s + r};
            float_kernel(t, 1, 1, n, x, y, out);
        }
        return;
    }
    /* each weight row against two activation rows at a time (sharing the
     * loads of its elements), a block of weight rows at a time */
    for (int r0 = 0; r0 < n_rows; r0 += FLOAT_ROWS) {
        const int r1 = n_rows - r0 < FLOAT_ROWS ? n_rows : r0 + FLOAT_ROWS;
        for (int c = 0; c < n_cols; c += 2) {
            const int pair = n_cols - c >= 2;
            const void *y[2] = {a + (size_t)c * a_stride, a + (size_t)(c + pair) * a_stride};
            for (int r = r0; r < r1; r++) {
                const void *x[1] = {w + (size_t)r * w_stride};
                float *out[2] = {s + (size_t)c * s_stride + r, s + (size_t)(c + 1) * s_stride + r};
                if (pair)
                    float_kernel(t, 1, 2, n, x, y, out);
                else
                    float_kernel(t, 1, 1, n, x, y, out);
            }
        }
    }
}

#define FLOAT_TYPE(name, T)                                                                  \
    static void name##_vec_dot(int n, float *restrict s, const void *restrict x,            \
                               const void *restrict y)                                      \
    {                                                                                        \
        const void *xr[1] = {x}, *yr[1] = {y};                                              \
        float *out[1] = {s};                                                                 \
        float_kernel(T, 1, 1, n, xr, yr, out);                                               \
    }                                                                                        \
    static void name##_tile(int n, int n_rows, int n_cols, float *restrict s,               \
                            size_t s_stride, const void *restrict w, size_t w_stride,       \
                            const void *restrict a, size_t a_stride)                        \
    {                                                                                        \
        float_tile(T, n, n_rows, n_cols, s, s_stride, w, w_stride, a, a_stride);             \
    }

FLOAT_TYPE(f32, F_F32)
FLOAT_TYPE(f16, F_F16)
FLOAT_TYPE(bf16, F_BF16)

/* ------------------------------------------------------------------ */
/* Float conversions                                                    */

/* vcvtph2ps is exact except that it makes signalling NaNs quiet, which
 * nbi_fp16_to_fp32 does not; groups holding a NaN go the scalar way. */
static void f16_to_float(const void *restrict src, float *restrict dst, int64_t n)
{
    const nb_fp16 *x = src;
    const __m128i exp = _mm_set1_epi16(0x7c00), abs = _mm_set1_epi16(0x7fff);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m128i h = _mm_loadu_si128((const __m128i *)(x + i));
        const __m128i nan = _mm_cmpgt_epi16(_mm_and_si128(h, abs), exp);
        if (_mm_movemask_epi8(nan))
#pragma GCC unroll 8
            for (int k = 0; k < 8; k++)
                dst[i + k] = nbi_fp16_to_fp32(x[i + k]);
        else
            _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(h));
    }
    for (; i < n; i++)
        dst[i] = nbi_fp16_to_fp32(x[i]);
}

static void f16_from_float(const float *restrict src, void *restrict dst, int64_t n)
{
    nb_fp16 *y = dst;
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) /* vcvtps2ph, nearest-even like nbi_fp32_to_fp16 */
        _mm_storeu_si128((__m128i *)(y + i),
                         _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT));
    for (; i < n; i++)
        y[i] = nbi_fp32_to_fp16(src[i]);
}

static void bf16_to_float(const void *restrict src, float *restrict dst, int64_t n)
{
    const nb_bf16 *x = src;
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(dst + i, load8(F_BF16, x + i, 0));
    for (; i < n; i++)
        dst[i] = nbi_bf16_to_fp32(x[i]);
}

/* nbi_fp32_to_bf16 on eight values: nearest-even by adding 0x7fff plus
 * the lowest kept bit, NaN made quiet by or'ing bit 6 into the top half. */
static inline __m128i bf16_round8(__m256 f)
{
    const __m256i u = _mm256_castps_si256(f);
    const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
    const __m256i rounded = _mm256_srli_epi32(_mm256_add_epi32(_mm256_add_epi32(u, _mm256_set1_epi32(0x7fff)), lsb), 16);
    const __m256i nan_bits = _mm256_or_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(64));
    const __m256i abs = _mm256_and_si256(u, _mm256_set1_epi32(0x7fffffff));
    const __m256i is_nan = _mm256_cmpgt_epi32(abs, _mm256_set1_epi32(0x7f800000));
    const __m256i r = _mm256_blendv_epi8(rounded, nan_bits, is_nan);
    /* every value now fits 16 bits: an unsigned pack cannot saturate */
    const __m256i p = _mm256_packus_epi32(r, r);
    return _mm256_castsi256_si128(_mm256_permute4x64_epi64(p, 0x08));
}

static void bf16_from_float(const float *restrict src, void *restrict dst, int64_t n)
{
    nb_bf16 *y = dst;
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm_storeu_si128((__m128i *)(y + i), bf16_round8(_mm256_loadu_ps(src + i)));
    for (; i < n; i++)
        y[i] = nbi_fp32_to_bf16(src[i]);
}

/* ------------------------------------------------------------------ */
/* Activation quantizers                                                */

static inline __m256 abs_ps(__m256 v)
{
    return _mm256_andnot_ps(_mm256_set1_ps(-0.0f), v);
}

static inline float hmax8(__m256 v)
{
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    m = _mm_max_ss(m, _mm_movehdup_ps(m));
    return _mm_cvtss_f32(m);
}

/* Four vectors of eight int32 codes to 32 bytes in element order.  The
 * codes of a block that is not degenerate are in -127..127 (see
 * nbi_q8_degenerate), so the saturating packs keep them as they are.  The
 * packs interleave 128-bit halves, the permute restores the order. */
static inline __m256i pack32(const __m256i q[4])
{
    const __m256i p01 = _mm256_packs_epi32(q[0], q[1]);
    const __m256i p23 = _mm256_packs_epi32(q[2], q[3]);
    return _mm256_permutevar8x32_epi32(_mm256_packs_epi16(p01, p23),
                                       _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
}

/* Sum of 32 signed bytes. */
static inline int sum_bytes(__m256i b)
{
    return nbx_hsum_i32(_mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_set1_epi8(1), b), _mm256_set1_epi16(1)));
}

/* Quantize 32 floats with multiplier id, rounding to nearest even (the
 * current rounding mode, like nearbyintf); returns the bytes. */
static inline __m256i quant32(const float *x, __m256 id)
{
    __m256i q[4];
#pragma GCC unroll 8
    for (int k = 0; k < 4; k++)
        q[k] = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x + 8 * k), id));
    return pack32(q);
}

/* Largest |x| of 32 floats, and whether one of them is a NaN (then the
 * maximum is meaningless).  UNORD(a, b) is true where a or b is a NaN. */
static inline float amax32(const float *x, int *has_nan)
{
    const __m256 v0 = _mm256_loadu_ps(x), v1 = _mm256_loadu_ps(x + 8);
    const __m256 v2 = _mm256_loadu_ps(x + 16), v3 = _mm256_loadu_ps(x + 24);
    const __m256 nan = _mm256_or_ps(_mm256_cmp_ps(v0, v1, _CMP_UNORD_Q), _mm256_cmp_ps(v2, v3, _CMP_UNORD_Q));
    *has_nan = _mm256_movemask_ps(nan);
    const __m256 m = _mm256_max_ps(_mm256_max_ps(abs_ps(v0), abs_ps(v1)), _mm256_max_ps(abs_ps(v2), abs_ps(v3)));
    return hmax8(m);
}

static void q8_0_from_float(const float *restrict src, void *restrict dst, int64_t n)
{
    block_q8_0 *y = dst;
    for (int64_t i = 0; i < n / QK8_0; i++) {
        const float *x = src + i * QK8_0;
        int has_nan;
        const float amax = amax32(x, &has_nan);
        if (nbi_q8_degenerate(has_nan, amax)) {
            memset(&y[i], 0, sizeof y[i]);
            continue;
        }
        const float d = amax / 127.0f;
        const float id = 127.0f / amax;
        y[i].d = nbi_fp32_to_fp16(d);
        _mm256_storeu_si256((__m256i *)y[i].qs, quant32(x, _mm256_set1_ps(id)));
    }
}

static void q8_1_from_float(const float *restrict src, void *restrict dst, int64_t n)
{
    block_q8_1 *y = dst;
    for (int64_t i = 0; i < n / QK8_1; i++) {
        const float *x = src + i * QK8_1;
        int has_nan;
        const float amax = amax32(x, &has_nan);
        if (nbi_q8_degenerate(has_nan, amax)) {
            memset(&y[i], 0, sizeof y[i]);
            continue;
        }
        const float d = amax / 127.0f;
        const float id = 127.0f / amax;
        y[i].d = nbi_fp32_to_fp16(d);
        const __m256i q = quant32(x, _mm256_set1_ps(id));
        _mm256_storeu_si256((__m256i *)y[i].qs, q);
        y[i].s = nbi_fp32_to_fp16((float)sum_bytes(q) * d);
    }
}

static void q8_K_from_float(const float *restrict src, void *restrict dst, int64_t n)
{
    block_q8_K *y = dst;
    for (int64_t i = 0; i < n / QK_K; i++) {
        const float *x = src + i * QK_K;
        __m256 m = _mm256_setzero_ps(), nan = _mm256_setzero_ps();
        for (int j = 0; j < QK_K; j += 16) {
            const __m256 v0 = _mm256_loadu_ps(x + j), v1 = _mm256_loadu_ps(x + j + 8);
            nan = _mm256_or_ps(nan, _mm256_cmp_ps(v0, v1, _CMP_UNORD_Q));
            m = _mm256_max_ps(m, _mm256_max_ps(abs_ps(v0), abs_ps(v1)));
        }
        const float amax = hmax8(m);
        if (nbi_q8_degenerate(_mm256_movemask_ps(nan), amax)) {
            memset(&y[i], 0, sizeof y[i]);
            continue;
        }
        /* the reference keeps the first element of largest magnitude, so
         * its sign decides the sign of the scale */
        const __m256 va = _mm256_set1_ps(amax);
        int first = 0;
        for (int j = 0; j < QK_K; j += 8) {
            const int hit = _mm256_movemask_ps(_mm256_cmp_ps(abs_ps(_mm256_loadu_ps(x + j)), va, _CMP_EQ_OQ));
            if (hit) {
                first = j + __builtin_ctz((unsigned)hit);
                break;
            }
        }
        const float iscale = -127.0f / x[first];
        const __m256 vs = _mm256_set1_ps(iscale);
        const __m256i cap = _mm256_set1_epi32(127), ones = _mm256_set1_epi16(1);
        for (int j = 0; j < QK_K; j += 32) {
            __m256i q[4];
#pragma GCC unroll 8
            for (int k = 0; k < 4; k++)
                q[k] = _mm256_min_epi32(_mm256_cvtps_epi32(_mm256_mul_ps(vs, _mm256_loadu_ps(x + j + 8 * k))), cap);
            const __m256i b = pack32(q);
            _mm256_storeu_si256((__m256i *)(y[i].qs + j), b);
            /* sums of 16: int32 lanes 0-3 hold the first group, 4-7 the
             * second, added up within each 128-bit half */
            const __m256i s4 = _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_set1_epi8(1), b), ones);
            const __m256i s2 = _mm256_hadd_epi32(s4, s4);
            const __m256i s1 = _mm256_hadd_epi32(s2, s2);
            y[i].bsums[j / 16] = (int16_t)_mm256_extract_epi32(s1, 0);
            y[i].bsums[j / 16 + 1] = (int16_t)_mm256_extract_epi32(s1, 4);
        }
        y[i].d = 1.0f / iscale;
    }
}

/* ------------------------------------------------------------------ */
/* Block dequantizers: int codes to float (exact), times d (plus m,
 * added after the product rounds, as in the references).               */

static inline void store_scaled32(float *dst, __m256i bytes, __m256 d, const __m256 *m)
{
    const __m128i lo = _mm256_castsi256_si128(bytes), hi = _mm256_extracti128_si256(bytes, 1);
    const __m128i parts[4] = {lo, _mm_unpackhi_epi64(lo, lo), hi, _mm_unpackhi_epi64(hi, hi)};
#pragma GCC unroll 8
    for (int k = 0; k < 4; k++) {
        __m256 v = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(parts[k])), d);
        if (m)
            v = _mm256_add_ps(v, *m);
        _mm256_storeu_ps(dst + 8 * k, v);
    }
}

static void q4_0_to_float(const void *restrict src, float *restrict dst, int64_t n)
{
    const block_q4_0 *x = src;
    for (int64_t i = 0; i < n / QK4_0; i++)
        store_scaled32(dst + i * QK4_0, _mm256_sub_epi8(nbx_nibbles32(x[i].qs), _mm256_set1_epi8(8)),
                       _mm256_set1_ps(nbx_h2f(&x[i].d)), NULL);
}

static void q4_1_to_float(const void *restrict src, float *restrict dst, int64_t n)
{
    const block_q4_1 *x = src;
    for (int64_t i = 0; i < n / QK4_1; i++) {
        const __m256 m = _mm256_set1_ps(nbx_h2f(&x[i].m));
        store_scaled32(dst + i * QK4_1, nbx_nibbles32(x[i].qs), _mm256_set1_ps(nbx_h2f(&x[i].d)), &m);
    }
}

static void q5_0_to_float(const void *restrict src, float *restrict dst, int64_t n)
{
    const block_q5_0 *x = src;
    for (int64_t i = 0; i < n / QK5_0; i++) {
        const __m256i hb = nbx_bits32(nbx_load_u32(x[i].qh));
        const __m256i q = _mm256_or_si256(nbx_nibbles32(x[i].qs), _mm256_andnot_si256(hb, _mm256_set1_epi8((char)0xf0)));
        store_scaled32(dst + i * QK5_0, q, _mm256_set1_ps(nbx_h2f(&x[i].d)), NULL);
    }
}

static void q5_1_to_float(const void *restrict src, float *restrict dst, int64_t n)
{
    const block_q5_1 *x = src;
    for (int64_t i = 0; i < n / QK5_1; i++) {
        const __m256i hb = nbx_bits32(nbx_load_u32(x[i].qh));
        const __m256i q = _mm256_or_si256(nbx_nibbles32(x[i].qs), _mm256_and_si256(hb, _mm256_set1_epi8(0x10)));
        const __m256 m = _mm256_set1_ps(nbx_h2f(&x[i].m));
        store_scaled32(dst + i * QK5_1, q, _mm256_set1_ps(nbx_h2f(&x[i].d)), &m);
    }
}

static void q8_0_to_float(const void *restrict src, float *restrict dst, int64_t n)
{
    const block_q8_0 *x = src;
    for (int64_t i = 0; i < n / QK8_0; i++)
        store_scaled32(dst + i * QK8_0, _mm256_loadu_si256((const __m256i *)x[i].qs),
                       _mm256_set1_ps(nbx_h2f(&x[i].d)), NULL);
}

static void iq4_nl_to_float(const void *restrict src, float *restrict dst, int64_t n)
{
    static const int8_t levels[16] = {
        -127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113,
    };
    const __m256i table = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)levels));
    const block_iq4_nl *x = src;
    for (int64_t i = 0; i < n / QK4_NL; i++)
        store_scaled32(dst + i * QK4_NL, _mm256_shuffle_epi8(table, nbx_nibbles32(x[i].qs)),
                       _mm256_set1_ps(nbx_h2f(&x[i].d)), NULL);
}

/* ------------------------------------------------------------------ */
/* Attention accumulator and SwiGLU                                     */

static void mad_f16(int n, nb_fp16 *restrict y, const nb_fp16 *restrict x, float v)
{
    const __m256 vv = _mm256_set1_ps(v);
    int i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m256 xv = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(x + i)));
        const __m256 yv = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(y + i)));
        _mm_storeu_si128((__m128i *)(y + i),
                         _mm256_cvtps_ph(_mm256_fmadd_ps(xv, vv, yv), _MM_FROUND_TO_NEAREST_INT));
    }
    for (; i < n; i++)
        y[i] = nbi_fp32_to_fp16(fmaf(nbi_fp16_to_fp32(x[i]), v, nbi_fp16_to_fp32(y[i])));
}

static void scale_f16(int n, nb_fp16 *restrict y, float v)
{
    const __m256 vv = _mm256_set1_ps(v);
    int i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m256 yv = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(y + i)));
        _mm_storeu_si128((__m128i *)(y + i), _mm256_cvtps_ph(_mm256_mul_ps(yv, vv), _MM_FROUND_TO_NEAREST_INT));
    }
    for (; i < n; i++)
        y[i] = nbi_fp32_to_fp16(nbi_fp16_to_fp32(y[i]) * v);
}

/* Attention for head dimensions attn_avx2.c does not specialize: the
 * shared loop over this file's F16 dot product and accumulator steps. */
void nbi_avx2_attn_f16_generic(int hd, int nq, int n, float scale, const nb_fp16 *q16,
                               const nb_fp16 *K, const nb_fp16 *V, size_t kv_stride, float *out,
                               nb_fp16 *acc)
{
    nbi_attn_generic(f16_vec_dot, scale_f16, mad_f16, hd, nq, n, scale, q16, K, V, kv_stride,
                     out, acc);
}

/* nbi_expf_approx (vec_ref.c) on eight values: the same operations in the
 * same order, the out-of-range branch as a blend. */
static inline __m256 expf8(__m256 x)
{
    const __m256 r = _mm256_set1_ps(0x1.8p23f);
    const __m256 z = _mm256_fmadd_ps(x, _mm256_set1_ps(0x1.715476p+0f), r);
    const __m256 n = _mm256_sub_ps(z, r);
    /* fnmadd(n, c, x) = fma(-n, c, x) exactly */
    const __m256 b = _mm256_fnmadd_ps(n, _mm256_set1_ps(0x1.7f7d1cp-20f),
                                      _mm256_fnmadd_ps(n, _mm256_set1_ps(0x1.62e4p-1f), x));
    const __m256i e = _mm256_slli_epi32(_mm256_castps_si256(z), 23);
    const __m256 k = _mm256_castsi256_ps(_mm256_add_epi32(e, _mm256_castps_si256(_mm256_set1_ps(1.0f))));
    const __m256 u = _mm256_mul_ps(b, b);
    const __m256 j = _mm256_fmadd_ps(
        _mm256_fmadd_ps(_mm256_fmadd_ps(_mm256_set1_ps(0x1.0e4020p-7f), b, _mm256_set1_ps(0x1.573e2ep-5f)), u,
                        _mm256_fmadd_ps(_mm256_set1_ps(0x1.555e66p-3f), b, _mm256_set1_ps(0x1.fffdb6p-2f))),
        u, _mm256_mul_ps(_mm256_set1_ps(0x1.ffffecp-1f), b));
    const __m256 fast = _mm256_fmadd_ps(j, k, k);
    const __m256 an = abs_ps(n);
    const __m256 big = _mm256_cmp_ps(an, _mm256_set1_ps(126.0f), _CMP_GT_OQ);
    if (_mm256_movemask_ps(big) == 0)
        return fast;
    /* 2^n overflows or underflows the exponent: scale in two steps */
    const __m256i d = _mm256_and_si256(_mm256_castps_si256(_mm256_cmp_ps(n, _mm256_setzero_ps(), _CMP_LE_OQ)),
                                       _mm256_set1_epi32((int)0x82000000u));
    const __m256 s1 = _mm256_castsi256_ps(_mm256_add_epi32(d, _mm256_set1_epi32(0x7f000000)));
    const __m256 s2 = _mm256_castsi256_ps(_mm256_sub_epi32(e, d));
    const __m256 huge = _mm256_cmp_ps(an, _mm256_set1_ps(192.0f), _CMP_GT_OQ);
    const __m256 slow = _mm256_blendv_ps(_mm256_mul_ps(_mm256_fmadd_ps(s2, j, s2), s1), _mm256_mul_ps(s1, s1), huge);
    return _mm256_blendv_ps(fast, slow, big);
}

static void swiglu(int n, float *restrict g, const float *restrict u)
{
    const int full = n - n % 8;
    const __m256 one = _mm256_set1_ps(1.0f), sign = _mm256_set1_ps(-0.0f);
    int i = 0;
    for (; i < full; i += 8) {
        const __m256 gv = _mm256_loadu_ps(g + i);
        const __m256 e = expf8(_mm256_xor_ps(gv, sign));
        _mm256_storeu_ps(g + i, _mm256_mul_ps(_mm256_div_ps(gv, _mm256_add_ps(one, e)), _mm256_loadu_ps(u + i)));
    }
    for (; i < n; i++)
        g[i] = g[i] / (1.0f + expf(-g[i])) * u[i];
}

/* ------------------------------------------------------------------ */

/* Whether NIBBLE_KERNELS allows an optional extension: a value naming
 * the base level, "avx2", "avx2+vnni", "avx2+vnni+avx512"..., lists the
 * extensions to use; any other value (or none) leaves all of them on. */
static int ext_allowed(const char *ext)
{
    const char *env = getenv("NIBBLE_KERNELS");
    if (!env || strncmp(env, "avx2", 4) != 0 || (env[4] != 0 && env[4] != '+'))
        return 1;
    for (const char *p = strchr(env, '+'); p; p = strchr(p + 1, '+')) {
        const size_t len = strcspn(p + 1, "+");
        if (len == strlen(ext) && strncmp(p + 1, ext, len) == 0)
            return 1;
    }
    return 0;
}

void nbi_avx2_add_basic(nbi_kernels *k)
{
#define DOT(id, dot, tile) (k->vec_dot[id] = (dot), k->vec_dot_tile[id] = (tile))
    DOT(NB_TYPE_F32, f32_vec_dot, f32_tile);
    DOT(NB_TYPE_F16, f16_vec_dot, f16_tile);
    DOT(NB_TYPE_BF16, bf16_vec_dot, bf16_tile);
    DOT(NB_TYPE_Q4_0, nbi_avx2_q4_0_vec_dot, nbi_avx2_q4_0_tile);
    DOT(NB_TYPE_IQ4_NL, nbi_avx2_iq4_nl_vec_dot, nbi_avx2_iq4_nl_tile);
    DOT(NB_TYPE_Q4_1, nbi_avx2_q4_1_vec_dot, nbi_avx2_q4_1_tile);
    DOT(NB_TYPE_Q5_0, nbi_avx2_q5_0_vec_dot, nbi_avx2_q5_0_tile);
    DOT(NB_TYPE_Q5_1, nbi_avx2_q5_1_vec_dot, nbi_avx2_q5_1_tile);
    DOT(NB_TYPE_Q8_0, nbi_avx2_q8_0_vec_dot, nbi_avx2_q8_0_tile);
#undef DOT
    /* Optional extensions for the Q4_0/IQ4_NL tiles, each behind its own
     * CPUID check; the level names the ones in use. */
    const int vnni = nbi_avx2_vnni_ok() && ext_allowed("vnni");
    const int avx512 = nbi_avx2_avx512_ok() && ext_allowed("avx512");
    k->level = avx512 ? (vnni ? "avx2+vnni+avx512" : "avx2+avx512") : vnni ? "avx2+vnni" : "avx2";
#define Q4(prefix)                                                                           \
    (k->vec_dot_tile[NB_TYPE_Q4_0] = prefix##_q4_0_tile,                                     \
     k->vec_dot_tile_packed[NB_TYPE_Q4_0] = prefix##_q4_0_tile_packed,                       \
     k->vec_dot_tile[NB_TYPE_IQ4_NL] = prefix##_iq4_nl_tile,                                 \
     k->vec_dot_tile_packed[NB_TYPE_IQ4_NL] = prefix##_iq4_nl_tile_packed)
    Q4(nbi_avx2);
    if (avx512) {
        k->vec_dot_tile[NB_TYPE_Q8_0] = nbi_avx512_q8_0_tile;
        k->vec_dot_tile[NB_TYPE_Q4_1] = nbi_avx512_q4_1_tile;
        k->vec_dot_tile[NB_TYPE_Q5_0] = nbi_avx512_q5_0_tile;
        k->vec_dot_tile[NB_TYPE_Q5_1] = nbi_avx512_q5_1_tile;
        if (vnni)
            Q4(nbi_avx512vnni);
        else
            Q4(nbi_avx512);
    } else if (vnni) {
        Q4(nbi_avxvnni);
    }
#undef Q4

    k->to_float[NB_TYPE_F16] = f16_to_float;
    k->to_float[NB_TYPE_BF16] = bf16_to_float;
    k->to_float[NB_TYPE_Q4_0] = q4_0_to_float;
    k->to_float[NB_TYPE_Q4_1] = q4_1_to_float;
    k->to_float[NB_TYPE_Q5_0] = q5_0_to_float;
    k->to_float[NB_TYPE_Q5_1] = q5_1_to_float;
    k->to_float[NB_TYPE_Q8_0] = q8_0_to_float;
    k->to_float[NB_TYPE_IQ4_NL] = iq4_nl_to_float;

    k->from_float[NB_TYPE_F16] = f16_from_float;
    k->from_float[NB_TYPE_BF16] = bf16_from_float;
    k->from_float[NB_TYPE_Q8_0] = q8_0_from_float;
    k->from_float[NB_TYPE_Q8_1] = q8_1_from_float;
    k->from_float[NB_TYPE_Q8_K] = q8_K_from_float;

    k->mad_f16 = mad_f16;
    k->scale_f16 = scale_f16;
    nbi_avx2_add_attn(k, avx512);
    k->swiglu = swiglu;
}
