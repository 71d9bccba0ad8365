/*
 * engine.c - nibble.core's in-process engine: models, tokenizing, and
 * generations that run on a thread of their own.
 *
 * A generation's worker thread owns its context, sampler and stopper and
 * never touches the Lua state: it queues events (jansson objects, shaped
 * as nibd's) under the generation's mutex and writes a byte to a pipe when
 * the queue stops being empty, so the pipe is readable exactly while
 * events wait.  The Lua side takes them in read() and wait().
 *
 * The model state is reference-counted: the model object holds one
 * reference and each generation another, so a generation keeps its model
 * loaded.  model:close() cancels and joins the generations first.  A
 * finished generation leaves its context (and the tokens in its cache) to
 * the next, which evaluates only what differs, as nibd's slots do.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "nbl.h"

#define MAX_PREDICT 1048576 /* as nibd's n_predict */

typedef struct gen gen;

typedef struct mstate {
    pthread_mutex_t mu;
    int refs;             /* the model object and each generation not yet closed */
    nb_model *m;          /* NULL once closed */
    int n_ctx, threads;
    int space_prefix;     /* the tokenizer puts a space before the text */
    int vocab_only;
    nb_ctx *spare;        /* a finished generation's context, with */
    nb_token *spare_toks; /* the tokens in its cache (n_ctx of room) */
    gen *gens;            /* not yet joined; touched by the Lua side only */
} mstate;

typedef struct model_ud {
    mstate *ms;           /* NULL once closed */
} model_ud;

struct gen {
    mstate *ms;
    pthread_t thread;
    int joined;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    json_t *queue;        /* events the worker made, not yet taken */
    int finished;         /* the worker has made its final event */
    atomic_int cancel;
    int rfd, wfd;         /* the pipe: readable while the queue is not empty */
    /* the request, read by the worker */
    nb_token *toks;
    int n_toks;
    nb_sampler_params sp;
    char *stops[NB_STOP_MAX];
    int n_stops;
    int n_predict, ignore_eos;
    /* the Lua side */
    nbl_stream s;
    gen *next, *prev;
};

typedef struct gen_ud {
    gen *g;               /* NULL once closed */
} gen_ud;

static double now_ms(void)
{
    return nbl_now_ms();
}

/* ------------------------------------------------------------------ model state */

static void ms_free_spare(mstate *ms)
{
    nb_ctx_free(ms->spare);
    free(ms->spare_toks);
    ms->spare = NULL;
    ms->spare_toks = NULL;
}

static void ms_unref(mstate *ms)
{
    pthread_mutex_lock(&ms->mu);
    int left = --ms->refs;
    pthread_mutex_unlock(&ms->mu);
    if (left > 0)
        return;
    ms_free_spare(ms);
    nb_model_close(ms->m);
    pthread_mutex_destroy(&ms->mu);
    free(ms);
}

/* ------------------------------------------------------------------ worker */

static int aborted(void *data)
{
    return atomic_load(&((gen *)data)->cancel);
}

/* Queue an event (NULL: could not be made) and wake the reader. */
static void post(gen *g, json_t *ev, int final)
{
    pthread_mutex_lock(&g->mu);
    int was_empty = json_array_size(g->queue) == 0;
    int added = ev && json_array_append_new(g->queue, ev) == 0;
    if (final) {
        g->finished = 1;
        pthread_cond_broadcast(&g->cv);
    }
    if (was_empty && (added || final)) {
        char b = 1;
        ssize_t w;
        do
            w = write(g->wfd, &b, 1);
        while (w < 0 && errno == EINTR); /* full (EAGAIN) is readable too */
    }
    pthread_mutex_unlock(&g->mu);
}

static void post_text(gen *g, const char *t, size_t n)
{
    if (n)
        post(g, json_pack("{s:o}", "text", json_stringn_nocheck(t, n)), 0);
}

static void post_error(gen *g, const char *code, const char *msg)
{
    post(g, json_pack("{s:b, s:s, s:s, s:s}", "done", 1, "stop_reason", "error", "error", code,
                      "message", msg),
         1);
}

static int common_prefix(const nb_token *a, int na, const nb_token *b, int nb)
{
    int n = 0;
    while (n < na && n < nb && a[n] == b[n])
        n++;
    return n;
}

typedef struct run {
    nb_detok dt;
    nb_stopper *stopper;
    int n_generated, n_cached;
    double t0, t_prompt, t_first;
} run;

/* Text of a token through the detokenizer and the stop strings; 1 when a
 * stop string matched. */
static int show(gen *g, run *r, const char *piece, size_t n)
{
    if (!r->stopper) {
        post_text(g, piece, n);
        return 0;
    }
    const char *e;
    size_t el;
    int stopped = nb_stopper_feed(r->stopper, piece, n, &e, &el);
    post_text(g, e, el);
    return stopped;
}

