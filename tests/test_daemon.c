/*
 * test_daemon.c - nibd end to end: a real daemon on a private socket,
 * driven through the client library.  Covers agreement with nibble eval,
 * concurrency, prefix reuse, cancellation, bad input, start-up and
 * permissions, keep-alive, signals, and client auto-start.
 */
#include "testutil.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <pwd.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "nibble.h"

typedef nbt_daemon daemon_t;

static char *model(const char *name)
{
    char rel[256];
    snprintf(rel, sizeof rel, "models/%s", name);
    return nbt_data_path(rel);
}

#define start nbt_daemon_start
#define stop nbt_daemon_stop

static const char *str(json_t *o, const char *k)
{
    return json_string_value(json_object_get(o, k));
}

static long long num(json_t *o, const char *k)
{
    return json_integer_value(json_object_get(o, k));
}

/* ------------------------------------------------------------------ agreement */

static void test_agreement(void **state)
{
    (void)state;
    NBT_REQUIRE_DATA();
    const char *models[] = {"stories260K.gguf", "stories260K-wide-q4_k_m.gguf"};
    const char *prompts[] = {"Once upon a time", "The little dog was sad because",
                             "Lily and Tom went to the park. They"};
    for (int mi = 0; mi < 2; mi++) {
        char *m = model(models[mi]);
        daemon_t d;
        start(&d, m, NULL);
        nb_client *c = nbt_connect(d.sock);
        for (int pi = 0; pi < 3; pi++) {
            char *want = nbt_eval_text(m, prompts[pi], 40);
            nbt_send(c, "{\"op\":\"complete\",\"id\":%d,\"prompt\":\"%s\",\"n_predict\":40,"
                         "\"temperature\":0}", pi, prompts[pi]);
            char *got;
            json_t *fin = nbt_finish(c, &got);
            assert_int_equal(num(fin, "id"), pi);
            assert_string_equal(got, want);
            json_decref(fin);
            free(got);
            /* these models have no FIM tokens: with "fallback": "prefix" an
             * infill completes its prefix, and says so */
            nbt_send(c, "{\"op\":\"infill\",\"id\":%d,\"prefix\":\"%s\",\"suffix\":\"THE END\","
                         "\"fallback\":\"prefix\",\"n_predict\":40,\"temperature\":0}",
                      pi, prompts[pi]);
            fin = nbt_finish(c, &got);
            assert_string_equal(got, want);
            json_t *inf = json_object_get(fin, "infill");
            assert_true(json_is_false(json_object_get(inf, "fim")));
            assert_int_equal(num(inf, "suffix_tokens"), 0);
            assert_int_equal(num(inf, "prefix_dropped"), 0);
            json_decref(fin);
            free(got), free(want);
        }
        nb_client_close(c);
        assert_int_equal(stop(&d), 0);
        free(m);
    }
}

/* A model with FIM tokens (DeepSeek-Coder's, on the llama architecture
 * with a byte-level BPE vocabulary): the daemon's infill is the prompt
 * nb_infill_tokens builds, continued as nibble eval continues it. */
