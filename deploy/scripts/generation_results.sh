#!/usr/bin/env bash
# Every figure of the generation issue on SmolLM2-135M-Instruct, into
# docs/src/results/generation/ (run on an otherwise idle machine):
#   1. train the exit adapters by self-distillation (96 TREC-train prompts x
#      64 self-generated tokens) and calibrate the exits (target 95% token
#      agreement, 24 other TREC-train prompts, validated on 24 more);
#   2. decode speed of the whole model against llama.cpp, same GGUF, same
#      run, 1 thread (needs deploy/scripts/llamacpp_setup.sh's venv);
#   3. the split through the link emulator at RTT 0/20/50/150 ms for
#      all-cloud, split and early-exit (f32), and the encodings at 50 ms.
# Usage: deploy/scripts/generation_results.sh [BUNDLE] [LLAMA_PYTHON]
set -euo pipefail
cd "$(dirname "$0")/../.."
bundle="${1:-models/pretrained/smollm2-135m-instruct}"
python="${2:-${VENV:-/work/venv-llama}/bin/python}"
out=docs/src/results/generation
mkdir -p "$out"
[[ -f "$bundle/decoder.json" ]] || deploy/scripts/fetch_smollm2.sh
cargo build --release -p offramp
bin=target/release/offramp
[[ -n "${CARGO_TARGET_DIR:-}" ]] && bin="$CARGO_TARGET_DIR/release/offramp"
RAYON_NUM_THREADS=2 "$bin" train-exits --model "$bundle" --prompts 96 --tokens 64 --epochs 12 --lr 3e-3 | tee "$out/train-exits.txt"
RAYON_NUM_THREADS=2 "$bin" calibrate-decoder --model "$bundle" --target 0.95 | tee "$out/calibration.txt"
llama=()
[[ -x "$python" ]] && llama=(--llama-cpp-python "$python")
"$bin" bench decoder --model "$bundle" --threads 1 --runs 3 "${llama[@]}" | tee "$out/decode-speed.txt"
RAYON_NUM_THREADS=1 "$bin" bench generation --model "$bundle" --split 18 --out "$out/rtt" | tee "$out/rtt.txt"
RAYON_NUM_THREADS=1 "$bin" bench generation --model "$bundle" --split 18 --rtts 50ms --modes split,early-exit \
  --encodings f32,f16,int8 --out "$out/encodings" | tee "$out/encodings.txt"
