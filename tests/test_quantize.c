/*
 * test_quantize.c - the weight quantizers against llama.cpp's own output.
 *
 *  - Every 2-D tensor of stories260K-wide-f32.gguf, quantized here, must
 *    be byte-identical to the same tensor of the file llama.cpp's quantizer
 *    wrote for that type (../shared/models).  For the K-quants and IQ4_NL,
 *    whose searches leave room for rounding to differ, the reconstruction
 *    error relative to llama.cpp's is printed as well, and a tensor that
 *    differs fails with that ratio in the message.
 *  - Synthetic rows that reach the corners the model does not (ties,
 *    denormals, huge values, lone outliers) must hash to the digests of
 *    ggml's reference quantizers on the same rows.
 *  - Edge cases checked directly: zeros, constants, an outlier, all
 *    negative, extreme magnitudes, bad arguments, and multi-row and
 *    multi-threaded calls against row-at-a-time ones.
 */
#include "testutil.h"

#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "kernels.h"
#include "nibble.h"
#include "quantize.h"

static const int all_types[] = {
    NB_TYPE_F32,  NB_TYPE_F16,  NB_TYPE_BF16, NB_TYPE_Q8_0, NB_TYPE_Q4_0,
    NB_TYPE_Q4_1, NB_TYPE_Q5_0, NB_TYPE_Q5_1, NB_TYPE_Q2_K, NB_TYPE_Q3_K,
    NB_TYPE_Q4_K, NB_TYPE_Q5_K, NB_TYPE_Q6_K, NB_TYPE_IQ4_NL,
};
#define N_TYPES ((int)(sizeof all_types / sizeof all_types[0]))

/*
 * Relative RMS reconstruction error a type stays within on bell-shaped
 * data, about 1.3x what it reaches (measured on 64K values: F16 0.0002,
 * BF16 0.0017, Q8_0 0.0051, Q4_0 0.082, Q4_1 0.076, Q5_0 0.040, Q5_1 0.037,
 * Q2_K 0.288, Q3_K 0.147, Q4_K 0.069, Q5_K 0.035, Q6_K 0.017, IQ4_NL 0.074).
 * A quantizer that picked wrong codes or scales would blow through these.
 */
static double typical_error(int type)
{
    switch (type) {
    case NB_TYPE_F32: return 0.0;
    case NB_TYPE_F16: return 3e-4;
    case NB_TYPE_BF16: return 2.5e-3;
    case NB_TYPE_Q8_0: return 0.007;
    case NB_TYPE_Q4_0: return 0.11;
    case NB_TYPE_Q4_1: return 0.10;
    case NB_TYPE_Q5_0: return 0.055;
    case NB_TYPE_Q5_1: return 0.05;
    case NB_TYPE_Q2_K: return 0.38;
    case NB_TYPE_Q3_K: return 0.19;
    case NB_TYPE_Q4_K: return 0.09;
    case NB_TYPE_Q5_K: return 0.045;
    case NB_TYPE_Q6_K: return 0.023;
    case NB_TYPE_IQ4_NL: return 0.10;
    default: return 0.0;
    }
}

/* ------------------------------------------------------------------ helpers */

/* Deterministic noise (xorshift); bell-shaped values from four uniforms. */
static uint64_t noise_state = 88172645463325252ull;
static float uniform(void)
{
    noise_state ^= noise_state << 13;
    noise_state ^= noise_state >> 7;
    noise_state ^= noise_state << 17;
    return (float)((noise_state >> 40) * (1.0 / 16777216.0));
}
static float bell(void)
{
    float s = uniform() - 2.0f; /* one draw per statement: see synth_row */
    s += uniform();
    s += uniform();
    s += uniform();
    return s * 1.7320508f;
}

/* Quantize a buffer, checking the byte count and that nothing past it was
 * written; returns the malloc'd bytes. */
static uint8_t *quantize(int type, const float *x, int64_t nrows, int64_t n_per_row)
{
    const size_t row = nbi_row_size(type, n_per_row);
    assert_true(row > 0);
    const size_t size = row * (size_t)nrows;
    uint8_t *q = malloc(size + 16);
    assert_non_null(q);
    memset(q, 0xa5, size + 16);
    assert_int_equal(nbi_quantize_rows(type, x, q, nrows, n_per_row), size);
    for (size_t i = size; i < size + 16; i++)
        assert_int_equal(q[i], 0xa5);
    return q;
}

