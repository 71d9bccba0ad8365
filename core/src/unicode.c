/*
 * unicode.c - UTF-8 decoding, character classes, and the pre-tokenizers
 * of byte-level BPE vocabularies.
 *
 * A BPE vocabulary names its pre-tokenizer (tokenizer.ggml.pre): a list of
 * regular expressions, applied one after the other, each cutting every
 * piece of the text so far into its matches and the gaps between them, as
 * llama.cpp's unicode_regex_split does.  Each expression is written here
 * by hand as a function that matches at one position, with the semantics
 * of a backtracking regex engine (ordered alternatives, greedy
 * quantifiers), and runs in time linear in the piece.  \p{L}, \p{N} and
 * so on are the general categories of unicode_data.c; \s is the
 * White_Space property.
 *
 * Text is decoded as llama.cpp decodes it, so that the same bytes give the
 * same tokens: a sequence is taken by its lead byte and needs only the
 * right number of continuation bytes (so overlong forms and surrogates
 * decode to their value, and are re-encoded in the shortest form), and a
 * byte that starts no such sequence becomes U+FFFD.  Values above U+10FFFF
 * (which llama.cpp cannot re-encode and rejects) also become U+FFFD, one
 * per byte.
 */
#include <stdlib.h>
#include <string.h>

#include "internal.h"

/* ------------------------------------------------------------------ classes */

uint8_t nbi_unicode_flags(uint32_t cp)
{
    if (cp < 256)
        return nbi_unicode_latin1[cp];
    if (cp > 0x10ffff)
        return 0;
    /* the last range whose first code point is <= cp */
    size_t lo = 0, hi = nbi_unicode_n_ranges;
    while (hi - lo > 1) {
        size_t mid = lo + (hi - lo) / 2;
        if ((nbi_unicode_ranges[mid] >> 8) <= cp)
            lo = mid;
        else
            hi = mid;
    }
    return (uint8_t)(nbi_unicode_ranges[lo] & 0xff);
}

size_t nbi_utf8_decode(const unsigned char *s, size_t n, uint32_t *cp)
{
    unsigned char c = s[0];
    size_t len;
    uint32_t v;
    if (c < 0x80) {
        *cp = c;
        return 1;
    } else if (c < 0xc0) {
        goto invalid;
    } else if (c < 0xe0) {
        len = 2;
        v = c & 0x1f;
    } else if (c < 0xf0) {
        len = 3;
        v = c & 0x0f;
    } else if (c < 0xf8) {
        len = 4;
        v = c & 0x07;
    } else {
        goto invalid;
    }
    if (len > n)
        goto invalid;
    for (size_t i = 1; i < len; i++) {
        if ((s[i] & 0xc0) != 0x80)
            goto invalid;
        v = (v << 6) | (s[i] & 0x3f);
    }
    if (v > 0x10ffff)
        goto invalid;
    *cp = v;
    return len;
invalid:
    *cp = 0xfffd;
    return 1;
}

