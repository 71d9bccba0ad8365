/* testutil.c - see testutil.h. */
#include "testutil.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pty.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "nibble.h"

static int is_dir(const char *p)
{
    struct stat st;
    return p && stat(p, &st) == 0 && S_ISDIR(st.st_mode);
}

const char *nbt_data_dir(void)
{
    static char buf[4096];
    static int done;
    if (done)
        return buf[0] ? buf : NULL;
    done = 1;
    const char *env = getenv("NIBBLE_TEST_DATA");
    if (env && *env) {
        if (is_dir(env))
            snprintf(buf, sizeof buf, "%s", env);
        return buf[0] ? buf : NULL;
    }
    const char *src = getenv("NIBBLE_SRC");
    snprintf(buf, sizeof buf, "%s/../shared", src && *src ? src : ".");
    if (!is_dir(buf))
        buf[0] = 0;
    return buf[0] ? buf : NULL;
}

char *nbt_data_path(const char *rel)
{
    const char *d = nbt_data_dir();
    if (!d)
        return NULL;
    size_t n = strlen(d) + strlen(rel) + 2;
    char *p = malloc(n);
    if (p)
        snprintf(p, n, "%s/%s", d, rel);
    return p;
}

void nbt_note_no_data(void)
{
    static int said;
    if (!said) {
        said = 1;
        printf("skipped: no reference data (set NIBBLE_TEST_DATA or put ../shared beside the checkout)\n");
        fflush(stdout);
    }
}

const char *nbt_bin(const char *name)
{
    static char buf[4096];
    const char *d = getenv("NIBBLE_BIN");
    snprintf(buf, sizeof buf, "%s/%s", d && *d ? d : "build/bin", name);
    return buf;
}

char *nbt_read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap + 1);
    size_t r;
    while (buf && (r = fread(buf + n, 1, cap - n, f)) > 0) {
        n += r;
        if (n == cap) {
            char *nb = realloc(buf, cap * 2 + 1);
            if (!nb) {
                free(buf);
                buf = NULL;
                break;
            }
            buf = nb;
            cap *= 2;
        }
    }
    fclose(f);
    if (!buf)
        return NULL;
    buf[n] = 0;
    if (len)
        *len = n;
    return buf;
}

char *nbt_write_temp(const void *data, size_t len, const char *suffix)
{
    const char *tmp = getenv("TMPDIR");
    char path[4096];
    snprintf(path, sizeof path, "%s/nibble-test-XXXXXX%s", tmp && *tmp ? tmp : "/tmp",
             suffix ? suffix : "");
    int fd = mkstemps(path, suffix ? (int)strlen(suffix) : 0);
    if (fd < 0)
        return NULL;
    const char *p = data;
    while (len > 0) {
        ssize_t w = write(fd, p, len);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            close(fd);
            unlink(path);
            return NULL;
        }
        p += w;
        len -= (size_t)w;
    }
    close(fd);
    return strdup(path);
}

struct sink {
    int fd;
    char *buf;
    size_t len, cap;
};

static void sink_read(struct sink *s)
{
    char tmp[65536];
    ssize_t r = read(s->fd, tmp, sizeof tmp);
    if (r <= 0) {
        if (r == 0 || (errno != EINTR && errno != EAGAIN)) {
            close(s->fd);
            s->fd = -1;
        }
        return;
    }
    if (s->len + (size_t)r + 1 > s->cap) {
        size_t nc = (s->cap ? s->cap * 2 : 65536) + (size_t)r;
        char *nb = realloc(s->buf, nc);
        if (!nb)
            return;
        s->buf = nb;
        s->cap = nc;
    }
    memcpy(s->buf + s->len, tmp, (size_t)r);
    s->len += (size_t)r;
    s->buf[s->len] = 0;
}

/* Replace this (child) process with argv, through NIBBLE_TEST_RUNNER when
 * that is set: under make test-aarch64 the tests run in qemu-user, and the
 * programs they start (nibble, or the test itself again) are aarch64
 * binaries as well, which the host kernel cannot start by itself.  The
 * runner is split at spaces; no allocation, as this runs after fork(). */
