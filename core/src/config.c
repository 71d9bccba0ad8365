/*
 * config.c - the configuration file shared by nibd, nib and the editor
 * plugin, and the paths they agree on.
 *
 * $XDG_CONFIG_HOME/nibble/config (default ~/.config/nibble/config) holds
 * "key = value" lines; '#' starts a comment line; blank lines are ignored;
 * values may be quoted with "..." to keep surrounding spaces.  A missing
 * file is not an error.  Unknown keys and malformed values are, with the
 * line number, so that a typo never silently changes nothing.
 */
#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "internal.h"

int nb_lora_name_valid(const char *name, size_t len)
{
    if (len < 1 || len > NB_LORA_NAME_MAX)
        return 0;
    for (size_t i = 0; i < len; i++)
        if (!isalnum((unsigned char)name[i]) && !strchr("._-", name[i]))
            return 0;
    return 1;
}

void nb_config_defaults(nb_config *c)
{
    memset(c, 0, sizeof *c);
    c->threads = 0;
    c->ctx_size = 0;
    c->slots = 4;
    c->keep_alive = 300;
    snprintf(c->log_level, sizeof c->log_level, "info");
    c->history_size = 1000;
}

int nb_mkdirs(const char *path)
{
    char p[PATH_MAX];
    if (snprintf(p, sizeof p, "%s", path) >= (int)sizeof p) {
        errno = ENAMETOOLONG;
        return -1;
    }
    for (char *q = p + 1; *q; q++)
        if (*q == '/') {
            *q = 0;
            if (mkdir(p, 0700) != 0 && errno != EEXIST)
                return -1;
            *q = '/';
        }
    return mkdir(p, 0700) != 0 && errno != EEXIST ? -1 : 0;
}

nb_status nb_dir_path(nb_dir which, const char *sub, int create, char *buf, size_t cap)
{
    static const char *const env[] = {"XDG_CONFIG_HOME", "XDG_STATE_HOME", "XDG_DATA_HOME"};
    static const char *const fallback[] = {".config", ".local/state", ".local/share"};
    if ((unsigned)which > NB_DIR_DATA || !buf || !cap)
        return NB_ERR_INVALID;
    const char *x = getenv(env[which]), *home = getenv("HOME");
    int n;
    if (x && *x)
        n = snprintf(buf, cap, "%s/nibble", x);
    else if (home && *home)
        n = snprintf(buf, cap, "%s/%s/nibble", home, fallback[which]);
    else
        return NB_ERR_INVALID;
    if (n < 0 || (size_t)n >= cap)
        return NB_ERR_INVALID;
    if (create && nb_mkdirs(buf) != 0)
        return NB_ERR_IO;
    if (sub && snprintf(buf + n, cap - (size_t)n, "/%s", sub) >= (int)(cap - (size_t)n))
        return NB_ERR_INVALID;
    return NB_OK;
}

nb_status nb_config_path(char *buf, size_t cap)
{
    return nb_dir_path(NB_DIR_CONFIG, "config", 0, buf, cap);
}

nb_status nb_socket_path(char *buf, size_t cap)
{
    const char *x = getenv("XDG_RUNTIME_DIR");
    int n;
    if (x && *x)
        n = snprintf(buf, cap, "%s/nibble/nibd.sock", x);
    else
        n = snprintf(buf, cap, "/tmp/nibble-%u/nibd.sock", (unsigned)getuid());
    return n > 0 && (size_t)n < cap ? NB_OK : NB_ERR_INVALID;
}

static char *trim(char *s)
{
    while (*s == ' ' || *s == '\t')
        s++;
    char *e = s + strlen(s);
    while (e > s && (e[-1] == ' ' || e[-1] == '\t' || e[-1] == '\r' || e[-1] == '\n'))
        *--e = 0;
    return s;
}

static int parse_long(const char *v, long lo, long hi, long *out)
{
    char *end;
    errno = 0;
    long x = strtol(v, &end, 10);
    if (errno || end == v || *end || x < lo || x > hi)
        return -1;
    *out = x;
    return 0;
}

static int copy_str(char *dst, size_t cap, const char *v)
{
    size_t n = strlen(v);
    if (n >= cap)
        return -1;
    memcpy(dst, v, n + 1);
    return 0;
}

/* A path value: a leading "~/" is the home directory, as in a shell. */
static int copy_path(char *dst, size_t cap, const char *v)
{
    const char *home = getenv("HOME");
    if (v[0] == '~' && v[1] == '/' && home && *home) {
        int n = snprintf(dst, cap, "%s%s", home, v + 1);
        return n < 0 || (size_t)n >= cap ? -1 : 0;
    }
    return copy_str(dst, cap, v);
}

