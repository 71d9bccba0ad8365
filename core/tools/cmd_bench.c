/*
 * cmd_bench.c - `nibble bench`: prompt-processing and generation speed of
 * a model, beside the memory read bandwidth measured in the same run.
 *
 * Generating a token reads every weight matrix once, so generation speed
 * is bounded by memory bandwidth: efficiency = tokens/s x bytes of weights
 * read per token / measured bandwidth.  pp is the speed of evaluating a
 * prompt of P random tokens in one batch; tg the speed of generating N
 * tokens one at a time from an empty context (llama-bench's pp512 and
 * tg128).  Nothing here asserts a time; these are figures to read.
 */
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <jansson.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <poll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "internal.h"
#include "tools.h"

static const char bench_usage[] =
    "usage: nibble bench -m MODEL [-t N] [-p 512] [-n 128] [-r 1] [--lora FILE] [--json]\n"
    "\n"
    "Measure prompt processing (pp) and generation (tg) speed, and the memory\n"
    "read bandwidth in the same run.\n"
    "\n"
    "  -m, --model FILE    GGUF model (any file nibble loads)\n"
    "  -t, --threads N     thread count (default: 1 and the physical core count)\n"
    "  -p, --prompt N      prompt tokens for pp (default 512; 0 skips pp)\n"
    "  -n, --gen N         generated tokens for tg (default 128; 0 skips tg)\n"
    "  -r, --reps N        repetitions, best kept (default 1)\n"
    "      --lora FILE     apply a LoRA adapter (repeatable; --lora-scale S after\n"
    "                      it); its F32 matrices count as bytes read per token\n"
    "      --json          one JSON object per thread count, one per line\n"
    "      --daemon        instead: start nibd on the model (private socket) and\n"
    "                      measure a request's round trip and the time to first\n"
    "                      token after a one-character edit at the end of a\n"
    "                      1,500-token prompt\n"
    "      --nib FILE      with --daemon: also time that nib program, from its\n"
    "                      start to its first byte on the socket, and to the\n"
    "                      first byte of an answer from the warm daemon\n"
    "  -h, --help          show this help\n";

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* ------------------------------------------------------------------ bandwidth */

typedef struct bw_job {
    const uint8_t *buf;
    size_t size;
    uint64_t sink[NBI_MAX_THREADS * 8];
} bw_job;

#if defined(__x86_64__)
__attribute__((target("avx2"))) static uint64_t read_avx2(const uint8_t *p, size_t n)
{
    __m256i a = _mm256_setzero_si256(), b = a, c = a, d = a;
    for (size_t i = 0; i + 128 <= n; i += 128) {
        a = _mm256_xor_si256(a, _mm256_load_si256((const __m256i *)(p + i)));
        b = _mm256_xor_si256(b, _mm256_load_si256((const __m256i *)(p + i + 32)));
        c = _mm256_xor_si256(c, _mm256_load_si256((const __m256i *)(p + i + 64)));
        d = _mm256_xor_si256(d, _mm256_load_si256((const __m256i *)(p + i + 96)));
    }
    a = _mm256_xor_si256(_mm256_xor_si256(a, b), _mm256_xor_si256(c, d));
    return (uint64_t)_mm256_extract_epi64(a, 0) ^ (uint64_t)_mm256_extract_epi64(a, 3);
}
#endif

static uint64_t read_plain(const uint8_t *p, size_t n)
{
    const uint64_t *q = (const uint64_t *)p;
    uint64_t a = 0, b = 0, c = 0, d = 0;
    for (size_t i = 0; i + 4 <= n / 8; i += 4) {
        a ^= q[i];
        b ^= q[i + 1];
        c ^= q[i + 2];
        d ^= q[i + 3];
    }
    return a ^ b ^ c ^ d;
}

static void bw_task(void *arg, int ith, int nth)
{
    bw_job *j = arg;
    int64_t lo, hi;
    nbi_split((int64_t)(j->size / 4096), ith, nth, &lo, &hi);
    const uint8_t *p = j->buf + (size_t)lo * 4096;
    size_t n = (size_t)(hi - lo) * 4096;
#if defined(__x86_64__)
    if (__builtin_cpu_supports("avx2")) {
        j->sink[ith * 8] ^= read_avx2(p, n);
        return;
    }
#endif
    j->sink[ith * 8] ^= read_plain(p, n);
}

