/* gguf_builder.c - see gguf_builder.h. */
#include "gguf_builder.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------ buffer */

void gb_buf_free(gb_buf *b)
{
    free(b->data);
    b->data = NULL;
    b->len = b->cap = 0;
}

static int buf_reserve(gb_buf *b, size_t n)
{
    if (b->oom)
        return 0;
    if (n <= b->cap - b->len)
        return 1;
    size_t cap = b->cap ? b->cap : 256;
    while (cap - b->len < n) {
        if (cap > SIZE_MAX / 2) {
            b->oom = 1;
            return 0;
        }
        cap *= 2;
    }
    uint8_t *p = realloc(b->data, cap);
    if (!p) {
        b->oom = 1;
        return 0;
    }
    b->data = p;
    b->cap = cap;
    return 1;
}

void gb_buf_bytes(gb_buf *b, const void *p, size_t n)
{
    if (n && buf_reserve(b, n)) {
        memcpy(b->data + b->len, p, n);
        b->len += n;
    }
}

void gb_buf_zeros(gb_buf *b, size_t n)
{
    if (n && buf_reserve(b, n)) {
        memset(b->data + b->len, 0, n);
        b->len += n;
    }
}

/* Explicit byte order so the images are right on any host. */
static void buf_le(gb_buf *b, uint64_t v, int n)
{
    uint8_t t[8];
    for (int i = 0; i < n; i++)
        t[i] = (uint8_t)(v >> (8 * i));
    gb_buf_bytes(b, t, (size_t)n);
}

void gb_buf_u8(gb_buf *b, uint8_t v) { buf_le(b, v, 1); }
void gb_buf_u16(gb_buf *b, uint16_t v) { buf_le(b, v, 2); }
void gb_buf_u32(gb_buf *b, uint32_t v) { buf_le(b, v, 4); }
void gb_buf_u64(gb_buf *b, uint64_t v) { buf_le(b, v, 8); }

void gb_buf_f32(gb_buf *b, float v)
{
    uint32_t u;
    memcpy(&u, &v, 4);
    buf_le(b, u, 4);
}

void gb_buf_f64(gb_buf *b, double v)
{
    uint64_t u;
    memcpy(&u, &v, 8);
    buf_le(b, u, 8);
}

void gb_buf_str(gb_buf *b, const char *s)
{
    size_t n = strlen(s);
    gb_buf_u64(b, n);
    gb_buf_bytes(b, s, n);
}

void gb_put_u32(uint8_t *img, size_t at, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        img[at + (size_t)i] = (uint8_t)(v >> (8 * i));
}

void gb_put_u64(uint8_t *img, size_t at, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        img[at + (size_t)i] = (uint8_t)(v >> (8 * i));
}

uint32_t gb_get_u32(const uint8_t *img, size_t at)
{
    uint32_t v = 0;
    for (int i = 0; i < 4; i++)
        v |= (uint32_t)img[at + (size_t)i] << (8 * i);
    return v;
}

uint64_t gb_get_u64(const uint8_t *img, size_t at)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v |= (uint64_t)img[at + (size_t)i] << (8 * i);
    return v;
}

/* ------------------------------------------------------------------ types */

size_t gb_value_size(uint32_t vtype)
{
    switch (vtype) {
    case GB_UINT8: case GB_INT8: case GB_BOOL: return 1;
    case GB_UINT16: case GB_INT16: return 2;
    case GB_UINT32: case GB_INT32: case GB_FLOAT32: return 4;
    case GB_UINT64: case GB_INT64: case GB_FLOAT64: return 8;
    default: return 0;
    }
}

