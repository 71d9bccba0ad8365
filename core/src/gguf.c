/*
 * gguf.c - the GGUF reader.
 *
 * A GGUF file is a header, key/value metadata, tensor descriptions and an
 * aligned data section.  The file is mapped read-only and tensors are used
 * in place.  Every count, length, shape, offset and size is checked against
 * the bytes actually present before anything is allocated or dereferenced:
 * model files come from strangers.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "internal.h"

#define GGUF_MAGIC "GGUF"
#define GGUF_DEFAULT_ALIGNMENT 32
#define GGUF_MAX_DIMS 4
#define GGUF_MAX_NAME 256    /* tensor names; llama.cpp allows 64 */
#define GGUF_MAX_KEY 65535

/* Smallest encodings, used to bound counts before allocating. */
#define MIN_KV_BYTES (8 + 1 + 4 + 1)          /* key len, 1-byte key, type, u8 */
#define MIN_TENSOR_BYTES (8 + 1 + 4 + 8 + 4 + 8) /* name, n_dims, 1 dim, type, offset */

typedef struct cursor {
    const uint8_t *p, *end, *base;
    char *err;
    size_t errlen;
} cursor;

static uint64_t cur_off(const cursor *c)
{
    return (uint64_t)(c->p - c->base);
}

static nb_status truncated(cursor *c, const char *what)
{
    return nbi_err(c->err, c->errlen, NB_ERR_FORMAT,
                   "file is truncated: %s at offset %" PRIu64 " runs past the end of the file",
                   what, cur_off(c));
}

static nb_status rd(cursor *c, void *dst, size_t n, const char *what)
{
    if ((size_t)(c->end - c->p) < n)
        return truncated(c, what);
    memcpy(dst, c->p, n);
    c->p += n;
    return NB_OK;
}

static size_t remaining(const cursor *c)
{
    return (size_t)(c->end - c->p);
}

/* A string: u64 length then bytes.  Returns a pointer into the file. */
static nb_status rd_str(cursor *c, const char **s, uint64_t *len, const char *what)
{
    nb_status st = rd(c, len, 8, what);
    if (st)
        return st;
    if (*len > remaining(c))
        return nbi_err(c->err, c->errlen, NB_ERR_FORMAT,
                       "%s at offset %" PRIu64 " claims %" PRIu64
                       " bytes but only %zu remain in the file",
                       what, cur_off(c) - 8, *len, remaining(c));
    *s = (const char *)c->p;
    c->p += *len;
    return NB_OK;
}

static size_t scalar_size(nb_gguf_vtype t)
{
    switch (t) {
    case NB_GGUF_UINT8: case NB_GGUF_INT8: case NB_GGUF_BOOL: return 1;
    case NB_GGUF_UINT16: case NB_GGUF_INT16: return 2;
    case NB_GGUF_UINT32: case NB_GGUF_INT32: case NB_GGUF_FLOAT32: return 4;
    case NB_GGUF_UINT64: case NB_GGUF_INT64: case NB_GGUF_FLOAT64: return 8;
    default: return 0;
    }
}

const char *nbi_gguf_type_name(nb_gguf_vtype t)
{
    static const char *names[] = {"uint8", "int8", "uint16", "int16", "uint32", "int32",
                                  "float32", "bool", "string", "array", "uint64", "int64",
                                  "float64"};
    return (unsigned)t < sizeof names / sizeof names[0] ? names[t] : "unknown";
}

