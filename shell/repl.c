/*
 * repl.c - nib's interactive chat: line editing and history through
 * libedit's readline interface (kept behind a few functions, as lua.c
 * does), multi-line input, slash commands, and conversations saved so
 * that `nib -c` can continue them.
 *
 * History lives in $XDG_STATE_HOME/nibble/history, one entry per line with
 * newlines and backslashes escaped.  Each accepted line is appended at
 * once (a crash loses nothing); duplicates and the size cap are cleaned up
 * by rewriting the file at start-up, through a temporary file renamed into
 * place.  A failing disk only costs a warning.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <editline/readline.h>

#include "nib.h"

/* ------------------------------------------------------------------ paths */

int nib_data_dir(char *buf, size_t cap, const char *sub)
{
    return nb_dir_path(NB_DIR_DATA, sub, 1, buf, cap) == NB_OK ? 0 : -1;
}

/* ------------------------------------------------------------------ history */

typedef struct history {
    char path[4096];
    int enabled;
    int warned;
    int cap;
    char **items;
    int n;
} history;

static char *escape(const char *s)
{
    size_t n = strlen(s);
    char *o = malloc(2 * n + 1), *p = o;
    if (!o)
        return NULL;
    for (; *s; s++) {
        if (*s == '\n') {
            *p++ = '\\';
            *p++ = 'n';
        } else if (*s == '\\') {
            *p++ = '\\';
            *p++ = '\\';
        } else {
            *p++ = *s;
        }
    }
    *p = 0;
    return o;
}

static void unescape(char *s)
{
    char *o = s;
    for (; *s; s++) {
        if (*s == '\\' && (s[1] == 'n' || s[1] == '\\')) {
            *o++ = s[1] == 'n' ? '\n' : '\\';
            s++;
        } else {
            *o++ = *s;
        }
    }
    *o = 0;
}

static void hist_warn(history *h, const char *what)
{
    if (!h->warned)
        nib_warn("cannot save history to %s: %s (continuing without)", h->path, what);
    h->warned = 1;
}

/* Remove earlier copies of the entry at the end. */
static void hist_remember(history *h, const char *line)
{
    for (int i = 0; i < h->n; i++)
        if (!strcmp(h->items[i], line)) {
            free(h->items[i]);
            memmove(h->items + i, h->items + i + 1, (size_t)(h->n - i - 1) * sizeof *h->items);
            h->n--;
            i--;
        }
    if (h->n == h->cap && h->n) {
        free(h->items[0]);
        memmove(h->items, h->items + 1, (size_t)(h->n - 1) * sizeof *h->items);
        h->n--;
    }
    if (h->cap)
        h->items[h->n++] = strdup(line);
}

/* Write the whole (deduplicated, capped) history atomically. */
static void hist_rewrite(history *h)
{
    char tmp[4200];
    snprintf(tmp, sizeof tmp, "%s.tmp", h->path);
    FILE *f = fopen(tmp, "w");
    if (!f) {
        hist_warn(h, strerror(errno));
        return;
    }
    int bad = 0;
    for (int i = 0; i < h->n && !bad; i++) {
        char *e = escape(h->items[i]);
        bad = !e || fprintf(f, "%s\n", e) < 0;
        free(e);
    }
    if (fclose(f) != 0 || bad || rename(tmp, h->path) != 0) {
        hist_warn(h, strerror(errno ? errno : EIO));
        unlink(tmp);
    }
}

static void hist_open(history *h, int cap)
{
    memset(h, 0, sizeof *h);
    const char *off = getenv("NIBBLE_NOHISTORY");
    h->cap = cap;
    h->enabled = !(off && *off && strcmp(off, "0")) && cap > 0 &&
                 nb_dir_path(NB_DIR_STATE, "history", 1, h->path, sizeof h->path) == NB_OK;
    h->items = calloc((size_t)(cap > 0 ? cap : 1), sizeof *h->items);
    if (!h->enabled || !h->items)
        return;
    FILE *f = fopen(h->path, "r");
    if (!f)
        return;
    /* only a regular file is read back: a history that is a link to a
     * device (/dev/full, /dev/zero) would otherwise be read for ever */
    struct stat st;
    if (fstat(fileno(f), &st) != 0 || !S_ISREG(st.st_mode)) {
        fclose(f);
        return;
    }
    char *line = NULL;
    size_t lcap = 0;
    ssize_t n;
    int lines = 0;
    while ((n = getline(&line, &lcap, f)) > 0) {
        if (line[n - 1] == '\n')
            line[n - 1] = 0;
        unescape(line);
        if (*line)
            hist_remember(h, line);
        lines++;
    }
    free(line);
    fclose(f);
    if (lines != h->n)
        hist_rewrite(h); /* duplicates or an overflow were found */
    for (int i = 0; i < h->n; i++)
        add_history(h->items[i]);
}

