/*
 * kquant_avx2.c - dot products of the K-quants (Q2_K..Q6_K weights times
 * Q8_K activations) for x86 with AVX2/FMA/F16C, plus AVX-512 (F, BW, VL,
 * VNNI) variants; both chosen at run time after CPUID checks.
 *
 * Every entry computes the same bits as its reference (<type>_ref.c).  The
 * integer part of a dot product is exact however it is computed, so only
 * the float part keeps the reference's structure: which integers are
 * converted, the fused multiply-adds and the final reduction.  Codes are
 * at most 6 bits and Q8_K values 8 bits, so every pmaddubsw pair (at most
 * 2*63*128) and every int16 sum formed below stays clear of saturation:
 * the integers equal the reference's for any input bytes, -128 included.
 *
 * Two schemes:
 *
 *  - Q4_K ("lane = row").  Its reference (llama.cpp's repacked gemv) has
 *    no lanes: per super-block one exact isum and one imin per row, each
 *    fused into its own float accumulator.  So rows go into float lanes.
 *    One token (gemv): each row's super-block is reduced to isum/imin in
 *    memory order, then the float part runs for eight rows at once.  A
 *    batch: the codes of 8 rows (16 with AVX-512) are transposed once per
 *    super-block so that int32 lane r holds four codes of row r, and a
 *    broadcast of four activation bytes multiplies all the rows; the
 *    transposed codes stay in registers for 4 (8) tokens.  AVX2 sums a
 *    sub-block in int16 and applies the per-row scale with pmaddwd;
 *    AVX-512 uses vpdpbusd and vpmulld.
 *
 *  - Q2_K, Q3_K, Q5_K, Q6_K ("natural").  Their references keep ggml's
 *    eight float lanes per row: lane l owns the elements e with
 *    (e % 32) / 4 == l, which is what pmaddubsw + pmaddwd over a group of
 *    32 elements in element order produce.  One token: ggml's vec_dot,
 *    decoding as it goes.  A batch: each row's super-block is decoded once
 *    (unsigned codes in element order, per-pair scale vectors) into an L1
 *    buffer, then a register tile of 4 rows x 2 tokens (AVX-512: 4 x 4,
 *    two groups per register) runs over it; the float lanes of each
 *    (row, token) pair live in a small buffer between super-blocks.
 *
 * Batches are split into column blocks whose activations fit in L2, and
 * super-blocks into chunks whose decoded weights fit in L1.  The
 * one-token paths prefetch the weights a few KB ahead.
 */
#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "kernels.h"

#ifdef __clang__
#pragma STDC FP_CONTRACT OFF
#endif

#define ALWAYS_INLINE inline __attribute__((always_inline))

/* Q8_K activation bytes wanted in L2 per column block, and the most tokens
 * in one block (sizes the float accumulator buffers on the stack). */
#define ACT_BLOCK_BYTES (512 * 1024)
#define MAX_COLS 128

/* ------------------------------------------------------------------ */
/* Small helpers                                                       */

static ALWAYS_INLINE __m256i loadu256(const void *p)
{
    return _mm256_loadu_si256((const __m256i *)p);
}

static ALWAYS_INLINE __m128i loadu128(const void *p)
{
    return _mm_loadu_si128((const __m128i *)p);
}

/* Four bytes from anywhere (unaligned) repeated in every int32 lane. */
static ALWAYS_INLINE __m256i bcast32(const void *p)
{
    int32_t v;
    memcpy(&v, p, 4);
    return _mm256_set1_epi32(v);
}

static ALWAYS_INLINE float fp16(nb_fp16 h)
{
    return _cvtsh_ss(h); /* exact, like nbi_fp16_to_fp32 */
}

static ALWAYS_INLINE int32_t hsum_i32(__m256i v)
{
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4e));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xb1));
    return _mm_cvtsi128_si32(s);
}

/* nbi_hsum8's order: ((v0+v4) + (v2+v6)) + ((v1+v5) + (v3+v7)). */
static ALWAYS_INLINE float hsum8_ps(__m256 v)
{
    __m128 r = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    r = _mm_add_ps(r, _mm_movehl_ps(r, r));
    r = _mm_add_ss(r, _mm_movehdup_ps(r));
    return _mm_cvtss_f32(r);
}

/* Transpose an 8x8 matrix of int32: out[k] lane r = in[r] lane k. */
static ALWAYS_INLINE void transpose8x8(__m256i m[8])
{
    const __m256i t0 = _mm256_unpacklo_epi32(m[0], m[1]), t1 = _mm256_unpackhi_epi32(m[0], m[1]);
    const __m256i t2 = _mm256_unpacklo_epi32(m[2], m[3]), t3 = _mm256_unpackhi_epi32(m[2], m[3]);
    const __m256i t4 = _mm256_unpacklo_epi32(m[4], m[5]), t5 = _mm256_unpackhi_epi32(m[4], m[5]);
    const __m256i t6 = _mm256_unpacklo_epi32(m[6], m[7]), t7 = _mm256_unpackhi_epi32(m[6], m[7]);
    const __m256i u0 = _mm256_unpacklo_epi64(t0, t2), u1 = _mm256_unpackhi_epi64(t0, t2);
    const __m256i u2 = _mm256_unpacklo_epi64(t1, t3), u3 = _mm256_unpackhi_epi64(t1, t3);
    const __m256i u4 = _mm256_unpacklo_epi64(t4, t6), u5 = _mm256_unpackhi_epi64(t4, t6);
    const __m256i u6 = _mm256_unpacklo_epi64(t5, t7), u7 = _mm256_unpackhi_epi64(t5, t7);
    m[0] = _mm256_permute2x128_si256(u0, u4, 0x20);
    m[1] = _mm256_permute2x128_si256(u1, u5, 0x20);
    m[2] = _mm256_permute2x128_si256(u2, u6, 0x20);
    m[3] = _mm256_permute2x128_si256(u3, u7, 0x20);
    m[4] = _mm256_permute2x128_si256(u0, u4, 0x31);
    m[5] = _mm256_permute2x128_si256(u1, u5, 0x31);
    m[6] = _mm256_permute2x128_si256(u2, u6, 0x31);
    m[7] = _mm256_permute2x128_si256(u3, u7, 0x31);
}

/* Store the first n (1..8) lanes of v to s. */
static ALWAYS_INLINE void store_lanes(float *s, __m256 v, int n)
{
    if (n == 8) {
        _mm256_storeu_ps(s, v);
    } else {
        float tmp[8];
        _mm256_storeu_ps(tmp, v);
        memcpy(s, tmp, (size_t)n * sizeof(float));
    }
}

/* Bytes ahead of the current weight block to prefetch in the one-token
 * paths.  Rows are read in memory order, but the hardware prefetchers
 * stop at 4 KB pages and ramp up slowly.  Measured on a 1 GB matrix with
 * two threads against a plain read loop: no prefetch 0.65 of its speed,
 * 1.5 KB ahead 0.75-0.9, 3-6 KB ahead 0.9-1.0. */
#define PF_DIST 4096

/* Prefetch the cache lines of a block of blk bytes PF_DIST ahead of x. */
static ALWAYS_INLINE void prefetch_ahead(const void *x, size_t blk)
{
    const char *p = (const char *)x + PF_DIST;
    for (size_t o = 0; o < blk; o += 64)
        _mm_prefetch(p + o, _MM_HINT_T0);
}

/* Tokens per column block: as many as keep its activations within
 * ACT_BLOCK_BYTES, at least 8 and at most MAX_COLS. */
static int col_block(int nb)
{
    int cb = (int)(ACT_BLOCK_BYTES / ((size_t)nb * sizeof(block_q8_K)));
    cb = cb < 8 ? 8 : cb > MAX_COLS ? MAX_COLS : cb;
    return cb & ~1;
}

/* Scales and minimums of a Q4_K/Q5_K super-block as 16 bytes (sc[0..7],
 * m[0..7]), ggml's get_scale_min_k4 for all eight sub-blocks at once.  s
 * is the 12-byte scales field; the 16-byte load reads 4 bytes of the
 * codes after it, still inside the block. */
static ALWAYS_INLINE __m128i k4_scales_mins(const uint8_t *s)
{
    const __m128i v = loadu128(s);
    /* Low bits: s[0..3] & 63, s[8..11] & 15, s[4..7] & 63, s[8..11] >> 4. */
    const __m128i a =
        _mm_shuffle_epi8(v, _mm_setr_epi8(0, 1, 2, 3, 8, 9, 10, 11, 4, 5, 6, 7, 8, 9, 10, 11));
    const __m128i keep = _mm_setr_epi32(0x3f3f3f3f, 0x0f0f0f0f, 0x3f3f3f3f, 0x0f0f0f0f);
    const __m128i lo = _mm_and_si128(_mm_srlv_epi32(a, _mm_setr_epi32(0, 0, 0, 4)), keep);
    /* High bits of sc[4..7] and m[4..7]: the top two bits of s[0..3] and
     * s[4..7], moved to bits 4..5. */
    const __m128i b =
        _mm_shuffle_epi8(v, _mm_setr_epi8(-1, -1, -1, -1, 0, 1, 2, 3, -1, -1, -1, -1, 4, 5, 6, 7));
    const __m128i hi = _mm_and_si128(_mm_srli_epi16(b, 2), _mm_set1_epi8(0x30));
    return _mm_or_si128(lo, hi);
}

/* ------------------------------------------------------------------ */
/* Q4_K                                                                */

/* pshufb patterns.  k_splat[j] repeats int16 word j (0..7) of each 128-bit
 * half; k_pair[k] repeats word 2k in the low half and word 2k+1 in the
 * high half (the scales of two 16-element sub-blocks of a 32-group).
 * k_bsplat[j] makes int16 lanes of byte j (zero-extended), k_mpair the
 * int16 pairs (m_j, m_j) from bytes 8..15 (minimums against bsums). */
