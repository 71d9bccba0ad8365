/*
 * test_faults.c - what nibble does when things go wrong around it: the
 * daemon killed mid-answer, the model file replaced or truncated while it
 * is mapped, a full disk under the chat history and under a download, a
 * NUL byte in an answer, and a client that stops reading.  Each test states the behaviour that
 * doc/protocol.md, doc/nibd.8 and doc/nib.1 promise and checks it.
 *
 * The models are generated here (nibble synth), so nothing is skipped for
 * want of reference data.
 */
#include "testutil.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "nibble.h"

#define MAX_OUT (8u << 20) /* unread bytes before nibd drops a client (doc/protocol.md) */

static char dir[] = "/tmp/nibble-faults-XXXXXX";
static char model_a[128], model_b[128]; /* two random models (different seeds) */

static void synth(const char *out, const char *seed)
{
    char bin[4096];
    snprintf(bin, sizeof bin, "%s", nbt_bin("nibble"));
    char *argv[] = {bin, "synth", "-o", (char *)out, "--seed", (char *)seed, NULL};
    char *o, *e;
    if (nbt_run(argv, &o, &e, 60) != 0)
        fail_msg("nibble synth: %s", e);
    free(o), free(e);
}

static int setup(void **state)
{
    (void)state;
    if (!mkdtemp(dir))
        return -1;
    snprintf(model_a, sizeof model_a, "%s/a.gguf", dir);
    snprintf(model_b, sizeof model_b, "%s/b.gguf", dir);
    synth(model_a, "1");
    synth(model_b, "2");
    return 0;
}

/* What a test started, so that a failing test leaves nothing running. */
static int live[4];
static char home[160];

static void track(int pid)
{
    for (int i = 0; i < 4; i++)
        if (live[i] <= 0) {
            live[i] = pid;
            return;
        }
}

/* Once a process is reaped its number may be reused: forget it. */
static void reaped(int pid)
{
    for (int i = 0; i < 4; i++)
        if (live[i] == pid)
            live[i] = 0;
}

static void private_env_end(void);

static int cleanup(void **state)
{
    (void)state;
    for (int i = 0; i < 4; i++)
        if (live[i] > 0) {
            kill(live[i], SIGKILL);
            waitpid(live[i], NULL, WNOHANG);
            live[i] = 0;
        }
    if (home[0])
        private_env_end();
    home[0] = 0;
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    char cmd[160];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    return system(cmd) == 0 ? 0 : -1;
}

static void send_line(nb_client *c, const char *line)
{
    assert_int_equal(nb_client_send(c, line, strlen(line)), NB_OK);
}

/* The streamed answer to a request sent on a fresh connection. */
static char *answer(const char *sock, const char *req)
{
    nb_client *c = nbt_connect(sock);
    assert_non_null(c);
    send_line(c, req);
    size_t len = 0;
    char *t = calloc(1, 1 << 16);
    for (;;) {
        json_t *e = nbt_event(c, 30000);
        if (!e)
            fail_msg("no answer to %s", req);
        if (json_is_true(json_object_get(e, "done"))) {
            const char *reason = json_string_value(json_object_get(e, "stop_reason"));
            if (!strcmp(reason, "error"))
                fail_msg("%s: %s", req, json_string_value(json_object_get(e, "message")));
            json_decref(e);
            break;
        }
        json_t *piece = json_object_get(e, "text");
        size_t n = json_string_length(piece);
        assert_true(len + n < (1 << 16));
        memcpy(t + len, json_string_value(piece), n);
        len += n;
        json_decref(e);
    }
    nb_client_close(c);
    return t;
}

static json_t *status_of(const char *sock)
{
    nb_client *c = nbt_connect(sock);
    assert_non_null(c);
    send_line(c, "{\"op\":\"status\"}");
    json_t *st = nbt_event(c, 10000);
    assert_non_null(st);
    nb_client_close(c);
    return st;
}

static long long num(json_t *o, const char *k)
{
    return json_integer_value(json_object_get(o, k));
}

