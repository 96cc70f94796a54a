#!/usr/bin/env bash
# Pull + verify + install throughput of a ~500 MB image bundle served from
# localhost, against the plain pipeline `curl | zstd -d | tar x` of the same
# file (no verification, nothing atomic). Results: bench/RESULTS.md,
# section "Images".
#
# The bundle holds a rootfs.ext4 of SIZE_MB random bytes (incompressible:
# the bundle is as big as the data, and both sides decompress and write
# the same bytes). Served by python3 -m http.server on 127.0.0.1.
#
# banger's side (crates/banger-image pull, via examples/bundle-tool):
# streaming HTTP download, sha256 of the bundle while streaming, zstd + tar
# unpack into a staging dir, sha256 of every artifact, fsync of each file,
# rename into place. The baseline is run twice: as is, and followed by
# `sync` (what an install that survives a crash has to pay).
#
# Environment: SIZE_MB (500), ROUNDS (5), WORK (a temp dir).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
SIZE_MB=${SIZE_MB:-500}
ROUNDS=${ROUNDS:-5}
for tool in curl zstd tar python3 cargo; do
    command -v "$tool" >/dev/null || { echo "image-pull.sh: $tool is missing" >&2; exit 1; }
done

WORK=${WORK:-$(mktemp -d /var/tmp/banger-bench-pull.XXXXXX)}
SERVER_PID=
cleanup() {
    [ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

cargo build --release -q -p banger-image --example bundle-tool
TOOL=$ROOT/target/release/examples/bundle-tool

# A bundle built by the real packer (same format as the catalog's).
mkdir -p "$WORK/src" "$WORK/www"
head -c "$((SIZE_MB * 1024 * 1024))" /dev/urandom > "$WORK/src/rootfs.ext4"
"$TOOL" pack "$WORK/src" --kind image --name bench --kernel-ref generic-6.12 --out "$WORK/www/bench.tar.zst" >/dev/null
BUNDLE=$WORK/www/bench.tar.zst
SIZE=$(stat -c %s "$BUNDLE")
SHA=$(sha256sum "$BUNDLE" | cut -d' ' -f1)

PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
(cd "$WORK/www" && exec python3 -m http.server "$PORT" --bind 127.0.0.1 >/dev/null 2>&1) &
SERVER_PID=$!
URL=http://127.0.0.1:$PORT/bench.tar.zst
for _ in $(seq 50); do curl -sf -o /dev/null -r 0-0 "$URL" && break; sleep 0.1; done

now() { date +%s.%N; }
median() { sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }

: > "$WORK/banger.t"; : > "$WORK/plain.t"; : > "$WORK/plain-sync.t"
for r in $(seq "$ROUNDS"); do
    rm -rf "$WORK/state"
    t0=$(now)
    "$TOOL" pull "$URL" --kind image --name bench --kernel-ref generic-6.12 --size "$SIZE" --sha256 "$SHA" --state "$WORK/state" >/dev/null
    t1=$(now); echo "$t1 - $t0" | bc >> "$WORK/banger.t"
    rm -rf "$WORK/state"

    rm -rf "$WORK/plain"; mkdir "$WORK/plain"
    t0=$(now)
    curl -sf "$URL" | zstd -d -q | tar x -C "$WORK/plain"
    t1=$(now); echo "$t1 - $t0" | bc >> "$WORK/plain.t"

    rm -rf "$WORK/plain"; mkdir "$WORK/plain"
    t0=$(now)
    curl -sf "$URL" | zstd -d -q | tar x -C "$WORK/plain"
    sync
    t1=$(now); echo "$t1 - $t0" | bc >> "$WORK/plain-sync.t"
    rm -rf "$WORK/plain"
done

mb=$(echo "scale=1; $SIZE / 1048576" | bc)
report() {
    local label=$1 file=$2 m
    m=$(median < "$file")
    printf '%-34s median %6.2fs  %7.1f MB/s   (rounds: %s)\n' "$label" "$m" "$(echo "$mb / $m" | bc -l)" "$(tr '\n' ' ' < "$file")"
}
echo "bundle: $mb MB ($SIZE bytes), $ROUNDS rounds, $(nproc) CPUs"
report "banger pull (verify + install)" "$WORK/banger.t"
report "curl | zstd -d | tar x" "$WORK/plain.t"
report "curl | zstd -d | tar x; sync" "$WORK/plain-sync.t"
