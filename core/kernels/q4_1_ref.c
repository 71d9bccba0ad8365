/*
 * q4_1_ref.c - reference kernels for Q4_1.
 *
 * Block of 32: fp16 scale d, fp16 minimum m, and 16 bytes of 4-bit codes
 * (element j in the low nibble of byte j, element j+16 in the high one).
 * Element value is q * d + m: an asymmetric grid from the block minimum to
 * its maximum in 15 steps.
 *
 * Dot products run against Q8_1 activations.  Because every weight carries
 * + m, the dot product is d*dy*sum(q*qy) + m*sum(y), and Q8_1 stores
 * sum(y) (as s), so the kernel needs no per-element minimum.
 *
 * The dot product reproduces ggml's AVX2 ggml_vec_dot_q4_1_q8_1
 * (arch/x86/quants.c) bit for bit:
 *  - eight int32 lanes per block, lane l holding the products of the codes
 *    (0..15, no offset) of elements 4l..4l+3 with the activations (exact);
 *  - d = dx*dy in float; lane[l] = fma(d, isum[l], lane[l]) block by block;
 *  - separately, in one float, summs += m * s (the product of two fp16
 *    values is exact in float, so fused or not it is the same);
 *  - result: hsum_float_8(lanes) + summs.
 */
#include <float.h>
#include <math.h>

#include "kernels.h"

/* Every fused multiply-add is an explicit fmaf; nothing else may be fused.
 * GCC does not contract in ISO C mode (-std=c11); clang must be told. */
#ifdef __clang__
#pragma STDC FP_CONTRACT OFF
#endif

void nbi_q4_1_to_float_ref(const void *restrict src, float *restrict dst, int64_t n)
{
    const block_q4_1 *x = src;
    const int64_t nb = n / QK4_1;
    for (int64_t i = 0; i < nb; i++) {
        const float d = nbi_fp16_to_fp32(x[i].d);
        const float m = nbi_fp16_to_fp32(x[i].m);
        float *y = dst + i * QK4_1;
        for (int j = 0; j < QK4_1 / 2; j++) {
            y[j] = (x[i].qs[j] & 0x0f) * d + m;
            y[j + QK4_1 / 2] = (x[i].qs[j] >> 4) * d + m;
        }
    }
}

void nbi_q4_1_from_float_ref(const float *restrict src, void *restrict dst, int64_t n)
{
    block_q4_1 *y = dst;
    const int64_t nb = n / QK4_1;
    for (int64_t i = 0; i < nb; i++) {
        const float *x = src + i * QK4_1;
        float min = FLT_MAX, max = -FLT_MAX;
        for (int j = 0; j < QK4_1; j++) {
            if (x[j] < min)
                min = x[j];
            if (x[j] > max)
                max = x[j];
        }
        const float d = (max - min) / 15.0f;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        y[i].d = nbi_fp32_to_fp16(d);
        y[i].m = nbi_fp32_to_fp16(min);
        /* Codes use the unrounded min and 1/d, as ggml does. */
        for (int j = 0; j < QK4_1 / 2; j++) {
            int q0 = (int)((x[j] - min) * id + 0.5f);
            int q1 = (int)((x[j + QK4_1 / 2] - min) * id + 0.5f);
            q0 = q0 < 15 ? q0 : 15;
            q1 = q1 < 15 ? q1 : 15;
            y[i].qs[j] = (uint8_t)(q0 | (q1 << 4));
        }
    }
}

void nbi_q4_1_vec_dot_ref(int n, float *restrict s, const void *restrict vx,
                          const void *restrict vy)
{
    const block_q4_1 *x = vx;
    const block_q8_1 *y = vy;
    const int nb = n / QK4_1;
    float lane[8] = {0};
    float summs = 0.0f;
    for (int i = 0; i < nb; i++) {
        int32_t p[QK4_1]; /* products in element order */
        for (int j = 0; j < QK4_1 / 2; j++) {
            p[j] = (x[i].qs[j] & 0x0f) * y[i].qs[j];
            p[j + QK4_1 / 2] = (x[i].qs[j] >> 4) * y[i].qs[j + QK4_1 / 2];
        }
        const float d = nbi_fp16_to_fp32(x[i].d) * nbi_fp16_to_fp32(y[i].d);
        /* m * s is exact in float (two 11-bit significands), so whether
         * ggml's compiler fuses this statement does not matter. */
        summs += nbi_fp16_to_fp32(x[i].m) * nbi_fp16_to_fp32(y[i].s);
        for (int l = 0; l < 8; l++) {
            const int32_t isum = p[4 * l] + p[4 * l + 1] + p[4 * l + 2] + p[4 * l + 3];
            lane[l] = fmaf(d, (float)isum, lane[l]);
        }
    }
    *s = nbi_hsum8(lane) + summs;
}
