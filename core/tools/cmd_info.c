/*
 * cmd_info.c - `nibble info`: describe a model file.
 */
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tools.h"

static const char info_usage[] =
    "usage: nibble info [options] MODEL\n"
    "\n"
    "Print a model's architecture, sizes, tensor types, vocabulary and the\n"
    "memory it needs.\n"
    "\n"
    "  -c, --ctx-size N   context size for the memory estimate (default: the\n"
    "                     model's, at most 4096)\n"
    "  -a, --all          also list every metadata key and tensor\n"
    "  -h, --help         show this help\n";

/* A token as "text (id)", its text as nb_token_piece gives it. */
static void print_token(const nb_model *m, nb_token t)
{
    char piece[64];
    int n = nb_token_piece(m, t, piece, sizeof piece - 1, NB_PIECE_SPECIAL);
    if (n < 0 || n >= (int)sizeof piece)
        n = 0;
    piece[n] = 0;
    printf("%s (%d)", piece, (int)t);
}

static void human(char *buf, size_t cap, double bytes)
{
    const char *u[] = {"B", "KiB", "MiB", "GiB", "TiB"};
    int i = 0;
    while (bytes >= 1024 && i < 4) {
        bytes /= 1024;
        i++;
    }
    snprintf(buf, cap, i ? "%.2f %s" : "%.0f %s", bytes, u[i]);
}

