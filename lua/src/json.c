/*
 * json.c - Lua values to and from JSON (jansson), with the rules doc/lua.md
 * gives: a table whose keys are exactly 1..n is an array, a table of
 * string keys an object, an empty table an object unless it carries the
 * core.array() mark; core.null is null; strings must be UTF-8.  Nothing
 * here raises a Lua error, so a failed conversion frees what it built.
 */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "nbl.h"

#define MAX_DEPTH 128      /* Lua tables nested deeper are refused (cycles) */
#define MAX_PUSH_DEPTH 4096 /* above jansson's own parser limit (2048) */

int nbl_utf8_valid(const char *str, size_t n, size_t *bad)
{
    const unsigned char *s = (const unsigned char *)str;
    size_t i = 0;
    while (i < n) {
        unsigned c = s[i];
        size_t need;
        unsigned min;
        if (c < 0x80) {
            i++;
            continue;
        } else if (c >= 0xC2 && c <= 0xDF) {
            need = 1, min = 0x80;
        } else if (c >= 0xE0 && c <= 0xEF) {
            need = 2, min = 0x800;
        } else if (c >= 0xF0 && c <= 0xF4) {
            need = 3, min = 0x10000;
        } else {
            goto invalid;
        }
        if (n - i <= need)
            goto invalid;
        unsigned cp = c & (0x3Fu >> need);
        for (size_t k = 1; k <= need; k++) {
            if ((s[i + k] & 0xC0) != 0x80)
                goto invalid;
            cp = (cp << 6) | (s[i + k] & 0x3F);
        }
        if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
            goto invalid;
        i += need + 1;
    }
    return 1;
invalid:
    if (bad)
        *bad = i;
    return 0;
}

/* ------------------------------------------------------------------ Lua -> JSON */

typedef struct conv {
    lua_State *L;
    char path[256];
    size_t plen;
    char *err;
    size_t errlen;
    int failed;
} conv;

