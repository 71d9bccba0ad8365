/*
 * q3_K_ref.c - reference kernels for Q3_K.
 *
 * Super-block of 256 = 16 sub-blocks of 16, one fp16 d.  Each sub-block has
 * a 6-bit scale stored with an offset of 32 (so -32..31), packed into 12
 * bytes: the low 4 bits of scales 0..7 and 8..15 are the low and high
 * nibbles of bytes 0..7, and the top 2 bits of scale j sit in byte
 * 8 + j%4 at bit 2*(j/4).  Element codes are 3 bits, -4..3: two low bits
 * in qs (laid out as in Q2_K) and a high bit in hmask, where element e
 * uses bit e/32 of hmask[e%32]; a clear high bit means "subtract 4".
 * Element e is d * s * q, s being the signed scale of sub-block e/16.
 *
 * Dot products run against Q8_K and reproduce ggml's AVX2
 * ggml_vec_dot_q3_K_q8_K (arch/x86/quants.c) bit for bit: per super-block
 * eight int32 lanes of s * q * y, lane l taking the elements e with
 * (e % 32) / 4 == l (exact; ggml forms low-bits-times-y minus
 * 4-times-y for a clear high bit, which is the same integer); d = y.d * dx
 * in float; lane[l] = fma(d, (float)isum[l], lane[l]); after the last
 * super-block the lanes are added in hsum_float_8 order (nbi_hsum8).
 *
 * No quantizer (weights are only read).
 */
#include <math.h>

#include "kernels.h"

/* Every fused multiply-add is an explicit fmaf; nothing else may be fused.
 * GCC does not contract in ISO C mode (-std=c11); clang must be told. */
#ifdef __clang__
#pragma STDC FP_CONTRACT OFF
#endif

/* The 16 signed sub-block scales (already minus 32). */
static void unpack_scales(const block_q3_K *b, int sc[QK_K / 16])
{
    for (int j = 0; j < QK_K / 16; j++) {
        const int lo = j < 8 ? b->scales[j] & 0x0f : b->scales[j - 8] >> 4;
        const int hi = (b->scales[8 + j % 4] >> (2 * (j / 4))) & 3;
        sc[j] = (lo | hi << 4) - 32;
    }
}

/* The signed 3-bit code of every element, in element order: element
 * 128h + 32k + l takes bits 2k..2k+1 of qs[32h + l] and bit 4h+k of
 * hmask[l]. */
static void unpack_codes(const block_q3_K *b, int8_t q[QK_K])
{
    for (int h = 0; h < 2; h++) {
        for (int k = 0; k < 4; k++) {
            int8_t *dst = q + 128 * h + 32 * k;
            const int hbit = 4 * h + k;
            for (int l = 0; l < 32; l++) {
                const int low = (b->qs[32 * h + l] >> (2 * k)) & 3;
                const int high = (b->hmask[l] >> hbit) & 1;
                dst[l] = (int8_t)(low - (high ? 0 : 4));
            }
        }
    }
}

void nbi_q3_K_to_float_ref(const void *restrict src, float *restrict dst, int64_t n)
{
    const block_q3_K *x = src;
    const int64_t nb = n / QK_K;
    int sc[QK_K / 16];
    int8_t q[QK_K];
    for (int64_t i = 0; i < nb; i++) {
        const float d = nbi_fp16_to_fp32(x[i].d);
        unpack_scales(&x[i], sc);
        unpack_codes(&x[i], q);
        float *y = dst + i * QK_K;
        for (int g = 0; g < QK_K / 16; g++) {
            const float dl = d * sc[g];
            for (int l = 0; l < 16; l++)
                y[16 * g + l] = dl * q[16 * g + l];
        }
    }
}

void nbi_q3_K_vec_dot_ref(int n, float *restrict s, const void *restrict vx,
                          const void *restrict vy)
{
    const block_q3_K *x = vx;
    const block_q8_K *y = vy;
    const int nb = n / QK_K;
    int sc[QK_K / 16];
    int8_t q[QK_K];
    float lane[8] = {0};
    for (int i = 0; i < nb; i++) {
        unpack_scales(&x[i], sc);
        unpack_codes(&x[i], q);
        int32_t acc[8] = {0};
        for (int g = 0; g < QK_K / 16; g++) { /* sub-block g: elements 16g.. */
            const int8_t *qg = q + 16 * g;
            const int8_t *yg = y[i].qs + 16 * g;
            const int l0 = 4 * (g & 1); /* lanes 0..3 or 4..7 of its 32-group */
            for (int l = 0; l < 4; l++) {
                int32_t dot = 0;
                for (int k = 4 * l; k < 4 * l + 4; k++)
                    dot += qg[k] * yg[k];
                acc[l0 + l] += sc[g] * dot;
            }
        }
        const float d = y[i].d * nbi_fp16_to_fp32(x[i].d);
        for (int l = 0; l < 8; l++)
            lane[l] = fmaf(d, (float)acc[l], lane[l]);
    }
    *s = nbi_hsum8(lane);
}
