/*
 * fuzz_lora.c - nb_lora_open on any file, against a tiny llama model that
 * gguf_builder generates (dim 32, 2 layers, 4 heads, 2 KV heads, FFN 64,
 * F32).  An accepted adapter is attached to a context and two tokens are
 * evaluated with it, so that whatever the loader accepts the forward pass
 * can apply.
 */
#include "fuzz.h"

static nb_model *base_model(void)
{
    static nb_model *m;
    if (!m) {
        gguf_builder *b = gb_llama_new(NULL);
        NBF_CHECK(b != NULL, "out of memory");
        m = nbf_model_from_builder(b, 0);
    }
    return m;
}

NBF_TARGET(lora)
{
    nb_model *m = base_model();
    nb_status st;
    nb_lora *a = nbf_lora_from_bytes(m, data, size, &st);
    if (!a)
        return 0;
    NBF_CHECK(nb_lora_n_pairs(a) > 0, "an adapter with no pairs");
    nb_ctx_params cp = nb_ctx_default_params();
    cp.n_ctx = 8;
    cp.n_batch = 4;
    cp.n_threads = 1;
    nb_ctx *c = NULL;
    char err[256];
    NBF_CHECK(nb_ctx_new(m, &cp, &c, err, sizeof err) == NB_OK, "%s", err);
    float scale = 0.5f;
    NBF_CHECK(nb_ctx_set_lora(c, &a, &scale, 1) == NB_OK, "set_lora");
    nb_token two[2] = {GB_LLAMA_BOS, GB_LLAMA_N_VOCAB - 1};
    NBF_CHECK(nb_ctx_decode(c, two, 2, 1) == NB_OK, "decode: %s", nb_ctx_errmsg(c));
    NBF_CHECK(nb_ctx_logits(c, 1) != NULL, "no logits");
    nb_ctx_free(c);
    nb_lora_close(a);
    return 0;
}
