/*
 * model.c - turning a validated GGUF file into a model: choosing the
 * architecture (arch_*.c), reading the hyperparameters, checking that
 * every tensor the forward pass needs is present with the expected shape
 * and a supported type, and summarising the model for `nibble info`.
 */
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "../kernels/kernels.h"
#include "internal.h"

/* Bounds that keep every size computation far from overflow; real models
 * are well inside them. */
#define MAX_EMBD (1 << 16)
#define MAX_LAYER 1024
#define MAX_HEAD 1024
#define MAX_FF (1 << 20)
#define MAX_CTX (1 << 24)

/* The architectures nibble runs.  A new one is a file arch_<name>.c and a
 * line here. */
static const nbi_arch *const arches[] = {&nbi_arch_llama, &nbi_arch_qwen2};
#define N_ARCHES (sizeof arches / sizeof arches[0])

static const nbi_arch *find_arch(const char *name)
{
    for (size_t i = 0; i < N_ARCHES; i++)
        if (!strcmp(arches[i]->name, name))
            return arches[i];
    return NULL;
}

/* "llama, qwen2" for error messages. */
static const char *arch_list(char *buf, size_t cap)
{
    size_t n = 0;
    buf[0] = 0;
    for (size_t i = 0; i < N_ARCHES && n < cap; i++)
        n += (size_t)snprintf(buf + n, cap - n, "%s%s", i ? ", " : "", arches[i]->name);
    return buf;
}

nb_model_params nb_model_default_params(void)
{
    nb_model_params p = {0};
    p.use_mmap = 1;
    const char *env = getenv("NIBBLE_REPACK");
    p.repack = !(env && strcmp(env, "0") == 0);
    return p;
}

static nb_status get_dim(const nb_gguf *g, const char *arch, const char *suffix, int *out,
                         int required, int lo, int hi, char *err, size_t errlen)
{
    char key[128];
    snprintf(key, sizeof key, "%s.%s", arch, suffix);
    uint32_t v;
    int found;
    nb_status st = nbi_gguf_get_u32(g, key, &v, required ? NULL : &found, err, errlen);
    if (st)
        return st;
    if (!required && !found)
        return NB_OK;
    if (v < (uint32_t)lo || v > (uint32_t)hi)
        return nbi_err(err, errlen, NB_ERR_FORMAT, "%s = %" PRIu32 " is out of range (%d to %d)",
                       key, v, lo, hi);
    *out = (int)v;
    return NB_OK;
}

static nb_status get_float(const nb_gguf *g, const char *arch, const char *suffix, float *out,
                           int required, char *err, size_t errlen)
{
    char key[128];
    snprintf(key, sizeof key, "%s.%s", arch, suffix);
    int found;
    nb_status st = nbi_gguf_get_f32(g, key, out, required ? NULL : &found, err, errlen);
    if (st)
        return st;
    if ((required || found) && !(*out > 0.0f && *out < 1e30f))
        return nbi_err(err, errlen, NB_ERR_FORMAT, "%s = %g is out of range", key, (double)*out);
    return NB_OK;
}

