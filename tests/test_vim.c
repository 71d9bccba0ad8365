/*
 * test_vim.c - the classic Vim plugin (plugin/nibble.vim, autoload/nibble.vim)
 * against a real nibd: suggestions while typing equal the model's greedy
 * continuation, typing on cancels, matching keys are consumed, Tab accepts
 * or does what it did before, disabled filetypes and :NibToggle send
 * nothing, :Nib streams into a scratch window, the plugin starts nibd when
 * nothing answers, and errors are said once.
 *
 * Vim runs headless (vim -Nu NONE -i NONE -es) on tests/vim/driver.vim, with
 * stdin an open pipe: in -es mode Vim reads keys from stdin while it waits
 * in Insert mode, and quits at its end.  The driver writes its
 * observations as one JSON object; the assertions are here.  Without vim
 * on PATH the tests print "skipped: no vim on PATH" and pass.
 */
#include "testutil.h"

#include <fcntl.h>
#include <jansson.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "nibble.h"

#define N_PREDICT 64 /* the plugin's default g:nibble_n_predict */
#define VIM_TIMEOUT_MS 20000

static struct {
    int ready;       /* set-up found data, vim and a running daemon */
    nbt_daemon d;    /* the daemon the tests share */
    char dir[40];    /* the tests' own files: results, logs, a config home */
    char sock[64];   /* the shared daemon's socket */
    char *model;
} T;

static int have_vim(void)
{
    char path[4096];
    return nbt_find_program("vim", path, sizeof path);
}

/* vim-tiny has no +eval, +channel or +textprop: it could not even say so. */
static int vim_capable(void)
{
    static int known = -1;
    if (known < 0) {
        char *argv[] = {"/usr/bin/env", "vim", "--version", NULL}, *out = NULL;
        known = nbt_run(argv, &out, NULL, 10) == 0 && out && strstr(out, "+eval") &&
                strstr(out, "+channel") && strstr(out, "+job") && strstr(out, "+timers") &&
                strstr(out, "+textprop");
        free(out);
    }
    return known;
}

/* One request, one reply event (status, shutdown). */
static json_t *ask(const char *sock, const char *req)
{
    nb_client *c = nbt_connect(sock);
    if (!c)
        return NULL;
    json_t *j = NULL;
    char *line = NULL;
    if (nb_client_send(c, req, strlen(req)) == NB_OK &&
        nb_client_read(c, &line, NULL, 5000) == NB_OK && line)
        j = json_loads(line, 0, NULL);
    free(line);
    nb_client_close(c);
    return j;
}

static long long daemon_requests(void)
{
    json_t *j = ask(T.sock, "{\"op\":\"status\"}");
    assert_non_null(j);
    long long n = json_integer_value(json_object_get(j, "requests"));
    json_decref(j);
    return n;
}

static int setup(void **state)
{
    (void)state;
    if (!nbt_data_dir() || !have_vim() || !vim_capable())
        return 0;
    snprintf(T.dir, sizeof T.dir, "/tmp/nibvim-test-XXXXXX");
    if (!mkdtemp(T.dir))
        return -1;
    char sub[80];
    snprintf(sub, sizeof sub, "%s/config", T.dir); /* an empty config home */
    mkdir(sub, 0700);
    snprintf(sub, sizeof sub, "%s/state", T.dir);
    mkdir(sub, 0700);
    T.model = nbt_data_path("models/stories260K.gguf");
    nbt_daemon_start(&T.d, T.model, NULL);
    snprintf(T.sock, sizeof T.sock, "%s", T.d.sock);
    T.ready = 1;
    return 0;
}

/* A daemon the plugin started itself on sock: ask it to stop, then make sure. */
static void stop_started_daemon(const char *sock)
{
    json_decref(ask(sock, "{\"op\":\"shutdown\"}"));
    char lock[160];
    snprintf(lock, sizeof lock, "%s.lock", sock);
    for (int i = 0; i < 300 && access(sock, F_OK) == 0; i++)
        usleep(10000);
    char *pid = nbt_read_file(lock, NULL);
    if (pid && atoi(pid) > 1 && access(sock, F_OK) == 0)
        kill(atoi(pid), SIGKILL);
    free(pid);
}

static int teardown(void **state)
{
    (void)state;
    if (T.d.pid > 0)
        nbt_daemon_stop(&T.d);
    if (T.dir[0]) {
        char sock[96];
        snprintf(sock, sizeof sock, "%s/auto/nibd.sock", T.dir);
        stop_started_daemon(sock);
        char cmd[128];
        snprintf(cmd, sizeof cmd, getenv("NIBBLE_TEST_KEEP") ? "true %s" : "rm -rf '%s'", T.dir);
        if (system(cmd) != 0)
            return -1;
        T.dir[0] = 0;
    }
    free(T.model);
    T.model = NULL;
    return 0;
}

