/*
 * test_cli.c - the nibble command as a user meets it: exit codes, error
 * messages, clean stdout, reproducible seeds, stop strings, Ctrl-C, and
 * the generation speed of the scalar build.
 */
#include "testutil.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "internal.h"

#define RUN(out, err, ...) run_nibble(out, err, (char *[]){(char *)nbt_bin("nibble"), __VA_ARGS__, NULL})

static int run_nibble(char **out, char **err, char *argv[])
{
    return nbt_run(argv, out, err, 60);
}

static char *model(const char *name)
{
    char rel[256];
    snprintf(rel, sizeof rel, "models/%s", name);
    return nbt_data_path(rel);
}

/* ------------------------------------------------------------------ usage */

static void test_usage(void **state)
{
    (void)state;
    char *out, *err;
    assert_int_equal(RUN(&out, &err, "--help"), 0);
    assert_non_null(strstr(out, "run"));
    assert_non_null(strstr(out, "eval"));
    free(out), free(err);
    assert_int_equal(RUN(&out, &err, "--version"), 0);
    assert_non_null(strstr(out, "nibble 0."));
    free(out), free(err);
    char *argv[] = {(char *)nbt_bin("nibble"), NULL};
    assert_int_equal(nbt_run(argv, &out, &err, 10), 2);
    free(out), free(err);
    assert_int_equal(RUN(&out, &err, "frobnicate"), 2);
    assert_non_null(strstr(err, "frobnicate"));
    free(out), free(err);
    const char *subs[] = {"run", "eval", "tokenize", "info"};
    for (int i = 0; i < 4; i++) {
        assert_int_equal(RUN(&out, &err, (char *)subs[i], "--help"), 0);
        assert_non_null(strstr(out, "usage: nibble"));
        free(out), free(err);
        assert_int_equal(RUN(&out, &err, (char *)subs[i], "--no-such-option"), 2);
        assert_string_equal(out, "");
        free(out), free(err);
    }
}

