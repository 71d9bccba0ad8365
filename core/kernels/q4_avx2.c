/*
 * q4_avx2.c - Q4_0 and IQ4_NL dot products for x86 (AVX2, optionally
 * AVX-VNNI or AVX-512 VNNI), bit-identical to q4_0_ref.c and
 * iq4_nl_ref.c.
 *
 * Both references keep ONE float accumulator per output and update it
 * block by block, sum = fma((float)isum, dx*dy, sum), as llama.cpp's
 * repacked gemv/gemm do.  That chain cannot be split into lanes along the
 * row, so the SIMD lanes run across rows instead: lane i of every float
 * vector belongs to row i of a group of 8 (16 with AVX-512), and each lane
 * performs exactly the reference's sequence of fused multiply-adds.  The
 * integer block sums are exact, so only how they are formed is ours:
 *
 *  - Transposed weights.  The 16 code bytes of a block are four 32-bit
 *    words; word k holds elements 4k..4k+3 (low nibbles) and 16+4k..19+4k
 *    (high nibbles).  For a group of rows, a transpose of those words
 *    (unpack instructions within 128-bit lanes) gives P[k] with row i's
 *    word k in lane i; masking and shifting gives W[j], j = 0..7, whose
 *    lane i holds the four codes of row i for elements 4j..4j+3.
 *  - Broadcast activations.  Elements 4j..4j+3 of the Q8_0 block are one
 *    32-bit word; broadcast to all lanes and multiplied with W[j]
 *    (maddubs, or vpdpbusd with VNNI) it meets every row at once, and
 *    summing over j leaves each row's block sum in its own lane: no
 *    horizontal reduction at all.
 *  - Unsigned codes.  Both instructions want one unsigned operand, so the
 *    codes are used unshifted (Q4_0: q in 0..15 instead of q-8) and the
 *    offset is put back with the activation sum: isum = sum(q*y) -
 *    8*sum(y).  maddubs's int16 partial sums stay within 16*15*128 =
 *    30720, so nothing saturates for any input bytes.  IQ4_NL's levels
 *    (-127..113) plus 128 are too big for maddubs, so each u = level +
 *    128 is split into nibbles, u = 16*h + l, summed separately; vpdpbusd
 *    takes u directly (it accumulates in int32, with no int16 stage).
 *
 * Variants: plain AVX2 (8 rows, maddubs), AVX-VNNI (8 rows, vpdpbusd) and
 * AVX-512 VNNI (16 rows per 512-bit register: twice the work per
 * instruction).  basic_avx2.c picks one by CPUID.
 *
 * Tiling (vec_dot_tile): the transpose and decoding of a group's block is
 * done once and used against up to COLS activation rows, whose blocks sit
 * in L1/L2; per activation row and block, the scale (as float) and the
 * offset correction are computed once (struct act) and shared by all row
 * groups.  Long rows are walked in chunks of blocks, the accumulators
 * parked in the output between chunks (a float store and reload changes
 * no bits).  A group with fewer rows repeats its last row in the spare
 * lanes and stores only the valid ones.
 */
#include "simd_x86.h"

#define BLK_W 18     /* sizeof(block_q4_0) == sizeof(block_iq4_nl) */
#define BLK_A 34     /* sizeof(block_q8_0) */
#define COLS 32      /* activation rows per pass over the weight rows */
#define ACT_MAX 2048 /* (activation row, block) entries per chunk */

_Static_assert(sizeof(block_q4_0) == BLK_W && sizeof(block_iq4_nl) == BLK_W, "block size");
_Static_assert(sizeof(block_q8_0) == BLK_A, "block size");

#define ALWAYS_INLINE inline __attribute__((always_inline))

/* Per activation row and block: its scale and the integer correction that
 * undoes the unsigned weight offset (-8*sum(y) or -128*sum(y)). */
typedef struct act {
    float d;
    int32_t corr;
} act;

static const int8_t iq4nl_levels[16] = {
    -127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113,
};

/* pshufb table for IQ4_NL: level + 128 (part 2), or its low (0) or high
 * (1) nibble. */
static inline __m128i iq4nl_table(int part)
{
    uint8_t t[16];
    for (int i = 0; i < 16; i++) {
        const int u = iq4nl_levels[i] + 128;
        t[i] = (uint8_t)(part == 0 ? u & 15 : part == 1 ? u >> 4 : u);
    }
    return _mm_loadu_si128((const __m128i *)t);
}

static inline int32_t block_sum_q8(const uint8_t *qs)
{
    const __m256i y = _mm256_loadu_si256((const __m256i *)qs);
    return nbx_hsum_i32(nbx_dot_u8s8(_mm256_set1_epi8(1), y));
}

static ALWAYS_INLINE __m256i bcast32(const uint8_t *p)
{
    return _mm256_set1_epi32((int)nbx_load_u32(p));
}

/*
 * A group kernel: rows rp[0..G-1] (the last valid row repeated after the
 * first nr) against cc activation rows, blocks b0..b0+bb-1.  The
 * accumulators of activation row c live at s + c * s_stride (lanes =
 * rows); they start at zero, or from there when resume is set.  ahead:
 * bytes from a row to the same row of the next group, for prefetching.
 */