static nb_status load_hparams(nb_model *m, char *err, size_t errlen)
{
    const nb_gguf *g = m->gguf;
    nbi_hparams *hp = &m->hp;
    const char *a = m->arch;
    nb_status st;
    if ((st = get_dim(g, a, "context_length", &hp->n_ctx_train, 1, 1, MAX_CTX, err, errlen)) ||
        (st = get_dim(g, a, "embedding_length", &hp->n_embd, 1, 1, MAX_EMBD, err, errlen)) ||
        (st = get_dim(g, a, "block_count", &hp->n_layer, 1, 1, MAX_LAYER, err, errlen)) ||
        (st = get_dim(g, a, "feed_forward_length", &hp->n_ff, 1, 1, MAX_FF, err, errlen)) ||
        (st = get_dim(g, a, "attention.head_count", &hp->n_head, 1, 1, MAX_HEAD, err, errlen)))
        return st;
    hp->n_head_kv = hp->n_head;
    if ((st = get_dim(g, a, "attention.head_count_kv", &hp->n_head_kv, 0, 1, MAX_HEAD, err,
                      errlen)))
        return st;
    if (hp->n_head % hp->n_head_kv != 0)
        return nbi_err(err, errlen, NB_ERR_FORMAT,
                       "%d attention heads cannot be grouped over %d key/value heads",
                       hp->n_head, hp->n_head_kv);
    hp->head_dim = hp->n_embd % hp->n_head == 0 ? hp->n_embd / hp->n_head : 0;
    int vdim = -1;
    if ((st = get_dim(g, a, "attention.key_length", &hp->head_dim, 0, 1, MAX_EMBD, err,
                      errlen)) ||
        (st = get_dim(g, a, "attention.value_length", &vdim, 0, 1, MAX_EMBD, err, errlen)))
        return st;
    if (hp->head_dim == 0)
        return nbi_err(err, errlen, NB_ERR_FORMAT,
                       "embedding length %d is not a multiple of the %d heads", hp->n_embd,
                       hp->n_head);
    if (vdim >= 0 && vdim != hp->head_dim)
        return nbi_err(err, errlen, NB_ERR_UNSUPPORTED,
                       "key length %d differs from value length %d", hp->head_dim, vdim);
    hp->n_rot = hp->head_dim;
    if ((st = get_dim(g, a, "rope.dimension_count", &hp->n_rot, 0, 2, hp->head_dim, err,
                      errlen)))
        return st;
    if (hp->n_rot % 2)
        return nbi_err(err, errlen, NB_ERR_FORMAT, "rope.dimension_count %d is odd", hp->n_rot);
    hp->rope_freq_base = 10000.0f;
    hp->rope_freq_scale = 1.0f;
    if ((st = get_float(g, a, "rope.freq_base", &hp->rope_freq_base, 0, err, errlen)) ||
        (st = get_float(g, a, "attention.layer_norm_rms_epsilon", &hp->rms_eps, 1, err,
                        errlen)))
        return st;
    /* Mistral-style sliding-window attention: each token sees the last
     * n_swa positions, itself included.  Applied as a mask; the cache
     * still keeps every position. */
    if ((st = get_dim(g, a, "attention.sliding_window", &hp->n_swa, 0, 0, MAX_CTX, err, errlen)))
        return st;

    /* Rotary scaling.  Linear is a plain position scale.  Llama 3.1's
     * "llama3" divides each pair's angle by a factor that depends on its
     * wavelength; llama.cpp's converter stores those divisors as the
     * rope_freqs tensor and writes no scaling type, which bind_tensors
     * picks up.  A file that names the type without the tensor gets them
     * computed from its keys.  Anything else (YaRN, LongRoPE) needs code
     * that is not written yet, and silently ignoring it would produce
     * wrong text, so it is refused. */
    char key[128];
    const char *stype = NULL;
    size_t stype_len = 0;
    int found = 0;
    m->rope_scaling = "none";
    snprintf(key, sizeof key, "%s.rope.scaling.type", a);
    if ((st = nbi_gguf_get_str(g, key, &stype, &stype_len, &found, err, errlen)))
        return st;
    float factor = 0.0f;
    snprintf(key, sizeof key, "%s.rope.scaling.factor", a);
    int have_factor = 0;
    if ((st = nbi_gguf_get_f32(g, key, &factor, &have_factor, err, errlen)))
        return st;
    if (!have_factor) {
        snprintf(key, sizeof key, "%s.rope.scale_linear", a);
        if ((st = nbi_gguf_get_f32(g, key, &factor, &have_factor, err, errlen)))
            return st;
        if (have_factor && !found) {
            stype = "linear";
            stype_len = 6;
            found = 1;
        }
    }
    if (have_factor && factor != 0.0f && !(factor > 0.0f && factor < 1e6f))
        return nbi_err(err, errlen, NB_ERR_FORMAT, "rope scaling factor %g is out of range",
                       (double)factor);
    if (!found || (stype_len == 4 && memcmp(stype, "none", 4) == 0))
        return NB_OK;
    if (stype_len == 6 && memcmp(stype, "linear", 6) == 0) {
        m->rope_scaling = "linear";
        if (have_factor && factor != 0.0f)
            hp->rope_freq_scale = 1.0f / factor;
    } else if (stype_len == 6 && memcmp(stype, "llama3", 6) == 0) {
        /* Llama 3.1's values when a key is absent */
        m->rope_scaling = "llama3";
        hp->rope_l3_factor = have_factor && factor != 0.0f ? factor : 8.0f;
        hp->rope_l3_low = 1.0f;
        hp->rope_l3_high = 4.0f;
        hp->rope_l3_orig_ctx = 8192;
        if ((st = get_float(g, a, "rope.scaling.low_freq_factor", &hp->rope_l3_low, 0, err,
                            errlen)) ||
            (st = get_float(g, a, "rope.scaling.high_freq_factor", &hp->rope_l3_high, 0, err,
                            errlen)) ||
            (st = get_dim(g, a, "rope.scaling.original_context_length", &hp->rope_l3_orig_ctx, 0,
                          1, MAX_CTX, err, errlen)))
            return st;
        if (!(hp->rope_l3_high > hp->rope_l3_low))
            return nbi_err(err, errlen, NB_ERR_FORMAT,
                           "llama3 rope scaling: high frequency factor %g is not above the low "
                           "one %g",
                           (double)hp->rope_l3_high, (double)hp->rope_l3_low);
    } else {
        return nbi_err(err, errlen, NB_ERR_UNSUPPORTED,
                       "rope scaling type '%.*s' is not supported (supported: none, linear, "
                       "llama3)",
                       (int)NBI_MIN(stype_len, 32), stype);
    }
    return NB_OK;
}

