/*
 * q5_K_ref.c - reference kernels for Q5_K.
 *
 * Q4_K plus a fifth bit per element: super-block of 256 = 8 sub-blocks of
 * 32 with fp16 d and dmin, the same 12-byte packing of 6-bit scales and
 * minimums, the same nibble layout in qs, and qh[32] where element e uses
 * bit e/32 of qh[e%32] (worth 16).  Element e is d*sc*q - dmin*m with q in
 * 0..31 and sc, m from sub-block e/32.
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

static void unpack_codes(const block_q5_K *b, uint8_t q[QK_K])
{
    for (int e = 0; e < QK_K; e++) {
        const uint8_t byte = b->qs[32 * (e / 64) + e % 32];
        const int low = (e % 64) < 32 ? byte & 0x0f : byte >> 4;
        const int high = (b->qh[e % 32] >> (e / 32)) & 1;
        q[e] = (uint8_t)(low | high << 4);
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

/* Lane structure as in q3_K_ref.c: it reproduces ggml's rounding. */
void nbi_q5_K_vec_dot_ref(int n, float *restrict s, const void *restrict vx,
                          const void *restrict vy)
{
    const block_q5_K *x = vx;
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
