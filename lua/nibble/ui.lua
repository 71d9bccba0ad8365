-- nibble.ui: the ghost text.  One extmark per buffer: virtual text for the
-- rest of the cursor line and virt_lines for the lines after it, in the
-- highlight group NibbleSuggestion.  Moving the mark re-uses it, so an
-- update never clears and redraws (no flicker).
local M = {}

local api = vim.api
local ns = api.nvim_create_namespace("nibble")
M.ns = ns

local has_inline = vim.fn.has("nvim-0.10") == 1

local marks = {} -- buf -> extmark id

function M.setup_highlight(link)
  -- a colour scheme or the user may define it; only the default is ours
  api.nvim_set_hl(0, "NibbleSuggestion", { link = link, default = true })
end

-- Show text (a list of lines) at (row, col) of buf.
function M.show(buf, row, col, lines)
  if #lines == 0 or (#lines == 1 and lines[1] == "") then
    M.clear(buf)
    return
  end
  local line = api.nvim_buf_get_lines(buf, row, row + 1, false)[1] or ""
  local at_eol = col >= #line
  local opts = {
    id = marks[buf],
    hl_mode = "combine",
    virt_text = { { lines[1], "NibbleSuggestion" } },
  }
  if has_inline then
    opts.virt_text_pos = "inline"
  elseif at_eol then
    opts.virt_text_pos = "overlay"
  else
    -- before 0.10 virtual text cannot push the line's text aside: show
    -- it after the line instead of covering what is there
    opts.virt_text_pos = "eol"
  end
  if #lines > 1 then
    local vl = {}
    for i = 2, #lines do
      vl[#vl + 1] = { { lines[i] == "" and " " or lines[i], "NibbleSuggestion" } }
    end
    opts.virt_lines = vl
  end
  marks[buf] = api.nvim_buf_set_extmark(buf, ns, row, math.min(col, #line), opts)
end

function M.clear(buf)
  local id = marks[buf]
  if id then
    marks[buf] = nil
    if api.nvim_buf_is_valid(buf) then
      api.nvim_buf_del_extmark(buf, ns, id)
    end
  end
end

-- What is shown in buf, for tests and the statusline: the lines, or nil.
function M.shown(buf)
  if buf == nil or buf == 0 then
    buf = api.nvim_get_current_buf()
  end
  local id = marks[buf]
  if not id then
    return nil
  end
  local m = api.nvim_buf_get_extmark_by_id(buf, ns, id, { details = true })
  if not m or not m[3] then
    return nil
  end
  local d = m[3]
  local lines = { d.virt_text and d.virt_text[1] and d.virt_text[1][1] or "" }
  for _, vl in ipairs(d.virt_lines or {}) do
    lines[#lines + 1] = vl[1][1] == " " and "" or vl[1][1]
  end
  return lines, m[1], m[2]
end

return M