size_t nbi_utf8_encode(uint32_t cp, char *out)
{
    if (cp < 0x80) {
        out[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (char)(0xc0 | (cp >> 6));
        out[1] = (char)(0x80 | (cp & 0x3f));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (char)(0xe0 | (cp >> 12));
        out[1] = (char)(0x80 | ((cp >> 6) & 0x3f));
        out[2] = (char)(0x80 | (cp & 0x3f));
        return 3;
    }
    out[0] = (char)(0xf0 | (cp >> 18));
    out[1] = (char)(0x80 | ((cp >> 12) & 0x3f));
    out[2] = (char)(0x80 | ((cp >> 6) & 0x3f));
    out[3] = (char)(0x80 | (cp & 0x3f));
    return 4;
}

/* ------------------------------------------------------------------ expressions */

/* The text's code points and their flags.  A matcher sees one piece,
 * up to end, and never looks past it: a regex iterator over the piece
 * takes its end as the end of the input. */
typedef struct pctx {
    const uint32_t *cp;
    const uint8_t *fl;
} pctx;

#define FL NBI_U_LETTER
#define FN NBI_U_NUMBER
#define FP NBI_U_PUNCT
#define FS NBI_U_SPACE

static inline int is_crlf(uint32_t c) { return c == '\r' || c == '\n'; }
static inline int has(const pctx *c, size_t i, size_t end, uint8_t f)
{
    return i < end && (c->fl[i] & f);
}
/* [^\s\p{L}\p{N}] */
static inline int is_other(const pctx *c, size_t i, size_t end)
{
    return i < end && !(c->fl[i] & (FS | FL | FN));
}

/* Each matcher returns the end of the match at i (> i), or i for none. */
typedef size_t (*match_fn)(const pctx *c, size_t i, size_t end);

/* 's|'t|'re|'ve|'m|'ll|'d, case-sensitive or ASCII case-insensitive (no
 * other code point has one of these letters as its lowercase mapping, so
 * llama.cpp's (?i:...) and [sS] spellings agree). */
static size_t contraction(const pctx *c, size_t i, size_t end, int fold)
{
    if (c->cp[i] != '\'' || i + 1 >= end)
        return i;
    uint32_t a = c->cp[i + 1], b = i + 2 < end ? c->cp[i + 2] : 0;
    if (fold) {
        a = a < 128 && a >= 'A' && a <= 'Z' ? a + 32 : a;
        b = b < 128 && b >= 'A' && b <= 'Z' ? b + 32 : b;
    }
    if (a == 's' || a == 't' || a == 'm' || a == 'd')
        return i + 2;
    if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l'))
        return i + 3;
    return i;
}

static size_t run_of(const pctx *c, size_t i, size_t end, uint8_t f)
{
    while (has(c, i, end, f))
        i++;
    return i;
}

/* \s+(?!\S) then \s+: a whitespace run, less its last character when
 * something other than whitespace follows within the piece (that one is
 * left to start the next match); alone, a single one. */
static size_t space_run(const pctx *c, size_t i, size_t end, int then_any)
{
    size_t j = run_of(c, i, end, FS);
    if (j == i)
        return i;
    if (j < end) {
        if (j - i > 1)
            return j - 1;
        return then_any ? j : i;
    }
    return j;
}

/* GPT-2: 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S) */
static size_t m_gpt2(const pctx *c, size_t i, size_t end)
{
    size_t j = contraction(c, i, end, 0);
    if (j > i)
        return j;
    size_t k = i + (c->cp[i] == ' ');
    if (has(c, k, end, FL))
        return run_of(c, k, end, FL);
    if (has(c, k, end, FN))
        return run_of(c, k, end, FN);
    if (is_other(c, k, end)) {
        while (is_other(c, k, end))
            k++;
        return k;
    }
    return space_run(c, i, end, 0);
}

/* Llama 3 (digits_max 3) and Qwen2 (1):
 * (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|
 *  ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+ */
static size_t m_llama3_n(const pctx *c, size_t i, size_t end, size_t digits_max)
{
    size_t j = contraction(c, i, end, 1);
    if (j > i)
        return j;
    uint32_t ch = c->cp[i];
    if (c->fl[i] & FL)
        return run_of(c, i, end, FL);
    if (!is_crlf(ch) && !(c->fl[i] & FN) && has(c, i + 1, end, FL))
        return run_of(c, i + 1, end, FL);
    if (c->fl[i] & FN) {
        j = i + 1;
        while (j - i < digits_max && has(c, j, end, FN))
            j++;
        return j;
    }
    size_t k = i + (ch == ' ');
    if (is_other(c, k, end)) {
        while (is_other(c, k, end))
            k++;
        while (k < end && is_crlf(c->cp[k]))
            k++;
        return k;
    }
    /* \s*[\r\n]+: up to the last CR or LF of the whitespace run */
    size_t last = i;
    for (j = i; has(c, j, end, FS); j++)
        if (is_crlf(c->cp[j]))
            last = j + 1;
    if (last > i)
        return last;
    return space_run(c, i, end, 1);
}

static size_t m_llama3(const pctx *c, size_t i, size_t end) { return m_llama3_n(c, i, end, 3); }
static size_t m_qwen2(const pctx *c, size_t i, size_t end) { return m_llama3_n(c, i, end, 1); }

/* [\p{P}\$\+<=>\^~\|]+ (llama.cpp's default) and with ` (Falcon) */
static int punct_sym(uint32_t ch, uint8_t fl, int backtick)
{
    return (fl & FP) || ch == '$' || ch == '+' || ch == '<' || ch == '=' || ch == '>' ||
           ch == '^' || ch == '~' || ch == '|' || (backtick && ch == '`');
}
static size_t m_punct_run(const pctx *c, size_t i, size_t end, int backtick)
{
    while (i < end && punct_sym(c->cp[i], c->fl[i], backtick))
        i++;
    return i;
}
static size_t m_punct_default(const pctx *c, size_t i, size_t end)
{
    return m_punct_run(c, i, end, 0);
}
static size_t m_punct_falcon(const pctx *c, size_t i, size_t end)
{
    return m_punct_run(c, i, end, 1);
}

/* \p{N}+ and \p{N} */
static size_t m_numbers(const pctx *c, size_t i, size_t end) { return run_of(c, i, end, FN); }
static size_t m_number(const pctx *c, size_t i, size_t end) { return i + has(c, i, end, FN); }

/* [0-9][0-9][0-9] */
static size_t m_digits3(const pctx *c, size_t i, size_t end)
{
    if (i + 3 > end)
        return i;
    for (size_t k = i; k < i + 3; k++)
        if (c->cp[k] < '0' || c->cp[k] > '9')
            return i;
    return i + 3;
}

/* [\r\n] */
static size_t m_crlf(const pctx *c, size_t i, size_t end)
{
    return i + (i < end && is_crlf(c->cp[i]));
}

/* \s?X+ for a class X that contains no whitespace */
static size_t space_opt_run(const pctx *c, size_t i, size_t end, int (*in)(const pctx *, size_t))
{
    size_t k = i;
    if ((c->fl[i] & FS) && i + 1 < end && in(c, i + 1))
        k = i + 1;
    else if (!in(c, i))
        return i;
    while (k < end && in(c, k))
        k++;
    return k;
}

static int in_letter(const pctx *c, size_t i) { return (c->fl[i] & FL) != 0; }
static int in_punct(const pctx *c, size_t i) { return (c->fl[i] & FP) != 0; }

/* DeepSeek's explicit character classes.  llama.cpp runs these through
 * std::wregex on text whose non-ASCII whitespace became U+000B, so no
 * whitespace ever falls in one of their ranges. */
typedef struct cprange {
    uint32_t lo, hi;
} cprange;

static int in_ranges(const cprange *r, size_t n, uint32_t ch)
{
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (ch < r[mid].lo)
            hi = mid;
        else if (ch > r[mid].hi)
            lo = mid + 1;
        else
            return 1;
    }
    return 0;
}

