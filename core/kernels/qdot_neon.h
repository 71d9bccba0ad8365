/*
 * qdot_neon.h - NEON dot products of the quantized weight types with
 * their activation formats, written once and compiled twice: by
 * qdot_neon.c for every aarch64 CPU, and by qdot_dotprod_neon.c with the
 * dot-product extension (SDOT), which all_neon.c chooses at run time.
 * The includer defines NBI_QDOT_DOTPROD (0 or 1) and NBI_QDOT_ADD, the
 * name of the function that installs the kernels.
 *
 * Every kernel computes the same bits as its reference (<type>_ref.c).
 * The integer part of a block is exact however it is computed, so the
 * only thing to keep is which products each int32 lane sums: where the
 * reference has eight x86 lanes of four consecutive elements, lanes
 * 0..3 take elements 0..15 of each 32 and lanes 4..7 elements 16..31,
 * and dot4() below sums exactly four consecutive products per lane
 * (one SDOT, or widening multiplies and two pairwise adds).  The float
 * part then repeats the reference step by step: the same scale products,
 * the same fused multiply-adds into the same lanes (nbi_f32x8, neon.h),
 * the same horizontal sum.  Scales are widened by the hardware; a result
 * that comes out NaN is recomputed by the reference (see neon.h).
 *
 * Every kernel is written for nc activation rows ("columns") at once,
 * nc <= TILE_COLS, each with its own accumulators, so that one decoded
 * weight block serves several columns: vec_dot is the case nc = 1 and
 * vec_dot_tile runs groups of TILE_COLS.  Each output still sees exactly
 * the operations of vec_dot, so the two agree bit for bit.
 */
#include <math.h>

#include "neon.h"

#ifndef NBI_QDOT_DOTPROD
#error "define NBI_QDOT_DOTPROD before including qdot_neon.h"
#endif

#define TILE_COLS 4
/* Weight rows a tile keeps in cache while every column group passes. */
#define TILE_ROWS 8

/* Inlined into each caller with a constant nc, so that the per-column
 * arrays below live in registers and the column loops unroll. */
#define NBI_COLS_FN static inline __attribute__((always_inline)) void
#define FOR_COLS(c) _Pragma("GCC unroll 4") for (int c = 0; c < nc; c++)

/* Lane l of the result: acc[l] + the sum of products 4l..4l+3. */
static inline int32x4_t dot4(int32x4_t acc, int8x16_t a, int8x16_t b)
{
#if NBI_QDOT_DOTPROD
    return vdotq_s32(acc, a, b);
#else
    const int16x8_t lo = vmull_s8(vget_low_s8(a), vget_low_s8(b));
    const int16x8_t hi = vmull_high_s8(a, b);
    return vaddq_s32(acc, vpaddq_s32(vpaddlq_s16(lo), vpaddlq_s16(hi)));
#endif
}

/* acc + all sixteen products, for kernels that only use the total of the
 * lanes (without SDOT, two pairwise accumulations are cheaper). */
static inline int32x4_t dot_sum(int32x4_t acc, int8x16_t a, int8x16_t b)
{
#if NBI_QDOT_DOTPROD
    return vdotq_s32(acc, a, b);
#else
    acc = vpadalq_s16(acc, vmull_s8(vget_low_s8(a), vget_low_s8(b)));
    return vpadalq_s16(acc, vmull_high_s8(a, b));
#endif
}

static inline int8x16_t s8(uint8x16_t v)
{
    return vreinterpretq_s8_u8(v);
}

/* Column c of the activations: row c of a matrix with rows y_stride
 * bytes apart. */
#define ACT_ROW(type, vy, c, y_stride) \
    ((const type *)((const char *)(vy) + (size_t)(c) * (y_stride)))

/* Store the nc results; any NaN is recomputed by the reference. */
#define STORE_COLS(res, ref)                                                    \
    FOR_COLS(c) {                                                               \
        s[(size_t)c * s_stride] = res[c];                                       \
        if (isnan(res[c]))                                                      \
            ref(n, &s[(size_t)c * s_stride], vx, ACT_ROW(void, vy, c, y_stride)); \
    }

#define COLS_ARGS                                                                   \
    int n, float *restrict s, size_t s_stride, const void *restrict vx,             \
        const void *restrict vy, size_t y_stride, const int nc

