#!/usr/bin/env bash
# Saturation throughput of one cloud with batching (--max-batch 32) and
# without (--max-batch 1), measured in one run with `offramp load`.
# Usage: deploy/scripts/load_batching.sh [rate] [duration] [edges] [model] [split]
#   deploy/scripts/load_batching.sh 8000 8s 16                       # B-LeNet, K = 1
#   offramp train --arch wide-mlp --data ../shared/data/mnist --max-steps 300 --out /tmp/wide-mlp
#   deploy/scripts/load_batching.sh 8000 8s 16 /tmp/wide-mlp 2       # wide MLP, K = 2
set -euo pipefail
cd "$(dirname "$0")/../.."
rate=${1:-20000}; dur=${2:-10s}; edges=${3:-16}; model=${4:-models/b-lenet-mnist}; split=${5:-1}
bin=target/release
[ -x $bin/offramp-cloud ] && [ -x $bin/offramp ] || { echo "build first: cargo build --release" >&2; exit 1; }
for batch in 32 1; do
  out=$(mktemp)
  $bin/offramp-cloud --model "$model" --listen 127.0.0.1:0 --max-batch "$batch" --workers 1 >"$out" 2>/dev/null &
  pid=$!
  for _ in $(seq 100); do grep -q "grpc listening" "$out" && break; sleep 0.1; done
  addr=$(grep -o "127.0.0.1:[0-9]*" "$out")
  echo "== max-batch $batch"
  $bin/offramp load --cloud "http://$addr" --model "$model" --edges "$edges" --rate "$rate" --duration "$dur" --split "$split" --cloud-pid "$pid" --json
  kill "$pid"; wait "$pid" 2>/dev/null || true
  rm -f "$out"
done
