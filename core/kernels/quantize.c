/*
 * quantize.c - weight quantizers that reproduce llama.cpp's output bytes.
 *
 * A model quantized by nibble should be interchangeable with one quantized
 * by llama.cpp, down to the byte, so that logits, perplexities and bug
 * reports can be compared across the two.  The searches below are those of
 * ggml's ggml-quants.c when no importance matrix is given:
 *
 *   Q4_0 Q4_1 Q5_0 Q5_1 Q8_0   quantize_row_<t>_ref: one scale per block
 *                              taken from the extremes, no search.
 *   Q2_K Q4_K Q5_K             quantize_row_<t>_ref: make_qkx2_quants (a
 *                              weighted least-squares fit of scale and
 *                              minimum over a range of trial scales) per
 *                              sub-block, then the sub-block scales and
 *                              minimums quantized against the super-block.
 *   Q3_K                       make_q3_quants: trial codes refined one
 *                              element at a time, x^2-weighted.
 *   Q6_K                       make_qx_quants: 18 trial scales around
 *                              the one that maps the extreme onto -32.
 *   IQ4_NL                     quantize_iq4_nl's search (15 trial scales),
 *                              not the quicker quantize_row_iq4_nl_ref.
 *
 * Exactness rests on doing every float operation in ggml's order, in float
 * where it uses float; the comments note the places where that is easy to
 * get wrong.  Nothing here may be contracted into a fused multiply-add
 * (GCC does not in ISO C mode; clang must be told), because ggml's scalar
 * code as llama.cpp ships it is not.
 *
 * All state is on the stack, so rows may be quantized on several threads.
 */
#include "quantize.h"

#include <float.h>
#include <math.h>
#include <string.h>

#include "kernels.h"

#ifdef __clang__
#pragma STDC FP_CONTRACT OFF
#endif

/* ggml treats a group whose largest magnitude is below this as all zero. */
#define GROUP_ZERO_EPS 1e-15f

static const int8_t iq4nl_levels[16] = {
    -127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113,
};

/* ------------------------------------------------------------------ */
/* Rounding helpers                                                    */

/*
 * ggml's nearest_int: adding 1.5 * 2^23 leaves the integer part of v in
 * the low mantissa bits, so the float adder does the rounding (to nearest,
 * ties to even).  Exact for |v| < 2^22; larger values (which only occur
 * for absurd inputs) give ggml's garbage, reproduced rather than trapped.
 */
static inline int nearest_int(float v)
{
    const float biased = v + 12582912.0f;
    int32_t bits;
    memcpy(&bits, &biased, sizeof bits);
    return (bits & 0x007fffff) - 0x00400000;
}

/* The low byte of an int as two's complement int8 (what GCC's implicit
 * int -> int8_t conversion does), without implementation-defined casts. */
static inline int wrap_i8(int v)
{
    const int b = v & 0xff;
    return b >= 128 ? b - 256 : b;
}

/*
 * ggml stores float results straight into int8_t/uint8_t (a truncating
 * conversion).  In range that is (int)v; out of range it is undefined in C,
 * and x86's cvttss2si gives INT_MIN, whose low byte is 0.  Out of range
 * only happens in blocks whose largest magnitude is below about 1e-36,
 * where 1/d overflows to inf; their fp16 d is 0, so they decode to zeros
 * whatever the codes, but taking x86's answer keeps even those bytes
 * identical to llama.cpp's x86 builds (clang's differ there), and keeps
 * this code free of undefined behaviour.
 */
static inline int trunc_low_byte(float v)
{
    int32_t i = INT32_MIN;
    if (v > -2147483648.0f && v < 2147483648.0f) /* false for NaN */
        i = (int32_t)v;
    return (int)((uint32_t)i & 0xff);
}

/* Element of largest magnitude (the first of equals), and its magnitude. */
static float signed_absmax(const float *x, int n, float *amax_out)
{
    float amax = 0.0f, max = 0.0f;
    for (int i = 0; i < n; i++) {
        const float ax = fabsf(x[i]);
        if (ax > amax) {
            amax = ax;
            max = x[i];
        }
    }
    *amax_out = amax;
    return max;
}

/* Store 256 2-bit codes (Q2_K, and Q3_K's low bits): in each half of 128
 * elements, byte l holds elements l, l+32, l+64, l+96 from bit 0 up. */
static void pack_2bit(const uint8_t *L, uint8_t *qs)
{
    for (int half = 0; half < QK_K; half += 128)
        for (int l = 0; l < 32; l++)
            qs[half / 4 + l] = (uint8_t)(L[half + l] | (L[half + l + 32] << 2) |
                                         (L[half + l + 64] << 4) | (L[half + l + 96] << 6));
}

