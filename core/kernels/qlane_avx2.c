/*
 * qlane_avx2.c - Q8_0, Q4_1, Q5_0 and Q5_1 dot products for x86 (AVX2,
 * and AVX-512 VNNI tiles), bit-identical to their references.
 *
 * These references are ggml's AVX2 vec_dot kernels: per output, eight
 * float lanes, lane l accumulating the integer sum of elements 4l..4l+3
 * of each block with fma(dx*dy, isum, lane), then hsum_float_8 (plus, for
 * Q4_1/Q5_1, a separate float sum of m*s).  Here too one AVX register
 * holds the eight lanes of one output:
 *  - a weight block is decoded to 32 bytes in element order (low nibbles,
 *    elements 0..15, in the lower half, high nibbles in the upper half,
 *    fifth bits merged from qh), which is the Q8 activation layout;
 *  - maddubs + madd give the eight exact lane sums.  The unsigned codes of
 *    Q4_1/Q5_1 go in directly, the signed values of Q8_0/Q5_0 through
 *    ggml's sign trick, maddubs(|x|, sign(y, x)), which is exact for
 *    activation bytes in -127..127, the range the activation quantizers
 *    produce (a -128 activation against a negative weight would wrap, in
 *    ggml as here);
 *  - the float update and the final reduction are the reference's.
 * With AVX-512 VNNI (second half of the file) two outputs share a 512-bit
 * register and vpdpbusd forms the lane sums, exactly for any bytes.
 *
 * Tiling: activation rows are taken in chunks of up to COLS; for each
 * chunk their block scales (and Q8_1 sums) are converted to float once
 * into a table, then every weight row is decoded block by block and
 * applied to up to four activation rows at a time - or, with a single
 * activation row (generation), four weight rows are walked together for
 * more independent work per block.  A chunk's activations stay in L1/L2
 * while the weight rows stream past.
 */
#include "simd_x86.h"

#define COLS 16      /* activation rows per pass over the weight rows */
#define ACT_MAX 4096 /* (activation row, block) entries of the scale table */

#define ALWAYS_INLINE inline __attribute__((always_inline))

enum { T_Q8_0, T_Q4_1, T_Q5_0, T_Q5_1 };

static ALWAYS_INLINE size_t wsize(int t)
{
    return t == T_Q8_0 ? sizeof(block_q8_0)
         : t == T_Q4_1 ? sizeof(block_q4_1)
         : t == T_Q5_0 ? sizeof(block_q5_0)
                       : sizeof(block_q5_1);
}

static ALWAYS_INLINE int has_min(int t)
{
    return t == T_Q4_1 || t == T_Q5_1;
}

/* Activations: Q8_1 (d, s, qs) for the types with a minimum, else Q8_0. */
static ALWAYS_INLINE size_t asize(int t)
{
    return has_min(t) ? sizeof(block_q8_1) : sizeof(block_q8_0);
}

static ALWAYS_INLINE size_t aqs(int t)
{
    return has_min(t) ? offsetof(block_q8_1, qs) : offsetof(block_q8_0, qs);
}

/* Generation streams weight rows from memory, four at once, and the
 * hardware prefetchers alone leave that well short of a sequential read's
 * bandwidth: each set of rows starts cold.  So each block is also
 * prefetched in the rows of the next set (`ahead` bytes on), one set's
 * time before it is needed; measured, that beat prefetching a fixed
 * distance along each row.  (The address is formed as an integer: past
 * the last rows it lies beyond the matrix, which a prefetch tolerates but
 * C pointer arithmetic does not.) */
static ALWAYS_INLINE void prefetch(const uint8_t *p, size_t ahead)
{
    _mm_prefetch((const char *)((uintptr_t)p + ahead), _MM_HINT_T0);
}

/* A decoded weight block: u = the unsigned operand of maddubs (the codes,
 * or |x| for the signed types), x = the signed values (signed types). */