/* [\u4e00-\u9fa5\u0800-\u4e00\uac00-\ud7ff] */
static int in_cjk(const pctx *c, size_t i)
{
    uint32_t ch = c->cp[i];
    return ((ch >= 0x0800 && ch <= 0x9fa5) || (ch >= 0xac00 && ch <= 0xd7ff)) &&
           !(c->fl[i] & FS);
}

/* DeepSeek LLM's letters: its tokenizer.json spells them out as a class
 * of 84 ranges, A-Za-z first, U+1E900-U+1E943 last: the cased letters
 * (Lu, Ll, Lt) of an older Unicode.  Each range is a maximal run of cased
 * letters in Unicode 15 too. */
static const cprange dsl_letters[] = {
    {0x0041, 0x005a}, {0x0061, 0x007a}, {0x00b5, 0x00b5}, {0x00c0, 0x00d6},
    {0x00d8, 0x00f6}, {0x00f8, 0x01ba}, {0x01bc, 0x01bf}, {0x01c4, 0x0293},
    {0x0295, 0x02af}, {0x0370, 0x0373}, {0x0376, 0x0377}, {0x037b, 0x037d},
    {0x037f, 0x037f}, {0x0386, 0x0386}, {0x0388, 0x038a}, {0x038c, 0x038c},
    {0x038e, 0x03a1}, {0x03a3, 0x03f5}, {0x03f7, 0x0481}, {0x048a, 0x052f},
    {0x0531, 0x0556}, {0x10a0, 0x10c5}, {0x13a0, 0x13f5}, {0x13f8, 0x13fd},
    {0x1c90, 0x1cba}, {0x1cbd, 0x1cbf}, {0x1d00, 0x1d2b}, {0x1d6b, 0x1d77},
    {0x1d79, 0x1d9a}, {0x1e00, 0x1f15}, {0x1f18, 0x1f1d}, {0x1f20, 0x1f45},
    {0x1f48, 0x1f4d}, {0x1f50, 0x1f57}, {0x1f59, 0x1f59}, {0x1f5b, 0x1f5b},
    {0x1f5d, 0x1f5d}, {0x1f5f, 0x1f7d}, {0x1f80, 0x1fb4}, {0x1fb6, 0x1fbc},
    {0x1fbe, 0x1fbe}, {0x1fc2, 0x1fc4}, {0x1fc6, 0x1fcc}, {0x1fd0, 0x1fd3},
    {0x1fd6, 0x1fdb}, {0x1fe0, 0x1fec}, {0x1ff2, 0x1ff4}, {0x1ff6, 0x1ffc},
    {0x2102, 0x2102}, {0x2107, 0x2107}, {0x210a, 0x2113}, {0x2115, 0x2115},
    {0x2119, 0x211d}, {0x2124, 0x2124}, {0x2126, 0x2126}, {0x2128, 0x2128},
    {0x212a, 0x212d}, {0x212f, 0x2134}, {0x2139, 0x2139}, {0x213c, 0x213f},
    {0x2145, 0x2149}, {0x214e, 0x214e}, {0x2183, 0x2184}, {0x2c00, 0x2c7b},
    {0x2c7e, 0x2ce4}, {0x2ceb, 0x2cee}, {0x2cf2, 0x2cf3}, {0xa640, 0xa66d},
    {0xa680, 0xa69b}, {0xa722, 0xa76f}, {0xa771, 0xa787}, {0xa78b, 0xa78e},
    {0xab70, 0xabbf}, {0xfb00, 0xfb06}, {0xfb13, 0xfb17}, {0xff21, 0xff3a},
    {0xff41, 0xff5a}, {0x10400, 0x1044f}, {0x104b0, 0x104d3}, {0x104d8, 0x104fb},
    {0x10c80, 0x10cb2}, {0x10cc0, 0x10cf2}, {0x118a0, 0x118df}, {0x1e900, 0x1e943},
};