#define W2(j) (2 * (j)), (2 * (j) + 1)
#define W16(j) W2(j), W2(j), W2(j), W2(j), W2(j), W2(j), W2(j), W2(j)
static const uint8_t k_splat[8][32] = {
    {W16(0), W16(0)}, {W16(1), W16(1)}, {W16(2), W16(2)}, {W16(3), W16(3)},
    {W16(4), W16(4)}, {W16(5), W16(5)}, {W16(6), W16(6)}, {W16(7), W16(7)},
};
static const uint8_t k_pair[4][32] = {
    {W16(0), W16(1)}, {W16(2), W16(3)}, {W16(4), W16(5)}, {W16(6), W16(7)},
};
#undef W16
#undef W2
#define B2(j) (j), 0xff
#define B16(j) B2(j), B2(j), B2(j), B2(j), B2(j), B2(j), B2(j), B2(j)
static const uint8_t k_bsplat[8][32] = {
    {B16(0), B16(0)}, {B16(1), B16(1)}, {B16(2), B16(2)}, {B16(3), B16(3)},
    {B16(4), B16(4)}, {B16(5), B16(5)}, {B16(6), B16(6)}, {B16(7), B16(7)},
};
static const uint8_t k_mpair[32] = {
    B2(8),  B2(8),  B2(9),  B2(9),  B2(10), B2(10), B2(11), B2(11),
    B2(12), B2(12), B2(13), B2(13), B2(14), B2(14), B2(15), B2(15),
};
/* For the AVX-512 one-token path: (byte 2c) in 128-bit lanes 0-1 and
 * (byte 2c+1) in lanes 2-3, as int16. */
static const uint8_t k_bpair512[4][64] = {
    {B16(0), B16(0), B16(1), B16(1)},
    {B16(2), B16(2), B16(3), B16(3)},
    {B16(4), B16(4), B16(5), B16(5)},
    {B16(6), B16(6), B16(7), B16(7)},
};
#undef B16
#undef B2

static ALWAYS_INLINE __m256i word_splat(int j)
{
    return loadu256(k_splat[j]);
}

/* isum and imin of one row's super-block against one activation block
 * (the exact integers of q4_K_ref.c). */
static ALWAYS_INLINE void q4k_ints(const block_q4_K *x, const block_q8_K *y, int32_t *isum,
                                   int32_t *imin)
{
    const __m256i m4 = _mm256_set1_epi8(0x0f);
    const __m256i sm = _mm256_broadcastsi128_si256(k4_scales_mins(x->scales)); /* bytes */
    /* (m0,m0,m1,m1,..) against bsums: m_j * (bsums[2j] + bsums[2j+1]),
     * exact in int32 whatever the bsums are. */
    const __m256i mn = _mm256_madd_epi16(_mm256_shuffle_epi8(sm, loadu256(k_mpair)),
                                         loadu256(y->bsums));
    __m256i acc = _mm256_setzero_si256();
#pragma GCC unroll 4
    for (int c = 0; c < QK_K / 64; c++) {
        const __m256i q = loadu256(x->qs + 32 * c);
        const __m256i lo = _mm256_and_si256(q, m4);
        const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), m4);
        const __m256i p0 = _mm256_maddubs_epi16(lo, loadu256(y->qs + 64 * c));
        const __m256i p1 = _mm256_maddubs_epi16(hi, loadu256(y->qs + 64 * c + 32));
        const __m256i s0 = _mm256_shuffle_epi8(sm, loadu256(k_bsplat[2 * c]));
        const __m256i s1 = _mm256_shuffle_epi8(sm, loadu256(k_bsplat[2 * c + 1]));
        acc = _mm256_add_epi32(acc, _mm256_add_epi32(_mm256_madd_epi16(p0, s0),
                                                     _mm256_madd_epi16(p1, s1)));
    }
    /* Both totals in one reduction: hadd pairs the lanes of the two. */
    const __m256i t = _mm256_hadd_epi32(acc, mn); /* a01 a23 m01 m23 | a45 a67 m45 m67 */
    __m128i u = _mm_add_epi32(_mm256_castsi256_si128(t), _mm256_extracti128_si256(t, 1));
    u = _mm_hadd_epi32(u, u); /* a, m, a, m */
    *isum = _mm_cvtsi128_si32(u);
    *imin = _mm_extract_epi32(u, 1);
}

static void q4k_vec_dot(int n, float *restrict s, const void *restrict vx, const void *restrict vy)
{
    const block_q4_K *x = vx;
    const block_q8_K *y = vy;
    const int nb = n / QK_K;
    float acc = 0.0f, accmin = 0.0f;
    for (int i = 0; i < nb; i++) {
        int32_t isum, imin;
        q4k_ints(&x[i], &y[i], &isum, &imin);
        acc = fmaf((float)isum, fp16(x[i].d) * y[i].d, acc);
        accmin = fmaf((float)imin, fp16(x[i].dmin) * y[i].d, accmin);
    }
    *s = acc - accmin;
}

/* Eight (d, dmin) fp16 pairs, one per int32 lane, as two float vectors. */
static ALWAYS_INLINE void fp16_pairs(__m256i v, __m256 *d, __m256 *dmin)
{
    /* packus is exact here: every value is a 16-bit pattern. */
    const __m256i lo = _mm256_and_si256(v, _mm256_set1_epi32(0xffff));
    const __m256i hi = _mm256_srli_epi32(v, 16);
    *d = _mm256_cvtph_ps(
        _mm_packus_epi32(_mm256_castsi256_si128(lo), _mm256_extracti128_si256(lo, 1)));
    *dmin = _mm256_cvtph_ps(
        _mm_packus_epi32(_mm256_castsi256_si128(hi), _mm256_extracti128_si256(hi, 1)));
}

/* Super-blocks per chunk in the one-token path (sizes stack arrays). */
#define Q4K_GEMV_CHUNK 32

/*
 * One token, any number of rows: each row's super-blocks reduced to
 * integers (by INTS) in memory order, then the float part for eight rows
 * at once.  Defined as a macro to instantiate it for AVX2 and AVX-512.
 */
#define Q4K_GEMV(name, attr, INTS)                                                               \
    attr static void name(int nb, int n_rows, float *s, const char *w, size_t w_stride,          \
                          const block_q8_K *y)                                                   \
    {                                                                                            \
        int32_t isum[Q4K_GEMV_CHUNK][8], imin[Q4K_GEMV_CHUNK][8];                                \
        uint32_t dd[Q4K_GEMV_CHUNK][8]; /* fp16 d and dmin of each block */                     \
        for (int r0 = 0; r0 < n_rows; r0 += 8) {                                                 \
            const int nr = n_rows - r0 < 8 ? n_rows - r0 : 8;                                    \
            __m256 acc = _mm256_setzero_ps(), accmin = _mm256_setzero_ps();                      \
            for (int i0 = 0; i0 < nb; i0 += Q4K_GEMV_CHUNK) {                                    \
                const int ni = nb - i0 < Q4K_GEMV_CHUNK ? nb - i0 : Q4K_GEMV_CHUNK;              \
                for (int r = 0; r < 8; r++) {                                                    \
                    /* Missing rows repeat the last one; their lanes are dropped. */             \
                    const size_t row = (size_t)(r0 + (r < nr ? r : nr - 1));                     \
                    const block_q4_K *x = (const block_q4_K *)(w + row * w_stride) + i0;         \
                    for (int i = 0; i < ni; i++) {                                               \
                        prefetch_ahead(&x[i], sizeof(block_q4_K));                               \
                        INTS(&x[i], &y[i0 + i], &isum[i][r], &imin[i][r]);                       \
                        memcpy(&dd[i][r], &x[i].d, 4);                                           \
                    }                                                                            \
                }                                                                                \
                for (int i = 0; i < ni; i++) {                                                   \
                    const __m256 dy = _mm256_set1_ps(y[i0 + i].d);                               \
                    const __m256 fi = _mm256_cvtepi32_ps(loadu256(isum[i]));                     \
                    const __m256 fm = _mm256_cvtepi32_ps(loadu256(imin[i]));                     \
                    __m256 d, dmin;                                                              \
                    fp16_pairs(loadu256(dd[i]), &d, &dmin);                                      \
                    acc = _mm256_fmadd_ps(fi, _mm256_mul_ps(d, dy), acc);                        \
                    accmin = _mm256_fmadd_ps(fm, _mm256_mul_ps(dmin, dy), accmin);               \
                }                                                                                \
            }                                                                                    \
            store_lanes(s + r0, _mm256_sub_ps(acc, accmin), nr);                                 \
        }                                                                                        \
    }

Q4K_GEMV(q4k_gemv, , q4k_ints)

/*
 * The batch path.  One super-block of eight rows, transposed: w[j][k] has
 * in int32 lane r the codes of elements 4k..4k+3 of sub-block j of row r;
 * sc[j] / mn[j] have in lane r the scale / minimum of sub-block j of row r
 * twice (two int16), for pmaddwd against int16 pairs.
 */
typedef struct {
    __m256i w[8][8];
    __m256i sc[8];
    __m256i mn[8];
    __m256 d, dmin;
} q4k_dec;

/* Super-blocks decoded at a time in the batch path (about 2.6 KB each). */
#define Q4K_TILE_CHUNK 4

