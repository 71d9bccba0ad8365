/*
 * nibd.c - the nibble daemon: keeps one model resident and serves every
 * client over a Unix socket (doc/protocol.md, doc/nibd.8).
 *
 * The main thread runs a poll() loop over the listening socket, the
 * clients and two pipes (one written by signal handlers, one by the
 * scheduler when it has events to send).  It reads lines, parses them
 * (protocol.c), answers status, cancel and shutdown itself, and hands
 * generation and tokenizing to the scheduler's worker thread (sched.c),
 * which emits events into each connection's output buffer.  Connections
 * are reference-counted: the loop holds one reference and every job of the
 * connection another, so a client that hangs up mid-stream only cancels
 * its own jobs.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <limits.h>
#include <malloc.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "sched.h"

/* Limits on what one client can make the daemon hold (doc/protocol.md,
 * "Limits").  A client that leaves more than MAX_OUT bytes of events
 * unread is dropped and its requests cancelled: a reader that stalls must
 * not grow the daemon without bound.  One event always fits into an empty
 * buffer, so a single large answer (stream: false) still goes through. */
#define MAX_OUT (8u << 20)       /* unread event bytes before a client is dropped */
#define MAX_CONNS 256            /* connections at once (every one is the same user's) */
#define MAX_JOBS_PER_CONN 64
#define READ_CHUNK 65536

static const char usage[] =
    "usage: nibd -m MODEL [options]\n"
    "\n"
    "Keep a model resident and serve clients over a Unix socket.\n"
    "\n"
    "  -m, --model FILE       the GGUF model (config: model)\n"
    "  -t, --threads N        threads (default: the physical core count)\n"
    "  -c, --ctx-size N       context of each slot in tokens (default: the model's,\n"
    "                         at most 4096)\n"
    "  -s, --slots N          KV cache slots, 1..64: conversations kept warm (default 4)\n"
    "  -k, --keep-alive SECS  release the weights after this long idle (default 300;\n"
    "                         -1 = never); the next request loads them again\n"
    "  -l, --log-level LEVEL  error, warn, info (default) or debug\n"
    "      --lora NAME=FILE   load a LoRA adapter (llama.cpp GGUF) that requests\n"
    "                         apply by NAME, with their own scale; repeatable, at\n"
    "                         most 16; NAME is 1-64 of A-Z a-z 0-9 . _ -\n"
    "      --socket PATH      (default: $XDG_RUNTIME_DIR/nibble/nibd.sock, or\n"
    "                         /tmp/nibble-$UID/nibd.sock)\n"
    "      --config FILE      (default: $XDG_CONFIG_HOME/nibble/config)\n"
    "      --daemonize        detach; log to $XDG_STATE_HOME/nibble/nibd.log\n"
    "  -h, --help             show this help\n"
    "  -V, --version          show the version\n"
    "\n"
    "Options override the config file.  SIGTERM, SIGINT or a shutdown request end\n"
    "every request with 'cancelled', remove the socket and exit 0.\n"
    "Exit status: 0 after a clean shutdown, 1 cannot start (bad model, another nibd\n"
    "on the socket), 2 usage error.\n";

/* ------------------------------------------------------------------ conns */

typedef struct conn {
    nbd_sink sink;          /* first: the scheduler's handle is the conn */
    int fd;
    atomic_int refs;
    pthread_mutex_t mu;     /* guards out, closed, jobs */
    int closed;
    int fatal;              /* stop reading: frame too large (answer, then close) */
    int dropped;            /* output overflow: close at once, cancelling its jobs */
    int eof;                /* the client shut its sending side: answer, then close */
    char *out;
    size_t out_len, out_cap;
    nbd_job *jobs[MAX_JOBS_PER_CONN];
    int n_jobs;
    char *in;               /* bytes of an unfinished line */
    size_t in_len, in_cap;
    struct conn *next;
} conn;

static conn *conns;
static int wake_pipe[2] = {-1, -1}, signal_pipe[2] = {-1, -1};
static nbd_sched *sched;
static int shutting_down;

static void wake(void)
{
    char c = 1;
    ssize_t r = write(wake_pipe[1], &c, 1);
    (void)r; /* a full pipe already means "wake up" */
}

static void conn_unref(conn *c)
{
    if (atomic_fetch_sub(&c->refs, 1) != 1)
        return;
    pthread_mutex_destroy(&c->mu);
    free(c->out);
    free(c->in);
    free(c);
}

