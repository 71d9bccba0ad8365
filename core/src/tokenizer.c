/*
 * tokenizer.c - the vocabulary, and what its two kinds share.
 *
 * A vocabulary is SentencePiece (tokenizer.ggml.model = llama,
 * tokenizer_spm.c) or byte-level BPE (gpt2, tokenizer_bpe.c).  Here: loading
 * the tokens and the special-token metadata, splitting special tokens out
 * of the text before either tokenizer sees it (as llama.cpp does, longest
 * first), and detokenization, which turns pieces back into bytes and, in
 * nb_detok, holds back partial UTF-8 characters so a stream only ever
 * shows whole characters.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

/* The byte a "<0xNN>" token stands for, from its two hex digits; -1 when
 * they are not two hex digits (sscanf's %x would take a sign or a space,
 * and "<0x-9>" gave byte 4294967287). */
static int hex_byte(const char *s)
{
    int b = 0;
    for (int i = 0; i < 2; i++) {
        char c = s[i];
        int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10
              : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
        if (d < 0)
            return -1;
        b = b * 16 + d;
    }
    return b;
}

static nb_status get_token_id(const nb_gguf *g, const char *key, int32_t n, nb_token *out,
                              char *err, size_t errlen)
{
    uint32_t id;
    int found;
    nb_status st = nbi_gguf_get_u32(g, key, &id, &found, err, errlen);
    if (st)
        return st;
    if (!found)
        return NB_OK; /* keep the default */
    if (id >= (uint32_t)n)
        return nbi_err(err, errlen, NB_ERR_FORMAT,
                       "%s = %" PRIu32 " is outside the vocabulary of %" PRId32 " tokens", key,
                       id, n);
    *out = (nb_token)id;
    return NB_OK;
}

static int cmp_special(const void *a, const void *b, void *vp)
{
    const nbi_vocab *v = vp;
    nb_token x = *(const nb_token *)a, y = *(const nb_token *)b;
    if (v->len[x] != v->len[y])
        return v->len[x] > v->len[y] ? -1 : 1;
    return x < y ? -1 : x > y;
}

