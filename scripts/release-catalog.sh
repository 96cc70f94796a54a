#!/usr/bin/env bash
# The release side of the image catalog: builds each named recipe twice in
# separate build caches, refuses to go on unless the two bundles are
# byte-identical, copies each bundle to OUT_DIR under a content-addressed
# name (<name>-<first 16 hex of its sha256>.tar.zst, so a published file is
# never replaced), and writes its url, size and sha256 into the catalog file
# with bundle-tool's catalog-set. Needs root (mmdebstrap, chroot).
#
# Usage: scripts/release-catalog.sh OUT_DIR [--catalog FILE] [--url-prefix URL] [KIND:NAME ...]
#   --catalog     catalog to edit (default images/catalog.toml)
#   --url-prefix  written before each file name in the entry's url (default
#                 none: the url is relative to the catalog's base_url)
#   KIND:NAME     default: kernel:generic-6.12 image:debian-bookworm
#
# .github/workflows/catalog.yml runs it on a bundles-v* tag; scripts/test.sh
# runs it on a catalog copy for the kernel.
set -euo pipefail
cd "$(dirname "$0")/.."

usage() { sed -n '2,/^set -e/p' "$0" | sed -n 's/^# \{0,1\}//p' >&2; exit 2; }
[ $# -ge 1 ] || usage
out=$1; shift
catalog=images/catalog.toml
prefix=
specs=()
while [ $# -gt 0 ]; do
    case $1 in
        --catalog) catalog=${2:?--catalog needs a file}; shift 2 ;;
        --url-prefix) prefix=${2:?--url-prefix needs a URL}; shift 2 ;;
        *:*) specs+=("$1"); shift ;;
        *) echo "release-catalog: unknown argument $1" >&2; usage ;;
    esac
done
[ ${#specs[@]} -gt 0 ] || specs=(kernel:generic-6.12 image:debian-bookworm)
[ -f "$catalog" ] || { echo "release-catalog: no catalog at $catalog" >&2; exit 1; }

cargo build --locked -q -p banger-image --example bundle-tool
tool=$PWD/target/debug/examples/bundle-tool
mkdir -p "$out"
work=$(mktemp -d "$out/.release-XXXXXX")
trap 'rm -rf "$work"' EXIT

for spec in "${specs[@]}"; do
    kind=${spec%%:*} name=${spec#*:}
    case $kind in image|kernel) ;; *) echo "release-catalog: $spec: kind must be image or kernel" >&2; exit 2 ;; esac
    sums=()
    for run in a b; do
        echo "release-catalog: $kind $name, build $run"
        line=$("$tool" build "$kind" "$name" --cache "$work/$run")
        sums+=("$(printf '%s' "$line" | cut -f3)")
        bundle=$(printf '%s' "$line" | cut -f1)
        cp "$bundle" "$work/$run.bundle"
    done
    if [ "${sums[0]}" != "${sums[1]}" ]; then
        echo "release-catalog: $kind $name is not reproducible: sha256 ${sums[0]} vs ${sums[1]}" >&2
        cmp "$work/a.bundle" "$work/b.bundle" | head -n 3 >&2 || true
        exit 1
    fi
    file="$name-${sums[0]:0:16}.tar.zst"
    mv "$work/a.bundle" "$out/$file"
    rm -f "$work/b.bundle"
    "$tool" catalog-set "$out/$file" --url "$prefix$file" --catalog "$catalog"
    echo "release-catalog: $kind $name -> $out/$file (sha256 ${sums[0]}, identical in two builds)"
    rm -rf "${work:?}/a" "${work:?}/b"
done