/* ------------------------------------------------------------------ */
/* Blocks of 32 with a directly computed scale                         */

static void quantize_q4_0(const float *x, block_q4_0 *y, int64_t nb)
{
    for (int64_t i = 0; i < nb; i++, x += QK4_0) {
        float amax;
        const float max = signed_absmax(x, QK4_0, &amax);
        /* d = max / -8 puts the extreme on -8 (code 0) whatever its
         * sign, so the opposite side only reaches +7. */
        const float d = max / -8;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        y[i].d = nbi_fp32_to_fp16(d);
        for (int j = 0; j < QK4_0 / 2; j++) {
            int lo = wrap_i8(trunc_low_byte(x[j] * id + 8.5f));
            int hi = wrap_i8(trunc_low_byte(x[j + QK4_0 / 2] * id + 8.5f));
            lo = lo < 15 ? lo : 15;
            hi = hi < 15 ? hi : 15;
            y[i].qs[j] = (uint8_t)((lo & 0xff) | ((hi & 0x0f) << 4));
        }
    }
}

static void quantize_q5_0(const float *x, block_q5_0 *y, int64_t nb)
{
    for (int64_t i = 0; i < nb; i++, x += QK5_0) {
        float amax;
        const float max = signed_absmax(x, QK5_0, &amax);
        const float d = max / -16;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        y[i].d = nbi_fp32_to_fp16(d);
        uint32_t qh = 0;
        for (int j = 0; j < QK5_0 / 2; j++) {
            int lo = wrap_i8(trunc_low_byte(x[j] * id + 16.5f));
            int hi = wrap_i8(trunc_low_byte(x[j + QK5_0 / 2] * id + 16.5f));
            lo = (lo < 31 ? lo : 31) & 0xff;
            hi = (hi < 31 ? hi : 31) & 0xff;
            y[i].qs[j] = (uint8_t)((lo & 0x0f) | ((hi & 0x0f) << 4));
            qh |= (uint32_t)((lo >> 4) & 1) << j;
            qh |= (uint32_t)((hi >> 4) & 1) << (j + QK5_0 / 2);
        }
        for (int k = 0; k < 4; k++) /* little-endian, as ggml's memcpy on x86 */
            y[i].qh[k] = (uint8_t)(qh >> (8 * k));
    }
}

/* Smallest and largest element, as Q4_1/Q5_1 scan for them. */
static void min_max(const float *x, int n, float *min_out, float *max_out)
{
    float min = FLT_MAX, max = -FLT_MAX;
    for (int j = 0; j < n; j++) {
        if (x[j] < min)
            min = x[j];
        if (x[j] > max)
            max = x[j];
    }
    *min_out = min;
    *max_out = max;
}

static void quantize_q4_1(const float *x, block_q4_1 *y, int64_t nb)
{
    for (int64_t i = 0; i < nb; i++, x += QK4_1) {
        float min, max;
        min_max(x, QK4_1, &min, &max);
        const float d = (max - min) / 15;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        y[i].d = nbi_fp32_to_fp16(d);
        y[i].m = nbi_fp32_to_fp16(min);
        for (int j = 0; j < QK4_1 / 2; j++) {
            int lo = wrap_i8(trunc_low_byte((x[j] - min) * id + 0.5f));
            int hi = wrap_i8(trunc_low_byte((x[j + QK4_1 / 2] - min) * id + 0.5f));
            lo = lo < 15 ? lo : 15;
            hi = hi < 15 ? hi : 15;
            y[i].qs[j] = (uint8_t)((lo & 0xff) | ((hi & 0x0f) << 4));
        }
    }
}

static void quantize_q5_1(const float *x, block_q5_1 *y, int64_t nb)
{
    for (int64_t i = 0; i < nb; i++, x += QK5_1) {
        float min, max;
        min_max(x, QK5_1, &min, &max);
        const float d = (max - min) / 31;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        y[i].d = nbi_fp32_to_fp16(d);
        y[i].m = nbi_fp32_to_fp16(min);
        uint32_t qh = 0;
        for (int j = 0; j < QK5_1 / 2; j++) {
            /* Unlike Q4_1, ggml does not clamp to 31 here. */
            const int lo = trunc_low_byte((x[j] - min) * id + 0.5f);
            const int hi = trunc_low_byte((x[j + QK5_1 / 2] - min) * id + 0.5f);
            y[i].qs[j] = (uint8_t)((lo & 0x0f) | ((hi & 0x0f) << 4));
            qh |= (uint32_t)((lo >> 4) & 1) << j;
            qh |= (uint32_t)((hi >> 4) & 1) << (j + QK5_1 / 2);
        }
        for (int k = 0; k < 4; k++)
            y[i].qh[k] = (uint8_t)(qh >> (8 * k));
    }
}