static void finish(gen *g, run *r, const char *reason)
{
    if (strcmp(reason, "stop") && strcmp(reason, "cancelled")) {
        char buf[16];
        size_t n = nb_detok_flush(&r->dt, buf, sizeof buf);
        if (!show(g, r, buf, n) && r->stopper) {
            const char *e;
            size_t el;
            nb_stopper_flush(r->stopper, &e, &el);
            post_text(g, e, el);
        }
    }
    double t = now_ms();
    double gen_ms = r->t_prompt > 0 ? t - r->t_prompt : 0;
    json_t *timings = json_pack(
        "{s:f, s:f, s:f, s:f, s:f}", "queued_ms", 0.0, "prompt_ms",
        r->t_prompt > 0 ? r->t_prompt - r->t0 : 0.0, "first_token_ms",
        r->t_first > 0 ? r->t_first - r->t0 : 0.0, "generate_ms", gen_ms, "tokens_per_s",
        gen_ms > 0 ? r->n_generated / (gen_ms * 1e-3) : 0.0);
    post(g, json_pack("{s:b, s:s, s:i, s:i, s:i, s:i, s:o*}", "done", 1, "stop_reason", reason,
                      "n_prompt", g->n_toks, "n_cached", r->n_cached, "n_evaluated",
                      g->n_toks - r->n_cached, "n_generated", r->n_generated, "timings", timings),
         1);
}

/* The generation loop of nibd's scheduler (take_token, finish_slot) for
 * one sequence.  Returns the stop reason, or NULL after posting an
 * error. */
static const char *generate(gen *g, run *r, nb_ctx *ctx, nb_token *hist)
{
    const nb_model *m = g->ms->m;
    char err[256];
    nb_sampler *smp = NULL;
    const char *reason = NULL;
    nb_status st = nb_sampler_new(&g->sp, nb_model_n_vocab(m), &smp);
    if (!st && g->n_stops)
        st = nb_stopper_new((const char *const *)g->stops, g->n_stops, &r->stopper);
    if (st) {
        snprintf(err, sizeof err, "%s", nb_strerror(st));
        post_error(g, st == NB_ERR_NOMEM ? "nomem" : "internal", err);
        goto out;
    }
    for (int i = 0; i < g->n_toks; i++)
        nb_sampler_accept(smp, g->toks[i]);
    int n_ctx = nb_ctx_n_ctx(ctx);
    st = nb_ctx_decode(ctx, g->toks + r->n_cached, g->n_toks - r->n_cached, 0);
    if (st == NB_ERR_CANCELLED) {
        reason = "cancelled";
        goto out;
    }
    if (st) {
        post_error(g, st == NB_ERR_CONTEXT_FULL ? "context_full" : "internal",
                   nb_ctx_errmsg(ctx));
        goto out;
    }
    r->t_prompt = now_ms();
    if (g->n_predict == 0) {
        reason = "length";
        goto out;
    }
    char piece[3 * NB_MAX_PIECE + 4]; /* nb_detok_push's bound */
    for (;;) {
        if (atomic_load(&g->cancel)) {
            reason = "cancelled";
            break;
        }
        nb_token t = nb_sampler_sample(smp, nb_ctx_logits(ctx, -1));
        nb_sampler_accept(smp, t);
        if (!g->ignore_eos && nb_model_is_eog(m, t)) {
            reason = "eos";
            break;
        }
        r->n_generated++;
        if (!r->t_first)
            r->t_first = now_ms();
        size_t n = nb_detok_push(&r->dt, m, t, piece, sizeof piece);
        if (show(g, r, piece, n)) {
            reason = "stop";
            break;
        }
        if ((g->n_predict >= 0 && r->n_generated >= g->n_predict) ||
            nb_ctx_n_past(ctx) >= n_ctx) {
            reason = "length";
            break;
        }
        hist[nb_ctx_n_past(ctx)] = t;
        st = nb_ctx_decode(ctx, &t, 1, 0);
        if (st == NB_ERR_CANCELLED) {
            reason = "cancelled";
            break;
        }
        if (st) {
            post_error(g, "internal", nb_ctx_errmsg(ctx));
            break;
        }
    }
out:
    nb_sampler_free(smp);
    return reason;
}