/* Read bandwidth in GB/s with n threads over a buffer far larger than any
 * cache; the best of a few passes. */
static double measure_bandwidth(nbi_pool *pool)
{
    size_t size = (size_t)1 << 30;
    bw_job *j = calloc(1, sizeof *j);
    uint8_t *buf = NULL;
    if (!j || posix_memalign((void **)&buf, 4096, size) != 0) {
        free(j);
        return 0;
    }
    memset(buf, 1, size);
    j->buf = buf;
    j->size = size;
    double best = 0;
    for (int rep = 0; rep < 4; rep++) {
        double t0 = now_s();
        nbi_pool_run(pool, bw_task, j);
        double t = now_s() - t0;
        if (t > 0 && (double)size / t > best)
            best = (double)size / t;
    }
    free(buf);
    free(j);
    return best / 1e9;
}

/* Measure in a child process so the 1 GiB buffer does not count towards
 * the peak RSS reported for the model. */
static double bandwidth_in_child(int threads)
{
    int fd[2];
    double gbs = 0;
    if (pipe(fd) != 0)
        return 0;
    pid_t pid = fork();
    if (pid == 0) {
        nbi_pool *pool;
        double v = 0;
        if (nbi_pool_new(threads, &pool) == NB_OK) {
            v = measure_bandwidth(pool);
            nbi_pool_free(pool);
        }
        ssize_t w = write(fd[1], &v, sizeof v);
        _exit(w == (ssize_t)sizeof v ? 0 : 1);
    }
    close(fd[1]);
    if (pid > 0) {
        if (read(fd[0], &gbs, sizeof gbs) != (ssize_t)sizeof gbs)
            gbs = 0;
        waitpid(pid, NULL, 0);
    }
    close(fd[0]);
    return gbs;
}

/* ------------------------------------------------------------------ model */

/* Bytes of weight matrices one generated token reads. */
static uint64_t weight_bytes_per_token(const nb_model *m)
{
    uint64_t total = m->output->nbytes;
    for (int l = 0; l < m->hp.n_layer; l++) {
        const nbi_layer *L = &m->layers[l];
        total += L->wq->nbytes + L->wk->nbytes + L->wv->nbytes + L->wo->nbytes +
                 L->w_gate->nbytes + L->w_up->nbytes + L->w_down->nbytes;
    }
    return total;
}

typedef struct result {
    int threads;
    double pp, tg, bandwidth, efficiency;
} result;

/* Bytes of an adapter's F32 matrices, read for every token. */
static uint64_t lora_bytes(const nb_lora *a)
{
    uint64_t total = 0;
    for (int i = 0; i < a->n_pairs; i++)
        total += (uint64_t)(a->pairs[i].w->ne[0] + a->pairs[i].w->ne[1]) *
                 (uint64_t)a->pairs[i].rank * sizeof(float);
    return total;
}

