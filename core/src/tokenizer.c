/*
 * tokenizer.c - the vocabulary and the SentencePiece (SPM) tokenizer.
 *
 * Tokenization follows llama.cpp's SPM rules so that prompts produce the
 * same ids as there: special tokens are split out first, a space is put in
 * front of text that starts the input or follows a special token, spaces
 * become U+2581, then adjacent symbols are merged greedily by the score of
 * the merged piece (highest first, leftmost on ties), and characters with
 * no token fall back to <0xNN> byte tokens.
 *
 * Detokenization turns pieces back into bytes and, in nb_detok, holds back
 * partial UTF-8 characters so a stream only ever shows whole characters.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

#define SPM_SPACE "\xe2\x96\x81" /* U+2581 LOWER ONE EIGHTH BLOCK */

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
    } else {
        return nbi_err(err, errlen, NB_ERR_UNSUPPORTED,
                       "tokenizer '%.*s' is not supported (nibble reads SentencePiece 'llama' "
                       "vocabularies)",
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
            unsigned b;
            char hex[3] = {s[3], s[4], 0};
            if (sscanf(hex, "%2x", &b) == 1 && v->byte_tok[b] < 0)
                v->byte_tok[b] = i;
        }
        if ((t == NBI_TOK_CONTROL || t == NBI_TOK_USER_DEFINED || t == NBI_TOK_UNKNOWN) && len > 0)
            v->special[v->n_special++] = i;
    }
    qsort_r(v->special, (size_t)v->n_special, sizeof *v->special, cmp_special, v);

    /* SentencePiece defaults, as llama.cpp assumes for 'llama' vocabularies. */
    v->unk = 0;
    v->bos = n > 1 ? 1 : -1;
    v->eos = n > 2 ? 2 : -1;
    v->add_bos = true;
    v->add_eos = false;
    v->add_space_prefix = true;
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
        (st = nbi_gguf_get_bool(g, "tokenizer.ggml.add_space_prefix", &v->add_space_prefix,
                                &found, err, errlen)))
        return st;
    if (v->add_bos && v->bos < 0)
        return nbi_err(err, errlen, NB_ERR_FORMAT, "the vocabulary asks for BOS but has none");

    /* End-of-generation tokens: EOS, EOT, and the end-of-turn markers of
     * common chat formats when the vocabulary marks them as control. */
    static const char *const eog_names[] = {"<|eot_id|>", "<|im_end|>", "<|end|>",
                                            "<end_of_turn>", "<|endoftext|>", "<EOT>",
                                            "\xe2\x96\x81<EOT>"};
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
    nbi_strmap_free(&v->map);
    memset(v, 0, sizeof *v);
}

/* ------------------------------------------------------------------ output */

typedef struct tokbuf {
    nb_token *out;
    int64_t cap, n;
} tokbuf;

static void emit(tokbuf *b, nb_token t)
{
    if (b->n < b->cap)
        b->out[b->n] = t;
    b->n++;
}

/* ------------------------------------------------------------------ SPM */

typedef struct spm_sym {
    int prev, next; /* linked list of live symbols; -1 ends */
    uint32_t off, len;
} spm_sym;

typedef struct spm_bigram {
    float score;
    int left;       /* symbol index */
    uint32_t size;  /* bytes of the merged text, to detect stale entries */
} spm_bigram;

/* Max-heap order: higher score first, then the leftmost pair. */
static int bigram_before(const spm_bigram *a, const spm_bigram *b)
{
    return a->score > b->score || (a->score == b->score && a->left < b->left);
}

typedef struct spm_heap {
    spm_bigram *v;
    size_t n, cap;
} spm_heap;

static int heap_push(spm_heap *h, spm_bigram b)
{
    if (h->n == h->cap) {
        size_t nc = h->cap ? h->cap * 2 : 64;
        spm_bigram *nv = nbi_malloc_array(nc, sizeof *nv);
        if (!nv)
            return -1;
        if (h->n)
            memcpy(nv, h->v, h->n * sizeof *nv);
        free(h->v);
        h->v = nv;
        h->cap = nc;
    }
    size_t i = h->n++;
    while (i > 0) {
        size_t parent = (i - 1) / 2;
        if (!bigram_before(&b, &h->v[parent]))
            break;
        h->v[i] = h->v[parent];
        i = parent;
    }
    h->v[i] = b;
    return 0;
}