static void *worker(void *arg)
{
    gen *g = arg;
    mstate *ms = g->ms;
    run r;
    memset(&r, 0, sizeof r);
    r.t0 = now_ms();
    nb_detok_init(&r.dt, 0);
    pthread_mutex_lock(&ms->mu);
    nb_ctx *ctx = ms->spare;
    nb_token *hist = ms->spare_toks;
    ms->spare = NULL;
    ms->spare_toks = NULL;
    pthread_mutex_unlock(&ms->mu);
    if (!ctx) {
        char err[512];
        nb_ctx_params cp = nb_ctx_default_params();
        cp.n_ctx = ms->n_ctx;
        cp.n_threads = ms->threads;
        nb_status st = nb_ctx_new(ms->m, &cp, &ctx, err, sizeof err);
        if (st) {
            post_error(g, st == NB_ERR_NOMEM ? "nomem" : "internal", err);
            return NULL;
        }
        if (!(hist = malloc((size_t)nb_ctx_n_ctx(ctx) * sizeof *hist))) {
            nb_ctx_free(ctx);
            post_error(g, "nomem", "out of memory for the context");
            return NULL;
        }
    }
    /* reuse the cached prefix; the last prompt token is evaluated again
     * for its logits */
    int common = common_prefix(hist, nb_ctx_n_past(ctx), g->toks, g->n_toks);
    if (common == g->n_toks)
        common--;
    nb_ctx_truncate(ctx, common);
    memcpy(hist + common, g->toks + common, (size_t)(g->n_toks - common) * sizeof *hist);
    r.n_cached = common;
    nb_ctx_set_abort(ctx, aborted, g);
    const char *reason = generate(g, &r, ctx, hist);
    nb_ctx_set_abort(ctx, NULL, NULL);
    /* hand the context on before the final event, so that a generation
     * started after it finds the cache */
    pthread_mutex_lock(&ms->mu);
    if (!ms->spare) {
        ms->spare = ctx;
        ms->spare_toks = hist;
        ctx = NULL;
        hist = NULL;
    }
    pthread_mutex_unlock(&ms->mu);
    nb_ctx_free(ctx);
    free(hist);
    if (reason)
        finish(g, &r, reason);
    nb_stopper_free(r.stopper);
    return NULL;
}

/* ------------------------------------------------------------------ generations (Lua side) */

static gen *check_gen(lua_State *L)
{
    gen_ud *u = luaL_checkudata(L, 1, NBL_GEN_MT);
    return u->g;
}

/* Hand out the queued events as a Lua array. */
static void take(lua_State *L, gen *g)
{
    pthread_mutex_lock(&g->mu);
    json_t *taken = json_array();
    if (taken && json_array_extend(taken, g->queue) == 0)
        json_array_clear(g->queue);
    char buf[64];
    while (read(g->rfd, buf, sizeof buf) > 0)
        ;
    int finished = g->finished && json_array_size(g->queue) == 0;
    pthread_mutex_unlock(&g->mu);
    size_t n = json_array_size(taken);
    lua_createtable(L, (int)n, 0);
    for (size_t i = 0; i < n; i++) {
        json_t *ev = json_array_get(taken, i);
        nbl_push_json(L, ev);
        lua_rawseti(L, -2, (int)(i + 1));
        nbl_stream_note(&g->s, ev, json_is_true(json_object_get(ev, "done")));
    }
    json_decref(taken);
    if (finished && !g->s.done) { /* the final event could not be made */
        json_t *ev = json_pack("{s:b, s:s, s:s, s:s}", "done", 1, "stop_reason", "error", "error",
                               "nomem", "out of memory");
        if (ev) {
            nbl_push_json(L, ev);
            lua_rawseti(L, -2, (int)(n + 1));
            nbl_stream_note(&g->s, ev, 1);
            json_decref(ev);
        }
        g->s.done = 1;
    }
}

static int gen_fd(lua_State *L)
{
    gen *g = check_gen(L);
    if (!g)
        return nbl_closed(L);
    lua_pushinteger(L, g->rfd);
    return 1;
}

static int gen_read(lua_State *L)
{
    gen *g = check_gen(L);
    if (!g)
        return nbl_closed(L);
    take(L, g);
    return 1;
}

static int gen_done(lua_State *L)
{
    gen *g = check_gen(L);
    lua_pushboolean(L, !g || g->s.done);
    return 1;
}

static int gen_cancel(lua_State *L)
{
    gen *g = check_gen(L);
    if (!g)
        return nbl_closed(L);
    atomic_store(&g->cancel, 1);
    lua_pushboolean(L, 1);
    return 1;
}

/* Wait until the worker has made its final event: 1, or 0 on timeout. */
static int wait_finished(gen *g, long long timeout_ms)
{
    struct timespec dl;
    clock_gettime(CLOCK_MONOTONIC, &dl);
    if (timeout_ms >= 0) {
        long long ns = dl.tv_nsec + (timeout_ms % 1000) * 1000000LL;
        dl.tv_sec += (time_t)(timeout_ms / 1000 + ns / 1000000000LL);
        dl.tv_nsec = (long)(ns % 1000000000LL);
    }
    pthread_mutex_lock(&g->mu);
    while (!g->finished) {
        if (timeout_ms < 0)
            pthread_cond_wait(&g->cv, &g->mu);
        else if (pthread_cond_timedwait(&g->cv, &g->mu, &dl) == ETIMEDOUT)
            break;
    }
    int done = g->finished;
    pthread_mutex_unlock(&g->mu);
    return done;
}

