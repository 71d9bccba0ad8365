-- nibble.completion: suggestions as you type.
--
-- A keystroke in Insert mode costs little: it either consumes the typed
-- characters from the visible suggestion (no request, the mark just moves)
-- or cancels the request in flight, clears the ghost text and restarts the
-- debounce timer.  Only when the timer fires is the context read and an
-- infill request sent, under the buffer's own daemon session, so the
-- daemon's cache evaluates only what changed since the last request.
local M = {}

local api = vim.api
local uv = vim.uv or vim.loop
local client = require("nibble.client")
local context = require("nibble.context")
local ui = require("nibble.ui")

local opts = nil
local bufs = {} -- buf -> state
local timer = nil
M.stats = { requests = 0, cancelled = 0, consumed = 0, accepted = 0 }
-- make bench sets this to a table to collect {what, milliseconds} pairs:
-- the editor time each handler takes, and key-to-ghost-text latencies
M.timings = nil

local function timed(what, fn)
  return function(...)
    if not M.timings then
      return fn(...)
    end
    local t = uv.hrtime()
    fn(...)
    local list = M.timings
    list[#list + 1] = { what, (uv.hrtime() - t) / 1e6 }
  end
end

local MAX_ALTS = 5

local function st(buf)
  local s = bufs[buf]
  if not s then
    s = { alts = {}, alt = 0 }
    bufs[buf] = s
  end
  return s
end

function M.configure(o)
  opts = o
end

-- Is buf one that gets suggestions?
function M.enabled_for(buf)
  if not opts or not opts.enabled then
    return false
  end
  local b = vim.b[buf].nibble_enabled
  if b == false or b == 0 then
    return false
  end
  if vim.bo[buf].buftype ~= "" then
    return false
  end
  local ft = vim.bo[buf].filetype
  if opts.filetypes[ft] ~= nil then
    return opts.filetypes[ft]
  end
  if vim.tbl_contains(opts.disabled_filetypes, ft) then
    return false
  end
  if opts.filetypes["*"] ~= nil then
    return opts.filetypes["*"]
  end
  return true
end

local function cancel(s)
  if s.req then
    s.req.cancel()
    s.req = nil
    M.stats.cancelled = M.stats.cancelled + 1
  end
end

-- Forget the suggestion (and its alternatives) of buf.
local function reset(buf, s)
  cancel(s)
  ui.clear(buf)
  s.text = nil
  s.alts = {}
  s.alt = 0
end

local function split_lines(text)
  local lines = vim.split(text, "\n", { plain = true })
  if opts.max_lines > 0 and #lines > opts.max_lines then
    lines = { unpack(lines, 1, opts.max_lines) }
  end
  return lines
end

-- Draw the current suggestion if the cursor is still where it belongs.
local function render(buf, s)
  if api.nvim_get_current_buf() ~= buf or not s.text or s.text == "" then
    ui.clear(buf)
    return
  end
  local pos = api.nvim_win_get_cursor(0)
  if pos[1] - 1 ~= s.row or pos[2] ~= s.col then
    ui.clear(buf)
    return
  end
  ui.show(buf, s.row, s.col, split_lines(s.text))
end

local on_event = timed("event", function(buf, s, alt, ev)
  if ev.text and ev.text ~= "" then
    if not s.t_first then
      s.t_first = uv.hrtime()
      if M.timings and s.t_key then
        M.timings[#M.timings + 1] = { "latency", (s.t_first - s.t_key) / 1e6 }
      end
    end
    alt.text = alt.text .. ev.text
    if s.alts[s.alt] == alt then
      s.text = alt.text
      render(buf, s)
    end
  end
  if ev.done or ev.error then
    alt.done = true
    if s.req and s.req.alt == alt then
      s.req = nil
    end
    s.final = ev
    if ev.error then
      s.error = ev.message or ev.error
    end
  end
end)

-- Send a request for buf at the cursor; temperature/seed for alternatives.
local function request(buf, s, temperature, seed)
  local prefix, suffix, row, col = context.around_cursor(buf, 0, opts)
  local line = api.nvim_buf_get_lines(buf, row, row + 1, false)[1] or ""
  s.row, s.col, s.line_head = row, col, line:sub(1, col)
  local alt = { text = "" }
  local tbl = {
    op = "infill",
    prefix = prefix,
    suffix = suffix,
    context = context.chunks(buf),
    session = string.format("nvim-%d-%d", vim.fn.getpid(), buf),
    n_predict = opts.n_predict,
    n_prefix = opts.n_prefix,
    n_suffix = opts.n_suffix,
    temperature = temperature,
    fallback = "prefix",
  }
  if #tbl.context == 0 then
    tbl.context = nil
  end
  if seed then
    tbl.seed = seed
  end
  s.t_sent, s.t_first, s.error = uv.hrtime(), nil, nil
  local handle, msg = client.request(tbl, function(ev)
    on_event(buf, s, alt, ev)
  end)
  if not handle then
    s.error = msg
    return nil
  end
  handle.alt = alt
  s.req = handle
  M.stats.requests = M.stats.requests + 1
  return alt
end

-- Ask for a suggestion now (the debounce fired, or the user asked).
function M.trigger(buf)
  buf = buf or api.nvim_get_current_buf()
  if not M.enabled_for(buf) or not api.nvim_get_mode().mode:match("^i") then
    return
  end
  local s = st(buf)
  reset(buf, s)
  local alt = request(buf, s, opts.temperature, nil)
  if alt then
    s.alts = { alt }
    s.alt = 1
    s.text = ""
  end
end

local function debounce(buf)
  if not opts.auto_trigger then
    return
  end
  if not timer then
    timer = uv.new_timer()
  end
  timer:stop()
  timer:start(opts.debounce_ms, 0, vim.schedule_wrap(function()
    if api.nvim_get_current_buf() == buf then
      M.trigger(buf)
    end
  end))
end

-- Text changed in Insert mode: consume or restart.
function M.on_text_changed(buf)
  local s = bufs[buf]
  if not M.enabled_for(buf) then
    if s then
      reset(buf, s)
    end
    return
  end
  s = s or st(buf)
  local tick = api.nvim_buf_get_changedtick(buf)
  if s.tick == tick then
    return -- our own change (an accept), already accounted for
  end
  s.t_key = uv.hrtime()
  s.tick = tick
  local pos = api.nvim_win_get_cursor(0)
  local row, col = pos[1] - 1, pos[2]
  if s.text and s.text ~= "" and row == s.row and col > s.col then
    local line = api.nvim_buf_get_lines(buf, row, row + 1, false)[1] or ""
    local typed = line:sub(s.col + 1, col)
    if line:sub(1, s.col) == s.line_head and s.text:sub(1, #typed) == typed then
      -- typed what was suggested: shorten it, move the mark, ask nothing
      M.stats.consumed = M.stats.consumed + 1
      local alt = s.alts[s.alt]
      s.text = s.text:sub(#typed + 1)
      if alt then
        alt.text = s.text
      end
      s.col, s.line_head = col, line:sub(1, col)
      if s.text == "" and not s.req then
        reset(buf, s)
      else
        render(buf, s)
      end
      return
    end
  end
  reset(buf, s)
  debounce(buf)
end

-- The cursor moved without a change: the suggestion no longer applies.
function M.on_cursor_moved(buf)
  local s = bufs[buf]
  if s and s.tick == api.nvim_buf_get_changedtick(buf) then
    local pos = api.nvim_win_get_cursor(0)
    if pos[1] - 1 ~= s.row or pos[2] ~= s.col then
      reset(buf, s)
      if M.enabled_for(buf) then
        debounce(buf)
      end
    end
  end
end

function M.dismiss(buf)
  buf = buf or api.nvim_get_current_buf()
  if timer then
    timer:stop()
  end
  local s = bufs[buf]
  if s then
    reset(buf, s)
  end
end

function M.visible(buf)
  buf = buf or api.nvim_get_current_buf()
  local s = bufs[buf]
  if not s or not s.text or s.text == "" then
    return false
  end
  local pos = api.nvim_win_get_cursor(0)
  return pos[1] - 1 == s.row and pos[2] == s.col
end

-- The piece of text an accept takes.
local function piece(text, kind)
  if kind == "word" then
    return text:match("^%s*[%w_]+") or text:match("^%s*[^%w_%s]+") or text:match("^%s+") or text
  elseif kind == "line" then
    local nl = text:find("\n", 1, true)
    if nl == 1 then
      local nl2 = text:find("\n", 2, true)
      return nl2 and text:sub(1, nl2 - 1) or text
    end
    return nl and text:sub(1, nl - 1) or text
  end
  local lines = split_lines(text)
  return table.concat(lines, "\n")
end

-- Insert (part of) the suggestion.  Returns true when something was.
function M.accept(kind)
  local buf = api.nvim_get_current_buf()
  if not M.visible(buf) then
    return false
  end
  local s = bufs[buf]
  local take = piece(s.text, kind or "all")
  if take == "" then
    return false
  end
  local lines = vim.split(take, "\n", { plain = true })
  api.nvim_buf_set_text(buf, s.row, s.col, s.row, s.col, lines)
  local row = s.row + #lines - 1
  local col = (#lines == 1 and s.col or 0) + #lines[#lines]
  api.nvim_win_set_cursor(0, { row + 1, col })
  M.stats.accepted = M.stats.accepted + 1
  local rest = s.text:sub(#take + 1)
  if (kind or "all") == "all" or rest == "" then
    reset(buf, s)
    debounce(buf) -- and on to the next suggestion
  else
    -- keep showing the rest at the new cursor
    local line = api.nvim_buf_get_lines(buf, row, row + 1, false)[1] or ""
    s.text, s.row, s.col, s.line_head = rest, row, col, line:sub(1, col)
    s.alts = { { text = rest, done = true } }
    s.alt = 1
    render(buf, s)
  end
  s.tick = api.nvim_buf_get_changedtick(buf)
  return true
end

-- Show the next (dir = 1) or previous (-1) alternative, asking the daemon
-- for a new one (sampled, at alt_temperature) past the end of the list.
function M.cycle(dir)
  local buf = api.nvim_get_current_buf()
  local s = bufs[buf]
  if not s or #s.alts == 0 then
    M.trigger(buf)
    return
  end
  local i = s.alt + dir
  if i < 1 then
    i = #s.alts
  end
  if i > #s.alts then
    if #s.alts >= MAX_ALTS then
      i = 1
    else
      cancel(s)
      -- back at the position the alternatives belong to
      local alt = request(buf, s, opts.alt_temperature, math.random(0, 2 ^ 31))
      if not alt then
        return
      end
      s.alts[#s.alts + 1] = alt
    end
  end
  s.alt = i
  s.text = s.alts[i].text
  render(buf, s)
end

-- For the statusline and :NibStatus.
function M.status()
  if not opts or not opts.enabled then
    return "off"
  end
  local buf = api.nvim_get_current_buf()
  local s = bufs[buf]
  if not M.enabled_for(buf) then
    return "off here"
  end
  if not s then
    return "idle"
  end
  if s.error then
    return "error"
  end
  if s.req and not (s.text and s.text ~= "") then
    return "thinking"
  end
  if s.text and s.text ~= "" and s.t_first and s.t_sent then
    return string.format("%d/%d %.0f ms", s.alt, #s.alts, (s.t_first - s.t_sent) / 1e6)
  end
  return "idle"
end

-- The state of buf's suggestion, for tests and :NibStatus.
function M.debug(buf)
  local s = bufs[buf or api.nvim_get_current_buf()]
  if not s then
    return {}
  end
  local infill = s.final and s.final.infill
  return {
    text = s.text,
    pending = s.req ~= nil,
    row = s.row,
    col = s.col,
    alts = #s.alts,
    error = s.error,
    fim = infill and infill.fim, -- whether the last answer used the model's FIM format
  }
end

M.on_text_changed = timed("keystroke", M.on_text_changed)
M.on_cursor_moved = timed("cursor", M.on_cursor_moved)
M.trigger = timed("request", M.trigger)

function M.last_error(buf)
  local s = bufs[buf or api.nvim_get_current_buf()]
  return s and s.error
end

function M.forget(buf)
  local s = bufs[buf]
  if s then
    reset(buf, s)
    bufs[buf] = nil
  end
end

return M
