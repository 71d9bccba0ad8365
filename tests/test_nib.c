/*
 * test_nib.c - nib as a user meets it: one-shot and pipe modes give the
 * daemon's own greedy answer and nothing else on stdout; errors are one
 * line with the documented exit code; the chat works under a real pseudo
 * terminal (answers stream, Ctrl-C cancels, Up recalls, history survives,
 * Ctrl-D exits 0); `nib pull` downloads from a local HTTP server that
 * publishes checksums the way Hugging Face does, resumes, and rejects
 * mismatches.
 */
#include "testutil.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <netinet/in.h>
#include <poll.h>
#include <pty.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#include "nibble.h"

static char home[64];
static pid_t server_pid; /* the test's HTTP server, while one runs */

/* A private world: its own runtime, state, data and config directories. */
static void private_env(void)
{
    snprintf(home, sizeof home, "/tmp/nib-test-XXXXXX");
    assert_non_null(mkdtemp(home));
    char p[128];
    const char *vars[][2] = {{"XDG_RUNTIME_DIR", "run"}, {"XDG_STATE_HOME", "state"},
                             {"XDG_DATA_HOME", "data"}, {"XDG_CONFIG_HOME", "config"},
                             {"HOME", "home"}};
    for (int i = 0; i < 5; i++) {
        snprintf(p, sizeof p, "%s/%s", home, vars[i][1]);
        mkdir(p, 0700);
        setenv(vars[i][0], p, 1);
    }
    unsetenv("NIBBLE_MODEL");
    unsetenv("NO_COLOR");
}

static void stop_daemon(void)
{
    nb_client_params p = nb_client_default_params();
    p.autostart = 0;
    nb_client *c;
    if (nb_client_connect(&p, &c, NULL, 0) == NB_OK) {
        const char *r = "{\"op\":\"shutdown\"}";
        nb_client_send(c, r, strlen(r));
        char *line;
        nb_client_read(c, &line, NULL, 5000);
        free(line);
        nb_client_close(c);
    }
    char sock[256];
    nb_socket_path(sock, sizeof sock);
    for (int i = 0; i < 300 && access(sock, F_OK) == 0; i++)
        usleep(10000);
}

/* After every test, pass or fail: no daemon left running, no files left. */
static int teardown(void **state)
{
    (void)state;
    if (server_pid > 0) { /* a test that failed half-way */
        kill(server_pid, SIGKILL);
        waitpid(server_pid, NULL, 0);
        server_pid = 0;
    }
    if (!home[0])
        return 0;
    char sock[256], lock[300];
    if (nb_socket_path(sock, sizeof sock) == NB_OK) {
        snprintf(lock, sizeof lock, "%s.lock", sock);
        char *pid = nbt_read_file(lock, NULL);
        if (pid && atoi(pid) > 1)
            kill(atoi(pid), SIGKILL);
        free(pid);
    }
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", home);
    if (system(cmd) != 0)
        return -1;
    home[0] = 0;
    return 0;
}

static char *model(const char *name)
{
    char rel[256];
    snprintf(rel, sizeof rel, "models/%s", name);
    return nbt_data_path(rel);
}

/* Run nib with stdin from a buffer (NULL: /dev/null). */
static int run_nib(const char *in, size_t in_len, char **out, char **err, char *const args[])
{
    char *argv[32];
    int n = 0;
    static char bin[4096];
    snprintf(bin, sizeof bin, "%s", nbt_bin("nib"));
    argv[n++] = bin;
    for (int i = 0; args[i]; i++)
        argv[n++] = args[i];
    argv[n] = NULL;
    if (!in)
        return nbt_run(argv, out, err, 60);
    /* the daemon nib starts must not inherit nib's output pipes, or this
     * would wait for their end for ever (nbt_run leaves them open in the
     * child, as a careless parent would) */
    char *path = nbt_write_temp(in, in_len, ".txt");
    const nbt_run_opts o = {.stdin_path = path};
    int rc = nbt_run_with(argv, &o, out, err, 60);
    unlink(path);
    free(path);
    return rc;
}

/* What the daemon answers, asked directly. */
static char *daemon_answer(const char *req)
{
    nb_client_params p = nb_client_default_params();
    nb_client *c;
    char err[512];
    if (nb_client_connect(&p, &c, err, sizeof err))
        fail_msg("%s", err);
    assert_int_equal(nb_client_send(c, req, strlen(req)), NB_OK);
    char *text = calloc(1, 1);
    size_t len = 0;
    for (;;) {
        char *line;
        assert_int_equal(nb_client_read(c, &line, NULL, 30000), NB_OK);
        assert_non_null(line);
        json_t *e = json_loads(line, 0, NULL);
        free(line);
        const char *t = json_string_value(json_object_get(e, "text"));
        int done = json_is_true(json_object_get(e, "done"));
        if (t && !done) {
            text = realloc(text, len + strlen(t) + 1);
            strcpy(text + len, t);
            len += strlen(t);
        }
        json_decref(e);
        if (done)
            break;
    }
    nb_client_close(c);
    return text;
}

/* ------------------------------------------------------------------ pipes */

