/*
 * q5_K_ref.c - reference kernels for Q5_K.
 *
 * Q4_K plus a fifth bit per element: super-block of 256 = 8 sub-blocks of
 * 32 with fp16 d and dmin, the same 12-byte packing of 6-bit scales and
 * minimums, the same nibble layout in qs, and qh[32] where element e uses
 * bit e/32 of qh[e%32] (worth 16).  Element e is d*sc*q - dmin*m with q in
 * 0..31 and sc, m from sub-block e/32.
 *
 * Dot products run against Q8_K and reproduce ggml's AVX2
 * ggml_vec_dot_q5_K_q8_K (arch/x86/quants.c) bit for bit:
 *  - per super-block, eight int32 lanes: lane l gets sc * q * y for the
 *    elements e with (e % 32) / 4 == l, i.e. bytes 4l..4l+3 of every
 *    32-element group (maddubs, then madd with the sub-block's scale);
 *    integer, so exact;
 *  - d = y.d * dx and dmin = -y.d * dminx, each formed in float;
 *  - lane[l] = fma(d, (float)isum[l], lane[l]);
 *  - the minimum term in one float: summs = fma(dmin, (float)msum, summs),
 *    where msum = sum over sub-blocks of m * (its two bsums) (exact).  In
 *    ggml this is the scalar statement "summs += dmin * msum", which GCC
 *    contracts into an FMA when FMA is enabled (checked against a
 *    prebuilt llama.cpp AVX2 CPU backend); the reference files cannot tell
 *    the two apart;
 *  - result: hsum_float_8(lanes) + summs.
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

/* Scale and minimum of sub-block j (0..7), as ggml's get_scale_min_k4. */
static void scale_min(const uint8_t s[K_SCALE_SIZE], int j, int *sc, int *m)
{
    if (j < 4) {
        *sc = s[j] & 63;
        *m = s[j + 4] & 63;
    } else {
        *sc = (s[j + 4] & 0x0f) | (s[j - 4] >> 6) << 4;
        *m = (s[j + 4] >> 4) | (s[j] >> 6) << 4;
    }
}

/* The 5-bit code of every element of a super-block, in element order.
 * Chunk c (64 elements) takes its low bits from qs[32c..32c+31] (low
 * nibbles first, then high nibbles) and its fifth bits from bits 2c and
 * 2c+1 of qh[0..31]. */
static void unpack_codes(const block_q5_K *b, uint8_t q[QK_K])
{
    for (int c = 0; c < QK_K / 64; c++) {
        const uint8_t *src = b->qs + 32 * c;
        uint8_t *lo = q + 64 * c, *hi = lo + 32;
        for (int l = 0; l < 32; l++) {
            const unsigned h = b->qh[l] >> (2 * c);
            lo[l] = (uint8_t)((src[l] & 0x0f) | (h & 1) << 4);
            hi[l] = (uint8_t)((src[l] >> 4) | (h & 2) << 3);
        }
    }
}

void nbi_q5_K_to_float_ref(const void *restrict src, float *restrict dst, int64_t n)
{
    const block_q5_K *x = src;
    const int64_t nb = n / QK_K;
    uint8_t q[QK_K];
    for (int64_t i = 0; i < nb; i++) {
        const float d = nbi_fp16_to_fp32(x[i].d);
        const float dmin = nbi_fp16_to_fp32(x[i].dmin);
        unpack_codes(&x[i], q);
        float *y = dst + i * QK_K;
        for (int j = 0; j < QK_K / 32; j++) {
            int sc, m;
            scale_min(x[i].scales, j, &sc, &m);
            const float dl = d * sc;
            const float ml = dmin * m;
            for (int l = 0; l < 32; l++)
                y[32 * j + l] = dl * q[32 * j + l] - ml;
        }
    }
}

void nbi_q5_K_vec_dot_ref(int n, float *restrict s, const void *restrict vx,
                          const void *restrict vy)
{
    const block_q5_K *x = vx;
    const block_q8_K *y = vy;
    const int nb = n / QK_K;
    uint8_t q[QK_K];
    float lane[8] = {0};
    float summs = 0.0f;
    for (int i = 0; i < nb; i++) {
        unpack_codes(&x[i], q);
        int32_t acc[8] = {0}, msum = 0;
        for (int j = 0; j < QK_K / 32; j++) {
            int sc, m;
            scale_min(x[i].scales, j, &sc, &m);
            msum += m * (y[i].bsums[2 * j] + y[i].bsums[2 * j + 1]);
            const uint8_t *qj = q + 32 * j;
            const int8_t *yj = y[i].qs + 32 * j;
            for (int l = 0; l < 8; l++) {
                int32_t dot = 0;
                for (int k = 4 * l; k < 4 * l + 4; k++)
                    dot += qj[k] * yj[k];
                acc[l] += sc * dot;
            }
        }
        const float d = y[i].d * nbi_fp16_to_fp32(x[i].d);
        const float dmin = -y[i].d * nbi_fp16_to_fp32(x[i].dmin);
        summs = fmaf(dmin, (float)msum, summs);
        for (int l = 0; l < 8; l++)
            lane[l] = fmaf(d, (float)acc[l], lane[l]);
    }
    *s = nbi_hsum8(lane) + summs;
}
