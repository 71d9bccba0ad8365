-- nbtest.lua - helpers for the scripts tests/test_lua.c runs: failing with
-- a message, printing values for the C side to compare, and draining a
-- handle through its descriptor the way an event loop would.
local core = require("nibble.core")

local M = { core = core }

-- Fail the script (exit status 1, message and traceback on stderr).
function M.check(cond, fmt, ...)
  if not cond then
    error(string.format(fmt or "check failed", ...), 2)
  end
  return cond
end

function M.eq(got, want, what)
  if got ~= want then
    error(string.format("%s: got %q, want %q", what or "value", tostring(got), tostring(want)), 2)
  end
end

-- Print a value for test_lua.c: "label <length>\n<bytes>\n".
function M.emit(label, s)
  s = tostring(s)
  io.write(label, " ", #s, "\n", s, "\n")
  io.flush()
end

-- Read a handle (request or generation) to its end by polling fd and
-- calling read(), as an event loop does.  Returns the text, the final
-- event and the number of events.
function M.stream(h, timeout_ms)
  local parts, final, n = {}, nil, 0
  local deadline = os.time() + math.ceil((timeout_ms or 30000) / 1000) + 1
  while not h:done() do
    M.check(os.time() <= deadline, "no final event in time")
    local events = assert(h:read())
    if #events == 0 then
      core.poll(assert(h:fd()), 200)
    end
    for _, ev in ipairs(events) do
      n = n + 1
      M.check(final == nil, "an event after the final one")
      if ev.done or ev.stop_reason or ev.error then
        final = ev
      else
        M.check(type(ev.text) == "string", "an event that is neither text nor final")
      end
      if ev.text then
        parts[#parts + 1] = ev.text
      end
    end
  end
  M.check(final ~= nil, "done() before the final event was read")
  return table.concat(parts), final, n
end

-- Read until at least n events arrived (not the final one); returns them.
function M.read_some(h, n)
  local got = {}
  local deadline = os.time() + 30
  while #got < n do
    M.check(os.time() <= deadline, "fewer than %d events", n)
    local events = assert(h:read())
    if #events == 0 then
      core.poll(assert(h:fd()), 200)
    end
    for _, ev in ipairs(events) do
      M.check(not ev.done, "the request ended early: %s", tostring(ev.stop_reason))
      got[#got + 1] = ev
    end
  end
  return got
end

function M.ids(t)
  local s = {}
  for i, v in ipairs(t) do
    s[i] = string.format("%d", v)
  end
  return table.concat(s, " ")
end

return M