static int run_one(const nb_model *m, tool_lora *lora, int threads, int n_prompt, int n_gen,
                   int reps, result *r)
{
    nb_ctx_params cp = nb_ctx_default_params();
    cp.n_threads = threads;
    cp.n_ctx = NBI_MAX(n_prompt, n_gen) + 16;
    cp.n_batch = n_prompt > 0 ? n_prompt : 512;
    nb_ctx *c;
    char err[256];
    if (nb_ctx_new(m, &cp, &c, err, sizeof err)) {
        tool_error("%s", err);
        return -1;
    }
    if (tool_lora_attach(lora, m, c)) {
        nb_ctx_free(c);
        return -1;
    }
    int n_vocab = nb_model_n_vocab(m);
    int n_tok = NBI_MAX(n_prompt, n_gen);
    nb_token *toks = malloc((size_t)(n_tok > 0 ? n_tok : 1) * sizeof *toks);
    if (!toks) {
        nb_ctx_free(c);
        return tool_error("out of memory");
    }
    uint64_t x = 88172645463325252ull; /* fixed "random" ids: xorshift */
    for (int i = 0; i < n_tok; i++) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        toks[i] = (nb_token)(x % (uint64_t)n_vocab);
    }
    /* warm-up: one token touches every weight page once */
    nb_ctx_decode(c, toks, 1, 0);
    r->threads = threads;
    r->pp = r->tg = 0;
    for (int rep = 0; rep < reps; rep++) {
        if (n_prompt > 0) {
            nb_ctx_truncate(c, 0);
            double t0 = now_s();
            if (nb_ctx_decode(c, toks, n_prompt, 0)) {
                tool_error("%s", nb_ctx_errmsg(c));
                break;
            }
            double t = now_s() - t0;
            r->pp = NBI_MAX(r->pp, n_prompt / t);
        }
        if (n_gen > 0) {
            nb_ctx_truncate(c, 0);
            double t0 = now_s();
            for (int i = 0; i < n_gen; i++)
                if (nb_ctx_decode(c, &toks[i], 1, 0)) {
                    tool_error("%s", nb_ctx_errmsg(c));
                    break;
                }
            double t = now_s() - t0;
            r->tg = NBI_MAX(r->tg, n_gen / t);
        }
    }
    free(toks);
    nb_ctx_free(c);
    return 0;
}

/* ------------------------------------------------------------------ daemon */

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* Send a request and wait for its final event; returns ms to the first
 * event and to the final one, and the final event (or NULL). */
static json_t *timed_request(nb_client *c, const char *req, double *first_ms, double *total_ms)
{
    double t0 = now_s();
    if (nb_client_send(c, req, strlen(req)))
        return NULL;
    *first_ms = -1;
    for (;;) {
        char *line;
        if (nb_client_read(c, &line, NULL, 600000) || !line)
            return NULL;
        if (*first_ms < 0)
            *first_ms = (now_s() - t0) * 1e3;
        json_t *e = json_loads(line, 0, NULL);
        free(line);
        if (!e)
            return NULL;
        json_t *done = json_object_get(e, "done");
        if (!json_object_get(e, "text") || json_is_true(done)) {
            if (json_is_true(done) || json_object_get(e, "tokens") || json_object_get(e, "model")) {
                *total_ms = (now_s() - t0) * 1e3;
                return e;
            }
        }
        json_decref(e);
    }
}

/* Start nib with args, in an environment whose runtime and config
 * directories are under dir; stdout is a pipe (*out_fd) unless out_fd is
 * NULL; stdin and stderr are /dev/null. */
static pid_t spawn_nib(const char *nib, const char *dir, char *const args[], int *out_fd)
{
    int po[2] = {-1, -1};
    if (out_fd && pipe(po))
        return -1;
    pid_t pid = fork();
    if (pid == 0) {
        char run[600], cfg[600];
        snprintf(run, sizeof run, "%s/run", dir);
        snprintf(cfg, sizeof cfg, "%s/cfg", dir);
        setenv("XDG_RUNTIME_DIR", run, 1);
        setenv("XDG_CONFIG_HOME", cfg, 1);
        setenv("NIBBLE_NOHISTORY", "1", 1);
        int null = open("/dev/null", O_RDWR);
        dup2(null, 0);
        dup2(out_fd ? po[1] : null, 1);
        dup2(null, 2);
        if (out_fd)
            close(po[0]), close(po[1]);
        execv(nib, args);
        _exit(127);
    }
    if (out_fd) {
        close(po[1]);
        *out_fd = po[0];
    }
    return pid;
}

/* nib's own figures: start-up to the first byte it sends (against a socket
 * that only listens), and, against the warm daemon on sock, the time to
 * the first byte of the answer on its stdout.  Medians over reps runs. */
