/*
 * attn_avx2.c - attention over the F16 key/value cache on x86-64: AVX2,
 * FMA and F16C, and the same code on 512-bit registers where AVX-512 is
 * present (attn_x86.h holds the body, included once per width).
 *
 * It computes the bits of nbi_attn_f16_ref (attn.h): the same online
 * softmax with one expf per score (the C library's, or a four-lane copy
 * of glibc's checked against it, below), the F16 rounding of the
 * accumulator after every scaling and every fused multiply-add.  What
 * changes is where the work happens.  The reference walks the cache once
 * per query head, calls a dot product, a scaling and a multiply-add per
 * row, and keeps the accumulator in memory.  Here the query heads that
 * share a key/value head walk the cache together: every key and value row
 * is loaded and widened once for all of them, and the accumulators stay
 * in registers as floats holding F16 values (rounded through vcvtps2ph /
 * vcvtph2ps after each step, which is the reference's rounding).
 *
 * The score of each query is the F16 dot product of basic_avx2.c in the
 * same order: element 32c + 8j + p fused into accumulator j, lane p, then
 * (acc0 + acc2) + (acc1 + acc3) and nbx_hadd8.  With 16 lanes, a register
 * holds accumulators 0 and 1 (or 2 and 3) side by side, so the lane-wise
 * operations are the same.  Head dimensions 32, 64, 96 and 128 take this
 * path; others go to the generic loop over basic_avx2.c's operations.
 */
#include <math.h>
#include <pthread.h>

#include "attn.h"
#include "simd_x86.h"

#define ATTN_BLOCK 16  /* cache rows per block of scores */
#define ATTN_MAX_NQ 8  /* queries per group */
#define ATTN_MAX_Q 256 /* queries * head dimensions per group */

/* ---- the softmax steps ------------------------------------------------ */

/*
 * Every step needs one expf, and a call per step costs about as much as
 * the rest of the step.  glibc's expf (the build its x86-64 dispatch picks
 * on CPUs with FMA, which ours have) computes in double: k = round(x * 32 /
 * ln2) by adding 1.5 * 2^52, r = x * 32 / ln2 - k (both fused), 2^(k/32)
 * from a 32-entry table with k's high bits added to the exponent, a cubic
 * in r, and one rounding to float at the end.  expf4 does exactly those
 * operations on four lanes; lanes with |x| >= 88 or NaN (overflow,
 * underflow and the special values, where glibc branches) are handed to
 * the C library itself.  Since a C library may compute expf differently,
 * the first attention compares expf4 with the expf it links against on a
 * spread of arguments, and expf4 is used only if every result is the
 * same; otherwise each step calls expf.
 */
static const uint64_t exp2_tab[32] = {
    0x3ff0000000000000, 0x3fefd9b0d3158574, 0x3fefb5586cf9890f, 0x3fef9301d0125b51,
    0x3fef72b83c7d517b, 0x3fef54873168b9aa, 0x3fef387a6e756238, 0x3fef1e9df51fdee1,
    0x3fef06fe0a31b715, 0x3feef1a7373aa9cb, 0x3feedea64c123422, 0x3feece086061892d,
    0x3feebfdad5362a27, 0x3feeb42b569d4f82, 0x3feeab07dd485429, 0x3feea47eb03a5585,
    0x3feea09e667f3bcd, 0x3fee9f75e8ec5f74, 0x3feea11473eb0187, 0x3feea589994cce13,
    0x3feeace5422aa0db, 0x3feeb737b0cdc5e5, 0x3feec49182a3f090, 0x3feed503b23e255d,
    0x3feee89f995ad3ad, 0x3feeff76f2fb5e47, 0x3fef199bdd85529c, 0x3fef3720dcef9069,
    0x3fef5818dcfba487, 0x3fef7c97337b9b5f, 0x3fefa4afa2a490da, 0x3fefd0765b6e4540,
};

static inline __m256d pd_bits(uint64_t u)
{
    return _mm256_castsi256_pd(_mm256_set1_epi64x((long long)u));
}

