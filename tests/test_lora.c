/*
 * test_lora.c - LoRA adapters: loading llama.cpp's adapter GGUF, the
 * checks against the base model, attaching adapters to contexts.  Agreement
 * of the adapted logits with llama.cpp is test_reference.c's.
 */
#include "testutil.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "gguf_builder.h"
#include "nibble.h"

#define ADAPTER "models/lora-stories260K-wide-r8.gguf"

static nb_model *open_model(const char *rel)
{
    char *p = nbt_data_path(rel), err[256];
    nb_model *m = NULL;
    if (nb_model_open(p, NULL, &m, err, sizeof err))
        fail_msg("%s: %s", p, err);
    free(p);
    return m;
}

static nb_status open_lora(const nb_model *m, const char *rel, nb_lora **out, char *err,
                           size_t errlen)
{
    char *p = nbt_data_path(rel);
    nb_status st = nb_lora_open(m, p, out, err, errlen);
    free(p);
    return st;
}

/* Logits at the last of n tokens with the given adapter (NULL: none) and
 * scale. */
static float *logits_after(const nb_model *m, nb_lora *a, float scale, const nb_token *toks,
                           int n)
{
    nb_ctx_params cp = nb_ctx_default_params();
    cp.n_ctx = 64;
    cp.n_threads = 2;
    nb_ctx *c = NULL;
    char err[256];
    assert_int_equal(nb_ctx_new(m, &cp, &c, err, sizeof err), NB_OK);
    if (a)
        assert_int_equal(nb_ctx_set_lora(c, &a, &scale, 1), NB_OK);
    assert_int_equal(nb_ctx_decode(c, toks, n, 0), NB_OK);
    int n_vocab = nb_model_n_vocab(m);
    float *out = malloc((size_t)n_vocab * sizeof *out);
    memcpy(out, nb_ctx_logits(c, -1), (size_t)n_vocab * sizeof *out);
    nb_ctx_free(c);
    return out;
}

/* Logits of the last of a few story tokens with the given adapter and scale. */
static float *last_logits(const nb_model *m, nb_lora *a, float scale)
{
    const nb_token toks[] = {1, 403, 407, 261, 378};
    return logits_after(m, a, scale, toks, 5);
}

static void test_open_and_apply(void **state)
{
    (void)state;
    NBT_REQUIRE_DATA();
    nb_model *m = open_model("models/stories260K-wide-f32.gguf");
    nb_lora *a = NULL;
    char err[256];
    assert_int_equal(open_lora(m, ADAPTER, &a, err, sizeof err), NB_OK);
    assert_true(nb_lora_n_pairs(a) > 0);
    int n = nb_model_n_vocab(m);
    float *base = last_logits(m, NULL, 0), *zero = last_logits(m, a, 0.0f),
          *one = last_logits(m, a, 1.0f), *base2 = last_logits(m, NULL, 0);
    /* scale 0 adds nothing; the weights are never modified */
    assert_memory_equal(base, zero, (size_t)n * sizeof *base);
    assert_memory_equal(base, base2, (size_t)n * sizeof *base);
    assert_memory_not_equal(base, one, (size_t)n * sizeof *base);
    free(base);
    free(zero);
    free(one);
    free(base2);
    nb_lora_close(a);
    nb_lora_close(NULL);
    nb_model_close(m);
}

static void test_refusals(void **state)
{
    (void)state;
    NBT_REQUIRE_DATA();
    char err[256];
    nb_lora *a = NULL;
    /* another architecture */
    nb_model *q = open_model("models/qwen2-random-f16.gguf");
    assert_int_equal(open_lora(q, ADAPTER, &a, err, sizeof err), NB_ERR_INVALID);
    assert_null(a);
    assert_non_null(strstr(err, "architecture"));
    nb_model_close(q);
    /* the same architecture, other shapes */
    nb_model *s = open_model("models/stories260K.gguf");
    nb_status st = open_lora(s, ADAPTER, &a, err, sizeof err);
    assert_int_equal(st, NB_ERR_INVALID);
    assert_null(a);
    assert_non_null(strstr(err, "do not fit"));
    nb_model_close(s);
    /* a model is not an adapter */
    nb_model *m = open_model("models/stories260K-wide-f32.gguf");
    assert_int_equal(open_lora(m, "models/stories260K-wide-f32.gguf", &a, err, sizeof err),
                     NB_ERR_FORMAT);
    assert_non_null(strstr(err, "not an adapter"));
    assert_int_equal(open_lora(m, "models/no-such-adapter.gguf", &a, err, sizeof err), NB_ERR_IO);

    /* attaching: adapters of another model instance, bad counts */
    nb_model *m2 = open_model("models/stories260K-wide-f32.gguf");
    nb_lora *other = NULL;
    assert_int_equal(open_lora(m2, ADAPTER, &other, err, sizeof err), NB_OK);
    assert_int_equal(open_lora(m, ADAPTER, &a, err, sizeof err), NB_OK);
    nb_ctx *c = NULL, *d = NULL;
    nb_ctx_params cp = nb_ctx_default_params();
    cp.n_ctx = 32;
    cp.n_threads = 1;
    assert_int_equal(nb_ctx_new(m, &cp, &c, err, sizeof err), NB_OK);
    assert_int_equal(nb_ctx_new(m, &cp, &d, err, sizeof err), NB_OK);
    float one = 1.0f;
    assert_int_equal(nb_ctx_set_lora(c, &other, &one, 1), NB_ERR_INVALID);
    assert_non_null(strstr(nb_ctx_errmsg(c), "another model"));
    assert_int_equal(nb_ctx_set_lora(c, &a, &one, -1), NB_ERR_INVALID);
    assert_int_equal(nb_ctx_set_lora(c, &a, &one, 1), NB_OK);
    assert_int_equal(nb_ctx_set_lora(c, NULL, NULL, 0), NB_OK);
    nb_ctx_free(c);
    nb_ctx_free(d);
    nb_lora_close(a);
    nb_lora_close(other);
    nb_model_close(m2);
    nb_model_close(m);
}

