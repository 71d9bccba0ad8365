/*
 * test_soak.c - nibd under load: many clients at once sending a random mix
 * of complete, infill, chat and tokenize requests, cancelling some
 * mid-stream, hanging up on others, and mixing in malformed and oversized
 * lines.  Every well-formed request must get the answer it gets when sent
 * alone (the daemon's batching and cache reuse must not change a single
 * byte), every bad one its documented error, and afterwards the daemon must
 * hold no more slots, descriptors or memory than before.
 *
 * The model is generated here (nibble synth), so the test always runs.
 * Sizes come from the environment: NIBBLE_SOAK_CLIENTS (default 16),
 * NIBBLE_SOAK_REQUESTS (default 300; make soak runs 2,000) and
 * NIBBLE_SOAK_SEED (default 1; printed, so a failure can be replayed).
 * It prints the throughput and the latency percentiles; nothing asserts a
 * time except generous timeouts that mean "hung".
 */
#include "testutil.h"

#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <dirent.h>

#include "nibble.h"

#define FRAME_MAX (8u << 20) /* doc/protocol.md */
#define TIMEOUT_MS 300000    /* an answer this late means the daemon hung (sanitizers are slow) */

static long env_long(const char *name, long def, long lo, long hi)
{
    const char *v = getenv(name);
    if (!v || !*v)
        return def;
    char *end;
    long x = strtol(v, &end, 10);
    if (*end || x < lo || x > hi)
        fail_msg("%s must be %ld to %ld, not '%s'", name, lo, hi, v);
    return x;
}

/* splitmix64: one independent stream per request index, so the mix does
 * not depend on which thread picks which request */
static uint64_t mix(uint64_t x)
{
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

/* ------------------------------------------------------------------ the daemon */

/* A field of /proc/PID/status in KiB (VmRSS, RssAnon, ...). */
static long proc_kb(int pid, const char *field)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/status", pid);
    char *s = nbt_read_file(path, NULL);
    assert_non_null(s);
    char *p = strstr(s, field);
    long kb = p ? atol(p + strlen(field) + 1) : -1;
    free(s);
    assert_true(kb >= 0);
    return kb;
}

static int proc_fds(int pid)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/fd", pid);
    DIR *d = opendir(path);
    assert_non_null(d);
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)))
        n += e->d_name[0] != '.';
    closedir(d);
    return n;
}

static json_t *status_of(const char *sock)
{
    nb_client *c = nbt_connect(sock);
    assert_non_null(c);
    const char *r = "{\"op\":\"status\"}";
    assert_int_equal(nb_client_send(c, r, strlen(r)), NB_OK);
    char *line;
    assert_int_equal(nb_client_read(c, &line, NULL, 10000), NB_OK);
    assert_non_null(line);
    json_t *st = json_loads(line, 0, NULL);
    free(line);
    nb_client_close(c);
    assert_non_null(st);
    return st;
}

static int busy_slots(json_t *st)
{
    int n = 0;
    size_t i;
    json_t *s;
    json_array_foreach(json_object_get(st, "slots"), i, s) n += json_is_true(json_object_get(s, "busy"));
    return n;
}

/* ------------------------------------------------------------------ requests */

/* A well-formed request (a JSON object without its id) and what it must
 * get: the text and stop reason of a generation, the ids of a tokenize. */
typedef struct tmpl {
    const char *body;
    int tokenize;
    char *want;          /* text, or the "tokens" array as compact JSON */
    size_t want_len;     /* the text may hold NUL bytes (byte tokens) */
    char *want_reason;
} tmpl;

