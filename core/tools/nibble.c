/*
 * nibble.c - the nibble command: subcommand dispatch and the helpers the
 * subcommands share (strict number parsing, file reading, model opening).
 */
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "internal.h" /* nbi_utf8_valid_len */
#include "tools.h"

static const char usage[] =
    "usage: nibble COMMAND [OPTIONS]\n"
    "\n"
    "Run LLaMA-family GGUF models on the CPU.\n"
    "\n"
    "commands:\n"
    "  run        generate text from a prompt, streaming it to stdout\n"
    "  eval       score a prompt: top logits per position and a greedy\n"
    "             continuation, as text or one JSON line (--json)\n"
    "  tokenize   print the token ids of a text\n"
    "  info       describe a model file: architecture, sizes, types, vocabulary\n"
    "  synth      write a random-weight LLaMA model of a given shape\n"
    "  quantize   convert an F32/F16/BF16 model to a quantized type\n"
    "  lora-merge fold a LoRA adapter into a copy of its base model\n"
    "  bench      measure prompt and generation speed against memory bandwidth\n"
    "  perplexity perplexity of a model over a text, and its KL divergence from\n"
    "             a reference model's predictions (--kl-base)\n"
    "\n"
    "Run 'nibble COMMAND --help' for the options of a command.\n"
    "Exit status: 0 success, 1 error, 2 usage error, 130 interrupted.\n";

int tool_error(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("nibble: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    return EXIT_ERR;
}

int tool_write_gguf(nbi_gw *w, const char *path, nbi_gw_fill_fn fill, void *ctx,
                    int progress_line)
{
    char err[512];
    nb_status st = nbi_gw_write(w, path, fill, ctx, err, sizeof err);
    if (progress_line)
        fputc('\n', stderr);
    return st ? tool_error("%s", err) : EXIT_OK;
}

int tool_usage_error(const char *sub, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "nibble %s: ", sub);
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\nTry 'nibble %s --help'.\n", sub);
    va_end(ap);
    return EXIT_USAGE;
}

int parse_int(const char *s, long lo, long hi, long *out)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi)
        return -1;
    *out = v;
    return 0;
}

int parse_float(const char *s, double lo, double hi, double *out)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end || !isfinite(v) || v < lo || v > hi)
        return -1;
    *out = v;
    return 0;
}

int parse_u64(const char *s, unsigned long long *out)
{
    char *end;
    errno = 0;
    if (*s == '-')
        return -1;
    unsigned long long v = strtoull(s, &end, 0);
    if (errno || end == s || *end)
        return -1;
    *out = v;
    return 0;
}

char *read_all(const char *path, size_t *len)
{
    FILE *f = strcmp(path, "-") == 0 ? stdin : fopen(path, "rb");
    if (!f)
        return NULL;
    size_t cap = 4096, n = 0;
    char *buf = malloc(cap);
    while (buf) {
        if (n + 1 >= cap) {
            char *nb = cap < SIZE_MAX / 2 ? realloc(buf, cap * 2) : NULL;
            if (!nb) {
                free(buf);
                buf = NULL;
                break;
            }
            buf = nb;
            cap *= 2;
        }
        size_t r = fread(buf + n, 1, cap - n - 1, f);
        n += r;
        if (r == 0)
            break;
    }
    int bad = ferror(f);
    if (f != stdin)
        fclose(f);
    if (!buf || bad) {
        free(buf);
        if (bad)
            errno = EIO;
        return NULL;
    }
    buf[n] = 0;
    *len = n;
    return buf;
}

nb_model *open_model(const char *path, int vocab_only)
{
    nb_model_params p = nb_model_default_params();
    p.vocab_only = vocab_only;
    nb_model *m;
    char err[512];
    nb_status st = nb_model_open(path, &p, &m, err, sizeof err);
    if (st) {
        tool_error("%s: %s", path, err[0] ? err : nb_strerror(st));
        return NULL;
    }
    return m;
}

nb_token *tokenize_all(const nb_model *m, const char *text, size_t len, int flags, int64_t *n)
{
    int64_t cap = (int64_t)len + 8;
    nb_token *ids = malloc((size_t)cap * sizeof *ids);
    if (!ids) {
        tool_error("out of memory");
        return NULL;
    }
    int64_t got = nb_tokenize(m, text, len, ids, cap, flags);
    if (got > cap) { /* SPM: at most one id per byte; BPE: 3 for a byte that is not UTF-8 */
        free(ids);
        cap = got;
        ids = malloc((size_t)cap * sizeof *ids);
        if (!ids) {
            tool_error("out of memory");
            return NULL;
        }
        got = nb_tokenize(m, text, len, ids, cap, flags);
    }
    if (got < 0) {
        free(ids);
        tool_error("cannot tokenize: %s", nb_strerror((nb_status)-got));
        return NULL;
    }
    *n = got;
    return ids;
}

char *utf8_sanitize(const char *s, size_t len)
{
    char *out = malloc(len * 3 + 1);
    if (!out)
        return NULL;
    size_t k = 0;
    for (size_t i = 0; i < len;) {
        int cl = nbi_utf8_valid_len((const unsigned char *)s + i, len - i);
        if (cl > 0) {
            memcpy(out + k, s + i, (size_t)cl);
            k += (size_t)cl;
            i += (size_t)cl;
        } else {
            memcpy(out + k, "\xef\xbf\xbd", 3);
            k += 3;
            i++;
        }
    }
    out[k] = 0;
    return out;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fputs(usage, stderr);
        return EXIT_USAGE;
    }
    const char *cmd = argv[1];
    if (!strcmp(cmd, "--help") || !strcmp(cmd, "-h") || !strcmp(cmd, "help")) {
        fputs(usage, stdout);
        return EXIT_OK;
    }
    if (!strcmp(cmd, "--version") || !strcmp(cmd, "-V")) {
        printf("nibble %s\n", nb_version());
        return EXIT_OK;
    }
    if (!strcmp(cmd, "run"))
        return cmd_run(argc - 1, argv + 1);
    if (!strcmp(cmd, "eval"))
        return cmd_eval(argc - 1, argv + 1);
    if (!strcmp(cmd, "tokenize"))
        return cmd_tokenize(argc - 1, argv + 1);
    if (!strcmp(cmd, "info"))
        return cmd_info(argc - 1, argv + 1);
    if (!strcmp(cmd, "synth"))
        return cmd_synth(argc - 1, argv + 1);
    if (!strcmp(cmd, "quantize"))
        return cmd_quantize(argc - 1, argv + 1);
    if (!strcmp(cmd, "lora-merge"))
        return cmd_lora_merge(argc - 1, argv + 1);
    if (!strcmp(cmd, "bench"))
        return cmd_bench(argc - 1, argv + 1);
    if (!strcmp(cmd, "perplexity"))
        return cmd_perplexity(argc - 1, argv + 1);
    fprintf(stderr, "nibble: unknown command '%s'\n\n%s", cmd, usage);
    return EXIT_USAGE;
}