static spm_bigram heap_pop(spm_heap *h)
{
    spm_bigram top = h->v[0], last = h->v[--h->n];
    size_t i = 0;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= h->n)
            break;
        if (c + 1 < h->n && bigram_before(&h->v[c + 1], &h->v[c]))
            c++;
        if (!bigram_before(&h->v[c], &last))
            break;
        h->v[i] = h->v[c];
        i = c;
    }
    if (h->n)
        h->v[i] = last;
    return top;
}

static int try_bigram(const nbi_vocab *v, const char *text, const spm_sym *sym, int left,
                      int right, spm_heap *h)
{
    if (left < 0 || right < 0)
        return 0;
    uint32_t size = sym[left].len + sym[right].len;
    int32_t id = nbi_strmap_get(&v->map, text + sym[left].off, size);
    if (id < 0)
        return 0;
    spm_bigram b = {v->score[id], left, size};
    return heap_push(h, b);
}

/* llama.cpp sizes symbols by the first byte alone (0xF8..0xFF count as
 * four), clamped to the text; keeping that rule keeps ids identical on
 * invalid UTF-8. */
static uint32_t spm_char_len(unsigned char c)
{
    static const uint8_t by_high_nibble[16] = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 3, 4};
    return by_high_nibble[c >> 4];
}

static void spm_emit_symbol(const nbi_vocab *v, const char *s, uint32_t len, tokbuf *out)
{
    int32_t id = nbi_strmap_get(&v->map, s, len);
    if (id >= 0) {
        emit(out, id);
        return;
    }
    for (uint32_t i = 0; i < len; i++) {
        int32_t b = v->byte_tok[(unsigned char)s[i]];
        if (b < 0) {
            /* no byte token: try the byte as a one-character piece */
            b = nbi_strmap_get(&v->map, s + i, 1);
            if (b < 0)
                b = v->unk;
        }
        if (b >= 0)
            emit(out, b);
    }
}

