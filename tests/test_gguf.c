/*
 * test_gguf.c - hostile GGUF files against the GGUF and model loaders.
 *
 * Every image starts as gguf_builder's valid tiny llama model and breaks
 * one thing.  Each corruption must give a non-OK status, a NULL handle and
 * a NUL-terminated message naming the problem, through every entry point
 * (nb_gguf_open_memory, nb_gguf_open, nb_model_open); nothing may crash or
 * attempt a giant allocation (the suite also runs under ASan and UBSan,
 * where an unchecked multi-terabyte malloc aborts).
 *
 * Checks inside a test are soft: each failing case is printed and the test
 * fails once at its end, so a single run lists every loader bug.
 */
#include "testutil.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "gguf_builder.h"
#include "nibble.h"

#define ERRLEN 512

/* Accepted wording, '|'-separated, matched case-insensitively: loose on
 * phrasing, strict on saying what went wrong. */
#define W_TRUNC                                                                      \
    "truncat|end of file|eof|end of data|past the end|beyond|exceed|too small|short|" \
    "empty|outside|out of range|overflow|too large|too big|too long|incomplete|"      \
    "remain|left in the file|cannot fit|can hold"
#define W_DATA W_TRUNC "|offset|tensor|data"
#define W_COUNT W_TRUNC "|count|many|tensor|kv|key|metadata|type"
#define W_MAGIC "magic|not a gguf|not gguf"

/* ------------------------------------------------------------------ soft checks */

static int n_failed;

/* NIBBLE_TEST_VERBOSE=1 shows every failure (else the first 80 of a
 * test), 2 also every refusal message, for reviewing their wording. */
static int verbosity(void)
{
    static int v = -1;
    if (v < 0) {
        const char *e = getenv("NIBBLE_TEST_VERBOSE");
        v = e ? atoi(e) : 0;
    }
    return v;
}

