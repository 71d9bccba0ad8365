/*
 * args.c - what nib makes of its command line and of piped text, with no
 * daemon involved, so that both can be tested and fuzzed on their own
 * (tests/fuzz/fuzz_nib.c): the options, the question, and the message
 * that wraps piped text.
 */
#include <getopt.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "nib.h"

static const char usage[] =
    "usage: nib [options] [QUESTION...]\n"
    "       cmd | nib [options] INSTRUCTION...\n"
    "       nib [options]                    (chat, at a terminal)\n"
    "       nib --cmd TASK | --init bash|zsh | pull NAME|URL | models\n"
    "\n"
    "Ask a local model, through nibd (started when needed, kept warm).\n"
    "\n"
    "  -m, --model FILE     model for a daemon nib starts ($NIBBLE_MODEL, config)\n"
    "  -s, --system TEXT    system prompt\n"
    "  -t, --template NAME  chatml, llama2, llama3, deepseek, deepseek2, deepseek3,\n"
    "                       alpaca, vicuna, zephyr or raw\n"
    "                       (default: recognised from the model)\n"
    "  -o KEY=VALUE         sampling: temperature, top_k, top_p, min_p,\n"
    "                       repeat_penalty, repeat_last_n, frequency_penalty,\n"
    "                       presence_penalty (repeatable)\n"
    "  -n N                 at most N tokens (default 512; -1 = until the model stops)\n"
    "      --seed S         reproducible sampling\n"
    "      --raw            send the text as is, without a chat template\n"
    "      --no-stream      print the answer when it is complete\n"
    "  -c, --continue       continue the last conversation\n"
    "  -q, --quiet          no spinner and no notes on stderr\n"
    "  -v, --verbose        after each answer, token counts and timings on stderr\n"
    "      --lora NAME[=S]  apply the LoRA adapter nibd loaded as NAME (nibd\n"
    "                       --lora NAME=FILE), at scale S (default 1; repeatable)\n"
    "      --cmd TASK       print one shell command that does TASK\n"
    "      --init SHELL     print bash or zsh code binding Ctrl-X Ctrl-N to --cmd\n"
    "  -h, --help, -V, --version\n"
    "\n"
    "Piped text: the message is the instruction, a blank line, and the text\n"
    "between two fence lines of backticks (three, or more when the text holds a\n"
    "longer run).  stdin is read only when it is a pipe, a socket or a file.\n"
    "\n"
    "Chat commands: /reset, /system TEXT, /set KEY VALUE, /save FILE, /help.\n"
    "Exit status: 0 success, 1 error, 2 usage error, 130 cancelled (Ctrl-C).\n";

