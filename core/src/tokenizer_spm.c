/*
 * tokenizer_spm.c - the SentencePiece (SPM) tokenizer.
 *
 * Tokenization follows llama.cpp's SPM rules so that prompts produce the
 * same ids as there: a space is put in front of text that starts the input
 * or follows a special token (the caller decides), spaces become U+2581,
 * then adjacent symbols are merged greedily by the score of the merged
 * piece (highest first, leftmost on ties), and characters with no token
 * fall back to <0xNN> byte tokens.
 */
#include <stdlib.h>
#include <string.h>

#include "internal.h"

#define SPM_SPACE "\xe2\x96\x81" /* U+2581 LOWER ONE EIGHTH BLOCK */

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

static void spm_emit_symbol(const nbi_vocab *v, const char *s, uint32_t len, nbi_tokbuf *out)
{
    int32_t id = nbi_strmap_get(&v->map, s, len);
    if (id >= 0) {
        nbi_emit(out, id);
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
            nbi_emit(out, b);
    }
}

nb_status nbi_spm_tokenize(const nbi_vocab *v, const char *raw, size_t raw_len, int prefix,
                           nbi_tokbuf *out)
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

size_t nbi_spm_piece(const char *s, size_t len, char *out)
{
    size_t k = 0;
    for (size_t i = 0; i < len;) {
        if (i + 3 <= len && memcmp(s + i, SPM_SPACE, 3) == 0) {
            out[k++] = ' ';
            i += 3;
        } else {
            out[k++] = s[i++];
        }
    }
    return k;
}