static void soft_fail(const char *fmt, ...)
{
    int verbose = verbosity() > 0;
    char line[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    if (n_failed < 80 || verbose)
        print_error("FAIL %s\n", line);
    else if (n_failed == 80)
        print_error("FAIL (further failures not shown)\n");
    n_failed++;
}

#define CHECK(cond, ...)             \
    do {                             \
        if (!(cond))                 \
            soft_fail(__VA_ARGS__);  \
    } while (0)

static void end_test(void)
{
    int n = n_failed;
    n_failed = 0;
    if (n)
        fail_msg("%d check(s) failed (listed above)", n);
}

static int has_word(const char *msg, const char *alts)
{
    char w[128];
    for (const char *p = alts;;) {
        const char *e = strchr(p, '|');
        size_t n = e ? (size_t)(e - p) : strlen(p);
        if (n && n < sizeof w) {
            memcpy(w, p, n);
            w[n] = 0;
            if (strcasestr(msg, w))
                return 1;
        }
        if (!e)
            return 0;
        p = e + 1;
    }
}

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* ------------------------------------------------------------------ calling the loaders */

typedef struct res {
    nb_status st;
    double secs;
    char msg[ERRLEN];
} res;

/* Never dereferenced: shows whether a failing call cleared *out. */
static char sentinel_obj;
#define SENTINEL ((void *)&sentinel_obj)

/* The err buffer is filled with 'X' and passed one byte short, so a
 * message that is not NUL-terminated within errlen is seen and harmless. */
static void err_prep(char *err)
{
    memset(err, 'X', ERRLEN);
    err[ERRLEN - 1] = 0;
}

/* The contract of every fallible open, whatever the input. */
static void contract(const char *label, const char *api, res *r, int out_null, int out_untouched,
                     char *err)
{
    if (!memchr(err, 0, ERRLEN - 1)) {
        soft_fail("%s: %s left its message unterminated", label, api);
        err[ERRLEN - 2] = 0;
    }
    snprintf(r->msg, sizeof r->msg, "%s", err);
    if (r->st == NB_OK) {
        CHECK(!out_null && !out_untouched, "%s: %s returned NB_OK without a handle", label, api);
        return;
    }
    CHECK(out_null, "%s: %s failed (%d) but did not set *out to NULL", label, api, (int)r->st);
    CHECK(r->msg[0], "%s: %s failed (%d: %s) with an empty message", label, api, (int)r->st,
          nb_strerror(r->st));
}

/* Touch everything an accepted handle offers, so lazily trusted fields
 * are read under the sanitizers too. */
static void walk_gguf(const nb_gguf *g)
{
    char buf[48];
    int64_t nkv = nb_gguf_n_kv(g), nt = nb_gguf_n_tensors(g);
    for (int64_t i = 0; i < nkv && i < 100000; i++) {
        const char *k = nb_gguf_key(g, i);
        if (k)
            (void)nb_gguf_find(g, k);
        (void)nb_gguf_kv_type(g, i);
        nb_gguf_format_value(g, i, buf, sizeof buf, 3);
        nb_gguf_format_value(g, i, buf, 1, 0);
    }
    for (int64_t i = 0; i < nt && i < 100000; i++) {
        int64_t ne[4];
        const char *name = nb_gguf_tensor_name(g, i);
        if (name)
            (void)strlen(name);
        (void)nb_gguf_tensor_type(g, i);
        nb_gguf_tensor_shape(g, i, ne);
        (void)nb_gguf_tensor_nbytes(g, i);
    }
}

/* What a hostile vocabulary attacks once it is accepted: pieces stay
 * within the NB_MAX_PIECE bytes nb_detok relies on, ids stay in the
 * vocabulary. */
static void walk_model(const char *label, const nb_model *m)
{
    nb_model_info in;
    nb_model_get_info(m, &in);
    int nv = nb_model_n_vocab(m);
    CHECK(nv >= 0 && nv == in.n_vocab, "%s: n_vocab %d, info says %d", label, nv, in.n_vocab);
    char buf[300];
    for (int t = -1; t <= nv && t < 200000; t++) {
        int n = nb_token_piece(m, t, buf, sizeof buf, NB_PIECE_SPECIAL);
        if (t < 0 || t >= nv)
            CHECK(n == -NB_ERR_INVALID, "%s: piece of invalid token %d returned %d", label, t, n);
        else
            CHECK(n >= 0 && n <= NB_MAX_PIECE, "%s: piece of token %d is %d bytes", label, t, n);
        if (t >= 0 && t < nv)
            (void)nb_model_is_eog(m, t);
    }
    static const char text[] = "Hello world, the end.\xff\xfe \xe2\x96\x81 <s></s><0x41>";
    nb_token toks[256];
    int64_t n = nb_tokenize(m, text, sizeof text - 1, toks, 256,
                            NB_TOK_ADD_SPECIAL | NB_TOK_PARSE_SPECIAL);
    nb_detok d;
    nb_detok_init(&d, NB_PIECE_SPECIAL);
    for (int64_t i = 0; i < n && i < 256; i++) {
        CHECK(toks[i] >= 0 && toks[i] < nv, "%s: tokenize produced id %d of %d", label, toks[i],
              nv);
        nb_detok_push(&d, m, toks[i], buf, sizeof buf);
    }
    nb_detok_flush(&d, buf, sizeof buf);
}

/* img must be a heap block of exactly len bytes, so ASan sees overreads. */
static res try_mem(const char *label, const uint8_t *img, size_t len)
{
    res r;
    char err[ERRLEN];
    nb_gguf *g = SENTINEL;
    err_prep(err);
    double t0 = now();
    r.st = nb_gguf_open_memory(img, len, &g, err, ERRLEN - 1);
    r.secs = now() - t0;
    contract(label, "nb_gguf_open_memory", &r, g == NULL, g == SENTINEL, err);
    if (r.st == NB_OK && g && g != SENTINEL) {
        walk_gguf(g);
        nb_gguf_close(g);
    }
    return r;
}

/* The same on an exact-size copy of the first len bytes. */
static res try_mem_copy(const char *label, const uint8_t *img, size_t len)
{
    uint8_t *cut = malloc(len ? len : 1);
    assert_non_null(cut);
    memcpy(cut, img, len);
    res r = try_mem(label, cut, len);
    free(cut);
    return r;
}

static res try_gguf_path(const char *label, const char *path)
{
    res r;
    char err[ERRLEN];
    nb_gguf *g = SENTINEL;
    err_prep(err);
    double t0 = now();
    r.st = nb_gguf_open(path, &g, err, ERRLEN - 1);
    r.secs = now() - t0;
    contract(label, "nb_gguf_open", &r, g == NULL, g == SENTINEL, err);
    if (r.st == NB_OK && g && g != SENTINEL) {
        walk_gguf(g);
        nb_gguf_close(g);
    }
    return r;
}

/* keep: when given and the open succeeds, the caller gets the model. */
static res try_model_path(const char *label, const char *path, int vocab_only, int use_mmap,
                          nb_model **keep)
{
    res r;
    char err[ERRLEN];
    nb_model *m = SENTINEL;
    nb_model_params p = nb_model_default_params();
    p.vocab_only = vocab_only;
    p.use_mmap = use_mmap;
    err_prep(err);
    double t0 = now();
    r.st = nb_model_open(path, &p, &m, err, ERRLEN - 1);
    r.secs = now() - t0;
    contract(label, vocab_only ? "nb_model_open(vocab_only)" : "nb_model_open", &r, m == NULL,
             m == SENTINEL, err);
    if (keep)
        *keep = NULL;
    if (r.st == NB_OK && m && m != SENTINEL) {
        walk_model(label, m);
        if (keep)
            *keep = m;
        else
            nb_model_close(m);
    }
    return r;
}

static char *temp_image(const uint8_t *img, size_t len)
{
    char *path = nbt_write_temp(img, len, ".gguf");
    assert_non_null(path);
    return path;
}

static res try_file(const char *label, const uint8_t *img, size_t len)
{
    char *path = temp_image(img, len);
    res r = try_gguf_path(label, path);
    unlink(path);
    free(path);
    return r;
}

static res try_model(const char *label, const uint8_t *img, size_t len, int vocab_only,
                     nb_model **keep)
{
    char *path = temp_image(img, len);
    res r = try_model_path(label, path, vocab_only, 1, keep);
    unlink(path);
    free(path);
    return r;
}

/* ------------------------------------------------------------------ expectations */

enum {
    HUGE = 1 /* the file declares something enormous: no NB_ERR_NOMEM, and quick */
};

static void judge(const char *label, const char *api, const res *r, const char *words, int flags)
{
    if (r->st == NB_OK) {
        soft_fail("%s: %s accepted it", label, api);
        return;
    }
    if (verbosity() >= 2)
        print_message("refused %s: %s: [%d] %s\n", label, api, (int)r->st, r->msg);
    if (words && r->msg[0] && !has_word(r->msg, words))
        soft_fail("%s: %s message \"%s\" mentions none of \"%s\"", label, api, r->msg, words);
    if (flags & HUGE) {
        CHECK(r->st != NB_ERR_NOMEM,
              "%s: %s ran out of memory (\"%s\"): it allocated by an unchecked size", label, api,
              r->msg);
        CHECK(r->secs < 1.0, "%s: %s took %.2f s to refuse it", label, api, r->secs);
    }
}

/* A corrupt GGUF image: every entry point must refuse it and say why. */
static void expect_bad_gguf(const char *label, const uint8_t *img, size_t len, const char *words,
                            int flags)
{
    res r = try_mem(label, img, len);
    judge(label, "nb_gguf_open_memory", &r, words, flags);
    r = try_file(label, img, len);
    judge(label, "nb_gguf_open", &r, words, flags);
    r = try_model(label, img, len, 0, NULL);
    judge(label, "nb_model_open", &r, words, flags);
}

/* Valid GGUF whose content the model loader must refuse. */
static res expect_bad_model(const char *label, const uint8_t *img, size_t len, int vocab_only,
                            const char *words, int flags)
{
    res r = try_model(label, img, len, vocab_only, NULL);
    judge(label, vocab_only ? "nb_model_open(vocab_only)" : "nb_model_open", &r, words, flags);
    return r;
}

/* Anything goes as long as the contract holds (checked inside try_*). */
static void expect_consistent(const char *label, const uint8_t *img, size_t len)
{
    res r[4] = {try_mem(label, img, len), try_file(label, img, len),
                try_model(label, img, len, 0, NULL), try_model(label, img, len, 1, NULL)};
    if (verbosity() >= 2)
        for (int i = 0; i < 4; i++)
            print_message("either %s: %s: [%d] %s\n", label,
                          (const char *[]){"nb_gguf_open_memory", "nb_gguf_open", "nb_model_open",
                                           "nb_model_open(vocab_only)"}[i],
                          (int)r[i].st, r[i].st ? r[i].msg : "");
}

static gguf_builder *llama(const gb_llama_params *p)
{
    gguf_builder *b = gb_llama_new(p);
    assert_non_null(b);
    return b;
}

static uint8_t *build(gguf_builder *b, size_t *len)
{
    uint8_t *img = gb_build(b, len);
    assert_non_null(img);
    return img;
}

/* Build, refuse at every entry point, free. */
static void bad_gguf_b(const char *label, gguf_builder *b, const char *words, int flags)
{
    size_t len;
    uint8_t *img = build(b, &len);
    expect_bad_gguf(label, img, len, words, flags);
    free(img);
    gb_free(b);
}

static void bad_model_b(const char *label, gguf_builder *b, int vocab_only, const char *words,
                        int flags)
{
    size_t len;
    uint8_t *img = build(b, &len);
    expect_bad_model(label, img, len, vocab_only, words, flags);
    free(img);
    gb_free(b);
}

static void consistent_b(const char *label, gguf_builder *b)
{
    size_t len;
    uint8_t *img = build(b, &len);
    expect_consistent(label, img, len);
    free(img);
    gb_free(b);
}

static int tensor_index(const gguf_builder *b, const char *name)
{
    int i = gb_tensor_find(b, name);
    assert_true(i >= 0);
    return i;
}

static int kv_index(const gguf_builder *b, const char *key)
{
    int i = gb_kv_find(b, key);
    assert_true(i >= 0);
    return i;
}

/* Replace a tensor keeping its name, with a new shape/type and auto data. */
static void retensor(gguf_builder *b, const char *name, uint32_t n_dims, const uint64_t *dims,
                     uint32_t type, size_t nbytes)
{
    assert_int_equal(gb_tensor_remove(b, name), 1);
    assert_true(gb_tensor_add(b, name, n_dims, dims, type, NULL, nbytes) >= 0);
}

/* ------------------------------------------------------------------ 0. the valid model */

static void check_info(const char *label, const nb_model *m, size_t file_len,
                       const gguf_builder *b)
{
    nb_model_info in;
    memset(&in, 0, sizeof in);
    nb_model_get_info(m, &in);
    uint64_t n_params = 0, bytes = 0;
    for (size_t i = 0; i < b->n_tensor; i++) {
        uint64_t n = 1;
        for (uint32_t d = 0; d < b->tensor[i].n_dims; d++)
            n *= b->tensor[i].dims[d];
        n_params += n;
        bytes += b->tensor[i].data.len;
    }
    CHECK(in.n_vocab == GB_LLAMA_N_VOCAB, "%s: n_vocab %d", label, in.n_vocab);
    CHECK(in.n_embd == 32, "%s: n_embd %d", label, in.n_embd);
    CHECK(in.n_layer == 2, "%s: n_layer %d", label, in.n_layer);
    CHECK(in.n_head == 4, "%s: n_head %d", label, in.n_head);
    CHECK(in.n_head_kv == 2, "%s: n_head_kv %d", label, in.n_head_kv);
    CHECK(in.head_dim == 8, "%s: head_dim %d", label, in.head_dim);
    CHECK(in.n_ff == 64, "%s: n_ff %d", label, in.n_ff);
    CHECK(in.n_rot == 8, "%s: n_rot %d", label, in.n_rot);
    CHECK(in.n_ctx_train == 128, "%s: n_ctx_train %d", label, in.n_ctx_train);
    CHECK(fabsf(in.rope_freq_base - 10000.0f) < 1e-2f, "%s: rope_freq_base %g", label,
          (double)in.rope_freq_base);
    CHECK(fabsf(in.rms_eps - 1e-5f) < 1e-9f, "%s: rms_eps %g", label, (double)in.rms_eps);
    CHECK(in.bos == GB_LLAMA_BOS && in.eos == GB_LLAMA_EOS, "%s: bos %d eos %d", label, in.bos,
          in.eos);
    CHECK(in.add_bos == 1 && in.add_eos == 0, "%s: add_bos %d add_eos %d", label, in.add_bos,
          in.add_eos);
    CHECK(in.vocab_only == 0, "%s: vocab_only %d", label, in.vocab_only);
    CHECK(in.arch && strcmp(in.arch, "llama") == 0, "%s: arch %s", label,
          in.arch ? in.arch : "(null)");
    CHECK(in.tokenizer && strcmp(in.tokenizer, "llama") == 0, "%s: tokenizer %s", label,
          in.tokenizer ? in.tokenizer : "(null)");
    CHECK(in.name && strcmp(in.name, "nibble-test-tiny") == 0, "%s: name %s", label,
          in.name ? in.name : "(null)");
    CHECK(in.file_size == file_len, "%s: file_size %llu, want %zu", label,
          (unsigned long long)in.file_size, file_len);
    CHECK(in.n_params == n_params, "%s: n_params %llu, want %llu", label,
          (unsigned long long)in.n_params, (unsigned long long)n_params);
    CHECK(in.weight_bytes == bytes, "%s: weight_bytes %llu, want %llu", label,
          (unsigned long long)in.weight_bytes, (unsigned long long)bytes);
    /* K and V, F16, per layer: 2 * 2 layers * kv_dim 16 * 2 bytes */
    CHECK(in.kv_bytes_per_token == 128, "%s: kv_bytes_per_token %llu", label,
          (unsigned long long)in.kv_bytes_per_token);
    CHECK(nb_model_n_vocab(m) == GB_LLAMA_N_VOCAB, "%s: nb_model_n_vocab", label);
    CHECK(nb_model_bos(m) == GB_LLAMA_BOS && nb_model_eos(m) == GB_LLAMA_EOS, "%s: bos/eos",
          label);
    CHECK(nb_model_gguf(m) != NULL, "%s: nb_model_gguf is NULL", label);
}

static void test_valid_model(void **state)
{
    (void)state;
    gguf_builder *b = llama(NULL);
    size_t len;
    uint8_t *img = build(b, &len);

    res r = try_mem("valid", img, len);
    CHECK(r.st == NB_OK, "valid: nb_gguf_open_memory: %d %s", (int)r.st, r.msg);
    nb_gguf *g = NULL;
    char err[ERRLEN] = "";
    if (nb_gguf_open_memory(img, len, &g, err, sizeof err) == NB_OK) {
        char buf[256];
        CHECK(nb_gguf_version(g) == 3, "valid: version %u", nb_gguf_version(g));
        CHECK(nb_gguf_n_kv(g) == (int64_t)b->n_kv, "valid: n_kv %lld",
              (long long)nb_gguf_n_kv(g));
        CHECK(nb_gguf_n_tensors(g) == (int64_t)b->n_tensor, "valid: n_tensors %lld",
              (long long)nb_gguf_n_tensors(g));
        for (size_t i = 0; i < b->n_kv && (int64_t)i < nb_gguf_n_kv(g); i++) {
            const char *k = nb_gguf_key(g, (int64_t)i);
            CHECK(k && strcmp(k, b->kv[i].key) == 0, "valid: key %zu is %s", i, k ? k : "(null)");
            CHECK(nb_gguf_find(g, b->kv[i].key) == (int64_t)i, "valid: find %s", b->kv[i].key);
            CHECK((uint32_t)nb_gguf_kv_type(g, (int64_t)i) == b->kv[i].type, "valid: type of %s",
                  b->kv[i].key);
        }
        CHECK(nb_gguf_find(g, "no.such.key") == -1, "valid: find of a missing key");
        int64_t ka = nb_gguf_find(g, "general.architecture");
        int64_t kt = nb_gguf_find(g, "tokenizer.ggml.tokens");
        if (ka >= 0 && kt >= 0) {
            nb_gguf_format_value(g, ka, buf, sizeof buf, 4);
            CHECK(strstr(buf, "llama") != NULL, "valid: architecture formats as \"%s\"", buf);
            nb_gguf_format_value(g, kt, buf, sizeof buf, 3);
            CHECK(strstr(buf, "...") != NULL, "valid: tokens (3 items) format as \"%s\"", buf);
        }
        for (size_t i = 0; i < b->n_tensor && (int64_t)i < nb_gguf_n_tensors(g); i++) {
            const gb_tensor *t = &b->tensor[i];
            int64_t ne[4];
            const char *name = nb_gguf_tensor_name(g, (int64_t)i);
            CHECK(name && strcmp(name, t->name) == 0, "valid: tensor %zu is %s", i,
                  name ? name : "(null)");
            CHECK(nb_gguf_tensor_type(g, (int64_t)i) == (int)t->type, "valid: type of %s",
                  t->name);
            nb_gguf_tensor_shape(g, (int64_t)i, ne);
            for (int d = 0; d < 4; d++)
                CHECK(ne[d] == (int64_t)(d < (int)t->n_dims ? t->dims[d] : 1),
                      "valid: %s ne[%d] = %lld", t->name, d, (long long)ne[d]);
            CHECK(nb_gguf_tensor_nbytes(g, (int64_t)i) == t->data.len, "valid: nbytes of %s",
                  t->name);
        }
        nb_gguf_close(g);
    }

    r = try_file("valid", img, len);
    CHECK(r.st == NB_OK, "valid: nb_gguf_open: %d %s", (int)r.st, r.msg);

    for (int mmap_mode = 1; mmap_mode >= 0; mmap_mode--) {
        char *path = temp_image(img, len);
        nb_model *m = NULL;
        r = try_model_path("valid", path, 0, mmap_mode, &m);
        CHECK(r.st == NB_OK, "valid: nb_model_open (use_mmap %d): %d %s", mmap_mode, (int)r.st,
              r.msg);
        if (m) {
            check_info(mmap_mode ? "valid (mmap)" : "valid (read)", m, len, b);
            nb_model_close(m);
        }
        r = try_model_path("valid", path, 1, mmap_mode, &m);
        CHECK(r.st == NB_OK, "valid: vocab-only nb_model_open (use_mmap %d): %d %s", mmap_mode,
              (int)r.st, r.msg);
        if (m) {
            CHECK(nb_model_n_vocab(m) == GB_LLAMA_N_VOCAB, "valid: vocab-only n_vocab %d",
                  nb_model_n_vocab(m));
            nb_model_close(m);
        }
        unlink(path);
        free(path);
    }

    /* Writers such as llama.cpp pad the end of the file: trailing bytes are fine. */
    uint8_t *padded = malloc(len + 32);
    assert_non_null(padded);
    memcpy(padded, img, len);
    memset(padded + len, 0, 32);
    r = try_mem("trailing padding", padded, len + 32);
    CHECK(r.st == NB_OK, "trailing padding: nb_gguf_open_memory: %s", r.msg);
    r = try_model("trailing padding", padded, len + 32, 0, NULL);
    CHECK(r.st == NB_OK, "trailing padding: nb_model_open: %s", r.msg);
    free(padded);
    free(img);
    gb_free(b);

    /* GGUF v2 has the same layout for little-endian files. */
    b = llama(NULL);
    b->version = 2;
    img = build(b, &len);
    if (nb_gguf_open_memory(img, len, &g, err, sizeof err) == NB_OK) {
        CHECK(nb_gguf_version(g) == 2, "v2: version %u", nb_gguf_version(g));
        nb_gguf_close(g);
    } else {
        soft_fail("v2: nb_gguf_open_memory: %s", err);
    }
    r = try_model("v2", img, len, 0, NULL);
    CHECK(r.st == NB_OK, "v2: nb_model_open: %s", r.msg);
    free(img);
    gb_free(b);

    /* A larger power-of-two alignment moves the data section and offsets. */
    b = llama(NULL);
    b->align = 64;
    gb_kv_u32(b, "general.alignment", 64);
    img = build(b, &len);
    r = try_mem("alignment 64", img, len);
    CHECK(r.st == NB_OK, "alignment 64: nb_gguf_open_memory: %s", r.msg);
    r = try_model("alignment 64", img, len, 0, NULL);
    CHECK(r.st == NB_OK, "alignment 64: nb_model_open: %s", r.msg);
    free(img);
    gb_free(b);

    /* Without output.weight the embedding doubles as the output matrix. */
    b = llama(NULL);
    gb_tensor_remove(b, "output.weight");
    img = build(b, &len);
    nb_model *m = NULL;
    r = try_model("tied output", img, len, 0, &m);
    CHECK(r.st == NB_OK, "tied output: nb_model_open: %s", r.msg);
    if (m) {
        nb_model_info in;
        nb_model_get_info(m, &in);
        CHECK(in.tied_output == 1, "tied output: tied_output %d", in.tied_output);
        nb_model_close(m);
    }
    free(img);
    gb_free(b);

    /* Quantized and half weights, as far as this build supports them. */
    static const uint32_t wtypes[] = {GB_F16, GB_Q8_0};
    for (size_t i = 0; i < sizeof wtypes / sizeof wtypes[0]; i++) {
        gb_llama_params p = gb_llama_default_params();
        p.wtype = wtypes[i];
        b = llama(&p);
        img = build(b, &len);
        char label[64];
        snprintf(label, sizeof label, "%s weights", nb_type_name((int)wtypes[i]));
        r = try_mem(label, img, len);
        CHECK(r.st == NB_OK, "%s: nb_gguf_open_memory: %s", label, r.msg);
        r = try_model(label, img, len, 0, &m);
        if (nb_type_supported((int)wtypes[i]))
            CHECK(r.st == NB_OK, "%s: nb_model_open: %s", label, r.msg);
        if (m) {
            nb_model_info in;
            nb_model_get_info(m, &in);
            CHECK(in.file_type && strcmp(in.file_type, nb_type_name((int)wtypes[i])) == 0,
                  "%s: file_type %s", label, in.file_type ? in.file_type : "(null)");
            CHECK(in.type_tensors[wtypes[i]] == 16 && in.type_tensors[GB_F32] == 5,
                  "%s: type_tensors %d/%d", label, in.type_tensors[wtypes[i]],
                  in.type_tensors[GB_F32]);
            nb_model_close(m);
        }
        free(img);
        gb_free(b);
    }
    end_test();
}

/* Error buffers of any size, and none, are safe; paths that are no file fail as I/O. */
static void test_error_reporting(void **state)
{
    (void)state;
    gguf_builder *b = llama(NULL);
    memcpy(b->magic, "GGML", 4);
    size_t len;
    uint8_t *img = build(b, &len);
    nb_gguf *g = SENTINEL;
    CHECK(nb_gguf_open_memory(img, len, &g, NULL, 0) != NB_OK && g == NULL,
          "err NULL: not refused cleanly");
    char small[8];
    for (size_t cap = 1; cap <= sizeof small; cap += 3) {
        memset(small, 'X', sizeof small);
        g = SENTINEL;
        nb_status st = nb_gguf_open_memory(img, len, &g, small, cap);
        CHECK(st != NB_OK && g == NULL, "errlen %zu: not refused cleanly", cap);
        CHECK(memchr(small, 0, cap) != NULL, "errlen %zu: message not terminated within errlen",
              cap);
        for (size_t i = cap; i < sizeof small; i++)
            CHECK(small[i] == 'X', "errlen %zu: wrote past errlen", cap);
    }
    char *path = temp_image(img, len);
    nb_model *m = SENTINEL;
    nb_model_params p = nb_model_default_params();
    CHECK(nb_model_open(path, &p, &m, NULL, 0) != NB_OK && m == NULL,
          "nb_model_open with err NULL: not refused cleanly");
    unlink(path);
    free(path);
    free(img);
    gb_free(b);

    res r = try_gguf_path("missing file", "/nonexistent/nibble/none.gguf");
    CHECK(r.st == NB_ERR_IO, "missing file: nb_gguf_open status %d (%s), want NB_ERR_IO",
          (int)r.st, r.msg);
    r = try_model_path("missing file", "/nonexistent/nibble/none.gguf", 0, 1, NULL);
    CHECK(r.st == NB_ERR_IO, "missing file: nb_model_open status %d (%s), want NB_ERR_IO",
          (int)r.st, r.msg);
    r = try_gguf_path("directory", "/tmp");
    CHECK(r.st != NB_OK, "directory: nb_gguf_open accepted /tmp");
    r = try_model_path("directory", "/tmp", 0, 1, NULL);
    CHECK(r.st != NB_OK, "directory: nb_model_open accepted /tmp");
    end_test();
}

/* ------------------------------------------------------------------ 1. truncation */

static void test_truncation(void **state)
{
    (void)state;
    gguf_builder *b = llama(NULL);
    size_t len;
    uint8_t *img = build(b, &len);
    size_t meta_end = b->infos_end, data_start = b->data_start;
    char *path = temp_image(img, len);

    /* Descending, so one file can be cut shorter and shorter: a stride
     * through the data, then every length of the header, metadata, tensor
     * infos and padding. */
    size_t *cuts = malloc((len / 61 + data_start + 4) * sizeof *cuts), n = 0;
    assert_non_null(cuts);
    cuts[n++] = len - 1;
    for (size_t l = len - 2; l > data_start; l -= l - data_start > 61 ? 61 : l - data_start)
        cuts[n++] = l;
    for (size_t l = data_start + 1; l-- > 0;)
        cuts[n++] = l;

    double t0 = now();
    for (size_t i = 0; i < n; i++) {
        size_t l = cuts[i];
        char label[80];
        snprintf(label, sizeof label, "truncated to %zu of %zu bytes", l, len);
        /* under 4 bytes the magic itself is incomplete */
        const char *words = l < 4 ? W_TRUNC "|" W_MAGIC : l < meta_end ? W_TRUNC : W_DATA;
        res r = try_mem_copy(label, img, l);
        judge(label, "nb_gguf_open_memory", &r, words, 0);
        assert_int_equal(truncate(path, (off_t)l), 0);
        r = try_gguf_path(label, path);
        judge(label, "nb_gguf_open", &r, words, 0);
        if (i % 13 == 0) {
            r = try_model_path(label, path, i % 26 == 0, 1, NULL);
            judge(label, "nb_model_open", &r, words, 0);
        }
    }
    print_message("truncation: %zu lengths in %.2f s\n", n, now() - t0);
    unlink(path);
    free(path);
    free(cuts);
    free(img);
    gb_free(b);
    end_test();
}

/* ------------------------------------------------------------------ 2. magic and version */

static void test_magic_version(void **state)
{
    (void)state;
    static const char magics[][4] = {"GGML", "ggjt", "gguf", "FUGG", {0, 0, 0, 0}, "GGU\xc6"};
    for (size_t i = 0; i < sizeof magics / sizeof magics[0]; i++) {
        gguf_builder *b = llama(NULL);
        memcpy(b->magic, magics[i], 4);
        char label[64];
        snprintf(label, sizeof label, "magic %02x %02x %02x %02x", (uint8_t)magics[i][0],
                 (uint8_t)magics[i][1], (uint8_t)magics[i][2], (uint8_t)magics[i][3]);
        bad_gguf_b(label, b, W_MAGIC, 0);
    }

    /* Version 1: both a true v1 layout and a v3 layout that says 1. */
    for (int layout = 0; layout < 2; layout++) {
        gguf_builder *b = llama(NULL);
        size_t len;
        b->version = layout ? 3 : 1;
        uint8_t *img = build(b, &len);
        gb_put_u32(img, 4, 1);
        const char *label = layout ? "version 1 (v3 layout)" : "version 1";
        res rs[3] = {try_mem(label, img, len), try_file(label, img, len),
                     try_model(label, img, len, 0, NULL)};
        static const char *const apis[3] = {"nb_gguf_open_memory", "nb_gguf_open",
                                            "nb_model_open"};
        for (int k = 0; k < 3; k++) {
            judge(label, apis[k], &rs[k], "version|v1", 0);
            CHECK(rs[k].st == NB_OK || strchr(rs[k].msg, '1'),
                  "%s: %s message \"%s\" does not say which version", label, apis[k], rs[k].msg);
        }
        free(img);
        gb_free(b);
    }

    static const uint32_t versions[] = {0, 4, 0xffffffffu, 0x03000000u /* big-endian v3 */};
    for (size_t i = 0; i < sizeof versions / sizeof versions[0]; i++) {
        gguf_builder *b = llama(NULL);
        b->version = versions[i];
        char label[64];
        snprintf(label, sizeof label, "version %u", versions[i]);
        bad_gguf_b(label, b, "version|endian", 0);
    }
    end_test();
}

/* ------------------------------------------------------------------ 3. huge counts */

static void test_huge_counts(void **state)
{
    (void)state;
    for (int which = 0; which < 2; which++) {
        gguf_builder *probe = llama(NULL);
        uint64_t real = which ? probe->n_kv : probe->n_tensor;
        gb_free(probe);
        /* 2^32 + real: a count cut to 32 bits would look right. */
        const uint64_t counts[] = {1ull << 63, 1ull << 40, UINT64_MAX, (1ull << 32) + real,
                                   real + 1};
        for (size_t i = 0; i < sizeof counts / sizeof counts[0]; i++) {
            gguf_builder *b = llama(NULL);
            if (which) {
                b->hdr_n_kv_set = 1;
                b->hdr_n_kv = counts[i];
            } else {
                b->hdr_n_tensors_set = 1;
                b->hdr_n_tensors = counts[i];
            }
            char label[64];
            snprintf(label, sizeof label, "%s count %llu", which ? "kv" : "tensor",
                     (unsigned long long)counts[i]);
            bad_gguf_b(label, b, W_COUNT, HUGE);
        }
    }
    end_test();
}

/* ------------------------------------------------------------------ 4. lengths and arrays */

/* Patch one u64 of a fresh llama image and expect refusal. */
typedef size_t (*locate_fn)(const gguf_builder *b, const uint8_t *img);

static void patched_u64(const char *what, locate_fn at, const uint64_t *vals, size_t n_vals,
                        const char *words)
{
    for (size_t i = 0; i < n_vals; i++) {
        gguf_builder *b = llama(NULL);
        size_t len;
        uint8_t *img = build(b, &len);
        size_t pos = at(b, img);
        uint64_t v = vals[i] == 0 ? len - pos - 8 + 1 : vals[i]; /* 0: one byte past the end */
        gb_put_u64(img, pos, v);
        char label[128];
        snprintf(label, sizeof label, "%s = %llu", what, (unsigned long long)v);
        expect_bad_gguf(label, img, len, words, HUGE);
        free(img);
        gb_free(b);
    }
}

static size_t at_key_len(const gguf_builder *b, const uint8_t *img)
{
    (void)img;
    return b->kv[kv_index(b, "general.architecture")].at_key;
}

static size_t at_str_len(const gguf_builder *b, const uint8_t *img)
{
    (void)img;
    return b->kv[kv_index(b, "general.architecture")].at_value;
}

static size_t at_name_len(const gguf_builder *b, const uint8_t *img)
{
    (void)img;
    return b->tensor[0].at_name;
}

static size_t at_tokens_count(const gguf_builder *b, const uint8_t *img)
{
    (void)img;
    return b->kv[kv_index(b, "tokenizer.ggml.tokens")].at_value + 4;
}

static size_t at_scores_count(const gguf_builder *b, const uint8_t *img)
{
    (void)img;
    return b->kv[kv_index(b, "tokenizer.ggml.scores")].at_value + 4;
}

static size_t at_types_count(const gguf_builder *b, const uint8_t *img)
{
    (void)img;
    return b->kv[kv_index(b, "tokenizer.ggml.token_type")].at_value + 4;
}

/* The length field of the sixth token string. */
static size_t at_token5_len(const gguf_builder *b, const uint8_t *img)
{
    size_t pos = b->kv[kv_index(b, "tokenizer.ggml.tokens")].at_value + 12;
    for (int i = 0; i < 5; i++)
        pos += 8 + (size_t)gb_get_u64(img, pos);
    return pos;
}

static void test_lengths_and_arrays(void **state)
{
    (void)state;
    /* 0 stands for "one byte past the end of the file"; 2^32 + 5 would
     * pass as the real length 5 if cut to 32 bits; UINT64_MAX - 7 wraps
     * a pointer that adds the 8-byte length field. */
    static const uint64_t lens[] = {0, 1ull << 63, UINT64_MAX, UINT64_MAX - 7,
                                    (1ull << 32) + 5};
    const size_t nl = sizeof lens / sizeof lens[0];
    patched_u64("key length", at_key_len, lens, nl, W_TRUNC "|string|length|key");
    patched_u64("string value length", at_str_len, lens, nl,
                W_TRUNC "|string|length|architecture");
    patched_u64("tensor name length", at_name_len, lens, nl, W_TRUNC "|string|length|name|tensor");
    patched_u64("token string length", at_token5_len, lens, nl,
                W_TRUNC "|string|length|tokens");

    /* Array counts; for 4-byte elements 2^62 and 2^62 + 1 make count * 4
     * wrap to 0 and 4. */
    static const uint64_t counts[] = {0, 1ull << 62, UINT64_MAX, (1ull << 32) + 300,
                                      (1ull << 62) + 1, 1ull << 61};
    const size_t nc = sizeof counts / sizeof counts[0];
    patched_u64("tokens count", at_tokens_count, counts, nc, W_TRUNC "|array|count|tokens");
    patched_u64("scores count", at_scores_count, counts, nc, W_TRUNC "|array|count|scores");
    patched_u64("token_type count", at_types_count, counts, nc,
                W_TRUNC "|array|count|token_type");

    /* Value types nobody defined. */
    static const uint32_t bad_types[] = {13, 0xffffffffu, 0x80000008u};
    for (size_t i = 0; i < sizeof bad_types / sizeof bad_types[0]; i++) {
        gguf_builder *b = llama(NULL);
        b->kv[kv_index(b, "general.name")].type = bad_types[i];
        char label[64];
        snprintf(label, sizeof label, "value type %u", bad_types[i]);
        bad_gguf_b(label, b, "type", 0);

        b = llama(NULL);
        b->kv[kv_index(b, "tokenizer.ggml.scores")].elem_type = bad_types[i];
        snprintf(label, sizeof label, "array element type %u", bad_types[i]);
        bad_gguf_b(label, b, "type", 0);
    }
    end_test();
}

/* ------------------------------------------------------------------ 5. dimensions */

static void test_dimensions(void **state)
{
    (void)state;
    static const struct {
        const char *what;
        uint32_t n_dims;
        uint64_t dims[GB_MAX_DIMS];
    } cases[] = {
        {"[2^32, 2^32, 2^32]", 3, {1ull << 32, 1ull << 32, 1ull << 32}},
        {"[2^21 x 4]", 4, {1ull << 21, 1ull << 21, 1ull << 21, 1ull << 21}},
        {"[2^31, 2^31] (bytes wrap to 0)", 2, {1ull << 31, 1ull << 31}},
        {"[2^62, 4] (elements wrap to 0)", 2, {1ull << 62, 4}},
        {"[2^63, 1]", 2, {1ull << 63, 1}},
        {"[32, 2^63]", 2, {32, 1ull << 63}},
        {"[32, -1]", 2, {32, UINT64_MAX}},
        {"[-32, -32] (product 1024)", 2, {(uint64_t)-32, (uint64_t)-32}},
        {"[32, 0]", 2, {32, 0}},
        {"[0]", 1, {0}},
        {"[0, 32]", 2, {0, 32}},
        {"n_dims 0", 0, {0}},
        {"n_dims 5", 5, {32, 32, 1, 1, 1}},
        {"n_dims 2^32-1", 0xffffffffu, {32, 32, 1, 1, 1, 1, 1, 1}},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        gguf_builder *b = llama(NULL);
        gb_tensor *t = &b->tensor[tensor_index(b, "blk.0.attn_q.weight")];
        t->n_dims = cases[i].n_dims;
        memcpy(t->dims, cases[i].dims, sizeof t->dims);
        char label[96];
        snprintf(label, sizeof label, "blk.0.attn_q.weight %s", cases[i].what);
        bad_gguf_b(label, b,
                   "blk.0.attn_q.weight|dimension|dims|shape|overflow|n_dims|size|" W_TRUNC, HUGE);
    }
    end_test();
}

/* ------------------------------------------------------------------ 6. offsets */

static void test_offsets(void **state)
{
    (void)state;
    gguf_builder *probe = llama(NULL);
    size_t len;
    free(build(probe, &len));
    const gb_tensor *last = &probe->tensor[probe->n_tensor - 1];
    uint64_t size = last->data.len, pos = last->data_pos, ds = probe->data_start;
    uint64_t data_size = len - ds;
    const struct {
        const char *what;
        int first;
        uint64_t off;
    } cases[] = {
        {"starts past the end", 0, (data_size + 64) & ~31ull},
        {"ends past the end", 0, pos + 32},
        {"is 2^63", 0, 1ull << 63},
        {"is 2^64 - 32", 0, UINT64_MAX - 31},
        /* offset + size wraps to less than 32 */
        {"+ size wraps", 0, (0 - size) & ~31ull},
        /* data start + offset wraps to 0, the start of the file */
        {"+ data start wraps", 0, 0 - ds},
        {"is the file size", 1, ((uint64_t)len + 31) & ~31ull},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        gguf_builder *b = llama(NULL);
        gb_tensor *t = cases[i].first ? &b->tensor[0] : &b->tensor[b->n_tensor - 1];
        t->offset_set = 1;
        t->offset = cases[i].off;
        char label[128], words[256];
        snprintf(label, sizeof label, "offset of %s %s (%llu)", t->name, cases[i].what,
                 (unsigned long long)cases[i].off);
        snprintf(words, sizeof words, "%s|offset|" W_TRUNC, t->name);
        bad_gguf_b(label, b, words, HUGE);
    }
    gb_free(probe);
    end_test();
}

/* ------------------------------------------------------------------ 7. alignment */

static void test_alignment(void **state)
{
    (void)state;
    static const uint64_t skews[] = {1, 4, 16};
    for (size_t i = 0; i < sizeof skews / sizeof skews[0]; i++) {
        gguf_builder *b = llama(NULL);
        gb_tensor *t = &b->tensor[tensor_index(b, "token_embd.weight")];
        t->offset_set = 1;
        t->offset = skews[i]; /* token_embd's data is at 0 */
        char label[64];
        snprintf(label, sizeof label, "token_embd.weight offset %llu", (unsigned long long)skews[i]);
        bad_gguf_b(label, b, "align|token_embd.weight", 0);
    }

    static const uint32_t aligns[] = {0, 3, 48, 0x80000001u};
    for (size_t i = 0; i < sizeof aligns / sizeof aligns[0]; i++) {
        gguf_builder *b = llama(NULL);
        gb_kv_u32(b, "general.alignment", aligns[i]);
        char label[64];
        snprintf(label, sizeof label, "general.alignment %u", aligns[i]);
        bad_gguf_b(label, b, "align", 0);
    }

    /* A legal alignment that puts the data section far past the end. */
    gguf_builder *b = llama(NULL);
    gb_kv_u32(b, "general.alignment", 1u << 31);
    bad_gguf_b("general.alignment 2^31", b, "align|data|offset|tensor|" W_TRUNC, HUGE);

    b = llama(NULL);
    gb_kv_u64(b, "general.alignment", 32);
    bad_gguf_b("general.alignment as uint64", b, "align", 0);
    b = llama(NULL);
    gb_kv_i32(b, "general.alignment", 32);
    bad_gguf_b("general.alignment as int32", b, "align", 0);
    b = llama(NULL);
    gb_kv_str(b, "general.alignment", "32");
    bad_gguf_b("general.alignment as string", b, "align", 0);
    end_test();
}

/* ------------------------------------------------------------------ 8. duplicates */

static void test_duplicates(void **state)
{
    (void)state;
    gguf_builder *b = llama(NULL);
    uint64_t dim = 32;
    gb_tensor_add(b, "output_norm.weight", 1, &dim, GB_F32, NULL, GB_AUTO);
    bad_gguf_b("duplicate tensor output_norm.weight", b, "duplicate|output_norm.weight", 0);

    b = llama(NULL);
    gb_kv_u32(b, "llama.block_count", 2);
    bad_gguf_b("duplicate key llama.block_count", b, "duplicate|llama.block_count", 0);

    b = llama(NULL);
    gb_kv_u32(b, "general.architecture", 7);
    bad_gguf_b("duplicate key general.architecture (other type)", b,
               "duplicate|general.architecture", 0);
    end_test();
}

/* ------------------------------------------------------------------ 9. model content */

static void replace_u32(gguf_builder *b, const char *key, uint32_t v)
{
    assert_int_equal(gb_kv_remove(b, key), 1);
    gb_kv_u32(b, key, v);
}

static void test_model_content(void **state)
{
    (void)state;
    int8_t zeros8[GB_LLAMA_N_VOCAB] = {0};
    int32_t ids[GB_LLAMA_N_VOCAB];
    for (int i = 0; i < GB_LLAMA_N_VOCAB; i++)
        ids[i] = i;

    /* Keys of the wrong type, for the full model and the tokenizer alone. */
    for (int vo = 0; vo < 2; vo++) {
        gguf_builder *b = llama(NULL);
        gb_kv_remove(b, "tokenizer.ggml.scores");
        gb_kv_arr(b, "tokenizer.ggml.scores", GB_INT8, zeros8, GB_LLAMA_N_VOCAB);
        bad_model_b("tokenizer.ggml.scores as int8[]", b, vo, "scores", 0);

        b = llama(NULL);
        gb_kv_remove(b, "tokenizer.ggml.tokens");
        gb_kv_arr(b, "tokenizer.ggml.tokens", GB_INT32, ids, GB_LLAMA_N_VOCAB);
        bad_model_b("tokenizer.ggml.tokens as int32[]", b, vo, "tokens", 0);

        b = llama(NULL);
        gb_kv_remove(b, "tokenizer.ggml.scores");
        gb_kv_arr(b, "tokenizer.ggml.scores", GB_FLOAT32, ids, GB_LLAMA_N_VOCAB - 1);
        bad_model_b("299 scores for 300 tokens", b, vo, "scores", 0);

        b = llama(NULL);
        gb_kv_remove(b, "tokenizer.ggml.token_type");
        gb_kv_arr(b, "tokenizer.ggml.token_type", GB_INT32, ids, GB_LLAMA_N_VOCAB - 1);
        bad_model_b("299 token types for 300 tokens", b, vo, "token_type", 0);

        b = llama(NULL);
        replace_u32(b, "tokenizer.ggml.bos_token_id", 100000);
        bad_model_b("bos_token_id 100000", b, vo, "bos|100000", 0);

        b = llama(NULL);
        replace_u32(b, "tokenizer.ggml.eos_token_id", GB_LLAMA_N_VOCAB);
        bad_model_b("eos_token_id 300 (= n_vocab)", b, vo, "eos|300", 0);

        b = llama(NULL);
        replace_u32(b, "tokenizer.ggml.unknown_token_id", 1000);
        bad_model_b("unknown_token_id 1000", b, vo, "unknown|unk|1000", 0);

        b = llama(NULL);
        gb_kv_remove(b, "tokenizer.ggml.model");
        gb_kv_str(b, "tokenizer.ggml.model", "unknown-tok");
        bad_model_b("tokenizer.ggml.model unknown-tok", b, vo, "unknown-tok", 0);
    }

    gguf_builder *b = llama(NULL);
    gb_kv_remove(b, "llama.embedding_length");
    gb_kv_str(b, "llama.embedding_length", "32");
    bad_model_b("llama.embedding_length as string", b, 0, "embedding_length", 0);

    b = llama(NULL);
    gb_kv_remove(b, "general.architecture");
    gb_kv_u32(b, "general.architecture", 1);
    bad_model_b("general.architecture as uint32", b, 0, "architecture", 0);

    /* Refused because nibble does not implement it, so NB_ERR_UNSUPPORTED. */
    b = llama(NULL);
    gb_kv_remove(b, "general.architecture");
    gb_kv_str(b, "general.architecture", "gpt-j");
    {
        size_t len;
        uint8_t *img = build(b, &len);
        res r = expect_bad_model("architecture gpt-j", img, len, 0, "gpt-j", 0);
        CHECK(r.st == NB_ERR_UNSUPPORTED, "architecture gpt-j: status %d, want NB_ERR_UNSUPPORTED",
              (int)r.st);
        free(img);
        gb_free(b);
    }

    /* Missing keys and tensors the model cannot do without. */
    static const char *const need_keys[] = {"general.architecture", "llama.embedding_length",
                                            "llama.block_count", "llama.attention.head_count"};
    for (size_t i = 0; i < sizeof need_keys / sizeof need_keys[0]; i++) {
        b = llama(NULL);
        gb_kv_remove(b, need_keys[i]);
        char label[96];
        snprintf(label, sizeof label, "missing %s", need_keys[i]);
        bad_model_b(label, b, 0, strrchr(need_keys[i], '.') + 1, 0);
    }
    static const char *const need_tensors[] = {"blk.1.ffn_up.weight", "token_embd.weight",
                                               "output_norm.weight", "blk.0.attn_norm.weight"};
    for (size_t i = 0; i < sizeof need_tensors / sizeof need_tensors[0]; i++) {
        b = llama(NULL);
        gb_tensor_remove(b, need_tensors[i]);
        char label[96];
        snprintf(label, sizeof label, "missing %s", need_tensors[i]);
        bad_model_b(label, b, 0, need_tensors[i], 0);
    }

    /* Wrong shapes. */
    static const struct {
        const char *name;
        uint64_t ne0, ne1;
    } shapes[] = {
        {"blk.1.attn_q.weight", 32, 33},  {"blk.0.attn_k.weight", 32, 32},
        {"blk.0.ffn_down.weight", 32, 64}, {"token_embd.weight", 32, 301},
        {"output.weight", 32, 299},       {"blk.1.ffn_norm.weight", 16, 0},
    };
    for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++) {
        b = llama(NULL);
        uint64_t dims[2] = {shapes[i].ne0, shapes[i].ne1};
        retensor(b, shapes[i].name, shapes[i].ne1 ? 2 : 1, dims, GB_F32, GB_AUTO);
        char label[96];
        if (shapes[i].ne1)
            snprintf(label, sizeof label, "%s [%llu, %llu]", shapes[i].name,
                     (unsigned long long)shapes[i].ne0, (unsigned long long)shapes[i].ne1);
        else
            snprintf(label, sizeof label, "%s [%llu]", shapes[i].name,
                     (unsigned long long)shapes[i].ne0);
        bad_model_b(label, b, 0, shapes[i].name, 0);
    }

    /* Type id 99 has no size: the GGUF layer itself must refuse it. */
    b = llama(NULL);
    b->tensor[tensor_index(b, "blk.0.attn_q.weight")].type = 99;
    bad_gguf_b("blk.0.attn_q.weight type 99", b, "99|blk.0.attn_q.weight", 0);

    /* A row length that is not a whole number of blocks. */
    b = llama(NULL);
    {
        uint64_t dims[2] = {16, 64};
        retensor(b, "blk.0.attn_q.weight", 2, dims, GB_Q8_0, 16 * 64 / 32 * 34);
    }
    bad_gguf_b("blk.0.attn_q.weight Q8_0 [16, 64]", b, "blk.0.attn_q.weight|block|multiple", 0);

    /* IQ2_XXS is valid GGUF that nibble cannot compute; rows of 256 make
     * it well-formed. */
    {
        gb_llama_params p = gb_llama_default_params();
        p.dim = 256;
        p.n_ff = 256;
        p.n_layer = 1;
        b = llama(&p);
        uint64_t dims[2] = {256, 256};
        retensor(b, "blk.0.attn_q.weight", 2, dims, GB_IQ2_XXS, GB_AUTO);
        size_t len;
        uint8_t *img = build(b, &len);
        res r = try_mem("IQ2_XXS attn_q", img, len);
        CHECK(r.st == NB_OK, "IQ2_XXS attn_q: nb_gguf_open_memory refused valid GGUF: %s",
              r.msg);
        r = expect_bad_model("IQ2_XXS attn_q", img, len, 0, "IQ2_XXS|blk.0.attn_q.weight", 0);
        CHECK(r.st == NB_ERR_UNSUPPORTED, "IQ2_XXS attn_q: status %d, want NB_ERR_UNSUPPORTED",
              (int)r.st);
        free(img);
        gb_free(b);
    }

    /* Hyperparameters that would divide by zero, index out of bounds or
     * size per-layer arrays by a hostile number. */
    static const struct {
        const char *key;
        uint32_t v;
        const char *words;
    } hp[] = {
        {"llama.attention.head_count", 0, "head"},
        {"llama.attention.head_count", 3, "head|embedding_length"},
        {"llama.attention.head_count_kv", 0, "head"},
        {"llama.attention.head_count_kv", 3, "head"},
        {"llama.block_count", 3, "blk.2|block_count"},
        {"llama.block_count", 0xffffffffu, "block_count|blk."},
        {"llama.embedding_length", 0, "embedding_length|.weight"},
        {"llama.embedding_length", 64, "embedding_length|.weight"},
        {"llama.feed_forward_length", 65, "feed_forward_length|ffn"},
        {"llama.rope.dimension_count", 1000, "rope|dimension_count"},
    };
    for (size_t i = 0; i < sizeof hp / sizeof hp[0]; i++) {
        b = llama(NULL);
        replace_u32(b, hp[i].key, hp[i].v);
        char label[96];
        snprintf(label, sizeof label, "%s = %u", hp[i].key, hp[i].v);
        bad_model_b(label, b, 0, hp[i].words, HUGE);
    }
    end_test();
}

