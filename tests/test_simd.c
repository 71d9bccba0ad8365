/*
 * test_simd.c - the active kernel table against the scalar reference.
 *
 * Every entry of nbi_kernels_get() that differs from nbi_kernels_ref() (a
 * SIMD kernel of any architecture: AVX2, NEON, K-quants...) must compute
 * the same bits as the reference, for any data: random blocks and rows as
 * the quantizers write them, raw random codes with scales from zero and
 * fp16 subnormals to 65504, blocks of all-minimum or all-maximum codes,
 * activations of +-127, values on the quantizers' rounding ties, lengths
 * of one to many blocks (and float rows with every tail length), tiles of
 * 1..17 rows and columns (and past the kernels' internal chunk sizes)
 * with odd strides, and pointers off every vector alignment (though at
 * the alignment of the type, which the references need too).  Results
 * are compared with memcmp; a tile must also leave the output outside its
 * rows untouched.  The activation quantizers also get degenerate blocks
 * (NaN or infinity anywhere, subnormals, amax around NBI_Q8_AMAX_MIN,
 * FLT_MAX) mixed with ordinary ones, and there the reference is checked
 * against the specification too: a degenerate block is all zeros.
 *
 * Activations are generated in the range the activation quantizers
 * produce (codes -127..127); weights are arbitrary bytes.
 *
 * When the active table is the reference (NIBBLE_KERNELS=ref, or a CPU
 * without SIMD support) the comparisons have nothing to do and say so.
 * A table whose level reads "X+Y+Z" (e.g. "avx2+vnni+avx512") can be
 * restricted to "X" or "X+Y" with NIBBLE_KERNELS; the test runs itself
 * again that way so every variant is checked on a machine that has all
 * the extensions.
 */
#include "testutil.h"

#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "kernels.h"
#include "quantize.h"

#if defined(__x86_64__)
#include <immintrin.h>
#endif

static const nbi_kernels *K, *R;
static int child; /* running as a variant check for the parent: fewer shapes */

/* ------------------------------------------------------------------ */
/* Random data                                                          */

static uint64_t rng = 0x243f6a8885a308d3ull;