static void test_one_shot_and_pipe(void **state)
{
    (void)state;
    NBT_REQUIRE_DATA();
    private_env();
    char *m = model("stories260K.gguf");
    setenv("NIBBLE_MODEL", m, 1);
    char *out, *err;
    char *args[] = {"-o", "temperature=0", "-n", "30", "Once", "upon", "a", "time", NULL};
    assert_int_equal(run_nib(NULL, 0, &out, &err, args), 0);
    assert_string_equal(err, "");           /* nothing on stderr on success */
    assert_null(strchr(out, '\x1b'));       /* no escape bytes in a pipe */
    char *want = daemon_answer("{\"op\":\"chat\",\"messages\":[{\"role\":\"user\",\"content\":"
                               "\"Once upon a time\"}],\"temperature\":0,\"n_predict\":30}");
    assert_string_equal(out, want);
    assert_true(strlen(out) > 10);
    free(out), free(err), free(want);

    /* piped text: instruction, blank line, fenced text */
    const char *text = "The cat sat.\nThe dog ran.\n";
    char *args2[] = {"-o", "temperature=0", "-n", "25", "Summarise this:", NULL};
    assert_int_equal(run_nib(text, strlen(text), &out, &err, args2), 0);
    assert_string_equal(err, "");
    want = daemon_answer("{\"op\":\"chat\",\"messages\":[{\"role\":\"user\",\"content\":"
                         "\"Summarise this:\\n\\n```\\nThe cat sat.\\nThe dog ran.\\n```\"}],"
                         "\"temperature\":0,\"n_predict\":25}");
    assert_string_equal(out, want);
    free(out), free(err), free(want);

    /* text holding a fence gets a longer one */
    const char *fenced = "a ``` b";
    assert_int_equal(run_nib(fenced, strlen(fenced), &out, &err, args2), 0);
    want = daemon_answer("{\"op\":\"chat\",\"messages\":[{\"role\":\"user\",\"content\":"
                         "\"Summarise this:\\n\\n````\\na ``` b\\n````\"}],"
                         "\"temperature\":0,\"n_predict\":25}");
    assert_string_equal(out, want);
    free(out), free(err), free(want);

    /* --raw: the text as a bare prompt */
    char *args3[] = {"--raw", "-o", "temperature=0", "-n", "20", "Once upon a time", NULL};
    assert_int_equal(run_nib(NULL, 0, &out, &err, args3), 0);
    want = daemon_answer("{\"op\":\"complete\",\"prompt\":\"Once upon a time\",\"temperature\":0,"
                         "\"n_predict\":20}");
    assert_string_equal(out, want);
    free(out), free(err), free(want);

    /* NO_COLOR and -q change nothing in a pipe; --no-stream gives the same text */
    setenv("NO_COLOR", "1", 1);
    char *args4[] = {"-q", "--no-stream", "-o", "temperature=0", "-n", "30", "Once upon a time", NULL};
    assert_int_equal(run_nib(NULL, 0, &out, &err, args4), 0);
    want = daemon_answer("{\"op\":\"chat\",\"messages\":[{\"role\":\"user\",\"content\":"
                         "\"Once upon a time\"}],\"temperature\":0,\"n_predict\":30}");
    assert_string_equal(out, want);
    free(out), free(err), free(want);
    unsetenv("NO_COLOR");

    /* -c continues: the last conversation is sent again, plus the new turn,
     * and the daemon's session cache spares it the earlier turns (-v shows
     * the token counts on stderr, and nothing else) */
    char *args5a[] = {"-v", "-o", "temperature=0", "-n", "10", "Tell me a story", NULL};
    assert_int_equal(run_nib(NULL, 0, &out, &err, args5a), 0);
    long long first_prompt = -1, cached = -1, prompt = -1;
    assert_int_equal(sscanf(err, "nib: %lld prompt tokens", &first_prompt), 1);
    assert_int_equal(nbt_count(err, "\n"), 1);
    free(out), free(err);
    char *args5[] = {"-c", "-v", "-o", "temperature=0", "-n", "10", "And then?", NULL};
    assert_int_equal(run_nib(NULL, 0, &out, &err, args5), 0);
    assert_int_equal(sscanf(err, "nib: %lld prompt tokens (%lld cached)", &prompt, &cached), 2);
    assert_true(prompt > first_prompt);
    assert_true(cached >= first_prompt); /* the whole first turn, at least its question */
    free(out), free(err);
    char last[256];
    snprintf(last, sizeof last, "%s/data/nibble/conversations/last", home);
    char *id = nbt_read_file(last, NULL);
    assert_non_null(id);
    id[strcspn(id, "\n")] = 0;
    char conv[512];
    snprintf(conv, sizeof conv, "%s/data/nibble/conversations/%s.json", home, id);
    json_t *msgs = json_load_file(conv, 0, NULL);
    assert_int_equal(json_array_size(msgs), 4); /* user, assistant, user, assistant */
    json_decref(msgs);
    free(id);
    stop_daemon();
    free(m);
}

/* ------------------------------------------------------------------ templates */



/* A copy of a model with a chat template nibble does not know.  The key is
 * inserted right after the header, padded to 32 bytes so that the tensor
 * data stays aligned and its offsets stay valid. */
