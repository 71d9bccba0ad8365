/*
 * cmd_lora_merge.c - `nibble lora-merge BASE ADAPTER OUT [TYPE]`: write a
 * copy of BASE with a LoRA adapter folded into its weights,
 * W' = W + scale * B.A, so that the result runs without the adapter.
 *
 * The adapter is opened for the base model with nb_lora_open, so it gets
 * exactly the checks `--lora` gets.  Tensors the adapter does not touch are
 * copied byte for byte.  An adapted tensor is dequantized with the scalar
 * reference kernels, the product added in F32 (rows split across the
 * threads), and written as TYPE, or by default as the base tensor's own type
 * when that is F32, F16 or BF16 and as F16 otherwise: requantizing to 4 bits
 * would blur the small change the adapter makes, so a quantized result is
 * something to ask for (TYPE), or to make with `nibble quantize` from the
 * merged F16/F32 file.
 */
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "internal.h"
#include "quantize.h"
#include "tools.h"

static const char merge_usage[] =
    "usage: nibble lora-merge [options] BASE ADAPTER OUT [TYPE]\n"
    "\n"
    "Fold a LoRA adapter (llama.cpp's GGUF adapter format) into a copy of the\n"
    "base model: every adapted weight becomes W + scale * B.A.  Other tensors\n"
    "are copied unchanged.  TYPE is the type of the merged weights: F32, F16,\n"
    "BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K or\n"
    "IQ4_NL.  By default a merged weight keeps its base type when that is F32,\n"
    "F16 or BF16 and becomes F16 otherwise (quantize the result afterwards).\n"
    "\n"
    "  -s, --lora-scale S  the adapter's strength (default 1; the effective\n"
    "                      scale is alpha * S / rank, or S when alpha is 0)\n"
    "  -t, --threads N     threads (default: the physical core count)\n"
    "  -h, --help          show this help\n";

typedef struct merge_job {
    const nb_model *m;
    const nb_lora *lora;
    float scale;
    int out_type;          /* -1 = by base type */
    nbi_pool *pool;
    int n_threads;
    /* the tensor being written */
    const nbi_tensor *w;
    const nbi_lora_pair *pair;
    int type;
    void *dst;
    float *rows;           /* n_threads rows of ne0 floats */
} merge_job;

static const nbi_lora_pair *pair_of(const nb_lora *a, const nbi_tensor *w)
{
    for (int i = 0; i < a->n_pairs; i++)
        if (a->pairs[i].w == w)
            return &a->pairs[i];
    return NULL;
}

static int merged_type(const merge_job *j, const nbi_tensor *w)
{
    if (j->out_type >= 0)
        return j->out_type;
    if (w->type == NB_TYPE_F32 || w->type == NB_TYPE_F16 || w->type == NB_TYPE_BF16)
        return w->type;
    return NB_TYPE_F16;
}

/* Rows r0..r1 of the merged tensor: row o of W gains scale * sum_q B[o][q] A[q]. */
static void merge_rows_task(void *arg, int ith, int nth)
{
    merge_job *j = arg;
    const nbi_tensor *w = j->w;
    const nbi_lora_pair *p = j->pair;
    const int64_t n_in = w->ne[0], n_out = w->ne[1];
    const size_t in_row = nbi_row_size(w->type, n_in), out_row = nbi_row_size(j->type, n_in);
    const float s = nbi_lora_factor(j->lora, p, j->scale);
    float *row = j->rows + (size_t)ith * (size_t)n_in;
    int64_t r0, r1;
    nbi_split(n_out, ith, nth, &r0, &r1);
    for (int64_t o = r0; o < r1; o++) {
        nbi_kernels_ref()->to_float[w->type]((const char *)w->data + (size_t)o * in_row, row, n_in);
        const float *b = p->b + (size_t)o * (size_t)p->rank;
        for (int q = 0; q < p->rank; q++) {
            const float f = s * b[q];
            const float *a = p->a + (size_t)q * (size_t)n_in;
            for (int64_t e = 0; e < n_in; e++)
                row[e] += f * a[e];
        }
        nbi_quantize_rows(j->type, row, (char *)j->dst + (size_t)o * out_row, 1, n_in);
    }
}

static nb_status fill(void *ctx, int64_t index, void *dst, size_t nbytes, char *err, size_t errlen)
{
    merge_job *j = ctx;
    const nbi_tensor *w = &j->m->gguf->tensors[index];
    const nbi_lora_pair *p = pair_of(j->lora, w);
    if (!p) {
        memcpy(dst, w->data, nbytes);
        return NB_OK;
    }
    j->w = w;
    j->pair = p;
    j->type = merged_type(j, w);
    j->dst = dst;
    j->rows = nbi_malloc_array((size_t)j->n_threads * (size_t)w->ne[0], sizeof(float));
    if (!j->rows)
        return nbi_err(err, errlen, NB_ERR_NOMEM, "out of memory");
    nbi_pool_run(j->pool, merge_rows_task, j);
    free(j->rows);
    j->rows = NULL;
    return NB_OK;
}

