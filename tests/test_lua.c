/*
 * test_lua.c - the Lua module nibble.core, from Lua 5.4 and (when a
 * luajit binary is installed) LuaJIT, the Lua of Neovim.  Scripts under
 * tests/lua/ run with LUA_CPATH at the built module; the C side compares
 * what they print with the nibble command's own output (tokenize, eval
 * --greedy) and with a private nibd's.  The scripts check the rest of the
 * contract themselves and exit non-zero, with the reason, when it breaks.
 *
 * Make passes the modules in NIBBLE_LUA54_MODULE and NIBBLE_LUAJIT_MODULE
 * (empty when not built) and, under SANITIZE, the sanitizer runtimes to
 * preload into the uninstrumented interpreters in NIBBLE_LUA_PRELOAD.
 */
#include "testutil.h"

#include <errno.h>
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

typedef struct interp {
    const char *name;
    char bin[4096];
    char cpath[4096]; /* LUA_CPATH: the directory above nibble/core.so */
} interp;

static interp interps[2];
static int n_interps;
static char src[4096];
static char config_dir[64];

/* ------------------------------------------------------------------ set-up */

/* The module for an interpreter: $var, else the default place. */
static int module_cpath(const char *var, const char *fallback, char *cpath, size_t cap)
{
    const char *mod = getenv(var);
    char buf[4096];
    if (!mod) {
        snprintf(buf, sizeof buf, "%s", fallback);
        mod = buf;
    }
    if (!*mod || access(mod, R_OK) != 0)
        return 0;
    const char *tail = "/nibble/core.so";
    size_t n = strlen(mod), tn = strlen(tail);
    if (n < tn || strcmp(mod + n - tn, tail))
        return 0;
    snprintf(cpath, cap, "%.*s/?.so", (int)(n - tn), mod);
    return 1;
}

static void find_interpreters(void)
{
    const char *s = getenv("NIBBLE_SRC");
    snprintf(src, sizeof src, "%s", s && *s ? s : ".");
    char fallback[4200];
    const char *bin = getenv("NIBBLE_BIN");
    /* build/bin -> build/lua5.4/nibble/core.so */
    snprintf(fallback, sizeof fallback, "%s/../lua5.4/nibble/core.so",
             bin && *bin ? bin : "build/bin");
    interp *in = &interps[n_interps];
    in->name = "lua5.4";
    if (!nbt_find_program("lua5.4", in->bin, sizeof in->bin))
        printf("note: no lua5.4 interpreter (apt-get install lua5.4): Lua 5.4 not tested\n");
    else if (!module_cpath("NIBBLE_LUA54_MODULE", fallback, in->cpath, sizeof in->cpath))
        printf("note: the Lua 5.4 module is not built: Lua 5.4 not tested\n");
    else
        n_interps++;
    snprintf(fallback, sizeof fallback, "%s/lua/nibble/core.so", src);
    in = &interps[n_interps];
    in->name = "luajit";
    if (!nbt_find_program("luajit", in->bin, sizeof in->bin))
        printf("note: no luajit interpreter (apt-get install luajit): LuaJIT not tested\n");
    else if (!module_cpath("NIBBLE_LUAJIT_MODULE", fallback, in->cpath, sizeof in->cpath))
        printf("note: the LuaJIT module is not built: LuaJIT not tested\n");
    else
        n_interps++;
    fflush(stdout);
}

#define REQUIRE_LUA()                                                        \
    do {                                                                     \
        if (!n_interps) {                                                    \
            printf("skipped: no Lua interpreter with a built module\n");     \
            skip();                                                          \
        }                                                                    \
    } while (0)

/* ------------------------------------------------------------------ running */

static void set_or_unset(const char *var, const char *value)
{
    if (value)
        setenv(var, value, 1);
    else
        unsetenv(var);
}

/* Run a script of tests/lua (or "-e CODE") under in; returns the exit
 * status with stdout and stderr in *out and *err. */
