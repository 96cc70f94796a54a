#!/usr/bin/env bash
# From a fresh Debian 12 clone to banger's main job: install dependencies,
# build, check the host, then boot a throwaway VM that runs a command
# (`banger vm run --rm -- uname -a`; see docs/vm-run.md).
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/deps.sh
export PATH="$HOME/.cargo/bin:$PATH"

echo "==> building banger (release)"
cargo build --release --locked --bins
bin="$PWD/target/release"

echo "==> banger doctor"
"$bin/banger" doctor || {
    echo "quickstart: doctor found a required check failing; fix it and run again" >&2
    exit 1
}

# `vm run` pulls a missing image from the catalog, but the shipped catalog
# has no published bundles yet: build the default image (and its kernel)
# from the recipes in images/ once (a few minutes; needs the Debian mirror).
image=debian-bookworm
if ! "$bin/banger" image show "$image" >/dev/null 2>&1; then
    echo "==> banger image build $image"
    "$bin/banger" image build "$image"
fi

# --rm deletes the VM afterwards and the command's exit status is ours.
echo "==> banger vm run --rm -- uname -a"
exec "$bin/banger" vm run --rm -- uname -a
