#!/usr/bin/env bash
# Create a Python virtual environment for the ONNX Runtime peer benchmarks
# (deploy/scripts/ort_encoder_bench.py, deploy/scripts/onnx_compare.py):
# target/ort-venv with onnx, onnxruntime, numpy and safetensors.
#
# Idempotent: does nothing when target/ort-venv already has onnxruntime.
# Usage: deploy/scripts/ort_env.sh   (from anywhere; paths are repo-relative)
set -euo pipefail
if [[ "${1:-}" == "-h" || "${1:-}" == "--help" ]]; then
  sed -n '2,7p' "$0" | sed 's/^# \{0,1\}//'
  exit 0
fi
cd "$(dirname "$0")/../.."
venv="target/ort-venv"
py="${PYTHON:-python3}"
if [[ -x "$venv/bin/python" ]] && "$venv/bin/python" -c 'import onnxruntime' >/dev/null 2>&1; then
  echo "already there: $venv (onnxruntime $("$venv/bin/python" -c 'import onnxruntime; print(onnxruntime.__version__)'))"
else
  mkdir -p target
  "$py" -m venv "$venv"
  "$venv/bin/python" -m pip install --upgrade pip >/dev/null
  "$venv/bin/python" -m pip install onnx onnxruntime numpy safetensors
  echo "installed: $venv (onnxruntime $("$venv/bin/python" -c 'import onnxruntime; print(onnxruntime.__version__)'))"
fi
cat <<USAGE

Use it with:
  $venv/bin/python deploy/scripts/ort_encoder_bench.py --model models/pretrained/all-minilm-l6-v2 --threads 1
or activate it:
  source $venv/bin/activate
USAGE