static int run_lua(const interp *in, const char *const *args, char **out, char **err)
{
    char lpath[4200], script[4200];
    snprintf(lpath, sizeof lpath, "%s/tests/lua/?.lua", src);
    const char *vars[] = {"LUA_CPATH", "LUA_CPATH_5_4", "LUA_PATH", "LUA_PATH_5_4", "LUA_INIT",
                          "LUA_INIT_5_4", "LD_PRELOAD"};
    char *saved[7];
    for (int i = 0; i < 7; i++) {
        const char *v = getenv(vars[i]);
        saved[i] = v ? strdup(v) : NULL;
    }
    setenv("LUA_CPATH", in->cpath, 1);
    setenv("LUA_CPATH_5_4", in->cpath, 1);
    setenv("LUA_PATH", lpath, 1);
    setenv("LUA_PATH_5_4", lpath, 1);
    unsetenv("LUA_INIT");
    unsetenv("LUA_INIT_5_4");
    const char *preload = getenv("NIBBLE_LUA_PRELOAD");
    if (preload && *preload)
        setenv("LD_PRELOAD", preload, 1);
    char *argv[32];
    int n = 0;
    argv[n++] = (char *)in->bin;
    for (int i = 0; args[i] && n < 31; i++) {
        if (i == 0 && strcmp(args[0], "-e")) {
            snprintf(script, sizeof script, "%s/tests/lua/%s", src, args[0]);
            argv[n++] = script;
        } else {
            argv[n++] = (char *)args[i];
        }
    }
    argv[n] = NULL;
    int rc = nbt_run(argv, out, err, 120);
    for (int i = 0; i < 7; i++) {
        set_or_unset(vars[i], saved[i]);
        free(saved[i]);
    }
    return rc;
}

/* Run and require exit status 0 and the script's closing line. */
static char *run_ok(const interp *in, const char *const *args, const char *last_line)
{
    char *out, *err;
    int rc = run_lua(in, args, &out, &err);
    if (rc != 0 || (last_line && !strstr(out, last_line))) {
        fprintf(stderr, "%s %s exited %d\n--- stdout\n%s\n--- stderr\n%s\n", in->name, args[0], rc,
                out, err);
        fail_msg("%s %s failed", in->name, args[0]);
    }
    free(err);
    return out;
}

/* The k-th (from 0) value a script printed under label ("label LEN\n"
 * then LEN bytes and a newline), malloc'd; NULL when absent. */
static char *frame(const char *out, const char *label, int k)
{
    const char *p = out;
    size_t ll = strlen(label);
    while (*p) {
        const char *sp = strchr(p, ' '), *nl = strchr(p, '\n');
        if (!nl)
            break;
        if (sp && sp < nl) {
            char *end;
            unsigned long n = strtoul(sp + 1, &end, 10);
            if (end == nl && end > sp + 1 && strlen(nl + 1) >= n) {
                if ((size_t)(sp - p) == ll && !memcmp(p, label, ll) && k-- == 0)
                    return strndup(nl + 1, n);
                p = nl + 1 + n;
                if (*p == '\n')
                    p++;
                continue;
            }
        }
        p = nl + 1;
    }
    return NULL;
}

static void assert_frame(const char *out, const char *label, int k, const char *want,
                         const char *who)
{
    char *got = frame(out, label, k);
    if (!got)
        fail_msg("%s printed no '%s' value", who, label);
    if (strcmp(got, want))
        fail_msg("%s '%s' #%d:\n  got  \"%s\"\n  want \"%s\"", who, label, k, got, want);
    free(got);
}

/* ------------------------------------------------------------------ the nibble command */

static char *model(const char *name)
{
    char rel[256];
    snprintf(rel, sizeof rel, "models/%s", name);
    return nbt_data_path(rel);
}

static char *run_nibble(char **argv)
{
    char bin[4096];
    snprintf(bin, sizeof bin, "%s", nbt_bin("nibble"));
    argv[0] = bin;
    char *out, *err;
    int rc = nbt_run(argv, &out, &err, 60);
    if (rc != 0)
        fail_msg("nibble %s: exit %d: %s", argv[1], rc, err);
    free(err);
    return out;
}