nb_status nb_config_load(nb_config *c, const char *path, char *err, size_t errlen)
{
    char def[4096];
    if (!path) {
        if (nb_config_path(def, sizeof def))
            return NB_OK; /* no home: no file */
        path = def;
    }
    FILE *f = fopen(path, "r");
    if (!f)
        return errno == ENOENT ? NB_OK
                               : nbi_err(err, errlen, NB_ERR_IO, "%s: %s", path, strerror(errno));
    char line[8192];
    int lineno = 0;
    nb_status st = NB_OK;
    while (fgets(line, sizeof line, f)) {
        lineno++;
        if (!strchr(line, '\n') && !feof(f)) {
            st = nbi_err(err, errlen, NB_ERR_INVALID, "%s:%d: line too long", path, lineno);
            break;
        }
        char *s = trim(line);
        if (!*s || *s == '#')
            continue;
        char *eq = strchr(s, '=');
        if (!eq) {
            st = nbi_err(err, errlen, NB_ERR_INVALID, "%s:%d: expected 'key = value'", path, lineno);
            break;
        }
        *eq = 0;
        char *key = trim(s), *val = trim(eq + 1);
        size_t vl = strlen(val);
        if (vl >= 2 && val[0] == '"' && val[vl - 1] == '"') {
            val[vl - 1] = 0;
            val++;
        }
        long x;
        int bad = 0;
        if (!strcmp(key, "model"))
            bad = copy_path(c->model, sizeof c->model, val);
        else if (!strcmp(key, "socket"))
            bad = copy_path(c->socket, sizeof c->socket, val);
        else if (!strcmp(key, "nibd"))
            bad = copy_path(c->nibd, sizeof c->nibd, val);
        else if (!strcmp(key, "template"))
            bad = copy_str(c->chat_template, sizeof c->chat_template, val);
        else if (!strcmp(key, "system"))
            bad = copy_str(c->system, sizeof c->system, val);
        else if (!strcmp(key, "log_level"))
            bad = (strcmp(val, "error") && strcmp(val, "warn") && strcmp(val, "info") &&
                   strcmp(val, "debug")) ||
                  copy_str(c->log_level, sizeof c->log_level, val);
        else if (!strcmp(key, "threads"))
            bad = parse_long(val, 0, 256, &x) || ((c->threads = (int)x), 0);
        else if (!strcmp(key, "ctx_size"))
            bad = parse_long(val, 0, 1 << 22, &x) || ((c->ctx_size = (int)x), 0);
        else if (!strcmp(key, "slots"))
            bad = parse_long(val, 1, 64, &x) || ((c->slots = (int)x), 0);
        else if (!strcmp(key, "history_size"))
            bad = parse_long(val, 0, 1000000, &x) || ((c->history_size = (int)x), 0);
        else if (!strcmp(key, "lora")) {
            /* NAME=FILE; the name as nibd --lora takes it */
            char *sep = strchr(val, '=');
            size_t nl = sep ? (size_t)(sep - val) : 0;
            bad = !sep || !nb_lora_name_valid(val, nl) || !sep[1] ||
                  c->n_lora == NB_CONFIG_MAX_LORA;
            for (int i = 0; !bad && i < c->n_lora; i++)
                bad = strlen(c->lora_name[i]) == nl && !memcmp(c->lora_name[i], val, nl);
            if (!bad) {
                memcpy(c->lora_name[c->n_lora], val, nl);
                c->lora_name[c->n_lora][nl] = 0;
                bad = copy_path(c->lora_path[c->n_lora], sizeof c->lora_path[0], sep + 1);
                if (!bad)
                    c->n_lora++;
            }
        } else if (!strcmp(key, "keep_alive")) {
            char *end;
            double d = strtod(val, &end);
            bad = end == val || *end || !(d >= -1 && d <= 1e9);
            if (!bad)
                c->keep_alive = d < 0 ? -1 : d;
        } else {
            st = nbi_err(err, errlen, NB_ERR_INVALID, "%s:%d: unknown key '%.64s'", path, lineno,
                         key);
            break;
        }
        if (bad) {
            st = nbi_err(err, errlen, NB_ERR_INVALID, "%s:%d: bad value for %s: '%.64s'", path,
                         lineno, key, val);
            break;
        }
    }
    fclose(f);
    return st;
}
