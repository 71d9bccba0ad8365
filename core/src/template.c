/*
 * template.c - chat templates and fill-in-the-middle prompts.
 *
 * GGUF files carry their chat template as Jinja source
 * (tokenizer.chat_template).  Rather than interpret Jinja, nibble
 * recognises the handful of formats that LLaMA-family models use by their
 * marker strings and renders them itself, as llama.cpp's built-in
 * templates do.  Fill-in-the-middle tokens come from metadata or are found
 * by their spellings in the vocabulary.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

typedef struct strbuf {
    char *p;
    size_t n, cap;
    int failed;
} strbuf;

static void sb_add(strbuf *b, const char *s, size_t n)
{
    if (b->failed)
        return;
    if (b->n + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->n + n + 1)
            cap *= 2;
        char *np = realloc(b->p, cap);
        if (!np) {
            b->failed = 1;
            return;
        }
        b->p = np;
        b->cap = cap;
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = 0;
}

static void sb_puts(strbuf *b, const char *s)
{
    sb_add(b, s, strlen(s));
}

static const char *const template_names[] = {"chatml",    "llama2",    "llama3",
                                             "deepseek",  "deepseek2", "deepseek3",
                                             "alpaca",    "vicuna",    "zephyr",
                                             "raw"};

/* DeepSeek's markers: fullwidth bars (U+FF5C) around words joined by
 * U+2581. */
#define DS_USER "<\xef\xbd\x9c" "User\xef\xbd\x9c>"
#define DS_ASSISTANT "<\xef\xbd\x9c" "Assistant\xef\xbd\x9c>"
#define DS_EOS "<\xef\xbd\x9c" "end\xe2\x96\x81of\xe2\x96\x81sentence\xef\xbd\x9c>"

const char *nb_chat_template_name(const nb_model *m)
{
    const char *t;
    size_t len;
    int found;
    if (nbi_gguf_get_str(m->gguf, "tokenizer.chat_template", &t, &len, &found, NULL, 0) ||
        !found)
        return "raw";
    /* The template is text of unknown origin: look, never trust its length
     * to be NUL-terminated. */
    char *s = malloc(len + 1);
    if (!s)
        return "raw";
    memcpy(s, t, len);
    s[len] = 0;
    const char *name = "unknown";
    if (strstr(s, "<|im_start|>"))
        name = "chatml";
    else if (strstr(s, "<|start_header_id|>"))
        name = "llama3";
    else if (strstr(s, "[INST]"))
        name = "llama2";
    else if (strstr(s, "<|user|>"))
        name = "zephyr";
    else if (strstr(s, "### Instruction:") && strstr(s, "<|EOT|>"))
        name = "deepseek"; /* DeepSeek-Coder 1.x: Alpaca's headings, turns end in <|EOT|> */
    else if (strstr(s, "### Instruction"))
        name = "alpaca";
    else if (strstr(s, "'Assistant: ' + message['content'] + eos_token"))
        name = "deepseek2"; /* DeepSeek-V2, DeepSeek-Coder-V2 */
    else if (strstr(s, DS_USER) && strstr(s, DS_ASSISTANT))
        name = "deepseek3"; /* DeepSeek-V3, R1 */
    else if (strstr(s, "USER:") && strstr(s, "ASSISTANT:"))
        name = "vicuna";
    free(s);
    return name;
}