/* vec_dot and vec_dot_tile of a type from its column kernel t##_cols. */
#define DEFINE_DOT_AND_TILE(t)                                                              \
    static void t##_vec_dot(int n, float *restrict s, const void *restrict vx,             \
                            const void *restrict vy)                                        \
    {                                                                                       \
        t##_cols(n, s, 0, vx, vy, 0, 1);                                                    \
    }                                                                                       \
    static void t##_tile(int n, int n_rows, int n_cols, float *restrict s, size_t s_stride, \
                         const void *restrict w, size_t w_stride, const void *restrict a,   \
                         size_t a_stride)                                                   \
    {                                                                                       \
        for (int r0 = 0; r0 < n_rows; r0 += TILE_ROWS) {                                    \
            const int r1 = n_rows - r0 < TILE_ROWS ? n_rows : r0 + TILE_ROWS;               \
            int c = 0;                                                                      \
            for (; c + TILE_COLS <= n_cols; c += TILE_COLS)                                 \
                for (int r = r0; r < r1; r++)                                               \
                    t##_cols(n, s + (size_t)c * s_stride + r, s_stride,                     \
                             (const char *)w + (size_t)r * w_stride,                        \
                             (const char *)a + (size_t)c * a_stride, a_stride, TILE_COLS);  \
            for (; c < n_cols; c++)                                                         \
                for (int r = r0; r < r1; r++)                                               \
                    t##_cols(n, s + (size_t)c * s_stride + r, s_stride,                     \
                             (const char *)w + (size_t)r * w_stride,                        \
                             (const char *)a + (size_t)c * a_stride, a_stride, 1);          \
        }                                                                                   \
    }

/* ------------------------------------------------------------------ */
/* 32-element blocks against Q8_0 / Q8_1                               */

/* Q4_0 and IQ4_NL (q4_0_ref.c): no lanes, one exact block sum and
 * sum = fma((float)isum, dx * dy, sum) per block. */
NBI_COLS_FN q4_0_cols(COLS_ARGS)
{
    const block_q4_0 *x = vx;
    const int nb = n / QK4_0;
    const block_q8_0 *y[TILE_COLS];
    float sum[TILE_COLS];
    FOR_COLS(c) {
        y[c] = ACT_ROW(block_q8_0, vy, c, y_stride);
        sum[c] = 0.0f;
    }
    for (int i = 0; i < nb; i++) {
        const uint8x16_t qs = vld1q_u8(x[i].qs);
        const int8x16_t eight = vdupq_n_s8(8);
        const int8x16_t lo = vsubq_s8(s8(vandq_u8(qs, vdupq_n_u8(0x0f))), eight);
        const int8x16_t hi = vsubq_s8(s8(vshrq_n_u8(qs, 4)), eight);
        const float dx = nbi_neon_h2f(x[i].d);
        FOR_COLS(c) {
            const int32x4_t p = dot_sum(dot_sum(vdupq_n_s32(0), lo, vld1q_s8(y[c][i].qs)), hi,
                                        vld1q_s8(y[c][i].qs + 16));
            sum[c] = fmaf((float)vaddvq_s32(p), dx * nbi_neon_h2f(y[c][i].d), sum[c]);
        }
    }
    STORE_COLS(sum, nbi_q4_0_vec_dot_ref)
}
DEFINE_DOT_AND_TILE(q4_0)

static const int8_t iq4_nl_levels[16] = {
    -127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113,
};

NBI_COLS_FN iq4_nl_cols(COLS_ARGS)
{
    const block_iq4_nl *x = vx;
    const int nb = n / QK4_NL;
    const int8x16_t levels = vld1q_s8(iq4_nl_levels);
    const block_q8_0 *y[TILE_COLS];
    float sum[TILE_COLS];
    FOR_COLS(c) {
        y[c] = ACT_ROW(block_q8_0, vy, c, y_stride);
        sum[c] = 0.0f;
    }
    for (int i = 0; i < nb; i++) {
        const uint8x16_t qs = vld1q_u8(x[i].qs);
        const int8x16_t lo = vqtbl1q_s8(levels, vandq_u8(qs, vdupq_n_u8(0x0f)));
        const int8x16_t hi = vqtbl1q_s8(levels, vshrq_n_u8(qs, 4));
        const float dx = nbi_neon_h2f(x[i].d);
        FOR_COLS(c) {
            const int32x4_t p = dot_sum(dot_sum(vdupq_n_s32(0), lo, vld1q_s8(y[c][i].qs)), hi,
                                        vld1q_s8(y[c][i].qs + 16));
            sum[c] = fmaf((float)vaddvq_s32(p), dx * nbi_neon_h2f(y[c][i].d), sum[c]);
        }
    }
    STORE_COLS(sum, nbi_iq4_nl_vec_dot_ref)
}
DEFINE_DOT_AND_TILE(iq4_nl)

/* Q8_0 (q8_0_ref.c): eight lanes, lane = fma(dx * dy, isum, lane). */
NBI_COLS_FN q8_0_cols(COLS_ARGS)
{
    const block_q8_0 *x = vx;
    const int nb = n / QK8_0;
    const block_q8_0 *y[TILE_COLS];
    nbi_f32x8 lane[TILE_COLS];
    FOR_COLS(c) {
        y[c] = ACT_ROW(block_q8_0, vy, c, y_stride);
        lane[c] = nbi_f32x8_zero();
    }
    for (int i = 0; i < nb; i++) {
        const int8x16_t x0 = vld1q_s8(x[i].qs), x1 = vld1q_s8(x[i].qs + 16);
        const float dx = nbi_neon_h2f(x[i].d);
        FOR_COLS(c) {
            const int32x4_t lo = dot4(vdupq_n_s32(0), x0, vld1q_s8(y[c][i].qs));
            const int32x4_t hi = dot4(vdupq_n_s32(0), x1, vld1q_s8(y[c][i].qs + 16));
            lane[c] = nbi_neon_fma_lanes(lane[c], dx * nbi_neon_h2f(y[c][i].d), lo, hi);
        }
    }
    float res[TILE_COLS];
    FOR_COLS(c) res[c] = nbi_neon_hsum8(lane[c]);
    STORE_COLS(res, nbi_q8_0_vec_dot_ref)
}
DEFINE_DOT_AND_TILE(q8_0)

