#!/usr/bin/env bash
# Runs the cargo-fuzz targets in fuzz/ (frame, codec, policy, manifest,
# request, text, openai_body, generate_session), each
# for a number of seconds, starting from the seeds in fuzz/seeds/<target>/.
# Usage: deploy/scripts/fuzz.sh [seconds] [target...]
#   deploy/scripts/fuzz.sh                 # every target, 600 s each
#   deploy/scripts/fuzz.sh 60 frame codec  # two targets, one minute each
# Env: FUZZ_SANITIZER (address, default; none is faster), FUZZ_JOBS (parallel
#      libFuzzer workers per target, default 1), FUZZ_ARGS (more libFuzzer flags).
# Works on stable Rust: cargo-fuzz needs nightly flags (-Z sanitizer...), which
# RUSTC_BOOTSTRAP=1 unlocks. A crash stops its target, leaves the input in
# fuzz/artifacts/<target>/ and makes the script exit 1 after the other targets.
# Reproduce: cargo fuzz run <target> fuzz/artifacts/<target>/crash-...
# Minimize: cargo fuzz tmin <target> fuzz/artifacts/<target>/crash-...
# (each with RUSTC_BOOTSTRAP=1 in the environment, run inside fuzz/).
set -euo pipefail
cd "$(dirname "$0")/../.."
case "${1:-}" in -h|--help) sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;; esac
secs=${1:-600}; shift || true
targets=("$@")
export RUSTC_BOOTSTRAP=1
san=${FUZZ_SANITIZER:-address}; jobs=${FUZZ_JOBS:-1}
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
[ ${#targets[@]} -gt 0 ] || mapfile -t targets < <(cd fuzz && cargo fuzz list)
cd fuzz
cargo fuzz build -s "$san"
failed=()
for t in "${targets[@]}"; do
  mkdir -p "corpus/$t"
  [ -d "seeds/$t" ] && cp -n "seeds/$t"/* "corpus/$t"/ 2>/dev/null || true
  echo "== $t: ${secs}s"
  log=$(mktemp)
  if cargo fuzz run -s "$san" --jobs "$jobs" "$t" "corpus/$t" -- \
      -max_total_time="$secs" -print_final_stats=1 ${FUZZ_ARGS:-} >"$log" 2>&1; then
    grep -E "^(#[0-9]+[[:space:]]+DONE|Done|stat::number_of_executed_units|stat::average_exec_per_sec|stat::peak_rss_mb)" "$log" || tail -n 3 "$log"
  else
    failed+=("$t"); tail -n 40 "$log"
  fi
  rm -f "$log"
done
if [ ${#failed[@]} -gt 0 ]; then echo "crashes in: ${failed[*]} (see fuzz/artifacts/)" >&2; exit 1; fi
echo "no crashes"
