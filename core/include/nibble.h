/*
 * nibble.h - the public interface of libnibble.
 *
 * libnibble loads LLaMA-family models from GGUF files, tokenizes text,
 * evaluates the transformer on the CPU and samples tokens.  This header is
 * the reference documentation: every function states its contract,
 * ownership and errors beside its prototype.
 *
 * Conventions
 *  - Every fallible call returns nb_status; NB_OK is 0 and codes are never
 *    renumbered.  nb_strerror() gives the generic text; functions that can
 *    fail in interesting ways also write a detailed message into a caller
 *    buffer (err, errlen) or keep it on the handle (nb_*_errmsg).
 *  - Close/free functions accept NULL.
 *  - The library never prints, never exits and never aborts on bad input.
 *  - A model is immutable after nb_model_open() and may be shared by any
 *    number of contexts on any threads.  A context (KV cache and scratch)
 *    belongs to one thread at a time.
 */
#ifndef NIBBLE_H
#define NIBBLE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define NB_VERSION_MAJOR 0
#define NB_VERSION_MINOR 1
#define NB_VERSION_PATCH 0
#define NB_VERSION "0.1.0"

#if defined(__GNUC__)
#define NB_API __attribute__((visibility("default")))
#else
#define NB_API
#endif

/* ------------------------------------------------------------------ */
/* Status codes                                                        */

typedef enum nb_status {
    NB_OK = 0,
    NB_ERR_IO = 1,          /* a file could not be opened, read or mapped */
    NB_ERR_FORMAT = 2,      /* the file is not valid GGUF or is corrupt */
    NB_ERR_UNSUPPORTED = 3, /* valid, but uses something nibble lacks */
    NB_ERR_NOMEM = 4,       /* an allocation failed */
    NB_ERR_INVALID = 5,     /* a bad argument (token id, size, option) */
    NB_ERR_CONTEXT_FULL = 6,/* the KV cache has no room for the tokens */
    NB_ERR_CANCELLED = 7    /* the operation was cancelled by the caller */
} nb_status;

/* Generic one-line description of a status.  Never NULL. */
NB_API const char *nb_strerror(nb_status status);

/* The library's version string, NB_VERSION at build time. */
NB_API const char *nb_version(void);

/* Physical CPU cores (hyperthread siblings counted once); the default
 * thread count.  At least 1. */
NB_API int nb_physical_cores(void);

/* ------------------------------------------------------------------ */
/* Tensor types, numbered as in GGUF (ggml).                           */

typedef enum nb_type {
    NB_TYPE_F32 = 0,
    NB_TYPE_F16 = 1,
    NB_TYPE_Q4_0 = 2,
    NB_TYPE_Q4_1 = 3,
    NB_TYPE_Q5_0 = 6,
    NB_TYPE_Q5_1 = 7,
    NB_TYPE_Q8_0 = 8,
    NB_TYPE_Q8_1 = 9,   /* activations only */
    NB_TYPE_Q2_K = 10,
    NB_TYPE_Q3_K = 11,
    NB_TYPE_Q4_K = 12,
    NB_TYPE_Q5_K = 13,
    NB_TYPE_Q6_K = 14,
    NB_TYPE_Q8_K = 15,  /* activations only */
    NB_TYPE_IQ4_NL = 20,
    NB_TYPE_BF16 = 30,
    NB_TYPE_COUNT = 40  /* one past the largest id GGUF has defined */
} nb_type;

/* Name of a type as GGUF tools print it ("Q4_K"), or NULL for an id that
 * no GGUF writer has used.  Knows the names of types nibble cannot compute
 * so that errors can name them. */
NB_API const char *nb_type_name(int type);

/* 1 when nibble can load weights of this type, else 0. */
NB_API int nb_type_supported(int type);

/* ------------------------------------------------------------------ */
/* GGUF files: read-only access to metadata, for tools such as info.   */

typedef struct nb_gguf nb_gguf;

