" tests/vim/driver.vim - drives the classic Vim plugin for tests/test_vim.c.
"
" Run as: vim -Nu NONE -i NONE -es -S driver.vim, with stdin an open pipe
" (in -es mode Vim reads keys from stdin while it waits in Insert mode, and
" gives up at its end).  Environment: NIBBLE_VIM_CASE (which scenario),
" NIBBLE_VIM_OUT (where to write the results as one JSON object),
" NIBBLE_VIM_SOCK, NIBBLE_VIM_MODEL, NIBBLE_VIM_NIBD, NIBBLE_SRC.
"
" Keys are fed with feedkeys(..., 'xt!'), which stays in Insert mode until
" a step feeds <Esc>; a 10 ms timer runs the steps, each waiting for its
" condition (at most 8 s) before acting.  Nothing here knows what the
" model will say: the C test compares the results with nibble eval.
set encoding=utf-8
set nocompatible noautoindent noexpandtab
let s:R = {'case': $NIBBLE_VIM_CASE}
let s:out = $NIBBLE_VIM_OUT

function! s:Write() abort
  call writefile([json_encode(s:R)], s:out)
endfunction

if has('nvim') || !has('channel') || !has('textprop') || !has('patch-9.0.0185')
  let s:R.skip = 'this vim lacks +channel, +textprop or patch 9.0.0185'
  call s:Write()
  qall!
endif

" ------------------------------------------------------------------ steps
let s:steps = []
let s:since = reltime()

function! s:Step(cond, action) abort
  call add(s:steps, [a:cond, a:action])
endfunction

function! s:Fail(msg) abort
  if !has_key(s:R, 'error')
    let s:R.error = a:msg
  endif
  let s:steps = []
  call feedkeys("\<Esc>", 'nt')
endfunction

