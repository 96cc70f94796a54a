#!/usr/bin/env bash
# Builds the kernel, minimal and golden image bundles the VM tests boot, from their
# recipes in images/ (cached by recipe hash under ~/.cache/banger/bundles,
# so reruns reuse them), and installs both into a fresh store dir.
# Usage: scripts/test-store.sh STORE_DIR   (needs root: mmdebstrap)
set -euo pipefail
cd "$(dirname "$0")/.."
store=${1:?usage: scripts/test-store.sh STORE_DIR}
cache=${BANGER_BUNDLE_CACHE:-$HOME/.cache/banger/bundles}
mkdir -p "$cache"

cargo build --locked -q -p banger-image --example bundle-tool
tool=target/debug/examples/bundle-tool

rm -rf "$store"
mkdir -p "$store"
# debian-bookworm (the golden image, with Docker) is for
# crates/bangerd/tests/vm_docker.rs; a cold build takes about 9 minutes on
# a loaded 2-core host, a cache hit seconds.
for spec in kernel:generic-6.12 image:debian-bookworm-minimal image:debian-bookworm; do
    kind=${spec%%:*} name=${spec#*:}
    echo "test-store: $kind $name (recipe $("$tool" hash "$kind" "$name"))"
    line=$("$tool" build "$kind" "$name" --cache "$cache")
    echo "test-store: $line"
    bundle=$(printf '%s' "$line" | cut -f1)
    "$tool" install "$bundle" --kind "$kind" --name "$name" --state "$store" >/dev/null
done
echo "test-store: installed into $store"