static void test_bad_arguments(void **state)
{
    (void)state;
    char *out, *err;
    /* no model at all: a usage error that says how to give one */
    unsetenv("NIBBLE_MODEL");
    assert_int_equal(RUN(&out, &err, "run", "-p", "hi"), 2);
    assert_non_null(strstr(err, "NIBBLE_MODEL"));
    free(out), free(err);
    const char *bad[][4] = {
        {"run", "-m", "x.gguf", "-n"},          /* missing value */
        {"run", "-m", "x.gguf", "--temp=-1"},   /* negative */
        {"run", "-m", "x.gguf", "--top-p=1.5"}, /* out of range */
        {"run", "-m", "x.gguf", "-n12x"},       /* trailing junk */
        {"run", "-m", "x.gguf", "--seed=-4"},
        {"eval", "-m", "x.gguf", "--top=0"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        int rc = RUN(&out, &err, (char *)bad[i][0], (char *)bad[i][1], (char *)bad[i][2],
                     (char *)bad[i][3], "-p", "x");
        if (rc != 2)
            fail_msg("%s %s: exit %d, stderr %s", bad[i][0], bad[i][3], rc, err);
        assert_string_equal(out, "");
        free(out), free(err);
    }
    /* both a prompt and a file */
    assert_int_equal(RUN(&out, &err, "run", "-m", "x.gguf", "-p", "a", "-f", "b"), 2);
    free(out), free(err);
}

static void test_missing_and_corrupt_files(void **state)
{
    (void)state;
    char *out, *err;
    assert_int_equal(RUN(&out, &err, "run", "-m", "/nonexistent/model.gguf", "-p", "x"), 1);
    assert_string_equal(out, "");
    assert_non_null(strstr(err, "/nonexistent/model.gguf"));
    assert_int_equal(nbt_count(err, "\n"), 1); /* one line, not a log */
    free(out), free(err);

    NBT_REQUIRE_DATA();
    /* a model cut in half: refused with a message, for every command */
    char *path = model("stories260K.gguf");
    size_t len;
    char *data = nbt_read_file(path, &len);
    assert_non_null(data);
    char *cut = nbt_write_temp(data, len / 2, ".gguf");
    const char *cmds[] = {"run", "eval", "tokenize", "info"};
    for (int i = 0; i < 4; i++) {
        int rc = i == 3   ? RUN(&out, &err, "info", cut)
                 : i == 2 ? RUN(&out, &err, "tokenize", "-m", cut, "x")
                          : RUN(&out, &err, (char *)cmds[i], "-m", cut, "-p", "x");
        assert_int_equal(rc, 1);
        assert_non_null(strstr(err, "truncated"));
        free(out), free(err);
    }
    unlink(cut);
    free(cut);
    /* not a GGUF file at all */
    char *junk = nbt_write_temp("hello, this is not a model\n", 27, ".gguf");
    assert_int_equal(RUN(&out, &err, "run", "-m", junk, "-p", "x"), 1);
    assert_non_null(strstr(err, "not a GGUF file"));
    free(out), free(err);
    unlink(junk);
    free(junk);
    free(data);
    free(path);
}

/* ------------------------------------------------------------------ run */

static void test_seed_reproduces(void **state)
{
    (void)state;
    NBT_REQUIRE_DATA();
    char *m = model("stories260K.gguf");
    char *a, *b, *c, *err;
    assert_int_equal(RUN(&a, &err, "run", "-m", m, "-p", "Once upon a time", "-n", "60", "--seed", "42"), 0);
    assert_string_equal(err, ""); /* nothing on stderr without -v */
    free(err);
    assert_int_equal(RUN(&b, &err, "run", "-m", m, "-p", "Once upon a time", "-n", "60", "--seed", "42"), 0);
    free(err);
    assert_int_equal(RUN(&c, &err, "run", "-m", m, "-p", "Once upon a time", "-n", "60", "--seed", "43"), 0);
    free(err);
    assert_true(strlen(a) > 20);
    assert_string_equal(a, b);
    assert_string_not_equal(a, c);
    free(a), free(b), free(c);

    /* greedy is the eval continuation, as text */
    char *g, *e;
    assert_int_equal(RUN(&g, &err, "run", "-m", m, "-p", "Once upon a time", "-n", "40", "--temp", "0"), 0);
    free(err);
    assert_int_equal(RUN(&e, &err, "eval", "-m", m, "-p", "Once upon a time", "--greedy", "40", "--json"), 0);
    free(err);
    json_t *j = json_loads(e, 0, NULL);
    assert_non_null(j);
    assert_string_equal(g, json_string_value(json_object_get(j, "text")));
    json_decref(j);
    free(g), free(e);
    free(m);
}

static void test_stop_and_verbose(void **state)
{
    (void)state;
    NBT_REQUIRE_DATA();
    char *m = model("stories260K.gguf");
    char *full, *cut, *err;
    assert_int_equal(RUN(&full, &err, "run", "-m", m, "-p", "Once upon a time", "-n", "60", "--temp", "0"), 0);
    free(err);
    /* greedy text is ", there was a little girl named Lily. ..." */
    const char *stop = "girl";
    char *at = strstr(full, stop);
    assert_non_null(at);
    assert_int_equal(RUN(&cut, &err, "run", "-m", m, "-p", "Once upon a time", "-n", "60", "--temp", "0",
                         "--stop", (char *)stop, "-v"),
                     0);
    assert_int_equal(strlen(cut), (size_t)(at - full));
    assert_memory_equal(cut, full, (size_t)(at - full));
    /* -v reports on stderr, never on stdout */
    assert_non_null(strstr(err, "stop: stop"));
    assert_non_null(strstr(err, "tokens/s"));
    assert_null(strstr(cut, "nibble:"));
    free(full), free(cut), free(err);

    /* a prompt longer than the context is an error, not a truncation */
    char *out;
    assert_int_equal(RUN(&out, &err, "run", "-m", m, "-p", "Once upon a time there was a dog", "-c", "4"), 1);
    assert_non_null(strstr(err, "context"));
    assert_string_equal(out, "");
    free(out), free(err);
    free(m);
}

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* Acceptance: 200 tokens of stories260K in well under a second, one thread,
 * scalar kernels.  The bound is generous (sanitizer builds run it too). */
static void test_throughput(void **state)
{
    (void)state;
    NBT_REQUIRE_DATA();
    char *m = model("stories260K.gguf");
    char *out, *err;
    setenv("NIBBLE_KERNELS", "ref", 1);
    double t0 = now();
    int rc = RUN(&out, &err, "run", "-m", m, "-p", "Once upon a time", "-n", "200", "--ignore-eos",
                 "-t", "1", "-v");
    double secs = now() - t0;
    unsetenv("NIBBLE_KERNELS");
    assert_int_equal(rc, 0);
    assert_non_null(strstr(err, "generated 200 tokens"));
    printf("    200 tokens in %.0f ms wall (%s", secs * 1e3, strstr(err, "generated"));
#if defined(__SANITIZE_ADDRESS__)
    /* the requirement is for the optimised build; sanitizers cost ~5x */
    assert_true(secs < 5.0);
#else
    assert_true(secs < 1.0);
#endif
    free(out), free(err);
    free(m);
}

/* Ctrl-C stops generation, keeps what was written, and exits 130. */
static void test_interrupt(void **state)
{
    (void)state;
    NBT_REQUIRE_DATA();
    char *m = model("llama-2-tiny-random.gguf");
    int po[2];
    assert_int_equal(pipe(po), 0);
    pid_t pid = fork();
    if (pid == 0) {
        dup2(po[1], 1);
        int dn = open("/dev/null", O_WRONLY);
        dup2(dn, 2);
        execl(nbt_bin("nibble"), "nibble", "run", "-m", m, "-p", "hello", "-n", "-1", "--ignore-eos",
              "-c", "100000", (char *)NULL);
        _exit(127);
    }
    close(po[1]);
    /* wait for the first generated bytes, then interrupt */
    char buf[4096];
    ssize_t r = read(po[0], buf, sizeof buf);
    assert_true(r > 0);
    kill(pid, SIGINT);
    while (read(po[0], buf, sizeof buf) > 0)
        ;
    int status;
    double t0 = now();
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(now() - t0 < 5);
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 130);
    close(po[0]);
    free(m);
}

