/*
 * f16_ref.c - reference kernels for F16 (IEEE binary16: 1 sign, 5 exponent
 * and 10 mantissa bits, one element per "block").
 *
 * F16 weights are multiplied against F16 activations, as in ggml, so the
 * activation row is rounded to half precision (nearest-even) first.
 *
 * The dot product reproduces ggml's ggml_vec_dot_f16 (vec.cpp) as built
 * for AVX2 with F16C (GGML_F16_STEP 32, GGML_F16_EPR 8) bit for bit:
 *  - both halves are widened to float (exact);
 *  - the first n - n%32 elements go to 4 accumulators of 8 float lanes:
 *    element 32c + 8j + p is fused into accumulator j, lane p;
 *  - GGML_F32x8_REDUCE as in f32_ref.c (acc0+acc2, acc1+acc3, then their
 *    sum, then two horizontal adds: nbi_hadd8), the result widened to
 *    double;
 *  - the n%32 leftover products are rounded to float and added in double;
 *  - the double is rounded to float once at the end.
 * Rows shorter than 32 (attention heads of 8) are thus a plain double sum
 * of float products.  (Batches of two or more rows go to llamafile's
 * tinyBLAS in llama.cpp builds that include it: 8 lanes of FMAs and
 * hsum_float_8; the reference files match the single-row arithmetic.)
 */
#include <math.h>

#include "kernels.h"

/* Every fused multiply-add is an explicit fmaf; nothing else may be fused.
 * GCC does not contract in ISO C mode (-std=c11); clang must be told. */
#ifdef __clang__
#pragma STDC FP_CONTRACT OFF
#endif

void nbi_f16_to_float_ref(const void *restrict src, float *restrict dst, int64_t n)
{
    const nb_fp16 *x = src;
    for (int64_t i = 0; i < n; i++)
        dst[i] = nbi_fp16_to_fp32(x[i]);
}

void nbi_f16_from_float_ref(const float *restrict src, void *restrict dst, int64_t n)
{
    nb_fp16 *y = dst;
    for (int64_t i = 0; i < n; i++)
        y[i] = nbi_fp32_to_fp16(src[i]);
}

void nbi_f16_vec_dot_ref(int n, float *restrict s, const void *restrict vx,
                         const void *restrict vy)
{
    const nb_fp16 *x = vx;
    const nb_fp16 *y = vy;
    const int np = n & ~31;
    double sum = 0.0;
    if (np > 0) {
        float acc[4][8] = {{0}};
        for (int i = 0; i < np; i += 32)
            for (int j = 0; j < 4; j++)
                for (int p = 0; p < 8; p++) {
                    const int e = i + 8 * j + p;
                    acc[j][p] = fmaf(nbi_fp16_to_fp32(x[e]), nbi_fp16_to_fp32(y[e]), acc[j][p]);
                }
        for (int p = 0; p < 8; p++) {
            acc[0][p] += acc[2][p];
            acc[1][p] += acc[3][p];
        }
        for (int p = 0; p < 8; p++)
            acc[0][p] += acc[1][p];
        sum = nbi_hadd8(acc[0]);
    }
    for (int i = np; i < n; i++)
        sum += (double)(nbi_fp16_to_fp32(x[i]) * nbi_fp16_to_fp32(y[i]));
    *s = (float)sum;
}