static void require_vim(void)
{
    static int said;
    if (!have_vim() || !vim_capable()) {
        if (!said++)
            printf("skipped: %s (Debian: apt-get install vim)\n",
                   have_vim() ? "vim lacks +eval, +channel, +job, +timers or +textprop"
                              : "no vim on PATH");
        skip();
    }
    assert_true(T.ready);
}

#define REQUIRE_VIM()       \
    do {                    \
        NBT_REQUIRE_DATA(); \
        require_vim();      \
    } while (0)

/*
 * Run the driver on one case with extra environment ("NAME=value", NULL
 * ended); return what it wrote.  vim gets VIM_TIMEOUT_MS, then SIGKILL.
 */
static json_t *run_vim(const char *which, const char *const *env)
{
    const char *src = getenv("NIBBLE_SRC");
    char root[4096], driver[4200], out[128], log[128];
    if (!realpath(src && *src ? src : ".", root))
        fail_msg("no source directory");
    snprintf(driver, sizeof driver, "%s/tests/vim/driver.vim", root);
    snprintf(out, sizeof out, "%s/%s.json", T.dir, which);
    snprintf(log, sizeof log, "%s/%s.log", T.dir, which);
    unlink(out);
    char nibd[4096];
    if (!realpath(nbt_bin("nibd"), nibd))
        fail_msg("no nibd at %s", nbt_bin("nibd"));
    int in[2];
    assert_int_equal(pipe(in), 0);
    double t0 = nbt_now_ms();
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        char cfg[80], st[80];
        snprintf(cfg, sizeof cfg, "%s/config", T.dir);
        snprintf(st, sizeof st, "%s/state", T.dir);
        setenv("XDG_CONFIG_HOME", cfg, 1);
        setenv("XDG_STATE_HOME", st, 1);
        unsetenv("NIBBLE_MODEL");
        setenv("NIBBLE_SRC", root, 1);
        setenv("NIBBLE_VIM_CASE", which, 1);
        setenv("NIBBLE_VIM_OUT", out, 1);
        setenv("NIBBLE_VIM_SOCK", T.sock, 1);
        setenv("NIBBLE_VIM_MODEL", T.model, 1);
        setenv("NIBBLE_VIM_NIBD", nibd, 1);
        for (int i = 0; env && env[i]; i++)
            putenv((char *)env[i]);
        dup2(in[0], 0);
        close(in[0]);
        close(in[1]);
        int fd = open(log, O_WRONLY | O_CREAT | O_TRUNC, 0600);
        dup2(fd, 1);
        dup2(fd, 2);
        execlp("vim", "vim", "-Nu", "NONE", "-i", "NONE", "-es", "-S", driver, (char *)NULL);
        _exit(127);
    }
    close(in[0]); /* the write end stays open until vim is gone */
    int status = -1, killed = 0;
    for (;;) {
        pid_t r = waitpid(pid, &status, WNOHANG);
        if (r == pid)
            break;
        if (nbt_now_ms() - t0 > VIM_TIMEOUT_MS) {
            kill(pid, SIGKILL);
            waitpid(pid, &status, 0);
            killed = 1;
            break;
        }
        usleep(5000);
    }
    close(in[1]);
    printf("  vim %s: %.0f ms\n", which, nbt_now_ms() - t0);
    char *text = nbt_read_file(out, NULL);
    if (killed || !text) {
        char *l = nbt_read_file(log, NULL);
        fail_msg("vim (%s) %s; its output: %s", which, killed ? "timed out" : "wrote nothing",
                 l ? l : "");
    }
    json_error_t e;
    json_t *j = json_loads(text, 0, &e);
    if (!j)
        fail_msg("driver output is not JSON (%s): %s", e.text, text);
    free(text);
    if (json_object_get(j, "skip")) {
        printf("skipped: %s\n", json_string_value(json_object_get(j, "skip")));
        json_decref(j);
        skip();
    }
    if (json_object_get(j, "error"))
        fail_msg("vim (%s): %s", which, json_string_value(json_object_get(j, "error")));
    return j;
}

static const char *str(json_t *o, const char *k)
{
    const char *s = json_string_value(json_object_get(o, k));
    if (!s)
        fail_msg("no string '%s' in the driver's results", k);
    return s;
}

static long long num(json_t *o, const char *k)
{
    json_t *v = json_object_get(o, k);
    if (!json_is_integer(v))
        fail_msg("no number '%s' in the driver's results", k);
    return json_integer_value(v);
}

/* Vim's comparisons give 1 and 0, not true and false. */
static int truthy(json_t *v)
{
    return json_is_true(v) || (json_is_integer(v) && json_integer_value(v) != 0);
}

static int count_char(const char *s, char c)
{
    int n = 0;
    for (; *s; s++)
        n += *s == c;
    return n;
}

