-- client.lua SOCKET PROMPT_A PROMPT_B N : nibble.core against a private
-- nibd.  Prints the greedy texts for test_lua.c to compare with `nibble
-- eval`, and the ids of a tokenize call for `nibble tokenize`.
local t = require("nbtest")
local core = t.core

local sock, pa, pb, n = arg[1], arg[2], arg[3], tonumber(arg[4])
local function greedy(prompt, extra)
  local r = { op = "complete", prompt = prompt, n_predict = n, temperature = 0 }
  for k, v in pairs(extra or {}) do
    r[k] = v
  end
  return r
end

local c = assert(core.connect({ socket = sock, autostart = false }))
t.eq(math.type and math.type(c:fd()) or type(c:fd()), math.type and "integer" or "number", "fd")

-- tokenize through call()
local text, fin = assert(c:call({ op = "tokenize", text = pa }, 10000))
t.eq(text, "", "text of a tokenize reply")
t.emit("tokenize", t.ids(fin.tokens))

-- complete, streamed through the descriptor
local r = assert(c:request(greedy(pa)))
t.eq(type(r:id()), "number", "an id was assigned")
local streamed, final, nev = t.stream(r)
t.emit("stream", streamed)
t.check(nev > 2, "only %d events", nev)
t.eq(final.id, r:id(), "the final event's id")
t.check(final.stop_reason == "length" or final.stop_reason == "eos", "stop_reason %s",
  tostring(final.stop_reason))
t.eq(select(1, r:wait(0)), streamed, "wait() after streaming")
r:close()

-- call(): the text and the final event; stream = false puts the text in it
text, fin = assert(c:call(greedy(pb), 30000))
t.emit("call", text)
t.eq(fin.done, true, "call's final event")
local whole = assert(c:call(greedy(pb, { stream = false }), 30000))
t.eq(whole, text, "stream = false")
t.eq(tostring(c:request(greedy(pb))), text, "tostring(request)")

-- two requests on one connection, read in turns
local a = assert(c:request(greedy(pa)))
local b = assert(c:request(greedy(pb, { id = "b" })))
t.eq(b:id(), "b", "an id of the caller's")
local parts = { [a] = {}, [b] = {} }
local deadline = os.time() + 30
while not (a:done() and b:done()) do
  t.check(os.time() <= deadline, "two requests did not end")
  core.poll(c:fd(), 200)
  for _, h in ipairs({ b, a }) do
    for _, ev in ipairs(h:read()) do
      t.eq(ev.id, h:id(), "an event filed under the wrong request")
      if ev.text then
        table.insert(parts[h], ev.text)
      end
    end
  end
end
t.emit("a", table.concat(parts[a]))
t.emit("b", table.concat(parts[b]))
a:close()
b:close()

-- ids: in use is refused, and free again after close
local long = { op = "complete", prompt = pa, n_predict = -1, ignore_eos = true }
local l1 = assert(c:request({ op = "complete", id = 7, prompt = pa, n_predict = -1,
  ignore_eos = true }))
local v, msg, code = c:request({ op = "status", id = 7 })
t.eq(v, nil, "a request with an id in use")
t.eq(code, "bad_request", "code of an id in use (" .. tostring(msg) .. ")")
-- cancel mid-stream: the final event says so, the cancel's reply is
-- nobody's event
t.read_some(l1, 2)
t.eq(l1:cancel(), true, "cancel()")
local _, cfinal = t.stream(l1)
t.eq(cfinal.stop_reason, "cancelled", "stop_reason after cancel()")
l1:close()
l1:close()
-- closing a running request cancels it; the connection goes on
local l2 = assert(c:request(long))
t.read_some(l2, 1)
l2:close()
-- the daemon frees the slots soon (the generations would otherwise run
-- for 100,000 tokens); id 7 is free again
local busy, sdeadline = true, os.time() + 5
while busy do
  t.check(os.time() <= sdeadline, "a slot still busy 5 s after cancel and close")
  local st, status = assert(c:call({ op = "status", id = 7 }, 10000))
  t.eq(st, "", "text of a status reply")
  t.eq(type(status.slots), "table", "slots in status")
  busy = false
  for _, slot in ipairs(status.slots) do
    busy = busy or slot.busy
  end
  if busy then
    core.poll(c:fd(), 20)
  end
end

-- the daemon's errors: call() returns nil, message, code, final event
local nv, nmsg, ncode, nfin = c:call({ op = "complete", prompt = "x", n_predict = -5 }, 10000)
t.eq(nv, nil, "call() of a bad request")
t.eq(ncode, "invalid_request", "code of a bad request")
t.check(nmsg:find("n_predict"), "message names the key: %s", nmsg)
t.eq(nfin.stop_reason, "error", "final event of a bad request")
t.eq(select(3, c:call({ op = "nonsense" }, 10000)), "unknown_op", "unknown op")
-- ... and request() shows the error event
r = assert(c:request({ op = "complete", prompt = "x", temperature = "hot" }))
local _, efinal = t.stream(r)
t.eq(efinal.error, "invalid_request", "error event")
r:close()

-- requests the module refuses: raised before anything is sent
local ok, err = pcall(c.request, c, { op = "complete", prompt = "caf\233" })
t.check(not ok and err:find("request.prompt: the string is not valid UTF%-8"), "invalid UTF-8: %s",
  tostring(err))
ok, err = pcall(c.request, c, { op = "complete", prompt = "x", id = 1.5 })
t.check(not ok and err:find("id"), "a fractional id: %s", tostring(err))
ok = pcall(c.request, c, "status")
t.check(not ok, "a request that is not a table")
t.eq(select(3, c:call({ op = "complete", prompt = string.rep("x", 9 * 1024 * 1024) })),
  "bad_request", "a request over 8 MiB")

-- a timeout: nil, message, "timeout", and the request is cancelled
local tv, _, tcode = c:call(long, 50)
t.eq(tv, nil, "call() that times out")
t.eq(tcode, "timeout", "code of a timeout")
local wr = assert(c:request(long))
t.eq(select(3, wr:wait(30)), "timeout", "wait() that times out")

-- a request keeps its connection: the client object is collected
local orphan = assert(core.connect({ socket = sock, autostart = false }):request(greedy(pa)))
collectgarbage()
collectgarbage()
t.emit("orphan", (orphan:wait(30000)))

-- closing the client ends what is outstanding with an error event
t.eq(c:close(), true, "client:close()")
t.eq(c:close(), true, "client:close() again")
local evs = wr:read()
t.eq(#evs >= 1 and evs[#evs].error, "closed", "outstanding request after client:close()")
t.eq(evs[#evs].stop_reason, "error", "its stop_reason")
t.eq(wr:done(), true, "done() after client:close()")
t.eq(select(3, c:request({ op = "status" })), "closed", "request() after close")
t.eq(select(3, c:fd()), "closed", "fd() after close")
t.eq(select(3, c:call({ op = "status" })), "closed", "call() after close")
t.eq(tostring(c), "nibble.client (closed)", "tostring after close")
wr:close()

-- garbage nobody closed: a client with a running request
do
  local g = assert(core.connect(sock))
  local gr = assert(g:request(long))
  t.read_some(gr, 1)
end
collectgarbage()
collectgarbage()

-- nothing listening, no auto-start
local dead = sock .. ".none"
local dv, dmsg, dcode = core.connect({ socket = dead, autostart = false })
t.eq(dv, nil, "connect to a dead socket")
t.eq(dcode, "io", "code (" .. tostring(dmsg) .. ")")
t.check(dmsg:find(dead, 1, true), "the message names the socket: %s", dmsg)
orphan:close()
print("client ok")