nb_status nb_chat_render(const nb_model *m, const char *tmpl, const nb_chat_msg *msgs, int n,
                         int add_assistant, char **out, char *err, size_t errlen)
{
    *out = NULL;
    if (!tmpl) {
        tmpl = nb_chat_template_name(m);
        if (!strcmp(tmpl, "unknown"))
            tmpl = "chatml"; /* the most common format today; the caller warns */
    }
    size_t k;
    for (k = 0; k < sizeof template_names / sizeof template_names[0]; k++)
        if (!strcmp(tmpl, template_names[k]))
            break;
    if (k == sizeof template_names / sizeof template_names[0])
        return nbi_err(err, errlen, NB_ERR_INVALID,
                       "unknown chat template '%.40s' (chatml, llama2, llama3, deepseek, "
                       "deepseek2, deepseek3, alpaca, vicuna, zephyr, raw)",
                       tmpl);
    for (int i = 0; i < n; i++)
        if (!msgs[i].role || !msgs[i].content ||
            (strcmp(msgs[i].role, "system") && strcmp(msgs[i].role, "user") &&
             strcmp(msgs[i].role, "assistant")))
            return nbi_err(err, errlen, NB_ERR_INVALID,
                           "message %d: the role must be system, user or assistant", i);
    /* the end-of-sequence text used by formats that close turns with it */
    char eos[NBI_MAX_PIECE + 1] = "</s>";
    if (m->vocab.eos >= 0 && m->vocab.len[m->vocab.eos] <= NBI_MAX_PIECE) {
        memcpy(eos, m->vocab.text[m->vocab.eos], m->vocab.len[m->vocab.eos]);
        eos[m->vocab.len[m->vocab.eos]] = 0;
    }
    strbuf b = {0};
    sb_add(&b, "", 0);
    if (!strcmp(tmpl, "chatml")) {
        for (int i = 0; i < n; i++) {
            sb_puts(&b, "<|im_start|>");
            sb_puts(&b, msgs[i].role);
            sb_puts(&b, "\n");
            sb_puts(&b, msgs[i].content);
            sb_puts(&b, "<|im_end|>\n");
        }
        if (add_assistant)
            sb_puts(&b, "<|im_start|>assistant\n");
    } else if (!strcmp(tmpl, "llama3")) {
        for (int i = 0; i < n; i++) {
            sb_puts(&b, "<|start_header_id|>");
            sb_puts(&b, msgs[i].role);
            sb_puts(&b, "<|end_header_id|>\n\n");
            sb_puts(&b, msgs[i].content);
            sb_puts(&b, "<|eot_id|>");
        }
        if (add_assistant)
            sb_puts(&b, "<|start_header_id|>assistant<|end_header_id|>\n\n");
    } else if (!strcmp(tmpl, "llama2")) {
        /* [INST] <<SYS>>\nS\n<</SYS>>\n\nU [/INST]A</s>[INST] U [/INST] */
        int in_turn = 1;
        sb_puts(&b, "[INST] ");
        for (int i = 0; i < n; i++) {
            if (!in_turn) {
                sb_puts(&b, "[INST] ");
                in_turn = 1;
            }
            if (!strcmp(msgs[i].role, "system")) {
                sb_puts(&b, "<<SYS>>\n");
                sb_puts(&b, msgs[i].content);
                sb_puts(&b, "\n<</SYS>>\n\n");
            } else if (!strcmp(msgs[i].role, "user")) {
                sb_puts(&b, msgs[i].content);
                sb_puts(&b, " [/INST]");
            } else {
                /* as llama.cpp renders it: no space after [/INST] */
                sb_puts(&b, msgs[i].content);
                sb_puts(&b, eos);
                in_turn = 0;
            }
        }
    } else if (!strcmp(tmpl, "deepseek")) {
        /* the system text stands alone, as llama.cpp renders it */
        for (int i = 0; i < n; i++) {
            if (!strcmp(msgs[i].role, "system")) {
                sb_puts(&b, msgs[i].content);
            } else if (!strcmp(msgs[i].role, "user")) {
                sb_puts(&b, "### Instruction:\n");
                sb_puts(&b, msgs[i].content);
                sb_puts(&b, "\n");
            } else {
                sb_puts(&b, "### Response:\n");
                sb_puts(&b, msgs[i].content);
                sb_puts(&b, "\n<|EOT|>\n");
            }
        }
        if (add_assistant)
            sb_puts(&b, "### Response:\n");
    } else if (!strcmp(tmpl, "deepseek2") || !strcmp(tmpl, "deepseek3")) {
        const int v3 = tmpl[8] == '3';
        for (int i = 0; i < n; i++) {
            if (!strcmp(msgs[i].role, "system")) {
                sb_puts(&b, msgs[i].content);
                sb_puts(&b, "\n\n");
            } else if (!strcmp(msgs[i].role, "user")) {
                sb_puts(&b, v3 ? DS_USER : "User: ");
                sb_puts(&b, msgs[i].content);
                if (!v3)
                    sb_puts(&b, "\n\n");
            } else {
                sb_puts(&b, v3 ? DS_ASSISTANT : "Assistant: ");
                sb_puts(&b, msgs[i].content);
                sb_puts(&b, DS_EOS);
            }
        }
        if (add_assistant)
            sb_puts(&b, v3 ? DS_ASSISTANT : "Assistant:");
    } else if (!strcmp(tmpl, "zephyr")) {
        for (int i = 0; i < n; i++) {
            sb_puts(&b, "<|");
            sb_puts(&b, msgs[i].role);
            sb_puts(&b, "|>\n");
            sb_puts(&b, msgs[i].content);
            sb_puts(&b, eos);
            sb_puts(&b, "\n");
        }
        if (add_assistant)
            sb_puts(&b, "<|assistant|>\n");
    } else if (!strcmp(tmpl, "alpaca")) {
        for (int i = 0; i < n; i++) {
            if (!strcmp(msgs[i].role, "system")) {
                sb_puts(&b, msgs[i].content);
                sb_puts(&b, "\n\n");
            } else if (!strcmp(msgs[i].role, "user")) {
                sb_puts(&b, "### Instruction:\n");
                sb_puts(&b, msgs[i].content);
                sb_puts(&b, "\n\n");
            } else {
                sb_puts(&b, "### Response:\n");
                sb_puts(&b, msgs[i].content);
                sb_puts(&b, "\n\n");
            }
        }
        if (add_assistant)
            sb_puts(&b, "### Response:\n");
    } else if (!strcmp(tmpl, "vicuna")) {
        /* Vicuna v1.1: system line, then USER:/ASSISTANT: turns */
        for (int i = 0; i < n; i++) {
            if (!strcmp(msgs[i].role, "system")) {
                sb_puts(&b, msgs[i].content);
                sb_puts(&b, "\n");
            } else if (!strcmp(msgs[i].role, "user")) {
                sb_puts(&b, "USER: ");
                sb_puts(&b, msgs[i].content);
                sb_puts(&b, "\n");
            } else {
                sb_puts(&b, "ASSISTANT: ");
                sb_puts(&b, msgs[i].content);
                sb_puts(&b, eos);
                sb_puts(&b, "\n");
            }
        }
        if (add_assistant)
            sb_puts(&b, "ASSISTANT:");
    } else { /* raw: the contents, separated by blank lines */
        for (int i = 0; i < n; i++) {
            if (i)
                sb_puts(&b, "\n\n");
            sb_puts(&b, msgs[i].content);
        }
        if (add_assistant && n)
            sb_puts(&b, "\n\n");
    }
    if (b.failed) {
        free(b.p);
        return nbi_err(err, errlen, NB_ERR_NOMEM, "out of memory rendering the chat");
    }
    *out = b.p;
    return NB_OK;
}