/* Widen one scalar at p into kv->v. */
static void load_scalar(nbi_kv *kv, const uint8_t *p)
{
    switch (kv->type) {
    case NB_GGUF_UINT8: case NB_GGUF_BOOL: kv->v.u = p[0]; break;
    case NB_GGUF_INT8: kv->v.i = (int8_t)p[0]; break;
    case NB_GGUF_UINT16: { uint16_t x; memcpy(&x, p, 2); kv->v.u = x; break; }
    case NB_GGUF_INT16: { int16_t x; memcpy(&x, p, 2); kv->v.i = x; break; }
    case NB_GGUF_UINT32: { uint32_t x; memcpy(&x, p, 4); kv->v.u = x; break; }
    case NB_GGUF_INT32: { int32_t x; memcpy(&x, p, 4); kv->v.i = x; break; }
    case NB_GGUF_FLOAT32: { float x; memcpy(&x, p, 4); kv->v.f = x; break; }
    case NB_GGUF_UINT64: { uint64_t x; memcpy(&x, p, 8); kv->v.u = x; break; }
    case NB_GGUF_INT64: { int64_t x; memcpy(&x, p, 8); kv->v.i = x; break; }
    case NB_GGUF_FLOAT64: { double x; memcpy(&x, p, 8); kv->v.f = x; break; }
    default: break;
    }
}

static int is_signed(nb_gguf_vtype t)
{
    return t == NB_GGUF_INT8 || t == NB_GGUF_INT16 || t == NB_GGUF_INT32 || t == NB_GGUF_INT64;
}

static int is_integer(nb_gguf_vtype t)
{
    return t == NB_GGUF_UINT8 || t == NB_GGUF_UINT16 || t == NB_GGUF_UINT32 ||
           t == NB_GGUF_UINT64 || is_signed(t);
}

/* Copy a name into the names arena, refusing embedded NULs. */
static nb_status save_name(cursor *c, char **arena, const char *s, uint64_t len,
                           const char **out, const char *what)
{
    if (memchr(s, 0, len))
        return nbi_err(c->err, c->errlen, NB_ERR_FORMAT, "%s contains a NUL byte", what);
    memcpy(*arena, s, len);
    (*arena)[len] = 0;
    *out = *arena;
    *arena += len + 1;
    return NB_OK;
}

static nb_status parse_value(cursor *c, nbi_kv *kv)
{
    const char *key = kv->key;
    if (kv->type == NB_GGUF_STRING) {
        const char *s;
        nb_status st = rd_str(c, &s, &kv->n, "string value");
        kv->data = (const uint8_t *)s;
        return st;
    }
    if (kv->type == NB_GGUF_ARRAY) {
        uint32_t et;
        nb_status st = rd(c, &et, 4, "array element type");
        if (st)
            return st;
        st = rd(c, &kv->n, 8, "array length");
        if (st)
            return st;
        kv->arr_type = (nb_gguf_vtype)et;
        kv->data = c->p;
        if (et == NB_GGUF_ARRAY)
            return nbi_err(c->err, c->errlen, NB_ERR_FORMAT,
                           "key '%s': nested arrays are not supported", key);
        if (et == NB_GGUF_STRING) {
            if (kv->n > remaining(c) / 8)
                return nbi_err(c->err, c->errlen, NB_ERR_FORMAT,
                               "key '%s': array of %" PRIu64
                               " strings cannot fit in the %zu bytes left in the file",
                               key, kv->n, remaining(c));
            for (uint64_t i = 0; i < kv->n; i++) {
                const char *s;
                uint64_t len;
                if (remaining(c) < 8 || (memcpy(&len, c->p, 8), len > remaining(c) - 8))
                    return nbi_err(c->err, c->errlen, NB_ERR_FORMAT,
                                   "key '%s': string %" PRIu64 " of the array runs past the end "
                                   "of the file", key, i);
                st = rd_str(c, &s, &len, "string in array");
                if (st)
                    return st;
            }
            return NB_OK;
        }
        size_t es = scalar_size((nb_gguf_vtype)et);
        if (!es)
            return nbi_err(c->err, c->errlen, NB_ERR_FORMAT,
                           "key '%s': unknown array element type %" PRIu32, key, et);
        if (kv->n > remaining(c) / es)
            return nbi_err(c->err, c->errlen, NB_ERR_FORMAT,
                           "key '%s': array of %" PRIu64 " %s values runs past the end of the file",
                           key, kv->n, nbi_gguf_type_name((nb_gguf_vtype)et));
        if (et == NB_GGUF_BOOL)
            for (uint64_t i = 0; i < kv->n; i++)
                if (c->p[i] > 1)
                    return nbi_err(c->err, c->errlen, NB_ERR_FORMAT,
                                   "key '%s': bool array element %" PRIu64 " is %u, not 0 or 1",
                                   key, i, c->p[i]);
        c->p += kv->n * es;
        return NB_OK;
    }
    size_t sz = scalar_size(kv->type);
    if (!sz)
        return nbi_err(c->err, c->errlen, NB_ERR_FORMAT, "key '%s': unknown value type %u", key,
                       (unsigned)kv->type);
    if (remaining(c) < sz)
        return truncated(c, "metadata value");
    kv->data = c->p;
    load_scalar(kv, c->p);
    if (kv->type == NB_GGUF_BOOL && kv->v.u > 1)
        return nbi_err(c->err, c->errlen, NB_ERR_FORMAT, "key '%s': bool value %u is not 0 or 1",
                       key, (unsigned)kv->v.u);
    c->p += sz;
    kv->n = 1;
    return NB_OK;
}

