/*
 * forward.c - evaluation contexts and the transformer forward pass shared
 * by every architecture (arch_*.c says what differs: biases, rotary
 * layout).
 *
 * A context owns a KV cache (F16, like llama.cpp's default, so a cached
 * token costs 2 * n_layer * kv_dim * 2 bytes) and scratch buffers for a
 * batch of up to n_batch tokens.  A decode call evaluates a whole batch of
 * tokens layer by layer: each weight matrix is streamed once per batch,
 * not once per token.
 *
 * Numerics follow ggml's CPU path where it rounds: activations are
 * converted to the weight type's dot-product format, queries and softmax
 * weights meet the F16 cache in F16, RMSNorm sums in double.  That keeps
 * our logits within rounding of llama.cpp's.
 */
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

#define DEFAULT_N_CTX_CAP 4096
#define DEFAULT_N_BATCH 512

/* One row of a pass: a token of some context at some position, and where
 * its logits go (NULL: not wanted). */
typedef struct fwd_row {
    nb_ctx *ctx;
    int pos;
    nb_token tok;
    float *logits;
} fwd_row;

struct nb_ctx {
    const nb_model *m;
    const nbi_kernels *k;
    nbi_pool *pool;
    int n_ctx, n_batch, n_threads;
    int n_past;
    nb_fp16 *kcache;   /* (n_layer, n_ctx, kv_dim) */
    nb_fp16 *vcache;   /* (n_layer, n_ctx, kv_dim) */
    /* scratch, sized for n_batch tokens */
    float *x;          /* (B, n_embd) residual stream */
    float *xn;         /* (B, n_embd) normalised input */
    float *q;          /* (B, q_dim) */
    float *kcur, *vcur; /* (B, kv_dim) the batch's keys and values */
    float *att;        /* (B, q_dim) attention output */
    float *h1, *h2;    /* (B, n_ff) */
    nb_fp16 *q16;      /* (n_threads, n_head * head_dim) queries in F16 */
    nb_fp16 *acc16;    /* (n_threads, n_head * head_dim) attention accumulators */
    float *rope_cs;    /* (B, n_rot) cos/sin pairs of the batch's positions */
    void *qact;        /* quantized activations: B rows */
    size_t qact_row;   /* bytes per row in qact */
    float *logits;     /* (n_logits, n_vocab) */
    size_t logits_cap; /* rows allocated */
    int n_logits;      /* rows valid from the last decode */
    int logits_first;  /* batch index of logits row 0 */
    float *out;        /* logits scratch of a multi-context pass */
    size_t out_cap;
    fwd_row *row_buf;  /* (n_batch) rows of a pass */
    const fwd_row *rows; /* the pass being evaluated */
    int (*abort_fn)(void *);
    void *abort_data;
    int batch_base;    /* n_past when the current nb_decode_batch began */
    nbi_lora_use *lora; /* adapters applied to this context's tokens */
    int n_lora;
    /* adapters in the pass ws is evaluating: whether any row has some, and
     * each row's context (for the logits product, only the rows that want
     * logits), so that rows of contexts with different adapters share the
     * weights and each gets its own adapters' products */
    int pass_n_lora;
    int lora_failed;           /* an adapter product ran out of memory */
    const nb_ctx **lora_rows;  /* (n_batch) */
    char errmsg[256];
};

nb_ctx_params nb_ctx_default_params(void)
{
    nb_ctx_params p = {0};
    p.n_batch = DEFAULT_N_BATCH;
    return p;
}

static void *alloc_floats(size_t n)
{
    return nbi_malloc_array(n ? n : 1, sizeof(float));
}

