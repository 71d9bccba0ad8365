/*
 * q2_K_ref.c - reference kernels for Q2_K.
 *
 * Super-block of 256 = 16 sub-blocks of 16.  Each sub-block has a byte of
 * scales (low nibble: scale, high nibble: minimum), each quantized against
 * the super-block's fp16 d and dmin.  Codes are 2 bits: byte l of each
 * 32-byte half (qs[0..31] for elements 0..127, qs[32..63] for 128..255)
 * holds four elements 32 apart, the first in its lowest two bits.
 * Element e is d*sc*q - dmin*m with sc, m from sub-block e/16.
 *
 * Dot products run against Q8_K.  The minimum term sum(dmin*m*y) only needs
 * the sums of the activations per 16, which Q8_K carries as bsums, so the
 * integer loop sees the raw codes alone.
 *
 * No quantizer: nibble reads Q2_K weights but never writes them.
 */
#include "kernels.h"

/* ggml rounds each product before adding it; a fused multiply-add would
 * not.  GCC does not fuse in ISO C mode (-std=c11); clang must be told. */
#ifdef __clang__
#pragma STDC FP_CONTRACT OFF
#endif

/* The 2-bit code of every element of a super-block, in element order. */
static void unpack_codes(const block_q2_K *b, uint8_t q[QK_K])
{
    for (int e = 0; e < QK_K; e++) {
        const int half = e / 128, r = e % 128;
        q[e] = (b->qs[32 * half + r % 32] >> (2 * (r / 32))) & 3;
    }
}

void nbi_q2_K_to_float_ref(const void *restrict src, float *restrict dst, int64_t n)
{
    const block_q2_K *x = src;
    const int64_t nb = n / QK_K;
    uint8_t q[QK_K];
    for (int64_t i = 0; i < nb; i++) {
        const float d = nbi_fp16_to_fp32(x[i].d);
        const float dmin = nbi_fp16_to_fp32(x[i].dmin);
        unpack_codes(&x[i], q);
        float *y = dst + i * QK_K;
        for (int g = 0; g < QK_K / 16; g++) {
            const float dl = d * (x[i].scales[g] & 0x0f);
            const float ml = dmin * (x[i].scales[g] >> 4);
            for (int l = 0; l < 16; l++)
                y[16 * g + l] = dl * q[16 * g + l] - ml;
        }
    }
}

void nbi_q2_K_vec_dot_ref(int n, float *restrict s, const void *restrict vx,
                          const void *restrict vy)
{
    const block_q2_K *x = vx;
    const block_q8_K *y = vy;
    const int nb = n / QK_K;
    uint8_t q[QK_K];
    float sum = 0.0f;
    for (int i = 0; i < nb; i++) {
        unpack_codes(&x[i], q);
        int32_t isum = 0; /* sum over sub-blocks of sc * dot(q, qy) */
        int32_t msum = 0; /* sum over sub-blocks of m * sum(qy) */
        for (int g = 0; g < QK_K / 16; g++) {
            int32_t dot = 0;
            for (int l = 0; l < 16; l++)
                dot += q[16 * g + l] * y[i].qs[16 * g + l];
            isum += (x[i].scales[g] & 0x0f) * dot;
            msum += (x[i].scales[g] >> 4) * y[i].bsums[g];
        }
        const float dall = y[i].d * nbi_fp16_to_fp32(x[i].d);
        const float dmin = y[i].d * nbi_fp16_to_fp32(x[i].dmin);
        sum += dall * isum - dmin * msum;
    }
    *s = sum;
}