static void path_push(conv *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void path_push(conv *c, const char *fmt, ...)
{
    if (c->plen >= sizeof c->path - 1)
        return;
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(c->path + c->plen, sizeof c->path - c->plen, fmt, ap);
    va_end(ap);
    if (n > 0)
        c->plen += (size_t)n < sizeof c->path - c->plen ? (size_t)n : sizeof c->path - c->plen - 1;
}

static json_t *fail(conv *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static json_t *fail(conv *c, const char *fmt, ...)
{
    if (c->failed)
        return NULL;
    c->failed = 1;
    char msg[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    snprintf(c->err, c->errlen, "%.*s: %s", (int)c->plen, c->path, msg);
    return NULL;
}

/* A key or string shown in a path: at most 32 bytes of it. */
static void path_key(conv *c, const char *k, size_t n)
{
    path_push(c, ".%.*s%s", (int)(n > 32 ? 32 : n), k, n > 32 ? "..." : "");
}

static int is_array_marked(lua_State *L, int idx)
{
    if (!lua_getmetatable(L, idx))
        return 0;
    luaL_getmetatable(L, NBL_ARRAY_MT);
    int same = lua_rawequal(L, -1, -2);
    lua_pop(L, 2);
    return same;
}

/* An integer-valued number key >= 1 (the positions of a Lua sequence). */
static int array_key(lua_State *L, int idx, double *k)
{
    if (lua_type(L, idx) != LUA_TNUMBER)
        return 0;
    double d = (double)lua_tonumber(L, idx);
    if (!(d >= 1 && d <= 9007199254740992.0) || d != floor(d))
        return 0;
    *k = d;
    return 1;
}

static json_t *to_json(conv *c, int idx, int depth);

static json_t *table_to_json(conv *c, int idx, int depth)
{
    lua_State *L = c->L;
    if (depth >= MAX_DEPTH)
        return fail(c, "tables nested more than %d deep (a table that contains itself?)",
                    MAX_DEPTH);
    if (!lua_checkstack(L, 4))
        return fail(c, "out of Lua stack");
    int marked = is_array_marked(L, idx);
    size_t n_keys = 0, n_int = 0, n_str = 0;
    double max = 0;
    int other = LUA_TNIL;
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        double k;
        n_keys++;
        if (array_key(L, -2, &k)) {
            n_int++;
            if (k > max)
                max = k;
        } else if (lua_type(L, -2) == LUA_TSTRING) {
            n_str++;
        } else if (other == LUA_TNIL) {
            other = lua_type(L, -2);
        }
        lua_pop(L, 1);
    }
    if (other != LUA_TNIL)
        return fail(c, "a table key of type %s (keys must be strings, or 1..n for an array)",
                    lua_typename(L, other));
    int is_array = marked || (n_keys > 0 && n_str == 0);
    if (n_str && n_int)
        return fail(c, "a table mixes string keys with array items");
    if (is_array && (n_str || (double)n_int != max))
        return fail(c, "%s", n_str ? "a table marked as an array has string keys"
                                   : "an array with holes (an array needs keys 1..n)");
    if (is_array) {
        json_t *a = json_array();
        if (!a)
            return fail(c, "out of memory");
        size_t plen = c->plen;
        for (size_t i = 1; i <= n_int; i++) {
            lua_rawgeti(L, idx, (int)i);
            path_push(c, "[%zu]", i);
            json_t *v = to_json(c, lua_gettop(L), depth + 1);
            c->plen = plen;
            lua_pop(L, 1);
            if (!v || json_array_append_new(a, v)) {
                json_decref(a);
                return fail(c, "out of memory");
            }
        }
        return a;
    }
    json_t *o = json_object();
    if (!o)
        return fail(c, "out of memory");
    size_t plen = c->plen;
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        size_t kn;
        const char *k = lua_tolstring(L, -2, &kn); /* a string: no conversion */
        size_t bad;
        path_key(c, k, kn);
        json_t *v = NULL;
        if (memchr(k, 0, kn))
            fail(c, "a key contains a NUL byte");
        else if (!nbl_utf8_valid(k, kn, &bad))
            fail(c, "the key is not valid UTF-8 (byte %zu)", bad);
        else
            v = to_json(c, lua_gettop(L), depth + 1);
        c->plen = plen;
        if (!v || json_object_set_new_nocheck(o, k, v)) {
            lua_pop(L, 2);
            json_decref(o);
            return fail(c, "out of memory");
        }
        lua_pop(L, 1);
    }
    return o;
}

static json_t *to_json(conv *c, int idx, int depth)
{
    lua_State *L = c->L;
    switch (lua_type(L, idx)) {
    case LUA_TNIL:
        return json_null();
    case LUA_TBOOLEAN:
        return json_boolean(lua_toboolean(L, idx));
    case LUA_TNUMBER: {
        if (nbl_isinteger(L, idx))
            return json_integer((json_int_t)lua_tointeger(L, idx));
        double d = (double)lua_tonumber(L, idx);
        if (!isfinite(d))
            return fail(c, "%g cannot be written in JSON", d);
        /* 2.0 is 2: integers survive whichever Lua computed them */
        if (d == floor(d) && fabs(d) <= 9007199254740992.0)
            return json_integer((json_int_t)d);
        return json_real(d);
    }
    case LUA_TSTRING: {
        size_t n, bad;
        const char *s = lua_tolstring(L, idx, &n);
        if (!nbl_utf8_valid(s, n, &bad))
            return fail(c, "the string is not valid UTF-8 (byte %zu)", bad);
        json_t *j = json_stringn_nocheck(s, n);
        return j ? j : fail(c, "out of memory");
    }
    case LUA_TLIGHTUSERDATA:
        if (lua_touserdata(L, idx) == NULL)
            return json_null(); /* core.null */
        return fail(c, "a light userdata cannot be written in JSON");
    case LUA_TTABLE:
        return table_to_json(c, lua_absindex(L, idx), depth);
    default:
        return fail(c, "a %s cannot be written in JSON", luaL_typename(L, idx));
    }
}

json_t *nbl_to_json(lua_State *L, int idx, const char *what, char *err, size_t errlen)
{
    conv c = {.L = L, .err = err, .errlen = errlen};
    snprintf(c.path, sizeof c.path, "%s", what);
    c.plen = strlen(c.path);
    return to_json(&c, lua_absindex(L, idx), 0);
}

/* ------------------------------------------------------------------ JSON -> Lua */

static void push(lua_State *L, const json_t *j, int depth)
{
    if (depth > MAX_PUSH_DEPTH || !lua_checkstack(L, 3)) {
        lua_pushnil(L); /* jansson refuses documents this deep: never reached */
        return;
    }
    switch (json_typeof(j)) {
    case JSON_OBJECT: {
        lua_createtable(L, 0, (int)json_object_size(j));
        const char *k;
        json_t *v;
        json_object_foreach((json_t *)j, k, v)
        {
            push(L, v, depth + 1);
            lua_setfield(L, -2, k);
        }
        break;
    }
    case JSON_ARRAY: {
        size_t n = json_array_size(j);
        lua_createtable(L, (int)n, 0);
        for (size_t i = 0; i < n; i++) {
            push(L, json_array_get(j, i), depth + 1);
            lua_rawseti(L, -2, (int)(i + 1));
        }
        if (n == 0)
            luaL_setmetatable(L, NBL_ARRAY_MT); /* so it is [] when sent back */
        break;
    }
    case JSON_STRING:
        lua_pushlstring(L, json_string_value(j), json_string_length(j));
        break;
    case JSON_INTEGER:
        lua_pushinteger(L, (lua_Integer)json_integer_value(j));
        break;
    case JSON_REAL:
        lua_pushnumber(L, (lua_Number)json_real_value(j));
        break;
    case JSON_TRUE:
        lua_pushboolean(L, 1);
        break;
    case JSON_FALSE:
        lua_pushboolean(L, 0);
        break;
    default:
        lua_pushlightuserdata(L, NULL);
        break;
    }
}

void nbl_push_json(lua_State *L, const json_t *j)
{
    push(L, j, 0);
}