/* ------------------------------------------------------------------ 9a. architectures */

static gguf_builder *qwen2(void)
{
    gb_llama_params p = gb_llama_default_params();
    p.arch = "qwen2";
    p.attn_bias = 1;
    return llama(&p);
}

/* Build, open, and expect refusal with the given status and words. */
static void refused_b(const char *label, gguf_builder *b, nb_status want, const char *words)
{
    size_t len;
    uint8_t *img = build(b, &len);
    res r = expect_bad_model(label, img, len, 0, words, 0);
    CHECK(r.st == want, "%s: status %d, want %d (%s)", label, (int)r.st, (int)want, r.msg);
    free(img);
    gb_free(b);
}

static void accepted_b(const char *label, gguf_builder *b)
{
    size_t len;
    uint8_t *img = build(b, &len);
    res r = try_model(label, img, len, 0, NULL);
    CHECK(r.st == NB_OK, "%s: refused: %s", label, r.msg);
    free(img);
    gb_free(b);
}

static void test_architectures(void **state)
{
    (void)state;
    accepted_b("qwen2 with q/k/v biases", qwen2());
    {
        gb_llama_params p = gb_llama_default_params();
        p.attn_bias = 2;
        accepted_b("llama with q/k/v/output biases", llama(&p));
    }

    /* The biases qwen2 needs: missing, misshapen, of a type nibble lacks. */
    gguf_builder *b = qwen2();
    gb_tensor_remove(b, "blk.1.attn_k.bias");
    refused_b("qwen2 without blk.1.attn_k.bias", b, NB_ERR_FORMAT, "blk.1.attn_k.bias");
    b = qwen2();
    {
        uint64_t d[2] = {16, 0};
        retensor(b, "blk.0.attn_q.bias", 1, d, GB_F32, GB_AUTO);
    }
    refused_b("qwen2 attn_q.bias [16]", b, NB_ERR_FORMAT, "blk.0.attn_q.bias");
    b = qwen2();
    {
        uint64_t d[2] = {8, 2};
        retensor(b, "blk.1.attn_v.bias", 2, d, GB_F32, GB_AUTO);
    }
    refused_b("qwen2 attn_v.bias [8, 2]", b, NB_ERR_FORMAT, "blk.1.attn_v.bias");
    b = qwen2();
    {
        uint64_t d[2] = {16, 0};
        retensor(b, "blk.0.attn_k.bias", 1, d, 26 /* I32 */, GB_AUTO);
    }
    refused_b("qwen2 attn_k.bias I32", b, NB_ERR_UNSUPPORTED, "I32");
    /* a tensor qwen2 does not have would be silently ignored */
    b = qwen2();
    {
        uint64_t d = 32;
        gb_tensor_add(b, "blk.0.attn_output.bias", 1, &d, GB_F32, NULL, GB_AUTO);
    }
    refused_b("qwen2 with attn_output.bias", b, NB_ERR_UNSUPPORTED, "attn_output.bias");
    /* the hyperparameters are qwen2's keys, not llama's */
    b = qwen2();
    gb_kv_remove(b, "qwen2.block_count");
    gb_kv_u32(b, "llama.block_count", 2);
    refused_b("qwen2 with llama.block_count", b, NB_ERR_FORMAT, "qwen2.block_count");

    /* Rotary scaling: unknown types are refused with the list of known ones. */
    b = llama(NULL);
    gb_kv_str(b, "llama.rope.scaling.type", "yarn");
    gb_kv_f32(b, "llama.rope.scaling.factor", 4.0f);
    refused_b("rope scaling yarn", b, NB_ERR_UNSUPPORTED, "yarn");
    b = llama(NULL);
    gb_kv_str(b, "llama.rope.scaling.type", "bogus");
    {
        size_t len;
        uint8_t *img = build(b, &len);
        res r = expect_bad_model("rope scaling bogus", img, len, 0, "bogus", 0);
        CHECK(strstr(r.msg, "linear") && strstr(r.msg, "llama3"),
              "rope scaling bogus: the message does not list what is supported: %s", r.msg);
        free(img);
        gb_free(b);
    }
    b = llama(NULL);
    gb_kv_u32(b, "llama.rope.scaling.type", 1);
    refused_b("rope.scaling.type as uint32", b, NB_ERR_FORMAT, "rope.scaling.type");
    b = llama(NULL);
    gb_kv_str(b, "llama.rope.scaling.type", "llama3");
    gb_kv_f32(b, "llama.rope.scaling.low_freq_factor", 4.0f);
    gb_kv_f32(b, "llama.rope.scaling.high_freq_factor", 4.0f);
    refused_b("llama3 rope scaling, high = low", b, NB_ERR_FORMAT, "frequency factor");
    b = llama(NULL);
    gb_kv_str(b, "llama.rope.scaling.type", "llama3");
    gb_kv_f32(b, "llama.rope.scaling.low_freq_factor", NAN);
    refused_b("llama3 low_freq_factor NaN", b, NB_ERR_FORMAT, "low_freq_factor");
    b = llama(NULL);
    gb_kv_str(b, "llama.rope.scaling.type", "llama3");
    accepted_b("llama3 rope scaling with default factors", b);
    b = llama(NULL);
    {
        uint64_t d = 3; /* head size 8: 4 pairs */
        gb_tensor_add(b, "rope_freqs.weight", 1, &d, GB_F32, NULL, GB_AUTO);
    }
    refused_b("rope_freqs.weight [3]", b, NB_ERR_FORMAT, "rope_freqs");
    b = llama(NULL);
    gb_kv_str(b, "llama.attention.sliding_window", "4096");
    refused_b("sliding_window as string", b, NB_ERR_FORMAT, "sliding_window");
    b = llama(NULL);
    gb_kv_u32(b, "llama.attention.sliding_window", 4096);
    accepted_b("sliding_window 4096", b);

    /* What is unsupported is named, and what is supported listed. */
    b = llama(NULL);
    gb_kv_remove(b, "general.architecture");
    gb_kv_str(b, "general.architecture", "phi3");
    {
        size_t len;
        uint8_t *img = build(b, &len);
        res r = expect_bad_model("architecture phi3", img, len, 0, "phi3", 0);
        CHECK(r.st == NB_ERR_UNSUPPORTED && strstr(r.msg, "llama") && strstr(r.msg, "qwen2"),
              "architecture phi3: [%d] %s does not list llama and qwen2", (int)r.st, r.msg);
        free(img);
        gb_free(b);
    }
    b = llama(NULL);
    gb_kv_remove(b, "tokenizer.ggml.model");
    gb_kv_str(b, "tokenizer.ggml.model", "bert");
    {
        size_t len;
        uint8_t *img = build(b, &len);
        res r = expect_bad_model("tokenizer bert", img, len, 0, "bert", 0);
        CHECK(r.st == NB_ERR_UNSUPPORTED && strstr(r.msg, "llama") && strstr(r.msg, "gpt2"),
              "tokenizer bert: [%d] %s does not list llama and gpt2", (int)r.st, r.msg);
        free(img);
        gb_free(b);
    }
    end_test();
}