static int gen_wait(lua_State *L)
{
    gen *g = check_gen(L);
    long long timeout = -1;
    if (!lua_isnoneornil(L, 2) && !nbl_to_int(L, 2, &timeout))
        return luaL_argerror(L, 2, "a timeout in milliseconds (an integer) expected");
    if (!g)
        return nbl_closed(L);
    if (!wait_finished(g, timeout))
        return nbl_fail(L, "timeout", "timed out after %lld ms", timeout);
    take(L, g);
    lua_pop(L, 1);
    nbl_stream_push_result(L, &g->s);
    return 2;
}

static void gen_join(gen *g)
{
    if (g->joined)
        return;
    atomic_store(&g->cancel, 1); /* a no-op when it has finished */
    pthread_join(g->thread, NULL);
    g->joined = 1;
}

static void gen_release(gen_ud *u)
{
    gen *g = u->g;
    if (!g)
        return;
    u->g = NULL;
    gen_join(g);
    mstate *ms = g->ms;
    if (g->prev)
        g->prev->next = g->next;
    else if (ms->gens == g)
        ms->gens = g->next;
    if (g->next)
        g->next->prev = g->prev;
    close(g->rfd);
    close(g->wfd);
    json_decref(g->queue);
    nbl_stream_free(&g->s);
    free(g->toks);
    for (int i = 0; i < g->n_stops; i++)
        free(g->stops[i]);
    pthread_cond_destroy(&g->cv);
    pthread_mutex_destroy(&g->mu);
    free(g);
    ms_unref(ms);
}

static int gen_close(lua_State *L)
{
    gen_release(luaL_checkudata(L, 1, NBL_GEN_MT));
    lua_pushboolean(L, 1);
    return 1;
}

static int gen_gc(lua_State *L)
{
    gen_release(luaL_checkudata(L, 1, NBL_GEN_MT));
    return 0;
}

static int gen_tostring(lua_State *L)
{
    gen *g = check_gen(L);
    if (!g) {
        lua_pushstring(L, "nibble.generation (closed)");
        return 1;
    }
    wait_finished(g, -1);
    take(L, g);
    lua_pushlstring(L, g->s.text ? g->s.text : "", g->s.len);
    return 1;
}

/* ------------------------------------------------------------------ models */

static model_ud *check_model(lua_State *L)
{
    return luaL_checkudata(L, 1, NBL_MODEL_MT);
}

static int space_prefix(const nb_model *m)
{
    nb_model_info info;
    nb_model_get_info(m, &info);
    if (!info.tokenizer || strcmp(info.tokenizer, "llama"))
        return 0;
    const nb_gguf *g = nb_model_gguf(m);
    int64_t i = nb_gguf_find(g, "tokenizer.ggml.add_space_prefix");
    if (i < 0 || nb_gguf_kv_type(g, i) != NB_GGUF_BOOL)
        return 1; /* SentencePiece's default */
    char v[16];
    nb_gguf_format_value(g, i, v, sizeof v, 1);
    return strcmp(v, "false") != 0;
}

static int l_open(lua_State *L)
{
    const char *path = luaL_checkstring(L, 1);
    if (!lua_isnoneornil(L, 2))
        luaL_checktype(L, 2, LUA_TTABLE);
    long long threads = 0, n_ctx = 0;
    int vocab_only = 0;
    nbl_opt_int(L, 2, 2, "threads", &threads);
    nbl_opt_int(L, 2, 2, "n_ctx", &n_ctx);
    nbl_opt_bool(L, 2, 2, "vocab_only", &vocab_only);
    if (threads < 0 || threads > 256)
        return nbl_fail(L, "bad_request", "threads must be 0 (the physical cores) to 256, not %lld",
                        threads);
    if (n_ctx < 0 || n_ctx > (1 << 22))
        return nbl_fail(L, "bad_request", "n_ctx must be 0 (the model's) to %d, not %lld", 1 << 22,
                        n_ctx);
    model_ud *u = lua_newuserdata(L, sizeof *u);
    u->ms = NULL;
    luaL_setmetatable(L, NBL_MODEL_MT);
    nb_model_params mp = nb_model_default_params();
    mp.vocab_only = vocab_only;
    nb_model *m;
    char err[1024];
    nb_status st = nb_model_open(path, &mp, &m, err, sizeof err);
    if (st) {
        struct stat sb;
        const char *code = nbl_status_code(st);
        if (st == NB_ERR_IO && stat(path, &sb) != 0 && (errno == ENOENT || errno == ENOTDIR))
            code = "not_found";
        return nbl_fail(L, code, "%s: %s", path, err);
    }
    mstate *ms = calloc(1, sizeof *ms);
    if (!ms) {
        nb_model_close(m);
        return nbl_fail(L, "nomem", "out of memory");
    }
    pthread_mutex_init(&ms->mu, NULL);
    ms->refs = 1;
    ms->m = m;
    ms->threads = (int)threads;
    int train = nb_model_n_ctx_train(m);
    ms->n_ctx = n_ctx ? (int)n_ctx : train > 0 && train < 4096 ? train : 4096;
    ms->space_prefix = space_prefix(m);
    ms->vocab_only = vocab_only;
    u->ms = ms;
    return 1;
}