typedef void (*group_fn)(const uint8_t *const *rp, int nr, size_t ahead, int b0, int bb,
                         const uint8_t *const *col, int cc, const act *meta, float *s,
                         size_t s_stride, int resume);

#define GROUP_ARGS                                                                            \
    const uint8_t *const *rp, int nr, size_t ahead, int b0, int bb, const uint8_t *const *col, \
        int cc, const act *meta, float *s, size_t s_stride, int resume

/* ------------------------------------------------------------------ */
/* Eight rows per 256-bit register (AVX2 and AVX-VNNI)                  */

/*
 * Generation streams the weights from memory, and the hardware prefetchers
 * alone leave that well short of the bandwidth of a plain sequential read:
 * eight rows are read side by side, and each group's rows start cold.  So
 * while a group works through block b, the next group's rows (a contiguous
 * region `ahead` bytes on) are prefetched as one sequential stream, three
 * cache lines per block - a little more than the 8 * 18 bytes a block step
 * consumes.  Measured against a fixed distance along each row, or the
 * same block of the next group's rows, this streamed fastest.  (The
 * address is formed as an integer: past the last group it lies beyond the
 * matrix, which a prefetch tolerates but C pointer arithmetic does not.)
 */
#define PREFETCH_LINES 3

static ALWAYS_INLINE void prefetch_next(const uint8_t *row0, size_t ahead, int b)
{
#pragma GCC unroll 4
    for (int k = 0; k < PREFETCH_LINES; k++)
        _mm_prefetch((const char *)((uintptr_t)row0 + ahead + ((size_t)b * PREFETCH_LINES + (size_t)k) * 64),
                     _MM_HINT_T0);
}

/* Transposed packed codes of block b in each of the eight rows, and the
 * rows' scales as floats. */
static ALWAYS_INLINE void load8(const uint8_t *const *rp, int blk, size_t ahead, __m256i P[4],
                                __m256 *dx)
{
    const size_t off = (size_t)blk * BLK_W;
    prefetch_next(rp[0], ahead, blk);
#define LD(i) _mm_loadu_si128((const __m128i *)(rp[i] + off + 2))
#define PAIR(i) _mm256_inserti128_si256(_mm256_castsi128_si256(LD(i)), LD(i + 4), 1)
    /* rows i and i+4 share a register, so that the 4x4 word transposes,
     * which work within 128-bit halves, handle rows 0-3 and 4-7 at once */
    const __m256i r04 = PAIR(0), r15 = PAIR(1), r26 = PAIR(2), r37 = PAIR(3);
#undef PAIR
#undef LD
    const __m256i a = _mm256_unpacklo_epi32(r04, r15), b = _mm256_unpackhi_epi32(r04, r15);
    const __m256i c = _mm256_unpacklo_epi32(r26, r37), d = _mm256_unpackhi_epi32(r26, r37);
    P[0] = _mm256_unpacklo_epi64(a, c);
    P[1] = _mm256_unpackhi_epi64(a, c);
    P[2] = _mm256_unpacklo_epi64(b, d);
    P[3] = _mm256_unpackhi_epi64(b, d);
    uint16_t h[8];
#pragma GCC unroll 8
    for (int i = 0; i < 8; i++)
        h[i] = nbx_load_u16(rp[i] + off);
    *dx = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)h));
}

/* Packed rows (block_q4_0x8, pack.c): block blk of the group at g is
 * already in lane order, so the transposes disappear.  Generation reads
 * a packed matrix as one stream, and prefetches PACK_AHEAD bytes ahead of
 * the block in use (past the matrix's end the address is formed as an
 * integer, as in prefetch_next). */
#define PACK_AHEAD 8192

static ALWAYS_INLINE void prefetch_packed(const uint8_t *g, int blk)
{
    const uintptr_t p = (uintptr_t)g + (size_t)blk * sizeof(block_q4_0x8) + PACK_AHEAD;
#pragma GCC unroll 4
    for (int k = 0; k < 3; k++)
        _mm_prefetch((const char *)(p + 64 * (size_t)k), _MM_HINT_T0);
}

static ALWAYS_INLINE void loadp8(const uint8_t *g, int blk, __m256i P[4], __m256 *dx)
{
    const uint8_t *p = g + (size_t)blk * sizeof(block_q4_0x8);
    *dx = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p));
#pragma GCC unroll 4
    for (int k = 0; k < 4; k++)
        P[k] = _mm256_loadu_si256((const __m256i *)(p + 16 + 32 * k));
}

/* A group's block from either layout: rp holds the eight row pointers,
 * or (packed) the group's first row. */
static ALWAYS_INLINE void load_group8(const uint8_t *const *rp, int blk, size_t ahead, __m256i P[4],
                                      __m256 *dx, int packed)
{
    if (packed)
        loadp8(rp[0], blk, P, dx);
    else
        load8(rp, blk, ahead, P, dx);
}

