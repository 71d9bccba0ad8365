-- :checkhealth nibble
local M = {}

-- vim.health (0.10+) or the older health module (0.7 to 0.9)
local h = vim.health or require("health")
local start = h.start or h.report_start
local ok = h.ok or h.report_ok
local warn = h.warn or h.report_warn
local error = h.error or h.report_error
local info = h.info or h.report_info

function M.check()
  start("nibble")
  local client = require("nibble.client")
  local core, why = client.core()
  if not core then
    error("the Lua module nibble.core does not load: " .. tostring(why):match("^[^\n]*"), {
      "run make in the plugin's directory (it builds lua/nibble/core.so for Neovim's LuaJIT)",
    })
    return
  end
  ok("nibble.core " .. tostring(core.version) .. " loaded (" .. (jit and jit.version or _VERSION) .. ")")

  local nibble = require("nibble")
  if nibble.options then
    ok("setup() done; suggestions " .. (nibble.options.enabled and "on" or "off"))
  else
    info("setup() not called yet: the defaults apply at the first Insert mode")
  end
  nibble.ensure_setup()

  local uv = vim.uv or vim.loop
  local t0 = uv.hrtime()
  local st, msg = client.call({ op = "status" }, 10000)
  local first = (uv.hrtime() - t0) / 1e6
  if not st then
    error("nibd is not reachable: " .. tostring(msg), {
      "start it with: nibd -m MODEL, or set NIBBLE_MODEL so that it starts on demand",
    })
    return
  end
  ok(string.format("nibd answers (first status in %.1f ms)", first))
  ok(string.format("model %s (%s)", tostring(st.name), tostring(st.model)))
  if st.fim then
    ok("the model has fill-in-the-middle tokens")
  else
    warn("the model has no fill-in-the-middle tokens: suggestions continue the text before the cursor only", {
      "use a code model with FIM (Qwen2.5-Coder, CodeLlama, StarCoder, DeepSeek-Coder)",
    })
  end
  ok("kernels: " .. tostring(st.simd) .. ", " .. tostring(st.threads) .. " threads, "
    .. tostring(st.slots and #st.slots or 0) .. " slots of " .. tostring(st.n_ctx) .. " tokens")
  -- a measured round trip, warm
  local n, total = 5, 0
  for _ = 1, n do
    local t = uv.hrtime()
    if not client.call({ op = "status" }, 5000) then
      error("status failed during the round-trip measurement")
      return
    end
    total = total + (uv.hrtime() - t)
  end
  local rtt = total / n / 1e6
  if rtt < 5 then
    ok(string.format("round trip %.2f ms (mean of %d)", rtt, n))
  else
    warn(string.format("round trip %.2f ms (mean of %d): slow for a Unix socket", rtt, n))
  end
end

return M
