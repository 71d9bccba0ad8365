/*
 * test_kquant_simd.c - the active table's K-quant dot products (Q2_K..Q6_K
 * against Q8_K) must give the reference's bits, for vec_dot and for every
 * shape of vec_dot_tile.
 *
 * The SIMD kernels decode, transpose and tile in ways the reference does
 * not, so the inputs aim at their seams: tile edges (1..17 rows and
 * columns), chunk and column-block boundaries (many super-blocks, many
 * tokens), rows and activations that are not 32-byte aligned with strides
 * that are not multiples of anything, and the extremes of every field
 * (zero, largest and subnormal fp16 scales, all-ones and all-zero code and
 * scale bytes, activations of +-127 and -128, bsums that do not match the
 * activations).  The reference is the scalar table's vec_dot on each pair.
 *
 * Skipped (with a note) when the active table is the reference itself.
 * When the table's level names optional extensions ("avx2+vnni+avx512"),
 * the program runs itself again with NIBBLE_KERNELS set to the base level
 * so that the kernels used without them are checked on this machine too.
 */
#include "testutil.h"

#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "kernels.h"

static const nbi_kernels *K; /* active */
static const nbi_kernels *R; /* reference */

static const int ktypes[] = {NB_TYPE_Q2_K, NB_TYPE_Q3_K, NB_TYPE_Q4_K, NB_TYPE_Q5_K, NB_TYPE_Q6_K};
#define N_KTYPES ((int)(sizeof ktypes / sizeof ktypes[0]))

/* ------------------------------------------------------------------ */
/* Random numbers and inputs                                           */

static uint64_t rng_state = 0x243f6a8885a308d3ull;