nb_status nbi_vocab_load(nbi_vocab *v, const nb_gguf *g, char *err, size_t errlen)
{
    memset(v, 0, sizeof *v);
    v->bos = v->eos = v->unk = v->eot = v->pad = -1;
    for (int i = 0; i < 256; i++)
        v->byte_tok[i] = -1;

    const char *model;
    size_t model_len;
    int found;
    nb_status st = nbi_gguf_get_str(g, "tokenizer.ggml.model", &model, &model_len, &found, err,
                                    errlen);
    if (st)
        return st;
    if (!found)
        return nbi_err(err, errlen, NB_ERR_FORMAT,
                       "the file has no tokenizer (tokenizer.ggml.model is missing)");
    if (model_len == 5 && memcmp(model, "llama", 5) == 0) {
        v->type = NBI_VOCAB_SPM;
    } else if (model_len == 4 && memcmp(model, "gpt2", 4) == 0) {
        v->type = NBI_VOCAB_BPE;
    } else {
        return nbi_err(err, errlen, NB_ERR_UNSUPPORTED,
                       "tokenizer '%.*s' is not supported (nibble reads 'llama' (SentencePiece) "
                       "and 'gpt2' (byte-level BPE) vocabularies)",
                       (int)NBI_MIN(model_len, 64), model);
    }

    const nbi_kv *toks, *scores = NULL, *types = NULL;
    if ((st = nbi_gguf_get_array(g, "tokenizer.ggml.tokens", NB_GGUF_STRING, &toks, NULL, err,
                                 errlen)))
        return st;
    if ((st = nbi_gguf_get_array(g, "tokenizer.ggml.scores", NB_GGUF_FLOAT32, &scores, &found,
                                 err, errlen)))
        return st;
    if (!found)
        scores = NULL;
    if ((st = nbi_gguf_get_array(g, "tokenizer.ggml.token_type", NB_GGUF_INT32, &types, &found,
                                 err, errlen)))
        return st;
    if (!found)
        types = NULL;
    if (toks->n == 0 || toks->n > INT32_MAX / 2)
        return nbi_err(err, errlen, NB_ERR_FORMAT, "tokenizer.ggml.tokens has %" PRIu64 " entries",
                       toks->n);
    int32_t n = (int32_t)toks->n;
    if (scores && scores->n != toks->n)
        return nbi_err(err, errlen, NB_ERR_FORMAT,
                       "tokenizer.ggml.scores has %" PRIu64 " entries but there are %" PRId32
                       " tokens",
                       scores->n, n);
    if (types && types->n != toks->n)
        return nbi_err(err, errlen, NB_ERR_FORMAT,
                       "tokenizer.ggml.token_type has %" PRIu64 " entries but there are %" PRId32
                       " tokens",
                       types->n, n);

    v->n = n;
    v->text = nbi_malloc_array((size_t)n, sizeof *v->text);
    v->len = nbi_malloc_array((size_t)n, sizeof *v->len);
    v->score = nbi_malloc_array((size_t)n, sizeof *v->score);
    v->attr = nbi_malloc_array((size_t)n, sizeof *v->attr);
    v->special = nbi_malloc_array((size_t)n, sizeof *v->special);
    if (!v->text || !v->len || !v->score || !v->attr || !v->special ||
        nbi_strmap_init(&v->map, (uint32_t)n))
        return nbi_err(err, errlen, NB_ERR_NOMEM, "out of memory loading the vocabulary");

    const uint8_t *p = toks->data;
    for (int32_t i = 0; i < n; i++) {
        const char *s;
        uint64_t len;
        p = nbi_gguf_next_str(p, &s, &len);
        if (len > NBI_MAX_PIECE)
            return nbi_err(err, errlen, NB_ERR_FORMAT,
                           "token %" PRId32 " is %" PRIu64 " bytes long (limit %d)", i, len,
                           NBI_MAX_PIECE);
        v->text[i] = s;
        v->len[i] = (uint32_t)len;
        if (scores)
            memcpy(&v->score[i], scores->data + 4 * (size_t)i, 4);
        else
            v->score[i] = 0.0f;
        int32_t t = NBI_TOK_NORMAL;
        if (types)
            memcpy(&t, types->data + 4 * (size_t)i, 4);
        if (t < NBI_TOK_NORMAL || t > NBI_TOK_BYTE)
            t = NBI_TOK_NORMAL; /* undefined types behave as normal text, as in llama.cpp */
        v->attr[i] = (uint8_t)t;
        /* Duplicates exist in real vocabularies; the first id wins. */
        if (nbi_strmap_put(&v->map, s, (size_t)len, i, NULL) < 0)
            return nbi_err(err, errlen, NB_ERR_NOMEM, "out of memory loading the vocabulary");
        if (t == NBI_TOK_BYTE && len == 6 && memcmp(s, "<0x", 3) == 0 && s[5] == '>') {
            int b = hex_byte(s + 3);
            if (b >= 0 && v->byte_tok[b] < 0)
                v->byte_tok[b] = i;
        }
        if ((t == NBI_TOK_CONTROL || t == NBI_TOK_USER_DEFINED || t == NBI_TOK_UNKNOWN) && len > 0)
            v->special[v->n_special++] = i;
    }
    qsort_r(v->special, (size_t)v->n_special, sizeof *v->special, cmp_special, v);

    if (v->type == NBI_VOCAB_SPM) {
        /* SentencePiece defaults, as llama.cpp assumes for 'llama' vocabularies. */
        v->unk = 0;
        v->bos = n > 1 ? 1 : -1;
        v->eos = n > 2 ? 2 : -1;
        v->add_bos = true;
        v->add_space_prefix = true;
    } else {
        if ((st = nbi_bpe_load(v, g, err, errlen)))
            return st;
        /* llama.cpp's GPT-2 defaults (Falcon's <|endoftext|>), out-of-range
         * ones disabled; BOS only for the kinds that add it */
        v->bos = v->eos = n > 11 ? 11 : -1;
        v->add_bos = nbi_pre_add_bos(v->pre);
        v->add_space_prefix = false;
    }
    v->add_eos = false;
    if ((st = get_token_id(g, "tokenizer.ggml.bos_token_id", n, &v->bos, err, errlen)) ||
        (st = get_token_id(g, "tokenizer.ggml.eos_token_id", n, &v->eos, err, errlen)) ||
        (st = get_token_id(g, "tokenizer.ggml.unknown_token_id", n, &v->unk, err, errlen)) ||
        (st = get_token_id(g, "tokenizer.ggml.eot_token_id", n, &v->eot, err, errlen)))
        return st;
    /* Padding ids are often wrong in real files and never used here. */
    uint32_t pad;
    if (nbi_gguf_get_u32(g, "tokenizer.ggml.padding_token_id", &pad, &found, NULL, 0) == NB_OK &&
        found && pad < (uint32_t)n)
        v->pad = (nb_token)pad;
    if ((st = nbi_gguf_get_bool(g, "tokenizer.ggml.add_bos_token", &v->add_bos, &found, err,
                                errlen)) ||
        (st = nbi_gguf_get_bool(g, "tokenizer.ggml.add_eos_token", &v->add_eos, &found, err,
                                errlen)) ||
        (v->type == NBI_VOCAB_SPM &&
         (st = nbi_gguf_get_bool(g, "tokenizer.ggml.add_space_prefix", &v->add_space_prefix,
                                 &found, err, errlen))))
        return st;
    if (v->add_bos && v->bos < 0)
        return nbi_err(err, errlen, NB_ERR_FORMAT, "the vocabulary asks for BOS but has none");
    if (v->add_eos && v->eos < 0)
        return nbi_err(err, errlen, NB_ERR_FORMAT, "the vocabulary asks for EOS but has none");

    /* End-of-generation tokens: EOS, EOT, the end-of-turn markers of
     * common chat formats, and the tokens after which a code model's
     * infill is over (a new file or repository begins). */
    static const char *const eog_names[] = {"<|eot_id|>", "<|im_end|>", "<|end|>",
                                            "<end_of_turn>", "<|endoftext|>", "<EOT>",
                                            "\xe2\x96\x81<EOT>", "<|EOT|>",
                                            /* Qwen2.5-Coder ends an infill with these */
                                            "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>"};
    v->eog = nbi_malloc_array(2 + sizeof eog_names / sizeof eog_names[0], sizeof *v->eog);
    if (!v->eog)
        return nbi_err(err, errlen, NB_ERR_NOMEM, "out of memory loading the vocabulary");
    if (v->eos >= 0)
        v->eog[v->n_eog++] = v->eos;
    if (v->eot >= 0 && v->eot != v->eos)
        v->eog[v->n_eog++] = v->eot;
    for (size_t k = 0; k < sizeof eog_names / sizeof eog_names[0]; k++) {
        int32_t id = nbi_strmap_get(&v->map, eog_names[k], strlen(eog_names[k]));
        /* by name whatever the type: CodeLlama's <EOT> is not a control token */
        if (id >= 0 && id != v->eos && id != v->eot)
            v->eog[v->n_eog++] = id;
    }
    return NB_OK;
}