static const char *bodies[] = {
    "{\"op\":\"complete\",\"prompt\":\"Once upon a time\",\"n_predict\":24,\"temperature\":0}",
    "{\"op\":\"complete\",\"prompt\":\"Once upon a time there was\",\"n_predict\":16,\"temperature\":0}",
    "{\"op\":\"complete\",\"prompt\":\"The little dog was sad because\",\"n_predict\":32,\"temperature\":0}",
    "{\"op\":\"complete\",\"prompt\":\"Lily and Tom went to the park.\",\"n_predict\":20,\"temperature\":0,\"stream\":false}",
    "{\"op\":\"complete\",\"prompt\":\"Once upon a time\",\"n_predict\":30,\"temperature\":0.9,\"seed\":7}",
    "{\"op\":\"complete\",\"prompt\":\"A red ball\",\"n_predict\":30,\"temperature\":1.2,\"top_k\":0,\"seed\":99,\"repeat_penalty\":1.1}",
    "{\"op\":\"complete\",\"prompt\":\"Sun and rain\",\"n_predict\":40,\"temperature\":0,\"stop\":[\"AA\",\"tok3\"]}",
    "{\"op\":\"complete\",\"tokens\":[1,300,301,302,303],\"n_predict\":12,\"temperature\":0}",
    "{\"op\":\"infill\",\"prefix\":\"def add(a, b):\\n    return \",\"suffix\":\"\\n\",\"fallback\":\"prefix\",\"n_predict\":16,\"temperature\":0}",
    "{\"op\":\"infill\",\"prefix\":\"Once upon a time\",\"suffix\":\"THE END\",\"fallback\":\"prefix\",\"n_predict\":20,\"temperature\":0.7,\"seed\":3}",
    "{\"op\":\"infill\",\"prefix\":\"x = 1\\ny = \",\"suffix\":\"\",\"context\":[{\"name\":\"a.py\",\"text\":\"import os\\n\"}],\"fallback\":\"prefix\",\"n_predict\":12,\"temperature\":0}",
    "{\"op\":\"chat\",\"messages\":[{\"role\":\"user\",\"content\":\"Hi!\"}],\"n_predict\":20,\"temperature\":0}",
    "{\"op\":\"chat\",\"messages\":[{\"role\":\"system\",\"content\":\"Be brief.\"},{\"role\":\"user\",\"content\":\"Tell me a story\"}],\"n_predict\":24,\"temperature\":0}",
    "{\"op\":\"chat\",\"template\":\"chatml\",\"messages\":[{\"role\":\"user\",\"content\":\"Hello\"},{\"role\":\"assistant\",\"content\":\"Hi.\"},{\"role\":\"user\",\"content\":\"More\"}],\"n_predict\":16,\"temperature\":0.8,\"seed\":5,\"stream\":false}",
    "{\"op\":\"tokenize\",\"text\":\"Hello world\"}",
    "{\"op\":\"tokenize\",\"text\":\"Once upon a time, in a land far away.\",\"add_bos\":false}",
    "{\"op\":\"tokenize\",\"text\":\"caf\\u00e9 \\u2615 <s> </s>\",\"special\":true}",
    "{\"op\":\"tokenize\",\"text\":\"\"}",
};
#define N_TMPL (sizeof bodies / sizeof bodies[0])
static tmpl tmpls[N_TMPL];

/* Long generations, for cancelling and hanging up: they would run until
 * the context is full. */
static const char *long_bodies[] = {
    "{\"op\":\"complete\",\"prompt\":\"Once upon a time\",\"n_predict\":-1,\"ignore_eos\":true}",
    "{\"op\":\"infill\",\"prefix\":\"def f():\\n\",\"suffix\":\"\",\"fallback\":\"prefix\",\"n_predict\":-1,\"ignore_eos\":true}",
    "{\"op\":\"chat\",\"messages\":[{\"role\":\"user\",\"content\":\"Go on\"}],\"n_predict\":-1,\"ignore_eos\":true,\"temperature\":0}",
};
#define N_LONG (sizeof long_bodies / sizeof long_bodies[0])