static void exec_program(char *const argv[])
{
    const char *runner = getenv("NIBBLE_TEST_RUNNER");
    if (!runner || !*runner) {
        execv(argv[0], argv);
        return;
    }
    char words[1024], *args[64];
    int n = 0;
    snprintf(words, sizeof words, "%s", runner);
    for (char *p = strtok(words, " "); p && n < 32; p = strtok(NULL, " "))
        args[n++] = p;
    for (int i = 0; argv[i] && n < 63; i++)
        args[n++] = argv[i];
    args[n] = NULL;
    execvp(args[0], args);
}

int nbt_run(char *const argv[], char **out, char **err, int timeout_s)
{
    return nbt_run_with(argv, NULL, out, err, timeout_s);
}

int nbt_run_with(char *const argv[], const nbt_run_opts *o, char **out, char **err,
                 int timeout_s)
{
    int po[2], pe[2];
    if (pipe(po) < 0)
        return -1;
    if (pipe(pe) < 0) {
        close(po[0]);
        close(po[1]);
        return -1;
    }
    pid_t pid = fork();
    if (pid < 0)
        return -1;
    if (pid == 0) {
        int in = open(o && o->stdin_path ? o->stdin_path : "/dev/null", O_RDONLY);
        if (in >= 0)
            dup2(in, 0);
        if (o && o->fsize > 0) {
            struct rlimit rl = {(rlim_t)o->fsize, (rlim_t)o->fsize};
            setrlimit(RLIMIT_FSIZE, &rl);
            signal(SIGXFSZ, SIG_IGN);
        }
        dup2(po[1], 1);
        dup2(pe[1], 2);
        close(po[0]);
        close(pe[0]);
        exec_program(argv);
        fprintf(stderr, "cannot run %s: %s\n", argv[0], strerror(errno));
        _exit(127);
    }
    close(po[1]);
    close(pe[1]);
    struct sink s[2] = {{po[0], NULL, 0, 0}, {pe[0], NULL, 0, 0}};
    time_t start = time(NULL);
    int killed = 0;
    while (s[0].fd >= 0 || s[1].fd >= 0) {
        struct pollfd p[2];
        int np = 0, map[2];
        for (int i = 0; i < 2; i++)
            if (s[i].fd >= 0) {
                p[np].fd = s[i].fd;
                p[np].events = POLLIN;
                map[np++] = i;
            }
        int r = poll(p, (nfds_t)np, 200);
        if (r > 0)
            for (int i = 0; i < np; i++)
                if (p[i].revents)
                    sink_read(&s[map[i]]);
        if (timeout_s > 0 && !killed && time(NULL) - start > timeout_s) {
            kill(pid, SIGKILL);
            killed = 1;
        }
    }
    int status;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
        ;
    for (int i = 0; i < 2; i++) {
        char **dst = i ? err : out;
        if (!s[i].buf)
            s[i].buf = calloc(1, 1);
        if (dst)
            *dst = s[i].buf;
        else
            free(s[i].buf);
    }
    if (WIFSIGNALED(status))
        return 128 + WTERMSIG(status);
    return WEXITSTATUS(status);
}

double nbt_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static int daemon_answers(const char *sock)
{
    nb_client_params p = nb_client_default_params();
    p.socket = sock;
    p.autostart = 0;
    nb_client *c = NULL;
    char err[512];
    if (nb_client_connect(&p, &c, err, sizeof err))
        return 0;
    nb_client_close(c);
    return 1;
}

