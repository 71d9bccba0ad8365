-- tokenize.lua MODEL TEXT... : print each text's ids with the default
-- options, without BOS and with special tokens parsed (test_lua.c compares
-- them with `nibble tokenize`), and check that detokenize inverts tokenize.
local t = require("nbtest")
local core = t.core

local model = assert(core.open(arg[1], { vocab_only = true }))
for i = 2, #arg do
  local text = arg[i]
  local ids = assert(model:tokenize(text))
  t.emit("default", t.ids(ids))
  t.emit("nobos", t.ids(assert(model:tokenize(text, { bos = false }))))
  t.emit("special", t.ids(assert(model:tokenize(text, { special = true }))))
  t.eq(model:detokenize(ids), text, "detokenize(tokenize(x))")
  t.eq(model:detokenize(model:tokenize(text, { bos = false })), text, "without BOS")
  -- keep_space shows the space the tokenizer put before the text
  if #text > 0 then
    t.eq(model:detokenize(ids, { keep_space = true }), " " .. text, "keep_space")
  end
end
-- special renders control tokens
local info = model:info()
t.eq(model:detokenize({ info.bos, info.eos }, { special = true }), "<s></s>", "special pieces")
t.eq(model:detokenize({ info.bos, info.eos }), "", "control tokens without special")
model:close()
print("tokenize ok")
