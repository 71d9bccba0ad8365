/*
 * test_sampler.c - the token sampler (penalties, top-k, top-p, min-p,
 * temperature, seeding) and the stop-string matcher.
 *
 * Expected values come from the test's own arithmetic: a naive reference
 * (full sort, double-precision softmax, brute-force string search), never
 * from running the library.  Random inputs use the test's own generator so
 * they do not share code with the sampler's RNG.
 */
#include "testutil.h"

#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "nibble.h"

/* ------------------------------------------------------------------ helpers */

/* A test-local generator (64-bit LCG, high bits), deliberately different
 * from the library's. */
static uint64_t trand_state = 12345;
static uint32_t trand(void)
{
    trand_state = trand_state * UINT64_C(6364136223846793005) + UINT64_C(1442695040888963407);
    return (uint32_t)(trand_state >> 33);
}
static double trand_unit(void)
{
    return trand() / 2147483648.0;
}

static nb_sampler_params off_params(float temp, uint64_t seed)
{
    nb_sampler_params p = nb_sampler_default_params();
    p.temp = temp;
    p.top_k = 0;
    p.top_p = 1.0f;
    p.min_p = 0.0f;
    p.seed = seed;
    return p;
}

static nb_sampler *make(const nb_sampler_params *p, int n_vocab)
{
    nb_sampler *s = NULL;
    assert_int_equal(nb_sampler_new(p, n_vocab, &s), NB_OK);
    assert_non_null(s);
    return s;
}

static nb_token sample_once(const nb_sampler_params *p, const float *logits, int n)
{
    nb_sampler *s = make(p, n);
    nb_token t = nb_sampler_sample(s, logits);
    nb_sampler_free(s);
    return t;
}

/* Draw `draws` tokens, counting them; every id must be in range. */
static void histogram(nb_sampler *s, const float *logits, int n, int draws, long *hist)
{
    memset(hist, 0, (size_t)n * sizeof *hist);
    for (int i = 0; i < draws; i++) {
        nb_token t = nb_sampler_sample(s, logits);
        assert_true(t >= 0 && t < n);
        hist[t]++;
    }
}

static void softmax_ref(const float *logits, int n, double temp, double *p)
{
    double mx = -INFINITY, z = 0;
    for (int i = 0; i < n; i++)
        if (logits[i] > mx)
            mx = logits[i];
    for (int i = 0; i < n; i++)
        z += p[i] = exp((logits[i] - mx) / temp);
    for (int i = 0; i < n; i++)
        p[i] /= z;
}

/* Pearson chi-square against expected probabilities, compared with the
 * 1e-4 upper quantile (Wilson-Hilferty approximation). */
static void assert_chi_square(const long *hist, const double *p, int n, long draws)
{
    double x2 = 0;
    int df = -1;
    for (int i = 0; i < n; i++) {
        if (p[i] <= 0) {
            assert_int_equal(hist[i], 0);
            continue;
        }
        double e = p[i] * (double)draws;
        x2 += (hist[i] - e) * (hist[i] - e) / e;
        df++;
    }
    assert_true(df >= 1);
    double a = 2.0 / (9.0 * df), z = 3.719;
    double crit = df * pow(1 - a + z * sqrt(a), 3);
    if (x2 > crit)
        print_error("chi-square %.2f > %.2f (df %d)\n", x2, crit, df);
    assert_true(x2 <= crit);
}

static int argmax_ref(const float *l, int n)
{
    int b = 0;
    for (int i = 1; i < n; i++)
        if (l[i] > l[b])
            b = i;
    return b;
}

/* ------------------------------------------------------------------ params */

static void test_default_params(void **state)
{
    (void)state;
    nb_sampler_params p = nb_sampler_default_params();
    assert_float_equal(p.temp, 0.8, 1e-6);
    assert_int_equal(p.top_k, 40);
    assert_float_equal(p.top_p, 0.95, 1e-6);
    assert_float_equal(p.min_p, 0.05, 1e-6);
    assert_float_equal(p.repeat_penalty, 1.0, 0);
    assert_int_equal(p.repeat_last_n, 64);
    assert_float_equal(p.freq_penalty, 0.0, 0);
    assert_float_equal(p.presence_penalty, 0.0, 0);
    assert_true(p.seed == UINT64_C(0xC0FFEE));
    char err[200] = "untouched";
    assert_int_equal(nb_sampler_params_check(&p, err, sizeof err), NB_OK);
}

struct bad_case {
    const char *name; /* must appear in the message */
    void (*set)(nb_sampler_params *);
};

static void b_temp_neg(nb_sampler_params *p) { p->temp = -0.1f; }
static void b_temp_nan(nb_sampler_params *p) { p->temp = NAN; }
static void b_temp_inf(nb_sampler_params *p) { p->temp = INFINITY; }
static void b_topk_neg(nb_sampler_params *p) { p->top_k = -1; }
static void b_topp_zero(nb_sampler_params *p) { p->top_p = 0.0f; }
static void b_topp_neg(nb_sampler_params *p) { p->top_p = -0.5f; }
static void b_topp_big(nb_sampler_params *p) { p->top_p = 1.01f; }
static void b_topp_nan(nb_sampler_params *p) { p->top_p = NAN; }
static void b_minp_neg(nb_sampler_params *p) { p->min_p = -0.01f; }
static void b_minp_big(nb_sampler_params *p) { p->min_p = 1.5f; }
static void b_minp_nan(nb_sampler_params *p) { p->min_p = NAN; }
static void b_rp_zero(nb_sampler_params *p) { p->repeat_penalty = 0.0f; }
static void b_rp_neg(nb_sampler_params *p) { p->repeat_penalty = -1.0f; }
static void b_rp_nan(nb_sampler_params *p) { p->repeat_penalty = NAN; }
static void b_rp_inf(nb_sampler_params *p) { p->repeat_penalty = INFINITY; }
static void b_last_neg(nb_sampler_params *p) { p->repeat_last_n = -1; }
static void b_last_big(nb_sampler_params *p) { p->repeat_last_n = 1 << 30; }
static void b_freq_nan(nb_sampler_params *p) { p->freq_penalty = NAN; }
static void b_freq_inf(nb_sampler_params *p) { p->freq_penalty = -INFINITY; }
static void b_pres_nan(nb_sampler_params *p) { p->presence_penalty = NAN; }
static void b_pres_inf(nb_sampler_params *p) { p->presence_penalty = INFINITY; }

