/*
 * test_perplexity.c - nibble perplexity and make quality's table: the
 * perplexity against a brute-force log-softmax over `nibble eval` logits,
 * KL divergence of a model against itself, the order of the quantized
 * types' KL divergence against F32, the quality script, and the errors.
 */
#include "testutil.h"

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define RUN(out, err, ...) nbt_run((char *[]){(char *)nbt_bin("nibble"), __VA_ARGS__, NULL}, out, err, 120)

static char *model(const char *name)
{
    char rel[256];
    snprintf(rel, sizeof rel, "models/%s", name);
    return nbt_data_path(rel);
}

/* tests/data/stories.txt, the held-out text of make quality. */
static const char *stories(void)
{
    static char path[4096];
    const char *src = getenv("NIBBLE_SRC");
    snprintf(path, sizeof path, "%s/tests/data/stories.txt", src && *src ? src : ".");
    return path;
}

static json_t *parse(const char *s)
{
    json_error_t je;
    json_t *j = json_loads(s, 0, &je);
    if (!j)
        fail_msg("not JSON (%s): %s", je.text, s);
    return j;
}

static double num(const json_t *o, const char *key)
{
    json_t *v = json_object_get(o, key);
    if (!json_is_number(v))
        fail_msg("no number '%s'", key);
    return json_number_value(v);
}

/* perplexity --json with these arguments; fails the test unless it
 * succeeds with nothing on stderr (no progress bar without a terminal). */
static json_t *ppl_json(char *const args[])
{
    char *argv[24];
    int n = 0;
    argv[n++] = (char *)nbt_bin("nibble");
    argv[n++] = "perplexity";
    for (int i = 0; args[i]; i++)
        argv[n++] = args[i];
    argv[n++] = "--json";
    argv[n] = NULL;
    char *out, *err;
    int rc = nbt_run(argv, &out, &err, 120);
    if (rc != 0)
        fail_msg("nibble perplexity exited %d: %s", rc, err);
    assert_string_equal(err, "");
    json_t *j = parse(out);
    free(out), free(err);
    return j;
}

/* ------------------------------------------------------------------ the value */

/* The perplexity of stories260K over a fixed text with 32-token chunks,
 * recomputed here from the full logits `nibble eval` prints for each chunk
 * (BOS in place of its first token), scoring positions 16..30 as
 * llama.cpp does. */
static void test_matches_brute_force(void **state)
{
    (void)state;
    NBT_REQUIRE_DATA();
    char *m = model("stories260K.gguf");
    const char *text = "Once upon a time, there was a little girl named Mia. She had a red "
                       "ball that she loved very much. Every day, Mia took her ball to the "
                       "park. She threw it high in the sky and caught it with both hands. "
                       "One day, the wind blew the ball into a big tree.\n";
    char *tf = nbt_write_temp(text, strlen(text), ".txt");
    char *out, *err;

    /* the text's tokens, BOS first */
    assert_int_equal(RUN(&out, &err, "tokenize", "-m", m, "-f", tf), 0);
    int toks[1024], n = 0;
    for (char *p = out, *e; n < 1024; p = e) {
        long v = strtol(p, &e, 10);
        if (e == p)
            break;
        toks[n++] = (int)v;
    }
    free(out), free(err);
    assert_int_equal(toks[0], 1);
    const int n_ctx = 32, first = n_ctx / 2, n_chunk = n / n_ctx;
    assert_true(n_chunk >= 3);

    double nll = 0;
    int count = 0;
    for (int c = 0; c < n_chunk; c++) {
        char ids[1024];
        size_t k = (size_t)snprintf(ids, sizeof ids, "1");
        for (int j = 1; j < n_ctx; j++)
            k += (size_t)snprintf(ids + k, sizeof ids - k, ",%d", toks[c * n_ctx + j]);
        assert_int_equal(RUN(&out, &err, "eval", "-m", m, "--tokens", ids, "--top", "512",
                             "--greedy", "0", "--json"),
                         0);
        json_t *j = parse(out);
        json_t *top = json_object_get(j, "top");
        assert_int_equal(json_array_size(top), n_ctx);
        for (int pos = first; pos < n_ctx - 1; pos++) {
            json_t *row = json_array_get(top, (size_t)pos);
            assert_int_equal(json_array_size(row), 512); /* the whole vocabulary */
            int next = toks[c * n_ctx + pos + 1];
            double mx = -INFINITY, sum = 0, target = NAN;
            for (size_t i = 0; i < 512; i++)
                mx = fmax(mx, json_number_value(json_array_get(json_array_get(row, i), 1)));
            for (size_t i = 0; i < 512; i++) {
                json_t *pair = json_array_get(row, i);
                double l = json_number_value(json_array_get(pair, 1));
                sum += exp(l - mx);
                if (json_integer_value(json_array_get(pair, 0)) == next)
                    target = l;
            }
            assert_false(isnan(target));
            nll += mx + log(sum) - target;
            count++;
        }
        json_decref(j);
        free(out), free(err);
    }
    double want = exp(nll / count);

    json_t *j = ppl_json((char *[]){"-m", m, "-f", tf, "-c", "32", NULL});
    assert_int_equal((int)num(j, "chunks"), n_chunk);
    assert_int_equal((int)num(j, "scored"), count);
    double got = num(j, "ppl");
    assert_true(isfinite(got) && got > 1);
    if (fabs(got - want) > 1e-4 * want)
        fail_msg("perplexity %.8f, brute force %.8f", got, want);
    json_decref(j);
    printf("PPL %.6f, brute force %.6f over %d tokens\n", got, want, count);

    /* the text output ends with the value and its estimate */
    assert_int_equal(RUN(&out, &err, "perplexity", "-m", m, "-f", tf, "-c", "32", "-t", "1"), 0);
    char want_line[64];
    snprintf(want_line, sizeof want_line, "PPL = %.4f +/- ", got);
    const char *last = strstr(out, "PPL = ");
    assert_non_null(last);
    assert_memory_equal(last, want_line, strlen(want_line));
    assert_string_equal(err, "");
    free(out), free(err);

    unlink(tf);
    free(tf);
    free(m);
}