/* `nibble tokenize [flag] TEXT`'s ids, without the newline. */
static char *cli_tokens(const char *m, const char *text, const char *flag)
{
    char *argv[8];
    int n = 0;
    argv[n++] = NULL;
    argv[n++] = "tokenize";
    argv[n++] = "-m";
    argv[n++] = (char *)m;
    if (flag)
        argv[n++] = (char *)flag;
    argv[n++] = (char *)text;
    argv[n] = NULL;
    char *out = run_nibble(argv);
    size_t len = strlen(out);
    while (len && out[len - 1] == '\n')
        out[--len] = 0;
    return out;
}

/* ------------------------------------------------------------------ a private nibd */

typedef struct daemon_t {
    pid_t pid;
    char dir[40];
    char sock[64];
} daemon_t;

static void start(daemon_t *d, const char *model_path)
{
    snprintf(d->dir, sizeof d->dir, "/tmp/nibd-lua-XXXXXX");
    assert_non_null(mkdtemp(d->dir));
    snprintf(d->sock, sizeof d->sock, "%s/nibd.sock", d->dir);
    char bin[4096];
    snprintf(bin, sizeof bin, "%s", nbt_bin("nibd"));
    /* a context far longer than the tests run: long requests end only
     * when cancelled */
    const char *argv[] = {bin,  "-m",       model_path, "--socket", d->sock, "--config",
                          "/dev/null", "-t", "2", "-c", "100000", NULL};
    d->pid = fork();
    if (d->pid == 0) {
        int null = open("/dev/null", O_RDWR);
        dup2(null, 0);
        if (!getenv("NIBBLE_TEST_VERBOSE")) {
            dup2(null, 1);
            dup2(null, 2);
        }
        execv(argv[0], (char *const *)argv);
        _exit(127);
    }
    double deadline = nbt_now_ms() + 10000;
    nb_client *c;
    while (!(c = nbt_connect(d->sock))) {
        int status;
        if (waitpid(d->pid, &status, WNOHANG) == d->pid)
            fail_msg("nibd exited at start-up (status %d)", status);
        if (nbt_now_ms() > deadline)
            fail_msg("nibd did not start");
        usleep(10000);
    }
    nb_client_close(c);
}

/* Stop the daemon; returns its wait status. */
static int stop(daemon_t *d)
{
    int status = -1;
    if (d->pid > 0) {
        kill(d->pid, SIGTERM);
        waitpid(d->pid, &status, 0);
        d->pid = 0;
    }
    unlink(d->sock);
    rmdir(d->dir);
    return status;
}

/* ------------------------------------------------------------------ tests */

static void test_module(void **state)
{
    (void)state;
    REQUIRE_LUA();
    char dead[128];
    snprintf(dead, sizeof dead, "%s/none.sock", config_dir);
    char code[2048];
    snprintf(code, sizeof code,
             "local core = require('nibble.core')\n"
             "print(core.version)\n"
             "print(core.encode({1, 'é', {a = core.null}, core.array(), {}, 2.5, true, 2^53,"
             " -0.5}))\n"
             "print(core.encode(core.decode('{\"x\":[],\"y\":{}}').x))\n"
             "local v = core.decode('[1,{\"z\":null},\"a\\\\u0000b\",1e3]')\n"
             "print(v[1], v[2].z == core.null, #v[3], v[4])\n"
             "local c, msg, code = core.connect({socket = '%s', autostart = false})\n"
             "print(c, code, msg)\n"
             "print(select('#', core.connect({socket = '%s', autostart = false})))\n",
             dead, dead);
    for (int i = 0; i < n_interps; i++) {
        const char *args[] = {"-e", code, NULL};
        char *out = run_ok(&interps[i], args, NULL);
        char want[1024];
        snprintf(want, sizeof want,
                 "%s\n"
                 "[1,\"é\",{\"a\":null},[],{},2.5,true,9007199254740992,-0.5]\n"
                 "[]\n"
                 "1\ttrue\t3\t1000%s\n"
                 "nil\tio\tcannot connect to nibd at %s: No such file or directory\n"
                 "3\n",
                 NB_VERSION, strcmp(interps[i].name, "lua5.4") ? "" : ".0", dead);
        assert_string_equal(out, want);
        free(out);
    }
}

