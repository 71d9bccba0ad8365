/*
 * client.c - nibble.core's client of nibd: connections, and requests that
 * share one connection, demultiplexed by id.
 *
 * Whichever handle reads first takes every complete line off the socket
 * and files each event under the request whose id it carries; the module's
 * own cancel replies are dropped.  A connection is freed when the client
 * and every request on it are closed or collected, so a request keeps its
 * connection open.  Requests are userdata that point at the connection;
 * the connection links the requests still waiting for a final event.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "nbl.h"

#define MAX_FRAME (8u << 20) /* nibd's limit on a request line */
#define MAX_ID 256           /* nibd's limit on a string id */

typedef struct req req;

typedef struct conn {
    nb_client *c;      /* NULL once closed */
    int refs;          /* the client object and each request not yet closed */
    long long next_id;
    req *open;         /* requests whose final event has not arrived */
    long long *swallow; /* ids of the module's own cancel requests */
    size_t n_swallow, cap_swallow;
    int lost;          /* the daemon hung up */
    char lost_msg[128];
} conn;

struct req {
    conn *cn;          /* NULL once closed */
    json_t *id;
    json_t *queue;     /* events not handed out yet */
    int finished;      /* the final event is in the queue or handed out */
    nbl_stream s;
    req *next, *prev;  /* in cn->open while not finished */
};

typedef struct client_ud {
    conn *cn;          /* NULL once closed */
} client_ud;

/* ------------------------------------------------------------------ connection */

static void conn_unref(conn *cn)
{
    if (--cn->refs > 0)
        return;
    nb_client_close(cn->c);
    free(cn->swallow);
    free(cn);
}

static void unlink_req(req *r)
{
    conn *cn = r->cn;
    if (r->prev)
        r->prev->next = r->next;
    else if (cn->open == r)
        cn->open = r->next;
    if (r->next)
        r->next->prev = r->prev;
    r->next = r->prev = NULL;
}

/* An event ends its request when it says so (done, error, stop_reason) or
 * when it is not a text piece: the single reply of tokenize, status,
 * cancel and shutdown. */
static int is_final(const json_t *ev)
{
    return json_is_true(json_object_get(ev, "done")) || json_object_get(ev, "error") ||
           json_object_get(ev, "stop_reason") || !json_is_string(json_object_get(ev, "text"));
}

static void deliver(req *r, json_t *ev, int final)
{
    json_array_append(r->queue, ev);
    if (final) {
        r->finished = 1;
        unlink_req(r);
    }
}

/* End every waiting request with an error event of this code. */
static void end_all(conn *cn, const char *code, const char *msg)
{
    while (cn->open) {
        req *r = cn->open;
        json_t *ev = json_pack("{s:O, s:b, s:s, s:s, s:s}", "id", r->id, "done", 1,
                               "stop_reason", "error", "error", code, "message", msg);
        if (!ev) { /* out of memory: still end it */
            r->finished = 1;
            unlink_req(r);
            continue;
        }
        deliver(r, ev, 1);
        json_decref(ev);
    }
}

static void conn_lose(conn *cn, const char *msg)
{
    if (cn->lost)
        return;
    cn->lost = 1;
    snprintf(cn->lost_msg, sizeof cn->lost_msg, "%s", msg);
    cn->n_swallow = 0;
    end_all(cn, "io", msg);
}

static int swallowed(conn *cn, const json_t *id)
{
    if (!json_is_integer(id))
        return 0;
    long long v = json_integer_value(id);
    for (size_t i = 0; i < cn->n_swallow; i++)
        if (cn->swallow[i] == v) {
            cn->swallow[i] = cn->swallow[--cn->n_swallow];
            return 1;
        }
    return 0;
}

static void dispatch(conn *cn, json_t *ev)
{
    json_t *id = json_object_get(ev, "id");
    if (!id || swallowed(cn, id))
        return;
    for (req *r = cn->open; r; r = r->next)
        if (json_equal(r->id, id)) {
            deliver(r, ev, is_final(ev));
            return;
        }
    /* a request closed before its end: nobody wants this */
}

