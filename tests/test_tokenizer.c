/*
 * test_tokenizer.c - the SentencePiece and byte-level BPE tokenizers, and
 * the detokenizer.
 *
 *  - llama.cpp's conformance suite (../shared/vocab) for all nine
 *    vocabularies, every line exactly;
 *  - other strings (code, emoji, CJK, long runs, invalid UTF-8, random
 *    mixed scripts) checked against independent, deliberately naive
 *    implementations of the same merge rules written here;
 *  - the Unicode classes and each BPE pre-tokenizer on hand-worked
 *    examples;
 *  - special tokens, BOS/EOS flags, round trips, streaming UTF-8, and
 *    vocabularies that must be refused.
 */
#include "testutil.h"

#include <jansson.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "gguf_builder.h"
#include "internal.h"
#include "nibble.h"

static nb_model *open_vocab(const char *rel)
{
    char *path = nbt_data_path(rel);
    assert_non_null(path);
    nb_model_params p = nb_model_default_params();
    p.vocab_only = 1;
    nb_model *m = NULL;
    char err[256];
    nb_status st = nb_model_open(path, &p, &m, err, sizeof err);
    if (st)
        fail_msg("%s: %s", path, err);
    free(path);
    return m;
}

static nb_token *tok(const nb_model *m, const char *s, size_t len, int flags, int64_t *n)
{
    /* BPE turns an invalid byte into U+FFFD: up to 3 tokens */
    int64_t cap = 3 * (int64_t)len + 8;
    nb_token *ids = malloc((size_t)cap * sizeof *ids);
    assert_non_null(ids);
    *n = nb_tokenize(m, s, len, ids, cap, flags);
    assert_true(*n >= 0 && *n <= cap);
    return ids;
}

/* ------------------------------------------------------------------ suite */

static void conformance(const char *name)
{
    char rel[256];
    snprintf(rel, sizeof rel, "vocab/%s.inp", name);
    char *inp_path = nbt_data_path(rel);
    snprintf(rel, sizeof rel, "vocab/%s.out", name);
    char *out_path = nbt_data_path(rel);
    size_t inp_len, out_len;
    char *inp = nbt_read_file(inp_path, &inp_len);
    char *out = nbt_read_file(out_path, &out_len);
    assert_non_null(inp);
    assert_non_null(out);
    snprintf(rel, sizeof rel, "vocab/%s", name);
    nb_model *m = open_vocab(rel);

    static const char sep[] = "\n__ggml_vocab_test__\n";
    char *p = inp, *end = inp + inp_len, *line = out;
    int cases = 0;
    for (;;) {
        char *s = strstr(p, sep);
        if (!s)
            break;
        char *nl = strchr(line, '\n');
        assert_non_null(nl);
        *nl = 0;
        int64_t n;
        nb_token *ids = tok(m, p, (size_t)(s - p), 0, &n);
        char got[8192];
        size_t k = 0;
        got[0] = 0;
        for (int64_t i = 0; i < n && k < sizeof got - 16; i++)
            k += (size_t)snprintf(got + k, sizeof got - k, " %d", ids[i]);
        if (strcmp(got, line) != 0)
            fail_msg("%s case %d '%.*s': got '%s', want '%s'", name, cases, (int)(s - p), p, got,
                     line);
        free(ids);
        cases++;
        line = nl + 1;
        p = s + strlen(sep);
    }
    assert_true(p == end || p == end + 1 || *p == 0);
    assert_int_equal(cases, 46);
    printf("    %s: %d strings identical to llama.cpp\n", name, cases);
    nb_model_close(m);
    free(inp);
    free(out);
    free(inp_path);
    free(out_path);
}

static const char *const all_vocabs[] = {
    "ggml-vocab-llama-spm.gguf", "ggml-vocab-phi-3.gguf",     "ggml-vocab-gpt-2.gguf",
    "ggml-vocab-deepseek-coder.gguf", "ggml-vocab-deepseek-llm.gguf", "ggml-vocab-falcon.gguf",
    "ggml-vocab-mpt.gguf", "ggml-vocab-refact.gguf",   "ggml-vocab-starcoder.gguf",
};

/* the BPE ones, with the pre-tokenizer each names */
static const char *const bpe_vocabs[][2] = {
    {"vocab/ggml-vocab-gpt-2.gguf", "gpt-2"},
    {"vocab/ggml-vocab-deepseek-coder.gguf", "deepseek-coder"},
    {"vocab/ggml-vocab-deepseek-llm.gguf", "deepseek-llm"},
    {"vocab/ggml-vocab-falcon.gguf", "falcon"},
    {"vocab/ggml-vocab-mpt.gguf", "gpt-2"},
    {"vocab/ggml-vocab-refact.gguf", "starcoder"},
    {"vocab/ggml-vocab-starcoder.gguf", "starcoder"},
};
#define N_BPE_VOCABS (sizeof bpe_vocabs / sizeof bpe_vocabs[0])

static void test_conformance(void **state)
{
    (void)state;
    NBT_REQUIRE_DATA();
    for (size_t i = 0; i < sizeof all_vocabs / sizeof all_vocabs[0]; i++)
        conformance(all_vocabs[i]);
}

/* ------------------------------------------------------------------ arrays */

/* The oracles read the vocabulary through the public API only: an array
 * of the model's GGUF rendered as text (nb_gguf_format_value) and parsed
 * back. */
static char *format_array(const nb_gguf *g, const char *key)
{
    int64_t ki = nb_gguf_find(g, key);
    assert_true(ki >= 0);
    size_t need = nb_gguf_format_value(g, ki, NULL, 0, -1) + 1;
    char *buf = malloc(need);
    assert_non_null(buf);
    nb_gguf_format_value(g, ki, buf, need, -1);
    return buf;
}

typedef struct nv_str {
    char *s;
    size_t n;
    int32_t val; /* token id, or merge rank */
} nv_str;

/* Parse the quoted strings of a formatted array (see nb_gguf_format_value). */
static nv_str *parse_strings(const nb_gguf *g, const char *key, int64_t *n)
{
    char *buf = format_array(g, key);
    int64_t cap = 1024, k = 0;
    nv_str *v = malloc((size_t)cap * sizeof *v);
    for (char *q = buf; (q = strchr(q, '"'));) {
        q++;
        const char *e = q; /* the escaped length bounds the text's */
        while (*e && *e != '"')
            e += 1 + (*e == '\\' && e[1]);
        char *t = malloc((size_t)(e - q) + 1);
        size_t m = 0;
        while (*q != '"') {
            if (*q == '\\') {
                q++;
                if (*q == 'n') {
                    t[m++] = '\n';
                    q++;
                } else if (*q == 'x') {
                    unsigned x;
                    sscanf(q + 1, "%2x", &x);
                    t[m++] = (char)x;
                    q += 3;
                } else {
                    t[m++] = *q++;
                }
            } else {
                t[m++] = *q++;
            }
        }
        q++;
        if (k == cap)
            v = realloc(v, (size_t)(cap *= 2) * sizeof *v);
        v[k] = (nv_str){t, m, (int32_t)k};
        k++;
    }
    free(buf);
    *n = k;
    return v;
}

/* The numbers of a formatted array, as floats (token types are small). */
static float *parse_numbers(const nb_gguf *g, const char *key, int64_t *n)
{
    char *buf = format_array(g, key), *q = buf + 1;
    int64_t cap = 1024, k = 0;
    float *v = malloc((size_t)cap * sizeof *v);
    while (*q && *q != ']') {
        if (k == cap)
            v = realloc(v, (size_t)(cap *= 2) * sizeof *v);
        v[k++] = strtof(q, &q);
        q += strspn(q, ", ");
    }
    free(buf);
    *n = k;
    return v;
}

/* ------------------------------------------------------------------ oracle */

/* The SPM rule stated as plainly as possible: split into characters, then
 * repeatedly merge the adjacent pair whose concatenation is a token with
 * the highest score (leftmost among equals), until no pair is a token;
 * unknown pieces become their bytes.  Quadratic, and independent of the
 * heap-based implementation under test. */
typedef struct span {
    char *s;
    size_t n;
} span;

/* The vocabulary of the model being checked, parsed once per model. */
static const nb_gguf *cached_g;
static char **texts;
static size_t *lens;
static float *scores;
static int64_t count;

static void oracle_reset(void)
{
    for (int64_t i = 0; i < count; i++)
        free(texts[i]);
    free(texts);
    free(lens);
    free(scores);
    texts = NULL;
    lens = NULL;
    scores = NULL;
    count = 0;
    cached_g = NULL;
}