static void hist_add(history *h, const char *line)
{
    /* a leading space keeps a line out of the history, as in bash */
    if (!*line || line[0] == ' ')
        return;
    int was_dup = 0;
    for (int i = 0; i < h->n; i++)
        was_dup |= !strcmp(h->items[i], line);
    int was_full = h->n == h->cap;
    hist_remember(h, line);
    add_history(line);
    if (!h->enabled)
        return;
    if (was_dup || was_full) {
        hist_rewrite(h);
        return;
    }
    int fd = open(h->path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
    char *e = escape(line);
    size_t n = e ? strlen(e) : 0;
    if (fd < 0 || !e || write(fd, e, n) != (ssize_t)n || write(fd, "\n", 1) != 1)
        hist_warn(h, strerror(errno ? errno : EIO));
    if (fd >= 0 && close(fd) != 0)
        hist_warn(h, strerror(errno));
    free(e);
}

static void hist_close(history *h)
{
    for (int i = 0; i < h->n; i++)
        free(h->items[i]);
    free(h->items);
}

/* ------------------------------------------------------------------ conversations */

void nib_conv_new_id(char *id, size_t idlen)
{
    time_t t = time(NULL);
    struct tm tm;
    localtime_r(&t, &tm);
    snprintf(id, idlen, "%04d%02d%02d-%02d%02d%02d-%ld", tm.tm_year + 1900, tm.tm_mon + 1,
             tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, (long)getpid());
}

int nib_conv_save(const char *id, json_t *messages)
{
    char dir[4096], path[4200], tmp[4300], last[4200];
    if (nib_data_dir(dir, sizeof dir, "conversations") || nb_mkdirs(dir))
        return -1;
    snprintf(path, sizeof path, "%s/%s.json", dir, id);
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    snprintf(last, sizeof last, "%s/last", dir);
    if (json_dump_file(messages, tmp, JSON_INDENT(1)) != 0 || rename(tmp, path) != 0) {
        unlink(tmp);
        nib_warn("cannot save the conversation in %s", dir);
        return -1;
    }
    FILE *f = fopen(last, "w");
    if (!f || fprintf(f, "%s\n", id) < 0 || fclose(f) != 0) {
        nib_warn("cannot record the last conversation in %s", dir);
        return -1;
    }
    return 0;
}

json_t *nib_conv_load_last(char *id, size_t idlen)
{
    char dir[4096], last[4200], path[4400];
    if (nib_data_dir(dir, sizeof dir, "conversations"))
        return NULL;
    snprintf(last, sizeof last, "%s/last", dir);
    FILE *f = fopen(last, "r");
    if (!f)
        return NULL;
    char buf[128] = "";
    if (!fgets(buf, sizeof buf, f))
        buf[0] = 0;
    fclose(f);
    buf[strcspn(buf, "\n")] = 0;
    if (!*buf || strchr(buf, '/'))
        return NULL;
    snprintf(path, sizeof path, "%s/%s.json", dir, buf);
    json_t *m = json_load_file(path, 0, NULL);
    if (!json_is_array(m)) {
        json_decref(m);
        return NULL;
    }
    snprintf(id, idlen, "%s", buf);
    return m;
}

/* ------------------------------------------------------------------ input */

/* More input already waiting: the rest of a paste. */
static int more_pending(void)
{
    struct pollfd p = {0, POLLIN, 0};
    return poll(&p, 1, 15) > 0;
}

static char *append_line(char *acc, const char *line)
{
    size_t a = acc ? strlen(acc) : 0, l = strlen(line);
    char *n = realloc(acc, a + l + 2);
    if (!n)
        return acc;
    if (a)
        n[a++] = '\n';
    memcpy(n + a, line, l + 1);
    return n;
}

/* One message: a line, a """ block, or a pasted run of lines.  NULL at
 * end of input; "" after Ctrl-C at the prompt. */
static char *read_message(void)
{
    nib_interrupted = 0;
    char *line = readline("> ");
    if (!line)
        return nib_interrupted ? strdup("") : NULL;
    char *msg = NULL;
    if (!strcmp(line, "\"\"\"")) {
        free(line);
        for (;;) {
            char *l = readline("... ");
            if (!l)
                break;
            if (!strcmp(l, "\"\"\"")) {
                free(l);
                break;
            }
            msg = append_line(msg, l);
            free(l);
        }
        return msg ? msg : strdup("");
    }
    msg = append_line(NULL, line);
    free(line);
    while (more_pending()) {
        char *l = readline("");
        if (!l)
            break;
        msg = append_line(msg, l);
        free(l);
    }
    return msg;
}

/* ------------------------------------------------------------------ repl */

static const char help[] =
    "  /reset            start a new conversation\n"
    "  /system TEXT      set the system prompt (and start anew)\n"
    "  /set KEY VALUE    temperature, top_k, top_p, min_p, repeat_penalty, repeat_last_n,\n"
    "                    frequency_penalty, presence_penalty, seed, n_predict\n"
    "  /save FILE        write the conversation as text\n"
    "  /help             this list\n"
    "  \"\"\"               start or end a multi-line message\n"
    "  Ctrl-C stops an answer; Ctrl-D leaves.\n";

static json_t *fresh(const nib_opts *o, char *id, size_t idlen)
{
    json_t *m = json_array();
    nib_conv_new_id(id, idlen);
    if (o->system)
        json_array_append_new(m, json_pack("{s:s, s:s}", "role", "system", "content", o->system));
    return m;
}

static int save_text(json_t *msgs, const char *path)
{
    FILE *f = fopen(path, "w");
    if (!f)
        return -1;
    size_t i;
    json_t *m;
    int bad = 0;
    json_array_foreach(msgs, i, m)
    {
        bad |= fprintf(f, "## %s\n\n%s\n\n", json_string_value(json_object_get(m, "role")),
                       json_string_value(json_object_get(m, "content"))) < 0;
    }
    return fclose(f) != 0 || bad ? -1 : 0;
}

int nib_repl(nib_opts *o)
{
    history h;
    hist_open(&h, o->cfg.history_size);
    char id[64];
    json_t *msgs = NULL;
    if (o->cont && (msgs = nib_conv_load_last(id, sizeof id)))
        fprintf(stderr, "(continuing the conversation of %s, %zu messages)\n", id,
                json_array_size(msgs));
    if (!msgs)
        msgs = fresh(o, id, sizeof id);
    nb_client *c = NULL;
    char *system_copy = NULL;
    int rc = NIB_OK;
    for (;;) {
        char *msg = read_message();
        if (!msg)
            break; /* Ctrl-D */
        if (!*msg) {
            free(msg);
            if (nib_interrupted)
                fputc('\n', stdout);
            continue;
        }
        hist_add(&h, msg);
        if (msg[0] == '/') {
            char *arg = strchr(msg, ' ');
            if (arg)
                *arg++ = 0;
            if (!strcmp(msg, "/help")) {
                fputs(help, stdout);
            } else if (!strcmp(msg, "/reset")) {
                json_decref(msgs);
                msgs = fresh(o, id, sizeof id);
                puts("(new conversation)");
            } else if (!strcmp(msg, "/system") && arg && *arg) {
                free(system_copy);
                o->system = system_copy = strdup(arg);
                json_decref(msgs);
                msgs = fresh(o, id, sizeof id);
                puts("(system prompt set; new conversation)");
            } else if (!strcmp(msg, "/set")) {
                char *val = arg ? strchr(arg, ' ') : NULL;
                char kv[256] = "";
                if (val) {
                    *val++ = 0;
                    snprintf(kv, sizeof kv, "%s=%s", arg, val);
                }
                if (!val || nib_set_option(o, kv))
                    puts("usage: /set KEY VALUE, KEY one of temperature, top_k, top_p, min_p, "
                         "repeat_penalty, repeat_last_n, frequency_penalty, presence_penalty, "
                         "seed, n_predict");
                else
                    printf("(%s = %s)\n", arg, val);
            } else if (!strcmp(msg, "/save") && arg && *arg) {
                if (save_text(msgs, arg))
                    printf("(cannot write %s: %s)\n", arg, strerror(errno));
                else
                    printf("(saved to %s)\n", arg);
            } else {
                printf("unknown command %s; /help lists them\n", msg);
            }
            free(msg);
            continue;
        }
        if (!c && !(c = nib_connect(o))) {
            free(msg);
            rc = NIB_ERR;
            continue; /* the user may fix things and try again */
        }
        if (o->raw) { /* --raw: each line is a bare prompt, no conversation */
            json_t *req = json_pack("{s:s, s:s}", "op", "complete", "prompt", msg);
            const char *k;
            json_t *v;
            json_object_foreach(o->sampling, k, v) json_object_set(req, k, v);
            free(msg);
            nib_interrupted = 0;
            if (nib_request(c, o, req, stdout, NULL) == NIB_CANCELLED)
                fputs("\n(cancelled)\n", stdout);
            json_decref(req);
            continue;
        }
        json_array_append_new(msgs, json_pack("{s:s, s:s}", "role", "user", "content", msg));
        free(msg);
        json_t *req = nib_chat_request(o, msgs, id);
        char *answer = calloc(1, 1);
        nib_interrupted = 0;
        int r = nib_request(c, o, req, stdout, &answer);
        json_decref(req);
        if (r == NIB_OK) {
            json_array_append_new(msgs, json_pack("{s:s, s:s}", "role", "assistant", "content",
                                                  answer ? answer : ""));
            nib_conv_save(id, msgs);
        } else {
            /* a cancelled or failed turn is forgotten */
            json_array_remove(msgs, json_array_size(msgs) - 1);
            if (r == NIB_CANCELLED)
                fputs("\n(cancelled)\n", stdout);
            if (r == NIB_ERR) {
                nb_client_close(c); /* reconnect next time */
                c = NULL;
            }
        }
        free(answer);
        fflush(stdout);
    }
    nb_client_close(c);
    json_decref(msgs);
    free(system_copy);
    hist_close(&h);
    fputc('\n', stdout);
    return rc == NIB_ERR ? NIB_OK : rc;
}
