/*
 * gguf_write.c - writing GGUF v3 files (for `nibble synth` and
 * `nibble quantize`).
 *
 * Metadata is serialised into memory as it is added; tensors are declared
 * up front (name, type, shape) and their bytes are produced one tensor at a
 * time by a caller's callback while the file is written, so a model never
 * has to fit in memory.  The file is written under a temporary name and
 * renamed into place only when complete: a failure (full disk, bad input)
 * never leaves a partial model under the final name.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "internal.h"

#define GW_ALIGNMENT 32

typedef struct gw_tensor {
    char *name;
    int type;
    int n_dims;
    int64_t ne[4];
    uint64_t nbytes, offset;
} gw_tensor;

struct nbi_gw {
    uint8_t *kv;          /* serialised metadata entries */
    size_t kv_len, kv_cap;
    uint64_t n_kv;
    gw_tensor *t;
    int64_t n_t, cap_t;
    nb_status failed;     /* sticky allocation failure */
};

nb_status nbi_gw_new(nbi_gw **out)
{
    *out = calloc(1, sizeof **out);
    return *out ? NB_OK : NB_ERR_NOMEM;
}

void nbi_gw_free(nbi_gw *w)
{
    if (!w)
        return;
    for (int64_t i = 0; i < w->n_t; i++)
        free(w->t[i].name);
    free(w->t);
    free(w->kv);
    free(w);
}

static void put(nbi_gw *w, const void *p, size_t n)
{
    if (w->failed)
        return;
    if (w->kv_len + n > w->kv_cap) {
        size_t cap = w->kv_cap ? w->kv_cap : 4096;
        while (cap < w->kv_len + n)
            cap *= 2;
        uint8_t *nk = realloc(w->kv, cap);
        if (!nk) {
            w->failed = NB_ERR_NOMEM;
            return;
        }
        w->kv = nk;
        w->kv_cap = cap;
    }
    memcpy(w->kv + w->kv_len, p, n);
    w->kv_len += n;
}

static void put_str(nbi_gw *w, const char *s, size_t len)
{
    uint64_t n = len;
    put(w, &n, 8);
    put(w, s, len);
}

static void put_key(nbi_gw *w, const char *key, nb_gguf_vtype type)
{
    uint32_t t = (uint32_t)type;
    put_str(w, key, strlen(key));
    put(w, &t, 4);
    w->n_kv++;
}

nb_status nbi_gw_str(nbi_gw *w, const char *key, const char *s)
{
    put_key(w, key, NB_GGUF_STRING);
    put_str(w, s, strlen(s));
    return w->failed;
}

nb_status nbi_gw_u32(nbi_gw *w, const char *key, uint32_t v)
{
    put_key(w, key, NB_GGUF_UINT32);
    put(w, &v, 4);
    return w->failed;
}

nb_status nbi_gw_f32(nbi_gw *w, const char *key, float v)
{
    put_key(w, key, NB_GGUF_FLOAT32);
    put(w, &v, 4);
    return w->failed;
}

nb_status nbi_gw_bool(nbi_gw *w, const char *key, bool v)
{
    uint8_t b = v;
    put_key(w, key, NB_GGUF_BOOL);
    put(w, &b, 1);
    return w->failed;
}

nb_status nbi_gw_arr(nbi_gw *w, const char *key, nb_gguf_vtype elem, const void *data,
                     uint64_t n)
{
    size_t es = elem == NB_GGUF_FLOAT32 || elem == NB_GGUF_INT32 || elem == NB_GGUF_UINT32 ? 4 : 0;
    if (!es)
        return NB_ERR_INVALID;
    uint32_t et = (uint32_t)elem;
    put_key(w, key, NB_GGUF_ARRAY);
    put(w, &et, 4);
    put(w, &n, 8);
    put(w, data, (size_t)n * es);
    return w->failed;
}