/* ------------------------------------------------------------------ others */

static void test_eval_json(void **state)
{
    (void)state;
    NBT_REQUIRE_DATA();
    char *m = model("stories260K.gguf");
    char *out, *err;
    assert_int_equal(RUN(&out, &err, "eval", "-m", m, "-p", "Once upon a time", "--json"), 0);
    assert_int_equal(nbt_count(out, "\n"), 1);
    json_t *j = json_loads(out, 0, NULL);
    assert_non_null(j);
    const char *keys[] = {"model", "prompt", "tokens", "top", "greedy", "text"};
    for (int i = 0; i < 6; i++)
        assert_non_null(json_object_get(j, keys[i]));
    assert_string_equal(json_string_value(json_object_get(j, "model")), "stories260K.gguf");
    size_t n = json_array_size(json_object_get(j, "tokens"));
    assert_int_equal(json_array_size(json_object_get(j, "top")), n);
    assert_int_equal(json_array_size(json_array_get(json_object_get(j, "top"), 0)), 5);
    assert_int_equal(json_array_size(json_object_get(j, "greedy")), 40);
    json_decref(j);
    free(out), free(err);
    /* ids outside the vocabulary */
    assert_int_equal(RUN(&out, &err, "eval", "-m", m, "--tokens", "1,999999"), 1);
    assert_non_null(strstr(err, "999999"));
    free(out), free(err);
    assert_int_equal(RUN(&out, &err, "eval", "-m", m, "--tokens", "1,two"), 2);
    free(out), free(err);
    free(m);
}

