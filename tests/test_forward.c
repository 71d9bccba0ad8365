/*
 * test_forward.c - the forward pass against an independent oracle, and the
 * evaluation context's contract.
 *
 * The oracle below is a plain LLaMA forward pass (with Qwen2's biases and
 * NEOX rotation, Llama 3's rotary factors and a sliding window when the
 * file asks for them) written for clarity, in
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
#include <unistd.h>

#include "gguf_builder.h"
#include "internal.h"

/* ------------------------------------------------------------------ oracle */

typedef struct oracle {
    const nb_model *m;
    nb_model_info in;
    const nb_gguf *g;
    int neox;          /* rotate halves instead of adjacent pairs */
    int window;        /* sliding attention window, 0 = none */
    double pos_scale;  /* linear rope scaling: positions times this */
    double *freq_div;  /* (n_rot / 2) divisors of the rotary angles, or NULL */
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
            double theta = pos * o->pos_scale * pow(o->in.rope_freq_base, -(double)i / nr);
            if (o->freq_div)
                theta /= o->freq_div[i / 2];
            double c = cos(theta), s = sin(theta);
            /* NEOX pairs element k with k + nr/2; LLaMA with k + 1 */
            double *x0p = v + (size_t)h * hd + (o->neox ? i / 2 : i);
            double *x1p = o->neox ? x0p + nr / 2 : x0p + 1;
            double x0 = *x0p, x1 = *x1p;
            *x0p = x0 * c - x1 * s;
            *x1p = x0 * s + x1 * c;
        }
}

/* y += the bias tensor fmt (for layer l), when the file has one. */
static void add_bias(const oracle *o, const char *fmt, int l, double *y)
{
    char name[96];
    snprintf(name, sizeof name, fmt, l);
    const nbi_tensor *b = nbi_gguf_tensor(o->g, name);
    if (!b)
        return;
    const double *w = weights(b);
    for (int64_t i = 0; i < b->ne[0]; i++)
        y[i] += w[i];
}

/* What the oracle reads from the file itself, without the engine's help. */
static void oracle_setup(oracle *o)
{
    const char *a = o->in.arch;
    char key[128];
    uint32_t u;
    float f;
    int found;
    o->neox = !strcmp(a, "qwen2");
    snprintf(key, sizeof key, "%s.attention.sliding_window", a);
    o->window = nbi_gguf_get_u32(o->g, key, &u, &found, NULL, 0) == NB_OK && found ? (int)u : 0;
    o->pos_scale = 1.0;
    o->freq_div = NULL;
    const char *type = "none";
    size_t tlen = 4;
    snprintf(key, sizeof key, "%s.rope.scaling.type", a);
    if (nbi_gguf_get_str(o->g, key, &type, &tlen, &found, NULL, 0) || !found)
        type = "none", tlen = 4;
    double factor = 0;
    snprintf(key, sizeof key, "%s.rope.scaling.factor", a);
    if (nbi_gguf_get_f32(o->g, key, &f, &found, NULL, 0) == NB_OK && found)
        factor = f;
    if (tlen == 6 && !memcmp(type, "linear", 6) && factor > 0)
        o->pos_scale = 1.0 / factor;
    int half = o->in.n_rot / 2;
    const nbi_tensor *rf = nbi_gguf_tensor(o->g, "rope_freqs.weight");
    if (rf) {
        o->freq_div = malloc((size_t)half * sizeof *o->freq_div);
        weight_row(rf, 0, o->freq_div);
    } else if (tlen == 6 && !memcmp(type, "llama3", 6)) {
        /* Llama 3.1: slow the long wavelengths by the factor, keep the
         * short ones, interpolate between */
        double lo = 1, hi = 4, orig = 8192;
        snprintf(key, sizeof key, "%s.rope.scaling.low_freq_factor", a);
        if (nbi_gguf_get_f32(o->g, key, &f, &found, NULL, 0) == NB_OK && found)
            lo = f;
        snprintf(key, sizeof key, "%s.rope.scaling.high_freq_factor", a);
        if (nbi_gguf_get_f32(o->g, key, &f, &found, NULL, 0) == NB_OK && found)
            hi = f;
        snprintf(key, sizeof key, "%s.rope.scaling.original_context_length", a);
        if (nbi_gguf_get_u32(o->g, key, &u, &found, NULL, 0) == NB_OK && found)
            orig = u;
        if (!(factor > 0))
            factor = 8;
        o->freq_div = malloc((size_t)half * sizeof *o->freq_div);
        for (int i = 0; i < half; i++) {
            double wavelen = 2 * M_PI * pow(o->in.rope_freq_base, 2.0 * i / o->in.n_rot);
            double ratio = orig / wavelen; /* how many waves fit the original context */
            if (ratio > hi)
                o->freq_div[i] = 1;
            else if (ratio < lo)
                o->freq_div[i] = factor;
            else {
                double t = (ratio - lo) / (hi - lo);
                o->freq_div[i] = 1 / ((1 - t) / factor + t);
            }
        }
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
            add_bias(o, "blk.%d.attn_q.bias", l, q + t * QD);
            add_bias(o, "blk.%d.attn_k.bias", l, k + t * KD);
            add_bias(o, "blk.%d.attn_v.bias", l, v + t * KD);
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
                /* a sliding window sees the last `window` positions */
                int j0 = o->window && t >= o->window ? t - o->window + 1 : 0;
                for (int j = 0; j < j0; j++)
                    p[j] = 0;
                for (int j = j0; j <= t; j++) {
                    double s = 0;
                    for (int d = 0; d < hd; d++)
                        s += q[t * QD + (size_t)h * hd + d] * k[j * KD + (size_t)kh * hd + d];
                    p[j] = s / sqrt((double)hd);
                    mx = p[j] > mx ? p[j] : mx;
                }
                for (int j = j0; j <= t; j++)
                    sum += p[j] = exp(p[j] - mx);
                for (int d = 0; d < hd; d++) {
                    double a = 0;
                    for (int j = 0; j <= t; j++)
                        a += p[j] / sum * v[j * KD + (size_t)kh * hd + d];
                    att[(size_t)h * hd + d] = a;
                }
            }
            matvec(T(o, "blk.%d.attn_output.weight", l), att, tmp);
            add_bias(o, "blk.%d.attn_output.bias", l, tmp);
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
    const char *model;                /* "models/..." under the data directory, or a label */
    double tol, mean_tol;
    gguf_builder *(*build)(void);     /* a synthetic model instead of a file */
} fw_case;