/* Under c->mu. */
static void conn_append(conn *c, const char *line, size_t n)
{
    if (c->closed || c->fatal || c->dropped)
        return;
    if (c->out_len && c->out_len + n > MAX_OUT) {
        nbd_log(1, "a client left %zu bytes unread (at most %u); dropping it", c->out_len,
                MAX_OUT);
        c->dropped = 1;
        free(c->out);
        c->out = NULL;
        c->out_len = c->out_cap = 0;
        return;
    }
    if (c->out_len + n > c->out_cap) {
        size_t cap = c->out_cap ? c->out_cap : 4096;
        while (cap < c->out_len + n)
            cap *= 2;
        char *no = realloc(c->out, cap);
        if (!no) {
            c->dropped = 1;
            return;
        }
        c->out = no;
        c->out_cap = cap;
    }
    memcpy(c->out + c->out_len, line, n);
    c->out_len += n;
}

static void reply(conn *c, char *line)
{
    if (!line)
        return;
    pthread_mutex_lock(&c->mu);
    conn_append(c, line, strlen(line));
    pthread_mutex_unlock(&c->mu);
    free(line);
}

/* The scheduler's side (worker thread). */
static void sink_emit(nbd_sink *s, char *line)
{
    reply((conn *)s, line);
    wake();
}

static void sink_release(nbd_sink *s, nbd_job *job)
{
    conn *c = (conn *)s;
    pthread_mutex_lock(&c->mu);
    for (int i = 0; i < c->n_jobs; i++)
        if (c->jobs[i] == job) {
            c->jobs[i] = c->jobs[--c->n_jobs];
            break;
        }
    pthread_mutex_unlock(&c->mu);
    conn_unref(c);
    wake(); /* a half-closed connection may be finished now */
}

static conn *conn_new(int fd)
{
    conn *c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    c->sink.emit = sink_emit;
    c->sink.release = sink_release;
    c->fd = fd;
    atomic_init(&c->refs, 1);
    pthread_mutex_init(&c->mu, NULL);
    return c;
}

/* Cancel the connection's jobs and drop the loop's reference. */
static void conn_close(conn *c)
{
    pthread_mutex_lock(&c->mu);
    c->closed = 1;
    int had = c->n_jobs;
    for (int i = 0; i < c->n_jobs; i++)
        atomic_store(&c->jobs[i]->cancelled, 1);
    pthread_mutex_unlock(&c->mu);
    if (had)
        nbd_sched_poke(sched);
    if (c->fd >= 0)
        close(c->fd);
    c->fd = -1;
    conn_unref(c);
}

/* ------------------------------------------------------------------ requests */

static void handle_line(conn *c, const char *line, size_t len)
{
    nbd_request req;
    char msg[512];
    const char *code = nbd_parse(line, len, &req, msg, sizeof msg);
    if (code) {
        nbd_log(3, "bad request: %s: %s", code, msg);
        reply(c, nbd_event_error(req.id, code, msg));
        nbd_request_free(&req);
        return;
    }
    switch (req.op) {
    case NBD_OP_STATUS:
        reply(c, nbd_event_object(req.id, nbd_sched_status(sched)));
        nbd_request_free(&req);
        return;
    case NBD_OP_CANCEL: {
        int found = 0;
        pthread_mutex_lock(&c->mu);
        for (int i = 0; i < c->n_jobs; i++)
            if (c->jobs[i]->req.id && json_equal(c->jobs[i]->req.id, req.target) &&
                !atomic_load(&c->jobs[i]->finished)) {
                atomic_store(&c->jobs[i]->cancelled, 1);
                found = 1;
            }
        pthread_mutex_unlock(&c->mu);
        if (found)
            nbd_sched_poke(sched);
        reply(c, nbd_event_object(req.id, json_pack("{s:b}", "ok", found)));
        nbd_request_free(&req);
        return;
    }
    case NBD_OP_SHUTDOWN:
        reply(c, nbd_event_object(req.id, json_pack("{s:b}", "ok", 1)));
        nbd_request_free(&req);
        nbd_log(2, "shutdown requested");
        shutting_down = 1;
        return;
    default:
        break;
    }
    nbd_job *job = calloc(1, sizeof *job);
    if (!job) {
        reply(c, nbd_event_error(req.id, NBD_E_INTERNAL, "out of memory"));
        nbd_request_free(&req);
        return;
    }
    job->req = req;
    job->sink = &c->sink;
    atomic_init(&job->cancelled, 0);
    atomic_init(&job->finished, 0);
    pthread_mutex_lock(&c->mu);
    int full = c->n_jobs >= MAX_JOBS_PER_CONN;
    if (!full) {
        c->jobs[c->n_jobs++] = job;
        atomic_fetch_add(&c->refs, 1);
    }
    pthread_mutex_unlock(&c->mu);
    if (full || nbd_sched_submit(sched, job)) {
        if (!full) { /* undo the registration */
            pthread_mutex_lock(&c->mu);
            c->n_jobs--;
            pthread_mutex_unlock(&c->mu);
            atomic_fetch_sub(&c->refs, 1);
        }
        reply(c, nbd_event_error(req.id, NBD_E_BUSY,
                                 full ? "too many requests on this connection (at most 64)"
                                      : "too many requests are waiting (at most 256)"));
        nbd_request_free(&job->req);
        free(job);
    }
}

