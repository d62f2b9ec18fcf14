#!/usr/bin/env bash
# Speed of imported ONNX models (tract) against ONNX Runtime on the same
# subgraphs, and of an imported B-LeNet against B-LeNet on Offramp's own
# kernels; writes docs/src/results/onnx/speed.txt.
#
# 1. B-LeNet exported to ONNX (deploy/scripts/onnx_compare.py --save: the
#    committed weights as one graph, exits as outputs), imported with a cut at
#    each of its block boundaries; `offramp bench blocks` on the native bundle
#    and on the imported one (same weights, same blocks).
# 2. Per block and exit head of each imported model (B-LeNet, the demo model
#    of deploy/scripts/onnx_demo.sh when it exists, the two test fixtures):
#    tract (`offramp bench blocks`) against onnxruntime on the very subgraph
#    bytes, batch 1 and 32, one thread each (deploy/scripts/onnx_import_compare.py),
#    with each piece's multiply-adds from the inspect profile.
#
# Usage: deploy/scripts/onnx_speed.sh [OUT_DIR]   (default out/onnx-speed)
# Env: OFFRAMP_BIN (default: build release), ITERS (default 2000),
#      DEMO (the demo's out dir, default out/onnx-demo).
set -euo pipefail
if [[ "${1:-}" == "-h" || "${1:-}" == "--help" ]]; then
  sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'
  exit 0
fi
cd "$(dirname "$0")/../.."
out="${1:-out/onnx-speed}"
iters="${ITERS:-2000}"
demo="${DEMO:-out/onnx-demo}"
results=docs/src/results/onnx
mkdir -p "$out" "$results"
if [[ -n "${OFFRAMP_BIN:-}" ]]; then
  offramp="$OFFRAMP_BIN"
else
  cargo build --release -p offramp
  offramp="${CARGO_TARGET_DIR:-target}/release/offramp"
fi
deploy/scripts/ort_env.sh > /dev/null
py=target/ort-venv/bin/python
# One thread for candle's rayon pool too: tract and onnxruntime run on one.
export RAYON_NUM_THREADS=1
report="$results/speed.txt"
{
  echo "# deploy/scripts/onnx_speed.sh, $(date -u +%Y-%m-%d), one thread each"
  lscpu | grep "Model name" | sed 's/  */ /g'
  if lscpu | grep -q avx512f; then echo "AVX-512: yes"; else echo "AVX-512: no (AVX2)"; fi
} > "$report"

# hangs_off cuts of an .onnx (where its side exits hang off), comma-separated.
cuts_of() {
  "$offramp" inspect onnx --from "$1" --json | "$py" -c \
    'import json,sys; p=json.load(sys.stdin); print(",".join(o["hangs_off"] for o in p["outputs"] if o["hangs_off"]))'
}
exits_of() {
  "$offramp" inspect onnx --from "$1" --json | "$py" -c \
    'import json,sys; p=json.load(sys.stdin); print(",".join(o["name"] for o in p["outputs"]))'
}

# B-LeNet: native against imported.
"$py" deploy/scripts/onnx_compare.py --model models/b-lenet-mnist --iters 50 --save "$out/b-lenet.onnx" > /dev/null
rm -rf "$out/b-lenet-onnx"
"$offramp" import onnx --from "$out/b-lenet.onnx" --cuts b0_pool,b1_pool,b2_pool,b3_flat,b4_relu \
  --exits "$(exits_of "$out/b-lenet.onnx")" --out "$out/b-lenet-onnx" > /dev/null
"$offramp" bench blocks --model models/b-lenet-mnist --iters "$iters" --json-out "$out/native.json" > /dev/null
"$offramp" bench blocks --model "$out/b-lenet-onnx" --iters "$iters" --json-out "$out/imported.json" > /dev/null
"$py" - "$out/native.json" "$out/imported.json" >> "$report" <<'PY'
import json, sys
n, i = (json.load(open(p)) for p in sys.argv[1:3])
print("\n## B-LeNet: Offramp's kernels (native bundle) against tract (the same weights imported from ONNX)")
print("whole network, every exit head, logits to softmax (`bench blocks` 'bare layer calls'), p50 µs:")
for b in (1, 32):
    a, t = n[f"batch_{b}"]["bare"]["p50"], i[f"batch_{b}"]["bare"]["p50"]
    print(f"  batch {b:>2}: native {a:9.1f} µs   imported {t:9.1f} µs   imported / native {t / a:5.2f}x")
PY

compare() {  # NAME ONNX BUNDLE
  "$offramp" bench blocks --model "$3" --iters "$iters" --json-out "$out/$1.json" > /dev/null
  { echo; echo "## $1: tract against onnxruntime on the same subgraphs"
    "$py" deploy/scripts/onnx_import_compare.py --model "$3" --onnx "$2" --rust-json "$out/$1.json" \
      --threads 1 --iters "$iters"; } >> "$report"
}
compare b-lenet "$out/b-lenet.onnx" "$out/b-lenet-onnx"
if [[ -s "$demo/mnist_sdn.onnx" ]]; then
  rm -rf "$out/mnist-sdn"
  "$offramp" import onnx --from "$demo/mnist_sdn.onnx" --cuts "$(cuts_of "$demo/mnist_sdn.onnx")" \
    --exits exit_1,exit_2,final --out "$out/mnist-sdn" > /dev/null
  compare mnist-sdn "$demo/mnist_sdn.onnx" "$out/mnist-sdn"
fi
for f in res_cnn tiny_vit; do
  m="tests/fixtures/onnx/$f.onnx"
  rm -rf "$out/$f"
  "$offramp" import onnx --from "$m" --cuts "$(cuts_of "$m")" --exits "$(exits_of "$m")" --out "$out/$f" > /dev/null
  compare "$f" "$m" "$out/$f"
done
cat "$report"