/* ggml's block sizes; ids 4, 5, 31-33 and 36-38 were removed from ggml. */
static const struct { uint32_t block, bytes; } type_table[] = {
    [0] = {1, 4},      /* F32 */
    [1] = {1, 2},      /* F16 */
    [2] = {32, 18},    /* Q4_0 */
    [3] = {32, 20},    /* Q4_1 */
    [6] = {32, 22},    /* Q5_0 */
    [7] = {32, 24},    /* Q5_1 */
    [8] = {32, 34},    /* Q8_0 */
    [9] = {32, 36},    /* Q8_1 */
    [10] = {256, 84},  /* Q2_K */
    [11] = {256, 110}, /* Q3_K */
    [12] = {256, 144}, /* Q4_K */
    [13] = {256, 176}, /* Q5_K */
    [14] = {256, 210}, /* Q6_K */
    [15] = {256, 292}, /* Q8_K */
    [16] = {256, 66},  /* IQ2_XXS */
    [17] = {256, 74},  /* IQ2_XS */
    [18] = {256, 98},  /* IQ3_XXS */
    [19] = {256, 50},  /* IQ1_S */
    [20] = {32, 18},   /* IQ4_NL */
    [21] = {256, 110}, /* IQ3_S */
    [22] = {256, 82},  /* IQ2_S */
    [23] = {256, 136}, /* IQ4_XS */
    [24] = {1, 1},     /* I8 */
    [25] = {1, 2},     /* I16 */
    [26] = {1, 4},     /* I32 */
    [27] = {1, 8},     /* I64 */
    [28] = {1, 8},     /* F64 */
    [29] = {256, 56},  /* IQ1_M */
    [30] = {1, 2},     /* BF16 */
    [34] = {256, 54},  /* TQ1_0 */
    [35] = {256, 66},  /* TQ2_0 */
    [39] = {32, 17},   /* MXFP4 */
};

uint32_t gb_type_block(uint32_t type)
{
    return type < sizeof type_table / sizeof type_table[0] ? type_table[type].block : 0;
}

uint32_t gb_type_block_bytes(uint32_t type)
{
    return type < sizeof type_table / sizeof type_table[0] ? type_table[type].bytes : 0;
}

uint64_t gb_tensor_bytes(uint32_t type, uint32_t n_dims, const uint64_t *dims)
{
    uint64_t blk = gb_type_block(type), bb = gb_type_block_bytes(type);
    if (!blk || n_dims == 0 || n_dims > GB_MAX_DIMS || dims[0] % blk)
        return 0;
    uint64_t n = dims[0] / blk * bb;
    for (uint32_t i = 1; i < n_dims; i++) {
        if (dims[i] == 0 || n > UINT64_MAX / dims[i])
            return 0;
        n *= dims[i];
    }
    return n;
}

/* ------------------------------------------------------------------ builder */

gguf_builder *gb_new(void)
{
    gguf_builder *b = calloc(1, sizeof *b);
    if (!b)
        return NULL;
    memcpy(b->magic, "GGUF", 4);
    b->version = 3;
    b->align = 32;
    return b;
}

static void kv_free(gb_kv *kv)
{
    free(kv->key);
    gb_buf_free(&kv->val);
}

static void tensor_free(gb_tensor *t)
{
    free(t->name);
    gb_buf_free(&t->data);
}

void gb_free(gguf_builder *b)
{
    if (!b)
        return;
    for (size_t i = 0; i < b->n_kv; i++)
        kv_free(&b->kv[i]);
    for (size_t i = 0; i < b->n_tensor; i++)
        tensor_free(&b->tensor[i]);
    free(b->kv);
    free(b->tensor);
    free(b);
}

static char *dup_bytes(const void *p, size_t n)
{
    char *s = malloc(n + 1);
    if (s) {
        if (n)
            memcpy(s, p, n);
        s[n] = 0;
    }
    return s;
}

