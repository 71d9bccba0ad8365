/*
 * kernels.h - tensor block formats and the per-type kernel table.
 *
 * Block layouts are byte-compatible with GGUF files written by llama.cpp
 * (ggml), so weights are used in place from the mapped file.  Each type
 * has a readable scalar reference in <type>_ref.c; SIMD variants replace
 * entries of the active table at start-up (dispatch.c).
 *
 * Matrix products quantize the activation vector once into the weight
 * type's "vec_dot_type" (Q8_0, Q8_1, Q8_K, F16, BF16 or F32) and then run
 * integer or float dot products against every weight row, as ggml does.
 * Matching ggml's activation formats is what makes our logits agree with
 * llama.cpp's to within rounding.
 */
#ifndef NIBBLE_KERNELS_H
#define NIBBLE_KERNELS_H

#include <float.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "nibble.h"

#define QK4_0 32
#define QK4_1 32
#define QK5_0 32
#define QK5_1 32
#define QK8_0 32
#define QK8_1 32
#define QK4_NL 32
#define QK_K 256
#define K_SCALE_SIZE 12

typedef uint16_t nb_fp16; /* IEEE half, stored as bits */
typedef uint16_t nb_bf16; /* bfloat16, stored as bits */

typedef struct {
    nb_fp16 d;            /* scale */
    uint8_t qs[QK4_0 / 2]; /* nibbles: low = element j, high = element j+16 */
} block_q4_0;
_Static_assert(sizeof(block_q4_0) == 18, "block_q4_0 size");

typedef struct {
    nb_fp16 d, m;         /* scale, minimum */
    uint8_t qs[QK4_1 / 2];
} block_q4_1;
_Static_assert(sizeof(block_q4_1) == 20, "block_q4_1 size");

typedef struct {
    nb_fp16 d;
    uint8_t qh[4];        /* fifth bit of each element */
    uint8_t qs[QK5_0 / 2];
} block_q5_0;
_Static_assert(sizeof(block_q5_0) == 22, "block_q5_0 size");

typedef struct {
    nb_fp16 d, m;
    uint8_t qh[4];
    uint8_t qs[QK5_1 / 2];
} block_q5_1;
_Static_assert(sizeof(block_q5_1) == 24, "block_q5_1 size");

typedef struct {
    nb_fp16 d;
    int8_t qs[QK8_0];
} block_q8_0;
_Static_assert(sizeof(block_q8_0) == 34, "block_q8_0 size");

typedef struct {
    nb_fp16 d;            /* scale */
    nb_fp16 s;            /* d * sum(qs) */
    int8_t qs[QK8_1];
} block_q8_1;
_Static_assert(sizeof(block_q8_1) == 36, "block_q8_1 size");

typedef struct {
    nb_fp16 d;
    uint8_t qs[QK4_NL / 2]; /* indices into a fixed non-linear table */
} block_iq4_nl;
_Static_assert(sizeof(block_iq4_nl) == 18, "block_iq4_nl size");

/* Eight rows of Q4_0 or IQ4_NL packed together (pack.c): per block
 * position b, the eight rows' scales, then each row's sixteen code bytes
 * as four 32-bit words, word k of row i at qs[32k + 4i].  That is the
 * arrangement the x86 kernels otherwise build with transposes each time
 * they read a block; packed, a group of rows is one sequential stream.
 * A group takes exactly the bytes its eight rows took. */
#define NBI_PACK_ROWS 8
typedef struct {
    nb_fp16 d[NBI_PACK_ROWS];
    uint8_t qs[NBI_PACK_ROWS * 16];
} block_q4_0x8;
_Static_assert(sizeof(block_q4_0x8) == 8 * sizeof(block_q4_0), "block_q4_0x8 size");

/* K-quants: super-blocks of 256 elements. */
typedef struct {
    uint8_t scales[QK_K / 16]; /* 4-bit scale and 4-bit min per 16 */
    uint8_t qs[QK_K / 4];      /* 2-bit quants */
    nb_fp16 d, dmin;
} block_q2_K;
_Static_assert(sizeof(block_q2_K) == 84, "block_q2_K size");

