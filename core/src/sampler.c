/*
 * sampler.c - token sampling: repetition penalties, top-k, top-p, min-p,
 * temperature and a seeded draw, in llama.cpp's default order.
 *
 * Decisions a caller may notice (the header leaves them open):
 *  - NaN logits count as -inf and +inf as FLT_MAX, so +inf tokens win and
 *    arithmetic on the rest stays finite.  When every logit is -inf or NaN
 *    the sampler returns token 0 (what argmax with "ties go to the lowest
 *    id" gives), in greedy and random mode alike.
 *  - Equal logits are ordered by id, lowest first, everywhere: greedy,
 *    the top-k cut and the top-p prefix.  This makes results independent
 *    of the selection algorithm.
 *  - nb_sampler_new(NULL, ...) uses the default parameters.
 *  - Ids outside [0, n_vocab) passed to nb_sampler_accept are ignored;
 *    nb_sampler_sample(NULL, ...) or a NULL logits pointer returns -1.
 *  - repeat_last_n is limited to SAMPLER_MAX_LAST_N; params_check rejects
 *    larger windows rather than silently shrinking them.
 *  - A random (temp > 0) sample always consumes exactly one draw, so the
 *    stream of draws does not depend on the shape of the distribution.
 */
#include <float.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "nibble.h"

#define SAMPLER_MAX_LAST_N 65536
#define SAMPLER_DEFAULT_SEED UINT64_C(0xC0FFEE)
/* Bins for the nucleus search without top-k: 256 bins of 1/8 nat below
 * the maximum logit; everything further down shares the last bin. */
#define SAMPLER_BUCKETS 256
#define SAMPLER_BUCKET_SPAN 32.0f

typedef struct cand {
    float l;    /* logit, later the unnormalised weight */
    nb_token id;
} cand;

struct nb_sampler {
    nb_sampler_params p;
    int n_vocab;
    int penalties;      /* 1 when the penalty stage can change anything */
    cand *c;            /* n_vocab work entries */
    int32_t *count;     /* per-token occurrences in the window (penalties) */
    nb_token *ring;     /* the last repeat_last_n accepted tokens */
    int ring_len, ring_pos;
    uint64_t rng[4];
    double bmass[SAMPLER_BUCKETS]; /* nucleus search scratch */
    int bcount[SAMPLER_BUCKETS];
};

/* ------------------------------------------------------------------ RNG */

/* xoshiro256** seeded through splitmix64: fixed-width integer arithmetic
 * only, so a seed gives the same stream on every platform and compiler. */

static uint64_t splitmix64(uint64_t *x)
{
    uint64_t z = (*x += UINT64_C(0x9E3779B97F4A7C15));
    z = (z ^ (z >> 30)) * UINT64_C(0xBF58476D1CE4E5B9);
    z = (z ^ (z >> 27)) * UINT64_C(0x94D049BB133111EB);
    return z ^ (z >> 31);
}

static uint64_t rotl64(uint64_t x, int k)
{
    return (x << k) | (x >> (64 - k));
}

static void rng_seed(uint64_t st[4], uint64_t seed)
{
    /* splitmix64 never yields four zero words, the one state xoshiro
     * cannot leave. */
    for (int i = 0; i < 4; i++)
        st[i] = splitmix64(&seed);
}

static uint64_t rng_next(uint64_t st[4])
{
    uint64_t r = rotl64(st[1] * 5, 7) * 9;
    uint64_t t = st[1] << 17;
    st[2] ^= st[0];
    st[3] ^= st[1];
    st[1] ^= st[2];
    st[0] ^= st[3];
    st[2] ^= t;
    st[3] = rotl64(st[3], 45);
    return r;
}

/* Uniform in [0, 1) with 53 random bits. */
static double rng_uniform(uint64_t st[4])
{
    return (double)(rng_next(st) >> 11) * 0x1.0p-53;
}

/* ------------------------------------------------------------------ params */

nb_sampler_params nb_sampler_default_params(void)
{
    nb_sampler_params p;
    memset(&p, 0, sizeof p);
    p.temp = 0.8f;
    p.top_k = 40;
    p.top_p = 0.95f;
    p.min_p = 0.05f;
    p.repeat_penalty = 1.0f;
    p.repeat_last_n = 64;
    p.freq_penalty = 0.0f;
    p.presence_penalty = 0.0f;
    p.seed = SAMPLER_DEFAULT_SEED;
    return p;
}

