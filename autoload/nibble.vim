" autoload/nibble.vim - nibble for classic Vim: the connection to nibd,
" suggestions shown as virtual text while typing, and :Nib.  The protocol
" is doc/protocol.md; the user's side is :help nibble-vim.
"
" One channel to nibd serves everything.  Requests carry integer ids; the
" channel callback hands each event to the handler registered for its id.
" The suggestion in progress (s:sugg) is anchored at a buffer position and
" holds the text streamed so far; typing that matches its start consumes
" it, anything else cancels it and asks again after a short pause.

let s:save_cpo = &cpo
set cpo&vim

let s:type = 'NibbleSuggestion'

" ------------------------------------------------------------------ options

function! s:Opt(name, default) abort
  return get(g:, 'nibble_' . a:name, a:default)
endfunction

function! s:Expand(path) abort
  return a:path =~# '^\~/' ? expand('~') . a:path[1:] : a:path
endfunction

" The "key = value" file shared with nibd and nib (core/src/config.c).
function! s:Config() abort
  let dir = !empty($XDG_CONFIG_HOME) ? $XDG_CONFIG_HOME : expand('~') . '/.config'
  let file = dir . '/nibble/config'
  let cfg = {}
  if !filereadable(file)
    return cfg
  endif
  for line in readfile(file)
    let m = matchlist(line, '^\s*\([a-z_]\+\)\s*=\s*\(.\{-}\)\s*$')
    if empty(m) || line =~# '^\s*#'
      continue
    endif
    let val = m[2]
    if len(val) >= 2 && val[0] ==# '"' && val[-1:] ==# '"'
      let val = val[1:-2]
    endif
    let cfg[m[1]] = index(['model', 'socket', 'nibd'], m[1]) >= 0 ? s:Expand(val) : val
  endfor
  return cfg
endfunction

function! s:Uid() abort
  if !exists('s:uid')
    let s:uid = ''
    if filereadable('/proc/self/status')
      let l = filter(readfile('/proc/self/status'), 'v:val =~# "^Uid:"')
      let s:uid = empty(l) ? '' : split(l[0])[1]
    endif
    if s:uid ==# ''
      let s:uid = trim(system('id -u'))
    endif
  endif
  return s:uid
endfunction

" g:nibble_socket, else the config file's socket, else nibd's default.
function! nibble#socket_path() abort
  let p = s:Opt('socket', '')
  if p !=# ''
    return s:Expand(p)
  endif
  let cfg = s:Config()
  if get(cfg, 'socket', '') !=# ''
    return cfg.socket
  endif
  if !empty($XDG_RUNTIME_DIR)
    return $XDG_RUNTIME_DIR . '/nibble/nibd.sock'
  endif
  return '/tmp/nibble-' . s:Uid() . '/nibd.sock'
endfunction

" ------------------------------------------------------------------ messages

let s:said = {}

" An error, shown once until the next successful connection.
function! s:Error(msg) abort
  if has_key(s:said, a:msg)
    return
  endif
  let s:said[a:msg] = 1
  echohl ErrorMsg
  echomsg 'nibble: ' . a:msg
  echohl None
endfunction

function! s:Warn(msg) abort
  if has_key(s:said, a:msg)
    return
  endif
  let s:said[a:msg] = 1
  echohl WarningMsg
  echomsg 'nibble: ' . a:msg
  echohl None
endfunction

" ------------------------------------------------------------------ connection

" state: closed, starting (nibd launched, waiting for its socket) or open.
" queue: [id, line] sent once open.  fim: this channel's daemon answers
" infill (reset on every new connection).
let s:conn = {'ch': v:null, 'state': 'closed', 'queue': [], 'fim': 1, 'path': '',
      \ 'timer': -1, 'job': v:null, 'err': [], 'exit': -1, 'retry_after': []}
let s:handlers = {}
let s:next_id = 1
let s:stats = {'requests': 0, 'cancels': 0, 'starts': 0, 'fallbacks': 0}

