/*
 * internal.h - declarations shared between libnibble's source files.
 * Nothing here is part of the public interface; names carry the nbi_
 * prefix.
 */
#ifndef NIBBLE_INTERNAL_H
#define NIBBLE_INTERNAL_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kernels.h"
#include "nibble.h"

#define NBI_UNUSED(x) ((void)(x))
#define NBI_MIN(a, b) ((a) < (b) ? (a) : (b))
#define NBI_MAX(a, b) ((a) > (b) ? (a) : (b))

#if defined(__GNUC__)
#define NBI_PRINTF(f, a) __attribute__((format(printf, f, a)))
#else
#define NBI_PRINTF(f, a)
#endif

/* ------------------------------------------------------------------ util.c */

/* snprintf into an optional error buffer; returns status for chaining. */
nb_status nbi_err(char *err, size_t errlen, nb_status st, const char *fmt, ...) NBI_PRINTF(4, 5);

/* Checked arithmetic: return false on overflow. */
static inline bool nbi_mul_u64(uint64_t a, uint64_t b, uint64_t *out)
{
    return !__builtin_mul_overflow(a, b, out);
}
static inline bool nbi_add_u64(uint64_t a, uint64_t b, uint64_t *out)
{
    return !__builtin_add_overflow(a, b, out);
}

/* Allocation helpers that check the size multiplication. */
void *nbi_calloc(size_t n, size_t size);
void *nbi_malloc_array(size_t n, size_t size);

/* A string -> int32 hash map over caller-owned bytes (open addressing).
 * Keys are (pointer, length); the bytes must outlive the map. */
typedef struct nbi_strmap {
    uint32_t *slots;   /* index + 1 into the entry arrays, 0 = empty */
    const char **keys;
    uint32_t *lens;
    int32_t *vals;
    uint32_t n, cap_entries, mask;
} nbi_strmap;

nb_status nbi_strmap_init(nbi_strmap *m, uint32_t expected);
void nbi_strmap_free(nbi_strmap *m);
/* Insert; returns 1 when added, 0 when the key already existed (the old
 * value is kept and returned in *existing when non-NULL), -1 on NOMEM. */
int nbi_strmap_put(nbi_strmap *m, const char *key, size_t len, int32_t val, int32_t *existing);
/* Value for key, or -1. */
int32_t nbi_strmap_get(const nbi_strmap *m, const char *key, size_t len);

/* Milliseconds on the monotonic clock (an arbitrary origin). */
double nbi_now_ms(void);

/* Length of the valid UTF-8 sequence starting at s (1..4), or 0 when the
 * bytes at s do not start a valid, complete sequence within n bytes. */
int nbi_utf8_valid_len(const unsigned char *s, size_t n);
/* Expected length of a sequence from its first byte (1 for invalid). */
int nbi_utf8_len(unsigned char c);

/* ------------------------------------------------------------------ threads.c */

#define NBI_MAX_THREADS 256

typedef struct nbi_pool nbi_pool;
/* fn(arg, ith, nth) runs on every thread; ith = 0 is the caller. */
typedef void (*nbi_task_fn)(void *arg, int ith, int nth);

nb_status nbi_pool_new(int n_threads, nbi_pool **out);
void nbi_pool_free(nbi_pool *p);
int nbi_pool_size(const nbi_pool *p);
/* Run fn on all threads and wait for all of them. */
void nbi_pool_run(nbi_pool *p, nbi_task_fn fn, void *arg);

/* fn(arg, lo, hi, ith): items [lo, hi) on thread ith. */
typedef void (*nbi_range_fn)(void *arg, int64_t lo, int64_t hi, int ith);
/* Run fn over items [0, n) on all threads, in chunks that start at
 * multiples of `chunk` and hold `chunk` items (the last may hold fewer),
 * each item exactly once; return when all are done.  Each thread begins
 * with a contiguous share and, when it runs out, takes the remaining
 * chunks of the others: nothing about an item may depend on which thread
 * computes it.  One thread (or no pool): a single call over [0, n). */
void nbi_pool_run_chunked(nbi_pool *p, int64_t n, int64_t chunk, nbi_range_fn fn, void *arg);

/* Split n items into nth near-equal ranges; thread ith gets [*lo, *hi). */
static inline void nbi_split(int64_t n, int ith, int nth, int64_t *lo, int64_t *hi)
{
    int64_t per = n / nth, extra = n % nth;
    *lo = ith * per + (ith < extra ? ith : extra);
    *hi = *lo + per + (ith < extra);
}

/* ------------------------------------------------------------------ gguf.c */