nb_status nbi_gw_arr_str(nbi_gw *w, const char *key, const char *const *s, const uint32_t *len,
                         uint64_t n)
{
    uint32_t et = NB_GGUF_STRING;
    put_key(w, key, NB_GGUF_ARRAY);
    put(w, &et, 4);
    put(w, &n, 8);
    for (uint64_t i = 0; i < n; i++)
        put_str(w, s[i], len ? len[i] : strlen(s[i]));
    return w->failed;
}

/* Bytes of a validated value's payload, as stored in the source file. */
static size_t payload_size(const nbi_kv *kv)
{
    static const uint8_t scalar[] = {1, 1, 2, 2, 4, 4, 4, 1, 0, 0, 8, 8, 8};
    if (kv->type == NB_GGUF_STRING)
        return (size_t)kv->n;
    if (kv->type != NB_GGUF_ARRAY)
        return scalar[kv->type];
    if (kv->arr_type != NB_GGUF_STRING)
        return (size_t)kv->n * scalar[kv->arr_type];
    const uint8_t *p = kv->data;
    for (uint64_t i = 0; i < kv->n; i++) {
        const char *s;
        uint64_t len;
        p = nbi_gguf_next_str(p, &s, &len);
    }
    return (size_t)(p - kv->data);
}

nb_status nbi_gw_copy(nbi_gw *w, const nb_gguf *src, const char *key)
{
    const nbi_kv *kv = nbi_gguf_kv(src, key);
    if (!kv)
        return NB_ERR_INVALID;
    put_key(w, key, kv->type);
    if (kv->type == NB_GGUF_STRING) {
        put_str(w, (const char *)kv->data, (size_t)kv->n);
    } else if (kv->type == NB_GGUF_ARRAY) {
        uint32_t et = (uint32_t)kv->arr_type;
        put(w, &et, 4);
        put(w, &kv->n, 8);
        put(w, kv->data, payload_size(kv));
    } else {
        put(w, kv->data, payload_size(kv));
    }
    return w->failed;
}

nb_status nbi_gw_tensor(nbi_gw *w, const char *name, int type, int n_dims, const int64_t ne[4])
{
    if (n_dims < 1 || n_dims > 4 || strlen(name) > 256)
        return NB_ERR_INVALID;
    int64_t full[4] = {1, 1, 1, 1};
    for (int d = 0; d < n_dims; d++)
        full[d] = ne[d];
    size_t row = nbi_row_size(type, full[0]);
    uint64_t nbytes = row;
    if (!row || !nbi_mul_u64(nbytes, (uint64_t)full[1], &nbytes) ||
        !nbi_mul_u64(nbytes, (uint64_t)full[2], &nbytes) ||
        !nbi_mul_u64(nbytes, (uint64_t)full[3], &nbytes))
        return NB_ERR_INVALID;
    if (w->n_t == w->cap_t) {
        int64_t cap = w->cap_t ? w->cap_t * 2 : 64;
        gw_tensor *nt = realloc(w->t, (size_t)cap * sizeof *nt);
        if (!nt)
            return NB_ERR_NOMEM;
        w->t = nt;
        w->cap_t = cap;
    }
    gw_tensor *t = &w->t[w->n_t];
    if (!(t->name = strdup(name)))
        return NB_ERR_NOMEM;
    t->type = type;
    t->n_dims = n_dims;
    memcpy(t->ne, full, sizeof full);
    t->nbytes = nbytes;
    w->n_t++;
    return NB_OK;
}

static int write_all(int fd, const void *p, size_t n)
{
    const char *c = p;
    while (n) {
        ssize_t r = write(fd, c, n);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return -1;
        c += r;
        n -= (size_t)r;
    }
    return 0;
}

static const uint8_t zeros[GW_ALIGNMENT];

