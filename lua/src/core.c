/*
 * core.c - the Lua module nibble.core: a client of nibd and an in-process
 * engine, for Neovim (LuaJIT) and Lua 5.1 to 5.4.  doc/lua.md is the
 * reference with examples; this is the summary.
 *
 *   local core = require("nibble.core")
 *   core.version                 libnibble's version, "0.1.0"
 *   core.null                    JSON null (a light userdata NULL)
 *   core.array([t])              mark t (default {}) as a JSON array; returns t
 *   core.encode(v) -> string     JSON text (errors raise)
 *   core.decode(s) -> v | nil, msg, "format"
 *   core.poll(fd, timeout_ms) -> true (readable) | false (timed out)
 *
 *   core.connect([socket | {socket=, autostart=true, model=, timeout_ms=,
 *                 nibd=, args={...}}]) -> client | nil, msg, code
 *     client:request(tbl) -> request      tbl is a request of doc/protocol.md;
 *                                         an integer id is added when absent
 *     client:call(tbl[, timeout_ms]) -> text, final | nil, msg, code[, final]
 *     client:fd(), client:close()
 *
 *   core.open(path[, {threads=, n_ctx=, vocab_only=}]) -> model | nil, msg, code
 *     model:tokenize(text[, {bos=true, special=false}]) -> {ids}
 *     model:detokenize(ids[, {special=false}]) -> string
 *     model:info() -> table
 *     model:generate(prompt | {ids}[, opts]) -> generation   opts as complete's
 *     model:close()
 *
 *   A request and a generation are handles with one interface:
 *     h:fd()                  readable when h:read() has something
 *     h:read() -> {events}    never blocks; events are the daemon's tables,
 *                             {text=...} pieces, then one final event
 *     h:done()                true once read() (or wait()) gave the final event
 *     h:wait([timeout_ms]) -> text, final | nil, "timed out ...", "timeout"
 *     h:cancel()              the final event then has stop_reason "cancelled"
 *     h:close()               cancels when not done; idempotent
 *     tostring(h)             waits, returns the whole text
 *     request:id()            the id its events carry
 *
 * Conventions: wrong argument types raise Lua errors; expected failures
 * return nil, message, code with code one of "not_found", "io", "format",
 * "unsupported", "nomem", "bad_request", "context_full", "timeout",
 * "closed".  Every object has __gc and an idempotent close(); a closed
 * object's methods return nil, "closed", "closed" (done() returns true).
 * A request keeps its connection open and a generation its model loaded
 * until they are closed or collected.  Generations run on their own
 * thread, which never touches the Lua state; objects belong to the Lua
 * state that made them.
 */
#include <errno.h>
#include <math.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "nbl.h"

/* ------------------------------------------------------------------ shared */

int nbl_fail(lua_State *L, const char *code, const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    lua_pushnil(L);
    lua_pushstring(L, msg);
    lua_pushstring(L, code);
    return 3;
}

int nbl_closed(lua_State *L)
{
    return nbl_fail(L, "closed", "closed");
}

const char *nbl_status_code(nb_status st)
{
    switch (st) {
    case NB_OK: return "ok";
    case NB_ERR_IO: return "io";
    case NB_ERR_FORMAT: return "format";
    case NB_ERR_UNSUPPORTED: return "unsupported";
    case NB_ERR_NOMEM: return "nomem";
    case NB_ERR_INVALID: return "bad_request";
    case NB_ERR_CONTEXT_FULL: return "context_full";
    case NB_ERR_CANCELLED: return "cancelled";
    }
    return "io";
}

int nbl_opt(lua_State *L, int idx, const char *key)
{
    if (lua_type(L, idx) != LUA_TTABLE) {
        lua_pushnil(L);
        return LUA_TNIL;
    }
    lua_getfield(L, idx, key);
    return lua_type(L, -1);
}

static int opt_type_error(lua_State *L, int arg, const char *key, const char *want)
{
    const char *msg =
        lua_pushfstring(L, "%s must be %s, not %s", key, want, luaL_typename(L, -1));
    return luaL_argerror(L, arg, msg);
}