void nbt_daemon_start(nbt_daemon *d, const char *model_path, const char *const *extra)
{
    snprintf(d->dir, sizeof d->dir, "/tmp/nibd-test-XXXXXX");
    assert_non_null(mkdtemp(d->dir));
    snprintf(d->sock, sizeof d->sock, "%s/run/nibd.sock", d->dir);
    const char *argv[40];
    int n = 0;
    char bin[4096];
    snprintf(bin, sizeof bin, "%s", nbt_bin("nibd"));
    argv[n++] = bin;
    argv[n++] = "-m";
    argv[n++] = model_path;
    argv[n++] = "--socket";
    argv[n++] = d->sock;
    argv[n++] = "--config";
    argv[n++] = "/dev/null";
    argv[n++] = "-t";
    argv[n++] = "2";
    for (int i = 0; extra && extra[i] && n < 39; i++)
        argv[n++] = extra[i];
    argv[n] = NULL;
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
    while (!daemon_answers(d->sock)) {
        int status;
        if (waitpid(d->pid, &status, WNOHANG) == d->pid)
            fail_msg("nibd exited at start-up (status %d)", status);
        if (nbt_now_ms() > deadline)
            fail_msg("nibd did not start");
        usleep(10000);
    }
}

int nbt_daemon_stop(nbt_daemon *d)
{
    int status = -1;
    if (d->pid > 0) {
        kill(d->pid, SIGTERM);
        waitpid(d->pid, &status, 0);
        d->pid = 0;
    }
    char run[160];
    snprintf(run, sizeof run, "%s/run", d->dir);
    rmdir(run);
    rmdir(d->dir);
    return status;
}

int nbt_find_program(const char *name, char *buf, size_t cap)
{
    const char *path = getenv("PATH");
    char dirs[8192];
    snprintf(dirs, sizeof dirs, "%s", path && *path ? path : "/usr/bin:/bin");
    for (char *save, *d = strtok_r(dirs, ":", &save); d; d = strtok_r(NULL, ":", &save)) {
        snprintf(buf, cap, "%s/%s", *d ? d : ".", name);
        if (access(buf, X_OK) == 0)
            return 1;
    }
    return 0;
}

char *nbt_eval_text(const char *model, const char *prompt, int n)
{
    return nbt_eval_text_args(model, prompt, n, NULL);
}

char *nbt_eval_text_args(const char *model, const char *prompt, int n, const char *const *extra)
{
    char ns[16], bin[4096];
    snprintf(ns, sizeof ns, "%d", n);
    snprintf(bin, sizeof bin, "%s", nbt_bin("nibble"));
    char *argv[32] = {bin, "eval", "-m", (char *)model, "-p", (char *)prompt, "--greedy", ns,
                      "--json"};
    int argc = 9;
    for (int i = 0; extra && extra[i] && argc < 31; i++)
        argv[argc++] = (char *)extra[i];
    argv[argc] = NULL;
    char *out = NULL, *err = NULL;
    int rc = nbt_run(argv, &out, &err, 60);
    if (rc != 0)
        fail_msg("nibble eval: exit %d: %s", rc, err ? err : "");
    json_t *j = json_loads(out, 0, NULL);
    assert_non_null(j);
    const char *t = json_string_value(json_object_get(j, "text"));
    assert_non_null(t);
    char *text = strdup(t);
    json_decref(j);
    free(out), free(err);
    assert_true(strlen(text) > 0);
    return text;
}

nb_client *nbt_connect(const char *sock)
{
    nb_client_params p = nb_client_default_params();
    p.socket = sock;
    p.autostart = 0;
    nb_client *c = NULL;
    char err[512];
    if (nb_client_connect(&p, &c, err, sizeof err))
        return NULL;
    return c;
}

void nbt_send(nb_client *c, const char *fmt, ...)
{
    char buf[8192];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    assert_true(n > 0 && (size_t)n < sizeof buf);
    assert_int_equal(nb_client_send(c, buf, (size_t)n), NB_OK);
}

json_t *nbt_event(nb_client *c, int timeout_ms)
{
    char *line;
    nb_status st = nb_client_read(c, &line, NULL, timeout_ms);
    if (st || !line)
        return NULL;
    json_t *j = json_loads(line, JSON_ALLOW_NUL, NULL); /* answers may hold NUL bytes */
    if (!j)
        fail_msg("not JSON: %.200s", line);
    free(line);
    return j;
}

