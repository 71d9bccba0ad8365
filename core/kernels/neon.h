/*
 * neon.h - helpers shared by the NEON kernels (aarch64 only).
 *
 * The reference kernels describe x86 arithmetic: eight float lanes (one
 * AVX register), fused multiply-adds at fixed places and horizontal sums
 * in a fixed order.  NEON registers hold four floats, so an x86 lane set
 * is kept here as a pair of float32x4_t, lanes 0..3 in lo and 4..7 in hi,
 * and the horizontal sums below add them up in exactly the reference
 * order.  Every vector operation used on floats is one IEEE operation
 * (FMLA/FMUL/FADD/FDIV, SCVTF, FCVT) with the same rounding as the scalar
 * C the reference compiles to, so same operations in the same order give
 * the same bits.
 *
 * Half precision: the hardware conversions (FCVT/FCVTL/FCVTN) are exact
 * and round to nearest-even, as the reference's nbi_fp16_to_fp32 and
 * nbi_fp32_to_fp16 do, for every value except signalling NaNs, which the
 * hardware quiets.  That can only change which NaN payload comes out of
 * an operation with two NaN inputs, and any NaN input makes the result a
 * NaN, so kernels that use these conversions check their result and
 * recompute it with the reference when it is a NaN (rare: NaN inputs, or
 * infinities meeting).  A result that is not a NaN saw no NaN on the way,
 * and then the hardware conversions were exact.
 */
#ifndef NIBBLE_NEON_H
#define NIBBLE_NEON_H

#include <arm_neon.h>

#include "kernels.h"

/* As in the references: every fused multiply-add is an explicit FMA
 * (vfmaq, fmaf), nothing else may be fused.  GCC does not contract in ISO
 * C mode (-std=c11); clang must be told.  At file scope in a header this
 * covers the code of every NEON source. */
#ifdef __clang__
#pragma STDC FP_CONTRACT OFF
#endif

/* Eight float lanes of an x86 accumulator: lanes 0..3 and 4..7. */
typedef struct {
    float32x4_t lo, hi;
} nbi_f32x8;

static inline nbi_f32x8 nbi_f32x8_zero(void)
{
    const nbi_f32x8 z = {vdupq_n_f32(0.0f), vdupq_n_f32(0.0f)};
    return z;
}

/* nbi_hsum8: ((v0+v4) + (v2+v6)) + ((v1+v5) + (v3+v7)). */
static inline float nbi_neon_hsum8(nbi_f32x8 v)
{
    const float32x4_t a = vaddq_f32(v.lo, v.hi);
    const float32x2_t b = vadd_f32(vget_low_f32(a), vget_high_f32(a));
    return vget_lane_f32(b, 0) + vget_lane_f32(b, 1);
}

/* nbi_hadd8: ((v0+v4) + (v1+v5)) + ((v2+v6) + (v3+v7)). */
static inline float nbi_neon_hadd8(nbi_f32x8 v)
{
    const float32x4_t a = vaddq_f32(v.lo, v.hi);
    const float32x2_t b = vpadd_f32(vget_low_f32(a), vget_high_f32(a));
    return vget_lane_f32(b, 0) + vget_lane_f32(b, 1);
}

/* lane[l] = fma(d, (float)isum[l], lane[l]) for the eight lanes. */
static inline nbi_f32x8 nbi_neon_fma_lanes(nbi_f32x8 acc, float d, int32x4_t lo, int32x4_t hi)
{
    acc.lo = vfmaq_n_f32(acc.lo, vcvtq_f32_s32(lo), d);
    acc.hi = vfmaq_n_f32(acc.hi, vcvtq_f32_s32(hi), d);
    return acc;
}

/* Hardware half-to-float (FCVT): see the note on NaNs above. */
static inline float nbi_neon_h2f(nb_fp16 h)
{
    __fp16 f;
    memcpy(&f, &h, sizeof f);
    return (float)f;
}

static inline nb_fp16 nbi_neon_f2h(float f)
{
    const __fp16 h = (__fp16)f;
    nb_fp16 u;
    memcpy(&u, &h, sizeof u);
    return u;
}

/* The parts of the NEON table, one per file; nbi_neon_add_all
 * (all_neon.c) calls them. */
void nbi_neon_add_float(nbi_kernels *k);      /* float_neon.c */
void nbi_neon_add_act(nbi_kernels *k);        /* act_neon.c */
void nbi_neon_add_qdot(nbi_kernels *k);       /* qdot_neon.c */
void nbi_neon_add_qdot_dotprod(nbi_kernels *k); /* qdot_dotprod_neon.c */

#endif /* NIBBLE_NEON_H */
