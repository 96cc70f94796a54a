#!/usr/bin/env bash
# Makes Debian 12's own QEMU (7.2, the oldest QEMU a distribution banger
# supports ships) runnable beside the installed one, without installing it:
# downloads bookworm's qemu-system-x86, -common (the TCG accelerator is a
# module there) and -data (firmware), extracts them into a cache dir and
# writes a qemu-system-x86_64 wrapper that points QEMU at its own modules
# and firmware. Prints the wrapper's path (for BANGER_BOOT_OLD_QEMU).
# Usage: scripts/qemu-bookworm.sh [DIR]   (default ~/.cache/banger/qemu-bookworm)
set -euo pipefail
dir=${1:-${BANGER_QEMU_BOOKWORM_DIR:-$HOME/.cache/banger/qemu-bookworm}}
pkgs=(qemu-system-x86 qemu-system-common qemu-system-data)
# The versions bookworm carries now; a point release changes them, and the
# cache with them.
versions=""
for p in "${pkgs[@]}"; do
    v=$(apt-cache madison "$p" | awk -F'|' '$3 ~ /bookworm\/main/ && $3 !~ /backports|security|updates/ {gsub(/ /,"",$2); print $2; exit}')
    [ -n "$v" ] || { echo "qemu-bookworm: apt knows no bookworm version of $p (apt-get update?)" >&2; exit 1; }
    versions+="$p=$v "
done
wrapper=$dir/qemu-system-x86_64
if [ -x "$wrapper" ] && [ "$(cat "$dir/versions" 2>/dev/null)" = "$versions" ]; then
    echo "$wrapper"
    exit 0
fi
rm -rf "$dir"
mkdir -p "$dir/debs"
# apt's sandbox user cannot write into root's cache dir.
chmod 0777 "$dir/debs"
(cd "$dir/debs" && apt-get download -q $versions >&2)
for deb in "$dir"/debs/*.deb; do dpkg-deb -x "$deb" "$dir/root"; done
cat >"$wrapper" <<WRAP
#!/bin/sh
# QEMU from Debian 12's packages (scripts/qemu-bookworm.sh): its own
# modules (accel-tcg) and firmware, not the installed QEMU's.
QEMU_MODULE_DIR='$dir/root/usr/lib/x86_64-linux-gnu/qemu'
export QEMU_MODULE_DIR
exec '$dir/root/usr/bin/qemu-system-x86_64' -L '$dir/root/usr/share/qemu' "\$@"
WRAP
chmod 0755 "$wrapper"
"$wrapper" --version | head -1 >&2
echo "$versions" >"$dir/versions"
echo "$wrapper"