static void test_tokenize_and_info(void **state)
{
    (void)state;
    NBT_REQUIRE_DATA();
    char *v = nbt_data_path("vocab/ggml-vocab-llama-spm.gguf");
    char *out, *err;
    assert_int_equal(RUN(&out, &err, "tokenize", "-m", v, "Hello world"), 0);
    assert_string_equal(out, "1 15043 3186\n");
    free(out), free(err);
    assert_int_equal(RUN(&out, &err, "tokenize", "-m", v, "--no-bos", "Hello world"), 0);
    assert_string_equal(out, "15043 3186\n");
    free(out), free(err);
    /* a vocabulary file describes itself but cannot run */
    assert_int_equal(RUN(&out, &err, "info", v), 0);
    assert_non_null(strstr(out, "vocabulary:    32000 tokens"));
    assert_non_null(strstr(out, "runnable:      no"));
    free(out), free(err);
    assert_int_equal(RUN(&out, &err, "run", "-m", v, "-p", "x"), 1);
    assert_non_null(strstr(err, "token_embd"));
    free(out), free(err);
    free(v);
    /* byte-level BPE: GPT-2's vocabulary adds no BOS */
    v = nbt_data_path("vocab/ggml-vocab-gpt-2.gguf");
    assert_int_equal(RUN(&out, &err, "tokenize", "-m", v, "Hello world"), 0);
    assert_string_equal(out, "15496 995\n");
    free(out), free(err);
    assert_int_equal(RUN(&out, &err, "info", v), 0);
    assert_non_null(strstr(out, "tokenizer 'gpt2' (byte-level BPE, pre-tokenizer gpt-2)"));
    free(out), free(err);
    free(v);
    v = model("llama-bpe-random-f16.gguf");
    assert_int_equal(RUN(&out, &err, "info", v), 0);
    assert_non_null(strstr(out, "pre-tokenizer deepseek-coder), BOS 32013 (added)"));
    assert_non_null(strstr(out, "runnable:      yes"));
    /* DeepSeek-Coder's FIM tokens, found by their spelling */
    assert_non_null(strstr(out, "infill:        prefix <\xef\xbd\x9c" "fim\xe2\x96\x81"
                                "begin\xef\xbd\x9c> (32016)"));
    assert_non_null(strstr(out, "rope:          32 dimensions, base 500000\n"));
    free(out), free(err);
    free(v);
    v = model("qwen2-random-q8_0.gguf");
    assert_int_equal(RUN(&out, &err, "info", v), 0);
    assert_non_null(strstr(out, "architecture:  qwen2"));
    assert_non_null(strstr(out, "NEOX layout"));
    assert_non_null(strstr(out, "attention:     biases on the projections"));
    assert_non_null(strstr(out, "infill:        no fill-in-the-middle tokens"));
    assert_non_null(strstr(out, "chat template: none"));
    assert_non_null(strstr(out, "runnable:      yes"));
    free(out), free(err);
    free(v);
    char *m = model("stories260K-wide-q4_k_m.gguf");
    assert_int_equal(RUN(&out, &err, "info", "-a", m), 0);
    assert_non_null(strstr(out, "architecture:  llama"));
    assert_non_null(strstr(out, "Q4_K"));
    assert_non_null(strstr(out, "runnable:      yes"));
    assert_non_null(strstr(out, "blk.0.attn_q.weight"));
    free(out), free(err);
    free(m);
}

/* synth: a loadable model of the requested shape, the same bytes for the
 * same seed, written atomically. */
static void test_synth(void **state)
{
    (void)state;
    char dir[] = "/tmp/nibble-synth-XXXXXX";
    assert_non_null(mkdtemp(dir));
    char a[256], b[256], c[256];
    snprintf(a, sizeof a, "%s/a.gguf", dir);
    snprintf(b, sizeof b, "%s/b.gguf", dir);
    snprintf(c, sizeof c, "%s/c.gguf", dir);
    char *out, *err;
    assert_int_equal(RUN(&out, &err, "synth", "-o", a, "--seed", "7"), 0);
    free(out), free(err);
    assert_int_equal(RUN(&out, &err, "synth", "-o", b, "--seed", "7"), 0);
    free(out), free(err);
    assert_int_equal(RUN(&out, &err, "synth", "-o", c, "--seed", "8", "--type", "F32", "--layers",
                         "3", "--embd", "96", "--heads", "6", "--kv-heads", "3"),
                     0);
    free(out), free(err);
    size_t la, lb;
    char *da = nbt_read_file(a, &la), *db = nbt_read_file(b, &lb);
    assert_int_equal(la, lb);
    assert_memory_equal(da, db, la);
    free(da), free(db);
    assert_int_equal(RUN(&out, &err, "info", c), 0);
    assert_non_null(strstr(out, "layers:        3"));
    assert_non_null(strstr(out, "embedding:     96"));
    assert_non_null(strstr(out, "heads:         6 (key/value heads 3, head size 16)"));
    assert_non_null(strstr(out, "vocabulary:    512 tokens"));
    free(out), free(err);
    /* it runs, and a seed reproduces its text */
    char *g1, *g2;
    assert_int_equal(RUN(&g1, &err, "run", "-m", c, "-p", "abc", "-n", "16", "--seed", "3"), 0);
    free(err);
    assert_int_equal(RUN(&g2, &err, "run", "-m", c, "-p", "abc", "-n", "16", "--seed", "3"), 0);
    free(err);
    assert_string_equal(g1, g2);
    free(g1), free(g2);
    /* impossible shapes are usage errors; an unwritable place leaves nothing */
    assert_int_equal(RUN(&out, &err, "synth", "-o", a, "--embd", "100", "--heads", "3"), 2);
    free(out), free(err);
    assert_int_equal(RUN(&out, &err, "synth", "-o", "/nonexistent-dir/x.gguf"), 1);
    assert_non_null(strstr(err, "/nonexistent-dir/x.gguf"));
    free(out), free(err);
    if (nbt_data_dir()) {
        /* a vocabulary taken from another file tokenizes exactly as that file */
        char *v = nbt_data_path("vocab/ggml-vocab-llama-spm.gguf");
        char path[300];
        snprintf(path, sizeof path, "%s.synth.gguf", a);
        assert_int_equal(RUN(&out, &err, "synth", "-o", path, "--vocab", v), 0);
        free(out), free(err);
        char *t1, *t2;
        assert_int_equal(RUN(&t1, &err, "tokenize", "-m", v, "Hello world, \xf0\x9f\x99\x82!"), 0);
        free(err);
        assert_int_equal(RUN(&t2, &err, "tokenize", "-m", path, "Hello world, \xf0\x9f\x99\x82!"), 0);
        free(err);
        assert_string_equal(t1, t2);
        free(t1), free(t2);
        assert_int_equal(RUN(&out, &err, "info", path), 0);
        assert_non_null(strstr(out, "vocabulary:    32000 tokens"));
        free(out), free(err);
        unlink(path);
        free(v);
    }
    unlink(a), unlink(b), unlink(c);
    assert_int_equal(rmdir(dir), 0); /* no temporary files were left behind */

}