static uint64_t rnd(void)
{
    uint64_t z = (rng_state += 0x9e3779b97f4a7c15ull); /* splitmix64 */
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static int rnd_int(int n)
{
    return (int)(rnd() % (uint64_t)n);
}

/* A finite fp16 of either sign with exponent in [-14, 0], or an edge. */
static nb_fp16 rnd_fp16(void)
{
    static const nb_fp16 edge[] = {0x0000, 0x8000, 0x7bff, 0xfbff, 0x0001, 0x8001, 0x03ff, 0x3c00};
    if (rnd_int(8) == 0)
        return edge[rnd_int((int)(sizeof edge / sizeof edge[0]))];
    return (nb_fp16)((rnd() & 0x83ff) | (uint16_t)((1 + rnd_int(15)) << 10));
}

/* Offsets of the fp16 d and dmin (-1: none) in each weight block. */
static void fp16_fields(int type, int *d, int *dmin)
{
    switch (type) {
    case NB_TYPE_Q2_K: *d = offsetof(block_q2_K, d), *dmin = offsetof(block_q2_K, dmin); break;
    case NB_TYPE_Q3_K: *d = offsetof(block_q3_K, d), *dmin = -1; break;
    case NB_TYPE_Q4_K: *d = offsetof(block_q4_K, d), *dmin = offsetof(block_q4_K, dmin); break;
    case NB_TYPE_Q5_K: *d = offsetof(block_q5_K, d), *dmin = offsetof(block_q5_K, dmin); break;
    default: *d = offsetof(block_q6_K, d), *dmin = -1; break;
    }
}

enum { W_RANDOM, W_ALL_ONES, W_ALL_ZERO, W_ZERO_D, W_HUGE_D, W_TINY_D, W_MIXED };

/* Fill one weight block.  Codes and scales are raw bytes (every byte
 * pattern is a valid block); d and dmin follow the mode. */
static void fill_wblock(int type, uint8_t *b, int mode)
{
    const size_t size = nbi_types[type].size;
    if (mode == W_MIXED)
        mode = rnd_int(W_MIXED);
    for (size_t i = 0; i < size; i++)
        b[i] = mode == W_ALL_ONES ? 0xff : mode == W_ALL_ZERO ? 0x00 : (uint8_t)rnd();
    int od, om;
    fp16_fields(type, &od, &om);
    nb_fp16 d, dmin;
    switch (mode) {
    case W_ALL_ONES: d = 0x7bff, dmin = 0x7bff; break;  /* +65504 */
    case W_ALL_ZERO: d = 0xfbff, dmin = 0xfbff; break;  /* -65504 */
    case W_ZERO_D: d = rnd_int(2) ? 0x0000 : 0x8000, dmin = rnd_int(2) ? 0x0000 : rnd_fp16(); break;
    case W_HUGE_D: d = rnd_int(2) ? 0x7bff : 0xfbff, dmin = rnd_int(2) ? 0x7bff : 0xfbff; break;
    case W_TINY_D: d = rnd_int(2) ? 0x0001 : 0x8001, dmin = rnd_int(2) ? 0x0001 : 0x83ff; break;
    default: d = rnd_fp16(), dmin = rnd_fp16(); break;
    }
    memcpy(b + od, &d, 2);
    if (om >= 0)
        memcpy(b + om, &dmin, 2);
}

enum { A_RANDOM, A_PLUS127, A_MINUS127, A_MINUS128, A_ALTERNATE, A_WILD_BSUMS, A_MIXED };

static void fill_ablock(block_q8_K *y, int mode)
{
    if (mode == A_MIXED)
        mode = rnd_int(A_MIXED);
    for (int j = 0; j < QK_K; j++) {
        int v;
        switch (mode) {
        case A_PLUS127: v = 127; break;
        case A_MINUS127: v = -127; break;
        case A_MINUS128: v = -128; break;
        case A_ALTERNATE: v = j & 1 ? 127 : -128; break;
        default: v = rnd_int(256) - 128; break;
        }
        y->qs[j] = (int8_t)v;
    }
    for (int g = 0; g < QK_K / 16; g++) {
        int sum = 0;
        for (int l = 0; l < 16; l++)
            sum += y->qs[16 * g + l];
        /* The kernels must use bsums as given, not recompute them. */
        y->bsums[g] = (int16_t)(mode == A_WILD_BSUMS ? (int)(rnd() & 0xffff) - 32768 : sum);
    }
    const int e = rnd_int(8);
    const float mant = (float)(rnd() >> 40) / 16777216.0f + 0.5f;
    y->d = e == 0 ? 0.0f : e == 1 ? 1.0f : ldexpf(mant, -rnd_int(12));
    if (rnd_int(2))
        y->d = -y->d;
}

/* A matrix of rows (weights) or activation rows, each row_bytes long,
 * starting at an offset and separated by stride bytes.  Offsets and
 * strides keep the blocks' own alignment (2 for weights, 4 for Q8_K) so
 * that the reference's plain field reads stay defined, and nothing more. */
typedef struct {
    uint8_t *mem;
    uint8_t *base;
    size_t stride;
} matrix;

static matrix make_matrix(int rows, size_t row_bytes, size_t align, int mode, int type)
{
    matrix m;
    const size_t pad = align * (size_t)(1 + rnd_int(5)); /* not a multiple of 32 in general */
    m.stride = row_bytes + pad;
    const size_t off = align * (size_t)(1 + rnd_int(7));
    m.mem = malloc(off + (size_t)rows * m.stride + 64);
    assert_non_null(m.mem);
    memset(m.mem, 0xa5, off + (size_t)rows * m.stride + 64);
    m.base = m.mem + off;
    for (int r = 0; r < rows; r++) {
        uint8_t *row = m.base + (size_t)r * m.stride;
        if (type == NB_TYPE_Q8_K) {
            for (size_t i = 0; i < row_bytes / sizeof(block_q8_K); i++)
                fill_ablock((block_q8_K *)row + i, mode);
        } else {
            const size_t bs = nbi_types[type].size;
            for (size_t i = 0; i < row_bytes / bs; i++)
                fill_wblock(type, row + i * bs, mode);
        }
    }
    return m;
}

/* ------------------------------------------------------------------ */
/* Comparison                                                          */

static int same_bits(float a, float b)
{
    return memcmp(&a, &b, sizeof a) == 0;
}

static void report(const char *what, int type, int n, int r, int c, float got, float want)
{
    uint32_t g, w;
    memcpy(&g, &got, 4);
    memcpy(&w, &want, 4);
    fprintf(stderr, "%s %s n=%d row %d col %d: got %a (%08x), reference %a (%08x)\n", what,
            nbi_types[type].name, n, r, c, (double)got, g, (double)want, w);
}

/* Reference results of every (row, column) pair: ref[c * rows + r]. */
static float *reference(int type, int n, const matrix *w, int rows, const matrix *a, int cols)
{
    float *ref = malloc(sizeof(float) * (size_t)rows * (size_t)cols);
    assert_non_null(ref);
    for (int c = 0; c < cols; c++)
        for (int r = 0; r < rows; r++)
            R->vec_dot[type](n, &ref[(size_t)c * rows + r], w->base + (size_t)r * w->stride,
                             a->base + (size_t)c * a->stride);
    return ref;
}

/* vec_dot on every pair. */
static int check_vec_dot(int type, int n, const matrix *w, int rows, const matrix *a, int cols,
                         const float *ref)
{
    int bad = 0;
    for (int c = 0; c < cols; c++)
        for (int r = 0; r < rows; r++) {
            float got;
            K->vec_dot[type](n, &got, w->base + (size_t)r * w->stride,
                             a->base + (size_t)c * a->stride);
            const float want = ref[(size_t)c * rows + r];
            if (!same_bits(got, want) && bad++ < 5)
                report("vec_dot", type, n, r, c, got, want);
        }
    return bad;
}

/* vec_dot_tile on the top-left nr x nc corner, into an output with an odd
 * row stride and a guard band that must stay untouched. */
static int check_tile(int type, int n, const matrix *w, int rows, const matrix *a, int nr, int nc,
                      const float *ref)
{
    const size_t s_stride = (size_t)nr + 1 + (size_t)rnd_int(4);
    const size_t s_len = (size_t)nc * s_stride + 8;
    float *mem = malloc((s_len + 1) * sizeof(float));
    assert_non_null(mem);
    float *s = mem + 1; /* 4-byte aligned only */
    const float guard = -1234.5f;
    for (size_t i = 0; i < s_len; i++)
        s[i] = guard;
    K->vec_dot_tile[type](n, nr, nc, s, s_stride, w->base, w->stride, a->base, a->stride);
    int bad = 0;
    for (int c = 0; c < nc; c++)
        for (size_t i = 0; i < s_stride; i++) {
            const float got = s[(size_t)c * s_stride + i];
            if (i < (size_t)nr) {
                const float want = ref[(size_t)c * rows + i];
                if (!same_bits(got, want) && bad++ < 5) {
                    fprintf(stderr, "tile %dx%d: ", nr, nc);
                    report("tile", type, n, (int)i, c, got, want);
                }
            } else if (!same_bits(got, guard) && bad++ < 5) {
                fprintf(stderr, "tile %s %dx%d wrote outside its rows (col %d, offset %zu)\n",
                        nbi_types[type].name, nr, nc, c, i);
            }
        }
    for (size_t i = (size_t)nc * s_stride; i < s_len; i++)
        if (!same_bits(s[i], guard) && bad++ < 5)
            fprintf(stderr, "tile %s %dx%d wrote past its output\n", nbi_types[type].name, nr, nc);
    free(mem);
    return bad;
}

/* Is this type accelerated?  Prints why not, once per type. */
static int active(int type)
{
    if (K->vec_dot[type] != R->vec_dot[type] || K->vec_dot_tile[type])
        return 1;
    static int said[NB_TYPE_COUNT];
    if (!said[type]++)
        printf("    (%s: the active table uses the reference; nothing to compare)\n",
               nbi_types[type].name);
    return 0;
}

static void skip_if_reference(void)
{
    if (K == R) {
        static int said;
        if (!said++)
            printf("    skipped: the active kernel table is the reference (%s)\n",
                   getenv("NIBBLE_KERNELS") ? "NIBBLE_KERNELS is set"
                                            : "no SIMD table for this CPU");
        skip();
    }
}

/* One case: rows x cols of nb super-blocks in the given fill modes,
 * checked with vec_dot on every pair and vec_dot_tile on the listed
 * corner shapes (nr[i] x nc[i]). */
static int run_case(int type, int nb, int rows, int cols, int wmode, int amode, const int *nr,
                    const int *nc, int n_shapes)
{
    const int n = nb * QK_K;
    matrix w = make_matrix(rows, nbi_row_size(type, n), 2, wmode, type);
    matrix a = make_matrix(cols, nbi_row_size(NB_TYPE_Q8_K, n), 4, amode, NB_TYPE_Q8_K);
    float *ref = reference(type, n, &w, rows, &a, cols);
    int bad = check_vec_dot(type, n, &w, rows, &a, cols, ref);
    if (K->vec_dot_tile[type])
        for (int i = 0; i < n_shapes; i++)
            bad += check_tile(type, n, &w, rows, &a, nr[i], nc[i], ref);
    free(ref);
    free(w.mem);
    free(a.mem);
    return bad;
}

/* ------------------------------------------------------------------ */
/* Tests                                                               */

/* Every tile shape from 1x1 to 17x17 over one and two super-blocks. */
static void test_tile_shapes(void **state)
{
    (void)state;
    skip_if_reference();
    int nr[17 * 17], nc[17 * 17], k = 0;
    for (int r = 1; r <= 17; r++)
        for (int c = 1; c <= 17; c++) {
            nr[k] = r;
            nc[k] = c;
            k++;
        }
    int bad = 0;
    for (int t = 0; t < N_KTYPES; t++) {
        if (!active(ktypes[t]))
            continue;
        bad += run_case(ktypes[t], 1, 17, 17, W_MIXED, A_MIXED, nr, nc, k);
        /* Two super-blocks: every 4th shape, a different quarter per type. */
        int qr[17 * 17 / 4 + 1], qc[17 * 17 / 4 + 1], q = 0;
        for (int i = t % 4; i < k; i += 4, q++) {
            qr[q] = nr[i];
            qc[q] = nc[i];
        }
        bad += run_case(ktypes[t], 2, 17, 17, W_MIXED, A_MIXED, qr, qc, q);
    }
    assert_int_equal(bad, 0);
}

/* Each extreme fill of the weights against each extreme of the
 * activations. */
static void test_extremes(void **state)
{
    (void)state;
    skip_if_reference();
    static const int shapes_r[] = {1, 3, 8, 9}, shapes_c[] = {1, 2, 4, 5};
    int bad = 0;
    for (int t = 0; t < N_KTYPES; t++) {
        if (!active(ktypes[t]))
            continue;
        for (int wm = 0; wm < W_MIXED; wm++)
            for (int am = 0; am < A_MIXED; am++)
                bad += run_case(ktypes[t], 2, 9, 5, wm, am, shapes_r, shapes_c, 4);
    }
    assert_int_equal(bad, 0);
}

/* Long rows (chunk boundaries of the decoders and of the one-token path)
 * and batches wider than a column block. */
static void test_long_rows_wide_batches(void **state)
{
    (void)state;
    skip_if_reference();
    static const int nbs[] = {3, 5, 9, 17, 33};
    int bad = 0;
    for (int t = 0; t < N_KTYPES; t++) {
        if (!active(ktypes[t]))
            continue;
        for (size_t i = 0; i < sizeof nbs / sizeof nbs[0]; i++) {
            const int shapes_r[] = {1, 5, 9, 9}, shapes_c[] = {1, 1, 2, 3};
            bad += run_case(ktypes[t], nbs[i], 9, 3, W_RANDOM, A_RANDOM, shapes_r, shapes_c, 4);
        }
        /* 33 super-blocks take 9.6 KB per Q8_K row: a column block holds
         * about 54 of them, so 59 tokens span two blocks. */
        const int wr[] = {2}, wc[] = {59};
        bad += run_case(ktypes[t], 33, 2, 59, W_MIXED, A_RANDOM, wr, wc, 1);
        /* One super-block: column blocks of the most tokens. */
        const int xr[] = {3, 2}, xc[] = {300, 257};
        bad += run_case(ktypes[t], 1, 3, 300, W_MIXED, A_MIXED, xr, xc, 2);
    }
    assert_int_equal(bad, 0);
}

/* Many random cases of random shapes. */
static void test_random(void **state)
{
    (void)state;
    skip_if_reference();
    int bad = 0;
    for (int t = 0; t < N_KTYPES; t++) {
        if (!active(ktypes[t]))
            continue;
        for (int it = 0; it < 6; it++) {
            const int nb = 1 + rnd_int(6), rows = 1 + rnd_int(20), cols = 1 + rnd_int(12);
            const int nr[] = {rows, 1 + rnd_int(rows)}, nc[] = {cols, 1 + rnd_int(cols)};
            bad += run_case(ktypes[t], nb, rows, cols, W_MIXED, A_MIXED, nr, nc, 2);
        }
    }
    assert_int_equal(bad, 0);
}

/* The base level ("avx2" of "avx2+vnni+avx512") must pass as well: run
 * this program again restricted to it. */
static void test_base_level(void **state)
{
    (void)state;
    skip_if_reference();
    const char *plus = strchr(K->level, '+');
    if (!plus) {
        printf("    (level \"%s\" has no optional extensions)\n", K->level);
        skip();
    }
    char self[4096], level[64];
    const ssize_t len = readlink("/proc/self/exe", self, sizeof self - 1);
    assert_true(len > 0);
    self[len] = 0;
    snprintf(level, sizeof level, "%.*s", (int)(plus - K->level), K->level);
    setenv("NIBBLE_KERNELS", level, 1);
    char *argv[] = {self, "--child", NULL};
    char *out = NULL, *err = NULL;
    const int rc = nbt_run(argv, &out, &err, 120);
    unsetenv("NIBBLE_KERNELS");
    if (rc != 0)
        fprintf(stderr, "%s%s", out ? out : "", err ? err : "");
    printf("    NIBBLE_KERNELS=%s: %s\n", level, rc == 0 ? "all comparisons passed" : "FAILED");
    free(out);
    free(err);
    assert_int_equal(rc, 0);
}

int main(int argc, char **argv)
{
    K = nbi_kernels_get();
    R = nbi_kernels_ref();
    printf("    kernel table: %s\n", K->level);
    const struct CMUnitTest comparisons[] = {
        cmocka_unit_test(test_tile_shapes),
        cmocka_unit_test(test_extremes),
        cmocka_unit_test(test_long_rows_wide_batches),
        cmocka_unit_test(test_random),
    };
    const struct CMUnitTest all[] = {
        cmocka_unit_test(test_tile_shapes),
        cmocka_unit_test(test_extremes),
        cmocka_unit_test(test_long_rows_wide_batches),
        cmocka_unit_test(test_random),
        cmocka_unit_test(test_base_level),
    };
    /* The child (see test_base_level) runs the comparisons only. */
    if (argc > 1 && strcmp(argv[1], "--child") == 0)
        return cmocka_run_group_tests(comparisons, NULL, NULL);
    return cmocka_run_group_tests(all, NULL, NULL);
}