void nbi_vocab_free(nbi_vocab *v)
{
    if (!v)
        return;
    free(v->text);
    free(v->len);
    free(v->score);
    free(v->attr);
    free(v->special);
    free(v->eog);
    nbi_bpe_free(v);
    nbi_strmap_free(&v->map);
    memset(v, 0, sizeof *v);
}

/* ------------------------------------------------------------------ specials */

typedef struct fragment {
    size_t off, len; /* raw text, when token < 0 */
    nb_token token;
} fragment;

typedef struct fraglist {
    fragment *v;
    size_t n, cap;
} fraglist;

static int frag_push(fraglist *f, fragment x)
{
    if (f->n == f->cap) {
        size_t nc = f->cap ? f->cap * 2 : 16;
        fragment *nv = nbi_malloc_array(nc, sizeof *nv);
        if (!nv)
            return -1;
        if (f->n)
            memcpy(nv, f->v, f->n * sizeof *nv);
        free(f->v);
        f->v = nv;
        f->cap = nc;
    }
    f->v[f->n++] = x;
    return 0;
}

static const char *find_bytes(const char *hay, size_t n, const char *needle, size_t m)
{
    if (m == 0 || m > n)
        return NULL;
    const char *end = hay + n - m;
    for (const char *p = hay; p <= end; p++) {
        p = memchr(p, needle[0], (size_t)(end - p) + 1);
        if (!p)
            return NULL;
        if (memcmp(p, needle, m) == 0)
            return p;
    }
    return NULL;
}

/* Cut the raw fragments of cur at the occurrences of token id (scanned
 * left to right) into next; returns the number of occurrences, -1 on
 * NOMEM. */
static int64_t split_at(const nbi_vocab *v, const char *text, nb_token id, const fraglist *cur,
                        fraglist *next)
{
    const char *tt = v->text[id];
    size_t tl = v->len[id];
    int64_t hits = 0;
    next->n = 0;
    for (size_t i = 0; i < cur->n; i++) {
        fragment fr = cur->v[i];
        const char *hit;
        while (fr.token < 0 && (hit = find_bytes(text + fr.off, fr.len, tt, tl))) {
            size_t left = (size_t)(hit - (text + fr.off));
            if ((left && frag_push(next, (fragment){fr.off, left, -1}) < 0) ||
                frag_push(next, (fragment){0, 0, id}) < 0)
                return -1;
            fr.off += left + tl;
            fr.len -= left + tl;
            hits++;
        }
        if ((fr.token >= 0 || fr.len) && frag_push(next, fr) < 0)
            return -1;
    }
    return hits;
}

