/*
 * fuzz_template.c - the chat-template renderer and the infill prompt
 * builder (core/src/template.c).
 *
 * Input: byte 0 picks the template asked for (the model's own, a known
 * name, or an unknown one); byte 1 holds flags (bit 0: add the assistant's
 * opening, bit 1: the model has CodeLlama's FIM tokens, bit 2: fall back
 * to the prefix without them); bytes 2-4 are the infill budgets.  The rest
 * is NUL-separated: the model's tokenizer.chat_template (recognised by
 * nb_chat_template_name; empty = none), then role and content pairs.  The
 * infill prompt takes the first two contents as prefix and suffix and the
 * pairs after them as context chunks (name, text).
 *
 * Properties: a rendered prompt holds every message's content verbatim;
 * an infill prompt fits its n_max budget and holds only vocabulary ids.
 */
#include "fuzz.h"

#include <string.h>

enum { MAX_MSGS = 64 };

static nb_model *vocab_model(const char *chat_template, size_t len, int fim)
{
    static nb_model *m;
    static char *cached;
    static size_t cached_len;
    static int cached_fim = -1;
    if (m && cached_fim == fim && cached_len == len && !memcmp(cached, chat_template, len))
        return m;
    nb_model_close(m);
    free(cached);
    cached = malloc(len + 1);
    NBF_CHECK(cached != NULL, "out of memory");
    memcpy(cached, chat_template, len);
    cached_len = len;
    cached_fim = fim;
    enum { N = 3 + 256 + 6 };
    /* CodeLlama's markers and a file separator, or plain pieces in their
     * place that nothing takes for FIM tokens */
    static const char *const with[] = {"\xe2\x96\x81<PRE>", "\xe2\x96\x81<SUF>",
                                       "\xe2\x96\x81<MID>", "<|file_sep|>",
                                       "\xe2\x96\x81x",     "\xe2\x96\x81y"};
    static const char *const without[] = {"\xe2\x96\x81pre", "\xe2\x96\x81suf",
                                          "\xe2\x96\x81mid", "\xe2\x96\x81sep",
                                          "\xe2\x96\x81x",   "\xe2\x96\x81y"};
    static char bytes[256][8];
    const char *toks[N];
    float scores[N] = {0};
    int32_t types[N];
    toks[0] = "<unk>", toks[1] = "<s>", toks[2] = "</s>";
    types[0] = 2, types[1] = 3, types[2] = 3;
    for (int i = 0; i < 256; i++) {
        snprintf(bytes[i], sizeof bytes[i], "<0x%02X>", i);
        toks[3 + i] = bytes[i];
        types[3 + i] = 6;
    }
    for (int i = 0; i < 6; i++) {
        toks[259 + i] = fim ? with[i] : without[i];
        types[259 + i] = fim && i < 4 ? 4 : 1;
    }
    gguf_builder *b = gb_new();
    NBF_CHECK(b != NULL, "out of memory");
    gb_kv_str(b, "general.architecture", "llama");
    gb_kv_str(b, "tokenizer.ggml.model", "llama");
    gb_kv_arr_str(b, "tokenizer.ggml.tokens", toks, N);
    gb_kv_arr(b, "tokenizer.ggml.scores", GB_FLOAT32, scores, N);
    gb_kv_arr(b, "tokenizer.ggml.token_type", GB_INT32, types, N);
    gb_kv_u32(b, "tokenizer.ggml.bos_token_id", 1);
    gb_kv_u32(b, "tokenizer.ggml.eos_token_id", 2);
    if (len)
        gb_kv_str_n(b, "tokenizer.chat_template", chat_template, len);
    m = nbf_model_from_builder(b, 1);
    return m;
}

/* The next NUL-terminated segment of [*p, end), copied; NULL at the end. */
static char *segment(const uint8_t **p, const uint8_t *end)
{
    if (*p >= end)
        return NULL;
    const uint8_t *z = memchr(*p, 0, (size_t)(end - *p));
    size_t n = z ? (size_t)(z - *p) : (size_t)(end - *p);
    char *s = malloc(n + 1);
    NBF_CHECK(s != NULL, "out of memory");
    memcpy(s, *p, n);
    s[n] = 0;
    *p += n + (z != NULL);
    return s;
}

NBF_TARGET(template)
{
    static const char *const names[] = {NULL,        "chatml",   "llama2", "llama3",
                                        "deepseek",  "deepseek2", "deepseek3", "alpaca",
                                        "vicuna",    "zephyr",   "raw",    "chatml2"};
    if (size < 5)
        return 0;
    const char *tmpl = names[data[0] % (sizeof names / sizeof names[0])];
    int add_assistant = data[1] & 1, fim = data[1] >> 1 & 1, fallback = data[1] >> 2 & 1;
    const uint8_t *p = data + 5, *end = data + size;
    const uint8_t *z = memchr(p, 0, (size_t)(end - p));
    size_t tlen = z ? (size_t)(z - p) : (size_t)(end - p);
    nb_model *m = vocab_model((const char *)p, tlen, fim);
    p += tlen + (z != NULL);

    char *strs[2 * MAX_MSGS];
    int n_str = 0;
    while (n_str < 2 * MAX_MSGS && (strs[n_str] = segment(&p, end)))
        n_str++;
    nb_chat_msg msgs[MAX_MSGS];
    int n = n_str / 2;
    for (int i = 0; i < n; i++)
        msgs[i] = (nb_chat_msg){strs[2 * i], strs[2 * i + 1]};

    char *out = NULL, err[256];
    nb_status st = nb_chat_render(m, tmpl, msgs, n, add_assistant, &out, err, sizeof err);
    NBF_CHECK((st == NB_OK) == (out != NULL), "status %d", st);
    if (st == NB_OK) {
        for (int i = 0; i < n; i++)
            NBF_CHECK(strstr(out, msgs[i].content) != NULL, "message %d is not in the prompt", i);
        free(out);
    }

    nb_chunk chunks[MAX_MSGS];
    int n_chunks = n > 1 ? n - 1 : 0;
    for (int i = 0; i < n_chunks; i++)
        chunks[i] = (nb_chunk){msgs[i + 1].role, msgs[i + 1].content};
    nb_infill_fit fit = {0};
    fit.n_prefix = data[2];
    fit.n_suffix = data[3];
    fit.n_max = data[4];
    fit.fallback_prefix = fallback;
    nb_token *toks = NULL;
    int64_t n_toks = 0;
    st = nb_infill_tokens_fit(m, n_str > 1 ? strs[1] : "", n_str > 3 ? strs[3] : "", chunks,
                              n_chunks, &fit, &toks, &n_toks, err, sizeof err);
    if (st == NB_OK) {
        NBF_CHECK(!fit.n_max || n_toks <= fit.n_max, "%lld tokens for a budget of %d",
                  (long long)n_toks, fit.n_max);
        NBF_CHECK(fit.chunks_used >= 0 && fit.chunks_used <= n_chunks, "%d chunks used",
                  fit.chunks_used);
        for (int64_t i = 0; i < n_toks; i++)
            NBF_CHECK(toks[i] >= 0 && toks[i] < nb_model_n_vocab(m), "token %d", toks[i]);
    } else {
        NBF_CHECK(toks == NULL, "tokens on failure");
    }
    free(toks);
    for (int i = 0; i < n_str; i++)
        free(strs[i]);
    return 0;
}
