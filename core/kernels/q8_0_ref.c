/*
 * q8_0_ref.c - reference kernels for Q8_0.
 *
 * Block of 32: an fp16 scale d and 32 signed bytes; element i is qs[i]*d.
 * Q8_0 is both a weight type and the activation format that Q4_0, Q5_0,
 * Q8_0 and IQ4_NL weights are multiplied against, so the quantizer must
 * produce the very bytes ggml's quantize_row_q8_0_ref produces: the scale
 * is amax/127, the quants are rounded (half away from zero) with the
 * unrounded 1/d, and only then is d narrowed to fp16.
 */
#include <math.h>

#include "kernels.h"

/* ggml rounds each product before adding it; a fused multiply-add would
 * not.  GCC does not fuse in ISO C mode (-std=c11); clang must be told. */
#ifdef __clang__
#pragma STDC FP_CONTRACT OFF
#endif

void nbi_q8_0_to_float_ref(const void *restrict src, float *restrict dst, int64_t n)
{
    const block_q8_0 *x = src;
    const int64_t nb = n / QK8_0;
    for (int64_t i = 0; i < nb; i++) {
        const float d = nbi_fp16_to_fp32(x[i].d);
        for (int j = 0; j < QK8_0; j++)
            dst[i * QK8_0 + j] = x[i].qs[j] * d;
    }
}

void nbi_q8_0_from_float_ref(const float *restrict src, void *restrict dst, int64_t n)
{
    block_q8_0 *y = dst;
    const int64_t nb = n / QK8_0;
    for (int64_t i = 0; i < nb; i++) {
        const float *x = src + i * QK8_0;
        float amax = 0.0f;
        for (int j = 0; j < QK8_0; j++)
            amax = amax > fabsf(x[j]) ? amax : fabsf(x[j]);
        const float d = amax / 127.0f;
        const float id = amax != 0.0f ? 127.0f / amax : 0.0f;
        y[i].d = nbi_fp32_to_fp16(d);
        for (int j = 0; j < QK8_0; j++)
            y[i].qs[j] = (int8_t)nearbyintf(x[j] * id);
    }
}

void nbi_q8_0_vec_dot_ref(int n, float *restrict s, const void *restrict vx,
                          const void *restrict vy)
{
    const block_q8_0 *x = vx;
    const block_q8_0 *y = vy;
    const int nb = n / QK8_0;
    float sum = 0.0f;
    for (int i = 0; i < nb; i++) {
        int32_t isum = 0;
        for (int j = 0; j < QK8_0; j++)
            isum += x[i].qs[j] * y[i].qs[j];
        /* ggml multiplies the two scales first, then the integer sum. */
        sum += isum * (nbi_fp16_to_fp32(x[i].d) * nbi_fp16_to_fp32(y[i].d));
    }
    *s = sum;
}
