/*
 * f32_ref.c - reference kernels for F32 (plain IEEE single precision).
 *
 * F32 rows are their own activation format, so conversion is a copy.  The
 * dot product follows ggml's scalar path: each product is rounded to float
 * and the sum is kept in double.  ggml's SIMD path sums in float lanes
 * instead; the difference is rounding-level, which the forward pass
 * tolerates.
 */
#include "kernels.h"

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
    double sum = 0.0;
    for (int i = 0; i < n; i++)
        sum += (double)(x[i] * y[i]);
    *s = (float)sum;
}