/* Llama 3.1's divisors of each pair's rotary angle, as llama.cpp's
 * converter computes them into rope_freqs: long wavelengths are slowed
 * by the factor, short ones kept, and the band between blended. */
static void llama3_rope_freqs(const nbi_hparams *hp, float *out)
{
    const double pi = 3.14159265358979323846;
    const double orig = hp->rope_l3_orig_ctx, lo = hp->rope_l3_low, hi = hp->rope_l3_high;
    const double low_wavelen = orig / lo, high_wavelen = orig / hi;
    for (int i = 0; i < hp->n_rot / 2; i++) {
        double freq = pow(hp->rope_freq_base, -2.0 * i / hp->n_rot);
        double wavelen = 2 * pi / freq;
        if (wavelen < high_wavelen) {
            out[i] = 1.0f;
        } else if (wavelen > low_wavelen) {
            out[i] = hp->rope_l3_factor;
        } else {
            double smooth = (orig / wavelen - lo) / (hi - lo);
            out[i] = (float)(1.0 / ((1 - smooth) / hp->rope_l3_factor + smooth));
        }
    }
}

/* Look up a tensor and check its shape and type. */
static nb_status want_tensor(nb_model *m, const char *name, int64_t ne0, int64_t ne1,
                             const nbi_tensor **out, int optional, char *err, size_t errlen)
{
    const nbi_tensor *t = nbi_gguf_tensor(m->gguf, name);
    *out = t;
    if (!t) {
        if (optional)
            return NB_OK;
        return nbi_err(err, errlen, NB_ERR_FORMAT, "required tensor '%s' is missing", name);
    }
    int64_t want_ne1 = ne1 ? ne1 : 1;
    if (t->ne[0] != ne0 || t->ne[1] != want_ne1 || t->ne[2] != 1 || t->ne[3] != 1) {
        if (ne1)
            return nbi_err(err, errlen, NB_ERR_FORMAT,
                           "tensor '%s' has shape [%" PRId64 ", %" PRId64 ", %" PRId64 ", %" PRId64
                           "], expected [%" PRId64 ", %" PRId64 "]",
                           name, t->ne[0], t->ne[1], t->ne[2], t->ne[3], ne0, ne1);
        return nbi_err(err, errlen, NB_ERR_FORMAT,
                       "tensor '%s' has shape [%" PRId64 ", %" PRId64 ", %" PRId64 ", %" PRId64
                       "], expected [%" PRId64 "]",
                       name, t->ne[0], t->ne[1], t->ne[2], t->ne[3], ne0);
    }
    if (!nb_type_supported(t->type))
        return nbi_err(err, errlen, NB_ERR_UNSUPPORTED,
                       "tensor '%s' has type %s, which nibble cannot compute yet", name,
                       nb_type_name(t->type));
    return NB_OK;
}