/* Read what the client sent; returns -1 when the connection should close. */
static int conn_read(conn *c)
{
    for (;;) {
        if (c->in_cap - c->in_len < READ_CHUNK) {
            size_t cap = c->in_cap ? c->in_cap * 2 : 2 * READ_CHUNK;
            if (cap > NBD_MAX_FRAME + 2 * READ_CHUNK)
                cap = NBD_MAX_FRAME + 2 * READ_CHUNK;
            char *ni = cap > c->in_cap ? realloc(c->in, cap) : c->in;
            if (!ni)
                return -1;
            c->in = ni;
            c->in_cap = cap;
        }
        ssize_t r = read(c->fd, c->in + c->in_len, c->in_cap - c->in_len);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return 0;
        if (r < 0)
            return -1;
        if (r == 0) {
            /* half-closed (echo ... | socat): the answers are still wanted */
            c->eof = 1;
            return 0;
        }
        c->in_len += (size_t)r;
        /* handle every complete line */
        size_t start = 0;
        int too_long = 0;
        for (;;) {
            char *nl = memchr(c->in + start, '\n', c->in_len - start);
            if (!nl)
                break;
            size_t len = (size_t)(nl - (c->in + start));
            if (len > NBD_MAX_FRAME) {
                /* the whole line arrived in the read that crossed the limit */
                too_long = 1;
                break;
            }
            if (len && !shutting_down)
                handle_line(c, c->in + start, len);
            start += len + 1;
        }
        memmove(c->in, c->in + start, c->in_len - start);
        c->in_len -= start;
        if (!c->in_len && c->in_cap > 2 * READ_CHUNK) {
            /* a large request is done with: do not keep its buffer */
            free(c->in);
            c->in = NULL;
            c->in_cap = 0;
        }
        if (too_long || c->in_len > NBD_MAX_FRAME) {
            char msg[128];
            snprintf(msg, sizeof msg, "a line is longer than %u bytes", NBD_MAX_FRAME);
            nbd_log(1, "dropping a client: %s", msg);
            reply(c, nbd_event_error(NULL, NBD_E_FRAME, msg));
            pthread_mutex_lock(&c->mu);
            c->fatal = 1;
            pthread_mutex_unlock(&c->mu);
            c->in_len = 0;
            return 0; /* flush the error, then close */
        }
        if ((size_t)r < READ_CHUNK)
            return 0;
    }
}