/* Take every complete line the daemon has sent, without blocking. */
static void conn_pump(conn *cn)
{
    if (!cn->c || cn->lost)
        return;
    for (;;) {
        char *line;
        size_t len;
        nb_status st = nb_client_read(cn->c, &line, &len, 0);
        if (st) {
            conn_lose(cn, st == NB_ERR_NOMEM ? "out of memory reading from nibd"
                                             : "the connection to nibd was lost");
            return;
        }
        if (!line)
            return;
        json_t *ev = json_loadb(line, len, JSON_ALLOW_NUL, NULL);
        free(line);
        if (json_is_object(ev))
            dispatch(cn, ev);
        json_decref(ev); /* a line that is not an object cannot be filed */
    }
}

static int id_in_use(conn *cn, const json_t *id)
{
    for (req *r = cn->open; r; r = r->next)
        if (json_equal(r->id, id))
            return 1;
    if (json_is_integer(id))
        for (size_t i = 0; i < cn->n_swallow; i++)
            if (cn->swallow[i] == json_integer_value(id))
                return 1;
    return 0;
}

static json_t *new_id(conn *cn)
{
    for (;;) {
        json_t *id = json_integer(++cn->next_id);
        if (!id || !id_in_use(cn, id))
            return id;
        json_decref(id);
    }
}

static nb_status send_json(conn *cn, json_t *obj)
{
    char *line = json_dumps(obj, JSON_COMPACT);
    if (!line)
        return NB_ERR_NOMEM;
    nb_status st = nb_client_send(cn->c, line, strlen(line));
    free(line);
    if (st == NB_ERR_IO)
        conn_lose(cn, "the connection to nibd was lost");
    return st;
}

/* ------------------------------------------------------------------ requests */

static req *check_req(lua_State *L)
{
    return luaL_checkudata(L, 1, NBL_REQUEST_MT);
}

/* Hand out the queued events as a Lua array. */
static void take(lua_State *L, req *r)
{
    size_t n = json_array_size(r->queue);
    lua_createtable(L, (int)n, 0);
    for (size_t i = 0; i < n; i++) {
        json_t *ev = json_array_get(r->queue, i);
        nbl_push_json(L, ev);
        lua_rawseti(L, -2, (int)(i + 1));
        nbl_stream_note(&r->s, ev, r->finished && i == n - 1);
    }
    json_array_clear(r->queue);
    if (r->finished && !r->s.done) /* the final event could not be made */
        r->s.done = 1;
}

static int req_fd(lua_State *L)
{
    req *r = check_req(L);
    if (!r->cn || !r->cn->c)
        return nbl_closed(L);
    lua_pushinteger(L, nb_client_fd(r->cn->c));
    return 1;
}

static int req_read(lua_State *L)
{
    req *r = check_req(L);
    if (!r->cn)
        return nbl_closed(L);
    if (!r->finished)
        conn_pump(r->cn);
    take(L, r);
    return 1;
}

static int req_done(lua_State *L)
{
    req *r = check_req(L);
    lua_pushboolean(L, !r->cn || r->s.done);
    return 1;
}

static int req_id(lua_State *L)
{
    req *r = check_req(L);
    if (!r->cn)
        return nbl_closed(L);
    nbl_push_json(L, r->id);
    return 1;
}

