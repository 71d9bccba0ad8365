/*
 * test_limits.c - every limit nibd puts on what a client controls
 * (doc/protocol.md, "Limits"): just under each one is served, just over it
 * gets the documented error, and the daemon goes on serving.  The limit on
 * unread output is tested with a slow reader in test_faults.c.
 *
 * The model is generated here (nibble synth).
 */
#include "testutil.h"

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

#include "nibble.h"

#define MAX_FRAME (8u << 20)
#define MAX_ID 256
#define MAX_STOPS 16
#define MAX_STOP_LEN 256
#define MAX_PREDICT (1 << 20)
#define MAX_TOKENIZE (1 << 20)
#define MAX_JOBS_PER_CONN 64
#define MAX_QUEUE 256
#define MAX_CONNS 256

static char dir[] = "/tmp/nibble-limits-XXXXXX";
static char model[128];

static int setup(void **state)
{
    (void)state;
    if (!mkdtemp(dir))
        return -1;
    snprintf(model, sizeof model, "%s/tiny.gguf", dir);
    char bin[4096];
    snprintf(bin, sizeof bin, "%s", nbt_bin("nibble"));
    char *argv[] = {bin, "synth", "-o", model, NULL};
    char *o, *e;
    int rc = nbt_run(argv, &o, &e, 60);
    free(o), free(e);
    return rc == 0 ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    unlink(model);
    return rmdir(dir);
}

/* The daemon of the running test: a failing test leaves none behind. */
static int live_pid;

static void daemon_start(nbt_daemon *d, const char *const *extra)
{
    nbt_daemon_start(d, model, extra);
    live_pid = d->pid;
}

static int daemon_stop(nbt_daemon *d)
{
    live_pid = 0;
    return nbt_daemon_stop(d);
}

static int cleanup(void **state)
{
    (void)state;
    if (live_pid > 0) {
        kill(live_pid, SIGKILL);
        waitpid(live_pid, NULL, 0);
        live_pid = 0;
    }
    return 0;
}

static const char *str(json_t *o, const char *k)
{
    return json_string_value(json_object_get(o, k));
}

/* Send a request and check the error it gets: its code, and a message
 * containing `says`. */
static void expect_error(nb_client *c, const char *req, const char *code, const char *says)
{
    assert_int_equal(nb_client_send(c, req, strlen(req)), NB_OK);
    json_t *e = nbt_event(c, 10000);
    if (!e)
        fail_msg("no answer to %.200s", req);
    if (!str(e, "error") || strcmp(str(e, "error"), code))
        fail_msg("%.200s: got %s (%s), expected %s", req, str(e, "error") ? str(e, "error") : "no error",
                 str(e, "message") ? str(e, "message") : "", code);
    assert_string_equal(str(e, "stop_reason"), "error");
    if (says && !strstr(str(e, "message"), says))
        fail_msg("%.200s: the message '%s' does not say '%s'", req, str(e, "message"), says);
    json_decref(e);
}

/* Send a request and read to its final event, which must not be an error. */
static json_t *expect_ok(nb_client *c, const char *req)
{
    assert_int_equal(nb_client_send(c, req, strlen(req)), NB_OK);
    for (;;) {
        json_t *e = nbt_event(c, 30000);
        if (!e)
            fail_msg("no answer to %.200s", req);
        if (json_is_true(json_object_get(e, "done")) || json_object_get(e, "tokens") ||
            json_object_get(e, "slots")) {
            if (str(e, "error"))
                fail_msg("%.200s: %s: %s", req, str(e, "error"), str(e, "message"));
            return e;
        }
        json_decref(e);
    }
}

static char *repeat(char ch, size_t n)
{
    char *s = malloc(n + 1);
    memset(s, ch, n);
    s[n] = 0;
    return s;
}

/* ------------------------------------------------------------------ frame */