static nb_status parse(nb_gguf *g, char *err, size_t errlen)
{
    cursor c = {g->base, g->base + g->size, g->base, err, errlen};
    char magic[4];
    nb_status st;

    if (g->size < 4 || memcmp(g->base, GGUF_MAGIC, 4) != 0) {
        if (g->size >= 4 && (memcmp(g->base, "ggjt", 4) == 0 || memcmp(g->base, "tjgg", 4) == 0 ||
                             memcmp(g->base, "ggml", 4) == 0 || memcmp(g->base, "lmgg", 4) == 0))
            return nbi_err(err, errlen, NB_ERR_FORMAT,
                           "this is an old GGML/GGJT model, not GGUF; convert it with llama.cpp's "
                           "convert scripts");
        return nbi_err(err, errlen, NB_ERR_FORMAT, "not a GGUF file (bad magic)");
    }
    if ((st = rd(&c, magic, 4, "magic")))
        return st;
    if ((st = rd(&c, &g->version, 4, "version")))
        return st;
    if (g->version == 1)
        return nbi_err(err, errlen, NB_ERR_UNSUPPORTED,
                       "GGUF version 1 is not supported (only versions 2 and 3); re-convert the "
                       "model with a current llama.cpp");
    if (g->version != 2 && g->version != 3)
        return nbi_err(err, errlen, NB_ERR_UNSUPPORTED,
                       "GGUF version %" PRIu32 " is not supported (only versions 2 and 3)",
                       g->version);

    uint64_t n_tensors, n_kv;
    if ((st = rd(&c, &n_tensors, 8, "tensor count")) || (st = rd(&c, &n_kv, 8, "key count")))
        return st;
    if (n_kv > remaining(&c) / MIN_KV_BYTES)
        return nbi_err(err, errlen, NB_ERR_FORMAT,
                       "header claims %" PRIu64 " metadata entries, more than the file can hold",
                       n_kv);
    if (n_tensors > remaining(&c) / MIN_TENSOR_BYTES)
        return nbi_err(err, errlen, NB_ERR_FORMAT,
                       "header claims %" PRIu64 " tensors, more than the file can hold", n_tensors);

    /* Names are copied NUL-terminated; all of them fit in the file size. */
    g->names = malloc(g->size + 1);
    g->kv = nbi_calloc((size_t)n_kv, sizeof *g->kv);
    g->tensors = nbi_calloc((size_t)n_tensors, sizeof *g->tensors);
    if (!g->names || !g->kv || !g->tensors)
        return nbi_err(err, errlen, NB_ERR_NOMEM, "out of memory reading metadata");
    if (nbi_strmap_init(&g->kv_index, (uint32_t)n_kv) ||
        nbi_strmap_init(&g->tensor_index, (uint32_t)n_tensors))
        return nbi_err(err, errlen, NB_ERR_NOMEM, "out of memory reading metadata");
    char *arena = g->names;

    g->alignment = GGUF_DEFAULT_ALIGNMENT;
    for (uint64_t i = 0; i < n_kv; i++) {
        nbi_kv *kv = &g->kv[i];
        const char *s;
        uint64_t len;
        uint32_t type;
        if ((st = rd_str(&c, &s, &len, "metadata key")))
            return st;
        if (len == 0 || len > GGUF_MAX_KEY)
            return nbi_err(err, errlen, NB_ERR_FORMAT,
                           "metadata entry %" PRIu64 " has a key of length %" PRIu64, i, len);
        if ((st = save_name(&c, &arena, s, len, &kv->key, "metadata key")))
            return st;
        if ((st = rd(&c, &type, 4, "value type")))
            return st;
        kv->type = (nb_gguf_vtype)type;
        g->n_kv = (int64_t)i + 1;
        if ((st = parse_value(&c, kv)))
            return st;
        int r = nbi_strmap_put(&g->kv_index, kv->key, len, (int32_t)i, NULL);
        if (r < 0)
            return nbi_err(err, errlen, NB_ERR_NOMEM, "out of memory reading metadata");
        if (r == 0)
            return nbi_err(err, errlen, NB_ERR_FORMAT, "duplicate metadata key '%s'", kv->key);
        if (strcmp(kv->key, "general.alignment") == 0) {
            if (kv->type != NB_GGUF_UINT32)
                return nbi_err(err, errlen, NB_ERR_FORMAT,
                               "general.alignment has type %s, expected uint32",
                               nbi_gguf_type_name(kv->type));
            if (kv->v.u == 0 || (kv->v.u & (kv->v.u - 1)))
                return nbi_err(err, errlen, NB_ERR_FORMAT,
                               "general.alignment is %" PRIu64 ", not a power of two", kv->v.u);
            g->alignment = (uint32_t)kv->v.u;
        }
    }

    for (uint64_t i = 0; i < n_tensors; i++) {
        nbi_tensor *t = &g->tensors[i];
        const char *s;
        uint64_t len;
        uint32_t n_dims, type;
        if ((st = rd_str(&c, &s, &len, "tensor name")))
            return st;
        if (len == 0 || len > GGUF_MAX_NAME)
            return nbi_err(err, errlen, NB_ERR_FORMAT,
                           "tensor %" PRIu64 " has a name of length %" PRIu64 " (limit %d)", i,
                           len, GGUF_MAX_NAME);
        if ((st = save_name(&c, &arena, s, len, &t->name, "tensor name")))
            return st;
        g->n_tensors = (int64_t)i + 1;
        if ((st = rd(&c, &n_dims, 4, "tensor dimension count")))
            return st;
        if (n_dims < 1 || n_dims > GGUF_MAX_DIMS)
            return nbi_err(err, errlen, NB_ERR_FORMAT, "tensor '%s' has %" PRIu32
                           " dimensions (1 to %d allowed)", t->name, n_dims, GGUF_MAX_DIMS);
        t->n_dims = (int)n_dims;
        uint64_t nelem = 1;
        for (int d = 0; d < GGUF_MAX_DIMS; d++) {
            uint64_t ne = 1;
            if (d < (int)n_dims && (st = rd(&c, &ne, 8, "tensor dimension")))
                return st;
            if (ne == 0 || ne > INT64_MAX)
                return nbi_err(err, errlen, NB_ERR_FORMAT,
                               "tensor '%s' has invalid dimension %d: %" PRIu64, t->name, d, ne);
            if (!nbi_mul_u64(nelem, ne, &nelem) || nelem > INT64_MAX)
                return nbi_err(err, errlen, NB_ERR_FORMAT,
                               "tensor '%s': the product of its dimensions overflows", t->name);
            t->ne[d] = (int64_t)ne;
        }
        if ((st = rd(&c, &type, 4, "tensor type")))
            return st;
        if (type >= NB_TYPE_COUNT || !nbi_types[type].name)
            return nbi_err(err, errlen, NB_ERR_UNSUPPORTED,
                           "tensor '%s' has unknown type %" PRIu32, t->name, type);
        t->type = (int)type;
        const nbi_type_info *ti = &nbi_types[type];
        if (t->ne[0] % ti->blck != 0)
            return nbi_err(err, errlen, NB_ERR_FORMAT,
                           "tensor '%s': row length %" PRId64
                           " is not a multiple of the %s block size %d",
                           t->name, t->ne[0], ti->name, ti->blck);
        uint64_t nbytes = (uint64_t)t->ne[0] / (uint64_t)ti->blck;
        if (!nbi_mul_u64(nbytes, ti->size, &nbytes))
            goto overflow;
        for (int d = 1; d < GGUF_MAX_DIMS; d++)
            if (!nbi_mul_u64(nbytes, (uint64_t)t->ne[d], &nbytes))
                goto overflow;
        t->nbytes = nbytes;
        if ((st = rd(&c, &t->offset, 8, "tensor offset")))
            return st;
        int r = nbi_strmap_put(&g->tensor_index, t->name, len, (int32_t)i, NULL);
        if (r < 0)
            return nbi_err(err, errlen, NB_ERR_NOMEM, "out of memory reading tensors");
        if (r == 0)
            return nbi_err(err, errlen, NB_ERR_FORMAT, "duplicate tensor name '%s'", t->name);
        continue;
    overflow:
        return nbi_err(err, errlen, NB_ERR_FORMAT, "tensor '%s': its size in bytes overflows",
                       t->name);
    }

    /* The data section starts at the next multiple of the alignment. */
    uint64_t off = cur_off(&c);
    uint64_t data = (off + g->alignment - 1) / g->alignment * g->alignment;
    if (n_tensors > 0 && data > g->size)
        return nbi_err(err, errlen, NB_ERR_FORMAT,
                       "file is truncated: the tensor data section would start at %" PRIu64
                       " but the file has %zu bytes",
                       data, g->size);
    g->data_offset = data;
    for (int64_t i = 0; i < g->n_tensors; i++) {
        nbi_tensor *t = &g->tensors[i];
        uint64_t start, end;
        if (t->offset % g->alignment != 0)
            return nbi_err(err, errlen, NB_ERR_FORMAT,
                           "tensor '%s' has offset %" PRIu64 ", not a multiple of the alignment %" PRIu32,
                           t->name, t->offset, g->alignment);
        if (!nbi_add_u64(data, t->offset, &start) || !nbi_add_u64(start, t->nbytes, &end) ||
            end > g->size)
            return nbi_err(err, errlen, NB_ERR_FORMAT,
                           "tensor '%s' (offset %" PRIu64 ", %" PRIu64
                           " bytes) extends beyond the end of the file (%zu bytes); the file is "
                           "truncated or corrupt",
                           t->name, t->offset, t->nbytes, g->size);
        t->data = g->base + start;
    }
    return NB_OK;
}