function! s:TryOpen(path) abort
  try
    let ch = ch_open('unix:' . a:path, {'mode': 'nl', 'noblock': 1,
          \ 'callback': function('s:OnLine'), 'close_cb': function('s:OnClose')})
  catch
    return v:null
  endtry
  return ch_status(ch) ==# 'open' ? ch : v:null
endfunction

function! s:Opened(ch) abort
  call s:StopRetry()
  let s:conn.ch = a:ch
  let s:conn.state = 'open'
  let s:conn.fim = 1
  let s:conn.retry_after = []
  let s:said = {}
  let queue = s:conn.queue
  let s:conn.queue = []
  for [id, line] in queue
    call s:Write(line)
  endfor
endfunction

function! s:StopRetry() abort
  if s:conn.timer != -1
    call timer_stop(s:conn.timer)
    let s:conn.timer = -1
  endif
endfunction

" End every request still waiting for the connection with an error.
function! s:FailQueued(msg) abort
  call s:StopRetry()
  let s:conn.state = 'closed'
  let queue = s:conn.queue
  let s:conn.queue = []
  for [id, line] in queue
    call s:Finish(id, {'id': id, 'done': v:true, 'stop_reason': 'error', 'error': 'connect',
          \ 'message': a:msg})
  endfor
  " typing does not launch nibd again for a while; commands still do
  let s:conn.retry_after = reltime()
  call s:Error(a:msg)
endfunction