/* Write queued events; returns -1 when the connection should close. */
static int conn_write(conn *c)
{
    pthread_mutex_lock(&c->mu);
    int rc = 0;
    while (c->out_len) {
        ssize_t w = send(c->fd, c->out, c->out_len, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            break;
        if (w <= 0) {
            rc = -1;
            break;
        }
        memmove(c->out, c->out + w, c->out_len - (size_t)w);
        c->out_len -= (size_t)w;
    }
    pthread_mutex_unlock(&c->mu);
    return rc;
}

/* ------------------------------------------------------------------ socket */

/* The socket's directory.  nibble's own (the default place, or one nibd
 * creates) must belong to the user and is kept mode 0700.  A directory the
 * user named that already exists (/tmp, say) is not ours to change: it is
 * used as it is, unless others may replace files in it (writable by group
 * or others without the sticky bit). */
static int ensure_dir(const char *dir, int is_default, char *err, size_t errlen)
{
    struct stat st;
    int existed = lstat(dir, &st) == 0;
    /* with its parents: an $XDG_RUNTIME_DIR that does not exist yet, say */
    if (nb_mkdirs(dir) != 0) {
        snprintf(err, errlen, "cannot create %s: %s", dir, strerror(errno));
        return -1;
    }
    if (lstat(dir, &st) != 0 || !S_ISDIR(st.st_mode)) {
        snprintf(err, errlen, "%s is not a directory", dir);
        return -1;
    }
    if (existed && !is_default) {
        if ((st.st_mode & (S_IWGRP | S_IWOTH)) && !(st.st_mode & S_ISVTX)) {
            snprintf(err, errlen, "%s is writable by others; choose a private directory", dir);
            return -1;
        }
        return 0;
    }
    /* /tmp/nibble-$UID could have been made by someone else */
    if (st.st_uid != getuid()) {
        snprintf(err, errlen, "%s belongs to another user; refusing to use it", dir);
        return -1;
    }
    if ((st.st_mode & 0777) != 0700 && chmod(dir, 0700) != 0) {
        snprintf(err, errlen, "cannot make %s private: %s", dir, strerror(errno));
        return -1;
    }
    return 0;
}

static char lock_path[PATH_MAX + 8], sock_path[PATH_MAX];

/* The directory, the lock that keeps a second daemon away, and the socket. */
static int open_socket(const char *path, char *err, size_t errlen)
{
    struct sockaddr_un sa;
    if (strlen(path) >= sizeof sa.sun_path) {
        snprintf(err, errlen, "socket path too long (at most %zu bytes): %s",
                 sizeof sa.sun_path - 1, path);
        return -1;
    }
    snprintf(sock_path, sizeof sock_path, "%s", path);
    char dir[PATH_MAX];
    snprintf(dir, sizeof dir, "%s", path);
    char *slash = strrchr(dir, '/');
    if (slash && slash != dir) {
        *slash = 0;
        char def[PATH_MAX];
        int is_default = nb_socket_path(def, sizeof def) == NB_OK && !strcmp(def, path);
        if (ensure_dir(dir, is_default, err, errlen))
            return -1;
    }
    snprintf(lock_path, sizeof lock_path, "%s.lock", path);
    int lfd = open(lock_path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (lfd < 0) {
        snprintf(err, errlen, "cannot open %s: %s", lock_path, strerror(errno));
        return -1;
    }
    if (flock(lfd, LOCK_EX | LOCK_NB) != 0) {
        char pid[32] = "";
        ssize_t n = pread(lfd, pid, sizeof pid - 1, 0);
        pid[n > 0 ? n : 0] = 0;
        pid[strcspn(pid, "\n")] = 0;
        snprintf(err, errlen, "another nibd (pid %s) is already serving %s", pid[0] ? pid : "?",
                 path);
        close(lfd);
        lock_path[0] = 0;
        return -1;
    }
    char pid[32];
    int pl = snprintf(pid, sizeof pid, "%ld\n", (long)getpid());
    if (ftruncate(lfd, 0) != 0 || pwrite(lfd, pid, (size_t)pl, 0) != pl)
        nbd_log(1, "cannot write the pid into %s", lock_path);
    /* we hold the lock: a socket file left here is stale */
    unlink(path);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0) {
        snprintf(err, errlen, "socket: %s", strerror(errno));
        return -1;
    }
    memset(&sa, 0, sizeof sa);
    sa.sun_family = AF_UNIX;
    memcpy(sa.sun_path, path, strlen(path) + 1);
    mode_t old = umask(0177); /* the socket is born 0600 */
    int b = bind(fd, (struct sockaddr *)&sa, sizeof sa);
    umask(old);
    if (b != 0 || chmod(path, 0600) != 0 || listen(fd, 64) != 0) {
        snprintf(err, errlen, "cannot listen on %s: %s", path, strerror(errno));
        close(fd);
        return -1;
    }
    /* the lock file descriptor stays open (and locked) until exit */
    return fd;
}

static int spare_fd = -1; /* given up to accept (and refuse) when out of descriptors */

static void accept_clients(int lfd)
{
    for (;;) {
        int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0 && (errno == EMFILE || errno == ENFILE) && spare_fd >= 0) {
            /* take the connection off the queue, or poll() reports it for
             * ever; accept fails this way whether or not one is waiting */
            close(spare_fd);
            fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
            if (fd >= 0)
                close(fd);
            spare_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
            if (fd < 0)
                return; /* none was waiting */
            nbd_log(1, "out of file descriptors: refused a connection");
            continue;
        }
        if (fd < 0)
            return;
        struct ucred cred = {0, (uid_t)-1, (gid_t)-1};
        socklen_t len = sizeof cred;
        if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0 || cred.uid != getuid()) {
            nbd_log(1, "refused a connection from uid %ld (pid %ld)", (long)cred.uid,
                    (long)cred.pid);
            close(fd);
            continue;
        }
        int n = 0;
        for (conn *k = conns; k; k = k->next)
            n++;
        if (n >= MAX_CONNS) {
            char msg[96];
            snprintf(msg, sizeof msg, "too many connections (at most %d)", MAX_CONNS);
            nbd_log(1, "refused a connection: %s", msg);
            char *line = nbd_event_error(NULL, NBD_E_BUSY, msg);
            if (line && send(fd, line, strlen(line), MSG_NOSIGNAL | MSG_DONTWAIT) < 0)
                (void)0; /* it learns from the closed connection instead */
            free(line);
            close(fd);
            continue;
        }
        conn *c = conn_new(fd);
        if (!c) {
            close(fd);
            continue;
        }
        c->next = conns;
        conns = c;
        nbd_log(3, "client connected (pid %ld)", (long)cred.pid);
    }
}