nb_status nb_gguf_open_memory(const void *data, size_t size, nb_gguf **out, char *err,
                              size_t errlen)
{
    if (err && errlen)
        err[0] = 0;
    *out = NULL;
    if (!data && size)
        return nbi_err(err, errlen, NB_ERR_INVALID, "no data");
    nb_gguf *g = calloc(1, sizeof *g);
    if (!g)
        return nbi_err(err, errlen, NB_ERR_NOMEM, "out of memory");
    g->base = data;
    g->size = size;
    nb_status st = parse(g, err, errlen);
    if (st) {
        nb_gguf_close(g);
        return st;
    }
    *out = g;
    return NB_OK;
}

nb_status nbi_gguf_open_file(const char *path, int use_mmap, nb_gguf **out, char *err,
                             size_t errlen)
{
    *out = NULL;
    if (err && errlen)
        err[0] = 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return nbi_err(err, errlen, NB_ERR_IO, "cannot open: %s", strerror(errno));
    struct stat sb;
    if (fstat(fd, &sb) < 0) {
        int e = errno;
        close(fd);
        return nbi_err(err, errlen, NB_ERR_IO, "cannot stat: %s", strerror(e));
    }
    if (!S_ISREG(sb.st_mode)) {
        close(fd);
        return nbi_err(err, errlen, NB_ERR_IO, "not a regular file");
    }
    size_t size = (size_t)sb.st_size;
    if (size < 4) {
        close(fd);
        return nbi_err(err, errlen, NB_ERR_FORMAT, "not a GGUF file (only %zu bytes)", size);
    }
    void *base;
    int owns;
    if (use_mmap) {
        base = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (base == MAP_FAILED) {
            int e = errno;
            close(fd);
            return nbi_err(err, errlen, NB_ERR_IO, "cannot map the file: %s", strerror(e));
        }
        owns = 1;
    } else {
        base = malloc(size);
        if (!base) {
            close(fd);
            return nbi_err(err, errlen, NB_ERR_NOMEM, "out of memory reading %zu bytes", size);
        }
        size_t got = 0;
        while (got < size) {
            ssize_t r = pread(fd, (char *)base + got, size - got, (off_t)got);
            if (r < 0 && errno == EINTR)
                continue;
            if (r <= 0) {
                int e = r < 0 ? errno : EIO;
                free(base);
                close(fd);
                return nbi_err(err, errlen, NB_ERR_IO, "read failed: %s", strerror(e));
            }
            got += (size_t)r;
        }
        owns = 2;
    }
    close(fd); /* a mapping stays valid after its descriptor is closed */
    nb_gguf *g;
    nb_status st = nb_gguf_open_memory(base, size, &g, err, errlen);
    if (st) {
        if (owns == 1)
            munmap(base, size);
        else
            free(base);
        return st;
    }
    g->owns = owns;
    *out = g;
    return NB_OK;
}