/* A new entry with its key set, or NULL (and b->oom) when out of memory. */
static gb_kv *kv_new(gguf_builder *b, const char *key, uint32_t type, int kind)
{
    if (b->oom)
        return NULL;
    if (b->n_kv == b->cap_kv) {
        size_t cap = b->cap_kv ? b->cap_kv * 2 : 32;
        gb_kv *p = realloc(b->kv, cap * sizeof *p);
        if (!p) {
            b->oom = 1;
            return NULL;
        }
        b->kv = p;
        b->cap_kv = cap;
    }
    gb_kv *kv = &b->kv[b->n_kv];
    memset(kv, 0, sizeof *kv);
    kv->key_len = strlen(key);
    kv->key = dup_bytes(key, kv->key_len);
    if (!kv->key) {
        b->oom = 1;
        return NULL;
    }
    kv->type = type;
    kv->kind = kind;
    b->n_kv++;
    return kv;
}

/* The index of kv, or -1 when its payload ran out of memory. */
static int kv_done(gguf_builder *b, gb_kv *kv)
{
    if (!kv)
        return -1;
    if (kv->val.oom) {
        b->oom = 1;
        return -1;
    }
    return (int)(kv - b->kv);
}

static int kv_scalar(gguf_builder *b, const char *key, uint32_t type, uint64_t bits, int n)
{
    gb_kv *kv = kv_new(b, key, type, GB_KIND_SCALAR);
    if (kv)
        buf_le(&kv->val, bits, n);
    return kv_done(b, kv);
}

int gb_kv_u8(gguf_builder *b, const char *key, uint8_t v) { return kv_scalar(b, key, GB_UINT8, v, 1); }
int gb_kv_i8(gguf_builder *b, const char *key, int8_t v) { return kv_scalar(b, key, GB_INT8, (uint8_t)v, 1); }
int gb_kv_u16(gguf_builder *b, const char *key, uint16_t v) { return kv_scalar(b, key, GB_UINT16, v, 2); }
int gb_kv_i16(gguf_builder *b, const char *key, int16_t v) { return kv_scalar(b, key, GB_INT16, (uint16_t)v, 2); }
int gb_kv_u32(gguf_builder *b, const char *key, uint32_t v) { return kv_scalar(b, key, GB_UINT32, v, 4); }
int gb_kv_i32(gguf_builder *b, const char *key, int32_t v) { return kv_scalar(b, key, GB_INT32, (uint32_t)v, 4); }
int gb_kv_bool(gguf_builder *b, const char *key, uint8_t v) { return kv_scalar(b, key, GB_BOOL, v, 1); }
int gb_kv_u64(gguf_builder *b, const char *key, uint64_t v) { return kv_scalar(b, key, GB_UINT64, v, 8); }
int gb_kv_i64(gguf_builder *b, const char *key, int64_t v) { return kv_scalar(b, key, GB_INT64, (uint64_t)v, 8); }

int gb_kv_f32(gguf_builder *b, const char *key, float v)
{
    uint32_t u;
    memcpy(&u, &v, 4);
    return kv_scalar(b, key, GB_FLOAT32, u, 4);
}

int gb_kv_f64(gguf_builder *b, const char *key, double v)
{
    uint64_t u;
    memcpy(&u, &v, 8);
    return kv_scalar(b, key, GB_FLOAT64, u, 8);
}

int gb_kv_str_n(gguf_builder *b, const char *key, const void *v, size_t n)
{
    gb_kv *kv = kv_new(b, key, GB_STRING, GB_KIND_STRING);
    if (kv)
        gb_buf_bytes(&kv->val, v, n);
    return kv_done(b, kv);
}

int gb_kv_str(gguf_builder *b, const char *key, const char *v)
{
    return gb_kv_str_n(b, key, v, strlen(v));
}