/* Contexts with different adapters (none, one, the same at another scale)
 * share one batched pass, and each gets exactly the logits it gets alone:
 * the daemon serves them side by side. */
static void test_mixed_batch(void **state)
{
    (void)state;
    NBT_REQUIRE_DATA();
    nb_model *m = open_model("models/stories260K-wide-f32.gguf");
    nb_lora *a = NULL;
    char err[256];
    assert_int_equal(open_lora(m, ADAPTER, &a, err, sizeof err), NB_OK);
    const float scales[3] = {0, 1.0f, 0.5f};
    const int use[3] = {0, 1, 1};
    const nb_token t[3][4] = {{1, 403, 407, 261}, {1, 403, 407, 261}, {1, 385, 410, 274}};
    nb_ctx_params cp = nb_ctx_default_params();
    cp.n_ctx = 32;
    cp.n_threads = 2;
    int n_vocab = nb_model_n_vocab(m);
    float *alone[3];
    nb_ctx *c[3];
    for (int i = 0; i < 3; i++) {
        assert_int_equal(nb_ctx_new(m, &cp, &c[i], err, sizeof err), NB_OK);
        if (use[i])
            assert_int_equal(nb_ctx_set_lora(c[i], &a, &scales[i], 1), NB_OK);
        assert_int_equal(nb_ctx_decode(c[i], t[i], 4, 0), NB_OK);
        alone[i] = malloc((size_t)n_vocab * sizeof(float));
        memcpy(alone[i], nb_ctx_logits(c[i], -1), (size_t)n_vocab * sizeof(float));
        nb_ctx_truncate(c[i], 0);
    }
    /* prompts then one more token each, all in one batch, twice */
    nb_batch_item items[3];
    for (int i = 0; i < 3; i++)
        items[i] = (nb_batch_item){c[i], t[i], 4, 0};
    assert_int_equal(nb_decode_batch(NULL, items, 3), NB_OK);
    for (int i = 0; i < 3; i++)
        assert_memory_equal(alone[i], nb_ctx_logits(c[i], -1), (size_t)n_vocab * sizeof(float));
    assert_memory_not_equal(alone[0], alone[1], (size_t)n_vocab * sizeof(float));
    const nb_token next[3] = {300, 301, 302};
    for (int i = 0; i < 3; i++) {
        nb_ctx_params one = cp;
        nb_ctx *solo;
        assert_int_equal(nb_ctx_new(m, &one, &solo, err, sizeof err), NB_OK);
        if (use[i])
            assert_int_equal(nb_ctx_set_lora(solo, &a, &scales[i], 1), NB_OK);
        nb_token both[5];
        memcpy(both, t[i], sizeof t[i]);
        both[4] = next[i];
        assert_int_equal(nb_ctx_decode(solo, both, 5, 0), NB_OK);
        memcpy(alone[i], nb_ctx_logits(solo, -1), (size_t)n_vocab * sizeof(float));
        nb_ctx_free(solo);
        items[i] = (nb_batch_item){c[i], &next[i], 1, 0};
    }
    assert_int_equal(nb_decode_batch(NULL, items, 3), NB_OK);
    for (int i = 0; i < 3; i++) {
        assert_memory_equal(alone[i], nb_ctx_logits(c[i], -1), (size_t)n_vocab * sizeof(float));
        free(alone[i]);
        nb_ctx_free(c[i]);
    }
    nb_lora_close(a);
    nb_model_close(m);
}

