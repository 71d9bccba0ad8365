/*
 * attn_x86.h - the body of the x86 attention kernel, included by
 * attn_avx2.c once per vector width.  The includer defines:
 *   VEC, W             the vector type and its float lanes (8 or 16)
 *   VZERO, VSET1(x), VLOAD(p), VSTORE(p, v), VFMA(a, b, c), VMUL(a, b)
 *   VLOADH(p)          W F16 values widened to float (exact)
 *   VROUND16(v)        v rounded to F16 and widened back
 *   VDOT_SUM(a)        the dot product's accumulators a[0 .. 32/W - 1]
 *                      summed in the reference's order
 *   ATTN_TARGET        the function attribute of the width
 *   ATTN_FN(name)      name decorated with the width
 */

/* NQ queries of HD dimensions against n cache rows, the accumulators of
 * all of them in registers (NQ * HD / W <= 16).  Per block of positions:
 * the scores (one key row loaded for all queries), then the softmax steps
 * of the queries side by side (attn_softmax), then the value rows (each
 * loaded once), rescaling an accumulator only where a step said so. */
static inline __attribute__((always_inline)) ATTN_TARGET void
ATTN_FN(attn_group)(const int HD, const int NQ, int n, float scale, const nb_fp16 *q16,
                    const nb_fp16 *K, const nb_fp16 *V, size_t st, float *out)
{
    enum { NA = 32 / W };
    const int ND = HD / W;
    float qf[ATTN_MAX_Q] __attribute__((aligned(64)));
    /* per position, the queries side by side (padded to whole vectors of
     * four for the softmax steps; the padding lanes are never used) */
    float M[ATTN_MAX_NQ] = {0}, S[ATTN_MAX_NQ] = {0};
    float s[ATTN_BLOCK][ATTN_MAX_NQ] = {{0}}, ms[ATTN_BLOCK][ATTN_MAX_NQ],
          vs[ATTN_BLOCK][ATTN_MAX_NQ];
    VEC acc[16];

#pragma GCC unroll 16
    for (int q = 0; q < NQ; q++) {
        M[q] = -INFINITY;
        S[q] = 0.0f;
#pragma GCC unroll 16
        for (int d = 0; d < ND; d++) {
            VSTORE(qf + q * HD + d * W, VLOADH(q16 + q * HD + d * W));
            acc[q * ND + d] = VZERO;
        }
    }
    for (int j0 = 0; j0 < n; j0 += ATTN_BLOCK) {
        const int np = n - j0 < ATTN_BLOCK ? n - j0 : ATTN_BLOCK;
        for (int p = 0; p < np; p++) {
            const nb_fp16 *kr = K + (size_t)(j0 + p) * st;
            VEC k[16];
#pragma GCC unroll 16
            for (int d = 0; d < ND; d++)
                k[d] = VLOADH(kr + d * W);
#pragma GCC unroll 16
            for (int q = 0; q < NQ; q++) {
                VEC a[NA];
#pragma GCC unroll 4
                for (int i = 0; i < NA; i++)
                    a[i] = VZERO;
#pragma GCC unroll 16
                for (int d = 0; d < ND; d++)
                    a[d % NA] = VFMA(k[d], VLOAD(qf + q * HD + d * W), a[d % NA]);
                s[p][q] = VDOT_SUM(a) * scale;
            }
        }
        attn_softmax(NQ, np, s, M, S, ms, vs);
        for (int p = 0; p < np; p++) {
#pragma GCC unroll 16
            for (int q = 0; q < NQ; q++)
                if (ms[p][q] != 1.0f) {
                    const VEC m = VSET1(ms[p][q]);
#pragma GCC unroll 16
                    for (int d = 0; d < ND; d++)
                        acc[q * ND + d] = VROUND16(VMUL(acc[q * ND + d], m));
                }
            const nb_fp16 *vr = V + (size_t)(j0 + p) * st;
#pragma GCC unroll 16
            for (int d = 0; d < ND; d++) {
                const VEC v = VLOADH(vr + d * W);
#pragma GCC unroll 16
                for (int q = 0; q < NQ; q++)
                    acc[q * ND + d] = VROUND16(VFMA(v, VSET1(vs[p][q]), acc[q * ND + d]));
            }
        }
    }
#pragma GCC unroll 16
    for (int q = 0; q < NQ; q++) {
        const VEC inv = VSET1(1.0f / S[q]);
#pragma GCC unroll 16
        for (int d = 0; d < ND; d++)
            VSTORE(out + q * HD + d * W, VMUL(acc[q * ND + d], inv));
    }
}

/* Queries in groups of as many as fit in registers, then one at a time. */
#define ATTN_CASE(HD)                                                                        \
    case HD: {                                                                               \
        enum { G = (W == 16 ? 16 : 8) / (HD / W) > 0 ? (W == 16 ? 16 : 8) / (HD / W) : 1 };  \
        int i = 0;                                                                           \
        for (; i + G <= nq; i += G)                                                          \
            ATTN_FN(attn_group)(HD, G, n, scale, q16 + (size_t)i * HD, K, V, st,              \
                                out + (size_t)i * HD);                                       \
        for (; i < nq; i++)                                                                  \
            ATTN_FN(attn_group)(HD, 1, n, scale, q16 + (size_t)i * HD, K, V, st,              \
                                out + (size_t)i * HD);                                       \
        return;                                                                              \
    }

static ATTN_TARGET void ATTN_FN(attn_f16)(int hd, int nq, int n, float scale, const nb_fp16 *q16,
                                          const nb_fp16 *K, const nb_fp16 *V, size_t st,
                                          float *out, nb_fp16 *acc)
{
    switch (hd) {
        ATTN_CASE(32)
        ATTN_CASE(64)
        ATTN_CASE(96)
        ATTN_CASE(128)
    default:
        nbi_avx2_attn_f16_generic(hd, nq, n, scale, q16, K, V, st, out, acc);
    }
}

#undef ATTN_CASE
