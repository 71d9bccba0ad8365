/*
 * sched.c - nibd's scheduler.
 *
 * One worker thread owns the model and N slots, each an evaluation context
 * with its own KV cache and a record of the tokens in it.  A request goes
 * to the slot of its session, else to the idle slot whose cached tokens
 * share the longest prefix with its prompt, else to the least recently
 * used idle slot; only the tokens after the shared prefix are evaluated.
 * A slot's cache is only reused by a request with the same LoRA adapters
 * at the same scales as the tokens in it were evaluated with; requests
 * with different adapters still share passes (each row gets its own
 * context's adapters).
 *
 * Every pass of the worker takes a chunk of each prompt being read and one
 * token of each answer being written, from all busy slots at once, and
 * evaluates them in one batched forward pass (nb_decode_batch): the
 * weights are read once for everybody, every client makes progress, and
 * each gets exactly the logits it would get alone.  Prompt chunks are
 * capped so that a long prompt cannot stall the others, which also bounds
 * how long a cancel waits.  After keep_alive seconds without work the
 * model is closed; the next request opens it again.
 */
#include "sched.h"

#include <inttypes.h>
#include <malloc.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define MAX_QUEUE 256 /* jobs waiting for a slot, from every connection (doc/protocol.md) */
#define MIN(a, b) ((a) < (b) ? (a) : (b))

int nbd_log_level = 2;

void nbd_log(int level, const char *fmt, ...)
{
    if (level > nbd_log_level)
        return;
    static const char *names[] = {"error", "warn", "info", "debug"};
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    struct tm tm;
    localtime_r(&ts.tv_sec, &tm);
    char line[1024];
    int n = snprintf(line, sizeof line, "%02d:%02d:%02d.%03ld nibd %s: ", tm.tm_hour, tm.tm_min,
                     tm.tm_sec, ts.tv_nsec / 1000000, names[level < 0 ? 0 : level > 3 ? 3 : level]);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line + n, sizeof line - (size_t)n, fmt, ap);
    va_end(ap);
    fprintf(stderr, "%s\n", line);
}

