/*
 * test_kernels.c - the scalar reference kernels (core/kernels/).
 *
 * Four kinds of evidence:
 *  - hand-built blocks whose values were worked out by hand from the block
 *    format (the expected numbers are literals with their derivation);
 *  - consistency: for random weight blocks, the integer dot-product path
 *    must agree with a double-precision dot product of the dequantized
 *    weights and the dequantized activations;
 *  - the documented arithmetic: each dot product's lanes, fused
 *    multiply-adds and reduction order (as its file header states them,
 *    following ggml's x86 kernels) recomputed element by element here, to
 *    the last bit;
 *  - conversions against independent references (the compiler's
 *    _Float16 and double-precision rounding).
 */
#include "testutil.h"

#include <float.h>
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels.h"

/* The dot-product paths must agree with the dequantized dot product to
 * within this fraction of sum(|x_i * y_i|).  Both sides add up the same
 * exact-ish terms in a different order, so the difference is a few float
 * roundings per block; a single wrong element moves the result by about
 * 1/n of the sum, orders of magnitude more. */
#define DOT_REL_TOL 1e-5

/* Largest row the tests use: 8 super-blocks. */
#define MAX_N (8 * QK_K)

static const nbi_kernels *K;

/* ------------------------------------------------------------------ */
/* Helpers                                                             */

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;

