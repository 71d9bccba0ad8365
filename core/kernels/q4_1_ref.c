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
 */
#include <float.h>

#include "kernels.h"

/* ggml rounds each product before adding it; a fused multiply-add would
 * not.  GCC does not fuse in ISO C mode (-std=c11); clang must be told. */
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
    float sum = 0.0f;
    for (int i = 0; i < nb; i++) {
        int32_t isum = 0;
        for (int j = 0; j < QK4_1 / 2; j++) {
            isum += (x[i].qs[j] & 0x0f) * y[i].qs[j];
            isum += (x[i].qs[j] >> 4) * y[i].qs[j + QK4_1 / 2];
        }
        const float dd = nbi_fp16_to_fp32(x[i].d) * nbi_fp16_to_fp32(y[i].d);
        sum += dd * isum + nbi_fp16_to_fp32(x[i].m) * nbi_fp16_to_fp32(y[i].s);
    }
    *s = sum;
}