void nbd_give_back_memory(void)
{
#ifdef __GLIBC__
    malloc_trim(0);
#endif
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

typedef enum { SLOT_IDLE, SLOT_PROMPT, SLOT_GEN } slot_state;

typedef struct slot {
    int id;
    nb_ctx *ctx;
    nb_token *cache;        /* the tokens in the KV cache (nb_ctx_n_past of them) */
    char session[NBD_MAX_ID + 1];
    uint64_t last_used;
    slot_state state;
    /* the request being served */
    nbd_job *job;
    nb_token *prompt;
    int n_prompt, n_done, n_cached;
    nb_sampler *smp;
    nb_stopper *stopper;
    nb_detok dt;
    nb_token pending;       /* sampled, to be evaluated next */
    /* the adapters its context applies, which made the tokens in its cache */
    nb_lora *lora[NBD_MAX_LORA];
    float lora_scale[NBD_MAX_LORA];
    int n_lora;
    int n_generated;
    char *text;             /* the whole answer, for stream = false */
    size_t text_len, text_cap;
    double t_assigned, t_prompt_done, t_first;
} slot;

struct nbd_sched {
    nbd_options o;
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    /* under mu */
    nbd_job *head, *tail;
    int n_queued;          /* jobs without a slot yet: in head..tail or waiting */
    int stop;
    int loaded, loads;
    uint64_t n_requests;
    atomic_ullong n_cancelled; /* requests that ended "cancelled" */
    int *slot_busy, *slot_cached;
    char (*slot_session)[NBD_MAX_ID + 1];
    /* the worker's own */
    nbd_job *waiting;       /* jobs without a slot yet, in order */
    nb_model *model;
    nb_ctx *ws;             /* workspace: threads and scratch of every pass */
    slot *slots;
    int n_ctx;
    uint64_t use_clock;
    double t_start, t_active;
    json_t *types;          /* tensors per type, for status */
    char name[256];
    int fim;                  /* the model has fill-in-the-middle tokens */
    nb_lora *lora[NBD_MAX_LORA]; /* o.lora_path[i], opened with the model */
    int lora_pairs[NBD_MAX_LORA]; /* for status; under mu */
    const char *chat_template; /* static: nb_chat_template_name */
};

/* ------------------------------------------------------------------ events */

static void emit(nbd_job *job, char *line)
{
    if (line)
        job->sink->emit(job->sink, line);
}

/* Send a job's last event and let it go. */
static void finish_job(nbd_job *job, char *final)
{
    atomic_store(&job->finished, 1);
    emit(job, final);
    job->sink->release(job->sink, job);
    nbd_request_free(&job->req);
    free(job);
}

static void fail_job(nbd_job *job, const char *code, const char *msg)
{
    finish_job(job, nbd_event_error(job->req.id, code, msg));
}

static void cancel_job(nbd_sched *s, nbd_job *job)
{
    s->n_cancelled++;
    finish_job(job, nbd_event_object(job->req.id, json_pack("{s:b, s:s}", "done", 1,
                                                            "stop_reason", "cancelled")));
}

/* ------------------------------------------------------------------ model */

static void publish_slots(nbd_sched *s)
{
    pthread_mutex_lock(&s->mu);
    for (int i = 0; i < s->o.n_slots; i++) {
        slot *sl = &s->slots[i];
        s->slot_busy[i] = sl->state != SLOT_IDLE;
        s->slot_cached[i] = s->loaded && sl->ctx ? nb_ctx_n_past(sl->ctx) : 0;
        memcpy(s->slot_session[i], sl->session, sizeof sl->session);
    }
    pthread_mutex_unlock(&s->mu);
}

static void unload(nbd_sched *s)
{
    for (int i = 0; i < s->o.n_slots; i++) {
        nb_ctx_free(s->slots[i].ctx);
        s->slots[i].ctx = NULL;
        s->slots[i].session[0] = 0;
        s->slots[i].n_lora = 0;
    }
    nb_ctx_free(s->ws);
    s->ws = NULL;
    for (int i = 0; i < s->o.n_lora; i++) {
        nb_lora_close(s->lora[i]);
        s->lora[i] = NULL;
    }
    nb_model_close(s->model);
    s->model = NULL;
    pthread_mutex_lock(&s->mu);
    s->loaded = 0;
    pthread_mutex_unlock(&s->mu);
    publish_slots(s);
}

static int stop_requested(void *data)
{
    nbd_sched *s = data;
    pthread_mutex_lock(&s->mu);
    int stop = s->stop;
    pthread_mutex_unlock(&s->mu);
    return stop;
}

static int load(nbd_sched *s, char *err, size_t errlen)
{
    if (s->model)
        return 0;
    double t0 = now_s();
    nb_status st = nb_model_open(s->o.model, NULL, &s->model, err, errlen);
    if (st)
        return -1;
    nb_model_info info;
    nb_model_get_info(s->model, &info);
    s->n_ctx = s->o.n_ctx ? s->o.n_ctx : MIN(info.n_ctx_train, 4096);
    nb_ctx_params wp = nb_ctx_default_params();
    wp.n_ctx = 1; /* the workspace holds no tokens of its own */
    wp.n_batch = s->o.n_batch;
    wp.n_threads = s->o.threads;
    if (nb_ctx_new(s->model, &wp, &s->ws, err, errlen))
        goto fail;
    nb_ctx_set_abort(s->ws, stop_requested, s);
    for (int i = 0; i < s->o.n_slots; i++) {
        nb_ctx_params sp = nb_ctx_default_params();
        sp.n_ctx = s->n_ctx;
        sp.n_batch = 1; /* slots are evaluated through the workspace */
        sp.n_threads = 1;
        if (nb_ctx_new(s->model, &sp, &s->slots[i].ctx, err, errlen))
            goto fail;
        free(s->slots[i].cache);
        s->slots[i].cache = malloc((size_t)s->n_ctx * sizeof(nb_token));
        if (!s->slots[i].cache) {
            snprintf(err, errlen, "out of memory for the slots");
            goto fail;
        }
    }
    for (int i = 0; i < s->o.n_lora; i++) {
        char lerr[512];
        if (nb_lora_open(s->model, s->o.lora_path[i], &s->lora[i], lerr, sizeof lerr)) {
            snprintf(err, errlen, "adapter %s: %s", s->o.lora_name[i], lerr);
            goto fail;
        }
        pthread_mutex_lock(&s->mu);
        s->lora_pairs[i] = nb_lora_n_pairs(s->lora[i]);
        pthread_mutex_unlock(&s->mu);
    }
    json_decref(s->types);
    s->types = json_object();
    for (int t = 0; t < NB_TYPE_COUNT; t++)
        if (info.type_tensors[t])
            json_object_set_new(s->types, nb_type_name(t), json_integer(info.type_tensors[t]));
    snprintf(s->name, sizeof s->name, "%s", info.name);
    s->fim = nb_model_has_fim(s->model);
    s->chat_template = nb_chat_template_name(s->model);
    pthread_mutex_lock(&s->mu);
    s->loaded = 1;
    s->loads++;
    pthread_mutex_unlock(&s->mu);
    nbd_log(2, "loaded %s in %.0f ms (%d slots of %d tokens)", s->o.model,
            (now_s() - t0) * 1e3, s->o.n_slots, s->n_ctx);
    return 0;
fail:
    unload(s);
    return -1;
}

/* ------------------------------------------------------------------ slots */

static int common_prefix(const nb_token *a, int na, const nb_token *b, int nb)
{
    int n = 0;
    while (n < na && n < nb && a[n] == b[n])
        n++;
    return n;
}

static void slot_clear_request(slot *sl)
{
    nb_sampler_free(sl->smp);
    nb_stopper_free(sl->stopper);
    free(sl->prompt);
    free(sl->text);
    sl->smp = NULL;
    sl->stopper = NULL;
    sl->prompt = NULL;
    sl->text = NULL;
    sl->text_len = sl->text_cap = 0;
    sl->job = NULL;
    sl->state = SLOT_IDLE;
}

static void out_text(slot *sl, const char *t, size_t n)
{
    if (!n)
        return;
    if (sl->job->req.stream) {
        emit(sl->job, nbd_event_text(sl->job->req.id, t, n));
        return;
    }
    if (sl->text_len + n + 1 > sl->text_cap) {
        size_t cap = (sl->text_cap ? sl->text_cap : 1024);
        while (cap < sl->text_len + n + 1)
            cap *= 2;
        char *nt = realloc(sl->text, cap);
        if (!nt)
            return;
        sl->text = nt;
        sl->text_cap = cap;
    }
    memcpy(sl->text + sl->text_len, t, n);
    sl->text_len += n;
}

static void finish_slot(nbd_sched *s, slot *sl, const char *reason)
{
    nbd_job *job = sl->job;
    if (!strcmp(reason, "cancelled"))
        s->n_cancelled++;
    if (strcmp(reason, "stop") && strcmp(reason, "cancelled")) {
        /* text held back by the detokenizer or the stop matcher */
        char buf[16];
        size_t n = nb_detok_flush(&sl->dt, buf, sizeof buf);
        const char *e;
        size_t el;
        if (sl->stopper) {
            if (!nb_stopper_feed(sl->stopper, buf, n, &e, &el)) {
                out_text(sl, e, el);
                nb_stopper_flush(sl->stopper, &e, &el);
            }
            out_text(sl, e, el);
        } else {
            out_text(sl, buf, n);
        }
    }
    double t = now_s();
    double gen_s = sl->t_prompt_done > 0 ? t - sl->t_prompt_done : 0;
    json_t *timings = json_pack(
        "{s:f, s:f, s:f, s:f, s:f}", "queued_ms", (sl->t_assigned - job->t_queued) * 1e3,
        "prompt_ms", sl->t_prompt_done > 0 ? (sl->t_prompt_done - sl->t_assigned) * 1e3 : 0.0,
        "first_token_ms", sl->t_first > 0 ? (sl->t_first - sl->t_assigned) * 1e3 : 0.0,
        "generate_ms", gen_s * 1e3, "tokens_per_s",
        gen_s > 0 ? sl->n_generated / gen_s : 0.0);
    json_t *o = json_pack("{s:b, s:s, s:i, s:i, s:i, s:i, s:o}", "done", 1, "stop_reason", reason,
                          "n_prompt", sl->n_prompt, "n_cached", sl->n_cached, "n_evaluated",
                          sl->n_done - sl->n_cached, "n_generated", sl->n_generated, "timings",
                          timings);
    if (o && !job->req.stream)
        json_object_set_new(o, "text", json_stringn(sl->text ? sl->text : "", sl->text_len));
    if (o && job->warning)
        json_object_set_new(o, "warning", json_string(job->warning));
    if (o && job->req.op == NBD_OP_INFILL) {
        const nb_infill_fit *f = &job->fit;
        json_object_set_new(
            o, "infill",
            json_pack("{s:b, s:i, s:i, s:I, s:I, s:i, s:i}", "fim", f->fim, "prefix_tokens",
                      f->prefix_tokens, "suffix_tokens", f->suffix_tokens, "prefix_dropped",
                      (json_int_t)f->prefix_dropped, "suffix_dropped", (json_int_t)f->suffix_dropped,
                      "chunks_used", f->chunks_used, "chunks_dropped",
                      job->req.n_chunks - f->chunks_used));
    }
    nbd_log(3, "slot %d: %s after %d prompt (%d cached) and %d generated tokens", sl->id, reason,
            sl->n_prompt, sl->n_cached, sl->n_generated);
    /* the slot is free before the client hears so: a status request sent
     * right after the last event never sees it busy */
    slot_clear_request(sl);
    publish_slots(s);
    finish_job(job, nbd_event_object(job->req.id, o));
    s->t_active = now_s();
}

/* Tokens of a generation request, or an error event (returns NULL). */
static nb_token *request_tokens(nbd_sched *s, nbd_job *job, int *n)
{
    nbd_request *r = &job->req;
    char msg[512];
    nb_token *toks = NULL;
    int64_t cnt = 0;
    const nb_model *m = s->model;
    int n_vocab = nb_model_n_vocab(m);
    if (r->op == NBD_OP_INFILL) {
        nb_chunk *chunks = calloc((size_t)(r->n_chunks ? r->n_chunks : 1), sizeof *chunks);
        if (!chunks) {
            fail_job(job, NBD_E_INTERNAL, "out of memory");
            return NULL;
        }
        for (int i = 0; i < r->n_chunks; i++)
            chunks[i] = (nb_chunk){r->chunks[i].name, r->chunks[i].text};
        /* room for the answer: n_predict tokens, but at most half the
         * context (a quarter when it is open-ended) */
        int reserve = r->n_predict > 0 ? MIN(r->n_predict, s->n_ctx / 2) : s->n_ctx / 4;
        job->fit = (nb_infill_fit){.n_prefix = r->n_prefix,
                                   .n_suffix = r->n_suffix,
                                   .n_max = s->n_ctx - reserve,
                                   .fallback_prefix = r->fallback_prefix};
        nb_status st = nb_infill_tokens_fit(m, r->prefix, r->suffix, chunks, r->n_chunks,
                                            &job->fit, &toks, &cnt, msg, sizeof msg);
        free(chunks);
        if (st) {
            fail_job(job,
                     st == NB_ERR_UNSUPPORTED ? NBD_E_UNSUPPORTED
                     : st == NB_ERR_INVALID   ? NBD_E_CONTEXT
                                              : NBD_E_INTERNAL,
                     msg);
            return NULL;
        }
    } else if (r->op == NBD_OP_COMPLETE && r->tokens) {
        for (int i = 0; i < r->n_tokens; i++)
            if (r->tokens[i] >= n_vocab) {
                snprintf(msg, sizeof msg,
                         "tokens[%d] = %" PRId32 " is outside the vocabulary (0 to %d)", i,
                         r->tokens[i], n_vocab - 1);
                fail_job(job, NBD_E_REQUEST, msg);
                return NULL;
            }
        toks = malloc((size_t)(r->n_tokens ? r->n_tokens : 1) * sizeof *toks);
        if (toks)
            memcpy(toks, r->tokens, (size_t)r->n_tokens * sizeof *toks);
        cnt = r->n_tokens;
    } else {
        char *rendered = NULL;
        const char *text = r->prompt;
        size_t len = r->prompt_len;
        int flags = (r->add_bos ? NB_TOK_ADD_SPECIAL : 0) | (r->special ? NB_TOK_PARSE_SPECIAL : 0);
        if (r->op == NBD_OP_CHAT) {
            nb_chat_msg *msgs = calloc((size_t)r->n_messages, sizeof *msgs);
            if (!msgs) {
                fail_job(job, NBD_E_INTERNAL, "out of memory");
                return NULL;
            }
            for (int i = 0; i < r->n_messages; i++)
                msgs[i] = (nb_chat_msg){r->messages[i].role, r->messages[i].content};
            nb_status st = nb_chat_render(m, r->template_name, msgs, r->n_messages, 1, &rendered,
                                          msg, sizeof msg);
            free(msgs);
            if (st) {
                fail_job(job, NBD_E_REQUEST, msg);
                return NULL;
            }
            text = rendered;
            len = strlen(rendered);
            flags = NB_TOK_ADD_SPECIAL | NB_TOK_PARSE_SPECIAL;
            if (!r->template_name && !strcmp(nb_chat_template_name(m), "unknown"))
                job->warning = "the model's chat template is not one nibble recognises; "
                               "using ChatML";
        }
        int64_t need = nb_tokenize(m, text, len, NULL, 0, flags);
        toks = need >= 0 ? malloc((size_t)(need ? need : 1) * sizeof *toks) : NULL;
        cnt = toks ? nb_tokenize(m, text, len, toks, need, flags) : -1;
        free(rendered);
        if (cnt < 0) {
            free(toks);
            fail_job(job, NBD_E_INTERNAL, "cannot tokenize the prompt");
            return NULL;
        }
    }
    if (!toks) {
        fail_job(job, NBD_E_INTERNAL, "out of memory");
        return NULL;
    }
    if (cnt == 0) {
        free(toks);
        fail_job(job, NBD_E_REQUEST, "the prompt is empty (and no BOS token is added)");
        return NULL;
    }
    if (cnt > s->n_ctx) {
        free(toks);
        snprintf(msg, sizeof msg, "the prompt is %" PRId64 " tokens; the context holds %d", cnt,
                 s->n_ctx);
        fail_job(job, NBD_E_CONTEXT, msg);
        return NULL;
    }
    *n = (int)cnt;
    return toks;
}

static uint64_t random_seed(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    static atomic_ullong counter;
    return (uint64_t)ts.tv_nsec * 6364136223846793005ull ^ (uint64_t)ts.tv_sec ^
           ((uint64_t)getpid() << 40) ^ atomic_fetch_add(&counter, 0x9e3779b97f4a7c15ull);
}

/* The daemon's adapters a request names, in its order; -1 after failing
 * the job when it names one the daemon does not have. */
static int resolve_lora(nbd_sched *s, nbd_job *job, nb_lora **out)
{
    const nbd_request *r = &job->req;
    for (int i = 0; i < r->n_lora; i++) {
        int k = 0;
        while (k < s->o.n_lora && strcmp(s->o.lora_name[k], r->lora_names[i]))
            k++;
        if (k == s->o.n_lora) {
            char msg[512], have[256] = "";
            size_t at = 0;
            for (int j = 0; j < s->o.n_lora && at < sizeof have; j++)
                at += (size_t)snprintf(have + at, sizeof have - at, "%s%s", j ? ", " : "",
                                       s->o.lora_name[j]);
            snprintf(msg, sizeof msg, "unknown adapter '%s' (%s%s)", r->lora_names[i],
                     s->o.n_lora ? "nibd has: " : "nibd has none; start it with --lora NAME=FILE",
                     have);
            fail_job(job, NBD_E_REQUEST, msg);
            return -1;
        }
        out[i] = s->lora[k];
    }
    return 0;
}

/* Whether a slot's cache was made with the adapters and scales r asks for. */
static int same_lora(const slot *sl, const nbd_request *r, nb_lora *const *lora)
{
    if (sl->n_lora != r->n_lora)
        return 0;
    for (int i = 0; i < r->n_lora; i++)
        if (sl->lora[i] != lora[i] || sl->lora_scale[i] != r->lora_scales[i])
            return 0;
    return 1;
}

/* Tokens of a slot's cache a request may keep. */
static int reusable(const slot *sl, const nbd_request *r, nb_lora *const *lora,
                    const nb_token *toks, int n)
{
    if (!same_lora(sl, r, lora))
        return 0;
    return common_prefix(sl->cache, nb_ctx_n_past(sl->ctx), toks, n);
}

/* Put a job into a slot; 0 when placed (or failed and answered), -1 when
 * no suitable slot is free yet. */
static int place(nbd_sched *s, nbd_job *job)
{
    nbd_request *r = &job->req;
    slot *target = NULL;
    if (r->session) {
        for (int i = 0; i < s->o.n_slots; i++)
            if (!strcmp(s->slots[i].session, r->session)) {
                if (s->slots[i].state != SLOT_IDLE)
                    return -1; /* wait for our own cache rather than lose it */
                target = &s->slots[i];
            }
    }
    int n;
    nb_token *toks = NULL;
    if (!target) {
        int any_idle = 0;
        for (int i = 0; i < s->o.n_slots; i++)
            any_idle |= s->slots[i].state == SLOT_IDLE;
        if (!any_idle)
            return -1;
    }
    nb_lora *lora[NBD_MAX_LORA];
    if (resolve_lora(s, job, lora))
        return 0;
    if (!(toks = request_tokens(s, job, &n)))
        return 0;
    if (!target) {
        int best = -1;
        for (int i = 0; i < s->o.n_slots; i++) {
            slot *sl = &s->slots[i];
            if (sl->state != SLOT_IDLE)
                continue;
            int common = reusable(sl, r, lora, toks, n);
            if (!target || common > best ||
                (common == best && sl->last_used < target->last_used)) {
                target = sl;
                best = common;
            }
        }
    }
    slot *sl = target;
    int common = reusable(sl, r, lora, toks, n);
    if (common == n)
        common = n - 1; /* the last token is evaluated again for its logits */
    nb_ctx_truncate(sl->ctx, common);
    if (!same_lora(sl, r, lora)) {
        if (nb_ctx_set_lora(sl->ctx, lora, r->lora_scales, r->n_lora)) {
            free(toks);
            fail_job(job, NBD_E_INTERNAL, nb_ctx_errmsg(sl->ctx));
            return 0;
        }
        memcpy(sl->lora, lora, (size_t)r->n_lora * sizeof *lora);
        memcpy(sl->lora_scale, r->lora_scales, (size_t)r->n_lora * sizeof(float));
        sl->n_lora = r->n_lora;
    }
    nb_sampler_params sp = r->sp;
    if (!r->has_seed)
        sp.seed = random_seed();
    if (nb_sampler_new(&sp, nb_model_n_vocab(s->model), &sl->smp) ||
        (r->n_stops && nb_stopper_new(r->stops, r->n_stops, &sl->stopper))) {
        free(toks);
        slot_clear_request(sl);
        fail_job(job, NBD_E_INTERNAL, "out of memory");
        return 0;
    }
    for (int i = 0; i < n; i++)
        nb_sampler_accept(sl->smp, toks[i]);
    nb_detok_init(&sl->dt, 0);
    sl->job = job;
    sl->prompt = toks;
    sl->n_prompt = n;
    sl->n_done = sl->n_cached = common;
    sl->n_generated = 0;
    sl->state = SLOT_PROMPT;
    sl->last_used = ++s->use_clock;
    snprintf(sl->session, sizeof sl->session, "%s", r->session ? r->session : "");
    sl->t_assigned = now_s();
    sl->t_prompt_done = sl->t_first = 0;
    nbd_log(3, "slot %d: %d prompt tokens, %d cached", sl->id, n, common);
    return 0;
}

/* A token was sampled for a slot: show it, and decide whether to go on. */
static void take_token(nbd_sched *s, slot *sl, nb_token t)
{
    nbd_job *job = sl->job;
    nb_sampler_accept(sl->smp, t);
    if (!job->req.ignore_eos && nb_model_is_eog(s->model, t)) {
        finish_slot(s, sl, "eos");
        return;
    }
    sl->n_generated++;
    if (!sl->t_first)
        sl->t_first = now_s();
    char piece[3 * NB_MAX_PIECE + 4]; /* nb_detok_push's bound */
    size_t n = nb_detok_push(&sl->dt, s->model, t, piece, sizeof piece);
    if (sl->stopper) {
        const char *e;
        size_t el;
        int stopped = nb_stopper_feed(sl->stopper, piece, n, &e, &el);
        out_text(sl, e, el);
        if (stopped) {
            finish_slot(s, sl, "stop");
            return;
        }
    } else {
        out_text(sl, piece, n);
    }
    if ((job->req.n_predict >= 0 && sl->n_generated >= job->req.n_predict) ||
        nb_ctx_n_past(sl->ctx) >= s->n_ctx) {
        finish_slot(s, sl, "length");
        return;
    }
    sl->pending = t;
    sl->state = SLOT_GEN;
}

/* One batched forward pass over every busy slot. */
static void run_pass(nbd_sched *s)
{
    nb_batch_item items[64];
    slot *who[64];
    int n_items = 0, total = 0;
    static int rr;
    int n_slots = s->o.n_slots;
    rr = (rr + 1) % n_slots; /* rotate who goes first when the batch is full */
    for (int k = 0; k < n_slots && n_items < 64; k++) {
        slot *sl = &s->slots[(rr + k) % n_slots];
        if (sl->state == SLOT_PROMPT) {
            int take = MIN(sl->n_prompt - sl->n_done, s->o.prompt_chunk);
            take = MIN(take, s->o.n_batch - total);
            if (take <= 0)
                continue;
            items[n_items] = (nb_batch_item){sl->ctx, sl->prompt + sl->n_done, take, 0};
        } else if (sl->state == SLOT_GEN) {
            if (total >= s->o.n_batch)
                continue;
            items[n_items] = (nb_batch_item){sl->ctx, &sl->pending, 1, 0};
        } else {
            continue;
        }
        total += items[n_items].n;
        who[n_items++] = sl;
    }
    if (!n_items)
        return;
    int before[64];
    for (int i = 0; i < n_items; i++)
        before[i] = nb_ctx_n_past(who[i]->ctx);
    nb_status st = nb_decode_batch(s->ws, items, n_items);
    for (int i = 0; i < n_items; i++) {
        slot *sl = who[i];
        int after = nb_ctx_n_past(sl->ctx);
        memcpy(sl->cache + before[i], items[i].tokens, (size_t)(after - before[i]) * sizeof(nb_token));
    }
    if (st) {
        if (st == NB_ERR_CANCELLED)
            return; /* stopping: the caller cancels everything */
        for (int i = 0; i < n_items; i++) {
            fail_job(who[i]->job, NBD_E_INTERNAL, nb_ctx_errmsg(s->ws));
            slot_clear_request(who[i]);
        }
        return;
    }
    for (int i = 0; i < n_items; i++) {
        slot *sl = who[i];
        if (sl->state == SLOT_PROMPT) {
            sl->n_done += items[i].n;
            if (sl->n_done < sl->n_prompt)
                continue;
            sl->t_prompt_done = now_s();
            if (sl->job->req.n_predict == 0) {
                finish_slot(s, sl, "length");
                continue;
            }
        }
        take_token(s, sl, nb_sampler_sample(sl->smp, nb_ctx_logits(sl->ctx, -1)));
    }
}

/* ------------------------------------------------------------------ worker */

static void quick_job(nbd_sched *s, nbd_job *job)
{
    nbd_request *r = &job->req;
    if (r->op == NBD_OP_TOKENIZE) {
        int flags = (r->add_bos ? NB_TOK_ADD_SPECIAL : 0) | (r->special ? NB_TOK_PARSE_SPECIAL : 0);
        int64_t need = nb_tokenize(s->model, r->text, r->prompt_len, NULL, 0, flags);
        if (need > NBD_MAX_TOKENIZE) {
            /* the reply would take tens of bytes of JSON per token to build */
            char msg[128];
            snprintf(msg, sizeof msg, "the text is %" PRId64 " tokens (at most %d)", need,
                     NBD_MAX_TOKENIZE);
            fail_job(job, NBD_E_REQUEST, msg);
            return;
        }
        nb_token *t = need >= 0 ? malloc((size_t)(need ? need : 1) * sizeof *t) : NULL;
        json_t *arr = json_array();
        if (!t || !arr) {
            free(t);
            json_decref(arr);
            fail_job(job, NBD_E_INTERNAL, "out of memory");
            return;
        }
        nb_tokenize(s->model, r->text, r->prompt_len, t, need, flags);
        for (int64_t i = 0; i < need; i++)
            json_array_append_new(arr, json_integer(t[i]));
        free(t);
        finish_job(job, nbd_event_object(r->id, json_pack("{s:o}", "tokens", arr)));
        return;
    }
    finish_job(job, NULL);
}

static int any_busy(const nbd_sched *s)
{
    for (int i = 0; i < s->o.n_slots; i++)
        if (s->slots[i].state != SLOT_IDLE)
            return 1;
    return 0;
}

static void *worker(void *arg)
{
    nbd_sched *s = arg;
    int trim = 0; /* work was done since the last malloc_trim */
    for (;;) {
        pthread_mutex_lock(&s->mu);
        while (!s->stop && !s->head && !s->waiting && !any_busy(s)) {
            if (trim) {
                /* idle after work: hand the memory freed since back to the
                 * system, so that a burst of requests does not stay in the
                 * daemon's RSS for the weeks it runs (make soak checks) */
                trim = 0;
                pthread_mutex_unlock(&s->mu);
                nbd_give_back_memory();
                pthread_mutex_lock(&s->mu);
                continue;
            }
            if (s->loaded && s->o.keep_alive >= 0) {
                double deadline = s->t_active + s->o.keep_alive;
                if (now_s() >= deadline) {
                    pthread_mutex_unlock(&s->mu);
                    nbd_log(2, "idle for %.0f s: releasing the weights", s->o.keep_alive);
                    unload(s);
                    pthread_mutex_lock(&s->mu);
                    continue;
                }
                struct timespec ts;
                clock_gettime(CLOCK_REALTIME, &ts);
                double wait = deadline - now_s() + 0.001;
                ts.tv_sec += (time_t)wait;
                ts.tv_nsec += (long)((wait - floor(wait)) * 1e9);
                if (ts.tv_nsec >= 1000000000L) {
                    ts.tv_sec++;
                    ts.tv_nsec -= 1000000000L;
                }
                pthread_cond_timedwait(&s->cv, &s->mu, &ts);
            } else {
                pthread_cond_wait(&s->cv, &s->mu);
            }
        }
        if (s->stop) {
            pthread_mutex_unlock(&s->mu);
            break;
        }
        nbd_job *incoming = s->head;
        s->head = s->tail = NULL;
        pthread_mutex_unlock(&s->mu);
        int left = 0; /* jobs that left the waiting list this round */

        /* append the new jobs to the waiting list, in order */
        nbd_job **tailp = &s->waiting;
        while (*tailp)
            tailp = &(*tailp)->next;
        *tailp = incoming;

        if (s->waiting && !s->model) {
            char err[512];
            if (load(s, err, sizeof err)) {
                nbd_log(0, "cannot load %s: %s", s->o.model, err);
                while (s->waiting) {
                    nbd_job *j = s->waiting;
                    s->waiting = j->next;
                    fail_job(j, NBD_E_INTERNAL, err);
                    left++;
                }
                pthread_mutex_lock(&s->mu);
                s->n_queued -= left;
                pthread_mutex_unlock(&s->mu);
                continue;
            }
        }
        /* cancellations, then new work into free slots */
        for (int i = 0; i < s->o.n_slots; i++)
            if (s->slots[i].job && atomic_load(&s->slots[i].job->cancelled))
                finish_slot(s, &s->slots[i], "cancelled");
        for (nbd_job **pp = &s->waiting; *pp;) {
            nbd_job *j = *pp;
            if (atomic_load(&j->cancelled)) {
                *pp = j->next;
                cancel_job(s, j);
                left++;
                continue;
            }
            if (j->req.op == NBD_OP_TOKENIZE) {
                *pp = j->next;
                quick_job(s, j);
                left++;
                continue;
            }
            nbd_job *next = j->next;
            if (place(s, j) == 0) {
                *pp = next;
                left++;
                continue;
            }
            pp = &j->next;
        }
        if (left) {
            pthread_mutex_lock(&s->mu);
            s->n_queued -= left;
            pthread_mutex_unlock(&s->mu);
        }
        run_pass(s);
        s->t_active = now_s();
        publish_slots(s);
        trim = 1;
    }
    /* stopping: everything still running or waiting ends as cancelled */
    for (int i = 0; i < s->o.n_slots; i++)
        if (s->slots[i].job)
            finish_slot(s, &s->slots[i], "cancelled");
    nbd_job *all = s->waiting;
    pthread_mutex_lock(&s->mu);
    nbd_job **tailp = &all;
    while (*tailp)
        tailp = &(*tailp)->next;
    *tailp = s->head;
    s->head = s->tail = NULL;
    pthread_mutex_unlock(&s->mu);
    while (all) {
        nbd_job *j = all;
        all = j->next;
        cancel_job(s, j);
    }
    s->waiting = NULL;
    return NULL;
}

/* ------------------------------------------------------------------ api */

nbd_sched *nbd_sched_start(const nbd_options *o, char *err, size_t errlen)
{
    nbd_sched *s = calloc(1, sizeof *s);
    if (!s) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    s->o = *o;
    s->slots = calloc((size_t)o->n_slots, sizeof *s->slots);
    s->slot_busy = calloc((size_t)o->n_slots, sizeof *s->slot_busy);
    s->slot_cached = calloc((size_t)o->n_slots, sizeof *s->slot_cached);
    s->slot_session = calloc((size_t)o->n_slots, sizeof *s->slot_session);
    if (!s->slots || !s->slot_busy || !s->slot_cached || !s->slot_session) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    for (int i = 0; i < o->n_slots; i++)
        s->slots[i].id = i;
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->cv, NULL);
    s->t_start = s->t_active = now_s();
    if (load(s, err, errlen))
        goto fail;
    if (pthread_create(&s->thread, NULL, worker, s)) {
        snprintf(err, errlen, "cannot start the worker thread");
        unload(s);
        goto fail;
    }
    return s;
fail:
    free(s->slots);
    free(s->slot_busy);
    free(s->slot_cached);
    free(s->slot_session);
    free(s);
    return NULL;
}