static int bench_nib(const char *nib, const char *sock, double *startup_ms, double *ttft_ms)
{
    enum { REPS = 21 };
    char dir[] = "/tmp/nibble-nib-XXXXXX";
    if (!mkdtemp(dir))
        return -1;
    char path[700];
    snprintf(path, sizeof path, "%s/run", dir);
    mkdir(path, 0700);
    snprintf(path, sizeof path, "%s/run/nibble", dir);
    mkdir(path, 0700);
    snprintf(path, sizeof path, "%s/run/nibble/nibd.sock", dir);
    int rc = -1;
    double st[REPS], tt[REPS];
    int lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    if (strlen(path) >= sizeof sa.sun_path)
        goto out;
    memcpy(sa.sun_path, path, strlen(path) + 1);
    if (lfd < 0 || bind(lfd, (struct sockaddr *)&sa, sizeof sa) || listen(lfd, 4))
        goto out;
    char *args[] = {(char *)nib, "--raw", "-n", "1", "hello", NULL};
    for (int i = 0; i < REPS; i++) {
        double t0 = now_s();
        pid_t pid = spawn_nib(nib, dir, args, NULL);
        struct pollfd pf = {lfd, POLLIN, 0};
        int cfd = pid > 0 && poll(&pf, 1, 10000) == 1 ? accept(lfd, NULL, NULL) : -1;
        char b;
        struct pollfd pc = {cfd, POLLIN, 0};
        int got = cfd >= 0 && poll(&pc, 1, 10000) == 1 && read(cfd, &b, 1) == 1;
        st[i] = (now_s() - t0) * 1e3;
        if (cfd >= 0)
            close(cfd); /* nib reports the closed connection and exits */
        if (pid > 0)
            waitpid(pid, NULL, 0);
        if (!got)
            goto out;
    }
    /* the warm daemon: a config file pointing at its socket */
    snprintf(path, sizeof path, "%s/cfg", dir);
    mkdir(path, 0700);
    snprintf(path, sizeof path, "%s/cfg/nibble", dir);
    mkdir(path, 0700);
    snprintf(path, sizeof path, "%s/cfg/nibble/config", dir);
    FILE *f = fopen(path, "w");
    if (!f)
        goto out;
    fprintf(f, "socket = %s\n", sock);
    fclose(f);
    for (int i = 0; i < REPS; i++) {
        char q[64];
        snprintf(q, sizeof q, "What is %d times %d?", i + 2, i + 7);
        char *qa[] = {(char *)nib, "-o", "temperature=0", "-n", "4", q, NULL};
        int ofd = -1;
        double t0 = now_s();
        pid_t pid = spawn_nib(nib, dir, qa, &ofd);
        char b;
        struct pollfd pf = {ofd, POLLIN, 0};
        int got = pid > 0 && poll(&pf, 1, 60000) == 1 && read(ofd, &b, 1) == 1;
        tt[i] = (now_s() - t0) * 1e3;
        char sink[4096];
        while (ofd >= 0 && read(ofd, sink, sizeof sink) > 0)
            ;
        if (ofd >= 0)
            close(ofd);
        int status = 1;
        if (pid > 0)
            waitpid(pid, &status, 0);
        if (!got || !WIFEXITED(status) || WEXITSTATUS(status))
            goto out;
    }
    qsort(st, REPS, sizeof st[0], cmp_double);
    qsort(tt, REPS, sizeof tt[0], cmp_double);
    *startup_ms = st[REPS / 2];
    *ttft_ms = tt[REPS / 2];
    rc = 0;
out:
    if (lfd >= 0)
        close(lfd);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0)
        rc = -1;
    return rc;
}

