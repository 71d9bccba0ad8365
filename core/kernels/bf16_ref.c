/*
 * bf16_ref.c - reference kernels for BF16 (bfloat16: the top 16 bits of an
 * IEEE single, so 8 exponent and 7 mantissa bits, one element per "block").
 *
 * Widening is exact (a shift).  Narrowing rounds to nearest-even exactly as
 * ggml's GGML_FP32_TO_BF16 does, because BF16 weights are multiplied
 * against BF16 activations and the rounding of those activations shows up
 * in the logits.
 *
 * The dot product reproduces ggml's ggml_vec_dot_bf16 (vec.cpp) AVX2 path
 * bit for bit:
 *  - the first n - n%32 elements go to 4 accumulators of 8 float lanes,
 *    element 32c + 8j + p into accumulator j, lane p, with a fused
 *    multiply-add (ggml writes mul then add; GCC contracts them; and
 *    since a product of two bfloat16 values is exact in float the two
 *    agree anyway);
 *  - (acc0 + acc2) + (acc1 + acc3) lane-wise, then the eight lanes in
 *    hsum_float_8 order (nbi_hsum8), widened to double;
 *  - the n%32 leftover products are rounded to float and added in double;
 *  - the double is rounded to float once at the end.
 */
#include <math.h>

#include "kernels.h"

/* Every fused multiply-add is an explicit fmaf; nothing else may be fused.
 * GCC does not contract in ISO C mode (-std=c11); clang must be told. */
#ifdef __clang__
#pragma STDC FP_CONTRACT OFF
#endif

void nbi_bf16_to_float_ref(const void *restrict src, float *restrict dst, int64_t n)
{
    const nb_bf16 *x = src;
    for (int64_t i = 0; i < n; i++)
        dst[i] = nbi_bf16_to_fp32(x[i]);
}

void nbi_bf16_from_float_ref(const float *restrict src, void *restrict dst, int64_t n)
{
    nb_bf16 *y = dst;
    for (int64_t i = 0; i < n; i++)
        y[i] = nbi_fp32_to_bf16(src[i]);
}

void nbi_bf16_vec_dot_ref(int n, float *restrict s, const void *restrict vx,
                          const void *restrict vy)
{
    const nb_bf16 *x = vx;
    const nb_bf16 *y = vy;
    const int np = n & ~31;
    double sum = 0.0;
    if (np > 0) {
        float acc[4][8] = {{0}};
        for (int i = 0; i < np; i += 32)
            for (int j = 0; j < 4; j++)
                for (int p = 0; p < 8; p++) {
                    const int e = i + 8 * j + p;
                    acc[j][p] = fmaf(nbi_bf16_to_fp32(x[e]), nbi_bf16_to_fp32(y[e]), acc[j][p]);
                }
        float v[8];
        for (int p = 0; p < 8; p++)
            v[p] = (acc[0][p] + acc[2][p]) + (acc[1][p] + acc[3][p]);
        sum = nbi_hsum8(v);
    }
    for (int i = np; i < n; i++)
        sum += (double)(nbi_bf16_to_fp32(x[i]) * nbi_bf16_to_fp32(y[i]));
    *s = (float)sum;
}
