/*
 * cmd_perplexity.c - `nibble perplexity`: perplexity of a model over a
 * text, and with --kl-base how far its token distributions are from a
 * reference model's (KL divergence and top-1 agreement).
 *
 * The method is llama.cpp's perplexity tool's default one, so that figures
 * can be set beside its published ones:
 *  - the whole text is tokenized once, with BOS when the model adds one;
 *  - it is cut into floor(tokens / n_ctx) chunks of n_ctx tokens (the tail
 *    is dropped), each evaluated from an empty cache, with its first token
 *    replaced by BOS;
 *  - only the second half of each chunk is scored: the logits at positions
 *    n_ctx/2 .. n_ctx-2 predict the tokens after them, so every scored
 *    token has at least n_ctx/2 tokens of context (n_ctx - 1 - n_ctx/2
 *    tokens per chunk);
 *  - PPL = exp(mean NLL), and the +/- estimate is PPL times the standard
 *    error of the mean NLL, sqrt((E[nll^2] - E[nll]^2) / (N - 1)).
 * KL divergence is KL(base || model) = sum p_base (log p_base - log p_model)
 * over the whole vocabulary at the same positions, computed exactly from
 * both models' logits in this process (llama.cpp stores the base's log
 * probabilities at 16 bits in a file first; we run the two side by side).
 */
#include <errno.h>
#include <getopt.h>
#include <jansson.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tools.h"

static const char ppl_usage[] =
    "usage: nibble perplexity -m MODEL -f TEXT [options]\n"
    "\n"
    "Perplexity of MODEL over the text in FILE, computed as llama.cpp's\n"
    "perplexity tool does: chunks of N tokens from an empty cache, BOS first,\n"
    "the second half of each chunk scored.  The text needs at least 2 x N\n"
    "tokens.\n"
    "\n"
    "  -m, --model FILE    GGUF model (default: $NIBBLE_MODEL)\n"
    "  -f, --file FILE     the text ('-' for stdin)\n"
    "  -c, --ctx N         chunk (context) size in tokens (default 512)\n"
    "      --chunks N      score at most N chunks (default: all)\n"
    "      --kl-base FILE  also run this reference model (same tokenizer) and\n"
    "                      report the KL divergence KL(base || model) of the\n"
    "                      token distributions, the top-1 agreement, and the\n"
    "                      perplexity of both\n"
    "  -t, --threads N     threads (default: the physical core count)\n"
    "      --json          one JSON line instead of text\n"
    "  -h, --help          show this help\n"
    "\n"
    "A progress bar goes to stderr when it is a terminal.\n"
    "Exit status: 0 success, 1 error, 2 usage error, 130 interrupted (Ctrl-C).\n";

enum { OPT_JSON = 256, OPT_KL_BASE, OPT_CHUNKS };
enum { MAX_SEQ = 16 }; /* chunks evaluated side by side */

static volatile sig_atomic_t interrupted;

static void on_sigint(int sig)
{
    (void)sig;
    interrupted = 1;
}

static int should_abort(void *data)
{
    (void)data;
    return interrupted;
}

/* One model and the contexts that evaluate n_seq chunks side by side. */
typedef struct runner {
    const char *path;
    nb_model *m;
    nb_ctx **ctx;
    int n_seq;
} runner;

static int runner_open(runner *r, const char *path, int n_ctx, int n_seq, int n_threads)
{
    char err[256];
    r->path = path;
    r->n_seq = n_seq;
    if (!(r->m = open_model(path, 0)))
        return -1;
    if (!(r->ctx = calloc((size_t)n_seq, sizeof *r->ctx))) {
        tool_error("out of memory");
        return -1;
    }
    for (int s = 0; s < n_seq; s++) {
        nb_ctx_params cp = nb_ctx_default_params();
        cp.n_ctx = n_ctx;
        /* the first context lends its threads to every pass; the others
         * only hold a cache */
        cp.n_threads = s == 0 ? n_threads : 1;
        if (nb_ctx_new(r->m, &cp, &r->ctx[s], err, sizeof err)) {
            tool_error("%s: %s", path, err);
            return -1;
        }
    }
    nb_ctx_set_abort(r->ctx[0], should_abort, NULL);
    return 0;
}

