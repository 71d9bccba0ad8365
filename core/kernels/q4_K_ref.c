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
 * On x86 with AVX2, llama.cpp repacks Q4_K matrices whose row count is a
 * multiple of 8 into q4_K_8x8 (repack.cpp) and multiplies a single
 * activation row with ggml_gemv_q4_K_8x8_q8_K, which computes for every
 * output, super-block by super-block:
 *  - isum = sum over sub-blocks of sc * dot(codes, activations)  (exact)
 *  - imin = sum over sub-blocks of m * (sum of the sub-block's
 *    activations, from two bsums)                                 (exact)
 *  - acc    = fma((float)isum, dx * dy,    acc)
 *  - accmin = fma((float)imin, dminx * dy, accmin)
 * and returns acc - accmin.  There are no lanes.  This kernel does exactly
 * that.  Two other x86 paths round differently and are not reproduced:
 * the gemm that llama.cpp uses for groups of four activation rows fuses
 * once per 64-element chunk instead of once per super-block, and the
 * unrepacked ggml_vec_dot_q4_K_q8_K (rows not a multiple of 8) keeps eight
 * lanes as q5_K_ref.c does plus four lanes for the minimums.
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

/* The 4-bit code of every element of a super-block, in element order. */
static void unpack_codes(const block_q4_K *b, uint8_t q[QK_K])
{
    for (int c = 0; c < QK_K / 64; c++) {
        const uint8_t *src = b->qs + 32 * c;
        uint8_t *lo = q + 64 * c, *hi = lo + 32;
        for (int l = 0; l < 32; l++) {
            lo[l] = src[l] & 0x0f;
            hi[l] = src[l] >> 4;
        }
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

void nbi_q4_K_vec_dot_ref(int n, float *restrict s, const void *restrict vx,
                          const void *restrict vy)
{
    const block_q4_K *x = vx;
    const block_q8_K *y = vy;
    const int nb = n / QK_K;
    uint8_t q[QK_K];
    float acc = 0.0f, accmin = 0.0f;
    for (int i = 0; i < nb; i++) {
        unpack_codes(&x[i], q);
        int32_t isum = 0, imin = 0;
        for (int j = 0; j < QK_K / 32; j++) {
            int sc, m;
            scale_min(x[i].scales, j, &sc, &m);
            int32_t dot = 0;
            for (int l = 32 * j; l < 32 * j + 32; l++)
                dot += q[l] * y[i].qs[l];
            isum += sc * dot;
            imin += m * (y[i].bsums[2 * j] + y[i].bsums[2 * j + 1]);
        }
        acc = fmaf((float)isum, nbi_fp16_to_fp32(x[i].d) * y[i].d, acc);
        accmin = fmaf((float)imin, nbi_fp16_to_fp32(x[i].dmin) * y[i].d, accmin);
    }
    *s = acc - accmin;
}