/* The fifth bits of a Q5 block as byte masks: element j (0..15) in
 * lo[j], element 16 + j in hi[j], 0xff where the bit is set. */
static inline void q5_high_bits(const uint8_t qh[4], uint8x16_t *lo, uint8x16_t *hi)
{
    static const uint8_t sel_lo[16] = {0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1};
    static const uint8_t sel_hi[16] = {2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3};
    static const uint8_t bit[16] = {1, 2, 4, 8, 16, 32, 64, 128, 1, 2, 4, 8, 16, 32, 64, 128};
    uint32_t w;
    memcpy(&w, qh, 4); /* bit j of the little-endian word: element j */
    const uint8x16_t bytes = vreinterpretq_u8_u32(vdupq_n_u32(w));
    *lo = vtstq_u8(vqtbl1q_u8(bytes, vld1q_u8(sel_lo)), vld1q_u8(bit));
    *hi = vtstq_u8(vqtbl1q_u8(bytes, vld1q_u8(sel_hi)), vld1q_u8(bit));
}

/* Q5_0 (q5_0_ref.c): values (q - 16), eight lanes as Q8_0. */
NBI_COLS_FN q5_0_cols(COLS_ARGS)
{
    const block_q5_0 *x = vx;
    const int nb = n / QK5_0;
    const block_q8_0 *y[TILE_COLS];
    nbi_f32x8 lane[TILE_COLS];
    FOR_COLS(c) {
        y[c] = ACT_ROW(block_q8_0, vy, c, y_stride);
        lane[c] = nbi_f32x8_zero();
    }
    for (int i = 0; i < nb; i++) {
        uint8x16_t hlo, hhi;
        q5_high_bits(x[i].qh, &hlo, &hhi);
        const uint8x16_t qs = vld1q_u8(x[i].qs);
        const uint8x16_t b4 = vdupq_n_u8(0x10);
        const int8x16_t sixteen = vdupq_n_s8(16);
        const int8x16_t x0 =
            vsubq_s8(s8(vorrq_u8(vandq_u8(qs, vdupq_n_u8(0x0f)), vandq_u8(hlo, b4))), sixteen);
        const int8x16_t x1 = vsubq_s8(s8(vorrq_u8(vshrq_n_u8(qs, 4), vandq_u8(hhi, b4))), sixteen);
        const float dx = nbi_neon_h2f(x[i].d);
        FOR_COLS(c) {
            const int32x4_t lo = dot4(vdupq_n_s32(0), x0, vld1q_s8(y[c][i].qs));
            const int32x4_t hi = dot4(vdupq_n_s32(0), x1, vld1q_s8(y[c][i].qs + 16));
            lane[c] = nbi_neon_fma_lanes(lane[c], dx * nbi_neon_h2f(y[c][i].d), lo, hi);
        }
    }
    float res[TILE_COLS];
    FOR_COLS(c) res[c] = nbi_neon_hsum8(lane[c]);
    STORE_COLS(res, nbi_q5_0_vec_dot_ref)
}
DEFINE_DOT_AND_TILE(q5_0)

/* Q4_1 and Q5_1 (q4_1_ref.c, q5_1_ref.c): unsigned codes, eight lanes,
 * and a plain float summs += m * s; result hsum8(lanes) + summs. */
NBI_COLS_FN q4_1_cols(COLS_ARGS)
{
    const block_q4_1 *x = vx;
    const int nb = n / QK4_1;
    const block_q8_1 *y[TILE_COLS];
    nbi_f32x8 lane[TILE_COLS];
    float summs[TILE_COLS];
    FOR_COLS(c) {
        y[c] = ACT_ROW(block_q8_1, vy, c, y_stride);
        lane[c] = nbi_f32x8_zero();
        summs[c] = 0.0f;
    }
    for (int i = 0; i < nb; i++) {
        const uint8x16_t qs = vld1q_u8(x[i].qs);
        const int8x16_t x0 = s8(vandq_u8(qs, vdupq_n_u8(0x0f)));
        const int8x16_t x1 = s8(vshrq_n_u8(qs, 4));
        const float dx = nbi_neon_h2f(x[i].d), mx = nbi_neon_h2f(x[i].m);
        FOR_COLS(c) {
            const int32x4_t lo = dot4(vdupq_n_s32(0), x0, vld1q_s8(y[c][i].qs));
            const int32x4_t hi = dot4(vdupq_n_s32(0), x1, vld1q_s8(y[c][i].qs + 16));
            summs[c] += mx * nbi_neon_h2f(y[c][i].s);
            lane[c] = nbi_neon_fma_lanes(lane[c], dx * nbi_neon_h2f(y[c][i].d), lo, hi);
        }
    }
    float res[TILE_COLS];
    FOR_COLS(c) res[c] = nbi_neon_hsum8(lane[c]) + summs[c];
    STORE_COLS(res, nbi_q4_1_vec_dot_ref)
}
DEFINE_DOT_AND_TILE(q4_1)