typedef enum nb_gguf_vtype {
    NB_GGUF_UINT8 = 0, NB_GGUF_INT8 = 1, NB_GGUF_UINT16 = 2, NB_GGUF_INT16 = 3,
    NB_GGUF_UINT32 = 4, NB_GGUF_INT32 = 5, NB_GGUF_FLOAT32 = 6, NB_GGUF_BOOL = 7,
    NB_GGUF_STRING = 8, NB_GGUF_ARRAY = 9, NB_GGUF_UINT64 = 10, NB_GGUF_INT64 = 11,
    NB_GGUF_FLOAT64 = 12
} nb_gguf_vtype;

/* Map and validate a GGUF file (v2 or v3).  Every metadata value, tensor
 * shape, type, offset and size is checked against the file; on failure
 * *out is NULL and err holds a message naming the problem. */
NB_API nb_status nb_gguf_open(const char *path, nb_gguf **out, char *err, size_t errlen);
/* Parse a GGUF image already in memory.  The buffer must outlive the
 * handle.  Same validation as nb_gguf_open. */
NB_API nb_status nb_gguf_open_memory(const void *data, size_t size, nb_gguf **out,
                                     char *err, size_t errlen);
NB_API void nb_gguf_close(nb_gguf *g);

NB_API uint32_t nb_gguf_version(const nb_gguf *g);
NB_API int64_t nb_gguf_n_kv(const nb_gguf *g);
NB_API int64_t nb_gguf_n_tensors(const nb_gguf *g);
/* Key of metadata entry i (0 <= i < n_kv).  Owned by the handle. */
NB_API const char *nb_gguf_key(const nb_gguf *g, int64_t i);
NB_API nb_gguf_vtype nb_gguf_kv_type(const nb_gguf *g, int64_t i);
/* Index of a key, or -1. */
NB_API int64_t nb_gguf_find(const nb_gguf *g, const char *key);
/* Render value i as text into buf (truncated with "..." after max_items
 * array elements).  Returns the length it wanted, like snprintf. */
NB_API size_t nb_gguf_format_value(const nb_gguf *g, int64_t i, char *buf, size_t cap,
                                   int max_items);
/* Tensor i: name (owned by the handle), type and shape (ne[0] is the
 * contiguous row length; unused dimensions are 1). */
NB_API const char *nb_gguf_tensor_name(const nb_gguf *g, int64_t i);
NB_API int nb_gguf_tensor_type(const nb_gguf *g, int64_t i);
NB_API void nb_gguf_tensor_shape(const nb_gguf *g, int64_t i, int64_t ne[4]);
NB_API uint64_t nb_gguf_tensor_nbytes(const nb_gguf *g, int64_t i);

/* ------------------------------------------------------------------ */
/* Models                                                              */

typedef struct nb_model nb_model;
typedef int32_t nb_token;

typedef struct nb_model_params {
    int vocab_only; /* load the tokenizer only: a vocabulary file is enough */
    int use_mmap;   /* 1 (default): weights are used in place from a read-only
                       mapping; 0: the file is read into private memory */
    int repack;     /* 1 (default, unless NIBBLE_REPACK=0 is set): matrices of
                       the types the CPU's kernels read faster in groups of
                       rows (Q4_0, IQ4_NL on x86-64) are copied at load into
                       that layout, in memory of their own, and their file
                       pages released; 0: every weight is used as stored */
} nb_model_params;

NB_API nb_model_params nb_model_default_params(void);

/* Open a model.  The architecture must be one nibble implements (llama,
 * qwen2); anything else is refused with NB_ERR_UNSUPPORTED and a message
 * that names it and lists those.  On failure
 * *out is NULL and err (when given) holds a one-line message. */
NB_API nb_status nb_model_open(const char *path, const nb_model_params *params,
                               nb_model **out, char *err, size_t errlen);
NB_API void nb_model_close(nb_model *m);

