/*
 * test_forward.c - the forward pass against an independent oracle, and the
 * evaluation context's contract.
 *
 * The oracle below is a plain LLaMA forward pass written for clarity, in
 * double precision over dequantized weights, recomputing everything for
 * each position.  It shares nothing with core/src/forward.c except the
 * dequantizers (tested on their own in test_kernels).  Like llama.cpp, it
 * rounds the activations entering each matrix product to the weight type's
 * dot format, so what remains between it and the engine is arithmetic
 * order.  The engine must agree with it on prompts that were never tuned
 * against, including positions far beyond the reference prompts.
 *
 * Also: batch and token-by-token decoding give identical logits, truncate
 * and re-decode reproduces them, and bad calls fail cleanly.
 */
#include "testutil.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

/* ------------------------------------------------------------------ oracle */

typedef struct oracle {
    const nb_model *m;
    nb_model_info in;
    const nb_gguf *g;
} oracle;

/* Dequantized copies of the tensors used so far (the oracle is slow enough
 * without dequantizing every row for every token). */
static struct {
    const nbi_tensor *t;
    double *v;
} cache[256];
static int n_cache;

static void cache_clear(void)
{
    for (int i = 0; i < n_cache; i++)
        free(cache[i].v);
    n_cache = 0;
}

static const double *weights(const nbi_tensor *t)
{
    for (int i = 0; i < n_cache; i++)
        if (cache[i].t == t)
            return cache[i].v;
    assert_true(n_cache < 256);
    int64_t n = t->ne[0], rows = t->ne[1];
    float *tmp = malloc((size_t)n * sizeof *tmp);
    double *v = malloc((size_t)(n * rows) * sizeof *v);
    size_t rs = nbi_row_size(t->type, n);
    for (int64_t r = 0; r < rows; r++) {
        nbi_kernels_ref()->to_float[t->type]((const char *)t->data + (size_t)r * rs, tmp, n);
        for (int64_t i = 0; i < n; i++)
            v[r * n + i] = tmp[i];
    }
    free(tmp);
    cache[n_cache].t = t;
    cache[n_cache].v = v;
    n_cache++;
    return v;
}

/* Weight row r of a tensor as doubles. */
static void weight_row(const nbi_tensor *t, int64_t r, double *out)
{
    memcpy(out, weights(t) + r * t->ne[0], (size_t)t->ne[0] * sizeof *out);
}

/* The activation as the engine (and llama.cpp) feeds it to a product with
 * weights of type wt: converted to the dot format and back. */
static void round_activation(int wt, const double *x, int64_t n, double *out)
{
    int vt = nbi_types[wt].vec_dot_type;
    float *f = malloc((size_t)n * sizeof *f), *back = malloc((size_t)n * sizeof *back);
    void *q = malloc(nbi_row_size(vt, n) + 64);
    for (int64_t i = 0; i < n; i++)
        f[i] = (float)x[i];
    nbi_kernels_ref()->from_float[vt](f, q, n);
    nbi_kernels_ref()->to_float[vt](q, back, n);
    for (int64_t i = 0; i < n; i++)
        out[i] = back[i];
    free(f);
    free(back);
    free(q);
}

/* y = W x for a weight tensor of ne[1] rows of ne[0]. */
static void matvec(const nbi_tensor *W, const double *x, double *y)
{
    int64_t n = W->ne[0], rows = W->ne[1];
    double *xr = malloc((size_t)n * sizeof *xr);
    const double *all = weights(W);
    round_activation(W->type, x, n, xr);
    for (int64_t r = 0; r < rows; r++) {
        const double *w = all + r * n;
        double s = 0;
        for (int64_t i = 0; i < n; i++)
            s += w[i] * xr[i];
        y[r] = s;
    }
    free(xr);
}

static const nbi_tensor *T(const oracle *o, const char *fmt, int l)
{
    char name[96];
    snprintf(name, sizeof name, fmt, l);
    const nbi_tensor *t = nbi_gguf_tensor(o->g, name);
    return t;
}

static void rmsnorm(const oracle *o, const double *x, const nbi_tensor *w, double *y)
{
    int n = o->in.n_embd;
    double ss = 0, *wv = malloc((size_t)n * sizeof *wv);
    for (int i = 0; i < n; i++)
        ss += x[i] * x[i];
    double scale = 1.0 / sqrt(ss / n + o->in.rms_eps);
    weight_row(w, 0, wv);
    for (int i = 0; i < n; i++)
        y[i] = x[i] * scale * wv[i];
    free(wv);
}

