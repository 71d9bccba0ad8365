/*
 * tokenizer_bpe.c - the byte-level BPE tokenizer (tokenizer.ggml.model =
 * gpt2: GPT-2, Llama 3, Qwen2, DeepSeek, StarCoder, Falcon, MPT, ...).
 *
 * As llama.cpp and Hugging Face's tokenizers do it: the pre-tokenizer named
 * by tokenizer.ggml.pre cuts the text into pieces (unicode.c); each piece's
 * bytes are written as GPT-2's byte-to-unicode characters, one character
 * per byte, and the adjacent pair whose merge comes first in
 * tokenizer.ggml.merges is merged (leftmost among equals) until no pair
 * has a merge.  Vocabularies of the Llama 3 kind take a piece that is
 * already a token as it is.
 *
 * Every merge must join two tokens into a third, as Hugging Face's
 * tokenizers requires of the files it loads, so symbols are token ids and
 * a merge is an (id, id) -> (rank, id) lookup.  A byte whose character is
 * no token cannot merge; it is emitted as llama.cpp does (the one-byte
 * tokens of its UTF-8, usually none).
 */
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

/* ------------------------------------------------------------------ bytes */

/* GPT-2 writes the bytes that are printable Latin-1 as themselves and the
 * 68 others (controls, space, 0x7F-0xA0, soft hyphen) as U+0100.. in
 * byte order. */
static uint32_t byte_to_cp(unsigned b)
{
    if (b <= 0x20)
        return 0x100 + b;
    if (b >= 0x7f && b <= 0xa0)
        return 0x100 + 33 + (b - 0x7f);
    if (b == 0xad)
        return 0x143;
    return b;
}

/* The byte a code point stands for, or -1 outside the mapping. */
static int cp_to_byte(uint32_t cp)
{
    if ((cp >= 0x21 && cp <= 0x7e) || (cp >= 0xa1 && cp <= 0xac) || (cp >= 0xae && cp <= 0xff))
        return (int)cp;
    if (cp >= 0x100 && cp <= 0x120)
        return (int)(cp - 0x100);
    if (cp >= 0x121 && cp <= 0x142)
        return (int)(cp - 0x121 + 0x7f);
    if (cp == 0x143)
        return 0xad;
    return -1;
}

/* The characters of n bytes into out (room for 2n); returns the length. */
static size_t encode_bytes(const unsigned char *s, size_t n, char *out)
{
    size_t k = 0;
    for (size_t i = 0; i < n; i++)
        k += nbi_utf8_encode(byte_to_cp(s[i]), out + k);
    return k;
}

size_t nbi_bpe_piece(const char *s, size_t len, char *out)
{
    size_t k = 0;
    for (size_t i = 0; i < len;) {
        uint32_t cp;
        size_t cl = nbi_utf8_decode((const unsigned char *)s + i, len - i, &cp);
        int b = cp_to_byte(cp);
        if (b >= 0) {
            out[k++] = (char)b;
        } else {
            /* not a byte's character: as it is (llama.cpp shows a marker) */
            memcpy(out + k, s + i, cl);
            k += cl;
        }
        i += cl;
    }
    return k;
}

/* ------------------------------------------------------------------ merges */

typedef struct merge {
    uint64_t key;     /* left << 32 | right; UINT64_MAX when the slot is empty */
    int32_t rank;     /* position in tokenizer.ggml.merges */
    int32_t result;   /* the merged token */
} merge;

struct nbi_bpe {
    int32_t byte_tok[256]; /* the token of each byte's character, or -1 */
    int ignore_merges;
    merge *slot;           /* open addressing, linear probing */
    uint64_t mask;
    int shift;
};

#define EMPTY UINT64_MAX

static inline uint64_t pair_key(int32_t a, int32_t b)
{
    return ((uint64_t)(uint32_t)a << 32) | (uint32_t)b;
}

static inline uint64_t pair_slot(const nbi_bpe *m, uint64_t key)
{
    return (key * 0x9e3779b97f4a7c15ull) >> m->shift;
}