/* Tokenize one run of text that contains no special tokens. */
static nb_status spm_tokenize(const nbi_vocab *v, const char *raw, size_t raw_len, int prefix,
                              tokbuf *out)
{
    /* Escape: optional leading space, every ' ' becomes U+2581. */
    size_t n_spaces = 0;
    for (size_t i = 0; i < raw_len; i++)
        n_spaces += raw[i] == ' ';
    /* each space grows from 1 to 3 bytes; the prefix adds 3 */
    if (raw_len > UINT32_MAX / 4)
        return NB_ERR_INVALID;
    size_t len = raw_len + n_spaces * 2 + (prefix ? 3 : 0);
    char *text = malloc(len + 1);
    spm_sym *sym = nbi_malloc_array(len + 1, sizeof *sym);
    spm_heap heap = {0};
    nb_status st = NB_OK;
    if (!text || !sym) {
        st = NB_ERR_NOMEM;
        goto done;
    }
    size_t k = 0;
    if (prefix) {
        memcpy(text, SPM_SPACE, 3);
        k = 3;
    }
    for (size_t i = 0; i < raw_len; i++) {
        if (raw[i] == ' ') {
            memcpy(text + k, SPM_SPACE, 3);
            k += 3;
        } else {
            text[k++] = raw[i];
        }
    }

    int n_sym = 0;
    for (uint32_t off = 0; off < len;) {
        uint32_t cl = NBI_MIN(spm_char_len((unsigned char)text[off]), (uint32_t)len - off);
        sym[n_sym] = (spm_sym){n_sym - 1, off + cl < len ? n_sym + 1 : -1, off, cl};
        n_sym++;
        off += cl;
    }
    for (int i = 1; i < n_sym; i++)
        if (try_bigram(v, text, sym, i - 1, i, &heap) < 0) {
            st = NB_ERR_NOMEM;
            goto done;
        }
    while (heap.n) {
        spm_bigram b = heap_pop(&heap);
        spm_sym *l = &sym[b.left];
        if (l->len == 0 || l->next < 0)
            continue;
        spm_sym *r = &sym[l->next];
        if (l->len + r->len != b.size)
            continue; /* one side changed since this pair was queued */
        l->len += r->len;
        r->len = 0;
        l->next = r->next;
        if (r->next >= 0)
            sym[r->next].prev = b.left;
        if (try_bigram(v, text, sym, l->prev, b.left, &heap) < 0 ||
            try_bigram(v, text, sym, b.left, l->next, &heap) < 0) {
            st = NB_ERR_NOMEM;
            goto done;
        }
    }
    for (int i = n_sym ? 0 : -1; i >= 0; i = sym[i].next)
        spm_emit_symbol(v, text + sym[i].off, sym[i].len, out);
done:
    free(text);
    free(sym);
    free(heap.v);
    return st;
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

static int frag_insert(fraglist *f, size_t at, fragment x)
{
    if (f->n == f->cap) {
        size_t nc = f->cap ? f->cap * 2 : 16;
        fragment *nv = realloc(f->v, nc * sizeof *nv);
        if (!nv)
            return -1;
        f->v = nv;
        f->cap = nc;
    }
    memmove(f->v + at + 1, f->v + at, (f->n - at) * sizeof *f->v);
    f->v[at] = x;
    f->n++;
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

/* Split the text around special tokens, longest token texts first, as
 * llama.cpp does.  Control and unknown tokens are only recognised when
 * parse_special is set; user-defined tokens always are. */
static nb_status partition(const nbi_vocab *v, const char *text, size_t len, int parse_special,
                           fraglist *f)
{
    if (frag_insert(f, 0, (fragment){0, len, -1}) < 0)
        return NB_ERR_NOMEM;
    for (int s = 0; s < v->n_special; s++) {
        nb_token id = v->special[s];
        if (!parse_special && v->attr[id] != NBI_TOK_USER_DEFINED)
            continue;
        const char *tt = v->text[id];
        size_t tl = v->len[id];
        for (size_t i = 0; i < f->n; i++) {
            if (f->v[i].token >= 0)
                continue;
            const char *hit = find_bytes(text + f->v[i].off, f->v[i].len, tt, tl);
            if (!hit)
                continue;
            size_t at = (size_t)(hit - text);
            fragment rest = {at + tl, f->v[i].off + f->v[i].len - (at + tl), -1};
            size_t left_len = at - f->v[i].off;
            if (left_len) {
                f->v[i].len = left_len;
                if (frag_insert(f, ++i, (fragment){0, 0, id}) < 0)
                    return NB_ERR_NOMEM;
            } else {
                f->v[i] = (fragment){0, 0, id};
            }
            if (rest.len && frag_insert(f, i + 1, rest) < 0)
                return NB_ERR_NOMEM;
            /* the loop continues with the rest fragment at i + 1 */
        }
    }
    return NB_OK;
}

int64_t nb_tokenize(const nb_model *m, const char *text, size_t len, nb_token *out, int64_t cap,
                    int flags)
{
    const nbi_vocab *v = &m->vocab;
    tokbuf b = {out, out ? cap : 0, 0};
    if (!text && len)
        return -NB_ERR_INVALID;
    if (v->type != NBI_VOCAB_SPM)
        return -NB_ERR_UNSUPPORTED;
    int add_special = (flags & NB_TOK_ADD_SPECIAL) != 0;
    if (add_special && v->add_bos)
        emit(&b, v->bos);
    if (len) {
        fraglist f = {0};
        nb_status st = partition(v, text, len, (flags & NB_TOK_PARSE_SPECIAL) != 0, &f);
        int prev_special = 1; /* the input start counts as following a special token */
        for (size_t i = 0; st == NB_OK && i < f.n; i++) {
            if (f.v[i].token >= 0) {
                emit(&b, f.v[i].token);
                prev_special = 1;
            } else {
                st = spm_tokenize(v, text + f.v[i].off, f.v[i].len,
                                  v->add_space_prefix && prev_special, &b);
                prev_special = 0;
            }
        }
        free(f.v);
        if (st)
            return -(int64_t)st;
    }
    if (add_special && v->add_eos && v->eos >= 0)
        emit(&b, v->eos);
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
        if (len == 6 && memcmp(s, "<0x", 3) == 0) {
            unsigned byte;
            char hex[3] = {s[3], s[4], 0};
            if (sscanf(hex, "%2x", &byte) == 1) {
                tmp[0] = (char)byte;
                s = tmp;
                len = 1;
            }
        }
        break;
    default: { /* normal text: U+2581 is a space */
        size_t k = 0;
        for (size_t i = 0; i < len;) {
            if (i + 3 <= len && memcmp(s + i, SPM_SPACE, 3) == 0) {
                tmp[k++] = ' ';
                i += 3;
            } else {
                tmp[k++] = s[i++];
            }
        }
        s = tmp;
        len = k;
    }
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
