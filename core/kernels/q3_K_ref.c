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
 * Dot products run against Q8_K.  No quantizer (weights are only read).
 */
#include "kernels.h"

/* ggml rounds each product before adding it; a fused multiply-add would
 * not.  GCC does not fuse in ISO C mode (-std=c11); clang must be told. */
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

/* The signed 3-bit code of every element, in element order. */
static void unpack_codes(const block_q3_K *b, int8_t q[QK_K])
{
    for (int e = 0; e < QK_K; e++) {
        const int half = e / 128, r = e % 128;
        const int low = (b->qs[32 * half + r % 32] >> (2 * (r / 32))) & 3;
        const int high = (b->hmask[e % 32] >> (e / 32)) & 1;
        q[e] = (int8_t)(low - (high ? 0 : 4));
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

/*
 * ggml's generic kernel accumulates in eight int32 lanes (element index
 * mod 8) within a super-block, adds each lane times the block scale into
 * eight float lanes, and sums those lanes only at the very end.  We keep
 * that order so the float result is identical, not merely close.
 */
void nbi_q3_K_vec_dot_ref(int n, float *restrict s, const void *restrict vx,
                          const void *restrict vy)
{
    const block_q3_K *x = vx;
    const block_q8_K *y = vy;
    const int nb = n / QK_K;
    int sc[QK_K / 16];
    int8_t q[QK_K];
    float lanes[8] = {0};
    for (int i = 0; i < nb; i++) {
        unpack_scales(&x[i], sc);
        unpack_codes(&x[i], q);
        int32_t acc[8] = {0};
        for (int e = 0; e < QK_K; e++)
            acc[e % 8] += sc[e / 16] * (q[e] * y[i].qs[e]);
        const float d = nbi_fp16_to_fp32(x[i].d) * y[i].d;
        for (int l = 0; l < 8; l++)
            lanes[l] += d * acc[l];
    }
    float sum = 0.0f;
    for (int l = 0; l < 8; l++)
        sum += lanes[l];
    *s = sum;
}