static void q4k_decode8(q4k_dec *out, const block_q4_K *const x[8])
{
    const __m256i m4 = _mm256_set1_epi8(0x0f);
    int32_t sc[8][8], mn[8][8];
    float d[8], dmin[8];
#pragma GCC unroll 8
    for (int r = 0; r < 8; r++) {
        uint8_t sm[16];
        _mm_storeu_si128((__m128i *)sm, k4_scales_mins(x[r]->scales));
#pragma GCC unroll 8
        for (int j = 0; j < 8; j++) {
            sc[j][r] = sm[j] * 0x10001;
            mn[j][r] = sm[8 + j] * 0x10001;
        }
        d[r] = fp16(x[r]->d);
        dmin[r] = fp16(x[r]->dmin);
    }
#pragma GCC unroll 8
    for (int j = 0; j < 8; j++) {
        out->sc[j] = loadu256(sc[j]);
        out->mn[j] = loadu256(mn[j]);
    }
    out->d = _mm256_loadu_ps(d);
    out->dmin = _mm256_loadu_ps(dmin);
#pragma GCC unroll 8
    for (int c = 0; c < QK_K / 64; c++) {
        __m256i lo[8], hi[8];
#pragma GCC unroll 8
        for (int r = 0; r < 8; r++) {
            const __m256i q = loadu256(x[r]->qs + 32 * c);
            lo[r] = _mm256_and_si256(q, m4);
            hi[r] = _mm256_and_si256(_mm256_srli_epi16(q, 4), m4);
        }
        transpose8x8(lo);
        transpose8x8(hi);
#pragma GCC unroll 8
        for (int k = 0; k < 8; k++) {
            out->w[2 * c][k] = lo[k];
            out->w[2 * c + 1][k] = hi[k];
        }
    }
}

/* T (1..4) tokens against one decoded super-block: float accumulators
 * acc[2t] and accmin = acc[2t+1] (eight rows each; interleaved so that
 * they never sit 4 KB apart) updated as the reference does. */
static ALWAYS_INLINE void q4k_tile_tokens(int T, const q4k_dec *dec, const block_q8_K *const y[4],
                                          __m256 *acc)
{
    /* Registers: 8 code vectors, T int32 sums, two temporaries. */
    __m256i isum[4];
#pragma GCC unroll 4
    for (int t = 0; t < T; t++)
        isum[t] = _mm256_setzero_si256();
    for (int j = 0; j < 8; j++) {
        /* The sub-block's codes stay in registers for all T tokens. */
        __m256i w[8];
#pragma GCC unroll 8
        for (int k = 0; k < 8; k++)
            w[k] = dec->w[j][k];
#pragma GCC unroll 4
        for (int t = 0; t < T; t++) {
            const int8_t *q = y[t]->qs + 32 * j;
            /* 16 products of at most 15*128 per int16 lane: no overflow. */
            __m256i p = _mm256_maddubs_epi16(w[0], bcast32(q));
#pragma GCC unroll 8
            for (int k = 1; k < 8; k++)
                p = _mm256_add_epi16(p, _mm256_maddubs_epi16(w[k], bcast32(q + 4 * k)));
            isum[t] = _mm256_add_epi32(isum[t], _mm256_madd_epi16(p, dec->sc[j]));
        }
    }
#pragma GCC unroll 4
    for (int t = 0; t < T; t++) {
        __m256i imin = _mm256_setzero_si256();
#pragma GCC unroll 8
        for (int j = 0; j < 8; j++)
            imin = _mm256_add_epi32(imin,
                                    _mm256_madd_epi16(dec->mn[j], bcast32(y[t]->bsums + 2 * j)));
        const __m256 dy = _mm256_set1_ps(y[t]->d);
        acc[2 * t] =
            _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum[t]), _mm256_mul_ps(dec->d, dy), acc[2 * t]);
        acc[2 * t + 1] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(imin), _mm256_mul_ps(dec->dmin, dy),
                                         acc[2 * t + 1]);
    }
}

static void q4k_tile(int n, int n_rows, int n_cols, float *restrict s, size_t s_stride,
                     const void *restrict w, size_t w_stride, const void *restrict a,
                     size_t a_stride)
{
    const int nb = n / QK_K;
    const char *wb = w, *ab = a;
    if (n_cols == 1) {
        q4k_gemv(nb, n_rows, s, wb, w_stride, (const block_q8_K *)ab);
        return;
    }
    q4k_dec dec[Q4K_TILE_CHUNK];
    __m256 acc[2 * MAX_COLS]; /* acc, accmin of each token */
    const int cb = col_block(nb);
    for (int c0 = 0; c0 < n_cols; c0 += cb) {
        const int nc = n_cols - c0 < cb ? n_cols - c0 : cb;
        for (int r0 = 0; r0 < n_rows; r0 += 8) {
            const int nr = n_rows - r0 < 8 ? n_rows - r0 : 8;
            const block_q4_K *xr[8];
            for (int r = 0; r < 8; r++)
                xr[r] = (const block_q4_K *)(wb + (size_t)(r0 + (r < nr ? r : nr - 1)) * w_stride);
            for (int c = 0; c < nc; c++)
                acc[2 * c] = acc[2 * c + 1] = _mm256_setzero_ps();
            for (int i0 = 0; i0 < nb; i0 += Q4K_TILE_CHUNK) {
                const int ni = nb - i0 < Q4K_TILE_CHUNK ? nb - i0 : Q4K_TILE_CHUNK;
                for (int i = 0; i < ni; i++) {
                    const block_q4_K *x[8];
                    for (int r = 0; r < 8; r++)
                        x[r] = xr[r] + i0 + i;
                    q4k_decode8(&dec[i], x);
                }
                for (int c = 0; c < nc; c += 4) {
                    const int nt = nc - c < 4 ? nc - c : 4;
                    for (int i = 0; i < ni; i++) {
                        const block_q8_K *y[4];
                        for (int t = 0; t < 4; t++)
                            y[t] = (const block_q8_K *)(ab + (size_t)(c0 + c + (t < nt ? t : 0)) *
                                                                 a_stride) +
                                   i0 + i;
                        switch (nt) {
                        case 4: q4k_tile_tokens(4, &dec[i], y, acc + 2 * c); break;
                        case 3: q4k_tile_tokens(3, &dec[i], y, acc + 2 * c); break;
                        case 2: q4k_tile_tokens(2, &dec[i], y, acc + 2 * c); break;
                        default: q4k_tile_tokens(1, &dec[i], y, acc + 2 * c); break;
                        }
                    }
                }
            }
            for (int c = 0; c < nc; c++)
                store_lanes(s + (size_t)(c0 + c) * s_stride + r0,
                            _mm256_sub_ps(acc[2 * c], acc[2 * c + 1]), nr);
        }
    }
}

/* ------------------------------------------------------------------ */
/* Q2_K, Q3_K, Q5_K, Q6_K: the natural layout                          */

/*
 * One row's super-block, decoded: u[g] the unsigned codes of elements
 * 32g..32g+31 in order (Q3_K: code + 4), sc[g] the int16 multiplier of
 * each pmaddubsw pair (per 16 elements: two halves; per 32: one value),
 * aux a type-specific vector for the bsums term, d and dmin as floats.
 */
typedef struct {
    __m256i u[8];
    __m256i sc[8];
    __m256i aux;
    __m256 d, ndmin; /* d and -dmin in every lane */
} nat_dec;

enum { NAT_Q2, NAT_Q3, NAT_Q5, NAT_Q6 };

/* v shifted left by n bits (right for negative n) in 16-bit lanes; with a
 * mask afterwards this moves a bit field within each byte. */
static ALWAYS_INLINE __m256i shift16(__m256i v, int n)
{
    return n > 0 ? _mm256_slli_epi16(v, n) : n < 0 ? _mm256_srli_epi16(v, -n) : v;
}

/* What a super-block needs before its groups can be decoded. */
typedef struct {
    __m256i sc_lo, sc_hi; /* int16 scales 0..7 / 8..15 in both halves (Q5_K: sc_lo only) */
    __m256i aux;
    float d, dmin;
} nat_pre;

static ALWAYS_INLINE void nat_prep(int type, const void *vx, nat_pre *p)
{
    const __m128i m4 = _mm_set1_epi8(0x0f);
    __m256i s16;
    switch (type) {
    case NAT_Q2: {
        const block_q2_K *x = vx;
        const __m128i sm = loadu128(x->scales); /* low nibble scale, high nibble minimum */
        s16 = _mm256_cvtepu8_epi16(_mm_and_si128(sm, m4));
        p->aux = _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16(sm, 4), m4));
        p->d = fp16(x->d);
        p->dmin = fp16(x->dmin);
        break;
    }
    case NAT_Q3: {
        /* The 16 six-bit scales (q3_K_ref.c's unpack_scales), as ggml does. */
        const block_q3_K *x = vx;
        uint32_t a[4];
        memcpy(a, x->scales, 12);
        const uint32_t k4 = 0x0f0f0f0f, k2 = 0x03030303, t = a[2];
        a[2] = ((a[0] >> 4) & k4) | (((t >> 4) & k2) << 4);
        a[3] = ((a[1] >> 4) & k4) | (((t >> 6) & k2) << 4);
        a[0] = (a[0] & k4) | ((t & k2) << 4);
        a[1] = (a[1] & k4) | (((t >> 2) & k2) << 4);
        s16 = _mm256_cvtepi8_epi16(_mm_sub_epi8(loadu128(a), _mm_set1_epi8(32)));
        p->aux = _mm256_setzero_si256();
        p->d = fp16(x->d);
        p->dmin = 0.0f;
        break;
    }
    case NAT_Q5: {
        const block_q5_K *x = vx;
        const __m256i sm = _mm256_cvtepu8_epi16(k4_scales_mins(x->scales));
        const __m128i mins = _mm256_extracti128_si256(sm, 1);
        p->sc_lo = _mm256_permute2x128_si256(sm, sm, 0x00);
        p->sc_hi = p->sc_lo;
        /* (m0,m0,m1,m1,..) against bsums gives m_j * (bsums[2j] +
         * bsums[2j+1]) exactly, whatever the bsums. */
        p->aux = _mm256_set_m128i(_mm_unpackhi_epi16(mins, mins), _mm_unpacklo_epi16(mins, mins));
        p->d = fp16(x->d);
        p->dmin = fp16(x->dmin);
        return;
    }
    default: {
        const block_q6_K *x = vx;
        s16 = _mm256_cvtepi8_epi16(loadu128(x->scales));
        /* -32 * scale (-4064..4096), for the offset of the codes. */
        p->aux = _mm256_sub_epi16(_mm256_setzero_si256(), _mm256_slli_epi16(s16, 5));
        p->d = fp16(x->d);
        p->dmin = 0.0f;
        break;
    }
    }
    p->sc_lo = _mm256_permute2x128_si256(s16, s16, 0x00);
    p->sc_hi = _mm256_permute2x128_si256(s16, s16, 0x11);
}