static void test_params_check_rejects(void **state)
{
    (void)state;
    static const struct bad_case cases[] = {
        {"temp", b_temp_neg},           {"temp", b_temp_nan},
        {"temp", b_temp_inf},           {"top_k", b_topk_neg},
        {"top_p", b_topp_zero},         {"top_p", b_topp_neg},
        {"top_p", b_topp_big},          {"top_p", b_topp_nan},
        {"min_p", b_minp_neg},          {"min_p", b_minp_big},
        {"min_p", b_minp_nan},          {"repeat_penalty", b_rp_zero},
        {"repeat_penalty", b_rp_neg},   {"repeat_penalty", b_rp_nan},
        {"repeat_penalty", b_rp_inf},   {"repeat_last_n", b_last_neg},
        {"repeat_last_n", b_last_big},  {"freq_penalty", b_freq_nan},
        {"freq_penalty", b_freq_inf},   {"presence_penalty", b_pres_nan},
        {"presence_penalty", b_pres_inf},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        nb_sampler_params p = nb_sampler_default_params();
        cases[i].set(&p);
        char err[256] = "";
        assert_int_equal(nb_sampler_params_check(&p, err, sizeof err), NB_ERR_INVALID);
        if (!strstr(err, cases[i].name))
            print_error("case %zu: message \"%s\" lacks \"%s\"\n", i, err, cases[i].name);
        assert_non_null(strstr(err, cases[i].name));
        /* The message gives the valid range, e.g. "[0, 1]" or ">= 0". */
        assert_true(strchr(err, '[') || strchr(err, '(') || strchr(err, '>'));
        /* No buffer, or a tiny one, is fine. */
        assert_int_equal(nb_sampler_params_check(&p, NULL, 0), NB_ERR_INVALID);
        char tiny[4] = "xyz";
        assert_int_equal(nb_sampler_params_check(&p, tiny, sizeof tiny), NB_ERR_INVALID);
        assert_true(strlen(tiny) < sizeof tiny);
        nb_sampler *s = (nb_sampler *)&p; /* must be overwritten with NULL */
        assert_int_equal(nb_sampler_new(&p, 10, &s), NB_ERR_INVALID);
        assert_null(s);
    }
    assert_int_equal(nb_sampler_params_check(NULL, NULL, 0), NB_ERR_INVALID);
}

static void test_params_check_accepts_bounds(void **state)
{
    (void)state;
    nb_sampler_params p = nb_sampler_default_params();
    p.temp = 0.0f;
    p.top_k = 0;
    p.top_p = 1.0f;
    p.min_p = 1.0f;
    p.repeat_last_n = 0;
    p.freq_penalty = -2.0f;
    p.presence_penalty = -2.0f;
    assert_int_equal(nb_sampler_params_check(&p, NULL, 0), NB_OK);
    p.min_p = 0.0f;
    p.top_p = 1e-6f;
    p.temp = 1e6f;
    p.repeat_penalty = 1e-3f;
    p.repeat_last_n = 4096;
    assert_int_equal(nb_sampler_params_check(&p, NULL, 0), NB_OK);
}

static void test_new_invalid(void **state)
{
    (void)state;
    nb_sampler_params p = nb_sampler_default_params();
    nb_sampler *s = NULL;
    assert_int_equal(nb_sampler_new(&p, 0, &s), NB_ERR_INVALID);
    assert_null(s);
    assert_int_equal(nb_sampler_new(&p, -5, &s), NB_ERR_INVALID);
    assert_null(s);
    assert_int_equal(nb_sampler_new(&p, 10, NULL), NB_ERR_INVALID);
    /* NULL params mean the defaults. */
    assert_int_equal(nb_sampler_new(NULL, 10, &s), NB_OK);
    assert_non_null(s);
    nb_sampler_free(s);
    nb_sampler_free(NULL);
    /* Calls on NULL do nothing harmful. */
    nb_sampler_accept(NULL, 1);
    nb_sampler_reset(NULL, 1);
    float l[2] = {0, 1};
    assert_true(nb_sampler_sample(NULL, l) < 0);
}

/* ------------------------------------------------------------------ greedy */

static void test_greedy_argmax_and_ties(void **state)
{
    (void)state;
    nb_sampler_params p = nb_sampler_default_params();
    p.temp = 0.0f;
    const float a[6] = {0.5f, -1.0f, 3.25f, 2.0f, 3.0f, -7.0f};
    assert_int_equal(sample_once(&p, a, 6), 2);
    const float ties[6] = {1.0f, 4.0f, 2.0f, 4.0f, 4.0f, 0.0f};
    assert_int_equal(sample_once(&p, ties, 6), 1);
    const float all_equal[5] = {7, 7, 7, 7, 7};
    assert_int_equal(sample_once(&p, all_equal, 5), 0);

    /* Greedy consumes no randomness and ignores the seed. */
    nb_sampler *s = make(&p, 6);
    for (int i = 0; i < 50; i++)
        assert_int_equal(nb_sampler_sample(s, a), 2);
    nb_sampler_free(s);

    /* Random vectors with many ties, against the reference argmax. */
    float l[64];
    for (int rep = 0; rep < 200; rep++) {
        for (int i = 0; i < 64; i++)
            l[i] = (float)(trand() % 6);
        p.seed = trand();
        assert_int_equal(sample_once(&p, l, 64), argmax_ref(l, 64));
    }
}

static void test_top_k_1_is_greedy(void **state)
{
    (void)state;
    const float temps[] = {0.05f, 0.8f, 1.0f, 5.0f, 1000.0f};
    float l[100];
    nb_sampler_params g = nb_sampler_default_params();
    g.temp = 0.0f;
    for (size_t ti = 0; ti < sizeof temps / sizeof temps[0]; ti++) {
        nb_sampler_params p = nb_sampler_default_params();
        p.top_k = 1;
        p.top_p = 1.0f;
        p.min_p = 0.0f;
        p.temp = temps[ti];
        p.seed = 77 + ti;
        nb_sampler *s = make(&p, 100);
        nb_sampler *gs = make(&g, 100);
        for (int rep = 0; rep < 200; rep++) {
            for (int i = 0; i < 100; i++)
                l[i] = (float)(trand() % 8) * 0.5f; /* ties are common */
            nb_token want = argmax_ref(l, 100);
            assert_int_equal(nb_sampler_sample(s, l), want);
            assert_int_equal(nb_sampler_sample(gs, l), want);
        }
        nb_sampler_free(s);
        nb_sampler_free(gs);
    }
}

static void test_does_not_modify_logits(void **state)
{
    (void)state;
    float l[300], copy[300];
    for (int i = 0; i < 300; i++)
        l[i] = (float)(trand_unit() * 10 - 5);
    l[7] = NAN;
    l[8] = INFINITY;
    l[9] = -INFINITY;
    memcpy(copy, l, sizeof l);
    nb_sampler_params p = nb_sampler_default_params();
    p.repeat_penalty = 1.3f;
    p.freq_penalty = 0.2f;
    nb_sampler *s = make(&p, 300);
    for (int i = 0; i < 20; i++)
        nb_sampler_accept(s, i);
    for (int i = 0; i < 20; i++)
        (void)nb_sampler_sample(s, l);
    assert_memory_equal(l, copy, sizeof l);
    nb_sampler_free(s);
}

/* ------------------------------------------------------------------ seeds */

static void draw_seq(nb_sampler *s, const float *l, int n, nb_token *out, int count)
{
    for (int i = 0; i < count; i++) {
        out[i] = nb_sampler_sample(s, l);
        assert_true(out[i] >= 0 && out[i] < n);
    }
}

