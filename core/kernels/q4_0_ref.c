/*
 * q4_0_ref.c - reference kernels for Q4_0.
 *
 * Block of 32: an fp16 scale d and 16 bytes of 4-bit codes q in 0..15.
 * Element j (j < 16) is the low nibble of byte j, element j+16 the high
 * nibble, and each element is (q - 8) * d: a symmetric grid -8d..7d.
 *
 * The quantizer (ggml's quantize_row_q4_0_ref) picks d = m / -8, where m is
 * the signed value of largest magnitude, so that m itself lands exactly on
 * code 0 (the one end of the grid that has no mirror) and the rest round
 * to nearest by truncating x/d + 8.5.
 *
 * Dot products run against Q8_0 activations and reproduce what llama.cpp
 * computes on x86 with AVX2.  There, Q4_0 matrices whose row count is a
 * multiple of 8 (every matrix of the models we test) are repacked at load
 * into groups of 8 interleaved rows (repack.cpp, q4_0_8x8) and multiplied
 * by ggml_gemv_q4_0_8x8_q8_0 (one activation row) or the matching gemm
 * (four rows at a time); both do, for every output, exactly this:
 *  - per block, the exact integer sum of the 32 products;
 *  - the block scale d = dx*dy formed in float;
 *  - one float accumulator per output, updated block by block with a
 *    fused multiply-add: sum = fma((float)isum, d, sum).
 * There are no lanes and no horizontal sum.  (Unrepacked Q4_0 goes through
 * ggml_vec_dot_q4_0_q8_0 instead, which keeps eight lanes as Q8_0 does and
 * rounds differently; llama.cpp only takes that path for matrices whose
 * row count is not a multiple of 8.)
 */
#include <math.h>

#include "kernels.h"

/* Every fused multiply-add is an explicit fmaf; nothing else may be fused.
 * GCC does not contract in ISO C mode (-std=c11); clang must be told. */
#ifdef __clang__
#pragma STDC FP_CONTRACT OFF
#endif

void nbi_q4_0_to_float_ref(const void *restrict src, float *restrict dst, int64_t n)
{
    const block_q4_0 *x = src;
    const int64_t nb = n / QK4_0;
    for (int64_t i = 0; i < nb; i++) {
        const float d = nbi_fp16_to_fp32(x[i].d);
        float *y = dst + i * QK4_0;
        for (int j = 0; j < QK4_0 / 2; j++) {
            y[j] = ((x[i].qs[j] & 0x0f) - 8) * d;
            y[j + QK4_0 / 2] = ((x[i].qs[j] >> 4) - 8) * d;
        }
    }
}

void nbi_q4_0_from_float_ref(const float *restrict src, void *restrict dst, int64_t n)
{
    block_q4_0 *y = dst;
    const int64_t nb = n / QK4_0;
    for (int64_t i = 0; i < nb; i++) {
        const float *x = src + i * QK4_0;
        float amax = 0.0f, max = 0.0f;
        for (int j = 0; j < QK4_0; j++) {
            if (fabsf(x[j]) > amax) { /* first of equal magnitudes wins */
                amax = fabsf(x[j]);
                max = x[j];
            }
        }
        const float d = max / -8.0f;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        y[i].d = nbi_fp32_to_fp16(d);
        for (int j = 0; j < QK4_0 / 2; j++) {
            /* x*id + 8.5 is never below about 0.5: truncation floors. */
            int q0 = (int)(x[j] * id + 8.5f);
            int q1 = (int)(x[j + QK4_0 / 2] * id + 8.5f);
            q0 = q0 < 15 ? q0 : 15;
            q1 = q1 < 15 ? q1 : 15;
            y[i].qs[j] = (uint8_t)(q0 | (q1 << 4));
        }
    }
}

void nbi_q4_0_vec_dot_ref(int n, float *restrict s, const void *restrict vx,
                          const void *restrict vy)
{
    const block_q4_0 *x = vx;
    const block_q8_0 *y = vy;
    const int nb = n / QK4_0;
    float sum = 0.0f;
    for (int i = 0; i < nb; i++) {
        int32_t isum = 0;
        for (int j = 0; j < QK4_0 / 2; j++) {
            isum += ((x[i].qs[j] & 0x0f) - 8) * y[i].qs[j];
            isum += ((x[i].qs[j] >> 4) - 8) * y[i].qs[j + QK4_0 / 2];
        }
        const float d = nbi_fp16_to_fp32(x[i].d) * nbi_fp16_to_fp32(y[i].d);
        sum = fmaf((float)isum, d, sum);
    }
    *s = sum;
}