static int lookup(const nb_model *m, const char *s, size_t n, float *score)
{
    /* The model exposes pieces, not scores: find the token whose piece
     * equals s (with spaces as U+2581), using the vocabulary's GGUF. */
    const nb_gguf *g = nb_model_gguf(m);
    if (cached_g != g) {
        int64_t nt, ns;
        nv_str *t = parse_strings(g, "tokenizer.ggml.tokens", &nt);
        scores = parse_numbers(g, "tokenizer.ggml.scores", &ns);
        count = nb_model_n_vocab(m);
        assert_int_equal(nt, count);
        assert_int_equal(ns, count);
        texts = calloc((size_t)count, sizeof *texts);
        lens = calloc((size_t)count, sizeof *lens);
        for (int64_t i = 0; i < count; i++) {
            texts[i] = t[i].s;
            lens[i] = t[i].n;
        }
        free(t);
        cached_g = g;
    }
    for (int64_t i = 0; i < count; i++)
        if (lens[i] == n && memcmp(texts[i], s, n) == 0) {
            if (score)
                *score = scores[i];
            return (int)i;
        }
    return -1;
}

static int64_t naive_spm(const nb_model *m, const char *text, size_t len, nb_token *out)
{
    /* escape: leading space, ' ' -> U+2581 */
    size_t cap = len * 3 + 4, k = 0;
    char *esc = malloc(cap);
    memcpy(esc, "\xe2\x96\x81", 3);
    k = 3;
    for (size_t i = 0; i < len; i++) {
        if (text[i] == ' ') {
            memcpy(esc + k, "\xe2\x96\x81", 3);
            k += 3;
        } else {
            esc[k++] = text[i];
        }
    }
    span *ps = malloc((k + 1) * sizeof *ps);
    size_t np = 0;
    for (size_t i = 0; i < k;) {
        unsigned char c = (unsigned char)esc[i];
        size_t cl = c < 0xc0 ? 1 : c < 0xe0 ? 2 : c < 0xf0 ? 3 : 4;
        if (cl > k - i)
            cl = k - i;
        ps[np].s = esc + i;
        ps[np].n = cl;
        np++;
        i += cl;
    }
    for (;;) {
        float best = 0;
        size_t at = (size_t)-1;
        for (size_t i = 0; i + 1 < np; i++) {
            if (ps[i].s + ps[i].n != ps[i + 1].s)
                continue;
            float sc;
            if (lookup(m, ps[i].s, ps[i].n + ps[i + 1].n, &sc) >= 0 && (at == (size_t)-1 || sc > best)) {
                best = sc;
                at = i;
            }
        }
        if (at == (size_t)-1)
            break;
        ps[at].n += ps[at + 1].n;
        memmove(ps + at + 1, ps + at + 2, (np - at - 2) * sizeof *ps);
        np--;
    }
    int64_t n = 0;
    for (size_t i = 0; i < np; i++) {
        int id = lookup(m, ps[i].s, ps[i].n, NULL);
        if (id >= 0) {
            out[n++] = id;
            continue;
        }
        for (size_t b = 0; b < ps[i].n; b++) {
            char name[8];
            snprintf(name, sizeof name, "<0x%02X>", (unsigned char)ps[i].s[b]);
            id = lookup(m, name, 6, NULL);
            assert_true(id >= 0);
            out[n++] = id;
        }
    }
    free(ps);
    free(esc);
    return n;
}

static const char *const other_strings[] = {
    "int main(int argc, char **argv) {\n\treturn argc > 1 ? atoi(argv[1]) : 0;\n}\n",
    "def f(x):\n    return [y**2 for y in x if y % 2 == 0]  # squares\n",
    "    indented    with   runs     of spaces\t\ttabs\t",
    "emoji: \xf0\x9f\x98\x80\xf0\x9f\x91\x8d\xf0\x9f\x8f\xbd \xf0\x9f\x91\xa8\xe2\x80\x8d\xf0\x9f\x91\xa9\xe2\x80\x8d\xf0\x9f\x91\xa7 \xe2\x9d\xa4\xef\xb8\x8f",
    "\xe4\xbd\xa0\xe5\xa5\xbd\xef\xbc\x8c\xe4\xb8\x96\xe7\x95\x8c\xe3\x80\x82\xe6\x97\xa5\xe6\x9c\xac\xe8\xaa\x9e\xe3\x81\xae\xe3\x83\x86\xe3\x82\xad\xe3\x82\xb9\xe3\x83\x88 \xed\x95\x9c\xea\xb5\xad\xec\x96\xb4",
    "\xd0\x9f\xd1\x80\xd0\xb8\xd0\xb2\xd0\xb5\xd1\x82, \xce\xba\xcf\x8c\xcf\x83\xce\xbc\xce\xb5! \xd7\xa9\xd7\x9c\xd7\x95\xd7\x9d \xd9\x85\xd8\xb1\xd8\xad\xd8\xa8\xd8\xa7",
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
    "!!!???...,,,;;;:::---___===+++***&&&%%%$$$###@@@",
    "0123456789 3.14159 1e-10 0xdeadBEEF 1,000,000",
    "invalid \xff\xfe bytes \xc3 and \xe2\x82 truncated",
    "MixedCASE camelCase snake_case kebab-case SCREAMING_CASE",
    "",
    " ",
    "\n\n\n",
};

static void check_against_oracle(const char *vocab_rel)
{
    nb_model *m = open_vocab(vocab_rel);
    int checked = 0;
    for (size_t i = 0; i < sizeof other_strings / sizeof other_strings[0]; i++) {
        const char *s = other_strings[i];
        size_t len = strlen(s);
        if (len == 0)
            continue; /* empty input is covered by test_flags */
        int64_t n;
        nb_token *ids = tok(m, s, len, 0, &n);
        nb_token *want = malloc((len * 4 + 8) * sizeof *want);
        int64_t nw = naive_spm(m, s, len, want);
        if (n != nw || memcmp(ids, want, (size_t)n * sizeof *ids) != 0) {
            char a[4096] = "", b[4096] = "";
            size_t ka = 0, kb = 0;
            for (int64_t j = 0; j < n && ka < 4000; j++)
                ka += (size_t)snprintf(a + ka, sizeof a - ka, " %d", ids[j]);
            for (int64_t j = 0; j < nw && kb < 4000; j++)
                kb += (size_t)snprintf(b + kb, sizeof b - kb, " %d", want[j]);
            fail_msg("%s: '%s'\n got %s\nwant %s", vocab_rel, s, a, b);
        }
        free(ids);
        free(want);
        checked++;
    }
    printf("    %s: %d other strings agree with the naive merge\n", vocab_rel, checked);
    oracle_reset();
    nb_model_close(m);
}

static void test_oracle_llama_spm(void **state)
{
    (void)state;
    NBT_REQUIRE_DATA();
    check_against_oracle("vocab/ggml-vocab-llama-spm.gguf");
}

static void test_oracle_small_vocab(void **state)
{
    (void)state;
    NBT_REQUIRE_DATA();
    /* 512 tokens: almost everything falls back to bytes */
    check_against_oracle("models/stories260K.gguf");
}

/* ------------------------------------------------------------------ flags */

static void test_flags(void **state)
{
    (void)state;
    NBT_REQUIRE_DATA();
    nb_model *m = open_vocab("vocab/ggml-vocab-llama-spm.gguf");
    nb_token bos = nb_model_bos(m), eos = nb_model_eos(m);
    assert_int_equal(bos, 1);
    assert_int_equal(eos, 2);
    int64_t n;
    nb_token *ids = tok(m, "", 0, NB_TOK_ADD_SPECIAL, &n);
    assert_int_equal(n, 1);
    assert_int_equal(ids[0], bos);
    free(ids);
    ids = tok(m, "", 0, 0, &n);
    assert_int_equal(n, 0);
    free(ids);

    /* "</s>" is a control token: only recognised with PARSE_SPECIAL */
    const char *s = "Hi</s>there";
    ids = tok(m, s, strlen(s), NB_TOK_PARSE_SPECIAL, &n);
    int found = 0;
    for (int64_t i = 0; i < n; i++)
        found += ids[i] == eos;
    assert_int_equal(found, 1);
    /* text after a special token gets the leading space again, as in llama.cpp */
    char piece[64];
    int64_t after = 0;
    for (int64_t i = 0; i < n; i++)
        if (ids[i] == eos)
            after = i + 1;
    int pl = nb_token_piece(m, ids[after], piece, sizeof piece, 0);
    assert_true(pl > 0 && piece[0] == ' ');
    free(ids);
    ids = tok(m, s, strlen(s), 0, &n);
    for (int64_t i = 0; i < n; i++)
        assert_int_not_equal(ids[i], eos);
    free(ids);

    /* a too-small buffer reports the size it needs and writes no more */
    nb_token small[2] = {-7, -7};
    int64_t need = nb_tokenize(m, "Hello world again", 17, small, 1, NB_TOK_ADD_SPECIAL);
    assert_true(need > 1);
    assert_int_equal(small[0], bos);
    assert_int_equal(small[1], -7);

    /* pieces: control tokens are empty unless asked for */
    assert_int_equal(nb_token_piece(m, eos, piece, sizeof piece, 0), 0);
    pl = nb_token_piece(m, eos, piece, sizeof piece, NB_PIECE_SPECIAL);
    assert_int_equal(pl, 4);
    assert_memory_equal(piece, "</s>", 4);
    assert_int_equal(nb_token_piece(m, -1, piece, sizeof piece, 0), -NB_ERR_INVALID);
    assert_int_equal(nb_token_piece(m, 32000, piece, sizeof piece, 0), -NB_ERR_INVALID);
    nb_model_close(m);
}