typedef struct wblk {
    __m256i u, x;
    __m256 d; /* dx in every lane */
    float m;  /* minimum (types with one) */
} wblk;

static ALWAYS_INLINE wblk decode(int t, const uint8_t *p)
{
    wblk b;
    b.d = _mm256_set1_ps(nbx_h2f(p));
    b.m = 0.0f;
    b.x = _mm256_setzero_si256();
    switch (t) {
    case T_Q8_0:
        b.x = _mm256_loadu_si256((const __m256i *)(p + offsetof(block_q8_0, qs)));
        b.u = _mm256_abs_epi8(b.x);
        break;
    case T_Q4_1:
        b.m = nbx_h2f(p + offsetof(block_q4_1, m));
        b.u = nbx_nibbles32(p + offsetof(block_q4_1, qs));
        break;
    case T_Q5_0: {
        /* q - 16 as a signed byte: where the fifth bit is clear, or'ing
         * 0xf0 into lo gives lo - 16; where set, lo itself (ggml's way) */
        const __m256i lo = nbx_nibbles32(p + offsetof(block_q5_0, qs));
        const __m256i hb = nbx_bits32(nbx_load_u32(p + offsetof(block_q5_0, qh)));
        b.x = _mm256_or_si256(lo, _mm256_andnot_si256(hb, _mm256_set1_epi8((char)0xf0)));
        b.u = _mm256_abs_epi8(b.x);
        break;
    }
    default: { /* T_Q5_1: codes 0..31 */
        b.m = nbx_h2f(p + offsetof(block_q5_1, m));
        const __m256i lo = nbx_nibbles32(p + offsetof(block_q5_1, qs));
        const __m256i hb = nbx_bits32(nbx_load_u32(p + offsetof(block_q5_1, qh)));
        b.u = _mm256_or_si256(lo, _mm256_and_si256(hb, _mm256_set1_epi8(0x10)));
        break;
    }
    }
    return b;
}

/* The eight exact lane sums of one block pair. */
static ALWAYS_INLINE __m256i lane_isum(int t, const wblk *w, __m256i y)
{
    if (t == T_Q8_0 || t == T_Q5_0)
        return nbx_dot_u8s8(w->u, _mm256_sign_epi8(y, w->x));
    return nbx_dot_u8s8(w->u, y);
}

/*
 * NR weight rows against NC activation rows over nb blocks; the result of
 * row r and activation row c goes to *out[r * 4 + c].  dy/sy: activation
 * scales (and Q8_1 sums) as floats, activation row c's at dy[c * ld], or
 * NULL to convert them here.  ahead: prefetch distance (see prefetch).
 */
static ALWAYS_INLINE void lane_kernel(int t, int NR, int NC, int nb, const uint8_t *const *xr,
                                      const uint8_t *const *yc, const float *dy,
                                      const float *sy, size_t ld, size_t ahead,
                                      float *const *out)
{
    __m256 acc[4][4];
    float summs[4][4];
#pragma GCC unroll 8
    for (int r = 0; r < NR; r++)
#pragma GCC unroll 8
        for (int c = 0; c < NC; c++) {
            acc[r][c] = _mm256_setzero_ps();
            summs[r][c] = 0.0f;
        }
    const size_t ws = wsize(t), as = asize(t);
    for (int i = 0; i < nb; i++) {
        wblk w[4];
#pragma GCC unroll 8
        for (int r = 0; r < NR; r++) {
            prefetch(xr[r] + (size_t)i * ws, ahead);
            w[r] = decode(t, xr[r] + (size_t)i * ws);
        }
#pragma GCC unroll 8
        for (int c = 0; c < NC; c++) {
            const uint8_t *yb = yc[c] + (size_t)i * as;
            const __m256i y = _mm256_loadu_si256((const __m256i *)(yb + aqs(t)));
            const __m256 vdy = _mm256_set1_ps(dy ? dy[c * ld + i] : nbx_h2f(yb));
            float s_y = 0.0f;
            if (has_min(t))
                s_y = sy ? sy[c * ld + i] : nbx_h2f(yb + offsetof(block_q8_1, s));
#pragma GCC unroll 8
            for (int r = 0; r < NR; r++) {
                const __m256i isum = lane_isum(t, &w[r], y);
                acc[r][c] = _mm256_fmadd_ps(_mm256_mul_ps(w[r].d, vdy), _mm256_cvtepi32_ps(isum), acc[r][c]);
                if (has_min(t)) /* m*s is exact in float, as the reference notes */
                    summs[r][c] += w[r].m * s_y;
            }
        }
    }
#pragma GCC unroll 8
    for (int r = 0; r < NR; r++)
#pragma GCC unroll 8
        for (int c = 0; c < NC; c++) {
            float v = nbx_hsum8(acc[r][c]);
            if (has_min(t))
                v += summs[r][c];
            *out[r * 4 + c] = v;
        }
}