static int ends_with(const char *s, const char *tail)
{
    size_t a = strlen(s), b = strlen(tail);
    return a >= b && !strcmp(s + a - b, tail);
}

/* The model's greedy continuation of a prompt, from nibble eval. */
static char *greedy(const char *prompt)
{
    return nbt_eval_text(T.model, prompt, N_PREDICT);
}

/* Virtual text: one property for the first line (when not empty), one
 * below the line for each further line. */
static int props_for(const char *s)
{
    return (s[0] != '\n') + count_char(s, '\n');
}

static const char PARK[] = "Lily and Tom went to the park.";

/* ------------------------------------------------------------------ tests */

static void check_suggest(const char *fallback)
{
    const char *env[] = {fallback, NULL};
    json_t *r = run_vim("suggest", env);
    char prefix[128];
    snprintf(prefix, sizeof prefix, "%s\nThey", PARK);
    assert_string_equal(str(r, "prefix"), prefix);
    char *want = greedy(prefix);
    assert_true(want[0] != 0);
    /* what shows is the model's own continuation, nothing of the cancelled one */
    assert_string_equal(str(r, "first_line"), "TheyX");
    assert_int_equal(num(r, "cancels"), 1);
    /* client: the second infill is answered unsupported and sent again as complete */
    assert_int_equal(num(r, "requests_shown"), strstr(fallback, "client") ? 3 : 2);
    assert_string_equal(str(r, "suggestion"), want);
    assert_int_equal(num(r, "props"), props_for(want));
    /* a typed character that matches is consumed: no new request */
    const char *typed = str(r, "after_typing");
    size_t first = 1;
    while (want[first] && (want[first] & 0xc0) == 0x80)
        first++;
    assert_string_equal(typed, want + first);
    const char *worded = str(r, "after_word");
    assert_true(strlen(worded) < strlen(typed));
    assert_true(ends_with(typed, worded));
    assert_int_equal(num(r, "requests_consumed"), num(r, "requests_shown"));
    /* Tab inserts the rest, and the cursor ends after it */
    char *buf = malloc(strlen(prefix) + strlen(want) + 1);
    sprintf(buf, "%s%s", prefix, want);
    assert_string_equal(str(r, "buffer"), buf);
    assert_true(truthy(json_object_get(r, "eol")));
    json_t *cur = json_object_get(r, "cursor");
    assert_int_equal(json_integer_value(json_array_get(cur, 0)), 2 + count_char(want, '\n'));
    free(buf);
    free(want);
    if (!strcmp(fallback, "NIBBLE_VIM_FALLBACK=client")) {
        /* infill said unsupported; the plugin completed the prefix itself */
        assert_int_equal(num(r, "fim"), 0);
        assert_true(num(r, "fallbacks") >= 1);
    } else {
        assert_int_equal(num(r, "fallbacks"), 0);
    }
    json_decref(r);
}

static void test_suggest(void **state)
{
    (void)state;
    REQUIRE_VIM();
    check_suggest("NIBBLE_VIM_FALLBACK=server");
}

static void test_suggest_client_fallback(void **state)
{
    (void)state;
    REQUIRE_VIM();
    check_suggest("NIBBLE_VIM_FALLBACK=client");
}

static void check_tab(const char *which, const char *tab)
{
    json_t *r = run_vim(which, NULL);
    char want[256];
    snprintf(want, sizeof want, "%s%sz", PARK, tab);
    assert_string_equal(str(r, "immediate"), want);
    snprintf(want, sizeof want, "x%sy", tab);
    assert_string_equal(str(r, "disabled"), want);
    /* with a suggestion showing, Tab accepts it */
    const char *prefix = str(r, "prefix");
    snprintf(want, sizeof want, "%s%sz\nx%sy\nThey", PARK, tab, tab);
    assert_string_equal(prefix, want);
    char *cont = greedy(prefix);
    assert_string_equal(str(r, "suggestion"), cont);
    char *buf = malloc(strlen(prefix) + strlen(cont) + 1);
    sprintf(buf, "%s%s", prefix, cont);
    assert_string_equal(str(r, "buffer"), buf);
    free(buf), free(cont);
    assert_int_equal(json_array_size(json_object_get(r, "messages")), 0);
    json_decref(r);
}

static void test_tab_literal(void **state)
{
    (void)state;
    REQUIRE_VIM();
    check_tab("tab", "\t");
}

static void test_tab_previous_mapping(void **state)
{
    (void)state;
    REQUIRE_VIM();
    check_tab("tabmap", "[tab]");
}