static float *dequantize(int type, const void *q, int64_t n)
{
    float *y = malloc((size_t)n * sizeof *y);
    assert_non_null(y);
    nbi_kernels_ref()->to_float[type](q, y, n);
    return y;
}

static double sq_error(const float *a, const float *b, int64_t n)
{
    double e = 0;
    for (int64_t i = 0; i < n; i++) {
        const double d = (double)a[i] - (double)b[i];
        e += d * d;
    }
    return e;
}

/* Quantize and dequantize one row; the caller frees the result. */
static float *round_trip(int type, const float *x, int64_t n)
{
    uint8_t *q = quantize(type, x, 1, n);
    float *y = dequantize(type, q, n);
    free(q);
    return y;
}

static double relative_rms(const float *x, const float *y, int64_t n)
{
    double s = 0;
    for (int64_t i = 0; i < n; i++)
        s += (double)x[i] * x[i];
    return sqrt(sq_error(x, y, n) / s);
}

/* The fp16 scale fields of block b of a quantized row: d, and the
 * minimum (m or dmin) where the type has one.  Returns how many. */
static int scale_fields(int type, const uint8_t *row, int64_t b, float f[2])
{
    const uint8_t *blk = row + (size_t)b * nbi_types[type].size;
    size_t off[2];
    int n = 1;
    switch (type) {
    case NB_TYPE_Q8_0: off[0] = offsetof(block_q8_0, d); break;
    case NB_TYPE_Q4_0: off[0] = offsetof(block_q4_0, d); break;
    case NB_TYPE_Q5_0: off[0] = offsetof(block_q5_0, d); break;
    case NB_TYPE_IQ4_NL: off[0] = offsetof(block_iq4_nl, d); break;
    case NB_TYPE_Q3_K: off[0] = offsetof(block_q3_K, d); break;
    case NB_TYPE_Q6_K: off[0] = offsetof(block_q6_K, d); break;
    case NB_TYPE_Q4_1: off[0] = offsetof(block_q4_1, d), off[1] = offsetof(block_q4_1, m), n = 2; break;
    case NB_TYPE_Q5_1: off[0] = offsetof(block_q5_1, d), off[1] = offsetof(block_q5_1, m), n = 2; break;
    case NB_TYPE_Q2_K: off[0] = offsetof(block_q2_K, d), off[1] = offsetof(block_q2_K, dmin), n = 2; break;
    case NB_TYPE_Q4_K: off[0] = offsetof(block_q4_K, d), off[1] = offsetof(block_q4_K, dmin), n = 2; break;
    case NB_TYPE_Q5_K: off[0] = offsetof(block_q5_K, d), off[1] = offsetof(block_q5_K, dmin), n = 2; break;
    default: return 0;
    }
    for (int i = 0; i < n; i++) {
        nb_fp16 h;
        memcpy(&h, blk + off[i], sizeof h);
        f[i] = nbi_fp16_to_fp32(h);
    }
    return n;
}

/* ------------------------------------------------------------------ llama.cpp's files */

static nb_gguf *open_model(const char *rel)
{
    char *path = nbt_data_path(rel);
    assert_non_null(path);
    nb_gguf *g = NULL;
    char err[256];
    if (nb_gguf_open(path, &g, err, sizeof err) != NB_OK)
        fail_msg("%s: %s", path, err);
    free(path);
    return g;
}

/*
 * Quantize every 2-D tensor of the F32 model into `type` and compare with
 * llama.cpp's file for that type.  Every tensor must be byte-identical;
 * with `searched` (K-quants, IQ4_NL) the squared reconstruction error
 * against llama.cpp's is also measured and printed, and must stay within
 * 5% of it even where bytes differ, so a failure says how far off it is.
 */