NBI_COLS_FN q5_1_cols(COLS_ARGS)
{
    const block_q5_1 *x = vx;
    const int nb = n / QK5_1;
    const block_q8_1 *y[TILE_COLS];
    nbi_f32x8 lane[TILE_COLS];
    float summs[TILE_COLS];
    FOR_COLS(c) {
        y[c] = ACT_ROW(block_q8_1, vy, c, y_stride);
        lane[c] = nbi_f32x8_zero();
        summs[c] = 0.0f;
    }
    for (int i = 0; i < nb; i++) {
        uint8x16_t hlo, hhi;
        q5_high_bits(x[i].qh, &hlo, &hhi);
        const uint8x16_t qs = vld1q_u8(x[i].qs);
        const uint8x16_t b4 = vdupq_n_u8(0x10);
        const int8x16_t x0 = s8(vorrq_u8(vandq_u8(qs, vdupq_n_u8(0x0f)), vandq_u8(hlo, b4)));
        const int8x16_t x1 = s8(vorrq_u8(vshrq_n_u8(qs, 4), vandq_u8(hhi, b4)));
        const float dx = nbi_neon_h2f(x[i].d), mx = nbi_neon_h2f(x[i].m);
        FOR_COLS(c) {
            const int32x4_t lo = dot4(vdupq_n_s32(0), x0, vld1q_s8(y[c][i].qs));
            const int32x4_t hi = dot4(vdupq_n_s32(0), x1, vld1q_s8(y[c][i].qs + 16));
            summs[c] += mx * nbi_neon_h2f(y[c][i].s);
            lane[c] = nbi_neon_fma_lanes(lane[c], dx * nbi_neon_h2f(y[c][i].d), lo, hi);
        }
    }
    float res[TILE_COLS];
    FOR_COLS(c) res[c] = nbi_neon_hsum8(lane[c]) + summs[c];
    STORE_COLS(res, nbi_q5_1_vec_dot_ref)
}
DEFINE_DOT_AND_TILE(q5_1)

/* ------------------------------------------------------------------ */
/* K-quants against Q8_K                                               */

/* The sixteen bsums of a Q8_K block times sixteen 16-bit weights w,
 * summed in pairs: lane l of lo/hi (l = 0..3) gets
 * w[2l]*bsums[2l] + w[2l+1]*bsums[2l+1] and w[8+2l].. likewise; all in
 * int32, so exact for any bsums. */
static inline void bsum_pairs(const int16_t bsums[16], int16x8_t w0, int16x8_t w1,
                              int32x4_t *lo, int32x4_t *hi)
{
    const int16x8_t b0 = vld1q_s16(bsums), b1 = vld1q_s16(bsums + 8);
    *lo = vpaddq_s32(vmull_s16(vget_low_s16(w0), vget_low_s16(b0)), vmull_high_s16(w0, b0));
    *hi = vpaddq_s32(vmull_s16(vget_low_s16(w1), vget_low_s16(b1)), vmull_high_s16(w1, b1));
}

/* Q2_K (q2_K_ref.c): per super-block the minimum lanes first,
 * lane = fma(-dy * dminx, m-pairs, lane), then lane = fma(dy * dx, isum,
 * lane) with sub-blocks of 16 scaled by their 4-bit scale. */
