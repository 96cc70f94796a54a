#!/usr/bin/env bash
# From a fresh Debian 12 clone to banger's main job: install dependencies,
# build, check the host, then boot a VM that runs a command.
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

if "$bin/banger" vm run --help >/dev/null 2>&1; then
    echo "==> banger vm run -- uname -a"
    exec "$bin/banger" vm run --rm -- uname -a
fi
echo "quickstart: this build has no 'vm run' yet (VM lifecycle not landed); stopped after doctor"
