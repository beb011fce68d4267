#!/usr/bin/env bash
# Training speed and memory of `longrope finetune` at several sequence lengths: one table.
#
# Usage: bench/run_finetune_bench.sh [LENGTHS] [STEPS]
#   LENGTHS  comma-separated tokens per sequence (default 2048,4096,8192)
#   STEPS    optimizer steps per length (default 2; the first step's time is included)
# Environment: MODEL (default models/SmolLM2-135M-Instruct.Q4_1.gguf), TEXT (default
#   ../shared/data/pride_and_prejudice.txt), THREADS (default 2), BIN (default
#   build/release/longrope), EXTRA (more finetune flags, e.g. --no-grad-checkpoint).
# Each length runs `finetune --steps STEPS --batch 1 --json` under /usr/bin/time -v; the table
# shows tokens/s (predicted tokens over training time, loading and the output excluded), seconds
# per step, the process's peak RSS and the loss of the first and last step.
set -euo pipefail
cd "$(dirname "$0")/.."

LENGTHS=${1:-2048,4096,8192}
STEPS=${2:-2}
MODEL=${MODEL:-models/SmolLM2-135M-Instruct.Q4_1.gguf}
TEXT=${TEXT:-../shared/data/pride_and_prejudice.txt}
THREADS=${THREADS:-2}
BIN=${BIN:-build/release/longrope}
EXTRA=${EXTRA:-}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

echo "model $(basename "$MODEL"), $THREADS threads, $STEPS step(s) per length, $(date -u +%Y-%m-%dT%H:%MZ)"
echo "$(lscpu | sed -n 's/^Model name: *//p')"
echo
echo "| tokens per sequence | tokens/s | s per step | peak RSS | loss first -> last |"
echo "|---:|---:|---:|---:|---|"
IFS=, read -ra lens <<<"$LENGTHS"
for L in "${lens[@]}"; do
  # shellcheck disable=SC2086
  /usr/bin/time -v "$BIN" finetune -m "$MODEL" -f "$TEXT" -c "$L" --steps "$STEPS" --batch 1 \
    --lr 1e-5 --warmup 0 --json --no-progress -t "$THREADS" $EXTRA -o "$tmp/out.gguf" \
    >"$tmp/out.json" 2>"$tmp/err.txt" || { cat "$tmp/err.txt" >&2; exit 1; }
  rss_kb=$(sed -n 's/.*Maximum resident set size (kbytes): //p' "$tmp/err.txt")
  python3 - "$tmp/out.json" "$L" "$rss_kb" "$STEPS" <<'EOF'
import json, sys
j = json.loads(open(sys.argv[1]).read().strip().splitlines()[-1])
L, rss, steps = int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
print(f"| {L} | {j['tokens_per_second']:.1f} | {j['seconds'] / steps:.1f} | "
      f"{rss / 1048576:.2f} GiB | {j['first_loss']:.4f} -> {j['last_loss']:.4f} |")
EOF
  rm -f "$tmp"/out.gguf*
done