static char *with_template(const char *src, const char *tmpl)
{
    size_t len;
    unsigned char *in = (unsigned char *)nbt_read_file(src, &len);
    assert_non_null(in);
    const char *key = "tokenizer.chat_template";
    size_t base = 8 + strlen(key) + 4 + 8, slen = strlen(tmpl);
    while ((base + slen) % 32)
        slen++;
    size_t add = base + slen;
    unsigned char *out = calloc(1, len + add);
    memcpy(out, in, 24);
    uint64_t n_kv;
    memcpy(&n_kv, out + 16, 8);
    n_kv++;
    memcpy(out + 16, &n_kv, 8);
    unsigned char *p = out + 24;
    uint64_t kl = strlen(key), sl = slen;
    uint32_t type = 8; /* string */
    memcpy(p, &kl, 8), p += 8;
    memcpy(p, key, kl), p += kl;
    memcpy(p, &type, 4), p += 4;
    memcpy(p, &sl, 8), p += 8;
    memset(p, ' ', slen);
    memcpy(p, tmpl, strlen(tmpl));
    memcpy(out + 24 + add, in + 24, len - 24);
    char *path = nbt_write_temp((char *)out, len + add, ".gguf");
    free(in);
    free(out);
    return path;
}

static void test_templates(void **state)
{
    (void)state;
    NBT_REQUIRE_DATA();
    private_env();
    char *m = model("stories260K.gguf");
    char *odd = with_template(m, "{{ a template from nowhere }}");
    setenv("NIBBLE_MODEL", odd, 1);
    char *out, *err;
    /* an unknown template: ChatML, and one warning line saying so */
    char *args[] = {"-o", "temperature=0", "-n", "20", "Hello", NULL};
    assert_int_equal(run_nib(NULL, 0, &out, &err, args), 0);
    assert_non_null(strstr(err, "chat template"));
    assert_int_equal(nbt_count(err, "\n"), 1);
    char *want = daemon_answer("{\"op\":\"chat\",\"template\":\"chatml\",\"messages\":"
                               "[{\"role\":\"user\",\"content\":\"Hello\"}],"
                               "\"temperature\":0,\"n_predict\":20}");
    assert_string_equal(out, want);
    free(out), free(err), free(want);
    /* -t names one (Alpaca, as many fine-tunes use), with -s as its system */
    char *args2[] = {"-t", "alpaca", "-s", "Be kind.", "-o", "temperature=0", "-n", "20",
                     "Hello", NULL};
    assert_int_equal(run_nib(NULL, 0, &out, &err, args2), 0);
    assert_string_equal(err, "");
    want = daemon_answer("{\"op\":\"chat\",\"template\":\"alpaca\",\"messages\":"
                         "[{\"role\":\"system\",\"content\":\"Be kind.\"},"
                         "{\"role\":\"user\",\"content\":\"Hello\"}],"
                         "\"temperature\":0,\"n_predict\":20}");
    assert_string_equal(out, want);
    free(out), free(err), free(want);
    /* a name nib does not know: a warning, then the model's own */
    char *args3[] = {"-t", "klingon", "-o", "temperature=0", "-n", "5", "Hello", NULL};
    assert_int_equal(run_nib(NULL, 0, &out, &err, args3), 0);
    assert_non_null(strstr(err, "klingon"));
    free(out), free(err);
    stop_daemon();
    unlink(odd);
    free(odd);
    free(m);
}

/* ------------------------------------------------------------------ errors */