static int in_dsl_letter(const pctx *c, size_t i)
{
    return in_ranges(dsl_letters, sizeof dsl_letters / sizeof dsl_letters[0], c->cp[i]);
}

/* [!-/:-~\uff01-\uff0f\uff1a-\uff5e\u2018-\u201f\u3000-\u3002] (U+3000 is
 * whitespace, so never in it) */
static int in_dsl_punct(const pctx *c, size_t i)
{
    static const cprange r[] = {{0x21, 0x2f},     {0x3a, 0x7e},     {0x2018, 0x201f},
                                {0x3001, 0x3002}, {0xff01, 0xff0f}, {0xff1a, 0xff5e}};
    return in_ranges(r, sizeof r / sizeof r[0], c->cp[i]);
}

static size_t m_ds_letters(const pctx *c, size_t i, size_t end)
{
    return space_opt_run(c, i, end, in_letter);
}
static size_t m_ds_punct(const pctx *c, size_t i, size_t end)
{
    return space_opt_run(c, i, end, in_punct);
}
static size_t m_dsl_letters(const pctx *c, size_t i, size_t end)
{
    return space_opt_run(c, i, end, in_dsl_letter);
}
static size_t m_dsl_punct(const pctx *c, size_t i, size_t end)
{
    return space_opt_run(c, i, end, in_dsl_punct);
}