static void runner_close(runner *r)
{
    if (r->ctx)
        for (int s = 0; s < r->n_seq; s++)
            nb_ctx_free(r->ctx[s]);
    free(r->ctx);
    nb_model_close(r->m);
}

/* Evaluate chunks c0 .. c0+n-1 (chunk s in context s): the first half
 * without logits, the second half with logits at every position.  Returns
 * 0, or -1 after printing the error (nothing for an interruption). */
static int runner_eval(runner *r, const nb_token *toks, int n_ctx, int c0, int n, nb_token bos)
{
    int first = n_ctx / 2;
    nb_batch_item items[MAX_SEQ];
    nb_token *heads = malloc((size_t)n * (size_t)first * sizeof *heads);
    if (!heads) {
        tool_error("out of memory");
        return -1;
    }
    for (int s = 0; s < n; s++) {
        nb_token *h = heads + (size_t)s * (size_t)first;
        memcpy(h, toks + (size_t)(c0 + s) * (size_t)n_ctx, (size_t)first * sizeof *h);
        if (bos >= 0)
            h[0] = bos;
        nb_ctx_truncate(r->ctx[s], 0);
        items[s] = (nb_batch_item){r->ctx[s], h, first, 0};
    }
    nb_status st = nb_decode_batch(r->ctx[0], items, n);
    for (int s = 0; !st && s < n; s++)
        items[s] = (nb_batch_item){r->ctx[s], toks + (size_t)(c0 + s) * (size_t)n_ctx + first,
                                   n_ctx - first, 1};
    if (!st)
        st = nb_decode_batch(r->ctx[0], items, n);
    free(heads);
    if (st == NB_ERR_CANCELLED)
        return -1;
    if (st) {
        tool_error("%s: %s", r->path, nb_ctx_errmsg(r->ctx[0]));
        return -1;
    }
    return 0;
}

/* log(sum(exp(l))) in double, and the argmax (the lowest id on ties). */
static double log_sum_exp(const float *l, int n, int *argmax)
{
    int best = 0;
    for (int i = 1; i < n; i++)
        if (l[i] > l[best])
            best = i;
    double mx = l[best], sum = 0;
    for (int i = 0; i < n; i++)
        sum += exp((double)l[i] - mx);
    *argmax = best;
    return mx + log(sum);
}

/* Sums over the scored positions; the figures are means of these. */
typedef struct stats {
    double nll, nll2;        /* the model's negative log-likelihood */
    double bnll, bnll2;      /* the base's */
    double kld, kld2;
    double same;             /* positions where both argmax agree */
    long long n;
} stats;

static double mean_err(double sum, double sum2, long long n)
{
    if (n < 2)
        return 0;
    double m = sum / (double)n, v = sum2 / (double)n - m * m;
    return v > 0 ? sqrt(v / (double)(n - 1)) : 0;
}

static void score_position(stats *st, const float *l, const float *b, int n_vocab, nb_token next)
{
    int am, ab;
    double lse = log_sum_exp(l, n_vocab, &am);
    double nll = lse - (double)l[next];
    st->nll += nll;
    st->nll2 += nll * nll;
    st->n++;
    if (!b)
        return;
    double blse = log_sum_exp(b, n_vocab, &ab);
    double bnll = blse - (double)b[next], kld = 0;
    for (int i = 0; i < n_vocab; i++) {
        double lpb = (double)b[i] - blse;
        kld += exp(lpb) * (lpb - ((double)l[i] - lse));
    }
    st->bnll += bnll;
    st->bnll2 += bnll * bnll;
    st->kld += kld;
    st->kld2 += kld * kld;
    st->same += am == ab;
}

