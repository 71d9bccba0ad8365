/*
 * fuzz.h - what the libFuzzer targets in tests/fuzz/ share.
 *
 * Each fuzz_<name>.c defines its entry with NBF_TARGET(name), which makes
 * a function nbf_<name>(data, size).  Built for libFuzzer (make fuzz, with
 * -DNBF_LIBFUZZER) the macro also defines LLVMFuzzerTestOneInput calling
 * it; built by the normal rules, tests/test_fuzz_corpus.c links every
 * target and runs the committed corpus and crash inputs through each.
 *
 * The models the targets need are generated here with tests/gguf_builder,
 * so fuzzing never depends on files outside the repository.
 */
#ifndef NIBBLE_FUZZ_H
#define NIBBLE_FUZZ_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "gguf_builder.h"
#include "nibble.h"

#define NBF_DECLARE(name) int nbf_##name(const uint8_t *data, size_t size)

#ifdef NBF_LIBFUZZER
#define NBF_TARGET(name)                                              \
    NBF_DECLARE(name);                                                \
    int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);     \
    int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)      \
    {                                                                 \
        return nbf_##name(data, size);                                \
    }                                                                 \
    NBF_DECLARE(name)
#else
#define NBF_TARGET(name) \
    NBF_DECLARE(name);   \
    NBF_DECLARE(name)
#endif

/* A property a target checks: on failure, say which (and which input,
 * when the corpus test has named it) on nbf_err_fd and abort, which
 * libFuzzer reports as a crash and the corpus test as a failed program. */
#define NBF_CHECK(cond, ...)                                                            \
    do {                                                                                \
        if (!(cond)) {                                                                  \
            dprintf(nbf_err_fd, "%s:%d: property failed: %s: ", __FILE__, __LINE__, #cond); \
            dprintf(nbf_err_fd, __VA_ARGS__);                                           \
            dprintf(nbf_err_fd, "\n%s%s\n", nbf_input ? "input: " : "",               \
                    nbf_input ? nbf_input : "");                                        \
            abort();                                                                    \
        }                                                                               \
    } while (0)

/* Where NBF_CHECK reports (2 unless the corpus test moved stderr away),
 * and the name of the input being run, when known. */
extern int nbf_err_fd;
extern const char *nbf_input;

/* Open bytes as a model file: they go into a memfd that nb_model_open
 * maps through /proc/self/fd (the loader has no in-memory entry).  *st
 * gets the status; NULL on failure. */
nb_model *nbf_model_from_bytes(const void *data, size_t size, int vocab_only, nb_status *st);
/* The same for a LoRA adapter against m. */
nb_lora *nbf_lora_from_bytes(const nb_model *m, const void *data, size_t size, nb_status *st);
/* Serialise a builder and open the image (vocab_only as asked); frees b.
 * NULL when the builder's image is refused, which is a bug in the target. */
nb_model *nbf_model_from_builder(gguf_builder *b, int vocab_only);

/* GPT-2's byte-to-unicode character for a byte, as UTF-8 (1 or 2 bytes
 * written to out, NUL-terminated). */
size_t nbf_gpt2_char(unsigned char byte, char out[3]);

/* Vocabularies, built once and kept for the process.
 *  nbf_spm_model: gguf_builder's SentencePiece vocabulary (<unk> <s> </s>,
 *    the 256 byte tokens, 41 merged pieces; add_space_prefix as default).
 *  nbf_bpe_model(pre): a byte-level BPE vocabulary (the 256 byte
 *    characters, some merged tokens with their merges, and <|endoftext|>
 *    as a control token) with tokenizer.ggml.pre = pre. */
nb_model *nbf_spm_model(void);
nb_model *nbf_bpe_model(const char *pre);

/* Text valid as UTF-8 (nibble's own validator, nbi_utf8_valid_len). */
int nbf_utf8_valid(const uint8_t *s, size_t n);

/* The full text of tokens through nb_detok (malloc'd, NUL-terminated). */
char *nbf_detok_all(const nb_model *m, const nb_token *t, int64_t n, int flags, size_t *len);

/* Tokenize text with flags and check the result: the count is stable, the
 * ids are in the vocabulary, their text is UTF-8.  Returns that text
 * (malloc'd, its length in *out_len) for a round-trip check. */
char *nbf_tokenize_detok(const nb_model *m, const char *text, size_t len, int flags,
                         size_t *out_len);

#endif