/* The eight 4-bit code vectors of a group block, X[j] for elements 4j.. */
static ALWAYS_INLINE void split8(const __m256i P[4], __m256i X[8])
{
    const __m256i m = _mm256_set1_epi8(0x0f);
#pragma GCC unroll 4
    for (int k = 0; k < 4; k++) {
        X[k] = _mm256_and_si256(P[k], m);
        X[k + 4] = _mm256_and_si256(_mm256_srli_epi16(P[k], 4), m);
    }
}

/* The reference's float step for eight rows: acc = fma(isum, dx*dy, acc). */
static ALWAYS_INLINE __m256 step8(__m256i isum, __m256 dx, float dy, __m256 acc)
{
    return _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum), _mm256_mul_ps(dx, _mm256_set1_ps(dy)), acc);
}

static ALWAYS_INLINE void acc8_load(__m256 *acc, int cc, const float *s, size_t s_stride,
                                    int nr, int resume)
{
    for (int c = 0; c < cc; c++)
        acc[c] = resume ? nbx_load_partial(s + (size_t)c * s_stride, nr) : _mm256_setzero_ps();
}

static ALWAYS_INLINE void acc8_store(const __m256 *acc, int cc, float *s, size_t s_stride,
                                     int nr)
{
    for (int c = 0; c < cc; c++)
        nbx_store_partial(s + (size_t)c * s_stride, acc[c], nr);
}

/*
 * Generation (one activation row) with a full group of eight rows, the
 * case that streams the weights, gets kernels of its own (gen8_*): the
 * general group kernel spends about as much on bookkeeping as on the
 * block (row pointers and accumulators in memory, the loop over
 * activation rows), and generation is where decoding must keep up with
 * memory.  Here the rows are addressed from three pointers and the
 * stride, the accumulator stays in a register, and the eight scales come
 * from one gather: the 32-bit word at each row's block holds its scale in
 * the low half, which a byte shuffle collects.  Same products and the
 * same float steps as group_q4_0: the same bits.
 */
typedef struct rows8 {
    const uint8_t *p, *q, *t; /* rows 0, 3 and 5 at the current block */
    size_t ws;                /* row stride */
    __m256i idx;              /* row i's offset, i * ws, for the gather */
} rows8;

static ALWAYS_INLINE rows8 rows8_at(const uint8_t *w0, size_t ws, int b0)
{
    rows8 r;
    const int is = (int)ws;
    r.p = w0 + (size_t)b0 * BLK_W;
    r.q = r.p + 3 * ws;
    r.t = r.p + 5 * ws;
    r.ws = ws;
    r.idx = _mm256_setr_epi32(0, is, 2 * is, 3 * is, 4 * is, 5 * is, 6 * is, 7 * is);
    return r;
}

static ALWAYS_INLINE void rows8_next(rows8 *r)
{
    r->p += BLK_W;
    r->q += BLK_W;
    r->t += BLK_W;
}

/* As load8, for the current block of r. */
static ALWAYS_INLINE void load8_rows(const rows8 *r, __m256i P[4], __m256 *dx)
{
    const size_t ws = r->ws;
#define LD(x) _mm_loadu_si128((const __m128i *)((x) + 2))
#define PAIR(x, z) _mm256_inserti128_si256(_mm256_castsi128_si256(LD(x)), LD(z), 1)
    const __m256i r04 = PAIR(r->p, r->q + ws), r15 = PAIR(r->p + ws, r->t);
    const __m256i r26 = PAIR(r->p + 2 * ws, r->t + ws), r37 = PAIR(r->q, r->t + 2 * ws);
#undef PAIR
#undef LD
    const __m256i a = _mm256_unpacklo_epi32(r04, r15), b = _mm256_unpackhi_epi32(r04, r15);
    const __m256i c = _mm256_unpacklo_epi32(r26, r37), d = _mm256_unpackhi_epi32(r26, r37);
    P[0] = _mm256_unpacklo_epi64(a, c);
    P[1] = _mm256_unpackhi_epi64(a, c);
    P[2] = _mm256_unpacklo_epi64(b, d);
    P[3] = _mm256_unpackhi_epi64(b, d);
    const __m256i v = _mm256_i32gather_epi32((const int *)r->p, r->idx, 1);
    /* the low 16 bits of each word to the low 8 bytes of each half */
    const __m256i pick = _mm256_setr_epi8(0, 1, 4, 5, 8, 9, 12, 13, -1, -1, -1, -1, -1, -1, -1, -1,
                                          0, 1, 4, 5, 8, 9, 12, 13, -1, -1, -1, -1, -1, -1, -1, -1);
    const __m256i h = _mm256_permute4x64_epi64(_mm256_shuffle_epi8(v, pick), 0x08);
    *dx = _mm256_cvtph_ps(_mm256_castsi256_si128(h));
}

/* Block blk of a generation group, with the prefetch ahead of it: packed
 * (w0 the group's first row), or through r, which it advances. */
