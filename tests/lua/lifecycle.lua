-- lifecycle.lua MODEL PROMPT N : cancelling, closing twice, closed objects,
-- garbage collection of objects nobody closed, and model:close() while
-- generations run.  Prints the text of a generation whose model object was
-- collected, for test_lua.c to compare with `nibble eval`.
local t = require("nbtest")
local core = t.core

local path, prompt, n = arg[1], arg[2], tonumber(arg[3])
-- a context far longer than any test runs, so generations with
-- n_predict = -1 only end when told to
local long = { n_predict = -1, ignore_eos = true }
local model = assert(core.open(path, { n_ctx = 32768, threads = 1 }))

-- cancel mid-stream
local h = assert(model:generate(prompt, long))
t.read_some(h, 3)
t.eq(h:cancel(), true, "cancel()")
local _, final = t.stream(h)
t.eq(final.stop_reason, "cancelled", "stop_reason after cancel()")
t.eq(h:cancel(), true, "cancel() after the end")
t.eq(h:close(), true, "close()")
t.eq(h:close(), true, "close() again")

-- a closed handle: nil, "closed", "closed"; done() is true
local v, msg, code = h:read()
t.eq(v, nil, "read() after close")
t.eq(msg, "closed", "message after close")
t.eq(code, "closed", "code after close")
t.eq(select(3, h:fd()), "closed", "fd() after close")
t.eq(select(3, h:wait(10)), "closed", "wait() after close")
t.eq(select(3, h:cancel()), "closed", "cancel() after close")
t.eq(h:done(), true, "done() after close")
t.eq(tostring(h), "nibble.generation (closed)", "tostring after close")

-- cancel before any event; wait with a timeout that expires
h = assert(model:generate(prompt, long))
local r1, m1, c1 = h:wait(1)
t.eq(r1, nil, "wait(1) on a long generation")
t.eq(c1, "timeout", "wait(1) code")
t.check(m1:find("timed out"), "wait(1) message %s", m1)
h:cancel()
local _, cf = h:wait(10000)
t.eq(cf.stop_reason, "cancelled", "cancelled before reading")
h:close()

-- closing a running generation cancels it
h = assert(model:generate(prompt, long))
t.read_some(h, 1)
h:close()

-- garbage: running generations and models nobody closed
for _ = 1, 3 do
  local m = assert(core.open(path, { n_ctx = 32768, threads = 1 }))
  local g = m:generate(prompt, long)
  t.read_some(g, 1)
  m:generate(prompt, { n_predict = 5 })
end
collectgarbage()
collectgarbage()

-- a generation keeps its model: the model object is collected meanwhile
local g = assert(core.open(path):generate(prompt, { n_predict = n, temperature = 0 }))
collectgarbage()
collectgarbage()
t.emit("orphan", tostring(g))

-- model:close() while generations run: they end "cancelled" and can
-- still be read; the model refuses further work
local m2 = assert(core.open(path, { n_ctx = 32768, threads = 1 }))
local running = { m2:generate(prompt, long), m2:generate(prompt, long) }
t.read_some(running[1], 2)
local done_one = m2:generate(prompt, { n_predict = 3, temperature = 0 })
local dtext, dfinal = done_one:wait()
t.eq(dfinal.stop_reason, "length", "a finished generation")
t.eq(m2:close(), true, "model:close()")
t.eq(m2:close(), true, "model:close() again")
for i, r in ipairs(running) do
  local _, f = t.stream(r, 10000)
  t.eq(f.stop_reason, "cancelled", "generation " .. i .. " after model:close()")
  t.eq(r:done(), true, "done()")
end
t.eq(select(1, done_one:wait()), dtext, "a finished generation after model:close()")
t.eq(select(3, m2:generate(prompt)), "closed", "generate() on a closed model")
t.eq(select(3, m2:tokenize("x")), "closed", "tokenize() on a closed model")
t.eq(select(3, m2:info()), "closed", "info() on a closed model")
t.eq(tostring(m2), "nibble.model (closed)", "tostring of a closed model")
running[1]:close()
running[1]:close()

-- to-be-closed variables close at the end of their block (Lua 5.4)
if _VERSION == "Lua 5.4" then
  local chunk = assert(load([[
    local core, path = ...
    local m <close> = assert(core.open(path))
    return m
  ]]))
  local closed_m = chunk(core, path)
  t.eq(tostring(closed_m), "nibble.model (closed)", "<close> closed the model")
end

-- left for the interpreter's exit to collect: a model with a running
-- generation
local last = assert(core.open(path, { n_ctx = 32768, threads = 1 }))
_G.keep = { last, last:generate(prompt, long) }
t.read_some(_G.keep[2], 1)
model:close()
print("lifecycle ok")