static void quantize_q8_0(const float *x, block_q8_0 *y, int64_t nb)
{
    for (int64_t i = 0; i < nb; i++, x += QK8_0) {
        /* ggml's MAX(amax, |v|) keeps amax only when strictly greater; the
         * operand order decides what a NaN does, so keep it. */
        float amax = 0.0f;
        for (int j = 0; j < QK8_0; j++) {
            const float a = fabsf(x[j]);
            amax = amax > a ? amax : a;
        }
        const float d = amax / 127;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        y[i].d = nbi_fp32_to_fp16(d);
        /* x*(1/d), rounded half away from zero: not the activation
         * quantizer's x*(127/amax) rounded half to even. */
        for (int j = 0; j < QK8_0; j++)
            y[i].qs[j] = (int8_t)wrap_i8(trunc_low_byte(roundf(x[j] * id)));
    }
}

/* ------------------------------------------------------------------ */
/* Sub-block searches of the K-quants                                  */

/*
 * Q6_K's sub-block search (ggml's make_qx_quants with rmse_type 1 and no
 * importance weights): codes l in [-nmax, nmax-1], weight x^2, scale the
 * weighted least-squares fit sum(w x l) / sum(w l^2).  The start maps the
 * extreme onto -nmax; 18 more trials move nmax by tenths.  A trial wins
 * when it explains more of the weighted signal, sum(wxl)^2 / sum(wl^2),
 * compared cross-multiplied as ggml does.  L receives l + nmax.
 */