/* The rank of merging a and b (and its token in *result), or -1. */
static inline int32_t merge_find(const nbi_bpe *m, int32_t a, int32_t b, int32_t *result)
{
    uint64_t key = pair_key(a, b);
    for (uint64_t i = pair_slot(m, key);; i = (i + 1) & m->mask) {
        const merge *e = &m->slot[i];
        if (e->key == key) {
            *result = e->result;
            return e->rank;
        }
        if (e->key == EMPTY)
            return -1;
    }
}

void nbi_bpe_free(nbi_vocab *v)
{
    if (!v || !v->bpe)
        return;
    free(v->bpe->slot);
    free(v->bpe);
    v->bpe = NULL;
}

/* At most 64 bytes of untrusted text for a message, NUL-free. */
static int shown(size_t len) { return (int)NBI_MIN(len, 64); }

nb_status nbi_bpe_load(nbi_vocab *v, const nb_gguf *g, char *err, size_t errlen)
{
    const char *pre;
    size_t pre_len;
    int found;
    nb_status st = nbi_gguf_get_str(g, "tokenizer.ggml.pre", &pre, &pre_len, &found, err, errlen);
    if (st)
        return st;
    if (!found) {
        /* files from before the key existed; llama.cpp warns and does this */
        v->pre = NBI_PRE_DEFAULT;
        v->pre_missing = true;
    } else if ((v->pre = nbi_pre_find(pre, pre_len)) < 0) {
        char list[512];
        nbi_pre_list(list, sizeof list);
        return nbi_err(err, errlen, NB_ERR_UNSUPPORTED,
                       "pre-tokenizer '%.*s' (tokenizer.ggml.pre) is not supported; nibble "
                       "knows %s",
                       shown(pre_len), pre, list);
    }

    const nbi_kv *mk;
    if ((st = nbi_gguf_get_array(g, "tokenizer.ggml.merges", NB_GGUF_STRING, &mk, &found, err,
                                 errlen)))
        return st;
    if (!found)
        return nbi_err(err, errlen, NB_ERR_FORMAT,
                       "the BPE vocabulary has no merges (tokenizer.ggml.merges is missing)");
    if (mk->n > (uint64_t)INT32_MAX / 4)
        return nbi_err(err, errlen, NB_ERR_FORMAT, "tokenizer.ggml.merges has %" PRIu64 " entries",
                       mk->n);

    nbi_bpe *m = calloc(1, sizeof *m);
    if (!m)
        return nbi_err(err, errlen, NB_ERR_NOMEM, "out of memory loading the merges");
    v->bpe = m;
    m->ignore_merges = nbi_pre_ignore_merges(v->pre);
    uint64_t cap = 16;
    m->shift = 60;
    while (cap < 2 * mk->n) {
        cap *= 2;
        m->shift--;
    }
    m->mask = cap - 1;
    m->slot = nbi_malloc_array((size_t)cap, sizeof *m->slot);
    if (!m->slot)
        return nbi_err(err, errlen, NB_ERR_NOMEM, "out of memory loading the merges");
    for (uint64_t i = 0; i < cap; i++)
        m->slot[i].key = EMPTY;

    char joined[2 * NBI_MAX_PIECE];
    const uint8_t *p = mk->data;
    for (uint64_t r = 0; r < mk->n; r++) {
        const char *s;
        uint64_t len;
        p = nbi_gguf_next_str(p, &s, &len);
        /* "A B", split at the first space after the first byte, as llama.cpp does */
        const char *sp = len > 1 ? memchr(s + 1, ' ', (size_t)len - 1) : NULL;
        if (!sp || len > 2 * NBI_MAX_PIECE || sp + 1 == s + len)
            return nbi_err(err, errlen, NB_ERR_FORMAT,
                           "tokenizer.ggml.merges[%" PRIu64 "] '%.*s' is not two tokens "
                           "separated by a space",
                           r, shown(len), s);
        size_t la = (size_t)(sp - s), lb = (size_t)len - la - 1;
        int32_t a = nbi_strmap_get(&v->map, s, la);
        int32_t b = nbi_strmap_get(&v->map, sp + 1, lb);
        int32_t ab = -1;
        if (a >= 0 && b >= 0) {
            memcpy(joined, s, la);
            memcpy(joined + la, sp + 1, lb);
            ab = nbi_strmap_get(&v->map, joined, la + lb);
        }
        if (a < 0 || b < 0 || ab < 0)
            return nbi_err(err, errlen, NB_ERR_FORMAT,
                           "tokenizer.ggml.merges[%" PRIu64 "] '%.*s' merges %s: '%.*s' is "
                           "not a token",
                           r, shown(len), s, a < 0 || b < 0 ? "an unknown token" : "into no token",
                           a < 0   ? shown(la)
                           : b < 0 ? shown(lb)
                                   : shown(la + lb),
                           a < 0 ? s : b < 0 ? sp + 1 : joined);
        uint64_t key = pair_key(a, b), i = pair_slot(m, key);
        while (m->slot[i].key != EMPTY && m->slot[i].key != key)
            i = (i + 1) & m->mask;
        if (m->slot[i].key == key)
            continue; /* a repeated merge keeps its first rank */
        m->slot[i] = (merge){key, (int32_t)r, ab};
    }

    for (int b = 0; b < 256; b++) {
        char ch[4];
        size_t n = nbi_utf8_encode(byte_to_cp((unsigned)b), ch);
        m->byte_tok[b] = nbi_strmap_get(&v->map, ch, n);
    }
    return NB_OK;
}

