/*
 * lora.c - LoRA adapters in llama.cpp's GGUF format, applied without
 * merging: y = W.x + scale * B.(A.x) for every adapted weight.
 *
 * An adapter file has general.type = adapter, adapter.type = lora,
 * adapter.lora.alpha and, for each adapted weight "<name>", the pair
 * "<name>.lora_a" (ne = n_in, rank) and "<name>.lora_b" (ne = rank, n_out),
 * as llama.cpp's convert_lora_to_gguf.py writes them.  Both are converted
 * to F32 at load; adapters are small.  The scale rule is llama.cpp's:
 * alpha * s / rank, or s when alpha is 0.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

nb_status nb_lora_open(const nb_model *m, const char *path, nb_lora **out, char *err,
                       size_t errlen)
{
    *out = NULL;
    if (!m || m->vocab_only || !path)
        return nbi_err(err, errlen, NB_ERR_INVALID, "a LoRA adapter needs an evaluable model");
    nb_gguf *g = NULL;
    nb_status st = nbi_gguf_open_file(path, 1, &g, err, errlen);
    if (st)
        return st;
    nb_lora *a = calloc(1, sizeof *a);
    if (!a) {
        nb_gguf_close(g);
        return nbi_err(err, errlen, NB_ERR_NOMEM, "out of memory");
    }
    a->m = m;
    const char *s;
    size_t len;
    int found;
    const nbi_kernels *k = nbi_kernels_get();
    if ((st = nbi_gguf_get_str(g, "general.type", &s, &len, &found, err, errlen)))
        goto fail;
    if (!found || len != 7 || memcmp(s, "adapter", 7)) {
        st = nbi_err(err, errlen, NB_ERR_FORMAT, "%s: not an adapter (general.type is %s)", path,
                     found ? "not \"adapter\"" : "missing");
        goto fail;
    }
    if ((st = nbi_gguf_get_str(g, "adapter.type", &s, &len, &found, err, errlen)))
        goto fail;
    if (!found || len != 4 || memcmp(s, "lora", 4)) {
        st = nbi_err(err, errlen, NB_ERR_UNSUPPORTED, "%s: adapter.type is %.*s, not lora",
                     path, found ? (int)NBI_MIN(len, 64) : 7, found ? s : "missing");
        goto fail;
    }
    if ((st = nbi_gguf_get_str(g, "general.architecture", &s, &len, &found, err, errlen)))
        goto fail;
    if (!found || strlen(m->arch) != len || memcmp(s, m->arch, len)) {
        st = nbi_err(err, errlen, NB_ERR_INVALID,
                     "%s: the adapter is for architecture %.*s, the model is %s", path,
                     found ? (int)NBI_MIN(len, 64) : 7, found ? s : "missing", m->arch);
        goto fail;
    }
    if ((st = nbi_gguf_get_f32(g, "adapter.lora.alpha", &a->alpha, &found, err, errlen)))
        goto fail;

    a->pairs = nbi_calloc((size_t)(g->n_tensors / 2 + 1), sizeof *a->pairs);
    if (!a->pairs) {
        st = nbi_err(err, errlen, NB_ERR_NOMEM, "out of memory");
        goto fail;
    }
    for (int64_t i = 0; i < g->n_tensors; i++) {
        const nbi_tensor *ta = &g->tensors[i];
        size_t nl = strlen(ta->name);
        if (nl > 7 && !strcmp(ta->name + nl - 7, ".lora_b")) {
            char aname[520];
            snprintf(aname, sizeof aname, "%.*s.lora_a", (int)(nl - 7), ta->name);
            if (!nbi_gguf_tensor(g, aname)) {
                st = nbi_err(err, errlen, NB_ERR_FORMAT, "%s: %s has no %s", path, ta->name,
                             aname);
                goto fail;
            }
            continue; /* loaded with its lora_a */
        }
        if (nl <= 7 || strcmp(ta->name + nl - 7, ".lora_a")) {
            st = nbi_err(err, errlen, NB_ERR_FORMAT, "%s: tensor %s is not a lora_a or lora_b",
                         path, ta->name);
            goto fail;
        }
        char name[512];
        if (nl >= sizeof name) {
            st = nbi_err(err, errlen, NB_ERR_FORMAT, "%s: tensor name too long", path);
            goto fail;
        }
        memcpy(name, ta->name, nl - 7);
        name[nl - 7] = 0;
        const nbi_tensor *w = nbi_gguf_tensor(m->gguf, name);
        int adaptable = 0;
        for (int l = 0; w && l < m->hp.n_layer; l++) {
            const nbi_layer *L = &m->layers[l];
            adaptable |= w == L->wq || w == L->wk || w == L->wv || w == L->wo ||
                         w == L->w_gate || w == L->w_up || w == L->w_down;
        }
        adaptable |= w && w == m->output && m->output != m->tok_embd;
        if (!adaptable) {
            st = nbi_err(err, errlen, w ? NB_ERR_UNSUPPORTED : NB_ERR_INVALID,
                         "%s: %s adapts %s, %s", path, ta->name, name,
                         w ? "which nibble cannot adapt (only the matrices of the blocks and "
                             "an untied output)"
                           : "which the model does not have");
            goto fail;
        }
        char bname[520];
        snprintf(bname, sizeof bname, "%s.lora_b", name);
        const nbi_tensor *tb = nbi_gguf_tensor(g, bname);
        if (!tb) {
            st = nbi_err(err, errlen, NB_ERR_FORMAT, "%s: %s has no %s", path, ta->name, bname);
            goto fail;
        }
        const nbi_tensor *t2[2] = {ta, tb};
        for (int j = 0; j < 2; j++)
            if ((t2[j]->type != NB_TYPE_F32 && t2[j]->type != NB_TYPE_F16 &&
                 t2[j]->type != NB_TYPE_Q8_0) || t2[j]->n_dims != 2) {
                st = nbi_err(err, errlen, NB_ERR_UNSUPPORTED,
                             "%s: %s must be a 2-D F32, F16 or Q8_0 tensor", path, t2[j]->name);
                goto fail;
            }
        if (ta->ne[0] != w->ne[0] || tb->ne[1] != w->ne[1]) {
            st = nbi_err(err, errlen, NB_ERR_INVALID,
                         "%s: %s is (%lld, %lld) and %s (%lld, %lld), which do not fit %s "
                         "(%lld, %lld)", path, ta->name, (long long)ta->ne[0],
                         (long long)ta->ne[1], tb->name, (long long)tb->ne[0],
                         (long long)tb->ne[1], name, (long long)w->ne[0], (long long)w->ne[1]);
            goto fail;
        }
        if (ta->ne[1] != tb->ne[0] || ta->ne[1] < 1) {
            st = nbi_err(err, errlen, NB_ERR_INVALID,
                         "%s: %s has rank %lld but %s rank %lld (lora_a must not be transposed)",
                         path, ta->name, (long long)ta->ne[1], tb->name, (long long)tb->ne[0]);
            goto fail;
        }
        nbi_lora_pair *p = &a->pairs[a->n_pairs++];
        p->w = w;
        p->rank = (int)ta->ne[1];
        p->a = nbi_malloc_array((size_t)(ta->ne[0] * ta->ne[1]), sizeof(float));
        p->b = nbi_malloc_array((size_t)(tb->ne[0] * tb->ne[1]), sizeof(float));
        if (!p->a || !p->b) {
            st = nbi_err(err, errlen, NB_ERR_NOMEM, "out of memory");
            goto fail;
        }
        k->to_float[ta->type](ta->data, p->a, ta->ne[0] * ta->ne[1]);
        k->to_float[tb->type](tb->data, p->b, tb->ne[0] * tb->ne[1]);
    }
    if (a->n_pairs == 0) {
        st = nbi_err(err, errlen, NB_ERR_FORMAT, "%s: the adapter has no lora_a/lora_b pairs",
                     path);
        goto fail;
    }
    nb_gguf_close(g);
    *out = a;
    return NB_OK;
