/*
 * nib.c - the nib shell helper: ask a question, pipe text through the
 * model, suggest a command, or chat (repl.c), all through nibd so that the
 * model stays warm between commands.
 *
 * Output discipline: stdout carries the model's text and nothing else, so
 * nib works in pipes and as a Vim filter; notes, errors and the spinner go
 * to stderr, the spinner only when stderr is a terminal.
 */
#include <errno.h>
#include <getopt.h>
#include <langinfo.h>
#include <locale.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/utsname.h>
#include <time.h>
#include <unistd.h>

#include "nib.h"

#define MAX_STDIN (64u << 20) /* bytes of piped input */

volatile sig_atomic_t nib_interrupted;

static void on_sigint(int sig)
{
    (void)sig;
    nib_interrupted = 1;
}

/* ------------------------------------------------------------------ spinner */

typedef struct spinner {
    int on;       /* allowed: stderr is a terminal and not -q */
    int shown;
    int frame;
    double last;
} spinner;

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void spin(spinner *s)
{
    if (!s->on || now_s() - s->last < 0.1)
        return;
    static const char frames[] = "|/-\\";
    fprintf(stderr, "\r%c ", frames[s->frame++ % 4]);
    fflush(stderr);
    s->shown = 1;
    s->last = now_s();
}

static void spin_clear(spinner *s)
{
    if (s->shown) {
        fputs("\r  \r", stderr);
        fflush(stderr);
        s->shown = 0;
    }
}

/* ------------------------------------------------------------------ daemon */

const char *nib_model_path(const nib_opts *o, char *buf, size_t cap)
{
    const char *env = getenv("NIBBLE_MODEL");
    if (o->model && *o->model)
        return o->model;
    if (env && *env)
        return env;
    if (o->cfg.model[0])
        return o->cfg.model;
    if (nib_data_dir(buf, cap, "models/default.gguf") == 0 && access(buf, R_OK) == 0)
        return buf; /* what `nib pull` installed */
    return NULL;
}

static void no_model_error(void)
{
    nib_error("no model to start the daemon with: run 'nib pull tinyllama', or set "
              "NIBBLE_MODEL=/path/to/model.gguf (or 'model = PATH' in %s)",
              "~/.config/nibble/config");
}

nb_client *nib_connect(const nib_opts *o)
{
    nb_client_params p = nb_client_default_params();
    char def[4096];
    p.model = nib_model_path(o, def, sizeof def);
    int tty = isatty(2) && !o->quiet;
    if (tty) {
        fputs("\r(loading) ", stderr);
        fflush(stderr);
    }
    nb_client *c = NULL;
    char err[2048];
    nb_status st = nb_client_connect(&p, &c, err, sizeof err);
    if (tty) {
        fputs("\r          \r", stderr);
        fflush(stderr);
    }
    if (st) {
        if (strstr(err, "no model is configured"))
            no_model_error();
        else
            nib_error("%s", err);
        return NULL;
    }
    return c;
}

static json_t *read_event(nb_client *c, int timeout_ms, int *eof)
{
    char *line;
    size_t len;
    *eof = 0;
    if (nb_client_read(c, &line, &len, timeout_ms)) {
        *eof = 1;
        return NULL;
    }
    if (!line)
        return NULL;
    /* the text is the model's bytes, which may include a NUL (a byte token) */
    json_t *e = json_loadb(line, len, JSON_ALLOW_NUL, NULL);
    free(line);
    return e;
}

static int request_id;