static void against_llama_cpp(int type, const char *file, int searched)
{
    NBT_REQUIRE_DATA();
    nb_gguf *f32 = open_model("models/stories260K-wide-f32.gguf");
    char rel[128];
    snprintf(rel, sizeof rel, "models/%s", file);
    nb_gguf *ref = open_model(rel);

    int n_tensors = 0, n_identical = 0, n_failed = 0;
    double worst_ratio = 0;
    for (int64_t t = 0; t < nb_gguf_n_tensors(f32); t++) {
        const char *name = nb_gguf_tensor_name(f32, t);
        const nbi_tensor *src = nbi_gguf_tensor(f32, name);
        const nbi_tensor *want = nbi_gguf_tensor(ref, name);
        assert_non_null(src);
        assert_non_null(want);
        if (src->n_dims < 2)
            continue; /* norms stay F32 */
        assert_int_equal(src->type, NB_TYPE_F32);
        assert_int_equal(want->type, type);
        const int64_t n_per_row = src->ne[0];
        const int64_t nrows = src->ne[1] * src->ne[2] * src->ne[3];
        const int64_t n = n_per_row * nrows;
        const float *x = src->data;
        uint8_t *got = quantize(type, x, nrows, n_per_row);
        assert_int_equal(nbi_row_size(type, n_per_row) * (size_t)nrows, want->nbytes);
        n_tensors++;
        const int same = memcmp(got, want->data, want->nbytes) == 0;
        n_identical += same;
        double ratio = 1.0;
        if (searched) {
            float *y_got = dequantize(type, got, n);
            float *y_want = dequantize(type, want->data, n);
            const double e_got = sq_error(y_got, x, n), e_want = sq_error(y_want, x, n);
            ratio = e_want > 0 ? e_got / e_want : (e_got > 0 ? INFINITY : 1.0);
            if (ratio > worst_ratio)
                worst_ratio = ratio;
            free(y_got);
            free(y_want);
        }
        if (!same || !(ratio <= 1.05)) {
            size_t at = 0;
            while (at < want->nbytes && got[at] == ((const uint8_t *)want->data)[at])
                at++;
            print_error("%s: %s differs from llama.cpp's from byte %zu; error ratio %.4f\n",
                        nb_type_name(type), name, at, ratio);
            n_failed++;
        }
        free(got);
    }
    if (searched)
        print_message("%-6s %d/%d tensors byte-identical to llama.cpp, worst error ratio %.4f\n",
                      nb_type_name(type), n_identical, n_tensors, worst_ratio);
    else
        print_message("%-6s %d/%d tensors byte-identical to llama.cpp\n", nb_type_name(type),
                      n_identical, n_tensors);
    nb_gguf_close(ref);
    nb_gguf_close(f32);
    assert_true(n_tensors > 0);
    if (n_failed)
        fail_msg("%d of %d tensors differ", n_failed, n_tensors);
}

#define FILE_TEST(fn, type, file, searched) \
    static void fn(void **state)            \
    {                                       \
        (void)state;                        \
        against_llama_cpp(type, file, searched); \
    }
FILE_TEST(test_f16_file, NB_TYPE_F16, "stories260K-wide-f16.gguf", 0)
FILE_TEST(test_bf16_file, NB_TYPE_BF16, "stories260K-wide-bf16.gguf", 0)
FILE_TEST(test_q8_0_file, NB_TYPE_Q8_0, "stories260K-wide-q8_0.gguf", 0)
FILE_TEST(test_q4_0_file, NB_TYPE_Q4_0, "stories260K-wide-q4_0.gguf", 0)
FILE_TEST(test_q4_1_file, NB_TYPE_Q4_1, "stories260K-wide-q4_1.gguf", 0)
FILE_TEST(test_q5_0_file, NB_TYPE_Q5_0, "stories260K-wide-q5_0.gguf", 0)
FILE_TEST(test_q5_1_file, NB_TYPE_Q5_1, "stories260K-wide-q5_1.gguf", 0)
FILE_TEST(test_q2_K_file, NB_TYPE_Q2_K, "stories260K-wide-q2_k.gguf", 1)
FILE_TEST(test_q3_K_file, NB_TYPE_Q3_K, "stories260K-wide-q3_k.gguf", 1)
FILE_TEST(test_q4_K_file, NB_TYPE_Q4_K, "stories260K-wide-q4_k.gguf", 1)
FILE_TEST(test_q5_K_file, NB_TYPE_Q5_K, "stories260K-wide-q5_k.gguf", 1)
FILE_TEST(test_q6_K_file, NB_TYPE_Q6_K, "stories260K-wide-q6_k.gguf", 1)
FILE_TEST(test_iq4_nl_file, NB_TYPE_IQ4_NL, "stories260K-wide-iq4_nl.gguf", 1)

/* ------------------------------------------------------------------ synthetic rows */

/* Rows that probe the corners of the searches: every sign pattern, exact
 * ties for the rounding steps (integer and half-integer lattices), zeros,
 * constants, lone outliers, and magnitudes from denormal to near FLT_MAX.
 * Built from integers and powers of two only, so every platform makes the
 * same floats. */
