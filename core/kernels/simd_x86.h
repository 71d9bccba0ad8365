/*
 * simd_x86.h - helpers shared by the x86 SIMD kernel files (*_avx2.c).
 *
 * Only those files include this header; they are compiled with
 * -mavx2 -mfma -mf16c and called only after dispatch.c has checked the
 * CPU, so nothing here may be used from code that runs before that check.
 *
 * The horizontal sums reproduce, in registers, the exact addition orders
 * of nbi_hsum8 and nbi_hadd8 (kernels.h): float addition is not
 * associative, so the order is part of every result.
 */
#ifndef NIBBLE_SIMD_X86_H
#define NIBBLE_SIMD_X86_H

#include <immintrin.h>
#include <stdint.h>
#include <string.h>

#include "kernels.h"

/* ggml's hsum_float_8: ((v0+v4) + (v2+v6)) + ((v1+v5) + (v3+v7)). */
static inline float nbx_hsum8(__m256 v)
{
    __m128 a = _mm_add_ps(_mm256_extractf128_ps(v, 1), _mm256_castps256_ps128(v));
    a = _mm_add_ps(a, _mm_movehl_ps(a, a)); /* a0+a2, a1+a3 */
    a = _mm_add_ss(a, _mm_movehdup_ps(a));  /* (a0+a2) + (a1+a3) */
    return _mm_cvtss_f32(a);
}

/* GGML_F32x8_REDUCE's last step: ((v0+v4) + (v1+v5)) + ((v2+v6) + (v3+v7)). */
static inline float nbx_hadd8(__m256 v)
{
    __m128 a = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    a = _mm_hadd_ps(a, a); /* a0+a1, a2+a3 */
    a = _mm_hadd_ps(a, a); /* (a0+a1) + (a2+a3) */
    return _mm_cvtss_f32(a);
}

/* Sum of eight int32 lanes (exact, so any order). */
static inline int32_t nbx_hsum_i32(__m256i v)
{
    __m128i a = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    a = _mm_add_epi32(a, _mm_unpackhi_epi64(a, a));
    a = _mm_add_epi32(a, _mm_shuffle_epi32(a, 1));
    return _mm_cvtsi128_si32(a);
}

/* Unaligned scalar loads (block fields sit at any byte offset). */
static inline uint16_t nbx_load_u16(const void *p)
{
    uint16_t v;
    memcpy(&v, p, 2);
    return v;
}

static inline uint32_t nbx_load_u32(const void *p)
{
    uint32_t v;
    memcpy(&v, p, 4);
    return v;
}

/* fp16 -> float with F16C; exact, like nbi_fp16_to_fp32. */
static inline float nbx_h2f(const void *p)
{
    return _cvtsh_ss(nbx_load_u16(p));
}

/* The 32 4-bit codes of a Q4_0/Q4_1/IQ4_NL block (16 bytes at p) as bytes
 * in element order: low nibbles (elements 0..15) in the lower half, high
 * nibbles (16..31) in the upper half, which is how a Q8 block lays out the
 * activations those elements meet. */
static inline __m256i nbx_nibbles32(const uint8_t *p)
{
    const __m128i q = _mm_loadu_si128((const __m128i *)p);
    const __m256i b = _mm256_inserti128_si256(_mm256_castsi128_si256(q), _mm_srli_epi16(q, 4), 1);
    return _mm256_and_si256(b, _mm256_set1_epi8(0x0f));
}

/* Byte j of the result is 0xff where bit j of the 32-bit word qh is set
 * (the fifth bits of a Q5 block, element order). */
static inline __m256i nbx_bits32(uint32_t qh)
{
    /* byte j takes byte j/8 of qh (the shuffle works within 128-bit
     * halves, each holding qh four times), then tests its own bit */
    const __m256i shuf = _mm256_setr_epi64x(0x0000000000000000ll, 0x0101010101010101ll,
                                            0x0202020202020202ll, 0x0303030303030303ll);
    const __m256i bit = _mm256_set1_epi64x(0x8040201008040201ll);
    const __m256i v = _mm256_shuffle_epi8(_mm256_set1_epi32((int)qh), shuf);
    return _mm256_cmpeq_epi8(_mm256_and_si256(v, bit), bit);
}

/* Lane sums of one 32-element block: lane l of the result is the sum of
 * the products of elements 4l..4l+3, u unsigned and y signed bytes.
 * maddubs forms int16 sums of two products, which the caller keeps below
 * 32768 in magnitude (so nothing saturates), and madd widens them. */
static inline __m256i nbx_dot_u8s8(__m256i u, __m256i y)
{
    return _mm256_madd_epi16(_mm256_maddubs_epi16(u, y), _mm256_set1_epi16(1));
}