static size_t m_cjk(const pctx *c, size_t i, size_t end)
{
    while (i < end && in_cjk(c, i))
        i++;
    return i;
}

/* \s+$ is handled by the driver (TRAILING_SPACE): it matches once per
 * piece, at the start of the piece's trailing whitespace. */
#define TRAILING_SPACE ((match_fn)0)

/* ------------------------------------------------------------------ pre-tokenizers */

#define MAX_PASSES 6

typedef struct pre_def {
    const char *names;  /* "name\0alias\0...\0" as tokenizer.ggml.pre spells them */
    int ignore_merges;  /* a whole piece that is a token is not merged (Llama 3) */
    int add_bos;        /* llama.cpp's add_bos default for the kind */
    int n_passes;
    match_fn passes[MAX_PASSES];
} pre_def;

/* Indexed by enum nbi_pre; from llama.cpp's llm_tokenizer_bpe and
 * llama_vocab::impl::load. */
static const pre_def pre_defs[NBI_PRE_COUNT] = {
    [NBI_PRE_DEFAULT] = {"default\0", 0, 0, 4,
                         {m_punct_default, m_gpt2, m_numbers, m_digits3}},
    [NBI_PRE_GPT2] = {"gpt-2\0mpt\0phi-2\0olmo\0jais\0", 0, 0, 1, {m_gpt2}},
    [NBI_PRE_LLAMA3] = {"llama-bpe\0llama3\0llama-v3\0falcon3\0pixtral\0", 1, 1, 1, {m_llama3}},
    [NBI_PRE_DBRX] = {"dbrx\0smaug-bpe\0", 0, 0, 1, {m_llama3}},
    [NBI_PRE_QWEN2] = {"qwen2\0deepseek-r1-qwen\0stablelm2\0megrez\0", 0, 0, 1, {m_qwen2}},
    [NBI_PRE_DEEPSEEK_LLM] = {"deepseek-llm\0", 0, 0, 6,
                              {m_crlf, m_dsl_letters, m_dsl_punct, TRAILING_SPACE, m_cjk,
                               m_numbers}},
    [NBI_PRE_DEEPSEEK_CODER] = {"deepseek-coder\0", 0, 0, 5,
                                {m_crlf, m_ds_letters, m_ds_punct, m_cjk, m_number}},
    [NBI_PRE_FALCON] = {"falcon\0", 0, 0, 3, {m_punct_falcon, m_gpt2, m_digits3}},
    [NBI_PRE_STARCODER] = {"starcoder\0refact\0smollm\0codeshell\0command-r\0exaone\0"
                           "minerva-7b\0",
                           0, 0, 2, {m_number, m_gpt2}},
};

int nbi_pre_find(const char *name, size_t len)
{
    for (int k = 0; k < NBI_PRE_COUNT; k++)
        for (const char *s = pre_defs[k].names; *s; s += strlen(s) + 1)
            if (strlen(s) == len && memcmp(s, name, len) == 0)
                return k;
    return -1;
}

const char *nbi_pre_name(int kind)
{
    return kind >= 0 && kind < NBI_PRE_COUNT ? pre_defs[kind].names : "";
}

size_t nbi_pre_list(char *buf, size_t cap)
{
    size_t k = 0;
    for (int p = 0; p < NBI_PRE_COUNT; p++)
        for (const char *s = pre_defs[p].names; *s; s += strlen(s) + 1) {
            size_t n = strlen(s);
            if (cap && k + n + 3 < cap) {
                if (k) {
                    memcpy(buf + k, ", ", 2);
                    k += 2;
                }
                memcpy(buf + k, s, n);
                k += n;
                buf[k] = 0;
            }
        }
    return k;
}