static inline __m128 expf4(__m128 x)
{
    const __m256d inv_ln2_n = pd_bits(0x40471547652b82feu); /* 32 / ln2 */
    const __m256d shift = pd_bits(0x4338000000000000u);     /* 1.5 * 2^52 */
    const __m256d c0 = pd_bits(0x3ebc6af84b912394u), c1 = pd_bits(0x3f2ebfce50fac4f3u),
                  c2 = pd_bits(0x3f962e42ff0c52d6u);
    const __m256d xd = _mm256_cvtps_pd(x);
    const __m256d z = _mm256_fmadd_pd(inv_ln2_n, xd, shift);
    const __m256i ki = _mm256_castpd_si256(z);
    const __m256d kd = _mm256_sub_pd(z, shift);
    const __m256d r = _mm256_fmsub_pd(inv_ln2_n, xd, kd);
    const __m256i t = _mm256_add_epi64(
        _mm256_i64gather_epi64((const long long *)exp2_tab,
                               _mm256_and_si256(ki, _mm256_set1_epi64x(31)), 8),
        _mm256_slli_epi64(ki, 47));
    const __m256d zc = _mm256_fmadd_pd(r, c0, c1);
    const __m256d r2 = _mm256_mul_pd(r, r);
    __m256d y = _mm256_fmadd_pd(r, c2, _mm256_set1_pd(1.0));
    y = _mm256_fmadd_pd(zc, r2, y);
    y = _mm256_mul_pd(y, _mm256_castsi256_pd(t));
    __m128 res = _mm256_cvtpd_ps(y);
    /* |x| >= 88 (top 12 bits of the magnitude above 0x42a), inf and NaN */
    const __m128i top = _mm_and_si128(_mm_srli_epi32(_mm_castps_si128(x), 20), _mm_set1_epi32(0x7ff));
    const int special = _mm_movemask_ps(_mm_castsi128_ps(_mm_cmpgt_epi32(top, _mm_set1_epi32(0x42a))));
    if (special) {
        float xs[4], rs[4];
        _mm_storeu_ps(xs, x);
        _mm_storeu_ps(rs, res);
        for (int i = 0; i < 4; i++)
            if (special >> i & 1)
                rs[i] = expf(xs[i]);
        res = _mm_loadu_ps(rs);
    }
    return res;
}

__m128 nbi_avx2_expf4(__m128 x)
{
    return expf4(x);
}

/* expf4 against expf: every argument from -104 to 0 in steps of about
 * 0.0004 (each float in a rotating position of its step), the range
 * where the steps' arguments fall, and the special values. */
static int expf4_agrees(void)
{
    static const float special[] = {0.0f, -0.0f, -INFINITY, INFINITY, NAN, -88.0f, -87.99f,
                                    -103.28f, -103.97f, -104.5f, 88.7f, -1e-30f};
    for (size_t i = 0; i < sizeof special / sizeof special[0]; i++) {
        const float e = expf(special[i]), g = _mm_cvtss_f32(nbi_avx2_expf4(_mm_set1_ps(special[i])));
        if (memcmp(&e, &g, 4) != 0)
            return 0;
    }
    for (int i = 0; i < 262144; i += 4) {
        float x[4], g[4];
        for (int j = 0; j < 4; j++)
            x[j] = -104.0f * (float)(i + j) / 262144.0f;
        _mm_storeu_ps(g, nbi_avx2_expf4(_mm_loadu_ps(x)));
        for (int j = 0; j < 4; j++) {
            const float e = expf(x[j]);
            if (memcmp(&e, &g[j], 4) != 0)
                return 0;
        }
    }
    return 1;
}

static int vector_exp; /* expf4 agrees with this C library's expf */
static pthread_once_t vector_exp_once = PTHREAD_ONCE_INIT;

static void vector_exp_check(void)
{
    vector_exp = expf4_agrees();
}

/* The check runs once, on the first attention (a couple of milliseconds:
 * not at start-up, which every process pays, attention or not). */
static int use_vector_exp(void)
{
    pthread_once(&vector_exp_once, vector_exp_check);
    return vector_exp;
}

/* The softmax steps of np positions for nq queries (nbi_attn_step, four
 * queries at a time when use_vector_exp says so): s[p][q] the scores, M
 * and S each query's running maximum and sum, ms and vs each step's
 * factors. */
