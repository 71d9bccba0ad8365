-- nibble.config: the options of setup(), their defaults and their checks.
-- Every option is documented in doc/nibble.txt (|nibble-options|).
local M = {}

M.defaults = {
  enabled = true, -- suggestions on or off everywhere (:NibToggle)
  auto_trigger = true, -- suggest after a pause in typing; false: only on request
  debounce_ms = 50, -- the pause, in milliseconds
  n_predict = 64, -- most tokens in one suggestion
  max_lines = 8, -- most lines shown and accepted (the rest is dropped)
  n_prefix = 1024, -- most tokens of text before the cursor sent (the daemon cuts)
  n_suffix = 256, -- most tokens of text after the cursor
  prefix_lines = 256, -- lines above the cursor read from the buffer
  suffix_lines = 64, -- lines below the cursor read from the buffer
  max_line_bytes = 2000, -- longer lines are cut in the context
  chunks = 16, -- extra context chunks kept from other buffers and yanks (0: none)
  chunk_lines = 64, -- lines per chunk
  temperature = 0, -- of the first suggestion (0: greedy)
  alt_temperature = 0.8, -- of the alternatives (nibble-cycle)
  filetypes = {}, -- per-filetype switch: { markdown = false, ["*"] = true }
  disabled_filetypes = { "help", "gitcommit", "gitrebase", "TelescopePrompt", "NvimTree" },
  socket = nil, -- nibd's socket (nil: the default, as nib and nibd find it)
  model = nil, -- model for a daemon started on demand (nil: $NIBBLE_MODEL or the config)
  autostart = true, -- start nibd when it is not running
  -- lora = nil: LoRA adapters for every request, { { name = "alpaca", scale = 0.8 } },
  -- names nibd was started with (nibd --lora NAME=FILE, or lora lines in the config)
  keys = {
    accept = "<Tab>", -- accept the whole suggestion; Tab does what it did before when none shows
    accept_word = "<C-Right>",
    accept_line = "<C-Down>",
    dismiss = "<C-]>",
    next = "<M-]>",
    prev = "<M-[>",
  },
  highlight = "Comment", -- what NibbleSuggestion links to by default
}

local function is_list_of_strings(v)
  if type(v) ~= "table" then
    return false
  end
  for k, s in pairs(v) do
    if type(k) ~= "number" or type(s) ~= "string" then
      return false
    end
  end
  return true
end

-- nil, or a list of { name = string, scale = number? } (at most 16)
local function is_lora_list(v)
  if v == nil then
    return true
  end
  if type(v) ~= "table" or #v > 16 then
    return false
  end
  for k, a in pairs(v) do
    if type(k) ~= "number" or type(a) ~= "table" or type(a.name) ~= "string" or a.name == "" then
      return false
    end
    if a.scale ~= nil and type(a.scale) ~= "number" then
      return false
    end
  end
  return true
end

local function positive_int(v)
  return type(v) == "number" and v >= 0 and v == math.floor(v)
end

local checks = {
  enabled = { "boolean" },
  auto_trigger = { "boolean" },
  debounce_ms = { positive_int, "a whole number of milliseconds >= 0" },
  n_predict = { positive_int, "a whole number of tokens >= 0" },
  max_lines = { positive_int, "a whole number of lines >= 0" },
  n_prefix = { positive_int, "a whole number of tokens >= 0" },
  n_suffix = { positive_int, "a whole number of tokens >= 0" },
  prefix_lines = { positive_int, "a whole number of lines >= 0" },
  suffix_lines = { positive_int, "a whole number of lines >= 0" },
  max_line_bytes = { positive_int, "a whole number of bytes >= 0" },
  chunks = { positive_int, "a whole number of chunks >= 0" },
  chunk_lines = { positive_int, "a whole number of lines >= 0" },
  temperature = { "number" },
  alt_temperature = { "number" },
  filetypes = { "table" },
  disabled_filetypes = { is_list_of_strings, "a list of filetype names" },
  socket = { "string", true },
  model = { "string", true },
  autostart = { "boolean" },
  lora = { is_lora_list, 'nil or a list of { name = "NAME", scale = NUMBER } (at most 16)' },
  keys = { "table" },
  highlight = { "string" },
}

-- Merge user options over the defaults and check them.  Returns the
-- options, or nil and a message naming the first bad one.
function M.build(user)
  user = user or {}
  if type(user) ~= "table" then
    return nil, "nibble.setup() wants a table of options, not " .. type(user)
  end
  for k in pairs(user) do
    if M.defaults[k] == nil and k ~= "socket" and k ~= "model" and k ~= "lora" then
      return nil, "nibble.setup(): unknown option '" .. tostring(k) .. "' (see :help nibble-options)"
    end
  end
  local o = vim.tbl_deep_extend("force", vim.deepcopy(M.defaults), user)
  for k, c in pairs(checks) do
    local v = o[k]
    local ok
    if type(c[1]) == "function" then
      ok = c[1](v)
    else
      ok = type(v) == c[1] or (c[2] == true and v == nil)
    end
    if not ok then
      local want = type(c[1]) == "function" and c[2] or c[1]
      return nil, string.format("nibble.setup(): option '%s' must be %s, not %s", k, want, vim.inspect(v))
    end
  end
  for name, lhs in pairs(o.keys) do
    if M.defaults.keys[name] == nil then
      return nil, "nibble.setup(): unknown key '" .. tostring(name) .. "' in keys"
    end
    if lhs ~= false and type(lhs) ~= "string" then
      return nil, string.format("nibble.setup(): keys.%s must be a key string or false", name)
    end
  end
  for ft, on in pairs(o.filetypes) do
    if type(ft) ~= "string" or type(on) ~= "boolean" then
      return nil, "nibble.setup(): filetypes maps filetype names to true or false"
    end
  end
  return o
end

return M