static ALWAYS_INLINE void gen8_load(rows8 *r, const uint8_t *w0, size_t ws, int blk, __m256i P[4],
                                   __m256 *dx, int packed)
{
    if (packed) {
        prefetch_packed(w0, blk);
        loadp8(w0, blk, P, dx);
    } else {
        prefetch_next(w0, 8 * ws, blk);
        load8_rows(r, P, dx);
        rows8_next(r);
    }
}

/* Whether group kernels may take the gen8 path: one activation row, eight
 * real rows, and row offsets that fit the gather's int32 indices. */
static ALWAYS_INLINE int gen8_ok(int nr, int cc, size_t ahead)
{
    return cc == 1 && nr == 8 && ahead / 8 <= (size_t)INT32_MAX / 8;
}

static ALWAYS_INLINE void gen8_q4_0(const uint8_t *w0, size_t ws, int b0, int bb,
                                    const uint8_t *col, const act *meta, float *s, int resume,
                                    int packed)
{
    const __m256i lo4 = _mm256_set1_epi8(0x0f), ones = _mm256_set1_epi16(1);
    __m256 acc = resume ? _mm256_loadu_ps(s) : _mm256_setzero_ps();
    rows8 r = rows8_at(w0, ws, b0);
    const uint8_t *y = col + (size_t)b0 * BLK_A + 2;
    for (int b = 0; b < bb; b++, y += BLK_A) {
        __m256i P[4];
        __m256 dx;
        gen8_load(&r, w0, ws, b0 + b, P, &dx, packed);
        /* int16 lanes 2i and 2i+1 collect row i's products */
        __m256i p[4];
#pragma GCC unroll 4
        for (int k = 0; k < 4; k++)
            p[k] = _mm256_add_epi16(
                _mm256_maddubs_epi16(_mm256_and_si256(P[k], lo4), bcast32(y + 4 * k)),
                _mm256_maddubs_epi16(_mm256_and_si256(_mm256_srli_epi16(P[k], 4), lo4), bcast32(y + 16 + 4 * k)));
        const __m256i t = _mm256_add_epi16(_mm256_add_epi16(p[0], p[1]), _mm256_add_epi16(p[2], p[3]));
        const __m256i isum = _mm256_add_epi32(_mm256_madd_epi16(t, ones), _mm256_set1_epi32(meta[b].corr));
        acc = step8(isum, dx, meta[b].d, acc);
    }
    _mm256_storeu_ps(s, acc);
}

static ALWAYS_INLINE void group_q4_0_body(GROUP_ARGS, int packed)
{
    if (gen8_ok(nr, cc, ahead)) {
        gen8_q4_0(rp[0], ahead / 8, b0, bb, col[0], meta, s, resume, packed);
        return;
    }
    const __m256i ones = _mm256_set1_epi16(1);
    __m256 acc[COLS];
    acc8_load(acc, cc, s, s_stride, nr, resume);
    for (int b = 0; b < bb; b++) {
        __m256i P[4], W[8];
        __m256 dx;
        load_group8(rp, b0 + b, ahead, P, &dx, packed);
        split8(P, W);
        const act *m = meta + (size_t)b * cc;
        const size_t yoff = (size_t)(b0 + b) * BLK_A + 2;
        for (int c = 0; c < cc; c++) {
            const uint8_t *y = col[c] + yoff;
            /* int16 lanes 2i and 2i+1 collect row i's products */
            __m256i p[4];
#pragma GCC unroll 4
            for (int j = 0; j < 4; j++)
                p[j] = _mm256_add_epi16(_mm256_maddubs_epi16(W[2 * j], bcast32(y + 8 * j)),
                                        _mm256_maddubs_epi16(W[2 * j + 1], bcast32(y + 8 * j + 4)));
            const __m256i t = _mm256_add_epi16(_mm256_add_epi16(p[0], p[1]), _mm256_add_epi16(p[2], p[3]));
            const __m256i isum = _mm256_add_epi32(_mm256_madd_epi16(t, ones), _mm256_set1_epi32(m[c].corr));
            acc[c] = step8(isum, dx, m[c].d, acc[c]);
        }
    }
    acc8_store(acc, cc, s, s_stride, nr);
}

