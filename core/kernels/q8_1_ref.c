/*
 * q8_1_ref.c - reference kernels for Q8_1 (activations only).
 *
 * Block of 32: an fp16 scale d, an fp16 s = d * sum(qs), and 32 signed
 * bytes.  Q4_1 and Q5_1 weights carry a minimum m, and the dot product of
 * that constant with the activations is m * sum(y) = m * s, so precomputing
 * s lets the weight kernels skip the per-element minimum.  The quantizer
 * produces the bytes of ggml's x86 quantize_row_q8_1 (AVX2 path): the same
 * scale and rounding as our Q8_0 quantizer (id = 127/amax, half to even),
 * and s = fp16(d * sum(qs)) with the unrounded d.  A degenerate block (a
 * NaN or an infinity in it, or amax below NBI_Q8_AMAX_MIN, zero included:
 * see nbi_q8_degenerate in kernels.h) is written as all zeros, d = 0,
 * s = 0 and quants 0, as ggml writes an all-zero block.
 *
 * ggml has no dot product with Q8_1 as the weight type, so neither do we
 * (the vec_dot entry stays NULL).  to_float ignores s.
 */
#include <math.h>

#include "kernels.h"

void nbi_q8_1_to_float_ref(const void *restrict src, float *restrict dst, int64_t n)
{
    const block_q8_1 *x = src;
    const int64_t nb = n / QK8_1;
    for (int64_t i = 0; i < nb; i++) {
        const float d = nbi_fp16_to_fp32(x[i].d);
        for (int j = 0; j < QK8_1; j++)
            dst[i * QK8_1 + j] = x[i].qs[j] * d;
    }
}

void nbi_q8_1_from_float_ref(const float *restrict src, void *restrict dst, int64_t n)
{
    block_q8_1 *y = dst;
    const int64_t nb = n / QK8_1;
    for (int64_t i = 0; i < nb; i++) {
        const float *x = src + i * QK8_1;
        float amax = 0.0f;
        int has_nan = 0;
        for (int j = 0; j < QK8_1; j++) {
            has_nan |= isnan(x[j]);
            amax = amax > fabsf(x[j]) ? amax : fabsf(x[j]);
        }
        if (nbi_q8_degenerate(has_nan, amax)) {
            memset(&y[i], 0, sizeof y[i]);
            continue;
        }
        const float d = amax / 127.0f;
        const float id = 127.0f / amax;
        y[i].d = nbi_fp32_to_fp16(d);
        int sum = 0;
        for (int j = 0; j < QK8_1; j++) {
            y[i].qs[j] = (int8_t)nearbyintf(x[j] * id);
            sum += y[i].qs[j];
        }
        y[i].s = nbi_fp32_to_fp16((float)sum * d);
    }
}
