/*
 * fuzz_spm.c - the SentencePiece tokenizer on any bytes, with the
 * vocabulary gguf_builder generates (<unk> <s> </s>, 256 byte tokens, 41
 * merged pieces, add_space_prefix).
 *
 * The first input byte chooses the flags (bit 0: NB_TOK_ADD_SPECIAL,
 * bit 1: NB_TOK_PARSE_SPECIAL); the rest is the text.  Every id must be in
 * the vocabulary, and asking again with the exact count must give the
 * same ids.
 *
 * Round trip.  detokenize(tokenize(x)) == " " + x (x non-empty) holds when
 *  - x is valid UTF-8 (invalid bytes become byte tokens, which nb_detok
 *    turns into U+FFFD, as it must for streamed text);
 *  - x has no U+2581 (SentencePiece's space: it comes back as " ");
 *  - special tokens are not parsed (control text such as "</s>" would
 *    become a control token, which renders as nothing);
 *  - the vocabulary has no user-defined tokens (those are always split
 *    out, and the text after each gets its own space prefix); ours has
 *    none.
 * The leading space is SentencePiece's add_space_prefix: nibble's
 * detokenizer keeps it, as llama.cpp's token-to-piece does.  BOS, a
 * control token, renders as nothing, so ADD_SPECIAL does not matter.
 */
#include "fuzz.h"

#include <string.h>

static int has_u2581(const uint8_t *s, size_t n)
{
    for (size_t i = 0; i + 2 < n; i++)
        if (s[i] == 0xe2 && s[i + 1] == 0x96 && s[i + 2] == 0x81)
            return 1;
    return 0;
}

NBF_TARGET(spm)
{
    if (size < 1)
        return 0;
    int flags = data[0] & 3;
    const char *text = (const char *)data + 1;
    size_t len = size - 1;
    nb_model *m = nbf_spm_model();
    size_t out_len;
    char *out = nbf_tokenize_detok(m, text, len, flags, &out_len);
    if (!(flags & NB_TOK_PARSE_SPECIAL) && nbf_utf8_valid(data + 1, len) &&
        !has_u2581(data + 1, len)) {
        size_t want = len ? len + 1 : 0;
        NBF_CHECK(out_len == want && (!len || (out[0] == ' ' && !memcmp(out + 1, text, len))),
                  "round trip of %zu bytes gave %zu", len, out_len);
    }
    free(out);
    return 0;
}
