/*
 * q8_0_ref.c - reference kernels for Q8_0.
 *
 * Block of 32: an fp16 scale d and 32 signed bytes; element i is qs[i]*d.
 * Q8_0 is both a weight type and the activation format that Q4_0, Q5_0,
 * Q8_0 and IQ4_NL weights are multiplied against.
 *
 * The quantizer (used only for activations) produces the bytes of ggml's
 * x86 quantize_row_q8_0 (AVX2 path, arch/x86/quants.c), not those of the
 * portable quantize_row_q8_0_ref: amax is the largest |x|, the multiplier
 * is id = 127/amax, each x*id is rounded half to even (_mm256_round_ps,
 * i.e. nearbyintf), and d = amax/127 is narrowed to fp16.  (The portable
 * quantizer multiplies by 1/d and rounds half away from zero; the two
 * disagree on a few bytes per thousand.)  A degenerate block (a NaN or
 * an infinity in it, or amax below NBI_Q8_AMAX_MIN, zero included: see
 * nbi_q8_degenerate in kernels.h) is written as all zeros, d = 0 and
 * quants 0, which is what ggml gives an all-zero block (for the other
 * degenerate blocks ggml's bytes are whatever its conversions of
 * infinities and NaNs to integers happen to give).
 *
 * The dot product reproduces ggml's AVX2 ggml_vec_dot_q8_0_q8_0 bit for
 * bit; llamafile's tinyBLAS_Q0_AVX, which llama.cpp uses for batches of
 * two or more rows, does the same arithmetic per output:
 *  - per block, eight int32 lane sums: lane l holds the products of
 *    elements 4l..4l+3 (maddubs + madd, or vpdpbusd with VNNI; all
 *    integer, so exact);
 *  - per block, the scale d = dx*dy is formed in float and each lane is
 *    accumulated with a fused multiply-add: lane[l] = fma(d, isum[l],
 *    lane[l]);
 *  - after the last block the eight float lanes are added in
 *    hsum_float_8 order (nbi_hsum8).
 */
#include <math.h>

#include "kernels.h"

/* Every fused multiply-add is an explicit fmaf; nothing else may be fused.
 * GCC does not contract in ISO C mode (-std=c11); clang must be told. */
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
        int has_nan = 0;
        for (int j = 0; j < QK8_0; j++) {
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
    float lane[8] = {0};
    for (int i = 0; i < nb; i++) {
        int32_t p[QK8_0];
        for (int j = 0; j < QK8_0; j++)
            p[j] = x[i].qs[j] * y[i].qs[j];
        const float d = nbi_fp16_to_fp32(x[i].d) * nbi_fp16_to_fp32(y[i].d);
        for (int l = 0; l < 8; l++) {
            const int32_t isum = p[4 * l] + p[4 * l + 1] + p[4 * l + 2] + p[4 * l + 3];
            lane[l] = fmaf(d, (float)isum, lane[l]);
        }
    }
    *s = nbi_hsum8(lane);
}