/* Ask the daemon to stop r.  NB_OK when sent or when r has ended. */
static nb_status cancel(req *r)
{
    conn *cn = r->cn;
    if (r->finished || !cn->c || cn->lost)
        return NB_OK;
    if (cn->n_swallow == cn->cap_swallow) {
        size_t cap = cn->cap_swallow ? cn->cap_swallow * 2 : 8;
        long long *ns = realloc(cn->swallow, cap * sizeof *ns);
        if (!ns)
            return NB_ERR_NOMEM;
        cn->swallow = ns;
        cn->cap_swallow = cap;
    }
    json_t *id = new_id(cn);
    json_t *obj = id ? json_pack("{s:s, s:O, s:O}", "op", "cancel", "id", id, "target", r->id)
                     : NULL;
    if (!obj) {
        json_decref(id);
        return NB_ERR_NOMEM;
    }
    nb_status st = send_json(cn, obj);
    if (!st)
        cn->swallow[cn->n_swallow++] = json_integer_value(id);
    json_decref(obj);
    json_decref(id);
    return st;
}

static int req_cancel(lua_State *L)
{
    req *r = check_req(L);
    if (!r->cn)
        return nbl_closed(L);
    nb_status st = cancel(r);
    if (st == NB_ERR_NOMEM)
        return nbl_fail(L, "nomem", "out of memory");
    /* a lost connection has already ended the request with an "io" event */
    lua_pushboolean(L, 1);
    return 1;
}

static void req_release(req *r)
{
    if (!r->cn)
        return;
    if (!r->finished) {
        cancel(r);
        unlink_req(r);
    }
    json_decref(r->id);
    json_decref(r->queue);
    nbl_stream_free(&r->s);
    conn_unref(r->cn);
    r->cn = NULL;
    r->id = r->queue = NULL;
}

static int req_close(lua_State *L)
{
    req_release(check_req(L));
    lua_pushboolean(L, 1);
    return 1;
}

/* Wait for the final event: 1 when it has arrived, 0 on timeout. */
static int wait_final(req *r, long long timeout_ms)
{
    double deadline = nbl_now_ms() + (double)timeout_ms;
    for (;;) {
        conn_pump(r->cn);
        if (r->finished)
            return 1;
        int wait = -1;
        if (timeout_ms >= 0) {
            double left = deadline - nbl_now_ms();
            if (left <= 0)
                return 0;
            wait = left > 1e9 ? 1000000000 : (int)left + 1;
        }
        if (nbl_poll_fd(nb_client_fd(r->cn->c), wait) < 0) {
            conn_lose(r->cn, "the connection to nibd was lost");
            return 1;
        }
    }
}

static long long opt_timeout(lua_State *L, int arg)
{
    long long t = -1;
    if (!lua_isnoneornil(L, arg) && !nbl_to_int(L, arg, &t))
        luaL_argerror(L, arg, "a timeout in milliseconds (an integer) expected");
    return t;
}

static int req_wait(lua_State *L)
{
    req *r = check_req(L);
    long long timeout = opt_timeout(L, 2);
    if (!r->cn)
        return nbl_closed(L);
    if (!wait_final(r, timeout))
        return nbl_fail(L, "timeout", "timed out after %lld ms", timeout);
    take(L, r);
    lua_pop(L, 1);
    nbl_stream_push_result(L, &r->s);
    return 2;
}

static int req_tostring(lua_State *L)
{
    req *r = check_req(L);
    if (!r->cn) {
        lua_pushstring(L, "nibble.request (closed)");
        return 1;
    }
    wait_final(r, -1);
    take(L, r);
    lua_pushlstring(L, r->s.text ? r->s.text : "", r->s.len);
    return 1;
}

static int req_gc(lua_State *L)
{
    req_release(check_req(L));
    return 0;
}

/* ------------------------------------------------------------------ clients */

static client_ud *check_client(lua_State *L)
{
    return luaL_checkudata(L, 1, NBL_CLIENT_MT);
}