typedef struct nbi_kv {
    const char *key;        /* NUL-terminated copy */
    nb_gguf_vtype type;
    nb_gguf_vtype arr_type; /* element type when type == ARRAY */
    uint64_t n;             /* array length, or string length */
    const uint8_t *data;    /* string bytes / first array element / scalar */
    union {
        uint64_t u;
        int64_t i;
        double f;
    } v;                    /* scalar value, widened */
} nbi_kv;

typedef struct nbi_tensor {
    const char *name;       /* NUL-terminated copy */
    int type;
    int n_dims;
    int64_t ne[4];          /* unused dimensions are 1 */
    uint64_t offset;        /* from the start of the data section */
    uint64_t nbytes;
    const void *data;       /* inside the mapping */
    const void *packed;     /* NULL, or the rows packed for the kernels
                               (model.c, pack.c); data keeps the file's */
} nbi_tensor;

struct nb_gguf {
    const uint8_t *base;    /* the whole file */
    size_t size;
    int owns;               /* 1 = mmap'ed, 2 = malloc'ed, 0 = caller's */
    uint32_t version;
    uint32_t alignment;
    uint64_t data_offset;
    int64_t n_kv;
    nbi_kv *kv;
    int64_t n_tensors;
    nbi_tensor *tensors;
    char *names;            /* storage for keys and tensor names */
    nbi_strmap kv_index;
    nbi_strmap tensor_index;
};

/* Open a file: use_mmap = 0 reads it into memory instead of mapping. */
nb_status nbi_gguf_open_file(const char *path, int use_mmap, nb_gguf **out, char *err,
                             size_t errlen);
const nbi_kv *nbi_gguf_kv(const nb_gguf *g, const char *key);
const nbi_tensor *nbi_gguf_tensor(const nb_gguf *g, const char *name);

/* Typed metadata getters.  Missing key: returns NB_OK with *found = 0
 * when found is non-NULL, else an error naming the key.  Wrong type or
 * out-of-range value: NB_ERR_FORMAT naming the key and both types. */
nb_status nbi_gguf_get_u32(const nb_gguf *g, const char *key, uint32_t *out, int *found,
                           char *err, size_t errlen);
nb_status nbi_gguf_get_f32(const nb_gguf *g, const char *key, float *out, int *found,
                           char *err, size_t errlen);
nb_status nbi_gguf_get_bool(const nb_gguf *g, const char *key, bool *out, int *found,
                            char *err, size_t errlen);
nb_status nbi_gguf_get_str(const nb_gguf *g, const char *key, const char **s, size_t *len,
                           int *found, char *err, size_t errlen);
/* An array with the given element type; *kv receives the entry. */
nb_status nbi_gguf_get_array(const nb_gguf *g, const char *key, nb_gguf_vtype elem,
                             const nbi_kv **kv, int *found, char *err, size_t errlen);
const char *nbi_gguf_type_name(nb_gguf_vtype t);

/* ------------------------------------------------------------------ gguf_write.c */

typedef struct nbi_gw nbi_gw;
/* Produce the nbytes of tensor `index` (in declaration order) into dst. */
typedef nb_status (*nbi_gw_fill_fn)(void *ctx, int64_t index, void *dst, size_t nbytes,
                                    char *err, size_t errlen);

nb_status nbi_gw_new(nbi_gw **out);
void nbi_gw_free(nbi_gw *w);
nb_status nbi_gw_str(nbi_gw *w, const char *key, const char *s);
nb_status nbi_gw_u32(nbi_gw *w, const char *key, uint32_t v);
nb_status nbi_gw_f32(nbi_gw *w, const char *key, float v);
nb_status nbi_gw_bool(nbi_gw *w, const char *key, bool v);
/* Arrays of FLOAT32, INT32 or UINT32. */
nb_status nbi_gw_arr(nbi_gw *w, const char *key, nb_gguf_vtype elem, const void *data, uint64_t n);
/* An array of strings; len may be NULL for NUL-terminated strings. */
nb_status nbi_gw_arr_str(nbi_gw *w, const char *key, const char *const *s, const uint32_t *len,
                         uint64_t n);
/* Copy one entry of another file verbatim. */
nb_status nbi_gw_copy(nbi_gw *w, const nb_gguf *src, const char *key);
nb_status nbi_gw_tensor(nbi_gw *w, const char *name, int type, int n_dims, const int64_t ne[4]);
/* Write everything to path (via a temporary file renamed into place). */
nb_status nbi_gw_write(nbi_gw *w, const char *path, nbi_gw_fill_fn fill, void *ctx, char *err,
                       size_t errlen);

