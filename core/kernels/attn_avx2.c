/*
 * attn_avx2.c - attention over the F16 key/value cache on x86-64: AVX2,
 * FMA and F16C, and the same code on 512-bit registers where AVX-512 is
 * present (attn_x86.h holds the body, included once per width).
 *
 * It computes the bits of nbi_attn_f16_ref (attn.h): the same online
 * softmax, one expf per score from the C library, the F16 rounding of
 * the accumulator after every scaling and every fused multiply-add.  What
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

#include "attn.h"
#include "simd_x86.h"

#define ATTN_BLOCK 16  /* cache rows per block of scores */
#define ATTN_MAX_NQ 8  /* queries per group */
#define ATTN_MAX_Q 256 /* queries * head dimensions per group */

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
