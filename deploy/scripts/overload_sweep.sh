#!/usr/bin/env bash
# The overload curve of one cloud (B-LeNet, K = 1, default settings) on each
# transport. First the cloud's capacity over the offload stream (the edge's
# default transport): `offramp load`'s probe (rising rates while 90%
# completes, the most completed per second) against a fresh cloud, once per
# run, the median taken (CAPACITY=N skips this); then, for every run and
# transport, a fresh `offramp-cloud` (gRPC and QUIC, self-signed) and
# `offramp load --sweep` at multiples of that one capacity, with the cloud's
# CPU and memory from /proc. Writes one CSV + plot per sweep under
# $out/raw and all rows together in $out/overload.csv; summarize with
# deploy/scripts/overload_summary.py. Arguments after the fifth go to
# `offramp load` (e.g. --no-client-throttle); $CLOUD_FLAGS to the cloud.
# Usage: deploy/scripts/overload_sweep.sh [runs] [duration] [edges] [multiples] [out] [load flags...]
set -euo pipefail
cd "$(dirname "$0")/../.."
runs=${1:-3}; dur=${2:-5s}; edges=${3:-32}; mult=${4:-0.5,1,2,4,10}
out=${5:-docs/src/results/overload}; shift $(( $# < 5 ? $# : 5 ))
load_flags=("$@")
read -r -a cloud_flags <<<"${CLOUD_FLAGS:-}"
bin=${BIN:-target/release}
[ -x "$bin/offramp-cloud" ] && [ -x "$bin/offramp" ] || { echo "build first: cargo build --release" >&2; exit 1; }
mkdir -p "$out/raw"
tmp=$(mktemp -d)
pid=
trap '[ -n "$pid" ] && kill "$pid" 2>/dev/null; rm -rf "$tmp"' EXIT
{ lscpu | grep -m1 "Model name"; echo "cores: $(nproc)"; grep -o -m1 'avx512f' /proc/cpuinfo || echo "no avx512"
  uptime; } >"$out/raw/cpu.txt"

# Starts a fresh cloud; sets $pid, $grpc and $quic.
start_cloud() {
  "$bin/offramp-cloud" --model models/b-lenet-mnist --listen 127.0.0.1:0 --quic-listen 127.0.0.1:0 \
    --self-signed --cert-out "$tmp/cert.pem" ${cloud_flags[@]+"${cloud_flags[@]}"} >"$tmp/cloud.out" 2>/dev/null &
  pid=$!
  for _ in $(seq 600); do grep -q "quic listening" "$tmp/cloud.out" && break; sleep 0.1; done
  grep -q "quic listening" "$tmp/cloud.out" || { echo "the cloud did not start within 60 s" >&2; exit 1; }
  grpc=$(grep -o "grpc listening on 127.0.0.1:[0-9]*" "$tmp/cloud.out" | grep -o "127.0.0.1:[0-9]*")
  quic=$(grep -o "quic listening on 127.0.0.1:[0-9]*" "$tmp/cloud.out" | grep -o "127.0.0.1:[0-9]*")
}
# The URL and TLS flags of the fresh cloud for $transport: sets $url and $tls.
endpoint() {
  case $transport in
    quic) url="quic://localhost:${quic#127.0.0.1:}"; tls=(--ca "$tmp/cert.pem") ;;
    *) url="http://$grpc"; tls=() ;;
  esac
}
stop_cloud() {
  kill "$pid" 2>/dev/null || echo "the cloud (pid $pid) had exited before the end of its sweep" >&2
  wait "$pid" 2>/dev/null || true
  pid=
}

rows="$out/overload.csv"
: >"$rows"
capacity=${CAPACITY:-}
if [ -z "$capacity" ]; then
  probes=()
  for run in $(seq "$runs"); do
    start_cloud
    "$bin/offramp" load --cloud "http://$grpc" --transport grpc-stream --edges "$edges" --rate 2000 \
      --duration "$dur" --split 1 --sweep 1 --out "$out/raw/capacity$run" --json >"$out/raw/capacity$run.json"
    stop_cloud
    probes+=("$(tr -d '\n ' <"$out/raw/capacity$run.json" | grep -o '"capacity":[0-9.]*' | cut -d: -f2)")
  done
  capacity=$(printf '%s\n' "${probes[@]}" | sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }')
  echo "capacity over the stream: probes ${probes[*]}, median $capacity/s" | tee "$out/raw/capacity.txt"
fi
for run in $(seq "$runs"); do
  for transport in grpc grpc-stream quic; do
    start_cloud
    endpoint
    dir="$out/raw/run$run-$transport"
    "$bin/offramp" load --cloud "$url" ${tls[@]+"${tls[@]}"} --transport "$transport" --edges "$edges" \
      --duration "$dur" --split 1 --capacity "$capacity" --sweep "$mult" --cloud-pid "$pid" --out "$dir" \
      ${load_flags[@]+"${load_flags[@]}"} --json >"$dir.json"
    stop_cloud
    if [ ! -s "$rows" ]; then head -1 "$dir/overload.csv" | sed 's/^/run,/' >"$rows"; fi
    tail -n +2 "$dir/overload.csv" | sed "s/^/$run,/" >>"$rows"
    echo "run $run $transport: $(tail -n +2 "$dir/overload.csv" | cut -d, -f2,6 | tr '\n' ' ')"
  done
done

