-- The editor under test (tests/test_nvim.c): nibble from this checkout,
-- set up for the test daemon, with a Tab mapping of the user's own that
-- nibble must fall back to.
vim.o.swapfile = false
vim.o.shortmess = vim.o.shortmess .. "I"
vim.cmd([[inoremap <Tab> <C-R>="[tab]"<CR>]])
vim.cmd("runtime plugin/nibble.lua")
local ok, err = require("nibble").setup({
  socket = os.getenv("NIBBLE_SOCK"),
  autostart = false,
  n_predict = tonumber(os.getenv("NIBBLE_N_PREDICT") or "16"),
  max_lines = 100,
  debounce_ms = 50,
  chunks = 0,
})
if not ok then
  io.stderr:write("setup failed: " .. tostring(err) .. "\n")
  vim.cmd("cquit 3")
end