nb_status nb_gguf_open(const char *path, nb_gguf **out, char *err, size_t errlen)
{
    return nbi_gguf_open_file(path, 1, out, err, errlen);
}

void nb_gguf_close(nb_gguf *g)
{
    if (!g)
        return;
    if (g->owns == 1)
        munmap((void *)g->base, g->size);
    else if (g->owns == 2)
        free((void *)g->base);
    nbi_strmap_free(&g->kv_index);
    nbi_strmap_free(&g->tensor_index);
    free(g->names);
    free(g->kv);
    free(g->tensors);
    free(g);
}

/* ------------------------------------------------------------------ access */

uint32_t nb_gguf_version(const nb_gguf *g) { return g->version; }
int64_t nb_gguf_n_kv(const nb_gguf *g) { return g->n_kv; }
int64_t nb_gguf_n_tensors(const nb_gguf *g) { return g->n_tensors; }

const char *nb_gguf_key(const nb_gguf *g, int64_t i)
{
    return i >= 0 && i < g->n_kv ? g->kv[i].key : NULL;
}

nb_gguf_vtype nb_gguf_kv_type(const nb_gguf *g, int64_t i)
{
    return i >= 0 && i < g->n_kv ? g->kv[i].type : (nb_gguf_vtype)-1;
}

