/*
 * float_neon.c - NEON kernels for the float types (F32, F16, BF16: dot
 * products and conversions) and the vector operations of the forward pass
 * (F16 accumulator, SwiGLU, RoPE).
 *
 * Each kernel computes the same bits as its reference (f32_ref.c,
 * f16_ref.c, bf16_ref.c, vec_ref.c).  The dot products keep ggml's four
 * accumulators of eight x86 lanes as eight float32x4_t in element order:
 * elements 32c + 4q .. 32c + 4q + 3 go to acc[q], so accumulator j of the
 * reference is the pair acc[2j] (lanes 0..3), acc[2j+1] (lanes 4..7).
 * The reductions then pair them exactly as the reference does.
 *
 * F16 values are widened and narrowed by the hardware; results that come
 * out NaN are recomputed by the reference (see neon.h for why).
 *
 * RoPE rotates four pairs at a time, de-interleaved by LD2/ST2 so that
 * every lane does the scalar reference's two statements.
 */
#include <math.h>

#include "attn.h"
#include "neon.h"

/* ------------------------------------------------------------------ */
/* Dot products                                                        */

static void f32_vec_dot(int n, float *restrict s, const void *restrict vx,
                        const void *restrict vy)
{
    const float *x = vx;
    const float *y = vy;
    const int np = n & ~31;
    float32x4_t acc[8];
    for (int q = 0; q < 8; q++)
        acc[q] = vdupq_n_f32(0.0f);
    for (int i = 0; i < np; i += 32)
        for (int q = 0; q < 8; q++)
            acc[q] = vfmaq_f32(acc[q], vld1q_f32(x + i + 4 * q), vld1q_f32(y + i + 4 * q));
    /* GGML_F32x8_REDUCE: acc0 += acc2, acc1 += acc3, acc0 += acc1. */
    for (int h = 0; h < 2; h++) {
        acc[h] = vaddq_f32(acc[h], acc[4 + h]);
        acc[2 + h] = vaddq_f32(acc[2 + h], acc[6 + h]);
    }
    for (int h = 0; h < 2; h++)
        acc[h] = vaddq_f32(acc[h], acc[2 + h]);
    const nbi_f32x8 v = {acc[0], acc[1]};
    float sum = nbi_neon_hadd8(v);
    for (int i = np; i < n; i++)
        sum += x[i] * y[i];
    *s = sum;
}

static void f16_vec_dot(int n, float *restrict s, const void *restrict vx,
                        const void *restrict vy)
{
    const nb_fp16 *x = vx;
    const nb_fp16 *y = vy;
    const int np = n & ~31;
    double sum = 0.0;
    if (np > 0) {
        float32x4_t acc[8];
        for (int q = 0; q < 8; q++)
            acc[q] = vdupq_n_f32(0.0f);
        for (int i = 0; i < np; i += 32) {
            for (int q = 0; q < 8; q += 2) {
                const float16x8_t xh = vreinterpretq_f16_u16(vld1q_u16(x + i + 4 * q));
                const float16x8_t yh = vreinterpretq_f16_u16(vld1q_u16(y + i + 4 * q));
                acc[q] = vfmaq_f32(acc[q], vcvt_f32_f16(vget_low_f16(xh)),
                                   vcvt_f32_f16(vget_low_f16(yh)));
                acc[q + 1] = vfmaq_f32(acc[q + 1], vcvt_high_f32_f16(xh), vcvt_high_f32_f16(yh));
            }
        }
        for (int h = 0; h < 2; h++) {
            acc[h] = vaddq_f32(acc[h], acc[4 + h]);
            acc[2 + h] = vaddq_f32(acc[2 + h], acc[6 + h]);
        }
        for (int h = 0; h < 2; h++)
            acc[h] = vaddq_f32(acc[h], acc[2 + h]);
        const nbi_f32x8 v = {acc[0], acc[1]};
        sum = nbi_neon_hadd8(v);
    }
    for (int i = np; i < n; i++)
        sum += (double)(nbi_neon_h2f(x[i]) * nbi_neon_h2f(y[i]));
    *s = (float)sum;
    if (isnan(*s))
        nbi_f16_vec_dot_ref(n, s, vx, vy);
}

/* BF16 widens by a shift, exactly, so no NaN caveat here. */
static inline float32x4_t bf16_lo(uint16x8_t h)
{
    return vreinterpretq_f32_u32(vshll_n_u16(vget_low_u16(h), 16));
}