static void test_errors(void **state)
{
    (void)state;
    NBT_REQUIRE_DATA();
    private_env();
    char *out, *err;
    /* no model, no daemon: one line saying what to run */
    char *args[] = {"hello", NULL};
    assert_int_equal(run_nib(NULL, 0, &out, &err, args), 1);
    assert_non_null(strstr(err, "nib pull"));
    assert_int_equal(nbt_count(err, "\n"), 1);
    assert_string_equal(out, "");
    free(out), free(err);
    /* usage */
    char *bad[] = {"-n", "lots", "x", NULL};
    assert_int_equal(run_nib(NULL, 0, &out, &err, bad), 2);
    free(out), free(err);
    /* no question, and stdin is /dev/null, not a pipe: nothing to ask */
    char *none[] = {NULL};
    assert_int_equal(run_nib(NULL, 0, &out, &err, none), 2);
    assert_non_null(strstr(err, "nothing to ask"));
    assert_int_equal(nbt_count(err, "\n"), 1);
    free(out), free(err);

    char *m = model("stories260K.gguf");
    setenv("NIBBLE_MODEL", m, 1);
    /* binary and invalid UTF-8 input */
    const char bin[] = "ab\0cd";
    assert_int_equal(run_nib(bin, sizeof bin - 1, &out, &err, args), 1);
    assert_non_null(strstr(err, "UTF-8"));
    assert_int_equal(nbt_count(err, "\n"), 1);
    free(out), free(err);
    const char inv[] = "caf\xe9 \xff";
    assert_int_equal(run_nib(inv, sizeof inv - 1, &out, &err, args), 1);
    assert_int_equal(nbt_count(err, "\n"), 1);
    free(out), free(err);
    /* input larger than the context (512 tokens) */
    size_t big = 20000;
    char *text = malloc(big + 1);
    for (size_t i = 0; i < big; i++)
        text[i] = "the cat sat on a mat "[i % 21];
    text[big] = 0;
    double t0 = nbt_now_ms();
    assert_int_equal(run_nib(text, big, &out, &err, args), 1);
    assert_true(nbt_now_ms() - t0 < 30000);
    assert_non_null(strstr(err, "too long"));
    assert_int_equal(nbt_count(err, "\n"), 1);
    free(out), free(err), free(text);
    stop_daemon();

    /* the daemon killed mid-answer: an error, not a hang */
    char *tiny = model("llama-2-tiny-random.gguf");
    setenv("NIBBLE_MODEL", tiny, 1);
    pid_t kid = fork();
    if (kid == 0) {
        int null = open("/dev/null", O_RDWR);
        dup2(null, 0);
        dup2(null, 1);
        int ef = open("/tmp/nib-test-dead.err", O_WRONLY | O_CREAT | O_TRUNC, 0600);
        dup2(ef, 2);
        char b[4096];
        snprintf(b, sizeof b, "%s", nbt_bin("nib"));
        execl(b, "nib", "--raw", "-n", "-1", "hello", (char *)NULL);
        _exit(127);
    }
    /* wait until the daemon is busy with it, then kill the daemon */
    nb_client_params p = nb_client_default_params();
    p.autostart = 0;
    nb_client *c = NULL;
    pid_t dpid = -1;
    for (int i = 0; i < 500 && dpid < 0; i++, usleep(10000)) {
        if (!c && nb_client_connect(&p, &c, NULL, 0))
            continue;
        const char *r = "{\"op\":\"status\"}";
        nb_client_send(c, r, strlen(r));
        char *line;
        nb_client_read(c, &line, NULL, 2000);
        json_t *st = line ? json_loads(line, 0, NULL) : NULL;
        free(line);
        json_t *s0 = json_array_get(json_object_get(st, "slots"), 0);
        if (json_is_true(json_object_get(s0, "busy"))) {
            char sock[256], lock[300];
            nb_socket_path(sock, sizeof sock);
            snprintf(lock, sizeof lock, "%s.lock", sock);
            char *pid = nbt_read_file(lock, NULL);
            dpid = pid ? atoi(pid) : -1;
            free(pid);
        }
        json_decref(st);
    }
    nb_client_close(c);
    assert_true(dpid > 0);
    kill(dpid, SIGKILL);
    int status;
    t0 = nbt_now_ms();
    waitpid(kid, &status, 0);
    assert_true(nbt_now_ms() - t0 < 10000);
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 1);
    char *e = nbt_read_file("/tmp/nib-test-dead.err", NULL);
    assert_non_null(strstr(e, "daemon"));
    free(e);
    unlink("/tmp/nib-test-dead.err");
    /* and the next nib starts a fresh daemon (the dead one left its socket) */
    char *args6[] = {"--raw", "-n", "3", "hi", NULL};
    assert_int_equal(run_nib(NULL, 0, &out, &err, args6), 0);
    free(out), free(err);
    stop_daemon();
    free(tiny);
    free(m);
}

/* ------------------------------------------------------------------ pty */

static void test_repl(void **state)
{
    (void)state;
    NBT_REQUIRE_DATA();
    private_env();
    char *m = model("llama-2-tiny-random.gguf");
    setenv("NIBBLE_MODEL", m, 1);
    static char bin[4096];
    snprintf(bin, sizeof bin, "%s", nbt_bin("nib"));
    char *argv[] = {bin, "--raw", "-n", "-1", NULL};
    nbt_term t;
    nbt_term_start(&t, argv);
    nbt_term_wait(&t, 0, "> ", 10000);
    /* an answer streams; Ctrl-C stops it and returns to the prompt */
    nbt_term_edit(&t, "hello there\r");
    size_t at = nbt_term_wait(&t, 0, "hello there", 10000);
    usleep(500000);
    nbt_term_send(&t, "\x03");
    at = nbt_term_wait(&t, at, "(cancelled)", 5000);
    at = nbt_term_wait(&t, at, "> ", 5000);
    /* the daemon saw the request cancelled: its slot is free again */
    nb_client_params p = nb_client_default_params();
    p.autostart = 0;
    nb_client *c;
    assert_int_equal(nb_client_connect(&p, &c, NULL, 0), NB_OK);
    const char *r = "{\"op\":\"status\"}";
    nb_client_send(c, r, strlen(r));
    char *line;
    nb_client_read(c, &line, NULL, 5000);
    json_t *st = json_loads(line, 0, NULL);
    free(line);
    size_t i;
    json_t *s;
    json_array_foreach(json_object_get(st, "slots"), i, s) assert_false(json_is_true(json_object_get(s, "busy")));
    json_decref(st);
    nb_client_close(c);
    /* Up recalls the last line */
    nbt_term_edit(&t, "\x1b[A");
    nbt_term_wait(&t, at, "hello there", 5000);
    nbt_term_edit(&t, "\x15/help\r"); /* Ctrl-U clears the recalled line */
    at = nbt_term_wait(&t, at, "Ctrl-D leaves.", 5000);
    /* Ctrl-D leaves with 0 */
    nbt_term_edit(&t, "\x04");
    assert_int_equal(nbt_term_exit(&t), 0);

    /* the history survives a restart */
    char hist[256];
    snprintf(hist, sizeof hist, "%s/state/nibble/history", home);
    char *h = nbt_read_file(hist, NULL);
    assert_non_null(h);
    assert_non_null(strstr(h, "hello there\n"));
    free(h);
    nbt_term_start(&t, argv);
    at = nbt_term_wait(&t, 0, "> ", 10000);
    nbt_term_edit(&t, "\x1b[A\x1b[A");
    nbt_term_wait(&t, at, "hello there", 5000);
    nbt_term_edit(&t, "\x15 secret\r"); /* a leading space: not saved */
    at = nbt_term_wait(&t, at, "secret", 5000);
    usleep(300000);
    nbt_term_send(&t, "\x03");
    at = nbt_term_wait(&t, at, "(cancelled)", 5000);
    nbt_term_wait(&t, at, "> ", 5000);
    nbt_term_edit(&t, "\x04");
    assert_int_equal(nbt_term_exit(&t), 0);
    h = nbt_read_file(hist, NULL);
    assert_null(strstr(h, "secret"));
    free(h);
    stop_daemon();
    free(m);
}

