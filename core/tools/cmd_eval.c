/*
 * cmd_eval.c - `nibble eval`: evaluate a prompt in one batch and report
 * the top logits at every position and a greedy continuation.  With
 * --json the output is one line in the format of llama.cpp reference
 * files, which the agreement tests compare against.
 */
#include <getopt.h>
#include <stdint.h>
#include <jansson.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tools.h"

static const char eval_usage[] =
    "usage: nibble eval -m MODEL (-p PROMPT | -f FILE) [options]\n"
    "\n"
    "Evaluate PROMPT in one pass, print the most likely next tokens at each\n"
    "position and a greedy continuation.\n"
    "\n"
    "  -m, --model FILE    GGUF model (default: $NIBBLE_MODEL)\n"
    "  -p, --prompt TEXT   the prompt (may be empty: just the BOS token)\n"
    "  -f, --file FILE     read the prompt from FILE ('-' for stdin)\n"
    "      --tokens IDS    evaluate these token ids (comma or space separated)\n"
    "                      instead of tokenizing a prompt; no BOS is added\n"
    "      --top K         logits to report per position (default 5)\n"
    "      --greedy N      greedy tokens to generate (default 40); stops after\n"
    "                      the end-of-text token, which is included\n"
    "  -c, --ctx-size N    context size (default: prompt + N, at least 512)\n"
    "  -t, --threads N     threads (default: the physical core count)\n"
    "      --lora FILE     apply a LoRA adapter (llama.cpp GGUF); may be repeated\n"
    "      --lora-scale S  scale of the preceding --lora (default 1.0)\n"
    "      --no-bos        do not add the beginning-of-text token\n"
    "      --json          one JSON line: {model, prompt, tokens, top, greedy, text}\n"
    "  -h, --help          show this help\n";

enum { OPT_TOP = 256, OPT_GREEDY, OPT_JSON, OPT_NO_BOS, OPT_TOKENS, OPT_LORA, OPT_LORA_SCALE };

/* Parse "1,2 3" into ids; returns the count or -1 on a malformed list. */
static int64_t parse_ids(const char *s, nb_token **out)
{
    size_t cap = strlen(s) / 2 + 1;
    nb_token *ids = malloc(cap * sizeof *ids);
    int64_t n = 0;
    if (!ids)
        return -1;
    while (*s) {
        if (*s == ',' || *s == ' ' || *s == '\t' || *s == '\n') {
            s++;
            continue;
        }
        char *end;
        long v = strtol(s, &end, 10);
        if (end == s || v < 0 || v > INT32_MAX || (*end && !strchr(", \t\n", *end))) {
            free(ids);
            return -1;
        }
        ids[n++] = (nb_token)v;
        s = end;
    }
    *out = ids;
    return n;
}

typedef struct scored {
    nb_token id;
    float logit;
} scored;

/* The k largest logits, highest first; ties keep the lower id first. */
static int top_k(const float *logits, int n, int k, scored *out)
{
    int have = 0;
    for (int i = 0; i < n; i++) {
        float v = logits[i];
        if (have == k && !(v > out[k - 1].logit))
            continue;
        int j = have < k ? have++ : k - 1;
        while (j > 0 && v > out[j - 1].logit) {
            out[j] = out[j - 1];
            j--;
        }
        out[j] = (scored){i, v};
    }
    return have;
}