/* ------------------------------------------------------------------ tokenize */

typedef struct sym {
    int32_t id;       /* token, or -1 for a byte without one */
    int32_t prev, next;
    uint32_t off, len; /* bytes of the piece; len 0 once merged away */
} sym;

typedef struct cand {
    int32_t rank, left, right;
    int32_t result;   /* the merged token */
    uint32_t size;    /* bytes of the pair when queued, to detect stale entries */
} cand;

struct nbi_bpe_scratch {
    nbi_pretok pt;
    sym *sym;
    cand *heap;
    char *enc;
    size_t cap_sym, cap_heap, n_heap, cap_enc;
};

/* Min-heap order: the earlier merge, then the leftmost pair. */
static inline int cand_before(const cand *a, const cand *b)
{
    return a->rank < b->rank || (a->rank == b->rank && a->left < b->left);
}

static void heap_push(nbi_bpe_scratch *s, cand c)
{
    size_t i = s->n_heap++;
    while (i > 0) {
        size_t parent = (i - 1) / 2;
        if (!cand_before(&c, &s->heap[parent]))
            break;
        s->heap[i] = s->heap[parent];
        i = parent;
    }
    s->heap[i] = c;
}

static cand heap_pop(nbi_bpe_scratch *s)
{
    cand top = s->heap[0], last = s->heap[--s->n_heap];
    size_t i = 0, n = s->n_heap;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= n)
            break;
        if (c + 1 < n && cand_before(&s->heap[c + 1], &s->heap[c]))
            c++;
        if (!cand_before(&s->heap[c], &last))
            break;
        s->heap[i] = s->heap[c];
        i = c;
    }
    if (n)
        s->heap[i] = last;
    return top;
}

/* Queue the pair (left, right) when it has a merge.  The heap has room:
 * a piece of n symbols queues at most n - 1 pairs at first and 2 more
 * per merge, of which there are at most n - 1. */
static void try_pair(const nbi_bpe *m, nbi_bpe_scratch *s, int32_t left, int32_t right)
{
    if (left < 0 || right < 0)
        return;
    const sym *l = &s->sym[left], *r = &s->sym[right];
    if (l->id < 0 || r->id < 0)
        return;
    int32_t result;
    int32_t rank = merge_find(m, l->id, r->id, &result);
    if (rank >= 0)
        heap_push(s, (cand){rank, left, right, result, l->len + r->len});
}

/* Room for need elements; the contents are not kept. */
static nb_status grow(void **p, size_t *cap, size_t need, size_t size)
{
    if (need <= *cap)
        return NB_OK;
    size_t nc = *cap ? *cap : 64;
    while (nc < need)
        nc *= 2;
    void *np = nbi_malloc_array(nc, size);
    if (!np)
        return NB_ERR_NOMEM;
    free(*p);
    *p = np;
    *cap = nc;
    return NB_OK;
}