static int m_close(lua_State *L)
{
    model_ud *u = check_model(L);
    mstate *ms = u->ms;
    if (ms) {
        for (gen *g = ms->gens; g; g = g->next)
            atomic_store(&g->cancel, 1);
        for (gen *g = ms->gens; g; g = g->next)
            gen_join(g);
        pthread_mutex_lock(&ms->mu);
        ms_free_spare(ms);
        nb_model_close(ms->m);
        ms->m = NULL;
        pthread_mutex_unlock(&ms->mu);
        u->ms = NULL;
        ms_unref(ms);
    }
    lua_pushboolean(L, 1);
    return 1;
}

static int m_gc(lua_State *L)
{
    model_ud *u = check_model(L);
    if (u->ms) /* running generations keep it */
        ms_unref(u->ms);
    u->ms = NULL;
    return 0;
}

static int m_tostring(lua_State *L)
{
    model_ud *u = check_model(L);
    if (!u->ms || !u->ms->m) {
        lua_pushstring(L, "nibble.model (closed)");
        return 1;
    }
    nb_model_info info;
    nb_model_get_info(u->ms->m, &info);
    lua_pushfstring(L, "nibble.model (%s)", info.path);
    return 1;
}

/* Flags of a tokenize options table: bos (or add_bos) and special. */
static int tok_flags(lua_State *L, int idx, int arg, int bos, int special)
{
    nbl_opt_bool(L, idx, arg, "add_bos", &bos);
    nbl_opt_bool(L, idx, arg, "bos", &bos);
    nbl_opt_bool(L, idx, arg, "special", &special);
    return (bos ? NB_TOK_ADD_SPECIAL : 0) | (special ? NB_TOK_PARSE_SPECIAL : 0);
}

/* Tokenize into a userdata buffer pushed on the stack (collected with it). */
static nb_token *tokenize(lua_State *L, const nb_model *m, const char *s, size_t n, int flags,
                          int64_t *count)
{
    int64_t need = nb_tokenize(m, s, n, NULL, 0, flags);
    if (need < 0 || need > (1 << 28))
        return NULL;
    nb_token *t = lua_newuserdata(L, (size_t)(need ? need : 1) * sizeof *t);
    *count = nb_tokenize(m, s, n, t, need, flags);
    return *count == need ? t : NULL;
}

static int m_tokenize(lua_State *L)
{
    model_ud *u = check_model(L);
    size_t n;
    const char *s = luaL_checklstring(L, 2, &n);
    if (!lua_isnoneornil(L, 3))
        luaL_checktype(L, 3, LUA_TTABLE);
    int flags = tok_flags(L, 3, 3, 1, 0);
    if (!u->ms)
        return nbl_closed(L);
    int64_t count;
    nb_token *t = tokenize(L, u->ms->m, s, n, flags, &count);
    if (!t)
        return nbl_fail(L, "nomem", "out of memory tokenizing %zu bytes", n);
    lua_createtable(L, (int)count, 0);
    for (int64_t i = 0; i < count; i++) {
        lua_pushinteger(L, t[i]);
        lua_rawseti(L, -2, (int)(i + 1));
    }
    return 1;
}

/* An array of token ids at idx into a userdata buffer pushed on the stack.
 * Non-integers raise; an id outside the vocabulary sets *bad (its index,
 * 1-based) and *bad_id. */
static nb_token *check_ids(lua_State *L, int idx, int arg, int n_vocab, size_t *n, size_t *bad,
                           long long *bad_id)
{
    luaL_checktype(L, idx, LUA_TTABLE);
    *n = nbl_rawlen(L, idx);
    *bad = 0;
    if (*n > (1u << 28))
        luaL_argerror(L, arg, "too many token ids");
    nb_token *t = lua_newuserdata(L, (*n ? *n : 1) * sizeof *t);
    for (size_t i = 0; i < *n; i++) {
        long long v;
        lua_rawgeti(L, idx, (int)(i + 1));
        if (!nbl_to_int(L, -1, &v))
            luaL_argerror(L, arg, lua_pushfstring(L, "token ids must be integers (item %d is %s)",
                                                  (int)(i + 1), luaL_typename(L, -1)));
        lua_pop(L, 1);
        if ((v < 0 || v >= n_vocab) && !*bad) {
            *bad = i + 1;
            *bad_id = v;
        }
        t[i] = (nb_token)(v < 0 || v >= n_vocab ? 0 : v);
    }
    return t;
}