fail:
    nb_gguf_close(g);
    nb_lora_close(a);
    return st;
}

void nb_lora_close(nb_lora *a)
{
    if (!a)
        return;
    for (int i = 0; i < a->n_pairs; i++) {
        free(a->pairs[i].a);
        free(a->pairs[i].b);
    }
    free(a->pairs);
    free(a);
}

int nb_lora_n_pairs(const nb_lora *a) { return a->n_pairs; }

float nbi_lora_factor(const nb_lora *a, const nbi_lora_pair *p, float s)
{
    return a->alpha != 0 ? s * a->alpha / (float)p->rank : s;
}

/* The product in two steps, each split across the threads by output:
 * t = A.x (B rows of rank values), then y += scale * B.t.  Every value is
 * one dot product computed by one thread, so any thread count gives the
 * same bits. */
typedef struct lora_job {
    const nbi_kernels *k;
    const nbi_lora_pair *p;
    const float *x;
    float *y, *t;
    int B;
    int64_t n_in, n_out;
    float scale;
} lora_job;

/* t[b * rank + q] = A[q] . x[b] for items i = b * rank + q in [lo, hi) */
static void lora_down(void *arg, int64_t lo, int64_t hi, int ith)
{
    const lora_job *j = arg;
    const int r = j->p->rank;
    (void)ith;
    for (int64_t i = lo; i < hi; i++) {
        const int64_t b = i / r, q = i % r;
        j->k->vec_dot[NB_TYPE_F32]((int)j->n_in, &j->t[i], j->p->a + (size_t)q * (size_t)j->n_in,
                                   j->x + (size_t)b * (size_t)j->n_in);
    }
}

/* y[b][o] += scale * B[o] . t[b] for outputs o in [lo, hi) */
static void lora_up(void *arg, int64_t lo, int64_t hi, int ith)
{
    const lora_job *j = arg;
    const int r = j->p->rank;
    (void)ith;
    for (int64_t o = lo; o < hi; o++)
        for (int b = 0; b < j->B; b++) {
            float s;
            j->k->vec_dot[NB_TYPE_F32](r, &s, j->p->b + (size_t)o * (size_t)r,
                                       j->t + (size_t)b * (size_t)r);
            j->y[(size_t)b * (size_t)j->n_out + (size_t)o] += j->scale * s;
        }
}

nb_status nbi_lora_apply(const nbi_kernels *k, nbi_pool *pool, const nbi_lora_use *u, int n_use,
                         const nbi_tensor *W, const float *x, int B, float *y)
{
    nb_status st = NB_OK;
    for (int i = 0; i < n_use; i++)
        for (int jp = 0; jp < u[i].lora->n_pairs; jp++) {
            const nbi_lora_pair *p = &u[i].lora->pairs[jp];
            if (p->w != W)
                continue;
            lora_job j = {.k = k, .p = p, .x = x, .y = y, .B = B, .n_in = W->ne[0],
                          .n_out = W->ne[1], .scale = nbi_lora_factor(u[i].lora, p, u[i].scale)};
            j.t = nbi_malloc_array((size_t)B * (size_t)p->rank, sizeof(float));
            if (!j.t) {
                st = NB_ERR_NOMEM;
                continue;
            }
            const int64_t n_down = (int64_t)B * p->rank;
            nbi_pool_run_chunked(pool, n_down, NBI_MAX(1, n_down / 64), lora_down, &j);
            nbi_pool_run_chunked(pool, j.n_out, 64, lora_up, &j);
            free(j.t);
        }
    return st;
}
