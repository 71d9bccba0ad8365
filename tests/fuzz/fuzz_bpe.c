/*
 * fuzz_bpe.c - the byte-level BPE tokenizer and its pre-tokenizers on any
 * bytes, with a generated vocabulary (the 256 byte characters, 20 merged
 * tokens with their merges, <|endoftext|> as a control token).
 *
 * The first input byte chooses the pre-tokenizer (low bits, from the list
 * below) and the flags (bit 6: NB_TOK_ADD_SPECIAL, bit 7:
 * NB_TOK_PARSE_SPECIAL); the rest is the text.
 *
 * Round trip.  detokenize(tokenize(x)) == x exactly when
 *  - x is valid UTF-8 (as in llama.cpp, each byte that starts no
 *    character becomes U+FFFD before the byte-to-unicode mapping);
 *  - special tokens are not parsed ("<|endoftext|>" would become the
 *    control token, which renders as nothing).
 * No space is added and none removed: every byte has a token, so the
 * pieces carry the bytes back whatever the pre-tokenizer cut.
 */
#include "fuzz.h"

#include <string.h>

static const char *const pres[] = {"gpt-2",          "llama-bpe", "qwen2",    "deepseek-llm",
                                   "deepseek-coder", "falcon",    "starcoder", "default"};

NBF_TARGET(bpe)
{
    if (size < 1)
        return 0;
    const char *pre = pres[data[0] % (sizeof pres / sizeof pres[0])];
    int flags = (data[0] >> 6 & 1 ? NB_TOK_ADD_SPECIAL : 0) |
                (data[0] >> 7 & 1 ? NB_TOK_PARSE_SPECIAL : 0);
    const char *text = (const char *)data + 1;
    size_t len = size - 1;
    nb_model *m = nbf_bpe_model(pre);
    int64_t n = nb_tokenize(m, text, len, NULL, 0, flags);
    NBF_CHECK(n >= 0, "tokenize failed: %lld", (long long)n);
    nb_token *t = malloc((size_t)(n ? n : 1) * sizeof *t);
    NBF_CHECK(t != NULL, "out of memory");
    NBF_CHECK(nb_tokenize(m, text, len, t, n, flags) == n, "a second count differs");
    int n_vocab = nb_model_n_vocab(m);
    for (int64_t i = 0; i < n; i++)
        NBF_CHECK(t[i] >= 0 && t[i] < n_vocab, "token %d", t[i]);
    size_t out_len;
    char *out = nbf_detok_all(m, t, n, 0, &out_len);
    NBF_CHECK(nbf_utf8_valid((const uint8_t *)out, out_len), "detokenized text is not UTF-8");
    if (!(flags & NB_TOK_PARSE_SPECIAL) && nbf_utf8_valid(data + 1, len))
        NBF_CHECK(out_len == len && !memcmp(out, text, len),
                  "round trip of %zu bytes gave %zu (pre-tokenizer %s)", len, out_len, pre);
    free(out);
    free(t);
    return 0;
}
