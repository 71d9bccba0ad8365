/*
 * fuzz_gguf.c - the GGUF parser on its own: header, metadata and tensor
 * infos (nb_gguf_open_memory validates every tensor's byte range but never
 * reads tensor data), then every accessor `nibble info -a` uses.
 *
 * Properties: a refusal comes with a message; an accepted file's keys are
 * found again at their index (duplicates are refused), and a tensor's
 * bytes lie inside the input.
 */
#include "fuzz.h"

#include <string.h>

NBF_TARGET(gguf)
{
    nb_gguf *g = NULL;
    char err[512] = "";
    nb_status st = nb_gguf_open_memory(data, size, &g, err, sizeof err);
    NBF_CHECK((st == NB_OK) == (g != NULL), "status %d", st);
    if (st) {
        NBF_CHECK(err[0] != 0, "no message for status %d", st);
        return 0;
    }
    char buf[256];
    int64_t n_kv = nb_gguf_n_kv(g), n_t = nb_gguf_n_tensors(g);
    NBF_CHECK(n_kv >= 0 && n_t >= 0, "counts %lld %lld", (long long)n_kv, (long long)n_t);
    (void)nb_gguf_version(g);
    for (int64_t i = 0; i < n_kv; i++) {
        const char *key = nb_gguf_key(g, i);
        NBF_CHECK(key != NULL, "key %lld", (long long)i);
        NBF_CHECK(nb_gguf_find(g, key) == i, "key '%s' not found at %lld", key, (long long)i);
        (void)nb_gguf_kv_type(g, i);
        size_t want = nb_gguf_format_value(g, i, buf, sizeof buf, 8);
        NBF_CHECK(strlen(buf) == (want < sizeof buf ? want : sizeof buf - 1),
                  "format_value wrote %zu of %zu", strlen(buf), want);
        (void)nb_gguf_format_value(g, i, NULL, 0, 0);
    }
    for (int64_t i = 0; i < n_t; i++) {
        const char *name = nb_gguf_tensor_name(g, i);
        NBF_CHECK(name != NULL, "tensor %lld", (long long)i);
        (void)nb_gguf_tensor_type(g, i);
        int64_t ne[4];
        nb_gguf_tensor_shape(g, i, ne);
        for (int d = 0; d < 4; d++)
            NBF_CHECK(ne[d] >= 0, "dimension %d of %s is %lld", d, name, (long long)ne[d]);
        uint64_t nb = nb_gguf_tensor_nbytes(g, i);
        NBF_CHECK(nb <= size, "%s has %llu bytes in a %zu-byte file", name,
                  (unsigned long long)nb, size);
    }
    nb_gguf_close(g);
    return 0;
}