NBI_COLS_FN q2_K_cols(COLS_ARGS)
{
    const block_q2_K *x = vx;
    const int nb = n / QK_K;
    const block_q8_K *y[TILE_COLS];
    nbi_f32x8 lane[TILE_COLS];
    FOR_COLS(c) {
        y[c] = ACT_ROW(block_q8_K, vy, c, y_stride);
        lane[c] = nbi_f32x8_zero();
    }
    for (int i = 0; i < nb; i++) {
        const uint8x16_t sc_m = vld1q_u8(x[i].scales);
        const uint8x16_t m = vshrq_n_u8(sc_m, 4);
        const int16x8_t m0 = vreinterpretq_s16_u16(vmovl_u8(vget_low_u8(m)));
        const int16x8_t m1 = vreinterpretq_s16_u16(vmovl_high_u8(m));
        uint8_t sc[QK_K / 16];
        vst1q_u8(sc, vandq_u8(sc_m, vdupq_n_u8(0x0f)));
        const float dx = nbi_neon_h2f(x[i].d), dminx = nbi_neon_h2f(x[i].dmin);
        int32x4_t acc_lo[TILE_COLS], acc_hi[TILE_COLS];
        FOR_COLS(c) {
            int32x4_t mlo, mhi;
            bsum_pairs(y[c][i].bsums, m0, m1, &mlo, &mhi);
            lane[c] = nbi_neon_fma_lanes(lane[c], -y[c][i].d * dminx, mlo, mhi);
            acc_lo[c] = acc_hi[c] = vdupq_n_s32(0);
        }
        /* Byte l of each 32-byte half holds elements 32k + l, k = 0..3,
         * of its 128 (bits 2k, 2k+1): sub-blocks 8h + 2k and 8h + 2k + 1. */
        for (int h = 0; h < 2; h++) {
            uint8x16_t q0 = vld1q_u8(x[i].qs + 32 * h), q1 = vld1q_u8(x[i].qs + 32 * h + 16);
            for (int k = 0; k < 4; k++) {
                const int8x16_t c0 = s8(vandq_u8(q0, vdupq_n_u8(3)));
                const int8x16_t c1 = s8(vandq_u8(q1, vdupq_n_u8(3)));
                const int g = 8 * h + 2 * k, e = 16 * g;
                FOR_COLS(c) {
                    const int32x4_t d0 = dot4(vdupq_n_s32(0), c0, vld1q_s8(y[c][i].qs + e));
                    const int32x4_t d1 = dot4(vdupq_n_s32(0), c1, vld1q_s8(y[c][i].qs + e + 16));
                    acc_lo[c] = vmlaq_n_s32(acc_lo[c], d0, sc[g]);
                    acc_hi[c] = vmlaq_n_s32(acc_hi[c], d1, sc[g + 1]);
                }
                q0 = vshrq_n_u8(q0, 2);
                q1 = vshrq_n_u8(q1, 2);
            }
        }
        FOR_COLS(c) lane[c] = nbi_neon_fma_lanes(lane[c], y[c][i].d * dx, acc_lo[c], acc_hi[c]);
    }
    float res[TILE_COLS];
    FOR_COLS(c) res[c] = nbi_neon_hsum8(lane[c]);
    STORE_COLS(res, nbi_q2_K_vec_dot_ref)
}
DEFINE_DOT_AND_TILE(q2_K)

/* The 16 signed 6-bit scales of a Q3_K block (minus 32): low nibbles in
 * bytes 0..7, top two bits in bytes 8..11 (q3_K_ref.c). */
static inline void q3_K_scales(const uint8_t s[12], int8_t sc[16])
{
    uint32_t a[4];
    memcpy(a, s, 12);
    const uint32_t m2 = 0x03030303u, m4 = 0x0f0f0f0fu, hi = a[2];
    a[2] = ((a[0] >> 4) & m4) | ((hi >> 4) & m2) << 4; /* scales 8..11 */
    a[3] = ((a[1] >> 4) & m4) | ((hi >> 6) & m2) << 4; /* scales 12..15 */
    a[0] = (a[0] & m4) | (hi & m2) << 4;                /* scales 0..3 */
    a[1] = (a[1] & m4) | ((hi >> 2) & m2) << 4;         /* scales 4..7 */
    vst1q_s8(sc, vsubq_s8(vreinterpretq_s8_u32(vld1q_u32(a)), vdupq_n_s8(32)));
}

/* Q3_K (q3_K_ref.c): codes -4..3 (two bits, and "minus 4" where the
 * hmask bit is clear), lanes as Q2_K, lane = fma(dy * dx, isum, lane). */
NBI_COLS_FN q3_K_cols(COLS_ARGS)
{
    const block_q3_K *x = vx;
    const int nb = n / QK_K;
    const block_q8_K *y[TILE_COLS];
    nbi_f32x8 lane[TILE_COLS];
    FOR_COLS(c) {
        y[c] = ACT_ROW(block_q8_K, vy, c, y_stride);
        lane[c] = nbi_f32x8_zero();
    }
    for (int i = 0; i < nb; i++) {
        int8_t sc[QK_K / 16];
        q3_K_scales(x[i].scales, sc);
        const uint8x16_t hm0 = vld1q_u8(x[i].hmask), hm1 = vld1q_u8(x[i].hmask + 16);
        const uint8x16_t four = vdupq_n_u8(4);
        int32x4_t acc_lo[TILE_COLS], acc_hi[TILE_COLS];
        FOR_COLS(c) acc_lo[c] = acc_hi[c] = vdupq_n_s32(0);
        for (int h = 0; h < 2; h++) {
            uint8x16_t q0 = vld1q_u8(x[i].qs + 32 * h), q1 = vld1q_u8(x[i].qs + 32 * h + 16);
            for (int k = 0; k < 4; k++) {
                const uint8x16_t bit = vdupq_n_u8((uint8_t)(1u << (4 * h + k)));
                const int8x16_t c0 = vsubq_s8(s8(vandq_u8(q0, vdupq_n_u8(3))),
                                              s8(vbicq_u8(four, vtstq_u8(hm0, bit))));
                const int8x16_t c1 = vsubq_s8(s8(vandq_u8(q1, vdupq_n_u8(3))),
                                              s8(vbicq_u8(four, vtstq_u8(hm1, bit))));
                const int g = 8 * h + 2 * k, e = 16 * g;
                FOR_COLS(c) {
                    const int32x4_t d0 = dot4(vdupq_n_s32(0), c0, vld1q_s8(y[c][i].qs + e));
                    const int32x4_t d1 = dot4(vdupq_n_s32(0), c1, vld1q_s8(y[c][i].qs + e + 16));
                    acc_lo[c] = vmlaq_n_s32(acc_lo[c], d0, sc[g]);
                    acc_hi[c] = vmlaq_n_s32(acc_hi[c], d1, sc[g + 1]);
                }
                q0 = vshrq_n_u8(q0, 2);
                q1 = vshrq_n_u8(q1, 2);
            }
        }
        const float dx = nbi_neon_h2f(x[i].d);
        FOR_COLS(c) lane[c] = nbi_neon_fma_lanes(lane[c], y[c][i].d * dx, acc_lo[c], acc_hi[c]);
    }
    float res[TILE_COLS];
    FOR_COLS(c) res[c] = nbi_neon_hsum8(lane[c]);
    STORE_COLS(res, nbi_q3_K_vec_dot_ref)
}
DEFINE_DOT_AND_TILE(q3_K)

