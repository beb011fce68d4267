#!/usr/bin/env bash
# End-to-end check of `--deploy llama.cpp`: a factors file exported to GGUF and scored by
# llama.cpp's llama-perplexity, against longrope's score of the same factors as llama.cpp runs
# them (`eval --deploy llama.cpp`), on the same tokens with the same convention
# (`--convention llama.cpp`: chunks of CTX tokens, BOS only where the model adds one, the second
# half of each chunk scored).
#
# Usage: bench/run_llamacpp_deploy_check.sh LLAMA_BIN_DIR [LONGROPE_BUILD_DIR]
#   LLAMA_BIN_DIR       llama.cpp binaries (llama-perplexity), built outside this repository
#                       (e.g. from the llama-cpp-python sdist's vendor/llama.cpp)
#   LONGROPE_BUILD_DIR  longrope build directory (default build/release)
# Environment: MODEL (default models/SmolLM2-135M-Instruct.Q4_1.gguf),
#   FACTORS (default docs/factors/smollm2-135m-16k-needle-k17.json: one set with n_hat 24, which
#   llama.cpp cannot express), CTX (default: the factors file's max_position_embeddings),
#   TEXT (default ../shared/data/moby-dick.txt; llama-perplexity needs 2 x CTX tokens of it),
#   THREADS (default 2).
#
# Rows: llama.cpp on the exported GGUF; longrope `eval --deploy llama.cpp` on the original model
# with the factors file (what this check is about); longrope `perplexity` on the exported GGUF
# (the file as longrope reads it: with the start tokens, which the export keeps in longrope's own
# key); longrope `eval --deploy longrope` (the set as searched). With a set without start tokens
# the last three are the same computation, and their difference from llama.cpp is the two
# engines' arithmetic alone (Q4_1 dot products on quantized activations and an f16 KV cache
# there; bf16 products on dequantized weights here).
set -euo pipefail

cd "$(dirname "$0")/.."

LLAMA_BIN=${1:?usage: bench/run_llamacpp_deploy_check.sh LLAMA_BIN_DIR [LONGROPE_BUILD_DIR]}
LONGROPE_BUILD=${2:-build/release}
MODEL=${MODEL:-models/SmolLM2-135M-Instruct.Q4_1.gguf}
FACTORS=${FACTORS:-docs/factors/smollm2-135m-16k-needle-k17.json}
TEXT=${TEXT:-../shared/data/moby-dick.txt}
THREADS=${THREADS:-2}
LR="$LONGROPE_BUILD/longrope"

[[ -x $LLAMA_BIN/llama-perplexity ]] ||
  { echo "error: $LLAMA_BIN/llama-perplexity not found (expected a llama.cpp build)" >&2; exit 1; }
[[ -x $LR ]] || { echo "error: $LR not found (build the release preset first)" >&2; exit 1; }
for f in "$MODEL" "$FACTORS" "$TEXT"; do
  [[ -f $f ]] || { echo "error: $f not found" >&2; exit 1; }
done
CTX=${CTX:-$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["max_position_embeddings"])' "$FACTORS")}

OUT=$(mktemp -d "${TMPDIR:-/tmp}/llamacpp-deploy.XXXXXX")
echo "llama.cpp: $LLAMA_BIN   longrope: $LR   model: $MODEL   factors: $FACTORS   ctx: $CTX"
echo "text: $TEXT   threads: $THREADS   logs: $OUT"
echo "cpu: $(lscpu | sed -n 's/^Model name: *//p' | head -1)"

# 1. The export (without --deploy: it warns about what llama.cpp will drop, and writes the file).
"$LR" export -m "$MODEL" --factors "$FACTORS" -o "$OUT/exported.gguf" 2>&1 | tee "$OUT/export.log"

# 2. llama.cpp on the exported file, one chunk.
secs() { python3 -c 'import sys,time; print(f"{time.time()-float(sys.argv[1]):.0f}")' "$1"; }
t0=$(date +%s.%N)
"$LLAMA_BIN/llama-perplexity" -m "$OUT/exported.gguf" -f "$TEXT" -c "$CTX" --chunks 1 \
  -t "$THREADS" -b 2048 >"$OUT/llama.log" 2>&1 ||
  { echo "llama-perplexity failed, see $OUT/llama.log" >&2; exit 1; }
t_llama=$(secs "$t0")
ppl_llama=$(sed -n 's/.*Final estimate: PPL = \([0-9.]*\) +\/- \([0-9.]*\).*/\1 \2/p' "$OUT/llama.log" | tail -1)
version=$("$LLAMA_BIN/llama-perplexity" --version 2>&1 | sed -n 's/^version: //p' | head -1)

# 3. longrope: the factors as llama.cpp runs them, and as searched; the exported file.
eval_ppl() {  # DEPLOY -> ppl
  "$LR" eval -m "$MODEL" -f "$TEXT" --methods "set=$FACTORS" --deploy "$1" --lengths "$CTX" \
    --docs 1 --convention llama.cpp -t "$THREADS" --no-progress --json 2>"$OUT/eval-$1.log" |
    python3 -c 'import json,sys; print("%.4f" % json.load(sys.stdin)["cells"][0]["ppl"])'
}
t0=$(date +%s.%N)
ppl_deploy=$(eval_ppl llama.cpp)
t_deploy=$(secs "$t0")
ppl_searched=$(eval_ppl longrope)
ppl_file=$("$LR" perplexity -m "$OUT/exported.gguf" -f "$TEXT" -c "$CTX" --convention llama.cpp \
  -t "$THREADS" --no-progress --json 2>"$OUT/perplexity.log" |
  python3 -c 'import json,sys; print("%.4f" % json.load(sys.stdin)["ppl"])')

set -- $ppl_llama
rel() { python3 -c 'import sys; a,b=map(float,sys.argv[1:]); print(f"{100*(a/b-1):+.2f}%")' "$1" "$2"; }
echo
echo "llama.cpp build: ${version:-?}"
echo
echo "| scored by | what runs | ppl | vs llama.cpp | seconds |"
echo "|---|---|---:|---:|---:|"
echo "| llama.cpp llama-perplexity | exported GGUF | $1 ± $2 | | $t_llama |"
echo "| longrope eval --deploy llama.cpp | factors file, as llama.cpp runs it | $ppl_deploy | $(rel "$ppl_deploy" "$1") | $t_deploy |"
echo "| longrope perplexity | exported GGUF (longrope reads its n_hat key) | $ppl_file | $(rel "$ppl_file" "$1") | |"
echo "| longrope eval --deploy longrope | factors file, as searched | $ppl_searched | $(rel "$ppl_searched" "$1") | |"