static int bench_daemon(const char *path, int threads, int json, const char *nib)
{
    char dir[] = "/tmp/nibble-bench-XXXXXX";
    if (!mkdtemp(dir))
        return tool_error("cannot make a temporary directory");
    char sock[64], tstr[16];
    snprintf(sock, sizeof sock, "%s/nibd.sock", dir);
    snprintf(tstr, sizeof tstr, "%d", threads ? threads : nb_physical_cores());
    const char *args[] = {"--config", "/dev/null", "-s", "2", "-k", "-1", "-t", tstr, NULL};
    nb_client_params p = nb_client_default_params();
    p.socket = sock;
    p.model = path;
    p.nibd_args = args;
    p.timeout_ms = 120000;
    nb_client *c;
    char err[1024];
    if (nb_client_connect(&p, &c, err, sizeof err)) {
        rmdir(dir);
        return tool_error("%s", err);
    }
    double first, total;
    /* round trip: a status request, and a one-token tokenize */
    enum { REPS = 200 };
    double st[REPS], tk[REPS];
    for (int i = 0; i < REPS; i++) {
        json_decref(timed_request(c, "{\"op\":\"status\"}", &first, &st[i]));
        json_decref(timed_request(c, "{\"op\":\"tokenize\",\"text\":\"a\"}", &first, &tk[i]));
    }
    qsort(st, REPS, sizeof st[0], cmp_double);
    qsort(tk, REPS, sizeof tk[0], cmp_double);
    /* a 1,500-token prompt: words until the tokenizer says so */
    static const char *words[] = {"the", "model", "reads", "every", "line", "of", "source",
                                  "code", "before", "it", "suggests", "a", "completion", "for",
                                  "this", "function"};
    size_t cap = 1 << 16, len = 0;
    char *text = malloc(cap);
    int n_tok = 0;
    for (int w = 0; text && n_tok < 1500; w++) {
        len += (size_t)snprintf(text + len, cap - len, "%s%s", w ? " " : "", words[w % 16]);
        if (w % 64 == 63 || n_tok > 1400) {
            json_t *req = json_pack("{s:s, s:s}", "op", "tokenize", "text", text);
            char *rs = json_dumps(req, JSON_COMPACT);
            json_t *r = timed_request(c, rs, &first, &total);
            n_tok = (int)json_array_size(json_object_get(r, "tokens"));
            json_decref(r);
            json_decref(req);
            free(rs);
        }
    }
    double cold = 0, edit_first = 0;
    int n_cached = 0, n_eval = 0;
    for (int round = 0; round < 2 && text; round++) {
        /* round 0 fills the cache, round 1 is the keystroke */
        if (round)
            text[len++] = 'x', text[len] = 0;
        json_t *req = json_pack("{s:s, s:s, s:i, s:f, s:s}", "op", "complete", "prompt", text,
                                "n_predict", 1, "temperature", 0.0, "session", "bench");
        char *rs = json_dumps(req, JSON_COMPACT);
        json_t *r = timed_request(c, rs, &first, &total);
        const char *why = json_string_value(json_object_get(r, "message"));
        if (!r || why) {
            tool_error("the daemon refused the benchmark prompt: %s", why ? why : "no reply");
            json_decref(r);
            json_decref(req);
            free(rs);
            free(text);
            text = NULL;
            break;
        }
        if (round == 0)
            cold = total;
        else {
            edit_first = first;
            n_cached = (int)json_integer_value(json_object_get(r, "n_cached"));
            n_eval = (int)json_integer_value(json_object_get(r, "n_evaluated"));
        }
        json_decref(r);
        json_decref(req);
        free(rs);
    }
    int failed = !text;
    free(text);
    double nib_start = -1, nib_ttft = -1;
    if (!failed && nib && bench_nib(nib, sock, &nib_start, &nib_ttft)) {
        tool_error("could not time %s against the daemon", nib);
        failed = 1;
    }
    json_decref(timed_request(c, "{\"op\":\"shutdown\"}", &first, &total));
    nb_client_close(c);
    for (int i = 0; i < 100 && access(sock, F_OK) == 0; i++)
        usleep(20000);
    rmdir(dir);
    if (failed)
        return EXIT_ERR;
    if (json) {
        json_t *o = json_pack("{s:s, s:f, s:f, s:f, s:f, s:i, s:f, s:i, s:i, s:f}", "model", path,
                              "status_rtt_us_p50", st[REPS / 2] * 1e3, "status_rtt_us_p99",
                              st[REPS * 99 / 100] * 1e3, "tokenize_rtt_us_p50", tk[REPS / 2] * 1e3,
                              "tokenize_rtt_us_p99", tk[REPS * 99 / 100] * 1e3, "prompt_tokens", n_tok,
                              "cold_prompt_ms", cold, "edit_cached", n_cached, "edit_evaluated",
                              n_eval, "edit_first_token_ms", edit_first);
        if (nib) {
            json_object_set_new(o, "nib_startup_ms", json_real(nib_start));
            json_object_set_new(o, "nib_first_token_ms", json_real(nib_ttft));
        }
        char *js = json_dumps(o, JSON_COMPACT | JSON_REAL_PRECISION(6));
        puts(js ? js : "{}");
        free(js);
        json_decref(o);
    } else {
        printf("daemon round trip: status %.0f us (p99 %.0f), tokenize %.0f us (p99 %.0f)\n",
               st[REPS / 2] * 1e3, st[REPS * 99 / 100] * 1e3, tk[REPS / 2] * 1e3,
               tk[REPS * 99 / 100] * 1e3);
        printf("%d-token prompt: %.0f ms cold; after a one-character edit at its end, first "
               "token in %.1f ms (%d tokens reused, %d evaluated)\n",
               n_tok, cold, edit_first, n_cached, n_eval);
        if (nib)
            printf("nib: %.2f ms from start to its first byte on the socket; %.1f ms from start "
                   "to the first byte of an answer from the warm daemon (medians of 21)\n",
                   nib_start, nib_ttft);
    }
    return EXIT_OK;
}

