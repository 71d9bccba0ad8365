/*
 * ops_avx2.c - AVX2/FMA versions of forward-pass vector operations that
 * are not dot products (x86-64, chosen at run time).  Same bits as the
 * references in vec_ref.c.
 */
#include <immintrin.h>

#include "kernels.h"

/* Four pairs per register: the even lane of each pair needs
 * fma(x0, c, -(x1 s)) and the odd lane fma(x0, s, x1 c).  Duplicating x0
 * and x1 across the pair and swapping (c, s) gives both with one product
 * and one FMA, rounding exactly as the scalar reference. */
static void rope_avx2(int n_heads, int head_dim, int n_rot, float *restrict x,
                      const float *restrict cs)
{
    const __m256 neg_even = _mm256_castsi256_ps(_mm256_setr_epi32(
        (int)0x80000000, 0, (int)0x80000000, 0, (int)0x80000000, 0, (int)0x80000000, 0));
    const int vec = n_rot - n_rot % 8;
    for (int h = 0; h < n_heads; h++) {
        float *v = x + (size_t)h * head_dim;
        int i = 0;
        for (; i < vec; i += 8) {
            const __m256 xv = _mm256_loadu_ps(v + i);
            const __m256 c = _mm256_loadu_ps(cs + i);               /* c s c s */
            const __m256 x0 = _mm256_moveldup_ps(xv);               /* x0 x0 */
            const __m256 x1 = _mm256_movehdup_ps(xv);               /* x1 x1 */
            const __m256 sc = _mm256_xor_ps(_mm256_permute_ps(c, 0xb1), neg_even); /* -s c */
            _mm256_storeu_ps(v + i, _mm256_fmadd_ps(x0, c, _mm256_mul_ps(x1, sc)));
        }
        for (; i < n_rot; i += 2) {
            float x0 = v[i], x1 = v[i + 1];
            v[i] = _mm_cvtss_f32(_mm_fmadd_ss(_mm_set_ss(x0), _mm_set_ss(cs[i]),
                                              _mm_set_ss(-(x1 * cs[i + 1]))));
            v[i + 1] = _mm_cvtss_f32(_mm_fmadd_ss(_mm_set_ss(x0), _mm_set_ss(cs[i + 1]),
                                                  _mm_set_ss(x1 * cs[i])));
        }
    }
}

void nbi_avx2_add_ops(nbi_kernels *k)
{
    k->rope = rope_avx2;
}