/* ------------------------------------------------------------------ synthetic models */

/* Scale the F32 data of a tensor: gguf_builder's weights are small, which
 * leaves attention nearly uniform and blind to errors in positions. */
static void scale_tensor(gguf_builder *b, const char *name, float k)
{
    int i = gb_tensor_find(b, name);
    assert_true(i >= 0 && b->tensor[i].type == GB_F32);
    gb_buf *d = &b->tensor[i].data;
    for (size_t off = 0; off + 4 <= d->len; off += 4) {
        float f;
        memcpy(&f, d->data + off, 4);
        f *= k;
        memcpy(d->data + off, &f, 4);
    }
}

static gguf_builder *synth(const char *arch, int bias)
{
    gb_llama_params p = gb_llama_default_params();
    p.arch = arch;
    p.attn_bias = bias;
    gguf_builder *b = gb_llama_new(&p);
    assert_non_null(b);
    char name[64];
    for (int l = 0; l < p.n_layer; l++) {
        static const char *const sharp[] = {"attn_q.weight", "attn_k.weight", "attn_q.bias",
                                            "attn_k.bias", "attn_v.bias", "attn_output.bias"};
        for (int i = 0; i < 6; i++) {
            snprintf(name, sizeof name, "blk.%d.%s", l, sharp[i]);
            if (gb_tensor_find(b, name) >= 0)
                scale_tensor(b, name, i < 2 ? 10.0f : 5.0f);
        }
    }
    return b;
}

/* Qwen2: q/k/v biases, NEOX rotation, output tied to the embedding. */
static gguf_builder *synth_qwen2(void)
{
    gguf_builder *b = synth("qwen2", 1);
    gb_tensor_remove(b, "output.weight");
    return b;
}

/* Llama with all four attention biases, Llama 3.1 rotary scaling named by
 * its keys (no rope_freqs tensor), a base and original context small
 * enough that the factors fall on every branch, and a sliding window of
 * 8 over the prompts' 20 to 200 tokens. */
static gguf_builder *synth_llama3_swa(void)
{
    gguf_builder *b = synth("llama", 2);
    gb_kv_remove(b, "llama.rope.freq_base");
    gb_kv_f32(b, "llama.rope.freq_base", 100.0f);
    gb_kv_str(b, "llama.rope.scaling.type", "llama3");
    gb_kv_f32(b, "llama.rope.scaling.factor", 8.0f);
    gb_kv_u32(b, "llama.rope.scaling.original_context_length", 256);
    gb_kv_f32(b, "llama.rope.scaling.low_freq_factor", 2.0f);
    gb_kv_f32(b, "llama.rope.scaling.high_freq_factor", 16.0f);
    gb_kv_u32(b, "llama.attention.sliding_window", 8);
    return b;
}

/* llama.cpp's form of Llama 3 scaling, a rope_freqs tensor, together with
 * linear scaling. */
