/*
 * test_fuzz_corpus.c - every committed fuzz input as a regression test:
 * each file of tests/fuzz/corpus/<target>/ and tests/fuzz/crashes/<target>/
 * through that target's entry (tests/fuzz/fuzz_<target>.c, built here
 * without libFuzzer), so the corpus and every crash ever found also run
 * under make test SANITIZE=address,undefined.  A target's properties abort
 * on failure, naming the input.
 */
#include "testutil.h"

#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fuzz/fuzz.h"

NBF_DECLARE(gguf);
NBF_DECLARE(model);
NBF_DECLARE(spm);
NBF_DECLARE(bpe);
NBF_DECLARE(protocol);
NBF_DECLARE(template);
NBF_DECLARE(lora);
NBF_DECLARE(nib);

typedef int (*entry_fn)(const uint8_t *, size_t);

/* Run every file of dir through fn; returns how many. */
static int run_dir(const char *dir, entry_fn fn, int quiet)
{
    DIR *d = opendir(dir);
    if (!d)
        return 0;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.')
            continue;
        char path[4096];
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        size_t len;
        char *data = nbt_read_file(path, &len);
        if (!data)
            fail_msg("cannot read %s", path);
        nbf_input = path;
        /* what the target prints (nib's usage errors) is noise here */
        int saved = -1;
        if (quiet && !getenv("NIBBLE_TEST_VERBOSE")) {
            fflush(stderr);
            saved = dup(2);
            int null = open("/dev/null", O_WRONLY);
            dup2(null, 2);
            close(null);
            nbf_err_fd = saved;
        }
        assert_int_equal(fn((const uint8_t *)data, len), 0);
        if (saved >= 0) {
            fflush(stderr);
            dup2(saved, 2);
            close(saved);
            nbf_err_fd = 2;
        }
        nbf_input = NULL;
        free(data);
        n++;
    }
    closedir(d);
    return n;
}

static void run_target(const char *name, entry_fn fn, int quiet)
{
    const char *src = getenv("NIBBLE_SRC") ? getenv("NIBBLE_SRC") : ".";
    char dir[4096];
    snprintf(dir, sizeof dir, "%s/tests/fuzz/corpus/%s", src, name);
    int n = run_dir(dir, fn, quiet);
    if (n == 0)
        fail_msg("no corpus in %s", dir);
    snprintf(dir, sizeof dir, "%s/tests/fuzz/crashes/%s", src, name);
    int c = run_dir(dir, fn, quiet);
    printf("%s: %d corpus inputs, %d crash inputs\n", name, n, c);
}

#define TARGET_TEST(name, quiet)             \
    static void test_##name(void **state)    \
    {                                        \
        (void)state;                         \
        run_target(#name, nbf_##name, quiet); \
    }
TARGET_TEST(gguf, 0)
TARGET_TEST(model, 0)
TARGET_TEST(spm, 0)
TARGET_TEST(bpe, 0)
TARGET_TEST(protocol, 0)
TARGET_TEST(template, 0)
TARGET_TEST(lora, 0)
TARGET_TEST(nib, 1)

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_gguf),     cmocka_unit_test(test_model),
        cmocka_unit_test(test_spm),      cmocka_unit_test(test_bpe),
        cmocka_unit_test(test_protocol), cmocka_unit_test(test_template),
        cmocka_unit_test(test_lora),     cmocka_unit_test(test_nib),
    };
    return cmocka_run_group_tests_name("fuzz corpus", tests, NULL, NULL);
}
