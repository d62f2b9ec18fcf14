#!/usr/bin/env bash
# Builds the offramp-cloud, offramp-edge, offramp-link and offramp (tool) images without
# pulling anything: for Docker engines that cannot reach a registry.
#
# The binaries are built on this host (or given), the base image is made from
# this host's own libraries (`docker import` of exactly the shared objects the
# binaries need, plus a shell, cp and mkdir for the Dockerfile's builder step),
# and deploy/docker/Dockerfile is built with BINARIES=prebuilt. With a registry,
# build the Dockerfile directly instead (it compiles from source on
# rust:*-slim and ships on debian:bookworm-slim).
#
#   deploy/docker/build-local.sh                 # cargo build --release, tag :latest
#   deploy/docker/build-local.sh --tag dev --base debian:bookworm-slim
#   deploy/docker/build-local.sh --cloud path/to/offramp-cloud --edge ... --tool ...
set -euo pipefail

usage() {
    awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"
    cat <<'USAGE'
Options:
  --cloud BIN   offramp-cloud binary (default: target/release/offramp-cloud)
  --edge BIN    offramp-edge binary  (default: target/release/offramp-edge)
  --link BIN    offramp-link binary  (default: target/release/offramp-link)
  --tool BIN    offramp binary       (default: target/release/offramp)
  --tag TAG     image tag (default: latest)
  --base IMAGE  base image for the builder step and the runtime
                (default: offramp-base:local, made here from host libraries)
USAGE
}

repo=$(cd "$(dirname "$0")/../.." && pwd)
cloud="" edge="" link="" tool="" tag=latest base=""
while [ $# -gt 0 ]; do
    case "$1" in
        --cloud) cloud=$2; shift 2 ;;
        --edge) edge=$2; shift 2 ;;
        --link) link=$2; shift 2 ;;
        --tool) tool=$2; shift 2 ;;
        --tag) tag=$2; shift 2 ;;
        --base) base=$2; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "build-local.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
    esac
done

command -v docker >/dev/null || { echo "build-local.sh: docker is not installed" >&2; exit 1; }
docker info >/dev/null 2>&1 || { echo "build-local.sh: cannot reach the Docker engine (docker info failed)" >&2; exit 1; }

if [ -z "$cloud$edge$link$tool" ]; then
    echo "==> cargo build --release (offramp-cloud, offramp-edge, offramp-link, offramp)"
    (cd "$repo" && cargo build --release --locked -p offramp-cloud -p offramp-edge -p offramp-link -p offramp)
fi
cloud=${cloud:-$repo/target/release/offramp-cloud}
edge=${edge:-$repo/target/release/offramp-edge}
link=${link:-$repo/target/release/offramp-link}
tool=${tool:-$repo/target/release/offramp}
for b in "$cloud" "$edge" "$link" "$tool"; do
    [ -x "$b" ] || { echo "build-local.sh: $b is not an executable file" >&2; exit 1; }
done

work=$(mktemp -d "${TMPDIR:-/tmp}/offramp-image.XXXXXX")
trap 'rm -rf "$work"' EXIT

# The build context: the models and the (stripped) binaries.
mkdir -p "$work/ctx/prebuilt"
cp -r "$repo/models" "$work/ctx/models"
cp "$cloud" "$work/ctx/prebuilt/offramp-cloud"
cp "$edge" "$work/ctx/prebuilt/offramp-edge"
cp "$link" "$work/ctx/prebuilt/offramp-link"
cp "$tool" "$work/ctx/prebuilt/offramp"
chmod 0755 "$work/ctx/prebuilt/"*
if command -v strip >/dev/null; then strip "$work/ctx/prebuilt/"*; fi

if [ -z "$base" ]; then
    base=offramp-base:local
    echo "==> $base from this host's libraries"
    root="$work/rootfs"
    mkdir -p "$root/bin" "$root/etc" "$root/tmp" "$root/usr/local/bin"
    chmod 1777 "$root/tmp"
    sh=$(readlink -f /bin/sh)
    progs=("$sh" "$(command -v cp)" "$(command -v mkdir)")
    cp "$sh" "$root/bin/sh"
    cp "$(command -v cp)" "$(command -v mkdir)" "$root/bin/"
    # Every shared object (and the loader) the binaries and the tools load
    # (nothing for a static binary).
    for f in "${progs[@]}" "$work/ctx/prebuilt/"*; do
        { ldd "$f" 2>/dev/null || true; } | awk '/=> \//{print $3} /^\t\//{print $1}'
    done | sort -u | while read -r lib; do
        mkdir -p "$root$(dirname "$lib")"
        cp -L "$lib" "$root$lib"
    done
    printf 'root:x:0:0:root:/root:/bin/sh\nofframp:x:10001:10001:offramp:/nonexistent:/bin/false\n' >"$root/etc/passwd"
    printf 'root:x:0:\nofframp:x:10001:\n' >"$root/etc/group"
    printf 'hosts: files dns\n' >"$root/etc/nsswitch.conf"
    tar -C "$root" --numeric-owner --owner=0 --group=0 -c . |
        docker import --change 'ENV PATH=/usr/local/bin:/usr/bin:/bin' --change 'LABEL org.offramp.stage=base' \
            - "$base" >/dev/null
fi

for target in cloud edge link tool; do
    case $target in tool) name=offramp ;; *) name=offramp-$target ;; esac
    echo "==> $name:$tag (target $target, base $base)"
    docker build -q -f "$repo/deploy/docker/Dockerfile" \
        --build-arg RUST_IMAGE="$base" --build-arg RUNTIME_IMAGE="$base" --build-arg BINARIES=prebuilt \
        --target "$target" -t "$name:$tag" "$work/ctx" >/dev/null
done
# The builder stage's image is of no further use once the targets exist, nor
# is an earlier base image that the new one replaced (both dangling now).
docker image prune -f --filter label=org.offramp.stage=builder >/dev/null
docker image prune -f --filter label=org.offramp.stage=base >/dev/null
docker image ls --format '{{.Repository}}:{{.Tag}}  {{.Size}}' | grep -E "^offramp(-cloud|-edge|-link)?:$tag " || true