json_t *nbt_finish(nb_client *c, char **text)
{
    size_t cap = 1 << 16, len = 0;
    char *t = calloc(1, cap);
    assert_non_null(t);
    for (;;) {
        json_t *e = nbt_event(c, 30000);
        if (!e)
            fail_msg("no final event");
        if (json_is_true(json_object_get(e, "done"))) {
            if (text)
                *text = t;
            else
                free(t);
            return e;
        }
        const char *piece = json_string_value(json_object_get(e, "text"));
        if (piece) {
            size_t n = strlen(piece);
            assert_true(len + n < cap);
            memcpy(t + len, piece, n + 1);
            len += n;
        }
        json_decref(e);
    }
}

/* ------------------------------------------------------------------ pty */

void nbt_term_start(nbt_term *t, char *const argv[])
{
    struct winsize ws = {30, 100, 0, 0};
    t->len = 0;
    t->buf[0] = 0;
    t->pid = forkpty(&t->fd, NULL, NULL, &ws);
    assert_true(t->pid >= 0);
    if (t->pid == 0) {
        execv(argv[0], argv);
        _exit(127);
    }
}

/* The last part of the screen since `from` (cmocka cuts long messages). */
static const char *term_tail(const nbt_term *t, size_t from)
{
    return t->len - from > 600 ? t->buf + t->len - 600 : t->buf + from;
}

size_t nbt_term_wait(nbt_term *t, size_t from, const char *want, int timeout_ms)
{
    double end = nbt_now_ms() + timeout_ms;
    for (;;) {
        char *hit = strstr(t->buf + from, want);
        if (hit)
            return (size_t)(hit - t->buf);
        double left = end - nbt_now_ms();
        if (left <= 0)
            fail_msg("waited for '%s'; the terminal ends with:\n%s", want, term_tail(t, from));
        struct pollfd pf = {t->fd, POLLIN, 0};
        if (poll(&pf, 1, (int)left) <= 0)
            continue;
        ssize_t r = read(t->fd, t->buf + t->len, sizeof t->buf - 1 - t->len);
        if (r <= 0)
            fail_msg("the terminal closed waiting for '%s'; it ends with:\n%s", want,
                     term_tail(t, from));
        t->len += (size_t)r;
        t->buf[t->len] = 0;
    }
}

void nbt_term_send(nbt_term *t, const char *keys)
{
    assert_int_equal(write(t->fd, keys, strlen(keys)), (ssize_t)strlen(keys));
}

void nbt_term_edit(nbt_term *t, const char *keys)
{
    struct termios tio;
    double end = nbt_now_ms() + 10000;
    while (tcgetattr(t->fd, &tio) == 0 && (tio.c_lflag & ICANON)) {
        if (nbt_now_ms() > end)
            fail_msg("the line editor never took the terminal; it ends with:\n%s",
                     term_tail(t, 0));
        usleep(2000);
    }
    nbt_term_send(t, keys);
}

int nbt_term_exit(nbt_term *t)
{
    int status;
    double end = nbt_now_ms() + 10000;
    while (waitpid(t->pid, &status, WNOHANG) == 0) {
        if (nbt_now_ms() > end) {
            kill(t->pid, SIGKILL);
            fail_msg("the program did not exit; the terminal ends with:\n%s", term_tail(t, 0));
        }
        struct pollfd pf = {t->fd, POLLIN, 0};
        if (poll(&pf, 1, 10) > 0 && t->len < sizeof t->buf - 1) {
            ssize_t r = read(t->fd, t->buf + t->len, sizeof t->buf - 1 - t->len);
            if (r > 0) {
                t->len += (size_t)r;
                t->buf[t->len] = 0;
            } else {
                usleep(10000);
            }
        }
    }
    close(t->fd);
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

int nbt_count(const char *s, const char *what)
{
    int n = 0;
    for (const char *p = s; (p = strstr(p, what)); p += strlen(what))
        n++;
    return n;
}