/* ------------------------------------------------------------------ 9b. vocabulary only */

static void test_vocab_only(void **state)
{
    (void)state;
    /* Nothing but tokenizer.* keys. */
    gguf_builder *b = gb_new();
    assert_non_null(b);
    assert_int_equal(gb_llama_add_vocab(b), 0);
    size_t len;
    uint8_t *img = build(b, &len);
    nb_model *m = NULL;
    res r = try_model("tokenizer keys only", img, len, 1, &m);
    CHECK(r.st == NB_OK, "tokenizer keys only: vocab-only open: %s", r.msg);
    if (m) {
        nb_model_info in;
        nb_model_get_info(m, &in);
        CHECK(in.vocab_only == 1, "tokenizer keys only: info.vocab_only %d", in.vocab_only);
        CHECK(nb_model_n_vocab(m) == GB_LLAMA_N_VOCAB, "tokenizer keys only: n_vocab %d",
              nb_model_n_vocab(m));
        CHECK(nb_model_bos(m) == GB_LLAMA_BOS && nb_model_eos(m) == GB_LLAMA_EOS,
              "tokenizer keys only: bos %d eos %d", nb_model_bos(m), nb_model_eos(m));
        nb_model_close(m);
    }
    expect_bad_model("tokenizer keys only, full open", img, len, 0, "architecture|tensor", 0);
    free(img);
    gb_free(b);

    /* llama.cpp's vocabulary files: hyperparameters and tokenizer, no tensors. */
    b = gb_new();
    assert_non_null(b);
    gb_llama_params p = gb_llama_default_params();
    assert_int_equal(gb_llama_add_hparams(b, &p), 0);
    assert_int_equal(gb_llama_add_vocab(b), 0);
    img = build(b, &len);
    r = try_model("vocabulary file", img, len, 1, NULL);
    CHECK(r.st == NB_OK, "vocabulary file: vocab-only open: %s", r.msg);
    expect_bad_model("vocabulary file, full open", img, len, 0, ".weight|tensor", 0);
    free(img);
    gb_free(b);

    /* The architecture is there so that only the missing tokens can be blamed. */
    b = gb_new();
    assert_non_null(b);
    assert_int_equal(gb_llama_add_hparams(b, &p), 0);
    assert_int_equal(gb_llama_add_vocab(b), 0);
    gb_kv_remove(b, "tokenizer.ggml.tokens");
    bad_model_b("vocabulary file without tokens", b, 1, "tokens", 0);

    b = gb_new();
    assert_non_null(b);
    assert_int_equal(gb_llama_add_vocab(b), 0);
    gb_kv_remove(b, "tokenizer.ggml.tokens");
    bad_model_b("tokenizer keys only, without tokens", b, 1, NULL, 0);
    end_test();
}