/* A summary of a loaded model, for `nibble info` and status replies.
 * Strings point into the model and live as long as it. */
typedef struct nb_model_info {
    const char *path;
    const char *name;          /* general.name, or "" */
    const char *arch;          /* general.architecture */
    const char *tokenizer;     /* tokenizer.ggml.model: "llama" (SentencePiece) or
                                  "gpt2" (byte-level BPE) */
    const char *file_type;     /* predominant weight type, e.g. "Q4_0" */
    int vocab_only;
    int n_vocab;
    int n_ctx_train;
    int n_embd;
    int n_layer;
    int n_head;
    int n_head_kv;
    int head_dim;
    int n_ff;
    int n_rot;                 /* rotary dimensions per head */
    float rope_freq_base;
    float rms_eps;
    int tied_output;           /* 1 when output.weight is absent */
    nb_token bos, eos;         /* -1 when the vocabulary has none */
    int add_bos, add_eos;
    uint64_t file_size;
    uint64_t n_params;         /* elements in all weight tensors */
    uint64_t weight_bytes;     /* bytes of tensor data */
    uint64_t kv_bytes_per_token; /* KV cache cost of one token (F16 cache) */
    int type_tensors[NB_TYPE_COUNT]; /* tensors of each type */
    const char *rope_scaling;  /* "none", "linear" or "llama3" */
    int rope_neox;             /* 1: GPT-NeoX rotary layout (Qwen2), 0: adjacent pairs */
    int attn_bias;             /* 1 when the attention projections have biases */
    int sliding_window;        /* attention window in tokens; 0 = the whole context */
    nb_token fim_pre, fim_suf, fim_mid; /* fill-in-the-middle tokens, -1 when absent */
    nb_token fim_sep, fim_rep; /* file separator and repository name, -1 when absent */
    uint64_t packed_bytes;     /* weights copied into the packed layout at load
                                  (nb_model_params.repack); 0 when none */
    double pack_ms;            /* time that copy took */
} nb_model_info;

NB_API void nb_model_get_info(const nb_model *m, nb_model_info *info);
NB_API int nb_model_n_vocab(const nb_model *m);
NB_API int nb_model_n_ctx_train(const nb_model *m);
NB_API nb_token nb_model_bos(const nb_model *m);
NB_API nb_token nb_model_eos(const nb_model *m);
/* 1 when generation should stop at this token (EOS, EOT and the like). */
NB_API int nb_model_is_eog(const nb_model *m, nb_token t);
/* The metadata of the model file. */
NB_API const nb_gguf *nb_model_gguf(const nb_model *m);
/* A byte-level BPE vocabulary's pre-tokenizer, named by the rules it
 * follows ("gpt-2", "llama-bpe", "qwen2", "deepseek-coder", ...; "default"
 * too when tokenizer.ggml.pre is absent, as llama.cpp assumes); "" for
 * SentencePiece.  Never NULL. */
NB_API const char *nb_model_pre_tokenizer(const nb_model *m);

/* ------------------------------------------------------------------ */
/* Tokenizer                                                           */

enum {
    NB_TOK_ADD_SPECIAL = 1,   /* add BOS/EOS as the model's metadata asks */
    NB_TOK_PARSE_SPECIAL = 2  /* control-token text such as "</s>" in the
                                 input becomes that token; otherwise it is
                                 tokenized as plain text */
};

/* Tokenize len bytes of text.  Any bytes are accepted: invalid UTF-8
 * becomes byte tokens in SentencePiece vocabularies and, as in llama.cpp,
 * U+FFFD (one per byte that starts no character) in byte-level BPE ones.
 * Writes at most cap ids to out and returns how many the text needs, so a
 * return value > cap means "call again with a bigger buffer".  Returns a
 * negative nb_status on failure (-NB_ERR_NOMEM). */
NB_API int64_t nb_tokenize(const nb_model *m, const char *text, size_t len, nb_token *out,
                           int64_t cap, int flags);

