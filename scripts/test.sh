#!/usr/bin/env bash
# The whole test suite, exactly as CI runs it (.ci/run calls this script).
# Runs as root on Debian 12: privileged tests (network namespaces, taps,
# nftables, QEMU guests) are required here, not skipped.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "${BANGER_SKIP_DEPS:-0}" != 1 ]; then
    bash scripts/deps.sh
fi
export PATH="$HOME/.cargo/bin:$PATH"
# Every test gate (crates/banger-test-support) must pass: a missing tool,
# privilege or file fails the test instead of skipping it. That includes
# QEMU for banger-vmm's tests (what BANGER_REQUIRE_QEMU asks for alone).
export BANGER_REQUIRE_PRIVILEGED=1
# Host features this CI host cannot have, which their tests may skip (they
# say so on stderr): no vsock loopback transport (vsock_loopback) here.
export BANGER_HOST_LACKS=vsock-loopback
export CARGO_TERM_COLOR=never

step() { printf '\n==> %s\n' "$*"; }

step "cargo fmt --check"
cargo fmt --all --check

step "cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "nix-instantiate --parse"
nix_files=$(git ls-files '*.nix')
if [ -n "$nix_files" ]; then
    for f in $nix_files; do nix-instantiate --parse "$f" >/dev/null; done
    echo "$(echo "$nix_files" | wc -l) .nix files parse"
fi

step "test bundles: kernel generic-6.12 + images debian-bookworm-minimal, debian-bookworm"
# Built from images/ recipes, cached by recipe hash under ~/.cache/banger.
store="$PWD/target/test-store"
bash scripts/test-store.sh "$store"
export BANGER_BOOT_TESTS=1 BANGER_BUILD_TESTS=1
export BANGER_TEST_STORE="$store"
export BANGER_BOOT_KERNEL_DIR="$store/kernels/generic-6.12"
export BANGER_BOOT_ROOTFS="$store/images/debian-bookworm-minimal/rootfs.ext4"

step "release side of the catalog: kernel generic-6.12 built twice, written to a catalog copy"
rel=$(mktemp -d)
trap 'rm -rf "$rel"' EXIT
cp images/catalog.toml "$rel/catalog.toml"
bash scripts/release-catalog.sh "$rel/out" --catalog "$rel/catalog.toml" \
    --url-prefix "https://bundles.example/ci/" kernel:generic-6.12
python3 - "$rel" <<'PY'
import hashlib, os, sys, tomllib
rel = sys.argv[1]
with open(os.path.join(rel, "catalog.toml"), "rb") as f:
    entry = next(k for k in tomllib.load(f)["kernel"] if k["name"] == "generic-6.12")
name = entry["url"].removeprefix("https://bundles.example/ci/")
assert name != entry["url"], entry
path = os.path.join(rel, "out", name)
data = open(path, "rb").read()
assert entry["size"] == len(data), (entry, len(data))
assert entry["sha256"] == hashlib.sha256(data).hexdigest(), entry
assert name == "generic-6.12-" + entry["sha256"][:16] + ".tar.zst", name
print(f"release: catalog copy names {name}, {len(data)} bytes, sha256 verified")
PY
git diff --quiet -- images/catalog.toml || { echo "release script edited the real catalog" >&2; exit 1; }

step "Debian 12's QEMU 7.2 (extracted, not installed) for the old-QEMU boot test"
BANGER_BOOT_OLD_QEMU=$(bash scripts/qemu-bookworm.sh)
export BANGER_BOOT_OLD_QEMU

step "cargo test"
cargo build --workspace --bins --locked
cargo test --workspace --locked --no-fail-fast