nb_status nb_ctx_new(const nb_model *m, const nb_ctx_params *params, nb_ctx **out, char *err,
                     size_t errlen)
{
    nb_ctx_params p = params ? *params : nb_ctx_default_params();
    *out = NULL;
    if (err && errlen)
        err[0] = 0;
    if (!m || m->vocab_only)
        return nbi_err(err, errlen, NB_ERR_INVALID,
                       "the model was opened for its vocabulary only and cannot be evaluated");
    const nbi_hparams *hp = &m->hp;
    if (p.n_ctx < 0 || p.n_batch < 0 || p.n_threads < 0)
        return nbi_err(err, errlen, NB_ERR_INVALID, "negative context, batch or thread count");
    int n_ctx = p.n_ctx ? p.n_ctx : NBI_MIN(hp->n_ctx_train, DEFAULT_N_CTX_CAP);
    if (n_ctx > (1 << 22))
        return nbi_err(err, errlen, NB_ERR_INVALID, "context size %d is too large (limit %d)",
                       n_ctx, 1 << 22);
    int n_batch = p.n_batch ? p.n_batch : DEFAULT_N_BATCH;
    /* not capped by n_ctx: a context may serve as a workspace for others */
    if (n_batch > 8192)
        n_batch = 8192;

    nb_ctx *c = calloc(1, sizeof *c);
    if (!c)
        return nbi_err(err, errlen, NB_ERR_NOMEM, "out of memory");
    c->m = m;
    c->k = nbi_kernels_get();
    c->n_ctx = n_ctx;
    c->n_batch = n_batch;
    c->n_threads = p.n_threads ? p.n_threads : nb_physical_cores();
    if (c->n_threads > NBI_MAX_THREADS) {
        free(c);
        return nbi_err(err, errlen, NB_ERR_INVALID, "%d threads requested (limit %d)",
                       p.n_threads, NBI_MAX_THREADS);
    }
    if (nbi_pool_new(c->n_threads, &c->pool) != NB_OK) {
        int n = c->n_threads;
        free(c);
        return nbi_err(err, errlen, NB_ERR_NOMEM, "cannot start %d threads", n);
    }

    size_t E = (size_t)hp->n_embd, Q = (size_t)hp->n_head * (size_t)hp->head_dim,
           KV = (size_t)hp->n_head_kv * (size_t)hp->head_dim, F = (size_t)hp->n_ff,
           B = (size_t)n_batch;
    uint64_t cache_elems;
    if (!nbi_mul_u64((uint64_t)hp->n_layer * (uint64_t)n_ctx, KV, &cache_elems) ||
        cache_elems > SIZE_MAX / 4) {
        free(c);
        return nbi_err(err, errlen, NB_ERR_NOMEM, "KV cache size overflows");
    }
    c->kcache = nbi_malloc_array((size_t)cache_elems, sizeof(nb_fp16));
    c->vcache = nbi_malloc_array((size_t)cache_elems, sizeof(nb_fp16));
    c->x = alloc_floats(B * E);
    c->xn = alloc_floats(B * E);
    c->q = alloc_floats(B * Q);
    c->kcur = alloc_floats(B * KV);
    c->vcur = alloc_floats(B * KV);
    c->att = alloc_floats(B * Q);
    c->h1 = alloc_floats(B * F);
    c->h2 = alloc_floats(B * F);
    c->q16 = nbi_malloc_array((size_t)c->n_threads * Q, sizeof(nb_fp16));
    c->acc16 = nbi_malloc_array((size_t)c->n_threads * Q, sizeof(nb_fp16));
    c->rope_cs = alloc_floats(B * (size_t)hp->n_rot);
    c->row_buf = nbi_malloc_array(B, sizeof(fwd_row));
    c->lora_rows = nbi_malloc_array(B, sizeof(nb_ctx *));

    /* Activation rows are quantized for every weight type in the model;
     * size the buffer for the widest format over the longest input. */
    size_t row = 0;
    const nbi_tensor *ws[] = {m->output, m->layers[0].wq, m->layers[0].wo,
                              m->layers[0].w_down};
    for (int l = 0; l < hp->n_layer; l++) {
        const nbi_layer *L = &m->layers[l];
        const nbi_tensor *lw[] = {L->wq, L->wk, L->wv, L->wo, L->w_gate, L->w_up, L->w_down};
        for (size_t i = 0; i < sizeof lw / sizeof lw[0]; i++)
            row = NBI_MAX(row, nbi_row_size(nbi_types[lw[i]->type].vec_dot_type, lw[i]->ne[0]));
    }
    for (size_t i = 0; i < sizeof ws / sizeof ws[0]; i++)
        row = NBI_MAX(row, nbi_row_size(nbi_types[ws[i]->type].vec_dot_type, ws[i]->ne[0]));
    c->qact_row = (row + 63) & ~(size_t)63;
    c->qact = nbi_malloc_array(B, c->qact_row);

    if (!c->kcache || !c->vcache || !c->x || !c->xn || !c->q || !c->kcur || !c->vcur ||
        !c->att || !c->h1 || !c->h2 || !c->q16 || !c->acc16 || !c->rope_cs || !c->row_buf || !c->lora_rows ||
        !c->qact) {
        nb_ctx_free(c);
        return nbi_err(err, errlen, NB_ERR_NOMEM, "out of memory allocating a %d-token context",
                       n_ctx);
    }
    *out = c;
    return NB_OK;
}