static int parse_type(const char *s)
{
    static const int types[] = {NB_TYPE_F32,  NB_TYPE_F16,  NB_TYPE_BF16, NB_TYPE_Q8_0,
                                NB_TYPE_Q4_0, NB_TYPE_Q4_1, NB_TYPE_Q5_0, NB_TYPE_Q5_1,
                                NB_TYPE_Q2_K, NB_TYPE_Q3_K, NB_TYPE_Q4_K, NB_TYPE_Q5_K,
                                NB_TYPE_Q6_K, NB_TYPE_IQ4_NL};
    for (size_t i = 0; i < sizeof types / sizeof types[0]; i++)
        if (!strcasecmp(s, nb_type_name(types[i])))
            return types[i];
    return -1;
}

int cmd_lora_merge(int argc, char **argv)
{
    static const struct option opts[] = {{"lora-scale", required_argument, 0, 's'},
                                         {"threads", required_argument, 0, 't'},
                                         {"help", no_argument, 0, 'h'},
                                         {0, 0, 0, 0}};
    merge_job j = {.scale = 1.0f, .out_type = -1};
    long n_threads = 0;
    double scale;
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "s:t:h", opts, NULL)) != -1) {
        switch (c) {
        case 's':
            if (parse_float(optarg, -1e6, 1e6, &scale))
                return tool_usage_error("lora-merge", "--lora-scale wants a number, not '%s'",
                                        optarg);
            j.scale = (float)scale;
            break;
        case 't':
            if (parse_int(optarg, 1, NBI_MAX_THREADS, &n_threads))
                return tool_usage_error("lora-merge", "-t wants a thread count 1..%d, not '%s'",
                                        NBI_MAX_THREADS, optarg);
            break;
        case 'h': fputs(merge_usage, stdout); return EXIT_OK;
        default: return tool_usage_error("lora-merge", "unknown option");
        }
    }
    int nargs = argc - optind;
    if (nargs != 3 && nargs != 4)
        return tool_usage_error("lora-merge", "give BASE, ADAPTER, OUT and optionally TYPE");
    const char *base = argv[optind], *adapter = argv[optind + 1], *out = argv[optind + 2];
    if (nargs == 4 && (j.out_type = parse_type(argv[optind + 3])) < 0)
        return tool_usage_error("lora-merge", "unknown or unsupported type '%s'",
                                argv[optind + 3]);
    if (!strcmp(base, out) || !strcmp(adapter, out))
        return tool_usage_error("lora-merge", "OUT must be a new file, not BASE or ADAPTER");

    int rc = EXIT_ERR;
    char err[512];
    nb_model *m = NULL;
    nb_lora *lora = NULL;
    nbi_gw *gw = NULL;
    nb_model_params mp = nb_model_default_params();
    mp.repack = 0; /* reads the stored rows */
    if (nb_model_open(base, &mp, &m, err, sizeof err))
        return tool_error("%s: %s", base, err);
    if (nb_lora_open(m, adapter, &lora, err, sizeof err)) {
        tool_error("%s", err);
        goto done;
    }
    j.m = m;
    j.lora = lora;
    j.n_threads = n_threads ? (int)n_threads : nb_physical_cores();
    if (nbi_gw_new(&gw) || nbi_pool_new(j.n_threads, &j.pool)) {
        tool_error("out of memory");
        goto done;
    }
    const nb_gguf *g = m->gguf;
    for (int64_t i = 0; i < g->n_tensors; i++) {
        const nbi_tensor *t = &g->tensors[i];
        int type = t->type;
        if (pair_of(lora, t)) {
            type = merged_type(&j, t);
            if (t->ne[0] % nbi_types[type].blck) {
                tool_error("%s has rows of %lld, which %s's blocks of %d do not divide; pick "
                           "another TYPE", t->name, (long long)t->ne[0], nb_type_name(type),
                           nbi_types[type].blck);
                goto done;
            }
        }
        if (nbi_gw_tensor(gw, t->name, type, t->n_dims, t->ne)) {
            tool_error("cannot describe tensor '%s'", t->name);
            goto done;
        }
    }
    for (int64_t i = 0; i < nb_gguf_n_kv(g); i++) {
        const char *key = nb_gguf_key(g, i);
        if (!strcmp(key, "general.alignment"))
            continue;
        if (nbi_gw_copy(gw, g, key)) {
            tool_error("out of memory");
            goto done;
        }
    }
    if (tool_write_gguf(gw, out, fill, &j, 0))
        goto done;
    fprintf(stderr, "nibble lora-merge: %d weights merged (scale %g) into %s\n",
            nb_lora_n_pairs(lora), (double)j.scale, out);
    rc = EXIT_OK;
done:
    nbi_pool_free(j.pool);
    nbi_gw_free(gw);
    nb_lora_close(lora);
    nb_model_close(m);
    return rc;
}