/* nibble eval --lora: a clear error for a misfit adapter, usage errors */
static void test_cli(void **state)
{
    (void)state;
    NBT_REQUIRE_DATA();
    char *model = nbt_data_path("models/stories260K.gguf"), *lora = nbt_data_path(ADAPTER);
    char *out = NULL, *errs = NULL;
    char *argv[] = {(char *)nbt_bin("nibble"), "eval", "-m", model, "-p", "x", "--lora", lora,
                    NULL};
    assert_int_equal(nbt_run(argv, &out, &errs, 60), 1);
    assert_non_null(strstr(errs, "which do not fit blk.0.attn_q.weight (64, 64)"));
    free(out);
    free(errs);
    char *argv2[] = {(char *)nbt_bin("nibble"), "eval", "-m", model, "-p", "x", "--lora-scale",
                     "2", NULL};
    assert_int_equal(nbt_run(argv2, &out, &errs, 60), 2);
    assert_non_null(strstr(errs, "--lora-scale goes after a --lora FILE"));
    free(out);
    free(errs);
    char *argv_run[] = {(char *)nbt_bin("nibble"), "run", "-m", model, "-p", "x", "-n", "2",
                        "--lora", lora, NULL};
    assert_int_equal(nbt_run(argv_run, &out, &errs, 60), 1);
    assert_non_null(strstr(errs, "do not fit"));
    free(out);
    free(errs);
    char *argv3[] = {(char *)nbt_bin("nibble"), "eval", "-m", model, "-p", "x", "--lora", lora,
                     "--lora-scale", "abc", NULL};
    assert_int_equal(nbt_run(argv3, &out, &errs, 60), 2);
    free(out);
    free(errs);
    free(model);
    free(lora);
}

/* Type of the named tensor of a GGUF file, -1 when absent. */
static int tensor_type(const char *path, const char *name)
{
    nb_gguf *g = NULL;
    char err[256];
    if (nb_gguf_open(path, &g, err, sizeof err))
        fail_msg("%s: %s", path, err);
    int type = -1;
    for (int64_t i = 0; i < nb_gguf_n_tensors(g); i++)
        if (!strcmp(nb_gguf_tensor_name(g, i), name))
            type = nb_gguf_tensor_type(g, i);
    nb_gguf_close(g);
    return type;
}

static int run_merge(char **extra, int n_extra, char **errs)
{
    char *argv[16] = {(char *)nbt_bin("nibble"), "lora-merge"};
    int n = 2;
    for (int i = 0; i < n_extra; i++)
        argv[n++] = extra[i];
    argv[n] = NULL;
    return nbt_run(argv, NULL, errs, 120);
}

/* nibble lora-merge, then the merged model alone: the same logits as the
 * base with the adapter applied unmerged, within 0.05. */
static void test_merge(void **state)
{
    (void)state;
    NBT_REQUIRE_DATA();
    char *base = nbt_data_path("models/stories260K-wide-f32.gguf"), *lora = nbt_data_path(ADAPTER);
    char *out = nbt_write_temp("", 0, ".gguf"), *errs = NULL;
    char *args[] = {"--lora-scale", "0.7", "-t", "2", base, lora, out};
    assert_int_equal(run_merge(args, 7, &errs), 0);
    free(errs);
    assert_int_equal(tensor_type(out, "blk.0.attn_q.weight"), NB_TYPE_F32);

    nb_model *m = open_model("models/stories260K-wide-f32.gguf");
    nb_model *merged = NULL;
    char err[256];
    assert_int_equal(nb_model_open(out, NULL, &merged, err, sizeof err), NB_OK);
    nb_lora *a = NULL;
    assert_int_equal(open_lora(m, ADAPTER, &a, err, sizeof err), NB_OK);
    int n = nb_model_n_vocab(m);
    float *plain = last_logits(m, NULL, 0), *unmerged = last_logits(m, a, 0.7f),
          *folded = last_logits(merged, NULL, 0);
    float dmax = 0, dbase = 0;
    for (int i = 0; i < n; i++) {
        float d = folded[i] - unmerged[i], e = folded[i] - plain[i];
        dmax = fmaxf(dmax, fabsf(d));
        dbase = fmaxf(dbase, fabsf(e));
    }
    print_message("merged vs unmerged: max |d logit| %.6f (vs the base: %.3f)\n", dmax, dbase);
    assert_true(dmax <= 0.05f);
    assert_true(dbase > 0.5f); /* the adapter changed something, and it survived */
    free(plain);
    free(unmerged);
    free(folded);
    nb_lora_close(a);
    nb_model_close(merged);
    nb_model_close(m);
    free(base);
    free(lora);
    unlink(out);
    free(out);
}

/* A quantized base: merged weights become F16 unless TYPE says otherwise;
 * untouched tensors keep their type.  Refusals with messages. */