int nib_request(nb_client *c, const nib_opts *o, json_t *req, FILE *out, char **answer)
{
    int id = ++request_id;
    json_object_set_new(req, "id", json_integer(id));
    char *line = json_dumps(req, JSON_COMPACT);
    if (!line || nb_client_send(c, line, strlen(line))) {
        free(line);
        nib_error("the daemon closed the connection");
        return NIB_ERR;
    }
    free(line);
    spinner sp = {isatty(2) && !o->quiet, 0, 0, 0};
    size_t alen = answer && *answer ? strlen(*answer) : 0, acap = alen + 1;
    int cancel_sent = 0, text_seen = 0, rc = NIB_ERR, at_line_start = 1;
    char stats[256] = "";
    for (;;) {
        if (nib_interrupted && !cancel_sent) {
            char cancel[96];
            snprintf(cancel, sizeof cancel, "{\"op\":\"cancel\",\"id\":\"c%d\",\"target\":%d}", id, id);
            nb_client_send(c, cancel, strlen(cancel));
            cancel_sent = 1;
        }
        int eof;
        json_t *e = read_event(c, 100, &eof);
        if (eof) {
            spin_clear(&sp);
            nib_error("the daemon closed the connection mid-answer (did it stop or crash?); "
                      "the next nib starts a new one");
            return NIB_ERR;
        }
        if (!e) {
            if (!text_seen)
                spin(&sp);
            continue;
        }
        json_t *eid = json_object_get(e, "id");
        if (!json_is_integer(eid) || json_integer_value(eid) != id) {
            json_decref(e); /* the answer to our cancel */
            continue;
        }
        const char *text = json_string_value(json_object_get(e, "text"));
        if (text && !json_is_true(json_object_get(e, "done"))) {
            spin_clear(&sp);
            text_seen = 1;
            size_t n = json_string_length(json_object_get(e, "text"));
            if (o->stream) {
                fwrite(text, 1, n, out);
                fflush(out);
            }
            if (n)
                at_line_start = text[n - 1] == '\n';
            if (answer) {
                if (alen + n + 1 > acap) {
                    acap = (alen + n + 1) * 2;
                    char *na = realloc(*answer, acap);
                    if (na)
                        *answer = na;
                }
                if (alen + n + 1 <= acap && *answer) {
                    memcpy(*answer + alen, text, n + 1);
                    alen += n;
                }
            }
        }
        if (json_is_true(json_object_get(e, "done"))) {
            spin_clear(&sp);
            const char *reason = json_string_value(json_object_get(e, "stop_reason"));
            const char *warning = json_string_value(json_object_get(e, "warning"));
            static int warned; /* once per run, not once per chat turn */
            if (warning && !warned++)
                nib_warn("%s%s", warning,
                         strstr(warning, "chat template") ? " (nib -t NAME picks another)" : "");
            if (o->verbose) {
                json_t *tm = json_object_get(e, "timings");
                snprintf(stats, sizeof stats,
                         "nib: %lld prompt tokens (%lld cached), %lld generated; first token "
                         "after %.1f ms, %.1f tokens/s\n",
                         (long long)json_integer_value(json_object_get(e, "n_prompt")),
                         (long long)json_integer_value(json_object_get(e, "n_cached")),
                         (long long)json_integer_value(json_object_get(e, "n_generated")),
                         json_number_value(json_object_get(tm, "first_token_ms")),
                         json_number_value(json_object_get(tm, "tokens_per_s")));
            }
            const char *full = json_string_value(json_object_get(e, "text"));
            if (full && !o->stream) {
                size_t n = json_string_length(json_object_get(e, "text"));
                fwrite(full, 1, n, out);
                at_line_start = !n || full[n - 1] == '\n';
                if (answer) {
                    free(*answer);
                    *answer = strdup(full);
                }
            }
            if (reason && !strcmp(reason, "error")) {
                const char *msg = json_string_value(json_object_get(e, "message"));
                const char *code = json_string_value(json_object_get(e, "error"));
                if (code && !strcmp(code, "context_full"))
                    nib_error("the input is too long for the model's context: %s", msg);
                else
                    nib_error("%s", msg ? msg : "the request failed");
                rc = NIB_ERR;
            } else if (reason && !strcmp(reason, "cancelled")) {
                rc = NIB_CANCELLED;
            } else {
                rc = NIB_OK;
            }
            json_decref(e);
            break;
        }
        json_decref(e);
    }
    /* end the answer on its own line at a terminal; pipes get the text only */
    if (text_seen && !at_line_start && isatty(fileno(out)))
        fputc('\n', out);
    fflush(out);
    fputs(stats, stderr);
    return rc;
}

