#!/usr/bin/env bash
# The main job on the default model: installs what is missing, builds, then measures the
# perplexity of SmolLM2-135M-Instruct on a public-domain novel at its trained context (8192)
# and at twice that with YaRN, and lets it answer a chat question.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/build.sh release
bin=build/release/longrope
model=models/SmolLM2-135M-Instruct.Q4_1.gguf
text=../shared/data/pride_and_prejudice.txt
if [ ! -f "$text" ]; then
  # No shared data beside the checkout: use the King James Bible from Debian (public domain).
  if ! command -v bible >/dev/null; then
    apt-get install -y -qq bible-kjv >/dev/null || { echo "main: error: cannot install bible-kjv" >&2; exit 1; }
  fi
  mkdir -p out && text=out/kjv.txt
  [ -s "$text" ] || bible "Gen1:1-Rev22:21" > "$text"
fi
$bin generate -m "$model" --chat -p "What is the capital of France? Answer in one sentence." -n 48 --temp 0
$bin perplexity -m "$model" -f "$text" -c 2048 --docs 2
$bin perplexity -m "$model" -f "$text" -c 8192 --docs 1
