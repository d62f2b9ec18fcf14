#!/usr/bin/env bash
# Saturation throughput of one cloud with batching (--max-batch 32) and
# without (--max-batch 1), measured in one run with `offramp load`.
# Usage: deploy/bench/load_batching.sh [rate] [duration] [edges]
set -euo pipefail
cd "$(dirname "$0")/../.."
rate=${1:-20000}; dur=${2:-10s}; edges=${3:-16}
bin=target/release
for batch in 32 1; do
  out=$(mktemp)
  $bin/offramp-cloud --model models/b-lenet-mnist --listen 127.0.0.1:0 --max-batch "$batch" --workers 1 >"$out" 2>/dev/null &
  pid=$!
  for _ in $(seq 50); do grep -q "grpc listening" "$out" && break; sleep 0.1; done
  addr=$(grep -o "127.0.0.1:[0-9]*" "$out")
  echo "== max-batch $batch"
  $bin/offramp load --cloud "http://$addr" --edges "$edges" --rate "$rate" --duration "$dur" --split 1 --cloud-pid "$pid" --json
  kill "$pid"; wait "$pid" 2>/dev/null || true
done