enum {
    NB_PIECE_SPECIAL = 1 /* render control tokens (BOS, EOS) as their text */
};

/* The longest piece a token can have, in bytes: vocabularies with longer
 * token texts are refused when the model is opened. */
#define NB_MAX_PIECE 2048

/* The bytes a token stands for (SPM "▁" becomes a space, byte tokens
 * become their byte; BPE text maps back through GPT-2's byte-to-unicode
 * table).  Writes at most cap bytes, returns the full length,
 * or -NB_ERR_INVALID for an id outside the vocabulary.  The bytes may be
 * part of a UTF-8 character; use nb_detok for streaming text. */
NB_API int nb_token_piece(const nb_model *m, nb_token t, char *buf, size_t cap, int flags);

/* Streaming detokenizer: turns a sequence of tokens into valid UTF-8,
 * holding back a character until all its bytes have arrived.  Bytes that
 * can never form a valid character come out as U+FFFD.  Plain struct:
 * zero it (or call nb_detok_init) before use. */
typedef struct nb_detok {
    unsigned char pending[4];
    int n_pending;
    int flags;                 /* NB_PIECE_* */
} nb_detok;

NB_API void nb_detok_init(nb_detok *d, int flags);
/* Append the text of token t to out (at most cap bytes are written,
 * always NUL-terminated when cap > 0).  Returns the number of bytes this
 * call produced.  A piece is at most NB_MAX_PIECE bytes and a byte that
 * can never be part of a character becomes the 3 bytes of U+FFFD, so
 * cap >= 3 * NB_MAX_PIECE + 4 always suffices. */
NB_API size_t nb_detok_push(nb_detok *d, const nb_model *m, nb_token t, char *out, size_t cap);
/* Emit what is still held back (as U+FFFD: it was never completed). */
NB_API size_t nb_detok_flush(nb_detok *d, char *out, size_t cap);

/* ------------------------------------------------------------------ */
/* Chat templates and fill-in-the-middle                               */

typedef struct nb_chat_msg {
    const char *role;    /* "system", "user" or "assistant" */
    const char *content;
} nb_chat_msg;

/* The chat format recognised in the model's tokenizer.chat_template:
 * "chatml", "llama2", "llama3", "deepseek", "alpaca", "vicuna", "zephyr";
 * "raw" when
 * the model has none (a base model); "unknown" when it has one nibble does
 * not recognise, which renders as ChatML (callers should warn).  Never
 * NULL. */
NB_API const char *nb_chat_template_name(const nb_model *m);

/* Render a conversation as the prompt text of a template (NULL: the
 * model's).  add_assistant appends the opening of the assistant's turn.
 * *out is malloc'd; the caller frees it.  NB_ERR_INVALID for an unknown
 * template or role. */
NB_API nb_status nb_chat_render(const nb_model *m, const char *tmpl, const nb_chat_msg *msgs,
                                int n, int add_assistant, char **out, char *err, size_t errlen);

/* 1 when the model has fill-in-the-middle tokens (from its metadata, or
 * CodeLlama's <PRE>/<SUF>/<MID>, or the StarCoder, Qwen and DeepSeek
 * spellings in its vocabulary). */
NB_API int nb_model_has_fim(const nb_model *m);

typedef struct nb_chunk {
    const char *name;    /* e.g. a file name; may be NULL */
    const char *text;
} nb_chunk;

/* The token ids of an infill prompt: BOS (when the model adds one), extra
 * context chunks (after the model's file separator token when it has one),
 * then prefix, suffix and middle markers around the two texts, ready for
 * generation.  *out is malloc'd.  NB_ERR_UNSUPPORTED naming the model when
 * it has no FIM tokens. */
NB_API nb_status nb_infill_tokens(const nb_model *m, const char *prefix, const char *suffix,
                                  const nb_chunk *chunks, int n_chunks, nb_token **out,
                                  int64_t *n_out, char *err, size_t errlen);