static gguf_builder *synth_rope_freqs_linear(void)
{
    gguf_builder *b = synth("llama", 0);
    static const float freqs[4] = {1.0f, 2.0f, 4.0f, 8.0f}; /* head size 8: 4 pairs */
    uint64_t n = 4;
    gb_tensor_add(b, "rope_freqs.weight", 1, &n, GB_F32, freqs, sizeof freqs);
    gb_kv_str(b, "llama.rope.scaling.type", "linear");
    gb_kv_f32(b, "llama.rope.scaling.factor", 2.0f);
    return b;
}

/* Open a case's model; a synthetic one is written to *tmp (freed and
 * unlinked by close_case). */
static nb_model *open_case(const fw_case *c, char **tmp)
{
    *tmp = NULL;
    if (!c->build)
        return open_model(c->model);
    gguf_builder *b = c->build();
    size_t len;
    uint8_t *img = gb_build(b, &len);
    assert_non_null(img);
    *tmp = nbt_write_temp(img, len, ".gguf");
    free(img);
    gb_free(b);
    nb_model *m = NULL;
    char err[256];
    if (nb_model_open(*tmp, NULL, &m, err, sizeof err))
        fail_msg("%s: %s", c->model, err);
    return m;
}

static void close_case(nb_model *m, char *tmp)
{
    nb_model_close(m);
    if (tmp)
        unlink(tmp);
    free(tmp);
}

static void check_model(const fw_case *c)
{
    cache_clear(); /* a failed earlier case may have left entries */
    char *tmp;
    nb_model *m = open_case(c, &tmp);
    oracle o = {m, {0}, nb_model_gguf(m), 0, 0, 1.0, NULL};
    nb_model_get_info(m, &o.in);
    oracle_setup(&o);
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
           c->build ? c->model : c->model + 7, sumd / (double)cnt, c->mean_tol, worst, c->tol);
    assert_true(sumd / (double)cnt <= c->mean_tol);
    cache_clear();
    free(o.freq_div);
    close_case(m, tmp);
}

static void test_oracle(void **state)
{
    const fw_case *c = *state;
    if (!c->build)
        NBT_REQUIRE_DATA();
    check_model(c);
}

/* ------------------------------------------------------------------ contract */

static void batch_invariance(nb_model *m)
{
    int n;
    nb_token *toks = tokens_of(m, prompts[0], &n);
    int V = nb_model_n_vocab(m);
    nb_ctx_params cp = nb_ctx_default_params();
    cp.n_ctx = 512;
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
}

/* Over llama, qwen2 (biases, NEOX) and a sliding window that the 7-token
 * passes cross. */
static void test_batch_invariance(void **state)
{
    (void)state;
    NBT_REQUIRE_DATA();
    static const fw_case models[] = {
        {"models/stories260K-wide-q4_k_m.gguf", 0, 0, NULL},
        {"models/qwen2-random-q8_0.gguf", 0, 0, NULL},
        {"synthetic llama3 rope, window 8, biases", 0, 0, synth_llama3_swa},
    };
    for (size_t i = 0; i < sizeof models / sizeof models[0]; i++) {
        char *tmp;
        nb_model *m = open_case(&models[i], &tmp);
        batch_invariance(m);
        close_case(m, tmp);
    }
}