static ALWAYS_INLINE void group_iq4_nl_body(GROUP_ARGS, int packed)
{
    const __m256i ones = _mm256_set1_epi16(1), sixteen = _mm256_set1_epi16(16);
    const __m256i tlo = _mm256_broadcastsi128_si256(iq4nl_table(0));
    const __m256i thi = _mm256_broadcastsi128_si256(iq4nl_table(1));
    __m256 acc[COLS];
    acc8_load(acc, cc, s, s_stride, nr, resume);
    for (int b = 0; b < bb; b++) {
        __m256i P[4], X[8], L[8], H[8];
        __m256 dx;
        load_group8(rp, b0 + b, ahead, P, &dx, packed);
        split8(P, X);
#pragma GCC unroll 8
        for (int j = 0; j < 8; j++) {
            L[j] = _mm256_shuffle_epi8(tlo, X[j]);
            H[j] = _mm256_shuffle_epi8(thi, X[j]);
        }
        const act *m = meta + (size_t)b * cc;
        const size_t yoff = (size_t)(b0 + b) * BLK_A + 2;
        for (int c = 0; c < cc; c++) {
            const uint8_t *y = col[c] + yoff;
            __m256i sl = _mm256_setzero_si256(), sh = _mm256_setzero_si256();
#pragma GCC unroll 8
            for (int j = 0; j < 8; j++) {
                const __m256i yj = bcast32(y + 4 * j);
                sl = _mm256_add_epi16(sl, _mm256_maddubs_epi16(L[j], yj));
                sh = _mm256_add_epi16(sh, _mm256_maddubs_epi16(H[j], yj));
            }
            /* sum(u*y) = 16*sum(h*y) + sum(l*y); madd by 16 widens and scales */
            const __m256i isum = _mm256_add_epi32(
                _mm256_add_epi32(_mm256_madd_epi16(sh, sixteen), _mm256_madd_epi16(sl, ones)),
                _mm256_set1_epi32(m[c].corr));
            acc[c] = step8(isum, dx, m[c].d, acc[c]);
        }
    }
    acc8_store(acc, cc, s, s_stride, nr);
}

#define GROUP_PASS rp, nr, ahead, b0, bb, col, cc, meta, s, s_stride, resume

static void group_q4_0(GROUP_ARGS) { group_q4_0_body(GROUP_PASS, 0); }
static void group_q4_0_p(GROUP_ARGS) { group_q4_0_body(GROUP_PASS, 1); }
static void group_iq4_nl(GROUP_ARGS) { group_iq4_nl_body(GROUP_PASS, 0); }
static void group_iq4_nl_p(GROUP_ARGS) { group_iq4_nl_body(GROUP_PASS, 1); }

/* AVX-VNNI: vpdpbusd adds four u8*s8 products per int32 lane, exactly. */
#define VNNI_TARGET __attribute__((target("avx2,fma,f16c,avxvnni")))

/* corr + the products of W[j] with the broadcast words of y, in two chains
 * for instruction-level parallelism (integer, so the split is exact). */
static VNNI_TARGET ALWAYS_INLINE __m256i vnni8(const __m256i W[8], const uint8_t *y,
                                               int32_t corr)
{
    __m256i e = _mm256_set1_epi32(corr), o = _mm256_setzero_si256();
#pragma GCC unroll 4
    for (int j = 0; j < 8; j += 2) {
        e = _mm256_dpbusd_avx_epi32(e, W[j], bcast32(y + 4 * j));
        o = _mm256_dpbusd_avx_epi32(o, W[j + 1], bcast32(y + 4 * j + 4));
    }
    return _mm256_add_epi32(e, o);
}

static VNNI_TARGET ALWAYS_INLINE void group_vnni8(GROUP_ARGS, int iq4nl, int packed)
{
    const __m256i tu = _mm256_broadcastsi128_si256(iq4nl_table(2));
    __m256 acc[COLS];
    acc8_load(acc, cc, s, s_stride, nr, resume);
    for (int b = 0; b < bb; b++) {
        __m256i P[4], W[8];
        __m256 dx;
        load_group8(rp, b0 + b, ahead, P, &dx, packed);
        split8(P, W);
        if (iq4nl)
#pragma GCC unroll 8
            for (int j = 0; j < 8; j++)
                W[j] = _mm256_shuffle_epi8(tu, W[j]);
        const act *m = meta + (size_t)b * cc;
        const size_t yoff = (size_t)(b0 + b) * BLK_A + 2;
        for (int c = 0; c < cc; c++)
            acc[c] = step8(vnni8(W, col[c] + yoff, m[c].corr), dx, m[c].d, acc[c]);
    }
    acc8_store(acc, cc, s, s_stride, nr);
}

/* gen8_q4_0 with vpdpbusd, which can take the high nibbles unshifted:
 * masked in place they are 16 times the code (0..240), and their sum,
 * kept apart, is a multiple of 16 that an arithmetic shift divides
 * exactly. */
static VNNI_TARGET ALWAYS_INLINE void gen8_q4_0_vnni(const uint8_t *w0, size_t ws, int b0,
                                                     int bb, const uint8_t *col,
                                                     const act *meta, float *s, int resume,
                                                     int packed)
{
    const __m256i lo4 = _mm256_set1_epi8(0x0f), hi4 = _mm256_set1_epi8((char)0xf0);
    __m256 acc = resume ? _mm256_loadu_ps(s) : _mm256_setzero_ps();
    rows8 r = rows8_at(w0, ws, b0);
    const uint8_t *y = col + (size_t)b0 * BLK_A + 2;
    for (int b = 0; b < bb; b++, y += BLK_A) {
        __m256i P[4];
        __m256 dx;
        gen8_load(&r, w0, ws, b0 + b, P, &dx, packed);
        __m256i e = _mm256_set1_epi32(meta[b].corr), o = _mm256_setzero_si256();
#pragma GCC unroll 4
        for (int k = 0; k < 4; k++) {
            e = _mm256_dpbusd_avx_epi32(e, _mm256_and_si256(P[k], lo4), bcast32(y + 4 * k));
            o = _mm256_dpbusd_avx_epi32(o, _mm256_and_si256(P[k], hi4), bcast32(y + 16 + 4 * k));
        }
        const __m256i isum = _mm256_add_epi32(e, _mm256_srai_epi32(o, 4));
        acc = step8(isum, dx, meta[b].d, acc);
    }
    _mm256_storeu_ps(s, acc);
}

