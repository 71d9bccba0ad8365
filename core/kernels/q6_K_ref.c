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
 * Dot products run against Q8_K.  No quantizer (weights are only read).
 */
#include "kernels.h"

/* ggml rounds each product before adding it; a fused multiply-add would
 * not.  GCC does not fuse in ISO C mode (-std=c11); clang must be told. */
#ifdef __clang__
#pragma STDC FP_CONTRACT OFF
#endif

static void unpack_codes(const block_q6_K *b, int8_t q[QK_K])
{
    for (int e = 0; e < QK_K; e++) {
        const int half = e / 128, r = e % 128;
        const int quarter = r / 32, l = r % 32;
        const uint8_t lo_byte = b->ql[64 * half + l + 32 * (quarter & 1)];
        const int low = (lo_byte >> (4 * (quarter >> 1))) & 0x0f;
        const int high = (b->qh[32 * half + l] >> (2 * quarter)) & 3;
        q[e] = (int8_t)((low | high << 4) - 32);
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

/* Lane structure as in q3_K_ref.c: it reproduces ggml's rounding. */
void nbi_q6_K_vec_dot_ref(int n, float *restrict s, const void *restrict vx,
                          const void *restrict vy)
{
    const block_q6_K *x = vx;
    const block_q8_K *y = vy;
    const int nb = n / QK_K;
    int8_t q[QK_K];
    float lanes[8] = {0};
    for (int i = 0; i < nb; i++) {
        unpack_codes(&x[i], q);
        int32_t acc[8] = {0};
        for (int e = 0; e < QK_K; e++)
            acc[e % 8] += x[i].scales[e / 16] * (q[e] * y[i].qs[e]);
        const float d = nbi_fp16_to_fp32(x[i].d) * y[i].d;
        for (int l = 0; l < 8; l++)
            lanes[l] += d * acc[l];
    }
    float sum = 0.0f;
    for (int l = 0; l < 8; l++)
        sum += lanes[l];
    *s = sum;
}