static nb_status bad(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static nb_status bad(char *err, size_t errlen, const char *fmt, ...)
{
    if (err && errlen > 0) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return NB_ERR_INVALID;
}

nb_status nb_sampler_params_check(const nb_sampler_params *p, char *err, size_t errlen)
{
    /* Comparisons are written so that NaN fails them. */
    if (!p)
        return bad(err, errlen, "sampler parameters missing");
    if (!(p->temp >= 0.0f) || !isfinite(p->temp))
        return bad(err, errlen, "temp must be a finite number >= 0 (0 = greedy), got %g",
                   (double)p->temp);
    if (p->top_k < 0)
        return bad(err, errlen, "top_k must be >= 0 (0 = off), got %d", p->top_k);
    if (!(p->top_p > 0.0f && p->top_p <= 1.0f))
        return bad(err, errlen, "top_p must be in (0, 1] (1 = off), got %g", (double)p->top_p);
    if (!(p->min_p >= 0.0f && p->min_p <= 1.0f))
        return bad(err, errlen, "min_p must be in [0, 1] (0 = off), got %g", (double)p->min_p);
    if (!(p->repeat_penalty > 0.0f) || !isfinite(p->repeat_penalty))
        return bad(err, errlen, "repeat_penalty must be a finite number > 0 (1 = off), got %g",
                   (double)p->repeat_penalty);
    if (p->repeat_last_n < 0 || p->repeat_last_n > SAMPLER_MAX_LAST_N)
        return bad(err, errlen, "repeat_last_n must be in [0, %d] (0 = off), got %d",
                   SAMPLER_MAX_LAST_N, p->repeat_last_n);
    if (!isfinite(p->freq_penalty))
        return bad(err, errlen, "freq_penalty must be a finite number (0 = off), got %g",
                   (double)p->freq_penalty);
    if (!isfinite(p->presence_penalty))
        return bad(err, errlen, "presence_penalty must be a finite number (0 = off), got %g",
                   (double)p->presence_penalty);
    return NB_OK;
}

/* ------------------------------------------------------------------ lifetime */

nb_status nb_sampler_new(const nb_sampler_params *params, int n_vocab, nb_sampler **out)
{
    if (!out)
        return NB_ERR_INVALID;
    *out = NULL;
    nb_sampler_params p = params ? *params : nb_sampler_default_params();
    if (n_vocab <= 0 || nb_sampler_params_check(&p, NULL, 0) != NB_OK)
        return NB_ERR_INVALID;
    if ((size_t)n_vocab > SIZE_MAX / sizeof(cand))
        return NB_ERR_NOMEM;

    nb_sampler *s = calloc(1, sizeof *s);
    if (!s)
        return NB_ERR_NOMEM;
    s->p = p;
    s->n_vocab = n_vocab;
    s->penalties = p.repeat_last_n > 0 &&
                   (p.repeat_penalty != 1.0f || p.freq_penalty != 0.0f ||
                    p.presence_penalty != 0.0f);
    s->c = malloc((size_t)n_vocab * sizeof *s->c);
    if (s->penalties) {
        /* Parameters are fixed for the sampler's life, so the history is
         * only kept when it can matter. */
        s->count = calloc((size_t)n_vocab, sizeof *s->count);
        s->ring = malloc((size_t)p.repeat_last_n * sizeof *s->ring);
    }
    if (!s->c || (s->penalties && (!s->count || !s->ring))) {
        nb_sampler_free(s);
        return NB_ERR_NOMEM;
    }
    rng_seed(s->rng, p.seed);
    *out = s;
    return NB_OK;
}

void nb_sampler_free(nb_sampler *s)
{
    if (!s)
        return;
    free(s->c);
    free(s->count);
    free(s->ring);
    free(s);
}

void nb_sampler_accept(nb_sampler *s, nb_token t)
{
    if (!s || !s->penalties || t < 0 || t >= s->n_vocab)
        return;
    int cap = s->p.repeat_last_n;
    if (s->ring_len == cap) {
        s->count[s->ring[s->ring_pos]]--;
    } else {
        s->ring_len++;
    }
    s->ring[s->ring_pos] = t;
    s->count[t]++;
    s->ring_pos = (s->ring_pos + 1) % cap;
}

void nb_sampler_reset(nb_sampler *s, uint64_t seed)
{
    if (!s)
        return;
    if (s->penalties) {
        for (int i = 0; i < s->ring_len; i++)
            s->count[s->ring[i]] = 0;
    }
    s->ring_len = 0;
    s->ring_pos = 0;
    s->p.seed = seed;
    rng_seed(s->rng, seed);
}

/* ------------------------------------------------------------------ sampling */

static float sanitize(float x)
{
    if (isnan(x))
        return -INFINITY;
    if (x > FLT_MAX)
        return FLT_MAX;
    return x;
}

/* Total order: higher logit first, then lower id. */
static int better(const cand *a, const cand *b)
{
    return a->l > b->l || (a->l == b->l && a->id < b->id);
}

/* Min-heap on `better` (the worst entry at the root) over h[0..n). */
static void sift_worst(cand *h, int n, int i)
{
    cand x = h[i];
    for (;;) {
        int k = 2 * i + 1;
        if (k >= n)
            break;
        if (k + 1 < n && better(&h[k], &h[k + 1]))
            k++;
        if (!better(&x, &h[k]))
            break;
        h[i] = h[k];
        i = k;
    }
    h[i] = x;
}

/* Max-heap on `better` (the best entry at the root) over h[0..n). */
static void sift_best(cand *h, int n, int i)
{
    cand x = h[i];
    for (;;) {
        int k = 2 * i + 1;
        if (k >= n)
            break;
        if (k + 1 < n && better(&h[k + 1], &h[k]))
            k++;
        if (!better(&h[k], &x))
            break;
        h[i] = h[k];
        i = k;
    }
    h[i] = x;
}

/* llama.cpp's rule: a repeated token's logit is divided by the repeat
 * penalty when positive and multiplied when not, then the frequency
 * penalty is subtracted per occurrence and the presence penalty once.
 * Each distinct token in the window is penalised once: its count is
 * negated as a "done" mark and restored afterwards. */
static void apply_penalties(nb_sampler *s)
{
    const float rp = s->p.repeat_penalty;
    const float fp = s->p.freq_penalty;
    const float pp = s->p.presence_penalty;
    for (int i = 0; i < s->ring_len; i++) {
        nb_token t = s->ring[i];
        int32_t n = s->count[t];
        if (n <= 0)
            continue;
        float l = s->c[t].l;
        if (l <= 0.0f)
            l *= rp;
        else
            l /= rp;
        /* Clamp between the steps so that inf - inf cannot make a NaN
         * out of a finite logit. */
        l = sanitize(l) - ((float)n * fp + pp);
        s->c[t].l = sanitize(l);
        s->count[t] = -n;
    }
    for (int i = 0; i < s->ring_len; i++) {
        nb_token t = s->ring[i];
        if (s->count[t] < 0)
            s->count[t] = -s->count[t];
    }
}

/* Draw from the entries c[lo..hi), whose l fields already hold weights
 * (at least one positive).  Falls back to the last positive weight when
 * rounding puts the draw past the running sum. */
static nb_token draw(const cand *c, int lo, int hi, double sum, double u)
{
    double target = u * sum, cum = 0.0;
    nb_token last = c[lo].id;
    for (int i = lo; i < hi; i++) {
        if (c[i].l > 0.0f) {
            cum += c[i].l;
            last = c[i].id;
            if (target < cum)
                return c[i].id;
        }
    }
    return last;
}

/* The top-k path: keep the k best in a heap with the worst at the root,
 * O(n log k) and usually one comparison per token, then heap-sort them
 * best first into c[0..k).  Returns how many top-p and min-p keep. */
static int select_top_k(cand *c, int n, int k, float lmax, float top_p, float min_p)
{
    for (int i = k / 2 - 1; i >= 0; i--)
        sift_worst(c, k, i);
    for (int i = k; i < n; i++) {
        if (better(&c[i], &c[0])) {
            c[0] = c[i];
            sift_worst(c, k, 0);
        }
    }
    for (int m = k - 1; m > 0; m--) {
        cand t = c[0];
        c[0] = c[m];
        c[m] = t;
        sift_worst(c, m, 0);
    }
    int keep = k;
    if (top_p < 1.0f) {
        double z = 0.0;
        for (int i = 0; i < k; i++)
            z += expf(c[i].l - lmax);
        double cum = 0.0, need = (double)top_p * z;
        for (int i = 0; i < k; i++) {
            cum += expf(c[i].l - lmax);
            if (cum >= need) {
                keep = i + 1;
                break;
            }
        }
    }
    if (min_p > 0.0f) {
        int m = 1;
        while (m < keep && expf(c[m].l - lmax) >= min_p)
            m++;
        keep = m;
    }
    return keep;
}

static int bucket_of(float l, float lmax)
{
    float d = (lmax - l) * ((float)SAMPLER_BUCKETS / SAMPLER_BUCKET_SPAN);
    return d < (float)(SAMPLER_BUCKETS - 1) ? (int)d : SAMPLER_BUCKETS - 1;
}

/* Top-p (and min-p) without top-k, where the candidates are the whole
 * vocabulary.  Sorting it all would cost O(n log n) per token, so the
 * tokens are first binned by logit distance from the maximum: whole bins
 * above the one where the cumulative mass reaches top_p are in the
 * nucleus whatever their order, and only that boundary bin is ordered,
 * lazily, through a heap.  Sets [*lo, *hi) to the survivors. */
static void nucleus_no_top_k(nb_sampler *s, int n, float lmax, int *lo, int *hi)
{
    cand *c = s->c;
    const float min_p = s->p.min_p;
    double *mass = s->bmass;
    int *count = s->bcount;
    memset(s->bmass, 0, sizeof s->bmass);
    memset(s->bcount, 0, sizeof s->bcount);

    /* The normaliser is over every token; min-p then drops tokens, which
     * cannot change the result: min-p and top-p both keep a best-first
     * prefix, and the nucleus search below stops when the survivors run
     * out, so the shorter prefix wins as top-p-then-min-p requires. */
    double z = 0.0;
    int m = 0;
    for (int i = 0; i < n; i++) {
        float w = expf(c[i].l - lmax);
        z += w;
        if (w >= min_p) {
            int b = bucket_of(c[i].l, lmax);
            mass[b] += w;
            count[b]++;
            c[m++] = c[i];
        }
    }
    const double need = (double)s->p.top_p * z;
    double cum = 0.0; /* mass of the bins above the edge */
    int edge = -1;
    for (int b = 0; b < SAMPLER_BUCKETS; b++) {
        if (count[b] == 0)
            continue;
        if (cum + mass[b] >= need) {
            edge = b;
            break;
        }
        cum += mass[b];
    }
    if (edge < 0) {
        /* min-p left less than the nucleus needs: min-p decides. */
        *lo = 0;
        *hi = m;
        return;
    }

    /* Lay out the edge bin first and the bins above it after, so that the
     * survivors end up contiguous. */
    int kept = 0;
    for (int i = 0; i < m; i++)
        if (bucket_of(c[i].l, lmax) <= edge)
            c[kept++] = c[i];
    int ne = 0;
    for (int i = 0; i < kept; i++) {
        if (bucket_of(c[i].l, lmax) == edge) {
            cand t = c[i];
            c[i] = c[ne];
            c[ne++] = t;
        }
    }
    for (int i = ne / 2 - 1; i >= 0; i--)
        sift_best(c, ne, i);
    int h = ne;
    while (h > 0) {
        cand t = c[0];
        c[0] = c[h - 1];
        c[h - 1] = t;
        h--;
        sift_best(c, h, 0);
        cum += expf(t.l - lmax);
        if (cum >= need)
            break;
    }
    *lo = h;
    *hi = kept;
}

nb_token nb_sampler_sample(nb_sampler *s, const float *logits)
{
    if (!s || !logits)
        return -1;
    const int n = s->n_vocab;
    cand *c = s->c;
    float lmax = -INFINITY;
    int best = 0;
    for (int i = 0; i < n; i++) {
        float l = sanitize(logits[i]);
        c[i].l = l;
        c[i].id = i;
        if (l > lmax) {
            lmax = l;
            best = i;
        }
    }
    if (s->penalties && s->ring_len > 0) {
        apply_penalties(s);
        lmax = -INFINITY;
        best = 0;
        for (int i = 0; i < n; i++) {
            if (c[i].l > lmax) {
                lmax = c[i].l;
                best = i;
            }
        }
    }

    /* Greedy: the filters below never remove the maximum, so argmax of the
     * penalised logits is what the full chain would pick.  With nothing
     * finite, best stays 0. */
    if (s->p.temp <= 0.0f)
        return best;

    const double u = rng_uniform(s->rng);
    if (lmax == -INFINITY)
        return 0;

    /* Weights are taken relative to the maximum, which every stage keeps:
     * exp(l - lmax) is p / p_max whatever the normaliser.  -inf tokens
     * stay in the arrays with weight 0; no stage can select them. */
    const float top_p = s->p.top_p, min_p = s->p.min_p;
    int lo = 0, hi = n;
    if (s->p.top_k > 0 && s->p.top_k < n) {
        hi = select_top_k(c, n, s->p.top_k, lmax, top_p, min_p);
    } else if (top_p < 1.0f) {
        nucleus_no_top_k(s, n, lmax, &lo, &hi);
    } else if (min_p > 0.0f) {
        hi = 0;
        for (int i = 0; i < n; i++)
            if (expf(c[i].l - lmax) >= min_p)
                c[hi++] = c[i];
    }

    /* Temperature, then the draw.  l - lmax <= 0, so the division can
     * only underflow to a zero weight; the maximum keeps weight 1. */
    const float temp = s->p.temp;
    double sum = 0.0;
    for (int i = lo; i < hi; i++) {
        float w = expf((c[i].l - lmax) / temp);
        c[i].l = w;
        sum += w;
    }
    return draw(c, lo, hi, sum, u);
}