void nb_ctx_free(nb_ctx *c)
{
    if (!c)
        return;
    nbi_pool_free(c->pool);
    free(c->kcache);
    free(c->vcache);
    free(c->x);
    free(c->xn);
    free(c->q);
    free(c->kcur);
    free(c->vcur);
    free(c->att);
    free(c->h1);
    free(c->h2);
    free(c->q16);
    free(c->acc16);
    free(c->rope_cs);
    free(c->qact);
    free(c->logits);
    free(c->out);
    free(c->row_buf);
    free(c->lora_rows);
    free(c->lora);
    free(c);
}

int nb_ctx_n_ctx(const nb_ctx *c) { return c->n_ctx; }
int nb_ctx_n_past(const nb_ctx *c) { return c->n_past; }
const char *nb_ctx_errmsg(const nb_ctx *c) { return c->errmsg; }

nb_status nb_ctx_truncate(nb_ctx *c, int n)
{
    if (n < 0 || n > c->n_past)
        return nbi_err(c->errmsg, sizeof c->errmsg, NB_ERR_INVALID,
                       "cannot truncate to %d tokens: the cache holds %d", n, c->n_past);
    c->n_past = n;
    return NB_OK;
}

/* ------------------------------------------------------------------ ops */

/* y = x / rms(x) * w, summing the squares in double as ggml does. */
static void rmsnorm(float *y, const float *x, const float *w, int n, float eps)
{
    double sum = 0.0;
    for (int i = 0; i < n; i++)
        sum += (double)(x[i] * x[i]);
    const float mean = (float)(sum / n);
    const float scale = 1.0f / sqrtf(mean + eps);
    for (int i = 0; i < n; i++)
        y[i] = (x[i] * scale) * w[i];
}

/* Matrix products y(B, n_out) = x(B, n_in) . W^T, where W has n_out rows
 * of n_in.  The activations are converted once to the weight type's dot
 * format; then the threads claim chunks of weight rows (threads.c), and
 * each chunk's rows are used for all B tokens while they are in cache.
 *
 * Products of one input with several weights (Q, K and V; gate and up)
 * are one job, which saves conversions and a wait for the slower thread
 * per extra weight: the job's rows are the weights' rows one after the
 * other.  For the feed-forward, a chunk instead covers the same rows of
 * gate and up and applies SwiGLU to them at once; chunks start at
 * multiples of 16, so SwiGLU's groups of 8 are those of one call over
 * the whole row. */
#define MM_MAX 3

typedef struct matmul_job {
    nb_ctx *c;
    const float *x;
    int B, n_w;
    int glu;                      /* W[0] gate, W[1] up: y[0] = swiglu(y[0], y[1]) */
    const nbi_tensor *W[MM_MAX];
    float *y[MM_MAX];
    int64_t first[MM_MAX + 1];    /* first row of W[i] in the job's rows */
} matmul_job;

static void matmul_quantize(void *arg, int ith, int nth)
{
    const matmul_job *j = arg;
    const int n_in = (int)j->W[0]->ne[0];
    const nbi_from_float_fn quant = j->c->k->from_float[nbi_types[j->W[0]->type].vec_dot_type];
    char *qa = j->c->qact;
    for (int t = ith; t < j->B; t += nth)
        quant(j->x + (size_t)t * n_in, qa + (size_t)t * j->c->qact_row, n_in);
}

/* Rows [r0, r1) of W, for every token, into y (B, n_out). */
static void matmul_range(const nb_ctx *c, const nbi_tensor *W, int B, float *y, int64_t r0,
                         int64_t r1)
{
    const int n_in = (int)W->ne[0], n_out = (int)W->ne[1];
    const size_t wrow = nbi_row_size(W->type, n_in), arow = c->qact_row;
    const char *w = W->data, *qa = c->qact;
    nbi_vec_dot_tile_fn tile = c->k->vec_dot_tile[W->type];
    if (W->packed) { /* groups of rows: r0 and r1 are multiples of the group (matmul_run) */
        tile = c->k->vec_dot_tile_packed[W->type];
        w = W->packed;
    }
    if (tile) {
        tile(n_in, (int)(r1 - r0), B, y + r0, (size_t)n_out, w + (size_t)r0 * wrow, wrow, qa,
             arow);
        return;
    }
    const nbi_vec_dot_fn dot = c->k->vec_dot[W->type];
    for (int64_t r = r0; r < r1; r++) {
        const char *wr = w + (size_t)r * wrow;
        for (int t = 0; t < B; t++)
            dot(n_in, &y[(size_t)t * n_out + r], wr, qa + (size_t)t * arow);
    }
}

