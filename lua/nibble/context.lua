-- nibble.context: what a suggestion request sends.  The text around the
-- cursor (a prefix window above it and a suffix window below), and extra
-- chunks from other buffers and yanks, as llama.vim gathers them.
--
-- Windows are read in lines, but the model's budget is in tokens: the
-- daemon cuts the prefix and suffix to n_prefix / n_suffix tokens on line
-- boundaries (doc/protocol.md, infill).  The prefix window starts at a
-- line number that is a multiple of 32, so that while the cursor moves
-- within a region the prompt keeps its start and the daemon's cache of the
-- buffer's session stays valid: a keystroke then costs only the new tokens.
local M = {}

local api = vim.api

local ANCHOR = 32

local function cut(line, max)
  if max > 0 and #line > max then
    return line:sub(1, max)
  end
  return line
end

-- The text before and after the cursor of window win in buffer buf.
function M.around_cursor(buf, win, o)
  local pos = api.nvim_win_get_cursor(win)
  local row, col = pos[1] - 1, pos[2] -- 0-based row, byte column
  local first = row - o.prefix_lines
  if first < 0 then
    first = 0
  else
    first = first - first % ANCHOR
  end
  local n_lines = api.nvim_buf_line_count(buf)
  local last = math.min(n_lines, row + 1 + o.suffix_lines)
  local lines = api.nvim_buf_get_lines(buf, first, last, false)
  local cur = lines[row - first + 1] or ""
  local before, after = {}, {}
  for i = 1, row - first do
    before[i] = cut(lines[i], o.max_line_bytes)
  end
  before[#before + 1] = cur:sub(1, col)
  after[1] = cur:sub(col + 1)
  for i = row - first + 2, #lines do
    after[#after + 1] = cut(lines[i], o.max_line_bytes)
  end
  return table.concat(before, "\n"), table.concat(after, "\n") .. (last < n_lines and "\n" or ""), row, col
end

-- Extra context: a ring of chunks (name, text) from yanks and from the
-- buffers the user leaves or writes, newest last, without duplicates.
local ring = {}

local function push(name, lines, o)
  if o.chunks == 0 or #lines == 0 then
    return
  end
  local text = table.concat(lines, "\n")
  if #text < 16 or not text:find("%S") then
    return -- too little to help
  end
  for i = #ring, 1, -1 do
    if ring[i].text == text then
      table.remove(ring, i)
    end
  end
  ring[#ring + 1] = { name = name, text = text }
  while #ring > o.chunks do
    table.remove(ring, 1)
  end
end

-- The lines around the cursor of a buffer being left or written.
function M.capture_buffer(buf, o)
  if o.chunks == 0 or vim.bo[buf].buftype ~= "" then
    return
  end
  local win = vim.fn.bufwinid(buf)
  local row = win ~= -1 and api.nvim_win_get_cursor(win)[1] - 1 or 0
  local half = math.floor(o.chunk_lines / 2)
  local from = math.max(0, row - half)
  local lines = api.nvim_buf_get_lines(buf, from, from + o.chunk_lines, false)
  for i, l in ipairs(lines) do
    lines[i] = cut(l, o.max_line_bytes)
  end
  push(vim.fn.fnamemodify(api.nvim_buf_get_name(buf), ":~:."), lines, o)
end

function M.capture_yank(lines, o)
  local n = math.min(#lines, o.chunk_lines)
  local part = {}
  for i = 1, n do
    part[i] = cut(lines[i], o.max_line_bytes)
  end
  push("yanked", part, o)
end

-- The chunks for a request from buffer buf: other files' chunks only.
function M.chunks(buf)
  local name = vim.fn.fnamemodify(api.nvim_buf_get_name(buf), ":~:.")
  local out = {}
  for _, c in ipairs(ring) do
    if c.name ~= name then
      out[#out + 1] = { name = c.name, text = c.text }
    end
  end
  return out
end

function M.clear()
  ring = {}
end

return M
