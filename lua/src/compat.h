/*
 * compat.h - the slice of the Lua C API that nibble.core uses, the same
 * under Lua 5.1 (and LuaJIT 2.1, which Neovim embeds), 5.2, 5.3 and 5.4.
 *
 * The module is written to the 5.4 API; this header supplies what older
 * versions lack (LPeg's lptypes.h does the same).  Only functions all of
 * them share are used elsewhere: nothing here needs liblua at link time.
 */
#ifndef NBL_COMPAT_H
#define NBL_COMPAT_H

#include <lua.h>
#include <lauxlib.h>

#ifndef LUA_OK
#define LUA_OK 0
#endif

#if LUA_VERSION_NUM < 502
/* 5.1 and LuaJIT */
#define nbl_rawlen(L, i) lua_objlen(L, (i))
#ifndef lua_absindex
#define lua_absindex(L, i) \
    ((i) > 0 || (i) <= LUA_REGISTRYINDEX ? (i) : lua_gettop(L) + (i) + 1)
#endif
#else
#define nbl_rawlen(L, i) lua_rawlen(L, (i))
#endif

/* LuaJIT 2.1 has these 5.2 functions (luaL_newlib is its macro); plain 5.1
 * does not. */
#if LUA_VERSION_NUM < 502 && !defined(luaL_newlib)
static inline void luaL_setfuncs(lua_State *L, const luaL_Reg *l, int nup)
{
    luaL_checkstack(L, nup + 1, "too many upvalues");
    for (; l->name; l++) {
        for (int i = 0; i < nup; i++)
            lua_pushvalue(L, -nup);
        lua_pushcclosure(L, l->func, nup);
        lua_setfield(L, -(nup + 2), l->name);
    }
    lua_pop(L, nup);
}

static inline void *luaL_testudata(lua_State *L, int i, const char *tname)
{
    void *p = lua_touserdata(L, i);
    if (!p || !lua_getmetatable(L, i))
        return NULL;
    luaL_getmetatable(L, tname);
    int same = lua_rawequal(L, -1, -2);
    lua_pop(L, 2);
    return same ? p : NULL;
}

static inline void luaL_setmetatable(lua_State *L, const char *tname)
{
    luaL_getmetatable(L, tname);
    lua_setmetatable(L, -2);
}

#define luaL_newlib(L, l) (lua_newtable(L), luaL_setfuncs(L, l, 0))
#endif

/* 1 when the value at i is a number with an integer subtype (5.3+).  Under
 * 5.1 and 5.2 every number is a double, and callers look at its value. */
#if LUA_VERSION_NUM >= 503
#define nbl_isinteger(L, i) lua_isinteger(L, (i))
#else
#define nbl_isinteger(L, i) 0
#endif

/* lua_newuserdata is lua_newuserdatauv(L, size, 1) in 5.4: fine as is. */

#endif