static void matmul_rows(void *arg, int64_t lo, int64_t hi, int ith)
{
    const matmul_job *j = arg;
    (void)ith;
    if (j->glu) {
        const int64_t F = j->W[0]->ne[1];
        matmul_range(j->c, j->W[0], j->B, j->y[0], lo, hi);
        matmul_range(j->c, j->W[1], j->B, j->y[1], lo, hi);
        for (int t = 0; t < j->B; t++)
            j->c->k->swiglu((int)(hi - lo), j->y[0] + (size_t)t * F + lo,
                               j->y[1] + (size_t)t * F + lo);
        return;
    }
    for (int i = 0; i < j->n_w; i++) {
        const int64_t r0 = NBI_MAX(lo, j->first[i]), r1 = NBI_MIN(hi, j->first[i + 1]);
        if (r0 < r1)
            matmul_range(j->c, j->W[i], j->B, j->y[i], r0 - j->first[i], r1 - j->first[i]);
    }
}

/* Rows per chunk of a product: a multiple of 16 (the widest row group of
 * the tiles, and what keeps SwiGLU's groups of 8 aligned).  One token
 * streams the weights, and about 64 KiB of them per chunk keeps the cost
 * of claiming and of starting a tile call small while leaving chunks
 * enough to even out the threads; a batch computes more per row, so a
 * quarter of each thread's share is enough (smaller chunks measured
 * slower for prompts: each tile call prepares every activation row's
 * block sums). */
static int64_t chunk_rows(const nb_ctx *c, const nbi_tensor *W, int B, int64_t n)
{
    const int64_t wrow = (int64_t)nbi_row_size(W->type, W->ne[0]);
    int64_t rows = (64 << 10) / (wrow > 0 ? wrow : 1);
    if (B > 1)
        rows = NBI_MAX(rows, n / (4 * (int64_t)c->n_threads));
    return NBI_MAX(16, (rows + 15) / 16 * 16);
}

static void matmul_run(matmul_job *j)
{
    if (j->B == 0)
        return;
    nbi_pool_run(j->B > 1 ? j->c->pool : NULL, matmul_quantize, j);
    const int64_t n = j->glu ? j->W[0]->ne[1] : j->first[j->n_w];
    nbi_pool_run_chunked(j->c->pool, n, chunk_rows(j->c, j->W[0], j->B, n), matmul_rows, j);
}

static int same_lora(const nb_ctx *a, const nb_ctx *b);

/* y += each row's adapters' products, over runs of rows whose contexts
 * apply the same adapters. */
static void lora_rows_apply(nb_ctx *c, const nbi_tensor *W, const float *x, int B, float *y)
{
    const int64_t n_in = W->ne[0], n_out = W->ne[1];
    for (int t = 0; t < B;) {
        const nb_ctx *rc = c->lora_rows[t];
        int u = t + 1;
        while (u < B && same_lora(c->lora_rows[u], rc))
            u++;
        if (rc->n_lora &&
            nbi_lora_apply(c->k, c->pool, rc->lora, rc->n_lora, W, x + (size_t)t * n_in, u - t,
                           y + (size_t)t * n_out))
            c->lora_failed = 1;
        t = u;
    }
}

static void matmul(nb_ctx *c, const nbi_tensor *W, const float *x, int B, float *y)
{
    matmul_job j = {.c = c, .x = x, .B = B, .n_w = 1, .W = {W}, .y = {y}, .first = {0, W->ne[1]}};
    matmul_run(&j);
    if (c->pass_n_lora)
        lora_rows_apply(c, W, x, B, y);
}

/* Whether the weights can share one conversion of their input, and be
 * one job: chunks start at multiples of 16 of the job's rows, so a packed
 * weight must start at a multiple of its group there (its own row count
 * is one, so its chunks then end on group boundaries too). */
static int same_input(const nbi_tensor *const *W, int n)
{
    int64_t first = 0;
    for (int i = 0; i < n; i++) {
        if (nbi_types[W[i]->type].vec_dot_type != nbi_types[W[0]->type].vec_dot_type ||
            W[i]->ne[0] != W[0]->ne[0] || (W[i]->packed && first % NBI_PACK_ROWS != 0))
            return 0;
        first += W[i]->ne[1];
    }
    return 1;
}

/* q, k, v = x . Wq^T, x . Wk^T, x . Wv^T */
static void matmul_qkv(nb_ctx *c, const nbi_layer *L, const float *x, int B)
{
    const nbi_tensor *W[3] = {L->wq, L->wk, L->wv};
    if (c->pass_n_lora || !same_input(W, 3)) {
        matmul(c, L->wq, x, B, c->q);
        matmul(c, L->wk, x, B, c->kcur);
        matmul(c, L->wv, x, B, c->vcur);
        return;
    }
    matmul_job j = {.c = c, .x = x, .B = B, .n_w = 3, .W = {W[0], W[1], W[2]},
                    .y = {c->q, c->kcur, c->vcur}};
    for (int i = 0; i < 3; i++)
        j.first[i + 1] = j.first[i] + W[i]->ne[1];
    matmul_run(&j);
}

