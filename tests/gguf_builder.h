/*
 * gguf_builder.h - writes GGUF images into memory for tests, valid or not.
 *
 * Nothing here checks anything: counts, types, lengths, shapes and offsets
 * are written exactly as the test sets them, so a test can produce any
 * corruption.  A build records where each field landed (the at_* members)
 * so a test can also patch single fields of the finished image.
 *
 * Also builds a valid tiny llama model (gb_llama_new) that the loader must
 * accept; hostile tests start from it and break one thing at a time.
 */
#ifndef NIBBLE_GGUF_BUILDER_H
#define NIBBLE_GGUF_BUILDER_H

#include <stddef.h>
#include <stdint.h>

/* GGUF metadata value types. */
enum {
    GB_UINT8 = 0, GB_INT8 = 1, GB_UINT16 = 2, GB_INT16 = 3, GB_UINT32 = 4,
    GB_INT32 = 5, GB_FLOAT32 = 6, GB_BOOL = 7, GB_STRING = 8, GB_ARRAY = 9,
    GB_UINT64 = 10, GB_INT64 = 11, GB_FLOAT64 = 12
};

/* ggml tensor type ids used by the tests (the full table is in the .c). */
enum {
    GB_F32 = 0, GB_F16 = 1, GB_Q4_0 = 2, GB_Q8_0 = 8, GB_Q4_K = 12,
    GB_IQ2_XXS = 16, GB_BF16 = 30
};

/* A growable byte buffer; also used by tests to assemble raw payloads.
 * An allocation failure sets oom and makes further appends no-ops. */
typedef struct gb_buf {
    uint8_t *data;
    size_t len, cap;
    int oom;
} gb_buf;

void gb_buf_free(gb_buf *b);
void gb_buf_bytes(gb_buf *b, const void *p, size_t n);
void gb_buf_zeros(gb_buf *b, size_t n);
void gb_buf_u8(gb_buf *b, uint8_t v);
void gb_buf_u16(gb_buf *b, uint16_t v);
void gb_buf_u32(gb_buf *b, uint32_t v);
void gb_buf_u64(gb_buf *b, uint64_t v);
void gb_buf_f32(gb_buf *b, float v);
void gb_buf_f64(gb_buf *b, double v);
/* A v2/v3 GGUF string: u64 length, then the bytes (no NUL). */
void gb_buf_str(gb_buf *b, const char *s);

/* Little-endian field access on a finished image. */
void gb_put_u32(uint8_t *img, size_t at, uint32_t v);
void gb_put_u64(uint8_t *img, size_t at, uint64_t v);
uint32_t gb_get_u32(const uint8_t *img, size_t at);
uint64_t gb_get_u64(const uint8_t *img, size_t at);

/* How a value's payload is encoded; fixed when the entry is added, so that
 * changing the written type afterwards makes the type lie about it. */
enum gb_kind { GB_KIND_SCALAR, GB_KIND_STRING, GB_KIND_ARRAY, GB_KIND_ARRAY_STR, GB_KIND_RAW };

typedef struct gb_kv {
    char *key;
    size_t key_len;       /* keys may hold any bytes, NUL included */
    uint32_t type;        /* value type written */
    int kind;             /* enum gb_kind */
    uint32_t elem_type;   /* arrays: element type written */
    uint64_t count;       /* arrays: element count written */
    /* scalar: its little-endian bytes; string: the bytes; array: the
     * little-endian elements, or for strings u64 length + bytes each;
     * raw: written verbatim after the type */
    gb_buf val;
    /* where the last gb_build put them: the key's length field, the type,
     * the value (for arrays: the element type; count at +4, data at +12) */
    size_t at_key, at_type, at_value;
} gb_kv;

#define GB_MAX_DIMS 8

typedef struct gb_tensor {
    char *name;
    size_t name_len;
    uint32_t n_dims;               /* written; min(n_dims, GB_MAX_DIMS) dims follow */
    uint64_t dims[GB_MAX_DIMS];    /* dims[0] is the contiguous row length */
    uint32_t type;
    int offset_set;                /* write offset instead of the real position */
    uint64_t offset;
    gb_buf data;
    uint64_t data_pos;             /* where the data really is, from the data start */
    size_t at_name, at_n_dims, at_dims, at_type, at_offset;
} gb_tensor;

typedef struct gguf_builder {
    uint8_t magic[4];      /* "GGUF" */
    uint32_t version;      /* 3; 1 switches to v1's 32-bit counts, lengths and dims */
    int hdr_n_tensors_set, hdr_n_kv_set;  /* write these counts instead of the real ones */
    uint64_t hdr_n_tensors, hdr_n_kv;
    uint64_t align;        /* layout of the data section (0 = none); general.alignment
                              is only what the test adds as a key */
    gb_kv *kv;
    size_t n_kv, cap_kv;
    gb_tensor *tensor;
    size_t n_tensor, cap_tensor;
    size_t infos_end;      /* after the last build: end of the tensor infos */
    size_t data_start;     /* ... and start of the data section */
    int oom;
} gguf_builder;

gguf_builder *gb_new(void);
void gb_free(gguf_builder *b);