/* Codes u (unsigned, element order) and pmaddwd multipliers sc of group g
 * (elements 32g..32g+31).  Loads repeated across groups are merged by
 * the compiler once the caller's loop over g is unrolled. */
static ALWAYS_INLINE void nat_group(int type, const void *vx, const nat_pre *p, int g,
                                    __m256i *u, __m256i *sc)
{
    const __m256i m4 = _mm256_set1_epi8(0x0f);
    const int h = g / 4, k = g % 4; /* 128-element half, 32-group within it */
    if (type == NAT_Q5) {
        /* Sub-blocks of 32: one scale per group. */
        *sc = _mm256_shuffle_epi8(p->sc_lo, word_splat(g));
    } else {
        /* Sub-blocks of 16: scales 2g and 2g+1 in the two halves. */
        *sc = _mm256_shuffle_epi8(g < 4 ? p->sc_lo : p->sc_hi, loadu256(k_pair[g & 3]));
    }
    switch (type) {
    case NAT_Q2: {
        const block_q2_K *x = vx;
        *u = _mm256_and_si256(shift16(loadu256(x->qs + 32 * h), -2 * k), _mm256_set1_epi8(3));
        break;
    }
    case NAT_Q3: {
        /* u = code + 4 = low bits + 4 * high bit (a clear high bit means
         * code = low - 4). */
        const block_q3_K *x = vx;
        const __m256i low =
            _mm256_and_si256(shift16(loadu256(x->qs + 32 * h), -2 * k), _mm256_set1_epi8(3));
        const __m256i high =
            _mm256_and_si256(shift16(loadu256(x->hmask), 2 - g), _mm256_set1_epi8(4));
        *u = _mm256_or_si256(low, high);
        break;
    }
    case NAT_Q5: {
        const block_q5_K *x = vx;
        const __m256i q = loadu256(x->qs + 32 * (g / 2));
        const __m256i low = _mm256_and_si256(g & 1 ? _mm256_srli_epi16(q, 4) : q, m4);
        const __m256i high =
            _mm256_and_si256(shift16(loadu256(x->qh), 4 - g), _mm256_set1_epi8(0x10));
        *u = _mm256_or_si256(low, high);
        break;
    }
    default: {
        const block_q6_K *x = vx;
        const __m256i l = loadu256(x->ql + 64 * h + 32 * (k & 1));
        const __m256i low = _mm256_and_si256(k < 2 ? l : _mm256_srli_epi16(l, 4), m4);
        const __m256i high =
            _mm256_and_si256(shift16(loadu256(x->qh + 32 * h), 4 - 2 * k), _mm256_set1_epi8(0x30));
        *u = _mm256_or_si256(low, high);
        break;
    }
    }
}

static ALWAYS_INLINE void nat_decode(int type, nat_dec *o, const void *x)
{
    nat_pre p;
    nat_prep(type, x, &p);
#pragma GCC unroll 8
    for (int g = 0; g < 8; g++)
        nat_group(type, x, &p, g, &o->u[g], &o->sc[g]);
    o->aux = p.aux;
    o->d = _mm256_set1_ps(p.d);
    o->ndmin = _mm256_set1_ps(-p.dmin);
}

/* Super-blocks decoded at a time per row (576 bytes each), and rows per
 * tile. */
#define NAT_CHUNK 8
#define NAT_ROWS 4

/* Float state of one (row, token) pair between super-blocks. */
typedef struct {
    __m256 lane;
    float summs; /* Q5_K's separate minimum accumulator */
    float pad[7];
} nat_acc;

/* The float update of one (row, token) pair for one super-block, given
 * the exact int32 lanes of sum(sc * u * y): the reference's statements.
 * aux, xd and xdmin come from the weight super-block (nat_pre). */
static ALWAYS_INLINE void nat_finish_sb(int type, __m256i aux, __m256 d, __m256 dmin,
                                        const block_q8_K *y, __m256i isum, __m256 *lane,
                                        float *summs)
{
    const __m256i bsums = loadu256(y->bsums);
    switch (type) {
    case NAT_Q2: {
        const __m256i mprod = _mm256_madd_epi16(aux, bsums);
        *lane = _mm256_fmadd_ps(dmin, _mm256_cvtepi32_ps(mprod), *lane);
        *lane = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(isum), *lane);
        break;
    }
    case NAT_Q3:
        *lane = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(isum), *lane);
        break;
    case NAT_Q5: {
        const int32_t msum = hsum_i32(_mm256_madd_epi16(aux, bsums));
        *summs = fmaf(_mm256_cvtss_f32(dmin), (float)msum, *summs);
        *lane = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(isum), *lane);
        break;
    }
    default:
        /* The offset of the codes: lane l gets -32 * (sc[2l] * bsums[2l] +
         * sc[2l+1] * bsums[2l+1]) (aux holds -32 * sc). */
        isum = _mm256_add_epi32(isum, _mm256_madd_epi16(bsums, aux));
        *lane = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(isum), *lane);
        break;
    }
}

/* d = y.d * dx and dmin = -y.d * dminx in every lane, for a decoded row
 * (x_d = dx, x_ndmin = -dminx broadcast): one rounding each, as the
 * reference's scalar products, and (-a) * b == -(a * b) exactly. */
static ALWAYS_INLINE void nat_dvec(const block_q8_K *y, __m256 x_d, __m256 x_ndmin, __m256 *d,
                                   __m256 *dmin)
{
    const __m256 yd = _mm256_set1_ps(y->d);
    *d = _mm256_mul_ps(yd, x_d);
    *dmin = _mm256_mul_ps(yd, x_ndmin);
}

static ALWAYS_INLINE float nat_result(int type, __m256 lane, float summs)
{
    const float v = hsum8_ps(lane);
    return type == NAT_Q5 ? v + summs : v;
}

/* One row against one token, decoding as it goes (ggml's vec_dot). */
static ALWAYS_INLINE float nat_row(int type, size_t blk, int nb, const char *x,
                                   const block_q8_K *y)
{
    __m256 lane = _mm256_setzero_ps();
    float summs = 0.0f;
    for (int i = 0; i < nb; i++, x += blk) {
        prefetch_ahead(x, blk);
        nat_pre p;
        nat_prep(type, x, &p);
        __m256i isum = _mm256_setzero_si256();
#pragma GCC unroll 8
        for (int g = 0; g < 8; g++) {
            __m256i u, sc;
            nat_group(type, x, &p, g, &u, &sc);
            const __m256i yq = loadu256(y[i].qs + 32 * g);
            __m256i pr = _mm256_maddubs_epi16(u, yq);
            if (type == NAT_Q3) /* u = code + 4 */
                pr = _mm256_sub_epi16(pr, _mm256_maddubs_epi16(_mm256_set1_epi8(4), yq));
            isum = _mm256_add_epi32(isum, _mm256_madd_epi16(pr, sc));
        }
        nat_finish_sb(type, p.aux, _mm256_set1_ps(y[i].d * p.d), _mm256_set1_ps(-y[i].d * p.dmin),
                      &y[i], isum, &lane, &summs);
    }
    return nat_result(type, lane, summs);
}

/*
 * R (1..4) decoded rows against T (1..2) tokens for one super-block.  acc
 * is indexed [t * NAT_ROWS + r].  The loops over R and T are unrolled by
 * the compiler (constant arguments), holding R*T int32 lane vectors.
 */
static ALWAYS_INLINE void nat_tile(int type, int R, int T, const nat_dec *const x[4],
                                   const block_q8_K *const y[2], nat_acc *acc)
{
    __m256i isum[4][2];
#pragma GCC unroll 8
    for (int r = 0; r < R; r++)
#pragma GCC unroll 8
        for (int t = 0; t < T; t++)
            isum[r][t] = _mm256_setzero_si256();
#pragma GCC unroll 8
    for (int g = 0; g < 8; g++) {
        __m256i yq[2], y4[2];
#pragma GCC unroll 8
        for (int t = 0; t < T; t++) {
            yq[t] = loadu256(y[t]->qs + 32 * g);
            /* Q3_K: u = code + 4, so subtract 4 * (pair sums of y). */
            if (type == NAT_Q3)
                y4[t] = _mm256_maddubs_epi16(_mm256_set1_epi8(4), yq[t]);
        }
#pragma GCC unroll 8
        for (int r = 0; r < R; r++) {
            const __m256i u = x[r]->u[g];
#pragma GCC unroll 8
            for (int t = 0; t < T; t++) {
                __m256i p = _mm256_maddubs_epi16(u, yq[t]);
                if (type == NAT_Q3)
                    p = _mm256_sub_epi16(p, y4[t]);
                isum[r][t] = _mm256_add_epi32(isum[r][t], _mm256_madd_epi16(p, x[r]->sc[g]));
            }
        }
    }
#pragma GCC unroll 8
    for (int r = 0; r < R; r++)
#pragma GCC unroll 8
        for (int t = 0; t < T; t++)
        {
            __m256 d, dmin;
            nat_dvec(y[t], x[r]->d, x[r]->ndmin, &d, &dmin);
            nat_finish_sb(type, x[r]->aux, d, dmin, y[t], isum[r][t], &acc[t * NAT_ROWS + r].lane,
                          &acc[t * NAT_ROWS + r].summs);
        }
}