/* Malformed requests and the error each must get (doc/protocol.md). */
static const char *bad[][2] = {
    {"{\"op\":\"complete\",\"prompt\":", "invalid_json"},
    {"not json at all", "invalid_json"},
    {"[\"op\",\"complete\"]", "invalid_json"},
    {"{\"op\":\"explode\"}", "unknown_op"},
    {"{\"id\":\"x\"}", "unknown_op"},
    {"{\"op\":\"complete\",\"prompt\":7}", "invalid_request"},
    {"{\"op\":\"complete\",\"prompt\":\"x\",\"n_predict\":-9}", "invalid_request"},
    {"{\"op\":\"complete\",\"prompt\":\"x\",\"top_p\":0}", "invalid_request"},
    {"{\"op\":\"complete\",\"tokens\":[1,100000]}", "invalid_request"},
    {"{\"op\":\"chat\",\"messages\":[]}", "invalid_request"},
    {"{\"op\":\"infill\",\"prefix\":\"a\",\"suffix\":\"b\"}", "unsupported"}, /* no FIM tokens */
    {"{\"op\":\"cancel\"}", "invalid_request"},
    {"{\"op\":\"tokenize\"}", "invalid_request"},
};
#define N_BAD (sizeof bad / sizeof bad[0])

static char *with_id(const char *body, long id)
{
    char *line = malloc(strlen(body) + 32);
    sprintf(line, "{\"id\":%ld,%s", id, body + 1);
    return line;
}

/* The final event of request `id`, with the streamed text; NULL (and a
 * reason in why) when the connection failed or nothing came in time.
 * Events of other ids (a cancel's reply) are handed to `other`. */
static json_t *read_final(nb_client *c, long id, char **text, size_t *text_len, json_t **other,
                          char *why, size_t whylen)
{
    size_t len = 0, cap = 256;
    char *t = malloc(cap);
    t[0] = 0;
    double deadline = nbt_now_ms() + TIMEOUT_MS;
    for (;;) {
        char *line;
        int left = (int)(deadline - nbt_now_ms());
        nb_status st = nb_client_read(c, &line, NULL, left > 0 ? left : 0);
        if (st || !line) {
            snprintf(why, whylen, "%s waiting for the answer to %ld",
                     st ? "connection lost" : "timed out", id);
            free(t);
            return NULL;
        }
        json_t *e = json_loads(line, JSON_ALLOW_NUL, NULL);
        if (!e) {
            snprintf(why, whylen, "not JSON: %.200s", line);
            free(line);
            free(t);
            return NULL;
        }
        free(line);
        json_t *eid = json_object_get(e, "id");
        if (!json_is_integer(eid) || json_integer_value(eid) != id) {
            if (other && !*other)
                *other = e;
            else
                json_decref(e);
            continue;
        }
        if (json_is_true(json_object_get(e, "done")) || json_object_get(e, "tokens")) {
            if (text) {
                *text = t;
                *text_len = len;
            } else {
                free(t);
            }
            return e;
        }
        json_t *piece_j = json_object_get(e, "text");
        const char *piece = json_string_value(piece_j);
        if (piece) {
            size_t n = json_string_length(piece_j);
            if (len + n + 1 > cap) {
                cap = 2 * (len + n + 1);
                t = realloc(t, cap);
            }
            memcpy(t + len, piece, n + 1);
            len += n;
        }
        json_decref(e);
    }
}

/* The text of a generation's answer: streamed, or in the final event. */
static const char *answer_text(json_t *fin, const char *streamed, size_t *len)
{
    json_t *t = json_object_get(fin, "text");
    if (!t)
        return streamed;
    *len = json_string_length(t);
    return json_string_value(t);
}

/* ------------------------------------------------------------------ the load */

typedef struct run {
    const char *sock;
    uint64_t seed;
    long n_requests;
    atomic_long next;
    /* results */
    atomic_long ok, cancelled, cancel_late, hung_up, malformed, oversized, failures;
    pthread_mutex_t mu;
    char first_failure[1024];
    double *lat;         /* latency of each well-formed answered request, ms */
    atomic_long n_lat;
} run;