/* Budgets for an infill prompt, and what was kept.  Cuts fall on line
 * boundaries, and the prefix is cut only at every 16th line from its start,
 * so that while someone types at the end of a long prefix the kept part
 * keeps the same start and a server's prefix cache stays valid. */
typedef struct nb_infill_fit {
    int n_prefix;        /* in: most prefix tokens kept (its end); 0 = all */
    int n_suffix;        /* in: most suffix tokens kept (its start); 0 = all */
    int n_max;           /* in: the whole prompt at most this; 0 = no limit.
                            Chunks are dropped first (the earliest first),
                            then the suffix and the prefix shrink */
    int fallback_prefix; /* in: a model without FIM tokens completes the
                            (trimmed) prefix as plain text instead of failing */
    int fim;             /* out: 1 when the FIM format was used */
    int prefix_tokens, suffix_tokens; /* out: tokens kept of each */
    size_t prefix_dropped, suffix_dropped; /* out: bytes cut from the prefix's
                                              front and the suffix's end */
    int chunks_used;     /* out: chunks that fit (the latest ones) */
} nb_infill_fit;

/* nb_infill_tokens within budgets (fit may not be NULL).  NB_ERR_INVALID
 * when the markers alone exceed n_max. */
NB_API nb_status nb_infill_tokens_fit(const nb_model *m, const char *prefix, const char *suffix,
                                      const nb_chunk *chunks, int n_chunks, nb_infill_fit *fit,
                                      nb_token **out, int64_t *n_out, char *err, size_t errlen);

/* ------------------------------------------------------------------ */
/* Evaluation contexts (KV cache + scratch)                            */

typedef struct nb_ctx nb_ctx;

typedef struct nb_ctx_params {
    int n_ctx;     /* KV cache size in tokens; 0 = the model's training
                      context, capped at 4096 */
    int n_batch;   /* largest number of tokens evaluated in one pass
                      (default 512); longer inputs are split */
    int n_threads; /* threads, the caller included (1..256); 0 = the
                      physical core count.  Results are identical for
                      every thread count. */
} nb_ctx_params;

NB_API nb_ctx_params nb_ctx_default_params(void);

NB_API nb_status nb_ctx_new(const nb_model *m, const nb_ctx_params *params, nb_ctx **out,
                            char *err, size_t errlen);
NB_API void nb_ctx_free(nb_ctx *c);
NB_API int nb_ctx_n_ctx(const nb_ctx *c);
/* Number of tokens held in the KV cache. */
NB_API int nb_ctx_n_past(const nb_ctx *c);
/* Forget every cached token from position n on (0 clears the cache). */
NB_API nb_status nb_ctx_truncate(nb_ctx *c, int n);

/* Evaluate n tokens at positions n_past .. n_past+n-1 and append them to
 * the KV cache.  all_logits = 0 computes logits for the last token only;
 * 1 computes them for every one of the n tokens.  Errors:
 * NB_ERR_INVALID for a token id outside the vocabulary or n <= 0,
 * NB_ERR_CONTEXT_FULL when n_past + n > n_ctx (nothing is evaluated). */
NB_API nb_status nb_ctx_decode(nb_ctx *c, const nb_token *tokens, int n, int all_logits);
/* Evaluate tokens of several contexts of the same model in one pass per
 * n_batch rows: each weight matrix is read once for all of them (the way a
 * server batches its clients), and every context gets exactly the logits
 * it would get from nb_ctx_decode alone.  The context ws lends its threads,
 * scratch, batch size and abort hook; it need not be one of the items (a
 * server keeps one such workspace and gives its slots one thread each);
 * NULL means the first item's.  Each context may appear once.  Errors as
 * nb_ctx_decode, detailed in ws's nb_ctx_errmsg; on NB_ERR_CANCELLED (see
 * nb_ctx_set_abort) the contexts keep every token of the passes that
 * completed. */