static void test_tokenize(void **state)
{
    (void)state;
    NBT_REQUIRE_DATA();
    REQUIRE_LUA();
    char *m = model("stories260K.gguf");
    const char *texts[] = {"Hello world",
                           "  two leading spaces and trailing  ",
                           "héllo wörld — ünïcode ✓",
                           "日本語のテキスト 🦙",
                           "tab\tand\nnewline",
                           "",
                           "</s> looks special",
                           NULL};
    const char *args[16] = {"tokenize.lua", m};
    int nt = 0;
    while (texts[nt]) {
        args[2 + nt] = texts[nt];
        nt++;
    }
    char *want[8][3];
    for (int k = 0; k < nt; k++) {
        want[k][0] = cli_tokens(m, texts[k], NULL);
        want[k][1] = cli_tokens(m, texts[k], "--no-bos");
        want[k][2] = cli_tokens(m, texts[k], "--special");
    }
    for (int i = 0; i < n_interps; i++) {
        char *out = run_ok(&interps[i], args, "tokenize ok");
        for (int k = 0; k < nt; k++) {
            assert_frame(out, "default", k, want[k][0], interps[i].name);
            assert_frame(out, "nobos", k, want[k][1], interps[i].name);
            assert_frame(out, "special", k, want[k][2], interps[i].name);
        }
        free(out);
    }
    /* the special form differs where it should, so the flag was passed */
    assert_string_not_equal(want[nt - 1][0], want[nt - 1][2]);
    for (int k = 0; k < nt; k++)
        for (int f = 0; f < 3; f++)
            free(want[k][f]);
    free(m);
}

static void test_generate(void **state)
{
    (void)state;
    NBT_REQUIRE_DATA();
    REQUIRE_LUA();
    struct {
        const char *model, *prompt;
        int n;
    } cases[] = {{"stories260K.gguf", "Once upon a time", 40},
                 {"stories260K.gguf", "Lily and Tom went to the park. They", 30},
                 {"stories260K-wide-q4_k_m.gguf", "The little dog was sad because", 30}};
    for (size_t c = 0; c < sizeof cases / sizeof *cases; c++) {
        char *m = model(cases[c].model);
        char *want = nbt_eval_text(m, cases[c].prompt, cases[c].n);
        char ns[16];
        snprintf(ns, sizeof ns, "%d", cases[c].n);
        const char *args[] = {"generate.lua", m, cases[c].prompt, ns, NULL};
        for (int i = 0; i < n_interps; i++) {
            char *out = run_ok(&interps[i], args, "generate ok");
            assert_frame(out, "wait", 0, want, interps[i].name);
            assert_frame(out, "stream", 0, want, interps[i].name);
            assert_frame(out, "tokens", 0, want, interps[i].name);
            assert_frame(out, "threads1", 0, want, interps[i].name);
            free(out);
        }
        free(want);
        free(m);
    }
}

/* The one-liner of the module's documentation. */
static void test_one_liner(void **state)
{
    (void)state;
    NBT_REQUIRE_DATA();
    REQUIRE_LUA();
    char *m = model("stories260K.gguf");
    char *want = nbt_eval_text(m, "Once upon a time", 20);
    char code[4608];
    for (int i = 0; i < n_interps; i++) {
        snprintf(code, sizeof code,
                 "print(require(\"nibble.core\").open(\"%s\"):generate(\"Once upon a time\", "
                 "{n_predict=20}))",
                 m);
        const char *args[] = {"-e", code, NULL};
        char *out = run_ok(&interps[i], args, NULL);
        assert_true(strlen(out) > 1);
        assert_int_equal(out[strlen(out) - 1], '\n');
        free(out);
        snprintf(code, sizeof code,
                 "print(require(\"nibble.core\").open(\"%s\"):generate(\"Once upon a time\", "
                 "{n_predict=20, temperature=0}))",
                 m);
        out = run_ok(&interps[i], args, NULL);
        assert_int_equal(strlen(out), strlen(want) + 1);
        assert_memory_equal(out, want, strlen(want));
        free(out);
    }
    free(want);
    free(m);
}

