/*
 * client.c - talking to nibd: connect (starting the daemon when nothing
 * answers), send request lines, read event lines.  Used by nib, the Lua
 * module and anyone else; the descriptor can go into any event loop.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "internal.h"

#define MAX_LINE (64u << 20) /* an event longer than this is refused */

struct nb_client {
    int fd;
    char *buf;          /* received bytes not yet returned */
    size_t len, cap;
    size_t scan;        /* bytes of buf known to hold no newline */
};

nb_client_params nb_client_default_params(void)
{
    nb_client_params p = {0};
    p.autostart = 1;
    p.timeout_ms = 10000;
    return p;
}

static int try_connect(const char *path)
{
    struct sockaddr_un sa;
    if (strlen(path) >= sizeof sa.sun_path) {
        errno = ENAMETOOLONG;
        return -1;
    }
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    memset(&sa, 0, sizeof sa);
    sa.sun_family = AF_UNIX;
    memcpy(sa.sun_path, path, strlen(path) + 1);
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0) {
        int e = errno;
        close(fd);
        errno = e;
        return -1;
    }
    return fd;
}

/* nibd beside the running program (build/bin, /usr/bin), else from PATH. */
static void find_nibd(char *buf, size_t cap)
{
    char self[PATH_MAX - 8];
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    if (n > 0) {
        self[n] = 0;
        char *slash = strrchr(self, '/');
        if (slash) {
            *slash = 0;
            snprintf(buf, cap, "%s/nibd", self);
            if (access(buf, X_OK) == 0)
                return;
        }
    }
    snprintf(buf, cap, "nibd");
}

/* Run "nibd --daemonize ..." and wait for it to say it is serving. */
static nb_status start_daemon(const char *nibd, const char *model, const char *socket_path,
                              const char *const *extra, char *err, size_t errlen)
{
    const char *argv[64];
    int n = 0;
    argv[n++] = nibd;
    argv[n++] = "--daemonize";
    argv[n++] = "-m";
    argv[n++] = model;
    argv[n++] = "--socket";
    argv[n++] = socket_path;
    for (int i = 0; extra && extra[i] && n < 62; i++)
        argv[n++] = extra[i];
    argv[n] = NULL;
    int ep[2];
    if (pipe2(ep, O_CLOEXEC) != 0)
        return nbi_err(err, errlen, NB_ERR_IO, "pipe: %s", strerror(errno));
    pid_t pid = fork();
    if (pid < 0) {
        close(ep[0]);
        close(ep[1]);
        return nbi_err(err, errlen, NB_ERR_IO, "fork: %s", strerror(errno));
    }
    if (pid == 0) {
        dup2(ep[1], 2);
        close(ep[0]);
        int null = open("/dev/null", O_RDWR);
        if (null >= 0) {
            dup2(null, 0);
            dup2(null, 1);
        }
        /* Nothing else the caller holds may leak into a long-lived daemon: an
         * inherited pipe end would keep "x=$(nib ...)" waiting for EOF. */
        close_range(3, ~0u, 0);
        execvp(nibd, (char *const *)argv);
        fprintf(stderr, "cannot run %s: %s", nibd, strerror(errno));
        _exit(127);
    }
    close(ep[1]);
    char msg[1024];
    size_t got = 0;
    ssize_t r;
    while (got < sizeof msg - 1 && (r = read(ep[0], msg + got, sizeof msg - 1 - got)) != 0) {
        if (r < 0) {
            if (errno == EINTR)
                continue;
            break;
        }
        got += (size_t)r;
    }
    close(ep[0]);
    msg[got] = 0;
    while (got && (msg[got - 1] == '\n' || msg[got - 1] == '\r'))
        msg[--got] = 0;
    int status;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
        ;
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        /* a lost race with another client's start is fine: it serves us */
        if (strstr(msg, "already serving"))
            return NB_OK;
        return nbi_err(err, errlen, NB_ERR_IO, "could not start nibd: %s",
                       got ? msg : "it exited without saying why");
    }
    return NB_OK;
}