/* ------------------------------------------------------------------ FIM */

static nb_token find_token(const nbi_vocab *v, const char *const *names)
{
    for (; *names; names++) {
        int32_t id = nbi_strmap_get(&v->map, *names, strlen(*names));
        if (id >= 0)
            return id;
    }
    return -1;
}

static nb_token meta_token(const nb_model *m, const char *key)
{
    uint32_t id;
    int found;
    if (nbi_gguf_get_u32(m->gguf, key, &id, &found, NULL, 0) || !found ||
        id >= (uint32_t)m->vocab.n)
        return -1;
    return (nb_token)id;
}

void nbi_fim_detect(nb_model *m)
{
    static const char *const pre[] = {"<|fim_prefix|>", "<fim-prefix>", "<fim_prefix>",
                                      "<\xef\xbd\x9c" "fim\xe2\x96\x81" "begin\xef\xbd\x9c>",
                                      "<PRE>", "\xe2\x96\x81<PRE>", NULL};
    static const char *const suf[] = {"<|fim_suffix|>", "<fim-suffix>", "<fim_suffix>",
                                      "<\xef\xbd\x9c" "fim\xe2\x96\x81" "hole\xef\xbd\x9c>",
                                      "<SUF>", "\xe2\x96\x81<SUF>", NULL};
    static const char *const mid[] = {"<|fim_middle|>", "<fim-middle>", "<fim_middle>",
                                      "<\xef\xbd\x9c" "fim\xe2\x96\x81" "end\xef\xbd\x9c>",
                                      "<MID>", "\xe2\x96\x81<MID>", NULL};
    static const char *const sep[] = {"<|file_sep|>", "<file_sep>", NULL};
    static const char *const rep[] = {"<|repo_name|>", "<|fim_repo|>", "<fim-repo>", "<REPO>",
                                      "<reponame>", NULL};
    nbi_vocab *v = &m->vocab;
    /* the current keys, then the older prefix/suffix/middle ones */
    if ((v->fim_pre = meta_token(m, "tokenizer.ggml.fim_pre_token_id")) < 0 &&
        (v->fim_pre = meta_token(m, "tokenizer.ggml.prefix_token_id")) < 0)
        v->fim_pre = find_token(v, pre);
    if ((v->fim_suf = meta_token(m, "tokenizer.ggml.fim_suf_token_id")) < 0 &&
        (v->fim_suf = meta_token(m, "tokenizer.ggml.suffix_token_id")) < 0)
        v->fim_suf = find_token(v, suf);
    if ((v->fim_mid = meta_token(m, "tokenizer.ggml.fim_mid_token_id")) < 0 &&
        (v->fim_mid = meta_token(m, "tokenizer.ggml.middle_token_id")) < 0)
        v->fim_mid = find_token(v, mid);
    if ((v->fim_sep = meta_token(m, "tokenizer.ggml.fim_sep_token_id")) < 0)
        v->fim_sep = find_token(v, sep);
    if ((v->fim_rep = meta_token(m, "tokenizer.ggml.fim_rep_token_id")) < 0)
        v->fim_rep = find_token(v, rep);
}

