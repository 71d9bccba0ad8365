/*
 * fuzz_nib.c - nib's command line and piped text (shell/args.c), without
 * a daemon: nib_parse_args, then the question and the message nib would
 * send.
 *
 * Input: byte 0 is the argument count (low 4 bits) and whether stdin is
 * input (bit 4); then that many NUL-terminated arguments (argv[0] is
 * "nib"); the rest is the piped text.
 *
 * Properties: parsing ends in -1 (go on) or an exit status nib documents;
 * n_predict is always set; a message is never empty, and for a question
 * with piped text it is the question, a blank line and the text between
 * fences of equal length, longer than any run of backticks in the text.
 */
#include "fuzz.h"

#include <getopt.h>
#include <string.h>

#include "nib.h"

static void check_message(const char *question, const char *piped, size_t plen, const char *msg)
{
    size_t ql = strlen(question), ml = strlen(msg);
    NBF_CHECK(ml > 0, "empty message");
    if (!(piped && plen && *question))
        return;
    NBF_CHECK(!strncmp(msg, question, ql) && !strncmp(msg + ql, "\n\n", 2), "no question");
    size_t fence = 0, run = 0, longest = 0;
    while (msg[ql + 2 + fence] == '`')
        fence++;
    for (size_t i = 0; i < plen; i++) {
        run = piped[i] == '`' ? run + 1 : 0;
        longest = run > longest ? run : longest;
    }
    NBF_CHECK(fence >= 3 && fence > longest, "fence of %zu for a run of %zu", fence, longest);
    const char *body = msg + ql + 2 + fence;
    NBF_CHECK(body[0] == '\n' && !memcmp(body + 1, piped, plen), "text not fenced");
    const char *tail = body + 1 + plen;
    if (piped[plen - 1] != '\n')
        NBF_CHECK(*tail++ == '\n', "no newline before the closing fence");
    NBF_CHECK(strlen(tail) == fence && strspn(tail, "`") == fence, "closing fence differs");
}

NBF_TARGET(nib)
{
    enum { MAX_ARGS = 16 };
    static FILE *devnull;
    if (!devnull)
        devnull = fopen("/dev/null", "w");
    NBF_CHECK(devnull != NULL, "/dev/null");
    if (size < 1)
        return 0;
    int n_args = data[0] & 15, have_stdin = data[0] >> 4 & 1;
    const uint8_t *p = data + 1, *end = data + size;
    char *argv[MAX_ARGS + 2];
    int argc = 0;
    argv[argc++] = strdup("nib");
    while (argc <= n_args && p < end) {
        const uint8_t *z = memchr(p, 0, (size_t)(end - p));
        size_t n = z ? (size_t)(z - p) : (size_t)(end - p);
        argv[argc] = strndup((const char *)p, n);
        NBF_CHECK(argv[argc] != NULL, "out of memory");
        argc++;
        p += n + (z != NULL);
    }
    argv[argc] = NULL;
    /* the piped text as read_stdin returns it: NUL-terminated */
    size_t plen = (size_t)(end - p);
    char *piped = NULL;
    if (have_stdin) {
        piped = malloc(plen + 1);
        NBF_CHECK(piped != NULL, "out of memory");
        memcpy(piped, p, plen);
        piped[plen] = 0;
    }

    nib_opts o = {0};
    o.stream = 1;
    o.sampling = json_object();
    nb_config_defaults(&o.cfg);
    nib_args a;
    optind = 0; /* a fresh getopt scan, as in a new process */
    int rc = nib_parse_args(argc, argv, &o, &a, devnull);
    NBF_CHECK(rc == -1 || rc == NIB_OK || rc == NIB_USAGE, "parse returned %d", rc);
    if (rc == -1) {
        NBF_CHECK(json_is_integer(json_object_get(o.sampling, "n_predict")), "no n_predict");
        NBF_CHECK(a.first >= 1 && a.first <= argc, "first word %d of %d", a.first, argc);
        char *question = nib_join_words(argc - a.first, argv + a.first);
        NBF_CHECK(question != NULL, "out of memory");
        char *msg = NULL;
        rc = nib_message(question, piped, plen, &msg);
        NBF_CHECK(rc == NIB_OK || rc == NIB_ERR || rc == NIB_USAGE, "message returned %d", rc);
        NBF_CHECK((rc == NIB_OK) == (msg != NULL), "message and status disagree");
        if (msg)
            check_message(question, piped, plen, msg);
        free(msg);
        free(question);
    }
    json_decref(o.sampling);
    free(piped);
    for (int i = 0; i < argc; i++)
        free(argv[i]);
    return 0;
}