static inline float32x4_t bf16_hi(uint16x8_t h)
{
    return vreinterpretq_f32_u32(vshll_high_n_u16(h, 16));
}

static void bf16_vec_dot(int n, float *restrict s, const void *restrict vx,
                         const void *restrict vy)
{
    const nb_bf16 *x = vx;
    const nb_bf16 *y = vy;
    const int np = n & ~31;
    double sum = 0.0;
    if (np > 0) {
        float32x4_t acc[8];
        for (int q = 0; q < 8; q++)
            acc[q] = vdupq_n_f32(0.0f);
        for (int i = 0; i < np; i += 32) {
            for (int q = 0; q < 8; q += 2) {
                const uint16x8_t xh = vld1q_u16(x + i + 4 * q);
                const uint16x8_t yh = vld1q_u16(y + i + 4 * q);
                acc[q] = vfmaq_f32(acc[q], bf16_lo(xh), bf16_lo(yh));
                acc[q + 1] = vfmaq_f32(acc[q + 1], bf16_hi(xh), bf16_hi(yh));
            }
        }
        /* (acc0 + acc2) + (acc1 + acc3), then hsum_float_8. */
        nbi_f32x8 v;
        v.lo = vaddq_f32(vaddq_f32(acc[0], acc[4]), vaddq_f32(acc[2], acc[6]));
        v.hi = vaddq_f32(vaddq_f32(acc[1], acc[5]), vaddq_f32(acc[3], acc[7]));
        sum = nbi_neon_hsum8(v);
    }
    for (int i = np; i < n; i++)
        sum += (double)(nbi_bf16_to_fp32(x[i]) * nbi_bf16_to_fp32(y[i]));
    *s = (float)sum;
}

/* ------------------------------------------------------------------ */
/* Conversions                                                         */

/* True when one of the eight halves is a NaN. */
static inline int any_nan_f16(uint16x8_t h)
{
    return vmaxvq_u16(vandq_u16(h, vdupq_n_u16(0x7fff))) > 0x7c00;
}

static void f16_to_float(const void *restrict src, float *restrict dst, int64_t n)
{
    const nb_fp16 *x = src;
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        const uint16x8_t h = vld1q_u16(x + i);
        if (any_nan_f16(h)) { /* keep signalling NaNs as they are */
            nbi_f16_to_float_ref(x + i, dst + i, 8);
            continue;
        }
        const float16x8_t f = vreinterpretq_f16_u16(h);
        vst1q_f32(dst + i, vcvt_f32_f16(vget_low_f16(f)));
        vst1q_f32(dst + i + 4, vcvt_high_f32_f16(f));
    }
    nbi_f16_to_float_ref(x + i, dst + i, n - i);
}

/* FCVTN rounds like nbi_fp32_to_fp16 for every input, NaNs included:
 * both set the quiet bit and keep the top nine payload bits. */
static void f16_from_float(const float *restrict src, void *restrict dst, int64_t n)
{
    nb_fp16 *y = dst;
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        const float16x4_t lo = vcvt_f16_f32(vld1q_f32(src + i));
        const float16x8_t h = vcvt_high_f16_f32(lo, vld1q_f32(src + i + 4));
        vst1q_u16(y + i, vreinterpretq_u16_f16(h));
    }
    nbi_f16_from_float_ref(src + i, y + i, n - i);
}

static void bf16_to_float(const void *restrict src, float *restrict dst, int64_t n)
{
    const nb_bf16 *x = src;
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        const uint16x8_t h = vld1q_u16(x + i);
        vst1q_f32(dst + i, bf16_lo(h));
        vst1q_f32(dst + i + 4, bf16_hi(h));
    }
    nbi_bf16_to_float_ref(x + i, dst + i, n - i);
}

/* nbi_fp32_to_bf16 on four values: nearest-even, NaNs made quiet. */
static inline uint16x4_t f32_to_bf16x4(float32x4_t f)
{
    const uint32x4_t u = vreinterpretq_u32_f32(f);
    const uint32x4_t is_nan =
        vcgtq_u32(vandq_u32(u, vdupq_n_u32(0x7fffffffu)), vdupq_n_u32(0x7f800000u));
    const uint32x4_t odd = vandq_u32(vshrq_n_u32(u, 16), vdupq_n_u32(1));
    const uint32x4_t rounded = vshrq_n_u32(vaddq_u32(u, vaddq_u32(vdupq_n_u32(0x7fffu), odd)), 16);
    const uint32x4_t quiet = vorrq_u32(vshrq_n_u32(u, 16), vdupq_n_u32(64));
    return vmovn_u32(vbslq_u32(is_nan, quiet, rounded));
}