static int busy_slots(json_t *st)
{
    int n = 0;
    size_t i;
    json_t *s;
    json_array_foreach(json_object_get(st, "slots"), i, s) n += json_is_true(json_object_get(s, "busy"));
    return n;
}

static long rss_kb(int pid)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/status", pid);
    char *s = nbt_read_file(path, NULL);
    if (!s)
        return -1;
    char *p = strstr(s, "VmRSS:");
    long kb = p ? atol(p + 6) : -1;
    free(s);
    return kb;
}

static int pid_alive(int pid)
{
    return pid > 0 && kill(pid, 0) == 0;
}

/* The pid in a daemon's lock file (SOCKET.lock). */
static int lock_pid(const char *sock)
{
    char lock[300];
    snprintf(lock, sizeof lock, "%s.lock", sock);
    char *s = nbt_read_file(lock, NULL);
    int pid = s ? atoi(s) : -1;
    free(s);
    return pid;
}

static const char *greedy = "{\"op\":\"complete\",\"prompt\":\"Once upon a time\",\"n_predict\":24,"
                            "\"temperature\":0}";
static const char *endless = "{\"op\":\"complete\",\"id\":1,\"prompt\":\"hello\",\"n_predict\":-1,"
                             "\"ignore_eos\":true}";

/* ------------------------------------------------------------------ SIGKILL */

/* The client library: the read fails at once (no hang), so does the next
 * send, a plain connect says the daemon is not there, and an auto-starting
 * connect starts a fresh one that answers as the old one did. */
static void test_kill_client_library(void **state)
{
    (void)state;
    const char *extra[] = {"-c", "65536", NULL};
    nbt_daemon d;
    nbt_daemon_start(&d, model_a, extra);
    track(d.pid);
    char *before = answer(d.sock, greedy);
    nb_client *c = nbt_connect(d.sock);
    send_line(c, endless);
    json_t *e = nbt_event(c, 10000);
    assert_non_null(json_object_get(e, "text"));
    json_decref(e);
    kill(d.pid, SIGKILL);
    waitpid(d.pid, NULL, 0);
    reaped(d.pid);
    double t0 = nbt_now_ms();
    char *line = NULL;
    nb_status st;
    /* events already in flight may still arrive; then the end */
    while ((st = nb_client_read(c, &line, NULL, 10000)) == NB_OK && line)
        free(line);
    assert_int_equal(st, NB_ERR_IO);
    assert_true(nbt_now_ms() - t0 < 10000);
    assert_int_equal(nb_client_send(c, greedy, strlen(greedy)), NB_ERR_IO);
    nb_client_close(c);

    /* the dead daemon left its socket file: no answer there ... */
    nb_client_params p = nb_client_default_params();
    p.socket = d.sock;
    p.autostart = 0;
    char err[512];
    assert_int_not_equal(nb_client_connect(&p, &c, err, sizeof err), NB_OK);
    assert_non_null(strstr(err, "cannot connect to nibd"));
    assert_non_null(strstr(err, d.sock));
    /* ... and an auto-starting client starts a fresh one there */
    char nibd[4096];
    snprintf(nibd, sizeof nibd, "%s", nbt_bin("nibd"));
    const char *args[] = {"--config", "/dev/null", "-t", "2", NULL};
    p.autostart = 1;
    p.model = model_a;
    p.nibd = nibd;
    p.nibd_args = args;
    if (nb_client_connect(&p, &c, err, sizeof err))
        fail_msg("%s", err);
    nb_client_close(c);
    int fresh = lock_pid(d.sock);
    track(fresh);
    assert_true(fresh > 0 && fresh != d.pid && pid_alive(fresh));
    char *after = answer(d.sock, greedy);
    assert_string_equal(after, before);
    free(before), free(after);
    c = nbt_connect(d.sock);
    send_line(c, "{\"op\":\"shutdown\"}");
    json_decref(nbt_event(c, 5000));
    nb_client_close(c);
    for (int i = 0; i < 500 && pid_alive(fresh); i++)
        usleep(10000);
    assert_false(pid_alive(fresh));
    reaped(fresh);
    d.pid = 0;
    nbt_daemon_stop(&d);
}

