#!/usr/bin/env bash
# One cloud (default settings: --max-batch 32, one compute worker) under
# `offramp load`: first its saturation throughput (the most completed requests
# per second over a sweep of offered rates: on a small machine the load
# generator shares the CPU, so offering far more than the cloud can take lowers
# what it completes), then latency at 50% and 90% of that, all in one run.
# Usage: deploy/scripts/load_latency.sh [duration] [edges] [offered rates...]
set -euo pipefail
cd "$(dirname "$0")/../.."
dur=${1:-10s}; edges=${2:-16}; shift $(( $# < 2 ? $# : 2 ))
rates=("$@"); [ ${#rates[@]} -gt 0 ] || rates=(4000 6000 8000 10000 12000)
bin=target/release
[ -x $bin/offramp-cloud ] && [ -x $bin/offramp ] || { echo "build first: cargo build --release" >&2; exit 1; }
out=$(mktemp)
$bin/offramp-cloud --model models/b-lenet-mnist --listen 127.0.0.1:0 >"$out" 2>/dev/null &
pid=$!
trap 'kill $pid 2>/dev/null || true; rm -f "$out"' EXIT
for _ in $(seq 100); do grep -q "grpc listening" "$out" && break; sleep 0.1; done
addr=$(grep -o "127.0.0.1:[0-9]*" "$out")
field() { tr -d "\n" | grep -o "\"$1\": *[0-9.e+-]*" | head -1 | sed "s/.*: *//"; }
load() { $bin/offramp load --cloud "http://$addr" --edges "$edges" --rate "$1" --duration "$dur" --split 1 --json; }
t=0
for r in "${rates[@]}"; do
  rep=$(load "$r")
  echo "offered $r/s: $rep"
  t=$(awk -v a="$t" -v b="$(echo "$rep" | field throughput)" 'BEGIN { print (b > a ? b : a) }')
done
echo "saturation: $t/s completed"
for frac in 0.5 0.9; do
  rate=$(awk -v t="$t" -v f="$frac" 'BEGIN { printf "%.0f", t * f }')
  echo "at $frac of saturation ($rate/s): $(load "$rate")"
done