static void test_merge_types_and_errors(void **state)
{
    (void)state;
    NBT_REQUIRE_DATA();
    char *q4 = nbt_data_path("models/stories260K-wide-q4_0.gguf"), *lora = nbt_data_path(ADAPTER);
    char *small = nbt_data_path("models/stories260K.gguf");
    char *out = nbt_write_temp("", 0, ".gguf"), *errs = NULL;
    int q4_type = tensor_type(q4, "blk.0.attn_q.weight");
    assert_int_equal(q4_type, NB_TYPE_Q4_0);

    char *a1[] = {q4, lora, out};
    assert_int_equal(run_merge(a1, 3, &errs), 0);
    free(errs);
    assert_int_equal(tensor_type(out, "blk.0.attn_q.weight"), NB_TYPE_F16);
    assert_int_equal(tensor_type(out, "token_embd.weight"),
                     tensor_type(q4, "token_embd.weight"));

    char *a2[] = {q4, lora, out, "q8_0"};
    assert_int_equal(run_merge(a2, 4, &errs), 0);
    free(errs);
    assert_int_equal(tensor_type(out, "blk.0.attn_q.weight"), NB_TYPE_Q8_0);

    char *a3[] = {q4, lora, out, "Q9_9"};
    assert_int_equal(run_merge(a3, 4, &errs), 2);
    assert_non_null(strstr(errs, "unknown or unsupported type 'Q9_9'"));
    free(errs);
    char *a4[] = {small, lora, out};
    assert_int_equal(run_merge(a4, 3, &errs), 1);
    assert_non_null(strstr(errs, "do not fit"));
    free(errs);
    char *a5[] = {q4, lora, q4};
    assert_int_equal(run_merge(a5, 3, &errs), 2);
    assert_non_null(strstr(errs, "OUT must be a new file"));
    free(errs);
    char *a6[] = {q4, q4, out};
    assert_int_equal(run_merge(a6, 3, &errs), 1);
    assert_non_null(strstr(errs, "not an adapter"));
    free(errs);
    unlink(out);
    free(out);
    free(q4);
    free(small);
    free(lora);
}

/* ------------------------------------------------------------------ */
/* Crafted adapters for the builder's tiny llama (dim 32): pair types    */
/* and malformed pairs, with no reference data needed.                   */

#define CR_RANK 32 /* a Q8_0 lora_b needs rank to be a multiple of 32 */

/* k * 2^-10 for |k| <= 127 as IEEE half: exact, no rounding needed. */
static uint16_t half_of(float f)
{
    if (f == 0)
        return 0;
    uint32_t u;
    memcpy(&u, &f, 4);
    uint32_t sign = (u >> 16) & 0x8000, exp = ((u >> 23) & 0xff) - 127 + 15;
    return (uint16_t)(sign | exp << 10 | ((u >> 13) & 0x3ff));
}

/* Integer weights k in [-127, 127] of a (ne0, ne1) tensor, every block of
 * 32 holding a 127 so that Q8_0's scale is exactly 2^-10. */
static void craft_ints(int8_t *k, int n, int seed)
{
    uint32_t x = 2463534242u + (uint32_t)seed;
    for (int i = 0; i < n; i++) {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        k[i] = (int8_t)((int)(x % 255) - 127);
        if (i % 32 == 0)
            k[i] = 127;
    }
}

static void add_crafted(gguf_builder *b, const char *name, uint32_t type, uint64_t ne0,
                        uint64_t ne1, int seed)
{
    int n = (int)(ne0 * ne1);
    int8_t *k = malloc((size_t)n);
    craft_ints(k, n, seed);
    gb_buf data = {0};
    for (int i = 0; i < n; i++) {
        if (type == GB_F32)
            gb_buf_f32(&data, (float)k[i] / 1024.0f);
        else if (type == GB_F16)
            gb_buf_u16(&data, half_of((float)k[i] / 1024.0f));
        else if (type == GB_Q8_0) {
            if (i % 32 == 0)
                gb_buf_u16(&data, half_of(1.0f / 1024.0f));
            gb_buf_u8(&data, (uint8_t)k[i]);
        }
    }
    const uint64_t dims[2] = {ne0, ne1};
    assert_true(gb_tensor_add(b, name, 2, dims, type, data.data, data.len) >= 0);
    gb_buf_free(&data);
    free(k);
}

static gguf_builder *adapter_new(const char *arch)
{
    gguf_builder *b = gb_new();
    gb_kv_str(b, "general.architecture", arch);
    gb_kv_str(b, "general.type", "adapter");
    gb_kv_str(b, "adapter.type", "lora");
    gb_kv_f32(b, "adapter.lora.alpha", 0.0f);
    b->align = 32;
    return b;
}

static char *write_builder(gguf_builder *b)
{
    size_t len;
    uint8_t *img = gb_build(b, &len);
    assert_non_null(img);
    char *path = nbt_write_temp(img, len, ".gguf");
    free(img);
    gb_free(b);
    return path;
}

