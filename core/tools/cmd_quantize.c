/*
 * cmd_quantize.c - `nibble quantize IN OUT TYPE`: convert an F32, F16 or
 * BF16 model to a quantized type, choosing per-tensor types as llama.cpp's
 * quantizer does.
 *
 * Rules (those of llama.cpp without an importance matrix):
 *  - 1-D tensors (norms) stay F32.
 *  - output.weight (or token_embd.weight when the output is tied) gets Q6_K
 *    unless the type is Q8_0 (kept), or Q8_0 when its rows are not a
 *    multiple of 256.
 *  - Q4_K_M and Q5_K_M: attn_v and ffn_down of the first eighth, the last
 *    eighth and every third layer in between get Q6_K; the rest is Q4_K or
 *    Q5_K.
 *  - --pure: every 2-D tensor gets TYPE, the output included.
 *  - A tensor whose rows do not divide TYPE's block size falls back:
 *    Q4_K -> Q5_0, Q5_K -> Q5_1, Q6_K -> Q8_0, Q2_K/Q3_K -> IQ4_NL, and to
 *    F16 when that does not divide either.
 */
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include "internal.h"
#include "quantize.h"
#include "tools.h"

static const char quantize_usage[] =
    "usage: nibble quantize [options] IN OUT TYPE\n"
    "\n"
    "Quantize an F32, F16 or BF16 model.  TYPE is one of\n"
    "  Q8_0 Q4_0 Q4_1 Q5_0 Q5_1 Q2_K Q3_K Q4_K Q5_K Q6_K IQ4_NL  (one type)\n"
    "  Q4_K_M Q5_K_M  (mixes: more bits for attn_v and ffn_down in some layers)\n"
    "  F16 BF16 F32   (conversions)\n"
    "As in llama.cpp, the output matrix is kept at Q6_K (Q8_0 stays Q8_0) and\n"
    "norms stay F32; rows that a type's block does not divide use a fallback.\n"
    "\n"
    "  --pure           give every 2-D tensor TYPE, the output matrix included\n"
    "  -t, --threads N  threads (default: the physical core count)\n"
    "  -h, --help       show this help\n";

typedef struct target {
    const char *name;
    int type;       /* base tensor type */
    int file_type;  /* general.file_type, llama.cpp's numbering */
    int mix;        /* 1 = K-quant _M mix */
} target;

static const target targets[] = {
    {"F32", NB_TYPE_F32, 0, 0},      {"F16", NB_TYPE_F16, 1, 0},     {"BF16", NB_TYPE_BF16, 32, 0},
    {"Q4_0", NB_TYPE_Q4_0, 2, 0},    {"Q4_1", NB_TYPE_Q4_1, 3, 0},   {"Q8_0", NB_TYPE_Q8_0, 7, 0},
    {"Q5_0", NB_TYPE_Q5_0, 8, 0},    {"Q5_1", NB_TYPE_Q5_1, 9, 0},   {"Q2_K", NB_TYPE_Q2_K, 10, 0},
    {"Q3_K", NB_TYPE_Q3_K, 11, 0},   {"Q4_K", NB_TYPE_Q4_K, 14, 0},  {"Q5_K", NB_TYPE_Q5_K, 16, 0},
    {"Q6_K", NB_TYPE_Q6_K, 18, 0},   {"IQ4_NL", NB_TYPE_IQ4_NL, 25, 0},
    {"Q4_K_M", NB_TYPE_Q4_K, 15, 1}, {"Q5_K_M", NB_TYPE_Q5_K, 17, 1},
};

static int divides(int type, int64_t ne0)
{
    return ne0 % nbi_types[type].blck == 0;
}

/* llama.cpp's "more bits" layers for the _M mixes. */
static int more_bits(int i, int n)
{
    return i < n / 8 || i >= 7 * n / 8 || (i - n / 8) % 3 == 2;
}

static int layer_of(const char *name)
{
    int l;
    return sscanf(name, "blk.%d.", &l) == 1 ? l : -1;
}