static inline __attribute__((always_inline)) void
attn_softmax(int nq, int np, float s[][ATTN_MAX_NQ], float *M, float *S,
             float ms[][ATTN_MAX_NQ], float vs[][ATTN_MAX_NQ])
{
    if (!use_vector_exp()) {
        for (int q = 0; q < nq; q++)
            for (int p = 0; p < np; p++)
                ms[p][q] = nbi_attn_step(s[p][q], &M[q], &S[q], &vs[p][q]);
        return;
    }
    const __m128 one = _mm_set1_ps(1.0f);
    for (int q = 0; q < nq; q += 4) {
        __m128 m = _mm_loadu_ps(M + q), sum = _mm_loadu_ps(S + q);
        for (int p = 0; p < np; p++) {
            const __m128 sv = _mm_loadu_ps(&s[p][q]);
            const __m128 gt = _mm_cmp_ps(sv, m, _CMP_GT_OQ); /* s > M, false for NaN */
            const __m128 e = expf4(_mm_blendv_ps(_mm_sub_ps(sv, m), _mm_sub_ps(m, sv), gt));
            const __m128 f = _mm_blendv_ps(one, e, gt), v = _mm_blendv_ps(e, one, gt);
            m = _mm_blendv_ps(m, sv, gt);
            sum = _mm_add_ps(_mm_mul_ps(sum, f), v);
            _mm_storeu_ps(&ms[p][q], f);
            _mm_storeu_ps(&vs[p][q], v);
        }
        _mm_storeu_ps(M + q, m);
        _mm_storeu_ps(S + q, sum);
    }
}

/* ---- 256-bit ---------------------------------------------------------- */
#define VEC __m256
#define W 8
#define VZERO _mm256_setzero_ps()
#define VSET1(x) _mm256_set1_ps(x)
#define VLOAD(p) _mm256_load_ps(p)
#define VSTORE(p, v) _mm256_storeu_ps((p), (v))
#define VFMA(a, b, c) _mm256_fmadd_ps((a), (b), (c))
#define VMUL(a, b) _mm256_mul_ps((a), (b))
#define VLOADH(p) _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(p)))
#define VROUND16(v) _mm256_cvtph_ps(_mm256_cvtps_ph((v), _MM_FROUND_TO_NEAREST_INT))
#define VDOT_SUM(a)                                                                          \
    nbx_hadd8(_mm256_add_ps(_mm256_add_ps((a)[0], (a)[2]), _mm256_add_ps((a)[1], (a)[3])))
#define ATTN_TARGET
#define ATTN_FN(name) name##_256
#include "attn_x86.h"
#undef VEC
#undef W
#undef VZERO
#undef VSET1
#undef VLOAD
#undef VSTORE
#undef VFMA
#undef VMUL
#undef VLOADH
#undef VROUND16
#undef VDOT_SUM
#undef ATTN_TARGET
#undef ATTN_FN

/* ---- 512-bit ---------------------------------------------------------- */
#define VEC __m512
#define W 16
#define VZERO _mm512_setzero_ps()
#define VSET1(x) _mm512_set1_ps(x)
#define VLOAD(p) _mm512_load_ps(p)
#define VSTORE(p, v) _mm512_storeu_ps((p), (v))
#define VFMA(a, b, c) _mm512_fmadd_ps((a), (b), (c))
#define VMUL(a, b) _mm512_mul_ps((a), (b))
#define VLOADH(p) _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(p)))
#define VROUND16(v) _mm512_cvtph_ps(_mm512_cvtps_ph((v), _MM_FROUND_TO_NEAREST_INT))
/* a[0] = accumulators 0|1, a[1] = 2|3: (acc0 + acc2) + (acc1 + acc3) */
#define VDOT_SUM(a) attn_sum16(_mm512_add_ps((a)[0], (a)[1]))
#define ATTN_TARGET __attribute__((target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq")))
#define ATTN_FN(name) name##_512

static inline ATTN_TARGET float attn_sum16(__m512 t)
{
    return nbx_hadd8(_mm256_add_ps(_mm512_castps512_ps256(t), _mm512_extractf32x8_ps(t, 1)));
}

#include "attn_x86.h"

void nbi_avx2_add_attn(nbi_kernels *k, int avx512)
{
    k->attn_f16 = avx512 ? attn_f16_512 : attn_f16_256;
}