static ALWAYS_INLINE void nat_tile_run(int type, size_t blk, int n, int n_rows, int n_cols,
                                       float *restrict s, size_t s_stride, const char *w,
                                       size_t w_stride, const char *a, size_t a_stride)
{
    const int nb = n / QK_K;
    if (n_cols == 1) {
        for (int r = 0; r < n_rows; r++)
            s[r] = nat_row(type, blk, nb, w + (size_t)r * w_stride, (const block_q8_K *)a);
        return;
    }
    nat_dec dec[NAT_ROWS][NAT_CHUNK];
    nat_acc acc[MAX_COLS * NAT_ROWS]; /* [c * NAT_ROWS + r]: a tile's are adjacent */
    const int cb = col_block(nb);
    for (int c0 = 0; c0 < n_cols; c0 += cb) {
        const int nc = n_cols - c0 < cb ? n_cols - c0 : cb;
        for (int r0 = 0; r0 < n_rows; r0 += NAT_ROWS) {
            const int nr = n_rows - r0 < NAT_ROWS ? n_rows - r0 : NAT_ROWS;
            for (int r = 0; r < nr; r++)
                for (int c = 0; c < nc; c++) {
                    acc[c * NAT_ROWS + r].lane = _mm256_setzero_ps();
                    acc[c * NAT_ROWS + r].summs = 0.0f;
                }
            for (int i0 = 0; i0 < nb; i0 += NAT_CHUNK) {
                const int ni = nb - i0 < NAT_CHUNK ? nb - i0 : NAT_CHUNK;
                for (int i = 0; i < ni; i++)
                    for (int r = 0; r < nr; r++)
                        nat_decode(type, &dec[r][i],
                                   w + (size_t)(r0 + r) * w_stride + (size_t)(i0 + i) * blk);
                for (int c = 0; c < nc; c += 2) {
                    const int nt = nc - c < 2 ? nc - c : 2;
                    for (int i = 0; i < ni; i++) {
                        const nat_dec *x[4];
                        for (int r = 0; r < 4; r++)
                            x[r] = &dec[r < nr ? r : 0][i];
                        const block_q8_K *y[2];
                        for (int t = 0; t < 2; t++)
                            y[t] = (const block_q8_K *)(a + (size_t)(c0 + c + (t < nt ? t : 0)) *
                                                                a_stride) +
                                   i0 + i;
                        nat_acc *ac = acc + c * NAT_ROWS;
                        if (nt == 2) {
                            switch (nr) {
                            case 4: nat_tile(type, 4, 2, x, y, ac); break;
                            case 3: nat_tile(type, 3, 2, x, y, ac); break;
                            case 2: nat_tile(type, 2, 2, x, y, ac); break;
                            default: nat_tile(type, 1, 2, x, y, ac); break;
                            }
                        } else {
                            switch (nr) {
                            case 4: nat_tile(type, 4, 1, x, y, ac); break;
                            case 3: nat_tile(type, 3, 1, x, y, ac); break;
                            case 2: nat_tile(type, 2, 1, x, y, ac); break;
                            default: nat_tile(type, 1, 1, x, y, ac); break;
                            }
                        }
                    }
                }
            }
            for (int r = 0; r < nr; r++)
                for (int c = 0; c < nc; c++) {
                    const nat_acc *ac = &acc[c * NAT_ROWS + r];
                    s[(size_t)(c0 + c) * s_stride + r0 + r] = nat_result(type, ac->lane, ac->summs);
                }
        }
    }
}

#define NAT_ENTRIES(name, type, block)                                                            \
    static void name##_tile(int n, int n_rows, int n_cols, float *restrict s, size_t s_stride,   \
                            const void *restrict w, size_t w_stride, const void *restrict a,     \
                            size_t a_stride)                                                      \
    {                                                                                             \
        nat_tile_run(type, sizeof(block), n, n_rows, n_cols, s, s_stride, w, w_stride, a,         \
                     a_stride);                                                                   \
    }                                                                                             \
    static void name##_vec_dot(int n, float *restrict s, const void *restrict x,                 \
                               const void *restrict y)                                            \
    {                                                                                             \
        *s = nat_row(type, sizeof(block), n / QK_K, x, y);                                        \
    }

NAT_ENTRIES(q2k, NAT_Q2, block_q2_K)
NAT_ENTRIES(q3k, NAT_Q3, block_q3_K)
NAT_ENTRIES(q5k, NAT_Q5, block_q5_K)
NAT_ENTRIES(q6k, NAT_Q6, block_q6_K)

/* ------------------------------------------------------------------ */
/* AVX-512 variants of the Q4_K kernels                                */

/*
 * Used when the CPU (and OS) support AVX-512 F/BW/VL/VNNI.  The integer
 * work changes instructions, never results:
 *  - one token: 64 codes per register.  A 32-byte chunk of qs is
 *    broadcast to both halves and the upper half shifted by four bits, so
 *    the low nibbles (sub-block 2c) sit below the high nibbles (2c+1),
 *    facing 64 consecutive activations; vpdpwssd applies the two scales.
 *  - a batch: sixteen rows per register (lane = row, as the AVX2 tile),
 *    vpdpbusd for four codes at a time, each sub-block's sum times its
 *    per-row scale with vpmulld, eight tokens per pass over the codes.
 */
#define AVX512_FN __attribute__((target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")))

AVX512_FN static ALWAYS_INLINE __m512i bcast32_512(const void *p)
{
    int32_t v;
    memcpy(&v, p, 4);
    return _mm512_set1_epi32(v);
}

/* q4k_ints with 512-bit registers (same integers). */
AVX512_FN static ALWAYS_INLINE void q4k_ints512(const block_q4_K *x, const block_q8_K *y,
                                                int32_t *isum, int32_t *imin)
{
    const __m512i sm = _mm512_broadcast_i32x4(k4_scales_mins(x->scales)); /* bytes */
    const __m256i mn = _mm256_madd_epi16(
        _mm256_shuffle_epi8(_mm512_castsi512_si256(sm), loadu256(k_mpair)), loadu256(y->bsums));
    const __m512i m4 = _mm512_set1_epi8(0x0f);
    const __m512i shift = _mm512_set_epi64(4, 4, 4, 4, 0, 0, 0, 0);
    __m512i acc = _mm512_setzero_si512();
#pragma GCC unroll 4
    for (int c = 0; c < QK_K / 64; c++) {
        const __m512i q = _mm512_broadcast_i64x4(loadu256(x->qs + 32 * c));
        const __m512i u = _mm512_and_si512(_mm512_srlv_epi64(q, shift), m4);
        const __m512i p = _mm512_maddubs_epi16(u, _mm512_loadu_si512(y->qs + 64 * c));
        acc = _mm512_dpwssd_epi32(acc, p,
                                  _mm512_shuffle_epi8(sm, _mm512_loadu_si512(k_bpair512[c])));
    }
    const __m256i a =
        _mm256_add_epi32(_mm512_castsi512_si256(acc), _mm512_extracti64x4_epi64(acc, 1));
    const __m256i t = _mm256_hadd_epi32(a, mn);
    __m128i u = _mm_add_epi32(_mm256_castsi256_si128(t), _mm256_extracti128_si256(t, 1));
    u = _mm_hadd_epi32(u, u);
    *isum = _mm_cvtsi128_si32(u);
    *imin = _mm_extract_epi32(u, 1);
}

Q4K_GEMV(q4k_gemv512, AVX512_FN, q4k_ints512)

AVX512_FN static void q4k_vec_dot512(int n, float *restrict s, const void *restrict vx,
                                     const void *restrict vy)
{
    const block_q4_K *x = vx;
    const block_q8_K *y = vy;
    const int nb = n / QK_K;
    float acc = 0.0f, accmin = 0.0f;
    for (int i = 0; i < nb; i++) {
        int32_t isum, imin;
        q4k_ints512(&x[i], &y[i], &isum, &imin);
        acc = fmaf((float)isum, fp16(x[i].d) * y[i].d, acc);
        accmin = fmaf((float)imin, fp16(x[i].dmin) * y[i].d, accmin);
    }
    *s = acc - accmin;
}

/* One super-block of sixteen rows, transposed as in q4k_dec but with the
 * scale as one int32 per lane (for vpmulld). */
typedef struct {
    __m512i w[8][8];
    __m512i sc[8];
    __m512i mn[8];
    __m512 d, dmin;
} q4k_dec16;

AVX512_FN static void q4k_decode16(q4k_dec16 *o, const block_q4_K *const x[16])
{
    const __m256i m4 = _mm256_set1_epi8(0x0f);
    int32_t sc[8][16], mn[8][16];
    float d[16], dmin[16];
    for (int r = 0; r < 16; r++) {
        uint8_t sm[16];
        _mm_storeu_si128((__m128i *)sm, k4_scales_mins(x[r]->scales));
        for (int j = 0; j < 8; j++) {
            sc[j][r] = sm[j];
            mn[j][r] = sm[8 + j] * 0x10001;
        }
        d[r] = fp16(x[r]->d);
        dmin[r] = fp16(x[r]->dmin);
    }
    for (int j = 0; j < 8; j++) {
        o->sc[j] = _mm512_loadu_si512(sc[j]);
        o->mn[j] = _mm512_loadu_si512(mn[j]);
    }
    o->d = _mm512_loadu_ps(d);
    o->dmin = _mm512_loadu_ps(dmin);
    for (int c = 0; c < QK_K / 64; c++) {
        __m256i lo[2][8], hi[2][8];
        for (int h = 0; h < 2; h++) {
#pragma GCC unroll 8
            for (int r = 0; r < 8; r++) {
                const __m256i q = loadu256(x[8 * h + r]->qs + 32 * c);
                lo[h][r] = _mm256_and_si256(q, m4);
                hi[h][r] = _mm256_and_si256(_mm256_srli_epi16(q, 4), m4);
            }
            transpose8x8(lo[h]);
            transpose8x8(hi[h]);
        }
#pragma GCC unroll 8
        for (int k = 0; k < 8; k++) {
            o->w[2 * c][k] = _mm512_inserti64x4(_mm512_castsi256_si512(lo[0][k]), lo[1][k], 1);
            o->w[2 * c + 1][k] = _mm512_inserti64x4(_mm512_castsi256_si512(hi[0][k]), hi[1][k], 1);
        }
    }
}