static void rope(const oracle *o, double *v, int n_heads, int pos)
{
    int hd = o->in.head_dim, nr = o->in.n_rot;
    for (int h = 0; h < n_heads; h++)
        for (int i = 0; i < nr; i += 2) {
            double theta = pos * pow(o->in.rope_freq_base, -(double)i / nr);
            double c = cos(theta), s = sin(theta);
            double *x = v + (size_t)h * hd + i;
            double x0 = x[0], x1 = x[1];
            x[0] = x0 * c - x1 * s;
            x[1] = x0 * s + x1 * c;
        }
}

/* Logits (n_tokens x n_vocab) for every position. */
static double *oracle_run(const oracle *o, const nb_token *toks, int n)
{
    const nb_model_info *in = &o->in;
    int E = in->n_embd, hd = in->head_dim, H = in->n_head, KH = in->n_head_kv, F = in->n_ff;
    int V = in->n_vocab;
    size_t QD = (size_t)H * hd, KD = (size_t)KH * hd;
    double *x = calloc((size_t)n * E, sizeof *x), *xn = malloc((size_t)E * sizeof *xn);
    double *q = malloc((size_t)n * QD * sizeof *q), *k = malloc((size_t)n * KD * sizeof *k),
           *v = malloc((size_t)n * KD * sizeof *v), *att = malloc(QD * sizeof *att),
           *tmp = malloc((size_t)(E > F ? E : F) * sizeof *tmp), *g = malloc((size_t)F * sizeof *g),
           *u = malloc((size_t)F * sizeof *u), *p = malloc((size_t)n * sizeof *p);
    const nbi_tensor *embd = nbi_gguf_tensor(o->g, "token_embd.weight");
    for (int t = 0; t < n; t++)
        weight_row(embd, toks[t], x + (size_t)t * E);
    for (int l = 0; l < in->n_layer; l++) {
        for (int t = 0; t < n; t++) {
            rmsnorm(o, x + (size_t)t * E, T(o, "blk.%d.attn_norm.weight", l), xn);
            matvec(T(o, "blk.%d.attn_q.weight", l), xn, q + t * QD);
            matvec(T(o, "blk.%d.attn_k.weight", l), xn, k + t * KD);
            matvec(T(o, "blk.%d.attn_v.weight", l), xn, v + t * KD);
            rope(o, q + t * QD, H, t);
            rope(o, k + t * KD, KH, t);
            /* the cache holds keys and values in F16, and queries meet
             * them in F16: a storage format, not arithmetic order */
            for (size_t i = 0; i < QD; i++)
                q[t * QD + i] = nbi_fp16_to_fp32(nbi_fp32_to_fp16((float)q[t * QD + i]));
            for (size_t i = 0; i < KD; i++) {
                k[t * KD + i] = nbi_fp16_to_fp32(nbi_fp32_to_fp16((float)k[t * KD + i]));
                v[t * KD + i] = nbi_fp16_to_fp32(nbi_fp32_to_fp16((float)v[t * KD + i]));
            }
        }
        for (int t = 0; t < n; t++) {
            for (int h = 0; h < H; h++) {
                int kh = h / (H / KH);
                double mx = -INFINITY, sum = 0;
                for (int j = 0; j <= t; j++) {
                    double s = 0;
                    for (int d = 0; d < hd; d++)
                        s += q[t * QD + (size_t)h * hd + d] * k[j * KD + (size_t)kh * hd + d];
                    p[j] = s / sqrt((double)hd);
                    mx = p[j] > mx ? p[j] : mx;
                }
                for (int j = 0; j <= t; j++)
                    sum += p[j] = exp(p[j] - mx);
                for (int d = 0; d < hd; d++) {
                    double a = 0;
                    for (int j = 0; j <= t; j++)
                        a += p[j] / sum * v[j * KD + (size_t)kh * hd + d];
                    att[(size_t)h * hd + d] = a;
                }
            }
            matvec(T(o, "blk.%d.attn_output.weight", l), att, tmp);
            for (int i = 0; i < E; i++)
                x[(size_t)t * E + i] += tmp[i];
            rmsnorm(o, x + (size_t)t * E, T(o, "blk.%d.ffn_norm.weight", l), xn);
            matvec(T(o, "blk.%d.ffn_gate.weight", l), xn, g);
            matvec(T(o, "blk.%d.ffn_up.weight", l), xn, u);
            for (int i = 0; i < F; i++)
                g[i] = g[i] / (1 + exp(-g[i])) * u[i];
            matvec(T(o, "blk.%d.ffn_down.weight", l), g, tmp);
            for (int i = 0; i < E; i++)
                x[(size_t)t * E + i] += tmp[i];
        }
    }
    const nbi_tensor *out = nbi_gguf_tensor(o->g, "output.weight");
    if (!out)
        out = embd;
    double *logits = malloc((size_t)n * V * sizeof *logits);
    for (int t = 0; t < n; t++) {
        rmsnorm(o, x + (size_t)t * E, nbi_gguf_tensor(o->g, "output_norm.weight"), xn);
        matvec(out, xn, logits + (size_t)t * V);
    }
    free(x), free(xn), free(q), free(k), free(v), free(att), free(tmp), free(g), free(u), free(p);
    return logits;
}

