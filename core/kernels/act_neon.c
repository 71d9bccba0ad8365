/*
 * act_neon.c - NEON quantizers for the activation formats Q8_0, Q8_1 and
 * Q8_K (aarch64).
 *
 * Each produces the bytes of its reference (q8_0_ref.c, q8_1_ref.c,
 * q8_K_ref.c).  Per block: the largest magnitude by FMAXV (exact: a
 * maximum does not round), the scale in scalar code exactly as the
 * reference computes it, then every x * id rounded by FCVTNS, which is
 * round-to-nearest-even like nearbyintf and lrintf in the default
 * rounding mode.
 *
 * Degenerate blocks (nbi_q8_degenerate in kernels.h: a NaN or an
 * infinity in the block, or amax below NBI_Q8_AMAX_MIN) are written as
 * zeros, as the references write them.  No separate NaN test is needed:
 * FMAX and FMAXV return a NaN whenever an operand is one (unlike x86's
 * maxps, and unlike FMAXNM, which skips quiet NaNs), so a NaN anywhere in
 * the block makes amax a NaN, which nbi_q8_degenerate rejects like an
 * infinite amax.
 */
#include <math.h>

#include "neon.h"

/* Largest |x| of n (a multiple of 8) floats; NaN if one of them is (FMAX
 * and FMAXV propagate NaNs). */
static inline float block_amax(const float *x, int n)
{
    float32x4_t m0 = vdupq_n_f32(0.0f), m1 = m0;
    for (int j = 0; j < n; j += 8) {
        m0 = vmaxq_f32(m0, vabsq_f32(vld1q_f32(x + j)));
        m1 = vmaxq_f32(m1, vabsq_f32(vld1q_f32(x + j + 4)));
    }
    return vmaxvq_f32(vmaxq_f32(m0, m1));
}

/* round(x[j] * id) for 16 floats, as signed bytes (|x * id| rounds to
 * at most 127 in a block that is not degenerate). */
static inline int8x16_t round16(const float *x, float id)
{
    int16x8_t h[2];
    for (int k = 0; k < 2; k++) {
        const int32x4_t a = vcvtnq_s32_f32(vmulq_n_f32(vld1q_f32(x + 8 * k), id));
        const int32x4_t b = vcvtnq_s32_f32(vmulq_n_f32(vld1q_f32(x + 8 * k + 4), id));
        h[k] = vcombine_s16(vmovn_s32(a), vmovn_s32(b));
    }
    return vcombine_s8(vmovn_s16(h[0]), vmovn_s16(h[1]));
}

static void q8_0_from_float(const float *restrict src, void *restrict dst, int64_t n)
{
    block_q8_0 *y = dst;
    const int64_t nb = n / QK8_0;
    for (int64_t i = 0; i < nb; i++) {
        const float *x = src + i * QK8_0;
        const float amax = block_amax(x, QK8_0);
        if (nbi_q8_degenerate(0, amax)) {
            memset(&y[i], 0, sizeof y[i]);
            continue;
        }
        const float d = amax / 127.0f;
        const float id = 127.0f / amax;
        y[i].d = nbi_neon_f2h(d);
        vst1q_s8(y[i].qs, round16(x, id));
        vst1q_s8(y[i].qs + 16, round16(x + 16, id));
    }
}

static void q8_1_from_float(const float *restrict src, void *restrict dst, int64_t n)
{
    block_q8_1 *y = dst;
    const int64_t nb = n / QK8_1;
    for (int64_t i = 0; i < nb; i++) {
        const float *x = src + i * QK8_1;
        const float amax = block_amax(x, QK8_1);
        if (nbi_q8_degenerate(0, amax)) {
            memset(&y[i], 0, sizeof y[i]);
            continue;
        }
        const float d = amax / 127.0f;
        const float id = 127.0f / amax;
        const int8x16_t q0 = round16(x, id), q1 = round16(x + 16, id);
        vst1q_s8(y[i].qs, q0);
        vst1q_s8(y[i].qs + 16, q1);
        const int sum = vaddlvq_s8(q0) + vaddlvq_s8(q1);
        y[i].d = nbi_neon_f2h(d);
        y[i].s = nbi_neon_f2h((float)sum * d);
    }
}

static void q8_K_from_float(const float *restrict src, void *restrict dst, int64_t n)
{
    block_q8_K *y = dst;
    const int64_t nb = n / QK_K;
    for (int64_t i = 0; i < nb; i++) {
        const float *x = src + i * QK_K;
        const float amax = block_amax(x, QK_K);
        if (nbi_q8_degenerate(0, amax)) {
            memset(&y[i], 0, sizeof y[i]);
            continue;
        }
        /* The reference keeps the sign of the first element of largest
         * magnitude: find the first group of four holding it. */
        int j = 0;
        while (vmaxvq_u32(vceqq_f32(vabsq_f32(vld1q_f32(x + j)), vdupq_n_f32(amax))) == 0)
            j += 4;
        while (fabsf(x[j]) != amax)
            j++;
        const float iscale = -127.0f / x[j];
        const int32x4_t cap = vdupq_n_s32(127); /* as the reference caps */
        for (int g = 0; g < QK_K / 16; g++) {
            int16x8_t h[2];
            for (int k = 0; k < 2; k++) {
                const float *xg = x + 16 * g + 8 * k;
                const int32x4_t a = vcvtnq_s32_f32(vmulq_n_f32(vld1q_f32(xg), iscale));
                const int32x4_t b = vcvtnq_s32_f32(vmulq_n_f32(vld1q_f32(xg + 4), iscale));
                h[k] = vcombine_s16(vmovn_s32(vminq_s32(a, cap)), vmovn_s32(vminq_s32(b, cap)));
            }
            const int8x16_t q = vcombine_s8(vmovn_s16(h[0]), vmovn_s16(h[1]));
            vst1q_s8(y[i].qs + 16 * g, q);
            y[i].bsums[g] = vaddlvq_s8(q);
        }
        y[i].d = 1.0f / iscale;
    }
}

void nbi_neon_add_act(nbi_kernels *k)
{
    k->from_float[NB_TYPE_Q8_0] = q8_0_from_float;
    k->from_float[NB_TYPE_Q8_1] = q8_1_from_float;
    k->from_float[NB_TYPE_Q8_K] = q8_K_from_float;
}