static void add_sampling(json_t *req, const nib_opts *o)
{
    const char *k;
    json_t *v;
    json_object_foreach(o->sampling, k, v) json_object_set(req, k, v);
    if (!o->stream)
        json_object_set_new(req, "stream", json_false());
}

json_t *nib_chat_request(const nib_opts *o, json_t *messages, const char *session)
{
    json_t *req = json_pack("{s:s, s:O}", "op", "chat", "messages", messages);
    if (o->tmpl)
        json_object_set_new(req, "template", json_string(o->tmpl));
    if (session)
        json_object_set_new(req, "session", json_string(session));
    add_sampling(req, o);
    return req;
}

/* ------------------------------------------------------------------ input */

static char *read_stdin(size_t *len, const char **why)
{
    size_t cap = 65536, n = 0;
    char *buf = malloc(cap + 1);
    if (!buf) {
        *why = "out of memory";
        return NULL;
    }
    for (;;) {
        if (n == cap) {
            if (cap >= MAX_STDIN) {
                free(buf);
                *why = "the input is larger than 64 MiB";
                return NULL;
            }
            char *nb = realloc(buf, cap * 2 + 1);
            if (!nb) {
                free(buf);
                *why = "out of memory";
                return NULL;
            }
            buf = nb;
            cap *= 2;
        }
        ssize_t r = read(0, buf + n, cap - n);
        if (r < 0 && errno == EINTR) {
            if (nib_interrupted) {
                free(buf);
                *why = "interrupted";
                return NULL;
            }
            continue;
        }
        if (r < 0) {
            free(buf);
            *why = strerror(errno);
            return NULL;
        }
        if (r == 0)
            break;
        n += (size_t)r;
    }
    buf[n] = 0;
    *len = n;
    return buf;
}

/* ------------------------------------------------------------------ modes */

static const char *shell_name(void)
{
    const char *sh = getenv("SHELL");
    const char *base = sh ? strrchr(sh, '/') : NULL;
    return base ? base + 1 : sh ? sh : "sh";
}

static int suggest_command(nib_opts *o, const char *task)
{
    struct utsname u;
    const char *os = uname(&u) == 0 ? u.sysname : "Linux";
    char sys[1024];
    snprintf(sys, sizeof sys,
             "You turn requests into one %s command for %s. Reply with the command only, on "
             "one line: no explanation, no code fence.",
             shell_name(), os);
    json_t *msgs = json_pack("[{s:s, s:s}, {s:s, s:s}]", "role", "system", "content", sys, "role",
                             "user", "content", task);
    nib_opts q = *o;
    q.stream = 0;
    nb_client *c = nib_connect(&q);
    if (!c) {
        json_decref(msgs);
        return NIB_ERR;
    }
    json_t *req = nib_chat_request(&q, msgs, NULL);
    if (!json_object_get(req, "temperature"))
        json_object_set_new(req, "temperature", json_real(0));
    if (!json_object_get(req, "n_predict"))
        json_object_set_new(req, "n_predict", json_integer(128));
    char *answer = NULL;
    FILE *null = fopen("/dev/null", "w");
    int rc = nib_request(c, &q, req, null ? null : stderr, &answer);
    if (null)
        fclose(null);
    if (rc == NIB_OK && answer) {
        /* the first non-empty line, without fences or a leading "$ " */
        char *s = answer, *line = NULL;
        for (char *tok = strtok(s, "\n"); tok; tok = strtok(NULL, "\n")) {
            while (*tok == ' ' || *tok == '\t')
                tok++;
            if (!*tok || !strncmp(tok, "```", 3))
                continue;
            line = tok;
            break;
        }
        if (line) {
            if (line[0] == '$' && line[1] == ' ')
                line += 2;
            size_t n = strlen(line);
            if (n >= 2 && line[0] == '`' && line[n - 1] == '`') {
                line[n - 1] = 0;
                line++;
            }
            printf("%s\n", line);
        } else {
            nib_error("the model suggested nothing");
            rc = NIB_ERR;
        }
    }
    free(answer);
    json_decref(req);
    json_decref(msgs);
    nb_client_close(c);
    return rc;
}