static void test_seed_reproducible(void **state)
{
    (void)state;
    enum { N = 50, D = 1000 };
    float l[N];
    for (int i = 0; i < N; i++)
        l[i] = (float)(trand_unit() * 2);
    static nb_token a[D], b[D], c[D], d[D];
    nb_sampler_params p = off_params(1.0f, 42);
    nb_sampler *s1 = make(&p, N), *s2 = make(&p, N);
    draw_seq(s1, l, N, a, D);
    draw_seq(s2, l, N, b, D);
    assert_memory_equal(a, b, sizeof a);

    p.seed = 43;
    nb_sampler *s3 = make(&p, N);
    draw_seq(s3, l, N, c, D);
    int differ = 0;
    for (int i = 0; i < D; i++)
        differ += a[i] != c[i];
    assert_true(differ > D / 2); /* ~98% of draws differ for 50 choices */

    /* Reset reseeds: s3 now repeats s1's sequence. */
    nb_sampler_reset(s3, 42);
    draw_seq(s3, l, N, d, D);
    assert_memory_equal(a, d, sizeof a);

    /* The default chain (top-k 40, top-p, min-p) is reproducible too. */
    nb_sampler_params dp = nb_sampler_default_params();
    nb_sampler *s4 = make(&dp, N), *s5 = make(&dp, N);
    draw_seq(s4, l, N, a, D);
    draw_seq(s5, l, N, b, D);
    assert_memory_equal(a, b, sizeof a);
    nb_sampler_free(s1);
    nb_sampler_free(s2);
    nb_sampler_free(s3);
    nb_sampler_free(s4);
    nb_sampler_free(s5);
}

/* ------------------------------------------------------------------ distributions */

static void test_distribution_matches_softmax(void **state)
{
    (void)state;
    enum { N = 8, D = 200000 };
    const float l[N] = {1.0f, 2.0f, 0.5f, -1.0f, 3.0f, 0.0f, 1.5f, -2.0f};
    long hist[N];
    double p[N];
    const float temps[] = {1.0f, 0.5f, 2.0f};
    for (size_t ti = 0; ti < 3; ti++) {
        nb_sampler_params sp = off_params(temps[ti], 1000 + ti);
        nb_sampler *s = make(&sp, N);
        histogram(s, l, N, D, hist);
        softmax_ref(l, N, temps[ti], p);
        assert_chi_square(hist, p, N, D);
        nb_sampler_free(s);
    }
}

static void test_temperature_sharpens(void **state)
{
    (void)state;
    enum { N = 5, D = 20000 };
    const float l[N] = {1.0f, 1.5f, 0.0f, 2.0f, 1.2f};
    long hist[N];
    const float temps[] = {4.0f, 1.0f, 0.25f, 0.05f};
    long prev = 0;
    for (int ti = 0; ti < 4; ti++) {
        nb_sampler_params sp = off_params(temps[ti], 5);
        nb_sampler *s = make(&sp, N);
        histogram(s, l, N, D, hist);
        assert_true(hist[3] > prev); /* the argmax gains mass */
        prev = hist[3];
        nb_sampler_free(s);
    }
    /* At temp 0.05 the runner-up is 10 logits per unit away: ~e^-10. */
    assert_true(prev > D * 99 / 100);
}

/* Logits with probabilities 1/2, 1/4, 1/8, 1/16, 1/16. */
static void halving_logits(float *l)
{
    const double p[5] = {0.5, 0.25, 0.125, 0.0625, 0.0625};
    for (int i = 0; i < 5; i++)
        l[i] = (float)log(p[i]);
}

static void test_top_p_nucleus(void **state)
{
    (void)state;
    enum { D = 30000 };
    /* A sixth token of negligible weight (e^-40) lets top_k = 5 run the
     * partial-selection path without changing the nucleus. */
    float l[6];
    halving_logits(l);
    l[5] = -40.0f;
    long hist[6];
    /* cumulative: 0.5, 0.75, 0.875, 0.9375, 1; cuts kept clear of them */
    struct {
        float top_p;
        int keep;
    } cases[] = {{0.3f, 1}, {0.49f, 1}, {0.7f, 2}, {0.76f, 3}, {0.9f, 4}, {0.95f, 5}};
    for (size_t ci = 0; ci < sizeof cases / sizeof cases[0]; ci++) {
        for (int with_k = 0; with_k < 2; with_k++) {
            nb_sampler_params sp = off_params(1.0f, 9 + ci);
            sp.top_p = cases[ci].top_p;
            sp.top_k = with_k ? 5 : 0;
            if (with_k == 0 && ci % 2)
                sp.top_k = 4000; /* larger than the vocabulary: off */
            nb_sampler *s = make(&sp, 6);
            histogram(s, l, 6, D, hist);
            /* Within the nucleus the proportions are renormalised. */
            double p[6] = {0}, z = 0;
            for (int i = 0; i < cases[ci].keep; i++)
                z += exp(l[i]);
            for (int i = 0; i < cases[ci].keep; i++)
                p[i] = exp(l[i]) / z;
            if (cases[ci].keep == 1)
                assert_int_equal(hist[0], D);
            else
                assert_chi_square(hist, p, 6, D);
            nb_sampler_free(s);
        }
    }
}

static void test_top_p_ties_large_vocab(void **state)
{
    (void)state;
    /* 50000 tokens: ten at logit 10 (ids 100..109), the rest at 0.  With
     * K candidates left by top-k each high token has p = e^10 / (10 e^10 +
     * K - 10): ~0.0815 for K = 50000 (a 0.5 nucleus takes seven of them)
     * and ~0.0991 for K = 2000 (six).  Equal logits go lowest id first. */
    enum { N = 50000 };
    static float l[N];
    for (int i = 0; i < N; i++)
        l[i] = 0.0f;
    for (int i = 100; i < 110; i++)
        l[i] = 10.0f;
    for (int with_k = 0; with_k < 2; with_k++) {
        int K = with_k ? 2000 : N;
        double ph = exp(10.0) / (10 * exp(10.0) + (K - 10));
        int need = (int)ceil(0.5 / ph);
        assert_true(fabs(need * ph - 0.5) > 1e-3 && fabs((need - 1) * ph - 0.5) > 1e-3);
        assert_int_equal(need, with_k ? 6 : 7);
        nb_sampler_params sp = off_params(1.0f, 3);
        sp.top_p = 0.5f;
        sp.top_k = with_k ? K : 0;
        nb_sampler *s = make(&sp, N);
        int seen[10] = {0};
        for (int i = 0; i < 600; i++) {
            nb_token t = nb_sampler_sample(s, l);
            assert_true(t >= 100 && t < 100 + need);
            seen[t - 100] = 1;
        }
        for (int i = 0; i < need; i++)
            assert_true(seen[i]);
        nb_sampler_free(s);
    }
}