static uint64_t synth_state;
static uint32_t synth_u32(void)
{
    synth_state ^= synth_state >> 12;
    synth_state ^= synth_state << 25;
    synth_state ^= synth_state >> 27;
    return (uint32_t)((synth_state * 2685821657736338717ull) >> 32);
}
static double synth_unit(void) /* [0, 1) in steps of 2^-24 */
{
    return (synth_u32() >> 8) * (1.0 / 16777216.0);
}
static void synth_row(float *x, int n, int r)
{
    /* One random draw per statement: the order in which the operands of
     * + or of a call are evaluated is unspecified, and compilers differ. */
    const int mode = r % 12;
    const int e = mode == 11 ? (int)(synth_u32() % 41) - 20 : (int)(synth_u32() % 252) - 130;
    const double scale = ldexp(1.0, e);
    for (int i = 0; i < n; i++) {
        double v = synth_unit() - 0.5;
        switch (mode) {
        case 0: v *= scale; break;
        case 1: v = -(v + 0.5) * scale; break;
        case 2: v = (v + 0.5) * scale; break;
        case 3:
            v /= 128;
            if (synth_u32() % 64 == 0)
                v = (synth_unit() - 0.5) * scale;
            break;
        case 4: v = i % 7 == 0 ? 0 : v * scale; break;
        case 5: v = scale * 0.7; break;
        case 6: v = synth_u32() % 2 ? scale : -scale; break;
        case 7: {
            const int m = (int)(synth_u32() % 33) - 16;
            v = ldexp(m, -(int)(synth_u32() % 24));
            break;
        }
        case 8: v = ((int)(synth_u32() % 64) - 32 + 0.5) * scale / 64; break;
        case 9: v = synth_u32() % 3 == 0 ? 0 : v / 1024; break;
        case 10:
            v += synth_unit();
            v += synth_unit();
            v += synth_unit();
            v = (v - 1.5) * scale;
            break;
        default: v = i == r % n ? 0 : v * scale; break;
        }
        if (v > 3.0e38)
            v = 3.0e38;
        if (v < -3.0e38)
            v = -3.0e38;
        x[i] = (float)v;
    }
}

static uint64_t fnv1a(const uint8_t *p, size_t n)
{
    uint64_t h = 14695981039346656037ull;
    for (size_t i = 0; i < n; i++) {
        h ^= p[i];
        h *= 1099511628211ull;
    }
    return h;
}

/*
 * Digests of the bytes ggml's reference quantizers (ggml-quants.c, built
 * with GCC on x86-64 as llama.cpp's release builds are) write for the 240
 * synthetic rows of 256.  About a third of the rows have values so large
 * or so small that ggml's scales overflow or flush to zero; the bytes must
 * still match, garbage included.
 */
static void test_synthetic_digests(void **state)
{
    (void)state;
    static const struct {
        int type;
        uint64_t digest;
    } want[] = {
        {NB_TYPE_Q8_0, 0x5b875d0563804328ull},  {NB_TYPE_Q4_0, 0x65cbfeaa1bc17ef7ull},
        {NB_TYPE_Q4_1, 0x796a9298d58aed71ull},  {NB_TYPE_Q5_0, 0x218926f8b1f55a2aull},
        {NB_TYPE_Q5_1, 0x4daf239e51db578cull},  {NB_TYPE_Q2_K, 0x67ef19af620a9404ull},
        {NB_TYPE_Q3_K, 0x98b71ebd3ac6d74dull},  {NB_TYPE_Q4_K, 0x8dc3f96acb3f9ecaull},
        {NB_TYPE_Q5_K, 0xa479e9dd4ac38389ull},  {NB_TYPE_Q6_K, 0xde177136e5f731deull},
        {NB_TYPE_IQ4_NL, 0x78b6c80a2a049816ull},
    };
    enum { ROWS = 240, N = 256 };
    float *x = malloc(sizeof(float) * ROWS * N);
    assert_non_null(x);
    synth_state = 0x9e3779b97f4a7c15ull;
    for (int r = 0; r < ROWS; r++)
        synth_row(x + (size_t)r * N, N, r);
    int n_failed = 0;
    for (size_t k = 0; k < sizeof want / sizeof want[0]; k++) {
        uint8_t *q = quantize(want[k].type, x, ROWS, N);
        const uint64_t got = fnv1a(q, nbi_row_size(want[k].type, N) * ROWS);
        if (got != want[k].digest) {
            print_error("%s: digest %016llx, ggml's %016llx\n", nb_type_name(want[k].type),
                        (unsigned long long)got, (unsigned long long)want[k].digest);
            n_failed++;
        }
        free(q);
    }
    free(x);
    if (n_failed)
        fail_msg("%d type(s) differ from ggml on synthetic rows", n_failed);
}

