/*
 * q8_K_ref.c - reference kernels for Q8_K (activations only).
 *
 * Super-block of 256: a float scale d (not fp16), 256 signed bytes and the
 * sum of each group of 16 bytes (bsums), which the K-quant dot products
 * use to apply their per-sub-block minimums without touching the elements.
 * Element e is d * qs[e].
 *
 * The quantizer reproduces ggml's quantize_row_q8_K_ref byte for byte:
 * iscale = -127 / m where m is the signed value of largest magnitude (so m
 * maps to exactly -127), quants rounded half-to-even (ggml's nearest_int)
 * and capped at +127, and d = 1 / iscale kept as a float.  For an all-zero
 * block ggml writes d = 0 and zero quants but leaves bsums unwritten; we
 * zero them too, which changes no result (they are multiplied by d = 0).
 * Every degenerate block (a NaN or an infinity in it, or amax below
 * NBI_Q8_AMAX_MIN: see nbi_q8_degenerate in kernels.h) is written the
 * same way, all zeros (ggml's bytes for those are whatever its
 * conversions of infinities and NaNs to integers happen to give).
 *
 * Q8_K has no dot product of its own (vec_dot_type -1): it is only ever
 * the right-hand side of a K-quant dot product.
 */
#include <math.h>

#include "kernels.h"

void nbi_q8_K_to_float_ref(const void *restrict src, float *restrict dst, int64_t n)
{
    const block_q8_K *x = src;
    const int64_t nb = n / QK_K;
    for (int64_t i = 0; i < nb; i++)
        for (int j = 0; j < QK_K; j++)
            dst[i * QK_K + j] = x[i].d * x[i].qs[j];
}

void nbi_q8_K_from_float_ref(const float *restrict src, void *restrict dst, int64_t n)
{
    block_q8_K *y = dst;
    const int64_t nb = n / QK_K;
    for (int64_t i = 0; i < nb; i++) {
        const float *x = src + i * QK_K;
        float amax = 0.0f, max = 0.0f;
        int has_nan = 0;
        for (int j = 0; j < QK_K; j++) {
            has_nan |= isnan(x[j]);
            if (fabsf(x[j]) > amax) {
                amax = fabsf(x[j]);
                max = x[j];
            }
        }
        if (nbi_q8_degenerate(has_nan, amax)) {
            memset(&y[i], 0, sizeof y[i]);
            continue;
        }
        const float iscale = -127.0f / max;
        for (int j = 0; j < QK_K; j++) {
            /* lrintf rounds half to even in the default rounding mode, as
             * ggml's nearest_int (its add-2^23 trick) does. */
            const long v = lrintf(iscale * x[j]);
            y[i].qs[j] = (int8_t)(v < 127 ? v : 127);
        }
        for (int g = 0; g < QK_K / 16; g++) {
            int sum = 0;
            for (int l = 0; l < 16; l++)
                sum += y[i].qs[16 * g + l];
            y[i].bsums[g] = (int16_t)sum;
        }
        y[i].d = 1.0f / iscale;
    }
}
