/*
 * util.c - small shared pieces: status strings, error formatting,
 * checked allocation, the monotonic clock, a string hash map and UTF-8
 * helpers.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "internal.h"

_Static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
               "GGUF data is little-endian and used in place");

const char *nb_strerror(nb_status status)
{
    switch (status) {
    case NB_OK: return "success";
    case NB_ERR_IO: return "input/output error";
    case NB_ERR_FORMAT: return "invalid or corrupt file";
    case NB_ERR_UNSUPPORTED: return "not supported";
    case NB_ERR_NOMEM: return "out of memory";
    case NB_ERR_INVALID: return "invalid argument";
    case NB_ERR_CONTEXT_FULL: return "context is full";
    case NB_ERR_CANCELLED: return "cancelled";
    }
    return "unknown error";
}

const char *nb_version(void)
{
    return NB_VERSION;
}

const char *nb_kernels_level(void)
{
    return nbi_kernels_get()->level;
}

nb_status nbi_err(char *err, size_t errlen, nb_status st, const char *fmt, ...)
{
    if (err && errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return st;
}

void *nbi_calloc(size_t n, size_t size)
{
    if (n == 0 || size == 0)
        return calloc(1, 1);
    return calloc(n, size); /* calloc checks n * size itself */
}

void *nbi_malloc_array(size_t n, size_t size)
{
    size_t total;
    if (__builtin_mul_overflow(n, size, &total))
        return NULL;
    return malloc(total ? total : 1);
}

double nbi_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec * 1e-6;
}

/* ------------------------------------------------------------------ map */

static uint32_t hash_bytes(const char *s, size_t n)
{
    uint32_t h = 2166136261u; /* FNV-1a */
    for (size_t i = 0; i < n; i++) {
        h ^= (unsigned char)s[i];
        h *= 16777619u;
    }
    return h;
}

nb_status nbi_strmap_init(nbi_strmap *m, uint32_t expected)
{
    memset(m, 0, sizeof *m);
    if (expected > (1u << 30))
        return NB_ERR_NOMEM;
    uint32_t cap = 16;
    while (cap < expected * 2u)
        cap <<= 1;
    m->slots = calloc(cap, sizeof *m->slots);
    m->cap_entries = expected ? expected : 1;
    m->keys = nbi_malloc_array(m->cap_entries, sizeof *m->keys);
    m->lens = nbi_malloc_array(m->cap_entries, sizeof *m->lens);
    m->vals = nbi_malloc_array(m->cap_entries, sizeof *m->vals);
    m->mask = cap - 1;
    if (!m->slots || !m->keys || !m->lens || !m->vals) {
        nbi_strmap_free(m);
        return NB_ERR_NOMEM;
    }
    return NB_OK;
}

void nbi_strmap_free(nbi_strmap *m)
{
    if (!m)
        return;
    free(m->slots);
    free(m->keys);
    free(m->lens);
    free(m->vals);
    memset(m, 0, sizeof *m);
}

static int strmap_grow(nbi_strmap *m)
{
    uint32_t ncap = m->cap_entries * 2;
    const char **k = realloc(m->keys, (size_t)ncap * sizeof *k);
    if (!k)
        return -1;
    m->keys = k;
    uint32_t *l = realloc(m->lens, (size_t)ncap * sizeof *l);
    if (!l)
        return -1;
    m->lens = l;
    int32_t *v = realloc(m->vals, (size_t)ncap * sizeof *v);
    if (!v)
        return -1;
    m->vals = v;
    m->cap_entries = ncap;
    /* rehash into a table twice the entry capacity */
    uint32_t nslots = (m->mask + 1) * 2;
    uint32_t *s = calloc(nslots, sizeof *s);
    if (!s)
        return -1;
    for (uint32_t i = 0; i < m->n; i++) {
        uint32_t h = hash_bytes(m->keys[i], m->lens[i]) & (nslots - 1);
        while (s[h])
            h = (h + 1) & (nslots - 1);
        s[h] = i + 1;
    }
    free(m->slots);
    m->slots = s;
    m->mask = nslots - 1;
    return 0;
}

int nbi_strmap_put(nbi_strmap *m, const char *key, size_t len, int32_t val, int32_t *existing)
{
    if (len > UINT32_MAX)
        return -1;
    uint32_t h = hash_bytes(key, len) & m->mask;
    while (m->slots[h]) {
        uint32_t e = m->slots[h] - 1;
        if (m->lens[e] == len && memcmp(m->keys[e], key, len) == 0) {
            if (existing)
                *existing = m->vals[e];
            return 0;
        }
        h = (h + 1) & m->mask;
    }
    if (m->n == m->cap_entries) {
        if (m->cap_entries >= (1u << 30) || strmap_grow(m) < 0)
            return -1;
        return nbi_strmap_put(m, key, len, val, existing);
    }
    m->keys[m->n] = key;
    m->lens[m->n] = (uint32_t)len;
    m->vals[m->n] = val;
    m->slots[h] = ++m->n;
    return 1;
}

int32_t nbi_strmap_get(const nbi_strmap *m, const char *key, size_t len)
{
    if (!m->slots)
        return -1;
    uint32_t h = hash_bytes(key, len) & m->mask;
    while (m->slots[h]) {
        uint32_t e = m->slots[h] - 1;
        if (m->lens[e] == len && memcmp(m->keys[e], key, len) == 0)
            return m->vals[e];
        h = (h + 1) & m->mask;
    }
    return -1;
}

/* ------------------------------------------------------------------ UTF-8 */

int nbi_utf8_len(unsigned char c)
{
    if (c < 0x80)
        return 1;
    if ((c & 0xe0) == 0xc0)
        return 2;
    if ((c & 0xf0) == 0xe0)
        return 3;
    if ((c & 0xf8) == 0xf0)
        return 4;
    return 1;
}

int nbi_utf8_valid_len(const unsigned char *s, size_t n)
{
    if (n == 0)
        return 0;
    unsigned char c = s[0];
    if (c < 0x80)
        return 1;
    int len;
    uint32_t cp;
    if (c >= 0xc2 && c <= 0xdf) {
        len = 2;
        cp = c & 0x1f;
    } else if ((c & 0xf0) == 0xe0) {
        len = 3;
        cp = c & 0x0f;
    } else if (c >= 0xf0 && c <= 0xf4) {
        len = 4;
        cp = c & 0x07;
    } else {
        return 0;
    }
    if ((size_t)len > n)
        return 0;
    for (int i = 1; i < len; i++) {
        if ((s[i] & 0xc0) != 0x80)
            return 0;
        cp = (cp << 6) | (s[i] & 0x3f);
    }
    if ((len == 3 && cp < 0x800) || (len == 4 && (cp < 0x10000 || cp > 0x10ffff)) ||
        (cp >= 0xd800 && cp <= 0xdfff))
        return 0;
    return len;
}