/* A private world for nib: its own runtime, state, data and config
 * directories under `home`. */

static void private_env(void)
{
    snprintf(home, sizeof home, "%s/home-XXXXXX", dir);
    assert_non_null(mkdtemp(home));
    const char *vars[][2] = {{"XDG_RUNTIME_DIR", "run"}, {"XDG_STATE_HOME", "state"},
                             {"XDG_DATA_HOME", "data"}, {"XDG_CONFIG_HOME", "config"},
                             {"HOME", "home"}};
    for (int i = 0; i < 5; i++) {
        char p[256];
        snprintf(p, sizeof p, "%s/%s", home, vars[i][1]);
        assert_int_equal(mkdir(p, 0700), 0);
        setenv(vars[i][0], p, 1);
    }
    unsetenv("NIBBLE_MODEL");
    unsetenv("NIBBLE_NOHISTORY");
}

/* Stop the daemon of the private world, if one runs. */
static void private_env_end(void)
{
    char sock[256];
    if (nb_socket_path(sock, sizeof sock) == NB_OK) {
        int pid = lock_pid(sock);
        if (pid_alive(pid)) {
            kill(pid, SIGTERM);
            for (int i = 0; i < 500 && pid_alive(pid); i++)
                usleep(10000);
        }
    }
}

/* Run nib with the given arguments; stdin /dev/null.  Limits (RLIMIT_FSIZE
 * when fsize > 0, with SIGXFSZ ignored so that writes fail with EFBIG
 * instead of killing it) apply to nib only. */
static int run_nib(char *const args[], char **out, char **err, long fsize)
{
    char bin[4096];
    snprintf(bin, sizeof bin, "%s", nbt_bin("nib"));
    char *argv[32];
    int n = 0;
    argv[n++] = bin;
    for (int i = 0; args[i] && n < 31; i++)
        argv[n++] = args[i];
    argv[n] = NULL;
    const nbt_run_opts o = {.fsize = fsize};
    return nbt_run_with(argv, &o, out, err, 60);
}

/* nib: one line on stderr saying what happened, exit status 1, and the
 * next nib starts a fresh daemon by itself. */
static void test_kill_nib(void **state)
{
    (void)state;
    private_env();
    setenv("NIBBLE_MODEL", model_a, 1);
    /* a context long enough that the answer is still streaming when killed */
    char cfg[256];
    snprintf(cfg, sizeof cfg, "%s/config/nibble", home);
    assert_int_equal(mkdir(cfg, 0700), 0);
    strcat(cfg, "/config");
    FILE *f = fopen(cfg, "w");
    assert_non_null(f);
    fputs("ctx_size = 65536\n", f);
    fclose(f);
    char sock[256];
    assert_int_equal(nb_socket_path(sock, sizeof sock), NB_OK);
    char errfile[256];
    snprintf(errfile, sizeof errfile, "%s/nib.err", home);
    pid_t kid = fork();
    if (kid == 0) {
        int null = open("/dev/null", O_RDWR);
        dup2(null, 0);
        dup2(null, 1);
        int ef = open(errfile, O_WRONLY | O_CREAT | O_TRUNC, 0600);
        dup2(ef, 2);
        char b[4096];
        snprintf(b, sizeof b, "%s", nbt_bin("nib"));
        execl(b, "nib", "--raw", "-n", "-1", "-o", "temperature=0", "Once upon a time", (char *)NULL);
        _exit(127);
    }
    track(kid);
    /* wait until the daemon nib started is busy answering it */
    int dpid = -1;
    for (int i = 0; i < 1000 && dpid < 0; i++, usleep(10000)) {
        nb_client *c = nbt_connect(sock);
        if (!c)
            continue;
        send_line(c, "{\"op\":\"status\"}");
        json_t *st = nbt_event(c, 5000);
        nb_client_close(c);
        if (st && busy_slots(st))
            dpid = lock_pid(sock);
        json_decref(st);
    }
    assert_true(dpid > 0);
    kill(dpid, SIGKILL);
    int status;
    double t0 = nbt_now_ms();
    waitpid(kid, &status, 0);
    reaped(kid);
    assert_true(nbt_now_ms() - t0 < 10000);
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 1);
    char *e = nbt_read_file(errfile, NULL);
    assert_non_null(e);
    assert_int_equal(nbt_count(e, "\n"), 1);
    assert_non_null(strstr(e, "nib: the daemon closed the connection mid-answer"));
    assert_non_null(strstr(e, "the next nib starts a new one"));
    free(e);
    /* the dead daemon's socket is still there; the next nib starts anew */
    assert_int_equal(access(sock, F_OK), 0);
    char *out, *err;
    char *args[] = {"--raw", "-n", "8", "-o", "temperature=0", "Once upon a time", NULL};
    assert_int_equal(run_nib(args, &out, &err, 0), 0);
    assert_string_equal(err, "");
    int fresh = lock_pid(sock);
    assert_true(fresh != dpid && pid_alive(fresh));
    /* and it answers as nibble eval does */
    char *want = nbt_eval_text(model_a, "Once upon a time", 8);
    assert_string_equal(out, want);
    free(want), free(out), free(err);
    private_env_end();
}

