#!/usr/bin/env bash
# The adaptive-control results in the book (docs/src/results/adaptive.md;
# data in docs/src/results/drift and docs/src/results/adaptive): the drift
# scenario under four drifts (the accuracy-budget controller against the
# calibrated static policy), then the
# adaptive-split experiment over the step and LTE traces, and its companion
# with the fixed splits in int8 + LZ4.
# Usage: deploy/scripts/adaptive_results.sh [MNIST dir, default ../shared/data/mnist]
set -euo pipefail
cd "$(dirname "$0")/../.."
mnist=${1:-../shared/data/mnist}
bin=${OFFRAMP_BIN:-target/release/offramp}
[ -x "$bin" ] || { echo "build first: cargo build --release -p offramp (or set OFFRAMP_BIN)" >&2; exit 1; }
mkdir -p docs/src/results/drift
for d in "noise 0.4" "noise 0.25" "rotate 30" "blur 1"; do
  set -- $d
  name=$1; [ "$1 $2" = "noise 0.25" ] && name=noise-0.25
  echo "drift: $1 $2" >&2
  "$bin" drift --data "$mnist" --drift "$1" --strength "$2" --out "docs/src/results/drift/$name" > "docs/src/results/drift/$name.txt"
done
mkdir -p docs/src/results/adaptive
echo "experiment: deploy/experiments/adaptive.toml (20 cells of 40 s)" >&2
"$bin" experiment --config deploy/experiments/adaptive.toml --out docs/src/results/adaptive > docs/src/results/adaptive/summary.txt
# The per-answer records are large; the summary, CSVs and plots stay.
rm -rf docs/src/results/adaptive/records
echo "experiment: deploy/experiments/adaptive-int8.toml (the fixed splits in int8 + LZ4)" >&2
mkdir -p docs/src/results/adaptive-int8
"$bin" experiment --config deploy/experiments/adaptive-int8.toml --out docs/src/results/adaptive-int8 > docs/src/results/adaptive-int8/summary.txt
rm -rf docs/src/results/adaptive-int8/records
echo "experiment: deploy/experiments/adaptive-oboe.toml (two Oboe throughput traces, int8 + LZ4)" >&2
mkdir -p docs/src/results/adaptive-oboe
"$bin" experiment --config deploy/experiments/adaptive-oboe.toml --out docs/src/results/adaptive-oboe > docs/src/results/adaptive-oboe/summary.txt
rm -rf docs/src/results/adaptive-oboe/records
