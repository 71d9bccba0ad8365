/*
 * q4_K_ref.c - reference kernels for Q4_K.
 *
 * Super-block of 256 = 8 sub-blocks of 32, with fp16 d and dmin.  Each
 * sub-block has a 6-bit scale and a 6-bit minimum packed into 12 bytes:
 * for j < 4 they are the low 6 bits of bytes j and j+4; for j >= 4 the low
 * 4 bits come from the nibbles of byte j+4 and the top 2 bits from the
 * spare top bits of bytes j-4 (scale) and j (minimum).  Codes are 4 bits:
 * the 32 bytes of each 64-element chunk hold elements 0..31 of the chunk
 * in their low nibbles and 32..63 in their high nibbles.  Element e is
 * d*sc*q - dmin*m with sc, m from sub-block e/32.
 *
 * Dot products run against Q8_K; the minimum term uses Q8_K's bsums.
 * No quantizer (weights are only read).
 */
#include "kernels.h"

/* ggml rounds each product before adding it; a fused multiply-add would
 * not.  GCC does not fuse in ISO C mode (-std=c11); clang must be told. */
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

static void unpack_codes(const block_q4_K *b, uint8_t q[QK_K])
{
    for (int e = 0; e < QK_K; e++) {
        const uint8_t byte = b->qs[32 * (e / 64) + e % 32];
        q[e] = (e % 64) < 32 ? byte & 0x0f : byte >> 4;
    }
}

void nbi_q4_K_to_float_ref(const void *restrict src, float *restrict dst, int64_t n)
{
    const block_q4_K *x = src;
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

/* Lane structure as in q3_K_ref.c: it reproduces ggml's rounding. */
void nbi_q4_K_vec_dot_ref(int n, float *restrict s, const void *restrict vx,
                          const void *restrict vy)
{
    const block_q4_K *x = vx;
    const block_q8_K *y = vy;
    const int nb = n / QK_K;
    uint8_t q[QK_K];
    float lanes[8] = {0};
    float sum = 0.0f;
    for (int i = 0; i < nb; i++) {
        int sc[QK_K / 32], m[QK_K / 32];
        for (int j = 0; j < QK_K / 32; j++)
            scale_min(x[i].scales, j, &sc[j], &m[j]);
        unpack_codes(&x[i], q);
        int32_t msum = 0;
        for (int g = 0; g < QK_K / 16; g++)
            msum += y[i].bsums[g] * m[g / 2];
        int32_t acc[8] = {0};
        for (int e = 0; e < QK_K; e++)
            acc[e % 8] += sc[e / 32] * (q[e] * y[i].qs[e]);
        const float d = nbi_fp16_to_fp32(x[i].d) * y[i].d;
        for (int l = 0; l < 8; l++)
            lanes[l] += d * acc[l];
        const float dmin = nbi_fp16_to_fp32(x[i].dmin) * y[i].d;
        sum -= dmin * msum;
    }
    for (int l = 0; l < 8; l++)
        sum += lanes[l];
    *s = sum;
}
