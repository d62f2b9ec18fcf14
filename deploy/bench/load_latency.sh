#!/usr/bin/env bash
# One cloud (default settings: --max-batch 32, one compute worker) under
# `offramp load`: first its saturation throughput (offered far above it), then
# latency at 50% and 90% of that throughput, all in one run.
# Usage: deploy/bench/load_latency.sh [duration] [edges] [overload-rate]
set -euo pipefail
cd "$(dirname "$0")/../.."
dur=${1:-10s}; edges=${2:-16}; over=${3:-20000}
bin=target/release
[ -x $bin/offramp-cloud ] && [ -x $bin/offramp ] || { echo "build first: cargo build --release" >&2; exit 1; }
out=$(mktemp)
$bin/offramp-cloud --model models/b-lenet-mnist --listen 127.0.0.1:0 >"$out" 2>/dev/null &
pid=$!
trap 'kill $pid 2>/dev/null || true; rm -f "$out"' EXIT
for _ in $(seq 100); do grep -q "grpc listening" "$out" && break; sleep 0.1; done
addr=$(grep -o "127.0.0.1:[0-9]*" "$out")
field() { grep -o "\"$1\":[0-9.e+-]*" | head -1 | cut -d: -f2; }
load() { $bin/offramp load --cloud "http://$addr" --edges "$edges" --rate "$1" --duration "$dur" --split 1 --json; }
sat=$(load "$over")
t=$(echo "$sat" | field throughput)
echo "saturation (offered $over/s): $sat"
for frac in 0.5 0.9; do
  rate=$(awk -v t="$t" -v f="$frac" 'BEGIN { printf "%.0f", t * f }')
  echo "at $frac of saturation ($rate/s): $(load "$rate")"
done