int nbl_to_int(lua_State *L, int idx, long long *out)
{
    if (lua_type(L, idx) != LUA_TNUMBER)
        return 0;
    if (nbl_isinteger(L, idx)) {
        *out = (long long)lua_tointeger(L, idx);
        return 1;
    }
    double d = (double)lua_tonumber(L, idx);
    /* 2^63 itself does not fit */
    if (d != floor(d) || !(d >= -9223372036854775808.0 && d < 9223372036854775808.0))
        return 0;
    *out = (long long)d;
    return 1;
}

int nbl_opt_int(lua_State *L, int idx, int arg, const char *key, long long *out)
{
    if (nbl_opt(L, idx, key) == LUA_TNIL) {
        lua_pop(L, 1);
        return 0;
    }
    if (!nbl_to_int(L, -1, out))
        return opt_type_error(L, arg, key, "an integer");
    lua_pop(L, 1);
    return 1;
}

int nbl_opt_num(lua_State *L, int idx, int arg, const char *key, double *out)
{
    int t = nbl_opt(L, idx, key);
    if (t == LUA_TNIL) {
        lua_pop(L, 1);
        return 0;
    }
    if (t != LUA_TNUMBER)
        return opt_type_error(L, arg, key, "a number");
    *out = (double)lua_tonumber(L, -1);
    lua_pop(L, 1);
    return 1;
}

int nbl_opt_bool(lua_State *L, int idx, int arg, const char *key, int *out)
{
    int t = nbl_opt(L, idx, key);
    if (t == LUA_TNIL) {
        lua_pop(L, 1);
        return 0;
    }
    if (t != LUA_TBOOLEAN)
        return opt_type_error(L, arg, key, "a boolean");
    *out = lua_toboolean(L, -1);
    lua_pop(L, 1);
    return 1;
}

const char *nbl_opt_str(lua_State *L, int idx, int arg, const char *key, size_t *len)
{
    int t = nbl_opt(L, idx, key);
    if (t == LUA_TNIL) {
        lua_pop(L, 1);
        return NULL;
    }
    if (t != LUA_TSTRING)
        return opt_type_error(L, arg, key, "a string"), NULL;
    const char *s = lua_tolstring(L, -1, len);
    lua_pop(L, 1); /* the table still holds the string */
    return s;
}

void nbl_stream_note(nbl_stream *s, json_t *ev, int is_final)
{
    json_t *t = json_object_get(ev, "text");
    if (json_is_string(t)) {
        size_t n = json_string_length(t);
        if (s->len + n + 1 > s->cap) {
            size_t cap = s->cap ? s->cap : 1024;
            while (cap < s->len + n + 1)
                cap *= 2;
            char *nt = realloc(s->text, cap);
            if (nt) {
                s->text = nt;
                s->cap = cap;
            }
        }
        if (s->len + n + 1 <= s->cap) {
            memcpy(s->text + s->len, json_string_value(t), n);
            s->len += n;
            s->text[s->len] = 0;
        }
    }
    if (is_final && !s->done) {
        s->final = json_incref(ev);
        s->done = 1;
    }
}

void nbl_stream_push_result(lua_State *L, const nbl_stream *s)
{
    lua_pushlstring(L, s->text ? s->text : "", s->len);
    if (s->final)
        nbl_push_json(L, s->final);
    else
        lua_pushnil(L);
}

void nbl_stream_free(nbl_stream *s)
{
    free(s->text);
    json_decref(s->final);
    memset(s, 0, sizeof *s);
}

double nbl_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec * 1e-6;
}

int nbl_poll_fd(int fd, int timeout_ms)
{
    double deadline = nbl_now_ms() + (timeout_ms > 0 ? timeout_ms : 0);
    for (;;) {
        struct pollfd p = {fd, POLLIN, 0};
        int wait = timeout_ms;
        if (timeout_ms > 0) {
            double left = deadline - nbl_now_ms();
            wait = left > 0 ? (int)ceil(left) : 0;
        }
        int r = poll(&p, 1, wait);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            return -1;
        if (r > 0 && (p.revents & POLLNVAL)) {
            errno = EBADF;
            return -1;
        }
        return r > 0;
    }
}

