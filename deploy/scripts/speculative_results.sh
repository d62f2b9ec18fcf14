#!/usr/bin/env bash
# The speculative-decoding figures on SmolLM2-135M-Instruct, into
# docs/src/results/generation/speculative/ (run on an otherwise idle machine):
#   1. the bundle with exits after 6/12/18/24, adapters trained and
#      calibrated (as deploy/scripts/generation_results.sh does);
#   2. `offramp experiment` with deploy/experiments/generation.toml: every
#      mode, speculative drafting 2 and 6 ahead, at RTT 0/20/50/150 ms and on
#      a Verizon LTE trace, split at layer 24;
#   3. stop-and-wait speculative (no pipelining) at 50 ms for comparison.
# Usage: deploy/scripts/speculative_results.sh [BUNDLE]
set -euo pipefail
cd "$(dirname "$0")/../.."
bundle="${1:-models/pretrained/smollm2-135m-instruct}"
out=docs/src/results/generation/speculative
mkdir -p "$out"
cargo build --release -p offramp
bin=target/release/offramp
[[ -n "${CARGO_TARGET_DIR:-}" ]] && bin="$CARGO_TARGET_DIR/release/offramp"
if [[ ! -f "$bundle/decoder.json" ]]; then
  gguf=models/pretrained/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
  [[ -f "$gguf" ]] || deploy/scripts/fetch_smollm2.sh
  "$bin" import gguf --from "$gguf" --out "$bundle" --exits 6,12,18,24
fi
if [[ ! -f "$bundle/adapters.safetensors" ]]; then
  RAYON_NUM_THREADS=2 "$bin" train-exits --model "$bundle" --prompts 96 --tokens 64 --epochs 12 --lr 3e-3 | tee "$out/train-exits.txt"
  RAYON_NUM_THREADS=2 "$bin" calibrate-decoder --model "$bundle" --target 0.95 | tee "$out/calibration.txt"
fi
RAYON_NUM_THREADS=1 "$bin" experiment --config deploy/experiments/generation.toml --out "$out/experiment" | tee "$out/experiment.txt"
RAYON_NUM_THREADS=1 "$bin" bench generation --model "$bundle" --split 24 --rtts 50ms --modes split,speculative \
  --drafts 2,4,6 --pipeline 1 --prompts 4 --max-tokens 40 | tee "$out/stop-and-wait.txt"