typedef struct {
    uint8_t hmask[QK_K / 8];   /* high bit */
    uint8_t qs[QK_K / 4];      /* low 2 bits */
    uint8_t scales[12];        /* 16 scales of 6 bits */
    nb_fp16 d;
} block_q3_K;
_Static_assert(sizeof(block_q3_K) == 110, "block_q3_K size");

typedef struct {
    nb_fp16 d, dmin;
    uint8_t scales[K_SCALE_SIZE]; /* 8 scales and 8 mins of 6 bits */
    uint8_t qs[QK_K / 2];
} block_q4_K;
_Static_assert(sizeof(block_q4_K) == 144, "block_q4_K size");

typedef struct {
    nb_fp16 d, dmin;
    uint8_t scales[K_SCALE_SIZE];
    uint8_t qh[QK_K / 8];
    uint8_t qs[QK_K / 2];
} block_q5_K;
_Static_assert(sizeof(block_q5_K) == 176, "block_q5_K size");

typedef struct {
    uint8_t ql[QK_K / 2];      /* low 4 bits */
    uint8_t qh[QK_K / 4];      /* high 2 bits */
    int8_t scales[QK_K / 16];
    nb_fp16 d;
} block_q6_K;
_Static_assert(sizeof(block_q6_K) == 210, "block_q6_K size");

typedef struct {
    float d;
    int8_t qs[QK_K];
    int16_t bsums[QK_K / 16];  /* sum of qs in each group of 16 */
} block_q8_K;
_Static_assert(sizeof(block_q8_K) == 292, "block_q8_K size");

/* ------------------------------------------------------------------ */
/* Scalar conversions (exact, round-to-nearest-even).                  */