/* ------------------------------------------------------------------ round trip */

static char *detok_all(const nb_model *m, const nb_token *ids, int64_t n, size_t *len)
{
    nb_detok d;
    nb_detok_init(&d, 0);
    /* room for every piece, each byte possibly U+FFFD */
    size_t cap = 16, k = 0;
    for (int64_t i = 0; i < n; i++)
        cap += 3 * (size_t)nb_token_piece(m, ids[i], NULL, 0, 0) + 3;
    char *out = malloc(cap);
    for (int64_t i = 0; i < n; i++)
        k += nb_detok_push(&d, m, ids[i], out + k, cap - k);
    k += nb_detok_flush(&d, out + k, cap - k);
    *len = k;
    return out;
}

static void test_round_trip(void **state)
{
    (void)state;
    NBT_REQUIRE_DATA();
    const char *vocabs[] = {"vocab/ggml-vocab-llama-spm.gguf", "vocab/ggml-vocab-phi-3.gguf",
                            "models/stories260K.gguf"};
    for (size_t v = 0; v < 3; v++) {
        nb_model *m = open_vocab(vocabs[v]);
        for (size_t i = 0; i < sizeof other_strings / sizeof other_strings[0]; i++) {
            const char *s = other_strings[i];
            size_t len = strlen(s);
            if (strstr(s, "invalid"))
                continue; /* not valid UTF-8: cannot round-trip, see test_detok_stream */
            int64_t n;
            nb_token *ids = tok(m, s, len, 0, &n);
            size_t dl;
            char *back = detok_all(m, ids, n, &dl);
            /* SPM puts a space in front of the text */
            if (len == 0) {
                assert_int_equal(dl, 0);
            } else {
                assert_int_equal(dl, len + 1);
                assert_int_equal(back[0], ' ');
                assert_memory_equal(back + 1, s, len);
            }
            free(back);
            free(ids);
        }
        nb_model_close(m);
    }
}

static void test_long_run(void **state)
{
    (void)state;
    NBT_REQUIRE_DATA();
    nb_model *m = open_vocab("vocab/ggml-vocab-llama-spm.gguf");
    size_t len = 200000;
    char *s = malloc(len);
    for (size_t i = 0; i < len; i++)
        s[i] = "ab cd\xe4\xbd\xa0 "[i % 9];
    s[len - 1] = ' '; /* may cut a character; fine for tokenizing */
    clock_t t0 = clock();
    int64_t n;
    nb_token *ids = tok(m, s, len, 0, &n);
    double secs = (double)(clock() - t0) / CLOCKS_PER_SEC;
    assert_true(n > 0);
    /* 200 kB must not take quadratic time */
    assert_true(secs < 5.0);
    free(ids);
    memset(s, 'a', len);
    ids = tok(m, s, len, 0, &n);
    size_t dl;
    char *back = detok_all(m, ids, n, &dl);
    assert_int_equal(dl, len + 1);
    assert_memory_equal(back + 1, s, len);
    free(back);
    free(ids);
    free(s);
    nb_model_close(m);
}

/* ------------------------------------------------------------------ streaming */

static void test_detok_stream(void **state)
{
    (void)state;
    NBT_REQUIRE_DATA();
    /* stories260K has only 512 tokens: an emoji becomes four byte tokens */
    nb_model *m = open_vocab("models/stories260K.gguf");
    const char *s = "\xf0\x9f\x99\x82"; /* U+1F642 */
    int64_t n;
    nb_token *ids = tok(m, s, 4, 0, &n);
    assert_true(n >= 5); /* "▁" then four bytes */
    nb_detok d;
    nb_detok_init(&d, 0);
    char out[512];
    size_t total = 0;
    char all[64];
    for (int64_t i = 0; i < n; i++) {
        size_t k = nb_detok_push(&d, m, ids[i], out, sizeof out);
        /* nothing partial is ever shown: what comes out is valid UTF-8 */
        if (i < n - 1 && i >= n - 4)
            assert_int_equal(k, 0);
        memcpy(all + total, out, k);
        total += k;
    }
    assert_int_equal(nb_detok_flush(&d, out, sizeof out), 0);
    assert_int_equal(total, 5);
    assert_memory_equal(all, " \xf0\x9f\x99\x82", 5);
    free(ids);

    /* invalid and truncated sequences come out as U+FFFD, never raw */
    const char *bad = "a\xff" "b\xe2\x82" "c\xc3";
    ids = tok(m, bad, strlen(bad), 0, &n);
    nb_detok_init(&d, 0);
    total = 0;
    for (int64_t i = 0; i < n; i++) {
        size_t k = nb_detok_push(&d, m, ids[i], out, sizeof out);
        memcpy(all + total, out, k);
        total += k;
    }
    total += nb_detok_flush(&d, all + total, sizeof all - total);
    const char want[] = " a\xef\xbf\xbd" "b\xef\xbf\xbd" "c\xef\xbf\xbd";
    assert_int_equal(total, sizeof want - 1);
    assert_memory_equal(all, want, sizeof want - 1);
    free(ids);
    nb_model_close(m);
}

/* ------------------------------------------------------------------ unicode */