/* T (1..8) tokens against one decoded super-block of sixteen rows. */
AVX512_FN static ALWAYS_INLINE void q4k_tile16_tokens(int T, const q4k_dec16 *dec,
                                                      const block_q8_K *const y[8], __m512 *acc)
{
    __m512i isum[8];
#pragma GCC unroll 8
    for (int t = 0; t < T; t++)
        isum[t] = _mm512_setzero_si512();
    for (int j = 0; j < 8; j++) {
        __m512i w[8];
#pragma GCC unroll 8
        for (int k = 0; k < 8; k++)
            w[k] = dec->w[j][k];
#pragma GCC unroll 8
        for (int t = 0; t < T; t++) {
            const int8_t *q = y[t]->qs + 32 * j;
            /* Two chains of four, to overlap vpdpbusd's latency. */
            __m512i a0 = _mm512_dpbusd_epi32(_mm512_setzero_si512(), w[0], bcast32_512(q));
            __m512i a1 = _mm512_dpbusd_epi32(_mm512_setzero_si512(), w[1], bcast32_512(q + 4));
#pragma GCC unroll 8
            for (int k = 2; k < 8; k += 2) {
                a0 = _mm512_dpbusd_epi32(a0, w[k], bcast32_512(q + 4 * k));
                a1 = _mm512_dpbusd_epi32(a1, w[k + 1], bcast32_512(q + 4 * k + 4));
            }
            isum[t] = _mm512_add_epi32(isum[t],
                                       _mm512_mullo_epi32(_mm512_add_epi32(a0, a1), dec->sc[j]));
        }
    }
#pragma GCC unroll 8
    for (int t = 0; t < T; t++) {
        __m512i imin = _mm512_setzero_si512();
#pragma GCC unroll 8
        for (int j = 0; j < 8; j++)
            imin = _mm512_dpwssd_epi32(imin, dec->mn[j], bcast32_512(y[t]->bsums + 2 * j));
        const __m512 dy = _mm512_set1_ps(y[t]->d);
        acc[2 * t] =
            _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum[t]), _mm512_mul_ps(dec->d, dy), acc[2 * t]);
        acc[2 * t + 1] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(imin), _mm512_mul_ps(dec->dmin, dy),
                                         acc[2 * t + 1]);
    }
}

/* Super-blocks decoded at a time (about 5.2 KB each). */
#define Q4K16_CHUNK 4

AVX512_FN static void q4k_tile512(int n, int n_rows, int n_cols, float *restrict s,
                                  size_t s_stride, const void *restrict w, size_t w_stride,
                                  const void *restrict a, size_t a_stride)
{
    const int nb = n / QK_K;
    const char *wb = w, *ab = a;
    if (n_cols == 1) {
        q4k_gemv512(nb, n_rows, s, wb, w_stride, (const block_q8_K *)ab);
        return;
    }
    q4k_dec16 dec[Q4K16_CHUNK];
    __m512 acc[2 * MAX_COLS]; /* acc, accmin of each token */
    const int cb = col_block(nb);
    for (int c0 = 0; c0 < n_cols; c0 += cb) {
        const int nc = n_cols - c0 < cb ? n_cols - c0 : cb;
        for (int r0 = 0; r0 < n_rows; r0 += 16) {
            const int nr = n_rows - r0 < 16 ? n_rows - r0 : 16;
            const block_q4_K *xr[16];
            for (int r = 0; r < 16; r++)
                xr[r] = (const block_q4_K *)(wb + (size_t)(r0 + (r < nr ? r : nr - 1)) * w_stride);
            for (int c = 0; c < nc; c++)
                acc[2 * c] = acc[2 * c + 1] = _mm512_setzero_ps();
            for (int i0 = 0; i0 < nb; i0 += Q4K16_CHUNK) {
                const int ni = nb - i0 < Q4K16_CHUNK ? nb - i0 : Q4K16_CHUNK;
                for (int i = 0; i < ni; i++) {
                    const block_q4_K *x[16];
                    for (int r = 0; r < 16; r++)
                        x[r] = xr[r] + i0 + i;
                    q4k_decode16(&dec[i], x);
                }
                for (int c = 0; c < nc; c += 8) {
                    const int nt = nc - c < 8 ? nc - c : 8;
                    for (int i = 0; i < ni; i++) {
                        const block_q8_K *y[8];
                        for (int t = 0; t < 8; t++)
                            y[t] = (const block_q8_K *)(ab + (size_t)(c0 + c + (t < nt ? t : 0)) *
                                                                 a_stride) +
                                   i0 + i;
                        __m512 *ac = acc + 2 * c;
                        switch (nt) {
                        case 8: q4k_tile16_tokens(8, &dec[i], y, ac); break;
                        case 7: q4k_tile16_tokens(7, &dec[i], y, ac); break;
                        case 6: q4k_tile16_tokens(6, &dec[i], y, ac); break;
                        case 5: q4k_tile16_tokens(5, &dec[i], y, ac); break;
                        case 4: q4k_tile16_tokens(4, &dec[i], y, ac); break;
                        case 3: q4k_tile16_tokens(3, &dec[i], y, ac); break;
                        case 2: q4k_tile16_tokens(2, &dec[i], y, ac); break;
                        default: q4k_tile16_tokens(1, &dec[i], y, ac); break;
                        }
                    }
                }
            }
            const __mmask16 keep = (__mmask16)((1u << nr) - 1);
            for (int c = 0; c < nc; c++)
                _mm512_mask_storeu_ps(s + (size_t)(c0 + c) * s_stride + r0, keep,
                                      _mm512_sub_ps(acc[2 * c], acc[2 * c + 1]));
        }
    }
}

/* ------------------------------------------------------------------ */
/* AVX-512 variants of Q2_K, Q3_K, Q5_K, Q6_K                           */

/*
 * The natural layout with 64 elements per register: groups 2c and 2c+1
 * (c = 0..3) in the lower and upper 256 bits.  Where the two groups'
 * codes come from the same bytes at different shifts, the bytes are
 * broadcast to both halves and shifted per half (vpsrlvq/vpsllvq: the
 * shifted-in bits are masked off).  The int32 lanes of the upper half
 * hold the same (e % 32) / 4 classes as the lower half, so adding the
 * halves at the end of a super-block gives exactly the AVX2 lanes.
 */

/* k_b4lane[c]: 128-bit lane L gets (byte 4c+L, 0) as int16 (Q2_K's
 * unsigned 4-bit scales, one per 16-element sub-block). */
#define B2(j) (j), 0xff
#define B16(j) B2(j), B2(j), B2(j), B2(j), B2(j), B2(j), B2(j), B2(j)
static const uint8_t k_b4lane[4][64] = {
    {B16(0), B16(1), B16(2), B16(3)},
    {B16(4), B16(5), B16(6), B16(7)},
    {B16(8), B16(9), B16(10), B16(11)},
    {B16(12), B16(13), B16(14), B16(15)},
};
#undef B16
#undef B2

/* One row's super-block for the AVX-512 tile (see nat_dec); aux2, d2 and
 * ndmin2 repeat aux, d and ndmin in both halves, to finish two tokens'
 * lanes with one instruction. */
typedef struct {
    __m512i u[4];
    __m512i sc[4];
    __m256i aux;
    __m256 d, ndmin; /* d and -dmin in every lane */
    __m512i aux2;
    __m512 d2, ndmin2;
} nat_dec512;

/* The byte broadcast of a 32-byte field to both 256-bit halves. */
AVX512_FN static ALWAYS_INLINE __m512i bcast256(const void *p)
{
    return _mm512_broadcast_i64x4(loadu256(p));
}

/* v shifted per 256-bit half by lo and hi bits (left if positive, right
 * if negative; the two must not have opposite signs). */
AVX512_FN static ALWAYS_INLINE __m512i shift_halves(__m512i v, int lo, int hi)
{
    if (lo >= 0 && hi >= 0)
        return _mm512_sllv_epi64(v, _mm512_set_epi64(hi, hi, hi, hi, lo, lo, lo, lo));
    return _mm512_srlv_epi64(v, _mm512_set_epi64(-hi, -hi, -hi, -hi, -lo, -lo, -lo, -lo));
}

/* (a & b) | c in one instruction. */
AVX512_FN static ALWAYS_INLINE __m512i and_or(__m512i a, __m512i b, __m512i c)
{
    return _mm512_ternarylogic_epi32(a, b, c, 0xea);
}

/* Scale source for the groups: int16 scales of 16-element sub-blocks
 * (Q3_K, Q6_K: signed), or the bytes themselves (Q2_K: low nibbles;
 * Q5_K: k4_scales_mins) for pshufb. */
typedef struct {
    __m512i src;
    __m256i aux;
    float d, dmin;
} nat_pre512;