/* An adapter on blk.0.attn_q and blk.1.ffn_down with the given pair types. */
static char *crafted_adapter(uint32_t ta, uint32_t tb)
{
    gguf_builder *b = adapter_new("llama");
    gb_llama_params p = gb_llama_default_params();
    add_crafted(b, "blk.0.attn_q.weight.lora_a", ta, (uint64_t)p.dim, CR_RANK, 1);
    add_crafted(b, "blk.0.attn_q.weight.lora_b", tb, CR_RANK, (uint64_t)p.dim, 2);
    add_crafted(b, "blk.1.ffn_down.weight.lora_a", ta, (uint64_t)p.n_ff, CR_RANK, 3);
    add_crafted(b, "blk.1.ffn_down.weight.lora_b", tb, CR_RANK, (uint64_t)p.dim, 4);
    return write_builder(b);
}

static nb_model *crafted_base(char **path)
{
    *path = write_builder(gb_llama_new(NULL));
    nb_model *m = NULL;
    char err[256];
    if (nb_model_open(*path, NULL, &m, err, sizeof err))
        fail_msg("%s", err);
    return m;
}

/* Logits after a few tokens with the adapter file (NULL: none) at scale 2. */
static float *crafted_logits(const nb_model *m, const char *adapter)
{
    nb_lora *a = NULL;
    char err[256];
    if (adapter && nb_lora_open(m, adapter, &a, err, sizeof err))
        fail_msg("%s: %s", adapter, err);
    const nb_token toks[] = {1, 70, 80, 90, 100};
    float *out = logits_after(m, a, 2.0f, toks, 5);
    nb_lora_close(a);
    return out;
}

/* F16 and Q8_0 pairs (and a mixed pair) holding the same values as an F32
 * pair give bit-identical logits; all differ from the base. */
static void test_pair_types(void **state)
{
    (void)state;
    char *base_path;
    nb_model *m = crafted_base(&base_path);
    int n = nb_model_n_vocab(m);
    char *f32 = crafted_adapter(GB_F32, GB_F32);
    float *base = crafted_logits(m, NULL), *ref = crafted_logits(m, f32);
    assert_memory_not_equal(base, ref, (size_t)n * sizeof *ref);
    const uint32_t kinds[][2] = {{GB_F16, GB_F16}, {GB_Q8_0, GB_Q8_0}, {GB_F16, GB_Q8_0}};
    for (size_t i = 0; i < sizeof kinds / sizeof kinds[0]; i++) {
        char *path = crafted_adapter(kinds[i][0], kinds[i][1]);
        float *got = crafted_logits(m, path);
        assert_memory_equal(ref, got, (size_t)n * sizeof *got);
        free(got);
        unlink(path);
        free(path);
    }
    free(base);
    free(ref);
    unlink(f32);
    free(f32);
    nb_model_close(m);
    unlink(base_path);
    free(base_path);
}

static void expect_refusal(const nb_model *m, gguf_builder *b, nb_status want, const char *msg)
{
    char *path = write_builder(b), err[512];
    nb_lora *a = NULL;
    nb_status st = nb_lora_open(m, path, &a, err, sizeof err);
    if (st != want || !strstr(err, msg))
        fail_msg("want status %d and \"%s\", got %d: %s", want, msg, st, st ? err : "");
    assert_null(a);
    unlink(path);
    free(path);
}

/* Half a pair, mismatched ranks, a transposed lora_a, a tensor the model
 * lacks, an unsupported type, a stray tensor, no pairs at all. */