/* Type a line and wait for what marks its end (with -v, every answer ends
 * with nib's "tokens/s" line). */
static size_t term_line(nbt_term *t, size_t at, const char *line, const char *until)
{
    char keys[512];
    snprintf(keys, sizeof keys, "%s\r", line);
    nbt_term_edit(t, keys);
    return nbt_term_wait(t, at, until, 20000) + strlen(until);
}

static void test_repl_chat(void **state)
{
    (void)state;
    NBT_REQUIRE_DATA();
    private_env();
    unsetenv("LANG"); /* the C locale: nib still edits UTF-8 */
    unsetenv("LC_ALL");
    unsetenv("LC_CTYPE");
    char *m = model("stories260K.gguf");
    setenv("NIBBLE_MODEL", m, 1);
    /* a history of three lines at most */
    char cfg[256];
    snprintf(cfg, sizeof cfg, "%s/config/nibble", home);
    mkdir(cfg, 0700);
    strcat(cfg, "/config");
    const char *conf = "history_size = 3\n";
    FILE *f = fopen(cfg, "w");
    assert_non_null(f);
    fputs(conf, f);
    fclose(f);
    static char bin[4096];
    snprintf(bin, sizeof bin, "%s", nbt_bin("nib"));
    char *argv[] = {bin, "-v", "-n", "6", "-o", "temperature=0", NULL};
    nbt_term t;
    nbt_term_start(&t, argv);
    size_t at = nbt_term_wait(&t, 0, "> ", 10000);
    /* a """ block is one message */
    at = term_line(&t, at, "\"\"\"", "... ");
    at = term_line(&t, at, "line one", "... ");
    at = term_line(&t, at, "line two", "... ");
    at = term_line(&t, at, "\"\"\"", "tokens/s");
    /* so is a paste: lines arriving together */
    at = term_line(&t, at, "first pasted\rsecond pasted", "tokens/s");
    /* UTF-8 typed in */
    at = term_line(&t, at, "caf\xc3\xa9 \xe2\x98\x95", "tokens/s");
    char save[256], cmd[300];
    snprintf(save, sizeof save, "%s/conv.txt", home);
    snprintf(cmd, sizeof cmd, "/save %s", save);
    at = term_line(&t, at, cmd, "(saved to");
    char *text = nbt_read_file(save, NULL);
    assert_non_null(text);
    assert_int_equal(nbt_count(text, "## user\n"), 3);
    assert_int_equal(nbt_count(text, "## assistant\n"), 3);
    assert_non_null(strstr(text, "## user\n\nline one\nline two\n\n"));
    assert_non_null(strstr(text, "## user\n\nfirst pasted\nsecond pasted\n\n"));
    assert_non_null(strstr(text, "## user\n\ncaf\xc3\xa9 \xe2\x98\x95\n\n"));
    free(text);
    /* commands */
    at = term_line(&t, at, "/set bogus 1", "usage: /set");
    at = term_line(&t, at, "/set top_k 1", "(top_k = 1)");
    at = term_line(&t, at, "/system Be brief.", "(system prompt set");
    at = term_line(&t, at, cmd, "(saved to");
    text = nbt_read_file(save, NULL);
    assert_string_equal(text, "## system\n\nBe brief.\n\n");
    free(text);
    at = term_line(&t, at, "/reset", "(new conversation)");
    at = term_line(&t, at, cmd, "(saved to");
    text = nbt_read_file(save, NULL);
    assert_string_equal(text, "## system\n\nBe brief.\n\n"); /* the system prompt stays */
    free(text);
    at = term_line(&t, at, "/nonsense", "unknown command");
    nbt_term_edit(&t, "\x04");
    assert_int_equal(nbt_term_exit(&t), 0);

    /* the history: capped at three, newest last, a repeat moved to the end */
    char hist[256];
    snprintf(hist, sizeof hist, "%s/state/nibble/history", home);
    nbt_term_start(&t, argv);
    at = nbt_term_wait(&t, 0, "> ", 10000);
    at = term_line(&t, at, "/help", "Ctrl-D leaves.");
    at = term_line(&t, at, "/reset", "(new conversation)");
    at = term_line(&t, at, "/help", "Ctrl-D leaves.");
    nbt_term_edit(&t, "\x04");
    assert_int_equal(nbt_term_exit(&t), 0);
    char *h = nbt_read_file(hist, NULL);
    assert_non_null(h);
    assert_string_equal(h, "/nonsense\n/reset\n/help\n");
    free(h);
    /* NIBBLE_NOHISTORY=1: nothing saved */
    setenv("NIBBLE_NOHISTORY", "1", 1);
    nbt_term_start(&t, argv);
    at = nbt_term_wait(&t, 0, "> ", 10000);
    at = term_line(&t, at, "/set seed 7", "(seed = 7)");
    nbt_term_edit(&t, "\x04");
    assert_int_equal(nbt_term_exit(&t), 0);
    unsetenv("NIBBLE_NOHISTORY");
    h = nbt_read_file(hist, NULL);
    assert_string_equal(h, "/nonsense\n/reset\n/help\n");
    free(h);
    stop_daemon();
    free(m);
}

