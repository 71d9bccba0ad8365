/*
 * test_config.c - the config file shared by nib and nibd, and the per-user
 * directories (XDG base directory rules) where nibble keeps its files.
 */
#include "testutil.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "nibble.h"

static char *write_conf(const char *text)
{
    return nbt_write_temp(text, strlen(text), ".conf");
}

static void test_defaults_and_values(void **state)
{
    (void)state;
    nb_config c;
    nb_config_defaults(&c);
    assert_int_equal(c.slots, 4);
    assert_true(c.keep_alive == 300);
    assert_string_equal(c.log_level, "info");
    assert_int_equal(c.history_size, 1000);
    assert_string_equal(c.model, "");
    setenv("HOME", "/home/someone", 1);
    char *p = write_conf("# a comment\n"
                         "\n"
                         "model = ~/models/tiny.gguf\n"
                         "  threads=3  \n"
                         "ctx_size = 2048\r\n"
                         "slots = 2\n"
                         "keep_alive = -1\n"
                         "log_level = debug\n"
                         "socket = \"/run/x y/nibd.sock\"\n"
                         "template = alpaca\n"
                         "system = You are terse = brief.\n"
                         "history_size = 0\n"
                         "lora = alpaca=~/lora/alpaca.gguf\n"
                         "lora = code.v2=/srv/code=lora.gguf\n");
    char err[256] = "";
    assert_int_equal(nb_config_load(&c, p, err, sizeof err), NB_OK);
    assert_string_equal(c.model, "/home/someone/models/tiny.gguf");
    assert_int_equal(c.threads, 3);
    assert_int_equal(c.ctx_size, 2048);
    assert_int_equal(c.slots, 2);
    assert_true(c.keep_alive == -1); /* never unload */
    assert_string_equal(c.log_level, "debug");
    assert_string_equal(c.socket, "/run/x y/nibd.sock");
    assert_string_equal(c.chat_template, "alpaca");
    assert_string_equal(c.system, "You are terse = brief.");
    assert_int_equal(c.history_size, 0);
    assert_int_equal(c.n_lora, 2);
    assert_string_equal(c.lora_name[0], "alpaca");
    assert_string_equal(c.lora_path[0], "/home/someone/lora/alpaca.gguf");
    assert_string_equal(c.lora_name[1], "code.v2"); /* the first '=' ends the name */
    assert_string_equal(c.lora_path[1], "/srv/code=lora.gguf");
    unlink(p);
    free(p);
}