AVX512_FN static ALWAYS_INLINE void nat_prep512(int type, const void *vx, nat_pre512 *p)
{
    nat_pre q;
    switch (type) {
    case NAT_Q2: {
        const block_q2_K *x = vx;
        const __m128i sm = loadu128(x->scales);
        p->src = _mm512_broadcast_i32x4(_mm_and_si128(sm, _mm_set1_epi8(0x0f)));
        p->aux = _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16(sm, 4), _mm_set1_epi8(0x0f)));
        p->d = fp16(x->d);
        p->dmin = fp16(x->dmin);
        return;
    }
    case NAT_Q5: {
        const block_q5_K *x = vx;
        const __m128i sm = k4_scales_mins(x->scales);
        p->src = _mm512_broadcast_i32x4(sm);
        p->aux = _mm256_shuffle_epi8(_mm256_broadcastsi128_si256(sm), loadu256(k_mpair));
        p->d = fp16(x->d);
        p->dmin = fp16(x->dmin);
        return;
    }
    default:
        /* Q3_K, Q6_K: the AVX2 preparation gives the signed int16 scales
         * (0..7 and 8..15 in sc_lo / sc_hi, each twice). */
        nat_prep(type, vx, &q);
        p->src = _mm512_castsi256_si512(_mm256_permute2x128_si256(q.sc_lo, q.sc_hi, 0x20));
        p->aux = q.aux;
        p->d = q.d;
        p->dmin = q.dmin;
        return;
    }
}

/* Codes and pmaddwd multipliers of groups 2c and 2c+1. */
AVX512_FN static ALWAYS_INLINE void nat_group512(int type, const void *vx, const nat_pre512 *p,
                                                 int c, __m512i *u, __m512i *sc)
{
    const __m512i m4 = _mm512_set1_epi8(0x0f);
    const int h = c / 2, k0 = 2 * (c % 2); /* 128-element half; first group in it */
    switch (type) {
    case NAT_Q2: {
        const block_q2_K *x = vx;
        *u = _mm512_and_si512(shift_halves(bcast256(x->qs + 32 * h), -2 * k0, -2 * k0 - 2),
                              _mm512_set1_epi8(3));
        *sc = _mm512_shuffle_epi8(p->src, _mm512_loadu_si512(k_b4lane[c]));
        break;
    }
    case NAT_Q3: {
        const block_q3_K *x = vx;
        const __m512i low = shift_halves(bcast256(x->qs + 32 * h), -2 * k0, -2 * k0 - 2);
        /* high bit of group g at bit 2 (u = code + 4) */
        const __m512i high = _mm512_and_si512(
            shift_halves(bcast256(x->hmask), 2 - 2 * c, 1 - 2 * c), _mm512_set1_epi8(4));
        *u = and_or(low, _mm512_set1_epi8(3), high);
        break;
    }
    case NAT_Q5: {
        const block_q5_K *x = vx;
        const __m512i low = shift_halves(bcast256(x->qs + 32 * c), 0, -4);
        const __m512i high = _mm512_and_si512(
            shift_halves(bcast256(x->qh), 4 - 2 * c, 3 - 2 * c), _mm512_set1_epi8(0x10));
        *u = and_or(low, m4, high);
        *sc = _mm512_shuffle_epi8(p->src, _mm512_loadu_si512(k_bpair512[c]));
        break;
    }
    default: {
        const block_q6_K *x = vx;
        const __m512i l = _mm512_loadu_si512(x->ql + 64 * h);
        const __m512i low = k0 ? _mm512_srli_epi16(l, 4) : l;
        const __m512i high = _mm512_and_si512(
            shift_halves(bcast256(x->qh + 32 * h), 4 - 2 * k0, 2 - 2 * k0), _mm512_set1_epi8(0x30));
        *u = and_or(low, m4, high);
        break;
    }
    }
    if (type == NAT_Q3 || type == NAT_Q6) {
        /* 128-bit lane L of the group pair is sub-block 4c + L. */
        const __m512i idx = _mm512_set_epi16(
            4 * c + 3, 4 * c + 3, 4 * c + 3, 4 * c + 3, 4 * c + 3, 4 * c + 3, 4 * c + 3, 4 * c + 3,
            4 * c + 2, 4 * c + 2, 4 * c + 2, 4 * c + 2, 4 * c + 2, 4 * c + 2, 4 * c + 2, 4 * c + 2,
            4 * c + 1, 4 * c + 1, 4 * c + 1, 4 * c + 1, 4 * c + 1, 4 * c + 1, 4 * c + 1, 4 * c + 1,
            4 * c, 4 * c, 4 * c, 4 * c, 4 * c, 4 * c, 4 * c, 4 * c);
        *sc = _mm512_permutexvar_epi16(idx, p->src);
    }
}

/* The int32 lanes of a super-block: fold the group pairs' halves. */
AVX512_FN static ALWAYS_INLINE __m256i fold512(__m512i v)
{
    return _mm256_add_epi32(_mm512_castsi512_si256(v), _mm512_extracti64x4_epi64(v, 1));
}

/* sc * (u . y) for one group pair, added to the int32 lanes in acc. */
AVX512_FN static ALWAYS_INLINE __m512i nat_madd512(int type, __m512i acc, __m512i u, __m512i sc,
                                                   __m512i yq, __m512i y4)
{
    __m512i p = _mm512_maddubs_epi16(u, yq);
    if (type == NAT_Q3) /* u = code + 4 */
        p = _mm512_sub_epi16(p, y4);
    return _mm512_dpwssd_epi32(acc, p, sc);
}

AVX512_FN static ALWAYS_INLINE float nat_row512(int type, size_t blk, int nb, const char *x,
                                                const block_q8_K *y)
{
    __m256 lane = _mm256_setzero_ps();
    float summs = 0.0f;
    for (int i = 0; i < nb; i++, x += blk) {
        prefetch_ahead(x, blk);
        nat_pre512 p;
        nat_prep512(type, x, &p);
        __m512i isum = _mm512_setzero_si512();
#pragma GCC unroll 4
        for (int c = 0; c < 4; c++) {
            __m512i u, sc;
            nat_group512(type, x, &p, c, &u, &sc);
            const __m512i yq = _mm512_loadu_si512(y[i].qs + 64 * c);
            const __m512i y4 = type == NAT_Q3
                                   ? _mm512_maddubs_epi16(_mm512_set1_epi8(4), yq)
                                   : _mm512_setzero_si512();
            isum = nat_madd512(type, isum, u, sc, yq, y4);
        }
        nat_finish_sb(type, p.aux, _mm256_set1_ps(y[i].d * p.d), _mm256_set1_ps(-y[i].d * p.dmin),
                      &y[i], fold512(isum), &lane, &summs);
    }
    return nat_result(type, lane, summs);
}

AVX512_FN static ALWAYS_INLINE void nat_decode512(int type, nat_dec512 *o, const void *x)
{
    nat_pre512 p;
    nat_prep512(type, x, &p);
#pragma GCC unroll 4
    for (int c = 0; c < 4; c++)
        nat_group512(type, x, &p, c, &o->u[c], &o->sc[c]);
    o->aux = p.aux;
    o->d = _mm256_set1_ps(p.d);
    o->ndmin = _mm256_set1_ps(-p.dmin);
    o->aux2 = _mm512_broadcast_i64x4(p.aux);
    o->d2 = _mm512_set1_ps(p.d);
    o->ndmin2 = _mm512_set1_ps(-p.dmin);
}

/* Float state of a tile of two tokens for the AVX-512 tile: the lanes of
 * token 2k in the lower half of pair[k * NAT_ROWS + r], those of 2k+1 in
 * the upper half; Q5_K's minimum sums apart. */
typedef struct {
    __m512 pair[MAX_COLS / 2 * NAT_ROWS];
    float summs[MAX_COLS * NAT_ROWS];
} nat_acc512;

/* What two tokens share when finishing: both bsums and both y.d. */
typedef struct {
    __m512i bsums;
    __m512 yd;
} nat_ypair;

AVX512_FN static ALWAYS_INLINE void nat_ypair_load(nat_ypair *p, const block_q8_K *y0,
                                                   const block_q8_K *y1)
{
    p->bsums =
        _mm512_inserti64x4(_mm512_castsi256_si512(loadu256(y0->bsums)), loadu256(y1->bsums), 1);
    p->yd = _mm512_mask_mov_ps(_mm512_set1_ps(y0->d), 0xff00, _mm512_set1_ps(y1->d));
}

/* nat_finish_sb for two tokens at once (not Q5_K): a and b are the
 * tokens' unfolded int32 lanes, *lane their float lanes. */
AVX512_FN static ALWAYS_INLINE void nat_finish_pair512(int type, const nat_dec512 *x,
                                                       const nat_ypair *y, __m512i a, __m512i b,
                                                       __m512 *lane)
{
    /* [fold(a) | fold(b)]: the lower halves of a and b plus their upper. */
    __m512i isum =
        _mm512_add_epi32(_mm512_shuffle_i64x2(a, b, 0x44), _mm512_shuffle_i64x2(a, b, 0xee));
    const __m512 d = _mm512_mul_ps(y->yd, x->d2);
    switch (type) {
    case NAT_Q2: {
        const __m512 dmin = _mm512_mul_ps(y->yd, x->ndmin2);
        const __m512i mprod = _mm512_madd_epi16(x->aux2, y->bsums);
        *lane = _mm512_fmadd_ps(dmin, _mm512_cvtepi32_ps(mprod), *lane);
        break;
    }
    case NAT_Q6:
        isum = _mm512_dpwssd_epi32(isum, y->bsums, x->aux2); /* the codes' offset */
        break;
    default:
        break;
    }
    *lane = _mm512_fmadd_ps(d, _mm512_cvtepi32_ps(isum), *lane);
}

/* R (1..4) decoded rows against T (1..4) tokens for one super-block; the
 * first token is even (its pair slot's lower half). */
