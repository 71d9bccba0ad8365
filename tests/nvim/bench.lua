-- make bench: what the Neovim plugin costs the editor, and how soon a
-- suggestion shows.  Drives the editor (tests/nvim/editor.lua) over RPC
-- like tests/nvim/driver.lua; prints figures, asserts nothing.
local ch = vim.fn.sockconnect("pipe", os.getenv("NIBBLE_ADDR"), { rpc = true })
local function lua(code, ...)
  return vim.rpcrequest(ch, "nvim_exec_lua", code, { ... })
end
local function input(keys)
  vim.rpcrequest(ch, "nvim_input", keys)
end
local function say(fmt, ...)
  io.stdout:write(string.format(fmt, ...) .. "\n")
  io.stdout:flush()
end

local function pct(list, p)
  if #list == 0 then
    return 0 / 0
  end
  table.sort(list)
  local i = math.max(1, math.ceil(#list * p / 100))
  return list[i]
end

local function timings(kind)
  local all = lua("return require('nibble.completion').timings")
  local out = {}
  for _, t in ipairs(all) do
    if t[1] == kind then
      out[#out + 1] = t[2]
    end
  end
  return out
end

local function idle()
  vim.wait(10000, function()
    return not lua("return require('nibble.completion').debug().pending")
  end, 5)
end

-- a C-like buffer of n lines
local function fill(n)
  lua([[
    local n = ...
    vim.cmd("enew!")
    vim.bo.filetype = "c"
    local lines = {}
    for i = 1, n do
      lines[i] = string.format("    total += compute_value(items[%d], %d); /* step %d */", i % 97, i, i)
    end
    vim.api.nvim_buf_set_lines(0, 0, -1, false, lines)
    vim.api.nvim_win_set_cursor(0, { math.floor(n / 2), 0 })
  ]], n)
end

say("Neovim plugin (headless Neovim %s), debounce %d ms:", lua("return tostring(vim.version().major..'.'..vim.version().minor..'.'..vim.version().patch)"),
  lua("return require('nibble').options.debounce_ms"))

for _, n in ipairs({ 1000, 100000 }) do
  fill(n)
  lua("require('nibble.completion').timings = {}")
  input("A")
  local text = "if (total > limit) { return total; } "
  for i = 1, 160 do
    local c = text:sub((i - 1) % #text + 1, (i - 1) % #text + 1)
    input(c == "<" and "<lt>" or c)
    -- bursts of typing, with a pause (a request) every 8 keys
    vim.wait(i % 8 == 0 and 150 or 12)
  end
  idle()
  input("<Esc>")
  local k, r, e = timings("keystroke"), timings("request"), timings("event")
  say("  %6d-line buffer: per keystroke p50 %.3f ms, p99 %.3f ms (%d keys); per request sent p50 %.3f ms, p99 %.3f ms (%d); per event p99 %.3f ms",
    n, pct(k, 50), pct(k, 99), #k, pct(r, 50), pct(r, 99), #r, pct(e, 99))
end

-- latency: from the last keystroke to the first ghost-text character
local function latency(samples, settle)
  lua("require('nibble.completion').timings = {}")
  local got = {}
  for i = 1, samples do
    local before = #timings("latency")
    input(i % 2 == 0 and "a" or "b")
    vim.wait(settle, function()
      return #timings("latency") > before
    end, 2)
    idle()
  end
  got = timings("latency")
  return got
end

lua([[vim.cmd("enew!") vim.bo.filetype = "text"]])
input("iOnce upon a time there was a little")
vim.wait(3000, function() return #(lua("return require('nibble.completion').timings") or {}) > 0 end)
idle()
local l = latency(20, 3000)
say("  latency, stories260K: p50 %.1f ms, max %.1f ms over %d keystrokes (the debounce included)", pct(l, 50), pct(l, 100), #l)
input("<Esc>")

local large = os.getenv("NIBBLE_LARGE_SOCK")
if large then
  lua([[
    local n = require("nibble")
    require("nibble.client").close()
    n.options.socket = ...
    n.options.n_prefix = 2048
    n.options.prefix_lines = 2000
    require("nibble.client").configure(n.options)
  ]], large)
  -- about 1,500 tokens of text before the cursor (the count is printed)
  lua([[
    vim.cmd("enew!")
    local lines = {}
    for i = 1, 98 do
      lines[i] = string.format("The value of item %d is computed from the previous one.", i)
    end
    vim.api.nvim_buf_set_lines(0, 0, -1, false, lines)
    vim.api.nvim_win_set_cursor(0, { #lines, #lines[#lines] })
  ]])
  local core = require("nibble.core")
  local c = core.connect({ socket = large, autostart = false })
  local buftext = table.concat(lua("return vim.api.nvim_buf_get_lines(0, 0, -1, false)"), "\n")
  local _, tk = c:call({ op = "tokenize", text = buftext }, 60000)
  c:close()
  lua("require('nibble.completion').timings = {}")
  input("A")
  local t0 = vim.loop.hrtime()
  vim.wait(600000, function() return #timings("latency") > 0 end, 50)
  idle()
  say("  1.1B Q4_0, a %s-token buffer: cold first suggestion %.1f s", tk and tk.tokens and #tk.tokens or "?",
    (vim.loop.hrtime() - t0) / 1e9)
  local L = latency(5, 120000)
  say("  1.1B Q4_0, one-character edit at the end: p50 %.0f ms, max %.0f ms over %d edits", pct(L, 50), pct(L, 100), #L)
  input("<Esc>")
end
vim.cmd("qall!")
