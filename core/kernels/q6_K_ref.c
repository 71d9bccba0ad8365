/*
 * q6_K_ref.c - reference kernels for Q6_K.
 *
 * Super-block of 256 = 16 sub-blocks of 16, one fp16 d and a signed 8-bit
 * scale per sub-block.  Codes are 6 bits stored with an offset of 32
 * (-32..31): the low 4 bits in ql and the top 2 in qh.  Per 128-element
 * half, ql has 64 bytes: byte l holds elements l (low nibble) and l+64
 * (high nibble), byte l+32 holds elements l+32 and l+96; qh has 32 bytes
 * whose byte l holds the top bits of elements l, l+32, l+64 and l+96 at
 * bits 0, 2, 4 and 6.  Element e is d * scale[e/16] * q.
 *
 * Dot products run against Q8_K and reproduce ggml's AVX2
 * ggml_vec_dot_q6_K_q8_K (arch/x86/quants.c, current form) bit for bit.
 * ggml multiplies the unsigned codes u = q + 32 (0..63) and removes the
 * offset through Q8_K's bsums, and that decides how the integer total is
 * split over the lanes:
 *  - lane l (0..7) first gets sc * u * y for the elements e with
 *    (e % 32) / 4 == l (maddubs, madd with the sub-block scale);
 *  - then lane l loses 32 * (sc[2l]*bsums[2l] + sc[2l+1]*bsums[2l+1]),
 *    the offset of sub-blocks 2l and 2l+1 (a madd of the 16 bsums with
 *    the 16 scales);
 * all integer, so exact, but the lanes hold other values than the
 * per-lane sum of sc * q * y (an older form of the kernel subtracted
 * 32 * y pair by pair; it gives the same total, split differently, and
 * does not match the reference files).  Then d = y.d * dx in float,
 * lane[l] = fma(d, (float)lane_int[l], lane[l]), and after the last
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

/* The signed 6-bit code of every element, in element order: element
 * 128h + 32k + l takes a nibble of ql[64h + 32(k&1) + l] (low for k < 2,
 * high otherwise) and bits 2k..2k+1 of qh[32h + l]. */
static void unpack_codes(const block_q6_K *b, int8_t q[QK_K])
{
    for (int h = 0; h < 2; h++) {
        for (int k = 0; k < 4; k++) {
            const uint8_t *lo = b->ql + 64 * h + 32 * (k & 1);
            const uint8_t *hi = b->qh + 32 * h;
            const int shift = 4 * (k >> 1);
            int8_t *dst = q + 128 * h + 32 * k;
            for (int l = 0; l < 32; l++) {
                const int low = (lo[l] >> shift) & 0x0f;
                const int high = (hi[l] >> (2 * k)) & 3;
                dst[l] = (int8_t)((low | high << 4) - 32);
            }
        }
    }
}

void nbi_q6_K_to_float_ref(const void *restrict src, float *restrict dst, int64_t n)
{
    const block_q6_K *x = src;
    const int64_t nb = n / QK_K;
    int8_t q[QK_K];
    for (int64_t i = 0; i < nb; i++) {
        const float d = nbi_fp16_to_fp32(x[i].d);
        unpack_codes(&x[i], q);
        float *y = dst + i * QK_K;
        /* (d * scale) * q, in that order, as ggml. */
        for (int e = 0; e < QK_K; e++)
            y[e] = d * x[i].scales[e / 16] * q[e];
    }
}

void nbi_q6_K_vec_dot_ref(int n, float *restrict s, const void *restrict vx,
                          const void *restrict vy)
{
    const block_q6_K *x = vx;
    const block_q8_K *y = vy;
    const int nb = n / QK_K;
    int8_t q[QK_K];
    float lane[8] = {0};
    for (int i = 0; i < nb; i++) {
        unpack_codes(&x[i], q);
        const int8_t *sc = x[i].scales;
        int32_t acc[8];
        for (int l = 0; l < 8; l++) /* the offset of sub-blocks 2l, 2l+1 */
            acc[l] = -32 * (sc[2 * l] * y[i].bsums[2 * l] + sc[2 * l + 1] * y[i].bsums[2 * l + 1]);
        for (int g = 0; g < QK_K / 16; g++) { /* sub-block g: elements 16g.. */
            const int8_t *qg = q + 16 * g;
            const int8_t *yg = y[i].qs + 16 * g;
            const int l0 = 4 * (g & 1); /* lanes 0..3 or 4..7 of its 32-group */
            for (int l = 0; l < 4; l++) {
                int32_t dot = 0;
                for (int k = 4 * l; k < 4 * l + 4; k++)
                    dot += (qg[k] + 32) * yg[k];
                acc[l0 + l] += sc[g] * dot;
            }
        }
        const float d = y[i].d * nbi_fp16_to_fp32(x[i].d);
        for (int l = 0; l < 8; l++)
            lane[l] = fmaf(d, (float)acc[l], lane[l]);
    }
    *s = nbi_hsum8(lane);
}