static void test_frame_size(void **state)
{
    (void)state;
    nbt_daemon d;
    daemon_start(&d, NULL);
    /* a status request padded (unknown keys are ignored) to exactly the
     * limit is served ... */
    const char *head = "{\"op\":\"status\",\"pad\":\"", *tail = "\"}";
    size_t pad = MAX_FRAME - strlen(head) - strlen(tail);
    char *line = malloc(MAX_FRAME + 2);
    sprintf(line, "%s", head);
    memset(line + strlen(head), ' ', pad);
    memcpy(line + strlen(head) + pad, tail, strlen(tail) + 1);
    assert_int_equal(strlen(line), MAX_FRAME);
    nb_client *c = nbt_connect(d.sock);
    json_decref(expect_ok(c, line));
    /* ... and the connection still serves */
    json_decref(expect_ok(c, "{\"op\":\"status\"}"));
    nb_client_close(c);
    /* one byte more, sent whole, newline included: an error, then the
     * connection closes */
    memmove(line + strlen(head) + 1, line + strlen(head), pad + strlen(tail) + 1);
    line[strlen(head)] = ' ';
    assert_int_equal(strlen(line), MAX_FRAME + 1);
    c = nbt_connect(d.sock);
    expect_error(c, line, "frame_too_large", "8388608");
    char *rest;
    assert_int_equal(nb_client_read(c, &rest, NULL, 10000), NB_ERR_IO);
    nb_client_close(c);
    free(line);
    /* the daemon serves the next client */
    c = nbt_connect(d.sock);
    json_decref(expect_ok(c, "{\"op\":\"status\"}"));
    nb_client_close(c);
    assert_int_equal(daemon_stop(&d), 0);
}

/* ------------------------------------------------------------------ fields */

