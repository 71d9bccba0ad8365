/*
 * common.c - models from bytes and the generated vocabularies that the
 * fuzz targets share (see fuzz.h).
 */
#include "fuzz.h"

#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

int nbf_err_fd = 2;
const char *nbf_input;

/* A memfd holding the bytes, and its /proc path; -1 on failure. */
static int memfd_of(const void *data, size_t size, char *path, size_t cap)
{
    int fd = memfd_create("nbf", MFD_CLOEXEC);
    if (fd < 0)
        return -1;
    const uint8_t *p = data;
    size_t done = 0;
    while (done < size) {
        ssize_t w = write(fd, p + done, size - done);
        if (w <= 0) {
            close(fd);
            return -1;
        }
        done += (size_t)w;
    }
    snprintf(path, cap, "/proc/self/fd/%d", fd);
    return fd;
}

nb_model *nbf_model_from_bytes(const void *data, size_t size, int vocab_only, nb_status *st)
{
    char path[64], err[512];
    int fd = memfd_of(data, size, path, sizeof path);
    NBF_CHECK(fd >= 0, "memfd");
    nb_model_params p = nb_model_default_params();
    p.vocab_only = vocab_only;
    nb_model *m = NULL;
    *st = nb_model_open(path, &p, &m, err, sizeof err);
    close(fd); /* the mapping stays */
    NBF_CHECK((*st == NB_OK) == (m != NULL), "status %d", *st);
    NBF_CHECK(*st == NB_OK || (err[0] && memchr(err, 0, sizeof err)), "no error message");
    return m;
}

nb_lora *nbf_lora_from_bytes(const nb_model *m, const void *data, size_t size, nb_status *st)
{
    char path[64], err[512];
    int fd = memfd_of(data, size, path, sizeof path);
    NBF_CHECK(fd >= 0, "memfd");
    nb_lora *a = NULL;
    *st = nb_lora_open(m, path, &a, err, sizeof err);
    close(fd);
    NBF_CHECK((*st == NB_OK) == (a != NULL), "status %d", *st);
    NBF_CHECK(*st == NB_OK || (err[0] && memchr(err, 0, sizeof err)), "no error message");
    return a;
}

nb_model *nbf_model_from_builder(gguf_builder *b, int vocab_only)
{
    size_t len;
    uint8_t *img = gb_build(b, &len);
    gb_free(b);
    NBF_CHECK(img != NULL, "out of memory");
    nb_status st;
    nb_model *m = nbf_model_from_bytes(img, len, vocab_only, &st);
    free(img);
    NBF_CHECK(m != NULL, "the generated model was refused (%d)", st);
    return m;
}