static VNNI_TARGET ALWAYS_INLINE void group_q4_0_vnni_body(GROUP_ARGS, int packed)
{
    if (gen8_ok(nr, cc, ahead)) {
        gen8_q4_0_vnni(rp[0], ahead / 8, b0, bb, col[0], meta, s, resume, packed);
        return;
    }
    group_vnni8(GROUP_PASS, 0, packed);
}

static VNNI_TARGET void group_q4_0_vnni(GROUP_ARGS) { group_q4_0_vnni_body(GROUP_PASS, 0); }
static VNNI_TARGET void group_q4_0_vnni_p(GROUP_ARGS) { group_q4_0_vnni_body(GROUP_PASS, 1); }
static VNNI_TARGET void group_iq4_nl_vnni(GROUP_ARGS) { group_vnni8(GROUP_PASS, 1, 0); }
static VNNI_TARGET void group_iq4_nl_vnni_p(GROUP_ARGS) { group_vnni8(GROUP_PASS, 1, 1); }

/* ------------------------------------------------------------------ */
/* Sixteen rows per 512-bit register (AVX-512 F/BW/VL + VNNI)           */

#define AVX512_TARGET __attribute__((target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")))

/* As load8, for sixteen rows: each 128-bit lane L of R_m holds row
 * m + 4L, so the in-lane transposes leave row i in lane i. */
static AVX512_TARGET ALWAYS_INLINE void load16(const uint8_t *const *rp, size_t off,
                                               __m512i P[4], __m512 *dx)
{
    __m512i R[4];
#pragma GCC unroll 4
    for (int m = 0; m < 4; m++) {
#define LD(i) _mm_loadu_si128((const __m128i *)(rp[i] + off + 2))
        const __m256i lo = _mm256_inserti128_si256(_mm256_castsi128_si256(LD(m)), LD(m + 4), 1);
        const __m256i hi = _mm256_inserti128_si256(_mm256_castsi128_si256(LD(m + 8)), LD(m + 12), 1);
#undef LD
        R[m] = _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
    }
    const __m512i a = _mm512_unpacklo_epi32(R[0], R[1]), b = _mm512_unpackhi_epi32(R[0], R[1]);
    const __m512i c = _mm512_unpacklo_epi32(R[2], R[3]), d = _mm512_unpackhi_epi32(R[2], R[3]);
    P[0] = _mm512_unpacklo_epi64(a, c);
    P[1] = _mm512_unpackhi_epi64(a, c);
    P[2] = _mm512_unpacklo_epi64(b, d);
    P[3] = _mm512_unpackhi_epi64(b, d);
    uint16_t h[16];
#pragma GCC unroll 16
    for (int i = 0; i < 16; i++)
        h[i] = nbx_load_u16(rp[i] + off);
    *dx = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)h));
}

/* Two packed groups, rows 0-7 from the group at ga and 8-15 from gb. */
static AVX512_TARGET ALWAYS_INLINE void loadp16(const uint8_t *ga, const uint8_t *gb, int blk,
                                                __m512i P[4], __m512 *dx)
{
    const size_t off = (size_t)blk * sizeof(block_q4_0x8);
    const uint8_t *pa = ga + off, *pb = gb + off;
#pragma GCC unroll 4
    for (int k = 0; k < 4; k++)
        P[k] = _mm512_inserti64x4(
            _mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)(pa + 16 + 32 * k))),
            _mm256_loadu_si256((const __m256i *)(pb + 16 + 32 * k)), 1);
    const __m256i h = _mm256_inserti128_si256(
        _mm256_castsi128_si256(_mm_loadu_si128((const __m128i *)pa)),
        _mm_loadu_si128((const __m128i *)pb), 1);
    *dx = _mm512_cvtph_ps(h);
}

static AVX512_TARGET ALWAYS_INLINE __m512i vnni16(const __m512i W[8], const uint8_t *y,
                                                  int32_t corr)
{
    __m512i e = _mm512_set1_epi32(corr), o = _mm512_setzero_si512();
#pragma GCC unroll 4
    for (int j = 0; j < 8; j += 2) {
        e = _mm512_dpbusd_epi32(e, W[j], _mm512_set1_epi32((int)nbx_load_u32(y + 4 * j)));
        o = _mm512_dpbusd_epi32(o, W[j + 1], _mm512_set1_epi32((int)nbx_load_u32(y + 4 * j + 4)));
    }
    return _mm512_add_epi32(e, o);
}