static void test_disabled(void **state)
{
    (void)state;
    REQUIRE_VIM();
    long long before = daemon_requests();
    json_t *r = run_vim("disabled", NULL);
    long long after = daemon_requests();
    assert_int_equal(num(r, "ft_requests"), 0);
    assert_int_equal(num(r, "ft_props"), 0);
    assert_int_equal(num(r, "toggled_requests"), 0);
    assert_int_equal(num(r, "toggled_props"), 0);
    assert_true(num(r, "on_requests") >= 1);
    assert_true(num(r, "on_props") >= 1);
    /* the daemon saw exactly the requests made once suggestions were on */
    assert_int_equal(after - before, num(r, "on_requests"));
    json_decref(r);
}

static int all_blank(json_t *lines, size_t from)
{
    for (size_t i = from; i < json_array_size(lines); i++)
        if (strspn(json_string_value(json_array_get(lines, i)), " \t") !=
            strlen(json_string_value(json_array_get(lines, i))))
            return 0;
    return 1;
}

static void test_chat(void **state)
{
    (void)state;
    REQUIRE_VIM();
    json_t *r = run_vim("chat", NULL);
    assert_int_equal(num(r, "windows"), 2);
    assert_true(truthy(json_object_get(r, "back_in_source")));
    assert_string_equal(str(r, "chat_buftype"), "nofile");
    assert_true(truthy(json_object_get(r, "done")));
    json_t *chat = json_object_get(r, "chat");
    /* "> hello", a blank line, then the answer */
    assert_true(json_array_size(chat) >= 3);
    assert_string_equal(json_string_value(json_array_get(chat, 0)), "> hello");
    assert_false(all_blank(chat, 2));
    /* the follow-up: same window, appended */
    assert_true(truthy(json_object_get(r, "done2")));
    assert_int_equal(num(r, "windows2"), 2);
    json_t *chat2 = json_object_get(r, "chat2");
    assert_true(json_array_size(chat2) > json_array_size(chat) + 2);
    int found = 0;
    for (size_t i = json_array_size(chat); i < json_array_size(chat2); i++)
        found |= !strcmp(json_string_value(json_array_get(chat2, i)), "> again");
    assert_true(found);
    /* Nib! starts afresh; NibStop ends it at once */
    json_t *chat3 = json_object_get(r, "chat3");
    assert_string_equal(json_string_value(json_array_get(chat3, 0)), "> third");
    assert_true(ends_with(json_string_value(json_array_get(chat3, json_array_size(chat3) - 1)),
                          "[stopped]"));
    assert_int_equal(json_array_size(json_object_get(r, "messages")), 0);
    json_decref(r);
}

static void test_autostart(void **state)
{
    (void)state;
    REQUIRE_VIM();
    char sock[96], var[128];
    snprintf(sock, sizeof sock, "%s/auto/nibd.sock", T.dir);
    snprintf(var, sizeof var, "NIBBLE_VIM_SOCK=%s", sock);
    const char *env[] = {var, NULL};
    json_t *r = run_vim("autostart", env);
    assert_int_equal(num(r, "starts"), 1);
    char *want = greedy(str(r, "prefix"));
    assert_string_equal(str(r, "suggestion"), want);
    free(want);
    assert_int_equal(json_array_size(json_object_get(r, "messages")), 0);
    json_decref(r);
    /* and it outlives Vim, serving the next client */
    json_t *st = ask(sock, "{\"op\":\"status\"}");
    assert_non_null(st);
    json_decref(st);
    stop_started_daemon(sock);
    assert_int_not_equal(access(sock, F_OK), 0);
}

static void test_errors(void **state)
{
    (void)state;
    REQUIRE_VIM();
    char var[128];
    snprintf(var, sizeof var, "NIBBLE_VIM_SOCK=%s/none/nibd.sock", T.dir);
    const char *env[] = {var, NULL};
    json_t *r = run_vim("errors", env);
    json_t *m = json_object_get(r, "no_model");
    assert_int_equal(json_array_size(m), 1);
    assert_non_null(strstr(json_string_value(json_array_get(m, 0)), "no model is configured"));
    m = json_object_get(r, "no_nibd");
    assert_int_equal(json_array_size(m), 2); /* said once for two keystrokes */
    assert_non_null(strstr(json_string_value(json_array_get(m, 1)), "cannot find nibd"));
    m = json_object_get(r, "bad_model");
    assert_int_equal(json_array_size(m), 3);
    const char *said = json_string_value(json_array_get(m, 2));
    assert_non_null(strstr(said, "could not start nibd"));
    assert_non_null(strstr(said, "/nonexistent/model.gguf"));
    json_decref(r);
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_suggest),
        cmocka_unit_test(test_suggest_client_fallback),
        cmocka_unit_test(test_tab_literal),
        cmocka_unit_test(test_tab_previous_mapping),
        cmocka_unit_test(test_disabled),
        cmocka_unit_test(test_chat),
        cmocka_unit_test(test_autostart),
        cmocka_unit_test(test_errors),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