size_t nbf_gpt2_char(unsigned char byte, char out[3])
{
    /* printable Latin-1 stands for itself; the other 68 bytes take the
     * code points from U+0100 on, in byte order */
    unsigned cp = byte;
    if (!((byte >= 0x21 && byte <= 0x7e) || (byte >= 0xa1 && byte <= 0xac) || byte >= 0xae)) {
        unsigned k = 0;
        for (unsigned b = 0; b < byte; b++)
            if (!((b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || b >= 0xae))
                k++;
        cp = 0x100 + k;
    }
    size_t n;
    if (cp < 0x80) {
        out[0] = (char)cp;
        n = 1;
    } else {
        out[0] = (char)(0xc0 | cp >> 6);
        out[1] = (char)(0x80 | (cp & 0x3f));
        n = 2;
    }
    out[n] = 0;
    return n;
}

nb_model *nbf_spm_model(void)
{
    static nb_model *m;
    if (!m) {
        gguf_builder *b = gb_new();
        NBF_CHECK(b != NULL, "out of memory");
        gb_kv_str(b, "general.architecture", "llama");
        NBF_CHECK(gb_llama_add_vocab(b) == 0, "out of memory");
        m = nbf_model_from_builder(b, 1);
    }
    return m;
}

/* Merged tokens of the BPE vocabulary, each with the merge that makes it
 * ("Ġ" is GPT-2's space). */
static const char *const bpe_merges[][2] = {
    {"Ġ t", "Ġt"},     {"h e", "he"},       {"Ġt he", "Ġthe"}, {"i n", "in"},
    {"Ġ a", "Ġa"},     {"e r", "er"},       {"o n", "on"},     {"Ġ s", "Ġs"},
    {"r e", "re"},     {"a t", "at"},       {"in g", "ing"},   {"Ġ w", "Ġw"},
    {"Ġ Ġ", "ĠĠ"},     {"ĠĠ ĠĠ", "ĠĠĠĠ"}, {"1 2", "12"},     {"12 3", "123"},
    {"Ċ Ċ", "ĊĊ"},     {"Ã ©", "Ã©"},       {"Ġa n", "Ġan"},   {"Ġan d", "Ġand"},
};

nb_model *nbf_bpe_model(const char *pre)
{
    enum { N_CACHE = 8 };
    static struct {
        char pre[32];
        nb_model *m;
    } cache[N_CACHE];
    int i;
    for (i = 0; i < N_CACHE && cache[i].m; i++)
        if (!strcmp(cache[i].pre, pre))
            return cache[i].m;
    NBF_CHECK(i < N_CACHE && strlen(pre) < sizeof cache[i].pre, "too many BPE vocabularies");
    enum { N_MERGE = sizeof bpe_merges / sizeof bpe_merges[0], N = 256 + N_MERGE + 1 };
    static char chars[256][3];
    const char *toks[N], *merges[N_MERGE];
    int32_t types[N];
    for (int b = 0; b < 256; b++) {
        nbf_gpt2_char((unsigned char)b, chars[b]);
        toks[b] = chars[b];
        types[b] = 1;
    }
    for (int k = 0; k < N_MERGE; k++) {
        merges[k] = bpe_merges[k][0];
        toks[256 + k] = bpe_merges[k][1];
        types[256 + k] = 1;
    }
    toks[N - 1] = "<|endoftext|>";
    types[N - 1] = 3; /* control */
    gguf_builder *b = gb_new();
    NBF_CHECK(b != NULL, "out of memory");
    gb_kv_str(b, "general.architecture", "llama");
    gb_kv_str(b, "tokenizer.ggml.model", "gpt2");
    gb_kv_str(b, "tokenizer.ggml.pre", pre);
    gb_kv_arr_str(b, "tokenizer.ggml.tokens", toks, N);
    gb_kv_arr(b, "tokenizer.ggml.token_type", GB_INT32, types, N);
    gb_kv_arr_str(b, "tokenizer.ggml.merges", merges, N_MERGE);
    gb_kv_u32(b, "tokenizer.ggml.bos_token_id", N - 1);
    gb_kv_u32(b, "tokenizer.ggml.eos_token_id", N - 1);
    NBF_CHECK(!b->oom, "out of memory");
    snprintf(cache[i].pre, sizeof cache[i].pre, "%s", pre);
    cache[i].m = nbf_model_from_builder(b, 1);
    return cache[i].m;
}

int nbf_utf8_valid(const uint8_t *s, size_t n)
{
    /* written from RFC 3629's table, independently of the library's */
    size_t i = 0;
    while (i < n) {
        uint8_t c = s[i];
        size_t len;
        uint8_t lo = 0x80, hi = 0xbf;
        if (c < 0x80) {
            i++;
            continue;
        } else if (c >= 0xc2 && c <= 0xdf) {
            len = 2;
        } else if (c >= 0xe0 && c <= 0xef) {
            len = 3;
            if (c == 0xe0)
                lo = 0xa0;
            if (c == 0xed)
                hi = 0x9f;
        } else if (c >= 0xf0 && c <= 0xf4) {
            len = 4;
            if (c == 0xf0)
                lo = 0x90;
            if (c == 0xf4)
                hi = 0x8f;
        } else {
            return 0;
        }
        if (n - i < len || s[i + 1] < lo || s[i + 1] > hi)
            return 0;
        for (size_t k = 2; k < len; k++)
            if ((s[i + k] & 0xc0) != 0x80)
                return 0;
        i += len;
    }
    return 1;
}

char *nbf_detok_all(const nb_model *m, const nb_token *t, int64_t n, int flags, size_t *len)
{
    enum { STEP = 3 * NB_MAX_PIECE + 4 };
    static char piece[STEP];
    size_t cap = 4096, used = 0;
    char *out = malloc(cap);
    NBF_CHECK(out != NULL, "out of memory");
    nb_detok d;
    nb_detok_init(&d, flags);
    for (int64_t i = 0; i <= n; i++) {
        size_t k = i < n ? nb_detok_push(&d, m, t[i], piece, sizeof piece)
                         : nb_detok_flush(&d, piece, sizeof piece);
        NBF_CHECK(k < STEP && piece[k] == 0, "piece of %zu bytes", k);
        if (used + k + 1 > cap) {
            cap = 2 * (used + k + 1);
            out = realloc(out, cap);
            NBF_CHECK(out != NULL, "out of memory");
        }
        memcpy(out + used, piece, k);
        used += k;
    }
    out[used] = 0;
    *len = used;
    return out;
}

char *nbf_tokenize_detok(const nb_model *m, const char *text, size_t len, int flags,
                         size_t *out_len)
{
    int64_t n = nb_tokenize(m, text, len, NULL, 0, flags);
    NBF_CHECK(n >= 0, "tokenize failed: %lld", (long long)n);
    nb_token *t = malloc((size_t)(n ? n : 1) * sizeof *t);
    NBF_CHECK(t != NULL, "out of memory");
    NBF_CHECK(nb_tokenize(m, text, len, t, n, flags) == n, "a second count differs");
    int n_vocab = nb_model_n_vocab(m);
    for (int64_t i = 0; i < n; i++)
        NBF_CHECK(t[i] >= 0 && t[i] < n_vocab, "token %d", t[i]);
    char *out = nbf_detok_all(m, t, n, 0, out_len);
    NBF_CHECK(nbf_utf8_valid((const uint8_t *)out, *out_len), "detokenized text is not UTF-8");
    free(t);
    return out;
}
