#!/usr/bin/env bash
# Builds the Debian 12 tree the systemd-nspawn end-to-end test boots
# (crates/banger-deploy/tests/nspawn.rs): systemd as init plus what banger's
# daemon and root helper run at runtime. QEMU 10 and e2fsprogs come from
# bookworm-backports, as scripts/deps.sh installs them on the host.
# systemd-resolved (with libnss-resolve, and curl for the daemon's API)
# checks the `.vm` routing the root helper wires into it
# (docs/dns-routing.md); it is installed last because its postinst points
# /etc/resolv.conf at resolved's stub, which is not running in the chroot.
# The test caches the tree by the hash of this file.
# Usage: build-tree.sh DIR   (needs root)
set -euo pipefail
dir=${1:?usage: build-tree.sh DIR}
mirror=http://deb.debian.org/debian

mmdebstrap --mode=root --variant=minbase --quiet \
    --include=systemd,systemd-sysv,udev,dbus,passwd,util-linux,procps,iproute2,nftables,openssh-client,socat,kmod,curl \
    --customize-hook='chroot "$1" apt-get install -y -qq --no-install-recommends -t bookworm-backports qemu-system-x86 e2fsprogs >/dev/null' \
    --customize-hook='chroot "$1" apt-get install -y -qq --no-install-recommends systemd-resolved libnss-resolve >/dev/null' \
    --customize-hook='chroot "$1" apt-get clean' \
    --customize-hook='rm -rf "$1"/var/lib/apt/lists/*' \
    --customize-hook='echo banger-nspawn >"$1/etc/hostname"' \
    --customize-hook='systemctl --root="$1" mask systemd-networkd-wait-online.service getty@tty1.service systemd-timesyncd.service apt-daily.timer apt-daily-upgrade.timer 2>/dev/null || true' \
    bookworm "$dir" \
    "deb $mirror bookworm main" \
    "deb $mirror bookworm-backports main"