/* ------------------------------------------------------------------ model file */

/* Replacing the file the recommended way (a new file renamed over the old
 * name): the daemon goes on answering from the old mapping, and the new
 * file is used from the next load (after keep-alive released the old). */
static void test_model_renamed_over(void **state)
{
    (void)state;
    char path[160], fresh[160];
    snprintf(path, sizeof path, "%s/served.gguf", dir);
    snprintf(fresh, sizeof fresh, "%s/served.gguf.new", dir);
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "cp '%s' '%s' && cp '%s' '%s'", model_a, path, model_b, fresh);
    assert_int_equal(system(cmd), 0);
    char *want_a = nbt_eval_text(model_a, "Once upon a time", 24);
    char *want_b = nbt_eval_text(model_b, "Once upon a time", 24);
    assert_string_not_equal(want_a, want_b); /* else the test shows nothing */

    /* keep-alive 2 s: long enough not to expire between two requests on a
     * loaded machine; "loads" in status proves it did not */
    const char *extra[] = {"-k", "2", NULL};
    nbt_daemon d;
    nbt_daemon_start(&d, path, extra);
    track(d.pid);
    char *got = answer(d.sock, greedy);
    assert_string_equal(got, want_a);
    free(got);
    assert_int_equal(rename(fresh, path), 0);
    got = answer(d.sock, greedy);
    json_t *st = status_of(d.sock);
    assert_int_equal(num(st, "loads"), 1);
    json_decref(st);
    assert_string_equal(got, want_a); /* the old mapping, unchanged */
    free(got);
    /* once keep-alive has released the weights, the next load reads the new file */
    double end = nbt_now_ms() + 30000;
    for (;;) {
        st = status_of(d.sock);
        int loaded = json_is_true(json_object_get(st, "loaded"));
        json_decref(st);
        if (!loaded)
            break;
        assert_true(nbt_now_ms() < end);
        usleep(100000);
    }
    got = answer(d.sock, greedy);
    assert_string_equal(got, want_b);
    free(got);
    st = status_of(d.sock);
    assert_int_equal(num(st, "loads"), 2);
    json_decref(st);
    reaped(d.pid);
    assert_int_equal(nbt_daemon_stop(&d), 0);
    free(want_a), free(want_b);
    unlink(path);
}

/* Truncating the file in place (what `cp new.gguf old.gguf` does first)
 * takes the mapped pages away: the next access is a bus error.  nibd
 * cannot answer from weights that are gone; it says why in its log,
 * removes its socket and exits 1, so clients get a clean end of stream and
 * the next one starts a daemon on whatever the file holds then. */
