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
 * The dot product reproduces ggml's AVX2 ggml_vec_dot_q2_K_q8_K
 * (arch/x86/quants.c) bit for bit.  (llama.cpp repacks Q2_K only on
 * AVX-512 machines; the reference machine evidently was not one.)  Per
 * super-block, with d = y.d * dx and dmin = -y.d * dminx formed in float:
 *  - minimum lanes first: lane l (0..7) gets the exact integer
 *    m[2l]*bsums[2l] + m[2l+1]*bsums[2l+1] (madd of the 16 minimums with
 *    the 16 bsums) and lane[l] = fma(dmin, (float)that, lane[l]);
 *  - then eight int32 lanes of sc * q * y: lane l takes the elements e
 *    with (e % 32) / 4 == l (exact), and lane[l] = fma(d, (float)isum[l],
 *    lane[l]);
 *  - after the last super-block the eight lanes are added in
 *    hsum_float_8 order (nbi_hsum8).
 *
 * No quantizer: nibble reads Q2_K weights but never writes them.
 */
#include <math.h>

#include "kernels.h"

/* Every fused multiply-add is an explicit fmaf; nothing else may be fused.
 * GCC does not contract in ISO C mode (-std=c11); clang must be told. */
#ifdef __clang__
#pragma STDC FP_CONTRACT OFF
#endif

/* The 2-bit code of every element of a super-block, in element order. */
static void unpack_codes(const block_q2_K *b, uint8_t q[QK_K])
{
    for (int half = 0; half < 2; half++) {
        const uint8_t *src = b->qs + 32 * half;
        for (int k = 0; k < 4; k++) {
            uint8_t *dst = q + 128 * half + 32 * k;
            for (int l = 0; l < 32; l++)
                dst[l] = (src[l] >> (2 * k)) & 3;
        }
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
    float lane[8] = {0};
    for (int i = 0; i < nb; i++) {
        const float d = y[i].d * nbi_fp16_to_fp32(x[i].d);
        const float dmin = -y[i].d * nbi_fp16_to_fp32(x[i].dmin);
        for (int l = 0; l < 8; l++) {
            const int32_t mprod = (x[i].scales[2 * l] >> 4) * y[i].bsums[2 * l] +
                                  (x[i].scales[2 * l + 1] >> 4) * y[i].bsums[2 * l + 1];
            lane[l] = fmaf(dmin, (float)mprod, lane[l]);
        }
        unpack_codes(&x[i], q);
        int32_t acc[8] = {0};
        for (int g = 0; g < QK_K / 16; g++) { /* sub-block g: elements 16g.. */
            const int sc = x[i].scales[g] & 0x0f;
            const uint8_t *qg = q + 16 * g;
            const int8_t *yg = y[i].qs + 16 * g;
            const int l0 = 4 * (g & 1); /* lanes 0..3 or 4..7 of its 32-group */
            for (int l = 0; l < 4; l++) {
                int32_t dot = 0;
                for (int k = 4 * l; k < 4 * l + 4; k++)
                    dot += qg[k] * yg[k];
                acc[l0 + l] += sc * dot;
            }
        }
        for (int l = 0; l < 8; l++)
            lane[l] = fmaf(d, (float)acc[l], lane[l]);
    }
    *s = nbi_hsum8(lane);
}
