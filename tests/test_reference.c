/*
 * test_reference.c - agreement with llama.cpp.
 *
 * For every record of the .jsonl files in ../shared/reference this runs
 * `nibble eval` on the same model and prompt and checks, with the tolerance
 * of the model's weight type:
 *  - the prompt tokens are identical;
 *  - every reference top-5 logit is matched within the tolerance;
 *  - the top-1 id is identical unless the reference's top two are closer
 *    than the tolerance;
 *  - the greedy continuation is identical for the first 20 tokens (8 for
 *    Q2_K/Q3_K).  A step may differ only where the two candidates are
 *    within the tolerance of each other: every reference step is checked
 *    teacher-forced (the reference prefix evaluated with `--tokens`), and
 *    the free-running continuation must match up to the first such tie.
 * All of it at 2 threads, and 1 thread must give identical output.
 * Every reference model must load: the llama and qwen2 architectures,
 * SentencePiece and byte-level BPE vocabularies.
 * A file named "<model>+lora-<tag>@<scale>.jsonl" was made with the adapter
 * models/lora-*-<tag>.gguf at that scale: it runs with --lora and
 * --lora-scale, same tolerances.
 */
#include "testutil.h"

#include <dirent.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "nibble.h"

#define TOP_QUERY 64 /* our logits reported per position, to find any reference id */

/* The adapter of the file being checked, or NULL. */
static char *lora_path;
static char lora_scale[32];

typedef struct tolerance {
    double logit;
    int greedy;
} tolerance;

static tolerance tolerance_for(const char *type)
{
    if (!strcmp(type, "F32") || !strcmp(type, "F16") || !strcmp(type, "BF16"))
        return (tolerance){0.05, 20};
    if (!strcmp(type, "Q2_K") || !strcmp(type, "Q3_K"))
        return (tolerance){0.50, 8};
    return (tolerance){0.30, 20};
}

/* Replace bytes that are not valid UTF-8 so jansson can parse the line;
 * returns 1 when the line was valid. */
static int utf8_scrub(char *s, size_t n)
{
    int valid = 1;
    for (size_t i = 0; i < n;) {
        unsigned char c = (unsigned char)s[i];
        int len = c < 0x80 ? 1 : (c & 0xe0) == 0xc0 ? 2 : (c & 0xf0) == 0xe0 ? 3 : (c & 0xf8) == 0xf0 ? 4 : 0;
        int ok = len > 0 && i + (size_t)len <= n;
        for (int k = 1; ok && k < len; k++)
            ok = ((unsigned char)s[i + k] & 0xc0) == 0x80;
        if (!ok) {
            s[i++] = '?';
            valid = 0;
        } else {
            i += (size_t)len;
        }
    }
    return valid;
}

static json_t *run_eval_t(const char *model, const char *prompt_arg, const char *prompt, int greedy,
                          const char *threads, char **stderr_out, int *rc)
{
    char top[16], gr[16];
    snprintf(top, sizeof top, "%d", TOP_QUERY);
    snprintf(gr, sizeof gr, "%d", greedy);
    char *argv[] = {(char *)nbt_bin("nibble"), "eval", "-m", (char *)model, (char *)prompt_arg,
                    (char *)prompt, "--json", "--top", top, "--greedy", gr, "-t", (char *)threads,
                    lora_path ? "--lora" : NULL, lora_path, "--lora-scale", lora_scale, NULL};
    char *out = NULL;
    *rc = nbt_run(argv, &out, stderr_out, 120);
    json_error_t jerr;
    json_t *j = *rc == 0 ? json_loads(out, 0, &jerr) : NULL;
    free(out);
    return j;
}

/* The checks run at 2 threads; 1 thread must then give the same bits. */
static json_t *run_eval(const char *model, const char *prompt_arg, const char *prompt, int greedy,
                        char **stderr_out, int *rc)
{
    return run_eval_t(model, prompt_arg, prompt, greedy, "2", stderr_out, rc);
}

/* Our logit for id at position pos of an eval result, or NAN. */
static double our_logit(json_t *top, size_t pos, json_int_t id)
{
    json_t *row = json_array_get(top, pos);
    size_t i;
    json_t *pair;
    json_array_foreach(row, i, pair)
    {
        if (json_integer_value(json_array_get(pair, 0)) == id)
            return json_number_value(json_array_get(pair, 1));
    }
    return NAN;
}

static json_int_t top_id(json_t *top, size_t pos)
{
    return json_integer_value(json_array_get(json_array_get(json_array_get(top, pos), 0), 0));
}

static double top_logit(json_t *top, size_t pos, size_t rank)
{
    return json_number_value(json_array_get(json_array_get(json_array_get(top, pos), rank), 1));
}

typedef struct stats {
    int records, exact_greedy, ties;
    double max_diff;
} stats;