int nb_model_has_fim(const nb_model *m)
{
    return m->vocab.fim_pre >= 0 && m->vocab.fim_suf >= 0 && m->vocab.fim_mid >= 0;
}

typedef struct tokvec {
    nb_token *v;
    int64_t n, cap;
    int failed;
} tokvec;

static void tv_push(tokvec *t, nb_token x)
{
    if (t->failed)
        return;
    if (t->n == t->cap) {
        int64_t cap = t->cap ? t->cap * 2 : 256;
        nb_token *nv = realloc(t->v, (size_t)cap * sizeof *nv);
        if (!nv) {
            t->failed = 1;
            return;
        }
        t->v = nv;
        t->cap = cap;
    }
    t->v[t->n++] = x;
}

static void tv_text(tokvec *t, const nb_model *m, const char *s, size_t len)
{
    if (t->failed || !len)
        return;
    int64_t need = nb_tokenize(m, s, len, NULL, 0, 0);
    if (need < 0) {
        t->failed = 1;
        return;
    }
    while (t->n + need > t->cap) {
        int64_t cap = t->cap ? t->cap * 2 : 256;
        nb_token *nv = realloc(t->v, (size_t)cap * sizeof *nv);
        if (!nv) {
            t->failed = 1;
            return;
        }
        t->v = nv;
        t->cap = cap;
    }
    t->n += nb_tokenize(m, s, len, t->v + t->n, need, 0);
}

/* Token count of text (no special handling), or -1. */
static int64_t count_tokens(const nb_model *m, const char *s, size_t len)
{
    return len ? nb_tokenize(m, s, len, NULL, 0, 0) : 0;
}

/* Offsets just after each '\n' of s[0..len) (line starts other than 0);
 * *n gets their number.  NULL with *n = 0 when there are none; -1 in *n
 * when out of memory. */
static size_t *line_starts(const char *s, size_t len, int64_t *n)
{
    int64_t k = 0;
    for (size_t i = 0; i < len; i++)
        k += s[i] == '\n' && i + 1 < len;
    *n = 0;
    if (!k)
        return NULL;
    size_t *v = malloc((size_t)k * sizeof *v);
    if (!v) {
        *n = -1;
        return NULL;
    }
    for (size_t i = 0; i < len; i++)
        if (s[i] == '\n' && i + 1 < len)
            v[(*n)++] = i + 1;
    return v;
}

/* The first of the increasing offsets c[0..n) from which the rest of s
 * is at most budget tokens, or -1 (-2 on failure).  Counting the whole
 * tail from every candidate would tokenize the text many times over; so
 * the segments between candidates are counted once each, from the end,
 * until their sum passes the budget, and the candidate found that way is
 * then confirmed with exact counts (a segment counted alone may differ by
 * a token or two at its edges). */
static int64_t smallest_fit(const nb_model *m, const char *s, size_t len, const size_t *c,
                            int64_t n, int64_t budget)
{
    int64_t acc = 0, k = n;
    while (k > 0) {
        size_t end = k < n ? c[k] : len;
        int64_t seg = count_tokens(m, s + c[k - 1], end - c[k - 1]);
        if (seg < 0)
            return -2;
        if (acc + seg > budget)
            break;
        acc += seg;
        k--;
    }
    if (k == n)
        k = n - 1; /* even the last segment alone is over: let the check decide */
    /* exact: move on while it does not fit, back while the one before fits */
    for (;;) {
        int64_t e = count_tokens(m, s + c[k], len - c[k]);
        if (e < 0)
            return -2;
        if (e > budget) {
            if (++k >= n)
                return -1;
            continue;
        }
        if (k == 0)
            return 0;
        int64_t before = count_tokens(m, s + c[k - 1], len - c[k - 1]);
        if (before < 0)
            return -2;
        if (before > budget)
            return k;
        k--;
    }
}