static void test_lifecycle(void **state)
{
    (void)state;
    NBT_REQUIRE_DATA();
    REQUIRE_LUA();
    char *m = model("stories260K.gguf");
    char *want = nbt_eval_text(m, "Once upon a time", 20);
    const char *args[] = {"lifecycle.lua", m, "Once upon a time", "20", NULL};
    for (int i = 0; i < n_interps; i++) {
        double t0 = nbt_now_ms();
        char *out = run_ok(&interps[i], args, "lifecycle ok");
        printf("    %s: lifecycle in %.0f ms\n", interps[i].name, nbt_now_ms() - t0);
        assert_frame(out, "orphan", 0, want, interps[i].name);
        free(out);
    }
    free(want);
    free(m);
}

static void test_errors(void **state)
{
    (void)state;
    NBT_REQUIRE_DATA();
    REQUIRE_LUA();
    char *m = model("stories260K.gguf");
    char *bad = nbt_write_temp("this is not a GGUF file\n", 24, ".gguf");
    assert_non_null(bad);
    const char *args[] = {"errors.lua", m, bad, NULL};
    for (int i = 0; i < n_interps; i++)
        free(run_ok(&interps[i], args, "errors ok"));
    unlink(bad);
    free(bad);
    free(m);
}

static void test_client(void **state)
{
    (void)state;
    NBT_REQUIRE_DATA();
    REQUIRE_LUA();
    char *m = model("stories260K.gguf");
    const char *pa = "Once upon a time", *pb = "The little dog was sad because";
    char *want_a = nbt_eval_text(m, pa, 30), *want_b = nbt_eval_text(m, pb, 30);
    char *want_tok = cli_tokens(m, pa, NULL);
    daemon_t d;
    start(&d, m);
    const char *args[] = {"client.lua", d.sock, pa, pb, "30", NULL};
    for (int i = 0; i < n_interps; i++) {
        double t0 = nbt_now_ms();
        char *out = run_ok(&interps[i], args, "client ok");
        printf("    %s: client in %.0f ms\n", interps[i].name, nbt_now_ms() - t0);
        assert_frame(out, "tokenize", 0, want_tok, interps[i].name);
        assert_frame(out, "stream", 0, want_a, interps[i].name);
        assert_frame(out, "call", 0, want_b, interps[i].name);
        assert_frame(out, "a", 0, want_a, interps[i].name);
        assert_frame(out, "b", 0, want_b, interps[i].name);
        assert_frame(out, "orphan", 0, want_a, interps[i].name);
        free(out);
    }
    /* the daemon served everyone and stops cleanly */
    int status = stop(&d);
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);
    free(want_a), free(want_b), free(want_tok);
    free(m);
}

static void test_hangup(void **state)
{
    (void)state;
    NBT_REQUIRE_DATA();
    REQUIRE_LUA();
    char *m = model("stories260K.gguf");
    for (int i = 0; i < n_interps; i++) {
        daemon_t d;
        start(&d, m);
        char pid[16];
        snprintf(pid, sizeof pid, "%d", (int)d.pid);
        const char *args[] = {"hangup.lua", d.sock, pid, NULL};
        free(run_ok(&interps[i], args, "hangup ok"));
        int status = stop(&d);
        assert_true(WIFSIGNALED(status));
        assert_int_equal(WTERMSIG(status), SIGKILL);
    }
    free(m);
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    /* no user configuration reaches the client */
    snprintf(config_dir, sizeof config_dir, "/tmp/nibble-lua-XXXXXX");
    if (!mkdtemp(config_dir))
        return 1;
    setenv("XDG_CONFIG_HOME", config_dir, 1);
    find_interpreters();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_module),    cmocka_unit_test(test_tokenize),
        cmocka_unit_test(test_generate),  cmocka_unit_test(test_one_liner),
        cmocka_unit_test(test_lifecycle), cmocka_unit_test(test_errors),
        cmocka_unit_test(test_client),    cmocka_unit_test(test_hangup),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    rmdir(config_dir);
    return rc;
}