/* As a Vim filter (:'<,'>!nib "..."): the selection on stdin, stdout into
 * the buffer, stderr either the terminal or (Vim's 'shellredir') the same
 * file as stdout.  Either way the buffer gets the answer and nothing else. */
static void test_filter(void **state)
{
    (void)state;
    NBT_REQUIRE_DATA();
    private_env();
    char *m = model("stories260K.gguf");
    setenv("NIBBLE_MODEL", m, 1);
    const char *sel = "the dog are happy\n";
    char *in = nbt_write_temp(sel, strlen(sel), ".txt");
    char outp[256];
    snprintf(outp, sizeof outp, "%s/filtered.txt", home);
    static char bin[4096];
    snprintf(bin, sizeof bin, "%s", nbt_bin("nib"));
    char *want = NULL;
    for (int merged = 0; merged < 2; merged++) {
        if (merged)
            stop_daemon(); /* the second time, the daemon starts inside the filter */
        nbt_term t;
        struct winsize ws = {30, 100, 0, 0};
        t.len = 0;
        t.buf[0] = 0;
        t.pid = forkpty(&t.fd, NULL, NULL, &ws);
        assert_true(t.pid >= 0);
        if (t.pid == 0) {
            int fi = open(in, O_RDONLY), fo = open(outp, O_WRONLY | O_CREAT | O_TRUNC, 0600);
            dup2(fi, 0);
            dup2(fo, 1);
            if (merged)
                dup2(fo, 2);
            execl(bin, "nib", "-o", "temperature=0", "-n", "20", "fix the grammar", (char *)NULL);
            _exit(127);
        }
        assert_int_equal(nbt_term_exit(&t), 0);
        char *got = nbt_read_file(outp, NULL);
        assert_non_null(got);
        if (!want)
            want = daemon_answer("{\"op\":\"chat\",\"messages\":[{\"role\":\"user\",\"content\":"
                                 "\"fix the grammar\\n\\n```\\nthe dog are happy\\n```\"}],"
                                 "\"temperature\":0,\"n_predict\":20}");
        assert_string_equal(got, want);
        free(got);
    }
    free(want);
    unlink(in);
    free(in);
    stop_daemon();
    free(m);
}

/* nib --cmd, and the Ctrl-X Ctrl-N binding of --init in real bash and zsh:
 * the words at the prompt become the suggested command, which is not run. */
static void test_suggest(void **state)
{
    (void)state;
    NBT_REQUIRE_DATA();
    private_env();
    char *m = model("stories260K.gguf");
    setenv("NIBBLE_MODEL", m, 1);
    char *out, *err;
    char *args[] = {"--cmd", "list the files", NULL};
    assert_int_equal(run_nib(NULL, 0, &out, &err, args), 0);
    assert_int_equal(nbt_count(out, "\n"), 1); /* one line: the command */
    assert_true(strlen(out) > 1);
    assert_null(strstr(out, "```"));
    char want[32];
    snprintf(want, sizeof want, "%.20s", out); /* what must appear on the command line */
    free(out), free(err);

    static const char *shells[][3] = {{"bash", "/bin/bash", "--norc"}, {"zsh", "/bin/zsh", "-f"}};
    for (int i = 0; i < 2; i++) {
        if (access(shells[i][1], X_OK) != 0) {
            printf("skipped: %s is not installed, so its binding was not tried\n", shells[i][0]);
            continue;
        }
        char *iargs[] = {"--init", (char *)shells[i][0], NULL};
        assert_int_equal(run_nib(NULL, 0, &out, &err, iargs), 0);
        char script[256];
        snprintf(script, sizeof script, "%s/init.%s", home, shells[i][0]);
        FILE *f = fopen(script, "w");
        assert_non_null(f);
        fputs(out, f);
        fclose(f);
        free(out), free(err);
        setenv("PS1", "READY$ ", 1);
        char *argv[] = {(char *)shells[i][1], (char *)shells[i][2], "-i", NULL};
        nbt_term t;
        nbt_term_start(&t, argv);
        size_t at = nbt_term_wait(&t, 0, "READY$ ", 10000) + 7;
        char line[300];
        snprintf(line, sizeof line, ". %s\r", script);
        nbt_term_send(&t, line);
        at = nbt_term_wait(&t, at, "READY$ ", 10000) + 7;
        nbt_term_send(&t, "list the files\x18\x0e");
        at = nbt_term_wait(&t, at, want, 20000);
        usleep(300000);
        /* nothing ran: no new prompt, no "command not found" */
        struct pollfd pf = {t.fd, POLLIN, 0};
        while (poll(&pf, 1, 50) > 0) {
            ssize_t r = read(t.fd, t.buf + t.len, sizeof t.buf - 1 - t.len);
            if (r <= 0)
                break;
            t.len += (size_t)r;
            t.buf[t.len] = 0;
        }
        assert_null(strstr(t.buf + at, "READY$ "));
        assert_null(strstr(t.buf + at, "not found"));
        nbt_term_send(&t, "\x15" "exit\r");
        assert_int_equal(nbt_term_exit(&t), 0);
        unsetenv("PS1");
    }
    stop_daemon();
    free(m);
}