static int choose_type(const target *tg, const nbi_tensor *t, int tied, int n_layer, int pure)
{
    if (t->n_dims < 2)
        return NB_TYPE_F32;
    int type = tg->type;
    if (tg->type == NB_TYPE_F32 || tg->type == NB_TYPE_F16 || tg->type == NB_TYPE_BF16)
        return type;
    const char *n = t->name;
    int is_output = !strcmp(n, "output.weight") || (tied && !strcmp(n, "token_embd.weight"));
    if (!pure) {
        if (is_output) {
            if (t->ne[0] % QK_K != 0)
                type = NB_TYPE_Q8_0;
            else if (type != NB_TYPE_Q8_0)
                type = NB_TYPE_Q6_K;
        } else if (tg->mix && (strstr(n, "attn_v.weight") || strstr(n, "ffn_down"))) {
            int l = layer_of(n);
            if (l >= 0 && more_bits(l, n_layer))
                type = NB_TYPE_Q6_K;
        }
    }
    if (!divides(type, t->ne[0])) {
        switch (type) {
        case NB_TYPE_Q4_K: type = NB_TYPE_Q5_0; break;
        case NB_TYPE_Q5_K: type = NB_TYPE_Q5_1; break;
        case NB_TYPE_Q6_K: type = NB_TYPE_Q8_0; break;
        case NB_TYPE_Q2_K:
        case NB_TYPE_Q3_K: type = NB_TYPE_IQ4_NL; break;
        default: break;
        }
        if (!divides(type, t->ne[0]))
            type = NB_TYPE_F16;
    }
    return type;
}

typedef struct qjob {
    const nb_gguf *in;
    nbi_pool *pool;
    int *types;            /* output type of each tensor (same order as the input) */
    int64_t n;
    int n_threads;
    int is_tty;
    double t0;
    uint64_t bytes_in, bytes_done;
    /* per tensor work shared with the threads */
    const nbi_tensor *cur;
    int cur_type;
    void *dst;
    float *rows;           /* n_threads * row buffer */
} qjob;

static void quantize_rows_task(void *arg, int ith, int nth)
{
    qjob *q = arg;
    const nbi_tensor *t = q->cur;
    int64_t ne0 = t->ne[0], nrows = t->ne[1] * t->ne[2] * t->ne[3];
    size_t in_row = nbi_row_size(t->type, ne0), out_row = nbi_row_size(q->cur_type, ne0);
    float *buf = q->rows + (size_t)ith * (size_t)ne0;
    int64_t r0, r1;
    nbi_split(nrows, ith, nth, &r0, &r1);
    for (int64_t r = r0; r < r1; r++) {
        nbi_kernels_ref()->to_float[t->type]((const char *)t->data + (size_t)r * in_row, buf, ne0);
        nbi_quantize_rows(q->cur_type, buf, (char *)q->dst + (size_t)r * out_row, 1, ne0);
    }
}

static nb_status fill(void *ctx, int64_t index, void *dst, size_t nbytes, char *err, size_t errlen)
{
    qjob *q = ctx;
    const nbi_tensor *t = &q->in->tensors[index];
    q->cur = t;
    q->cur_type = q->types[index];
    q->dst = dst;
    if (t->type == q->cur_type) {
        memcpy(dst, t->data, nbytes);
    } else {
        float *rows = malloc((size_t)q->n_threads * (size_t)t->ne[0] * sizeof *rows);
        if (!rows)
            return nbi_err(err, errlen, NB_ERR_NOMEM, "out of memory");
        q->rows = rows;
        nbi_pool_run(q->pool, quantize_rows_task, q);
        free(rows);
    }
    q->bytes_done += t->nbytes;
    if (q->is_tty) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        double el = (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9 - q->t0;
        int pct = (int)(100.0 * (double)q->bytes_done / (double)(q->bytes_in ? q->bytes_in : 1));
        char bar[41];
        memset(bar, '#', (size_t)(pct * 40 / 100));
        memset(bar + pct * 40 / 100, '.', (size_t)(40 - pct * 40 / 100));
        bar[40] = 0;
        fprintf(stderr, "\r[%s] %3d%%  %" PRId64 "/%" PRId64 " tensors  %.0fs", bar, pct, index + 1,
                q->n, el);
    }
    return NB_OK;
}