AVX512_FN static ALWAYS_INLINE void nat_tile512(int type, int R, int T,
                                                const nat_dec512 *const x[4],
                                                const block_q8_K *const y[4], __m512 *pair,
                                                float *summs)
{
    __m512i isum[4][4];
#pragma GCC unroll 4
    for (int r = 0; r < R; r++)
#pragma GCC unroll 4
        for (int t = 0; t < T; t++)
            isum[r][t] = _mm512_setzero_si512();
#pragma GCC unroll 4
    for (int c = 0; c < 4; c++) {
        __m512i yq[4], y4[4];
#pragma GCC unroll 4
        for (int t = 0; t < T; t++) {
            yq[t] = _mm512_loadu_si512(y[t]->qs + 64 * c);
            y4[t] = type == NAT_Q3 ? _mm512_maddubs_epi16(_mm512_set1_epi8(4), yq[t])
                                   : _mm512_setzero_si512();
        }
#pragma GCC unroll 4
        for (int r = 0; r < R; r++) {
            const __m512i u = x[r]->u[c], sc = x[r]->sc[c];
#pragma GCC unroll 4
            for (int t = 0; t < T; t++)
                isum[r][t] = nat_madd512(type, isum[r][t], u, sc, yq[t], y4[t]);
        }
    }
    const int np = type == NAT_Q5 ? 0 : T / 2; /* token pairs finished together */
    nat_ypair yp[2];
#pragma GCC unroll 2
    for (int k = 0; k < np; k++)
        nat_ypair_load(&yp[k], y[2 * k], y[2 * k + 1]);
#pragma GCC unroll 4
    for (int r = 0; r < R; r++) {
#pragma GCC unroll 2
        for (int k = 0; k < np; k++)
            nat_finish_pair512(type, x[r], &yp[k], isum[r][2 * k], isum[r][2 * k + 1],
                               &pair[k * NAT_ROWS + r]);
#pragma GCC unroll 4
        for (int t = 2 * np; t < T; t++) {
            float *lanes = (float *)&pair[(t / 2) * NAT_ROWS + r] + 8 * (t & 1);
            __m256 lane = _mm256_loadu_ps(lanes), d, dmin;
            nat_dvec(y[t], x[r]->d, x[r]->ndmin, &d, &dmin);
            nat_finish_sb(type, x[r]->aux, d, dmin, y[t], fold512(isum[r][t]), &lane,
                          &summs[t * NAT_ROWS + r]);
            _mm256_storeu_ps(lanes, lane);
        }
    }
}

/* R rows (1..4) of the tile against the tokens of one super-block, in
 * groups of four tokens (the last group smaller). */
#define NAT512_TOKENS(type, R, x, ys, nt, pr, sm)                                               \
    do {                                                                                         \
        switch (nt) {                                                                            \
        case 4: nat_tile512(type, R, 4, x, ys, pr, sm); break;                                   \
        case 3: nat_tile512(type, R, 3, x, ys, pr, sm); break;                                   \
        case 2: nat_tile512(type, R, 2, x, ys, pr, sm); break;                                   \
        default: nat_tile512(type, R, 1, x, ys, pr, sm); break;                                  \
        }                                                                                        \
    } while (0)

AVX512_FN static ALWAYS_INLINE void nat_tile_run512(int type, size_t blk, int n, int n_rows,
                                                    int n_cols, float *restrict s,
                                                    size_t s_stride, const char *w,
                                                    size_t w_stride, const char *a,
                                                    size_t a_stride)
{
    const int nb = n / QK_K;
    if (n_cols == 1) {
        for (int r = 0; r < n_rows; r++)
            s[r] = nat_row512(type, blk, nb, w + (size_t)r * w_stride, (const block_q8_K *)a);
        return;
    }
    nat_dec512 dec[NAT_ROWS][NAT_CHUNK];
    nat_acc512 acc;
    const int cb = col_block(nb);
    for (int c0 = 0; c0 < n_cols; c0 += cb) {
        const int nc = n_cols - c0 < cb ? n_cols - c0 : cb;
        for (int r0 = 0; r0 < n_rows; r0 += NAT_ROWS) {
            const int nr = n_rows - r0 < NAT_ROWS ? n_rows - r0 : NAT_ROWS;
            for (int i = 0; i < (nc + 1) / 2 * NAT_ROWS; i++)
                acc.pair[i] = _mm512_setzero_ps();
            for (int i = 0; i < nc * NAT_ROWS; i++)
                acc.summs[i] = 0.0f;
            for (int i0 = 0; i0 < nb; i0 += NAT_CHUNK) {
                const int ni = nb - i0 < NAT_CHUNK ? nb - i0 : NAT_CHUNK;
                for (int i = 0; i < ni; i++)
                    for (int r = 0; r < nr; r++)
                        nat_decode512(type, &dec[r][i],
                                      w + (size_t)(r0 + r) * w_stride + (size_t)(i0 + i) * blk);
                for (int c = 0; c < nc; c += 4) {
                    const int nt = nc - c < 4 ? nc - c : 4;
                    for (int i = 0; i < ni; i++) {
                        const nat_dec512 *x[4];
                        for (int r = 0; r < 4; r++)
                            x[r] = &dec[r < nr ? r : 0][i];
                        const block_q8_K *y[4];
                        for (int t = 0; t < 4; t++)
                            y[t] = (const block_q8_K *)(a + (size_t)(c0 + c + (t < nt ? t : 0)) *
                                                                a_stride) +
                                   i0 + i;
                        __m512 *pr = acc.pair + c / 2 * NAT_ROWS;
                        float *sm = acc.summs + c * NAT_ROWS;
                        switch (nr) {
                        case 4: NAT512_TOKENS(type, 4, x, y, nt, pr, sm); break;
                        case 3: NAT512_TOKENS(type, 3, x, y, nt, pr, sm); break;
                        case 2: NAT512_TOKENS(type, 2, x, y, nt, pr, sm); break;
                        default: NAT512_TOKENS(type, 1, x, y, nt, pr, sm); break;
                        }
                    }
                }
            }
            for (int r = 0; r < nr; r++)
                for (int c = 0; c < nc; c++) {
                    const float *lanes =
                        (const float *)&acc.pair[c / 2 * NAT_ROWS + r] + 8 * (c & 1);
                    s[(size_t)(c0 + c) * s_stride + r0 + r] =
                        nat_result(type, _mm256_loadu_ps(lanes), acc.summs[c * NAT_ROWS + r]);
                }
        }
    }
}

#define NAT512_ENTRIES(name, type, block)                                                         \
    AVX512_FN static void name##_tile512(int n, int n_rows, int n_cols, float *restrict s,      \
                                         size_t s_stride, const void *restrict w,              \
                                         size_t w_stride, const void *restrict a,              \
                                         size_t a_stride)                                       \
    {                                                                                             \
        nat_tile_run512(type, sizeof(block), n, n_rows, n_cols, s, s_stride, w, w_stride, a,      \
                        a_stride);                                                                \
    }                                                                                             \
    AVX512_FN static void name##_vec_dot512(int n, float *restrict s, const void *restrict x,   \
                                            const void *restrict y)                              \
    {                                                                                             \
        *s = nat_row512(type, sizeof(block), n / QK_K, x, y);                                     \
    }

NAT512_ENTRIES(q2k, NAT_Q2, block_q2_K)
NAT512_ENTRIES(q3k, NAT_Q3, block_q3_K)
NAT512_ENTRIES(q5k, NAT_Q5, block_q5_K)
NAT512_ENTRIES(q6k, NAT_Q6, block_q6_K)

/* ------------------------------------------------------------------ */
/* Choosing                                                            */

/* NIBBLE_KERNELS may restrict the optional extensions as basic_avx2.c
 * reads it: "avx2" allows none, "avx2+avx512" (or "avx2+vnni+avx512")
 * allows AVX-512; unset or anything else allows all. */
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

static int avx512_ok(void)
{
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni") &&
           ext_allowed("avx512");
}

/* ------------------------------------------------------------------ */

void nbi_avx2_add_kquants(nbi_kernels *k)
{
    k->vec_dot[NB_TYPE_Q2_K] = q2k_vec_dot;
    k->vec_dot_tile[NB_TYPE_Q2_K] = q2k_tile;
    k->vec_dot[NB_TYPE_Q3_K] = q3k_vec_dot;
    k->vec_dot_tile[NB_TYPE_Q3_K] = q3k_tile;
    k->vec_dot[NB_TYPE_Q4_K] = q4k_vec_dot;
    k->vec_dot_tile[NB_TYPE_Q4_K] = q4k_tile;
    k->vec_dot[NB_TYPE_Q5_K] = q5k_vec_dot;
    k->vec_dot_tile[NB_TYPE_Q5_K] = q5k_tile;
    k->vec_dot[NB_TYPE_Q6_K] = q6k_vec_dot;
    k->vec_dot_tile[NB_TYPE_Q6_K] = q6k_tile;
    if (avx512_ok()) {
        k->vec_dot[NB_TYPE_Q2_K] = q2k_vec_dot512;
        k->vec_dot_tile[NB_TYPE_Q2_K] = q2k_tile512;
        k->vec_dot[NB_TYPE_Q3_K] = q3k_vec_dot512;
        k->vec_dot_tile[NB_TYPE_Q3_K] = q3k_tile512;
        k->vec_dot[NB_TYPE_Q4_K] = q4k_vec_dot512;
        k->vec_dot_tile[NB_TYPE_Q4_K] = q4k_tile512;
        k->vec_dot[NB_TYPE_Q5_K] = q5k_vec_dot512;
        k->vec_dot_tile[NB_TYPE_Q5_K] = q5k_tile512;
        k->vec_dot[NB_TYPE_Q6_K] = q6k_vec_dot512;
        k->vec_dot_tile[NB_TYPE_Q6_K] = q6k_tile512;
    }
}