/* Iterate the strings of a validated string array. */
static inline const uint8_t *nbi_gguf_next_str(const uint8_t *p, const char **s, uint64_t *len)
{
    uint64_t n;
    memcpy(&n, p, 8);
    *s = (const char *)p + 8;
    *len = n;
    return p + 8 + n;
}


/* ------------------------------------------------------------------ unicode.c */

/* Character classes (general category groups, and White_Space). */
enum nbi_uflag {
    NBI_U_LETTER = 0x01,    /* L* */
    NBI_U_NUMBER = 0x02,    /* N* */
    NBI_U_PUNCT = 0x04,     /* P* */
    NBI_U_SYMBOL = 0x08,    /* S* */
    NBI_U_MARK = 0x10,      /* M* */
    NBI_U_SEPARATOR = 0x20, /* Z* */
    NBI_U_CONTROL = 0x40,   /* Cc, Cf, Co, Cs */
    NBI_U_SPACE = 0x80      /* White_Space; unassigned code points have no flag */
};

/* unicode_data.c (generated by gen_unicode.py) */
extern const char nbi_unicode_version[];
extern const uint8_t nbi_unicode_latin1[256];
extern const uint32_t nbi_unicode_ranges[];
extern const size_t nbi_unicode_n_ranges;

/* Flags of a code point (0 above U+10FFFF). */
uint8_t nbi_unicode_flags(uint32_t cp);
/* Decode one code point of s (n >= 1 bytes) as llama.cpp does; returns the
 * bytes used.  A byte that starts no decodable sequence gives U+FFFD and 1. */
size_t nbi_utf8_decode(const unsigned char *s, size_t n, uint32_t *cp);
/* Encode cp (<= U+10FFFF) into out (4 bytes of room); returns its length. */
size_t nbi_utf8_encode(uint32_t cp, char *out);

/* Pre-tokenizers of BPE vocabularies (tokenizer.ggml.pre). */
enum nbi_pre {
    NBI_PRE_DEFAULT,
    NBI_PRE_GPT2,
    NBI_PRE_LLAMA3,
    NBI_PRE_DBRX,
    NBI_PRE_QWEN2,
    NBI_PRE_DEEPSEEK_LLM,
    NBI_PRE_DEEPSEEK_CODER,
    NBI_PRE_FALCON,
    NBI_PRE_STARCODER,
    NBI_PRE_COUNT
};

/* The kind a tokenizer.ggml.pre value names, or -1. */
int nbi_pre_find(const char *name, size_t len);
/* The main name of a kind. */
const char *nbi_pre_name(int kind);
/* Every accepted name, comma-separated, into buf; returns the length. */
size_t nbi_pre_list(char *buf, size_t cap);
/* llama.cpp's per-kind settings: whole pieces that are tokens skip the
 * merges; BOS is added unless the metadata says otherwise. */
int nbi_pre_ignore_merges(int kind);
int nbi_pre_add_bos(int kind);

/* A pre-tokenized text: its code points, re-encoded as UTF-8 (invalid
 * bytes as U+FFFD), cut into pieces.  Zero it before the first run; runs
 * reuse its buffers. */
typedef struct nbi_pretok {
    uint32_t *cp;           /* n code points */
    uint8_t *fl;            /* their flags */
    size_t n;
    char *text;             /* UTF-8 of cp[], text_len bytes */
    size_t text_len;
    size_t *off;            /* byte offset in text of cp[i]; off[n] = text_len */
    size_t *ends;           /* piece i is cp[ends[i-1] .. ends[i]) (ends[-1] = 0) */
    size_t n_pieces;
    size_t *next, n_next;   /* scratch */
    size_t cap_len;         /* input bytes the buffers have room for */
} nbi_pretok;

nb_status nbi_pretok_run(nbi_pretok *p, int kind, const char *text, size_t len);
void nbi_pretok_free(nbi_pretok *p);

/* ------------------------------------------------------------------ tokenizer.c */

enum nbi_tok_attr { /* GGUF tokenizer.ggml.token_type values */
    NBI_TOK_NORMAL = 1,
    NBI_TOK_UNKNOWN = 2,
    NBI_TOK_CONTROL = 3,
    NBI_TOK_USER_DEFINED = 4,
    NBI_TOK_UNUSED = 5,
    NBI_TOK_BYTE = 6
};

enum nbi_vocab_type {
    NBI_VOCAB_NONE = 0,
    NBI_VOCAB_SPM = 1, /* tokenizer.ggml.model = llama: SentencePiece */
    NBI_VOCAB_BPE = 2  /* tokenizer.ggml.model = gpt2: byte-level BPE */
};