/* ------------------------------------------------------------------ helpers */

static nb_model *open_model(const char *rel)
{
    char *path = nbt_data_path(rel);
    nb_model *m = NULL;
    char err[256];
    if (nb_model_open(path, NULL, &m, err, sizeof err))
        fail_msg("%s: %s", path, err);
    free(path);
    return m;
}

static nb_token *tokens_of(const nb_model *m, const char *s, int *n)
{
    size_t len = strlen(s);
    nb_token *ids = malloc((len + 8) * sizeof *ids);
    *n = (int)nb_tokenize(m, s, len, ids, (int64_t)len + 8, NB_TOK_ADD_SPECIAL);
    assert_true(*n > 0);
    return ids;
}

/* Prompts nobody tuned anything to: a long story (positions up to ~200),
 * code, punctuation runs, non-Latin text that falls back to bytes. */
static const char *const prompts[] = {
    "The old lighthouse keeper climbed the stairs every night. He counted them: one, two, "
    "three, all the way to one hundred and twelve. At the top he lit the lamp and watched the "
    "ships. One stormy night a small boat lost its way. The keeper waved his lantern and "
    "shouted until the sailors saw him. They came home safe, and the whole town thanked him "
    "with a big cake made of apples and honey.",
    "for (int i = 0; i < n; i++) { sum += a[i] * b[i]; }",
    "?!?!... --- ;;; ''' \"\"\" ```",
    "\xd0\x9c\xd0\xb0\xd1\x88\xd0\xb0 \xe3\x81\x8a\xe3\x81\xaf\xe3\x82\x88\xe3\x81\x86 \xf0\x9f\x90\xb1",
};

/* Bounds on |engine - oracle| per logit: the largest, and the mean.  The
 * oracle differs from the engine (and from llama.cpp) in arithmetic order,
 * and with 8-bit activations a last-bit difference occasionally moves a
 * value across a rounding step, which then propagates.  So quantized types
 * get a loose bound on the largest difference and a tight one on the mean;
 * a decoding error in any kernel shifts the mean by whole units.  Float
 * types are held to llama.cpp's own tolerance; F16 and BF16 get a little
 * more for their rounded activations and the F16 attention accumulator at
 * positions beyond 100. */
typedef struct fw_case {
    const char *model;
    double tol, mean_tol;
} fw_case;