static void test_min_p_cut(void **state)
{
    (void)state;
    enum { D = 20000 };
    /* Ratios to the best: 1, 0.5, 0.25, 0.2, 0.1, 0.01 */
    const double ratio[6] = {1, 0.5, 0.25, 0.2, 0.1, 0.01};
    float l[7];
    for (int i = 0; i < 6; i++)
        l[i] = (float)log(ratio[i]) + 3.0f;
    l[6] = -40.0f; /* so that top_k = 6 really selects */
    long hist[7];
    const struct {
        float min_p;
        int keep;
    } cases[] = {{0.3f, 2}, {0.22f, 3}, {0.15f, 4}, {0.05f, 5}, {0.001f, 6}, {1.0f, 1}};
    for (size_t ci = 0; ci < sizeof cases / sizeof cases[0]; ci++) {
        for (int with_k = 0; with_k < 2; with_k++) {
            nb_sampler_params sp = off_params(1.0f, 11 + ci);
            sp.min_p = cases[ci].min_p;
            sp.top_k = with_k ? 6 : 0;
            nb_sampler *s = make(&sp, 7);
            histogram(s, l, 7, D, hist);
            double p[7] = {0}, z = 0;
            for (int i = 0; i < cases[ci].keep; i++)
                z += ratio[i];
            for (int i = 0; i < cases[ci].keep; i++)
                p[i] = ratio[i] / z;
            if (cases[ci].keep == 1)
                assert_int_equal(hist[0], D);
            else
                assert_chi_square(hist, p, 7, D);
            nb_sampler_free(s);
        }
    }
}

static void test_stage_order(void **state)
{
    (void)state;
    /* Probabilities 0.4, 0.3, 0.2, 0.1. */
    float l[4] = {(float)log(0.4), (float)log(0.3), (float)log(0.2), (float)log(0.1)};
    long hist[4];
    /* top-k before top-p: after k = 2 the renormalised probabilities are
     * 4/7 and 3/7, so top_p 0.5 keeps token 0 alone (on the full set it
     * would keep two). */
    nb_sampler_params sp = off_params(1.0f, 1);
    sp.top_k = 2;
    sp.top_p = 0.5f;
    nb_sampler *s = make(&sp, 4);
    histogram(s, l, 4, 2000, hist);
    assert_int_equal(hist[0], 2000);
    nb_sampler_free(s);

    /* Temperature after top-p: a hot temperature flattens the draw but
     * not the nucleus, which stays {0, 1} (cumulative 0.4, 0.7). */
    sp = off_params(100.0f, 2);
    sp.top_p = 0.5f;
    s = make(&sp, 4);
    histogram(s, l, 4, 20000, hist);
    assert_int_equal(hist[2] + hist[3], 0);
    double p[4] = {0};
    double w0 = exp(log(0.4) / 100), w1 = exp(log(0.3) / 100);
    p[0] = w0 / (w0 + w1);
    p[1] = w1 / (w0 + w1);
    assert_chi_square(hist, p, 4, 20000);
    nb_sampler_free(s);

    /* Temperature after min-p: a ratio of 0.25 survives min_p 0.2 even at
     * a cold temperature where it would not (0.25^(1/0.5) = 0.0625). */
    sp = off_params(0.5f, 3);
    sp.min_p = 0.2f;
    const float m[3] = {0.0f, (float)log(0.25), (float)log(0.1)};
    s = make(&sp, 3);
    histogram(s, m, 3, 40000, hist);
    assert_true(hist[1] > 0);
    assert_int_equal(hist[2], 0);
    double q[3] = {1.0 / (1 + 0.0625), 0.0625 / (1 + 0.0625), 0};
    assert_chi_square(hist, q, 3, 40000);
    nb_sampler_free(s);
}

/* ------------------------------------------------------------------ penalties */

static nb_token greedy_with_history(nb_sampler_params p, const float *l, int n,
                                    const nb_token *hist, int nh)
{
    p.temp = 0.0f;
    nb_sampler *s = make(&p, n);
    for (int i = 0; i < nh; i++)
        nb_sampler_accept(s, hist[i]);
    nb_token t = nb_sampler_sample(s, l);
    nb_sampler_free(s);
    return t;
}

static void test_repeat_penalty(void **state)
{
    (void)state;
    nb_sampler_params p = nb_sampler_default_params();
    p.repeat_penalty = 1.2f;
    const nb_token h0[1] = {0};
    /* Positive logit: 2.0 / 1.2 = 1.67 < 1.8. */
    const float pos[3] = {2.0f, 1.8f, -5.0f};
    assert_int_equal(greedy_with_history(p, pos, 3, NULL, 0), 0);
    assert_int_equal(greedy_with_history(p, pos, 3, h0, 1), 1);
    /* Negative logit is multiplied: -1.0 * 1.2 = -1.2 < -1.1 (dividing
     * would give -0.83 and keep token 0). */
    const float neg[2] = {-1.0f, -1.1f};
    assert_int_equal(greedy_with_history(p, neg, 2, NULL, 0), 0);
    assert_int_equal(greedy_with_history(p, neg, 2, h0, 1), 1);
    /* Repeats do not compound the repeat penalty. */
    const nb_token h000[3] = {0, 0, 0};
    const float close[2] = {2.0f, 1.6f}; /* 2/1.2 = 1.67 > 1.6; 2/1.728 < 1.6 */
    assert_int_equal(greedy_with_history(p, close, 2, h000, 3), 0);
    /* A penalty below 1 boosts instead. */
    p.repeat_penalty = 0.5f;
    const nb_token h1[1] = {1};
    assert_int_equal(greedy_with_history(p, pos, 3, h1, 1), 1);
    /* repeat_last_n = 0 turns every penalty off. */
    p.repeat_penalty = 1.2f;
    p.repeat_last_n = 0;
    assert_int_equal(greedy_with_history(p, pos, 3, h0, 1), 0);
}

static void test_frequency_presence(void **state)
{
    (void)state;
    nb_sampler_params p = nb_sampler_default_params();
    const float l[3] = {3.0f, 2.0f, 1.5f};
    const nb_token once[1] = {0}, twice[2] = {0, 0};
    /* Frequency: 3 - 0.6 * count. */
    p.freq_penalty = 0.6f;
    assert_int_equal(greedy_with_history(p, l, 3, once, 1), 0);  /* 2.4 */
    assert_int_equal(greedy_with_history(p, l, 3, twice, 2), 1); /* 1.8 */
    /* Presence: subtracted once whatever the count. */
    p.freq_penalty = 0.0f;
    p.presence_penalty = 0.9f;
    const nb_token many[5] = {0, 0, 0, 0, 0};
    assert_int_equal(greedy_with_history(p, l, 3, many, 5), 0); /* 2.1 */
    p.presence_penalty = 1.1f;
    assert_int_equal(greedy_with_history(p, l, 3, once, 1), 1); /* 1.9 */
    /* Negative values reward repeats. */
    p.presence_penalty = -2.0f;
    const nb_token h2[1] = {2};
    assert_int_equal(greedy_with_history(p, l, 3, h2, 1), 2); /* 3.5 */

    /* All three together, llama.cpp's formula:
     * (2.0 / 2) - 2 * 0.1 - 0.3 = 0.5 against 0.45 and 0.55. */
    nb_sampler_params q = nb_sampler_default_params();
    q.repeat_penalty = 2.0f;
    q.freq_penalty = 0.1f;
    q.presence_penalty = 0.3f;
    const nb_token h[2] = {0, 0};
    const float a[2] = {2.0f, 0.45f}, b[2] = {2.0f, 0.55f};
    assert_int_equal(greedy_with_history(q, a, 2, h, 2), 0);
    assert_int_equal(greedy_with_history(q, b, 2, h, 2), 1);
}