/* This program's own path, quoted for the shell ('...' with ' as '\''), so
 * the binding works whether or not nib is on PATH. */
static void print_self_quoted(void)
{
    char self[4096];
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    if (n <= 0) {
        fputs("nib", stdout);
        return;
    }
    self[n] = 0;
    putchar('\'');
    for (char *p = self; *p; p++)
        fputs(*p == '\'' ? "'\\''" : (char[]){*p, 0}, stdout);
    putchar('\'');
}

static int print_init(const char *shell)
{
    int bash = !strcmp(shell, "bash"), zsh = !strcmp(shell, "zsh");
    if (!bash && !zsh) {
        nib_error("--init knows bash and zsh, not '%s'", shell);
        return NIB_USAGE;
    }
    /* The binding only edits the command line: the user reads the
     * suggestion, changes it or not, and presses Enter themselves. */
    printf("# nib: %s replaces the words at the prompt with a suggested command.\n"
           "__nib_suggest() {\n"
           "  local s\n",
           bash ? "Ctrl-X Ctrl-N (or $NIBBLE_SUGGEST_KEY, as for bind)"
                : "Ctrl-X Ctrl-N (or $NIBBLE_SUGGEST_KEY, as for bindkey)");
    if (bash) {
        fputs("  [ -n \"$READLINE_LINE\" ] || return\n  s=$(", stdout);
        print_self_quoted();
        fputs(" -q --cmd \"$READLINE_LINE\" </dev/null) || return\n"
              "  [ -n \"$s\" ] && READLINE_LINE=$s && READLINE_POINT=${#s}\n"
              "}\n"
              "bind -x \"\\\"${NIBBLE_SUGGEST_KEY:-\\C-x\\C-n}\\\": __nib_suggest\"\n",
              stdout);
    } else {
        fputs("  [[ -n $BUFFER ]] || return\n  s=$(", stdout);
        print_self_quoted();
        fputs(" -q --cmd \"$BUFFER\" </dev/null) || { zle reset-prompt; return; }\n"
              "  [[ -n $s ]] && BUFFER=$s && CURSOR=${#BUFFER}\n"
              "  zle reset-prompt\n"
              "}\n"
              "zle -N __nib_suggest\n"
              "bindkey \"${NIBBLE_SUGGEST_KEY:-^X^N}\" __nib_suggest\n",
              stdout);
    }
    return NIB_OK;
}

static int nib_main(int argc, char **argv, nib_opts *o);

int main(int argc, char **argv)
{
    nib_opts o = {0};
    o.stream = 1;
    o.sampling = json_object();
    int rc = nib_main(argc, argv, &o);
    json_decref(o.sampling); /* every path returns here, so nothing leaks */
    return rc;
}