typedef struct nb_batch_item {
    nb_ctx *ctx;
    const nb_token *tokens;
    int n;
    int all_logits;
} nb_batch_item;

NB_API nb_status nb_decode_batch(nb_ctx *ws, nb_batch_item *items, int n_items);

/* Check fn(data) between layers of every pass this context evaluates (or
 * lends its threads to); a non-zero return stops the decode with
 * NB_ERR_CANCELLED.  fn = NULL removes it. */
NB_API void nb_ctx_set_abort(nb_ctx *c, int (*fn)(void *data), void *data);

/* Logits (n_vocab floats) of token i of the last decode: i in [0, n) when
 * all_logits was set, otherwise only i = n-1 or i = -1 (the last).  NULL
 * when unavailable.  Valid until the next decode. */
NB_API const float *nb_ctx_logits(const nb_ctx *c, int i);
NB_API const char *nb_ctx_errmsg(const nb_ctx *c);

/* ------------------------------------------------------------------ */
/* LoRA adapters                                                       */

/* A LoRA adapter in llama.cpp's GGUF format (general.type = adapter,
 * adapter.type = lora), loaded for one model.  Applied without merging:
 * each adapted weight computes W.x + scale.B.(A.x), the model untouched. */
typedef struct nb_lora nb_lora;

/* Load the adapter at path for model m (which must outlive it).  Every
 * "<name>.lora_a"/".lora_b" pair (F32, F16 or Q8_0) is checked against the
 * model's tensor <name> and the architecture against the model's:
 * NB_ERR_INVALID when they do not fit, NB_ERR_FORMAT when the file is not
 * an adapter, NB_ERR_UNSUPPORTED for a weight nibble cannot adapt; err
 * holds a one-line message.  The adapter's tensors are copied, the file
 * closed. */
NB_API nb_status nb_lora_open(const nb_model *m, const char *path, nb_lora **out, char *err,
                              size_t errlen);
NB_API void nb_lora_close(nb_lora *a);
/* Number of weights the adapter changes. */
NB_API int nb_lora_n_pairs(const nb_lora *a);

/* Apply adapters[i] with scales[i] (llama.cpp's rule: the effective factor
 * is scale * alpha / rank, or scale when the adapter's alpha is 0) to
 * every later decode of c, replacing any earlier set; n = 0 removes them.
 * The adapters must be opened for c's model and outlive their use; the
 * array is copied.  NB_ERR_INVALID for n < 0 or n > 64, NB_ERR_NOMEM. */
NB_API nb_status nb_ctx_set_lora(nb_ctx *c, nb_lora *const *adapters, const float *scales,
                                 int n);

/* ------------------------------------------------------------------ */
/* Sampling                                                            */

typedef struct nb_sampler nb_sampler;

/* The chain runs as llama.cpp's default one: penalties, top-k, top-p,
 * min-p, temperature, then a draw from a seeded xoshiro256** generator
 * (the same sequence on every platform).  Ties between equal logits go to
 * the lower id everywhere. */
typedef struct nb_sampler_params {
    float temp;             /* <= 0: greedy (argmax); default 0.8 */
    int top_k;              /* 0 = off; default 40 */
    float top_p;            /* in (0, 1]; 1 = off; default 0.95 */
    float min_p;            /* in [0, 1]; 0 = off; default 0.05 */
    float repeat_penalty;   /* > 0; 1 = off; default 1.0 */
    int repeat_last_n;      /* window for the penalties, 0..65536; default 64 */
    float freq_penalty;     /* 0 = off */
    float presence_penalty; /* 0 = off */
    uint64_t seed;          /* a given seed reproduces its output exactly;
                               default 0xC0FFEE */
} nb_sampler_params;

NB_API nb_sampler_params nb_sampler_default_params(void);
/* Check a parameter set; returns NB_ERR_INVALID and a message naming the
 * parameter, its valid range and the value given. */
