/*
 * attn.h - attention over the F16 key/value cache, written once in terms
 * of three vector operations so that the reference table and the NEON
 * table share it (the x86 kernels in attn_avx2.c keep the accumulator in
 * registers instead, and compute the same bits).
 *
 * What it computes is llama.cpp's CPU flash attention, step by step:
 * per query, one pass over the cache rows with a running maximum M and
 * sum S (online softmax); the score of row j is dot_f16(K_j, q) * scale
 * with q rounded to F16; the weighted values are accumulated in F16,
 * rounded after every scaling and every fused multiply-add.  Matching
 * those roundings is what lets greedy continuations agree with llama.cpp
 * token for token.
 */
#ifndef NIBBLE_ATTN_H
#define NIBBLE_ATTN_H

#include <math.h>

#include "kernels.h"

/* The online softmax step of one score s: returns the factor ms by which
 * the accumulator is rescaled (exactly 1 unless s is a new maximum) and
 * sets *vs, the weight of this row's values. */
static inline float nbi_attn_step(float s, float *M, float *S, float *vs)
{
    float ms = 1.0f, v = 1.0f;
    if (s > *M) { /* new maximum: rescale what has been summed */
        ms = expf(*M - s);
        *M = s;
    } else {
        v = expf(s - *M);
    }
    *S = *S * ms + v;
    *vs = v;
    return ms;
}

static inline __attribute__((always_inline)) void
nbi_attn_generic(nbi_vec_dot_fn dot16, nbi_scale_f16_fn scale16, nbi_mad_f16_fn mad16, int hd,
                 int nq, int n, float scale, const nb_fp16 *q16, const nb_fp16 *K,
                 const nb_fp16 *V, size_t kv_stride, float *out, nb_fp16 *acc)
{
    for (int i = 0; i < nq; i++) {
        const nb_fp16 *q = q16 + (size_t)i * hd;
        float S = 0.0f, M = -INFINITY;
        memset(acc, 0, (size_t)hd * sizeof *acc);
        for (int j = 0; j < n; j++) {
            float s, vs;
            dot16(hd, &s, K + (size_t)j * kv_stride, q);
            const float ms = nbi_attn_step(s * scale, &M, &S, &vs);
            if (ms != 1.0f)
                scale16(hd, acc, ms);
            mad16(hd, acc, V + (size_t)j * kv_stride, vs);
        }
        const float inv = 1.0f / S;
        for (int d = 0; d < hd; d++)
            out[(size_t)i * hd + d] = nbi_fp16_to_fp32(acc[d]) * inv;
    }
}

#endif /* NIBBLE_ATTN_H */
