-- errors.lua MODEL NOT_GGUF : expected failures return nil, message, code;
-- wrong argument types raise.
local t = require("nbtest")
local core = t.core

local path, not_gguf = arg[1], arg[2]

local function fails(code, fn, ...)
  local v, msg, c = fn(...)
  t.eq(v, nil, "value of a failure (" .. code .. ")")
  t.eq(type(msg), "string", "message of a failure")
  t.eq(c, code, "code (message: " .. tostring(msg) .. ")")
  return msg
end

local function raises(pattern, fn, ...)
  local ok, err = pcall(fn, ...)
  t.check(not ok, "no error raised (wanted one matching %q)", pattern)
  t.check(tostring(err):find(pattern), "error %q does not match %q", tostring(err), pattern)
end

-- opening
local missing = "/nonexistent/dir/model.gguf"
local msg = fails("not_found", core.open, missing)
t.check(msg:find(missing, 1, true), "the message names the path: %s", msg)
msg = fails("format", core.open, not_gguf)
t.check(msg:find(not_gguf, 1, true), "the message names the path: %s", msg)
fails("bad_request", core.open, path, { threads = -1 })
raises("threads", core.open, path, { threads = "four" })
raises("string expected", core.open)
raises("table expected", core.open, path, 5)

local model = assert(core.open(path))
-- generate: types raise, values return
raises("temperature must be a number", model.generate, model, "x", { temperature = "hot" })
raises("n_predict must be an integer", model.generate, model, "x", { n_predict = 1.5 })
raises("stop must be", model.generate, model, "x", { stop = { 1 } })
raises("ignore_eos must be a boolean", model.generate, model, "x", { ignore_eos = 1 })
raises("prompt", model.generate, model, nil)
raises("token ids must be integers", model.generate, model, { 1, "a" })
fails("bad_request", model.generate, model, "x", { temperature = -1 })
fails("bad_request", model.generate, model, "x", { top_p = 0 })
fails("bad_request", model.generate, model, "x", { n_predict = -5 })
fails("bad_request", model.generate, model, "x", { stop = { "" } })
fails("bad_request", model.generate, model, "x", { stop = { "\255" } })
fails("bad_request", model.generate, model, "x", { seed = -1 })
msg = fails("bad_request", model.generate, model, { 1, 99999 })
t.check(msg:find("99999"), "the message names the token: %s", msg)
fails("bad_request", model.generate, model, "", { add_bos = false })
fails("bad_request", model.detokenize, model, { 1, -3 })
raises("table expected", model.tokenize, model, "x", "bos")
raises("bos must be a boolean", model.tokenize, model, "x", { bos = "yes" })
raises("nibble.model expected", model.tokenize, {}, "x")

-- a prompt longer than the context
local small = assert(core.open(path, { n_ctx = 8 }))
msg = fails("context_full", small.generate, small, string.rep("once upon a time ", 10))
t.check(msg:find("8%-token context"), "the message gives the context: %s", msg)
-- the context fills while generating: stop_reason "length"
local _, f = small:generate("Once", { n_predict = 100, temperature = 0 }):wait()
t.eq(f.stop_reason, "length", "stop_reason when the context fills")
t.check(f.n_prompt + f.n_generated <= 9, "generated past the context: %d + %d", f.n_prompt,
  f.n_generated)
small:close()

-- vocabulary only: tokenizes, does not generate
local vocab = assert(core.open(path, { vocab_only = true }))
t.eq(#vocab:tokenize("Hello"), #model:tokenize("Hello"), "vocab_only tokenize")
fails("unsupported", vocab.generate, vocab, "Hello")
vocab:close()
model:close()

-- JSON
raises("not valid UTF%-8", core.encode, { prompt = "caf\233" })
raises("not valid UTF%-8", core.encode, { ["k\255"] = 1 })
raises("mixes", core.encode, { 1, 2, x = 3 })
raises("holes", core.encode, { 1, nil, 3 })
raises("function", core.encode, { f = print })
raises("cannot be written", core.encode, { x = 0 / 0 })
local cyc = {}
cyc.self = cyc
raises("nested", core.encode, cyc)
fails("format", core.decode, "{")
fails("format", core.decode, '"\255"')

-- descriptors
raises("file descriptor", core.poll, -1)
raises("file descriptor", core.poll, "x")
print("errors ok")