int64_t nb_gguf_find(const nb_gguf *g, const char *key)
{
    return nbi_strmap_get(&g->kv_index, key, strlen(key));
}

const nbi_kv *nbi_gguf_kv(const nb_gguf *g, const char *key)
{
    int32_t i = nbi_strmap_get(&g->kv_index, key, strlen(key));
    return i < 0 ? NULL : &g->kv[i];
}

const nbi_tensor *nbi_gguf_tensor(const nb_gguf *g, const char *name)
{
    int32_t i = nbi_strmap_get(&g->tensor_index, name, strlen(name));
    return i < 0 ? NULL : &g->tensors[i];
}

const char *nb_gguf_tensor_name(const nb_gguf *g, int64_t i)
{
    return i >= 0 && i < g->n_tensors ? g->tensors[i].name : NULL;
}

int nb_gguf_tensor_type(const nb_gguf *g, int64_t i)
{
    return i >= 0 && i < g->n_tensors ? g->tensors[i].type : -1;
}

void nb_gguf_tensor_shape(const nb_gguf *g, int64_t i, int64_t ne[4])
{
    for (int d = 0; d < 4; d++)
        ne[d] = i >= 0 && i < g->n_tensors ? g->tensors[i].ne[d] : 0;
}

uint64_t nb_gguf_tensor_nbytes(const nb_gguf *g, int64_t i)
{
    return i >= 0 && i < g->n_tensors ? g->tensors[i].nbytes : 0;
}