static inline float nbi_fp16_to_fp32(nb_fp16 h)
{
    uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    uint32_t exp = (h >> 10) & 0x1f;
    uint32_t man = h & 0x3ff;
    uint32_t bits;
    if (exp == 0) {
        if (man == 0) {
            bits = sign;
        } else { /* subnormal: normalise */
            exp = 127 - 15 + 1;
            while (!(man & 0x400)) {
                man <<= 1;
                exp--;
            }
            man &= 0x3ff;
            bits = sign | (exp << 23) | (man << 13);
        }
    } else if (exp == 31) {
        bits = sign | 0x7f800000u | (man << 13);
    } else {
        bits = sign | ((exp + 127 - 15) << 23) | (man << 13);
    }
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

static inline nb_fp16 nbi_fp32_to_fp16(float f)
{
    uint32_t x;
    memcpy(&x, &f, 4);
    uint32_t sign = (x >> 16) & 0x8000;
    uint32_t ax = x & 0x7fffffffu;
    if (ax >= 0x7f800000u) /* inf or nan */
        return (nb_fp16)(sign | 0x7c00 | (ax > 0x7f800000u ? 0x200 | ((ax >> 13) & 0x3ff) : 0));
    if (ax >= 0x477ff000u) /* rounds to >= 65520: overflow */
        return (nb_fp16)(sign | 0x7c00);
    if (ax < 0x38800000u) { /* below the smallest normal half: subnormal */
        if (ax < 0x33000000u) /* less than half the smallest subnormal */
            return (nb_fp16)sign;
        uint32_t e = ax >> 23;
        uint32_t m = (ax & 0x7fffff) | 0x800000;
        uint32_t shift = 126 - e; /* 14..24 */
        uint32_t r = m >> shift;
        uint32_t rem = m & ((1u << shift) - 1);
        uint32_t half = 1u << (shift - 1);
        if (rem > half || (rem == half && (r & 1)))
            r++;
        return (nb_fp16)(sign | r);
    }
    uint32_t r = ax + 0xfff + ((ax >> 13) & 1); /* round to nearest even */
    r -= (127u - 15u) << 23;
    return (nb_fp16)(sign | (r >> 13));
}

static inline float nbi_bf16_to_fp32(nb_bf16 h)
{
    uint32_t bits = (uint32_t)h << 16;
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

/* As ggml: nearest-even, NaN made quiet.  Subnormals are rounded like any
 * other value, not flushed: ggml stopped flushing them in llama.cpp PR 7843
 * (2024), and a BF16 GGUF may hold them. */
static inline nb_bf16 nbi_fp32_to_bf16(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u)
        return (nb_bf16)((u >> 16) | 64);
    return (nb_bf16)((u + (0x7fffu + ((u >> 16) & 1))) >> 16);
}

/* ------------------------------------------------------------------ */
/* Horizontal sums in the orders ggml's x86 kernels use.               */
/*
 * The dot products keep eight float "lanes" (one AVX register) and add
 * them up only at the end; float addition is not associative, so the
 * order of that final reduction is part of the result.  Both helpers fold
 * the upper four lanes onto the lower four first (v[i] + v[i+4]) and then
 * differ in how they pair the remaining four.
 */

/* ggml's hsum_float_8 (quants.c) and tinyBLAS's hsum:
 * ((v0+v4) + (v2+v6)) + ((v1+v5) + (v3+v7)). */
static inline float nbi_hsum8(const float v[8])
{
    const float a0 = v[0] + v[4], a1 = v[1] + v[5], a2 = v[2] + v[6], a3 = v[3] + v[7];
    return (a0 + a2) + (a1 + a3);
}

/* GGML_F32x8_REDUCE's last step (two horizontal adds, simd-mappings.h):
 * ((v0+v4) + (v1+v5)) + ((v2+v6) + (v3+v7)). */
static inline float nbi_hadd8(const float v[8])
{
    const float a0 = v[0] + v[4], a1 = v[1] + v[5], a2 = v[2] + v[6], a3 = v[3] + v[7];
    return (a0 + a1) + (a2 + a3);
}

/* ------------------------------------------------------------------ */
/* Degenerate activation blocks.                                       */
/*
 * The activation quantizers (Q8_0, Q8_1, Q8_K) scale a block by 127/amax,
 * amax its largest magnitude.  If amax is tiny that quotient overflows to
 * infinity, and if the block holds a NaN or an infinity (a corrupt model
 * can make them) the products are infinite or NaN; converting those to an
 * integer is undefined behaviour in C, and SIMD conversions give bytes
 * of their own.  So the behaviour is defined here, once: a block is
 * degenerate when it holds a NaN or an infinity, or when its amax is below
 * NBI_Q8_AMAX_MIN (zero included), and a degenerate block quantizes to
 * all-zero bytes (d = 0, quants 0, Q8_1's s = 0, Q8_K's bsums = 0), what
 * an all-zero block gives.  At or above the threshold 127/amax is at most
 * 127 * 2^100, finite, and every x * 127/amax rounds into -127..127.
 * Below it little changes: Q8_0 and Q8_1 round d = amax/127 to an fp16
 * 0 for any amax under about 2^-18 anyway (only the quants, multiplied
 * by that 0, differ), and a Q8_K block under 2^-100 (about 8e-31) is
 * noise in any model's activations.  Every kernel, reference or SIMD,
 * decides with nbi_q8_degenerate.
 */
#define NBI_Q8_AMAX_MIN 0x1p-100f

/* Whether a block is degenerate, given whether it holds a NaN and the
 * largest magnitude of its elements (infinite if one is; a NaN amax
 * counts as a NaN in the block, for SIMD maximums that propagate it). */
static inline int nbi_q8_degenerate(int has_nan, float amax)
{
    return has_nan || !(amax >= NBI_Q8_AMAX_MIN && amax <= FLT_MAX);
}

/* ------------------------------------------------------------------ */
/* Per-type facts and kernels.                                         */

typedef struct nbi_type_info {
    const char *name;  /* NULL for ids no GGUF writer uses */
    int blck;          /* elements per block (1 for float types) */
    size_t size;       /* bytes per block */
    int vec_dot_type;  /* activation format for dot products (-1: none) */
    int supported;     /* nibble loads weights of this type */
} nbi_type_info;

extern const nbi_type_info nbi_types[NB_TYPE_COUNT];

/* Dequantize n elements (a multiple of the block size). */
typedef void (*nbi_to_float_fn)(const void *restrict src, float *restrict dst, int64_t n);
/* Quantize n elements (a multiple of the block size). */
typedef void (*nbi_from_float_fn)(const float *restrict src, void *restrict dst, int64_t n);
/* *s = dot(x, y) over n elements; x is a row of the weight type and y a
 * row of that type's vec_dot_type. */
typedef void (*nbi_vec_dot_fn)(int n, float *restrict s, const void *restrict x,
                               const void *restrict y);

/* Dot products of n_rows weight rows with n_cols activation rows:
 * s[c * s_stride + r] = dot(w + r * w_stride, a + c * a_stride), each
 * bit-identical to vec_dot on the same pair.  A matrix product hands a
 * whole range of rows and all its tokens to one call, so the kernel can
 * tile: decode a few weight rows once and use them against several
 * activation rows while they are in registers or L1. */
typedef void (*nbi_vec_dot_tile_fn)(int n, int n_rows, int n_cols, float *restrict s,
                                    size_t s_stride, const void *restrict w, size_t w_stride,
                                    const void *restrict a, size_t a_stride);
/* y[i] = fp16(fma(x[i], v, y[i])) and y[i] = fp16(y[i] * v): the F16
 * accumulator of attention (ggml_vec_mad_f16 / ggml_vec_scale_f16). */
typedef void (*nbi_mad_f16_fn)(int n, nb_fp16 *restrict y, const nb_fp16 *restrict x, float v);
typedef void (*nbi_scale_f16_fn)(int n, nb_fp16 *restrict y, float v);
/* Attention of nq queries that share one key/value head over n cache rows
 * (attn.h says exactly what is computed): q16 holds the queries in F16,
 * hd apart; row j of keys and values starts at K + j * kv_stride and
 * V + j * kv_stride; out receives nq rows of hd floats, hd apart; acc is
 * scratch for nq * hd F16 values. */
typedef void (*nbi_attn_f16_fn)(int hd, int nq, int n, float scale, const nb_fp16 *q16,
                                const nb_fp16 *K, const nb_fp16 *V, size_t kv_stride,
                                float *out, nb_fp16 *acc);
/* g[i] = silu(g[i]) * u[i]: groups of 8 with the polynomial exp of
 * nbi_expf_approx, a tail with the C library's expf (ggml's AVX2 SwiGLU). */
typedef void (*nbi_swiglu_fn)(int n, float *restrict g, const float *restrict u);
/* Rotary embedding of the first n_rot dimensions of each of n_heads heads
 * of x, rotating pairs (2i, 2i+1) by the angle whose cosine and sine are
 * cs[2i], cs[2i+1]: x0' = fma(x0, c, -(x1 s)), x1' = fma(x0, s, x1 c). */
typedef void (*nbi_rope_fn)(int n_heads, int head_dim, int n_rot, float *restrict x,
                            const float *restrict cs);

typedef struct nbi_kernels {
    const char *level;                      /* "ref", "avx2", "neon" */
    nbi_to_float_fn to_float[NB_TYPE_COUNT];
    nbi_from_float_fn from_float[NB_TYPE_COUNT]; /* activation formats */
    nbi_vec_dot_fn vec_dot[NB_TYPE_COUNT];
    nbi_vec_dot_tile_fn vec_dot_tile[NB_TYPE_COUNT]; /* NULL: vec_dot per pair */
    /* The tile over packed rows (nbi_pack_rows): w is a group's first
     * row, n_rows a multiple of NBI_PACK_ROWS; NULL where the table has
     * no packed kernel, and then the loader does not pack. */
    nbi_vec_dot_tile_fn vec_dot_tile_packed[NB_TYPE_COUNT];
    nbi_mad_f16_fn mad_f16;
    nbi_scale_f16_fn scale_f16;
    nbi_attn_f16_fn attn_f16;
    nbi_swiglu_fn swiglu;
    nbi_rope_fn rope;
} nbi_kernels;

/* exp(x) by range reduction to 2^n * e^b, |b| <= ln2/2, and a degree-5
 * polynomial: accurate to ~1.5 ulp and the same operations as ggml's
 * SIMD exp, so vector and scalar code give the same bits. */
float nbi_expf_approx(float x);

/* SIMD tables, filled by the architecture files (x86: *_avx2.c, built
 * with AVX2/FMA/F16C; aarch64: *_neon.c).  Each add function replaces the
 * entries it accelerates in a copy of the reference table; every entry it
 * installs must compute the same bits as the reference. */
void nbi_avx2_add_basic(nbi_kernels *k);   /* F32 F16 BF16 Q4_0 Q4_1 Q5_0 Q5_1 Q8_0 IQ4_NL,
                                              activation quantizers, vector ops */
void nbi_avx2_add_kquants(nbi_kernels *k); /* Q2_K Q3_K Q4_K Q5_K Q6_K */
void nbi_avx2_add_ops(nbi_kernels *k);     /* RoPE */
void nbi_neon_add_all(nbi_kernels *k);

/* The scalar reference table: always complete, never modified. */
const nbi_kernels *nbi_kernels_ref(void);
/* The table in use.  Chosen once (thread-safe) from the CPU's features;
 * NIBBLE_KERNELS=ref in the environment forces the reference. */
const nbi_kernels *nbi_kernels_get(void);

/* Bytes of a row of n elements of type t; 0 when n <= 0, n is not a
 * multiple of the block size, the type is unknown or the size would not
 * fit in size_t. */
size_t nbi_row_size(int type, int64_t n);

/* Reference kernels, one set per type (the <type>_ref.c files). */
#define NBI_DECLARE_REF(t)                                                                  \
    void nbi_##t##_to_float_ref(const void *restrict src, float *restrict dst, int64_t n);  \
    void nbi_##t##_from_float_ref(const float *restrict src, void *restrict dst, int64_t n); \
    void nbi_##t##_vec_dot_ref(int n, float *restrict s, const void *restrict x,            \
                               const void *restrict y);