static void test_request_fields(void **state)
{
    (void)state;
    const char *extra[] = {"-c", "64", NULL};
    nbt_daemon d;
    daemon_start(&d, extra);
    nb_client *c = nbt_connect(d.sock);
    char req[16384];

    /* id: a string of at most 256 bytes */
    char *id = repeat('i', MAX_ID);
    snprintf(req, sizeof req, "{\"op\":\"status\",\"id\":\"%s\"}", id);
    json_t *e = expect_ok(c, req);
    assert_string_equal(str(e, "id"), id);
    json_decref(e);
    snprintf(req, sizeof req, "{\"op\":\"status\",\"id\":\"%sj\"}", id);
    expect_error(c, req, "invalid_request", "256");
    /* session: the same */
    snprintf(req, sizeof req, "{\"op\":\"complete\",\"prompt\":\"a\",\"n_predict\":1,\"session\":\"%s\"}", id);
    json_decref(expect_ok(c, req));
    snprintf(req, sizeof req, "{\"op\":\"complete\",\"prompt\":\"a\",\"n_predict\":1,\"session\":\"%sj\"}", id);
    expect_error(c, req, "invalid_request", "session");
    free(id);

    /* stop: at most 16 strings of 1 to 256 bytes */
    char *stop = repeat('s', MAX_STOP_LEN);
    size_t n = (size_t)snprintf(req, sizeof req, "{\"op\":\"complete\",\"prompt\":\"a\",\"n_predict\":1,\"stop\":[");
    for (int i = 0; i < MAX_STOPS; i++)
        n += (size_t)snprintf(req + n, sizeof req - n, "%s\"%s\"", i ? "," : "", stop);
    snprintf(req + n, sizeof req - n, "]}");
    json_decref(expect_ok(c, req));
    snprintf(req + n, sizeof req - n, ",\"x\"]}");
    expect_error(c, req, "invalid_request", "at most 16");
    snprintf(req, sizeof req, "{\"op\":\"complete\",\"prompt\":\"a\",\"stop\":[\"%ss\"]}", stop);
    expect_error(c, req, "invalid_request", "256");
    expect_error(c, "{\"op\":\"complete\",\"prompt\":\"a\",\"stop\":[\"\"]}", "invalid_request", "stop[0]");
    free(stop);

    /* lora: at most 16 adapters, names of at most 64 bytes, |scale| <= 100 */
    n = (size_t)snprintf(req, sizeof req, "{\"op\":\"complete\",\"prompt\":\"a\",\"lora\":[");
    for (int i = 0; i < 17; i++)
        n += (size_t)snprintf(req + n, sizeof req - n, "%s{\"name\":\"a%d\"}", i ? "," : "", i);
    snprintf(req + n, sizeof req - n, "]}");
    expect_error(c, req, "invalid_request", "at most 16");
    char *name = repeat('n', 65);
    snprintf(req, sizeof req, "{\"op\":\"complete\",\"prompt\":\"a\",\"lora\":[{\"name\":\"%s\"}]}", name);
    expect_error(c, req, "invalid_request", "64 bytes");
    expect_error(c, "{\"op\":\"complete\",\"prompt\":\"a\",\"lora\":[{\"name\":\"x\",\"scale\":101}]}",
                 "invalid_request", "scale");
    /* template: at most 64 bytes */
    snprintf(req, sizeof req, "{\"op\":\"chat\",\"template\":\"%s\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}",
             name);
    expect_error(c, req, "invalid_request", "template");
    free(name);
    /* cancel's target: like an id */
    id = repeat('t', MAX_ID + 1);
    snprintf(req, sizeof req, "{\"op\":\"cancel\",\"target\":\"%s\"}", id);
    expect_error(c, req, "invalid_request", "target");
    free(id);
    /* infill budgets: 0 to 1,048,576 */
    snprintf(req, sizeof req, "{\"op\":\"infill\",\"prefix\":\"a\",\"n_suffix\":%d}", MAX_PREDICT + 1);
    expect_error(c, req, "invalid_request", "n_suffix");

    /* tokenize: a reply of at most 1,048,576 tokens.  On random letters
     * this model's vocabulary gives at least a token per letter (checked
     * on the first text), so the second, 1,100,000 letters, is over. */
    for (int over = 0; over < 2; over++) {
        size_t tl = over ? 1100000 : 1000000;
        char *text = malloc(tl + 64);
        n = (size_t)sprintf(text, "{\"op\":\"tokenize\",\"add_bos\":false,\"text\":\"");
        uint64_t x = 7;
        for (size_t i = 0; i < tl; i++) {
            x = x * 6364136223846793005ull + 1442695040888963407ull;
            text[n + i] = "abcdefghijklmnopqrstuvwxyz0123456789"[(x >> 33) % 36];
        }
        strcpy(text + n + tl, "\"}");
        if (!over) {
            e = expect_ok(c, text);
            size_t got = json_array_size(json_object_get(e, "tokens"));
            printf("    %zu bytes of text: %zu tokens\n", tl, got);
            assert_true(got >= tl && got <= MAX_TOKENIZE);
            json_decref(e);
        } else {
            expect_error(c, text, "invalid_request", "at most 1048576");
        }
        free(text);
    }

    /* n_predict: -1 to 1,048,576 */
    snprintf(req, sizeof req, "{\"op\":\"complete\",\"prompt\":\"a\",\"n_predict\":%d}", MAX_PREDICT + 1);
    expect_error(c, req, "invalid_request", "n_predict");
    expect_error(c, "{\"op\":\"complete\",\"prompt\":\"a\",\"n_predict\":-2}", "invalid_request",
                 "n_predict");
    /* at the limit it is accepted (and ends when the context is full) */
    snprintf(req, sizeof req, "{\"op\":\"complete\",\"prompt\":\"a\",\"n_predict\":%d,\"ignore_eos\":true}",
             MAX_PREDICT);
    e = expect_ok(c, req);
    assert_string_equal(str(e, "stop_reason"), "length");
    json_decref(e);

    /* prompt tokens: at most the context (64 here) */
    n = (size_t)snprintf(req, sizeof req, "{\"op\":\"complete\",\"n_predict\":0,\"tokens\":[");
    for (int i = 0; i < 64; i++)
        n += (size_t)snprintf(req + n, sizeof req - n, "%s%d", i ? "," : "", 300 + i);
    snprintf(req + n, sizeof req - n, "]}");
    e = expect_ok(c, req);
    assert_int_equal(json_integer_value(json_object_get(e, "n_prompt")), 64);
    json_decref(e);
    snprintf(req + n, sizeof req - n, ",400]}");
    expect_error(c, req, "context_full", "65 tokens");
    char *words = repeat('w', 2000); /* a long text prompt: more tokens than fit */
    for (size_t i = 1; i < 2000; i += 2)
        words[i] = ' ';
    snprintf(req, sizeof req, "{\"op\":\"complete\",\"prompt\":\"%s\"}", words);
    expect_error(c, req, "context_full", "the context holds 64");
    free(words);
    nb_client_close(c);
    assert_int_equal(daemon_stop(&d), 0);
}

/* ------------------------------------------------------------------ concurrency */

static const char *endless = "{\"op\":\"complete\",\"id\":%d,\"prompt\":\"Once upon a time\","
                             "\"n_predict\":-1,\"ignore_eos\":true}";

/* Read what arrives on c until it is quiet for quiet_ms (or, as a running
 * request streams, for at most 3 s); count the busy errors and check their
 * message.  Refusals are sent as the requests are read, long before that. */
static int count_busy(nb_client *c, const char *says, int quiet_ms)
{
    int busy = 0;
    double end = nbt_now_ms() + 3000;
    for (;;) {
        json_t *e = nbt_now_ms() < end ? nbt_event(c, quiet_ms) : NULL;
        if (!e)
            return busy;
        if (str(e, "error")) {
            assert_string_equal(str(e, "error"), "busy");
            if (!strstr(str(e, "message"), says))
                fail_msg("busy says '%s', not '%s'", str(e, "message"), says);
            busy++;
        }
        json_decref(e);
    }
}

