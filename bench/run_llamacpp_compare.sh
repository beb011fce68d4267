#!/usr/bin/env bash
# longrope vs llama.cpp on the same file and machine (CPU): one table with both.
#
# Usage: bench/run_llamacpp_compare.sh LLAMA_BIN_DIR [LONGROPE_BUILD_DIR] [SYNTH_7B_GGUF]
#   LLAMA_BIN_DIR       llama.cpp binaries (llama-perplexity, llama-bench), built outside this
#                       repository (e.g. from the llama-cpp-python sdist's vendor/llama.cpp)
#   LONGROPE_BUILD_DIR  longrope build directory (default build/release)
#   SYNTH_7B_GGUF       optional Llama-2-7B-shaped file from scripts/make_synthetic_gguf.py;
#                       when given, also runs llama-bench -p 4096 -n 16 on it
# Environment: MODEL (default models/SmolLM2-135M-Instruct.Q4_1.gguf),
#              TEXT (default ../shared/data/pride_and_prejudice.txt), THREADS (default 2).
#
# Measures, with llama.cpp:
#   * llama-perplexity -c 4096 and -c 8192, one chunk each: ppl, seconds per pass (tokens/s =
#     ctx / that) and peak RSS (/usr/bin/time -v). Note: llama-perplexity scores only the second
#     half of each chunk, longrope perplexity scores every token of its window, so the ppl
#     values are not directly comparable; the timings are (one forward pass over the window).
#   * llama-bench decode (-p 0 -n 64, 3 repetitions) with 1 thread and with THREADS threads.
#   * optionally llama-bench -p 4096 -n 16 -r 1 on the 7B-shaped file.
set -euo pipefail

cd "$(dirname "$0")/.."

LLAMA_BIN=${1:?usage: bench/run_llamacpp_compare.sh LLAMA_BIN_DIR [LONGROPE_BUILD_DIR] [SYNTH_7B_GGUF]}
LONGROPE_BUILD=${2:-build/release}
BIG=${3:-}
MODEL=${MODEL:-models/SmolLM2-135M-Instruct.Q4_1.gguf}
TEXT=${TEXT:-../shared/data/pride_and_prejudice.txt}
THREADS=${THREADS:-2}

for f in "$LLAMA_BIN/llama-perplexity" "$LLAMA_BIN/llama-bench"; do
  [[ -x $f ]] || { echo "error: $f not found (expected a llama.cpp build)" >&2; exit 1; }
done
[[ -f $MODEL ]] || { echo "error: model $MODEL not found" >&2; exit 1; }
[[ -f $TEXT ]] || { echo "error: text $TEXT not found" >&2; exit 1; }
[[ -z $BIG || -f $BIG ]] || { echo "error: $BIG not found" >&2; exit 1; }
TIME=/usr/bin/time
[[ -x $TIME ]] || { echo "error: /usr/bin/time not found (apt-get install time)" >&2; exit 1; }
for f in "$LONGROPE_BUILD/longrope" "$LONGROPE_BUILD/bench/bench_perplexity"; do
  [[ -x $f ]] || { echo "error: $f not found (build the release preset first)" >&2; exit 1; }
done

LOGDIR=$(mktemp -d "${TMPDIR:-/tmp}/llamacpp-compare.XXXXXX")
echo "llama.cpp: $LLAMA_BIN   longrope: $LONGROPE_BUILD   model: $MODEL   threads: $THREADS   logs: $LOGDIR"
echo

ROWS=()
row() { ROWS+=("$(printf '| %-34s | %-14s | %-26s | %-10s |' "$1" "$2" "$3" "$4")"); }

# llama-perplexity over one chunk of CTX tokens.
perplexity() {
  local ctx=$1 log="$LOGDIR/ppl-$1.log"
  echo "running llama-perplexity -c $ctx ..." >&2
  "$TIME" -v "$LLAMA_BIN/llama-perplexity" -m "$MODEL" -f "$TEXT" -c "$ctx" --chunks 1 \
    -t "$THREADS" >"$log" 2>&1 ||
    { echo "llama-perplexity -c $ctx failed, see $log" >&2; return 0; }
  local ppl sec rss tps=""
  ppl=$(sed -n 's/.*Final estimate: PPL = \([0-9.]*\).*/\1/p' "$log" | tail -1)
  sec=$(sed -n 's/.*: \([0-9.]*\) seconds per pass.*/\1/p' "$log" | tail -1)
  [[ -n $sec ]] && tps=$(awk -v c="$ctx" -v s="$sec" 'BEGIN { printf "%.1f", c / s }')
  rss=$(awk -F': ' '/Maximum resident set size/ {printf "%.0f MiB", $2 / 1024}' "$log")
  row "perplexity c=$ctx (1 chunk)" "ppl ${ppl:-?}" "${sec:-?} s/pass, ${tps:-?} tok/s" "${rss:-?}"
}