static int nib_main(int argc, char **argv, nib_opts *o)
{
    /* libedit decodes keys by the locale; nibble's text is UTF-8 always, so
     * a shell left in the C locale still gets UTF-8 line editing */
    setlocale(LC_ALL, "");
    if (strcmp(nl_langinfo(CODESET), "UTF-8") != 0)
        setlocale(LC_CTYPE, "C.UTF-8");
    nb_config_defaults(&o->cfg);
    char err[1024];
    if (nb_config_load(&o->cfg, NULL, err, sizeof err)) {
        nib_error("%s", err);
        return NIB_ERR;
    }
    if (o->cfg.system[0])
        o->system = o->cfg.system;
    if (o->cfg.chat_template[0])
        o->tmpl = o->cfg.chat_template;
    /* pull and models are commands only as the first word */
    if (argc > 1 && !strcmp(argv[1], "pull"))
        return nib_pull(argc - 1, argv + 1, o);
    if (argc > 1 && !strcmp(argv[1], "models")) {
        if (argc > 2 && !strcmp(argv[2], "--path")) { /* for scripts: which model, if any */
            char def[4096];
            const char *mp = nib_model_path(o, def, sizeof def);
            if (!mp) {
                no_model_error();
                return NIB_ERR;
            }
            puts(mp);
            return NIB_OK;
        }
        if (argc > 2)
            return nib_usage_error("'nib models' takes only --path, not '%s'", argv[2]);
        return nib_models();
    }
    nib_args a;
    int rc = nib_parse_args(argc, argv, o, &a, stdout);
    if (rc >= 0)
        return rc;
    const char *cmd_task = a.cmd_task, *init_shell = a.init_shell;
    if (init_shell)
        return print_init(init_shell);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_sigint;
    sigaction(SIGINT, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
    if (cmd_task)
        return suggest_command(o, cmd_task);

    /* the question: the arguments joined with spaces */
    char *question = nib_join_words(argc - a.first, argv + a.first);
    if (!question)
        return NIB_ERR;
    /* stdin is input only when it is a pipe (or socket) or a file: never a
     * terminal, and never /dev/null or another device */
    struct stat st0;
    int have_stdin = fstat(0, &st0) == 0 && !isatty(0) &&
                     (S_ISFIFO(st0.st_mode) || S_ISREG(st0.st_mode) || S_ISSOCK(st0.st_mode));
    if (!*question && !have_stdin) {
        free(question);
        if (isatty(0))
            return nib_repl(o);
        nib_error("nothing to ask: give a question, or pipe text in (the chat needs a terminal)");
        return NIB_USAGE;
    }
    char *piped = NULL;
    size_t plen = 0;
    if (have_stdin) {
        const char *why = NULL;
        if (!(piped = read_stdin(&plen, &why))) {
            nib_error("cannot read stdin: %s", why);
            free(question);
            return nib_interrupted ? NIB_CANCELLED : NIB_ERR;
        }
    }
    char *message = NULL;
    rc = nib_message(question, piped, plen, &message);
    free(piped);
    free(question);
    if (rc != NIB_OK)
        return rc;
    nb_client *cl = nib_connect(o);
    if (!cl) {
        free(message);
        return NIB_ERR;
    }
    if (o->raw) {
        json_t *req = json_pack("{s:s, s:s}", "op", "complete", "prompt", message);
        add_sampling(req, o);
        rc = nib_request(cl, o, req, stdout, NULL);
        json_decref(req);
    } else {
        char id[64] = "";
        json_t *msgs = o->cont ? nib_conv_load_last(id, sizeof id) : NULL;
        if (o->cont && !msgs)
            nib_warn("no earlier conversation to continue; starting a new one");
        if (!msgs) {
            msgs = json_array();
            nib_conv_new_id(id, sizeof id);
            if (o->system)
                json_array_append_new(msgs, json_pack("{s:s, s:s}", "role", "system", "content",
                                                      o->system));
        }
        json_array_append_new(msgs, json_pack("{s:s, s:s}", "role", "user", "content", message));
        json_t *req = nib_chat_request(o, msgs, id);
        char *answer = calloc(1, 1);
        rc = nib_request(cl, o, req, stdout, &answer);
        if (rc == NIB_OK) {
            json_array_append_new(msgs, json_pack("{s:s, s:s}", "role", "assistant", "content",
                                                  answer ? answer : ""));
            nib_conv_save(id, msgs);
        }
        free(answer);
        json_decref(req);
        json_decref(msgs);
    }
    free(message);
    nb_client_close(cl);
    return rc;
}
