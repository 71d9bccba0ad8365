/*
 * bf16_ref.c - reference kernels for BF16 (bfloat16: the top 16 bits of an
 * IEEE single, so 8 exponent and 7 mantissa bits, one element per "block").
 *
 * Widening is exact (a shift).  Narrowing rounds to nearest-even exactly as
 * ggml's GGML_FP32_TO_BF16 does, because BF16 weights are multiplied
 * against BF16 activations and the rounding of those activations shows up
 * in the logits.  The dot product rounds each product to float and sums in
 * double, as ggml's scalar ggml_vec_dot_bf16.
 */
#include "kernels.h"

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
    double sum = 0.0;
    for (int i = 0; i < n; i++)
        sum += (double)(nbi_bf16_to_fp32(x[i]) * nbi_bf16_to_fp32(y[i]));
    *s = (float)sum;
}