/* A (rows, columns) shape to its unrolled instance of lane_kernel. */
static ALWAYS_INLINE void lane_shape(int t, int nr, int nc, int nb, const uint8_t *const *xr,
                                     const uint8_t *const *yc, const float *dy,
                                     const float *sy, size_t ld, size_t ahead,
                                     float *const *out)
{
#define SHAPE(R, C)                                                                          \
    if (nr == R && nc == C) {                                                                \
        lane_kernel(t, R, C, nb, xr, yc, dy, sy, ld, ahead, out);                            \
        return;                                                                              \
    }
    SHAPE(1, 4) SHAPE(1, 3) SHAPE(1, 2) SHAPE(1, 1) SHAPE(4, 1) SHAPE(3, 1) SHAPE(2, 1)
#undef SHAPE
}

static ALWAYS_INLINE void lane_tile(int t, int n, int n_rows, int n_cols, float *s,
                                    size_t s_stride, const uint8_t *w, size_t w_stride,
                                    const uint8_t *a, size_t a_stride)
{
    const int nb = n / 32;
    const size_t as = asize(t);
    /* as many activation rows per chunk as the scale table holds (rows of
     * more than ACT_MAX blocks convert their scales inline instead) */
    int cmax = nb > 0 ? ACT_MAX / nb : COLS;
    cmax = cmax < 1 ? 1 : cmax > COLS ? COLS : cmax;
    const int use_table = nb <= ACT_MAX;
    float dy[ACT_MAX], sy[ACT_MAX];
    for (int c0 = 0; c0 < n_cols; c0 += cmax) {
        const int cc = n_cols - c0 < cmax ? n_cols - c0 : cmax;
        if (use_table)
            for (int c = 0; c < cc; c++)
                for (int i = 0; i < nb; i++) {
                    const uint8_t *yb = a + (size_t)(c0 + c) * a_stride + (size_t)i * as;
                    dy[c * nb + i] = nbx_h2f(yb);
                    if (has_min(t))
                        sy[c * nb + i] = nbx_h2f(yb + offsetof(block_q8_1, s));
                }
        /* one activation row: four weight rows per pass; else one weight
         * row against up to four activation rows */
        const int rstep = cc == 1 ? 4 : 1;
        for (int r = 0; r < n_rows; r += rstep) {
            const int nr = n_rows - r < rstep ? n_rows - r : rstep;
            for (int c = 0; c < cc; c += 4) {
                const int nc = cc - c < 4 ? cc - c : 4;
                const uint8_t *xr[4], *yc[4];
                float *out[16];
                for (int i = 0; i < nr; i++)
                    xr[i] = w + (size_t)(r + i) * w_stride;
                for (int j = 0; j < nc; j++)
                    yc[j] = a + (size_t)(c0 + c + j) * a_stride;
                for (int i = 0; i < nr; i++)
                    for (int j = 0; j < nc; j++)
                        out[i * 4 + j] = s + (size_t)(c0 + c + j) * s_stride + (size_t)(r + i);
                lane_shape(t, nr, nc, nb, xr, yc, use_table ? dy + (size_t)c * nb : NULL,
                           use_table ? sy + (size_t)c * nb : NULL, (size_t)nb,
                           (size_t)rstep * w_stride, out);
            }
        }
    }
}