int cmd_quantize(int argc, char **argv)
{
    static const struct option opts[] = {{"pure", no_argument, 0, 'P'},
                                         {"threads", required_argument, 0, 't'},
                                         {"help", no_argument, 0, 'h'},
                                         {0, 0, 0, 0}};
    int pure = 0, c;
    long n_threads = 0;
    optind = 1;
    while ((c = getopt_long(argc, argv, "t:h", opts, NULL)) != -1) {
        switch (c) {
        case 'P': pure = 1; break;
        case 't':
            if (parse_int(optarg, 1, NBI_MAX_THREADS, &n_threads))
                return tool_usage_error("quantize", "-t wants a thread count 1..%d, not '%s'",
                                        NBI_MAX_THREADS, optarg);
            break;
        case 'h': fputs(quantize_usage, stdout); return EXIT_OK;
        default: return tool_usage_error("quantize", "unknown option");
        }
    }
    if (argc - optind != 3)
        return tool_usage_error("quantize", "give IN, OUT and TYPE");
    const char *in_path = argv[optind], *out_path = argv[optind + 1], *tname = argv[optind + 2];
    const target *tg = NULL;
    for (size_t i = 0; i < sizeof targets / sizeof targets[0]; i++)
        if (!strcasecmp(tname, targets[i].name))
            tg = &targets[i];
    if (!tg)
        return tool_usage_error("quantize", "unknown or unsupported type '%s'", tname);
    if (!strcmp(in_path, out_path))
        return tool_usage_error("quantize", "IN and OUT are the same file");

    int rc = EXIT_ERR;
    char err[512];
    nb_gguf *in = NULL;
    nbi_gw *w = NULL;
    qjob q = {0};
    if (nb_gguf_open(in_path, &in, err, sizeof err))
        return tool_error("%s: %s", in_path, err);
    /* The model must be one nibble can load; this also validates shapes. */
    nb_model_params mp = nb_model_default_params();
    mp.repack = 0; /* reads the stored rows */
    nb_model *m;
    if (nb_model_open(in_path, &mp, &m, err, sizeof err)) {
        tool_error("%s: %s", in_path, err);
        goto done;
    }
    nb_model_info info;
    nb_model_get_info(m, &info);
    int n_layer = info.n_layer, tied = info.tied_output;
    nb_model_close(m);

    q.in = in;
    q.n = in->n_tensors;
    q.types = calloc((size_t)q.n, sizeof *q.types);
    q.n_threads = n_threads ? (int)n_threads : nb_physical_cores();
    q.is_tty = isatty(2);
    if (!q.types || nbi_gw_new(&w) || nbi_pool_new(q.n_threads, &q.pool)) {
        tool_error("out of memory");
        goto done;
    }
    for (int64_t i = 0; i < in->n_tensors; i++) {
        const nbi_tensor *t = &in->tensors[i];
        if (t->type != NB_TYPE_F32 && t->type != NB_TYPE_F16 && t->type != NB_TYPE_BF16) {
            tool_error("%s: tensor '%s' is already %s; quantize from an F32, F16 or BF16 model "
                       "(quantizing twice loses quality)",
                       in_path, t->name, nb_type_name(t->type));
            goto done;
        }
        q.types[i] = choose_type(tg, t, tied, n_layer, pure);
        q.bytes_in += t->nbytes;
        if (nbi_gw_tensor(w, t->name, q.types[i], t->n_dims, t->ne)) {
            tool_error("cannot describe tensor '%s'", t->name);
            goto done;
        }
    }
    for (int64_t i = 0; i < nb_gguf_n_kv(in); i++) {
        const char *key = nb_gguf_key(in, i);
        if (!strcmp(key, "general.file_type") || !strcmp(key, "general.quantization_version") ||
            !strcmp(key, "general.alignment"))
            continue;
        if (nbi_gw_copy(w, in, key)) {
            tool_error("out of memory");
            goto done;
        }
    }
    if (nbi_gw_u32(w, "general.file_type", (uint32_t)tg->file_type) ||
        nbi_gw_u32(w, "general.quantization_version", 2)) {
        tool_error("out of memory");
        goto done;
    }
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    q.t0 = (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
    rc = tool_write_gguf(w, out_path, fill, &q, q.is_tty);
done:
    nbi_pool_free(q.pool);
    free(q.types);
    nbi_gw_free(w);
    nb_gguf_close(in);
    return rc;
}