/* ------------------------------------------------------------------ main */

/* A bus error can only come from the model's mapping (the one file nibd
 * maps): the file was truncated, or rewritten in place, under it, and the
 * weights are gone.  Nothing can be answered without them; say so, leave
 * no socket behind (the next client starts a daemon on whatever the file
 * holds now) and exit.  Only async-signal-safe calls here. */
static char bus_msg[PATH_MAX + 256];
static size_t bus_msg_len;

static void on_bus_error(int sig)
{
    (void)sig;
    ssize_t r = write(2, bus_msg, bus_msg_len);
    (void)r;
    unlink(sock_path);
    unlink(lock_path);
    _exit(1);
}

static void on_signal(int sig)
{
    char c = (char)sig;
    ssize_t r = write(signal_pipe[1], &c, 1);
    (void)r;
}

static int make_pipe(int p[2])
{
    if (pipe(p) != 0)
        return -1;
    for (int i = 0; i < 2; i++) {
        fcntl(p[i], F_SETFL, fcntl(p[i], F_GETFL) | O_NONBLOCK);
        fcntl(p[i], F_SETFD, FD_CLOEXEC);
    }
    return 0;
}

static void drain(int fd)
{
    char buf[256];
    while (read(fd, buf, sizeof buf) > 0)
        ;
}

/* Flush what can be flushed to every client, for at most `secs`. */
static void flush_all(double secs)
{
    struct timespec t0;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (;;) {
        int pending = 0;
        for (conn *c = conns; c; c = c->next)
            if (c->fd >= 0) {
                if (conn_write(c) < 0) {
                    close(c->fd);
                    c->fd = -1;
                    continue;
                }
                pthread_mutex_lock(&c->mu);
                pending |= c->out_len > 0;
                pthread_mutex_unlock(&c->mu);
            }
        struct timespec t;
        clock_gettime(CLOCK_MONOTONIC, &t);
        if (!pending ||
            (double)(t.tv_sec - t0.tv_sec) + (double)(t.tv_nsec - t0.tv_nsec) * 1e-9 > secs)
            return;
        poll(NULL, 0, 5);
    }
}