#define LANE_TYPE(name, T)                                                                  \
    void nbi_avx2_##name##_vec_dot(int n, float *restrict s, const void *restrict x,       \
                                   const void *restrict y)                                 \
    {                                                                                       \
        const uint8_t *xr[1] = {x}, *yc[1] = {y};                                          \
        float *out[1] = {s};                                                                \
        lane_kernel(T, 1, 1, n / 32, xr, yc, NULL, NULL, 0, 0, out);                        \
    }                                                                                       \
    void nbi_avx2_##name##_tile(int n, int n_rows, int n_cols, float *restrict s,          \
                                size_t s_stride, const void *restrict w, size_t w_stride,  \
                                const void *restrict a, size_t a_stride)                   \
    {                                                                                       \
        lane_tile(T, n, n_rows, n_cols, s, s_stride, w, w_stride, a, a_stride);             \
    }

LANE_TYPE(q8_0, T_Q8_0)
LANE_TYPE(q4_1, T_Q4_1)
LANE_TYPE(q5_0, T_Q5_0)
LANE_TYPE(q5_1, T_Q5_1)

/* ------------------------------------------------------------------ */
/* AVX-512 VNNI: two weight rows per 512-bit register                   */
/*
 * The eight lanes of row a fill the lower half of a 512-bit register and
 * those of row b the upper half, with the activation block broadcast to
 * both halves, so one vpdpbusd forms sixteen exact lane sums and the float
 * steps (convert, dx*dy, fma) serve two outputs per instruction.
 * vpdpbusd multiplies unsigned by signed bytes.  Q4_1/Q5_1 codes are
 * unsigned already.  For the signed Q8_0/Q5_0 values the activations take
 * the unsigned side as y + 128 (a flipped sign bit), and the surplus
 * 128 * (sum of the weights of the lane) is subtracted through the
 * accumulator's starting value: it depends on the weight block only, so
 * it is computed once per block and shared by every activation row.  All
 * integer, exact for any bytes.
 */

#define AVX512_TARGET __attribute__((target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")))

/* The signed or unsigned weight bytes of a block in element order, as
 * vpdpbusd takes them. */
static AVX512_TARGET ALWAYS_INLINE __m256i decode512(int t, const uint8_t *p)
{
    switch (t) {
    case T_Q8_0:
        return _mm256_loadu_si256((const __m256i *)(p + offsetof(block_q8_0, qs)));
    case T_Q4_1:
        return nbx_nibbles32(p + offsetof(block_q4_1, qs));
    case T_Q5_0: {
        const __m256i lo = nbx_nibbles32(p + offsetof(block_q5_0, qs));
        const __m256i hb = nbx_bits32(nbx_load_u32(p + offsetof(block_q5_0, qh)));
        return _mm256_or_si256(lo, _mm256_andnot_si256(hb, _mm256_set1_epi8((char)0xf0)));
    }
    default: {
        const __m256i lo = nbx_nibbles32(p + offsetof(block_q5_1, qs));
        const __m256i hb = nbx_bits32(nbx_load_u32(p + offsetof(block_q5_1, qh)));
        return _mm256_or_si256(lo, _mm256_and_si256(hb, _mm256_set1_epi8(0x10)));
    }
    }
}

static ALWAYS_INLINE int is_signed(int t)
{
    return t == T_Q8_0 || t == T_Q5_0;
}

/*
 * RP pairs of weight rows (xr[0..2*RP-1]) against NC activation rows over
 * nb blocks; the result of row r and activation row c goes to
 * *out[r * 8 + c].  dy/sy: scale table as in lane_kernel (never NULL here).
 */