static AVX512_TARGET ALWAYS_INLINE void group_vnni16(GROUP_ARGS, int iq4nl, int packed)
{
    const __mmask16 mask = (__mmask16)((1u << nr) - 1);
    const __m512i lo4 = _mm512_set1_epi8(0x0f);
    const __m512i tu = _mm512_broadcast_i32x4(iq4nl_table(2));
    __m512 acc[COLS];
    for (int c = 0; c < cc; c++)
        acc[c] = resume ? _mm512_maskz_loadu_ps(mask, s + (size_t)c * s_stride) : _mm512_setzero_ps();
    for (int b = 0; b < bb; b++) {
        __m512i P[4], W[8];
        __m512 dx;
        if (packed)
            loadp16(rp[0], rp[1], b0 + b, P, &dx);
        else
            load16(rp, (size_t)(b0 + b) * BLK_W, P, &dx);
#pragma GCC unroll 4
        for (int k = 0; k < 4; k++) {
            W[k] = _mm512_and_si512(P[k], lo4);
            W[k + 4] = _mm512_and_si512(_mm512_srli_epi16(P[k], 4), lo4);
        }
        if (iq4nl)
#pragma GCC unroll 8
            for (int j = 0; j < 8; j++)
                W[j] = _mm512_shuffle_epi8(tu, W[j]);
        const act *m = meta + (size_t)b * cc;
        const size_t yoff = (size_t)(b0 + b) * BLK_A + 2;
        for (int c = 0; c < cc; c++) {
            const __m512i isum = vnni16(W, col[c] + yoff, m[c].corr);
            acc[c] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum), _mm512_mul_ps(dx, _mm512_set1_ps(m[c].d)), acc[c]);
        }
    }
    for (int c = 0; c < cc; c++)
        _mm512_mask_storeu_ps(s + (size_t)c * s_stride, mask, acc[c]);
}

static AVX512_TARGET void group_q4_0_avx512(GROUP_ARGS) { group_vnni16(GROUP_PASS, 0, 0); }
static AVX512_TARGET void group_q4_0_avx512_p(GROUP_ARGS) { group_vnni16(GROUP_PASS, 0, 1); }
static AVX512_TARGET void group_iq4_nl_avx512(GROUP_ARGS) { group_vnni16(GROUP_PASS, 1, 0); }
static AVX512_TARGET void group_iq4_nl_avx512_p(GROUP_ARGS) { group_vnni16(GROUP_PASS, 1, 1); }

/* ------------------------------------------------------------------ */
/* CPU checks (GCC's include the OS's saving of the wider registers)    */

int nbi_avx2_vnni_ok(void)
{
    __builtin_cpu_init();
    return __builtin_cpu_supports("avxvnni") != 0;
}

int nbi_avx2_avx512_ok(void)
{
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
           __builtin_cpu_supports("avx512vnni");
}

/* ------------------------------------------------------------------ */
/* The tile driver, shared by all variants                              */

/* The 16-row kernels need three or more activation rows to beat the
 * 8-row ones (with one or two, decoding dominates): `small` serves chunks
 * of fewer than SMALL_COLS, `big` (G rows per group) the others. */
#define SMALL_COLS 3

static void tile(group_fn small, group_fn big, int G, int32_t offset, int packed, int n,
                 int n_rows, int n_cols, float *s, size_t s_stride, const uint8_t *w,
                 size_t w_stride, const uint8_t *a, size_t a_stride)
{
    const int nb = n / QK4_0;
    if (nb == 0) { /* no blocks: the reference's sum stays 0 */
        for (int c = 0; c < n_cols; c++)
            for (int r = 0; r < n_rows; r++)
                s[(size_t)c * s_stride + r] = 0.0f;
        return;
    }
    act meta[ACT_MAX];
    const uint8_t *col[COLS];
    for (int c0 = 0; c0 < n_cols; c0 += COLS) {
        const int cc = n_cols - c0 < COLS ? n_cols - c0 : COLS;
        const group_fn group = cc < SMALL_COLS ? small : big;
        const int g = cc < SMALL_COLS ? 8 : G;
        for (int c = 0; c < cc; c++)
            col[c] = a + (size_t)(c0 + c) * a_stride;
        const int bmax = ACT_MAX / cc;
        for (int b0 = 0; b0 < nb; b0 += bmax) {
            const int bb = nb - b0 < bmax ? nb - b0 : bmax;
            for (int b = 0; b < bb; b++)
                for (int c = 0; c < cc; c++) {
                    const uint8_t *y = col[c] + (size_t)(b0 + b) * BLK_A;
                    meta[b * cc + c].d = nbx_h2f(y);
                    meta[b * cc + c].corr = -offset * block_sum_q8(y + 2);
                }
            for (int r0 = 0; r0 < n_rows; r0 += g) {
                const int nr = n_rows - r0 < g ? n_rows - r0 : g;
                const uint8_t *rp[16];
                if (packed) { /* the groups' first rows; a lone group twice */
                    rp[0] = w + (size_t)r0 * w_stride;
                    rp[1] = nr > NBI_PACK_ROWS ? rp[0] + NBI_PACK_ROWS * w_stride : rp[0];
                } else {
                    for (int i = 0; i < g; i++)
                        rp[i] = w + (size_t)(r0 + (i < nr ? i : nr - 1)) * w_stride;
                }
                group(rp, nr, (size_t)g * w_stride, b0, bb, col, cc, meta,
                      s + (size_t)c0 * s_stride + r0, s_stride, b0 > 0);
            }
        }
    }
}

