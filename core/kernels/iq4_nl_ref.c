/*
 * iq4_nl_ref.c - reference kernels for IQ4_NL.
 *
 * Block of 32: an fp16 scale d and 16 bytes of 4-bit indices, laid out as
 * in Q4_0 (element j in the low nibble of byte j, element j+16 in the high
 * one).  An index selects one of 16 fixed levels that are spaced more
 * closely near zero than at the ends, matching the bell-shaped spread of
 * trained weights better than Q4_0's even grid.  Element value is
 * d * level[index].
 *
 * Dot products run against Q8_0 activations: the levels are small
 * integers, so the per-block sum stays in int32 as for Q4_0.  On x86 with
 * AVX2 llama.cpp repacks IQ4_NL matrices (row count a multiple of 8) into
 * iq4_nl_8x8 and multiplies them with the same gemv/gemm code as Q4_0, so
 * the float arithmetic per output is Q4_0's (see q4_0_ref.c): per block
 * the exact integer sum, d = dx*dy in float, sum = fma((float)isum, d,
 * sum), no lanes.  (Unrepacked, ggml_vec_dot_iq4_nl_q8_0 would keep two
 * sets of eight lanes, one for even and one for odd blocks.)
 *
 * The quantizer is ggml's quantize_row_iq4_nl_ref, which is the quick
 * variant of its IQ4_NL search (no importance weights, no scale search):
 * a first scale maps the largest-magnitude value m onto the level -127,
 * every element takes the nearest level under that scale, and the stored
 * scale is then the least-squares fit for those indices, weighted by x^2.
 */
#include <math.h>

#include "kernels.h"

/* Every fused multiply-add is an explicit fmaf; nothing else may be fused.
 * GCC does not contract in ISO C mode (-std=c11); clang must be told. */
#ifdef __clang__
#pragma STDC FP_CONTRACT OFF
#endif

static const int8_t levels[16] = {
    -127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113,
};

/* ggml treats blocks whose largest magnitude is below this as zero. */
#define IQ4_NL_ZERO_EPS 1e-15f

/*
 * Index of the level nearest to v; a value exactly between two levels
 * takes the upper one.  Comparing 2v with the sum of two neighbouring
 * levels is exact in float, so ties are decided without rounding error.
 */
static int nearest_level(float v)
{
    int idx = 0;
    for (int j = 1; j < 16; j++)
        if (v + v >= (float)(levels[j - 1] + levels[j]))
            idx = j;
    return idx;
}

void nbi_iq4_nl_to_float_ref(const void *restrict src, float *restrict dst, int64_t n)
{
    const block_iq4_nl *x = src;
    const int64_t nb = n / QK4_NL;
    for (int64_t i = 0; i < nb; i++) {
        const float d = nbi_fp16_to_fp32(x[i].d);
        float *y = dst + i * QK4_NL;
        for (int j = 0; j < QK4_NL / 2; j++) {
            y[j] = d * levels[x[i].qs[j] & 0x0f];
            y[j + QK4_NL / 2] = d * levels[x[i].qs[j] >> 4];
        }
    }
}

void nbi_iq4_nl_from_float_ref(const float *restrict src, void *restrict dst, int64_t n)
{
    block_iq4_nl *y = dst;
    const int64_t nb = n / QK4_NL;
    for (int64_t i = 0; i < nb; i++) {
        const float *x = src + i * QK4_NL;
        uint8_t idx[QK4_NL];
        float amax = 0.0f, max = 0.0f;
        for (int j = 0; j < QK4_NL; j++) {
            if (fabsf(x[j]) > amax) {
                amax = fabsf(x[j]);
                max = x[j];
            }
        }
        float d = 0.0f;
        if (amax < IQ4_NL_ZERO_EPS) {
            memset(idx, 0, sizeof idx);
        } else {
            const float id = 1.0f / (max / levels[0]);
            float sumqx = 0.0f, sumq2 = 0.0f;
            for (int j = 0; j < QK4_NL; j++) {
                idx[j] = (uint8_t)nearest_level(id * x[j]);
                const float w = x[j] * x[j];
                const float q = levels[idx[j]];
                sumqx += w * q * x[j];
                sumq2 += w * q * q;
            }
            d = sumq2 > 0.0f ? sumqx / sumq2 : 0.0f;
        }
        y[i].d = nbi_fp32_to_fp16(d);
        for (int j = 0; j < QK4_NL / 2; j++)
            y[i].qs[j] = (uint8_t)(idx[j] | idx[j + QK4_NL / 2] << 4);
    }
}

void nbi_iq4_nl_vec_dot_ref(int n, float *restrict s, const void *restrict vx,
                            const void *restrict vy)
{
    const block_iq4_nl *x = vx;
    const block_q8_0 *y = vy;
    const int nb = n / QK4_NL;
    float sum = 0.0f;
    for (int i = 0; i < nb; i++) {
        int32_t isum = 0;
        for (int j = 0; j < QK4_NL / 2; j++) {
            isum += levels[x[i].qs[j] & 0x0f] * y[i].qs[j];
            isum += levels[x[i].qs[j] >> 4] * y[i].qs[j + QK4_NL / 2];
        }
        const float d = nbi_fp16_to_fp32(x[i].d) * nbi_fp16_to_fp32(y[i].d);
        sum = fmaf((float)isum, d, sum);
    }
    *s = sum;
}