static AVX512_TARGET ALWAYS_INLINE void lane512(int t, int RP, int NC, int nb,
                                                const uint8_t *const *xr,
                                                const uint8_t *const *yc, const float *dy,
                                                const float *sy, size_t ld, size_t ahead,
                                                float *const *out)
{
    __m512 acc[2][8];
    float summs[4][8];
#pragma GCC unroll 2
    for (int p = 0; p < RP; p++)
#pragma GCC unroll 8
        for (int c = 0; c < NC; c++) {
            acc[p][c] = _mm512_setzero_ps();
            summs[2 * p][c] = summs[2 * p + 1][c] = 0.0f;
        }
    const size_t ws = wsize(t), as = asize(t);
    const __m512i c128 = _mm512_set1_epi8((char)0x80);
    for (int i = 0; i < nb; i++) {
        __m512i X[2], N[2];
        __m512 DX[2];
        float m[4];
#pragma GCC unroll 2
        for (int p = 0; p < RP; p++) {
            const uint8_t *a = xr[2 * p] + (size_t)i * ws, *b = xr[2 * p + 1] + (size_t)i * ws;
            prefetch(a, ahead);
            prefetch(b, ahead);
            X[p] = _mm512_inserti64x4(_mm512_castsi256_si512(decode512(t, a)), decode512(t, b), 1);
            DX[p] = _mm512_insertf32x8(_mm512_set1_ps(nbx_h2f(a)), _mm256_set1_ps(nbx_h2f(b)), 1);
            /* -128 * sum of each lane's four weights */
            N[p] = is_signed(t) ? _mm512_sub_epi32(_mm512_setzero_si512(),
                                                   _mm512_dpbusd_epi32(_mm512_setzero_si512(), c128, X[p]))
                                : _mm512_setzero_si512();
            if (has_min(t)) {
                m[2 * p] = nbx_h2f(a + offsetof(block_q4_1, m));
                m[2 * p + 1] = nbx_h2f(b + offsetof(block_q4_1, m));
            }
        }
#pragma GCC unroll 8
        for (int c = 0; c < NC; c++) {
            const uint8_t *yb = yc[c] + (size_t)i * as;
            __m512i Y = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)(yb + aqs(t))));
            if (is_signed(t))
                Y = _mm512_xor_si512(Y, c128);
            const __m512 vdy = _mm512_set1_ps(dy[c * ld + i]);
#pragma GCC unroll 2
            for (int p = 0; p < RP; p++) {
                const __m512i isum = is_signed(t) ? _mm512_dpbusd_epi32(N[p], Y, X[p])
                                                  : _mm512_dpbusd_epi32(N[p], X[p], Y);
                acc[p][c] = _mm512_fmadd_ps(_mm512_mul_ps(DX[p], vdy), _mm512_cvtepi32_ps(isum), acc[p][c]);
            }
            if (has_min(t)) {
                const float s_y = sy[c * ld + i];
#pragma GCC unroll 4
                for (int r = 0; r < 2 * RP; r++)
                    summs[r][c] += m[r] * s_y;
            }
        }
    }
#pragma GCC unroll 2
    for (int p = 0; p < RP; p++)
#pragma GCC unroll 8
        for (int c = 0; c < NC; c++)
#pragma GCC unroll 2
            for (int h = 0; h < 2; h++) {
                const __m256 v = h ? _mm512_extractf32x8_ps(acc[p][c], 1) : _mm512_castps512_ps256(acc[p][c]);
                float f = nbx_hsum8(v);
                if (has_min(t))
                    f += summs[2 * p + h][c];
                *out[(2 * p + h) * 8 + c] = f;
            }
}