/* KL divergence is only meaningful over the same tokens: refuse models
 * whose vocabularies differ in size, kind or any token's text. */
static int check_same_vocab(const runner *a, const runner *b)
{
    nb_model_info ia, ib;
    nb_model_get_info(a->m, &ia);
    nb_model_get_info(b->m, &ib);
    const char *why = NULL;
    char buf[64];
    if (ia.n_vocab != ib.n_vocab) {
        snprintf(buf, sizeof buf, "%d and %d tokens", ia.n_vocab, ib.n_vocab);
        why = buf;
    } else if (strcmp(ia.tokenizer, ib.tokenizer) ||
               strcmp(nb_model_pre_tokenizer(a->m), nb_model_pre_tokenizer(b->m))) {
        why = "different tokenizers";
    } else if (ia.bos != ib.bos || ia.add_bos != ib.add_bos) {
        why = "different BOS tokens";
    } else {
        char pa[NB_MAX_PIECE], pb[NB_MAX_PIECE];
        for (int t = 0; t < ia.n_vocab && !why; t++) {
            int la = nb_token_piece(a->m, t, pa, sizeof pa, NB_PIECE_SPECIAL);
            int lb = nb_token_piece(b->m, t, pb, sizeof pb, NB_PIECE_SPECIAL);
            if (la != lb || (la > 0 && memcmp(pa, pb, (size_t)la))) {
                snprintf(buf, sizeof buf, "token %d differs", t);
                why = buf;
            }
        }
    }
    if (why)
        return tool_error("%s and %s have different vocabularies (%s): KL divergence needs "
                          "models with the same tokenizer",
                          a->path, b->path, why),
               -1;
    return 0;
}

static void progress(int done, int total, const stats *st)
{
    const int width = 30;
    int fill = total ? done * width / total : width;
    fprintf(stderr, "\r[");
    for (int i = 0; i < width; i++)
        fputc(i < fill ? '#' : ' ', stderr);
    fprintf(stderr, "] %d/%d chunks", done, total);
    if (st->n)
        fprintf(stderr, "  PPL %.4f", exp(st->nll / (double)st->n));
    if (st->n && st->kld > 0)
        fprintf(stderr, "  KLD %.6f", st->kld / (double)st->n);
    fflush(stderr);
}