static void bf16_from_float(const float *restrict src, void *restrict dst, int64_t n)
{
    nb_bf16 *y = dst;
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        const uint16x4_t lo = f32_to_bf16x4(vld1q_f32(src + i));
        const uint16x4_t hi = f32_to_bf16x4(vld1q_f32(src + i + 4));
        vst1q_u16(y + i, vcombine_u16(lo, hi));
    }
    nbi_bf16_from_float_ref(src + i, y + i, n - i);
}

/* ------------------------------------------------------------------ */
/* F16 accumulator                                                     */

/* Eight halves at a time; a group whose result holds a NaN is redone by
 * the reference before anything is stored. */
static void mad_f16(int n, nb_fp16 *restrict y, const nb_fp16 *restrict x, float v)
{
    int i = 0;
    for (; i + 8 <= n; i += 8) {
        const float16x8_t xh = vreinterpretq_f16_u16(vld1q_u16(x + i));
        const float16x8_t yh = vreinterpretq_f16_u16(vld1q_u16(y + i));
        const float32x4_t lo = vfmaq_n_f32(vcvt_f32_f16(vget_low_f16(yh)),
                                           vcvt_f32_f16(vget_low_f16(xh)), v);
        const float32x4_t hi = vfmaq_n_f32(vcvt_high_f32_f16(yh), vcvt_high_f32_f16(xh), v);
        const uint16x8_t r = vreinterpretq_u16_f16(vcvt_high_f16_f32(vcvt_f16_f32(lo), hi));
        if (any_nan_f16(r))
            nbi_mad_f16_ref(8, y + i, x + i, v);
        else
            vst1q_u16(y + i, r);
    }
    nbi_mad_f16_ref(n - i, y + i, x + i, v);
}

static void scale_f16(int n, nb_fp16 *restrict y, float v)
{
    int i = 0;
    for (; i + 8 <= n; i += 8) {
        const float16x8_t yh = vreinterpretq_f16_u16(vld1q_u16(y + i));
        const float32x4_t lo = vmulq_n_f32(vcvt_f32_f16(vget_low_f16(yh)), v);
        const float32x4_t hi = vmulq_n_f32(vcvt_high_f32_f16(yh), v);
        const uint16x8_t r = vreinterpretq_u16_f16(vcvt_high_f16_f32(vcvt_f16_f32(lo), hi));
        if (any_nan_f16(r))
            nbi_scale_f16_ref(8, y + i, v);
        else
            vst1q_u16(y + i, r);
    }
    nbi_scale_f16_ref(n - i, y + i, v);
}

/* The shared attention loop over this file's dot product and F16
 * accumulator operations. */
static void attn_f16(int hd, int nq, int n, float scale, const nb_fp16 *q16, const nb_fp16 *K,
                     const nb_fp16 *V, size_t kv_stride, float *out, nb_fp16 *acc)
{
    nbi_attn_generic(f16_vec_dot, scale_f16, mad_f16, hd, nq, n, scale, q16, K, V, kv_stride,
                     out, acc);
}

/* ------------------------------------------------------------------ */
/* SwiGLU                                                              */

/* nbi_expf_approx on four values: the same operations, with the two
 * out-of-range cases chosen by masks instead of branches. */
