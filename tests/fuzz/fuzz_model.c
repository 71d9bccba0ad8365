/*
 * fuzz_model.c - whole GGUF files through nb_model_open: the parser, the
 * hyperparameters, tensor binding and the vocabulary, first as a full
 * model and then vocabulary-only.  An accepted model then reports its
 * info, tokenizes and detokenizes a line, names its chat template, and
 * (when it is small enough to be quick) evaluates two tokens on one
 * thread, so that whatever the loader accepts the forward pass can run.
 */
#include "fuzz.h"

#include <string.h>

static void exercise(nb_model *m, int vocab_only)
{
    nb_model_info info;
    nb_model_get_info(m, &info);
    NBF_CHECK(info.n_vocab > 0 && info.n_vocab == nb_model_n_vocab(m), "n_vocab %d", info.n_vocab);
    (void)nb_chat_template_name(m);
    (void)nb_model_has_fim(m);
    (void)nb_model_pre_tokenizer(m);
    static const char text[] = "Hello world, </s> 123 \xc3\xa9t\xc3\xa9 \xf0\x9f\x98\x80!";
    nb_token toks[256];
    int64_t n = nb_tokenize(m, text, sizeof text - 1, toks, 256,
                            NB_TOK_ADD_SPECIAL | NB_TOK_PARSE_SPECIAL);
    NBF_CHECK(n >= -NB_ERR_CANCELLED, "tokenize returned %lld", (long long)n);
    if (n > 256)
        n = 256;
    for (int64_t i = 0; i < n; i++)
        NBF_CHECK(toks[i] >= 0 && toks[i] < info.n_vocab, "token %d", toks[i]);
    if (n > 0) {
        size_t len;
        free(nbf_detok_all(m, toks, n, NB_PIECE_SPECIAL, &len));
    }
    if (vocab_only || (uint64_t)info.n_embd * (uint64_t)info.n_layer > (1u << 16) ||
        info.n_vocab > (1 << 16))
        return;
    nb_ctx_params cp = nb_ctx_default_params();
    cp.n_ctx = 8;
    cp.n_batch = 4;
    cp.n_threads = 1;
    nb_ctx *c = NULL;
    char err[256];
    if (nb_ctx_new(m, &cp, &c, err, sizeof err) == NB_OK) {
        nb_token two[2] = {0, info.n_vocab - 1};
        if (nb_ctx_decode(c, two, 2, 1) == NB_OK)
            NBF_CHECK(nb_ctx_logits(c, 1) != NULL, "no logits");
        nb_ctx_free(c);
    }
}

NBF_TARGET(model)
{
    for (int vocab_only = 0; vocab_only <= 1; vocab_only++) {
        nb_status st;
        nb_model *m = nbf_model_from_bytes(data, size, vocab_only, &st);
        if (m) {
            exercise(m, vocab_only);
            nb_model_close(m);
            break; /* a full model's vocabulary loads the same way */
        }
    }
    return 0;
}
