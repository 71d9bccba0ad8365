/*
 * tools.h - shared pieces of the nibble command's subcommands.
 */
#ifndef NIBBLE_TOOLS_H
#define NIBBLE_TOOLS_H

#include <stddef.h>
#include <stdio.h>

#include "nibble.h"

/* Exit codes, documented in the README and nibble(1). */
enum { EXIT_OK = 0, EXIT_ERR = 1, EXIT_USAGE = 2, EXIT_CANCELLED = 130 };

int cmd_run(int argc, char **argv);
int cmd_eval(int argc, char **argv);
int cmd_tokenize(int argc, char **argv);
int cmd_info(int argc, char **argv);
int cmd_synth(int argc, char **argv);
int cmd_quantize(int argc, char **argv);
int cmd_bench(int argc, char **argv);
int cmd_perplexity(int argc, char **argv);
int cmd_lora_merge(int argc, char **argv);

/* "nibble: " + message on stderr; returns EXIT_ERR. */
int tool_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* "nibble SUB: " + message and a hint to --help; returns EXIT_USAGE. */
int tool_usage_error(const char *sub, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Parse numbers strictly: the whole string, in range.  0 on success. */
int parse_int(const char *s, long lo, long hi, long *out);
int parse_float(const char *s, double lo, double hi, double *out);
int parse_u64(const char *s, unsigned long long *out);

/* Read a whole file (or "-" for stdin); malloc'd, NUL-terminated. */
char *read_all(const char *path, size_t *len);

/* --lora FILE [--lora-scale S], repeatable (run, eval). */
#define TOOL_MAX_LORA 16
typedef struct tool_lora {
    const char *path[TOOL_MAX_LORA];
    float scale[TOOL_MAX_LORA];
    nb_lora *lora[TOOL_MAX_LORA];
    int n;
} tool_lora;
/* One option: is_scale = 0 for --lora, 1 for --lora-scale.  0 when taken,
 * else EXIT_USAGE after the message. */
int tool_lora_arg(tool_lora *l, const char *sub, int is_scale, const char *arg);
/* Open the adapters for m and set them on ctx; -1 after a message. */
int tool_lora_attach(tool_lora *l, const nb_model *m, nb_ctx *ctx);
void tool_lora_free(tool_lora *l);

#ifdef NIBBLE_INTERNAL_H
/* nbi_gw_write with the tools' error reporting: the file at path, filled
 * by fill, or EXIT_ERR after a message.  progress_line: a progress line is
 * on stderr and gets its newline first. */
int tool_write_gguf(nbi_gw *w, const char *path, nbi_gw_fill_fn fill, void *ctx,
                    int progress_line);
#endif

/* Open a model with a message on failure (NULL then). */
nb_model *open_model(const char *path, int vocab_only);

/* Tokenize with a growing buffer; returns malloc'd ids or NULL (message
 * printed). */
nb_token *tokenize_all(const nb_model *m, const char *text, size_t len, int flags, int64_t *n);

/* Copy text into dst replacing invalid UTF-8 with U+FFFD; malloc'd. */
char *utf8_sanitize(const char *s, size_t len);

#endif