static void check_model(const fw_case *c)
{
    cache_clear(); /* a failed earlier case may have left entries */
    nb_model *m = open_model(c->model);
    oracle o = {m, {0}, nb_model_gguf(m)};
    nb_model_get_info(m, &o.in);
    nb_ctx_params cp = nb_ctx_default_params();
    cp.n_ctx = 512;
    double worst = 0, sumd = 0;
    long cnt = 0;
    for (size_t pi = 0; pi < sizeof prompts / sizeof prompts[0]; pi++) {
        int n;
        nb_token *toks = tokens_of(m, prompts[pi], &n);
        nb_ctx *ctx;
        char err[256];
        assert_int_equal(nb_ctx_new(m, &cp, &ctx, err, sizeof err), NB_OK);
        assert_int_equal(nb_ctx_decode(ctx, toks, n, 1), NB_OK);
        double *want = oracle_run(&o, toks, n);
        for (int t = 0; t < n; t++) {
            const float *got = nb_ctx_logits(ctx, t);
            const double *w = want + (size_t)t * o.in.n_vocab;
            int best_got = 0, best_want = 0, second_want = -1;
            for (int i = 0; i < o.in.n_vocab; i++) {
                double d = fabs(got[i] - w[i]);
                if (d > worst)
                    worst = d;
                sumd += d;
                cnt++;
                if (!(d <= c->tol))
                    fail_msg("%s prompt %zu position %d token %d: %g vs oracle %g", c->model, pi,
                             t, i, (double)got[i], w[i]);
                if (got[i] > got[best_got])
                    best_got = i;
                if (w[i] > w[best_want]) {
                    second_want = best_want;
                    best_want = i;
                } else if (second_want < 0 || w[i] > w[second_want]) {
                    second_want = i;
                }
            }
            if (best_got != best_want && w[best_want] - w[second_want] >= c->tol)
                fail_msg("%s prompt %zu position %d: top token %d, oracle %d", c->model, pi, t,
                         best_got, best_want);
        }
        free(want);
        free(toks);
        nb_ctx_free(ctx);
    }
    printf("    %-36s |engine - oracle| mean %.4f (bound %.3f), max %.4f (bound %.2f)\n",
           c->model + 7, sumd / (double)cnt, c->mean_tol, worst, c->tol);
    assert_true(sumd / (double)cnt <= c->mean_tol);
    cache_clear();
    nb_model_close(m);
}

static void test_oracle(void **state)
{
    const fw_case *c = *state;
    NBT_REQUIRE_DATA();
    check_model(c);
}

/* ------------------------------------------------------------------ contract */

static void test_batch_invariance(void **state)
{
    (void)state;
    NBT_REQUIRE_DATA();
    nb_model *m = open_model("models/stories260K-wide-q4_k_m.gguf");
    int n;
    nb_token *toks = tokens_of(m, prompts[0], &n);
    int V = nb_model_n_vocab(m);
    nb_ctx_params cp = nb_ctx_default_params();
    cp.n_ctx = 256;
    nb_ctx *all, *one, *split;
    cp.n_batch = 512;
    assert_int_equal(nb_ctx_new(m, &cp, &all, NULL, 0), NB_OK);
    cp.n_batch = 7; /* forces internal splitting of long inputs */
    assert_int_equal(nb_ctx_new(m, &cp, &split, NULL, 0), NB_OK);
    assert_int_equal(nb_ctx_new(m, &cp, &one, NULL, 0), NB_OK);
    assert_int_equal(nb_ctx_decode(all, toks, n, 1), NB_OK);
    assert_int_equal(nb_ctx_decode(split, toks, n, 1), NB_OK);
    for (int t = 0; t < n; t++) {
        assert_int_equal(nb_ctx_decode(one, &toks[t], 1, 0), NB_OK);
        /* bit-identical whatever the batching */
        assert_memory_equal(nb_ctx_logits(all, t), nb_ctx_logits(one, -1), (size_t)V * 4);
        assert_memory_equal(nb_ctx_logits(all, t), nb_ctx_logits(split, t), (size_t)V * 4);
    }
    assert_int_equal(nb_ctx_n_past(one), n);

    /* truncate and re-decode the tail: same logits (what prefix reuse relies on) */
    int keep = n / 2;
    assert_int_equal(nb_ctx_truncate(one, keep), NB_OK);
    assert_int_equal(nb_ctx_n_past(one), keep);
    assert_int_equal(nb_ctx_decode(one, toks + keep, n - keep, 1), NB_OK);
    for (int t = keep; t < n; t++)
        assert_memory_equal(nb_ctx_logits(all, t), nb_ctx_logits(one, t - keep), (size_t)V * 4);
    /* last-only logits are the last row */
    assert_memory_equal(nb_ctx_logits(one, -1), nb_ctx_logits(all, n - 1), (size_t)V * 4);
    assert_null(nb_ctx_logits(split, n));

    nb_ctx_free(all);
    nb_ctx_free(one);
    nb_ctx_free(split);
    free(toks);
    nb_model_close(m);
}