/* h1 = swiglu(x . Wgate^T, x . Wup^T); h2 is scratch */
static void matmul_glu(nb_ctx *c, const nbi_layer *L, const float *x, int B)
{
    const nbi_tensor *W[2] = {L->w_gate, L->w_up};
    if (c->pass_n_lora || !same_input(W, 2)) {
        matmul(c, L->w_gate, x, B, c->h1);
        matmul(c, L->w_up, x, B, c->h2);
        for (int t = 0; t < B; t++)
            c->k->swiglu((int)L->w_gate->ne[1], c->h1 + (size_t)t * L->w_gate->ne[1],
                            c->h2 + (size_t)t * L->w_gate->ne[1]);
        return;
    }
    matmul_job j = {.c = c, .x = x, .B = B, .n_w = 2, .glu = 1, .W = {W[0], W[1]},
                    .y = {c->h1, c->h2}};
    matmul_run(&j);
}

/* Cosines and sines of the rotary angles of one position: theta grows by
 * a constant factor per pair, computed by repeated multiplication as ggml
 * does (the rotation itself is the kernel table's rope). */
static void rope_prepare(const nb_model *m, float *cs, int pos)
{
    const nbi_hparams *hp = &m->hp;
    const float theta_scale = powf(hp->rope_freq_base, -2.0f / (float)hp->n_rot);
    float theta = (float)pos;
    for (int i = 0; i < hp->n_rot; i += 2) {
        float ff = m->rope_freqs ? m->rope_freqs[i / 2] : 1.0f;
        float th = hp->rope_freq_scale * (theta / ff);
        cs[i] = cosf(th);
        cs[i + 1] = sinf(th);
        theta *= theta_scale;
    }
}

/* GPT-NeoX's rotary layout (Qwen2): pair i is (x[i], x[i + n_rot/2]),
 * with the same angles as the kernel's adjacent pairs.  Scalar, and
 * rounded as the kernel rounds. */
static void rope_neox(int n_heads, int head_dim, int n_rot, float *restrict x,
                      const float *restrict cs)
{
    const int half = n_rot / 2;
    for (int h = 0; h < n_heads; h++) {
        float *v = x + (size_t)h * head_dim;
        for (int i = 0; i < half; i++) {
            const float c = cs[2 * i], s = cs[2 * i + 1];
            const float x0 = v[i], x1 = v[i + half];
            v[i] = fmaf(x0, c, -(x1 * s));
            v[i + half] = fmaf(x0, s, x1 * c);
        }
    }
}

static void add_bias(float *y, const float *b, int n)
{
    for (int i = 0; i < n; i++)
        y[i] += b[i];
}

/* Attention of the query heads of one token that share key/value head g
 * (heads g * G .. g * G + G - 1) over that token's cache rows 0..pos (the
 * last n_swa of them under a sliding window): the kernel table's
 * attn_f16, which computes what llama.cpp's default (flash attention) CPU
 * path computes, rounding for rounding. */
static void attend_group(const nb_ctx *c, const nb_ctx *rc, int layer, const float *q, int pos,
                         int g, float *o, nb_fp16 *q16, nb_fp16 *acc)
{
    const nbi_hparams *hp = &c->m->hp;
    const int hd = hp->head_dim, kv_dim = hp->n_head_kv * hd;
    const int G = hp->n_head / hp->n_head_kv;
    const size_t koff = (size_t)g * hd;
    const nb_fp16 *K = rc->kcache + (size_t)layer * rc->n_ctx * kv_dim + koff;
    const nb_fp16 *V = rc->vcache + (size_t)layer * rc->n_ctx * kv_dim + koff;
    const int first = hp->n_swa && pos >= hp->n_swa ? pos - hp->n_swa + 1 : 0;

    c->k->from_float[NB_TYPE_F16](q + (size_t)g * G * hd, q16, (int64_t)G * hd);
    c->k->attn_f16(hd, G, pos - first + 1, 1.0f / sqrtf((float)hd), q16,
                   K + (size_t)first * kv_dim, V + (size_t)first * kv_dim, (size_t)kv_dim,
                   o + (size_t)g * G * hd, acc);
}

typedef struct attend_job {
    nb_ctx *c;
    int layer, B;
} attend_job;

/* Every (token, key/value head) pair is independent.  A later token
 * attends to more of the cache, so the pairs are claimed in chunks rather
 * than split evenly: a thread whose share was cheap helps with the rest. */