static void check_record(const char *model, json_t *ref, int ref_text_valid, tolerance tol,
                         stats *st)
{
    const char *prompt = json_string_value(json_object_get(ref, "prompt"));
    json_t *rtok = json_object_get(ref, "tokens"), *rtop = json_object_get(ref, "top"),
           *rgreedy = json_object_get(ref, "greedy");
    assert_non_null(prompt);
    int rc;
    char *err = NULL;
    json_t *o = run_eval(model, "-p", prompt, (int)json_array_size(rgreedy), &err, &rc);
    if (!o)
        fail_msg("nibble eval failed (exit %d) on '%s': %s", rc, prompt, err);
    free(err);
    json_t *o1 = run_eval_t(model, "-p", prompt, (int)json_array_size(rgreedy), "1", &err, &rc);
    if (!o1)
        fail_msg("nibble eval -t 1 failed (exit %d) on '%s': %s", rc, prompt, err);
    free(err);
    if (!json_equal(o, o1))
        fail_msg("prompt '%s': 1 thread and 2 threads give different results", prompt);
    json_decref(o1);

    /* prompt tokens identical */
    json_t *otok = json_object_get(o, "tokens"), *otop = json_object_get(o, "top"),
           *ogreedy = json_object_get(o, "greedy");
    if (!json_equal(otok, rtok)) {
        char *a = json_dumps(otok, JSON_COMPACT), *b = json_dumps(rtok, JSON_COMPACT);
        fail_msg("prompt '%s': tokens %s, reference %s", prompt, a, b);
    }

    /* logits and top-1 at every position */
    size_t n = json_array_size(rtop);
    assert_int_equal(json_array_size(otop), n);
    for (size_t p = 0; p < n; p++) {
        json_t *row = json_array_get(rtop, p);
        size_t r;
        json_t *pair;
        json_array_foreach(row, r, pair)
        {
            json_int_t id = json_integer_value(json_array_get(pair, 0));
            double want = json_number_value(json_array_get(pair, 1));
            double got = our_logit(otop, p, id);
            double d = isnan(got) ? INFINITY : fabs(got - want);
            if (d > st->max_diff)
                st->max_diff = d;
            if (!(d <= tol.logit))
                fail_msg("prompt '%s' position %zu: logit of token %lld is %g, reference %g "
                         "(tolerance %g)",
                         prompt, p, (long long)id, got, want, tol.logit);
        }
        double margin = top_logit(rtop, p, 0) - top_logit(rtop, p, 1);
        if (top_id(otop, p) != top_id(rtop, p) && margin >= tol.logit)
            fail_msg("prompt '%s' position %zu: top token %lld, reference %lld (margin %g)",
                     prompt, p, (long long)top_id(otop, p), (long long)top_id(rtop, p), margin);
    }

    /* greedy: every reference step teacher-forced ... */
    size_t ng = json_array_size(rgreedy);
    size_t check = ng < (size_t)tol.greedy ? ng : (size_t)tol.greedy;
    size_t n_prompt = json_array_size(rtok);
    char *ids = malloc(16 * (n_prompt + check) + 1);
    size_t len = 0;
    for (size_t i = 0; i < n_prompt + check; i++) {
        json_t *v = i < n_prompt ? json_array_get(rtok, i) : json_array_get(rgreedy, i - n_prompt);
        len += (size_t)sprintf(ids + len, "%s%lld", i ? "," : "", (long long)json_integer_value(v));
    }
    err = NULL;
    json_t *tf = run_eval(model, "--tokens", ids, 0, &err, &rc);
    if (!tf)
        fail_msg("teacher-forced eval failed (exit %d): %s", rc, err);
    free(err);
    free(ids);
    json_t *tftop = json_object_get(tf, "top");
    size_t first_tie = check;
    for (size_t g = 0; g < check; g++) {
        size_t pos = n_prompt - 1 + g;
        json_int_t want = json_integer_value(json_array_get(rgreedy, g));
        double best = top_logit(tftop, pos, 0);
        double got = our_logit(tftop, pos, want);
        if (top_id(tftop, pos) != want) {
            if (!(best - got < tol.logit))
                fail_msg("prompt '%s' greedy step %zu: reference token %lld scores %g, %g below "
                         "our choice %lld (tolerance %g)",
                         prompt, g, (long long)want, got, best - got,
                         (long long)top_id(tftop, pos), tol.logit);
            if (first_tie == check)
                first_tie = g;
        }
    }
    /* ... and the free-running continuation identical up to the first tie */
    for (size_t g = 0; g < first_tie; g++)
        if (json_integer_value(json_array_get(ogreedy, g)) !=
            json_integer_value(json_array_get(rgreedy, g)))
            fail_msg("prompt '%s': greedy token %zu is %lld, reference %lld, with no tie there",
                     prompt, g, (long long)json_integer_value(json_array_get(ogreedy, g)),
                     (long long)json_integer_value(json_array_get(rgreedy, g)));
    st->ties += first_tie < check;
    if (json_equal(ogreedy, rgreedy)) {
        st->exact_greedy++;
        /* the decoded text must then be the reference's too */
        if (ref_text_valid)
            assert_string_equal(json_string_value(json_object_get(o, "text")),
                                json_string_value(json_object_get(ref, "text")));
    }
    st->records++;
    json_decref(tf);
    json_decref(o);
}