void nbl_new_class(lua_State *L, const char *name, const luaL_Reg *methods, lua_CFunction gc,
                   lua_CFunction tostring, lua_CFunction close)
{
    luaL_newmetatable(L, name);
    lua_newtable(L);
    luaL_setfuncs(L, methods, 0);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, gc);
    lua_setfield(L, -2, "__gc");
    lua_pushcfunction(L, close); /* Lua 5.4: local h <close> = ... */
    lua_setfield(L, -2, "__close");
    lua_pushcfunction(L, tostring);
    lua_setfield(L, -2, "__tostring");
    lua_pushstring(L, name); /* 5.1 lacks it; error messages use it */
    lua_setfield(L, -2, "__name");
    lua_pop(L, 1);
}

/* ------------------------------------------------------------------ module functions */

static int l_array(lua_State *L)
{
    if (lua_isnoneornil(L, 1)) {
        lua_settop(L, 0);
        lua_newtable(L);
    } else {
        luaL_checktype(L, 1, LUA_TTABLE);
        lua_settop(L, 1);
    }
    luaL_setmetatable(L, NBL_ARRAY_MT);
    return 1;
}

static int l_encode(lua_State *L)
{
    luaL_checkany(L, 1);
    char err[512];
    json_t *j = nbl_to_json(L, 1, "value", err, sizeof err);
    if (!j)
        return luaL_argerror(L, 1, err);
    char *s = json_dumps(j, JSON_COMPACT | JSON_ENCODE_ANY);
    json_decref(j);
    if (!s)
        return luaL_error(L, "out of memory");
    lua_pushstring(L, s);
    free(s);
    return 1;
}

static int l_decode(lua_State *L)
{
    size_t n;
    const char *s = luaL_checklstring(L, 1, &n);
    json_error_t je;
    json_t *j = json_loadb(s, n, JSON_DECODE_ANY | JSON_ALLOW_NUL, &je);
    if (!j)
        return nbl_fail(L, "format", "invalid JSON at line %d, column %d: %s", je.line,
                        je.column, je.text);
    nbl_push_json(L, j);
    json_decref(j);
    return 1;
}

static int l_poll(lua_State *L)
{
    long long fd, timeout = -1;
    if (!nbl_to_int(L, 1, &fd) || fd < 0 || fd > 0x7fffffff)
        return luaL_argerror(L, 1, "a file descriptor (an integer >= 0) expected");
    if (!lua_isnoneornil(L, 2) && !nbl_to_int(L, 2, &timeout))
        return luaL_argerror(L, 2, "a timeout in milliseconds (an integer) expected");
    if (timeout > 0x7fffffff)
        timeout = 0x7fffffff;
    int r = nbl_poll_fd((int)fd, timeout < 0 ? -1 : (int)timeout);
    if (r < 0)
        return nbl_fail(L, "io", "poll on descriptor %lld: %s", fd, strerror(errno));
    lua_pushboolean(L, r);
    return 1;
}

__attribute__((visibility("default"))) int luaopen_nibble_core(lua_State *L);

int luaopen_nibble_core(lua_State *L)
{
    static const luaL_Reg funcs[] = {
        {"array", l_array}, {"encode", l_encode}, {"decode", l_decode}, {"poll", l_poll},
        {NULL, NULL}};
    luaL_newmetatable(L, NBL_ARRAY_MT); /* a mark: it has no fields */
    lua_pop(L, 1);
    luaL_newlib(L, funcs);
    lua_pushstring(L, nb_version());
    lua_setfield(L, -2, "version");
    lua_pushlightuserdata(L, NULL);
    lua_setfield(L, -2, "null");
    nbl_open_client(L);
    nbl_open_engine(L);
    return 1;
}