static uint64_t rnd(void)
{
    uint64_t z = (rng += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static int rnd_int(int n) /* 0..n-1 */
{
    return (int)(rnd() % (uint64_t)n);
}

static float rnd_float(float lo, float hi)
{
    return lo + (hi - lo) * (float)((rnd() >> 40) * (1.0 / 16777216.0));
}

static float u2f(uint32_t u)
{
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* Floats of mixed magnitudes, signs and a few exact zeros. */
static void rnd_floats(float *x, int64_t n, float scale)
{
    for (int64_t i = 0; i < n; i++) {
        const int k = rnd_int(16);
        x[i] = k == 0 ? 0.0f : rnd_float(-scale, scale) * (k == 1 ? 1e-3f : 1.0f);
    }
}

/* An fp16 scale: mostly ordinary magnitudes, sometimes an edge. */
static nb_fp16 rnd_scale(void)
{
    static const nb_fp16 edge[] = {
        0x0000, 0x8000, /* zero */
        0x7bff, 0xfbff, /* +-65504 */
        0x0001, 0x8001, /* smallest subnormal */
        0x03ff, 0x0400, /* largest subnormal, smallest normal */
        0x3c00, 0xbc00, /* +-1 */
    };
    if (rnd_int(8) == 0)
        return edge[rnd_int((int)(sizeof edge / sizeof edge[0]))];
    /* exponent 2^-14..2^1, random mantissa and sign */
    return (nb_fp16)((rnd() & 0x83ff) | (uint16_t)((1 + rnd_int(16)) << 10));
}

static void put16(void *p, nb_fp16 v)
{
    memcpy(p, &v, 2);
}

/* Offsets of the fp16 fields (scales, minimums) inside a block. */
static int fp16_fields(int type, size_t off[2])
{
    switch (type) {
    case NB_TYPE_Q4_0: off[0] = offsetof(block_q4_0, d); return 1;
    case NB_TYPE_Q4_1: off[0] = offsetof(block_q4_1, d); off[1] = offsetof(block_q4_1, m); return 2;
    case NB_TYPE_Q5_0: off[0] = offsetof(block_q5_0, d); return 1;
    case NB_TYPE_Q5_1: off[0] = offsetof(block_q5_1, d); off[1] = offsetof(block_q5_1, m); return 2;
    case NB_TYPE_Q8_0: off[0] = offsetof(block_q8_0, d); return 1;
    case NB_TYPE_Q8_1: off[0] = offsetof(block_q8_1, d); off[1] = offsetof(block_q8_1, s); return 2;
    case NB_TYPE_IQ4_NL: off[0] = offsetof(block_iq4_nl, d); return 1;
    case NB_TYPE_Q2_K: off[0] = offsetof(block_q2_K, d); off[1] = offsetof(block_q2_K, dmin); return 2;
    case NB_TYPE_Q3_K: off[0] = offsetof(block_q3_K, d); return 1;
    case NB_TYPE_Q4_K: off[0] = offsetof(block_q4_K, d); off[1] = offsetof(block_q4_K, dmin); return 2;
    case NB_TYPE_Q5_K: off[0] = offsetof(block_q5_K, d); off[1] = offsetof(block_q5_K, dmin); return 2;
    case NB_TYPE_Q6_K: off[0] = offsetof(block_q6_K, d); return 1;
    default: return 0;
    }
}

static int is_float_type(int t)
{
    return t == NB_TYPE_F32 || t == NB_TYPE_F16 || t == NB_TYPE_BF16;
}

/* Fill n elements of a float-type row: random values, with (mode 1)
 * large magnitudes, or (mode 2) exact zeros and tiny values mixed in. */
static void fill_float_row(int t, void *dst, int n, int mode)
{
    float *f = malloc((size_t)n * sizeof *f);
    assert_non_null(f);
    rnd_floats(f, n, mode == 1 ? 6e4f : 2.0f);
    if (mode == 2)
        for (int i = 0; i < n; i += 3)
            f[i] = rnd_int(2) ? 0.0f : 1e-6f * f[i];
    if (t == NB_TYPE_F32)
        memcpy(dst, f, (size_t)n * sizeof *f);
    else
        R->from_float[t](f, dst, n);
    free(f);
}

/*
 * A weight row of type t with n elements at dst.  mode 0: quantized
 * random floats (as a model file holds them); 1: random code bytes with
 * random or edge scales; 2: every block all-minimum or all-maximum codes
 * (bytes 0x00, 0xff, 0x80 or 0x7f) with large scales.
 */
static void fill_weight_row(int t, void *dst, int n, int mode)
{
    if (is_float_type(t)) {
        fill_float_row(t, dst, n, mode);
        return;
    }
    const nbi_type_info *ti = &nbi_types[t];
    const int nb = n / ti->blck;
    uint8_t *p = dst;
    if (mode == 0 && nbi_quantize_supported(t)) {
        float *f = malloc((size_t)n * sizeof *f);
        assert_non_null(f);
        rnd_floats(f, n, 1.0f);
        assert_int_equal(nbi_quantize_rows(t, f, dst, 1, n), nbi_row_size(t, n));
        free(f);
        return;
    }
    for (size_t i = 0; i < (size_t)nb * ti->size; i++)
        p[i] = (uint8_t)rnd();
    size_t off[2];
    const int nf = fp16_fields(t, off);
    for (int b = 0; b < nb; b++) {
        uint8_t *blk = p + (size_t)b * ti->size;
        if (mode == 2) {
            static const uint8_t fill[] = {0x00, 0xff, 0x80, 0x7f};
            memset(blk, fill[rnd_int(4)], ti->size);
        }
        for (int k = 0; k < nf; k++)
            put16(blk + off[k], mode == 2 ? (rnd_int(2) ? 0x7bff : 0xfbff) : rnd_scale());
    }
}

/*
 * An activation row in format t (a vec_dot_type).  Float formats: as
 * weights.  Quantized: mode 0 through the reference quantizer; 1 random
 * codes in -127..127 with random scales; 2 all codes +127 or -127.
 */
static void fill_act_row(int t, void *dst, int n, int mode)
{
    if (is_float_type(t)) {
        fill_float_row(t, dst, n, mode);
        return;
    }
    if (t == NB_TYPE_Q8_K || mode == 0) {
        float *f = malloc((size_t)n * sizeof *f);
        assert_non_null(f);
        rnd_floats(f, n, mode == 2 ? 1e4f : 3.0f);
        if (mode == 2) /* saturate: every element at +-amax */
            for (int i = 0; i < n; i++)
                f[i] = f[i] < 0 ? -1e4f : 1e4f;
        R->from_float[t](f, dst, n);
        free(f);
        return;
    }
    const nbi_type_info *ti = &nbi_types[t];
    size_t off[2];
    const int nf = fp16_fields(t, off);
    const size_t qs = t == NB_TYPE_Q8_1 ? offsetof(block_q8_1, qs) : offsetof(block_q8_0, qs);
    uint8_t *p = dst;
    for (int b = 0; b < n / ti->blck; b++) {
        uint8_t *blk = p + (size_t)b * ti->size;
        for (int k = 0; k < nf; k++)
            put16(blk + off[k], rnd_scale());
        for (int j = 0; j < 32; j++) {
            const int v = mode == 2 ? (rnd_int(2) ? 127 : -127) : rnd_int(255) - 127;
            blk[qs + j] = (uint8_t)(int8_t)v;
        }
    }
}

/* ------------------------------------------------------------------ */
/* Comparisons                                                          */

static int n_checked;

static void expect_same_floats(const float *got, const float *want, size_t n, const char *what,
                               const char *type, int len)
{
    n_checked++;
    if (memcmp(got, want, n * sizeof *got) == 0)
        return;
    for (size_t i = 0; i < n; i++)
        if (memcmp(&got[i], &want[i], sizeof *got) != 0) {
            print_error("%s %s n=%d: element %zu is %a, reference %a\n", what, type, len, i,
                        (double)got[i], (double)want[i]);
            break;
        }
    fail();
}

/* The same, except that any NaN matches any NaN: where two NaNs meet in
 * a fused multiply-add, which one x86 passes on depends on the operand
 * order the compiler encodes, so a NaN's sign and payload are not part
 * of what attention promises. */
static void expect_same_floats_or_nan(const float *got, const float *want, size_t n,
                                      const char *what, const char *type, int len)
{
    n_checked++;
    for (size_t i = 0; i < n; i++)
        if (memcmp(&got[i], &want[i], sizeof *got) != 0 && !(isnan(got[i]) && isnan(want[i]))) {
            print_error("%s %s n=%d: element %zu is %a, reference %a\n", what, type, len, i,
                        (double)got[i], (double)want[i]);
            fail();
        }
}

static void expect_same_bytes(const void *got, const void *want, size_t n, const char *what,
                              const char *type, int len)
{
    n_checked++;
    if (memcmp(got, want, n) == 0)
        return;
    const uint8_t *g = got, *w = want;
    for (size_t i = 0; i < n; i++)
        if (g[i] != w[i]) {
            print_error("%s %s n=%d: byte %zu is %02x, reference %02x\n", what, type, len, i, g[i],
                        w[i]);
            break;
        }
    fail();
}

static const char *tname(int t)
{
    return nbi_types[t].name ? nbi_types[t].name : "?";
}

/* Lengths to try for a type: 1..13 blocks and a few long rows; every
 * length up to 70 and some around multiples of 32 for float types. */
static int lengths(int t, int *out)
{
    int k = 0;
    if (is_float_type(t)) {
        for (int i = 1; i <= 70; i++)
            out[k++] = i;
        const int more[] = {95, 96, 97, 127, 128, 129, 255, 256, 1000, 4099};
        for (size_t i = 0; i < sizeof more / sizeof more[0]; i++)
            out[k++] = more[i];
        return k;
    }
    const int blck = nbi_types[t].blck;
    const int nblk[] = {1, 2, 3, 4, 5, 7, 8, 9, 13, 64, 100};
    for (size_t i = 0; i < sizeof nblk / sizeof nblk[0]; i++)
        if (blck == 32 || nblk[i] <= 13)
            out[k++] = nblk[i] * blck;
    return k;
}

/* ------------------------------------------------------------------ */
/* Child mode and the table's selection                                 */

static void print_accelerated(void)
{
    int n = 0, total = 0;
    char list[1024] = "";
    size_t used = 0;
#define ENTRY(cond, fmt, ...)                                                                  \
    do {                                                                                       \
        total++;                                                                               \
        if (cond) {                                                                            \
            n++;                                                                               \
            int w = snprintf(list + used, sizeof list - used, " " fmt, __VA_ARGS__);          \
            if (w > 0 && (size_t)w < sizeof list - used)                                       \
                used += (size_t)w;                                                             \
        }                                                                                      \
    } while (0)
    for (int t = 0; t < NB_TYPE_COUNT; t++) {
        if (R->vec_dot[t] || K->vec_dot[t])
            ENTRY(K->vec_dot[t] != R->vec_dot[t], "dot:%s", tname(t));
        if (R->vec_dot[t] || K->vec_dot_tile[t])
            ENTRY(K->vec_dot_tile[t] != R->vec_dot_tile[t], "tile:%s", tname(t));
        if (R->to_float[t] || K->to_float[t])
            ENTRY(K->to_float[t] != R->to_float[t], "to:%s", tname(t));
        if (R->from_float[t] || K->from_float[t])
            ENTRY(K->from_float[t] != R->from_float[t], "from:%s", tname(t));
    }
    ENTRY(K->mad_f16 != R->mad_f16, "%s", "mad_f16");
    ENTRY(K->scale_f16 != R->scale_f16, "%s", "scale_f16");
    ENTRY(K->attn_f16 != R->attn_f16, "%s", "attn_f16");
    ENTRY(K->swiglu != R->swiglu, "%s", "swiglu");
    ENTRY(K->rope != R->rope, "%s", "rope");
#undef ENTRY
    printf("    kernels \"%s\": %d of %d entries differ from the reference\n", K->level, n, total);
    if (n)
        printf("   %s\n", list);
    else
        printf("    (the active table is the reference: nothing to compare)\n");
}

static int group_setup(void **state)
{
    (void)state;
    K = nbi_kernels_get();
    R = nbi_kernels_ref();
    print_accelerated();
    return 0;
}

/* Run this program again with NIBBLE_KERNELS=value and the given
 * arguments; returns its exit status, output in *out. */
static int rerun(const char *value, const char *arg, char **out)
{
    char self[4096];
    const ssize_t len = readlink("/proc/self/exe", self, sizeof self - 1);
    assert_true(len > 0);
    self[len] = 0;
    const char *old = getenv("NIBBLE_KERNELS");
    char *saved = old ? strdup(old) : NULL;
    setenv("NIBBLE_KERNELS", value, 1);
    char *argv[] = {self, (char *)arg, NULL};
    char *err = NULL;
    const int rc = nbt_run(argv, out, &err, 120);
    if (saved) {
        setenv("NIBBLE_KERNELS", saved, 1);
        free(saved);
    } else {
        unsetenv("NIBBLE_KERNELS");
    }
    if (rc != 0 && err)
        fprintf(stderr, "%s", err);
    free(err);
    return rc;
}

static void test_env_forces_reference(void **state)
{
    (void)state;
    char *out = NULL;
    assert_int_equal(rerun("ref", "--print-level", &out), 0);
    assert_string_equal(out, "ref\n");
    free(out);
}

/* A table with optional extensions has a level "base+ext1+ext2..." and
 * NIBBLE_KERNELS set to a shorter prefix selects fewer of them: every
 * such variant must pass the comparisons too. */
static void test_variants(void **state)
{
    (void)state;
    const char *level = K->level;
    int ran = 0;
    for (const char *p = strchr(level, '+'); p; p = strchr(p + 1, '+')) {
        char prefix[64];
        snprintf(prefix, sizeof prefix, "%.*s", (int)(p - level), level);
        char *out = NULL;
        assert_int_equal(rerun(prefix, "--print-level", &out), 0);
        char want[80];
        snprintf(want, sizeof want, "%s\n", prefix);
        assert_string_equal(out, want);
        free(out);
        out = NULL;
        const int rc = rerun(prefix, "--child", &out);
        if (rc != 0 && out)
            fprintf(stderr, "%s", out);
        printf("    NIBBLE_KERNELS=%s: %s\n", prefix, rc == 0 ? "all comparisons passed" : "FAILED");
        free(out);
        assert_int_equal(rc, 0);
        ran++;
    }
    if (!ran) {
        printf("    (no optional extensions in \"%s\")\n", level);
        skip();
    }
}

/* ------------------------------------------------------------------ */
/* Dot products                                                         */

/* Buffers and rows are placed at offsets that break every vector
 * alignment but keep the one the type itself has (the references read
 * elements and block fields through their C types): 2 bytes for fp16
 * fields, 4 for F32 and Q8_K's float scale.  odd_offset(t, k) is an odd
 * multiple of that. */
static size_t type_align(int t)
{
    return t == NB_TYPE_F32 || t == NB_TYPE_Q8_K ? 4 : 2;
}

static size_t odd_offset(int t, int k)
{
    return type_align(t) * (size_t)(2 * k + 1);
}

static void test_vec_dot(void **state)
{
    (void)state;
    int tested = 0;
    for (int t = 0; t < NB_TYPE_COUNT; t++) {
        if (!R->vec_dot[t] || K->vec_dot[t] == R->vec_dot[t])
            continue;
        tested++;
        const int vt = nbi_types[t].vec_dot_type;
        int lens[128];
        const int nl = lengths(t, lens);
        for (int li = 0; li < nl; li++) {
            const int n = lens[li];
            const size_t xs = nbi_row_size(t, n), ys = nbi_row_size(vt, n);
            uint8_t *xb = malloc(xs + 32), *yb = malloc(ys + 32);
            assert_non_null(xb);
            assert_non_null(yb);
            for (int rep = 0; rep < 6; rep++) {
                uint8_t *x = xb + (rep == 5 ? 0 : odd_offset(t, rep % 3));
                uint8_t *y = yb + odd_offset(vt, rep % 2);
                fill_weight_row(t, x, n, rep % 3);
                fill_act_row(vt, y, n, rep < 3 ? 0 : rep - 3);
                float got, want;
                K->vec_dot[t](n, &got, x, y);
                R->vec_dot[t](n, &want, x, y);
                expect_same_floats(&got, &want, 1, "vec_dot", tname(t), n);
            }
            free(xb);
            free(yb);
        }
    }
    if (!tested)
        printf("    no accelerated vec_dot entries\n");
}

/* One tile call against per-pair reference dot products. */
/* A tile against the reference dot product of every pair.  packed: the
 * rows are packed in groups of eight (nbi_pack_rows, so w_stride is the
 * row size) and the packed tile is the one tested. */
static void check_tile_as(int t, int n, int n_rows, int n_cols, int wpad, int apad, int spad,
                          int packed)
{
    const int vt = nbi_types[t].vec_dot_type;
    const size_t xs = nbi_row_size(t, n), ys = nbi_row_size(vt, n);
    /* row strides padded by a few units of the alignment, so that rows
     * start at ever-changing offsets */
    const size_t w_stride = xs + (size_t)wpad * type_align(t);
    const size_t a_stride = ys + (size_t)apad * type_align(vt);
    const size_t s_stride = (size_t)n_rows + (size_t)spad;
    uint8_t *wb = malloc(w_stride * (size_t)n_rows + 32);
    uint8_t *ab = malloc(a_stride * (size_t)n_cols + 32);
    float *sb = malloc((s_stride * (size_t)n_cols + 2) * sizeof(float));
    float *want = malloc(s_stride * (size_t)n_cols * sizeof(float));
    assert_true(wb && ab && sb && want);
    uint8_t *w = wb + odd_offset(t, wpad & 3), *a = ab + odd_offset(vt, 1);
    float *s = sb + 1;
    for (int r = 0; r < n_rows; r++)
        /* one row as the quantizer writes it (short rows only: the
         * quantizers' searches are slow), the others raw or extreme */
        fill_weight_row(t, w + (size_t)r * w_stride, n, r == 0 && n <= 4096 ? 0 : 1 + rnd_int(2));
    for (int c = 0; c < n_cols; c++)
        fill_act_row(vt, a + (size_t)c * a_stride, n, rnd_int(5) == 0 ? 2 : rnd_int(2));
    /* a sentinel everywhere, to see what the tile writes */
    const float sentinel = u2f(0x7fc0dead);
    for (size_t i = 0; i < s_stride * (size_t)n_cols + 2; i++)
        sb[i] = sentinel;
    for (size_t i = 0; i < s_stride * (size_t)n_cols; i++)
        want[i] = sentinel;
    for (int c = 0; c < n_cols; c++)
        for (int r = 0; r < n_rows; r++)
            R->vec_dot[t](n, &want[(size_t)c * s_stride + r], w + (size_t)r * w_stride,
                          a + (size_t)c * a_stride);
    if (packed) {
        /* packing moves every byte and unpacking restores the rows */
        uint8_t *pk = malloc(w_stride * (size_t)n_rows), *back = malloc(w_stride * (size_t)n_rows);
        assert_true(pk && back);
        nbi_pack_rows(t, n, n_rows, w, pk);
        nbi_unpack_rows(t, n, n_rows, pk, back);
        expect_same_bytes(back, w, w_stride * (size_t)n_rows, "pack/unpack", tname(t), n);
        K->vec_dot_tile_packed[t](n, n_rows, n_cols, s, s_stride, pk, w_stride, a, a_stride);
        free(pk);
        free(back);
    } else {
        K->vec_dot_tile[t](n, n_rows, n_cols, s, s_stride, w, w_stride, a, a_stride);
    }
    char what[64];
    snprintf(what, sizeof what, "%s %dx%d", packed ? "packed tile" : "tile", n_rows, n_cols);
    expect_same_floats(s, want, s_stride * (size_t)n_cols, what, tname(t), n);
    expect_same_floats(sb, &sentinel, 1, "tile (before the output)", tname(t), n);
    expect_same_floats(s + s_stride * (size_t)n_cols, &sentinel, 1, "tile (after the output)",
                       tname(t), n);
    free(wb);
    free(ab);
    free(sb);
    free(want);
}

static void check_tile(int t, int n, int n_rows, int n_cols, int wpad, int apad, int spad)
{
    check_tile_as(t, n, n_rows, n_cols, wpad, apad, spad, 0);
}

/* Packed tiles: row counts in groups of eight (one and two groups, the
 * 16-row kernels' odd group), every activation count around the kernels'
 * switch from one-row to many-row code and past a pass's 32 rows, rows
 * longer than a scale table. */
static void test_vec_dot_tile_packed(void **state)
{
    (void)state;
    int tested = 0;
    for (int t = 0; t < NB_TYPE_COUNT; t++) {
        if (!K->vec_dot_tile_packed[t])
            continue;
        assert_true(nbi_pack_supported(t));
        tested++;
        static const int rows[] = {8, 16, 24, 40, 64};
        static const int cols[] = {1, 2, 3, 4, 7, 16, 33};
        for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++)
            for (size_t j = 0; j < sizeof cols / sizeof cols[0]; j++)
                check_tile_as(t, 32 * (1 + (int)(i + j) % 5), rows[i], cols[j], 0, (int)j % 3,
                              (int)i % 2, 1);
        check_tile_as(t, 32 * 4500, 8, 1, 0, 0, 0, 1);
        check_tile_as(t, 32 * 4500, 24, 3, 0, 1, 1, 1);
        check_tile_as(t, 32 * 64, 512, 1, 0, 0, 0, 1); /* past the prefetch distance */
    }
    if (!tested)
        printf("    no packed tiles in this table\n");
    else
        printf("    %d types with packed tiles\n", tested);
}

static void test_vec_dot_tile(void **state)
{
    (void)state;
    int tested = 0;
    for (int t = 0; t < NB_TYPE_COUNT; t++) {
        if (!R->vec_dot[t] || !K->vec_dot_tile[t] || K->vec_dot_tile[t] == R->vec_dot_tile[t])
            continue;
        tested++;
        const int blck = nbi_types[t].blck;
        const int unit = is_float_type(t) ? 1 : blck;
        const int k_div = blck == QK_K ? 4 : 1; /* fewer super-blocks */
        /* shapes up to 17x17 at short lengths: every count around the
         * powers of two that SIMD kernels group rows and columns by */
        static const int dims[] = {1, 2, 3, 7, 8, 9, 16, 17, 4, 5, 12, 15};
        const int nd = child ? 8 : (int)(sizeof dims / sizeof dims[0]);
        for (int i = 0; i < nd; i++)
            for (int j = 0; j < nd; j++) {
                const int nr = dims[i], nc = dims[j];
                const int n = is_float_type(t) ? 32 + (nr + nc) % 7 : unit * (1 + (nr * nc) % 3);
                check_tile(t, n, nr, nc, (nr + nc) % 5, nc % 4, nr % 3);
            }
        /* longer rows, and sizes past the kernels' chunking (activation
         * rows per pass, blocks per scale table) */
        const int big[][3] = {
            {unit * 9, 9, 5}, {unit * 64, 16, 1}, {unit * 100, 33, 3},
            {unit * 96, 5, 33}, {unit * 70, 3, 40}, {unit * 13, 64, 2},
        };
        for (size_t i = 0; i < sizeof big / sizeof big[0]; i++) {
            const int n = is_float_type(t) ? big[i][0] + 5 : unit * ((big[i][0] / unit + k_div - 1) / k_div);
            check_tile(t, n, big[i][1], big[i][2], 7, 2, 1);
        }
        if (!is_float_type(t) && blck == 32) { /* more blocks than any table holds */
            check_tile(t, 32 * 4500, 1, 1, 0, 0, 0);
            check_tile(t, 32 * 4500, 3, 2, 1, 3, 0);
            check_tile(t, 32 * 4500, 9, 1, 0, 0, 0); /* generation's full groups */
        }
    }
    if (!tested)
        printf("    no accelerated vec_dot_tile entries\n");
}

/* ------------------------------------------------------------------ */
/* Conversions and quantizers                                           */

static void test_to_float(void **state)
{
    (void)state;
    int tested = 0;
    for (int t = 0; t < NB_TYPE_COUNT; t++) {
        if (!R->to_float[t] || K->to_float[t] == R->to_float[t])
            continue;
        tested++;
        if (t == NB_TYPE_F16 || t == NB_TYPE_BF16) {
            /* every 16-bit pattern, NaNs and subnormals included */
            uint16_t *h = malloc(65536 * 2 + 8);
            float *got = malloc(65536 * sizeof(float)), *want = malloc(65536 * sizeof(float));
            assert_true(h && got && want);
            for (int i = 0; i < 65536; i++)
                h[i] = (uint16_t)i;
            K->to_float[t](h, got, 65536);
            R->to_float[t](h, want, 65536);
            expect_same_floats(got, want, 65536, "to_float", tname(t), 65536);
            /* odd lengths, a source off vector alignment */
            memmove(h + 1, h, 2 * 1000);
            for (int n = 1; n <= 40; n++) {
                K->to_float[t](h + 1, got, n);
                R->to_float[t](h + 1, want, n);
                expect_same_floats(got, want, (size_t)n, "to_float", tname(t), n);
            }
            free(h);
            free(got);
            free(want);
            continue;
        }
        const int blck = nbi_types[t].blck;
        for (int nblk = 1; nblk <= 9; nblk++) {
            const int n = nblk * blck;
            const size_t sz = nbi_row_size(t, n);
            uint8_t *xb = malloc(sz + 8);
            float *got = malloc((size_t)n * sizeof(float)), *want = malloc((size_t)n * sizeof(float));
            assert_true(xb && got && want);
            for (int mode = 0; mode < 3; mode++) {
                if (t == NB_TYPE_Q8_1 || t == NB_TYPE_Q8_K)
                    fill_act_row(t, xb + odd_offset(t, 0), n, mode);
                else
                    fill_weight_row(t, xb + odd_offset(t, 0), n, mode);
                K->to_float[t](xb + odd_offset(t, 0), got, n);
                R->to_float[t](xb + odd_offset(t, 0), want, n);
                expect_same_floats(got, want, (size_t)n, "to_float", tname(t), n);
            }
            free(xb);
            free(got);
            free(want);
        }
    }
    if (!tested)
        printf("    no accelerated to_float entries\n");
}

/* Inputs for a quantizer: block-sized patterns meant to catch differences
 * in the scale, in the rounding of ties and in sign handling. */
static void quant_input(float *x, int n, int blck, int mode)
{
    switch (mode) {
    case 0: /* random, various magnitudes per block */
        for (int b = 0; b < n / blck; b++)
            rnd_floats(x + (size_t)b * blck, blck, powf(10.0f, (float)(rnd_int(13) - 6)));
        break;
    case 1: /* ties: amax 127 makes the multiplier exactly +-1, so these
             * land exactly half-way between two codes */
        for (int i = 0; i < n; i++)
            x[i] = (float)(rnd_int(254) - 127) + 0.5f;
        for (int b = 0; b < n / blck; b++)
            x[(size_t)b * blck + (size_t)rnd_int(blck)] = rnd_int(2) ? 127.0f : -127.0f;
        break;
    case 2: /* +-amax both present (the first one sets the sign), zeros */
        for (int i = 0; i < n; i++)
            x[i] = rnd_int(3) == 0 ? 0.0f : rnd_float(-2.0f, 2.0f);
        for (int b = 0; b < n / blck && blck >= 2; b++) {
            const int i = rnd_int(blck / 2), j = blck / 2 + rnd_int(blck / 2);
            x[(size_t)b * blck + i] = rnd_int(2) ? 3.0f : -3.0f;
            x[(size_t)b * blck + j] = -x[(size_t)b * blck + i];
        }
        break;
    case 3: /* all-zero blocks, single nonzero, subnormal and huge blocks */
        for (int b = 0; b < n / blck; b++) {
            float *y = x + (size_t)b * blck;
            const int k = rnd_int(4);
            for (int i = 0; i < blck; i++)
                y[i] = 0.0f;
            if (k == 1)
                y[rnd_int(blck)] = rnd_float(-1.0f, 1.0f);
            else if (k == 2)
                for (int i = 0; i < blck; i++)
                    y[i] = u2f((uint32_t)rnd_int(0x800000) | (rnd_int(2) ? 0x80000000u : 0));
            else if (k == 3)
                for (int i = 0; i < blck; i++)
                    y[i] = rnd_float(-3e38f, 3e38f);
        }
        break;
    default: /* raw bit patterns: everything but NaN and infinity */
        for (int i = 0; i < n; i++) {
            uint32_t u = (uint32_t)rnd();
            if ((u & 0x7f800000u) == 0x7f800000u)
                u &= 0xbfffffffu;
            x[i] = u2f(u);
        }
        break;
    }
}

static void test_from_float(void **state)
{
    (void)state;
    int tested = 0;
    for (int t = 0; t < NB_TYPE_COUNT; t++) {
        if (!R->from_float[t] || K->from_float[t] == R->from_float[t])
            continue;
        tested++;
        const int blck = nbi_types[t].blck;
        const int is_float = blck == 1;
        for (int k = 1; k <= (is_float ? 70 : 9); k++) {
            const int n = is_float ? k : k * blck;
            const size_t sz = nbi_row_size(t, n);
            float *xb = malloc(((size_t)n + 1) * sizeof(float));
            const size_t go = odd_offset(t, 0);
            uint8_t *got = malloc(sz + go), *want = malloc(sz);
            assert_true(xb && got && want);
            float *x = xb + 1; /* 4-byte but not 32-byte aligned */
            for (int mode = 0; mode < 6; mode++) {
                quant_input(x, n, is_float ? n : blck, mode < 5 ? mode : 4);
                if (is_float && mode == 4) /* float formats: NaN and inf too */
                    for (int i = 0; i < n; i++)
                        x[i] = u2f((uint32_t)rnd() | (rnd_int(2) ? 0x7f800000u : 0));
                if (mode == 5) /* about half the blocks get a NaN or an infinity */
                    for (int b = 0; b < n / blck; b++)
                        if (rnd_int(2))
                            x[(size_t)b * blck + (size_t)rnd_int(blck)] =
                                u2f(0x7f800000u | (rnd_int(2) ? 0x80000000u : 0) |
                                    (rnd_int(3) ? (uint32_t)rnd_int(0x800000) : 0));
                memset(got, 0x55, sz + go);
                memset(want, 0xaa, sz);
                K->from_float[t](x, got + go, n);
                R->from_float[t](x, want, n);
                expect_same_bytes(got + go, want, sz, "from_float", tname(t), n);
            }
            free(xb);
            free(got);
            free(want);
        }
    }
    if (!tested)
        printf("    no accelerated from_float entries\n");
}

/* Degenerate activation blocks (nbi_q8_degenerate in kernels.h).  Each
 * kind fills one block; the special element (the NaN, the infinity, the
 * largest magnitude) goes to position pos.  Returns whether the block is
 * degenerate by the specification. */
enum {
    DG_NAN,       /* one NaN (quiet, negative, signalling, all-ones payload) */
    DG_PINF,      /* one +inf */
    DG_NINF,      /* one -inf */
    DG_NAN_INF,   /* a NaN and an infinity */
    DG_NAN_TINY,  /* a NaN among subnormals */
    DG_INF_HUGE,  /* an infinity among +-FLT_MAX */
    DG_SUBNORMAL, /* all subnormal, the largest one at pos */
    DG_ZERO,      /* +0 and -0 */
    DG_BELOW,     /* amax = the float just below the threshold */
    DG_AT,        /* amax = the threshold: not degenerate */
    DG_ABOVE,     /* amax = the float just above it */
    DG_FLT_MAX,   /* amax = FLT_MAX, the rest anywhere up to it */
    DG_ALL_MAX,   /* every element +-FLT_MAX */
    DG_KINDS
};

static const char *const dg_name[DG_KINDS] = {
    "NaN", "+inf", "-inf", "NaN+inf", "NaN among subnormals", "inf among FLT_MAX",
    "subnormals", "zeros", "amax below threshold", "amax at threshold",
    "amax above threshold", "amax FLT_MAX", "all +-FLT_MAX",
};

static float rnd_sign(void)
{
    return rnd_int(2) ? 1.0f : -1.0f;
}

static int dg_block(float *x, int blck, int kind, int pos)
{
    static const uint32_t nans[] = {0x7fc00000u, 0xffc00000u, 0x7f800001u, 0xffffffffu, 0x7fa5a5a5u};
    const float below = nextafterf(NBI_Q8_AMAX_MIN, 0.0f), above = nextafterf(NBI_Q8_AMAX_MIN, 1.0f);
    const float nan = u2f(nans[(pos + kind) % 5]);
    float top = 0.0f; /* the magnitude of x[pos] for the scaled kinds */
    switch (kind) {
    case DG_NAN: case DG_PINF: case DG_NINF: case DG_NAN_INF:
        rnd_floats(x, blck, powf(10.0f, (float)(rnd_int(9) - 4)));
        break;
    case DG_NAN_TINY: case DG_SUBNORMAL:
        for (int i = 0; i < blck; i++)
            x[i] = u2f((uint32_t)rnd_int(0x7fffff) | (rnd_int(2) ? 0x80000000u : 0));
        break;
    case DG_INF_HUGE: case DG_ALL_MAX:
        for (int i = 0; i < blck; i++)
            x[i] = rnd_sign() * FLT_MAX;
        break;
    case DG_ZERO:
        for (int i = 0; i < blck; i++)
            x[i] = rnd_int(2) ? 0.0f : -0.0f;
        break;
    case DG_BELOW: top = below; break;
    case DG_AT: top = NBI_Q8_AMAX_MIN; break;
    case DG_ABOVE: top = above; break;
    default: top = FLT_MAX; break; /* DG_FLT_MAX */
    }
    if (top != 0.0f) /* the rest strictly smaller in magnitude */
        for (int i = 0; i < blck; i++)
            x[i] = nextafterf(top, 0.0f) * rnd_float(-1.0f, 1.0f);
    switch (kind) {
    case DG_NAN: case DG_NAN_TINY: x[pos] = nan; break;
    case DG_PINF: x[pos] = INFINITY; break;
    case DG_NINF: x[pos] = -INFINITY; break;
    case DG_NAN_INF:
        x[pos] = nan;
        x[(pos + 1) % blck] = rnd_sign() * INFINITY;
        break;
    case DG_INF_HUGE: x[pos] = rnd_sign() * INFINITY; break;
    case DG_SUBNORMAL: x[pos] = rnd_sign() * u2f(0x007fffffu); break;
    case DG_ALL_MAX: case DG_ZERO: break;
    default: x[pos] = rnd_sign() * top; break;
    }
    return kind < DG_AT;
}

/* Offset of the quants in a block of an activation type. */
static size_t qs_offset(int t)
{
    return t == NB_TYPE_Q8_0 ? offsetof(block_q8_0, qs)
         : t == NB_TYPE_Q8_1 ? offsetof(block_q8_1, qs) : offsetof(block_q8_K, qs);
}

static void test_from_float_degenerate(void **state)
{
    (void)state;
    static const int types[] = {NB_TYPE_Q8_0, NB_TYPE_Q8_1, NB_TYPE_Q8_K};
    int compared = 0, specified = 0;
    for (size_t ti = 0; ti < sizeof types / sizeof types[0]; ti++) {
        const int t = types[ti];
        const int blck = nbi_types[t].blck;
        const size_t bs = nbi_types[t].size;
        const int simd = K->from_float[t] != R->from_float[t];
        /* a row of 2 * blck blocks: special ones (the special element at
         * every position in turn) alternating with ordinary ones */
        const int nblk = 2 * blck, n = nblk * blck;
        const size_t sz = nbi_row_size(t, n), go = odd_offset(t, 0);
        float *xb = malloc(((size_t)n + 1) * sizeof(float));
        uint8_t *got = malloc(sz + go), *want = malloc(sz), *alone = malloc(bs);
        uint8_t *zero = calloc(1, bs);
        int *degen = malloc((size_t)nblk * sizeof *degen);
        assert_true(xb && got && want && alone && zero && degen);
        float *x = xb + 1;
        for (int kind = 0; kind < DG_KINDS; kind++) {
            for (int b = 0; b < nblk; b++) {
                float *xblk = x + (size_t)b * blck;
                degen[b] = -1; /* ordinary */
                if ((b & 1) == (kind & 1))
                    degen[b] = dg_block(xblk, blck, kind, b / 2);
                else
                    rnd_floats(xblk, blck, powf(10.0f, (float)(rnd_int(9) - 4)));
            }
            memset(want, 0xaa, sz);
            R->from_float[t](x, want, n);
            /* the specification, on the reference */
            for (int b = 0; b < nblk; b++) {
                const uint8_t *blk = want + (size_t)b * bs;
                const int8_t *qs = (const int8_t *)(blk + qs_offset(t));
                const int pos = b / 2;
                specified++;
                if (degen[b] == 1) {
                    if (memcmp(blk, zero, bs) != 0) {
                        print_error("reference %s, %s at %d (block %d): not all zeros\n",
                                    tname(t), dg_name[kind], pos, b);
                        fail();
                    }
                } else if (degen[b] == 0) {
                    /* kept: the largest magnitude maps to +-127 */
                    if (abs(qs[pos]) != 127) {
                        print_error("reference %s, %s at %d (block %d): quant %d, not +-127\n",
                                    tname(t), dg_name[kind], pos, b, qs[pos]);
                        fail();
                    }
                } else {
                    /* an ordinary block as if quantized alone */
                    R->from_float[t](x + (size_t)b * blck, alone, blck);
                    assert_memory_equal(blk, alone, bs);
                }
            }
            if (!simd)
                continue;
            memset(got, 0x55, sz + go);
            K->from_float[t](x, got + go, n);
            char what[96];
            snprintf(what, sizeof what, "from_float (%s)", dg_name[kind]);
            expect_same_bytes(got + go, want, sz, what, tname(t), n);
            compared++;
            /* and one block at a time: no state carried between blocks */
            for (int b = 0; b < nblk; b += 37) {
                memset(got, 0x55, bs + go);
                K->from_float[t](x + (size_t)b * blck, got + go, blck);
                expect_same_bytes(got + go, want + (size_t)b * bs, bs, what, tname(t), blck);
            }
        }
        free(xb);
        free(got);
        free(want);
        free(alone);
        free(zero);
        free(degen);
    }
    printf("    %d reference blocks match the specification; %d rows compared with the active kernels\n",
           specified, compared);
}

/* ------------------------------------------------------------------ */
/* Vector operations                                                    */

static void test_f16_ops(void **state)
{
    (void)state;
    if (K->mad_f16 == R->mad_f16 && K->scale_f16 == R->scale_f16) {
        printf("    mad_f16 and scale_f16 are the reference's\n");
        return;
    }
    nb_fp16 x[130], y0[130], y1[130], y2[130];
    for (int n = 0; n <= 129; n++)
        for (int rep = 0; rep < 4; rep++) {
            for (int i = 0; i < n; i++) {
                /* finite halves, with overflowing products and NaN/inf
                 * now and then */
                x[i] = (nb_fp16)rnd();
                y0[i] = (nb_fp16)rnd();
                if (rep < 3) {
                    x[i] &= 0xbbff;
                    y0[i] &= 0xbbff;
                }
            }
            const float vs[] = {rnd_float(-2.0f, 2.0f), 0.0f, 65504.0f, 1e-7f};
            const float v = vs[rep];
            memcpy(y1, y0, sizeof y0);
            memcpy(y2, y0, sizeof y0);
            K->mad_f16(n, y1, x, v);
            R->mad_f16(n, y2, x, v);
            expect_same_bytes(y1, y2, sizeof y1, "mad_f16", "F16", n);
            memcpy(y1, y0, sizeof y0);
            memcpy(y2, y0, sizeof y0);
            K->scale_f16(n, y1, v);
            R->scale_f16(n, y2, v);
            expect_same_bytes(y1, y2, sizeof y1, "scale_f16", "F16", n);
        }
}

/* Attention over an F16 cache: random queries, keys and values, then
 * edge cases: scores that rise at every row (a new maximum each time, so
 * every step rescales), scores large enough to overflow the F16
 * accumulator, and NaN or infinite keys now and then.  Head dimensions
 * the x86 kernel specializes and others; groups of queries of every size
 * up to and past the register groups; blocks of rows and their tails. */
static void test_attn(void **state)
{
    (void)state;
    if (K->attn_f16 == R->attn_f16) {
        printf("    attn_f16 is the reference's\n");
        return;
    }
    enum { MAXHD = 160, MAXQ = 9, MAXN = 70, STRIDE = 2 * MAXHD + 8 };
    static nb_fp16 q16[MAXQ * MAXHD], Kc[MAXN * STRIDE], Vc[MAXN * STRIDE], acc[MAXQ * MAXHD];
    static float o1[MAXQ * MAXHD], o2[MAXQ * MAXHD];
    static const int hds[] = {8, 32, 64, 80, 96, 128, 160};
    static const int ns[] = {1, 2, 15, 16, 17, 33, 70};
    int cases = 0;
    for (size_t hi = 0; hi < sizeof hds / sizeof hds[0]; hi++)
        for (int nq = 1; nq <= MAXQ; nq++)
            for (size_t ni = 0; ni < sizeof ns / sizeof ns[0]; ni++)
                for (int rep = 0; rep < 4; rep++) {
                    const int hd = hds[hi], n = ns[ni];
                    const float range = rep == 2 ? 60.0f : 2.0f;
                    /* rows STRIDE apart, the head at an offset inside them */
                    const int off = rnd_int(STRIDE - hd + 1);
                    for (int i = 0; i < nq * hd; i++)
                        q16[i] = nbi_fp32_to_fp16(rnd_float(-range, range));
                    for (int j = 0; j < n; j++)
                        for (int i = 0; i < STRIDE; i++) {
                            float kv = rnd_float(-range, range);
                            if (rep == 1 && i >= off && i < off + hd)
                                /* the first query's scores rise: k = (j + 1) q / 20 */
                                kv = (float)(j + 1) * 0.05f * nbi_fp16_to_fp32(q16[i - off]);
                            Kc[j * STRIDE + i] = nbi_fp32_to_fp16(kv);
                            Vc[j * STRIDE + i] = nbi_fp32_to_fp16(rnd_float(-range, range));
                            if (rep == 3 && rnd_int(97) == 0)
                                Kc[j * STRIDE + i] = rnd_int(2) ? 0x7c00 : 0x7e00;
                            if (rep == 3 && rnd_int(97) == 0)
                                Vc[j * STRIDE + i] = 0x7bff; /* 65504 */
                        }
                    const float scale = 1.0f / sqrtf((float)hd);
                    memset(o1, 0, sizeof o1);
                    memset(o2, 0, sizeof o2);
                    K->attn_f16(hd, nq, n, scale, q16, Kc + off, Vc + off, STRIDE, o1, acc);
                    R->attn_f16(hd, nq, n, scale, q16, Kc + off, Vc + off, STRIDE, o2, acc);
                    expect_same_floats_or_nan(o1, o2, (size_t)(nq * hd), "attn_f16", "F16", n);
                    cases++;
                }
    printf("    attn_f16: %d cases (head sizes 8 to 160, 1 to %d queries, 1 to %d rows)\n", cases,
           MAXQ, MAXN);
}

#if defined(__x86_64__)
__m128 nbi_avx2_expf4(__m128 x);

/* The attention kernel's four-lane expf against the C library's: every
 * 61st float from -0 down to -104 (17 million arguments, the range the
 * softmax steps use), then both infinities, NaN and the range ends.
 * Bit-identical results are what the kernel's self-check at start-up
 * requires before it uses the vector exp. */
static void test_expf4(void **state)
{
    (void)state;
    if (strncmp(K->level, "avx2", 4) != 0) {
        printf("    no AVX2 kernels in use\n");
        return;
    }
    long checked = 0, differ = 0;
    for (uint32_t u = 0x80000000u; u < 0xc2d00000u; u += 61 * 4) {
        float x[4], got[4];
        for (int j = 0; j < 4; j++)
            x[j] = u2f(u + 61u * (uint32_t)j);
        _mm_storeu_ps(got, nbi_avx2_expf4(_mm_loadu_ps(x)));
        for (int j = 0; j < 4; j++) {
            const float want = expf(x[j]);
            checked++;
            if (memcmp(&got[j], &want, 4) != 0 && differ++ < 5)
                print_error("expf4(%a) = %a, expf %a\n", (double)x[j], (double)got[j], (double)want);
        }
    }
    static const float special[] = {-INFINITY, INFINITY, NAN, 88.72f, 100.0f, -88.0f, -103.97f, -103.3f, -150.0f, 0.5f};
    for (size_t i = 0; i < sizeof special / sizeof special[0]; i++) {
        const float got = _mm_cvtss_f32(nbi_avx2_expf4(_mm_set1_ps(special[i]))), want = expf(special[i]);
        checked++;
        if (memcmp(&got, &want, 4) != 0 && differ++ < 5)
            print_error("expf4(%a) = %a, expf %a\n", (double)special[i], (double)got, (double)want);
    }
    printf("    expf4: %ld arguments, %ld differ from the C library's expf\n", checked, differ);
    assert_int_equal(differ, 0);
}
#else
static void test_expf4(void **state)
{
    (void)state;
    printf("    x86-64 only\n");
}
#endif

static void test_swiglu(void **state)
{
    (void)state;
    if (K->swiglu == R->swiglu) {
        printf("    swiglu is the reference's\n");
        return;
    }
    float g0[200], u[200], g1[200], g2[200];
    for (int n = 0; n <= 200; n += (n < 40 ? 1 : 37))
        for (int rep = 0; rep < 6; rep++) {
            for (int i = 0; i < n; i++) {
                /* ordinary values, the exp's range limits (|x| near 87.3,
                 * 126*ln2, 133 = 192*ln2) and beyond */
                static const float edge[] = {87.3f, 88.7f, 87.33655f, 103.97f, 133.08f, 133.1f, 150.0f, 1e4f};
                g0[i] = rep < 3 ? rnd_float(-12.0f, 12.0f)
                                : (rnd_int(2) ? -1.0f : 1.0f) * edge[rnd_int(8)] * rnd_float(0.995f, 1.005f);
                if (rep == 5)
                    g0[i] = rnd_float(-200.0f, 200.0f);
                u[i] = rnd_float(-3.0f, 3.0f);
            }
            memcpy(g1, g0, sizeof g0);
            memcpy(g2, g0, sizeof g0);
            K->swiglu(n, g1, u);
            R->swiglu(n, g2, u);
            expect_same_floats(g1, g2, (size_t)n, "swiglu", "F32", n);
        }
}

static void test_rope(void **state)
{
    (void)state;
    if (K->rope == R->rope) {
        printf("    rope is the reference's\n");
        return;
    }
    static const int shapes[][3] = {{1, 2, 2}, {1, 8, 8},   {2, 16, 16}, {4, 64, 64},
                                    {3, 64, 32}, {2, 10, 6}, {5, 18, 18}, {1, 128, 96}};
    float x0[5 * 128], x1[5 * 128], x2[5 * 128], cs[128];
    for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++) {
        const int nh = shapes[si][0], hd = shapes[si][1], nr = shapes[si][2];
        for (int rep = 0; rep < 4; rep++) {
            for (int i = 0; i < nh * hd; i++)
                x0[i] = rnd_float(-4.0f, 4.0f);
            for (int i = 0; i < nr; i += 2) {
                const float th = rnd_float(-1000.0f, 1000.0f);
                cs[i] = cosf(th);
                cs[i + 1] = sinf(th);
            }
            memcpy(x1, x0, sizeof x0);
            memcpy(x2, x0, sizeof x0);
            K->rope(nh, hd, nr, x1, cs);
            R->rope(nh, hd, nr, x2, cs);
            expect_same_floats(x1, x2, (size_t)(nh * hd), "rope", "F32", nr);
        }
    }
}

/* ------------------------------------------------------------------ */

static void test_summary(void **state)
{
    (void)state;
    printf("    %d comparisons, all bit-identical\n", n_checked);
}

int main(int argc, char **argv)
{
    if (argc > 1 && strcmp(argv[1], "--print-level") == 0) {
        printf("%s\n", nbi_kernels_get()->level);
        return 0;
    }
    child = argc > 1 && strcmp(argv[1], "--child") == 0;
    const struct CMUnitTest compare[] = {
        cmocka_unit_test(test_vec_dot),
        cmocka_unit_test(test_vec_dot_tile),
        cmocka_unit_test(test_vec_dot_tile_packed),
        cmocka_unit_test(test_to_float),
        cmocka_unit_test(test_from_float),
        cmocka_unit_test(test_from_float_degenerate),
        cmocka_unit_test(test_f16_ops),
        cmocka_unit_test(test_attn),
        cmocka_unit_test(test_expf4),
        cmocka_unit_test(test_swiglu),
        cmocka_unit_test(test_rope),
        cmocka_unit_test(test_summary),
    };
    if (child)
        return cmocka_run_group_tests_name("simd (child)", compare, group_setup, NULL);
    const struct CMUnitTest all[] = {
        cmocka_unit_test(test_env_forces_reference),
        cmocka_unit_test(test_vec_dot),
        cmocka_unit_test(test_vec_dot_tile),
        cmocka_unit_test(test_vec_dot_tile_packed),
        cmocka_unit_test(test_to_float),
        cmocka_unit_test(test_from_float),
        cmocka_unit_test(test_from_float_degenerate),
        cmocka_unit_test(test_f16_ops),
        cmocka_unit_test(test_attn),
        cmocka_unit_test(test_expf4),
        cmocka_unit_test(test_swiglu),
        cmocka_unit_test(test_rope),
        cmocka_unit_test(test_summary),
        cmocka_unit_test(test_variants),
    };
    return cmocka_run_group_tests_name("simd", all, group_setup, NULL);
}
