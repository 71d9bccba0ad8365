/*
 * dispatch.c - the per-type facts table and the choice of kernel table.
 *
 * nbi_types[] describes every type id GGUF (ggml) has defined, including
 * those nibble cannot compute, so that the loader can size their tensors
 * and name them in errors.  Ids that ggml used once and removed (4-5, the
 * old Q4_2/Q4_3; 31-33 and 36-38, interleaved Q4_0/IQ4_NL layouts that
 * ggml now builds at load time instead of storing) have no name and no
 * size, so files using them are rejected as unknown.
 *
 * vec_dot_type is the activation format the weight type is multiplied
 * against, as in ggml's CPU backend; -1 where nibble has no dot product
 * (the activation-only Q8_1 and Q8_K, and every unsupported type).
 *
 * The reference table is complete and constant.  nbi_kernels_get() picks
 * the table once: NIBBLE_KERNELS=ref forces the reference; otherwise the
 * first SIMD table whose CPU features are present wins (AVX2+FMA+F16C on
 * x86-64, NEON on aarch64), falling back to the reference.  Each table
 * then adds optional extensions the CPU has (VNNI, AVX-512; dotprod), which
 * NIBBLE_KERNELS can restrict ("avx2", "avx2+vnni", "neon"): see
 * basic_avx2.c and all_neon.c.
 */
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "kernels.h"

#define T(id, nm, bk, sz, vdt, sup) [id] = {nm, bk, sz, vdt, sup}

const nbi_type_info nbi_types[NB_TYPE_COUNT] = {
    T(NB_TYPE_F32, "F32", 1, 4, NB_TYPE_F32, 1),
    T(NB_TYPE_F16, "F16", 1, 2, NB_TYPE_F16, 1),
    T(NB_TYPE_Q4_0, "Q4_0", QK4_0, sizeof(block_q4_0), NB_TYPE_Q8_0, 1),
    T(NB_TYPE_Q4_1, "Q4_1", QK4_1, sizeof(block_q4_1), NB_TYPE_Q8_1, 1),
    T(4, NULL, 0, 0, -1, 0),
    T(5, NULL, 0, 0, -1, 0),
    T(NB_TYPE_Q5_0, "Q5_0", QK5_0, sizeof(block_q5_0), NB_TYPE_Q8_0, 1),
    T(NB_TYPE_Q5_1, "Q5_1", QK5_1, sizeof(block_q5_1), NB_TYPE_Q8_1, 1),
    T(NB_TYPE_Q8_0, "Q8_0", QK8_0, sizeof(block_q8_0), NB_TYPE_Q8_0, 1),
    T(NB_TYPE_Q8_1, "Q8_1", QK8_1, sizeof(block_q8_1), -1, 0),
    T(NB_TYPE_Q2_K, "Q2_K", QK_K, sizeof(block_q2_K), NB_TYPE_Q8_K, 1),
    T(NB_TYPE_Q3_K, "Q3_K", QK_K, sizeof(block_q3_K), NB_TYPE_Q8_K, 1),
    T(NB_TYPE_Q4_K, "Q4_K", QK_K, sizeof(block_q4_K), NB_TYPE_Q8_K, 1),
    T(NB_TYPE_Q5_K, "Q5_K", QK_K, sizeof(block_q5_K), NB_TYPE_Q8_K, 1),
    T(NB_TYPE_Q6_K, "Q6_K", QK_K, sizeof(block_q6_K), NB_TYPE_Q8_K, 1),
    T(NB_TYPE_Q8_K, "Q8_K", QK_K, sizeof(block_q8_K), -1, 0),
    /* Named so that errors can name them; nibble has no kernels. */
    T(16, "IQ2_XXS", QK_K, 66, -1, 0),
    T(17, "IQ2_XS", QK_K, 74, -1, 0),
    T(18, "IQ3_XXS", QK_K, 98, -1, 0),
    T(19, "IQ1_S", QK_K, 50, -1, 0),
    T(NB_TYPE_IQ4_NL, "IQ4_NL", QK4_NL, sizeof(block_iq4_nl), NB_TYPE_Q8_0, 1),
    T(21, "IQ3_S", QK_K, 110, -1, 0),
    T(22, "IQ2_S", QK_K, 82, -1, 0),
    T(23, "IQ4_XS", QK_K, 136, -1, 0),
    T(24, "I8", 1, 1, -1, 0),
    T(25, "I16", 1, 2, -1, 0),
    T(26, "I32", 1, 4, -1, 0),
    T(27, "I64", 1, 8, -1, 0),
    T(28, "F64", 1, 8, -1, 0),
    T(29, "IQ1_M", QK_K, 56, -1, 0),
    T(NB_TYPE_BF16, "BF16", 1, 2, NB_TYPE_BF16, 1),
    T(31, NULL, 0, 0, -1, 0),
    T(32, NULL, 0, 0, -1, 0),
    T(33, NULL, 0, 0, -1, 0),
    T(34, "TQ1_0", QK_K, 54, -1, 0),
    T(35, "TQ2_0", QK_K, 66, -1, 0),
    T(36, NULL, 0, 0, -1, 0),
    T(37, NULL, 0, 0, -1, 0),
    T(38, NULL, 0, 0, -1, 0),
    T(39, "MXFP4", 32, 17, -1, 0),
};

#undef T

static const nbi_type_info *type_info(int type)
{
    if (type < 0 || type >= NB_TYPE_COUNT || !nbi_types[type].name)
        return NULL;
    return &nbi_types[type];
}

const char *nb_type_name(int type)
{
    const nbi_type_info *ti = type_info(type);
    return ti ? ti->name : NULL;
}

int nb_type_supported(int type)
{
    const nbi_type_info *ti = type_info(type);
    return ti ? ti->supported : 0;
}