void nib_error(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("nib: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

void nib_warn(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("nib: warning: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

int nib_usage_error(const char *fmt, const char *arg)
{
    fputs("nib: ", stderr);
    fprintf(stderr, fmt, arg);
    fputs("\nTry 'nib --help'.\n", stderr);
    return NIB_USAGE;
}

int nib_set_option(nib_opts *o, const char *kv)
{
    const char *eq = strchr(kv, '=');
    static const char *const keys[] = {"temperature", "top_k", "top_p", "min_p", "repeat_penalty",
                                       "repeat_last_n", "frequency_penalty", "presence_penalty",
                                       "seed", "n_predict", NULL};
    if (!eq)
        return -1;
    char key[64];
    size_t kl = (size_t)(eq - kv);
    if (kl == 0 || kl >= sizeof key)
        return -1;
    memcpy(key, kv, kl);
    key[kl] = 0;
    int known = 0;
    for (int i = 0; keys[i]; i++)
        known |= !strcmp(keys[i], key);
    if (!known)
        return -1;
    char *end;
    double v = strtod(eq + 1, &end);
    if (end == eq + 1 || *end || !isfinite(v)) /* JSON has no NaN or infinity */
        return -1;
    int integer = !strcmp(key, "top_k") || !strcmp(key, "repeat_last_n") || !strcmp(key, "seed") ||
                  !strcmp(key, "n_predict");
    if (integer && !(v > -0x1p63 && v < 0x1p63)) /* else the conversion is undefined */
        return -1;
    json_object_set_new(o->sampling, key, integer ? json_integer((json_int_t)v) : json_real(v));
    return 0;
}

/* --lora NAME[=SCALE]: one more entry of the request's "lora" array (the
 * daemon checks that it has the adapter).  -1 when malformed. */
static int add_lora(nib_opts *o, const char *arg)
{
    const char *eq = strchr(arg, '=');
    size_t nl = eq ? (size_t)(eq - arg) : strlen(arg);
    double scale = 1.0;
    if (!nb_lora_name_valid(arg, nl))
        return -1;
    if (eq) {
        char *end;
        scale = strtod(eq + 1, &end);
        if (end == eq + 1 || *end || !(fabs(scale) <= 100))
            return -1;
    }
    json_t *list = json_object_get(o->sampling, "lora");
    if (!list) {
        list = json_array();
        if (json_object_set_new(o->sampling, "lora", list))
            return -1;
    }
    if (json_array_size(list) >= 16)
        return -1;
    return json_array_append_new(list, json_pack("{s:s%, s:f}", "name", arg, nl, "scale", scale));
}

int nib_parse_args(int argc, char **argv, nib_opts *o, nib_args *a, FILE *out)
{
    static const struct option opts[] = {
        {"model", required_argument, 0, 'm'}, {"system", required_argument, 0, 's'},
        {"template", required_argument, 0, 't'}, {"seed", required_argument, 0, 'S'},
        {"raw", no_argument, 0, 'R'},           {"no-stream", no_argument, 0, 'N'},
        {"continue", no_argument, 0, 'c'},      {"quiet", no_argument, 0, 'q'},
        {"verbose", no_argument, 0, 'v'},       {"lora", required_argument, 0, 'L'},
        {"cmd", required_argument, 0, 'C'},     {"init", required_argument, 0, 'I'},
        {"help", no_argument, 0, 'h'},          {"version", no_argument, 0, 'V'},
        {0, 0, 0, 0}};
    memset(a, 0, sizeof *a);
    int c;
    char *end;
    while ((c = getopt_long(argc, argv, "m:s:t:o:n:cqvhV", opts, NULL)) != -1) {
        switch (c) {
        case 'm': o->model = optarg; break;
        case 's': o->system = optarg; break;
        case 't': o->tmpl = optarg; break;
        case 'o':
            if (nib_set_option(o, optarg))
                return nib_usage_error("-o wants KEY=NUMBER with a sampling key, not '%s'", optarg);
            break;
        case 'n': {
            long n = strtol(optarg, &end, 10);
            if (*end || end == optarg || n < -1 || n > 1 << 20)
                return nib_usage_error("-n wants -1 to 1048576, not '%s'", optarg);
            json_object_set_new(o->sampling, "n_predict", json_integer(n));
            break;
        }
        case 'S': {
            long long s = strtoll(optarg, &end, 10);
            if (*end || end == optarg || s < 0)
                return nib_usage_error("--seed wants a non-negative integer, not '%s'", optarg);
            json_object_set_new(o->sampling, "seed", json_integer(s));
            break;
        }
        case 'L':
            if (add_lora(o, optarg))
                return nib_usage_error("--lora wants NAME or NAME=SCALE: a name nibd was started "
                                       "with (at most 16) and a scale of -100 to 100, not '%s'",
                                       optarg);
            break;
        case 'R': o->raw = 1; break;
        case 'N': o->stream = 0; break;
        case 'c': o->cont = 1; break;
        case 'q': o->quiet = 1; break;
        case 'v': o->verbose = 1; break;
        case 'C': a->cmd_task = optarg; break;
        case 'I': a->init_shell = optarg; break;
        case 'h': fputs(usage, out); return NIB_OK;
        case 'V': fprintf(out, "nib %s\n", nb_version()); return NIB_OK;
        default: fputs("Try 'nib --help'.\n", stderr); return NIB_USAGE;
        }
    }
    if (o->tmpl) {
        static const char *const known[] = {"chatml",    "llama2",    "llama3",
                                            "deepseek",  "deepseek2", "deepseek3",
                                            "alpaca",    "vicuna",    "zephyr",
                                            "raw",       NULL};
        int ok = 0;
        for (int i = 0; known[i]; i++)
            ok |= !strcmp(known[i], o->tmpl);
        if (!ok) {
            nib_warn("unknown template '%s'; using the model's own", o->tmpl);
            o->tmpl = NULL;
        }
    }
    if (!json_object_get(o->sampling, "n_predict"))
        json_object_set_new(o->sampling, "n_predict", json_integer(512));
    a->first = optind;
    return -1;
}

char *nib_join_words(int n, char *const *words)
{
    size_t qlen = 0;
    for (int i = 0; i < n; i++)
        qlen += strlen(words[i]) + 1;
    char *question = malloc(qlen + 1);
    if (!question)
        return NULL;
    question[0] = 0;
    for (int i = 0; i < n; i++) {
        if (i > 0)
            strcat(question, " ");
        strcat(question, words[i]);
    }
    return question;
}

/* Text a model can read: UTF-8 without NUL bytes. */
static int is_text(const char *s, size_t n)
{
    const unsigned char *p = (const unsigned char *)s;
    for (size_t i = 0; i < n;) {
        unsigned char c = p[i];
        if (c == 0)
            return 0;
        int len = c < 0x80 ? 1 : (c >= 0xc2 && c <= 0xdf) ? 2 : (c & 0xf0) == 0xe0 ? 3
                  : (c >= 0xf0 && c <= 0xf4) ? 4 : 0;
        if (!len || i + (size_t)len > n)
            return 0;
        for (int k = 1; k < len; k++)
            if ((p[i + k] & 0xc0) != 0x80)
                return 0;
        i += (size_t)len;
    }
    return 1;
}

/* instruction + blank line + fenced text, the fence longer than any run of
 * backticks inside the text */
static char *wrap_piped(const char *instruction, const char *text, size_t len)
{
    size_t run = 0, longest = 0;
    for (size_t i = 0; i < len; i++) {
        run = text[i] == '`' ? run + 1 : 0;
        if (run > longest)
            longest = run;
    }
    size_t fence = longest >= 3 ? longest + 1 : 3;
    size_t total = strlen(instruction) + len + 2 * fence + 8;
    char *out = malloc(total);
    if (!out)
        return NULL;
    size_t k = 0;
    k += (size_t)snprintf(out + k, total - k, "%s\n\n", instruction);
    memset(out + k, '`', fence);
    k += fence;
    out[k++] = '\n';
    memcpy(out + k, text, len);
    k += len;
    if (len && text[len - 1] != '\n')
        out[k++] = '\n';
    memset(out + k, '`', fence);
    k += fence;
    out[k] = 0;
    return out;
}

int nib_message(const char *question, const char *piped, size_t plen, char **message)
{
    *message = NULL;
    if (piped && !is_text(piped, plen)) {
        nib_error("stdin is not UTF-8 text (binary input?); nib reads text only");
        return NIB_ERR;
    }
    char *m;
    if (piped && plen && *question)
        m = wrap_piped(question, piped, plen);
    else
        m = strdup(piped && plen ? piped : question);
    if (!m || !*m) {
        free(m);
        nib_error("nothing to ask: the question and stdin are empty");
        return NIB_USAGE;
    }
    *message = m;
    return NIB_OK;
}