/* A model against itself: KL 0, full agreement, the same perplexity, and
 * the same figures for any thread count and chunk size per pass. */
static void test_self_comparison(void **state)
{
    (void)state;
    NBT_REQUIRE_DATA();
    char *m = model("stories260K-wide-q4_k_m.gguf");
    json_t *a = ppl_json((char *[]){"-m", m, "--kl-base", m, "-f", (char *)stories(), "-c", "64",
                                    "--chunks", "6", "-t", "2", NULL});
    assert_true(num(a, "kld") == 0);
    assert_true(num(a, "top1") == 1);
    assert_true(num(a, "ppl") == num(a, "base_ppl"));
    assert_int_equal((int)num(a, "scored"), 6 * 31);
    json_t *b = ppl_json((char *[]){"-m", m, "-f", (char *)stories(), "-c", "64", "--chunks", "6",
                                    "-t", "1", NULL});
    assert_true(num(a, "ppl") == num(b, "ppl"));
    assert_true(num(a, "ppl_err") == num(b, "ppl_err"));
    json_decref(a);
    json_decref(b);
    free(m);
}

/* Quantized stories260K-wide against F32 on the held-out text: Q8_0 is
 * within the bounds (KL < 0.01, top-1 > 97%), and the fewer the
 * bits, the larger the divergence: Q8_0 < Q4_0 < Q3_K < Q2_K. */
static void test_quantized_order(void **state)
{
    (void)state;
    NBT_REQUIRE_DATA();
    char *f32 = model("stories260K-wide-f32.gguf");
    const char *types[] = {"q8_0", "q4_0", "q3_k", "q2_k"};
    double kld[4], top1[4];
    for (int i = 0; i < 4; i++) {
        char name[64];
        snprintf(name, sizeof name, "stories260K-wide-%s.gguf", types[i]);
        char *q = model(name);
        json_t *j = ppl_json((char *[]){"-m", q, "--kl-base", f32, "-f", (char *)stories(), "-c",
                                        "64", "--chunks", "16", NULL});
        kld[i] = num(j, "kld");
        top1[i] = num(j, "top1");
        printf("%-5s KLD %.6f  top-1 %.2f%%  PPL %.4f (F32 %.4f)\n", types[i], kld[i],
               100 * top1[i], num(j, "ppl"), num(j, "base_ppl"));
        assert_true(isfinite(num(j, "ppl")));
        json_decref(j);
        free(q);
    }
    assert_true(kld[0] > 0 && kld[0] < 0.01);
    assert_true(top1[0] > 0.97);
    for (int i = 1; i < 4; i++) {
        assert_true(kld[i] > kld[i - 1]);
        assert_true(top1[i] < top1[i - 1]);
    }
    free(f32);
}

/* make quality's script prints its table: a header and one row per type,
 * F32 first with KL 0. */
static void test_quality_table(void **state)
{
    (void)state;
    NBT_REQUIRE_DATA();
    char script[4096], dir[] = "/tmp/nibble-quality-XXXXXX";
    const char *src = getenv("NIBBLE_SRC");
    snprintf(script, sizeof script, "%s/tests/quality.sh", src && *src ? src : ".");
    assert_non_null(mkdtemp(dir));
    char *f32 = model("stories260K-wide-f32.gguf");
    setenv("QUALITY_TYPES", "Q8_0 Q4_K_M", 1);
    setenv("QUALITY_ARGS", "-c 32 --chunks 4", 1);
    char *out, *err;
    int rc = nbt_run((char *[]){"/bin/sh", script, (char *)nbt_bin("nibble"), f32,
                                (char *)stories(), dir, NULL},
                     &out, &err, 120);
    unsetenv("QUALITY_TYPES");
    unsetenv("QUALITY_ARGS");
    if (rc != 0)
        fail_msg("quality.sh exited %d: %s", rc, err);
    printf("%s", out);
    assert_non_null(strstr(out, "size MiB"));
    assert_non_null(strstr(out, "KLD"));
    const char *f = strstr(out, "\nF32 ");
    assert_non_null(f);
    assert_non_null(strstr(f, "0.000000"));
    assert_non_null(strstr(out, "\nQ8_0 "));
    assert_non_null(strstr(out, "\nQ4_K_M "));
    free(out), free(err);
    char path[4200];
    snprintf(path, sizeof path, "%s/stories260K-wide-q8_0.gguf", dir);
    assert_int_equal(unlink(path), 0);
    snprintf(path, sizeof path, "%s/stories260K-wide-q4_k_m.gguf", dir);
    assert_int_equal(unlink(path), 0);
    assert_int_equal(rmdir(dir), 0);
    free(f32);
}

