#!/usr/bin/env bash
# Installs everything banger's build, tests and main job need on Debian 12.
# Idempotent; needs root. Used by scripts/quickstart.sh, scripts/test.sh and CI.
set -euo pipefail

if [ "$(id -u)" -ne 0 ]; then
    echo "scripts/deps.sh: needs root (apt-get); run it with sudo" >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive

# QEMU 10 and e2fsprogs >= 1.47.2 (reproducible `mkfs.ext4 -d tarball`) come
# from bookworm-backports; the kernel bundle's source package lives there too.
if ! grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
    echo 'deb http://deb.debian.org/debian bookworm-backports main' \
        >/etc/apt/sources.list.d/banger-backports.list
fi
apt-get update -qq

apt-get install -y -qq --no-install-recommends -t bookworm-backports \
    qemu-system-x86 e2fsprogs >/dev/null
apt-get install -y -qq --no-install-recommends \
    build-essential pkg-config git curl ca-certificates \
    iproute2 nftables openssh-client zstd xz-utils cpio kmod \
    mmdebstrap busybox-static bind9-dnsutils bash-completion fish python3 \
    systemd systemd-container nix-bin xfsprogs >/dev/null
# banger-oci's tests: a loopback registry, pushes from OCI layouts,
# htpasswd auth, and the import bench's comparison (umoci).
apt-get install -y -qq --no-install-recommends \
    docker-registry skopeo umoci apache2-utils >/dev/null

# The golden image's build fetches mise with `npm pack` (a nodejs that
# bundles npm, e.g. NodeSource's, also does).
if ! command -v npm >/dev/null; then
    apt-get install -y -qq --no-install-recommends npm >/dev/null
fi

# banger-vm's SSH tests run a private sshd of their own; the package's system
# service is not wanted, so it is kept from starting and disabled.
if [ ! -x /usr/sbin/sshd ]; then
    added_policy=0
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod 0755 /usr/sbin/policy-rc.d
        added_policy=1
    fi
    apt-get install -y -qq --no-install-recommends openssh-server >/dev/null
    if [ "$added_policy" = 1 ]; then rm -f /usr/sbin/policy-rc.d; fi
    systemctl disable --now ssh.service ssh.socket >/dev/null 2>&1 || true
fi

if ! command -v cargo >/dev/null 2>&1 && [ ! -x "$HOME/.cargo/bin/cargo" ]; then
    echo "deps: installing the Rust toolchain with rustup"
    curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal
fi
export PATH="$HOME/.cargo/bin:$PATH"
for component in rustfmt clippy; do
    if ! rustup component list --installed 2>/dev/null | grep -q "^$component"; then
        rustup component add "$component"
    fi
done
echo "deps: ok"