function! s:Tick(timer) abort
  if empty(s:steps)
    return
  endif
  let [Cond, Act] = s:steps[0]
  try
    if Cond()
      call remove(s:steps, 0)
      let s:since = reltime()
      call Act()
    elseif reltimefloat(reltime(s:since)) > 8
      call s:Fail('timed out waiting at step ' . string(Cond) . '; stats ' . string(nibble#stats()))
    endif
  catch
    call s:Fail(v:exception . ' at ' . v:throwpoint)
  endtry
endfunction

" Run the steps from Insert mode, entered with keys.
function! s:Run(keys) abort
  let s:since = reltime()
  let t = timer_start(10, function('s:Tick'), {'repeat': -1})
  call feedkeys(a:keys, 'xt!')
  call timer_stop(t)
  if !empty(s:steps)
    call s:Fail('left Insert mode with steps to go')
  endif
endfunction

" Wait at the top level (channel callbacks run during :sleep).
function! s:WaitFor(cond, ms) abort
  let start = reltime()
  while !a:cond()
    if reltimefloat(reltime(start)) * 1000 > a:ms
      return 0
    endif
    sleep 10m
  endwhile
  return 1
endfunction

function! s:Props() abort
  return len(filter(prop_list(line('.')), 'v:val.type ==# "NibbleSuggestion"'))
endfunction

" A suggestion is showing and its request has finished.
function! s:Ready() abort
  return nibble#suggestion() !=# '' && !nibble#stats().streaming
endfunction

" True once the step has waited ms milliseconds.
function! s:Idle(ms) abort
  return {-> reltimefloat(reltime(s:since)) * 1000 >= a:ms}
endfunction

function! s:Messages() abort
  return filter(split(execute('messages'), "\n"), 'v:val =~# "^nibble: "')
endfunction

" ------------------------------------------------------------------ set-up
if $NIBBLE_VIM_SOCK !=# ''
  let g:nibble_socket = $NIBBLE_VIM_SOCK
endif
if $NIBBLE_VIM_CASE ==# 'tabmap'
  " a Tab mapping made before the plugin loads is what Tab falls back to
  function! s:MyTab() abort
    return '[tab]'
  endfunction
  inoremap <expr> <Tab> <SID>MyTab()
endif
execute 'set rtp^=' . fnameescape($NIBBLE_SRC)
runtime plugin/nibble.vim
imap <C-G>w <Plug>(nibble-accept-word)
call setline(1, ['Lily and Tom went to the park.'])
normal! G$

" ------------------------------------------------------------------ cases
function! s:CaseSuggest() abort
  if $NIBBLE_VIM_FALLBACK !=# ''
    let g:nibble_fim_fallback = $NIBBLE_VIM_FALLBACK
  endif
  " type one character too many, and take it back as soon as the request
  " for it is sent: that request is cancelled and its text never shows
  autocmd User NibbleRequest ++once let s:R.first_line = getline('.')
        \ | call feedkeys("\<BS>", 't')
  call s:Step(function('s:Ready'), function('s:Shown'))
  call s:Run("oTheyX")
endfunction

function! s:Shown() abort
  let s:R.prefix = join(getline(1, '.'), "\n")
  let s:R.suggestion = nibble#suggestion()
  let s:R.props = s:Props()
  let st = nibble#stats()
  let s:R.cancels = st.cancels
  let s:R.fim = st.fim
  let s:R.fallbacks = st.fallbacks
  let s:R.requests_shown = st.requests
  " type the suggestion's first character: it is consumed, no new request
  let c = strcharpart(s:R.suggestion, 0, 1)
  call feedkeys(c ==# "\n" ? "\<CR>" : c, 't')
  call s:Step({-> 1}, function('s:Consumed'))
endfunction

function! s:Consumed() abort
  let s:R.after_typing = nibble#suggestion()
  call feedkeys("\<C-G>w", 't')
  call s:Step({-> 1}, function('s:Worded'))
endfunction

function! s:Worded() abort
  let s:R.after_word = nibble#suggestion()
  let s:R.requests_consumed = nibble#stats().requests
  call feedkeys("\<Tab>", 't')
  call s:Step({-> 1}, function('s:Accepted'))
endfunction

function! s:Accepted() abort
  let s:R.buffer = join(getline(1, '$'), "\n")
  let s:R.cursor = [line('.'), col('.')]
  let s:R.eol = col('.') == col('$')
  call feedkeys("\<Esc>", 't')
endfunction

" Tab with no suggestion: a literal tab (case tab) or the earlier
" mapping's result (case tabmap); with a suggestion it accepts.
function! s:CaseTab() abort
  " pressed at once, before any suggestion can arrive
  call s:Step({-> 1}, {-> execute('let s:R.immediate = getline(".")')})
  " in a buffer where suggestions are off
  call s:Step({-> 1}, {-> execute('let b:nibble_enabled = 0') + feedkeys("\<CR>x\<Tab>y", 't')})
  call s:Step(s:Idle(200), {-> execute('let s:R.disabled = getline(".")')
        \ + execute('let b:nibble_enabled = 1') + feedkeys("\<CR>They", 't')})
  call s:Step(function('s:Ready'), {-> execute('let s:R.suggestion = nibble#suggestion()')
        \ + execute('let s:R.prefix = join(getline(1, "."), "\n")') + feedkeys("\<Tab>", 't')})
  call s:Step({-> 1}, {-> execute('let s:R.buffer = join(getline(1, "$"), "\n")')
        \ + feedkeys("\<Esc>", 't')})
  call s:Run("A\<Tab>z")
  let s:R.messages = s:Messages()
endfunction

function! s:CaseTabmap() abort
  call s:CaseTab()
endfunction

" No request from a disabled filetype, nor while :NibToggle has them off.
function! s:CaseDisabled() abort
  let g:nibble_disabled_filetypes = ['markdown', 'gitcommit']
  setfiletype markdown
  call s:Step(s:Idle(300), {-> execute('let s:R.ft_requests = nibble#stats().requests')
        \ + execute('let s:R.ft_props = ' . s:Props()) + execute('set filetype=text')
        \ + execute('NibToggle') + feedkeys(" and", 't')})
  call s:Step(s:Idle(300), {-> execute('let s:R.toggled_requests = nibble#stats().requests')
        \ + execute('let s:R.toggled_props = ' . s:Props()) + execute('NibToggle')
        \ + feedkeys(" the", 't')})
  call s:Step(function('s:Ready'), {-> execute('let s:R.on_requests = nibble#stats().requests')
        \ + execute('let s:R.on_props = ' . s:Props()) + feedkeys("\<Esc>", 't')})
  call s:Run("oThey")
endfunction

" :Nib opens a scratch window and streams the answer into it.
function! s:CaseChat() abort
  let g:nibble_chat_n_predict = 48
  let src = win_getid()
  Nib hello
  let s:R.windows = winnr('$')
  let s:R.back_in_source = win_getid() == src
  let buf = bufnr('nibble://chat')
  let s:R.chat_buftype = getbufvar(buf, '&buftype')
  let s:R.done = s:WaitFor({-> !nibble#stats().pending}, 8000)
  let s:R.chat = getbufline(buf, 1, '$')
  " a follow-up goes on in the same window, with the whole conversation
  Nib again
  let s:R.done2 = s:WaitFor({-> !nibble#stats().pending}, 8000)
  let s:R.chat2 = getbufline(buf, 1, '$')
  let s:R.windows2 = winnr('$')
  " a new conversation, stopped before its answer
  Nib! third
  NibStop
  let s:R.done3 = s:WaitFor({-> !nibble#stats().pending}, 8000)
  let s:R.chat3 = getbufline(buf, 1, '$')
  let s:R.messages = s:Messages()
endfunction

" Nothing on the socket: the plugin starts nibd itself.
function! s:CaseAutostart() abort
  let g:nibble_nibd = $NIBBLE_VIM_NIBD
  let g:nibble_model = $NIBBLE_VIM_MODEL
  let g:nibble_nibd_args = ['-t', '1']
  call s:Step(function('s:Ready'), {-> execute('let s:R.suggestion = nibble#suggestion()')
        \ + execute('let s:R.prefix = join(getline(1, "."), "\n")')
        \ + execute('let s:R.starts = nibble#stats().starts') + feedkeys("\<Esc>", 't')})
  call s:Run("oThey")
  let s:R.messages = s:Messages()
endfunction

" Errors are said once, and say what to do.
function! s:CaseErrors() abort
  " no model anywhere
  call s:Step(s:Idle(200), {-> feedkeys("a", 't')})
  call s:Step(s:Idle(200), {-> execute('let s:R.no_model = s:Messages()')
        \ + execute('let g:nibble_model = $NIBBLE_VIM_MODEL')
        \ + execute('let g:nibble_nibd = "/nonexistent/nibd"')
        \ + execute('let g:nibble_retry_s = 0') + feedkeys("b", 't')})
  call s:Step(s:Idle(200), {-> feedkeys("c", 't')})
  call s:Step(s:Idle(200), {-> execute('let s:R.no_nibd = s:Messages()')
        \ + execute('let g:nibble_nibd = $NIBBLE_VIM_NIBD')
        \ + execute('let g:nibble_model = "/nonexistent/model.gguf"') + feedkeys("d", 't')})
  call s:Step({-> len(s:Messages()) > len(s:R.no_nibd)},
        \ {-> execute('let s:R.bad_model = s:Messages()') + feedkeys("\<Esc>", 't')})
  call s:Run("oThey")
endfunction

try
  let s:R.vim = v:version * 10000 + (has('patch-9.0.1378') ? 1378 : 0)
  let s:start = reltime()
  execute 'call s:Case' . toupper($NIBBLE_VIM_CASE[0]) . tolower($NIBBLE_VIM_CASE[1:]) . '()'
  let s:R.ms = float2nr(reltimefloat(reltime(s:start)) * 1000)
catch
  let s:R.error = get(s:R, 'error', v:exception . ' at ' . v:throwpoint)
finally
  let s:R.errmsg = v:errmsg
  call s:Write()
  qall!
endtry