static void test_infill_fim(void **state)
{
    (void)state;
    NBT_REQUIRE_DATA();
    char *m = model("llama-bpe-random-f16.gguf");
    const char *prefix = "def add(a, b):\n    ", *suffix = "\n    return c\n";
    nb_model_params mp = nb_model_default_params();
    mp.vocab_only = 1;
    nb_model *vm;
    assert_int_equal(nb_model_open(m, &mp, &vm, NULL, 0), NB_OK);
    assert_true(nb_model_has_fim(vm));
    nb_token *ids;
    int64_t n;
    assert_int_equal(nb_infill_tokens(vm, prefix, suffix, NULL, 0, &ids, &n, NULL, 0), NB_OK);
    nb_model_close(vm);
    char list[4096];
    size_t len = 0;
    for (int64_t i = 0; i < n; i++)
        len += (size_t)snprintf(list + len, sizeof list - len, "%s%d", i ? "," : "", (int)ids[i]);
    free(ids);
    char *argv[] = {(char *)nbt_bin("nibble"), "eval", "-m", m, "--tokens", list,
                    "--greedy", "16", "--json", NULL};
    char bin[4096];
    snprintf(bin, sizeof bin, "%s", argv[0]);
    argv[0] = bin;
    char *out, *err;
    assert_int_equal(nbt_run(argv, &out, &err, 60), 0);
    json_t *j = json_loads(out, 0, NULL);
    assert_non_null(j);
    char *want = strdup(str(j, "text"));
    json_decref(j);
    free(out), free(err);

    daemon_t d;
    start(&d, m, NULL);
    nb_client *c = nbt_connect(d.sock);
    nbt_send(c, "{\"op\":\"infill\",\"id\":1,\"prefix\":\"def add(a, b):\\n    \","
                 "\"suffix\":\"\\n    return c\\n\",\"n_predict\":16,\"temperature\":0}");
    char *got;
    json_t *fin = nbt_finish(c, &got);
    json_t *inf = json_object_get(fin, "infill");
    assert_true(json_is_true(json_object_get(inf, "fim")));
    assert_string_equal(got, want);
    json_decref(fin);
    free(got), free(want);
    nb_client_close(c);
    assert_int_equal(stop(&d), 0);
    free(m);
}

/* ------------------------------------------------------------------ concurrency */

static void test_concurrency(void **state)
{
    (void)state;
    NBT_REQUIRE_DATA();
    char *m = model("stories260K-wide-q8_0.gguf");
    daemon_t d;
    start(&d, m, NULL);
    const char *req[2] = {
        "{\"op\":\"complete\",\"id\":\"a\",\"prompt\":\"Once upon a time\",\"n_predict\":60,"
        "\"seed\":11,\"temperature\":0.9}",
        "{\"op\":\"complete\",\"id\":\"b\",\"prompt\":\"The cat\",\"n_predict\":60,\"seed\":22,"
        "\"temperature\":0.9}"};
    char *alone[2];
    for (int i = 0; i < 2; i++) {
        nb_client *c = nbt_connect(d.sock);
        assert_int_equal(nb_client_send(c, req[i], strlen(req[i])), NB_OK);
        json_decref(nbt_finish(c, &alone[i]));
        nb_client_close(c);
    }
    /* both at once, on two connections, reading them interleaved */
    nb_client *c[2] = {nbt_connect(d.sock), nbt_connect(d.sock)};
    for (int i = 0; i < 2; i++)
        assert_int_equal(nb_client_send(c[i], req[i], strlen(req[i])), NB_OK);
    char *both[2] = {calloc(1, 1 << 16), calloc(1, 1 << 16)};
    int done[2] = {0, 0}, interleaved = 0, last = -1;
    while (!done[0] || !done[1]) {
        for (int i = 0; i < 2; i++) {
            if (done[i])
                continue;
            json_t *e = nbt_event(c[i], 10);
            if (!e)
                continue;
            if (json_is_true(json_object_get(e, "done"))) {
                assert_string_equal(str(e, "stop_reason"), "length");
                done[i] = 1;
            } else {
                strcat(both[i], str(e, "text"));
                interleaved += last >= 0 && last != i;
                last = i;
            }
            json_decref(e);
        }
    }
    for (int i = 0; i < 2; i++) {
        assert_string_equal(both[i], alone[i]);
        free(both[i]), free(alone[i]);
        nb_client_close(c[i]);
    }
    /* both made progress during the other's stream */
    assert_true(interleaved > 2);
    assert_int_equal(stop(&d), 0);
    free(m);
}

/* ------------------------------------------------------------------ reuse */