int cmd_info(int argc, char **argv)
{
    static const struct option opts[] = {{"ctx-size", required_argument, 0, 'c'},
                                         {"all", no_argument, 0, 'a'},
                                         {"help", no_argument, 0, 'h'},
                                         {0, 0, 0, 0}};
    long n_ctx = 0;
    int all = 0, c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "c:ah", opts, NULL)) != -1) {
        switch (c) {
        case 'c':
            if (parse_int(optarg, 1, 1 << 22, &n_ctx))
                return tool_usage_error("info", "-c wants a context size, not '%s'", optarg);
            break;
        case 'a': all = 1; break;
        case 'h': fputs(info_usage, stdout); return EXIT_OK;
        default: return tool_usage_error("info", "unknown option");
        }
    }
    if (argc - optind != 1)
        return tool_usage_error("info", "give exactly one model file");
    const char *path = argv[optind];

    /* Describe what can be described even when the model cannot run:
     * the GGUF layer accepts any well-formed file. */
    nb_gguf *g;
    char err[512];
    nb_status st = nb_gguf_open(path, &g, err, sizeof err);
    if (st)
        return tool_error("%s: %s", path, err);
    nb_model_params mp = nb_model_default_params();
    mp.repack = 0; /* describes the file; no need to pack */
    nb_model *m = NULL;
    char merr[512] = "";
    st = nb_model_open(path, &mp, &m, merr, sizeof merr);
    if (st == NB_ERR_UNSUPPORTED || st == NB_ERR_FORMAT) {
        mp.vocab_only = 1;
        char verr[512];
        if (nb_model_open(path, &mp, &m, verr, sizeof verr) != NB_OK)
            m = NULL;
    } else if (st) {
        nb_gguf_close(g);
        return tool_error("%s: %s", path, merr);
    }

    char b1[32], b2[32], b3[32];
    printf("file:          %s\n", path);
    printf("gguf version:  %" PRIu32 ", %" PRId64 " tensors, %" PRId64 " metadata keys\n",
           nb_gguf_version(g), nb_gguf_n_tensors(g), nb_gguf_n_kv(g));
    if (m) {
        nb_model_info in;
        nb_model_get_info(m, &in);
        printf("name:          %s\n", in.name[0] ? in.name : "(none)");
        printf("architecture:  %s\n", in.arch);
        if (!in.vocab_only) {
            printf("layers:        %d\n", in.n_layer);
            printf("embedding:     %d\n", in.n_embd);
            printf("heads:         %d (key/value heads %d, head size %d)\n", in.n_head,
                   in.n_head_kv, in.head_dim);
            printf("feed-forward:  %d\n", in.n_ff);
            printf("rope:          %d dimensions, base %g%s", in.n_rot, (double)in.rope_freq_base,
                   in.rope_neox ? ", NEOX layout (halves)" : "");
            if (strcmp(in.rope_scaling, "none"))
                printf(", %s scaling", in.rope_scaling);
            printf("\n");
            if (in.attn_bias || in.sliding_window) {
                printf("attention:     ");
                if (in.attn_bias)
                    printf("biases on the projections%s", in.sliding_window ? ", " : "");
                if (in.sliding_window)
                    printf("sliding window of %d tokens", in.sliding_window);
                printf("\n");
            }
            printf("rms epsilon:   %g\n", (double)in.rms_eps);
            printf("context:       %d tokens (training)\n", in.n_ctx_train);
            printf("output:        %s\n", in.tied_output ? "tied to the token embedding" : "separate");
        }
        printf("vocabulary:    %d tokens, tokenizer '%s'", in.n_vocab, in.tokenizer);
        if (!strcmp(in.tokenizer, "llama")) {
            printf(" (SentencePiece)");
        } else if (!strcmp(in.tokenizer, "gpt2")) {
            /* the file's name for the pre-tokenizer, and the rules it means */
            const char *rules = nb_model_pre_tokenizer(m);
            int64_t k = nb_gguf_find(g, "tokenizer.ggml.pre");
            char named[72] = "";
            if (k >= 0)
                nb_gguf_format_value(g, k, named, sizeof named, 0);
            size_t nl = strlen(named);
            if (nl >= 2 && named[0] == '"' && named[nl - 1] == '"') {
                memmove(named, named + 1, nl - 2);
                named[nl - 2] = 0;
            }
            if (k < 0)
                printf(" (byte-level BPE, no pre-tokenizer named: %s)", rules);
            else if (!strcmp(named, rules))
                printf(" (byte-level BPE, pre-tokenizer %s)", rules);
            else
                printf(" (byte-level BPE, pre-tokenizer %s: %s rules)", named, rules);
        }
        if (in.bos >= 0)
            printf(", BOS %d%s", in.bos, in.add_bos ? " (added)" : "");
        if (in.eos >= 0)
            printf(", EOS %d", in.eos);
        printf("\n");
        if (in.fim_pre >= 0 && in.fim_suf >= 0 && in.fim_mid >= 0) {
            printf("infill:        prefix ");
            print_token(m, in.fim_pre);
            printf(", suffix ");
            print_token(m, in.fim_suf);
            printf(", middle ");
            print_token(m, in.fim_mid);
            if (in.fim_sep >= 0) {
                printf(", file separator ");
                print_token(m, in.fim_sep);
            }
            if (in.fim_rep >= 0) {
                printf(", repository ");
                print_token(m, in.fim_rep);
            }
            printf("\n");
        } else {
            printf("infill:        no fill-in-the-middle tokens\n");
        }
        const char *chat = nb_chat_template_name(m);
        printf("chat template: %s\n", !strcmp(chat, "raw")       ? "none (raw text)"
                                       : !strcmp(chat, "unknown") ? "not recognised (ChatML is used)"
                                                                  : chat);
        human(b1, sizeof b1, (double)in.weight_bytes);
        printf("parameters:    %.2f M in %s of tensors (mostly %s)\n", (double)in.n_params / 1e6, b1,
               in.file_type);
        printf("tensor types: ");
        for (int t = 0; t < NB_TYPE_COUNT; t++)
            if (in.type_tensors[t])
                printf(" %s x%d", nb_type_name(t), in.type_tensors[t]);
        printf("\n");
        if (!in.vocab_only) {
            int ctx = n_ctx ? (int)n_ctx : (in.n_ctx_train < 4096 ? in.n_ctx_train : 4096);
            uint64_t kv = in.kv_bytes_per_token * (uint64_t)ctx;
            human(b1, sizeof b1, (double)in.file_size);
            human(b2, sizeof b2, (double)kv);
            human(b3, sizeof b3, (double)(in.file_size + kv));
            printf("memory:        %s mapped + %s KV cache at %d tokens = %s\n", b1, b2, ctx, b3);
        }
    }
    if (merr[0])
        printf("runnable:      no: %s\n", merr);
    else
        printf("runnable:      yes\n");
    if (all) {
        printf("\nmetadata:\n");
        char *val = malloc(4096);
        for (int64_t i = 0; val && i < nb_gguf_n_kv(g); i++) {
            nb_gguf_format_value(g, i, val, 4096, 8);
            printf("  %-40s %s\n", nb_gguf_key(g, i), val);
        }
        free(val);
        printf("\ntensors:\n");
        for (int64_t i = 0; i < nb_gguf_n_tensors(g); i++) {
            int64_t ne[4];
            nb_gguf_tensor_shape(g, i, ne);
            printf("  %-32s %-7s [%" PRId64 ", %" PRId64 ", %" PRId64 ", %" PRId64 "]\n",
                   nb_gguf_tensor_name(g, i), nb_type_name(nb_gguf_tensor_type(g, i)), ne[0],
                   ne[1], ne[2], ne[3]);
        }
    }
    nb_model_close(m);
    nb_gguf_close(g);
    return EXIT_OK;
}
