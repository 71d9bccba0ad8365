/*
 * cmd_run.c - `nibble run`: generate text from a prompt and stream it.
 */
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "tools.h"

#define MAX_STOPS NB_STOP_MAX

static const char run_usage[] =
    "usage: nibble run -m MODEL (-p PROMPT | -f FILE) [options]\n"
    "\n"
    "Generate text that continues PROMPT and stream it to stdout.\n"
    "\n"
    "  -m, --model FILE        GGUF model (default: $NIBBLE_MODEL)\n"
    "  -p, --prompt TEXT       the prompt\n"
    "  -f, --file FILE         read the prompt from FILE ('-' for stdin)\n"
    "  -n, --n-predict N       tokens to generate (default 256, -1 = until the\n"
    "                          end-of-text token or a full context)\n"
    "  -c, --ctx-size N        context size in tokens (default: the model's,\n"
    "                          at most 4096)\n"
    "  -t, --threads N         threads (default: the physical core count)\n"
    "      --temp T            temperature; 0 = greedy (default 0.8)\n"
    "      --top-k N           keep the N most likely tokens; 0 = off (default 40)\n"
    "      --top-p P           nucleus sampling; 1 = off (default 0.95)\n"
    "      --min-p P           drop tokens below P x the best; 0 = off (default 0.05)\n"
    "      --repeat-penalty F  penalise recent tokens; 1 = off (default 1.0)\n"
    "      --repeat-last-n N   window for the penalties (default 64)\n"
    "      --frequency-penalty F, --presence-penalty F   (default 0 = off)\n"
    "  -s, --seed S            random seed; a seed reproduces its output exactly\n"
    "                          (default: a new random seed, shown with -v)\n"
    "      --stop TEXT         stop before TEXT (repeatable, up to 16)\n"
    "      --ignore-eos        keep generating past the end-of-text token\n"
    "      --no-bos            do not add the beginning-of-text token\n"
    "      --no-special        treat text like </s> in the prompt as plain text\n"
    "      --echo              print the prompt before the generated text\n"
    "      --lora FILE         apply a LoRA adapter (llama.cpp GGUF); may be repeated\n"
    "      --lora-scale S      scale of the preceding --lora (default 1.0)\n"
    "  -v, --verbose           print timings and the seed to stderr\n"
    "  -h, --help              show this help\n"
    "\n"
    "Exit status: 0 success, 1 error, 2 usage error, 130 interrupted (Ctrl-C).\n";

static volatile sig_atomic_t interrupted;

