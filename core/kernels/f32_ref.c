/*
 * f32_ref.c - reference kernels for F32 (plain IEEE single precision).
 *
 * F32 rows are their own activation format, so conversion is a copy.
 *
 * The dot product reproduces ggml's ggml_vec_dot_f32 (vec.cpp) as built
 * for AVX2 (GGML_F32_STEP 32, GGML_F32_EPR 8) bit for bit:
 *  - the first n - n%32 elements go to 4 accumulators of 8 float lanes:
 *    element 32c + 8j + p is fused into accumulator j, lane p:
 *    acc[j][p] = fma(x, y, acc[j][p]);
 *  - GGML_F32x8_REDUCE: acc0 += acc2 and acc1 += acc3 lane-wise, then
 *    acc0 += acc1, then the eight lanes are summed with two horizontal
 *    adds (nbi_hadd8);
 *  - the n%32 leftover elements are added to that float one by one,
 *    sum += x*y, each product rounded (not fused).
 * (llama.cpp hands batches of two or more rows to llamafile's tinyBLAS
 * when it is compiled in, which rounds differently: 8 lanes of FMAs over
 * the whole row and hsum_float_8.  The reference files match this
 * single-row arithmetic at every prompt position.)
 */
#include <math.h>

#include "kernels.h"

/* Every fused multiply-add is an explicit fmaf; nothing else may be fused.
 * GCC does not contract in ISO C mode (-std=c11); clang must be told. */
#ifdef __clang__
#pragma STDC FP_CONTRACT OFF
#endif

void nbi_f32_to_float_ref(const void *restrict src, float *restrict dst, int64_t n)
{
    memcpy(dst, src, (size_t)n * sizeof(float));
}

void nbi_f32_from_float_ref(const float *restrict src, void *restrict dst, int64_t n)
{
    memcpy(dst, src, (size_t)n * sizeof(float));
}

void nbi_f32_vec_dot_ref(int n, float *restrict s, const void *restrict vx,
                         const void *restrict vy)
{
    const float *x = vx;
    const float *y = vy;
    const int np = n & ~31;
    float acc[4][8] = {{0}};
    for (int i = 0; i < np; i += 32)
        for (int j = 0; j < 4; j++)
            for (int p = 0; p < 8; p++)
                acc[j][p] = fmaf(x[i + 8 * j + p], y[i + 8 * j + p], acc[j][p]);
    for (int p = 0; p < 8; p++) {
        acc[0][p] += acc[2][p];
        acc[1][p] += acc[3][p];
    }
    for (int p = 0; p < 8; p++)
        acc[0][p] += acc[1][p];
    float sum = nbi_hadd8(acc[0]);
    for (int i = np; i < n; i++)
        sum += x[i] * y[i];
    *s = sum;
}