static int m_detokenize(lua_State *L)
{
    model_ud *u = check_model(L);
    luaL_checktype(L, 2, LUA_TTABLE);
    if (!lua_isnoneornil(L, 3))
        luaL_checktype(L, 3, LUA_TTABLE);
    int special = 0, keep_space = 0;
    nbl_opt_bool(L, 3, 3, "special", &special);
    nbl_opt_bool(L, 3, 3, "keep_space", &keep_space);
    if (!u->ms)
        return nbl_closed(L);
    const nb_model *m = u->ms->m;
    size_t n, bad;
    long long bad_id;
    nb_token *t = check_ids(L, 2, 2, nb_model_n_vocab(m), &n, &bad, &bad_id);
    if (bad)
        return nbl_fail(L, "bad_request", "token %lld (item %zu) is not in the %d-token vocabulary",
                        bad_id, bad, nb_model_n_vocab(m));
    int strip = u->ms->space_prefix && !keep_space;
    nb_detok dt;
    nb_detok_init(&dt, special ? NB_PIECE_SPECIAL : 0);
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    char piece[3 * NB_MAX_PIECE + 4];
    for (size_t i = 0; i <= n; i++) {
        size_t pn = i < n ? nb_detok_push(&dt, m, t[i], piece, sizeof piece)
                          : nb_detok_flush(&dt, piece, sizeof piece);
        const char *p = piece;
        if (pn && strip) { /* the space the tokenizer put before the text */
            if (*p == ' ')
                p++, pn--;
            strip = 0;
        }
        luaL_addlstring(&b, p, pn);
    }
    luaL_pushresult(&b);
    return 1;
}

static int m_info(lua_State *L)
{
    model_ud *u = check_model(L);
    if (!u->ms)
        return nbl_closed(L);
    const nb_model *m = u->ms->m;
    nb_model_info i;
    nb_model_get_info(m, &i);
    lua_createtable(L, 0, 32);
#define S(k, v) (lua_pushstring(L, (v) ? (v) : ""), lua_setfield(L, -2, k))
#define I(k, v) (lua_pushinteger(L, (lua_Integer)(v)), lua_setfield(L, -2, k))
#define N(k, v) (lua_pushnumber(L, (lua_Number)(v)), lua_setfield(L, -2, k))
#define B(k, v) (lua_pushboolean(L, (v) != 0), lua_setfield(L, -2, k))
    S("path", i.path);
    S("name", i.name);
    S("architecture", i.arch);
    S("tokenizer", i.tokenizer);
    S("file_type", i.file_type);
    B("vocab_only", i.vocab_only);
    I("n_vocab", i.n_vocab);
    I("n_ctx_train", i.n_ctx_train);
    I("n_ctx", u->ms->n_ctx);
    I("n_embd", i.n_embd);
    I("n_layer", i.n_layer);
    I("n_head", i.n_head);
    I("n_head_kv", i.n_head_kv);
    I("head_dim", i.head_dim);
    I("n_ff", i.n_ff);
    I("n_rot", i.n_rot);
    N("rope_freq_base", i.rope_freq_base);
    N("rms_eps", i.rms_eps);
    I("bos", i.bos);
    I("eos", i.eos);
    B("add_bos", i.add_bos);
    B("add_eos", i.add_eos);
    I("file_size", i.file_size);
    I("n_params", i.n_params);
    I("weight_bytes", i.weight_bytes);
    I("kv_bytes_per_token", i.kv_bytes_per_token);
    B("has_fim", nb_model_has_fim(m));
    S("chat_template", nb_chat_template_name(m));
    S("kernels", nb_kernels_level());
#undef S
#undef I
#undef N
#undef B
    lua_newtable(L);
    for (int t = 0; t < NB_TYPE_COUNT; t++)
        if (i.type_tensors[t] && nb_type_name(t)) {
            lua_pushinteger(L, i.type_tensors[t]);
            lua_setfield(L, -2, nb_type_name(t));
        }
    lua_setfield(L, -2, "types");
    return 1;
}

/* ------------------------------------------------------------------ generate */

typedef struct gen_opts {
    nb_sampler_params sp;
    int has_seed;
    long long n_predict;
    int ignore_eos, add_bos, special;
    const char *stops[NB_STOP_MAX];
    size_t stop_len[NB_STOP_MAX];
    int n_stops;
} gen_opts;

static uint64_t random_seed(void)
{
    static atomic_uint_fast64_t counter;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return ((uint64_t)ts.tv_nsec * 6364136223846793005ull ^ (uint64_t)ts.tv_sec ^
            ((uint64_t)getpid() << 40) ^ atomic_fetch_add(&counter, 0x9e3779b97f4a7c15ull)) &
           INT64_MAX;
}

/* Read generate's options (as complete's in doc/protocol.md).  Wrong types
 * raise; a value out of range returns -1 with a message. */