/* The 8 scales and 8 minimums (6 bits each) of a Q4_K/Q5_K block, as
 * ggml's get_scale_min_k4 gives them (q4_K_ref.c). */
static inline void k4_scales_mins(const uint8_t s[12], uint8_t sc[8], uint8_t m[8])
{
    uint32_t a[3], u[4];
    memcpy(a, s, 12);
    const uint32_t m6 = 0x3f3f3f3fu, m4 = 0x0f0f0f0fu, m2 = 0x03030303u;
    u[0] = a[0] & m6;                                   /* scales 0..3 */
    u[1] = (a[2] & m4) | ((a[0] >> 6) & m2) << 4;       /* scales 4..7 */
    u[2] = a[1] & m6;                                   /* minimums 0..3 */
    u[3] = ((a[2] >> 4) & m4) | ((a[1] >> 6) & m2) << 4; /* minimums 4..7 */
    memcpy(sc, u, 8);
    memcpy(m, u + 2, 8);
}

/* Σ_j m[j] * (bsums[2j] + bsums[2j+1]) over the 8 sub-blocks, in int32. */
static inline int32_t k4_min_sum(const int16_t bsums[16], uint16x8_t m)
{
    const int32x4_t p0 = vpaddlq_s16(vld1q_s16(bsums)), p1 = vpaddlq_s16(vld1q_s16(bsums + 8));
    const int32x4_t m0 = vreinterpretq_s32_u32(vmovl_u16(vget_low_u16(m)));
    const int32x4_t m1 = vreinterpretq_s32_u32(vmovl_high_u16(m));
    return vaddvq_s32(vmlaq_s32(vmulq_s32(m0, p0), m1, p1));
}

/* Q4_K (q4_K_ref.c): no lanes; per super-block the exact isum and imin,
 * acc = fma(isum, dx * dy, acc), accmin = fma(imin, dminx * dy, accmin);
 * result acc - accmin. */
NBI_COLS_FN q4_K_cols(COLS_ARGS)
{
    const block_q4_K *x = vx;
    const int nb = n / QK_K;
    const block_q8_K *y[TILE_COLS];
    float acc[TILE_COLS], accmin[TILE_COLS];
    FOR_COLS(c) {
        y[c] = ACT_ROW(block_q8_K, vy, c, y_stride);
        acc[c] = accmin[c] = 0.0f;
    }
    for (int i = 0; i < nb; i++) {
        uint8_t sc[8], m[8];
        k4_scales_mins(x[i].scales, sc, m);
        const uint16x8_t mins = vmovl_u8(vld1_u8(m));
        int32x4_t isum[TILE_COLS];
        FOR_COLS(c) isum[c] = vdupq_n_s32(0);
        for (int j = 0; j < QK_K / 64; j++) { /* sub-blocks 2j (low nibbles), 2j+1 */
            const uint8x16_t q0 = vld1q_u8(x[i].qs + 32 * j), q1 = vld1q_u8(x[i].qs + 32 * j + 16);
            const int8x16_t l0 = s8(vandq_u8(q0, vdupq_n_u8(0x0f)));
            const int8x16_t l1 = s8(vandq_u8(q1, vdupq_n_u8(0x0f)));
            const int8x16_t h0 = s8(vshrq_n_u8(q0, 4)), h1 = s8(vshrq_n_u8(q1, 4));
            FOR_COLS(c) {
                const int8_t *yq = y[c][i].qs + 64 * j;
                const int32x4_t dl = dot_sum(dot_sum(vdupq_n_s32(0), l0, vld1q_s8(yq)), l1,
                                             vld1q_s8(yq + 16));
                const int32x4_t dh = dot_sum(dot_sum(vdupq_n_s32(0), h0, vld1q_s8(yq + 32)), h1,
                                             vld1q_s8(yq + 48));
                isum[c] = vmlaq_n_s32(isum[c], dl, sc[2 * j]);
                isum[c] = vmlaq_n_s32(isum[c], dh, sc[2 * j + 1]);
            }
        }
        const float dx = nbi_neon_h2f(x[i].d), dminx = nbi_neon_h2f(x[i].dmin);
        FOR_COLS(c) {
            const int32_t imin = k4_min_sum(y[c][i].bsums, mins);
            acc[c] = fmaf((float)vaddvq_s32(isum[c]), dx * y[c][i].d, acc[c]);
            accmin[c] = fmaf((float)imin, dminx * y[c][i].d, accmin[c]);
        }
    }
    float res[TILE_COLS];
    FOR_COLS(c) res[c] = acc[c] - accmin[c];
    STORE_COLS(res, nbi_q4_K_vec_dot_ref)
}
DEFINE_DOT_AND_TILE(q4_K)

