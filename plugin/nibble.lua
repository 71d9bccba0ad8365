-- nibble for Neovim: commands and <Plug> maps only.  The work is in
-- lua/nibble/, loaded on first use.  (Classic Vim uses plugin/nibble.vim.)
-- Vim built with +lua sources this file too: its Lua has no vim.api
if not vim.api or vim.g.loaded_nibble then
  return
end
vim.g.loaded_nibble = true

local cmd = vim.api.nvim_create_user_command

cmd("Nib", function(a)
  require("nibble").ensure_setup()
  require("nibble.commands").ask(a.args)
end, { nargs = "+", desc = "nibble: ask the model; the answer opens in a scratch window" })

cmd("NibRewrite", function(a)
  require("nibble").ensure_setup()
  require("nibble.commands").rewrite(a.line1, a.line2, a.args)
end, { nargs = "+", range = true, desc = "nibble: rewrite the lines as instructed" })

cmd("NibToggle", function()
  local on = require("nibble").toggle()
  vim.notify("nibble: suggestions " .. (on and "on" or "off"))
end, { desc = "nibble: suggestions on or off" })

cmd("NibStatus", function()
  require("nibble.commands").status()
end, { desc = "nibble: the plugin's and the daemon's state" })

-- <Plug> maps for Insert mode, to map keys of one's own
for name, plug in pairs({
  accept = "<Plug>(nibble-accept)",
  accept_word = "<Plug>(nibble-accept-word)",
  accept_line = "<Plug>(nibble-accept-line)",
  dismiss = "<Plug>(nibble-dismiss)",
  next = "<Plug>(nibble-next)",
  prev = "<Plug>(nibble-prev)",
}) do
  vim.keymap.set("i", plug, function()
    require("nibble").action(name)
  end, { silent = true, desc = "nibble: " .. name })
end

-- setup() with the defaults the first time Insert mode starts, unless the
-- user's configuration called it first
vim.api.nvim_create_autocmd("InsertEnter", {
  group = vim.api.nvim_create_augroup("nibble_lazy", { clear = true }),
  once = true,
  callback = function()
    if vim.g.nibble_no_auto_setup then
      return
    end
    require("nibble").ensure_setup()
  end,
})
