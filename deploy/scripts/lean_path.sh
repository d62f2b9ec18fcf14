#!/usr/bin/env bash
# The lean-path measurements in the README (docs/results/lean-path):
# `offramp bench offload` twice (gRPC unary, the persistent gRPC stream and
# QUIC, interleaved, beside the bare gRPC round trip and the raw-TCP floor),
# then one cloud loaded to saturation by `offramp load` over unary calls and
# over streams, back to back (throughput, latency, the cloud's CPU per
# request from /proc), then a CPU profile of the cloud under each (perf
# cpu-clock sampling, grouped by what the time went to), then the edge's
# footprint (stripped size of the `edge` profile build, peak RSS of a run).
# Usage: deploy/scripts/lean_path.sh   (after cargo build --release)
set -euo pipefail
cd "$(dirname "$0")/../.."
bin=${OFFRAMP_BIN_DIR:-target/release}
out=docs/results/lean-path
mkdir -p "$out"
for b in offramp offramp-cloud offramp-edge; do
  [ -x "$bin/$b" ] || { echo "build first: cargo build --release (or set OFFRAMP_BIN_DIR)" >&2; exit 1; }
done
for i in 1 2; do "$bin/offramp" bench offload --requests 3000 2>/dev/null > "$out/bench-offload-$i.txt"; done

log=$(mktemp)
"$bin/offramp-cloud" --model models/b-lenet-mnist --listen 127.0.0.1:0 >"$log" 2>&1 &
cloud=$!
trap 'kill $cloud 2>/dev/null || true; rm -f "$log"' EXIT
for _ in $(seq 100); do grep -q "grpc listening" "$log" && break; sleep 0.1; done
addr=$(grep "grpc listening" "$log" | grep -o "127.0.0.1:[0-9]*")
: > "$out/load-saturation.txt"
for rate_edges in "12000 16" "20000 32"; do
  set -- $rate_edges
  for t in grpc grpc-stream grpc grpc-stream; do
    echo "== $t, offered $1/s from $2 edges" >> "$out/load-saturation.txt"
    "$bin/offramp" load --cloud "http://$addr" --edges "$2" --rate "$1" --duration 6s --split 1 \
      --cloud-pid "$cloud" --transport "$t" 2>/dev/null >> "$out/load-saturation.txt"
  done
done
if command -v perf >/dev/null; then
  : > "$out/profile.txt"
  for t in grpc grpc-stream; do
    perf record -e cpu-clock -F 999 -g -p "$cloud" -o "/tmp/perf-$t.data" -- sleep 8 >/dev/null 2>&1 &
    rec=$!
    "$bin/offramp" load --cloud "http://$addr" --edges 16 --rate 8000 --duration 8s --split 1 --transport "$t" >/dev/null 2>&1
    wait $rec
    echo "== cloud CPU profile under 8,000 req/s over $t" >> "$out/profile.txt"
    python3 deploy/scripts/perf_categories.py "/tmp/perf-$t.data" >> "$out/profile.txt"
  done
fi
kill $cloud; trap - EXIT; rm -f "$log"

cargo build --profile edge -p offramp-edge --locked >/dev/null 2>&1
{
  echo "offramp-edge, release, stripped by the edge profile (fat LTO): $(stat -c %s target/edge/offramp-edge) bytes"
  /usr/bin/time -v "$bin/offramp-edge" run --model models/b-lenet-mnist --split 1 --data models/mnist-sample \
    --subset sample 2>&1 | grep -E "Maximum resident|accuracy"
} > "$out/footprint.txt"