static void test_malformed_pairs(void **state)
{
    (void)state;
    char *base_path;
    nb_model *m = crafted_base(&base_path);
    gguf_builder *b = adapter_new("llama");
    add_crafted(b, "blk.0.attn_q.weight.lora_b", GB_F32, CR_RANK, 32, 1);
    expect_refusal(m, b, NB_ERR_FORMAT, "blk.0.attn_q.weight.lora_b has no blk.0.attn_q.weight.lora_a");
    b = adapter_new("llama");
    add_crafted(b, "blk.0.attn_q.weight.lora_a", GB_F32, 32, CR_RANK, 1);
    expect_refusal(m, b, NB_ERR_FORMAT, "has no blk.0.attn_q.weight.lora_b");
    b = adapter_new("llama");
    add_crafted(b, "blk.0.attn_q.weight.lora_a", GB_F32, 32, CR_RANK, 1);
    add_crafted(b, "blk.0.attn_q.weight.lora_b", GB_F32, 16, 32, 2);
    expect_refusal(m, b, NB_ERR_INVALID, "rank");
    b = adapter_new("llama");
    add_crafted(b, "blk.0.ffn_down.weight.lora_a", GB_F32, CR_RANK, 64, 1); /* transposed */
    add_crafted(b, "blk.0.ffn_down.weight.lora_b", GB_F32, CR_RANK, 32, 2);
    expect_refusal(m, b, NB_ERR_INVALID, "do not fit");
    b = adapter_new("llama");
    add_crafted(b, "blk.7.attn_q.weight.lora_a", GB_F32, 32, CR_RANK, 1);
    add_crafted(b, "blk.7.attn_q.weight.lora_b", GB_F32, CR_RANK, 32, 2);
    expect_refusal(m, b, NB_ERR_INVALID, "which the model does not have");
    b = adapter_new("llama");
    add_crafted(b, "blk.0.attn_q.weight.lora_a", GB_F32, 32, CR_RANK, 1);
    const uint64_t dims[2] = {CR_RANK, 32};
    gb_tensor_add(b, "blk.0.attn_q.weight.lora_b", 2, dims, GB_Q4_0, NULL, GB_AUTO);
    expect_refusal(m, b, NB_ERR_UNSUPPORTED, "must be a 2-D F32, F16 or Q8_0 tensor");
    b = adapter_new("llama");
    add_crafted(b, "blk.0.attn_q.weight", GB_F32, 32, 32, 1);
    expect_refusal(m, b, NB_ERR_FORMAT, "is not a lora_a or lora_b");
    b = adapter_new("llama");
    expect_refusal(m, b, NB_ERR_FORMAT, "no lora_a/lora_b pairs");
    b = adapter_new("qwen2");
    add_crafted(b, "blk.0.attn_q.weight.lora_a", GB_F32, 32, CR_RANK, 1);
    add_crafted(b, "blk.0.attn_q.weight.lora_b", GB_F32, CR_RANK, 32, 2);
    expect_refusal(m, b, NB_ERR_INVALID, "the adapter is for architecture qwen2");
    b = adapter_new("llama");
    gb_kv_remove(b, "adapter.type");
    gb_kv_str(b, "adapter.type", "control_vector");
    expect_refusal(m, b, NB_ERR_UNSUPPORTED, "adapter.type is control_vector, not lora");
    nb_model_close(m);
    unlink(base_path);
    free(base_path);
}

/* ------------------------------------------------------------------ */
/* nibd --lora: adapters per request                                    */

static json_t *daemon_complete(nb_client *c, const char *prompt, const char *lora, char **text)
{
    nbt_send(c, "{\"op\":\"complete\",\"prompt\":\"%s\",\"n_predict\":24,\"temperature\":0%s%s}",
             prompt, lora ? ",\"lora\":" : "", lora ? lora : "");
    return nbt_finish(c, text);
}

/* The daemon of test_daemon_adapters, stopped by the teardown when a
 * failed check left it running. */
static nbt_daemon d;

static int stop_daemon(void **state)
{
    (void)state;
    if (d.pid > 0)
        nbt_daemon_stop(&d); /* also sets pid to 0 */
    return 0;
}

/* Requests with and without the adapter, one after the other and at the
 * same time on two connections, each match `nibble eval` with the same
 * adapter; a slot's cache is reused only for the same adapters and
 * scales; unknown names and bad fields are refused; status lists them. */