int cmd_eval(int argc, char **argv)
{
    static const struct option opts[] = {
        {"model", required_argument, 0, 'm'},   {"prompt", required_argument, 0, 'p'},
        {"file", required_argument, 0, 'f'},    {"ctx-size", required_argument, 0, 'c'},
        {"threads", required_argument, 0, 't'}, {"top", required_argument, 0, OPT_TOP},
        {"greedy", required_argument, 0, OPT_GREEDY}, {"json", no_argument, 0, OPT_JSON},
        {"no-bos", no_argument, 0, OPT_NO_BOS}, {"tokens", required_argument, 0, OPT_TOKENS},
        {"lora", required_argument, 0, OPT_LORA},
        {"lora-scale", required_argument, 0, OPT_LORA_SCALE},
        {"help", no_argument, 0, 'h'},
        {0, 0, 0, 0}};
    tool_lora lora = {0};
    const char *model_path = getenv("NIBBLE_MODEL"), *prompt = NULL, *prompt_file = NULL;
    const char *id_list = NULL;
    long k = 5, n_greedy = 40, n_ctx = 0, n_threads = 0;
    int json = 0, add_bos = 1, c;

    optind = 1;
    while ((c = getopt_long(argc, argv, "m:p:f:c:t:h", opts, NULL)) != -1) {
        switch (c) {
        case 'm': model_path = optarg; break;
        case 'p': prompt = optarg; break;
        case 'f': prompt_file = optarg; break;
        case 'c':
            if (parse_int(optarg, 0, 1 << 22, &n_ctx))
                return tool_usage_error("eval", "-c wants a context size, not '%s'", optarg);
            break;
        case 't':
            if (parse_int(optarg, 1, 1024, &n_threads))
                return tool_usage_error("eval", "-t wants a thread count 1..1024, not '%s'", optarg);
            break;
        case OPT_TOP:
            if (parse_int(optarg, 1, 1000, &k))
                return tool_usage_error("eval", "--top wants 1..1000, not '%s'", optarg);
            break;
        case OPT_GREEDY:
            if (parse_int(optarg, 0, 1 << 20, &n_greedy))
                return tool_usage_error("eval", "--greedy wants an integer >= 0, not '%s'", optarg);
            break;
        case OPT_JSON: json = 1; break;
        case OPT_NO_BOS: add_bos = 0; break;
        case OPT_TOKENS: id_list = optarg; break;
        case OPT_LORA:
        case OPT_LORA_SCALE:
            if (tool_lora_arg(&lora, "eval", c == OPT_LORA_SCALE, optarg))
                return EXIT_USAGE;
            break;
        case 'h': fputs(eval_usage, stdout); return EXIT_OK;
        default: return tool_usage_error("eval", "unknown option");
        }
    }
    if (optind < argc)
        return tool_usage_error("eval", "unexpected argument '%s'", argv[optind]);
    if (!model_path || !*model_path)
        return tool_usage_error("eval", "no model: give -m FILE or set NIBBLE_MODEL");
    if ((prompt != NULL) + (prompt_file != NULL) + (id_list != NULL) != 1)
        return tool_usage_error("eval", "give exactly one of -p PROMPT, -f FILE and --tokens IDS");

    char *file_text = NULL;
    size_t prompt_len;
    if (prompt_file) {
        if (!(file_text = read_all(prompt_file, &prompt_len)))
            return tool_error("%s: cannot read the prompt file", prompt_file);
        prompt = file_text;
    } else if (prompt) {
        prompt_len = strlen(prompt);
    } else {
        prompt = "";
        prompt_len = 0;
    }

    int rc = EXIT_ERR;
    nb_model *m = NULL;
    nb_ctx *ctx = NULL;
    nb_token *toks = NULL;
    scored *best = NULL;
    json_t *root = NULL;
    char *out = NULL, *text = NULL;
    char errbuf[256];
    int64_t n_prompt;

    if (!(m = open_model(model_path, 0)))
        goto done;
    if (id_list) {
        if ((n_prompt = parse_ids(id_list, &toks)) < 0) {
            rc = tool_usage_error("eval", "--tokens wants ids separated by commas or spaces");
            goto done;
        }
    } else {
        int flags = (add_bos ? NB_TOK_ADD_SPECIAL : 0) | NB_TOK_PARSE_SPECIAL;
        if (!(toks = tokenize_all(m, prompt, prompt_len, flags, &n_prompt)))
            goto done;
    }
    if (n_prompt == 0) {
        tool_error("the prompt has no tokens (empty, and the model adds no BOS)");
        goto done;
    }
    nb_ctx_params cp = nb_ctx_default_params();
    if (n_ctx == 0) {
        n_ctx = n_prompt + n_greedy;
        if (n_ctx < 512)
            n_ctx = 512;
    }
    cp.n_ctx = (int)n_ctx;
    cp.n_threads = (int)n_threads; /* 0: the physical core count */
    if (nb_ctx_new(m, &cp, &ctx, errbuf, sizeof errbuf)) {
        tool_error("%s", errbuf);
        goto done;
    }
    if (tool_lora_attach(&lora, m, ctx))
        goto done;
    if (n_prompt + n_greedy > nb_ctx_n_ctx(ctx)) {
        tool_error("prompt (%lld tokens) plus %ld greedy tokens exceed the %d-token context",
                   (long long)n_prompt, n_greedy, nb_ctx_n_ctx(ctx));
        goto done;
    }
    if (nb_ctx_decode(ctx, toks, (int)n_prompt, 1)) {
        tool_error("%s", nb_ctx_errmsg(ctx));
        goto done;
    }
    const int n_vocab = nb_model_n_vocab(m);
    if (k > n_vocab)
        k = n_vocab;
    best = malloc((size_t)k * sizeof *best);
    root = json_object();
    json_t *jtokens = json_array(), *jtop = json_array(), *jgreedy = json_array();
    char *path_copy = strdup(model_path);
    char *psan = utf8_sanitize(prompt, prompt_len);
    if (!best || !root || !jtokens || !jtop || !jgreedy || !path_copy || !psan) {
        free(path_copy);
        free(psan);
        json_decref(jtokens);
        json_decref(jtop);
        json_decref(jgreedy);
        tool_error("out of memory");
        goto done;
    }
    json_object_set_new(root, "model", json_string(basename(path_copy)));
    free(path_copy);
    json_object_set_new(root, "prompt", json_string(psan));
    free(psan);
    for (int64_t i = 0; i < n_prompt; i++)
        json_array_append_new(jtokens, json_integer(toks[i]));
    if (!json)
        printf("%-6s %-8s %s\n", "pos", "token", "top logits (id:logit)");
    for (int64_t i = 0; i < n_prompt; i++) {
        int nb = top_k(nb_ctx_logits(ctx, (int)i), n_vocab, (int)k, best);
        json_t *row = json_array();
        if (!json)
            printf("%-6lld %-8d", (long long)i, toks[i]);
        for (int j = 0; j < nb; j++) {
            json_t *pair = json_array();
            json_array_append_new(pair, json_integer(best[j].id));
            json_array_append_new(pair, json_real(best[j].logit));
            json_array_append_new(row, pair);
            if (!json)
                printf(" %d:%.4f", best[j].id, (double)best[j].logit);
        }
        if (!json)
            putchar('\n');
        json_array_append_new(jtop, row);
    }

    /* Greedy continuation: argmax, lowest id on ties. */
    size_t text_cap = 64 + (size_t)n_greedy * (3 * NB_MAX_PIECE + 4), text_len = 0;
    text = malloc(text_cap);
    if (!text) {
        tool_error("out of memory");
        goto done;
    }
    text[0] = 0;
    nb_detok dt;
    nb_detok_init(&dt, 0);
    for (long g = 0; g < n_greedy; g++) {
        scored b;
        top_k(nb_ctx_logits(ctx, -1), n_vocab, 1, &b);
        json_array_append_new(jgreedy, json_integer(b.id));
        text_len += nb_detok_push(&dt, m, b.id, text + text_len, text_cap - text_len);
        if (nb_model_is_eog(m, b.id) || g + 1 == n_greedy)
            break;
        if (nb_ctx_decode(ctx, &b.id, 1, 0)) {
            tool_error("%s", nb_ctx_errmsg(ctx));
            goto done;
        }
    }
    text_len += nb_detok_flush(&dt, text + text_len, text_cap - text_len);
    json_object_set_new(root, "tokens", jtokens);
    json_object_set_new(root, "top", jtop);
    json_object_set_new(root, "greedy", jgreedy);
    json_object_set_new(root, "text", json_stringn(text, text_len));
    if (json) {
        out = json_dumps(root, JSON_COMPACT | JSON_REAL_PRECISION(8));
        if (!out) {
            tool_error("cannot encode the result as JSON");
            goto done;
        }
        puts(out);
    } else {
        printf("greedy:");
        for (size_t i = 0; i < json_array_size(jgreedy); i++)
            printf(" %lld", (long long)json_integer_value(json_array_get(jgreedy, i)));
        printf("\ntext: %s\n", text);
    }
    if (fflush(stdout) != 0) {
        tool_error("cannot write the output");
        goto done;
    }
    rc = EXIT_OK;
done:
    free(out);
    free(text);
    json_decref(root);
    free(best);
    free(toks);
    nb_ctx_free(ctx);
    tool_lora_free(&lora);
    nb_model_close(m);
    free(file_text);
    return rc;
}