static int read_gen_opts(lua_State *L, int idx, gen_opts *o, char *err, size_t errlen)
{
    const int arg = 3;
    double d;
    long long v;
    memset(o, 0, sizeof *o);
    o->sp = nb_sampler_default_params();
    o->n_predict = 256;
    o->add_bos = o->special = 1;
    if (lua_isnoneornil(L, idx))
        goto check;
    luaL_checktype(L, idx, LUA_TTABLE);
    nbl_opt_int(L, idx, arg, "n_predict", &o->n_predict);
    if (nbl_opt_num(L, idx, arg, "temperature", &d))
        o->sp.temp = (float)d;
    if (nbl_opt_int(L, idx, arg, "top_k", &v)) {
        if (v < 0 || v > (1 << 30)) {
            snprintf(err, errlen, "top_k must be 0 to %d, not %lld", 1 << 30, v);
            return -1;
        }
        o->sp.top_k = (int)v;
    }
    if (nbl_opt_num(L, idx, arg, "top_p", &d))
        o->sp.top_p = (float)d;
    if (nbl_opt_num(L, idx, arg, "min_p", &d))
        o->sp.min_p = (float)d;
    if (nbl_opt_num(L, idx, arg, "repeat_penalty", &d))
        o->sp.repeat_penalty = (float)d;
    if (nbl_opt_int(L, idx, arg, "repeat_last_n", &v)) {
        if (v < 0 || v > 65536) {
            snprintf(err, errlen, "repeat_last_n must be 0 to 65536, not %lld", v);
            return -1;
        }
        o->sp.repeat_last_n = (int)v;
    }
    if (nbl_opt_num(L, idx, arg, "frequency_penalty", &d))
        o->sp.freq_penalty = (float)d;
    if (nbl_opt_num(L, idx, arg, "presence_penalty", &d))
        o->sp.presence_penalty = (float)d;
    if (nbl_opt_int(L, idx, arg, "seed", &v)) {
        if (v < 0) {
            snprintf(err, errlen, "seed must be 0 to 2^63-1, not %lld", v);
            return -1;
        }
        o->sp.seed = (uint64_t)v;
        o->has_seed = 1;
    }
    nbl_opt_bool(L, idx, arg, "ignore_eos", &o->ignore_eos);
    nbl_opt_bool(L, idx, arg, "add_bos", &o->add_bos);
    nbl_opt_bool(L, idx, arg, "special", &o->special);
    int t = nbl_opt(L, idx, "stop");
    if (t == LUA_TSTRING) { /* one string is a list of one, as in nibd */
        o->stops[0] = lua_tolstring(L, -1, &o->stop_len[0]);
        o->n_stops = 1;
    } else if (t == LUA_TTABLE) {
        size_t n = nbl_rawlen(L, -1);
        if (n > NB_STOP_MAX) {
            lua_pop(L, 1);
            snprintf(err, errlen, "stop has %zu strings (at most %d)", n, NB_STOP_MAX);
            return -1;
        }
        for (size_t i = 0; i < n; i++) {
            lua_rawgeti(L, -1, (int)(i + 1));
            if (lua_type(L, -1) != LUA_TSTRING)
                luaL_argerror(L, arg, "stop must be a string or an array of strings");
            o->stops[i] = lua_tolstring(L, -1, &o->stop_len[i]); /* the table keeps it */
            lua_pop(L, 1);
        }
        o->n_stops = (int)n;
    } else if (t != LUA_TNIL) {
        luaL_argerror(L, arg, "stop must be a string or an array of strings");
    }
    lua_pop(L, 1);
    for (int i = 0; i < o->n_stops; i++) {
        size_t bad;
        if (o->stop_len[i] == 0 || o->stop_len[i] > NB_STOP_MAX_LEN ||
            memchr(o->stops[i], 0, o->stop_len[i])) {
            snprintf(err, errlen, "stop[%d] must be a string of 1 to %d bytes without NUL", i + 1,
                     NB_STOP_MAX_LEN);
            return -1;
        }
        if (!nbl_utf8_valid(o->stops[i], o->stop_len[i], &bad)) {
            snprintf(err, errlen, "stop[%d] is not valid UTF-8 (byte %zu)", i + 1, bad);
            return -1;
        }
    }
check:
    if (o->n_predict < -1 || o->n_predict > MAX_PREDICT) {
        snprintf(err, errlen, "n_predict must be -1 to %d, not %lld", MAX_PREDICT, o->n_predict);
        return -1;
    }
    if (nb_sampler_params_check(&o->sp, err, errlen))
        return -1;
    if (!o->has_seed)
        o->sp.seed = random_seed();
    return 0;
}

static int start_worker(gen *g)
{
    /* the worker and its context's threads take no signals: the host
     * program's handlers stay on its own threads */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    int rc = pthread_create(&g->thread, NULL, worker, g);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    return rc;
}

static int make_pipe(int fds[2])
{
    if (pipe(fds) != 0)
        return -1;
    for (int i = 0; i < 2; i++) {
        fcntl(fds[i], F_SETFD, FD_CLOEXEC);
        fcntl(fds[i], F_SETFL, fcntl(fds[i], F_GETFL) | O_NONBLOCK);
    }
    return 0;
}

