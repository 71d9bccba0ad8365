-- hangup.lua SOCKET PID : the daemon is killed mid-stream.  Every
-- request still waiting ends with one error event of code "io", and the
-- client reports the lost connection.
local t = require("nbtest")
local core = t.core

local sock, pid = arg[1], arg[2]
local c = assert(core.connect({ socket = sock, autostart = false }))
local long = { op = "complete", prompt = "Once upon a time", n_predict = -1, ignore_eos = true }
local r1 = assert(c:request(long))
local r2 = assert(c:request(long))
t.read_some(r1, 2)
assert(os.execute("kill -9 " .. pid))
for i, r in ipairs({ r1, r2 }) do
  local _, final = t.stream(r, 10000)
  t.eq(final.error, "io", "error of request " .. i)
  t.eq(final.stop_reason, "error", "stop_reason of request " .. i)
  t.eq(final.done, true, "done of request " .. i)
  t.eq(final.id, r:id(), "id of request " .. i)
  t.eq(type(final.message), "string", "message of request " .. i)
end
local v, msg, code = c:request({ op = "status" })
t.eq(v, nil, "request() after the hang-up")
t.eq(code, "io", "code after the hang-up (" .. tostring(msg) .. ")")
c:close()
print("hangup ok")