static void test_errors(void **state)
{
    (void)state;
    static const struct {
        const char *text, *want;
    } cases[] = {
        {"modle = x\n", ":1: unknown key 'modle'"},
        {"# ok\nthreads = lots\n", ":2: bad value for threads: 'lots'"},
        {"slots = 0\n", "bad value for slots"},
        {"slots = 65\n", "bad value for slots"},
        {"threads = 99999999999999999999\n", "bad value for threads"},
        {"keep_alive = soon\n", "bad value for keep_alive"},
        {"keep_alive = nan\n", "bad value for keep_alive"},
        {"keep_alive = -2\n", "bad value for keep_alive"},
        {"log_level = loud\n", "bad value for log_level"},
        {"just words\n", ":1: expected 'key = value'"},
        {"lora = a.gguf\n", "bad value for lora: 'a.gguf'"},
        {"lora = =a.gguf\n", "bad value for lora"},
        {"lora = a b=a.gguf\n", "bad value for lora"},
        {"lora = x=\n", "bad value for lora"},
        {"lora = x=a\nlora = x=b\n", ":2: bad value for lora"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        nb_config c;
        nb_config_defaults(&c);
        char *p = write_conf(cases[i].text);
        char err[512] = "";
        assert_int_equal(nb_config_load(&c, p, err, sizeof err), NB_ERR_INVALID);
        if (!strstr(err, cases[i].want) || strncmp(err, p, strlen(p)))
            fail_msg("case %zu: '%s' does not name the file and say '%s'", i, err, cases[i].want);
        unlink(p);
        free(p);
    }
    /* a line longer than the reader's buffer, and a value too long for its field */
    size_t n = 10000;
    char *big = malloc(n + 32);
    memcpy(big, "model = ", 8);
    memset(big + 8, 'a', n);
    strcpy(big + 8 + n, "\n");
    char *p = write_conf(big);
    nb_config c;
    nb_config_defaults(&c);
    char err[512];
    assert_int_equal(nb_config_load(&c, p, err, sizeof err), NB_ERR_INVALID);
    assert_non_null(strstr(err, "too long"));
    unlink(p);
    free(p);
    big[8 + 5000] = '\n';
    big[8 + 5001] = 0;
    p = write_conf(big);
    assert_int_equal(nb_config_load(&c, p, err, sizeof err), NB_ERR_INVALID);
    assert_non_null(strstr(err, "bad value for model"));
    unlink(p);
    free(p);
    free(big);
    /* a missing file is no error, and changes nothing */
    nb_config_defaults(&c);
    assert_int_equal(nb_config_load(&c, "/nonexistent/nibble/config", err, sizeof err), NB_OK);
    assert_string_equal(c.model, "");
}

static void test_dirs(void **state)
{
    (void)state;
    char tmp[] = "/tmp/nibble-dirs-XXXXXX";
    assert_non_null(mkdtemp(tmp));
    char buf[4096], want[4200];
    /* the XDG variable wins */
    snprintf(want, sizeof want, "%s/state", tmp);
    setenv("XDG_STATE_HOME", want, 1);
    assert_int_equal(nb_dir_path(NB_DIR_STATE, "history", 0, buf, sizeof buf), NB_OK);
    snprintf(want, sizeof want, "%s/state/nibble/history", tmp);
    assert_string_equal(buf, want);
    assert_int_equal(access(want, F_OK), -1); /* nothing made without create */
    /* create: the directories, private; not the last name */
    assert_int_equal(nb_dir_path(NB_DIR_STATE, "history", 1, buf, sizeof buf), NB_OK);
    snprintf(want, sizeof want, "%s/state/nibble", tmp);
    struct stat st;
    assert_int_equal(stat(want, &st), 0);
    assert_true(S_ISDIR(st.st_mode));
    assert_int_equal(st.st_mode & 0777, 0700);
    assert_int_equal(access(buf, F_OK), -1);
    /* an empty variable falls back to HOME */
    setenv("XDG_DATA_HOME", "", 1);
    setenv("HOME", tmp, 1);
    assert_int_equal(nb_dir_path(NB_DIR_DATA, NULL, 1, buf, sizeof buf), NB_OK);
    snprintf(want, sizeof want, "%s/.local/share/nibble", tmp);
    assert_string_equal(buf, want);
    assert_int_equal(stat(want, &st), 0);
    unsetenv("XDG_CONFIG_HOME");
    assert_int_equal(nb_config_path(buf, sizeof buf), NB_OK);
    snprintf(want, sizeof want, "%s/.config/nibble/config", tmp);
    assert_string_equal(buf, want);
    /* neither: no guess */
    unsetenv("HOME");
    assert_int_equal(nb_dir_path(NB_DIR_CONFIG, NULL, 0, buf, sizeof buf), NB_ERR_INVALID);
    /* too small a buffer is an error, never a cut path */
    setenv("HOME", tmp, 1);
    assert_int_equal(nb_dir_path(NB_DIR_DATA, "models", 0, buf, 10), NB_ERR_INVALID);
    assert_int_equal(nb_dir_path(NB_DIR_DATA, "models", 0, buf, strlen(want) + 2), NB_ERR_INVALID);
    /* a file in the way: cannot create */
    snprintf(want, sizeof want, "%s/blocked", tmp);
    FILE *f = fopen(want, "w");
    fclose(f);
    setenv("XDG_DATA_HOME", want, 1);
    assert_int_equal(nb_dir_path(NB_DIR_DATA, NULL, 1, buf, sizeof buf), NB_ERR_IO);
    /* the socket */
    setenv("XDG_RUNTIME_DIR", "/run/user/1234", 1);
    assert_int_equal(nb_socket_path(buf, sizeof buf), NB_OK);
    assert_string_equal(buf, "/run/user/1234/nibble/nibd.sock");
    unsetenv("XDG_RUNTIME_DIR");
    assert_int_equal(nb_socket_path(buf, sizeof buf), NB_OK);
    snprintf(want, sizeof want, "/tmp/nibble-%u/nibd.sock", (unsigned)getuid());
    assert_string_equal(buf, want);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmp);
    assert_int_equal(system(cmd), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_defaults_and_values),
        cmocka_unit_test(test_errors),
        cmocka_unit_test(test_dirs),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
