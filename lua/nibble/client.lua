-- nibble.client: one connection to nibd for the whole editor, watched by
-- the event loop.  Requests stream their events to callbacks; nothing here
-- ever blocks the editor except connect(), which may start the daemon.
local M = {}

local uv = vim.uv or vim.loop

local state = {
  conn = nil, -- nibble.core client
  poll = nil, -- uv poll handle on its descriptor
  reading = false, -- a scheduled read is pending
  requests = {}, -- id -> { req = handle, on_event = fn }
  opts = nil,
  last_error = nil,
}

local core_ok, core = pcall(require, "nibble.core")

-- The Lua C module, or nil and why it could not be loaded.
function M.core()
  if core_ok then
    return core
  end
  return nil, tostring(core)
end

function M.configure(opts)
  state.opts = opts
end

local function drop_connection(why)
  if state.poll then
    state.poll:stop()
    if not state.poll:is_closing() then
      state.poll:close()
    end
    state.poll = nil
  end
  if state.conn then
    state.conn:close()
    state.conn = nil
  end
  -- whoever waits hears of it once
  local pending = state.requests
  state.requests = {}
  for _, r in pairs(pending) do
    pcall(r.on_event, { done = true, stop_reason = "error", error = "io", message = why })
  end
end

local read_now

local function arm()
  if not state.poll then
    return
  end
  state.poll:start("r", function(err)
    -- a fast callback: no editor API here.  Stop watching until the
    -- scheduled read has drained the socket, so that one burst of data
    -- schedules one read.
    state.poll:stop()
    if err then
      vim.schedule(function()
        drop_connection("nibd: " .. tostring(err))
      end)
      return
    end
    if not state.reading then
      state.reading = true
      vim.schedule(read_now)
    end
  end)
end

read_now = function()
  state.reading = false
  -- reading for one request may queue another's events in the module, so
  -- go round until a pass delivers nothing
  local delivered = true
  while delivered do
    delivered = false
    local list = {} -- callbacks may start new requests: walk a copy
    for id, r in pairs(state.requests) do
      list[#list + 1] = { id, r }
    end
    for _, pair in ipairs(list) do
      local id, r = pair[1], pair[2]
      local events = r.req:read()
      if events and #events > 0 then
        delivered = true
        for _, ev in ipairs(events) do
          local ok, msg = pcall(r.on_event, ev)
          if not ok then
            vim.notify("nibble: " .. tostring(msg), vim.log.levels.ERROR)
          end
        end
      end
      if r.req:done() and state.requests[id] == r then
        state.requests[id] = nil
        r.req:close()
      end
    end
  end
  if state.conn then
    arm()
  end
end

-- Connect when needed.  Returns true, or false and a message.
function M.ensure()
  if state.conn then
    return true
  end
  local c, why = M.core()
  if not c then
    return false, "the module nibble.core is not built (run make in the plugin's directory): " .. why
  end
  local o = state.opts or {}
  local conn, msg = c.connect({ socket = o.socket, model = o.model, autostart = o.autostart ~= false })
  if not conn then
    state.last_error = msg
    return false, msg
  end
  state.conn = conn
  state.last_error = nil
  state.poll = uv.new_poll(conn:fd())
  arm()
  return true
end

-- Send a request; on_event(ev) gets each event, the last one with `done`
-- or `error`.  Returns a handle with :cancel(), or nil and a message.
function M.request(tbl, on_event)
  -- the configured adapters go with every generation request that names none
  local lora = state.opts and state.opts.lora
  if lora and #lora > 0 and tbl.lora == nil and (tbl.op == "infill" or tbl.op == "complete" or tbl.op == "chat") then
    tbl.lora = lora
  end
  local ok, msg = M.ensure()
  if not ok then
    return nil, msg
  end
  local req, err = state.conn:request(tbl)
  if not req then
    -- the daemon may have gone: one reconnection, then give up
    drop_connection(err)
    ok, msg = M.ensure()
    if not ok then
      return nil, msg
    end
    req, err = state.conn:request(tbl)
    if not req then
      return nil, err
    end
  end
  local id = {}
  state.requests[id] = { req = req, on_event = on_event }
  local handle = {}
  function handle.cancel()
    if state.requests[id] then
      state.requests[id] = nil
      req:close() -- cancels it at the daemon when still running
    end
  end
  return handle
end

-- A blocking call for :checkhealth and :NibStatus: the final event, or nil
-- and a message.
function M.call(tbl, timeout_ms)
  local ok, msg = M.ensure()
  if not ok then
    return nil, msg
  end
  local text, final = state.conn:call(tbl, timeout_ms or 5000)
  if text == nil then
    return nil, final
  end
  return final, text
end

function M.last_error()
  return state.last_error
end

function M.connected()
  return state.conn ~= nil
end

function M.close()
  drop_connection("closed")
end

return M