/* Where the kept tail of a prefix starts so that it is at most budget
 * tokens: the first of the text's start and its line starts 16, 32,
 * 48... that fits, else the first line start of all that fits.  *found =
 * 0 when no line start does either; the caller then cuts tokens. */
static int tail_start(const nb_model *m, const char *s, size_t len, int64_t budget, size_t *at,
                      int *found)
{
    *at = 0;
    *found = 1;
    int64_t nl;
    size_t *ls = line_starts(s, len, &nl);
    if (nl < 0)
        return -1;
    size_t *c = malloc((size_t)(nl + 1) * sizeof *c);
    if (!c) {
        free(ls);
        return -1;
    }
    int rc = 0;
    *found = 0;
    for (int step = 16; step >= 1 && !*found; step = step == 16 ? 1 : 0) {
        int64_t n = 0;
        c[n++] = 0;
        for (int64_t k = step; k <= nl; k += step)
            c[n++] = ls[k - 1];
        int64_t best = smallest_fit(m, s, len, c, n, budget);
        if (best == -2) {
            rc = -1;
            break;
        }
        if (best >= 0) {
            *at = c[best];
            *found = 1;
        }
    }
    free(c);
    free(ls);
    return rc;
}

/* Where the kept head of a suffix ends so that it is at most budget
 * tokens: the last line end that fits; *found = 0 when none does. */