static void test_unicode_classes(void **state)
{
    (void)state;
    enum { Lt = NBI_U_LETTER, Nm = NBI_U_NUMBER, Pu = NBI_U_PUNCT, Sy = NBI_U_SYMBOL,
           Mk = NBI_U_MARK, Zs = NBI_U_SEPARATOR, Cc = NBI_U_CONTROL, Sp = NBI_U_SPACE };
    static const struct {
        uint32_t cp;
        uint8_t flags;
    } cases[] = {
        /* ASCII */
        {'A', Lt}, {'z', Lt}, {'0', Nm}, {'9', Nm}, {' ', Zs | Sp}, {'\t', Cc | Sp},
        {'\n', Cc | Sp}, {'\v', Cc | Sp}, {'\r', Cc | Sp}, {0x1c, Cc}, {0x1f, Cc}, {0, Cc},
        {0x7f, Cc}, {'!', Pu}, {'\'', Pu}, {'_', Pu}, {'{', Pu}, {'$', Sy}, {'+', Sy},
        {'<', Sy}, {'^', Sy}, {'`', Sy}, {'|', Sy}, {'~', Sy},
        /* Latin-1 */
        {0x85, Cc | Sp}, {0xa0, Zs | Sp}, {0xad, Cc}, {0xa7, Pu}, {0xb2, Nm}, {0xbd, Nm},
        {0xb5, Lt}, {0xd7, Sy}, {0xe9, Lt}, {0xff, Lt},
        /* Greek, Cyrillic, letters of every case kind */
        {0x3b1, Lt}, {0x3a9, Lt}, {0x37e, Pu}, {0x378, 0}, {0x416, Lt}, {0x1c5, Lt},
        {0x2b0, Lt}, {0x1f88, Lt},
        /* CJK, kana, Hangul */
        {0x4e00, Lt}, {0x9fff, Lt}, {0x3007, Nm}, {0x3000, Zs | Sp}, {0x3001, Pu},
        {0x3042, Lt}, {0xac00, Lt}, {0xd7a3, Lt}, {0xd7a4, 0}, {0xff01, Pu}, {0xff10, Nm},
        {0x20000, Lt}, {0x2a6df, Lt}, {0x2a6e0, 0},
        /* other scripts' digits */
        {0x661, Nm}, {0x966, Nm}, {0x2167, Nm},
        /* emoji and symbols */
        {0x1f600, Sy}, {0x1f3fd, Sy}, {0x2764, Sy}, {0x20ac, Sy}, {0x2211, Sy}, {0xfffd, Sy},
        /* combining marks */
        {0x301, Mk}, {0x308, Mk}, {0x20dd, Mk}, {0x903, Mk}, {0xfe0f, Mk}, {0xe0100, Mk},
        /* whitespace and what only looks like it */
        {0x1680, Zs | Sp}, {0x2000, Zs | Sp}, {0x200a, Zs | Sp}, {0x2028, Zs | Sp},
        {0x2029, Zs | Sp}, {0x202f, Zs | Sp}, {0x205f, Zs | Sp}, {0x180e, Cc}, {0x200b, Cc},
        {0x200d, Cc}, {0xfeff, Cc},
        /* surrogates, private use, noncharacters, the end */
        {0xd800, Cc}, {0xdfff, Cc}, {0xe000, Cc}, {0xf0000, Cc}, {0x10fffd, Cc},
        {0xfffe, 0}, {0xffff, 0}, {0x10ffff, 0}, {0x110000, 0}, {0xffffffff, 0},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        uint8_t got = nbi_unicode_flags(cases[i].cp);
        if (got != cases[i].flags)
            fail_msg("U+%04X: flags 0x%02x, want 0x%02x", cases[i].cp, got, cases[i].flags);
    }
    /* the table: sorted ranges from U+0000, one category each */
    assert_int_equal(nbi_unicode_ranges[0] >> 8, 0);
    for (size_t i = 0; i < nbi_unicode_n_ranges; i++) {
        uint32_t start = nbi_unicode_ranges[i] >> 8, cat = nbi_unicode_ranges[i] & 0x7f;
        assert_true(start <= 0x10ffff);
        assert_true((cat & (cat - 1)) == 0);
        if (i)
            assert_true(start > nbi_unicode_ranges[i - 1] >> 8);
    }
    /* the direct table for U+0000..U+00FF says what the ranges say */
    for (uint32_t cp = 0, r = 0; cp < 256; cp++) {
        while (r + 1 < nbi_unicode_n_ranges && nbi_unicode_ranges[r + 1] >> 8 <= cp)
            r++;
        assert_int_equal(nbi_unicode_latin1[cp], nbi_unicode_ranges[r] & 0xff);
    }
    printf("    Unicode %s: %zu ranges; %zu code points checked by hand\n", nbi_unicode_version,
           nbi_unicode_n_ranges, sizeof cases / sizeof cases[0]);
}

/* ------------------------------------------------------------------ pre-tokenizers */

/* Worked out by hand from each kind's regular expressions (unicode.c),
 * read as llama.cpp reads them: each expression in turn cuts every piece
 * into its matches and the gaps between them. */
static const struct {
    const char *pre, *text;
    const char *pieces[12];
} split_cases[] = {
    {"gpt-2", "Hello world's 12345 ...", {"Hello", " world", "'s", " 12345", " ..."}},
    /* \s+(?!\S) leaves the last space to the word; a lone tab matches nothing */
    {"gpt-2", "a  b\t\tc  \n", {"a", " ", " b", "\t", "\t", "c", "  \n"}},
    /* case-sensitive contractions */
    {"gpt-2", "I'M it's", {"I", "'", "M", " it", "'s"}},
    /* digits in groups of up to three, contractions in any case */
    {"llama-bpe", "Hello world's 12345 ...", {"Hello", " world", "'s", " ", "123", "45", " ..."}},
    {"llama-bpe", "I'M HERE'S 1234567", {"I", "'M", " HERE", "'S", " ", "123", "456", "7"}},
    /* whitespace up to the last newline, then one space less than the run */
    {"llama-bpe", "  \n\n  x", {"  \n\n", " ", " x"}},
    /* any one non-letter in front of letters; newlines after punctuation */
    {"llama-bpe", "x = f(y);\n\treturn", {"x", " =", " f", "(y", ");\n", "\treturn"}},
    /* digits one by one */
    {"qwen2", "Hello world's 12345 ...",
     {"Hello", " world", "'s", " ", "1", "2", "3", "4", "5", " ..."}},
    {"qwen2", "i++; // 42", {"i", "++;", " //", " ", "4", "2"}},
    /* punctuation runs first, then GPT-2, numbers, then threes of digits */
    {"default", "Hello world's 12345 ...",
     {"Hello", " world", "'", "s", " ", "123", "45", " ", "..."}},
    {"falcon", "Hello world's 12345 ...",
     {"Hello", " world", "'", "s", " ", "123", "45", " ", "..."}},
    {"falcon", "a`b", {"a", "`", "b"}},
    {"starcoder", "Hello world's 12345 ...",
     {"Hello", " world", "'s", " ", "1", "2", "3", "4", "5", " ..."}},
    {"deepseek-coder", "Hello world's 12345 ...",
     {"Hello", " world", "'", "s", " ", "1", "2", "3", "4", "5", " ..."}},
    /* CR and LF alone, and the CJK range splits a space off a word */
    {"deepseek-coder", "a\r\n \xe4\xbd\xa0\xe5\xa5\xbd",
     {"a", "\r", "\n", " ", "\xe4\xbd\xa0\xe5\xa5\xbd"}},
    {"deepseek-llm", "Hello world's 12345 ...",
     {"Hello", " world", "'", "s", " ", "12345", " ..."}},
    /* U+3000 is whitespace, U+3002 falls in the CJK range; trailing spaces */
    {"deepseek-llm", "x\xe3\x80\x80\xe3\x80\x82y  ",
     {"x", "\xe3\x80\x80", "\xe3\x80\x82", "y", "  "}},
};

static void test_pretokenizers(void **state)
{
    (void)state;
    nbi_pretok p = {0};
    for (size_t c = 0; c < sizeof split_cases / sizeof split_cases[0]; c++) {
        const char *text = split_cases[c].text;
        int kind = nbi_pre_find(split_cases[c].pre, strlen(split_cases[c].pre));
        assert_true(kind >= 0);
        assert_int_equal(nbi_pretok_run(&p, kind, text, strlen(text)), NB_OK);
        size_t want = 0;
        while (want < 12 && split_cases[c].pieces[want])
            want++;
        size_t a = 0;
        for (size_t i = 0; i < p.n_pieces || i < want; i++) {
            const char *w = i < want ? split_cases[c].pieces[i] : "(none)";
            if (i >= p.n_pieces)
                fail_msg("%s '%s': piece %zu missing, want '%s'", split_cases[c].pre, text, i, w);
            size_t b = p.ends[i], len = p.off[b] - p.off[a];
            if (i >= want || len != strlen(w) || memcmp(p.text + p.off[a], w, len) != 0)
                fail_msg("%s '%s': piece %zu is '%.*s', want '%s'", split_cases[c].pre, text, i,
                         (int)len, p.text + p.off[a], w);
            a = b;
        }
    }
    /* the names llama.cpp uses for the same rules */
    static const char *const alias[][2] = {
        {"mpt", "gpt-2"},           {"llama3", "llama-bpe"}, {"refact", "starcoder"},
        {"deepseek-r1-qwen", "qwen2"}, {"smollm", "starcoder"},
    };
    for (size_t i = 0; i < sizeof alias / sizeof alias[0]; i++) {
        int k = nbi_pre_find(alias[i][0], strlen(alias[i][0]));
        assert_true(k >= 0);
        assert_string_equal(nbi_pre_name(k), alias[i][1]);
    }
    assert_int_equal(nbi_pre_find("gpt-2x", 6), -1);
    assert_int_equal(nbi_pre_find("gpt-", 4), -1);
    assert_int_equal(nbi_pre_find("", 0), -1);
    /* empty text: no pieces; invalid bytes: U+FFFD, one per byte */
    assert_int_equal(nbi_pretok_run(&p, NBI_PRE_GPT2, "", 0), NB_OK);
    assert_int_equal(p.n_pieces, 0);
    assert_int_equal(nbi_pretok_run(&p, NBI_PRE_GPT2, "a\xff\xc3", 3), NB_OK);
    assert_int_equal(p.text_len, 7);
    assert_memory_equal(p.text, "a\xef\xbf\xbd\xef\xbf\xbd", 7);
    nbi_pretok_free(&p);
    printf("    %zu hand-worked splits agree\n", sizeof split_cases / sizeof split_cases[0]);
}

/* ------------------------------------------------------------------ BPE oracle */

/* The vocabulary as the public API shows it: token texts, types and
 * merges, looked up by binary search. */