int cmd_bench(int argc, char **argv)
{
    static const struct option opts[] = {
        {"model", required_argument, 0, 'm'}, {"threads", required_argument, 0, 't'},
        {"prompt", required_argument, 0, 'p'}, {"gen", required_argument, 0, 'n'},
        {"reps", required_argument, 0, 'r'},  {"json", no_argument, 0, 'J'},
        {"daemon", no_argument, 0, 'D'},      {"nib", required_argument, 0, 'N'},
        {"lora", required_argument, 0, 'L'}, {"lora-scale", required_argument, 0, 'S'},
        {"help", no_argument, 0, 'h'},        {0, 0, 0, 0}};
    const char *path = getenv("NIBBLE_MODEL");
    tool_lora lora = {0};
    long threads = 0, n_prompt = 512, n_gen = 128, reps = 1;
    int json = 0, daemon = 0, c;
    const char *nib = NULL;
    optind = 1;
    while ((c = getopt_long(argc, argv, "m:t:p:n:r:h", opts, NULL)) != -1) {
        switch (c) {
        case 'm': path = optarg; break;
        case 't':
            if (parse_int(optarg, 1, NBI_MAX_THREADS, &threads))
                return tool_usage_error("bench", "-t wants 1..%d, not '%s'", NBI_MAX_THREADS, optarg);
            break;
        case 'p':
            if (parse_int(optarg, 0, 1 << 16, &n_prompt))
                return tool_usage_error("bench", "-p wants 0..65536, not '%s'", optarg);
            break;
        case 'n':
            if (parse_int(optarg, 0, 1 << 16, &n_gen))
                return tool_usage_error("bench", "-n wants 0..65536, not '%s'", optarg);
            break;
        case 'r':
            if (parse_int(optarg, 1, 100, &reps))
                return tool_usage_error("bench", "-r wants 1..100, not '%s'", optarg);
            break;
        case 'J': json = 1; break;
        case 'D': daemon = 1; break;
        case 'N': nib = optarg; break;
        case 'L':
        case 'S':
            if (tool_lora_arg(&lora, "bench", c == 'S', optarg))
                return EXIT_USAGE;
            break;
        case 'h': fputs(bench_usage, stdout); return EXIT_OK;
        default: return tool_usage_error("bench", "unknown option");
        }
    }
    if (optind < argc)
        return tool_usage_error("bench", "unexpected argument '%s'", argv[optind]);
    if (!path || !*path)
        return tool_usage_error("bench", "no model: give -m FILE or set NIBBLE_MODEL");
    if (nib && !daemon)
        return tool_usage_error("bench", "--nib goes with --daemon");
    if (daemon && lora.n)
        return tool_usage_error("bench", "--lora does not go with --daemon");
    if (daemon)
        return bench_daemon(path, (int)threads, json, nib);

    double t0 = now_s();
    nb_model *m = open_model(path, 0);
    if (!m)
        return EXIT_ERR;
    double load_ms = (now_s() - t0) * 1e3;
    nb_model_info info;
    nb_model_get_info(m, &info);
    uint64_t per_token = weight_bytes_per_token(m);
    char err[512];
    for (int i = 0; i < lora.n; i++) {
        if (nb_lora_open(m, lora.path[i], &lora.lora[i], err, sizeof err)) {
            tool_error("%s", err);
            tool_lora_free(&lora);
            nb_model_close(m);
            return EXIT_ERR;
        }
        per_token += lora_bytes(lora.lora[i]);
    }
    int counts[2] = {1, nb_physical_cores()};
    int n_counts = counts[1] > 1 ? 2 : 1;
    if (threads) {
        counts[0] = (int)threads;
        n_counts = 1;
    }
    char *pcopy = strdup(path);
    const char *base = pcopy ? basename(pcopy) : path;
    if (!json)
        printf("model %s: %s, %.2f M parameters, %.1f MiB of weights read per token%s\n", base,
               info.file_type, (double)info.n_params / 1e6, (double)per_token / 1048576.0,
               lora.n ? " (LoRA adapters included)" : "");
    if (!json)
        printf("%7s %12s %12s %14s %13s\n", "threads", "pp tok/s", "tg tok/s", "read GB/s",
               "tg efficiency");
    for (int i = 0; i < n_counts; i++) {
        result r = {0};
        /* The bandwidth before and after the model's runs, the higher kept:
         * a virtual machine's bandwidth moves by tens of percent within a
         * minute, and one short measurement can land in a dip that the
         * runs beside it did not see. */
        const double bw_before = bandwidth_in_child(counts[i]);
        if (run_one(m, &lora, counts[i], (int)n_prompt, (int)n_gen, (int)reps, &r)) {
            tool_lora_free(&lora);
            nb_model_close(m);
            free(pcopy);
            return EXIT_ERR;
        }
        r.bandwidth = bandwidth_in_child(counts[i]);
        if (bw_before > r.bandwidth)
            r.bandwidth = bw_before;
        r.efficiency = r.bandwidth > 0 ? r.tg * (double)per_token / (r.bandwidth * 1e9) : 0;
        if (json) {
            json_t *o = json_pack("{s:s, s:i, s:f, s:f, s:f, s:f, s:s, s:I}", "model", base,
                                  "threads", r.threads, "pp", r.pp, "tg", r.tg, "bandwidth_gbs",
                                  r.bandwidth, "tg_efficiency", r.efficiency, "type",
                                  info.file_type, "weight_bytes_per_token", (json_int_t)per_token);
            char *s = o ? json_dumps(o, JSON_COMPACT | JSON_REAL_PRECISION(6)) : NULL;
            if (s)
                puts(s);
            free(s);
            json_decref(o);
        } else {
            printf("%7d %12.2f %12.2f %14.2f %13.2f\n", r.threads, r.pp, r.tg, r.bandwidth,
                   r.efficiency);
        }
        fflush(stdout);
    }
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    if (json) {
        json_t *o = json_pack("{s:s, s:f, s:f, s:s, s:I, s:f}", "model", base, "load_ms", load_ms,
                              "peak_rss_mib", (double)ru.ru_maxrss / 1024.0, "kernels",
                              nbi_kernels_get()->level, "packed_bytes",
                              (json_int_t)info.packed_bytes, "pack_ms", info.pack_ms);
        char *js = o ? json_dumps(o, JSON_COMPACT | JSON_REAL_PRECISION(6)) : NULL;
        if (js)
            puts(js);
        free(js);
        json_decref(o);
    } else {
        char how[128];
        if (info.packed_bytes)
            snprintf(how, sizeof how, "%.1f MiB of it packed in %.1f ms",
                     (double)info.packed_bytes / 1048576.0, info.pack_ms);
        else
            snprintf(how, sizeof how, "mapped, pages read on first use");
        printf("load %.1f ms (%s), peak RSS %.1f MiB, kernels %s\n", load_ms, how,
               (double)ru.ru_maxrss / 1024.0, nbi_kernels_get()->level);
    }
    tool_lora_free(&lora);
    nb_model_close(m);
    free(pcopy);
    return EXIT_OK;
}