nb_status nb_client_connect(const nb_client_params *params, nb_client **out, char *err,
                            size_t errlen)
{
    nb_client_params p = params ? *params : nb_client_default_params();
    *out = NULL;
    if (err && errlen)
        err[0] = 0;
    nb_config cfg;
    nb_config_defaults(&cfg);
    char cerr[512];
    if (nb_config_load(&cfg, NULL, cerr, sizeof cerr))
        return nbi_err(err, errlen, NB_ERR_INVALID, "%s", cerr);
    char path[PATH_MAX];
    if (p.socket)
        snprintf(path, sizeof path, "%s", p.socket);
    else if (cfg.socket[0])
        snprintf(path, sizeof path, "%s", cfg.socket);
    else if (nb_socket_path(path, sizeof path))
        return nbi_err(err, errlen, NB_ERR_INVALID, "cannot work out the socket path");

    int fd = try_connect(path);
    if (fd < 0 && p.autostart && (errno == ENOENT || errno == ECONNREFUSED)) {
        const char *model = p.model;
        if (!model || !*model)
            model = getenv("NIBBLE_MODEL");
        if (!model || !*model)
            model = cfg.model[0] ? cfg.model : NULL;
        if (!model)
            return nbi_err(err, errlen, NB_ERR_INVALID,
                           "no nibd is running on %s and no model is configured to start one: "
                           "set NIBBLE_MODEL, or 'model = PATH' in the config file",
                           path);
        char nibd[PATH_MAX];
        if (p.nibd)
            snprintf(nibd, sizeof nibd, "%s", p.nibd);
        else if (cfg.nibd[0])
            snprintf(nibd, sizeof nibd, "%s", cfg.nibd);
        else
            find_nibd(nibd, sizeof nibd);
        nb_status st = start_daemon(nibd, model, path, p.nibd_args, err, errlen);
        if (st)
            return st;
        double deadline = nbi_now_ms() + (p.timeout_ms > 0 ? p.timeout_ms : 10000);
        while ((fd = try_connect(path)) < 0 && nbi_now_ms() < deadline)
            poll(NULL, 0, 20);
        if (fd < 0)
            return nbi_err(err, errlen, NB_ERR_IO,
                           "started nibd but its socket %s did not answer within %d ms", path,
                           p.timeout_ms);
    }
    if (fd < 0)
        return nbi_err(err, errlen, NB_ERR_IO, "cannot connect to nibd at %s: %s", path,
                       strerror(errno));
    nb_client *c = calloc(1, sizeof *c);
    if (!c) {
        close(fd);
        return nbi_err(err, errlen, NB_ERR_NOMEM, "out of memory");
    }
    c->fd = fd;
    *out = c;
    return NB_OK;
}

int nb_client_fd(const nb_client *c)
{
    return c ? c->fd : -1;
}

nb_status nb_client_send(nb_client *c, const char *line, size_t len)
{
    int add_nl = len == 0 || line[len - 1] != '\n';
    for (int part = 0; part < 2; part++) {
        const char *p = part ? "\n" : line;
        size_t n = part ? (size_t)add_nl : len;
        while (n) {
            ssize_t w = send(c->fd, p, n, MSG_NOSIGNAL);
            if (w < 0 && errno == EINTR)
                continue;
            if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
                struct pollfd pf = {c->fd, POLLOUT, 0};
                poll(&pf, 1, -1);
                continue;
            }
            if (w <= 0)
                return NB_ERR_IO;
            p += w;
            n -= (size_t)w;
        }
    }
    return NB_OK;
}

nb_status nb_client_read(nb_client *c, char **line, size_t *len, int timeout_ms)
{
    *line = NULL;
    if (len)
        *len = 0;
    double deadline = nbi_now_ms() + (timeout_ms > 0 ? timeout_ms : 0);
    for (;;) {
        char *nl = c->len > c->scan ? memchr(c->buf + c->scan, '\n', c->len - c->scan) : NULL;
        if (nl) {
            size_t n = (size_t)(nl - c->buf);
            char *l = malloc(n + 1);
            if (!l)
                return NB_ERR_NOMEM;
            memcpy(l, c->buf, n);
            l[n] = 0;
            memmove(c->buf, nl + 1, c->len - n - 1);
            c->len -= n + 1;
            c->scan = 0;
            *line = l;
            if (len)
                *len = n;
            return NB_OK;
        }
        c->scan = c->len;
        if (c->len > MAX_LINE)
            return NB_ERR_IO;
        int wait = -1;
        if (timeout_ms >= 0) {
            double left = deadline - nbi_now_ms();
            wait = left > 0 ? (int)left + 1 : 0;
        }
        struct pollfd pf = {c->fd, POLLIN, 0};
        int r = poll(&pf, 1, wait);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return r == 0 ? NB_OK : NB_ERR_IO; /* NB_OK, no line: the timeout */
        if (c->cap - c->len < 65536) {
            size_t cap = c->cap ? c->cap * 2 : 131072;
            char *nb = realloc(c->buf, cap);
            if (!nb)
                return NB_ERR_NOMEM;
            c->buf = nb;
            c->cap = cap;
        }
        ssize_t got = recv(c->fd, c->buf + c->len, c->cap - c->len, MSG_DONTWAIT);
        if (got < 0 && (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK))
            continue;
        if (got <= 0)
            return NB_ERR_IO; /* the daemon closed the connection */
        c->len += (size_t)got;
    }
}

void nb_client_close(nb_client *c)
{
    if (!c)
        return;
    if (c->fd >= 0)
        close(c->fd);
    free(c->buf);
    free(c);
}