/* Split the text around special tokens as llama.cpp does: longest token
 * texts first, each cutting every piece of raw text the longer ones left.
 * Control and unknown tokens are only recognised when parse_special is
 * set; user-defined tokens always are. */
static nb_status partition(const nbi_vocab *v, const char *text, size_t len, int parse_special,
                           fraglist *f)
{
    /* With many special tokens, the text's byte pairs first: a token whose
     * first two bytes never occur together is not in it, which skips most
     * of them at once (DeepSeek LLM has 2,400). */
    uint64_t *pairs = NULL;
    fraglist next = {0};
    nb_status st = NB_OK;
    if (frag_push(f, (fragment){0, len, -1}) < 0)
        return NB_ERR_NOMEM;
    if (v->n_special > 32) {
        if (!(pairs = calloc(65536 / 64, sizeof *pairs)))
            return NB_ERR_NOMEM;
        const unsigned char *u = (const unsigned char *)text;
        for (size_t i = 0; i + 1 < len; i++) {
            unsigned pr = (unsigned)u[i] << 8 | u[i + 1];
            pairs[pr / 64] |= 1ull << (pr % 64);
        }
    }
    for (int s = 0; s < v->n_special; s++) {
        nb_token id = v->special[s];
        if (!parse_special && v->attr[id] != NBI_TOK_USER_DEFINED)
            continue;
        const unsigned char *tt = (const unsigned char *)v->text[id];
        size_t tl = v->len[id];
        if (tl > len)
            continue;
        if (pairs && tl > 1) {
            unsigned pr = (unsigned)tt[0] << 8 | tt[1];
            if (!(pairs[pr / 64] >> (pr % 64) & 1))
                continue;
        }
        int64_t hits = split_at(v, text, id, f, &next);
        if (hits < 0) {
            st = NB_ERR_NOMEM;
            break;
        }
        if (hits) {
            fraglist t = *f;
            *f = next;
            next = t;
        }
    }
    free(next.v);
    free(pairs);
    return st;
}

int64_t nb_tokenize(const nb_model *m, const char *text, size_t len, nb_token *out, int64_t cap,
                    int flags)
{
    const nbi_vocab *v = &m->vocab;
    nbi_tokbuf b = {out, out ? cap : 0, 0};
    if (!text && len)
        return -NB_ERR_INVALID;
    if (v->type != NBI_VOCAB_SPM && v->type != NBI_VOCAB_BPE)
        return -NB_ERR_UNSUPPORTED;
    int add_special = (flags & NB_TOK_ADD_SPECIAL) != 0;
    if (add_special && v->add_bos)
        nbi_emit(&b, v->bos);
    if (len) {
        fraglist f = {0};
        nbi_bpe_scratch *scratch = NULL;
        nb_status st = partition(v, text, len, (flags & NB_TOK_PARSE_SPECIAL) != 0, &f);
        int prev_special = 1; /* the input start counts as following a special token */
        for (size_t i = 0; st == NB_OK && i < f.n; i++) {
            if (f.v[i].token >= 0) {
                nbi_emit(&b, f.v[i].token);
                prev_special = 1;
            } else if (v->type == NBI_VOCAB_SPM) {
                st = nbi_spm_tokenize(v, text + f.v[i].off, f.v[i].len,
                                      v->add_space_prefix && prev_special, &b);
                prev_special = 0;
            } else {
                st = nbi_bpe_tokenize(v, text + f.v[i].off, f.v[i].len, &scratch, &b);
            }
        }
        free(f.v);
        nbi_bpe_scratch_free(scratch);
        if (st)
            return -(int64_t)st;
    }
    if (add_special && v->add_eos && v->eos >= 0)
        nbi_emit(&b, v->eos);
    return b.n;
}

/* ------------------------------------------------------------------ pieces */