static void test_model_truncated(void **state)
{
    (void)state;
    char path[160], log[160], sock[160];
    snprintf(path, sizeof path, "%s/truncated.gguf", dir);
    snprintf(log, sizeof log, "%s/truncated.log", dir);
    snprintf(sock, sizeof sock, "%s/trunc.sock", dir);
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "cp '%s' '%s'", model_a, path);
    assert_int_equal(system(cmd), 0);
    pid_t pid = fork();
    if (pid == 0) {
        int null = open("/dev/null", O_RDWR), lf = open(log, O_WRONLY | O_CREAT | O_TRUNC, 0600);
        dup2(null, 0), dup2(null, 1), dup2(lf, 2);
        char b[4096];
        snprintf(b, sizeof b, "%s", nbt_bin("nibd"));
        execl(b, "nibd", "-m", path, "--socket", sock, "--config", "/dev/null", "-t", "2", "-c",
              "65536", (char *)NULL);
        _exit(127);
    }
    track(pid);
    nb_client *c = NULL;
    for (int i = 0; i < 1000 && !(c = nbt_connect(sock)); i++)
        usleep(10000);
    assert_non_null(c);
    send_line(c, endless);
    json_t *e = nbt_event(c, 10000);
    assert_non_null(json_object_get(e, "text"));
    json_decref(e);
    assert_int_equal(truncate(path, 4096), 0);
    /* the stream ends (the daemon is gone) rather than hanging */
    char *line = NULL;
    nb_status st;
    double t0 = nbt_now_ms();
    while ((st = nb_client_read(c, &line, NULL, 20000)) == NB_OK && line)
        free(line);
    assert_int_equal(st, NB_ERR_IO);
    assert_true(nbt_now_ms() - t0 < 20000);
    nb_client_close(c);
    int status;
    waitpid(pid, &status, 0);
    reaped(pid);
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 1);
    assert_int_equal(access(sock, F_OK), -1);
    char *text = nbt_read_file(log, NULL);
    assert_non_null(text);
    if (!strstr(text, "truncated"))
        fail_msg("the log does not say what happened:\n%s", text);
    free(text);
    unlink(path);
    unlink(log);
}

/* ------------------------------------------------------------------ full disk */

/* The history file on a full disk (/dev/full answers every write with
 * ENOSPC): one warning, and the chat goes on answering. */
static void test_history_disk_full(void **state)
{
    (void)state;
    private_env();
    setenv("NIBBLE_MODEL", model_a, 1);
    char hist[256];
    snprintf(hist, sizeof hist, "%s/state/nibble", home);
    assert_int_equal(mkdir(hist, 0700), 0);
    strcat(hist, "/history");
    assert_int_equal(symlink("/dev/full", hist), 0);
    char bin[4096];
    snprintf(bin, sizeof bin, "%s", nbt_bin("nib"));
    char *argv[] = {bin, "--raw", "-v", "-n", "4", NULL};
    nbt_term t;
    nbt_term_start(&t, argv);
    track(t.pid);
    size_t at = nbt_term_wait(&t, 0, "> ", 20000);
    nbt_term_edit(&t, "first question\r");
    at = nbt_term_wait(&t, at, "No space left on device", 20000);
    at = nbt_term_wait(&t, at, "tokens/s", 20000) + 8;
    nbt_term_edit(&t, "second question\r");
    at = nbt_term_wait(&t, at, "tokens/s", 20000) + 8;
    nbt_term_edit(&t, "\x04");
    int rc = nbt_term_exit(&t);
    reaped(t.pid);
    assert_int_equal(rc, 0);
    assert_int_equal(nbt_count(t.buf, "cannot save history"), 1);
    assert_int_equal(nbt_count(t.buf, "tokens/s"), 2); /* both answered */
    private_env_end();
}

/* A tiny HTTP server for `nib pull URL`: serves `data` at any path,
 * honouring Range so that a download can resume. */
