-- Drives the editor under test over its RPC socket, as a user would type,
-- and checks what nibble does.  Run by tests/test_nvim.c in a second
-- headless Neovim; writes "ok NAME" or "not ok NAME: why" lines to
-- $NIBBLE_RESULT.  The expected text comes from the C test, which asked
-- the daemon (or nibble eval) itself.
local out = assert(io.open(os.getenv("NIBBLE_RESULT"), "w"))
local ch = vim.fn.sockconnect("pipe", os.getenv("NIBBLE_ADDR"), { rpc = true })
if ch == 0 then
  out:write("not ok connect: no editor at " .. tostring(os.getenv("NIBBLE_ADDR")) .. "\n")
  out:close()
  vim.cmd("cquit 1")
end

local function lua(code, ...)
  return vim.rpcrequest(ch, "nvim_exec_lua", code, { ... })
end
local function input(keys)
  vim.rpcrequest(ch, "nvim_input", keys)
end
local function ex(cmd)
  return vim.rpcrequest(ch, "nvim_exec", cmd, true)
end
local function lines()
  return lua("return vim.api.nvim_buf_get_lines(0, 0, -1, false)")
end
local function state()
  return lua("return require('nibble.completion').debug()")
end
local function stats()
  return lua("return require('nibble.completion').stats")
end
local function wait_for(what, ms, cond)
  local okk = vim.wait(ms, function()
    local r = cond()
    return r
  end, 10)
  if not okk then
    error("timed out waiting for " .. what, 0)
  end
end

local n_fail = 0
local function check(name, fn)
  local okk, err = pcall(fn)
  if okk then
    out:write("ok " .. name .. "\n")
  else
    n_fail = n_fail + 1
    out:write("not ok " .. name .. ": " .. tostring(err):gsub("\n", " ") .. "\n")
  end
  out:flush()
end
local function eq(a, b, what)
  if a ~= b then
    error(string.format("%s: got %s, want %s", what, vim.inspect(a), vim.inspect(b)), 0)
  end
end

local expect = os.getenv("NIBBLE_EXPECT")
local prompt = "Once upon a time"

check("suggestion appears after typing", function()
  input("i" .. prompt)
  wait_for("the suggestion", 10000, function()
    local s = state()
    return s.text and not s.pending and s.text ~= ""
  end)
  local s = state()
  eq(s.text, expect, "suggestion")
  -- and it is on screen: the extmark carries its first line
  local shown = lua("return require('nibble.ui').shown(0)")
  eq(shown and shown[1], vim.split(expect, "\n", { plain = true })[1], "ghost text")
end)

