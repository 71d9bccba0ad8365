#!/bin/sh
# make quality: quantize an F32 model to every type nibble quantize writes
# and print one table of size, bits per weight, perplexity on a held-out
# text, and KL divergence and top-1 agreement against the F32 model.
# Prints figures; asserts nothing (like make bench).
#
#   tests/quality.sh NIBBLE MODEL TEXT OUTDIR
#
# QUALITY_TYPES overrides the list of types; QUALITY_ARGS passes options to
# nibble perplexity (default: -c 128).  Quantized files are kept in OUTDIR
# and reused while they are newer than MODEL.
set -eu
if [ $# -ne 4 ]; then
    echo "usage: $0 NIBBLE MODEL TEXT OUTDIR" >&2
    exit 2
fi
nibble=$1 model=$2 text=$3 out=$4
types=${QUALITY_TYPES:-"F16 BF16 Q8_0 Q6_K Q5_K_M Q5_K Q5_1 Q5_0 Q4_K_M Q4_K Q4_1 Q4_0 IQ4_NL Q3_K Q2_K"}
args=${QUALITY_ARGS:--c 128}
if [ ! -f "$model" ]; then
    echo "quality: skipped (no $model; set NIBBLE_TEST_DATA)"
    exit 0
fi
mkdir -p "$out"
stem=$(basename "$model" .gguf)
stem=${stem%-f32}

# one JSON line -> "type size_mib bpw ppl ppl_err kld kld_err top1 top1_err"
row() {
    awk -v name="$1" '
    function num(k,   m) {
        if (match($0, "\"" k "\":[-+0-9.eE]+")) return substr($0, RSTART + length(k) + 3, RLENGTH - length(k) - 3) + 0
        return 0
    }
    {
        printf "%-8s %9.3f %6.2f %10.4f %9.4f %11.6f %9.6f %7.2f%% %6.2f%%\n", name,
            num("file_size") / 1048576, 8 * num("weight_bytes") / num("n_params"),
            num("ppl"), num("ppl_err"), num("kld"), num("kld_err"),
            100 * num("top1"), 100 * num("top1_err")
    }'
}

printf 'model %s, text %s (%s), nibble perplexity %s\n' "$model" "$text" \
    "$(wc -l < "$text" | tr -d ' ') lines" "$args"
printf '%-8s %9s %6s %10s %9s %11s %9s %8s %7s\n' type "size MiB" bpw PPL "+/-" "KLD" "+/-" top-1 "+/-"
# shellcheck disable=SC2086 # args is a list of options
"$nibble" perplexity -m "$model" --kl-base "$model" -f "$text" $args --json | row F32
for t in $types; do
    f=$out/$stem-$(echo "$t" | tr A-Z a-z).gguf
    if [ ! -f "$f" ] || [ "$model" -nt "$f" ]; then
        "$nibble" quantize "$model" "$f" "$t" >/dev/null
    fi
    # shellcheck disable=SC2086
    "$nibble" perplexity -m "$f" --kl-base "$model" -f "$text" $args --json | row "$t"
done
