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

static const char *const template_names[] = {"chatml", "llama2", "llama3", "alpaca",
                                             "vicuna", "zephyr", "raw"};

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
    else if (strstr(s, "### Instruction"))
        name = "alpaca";
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
                       "unknown chat template '%.40s' (chatml, llama2, llama3, alpaca, vicuna, "
                       "zephyr, raw)", tmpl);
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
    static const char *const sep[] = {"<|file_sep|>", NULL};
    static const char *const rep[] = {"<|repo_name|>", "<|fim_repo|>", "<fim-repo>", "<REPO>",
                                      NULL};
    nbi_vocab *v = &m->vocab;
    if ((v->fim_pre = meta_token(m, "tokenizer.ggml.fim_pre_token_id")) < 0)
        v->fim_pre = find_token(v, pre);
    if ((v->fim_suf = meta_token(m, "tokenizer.ggml.fim_suf_token_id")) < 0)
        v->fim_suf = find_token(v, suf);
    if ((v->fim_mid = meta_token(m, "tokenizer.ggml.fim_mid_token_id")) < 0)
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

nb_status nb_infill_tokens(const nb_model *m, const char *prefix, const char *suffix,
                           const nb_chunk *chunks, int n_chunks, nb_token **out, int64_t *n_out,
                           char *err, size_t errlen)
{
    const nbi_vocab *v = &m->vocab;
    *out = NULL;
    *n_out = 0;
    if (!nb_model_has_fim(m))
        return nbi_err(err, errlen, NB_ERR_UNSUPPORTED,
                       "model '%s' has no fill-in-the-middle tokens", m->name[0] ? m->name : m->path);
    tokvec t = {0};
    if (v->add_bos && v->bos >= 0)
        tv_push(&t, v->bos);
    /* Other files first: with the model's file separator when it has one
     * (repository-level FIM, as Qwen2.5-Coder was trained), else as text. */
    for (int i = 0; i < n_chunks; i++) {
        const char *name = chunks[i].name ? chunks[i].name : "";
        if (v->fim_sep >= 0) {
            tv_push(&t, v->fim_sep);
            tv_text(&t, m, name, strlen(name));
            tv_text(&t, m, "\n", 1);
        } else if (*name) {
            tv_text(&t, m, name, strlen(name));
            tv_text(&t, m, "\n", 1);
        }
        tv_text(&t, m, chunks[i].text, strlen(chunks[i].text));
        tv_text(&t, m, "\n\n", 2);
    }
    if (n_chunks && v->fim_sep >= 0)
        tv_push(&t, v->fim_sep);
    tv_push(&t, v->fim_pre);
    tv_text(&t, m, prefix, strlen(prefix));
    tv_push(&t, v->fim_suf);
    tv_text(&t, m, suffix, strlen(suffix));
    tv_push(&t, v->fim_mid);
    if (t.failed) {
        free(t.v);
        return nbi_err(err, errlen, NB_ERR_NOMEM, "out of memory building the infill prompt");
    }
    *out = t.v;
    *n_out = t.n;
    return NB_OK;
}