#define NBI_MAX_PIECE NB_MAX_PIECE /* longest token text we accept */

typedef struct nbi_bpe nbi_bpe; /* merges: tokenizer_bpe.c */

typedef struct nbi_vocab {
    int type;
    int32_t n;              /* tokens */
    const char **text;      /* token text, inside the mapped file */
    uint32_t *len;
    float *score;
    uint8_t *attr;          /* enum nbi_tok_attr */
    nbi_strmap map;         /* text -> id */
    int32_t byte_tok[256];  /* byte -> <0xNN> token, or -1 */
    nb_token bos, eos, unk, eot, pad;
    nb_token *eog;          /* tokens that end generation */
    int n_eog;
    bool add_bos, add_eos, add_space_prefix;
    nb_token *special;      /* split before tokenizing, longest text first */
    int n_special;
    nb_token fim_pre, fim_suf, fim_mid, fim_sep, fim_rep; /* -1 when absent */
    int pre;                /* BPE: enum nbi_pre */
    bool pre_missing;       /* BPE: tokenizer.ggml.pre absent, "default" assumed */
    nbi_bpe *bpe;           /* BPE: merge ranks */
} nbi_vocab;

nb_status nbi_vocab_load(nbi_vocab *v, const nb_gguf *g, char *err, size_t errlen);
/* template.c: find the fill-in-the-middle tokens of a loaded model. */
void nbi_fim_detect(nb_model *m);
void nbi_vocab_free(nbi_vocab *v);

/* Token ids produced by a tokenizer: every id is counted, the first cap
 * are stored. */
typedef struct nbi_tokbuf {
    nb_token *out;
    int64_t cap, n;
} nbi_tokbuf;

static inline void nbi_emit(nbi_tokbuf *b, nb_token t)
{
    if (b->n < b->cap)
        b->out[b->n] = t;
    b->n++;
}

/* tokenizer_spm.c: one run of text without special tokens; prefix puts
 * the SentencePiece space in front. */
nb_status nbi_spm_tokenize(const nbi_vocab *v, const char *text, size_t len, int prefix,
                           nbi_tokbuf *out);
/* The text of a normal SPM token (U+2581 as a space) into out (room for
 * len bytes); returns its length. */
size_t nbi_spm_piece(const char *s, size_t len, char *out);

/* tokenizer_bpe.c: read tokenizer.ggml.pre and the merges (after the
 * tokens are loaded). */
nb_status nbi_bpe_load(nbi_vocab *v, const nb_gguf *g, char *err, size_t errlen);
void nbi_bpe_free(nbi_vocab *v);
/* One run of text without special tokens; scratch is reused between
 * calls and freed by the caller (nbi_bpe_scratch_free). */
typedef struct nbi_bpe_scratch nbi_bpe_scratch;
nb_status nbi_bpe_tokenize(const nbi_vocab *v, const char *text, size_t len,
                           nbi_bpe_scratch **scratch, nbi_tokbuf *out);
void nbi_bpe_scratch_free(nbi_bpe_scratch *s);
/* The bytes of a normal BPE token (GPT-2 byte-to-unicode decoded) into
 * out (room for len bytes); returns their number. */
size_t nbi_bpe_piece(const char *s, size_t len, char *out);

/* ------------------------------------------------------------------ arch_*.c */

/* An architecture is the shared transformer of model.c and forward.c
 * (RMSNorm, attention with grouped key/value heads and rotary positions,
 * SwiGLU feed-forward) plus what this struct says differs.  Each one lives
 * in its own core/src/arch_<name>.c; model.c lists them. */

enum nbi_rope_style {
    NBI_ROPE_NORM, /* rotate adjacent pairs (x[2i], x[2i+1]): LLaMA */
    NBI_ROPE_NEOX  /* rotate the halves (x[i], x[i + n_rot/2]): GPT-NeoX, Qwen2 */
};

/* The tensors of a block, as the shared core knows them. */
enum nbi_block_tensor {
    NBI_BT_ATTN_NORM, NBI_BT_ATTN_Q, NBI_BT_ATTN_K, NBI_BT_ATTN_V, NBI_BT_ATTN_OUT,
    NBI_BT_ATTN_Q_BIAS, NBI_BT_ATTN_K_BIAS, NBI_BT_ATTN_V_BIAS, NBI_BT_ATTN_OUT_BIAS,
    NBI_BT_FFN_NORM, NBI_BT_FFN_GATE, NBI_BT_FFN_UP, NBI_BT_FFN_DOWN,
    NBI_BT_COUNT
};

