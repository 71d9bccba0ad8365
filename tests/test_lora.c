/*
 * test_lora.c - LoRA adapters: loading llama.cpp's adapter GGUF, the
 * checks against the base model, attaching adapters to contexts.  Agreement
 * of the adapted logits with llama.cpp is test_reference.c's.
 */
#include "testutil.h"

#include <stdlib.h>
#include <string.h>

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

/* Logits of the last of a few tokens with the given adapter and scale. */
static float *last_logits(const nb_model *m, nb_lora *a, float scale)
{
    nb_ctx_params cp = nb_ctx_default_params();
    cp.n_ctx = 64;
    cp.n_threads = 2;
    nb_ctx *c = NULL;
    char err[256];
    assert_int_equal(nb_ctx_new(m, &cp, &c, err, sizeof err), NB_OK);
    if (a)
        assert_int_equal(nb_ctx_set_lora(c, &a, &scale, 1), NB_OK);
    const nb_token toks[] = {1, 403, 407, 261, 378};
    assert_int_equal(nb_ctx_decode(c, toks, 5, 0), NB_OK);
    int n = nb_model_n_vocab(m);
    float *out = malloc((size_t)n * sizeof *out);
    memcpy(out, nb_ctx_logits(c, -1), (size_t)n * sizeof *out);
    nb_ctx_free(c);
    return out;
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

    /* attaching: adapters of another model instance, bad counts, mixed batches */
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
    const nb_token t[] = {1, 403};
    nb_batch_item items[2] = {{c, t, 2, 0}, {d, t, 2, 0}};
    assert_int_equal(nb_decode_batch(NULL, items, 2), NB_ERR_INVALID);
    assert_non_null(strstr(nb_ctx_errmsg(c), "LoRA"));
    assert_int_equal(nb_ctx_set_lora(d, &a, &one, 1), NB_OK);
    assert_int_equal(nb_decode_batch(NULL, items, 2), NB_OK);
    assert_int_equal(nb_ctx_set_lora(c, NULL, NULL, 0), NB_OK);
    nb_ctx_free(c);
    nb_ctx_free(d);
    nb_lora_close(a);
    nb_lora_close(other);
    nb_model_close(m2);
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

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_open_and_apply),
        cmocka_unit_test(test_refusals),
        cmocka_unit_test(test_cli),
    };
    return cmocka_run_group_tests_name("lora", tests, NULL, NULL);
}