static void test_requests_per_connection(void **state)
{
    (void)state;
    const char *extra[] = {"-s", "1", "-c", "65536", NULL};
    nbt_daemon d;
    daemon_start(&d, extra);
    nb_client *c = nbt_connect(d.sock);
    char req[256];
    for (int i = 0; i <= MAX_JOBS_PER_CONN; i++) {
        snprintf(req, sizeof req, endless, i);
        assert_int_equal(nb_client_send(c, req, strlen(req)), NB_OK);
    }
    /* exactly one too many: the last, answered busy at once */
    double end = nbt_now_ms() + 20000;
    json_t *e = NULL;
    while (!e && nbt_now_ms() < end) {
        e = nbt_event(c, 1000);
        if (e && !str(e, "error")) {
            json_decref(e);
            e = NULL;
        }
    }
    assert_non_null(e);
    assert_string_equal(str(e, "error"), "busy");
    assert_int_equal(json_integer_value(json_object_get(e, "id")), MAX_JOBS_PER_CONN);
    assert_non_null(strstr(str(e, "message"), "at most 64"));
    json_decref(e);
    assert_int_equal(count_busy(c, "at most 64", 500), 0);
    /* another connection is not limited by this one */
    nb_client *c2 = nbt_connect(d.sock);
    json_decref(expect_ok(c2, "{\"op\":\"tokenize\",\"text\":\"hi\"}"));
    nb_client_close(c2);
    nb_client_close(c);
    assert_int_equal(daemon_stop(&d), 0);
}

static void test_queue_depth(void **state)
{
    (void)state;
    const char *extra[] = {"-s", "1", "-c", "65536", NULL};
    nbt_daemon d;
    daemon_start(&d, extra);
    /* twice: the second time shows that the first left the count right */
    for (int round = 0; round < 2; round++) {
        /* 5 x 64 = 320 endless requests for one slot: one runs, 256 wait,
         * the rest are refused */
        nb_client *c[5];
        char req[256];
        for (int k = 0; k < 5; k++) {
            c[k] = nbt_connect(d.sock);
            for (int i = 0; i < MAX_JOBS_PER_CONN; i++) {
                snprintf(req, sizeof req, endless, i);
                assert_int_equal(nb_client_send(c[k], req, strlen(req)), NB_OK);
            }
        }
        int busy = 0;
        for (int k = 0; k < 5; k++)
            busy += count_busy(c[k], "at most 256", 1000);
        printf("    %d of 320 refused\n", busy);
        /* 320 - 256 waiting = 64, or 63 when the first was already in its slot */
        assert_true(busy == 5 * MAX_JOBS_PER_CONN - MAX_QUEUE ||
                    busy == 5 * MAX_JOBS_PER_CONN - MAX_QUEUE - 1);
        for (int k = 0; k < 5; k++)
            nb_client_close(c[k]);
        /* the queue empties when they go (the worker drops the cancelled
         * requests within a pass): the next requests are served */
        nb_client *n = nbt_connect(d.sock);
        const char *small = "{\"op\":\"complete\",\"prompt\":\"a\",\"n_predict\":2}";
        double end = nbt_now_ms() + 10000;
        for (int served = 0; served < 3;) {
            assert_int_equal(nb_client_send(n, small, strlen(small)), NB_OK);
            json_t *e;
            while ((e = nbt_event(n, 10000)) && !json_is_true(json_object_get(e, "done")))
                json_decref(e);
            assert_non_null(e);
            if (str(e, "error")) {
                assert_string_equal(str(e, "error"), "busy");
                assert_true(nbt_now_ms() < end);
                usleep(20000);
            } else {
                served++;
            }
            json_decref(e);
        }
        nb_client_close(n);
    }
    assert_int_equal(daemon_stop(&d), 0);
}