/* What an architecture does with each block tensor.  ABSENT is the zero
 * value: such a tensor is refused when a file has it, since ignoring a
 * weight silently computes something else. */
enum nbi_use { NBI_ABSENT = 0, NBI_REQUIRED, NBI_OPTIONAL };

typedef struct nbi_arch {
    const char *name;               /* general.architecture and the key prefix */
    int rope;                       /* enum nbi_rope_style */
    uint8_t block[NBI_BT_COUNT];    /* enum nbi_use per block tensor */
} nbi_arch;

extern const nbi_arch nbi_arch_llama, nbi_arch_qwen2;

/* ------------------------------------------------------------------ model.c */

typedef struct nbi_hparams {
    int n_vocab, n_ctx_train, n_embd, n_layer, n_head, n_head_kv, head_dim, n_ff, n_rot;
    int n_swa;                    /* sliding attention window in tokens, 0 = none */
    float rope_freq_base, rope_freq_scale, rms_eps;
    /* llama3 rope scaling, when named by rope.scaling.type */
    float rope_l3_factor, rope_l3_low, rope_l3_high;
    int rope_l3_orig_ctx;
} nbi_hparams;

typedef struct nbi_layer {
    const float *attn_norm;       /* (n_embd) */
    const nbi_tensor *wq;         /* (n_embd, n_head * head_dim) */
    const nbi_tensor *wk;         /* (n_embd, n_head_kv * head_dim) */
    const nbi_tensor *wv;         /* (n_embd, n_head_kv * head_dim) */
    const nbi_tensor *wo;         /* (n_head * head_dim, n_embd) */
    const float *bq;              /* (n_head * head_dim) or NULL */
    const float *bk, *bv;         /* (n_head_kv * head_dim) or NULL */
    const float *bo;              /* (n_embd) or NULL */
    const float *ffn_norm;        /* (n_embd) */
    const nbi_tensor *w_gate;     /* (n_embd, n_ff) */
    const nbi_tensor *w_up;       /* (n_embd, n_ff) */
    const nbi_tensor *w_down;     /* (n_ff, n_embd) */
} nbi_layer;

struct nb_model {
    nb_gguf *gguf;
    char *path;
    int vocab_only;
    const char *arch;             /* NUL-terminated copies */
    const char *name;
    const char *tokenizer_model;
    char *strings;                /* storage for the copies above */
    const nbi_arch *ad;           /* the architecture's description; NULL when vocab_only */
    nbi_hparams hp;
    const char *rope_scaling;     /* "none", "linear" or "llama3" */
    nbi_vocab vocab;
    const nbi_tensor *tok_embd;   /* (n_embd, n_vocab) */
    const float *output_norm;     /* (n_embd) */
    const nbi_tensor *output;     /* (n_embd, n_vocab); tok_embd when tied */
    const float *rope_freqs;      /* (n_rot / 2) or NULL: divisors of each pair's angle */
    nbi_layer *layers;
    float *vectors;               /* norms, biases and rope factors, as F32 */
    void *packed;                 /* anonymous mapping holding the packed matrices */
    size_t packed_size;           /* its length; 0 when nothing is packed */
    double pack_ms;               /* time spent packing at load */
};

/* ------------------------------------------------------------------ lora.c */

typedef struct nbi_lora_pair {
    const nbi_tensor *w;          /* the adapted weight of the model */
    int rank;
    float *a;                     /* (n_in, rank): rank rows of n_in */
    float *b;                     /* (rank, n_out): n_out rows of rank */
} nbi_lora_pair;

struct nb_lora {
    const nb_model *m;            /* the model it was opened for */
    float alpha;                  /* adapter.lora.alpha; 0 = scale as given */
    nbi_lora_pair *pairs;
    int n_pairs;
};

typedef struct nbi_lora_use {
    const nb_lora *lora;
    float scale;
} nbi_lora_use;

/* The factor of a pair's B.A for a user scale s: llama.cpp's rule,
 * s * alpha / rank, or s when the adapter's alpha is 0. */
float nbi_lora_factor(const nb_lora *a, const nbi_lora_pair *p, float s);

/* y (B, W->ne[1]) += scale * B.(A.x) for each adapter's pair adapting W,
 * with kernels k's F32 dot product, rows split across pool (may be NULL);
 * the result does not depend on the thread count.  NB_ERR_NOMEM when the
 * scratch cannot be allocated (y is then unchanged for that pair). */
nb_status nbi_lora_apply(const nbi_kernels *k, nbi_pool *pool, const nbi_lora_use *u, int n_use,
                         const nbi_tensor *W, const float *x, int B, float *y);

#endif /* NIBBLE_INTERNAL_H */