static inline float32x4_t expf_approx4(float32x4_t x)
{
    const float32x4_t r = vdupq_n_f32(0x1.8p23f);
    const float32x4_t z = vfmaq_f32(r, x, vdupq_n_f32(0x1.715476p+0f));
    const float32x4_t n = vsubq_f32(z, r);
    const float32x4_t nn = vnegq_f32(n);
    const float32x4_t b = vfmaq_f32(vfmaq_f32(x, nn, vdupq_n_f32(0x1.62e4p-1f)), nn,
                                    vdupq_n_f32(0x1.7f7d1cp-20f));
    const uint32x4_t e = vshlq_n_u32(vreinterpretq_u32_f32(z), 23);
    const float32x4_t k = vreinterpretq_f32_u32(vaddq_u32(e, vdupq_n_u32(0x3f800000u)));
    const float32x4_t u = vmulq_f32(b, b);
    const float32x4_t j = vfmaq_f32(
        vmulq_f32(vdupq_n_f32(0x1.ffffecp-1f), b),
        vfmaq_f32(vfmaq_f32(vdupq_n_f32(0x1.fffdb6p-2f), vdupq_n_f32(0x1.555e66p-3f), b),
                  vfmaq_f32(vdupq_n_f32(0x1.573e2ep-5f), vdupq_n_f32(0x1.0e4020p-7f), b), u),
        u);
    const float32x4_t in_range = vfmaq_f32(k, j, k);
    const uint32x4_t big = vcagtq_f32(n, vdupq_n_f32(126.0f));
    if (vmaxvq_u32(big) == 0) /* the usual case: 2^n is a normal float */
        return in_range;
    const uint32x4_t d = vandq_u32(vclezq_f32(n), vdupq_n_u32(0x82000000u));
    const float32x4_t s1 = vreinterpretq_f32_u32(vaddq_u32(d, vdupq_n_u32(0x7f000000u)));
    const float32x4_t s2 = vreinterpretq_f32_u32(vsubq_u32(e, d));
    const float32x4_t huge = vmulq_f32(s1, s1);
    const float32x4_t scaled = vmulq_f32(vfmaq_f32(s2, s2, j), s1);
    const uint32x4_t very_big = vcagtq_f32(n, vdupq_n_f32(192.0f));
    return vbslq_f32(big, vbslq_f32(very_big, huge, scaled), in_range);
}

static void swiglu(int n, float *restrict g, const float *restrict u)
{
    const int full = n - n % 8;
    const float32x4_t one = vdupq_n_f32(1.0f);
    for (int i = 0; i < full; i += 4) {
        const float32x4_t x = vld1q_f32(g + i);
        const float32x4_t silu = vdivq_f32(x, vaddq_f32(one, expf_approx4(vnegq_f32(x))));
        vst1q_f32(g + i, vmulq_f32(silu, vld1q_f32(u + i)));
    }
    nbi_swiglu_ref(n - full, g + full, u + full); /* the tail uses expf */
}

/* ------------------------------------------------------------------ */
/* RoPE                                                                */

static void rope(int n_heads, int head_dim, int n_rot, float *restrict x, const float *restrict cs)
{
    const int vec = n_rot - n_rot % 8;
    for (int h = 0; h < n_heads; h++) {
        float *v = x + (size_t)h * head_dim;
        int i = 0;
        for (; i < vec; i += 8) {
            const float32x4x2_t p = vld2q_f32(v + i);   /* x0 of 4 pairs, x1 */
            const float32x4x2_t t = vld2q_f32(cs + i);  /* cos, sin */
            float32x4x2_t r;
            r.val[0] = vfmaq_f32(vnegq_f32(vmulq_f32(p.val[1], t.val[1])), p.val[0], t.val[0]);
            r.val[1] = vfmaq_f32(vmulq_f32(p.val[1], t.val[0]), p.val[0], t.val[1]);
            vst2q_f32(v + i, r);
        }
        for (; i < n_rot; i += 2) {
            const float x0 = v[i], x1 = v[i + 1];
            v[i] = fmaf(x0, cs[i], -(x1 * cs[i + 1]));
            v[i + 1] = fmaf(x0, cs[i + 1], x1 * cs[i]);
        }
    }
}

void nbi_neon_add_float(nbi_kernels *k)
{
    k->vec_dot[NB_TYPE_F32] = f32_vec_dot;
    k->vec_dot[NB_TYPE_F16] = f16_vec_dot;
    k->vec_dot[NB_TYPE_BF16] = bf16_vec_dot;
    k->to_float[NB_TYPE_F16] = f16_to_float;
    k->to_float[NB_TYPE_BF16] = bf16_to_float;
    k->from_float[NB_TYPE_F16] = f16_from_float;
    k->from_float[NB_TYPE_BF16] = bf16_from_float;
    k->mad_f16 = mad_f16;
    k->scale_f16 = scale_f16;
    k->attn_f16 = attn_f16;
    k->swiglu = swiglu;
    k->rope = rope;
}