int cmd_perplexity(int argc, char **argv)
{
    static const struct option opts[] = {
        {"model", required_argument, 0, 'm'},   {"file", required_argument, 0, 'f'},
        {"ctx", required_argument, 0, 'c'},     {"ctx-size", required_argument, 0, 'c'},
        {"threads", required_argument, 0, 't'}, {"json", no_argument, 0, OPT_JSON},
        {"kl-base", required_argument, 0, OPT_KL_BASE},
        {"chunks", required_argument, 0, OPT_CHUNKS}, {"help", no_argument, 0, 'h'},
        {0, 0, 0, 0}};
    const char *model_path = getenv("NIBBLE_MODEL"), *text_path = NULL, *base_path = NULL;
    long n_ctx = 512, n_threads = 0, max_chunks = 0;
    int json = 0, c;

    optind = 1;
    while ((c = getopt_long(argc, argv, "m:f:c:t:h", opts, NULL)) != -1) {
        switch (c) {
        case 'm': model_path = optarg; break;
        case 'f': text_path = optarg; break;
        case 'c':
            if (parse_int(optarg, 4, 1 << 20, &n_ctx))
                return tool_usage_error("perplexity", "--ctx wants a size 4..1048576, not '%s'",
                                        optarg);
            break;
        case 't':
            if (parse_int(optarg, 1, 1024, &n_threads))
                return tool_usage_error("perplexity", "-t wants a thread count 1..1024, not '%s'",
                                        optarg);
            break;
        case OPT_CHUNKS:
            if (parse_int(optarg, 1, 1 << 30, &max_chunks))
                return tool_usage_error("perplexity", "--chunks wants a count >= 1, not '%s'",
                                        optarg);
            break;
        case OPT_JSON: json = 1; break;
        case OPT_KL_BASE: base_path = optarg; break;
        case 'h': fputs(ppl_usage, stdout); return EXIT_OK;
        default: return tool_usage_error("perplexity", "unknown option");
        }
    }
    if (optind < argc)
        return tool_usage_error("perplexity", "unexpected argument '%s'", argv[optind]);
    if (!model_path || !*model_path)
        return tool_usage_error("perplexity", "no model: give -m FILE or set NIBBLE_MODEL");
    if (!text_path)
        return tool_usage_error("perplexity", "no text: give -f FILE");

    int rc = EXIT_ERR;
    runner model = {0}, base = {0};
    nb_token *toks = NULL, *btoks = NULL;
    char *text = NULL;
    size_t text_len;
    int64_t n_tok, n_btok;
    int tty = isatty(2), shown = 0;

    if (!(text = read_all(text_path, &text_len))) {
        tool_error("%s: cannot read the text: %s", text_path, strerror(errno));
        goto done;
    }
    /* Tokenize with the vocabulary alone first, so that a short text is
     * reported before any weights are read. */
    if (!(model.m = open_model(model_path, 1)))
        goto done;
    if (!(toks = tokenize_all(model.m, text, text_len, NB_TOK_ADD_SPECIAL, &n_tok)))
        goto done;
    if (n_tok < 2 * n_ctx) {
        tool_error("%s: %lld tokens; perplexity with a context of %ld needs at least %ld "
                   "(2 x the context): give a longer text or a smaller --ctx",
                   text_path, (long long)n_tok, n_ctx, 2 * n_ctx);
        goto done;
    }
    nb_model_close(model.m);
    model.m = NULL;

    int n_chunk = (int)(n_tok / n_ctx);
    if (max_chunks && max_chunks < n_chunk)
        n_chunk = (int)max_chunks;
    /* short chunks go several to a pass, as llama.cpp's n_seq does */
    int n_seq = (int)(512 / n_ctx);
    n_seq = n_seq < 1 ? 1 : n_seq > MAX_SEQ ? MAX_SEQ : n_seq;
    n_seq = n_seq > n_chunk ? n_chunk : n_seq;
    if (runner_open(&model, model_path, (int)n_ctx, n_seq, (int)n_threads))
        goto done;
    if (base_path) {
        if (runner_open(&base, base_path, (int)n_ctx, n_seq, (int)n_threads) ||
            check_same_vocab(&model, &base))
            goto done;
        /* the same vocabulary with different scores or merges could still
         * cut the text differently */
        if (!(btoks = tokenize_all(base.m, text, text_len, NB_TOK_ADD_SPECIAL, &n_btok)))
            goto done;
        if (n_btok != n_tok || memcmp(btoks, toks, (size_t)n_tok * sizeof *toks)) {
            tool_error("%s and %s tokenize the text differently: KL divergence needs models "
                       "with the same tokenizer", model_path, base_path);
            goto done;
        }
    }
    if (n_ctx > nb_model_n_ctx_train(model.m) && !json)
        fprintf(stderr, "nibble: note: %s was trained with a context of %d tokens, less than %ld\n",
                model_path, nb_model_n_ctx_train(model.m), n_ctx);

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_sigint;
    sigaction(SIGINT, &sa, NULL);

    nb_model_info info;
    nb_model_get_info(model.m, &info);
    nb_token bos = info.add_bos ? info.bos : -1;
    const int n_vocab = info.n_vocab, first = (int)n_ctx / 2;
    stats st = {0};
    if (tty) {
        progress(0, n_chunk, &st);
        shown = 1;
    }
    for (int c0 = 0; c0 < n_chunk; c0 += n_seq) {
        int n = n_chunk - c0 < n_seq ? n_chunk - c0 : n_seq;
        if (runner_eval(&model, toks, (int)n_ctx, c0, n, bos) ||
            (base_path && runner_eval(&base, toks, (int)n_ctx, c0, n, bos)))
            goto done;
        for (int s = 0; s < n; s++) {
            const nb_token *chunk = toks + (size_t)(c0 + s) * (size_t)n_ctx;
            for (int j = first; j < n_ctx - 1; j++)
                score_position(&st, nb_ctx_logits(model.ctx[s], j - first),
                               base_path ? nb_ctx_logits(base.ctx[s], j - first) : NULL,
                               n_vocab, chunk[j + 1]);
        }
        if (tty)
            progress(c0 + n, n_chunk, &st);
    }
    if (shown) {
        fputs("\r\033[K", stderr); /* the figures follow on stdout */
        shown = 0;
    }

    double N = (double)st.n;
    double ppl = exp(st.nll / N), ppl_err = ppl * mean_err(st.nll, st.nll2, st.n);
    double bppl = exp(st.bnll / N), bppl_err = bppl * mean_err(st.bnll, st.bnll2, st.n);
    double kld = st.kld / N, kld_err = mean_err(st.kld, st.kld2, st.n);
    double top1 = st.same / N, top1_err = st.n > 1 ? sqrt(top1 * (1 - top1) / (N - 1)) : 0;
    if (json) {
        json_t *o = json_object();
        json_object_set_new(o, "model", json_string(model_path));
        json_object_set_new(o, "type", json_string(info.file_type));
        json_object_set_new(o, "file_size", json_integer((json_int_t)info.file_size));
        json_object_set_new(o, "n_params", json_integer((json_int_t)info.n_params));
        json_object_set_new(o, "weight_bytes", json_integer((json_int_t)info.weight_bytes));
        json_object_set_new(o, "n_ctx", json_integer(n_ctx));
        json_object_set_new(o, "chunks", json_integer(n_chunk));
        json_object_set_new(o, "scored", json_integer(st.n));
        json_object_set_new(o, "nll", json_real(st.nll / N));
        json_object_set_new(o, "ppl", json_real(ppl));
        json_object_set_new(o, "ppl_err", json_real(ppl_err));
        if (base_path) {
            json_object_set_new(o, "base", json_string(base_path));
            json_object_set_new(o, "base_ppl", json_real(bppl));
            json_object_set_new(o, "base_ppl_err", json_real(bppl_err));
            json_object_set_new(o, "kld", json_real(kld));
            json_object_set_new(o, "kld_err", json_real(kld_err));
            json_object_set_new(o, "top1", json_real(top1));
            json_object_set_new(o, "top1_err", json_real(top1_err));
        }
        char *s = json_dumps(o, JSON_COMPACT | JSON_REAL_PRECISION(12));
        json_decref(o);
        if (!s) {
            tool_error("cannot encode the result as JSON");
            goto done;
        }
        puts(s);
        free(s);
    } else {
        printf("%s: %d chunks of %ld tokens, %lld tokens scored\n", text_path, n_chunk, n_ctx,
               st.n);
        if (base_path) {
            printf("base  %s: PPL = %.4f +/- %.5f\n", base_path, bppl, bppl_err);
            printf("model %s: PPL = %.4f +/- %.5f\n", model_path, ppl, ppl_err);
            printf("top-1 agreement = %.3f%% +/- %.3f%%\n", 100 * top1, 100 * top1_err);
            printf("KL divergence (base || model) = %.6f +/- %.6f\n", kld, kld_err);
        } else {
            printf("PPL = %.4f +/- %.5f\n", ppl, ppl_err);
        }
    }
    if (fflush(stdout) != 0) {
        tool_error("cannot write the output");
        goto done;
    }
    rc = EXIT_OK;
done:
    if (shown)
        fputc('\n', stderr);
    if (interrupted)
        rc = EXIT_CANCELLED;
    runner_close(&base);
    runner_close(&model);
    free(btoks);
    free(toks);
    free(text);
    return rc;
}