static int l_connect(lua_State *L)
{
    nb_client_params p = nb_client_default_params();
    const char *args[64];
    int t = lua_type(L, 1);
    if (t == LUA_TSTRING) {
        p.socket = lua_tostring(L, 1);
    } else if (t == LUA_TTABLE) {
        long long v;
        p.socket = nbl_opt_str(L, 1, 1, "socket", NULL);
        p.model = nbl_opt_str(L, 1, 1, "model", NULL);
        p.nibd = nbl_opt_str(L, 1, 1, "nibd", NULL);
        nbl_opt_bool(L, 1, 1, "autostart", &p.autostart);
        if (nbl_opt_int(L, 1, 1, "timeout_ms", &v))
            p.timeout_ms = v < 1 ? 1 : v > 3600000 ? 3600000 : (int)v;
        if (nbl_opt(L, 1, "args") != LUA_TNIL) {
            if (!lua_istable(L, -1))
                return luaL_argerror(L, 1, "args must be an array of strings");
            size_t n = nbl_rawlen(L, -1);
            if (n > 32)
                return luaL_argerror(L, 1, "args has more than 32 strings");
            for (size_t i = 0; i < n; i++) {
                lua_rawgeti(L, -1, (int)(i + 1));
                if (lua_type(L, -1) != LUA_TSTRING)
                    return luaL_argerror(L, 1, "args must be an array of strings");
                args[i] = lua_tostring(L, -1); /* the table keeps it */
                lua_pop(L, 1);
            }
            args[n] = NULL;
            p.nibd_args = args;
        }
        lua_pop(L, 1);
    } else if (t != LUA_TNONE && t != LUA_TNIL) {
        return luaL_argerror(L, 1, "a socket path or an options table expected");
    }
    client_ud *u = lua_newuserdata(L, sizeof *u);
    u->cn = NULL;
    luaL_setmetatable(L, NBL_CLIENT_MT);
    conn *cn = calloc(1, sizeof *cn);
    if (!cn)
        return nbl_fail(L, "nomem", "out of memory");
    char err[1024];
    nb_status st = nb_client_connect(&p, &cn->c, err, sizeof err);
    if (st) {
        free(cn);
        return nbl_fail(L, nbl_status_code(st), "%s", err);
    }
    cn->refs = 1;
    u->cn = cn;
    return 1;
}

static int cl_request(lua_State *L)
{
    client_ud *u = check_client(L);
    luaL_checktype(L, 2, LUA_TTABLE);
    lua_settop(L, 2);
    req *r = lua_newuserdata(L, sizeof *r); /* first: nothing leaks if it raises */
    memset(r, 0, sizeof *r);
    luaL_setmetatable(L, NBL_REQUEST_MT);
    char err[512];
    json_t *obj = nbl_to_json(L, 2, "request", err, sizeof err);
    if (!obj)
        return luaL_argerror(L, 2, err);
    if (!json_is_object(obj)) {
        json_decref(obj);
        return luaL_argerror(L, 2, "a request is a table with string keys");
    }
    json_t *id = json_object_get(obj, "id");
    if (id && !json_is_integer(id) && !(json_is_string(id) && json_string_length(id) <= MAX_ID)) {
        json_decref(obj);
        return luaL_argerror(L, 2,
                             "request.id must be an integer or a string of at most 256 bytes");
    }
    conn *cn = u->cn;
    if (!cn || !cn->c) {
        json_decref(obj);
        return nbl_closed(L);
    }
    if (cn->lost) {
        json_decref(obj);
        return nbl_fail(L, "io", "%s", cn->lost_msg);
    }
    if (id && id_in_use(cn, id)) {
        char *s = json_dumps(id, JSON_ENCODE_ANY);
        nbl_fail(L, "bad_request", "id %s is in use by another request on this connection",
                 s ? s : "?");
        free(s);
        json_decref(obj);
        return 3;
    }
    if (!id) {
        if (!(id = new_id(cn)) || json_object_set_new(obj, "id", id)) {
            json_decref(obj);
            return nbl_fail(L, "nomem", "out of memory");
        }
    }
    id = json_incref(id);
    char *line = json_dumps(obj, JSON_COMPACT);
    json_decref(obj);
    json_t *queue = json_array();
    if (!line || !queue) {
        free(line);
        json_decref(queue);
        json_decref(id);
        return nbl_fail(L, "nomem", "out of memory");
    }
    size_t len = strlen(line);
    nb_status st = len > MAX_FRAME ? NB_ERR_INVALID : nb_client_send(cn->c, line, len);
    free(line);
    if (st) {
        json_decref(queue);
        json_decref(id);
        if (st == NB_ERR_INVALID)
            return nbl_fail(L, "bad_request", "the request is %zu bytes; nibd takes at most %u",
                            len, MAX_FRAME);
        conn_lose(cn, "the connection to nibd was lost");
        return nbl_fail(L, "io", "%s", cn->lost_msg);
    }
    r->cn = cn;
    cn->refs++;
    r->id = id;
    r->queue = queue;
    r->next = cn->open;
    if (cn->open)
        cn->open->prev = r;
    cn->open = r;
    return 1;
}