/* ------------------------------------------------------------------ edge cases */

static void test_zero_rows(void **state)
{
    (void)state;
    enum { N = 512 };
    float x[2 * N] = {0};
    for (int k = 0; k < N_TYPES; k++) {
        const int type = all_types[k];
        uint8_t *q = quantize(type, x, 2, N);
        float *y = dequantize(type, q, 2 * N);
        for (int i = 0; i < 2 * N; i++)
            assert_true(y[i] == 0.0f);
        /* ggml writes a few telltale non-zero bytes for a zero block: Q4_0
         * and Q5_0 compute d = 0 / -8 = -0 and code every element as the
         * middle of the range; IQ4_NL picks index 8 (level +1) for 0. */
        const size_t size = nbi_row_size(type, N) * 2;
        for (size_t b = 0; b < size / nbi_types[type].size; b++) {
            const uint8_t *blk = q + b * nbi_types[type].size;
            if (type == NB_TYPE_Q4_0) {
                const block_q4_0 *p = (const block_q4_0 *)blk;
                assert_int_equal(p->d, 0x8000);
                for (int j = 0; j < QK4_0 / 2; j++)
                    assert_int_equal(p->qs[j], 0x88);
            } else if (type == NB_TYPE_Q5_0) {
                const block_q5_0 *p = (const block_q5_0 *)blk;
                assert_int_equal(p->d, 0x8000);
                for (int j = 0; j < 4; j++)
                    assert_int_equal(p->qh[j], 0xff);
                for (int j = 0; j < QK5_0 / 2; j++)
                    assert_int_equal(p->qs[j], 0x00);
            } else if (type == NB_TYPE_IQ4_NL) {
                const block_iq4_nl *p = (const block_iq4_nl *)blk;
                assert_int_equal(p->d, 0);
                for (int j = 0; j < QK4_NL / 2; j++)
                    assert_int_equal(p->qs[j], 0x88);
            } else {
                for (size_t j = 0; j < nbi_types[type].size; j++)
                    assert_int_equal(blk[j], 0);
            }
        }
        free(y);
        free(q);
    }
}

/* A constant row is reproduced (to the precision of the fp16 scale) and
 * every element comes back the same. */
static void test_constant_rows(void **state)
{
    (void)state;
    enum { N = 512 };
    static const float values[] = {0.37f, -2.5f, 1000.0f, -20.0f, 1.0f};
    float x[N];
    for (size_t v = 0; v < sizeof values / sizeof values[0]; v++) {
        for (int i = 0; i < N; i++)
            x[i] = values[v];
        for (int k = 0; k < N_TYPES; k++) {
            const int type = all_types[k];
            float *y = round_trip(type, x, N);
            const double tol = type == NB_TYPE_BF16 ? 4e-3 : 1e-3;
            for (int i = 0; i < N; i++) {
                if (y[i] != y[0] || !(fabs(y[i] - x[i]) <= tol * fabs(x[i])))
                    fail_msg("%s: constant %g came back as %g at %d", nb_type_name(type),
                             (double)x[i], (double)y[i], i);
            }
            free(y);
        }
    }
}

/*
 * One huge element among small ones: the scale follows the extreme, so
 * the outlier itself comes back almost exactly, and blocks that do not
 * hold it are quantized exactly as they would be without it.
 */
static void test_outlier(void **state)
{
    (void)state;
    enum { N = 512 };
    static const int positions[] = {0, 77, 255};
    float x[N], clean[N];
    for (size_t p = 0; p < sizeof positions / sizeof positions[0]; p++) {
        const int at = positions[p];
        for (int i = 0; i < N; i++)
            clean[i] = x[i] = 0.01f * bell();
        x[at] = p % 2 ? -50.0f : 50.0f;
        for (int k = 0; k < N_TYPES; k++) {
            const int type = all_types[k];
            uint8_t *q = quantize(type, x, 1, N);
            uint8_t *qc = quantize(type, clean, 1, N);
            float *y = dequantize(type, q, N);
            if (!(fabsf(y[at] - x[at]) <= 5e-4f * fabsf(x[at])))
                fail_msg("%s: outlier %g came back as %g", nb_type_name(type), (double)x[at],
                         (double)y[at]);
            const int blck = nbi_types[type].blck;
            const size_t bsize = nbi_types[type].size;
            for (int b = 0; b < N / blck; b++) {
                if (at / blck == b)
                    continue;
                if (memcmp(q + b * bsize, qc + b * bsize, bsize) != 0)
                    fail_msg("%s: block %d changed by an outlier in block %d", nb_type_name(type),
                             b, at / blck);
            }
            for (int i = 0; i < N; i++)
                assert_true(isfinite(y[i]));
            free(y);
            free(q);
            free(qc);
        }
    }
}

