-- nibble.commands: :Nib, :NibRewrite and :NibStatus.
local M = {}

local api = vim.api
local client = require("nibble.client")

local function err(msg)
  vim.notify("nibble: " .. msg, vim.log.levels.ERROR)
end

-- :Nib {prompt}: the answer streams into a scratch window.
function M.ask(prompt)
  if not prompt or prompt:match("^%s*$") then
    err("usage: :Nib {question}")
    return
  end
  local buf = api.nvim_create_buf(false, true)
  vim.bo[buf].bufhidden = "wipe"
  vim.bo[buf].filetype = "markdown"
  pcall(api.nvim_buf_set_name, buf, "nibble://answer/" .. buf)
  vim.cmd("botright split")
  api.nvim_win_set_buf(0, buf)
  api.nvim_win_set_height(0, math.max(5, math.floor(vim.o.lines / 3)))
  local text = ""
  local function draw()
    if api.nvim_buf_is_valid(buf) then
      api.nvim_buf_set_lines(buf, 0, -1, false, vim.split(text, "\n", { plain = true }))
    end
  end
  local req, msg = client.request({
    op = "chat",
    messages = { { role = "user", content = prompt } },
    n_predict = 512,
  }, function(ev)
    if ev.text then
      text = text .. ev.text
      draw()
    end
    if ev.error then
      text = text .. "\n[nibble: " .. (ev.message or ev.error) .. "]"
      draw()
    end
  end)
  if not req then
    text = "[nibble: " .. msg .. "]"
    draw()
    return
  end
  -- closing the window stops the answer
  api.nvim_create_autocmd("BufWipeout", {
    buffer = buf,
    once = true,
    callback = function()
      req.cancel()
    end,
  })
end

local SYSTEM = "You rewrite text as instructed. Reply with the rewritten text only: "
  .. "no explanations, no code fences."

M.SYSTEM = SYSTEM

-- Drop one surrounding code fence, which models add despite being told.
local function unfence(text)
  local body = text:match("^%s*```[^\n]*\n(.-)\n```%s*$")
  return body or text
end

-- :'<,'>NibRewrite {instruction}: the lines are replaced by the model's
-- rewrite in one change, so one undo brings them back.
function M.rewrite(line1, line2, instruction, opts)
  opts = opts or {}
  if not instruction or instruction:match("^%s*$") then
    err("usage: :'<,'>NibRewrite {instruction}")
    return
  end
  local buf = api.nvim_get_current_buf()
  local lines = api.nvim_buf_get_lines(buf, line1 - 1, line2, false)
  local tick = api.nvim_buf_get_changedtick(buf)
  local text = ""
  local function done(ev)
    if ev.error then
      err("rewrite failed: " .. (ev.message or ev.error))
      return
    end
    if api.nvim_buf_get_changedtick(buf) ~= tick then
      err("the buffer changed while the rewrite was made; nothing replaced")
      return
    end
    local out = unfence(text):gsub("\n+$", "")
    if out == "" then
      err("the model returned nothing; nothing replaced")
      return
    end
    api.nvim_buf_set_lines(buf, line1 - 1, line2, false, vim.split(out, "\n", { plain = true }))
    vim.notify(string.format("nibble: rewrote %d line(s)", line2 - line1 + 1))
  end
  local req, msg = client.request({
    op = "chat",
    messages = {
      { role = "system", content = SYSTEM },
      { role = "user", content = instruction .. "\n\n" .. table.concat(lines, "\n") },
    },
    n_predict = opts.n_predict or math.max(256, 2 * #table.concat(lines, "\n")),
    temperature = opts.temperature or 0, -- the same text for the same request
  }, function(ev)
    if ev.text then
      text = text .. ev.text
    end
    if ev.done or ev.error then
      done(ev)
    end
  end)
  if not req then
    err(msg)
    return
  end
  vim.notify("nibble: rewriting…")
end

-- :NibStatus: the plugin's and the daemon's state.
function M.status()
  local nibble = require("nibble")
  nibble.ensure_setup()
  local out = { "nibble: " .. require("nibble.completion").status() }
  local final, msg = client.call({ op = "status" }, 3000)
  if not final then
    out[#out + 1] = "daemon: not reachable: " .. tostring(msg)
  else
    out[#out + 1] = string.format("daemon: %s (%s), kernels %s, %d threads, %d slots, up %.0f s",
      tostring(final.name), tostring(final.model), tostring(final.simd), final.threads or 0,
      final.slots and #final.slots or 0, final.uptime_s or 0)
  end
  local st = require("nibble.completion").stats
  out[#out + 1] = string.format("requests %d, cancelled %d, consumed keystrokes %d, accepted %d",
    st.requests, st.cancelled, st.consumed, st.accepted)
  vim.notify(table.concat(out, "\n"))
  return out
end

return M