/* Small 1-D tensors (norms, biases, rope factors) are converted to F32
 * once, so the forward pass needs no per-type code for them.  They are
 * collected first and converted once all are found, so the buffer is
 * sized by tensors the file really holds, never by its claims. */
typedef struct vec_list {
    const nbi_tensor **t;
    const float ***dst;
    size_t n, cap;
    size_t floats;
} vec_list;

static nb_status want_vector(nb_model *m, vec_list *vl, const char *name, int64_t n,
                             const float **out, int optional, char *err, size_t errlen)
{
    const nbi_tensor *t;
    nb_status st = want_tensor(m, name, n, 0, &t, optional, err, errlen);
    *out = NULL;
    if (st || !t)
        return st;
    if (vl->n == vl->cap)
        return nbi_err(err, errlen, NB_ERR_NOMEM, "too many vectors");
    vl->t[vl->n] = t;
    vl->dst[vl->n] = out;
    vl->n++;
    vl->floats += (size_t)n;
    return NB_OK;
}

/* The block tensors the shared core knows: GGUF name and shape. */
enum { DIM_E, DIM_Q, DIM_KV, DIM_F, DIM_NONE };
static const struct {
    const char *name;
    uint8_t ne0, ne1;     /* DIM_*: ne1 DIM_NONE is a vector */
} block_tensors[NBI_BT_COUNT] = {
    [NBI_BT_ATTN_NORM] = {"attn_norm.weight", DIM_E, DIM_NONE},
    [NBI_BT_ATTN_Q] = {"attn_q.weight", DIM_E, DIM_Q},
    [NBI_BT_ATTN_K] = {"attn_k.weight", DIM_E, DIM_KV},
    [NBI_BT_ATTN_V] = {"attn_v.weight", DIM_E, DIM_KV},
    [NBI_BT_ATTN_OUT] = {"attn_output.weight", DIM_Q, DIM_E},
    [NBI_BT_ATTN_Q_BIAS] = {"attn_q.bias", DIM_Q, DIM_NONE},
    [NBI_BT_ATTN_K_BIAS] = {"attn_k.bias", DIM_KV, DIM_NONE},
    [NBI_BT_ATTN_V_BIAS] = {"attn_v.bias", DIM_KV, DIM_NONE},
    [NBI_BT_ATTN_OUT_BIAS] = {"attn_output.bias", DIM_E, DIM_NONE},
    [NBI_BT_FFN_NORM] = {"ffn_norm.weight", DIM_E, DIM_NONE},
    [NBI_BT_FFN_GATE] = {"ffn_gate.weight", DIM_E, DIM_F},
    [NBI_BT_FFN_UP] = {"ffn_up.weight", DIM_E, DIM_F},
    [NBI_BT_FFN_DOWN] = {"ffn_down.weight", DIM_F, DIM_E},
};