static int cl_call(lua_State *L)
{
    check_client(L);
    long long timeout = opt_timeout(L, 3);
    lua_settop(L, 2);
    int n = cl_request(L);
    if (n != 1)
        return n;
    req *r = lua_touserdata(L, -1);
    if (!wait_final(r, timeout)) {
        req_release(r);
        return nbl_fail(L, "timeout", "timed out after %lld ms", timeout);
    }
    take(L, r);
    lua_pop(L, 1);
    json_t *err = r->s.final ? json_object_get(r->s.final, "error") : NULL;
    if (err) {
        const char *msg = json_string_value(json_object_get(r->s.final, "message"));
        lua_pushnil(L);
        lua_pushstring(L, msg ? msg : "nibd reported an error");
        lua_pushstring(L, json_is_string(err) ? json_string_value(err) : "error");
        nbl_push_json(L, r->s.final);
        req_release(r);
        return 4;
    }
    nbl_stream_push_result(L, &r->s);
    req_release(r);
    return 2;
}

static int cl_fd(lua_State *L)
{
    client_ud *u = check_client(L);
    if (!u->cn || !u->cn->c)
        return nbl_closed(L);
    lua_pushinteger(L, nb_client_fd(u->cn->c));
    return 1;
}

static int cl_close(lua_State *L)
{
    client_ud *u = check_client(L);
    conn *cn = u->cn;
    if (cn) {
        end_all(cn, "closed", "the client was closed");
        nb_client_close(cn->c);
        cn->c = NULL;
        cn->n_swallow = 0;
        u->cn = NULL;
        conn_unref(cn);
    }
    lua_pushboolean(L, 1);
    return 1;
}

static int cl_gc(lua_State *L)
{
    client_ud *u = check_client(L);
    if (u->cn) /* requests still open keep the connection */
        conn_unref(u->cn);
    u->cn = NULL;
    return 0;
}

static int cl_tostring(lua_State *L)
{
    client_ud *u = check_client(L);
    if (!u->cn || !u->cn->c)
        lua_pushstring(L, "nibble.client (closed)");
    else
        lua_pushfstring(L, "nibble.client (fd %d)", nb_client_fd(u->cn->c));
    return 1;
}

void nbl_open_client(lua_State *L)
{
    static const luaL_Reg client_methods[] = {
        {"request", cl_request}, {"call", cl_call}, {"fd", cl_fd}, {"close", cl_close},
        {NULL, NULL}};
    static const luaL_Reg req_methods[] = {
        {"fd", req_fd},         {"read", req_read}, {"done", req_done},   {"cancel", req_cancel},
        {"close", req_close},   {"wait", req_wait}, {"id", req_id},       {NULL, NULL}};
    nbl_new_class(L, NBL_CLIENT_MT, client_methods, cl_gc, cl_tostring, cl_close);
    nbl_new_class(L, NBL_REQUEST_MT, req_methods, req_gc, req_tostring, req_close);
    lua_pushcfunction(L, l_connect);
    lua_setfield(L, -2, "connect");
}