/* name over rows as stored, name_packed over packed rows. */
#define TILE(name, small, big, G, offset)                                                      \
    void name(int n, int n_rows, int n_cols, float *restrict s, size_t s_stride,                \
              const void *restrict w, size_t w_stride, const void *restrict a,                  \
              size_t a_stride)                                                                  \
    {                                                                                           \
        tile(small, big, G, offset, 0, n, n_rows, n_cols, s, s_stride, w, w_stride, a,          \
             a_stride);                                                                         \
    }                                                                                           \
    void name##_packed(int n, int n_rows, int n_cols, float *restrict s, size_t s_stride,       \
                       const void *restrict w, size_t w_stride, const void *restrict a,         \
                       size_t a_stride)                                                         \
    {                                                                                           \
        tile(small##_p, big##_p, G, offset, 1, n, n_rows, n_cols, s, s_stride, w, w_stride, a, \
             a_stride);                                                                         \
    }

TILE(nbi_avx2_q4_0_tile, group_q4_0, group_q4_0, 8, 8)
TILE(nbi_avx2_iq4_nl_tile, group_iq4_nl, group_iq4_nl, 8, 128)
TILE(nbi_avxvnni_q4_0_tile, group_q4_0_vnni, group_q4_0_vnni, 8, 8)
TILE(nbi_avxvnni_iq4_nl_tile, group_iq4_nl_vnni, group_iq4_nl_vnni, 8, 128)
/* AVX-512 for prompts, with the AVX2 or AVX-VNNI 8-row kernels for
 * generation */
TILE(nbi_avx512_q4_0_tile, group_q4_0, group_q4_0_avx512, 16, 8)
TILE(nbi_avx512_iq4_nl_tile, group_iq4_nl, group_iq4_nl_avx512, 16, 128)
TILE(nbi_avx512vnni_q4_0_tile, group_q4_0_vnni, group_q4_0_avx512, 16, 8)
TILE(nbi_avx512vnni_iq4_nl_tile, group_iq4_nl_vnni, group_iq4_nl_avx512, 16, 128)

/* ------------------------------------------------------------------ */
/* Single dot products: one row, so each block sum is reduced across the
 * register (exact) and the float chain is the reference's scalar one.  */

static inline float fma1(float a, float b, float c)
{
    return _mm_cvtss_f32(_mm_fmadd_ss(_mm_set_ss(a), _mm_set_ss(b), _mm_set_ss(c)));
}

void nbi_avx2_q4_0_vec_dot(int n, float *restrict s, const void *restrict vx,
                           const void *restrict vy)
{
    const block_q4_0 *x = vx;
    const block_q8_0 *y = vy;
    const __m256i eight = _mm256_set1_epi8(8), ones = _mm256_set1_epi16(1);
    float sum = 0.0f;
    for (int i = 0; i < n / QK4_0; i++) {
        const __m256i q = nbx_nibbles32(x[i].qs);
        const __m256i v = _mm256_loadu_si256((const __m256i *)y[i].qs);
        /* sum((q-8)*y) = sum(q*y) - sum(8*y); both int16 pair sums and
         * their difference stay within int16 */
        const __m256i p = _mm256_sub_epi16(_mm256_maddubs_epi16(q, v), _mm256_maddubs_epi16(eight, v));
        const int32_t isum = nbx_hsum_i32(_mm256_madd_epi16(p, ones));
        sum = fma1((float)isum, nbx_h2f(&x[i].d) * nbx_h2f(&y[i].d), sum);
    }
    *s = sum;
}

void nbi_avx2_iq4_nl_vec_dot(int n, float *restrict s, const void *restrict vx,
                             const void *restrict vy)
{
    const block_iq4_nl *x = vx;
    const block_q8_0 *y = vy;
    const __m256i table = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)iq4nl_levels));
    const __m256i ones = _mm256_set1_epi16(1);
    float sum = 0.0f;
    for (int i = 0; i < n / QK4_NL; i++) {
        const __m256i lv = _mm256_shuffle_epi8(table, nbx_nibbles32(x[i].qs));
        const __m256i v = _mm256_loadu_si256((const __m256i *)y[i].qs);
        /* |y| times the level with y's sign: |y| <= 128 fits a u8 and no
         * level is -128, so the sign flip cannot wrap; pairs <= 32512 */
        const __m256i p = _mm256_maddubs_epi16(_mm256_abs_epi8(v), _mm256_sign_epi8(lv, v));
        const int32_t isum = nbx_hsum_i32(_mm256_madd_epi16(p, ones));
        sum = fma1((float)isum, nbx_h2f(&x[i].d) * nbx_h2f(&y[i].d), sum);
    }
    *s = sum;
}