/* Any thread count computes the same bits (rows are split, never shared). */
static void test_thread_invariance(void **state)
{
    (void)state;
    NBT_REQUIRE_DATA();
    const char *models[] = {"models/stories260K-wide-q4_0.gguf", "models/stories260K-wide-q6_k.gguf",
                            "models/stories260K-wide-f16.gguf"};
    for (int mi = 0; mi < 3; mi++) {
        nb_model *m = open_model(models[mi]);
        int n;
        nb_token *toks = tokens_of(m, prompts[0], &n);
        int V = nb_model_n_vocab(m);
        nb_ctx *ref = NULL;
        for (int th = 1; th <= 4; th++) {
            nb_ctx_params cp = nb_ctx_default_params();
            cp.n_ctx = 256;
            cp.n_threads = th;
            nb_ctx *c;
            assert_int_equal(nb_ctx_new(m, &cp, &c, NULL, 0), NB_OK);
            assert_int_equal(nb_ctx_decode(c, toks, n, 1), NB_OK);
            nb_token next = 7;
            assert_int_equal(nb_ctx_decode(c, &next, 1, 0), NB_OK); /* one-token path too */
            if (!ref) {
                ref = c;
                continue;
            }
            assert_memory_equal(nb_ctx_logits(c, -1), nb_ctx_logits(ref, -1), (size_t)V * 4);
            nb_ctx_free(c);
        }
        /* and the batch rows of the single-thread context match a 3-thread one */
        nb_ctx_params cp = nb_ctx_default_params();
        cp.n_ctx = 256;
        cp.n_threads = 3;
        nb_ctx *c3;
        assert_int_equal(nb_ctx_new(m, &cp, &c3, NULL, 0), NB_OK);
        nb_ctx_truncate(ref, 0);
        assert_int_equal(nb_ctx_decode(ref, toks, n, 1), NB_OK);
        assert_int_equal(nb_ctx_decode(c3, toks, n, 1), NB_OK);
        for (int t = 0; t < n; t++)
            assert_memory_equal(nb_ctx_logits(c3, t), nb_ctx_logits(ref, t), (size_t)V * 4);
        nb_ctx_free(c3);
        nb_ctx_free(ref);
        free(toks);
        nb_model_close(m);
    }
}

/* Several contexts in one pass (a server's continuous batching) get
 * exactly the logits each gets alone, whatever the split into passes. */
static void test_multi_context(void **state)
{
    (void)state;
    NBT_REQUIRE_DATA();
    nb_model *m = open_model("models/stories260K-wide-q4_k_m.gguf");
    int V = nb_model_n_vocab(m);
    int n[3];
    nb_token *toks[3];
    for (int i = 0; i < 3; i++)
        toks[i] = tokens_of(m, prompts[i], &n[i]);
    for (int nb = 0; nb < 2; nb++) {
        nb_ctx_params cp = nb_ctx_default_params();
        cp.n_ctx = 256;
        cp.n_batch = nb ? 5 : 512; /* 5: items split across several passes */
        nb_ctx *alone[3], *together[3];
        for (int i = 0; i < 3; i++) {
            assert_int_equal(nb_ctx_new(m, &cp, &alone[i], NULL, 0), NB_OK);
            assert_int_equal(nb_ctx_new(m, &cp, &together[i], NULL, 0), NB_OK);
            /* different histories: context i starts with i tokens of its own */
            if (i) {
                assert_int_equal(nb_ctx_decode(alone[i], toks[i], i, 0), NB_OK);
                assert_int_equal(nb_ctx_decode(together[i], toks[i], i, 0), NB_OK);
            }
        }
        nb_batch_item items[3];
        for (int i = 0; i < 3; i++) {
            items[i] = (nb_batch_item){together[i], toks[i] + i, n[i] - i, i == 1};
            assert_int_equal(nb_ctx_decode(alone[i], toks[i] + i, n[i] - i, i == 1), NB_OK);
        }
        assert_int_equal(nb_decode_batch(NULL, items, 3), NB_OK);
        for (int i = 0; i < 3; i++) {
            assert_int_equal(nb_ctx_n_past(together[i]), n[i]);
            if (i == 1)
                for (int t = 0; t < n[i] - i; t++)
                    assert_memory_equal(nb_ctx_logits(together[i], t), nb_ctx_logits(alone[i], t),
                                        (size_t)V * 4);
            assert_memory_equal(nb_ctx_logits(together[i], -1), nb_ctx_logits(alone[i], -1),
                                (size_t)V * 4);
        }
        /* one more token each, together, through a separate workspace with
         * its own threads: still the same */
        nb_token next[3] = {5, 6, 7};
        nb_ctx_params wp = cp;
        wp.n_ctx = 1;
        wp.n_threads = 2;
        nb_ctx *ws;
        assert_int_equal(nb_ctx_new(m, &wp, &ws, NULL, 0), NB_OK);
        for (int i = 0; i < 3; i++) {
            items[i] = (nb_batch_item){together[i], &next[i], 1, 0};
            assert_int_equal(nb_ctx_decode(alone[i], &next[i], 1, 0), NB_OK);
        }
        assert_int_equal(nb_decode_batch(ws, items, 3), NB_OK);
        nb_ctx_free(ws);
        for (int i = 0; i < 3; i++)
            assert_memory_equal(nb_ctx_logits(together[i], -1), nb_ctx_logits(alone[i], -1),
                                (size_t)V * 4);
        /* the same context twice, or an empty batch, is refused */
        items[1].ctx = together[0];
        assert_int_equal(nb_decode_batch(NULL, items, 2), NB_ERR_INVALID);
        assert_int_equal(nb_decode_batch(NULL, items, 0), NB_ERR_INVALID);
        for (int i = 0; i < 3; i++) {
            nb_ctx_free(alone[i]);
            nb_ctx_free(together[i]);
        }
    }
    for (int i = 0; i < 3; i++)
        free(toks[i]);
    nb_model_close(m);
}