/* ------------------------------------------------------------------ 10. odd but parseable */

static void test_oddities(void **state)
{
    (void)state;
    /* [[1, 2], [3]] */
    gb_buf nest = {0};
    gb_buf_u32(&nest, GB_ARRAY);
    gb_buf_u64(&nest, 2);
    gb_buf_u32(&nest, GB_UINT32);
    gb_buf_u64(&nest, 2);
    gb_buf_u32(&nest, 1);
    gb_buf_u32(&nest, 2);
    gb_buf_u32(&nest, GB_UINT32);
    gb_buf_u64(&nest, 1);
    gb_buf_u32(&nest, 3);
    gguf_builder *b = llama(NULL);
    gb_kv_raw(b, "test.nested", GB_ARRAY, nest.data, nest.len);
    consistent_b("nested array", b);

    /* ... whose inner count runs past the end. */
    gb_put_u64(nest.data, 4 + 8 + 4, 1ull << 62);
    b = llama(NULL);
    gb_kv_raw(b, "test.nested", GB_ARRAY, nest.data, nest.len);
    bad_gguf_b("nested array, huge inner count", b, W_TRUNC "|array|count|nested|test.nested",
               HUGE);
    gb_buf_free(&nest);

    /* 100000 levels deep: a recursive parser must not run off its stack. */
    gb_buf deep = {0};
    for (int i = 0; i < 100000; i++) {
        gb_buf_u32(&deep, GB_ARRAY);
        gb_buf_u64(&deep, 1);
    }
    gb_buf_u32(&deep, GB_UINT8);
    gb_buf_u64(&deep, 1);
    gb_buf_u8(&deep, 7);
    assert_false(deep.oom);
    b = llama(NULL);
    gb_kv_raw(b, "test.deep", GB_ARRAY, deep.data, deep.len);
    consistent_b("arrays nested 100000 deep", b);
    gb_buf_free(&deep);

    /* Booleans other than 0 and 1 (decided: refuse, naming "bool"). */
    b = llama(NULL);
    gb_kv_bool(b, "test.flag", 2);
    bad_gguf_b("bool 2", b, "bool", 0);
    b = llama(NULL);
    gb_kv_remove(b, "tokenizer.ggml.add_bos_token");
    gb_kv_bool(b, "tokenizer.ggml.add_bos_token", 0xff);
    bad_gguf_b("add_bos_token bool 255", b, "bool", 0);
    b = llama(NULL);
    {
        uint8_t bools[3] = {1, 0, 2};
        gb_kv_arr(b, "test.flags", GB_BOOL, bools, 3);
    }
    bad_gguf_b("bool array with a 2", b, "bool", 0);

    /* Keys and names no writer would produce: either answer, no crash. */
    static const struct {
        const char *what;
        const char *key;
        size_t len;
    } keys[] = {
        {"invalid UTF-8 key", "\xff\xfe.key", 6},
        {"key with a NUL", "general.name\0x", 14},
        {"empty key", "", 0},
        {"key of control bytes", "\x01\x02\x1b[2J", 6},
    };
    for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++) {
        b = llama(NULL);
        int k = gb_kv_u32(b, "placeholder", 1);
        assert_true(k >= 0);
        assert_int_equal(gb_kv_set_key(b, k, keys[i].key, keys[i].len), 0);
        consistent_b(keys[i].what, b);
    }

    /* A token that is not UTF-8. */
    b = llama(NULL);
    {
        gb_kv *kv = &b->kv[kv_index(b, "tokenizer.ggml.tokens")];
        /* the last piece, "ll", becomes "\xff\xfe" */
        assert_int_equal(memcmp(kv->val.data + kv->val.len - 2, "ll", 2), 0);
        memcpy(kv->val.data + kv->val.len - 2, "\xff\xfe", 2);
    }
    consistent_b("token of invalid UTF-8", b);

    /* Two tokens with the same text. */
    b = llama(NULL);
    {
        gb_kv *kv = &b->kv[kv_index(b, "tokenizer.ggml.tokens")];
        memcpy(kv->val.data + kv->val.len - 2, "he", 2);
    }
    consistent_b("duplicate token text", b);

    /* Token texts no converter writes: each model that loads is walked. */
    static const char *const odd_tokens[] = {"", "<0x>", "<0xZZ>", "<0x100>", "<0xFFFFFFFF>",
                                             "\xe2\x96", "<s>"};
    const char *tokens[GB_LLAMA_N_VOCAB];
    for (int t = 0; t < GB_LLAMA_N_VOCAB; t++)
        tokens[t] = gb_llama_token_text(t);
    for (size_t i = 0; i < sizeof odd_tokens / sizeof odd_tokens[0]; i++) {
        b = llama(NULL);
        tokens[3] = odd_tokens[i]; /* token 3 is the BYTE token <0x00>; it keeps its type */
        gb_kv_remove(b, "tokenizer.ggml.tokens");
        gb_kv_arr_str(b, "tokenizer.ggml.tokens", tokens, GB_LLAMA_N_VOCAB);
        char label[64];
        snprintf(label, sizeof label, "byte token with text \"%s\"", odd_tokens[i]);
        consistent_b(label, b);
    }
    tokens[3] = gb_llama_token_text(3);
    {
        /* one byte more than a piece may have (nibble.h, NB_MAX_PIECE) */
        static char long_tok[NB_MAX_PIECE + 2];
        memset(long_tok, 'x', NB_MAX_PIECE + 1);
        long_tok[NB_MAX_PIECE + 1] = 0;
        tokens[GB_LLAMA_N_VOCAB - 1] = long_tok;
        b = llama(NULL);
        gb_kv_remove(b, "tokenizer.ggml.tokens");
        gb_kv_arr_str(b, "tokenizer.ggml.tokens", tokens, GB_LLAMA_N_VOCAB);
        consistent_b("token longer than NB_MAX_PIECE", b);
        tokens[GB_LLAMA_N_VOCAB - 1] = gb_llama_token_text(GB_LLAMA_N_VOCAB - 1);
    }
    {
        int32_t types[GB_LLAMA_N_VOCAB];
        float scores[GB_LLAMA_N_VOCAB];
        for (int t = 0; t < GB_LLAMA_N_VOCAB; t++) {
            types[t] = t % 3 ? -1 : 99;
            scores[t] = t % 2 ? NAN : -INFINITY;
        }
        b = llama(NULL);
        gb_kv_remove(b, "tokenizer.ggml.token_type");
        gb_kv_arr(b, "tokenizer.ggml.token_type", GB_INT32, types, GB_LLAMA_N_VOCAB);
        gb_kv_remove(b, "tokenizer.ggml.scores");
        gb_kv_arr(b, "tokenizer.ggml.scores", GB_FLOAT32, scores, GB_LLAMA_N_VOCAB);
        consistent_b("token types -1/99, scores NaN/-inf", b);
    }
    b = llama(NULL);
    gb_kv_remove(b, "tokenizer.ggml.tokens");
    gb_kv_remove(b, "tokenizer.ggml.scores");
    gb_kv_remove(b, "tokenizer.ggml.token_type");
    gb_kv_remove(b, "tokenizer.ggml.bos_token_id");
    gb_kv_remove(b, "tokenizer.ggml.eos_token_id");
    gb_kv_remove(b, "tokenizer.ggml.unknown_token_id");
    gb_kv_arr_str(b, "tokenizer.ggml.tokens", NULL, 0);
    gb_kv_arr(b, "tokenizer.ggml.scores", GB_FLOAT32, NULL, 0);
    gb_kv_arr(b, "tokenizer.ggml.token_type", GB_INT32, NULL, 0);
    consistent_b("empty vocabulary", b);

    /* Hyperparameters with odd float values. */
    static const struct {
        const char *key;
        float v;
    } fhp[] = {
        {"llama.attention.layer_norm_rms_epsilon", NAN},
        {"llama.attention.layer_norm_rms_epsilon", -1.0f},
        {"llama.rope.freq_base", 0.0f},
        {"llama.rope.freq_base", INFINITY},
    };
    for (size_t i = 0; i < sizeof fhp / sizeof fhp[0]; i++) {
        b = llama(NULL);
        gb_kv_remove(b, fhp[i].key);
        gb_kv_f32(b, fhp[i].key, fhp[i].v);
        char label[96];
        snprintf(label, sizeof label, "%s = %g", fhp[i].key, (double)fhp[i].v);
        consistent_b(label, b);
    }
    static const uint32_t ctxs[] = {0, 0xffffffffu};
    for (size_t i = 0; i < 2; i++) {
        b = llama(NULL);
        replace_u32(b, "llama.context_length", ctxs[i]);
        char label[64];
        snprintf(label, sizeof label, "llama.context_length = %u", ctxs[i]);
        consistent_b(label, b);
    }

    /* Tensor names: empty, very long, and an extra tensor the model does not use. */
    uint64_t dim = 32;
    b = llama(NULL);
    gb_tensor_add(b, "", 1, &dim, GB_F32, NULL, GB_AUTO);
    consistent_b("empty tensor name", b);
    {
        char name[2001];
        memset(name, 'n', sizeof name - 1);
        name[sizeof name - 1] = 0;
        b = llama(NULL);
        gb_tensor_add(b, name, 1, &dim, GB_F32, NULL, GB_AUTO);
        consistent_b("2000-byte tensor name", b);
    }
    b = llama(NULL);
    gb_tensor_add(b, "extra.weight", 1, &dim, GB_F32, NULL, GB_AUTO);
    consistent_b("unused extra tensor", b);

    /* Two tensors sharing the same bytes. */
    b = llama(NULL);
    {
        size_t l;
        free(build(b, &l)); /* to learn where the data goes */
        gb_tensor *t = &b->tensor[tensor_index(b, "blk.0.ffn_norm.weight")];
        t->offset_set = 1;
        t->offset = b->tensor[tensor_index(b, "blk.0.attn_norm.weight")].data_pos;
    }
    consistent_b("overlapping tensors", b);
    end_test();
}