static int serve(int lfd)
{
    struct pollfd *pfd = NULL;
    conn **pconn = NULL;
    size_t cap = 0;
    int trim = 0; /* connections closed since the last malloc_trim */
    while (!shutting_down) {
        size_t n = 3;
        for (conn *c = conns; c; c = c->next)
            n++;
        if (n > cap) {
            cap = n * 2;
            struct pollfd *np = realloc(pfd, cap * sizeof *np);
            conn **nc = realloc(pconn, cap * sizeof *nc);
            if (!np || !nc) {
                free(np ? np : pfd);
                free(nc ? nc : pconn);
                nbd_log(0, "out of memory");
                return -1;
            }
            pfd = np;
            pconn = nc;
        }
        pfd[0] = (struct pollfd){lfd, POLLIN, 0};
        pfd[1] = (struct pollfd){wake_pipe[0], POLLIN, 0};
        pfd[2] = (struct pollfd){signal_pipe[0], POLLIN, 0};
        size_t k = 3;
        for (conn *c = conns; c; c = c->next) {
            pthread_mutex_lock(&c->mu);
            short ev = (short)((c->fatal || c->eof ? 0 : POLLIN) | (c->out_len ? POLLOUT : 0));
            pthread_mutex_unlock(&c->mu);
            pconn[k] = c;
            pfd[k++] = (struct pollfd){c->fd, ev, 0};
        }
        int ready = poll(pfd, (nfds_t)k, trim ? 100 : -1);
        if (ready < 0) {
            if (errno == EINTR)
                continue;
            nbd_log(0, "poll: %s", strerror(errno));
            break;
        }
        if (ready == 0) {
            /* quiet for a moment after connections went: give their
             * buffers back to the system (the worker does the same when
             * it goes idle) */
            nbd_give_back_memory();
            trim = 0;
            continue;
        }
        if (pfd[2].revents) {
            drain(signal_pipe[0]);
            nbd_log(2, "signal received: shutting down");
            shutting_down = 1;
        }
        if (pfd[1].revents)
            drain(wake_pipe[0]);
        if (pfd[0].revents && !shutting_down)
            accept_clients(lfd);
        for (size_t i = 3; i < k; i++) {
            conn *c = pconn[i];
            int bad = 0;
            if (pfd[i].revents & POLLIN)
                bad = conn_read(c) < 0;
            if (!bad && (pfd[i].revents & (POLLERR | POLLNVAL)))
                bad = 1;
            /* POLLHUP: the client closed both directions (hung up or died) */
            if (!bad && (pfd[i].revents & POLLHUP))
                bad = 1;
            c->fd = bad ? (close(c->fd), -1) : c->fd;
        }
        /* write everything queued (by us or the worker), then drop the
         * connections that are finished */
        for (conn **pp = &conns; *pp;) {
            conn *c = *pp;
            if (c->fd >= 0 && conn_write(c) < 0) {
                close(c->fd);
                c->fd = -1;
            }
            pthread_mutex_lock(&c->mu);
            int done = c->fd < 0 || c->dropped ||
                       ((c->fatal || (c->eof && c->n_jobs == 0)) && c->out_len == 0);
            pthread_mutex_unlock(&c->mu);
            if (done) {
                *pp = c->next;
                conn_close(c);
                trim = 1;
                continue;
            }
            pp = &c->next;
        }
    }
    free(pfd);
    free(pconn);
    return 0;
}

static int level_of(const char *s)
{
    return !strcmp(s, "error") ? 0 : !strcmp(s, "warn") ? 1 : !strcmp(s, "info") ? 2
                                                        : !strcmp(s, "debug") ? 3 : -1;
}

static int daemonize(char *err, size_t errlen, int *ready_fd)
{
    int p[2];
    if (pipe(p) != 0) {
        snprintf(err, errlen, "pipe: %s", strerror(errno));
        return -1;
    }
    pid_t pid = fork();
    if (pid < 0) {
        snprintf(err, errlen, "fork: %s", strerror(errno));
        return -1;
    }
    if (pid > 0) {
        /* the parent waits until the daemon listens (or says why not) */
        close(p[1]);
        char buf[1024];
        ssize_t n = read(p[0], buf, sizeof buf - 1);
        if (n > 0 && buf[0] == 'k')
            _exit(0);
        buf[n > 0 ? n : 0] = 0;
        fprintf(stderr, "nibd: %s\n", n > 0 ? buf : "failed to start (see the log)");
        _exit(1);
    }
    close(p[0]);
    /* a daemon keeps no descriptor its starter handed down but the ready pipe */
    if (p[1] > 3)
        close_range(3, (unsigned)p[1] - 1, 0);
    close_range((unsigned)p[1] + 1, ~0u, 0);
    setsid();
    if (fork() > 0)
        _exit(0);
    if (chdir("/") != 0)
        (void)0;
    char log[PATH_MAX];
    if (nb_dir_path(NB_DIR_STATE, "nibd.log", 1, log, sizeof log) != NB_OK)
        snprintf(log, sizeof log, "/dev/null"); /* no HOME: nowhere to keep a log */
    int null = open("/dev/null", O_RDWR);
    int lf = open(log, O_WRONLY | O_CREAT | O_APPEND, 0600);
    if (null >= 0) {
        dup2(null, 0);
        dup2(lf >= 0 ? lf : null, 1);
        dup2(lf >= 0 ? lf : null, 2);
    }
    if (null > 2)
        close(null);
    if (lf > 2)
        close(lf);
    *ready_fd = p[1];
    return 0;
}