static void test_prefix_reuse(void **state)
{
    (void)state;
    NBT_REQUIRE_DATA();
    char *m = model("stories260K.gguf");
    daemon_t d;
    start(&d, m, NULL);
    nb_client *c = nbt_connect(d.sock);
    const char *first = "One day, a big bird flew over the house.";
    nbt_send(c, "{\"op\":\"tokenize\",\"text\":\"%s\"}", first);
    json_t *tok = nbt_event(c, 5000);
    long long n1 = (long long)json_array_size(json_object_get(tok, "tokens"));
    json_decref(tok);
    /* n_predict 0 evaluates the prompt only: the cache holds exactly it */
    nbt_send(c, "{\"op\":\"complete\",\"prompt\":\"%s\",\"n_predict\":0}", first);
    json_t *f1 = nbt_finish(c, NULL);
    assert_int_equal(num(f1, "n_generated"), 0);
    assert_int_equal(num(f1, "n_cached"), 0);
    assert_int_equal(num(f1, "n_evaluated"), n1);
    json_decref(f1);
    nbt_send(c, "{\"op\":\"complete\",\"prompt\":\"%s The bird was happy.\",\"n_predict\":3,"
                 "\"temperature\":0}", first);
    json_t *f2 = nbt_finish(c, NULL);
    assert_int_equal(num(f2, "n_cached"), n1);
    assert_int_equal(num(f2, "n_evaluated"), num(f2, "n_prompt") - n1);
    assert_true(num(f2, "n_evaluated") > 0);
    json_decref(f2);
    /* sessions keep their own slot; status shows what is cached */
    nbt_send(c, "{\"op\":\"complete\",\"prompt\":\"Tom\",\"n_predict\":2,\"session\":\"s1\"}");
    json_decref(nbt_finish(c, NULL));
    nbt_send(c, "{\"op\":\"status\",\"id\":9}");
    json_t *st = nbt_event(c, 5000);
    assert_int_equal(num(st, "id"), 9);
    assert_true(json_is_true(json_object_get(st, "loaded")));
    assert_int_equal(json_array_size(json_object_get(st, "slots")), 4);
    int found = 0;
    size_t i;
    json_t *s;
    json_array_foreach(json_object_get(st, "slots"), i, s)
    {
        if (!strcmp(str(s, "session"), "s1")) {
            found = 1;
            assert_true(num(s, "n_cached") >= 2);
        }
    }
    assert_true(found);
    assert_non_null(str(st, "simd"));
    assert_true(json_is_false(json_object_get(st, "fim"))); /* stories260K has none */
    assert_non_null(str(st, "chat_template"));
    json_decref(st);
    nb_client_close(c);
    assert_int_equal(stop(&d), 0);
    free(m);
}

/* ------------------------------------------------------------------ cancel */

static void test_cancel(void **state)
{
    (void)state;
    NBT_REQUIRE_DATA();
    char *m = model("llama-2-tiny-random.gguf");
    const char *extra[] = {"-c", "100000", NULL};
    daemon_t d;
    start(&d, m, extra);
    nb_client *c = nbt_connect(d.sock);
    nbt_send(c, "{\"op\":\"complete\",\"id\":5,\"prompt\":\"hello\",\"n_predict\":-1,"
                 "\"ignore_eos\":true}");
    /* wait until it streams */
    json_t *e = nbt_event(c, 10000);
    assert_non_null(e);
    json_decref(e);
    double t0 = nbt_now_ms();
    nbt_send(c, "{\"op\":\"cancel\",\"id\":6,\"target\":5}");
    int ok_seen = 0;
    json_t *fin = NULL;
    while (!fin) {
        e = nbt_event(c, 5000);
        assert_non_null(e);
        if (num(e, "id") == 6) {
            assert_true(json_is_true(json_object_get(e, "ok")));
            ok_seen = 1;
            json_decref(e);
        } else if (json_is_true(json_object_get(e, "done"))) {
            fin = e;
        } else {
            json_decref(e);
        }
    }
    double ms = nbt_now_ms() - t0;
    assert_string_equal(str(fin, "stop_reason"), "cancelled");
    printf("    cancelled %.1f ms after the request\n", ms);
    assert_true(ms < 100);
    json_decref(fin);
    if (!ok_seen) {
        e = nbt_event(c, 5000);
        assert_true(json_is_true(json_object_get(e, "ok")));
        json_decref(e);
    }
    /* cancelling what is not running says so */
    nbt_send(c, "{\"op\":\"cancel\",\"target\":5}");
    e = nbt_event(c, 5000);
    assert_true(json_is_false(json_object_get(e, "ok")));
    json_decref(e);
    /* status counts it */
    nbt_send(c, "{\"op\":\"status\"}");
    e = nbt_event(c, 5000);
    assert_int_equal(num(e, "cancelled"), 1);
    json_decref(e);
    nb_client_close(c);

    /* a client killed mid-stream: the daemon goes on serving others */
    pid_t kid = fork();
    if (kid == 0) {
        nb_client *k = nbt_connect(d.sock);
        const char *r = "{\"op\":\"complete\",\"prompt\":\"hello\",\"n_predict\":-1,\"ignore_eos\":true}\n";
        nb_client_send(k, r, strlen(r));
        char *line;
        nb_client_read(k, &line, NULL, 10000);
        pause();
        _exit(0);
    }
    usleep(200000);
    kill(kid, SIGKILL);
    waitpid(kid, NULL, 0);
    c = nbt_connect(d.sock);
    assert_non_null(c);
    nbt_send(c, "{\"op\":\"complete\",\"prompt\":\"hi\",\"n_predict\":5}");
    json_t *f = nbt_finish(c, NULL);
    assert_string_equal(str(f, "stop_reason"), "length");
    json_decref(f);
    /* and the killed client's slot was freed */
    nbt_send(c, "{\"op\":\"status\"}");
    e = nbt_event(c, 5000);
    size_t i;
    json_t *s;
    json_array_foreach(json_object_get(e, "slots"), i, s) assert_false(json_is_true(json_object_get(s, "busy")));
    json_decref(e);
    nb_client_close(c);
    assert_int_equal(stop(&d), 0);
    free(m);
}