/* The tokens of one piece (its raw bytes). */
static nb_status bpe_piece(const nbi_vocab *v, nbi_bpe_scratch *s, const unsigned char *w,
                           size_t n, nbi_tokbuf *out)
{
    const nbi_bpe *m = v->bpe;
    if (n == 0)
        return NB_OK;
    if (n == 1 && m->byte_tok[w[0]] >= 0) {
        nbi_emit(out, m->byte_tok[w[0]]);
        return NB_OK;
    }
    if (n > INT32_MAX / 4)
        return NB_ERR_NOMEM;
    if (grow((void **)&s->enc, &s->cap_enc, 2 * n, 1) ||
        grow((void **)&s->sym, &s->cap_sym, n, sizeof *s->sym) ||
        grow((void **)&s->heap, &s->cap_heap, 3 * n, sizeof *s->heap))
        return NB_ERR_NOMEM;
    if (m->ignore_merges && n <= NBI_MAX_PIECE) {
        size_t k = encode_bytes(w, n, s->enc);
        int32_t id = nbi_strmap_get(&v->map, s->enc, k);
        if (id >= 0) {
            nbi_emit(out, id);
            return NB_OK;
        }
    }
    for (size_t i = 0; i < n; i++)
        s->sym[i] = (sym){m->byte_tok[w[i]], (int32_t)i - 1,
                          i + 1 < n ? (int32_t)i + 1 : -1, (uint32_t)i, 1};
    s->n_heap = 0;
    for (size_t i = 1; i < n; i++)
        try_pair(m, s, (int32_t)i - 1, (int32_t)i);
    while (s->n_heap) {
        cand c = heap_pop(s);
        sym *l = &s->sym[c.left], *r = &s->sym[c.right];
        /* a symbol only grows by taking its right neighbour, so the pair is
         * current when both are alive at their queued sizes */
        if (l->len == 0 || r->len == 0 || l->len + r->len != c.size)
            continue;
        l->id = c.result;
        l->len += r->len;
        r->len = 0;
        l->next = r->next;
        if (r->next >= 0)
            s->sym[r->next].prev = c.left;
        try_pair(m, s, l->prev, c.left);
        try_pair(m, s, c.left, l->next);
    }
    for (int32_t i = 0; i >= 0; i = s->sym[i].next) {
        const sym *y = &s->sym[i];
        if (y->id >= 0) {
            nbi_emit(out, y->id);
            continue;
        }
        /* a byte whose character is no token: llama.cpp looks up each
         * byte of the character's UTF-8 as a token of its own */
        char ch[2];
        size_t k = encode_bytes(w + y->off, 1, ch);
        for (size_t j = 0; j < k; j++) {
            int32_t id = nbi_strmap_get(&v->map, ch + j, 1);
            if (id >= 0)
                nbi_emit(out, id);
        }
    }
    return NB_OK;
}

nb_status nbi_bpe_tokenize(const nbi_vocab *v, const char *text, size_t len,
                           nbi_bpe_scratch **scratch, nbi_tokbuf *out)
{
    if (!v->bpe)
        return NB_ERR_INVALID;
    if (!*scratch && !(*scratch = calloc(1, sizeof **scratch)))
        return NB_ERR_NOMEM;
    nbi_bpe_scratch *s = *scratch;
    nb_status st = nbi_pretok_run(&s->pt, v->pre, text, len);
    if (st)
        return st;
    const nbi_pretok *pt = &s->pt;
    size_t a = 0;
    for (size_t i = 0; i < pt->n_pieces; i++) {
        size_t b = pt->ends[i];
        st = bpe_piece(v, s, (const unsigned char *)pt->text + pt->off[a], pt->off[b] - pt->off[a],
                       out);
        if (st)
            return st;
        a = b;
    }
    return NB_OK;
}

void nbi_bpe_scratch_free(nbi_bpe_scratch *s)
{
    if (!s)
        return;
    nbi_pretok_free(&s->pt);
    free(s->sym);
    free(s->heap);
    free(s->enc);
    free(s);
}

const char *nb_model_pre_tokenizer(const nb_model *m)
{
    return m->vocab.type == NBI_VOCAB_BPE ? nbi_pre_name(m->vocab.pre) : "";
}