/* Q5_K (q5_K_ref.c): Q4_K's codes plus a fifth bit, eight lanes of
 * sc * q * y, lane = fma(dy * dx, isum, lane), summs = fma(-dy * dminx,
 * msum, summs); result hsum8(lanes) + summs. */
NBI_COLS_FN q5_K_cols(COLS_ARGS)
{
    const block_q5_K *x = vx;
    const int nb = n / QK_K;
    const block_q8_K *y[TILE_COLS];
    nbi_f32x8 lane[TILE_COLS];
    float summs[TILE_COLS];
    FOR_COLS(c) {
        y[c] = ACT_ROW(block_q8_K, vy, c, y_stride);
        lane[c] = nbi_f32x8_zero();
        summs[c] = 0.0f;
    }
    for (int i = 0; i < nb; i++) {
        uint8_t sc[8], m[8];
        k4_scales_mins(x[i].scales, sc, m);
        const uint16x8_t mins = vmovl_u8(vld1_u8(m));
        /* Element 64j + l takes bit 2j of qh[l] (l < 32), element
         * 64j + 32 + l bit 2j + 1; shifted down by two per chunk. */
        uint8x16_t qh0 = vld1q_u8(x[i].qh), qh1 = vld1q_u8(x[i].qh + 16);
        const uint8x16_t b4 = vdupq_n_u8(0x10);
        int32x4_t acc_lo[TILE_COLS], acc_hi[TILE_COLS];
        FOR_COLS(c) acc_lo[c] = acc_hi[c] = vdupq_n_s32(0);
        for (int j = 0; j < QK_K / 64; j++) {
            const uint8x16_t q0 = vld1q_u8(x[i].qs + 32 * j), q1 = vld1q_u8(x[i].qs + 32 * j + 16);
            const uint8x16_t m4 = vdupq_n_u8(0x0f);
            /* the fifth bit, worth 16: bit 0 of qh for the low nibbles
             * (sub-block 2j), bit 1 for the high ones (2j + 1) */
            const int8x16_t l0 = s8(vorrq_u8(vandq_u8(q0, m4), vandq_u8(vshlq_n_u8(qh0, 4), b4)));
            const int8x16_t l1 = s8(vorrq_u8(vandq_u8(q1, m4), vandq_u8(vshlq_n_u8(qh1, 4), b4)));
            const int8x16_t h0 = s8(vorrq_u8(vshrq_n_u8(q0, 4), vandq_u8(vshlq_n_u8(qh0, 3), b4)));
            const int8x16_t h1 = s8(vorrq_u8(vshrq_n_u8(q1, 4), vandq_u8(vshlq_n_u8(qh1, 3), b4)));
            qh0 = vshrq_n_u8(qh0, 2);
            qh1 = vshrq_n_u8(qh1, 2);
            FOR_COLS(c) {
                const int8_t *yq = y[c][i].qs + 64 * j;
                const int32x4_t z = vdupq_n_s32(0);
                acc_lo[c] = vmlaq_n_s32(acc_lo[c], dot4(z, l0, vld1q_s8(yq)), sc[2 * j]);
                acc_hi[c] = vmlaq_n_s32(acc_hi[c], dot4(z, l1, vld1q_s8(yq + 16)), sc[2 * j]);
                acc_lo[c] = vmlaq_n_s32(acc_lo[c], dot4(z, h0, vld1q_s8(yq + 32)), sc[2 * j + 1]);
                acc_hi[c] = vmlaq_n_s32(acc_hi[c], dot4(z, h1, vld1q_s8(yq + 48)), sc[2 * j + 1]);
            }
        }
        const float dx = nbi_neon_h2f(x[i].d), dminx = nbi_neon_h2f(x[i].dmin);
        FOR_COLS(c) {
            const int32_t msum = k4_min_sum(y[c][i].bsums, mins);
            summs[c] = fmaf(-y[c][i].d * dminx, (float)msum, summs[c]);
            lane[c] = nbi_neon_fma_lanes(lane[c], y[c][i].d * dx, acc_lo[c], acc_hi[c]);
        }
    }
    float res[TILE_COLS];
    FOR_COLS(c) res[c] = nbi_neon_hsum8(lane[c]) + summs[c];
    STORE_COLS(res, nbi_q5_K_vec_dot_ref)
}
DEFINE_DOT_AND_TILE(q5_K)

