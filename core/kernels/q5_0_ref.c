/*
 * q5_0_ref.c - reference kernels for Q5_0.
 *
 * Block of 32: fp16 scale d, 4 bytes qh holding the fifth bit of every
 * element (bit j of the little-endian 32-bit word belongs to element j),
 * and 16 bytes of low nibbles laid out as in Q4_0 (element j low nibble of
 * byte j, element j+16 high nibble).  Element value is (q - 16) * d with
 * q in 0..31.  The quantizer is Q4_0's with 16 in place of 8.
 *
 * Dot products run against Q8_0 activations and reproduce ggml's AVX2
 * ggml_vec_dot_q5_0_q8_0 (arch/x86/quants.c) bit for bit; tinyBLAS_Q0_AVX,
 * which llama.cpp uses for batches, does the same per output.  Eight int32
 * lanes per block, lane l holding the products of elements 4l..4l+3
 * (exact); d = dx*dy in float; lane[l] = fma(d, isum[l], lane[l]) block by
 * block; the lanes added at the end in hsum_float_8 order (nbi_hsum8).
 */
#include <math.h>

#include "kernels.h"

/* Every fused multiply-add is an explicit fmaf; nothing else may be fused.
 * GCC does not contract in ISO C mode (-std=c11); clang must be told. */
#ifdef __clang__
#pragma STDC FP_CONTRACT OFF
#endif

static uint32_t load_qh(const uint8_t qh[4])
{
    return (uint32_t)qh[0] | (uint32_t)qh[1] << 8 | (uint32_t)qh[2] << 16 |
           (uint32_t)qh[3] << 24;
}

/* The signed 5-bit value of element j (0..31) of a block. */
static int q5_0_value(const block_q5_0 *b, uint32_t qh, int j)
{
    const int lo = j < QK5_0 / 2 ? b->qs[j] & 0x0f : b->qs[j - QK5_0 / 2] >> 4;
    return (lo | (int)((qh >> j) & 1) << 4) - 16;
}

void nbi_q5_0_to_float_ref(const void *restrict src, float *restrict dst, int64_t n)
{
    const block_q5_0 *x = src;
    const int64_t nb = n / QK5_0;
    for (int64_t i = 0; i < nb; i++) {
        const float d = nbi_fp16_to_fp32(x[i].d);
        const uint32_t qh = load_qh(x[i].qh);
        for (int j = 0; j < QK5_0; j++)
            dst[i * QK5_0 + j] = q5_0_value(&x[i], qh, j) * d;
    }
}

void nbi_q5_0_from_float_ref(const float *restrict src, void *restrict dst, int64_t n)
{
    block_q5_0 *y = dst;
    const int64_t nb = n / QK5_0;
    for (int64_t i = 0; i < nb; i++) {
        const float *x = src + i * QK5_0;
        float amax = 0.0f, max = 0.0f;
        for (int j = 0; j < QK5_0; j++) {
            if (fabsf(x[j]) > amax) {
                amax = fabsf(x[j]);
                max = x[j];
            }
        }
        const float d = max / -16.0f;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        y[i].d = nbi_fp32_to_fp16(d);
        uint32_t qh = 0;
        for (int j = 0; j < QK5_0 / 2; j++) {
            int q0 = (int)(x[j] * id + 16.5f);
            int q1 = (int)(x[j + QK5_0 / 2] * id + 16.5f);
            q0 = q0 < 31 ? q0 : 31;
            q1 = q1 < 31 ? q1 : 31;
            y[i].qs[j] = (uint8_t)((q0 & 0x0f) | (q1 & 0x0f) << 4);
            qh |= (uint32_t)(q0 >> 4) << j;
            qh |= (uint32_t)(q1 >> 4) << (j + QK5_0 / 2);
        }
        for (int k = 0; k < 4; k++)
            y[i].qh[k] = (uint8_t)(qh >> (8 * k));
    }
}

void nbi_q5_0_vec_dot_ref(int n, float *restrict s, const void *restrict vx,
                          const void *restrict vy)
{
    const block_q5_0 *x = vx;
    const block_q8_0 *y = vy;
    const int nb = n / QK5_0;
    float lane[8] = {0};
    for (int i = 0; i < nb; i++) {
        const uint32_t qh = load_qh(x[i].qh);
        int32_t p[QK5_0]; /* products in element order */
        for (int j = 0; j < QK5_0 / 2; j++) {
            const int lo = (x[i].qs[j] & 0x0f) | (int)((qh >> j) & 1) << 4;
            const int hi = (x[i].qs[j] >> 4) | (int)((qh >> (j + QK5_0 / 2)) & 1) << 4;
            p[j] = (lo - 16) * y[i].qs[j];
            p[j + QK5_0 / 2] = (hi - 16) * y[i].qs[j + QK5_0 / 2];
        }
        const float d = nbi_fp16_to_fp32(x[i].d) * nbi_fp16_to_fp32(y[i].d);
        for (int l = 0; l < 8; l++) {
            const int32_t isum = p[4 * l] + p[4 * l + 1] + p[4 * l + 2] + p[4 * l + 3];
            lane[l] = fmaf(d, (float)isum, lane[l]);
        }
    }
    *s = nbi_hsum8(lane);
}
