#!/usr/bin/env bash
# Fuzzes every parser: installs clang (scripts/setup.sh --fuzz, idempotent), builds the libFuzzer
# targets (preset "fuzz"), writes the seed corpora and runs each target for SECONDS (default 10),
# one after the other. Fails when any target finds a crash, a sanitizer report, a leak, a
# timeout or a broken property; the input that did it is kept in build/fuzz/artifacts/.
# Usage: scripts/fuzz.sh [SECONDS]      (CI: 10; a real search: scripts/fuzz.sh 600)
# The corpora grow in build/fuzz/corpus/ and are reused by later runs.
set -euo pipefail
cd "$(dirname "$0")/.."

secs=${1:-10}
if ! [[ "$secs" =~ ^[1-9][0-9]*$ ]]; then
  echo "fuzz.sh: SECONDS must be a positive integer, got '$secs'" >&2
  exit 2
fi

# The model too: bpe_tokenizer_fuzz tokenizes with the default model's vocabulary.
scripts/setup.sh --fuzz
cmake --preset fuzz >/dev/null
cmake --build --preset fuzz -j"$(nproc)" --target fuzz_all

bin=build/fuzz/fuzz
shared=${LONGROPE_SHARED_DIR:-../shared}
rm -rf build/fuzz/seeds
"$bin/make_fuzz_seeds" build/fuzz/seeds "$shared/models"
mkdir -p build/fuzz/artifacts

# target  seeds  libFuzzer options
targets=(
  "gguf_fuzz gguf -max_len=65536 -rss_limit_mb=4096"
  "llama2c_fuzz llama2c -max_len=65536"
  "bpe_tokenizer_fuzz text -max_len=4096"
  "spm_tokenizer_fuzz text -max_len=4096"
  "factors_fuzz factors -max_len=8192"
  "hf_config_fuzz hf_config -max_len=8192"
  "safetensors_fuzz safetensors -max_len=4096"
  "hf_tokenizer_fuzz tokenizer_json -max_len=16384"
)
failed=()
for entry in "${targets[@]}"; do
  read -r name seeds opts <<<"$entry"
  corpus=build/fuzz/corpus/$name
  log=build/fuzz/artifacts/$name.log
  mkdir -p "$corpus"
  # shellcheck disable=SC2086  # opts holds several options
  if "$bin/$name" $opts -max_total_time="$secs" -timeout=30 -print_final_stats=1 \
    -artifact_prefix="build/fuzz/artifacts/$name-" "$corpus" "build/fuzz/seeds/$seeds" \
    >"$log" 2>&1; then
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
    echo "fuzz: $name: ${runs:-?} runs in ${secs} s, no crash"
  else
    echo "fuzz: $name FAILED (log: $log):" >&2
    grep -E "ERROR|SUMMARY|runtime error|Test unit written|what\(\)" "$log" | head -n 20 >&2 || tail -n 20 "$log" >&2
    failed+=("$name")
  fi
done
if ((${#failed[@]})); then
  echo "fuzz: failed: ${failed[*]}" >&2
  exit 1
fi