/* One more adapter (from the config file or --lora); 0, or the exit code
 * after a message.  The daemon moves to /: the file is kept as an absolute
 * path. */
static int add_lora(nbd_options *o, const char *name, size_t nl, const char *file)
{
    static char names[NBD_MAX_LORA][NBD_MAX_LORA_NAME + 1], files[NBD_MAX_LORA][PATH_MAX];
    if (o->n_lora == NBD_MAX_LORA) {
        fprintf(stderr, "nibd: at most %d LoRA adapters\n", NBD_MAX_LORA);
        return 2;
    }
    for (int i = 0; i < o->n_lora; i++)
        if (strlen(o->lora_name[i]) == nl && !memcmp(o->lora_name[i], name, nl)) {
            fprintf(stderr, "nibd: two LoRA adapters named '%.*s'\n", (int)nl, name);
            return 2;
        }
    if (!realpath(file, files[o->n_lora])) {
        fprintf(stderr, "nibd: LoRA adapter %.*s: %s: %s\n", (int)nl, name, file, strerror(errno));
        return 1;
    }
    memcpy(names[o->n_lora], name, nl);
    names[o->n_lora][nl] = 0;
    o->lora_name[o->n_lora] = names[o->n_lora];
    o->lora_path[o->n_lora] = files[o->n_lora];
    o->n_lora++;
    return 0;
}