static pid_t http_start(const char *data, size_t len, int *port)
{
    int lfd = socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = 0};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(bind(lfd, (struct sockaddr *)&sa, sizeof sa), 0);
    assert_int_equal(listen(lfd, 16), 0);
    socklen_t sl = sizeof sa;
    getsockname(lfd, (struct sockaddr *)&sa, &sl);
    *port = ntohs(sa.sin_port);
    pid_t pid = fork();
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        for (;;) {
            int fd = accept(lfd, NULL, NULL);
            if (fd < 0)
                continue;
            char req[8192];
            size_t n = 0;
            while (n < sizeof req - 1) {
                ssize_t r = read(fd, req + n, sizeof req - 1 - n);
                if (r <= 0)
                    break;
                n += (size_t)r;
                req[n] = 0;
                if (strstr(req, "\r\n\r\n"))
                    break;
            }
            const char *range = strcasestr(req, "\nRange: bytes=");
            size_t from = range ? (size_t)atol(range + 14) : 0;
            if (from > len)
                from = len;
            char hdr[512];
            int h = from ? snprintf(hdr, sizeof hdr,
                                    "HTTP/1.1 206 Partial Content\r\nContent-Length: %zu\r\n"
                                    "Content-Range: bytes %zu-%zu/%zu\r\nConnection: close\r\n\r\n",
                                    len - from, from, len - 1, len)
                         : snprintf(hdr, sizeof hdr,
                                    "HTTP/1.1 200 OK\r\nContent-Length: %zu\r\n"
                                    "Connection: close\r\n\r\n", len);
            if (write(fd, hdr, (size_t)h) == h)
                for (size_t o = from; o < len;) {
                    ssize_t w = write(fd, data + o, len - o < 65536 ? len - o : 65536);
                    if (w <= 0)
                        break;
                    o += (size_t)w;
                }
            close(fd);
        }
    }
    close(lfd);
    return pid;
}

/* A download onto a full disk (a file size limit nib cannot write past):
 * an error that says so, nothing under the model's final name, and the
 * same command finishes the download once there is room. */
static void test_pull_disk_full(void **state)
{
    (void)state;
    private_env();
    size_t len;
    char *data = nbt_read_file(model_a, &len);
    assert_non_null(data);
    assert_true(len > 200000);
    int port;
    pid_t server = http_start(data, len, &port);
    track(server);
    char url[128];
    snprintf(url, sizeof url, "http://127.0.0.1:%d/models/story.gguf", port);
    char final[256], part[300];
    snprintf(final, sizeof final, "%s/data/nibble/models/story.gguf", home);
    snprintf(part, sizeof part, "%s.part", final);
    char *out, *err;
    char *args[] = {"pull", url, NULL};
    long limit = 100000;
    assert_int_equal(run_nib(args, &out, &err, limit), 1);
    assert_int_equal(nbt_count(err, "\n"), 1);
    assert_non_null(strstr(err, "cannot write"));
    assert_non_null(strstr(err, "File too large"));
    assert_non_null(strstr(err, "run the same command again"));
    assert_string_equal(out, "");
    assert_int_equal(access(final, F_OK), -1);
    struct stat st;
    if (stat(part, &st) == 0)
        assert_true(st.st_size <= limit);
    free(out), free(err);
    /* room again: it completes, and the file is the served bytes */
    assert_int_equal(run_nib(args, &out, &err, 0), 0);
    size_t got_len;
    char *got = nbt_read_file(final, &got_len);
    assert_non_null(got);
    assert_int_equal(got_len, len);
    assert_memory_equal(got, data, len);
    assert_int_equal(access(part, F_OK), -1);
    free(got), free(out), free(err);
    kill(server, SIGKILL);
    waitpid(server, NULL, 0);
    reaped(server);
    free(data);
    private_env_end();
}

/* ------------------------------------------------------------------ odd bytes */

/* Run argv with stdout into a file (stdin and stderr /dev/null); the exit
 * status, or -1 when it ran for more than 60 s (and was killed). */