size_t nbi_row_size(int type, int64_t n)
{
    const nbi_type_info *ti = type_info(type);
    if (!ti || ti->blck <= 0 || n <= 0 || n % ti->blck != 0)
        return 0;
    const uint64_t blocks = (uint64_t)(n / ti->blck);
    if (blocks > SIZE_MAX / ti->size)
        return 0;
    return (size_t)blocks * ti->size;
}

/* ------------------------------------------------------------------ */
/* Kernel tables                                                       */

#define REF_ENTRY(id, t)                                                   \
    .to_float[id] = nbi_##t##_to_float_ref, .vec_dot[id] = nbi_##t##_vec_dot_ref

static const nbi_kernels ref_table = {
    .level = "ref",
    REF_ENTRY(NB_TYPE_F32, f32),
    REF_ENTRY(NB_TYPE_F16, f16),
    REF_ENTRY(NB_TYPE_BF16, bf16),
    REF_ENTRY(NB_TYPE_Q4_0, q4_0),
    REF_ENTRY(NB_TYPE_Q4_1, q4_1),
    REF_ENTRY(NB_TYPE_Q5_0, q5_0),
    REF_ENTRY(NB_TYPE_Q5_1, q5_1),
    REF_ENTRY(NB_TYPE_Q8_0, q8_0),
    REF_ENTRY(NB_TYPE_Q2_K, q2_K),
    REF_ENTRY(NB_TYPE_Q3_K, q3_K),
    REF_ENTRY(NB_TYPE_Q4_K, q4_K),
    REF_ENTRY(NB_TYPE_Q5_K, q5_K),
    REF_ENTRY(NB_TYPE_Q6_K, q6_K),
    REF_ENTRY(NB_TYPE_IQ4_NL, iq4_nl),
    /* Activation-only formats: no dot product with them as the weight. */
    .to_float[NB_TYPE_Q8_1] = nbi_q8_1_to_float_ref,
    .to_float[NB_TYPE_Q8_K] = nbi_q8_K_to_float_ref,
    /* Quantizers exist for the activation formats and for the simple
     * block types; K-quant weights are only ever read. */
    .from_float[NB_TYPE_F32] = nbi_f32_from_float_ref,
    .from_float[NB_TYPE_F16] = nbi_f16_from_float_ref,
    .from_float[NB_TYPE_BF16] = nbi_bf16_from_float_ref,
    .from_float[NB_TYPE_Q4_0] = nbi_q4_0_from_float_ref,
    .from_float[NB_TYPE_Q4_1] = nbi_q4_1_from_float_ref,
    .from_float[NB_TYPE_Q5_0] = nbi_q5_0_from_float_ref,
    .from_float[NB_TYPE_Q5_1] = nbi_q5_1_from_float_ref,
    .from_float[NB_TYPE_Q8_0] = nbi_q8_0_from_float_ref,
    .from_float[NB_TYPE_Q8_1] = nbi_q8_1_from_float_ref,
    .from_float[NB_TYPE_Q8_K] = nbi_q8_K_from_float_ref,
    .from_float[NB_TYPE_IQ4_NL] = nbi_iq4_nl_from_float_ref,
    .mad_f16 = nbi_mad_f16_ref,
    .scale_f16 = nbi_scale_f16_ref,
    .attn_f16 = nbi_attn_f16_ref,
    .swiglu = nbi_swiglu_ref,
    .rope = nbi_rope_ref,
};

#undef REF_ENTRY

const nbi_kernels *nbi_kernels_ref(void)
{
    return &ref_table;
}

/*
 * SIMD tables, best first.  Each is the reference table with the entries
 * an architecture accelerates replaced, chosen only when the running CPU
 * (and the OS, for the wider registers) supports it.
 */
#if defined(__x86_64__)
static nbi_kernels avx2_table;

static int avx2_ok(void)
{
    /* GCC's checks include the OS saving the YMM state (XGETBV). */
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
           __builtin_cpu_supports("f16c");
}

static const nbi_kernels *avx2(void)
{
    avx2_table = ref_table;
    avx2_table.level = "avx2";
    nbi_avx2_add_basic(&avx2_table);
    nbi_avx2_add_kquants(&avx2_table);
    nbi_avx2_add_ops(&avx2_table);
    return &avx2_table;
}
#endif

#if defined(__aarch64__)
static nbi_kernels neon_table;

static int neon_ok(void)
{
    return 1; /* NEON is part of the aarch64 baseline */
}

static const nbi_kernels *neon(void)
{
    neon_table = ref_table;
    neon_table.level = "neon";
    nbi_neon_add_all(&neon_table);
    return &neon_table;
}
#endif

typedef struct {
    const char *name;
    const nbi_kernels *(*table)(void);
    int (*cpu_ok)(void);
} simd_choice;

static const simd_choice simd_choices[] = {
#if defined(__x86_64__)
    {"avx2", avx2, avx2_ok},
#endif
#if defined(__aarch64__)
    {"neon", neon, neon_ok},
#endif
    {NULL, NULL, NULL},
};

static const nbi_kernels *chosen;
static pthread_once_t chosen_once = PTHREAD_ONCE_INIT;

static void choose(void)
{
    chosen = &ref_table;
    const char *env = getenv("NIBBLE_KERNELS");
    if (env && strcmp(env, "ref") == 0)
        return;
    for (size_t i = 0; i < sizeof simd_choices / sizeof simd_choices[0]; i++) {
        const simd_choice *c = &simd_choices[i];
        if (c->table && c->cpu_ok && c->cpu_ok()) {
            chosen = c->table();
            return;
        }
    }
}

const nbi_kernels *nbi_kernels_get(void)
{
    pthread_once(&chosen_once, choose);
    return chosen;
}