/* Every tensor of two GGUF files: same names, types, shapes and bytes. */
static void assert_same_tensors(const char *a, const char *b)
{
    nb_gguf *ga, *gb;
    char err[256];
    assert_int_equal(nb_gguf_open(a, &ga, err, sizeof err), NB_OK);
    assert_int_equal(nb_gguf_open(b, &gb, err, sizeof err), NB_OK);
    assert_int_equal(nb_gguf_n_tensors(ga), nb_gguf_n_tensors(gb));
    for (int64_t i = 0; i < nb_gguf_n_tensors(ga); i++) {
        const nbi_tensor *ta = nbi_gguf_tensor(ga, nb_gguf_tensor_name(ga, i));
        const nbi_tensor *tb = nbi_gguf_tensor(gb, ta->name);
        assert_non_null(tb);
        if (ta->type != tb->type)
            fail_msg("%s: %s vs %s", ta->name, nb_type_name(ta->type), nb_type_name(tb->type));
        assert_memory_equal(ta->ne, tb->ne, sizeof ta->ne);
        assert_int_equal(ta->nbytes, tb->nbytes);
        if (memcmp(ta->data, tb->data, ta->nbytes) != 0)
            fail_msg("%s: bytes differ from %s", ta->name, b);
    }
    nb_gguf_close(ga);
    nb_gguf_close(gb);
}

/* quantize: the same tensors, types and bytes as llama.cpp's quantizer,
 * for single types (--pure) and for its default mixes. */
static void test_quantize(void **state)
{
    (void)state;
    NBT_REQUIRE_DATA();
    char *f32 = model("stories260K-wide-f32.gguf");
    char out_path[] = "/tmp/nibble-quant-XXXXXX";
    int fd = mkstemp(out_path);
    assert_true(fd >= 0);
    close(fd);
    const char *cases[][3] = {
        {"--pure", "Q4_0", "stories260K-wide-q4_0.gguf"},
        {"--pure", "Q8_0", "stories260K-wide-q8_0.gguf"},
        {"--pure", "Q5_1", "stories260K-wide-q5_1.gguf"},
        {"--pure", "Q3_K", "stories260K-wide-q3_k.gguf"},
        {"--pure", "IQ4_NL", "stories260K-wide-iq4_nl.gguf"},
        {"--pure", "BF16", "stories260K-wide-bf16.gguf"},
        {"-t2", "Q4_K_M", "stories260K-wide-q4_k_m.gguf"},
        {"-t1", "Q4_0", "stories260K-wide-q4_0-mix.gguf"},
    };
    char *out, *err;
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        int rc = RUN(&out, &err, "quantize", (char *)cases[i][0], f32, out_path, (char *)cases[i][1]);
        if (rc != 0)
            fail_msg("quantize %s %s: exit %d: %s", cases[i][0], cases[i][1], rc, err);
        free(out), free(err);
        char *want = model(cases[i][2]);
        assert_same_tensors(out_path, want);
        free(want);
        /* and the result is a model nibble runs */
        assert_int_equal(RUN(&out, &err, "eval", "-m", out_path, "-p", "Once", "--greedy", "2"), 0);
        free(out), free(err);
    }
    printf("    %zu quantizations identical to llama.cpp's files, tensor for tensor\n",
           sizeof cases / sizeof cases[0]);
    /* refusals */
    char *q4 = model("stories260K-wide-q4_0.gguf");
    assert_int_equal(RUN(&out, &err, "quantize", q4, out_path, "Q4_K"), 1);
    assert_non_null(strstr(err, "already Q4_0"));
    free(out), free(err);
    assert_int_equal(RUN(&out, &err, "quantize", f32, out_path, "Q7_X"), 2);
    assert_non_null(strstr(err, "Q7_X"));
    free(out), free(err);
    unlink(out_path);
    free(q4);
    free(f32);
}