static int abort_after(void *data)
{
    int *left = data;
    return --*left < 0;
}

/* The abort hook stops a long decode between layers and leaves the cache
 * as it was before the interrupted pass. */
static void test_abort(void **state)
{
    (void)state;
    NBT_REQUIRE_DATA();
    nb_model *m = open_model("models/stories260K.gguf");
    int n;
    nb_token *toks = tokens_of(m, prompts[0], &n);
    nb_ctx_params cp = nb_ctx_default_params();
    cp.n_batch = 16;
    nb_ctx *c;
    assert_int_equal(nb_ctx_new(m, &cp, &c, NULL, 0), NB_OK);
    int left = 7; /* 5 layers per pass: stops in the second pass */
    nb_ctx_set_abort(c, abort_after, &left);
    assert_int_equal(nb_ctx_decode(c, toks, n, 0), NB_ERR_CANCELLED);
    assert_int_equal(nb_ctx_n_past(c), 16); /* the first pass completed */
    assert_null(nb_ctx_logits(c, -1));
    nb_ctx_set_abort(c, NULL, NULL);
    assert_int_equal(nb_ctx_decode(c, toks + 16, n - 16, 0), NB_OK);
    /* same result as an uninterrupted decode */
    nb_ctx *d;
    assert_int_equal(nb_ctx_new(m, &cp, &d, NULL, 0), NB_OK);
    assert_int_equal(nb_ctx_decode(d, toks, n, 0), NB_OK);
    assert_memory_equal(nb_ctx_logits(c, -1), nb_ctx_logits(d, -1), (size_t)nb_model_n_vocab(m) * 4);
    nb_ctx_free(c);
    nb_ctx_free(d);
    free(toks);
    nb_model_close(m);
}