/* ------------------------------------------------------------------ random mutations */

static uint64_t rng_next(uint64_t *s)
{
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* Every field position the builder recorded, for targeted mutations. */
static size_t field_positions(const gguf_builder *b, size_t *out, size_t cap)
{
    size_t n = 0;
    static const size_t header[] = {4, 8, 16};
    for (size_t i = 0; i < 3 && n < cap; i++)
        out[n++] = header[i];
    for (size_t i = 0; i < b->n_kv && n + 4 <= cap; i++) {
        out[n++] = b->kv[i].at_key;
        out[n++] = b->kv[i].at_type;
        out[n++] = b->kv[i].at_value;
        if (b->kv[i].type == GB_ARRAY)
            out[n++] = b->kv[i].at_value + 4;
    }
    for (size_t i = 0; i < b->n_tensor && n + 8 <= cap; i++) {
        out[n++] = b->tensor[i].at_name;
        out[n++] = b->tensor[i].at_n_dims;
        for (uint32_t d = 0; d < b->tensor[i].n_dims; d++)
            out[n++] = b->tensor[i].at_dims + 8 * d;
        out[n++] = b->tensor[i].at_type;
        out[n++] = b->tensor[i].at_offset;
    }
    return n;
}

typedef struct mutation {
    size_t at, n;
    uint8_t old[8];
} mutation;

static int mutate(uint8_t *img, size_t len, size_t meta_len, const size_t *fields, size_t n_fields,
                  uint64_t *s, mutation *undo, int max_undo)
{
    static const uint64_t interesting[] = {0, 1, 2, 3, 4, 5, 8, 9, 12, 13, 31, 32, 33, 255,
                                           0x7fffffff, 0x80000000u, 0xffffffffu, 1ull << 32,
                                           (1ull << 32) + 1, 1ull << 62, 1ull << 63,
                                           UINT64_MAX - 31, UINT64_MAX};
    int n = 1 + (int)(rng_next(s) % (uint64_t)max_undo);
    for (int k = 0; k < n; k++) {
        uint64_t r = rng_next(s);
        mutation *u = &undo[k];
        memset(u->old, 0, sizeof u->old);
        if (r % 10 < 5) { /* a recorded field gets an interesting value */
            u->at = fields[rng_next(s) % n_fields];
            u->n = (r >> 8) % 2 ? 8 : 4;
        } else if (r % 10 < 9) { /* a random byte in the metadata */
            u->at = rng_next(s) % meta_len;
            u->n = 1;
        } else { /* anywhere, data included */
            u->at = rng_next(s) % len;
            u->n = 1;
        }
        if (u->at + u->n > len)
            u->n = len - u->at;
        memcpy(u->old, img + u->at, u->n);
        uint64_t v = u->n == 1 ? rng_next(s)
                               : interesting[rng_next(s) % (sizeof interesting / sizeof interesting[0])];
        if ((r >> 16) % 4 == 0 && u->n > 1) /* sometimes near the real value */
            v = gb_get_u64(u->old, 0) + (rng_next(s) % 3) - 1;
        for (size_t i = 0; i < u->n; i++)
            img[u->at + i] = (uint8_t)(v >> (8 * i));
    }
    return n;
}

static void undo_mutations(uint8_t *img, const mutation *undo, int n)
{
    for (int k = n; k-- > 0;)
        memcpy(img + undo[k].at, undo[k].old, undo[k].n);
}

static void test_random_mutations(void **state)
{
    (void)state;
    gguf_builder *b = llama(NULL);
    size_t len;
    uint8_t *img = build(b, &len);
    size_t fields[4096];
    size_t n_fields = field_positions(b, fields, sizeof fields / sizeof fields[0]);
    mutation undo[4];
    uint64_t seed = 0x6e6962626c65ull; /* "nibble" */
    int n_ok = 0;
    double t0 = now();
    for (int it = 0; it < 4000; it++) {
        int n = mutate(img, len, b->data_start, fields, n_fields, &seed, undo, 4);
        char label[64];
        snprintf(label, sizeof label, "mutation %d", it);
        res r = try_mem(label, img, len);
        n_ok += r.st == NB_OK;
        undo_mutations(img, undo, n);
    }
    /* Fewer through the model loader: each writes a file. */
    char *path = temp_image(img, len);
    FILE *f = fopen(path, "r+b");
    assert_non_null(f);
    for (int it = 0; it < 400; it++) {
        int n = mutate(img, len, b->data_start, fields, n_fields, &seed, undo, 3);
        for (int k = 0; k < n; k++) {
            fseek(f, (long)undo[k].at, SEEK_SET);
            fwrite(img + undo[k].at, 1, undo[k].n, f);
        }
        fflush(f);
        char label[64];
        snprintf(label, sizeof label, "model mutation %d", it);
        res r = try_model_path(label, path, it % 3 == 0, it % 2, NULL);
        n_ok += r.st == NB_OK;
        undo_mutations(img, undo, n);
        for (int k = 0; k < n; k++) {
            fseek(f, (long)undo[k].at, SEEK_SET);
            fwrite(img + undo[k].at, 1, undo[k].n, f);
        }
        fflush(f);
    }
    fclose(f);
    unlink(path);
    free(path);
    print_message("mutations: 4400 in %.2f s, %d accepted\n", now() - t0, n_ok);
    free(img);
    gb_free(b);
    end_test();
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_valid_model),
        cmocka_unit_test(test_error_reporting),
        cmocka_unit_test(test_truncation),
        cmocka_unit_test(test_magic_version),
        cmocka_unit_test(test_huge_counts),
        cmocka_unit_test(test_lengths_and_arrays),
        cmocka_unit_test(test_dimensions),
        cmocka_unit_test(test_offsets),
        cmocka_unit_test(test_alignment),
        cmocka_unit_test(test_duplicates),
        cmocka_unit_test(test_model_content),
        cmocka_unit_test(test_architectures),
        cmocka_unit_test(test_vocab_only),
        cmocka_unit_test(test_oddities),
        cmocka_unit_test(test_random_mutations),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