static int m_generate(lua_State *L)
{
    model_ud *u = check_model(L);
    int pt = lua_type(L, 2);
    if (pt != LUA_TSTRING && pt != LUA_TTABLE)
        return luaL_argerror(L, 2, "a prompt (a string, or an array of token ids) expected");
    gen_opts o;
    char err[512];
    int bad_opts = read_gen_opts(L, 3, &o, err, sizeof err);
    lua_settop(L, 3);
    mstate *ms = u->ms;
    if (!ms)
        return nbl_closed(L);
    if (bad_opts)
        return nbl_fail(L, "bad_request", "%s", err);
    if (ms->vocab_only)
        return nbl_fail(L, "unsupported",
                        "the model was opened with vocab_only: it cannot generate");
    const nb_model *m = ms->m;
    int64_t n;
    nb_token *t; /* in a userdata on the stack */
    if (pt == LUA_TSTRING) {
        size_t len;
        const char *s = lua_tolstring(L, 2, &len);
        int flags = (o.add_bos ? NB_TOK_ADD_SPECIAL : 0) | (o.special ? NB_TOK_PARSE_SPECIAL : 0);
        if (!(t = tokenize(L, m, s, len, flags, &n)))
            return nbl_fail(L, "nomem", "out of memory tokenizing %zu bytes", len);
    } else {
        size_t cnt, bad;
        long long bad_id;
        t = check_ids(L, 2, 2, nb_model_n_vocab(m), &cnt, &bad, &bad_id);
        if (bad)
            return nbl_fail(L, "bad_request",
                            "token %lld (item %zu) is not in the %d-token vocabulary", bad_id, bad,
                            nb_model_n_vocab(m));
        n = (int64_t)cnt;
    }
    if (n == 0)
        return nbl_fail(L, "bad_request",
                        "the prompt is empty and the model adds no BOS token: nothing to continue");
    if (n > ms->n_ctx)
        return nbl_fail(L, "context_full",
                        "the prompt is %lld tokens, longer than the %d-token context",
                        (long long)n, ms->n_ctx);
    gen_ud *gu = lua_newuserdata(L, sizeof *gu);
    gu->g = NULL;
    luaL_setmetatable(L, NBL_GEN_MT);

    gen *g = calloc(1, sizeof *g);
    if (!g)
        return nbl_fail(L, "nomem", "out of memory");
    g->rfd = g->wfd = -1;
    int fds[2];
    if (!(g->toks = malloc((size_t)n * sizeof *g->toks)) || !(g->queue = json_array()))
        goto nomem;
    memcpy(g->toks, t, (size_t)n * sizeof *t);
    g->n_toks = (int)n;
    for (int i = 0; i < o.n_stops; i++) {
        if (!(g->stops[i] = malloc(o.stop_len[i] + 1)))
            goto nomem;
        memcpy(g->stops[i], o.stops[i], o.stop_len[i]);
        g->stops[i][o.stop_len[i]] = 0;
        g->n_stops = i + 1;
    }
    if (make_pipe(fds) != 0) {
        snprintf(err, sizeof err, "cannot make a pipe: %s", strerror(errno));
        goto fail;
    }
    g->rfd = fds[0];
    g->wfd = fds[1];
    g->sp = o.sp;
    g->n_predict = (int)o.n_predict;
    g->ignore_eos = o.ignore_eos;
    g->ms = ms;
    atomic_init(&g->cancel, 0);
    pthread_mutex_init(&g->mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&g->cv, &ca);
    pthread_condattr_destroy(&ca);
    pthread_mutex_lock(&ms->mu);
    ms->refs++;
    pthread_mutex_unlock(&ms->mu);
    int rc = start_worker(g);
    if (rc) {
        g->joined = 1; /* nothing to join */
        gu->g = g;
        g->next = NULL;
        gen_release(gu);
        return nbl_fail(L, "nomem", "cannot start a thread: %s", strerror(rc));
    }
    g->next = ms->gens;
    if (ms->gens)
        ms->gens->prev = g;
    ms->gens = g;
    gu->g = g;
    return 1;
nomem:
    snprintf(err, sizeof err, "out of memory");
fail:
    if (g->rfd >= 0)
        close(g->rfd), close(g->wfd);
    json_decref(g->queue);
    free(g->toks);
    for (int i = 0; i < g->n_stops; i++)
        free(g->stops[i]);
    free(g);
    return nbl_fail(L, "nomem", "%s", err);
}

void nbl_open_engine(lua_State *L)
{
    static const luaL_Reg model_methods[] = {
        {"tokenize", m_tokenize}, {"detokenize", m_detokenize}, {"info", m_info},
        {"generate", m_generate}, {"close", m_close},           {NULL, NULL}};
    static const luaL_Reg gen_methods[] = {
        {"fd", gen_fd},       {"read", gen_read}, {"done", gen_done}, {"cancel", gen_cancel},
        {"close", gen_close}, {"wait", gen_wait}, {NULL, NULL}};
    nbl_new_class(L, NBL_MODEL_MT, model_methods, m_gc, m_tostring, m_close);
    nbl_new_class(L, NBL_GEN_MT, gen_methods, gen_gc, gen_tostring, gen_close);
    lua_pushcfunction(L, l_open);
    lua_setfield(L, -2, "open");
}