/* Append printf output to buf[*len..cap), tracking the wanted length. */
static void app(char *buf, size_t cap, size_t *len, const char *fmt, ...) NBI_PRINTF(4, 5);
static void app(char *buf, size_t cap, size_t *len, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *dst = *len < cap ? buf + *len : NULL;
    int n = vsnprintf(dst, dst ? cap - *len : 0, fmt, ap);
    va_end(ap);
    if (n > 0)
        *len += (size_t)n;
}

static void app_str(char *buf, size_t cap, size_t *len, const char *s, uint64_t n, int quote)
{
    if (quote)
        app(buf, cap, len, "\"");
    for (uint64_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (ch == '\n')
            app(buf, cap, len, "\\n");
        else if (ch == '"' && quote)
            app(buf, cap, len, "\\\"");
        else if (ch == '\\')
            app(buf, cap, len, "\\\\");
        else if (ch < 0x20 || ch == 0x7f)
            app(buf, cap, len, "\\x%02x", ch);
        else
            app(buf, cap, len, "%c", ch);
    }
    if (quote)
        app(buf, cap, len, "\"");
}

static void app_scalar(char *buf, size_t cap, size_t *len, const nbi_kv *kv)
{
    if (kv->type == NB_GGUF_BOOL)
        app(buf, cap, len, "%s", kv->v.u ? "true" : "false");
    else if (kv->type == NB_GGUF_FLOAT32 || kv->type == NB_GGUF_FLOAT64)
        app(buf, cap, len, "%g", kv->v.f);
    else if (is_signed(kv->type))
        app(buf, cap, len, "%" PRId64, kv->v.i);
    else
        app(buf, cap, len, "%" PRIu64, kv->v.u);
}

size_t nb_gguf_format_value(const nb_gguf *g, int64_t i, char *buf, size_t cap, int max_items)
{
    size_t len = 0;
    if (cap)
        buf[0] = 0;
    if (i < 0 || i >= g->n_kv)
        return 0;
    const nbi_kv *kv = &g->kv[i];
    if (kv->type == NB_GGUF_STRING) {
        app_str(buf, cap, &len, (const char *)kv->data, kv->n, 1);
    } else if (kv->type == NB_GGUF_ARRAY) {
        app(buf, cap, &len, "[");
        const uint8_t *p = kv->data;
        uint64_t shown = max_items < 0 ? kv->n : NBI_MIN(kv->n, (uint64_t)max_items);
        for (uint64_t k = 0; k < shown; k++) {
            if (k)
                app(buf, cap, &len, ", ");
            if (kv->arr_type == NB_GGUF_STRING) {
                const char *s;
                uint64_t n;
                p = nbi_gguf_next_str(p, &s, &n);
                app_str(buf, cap, &len, s, n, 1);
            } else {
                nbi_kv e = {.type = kv->arr_type};
                load_scalar(&e, p);
                p += scalar_size(kv->arr_type);
                app_scalar(buf, cap, &len, &e);
            }
        }
        if (shown < kv->n)
            app(buf, cap, &len, ", ... (%" PRIu64 " %s values)", kv->n,
                nbi_gguf_type_name(kv->arr_type));
        app(buf, cap, &len, "]");
    } else {
        app_scalar(buf, cap, &len, kv);
    }
    return len;
}

/* ------------------------------------------------------------------ typed */