NB_API nb_status nb_sampler_params_check(const nb_sampler_params *p, char *err, size_t errlen);
/* p = NULL means the defaults.  NB_ERR_INVALID for n_vocab <= 0 or bad
 * parameters, NB_ERR_NOMEM; all work memory is allocated here. */
NB_API nb_status nb_sampler_new(const nb_sampler_params *p, int n_vocab, nb_sampler **out);
NB_API void nb_sampler_free(nb_sampler *s);
/* Choose the next token from n_vocab logits.  Does not modify logits.
 * NaN counts as -inf and +inf as the largest float; when every logit is
 * -inf or NaN the result is token 0.  Returns -1 for NULL arguments. */
NB_API nb_token nb_sampler_sample(nb_sampler *s, const float *logits);
/* Record a token of the sequence (prompt or generated) for penalties.
 * Ids outside the vocabulary are ignored. */
NB_API void nb_sampler_accept(nb_sampler *s, nb_token t);
/* Forget the history and reseed. */
NB_API void nb_sampler_reset(nb_sampler *s, uint64_t seed);

/* Stop strings: feed generated text, get back how much of it is safe to
 * show.  Text that could be the start of a stop string is held back until
 * it is decided.  The stop string itself is never shown.  Matching is on
 * bytes, so a stop may be split anywhere between feeds; the stop that
 * completes first in the stream wins (the longer one when two complete on
 * the same byte). */
typedef struct nb_stopper nb_stopper;

#define NB_STOP_MAX 16      /* stop strings per stopper */
#define NB_STOP_MAX_LEN 256 /* bytes per stop string */

/* Copies the strings.  n_stops may be 0 (everything passes through).
 * NB_ERR_INVALID for NULL, empty or over-long strings or too many. */
NB_API nb_status nb_stopper_new(const char *const *stops, int n_stops, nb_stopper **out);
NB_API void nb_stopper_free(nb_stopper *s);
/* Append len bytes.  *emit receives a pointer to text that may now be
 * shown and *emit_len its length (valid until the next call).  Returns 1
 * once a stop string has matched (emit then ends just before it), else 0.
 * Should memory run out while buffering a very large feed, the stopper
 * behaves as if a stop had matched rather than show unchecked text. */
NB_API int nb_stopper_feed(nb_stopper *s, const char *text, size_t len, const char **emit,
                           size_t *emit_len);
/* At the end of generation: the held-back text, which matched nothing. */
NB_API void nb_stopper_flush(nb_stopper *s, const char **emit, size_t *emit_len);

/* ------------------------------------------------------------------ */
/* Configuration shared by nibd, nib and the editor plugin             */

/* $XDG_CONFIG_HOME/nibble/config (default ~/.config/nibble/config): lines
 * of "key = value", '#' comments.  Keys: model, threads, ctx_size, slots,
 * keep_alive (seconds, -1 = never), log_level (error, warn, info, debug),
 * socket, nibd (the daemon program to start), template, system,
 * history_size.  A value may be in double quotes; a path may start "~/". */
#define NB_CONFIG_MAX_LORA 16
#define NB_LORA_NAME_MAX 64
typedef struct nb_config {
    char model[4096];
    int threads;          /* 0: physical cores */
    int ctx_size;         /* 0: the model's, at most 4096 */
    int slots;            /* default 4 */
    double keep_alive;    /* default 300; -1 never */
    char log_level[16];   /* default "info" */
    char socket[4096];    /* "" = nb_socket_path() */
    char nibd[4096];      /* "" = nibd beside the program, then in PATH */
    char chat_template[64];
    char system[4096];
    int history_size;     /* default 1000 */
    /* "lora = NAME=FILE" lines (repeatable): adapters nibd loads */
    int n_lora;
    char lora_name[NB_CONFIG_MAX_LORA][NB_LORA_NAME_MAX + 1];
    char lora_path[NB_CONFIG_MAX_LORA][4096];
} nb_config;

/* Whether the len bytes at name make an adapter name nibd, nib and the
 * config file accept: 1 to NB_LORA_NAME_MAX letters, digits, '.', '_', '-'. */