int nbd_sched_submit(nbd_sched *s, nbd_job *job)
{
    job->next = NULL;
    job->t_queued = now_s();
    pthread_mutex_lock(&s->mu);
    if (s->n_queued >= MAX_QUEUE || s->stop) {
        pthread_mutex_unlock(&s->mu);
        return -1;
    }
    if (s->tail)
        s->tail->next = job;
    else
        s->head = job;
    s->tail = job;
    s->n_queued++;
    s->n_requests++;
    pthread_cond_signal(&s->cv);
    pthread_mutex_unlock(&s->mu);
    return 0;
}

void nbd_sched_poke(nbd_sched *s)
{
    pthread_mutex_lock(&s->mu);
    pthread_cond_signal(&s->cv);
    pthread_mutex_unlock(&s->mu);
}

static uint64_t rss_bytes(void)
{
    FILE *f = fopen("/proc/self/statm", "r");
    unsigned long size = 0, rss = 0;
    if (f) {
        if (fscanf(f, "%lu %lu", &size, &rss) != 2)
            rss = 0;
        fclose(f);
    }
    return (uint64_t)rss * (uint64_t)sysconf(_SC_PAGESIZE);
}

json_t *nbd_sched_status(nbd_sched *s)
{
    json_t *slots = json_array();
    pthread_mutex_lock(&s->mu);
    for (int i = 0; i < s->o.n_slots; i++)
        json_array_append_new(slots, json_pack("{s:i, s:b, s:s, s:i}", "slot", i, "busy",
                                               s->slot_busy[i], "session", s->slot_session[i],
                                               "n_cached", s->slot_cached[i]));
    json_t *o = json_pack("{s:s, s:s, s:b, s:i, s:O?, s:s, s:i, s:i, s:o, s:f, s:I, s:f, s:I}",
                          "model", s->o.model, "name", s->name, "loaded", s->loaded, "loads",
                          s->loads, "types", s->types, "simd", nb_kernels_level(), "threads",
                          s->o.threads ? s->o.threads : nb_physical_cores(), "n_ctx", s->n_ctx,
                          "slots", slots, "uptime_s", now_s() - s->t_start, "rss_bytes",
                          (json_int_t)rss_bytes(), "keep_alive_s", s->o.keep_alive, "requests",
                          (json_int_t)s->n_requests);
    if (o) {
        json_object_set_new(o, "fim", json_boolean(s->fim));
        json_object_set_new(o, "cancelled", json_integer((json_int_t)s->n_cancelled));
        json_object_set_new(o, "chat_template", json_string(s->chat_template ? s->chat_template : "unknown"));
        json_t *lora = json_array();
        for (int i = 0; i < s->o.n_lora; i++)
            json_array_append_new(lora, json_pack("{s:s, s:s, s:i}", "name", s->o.lora_name[i],
                                                  "path", s->o.lora_path[i], "pairs",
                                                  s->lora_pairs[i]));
        json_object_set_new(o, "lora", lora);
    }
    pthread_mutex_unlock(&s->mu);
    return o;
}

void nbd_sched_stop(nbd_sched *s)
{
    if (!s)
        return;
    pthread_mutex_lock(&s->mu);
    s->stop = 1;
    pthread_cond_signal(&s->cv);
    pthread_mutex_unlock(&s->mu);
    pthread_join(s->thread, NULL);
    unload(s);
    for (int i = 0; i < s->o.n_slots; i++)
        free(s->slots[i].cache);
    json_decref(s->types);
    pthread_mutex_destroy(&s->mu);
    pthread_cond_destroy(&s->cv);
    free(s->slots);
    free(s->slot_busy);
    free(s->slot_cached);
    free(s->slot_session);
    free(s);
}
