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
    size_t out_len;
    char *out = nbf_tokenize_detok(m, text, len, flags, &out_len);
    if (!(flags & NB_TOK_PARSE_SPECIAL) && nbf_utf8_valid(data + 1, len))
        NBF_CHECK(out_len == len && !memcmp(out, text, len),
                  "round trip of %zu bytes gave %zu (pre-tokenizer %s)", len, out_len, pre);
    free(out);
    return 0;
}