int nbi_pre_ignore_merges(int kind) { return pre_defs[kind].ignore_merges; }
int nbi_pre_add_bos(int kind) { return pre_defs[kind].add_bos; }

/* Pieces are never empty, so there are at most n of them: both lists
 * have that room. */
static inline void push_end(nbi_pretok *p, size_t end)
{
    p->next[p->n_next++] = end;
}

/* Cut piece [a, b) into the matches of m and the gaps between them. */
static void split_piece(nbi_pretok *p, const pctx *c, match_fn m, size_t a, size_t b)
{
    size_t i = a;
    if (m == TRAILING_SPACE) {
        size_t s = b;
        while (s > a && (c->fl[s - 1] & FS))
            s--;
        if (s > a && s < b)
            push_end(p, s);
        push_end(p, b);
        return;
    }
    size_t from = a; /* start of the current gap */
    while (i < b) {
        size_t e = m(c, i, b);
        if (e == i) {
            i++;
            continue;
        }
        if (i > from)
            push_end(p, i);
        push_end(p, e);
        from = i = e;
    }
    if (from < b)
        push_end(p, b);
}

/* The list just built (next) becomes the current one (ends). */
static void swap_lists(nbi_pretok *p)
{
    size_t *t = p->ends;
    p->ends = p->next;
    p->n_pieces = p->n_next;
    p->next = t;
    p->n_next = 0;
}

void nbi_pretok_free(nbi_pretok *p)
{
    if (!p)
        return;
    free(p->cp);
    free(p->fl);
    free(p->text);
    free(p->off);
    free(p->ends);
    free(p->next);
    memset(p, 0, sizeof *p);
}

nb_status nbi_pretok_run(nbi_pretok *p, int kind, const char *text, size_t len)
{
    if (kind < 0 || kind >= NBI_PRE_COUNT)
        return NB_ERR_INVALID;
    /* every byte may become U+FFFD: 3 bytes of text for each */
    if (len > SIZE_MAX / 4 - 1)
        return NB_ERR_NOMEM;
    if (!p->cp || len > p->cap_len) {
        nbi_pretok_free(p);
        /* a code point takes at least one byte */
        p->cp = nbi_malloc_array(len + 1, sizeof *p->cp);
        p->fl = malloc(len + 1);
        p->text = malloc(len * 3 + 1);
        p->off = nbi_malloc_array(len + 1, sizeof *p->off);
        p->ends = nbi_malloc_array(len + 1, sizeof *p->ends);
        p->next = nbi_malloc_array(len + 1, sizeof *p->next);
        p->cap_len = len;
        if (!p->cp || !p->fl || !p->text || !p->off || !p->ends || !p->next) {
            nbi_pretok_free(p);
            return NB_ERR_NOMEM;
        }
    }
    const unsigned char *s = (const unsigned char *)text;
    size_t n = 0, k = 0;
    for (size_t i = 0; i < len;) {
        uint32_t ch;
        p->off[n] = k;
        if (s[i] < 0x80) {
            ch = s[i++];
            p->text[k++] = (char)ch;
        } else {
            i += nbi_utf8_decode(s + i, len - i, &ch);
            k += nbi_utf8_encode(ch, p->text + k);
        }
        p->cp[n] = ch;
        p->fl[n] = nbi_unicode_flags(ch);
        n++;
    }
    p->off[n] = k;
    p->n = n;
    p->text_len = k;

    /* one piece, then each expression cuts every piece */
    p->n_pieces = p->n_next = 0;
    if (n)
        push_end(p, n);
    swap_lists(p);
    pctx c = {p->cp, p->fl};
    const pre_def *d = &pre_defs[kind];
    for (int pass = 0; pass < d->n_passes; pass++) {
        size_t a = 0;
        for (size_t i = 0; i < p->n_pieces; i++) {
            split_piece(p, &c, d->passes[pass], a, p->ends[i]);
            a = p->ends[i];
        }
        swap_lists(p);
    }
    return NB_OK;
}