int nb_token_piece(const nb_model *m, nb_token t, char *buf, size_t cap, int flags)
{
    const nbi_vocab *v = &m->vocab;
    if (t < 0 || t >= v->n)
        return -NB_ERR_INVALID;
    const char *s = v->text[t];
    size_t len = v->len[t];
    char tmp[NBI_MAX_PIECE];
    switch (v->attr[t]) {
    case NBI_TOK_CONTROL:
    case NBI_TOK_UNKNOWN:
        if (!(flags & NB_PIECE_SPECIAL))
            len = 0;
        break;
    case NBI_TOK_UNUSED:
        len = 0;
        break;
    case NBI_TOK_USER_DEFINED:
        break;
    case NBI_TOK_BYTE:
        if (v->type == NBI_VOCAB_BPE) {
            len = 0; /* no meaning in a byte-level vocabulary; llama.cpp shows nothing */
        } else if (len == 6 && memcmp(s, "<0x", 3) == 0) {
            int byte = hex_byte(s + 3);
            if (byte >= 0) {
                tmp[0] = (char)byte;
                s = tmp;
                len = 1;
            }
        }
        break;
    default: /* normal text */
        len = v->type == NBI_VOCAB_BPE ? nbi_bpe_piece(s, len, tmp) : nbi_spm_piece(s, len, tmp);
        s = tmp;
        break;
    }
    if (cap)
        memcpy(buf, s, NBI_MIN(len, cap));
    return (int)len;
}

/* ------------------------------------------------------------------ detok */

void nb_detok_init(nb_detok *d, int flags)
{
    memset(d, 0, sizeof *d);
    d->flags = flags;
}

typedef struct outbuf {
    char *p;
    size_t cap, n;
} outbuf;

static void out_bytes(outbuf *o, const void *s, size_t n)
{
    if (o->cap && o->n < o->cap - 1) {
        size_t k = NBI_MIN(n, o->cap - 1 - o->n);
        memcpy(o->p + o->n, s, k);
        o->n += k;
        o->p[o->n] = 0;
    }
}

static void out_replacement(outbuf *o)
{
    out_bytes(o, "\xef\xbf\xbd", 3);
}

/* Feed bytes through the pending-character buffer. */
static void detok_bytes(nb_detok *d, const unsigned char *s, size_t n, outbuf *o)
{
    size_t i = 0;
    while (i < n) {
        if (d->n_pending == 0) {
            /* Fast path: copy the longest run of complete valid characters. */
            size_t start = i;
            int cl;
            while (i < n && (cl = nbi_utf8_valid_len(s + i, n - i)) > 0)
                i += (size_t)cl;
            out_bytes(o, s + start, i - start);
            if (i == n)
                break;
            /* An incomplete sequence at the end waits for more bytes. */
            int want = nbi_utf8_len(s[i]);
            if (want > 1 && (size_t)want > n - i) {
                unsigned char probe[4] = {0};
                memcpy(probe, s + i, n - i);
                int ok = 1;
                for (size_t k = 1; k < n - i; k++)
                    ok &= (probe[k] & 0xc0) == 0x80;
                if (ok && (s[i] >= 0xc2 && s[i] <= 0xf4)) {
                    memcpy(d->pending, s + i, n - i);
                    d->n_pending = (int)(n - i);
                    return;
                }
            }
            out_replacement(o);
            i++;
            continue;
        }
        /* Complete a pending character. */
        d->pending[d->n_pending++] = s[i++];
        int want = nbi_utf8_len(d->pending[0]);
        if ((d->pending[d->n_pending - 1] & 0xc0) != 0x80) {
            /* not a continuation: the pending bytes were garbage */
            out_replacement(o);
            unsigned char c = d->pending[d->n_pending - 1];
            d->n_pending = 0;
            detok_bytes(d, &c, 1, o);
            continue;
        }
        if (d->n_pending == want) {
            if (nbi_utf8_valid_len(d->pending, (size_t)want) == want)
                out_bytes(o, d->pending, (size_t)want);
            else
                out_replacement(o);
            d->n_pending = 0;
        }
    }
}

size_t nb_detok_push(nb_detok *d, const nb_model *m, nb_token t, char *out, size_t cap)
{
    char piece[NBI_MAX_PIECE];
    outbuf o = {out, cap, 0};
    if (cap)
        out[0] = 0;
    int n = nb_token_piece(m, t, piece, sizeof piece, d->flags);
    if (n <= 0)
        return 0;
    detok_bytes(d, (const unsigned char *)piece, (size_t)n, &o);
    return o.n;
}

size_t nb_detok_flush(nb_detok *d, char *out, size_t cap)
{
    outbuf o = {out, cap, 0};
    if (cap)
        out[0] = 0;
    if (d->n_pending)
        out_replacement(&o);
    d->n_pending = 0;
    return o.n;
}
