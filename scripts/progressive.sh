#!/usr/bin/env bash
# Progressive extension (docs/finetune.md): search factors at L1 -> fine-tune at L1 with them ->
# search at L2 on the fine-tuned model -> evaluate -> export. Every stage resumes where a killed
# run stopped (rerun the same command).
#
# Usage: scripts/progressive.sh -m MODEL -f TRAIN_TEXT -s SEARCH_TEXT -e EVAL_TEXT --l1 L1 --l2 L2
#          -O OUTDIR [--steps N] [--batch B] [--lr LR] [--short-share S] [--population P] [--iterations T]
#          [--threads N] [--factors1 FILE]
#   -s SEARCH_TEXT   the fitness text of the second search: not the training text (the fine-tuned
#                    model has learnt it, and factors that suit a memorised text do not carry over)
#   --factors1 FILE  skip the first search and fine-tune with these factors
# Writes OUTDIR/factors-L1.json, OUTDIR/ft-L1.gguf (+ .log.json, .loss.svg/.png, .train),
# OUTDIR/factors-L2.json, OUTDIR/eval-finetuned/ and OUTDIR/eval-original/ (perplexity by length,
# tables and plots: the fine-tuned model with both factor sets, the model before with the rules) and
# OUTDIR/ft-L1-L2.gguf (the fine-tuned model with the L2 factors, for llama.cpp and longrope).
set -euo pipefail
cd "$(dirname "$0")/.."

model="" train="" searchtext="" evaltext="" l1="" l2="" out="" factors1=""
steps=200 batch=1 lr=1e-3 short_share=0.2 population=16 iterations=6 threads=0
while (($#)); do
  case "$1" in
    -m) model="$2"; shift 2 ;;
    -f) train="$2"; shift 2 ;;
    -s) searchtext="$2"; shift 2 ;;
    -e) evaltext="$2"; shift 2 ;;
    --l1) l1="$2"; shift 2 ;;
    --l2) l2="$2"; shift 2 ;;
    -O|-o) out="$2"; shift 2 ;;
    --steps) steps="$2"; shift 2 ;;
    --batch) batch="$2"; shift 2 ;;
    --lr) lr="$2"; shift 2 ;;
    --short-share) short_share="$2"; shift 2 ;;
    --population) population="$2"; shift 2 ;;
    --iterations) iterations="$2"; shift 2 ;;
    --threads) threads="$2"; shift 2 ;;
    --factors1) factors1="$2"; shift 2 ;;
    -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
    *) echo "progressive.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
for v in model train searchtext evaltext l1 l2 out; do
  if [ -z "${!v}" ]; then
    echo "progressive.sh: missing -m, -f, -s, -e, --l1, --l2 or -o (see --help)" >&2
    exit 2
  fi
done

bin=${LONGROPE_BIN:-build/release/longrope}   # LONGROPE_BIN: another build's binary
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
    $bin search -m "$model" -f "$train" -c "$l1" "${search_flags[@]}" "${t[@]}" \
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
# The fine-tuned GGUF declares the first factors as its own frequencies (rope_freqs) and L1 as its
# context: the second search's factors apply on top of them, with s = L2 / L1.
factors2="$out/factors-$l2.json"
if [ ! -e "$factors2" ]; then
  $bin search -m "$ft" -f "$searchtext" -c "$l2" "${search_flags[@]}" "${t[@]}" \
    -o "$factors2" $(resume_if "$factors2.ckpt.json")
fi

echo "== 4/5 evaluate on $evaltext"
orig=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["original_max_position_embeddings"])' "$factors1")
lengths=""
for ((L = orig; L <= l2; L *= 2)); do lengths="$lengths${lengths:+,}$L"; done
# The fine-tuned model as trained (factors 1 on top of its own, the first factors' attention
# factor) and with the new factors on top; the model before fine-tuning with the rules
# (s = L / orig) and the first factors.
own="$out/ft-own-$l1.json"
python3 - "$factors1" "$own" <<'EOF'
import json, sys
f = json.load(open(sys.argv[1]))
ones = [1.0] * len(f["long_factor"])
json.dump({"format_version": 1, "rope_type": "longrope",
           "original_max_position_embeddings": f["original_max_position_embeddings"],
           "max_position_embeddings": f["max_position_embeddings"],
           "attention_factor": f["attention_factor"], "n_hat": 0,
           "short_factor": ones, "long_factor": ones,
           "sets": [{"max_len": 0, "factors": ones}]}, open(sys.argv[2], "w"), indent=1)
EOF
$bin eval -m "$ft" -f "$evaltext" --lengths "$lengths" --docs 1 --no-progress "${t[@]}" \
  --methods "ft-as-trained=$own,ft-searched-$l2=$factors2" -O "$out/eval-finetuned" --resume
$bin eval -m "$model" -f "$evaltext" --lengths "$lengths" --docs 1 --no-progress "${t[@]}" \
  --orig-ctx "$orig" --methods "none,ntk,yarn,factors-$l1=$factors1" -O "$out/eval-original" --resume

echo "== 5/5 export"
$bin export -m "$ft" --factors "$factors2" -o "$out/ft-$l1-$l2.gguf"
echo "done: $out"