static void test_daemon_adapters(void **state)
{
    (void)state;
    NBT_REQUIRE_DATA();
    char *base = nbt_data_path("models/stories260K-wide-f32.gguf"), *lora = nbt_data_path(ADAPTER);
    const char *prompt = "Once upon a time, there was a little";
    const char *ev_half[] = {"--lora", lora, "--lora-scale", "0.5", NULL};
    char *want_plain = nbt_eval_text(base, prompt, 24);
    char *want_half = nbt_eval_text_args(base, prompt, 24, ev_half);
    assert_string_not_equal(want_plain, want_half);

    char arg[4200];
    snprintf(arg, sizeof arg, "story=%s", lora);
    const char *extra[] = {"-s", "1", "--lora", arg, NULL};
    nbt_daemon_start(&d, base, extra);
    nb_client *c = nbt_connect(d.sock), *c2 = nbt_connect(d.sock);
    assert_non_null(c);
    assert_non_null(c2);
    const char *half = "[{\"name\":\"story\",\"scale\":0.5}]";

    /* one slot: each change of adapters or scale starts its cache afresh */
    struct { const char *lora; const char *want; int cached; } seq[] = {
        {NULL, want_plain, 0},  {half, want_half, 0}, {half, want_half, 1},
        {"[{\"name\":\"story\",\"scale\":0.25}]", NULL, 0}, {NULL, want_plain, 0},
        {"[]", want_plain, 1},
    };
    for (size_t i = 0; i < sizeof seq / sizeof seq[0]; i++) {
        char *got;
        json_t *fin = daemon_complete(c, prompt, seq[i].lora, &got);
        if (!json_is_string(json_object_get(fin, "stop_reason")))
            fail_msg("request %zu: %s", i, json_dumps(fin, 0));
        if (seq[i].want)
            assert_string_equal(got, seq[i].want);
        long long cached = json_integer_value(json_object_get(fin, "n_cached"));
        if (seq[i].cached ? cached == 0 : cached != 0)
            fail_msg("request %zu: n_cached %lld", i, cached);
        json_decref(fin);
        free(got);
    }

    /* side by side on two connections, two slots' worth of work on one
     * slot's daemon would queue; restart with two slots */
    nb_client_close(c);
    nb_client_close(c2);
    assert_int_equal(nbt_daemon_stop(&d), 0);
    /* this time the adapter comes from a config file's "lora = NAME=FILE" */
    char conf_text[4300];
    snprintf(conf_text, sizeof conf_text, "lora = %s\n", arg);
    char *conf = nbt_write_temp(conf_text, strlen(conf_text), ".conf");
    const char *extra2[] = {"-s", "2", "--config", conf, NULL};
    nbt_daemon_start(&d, base, extra2);
    c = nbt_connect(d.sock);
    c2 = nbt_connect(d.sock);
    for (int round = 0; round < 2; round++) {
        nbt_send(c, "{\"op\":\"complete\",\"prompt\":\"%s\",\"n_predict\":24,\"temperature\":0%s}",
                 prompt, round ? "" : ",\"lora\":[{\"name\":\"story\",\"scale\":0.5}]");
        nbt_send(c2, "{\"op\":\"complete\",\"prompt\":\"%s\",\"n_predict\":24,\"temperature\":0%s}",
                 prompt, round ? ",\"lora\":[{\"name\":\"story\",\"scale\":0.5}]" : "");
        char *t1, *t2;
        json_t *f1 = nbt_finish(c, &t1), *f2 = nbt_finish(c2, &t2);
        assert_string_equal(t1, round ? want_plain : want_half);
        assert_string_equal(t2, round ? want_half : want_plain);
        json_decref(f1);
        json_decref(f2);
        free(t1);
        free(t2);
    }

    /* nib --lora NAME=SCALE, through a config file naming the socket */
    char cfgdir[] = "/tmp/nibble-lora-cfg-XXXXXX", path[256];
    assert_non_null(mkdtemp(cfgdir));
    snprintf(path, sizeof path, "%s/nibble", cfgdir);
    assert_int_equal(mkdir(path, 0700), 0);
    snprintf(path, sizeof path, "%s/nibble/config", cfgdir);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fprintf(f, "socket = %s\n", d.sock);
    fclose(f);
    char *old_cfg = getenv("XDG_CONFIG_HOME") ? strdup(getenv("XDG_CONFIG_HOME")) : NULL;
    setenv("XDG_CONFIG_HOME", cfgdir, 1);
    char *nout = NULL, *nerr = NULL;
    char *nargv[] = {(char *)nbt_bin("nib"), "-q", "--raw", "-n", "24", "-o", "temperature=0",
                     "--lora", "story=0.5", (char *)prompt, NULL};
    assert_int_equal(nbt_run(nargv, &nout, &nerr, 60), 0);
    size_t nl = strlen(nout);
    if (nl && nout[nl - 1] == '\n')
        nout[nl - 1] = 0; /* nib ends the answer with a newline */
    assert_string_equal(nout, want_half);
    free(nout);
    free(nerr);
    char *nargv2[] = {(char *)nbt_bin("nib"), "-q", "--raw", "--lora", "nope", "x", NULL};
    assert_int_equal(nbt_run(nargv2, &nout, &nerr, 60), 1);
    assert_non_null(strstr(nerr, "unknown adapter 'nope'"));
    free(nout);
    free(nerr);
    if (old_cfg)
        setenv("XDG_CONFIG_HOME", old_cfg, 1);
    else
        unsetenv("XDG_CONFIG_HOME");
    free(old_cfg);
    unlink(path);
    snprintf(path, sizeof path, "%s/nibble", cfgdir);
    rmdir(path);
    rmdir(cfgdir);

    /* refusals */
    const char *bad[][2] = {
        {"[{\"name\":\"nope\"}]", "unknown adapter 'nope' (nibd has: story)"},
        {"{\"name\":\"story\"}", "lora must be an array"},
        {"[{\"name\":\"story\",\"scale\":\"x\"}]", "lora[0].scale must be a number"},
        {"[{\"name\":\"story\",\"scale\":1000}]", "lora[0].scale must be -100 to 100"},
        {"[{\"name\":\"story\"},{\"name\":\"story\"}]", "names adapter 'story' twice"},
        {"[{\"scale\":1}]", "lora[0] must be an object with a \"name\""},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        json_t *e = daemon_complete(c, prompt, bad[i][0], NULL);
        const char *msg = json_string_value(json_object_get(e, "message"));
        if (!msg || !strstr(msg, bad[i][1]))
            fail_msg("lora %s: want \"%s\", got %s", bad[i][0], bad[i][1], json_dumps(e, 0));
        assert_string_equal(json_string_value(json_object_get(e, "error")), "invalid_request");
        json_decref(e);
    }
    nbt_send(c, "{\"op\":\"status\"}");
    json_t *st = nbt_event(c, 10000);
    json_t *l0 = json_array_get(json_object_get(st, "lora"), 0);
    assert_string_equal(json_string_value(json_object_get(l0, "name")), "story");
    assert_true(json_integer_value(json_object_get(l0, "pairs")) > 0);
    json_decref(st);
    /* the same name again on the command line is refused */
    char *dup_argv[] = {(char *)nbt_bin("nibd"), "-m", base, "--config", conf, "--lora", arg, NULL};
    char *dup_err = NULL;
    assert_int_equal(nbt_run(dup_argv, NULL, &dup_err, 30), 2);
    assert_non_null(strstr(dup_err, "two LoRA adapters named 'story'"));
    free(dup_err);
    unlink(conf);
    free(conf);
    nb_client_close(c);
    nb_client_close(c2);
    assert_int_equal(nbt_daemon_stop(&d), 0);

    /* start-up refusals: a misfit adapter, a bad name */
    char *small = nbt_data_path("models/stories260K.gguf"), *errs = NULL;
    char *argv[] = {(char *)nbt_bin("nibd"), "-m", small, "--socket", "/nonexistent/x.sock",
                    "--lora", arg, NULL};
    nbt_run(argv, NULL, &errs, 30);
    assert_non_null(strstr(errs, "adapter story:"));
    free(errs);
    char *argv2[] = {(char *)nbt_bin("nibd"), "-m", small, "--lora", "no name=x", NULL};
    assert_int_equal(nbt_run(argv2, NULL, &errs, 30), 2);
    assert_non_null(strstr(errs, "--lora wants NAME=FILE"));
    free(errs);
    free(small);
    free(want_plain);
    free(want_half);
    free(base);
    free(lora);
}