static void failure(run *r, long i, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void failure(run *r, long i, const char *fmt, ...)
{
    char msg[900];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    long n = atomic_fetch_add(&r->failures, 1);
    if (n < 10)
        printf("    FAIL request %ld: %s\n", i, msg);
    pthread_mutex_lock(&r->mu);
    if (!r->first_failure[0])
        snprintf(r->first_failure, sizeof r->first_failure, "request %ld: %s", i, msg);
    pthread_mutex_unlock(&r->mu);
}

/* Check an answer against its template's solo answer. */
static int matches(const tmpl *t, json_t *fin, const char *streamed, size_t streamed_len,
                   char *why, size_t whylen)
{
    if (t->tokenize) {
        json_t *toks = json_object_get(fin, "tokens");
        char *got = toks ? json_dumps(toks, JSON_COMPACT) : NULL;
        int ok = got && !strcmp(got, t->want);
        if (!ok)
            snprintf(why, whylen, "tokenize gave %.200s, alone %.200s", got ? got : "no tokens",
                     t->want);
        free(got);
        return ok;
    }
    const char *reason = json_string_value(json_object_get(fin, "stop_reason"));
    size_t len = streamed_len;
    const char *text = answer_text(fin, streamed, &len);
    if (!reason || strcmp(reason, t->want_reason) || len != t->want_len ||
        memcmp(text, t->want, len)) {
        snprintf(why, whylen, "%.80s: got %s '%.120s' (%s), alone %s '%.120s'", t->body,
                 reason ? reason : "?", text, json_string_value(json_object_get(fin, "message"))
                                                  ? json_string_value(json_object_get(fin, "message"))
                                                  : "", t->want_reason, t->want);
        return 0;
    }
    return 1;
}

static void one_request(run *r, long i, nb_client **cp)
{
    uint64_t rnd = mix(r->seed ^ mix((uint64_t)i));
    unsigned kind = (unsigned)(rnd % 1000), action = (unsigned)((rnd >> 10) % 100);
    uint64_t pick = rnd >> 20;
    char why[1024];
    if (!*cp && !(*cp = nbt_connect(r->sock))) {
        failure(r, i, "cannot connect");
        return;
    }
    nb_client *c = *cp;

    if (kind < 10) { /* a line longer than the frame limit */
        size_t n = FRAME_MAX + (128u << 10);
        char *huge = malloc(n);
        memset(huge, 'x', n);
        huge[0] = '{';
        nb_client_send(c, huge, n); /* fails half-way once the daemon gives up */
        free(huge);
        json_t *e = NULL;
        char *line;
        if (nb_client_read(c, &line, NULL, TIMEOUT_MS) == NB_OK && line) {
            e = json_loads(line, JSON_ALLOW_NUL, NULL);
            free(line);
        }
        const char *code = json_string_value(json_object_get(e, "error"));
        if (!code || strcmp(code, "frame_too_large"))
            failure(r, i, "an oversized line got %s (%s)", code ? code : "no error",
                    e ? json_string_value(json_object_get(e, "message")) : "no event");
        else if (nb_client_read(c, &line, NULL, TIMEOUT_MS) != NB_ERR_IO)
            failure(r, i, "the connection stayed open after frame_too_large");
        else
            atomic_fetch_add(&r->oversized, 1);
        json_decref(e);
        nb_client_close(c);
        *cp = NULL;
        return;
    }
    if (kind < 60) { /* malformed */
        unsigned b = (unsigned)(pick % N_BAD);
        if (nb_client_send(c, bad[b][0], strlen(bad[b][0]))) {
            failure(r, i, "send failed");
            return;
        }
        char *line;
        json_t *e = NULL;
        if (nb_client_read(c, &line, NULL, TIMEOUT_MS) == NB_OK && line) {
            e = json_loads(line, JSON_ALLOW_NUL, NULL);
            free(line);
        }
        const char *code = json_string_value(json_object_get(e, "error"));
        if (!code || strcmp(code, bad[b][1]) ||
            strcmp(json_string_value(json_object_get(e, "stop_reason")), "error"))
            failure(r, i, "'%s' got %s, not %s", bad[b][0], code ? code : "nothing", bad[b][1]);
        else
            atomic_fetch_add(&r->malformed, 1);
        json_decref(e);
        return;
    }

    if (action < 10) { /* hang up mid-stream (or mid-queue) */
        const char *body = long_bodies[pick % N_LONG];
        char *line = with_id(body, i);
        nb_client_send(c, line, strlen(line));
        free(line);
        if (pick & 64) { /* after the first piece of text */
            char *ev;
            nb_client_read(c, &ev, NULL, TIMEOUT_MS);
            free(ev);
        }
        if (pick & 128) { /* a reset rather than an orderly close */
            struct linger lg = {1, 0};
            setsockopt(nb_client_fd(c), SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
        }
        nb_client_close(c);
        *cp = NULL;
        atomic_fetch_add(&r->hung_up, 1);
        return;
    }
    if (action < 30) { /* cancel: at once (queued or reading the prompt), or mid-stream */
        const char *body = long_bodies[pick % N_LONG];
        char *line = with_id(body, i);
        int ok = nb_client_send(c, line, strlen(line)) == NB_OK;
        free(line);
        json_t *first = NULL;
        if (ok && (pick & 64)) {
            char *ev = NULL;
            nb_client_read(c, &ev, NULL, TIMEOUT_MS);
            first = ev ? json_loads(ev, JSON_ALLOW_NUL, NULL) : NULL;
            free(ev);
            if (!json_string_value(json_object_get(first, "text"))) {
                char *f = first ? json_dumps(first, JSON_COMPACT) : NULL;
                failure(r, i, "a long generation sent %.300s before any text", f ? f : "nothing");
                free(f);
                json_decref(first);
                return;
            }
            json_decref(first);
        }
        char cancel[128];
        snprintf(cancel, sizeof cancel, "{\"op\":\"cancel\",\"id\":\"c%ld\",\"target\":%ld}", i, i);
        if (!ok || nb_client_send(c, cancel, strlen(cancel))) {
            failure(r, i, "send failed");
            return;
        }
        json_t *reply = NULL;
        json_t *fin = read_final(c, i, NULL, NULL, &reply, why, sizeof why);
        if (!fin) {
            failure(r, i, "%s", why);
            json_decref(reply);
            return;
        }
        if (!reply) { /* the cancel's answer comes after the final event */
            char *ev = NULL;
            nb_client_read(c, &ev, NULL, TIMEOUT_MS);
            reply = ev ? json_loads(ev, JSON_ALLOW_NUL, NULL) : NULL;
            free(ev);
        }
        char cid[32];
        snprintf(cid, sizeof cid, "c%ld", i);
        const char *reason = json_string_value(json_object_get(fin, "stop_reason"));
        const char *rid = json_string_value(json_object_get(reply, "id"));
        if (!rid || strcmp(rid, cid))
            failure(r, i, "no answer to the cancel");
        else if (json_is_true(json_object_get(reply, "ok")) && reason && !strcmp(reason, "cancelled"))
            atomic_fetch_add(&r->cancelled, 1);
        else if (json_is_false(json_object_get(reply, "ok")) && reason && !strcmp(reason, "length"))
            atomic_fetch_add(&r->cancel_late, 1); /* it filled the context first */
        else
            failure(r, i, "cancel answered ok=%s, the request ended '%s'",
                    json_is_true(json_object_get(reply, "ok")) ? "true" : "false",
                    reason ? reason : "?");
        json_decref(fin);
        json_decref(reply);
        return;
    }

    /* a plain request: the same answer as alone */
    const tmpl *t = &tmpls[pick % N_TMPL];
    char *line = with_id(t->body, i);
    double t0 = nbt_now_ms();
    int ok = nb_client_send(c, line, strlen(line)) == NB_OK;
    free(line);
    char *text = NULL;
    size_t text_len = 0;
    json_t *fin = ok ? read_final(c, i, &text, &text_len, NULL, why, sizeof why) : NULL;
    double ms = nbt_now_ms() - t0;
    if (!fin) {
        failure(r, i, "%s", ok ? why : "send failed");
        return;
    }
    if (matches(t, fin, text, text_len, why, sizeof why)) {
        atomic_fetch_add(&r->ok, 1);
        r->lat[atomic_fetch_add(&r->n_lat, 1)] = ms;
    } else {
        failure(r, i, "%s", why);
    }
    free(text);
    json_decref(fin);
}

static void *client_thread(void *arg)
{
    run *r = arg;
    nb_client *c = NULL;
    for (;;) {
        long i = atomic_fetch_add(&r->next, 1);
        if (i >= r->n_requests)
            break;
        one_request(r, i, &c);
    }
    nb_client_close(c);
    return NULL;
}

static double run_load(run *r, const char *sock, uint64_t seed, long n, int clients)
{
    memset(r, 0, sizeof *r);
    r->sock = sock;
    r->seed = seed;
    r->n_requests = n;
    pthread_mutex_init(&r->mu, NULL);
    r->lat = calloc((size_t)n, sizeof *r->lat);
    pthread_t th[256];
    double t0 = nbt_now_ms();
    for (int k = 0; k < clients; k++)
        assert_int_equal(pthread_create(&th[k], NULL, client_thread, r), 0);
    for (int k = 0; k < clients; k++)
        pthread_join(th[k], NULL);
    double ms = nbt_now_ms() - t0;
    pthread_mutex_destroy(&r->mu);
    return ms;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* ------------------------------------------------------------------ the test */

static int live_pid; /* the daemon, while the test runs: a failure leaves none */
static char dir[] = "/tmp/nibble-soak-XXXXXX";

static int cleanup(void **state)
{
    (void)state;
    if (live_pid > 0) {
        kill(live_pid, SIGKILL);
        waitpid(live_pid, NULL, 0);
        live_pid = 0;
    }
    char model[128];
    snprintf(model, sizeof model, "%s/tiny.gguf", dir);
    unlink(model);
    rmdir(dir);
    return 0;
}

/* Fill every slot's cache to the end of the context at once, with long
 * prompts read side by side, so that every KV cache and the scratch of the
 * largest batch are in the RSS before the baseline is taken: pages touched
 * for the first time later would look like growth. */
static void fill_slots(const char *sock, int n_slots)
{
    nb_client *c[64];
    char prompt[200];
    for (int k = 0; k < n_slots; k++) {
        for (int i = 0; i < 199; i++)
            prompt[i] = "abcdefghijklmnopqrstuvwxyz"[(i * 7 + k) % 26];
        prompt[199] = 0;
        assert_non_null(c[k] = nbt_connect(sock));
        char line[512];
        snprintf(line, sizeof line, "{\"op\":\"complete\",\"id\":%d,\"prompt\":\"%s\","
                                    "\"n_predict\":-1,\"ignore_eos\":true}", k, prompt);
        assert_int_equal(nb_client_send(c[k], line, strlen(line)), NB_OK);
    }
    for (int k = 0; k < n_slots; k++) {
        char why[512];
        json_t *fin = read_final(c[k], k, NULL, NULL, NULL, why, sizeof why);
        if (!fin)
            fail_msg("filling the slots: %s", why);
        assert_string_equal(json_string_value(json_object_get(fin, "stop_reason")), "length");
        json_decref(fin);
        nb_client_close(c[k]);
    }
}

/* Each template's answer, alone on an idle daemon; asked twice (the second
 * time from the slot's cache), which must agree. */
static void solo_answers(const char *sock)
{
    for (int pass = 0; pass < 2; pass++)
        for (size_t k = 0; k < N_TMPL; k++) {
            tmpl *t = &tmpls[k];
            t->body = bodies[k];
            t->tokenize = strstr(t->body, "\"op\":\"tokenize\"") != NULL;
            nb_client *c = nbt_connect(sock);
            assert_non_null(c);
            char *line = with_id(t->body, 1);
            assert_int_equal(nb_client_send(c, line, strlen(line)), NB_OK);
            free(line);
            char *text, why[512];
            size_t text_len;
            json_t *fin = read_final(c, 1, &text, &text_len, NULL, why, sizeof why);
            if (!fin)
                fail_msg("%s: %s", t->body, why);
            nb_client_close(c);
            if (pass == 0) {
                if (t->tokenize) {
                    json_t *toks = json_object_get(fin, "tokens");
                    assert_true(json_is_array(toks));
                    t->want = json_dumps(toks, JSON_COMPACT);
                } else {
                    const char *reason = json_string_value(json_object_get(fin, "stop_reason"));
                    assert_non_null(reason);
                    if (!strcmp(reason, "error"))
                        fail_msg("%s: %s", t->body, json_string_value(json_object_get(fin, "message")));
                    t->want_reason = strdup(reason);
                    size_t len = text_len;
                    const char *a = answer_text(fin, text, &len);
                    t->want = malloc(len + 1);
                    memcpy(t->want, a, len);
                    t->want[len] = 0;
                    t->want_len = len;
                }
            } else if (!matches(t, fin, text, text_len, why, sizeof why)) {
                fail_msg("asked again: %s", why);
            }
            free(text);
            json_decref(fin);
        }
}

/* Independent of the daemon: greedy answers against nibble eval's, and
 * tokenize against nibble tokenize's. */
static void check_references(const char *model)
{
    /* templates 0 and 2: plain greedy completes */
    static const struct { int k; const char *prompt; int n; } g[] = {
        {0, "Once upon a time", 24}, {2, "The little dog was sad because", 32}};
    for (int i = 0; i < 2; i++) {
        char *want = nbt_eval_text(model, g[i].prompt, g[i].n);
        assert_string_equal(tmpls[g[i].k].want, want);
        free(want);
    }
    /* template 14: tokenize "Hello world" with BOS, no special parsing */
    char bin[4096];
    snprintf(bin, sizeof bin, "%s", nbt_bin("nibble"));
    char *argv[] = {bin, "tokenize", "-m", (char *)model, "Hello world", NULL};
    char *out, *err;
    assert_int_equal(nbt_run(argv, &out, &err, 60), 0);
    char want[1024] = "[";
    for (char *tok = strtok(out, " \n"); tok; tok = strtok(NULL, " \n"))
        snprintf(want + strlen(want), sizeof want - strlen(want), "%s%s", want[1] ? "," : "", tok);
    strcat(want, "]");
    assert_string_equal(tmpls[14].want, want);
    free(out), free(err);
}

static void test_soak(void **state)
{
    (void)state;
    int clients = (int)env_long("NIBBLE_SOAK_CLIENTS", 16, 1, 200);
    long n = env_long("NIBBLE_SOAK_REQUESTS", 300, 10, 10000000);
    uint64_t seed = (uint64_t)env_long("NIBBLE_SOAK_SEED", 1, 0, 0x7fffffffffffffffL);
    printf("    soak: %d clients, %ld requests, seed %" PRIu64
           " (NIBBLE_SOAK_CLIENTS, NIBBLE_SOAK_REQUESTS, NIBBLE_SOAK_SEED)\n", clients, n, seed);

    assert_non_null(mkdtemp(dir));
    char model[128];
    snprintf(model, sizeof model, "%s/tiny.gguf", dir);
    char bin[4096];
    snprintf(bin, sizeof bin, "%s", nbt_bin("nibble"));
    /* small enough to answer 2,000 requests in seconds, big enough that
     * its weights and caches (about 20 MB) are the bulk of the RSS, as a
     * real model's are, rather than the allocator's odd page.  Under
     * AddressSanitizer, whose allocator keeps freed memory on purpose (so
     * RSS says nothing there; LeakSanitizer checks the daemon's exit
     * instead), the smallest model keeps the run short. */
#ifdef __SANITIZE_ADDRESS__
    char *argv[] = {bin, "synth", "-o", model, NULL};
#else
    char *argv[] = {bin, "synth", "-o", model, "--embd", "256", "--layers", "4", "--heads", "8",
                    "--kv-heads", "4", "--ff", "768", NULL};
#endif
    char *out, *err;
    if (nbt_run(argv, &out, &err, 60) != 0)
        fail_msg("nibble synth: %s", err);
    free(out), free(err);

    /* 6 slots for 16 clients: requests queue, slots are reused and stolen */
    const char *extra[] = {"-s", "6", "-c", "256", "-k", "-1", NULL};
    nbt_daemon d;
    nbt_daemon_start(&d, model, extra);
    live_pid = d.pid;

    solo_answers(d.sock);
    check_references(model);

    /* warm-up: the same kind of load, so that buffers and allocator pools
     * reach their working size before the baseline is taken */
    fill_slots(d.sock, 6);
    run r;
    long n_warm = n / 4 > 500 ? n / 4 : 500;
    run_load(&r, d.sock, seed ^ 0x5eed, n_warm, clients);
    if (r.failures)
        fail_msg("warm-up: %ld failures; the first: %s", (long)r.failures, r.first_failure);
    free(r.lat);

    /* the baseline: idle slots, descriptors, memory */
    double settle = nbt_now_ms() + 10000;
    json_t *st;
    while (busy_slots(st = status_of(d.sock)) && nbt_now_ms() < settle) {
        json_decref(st);
        usleep(20000);
    }
    assert_int_equal(busy_slots(st), 0);
    json_decref(st);
    usleep(500000); /* nibd gives freed memory back after 100 ms of quiet */
    int fds0 = proc_fds(d.pid);
    long rss0 = proc_kb(d.pid, "VmRSS"), anon0 = proc_kb(d.pid, "RssAnon"),
         file0 = proc_kb(d.pid, "RssFile");

    double ms = run_load(&r, d.sock, seed, n, clients);
    long failures = r.failures;
    printf("    %ld answered as alone, %ld cancelled (%ld finished first), %ld hung up, "
           "%ld malformed, %ld oversized\n",
           (long)r.ok, (long)r.cancelled, (long)r.cancel_late, (long)r.hung_up,
           (long)r.malformed, (long)r.oversized);
    long nl = r.n_lat;
    qsort(r.lat, (size_t)nl, sizeof *r.lat, cmp_double);
    if (nl)
        printf("    %.1f requests/s over %.1f s; latency of answered requests: p50 %.1f ms, "
               "p99 %.1f ms, max %.1f ms\n",
               (double)n * 1e3 / ms, ms / 1e3, r.lat[nl / 2], r.lat[(size_t)((double)nl * 0.99)],
               r.lat[nl - 1]);
    free(r.lat);
    if (failures)
        fail_msg("%ld of %ld requests failed; the first: %s (seed %" PRIu64 ")", failures, n,
                 r.first_failure, seed);
    assert_int_equal(r.ok + r.cancelled + r.cancel_late + r.hung_up + r.malformed + r.oversized, n);

    /* the daemon is alive, every slot is free, every connection closed */
    int status;
    assert_int_equal(waitpid(d.pid, &status, WNOHANG), 0);
    settle = nbt_now_ms() + 10000;
    int fds1;
    for (;;) {
        st = status_of(d.sock);
        fds1 = proc_fds(d.pid);
        if ((!busy_slots(st) && fds1 == fds0) || nbt_now_ms() > settle)
            break;
        json_decref(st);
        usleep(20000);
    }
    printf("    after: %d busy slots, %d descriptors (before: %d)\n", busy_slots(st), fds1, fds0);
    assert_int_equal(busy_slots(st), 0);
    assert_int_equal(fds1, fds0);
    json_decref(st);
    usleep(500000);
    long rss1 = proc_kb(d.pid, "VmRSS"), anon1 = proc_kb(d.pid, "RssAnon"),
         file1 = proc_kb(d.pid, "RssFile");
    printf("    RSS after warm-up %ld KiB, after the run %ld KiB (%+.1f%%); anonymous %ld -> %ld, "
           "file %ld -> %ld\n", rss0, rss1, 100.0 * (double)(rss1 - rss0) / (double)rss0,
           anon0, anon1, file0, file1);
#ifdef __SANITIZE_ADDRESS__
    printf("    (RSS not compared under AddressSanitizer: its quarantine keeps freed memory)\n");
#else
    assert_true(rss1 <= rss0 + rss0 / 20);
#endif

    /* a clean exit: under the sanitizers, also no leak and no error */
    live_pid = 0;
    assert_int_equal(nbt_daemon_stop(&d), 0);
    for (size_t k = 0; k < N_TMPL; k++) {
        free(tmpls[k].want);
        free(tmpls[k].want_reason);
    }
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    setvbuf(stdout, NULL, _IOLBF, 0);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_soak, cleanup),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