/* Any thread count computes the same bits (rows are split, never shared). */
static void test_thread_invariance(void **state)
{
    (void)state;
    NBT_REQUIRE_DATA();
    const char *models[] = {"models/stories260K-wide-q4_0.gguf", "models/stories260K-wide-q6_k.gguf",
                            "models/stories260K-wide-f16.gguf", "models/qwen2-random-q8_0.gguf"};
    for (int mi = 0; mi < 4; mi++) {
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

/* Packed weights (nb_model_params.repack) change where the bytes are,
 * never a result: every logit of a prompt (batched) and of a token after
 * it is the same bits as with the rows as stored, at 1 and 2 threads. */
static void test_packed_weights(void **state)
{
    (void)state;
    NBT_REQUIRE_DATA();
    const char *models[] = {"models/stories260K-wide-q4_0.gguf", "models/stories260K-wide-iq4_nl.gguf",
                            "models/stories260K-wide-q4_0-mix.gguf"};
    for (int mi = 0; mi < 3; mi++) {
        char *path = nbt_data_path(models[mi]);
        nb_model *m[2];
        nb_model_info info[2];
        for (int pk = 0; pk < 2; pk++) {
            nb_model_params mp = nb_model_default_params();
            mp.repack = pk;
            char err[256];
            if (nb_model_open(path, &mp, &m[pk], err, sizeof err))
                fail_msg("%s: %s", path, err);
            nb_model_get_info(m[pk], &info[pk]);
        }
        assert_int_equal(info[0].packed_bytes, 0);
        const int simd_packs = nbi_kernels_get()->vec_dot_tile_packed[NB_TYPE_Q4_0] != NULL;
        if (simd_packs)
            assert_true(info[1].packed_bytes > 0);
        int n;
        nb_token *toks = tokens_of(m[0], prompts[1], &n);
        const int V = nb_model_n_vocab(m[0]);
        for (int th = 1; th <= 2; th++) {
            nb_ctx *c[2];
            for (int pk = 0; pk < 2; pk++) {
                nb_ctx_params cp = nb_ctx_default_params();
                cp.n_ctx = 256;
                cp.n_threads = th;
                assert_int_equal(nb_ctx_new(m[pk], &cp, &c[pk], NULL, 0), NB_OK);
                assert_int_equal(nb_ctx_decode(c[pk], toks, n, 1), NB_OK);
            }
            for (int t = 0; t < n; t++)
                assert_memory_equal(nb_ctx_logits(c[1], t), nb_ctx_logits(c[0], t), (size_t)V * 4);
            for (int step = 0; step < 3; step++) {
                nb_token next = (nb_token)(11 + step);
                for (int pk = 0; pk < 2; pk++)
                    assert_int_equal(nb_ctx_decode(c[pk], &next, 1, 0), NB_OK);
                assert_memory_equal(nb_ctx_logits(c[1], -1), nb_ctx_logits(c[0], -1), (size_t)V * 4);
            }
            nb_ctx_free(c[0]);
            nb_ctx_free(c[1]);
        }
        printf("    %-36s %.2f MiB packed (of %.2f MiB), logits identical at 1 and 2 threads\n",
               models[mi] + 7, (double)info[1].packed_bytes / 1048576.0,
               (double)info[1].weight_bytes / 1048576.0);
        free(toks);
        nb_model_close(m[0]);
        nb_model_close(m[1]);
        free(path);
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
        {"models/stories260K.gguf", 0.05, 0.005, NULL},
        {"models/llama-2-tiny-random.gguf", 0.05, 0.005, NULL},
        {"models/stories260K-wide-f32.gguf", 0.05, 0.005, NULL},
        {"models/stories260K-wide-f16.gguf", 0.08, 0.01, NULL},
        {"models/stories260K-wide-bf16.gguf", 0.25, 0.03, NULL},
        {"models/stories260K-wide-q8_0.gguf", 1.0, 0.12, NULL},
        {"models/stories260K-wide-q4_0.gguf", 1.0, 0.12, NULL},
        {"models/stories260K-wide-q4_1.gguf", 1.0, 0.12, NULL},
        {"models/stories260K-wide-q5_0.gguf", 1.0, 0.12, NULL},
        {"models/stories260K-wide-q5_1.gguf", 1.0, 0.12, NULL},
        {"models/stories260K-wide-iq4_nl.gguf", 1.0, 0.12, NULL},
        {"models/stories260K-wide-q2_k.gguf", 1.6, 0.2, NULL},
        {"models/stories260K-wide-q3_k.gguf", 1.6, 0.2, NULL},
        {"models/stories260K-wide-q4_k.gguf", 1.0, 0.12, NULL},
        {"models/stories260K-wide-q5_k.gguf", 1.0, 0.12, NULL},
        {"models/stories260K-wide-q6_k.gguf", 1.0, 0.12, NULL},
        {"models/stories260K-wide-q4_k_m.gguf", 1.0, 0.12, NULL},
        {"models/qwen2-random-f16.gguf", 0.08, 0.01, NULL},
        {"models/qwen2-random-q8_0.gguf", 1.0, 0.12, NULL},
        {"synthetic qwen2 (tied output)", 0.05, 0.005, synth_qwen2},
        {"synthetic llama3 rope, window 8, biases", 0.05, 0.005, synth_llama3_swa},
        {"synthetic rope_freqs and linear", 0.05, 0.005, synth_rope_freqs_linear},
    };
    enum { NC = sizeof cases / sizeof cases[0] };
    struct CMUnitTest tests[NC + 6];
    for (int i = 0; i < NC; i++) {
        tests[i] = (struct CMUnitTest)cmocka_unit_test(test_oracle);
        tests[i].name = cases[i].build ? cases[i].model : cases[i].model + 7;
        tests[i].initial_state = (void *)&cases[i];
    }
    tests[NC] = (struct CMUnitTest)cmocka_unit_test(test_batch_invariance);
    tests[NC + 1] = (struct CMUnitTest)cmocka_unit_test(test_decode_errors);
    tests[NC + 2] = (struct CMUnitTest)cmocka_unit_test(test_thread_invariance);
    tests[NC + 3] = (struct CMUnitTest)cmocka_unit_test(test_multi_context);
    tests[NC + 4] = (struct CMUnitTest)cmocka_unit_test(test_abort);
    tests[NC + 5] = (struct CMUnitTest)cmocka_unit_test(test_packed_weights);
    return _cmocka_run_group_tests("forward", tests, NC + 6, NULL, NULL);
}
