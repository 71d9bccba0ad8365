/*
 * f16_ref.c - reference kernels for F16 (IEEE binary16: 1 sign, 5 exponent
 * and 10 mantissa bits, one element per "block").
 *
 * F16 weights are multiplied against F16 activations, as in ggml, so the
 * activation row is rounded to half precision (nearest-even) first.  The
 * dot product widens both halves to float, rounds each product to float
 * and accumulates in double: ggml's scalar ggml_vec_dot_f16.
 */
#include "kernels.h"

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
    double sum = 0.0;
    for (int i = 0; i < n; i++)
        sum += (double)(nbi_fp16_to_fp32(x[i]) * nbi_fp16_to_fp32(y[i]));
    *s = (float)sum;
}