static void on_sigint(int sig)
{
    (void)sig;
    interrupted = 1;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

enum {
    OPT_TEMP = 256, OPT_TOPK, OPT_TOPP, OPT_MINP, OPT_REPEAT, OPT_REPEAT_N, OPT_FREQ,
    OPT_PRESENCE, OPT_STOP, OPT_IGNORE_EOS, OPT_NO_BOS, OPT_NO_SPECIAL, OPT_ECHO, OPT_LORA,
    OPT_LORA_SCALE
};

static void write_out(const char *s, size_t n)
{
    if (n) {
        fwrite(s, 1, n, stdout);
        fflush(stdout);
    }
}

int cmd_run(int argc, char **argv)
{
    static const struct option opts[] = {
        {"model", required_argument, 0, 'm'},      {"prompt", required_argument, 0, 'p'},
        {"file", required_argument, 0, 'f'},       {"n-predict", required_argument, 0, 'n'},
        {"ctx-size", required_argument, 0, 'c'},   {"threads", required_argument, 0, 't'},
        {"seed", required_argument, 0, 's'},       {"temp", required_argument, 0, OPT_TEMP},
        {"top-k", required_argument, 0, OPT_TOPK}, {"top-p", required_argument, 0, OPT_TOPP},
        {"min-p", required_argument, 0, OPT_MINP},
        {"repeat-penalty", required_argument, 0, OPT_REPEAT},
        {"repeat-last-n", required_argument, 0, OPT_REPEAT_N},
        {"frequency-penalty", required_argument, 0, OPT_FREQ},
        {"presence-penalty", required_argument, 0, OPT_PRESENCE},
        {"stop", required_argument, 0, OPT_STOP},
        {"ignore-eos", no_argument, 0, OPT_IGNORE_EOS},
        {"no-bos", no_argument, 0, OPT_NO_BOS},
        {"no-special", no_argument, 0, OPT_NO_SPECIAL},
        {"echo", no_argument, 0, OPT_ECHO},
        {"lora", required_argument, 0, OPT_LORA},
        {"lora-scale", required_argument, 0, OPT_LORA_SCALE},
        {"verbose", no_argument, 0, 'v'},          {"help", no_argument, 0, 'h'},
        {0, 0, 0, 0}};
    const char *model_path = getenv("NIBBLE_MODEL"), *prompt = NULL, *prompt_file = NULL;
    const char *stops[MAX_STOPS];
    int n_stops = 0;
    long n_predict = 256, n_ctx = 0, n_threads = 0;
    int have_seed = 0, ignore_eos = 0, add_bos = 1, parse_special = 1, echo = 0, verbose = 0;
    unsigned long long seed = 0;
    tool_lora lora = {0};
    nb_sampler_params sp = nb_sampler_default_params();
    long lv;
    double dv;
    int c;

    optind = 1;
    while ((c = getopt_long(argc, argv, "m:p:f:n:c:t:s:vh", opts, NULL)) != -1) {
        switch (c) {
        case 'm': model_path = optarg; break;
        case 'p': prompt = optarg; break;
        case 'f': prompt_file = optarg; break;
        case 'n':
            if (parse_int(optarg, -1, 1 << 30, &n_predict))
                return tool_usage_error("run", "-n wants an integer >= -1, not '%s'", optarg);
            break;
        case 'c':
            if (parse_int(optarg, 0, 1 << 22, &n_ctx))
                return tool_usage_error("run", "-c wants a context size 0..%d, not '%s'", 1 << 22,
                                        optarg);
            break;
        case 't':
            if (parse_int(optarg, 1, 1024, &n_threads))
                return tool_usage_error("run", "-t wants a thread count 1..1024, not '%s'", optarg);
            break;
        case 's':
            if (parse_u64(optarg, &seed))
                return tool_usage_error("run", "--seed wants a non-negative integer, not '%s'",
                                        optarg);
            have_seed = 1;
            break;
        case OPT_TEMP:
            if (parse_float(optarg, 0, 1e6, &dv))
                return tool_usage_error("run", "--temp wants a number >= 0, not '%s'", optarg);
            sp.temp = (float)dv;
            break;
        case OPT_TOPK:
            if (parse_int(optarg, 0, 1 << 30, &lv))
                return tool_usage_error("run", "--top-k wants an integer >= 0, not '%s'", optarg);
            sp.top_k = (int)lv;
            break;
        case OPT_TOPP:
            if (parse_float(optarg, 0, 1, &dv) || dv == 0)
                return tool_usage_error("run", "--top-p wants a number in (0, 1], not '%s'", optarg);
            sp.top_p = (float)dv;
            break;
        case OPT_MINP:
            if (parse_float(optarg, 0, 1, &dv))
                return tool_usage_error("run", "--min-p wants a number in [0, 1], not '%s'", optarg);
            sp.min_p = (float)dv;
            break;
        case OPT_REPEAT:
            if (parse_float(optarg, 0, 1e6, &dv) || dv == 0)
                return tool_usage_error("run", "--repeat-penalty wants a number > 0, not '%s'",
                                        optarg);
            sp.repeat_penalty = (float)dv;
            break;
        case OPT_REPEAT_N:
            if (parse_int(optarg, 0, 1 << 20, &lv))
                return tool_usage_error("run", "--repeat-last-n wants an integer >= 0, not '%s'",
                                        optarg);
            sp.repeat_last_n = (int)lv;
            break;
        case OPT_FREQ:
            if (parse_float(optarg, -1e6, 1e6, &dv))
                return tool_usage_error("run", "--frequency-penalty wants a number, not '%s'",
                                        optarg);
            sp.freq_penalty = (float)dv;
            break;
        case OPT_PRESENCE:
            if (parse_float(optarg, -1e6, 1e6, &dv))
                return tool_usage_error("run", "--presence-penalty wants a number, not '%s'",
                                        optarg);
            sp.presence_penalty = (float)dv;
            break;
        case OPT_STOP:
            if (n_stops == MAX_STOPS)
                return tool_usage_error("run", "at most %d --stop strings", MAX_STOPS);
            if (!*optarg)
                return tool_usage_error("run", "--stop wants a non-empty string");
            stops[n_stops++] = optarg;
            break;
        case OPT_IGNORE_EOS: ignore_eos = 1; break;
        case OPT_NO_BOS: add_bos = 0; break;
        case OPT_NO_SPECIAL: parse_special = 0; break;
        case OPT_ECHO: echo = 1; break;
        case OPT_LORA:
        case OPT_LORA_SCALE:
            if (tool_lora_arg(&lora, "run", c == OPT_LORA_SCALE, optarg))
                return EXIT_USAGE;
            break;
        case 'v': verbose = 1; break;
        case 'h': fputs(run_usage, stdout); return EXIT_OK;
        default: return tool_usage_error("run", "unknown option");
        }
    }
    if (optind < argc)
        return tool_usage_error("run", "unexpected argument '%s'", argv[optind]);
    if (!model_path || !*model_path)
        return tool_usage_error("run", "no model: give -m FILE or set NIBBLE_MODEL");
    if (!prompt == !prompt_file)
        return tool_usage_error("run", "give exactly one of -p PROMPT and -f FILE");
    if (!have_seed) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        seed = (unsigned long long)ts.tv_sec * 1000003ull ^ (unsigned long long)ts.tv_nsec ^
               ((unsigned long long)getpid() << 32);
    }
    sp.seed = seed;
    char errbuf[256];
    if (nb_sampler_params_check(&sp, errbuf, sizeof errbuf))
        return tool_usage_error("run", "%s", errbuf);

    char *file_text = NULL;
    size_t prompt_len;
    if (prompt_file) {
        file_text = read_all(prompt_file, &prompt_len);
        if (!file_text)
            return tool_error("%s: cannot read the prompt file", prompt_file);
        prompt = file_text;
    } else {
        prompt_len = strlen(prompt);
    }

    int rc = EXIT_ERR;
    nb_model *m = NULL;
    nb_ctx *ctx = NULL;
    nb_sampler *smp = NULL;
    nb_stopper *stopper = NULL;
    nb_token *toks = NULL;
    double t0 = now_s();
    if (!(m = open_model(model_path, 0)))
        goto done;
    double t_load = now_s() - t0;

    int64_t n_prompt;
    int flags = (add_bos ? NB_TOK_ADD_SPECIAL : 0) | (parse_special ? NB_TOK_PARSE_SPECIAL : 0);
    if (!(toks = tokenize_all(m, prompt, prompt_len, flags, &n_prompt)))
        goto done;
    if (n_prompt == 0) {
        tool_error("the prompt is empty and the model adds no BOS token; nothing to continue");
        goto done;
    }
    nb_ctx_params cp = nb_ctx_default_params();
    cp.n_ctx = (int)n_ctx;
    cp.n_threads = (int)n_threads; /* 0: the physical core count */
    nb_status st = nb_ctx_new(m, &cp, &ctx, errbuf, sizeof errbuf);
    if (st) {
        tool_error("%s", errbuf);
        goto done;
    }
    if (tool_lora_attach(&lora, m, ctx))
        goto done;
    if (n_prompt > nb_ctx_n_ctx(ctx)) {
        tool_error("the prompt is %lld tokens, longer than the %d-token context (use -c)",
                   (long long)n_prompt, nb_ctx_n_ctx(ctx));
        goto done;
    }
    if ((st = nb_sampler_new(&sp, nb_model_n_vocab(m), &smp)) ||
        (n_stops && (st = nb_stopper_new(stops, n_stops, &stopper)))) {
        tool_error("%s", nb_strerror(st));
        goto done;
    }

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_sigint;
    sigaction(SIGINT, &sa, NULL);

    if (echo)
        write_out(prompt, prompt_len);
    double t1 = now_s();
    st = nb_ctx_decode(ctx, toks, (int)n_prompt, 0);
    if (st) {
        tool_error("%s", nb_ctx_errmsg(ctx));
        goto done;
    }
    double t_prompt = now_s() - t1;
    for (int64_t i = 0; i < n_prompt; i++)
        nb_sampler_accept(smp, toks[i]);

    nb_detok dt;
    nb_detok_init(&dt, 0);
    char piece[3 * NB_MAX_PIECE + 4];
    const char *emit;
    size_t emit_len;
    int n_gen = 0, stopped = 0;
    const char *reason = "length";
    double t2 = now_s();
    while ((n_predict < 0 || n_gen < n_predict) && !interrupted) {
        nb_token t = nb_sampler_sample(smp, nb_ctx_logits(ctx, -1));
        nb_sampler_accept(smp, t);
        n_gen++;
        if (!ignore_eos && nb_model_is_eog(m, t)) {
            reason = "eos";
            break;
        }
        size_t n = nb_detok_push(&dt, m, t, piece, sizeof piece);
        if (stopper) {
            stopped = nb_stopper_feed(stopper, piece, n, &emit, &emit_len);
            write_out(emit, emit_len);
            if (stopped) {
                reason = "stop";
                break;
            }
        } else {
            write_out(piece, n);
        }
        if (n_predict >= 0 && n_gen >= n_predict)
            break;
        if (nb_ctx_n_past(ctx) >= nb_ctx_n_ctx(ctx)) {
            reason = "context full";
            break;
        }
        if ((st = nb_ctx_decode(ctx, &t, 1, 0))) {
            tool_error("%s", nb_ctx_errmsg(ctx));
            goto done;
        }
    }
    double t_gen = now_s() - t2;
    if (!stopped) {
        size_t n = nb_detok_flush(&dt, piece, sizeof piece);
        if (stopper) {
            stopped = nb_stopper_feed(stopper, piece, n, &emit, &emit_len);
            write_out(emit, emit_len);
            if (!stopped) {
                nb_stopper_flush(stopper, &emit, &emit_len);
                write_out(emit, emit_len);
            }
        } else {
            write_out(piece, n);
        }
    }
    if (interrupted)
        reason = "interrupted";
    if (isatty(1))
        fputc('\n', stdout);
    fflush(stdout);
    if (verbose) {
        fprintf(stderr, "\nnibble: seed %llu, stop: %s\n", seed, reason);
        fprintf(stderr, "nibble: load %.1f ms\n", t_load * 1e3);
        fprintf(stderr, "nibble: prompt %lld tokens in %.1f ms (%.1f tokens/s)\n",
                (long long)n_prompt, t_prompt * 1e3, (double)n_prompt / (t_prompt > 0 ? t_prompt : 1e-9));
        fprintf(stderr, "nibble: generated %d tokens in %.1f ms (%.1f tokens/s)\n", n_gen,
                t_gen * 1e3, n_gen / (t_gen > 0 ? t_gen : 1e-9));
    } else if (!strcmp(reason, "context full")) {
        fprintf(stderr, "nibble: stopped: the %d-token context is full (use -c)\n",
                nb_ctx_n_ctx(ctx));
    }
    rc = interrupted ? EXIT_CANCELLED : EXIT_OK;
done:
    nb_stopper_free(stopper);
    nb_sampler_free(smp);
    nb_ctx_free(ctx);
    tool_lora_free(&lora);
    nb_model_close(m);
    free(toks);
    free(file_text);
    return rc;
}