int gb_kv_arr(gguf_builder *b, const char *key, uint32_t elem_type, const void *elems, uint64_t n)
{
    size_t es = gb_value_size(elem_type);
    gb_kv *kv = kv_new(b, key, GB_ARRAY, GB_KIND_ARRAY);
    if (!kv)
        return -1;
    kv->elem_type = elem_type;
    kv->count = n;
    const uint8_t *p = elems;
    for (uint64_t i = 0; i < n && es; i++, p += es) {
        uint64_t v = 0;
        switch (es) {
        case 1: v = p[0]; break;
        case 2: { uint16_t t; memcpy(&t, p, 2); v = t; break; }
        case 4: { uint32_t t; memcpy(&t, p, 4); v = t; break; }
        default: memcpy(&v, p, 8); break;
        }
        buf_le(&kv->val, v, (int)es);
    }
    return kv_done(b, kv);
}

int gb_kv_arr_str(gguf_builder *b, const char *key, const char *const *strs, uint64_t n)
{
    gb_kv *kv = kv_new(b, key, GB_ARRAY, GB_KIND_ARRAY_STR);
    if (!kv)
        return -1;
    kv->elem_type = GB_STRING;
    kv->count = n;
    for (uint64_t i = 0; i < n; i++)
        gb_buf_str(&kv->val, strs[i]);
    return kv_done(b, kv);
}

int gb_kv_raw(gguf_builder *b, const char *key, uint32_t type, const void *payload, size_t len)
{
    gb_kv *kv = kv_new(b, key, type, GB_KIND_RAW);
    if (kv)
        gb_buf_bytes(&kv->val, payload, len);
    return kv_done(b, kv);
}

int gb_kv_find(const gguf_builder *b, const char *key)
{
    size_t n = strlen(key);
    for (size_t i = 0; i < b->n_kv; i++)
        if (b->kv[i].key_len == n && memcmp(b->kv[i].key, key, n) == 0)
            return (int)i;
    return -1;
}

int gb_kv_remove(gguf_builder *b, const char *key)
{
    int removed = 0, i;
    while ((i = gb_kv_find(b, key)) >= 0) {
        kv_free(&b->kv[i]);
        memmove(&b->kv[i], &b->kv[i + 1], (b->n_kv - (size_t)i - 1) * sizeof b->kv[0]);
        b->n_kv--;
        removed++;
    }
    return removed;
}

int gb_kv_set_key(gguf_builder *b, int i, const void *key, size_t len)
{
    char *k = dup_bytes(key, len);
    if (!k) {
        b->oom = 1;
        return -1;
    }
    free(b->kv[i].key);
    b->kv[i].key = k;
    b->kv[i].key_len = len;
    return 0;
}

/* ------------------------------------------------------------------ tensor data */