/* Store / load the first n (1..8) lanes at p. */
static inline __m256i nbx_lane_mask(int n)
{
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

static inline void nbx_store_partial(float *p, __m256 v, int n)
{
    if (n == 8)
        _mm256_storeu_ps(p, v);
    else
        _mm256_maskstore_ps(p, nbx_lane_mask(n), v);
}

static inline __m256 nbx_load_partial(const float *p, int n)
{
    return n == 8 ? _mm256_loadu_ps(p) : _mm256_maskload_ps(p, nbx_lane_mask(n));
}

/* ------------------------------------------------------------------ */
/* Entry points of the helper files, installed by basic_avx2.c.         */

/* q4_avx2.c: Q4_0 and IQ4_NL, whose references keep one sequential float
 * accumulator per output; vectorised across eight rows. */
void nbi_avx2_q4_0_vec_dot(int n, float *restrict s, const void *restrict x,
                           const void *restrict y);
void nbi_avx2_iq4_nl_vec_dot(int n, float *restrict s, const void *restrict x,
                             const void *restrict y);
/* Each tile comes in two: over rows as stored, and (_packed) over rows
 * packed in groups of eight (block_q4_0x8). */
#define NBX_DECLARE_Q4_TILE(name)                                                            \
    void name(int n, int n_rows, int n_cols, float *restrict s, size_t s_stride,              \
              const void *restrict w, size_t w_stride, const void *restrict a,                \
              size_t a_stride);                                                               \
    void name##_packed(int n, int n_rows, int n_cols, float *restrict s, size_t s_stride,     \
                       const void *restrict w, size_t w_stride, const void *restrict a,       \
                       size_t a_stride);
NBX_DECLARE_Q4_TILE(nbi_avx2_q4_0_tile)
NBX_DECLARE_Q4_TILE(nbi_avx2_iq4_nl_tile)
/* The same tiles with vpdpbusd: AVX-VNNI (8 rows per 256-bit register)
 * and AVX-512 VNNI (16 rows per 512-bit register, for three or more
 * activation rows; fewer go to the 8-row AVX2 kernels, or with AVX-VNNI
 * too (avx512vnni_*) to the AVX-VNNI ones); call them only when the
 * matching check says the CPU (and OS) support them. */
int nbi_avx2_vnni_ok(void);
int nbi_avx2_avx512_ok(void);
NBX_DECLARE_Q4_TILE(nbi_avxvnni_q4_0_tile)
NBX_DECLARE_Q4_TILE(nbi_avxvnni_iq4_nl_tile)
NBX_DECLARE_Q4_TILE(nbi_avx512_q4_0_tile)
NBX_DECLARE_Q4_TILE(nbi_avx512_iq4_nl_tile)
NBX_DECLARE_Q4_TILE(nbi_avx512vnni_q4_0_tile)
NBX_DECLARE_Q4_TILE(nbi_avx512vnni_iq4_nl_tile)
#undef NBX_DECLARE_Q4_TILE

/* Attention (attn_avx2.c): installs the 512-bit kernel when avx512 is
 * set, else the 256-bit one; both fall back to the generic loop. */
void nbi_avx2_add_attn(nbi_kernels *k, int avx512);
/* glibc's expf on four lanes, bit for bit (attn_avx2.c says how). */
__m128 nbi_avx2_expf4(__m128 x);
void nbi_avx2_attn_f16_generic(int hd, int nq, int n, float scale, const nb_fp16 *q16,
                               const nb_fp16 *K, const nb_fp16 *V, size_t kv_stride, float *out,
                               nb_fp16 *acc);

/* qlane_avx2.c: Q8_0, Q4_1, Q5_0, Q5_1, whose references keep eight float
 * lanes per output. */
#define NBX_DECLARE_LANE(t)                                                                  \
    void nbi_avx2_##t##_vec_dot(int n, float *restrict s, const void *restrict x,           \
                                const void *restrict y);                                    \
    void nbi_avx2_##t##_tile(int n, int n_rows, int n_cols, float *restrict s,              \
                             size_t s_stride, const void *restrict w, size_t w_stride,      \
                             const void *restrict a, size_t a_stride);
NBX_DECLARE_LANE(q8_0)
NBX_DECLARE_LANE(q4_1)
NBX_DECLARE_LANE(q5_0)
NBX_DECLARE_LANE(q5_1)
#undef NBX_DECLARE_LANE
/* Their tiles with AVX-512 VNNI, two weight rows per 512-bit register
 * (only when nbi_avx2_avx512_ok()). */
#define NBX_DECLARE_LANE512(t)                                                               \
    void nbi_avx512_##t##_tile(int n, int n_rows, int n_cols, float *restrict s,            \
                               size_t s_stride, const void *restrict w, size_t w_stride,    \
                               const void *restrict a, size_t a_stride);
NBX_DECLARE_LANE512(q8_0)
NBX_DECLARE_LANE512(q4_1)
NBX_DECLARE_LANE512(q5_0)
NBX_DECLARE_LANE512(q5_1)
#undef NBX_DECLARE_LANE512

#endif /* NIBBLE_SIMD_X86_H */
