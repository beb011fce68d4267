#!/usr/bin/env bash
# The test command: installs what is missing, builds the release preset, runs every test, then
# fuzzes every parser for 10 s per target (scripts/fuzz.sh; longer runs: scripts/fuzz.sh 600).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/build.sh release
ctest --preset release -j2
scripts/fuzz.sh 10