static uint64_t rnd(void)
{
    /* splitmix64 */
    uint64_t z = (rng_state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* Uniform in [lo, hi). */
static float rnd_uniform(float lo, float hi)
{
    return lo + (hi - lo) * (float)((rnd() >> 40) * (1.0 / 16777216.0));
}

static void rnd_bytes(void *p, size_t n)
{
    uint8_t *b = p;
    for (size_t i = 0; i < n; i++)
        b[i] = (uint8_t)rnd();
}

static uint32_t f2u(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

static float u2f(uint32_t u)
{
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static nb_fp16 h(float f)
{
    return nbi_fp32_to_fp16(f);
}

/* Fail with a message when |got - want| > tol. */
#define CHECK_NEAR(got, want, tol, ...)                                              \
    do {                                                                             \
        double g_ = (got), w_ = (want), t_ = (tol);                                  \
        if (!(fabs(g_ - w_) <= t_)) {                                                \
            print_message(__VA_ARGS__);                                              \
            print_message("\n");                                                    \
            fail_msg("got %.9g want %.9g (diff %.3g > tol %.3g)", g_, w_, fabs(g_ - w_), \
                     t_);                                                            \
        }                                                                            \
    } while (0)

/* Exact float equality, with a readable failure. */
#define CHECK_EQ_F(got, want, ...)                                                   \
    do {                                                                             \
        float g_ = (got), w_ = (want);                                               \
        if (g_ != w_) {                                                              \
            print_message(__VA_ARGS__);                                              \
            print_message("\n");                                                    \
            fail_msg("got %.9g want %.9g", (double)g_, (double)w_);                   \
        }                                                                            \
    } while (0)

static void dequant(int type, const void *src, float *dst, int n)
{
    assert_non_null(K->to_float[type]);
    K->to_float[type](src, dst, n);
}

static float vdot(int type, int n, const void *x, const void *y)
{
    assert_non_null(K->vec_dot[type]);
    float s = NAN;
    K->vec_dot[type](n, &s, x, y);
    return s;
}

/* ------------------------------------------------------------------ */
/* fp16 and bf16 conversions                                           */

/* Independent value of half h, from its fields with ldexp. */
static double half_value(uint16_t v)
{
    const int sign = v >> 15, e = (v >> 10) & 31, m = v & 1023;
    double r;
    if (e == 0)
        r = ldexp(m, -24);
    else if (e == 31)
        r = m ? NAN : INFINITY;
    else
        r = ldexp(1024 + m, e - 25);
    return sign ? -r : r;
}

/* Round-to-nearest-even of a finite float to a format with p significand
 * bits, smallest normal exponent emin and largest finite max, computed in
 * double arithmetic (exact here: all operands fit in 53 bits). */
static double round_ref(float f, int p, int emin, double max)
{
    double a = fabs((double)f);
    if (a == 0)
        return f;
    int e;
    frexp(a, &e);
    e -= 1; /* a in [2^e, 2^(e+1)) */
    if (e < emin)
        e = emin;
    const double ulp = ldexp(1.0, e - (p - 1));
    double r = nearbyint(a / ulp) * ulp; /* default mode: ties to even */
    if (r > max)
        r = INFINITY;
    return f < 0 ? -r : r;
}

static double half_ref(float f)
{
    return round_ref(f, 11, -14, 65504.0);
}

static double bf16_ref(float f)
{
    return round_ref(f, 8, -126, (double)u2f(0x7f7f0000u));
}

static void test_fp16_exhaustive(void **state)
{
    (void)state;
    for (uint32_t v = 0; v < 65536; v++) {
        const float f = nbi_fp16_to_fp32((nb_fp16)v);
        const double want = half_value((uint16_t)v);
        if (isnan(want)) {
            if (!isnan(f) || !!signbit(f) != (v >> 15 != 0))
                fail_msg("half 0x%04x: not a NaN of the right sign", v);
            /* Still a NaN after narrowing, sign kept. */
            const nb_fp16 back = nbi_fp32_to_fp16(f);
            if ((back & 0x7c00) != 0x7c00 || !(back & 0x3ff) || (back ^ v) & 0x8000)
                fail_msg("half NaN 0x%04x came back as 0x%04x", v, back);
            continue;
        }
        if ((double)f != want || !!signbit(f) != (v >> 15 != 0))
            fail_msg("half 0x%04x widened to %.9g, want %.9g", v, (double)f, want);
        if (nbi_fp32_to_fp16(f) != v)
            fail_msg("half 0x%04x does not survive a round trip (0x%04x)", v,
                     nbi_fp32_to_fp16(f));
#ifdef __FLT16_MAX__
        _Float16 c;
        uint16_t bits = (uint16_t)v;
        memcpy(&c, &bits, 2);
        if ((float)c != f)
            fail_msg("half 0x%04x: %.9g, compiler says %.9g", v, (double)f, (double)(float)c);
#endif
    }
}

/* Narrow f and compare with both references. */
static void check_narrow_half(float f)
{
    const nb_fp16 got = nbi_fp32_to_fp16(f);
    const double want = half_ref(f);
    const double gv = half_value(got);
    if (gv != want || signbit(gv) != signbit(want))
        fail_msg("fp32 %a (0x%08x) narrowed to 0x%04x = %.9g, want %.9g", (double)f, f2u(f),
                 got, gv, want);
#ifdef __FLT16_MAX__
    const _Float16 c = (_Float16)f;
    uint16_t cbits;
    memcpy(&cbits, &c, 2);
    if (cbits != got)
        fail_msg("fp32 %a narrowed to 0x%04x, compiler says 0x%04x", (double)f, got, cbits);
#endif
}

static void test_fp16_narrowing(void **state)
{
    (void)state;
    /* Every halfway point between neighbouring halves, and the floats on
     * either side of it: all the rounding decisions there are. */
    for (uint32_t v = 0; v < 0x7c00; v++) {
        for (int s = 0; s < 2; s++) {
            const double lo = half_value((uint16_t)v);
            const double hi = v + 1 < 0x7c00 ? half_value((uint16_t)(v + 1)) : 65536.0;
            const float mid = (float)((lo + hi) / 2); /* exact: 12 bits */
            const float sg = s ? -1.0f : 1.0f;
            check_narrow_half(sg * mid);
            check_narrow_half(sg * nextafterf(mid, 0.0f));
            check_narrow_half(sg * nextafterf(mid, INFINITY));
            check_narrow_half(sg * (float)lo);
        }
    }
    /* A sweep over all float bit patterns (finite ones). */
    for (uint64_t u = 0; u < 0x100000000ull; u += 4093) {
        const float f = u2f((uint32_t)u);
        if (isfinite(f))
            check_narrow_half(f);
    }

    /* Hand-picked cases. */
    assert_int_equal(nbi_fp32_to_fp16(1.0f), 0x3c00);
    assert_int_equal(nbi_fp32_to_fp16(-2.0f), 0xc000);
    /* 1 + 2^-11 is halfway between 1 and 1 + 2^-10: ties go to even. */
    assert_int_equal(nbi_fp32_to_fp16(1.0f + 0x1p-11f), 0x3c00);
    assert_int_equal(nbi_fp32_to_fp16(1.0f + 3 * 0x1p-11f), 0x3c02);
    assert_int_equal(nbi_fp32_to_fp16(65504.0f), 0x7bff);
    assert_int_equal(nbi_fp32_to_fp16(65519.996f), 0x7bff);
    assert_int_equal(nbi_fp32_to_fp16(65520.0f), 0x7c00); /* tie -> even = inf */
    assert_int_equal(nbi_fp32_to_fp16(1e6f), 0x7c00);
    assert_int_equal(nbi_fp32_to_fp16(-1e6f), 0xfc00);
    assert_int_equal(nbi_fp32_to_fp16(INFINITY), 0x7c00);
    assert_int_equal(nbi_fp32_to_fp16(-INFINITY), 0xfc00);
    assert_int_equal(nbi_fp32_to_fp16(-0.0f), 0x8000);
    /* Subnormal halves: steps of 2^-24. */
    assert_int_equal(nbi_fp32_to_fp16(0x1p-24f), 0x0001);
    assert_int_equal(nbi_fp32_to_fp16(0x1p-25f), 0x0000);          /* tie -> 0 */
    assert_int_equal(nbi_fp32_to_fp16(0x1.000002p-25f), 0x0001);   /* just above */
    assert_int_equal(nbi_fp32_to_fp16(3 * 0x1p-25f), 0x0002);      /* 1.5 -> 2 */
    assert_int_equal(nbi_fp32_to_fp16(0x1p-14f), 0x0400);          /* min normal */
    assert_int_equal(nbi_fp32_to_fp16(0x1p-14f - 0x1p-25f), 0x0400); /* tie -> even */
    assert_int_equal(nbi_fp32_to_fp16(0x1p-14f - 0x1p-24f), 0x03ff);
    assert_int_equal(nbi_fp32_to_fp16(0x1p-14f - 3 * 0x1p-25f), 0x03fe); /* 1022.5 */
    assert_int_equal(nbi_fp32_to_fp16(-0x1p-24f), 0x8001);
    assert_int_equal(nbi_fp32_to_fp16(FLT_MIN), 0x0000);
    const nb_fp16 qnan = nbi_fp32_to_fp16(NAN);
    assert_true((qnan & 0x7c00) == 0x7c00 && (qnan & 0x3ff) != 0);
    assert_true(half_value(0x3555) > 0.333 && half_value(0x3555) < 0.3334);
    assert_true(fabsf(nbi_fp16_to_fp32(0x3555) - 1.0f / 3) < 1e-4f);
}

static void test_bf16(void **state)
{
    (void)state;
    /* Widening is a shift; every non-NaN value survives a round trip. */
    for (uint32_t v = 0; v < 65536; v++) {
        const float f = nbi_bf16_to_fp32((nb_bf16)v);
        if (f2u(f) != v << 16)
            fail_msg("bf16 0x%04x widened to 0x%08x", v, f2u(f));
        const nb_bf16 back = nbi_fp32_to_bf16(f);
        if (isnan(f)) {
            if ((back & 0x7f80) != 0x7f80 || !(back & 0x40) || (back ^ v) & 0x8000)
                fail_msg("bf16 NaN 0x%04x came back as 0x%04x (not a quiet NaN)", v, back);
        } else if (back != v) {
            fail_msg("bf16 0x%04x came back as 0x%04x", v, back);
        }
    }
    /* Narrowing against a double-precision reference: halfway points and
     * their neighbours for a range of exponents, then a sweep. */
    for (uint32_t v = 0; v < 0x7f80; v++) {
        const float lo = nbi_bf16_to_fp32((nb_bf16)v);
        const float mid = u2f(f2u(lo) | 0x8000u);
        const float cand[4] = {mid, nextafterf(mid, 0), nextafterf(mid, INFINITY), lo};
        for (int c = 0; c < 4; c++) {
            for (int s = 0; s < 2; s++) {
                const float f = s ? -cand[c] : cand[c];
                const double want = bf16_ref(f);
                const double got = nbi_bf16_to_fp32(nbi_fp32_to_bf16(f));
                if (got != want || signbit(got) != signbit(want))
                    fail_msg("fp32 0x%08x narrowed to %.9g, want %.9g", f2u(f), got, want);
            }
        }
    }
    for (uint64_t u = 0; u < 0x100000000ull; u += 4093) {
        const float f = u2f((uint32_t)u);
        if (!isfinite(f))
            continue;
        const double want = bf16_ref(f);
        const double got = nbi_bf16_to_fp32(nbi_fp32_to_bf16(f));
        if (got != want || signbit(got) != signbit(want))
            fail_msg("fp32 0x%08x narrowed to %.9g, want %.9g", f2u(f), got, want);
    }
    assert_int_equal(nbi_fp32_to_bf16(1.0f), 0x3f80);
    assert_int_equal(nbi_fp32_to_bf16(-3.0f), 0xc040);
    assert_int_equal(nbi_fp32_to_bf16(1.0f + 0x1p-8f), 0x3f80);     /* tie -> even */
    assert_int_equal(nbi_fp32_to_bf16(1.0f + 3 * 0x1p-8f), 0x3f82); /* tie -> even */
    assert_int_equal(nbi_fp32_to_bf16(FLT_MAX), 0x7f80);            /* rounds to inf */
    assert_int_equal(nbi_fp32_to_bf16(-INFINITY), 0xff80);
    /* Subnormals are rounded, not flushed (as current ggml). */
    assert_int_equal(nbi_fp32_to_bf16(u2f(0x00012345u)), 0x0001);
    assert_int_equal(nbi_fp32_to_bf16(u2f(0x80008000u)), 0x8000); /* tie -> even */
    assert_int_equal(nbi_fp32_to_bf16(u2f(0x7f800001u)), 0x7fc0); /* NaN made quiet */
}

/* ------------------------------------------------------------------ */
/* Type table, names, row sizes                                        */

static void test_type_names(void **state)
{
    (void)state;
    static const struct {
        int id;
        const char *name;
    } names[] = {
        {0, "F32"},      {1, "F16"},      {2, "Q4_0"},    {3, "Q4_1"},   {6, "Q5_0"},
        {7, "Q5_1"},     {8, "Q8_0"},     {9, "Q8_1"},    {10, "Q2_K"},  {11, "Q3_K"},
        {12, "Q4_K"},    {13, "Q5_K"},    {14, "Q6_K"},   {15, "Q8_K"},  {16, "IQ2_XXS"},
        {17, "IQ2_XS"},  {18, "IQ3_XXS"}, {19, "IQ1_S"},  {20, "IQ4_NL"}, {21, "IQ3_S"},
        {22, "IQ2_S"},   {23, "IQ4_XS"},  {24, "I8"},     {25, "I16"},   {26, "I32"},
        {27, "I64"},     {28, "F64"},     {29, "IQ1_M"},  {30, "BF16"},  {34, "TQ1_0"},
        {35, "TQ2_0"},   {39, "MXFP4"},
    };
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        const char *got = nb_type_name(names[i].id);
        assert_non_null(got);
        assert_string_equal(got, names[i].name);
    }
    static const int removed[] = {4, 5, 31, 32, 33, 36, 37, 38, -1, 40, 1000, INT32_MIN};
    for (size_t i = 0; i < sizeof removed / sizeof removed[0]; i++) {
        assert_null(nb_type_name(removed[i]));
        assert_int_equal(nb_type_supported(removed[i]), 0);
    }
}

static void test_type_supported(void **state)
{
    (void)state;
    static const int yes[] = {NB_TYPE_F32,  NB_TYPE_F16,  NB_TYPE_BF16, NB_TYPE_Q8_0,
                              NB_TYPE_Q4_0, NB_TYPE_Q4_1, NB_TYPE_Q5_0, NB_TYPE_Q5_1,
                              NB_TYPE_Q2_K, NB_TYPE_Q3_K, NB_TYPE_Q4_K, NB_TYPE_Q5_K,
                              NB_TYPE_Q6_K, NB_TYPE_IQ4_NL};
    int count = 0;
    for (int t = -2; t < NB_TYPE_COUNT + 2; t++)
        count += nb_type_supported(t);
    assert_int_equal(count, (int)(sizeof yes / sizeof yes[0]));
    for (size_t i = 0; i < sizeof yes / sizeof yes[0]; i++)
        assert_int_equal(nb_type_supported(yes[i]), 1);
    assert_int_equal(nb_type_supported(NB_TYPE_Q8_1), 0);
    assert_int_equal(nb_type_supported(NB_TYPE_Q8_K), 0);
    assert_int_equal(nb_type_supported(16), 0);
    assert_int_equal(nb_type_supported(39), 0);

    /* Every supported type has a complete set of kernels, its activation
     * format has a quantizer, and its facts match the block structs. */
    const nbi_kernels *ref = nbi_kernels_ref();
    assert_non_null(ref);
    assert_string_equal(ref->level, "ref");
    for (int t = 0; t < NB_TYPE_COUNT; t++) {
        const nbi_type_info *ti = &nbi_types[t];
        if (!ti->supported) {
            assert_null(ref->vec_dot[t]);
            continue;
        }
        assert_non_null(ref->to_float[t]);
        assert_non_null(ref->vec_dot[t]);
        assert_true(ti->vec_dot_type >= 0 && ti->vec_dot_type < NB_TYPE_COUNT);
        assert_non_null(ref->from_float[ti->vec_dot_type]);
        assert_non_null(ref->to_float[ti->vec_dot_type]);
    }
    assert_int_equal(nbi_types[NB_TYPE_Q4_0].vec_dot_type, NB_TYPE_Q8_0);
    assert_int_equal(nbi_types[NB_TYPE_Q5_0].vec_dot_type, NB_TYPE_Q8_0);
    assert_int_equal(nbi_types[NB_TYPE_Q8_0].vec_dot_type, NB_TYPE_Q8_0);
    assert_int_equal(nbi_types[NB_TYPE_IQ4_NL].vec_dot_type, NB_TYPE_Q8_0);
    assert_int_equal(nbi_types[NB_TYPE_Q4_1].vec_dot_type, NB_TYPE_Q8_1);
    assert_int_equal(nbi_types[NB_TYPE_Q5_1].vec_dot_type, NB_TYPE_Q8_1);
    for (int t = NB_TYPE_Q2_K; t <= NB_TYPE_Q6_K; t++) {
        assert_int_equal(nbi_types[t].vec_dot_type, NB_TYPE_Q8_K);
        assert_null(ref->from_float[t]); /* K-quant weights are only read */
    }
    assert_int_equal(nbi_types[NB_TYPE_F16].vec_dot_type, NB_TYPE_F16);
    assert_int_equal(nbi_types[NB_TYPE_BF16].vec_dot_type, NB_TYPE_BF16);
    assert_int_equal(nbi_types[NB_TYPE_F32].vec_dot_type, NB_TYPE_F32);
    assert_int_equal(nbi_types[NB_TYPE_Q8_1].vec_dot_type, -1);
    assert_int_equal(nbi_types[NB_TYPE_Q8_K].vec_dot_type, -1);
    assert_non_null(ref->from_float[NB_TYPE_Q8_1]);
    assert_non_null(ref->from_float[NB_TYPE_Q8_K]);
    assert_non_null(ref->from_float[NB_TYPE_Q4_0]);
    assert_non_null(ref->from_float[NB_TYPE_Q4_1]);
    assert_non_null(ref->from_float[NB_TYPE_Q5_0]);
    assert_non_null(ref->from_float[NB_TYPE_Q5_1]);
    assert_non_null(ref->from_float[NB_TYPE_IQ4_NL]);

    static const struct {
        int t, blck;
        size_t size;
    } facts[] = {
        {NB_TYPE_F32, 1, 4},
        {NB_TYPE_F16, 1, 2},
        {NB_TYPE_BF16, 1, 2},
        {NB_TYPE_Q4_0, 32, sizeof(block_q4_0)},
        {NB_TYPE_Q4_1, 32, sizeof(block_q4_1)},
        {NB_TYPE_Q5_0, 32, sizeof(block_q5_0)},
        {NB_TYPE_Q5_1, 32, sizeof(block_q5_1)},
        {NB_TYPE_Q8_0, 32, sizeof(block_q8_0)},
        {NB_TYPE_Q8_1, 32, sizeof(block_q8_1)},
        {NB_TYPE_Q2_K, 256, sizeof(block_q2_K)},
        {NB_TYPE_Q3_K, 256, sizeof(block_q3_K)},
        {NB_TYPE_Q4_K, 256, sizeof(block_q4_K)},
        {NB_TYPE_Q5_K, 256, sizeof(block_q5_K)},
        {NB_TYPE_Q6_K, 256, sizeof(block_q6_K)},
        {NB_TYPE_Q8_K, 256, sizeof(block_q8_K)},
        {NB_TYPE_IQ4_NL, 32, sizeof(block_iq4_nl)},
        /* Sizes of types nibble only names, from ggml-common.h. */
        {16, 256, 66}, {23, 256, 136}, {28, 1, 8}, {34, 256, 54}, {39, 32, 17},
    };
    for (size_t i = 0; i < sizeof facts / sizeof facts[0]; i++) {
        assert_int_equal(nbi_types[facts[i].t].blck, facts[i].blck);
        assert_int_equal(nbi_types[facts[i].t].size, facts[i].size);
    }
}

static void test_row_size(void **state)
{
    (void)state;
    assert_int_equal(nbi_row_size(NB_TYPE_F32, 10), 40);
    assert_int_equal(nbi_row_size(NB_TYPE_F16, 3), 6);
    assert_int_equal(nbi_row_size(NB_TYPE_BF16, 4096), 8192);
    assert_int_equal(nbi_row_size(NB_TYPE_Q4_0, 64), 36);
    assert_int_equal(nbi_row_size(NB_TYPE_Q8_0, 4096), 128 * 34);
    assert_int_equal(nbi_row_size(NB_TYPE_Q4_K, 512), 288);
    assert_int_equal(nbi_row_size(NB_TYPE_Q6_K, 4096), 16 * 210);
    assert_int_equal(nbi_row_size(NB_TYPE_Q8_K, 256), 292);
    assert_int_equal(nbi_row_size(16, 256), 66); /* named, unsupported: sized */
    /* Not a multiple of the block size. */
    assert_int_equal(nbi_row_size(NB_TYPE_Q4_0, 33), 0);
    assert_int_equal(nbi_row_size(NB_TYPE_Q4_K, 128), 0);
    /* Non-positive n. */
    assert_int_equal(nbi_row_size(NB_TYPE_F32, 0), 0);
    assert_int_equal(nbi_row_size(NB_TYPE_Q4_0, -32), 0);
    assert_int_equal(nbi_row_size(NB_TYPE_F32, INT64_MIN), 0);
    /* Unknown or removed types. */
    assert_int_equal(nbi_row_size(4, 32), 0);
    assert_int_equal(nbi_row_size(36, 32), 0);
    assert_int_equal(nbi_row_size(-1, 32), 0);
    assert_int_equal(nbi_row_size(NB_TYPE_COUNT, 32), 0);
    /* Overflow of size_t. */
    assert_int_equal(nbi_row_size(NB_TYPE_F32, INT64_MAX), 0); /* 4 * (2^63 - 1) */
    assert_int_equal(nbi_row_size(28, INT64_MAX), 0); /* F64: 8 * (2^63 - 1) */
#if SIZE_MAX == UINT64_MAX
    /* Large rows that do fit are not mistaken for overflow:
     * 2 * (2^63 - 1) = 2^64 - 2, and (2^55 - 1) Q8_K blocks. */
    assert_true(nbi_row_size(NB_TYPE_F16, INT64_MAX) == SIZE_MAX - 1);
    assert_true(nbi_row_size(NB_TYPE_Q8_K, INT64_MAX - INT64_MAX % 256) ==
                ((UINT64_C(1) << 55) - 1) * 292);
#else
    assert_int_equal(nbi_row_size(NB_TYPE_F16, INT64_MAX), 0);
#endif
}

/* ------------------------------------------------------------------ */
/* Kernel table selection                                              */

static void *get_kernels_thread(void *arg)
{
    (void)arg;
    return (void *)nbi_kernels_get();
}

static void test_dispatch(void **state)
{
    (void)state;
    /* main() set NIBBLE_KERNELS=ref before anything asked for a table. */
    pthread_t th[8];
    for (int i = 0; i < 8; i++)
        assert_int_equal(pthread_create(&th[i], NULL, get_kernels_thread, NULL), 0);
    const nbi_kernels *first = NULL;
    for (int i = 0; i < 8; i++) {
        void *ret = NULL;
        assert_int_equal(pthread_join(th[i], &ret), 0);
        if (!first)
            first = ret;
        assert_ptr_equal(ret, first);
    }
    assert_ptr_equal(first, nbi_kernels_ref());
    assert_ptr_equal(nbi_kernels_get(), first);
    assert_string_equal(nbi_kernels_get()->level, "ref");
}

/* ------------------------------------------------------------------ */
/* Hand-built blocks: float types                                      */

static void test_known_float_types(void **state)
{
    (void)state;
    float out[4];

    const float xf[3] = {1.0f, -2.5f, 3.0f}, yf[3] = {4.0f, 2.0f, -0.5f};
    dequant(NB_TYPE_F32, xf, out, 3);
    assert_memory_equal(out, xf, sizeof xf);
    CHECK_EQ_F(vdot(NB_TYPE_F32, 3, xf, yf), 4.0f - 5.0f - 1.5f, "f32 dot");

    /* 0x3c00 = 1, 0xc000 = -2, 0x7bff = 65504, 0x0001 = 2^-24. */
    const nb_fp16 xh[4] = {0x3c00, 0xc000, 0x7bff, 0x0001};
    dequant(NB_TYPE_F16, xh, out, 4);
    CHECK_EQ_F(out[0], 1.0f, "f16[0]");
    CHECK_EQ_F(out[1], -2.0f, "f16[1]");
    CHECK_EQ_F(out[2], 65504.0f, "f16[2]");
    CHECK_EQ_F(out[3], 0x1p-24f, "f16[3]");
    /* 0x4200 = 3, 0x4400 = 4, 0x3800 = 0.5: 1*3 + -2*4 + 65504*0.5 + 2^-24*0 */
    const nb_fp16 yh[4] = {0x4200, 0x4400, 0x3800, 0x0000};
    CHECK_EQ_F(vdot(NB_TYPE_F16, 4, xh, yh), 3.0f - 8.0f + 32752.0f, "f16 dot");

    /* 0x3f80 = 1, 0xc040 = -3, 0x4120 = 10, 0x3e80 = 0.25. */
    const nb_bf16 xb[4] = {0x3f80, 0xc040, 0x4120, 0x3e80};
    dequant(NB_TYPE_BF16, xb, out, 4);
    CHECK_EQ_F(out[0], 1.0f, "bf16[0]");
    CHECK_EQ_F(out[1], -3.0f, "bf16[1]");
    CHECK_EQ_F(out[2], 10.0f, "bf16[2]");
    CHECK_EQ_F(out[3], 0.25f, "bf16[3]");
    const nb_bf16 yb[4] = {0x4000, 0x4000, 0x3f00, 0x4080}; /* 2, 2, 0.5, 4 */
    CHECK_EQ_F(vdot(NB_TYPE_BF16, 4, xb, yb), 2.0f - 6.0f + 5.0f + 1.0f, "bf16 dot");

    /* from_float: copy / round to nearest even. */
    const float src[3] = {1.0f + 0x1p-11f, -0.1f, 70000.0f};
    nb_fp16 hh[3];
    K->from_float[NB_TYPE_F16](src, hh, 3);
    assert_int_equal(hh[0], 0x3c00);
    assert_int_equal(hh[1], 0xae66); /* -0.1 -> -0.0999755859375 */
    assert_int_equal(hh[2], 0x7c00);
    nb_bf16 bb[3];
    K->from_float[NB_TYPE_BF16](src, bb, 3);
    assert_int_equal(bb[0], 0x3f80);
    assert_int_equal(bb[1], 0xbdcd); /* -0.1 = 0xbdcccccd -> rounds up */
    assert_int_equal(bb[2], 0x4789); /* 70000 = 0x4788b800 -> 0x4789 */
    float ff[3];
    K->from_float[NB_TYPE_F32](src, ff, 3);
    assert_memory_equal(ff, src, sizeof src);
}

/* ------------------------------------------------------------------ */
/* Hand-built blocks: 32-element types                                 */

static void test_known_q4_0(void **state)
{
    (void)state;
    float out[QK4_0];
    block_q4_0 b;
    b.d = h(0.5f);
    memset(b.qs, 0xff, sizeof b.qs);
    dequant(NB_TYPE_Q4_0, &b, out, QK4_0);
    for (int j = 0; j < QK4_0; j++)
        CHECK_EQ_F(out[j], 3.5f, "q4_0 all 15, d 0.5: (15 - 8) * 0.5, elem %d", j);

    /* Byte 0 = 0x1f: element 0 is 15 -> 3.5, element 16 is 1 -> -3.5.
     * Byte 3 = 0x80: element 3 is 0 -> -4, element 19 is 8 -> 0. */
    b.qs[0] = 0x1f;
    b.qs[3] = 0x80;
    dequant(NB_TYPE_Q4_0, &b, out, QK4_0);
    CHECK_EQ_F(out[0], 3.5f, "q4_0 elem 0");
    CHECK_EQ_F(out[16], -3.5f, "q4_0 elem 16");
    CHECK_EQ_F(out[3], -4.0f, "q4_0 elem 3");
    CHECK_EQ_F(out[19], 0.0f, "q4_0 elem 19");

    /* Dot with Q8_0 of all 2 at d 1: every x is 3.5 -> 32 * 7 = 224. */
    block_q4_0 x;
    x.d = h(0.5f);
    memset(x.qs, 0xff, sizeof x.qs);
    block_q8_0 y;
    y.d = h(1.0f);
    memset(y.qs, 2, sizeof y.qs);
    CHECK_EQ_F(vdot(NB_TYPE_Q4_0, QK4_0, &x, &y), 224.0f, "q4_0 . q8_0");
    /* Two blocks, the second negated by its activation scale. */
    block_q4_0 x2[2] = {x, x};
    block_q8_0 y2[2] = {y, y};
    y2[1].d = h(-0.5f);
    CHECK_EQ_F(vdot(NB_TYPE_Q4_0, 2 * QK4_0, x2, y2), 224.0f - 112.0f, "q4_0 2 blocks");
}

static void test_known_q4_1(void **state)
{
    (void)state;
    float out[QK4_1];
    block_q4_1 b;
    b.d = h(0.25f);
    b.m = h(-1.0f);
    memset(b.qs, 0x3a, sizeof b.qs);
    dequant(NB_TYPE_Q4_1, &b, out, QK4_1);
    /* Low nibble 10: 10 * 0.25 - 1 = 1.5; high nibble 3: 0.75 - 1 = -0.25. */
    for (int j = 0; j < 16; j++) {
        CHECK_EQ_F(out[j], 1.5f, "q4_1 elem %d", j);
        CHECK_EQ_F(out[j + 16], -0.25f, "q4_1 elem %d", j + 16);
    }
    /* Q8_1 of all 1 at d 2 (y = 2 each, s = 2 * 32 = 64):
     * 16 * 1.5 * 2 + 16 * -0.25 * 2 = 48 - 8 = 40. */
    block_q8_1 y;
    y.d = h(2.0f);
    y.s = h(64.0f);
    memset(y.qs, 1, sizeof y.qs);
    CHECK_EQ_F(vdot(NB_TYPE_Q4_1, QK4_1, &b, &y), 40.0f, "q4_1 . q8_1");
}

static void test_known_q5_0(void **state)
{
    (void)state;
    float out[QK5_0];
    block_q5_0 b;
    b.d = h(1.0f);
    memset(b.qs, 0x88, sizeof b.qs); /* low bits 8 everywhere */
    b.qs[0] = 0x00;
    b.qs[1] = 0x0f;
    b.qs[15] = 0x80;
    /* qh bits 0 and 1 (elements 0, 1) and bit 31 (element 31). */
    b.qh[0] = 0x03;
    b.qh[1] = 0x00;
    b.qh[2] = 0x00;
    b.qh[3] = 0x80;
    dequant(NB_TYPE_Q5_0, &b, out, QK5_0);
    CHECK_EQ_F(out[0], 0.0f, "q5_0 elem 0: (0 | 16) - 16");
    CHECK_EQ_F(out[1], 15.0f, "q5_0 elem 1: (15 | 16) - 16");
    CHECK_EQ_F(out[16], -16.0f, "q5_0 elem 16: 0 - 16");
    CHECK_EQ_F(out[17], -16.0f, "q5_0 elem 17: 0 - 16");
    CHECK_EQ_F(out[2], -8.0f, "q5_0 elem 2: 8 - 16");
    CHECK_EQ_F(out[30], -8.0f, "q5_0 elem 30: 8 - 16");
    CHECK_EQ_F(out[31], 8.0f, "q5_0 elem 31: (8 | 16) - 16");

    /* All codes 31 at d 1 -> 15 each; dot with all-1 Q8_0 = 32 * 15. */
    memset(b.qs, 0xff, sizeof b.qs);
    memset(b.qh, 0xff, sizeof b.qh);
    block_q8_0 y;
    y.d = h(1.0f);
    memset(y.qs, 1, sizeof y.qs);
    CHECK_EQ_F(vdot(NB_TYPE_Q5_0, QK5_0, &b, &y), 480.0f, "q5_0 . q8_0");
}

static void test_known_q5_1(void **state)
{
    (void)state;
    float out[QK5_1];
    block_q5_1 b;
    b.d = h(0.5f);
    b.m = h(1.0f);
    memset(b.qs, 0, sizeof b.qs);
    memset(b.qh, 0, sizeof b.qh);
    b.qs[0] = 0xff; /* elements 0 and 16: low bits 15 */
    b.qh[0] = 0x01; /* element 0: + 16 */
    b.qh[2] = 0x02; /* element 17: + 16 */
    dequant(NB_TYPE_Q5_1, &b, out, QK5_1);
    CHECK_EQ_F(out[0], 16.5f, "q5_1 elem 0: 31 * 0.5 + 1");
    CHECK_EQ_F(out[16], 8.5f, "q5_1 elem 16: 15 * 0.5 + 1");
    CHECK_EQ_F(out[17], 9.0f, "q5_1 elem 17: 16 * 0.5 + 1");
    CHECK_EQ_F(out[5], 1.0f, "q5_1 elem 5: 0 * 0.5 + 1");

    /* Codes 1, d 1, m -2: x = -1.  Q8_1 of all 3 at d 1, s = 96: -96. */
    block_q5_1 x;
    x.d = h(1.0f);
    x.m = h(-2.0f);
    memset(x.qs, 0x11, sizeof x.qs);
    memset(x.qh, 0, sizeof x.qh);
    block_q8_1 y;
    y.d = h(1.0f);
    y.s = h(96.0f);
    memset(y.qs, 3, sizeof y.qs);
    CHECK_EQ_F(vdot(NB_TYPE_Q5_1, QK5_1, &x, &y), -96.0f, "q5_1 . q8_1");
}

static void test_known_q8(void **state)
{
    (void)state;
    float out[QK_K];
    block_q8_0 b;
    b.d = h(0.25f);
    memset(b.qs, 0, sizeof b.qs);
    b.qs[0] = -128;
    b.qs[1] = 127;
    b.qs[31] = 4;
    dequant(NB_TYPE_Q8_0, &b, out, QK8_0);
    CHECK_EQ_F(out[0], -32.0f, "q8_0 elem 0");
    CHECK_EQ_F(out[1], 31.75f, "q8_0 elem 1");
    CHECK_EQ_F(out[31], 1.0f, "q8_0 elem 31");
    CHECK_EQ_F(out[2], 0.0f, "q8_0 elem 2");

    /* x: 10 * 0.5 = 5, y: -3 * 2 = -6, 32 elements: -960. */
    block_q8_0 x, y;
    x.d = h(0.5f);
    memset(x.qs, 10, sizeof x.qs);
    y.d = h(2.0f);
    memset(y.qs, -3, sizeof y.qs);
    CHECK_EQ_F(vdot(NB_TYPE_Q8_0, QK8_0, &x, &y), -960.0f, "q8_0 . q8_0");

    block_q8_1 c;
    c.d = h(-0.5f);
    c.s = h(12345.0f); /* ignored by to_float */
    for (int j = 0; j < QK8_1; j++)
        c.qs[j] = (int8_t)(j - 16);
    dequant(NB_TYPE_Q8_1, &c, out, QK8_1);
    for (int j = 0; j < QK8_1; j++)
        CHECK_EQ_F(out[j], (j - 16) * -0.5f, "q8_1 elem %d", j);

    block_q8_K k;
    memset(&k, 0, sizeof k);
    k.d = 0.125f;
    k.qs[0] = -8;
    k.qs[255] = 127;
    dequant(NB_TYPE_Q8_K, &k, out, QK_K);
    CHECK_EQ_F(out[0], -1.0f, "q8_K elem 0");
    CHECK_EQ_F(out[255], 15.875f, "q8_K elem 255");
    CHECK_EQ_F(out[100], 0.0f, "q8_K elem 100");
}

static void test_known_iq4_nl(void **state)
{
    (void)state;
    float out[QK4_NL];
    block_iq4_nl b;
    b.d = h(0.5f);
    memset(b.qs, 0x99, sizeof b.qs); /* index 9 = level 13 */
    b.qs[0] = 0xf0;                  /* elem 0: index 0 (-127), elem 16: 15 (113) */
    b.qs[1] = 0x78;                  /* elem 1: index 8 (1), elem 17: 7 (-10) */
    dequant(NB_TYPE_IQ4_NL, &b, out, QK4_NL);
    CHECK_EQ_F(out[0], -63.5f, "iq4_nl elem 0");
    CHECK_EQ_F(out[16], 56.5f, "iq4_nl elem 16");
    CHECK_EQ_F(out[1], 0.5f, "iq4_nl elem 1");
    CHECK_EQ_F(out[17], -5.0f, "iq4_nl elem 17");
    CHECK_EQ_F(out[2], 6.5f, "iq4_nl elem 2");
    CHECK_EQ_F(out[31], 6.5f, "iq4_nl elem 31");

    /* Every index 9 (13) at d 1, Q8_0 all 2 at d 0.5: 32 * 13 = 416. */
    block_iq4_nl x;
    x.d = h(1.0f);
    memset(x.qs, 0x99, sizeof x.qs);
    block_q8_0 y;
    y.d = h(0.5f);
    memset(y.qs, 2, sizeof y.qs);
    CHECK_EQ_F(vdot(NB_TYPE_IQ4_NL, QK4_NL, &x, &y), 416.0f, "iq4_nl . q8_0");
    /* Full table, one level per element pair: dot with y = 1 is the sum of
     * all 16 levels twice: (-127-104-83-65-49-35-22-10+1+13+25+38+53+69+89
     * +113) * 2 = -94 * 2. */
    for (int j = 0; j < 16; j++)
        x.qs[j] = (uint8_t)(j | j << 4);
    y.d = h(1.0f);
    memset(y.qs, 1, sizeof y.qs);
    CHECK_EQ_F(vdot(NB_TYPE_IQ4_NL, QK4_NL, &x, &y), -188.0f, "iq4_nl levels");
}

/* ------------------------------------------------------------------ */
/* Hand-built blocks: K-quants                                         */

/* A Q8_K block with every quant q (bsums to match) and scale d. */
static void fill_q8_K(block_q8_K *y, float d, int q)
{
    y->d = d;
    memset(y->qs, q, sizeof y->qs);
    for (int g = 0; g < QK_K / 16; g++)
        y->bsums[g] = (int16_t)(16 * q);
}

static void test_known_q2_K(void **state)
{
    (void)state;
    float out[QK_K];
    block_q2_K b;
    memset(&b, 0, sizeof b);
    b.d = h(2.0f);
    b.dmin = h(0.5f);
    /* Sub-blocks 0..14: scale 1, min 2 -> x = 2*1*q - 0.5*2 = 2q - 1. */
    memset(b.scales, 0x21, sizeof b.scales);
    /* Sub-block 15: scale 3, min 15 -> x = 6q - 7.5. */
    b.scales[15] = 0xf3;
    /* qs[0] = 0b11100100: element 0 (bits 0-1) q=0, element 32 (bits 2-3)
     * q=1, element 64 q=2, element 96 q=3. */
    b.qs[0] = 0xe4;
    /* Second half: qs[32] holds elements 128, 160, 192, 224. */
    b.qs[32] = 0x03;
    /* qs[63] bits 6-7: element 255 (= 128 + 96 + 31), q = 3. */
    b.qs[63] = 0xc0;
    dequant(NB_TYPE_Q2_K, &b, out, QK_K);
    CHECK_EQ_F(out[0], -1.0f, "q2_K elem 0");
    CHECK_EQ_F(out[32], 1.0f, "q2_K elem 32");
    CHECK_EQ_F(out[64], 3.0f, "q2_K elem 64");
    CHECK_EQ_F(out[96], 5.0f, "q2_K elem 96");
    CHECK_EQ_F(out[128], 5.0f, "q2_K elem 128");
    CHECK_EQ_F(out[160], -1.0f, "q2_K elem 160");
    CHECK_EQ_F(out[255], 10.5f, "q2_K elem 255: 6*3 - 7.5");
    CHECK_EQ_F(out[240], -7.5f, "q2_K elem 240: 6*0 - 7.5");
    CHECK_EQ_F(out[1], -1.0f, "q2_K elem 1");

    /* Uniform: q = 3, scale 1, min 2, d 1, dmin 0.25 -> x = 3 - 0.5 = 2.5.
     * y = 2 * 0.5 = 1 -> dot = 256 * 2.5 = 640. */
    memset(b.qs, 0xff, sizeof b.qs);
    memset(b.scales, 0x21, sizeof b.scales);
    b.d = h(1.0f);
    b.dmin = h(0.25f);
    block_q8_K y;
    fill_q8_K(&y, 0.5f, 2);
    CHECK_EQ_F(vdot(NB_TYPE_Q2_K, QK_K, &b, &y), 640.0f, "q2_K . q8_K");
    /* The minimum term really comes from bsums: with y's quants unchanged
     * but bsums doubled, the result drops by dmin*2*sum(bsums)*y.d
     * = 0.25 * 2 * 512 * 0.5 = 128. */
    for (int g = 0; g < QK_K / 16; g++)
        y.bsums[g] = 64;
    CHECK_EQ_F(vdot(NB_TYPE_Q2_K, QK_K, &b, &y), 512.0f, "q2_K uses bsums");
}

static void test_known_q3_K(void **state)
{
    (void)state;
    float out[QK_K];
    block_q3_K b;
    memset(&b, 0, sizeof b);
    b.d = h(0.5f);
    /* Bytes 8..10 = 0xaa give every scale high bits 2 (raw 32 + low, so
     * scale = low nibble); byte 11 = 0x2a does the same for scales 3, 7
     * and 11 but gives scale 15 high bits 0 (signed scale = low - 32). */
    memset(b.scales + 8, 0xaa, 3);
    b.scales[11] = 0x2a;
    b.scales[9] = 0xa9; /* scale 1 high bits 1: raw 16 + 0, scale -16 */
    b.scales[0] = 0x21; /* scale 0 = 1, scale 8 = 2 */
    b.scales[7] = 0xf3; /* scale 7 = 3, scale 15 = 15 - 32 = -17 */
    /* qs 0x1b: low bits 3, 2, 1, 0 for the four 32-element quarters. */
    memset(b.qs, 0x1b, sizeof b.qs);
    /* High bits set (no -4) except: element 0 (hmask[0] bit 0) and
     * element 255 (hmask[31] bit 7). */
    memset(b.hmask, 0xff, sizeof b.hmask);
    b.hmask[0] = 0xfe;
    b.hmask[31] = 0x7f;
    dequant(NB_TYPE_Q3_K, &b, out, QK_K);
    CHECK_EQ_F(out[0], -0.5f, "q3_K elem 0: 0.5 * 1 * (3 - 4)");
    CHECK_EQ_F(out[1], 1.5f, "q3_K elem 1: 0.5 * 1 * 3");
    CHECK_EQ_F(out[16], -24.0f, "q3_K elem 16: 0.5 * -16 * 3");
    CHECK_EQ_F(out[32], 0.0f, "q3_K elem 32: scale 2 = 0");
    CHECK_EQ_F(out[112], 0.0f, "q3_K elem 112: 0.5 * 3 * 0");
    CHECK_EQ_F(out[128], 3.0f, "q3_K elem 128: 0.5 * 2 * 3");
    CHECK_EQ_F(out[255], 34.0f, "q3_K elem 255: 0.5 * -17 * (0 - 4)");
    CHECK_EQ_F(out[240], 0.0f, "q3_K elem 240: 0.5 * -17 * 0 (quarter 3, bit set)");

    /* Uniform: every scale 1, d 0.25, low bits 3, high bits clear:
     * x = 0.25 * (3 - 4) = -0.25; y = 4 -> 256 * -1 = -256. */
    memset(b.scales, 0x11, 8);
    memset(b.scales + 8, 0xaa, 4);
    memset(b.qs, 0xff, sizeof b.qs);
    memset(b.hmask, 0, sizeof b.hmask);
    b.d = h(0.25f);
    block_q8_K y;
    fill_q8_K(&y, 1.0f, 4);
    CHECK_EQ_F(vdot(NB_TYPE_Q3_K, QK_K, &b, &y), -256.0f, "q3_K . q8_K");
}

static void test_known_q4_K(void **state)
{
    (void)state;
    float out[QK_K];
    block_q4_K b;
    memset(&b, 0, sizeof b);
    b.d = h(0.5f);
    b.dmin = h(1.0f);
    /* Sub-block 0: scale = 0xc2 & 63 = 2, min = 0x41 & 63 = 1.
     * Sub-block 1: scale 4, min 0.
     * Sub-block 4: scale = (0x71 & 15) | (0xc2 >> 6) << 4 = 1 | 48 = 49,
     *              min = (0x71 >> 4) | (0x41 >> 6) << 4 = 7 | 16 = 23. */
    b.scales[0] = 0xc2;
    b.scales[4] = 0x41;
    b.scales[1] = 0x04;
    b.scales[8] = 0x71;
    b.qs[0] = 0x5f;  /* element 0: 15, element 32: 5 */
    b.qs[64] = 0x03; /* element 128 (third chunk, low nibble): 3 */
    dequant(NB_TYPE_Q4_K, &b, out, QK_K);
    CHECK_EQ_F(out[0], 14.0f, "q4_K elem 0: 0.5*2*15 - 1*1");
    CHECK_EQ_F(out[32], 10.0f, "q4_K elem 32: 0.5*4*5 - 0");
    CHECK_EQ_F(out[1], -1.0f, "q4_K elem 1: 0.5*2*0 - 1");
    CHECK_EQ_F(out[128], 50.5f, "q4_K elem 128: 0.5*49*3 - 23");

    /* Uniform: scales 1, mins 1, d 1, dmin 0.5, q 3: x = 2.5; y = 2
     * -> 256 * 5 = 1280. */
    memset(b.scales, 0x01, 8);
    memset(b.scales + 8, 0x11, 4);
    memset(b.qs, 0x33, sizeof b.qs);
    b.d = h(1.0f);
    b.dmin = h(0.5f);
    block_q8_K y;
    fill_q8_K(&y, 0.25f, 8);
    CHECK_EQ_F(vdot(NB_TYPE_Q4_K, QK_K, &b, &y), 1280.0f, "q4_K . q8_K");
}

static void test_known_q5_K(void **state)
{
    (void)state;
    float out[QK_K];
    block_q5_K b;
    memset(&b, 0, sizeof b);
    b.d = h(0.5f);
    b.dmin = h(1.0f);
    b.scales[0] = 0x02;  /* sub-block 0: scale 2 */
    b.scales[4] = 0x01;  /*              min 1 */
    b.scales[1] = 0x04;  /* sub-block 1: scale 4, min 0 */
    /* Sub-block 7: scale = (0x32 & 15) | (0x80 >> 6) << 4 = 2 | 32 = 34,
     * min = (0x32 >> 4) | (0x40 >> 6) << 4 = 3 | 16 = 19.  The top bits
     * of bytes 3 and 7 do not disturb sub-block 3 (scale 0, min 0). */
    b.scales[11] = 0x32;
    b.scales[3] = 0x80;
    b.scales[7] = 0x40;
    b.qs[0] = 0x0f;      /* element 0 low bits 15, element 32 low bits 0 */
    b.qs[36] = 0x90;     /* element 100 (chunk 1, high nibble): 9 */
    b.qh[4] = 0x08;      /* element 100 high bit (bit 100 / 32 = 3) */
    b.qh[0] = 0x01;      /* element 0 high bit */
    b.qh[1] = 0x01;      /* element 1 high bit (low bits 0) */
    b.qs[127] = 0x10;    /* element 255 low bits 1 (high nibble) */
    b.qh[31] = 0x80;     /* element 255 high bit */
    dequant(NB_TYPE_Q5_K, &b, out, QK_K);
    CHECK_EQ_F(out[0], 30.0f, "q5_K elem 0: 0.5*2*31 - 1");
    CHECK_EQ_F(out[1], 15.0f, "q5_K elem 1: 0.5*2*16 - 1");
    CHECK_EQ_F(out[32], 0.0f, "q5_K elem 32: 0.5*4*0 - 0");
    CHECK_EQ_F(out[255], 270.0f, "q5_K elem 255: 0.5*34*17 - 19");
    CHECK_EQ_F(out[224], -19.0f, "q5_K elem 224: 0.5*34*0 - 19");
    CHECK_EQ_F(out[100], 0.0f, "q5_K elem 100: sub-block 3 has scale 0, min 0");
    CHECK_EQ_F(out[96], 0.0f, "q5_K elem 96");
    /* Give sub-block 3 a scale (byte 3 low bits) to see element 100. */
    b.scales[3] = 0x81; /* scale 1, top bits still feed sub-block 7 */
    dequant(NB_TYPE_Q5_K, &b, out, QK_K);
    CHECK_EQ_F(out[100], 12.5f, "q5_K elem 100: 0.5*1*(9 + 16) - 0");
    CHECK_EQ_F(out[255], 270.0f, "q5_K elem 255 unchanged");

    /* Uniform: scales 1, mins 1, d 1, dmin 0.5, q = 3 + 16: x = 18.5;
     * y = 2 -> 256 * 37 = 9472. */
    memset(b.scales, 0x01, 8);
    memset(b.scales + 8, 0x11, 4);
    memset(b.qs, 0x33, sizeof b.qs);
    memset(b.qh, 0xff, sizeof b.qh);
    b.d = h(1.0f);
    b.dmin = h(0.5f);
    block_q8_K y;
    fill_q8_K(&y, 0.25f, 8);
    CHECK_EQ_F(vdot(NB_TYPE_Q5_K, QK_K, &b, &y), 9472.0f, "q5_K . q8_K");
}

static void test_known_q6_K(void **state)
{
    (void)state;
    float out[QK_K];
    block_q6_K b;
    memset(&b, 0, sizeof b);
    b.d = h(0.5f);
    b.scales[0] = 2;
    b.scales[4] = 1;
    b.scales[15] = -3;
    b.ql[0] = 0x0f;   /* element 0 low bits 15, element 64 low bits 0 */
    b.qh[0] = 0x03;   /* element 0 high bits 3, element 64 high bits 0 */
    b.ql[127] = 0x50; /* element 255 (second half, l=31, quarter 3): 5 */
    b.qh[63] = 0x40;  /* element 255 high bits 1 */
    b.scales[2] = -1;
    b.ql[33] = 0x07;  /* element 33 (quarter 1, l = 1): low bits 7 */
    b.qh[1] = 0x08;   /* element 33 high bits (bits 2-3) = 2 */
    dequant(NB_TYPE_Q6_K, &b, out, QK_K);
    CHECK_EQ_F(out[0], 31.0f, "q6_K elem 0: 0.5*2*(63 - 32)");
    CHECK_EQ_F(out[64], -16.0f, "q6_K elem 64: 0.5*1*(0 - 32)");
    CHECK_EQ_F(out[255], 16.5f, "q6_K elem 255: 0.5*-3*(21 - 32)");
    CHECK_EQ_F(out[16], 0.0f, "q6_K elem 16: scale 0");
    CHECK_EQ_F(out[33], -3.5f, "q6_K elem 33: 0.5*-1*(39 - 32)");
    CHECK_EQ_F(out[32], 16.0f, "q6_K elem 32: 0.5*-1*(0 - 32)");

    /* Uniform: scales 4, d 0.25, low 1, high 2: q = 33 - 32 = 1, x = 1;
     * y = -6 * 0.5 = -3 -> 256 * -3 = -768. */
    memset(b.scales, 4, sizeof b.scales);
    memset(b.ql, 0x11, sizeof b.ql);
    memset(b.qh, 0xaa, sizeof b.qh);
    b.d = h(0.25f);
    block_q8_K y;
    fill_q8_K(&y, 0.5f, -6);
    CHECK_EQ_F(vdot(NB_TYPE_Q6_K, QK_K, &b, &y), -768.0f, "q6_K . q8_K");
}

/* ------------------------------------------------------------------ */
/* Consistency of vec_dot with dequantization, random blocks           */

/* Write the scale fields of one block of a weight type. */
static void set_scales(int type, void *blk, float d, float m)
{
    switch (type) {
    case NB_TYPE_Q4_0: ((block_q4_0 *)blk)->d = h(d); break;
    case NB_TYPE_Q4_1: ((block_q4_1 *)blk)->d = h(d); ((block_q4_1 *)blk)->m = h(m); break;
    case NB_TYPE_Q5_0: ((block_q5_0 *)blk)->d = h(d); break;
    case NB_TYPE_Q5_1: ((block_q5_1 *)blk)->d = h(d); ((block_q5_1 *)blk)->m = h(m); break;
    case NB_TYPE_Q8_0: ((block_q8_0 *)blk)->d = h(d); break;
    case NB_TYPE_IQ4_NL: ((block_iq4_nl *)blk)->d = h(d); break;
    case NB_TYPE_Q2_K: ((block_q2_K *)blk)->d = h(d); ((block_q2_K *)blk)->dmin = h(m); break;
    case NB_TYPE_Q3_K: ((block_q3_K *)blk)->d = h(d); break;
    case NB_TYPE_Q4_K: ((block_q4_K *)blk)->d = h(d); ((block_q4_K *)blk)->dmin = h(m); break;
    case NB_TYPE_Q5_K: ((block_q5_K *)blk)->d = h(d); ((block_q5_K *)blk)->dmin = h(m); break;
    case NB_TYPE_Q6_K: ((block_q6_K *)blk)->d = h(d); break;
    default: fail_msg("set_scales: type %d", type);
    }
}

static int is_float_type(int type)
{
    return type == NB_TYPE_F32 || type == NB_TYPE_F16 || type == NB_TYPE_BF16;
}

/* A weight row: random codes, scales d and m drawn by the caller's
 * functions (float types: random values of magnitude ~scale). */
static void make_row(int type, void *row, int n, float scale, int random_codes,
                     uint8_t fill)
{
    const nbi_type_info *ti = &nbi_types[type];
    if (is_float_type(type)) {
        float *tmp = malloc((size_t)n * sizeof *tmp);
        assert_non_null(tmp);
        for (int i = 0; i < n; i++)
            tmp[i] = scale * rnd_uniform(-1.0f, 1.0f);
        K->from_float[type](tmp, row, n);
        free(tmp);
        return;
    }
    const size_t bytes = nbi_row_size(type, n);
    if (random_codes)
        rnd_bytes(row, bytes);
    else
        memset(row, fill, bytes);
    for (int b = 0; b < n / ti->blck; b++) {
        const float d = scale * rnd_uniform(0.5f, 1.5f) * (rnd() & 1 ? -1.0f : 1.0f);
        const float m = scale * rnd_uniform(-8.0f, 8.0f);
        set_scales(type, (uint8_t *)row + (size_t)b * ti->size, d, m);
    }
}

/* Check vec_dot(x, from_float(yf)) against the double-precision dot of
 * the dequantized x and the dequantized activations. */
static void check_dot(int type, int n, const void *x, const float *yf, const char *what)
{
    const int vdt = nbi_types[type].vec_dot_type;
    void *yq = malloc(nbi_row_size(vdt, n));
    float *xd = malloc((size_t)n * sizeof *xd);
    float *yd = malloc((size_t)n * sizeof *yd);
    assert_true(yq && xd && yd);
    K->from_float[vdt](yf, yq, n);
    dequant(type, x, xd, n);
    dequant(vdt, yq, yd, n);
    double want = 0, abs_sum = 0, slack = 0;
    for (int i = 0; i < n; i++) {
        want += (double)xd[i] * yd[i];
        abs_sum += fabs((double)xd[i] * yd[i]);
    }
    if (vdt == NB_TYPE_Q8_1) {
        /* Q8_1's s is d * sum(q) with the unrounded d, rounded to fp16 on
         * its own; the kernel multiplies the weight minimum by s, the
         * dequantized sum differs from it by a measured amount. */
        const block_q8_1 *yb = yq;
        for (int b = 0; b < n / QK8_1; b++) {
            double ysum = 0;
            for (int j = 0; j < QK8_1; j++)
                ysum += yd[b * QK8_1 + j];
            const float m = type == NB_TYPE_Q4_1
                                ? nbi_fp16_to_fp32(((const block_q4_1 *)x)[b].m)
                                : nbi_fp16_to_fp32(((const block_q5_1 *)x)[b].m);
            slack += fabs((double)m) * fabs(nbi_fp16_to_fp32(yb[b].s) - ysum);
        }
    }
    const float got = vdot(type, n, x, yq);
    if (!isfinite(got))
        fail_msg("%s %s n=%d: not finite (%g)", nb_type_name(type), what, n, (double)got);
    CHECK_NEAR(got, want, DOT_REL_TOL * abs_sum + slack + 1e-30,
               "%s %s n=%d", nb_type_name(type), what, n);
    free(yq);
    free(xd);
    free(yd);
}

static const int weight_types[] = {
    NB_TYPE_F32,  NB_TYPE_F16,  NB_TYPE_BF16, NB_TYPE_Q4_0, NB_TYPE_Q4_1,
    NB_TYPE_Q5_0, NB_TYPE_Q5_1, NB_TYPE_Q8_0, NB_TYPE_Q2_K, NB_TYPE_Q3_K,
    NB_TYPE_Q4_K, NB_TYPE_Q5_K, NB_TYPE_Q6_K, NB_TYPE_IQ4_NL,
};
#define N_WEIGHT_TYPES (int)(sizeof weight_types / sizeof weight_types[0])

static void test_vec_dot_random(void **state)
{
    (void)state;
    void *x = malloc(nbi_row_size(NB_TYPE_F32, MAX_N));
    float *yf = malloc(MAX_N * sizeof *yf);
    assert_true(x && yf);
    for (int ti = 0; ti < N_WEIGHT_TYPES; ti++) {
        const int type = weight_types[ti];
        const int blck = nbi_types[type].blck;
        const int sizes[3] = {is_float_type(type) ? 1 : blck,
                              is_float_type(type) ? 7 : 3 * blck,
                              is_float_type(type) ? MAX_N : 8 * blck};
        for (int si = 0; si < 3; si++) {
            const int n = sizes[si];
            for (int rep = 0; rep < 20; rep++) {
                make_row(type, x, n, rep % 2 ? 0.01f : 1.0f, 1, 0);
                /* Activations: mostly modest, with an occasional outlier
                 * as real hidden states have. */
                for (int i = 0; i < n; i++) {
                    yf[i] = rnd_uniform(-2.0f, 2.0f);
                    if ((rnd() & 63) == 0)
                        yf[i] *= 40.0f;
                }
                check_dot(type, n, x, yf, "random");
            }
        }
    }
    free(x);
    free(yf);
}

/* All scales zero: every element is zero whatever the codes, and the dot
 * product is exactly zero. */
static void test_vec_dot_zero_scales(void **state)
{
    (void)state;
    const int n = 2 * QK_K;
    void *x = malloc(nbi_row_size(NB_TYPE_F32, n));
    void *yq = malloc(nbi_row_size(NB_TYPE_F32, n));
    float *xd = malloc(n * sizeof *xd);
    float *yf = malloc(n * sizeof *yf);
    assert_true(x && yq && xd && yf);
    for (int i = 0; i < n; i++)
        yf[i] = rnd_uniform(-3.0f, 3.0f);
    for (int ti = 0; ti < N_WEIGHT_TYPES; ti++) {
        const int type = weight_types[ti];
        if (is_float_type(type)) {
            memset(x, 0, nbi_row_size(type, n));
        } else {
            rnd_bytes(x, nbi_row_size(type, n));
            for (int b = 0; b < n / nbi_types[type].blck; b++)
                set_scales(type, (uint8_t *)x + (size_t)b * nbi_types[type].size, 0.0f, 0.0f);
        }
        dequant(type, x, xd, n);
        for (int i = 0; i < n; i++)
            CHECK_EQ_F(xd[i], 0.0f, "%s zero scales elem %d", nb_type_name(type), i);
        const int vdt = nbi_types[type].vec_dot_type;
        K->from_float[vdt](yf, yq, n);
        CHECK_EQ_F(vdot(type, n, x, yq), 0.0f, "%s zero scales dot", nb_type_name(type));
    }
    free(x);
    free(yq);
    free(xd);
    free(yf);
}

/* Extreme scales and codes: the largest and smallest fp16 scales with all
 * codes at one end of their range, against large and tiny activations. */
static void test_vec_dot_extremes(void **state)
{
    (void)state;
    const int n = 4 * QK_K;
    void *x = malloc(nbi_row_size(NB_TYPE_F32, n));
    float *yf = malloc(n * sizeof *yf);
    assert_true(x && yf);
    static const uint8_t fills[3] = {0x00, 0xff, 0x80};
    static const float dscales[3] = {65504.0f, 0x1p-24f, 1.0f};
    static const float yscales[3] = {1000.0f, 1e-3f, 1e-30f};
    for (int ti = 0; ti < N_WEIGHT_TYPES; ti++) {
        const int type = weight_types[ti];
        if (is_float_type(type))
            continue;
        const nbi_type_info *inf = &nbi_types[type];
        for (int fi = 0; fi < 3; fi++) {
            for (int di = 0; di < 3; di++) {
                memset(x, fills[fi], nbi_row_size(type, n));
                for (int b = 0; b < n / inf->blck; b++) {
                    const float d = b % 2 ? -dscales[di] : dscales[di];
                    set_scales(type, (uint8_t *)x + (size_t)b * inf->size, d, -d);
                }
                for (int yi = 0; yi < 3; yi++) {
                    for (int i = 0; i < n; i++)
                        yf[i] = yscales[yi] * (i % 3 == 0 ? -1.0f : 1.0f);
                    check_dot(type, n, x, yf, "extreme");
                }
            }
        }
    }
    /* Float types at the edges of their range. */
    float *xf = malloc(n * sizeof *xf);
    assert_non_null(xf);
    for (int i = 0; i < n; i++) {
        xf[i] = i % 2 ? 65504.0f : -0x1p-24f;
        yf[i] = i % 5 ? 3.0f : -1e-3f;
    }
    K->from_float[NB_TYPE_F16](xf, x, n);
    check_dot(NB_TYPE_F16, n, x, yf, "extreme");
    for (int i = 0; i < n; i++)
        xf[i] = i % 2 ? 1e30f : -1e-30f;
    K->from_float[NB_TYPE_BF16](xf, x, n);
    check_dot(NB_TYPE_BF16, n, x, yf, "extreme");
    K->from_float[NB_TYPE_F32](xf, x, n);
    check_dot(NB_TYPE_F32, n, x, yf, "extreme");
    free(xf);
    free(x);
    free(yf);
}

/* ------------------------------------------------------------------ */
/* The documented arithmetic of each dot product, re-derived           */
/*
 * Every vec_dot reproduces one of ggml's x86 kernels bit for bit, and its
 * file header states the arithmetic: which integer partial sums form the
 * eight "lanes", where a fused multiply-add is used, and the order of the
 * final reduction.  Here each of those descriptions is computed again,
 * straightforwardly and element by element, from codes read out of the
 * block formats as the headers describe them, and the kernel must agree
 * to the last bit on random rows.  The codes are read independently of
 * the kernels' own unpacking, and the reductions are written out here.
 */

/* ((v0+v4) + (v2+v6)) + ((v1+v5) + (v3+v7)): ggml's hsum_float_8. */
static float model_hsum8(const float v[8])
{
    float lo = (v[0] + v[4]) + (v[2] + v[6]);
    float hi = (v[1] + v[5]) + (v[3] + v[7]);
    return lo + hi;
}

/* ((v0+v4) + (v1+v5)) + ((v2+v6) + (v3+v7)): GGML_F32x8_REDUCE's hadds. */
static float model_hadd8(const float v[8])
{
    float a = (v[0] + v[4]) + (v[1] + v[5]);
    float b = (v[2] + v[6]) + (v[3] + v[7]);
    return a + b;
}

/* Signed code of element j (0..31) of the 32-element block types, from
 * the layouts: element j < 16 in the low nibble of byte j, element j >= 16
 * in the high nibble of byte j - 16, fifth bit j of the qh word. */
static int nib32(const uint8_t *qs, int j)
{
    return j < 16 ? qs[j] & 15 : qs[j - 16] >> 4;
}

static int qh_bit(const uint8_t qh[4], int j)
{
    return (qh[j / 8] >> (j % 8)) & 1;
}

static int code_small(int type, const void *blk, int j)
{
    static const int kv[16] = {-127, -104, -83, -65, -49, -35, -22, -10,
                               1,    13,   25,  38,  53,  69,  89,  113};
    switch (type) {
    case NB_TYPE_Q4_0: return nib32(((const block_q4_0 *)blk)->qs, j) - 8;
    case NB_TYPE_Q4_1: return nib32(((const block_q4_1 *)blk)->qs, j);
    case NB_TYPE_Q5_0: {
        const block_q5_0 *b = blk;
        return (nib32(b->qs, j) | qh_bit(b->qh, j) << 4) - 16;
    }
    case NB_TYPE_Q5_1: {
        const block_q5_1 *b = blk;
        return nib32(b->qs, j) | qh_bit(b->qh, j) << 4;
    }
    case NB_TYPE_Q8_0: return ((const block_q8_0 *)blk)->qs[j];
    case NB_TYPE_IQ4_NL: return kv[nib32(((const block_iq4_nl *)blk)->qs, j)];
    default: fail_msg("code_small: type %d", type);
    }
    return 0;
}

/* K-quants: code and (signed) scale of element e, minimum of sub-block. */
static void k4_scale_min(const uint8_t *s, int j, int *sc, int *m)
{
    /* 6-bit values: j < 4 in the low 6 bits of bytes j (scale) and j+4
     * (min); j >= 4 low 4 bits from the nibbles of byte j+4, top 2 bits
     * from the top bits of bytes j-4 (scale) and j (min). */
    if (j < 4) {
        *sc = s[j] % 64;
        *m = s[j + 4] % 64;
    } else {
        *sc = s[j + 4] % 16 + (s[j - 4] / 64) * 16;
        *m = s[j + 4] / 16 + (s[j] / 64) * 16;
    }
}

static int code_k(int type, const void *blk, int e, int *scale)
{
    switch (type) {
    case NB_TYPE_Q2_K: {
        const block_q2_K *b = blk;
        *scale = b->scales[e / 16] % 16;
        return (b->qs[32 * (e / 128) + e % 32] >> (2 * ((e % 128) / 32))) % 4;
    }
    case NB_TYPE_Q3_K: {
        const block_q3_K *b = blk;
        const int j = e / 16;
        const int lo4 = j < 8 ? b->scales[j] % 16 : b->scales[j - 8] / 16;
        const int hi2 = (b->scales[8 + j % 4] >> (2 * (j / 4))) % 4;
        *scale = lo4 + 16 * hi2 - 32;
        const int low = (b->qs[32 * (e / 128) + e % 32] >> (2 * ((e % 128) / 32))) % 4;
        const int high = (b->hmask[e % 32] >> (e / 32)) % 2;
        return high ? low : low - 4;
    }
    case NB_TYPE_Q4_K:
    case NB_TYPE_Q5_K: {
        const uint8_t *qs = type == NB_TYPE_Q4_K ? ((const block_q4_K *)blk)->qs
                                                 : ((const block_q5_K *)blk)->qs;
        const uint8_t *sc6 = type == NB_TYPE_Q4_K ? ((const block_q4_K *)blk)->scales
                                                  : ((const block_q5_K *)blk)->scales;
        int m;
        k4_scale_min(sc6, e / 32, scale, &m);
        const uint8_t byte = qs[32 * (e / 64) + e % 32];
        int q = (e % 64) < 32 ? byte % 16 : byte / 16;
        if (type == NB_TYPE_Q5_K)
            q += 16 * ((((const block_q5_K *)blk)->qh[e % 32] >> (e / 32)) % 2);
        return q;
    }
    case NB_TYPE_Q6_K: {
        const block_q6_K *b = blk;
        *scale = b->scales[e / 16];
        const int h = e / 128, r = e % 128, k = r / 32, l = r % 32;
        const uint8_t lb = b->ql[64 * h + 32 * (k % 2) + l];
        const int low = k < 2 ? lb % 16 : lb / 16;
        const int high = (b->qh[32 * h + l] >> (2 * k)) % 4;
        return low + 16 * high - 32;
    }
    default: fail_msg("code_k: type %d", type);
    }
    return 0;
}

static int k_min(int type, const void *blk, int g16)
{
    int sc, m;
    if (type == NB_TYPE_Q2_K)
        return ((const block_q2_K *)blk)->scales[g16] / 16;
    const uint8_t *sc6 = type == NB_TYPE_Q4_K ? ((const block_q4_K *)blk)->scales
                                              : ((const block_q5_K *)blk)->scales;
    k4_scale_min(sc6, g16 / 2, &sc, &m);
    return m;
}

static float k_d(int type, const void *blk, int which_min)
{
    switch (type) {
    case NB_TYPE_Q2_K: return nbi_fp16_to_fp32(which_min ? ((const block_q2_K *)blk)->dmin
                                                         : ((const block_q2_K *)blk)->d);
    case NB_TYPE_Q3_K: return nbi_fp16_to_fp32(((const block_q3_K *)blk)->d);
    case NB_TYPE_Q4_K: return nbi_fp16_to_fp32(which_min ? ((const block_q4_K *)blk)->dmin
                                                         : ((const block_q4_K *)blk)->d);
    case NB_TYPE_Q5_K: return nbi_fp16_to_fp32(which_min ? ((const block_q5_K *)blk)->dmin
                                                         : ((const block_q5_K *)blk)->d);
    case NB_TYPE_Q6_K: return nbi_fp16_to_fp32(((const block_q6_K *)blk)->d);
    default: fail_msg("k_d: type %d", type);
    }
    return 0;
}

/* The dot product as the headers describe it. */
static float model_dot(int type, int n, const void *x, const void *yq)
{
    const nbi_type_info *ti = &nbi_types[type];
    if (type == NB_TYPE_F32 || type == NB_TYPE_F16 || type == NB_TYPE_BF16) {
        float xs[MAX_N], ys[MAX_N];
        dequant(type, x, xs, n); /* widening is exact */
        dequant(type, yq, ys, n);
        const int np = n - n % 32;
        float acc[4][8] = {{0}};
        for (int e = 0; e < np; e++)
            acc[(e % 32) / 8][e % 8] = fmaf(xs[e], ys[e], acc[(e % 32) / 8][e % 8]);
        float v[8];
        if (type == NB_TYPE_BF16) {
            for (int p = 0; p < 8; p++)
                v[p] = (acc[0][p] + acc[2][p]) + (acc[1][p] + acc[3][p]);
            double sum = np ? model_hsum8(v) : 0.0;
            for (int e = np; e < n; e++)
                sum += xs[e] * ys[e];
            return (float)sum;
        }
        for (int p = 0; p < 8; p++)
            v[p] = (acc[0][p] + acc[2][p]) + (acc[1][p] + acc[3][p]);
        if (type == NB_TYPE_F32) {
            float sum = model_hadd8(v);
            for (int e = np; e < n; e++)
                sum += xs[e] * ys[e];
            return sum;
        }
        double sum = np ? model_hadd8(v) : 0.0;
        for (int e = np; e < n; e++)
            sum += xs[e] * ys[e];
        return (float)sum;
    }
    const int nb = n / ti->blck;
    const uint8_t *xb = x;
    float lane[8] = {0}, sum = 0, summs = 0, accmin = 0;
    for (int b = 0; b < nb; b++) {
        const void *blk = xb + (size_t)b * ti->size;
        if (ti->blck == 32) {
            const float dx = nbi_fp16_to_fp32(*(const nb_fp16 *)blk); /* d comes first */
            int32_t part[8] = {0}, isum = 0;
            const int8_t *yqs;
            float dy;
            if (ti->vec_dot_type == NB_TYPE_Q8_1) {
                const block_q8_1 *yb = (const block_q8_1 *)yq + b;
                yqs = yb->qs;
                dy = nbi_fp16_to_fp32(yb->d);
                const nb_fp16 m = type == NB_TYPE_Q4_1 ? ((const block_q4_1 *)blk)->m
                                                       : ((const block_q5_1 *)blk)->m;
                summs += nbi_fp16_to_fp32(m) * nbi_fp16_to_fp32(yb->s);
            } else {
                const block_q8_0 *yb = (const block_q8_0 *)yq + b;
                yqs = yb->qs;
                dy = nbi_fp16_to_fp32(yb->d);
            }
            for (int j = 0; j < 32; j++) {
                const int p = code_small(type, blk, j) * yqs[j];
                part[j / 4] += p;
                isum += p;
            }
            if (type == NB_TYPE_Q4_0 || type == NB_TYPE_IQ4_NL) /* repacked gemv */
                sum = fmaf((float)isum, dx * dy, sum);
            else
                for (int l = 0; l < 8; l++)
                    lane[l] = fmaf(dx * dy, (float)part[l], lane[l]);
            continue;
        }
        /* K-quants against Q8_K */
        const block_q8_K *yb = (const block_q8_K *)yq + b;
        const float d = yb->d * k_d(type, blk, 0);
        int32_t part[8] = {0}, isum = 0;
        for (int e = 0; e < QK_K; e++) {
            int sc;
            const int q = code_k(type, blk, e, &sc);
            /* Q6_K multiplies the unsigned code q + 32; the offset comes
             * back below through the bsums. */
            const int p = sc * (type == NB_TYPE_Q6_K ? q + 32 : q) * yb->qs[e];
            part[(e % 32) / 4] += p;
            isum += p;
        }
        switch (type) {
        case NB_TYPE_Q2_K: {
            const float dmin = -yb->d * k_d(type, blk, 1);
            for (int l = 0; l < 8; l++)
                lane[l] = fmaf(dmin,
                               (float)(k_min(type, blk, 2 * l) * yb->bsums[2 * l] +
                                       k_min(type, blk, 2 * l + 1) * yb->bsums[2 * l + 1]),
                               lane[l]);
            for (int l = 0; l < 8; l++)
                lane[l] = fmaf(d, (float)part[l], lane[l]);
            break;
        }
        case NB_TYPE_Q3_K:
            for (int l = 0; l < 8; l++)
                lane[l] = fmaf(d, (float)part[l], lane[l]);
            break;
        case NB_TYPE_Q6_K:
            for (int l = 0; l < 8; l++) {
                const int8_t *sc = ((const block_q6_K *)blk)->scales;
                part[l] -= 32 * (sc[2 * l] * yb->bsums[2 * l] + sc[2 * l + 1] * yb->bsums[2 * l + 1]);
                lane[l] = fmaf(d, (float)part[l], lane[l]);
            }
            break;
        case NB_TYPE_Q4_K:
        case NB_TYPE_Q5_K: {
            int32_t msum = 0;
            for (int g = 0; g < 16; g++)
                msum += k_min(type, blk, g) * yb->bsums[g];
            if (type == NB_TYPE_Q4_K) { /* repacked gemv: no lanes */
                sum = fmaf((float)isum, k_d(type, blk, 0) * yb->d, sum);
                accmin = fmaf((float)msum, k_d(type, blk, 1) * yb->d, accmin);
            } else {
                summs = fmaf(-yb->d * k_d(type, blk, 1), (float)msum, summs);
                for (int l = 0; l < 8; l++)
                    lane[l] = fmaf(d, (float)part[l], lane[l]);
            }
            break;
        }
        default: fail_msg("model_dot: type %d", type);
        }
    }
    switch (type) {
    case NB_TYPE_Q4_0:
    case NB_TYPE_IQ4_NL: return sum;
    case NB_TYPE_Q4_K: return sum - accmin;
    case NB_TYPE_Q4_1:
    case NB_TYPE_Q5_1:
    case NB_TYPE_Q5_K: return model_hsum8(lane) + summs;
    default: return model_hsum8(lane);
    }
}

static void test_vec_dot_structure(void **state)
{
    (void)state;
    void *x = malloc(nbi_row_size(NB_TYPE_F32, MAX_N));
    void *yq = malloc(nbi_row_size(NB_TYPE_F32, MAX_N));
    float *yf = malloc(MAX_N * sizeof *yf);
    assert_true(x && yq && yf);
    for (int ti = 0; ti < N_WEIGHT_TYPES; ti++) {
        const int type = weight_types[ti];
        const int blck = nbi_types[type].blck;
        const int vdt = nbi_types[type].vec_dot_type;
        /* Float rows: below one SIMD step, a step plus leftovers, several
         * steps; block rows: one block up to eight super-blocks. */
        const int sizes[4] = {is_float_type(type) ? 8 : blck,
                              is_float_type(type) ? 45 : 2 * blck,
                              is_float_type(type) ? 256 : 3 * blck,
                              is_float_type(type) ? 2 * QK_K + 13 : (MAX_N / blck) * blck};
        for (int si = 0; si < 4; si++) {
            const int n = sizes[si];
            for (int rep = 0; rep < 25; rep++) {
                make_row(type, x, n, rep % 3 ? 1.0f : 0.003f, 1, 0);
                for (int i = 0; i < n; i++) {
                    yf[i] = rnd_uniform(-2.0f, 2.0f);
                    if ((rnd() & 31) == 0)
                        yf[i] *= 30.0f;
                }
                K->from_float[vdt](yf, yq, n);
                const float want = model_dot(type, n, x, yq);
                const float got = vdot(type, n, x, yq);
                if (memcmp(&got, &want, sizeof got) != 0)
                    fail_msg("%s n=%d rep %d: kernel %.9g, documented arithmetic %.9g",
                             nb_type_name(type), n, rep, (double)got, (double)want);
            }
        }
    }
    free(x);
    free(yq);
    free(yf);
}

/* A case where the lane structure shows.  Q8_0's lane l holds elements
 * 4l..4l+3 of each block, and hsum_float_8 adds lane 0 to lane 4 before
 * anything else.  Block 0 (d = 2^15 * 2^15) puts 127*127 * 2^30 into lane 0
 * and the negation into lane 4; block 1 (d = 1) puts 1 into lane 1.  The
 * kernel's answer is exactly 1: lanes 0 and 4 cancel first.  Adding the
 * eight lanes left to right would give 0, because 127*127 * 2^30 + 1
 * rounds back to 127*127 * 2^30. */
static void test_vec_dot_lane_order(void **state)
{
    (void)state;
    block_q8_0 x[2], y[2];
    memset(x, 0, sizeof x);
    memset(y, 0, sizeof y);
    x[0].d = y[0].d = h(32768.0f);
    x[0].qs[0] = 127;
    y[0].qs[0] = 127;
    x[0].qs[16] = -127;
    y[0].qs[16] = 127;
    x[1].d = y[1].d = h(1.0f);
    x[1].qs[4] = 1;
    y[1].qs[4] = 1;
    CHECK_EQ_F(vdot(NB_TYPE_Q8_0, 2 * QK8_0, x, y), 1.0f, "q8_0: lanes 0 and 4 cancel first");
    /* The same three products in one lane (elements 0, 1, 2 of block 0
     * and element 0 of block 1): lane 0 gets fma(2^30, 0, 0) = 0, then
     * fma(1, 1, 0) = 1. */
    memset(x, 0, sizeof x);
    memset(y, 0, sizeof y);
    x[0].d = y[0].d = h(32768.0f);
    x[0].qs[0] = 127;
    y[0].qs[0] = 127;
    x[0].qs[1] = -127;
    y[0].qs[1] = 127;
    x[1].d = y[1].d = h(1.0f);
    x[1].qs[0] = 1;
    y[1].qs[0] = 1;
    CHECK_EQ_F(vdot(NB_TYPE_Q8_0, 2 * QK8_0, x, y), 1.0f, "q8_0: one lane, integer sum exact");
}

/* ------------------------------------------------------------------ */
/* Quantizers                                                          */

/* Relative precision of an fp16 scale: rounding moves it by at most
 * half an ulp, 2^-11 of its value (normal range). */
#define FP16_REL 0x1p-11
/* Below 2^-14 fp16 is subnormal with a fixed step of 2^-24. */
#define FP16_ABS 0x1p-25

/* Input patterns for one 256-element row. */
static void make_input(float *x, int n, int pattern)
{
    for (int i = 0; i < n; i++) {
        switch (pattern) {
        case 0: x[i] = rnd_uniform(-1.0f, 1.0f); break;
        case 1: x[i] = 1e-3f * (rnd_uniform(-1.0f, 1.0f) + rnd_uniform(-1.0f, 1.0f)); break;
        case 2: x[i] = rnd_uniform(0.5f, 3.0f); break;      /* all positive */
        case 3: x[i] = -rnd_uniform(0.0f, 50.0f); break;    /* all negative */
        case 4: x[i] = (i % 37 == 5) ? 30.0f : rnd_uniform(-1.0f, 1.0f); break; /* outlier */
        default: x[i] = (i % 2 ? 1.0f : -1.0f) * rnd_uniform(0.9f, 1.0f); break;
        }
    }
}
#define N_PATTERNS 6

/* Largest magnitude in x[0..n) and the (first) signed value having it. */
static float signed_max(const float *x, int n, float *amax)
{
    float a = 0, m = 0;
    for (int i = 0; i < n; i++)
        if (fabsf(x[i]) > a) {
            a = fabsf(x[i]);
            m = x[i];
        }
    *amax = a;
    return m;
}

static void test_quant_q8(void **state)
{
    (void)state;
    float x[QK_K], out[QK_K];
    for (int p = 0; p < N_PATTERNS; p++) {
        for (int rep = 0; rep < 20; rep++) {
            make_input(x, QK_K, p);

            block_q8_0 q0[QK_K / QK8_0];
            block_q8_1 q1[QK_K / QK8_1];
            K->from_float[NB_TYPE_Q8_0](x, q0, QK_K);
            K->from_float[NB_TYPE_Q8_1](x, q1, QK_K);
            for (int b = 0; b < QK_K / 32; b++) {
                float amax;
                signed_max(x + 32 * b, 32, &amax);
                const double d = amax / 127.0f;
                /* Same scale and quants in both formats. */
                assert_int_equal(q0[b].d, q1[b].d);
                assert_memory_equal(q0[b].qs, q1[b].qs, 32);
                const double d16 = nbi_fp16_to_fp32(q0[b].d);
                CHECK_NEAR(d16, d, d * FP16_REL + FP16_ABS, "q8_0 scale, block %d", b);
                int qsum = 0;
                for (int j = 0; j < 32; j++) {
                    const double xv = x[32 * b + j], v = q0[b].qs[j] * d16;
                    /* Half a step, plus what rounding the scale costs. */
                    CHECK_NEAR(v, xv, 0.5 * d + 127 * fabs(d16 - d) + 1e-6 * amax + 1e-30,
                               "q8_0 pattern %d elem %d", p, 32 * b + j);
                    assert_true(q0[b].qs[j] >= -127 && q0[b].qs[j] <= 127);
                    qsum += q1[b].qs[j];
                }
                /* s = d * sum(q), within fp16 rounding of the product. */
                const double s = nbi_fp16_to_fp32(q1[b].s);
                CHECK_NEAR(s, qsum * d, fabs(qsum * d) * FP16_REL * 1.0001 + FP16_ABS,
                           "q8_1 s, block %d", b);
            }

            block_q8_K qk;
            K->from_float[NB_TYPE_Q8_K](x, &qk, QK_K);
            float amax;
            const float m = signed_max(x, QK_K, &amax);
            const double dk = qk.d;
            /* d = -m/127 in float: the largest value maps to -127. */
            CHECK_NEAR(dk, -m / 127.0, amax / 127.0 * 2e-7, "q8_K scale");
            K->to_float[NB_TYPE_Q8_K](&qk, out, QK_K);
            for (int j = 0; j < QK_K; j++) {
                /* Half a step, plus float rounding of x*iscale, of d and
                 * of d*q: a few ulps of values up to amax. */
                CHECK_NEAR(out[j], x[j], 0.5 * fabs(dk) + 1e-6 * amax, "q8_K pattern %d elem %d",
                           p, j);
                if (x[j] == m)
                    assert_int_equal(qk.qs[j], -127);
            }
            for (int g = 0; g < QK_K / 16; g++) {
                int sum = 0;
                for (int l = 0; l < 16; l++)
                    sum += qk.qs[16 * g + l];
                assert_int_equal(qk.bsums[g], sum);
            }
        }
    }
}

static void test_quant_q8_known(void **state)
{
    (void)state;
    float x[QK_K];
    memset(x, 0, sizeof x);
    /* amax 127 -> d = 1 and id = 127/amax = 1 exactly, so the quants are
     * the rounded inputs. */
    x[0] = -127.0f;
    x[1] = 2.5f;
    x[2] = -2.5f;
    x[3] = 0.5f;
    x[4] = 3.5f;
    x[5] = 126.6f;
    block_q8_0 q0;
    K->from_float[NB_TYPE_Q8_0](x, &q0, QK8_0);
    assert_int_equal(q0.d, 0x3c00);
    /* Q8_0 (the activation quantizer, as ggml's x86 quantize_row_q8_0)
     * rounds halves to even: 2.5 -> 2, -2.5 -> -2, 0.5 -> 0, 3.5 -> 4. */
    static const int8_t want0[6] = {-127, 2, -2, 0, 4, 127};
    assert_memory_equal(q0.qs, want0, 6);
    block_q8_1 q1;
    K->from_float[NB_TYPE_Q8_1](x, &q1, QK8_1);
    assert_int_equal(q1.d, 0x3c00);
    assert_memory_equal(q1.qs, want0, 6);
    assert_int_equal(q1.s, nbi_fp32_to_fp16(-127 + 2 - 2 + 0 + 4 + 127)); /* 4 */

    /* The multiplier is 127/amax, not 1/d.  With amax = 381, d = 3 but
     * 127/381 rounds to the float 0x3eaaaaab = 0.3333333432674408; then
     * 7.5 * id = 2.5000000745..., whose nearest float is 2.5, a tie that
     * goes to the even 2 (7.5/d would give 2.5 as well, and rounding half
     * away from zero would give 3).  Likewise 4.5 * id rounds to the
     * float 1.5 -> 2 and 1.5 * id = 0.500000015 rounds to the float 0.5,
     * which goes to the even 0. */
    float z[QK8_0];
    memset(z, 0, sizeof z);
    z[0] = 381.0f;
    z[1] = 7.5f;
    z[2] = -7.5f;
    z[3] = 4.5f;
    z[4] = 1.5f;
    K->from_float[NB_TYPE_Q8_0](z, &q0, QK8_0);
    assert_int_equal(q0.d, 0x4200); /* 3 */
    static const int8_t wantz[5] = {127, 2, -2, 2, 0};
    assert_memory_equal(q0.qs, wantz, 5);
    K->from_float[NB_TYPE_Q8_1](z, &q1, QK8_1);
    assert_memory_equal(q1.qs, wantz, 5);
    assert_int_equal(q1.s, nbi_fp32_to_fp16(3.0f * (127 + 2 - 2 + 2 + 0))); /* 387 */

    /* Q8_K rounds halves to even; d = 1/iscale = -m/127 = 1 here. */
    block_q8_K qk;
    K->from_float[NB_TYPE_Q8_K](x, &qk, QK_K);
    CHECK_EQ_F(qk.d, 1.0f, "q8_K d");
    static const int8_t wantk[6] = {-127, 2, -2, 0, 4, 127};
    assert_memory_equal(qk.qs, wantk, 6);
    assert_int_equal(qk.bsums[0], -127 + 2 - 2 + 0 + 4 + 127);
    for (int g = 1; g < QK_K / 16; g++)
        assert_int_equal(qk.bsums[g], 0);
    /* With the largest magnitude positive the scale is negative and the
     * quants come out negated: iscale = -127/127 = -1. */
    x[0] = 127.0f;
    K->from_float[NB_TYPE_Q8_K](x, &qk, QK_K);
    CHECK_EQ_F(qk.d, -1.0f, "q8_K d, positive max");
    static const int8_t wantn[6] = {-127, -2, 2, -0, -4, -127};
    assert_memory_equal(qk.qs, wantn, 6);
    /* Q8_0 keeps a positive scale either way. */
    K->from_float[NB_TYPE_Q8_0](x, &q0, QK8_0);
    assert_int_equal(q0.d, 0x3c00);
    assert_int_equal(q0.qs[0], 127);
}

/* Degenerate blocks (nbi_q8_degenerate in kernels.h): a NaN or an
 * infinity anywhere, or amax below NBI_Q8_AMAX_MIN, quantizes to an
 * all-zero block in every activation format, without touching the blocks
 * around it; amax at the threshold or up to FLT_MAX quantizes normally. */
static void test_quant_q8_degenerate(void **state)
{
    (void)state;
    static const int types[] = {NB_TYPE_Q8_0, NB_TYPE_Q8_1, NB_TYPE_Q8_K};
    const float below = nextafterf(NBI_Q8_AMAX_MIN, 0.0f);
    for (size_t ti = 0; ti < sizeof types / sizeof types[0]; ti++) {
        const int t = types[ti];
        const int blck = nbi_types[t].blck;
        const size_t bs = nbi_types[t].size;
        const size_t qs = t == NB_TYPE_Q8_0 ? offsetof(block_q8_0, qs)
                        : t == NB_TYPE_Q8_1 ? offsetof(block_q8_1, qs) : offsetof(block_q8_K, qs);
        uint8_t zero[sizeof(block_q8_K)] = {0}, row[3 * sizeof(block_q8_K)], alone[sizeof(block_q8_K)];
        float x[3 * QK_K];
        for (int c = 0; c < 9; c++) {
            /* blocks 0 and 2 ordinary, block 1 the case */
            for (int i = 0; i < 3 * blck; i++)
                x[i] = rnd_uniform(-2.0f, 2.0f);
            float *y = x + blck;
            const int p = (7 * c) % blck;
            int degenerate = 1;
            switch (c) {
            case 0: y[p] = NAN; break;
            case 1: y[p] = -NAN; break;
            case 2: y[p] = INFINITY; break;
            case 3: y[p] = -INFINITY; break;
            case 4: /* all subnormal */
                for (int i = 0; i < blck; i++)
                    y[i] = (i % 2 ? -1.0f : 1.0f) * u2f(0x00400000u + (uint32_t)i);
                break;
            case 5: /* amax just below the threshold */
                for (int i = 0; i < blck; i++)
                    y[i] = below * (i == p ? 1.0f : 0.5f);
                break;
            case 6: /* an infinity among finite huge values */
                for (int i = 0; i < blck; i++)
                    y[i] = -FLT_MAX;
                y[p] = INFINITY;
                break;
            case 7: /* amax at the threshold: kept */
                for (int i = 0; i < blck; i++)
                    y[i] = NBI_Q8_AMAX_MIN * (i == p ? 1.0f : 0.25f);
                degenerate = 0;
                break;
            default: /* amax FLT_MAX: kept */
                y[p] = -FLT_MAX;
                degenerate = 0;
                break;
            }
            memset(row, 0xa5, sizeof row);
            K->from_float[t](x, row, 3 * blck);
            if (degenerate) {
                assert_memory_equal(row + bs, zero, bs);
            } else {
                /* the largest magnitude maps to 127 with its sign (Q8_0,
                 * Q8_1) or to -127 (Q8_K) */
                const int8_t q = (int8_t)row[bs + qs + (size_t)p];
                assert_int_equal(q, t == NB_TYPE_Q8_K ? -127 : (y[p] < 0 ? -127 : 127));
                assert_memory_not_equal(row + bs, zero, bs);
            }
            for (int b = 0; b < 3; b += 2) {
                K->from_float[t](x + b * blck, alone, blck);
                assert_memory_equal(row + (size_t)b * bs, alone, bs);
            }
        }
    }
    /* The kept extremes, worked out: amax 2^-100 gives Q8_0 d = fp16(0)
     * (2^-100/127 is far below the smallest half) with the quant 127,
     * and Q8_K iscale = -127 * 2^100 (exact), d = 1/iscale. */
    float x[QK_K];
    memset(x, 0, sizeof x);
    x[3] = NBI_Q8_AMAX_MIN;
    block_q8_0 q0;
    K->from_float[NB_TYPE_Q8_0](x, &q0, QK8_0);
    assert_int_equal(q0.d, 0);
    assert_int_equal(q0.qs[3], 127);
    block_q8_K qk;
    K->from_float[NB_TYPE_Q8_K](x, &qk, QK_K);
    CHECK_EQ_F(qk.d, 1.0f / (-127.0f * 0x1p100f), "q8_K d at the threshold");
    assert_int_equal(qk.qs[3], -127);
    assert_int_equal(qk.bsums[0], -127);
    /* amax FLT_MAX: d = FLT_MAX/127 overflows fp16 to infinity (defined,
     * and what ggml writes); the quant is 127. */
    x[3] = FLT_MAX;
    K->from_float[NB_TYPE_Q8_0](x, &q0, QK8_0);
    assert_int_equal(q0.d, 0x7c00);
    assert_int_equal(q0.qs[3], 127);
}

/* Round trip for the 32-element weight quantizers. */
static void test_quant_small_blocks(void **state)
{
    (void)state;
    float x[QK_K], out[QK_K];
    for (int p = 0; p < N_PATTERNS; p++) {
        for (int rep = 0; rep < 20; rep++) {
            make_input(x, QK_K, p);

            /* Q4_0 and Q5_0: symmetric grid, d = m / -half where m is the
             * signed extreme; codes -half..half-1. */
            for (int k = 0; k < 2; k++) {
                const int type = k ? NB_TYPE_Q5_0 : NB_TYPE_Q4_0;
                const int half = k ? 16 : 8;
                uint8_t buf[QK_K / 32 * sizeof(block_q5_0)];
                K->from_float[type](x, buf, QK_K);
                K->to_float[type](buf, out, QK_K);
                for (int b = 0; b < QK_K / 32; b++) {
                    float amax;
                    const float m = signed_max(x + 32 * b, 32, &amax);
                    const double d = m / (double)-half;
                    nb_fp16 dh;
                    memcpy(&dh, buf + b * nbi_types[type].size, sizeof dh);
                    const double d16 = nbi_fp16_to_fp32(dh);
                    CHECK_NEAR(d16, d, fabs(d) * FP16_REL + FP16_ABS, "%s scale",
                               nb_type_name(type));
                    const double scale_err = half * fabs(d16 - d);
                    for (int j = 0; j < 32; j++) {
                        const int e = 32 * b + j;
                        const double t = x[e] / d; /* position on the grid */
                        if (x[e] == m)             /* the extreme is exact */
                            CHECK_NEAR(out[e], -half * d16, 0, "%s extreme", nb_type_name(type));
                        if (t <= half - 0.5 - 1e-4)
                            CHECK_NEAR(out[e], x[e], 0.5 * fabs(d) * (1 + 1e-5) + scale_err,
                                       "%s pattern %d elem %d", nb_type_name(type), p, e);
                        else /* beyond the top of the grid: clamped to it */
                            CHECK_NEAR(out[e], x[e], fabs(d) * (1 + 1e-5) + scale_err,
                                       "%s top, pattern %d elem %d", nb_type_name(type), p, e);
                    }
                }
            }

            /* Q4_1 and Q5_1: grid from the minimum to the maximum. */
            for (int k = 0; k < 2; k++) {
                const int type = k ? NB_TYPE_Q5_1 : NB_TYPE_Q4_1;
                const int steps = k ? 31 : 15;
                uint8_t buf[QK_K / 32 * sizeof(block_q5_1)];
                K->from_float[type](x, buf, QK_K);
                K->to_float[type](buf, out, QK_K);
                for (int b = 0; b < QK_K / 32; b++) {
                    float lo = x[32 * b], hi = x[32 * b];
                    for (int j = 1; j < 32; j++) {
                        lo = fminf(lo, x[32 * b + j]);
                        hi = fmaxf(hi, x[32 * b + j]);
                    }
                    const double d = ((double)hi - lo) / steps;
                    nb_fp16 dm[2];
                    memcpy(dm, buf + b * nbi_types[type].size, sizeof dm);
                    const double d16 = nbi_fp16_to_fp32(dm[0]);
                    const double m16 = nbi_fp16_to_fp32(dm[1]);
                    CHECK_NEAR(d16, d, d * FP16_REL + FP16_ABS, "%s scale", nb_type_name(type));
                    CHECK_NEAR(m16, lo, fabs(lo) * FP16_REL + FP16_ABS, "%s min",
                               nb_type_name(type));
                    const double slack = steps * fabs(d16 - d) + fabs(m16 - lo);
                    for (int j = 0; j < 32; j++)
                        CHECK_NEAR(out[32 * b + j], x[32 * b + j],
                                   0.5 * d * (1 + 1e-5) + slack + 1e-7 * fabs(lo),
                                   "%s pattern %d elem %d", nb_type_name(type), p, 32 * b + j);
                }
            }
        }
    }
}

static void test_quant_small_blocks_known(void **state)
{
    (void)state;
    float x[32];
    /* Q4_0: x = (j % 16) - 8; the extreme is -8 at j = 0, so d = 1 and the
     * code of each element is x + 8 = j % 16. */
    for (int j = 0; j < 32; j++)
        x[j] = (float)(j % 16) - 8.0f;
    block_q4_0 a;
    K->from_float[NB_TYPE_Q4_0](x, &a, 32);
    assert_int_equal(a.d, 0x3c00);
    for (int j = 0; j < 16; j++)
        assert_int_equal(a.qs[j], j | j << 4);
    /* Rounding and the clamp at the top: x/d + 8.5 truncated. */
    x[1] = 7.9f;  /* 16.4 -> 16 -> clamped to 15 */
    x[2] = 7.4f;  /* 15.9 -> 15 */
    x[3] = 0.5f;  /* 9.0 -> 9: halves round up */
    x[4] = -0.5f; /* 8.0 -> 8 */
    x[5] = 0.49f; /* 8.99 -> 8 */
    K->from_float[NB_TYPE_Q4_0](x, &a, 32);
    assert_int_equal(a.qs[1] & 15, 15);
    assert_int_equal(a.qs[2] & 15, 15);
    assert_int_equal(a.qs[3] & 15, 9);
    assert_int_equal(a.qs[4] & 15, 8);
    assert_int_equal(a.qs[5] & 15, 8);
    /* Largest magnitude positive: d = 8 / -8 = -1, codes 8 - x. */
    for (int j = 0; j < 32; j++)
        x[j] = 0.0f;
    x[7] = 8.0f;
    x[8] = -3.0f;
    K->from_float[NB_TYPE_Q4_0](x, &a, 32);
    assert_int_equal(a.d, 0xbc00);
    assert_int_equal(a.qs[7] & 15, 0);
    assert_int_equal(a.qs[8] & 15, 11);
    assert_int_equal(a.qs[9] & 15, 8);

    /* Q5_0: x = j - 16, extreme -16 at j = 0 -> d = 1, code j; elements
     * 16..31 have the fifth bit. */
    for (int j = 0; j < 32; j++)
        x[j] = (float)j - 16.0f;
    block_q5_0 c;
    K->from_float[NB_TYPE_Q5_0](x, &c, 32);
    assert_int_equal(c.d, 0x3c00);
    for (int j = 0; j < 16; j++)
        assert_int_equal(c.qs[j], j | j << 4);
    static const uint8_t qh_hi[4] = {0x00, 0x00, 0xff, 0xff};
    assert_memory_equal(c.qh, qh_hi, 4);

    /* Q4_1: x = j % 16 -> min 0, max 15, d = 1, m = 0, code j % 16. */
    for (int j = 0; j < 32; j++)
        x[j] = (float)(j % 16);
    block_q4_1 b;
    K->from_float[NB_TYPE_Q4_1](x, &b, 32);
    assert_int_equal(b.d, 0x3c00);
    assert_int_equal(b.m, 0x0000);
    for (int j = 0; j < 16; j++)
        assert_int_equal(b.qs[j], j | j << 4);
    /* Shifted by -3.5: m = -3.5, same codes. */
    for (int j = 0; j < 32; j++)
        x[j] = (float)(j % 16) - 3.5f;
    K->from_float[NB_TYPE_Q4_1](x, &b, 32);
    assert_int_equal(b.d, 0x3c00);
    assert_int_equal(b.m, 0xc300);
    for (int j = 0; j < 16; j++)
        assert_int_equal(b.qs[j], j | j << 4);

    /* Q5_1: x = j -> min 0, max 31, d = 1, code j. */
    for (int j = 0; j < 32; j++)
        x[j] = (float)j;
    block_q5_1 e;
    K->from_float[NB_TYPE_Q5_1](x, &e, 32);
    assert_int_equal(e.d, 0x3c00);
    assert_int_equal(e.m, 0x0000);
    for (int j = 0; j < 16; j++)
        assert_int_equal(e.qs[j], j | j << 4);
    assert_memory_equal(e.qh, qh_hi, 4);
}

static const int8_t iq4_levels[16] = {-127, -104, -83, -65, -49, -35, -22, -10,
                                      1,    13,   25,  38,  53,  69,  89,  113};

static void test_quant_iq4_nl(void **state)
{
    (void)state;
    float x[QK_K], out[QK_K];
    for (int p = 0; p < N_PATTERNS; p++) {
        for (int rep = 0; rep < 20; rep++) {
            make_input(x, QK_K, p);
            block_iq4_nl q[QK_K / QK4_NL];
            K->from_float[NB_TYPE_IQ4_NL](x, q, QK_K);
            K->to_float[NB_TYPE_IQ4_NL](q, out, QK_K);
            for (int b = 0; b < QK_K / 32; b++) {
                const float *xb = x + 32 * b;
                float amax;
                const float m = signed_max(xb, 32, &amax);
                const double d0 = m / -127.0; /* maps m onto level -127 */
                double sqx = 0, sq2 = 0;
                for (int j = 0; j < 32; j++) {
                    const int idx = j < 16 ? q[b].qs[j] & 15 : q[b].qs[j - 16] >> 4;
                    /* The index is a nearest level to x/d0. */
                    const double v = xb[j] / d0;
                    for (int k = 0; k < 16; k++)
                        if (fabs(v - iq4_levels[k]) < fabs(v - iq4_levels[idx]) - 1e-4)
                            fail_msg("iq4_nl elem %d: x/d0 = %g got level %d, %d is nearer",
                                     32 * b + j, v, iq4_levels[idx], iq4_levels[k]);
                    const double w = (double)xb[j] * xb[j];
                    sqx += w * iq4_levels[idx] * xb[j];
                    sq2 += w * iq4_levels[idx] * iq4_levels[idx];
                    CHECK_EQ_F(out[32 * b + j], nbi_fp16_to_fp32(q[b].d) * iq4_levels[idx],
                               "iq4_nl dequant elem %d", 32 * b + j);
                }
                /* The stored scale is the x^2-weighted least-squares fit. */
                const double dls = sqx / sq2;
                CHECK_NEAR(nbi_fp16_to_fp32(q[b].d), dls, fabs(dls) * 2 * FP16_REL + FP16_ABS,
                           "iq4_nl scale, pattern %d block %d", p, b);
                /* And the result is a fair approximation of the input. */
                double err2 = 0, x2 = 0;
                for (int j = 0; j < 32; j++) {
                    err2 += ((double)out[32 * b + j] - xb[j]) * ((double)out[32 * b + j] - xb[j]);
                    x2 += (double)xb[j] * xb[j];
                }
                assert_true(err2 <= 0.05 * x2);
            }
        }
    }
}

static void test_quant_iq4_nl_known(void **state)
{
    (void)state;
    float x[32];
    memset(x, 0, sizeof x);
    x[0] = -127.0f;  /* the extreme: d0 = 1, index 0 */
    x[1] = -4.5f;    /* halfway between -10 and 1: the upper level, 1 */
    x[2] = -115.5f;  /* halfway between -127 and -104: -104 */
    x[3] = 113.0f;   /* the top level */
    x[4] = -4.6f;    /* just below the halfway point: -10 */
    x[5] = 120.0f;   /* beyond the top: 113 */
    block_iq4_nl q;
    K->from_float[NB_TYPE_IQ4_NL](x, &q, 32);
    static const int want[6] = {0, 8, 1, 15, 7, 15};
    for (int j = 0; j < 6; j++)
        assert_int_equal(q.qs[j] & 15, want[j]);
    for (int j = 6; j < 16; j++)
        assert_int_equal(q.qs[j] & 15, 8); /* 0 -> nearest level is 1 */
    for (int j = 0; j < 16; j++)
        assert_int_equal(q.qs[j] >> 4, 8);
    /* Scale: sum(x^2 * q * x) / sum(x^2 * q^2) over the nonzero elements. */
    const double xs[6] = {-127, -4.5, -115.5, 113, -4.6, 120};
    const double ls[6] = {-127, 1, -104, 113, -10, 113};
    double num = 0, den = 0;
    for (int j = 0; j < 6; j++) {
        num += xs[j] * xs[j] * ls[j] * xs[j];
        den += xs[j] * xs[j] * ls[j] * ls[j];
    }
    CHECK_NEAR(nbi_fp16_to_fp32(q.d), num / den, num / den * 2 * FP16_REL, "iq4_nl scale");
    /* The sign of the extreme does not matter: negating the input negates
     * the scale and keeps the indices. */
    for (int j = 0; j < 32; j++)
        x[j] = -x[j];
    block_iq4_nl qn;
    K->from_float[NB_TYPE_IQ4_NL](x, &qn, 32);
    assert_memory_equal(qn.qs, q.qs, sizeof q.qs);
    assert_int_equal(qn.d, q.d ^ 0x8000);
}

static void test_quant_zero_input(void **state)
{
    (void)state;
    float x[QK_K], out[QK_K];
    memset(x, 0, sizeof x);
    static const int types[] = {NB_TYPE_Q8_0, NB_TYPE_Q8_1, NB_TYPE_Q8_K, NB_TYPE_Q4_0,
                                NB_TYPE_Q4_1, NB_TYPE_Q5_0, NB_TYPE_Q5_1, NB_TYPE_IQ4_NL,
                                NB_TYPE_F16,  NB_TYPE_BF16, NB_TYPE_F32};
    uint8_t buf[QK_K * 4];
    for (size_t i = 0; i < sizeof types / sizeof types[0]; i++) {
        const int t = types[i];
        memset(buf, 0xa5, sizeof buf);
        K->from_float[t](x, buf, QK_K);
        K->to_float[t](buf, out, QK_K);
        for (int j = 0; j < QK_K; j++)
            CHECK_EQ_F(out[j], 0.0f, "%s zero input elem %d", nb_type_name(t), j);
    }
    block_q8_K qk;
    memset(&qk, 0xa5, sizeof qk);
    K->from_float[NB_TYPE_Q8_K](x, &qk, QK_K);
    CHECK_EQ_F(qk.d, 0.0f, "q8_K zero d");
    for (int g = 0; g < QK_K / 16; g++)
        assert_int_equal(qk.bsums[g], 0);
    block_q8_1 q1;
    K->from_float[NB_TYPE_Q8_1](x, &q1, QK8_1);
    assert_int_equal(q1.d, 0);
    assert_int_equal(q1.s, 0);
}

/* ------------------------------------------------------------------ */

int main(void)
{
    /* Before anything asks for a table: the reference must be chosen. */
    setenv("NIBBLE_KERNELS", "ref", 1);
    K = nbi_kernels_ref();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_dispatch),
        cmocka_unit_test(test_fp16_exhaustive),
        cmocka_unit_test(test_fp16_narrowing),
        cmocka_unit_test(test_bf16),
        cmocka_unit_test(test_type_names),
        cmocka_unit_test(test_type_supported),
        cmocka_unit_test(test_row_size),
        cmocka_unit_test(test_known_float_types),
        cmocka_unit_test(test_known_q4_0),
        cmocka_unit_test(test_known_q4_1),
        cmocka_unit_test(test_known_q5_0),
        cmocka_unit_test(test_known_q5_1),
        cmocka_unit_test(test_known_q8),
        cmocka_unit_test(test_known_iq4_nl),
        cmocka_unit_test(test_known_q2_K),
        cmocka_unit_test(test_known_q3_K),
        cmocka_unit_test(test_known_q4_K),
        cmocka_unit_test(test_known_q5_K),
        cmocka_unit_test(test_known_q6_K),
        cmocka_unit_test(test_vec_dot_random),
        cmocka_unit_test(test_vec_dot_zero_scales),
        cmocka_unit_test(test_vec_dot_extremes),
        cmocka_unit_test(test_vec_dot_structure),
        cmocka_unit_test(test_vec_dot_lane_order),
        cmocka_unit_test(test_quant_q8),
        cmocka_unit_test(test_quant_q8_known),
        cmocka_unit_test(test_quant_q8_degenerate),
        cmocka_unit_test(test_quant_small_blocks),
        cmocka_unit_test(test_quant_small_blocks_known),
        cmocka_unit_test(test_quant_iq4_nl),
        cmocka_unit_test(test_quant_iq4_nl_known),
        cmocka_unit_test(test_quant_zero_input),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
