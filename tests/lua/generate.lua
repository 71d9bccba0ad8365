-- generate.lua MODEL PROMPT N : greedy in-process generation, printed for
-- test_lua.c to compare with `nibble eval --greedy N`: through wait(),
-- through fd + read() as an event loop does, from token ids, at one and
-- two threads; then stop strings and the reuse of the cached prompt.
local t = require("nbtest")
local core = t.core

local path, prompt, n = arg[1], arg[2], tonumber(arg[3])
local model = assert(core.open(path, { threads = 2 }))
local greedy = { n_predict = n, temperature = 0 }

-- wait(): the whole text and the final event
local h = assert(model:generate(prompt, greedy))
local text, final = h:wait()
t.emit("wait", text)
t.check(h:done(), "done() after wait()")
t.eq(final.done, true, "final.done")
t.check(final.stop_reason == "length" or final.stop_reason == "eos", "stop_reason %s",
  tostring(final.stop_reason))
t.eq(final.n_prompt, #model:tokenize(prompt), "n_prompt")
t.check(final.n_generated >= 1 and final.n_generated <= n, "n_generated %s", final.n_generated)
t.eq(type(final.timings), "table", "timings")
-- waiting again gives the same; read() has nothing more
local again = h:wait(0)
t.eq(again, text, "wait() again")
t.eq(#h:read(), 0, "read() after the end")
h:close()

-- streaming: pieces through the descriptor, then the final event
h = assert(model:generate(prompt, greedy))
local streamed, sfinal, nev = t.stream(h)
t.emit("stream", streamed)
t.check(nev > 2, "only %d events streamed", nev)
t.eq(sfinal.stop_reason, final.stop_reason, "stop_reason when streamed")
-- the second run found the first one's cache: only the last prompt token
-- was evaluated again
t.eq(sfinal.n_cached, sfinal.n_prompt - 1, "n_cached on the second run")
t.eq(select(1, h:wait()), streamed, "wait() after streaming returns the whole text")
h:close()

-- token ids instead of text
h = assert(model:generate(model:tokenize(prompt), greedy))
t.emit("tokens", (h:wait()))
h:close()

-- one thread
local one = assert(core.open(path, { threads = 1 }))
t.emit("threads1", tostring(one:generate(prompt, greedy)))
one:close()

-- a stop string: the text up to it, without it
local cut = text:find(" ", 8, true)
if cut then
  local stop = text:sub(cut, cut + 2)
  local before = text:sub(1, text:find(stop, 1, true) - 1)
  local st, sf = model:generate(prompt, { n_predict = n, temperature = 0, stop = { stop } }):wait()
  t.eq(st, before, "text before the stop string")
  t.eq(sf.stop_reason, "stop", "stop_reason with a stop string")
end

-- the same seed gives the same sampled text
local s1 = tostring(model:generate(prompt, { n_predict = n, seed = 42 }))
local s2 = tostring(model:generate(prompt, { n_predict = n, seed = 42, temperature = 0.8 }))
t.eq(s1, s2, "a seed reproduces its text")

-- n_predict = 0 evaluates the prompt only
local zt, zf = model:generate(prompt, { n_predict = 0 }):wait()
t.eq(zt, "", "text with n_predict 0")
t.eq(zf.n_generated, 0, "n_generated with n_predict 0")
model:close()
print("generate ok")