" Connect; when nothing answers, start nibd and keep trying for a while.
function! s:Connect(autostart) abort
  let s:conn.path = nibble#socket_path()
  let ch = s:TryOpen(s:conn.path)
  if ch isnot v:null
    return s:Opened(ch)
  endif
  if !a:autostart
    let s:conn.queue = []
    return
  endif
  let cfg = s:Config()
  let model = s:Opt('model', '')
  if model ==# ''
    let model = !empty($NIBBLE_MODEL) ? $NIBBLE_MODEL : get(cfg, 'model', '')
  endif
  if model ==# ''
    return s:FailQueued('no nibd is running on ' . s:conn.path . ' and no model is configured'
          \ . ' to start one: set g:nibble_model or $NIBBLE_MODEL, or "model = PATH" in the'
          \ . ' config file')
  endif
  let nibd = s:Opt('nibd', '')
  if nibd ==# ''
    let nibd = get(cfg, 'nibd', '')
  endif
  if nibd ==# ''
    let nibd = exepath('nibd')
  endif
  if nibd ==# '' || !executable(s:Expand(nibd))
    return s:FailQueued('cannot find nibd' . (nibd ==# '' ? '' : ' (' . nibd . ')')
          \ . ': put it on $PATH or set g:nibble_nibd')
  endif
  let cmd = [s:Expand(nibd), '--daemonize', '-m', s:Expand(model), '--socket', s:conn.path]
        \ + s:Opt('nibd_args', [])
  let s:conn.err = []
  let s:conn.exit = -1
  try
    let s:conn.job = job_start(cmd, {'in_io': 'null', 'out_io': 'null', 'stoponexit': '',
          \ 'err_cb': {ch, msg -> add(s:conn.err, msg)},
          \ 'exit_cb': {job, status -> s:OnStartExit(status)}})
  catch
    return s:FailQueued('cannot run ' . nibd . ': ' . v:exception)
  endtry
  if job_status(s:conn.job) ==# 'fail'
    return s:FailQueued('cannot run ' . nibd)
  endif
  let s:stats.starts += 1
  let s:conn.state = 'starting'
  let s:conn.started = reltime()
  let s:conn.timer = timer_start(30, function('s:Retry'), {'repeat': -1})
endfunction

function! s:OnStartExit(status) abort
  let s:conn.exit = a:status
  let s:conn.exited = reltime()
  if s:conn.state ==# 'starting'
    call s:Retry(-1)
  endif
endfunction

" nibd --daemonize exits 0 once the daemon serves, or 1 saying why not.
" Its socket listens before the model is loaded, so connect only after.
function! s:Retry(timer) abort
  if s:conn.state !=# 'starting'
    return s:StopRetry()
  endif
  let said = join(s:conn.err, ' ')
  if s:conn.exit == 0 || (s:conn.exit > 0 && said =~# 'already serving')
    let ch = s:TryOpen(s:conn.path)
    if ch isnot v:null
      return s:Opened(ch)
    endif
  elseif s:conn.exit > 0
    " its last words may come just after its exit
    if said !=# '' || reltimefloat(reltime(s:conn.exited)) > 0.5
      return s:FailQueued('could not start nibd: '
            \ . (said !=# '' ? said : 'it exited with status ' . s:conn.exit))
    endif
    return
  endif
  let limit = s:Opt('start_timeout_ms', 10000)
  if reltimefloat(reltime(s:conn.started)) * 1000 > limit
    call job_stop(s:conn.job)
    return s:FailQueued('started nibd but its socket ' . s:conn.path . ' did not answer within '
          \ . limit . ' ms')
  endif
endfunction

function! s:OnClose(ch) abort
  let s:conn.ch = v:null
  let s:conn.state = 'closed'
  let ids = keys(s:handlers)
  for id in ids
    call s:Finish(str2nr(id), {'id': str2nr(id), 'done': v:true, 'stop_reason': 'error',
          \ 'error': 'closed', 'message': 'nibd closed the connection'})
  endfor
endfunction

function! s:Write(line) abort
  try
    call ch_sendraw(s:conn.ch, a:line . "\n")
  catch
    call s:OnClose(s:conn.ch)
  endtry
endfunction

" Send a request; handler is {'text': F(piece), 'done': F(event)} or
" {'reply': F(event)} for one-event answers.  Returns its id.
function! s:Send(req, handler, autostart) abort
  let req = copy(a:req)
  let req.id = s:next_id
  let s:next_id += 1
  let s:handlers[req.id] = a:handler
  let line = json_encode(req)
  if s:conn.state ==# 'open'
    call s:Write(line)
  else
    call add(s:conn.queue, [req.id, line])
    if s:conn.state ==# 'closed'
      let autostart = a:autostart && (empty(s:conn.retry_after)
            \ || reltimefloat(reltime(s:conn.retry_after)) > s:Opt('retry_s', 30))
      call s:Connect(autostart)
      if s:conn.state ==# 'closed' && has_key(s:handlers, req.id)
        " not running and not started: end the request quietly
        call s:Finish(req.id, {'id': req.id, 'done': v:true, 'stop_reason': 'error',
              \ 'error': 'connect', 'message': 'nibd is not running'})
      endif
    endif
  endif
  return req.id
endfunction

function! s:Cancel(id) abort
  if !has_key(s:handlers, a:id)
    return
  endif
  call remove(s:handlers, a:id)
  let s:stats.cancels += 1
  if s:conn.state ==# 'open'
    call s:Write(json_encode({'op': 'cancel', 'target': a:id}))
  else
    call filter(s:conn.queue, 'v:val[0] != a:id')
  endif
endfunction

function! s:Finish(id, ev) abort
  if !has_key(s:handlers, a:id)
    return
  endif
  let h = remove(s:handlers, a:id)
  if has_key(h, 'reply')
    call h.reply(a:ev)
  else
    call h.done(a:ev)
  endif
endfunction

function! s:OnLine(ch, msg) abort
  try
    let ev = json_decode(a:msg)
  catch
    return
  endtry
  if type(ev) != v:t_dict || type(get(ev, 'id', v:null)) != v:t_number
        \ || !has_key(s:handlers, ev.id)
    return
  endif
  let h = s:handlers[ev.id]
  if has_key(h, 'reply') || get(ev, 'done', v:false) is v:true
    call s:Finish(ev.id, ev)
  elseif type(get(ev, 'text', v:null)) == v:t_string
    call h.text(ev.text)
  endif
endfunction

" ------------------------------------------------------------------ suggestions

" s:sugg: {} or the suggestion for one position: bufnr, lnum, before and
" after (the line's text either side of the cursor), text (streamed so
" far), req (the request still streaming, or 0), prefix and suffix sent.
let s:sugg = {}
let s:timer = -1
let s:last = []
" Where the virtual text is: buffer, line and b:changedtick when drawn.
let s:shown = {'buf': -1, 'lnum': 0, 'tick': -1}

function! s:Enabled() abort
  return s:Opt('enabled', 1) && get(b:, 'nibble_enabled', 1) && &modifiable
        \ && (&buftype ==# '' || &buftype ==# 'acwrite')
        \ && index(s:Opt('disabled_filetypes', []), &filetype) < 0
endfunction

function! s:Hide() abort
  let b = s:shown.buf
  if b != -1 && bufexists(b)
    let props = {'type': s:type, 'bufnr': b, 'all': 1}
    " while the text streams in nothing moves: only its line has any (a
    " whole-buffer removal costs milliseconds in a long file)
    if getbufvar(b, 'changedtick') == s:shown.tick
      silent! call prop_remove(props, s:shown.lnum)
    else
      silent! call prop_remove(props)
    endif
  endif
  let s:shown.buf = -1
endfunction

function! s:StopTimer() abort
  if s:timer != -1
    call timer_stop(s:timer)
    let s:timer = -1
  endif
endfunction

" Forget the suggestion: cancel its request, remove its text.
function! s:Clear() abort
  call s:StopTimer()
  if !empty(s:sugg) && s:sugg.req
    call s:Cancel(s:sugg.req)
  endif
  let s:sugg = {}
  call s:Hide()
endfunction

" The cursor is where the suggestion was made (or consumed up to).
function! s:AtAnchor() abort
  if empty(s:sugg) || bufnr() != s:sugg.bufnr || line('.') != s:sugg.lnum
    return 0
  endif
  let c = col('.') - 1
  let line = getline('.')
  return c == len(s:sugg.before) && strpart(line, 0, c) ==# s:sugg.before
        \ && strpart(line, c) ==# s:sugg.after
endfunction

function! s:Render() abort
  call s:Hide()
  if empty(s:sugg) || s:sugg.text ==# '' || mode() !=# 'i' || !s:AtAnchor()
    return
  endif
  if empty(prop_type_get(s:type))
    call prop_type_add(s:type, {'highlight': 'NibbleSuggestion'})
  endif
  let lines = split(s:sugg.text, "\n", 1)
  if lines[0] !=# ''
    call prop_add(s:sugg.lnum, len(s:sugg.before) + 1, {'type': s:type, 'text': lines[0]})
  endif
  for l in lines[1:]
    call prop_add(s:sugg.lnum, 0, {'type': s:type, 'text': l, 'text_align': 'below'})
  endfor
  let s:shown = {'buf': s:sugg.bufnr, 'lnum': s:sugg.lnum, 'tick': b:changedtick}
  redraw
  call s:Event('NibbleSuggestion')
endfunction

" Typing that matches the start of the suggestion: keep the rest.
function! s:TryConsume() abort
  if empty(s:sugg) || bufnr() != s:sugg.bufnr
    return 0
  endif
  let lnum = line('.')
  let c = col('.') - 1
  let line = getline('.')
  let before = strpart(line, 0, c)
  if strpart(line, c) !=# s:sugg.after
    return 0
  endif
  if lnum == s:sugg.lnum
    if before ==# s:sugg.before
      return 1
    endif
    if len(before) < len(s:sugg.before) || strpart(before, 0, len(s:sugg.before)) !=# s:sugg.before
      return 0
    endif
    let typed = strpart(before, len(s:sugg.before))
  elseif lnum == s:sugg.lnum + 1 && getline(s:sugg.lnum) ==# s:sugg.before
    let typed = "\n" . before
  else
    return 0
  endif
  if strpart(s:sugg.text, 0, len(typed)) !=# typed
    return 0
  endif
  let s:sugg.text = strpart(s:sugg.text, len(typed))
  let s:sugg.lnum = lnum
  let s:sugg.before = before
  if s:sugg.text ==# '' && !s:sugg.req
    return 0
  endif
  call s:Render()
  return 1
endfunction

" InsertEnter, CursorMovedI, TextChangedI.
function! nibble#on_change() abort
  if !s:Enabled()
    if !empty(s:sugg) || s:timer != -1
      call s:Clear()
    endif
    return
  endif
  let state = [bufnr(), b:changedtick, line('.'), col('.')]
  if state ==# s:last
    return
  endif
  let s:last = state
  if s:TryConsume()
    return
  endif
  call s:Clear()
  if !pumvisible()
    let s:timer = timer_start(s:Opt('debounce_ms', 50), function('s:Fire'))
  endif
endfunction

function! s:Fire(timer) abort
  let s:timer = -1
  if mode() !=# 'i' || !s:Enabled() || pumvisible()
    return
  endif
  call s:Request()
endfunction

function! s:Request() abort
  let lnum = line('.')
  let c = col('.') - 1
  let line = getline('.')
  let before = strpart(line, 0, c)
  let after = strpart(line, c)
  let above = lnum > 1 ? getline(max([1, lnum - s:Opt('lines_before', 100)]), lnum - 1) : []
  let below = getline(lnum + 1, lnum + s:Opt('lines_after', 30))
  let s:sugg = {'bufnr': bufnr(), 'lnum': lnum, 'before': before, 'after': after, 'text': '',
        \ 'req': 0, 'prefix': join(above + [before], "\n"),
        \ 'suffix': join([after] + below, "\n")}
  let s:last = [bufnr(), b:changedtick, lnum, col('.')]
  call s:SendSuggestion(s:sugg)
endfunction

" infill, or complete on the prefix when this daemon said it cannot.
function! s:SendSuggestion(sugg) abort
  let req = {'session': 'vim-' . a:sugg.bufnr, 'n_predict': s:Opt('n_predict', 64),
        \ 'temperature': s:Opt('temperature', 0)}
  let fallback = s:Opt('fim_fallback', 'server')
  if s:conn.fim
    call extend(req, {'op': 'infill', 'prefix': a:sugg.prefix, 'suffix': a:sugg.suffix,
          \ 'fallback': fallback ==# 'server' ? 'prefix' : 'none'})
  else
    call extend(req, {'op': 'complete', 'prompt': a:sugg.prefix})
    let s:stats.fallbacks += 1
  endif
  call extend(req, s:Opt('request', {}), 'keep')
  let a:sugg.op = req.op
  let s:stats.requests += 1
  let h = {}
  let h.text = function('s:OnSuggestionText', [a:sugg])
  let h.done = function('s:OnSuggestionDone', [a:sugg])
  let a:sugg.req = -1
  let id = s:Send(req, h, 1)
  " (a request that could not even be sent has already finished)
  if a:sugg.req == -1
    let a:sugg.req = has_key(s:handlers, id) ? id : 0
  endif
  call s:Event('NibbleRequest')
endfunction

function! s:Event(name) abort
  if exists('#User#' . a:name)
    execute 'doautocmd <nomodeline> User' a:name
  endif
endfunction

function! s:OnSuggestionText(sugg, piece) abort
  if a:sugg isnot s:sugg
    return
  endif
  let s:sugg.text .= a:piece
  call s:Render()
endfunction

function! s:OnSuggestionDone(sugg, ev) abort
  if a:sugg isnot s:sugg
    return
  endif
  let s:sugg.req = 0
  let err = get(a:ev, 'error', '')
  if err ==# 'unsupported' && a:sugg.op ==# 'infill' && s:Opt('fim_fallback', 'server') !=# 'none'
    " an older nibd, or fim_fallback = 'client': complete the prefix here
    let s:conn.fim = 0
    call s:SendSuggestion(s:sugg)
    return
  endif
  if err !=# '' && err !=# 'connect' && err !=# 'closed'
    call s:Error(get(a:ev, 'message', err))
  elseif err ==# 'closed'
    call s:Error('nibd closed the connection')
  endif
  if s:sugg.text ==# ''
    let s:sugg = {}
    call s:Hide()
  endif
endfunction

" Is a suggestion showing at the cursor?
function! nibble#visible() abort
  return !empty(s:sugg) && s:sugg.text !=# '' && s:AtAnchor()
endfunction

" The suggestion's text (what is left of it), or ''.
function! nibble#suggestion() abort
  return nibble#visible() ? s:sugg.text : ''
endfunction

" Keys for an <expr> map that accept the whole suggestion.
function! nibble#accept_keys() abort
  return "\<Cmd>call nibble#accept('')\<CR>"
endfunction

" Insert the suggestion, or its next word ('word') or line ('line').
function! nibble#accept(...) abort
  if !nibble#visible()
    return 0
  endif
  let kind = a:0 ? a:1 : ''
  let text = s:sugg.text
  if kind ==# 'word'
    let part = matchstr(text, '^\n\=\s*\%(\k\+\|\S\)')
  elseif kind ==# 'line'
    let part = matchstr(text, '^\n\=[^\n]*')
  else
    let part = text
  endif
  if part ==# ''
    let part = text[0]
  endif
  let lines = split(part, "\n", 1)
  let lnum = s:sugg.lnum
  if len(lines) == 1
    call setline(lnum, s:sugg.before . part . s:sugg.after)
    let before = s:sugg.before . part
  else
    call setline(lnum, s:sugg.before . lines[0])
    let rest = lines[1:]
    let before = rest[-1]
    let rest[-1] .= s:sugg.after
    call append(lnum, rest)
    let lnum += len(rest)
  endif
  call cursor(lnum, len(before) + 1)
  let s:sugg.text = strpart(text, len(part))
  let s:sugg.lnum = lnum
  let s:sugg.before = before
  let s:last = [bufnr(), b:changedtick, lnum, col('.')]
  if s:sugg.text ==# ''
    " all of it: ask what comes next
    call s:Clear()
    let s:timer = timer_start(s:Opt('debounce_ms', 50), function('s:Fire'))
  else
    call s:Render()
  endif
  return 1
endfunction

function! nibble#dismiss() abort
  call s:Clear()
  let s:last = []
endfunction

function! nibble#toggle() abort
  let g:nibble_enabled = !s:Opt('enabled', 1)
  if !g:nibble_enabled
    call nibble#dismiss()
  endif
  echomsg 'nibble: suggestions ' . (g:nibble_enabled ? 'on' : 'off')
endfunction

" For tests and status lines.
function! nibble#stats() abort
  return extend(copy(s:stats), {'state': s:conn.state, 'fim': s:conn.fim,
        \ 'pending': len(s:handlers), 'streaming': !empty(s:sugg) && s:sugg.req != 0})
endfunction

" ------------------------------------------------------------------ :Nib

let s:chat = {'buf': -1, 'req': 0, 'messages': []}

function! s:ChatWindow() abort
  let from = win_getid()
  if !bufexists(s:chat.buf)
    botright new
    setlocal buftype=nofile bufhidden=hide noswapfile nobuflisted filetype=markdown
    silent file nibble://chat
    let s:chat.buf = bufnr()
    let s:chat.messages = []
  else
    let wins = win_findbuf(s:chat.buf)
    if empty(wins)
      execute 'botright sbuffer' s:chat.buf
    else
      call win_gotoid(wins[0])
    endif
  endif
  let win = win_getid()
  call win_gotoid(from)
  return win
endfunction

function! s:ChatAppend(text) abort
  let buf = s:chat.buf
  if !bufexists(buf)
    return
  endif
  let lines = split(a:text, "\n", 1)
  let n = getbufinfo(buf)[0].linecount
  let last = getbufline(buf, n)[0]
  call setbufline(buf, n, last . lines[0])
  if len(lines) > 1
    call appendbufline(buf, n, lines[1:])
  endif
  for w in win_findbuf(buf)
    call win_execute(w, 'normal! G')
  endfor
  redraw
endfunction

" :[range]Nib[!] {prompt}: ask the model; the answer streams into the
" nibble://chat window.  Without ! the conversation there goes on.
function! nibble#chat(prompt, bang, range, line1, line2) abort
  let content = a:prompt
  if a:range > 0
    let text = join(getline(a:line1, a:line2), "\n")
    let ticks = map(split(text, '[^`]\+'), 'len(v:val)')
    let fence = repeat('`', max([3, max(ticks + [0]) + 1]))
    let content .= "\n\n" . fence . "\n" . text . "\n" . fence
  endif
  if s:chat.req
    call s:Cancel(s:chat.req)
    let s:chat.req = 0
  endif
  let win = s:ChatWindow()
  let buf = s:chat.buf
  if a:bang
    call deletebufline(buf, 1, '$')
    let s:chat.messages = []
  endif
  let empty = getbufinfo(buf)[0].linecount == 1 && getbufline(buf, 1)[0] ==# ''
  call s:ChatAppend((empty ? '' : "\n\n") . join(map(split(content, "\n", 1), '"> " . v:val'), "\n")
        \ . "\n\n")
  call add(s:chat.messages, {'role': 'user', 'content': content})
  let messages = copy(s:chat.messages)
  if s:Opt('system', '') !=# ''
    call insert(messages, {'role': 'system', 'content': g:nibble_system})
  endif
  let req = {'op': 'chat', 'messages': messages, 'session': 'vim-chat-' . buf,
        \ 'n_predict': s:Opt('chat_n_predict', 512)}
  if has_key(g:, 'nibble_chat_temperature')
    let req.temperature = g:nibble_chat_temperature
  endif
  call extend(req, s:Opt('chat_request', {}), 'keep')
  let state = {'answer': ''}
  let h = {}
  let h.text = function('s:OnChatText', [state])
  let h.done = function('s:OnChatDone', [state])
  let s:chat.req = -1
  let id = s:Send(req, h, 1)
  if s:chat.req == -1
    let s:chat.req = has_key(s:handlers, id) ? id : 0
  endif
endfunction

function! s:OnChatText(state, piece) abort
  let a:state.answer .= a:piece
  call s:ChatAppend(a:piece)
endfunction

function! s:OnChatDone(state, ev) abort
  let s:chat.req = 0
  if get(a:ev, 'stop_reason', '') ==# 'error'
    call s:ChatAppend((a:state.answer ==# '' ? '' : "\n") . '[error: '
          \ . get(a:ev, 'message', get(a:ev, 'error', ''))
          \ . (get(a:ev, 'error', '') ==# 'context_full' ? '; :Nib! starts a new conversation' : '')
          \ . ']')
    " the question stays in the window but not in the conversation
    call remove(s:chat.messages, -1)
    if get(a:ev, 'error', '') !=# 'connect'
      call s:Error(get(a:ev, 'message', get(a:ev, 'error', '')))
    endif
    return
  endif
  if get(a:ev, 'stop_reason', '') ==# 'cancelled'
    call s:ChatAppend(' [stopped]')
  endif
  call add(s:chat.messages, {'role': 'assistant', 'content': a:state.answer})
  if has_key(a:ev, 'warning')
    call s:Warn(a:ev.warning)
  endif
endfunction

" ------------------------------------------------------------------ commands

function! nibble#stop() abort
  call nibble#dismiss()
  if s:chat.req
    call s:Cancel(s:chat.req)
    let s:chat.req = 0
    call s:ChatAppend(' [stopped]')
  endif
endfunction

function! nibble#status() abort
  call s:Send({'op': 'status'}, {'reply': function('s:OnStatus')}, 0)
endfunction

function! s:OnStatus(ev) abort
  if get(a:ev, 'stop_reason', '') ==# 'error'
    echomsg 'nibble: ' . get(a:ev, 'message', 'no status') . ' (' . s:conn.path . ')'
    return
  endif
  let busy = len(filter(copy(get(a:ev, 'slots', [])), 'v:val.busy'))
  echomsg printf('nibble: %s (%s) on %s; %s, fill-in-the-middle %s, template %s, %d/%d slots busy, %d requests',
        \ get(a:ev, 'name', '?'), get(a:ev, 'model', '?'), s:conn.path,
        \ get(a:ev, 'loaded', 0) ? 'loaded' : 'not loaded',
        \ get(a:ev, 'fim', 0) ? 'yes' : 'no', get(a:ev, 'chat_template', '?'),
        \ busy, len(get(a:ev, 'slots', [])), get(a:ev, 'requests', 0))
endfunction

let &cpo = s:save_cpo
unlet s:save_cpo