static AVX512_TARGET ALWAYS_INLINE void lane512_shape(int t, int rp, int nc, int nb,
                                                      const uint8_t *const *xr,
                                                      const uint8_t *const *yc, const float *dy,
                                                      const float *sy, size_t ld, size_t ahead,
                                                      float *const *out)
{
#define SHAPE(R, C)                                                                          \
    if (rp == R && nc == C) {                                                                \
        lane512(t, R, C, nb, xr, yc, dy, sy, ld, ahead, out);                                \
        return;                                                                              \
    }
    SHAPE(1, 8) SHAPE(1, 4) SHAPE(1, 2) SHAPE(1, 1) SHAPE(2, 1)
#undef SHAPE
}

/* As lane_tile; rows in pairs (an odd last row is paired with itself and
 * its copy discarded), activation rows eight at a time - or, for a single
 * activation row, four weight rows at a time. */
static AVX512_TARGET ALWAYS_INLINE void lane512_tile(int t, int n, int n_rows, int n_cols,
                                                     float *s, size_t s_stride,
                                                     const uint8_t *w, size_t w_stride,
                                                     const uint8_t *a, size_t a_stride)
{
    const int nb = n / 32;
    const size_t as = asize(t);
    if (nb > ACT_MAX) { /* rows too long for the scale table */
        lane_tile(t, n, n_rows, n_cols, s, s_stride, w, w_stride, a, a_stride);
        return;
    }
    int cmax = nb > 0 ? ACT_MAX / nb : COLS;
    cmax = cmax < 1 ? 1 : cmax > COLS ? COLS : cmax;
    float dy[ACT_MAX], sy[ACT_MAX];
    for (int c0 = 0; c0 < n_cols; c0 += cmax) {
        const int cc = n_cols - c0 < cmax ? n_cols - c0 : cmax;
        for (int c = 0; c < cc; c++)
            for (int i = 0; i < nb; i++) {
                const uint8_t *yb = a + (size_t)(c0 + c) * a_stride + (size_t)i * as;
                dy[c * nb + i] = nbx_h2f(yb);
                if (has_min(t))
                    sy[c * nb + i] = nbx_h2f(yb + offsetof(block_q8_1, s));
            }
        const int pairs = cc == 1 ? 2 : 1;
        for (int r = 0; r < n_rows; r += 2 * pairs) {
            const int nr = n_rows - r < 2 * pairs ? n_rows - r : 2 * pairs;
            const int rp = (nr + 1) / 2;
            for (int c = 0; c < cc;) {
                const int left = cc - c;
                const int nc = left >= 8 ? 8 : left >= 4 ? 4 : left >= 2 ? 2 : 1;
                const uint8_t *xr[4], *yc[8];
                float *out[32], discard[32];
                for (int i = 0; i < 2 * rp; i++)
                    xr[i] = w + (size_t)(r + (i < nr ? i : nr - 1)) * w_stride;
                for (int j = 0; j < nc; j++)
                    yc[j] = a + (size_t)(c0 + c + j) * a_stride;
                for (int i = 0; i < 2 * rp; i++)
                    for (int j = 0; j < nc; j++)
                        out[i * 8 + j] = i < nr ? s + (size_t)(c0 + c + j) * s_stride + (size_t)(r + i)
                                                : &discard[i * 8 + j];
                lane512_shape(t, rp, nc, nb, xr, yc, dy + (size_t)c * nb, sy + (size_t)c * nb,
                              (size_t)nb, (size_t)(2 * pairs) * w_stride, out);
                c += nc;
            }
        }
    }
}

#define LANE512_TYPE(name, T)                                                               \
    AVX512_TARGET void nbi_avx512_##name##_tile(int n, int n_rows, int n_cols,              \
                                                float *restrict s, size_t s_stride,         \
                                                const void *restrict w, size_t w_stride,    \
                                                const void *restrict a, size_t a_stride)    \
    {                                                                                       \
        lane512_tile(T, n, n_rows, n_cols, s, s_stride, w, w_stride, a, a_stride);          \
    }

LANE512_TYPE(q8_0, T_Q8_0)
LANE512_TYPE(q4_1, T_Q4_1)
LANE512_TYPE(q5_0, T_Q5_0)
LANE512_TYPE(q5_1, T_Q5_1)