/* ------------------------------------------------------------------ bad input */

static void expect_error(nb_client *c, const char *code)
{
    json_t *e = nbt_event(c, 5000);
    if (!e)
        fail_msg("no reply (expected %s)", code);
    assert_string_equal(str(e, "stop_reason"), "error");
    if (strcmp(str(e, "error"), code))
        fail_msg("error %s (%s), expected %s", str(e, "error"), str(e, "message"), code);
    assert_true(strlen(str(e, "message")) > 0);
    json_decref(e);
}

static void test_bad_input(void **state)
{
    (void)state;
    NBT_REQUIRE_DATA();
    char *m = model("stories260K.gguf");
    const char *extra[] = {"-c", "32", NULL};
    daemon_t d;
    start(&d, m, extra);
    nb_client *c = nbt_connect(d.sock);
    const char *bad[][2] = {
        {"this is not json", "invalid_json"},
        {"[1,2,3]", "invalid_json"},
        {"{\"op\":\"frobnicate\"}", "unknown_op"},
        {"{\"prompt\":\"x\"}", "unknown_op"},
        {"{\"op\":\"complete\",\"prompt\":42}", "invalid_request"},
        {"{\"op\":\"complete\",\"prompt\":\"x\",\"temperature\":\"hot\"}", "invalid_request"},
        {"{\"op\":\"complete\",\"prompt\":\"x\",\"n_predict\":-5}", "invalid_request"},
        {"{\"op\":\"complete\",\"prompt\":\"x\",\"n_predict\":99999999999}", "invalid_request"},
        {"{\"op\":\"complete\",\"prompt\":\"x\",\"stop\":[1]}", "invalid_request"},
        {"{\"op\":\"complete\",\"tokens\":[1,999999]}", "invalid_request"},
        {"{\"op\":\"complete\",\"tokens\":[1,-2]}", "invalid_request"},
        {"{\"op\":\"complete\",\"prompt\":\"one two three four five six seven eight nine ten "
         "eleven twelve thirteen fourteen fifteen sixteen seventeen\"}", "context_full"},
        {"{\"op\":\"infill\",\"prefix\":\"a\",\"suffix\":\"b\"}", "unsupported"},
        {"{\"op\":\"infill\",\"prefix\":\"a\",\"fallback\":\"middle\"}", "invalid_request"},
        {"{\"op\":\"infill\",\"prefix\":\"a\",\"n_prefix\":-1}", "invalid_request"},
        {"{\"op\":\"chat\",\"messages\":[{\"role\":\"robot\",\"content\":\"x\"}]}",
         "invalid_request"},
        {"{\"op\":\"chat\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],"
         "\"template\":\"jinja\"}", "invalid_request"},
        {"{\"op\":\"cancel\"}", "invalid_request"},
        {"{\"op\":\"status\",\"id\":[1]}", "invalid_request"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        assert_int_equal(nb_client_send(c, bad[i][0], strlen(bad[i][0])), NB_OK);
        expect_error(c, bad[i][1]);
    }
    /* the connection still works */
    nbt_send(c, "{\"op\":\"complete\",\"prompt\":\"x\",\"n_predict\":2}");
    json_decref(nbt_finish(c, NULL));
    nb_client_close(c);

    /* a 100 MB line hits the frame cap: an error, then the connection closes */
    c = nbt_connect(d.sock);
    size_t big = 100u << 20;
    char *huge = malloc(big);
    memset(huge, 'x', big);
    huge[0] = '"';
    nb_client_send(c, huge, big); /* may fail half-way once the daemon closes */
    free(huge);
    expect_error(c, "frame_too_large");
    char *line;
    assert_int_equal(nb_client_read(c, &line, NULL, 5000), NB_ERR_IO);
    nb_client_close(c);

    /* the daemon is still up for the next client */
    c = nbt_connect(d.sock);
    nbt_send(c, "{\"op\":\"complete\",\"prompt\":\"x\",\"n_predict\":2}");
    json_t *f = nbt_finish(c, NULL);
    assert_string_equal(str(f, "stop_reason"), "length");
    json_decref(f);
    nb_client_close(c);
    assert_int_equal(stop(&d), 0);
    free(m);
}

/* ------------------------------------------------------------------ start-up */

static void test_startup_and_permissions(void **state)
{
    (void)state;
    NBT_REQUIRE_DATA();
    char *m = model("stories260K.gguf");
    daemon_t d;
    start(&d, m, NULL);
    struct stat st;
    assert_int_equal(stat(d.sock, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);
    char run[160];
    snprintf(run, sizeof run, "%s/run", d.dir);
    assert_int_equal(stat(run, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0700);

    /* a second daemon on the same socket refuses, saying why */
    char *argv[] = {(char *)nbt_bin("nibd"), "-m", m, "--socket", d.sock, "--config", "/dev/null", NULL};
    char bin[4096];
    snprintf(bin, sizeof bin, "%s", argv[0]);
    argv[0] = bin;
    char *out, *err;
    assert_int_equal(nbt_run(argv, &out, &err, 20), 1);
    assert_non_null(strstr(err, "already"));
    free(out), free(err);
    /* and the first still answers */
    nb_client *c = nbt_connect(d.sock);
    assert_non_null(c);
    nb_client_close(c);

    /* another user is refused even when the file system would let it in */
    if (getuid() == 0) {
        struct passwd *pw = getpwnam("nobody");
        assert_non_null(pw);
        chmod(d.dir, 0755);
        chmod(run, 0755);
        chmod(d.sock, 0666);
        pid_t kid = fork();
        if (kid == 0) {
            if (setgid(pw->pw_gid) || setuid(pw->pw_uid))
                _exit(3);
            int fd = socket(AF_UNIX, SOCK_STREAM, 0);
            struct sockaddr_un sa = {.sun_family = AF_UNIX};
            snprintf(sa.sun_path, sizeof sa.sun_path, "%s", d.sock);
            if (connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0)
                _exit(4); /* the test wants the daemon's check, not the file's */
            const char *r = "{\"op\":\"status\"}\n";
            if (write(fd, r, strlen(r)) < 0)
                (void)0;
            char buf[64];
            ssize_t n = read(fd, buf, sizeof buf);
            _exit(n <= 0 ? 0 : 5); /* closed (or reset) without a reply */
        }
        int status;
        waitpid(kid, &status, 0);
        assert_true(WIFEXITED(status));
        assert_int_equal(WEXITSTATUS(status), 0);
        chmod(d.sock, 0600);
        chmod(run, 0700);
        /* the daemon refused that one and serves us still */
        c = nbt_connect(d.sock);
        nbt_send(c, "{\"op\":\"status\"}");
        json_t *st2 = nbt_event(c, 5000);
        assert_non_null(st2);
        json_decref(st2);
        nb_client_close(c);
    } else {
        printf("    skipped the other-user check: it needs root to become nobody\n");
    }

    /* SIGTERM: exit 0 and no socket left */
    int status = stop(&d);
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);
    assert_int_equal(access(d.sock, F_OK), -1);

    /* a model that cannot load stops start-up with a message */
    assert_int_equal(mkdir(d.dir, 0700), 0);
    char *argv2[] = {bin, "-m", "/nonexistent.gguf", "--socket", d.sock, "--config", "/dev/null", NULL};
    assert_int_equal(nbt_run(argv2, &out, &err, 20), 1);
    assert_non_null(strstr(err, "/nonexistent.gguf"));
    free(out), free(err);
    assert_int_equal(access(d.sock, F_OK), -1); /* nothing left behind */
    rmdir(run);
    rmdir(d.dir);
    char *argv3[] = {bin, "--slots", "0", NULL};
    assert_int_equal(nbt_run(argv3, &out, &err, 20), 2);
    free(out), free(err);

    /* a directory the user names is used as it is: its mode stays ... */
    char mine[] = "/tmp/nibd-own-XXXXXX", sock2[64];
    assert_non_null(mkdtemp(mine));
    assert_int_equal(chmod(mine, 01777), 0); /* like /tmp */
    snprintf(sock2, sizeof sock2, "%s/s.sock", mine);
    pid_t kid2 = fork();
    if (kid2 == 0) {
        int null = open("/dev/null", O_RDWR);
        dup2(null, 1), dup2(null, 2);
        execl(bin, bin, "-m", m, "--socket", sock2, "--config", "/dev/null", (char *)NULL);
        _exit(127);
    }
    for (int i = 0; i < 500 && !(c = nbt_connect(sock2)); i++)
        usleep(10000);
    assert_non_null(c);
    nb_client_close(c);
    struct stat sst;
    assert_int_equal(stat(mine, &sst), 0);
    assert_int_equal(sst.st_mode & 07777, 01777);
    kill(kid2, SIGTERM);
    waitpid(kid2, NULL, 0);
    /* ... but one anybody may replace files in is refused */
    assert_int_equal(chmod(mine, 0777), 0);
    char *argv4[] = {bin, "-m", m, "--socket", sock2, "--config", "/dev/null", NULL};
    assert_int_equal(nbt_run(argv4, &out, &err, 20), 1);
    assert_non_null(strstr(err, "writable by others"));
    free(out), free(err);
    rmdir(mine);
    free(m);
}

/* ------------------------------------------------------------------ keep-alive */

static void test_keep_alive(void **state)
{
    (void)state;
    NBT_REQUIRE_DATA();
    char *m = model("stories260K.gguf");
    const char *extra[] = {"-k", "0.3", NULL};
    daemon_t d;
    start(&d, m, extra);
    nb_client *c = nbt_connect(d.sock);
    nbt_send(c, "{\"op\":\"complete\",\"prompt\":\"x\",\"n_predict\":2}");
    json_decref(nbt_finish(c, NULL));
    usleep(800000);
    nbt_send(c, "{\"op\":\"status\"}");
    json_t *st = nbt_event(c, 5000);
    assert_true(json_is_false(json_object_get(st, "loaded")));
    assert_int_equal(num(st, "loads"), 1);
    json_decref(st);
    /* the next request loads the weights again, transparently */
    nbt_send(c, "{\"op\":\"complete\",\"prompt\":\"x\",\"n_predict\":2}");
    json_t *f = nbt_finish(c, NULL);
    assert_string_equal(str(f, "stop_reason"), "length");
    json_decref(f);
    nbt_send(c, "{\"op\":\"status\"}");
    st = nbt_event(c, 5000);
    assert_true(json_is_true(json_object_get(st, "loaded")));
    assert_int_equal(num(st, "loads"), 2);
    json_decref(st);
    nb_client_close(c);
    assert_int_equal(stop(&d), 0);
    free(m);
}

/* ------------------------------------------------------------------ shutdown */

static void test_shutdown_cancels(void **state)
{
    (void)state;
    NBT_REQUIRE_DATA();
    char *m = model("llama-2-tiny-random.gguf");
    const char *extra[] = {"-c", "100000", NULL};
    daemon_t d;
    start(&d, m, extra);
    nb_client *c = nbt_connect(d.sock), *c2 = nbt_connect(d.sock);
    nbt_send(c, "{\"op\":\"complete\",\"id\":1,\"prompt\":\"hello\",\"n_predict\":-1,\"ignore_eos\":true}");
    json_decref(nbt_event(c, 10000));
    nbt_send(c2, "{\"op\":\"shutdown\"}");
    json_t *ok = nbt_event(c2, 5000);
    assert_true(json_is_true(json_object_get(ok, "ok")));
    json_decref(ok);
    json_t *f = nbt_finish(c, NULL);
    assert_string_equal(str(f, "stop_reason"), "cancelled");
    json_decref(f);
    int status;
    waitpid(d.pid, &status, 0);
    d.pid = 0;
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);
    assert_int_equal(access(d.sock, F_OK), -1);
    nb_client_close(c);
    nb_client_close(c2);
    stop(&d);
    free(m);
}

/* ------------------------------------------------------------------ client */

static void test_autostart(void **state)
{
    (void)state;
    NBT_REQUIRE_DATA();
    char *m = model("stories260K.gguf");
    char dir[] = "/tmp/nibd-auto-XXXXXX";
    assert_non_null(mkdtemp(dir));
    char sock[128];
    snprintf(sock, sizeof sock, "%s/nibd.sock", dir);
    char bin[4096];
    snprintf(bin, sizeof bin, "%s", nbt_bin("nibd"));
    const char *args[] = {"--config", "/dev/null", NULL};
    nb_client_params p = nb_client_default_params();
    p.socket = sock;
    p.model = m;
    p.nibd = bin;
    p.nibd_args = args;
    nb_client *c;
    char err[512];
    if (nb_client_connect(&p, &c, err, sizeof err))
        fail_msg("%s", err);
    nbt_send(c, "{\"op\":\"complete\",\"prompt\":\"Once upon a time\",\"n_predict\":8,\"temperature\":0}");
    char *text;
    json_decref(nbt_finish(c, &text));
    assert_true(strlen(text) > 0);
    free(text);
    nbt_send(c, "{\"op\":\"shutdown\"}");
    json_decref(nbt_event(c, 5000));
    nb_client_close(c);
    /* wait for it to go (generously: a loaded machine is slow to stop a
     * daemon), then: no model, no daemon, a clear error */
    for (int i = 0; i < 3000 && access(sock, F_OK) == 0; i++)
        usleep(10000);
    assert_int_not_equal(access(sock, F_OK), 0);
    p.model = NULL;
    char *saved = getenv("NIBBLE_MODEL") ? strdup(getenv("NIBBLE_MODEL")) : NULL;
    unsetenv("NIBBLE_MODEL");
    setenv("XDG_CONFIG_HOME", dir, 1); /* no config file there */
    assert_int_not_equal(nb_client_connect(&p, &c, err, sizeof err), NB_OK);
    assert_non_null(strstr(err, "model"));
    if (saved) {
        setenv("NIBBLE_MODEL", saved, 1);
        free(saved);
    }
    /* a daemon that cannot start: its reason reaches the caller */
    p.model = "/nonexistent/m.gguf";
    assert_int_not_equal(nb_client_connect(&p, &c, err, sizeof err), NB_OK);
    assert_non_null(strstr(err, "/nonexistent/m.gguf"));
    rmdir(dir);
    free(m);
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_agreement),
        cmocka_unit_test(test_infill_fim),
        cmocka_unit_test(test_concurrency),
        cmocka_unit_test(test_prefix_reuse),
        cmocka_unit_test(test_cancel),
        cmocka_unit_test(test_bad_input),
        cmocka_unit_test(test_startup_and_permissions),
        cmocka_unit_test(test_keep_alive),
        cmocka_unit_test(test_shutdown_cancels),
        cmocka_unit_test(test_autostart),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