/* Peak resident set of a program run to completion, in bytes; its output
 * is discarded.  Returns -1 when it fails. */
static long long peak_rss(char *const argv[])
{
    pid_t pid = fork();
    if (pid == 0) {
        int null = open("/dev/null", O_RDWR);
        dup2(null, 1);
        dup2(null, 2);
        execv(argv[0], argv);
        _exit(127);
    }
    int status;
    struct rusage ru;
    if (pid < 0 || wait4(pid, &status, 0, &ru) != pid || !WIFEXITED(status) || WEXITSTATUS(status))
        return -1;
    return (long long)ru.ru_maxrss * 1024;
}

/* nibble run maps the weights in place: its peak RSS stays within the
 * file, the KV cache and 64 MB of everything else.  The model is big
 * enough (about 110 MB of Q4_0) that a second copy of the weights would
 * break the bound. */
static void test_memory(void **state)
{
    (void)state;
#if defined(__SANITIZE_ADDRESS__)
    printf("    skipped under AddressSanitizer: its shadow memory counts as resident\n");
    return;
#endif
    char dir[] = "/tmp/nibble-mem-XXXXXX";
    assert_non_null(mkdtemp(dir));
    char f16[256], q4[256];
    snprintf(f16, sizeof f16, "%s/f16.gguf", dir);
    snprintf(q4, sizeof q4, "%s/q4_0.gguf", dir);
    char *out, *err;
    assert_int_equal(RUN(&out, &err, "synth", "-o", f16, "--embd", "1024", "--layers", "8", "--heads",
                         "16", "--kv-heads", "4", "--ff", "2816", "--n-vocab", "32000", "--ctx", "2048"),
                     0);
    free(out), free(err);
    assert_int_equal(RUN(&out, &err, "quantize", f16, q4, "Q4_0"), 0);
    free(out), free(err);
    unlink(f16);
    struct stat st;
    assert_int_equal(stat(q4, &st), 0);
    const long long n_ctx = 1024, layers = 8, kv_dim = 1024 / 16 * 4;
    const long long kv = 2 * layers * n_ctx * kv_dim * 2; /* K and V, fp16 */
    char *argv[] = {(char *)nbt_bin("nibble"), "run", "-m", q4, "-p", "Once upon a time",
                    "-n", "32", "-c", "1024", "--temp", "0", NULL};
    const long long rss = peak_rss(argv);
    assert_true(rss > 0);
    const long long bound = (long long)st.st_size + kv + (64ll << 20);
    printf("    peak RSS %.1f MB; file %.1f MB + KV cache %.1f MB + 64 MB = %.1f MB\n", rss / 1048576.0,
           st.st_size / 1048576.0, kv / 1048576.0, bound / 1048576.0);
    assert_true(rss <= bound);
    /* and it did read the weights: at least most of the file is resident */
    assert_true(rss >= st.st_size / 2);
    unlink(q4);
    assert_int_equal(rmdir(dir), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_usage),
        cmocka_unit_test(test_bad_arguments),
        cmocka_unit_test(test_missing_and_corrupt_files),
        cmocka_unit_test(test_seed_reproduces),
        cmocka_unit_test(test_stop_and_verbose),
        cmocka_unit_test(test_throughput),
        cmocka_unit_test(test_interrupt),
        cmocka_unit_test(test_eval_json),
        cmocka_unit_test(test_tokenize_and_info),
        cmocka_unit_test(test_synth),
        cmocka_unit_test(test_quantize),
        cmocka_unit_test(test_memory),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