static void test_penalty_window_and_reset(void **state)
{
    (void)state;
    nb_sampler_params p = nb_sampler_default_params();
    p.temp = 0.0f;
    p.repeat_penalty = 2.0f;
    p.repeat_last_n = 2;
    const float l[4] = {2.0f, 1.5f, 0.0f, 0.0f};
    nb_sampler *s = make(&p, 4);
    nb_sampler_accept(s, 0);
    assert_int_equal(nb_sampler_sample(s, l), 1); /* 0 penalised: 1.0 */
    nb_sampler_accept(s, 2);
    assert_int_equal(nb_sampler_sample(s, l), 1); /* window {0, 2} */
    nb_sampler_accept(s, 3);
    assert_int_equal(nb_sampler_sample(s, l), 0); /* window {2, 3}: 0 left */
    nb_sampler_accept(s, 0);
    nb_sampler_accept(s, 0);
    assert_int_equal(nb_sampler_sample(s, l), 1);
    /* Ids outside the vocabulary are ignored, not recorded. */
    nb_sampler_accept(s, -1);
    nb_sampler_accept(s, 4);
    nb_sampler_accept(s, 1 << 30);
    assert_int_equal(nb_sampler_sample(s, l), 1); /* window still {0, 0} */
    nb_sampler_reset(s, 5);
    assert_int_equal(nb_sampler_sample(s, l), 0); /* history forgotten */
    /* Accepting over a long run keeps the window exact. */
    for (int i = 0; i < 1001; i++)
        nb_sampler_accept(s, i % 2 ? 2 : 3);
    assert_int_equal(nb_sampler_sample(s, l), 0);
    nb_sampler_accept(s, 0);
    assert_int_equal(nb_sampler_sample(s, l), 1);
    nb_sampler_free(s);

    /* Penalties act in random mode too (top_k 1 makes it checkable). */
    nb_sampler_params r = nb_sampler_default_params();
    r.top_k = 1;
    r.temp = 1.5f;
    r.repeat_penalty = 2.0f;
    s = make(&r, 4);
    assert_int_equal(nb_sampler_sample(s, l), 0);
    nb_sampler_accept(s, 0);
    assert_int_equal(nb_sampler_sample(s, l), 1);
    nb_sampler_free(s);
}

/* ------------------------------------------------------------------ NaN / inf */

static void test_nan_inf_logits(void **state)
{
    (void)state;
    nb_sampler_params g = nb_sampler_default_params();
    g.temp = 0.0f;
    nb_sampler_params r = nb_sampler_default_params();
    nb_sampler_params o = off_params(1.0f, 8);

    const float nan_first[4] = {NAN, 1.0f, 2.0f, NAN};
    assert_int_equal(sample_once(&g, nan_first, 4), 2);
    for (int i = 0; i < 200; i++) {
        r.seed = (uint64_t)i;
        o.seed = (uint64_t)i;
        nb_token a = sample_once(&r, nan_first, 4), b = sample_once(&o, nan_first, 4);
        assert_true(a == 1 || a == 2);
        assert_true(b == 1 || b == 2);
    }

    const float all_nan[3] = {NAN, NAN, NAN};
    const float all_ninf[3] = {-INFINITY, -INFINITY, -INFINITY};
    const float mixed_bad[3] = {-INFINITY, NAN, -INFINITY};
    assert_int_equal(sample_once(&g, all_nan, 3), 0);
    assert_int_equal(sample_once(&r, all_nan, 3), 0);
    assert_int_equal(sample_once(&o, all_ninf, 3), 0);
    assert_int_equal(sample_once(&r, mixed_bad, 3), 0);

    /* +inf wins; two of them split by lowest id in greedy, both possible
     * at random. */
    const float pinf[4] = {1e30f, INFINITY, 3.0f, INFINITY};
    assert_int_equal(sample_once(&g, pinf, 4), 1);
    int seen1 = 0, seen3 = 0;
    nb_sampler *s = make(&o, 4);
    for (int i = 0; i < 400; i++) {
        nb_token t = nb_sampler_sample(s, pinf);
        assert_true(t == 1 || t == 3);
        seen1 |= t == 1;
        seen3 |= t == 3;
    }
    assert_true(seen1 && seen3);
    nb_sampler_free(s);

    /* -inf never drawn, even at a very hot temperature. */
    const float some_ninf[4] = {-INFINITY, 0.0f, -INFINITY, -50.0f};
    nb_sampler_params hot = off_params(1e6f, 4);
    s = make(&hot, 4);
    for (int i = 0; i < 400; i++) {
        nb_token t = nb_sampler_sample(s, some_ninf);
        assert_true(t == 1 || t == 3);
    }
    nb_sampler_free(s);

    /* Extreme finite values and penalties that overflow stay in range. */
    nb_sampler_params e = nb_sampler_default_params();
    e.repeat_penalty = 1e-30f;
    e.freq_penalty = -3e38f;
    const float big[3] = {FLT_MAX, -FLT_MAX, 0.0f};
    s = make(&e, 3);
    nb_sampler_accept(s, 0);
    nb_sampler_accept(s, 1);
    nb_sampler_accept(s, 1);
    for (int i = 0; i < 100; i++) {
        nb_token t = nb_sampler_sample(s, big);
        assert_true(t >= 0 && t < 3);
    }
    nb_sampler_free(s);
}

/* ------------------------------------------------------------------ reference model */

/* The token set the chain may draw from, by brute force: apply penalties
 * in double, sort everything, cut.  The sampler works in float, so a cut
 * within REF_EPS of a threshold may fall either way: kept[id] is 2 for
 * tokens kept for certain, 1 for tokens that may be kept, 0 for tokens
 * that must never be drawn.  Returns the number of certain tokens, or -1
 * when two penalised logits at the top-k boundary are too close to order
 * (their float values may differ from the double ones here). */
#define REF_EPS 1e-5

struct ref_item {
    double l;
    int id;
};

static int ref_cmp(const void *a, const void *b)
{
    const struct ref_item *x = a, *y = b;
    if (x->l != y->l)
        return x->l > y->l ? -1 : 1;
    return x->id - y->id;
}