typedef struct naive_vocab {
    nv_str *tok;      /* sorted by text */
    int64_t n_tok;
    nv_str *merge;    /* "A B", sorted by text */
    int64_t n_merge;
    char **text;      /* by id */
    size_t *len;
    int32_t *type;
    nb_token *user;   /* user-defined tokens, longest first */
    int64_t n_user;
    int ignore_merges;
} naive_vocab;

static int nv_cmp(const void *a, const void *b)
{
    const nv_str *x = a, *y = b;
    int c = memcmp(x->s, y->s, x->n < y->n ? x->n : y->n);
    if (c)
        return c;
    if (x->n != y->n)
        return x->n < y->n ? -1 : 1;
    return x->val < y->val ? -1 : x->val > y->val; /* duplicates: the first */
}

static int32_t nv_find(const nv_str *v, int64_t n, const char *s, size_t len)
{
    int64_t lo = 0, hi = n;
    while (lo < hi) {
        int64_t mid = lo + (hi - lo) / 2;
        nv_str key = {(char *)s, len, INT32_MIN};
        if (nv_cmp(&v[mid], &key) < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    if (lo < n && v[lo].n == len && memcmp(v[lo].s, s, len) == 0)
        return v[lo].val;
    return -1;
}

static int user_longest_first(const void *a, const void *b, void *vp)
{
    const naive_vocab *nv = vp;
    nb_token x = *(const nb_token *)a, y = *(const nb_token *)b;
    if (nv->len[x] != nv->len[y])
        return nv->len[x] > nv->len[y] ? -1 : 1;
    return x < y ? -1 : x > y;
}

static void naive_load(naive_vocab *nv, const nb_model *m, const char *pre)
{
    const nb_gguf *g = nb_model_gguf(m);
    memset(nv, 0, sizeof *nv);
    nv->tok = parse_strings(g, "tokenizer.ggml.tokens", &nv->n_tok);
    assert_int_equal(nv->n_tok, nb_model_n_vocab(m));
    nv->text = malloc((size_t)nv->n_tok * sizeof *nv->text);
    nv->len = malloc((size_t)nv->n_tok * sizeof *nv->len);
    for (int64_t i = 0; i < nv->n_tok; i++) {
        nv->text[i] = nv->tok[i].s;
        nv->len[i] = nv->tok[i].n;
    }
    qsort(nv->tok, (size_t)nv->n_tok, sizeof *nv->tok, nv_cmp);
    nv->merge = parse_strings(g, "tokenizer.ggml.merges", &nv->n_merge);
    qsort(nv->merge, (size_t)nv->n_merge, sizeof *nv->merge, nv_cmp);
    int64_t nty;
    float *types = parse_numbers(g, "tokenizer.ggml.token_type", &nty);
    assert_int_equal(nty, nv->n_tok);
    nv->type = malloc((size_t)nv->n_tok * sizeof *nv->type);
    nv->user = malloc((size_t)nv->n_tok * sizeof *nv->user);
    for (int64_t i = 0; i < nv->n_tok; i++)
        nv->type[i] = (int32_t)types[i];
    free(types);
    for (int64_t i = 0; i < nv->n_tok; i++)
        if (nv->type[i] == 4 && nv->len[i])
            nv->user[nv->n_user++] = (nb_token)i;
    qsort_r(nv->user, (size_t)nv->n_user, sizeof *nv->user, user_longest_first, nv);
    nv->ignore_merges = !strcmp(pre, "llama-bpe");
}

static void naive_free(naive_vocab *nv)
{
    for (int64_t i = 0; i < nv->n_tok; i++)
        free(nv->tok[i].s);
    for (int64_t i = 0; i < nv->n_merge; i++)
        free(nv->merge[i].s);
    free(nv->tok);
    free(nv->merge);
    free(nv->text);
    free(nv->len);
    free(nv->type);
    free(nv->user);
}

/* GPT-2's bytes_to_unicode, from its definition: the printable Latin-1
 * bytes stand for themselves, the others for 256, 257, ... in order. */
static size_t gpt2_char(unsigned char b, char *out)
{
    unsigned cp = b, n = 0;
    int printable = (b >= '!' && b <= '~') || (b >= 0xa1 && b <= 0xac) || b >= 0xae;
    if (!printable) {
        for (unsigned c = 0; c < b; c++)
            n += !((c >= '!' && c <= '~') || (c >= 0xa1 && c <= 0xac) || c >= 0xae);
        cp = 256 + n;
    }
    if (cp < 0x80) {
        out[0] = (char)cp;
        return 1;
    }
    out[0] = (char)(0xc0 | (cp >> 6));
    out[1] = (char)(0x80 | (cp & 0x3f));
    return 2;
}

/* BPE stated as plainly as possible: every byte a symbol; repeatedly merge
 * the adjacent pair listed first in the merges (leftmost among equals),
 * until no pair is listed.  Quadratic, and independent of the heap and
 * the id-keyed table under test. */
static void naive_bpe(const naive_vocab *nv, const unsigned char *w, size_t n, nb_token *out,
                      int64_t *k)
{
    span *sym = malloc((n + 1) * sizeof *sym);
    size_t ns = 0;
    char *all = malloc(2 * n + 1);
    size_t na = 0;
    for (size_t i = 0; i < n; i++) {
        sym[ns].s = malloc(3);
        sym[ns].n = gpt2_char(w[i], sym[ns].s);
        memcpy(all + na, sym[ns].s, sym[ns].n);
        na += sym[ns].n;
        ns++;
    }
    int32_t whole = nv->ignore_merges ? nv_find(nv->tok, nv->n_tok, all, na) : -1;
    if (whole >= 0) {
        out[(*k)++] = whole;
        ns = 0;
    }
    for (;;) {
        int32_t best = -1;
        size_t at = 0;
        for (size_t i = 0; i + 1 < ns; i++) {
            char key[1024];
            if (sym[i].n + 1 + sym[i + 1].n > sizeof key)
                continue;
            memcpy(key, sym[i].s, sym[i].n);
            key[sym[i].n] = ' ';
            memcpy(key + sym[i].n + 1, sym[i + 1].s, sym[i + 1].n);
            int32_t r = nv_find(nv->merge, nv->n_merge, key, sym[i].n + 1 + sym[i + 1].n);
            if (r >= 0 && (best < 0 || r < best)) {
                best = r;
                at = i;
            }
        }
        if (best < 0)
            break;
        char *j = malloc(sym[at].n + sym[at + 1].n);
        memcpy(j, sym[at].s, sym[at].n);
        memcpy(j + sym[at].n, sym[at + 1].s, sym[at + 1].n);
        size_t jn = sym[at].n + sym[at + 1].n;
        free(sym[at].s);
        free(sym[at + 1].s);
        sym[at].s = j;
        sym[at].n = jn;
        memmove(sym + at + 1, sym + at + 2, (ns - at - 2) * sizeof *sym);
        ns--;
    }
    for (size_t i = 0; i < ns; i++) {
        int32_t id = nv_find(nv->tok, nv->n_tok, sym[i].s, sym[i].n);
        if (id >= 0) {
            out[(*k)++] = id;
        } else { /* as llama.cpp: the symbol's bytes as one-byte tokens, if any */
            for (size_t b = 0; b < sym[i].n; b++)
                if ((id = nv_find(nv->tok, nv->n_tok, sym[i].s + b, 1)) >= 0)
                    out[(*k)++] = id;
        }
        free(sym[i].s);
    }
    free(all);
    free(sym);
}

/* What nb_tokenize(text, flags 0) must give: user-defined tokens cut out
 * (longest first, each cutting what the longer ones left, left to right),
 * the rest pre-tokenized and merged piece by piece. */
static int64_t naive_tokenize(const naive_vocab *nv, int pre, const char *text, size_t len,
                              nb_token *out)
{
    typedef struct frag {
        size_t off, len;
        nb_token tok;
    } frag;
    size_t cap = 2 * len + 2, nf = 1;
    frag *f = malloc(cap * sizeof *f), *g = malloc(cap * sizeof *g);
    f[0] = (frag){0, len, -1};
    for (int64_t u = 0; u < nv->n_user; u++) {
        nb_token id = nv->user[u];
        size_t ng = 0;
        for (size_t i = 0; i < nf; i++) {
            frag x = f[i];
            while (x.tok < 0 && x.len >= nv->len[id]) {
                const char *hit = memmem(text + x.off, x.len, nv->text[id], nv->len[id]);
                if (!hit)
                    break;
                size_t left = (size_t)(hit - text) - x.off;
                if (left)
                    g[ng++] = (frag){x.off, left, -1};
                g[ng++] = (frag){0, 0, id};
                x.off += left + nv->len[id];
                x.len -= left + nv->len[id];
            }
            if (x.tok >= 0 || x.len)
                g[ng++] = x;
        }
        frag *t = f;
        f = g;
        g = t;
        nf = ng;
    }
    int64_t k = 0;
    nbi_pretok p = {0};
    for (size_t i = 0; i < nf; i++) {
        if (f[i].tok >= 0) {
            out[k++] = f[i].tok;
            continue;
        }
        assert_int_equal(nbi_pretok_run(&p, pre, text + f[i].off, f[i].len), NB_OK);
        size_t a = 0;
        for (size_t j = 0; j < p.n_pieces; j++) {
            size_t b = p.ends[j];
            naive_bpe(nv, (const unsigned char *)p.text + p.off[a], p.off[b] - p.off[a], out, &k);
            a = b;
        }
    }
    nbi_pretok_free(&p);
    free(f);
    free(g);
    return k;
}

/* xorshift: the same strings on every run */
static uint64_t rng_state = 0x9e3779b97f4a7c15ull;
static uint32_t rnd(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (uint32_t)(rng_state >> 32);
}

/* Pieces of many scripts and classes, glued at random. */
static const char *const alphabet[] = {
    "a", "b", "e", "s", "t", "x", "Z", "Q", "M", "ing", "the", "Hello", "0", "1", "7", "42",
    "2024", " ", " ", " ", "  ", "    ", "\t", "\n", "\n\n", "\r\n", "'", "'s", "'LL", "'ve",
    "!", "?", ".", ",", "...", "-", "_", "(", ")", "{", "}", "[", "]", "<", ">", "=", "==", "+",
    "*", "/", "//", "#", "$", "%", "&", "|", "^", "~", "`", "\\", "\"", ";", ":", "@",
    "\xc3\xa9", "\xc3\x9f", "\xc3\xb1", "\xc3\xb5", "\xc2\xb5", "\xc2\xbd", "\xc2\xa0",
    "\xce\xb1\xce\xb2", "\xce\xa9", "\xd0\x96\xd0\xb8", "\xd7\xa9", "\xd9\x85", "\xd9\xa3",
    "\xe4\xbd\xa0", "\xe5\xa5\xbd", "\xe4\xb8\x96\xe7\x95\x8c", "\xe3\x81\x82", "\xe3\x82\xab",
    "\xed\x95\x9c", "\xea\xb5\xad", "\xe3\x80\x80", "\xe3\x80\x82", "\xef\xbc\x81",
    "\xef\xbc\x91", "\xe2\x80\xa6", "\xe2\x80\x9c", "\xe2\x80\x94", "\xe2\x82\xac",
    "\xe2\x88\x91", "\xe2\x80\x8b", "\xe2\x80\xa8", "\xcc\x81", "\xe2\x83\x9d",
    "\xf0\x9f\x98\x80", "\xf0\x9f\x91\x8d\xf0\x9f\x8f\xbd", "\xe2\x9d\xa4\xef\xb8\x8f",
    "\xf0\xa0\x80\x80", "\xe0\xa4\x95\xe0\xa5\x8d", "\xe0\xb8\x81",
};

static char *random_text(size_t *len)
{
    size_t n = rnd() % 40, k = 0;
    char *s = malloc(n * 12 + 1);
    for (size_t i = 0; i < n; i++) {
        const char *a = alphabet[rnd() % (sizeof alphabet / sizeof alphabet[0])];
        memcpy(s + k, a, strlen(a));
        k += strlen(a);
    }
    s[k] = 0;
    *len = k;
    return s;
}

static void compare_naive(const nb_model *m, const naive_vocab *nv, int pre, const char *label,
                          const char *s, size_t len)
{
    int64_t n;
    nb_token *ids = tok(m, s, len, 0, &n);
    nb_token *want = malloc((3 * len + 8) * sizeof *want);
    int64_t nw = naive_tokenize(nv, pre, s, len, want);
    if (n != nw || memcmp(ids, want, (size_t)n * sizeof *ids) != 0) {
        char a[4096] = "", b[4096] = "";
        size_t ka = 0, kb = 0;
        for (int64_t j = 0; j < n && ka < 4000; j++)
            ka += (size_t)snprintf(a + ka, sizeof a - ka, " %d", ids[j]);
        for (int64_t j = 0; j < nw && kb < 4000; j++)
            kb += (size_t)snprintf(b + kb, sizeof b - kb, " %d", want[j]);
        fail_msg("%s: '%.*s'\n got %s\nwant %s", label, (int)len, s, a, b);
    }
    for (int64_t j = 0; j < n; j++)
        assert_true(ids[j] >= 0 && ids[j] < nb_model_n_vocab(m));
    free(want);
    free(ids);
}

static void check_round_trip(const nb_model *m, const char *label, const char *s, size_t len)
{
    int64_t n;
    nb_token *ids = tok(m, s, len, 0, &n);
    size_t dl;
    char *back = detok_all(m, ids, n, &dl);
    if (dl != len || memcmp(back, s, len) != 0)
        fail_msg("%s: '%.*s' came back as '%.*s'", label, (int)len, s, (int)dl, back);
    free(back);
    free(ids);
}

/* Long runs that a careless regex engine would take quadratic time on. */
static char *long_run(int which, size_t *len)
{
    size_t n = 100000;
    char *s = malloc(n + 2);
    for (size_t i = 0; i < n; i++)
        s[i] = which == 0 ? ' ' : which == 1 ? '\n' : which == 2 ? (char)('0' + i % 10)
             : which == 3 ? " \t\n"[i % 3] : 'a';
    s[n] = 'x';
    *len = n + 1;
    return s;
}

static void test_bpe_oracle(void **state)
{
    (void)state;
    NBT_REQUIRE_DATA();
    for (size_t v = 0; v < N_BPE_VOCABS; v++) {
        nb_model *m = open_vocab(bpe_vocabs[v][0]);
        int pre = nbi_pre_find(bpe_vocabs[v][1], strlen(bpe_vocabs[v][1]));
        assert_string_equal(nb_model_pre_tokenizer(m), bpe_vocabs[v][1]);
        naive_vocab nv;
        naive_load(&nv, m, bpe_vocabs[v][1]);
        int checked = 0;
        for (size_t i = 0; i < sizeof other_strings / sizeof other_strings[0]; i++, checked++) {
            const char *s = other_strings[i];
            compare_naive(m, &nv, pre, bpe_vocabs[v][0], s, strlen(s));
            if (!strstr(s, "invalid"))
                check_round_trip(m, bpe_vocabs[v][0], s, strlen(s));
        }
        rng_state = 0x9e3779b97f4a7c15ull + v;
        for (int i = 0; i < 2000; i++, checked++) {
            size_t len;
            char *s = random_text(&len);
            compare_naive(m, &nv, pre, bpe_vocabs[v][0], s, len);
            check_round_trip(m, bpe_vocabs[v][0], s, len);
            free(s);
        }
        printf("    %s: %d other strings agree with the naive merge and round-trip\n",
               bpe_vocabs[v][0], checked);
        naive_free(&nv);
        nb_model_close(m);
    }
}

static void test_bpe_long_runs(void **state)
{
    (void)state;
    NBT_REQUIRE_DATA();
    static const char *const what[] = {"spaces", "newlines", "digits", "mixed whitespace",
                                       "letters"};
    for (size_t v = 0; v < N_BPE_VOCABS; v++) {
        nb_model *m = open_vocab(bpe_vocabs[v][0]);
        for (int w = 0; w < 5; w++) {
            size_t len;
            char *s = long_run(w, &len);
            clock_t t0 = clock();
            check_round_trip(m, what[w], s, len);
            double secs = (double)(clock() - t0) / CLOCKS_PER_SEC;
            /* 100 kB: linear time is a few milliseconds */
            if (secs > 2.0)
                fail_msg("%s: 100 kB of %s took %.2f s", bpe_vocabs[v][0], what[w], secs);
            free(s);
        }
        nb_model_close(m);
    }
}

/* ------------------------------------------------------------------ BPE behaviour */

static void expect_same_ids(const nb_model *m, const char *a, size_t la, const char *b,
                            size_t lb)
{
    int64_t na, nb;
    nb_token *x = tok(m, a, la, 0, &na), *y = tok(m, b, lb, 0, &nb);
    assert_int_equal(na, nb);
    assert_memory_equal(x, y, (size_t)na * sizeof *x);
    free(x);
    free(y);
}

static void test_bpe_behaviour(void **state)
{
    (void)state;
    NBT_REQUIRE_DATA();
    nb_model *m = open_vocab("vocab/ggml-vocab-gpt-2.gguf");
    nb_token eot = 50256;
    assert_int_equal(nb_model_bos(m), eot);
    assert_int_equal(nb_model_eos(m), eot);
    assert_true(nb_model_is_eog(m, eot));
    /* GPT-2 adds no BOS (no add_bos_token key: llama.cpp's default) */
    int64_t n;
    nb_token *ids = tok(m, "Hello", 5, NB_TOK_ADD_SPECIAL, &n);
    assert_int_equal(n, 1);
    assert_int_equal(ids[0], 15496);
    free(ids);
    /* the control token only with PARSE_SPECIAL, and shown only when asked */
    const char *s = "a<|endoftext|>b";
    ids = tok(m, s, strlen(s), NB_TOK_PARSE_SPECIAL, &n);
    assert_int_equal(n, 3);
    assert_int_equal(ids[1], eot);
    free(ids);
    ids = tok(m, s, strlen(s), 0, &n);
    assert_true(n > 3);
    for (int64_t i = 0; i < n; i++)
        assert_int_not_equal(ids[i], eot);
    free(ids);
    char piece[NB_MAX_PIECE];
    assert_int_equal(nb_token_piece(m, eot, piece, sizeof piece, 0), 0);
    assert_int_equal(nb_token_piece(m, eot, piece, sizeof piece, NB_PIECE_SPECIAL), 13);
    /* pieces map back through byte-to-unicode: "Ġworld" is " world" */
    ids = tok(m, " world\n", 7, 0, &n);
    assert_int_equal(n, 2);
    assert_int_equal(nb_token_piece(m, ids[0], piece, sizeof piece, 0), 6);
    assert_memory_equal(piece, " world", 6);
    assert_int_equal(nb_token_piece(m, ids[1], piece, sizeof piece, 0), 1);
    assert_int_equal(piece[0], '\n');
    free(ids);
    /* invalid UTF-8: each byte that starts no character is U+FFFD, as in
     * llama.cpp; overlong forms decode to their code point */
    expect_same_ids(m, "a\xff" "b", 3, "a\xef\xbf\xbd" "b", 5);
    expect_same_ids(m, "\xc3", 1, "\xef\xbf\xbd", 3);
    expect_same_ids(m, "\xe2\x82" "x", 3, "\xef\xbf\xbd\xef\xbf\xbd" "x", 7);
    expect_same_ids(m, "\xf4\x90\x80\x80", 4,
                    "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd", 12);
    expect_same_ids(m, "\xc0\xaf", 2, "/", 1);
    /* an emoji split over byte-level tokens streams out whole */
    const char *emoji = "\xf0\x9f\xa6\x99"; /* U+1F999 */
    ids = tok(m, emoji, 4, 0, &n);
    assert_true(n >= 2);
    nb_detok d;
    nb_detok_init(&d, 0);
    char out[3 * NB_MAX_PIECE + 4];
    size_t total = 0;
    for (int64_t i = 0; i < n; i++) {
        size_t k = nb_detok_push(&d, m, ids[i], out, sizeof out);
        if (i < n - 1)
            assert_int_equal(k, 0);
        else
            assert_memory_equal(out, emoji, 4);
        total += k;
    }
    assert_int_equal(total, 4);
    free(ids);
    nb_model_close(m);

    /* DeepSeek Coder adds BOS; its user-defined tokens need no flag */
    m = open_vocab("vocab/ggml-vocab-deepseek-coder.gguf");
    ids = tok(m, "x", 1, NB_TOK_ADD_SPECIAL, &n);
    assert_int_equal(n, 2);
    assert_int_equal(ids[0], 32013);
    free(ids);
    nb_model_close(m);

    /* SentencePiece has no pre-tokenizer */
    m = open_vocab("vocab/ggml-vocab-llama-spm.gguf");
    assert_string_equal(nb_model_pre_tokenizer(m), "");
    nb_model_close(m);
}

/* The prompts of llama.cpp's reference runs on whole models with BPE
 * vocabularies (../shared/reference) tokenize to the same ids, BOS
 * included when the model adds one: Qwen2's vocabulary is checked here
 * even before its architecture runs. */
static void test_bpe_reference_prompts(void **state)
{
    (void)state;
    NBT_REQUIRE_DATA();
    static const char *const models[] = {"llama-bpe-random-f16", "qwen2-random-f16",
                                         "qwen2-random-q8_0"};
    for (size_t i = 0; i < sizeof models / sizeof models[0]; i++) {
        char rel[128];
        snprintf(rel, sizeof rel, "reference/%s.jsonl", models[i]);
        char *path = nbt_data_path(rel);
        size_t len;
        char *text = nbt_read_file(path, &len);
        assert_non_null(text);
        snprintf(rel, sizeof rel, "models/%s.gguf", models[i]);
        nb_model *m = open_vocab(rel);
        int n_prompts = 0;
        for (char *line = text, *next; line && *line; line = next) {
            next = strchr(line, '\n');
            if (next)
                *next++ = 0;
            /* the decoded continuation may cut a character, which jansson
             * refuses: mark such bytes (the prompt is valid UTF-8) */
            size_t ll = strlen(line);
            for (size_t c = 0; c < ll;) {
                int cl = nbi_utf8_valid_len((const unsigned char *)line + c, ll - c);
                if (cl > 0) {
                    c += (size_t)cl;
                } else {
                    line[c++] = '?';
                }
            }
            json_error_t jerr;
            json_t *ref = json_loads(line, 0, &jerr);
            if (!ref)
                fail_msg("%s: %s", path, jerr.text);
            const char *prompt = json_string_value(json_object_get(ref, "prompt"));
            json_t *want = json_object_get(ref, "tokens");
            assert_non_null(prompt);
            int64_t n;
            nb_token *ids = tok(m, prompt, strlen(prompt), NB_TOK_ADD_SPECIAL, &n);
            assert_int_equal(n, (int64_t)json_array_size(want));
            for (int64_t k = 0; k < n; k++)
                assert_int_equal(ids[k], json_integer_value(json_array_get(want, (size_t)k)));
            free(ids);
            json_decref(ref);
            n_prompts++;
        }
        assert_true(n_prompts > 0);
        printf("    %s (%s): %d prompts tokenized as llama.cpp did\n", models[i],
               nb_model_pre_tokenizer(m), n_prompts);
        nb_model_close(m);
        free(text);
        free(path);
    }
}

/* ------------------------------------------------------------------ refused */

/* A vocabulary-only BPE file: the 256 byte characters, "ab", "abc" (by
 * merges) and "xyz" (without). */
static gguf_builder *tiny_bpe(void)
{
    gguf_builder *b = gb_new();
    static char chars[256][3];
    const char *toks[259];
    for (int i = 0; i < 256; i++) {
        size_t n = gpt2_char((unsigned char)i, chars[i]);
        chars[i][n] = 0;
        toks[i] = chars[i];
    }
    toks[256] = "ab";
    toks[257] = "abc";
    toks[258] = "xyz";
    gb_kv_str(b, "general.architecture", "llama");
    gb_kv_str(b, "tokenizer.ggml.model", "gpt2");
    gb_kv_str(b, "tokenizer.ggml.pre", "gpt-2");
    gb_kv_arr_str(b, "tokenizer.ggml.tokens", toks, 259);
    static const char *const merges[] = {"a b", "ab c"};
    gb_kv_arr_str(b, "tokenizer.ggml.merges", merges, 2);
    return b;
}

static nb_status open_built(gguf_builder *b, nb_model **m, char *err, size_t errlen)
{
    size_t len;
    uint8_t *img = gb_build(b, &len);
    assert_non_null(img);
    char *path = nbt_write_temp(img, len, ".gguf");
    nb_model_params p = nb_model_default_params();
    p.vocab_only = 1;
    *m = NULL;
    nb_status st = nb_model_open(path, &p, m, err, errlen);
    unlink(path);
    free(path);
    free(img);
    gb_free(b);
    return st;
}

static void expect_refused(gguf_builder *b, nb_status want, const char *needle)
{
    nb_model *m;
    char err[1024];
    nb_status st = open_built(b, &m, err, sizeof err);
    if (st != want || !strstr(err, needle))
        fail_msg("status %d '%s', want %d with '%s'", st, st ? err : "", want, needle);
    assert_null(m);
}

static void test_bpe_refused(void **state)
{
    (void)state;
    /* the builder's file itself loads, and merges as listed */
    gguf_builder *b;
    nb_model *m;
    char err[1024];
    assert_int_equal(open_built(tiny_bpe(), &m, err, sizeof err), NB_OK);
    int64_t n;
    nb_token *ids = tok(m, "abcab a", 7, 0, &n);
    assert_int_equal(n, 4);
    assert_int_equal(ids[0], 257);
    assert_int_equal(ids[1], 256);
    assert_int_equal(ids[2], ' '); /* "Ġ", byte 32's character, is token 32 */
    assert_int_equal(ids[3], 'a');
    free(ids);
    ids = tok(m, "xyz", 3, 0, &n);
    assert_int_equal(n, 3);
    free(ids);
    nb_model_close(m);
    /* Llama 3 takes a piece that is a token as it is, merges or not */
    b = tiny_bpe();
    gb_kv_remove(b, "tokenizer.ggml.pre");
    gb_kv_str(b, "tokenizer.ggml.pre", "llama-bpe");
    assert_int_equal(open_built(b, &m, err, sizeof err), NB_OK);
    ids = tok(m, "xyz abc", 7, NB_TOK_ADD_SPECIAL, &n);
    assert_int_equal(n, 4); /* BOS (llama.cpp's default for llama-bpe), "xyz", " ", "abc" */
    assert_int_equal(ids[0], 11);
    assert_int_equal(ids[1], 258);
    assert_int_equal(ids[2], ' ');
    assert_int_equal(ids[3], 257);
    free(ids);
    nb_model_close(m);

    b = tiny_bpe();
    gb_kv_remove(b, "tokenizer.ggml.pre");
    gb_kv_str(b, "tokenizer.ggml.pre", "gpt-7");
    expect_refused(b, NB_ERR_UNSUPPORTED, "pre-tokenizer 'gpt-7' (tokenizer.ggml.pre) is not "
                                          "supported; nibble knows default, gpt-2");
    b = tiny_bpe();
    gb_kv_remove(b, "tokenizer.ggml.model");
    gb_kv_str(b, "tokenizer.ggml.model", "bert");
    expect_refused(b, NB_ERR_UNSUPPORTED, "tokenizer 'bert' is not supported");
    b = tiny_bpe();
    gb_kv_remove(b, "tokenizer.ggml.merges");
    expect_refused(b, NB_ERR_FORMAT, "tokenizer.ggml.merges is missing");
    b = tiny_bpe();
    gb_kv_remove(b, "tokenizer.ggml.merges");
    int32_t nums[2] = {1, 2};
    gb_kv_arr(b, "tokenizer.ggml.merges", GB_INT32, nums, 2);
    expect_refused(b, NB_ERR_FORMAT, "tokenizer.ggml.merges");
    b = tiny_bpe();
    gb_kv_remove(b, "tokenizer.ggml.merges");
    gb_kv_str(b, "tokenizer.ggml.merges", "a b");
    expect_refused(b, NB_ERR_FORMAT, "tokenizer.ggml.merges");
    static const char *const unknown[] = {"a b", "ab qq"};
    b = tiny_bpe();
    gb_kv_remove(b, "tokenizer.ggml.merges");
    gb_kv_arr_str(b, "tokenizer.ggml.merges", unknown, 2);
    expect_refused(b, NB_ERR_FORMAT,
                   "tokenizer.ggml.merges[1] 'ab qq' merges an unknown token: 'qq' is not a "
                   "token");
    static const char *const no_result[] = {"b c"};
    b = tiny_bpe();
    gb_kv_remove(b, "tokenizer.ggml.merges");
    gb_kv_arr_str(b, "tokenizer.ggml.merges", no_result, 1);
    expect_refused(b, NB_ERR_FORMAT, "merges into no token: 'bc' is not a token");
    static const char *const no_space[] = {"abc", " ab", "ab ", "a", ""};
    for (int i = 0; i < 5; i++) {
        const char *bad[2] = {"a b", no_space[i]};
        b = tiny_bpe();
        gb_kv_remove(b, "tokenizer.ggml.merges");
        gb_kv_arr_str(b, "tokenizer.ggml.merges", bad, 2);
        expect_refused(b, NB_ERR_FORMAT, "is not two tokens separated by a space");
    }
    /* a count the file cannot hold is caught before anything is allocated */
    b = tiny_bpe();
    size_t len;
    uint8_t *img = gb_build(b, &len);
    gb_kv *kv = &b->kv[gb_kv_find(b, "tokenizer.ggml.merges")];
    gb_put_u64(img, kv->at_value + 4, UINT64_C(1) << 60);
    char *path = nbt_write_temp(img, len, ".gguf");
    nb_model_params p = nb_model_default_params();
    p.vocab_only = 1;
    nb_status st = nb_model_open(path, &p, &m, err, sizeof err);
    assert_int_equal(st, NB_ERR_FORMAT);
    assert_null(m);
    unlink(path);
    free(path);
    free(img);
    gb_free(b);
    /* random damage to the file: refused cleanly, or it works */
    b = tiny_bpe();
    int32_t types[259];
    for (int i = 0; i < 259; i++)
        types[i] = i == 11 ? 3 : i == 256 ? 4 : 1;
    gb_kv_arr(b, "tokenizer.ggml.token_type", GB_INT32, types, 259);
    gb_kv_remove(b, "tokenizer.ggml.pre");
    gb_kv_str(b, "tokenizer.ggml.pre", "llama-bpe");
    uint8_t *good = gb_build(b, &len);
    gb_free(b);
    path = nbt_write_temp(good, len, ".gguf");
    uint8_t *img2 = malloc(len);
    int opened = 0;
    rng_state = 12345;
    for (int i = 0; i < 1500; i++) {
        memcpy(img2, good, len);
        for (int k = 1 + (int)(rnd() % 4); k > 0; k--) {
            size_t at = rnd() % len;
            img2[at] = rnd() % 3 ? (uint8_t)rnd() : img2[at] ^ (uint8_t)(1u << (rnd() % 8));
        }
        FILE *fp = fopen(path, "wb");
        assert_non_null(fp);
        assert_int_equal(fwrite(img2, 1, len, fp), len);
        fclose(fp);
        if (nb_model_open(path, &p, &m, err, sizeof err) != NB_OK) {
            assert_null(m);
            assert_true(err[0] != 0);
            continue;
        }
        opened++;
        static const char text[] = "abc Hello\xff wo\xe2\x82rld's 123 \xf0\x9f\x98\x80 <|x|> ab";
        nb_token got[256];
        n = nb_tokenize(m, text, sizeof text - 1, got, 256,
                        NB_TOK_ADD_SPECIAL | NB_TOK_PARSE_SPECIAL);
        assert_true(n >= 0 && n <= 256);
        nb_detok d;
        nb_detok_init(&d, NB_PIECE_SPECIAL);
        char out[3 * NB_MAX_PIECE + 4];
        for (int64_t k = 0; k < n; k++) {
            assert_true(got[k] >= 0 && got[k] < nb_model_n_vocab(m));
            assert_true(nb_detok_push(&d, m, got[k], out, sizeof out) < sizeof out);
        }
        for (int t = 0; t < nb_model_n_vocab(m); t++)
            assert_true(nb_token_piece(m, t, out, NB_MAX_PIECE, NB_PIECE_SPECIAL) <= NB_MAX_PIECE);
        nb_model_close(m);
    }
    unlink(path);
    free(path);
    free(img2);
    free(good);
    printf("    1500 damaged vocabularies: %d still load and tokenize\n", opened);

    /* a missing pre-tokenizer is llama.cpp's "default" */
    b = tiny_bpe();
    gb_kv_remove(b, "tokenizer.ggml.pre");
    assert_int_equal(open_built(b, &m, err, sizeof err), NB_OK);
    assert_string_equal(nb_model_pre_tokenizer(m), "default");
    nb_model_close(m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_conformance),
        cmocka_unit_test(test_oracle_llama_spm),
        cmocka_unit_test(test_oracle_small_vocab),
        cmocka_unit_test(test_flags),
        cmocka_unit_test(test_round_trip),
        cmocka_unit_test(test_long_run),
        cmocka_unit_test(test_detok_stream),
        cmocka_unit_test(test_unicode_classes),
        cmocka_unit_test(test_pretokenizers),
        cmocka_unit_test(test_bpe_oracle),
        cmocka_unit_test(test_bpe_long_runs),
        cmocka_unit_test(test_bpe_behaviour),
        cmocka_unit_test(test_bpe_reference_prompts),
        cmocka_unit_test(test_bpe_refused),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
