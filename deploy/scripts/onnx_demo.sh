#!/usr/bin/env bash
# "Bring your own model", from outside: a multi-exit CNN written and trained
# in PyTorch (deploy/scripts/onnx_demo_train.py, MNIST), exported with
# torch.onnx.export, then in Offramp: inspect, import (cut at the tensors its
# side exits hang off), eval per exit, calibrate, eval with the policy, and an
# experiment over two emulated links (deploy/experiments/onnx-demo.toml).
# Writes everything to docs/src/results/onnx/; deploy/scripts/onnx_speed.sh
# then times the imported model against ONNX Runtime.
#
# Usage: deploy/scripts/onnx_demo.sh [OUT_DIR]       (default out/onnx-demo)
# Env: MNIST (default ../shared/data/mnist), EPOCHS (default 2), THREADS
#      (default 2), TORCH_VENV (a venv with torch, onnx; default
#      target/torch-venv, made with `pip install torch onnx` from PyPI if
#      missing), OFFRAMP_BIN (an offramp binary; default: build release),
#      REUSE=1 keeps an already trained OUT_DIR/mnist_sdn.onnx.
set -euo pipefail
if [[ "${1:-}" == "-h" || "${1:-}" == "--help" ]]; then
  sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'
  exit 0
fi
cd "$(dirname "$0")/../.."
out="${1:-out/onnx-demo}"
mnist="${MNIST:-../shared/data/mnist}"
venv="${TORCH_VENV:-target/torch-venv}"
results=docs/src/results/onnx
mkdir -p "$out" "$results"
step() { echo; echo "== $(date +%T) $*"; }

if ! "$venv/bin/python" -c 'import torch, onnx' 2>/dev/null; then
  step "PyTorch (CPU use of the PyPI wheel) into $venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q torch onnx onnxruntime numpy safetensors
fi
if [[ -n "${OFFRAMP_BIN:-}" ]]; then
  offramp="$OFFRAMP_BIN"
else
  step "build"
  cargo build --release -p offramp
  offramp="${CARGO_TARGET_DIR:-target}/release/offramp"
fi

model="$out/mnist_sdn.onnx"
if [[ "${REUSE:-0}" == 1 && -s "$model" && -s "$out/train.json" ]]; then
  step "kept $model (REUSE=1)"
else
  step "train and export with PyTorch"
  "$venv/bin/python" deploy/scripts/onnx_demo_train.py --data "$mnist" --out "$model" \
    --epochs "${EPOCHS:-2}" --threads "${THREADS:-2}" | tee "$out/train.json"
fi
cp "$out/train.json" "$results/train.json"

step "inspect"
"$offramp" inspect onnx --from "$model" | tee "$results/inspect.txt"
# Cut where the side exits hang off: the profile names those cuts.
cuts=$("$offramp" inspect onnx --from "$model" --json | "$venv/bin/python" -c \
  'import json,sys; p=json.load(sys.stdin); print(",".join(o["hangs_off"] for o in p["outputs"] if o["hangs_off"]))')
echo "cuts: $cuts"

step "import"
bundle="$out/mnist-sdn"
rm -rf "$bundle"
"$offramp" import onnx --from "$model" --cuts "$cuts" --exits exit_1,exit_2,final --out "$bundle" \
  | tee "$results/import.txt"

step "eval per exit (validation: the last 5,000 training digits)"
"$offramp" eval --model "$bundle" --data "$mnist" --subset val --no-policy --json > "$results/eval-exits.json"
"$offramp" eval --model "$bundle" --data "$mnist" --subset val --no-policy

step "calibrate (max drop 0.5 points)"
"$offramp" calibrate --model "$bundle" --data "$mnist" --subset val --max-drop 0.5 \
  --out "$bundle/policy.toml" --json > "$results/calibrate.json"
cp "$bundle/policy.toml" "$results/policy.toml"
cat "$results/policy.toml"

step "eval with the calibrated policy"
"$offramp" eval --model "$bundle" --data "$mnist" --subset val --json > "$results/eval-policy.json"
"$offramp" eval --model "$bundle" --data "$mnist" --subset val

step "experiment over two links"
sed "s#@BUNDLE@#$bundle#; s#@MNIST@#$mnist#" deploy/experiments/onnx-demo.toml > "$out/experiment.toml"
"$offramp" experiment --config "$out/experiment.toml" --out "$out/experiment" | tee "$results/experiment.txt"
cp "$out/experiment/results.csv" "$results/experiment.csv"