static int ref_kept(const float *logits, int n, const nb_sampler_params *p,
                    const nb_token *hist, int nh, unsigned char *kept)
{
    struct ref_item *it = malloc((size_t)n * sizeof *it);
    int *cnt = calloc((size_t)n, sizeof *cnt);
    assert_non_null(it);
    assert_non_null(cnt);
    int from = nh > p->repeat_last_n ? nh - p->repeat_last_n : 0;
    for (int i = from; i < nh; i++)
        cnt[hist[i]]++;
    for (int i = 0; i < n; i++) {
        double l = logits[i];
        if (cnt[i] > 0) {
            l = l <= 0 ? l * p->repeat_penalty : l / p->repeat_penalty;
            l -= cnt[i] * (double)p->freq_penalty + p->presence_penalty;
        }
        it[i].l = l;
        it[i].id = i;
    }
    qsort(it, (size_t)n, sizeof *it, ref_cmp);
    int k = p->top_k > 0 && p->top_k < n ? p->top_k : n;
    int bad = k < n && fabs(it[k - 1].l - it[k].l) < 1e-4 && it[k - 1].l != it[k].l &&
              (cnt[it[k - 1].id] > 0 || cnt[it[k].id] > 0);
    double z = 0;
    for (int i = 0; i < k; i++)
        z += exp(it[i].l - it[0].l);
    /* Prefix lengths: lo = kept for certain, hi = possibly kept. */
    int lo = k, hi = k;
    if (p->top_p < 1) {
        double cum = 0;
        int got_lo = 0;
        for (int i = 0; i < k; i++) {
            cum += exp(it[i].l - it[0].l) / z;
            if (!got_lo && cum >= p->top_p - REF_EPS) {
                lo = i + 1;
                got_lo = 1;
            }
            if (cum >= p->top_p + REF_EPS) {
                hi = i + 1;
                break;
            }
        }
    }
    int mlo = 0, mhi = 0;
    for (int i = 0; i < k; i++) {
        double ratio = exp(it[i].l - it[0].l);
        mlo += ratio >= p->min_p + REF_EPS || i == 0;
        mhi += ratio >= p->min_p - REF_EPS || i == 0;
    }
    if (mlo < lo)
        lo = mlo;
    if (mhi < hi)
        hi = mhi;
    memset(kept, 0, (size_t)n);
    for (int i = 0; i < hi; i++)
        kept[it[i].id] = i < lo ? 2 : 1;
    free(it);
    free(cnt);
    return bad ? -1 : lo;
}

/* Random vocabularies, penalties and parameters; at a very hot temperature
 * the kept set is sampled almost uniformly, so enough draws hit every
 * certain token and none outside the set. */
static void test_against_reference(void **state)
{
    (void)state;
    const int sizes[] = {1, 2, 3, 17, 100, 400};
    const int topks[] = {0, 1, 2, 5, 40, 1000};
    const float topps[] = {1.0f, 0.3f, 0.8f, 0.95f};
    const float minps[] = {0.0f, 0.05f, 0.2f, 0.6f};
    int cases = 0;
    for (int rep = 0; rep < 400; rep++) {
        int n = sizes[trand() % 6];
        nb_sampler_params p = nb_sampler_default_params();
        p.temp = 1e4f;
        p.top_k = topks[trand() % 6];
        p.top_p = topps[trand() % 4];
        p.min_p = minps[trand() % 4];
        p.seed = trand();
        if (trand() % 2) {
            p.repeat_penalty = (float)(0.5 + trand_unit() * 1.5);
            p.freq_penalty = (float)(trand_unit() * 0.5);
            p.presence_penalty = (float)(trand_unit() - 0.5);
            p.repeat_last_n = 1 + (int)(trand() % 20);
        }
        float *l = malloc((size_t)n * sizeof *l);
        unsigned char *kept = malloc((size_t)n);
        assert_non_null(l);
        assert_non_null(kept);
        double spread = (trand() % 2) ? 3.0 : 12.0;
        for (int i = 0; i < n; i++)
            l[i] = (float)((trand_unit() - 0.5) * spread);
        nb_token hist[40];
        int nh = (int)(trand() % 40);
        for (int i = 0; i < nh; i++)
            hist[i] = (nb_token)(trand() % (uint32_t)n);
        int nk = ref_kept(l, n, &p, hist, nh, kept);
        if (nk < 0) {
            free(l);
            free(kept);
            continue;
        }
        cases++;
        nb_sampler *s = make(&p, n);
        for (int i = 0; i < nh; i++)
            nb_sampler_accept(s, hist[i]);
        unsigned char *seen = calloc((size_t)n, 1);
        assert_non_null(seen);
        int draws = 30 * nk + 100;
        for (int i = 0; i < draws; i++) {
            nb_token t = nb_sampler_sample(s, l);
            assert_true(t >= 0 && t < n);
            if (!kept[t])
                print_error("case %d: n %d k %d p %g minp %g drew %d outside the set\n", rep, n,
                            p.top_k, (double)p.top_p, (double)p.min_p, t);
            assert_true(kept[t]);
            seen[t] = 1;
        }
        for (int i = 0; i < n; i++) {
            if (kept[i] == 2 && !seen[i])
                print_error("case %d: n %d k %d p %g minp %g rp %g never drew %d (%d certain)\n",
                            rep, n, p.top_k, (double)p.top_p, (double)p.min_p,
                            (double)p.repeat_penalty, i, nk);
            if (kept[i] == 2)
                assert_true(seen[i]);
        }
        nb_sampler_free(s);
        free(seen);
        free(l);
        free(kept);
    }
    assert_true(cases > 300); /* near-boundary skips stay rare */
}

static void test_large_vocab(void **state)
{
    (void)state;
    enum { N = 262144 };
    float *l = malloc(N * sizeof *l);
    unsigned char *kept = malloc(N);
    assert_non_null(l);
    assert_non_null(kept);
    for (int i = 0; i < N; i++)
        l[i] = (float)(trand_unit() * 8 - 4);
    l[123456] = 9.0f;
    l[7] = 8.5f;
    l[N - 1] = 8.7f;

    /* Default parameters (top-k 40 by partial selection). */
    nb_sampler_params p = nb_sampler_default_params();
    int nk = ref_kept(l, N, &p, NULL, 0, kept);
    assert_true(nk >= 1);
    nb_sampler *s = make(&p, N);
    for (int i = 0; i < 100; i++) {
        nb_token t = nb_sampler_sample(s, l);
        assert_true(t >= 0 && t < N);
        assert_true(kept[t]);
    }
    nb_sampler_free(s);

    /* No top-k: top-p over the whole vocabulary (lazy heap). */
    p.top_k = 0;
    p.min_p = 0.0f;
    p.top_p = 0.3f;
    nk = ref_kept(l, N, &p, NULL, 0, kept);
    assert_true(nk > 1000); /* a wide nucleus, most of it from the body */
    s = make(&p, N);
    for (int i = 0; i < 50; i++) {
        nb_token t = nb_sampler_sample(s, l);
        assert_true(t >= 0 && t < N);
        assert_true(kept[t]);
    }
    nb_sampler_free(s);

    /* Greedy on the large vocabulary. */
    p.temp = 0.0f;
    assert_int_equal(sample_once(&p, l, N), 123456);
    free(l);
    free(kept);
}

/* ------------------------------------------------------------------ stopper */

static nb_stopper *make_stopper(const char *const *stops, int n)
{
    nb_stopper *s = NULL;
    assert_int_equal(nb_stopper_new(stops, n, &s), NB_OK);
    assert_non_null(s);
    return s;
}

/* Feed a string, expect the emitted text and return code. */
static void feed_expect(nb_stopper *s, const char *in, const char *want, int want_rc)
{
    const char *e = NULL;
    size_t n = 12345;
    int rc = nb_stopper_feed(s, in, strlen(in), &e, &n);
    if (rc != want_rc || n != strlen(want) || (n && memcmp(e, want, n)))
        print_error("feed \"%s\": got rc %d \"%.*s\", want rc %d \"%s\"\n", in, rc, (int)n,
                    e ? e : "", want_rc, want);
    assert_int_equal(rc, want_rc);
    assert_int_equal(n, strlen(want));
    if (n)
        assert_memory_equal(e, want, n);
}