static int run_to_file(char *const argv[], const char *path)
{
    pid_t pid = fork();
    if (pid == 0) {
        int null = open("/dev/null", O_RDWR), f = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
        dup2(null, 0), dup2(f, 1), dup2(null, 2);
        execv(argv[0], argv);
        _exit(127);
    }
    track(pid);
    int status = 0;
    double end = nbt_now_ms() + 60000;
    while (waitpid(pid, &status, WNOHANG) == 0) {
        if (nbt_now_ms() > end) {
            kill(pid, SIGKILL);
            waitpid(pid, NULL, 0);
            reaped(pid);
            return -1;
        }
        usleep(10000);
    }
    reaped(pid);
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

/* A random model's byte tokens can produce a NUL byte (the soak test met
 * one): nib passes it through like any other byte, streamed or not, as
 * nibble run does, instead of dropping the event it cannot parse (and,
 * with --no-stream, waiting for ever for a final event it cannot read). */
static void test_nul_byte_answer(void **state)
{
    (void)state;
    private_env();
    setenv("NIBBLE_MODEL", model_a, 1);
    char want_path[256], got_path[256], bin[4096], nib[4096];
    snprintf(want_path, sizeof want_path, "%s/want", home);
    snprintf(got_path, sizeof got_path, "%s/got", home);
    snprintf(bin, sizeof bin, "%s", nbt_bin("nibble"));
    snprintf(nib, sizeof nib, "%s", nbt_bin("nib"));
    char *run[] = {bin, "run", "-m", model_a, "-p", "b", "-n", "20", "--temp", "0", NULL};
    assert_int_equal(run_to_file(run, want_path), 0);
    size_t want_len;
    char *want = nbt_read_file(want_path, &want_len);
    assert_non_null(want);
    assert_non_null(memchr(want, 0, want_len)); /* else this shows nothing */
    char *streamed[] = {nib, "--raw", "-n", "20", "-o", "temperature=0", "b", NULL};
    char *whole[] = {nib, "--raw", "--no-stream", "-n", "20", "-o", "temperature=0", "b", NULL};
    for (int k = 0; k < 2; k++) {
        assert_int_equal(run_to_file(k ? whole : streamed, got_path), 0);
        size_t got_len;
        char *got = nbt_read_file(got_path, &got_len);
        assert_non_null(got);
        assert_int_equal(got_len, want_len);
        assert_memory_equal(got, want, want_len);
        free(got);
    }
    free(want);
    private_env_end();
}

/* ------------------------------------------------------------------ slow reader */

typedef struct flood {
    nb_client *c;
    int n;               /* tokenize requests to send */
    const char *text;
    atomic_int sent;
    atomic_int done;
} flood;

/* Keep asking for large answers without ever reading one. */
static void *flood_thread(void *arg)
{
    flood *f = arg;
    size_t tl = strlen(f->text);
    char *line = malloc(tl + 64);
    for (int i = 0; i < f->n; i++) {
        int n = snprintf(line, tl + 64, "{\"op\":\"tokenize\",\"id\":%d,\"text\":\"%s\"}", i, f->text);
        if (nb_client_send(f->c, line, (size_t)n))
            break; /* the daemon dropped us */
        atomic_fetch_add(&f->sent, 1);
    }
    free(line);
    atomic_store(&f->done, 1);
    return NULL;
}

/* A client that stops reading while asking for far more than the limit of
 * unread output: everyone else is answered meanwhile, the daemon's memory
 * stays within the limit (plus what one answer takes to build), and the
 * slow client is dropped and its running request cancelled. */
static void test_slow_reader(void **state)
{
    (void)state;
    const char *extra[] = {"-s", "2", "-c", "65536", NULL};
    nbt_daemon d;
#ifdef __SANITIZE_ADDRESS__
    /* AddressSanitizer keeps freed memory in quarantine (256 MB) to catch
     * use after free; the daemon's memory is measured without it */
    char *saved = getenv("ASAN_OPTIONS") ? strdup(getenv("ASAN_OPTIONS")) : NULL;
    char opts[1024];
    snprintf(opts, sizeof opts, "%s%squarantine_size_mb=0", saved ? saved : "", saved ? ":" : "");
    setenv("ASAN_OPTIONS", opts, 1);
#endif
    nbt_daemon_start(&d, model_a, extra);
#ifdef __SANITIZE_ADDRESS__
    if (saved) {
        setenv("ASAN_OPTIONS", saved, 1);
        free(saved);
    } else {
        unsetenv("ASAN_OPTIONS");
    }
#endif
    track(d.pid);
    char *want = answer(d.sock, greedy);
    /* warm up the paths the flood takes, then the baseline */
    for (int i = 0; i < 3; i++)
        free(answer(d.sock, greedy));
    long rss0 = rss_kb(d.pid);

    /* each answer is ~100k token ids, more than 400 KiB of JSON */
    size_t tl = 100000;
    char *text = malloc(tl + 1);
    uint64_t x = 1;
    for (size_t i = 0; i < tl; i++) {
        x = x * 6364136223846793005ull + 1442695040888963407ull;
        text[i] = "abcdefghijklmnopqrstuvwxyz ,.0123456789"[(x >> 33) % 39];
    }
    text[tl] = 0;
    nb_client *slow = nbt_connect(d.sock);
    int rcv = 4096;
    setsockopt(nb_client_fd(slow), SOL_SOCKET, SO_RCVBUF, &rcv, sizeof rcv);
    send_line(slow, endless); /* a generation that would run for a long time */
    flood f = {slow, 400, text, 0, 0};
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, flood_thread, &f), 0);

    /* meanwhile another client is answered, correctly, every time */
    long rss_max = rss0;
    double worst = 0;
    int rounds = 0;
    while (!atomic_load(&f.done) || rounds < 5) {
        double t0 = nbt_now_ms();
        char *got = answer(d.sock, greedy);
        double ms = nbt_now_ms() - t0;
        worst = ms > worst ? ms : worst;
        assert_string_equal(got, want);
        free(got);
        long r = rss_kb(d.pid);
        rss_max = r > rss_max ? r : rss_max;
        rounds++;
        assert_true(rounds < 100000);
    }
    pthread_join(th, NULL);
    printf("    the slow client sent %d requests; another client was answered %d times "
           "meanwhile (slowest %.0f ms); RSS %ld KiB before, at most %ld KiB during\n",
           (int)f.sent, rounds, worst, rss0, rss_max);
    /* what it can still read is what the kernel buffered plus at most the
     * limit, then the end of the stream */
    size_t got = 0;
    char *line;
    nb_status st;
    while ((st = nb_client_read(slow, &line, NULL, 10000)) == NB_OK && line) {
        got += strlen(line) + 1;
        free(line);
    }
    assert_int_equal(st, NB_ERR_IO);
    printf("    it could read %zu bytes, then the end of the stream\n", got);
    assert_true(got <= MAX_OUT + (4u << 20));
    nb_client_close(slow);
    /* its generation was cancelled: no busy slot, and counted */
    double end = nbt_now_ms() + 10000;
    json_t *s;
    while (busy_slots(s = status_of(d.sock)) && nbt_now_ms() < end) {
        json_decref(s);
        usleep(20000);
    }
    assert_int_equal(busy_slots(s), 0);
    assert_true(num(s, "cancelled") >= 1); /* with the tokenizes still queued */
    json_decref(s);
    /* memory: bounded by the limit, not by what was asked (400 answers of
     * more than 400 KiB each, 160 MiB) */
    assert_true(rss_max - rss0 < 48 * 1024);
    reaped(d.pid);
    assert_int_equal(nbt_daemon_stop(&d), 0);
    free(text);
    free(want);
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    setvbuf(stdout, NULL, _IOLBF, 0);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_kill_client_library, cleanup),
        cmocka_unit_test_teardown(test_kill_nib, cleanup),
        cmocka_unit_test_teardown(test_model_renamed_over, cleanup),
        cmocka_unit_test_teardown(test_model_truncated, cleanup),
        cmocka_unit_test_teardown(test_history_disk_full, cleanup),
        cmocka_unit_test_teardown(test_pull_disk_full, cleanup),
        cmocka_unit_test_teardown(test_nul_byte_answer, cleanup),
        cmocka_unit_test_teardown(test_slow_reader, cleanup),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