static int head_end(const nb_model *m, const char *s, size_t len, int64_t budget, size_t *at,
                    int *found)
{
    *at = len;
    *found = 1;
    int64_t n = count_tokens(m, s, len);
    if (n < 0)
        return -1;
    if (n <= budget)
        return 0;
    int64_t nl;
    size_t *ls = line_starts(s, len, &nl);
    if (nl < 0)
        return -1;
    int64_t lo = 0, hi = nl, best = -1; /* k in [1, nl]: keep s[0, ls[k-1]) */
    while (lo < hi) {
        int64_t mid = lo + (hi - lo) / 2 + 1;
        int64_t c = count_tokens(m, s, ls[mid - 1]);
        if (c < 0) {
            free(ls);
            return -1;
        }
        if (c <= budget) {
            best = mid;
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    if (best > 0)
        *at = ls[best - 1];
    else
        *found = 0;
    free(ls);
    return 0;
}

/* Append text cut to a token budget: keep its tail (tail = 1) or its head.
 * Returns the tokens appended; *dropped gets the bytes left out. */
static int64_t tv_text_fit(tokvec *t, const nb_model *m, const char *s, int64_t budget, int tail,
                           size_t *dropped)
{
    size_t len = strlen(s), at;
    int found = 1;
    *dropped = 0;
    int64_t before = t->n;
    if (budget > 0 && (tail ? tail_start(m, s, len, budget, &at, &found)
                            : head_end(m, s, len, budget, &at, &found))) {
        t->failed = 1;
        return 0;
    }
    if (budget <= 0 || found) {
        const char *from = budget > 0 && tail ? s + at : s;
        size_t n = budget <= 0 ? len : tail ? len - at : at;
        tv_text(t, m, from, n);
        *dropped = len - n;
        return t->n - before;
    }
    /* one line longer than the budget: cut tokens, not lines */
    tokvec all = {0};
    tv_text(&all, m, s, len);
    if (all.failed) {
        free(all.v);
        t->failed = 1;
        return 0;
    }
    int64_t keep = all.n < budget ? all.n : budget;
    const nb_token *from = tail ? all.v + all.n - keep : all.v;
    for (int64_t i = 0; i < keep; i++)
        tv_push(t, from[i]);
    *dropped = len; /* an approximation: the text is no longer whole lines */
    free(all.v);
    return t->n - before;
}

/* Tokens a chunk adds: its name line and text, after a separator. */
static void tv_chunk(tokvec *t, const nb_model *m, const nb_chunk *c)
{
    const nbi_vocab *v = &m->vocab;
    const char *name = c->name ? c->name : "";
    if (v->fim_sep >= 0) {
        tv_push(t, v->fim_sep);
        tv_text(t, m, name, strlen(name));
        tv_text(t, m, "\n", 1);
    } else if (*name) {
        tv_text(t, m, name, strlen(name));
        tv_text(t, m, "\n", 1);
    }
    tv_text(t, m, c->text, strlen(c->text));
    tv_text(t, m, "\n\n", 2);
}

nb_status nb_infill_tokens_fit(const nb_model *m, const char *prefix, const char *suffix,
                               const nb_chunk *chunks, int n_chunks, nb_infill_fit *fit,
                               nb_token **out, int64_t *n_out, char *err, size_t errlen)
{
    const nbi_vocab *v = &m->vocab;
    *out = NULL;
    *n_out = 0;
    fit->fim = nb_model_has_fim(m);
    fit->prefix_tokens = fit->suffix_tokens = fit->chunks_used = 0;
    fit->prefix_dropped = fit->suffix_dropped = 0;
    if (!fit->fim && !fit->fallback_prefix)
        return nbi_err(err, errlen, NB_ERR_UNSUPPORTED,
                       "model '%s' has no fill-in-the-middle tokens", m->name[0] ? m->name : m->path);
    if (fit->n_prefix < 0 || fit->n_suffix < 0 || fit->n_max < 0 || n_chunks < 0)
        return nbi_err(err, errlen, NB_ERR_INVALID, "negative infill budget");
    const int bos = v->add_bos && v->bos >= 0;
    const int64_t marks = bos + (fit->fim ? 3 : 0);
    int64_t n_pre = fit->n_prefix, n_suf = fit->fim ? fit->n_suffix : 0;
    if (fit->n_max) {
        /* at least one token each for the prefix and, with FIM, the suffix:
         * a budget of 0 would mean "all" below */
        int64_t room = fit->n_max - marks;
        if (room < (fit->fim ? 2 : 1))
            return nbi_err(err, errlen, NB_ERR_INVALID,
                           "an infill prompt needs more than %d tokens", fit->n_max);
        /* the suffix gets at most a quarter of the room, the prefix the rest */
        if (fit->fim && (!n_suf || n_suf > room / 4))
            n_suf = room / 4 > 0 ? room / 4 : 1;
        if (!n_pre || n_pre > room - (fit->fim ? n_suf : 0))
            n_pre = room - (fit->fim ? n_suf : 0);
    }
    tokvec pre = {0}, suf = {0}, t = {0};
    fit->prefix_tokens = (int)tv_text_fit(&pre, m, prefix, n_pre, 1, &fit->prefix_dropped);
    if (fit->fim)
        fit->suffix_tokens = (int)tv_text_fit(&suf, m, suffix, n_suf, 0, &fit->suffix_dropped);
    /* the latest chunks that fit in what is left */
    int first = n_chunks;
    if (fit->fim) {
        int64_t left = fit->n_max ? fit->n_max - marks - pre.n - suf.n : INT64_MAX;
        for (int i = n_chunks - 1; i >= 0 && !pre.failed && !suf.failed; i--) {
            tokvec c = {0};
            tv_chunk(&c, m, &chunks[i]);
            int64_t need = c.n + (v->fim_sep >= 0 && first == n_chunks); /* the closing separator */
            free(c.v);
            if (c.failed || need > left)
                break;
            left -= need;
            first = i;
        }
    }
    fit->chunks_used = n_chunks - first;
    if (bos)
        tv_push(&t, v->bos);
    if (fit->fim) {
        for (int i = first; i < n_chunks; i++)
            tv_chunk(&t, m, &chunks[i]);
        if (first < n_chunks && v->fim_sep >= 0)
            tv_push(&t, v->fim_sep);
        tv_push(&t, v->fim_pre);
    }
    for (int64_t i = 0; i < pre.n; i++)
        tv_push(&t, pre.v[i]);
    if (fit->fim) {
        tv_push(&t, v->fim_suf);
        for (int64_t i = 0; i < suf.n; i++)
            tv_push(&t, suf.v[i]);
        tv_push(&t, v->fim_mid);
    }
    int failed = t.failed || pre.failed || suf.failed;
    free(pre.v);
    free(suf.v);
    if (failed) {
        free(t.v);
        return nbi_err(err, errlen, NB_ERR_NOMEM, "out of memory building the infill prompt");
    }
    *out = t.v;
    *n_out = t.n;
    return NB_OK;
}

nb_status nb_infill_tokens(const nb_model *m, const char *prefix, const char *suffix,
                           const nb_chunk *chunks, int n_chunks, nb_token **out, int64_t *n_out,
                           char *err, size_t errlen)
{
    nb_infill_fit fit = {0};
    return nb_infill_tokens_fit(m, prefix, suffix, chunks, n_chunks, &fit, out, n_out, err, errlen);
}