/* nibble synth --lora-rank writes an adapter the model of the same shape
 * takes: scale 0 changes nothing, scale 1 changes the continuation's
 * logits, and lora-merge of it agrees with applying it (no reference data
 * needed). */
static void test_synth_adapter(void **state)
{
    (void)state;
    char *model = nbt_write_temp("", 0, ".gguf"), *adapter = nbt_write_temp("", 0, ".gguf");
    char *merged = nbt_write_temp("", 0, ".gguf");
    char *a1[] = {(char *)nbt_bin("nibble"), "synth", "-p", "tiny", "--type", "F32", "-o", model,
                  NULL};
    assert_int_equal(nbt_run(a1, NULL, NULL, 60), 0);
    char *a2[] = {(char *)nbt_bin("nibble"), "synth", "-p", "tiny", "--lora-rank", "4", "-o",
                  adapter, NULL};
    assert_int_equal(nbt_run(a2, NULL, NULL, 60), 0);
    char *a3[] = {(char *)nbt_bin("nibble"), "lora-merge", "--lora-scale", "0.3", model, adapter,
                  merged, NULL};
    assert_int_equal(nbt_run(a3, NULL, NULL, 60), 0);

    nb_model *m = NULL, *mm = NULL;
    char err[256];
    assert_int_equal(nb_model_open(model, NULL, &m, err, sizeof err), NB_OK);
    assert_int_equal(nb_model_open(merged, NULL, &mm, err, sizeof err), NB_OK);
    nb_lora *a = NULL;
    assert_int_equal(nb_lora_open(m, adapter, &a, err, sizeof err), NB_OK);
    assert_int_equal(nb_lora_n_pairs(a), 2 * 7); /* 2 layers x 7 matrices */
    int n = nb_model_n_vocab(m);
    float *base = last_logits(m, NULL, 0), *zero = last_logits(m, a, 0.0f),
          *on = last_logits(m, a, 0.3f), *folded = last_logits(mm, NULL, 0);
    assert_memory_equal(base, zero, (size_t)n * sizeof *base);
    float d_on = 0, d_merge = 0;
    for (int i = 0; i < n; i++) {
        d_on = fmaxf(d_on, fabsf(on[i] - base[i]));
        d_merge = fmaxf(d_merge, fabsf(on[i] - folded[i]));
    }
    print_message("synth adapter: max |d logit| %.4f applied, %.6f merged vs applied\n", d_on,
                  d_merge);
    assert_true(d_on > 0.01f);
    assert_true(d_merge <= 0.05f);
    free(base);
    free(zero);
    free(on);
    free(folded);
    nb_lora_close(a);
    nb_model_close(mm);
    nb_model_close(m);
    unlink(model);
    unlink(adapter);
    unlink(merged);
    free(model);
    free(adapter);
    free(merged);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_open_and_apply),
        cmocka_unit_test(test_refusals),
        cmocka_unit_test(test_mixed_batch),
        cmocka_unit_test(test_cli),
        cmocka_unit_test(test_merge),
        cmocka_unit_test(test_merge_types_and_errors),
        cmocka_unit_test(test_pair_types),
        cmocka_unit_test(test_malformed_pairs),
        cmocka_unit_test_teardown(test_daemon_adapters, stop_daemon),
        cmocka_unit_test(test_synth_adapter),
    };
    return cmocka_run_group_tests_name("lora", tests, NULL, NULL);
}