/* All-negative rows: the minimum-based types must carry a negative
 * minimum and the others a scale signed to fit the negative extreme; all
 * must reach their usual accuracy.  The mirror image is checked too. */
static void test_negative_rows(void **state)
{
    (void)state;
    enum { N = 1024 };
    float x[N];
    for (int sign = -1; sign <= 1; sign += 2) {
        for (int i = 0; i < N; i++)
            x[i] = (float)sign * (0.01f + 3.0f * uniform());
        for (int k = 0; k < N_TYPES; k++) {
            const int type = all_types[k];
            float *y = round_trip(type, x, N);
            const double err = relative_rms(x, y, N);
            if (!(err <= typical_error(type)))
                fail_msg("%s: relative error %.4g on %s rows (at most %.4g)", nb_type_name(type),
                         err, sign < 0 ? "negative" : "positive", typical_error(type));
            if (type != NB_TYPE_F32 && type != NB_TYPE_F16 && type != NB_TYPE_BF16) {
                uint8_t *q = quantize(type, x, 1, N);
                float f[2];
                if (scale_fields(type, q, 0, f) == 2 && (type == NB_TYPE_Q4_1 || type == NB_TYPE_Q5_1))
                    assert_true(sign < 0 ? f[1] < 0 : f[1] > 0); /* m is the block minimum */
                free(q);
            }
            free(y);
        }
    }
}

/* Bell-shaped rows as weights are: every type within its usual error. */
static void test_typical_accuracy(void **state)
{
    (void)state;
    enum { N = 4096 };
    float *x = malloc(N * sizeof *x);
    assert_non_null(x);
    for (int i = 0; i < N; i++)
        x[i] = 0.02f * bell();
    for (int k = 0; k < N_TYPES; k++) {
        const int type = all_types[k];
        float *y = round_trip(type, x, N);
        const double err = relative_rms(x, y, N);
        if (!(err <= typical_error(type)))
            fail_msg("%s: relative error %.4g (at most %.4g)", nb_type_name(type), err,
                     typical_error(type));
        free(y);
    }
    free(x);
}

/*
 * Extreme finite inputs.  As large as an fp16 scale can represent, every
 * field stays finite and the usual accuracy holds; as small as denormals,
 * everything flushes to finite zeros.  At +-1e30 no fp16 scale can hold the
 * value; what then lands in the fields is ggml's arithmetic, which we
 * reproduce rather than improve:
 *  - Q8_0, Q4_0, Q5_0: d = +-inf (the extreme / 127, 8 or 16);
 *  - Q4_1, Q5_1: d = +inf, m = -inf;
 *  - Q2_K, Q4_K, Q5_K: d = dmin = +inf (the trial fits turn NaN and are
 *    all rejected, leaving the finite first guess, too big for fp16);
 *  - Q3_K, Q6_K: x^2 weights overflow, every sub-block fit is NaN and is
 *    dropped, so the super-block is stored as zero: d = 0;
 *  - IQ4_NL: its least-squares scale is inf/inf, so d is NaN.
 * No other field may be NaN.
 */