static void attend_task(void *arg, int64_t lo, int64_t hi, int ith)
{
    const attend_job *j = arg;
    nb_ctx *c = j->c;
    const nbi_hparams *hp = &c->m->hp;
    const int Qd = hp->n_head * hp->head_dim;
    for (int64_t i = lo; i < hi; i++) {
        const int t = (int)(i / hp->n_head_kv), g = (int)(i % hp->n_head_kv);
        attend_group(c, c->rows[t].ctx, j->layer, c->q + (size_t)t * Qd, c->rows[t].pos, g,
                     c->att + (size_t)t * Qd, c->q16 + (size_t)ith * Qd,
                     c->acc16 + (size_t)ith * Qd);
    }
}

static int aborted(const nb_ctx *ws)
{
    return ws->abort_fn && ws->abort_fn(ws->abort_data);
}

/* Evaluate B rows (B <= ws->n_batch) with the scratch, threads and kernels
 * of ws.  Rows may belong to different contexts of the same model: the
 * weights are streamed once for all of them, and each row attends to its
 * own context's cache.  Keys and values are written at each row's
 * position; the caller advances n_past when this returns NB_OK. */
static nb_status forward_rows_run(nb_ctx *ws, const fwd_row *rows, int B);

static nb_status forward_rows(nb_ctx *ws, const fwd_row *rows, int B)
{
    ws->lora_failed = 0;
    nb_status st = forward_rows_run(ws, rows, B);
    if (!st && ws->lora_failed)
        st = nbi_err(ws->errmsg, sizeof ws->errmsg, NB_ERR_NOMEM,
                     "out of memory for a LoRA adapter's product");
    return st;
}

static nb_status forward_rows_run(nb_ctx *ws, const fwd_row *rows, int B)
{
    nb_ctx *c = ws;
    const nb_model *m = c->m;
    const nbi_hparams *hp = &m->hp;
    const int E = hp->n_embd, hd = hp->head_dim;
    const int Qd = hp->n_head * hd, KVd = hp->n_head_kv * hd;
    const nbi_to_float_fn embd_row = c->k->to_float[m->tok_embd->type];
    const nbi_rope_fn rope = m->ad->rope == NBI_ROPE_NEOX ? rope_neox : c->k->rope;
    const size_t embd_row_size = nbi_row_size(m->tok_embd->type, E);

    c->rows = rows;
    c->pass_n_lora = 0;
    for (int t = 0; t < B; t++) {
        c->lora_rows[t] = rows[t].ctx;
        c->pass_n_lora |= rows[t].ctx->n_lora;
    }
    for (int t = 0; t < B; t++) {
        embd_row((const char *)m->tok_embd->data + (size_t)rows[t].tok * embd_row_size,
                 c->x + (size_t)t * E, E);
        /* the rotation angles depend on the position only: once per pass */
        rope_prepare(m, c->rope_cs + (size_t)t * hp->n_rot, rows[t].pos);
    }

    for (int l = 0; l < hp->n_layer; l++) {
        const nbi_layer *L = &m->layers[l];
        if (aborted(ws))
            return NB_ERR_CANCELLED;

        for (int t = 0; t < B; t++)
            rmsnorm(c->xn + (size_t)t * E, c->x + (size_t)t * E, L->attn_norm, E, hp->rms_eps);
        matmul_qkv(c, L, c->xn, B);
        for (int t = 0; t < B; t++) {
            float *q = c->q + (size_t)t * Qd, *k = c->kcur + (size_t)t * KVd;
            if (L->bq)
                add_bias(q, L->bq, Qd);
            if (L->bk)
                add_bias(k, L->bk, KVd);
            if (L->bv)
                add_bias(c->vcur + (size_t)t * KVd, L->bv, KVd);
            const float *cs = c->rope_cs + (size_t)t * hp->n_rot;
            rope(hp->n_head, hd, hp->n_rot, q, cs);
            rope(hp->n_head_kv, hd, hp->n_rot, k, cs);
            const nb_ctx *rc = rows[t].ctx;
            const size_t at = ((size_t)l * rc->n_ctx + rows[t].pos) * KVd;
            c->k->from_float[NB_TYPE_F16](c->kcur + (size_t)t * KVd, rc->kcache + at, KVd);
            c->k->from_float[NB_TYPE_F16](c->vcur + (size_t)t * KVd, rc->vcache + at, KVd);
        }

        attend_job aj = {c, l, B};
        nbi_pool_run_chunked(c->pool, (int64_t)B * hp->n_head_kv, 1, attend_task, &aj);
        matmul(c, L->wo, c->att, B, c->xn);
        if (L->bo)
            for (int t = 0; t < B; t++)
                add_bias(c->xn + (size_t)t * E, L->bo, E);
        for (size_t i = 0; i < (size_t)B * E; i++)
            c->x[i] += c->xn[i];

        for (int t = 0; t < B; t++)
            rmsnorm(c->xn + (size_t)t * E, c->x + (size_t)t * E, L->ffn_norm, E, hp->rms_eps);
        matmul_glu(c, L, c->xn, B);
        matmul(c, L->w_down, c->h1, B, c->xn);
        for (size_t i = 0; i < (size_t)B * E; i++)
            c->x[i] += c->xn[i];
    }

    /* Logits for the rows that want them.  When their destinations are
     * consecutive rows of one buffer (a single context's decode), the
     * product writes there directly; otherwise through scratch. */
    int n_out = 0, direct = 1;
    float *first_dst = NULL;
    for (int t = 0; t < B; t++) {
        if (!rows[t].logits)
            continue;
        rmsnorm(c->xn + (size_t)n_out * E, c->x + (size_t)t * E, m->output_norm, E, hp->rms_eps);
        c->lora_rows[n_out] = rows[t].ctx; /* compacted in place: n_out <= t */
        if (!first_dst)
            first_dst = rows[t].logits;
        else if (rows[t].logits != first_dst + (size_t)n_out * hp->n_vocab)
            direct = 0;
        n_out++;
    }
    if (n_out == 0)
        return NB_OK;
    if (direct) {
        matmul(c, m->output, c->xn, n_out, first_dst);
        return NB_OK;
    }
    if ((size_t)n_out > c->out_cap) {
        float *o = nbi_malloc_array((size_t)n_out * (size_t)hp->n_vocab, sizeof(float));
        if (!o)
            return NB_ERR_NOMEM;
        free(c->out);
        c->out = o;
        c->out_cap = (size_t)n_out;
    }
    matmul(c, m->output, c->xn, n_out, c->out);
    for (int t = 0, k = 0; t < B; t++)
        if (rows[t].logits)
            memcpy(rows[t].logits, c->out + (size_t)(k++) * hp->n_vocab,
                   (size_t)hp->n_vocab * sizeof(float));
    return NB_OK;
}