static nb_status missing(const char *key, int *found, char *err, size_t errlen)
{
    if (found) {
        *found = 0;
        return NB_OK;
    }
    return nbi_err(err, errlen, NB_ERR_FORMAT, "required key '%s' is missing", key);
}

static nb_status wrong_type(const nbi_kv *kv, const char *want, char *err, size_t errlen)
{
    const char *have = nbi_gguf_type_name(kv->type);
    if (kv->type == NB_GGUF_ARRAY)
        return nbi_err(err, errlen, NB_ERR_FORMAT, "key '%s' has type array of %s, expected %s",
                       kv->key, nbi_gguf_type_name(kv->arr_type), want);
    return nbi_err(err, errlen, NB_ERR_FORMAT, "key '%s' has type %s, expected %s", kv->key,
                   have, want);
}

nb_status nbi_gguf_get_u32(const nb_gguf *g, const char *key, uint32_t *out, int *found,
                           char *err, size_t errlen)
{
    const nbi_kv *kv = nbi_gguf_kv(g, key);
    if (!kv)
        return missing(key, found, err, errlen);
    if (!is_integer(kv->type))
        return wrong_type(kv, "an integer", err, errlen);
    if ((is_signed(kv->type) && (kv->v.i < 0 || kv->v.i > (int64_t)UINT32_MAX)) ||
        (!is_signed(kv->type) && kv->v.u > UINT32_MAX))
        return nbi_err(err, errlen, NB_ERR_FORMAT, "key '%s' has out-of-range value %s%" PRIu64,
                       key, is_signed(kv->type) && kv->v.i < 0 ? "-" : "",
                       is_signed(kv->type) && kv->v.i < 0 ? (uint64_t)0 - kv->v.u : kv->v.u);
    *out = (uint32_t)kv->v.u;
    if (found)
        *found = 1;
    return NB_OK;
}

nb_status nbi_gguf_get_f32(const nb_gguf *g, const char *key, float *out, int *found,
                           char *err, size_t errlen)
{
    const nbi_kv *kv = nbi_gguf_kv(g, key);
    if (!kv)
        return missing(key, found, err, errlen);
    if (kv->type != NB_GGUF_FLOAT32 && kv->type != NB_GGUF_FLOAT64)
        return wrong_type(kv, "float32", err, errlen);
    *out = (float)kv->v.f;
    if (found)
        *found = 1;
    return NB_OK;
}

nb_status nbi_gguf_get_bool(const nb_gguf *g, const char *key, bool *out, int *found,
                            char *err, size_t errlen)
{
    const nbi_kv *kv = nbi_gguf_kv(g, key);
    if (!kv)
        return missing(key, found, err, errlen);
    if (kv->type != NB_GGUF_BOOL)
        return wrong_type(kv, "bool", err, errlen);
    *out = kv->v.u != 0;
    if (found)
        *found = 1;
    return NB_OK;
}

nb_status nbi_gguf_get_str(const nb_gguf *g, const char *key, const char **s, size_t *len,
                           int *found, char *err, size_t errlen)
{
    const nbi_kv *kv = nbi_gguf_kv(g, key);
    if (!kv)
        return missing(key, found, err, errlen);
    if (kv->type != NB_GGUF_STRING)
        return wrong_type(kv, "string", err, errlen);
    *s = (const char *)kv->data;
    *len = (size_t)kv->n;
    if (found)
        *found = 1;
    return NB_OK;
}

nb_status nbi_gguf_get_array(const nb_gguf *g, const char *key, nb_gguf_vtype elem,
                             const nbi_kv **out, int *found, char *err, size_t errlen)
{
    const nbi_kv *kv = nbi_gguf_kv(g, key);
    if (!kv)
        return missing(key, found, err, errlen);
    if (kv->type != NB_GGUF_ARRAY || kv->arr_type != elem) {
        char want[48];
        snprintf(want, sizeof want, "array of %s", nbi_gguf_type_name(elem));
        return wrong_type(kv, want, err, errlen);
    }
    *out = kv;
    if (found)
        *found = 1;
    return NB_OK;
}