static void test_extreme_inputs(void **state)
{
    (void)state;
    enum { N = 512 };
    float x[N];

    for (int i = 0; i < N; i++) /* bell() stays within +-3.47 */
        x[i] = 1.8e4f * bell();
    for (int k = 0; k < N_TYPES; k++) {
        const int type = all_types[k];
        uint8_t *q = quantize(type, x, 1, N);
        float *y = dequantize(type, q, N);
        for (int i = 0; i < N; i++)
            assert_true(isfinite(y[i]));
        for (int64_t b = 0; b < N / nbi_types[type].blck; b++) {
            float f[2];
            const int nf = scale_fields(type, q, b, f);
            for (int j = 0; j < nf; j++)
                assert_true(isfinite(f[j]));
        }
        const double err = relative_rms(x, y, N);
        if (!(err <= typical_error(type)))
            fail_msg("%s: relative error %.4g at |x| up to 6e4", nb_type_name(type), err);
        free(y);
        free(q);
    }

    static const float tiny[] = {1e-30f, 1e-38f, 1e-42f};
    for (size_t t = 0; t < sizeof tiny / sizeof tiny[0]; t++) {
        for (int i = 0; i < N; i++)
            x[i] = tiny[t] * bell();
        for (int k = 0; k < N_TYPES; k++) {
            const int type = all_types[k];
            uint8_t *q = quantize(type, x, 1, N);
            float *y = dequantize(type, q, N);
            for (int i = 0; i < N; i++)
                assert_true(isfinite(y[i]));
            for (int64_t b = 0; b < N / nbi_types[type].blck; b++) {
                float f[2];
                const int nf = scale_fields(type, q, b, f);
                for (int j = 0; j < nf; j++)
                    assert_true(f[j] == 0.0f);
            }
            free(y);
            free(q);
        }
    }

    for (int i = 0; i < N; i++)
        x[i] = (i % 2 ? 1e30f : -1e30f) * (1.0f + (float)(i % 256) / 256.0f);
    for (int k = 0; k < N_TYPES; k++) {
        const int type = all_types[k];
        uint8_t *q = quantize(type, x, 1, N);
        if (type == NB_TYPE_F16 || type == NB_TYPE_BF16 || type == NB_TYPE_F32) {
            float *y = dequantize(type, q, N);
            for (int i = 0; i < N; i++)
                assert_true(type == NB_TYPE_F16 ? isinf(y[i]) && (y[i] > 0) == (x[i] > 0)
                                                : isfinite(y[i]));
            free(y);
        }
        for (int64_t b = 0; b < N / nbi_types[type].blck; b++) {
            float f[2];
            const int nf = scale_fields(type, q, b, f);
            for (int j = 0; j < nf; j++) {
                const char *what = nb_type_name(type);
                switch (type) {
                case NB_TYPE_Q3_K:
                case NB_TYPE_Q6_K:
                    if (f[j] != 0.0f)
                        fail_msg("%s: d = %g for +-1e30, ggml stores 0", what, (double)f[j]);
                    break;
                case NB_TYPE_IQ4_NL:
                    if (!isnan(f[j]))
                        fail_msg("%s: d = %g for +-1e30, ggml stores NaN", what, (double)f[j]);
                    break;
                default:
                    if (!isinf(f[j]))
                        fail_msg("%s: field %d = %g for +-1e30, ggml stores inf", what, j,
                                 (double)f[j]);
                    if ((type == NB_TYPE_Q4_1 || type == NB_TYPE_Q5_1) && j == 1 && f[j] > 0)
                        fail_msg("%s: m = %g for +-1e30, ggml stores -inf", what, (double)f[j]);
                    break;
                }
            }
        }
        free(q);
    }
}

static void test_bad_arguments(void **state)
{
    (void)state;
    float x[512] = {0};
    uint8_t dst[4096], ok[64];
    memset(dst, 0x5a, sizeof dst);

    int n_supported = 0;
    for (int type = -2; type < NB_TYPE_COUNT + 3; type++) {
        int listed = 0;
        for (int k = 0; k < N_TYPES; k++)
            listed |= all_types[k] == type;
        assert_int_equal(nbi_quantize_supported(type), listed);
        n_supported += listed;
        if (!listed)
            assert_int_equal(nbi_quantize_rows(type, x, dst, 1, 256), 0);
    }
    assert_int_equal(n_supported, N_TYPES);
    assert_int_equal(nbi_quantize_supported(INT_MAX), 0);
    assert_int_equal(nbi_quantize_rows(INT_MIN, x, dst, 1, 256), 0);

    static const int64_t bad_32[] = {0, -32, 16, 31, 33, 100};
    static const int64_t bad_256[] = {0, -256, 32, 128, 255, 257, 384};
    for (int k = 0; k < N_TYPES; k++) {
        const int type = all_types[k];
        const int blck = nbi_types[type].blck;
        if (blck == 1) {
            assert_int_equal(nbi_quantize_rows(type, x, dst, 1, 0), 0);
            assert_int_equal(nbi_quantize_rows(type, x, dst, 1, -1), 0);
            assert_int_equal(nbi_quantize_rows(type, x, ok, 1, 3), 3 * nbi_types[type].size);
            continue;
        }
        const int64_t *bad = blck == 32 ? bad_32 : bad_256;
        const size_t nbad = blck == 32 ? sizeof bad_32 / sizeof *bad_32 : sizeof bad_256 / sizeof *bad_256;
        for (size_t i = 0; i < nbad; i++)
            assert_int_equal(nbi_quantize_rows(type, x, dst, 1, bad[i]), 0);
        assert_int_equal(nbi_quantize_rows(type, x, dst, -1, blck), 0);
        assert_int_equal(nbi_quantize_rows(type, x, dst, 0, blck), 0);
        assert_int_equal(nbi_quantize_rows(type, x, dst, INT64_MAX, blck), 0);
    }
    for (size_t i = 0; i < sizeof dst; i++) /* refused calls wrote nothing */
        assert_int_equal(dst[i], 0x5a);
}