/* Make room for `rows` rows of logits in a context. */
static nb_status reserve_logits(nb_ctx *c, size_t rows)
{
    if (rows <= c->logits_cap)
        return NB_OK;
    float *nl = nbi_malloc_array(rows * (size_t)c->m->hp.n_vocab, sizeof(float));
    if (!nl)
        return nbi_err(c->errmsg, sizeof c->errmsg, NB_ERR_NOMEM,
                       "out of memory for %zu rows of logits", rows);
    free(c->logits);
    c->logits = nl;
    c->logits_cap = rows;
    return NB_OK;
}

static nb_status check_tokens(nb_ctx *c, const nb_token *tokens, int n)
{
    const int n_vocab = c->m->hp.n_vocab;
    if (n <= 0 || !tokens)
        return nbi_err(c->errmsg, sizeof c->errmsg, NB_ERR_INVALID, "no tokens to evaluate");
    for (int i = 0; i < n; i++)
        if (tokens[i] < 0 || tokens[i] >= n_vocab)
            return nbi_err(c->errmsg, sizeof c->errmsg, NB_ERR_INVALID,
                           "token id %" PRId32 " at index %d is outside the vocabulary (0..%d)",
                           tokens[i], i, n_vocab - 1);
    if (n > c->n_ctx - c->n_past)
        return nbi_err(c->errmsg, sizeof c->errmsg, NB_ERR_CONTEXT_FULL,
                       "%d tokens do not fit: %d of the %d-token context are in use", n,
                       c->n_past, c->n_ctx);
    return NB_OK;
}

/* Whether two contexts apply the same adapters with the same scales. */
static int same_lora(const nb_ctx *a, const nb_ctx *b)
{
    if (a->n_lora != b->n_lora)
        return 0;
    for (int i = 0; i < a->n_lora; i++)
        if (a->lora[i].lora != b->lora[i].lora || a->lora[i].scale != b->lora[i].scale)
            return 0;
    return 1;
}