static nb_status bind_tensors(nb_model *m, char *err, size_t errlen)
{
    const nbi_hparams *hp = &m->hp;
    const nbi_arch *ad = m->ad;
    const int64_t V = hp->n_vocab;
    const int64_t dims[DIM_NONE + 1] = {
        [DIM_E] = hp->n_embd, [DIM_Q] = (int64_t)hp->n_head * hp->head_dim,
        [DIM_KV] = (int64_t)hp->n_head_kv * hp->head_dim, [DIM_F] = hp->n_ff, [DIM_NONE] = 0};
    char name[96];
    nb_status st;

    m->layers = nbi_calloc((size_t)hp->n_layer, sizeof *m->layers);
    vec_list vl = {0};
    vl.cap = (size_t)hp->n_layer * NBI_BT_COUNT + 2;
    vl.t = nbi_malloc_array(vl.cap, sizeof *vl.t);
    vl.dst = nbi_malloc_array(vl.cap, sizeof *vl.dst);
    if (!m->layers || !vl.t || !vl.dst) {
        st = nbi_err(err, errlen, NB_ERR_NOMEM, "out of memory");
        goto done;
    }

    if ((st = want_tensor(m, "token_embd.weight", dims[DIM_E], V, &m->tok_embd, 0, err,
                          errlen)) ||
        (st = want_vector(m, &vl, "output_norm.weight", dims[DIM_E], &m->output_norm, 0, err,
                          errlen)) ||
        (st = want_tensor(m, "output.weight", dims[DIM_E], V, &m->output, 1, err, errlen)) ||
        (st = want_vector(m, &vl, "rope_freqs.weight", hp->n_rot / 2, &m->rope_freqs, 1, err,
                          errlen)))
        goto done;
    if (!m->output)
        m->output = m->tok_embd; /* tied embeddings */

    for (int l = 0; l < hp->n_layer; l++) {
        nbi_layer *L = &m->layers[l];
        const nbi_tensor **mat[NBI_BT_COUNT] = {
            [NBI_BT_ATTN_Q] = &L->wq, [NBI_BT_ATTN_K] = &L->wk, [NBI_BT_ATTN_V] = &L->wv,
            [NBI_BT_ATTN_OUT] = &L->wo, [NBI_BT_FFN_GATE] = &L->w_gate,
            [NBI_BT_FFN_UP] = &L->w_up, [NBI_BT_FFN_DOWN] = &L->w_down};
        const float **vec[NBI_BT_COUNT] = {
            [NBI_BT_ATTN_NORM] = &L->attn_norm, [NBI_BT_ATTN_Q_BIAS] = &L->bq,
            [NBI_BT_ATTN_K_BIAS] = &L->bk, [NBI_BT_ATTN_V_BIAS] = &L->bv,
            [NBI_BT_ATTN_OUT_BIAS] = &L->bo, [NBI_BT_FFN_NORM] = &L->ffn_norm};
        for (int b = 0; b < NBI_BT_COUNT; b++) {
            snprintf(name, sizeof name, "blk.%d.%s", l, block_tensors[b].name);
            const int use = ad->block[b];
            if (use == NBI_ABSENT) {
                if (nbi_gguf_tensor(m->gguf, name)) {
                    st = nbi_err(err, errlen, NB_ERR_UNSUPPORTED,
                                 "tensor '%s' is not part of the %s architecture", name,
                                 ad->name);
                    goto done;
                }
                continue;
            }
            const int64_t ne0 = dims[block_tensors[b].ne0], ne1 = dims[block_tensors[b].ne1];
            st = vec[b] ? want_vector(m, &vl, name, ne0, vec[b], use == NBI_OPTIONAL, err, errlen)
                        : want_tensor(m, name, ne0, ne1, mat[b], use == NBI_OPTIONAL, err,
                                      errlen);
            if (st)
                goto done;
        }
    }
    /* Expert (MoE) tensors would be silently ignored otherwise. */
    if (nbi_gguf_tensor(m->gguf, "blk.0.ffn_gate_inp.weight")) {
        st = nbi_err(err, errlen, NB_ERR_UNSUPPORTED,
                     "mixture-of-experts models (ffn_gate_inp) are not supported");
        goto done;
    }

    /* Everything is found: convert the vectors. */
    const int have_freqs = nbi_gguf_tensor(m->gguf, "rope_freqs.weight") != NULL;
    const int l3 = !have_freqs && !strcmp(m->rope_scaling, "llama3");
    float *cur = m->vectors = nbi_malloc_array(vl.floats + (size_t)(l3 ? hp->n_rot / 2 : 0) + 1,
                                               sizeof(float));
    if (!cur) {
        st = nbi_err(err, errlen, NB_ERR_NOMEM, "out of memory");
        goto done;
    }
    for (size_t i = 0; i < vl.n; i++) {
        const int64_t n = vl.t[i]->ne[0];
        nbi_kernels_ref()->to_float[vl.t[i]->type](vl.t[i]->data, cur, n);
        *vl.dst[i] = cur;
        cur += n;
    }
    if (l3) {
        llama3_rope_freqs(hp, cur);
        m->rope_freqs = cur;
    } else if (have_freqs && !strcmp(m->rope_scaling, "none")) {
        m->rope_scaling = "llama3"; /* what llama.cpp's converter means by the tensor */
    }
    st = NB_OK;
done:
    free(vl.t);
    free(vl.dst);
    return st;
}