/* ------------------------------------------------------------------ errors */

static void test_errors(void **state)
{
    (void)state;
    char *out, *err;
    unsetenv("NIBBLE_MODEL");
    assert_int_equal(RUN(&out, &err, "perplexity", "--help"), 0);
    assert_non_null(strstr(out, "usage: nibble perplexity"));
    assert_non_null(strstr(out, "--kl-base"));
    free(out), free(err);
    assert_int_equal(RUN(&out, &err, "perplexity", "--frobnicate"), 2);
    assert_string_equal(out, "");
    free(out), free(err);
    assert_int_equal(RUN(&out, &err, "perplexity", "-f", "x.txt"), 2);
    assert_non_null(strstr(err, "no model"));
    free(out), free(err);
    assert_int_equal(RUN(&out, &err, "perplexity", "-m", "m.gguf"), 2);
    assert_non_null(strstr(err, "no text"));
    free(out), free(err);
    assert_int_equal(RUN(&out, &err, "perplexity", "-m", "m.gguf", "-f", "x", "-c", "2"), 2);
    assert_non_null(strstr(err, "--ctx"));
    free(out), free(err);
    assert_int_equal(RUN(&out, &err, "perplexity", "-m", "m.gguf", "-f", "x", "--chunks", "0"), 2);
    free(out), free(err);
    assert_int_equal(RUN(&out, &err, "perplexity", "-m", "m.gguf", "-f", "x", "stray"), 2);
    free(out), free(err);

    NBT_REQUIRE_DATA();
    char *m = model("stories260K.gguf");
    /* a missing text file */
    assert_int_equal(RUN(&out, &err, "perplexity", "-m", m, "-f", "/nonexistent/text.txt"), 1);
    assert_non_null(strstr(err, "/nonexistent/text.txt"));
    assert_string_equal(out, "");
    free(out), free(err);
    /* a missing model */
    assert_int_equal(RUN(&out, &err, "perplexity", "-m", "/nonexistent/m.gguf", "-f",
                         (char *)stories()),
                     1);
    assert_non_null(strstr(err, "/nonexistent/m.gguf"));
    free(out), free(err);
    /* a text shorter than two chunks: says how many tokens it has and needs */
    char *tf = nbt_write_temp("Once upon a time.", 17, ".txt");
    assert_int_equal(RUN(&out, &err, "perplexity", "-m", m, "-f", tf, "-c", "16"), 1);
    assert_non_null(strstr(err, "needs at least 32"));
    assert_string_equal(out, "");
    free(out), free(err);
    /* the default context, 512, needs 1024 tokens */
    assert_int_equal(RUN(&out, &err, "perplexity", "-m", m, "-f", tf), 1);
    assert_non_null(strstr(err, "needs at least 1024"));
    free(out), free(err);
    unlink(tf);
    free(tf);
    /* an empty text */
    tf = nbt_write_temp("", 0, ".txt");
    assert_int_equal(RUN(&out, &err, "perplexity", "-m", m, "-f", tf, "-c", "16"), 1);
    free(out), free(err);
    unlink(tf);
    free(tf);
    /* a reference model with another vocabulary */
    char *other = model("llama-2-tiny-random.gguf");
    assert_int_equal(RUN(&out, &err, "perplexity", "-m", m, "--kl-base", other, "-f",
                         (char *)stories(), "-c", "64"),
                     1);
    assert_non_null(strstr(err, "different vocabularies"));
    assert_non_null(strstr(err, "same tokenizer"));
    assert_string_equal(out, "");
    free(out), free(err);
    /* a missing reference model */
    assert_int_equal(RUN(&out, &err, "perplexity", "-m", m, "--kl-base", "/nonexistent/b.gguf",
                         "-f", (char *)stories(), "-c", "64"),
                     1);
    assert_non_null(strstr(err, "/nonexistent/b.gguf"));
    free(out), free(err);
    free(other);
    free(m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_errors),
        cmocka_unit_test(test_matches_brute_force),
        cmocka_unit_test(test_self_comparison),
        cmocka_unit_test(test_quantized_order),
        cmocka_unit_test(test_quality_table),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