/* ------------------------------------------------------------------ pull */

typedef struct server {
    pid_t pid;
    int port;
} server;

/* A tiny HTTP server: /<repo>/resolve/main/<file> redirects to /cdn/<file>
 * with X-Linked-Etag as Hugging Face does; /cdn/<file> serves the bytes,
 * honouring Range.  With `cut`, the first download stops half-way. */
static void serve(int lfd, const char *data, size_t len, const char *etag, int cut)
{
    int served = 0;
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
        char path[1024] = "";
        sscanf(req, "GET %1023s", path);
        long from = 0;
        const char *range = strcasestr(req, "\nRange: bytes=");
        if (range)
            from = atol(range + 14);
        char hdr[1024];
        if (strstr(path, "/resolve/main/")) {
            const char *file = strrchr(path, '/') + 1;
            int h = snprintf(hdr, sizeof hdr,
                             "HTTP/1.1 302 Found\r\nLocation: /cdn/%s\r\n%s%s%s"
                             "Content-Length: 0\r\nConnection: close\r\n\r\n",
                             file, etag ? "X-Linked-Etag: \"" : "", etag ? etag : "",
                             etag ? "\"\r\n" : "");
            if (write(fd, hdr, (size_t)h) < 0)
                (void)0;
        } else if (!strncmp(path, "/cdn/", 5)) {
            size_t start = range && from < (long)len ? (size_t)from : 0;
            int h = start ? snprintf(hdr, sizeof hdr,
                                     "HTTP/1.1 206 Partial Content\r\nContent-Length: %zu\r\n"
                                     "Content-Range: bytes %zu-%zu/%zu\r\nConnection: close\r\n\r\n",
                                     len - start, start, len - 1, len)
                          : snprintf(hdr, sizeof hdr,
                                     "HTTP/1.1 200 OK\r\nContent-Length: %zu\r\n"
                                     "Connection: close\r\n\r\n",
                                     len);
            if (write(fd, hdr, (size_t)h) < 0)
                (void)0;
            size_t end = len;
            if (cut && !served++)
                end = len / 2; /* the connection drops half-way */
            for (size_t o = start; o < end;) {
                ssize_t w = write(fd, data + o, (end - o < 65536 ? end - o : 65536));
                if (w <= 0)
                    break;
                o += (size_t)w;
                if (cut && served == 1)
                    usleep(2000); /* slow enough to show progress */
            }
        } else {
            const char *nf = "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
            if (write(fd, nf, strlen(nf)) < 0)
                (void)0;
        }
        close(fd);
    }
}

static void server_start(server *s, const char *data, size_t len, const char *etag, int cut)
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
    s->port = ntohs(sa.sin_port);
    s->pid = fork();
    if (s->pid == 0) {
        /* it dies with the test, and holds none of the test's output pipes */
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        int null = open("/dev/null", O_RDWR);
        dup2(null, 1);
        dup2(null, 2);
        serve(lfd, data, len, etag, cut);
        _exit(0);
    }
    server_pid = s->pid;
    close(lfd);
    char ep[64];
    snprintf(ep, sizeof ep, "http://127.0.0.1:%d", s->port);
    setenv("NIBBLE_HF_ENDPOINT", ep, 1);
}

static void server_stop(server *s)
{
    kill(s->pid, SIGKILL);
    waitpid(s->pid, NULL, 0);
    server_pid = 0;
}

static void sha256_hex(const char *data, size_t len, char out[65]);

