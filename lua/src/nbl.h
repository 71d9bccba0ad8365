/*
 * nbl.h - what the files of the Lua module nibble.core share: error
 * returns, option tables, JSON conversion, and the event stream that
 * daemon requests and in-process generations both present.
 */
#ifndef NBL_H
#define NBL_H

#include <stddef.h>

#include <jansson.h>

#include "compat.h"
#include "nibble.h"

#define NBL_ARRAY_MT "nibble.array"
#define NBL_CLIENT_MT "nibble.client"
#define NBL_REQUEST_MT "nibble.request"
#define NBL_MODEL_MT "nibble.model"
#define NBL_GEN_MT "nibble.generation"

/* Push nil, message, code and return 3: every expected failure. */
int nbl_fail(lua_State *L, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* The short code of a status: "io", "format", "unsupported", "nomem",
 * "bad_request", "context_full", "cancelled". */
const char *nbl_status_code(nb_status st);
/* nil, "closed", "closed". */
int nbl_closed(lua_State *L);

/* Option tables.  The value of t[key] is pushed and its type returned
 * (LUA_TNIL when idx is not a table).  The typed readers pop it again,
 * return 1 when the key is present, and raise an argument error naming
 * the key when its type is wrong.  Strings stay valid while the table
 * holds them. */
int nbl_opt(lua_State *L, int idx, const char *key);
int nbl_opt_int(lua_State *L, int idx, int arg, const char *key, long long *out);
int nbl_opt_num(lua_State *L, int idx, int arg, const char *key, double *out);
int nbl_opt_bool(lua_State *L, int idx, int arg, const char *key, int *out);
const char *nbl_opt_str(lua_State *L, int idx, int arg, const char *key, size_t *len);
/* An integer from any number subtype: 1 and *out, or 0 when the value is
 * not an integer (a string, 1.5, nan, out of range). */
int nbl_to_int(lua_State *L, int idx, long long *out);

/* JSON (json.c).  nbl_to_json converts the value at idx; on failure it
 * returns NULL with a message naming the place (what.key[i]: problem). */
json_t *nbl_to_json(lua_State *L, int idx, const char *what, char *err, size_t errlen);
/* Push a JSON value: objects and arrays become tables (an empty array
 * gets the nibble.array metatable), null becomes core.null. */
void nbl_push_json(lua_State *L, const json_t *j);
/* 1 when s is valid UTF-8; else 0 and *bad the offset of the first bad
 * byte. */
int nbl_utf8_valid(const char *s, size_t n, size_t *bad);

/* Events as a handle's user sees them: read() hands out events, and the
 * stream keeps the text of every event handed out and the final one, for
 * wait() and tostring(). */
typedef struct nbl_stream {
    char *text;
    size_t len, cap;
    json_t *final; /* once handed out */
    int done;
} nbl_stream;

/* Note an event handed out (text appended; final kept when is_final). */
void nbl_stream_note(nbl_stream *s, json_t *ev, int is_final);
/* Push the whole text and the final event (or nil). */
void nbl_stream_push_result(lua_State *L, const nbl_stream *s);
void nbl_stream_free(nbl_stream *s);

/* poll() one descriptor for input: 1 readable (or hung up), 0 timed out,
 * -1 error (errno).  timeout_ms < 0 waits for ever. */
int nbl_poll_fd(int fd, int timeout_ms);
double nbl_now_ms(void);

/* A metatable for userdata of one kind: methods as __index, and __gc,
 * __close (Lua 5.4's to-be-closed variables) and __tostring. */
void nbl_new_class(lua_State *L, const char *name, const luaL_Reg *methods, lua_CFunction gc,
                   lua_CFunction tostring, lua_CFunction close);

/* Register the metatables and put the constructors into the module table
 * on top of the stack. */
void nbl_open_client(lua_State *L);
void nbl_open_engine(lua_State *L);

#endif