/* Rows are independent: one call for many rows equals one call per row. */
static void test_multi_row(void **state)
{
    (void)state;
    enum { ROWS = 7, N = 768 };
    float *x = malloc(sizeof(float) * ROWS * N);
    assert_non_null(x);
    synth_state = 42;
    for (int r = 0; r < ROWS; r++)
        for (int i = 0; i < N; i++)
            x[r * N + i] = r % 3 == 0 ? 0.05f * bell() : 0.0f;
    for (int r = 1; r < ROWS; r += 3)
        synth_row(x + r * N, N, r);
    for (int r = 2; r < ROWS; r += 3)
        synth_row(x + r * N, N, 10);
    for (int k = 0; k < N_TYPES; k++) {
        const int type = all_types[k];
        const size_t row = nbi_row_size(type, N);
        uint8_t *all = quantize(type, x, ROWS, N);
        for (int r = 0; r < ROWS; r++) {
            uint8_t *one = quantize(type, x + r * N, 1, N);
            if (memcmp(all + r * row, one, row) != 0)
                fail_msg("%s: row %d differs between a %d-row call and its own call",
                         nb_type_name(type), r, ROWS);
            free(one);
        }
        free(all);
    }
    free(x);
}

/* Several threads quantizing disjoint rows into one buffer get the same
 * bytes as one thread doing all of them. */
typedef struct {
    int type, first, step, rows, n;
    const float *x;
    uint8_t *dst;
} slice;

static void *quantize_slice(void *arg)
{
    const slice *s = arg;
    const size_t row = nbi_row_size(s->type, s->n);
    for (int r = s->first; r < s->rows; r += s->step)
        if (nbi_quantize_rows(s->type, s->x + (size_t)r * s->n, s->dst + r * row, 1, s->n) != row)
            return (void *)1;
    return NULL;
}

static void test_threads(void **state)
{
    (void)state;
    enum { ROWS = 32, N = 512, THREADS = 4 };
    float *x = malloc(sizeof(float) * ROWS * N);
    assert_non_null(x);
    for (int i = 0; i < ROWS * N; i++)
        x[i] = 0.02f * bell();
    for (int k = 0; k < N_TYPES; k++) {
        const int type = all_types[k];
        const size_t size = nbi_row_size(type, N) * ROWS;
        uint8_t *serial = quantize(type, x, ROWS, N);
        uint8_t *par = malloc(size);
        assert_non_null(par);
        pthread_t th[THREADS];
        slice sl[THREADS];
        for (int t = 0; t < THREADS; t++) {
            sl[t] = (slice){type, t, THREADS, ROWS, N, x, par};
            assert_int_equal(pthread_create(&th[t], NULL, quantize_slice, &sl[t]), 0);
        }
        for (int t = 0; t < THREADS; t++) {
            void *ret;
            assert_int_equal(pthread_join(th[t], &ret), 0);
            assert_null(ret);
        }
        assert_memory_equal(serial, par, size);
        free(par);
        free(serial);
    }
    free(x);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_f16_file),
        cmocka_unit_test(test_bf16_file),
        cmocka_unit_test(test_q8_0_file),
        cmocka_unit_test(test_q4_0_file),
        cmocka_unit_test(test_q4_1_file),
        cmocka_unit_test(test_q5_0_file),
        cmocka_unit_test(test_q5_1_file),
        cmocka_unit_test(test_q2_K_file),
        cmocka_unit_test(test_q3_K_file),
        cmocka_unit_test(test_q4_K_file),
        cmocka_unit_test(test_q5_K_file),
        cmocka_unit_test(test_q6_K_file),
        cmocka_unit_test(test_iq4_nl_file),
        cmocka_unit_test(test_synthetic_digests),
        cmocka_unit_test(test_zero_rows),
        cmocka_unit_test(test_constant_rows),
        cmocka_unit_test(test_outlier),
        cmocka_unit_test(test_negative_rows),
        cmocka_unit_test(test_typical_accuracy),
        cmocka_unit_test(test_extreme_inputs),
        cmocka_unit_test(test_bad_arguments),
        cmocka_unit_test(test_multi_row),
        cmocka_unit_test(test_threads),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
