#!/usr/bin/env bash
# The main job on the default model: installs what is missing, builds, then extends
# SmolLM2-135M-Instruct (trained at 8192 tokens) to 16384 with LongRoPE:
#   1. a chat answer (the model runs),
#   2. a LongRoPE factor search at 16384 on one novel, with a small budget (a killed run is
#      resumed by running this script again; a finished one is reused),
#   3. perplexity at 16384 on another novel: no scaling, YaRN and the searched factors,
#   4. export for llama.cpp (GGUF) and transformers (config.json rope_scaling), and the exported
#      GGUF's perplexity beside the searched factors' one (they differ by the start tokens a GGUF
#      cannot hold and by rounding),
#   5. a summary: the searched set against each rule on the held-out text, and the exported files.
# About 25-30 minutes on 2 cores after the build: the search stops at its time cap (below), then
# the eval of three methods at 16384 and the export's perplexity (a 16k candidate costs 42-69 s on
# a Zen 4 in bf16, several minutes in FP32). Results in out/main/.
# LONGROPE_SEARCH_BUDGET overrides the budget flags of the search; LONGROPE_SEARCH_TIME (default
# 12m) caps its time, so that a slow CPU evaluates fewer candidates instead of taking longer (the
# search says how many it could afford; `longrope search ... --resume` continues it).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/build.sh release
bin=build/release/longrope
model=models/SmolLM2-135M-Instruct.Q4_1.gguf
search_text=../shared/data/pride_and_prejudice.txt
eval_text=../shared/data/moby-dick.txt
out=out/main
mkdir -p "$out"
if [ ! -f "$search_text" ] || [ ! -f "$eval_text" ]; then
  # No shared data beside the checkout: the King James Bible from Debian (public domain), its
  # first half for the search and its second half for the evaluation.
  if ! command -v bible >/dev/null; then
    apt-get install -y -qq bible-kjv >/dev/null || { echo "main: error: cannot install bible-kjv" >&2; exit 1; }
  fi
  [ -s out/kjv-ot.txt ] || bible "Gen1:1-Mal4:6" > out/kjv-ot.txt
  [ -s out/kjv-nt.txt ] || bible "Mat1:1-Rev22:21" > out/kjv-nt.txt
  search_text=out/kjv-ot.txt
  eval_text=out/kjv-nt.txt
fi
budget=${LONGROPE_SEARCH_BUDGET:-"--population 8 --iterations 2 --parents 4 --mutations 4 --crossovers 4"}
factors=$out/smollm2-16k.json

echo "== 1. chat"
$bin generate -m "$model" --chat -p "What is the capital of France? Answer in one sentence." -n 48 --temp 0

echo "== 2. LongRoPE search at 16384 ($budget)"
if [ -f "$factors" ]; then
  echo "reusing $factors (delete it to search again)"
else
  resume=()
  [ -f "$factors.ckpt.json" ] && resume=(--resume)
  # shellcheck disable=SC2086
  $bin search -m "$model" -f "$search_text" -c 16384 --docs 1 $budget --seed 1 \
    --budget "${LONGROPE_SEARCH_TIME:-12m}" -o "$factors" "${resume[@]}"
fi

echo "== 3. perplexity at 16384 on $(basename "$eval_text")"
$bin eval -m "$model" -f "$eval_text" --lengths 16384 --methods none,yarn,searched="$factors" \
  -O "$out/eval" --resume

echo "== 4. export"
$bin export -m "$model" --factors "$factors" -o "$out/SmolLM2-135M-Instruct-16k.gguf"
# SmolLM2-135M's transformers config (the fields that matter for RoPE and shapes).
cat > "$out/config.json" <<'JSON'
{"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 576,
 "intermediate_size": 1536, "num_hidden_layers": 30, "num_attention_heads": 9,
 "num_key_value_heads": 3, "vocab_size": 49152, "rms_norm_eps": 1e-05,
 "max_position_embeddings": 8192, "rope_theta": 100000.0, "tie_word_embeddings": true}
JSON
$bin export --factors "$factors" --hf-config "$out/config.json" -o "$out/config-16k.json"
$bin perplexity -m "$out/SmolLM2-135M-Instruct-16k.gguf" -f "$eval_text" -c 16384 --docs 1 --json \
  > "$out/exported-ppl.json"

echo "== 5. summary"
python3 scripts/main_summary.py "$factors" "$out/eval" "$out/exported-ppl.json" "$out/config-16k.json"