/* Q6_K (q6_K_ref.c): the unsigned codes u = q + 32 (0..63) multiplied in
 * lanes as Q2_K, each lane starting from minus 32 times its two
 * sub-blocks' scale-weighted bsums; lane = fma(dy * dx, isum, lane). */
NBI_COLS_FN q6_K_cols(COLS_ARGS)
{
    const block_q6_K *x = vx;
    const int nb = n / QK_K;
    const block_q8_K *y[TILE_COLS];
    nbi_f32x8 lane[TILE_COLS];
    FOR_COLS(c) {
        y[c] = ACT_ROW(block_q8_K, vy, c, y_stride);
        lane[c] = nbi_f32x8_zero();
    }
    for (int i = 0; i < nb; i++) {
        const int8_t *sc = x[i].scales;
        const int8x16_t scv = vld1q_s8(sc);
        const int16x8_t s0 = vmovl_s8(vget_low_s8(scv)), s1 = vmovl_high_s8(scv);
        int32x4_t acc_lo[TILE_COLS], acc_hi[TILE_COLS];
        FOR_COLS(c) {
            int32x4_t lo, hi;
            bsum_pairs(y[c][i].bsums, s0, s1, &lo, &hi);
            acc_lo[c] = vmulq_n_s32(lo, -32);
            acc_hi[c] = vmulq_n_s32(hi, -32);
        }
        /* Half h: ql[64h..64h+63] and qh[32h..32h+31] hold elements
         * 128h + 32k + l; see q6_K_ref.c. */
        for (int h = 0; h < 2; h++) {
            const uint8_t *ql = x[i].ql + 64 * h;
            uint8x16_t qh0 = vld1q_u8(x[i].qh + 32 * h), qh1 = vld1q_u8(x[i].qh + 32 * h + 16);
            for (int k = 0; k < 4; k++) {
                const uint8x16_t a0 = vld1q_u8(ql + 32 * (k & 1));
                const uint8x16_t a1 = vld1q_u8(ql + 32 * (k & 1) + 16);
                const uint8x16_t lo0 = k < 2 ? vandq_u8(a0, vdupq_n_u8(0x0f)) : vshrq_n_u8(a0, 4);
                const uint8x16_t lo1 = k < 2 ? vandq_u8(a1, vdupq_n_u8(0x0f)) : vshrq_n_u8(a1, 4);
                const uint8x16_t three = vdupq_n_u8(3);
                const int8x16_t u0 = s8(vorrq_u8(lo0, vshlq_n_u8(vandq_u8(qh0, three), 4)));
                const int8x16_t u1 = s8(vorrq_u8(lo1, vshlq_n_u8(vandq_u8(qh1, three), 4)));
                qh0 = vshrq_n_u8(qh0, 2);
                qh1 = vshrq_n_u8(qh1, 2);
                const int g = 8 * h + 2 * k, e = 16 * g;
                FOR_COLS(c) {
                    const int32x4_t d0 = dot4(vdupq_n_s32(0), u0, vld1q_s8(y[c][i].qs + e));
                    const int32x4_t d1 = dot4(vdupq_n_s32(0), u1, vld1q_s8(y[c][i].qs + e + 16));
                    acc_lo[c] = vmlaq_n_s32(acc_lo[c], d0, sc[g]);
                    acc_hi[c] = vmlaq_n_s32(acc_hi[c], d1, sc[g + 1]);
                }
            }
        }
        const float dx = nbi_neon_h2f(x[i].d);
        FOR_COLS(c) lane[c] = nbi_neon_fma_lanes(lane[c], y[c][i].d * dx, acc_lo[c], acc_hi[c]);
    }
    float res[TILE_COLS];
    FOR_COLS(c) res[c] = nbi_neon_hsum8(lane[c]);
    STORE_COLS(res, nbi_q6_K_vec_dot_ref)
}
DEFINE_DOT_AND_TILE(q6_K)

/* ------------------------------------------------------------------ */

void NBI_QDOT_ADD(nbi_kernels *k)
{
#define SET(id, t) (k->vec_dot[id] = t##_vec_dot, k->vec_dot_tile[id] = t##_tile)
    SET(NB_TYPE_Q4_0, q4_0);
    SET(NB_TYPE_Q4_1, q4_1);
    SET(NB_TYPE_Q5_0, q5_0);
    SET(NB_TYPE_Q5_1, q5_1);
    SET(NB_TYPE_Q8_0, q8_0);
    SET(NB_TYPE_IQ4_NL, iq4_nl);
    SET(NB_TYPE_Q2_K, q2_K);
    SET(NB_TYPE_Q3_K, q3_K);
    SET(NB_TYPE_Q4_K, q4_K);
    SET(NB_TYPE_Q5_K, q5_K);
    SET(NB_TYPE_Q6_K, q6_K);
#undef SET
}