/* Serialize.  Returns a malloc'd image of exactly *len bytes (free it), or
 * NULL when out of memory.  The image ends right after the last tensor's
 * data. */
uint8_t *gb_build(gguf_builder *b, size_t *len);

/* Key/value entries.  Each returns the entry's index, or -1 when out of
 * memory.  Duplicates are allowed: adding never replaces. */
int gb_kv_u8(gguf_builder *b, const char *key, uint8_t v);
int gb_kv_i8(gguf_builder *b, const char *key, int8_t v);
int gb_kv_u16(gguf_builder *b, const char *key, uint16_t v);
int gb_kv_i16(gguf_builder *b, const char *key, int16_t v);
int gb_kv_u32(gguf_builder *b, const char *key, uint32_t v);
int gb_kv_i32(gguf_builder *b, const char *key, int32_t v);
int gb_kv_f32(gguf_builder *b, const char *key, float v);
int gb_kv_bool(gguf_builder *b, const char *key, uint8_t v); /* any byte, not just 0/1 */
int gb_kv_u64(gguf_builder *b, const char *key, uint64_t v);
int gb_kv_i64(gguf_builder *b, const char *key, int64_t v);
int gb_kv_f64(gguf_builder *b, const char *key, double v);
int gb_kv_str(gguf_builder *b, const char *key, const char *v);
int gb_kv_str_n(gguf_builder *b, const char *key, const void *v, size_t n);
/* An array of a scalar type: elems is a host array of n values whose size
 * is gb_value_size(elem_type). */
int gb_kv_arr(gguf_builder *b, const char *key, uint32_t elem_type, const void *elems, uint64_t n);
int gb_kv_arr_str(gguf_builder *b, const char *key, const char *const *strs, uint64_t n);
/* Any type tag followed by any payload bytes. */
int gb_kv_raw(gguf_builder *b, const char *key, uint32_t type, const void *payload, size_t len);

int gb_kv_find(const gguf_builder *b, const char *key); /* first match or -1 */
int gb_kv_remove(gguf_builder *b, const char *key);     /* every match; returns how many */
int gb_kv_set_key(gguf_builder *b, int i, const void *key, size_t len);

/* Tensors.  data == NULL fills nbytes with deterministic pseudo-random
 * values of the type (small floats for F32/F16/BF16, valid Q8_0 blocks,
 * zeros otherwise); nbytes == GB_AUTO takes gb_tensor_bytes() of the
 * shape (0 when that is undefined).  Returns the index or -1. */
#define GB_AUTO ((size_t)-1)
/* dims holds min(n_dims, GB_MAX_DIMS) values; a test wanting to write a
 * larger n_dims sets the member afterwards. */
int gb_tensor_add(gguf_builder *b, const char *name, uint32_t n_dims, const uint64_t *dims,
                  uint32_t type, const void *data, size_t nbytes);
int gb_tensor_find(const gguf_builder *b, const char *name);
int gb_tensor_remove(gguf_builder *b, const char *name);

/* Size in bytes of one value of a scalar metadata type; 0 for string,
 * array and unknown ids. */
size_t gb_value_size(uint32_t vtype);
/* Elements per block and bytes per block of a ggml type; 0 when unknown. */
uint32_t gb_type_block(uint32_t type);
uint32_t gb_type_block_bytes(uint32_t type);
/* Bytes of a tensor; 0 for an unknown type, a row length that is not a
 * multiple of the block, a zero dimension or a size that overflows. */
uint64_t gb_tensor_bytes(uint32_t type, uint32_t n_dims, const uint64_t *dims);

/* ------------------------------------------------------------------ */
/* The tiny llama model.                                               */

/* SPM vocabulary: <unk> <s> </s>, the 256 byte tokens <0x00>..<0xFF>,
 * then 41 merged pieces. */
#define GB_LLAMA_N_VOCAB 300
#define GB_LLAMA_UNK 0
#define GB_LLAMA_BOS 1
#define GB_LLAMA_EOS 2

typedef struct gb_llama_params {
    int dim, n_layer, n_head, n_head_kv, n_ff, n_ctx;
    uint32_t wtype;       /* type of the 2-D weights; norms are always F32 */
    const char *arch;     /* general.architecture and the key prefix; NULL = "llama" */
    int attn_bias;        /* 1: F32 attn_q/k/v.bias; 2: attn_output.bias too */
} gb_llama_params;

/* dim 32, 2 layers, 4 heads, 2 KV heads, FFN 64, context 128, F32. */
gb_llama_params gb_llama_default_params(void);
/* general.architecture, general.name and the llama.* hyperparameters. */
int gb_llama_add_hparams(gguf_builder *b, const gb_llama_params *p);
/* Text of token id as written to the file ("<0x41>", "\xe2\x96\x81the"),
 * or NULL outside the vocabulary.  Static storage. */
const char *gb_llama_token_text(int id);
/* The tokenizer.* keys only. */
int gb_llama_add_vocab(gguf_builder *b);
/* token_embd, output_norm, output and every blk.N tensor. */
int gb_llama_add_tensors(gguf_builder *b, const gb_llama_params *p);
/* All of the above; p NULL means the defaults.  NULL when out of memory. */
gguf_builder *gb_llama_new(const gb_llama_params *p);

#endif