static void test_decode_errors(void **state)
{
    (void)state;
    NBT_REQUIRE_DATA();
    nb_model *m = open_model("models/stories260K.gguf");
    nb_ctx_params cp = nb_ctx_default_params();
    cp.n_ctx = 8;
    nb_ctx *c;
    char err[256];
    assert_int_equal(nb_ctx_new(m, &cp, &c, err, sizeof err), NB_OK);
    assert_int_equal(nb_ctx_n_ctx(c), 8);
    nb_token bad[2] = {1, 512};
    assert_int_equal(nb_ctx_decode(c, bad, 2, 0), NB_ERR_INVALID);
    assert_non_null(strstr(nb_ctx_errmsg(c), "512"));
    bad[1] = -3;
    assert_int_equal(nb_ctx_decode(c, bad, 2, 0), NB_ERR_INVALID);
    assert_int_equal(nb_ctx_decode(c, bad, 0, 0), NB_ERR_INVALID);
    assert_int_equal(nb_ctx_n_past(c), 0); /* nothing was evaluated */
    nb_token nine[9] = {1, 2, 3, 4, 5, 6, 7, 8, 9};
    assert_int_equal(nb_ctx_decode(c, nine, 9, 0), NB_ERR_CONTEXT_FULL);
    assert_non_null(strstr(nb_ctx_errmsg(c), "context"));
    assert_int_equal(nb_ctx_decode(c, nine, 8, 0), NB_OK);
    assert_int_equal(nb_ctx_decode(c, nine, 1, 0), NB_ERR_CONTEXT_FULL);
    assert_int_equal(nb_ctx_truncate(c, 9), NB_ERR_INVALID);
    assert_int_equal(nb_ctx_truncate(c, -1), NB_ERR_INVALID);
    assert_int_equal(nb_ctx_truncate(c, 0), NB_OK);
    assert_int_equal(nb_ctx_decode(c, nine, 1, 0), NB_OK);
    nb_ctx_free(c);

    /* absurd sizes are refused, not attempted */
    cp.n_ctx = 1 << 23;
    assert_int_equal(nb_ctx_new(m, &cp, &c, err, sizeof err), NB_ERR_INVALID);
    assert_null(c);
    cp.n_ctx = -1;
    assert_int_equal(nb_ctx_new(m, &cp, &c, err, sizeof err), NB_ERR_INVALID);
    cp.n_ctx = 8;
    cp.n_threads = 100000;
    assert_int_equal(nb_ctx_new(m, &cp, &c, err, sizeof err), NB_ERR_INVALID);
    assert_non_null(strstr(err, "threads"));
    nb_model_close(m);

    /* a vocabulary-only model cannot be evaluated */
    char *path = nbt_data_path("models/stories260K.gguf");
    nb_model_params mp = nb_model_default_params();
    mp.vocab_only = 1;
    assert_int_equal(nb_model_open(path, &mp, &m, err, sizeof err), NB_OK);
    assert_int_equal(nb_ctx_new(m, NULL, &c, err, sizeof err), NB_ERR_INVALID);
    assert_non_null(strstr(err, "vocabulary"));
    nb_model_close(m);
    free(path);
}

int main(void)
{
    static const fw_case cases[] = {
        {"models/stories260K.gguf", 0.05, 0.005},
        {"models/llama-2-tiny-random.gguf", 0.05, 0.005},
        {"models/stories260K-wide-f32.gguf", 0.05, 0.005},
        {"models/stories260K-wide-f16.gguf", 0.08, 0.01},
        {"models/stories260K-wide-bf16.gguf", 0.25, 0.03},
        {"models/stories260K-wide-q8_0.gguf", 1.0, 0.12},
        {"models/stories260K-wide-q4_0.gguf", 1.0, 0.12},
        {"models/stories260K-wide-q4_1.gguf", 1.0, 0.12},
        {"models/stories260K-wide-q5_0.gguf", 1.0, 0.12},
        {"models/stories260K-wide-q5_1.gguf", 1.0, 0.12},
        {"models/stories260K-wide-iq4_nl.gguf", 1.0, 0.12},
        {"models/stories260K-wide-q2_k.gguf", 1.6, 0.2},
        {"models/stories260K-wide-q3_k.gguf", 1.6, 0.2},
        {"models/stories260K-wide-q4_k.gguf", 1.0, 0.12},
        {"models/stories260K-wide-q5_k.gguf", 1.0, 0.12},
        {"models/stories260K-wide-q6_k.gguf", 1.0, 0.12},
        {"models/stories260K-wide-q4_k_m.gguf", 1.0, 0.12},
    };
    enum { NC = sizeof cases / sizeof cases[0] };
    struct CMUnitTest tests[NC + 5];
    for (int i = 0; i < NC; i++) {
        tests[i] = (struct CMUnitTest)cmocka_unit_test(test_oracle);
        tests[i].name = cases[i].model + 7;
        tests[i].initial_state = (void *)&cases[i];
    }
    tests[NC] = (struct CMUnitTest)cmocka_unit_test(test_batch_invariance);
    tests[NC + 1] = (struct CMUnitTest)cmocka_unit_test(test_decode_errors);
    tests[NC + 2] = (struct CMUnitTest)cmocka_unit_test(test_thread_invariance);
    tests[NC + 3] = (struct CMUnitTest)cmocka_unit_test(test_multi_context);
    tests[NC + 4] = (struct CMUnitTest)cmocka_unit_test(test_abort);
    return _cmocka_run_group_tests("forward", tests, NC + 5, NULL, NULL);
}