/* ------------------------------------------------------------------ packing */

/* Whether t is packed at load: a matrix the forward pass multiplies (not
 * the token embeddings, which are read a row at a time), of a type the
 * kernel table has a packed tile for, with whole groups of rows. */
static int packable(const nb_model *m, const nbi_kernels *k, const nbi_tensor *t)
{
    return t && t != m->tok_embd && k->vec_dot_tile_packed[t->type] &&
           nbi_pack_supported(t->type) && t->ne[1] % NBI_PACK_ROWS == 0 && t->ne[2] == 1 &&
           t->ne[3] == 1;
}

/* The matrices of the model that are packed, in order; returns their
 * number (at most cap). */
static int pack_list(const nb_model *m, const nbi_kernels *k, const nbi_tensor **list, int cap)
{
    int n = 0;
    for (int l = 0; l < m->hp.n_layer; l++) {
        const nbi_layer *L = &m->layers[l];
        const nbi_tensor *w[] = {L->wq, L->wk, L->wv, L->wo, L->w_gate, L->w_up, L->w_down};
        for (size_t i = 0; i < sizeof w / sizeof w[0]; i++)
            if (packable(m, k, w[i]) && n < cap)
                list[n++] = w[i];
    }
    if (packable(m, k, m->output) && n < cap)
        list[n++] = m->output;
    return n;
}

typedef struct pack_job {
    const nbi_tensor *t;
    uint8_t *dst;
} pack_job;

/* A share of a tensor's row groups per thread: the copy is bound by page
 * faults and memory, which two cores serve faster than one. */
static void pack_task(void *arg, int ith, int nth)
{
    const pack_job *j = arg;
    const nbi_tensor *t = j->t;
    const size_t group = nbi_row_size(t->type, t->ne[0]) * NBI_PACK_ROWS;
    int64_t lo, hi;
    nbi_split(t->ne[1] / NBI_PACK_ROWS, ith, nth, &lo, &hi);
    nbi_pack_rows(t->type, (int)t->ne[0], (hi - lo) * NBI_PACK_ROWS,
                  (const uint8_t *)t->data + (size_t)lo * group, j->dst + (size_t)lo * group);
}

/* Copy the packable matrices into one anonymous mapping in the packed
 * layout.  Each tensor's file pages are released as soon as it is copied
 * (when the file is mapped), so the peak stays near the model's size
 * rather than twice it; they would be read back from the file if anything
 * used the stored rows again (lora-merge and quantize open models with
 * repack = 0 and never do). */
