#!/usr/bin/env bash
# Progressive extension (docs/finetune.md): search factors at L1 -> fine-tune at L1 with them ->
# search at L2 on the fine-tuned model -> evaluate -> export. Every stage resumes where a killed
# run stopped (rerun the same command).
#
# Usage: scripts/progressive.sh -m MODEL -f TRAIN_TEXT -e EVAL_TEXT --l1 L1 --l2 L2 -o OUTDIR
#          [--steps N] [--batch B] [--lr LR] [--short-share S] [--population P] [--iterations T]
#          [--threads N] [--factors1 FILE]
#   --factors1 FILE  skip the first search and fine-tune with these factors
# Writes OUTDIR/factors-L1.json, OUTDIR/ft-L1.gguf (+ .log.json, .loss.svg/.png, .train),
# OUTDIR/factors-L2.json, OUTDIR/eval/ (perplexity by length, table and plot) and
# OUTDIR/ft-L1-L2.gguf (the fine-tuned model with the L2 factors, for llama.cpp and longrope).
set -euo pipefail
cd "$(dirname "$0")/.."

model="" train="" evaltext="" l1="" l2="" out="" factors1=""
steps=200 batch=1 lr=1e-3 short_share=0.2 population=16 iterations=6 threads=0
while (($#)); do
  case "$1" in
    -m) model="$2"; shift 2 ;;
    -f) train="$2"; shift 2 ;;
    -e) evaltext="$2"; shift 2 ;;
    --l1) l1="$2"; shift 2 ;;
    --l2) l2="$2"; shift 2 ;;
    -o) out="$2"; shift 2 ;;
    --steps) steps="$2"; shift 2 ;;
    --batch) batch="$2"; shift 2 ;;
    --lr) lr="$2"; shift 2 ;;
    --short-share) short_share="$2"; shift 2 ;;
    --population) population="$2"; shift 2 ;;
    --iterations) iterations="$2"; shift 2 ;;
    --threads) threads="$2"; shift 2 ;;
    --factors1) factors1="$2"; shift 2 ;;
    -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
    *) echo "progressive.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
for v in model train evaltext l1 l2 out; do
  if [ -z "${!v}" ]; then
    echo "progressive.sh: missing -m, -f, -e, --l1, --l2 or -o (see --help)" >&2
    exit 2
  fi
done

bin=build/release/longrope
[ -x "$bin" ] || scripts/build.sh
mkdir -p "$out"
t=(-t "$threads")
[ "$threads" = 0 ] && t=()
parents=$((population / 2))
muts=$((population / 4)); ((muts < 1)) && muts=1
search_flags=(--docs 1 --population "$population" --iterations "$iterations" --parents "$parents"
  --mutations "$muts" --crossovers "$muts" --seed 1 --no-progress)
resume_if() { [ -e "$1" ] && echo --resume || true; }

echo "== 1/5 search at $l1"
if [ -z "$factors1" ]; then
  factors1="$out/factors-$l1.json"
  if [ ! -e "$factors1" ]; then
    $bin search -m "$model" -f "$train" --target-ctx "$l1" "${search_flags[@]}" "${t[@]}" \
      -o "$factors1" $(resume_if "$factors1.ckpt.json")
  fi
fi

echo "== 2/5 fine-tune at $l1"
ft="$out/ft-$l1.gguf"
if [ ! -e "$ft" ]; then
  $bin finetune -m "$model" -f "$train" -c "$l1" --factors "$factors1" --steps "$steps" \
    --batch "$batch" --lr "$lr" --short-share "$short_share" --no-progress "${t[@]}" -o "$ft" \
    $(resume_if "$ft.train")
fi

echo "== 3/5 search at $l2 on the fine-tuned model"
factors2="$out/factors-$l2.json"
if [ ! -e "$factors2" ]; then
  $bin search -m "$ft" -f "$train" --target-ctx "$l2" "${search_flags[@]}" "${t[@]}" \
    -o "$factors2" $(resume_if "$factors2.ckpt.json")
fi

echo "== 4/5 evaluate on $evaltext"
lengths=""
for ((L = l1 / 8; L <= l2; L *= 2)); do lengths="$lengths${lengths:+,}$L"; done
$bin eval -m "$ft" -f "$evaltext" --lengths "$lengths" --docs 1 --no-progress "${t[@]}" \
  --methods "none,ntk,yarn,searched-$l2=$factors2" -o "$out/eval" --resume

echo "== 5/5 export"
$bin export -m "$ft" --factors "$factors2" -o "$out/ft-$l1-$l2.gguf"
echo "done: $out"