nb_status nb_decode_batch(nb_ctx *ws, nb_batch_item *items, int n_items)
{
    if (n_items <= 0 || !items || !items[0].ctx)
        return NB_ERR_INVALID;
    if (!ws)
        ws = items[0].ctx;
    nb_status st;
    for (int i = 0; i < n_items; i++) {
        nb_ctx *c = items[i].ctx;
        if (!c || c->m != ws->m)
            return nbi_err(ws->errmsg, sizeof ws->errmsg, NB_ERR_INVALID,
                           "batch item %d: contexts must belong to the same model", i);
        for (int j = 0; j < i; j++)
            if (items[j].ctx == c)
                return nbi_err(ws->errmsg, sizeof ws->errmsg, NB_ERR_INVALID,
                               "batch item %d: a context may appear once per batch", i);
        c->errmsg[0] = 0;
        if ((st = check_tokens(c, items[i].tokens, items[i].n)))
            return st;
        if ((st = reserve_logits(c, items[i].all_logits ? (size_t)items[i].n : 1)))
            return st;
    }
    for (int i = 0; i < n_items; i++) {
        nb_ctx *c = items[i].ctx;
        c->n_logits = items[i].all_logits ? items[i].n : 1;
        c->logits_first = items[i].all_logits ? 0 : items[i].n - 1;
        c->batch_base = c->n_past;
    }
    /* Fill passes of up to n_batch rows, items in order; a context's rows
     * stay in order, so each sees its earlier tokens in the cache. */
    fwd_row *rows = ws->row_buf;
    int item = 0, done = 0;
    while (item < n_items) {
        int B = 0;
        int start_item = item, start_done = done;
        while (B < ws->n_batch && item < n_items) {
            const nb_batch_item *it = &items[item];
            nb_ctx *c = it->ctx;
            int take = NBI_MIN(ws->n_batch - B, it->n - done);
            for (int k = 0; k < take; k++) {
                int idx = done + k;
                fwd_row *r = &rows[B++];
                r->ctx = c;
                r->pos = c->batch_base + idx;
                r->tok = it->tokens[idx];
                r->logits = it->all_logits ? c->logits + (size_t)idx * c->m->hp.n_vocab
                            : idx == it->n - 1 ? c->logits
                                               : NULL;
            }
            done += take;
            if (done == it->n) {
                item++;
                done = 0;
            }
        }
        if ((st = forward_rows(ws, rows, B))) {
            /* nothing of an unfinished item counts as evaluated */
            for (int i = 0; i < n_items; i++)
                items[i].ctx->n_logits = 0;
            return nbi_err(ws->errmsg, sizeof ws->errmsg, st,
                           st == NB_ERR_CANCELLED ? "cancelled" : "out of memory");
        }
        /* the rows of this pass are in the caches now */
        for (int i = start_item; i <= item && i < n_items; i++)
            items[i].ctx->n_past = items[i].ctx->batch_base + (i == item ? done : items[i].n);
        (void)start_done;
    }
    return NB_OK;
}

nb_status nb_ctx_decode(nb_ctx *c, const nb_token *tokens, int n, int all_logits)
{
    nb_batch_item it = {c, tokens, n, all_logits};
    return nb_decode_batch(c, &it, 1);
}

void nb_ctx_set_abort(nb_ctx *c, int (*fn)(void *data), void *data)
{
    c->abort_fn = fn;
    c->abort_data = data;
}

const float *nb_ctx_logits(const nb_ctx *c, int i)
{
    if (c->n_logits == 0)
        return NULL;
    if (i < 0)
        return c->logits + (size_t)(c->n_logits - 1) * c->m->hp.n_vocab;
    int row = i - c->logits_first;
    if (row < 0 || row >= c->n_logits)
        return NULL;
    return c->logits + (size_t)row * c->m->hp.n_vocab;
}

nb_status nb_ctx_set_lora(nb_ctx *c, nb_lora *const *adapters, const float *scales, int n)
{
    if (n < 0 || n > 64 || (n && (!adapters || !scales)))
        return nbi_err(c->errmsg, sizeof c->errmsg, NB_ERR_INVALID,
                       "%d adapters (0..64, with their scales)", n);
    nbi_lora_use *u = NULL;
    if (n) {
        u = nbi_malloc_array((size_t)n, sizeof *u);
        if (!u)
            return nbi_err(c->errmsg, sizeof c->errmsg, NB_ERR_NOMEM, "out of memory");
        for (int i = 0; i < n; i++) {
            if (!adapters[i]) {
                free(u);
                return nbi_err(c->errmsg, sizeof c->errmsg, NB_ERR_INVALID,
                               "adapter %d is NULL", i);
            }
            if (adapters[i]->m != c->m) {
                free(u);
                return nbi_err(c->errmsg, sizeof c->errmsg, NB_ERR_INVALID,
                               "adapter %d was opened for another model", i);
            }
            u[i].lora = adapters[i];
            u[i].scale = scales[i];
        }
    }
    free(c->lora);
    c->lora = u;
    c->n_lora = n;
    return NB_OK;
}