int main(int argc, char **argv)
{
    static const struct option opts[] = {
        {"model", required_argument, 0, 'm'},      {"threads", required_argument, 0, 't'},
        {"ctx-size", required_argument, 0, 'c'},   {"slots", required_argument, 0, 's'},
        {"keep-alive", required_argument, 0, 'k'}, {"log-level", required_argument, 0, 'l'},
        {"socket", required_argument, 0, 'S'},     {"config", required_argument, 0, 'C'},
        {"daemonize", no_argument, 0, 'D'},        {"help", no_argument, 0, 'h'},
        {"lora", required_argument, 0, 'L'},
        {"version", no_argument, 0, 'V'},          {0, 0, 0, 0}};
    /* the config file first, so that options override it */
    const char *config_file = NULL;
    for (int i = 1; i < argc - 1; i++)
        if (!strcmp(argv[i], "--config"))
            config_file = argv[i + 1];
    nb_config cfg;
    nb_config_defaults(&cfg);
    char err[2 * PATH_MAX];
    if (nb_config_load(&cfg, config_file, err, sizeof err)) {
        fprintf(stderr, "nibd: %s\n", err);
        return 1;
    }
    nbd_options o = {0};
    o.model = cfg.model[0] ? cfg.model : NULL;
    o.threads = cfg.threads;
    o.n_ctx = cfg.ctx_size;
    o.n_slots = cfg.slots;
    o.keep_alive = cfg.keep_alive;
    o.n_batch = 512;
    o.prompt_chunk = 128;
    const char *socket_opt = cfg.socket[0] ? cfg.socket : NULL;
    for (int i = 0; i < cfg.n_lora; i++) {
        int rc = add_lora(&o, cfg.lora_name[i], strlen(cfg.lora_name[i]), cfg.lora_path[i]);
        if (rc)
            return rc;
    }
    int do_daemonize = 0, level = level_of(cfg.log_level);
    int c;
    char *end;
    long v;
    while ((c = getopt_long(argc, argv, "m:t:c:s:k:l:hV", opts, NULL)) != -1) {
        switch (c) {
        case 'm': o.model = optarg; break;
        case 't':
        case 'c':
        case 's':
            v = strtol(optarg, &end, 10);
            if (*end || end == optarg || v < (c == 's') || v > (c == 't' ? 256 : c == 's' ? 64 : 1 << 22)) {
                fprintf(stderr, "nibd: bad value for -%c: '%s'\nTry 'nibd --help'.\n", c, optarg);
                return 2;
            }
            if (c == 't')
                o.threads = (int)v;
            else if (c == 'c')
                o.n_ctx = (int)v;
            else
                o.n_slots = (int)v;
            break;
        case 'k': {
            double d = strtod(optarg, &end);
            if (*end || end == optarg || !(d >= -1 && d <= 1e9)) {
                fprintf(stderr, "nibd: --keep-alive wants seconds (-1 = never), not '%s'\n", optarg);
                return 2;
            }
            o.keep_alive = d < 0 ? -1 : d;
            break;
        }
        case 'l':
            if ((level = level_of(optarg)) < 0) {
                fprintf(stderr, "nibd: --log-level wants error, warn, info or debug\n");
                return 2;
            }
            break;
        case 'L': {
            const char *eq = strchr(optarg, '=');
            if (!eq || !nb_lora_name_valid(optarg, (size_t)(eq - optarg)) || !eq[1]) {
                fprintf(stderr, "nibd: --lora wants NAME=FILE with a NAME of 1 to %d letters, "
                                "digits, '.', '_' or '-', not '%s'\n", NBD_MAX_LORA_NAME, optarg);
                return 2;
            }
            int rc = add_lora(&o, optarg, (size_t)(eq - optarg), eq + 1);
            if (rc)
                return rc;
            break;
        }
        case 'S': socket_opt = optarg; break;
        case 'C': break; /* read above */
        case 'D': do_daemonize = 1; break;
        case 'h': fputs(usage, stdout); return 0;
        case 'V': printf("nibd %s\n", nb_version()); return 0;
        default: fprintf(stderr, "Try 'nibd --help'.\n"); return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "nibd: unexpected argument '%s'\nTry 'nibd --help'.\n", argv[optind]);
        return 2;
    }
    if (!o.model) {
        fprintf(stderr, "nibd: no model: give -m FILE or set 'model' in the config file\n");
        return 2;
    }
    nbd_log_level = level;
    char path[PATH_MAX];
    if (socket_opt)
        snprintf(path, sizeof path, "%s", socket_opt);
    else if (nb_socket_path(path, sizeof path)) {
        fprintf(stderr, "nibd: cannot work out the socket path\n");
        return 1;
    }

    /* the daemon moves to / and outlives the shell: no relative paths */
    char model_abs[PATH_MAX];
    if (realpath(o.model, model_abs))
        o.model = model_abs;
    int ready = -1;
    if (do_daemonize && daemonize(err, sizeof err, &ready)) {
        fprintf(stderr, "nibd: %s\n", err);
        return 1;
    }
    signal(SIGPIPE, SIG_IGN);
#ifdef __GLIBC__
    /* Buffers of large requests and answers (up to the 8 MiB limits) are
     * mapped and given back when freed.  glibc's sliding threshold would
     * move them into the heap after the first one, where they stay: a
     * daemon that runs for weeks would keep its largest moment for ever. */
    mallopt(M_MMAP_THRESHOLD, 64 << 10);
#endif
    spare_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    if (make_pipe(wake_pipe) || make_pipe(signal_pipe)) {
        fprintf(stderr, "nibd: pipe: %s\n", strerror(errno));
        return 1;
    }
    int lfd = open_socket(path, err, sizeof err);
    if (lfd < 0) {
        nbd_log(0, "%s", err);
        if (ready >= 0 && write(ready, err, strlen(err)) < 0)
            (void)0;
        return 1;
    }
    if (!(sched = nbd_sched_start(&o, err, sizeof err))) {
        nbd_log(0, "%s: %s", o.model, err);
        if (ready >= 0) {
            char msg[4 * PATH_MAX];
            snprintf(msg, sizeof msg, "%s: %s", o.model, err);
            if (write(ready, msg, strlen(msg)) < 0)
                (void)0;
        }
        unlink(path);
        unlink(lock_path);
        return 1;
    }
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    int bl = snprintf(bus_msg, sizeof bus_msg,
                      "nibd error: bus error reading %s: the file was truncated or rewritten in "
                      "place while in use; stopping (replace a model by renaming a new file "
                      "over it)\n", o.model);
    bus_msg_len = bl > 0 && (size_t)bl < sizeof bus_msg ? (size_t)bl : strlen(bus_msg);
    sa.sa_handler = on_bus_error;
    sigaction(SIGBUS, &sa, NULL);
    nbd_log(2, "serving %s on %s", o.model, path);
    if (ready >= 0) {
        if (write(ready, "k", 1) < 0)
            (void)0;
        close(ready);
    }

    int rc = serve(lfd) ? 1 : 0;

    /* stop accepting, end every request, say so, and leave no socket */
    close(lfd);
    unlink(path);
    nbd_sched_stop(sched); /* emits "cancelled" for everything still running */
    flush_all(2.0);
    while (conns) {
        conn *c2 = conns;
        conns = c2->next;
        conn_close(c2);
    }
    unlink(lock_path);
    nbd_log(2, "stopped");
    return rc;
}
