" nibble for classic Vim: suggestions as you type and :Nib, from a local
" model served by nibd.  Commands, <Plug> maps and default keys only; the
" rest is in autoload/nibble.vim, loaded on first use.  Neovim uses
" plugin/nibble.lua instead.  See :help nibble-vim.
if has('nvim') | finish | endif
if exists('g:loaded_nibble_vim') | finish | endif
let g:loaded_nibble_vim = 1

let s:save_cpo = &cpo
set cpo&vim

" Unix-domain channels came in 8.2.4684, virtual text below a line in 9.0.
if !(has('channel') && has('job') && has('timers') && has('textprop') && has('lambda')
      \ && has('patch-9.0.0185'))
  function! s:Unavailable(...) abort
    if !get(s:, 'said')
      let s:said = 1
      echohl WarningMsg
      echomsg 'nibble: needs Vim 9.0.0185 or later with +channel, +job, +timers and +textprop'
      echohl None
    endif
  endfunction
  command! -nargs=* -range -bang Nib call s:Unavailable()
  command! -bar NibToggle call s:Unavailable()
  command! -bar NibStatus call s:Unavailable()
  command! -bar NibStop call s:Unavailable()
  let &cpo = s:save_cpo
  unlet s:save_cpo
  finish
endif

command! -nargs=+ -range -bang Nib call nibble#chat(<q-args>, <bang>0, <range>, <line1>, <line2>)
command! -bar NibToggle call nibble#toggle()
command! -bar NibStatus call nibble#status()
command! -bar NibStop call nibble#stop()

inoremap <silent> <Plug>(nibble-accept) <Cmd>call nibble#accept('')<CR>
inoremap <silent> <Plug>(nibble-accept-word) <Cmd>call nibble#accept('word')<CR>
inoremap <silent> <Plug>(nibble-accept-line) <Cmd>call nibble#accept('line')<CR>
inoremap <silent> <Plug>(nibble-dismiss) <Cmd>call nibble#dismiss()<CR>

highlight default link NibbleSuggestion Comment

augroup nibble
  autocmd!
  autocmd InsertEnter,CursorMovedI,TextChangedI * call nibble#on_change()
  " (exists() does not load the autoload script: nothing to dismiss before)
  autocmd InsertLeave,CompleteChanged,BufLeave *
        \ if exists('*nibble#dismiss') | call nibble#dismiss() | endif
  autocmd ColorScheme * highlight default link NibbleSuggestion Comment
  autocmd VimEnter * call s:MapTab()
augroup END

" What Tab did before: replayed when no suggestion shows.
let s:tab = {}

function! s:TabFallback() abort
  if empty(s:tab)
    return "\t"
  endif
  let rhs = substitute(s:tab.rhs, '\c<SID>', '<SNR>' . s:tab.sid . '_', 'g')
  if s:tab.expr
    return eval(rhs)
  endif
  " maparg() gives key notation: turn it into the keys themselves
  return eval('"' . substitute(escape(rhs, '\"'), '<', '\\<', 'g') . '"')
endfunction

" Map Tab to accept, keeping whatever global Tab mapping exists as the
" fallback.  Run at start-up and again at VimEnter, in case another plugin
" mapped Tab after this one.
function! s:MapTab() abort
  if get(g:, 'nibble_no_maps') || get(g:, 'nibble_no_tab_map') || hasmapto('<Plug>(nibble-accept)', 'i')
    return
  endif
  let old = maparg('<Tab>', 'i', 0, 1)
  if !empty(old) && (get(old, 'buffer') || old.rhs =~# 'nibble#')
    return
  endif
  let s:tab = old
  " keys a non-recursive old mapping produced must not be remapped again
  let map = empty(old) || old.noremap || get(old, 'script') ? 'inoremap' : 'imap'
  execute map '<silent><expr> <Tab> nibble#visible() ? nibble#accept_keys() : <SID>TabFallback()'
endfunction

if !get(g:, 'nibble_no_maps')
  call s:MapTab()
  if empty(maparg('<C-]>', 'i')) && !hasmapto('<Plug>(nibble-dismiss)', 'i')
    inoremap <silent><expr> <C-]> nibble#visible() ? "\<Cmd>call nibble#dismiss()\<CR>" : "\<C-]>"
  endif
  if empty(maparg('<M-Right>', 'i')) && !hasmapto('<Plug>(nibble-accept-word)', 'i')
    imap <M-Right> <Plug>(nibble-accept-word)
  endif
  if empty(maparg('<M-C-Right>', 'i')) && !hasmapto('<Plug>(nibble-accept-line)', 'i')
    imap <M-C-Right> <Plug>(nibble-accept-line)
  endif
endif

let &cpo = s:save_cpo
unlet s:save_cpo