/* For "<model>+lora-<tag>@<scale>.jsonl": the path of models/lora-*-<tag>.gguf
 * into lora_path and the scale into lora_scale; lora_path NULL otherwise. */
static void find_lora(const char *path)
{
    lora_path = NULL;
    const char *l = strstr(path, "+lora-");
    if (!l)
        return;
    char tag[64];
    const char *at = strchr(l, '@'), *dot = strstr(l, ".jsonl");
    if (!at || !dot || at - (l + 6) >= (ptrdiff_t)sizeof tag - 6 || dot - at - 1 >= 31)
        fail_msg("%s: cannot read the adapter tag and scale from the name", path);
    snprintf(tag, sizeof tag, "-%.*s.gguf", (int)(at - (l + 6)), l + 6);
    snprintf(lora_scale, sizeof lora_scale, "%.*s", (int)(dot - at - 1), at + 1);
    char *dir = nbt_data_path("models");
    DIR *d = dir ? opendir(dir) : NULL;
    struct dirent *e;
    while (d && (e = readdir(d))) {
        size_t n = strlen(e->d_name), t = strlen(tag);
        if (!strncmp(e->d_name, "lora-", 5) && n > t && !strcmp(e->d_name + n - t, tag)) {
            lora_path = malloc(strlen(dir) + n + 2);
            sprintf(lora_path, "%s/%s", dir, e->d_name);
            break;
        }
    }
    if (d)
        closedir(d);
    free(dir);
    if (!lora_path)
        fail_msg("%s: no models/lora-*%s", path, tag);
}

static void test_reference_file(void **state)
{
    const char *path = *state;
    NBT_REQUIRE_DATA();
    find_lora(path);
    size_t len;
    char *text = nbt_read_file(path, &len);
    assert_non_null(text);
    stats st = {0};
    char *model = NULL;
    tolerance tol = {0, 0};
    const char *model_type = "?";
    nb_model *m = NULL;
    for (char *line = text, *next; line && *line; line = next) {
        next = strchr(line, '\n');
        if (next)
            *next++ = 0;
        if (!*line)
            continue;
        int valid = utf8_scrub(line, strlen(line));
        json_error_t jerr;
        json_t *ref = json_loads(line, 0, &jerr);
        if (!ref)
            fail_msg("%s: bad reference line: %s", path, jerr.text);
        if (!model) {
            char rel[512];
            snprintf(rel, sizeof rel, "models/%s", json_string_value(json_object_get(ref, "model")));
            model = nbt_data_path(rel);
            char err[512];
            nb_status s = nb_model_open(model, NULL, &m, err, sizeof err);
            if (s)
                fail_msg("%s: %s", model, err);
            nb_model_info info;
            nb_model_get_info(m, &info);
            model_type = info.file_type;
            tol = tolerance_for(model_type);
        }
        check_record(model, ref, valid, tol, &st);
        json_decref(ref);
    }
    free(lora_path);
    lora_path = NULL;
    printf("    %-36s %-5s %d prompts, max logit diff %.4f (tol %.2f), greedy exact %d/%d, "
               "near-ties %d\n",
               strrchr(path, '/') + 1, model_type, st.records, st.max_diff, tol.logit,
               st.exact_greedy, st.records, st.ties);
    nb_model_close(m);
    free(model);
    free(text);
}

static int by_name(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

int main(void)
{
    char *dir = nbt_data_path("reference");
    char *files[256];
    int n = 0;
    DIR *d = dir ? opendir(dir) : NULL;
    if (d) {
        struct dirent *e;
        while ((e = readdir(d)) && n < 256) {
            size_t l = strlen(e->d_name);
            if (l > 6 && !strcmp(e->d_name + l - 6, ".jsonl")) {
                files[n] = malloc(strlen(dir) + l + 2);
                sprintf(files[n], "%s/%s", dir, e->d_name);
                n++;
            }
        }
        closedir(d);
    }
    qsort(files, (size_t)n, sizeof *files, by_name);
    struct CMUnitTest *tests = calloc((size_t)n + 1, sizeof *tests);
    if (n == 0) { /* no data: one test that reports the skip */
        tests[0] = (struct CMUnitTest)cmocka_unit_test(test_reference_file);
        tests[0].initial_state = (void *)"";
        n = 1;
    } else {
        for (int i = 0; i < n; i++) {
            tests[i].name = strrchr(files[i], '/') + 1;
            tests[i].test_func = test_reference_file;
            tests[i].initial_state = files[i];
        }
    }
    int rc = _cmocka_run_group_tests("reference", tests, (size_t)n, NULL, NULL);
    free(dir);
    return rc;
}
