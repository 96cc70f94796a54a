#!/usr/bin/env bash
# Cold boot of the images, seen from inside the guest (results: bench/RESULTS.md,
# section "Cold boot"): for each image, ROUNDS times `banger vm run` of a bare
# VM (2 vCPUs, 1 GiB) that prints the guest's `systemd-analyze`, its critical
# chain and the slowest units; banger's own phase timings ("boot", "SSH
# ready") come from `vm show --json`. Compare with the raw minimal boot
# (8.6 s to SSH, kernel 2.6 s + userspace 5.6 s) in ../shared/DESIGN.md.
#
# Runs as root inside a network namespace of its own with temp HOME/XDG dirs;
# everything (daemon, QEMUs, namespace, files) is removed on exit.
#
# Environment: PROFILE (debug|release, default debug; built if missing),
# ROUNDS (3), IMAGES ("debian-bookworm-minimal debian-bookworm"),
# BANGER_TEST_STORE (a banger state dir with images/ and kernels/; only read),
# DETAIL (1: print critical chain and blame of the first round of each image).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
PROFILE=${PROFILE:-debug}
ROUNDS=${ROUNDS:-3}
IMAGES=${IMAGES:-debian-bookworm-minimal debian-bookworm}
DETAIL=${DETAIL:-1}
STORE=${BANGER_TEST_STORE:-${XDG_STATE_HOME:-$HOME/.local/state}/banger}

[ "$(id -u)" = 0 ] || { echo "cold-boot.sh: run as root (network namespace, taps)" >&2; exit 1; }
for tool in jq qemu-system-x86_64 curl python3; do
    command -v "$tool" >/dev/null || { echo "cold-boot.sh: $tool is missing" >&2; exit 1; }
done
for image in $IMAGES; do
    [ -f "$STORE/images/$image/manifest.json" ] || {
        echo "cold-boot.sh: image $image is not installed in $STORE (scripts/test-store.sh DIR, or set BANGER_TEST_STORE)" >&2
        exit 1
    }
done

BIN=$ROOT/target/$PROFILE
flag=; [ "$PROFILE" = release ] && flag=--release
cargo build $flag -p bangerd -p banger-cli -p bangerd-root -p banger-vsock-agent >&2

W=$(mktemp -d /tmp/banger-coldboot.XXXXXX)
NS=bcold-$$
DAEMON=
cleanup() {
    set +e
    [ -n "$DAEMON" ] && kill -9 "$DAEMON" 2>/dev/null
    for p in $(pgrep -f "qemu-system.*$W"); do kill -9 "$p"; done
    ip netns del "$NS" 2>/dev/null
    rm -rf "$W"
}
trap cleanup EXIT

# The store is only read: the daemon gets copies of the images (sparse) and
# links to the kernels.
mkdir -p "$W/state/banger/images" "$W/state/banger/kernels"
for image in $IMAGES; do
    mkdir -p "$W/state/banger/images/$image"
    cp "$STORE/images/$image/manifest.json" "$W/state/banger/images/$image/"
    cp --sparse=always --reflink=auto "$STORE/images/$image/rootfs.ext4" "$W/state/banger/images/$image/"
    kernel=$(jq -r .kernel_ref "$STORE/images/$image/manifest.json")
    [ -e "$W/state/banger/kernels/$kernel" ] || ln -s "$STORE/kernels/$kernel" "$W/state/banger/kernels/$kernel"
done

mkdir -p "$W/home" "$W/config/banger" "$W/cache" "$W/run"
cat >"$W/config/banger/config.toml" <<EOC
[vm_defaults]
vcpu = 2
memory_mib = 1024
disk_size = "1G"
EOC
export HOME=$W/home XDG_CONFIG_HOME=$W/config XDG_STATE_HOME=$W/state XDG_CACHE_HOME=$W/cache \
    XDG_RUNTIME_DIR=$W/run BANGER_INSTALL_FILE=$W/no-install.toml \
    BANGERD_ROOT_BIN=$BIN/bangerd-root BANGERD_BIN=$BIN/bangerd BANGER_AGENT_BIN=$BIN/banger-vsock-agent
unset BANGER_CONFIG NOTIFY_SOCKET JOURNAL_STREAM
ip netns add "$NS"
ip -n "$NS" link set lo up
banger() { ip netns exec "$NS" "$BIN/banger" "$@"; }
# Not through a function: $! must be bangerd itself (ip netns exec execs it).
ip netns exec "$NS" "$BIN/bangerd" </dev/null >/dev/null 2>&1 &
DAEMON=$!
for _ in $(seq 100); do
    curl -sf --unix-socket "$W/run/banger/bangerd.sock" http://x/v1/status >/dev/null && break
    sleep 0.1
done

# What the guest prints: one summary line, then (first round) the details.
probe='systemd-analyze time | head -1; echo "default target: $(systemctl get-default)";
echo "running units: $(systemctl list-units --type=service --state=running --no-legend | wc -l)";
echo "gettys: $(systemctl list-units --no-legend "*getty@*" | awk "{print \$1}" | tr "\n" " ")";
echo "failed: $(systemctl list-units --failed --no-legend | awk "{print \$2}" | tr "\n" " ")";
echo "--- critical chain"; systemd-analyze critical-chain --no-pager 2>&1 | tail -n +4;
echo "--- blame"; systemd-analyze blame --no-pager | head -12'

printf '\n## cold boot (%s rounds, %s, 2 vCPU, 1 GiB, store %s)\n' "$ROUNDS" "$(ip netns exec "$NS" "$BIN/bangerd" --version)" "$STORE"
for image in $IMAGES; do
    printf '\n### %s\n\n| round | time to SSH (boot + SSH ready) | guest systemd-analyze | running services | gettys |\n|---|---|---|---|---|\n' "$image"
    details=
    for i in $(seq "$ROUNDS"); do
        name=c$i-${image//[^a-z0-9]/}
        name=${name:0:30}
        if ! banger vm run --image "$image" --name "$name" -- sh -c "$probe" >"$W/out" 2>"$W/err"; then
            printf '| %s | failed: %s |\n' "$i" "$(grep -m1 -i error "$W/err" | cut -c1-200)"
            banger vm delete --force "$name" >/dev/null 2>&1 || true
            continue
        fi
        phases=$(banger vm show --json "$name" | jq -r '.details.timings.phases // [] | map("\(.phase)=\(.millis)") | join(" ")')
        ms() { sed -n "s/.*\\b$1=\\([0-9]*\\).*/\\1/p" <<<"$phases"; }
        boot=$(ms boot) ready=$(ms 'SSH ready')
        to_ssh=$(python3 -c "print(f'{($boot + $ready) / 1000:.1f} s ({$boot / 1000:.1f} + {$ready / 1000:.1f})')")
        analyze=$(head -1 "$W/out" | sed 's/^Startup finished in //')
        units=$(sed -n 's/^running units: //p' "$W/out")
        gettys=$(sed -n 's/^gettys: //p' "$W/out")
        printf '| %s | %s | %s | %s | %s |\n' "$i" "$to_ssh" "$analyze" "$units" "$gettys"
        [ -z "$details" ] && details=$(tail -n +2 "$W/out")
        banger vm delete --force "$name" >/dev/null
    done
    if [ "$DETAIL" = 1 ] && [ -n "$details" ]; then
        printf '\nFirst round, inside the guest:\n\n```\n%s\n```\n' "$details"
    fi
done