NBI_DECLARE_REF(f32)
NBI_DECLARE_REF(f16)
NBI_DECLARE_REF(bf16)
NBI_DECLARE_REF(q4_0)
NBI_DECLARE_REF(q4_1)
NBI_DECLARE_REF(q5_0)
NBI_DECLARE_REF(q5_1)
NBI_DECLARE_REF(q8_0)
NBI_DECLARE_REF(q8_1)
NBI_DECLARE_REF(q2_K)
NBI_DECLARE_REF(q3_K)
NBI_DECLARE_REF(q4_K)
NBI_DECLARE_REF(q5_K)
NBI_DECLARE_REF(q6_K)
NBI_DECLARE_REF(q8_K)
NBI_DECLARE_REF(iq4_nl)
#undef NBI_DECLARE_REF

/* Packed rows (pack.c).  nbi_pack_supported: whether type t has a packed
 * layout.  nbi_pack_rows rewrites n_rows rows (a multiple of
 * NBI_PACK_ROWS) of n elements from src into dst (not overlapping);
 * nbi_unpack_rows undoes it.  A packed tile's reference is the type's
 * reference dot product on the unpacked rows: every output the same bits. */
int nbi_pack_supported(int t);
void nbi_pack_rows(int t, int n, int64_t n_rows, const void *restrict src, void *restrict dst);
void nbi_unpack_rows(int t, int n, int64_t n_rows, const void *restrict src, void *restrict dst);

void nbi_swiglu_ref(int n, float *restrict g, const float *restrict u);
void nbi_mad_f16_ref(int n, nb_fp16 *restrict y, const nb_fp16 *restrict x, float v);
void nbi_scale_f16_ref(int n, nb_fp16 *restrict y, float v);
void nbi_attn_f16_ref(int hd, int nq, int n, float scale, const nb_fp16 *q16, const nb_fp16 *K,
                      const nb_fp16 *V, size_t kv_stride, float *out, nb_fp16 *acc);
void nbi_rope_ref(int n_heads, int head_dim, int n_rot, float *restrict x, const float *restrict cs);

#endif /* NIBBLE_KERNELS_H */