local typed = expect:match("^[^\n]?[^\n]?") or ""
check("typing the suggestion's next characters asks nothing", function()
  local before = stats().requests
  input(typed)
  vim.wait(300) -- several debounce periods
  eq(stats().requests, before, "requests")
  eq(state().text, expect:sub(#typed + 1), "rest of the suggestion")
  eq(stats().consumed >= 1, true, "consumed")
end)

check("Tab inserts it", function()
  input("<Tab>")
  wait_for("the insertion", 2000, function()
    return table.concat(lines(), "\n") == prompt .. expect
  end)
  -- the accepted suggestion is gone (a new one may be on its way)
  if state().text == expect:sub(#typed + 1) then
    error("the accepted suggestion is still shown", 0)
  end
end)

check("Tab without a suggestion does what it did before", function()
  input("<Esc>o<Tab>")
  wait_for("the old mapping's text", 2000, function()
    local l = lines()
    return l[#l] == "[tab]"
  end)
end)

check("accept a word, then cycle to an alternative and back", function()
  input("<Esc>")
  ex("enew! | setfiletype text")
  input("i" .. prompt)
  wait_for("the suggestion", 10000, function()
    local s = state()
    return s.text and s.text ~= "" and not s.pending
  end)
  local first = state().text
  eq(first, expect, "suggestion")
  local word = first:match("^%s*[%w_]+") or first:match("^%s*[^%w_%s]+") or first:match("^%s+")
  input("<C-Right>")
  wait_for("the word", 2000, function()
    return lines()[1] == prompt .. word
  end)
  local rest = first:sub(#word + 1)
  eq(state().text, rest, "the rest after accepting a word")
  local before = stats().requests
  input("<M-]>")
  wait_for("an alternative", 10000, function()
    local s = state()
    return s.alts == 2 and not s.pending
  end)
  eq(stats().requests, before + 1, "requests")
  input("<M-[>")
  wait_for("the first alternative again", 2000, function()
    return state().text == rest
  end)
  input("<Esc>")
end)

check("a disabled filetype sends nothing", function()
  input("<Esc>")
  ex("enew! | setfiletype gitcommit")
  local before = stats().requests
  input("iSome words for a commit")
  vim.wait(400)
  eq(stats().requests, before, "requests")
  input("<Esc>")
  ex("enew! | setfiletype text")
end)

check("checkhealth nibble passes", function()
  ex("checkhealth nibble")
  local text = table.concat(lines(), "\n")
  if not text:find("OK", 1, true) then
    error("no OK in: " .. text, 0)
  end
  if text:find("ERROR", 1, true) then
    error("an ERROR in: " .. text, 0)
  end
  ex("bwipeout!")
end)

check("NibRewrite replaces the selection and undoes in one step", function()
  ex("enew!")
  local orig = { "the cat sat on the mat", "the dog sat on the log", "last line stays" }
  lua("vim.api.nvim_buf_set_lines(0, 0, -1, false, ...)", orig)
  -- what the model answers to this request, asked here directly
  local system = lua("return require('nibble.commands').SYSTEM")
  local core = require("nibble.core")
  local c = assert(core.connect({ socket = os.getenv("NIBBLE_SOCK"), autostart = false }))
  local instruction = "make it shorter"
  local user = instruction .. "\n\n" .. orig[1] .. "\n" .. orig[2]
  local text = c:call({
    op = "chat",
    messages = { { role = "system", content = system }, { role = "user", content = user } },
    n_predict = math.max(256, 2 * #(orig[1] .. "\n" .. orig[2])),
    temperature = 0,
  }, 20000)
  c:close()
  assert(text and text ~= "", "the daemon gave no answer")
  local want = text:gsub("\n+$", "")
  ex("1,2NibRewrite " .. instruction)
  wait_for("the rewrite", 20000, function()
    return lines()[1] ~= orig[1]
  end)
  local got = lines()
  local want_lines = vim.split(want, "\n", { plain = true })
  want_lines[#want_lines + 1] = orig[3]
  eq(table.concat(got, "\n"), table.concat(want_lines, "\n"), "buffer after the rewrite")
  ex("normal! u")
  eq(table.concat(lines(), "\n"), table.concat(orig, "\n"), "buffer after one undo")
end)

local fim = os.getenv("NIBBLE_FIM_SOCK")
if fim then
  check("a model with FIM tokens gets the text after the cursor too", function()
    lua([[
      local n = require("nibble")
      require("nibble.client").close()
      n.options.socket = ...
      require("nibble.client").configure(n.options)
    ]], fim)
    input("<Esc>")
    ex("enew! | setfiletype python")
    local before_lines = { "def add(a, b):", "    return " }
    local after_lines = { "", "print(add(1, 2))" }
    lua("vim.api.nvim_buf_set_lines(0, 0, -1, false, ...)",
      { before_lines[1], before_lines[2], after_lines[1], after_lines[2] })
    lua("vim.api.nvim_win_set_cursor(0, { 2, 10 })")
    input("a") -- append after "return " and type a space-free key
    input("a")
    wait_for("the suggestion", 20000, function()
      local s = state()
      return s.text and s.text ~= "" and not s.pending
    end)
    local s = state()
    eq(s.fim, true, "the answer used FIM")
    -- the daemon's own answer to the same infill
    local o = lua("return require('nibble').options")
    local c = assert(require("nibble.core").connect({ socket = fim, autostart = false }))
    local text = c:call({
      op = "infill",
      prefix = before_lines[1] .. "\n" .. before_lines[2] .. "a",
      suffix = "\n" .. after_lines[1] .. "\n" .. after_lines[2],
      n_predict = o.n_predict,
      n_prefix = o.n_prefix,
      n_suffix = o.n_suffix,
      temperature = 0,
      fallback = "prefix",
    }, 20000)
    c:close()
    local want = table.concat(vim.split(text, "\n", { plain = true }), "\n")
    eq(s.text, want, "suggestion")
    input("<Esc>")
  end)
end

local lora_sock = os.getenv("NIBBLE_LORA_SOCK")
if lora_sock then
  local function lora_check()
    -- keep a copy of each request as the plugin builds it, before the
    -- client adds the configured adapters
    lua([[
      local c = require("nibble.client")
      if not _G.nibble_test_orig_request then
        _G.nibble_test_orig_request = c.request
        c.request = function(tbl, cb)
          _G.nibble_test_last = vim.deepcopy(tbl)
          return _G.nibble_test_orig_request(tbl, cb)
        end
      end
      local n = require("nibble")
      c.close()
      n.options.socket = ...
      n.options.lora = { { name = "story", scale = 1.0 } }
      n.options.max_lines = 1000
      c.configure(n.options)
    ]], lora_sock)
    input("<Esc>")
    ex("enew! | setfiletype text")
    input("i" .. "Once upon a time, there was a little")
    wait_for("the suggestion", 20000, function()
      local s = state()
      return s.text and s.text ~= "" and not s.pending
    end)
    local s = state()
    local req = lua("return _G.nibble_test_last")
    local c = assert(require("nibble.core").connect({ socket = lora_sock, autostart = false }))
    local plain, perr = c:call(req, 20000)
    req.lora = { { name = "story", scale = 1.0 } }
    local with, werr = c:call(req, 20000)
    c:close()
    if type(plain) ~= "string" or type(with) ~= "string" then
      error("the daemon did not answer: " .. tostring(perr) .. " / " .. tostring(werr), 0)
    end
    if plain == with then
      error("the adapter changes nothing on this prompt: " .. vim.inspect(plain), 0)
    end
    eq(s.text, with, "suggestion")
  end
  check("the lora option applies the daemon's adapter to suggestions", function()
    local okk, err = pcall(lora_check)
    -- the next checks run without the option, pass or fail
    lua([[
      local n = require("nibble")
      n.options.lora = nil
      n.options.max_lines = 8
    ]])
    input("<Esc>")
    if not okk then
      error(err, 0)
    end
  end)
end

local slow = os.getenv("NIBBLE_SLOW_SOCK")
if slow then
  check("a keystroke during a request cancels it", function()
    lua([[
      local n = require("nibble")
      require("nibble.client").close()
      n.options.socket = ...
      n.options.n_predict = 200
      require("nibble.client").configure(n.options)
    ]], slow)
    local sc = assert(require("nibble.core").connect({ socket = slow, autostart = false }))
    local _, st0 = sc:call({ op = "status" }, 5000)
    ex("enew!")
    input("iOnce")
    wait_for("a request in flight", 10000, function()
      return state().pending
    end)
    vim.wait(100)
    input("x") -- typing on
    wait_for("the cancellation at the daemon", 10000, function()
      local _, st = sc:call({ op = "status" }, 5000)
      return st and st.cancelled > st0.cancelled
    end)
    sc:close()
    input("<Esc>")
  end)
end

out:close()
vim.cmd(n_fail == 0 and "qall!" or "cquit 1")
