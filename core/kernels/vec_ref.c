/*
 * vec_ref.c - reference vector operations of the forward pass, and the
 * generic tiled dot product.
 *
 * These follow the arithmetic of ggml's x86 build: SwiGLU evaluates groups
 * of eight with a polynomial exp (the same operations as its AVX2 code)
 * and a tail with the C library's expf; the F16 attention accumulator
 * rounds to F16 after every fused multiply-add or scaling, as
 * ggml_vec_mad_f16 and ggml_vec_scale_f16 do.
 */
#include <math.h>

#include "attn.h"
#include "kernels.h"

static inline float bits_f(uint32_t u)
{
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static inline uint32_t f_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

float nbi_expf_approx(float x)
{
    /* n = round(x / ln2) by the add-a-large-constant trick, b = x - n ln2
     * in two parts, e^b by a polynomial, 2^n through the exponent bits */
    const float r = 0x1.8p23f;
    const float z = fmaf(x, 0x1.715476p+0f, r);
    const float n = z - r;
    const float b = fmaf(-n, 0x1.7f7d1cp-20f, fmaf(-n, 0x1.62e4p-1f, x));
    const uint32_t e = f_bits(z) << 23;
    const float k = bits_f(e + f_bits(1.0f));
    const float u = b * b;
    const float j = fmaf(fmaf(fmaf(0x1.0e4020p-7f, b, 0x1.573e2ep-5f), u,
                              fmaf(0x1.555e66p-3f, b, 0x1.fffdb6p-2f)),
                         u, 0x1.ffffecp-1f * b);
    if (!(fabsf(n) > 126.0f))
        return fmaf(j, k, k);
    /* 2^n would overflow or underflow the exponent: scale in two steps */
    const uint32_t d = n <= 0.0f ? 0x82000000u : 0u;
    const float s1 = bits_f(d + 0x7f000000u);
    const float s2 = bits_f(e - d);
    if (fabsf(n) > 192.0f)
        return s1 * s1;
    return fmaf(s2, j, s2) * s1;
}

void nbi_swiglu_ref(int n, float *restrict g, const float *restrict u)
{
    const int full = n - n % 8;
    int i = 0;
    for (; i < full; i++)
        g[i] = g[i] / (1.0f + nbi_expf_approx(-g[i])) * u[i];
    for (; i < n; i++)
        g[i] = g[i] / (1.0f + expf(-g[i])) * u[i];
}

void nbi_mad_f16_ref(int n, nb_fp16 *restrict y, const nb_fp16 *restrict x, float v)
{
    for (int i = 0; i < n; i++)
        y[i] = nbi_fp32_to_fp16(fmaf(nbi_fp16_to_fp32(x[i]), v, nbi_fp16_to_fp32(y[i])));
}

void nbi_scale_f16_ref(int n, nb_fp16 *restrict y, float v)
{
    for (int i = 0; i < n; i++)
        y[i] = nbi_fp32_to_fp16(nbi_fp16_to_fp32(y[i]) * v);
}

void nbi_attn_f16_ref(int hd, int nq, int n, float scale, const nb_fp16 *q16, const nb_fp16 *K,
                      const nb_fp16 *V, size_t kv_stride, float *out, nb_fp16 *acc)
{
    nbi_attn_generic(nbi_f16_vec_dot_ref, nbi_scale_f16_ref, nbi_mad_f16_ref, hd, nq, n, scale,
                     q16, K, V, kv_stride, out, acc);
}

void nbi_rope_ref(int n_heads, int head_dim, int n_rot, float *restrict x, const float *restrict cs)
{
    for (int h = 0; h < n_heads; h++) {
        float *v = x + (size_t)h * head_dim;
        /* one rounding less than the plain expression: ggml's compiled
         * rotation fuses the first product of each line */
        for (int i = 0; i < n_rot; i += 2) {
            float x0 = v[i], x1 = v[i + 1];
            v[i] = fmaf(x0, cs[i], -(x1 * cs[i + 1]));
            v[i + 1] = fmaf(x0, cs[i + 1], x1 * cs[i]);
        }
    }
}
