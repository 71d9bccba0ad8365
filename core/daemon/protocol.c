/*
 * protocol.c - parsing nibd requests and building its events.
 *
 * Every key the protocol knows is checked for its type and range here, so
 * that the scheduler only ever sees valid requests; messages name the key
 * and say what was expected.  Unknown keys are ignored (clients may add
 * their own), per doc/protocol.md.
 */
#include "protocol.h"

#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct parse {
    json_t *obj;
    char *msg;
    size_t msglen;
    int failed;
} parse;

static void fail(parse *p, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void fail(parse *p, const char *fmt, ...)
{
    if (p->failed)
        return;
    p->failed = 1;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(p->msg, p->msglen, fmt, ap);
    va_end(ap);
}

static const char *type_name(const json_t *v)
{
    switch (json_typeof(v)) {
    case JSON_OBJECT: return "an object";
    case JSON_ARRAY: return "an array";
    case JSON_STRING: return "a string";
    case JSON_INTEGER: return "an integer";
    case JSON_REAL: return "a number";
    case JSON_TRUE:
    case JSON_FALSE: return "a boolean";
    default: return "null";
    }
}

/* A string key: returns 1 when present (and fills *s, *len). */
static int get_str(parse *p, const char *key, const char **s, size_t *len, size_t max)
{
    json_t *v = json_object_get(p->obj, key);
    if (!v)
        return 0;
    if (!json_is_string(v)) {
        fail(p, "%s must be a string, not %s", key, type_name(v));
        return 0;
    }
    if (max && json_string_length(v) > max) {
        fail(p, "%s is %zu bytes long (at most %zu)", key, json_string_length(v), max);
        return 0;
    }
    *s = json_string_value(v);
    if (len)
        *len = json_string_length(v);
    return 1;
}

static void get_bool(parse *p, const char *key, int *out)
{
    json_t *v = json_object_get(p->obj, key);
    if (!v)
        return;
    if (!json_is_boolean(v))
        fail(p, "%s must be true or false, not %s", key, type_name(v));
    else
        *out = json_is_true(v);
}

static void get_int(parse *p, const char *key, long long lo, long long hi, long long *out)
{
    json_t *v = json_object_get(p->obj, key);
    if (!v)
        return;
    if (!json_is_integer(v)) {
        fail(p, "%s must be an integer, not %s", key, type_name(v));
        return;
    }
    json_int_t x = json_integer_value(v);
    if (x < lo || x > hi) {
        fail(p, "%s must be %lld to %lld, not %lld", key, lo, hi, (long long)x);
        return;
    }
    *out = x;
}

static void get_num(parse *p, const char *key, float *out)
{
    json_t *v = json_object_get(p->obj, key);
    if (!v)
        return;
    if (!json_is_number(v)) {
        fail(p, "%s must be a number, not %s", key, type_name(v));
        return;
    }
    double d = json_number_value(v);
    if (!isfinite(d) || fabs(d) > 1e30) {
        fail(p, "%s is out of range", key);
        return;
    }
    *out = (float)d;
}

static int valid_id(const json_t *v)
{
    return json_is_integer(v) || (json_is_string(v) && json_string_length(v) <= NBD_MAX_ID);
}

static void parse_sampling(parse *p, nbd_request *r)
{
    long long v;
    r->sp = nb_sampler_default_params();
    r->n_predict = 256;
    get_num(p, "temperature", &r->sp.temp);
    v = r->sp.top_k;
    get_int(p, "top_k", 0, 1 << 30, &v);
    r->sp.top_k = (int)v;
    get_num(p, "top_p", &r->sp.top_p);
    get_num(p, "min_p", &r->sp.min_p);
    get_num(p, "repeat_penalty", &r->sp.repeat_penalty);
    v = r->sp.repeat_last_n;
    get_int(p, "repeat_last_n", 0, 65536, &v);
    r->sp.repeat_last_n = (int)v;
    get_num(p, "frequency_penalty", &r->sp.freq_penalty);
    get_num(p, "presence_penalty", &r->sp.presence_penalty);
    v = -2;
    get_int(p, "seed", 0, INT64_MAX, &v);
    if (v >= 0) {
        r->sp.seed = (uint64_t)v;
        r->has_seed = 1;
    }
    v = r->n_predict;
    get_int(p, "n_predict", -1, NBD_MAX_PREDICT, &v);
    r->n_predict = (int)v;
    get_bool(p, "stream", &r->stream);
    get_bool(p, "ignore_eos", &r->ignore_eos);
    get_str(p, "session", &r->session, NULL, NBD_MAX_ID);
    json_t *stop = json_object_get(p->obj, "stop");
    if (stop) {
        if (json_is_string(stop)) { /* a single string is a list of one */
            stop = json_pack("[O]", stop);
            json_object_set_new(p->obj, "stop", stop);
        }
        if (!json_is_array(stop)) {
            fail(p, "stop must be an array of strings, not %s", type_name(stop));
            return;
        }
        if (json_array_size(stop) > NB_STOP_MAX) {
            fail(p, "stop has %zu strings (at most %d)", json_array_size(stop), NB_STOP_MAX);
            return;
        }
        size_t i;
        json_t *s;
        json_array_foreach(stop, i, s)
        {
            if (!json_is_string(s) || json_string_length(s) == 0 ||
                json_string_length(s) > NB_STOP_MAX_LEN ||
                strlen(json_string_value(s)) != json_string_length(s)) {
                fail(p, "stop[%zu] must be a string of 1 to %d bytes", i, NB_STOP_MAX_LEN);
                return;
            }
            r->stops[r->n_stops++] = json_string_value(s);
        }
    }
    json_t *lora = json_object_get(p->obj, "lora");
    if (lora) {
        if (!json_is_array(lora)) {
            fail(p, "lora must be an array of {\"name\", \"scale\"} objects, not %s",
                 type_name(lora));
            return;
        }
        if (json_array_size(lora) > NBD_MAX_LORA) {
            fail(p, "lora names %zu adapters (at most %d)", json_array_size(lora), NBD_MAX_LORA);
            return;
        }
        size_t i;
        json_t *a;
        json_array_foreach(lora, i, a)
        {
            json_t *name = json_object_get(a, "name"), *scale = json_object_get(a, "scale");
            if (!json_is_object(a) || !json_is_string(name) || json_string_length(name) == 0 ||
                json_string_length(name) > NBD_MAX_LORA_NAME) {
                fail(p, "lora[%zu] must be an object with a \"name\" of 1 to %d bytes", i,
                     NBD_MAX_LORA_NAME);
                return;
            }
            double d = 1.0;
            if (scale) {
                if (!json_is_number(scale)) {
                    fail(p, "lora[%zu].scale must be a number, not %s", i, type_name(scale));
                    return;
                }
                d = json_number_value(scale);
                if (!(fabs(d) <= NBD_MAX_LORA_SCALE)) {
                    fail(p, "lora[%zu].scale must be -%g to %g", i, (double)NBD_MAX_LORA_SCALE,
                         (double)NBD_MAX_LORA_SCALE);
                    return;
                }
            }
            for (int j = 0; j < r->n_lora; j++)
                if (!strcmp(r->lora_names[j], json_string_value(name))) {
                    fail(p, "lora names adapter '%s' twice", r->lora_names[j]);
                    return;
                }
            r->lora_names[r->n_lora] = json_string_value(name);
            r->lora_scales[r->n_lora++] = (float)d;
        }
    }
    if (!p->failed) {
        char err[256];
        if (nb_sampler_params_check(&r->sp, err, sizeof err))
            fail(p, "%s", err);
    }
}

static void parse_complete(parse *p, nbd_request *r)
{
    int has_prompt = get_str(p, "prompt", &r->prompt, &r->prompt_len, 0);
    json_t *toks = json_object_get(p->obj, "tokens");
    if (toks) {
        if (!json_is_array(toks)) {
            fail(p, "tokens must be an array of integers, not %s", type_name(toks));
            return;
        }
        size_t n = json_array_size(toks);
        if (n > (1u << 24)) {
            fail(p, "tokens has %zu entries (at most %u)", n, 1u << 24);
            return;
        }
        r->tokens = malloc((n ? n : 1) * sizeof *r->tokens);
        if (!r->tokens) {
            fail(p, "out of memory");
            return;
        }
        size_t i;
        json_t *t;
        json_array_foreach(toks, i, t)
        {
            if (!json_is_integer(t) || json_integer_value(t) < 0 ||
                json_integer_value(t) > INT32_MAX) {
                fail(p, "tokens[%zu] must be a token id (a non-negative integer)", i);
                return;
            }
            r->tokens[i] = (nb_token)json_integer_value(t);
        }
        r->n_tokens = (int)n;
    }
    if (!p->failed && has_prompt == (toks != NULL))
        fail(p, "complete needs exactly one of prompt and tokens");
}

static void parse_infill(parse *p, nbd_request *r)
{
    r->prefix = r->suffix = "";
    get_str(p, "prefix", &r->prefix, NULL, 0);
    get_str(p, "suffix", &r->suffix, NULL, 0);
    long long v = 0;
    get_int(p, "n_prefix", 0, 1 << 20, &v);
    r->n_prefix = (int)v;
    v = 0;
    get_int(p, "n_suffix", 0, 1 << 20, &v);
    r->n_suffix = (int)v;
    const char *fb = NULL;
    get_str(p, "fallback", &fb, NULL, 16);
    if (fb && !p->failed) {
        if (!strcmp(fb, "prefix"))
            r->fallback_prefix = 1;
        else if (strcmp(fb, "none"))
            fail(p, "fallback must be \"prefix\" or \"none\", not '%s'", fb);
    }
    json_t *ctx = json_object_get(p->obj, "context");
    if (!ctx || p->failed)
        return;
    if (!json_is_array(ctx)) {
        fail(p, "context must be an array of {name, text} objects, not %s", type_name(ctx));
        return;
    }
    size_t n = json_array_size(ctx);
    r->chunks = calloc(n ? n : 1, sizeof *r->chunks);
    if (!r->chunks) {
        fail(p, "out of memory");
        return;
    }
    size_t i;
    json_t *c;
    json_array_foreach(ctx, i, c)
    {
        json_t *name = json_object_get(c, "name"), *text = json_object_get(c, "text");
        if (!json_is_object(c) || !json_is_string(text) || (name && !json_is_string(name))) {
            fail(p, "context[%zu] must be an object with a string text (and a string name)", i);
            return;
        }
        r->chunks[i].name = name ? json_string_value(name) : "";
        r->chunks[i].text = json_string_value(text);
    }
    r->n_chunks = (int)n;
}

static void parse_chat(parse *p, nbd_request *r)
{
    json_t *msgs = json_object_get(p->obj, "messages");
    get_str(p, "template", &r->template_name, NULL, 64);
    if (!json_is_array(msgs) || json_array_size(msgs) == 0) {
        fail(p, "messages must be a non-empty array of {role, content} objects");
        return;
    }
    size_t n = json_array_size(msgs);
    r->messages = calloc(n, sizeof *r->messages);
    if (!r->messages) {
        fail(p, "out of memory");
        return;
    }
    size_t i;
    json_t *m;
    json_array_foreach(msgs, i, m)
    {
        json_t *role = json_object_get(m, "role"), *content = json_object_get(m, "content");
        const char *rs = json_is_string(role) ? json_string_value(role) : "";
        if (!json_is_object(m) || !json_is_string(content) ||
            (strcmp(rs, "system") && strcmp(rs, "user") && strcmp(rs, "assistant"))) {
            fail(p, "messages[%zu] must have a role (system, user or assistant) and a string "
                    "content", i);
            return;
        }
        r->messages[i].role = rs;
        r->messages[i].content = json_string_value(content);
    }
    r->n_messages = (int)n;
}

const char *nbd_parse(const char *line, size_t len, nbd_request *req, char *msg, size_t msglen)
{
    memset(req, 0, sizeof *req);
    req->add_bos = 1;
    req->special = 1;
    req->stream = 1;
    if (msglen)
        msg[0] = 0;
    if (len > NBD_MAX_FRAME) {
        snprintf(msg, msglen, "the line is %zu bytes (at most %u)", len, NBD_MAX_FRAME);
        return NBD_E_FRAME;
    }
    json_error_t jerr;
    req->json = json_loadb(line, len, JSON_REJECT_DUPLICATES, &jerr);
    if (!req->json || !json_is_object(req->json)) {
        snprintf(msg, msglen, "%s", req->json ? "the request must be a JSON object" : jerr.text);
        return NBD_E_JSON;
    }
    parse p = {req->json, msg, msglen, 0};
    json_t *id = json_object_get(req->json, "id");
    if (id && !json_is_null(id)) {
        if (!valid_id(id)) {
            snprintf(msg, msglen, "id must be a string of at most %d bytes or an integer",
                     NBD_MAX_ID);
            return NBD_E_REQUEST;
        }
        req->id = id;
    }
    json_t *op = json_object_get(req->json, "op");
    static const struct {
        const char *name;
        nbd_op op;
    } ops[] = {{"complete", NBD_OP_COMPLETE}, {"infill", NBD_OP_INFILL}, {"chat", NBD_OP_CHAT},
               {"tokenize", NBD_OP_TOKENIZE}, {"cancel", NBD_OP_CANCEL},
               {"status", NBD_OP_STATUS},     {"shutdown", NBD_OP_SHUTDOWN}};
    size_t k = sizeof ops / sizeof ops[0];
    if (json_is_string(op))
        for (k = 0; k < sizeof ops / sizeof ops[0]; k++)
            if (!strcmp(json_string_value(op), ops[k].name))
                break;
    if (k == sizeof ops / sizeof ops[0]) {
        if (json_is_string(op))
            snprintf(msg, msglen, "unknown op '%.64s' (complete, infill, chat, tokenize, cancel, "
                                  "status, shutdown)",
                     json_string_value(op));
        else
            snprintf(msg, msglen, "the request has no op");
        return NBD_E_OP;
    }
    req->op = ops[k].op;
    switch (req->op) {
    case NBD_OP_COMPLETE:
        get_bool(&p, "add_bos", &req->add_bos);
        get_bool(&p, "special", &req->special);
        parse_complete(&p, req);
        parse_sampling(&p, req);
        break;
    case NBD_OP_INFILL:
        parse_infill(&p, req);
        parse_sampling(&p, req);
        break;
    case NBD_OP_CHAT:
        parse_chat(&p, req);
        parse_sampling(&p, req);
        break;
    case NBD_OP_TOKENIZE:
        req->special = 0;
        get_bool(&p, "add_bos", &req->add_bos);
        get_bool(&p, "special", &req->special);
        if (!get_str(&p, "text", &req->text, &req->prompt_len, 0) && !p.failed)
            fail(&p, "tokenize needs a text");
        break;
    case NBD_OP_CANCEL:
        req->target = json_object_get(req->json, "target");
        if (!req->target || !valid_id(req->target))
            fail(&p, "cancel needs a target: the id of a request on this connection");
        break;
    case NBD_OP_STATUS:
    case NBD_OP_SHUTDOWN:
        break;
    }
    return p.failed ? NBD_E_REQUEST : NULL;
}

void nbd_request_free(nbd_request *req)
{
    if (!req)
        return;
    free(req->tokens);
    free(req->chunks);
    free(req->messages);
    json_decref(req->json);
    memset(req, 0, sizeof *req);
}

static char *dump_line(json_t *o)
{
    char *s = o ? json_dumps(o, JSON_COMPACT | JSON_REAL_PRECISION(6)) : NULL;
    json_decref(o);
    if (!s)
        return NULL;
    size_t n = strlen(s);
    char *line = realloc(s, n + 2);
    if (!line) {
        free(s);
        return NULL;
    }
    line[n] = '\n';
    line[n + 1] = 0;
    return line;
}

char *nbd_event_object(json_t *id, json_t *obj)
{
    if (!obj)
        return NULL;
    /* "id" first, for people reading the stream */
    json_t *o = json_object();
    if (!o || json_object_set(o, "id", id ? id : json_null()) || json_object_update(o, obj)) {
        json_decref(o);
        json_decref(obj);
        return NULL;
    }
    json_decref(obj);
    return dump_line(o);
}

char *nbd_event_text(json_t *id, const char *text, size_t len)
{
    json_t *o = json_object();
    if (o)
        json_object_set_new(o, "text", json_stringn(text, len));
    return nbd_event_object(id, o);
}

/* The length of the valid UTF-8 character at s (n bytes left), or 0. */
static size_t utf8_char(const unsigned char *s, size_t n)
{
    unsigned char c = s[0], lo = 0x80, hi = 0xbf;
    size_t len;
    if (c < 0x80)
        return 1;
    if (c >= 0xc2 && c <= 0xdf)
        len = 2;
    else if (c >= 0xe0 && c <= 0xef)
        len = 3, lo = c == 0xe0 ? 0xa0 : 0x80, hi = c == 0xed ? 0x9f : 0xbf;
    else if (c >= 0xf0 && c <= 0xf4)
        len = 4, lo = c == 0xf0 ? 0x90 : 0x80, hi = c == 0xf4 ? 0x8f : 0xbf;
    else
        return 0;
    if (n < len || s[1] < lo || s[1] > hi)
        return 0;
    for (size_t k = 2; k < len; k++)
        if ((s[k] & 0xc0) != 0x80)
            return 0;
    return len;
}

char *nbd_event_error(json_t *id, const char *code, const char *msg)
{
    /* A message may quote the client's bytes (jansson's error text) or cut
     * a quoted string mid-character ("%.64s"); JSON strings must be UTF-8,
     * so such bytes become U+FFFD rather than losing the whole event. */
    if (!msg)
        msg = "";
    size_t n = strlen(msg), k = 0;
    char *clean = malloc(3 * n + 1);
    if (!clean)
        return NULL;
    for (size_t i = 0; i < n;) {
        size_t c = utf8_char((const unsigned char *)msg + i, n - i);
        if (c) {
            memcpy(clean + k, msg + i, c);
            k += c, i += c;
        } else {
            memcpy(clean + k, "\xef\xbf\xbd", 3);
            k += 3, i++;
        }
    }
    clean[k] = 0;
    char *line = nbd_event_object(id, json_pack("{s:b, s:s, s:s, s:s}", "done", 1, "stop_reason",
                                                "error", "error", code, "message", clean));
    free(clean);
    return line;
}
