/*
 * q5_1_ref.c - reference kernels for Q5_1.
 *
 * Block of 32: fp16 scale d, fp16 minimum m, 4 bytes qh with the fifth bit
 * of each element (bit j of the little-endian word for element j) and 16
 * bytes of low nibbles laid out as in Q4_1.  Element value is q * d + m
 * with q in 0..31: Q4_1's asymmetric grid with 31 steps.
 *
 * Dot products run against Q8_1 activations, whose precomputed
 * s = dy * sum(qy) supplies the m * sum(y) term.
 *
 * The dot product reproduces ggml's AVX2 ggml_vec_dot_q5_1_q8_1
 * (arch/x86/quants.c) bit for bit, with Q4_1's structure (q4_1_ref.c):
 * eight int32 lanes of four consecutive elements, lane[l] = fma(isum[l],
 * dx*dy, lane[l]) block by block, plain-float summs += m * s, result
 * hsum_float_8(lanes) + summs.
 */
#include <float.h>
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

/* The unsigned 5-bit code of element j (0..31) of a block. */
static int q5_1_code(const block_q5_1 *b, uint32_t qh, int j)
{
    const int lo = j < QK5_1 / 2 ? b->qs[j] & 0x0f : b->qs[j - QK5_1 / 2] >> 4;
    return lo | (int)((qh >> j) & 1) << 4;
}

void nbi_q5_1_to_float_ref(const void *restrict src, float *restrict dst, int64_t n)
{
    const block_q5_1 *x = src;
    const int64_t nb = n / QK5_1;
    for (int64_t i = 0; i < nb; i++) {
        const float d = nbi_fp16_to_fp32(x[i].d);
        const float m = nbi_fp16_to_fp32(x[i].m);
        const uint32_t qh = load_qh(x[i].qh);
        for (int j = 0; j < QK5_1; j++)
            dst[i * QK5_1 + j] = q5_1_code(&x[i], qh, j) * d + m;
    }
}

void nbi_q5_1_from_float_ref(const float *restrict src, void *restrict dst, int64_t n)
{
    block_q5_1 *y = dst;
    const int64_t nb = n / QK5_1;
    for (int64_t i = 0; i < nb; i++) {
        const float *x = src + i * QK5_1;
        float min = FLT_MAX, max = -FLT_MAX;
        for (int j = 0; j < QK5_1; j++) {
            if (x[j] < min)
                min = x[j];
            if (x[j] > max)
                max = x[j];
        }
        const float d = (max - min) / 31.0f;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        y[i].d = nbi_fp32_to_fp16(d);
        y[i].m = nbi_fp32_to_fp16(min);
        uint32_t qh = 0;
        for (int j = 0; j < QK5_1 / 2; j++) {
            /* ggml does not clamp here: (x - min) / d cannot exceed 31.5. */
            const unsigned q0 = (uint8_t)((x[j] - min) * id + 0.5f);
            const unsigned q1 = (uint8_t)((x[j + QK5_1 / 2] - min) * id + 0.5f);
            y[i].qs[j] = (uint8_t)((q0 & 0x0f) | (q1 & 0x0f) << 4);
            qh |= ((q0 >> 4) & 1u) << j;
            qh |= ((q1 >> 4) & 1u) << (j + QK5_1 / 2);
        }
        for (int k = 0; k < 4; k++)
            y[i].qh[k] = (uint8_t)(qh >> (8 * k));
    }
}

void nbi_q5_1_vec_dot_ref(int n, float *restrict s, const void *restrict vx,
                          const void *restrict vy)
{
    const block_q5_1 *x = vx;
    const block_q8_1 *y = vy;
    const int nb = n / QK5_1;
    float lane[8] = {0};
    float summs = 0.0f;
    for (int i = 0; i < nb; i++) {
        const uint32_t qh = load_qh(x[i].qh);
        int32_t p[QK5_1]; /* products in element order */
        for (int j = 0; j < QK5_1 / 2; j++) {
            const int lo = (x[i].qs[j] & 0x0f) | (int)((qh >> j) & 1) << 4;
            const int hi = (x[i].qs[j] >> 4) | (int)((qh >> (j + QK5_1 / 2)) & 1) << 4;
            p[j] = lo * y[i].qs[j];
            p[j + QK5_1 / 2] = hi * y[i].qs[j + QK5_1 / 2];
        }
        const float d = nbi_fp16_to_fp32(x[i].d) * nbi_fp16_to_fp32(y[i].d);
        /* m * s is exact in float, as in q4_1_ref.c. */
        summs += nbi_fp16_to_fp32(x[i].m) * nbi_fp16_to_fp32(y[i].s);
        for (int l = 0; l < 8; l++) {
            const int32_t isum = p[4 * l] + p[4 * l + 1] + p[4 * l + 2] + p[4 * l + 3];
            lane[l] = fmaf((float)isum, d, lane[l]);
        }
    }
    *s = nbi_hsum8(lane) + summs;
}