NB_API int nb_lora_name_valid(const char *name, size_t len);

NB_API void nb_config_defaults(nb_config *c);
/* Read path (NULL: the default file) over the values already in c.  A
 * missing file is fine.  NB_ERR_INVALID with "file:line: ..." for unknown
 * keys and bad values; NB_ERR_IO when it cannot be read. */
NB_API nb_status nb_config_load(nb_config *c, const char *path, char *err, size_t errlen);
NB_API nb_status nb_config_path(char *buf, size_t cap);
/* The daemon's socket: $XDG_RUNTIME_DIR/nibble/nibd.sock, or
 * /tmp/nibble-$UID/nibd.sock without XDG_RUNTIME_DIR. */
NB_API nb_status nb_socket_path(char *buf, size_t cap);

/* nibble's per-user directories, after the XDG base directory rules. */
typedef enum {
    NB_DIR_CONFIG, /* $XDG_CONFIG_HOME/nibble, else ~/.config/nibble */
    NB_DIR_STATE,  /* $XDG_STATE_HOME/nibble, else ~/.local/state/nibble: history, log */
    NB_DIR_DATA    /* $XDG_DATA_HOME/nibble, else ~/.local/share/nibble: models, chats */
} nb_dir;

/* That directory, with "/sub" appended when sub is non-NULL.  With create,
 * the directory and any missing parents are made (0700; sub is not made).
 * NB_ERR_INVALID when neither the variable nor HOME is set or the path is
 * too long; NB_ERR_IO when a directory cannot be made. */
NB_API nb_status nb_dir_path(nb_dir which, const char *sub, int create, char *buf, size_t cap);
/* mkdir -p with mode 0700 for the directories it makes; 0 or -1 (errno). */
NB_API int nb_mkdirs(const char *path);

/* ------------------------------------------------------------------ */
/* Client of nibd (doc/protocol.md)                                    */

typedef struct nb_client nb_client;

typedef struct nb_client_params {
    const char *socket;    /* NULL: the config file's, else nb_socket_path() */
    int autostart;         /* 1 (default): when nothing answers, start nibd */
    const char *model;     /* for a started nibd: NULL = $NIBBLE_MODEL, then the
                              config file's model */
    const char *nibd;      /* program: NULL = the config's, else nibd beside the
                              running program, else from PATH */
    const char *const *nibd_args; /* extra arguments for it, NULL-terminated */
    int timeout_ms;        /* wait for a started daemon's socket (default 10000) */
} nb_client_params;

NB_API nb_client_params nb_client_default_params(void);
/* Connect (starting nibd --daemonize when nothing answers and autostart is
 * set; a lost race with another client starting it is fine).  Errors name
 * the socket, or carry nibd's own message when it could not start. */
NB_API nb_status nb_client_connect(const nb_client_params *p, nb_client **out, char *err,
                                   size_t errlen);
/* The connection's descriptor, readable when events arrive: for poll(),
 * libuv and the like. */
NB_API int nb_client_fd(const nb_client *c);
/* Send one request line (a newline is added when missing).  Blocks until
 * written; NB_ERR_IO when the daemon has gone. */
NB_API nb_status nb_client_send(nb_client *c, const char *line, size_t len);
/* The next event line, without its newline, in *line (malloc'd; the caller
 * frees it).  timeout_ms < 0 waits as long as it takes; 0 only takes what
 * has arrived.  NB_OK with *line = NULL: nothing complete yet.  NB_ERR_IO:
 * the daemon closed the connection. */
NB_API nb_status nb_client_read(nb_client *c, char **line, size_t *len, int timeout_ms);
NB_API void nb_client_close(nb_client *c);

/* The kernel set in use: "ref", "avx2" or "neon". */
NB_API const char *nb_kernels_level(void);

#ifdef __cplusplus
}
#endif

#endif /* NIBBLE_H */