# llama-bench; one row per test (ppN / tgN) with avg +- stddev tokens/s.
bench() {
  local label=$1 model=$2 log="$LOGDIR/bench-${3}.log"
  shift 3
  echo "running llama-bench $* ..." >&2
  "$TIME" -v "$LLAMA_BIN/llama-bench" -m "$model" -o json "$@" >"$log.json" 2>"$log" ||
    { echo "llama-bench $* failed, see $log" >&2; return 0; }
  local res rss
  res=$(python3 - "$log.json" <<'EOF'
import json, sys
for t in json.load(open(sys.argv[1])):
    test = "pp%d" % t["n_prompt"] if t["n_prompt"] else "tg%d" % t["n_gen"]
    print("%s\t%.2f +- %.2f tok/s" % (test, t["avg_ts"], t["stddev_ts"]))
EOF
) || true
  rss=$(awk -F': ' '/Maximum resident set size/ {printf "%.0f MiB", $2 / 1024}' "$log")
  while IFS=$'\t' read -r test r; do row "$label" "$test" "$r" "${rss:-?}"; done <<<"$res"
}

perplexity 4096
perplexity 8192
bench "decode n=64, t=1 (r=3)" "$MODEL" tg-t1 -p 0 -n 64 -t 1 -r 3
bench "decode n=64, t=$THREADS (r=3)" "$MODEL" "tg-t$THREADS" -p 0 -n 64 -t "$THREADS" -r 3
bench "prefill p=4096, t=$THREADS (r=1)" "$MODEL" "pp-t$THREADS" -p 4096 -n 0 -t "$THREADS" -r 1
if [[ -n $BIG ]]; then
  bench "7B-shape p=4096 / n=16, t=$THREADS" "$BIG" big -p 4096 -n 16 -t "$THREADS" -r 1
fi

# The longrope side: perplexity windows (bf16 and f32) and greedy decoding.
lr_ppl() {
  local ctx=$1 c=$2 model=$3 log="$LOGDIR/longrope-ppl-$1-$2.log"
  echo "running longrope perplexity -c $ctx --compute $c ..." >&2
  "$TIME" -v "$LONGROPE_BUILD/bench/bench_perplexity" "$model" "$TEXT" "$ctx" "$THREADS" "$c" \
    >"$log.json" 2>"$log" || { echo "bench_perplexity $ctx $c failed, see $log" >&2; return 0; }
  local r rss
  r=$(python3 -c 'import json,sys; j=json.load(open(sys.argv[1])); print("ppl %.4f\t%.2f s, %.1f tok/s" % (j["ppl"], j["seconds"], j["tokens_per_second"]))' "$log.json")
  rss=$(awk -F': ' '/Maximum resident set size/ {printf "%.0f MiB", $2 / 1024}' "$log")
  IFS=$'\t' read -r a b <<<"$r"
  row "longrope $(basename "$model") c=$ctx $c" "$a" "$b" "${rss:-?}"
}
lr_decode() {
  local t=$1 log="$LOGDIR/longrope-decode-$1.log"
  echo "running longrope generate -t $t ..." >&2
  "$LONGROPE_BUILD/longrope" generate -m "$MODEL" -p "Once upon a time" -n 64 --temp 0 \
    --ignore-eos -t "$t" >"$log" 2>&1 || { echo "generate failed, see $log" >&2; return 0; }
  row "longrope decode n=64, t=$t" "" "$(sed -n 's/.*generated .* (\(.*tok\/s\)).*/\1/p' "$log")" ""
}
for c in bf16 f32; do lr_ppl 4096 "$c" "$MODEL"; lr_ppl 8192 "$c" "$MODEL"; done
lr_decode 1
lr_decode "$THREADS"
[[ -n $BIG ]] && lr_ppl 4096 bf16 "$BIG"

echo
echo "llama.cpp $("$LLAMA_BIN/llama-bench" --version 2>&1 | head -1 || true)"
echo "model: $(basename "$MODEL")${BIG:+, $(basename "$BIG")}"
printf '| %-34s | %-14s | %-26s | %-10s |\n' "measurement" "result" "speed" "peak RSS"
printf '|%s|%s|%s|%s|\n' "$(printf -- '-%.0s' {1..36})" "$(printf -- '-%.0s' {1..16})" \
  "$(printf -- '-%.0s' {1..28})" "$(printf -- '-%.0s' {1..12})"
printf '%s\n' "${ROWS[@]}"