static void test_pull(void **state)
{
    (void)state;
    NBT_REQUIRE_DATA();
    private_env();
    char *src = model("stories260K.gguf");
    size_t len;
    char *data = nbt_read_file(src, &len);
    char sha[65];
    sha256_hex(data, len, sha);
    char final[256], part[300];
    snprintf(final, sizeof final, "%s/data/nibble/models/tinyllama-1.1b-chat-v1.0.Q4_K_M.gguf", home);
    snprintf(part, sizeof part, "%s.part", final);
    char *out, *err;
    char *args[] = {"pull", "tinyllama", NULL};

    /* a published checksum that does not match: rejected, nothing left */
    server s;
    server_start(&s, data, len, "0000000000000000000000000000000000000000000000000000000000000000", 0);
    assert_int_equal(run_nib(NULL, 0, &out, &err, args), 1);
    assert_non_null(strstr(err, "checksum mismatch"));
    assert_int_equal(access(final, F_OK), -1);
    assert_int_equal(access(part, F_OK), -1);
    free(out), free(err);
    server_stop(&s);

    /* interrupted half-way, then resumed; progress shown on a terminal */
    server_start(&s, data, len, sha, 1);
    assert_int_equal(run_nib(NULL, 0, &out, &err, args), 1);
    assert_non_null(strstr(err, "resume"));
    struct stat st;
    assert_int_equal(stat(part, &st), 0);
    assert_true(st.st_size > 0 && (size_t)st.st_size < len);
    assert_int_equal(access(final, F_OK), -1);
    free(out), free(err);
    static char bin[4096];
    snprintf(bin, sizeof bin, "%s", nbt_bin("nib"));
    char *argv[] = {bin, "pull", "tinyllama", NULL};
    nbt_term t;
    nbt_term_start(&t, argv);
    size_t at = nbt_term_wait(&t, 0, "resuming", 20000);
    nbt_term_wait(&t, at, "%", 20000);
    nbt_term_wait(&t, at, "verified", 20000);
    assert_int_equal(nbt_term_exit(&t), 0);
    server_stop(&s);
    size_t got_len;
    char *got = nbt_read_file(final, &got_len);
    assert_int_equal(got_len, len);
    assert_memory_equal(got, data, len);
    free(got);
    assert_int_equal(access(part, F_OK), -1);
    /* it is the default model now, and listed */
    char *margs[] = {"models", NULL};
    assert_int_equal(run_nib(NULL, 0, &out, &err, margs), 0);
    assert_non_null(strstr(out, "* "));
    assert_non_null(strstr(out, "tinyllama-1.1b-chat-v1.0.Q4_K_M.gguf"));
    free(out), free(err);

    /* a pinned checksum that does not match: rejected too */
    unlink(final);
    server_start(&s, data, len, NULL, 0);
    char *pin[] = {"pull", "--sha256", "1111111111111111111111111111111111111111111111111111111111111111",
                   "tinyllama", NULL};
    assert_int_equal(run_nib(NULL, 0, &out, &err, pin), 1);
    assert_non_null(strstr(err, "checksum mismatch"));
    assert_int_equal(access(final, F_OK), -1);
    free(out), free(err);
    /* and the right pin, with nothing published, is accepted */
    pin[2] = sha;
    assert_int_equal(run_nib(NULL, 0, &out, &err, pin), 0);
    assert_int_equal(access(final, F_OK), 0);
    free(out), free(err);
    server_stop(&s);
    free(data);
    free(src);
}

/* SHA-256, written out here so the test does not trust the code it tests. */
static void sha256_hex(const char *data, size_t len, char out[65])
{
    static const uint32_t k[64] = {
        0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4,
        0xab1c5ed5, 0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe,
        0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f,
        0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7,
        0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc,
        0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b,
        0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116,
        0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
        0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7,
        0xc67178f2};
    uint32_t h[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                     0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
    size_t total = ((len + 9 + 63) / 64) * 64;
    unsigned char *m = calloc(total, 1);
    memcpy(m, data, len);
    m[len] = 0x80;
    uint64_t bits = (uint64_t)len * 8;
    for (int i = 0; i < 8; i++)
        m[total - 1 - i] = (unsigned char)(bits >> (8 * i));
#define ROR(x, n) (((x) >> (n)) | ((x) << (32 - (n))))
    for (size_t off = 0; off < total; off += 64) {
        uint32_t w[64];
        for (int i = 0; i < 16; i++)
            w[i] = (uint32_t)m[off + 4 * i] << 24 | (uint32_t)m[off + 4 * i + 1] << 16 |
                   (uint32_t)m[off + 4 * i + 2] << 8 | m[off + 4 * i + 3];
        for (int i = 16; i < 64; i++) {
            uint32_t s0 = ROR(w[i - 15], 7) ^ ROR(w[i - 15], 18) ^ (w[i - 15] >> 3);
            uint32_t s1 = ROR(w[i - 2], 17) ^ ROR(w[i - 2], 19) ^ (w[i - 2] >> 10);
            w[i] = w[i - 16] + s0 + w[i - 7] + s1;
        }
        uint32_t a = h[0], b = h[1], c = h[2], d = h[3], e = h[4], f = h[5], g = h[6], hh = h[7];
        for (int i = 0; i < 64; i++) {
            uint32_t t1 = hh + (ROR(e, 6) ^ ROR(e, 11) ^ ROR(e, 25)) + ((e & f) ^ (~e & g)) + k[i] + w[i];
            uint32_t t2 = (ROR(a, 2) ^ ROR(a, 13) ^ ROR(a, 22)) + ((a & b) ^ (a & c) ^ (b & c));
            hh = g, g = f, f = e, e = d + t1, d = c, c = b, b = a, a = t1 + t2;
        }
        h[0] += a, h[1] += b, h[2] += c, h[3] += d, h[4] += e, h[5] += f, h[6] += g, h[7] += hh;
    }
#undef ROR
    free(m);
    for (int i = 0; i < 8; i++)
        snprintf(out + 8 * i, 9, "%08x", h[i]);
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_one_shot_and_pipe, teardown),
        cmocka_unit_test_teardown(test_filter, teardown),
        cmocka_unit_test_teardown(test_templates, teardown),
        cmocka_unit_test_teardown(test_errors, teardown),
        cmocka_unit_test_teardown(test_repl, teardown),
        cmocka_unit_test_teardown(test_repl_chat, teardown),
        cmocka_unit_test_teardown(test_suggest, teardown),
        cmocka_unit_test_teardown(test_pull, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
