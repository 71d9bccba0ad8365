-- nibble: inline completion and a few commands, on a local model served
-- by nibd.  setup(opts) is optional; the first Insert mode starts with the
-- defaults when it has not been called.  See :help nibble.
local M = {}

local api = vim.api
local config = require("nibble.config")
local client = require("nibble.client")
local completion = require("nibble.completion")
local context = require("nibble.context")
local ui = require("nibble.ui")

M.options = nil
local group = nil
local saved_keys = {} -- lhs -> the Insert-mode mapping it had before ours

local termcodes = function(s)
  return api.nvim_replace_termcodes(s, true, false, true)
end

-- Do what lhs did before nibble mapped it.
local function fallback(lhs)
  local old = saved_keys[lhs]
  if not old or vim.tbl_isempty(old) then
    api.nvim_feedkeys(termcodes(lhs), "ni", false)
    return
  end
  local mode = old.noremap == 1 and "ni" or "mi"
  if old.callback then
    local r = old.callback()
    if old.expr == 1 and type(r) == "string" then
      api.nvim_feedkeys(old.replace_keycodes == 1 and termcodes(r) or r, mode, false)
    end
    return
  end
  local rhs = old.rhs or ""
  if old.expr == 1 then
    rhs = vim.fn.eval(rhs)
    api.nvim_feedkeys(rhs, mode, false)
  else
    api.nvim_feedkeys(termcodes(rhs), mode, false)
  end
end

local actions = {
  accept = function(lhs)
    if not completion.accept("all") then
      fallback(lhs)
    end
  end,
  accept_word = function(lhs)
    if not completion.accept("word") then
      fallback(lhs)
    end
  end,
  accept_line = function(lhs)
    if not completion.accept("line") then
      fallback(lhs)
    end
  end,
  dismiss = function(lhs)
    if completion.visible() then
      completion.dismiss()
    else
      fallback(lhs)
    end
  end,
  next = function()
    completion.cycle(1)
  end,
  prev = function()
    completion.cycle(-1)
  end,
}

-- Run an action as if lhs had been pressed (lhs: what to fall back to).
function M.action(name, lhs)
  M.ensure_setup()
  actions[name](lhs or "")
end

local function map_keys(o)
  for name, lhs in pairs(o.keys) do
    if lhs and lhs ~= "" then
      if saved_keys[lhs] == nil then
        local old = vim.fn.maparg(lhs, "i", false, true)
        -- never save our own mapping as the one to fall back to
        if old.desc and old.desc:match("^nibble") then
          old = {}
        end
        saved_keys[lhs] = old
      end
      vim.keymap.set("i", lhs, function()
        actions[name](lhs)
      end, { silent = true, desc = "nibble: " .. name })
    end
  end
end

local function autocmds()
  group = api.nvim_create_augroup("nibble", { clear = true })
  api.nvim_create_autocmd({ "TextChangedI", "TextChangedP" }, {
    group = group,
    callback = function(a)
      completion.on_text_changed(a.buf)
    end,
  })
  api.nvim_create_autocmd("CursorMovedI", {
    group = group,
    callback = function(a)
      completion.on_cursor_moved(a.buf)
    end,
  })
  api.nvim_create_autocmd({ "InsertLeave", "BufLeave" }, {
    group = group,
    callback = function(a)
      completion.dismiss(a.buf)
    end,
  })
  api.nvim_create_autocmd({ "BufLeave", "BufWritePost" }, {
    group = group,
    callback = function(a)
      context.capture_buffer(a.buf, M.options)
    end,
  })
  api.nvim_create_autocmd("TextYankPost", {
    group = group,
    callback = function()
      context.capture_yank(vim.v.event.regcontents or {}, M.options)
    end,
  })
  api.nvim_create_autocmd("BufWipeout", {
    group = group,
    callback = function(a)
      completion.forget(a.buf)
    end,
  })
  api.nvim_create_autocmd("ColorScheme", {
    group = group,
    callback = function()
      ui.setup_highlight(M.options.highlight)
    end,
  })
end

-- Configure nibble.  Returns true, or false and a message (also shown).
function M.setup(user)
  local o, err = config.build(user)
  if not o then
    vim.notify(err, vim.log.levels.ERROR)
    return false, err
  end
  M.options = o
  client.configure(o)
  completion.configure(o)
  ui.setup_highlight(o.highlight)
  map_keys(o)
  autocmds()
  return true
end

-- The defaults, unless setup() ran.
function M.ensure_setup()
  if not M.options then
    M.setup({})
  end
end

function M.toggle(on)
  M.ensure_setup()
  if on == nil then
    on = not M.options.enabled
  end
  M.options.enabled = on
  if not on then
    completion.dismiss()
  end
  return on
end

-- For the statusline: "nibble: idle", "nibble: thinking", "nibble: 1/2 34 ms".
function M.statusline()
  if not M.options then
    return ""
  end
  return "nibble: " .. completion.status()
end

M.completion = completion
M.client = client
return M