static uint64_t splitmix64(uint64_t *s)
{
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* Uniform in [-1, 1). */
static float rand_unit(uint64_t *s)
{
    return (float)((double)(splitmix64(s) >> 11) * 0x1.0p-53 * 2.0 - 1.0);
}

/* Round-to-nearest float -> IEEE half, for the small normal values made
 * here (no NaN or subnormal handling needed; tiny values flush to zero). */
static uint16_t to_half(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    uint16_t sign = (uint16_t)((u >> 16) & 0x8000);
    int exp = (int)((u >> 23) & 0xff) - 127 + 15;
    uint32_t man = u & 0x7fffff;
    if (exp <= 0)
        return sign;
    if (exp >= 31)
        return (uint16_t)(sign | 0x7c00);
    uint32_t h = ((uint32_t)exp << 10) | (man >> 13);
    if (man & 0x1000)
        h++; /* a carry into the exponent is still the right rounding */
    return (uint16_t)(sign | h);
}

static void fill_data(gb_buf *d, uint32_t type, size_t nbytes, const char *name)
{
    uint64_t s = 0xcbf29ce484222325ull; /* FNV-1a of the name: data does not depend on order */
    for (const char *p = name; *p; p++)
        s = (s ^ (uint8_t)*p) * 0x100000001b3ull;
    /* Norm weights near 1 keep activations sane if a test evaluates the model. */
    size_t nlen = strlen(name);
    float base = nlen >= 11 && strcmp(name + nlen - 11, "norm.weight") == 0 ? 1.0f : 0.0f;
    size_t i = 0;
    switch (type) {
    case GB_F32:
        for (; i + 4 <= nbytes; i += 4)
            gb_buf_f32(d, base + 0.1f * rand_unit(&s));
        break;
    case GB_F16:
        for (; i + 2 <= nbytes; i += 2)
            gb_buf_u16(d, to_half(base + 0.1f * rand_unit(&s)));
        break;
    case GB_BF16:
        for (; i + 2 <= nbytes; i += 2) {
            float f = base + 0.1f * rand_unit(&s);
            uint32_t u;
            memcpy(&u, &f, 4);
            gb_buf_u16(d, (uint16_t)(u >> 16));
        }
        break;
    case GB_Q8_0:
        for (; i + 34 <= nbytes; i += 34) {
            gb_buf_u16(d, to_half(0.1f / 127));
            for (int j = 0; j < 32; j++)
                gb_buf_u8(d, (uint8_t)splitmix64(&s));
        }
        break;
    default:
        break;
    }
    gb_buf_zeros(d, nbytes - i);
}

int gb_tensor_add(gguf_builder *b, const char *name, uint32_t n_dims, const uint64_t *dims,
                  uint32_t type, const void *data, size_t nbytes)
{
    if (b->oom)
        return -1;
    if (b->n_tensor == b->cap_tensor) {
        size_t cap = b->cap_tensor ? b->cap_tensor * 2 : 32;
        gb_tensor *p = realloc(b->tensor, cap * sizeof *p);
        if (!p) {
            b->oom = 1;
            return -1;
        }
        b->tensor = p;
        b->cap_tensor = cap;
    }
    gb_tensor *t = &b->tensor[b->n_tensor];
    memset(t, 0, sizeof *t);
    t->name_len = strlen(name);
    t->name = dup_bytes(name, t->name_len);
    if (!t->name) {
        b->oom = 1;
        return -1;
    }
    t->n_dims = n_dims;
    for (uint32_t i = 0; i < n_dims && i < GB_MAX_DIMS; i++)
        t->dims[i] = dims[i];
    t->type = type;
    if (nbytes == GB_AUTO) {
        uint64_t n = gb_tensor_bytes(type, n_dims, dims);
        nbytes = n <= SIZE_MAX / 2 ? (size_t)n : 0;
    }
    if (data)
        gb_buf_bytes(&t->data, data, nbytes);
    else
        fill_data(&t->data, type, nbytes, name);
    b->n_tensor++;
    if (t->data.oom) {
        b->oom = 1;
        return -1;
    }
    return (int)(t - b->tensor);
}

int gb_tensor_find(const gguf_builder *b, const char *name)
{
    size_t n = strlen(name);
    for (size_t i = 0; i < b->n_tensor; i++)
        if (b->tensor[i].name_len == n && memcmp(b->tensor[i].name, name, n) == 0)
            return (int)i;
    return -1;
}

int gb_tensor_remove(gguf_builder *b, const char *name)
{
    int removed = 0, i;
    while ((i = gb_tensor_find(b, name)) >= 0) {
        tensor_free(&b->tensor[i]);
        memmove(&b->tensor[i], &b->tensor[i + 1],
                (b->n_tensor - (size_t)i - 1) * sizeof b->tensor[0]);
        b->n_tensor--;
        removed++;
    }
    return removed;
}

/* ------------------------------------------------------------------ serialization */

static uint64_t align_up(uint64_t x, uint64_t a)
{
    return a > 1 && x % a ? x + (a - x % a) : x;
}

/* v1 wrote 32-bit lengths and counts where v2 moved to 64 bits. */
static void put_len(gb_buf *o, uint64_t n, int v1)
{
    if (v1)
        gb_buf_u32(o, (uint32_t)n);
    else
        gb_buf_u64(o, n);
}

static void put_value(gb_buf *o, const gb_kv *kv, int v1)
{
    const gb_buf *v = &kv->val;
    switch (kv->kind) {
    case GB_KIND_STRING:
        put_len(o, v->len, v1);
        gb_buf_bytes(o, v->data, v->len);
        break;
    case GB_KIND_ARRAY:
        gb_buf_u32(o, kv->elem_type);
        put_len(o, kv->count, v1);
        gb_buf_bytes(o, v->data, v->len);
        break;
    case GB_KIND_ARRAY_STR:
        gb_buf_u32(o, kv->elem_type);
        put_len(o, kv->count, v1);
        if (!v1) {
            gb_buf_bytes(o, v->data, v->len);
            break;
        }
        for (size_t at = 0; at + 8 <= v->len;) {
            uint64_t n = gb_get_u64(v->data, at);
            put_len(o, n, 1);
            gb_buf_bytes(o, v->data + at + 8, (size_t)n);
            at += 8 + (size_t)n;
        }
        break;
    default: /* scalar and raw payloads are already what goes in the file */
        gb_buf_bytes(o, v->data, v->len);
        break;
    }
}

uint8_t *gb_build(gguf_builder *b, size_t *len)
{
    if (b->oom)
        return NULL;
    int v1 = b->version == 1;
    uint64_t pos = 0;
    for (size_t i = 0; i < b->n_tensor; i++) {
        gb_tensor *t = &b->tensor[i];
        pos = align_up(pos, b->align);
        t->data_pos = pos;
        pos += t->data.len;
    }

    gb_buf o = {0};
    gb_buf_bytes(&o, b->magic, 4);
    gb_buf_u32(&o, b->version);
    put_len(&o, b->hdr_n_tensors_set ? b->hdr_n_tensors : b->n_tensor, v1);
    put_len(&o, b->hdr_n_kv_set ? b->hdr_n_kv : b->n_kv, v1);
    for (size_t i = 0; i < b->n_kv; i++) {
        gb_kv *kv = &b->kv[i];
        kv->at_key = o.len;
        put_len(&o, kv->key_len, v1);
        gb_buf_bytes(&o, kv->key, kv->key_len);
        kv->at_type = o.len;
        gb_buf_u32(&o, kv->type);
        kv->at_value = o.len;
        put_value(&o, kv, v1);
    }
    for (size_t i = 0; i < b->n_tensor; i++) {
        gb_tensor *t = &b->tensor[i];
        t->at_name = o.len;
        put_len(&o, t->name_len, v1);
        gb_buf_bytes(&o, t->name, t->name_len);
        t->at_n_dims = o.len;
        gb_buf_u32(&o, t->n_dims);
        t->at_dims = o.len;
        for (uint32_t d = 0; d < t->n_dims && d < GB_MAX_DIMS; d++)
            put_len(&o, t->dims[d], v1);
        t->at_type = o.len;
        gb_buf_u32(&o, t->type);
        t->at_offset = o.len;
        gb_buf_u64(&o, t->offset_set ? t->offset : t->data_pos);
    }
    b->infos_end = o.len;
    b->data_start = (size_t)align_up(o.len, b->align);
    gb_buf_zeros(&o, b->data_start - o.len);
    for (size_t i = 0; i < b->n_tensor; i++) {
        gb_tensor *t = &b->tensor[i];
        gb_buf_zeros(&o, b->data_start + (size_t)t->data_pos - o.len);
        gb_buf_bytes(&o, t->data.data, t->data.len);
    }
    if (o.oom) {
        gb_buf_free(&o);
        b->oom = 1;
        return NULL;
    }
    /* Exactly len bytes, so ASan catches a parser reading past the end. */
    uint8_t *img = realloc(o.data, o.len ? o.len : 1);
    if (!img) {
        gb_buf_free(&o);
        b->oom = 1;
        return NULL;
    }
    *len = o.len;
    return img;
}

/* ------------------------------------------------------------------ llama */

gb_llama_params gb_llama_default_params(void)
{
    gb_llama_params p = {.dim = 32, .n_layer = 2, .n_head = 4, .n_head_kv = 2, .n_ff = 64,
                         .n_ctx = 128, .wtype = GB_F32};
    return p;
}

int gb_llama_add_hparams(gguf_builder *b, const gb_llama_params *p)
{
    const char *a = p->arch ? p->arch : "llama";
    char key[128];
#define K(suffix) (snprintf(key, sizeof key, "%s." suffix, a), key)
    gb_kv_str(b, "general.architecture", a);
    gb_kv_str(b, "general.name", "nibble-test-tiny");
    gb_kv_u32(b, K("context_length"), (uint32_t)p->n_ctx);
    gb_kv_u32(b, K("embedding_length"), (uint32_t)p->dim);
    gb_kv_u32(b, K("block_count"), (uint32_t)p->n_layer);
    gb_kv_u32(b, K("feed_forward_length"), (uint32_t)p->n_ff);
    gb_kv_u32(b, K("attention.head_count"), (uint32_t)p->n_head);
    gb_kv_u32(b, K("attention.head_count_kv"), (uint32_t)p->n_head_kv);
    gb_kv_f32(b, K("attention.layer_norm_rms_epsilon"), 1e-5f);
    gb_kv_f32(b, K("rope.freq_base"), 10000.0f);
    gb_kv_u32(b, K("rope.dimension_count"), (uint32_t)(p->dim / p->n_head));
#undef K
    return b->oom ? -1 : 0;
}

/* Merged SPM pieces ("\xe2\x96\x81" is U+2581, SPM's space), best first. */
static const char *const llama_pieces[] = {
    "\xe2\x96\x81", "e", "t", "a", "o", "i", "n", "s", "h", "r",
    "\xe2\x96\x81t", "\xe2\x96\x81" "a", "he", "in", "er", "\xe2\x96\x81the", "on", "re", "an", "at",
    "\xe2\x96\x81s", "\xe2\x96\x81w", "en", "nd", "or", "it", "is", "\xe2\x96\x81o", "\xe2\x96\x81" "b", "es",
    "ing", "\xe2\x96\x81" "c", "ed", "\xe2\x96\x81" "f", "ar", "\xe2\x96\x81h", "\xe2\x96\x81m",
    "\xe2\x96\x81to", "\xe2\x96\x81" "and", "\xe2\x96\x81of", "ll",
};
_Static_assert(3 + 256 + sizeof llama_pieces / sizeof llama_pieces[0] == GB_LLAMA_N_VOCAB,
               "vocabulary size");

const char *gb_llama_token_text(int id)
{
    static char bytes[256][7];
    if (id < 0 || id >= GB_LLAMA_N_VOCAB)
        return NULL;
    if (id < 3)
        return (const char *const[]){"<unk>", "<s>", "</s>"}[id];
    if (id < 3 + 256) {
        snprintf(bytes[id - 3], sizeof bytes[0], "<0x%02X>", (unsigned)(id - 3) & 0xff);
        return bytes[id - 3];
    }
    return llama_pieces[id - 3 - 256];
}

int gb_llama_add_vocab(gguf_builder *b)
{
    enum { NORMAL = 1, UNKNOWN = 2, CONTROL = 3, BYTE = 6 };
    const char *tokens[GB_LLAMA_N_VOCAB];
    float scores[GB_LLAMA_N_VOCAB];
    int32_t types[GB_LLAMA_N_VOCAB];
    for (int i = 0; i < GB_LLAMA_N_VOCAB; i++) {
        tokens[i] = gb_llama_token_text(i);
        scores[i] = i < 3 + 256 ? 0.0f : -1.0f - (float)(i - 3 - 256); /* best merges first */
        types[i] = i == GB_LLAMA_UNK ? UNKNOWN : i < 3 ? CONTROL : i < 3 + 256 ? BYTE : NORMAL;
    }
    gb_kv_str(b, "tokenizer.ggml.model", "llama");
    gb_kv_arr_str(b, "tokenizer.ggml.tokens", tokens, GB_LLAMA_N_VOCAB);
    gb_kv_arr(b, "tokenizer.ggml.scores", GB_FLOAT32, scores, GB_LLAMA_N_VOCAB);
    gb_kv_arr(b, "tokenizer.ggml.token_type", GB_INT32, types, GB_LLAMA_N_VOCAB);
    gb_kv_u32(b, "tokenizer.ggml.bos_token_id", GB_LLAMA_BOS);
    gb_kv_u32(b, "tokenizer.ggml.eos_token_id", GB_LLAMA_EOS);
    gb_kv_u32(b, "tokenizer.ggml.unknown_token_id", GB_LLAMA_UNK);
    gb_kv_bool(b, "tokenizer.ggml.add_bos_token", 1);
    gb_kv_bool(b, "tokenizer.ggml.add_eos_token", 0);
    return b->oom ? -1 : 0;
}

static void add2(gguf_builder *b, const char *name, uint32_t type, uint64_t ne0, uint64_t ne1)
{
    uint64_t dims[2] = {ne0, ne1};
    gb_tensor_add(b, name, ne1 ? 2 : 1, dims, type, NULL, GB_AUTO);
}

int gb_llama_add_tensors(gguf_builder *b, const gb_llama_params *p)
{
    uint64_t dim = (uint64_t)p->dim, ff = (uint64_t)p->n_ff, nv = GB_LLAMA_N_VOCAB;
    uint64_t kv_dim = dim / (uint64_t)p->n_head * (uint64_t)p->n_head_kv;
    uint32_t w = p->wtype;
    add2(b, "token_embd.weight", w, dim, nv);
    add2(b, "output_norm.weight", GB_F32, dim, 0);
    add2(b, "output.weight", w, dim, nv);
    for (int l = 0; l < p->n_layer; l++) {
        char name[64];
#define T(suffix, ne0, ne1, type)                                    \
        snprintf(name, sizeof name, "blk.%d." suffix ".weight", l); \
        add2(b, name, type, ne0, ne1)
        T("attn_norm", dim, 0, GB_F32);
        T("attn_q", dim, dim, w);
        T("attn_k", dim, kv_dim, w);
        T("attn_v", dim, kv_dim, w);
        T("attn_output", dim, dim, w);
        T("ffn_norm", dim, 0, GB_F32);
        T("ffn_gate", dim, ff, w);
        T("ffn_up", dim, ff, w);
        T("ffn_down", ff, dim, w);
#undef T
        if (p->attn_bias) {
            snprintf(name, sizeof name, "blk.%d.attn_q.bias", l);
            add2(b, name, GB_F32, dim, 0);
            snprintf(name, sizeof name, "blk.%d.attn_k.bias", l);
            add2(b, name, GB_F32, kv_dim, 0);
            snprintf(name, sizeof name, "blk.%d.attn_v.bias", l);
            add2(b, name, GB_F32, kv_dim, 0);
        }
        if (p->attn_bias > 1) {
            snprintf(name, sizeof name, "blk.%d.attn_output.bias", l);
            add2(b, name, GB_F32, dim, 0);
        }
    }
    return b->oom ? -1 : 0;
}

gguf_builder *gb_llama_new(const gb_llama_params *p)
{
    gb_llama_params d = gb_llama_default_params();
    if (!p)
        p = &d;
    gguf_builder *b = gb_new();
    if (!b)
        return NULL;
    if (gb_llama_add_hparams(b, p) || gb_llama_add_vocab(b) || gb_llama_add_tensors(b, p)) {
        gb_free(b);
        return NULL;
    }
    return b;
}