static void flush_expect(nb_stopper *s, const char *want)
{
    const char *e = NULL;
    size_t n = 12345;
    nb_stopper_flush(s, &e, &n);
    assert_int_equal(n, strlen(want));
    if (n)
        assert_memory_equal(e, want, n);
}

static void test_stopper_new_invalid(void **state)
{
    (void)state;
    nb_stopper *s = NULL;
    const char *empty[] = {"ok", ""};
    assert_int_equal(nb_stopper_new(empty, 2, &s), NB_ERR_INVALID);
    assert_null(s);
    const char *null_entry[] = {"ok", NULL};
    assert_int_equal(nb_stopper_new(null_entry, 2, &s), NB_ERR_INVALID);
    assert_int_equal(nb_stopper_new(NULL, 1, &s), NB_ERR_INVALID);
    assert_int_equal(nb_stopper_new(empty, -1, &s), NB_ERR_INVALID);
    assert_int_equal(nb_stopper_new(empty, 1, NULL), NB_ERR_INVALID);

    const char *many[17];
    for (int i = 0; i < 17; i++)
        many[i] = "x";
    assert_int_equal(nb_stopper_new(many, 17, &s), NB_ERR_INVALID);
    assert_null(s);
    assert_int_equal(nb_stopper_new(many, 16, &s), NB_OK);
    nb_stopper_free(s);

    char longs[258];
    memset(longs, 'q', 257);
    longs[257] = 0;
    const char *toolong[] = {longs};
    assert_int_equal(nb_stopper_new(toolong, 1, &s), NB_ERR_INVALID);
    longs[256] = 0;
    assert_int_equal(nb_stopper_new(toolong, 1, &s), NB_OK);
    nb_stopper_free(s);
    nb_stopper_free(NULL);
}

static void test_stopper_no_stops(void **state)
{
    (void)state;
    nb_stopper *s = make_stopper(NULL, 0);
    feed_expect(s, "anything at all", "anything at all", 0);
    feed_expect(s, "", "", 0);
    flush_expect(s, "");
    nb_stopper_free(s);
}

static void test_stopper_split_and_flush(void **state)
{
    (void)state;
    const char *stops[] = {"\nUser:"};
    nb_stopper *s = make_stopper(stops, 1);
    feed_expect(s, "Hello", "Hello", 0);
    feed_expect(s, " world\nUs", " world", 0);
    feed_expect(s, "e", "", 0);
    feed_expect(s, "r:", "", 1);
    feed_expect(s, "more", "", 1); /* nothing after a match */
    flush_expect(s, "");
    nb_stopper_free(s);

    /* A prefix that turns out not to match is released. */
    s = make_stopper(stops, 1);
    feed_expect(s, "a\nUs", "a", 0);
    feed_expect(s, "x", "\nUsx", 0);
    /* A released prefix can start again right away. */
    feed_expect(s, "\n", "", 0);
    feed_expect(s, "\n", "\n", 0);
    feed_expect(s, "Use", "", 0);
    /* End of generation: the held tail comes out. */
    flush_expect(s, "\nUse");
    flush_expect(s, "");
    /* After a flush the stream starts afresh. */
    feed_expect(s, "r:", "r:", 0);
    nb_stopper_free(s);
}

static void test_stopper_overlaps(void **state)
{
    (void)state;
    const char *ab[] = {"abc", "bcd"};
    nb_stopper *s = make_stopper(ab, 2);
    feed_expect(s, "xab", "x", 0);
    feed_expect(s, "cd", "", 1); /* "abc" is complete first */
    nb_stopper_free(s);

    s = make_stopper(ab, 2);
    feed_expect(s, "xbc", "x", 0);
    feed_expect(s, "d tail", "", 1);
    nb_stopper_free(s);

    /* The earliest-ending stop wins even if another started earlier. */
    const char *ov[] = {"abcd", "bc"};
    s = make_stopper(ov, 2);
    feed_expect(s, "zabcd", "za", 1);
    nb_stopper_free(s);

    /* Ending on the same byte: the longer stop, so less is shown. */
    const char *same[] = {"c", "abc"};
    s = make_stopper(same, 2);
    feed_expect(s, "xab", "x", 0);
    feed_expect(s, "c", "", 1);
    nb_stopper_free(s);

    /* Self-overlapping stop: the partial match slides. */
    const char *aab[] = {"aab"};
    s = make_stopper(aab, 1);
    feed_expect(s, "aa", "", 0);
    feed_expect(s, "a", "a", 0);
    feed_expect(s, "a", "a", 0);
    feed_expect(s, "b", "", 1);
    nb_stopper_free(s);

    const char *abab[] = {"abac"};
    s = make_stopper(abab, 1);
    feed_expect(s, "ababa", "ab", 0);
    feed_expect(s, "c!", "", 1);
    nb_stopper_free(s);
}

static void test_stopper_multiple_and_midfeed(void **state)
{
    (void)state;
    const char *stops[] = {"</s>", "<|im_end|>", "###"};
    nb_stopper *s = make_stopper(stops, 3);
    feed_expect(s, "one <| two", "one <| two", 0);
    feed_expect(s, " #", " ", 0);
    feed_expect(s, "# three <|im_e", "## three ", 0);
    feed_expect(s, "nd|> four </s>", "", 1);
    nb_stopper_free(s);

    s = make_stopper(stops, 3);
    feed_expect(s, "hello ### and more </s>", "hello ", 1);
    feed_expect(s, "x", "", 1);
    nb_stopper_free(s);

    /* Stop at the very start: nothing at all is shown. */
    s = make_stopper(stops, 3);
    feed_expect(s, "</s>", "", 1);
    nb_stopper_free(s);
}

static void test_stopper_utf8(void **state)
{
    (void)state;
    const char *stops[] = {"\xC3\xA9!"}; /* "é!" */
    nb_stopper *s = make_stopper(stops, 1);
    feed_expect(s, "caf\xC3", "caf", 0);
    feed_expect(s, "\xA9", "", 0);
    feed_expect(s, "?", "\xC3\xA9?", 0);
    feed_expect(s, "\xC3", "", 0);
    feed_expect(s, "\xA9", "", 0);
    feed_expect(s, "!", "", 1);
    nb_stopper_free(s);
}

static void test_stopper_copies_inputs(void **state)
{
    (void)state;
    char buf[8] = "END";
    const char *stops[] = {buf};
    nb_stopper *s = make_stopper(stops, 1);
    strcpy(buf, "xyz");
    feed_expect(s, "xyz ", "xyz ", 0);
    feed_expect(s, "END", "", 1);
    nb_stopper_free(s);
}

static void test_stopper_bounded_holdback(void **state)
{
    (void)state;
    /* 255 'a's then 'b': a run of 'a's is always a possible start, but
     * only the last 255 bytes of it can be. */
    char stop[257];
    memset(stop, 'a', 255);
    stop[255] = 'b';
    stop[256] = 0;
    const char *stops[] = {stop};
    nb_stopper *s = make_stopper(stops, 1);
    size_t shown = 0;
    for (int i = 1; i <= 10000; i++) {
        const char *e;
        size_t n;
        assert_int_equal(nb_stopper_feed(s, "a", 1, &e, &n), 0);
        shown += n;
        assert_int_equal(shown, (size_t)(i > 255 ? i - 255 : 0));
    }
    const char *e;
    size_t n;
    assert_int_equal(nb_stopper_feed(s, "b", 1, &e, &n), 1);
    assert_int_equal(n, 0);
    nb_stopper_free(s);
}