static void test_connections(void **state)
{
    (void)state;
    nbt_daemon d;
    daemon_start(&d, NULL);
    nb_client *c[MAX_CONNS];
    for (int k = 0; k < MAX_CONNS; k++) {
        c[k] = nbt_connect(d.sock);
        assert_non_null(c[k]);
        json_decref(expect_ok(c[k], "{\"op\":\"status\"}"));
    }
    /* one more: refused, saying why, and closed */
    nb_client *x = nbt_connect(d.sock);
    assert_non_null(x); /* the kernel accepted it; the daemon answers */
    json_t *e = nbt_event(x, 10000);
    assert_non_null(e);
    assert_string_equal(str(e, "error"), "busy");
    assert_non_null(strstr(str(e, "message"), "too many connections (at most 256)"));
    json_decref(e);
    char *line;
    assert_int_equal(nb_client_read(x, &line, NULL, 10000), NB_ERR_IO);
    nb_client_close(x);
    /* the others still work; when one goes, a new one is let in */
    json_decref(expect_ok(c[0], "{\"op\":\"tokenize\",\"text\":\"hi\"}"));
    nb_client_close(c[MAX_CONNS - 1]);
    double end = nbt_now_ms() + 10000;
    for (;;) {
        x = nbt_connect(d.sock);
        assert_non_null(x);
        assert_int_equal(nb_client_send(x, "{\"op\":\"status\"}", 15), NB_OK);
        e = nbt_event(x, 10000);
        assert_non_null(e);
        int refused = str(e, "error") != NULL;
        json_decref(e);
        nb_client_close(x);
        if (!refused)
            break;
        assert_true(nbt_now_ms() < end); /* the daemon notices the close at once */
        usleep(20000);
    }
    for (int k = 0; k < MAX_CONNS - 1; k++)
        nb_client_close(c[k]);
    assert_int_equal(daemon_stop(&d), 0);
}

/* CPU seconds a process has used (utime + stime of /proc/PID/stat). */
static double cpu_s(int pid)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/stat", pid);
    char *st = nbt_read_file(path, NULL);
    assert_non_null(st);
    char *p = strrchr(st, ')'); /* the name may hold spaces */
    unsigned long ut = 0, stime = 0;
    assert_non_null(p);
    assert_int_equal(sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu", &ut, &stime), 2);
    free(st);
    return (double)(ut + stime) / (double)sysconf(_SC_CLK_TCK);
}

/* A daemon out of file descriptors (a low RLIMIT_NOFILE) refuses what it
 * cannot take by closing it, rather than leaving it in the listen queue,
 * where poll() would report it again and again: the daemon would spin. */
static void test_out_of_descriptors(void **state)
{
    (void)state;
    struct rlimit saved, low;
    assert_int_equal(getrlimit(RLIMIT_NOFILE, &saved), 0);
    low = saved;
    low.rlim_cur = 32;
    assert_int_equal(setrlimit(RLIMIT_NOFILE, &low), 0);
    nbt_daemon d;
    daemon_start(&d, NULL); /* the daemon inherits the limit */
    assert_int_equal(setrlimit(RLIMIT_NOFILE, &saved), 0);
    nb_client *c[60];
    int served = 0;
    for (int k = 0; k < 60; k++) {
        c[k] = nbt_connect(d.sock);
        assert_non_null(c[k]); /* the kernel queues it */
    }
    for (int k = 0; k < 60; k++) {
        if (nb_client_send(c[k], "{\"op\":\"status\"}", 15) != NB_OK)
            continue;
        json_t *e = nbt_event(c[k], 5000);
        served += e != NULL;
        json_decref(e);
    }
    printf("    %d of 60 connections served under a limit of 32 descriptors\n", served);
    assert_true(served > 0 && served < 60);
    /* nothing is left pending: an idle second costs the daemon (almost)
     * no CPU time */
    double t0 = cpu_s(d.pid);
    usleep(1000000);
    double used = cpu_s(d.pid) - t0;
    printf("    %.2f s of CPU in an idle second\n", used);
    assert_true(used < 0.3);
    for (int k = 0; k < 60; k++)
        nb_client_close(c[k]);
    /* and once they are gone it serves again */
    double end = nbt_now_ms() + 10000;
    for (;;) {
        nb_client *x = nbt_connect(d.sock);
        assert_non_null(x);
        json_t *e = nb_client_send(x, "{\"op\":\"status\"}", 15) == NB_OK ? nbt_event(x, 5000) : NULL;
        nb_client_close(x);
        if (e) {
            json_decref(e);
            break;
        }
        assert_true(nbt_now_ms() < end);
        usleep(20000);
    }
    assert_int_equal(daemon_stop(&d), 0);
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    setvbuf(stdout, NULL, _IOLBF, 0);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_frame_size, cleanup),
        cmocka_unit_test_teardown(test_request_fields, cleanup),
        cmocka_unit_test_teardown(test_requests_per_connection, cleanup),
        cmocka_unit_test_teardown(test_queue_depth, cleanup),
        cmocka_unit_test_teardown(test_connections, cleanup),
        cmocka_unit_test_teardown(test_out_of_descriptors, cleanup),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
