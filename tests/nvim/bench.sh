#!/bin/sh
# make bench: the Neovim plugin's editor cost and suggestion latency, in a
# headless Neovim against private daemons (stories260K, and the 1.1B Q4_0
# model make bench generates).  Prints figures; asserts nothing.
set -eu
src=$(cd "$(dirname "$0")/../.." && pwd)
bin=${NIBBLE_BIN:-$src/build/bin}
data=${NIBBLE_TEST_DATA:-$src/../shared}
stories=$data/models/stories260K.gguf
large=${1:-}
if ! command -v nvim >/dev/null; then
    echo "Neovim plugin: skipped (nvim is not installed)"
    exit 0
fi
if [ ! -f "$stories" ]; then
    echo "Neovim plugin: skipped (no $stories)"
    exit 0
fi
dir=$(mktemp -d /tmp/nibble-nvbench-XXXXXX)
pids=""
cleanup() {
    for p in $pids; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$dir"
}
trap cleanup EXIT INT TERM
"$bin/nibd" -m "$stories" --socket "$dir/a.sock" --config /dev/null -t 2 >/dev/null 2>&1 &
pids="$pids $!"
if [ -n "$large" ] && [ -f "$large" ]; then
    "$bin/nibd" -m "$large" --socket "$dir/b.sock" --config /dev/null -t 2 -c 2048 >/dev/null 2>&1 &
    pids="$pids $!"
    export NIBBLE_LARGE_SOCK="$dir/b.sock"
fi
for s in "$dir/a.sock" ${NIBBLE_LARGE_SOCK:-}; do
    i=0
    while [ ! -S "$s" ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i + 1)); done
done
export NIBBLE_SOCK="$dir/a.sock" NIBBLE_ADDR="$dir/editor.sock" NIBBLE_N_PREDICT=32
nvim --headless -u NONE -i NONE -n --listen "$dir/editor.sock" --cmd "set rtp^=$src" \
    -c "luafile $src/tests/nvim/editor.lua" </dev/null >/dev/null 2>&1 &
pids="$pids $!"
i=0
while [ ! -S "$dir/editor.sock" ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
nvim --headless -u NONE -i NONE -n --cmd "set rtp^=$src" -c "luafile $src/tests/nvim/bench.lua"