static float search_symmetric(int n, int nmax, const float *x, int8_t *L)
{
    float amax;
    const float max = signed_absmax(x, n, &amax);
    if (amax < GROUP_ZERO_EPS) {
        memset(L, 0, (size_t)n);
        return 0.0f;
    }
    float iscale = -nmax / max;
    float sumlx = 0.0f, suml2 = 0.0f;
    for (int i = 0; i < n; i++) {
        int l = nearest_int(iscale * x[i]);
        l = l < nmax - 1 ? l : nmax - 1;
        l = l > -nmax ? l : -nmax;
        L[i] = (int8_t)(l + nmax);
        const float w = x[i] * x[i];
        sumlx += w * x[i] * l;
        suml2 += w * l * l;
    }
    float scale = suml2 != 0.0f ? sumlx / suml2 : 0.0f;
    float best = scale * sumlx;
    for (int is = -9; is <= 9; is++) {
        if (is == 0)
            continue;
        /* nmax + 0.1f*is in float, negated, then divided: ggml's order. */
        iscale = -(nmax + 0.1f * is) / max;
        sumlx = suml2 = 0.0f;
        for (int i = 0; i < n; i++) {
            int l = nearest_int(iscale * x[i]);
            l = l < nmax - 1 ? l : nmax - 1;
            l = l > -nmax ? l : -nmax;
            const float w = x[i] * x[i];
            sumlx += w * x[i] * l;
            suml2 += w * l * l;
        }
        if (suml2 > 0 && sumlx * sumlx > best * suml2) {
            for (int i = 0; i < n; i++) {
                int l = nearest_int(iscale * x[i]);
                l = l < nmax - 1 ? l : nmax - 1;
                l = l > -nmax ? l : -nmax;
                L[i] = (int8_t)(l + nmax);
            }
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    return scale;
}

/*
 * Q3_K's sub-block search (ggml's make_q3_quants with do_rmse): start from
 * the codes that map the extreme onto -nmax, then up to five passes that
 * re-pick each element's code as the best one given all the others,
 * keeping a change only when it raises sum(wxl)^2 / sum(wl^2).  The sums
 * are updated incrementally, so their rounding depends on the order of
 * accepted changes; it is ggml's.  L receives l + nmax, except that an
 * all-zero group leaves it at 0 as ggml's early return does.
 */
static float search_q3(int n, int nmax, const float *x, int8_t *L)
{
    float amax;
    const float max = signed_absmax(x, n, &amax);
    if (amax < GROUP_ZERO_EPS) {
        memset(L, 0, (size_t)n);
        return 0.0f;
    }
    const float iscale = -nmax / max;
    float sumlx = 0.0f, suml2 = 0.0f;
    for (int i = 0; i < n; i++) {
        int l = nearest_int(iscale * x[i]);
        l = l < nmax - 1 ? l : nmax - 1;
        l = l > -nmax ? l : -nmax;
        L[i] = (int8_t)l;
        const float w = x[i] * x[i];
        sumlx += w * x[i] * l;
        suml2 += w * l * l;
    }
    for (int pass = 0; pass < 5; pass++) {
        int changed = 0;
        for (int i = 0; i < n; i++) {
            const float w = x[i] * x[i];
            float slx = sumlx - w * x[i] * L[i];
            if (slx > 0) {
                float sl2 = suml2 - w * L[i] * L[i];
                int l = nearest_int(x[i] * sl2 / slx);
                l = l < nmax - 1 ? l : nmax - 1;
                l = l > -nmax ? l : -nmax;
                if (l != L[i]) {
                    slx += w * x[i] * l;
                    sl2 += w * l * l;
                    if (sl2 > 0 && slx * slx * suml2 > sumlx * sumlx * sl2) {
                        L[i] = (int8_t)l;
                        sumlx = slx;
                        suml2 = sl2;
                        changed++;
                    }
                }
            }
        }
        if (!changed)
            break;
    }
    for (int i = 0; i < n; i++)
        L[i] = (int8_t)(L[i] + nmax);
    return suml2 > 0.0f ? sumlx / suml2 : 0.0f;
}

/*
 * Q2_K/Q4_K/Q5_K's sub-block search (ggml's make_qkx2_quants): codes
 * l in [0, nmax] with x ~ scale*l + min, min <= 0.  Each of nstep+1 trials
 * picks codes for a slightly different scale, then fits scale and min by
 * weighted least squares (min pinned at 0 when the fit wants it positive)
 * and keeps the fit with the smallest weighted error: squared, or absolute
 * when use_mad.  A kept fit's min shifts the codes of the next trials, as
 * in ggml.  Returns the scale; *neg_min receives -min.
 */
static float search_affine(int n, int nmax, const float *x, const float *w, uint8_t *L,
                           float *neg_min, float rmin, float rdelta, int nstep, int use_mad)
{
    uint8_t trial[32];
    float min = x[0], max = x[0];
    float sum_w = w[0];
    float sum_x = sum_w * x[0];
    for (int i = 1; i < n; i++) {
        if (x[i] < min)
            min = x[i];
        if (x[i] > max)
            max = x[i];
        sum_w += w[i];
        sum_x += w[i] * x[i];
    }
    if (min > 0)
        min = 0;
    if (max == min) {
        memset(L, 0, (size_t)n);
        *neg_min = -min;
        return 0.0f;
    }
    float iscale = nmax / (max - min);
    float scale = 1 / iscale;
    float best_error = 0;
    for (int i = 0; i < n; i++) {
        int l = nearest_int(iscale * (x[i] - min));
        l = l < nmax ? l : nmax;
        L[i] = (uint8_t)(l > 0 ? l : 0);
        float diff = scale * L[i] + min - x[i];
        diff = use_mad ? fabsf(diff) : diff * diff;
        best_error += w[i] * diff;
    }
    for (int is = 0; is <= nstep; is++) {
        iscale = (rmin + rdelta * is + nmax) / (max - min);
        float sum_l = 0, sum_l2 = 0, sum_xl = 0;
        for (int i = 0; i < n; i++) {
            int l = nearest_int(iscale * (x[i] - min));
            l = l < nmax ? l : nmax;
            l = l > 0 ? l : 0;
            trial[i] = (uint8_t)l;
            sum_l += w[i] * l;
            sum_l2 += w[i] * l * l;
            sum_xl += w[i] * l * x[i];
        }
        const float D = sum_w * sum_l2 - sum_l * sum_l;
        if (D > 0) {
            float this_scale = (sum_w * sum_xl - sum_x * sum_l) / D;
            float this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D;
            if (this_min > 0) {
                this_min = 0;
                this_scale = sum_xl / sum_l2;
            }
            float error = 0;
            for (int i = 0; i < n; i++) {
                float diff = this_scale * trial[i] + this_min - x[i];
                diff = use_mad ? fabsf(diff) : diff * diff;
                error += w[i] * diff;
            }
            if (error < best_error) {
                memcpy(L, trial, (size_t)n);
                best_error = error;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    *neg_min = -min;
    return scale;
}

/* ------------------------------------------------------------------ */
/* K-quants                                                            */

static void quantize_q2_K(const float *x, block_q2_K *y, int64_t nb)
{
    uint8_t L[QK_K];
    float w[16], scales[QK_K / 16], mins[QK_K / 16];
    const float q4scale = 15.0f;
    for (int64_t i = 0; i < nb; i++, x += QK_K) {
        float max_scale = 0, max_min = 0;
        for (int j = 0; j < QK_K / 16; j++) {
            for (int l = 0; l < 16; l++)
                w[l] = fabsf(x[16 * j + l]);
            scales[j] = search_affine(16, 3, x + 16 * j, w, L + 16 * j, &mins[j], -0.5f, 0.1f,
                                      15, 1);
            if (scales[j] > max_scale)
                max_scale = scales[j];
            if (mins[j] > max_min)
                max_min = mins[j];
        }
        if (max_scale > 0) {
            const float iscale = q4scale / max_scale;
            for (int j = 0; j < QK_K / 16; j++)
                y[i].scales[j] = (uint8_t)nearest_int(iscale * scales[j]);
            y[i].d = nbi_fp32_to_fp16(max_scale / q4scale);
        } else {
            memset(y[i].scales, 0, sizeof y[i].scales);
            y[i].d = nbi_fp32_to_fp16(0.0f);
        }
        if (max_min > 0) {
            const float iscale = q4scale / max_min;
            for (int j = 0; j < QK_K / 16; j++) {
                const unsigned l = (unsigned)nearest_int(iscale * mins[j]);
                y[i].scales[j] = (uint8_t)(y[i].scales[j] | (l << 4));
            }
            y[i].dmin = nbi_fp32_to_fp16(max_min / q4scale);
        } else {
            y[i].dmin = nbi_fp32_to_fp16(0.0f);
        }
        /* Re-pick every code against the scales as stored (4-bit, fp16);
         * a sub-block whose stored scale is 0 keeps its search codes. */
        const float d_all = nbi_fp16_to_fp32(y[i].d);
        const float m_all = nbi_fp16_to_fp32(y[i].dmin);
        for (int j = 0; j < QK_K / 16; j++) {
            const float d = d_all * (y[i].scales[j] & 0x0f);
            if (d == 0.0f)
                continue;
            const float dm = m_all * (y[i].scales[j] >> 4);
            for (int l = 0; l < 16; l++) {
                int q = nearest_int((x[16 * j + l] + dm) / d);
                q = q < 3 ? q : 3;
                L[16 * j + l] = (uint8_t)(q > 0 ? q : 0);
            }
        }
        pack_2bit(L, y[i].qs);
    }
}

/* Q3_K's 16 six-bit scales: low nibbles in bytes 0-7 (sub-blocks 0-7 low,
 * 8-15 high), top two bits in bytes 8-11. */
static int q3_K_scale(const uint8_t s[12], int j)
{
    const int lo = j < 8 ? s[j] & 0x0f : s[j - 8] >> 4;
    const int hi = (s[8 + j % 4] >> (2 * (j / 4))) & 3;
    return (lo | (hi << 4)) - 32;
}

static void quantize_q3_K(const float *x, block_q3_K *y, int64_t nb)
{
    int8_t L[QK_K];
    float scales[QK_K / 16];
    for (int64_t i = 0; i < nb; i++, x += QK_K) {
        float max_scale = 0, amax = 0;
        for (int j = 0; j < QK_K / 16; j++) {
            scales[j] = search_q3(16, 4, x + 16 * j, L + 16 * j);
            const float a = fabsf(scales[j]);
            if (a > amax) {
                amax = a;
                max_scale = scales[j];
            }
        }
        memset(y[i].scales, 0, sizeof y[i].scales);
        if (max_scale != 0.0f) {
            /* Signed scales: the extreme maps onto -32, as codes do. */
            const float iscale = -32.0f / max_scale;
            for (int j = 0; j < QK_K / 16; j++) {
                int l = wrap_i8(nearest_int(iscale * scales[j]));
                l = l < 31 ? l : 31;
                l = (l > -32 ? l : -32) + 32;
                if (j < 8)
                    y[i].scales[j] = (uint8_t)(l & 0x0f);
                else
                    y[i].scales[j - 8] |= (uint8_t)((l & 0x0f) << 4);
                y[i].scales[8 + j % 4] |= (uint8_t)((l >> 4) << (2 * (j / 4)));
            }
            y[i].d = nbi_fp32_to_fp16(1 / iscale);
        } else {
            y[i].d = nbi_fp32_to_fp16(0.0f);
        }
        const float d_all = nbi_fp16_to_fp32(y[i].d);
        for (int j = 0; j < QK_K / 16; j++) {
            const float d = d_all * q3_K_scale(y[i].scales, j);
            if (d == 0.0f)
                continue;
            for (int l = 0; l < 16; l++) {
                int q = nearest_int(x[16 * j + l] / d);
                q = q < 3 ? q : 3;
                L[16 * j + l] = (int8_t)((q > -4 ? q : -4) + 4);
            }
        }
        /* Bit 2 of each code goes to hmask: element e at byte e%32, bit
         * e/32; the low two bits are packed as in Q2_K. */
        memset(y[i].hmask, 0, sizeof y[i].hmask);
        uint8_t low[QK_K];
        for (int e = 0; e < QK_K; e++) {
            if (L[e] > 3)
                y[i].hmask[e % 32] |= (uint8_t)(1u << (e / 32));
            low[e] = (uint8_t)(L[e] & 3);
        }
        pack_2bit(low, y[i].qs);
    }
}

/* Q4_K/Q5_K's 8 six-bit scales and mins in 12 bytes: sub-blocks 0-3 whole
 * in bytes 0-3 (scale) and 4-7 (min); 4-7 as nibbles in bytes 8-11 with
 * their top two bits in the spare top bits of bytes 0-7. */
static void pack_scale_min_k4(uint8_t s[K_SCALE_SIZE], int j, uint8_t ls, uint8_t lm)
{
    if (j < 4) {
        s[j] = ls;
        s[j + 4] = lm;
    } else {
        s[j + 4] = (uint8_t)((ls & 0x0f) | ((lm & 0x0f) << 4));
        s[j - 4] |= (uint8_t)((ls >> 4) << 6);
        s[j] |= (uint8_t)((lm >> 4) << 6);
    }
}

static void unpack_scale_min_k4(const uint8_t s[K_SCALE_SIZE], int j, int *sc, int *m)
{
    if (j < 4) {
        *sc = s[j] & 63;
        *m = s[j + 4] & 63;
    } else {
        *sc = (s[j + 4] & 0x0f) | ((s[j - 4] >> 6) << 4);
        *m = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
    }
}

/*
 * The part Q4_K and Q5_K share: search each sub-block of 32 (weights
 * rms(x) + |x|), quantize its scale and min to 6 bits against the largest
 * of each, then re-pick every code against the stored scales.
 */
static void quantize_k4_common(const float *x, int nmax, float rmin, int nstep, nb_fp16 *d_out,
                               nb_fp16 *dmin_out, uint8_t scales_out[K_SCALE_SIZE],
                               uint8_t L[QK_K])
{
    float w[32], scales[QK_K / 32], mins[QK_K / 32];
    float max_scale = 0, max_min = 0;
    for (int j = 0; j < QK_K / 32; j++) {
        const float *xs = x + 32 * j;
        float sum_x2 = 0;
        for (int l = 0; l < 32; l++)
            sum_x2 += xs[l] * xs[l];
        const float av_x = sqrtf(sum_x2 / 32);
        for (int l = 0; l < 32; l++)
            w[l] = av_x + fabsf(xs[l]);
        scales[j] = search_affine(32, nmax, xs, w, L + 32 * j, &mins[j], rmin, 0.1f, nstep, 0);
        if (scales[j] > max_scale)
            max_scale = scales[j];
        if (mins[j] > max_min)
            max_min = mins[j];
    }
    const float inv_scale = max_scale > 0 ? 63.0f / max_scale : 0.0f;
    const float inv_min = max_min > 0 ? 63.0f / max_min : 0.0f;
    for (int j = 0; j < QK_K / 32; j++) {
        /* ggml keeps the low byte, then clamps: a wrapped value stays. */
        uint8_t ls = (uint8_t)nearest_int(inv_scale * scales[j]);
        uint8_t lm = (uint8_t)nearest_int(inv_min * mins[j]);
        ls = ls < 63 ? ls : 63;
        lm = lm < 63 ? lm : 63;
        pack_scale_min_k4(scales_out, j, ls, lm);
    }
    *d_out = nbi_fp32_to_fp16(max_scale / 63.0f);
    *dmin_out = nbi_fp32_to_fp16(max_min / 63.0f);

    const float d_all = nbi_fp16_to_fp32(*d_out);
    const float m_all = nbi_fp16_to_fp32(*dmin_out);
    for (int j = 0; j < QK_K / 32; j++) {
        int sc, m;
        unpack_scale_min_k4(scales_out, j, &sc, &m);
        const float d = d_all * sc;
        if (d == 0.0f)
            continue;
        const float dm = m_all * m;
        for (int l = 0; l < 32; l++) {
            int q = nearest_int((x[32 * j + l] + dm) / d);
            q = q < nmax ? q : nmax;
            L[32 * j + l] = (uint8_t)(q > 0 ? q : 0);
        }
    }
}

static void quantize_q4_K(const float *x, block_q4_K *y, int64_t nb)
{
    uint8_t L[QK_K];
    for (int64_t i = 0; i < nb; i++, x += QK_K) {
        quantize_k4_common(x, 15, -1.0f, 20, &y[i].d, &y[i].dmin, y[i].scales, L);
        /* Each 32 bytes hold two sub-blocks: low nibbles the first. */
        for (int c = 0; c < QK_K / 64; c++)
            for (int l = 0; l < 32; l++)
                y[i].qs[32 * c + l] = (uint8_t)(L[64 * c + l] | (L[64 * c + 32 + l] << 4));
    }
}

static void quantize_q5_K(const float *x, block_q5_K *y, int64_t nb)
{
    uint8_t L[QK_K];
    for (int64_t i = 0; i < nb; i++, x += QK_K) {
        quantize_k4_common(x, 31, -0.5f, 15, &y[i].d, &y[i].dmin, y[i].scales, L);
        /* Low nibbles as in Q4_K; bit 4 of sub-block pair c goes to bits
         * 2c (first) and 2c+1 (second) of qh[l]. */
        memset(y[i].qh, 0, sizeof y[i].qh);
        for (int c = 0; c < QK_K / 64; c++) {
            for (int l = 0; l < 32; l++) {
                const int a = L[64 * c + l], b = L[64 * c + 32 + l];
                y[i].qs[32 * c + l] = (uint8_t)((a & 0x0f) | ((b & 0x0f) << 4));
                y[i].qh[l] |= (uint8_t)(((a >> 4) << (2 * c)) | ((b >> 4) << (2 * c + 1)));
            }
        }
    }
}

static void quantize_q6_K(const float *x, block_q6_K *y, int64_t nb)
{
    int8_t L[QK_K];
    float scales[QK_K / 16];
    for (int64_t i = 0; i < nb; i++, x += QK_K) {
        float max_scale = 0, max_abs_scale = 0;
        for (int j = 0; j < QK_K / 16; j++) {
            scales[j] = search_symmetric(16, 32, x + 16 * j, L + 16 * j);
            const float a = fabsf(scales[j]);
            if (a > max_abs_scale) {
                max_abs_scale = a;
                max_scale = scales[j];
            }
        }
        if (max_abs_scale < GROUP_ZERO_EPS) {
            memset(&y[i], 0, sizeof y[i]);
            continue;
        }
        const float iscale = -128.0f / max_scale;
        y[i].d = nbi_fp32_to_fp16(1 / iscale);
        for (int j = 0; j < QK_K / 16; j++) {
            const int l = nearest_int(iscale * scales[j]);
            y[i].scales[j] = (int8_t)wrap_i8(l < 127 ? l : 127);
        }
        const float d_all = nbi_fp16_to_fp32(y[i].d);
        for (int j = 0; j < QK_K / 16; j++) {
            const float d = d_all * y[i].scales[j];
            if (d == 0.0f)
                continue;
            for (int l = 0; l < 16; l++) {
                int q = nearest_int(x[16 * j + l] / d);
                q = q < 31 ? q : 31;
                L[16 * j + l] = (int8_t)((q > -32 ? q : -32) + 32);
            }
        }
        /* Per 128 elements: ql[l] holds elements l and l+64 (low nibbles),
         * ql[l+32] elements l+32 and l+96; qh[l] the top two bits of all
         * four, in that order from bit 0. */
        for (int h = 0; h < QK_K / 128; h++) {
            const int8_t *c = L + 128 * h;
            uint8_t *ql = y[i].ql + 64 * h;
            uint8_t *qh = y[i].qh + 32 * h;
            for (int l = 0; l < 32; l++) {
                ql[l] = (uint8_t)((c[l] & 0x0f) | ((c[l + 64] & 0x0f) << 4));
                ql[l + 32] = (uint8_t)((c[l + 32] & 0x0f) | ((c[l + 96] & 0x0f) << 4));
                qh[l] = (uint8_t)((c[l] >> 4) | ((c[l + 32] >> 4) << 2) | ((c[l + 64] >> 4) << 4) |
                                  ((c[l + 96] >> 4) << 6));
            }
        }
    }
}

/* ------------------------------------------------------------------ */
/* IQ4_NL                                                              */

/*
 * Index of the level nearest to v, the upper one on a tie.  2v and the sum
 * of two neighbouring levels are both exact in float, so the midpoint test
 * has no rounding error (ggml's best_index_int8 makes the same test; its
 * older form compared rounded differences, which agrees for these levels
 * because every difference near a midpoint is exact too).
 */
static int iq4nl_index(float v)
{
    const float v2 = v + v;
    int idx = 0;
    for (int j = 1; j < 16; j++)
        if (v2 >= (float)(iq4nl_levels[j - 1] + iq4nl_levels[j]))
            idx = j;
    return idx;
}

/*
 * ggml's quantize_row_iq4_nl_impl for one block of 32 with ntry = 7 and no
 * importance weights (weight x^2).  The first guess maps the extreme onto
 * +127, past the top level (113), and fits the least-squares scale for the
 * levels that picks; 15 trials then map the extreme onto -127 + t for t in
 * -7..7 and win when sum(wxq)^2 / sum(wq^2) beats the best so far.  (The
 * quick quantize_row_iq4_nl_ref maps onto -127 and stops there.)  The
 * final indices are picked against the winning float scale, not against
 * its fp16 rounding.
 */
static void quantize_iq4_nl(const float *x, block_iq4_nl *y, int64_t nb)
{
    uint8_t L[QK4_NL];
    for (int64_t i = 0; i < nb; i++, x += QK4_NL) {
        float amax;
        const float max = signed_absmax(x, QK4_NL, &amax);
        float d = 0.0f;
        if (amax >= GROUP_ZERO_EPS) {
            float id = 1 / (-max / iq4nl_levels[0]);
            float sumqx = 0, sumq2 = 0;
            for (int j = 0; j < QK4_NL; j++) {
                const float q = iq4nl_levels[iq4nl_index(id * x[j])];
                const float w = x[j] * x[j];
                sumqx += w * q * x[j];
                sumq2 += w * q * q;
            }
            d = sumq2 > 0 ? sumqx / sumq2 : 0.0f;
            float best = d * sumqx;
            for (int t = -7; t <= 7; t++) {
                id = (t + iq4nl_levels[0]) / max;
                sumqx = sumq2 = 0;
                for (int j = 0; j < QK4_NL; j++) {
                    const float q = iq4nl_levels[iq4nl_index(id * x[j])];
                    const float w = x[j] * x[j];
                    sumqx += w * q * x[j];
                    sumq2 += w * q * q;
                }
                if (sumq2 > 0 && sumqx * sumqx > best * sumq2) {
                    d = sumqx / sumq2;
                    best = d * sumqx;
                }
            }
        }
        y[i].d = nbi_fp32_to_fp16(d);
        /* An all-zero block gets index 8 (level 1) everywhere, as in ggml. */
        const float id = d != 0.0f ? 1 / d : 0.0f;
        for (int j = 0; j < QK4_NL; j++)
            L[j] = (uint8_t)iq4nl_index(id * x[j]);
        for (int j = 0; j < QK4_NL / 2; j++)
            y[i].qs[j] = (uint8_t)(L[j] | (L[j + QK4_NL / 2] << 4));
    }
}

/* ------------------------------------------------------------------ */
/* Entry points                                                        */

int nbi_quantize_supported(int type)
{
    switch (type) {
    case NB_TYPE_F32: case NB_TYPE_F16: case NB_TYPE_BF16:
    case NB_TYPE_Q8_0: case NB_TYPE_Q4_0: case NB_TYPE_Q4_1: case NB_TYPE_Q5_0: case NB_TYPE_Q5_1:
    case NB_TYPE_Q2_K: case NB_TYPE_Q3_K: case NB_TYPE_Q4_K: case NB_TYPE_Q5_K: case NB_TYPE_Q6_K:
    case NB_TYPE_IQ4_NL:
        return 1;
    default:
        return 0;
    }
}

size_t nbi_quantize_rows(int type, const float *src, void *dst, int64_t nrows, int64_t n_per_row)
{
    if (!nbi_quantize_supported(type) || nrows < 0)
        return 0;
    const size_t row_size = nbi_row_size(type, n_per_row);
    if (row_size == 0 || (nrows > 0 && ((uint64_t)nrows > SIZE_MAX / row_size ||
                                        nrows > INT64_MAX / n_per_row)))
        return 0;
    /* Every format is a sequence of independent blocks, so a block of one
     * row never sees the next row: the whole range can go in one call. */
    const int64_t n = nrows * n_per_row;
    const int blck = nbi_types[type].blck;
    const int64_t nb = n / blck;
    switch (type) {
    case NB_TYPE_F32:
        memcpy(dst, src, (size_t)n * sizeof(float));
        break;
    case NB_TYPE_F16:
        for (int64_t i = 0; i < n; i++)
            ((nb_fp16 *)dst)[i] = nbi_fp32_to_fp16(src[i]);
        break;
    case NB_TYPE_BF16:
        for (int64_t i = 0; i < n; i++)
            ((nb_bf16 *)dst)[i] = nbi_fp32_to_bf16(src[i]);
        break;
    case NB_TYPE_Q8_0: quantize_q8_0(src, dst, nb); break;
    case NB_TYPE_Q4_0: quantize_q4_0(src, dst, nb); break;
    case NB_TYPE_Q4_1: quantize_q4_1(src, dst, nb); break;
    case NB_TYPE_Q5_0: quantize_q5_0(src, dst, nb); break;
    case NB_TYPE_Q5_1: quantize_q5_1(src, dst, nb); break;
    case NB_TYPE_Q2_K: quantize_q2_K(src, dst, nb); break;
    case NB_TYPE_Q3_K: quantize_q3_K(src, dst, nb); break;
    case NB_TYPE_Q4_K: quantize_q4_K(src, dst, nb); break;
    case NB_TYPE_Q5_K: quantize_q5_K(src, dst, nb); break;
    case NB_TYPE_Q6_K: quantize_q6_K(src, dst, nb); break;
    case NB_TYPE_IQ4_NL: quantize_iq4_nl(src, dst, nb); break;
    default: return 0;
    }
    return (size_t)nrows * row_size;
}