static nb_status pack_weights(nb_model *m, char *err, size_t errlen)
{
    const nbi_kernels *k = nbi_kernels_get();
    const int cap = m->hp.n_layer * 7 + 1;
    const nbi_tensor **list = calloc((size_t)cap, sizeof *list);
    if (!list)
        return nbi_err(err, errlen, NB_ERR_NOMEM, "out of memory");
    const int n = pack_list(m, k, list, cap);
    size_t total = 0;
    for (int i = 0; i < n; i++)
        total += (size_t)(list[i]->nbytes + 63) / 64 * 64; /* sizes fit: they are in the file */
    if (n == 0 || total == 0) {
        free(list);
        return NB_OK;
    }
    const double t0 = nbi_now_ms();
    void *mem = mmap(NULL, total, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (mem == MAP_FAILED) {
        free(list);
        return nbi_err(err, errlen, NB_ERR_NOMEM,
                       "out of memory for the packed weights (%zu MiB; NIBBLE_REPACK=0 uses "
                       "the file's pages instead)", total >> 20);
    }
#ifdef MADV_HUGEPAGE
    madvise(mem, total, MADV_HUGEPAGE); /* fewer TLB misses while streaming; advice only */
#endif
    const long page = sysconf(_SC_PAGESIZE);
    uint8_t *dst = mem;
    nbi_pool *pool = NULL;
    if (nbi_pool_new(nb_physical_cores(), &pool) != NB_OK)
        pool = NULL; /* then on this thread alone */
    for (int i = 0; i < n; i++) {
        nbi_tensor *t = (nbi_tensor *)list[i]; /* the model owns its GGUF */
        pack_job j = {t, dst};
        nbi_pool_run(pool, pack_task, &j);
        t->packed = dst;
        dst += (size_t)(t->nbytes + 63) / 64 * 64;
        if (m->gguf->owns == 1 && page > 0) {
            /* the whole pages inside the tensor's bytes */
            const uintptr_t a = ((uintptr_t)t->data + (uintptr_t)page - 1) / (uintptr_t)page * (uintptr_t)page;
            const uintptr_t b = ((uintptr_t)t->data + (uintptr_t)t->nbytes) / (uintptr_t)page * (uintptr_t)page;
            if (b > a)
                madvise((void *)a, b - a, MADV_DONTNEED);
        }
    }
    nbi_pool_free(pool);
    m->packed = mem;
    m->packed_size = total;
    m->pack_ms = nbi_now_ms() - t0;
    free(list);
    return NB_OK;
}

static char *copy_meta_str(nb_model *m, const char *key, char **cursor)
{
    const char *s;
    size_t len;
    int found;
    char *dst = *cursor;
    if (nbi_gguf_get_str(m->gguf, key, &s, &len, &found, NULL, 0) != NB_OK || !found)
        len = 0;
    len = NBI_MIN(len, 255);
    for (size_t i = 0; i < len; i++)
        dst[i] = s[i] ? s[i] : '?';
    dst[len] = 0;
    *cursor += len + 1;
    return dst;
}

nb_status nb_model_open(const char *path, const nb_model_params *params, nb_model **out,
                        char *err, size_t errlen)
{
    nb_model_params p = params ? *params : nb_model_default_params();
    if (err && errlen)
        err[0] = 0;
    *out = NULL;
    if (!path)
        return nbi_err(err, errlen, NB_ERR_INVALID, "no model path given");
    nb_model *m = calloc(1, sizeof *m);
    if (!m || !(m->path = strdup(path)) || !(m->strings = malloc(3 * 256))) {
        nb_model_close(m);
        return nbi_err(err, errlen, NB_ERR_NOMEM, "out of memory");
    }
    m->vocab_only = p.vocab_only;
    m->rope_scaling = "none";
    nb_status st = nbi_gguf_open_file(path, p.use_mmap, &m->gguf, err, errlen);
    if (st)
        goto fail;

    char *cur = m->strings;
    m->arch = copy_meta_str(m, "general.architecture", &cur);
    m->name = copy_meta_str(m, "general.name", &cur);
    m->tokenizer_model = copy_meta_str(m, "tokenizer.ggml.model", &cur);
    const nbi_kv *akv = nbi_gguf_kv(m->gguf, "general.architecture");
    if (!akv && !p.vocab_only) {
        st = nbi_err(err, errlen, NB_ERR_FORMAT, "required key 'general.architecture' is missing");
        goto fail;
    }
    if (akv && akv->type != NB_GGUF_STRING) {
        st = nbi_err(err, errlen, NB_ERR_FORMAT, "key 'general.architecture' has type %s, expected string",
                     nbi_gguf_type_name(akv->type));
        goto fail;
    }
    if (!p.vocab_only && !(m->ad = find_arch(m->arch))) {
        char list[128];
        st = nbi_err(err, errlen, NB_ERR_UNSUPPORTED,
                     "architecture '%s' is not supported (nibble runs: %s)", m->arch,
                     arch_list(list, sizeof list));
        goto fail;
    }

    if ((st = nbi_vocab_load(&m->vocab, m->gguf, err, errlen)))
        goto fail;
    nbi_fim_detect(m);
    m->hp.n_vocab = m->vocab.n;
    if (!p.vocab_only) {
        if ((st = load_hparams(m, err, errlen)) ||
            (st = bind_tensors(m, err, errlen)) ||
            (p.repack && (st = pack_weights(m, err, errlen))))
            goto fail;
    }
    *out = m;
    return NB_OK;
fail:
    nb_model_close(m);
    return st;
}

void nb_model_close(nb_model *m)
{
    if (!m)
        return;
    nbi_vocab_free(&m->vocab);
    if (m->packed)
        munmap(m->packed, m->packed_size);
    nb_gguf_close(m->gguf);
    free(m->layers);
    free(m->vectors);
    free(m->strings);
    free(m->path);
    free(m);
}

int nb_model_n_vocab(const nb_model *m) { return m->hp.n_vocab; }
int nb_model_n_ctx_train(const nb_model *m) { return m->hp.n_ctx_train; }
nb_token nb_model_bos(const nb_model *m) { return m->vocab.bos; }
nb_token nb_model_eos(const nb_model *m) { return m->vocab.eos; }
const nb_gguf *nb_model_gguf(const nb_model *m) { return m->gguf; }

int nb_model_is_eog(const nb_model *m, nb_token t)
{
    for (int i = 0; i < m->vocab.n_eog; i++)
        if (m->vocab.eog[i] == t)
            return 1;
    return 0;
}

void nb_model_get_info(const nb_model *m, nb_model_info *info)
{
    memset(info, 0, sizeof *info);
    const nbi_hparams *hp = &m->hp;
    info->path = m->path;
    info->name = m->name;
    info->arch = m->arch;
    info->tokenizer = m->tokenizer_model;
    info->vocab_only = m->vocab_only;
    info->n_vocab = hp->n_vocab;
    info->n_ctx_train = hp->n_ctx_train;
    info->n_embd = hp->n_embd;
    info->n_layer = hp->n_layer;
    info->n_head = hp->n_head;
    info->n_head_kv = hp->n_head_kv;
    info->head_dim = hp->head_dim;
    info->n_ff = hp->n_ff;
    info->packed_bytes = m->packed_size;
    info->pack_ms = m->pack_ms;
    info->n_rot = hp->n_rot;
    info->rope_freq_base = hp->rope_freq_base;
    info->rms_eps = hp->rms_eps;
    info->tied_output = m->output && m->output == m->tok_embd;
    info->bos = m->vocab.bos;
    info->eos = m->vocab.eos;
    info->add_bos = m->vocab.add_bos;
    info->add_eos = m->vocab.add_eos;
    info->rope_scaling = m->rope_scaling;
    info->rope_neox = m->ad && m->ad->rope == NBI_ROPE_NEOX;
    info->attn_bias = m->layers && m->layers[0].bq;
    info->sliding_window = hp->n_swa;
    info->fim_pre = m->vocab.fim_pre;
    info->fim_suf = m->vocab.fim_suf;
    info->fim_mid = m->vocab.fim_mid;
    info->fim_sep = m->vocab.fim_sep;
    info->fim_rep = m->vocab.fim_rep;
    info->file_size = m->gguf->size;
    info->kv_bytes_per_token =
        2ull * (uint64_t)hp->n_layer * (uint64_t)hp->n_head_kv * (uint64_t)hp->head_dim * 2ull;
    uint64_t best = 0;
    info->file_type = "F32";
    for (int64_t i = 0; i < m->gguf->n_tensors; i++) {
        const nbi_tensor *t = &m->gguf->tensors[i];
        info->n_params += (uint64_t)t->ne[0] * (uint64_t)t->ne[1] * (uint64_t)t->ne[2] *
                          (uint64_t)t->ne[3];
        info->weight_bytes += t->nbytes;
        info->type_tensors[t->type]++;
    }
    /* the predominant type by bytes among 2-D weights */
    uint64_t bytes[NB_TYPE_COUNT] = {0};
    for (int64_t i = 0; i < m->gguf->n_tensors; i++)
        if (m->gguf->tensors[i].n_dims >= 2)
            bytes[m->gguf->tensors[i].type] += m->gguf->tensors[i].nbytes;
    for (int t = 0; t < NB_TYPE_COUNT; t++)
        if (bytes[t] > best) {
            best = bytes[t];
            info->file_type = nb_type_name(t);
        }
}
