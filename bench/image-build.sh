#!/usr/bin/env bash
# Local build times of the shipped recipes (root; network to the Debian
# mirror): generic-6.12, debian-bookworm-minimal and, with FULL=1,
# debian-bookworm. Every round builds from scratch (--force) into a temp
# cache and checks the bundle sha256 is the same each round
# (reproducibility). Results: bench/RESULTS.md, section "Images".
#
# Environment: ROUNDS (2), FULL (0).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
ROUNDS=${ROUNDS:-2}
FULL=${FULL:-0}
[ "$(id -u)" = 0 ] || { echo "image-build.sh: run as root (mmdebstrap, chroot)" >&2; exit 1; }

WORK=$(mktemp -d /var/tmp/banger-bench-build.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
cargo build --release -q -p banger-image --example bundle-tool
TOOL=$ROOT/target/release/examples/bundle-tool

targets="kernel:generic-6.12 image:debian-bookworm-minimal"
[ "$FULL" = 1 ] && targets="$targets image:debian-bookworm"
echo "$(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg), $ROUNDS rounds"
for t in $targets; do
    kind=${t%%:*} name=${t#*:}
    times=() shas=()
    for r in $(seq "$ROUNDS"); do
        line=$("$TOOL" build "$kind" "$name" --cache "$WORK/cache" --force 2>/dev/null)
        # path, size, sha256, recipe hash, cached=..., seconds
        IFS=$'\t' read -r path size sha _ _ secs <<<"$line"
        times+=("${secs%s}") shas+=("$sha")
        rm -f "$path"
    done
    same=yes
    for s in "${shas[@]}"; do [ "$s" = "${shas[0]}" ] || same=NO; done
    printf '%-8s %-26s bundle %6.1f MB  times %s s  identical sha256 across rounds: %s (%s)\n' \
        "$kind" "$name" "$(echo "$size / 1048576" | bc -l)" "${times[*]}" "$same" "${shas[0]:0:16}"
done