nb_status nbi_gw_write(nbi_gw *w, const char *path, nbi_gw_fill_fn fill, void *ctx, char *err,
                       size_t errlen)
{
    if (w->failed)
        return nbi_err(err, errlen, w->failed, "out of memory building the metadata");
    /* Lay out the data section. */
    uint64_t off = 0;
    size_t max_bytes = 0;
    for (int64_t i = 0; i < w->n_t; i++) {
        w->t[i].offset = off;
        off += (w->t[i].nbytes + GW_ALIGNMENT - 1) / GW_ALIGNMENT * GW_ALIGNMENT;
        if (w->t[i].nbytes > max_bytes)
            max_bytes = (size_t)w->t[i].nbytes;
    }
    size_t tmp_len = strlen(path) + 16;
    char *tmp = malloc(tmp_len);
    void *buf = malloc(max_bytes ? max_bytes : 1);
    if (!tmp || !buf) {
        free(tmp);
        free(buf);
        return nbi_err(err, errlen, NB_ERR_NOMEM, "out of memory for a %zu-byte tensor", max_bytes);
    }
    snprintf(tmp, tmp_len, "%s.tmpXXXXXX", path);
    int fd = mkstemp(tmp);
    if (fd < 0) {
        int e = errno;
        free(tmp);
        free(buf);
        return nbi_err(err, errlen, NB_ERR_IO, "cannot create %s: %s", path, strerror(e));
    }
    nb_status st = NB_OK;
    int e = 0;
    /* mkstemp makes the file private; a model is an ordinary file */
    mode_t mask = umask(0);
    umask(mask);
    if (fchmod(fd, 0666 & ~mask) != 0)
        goto io_error;
    /* header and metadata */
    uint32_t version = 3;
    uint64_t n_t = (uint64_t)w->n_t;
    if (write_all(fd, "GGUF", 4) || write_all(fd, &version, 4) || write_all(fd, &n_t, 8) ||
        write_all(fd, &w->n_kv, 8) || write_all(fd, w->kv, w->kv_len))
        goto io_error;
    uint64_t pos = 24 + w->kv_len;
    for (int64_t i = 0; i < w->n_t; i++) {
        const gw_tensor *t = &w->t[i];
        uint64_t nl = strlen(t->name);
        uint32_t nd = (uint32_t)t->n_dims, type = (uint32_t)t->type;
        if (write_all(fd, &nl, 8) || write_all(fd, t->name, nl) || write_all(fd, &nd, 4))
            goto io_error;
        for (int d = 0; d < t->n_dims; d++)
            if (write_all(fd, &t->ne[d], 8))
                goto io_error;
        if (write_all(fd, &type, 4) || write_all(fd, &t->offset, 8))
            goto io_error;
        pos += 8 + nl + 4 + 8 * (uint64_t)t->n_dims + 4 + 8;
    }
    if (write_all(fd, zeros, (size_t)((GW_ALIGNMENT - pos % GW_ALIGNMENT) % GW_ALIGNMENT)))
        goto io_error;
    /* tensor data, one tensor in memory at a time */
    for (int64_t i = 0; i < w->n_t; i++) {
        const gw_tensor *t = &w->t[i];
        if ((st = fill(ctx, i, buf, (size_t)t->nbytes, err, errlen)))
            goto fail;
        size_t pad = (size_t)((GW_ALIGNMENT - t->nbytes % GW_ALIGNMENT) % GW_ALIGNMENT);
        if (write_all(fd, buf, (size_t)t->nbytes) || write_all(fd, zeros, pad))
            goto io_error;
    }
    if (fsync(fd) != 0 || close(fd) != 0) {
        fd = -1;
        goto io_error;
    }
    fd = -1;
    if (rename(tmp, path) != 0)
        goto io_error;
    free(tmp);
    free(buf);
    return NB_OK;
io_error:
    e = errno;
    st = nbi_err(err, errlen, NB_ERR_IO, "cannot write %s: %s", path, strerror(e ? e : EIO));
fail:
    if (fd >= 0)
        close(fd);
    unlink(tmp);
    free(tmp);
    free(buf);
    return st;
}