/* Brute force: the end (exclusive) of the shown text when the first
 * completed stop is found, or -1. */
static long ref_first_stop(const char *t, size_t len, const char *const *stops, int ns)
{
    for (size_t e = 1; e <= len; e++) {
        size_t best = 0;
        for (int i = 0; i < ns; i++) {
            size_t L = strlen(stops[i]);
            if (L <= e && memcmp(t + e - L, stops[i], L) == 0 && L > best)
                best = L;
        }
        if (best)
            return (long)(e - best);
    }
    return -1;
}

/* Brute force: how much of t[0..len) must be held back. */
static size_t ref_hold(const char *t, size_t len, const char *const *stops, int ns)
{
    size_t maxlen = 0;
    for (int i = 0; i < ns; i++)
        if (strlen(stops[i]) > maxlen)
            maxlen = strlen(stops[i]);
    for (size_t L = len < maxlen ? len : maxlen; L > 0; L--)
        for (int i = 0; i < ns; i++)
            if (strlen(stops[i]) > L && memcmp(t + len - L, stops[i], L) == 0)
                return L;
    return 0;
}

static void stream_case(const char *text, size_t len, const char *const *stops, int ns,
                        int chunking, int check_hold)
{
    nb_stopper *s = make_stopper(stops, ns);
    char *out = malloc(len + 1);
    assert_non_null(out);
    size_t out_len = 0, pos = 0;
    int rc = 0;
    long want = ref_first_stop(text, len, stops, ns);
    while (pos < len || chunking == 2) {
        size_t step;
        if (chunking == 0)
            step = len;
        else if (chunking == 1)
            step = 1;
        else
            step = trand() % 9; /* includes empty feeds */
        if (step > len - pos)
            step = len - pos;
        const char *e;
        size_t n;
        rc = nb_stopper_feed(s, text + pos, step, &e, &n);
        assert_true(rc == 0 || rc == 1);
        assert_true(out_len + n <= len);
        memcpy(out + out_len, e, n);
        out_len += n;
        pos += step;
        if (rc)
            break;
        if (check_hold)
            assert_int_equal(pos - out_len, ref_hold(text, pos, stops, ns));
        if (chunking == 2 && pos == len)
            break;
    }
    if (!rc) {
        const char *e;
        size_t n;
        nb_stopper_flush(s, &e, &n);
        memcpy(out + out_len, e, n);
        out_len += n;
    }
    assert_int_equal(rc, want >= 0);
    size_t want_len = want >= 0 ? (size_t)want : len;
    assert_int_equal(out_len, want_len);
    assert_memory_equal(out, text, out_len);
    free(out);
    nb_stopper_free(s);
}

static void test_stopper_stream_equivalence(void **state)
{
    (void)state;
    /* A four-letter alphabet makes partial matches constant. */
    const char *stops[] = {"abca", "bcb", "dddd", "cab", "aaaaaaaa", "abcabcabd"};
    const int ns = 6;
    enum { LEN = 3000 };
    static char text[LEN + 1];
    for (int rep = 0; rep < 60; rep++) {
        /* Alternate alphabets so that some texts never match. */
        const char *alpha = rep % 3 == 0 ? "abcd" : rep % 3 == 1 ? "ab" : "abc";
        size_t na = strlen(alpha);
        size_t len = 1 + trand() % LEN;
        for (size_t i = 0; i < len; i++)
            text[i] = alpha[trand() % na];
        /* Use several stop subsets, so that a match is not always early. */
        int use = 1 + (int)(trand() % (uint32_t)ns);
        for (int chunking = 0; chunking < 3; chunking++)
            stream_case(text, len, stops + (ns - use), use, chunking, rep < 20);
    }
}

static void test_stopper_long_output(void **state)
{
    (void)state;
    /* 1 MiB byte by byte, with stops that keep partial matches alive:
     * linear work, and the match at the very end is still found. */
    enum { LEN = 1 << 20 };
    char *text = malloc(LEN);
    assert_non_null(text);
    for (size_t i = 0; i < LEN; i++)
        text[i] = (char)"xyxyxz"[i % 6];
    memcpy(text + LEN - 6, "<stop>", 6);
    const char *stops[] = {"xyxyxyxyxy", "<stop>", "yxz!"};
    stream_case(text, LEN, stops, 3, 1, 0);
    stream_case(text, LEN, stops, 3, 0, 0);
    stream_case(text, LEN, stops, 3, 2, 0);

    /* A huge feed, then small ones: the buffer grows and shrinks back
     * while the held tail carries over. */
    nb_stopper *s = make_stopper(stops, 3);
    const char *e;
    size_t n;
    assert_int_equal(nb_stopper_feed(s, text, LEN - 3, &e, &n), 0);
    assert_int_equal(n, LEN - 6); /* "<st" is held */
    assert_memory_equal(e, text, n);
    feed_expect(s, "ick", "<stick", 0);
    feed_expect(s, "<sto", "", 0);
    feed_expect(s, "p>", "", 1);
    nb_stopper_free(s);
    free(text);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_default_params),
        cmocka_unit_test(test_params_check_rejects),
        cmocka_unit_test(test_params_check_accepts_bounds),
        cmocka_unit_test(test_new_invalid),
        cmocka_unit_test(test_greedy_argmax_and_ties),
        cmocka_unit_test(test_top_k_1_is_greedy),
        cmocka_unit_test(test_does_not_modify_logits),
        cmocka_unit_test(test_seed_reproducible),
        cmocka_unit_test(test_distribution_matches_softmax),
        cmocka_unit_test(test_temperature_sharpens),
        cmocka_unit_test(test_top_p_nucleus),
        cmocka_unit_test(test_top_p_ties_large_vocab),
        cmocka_unit_test(test_min_p_cut),
        cmocka_unit_test(test_stage_order),
        cmocka_unit_test(test_repeat_penalty),
        cmocka_unit_test(test_frequency_presence),
        cmocka_unit_test(test_penalty_window_and_reset),
        cmocka_unit_test(test_nan_inf_logits),
        cmocka_unit_test(test_against_reference),
        cmocka_unit_test(test_large_vocab),
        cmocka_unit_test(test_stopper_new_invalid),
        cmocka_unit_test(test_stopper_no_stops),
        cmocka_unit_test(test_stopper_split_and_flush),
        cmocka_unit_test(test_stopper_overlaps),
        cmocka_unit_test(test_stopper_multiple_and_midfeed),
        cmocka_unit_test(test_stopper_utf8),
        cmocka_unit_test(test_stopper_copies_inputs),
        cmocka_unit_test(test_stopper_bounded_holdback),
        cmocka_unit_test(test_stopper_stream_equivalence),
        cmocka_unit_test(test_stopper_long_output),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
