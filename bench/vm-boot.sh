#!/usr/bin/env bash
# banger's VM layer, measured (results: bench/RESULTS.md, section "VMs"):
#
# 1. boot: `banger vm create` until it returns (the guest answers SSH with its
#    pinned key) versus the raw QEMU command of that same VM (same kernel,
#    initrd, command line, devices; a fresh clone of the same image and a
#    fresh work disk) booted by hand to SSH-ready, side by side in each round;
#    plus `banger vm start` of the stopped VM (a second boot);
# 2. `banger vm list` and `GET /v1/vms` latency with RECORDS VM records;
# 3. bangerd's memory (RSS) idle and with N_VMS VMs running.
#
# Runs as root inside a network namespace of its own with temp HOME/XDG dirs;
# everything (daemon, QEMUs, namespace, files) is removed on exit.
#
# Environment: PROFILE (release|debug, default release; built if missing),
# ROUNDS (3), RECORDS (100), N_VMS (10), BANGER_TEST_STORE (a banger state dir
# with images/ and kernels/, default $XDG_STATE_HOME/banger), BANGER_TEST_IMAGE
# (debian-bookworm-minimal).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
PROFILE=${PROFILE:-release}
ROUNDS=${ROUNDS:-3}
RECORDS=${RECORDS:-100}
N_VMS=${N_VMS:-10}
STORE=${BANGER_TEST_STORE:-${XDG_STATE_HOME:-$HOME/.local/state}/banger}
IMAGE=${BANGER_TEST_IMAGE:-debian-bookworm-minimal}
FIXTURES=$ROOT/images/files/rootfs

[ "$(id -u)" = 0 ] || { echo "vm-boot.sh: run as root (network namespace, taps)" >&2; exit 1; }
for tool in jq debugfs mkfs.ext4 qemu-system-x86_64 ssh curl python3; do
    command -v "$tool" >/dev/null || { echo "vm-boot.sh: $tool is missing" >&2; exit 1; }
done
[ -f "$STORE/images/$IMAGE/manifest.json" ] || {
    echo "vm-boot.sh: image $IMAGE is not installed in $STORE (banger image build $IMAGE, or set BANGER_TEST_STORE)" >&2
    exit 1
}

BIN=$ROOT/target/$PROFILE
flag=; [ "$PROFILE" = release ] && flag=--release
cargo build $flag -p bangerd -p banger-cli -p bangerd-root -p banger-vsock-agent >&2

W=$(mktemp -d /tmp/banger-bench.XXXXXX)
NS=bbench-$$
DAEMON=
cleanup() {
    set +e
    [ -n "$DAEMON" ] && kill -9 "$DAEMON" 2>/dev/null
    for p in $(pgrep -f "qemu-system.*$W"); do kill -9 "$p"; done
    ip netns del "$NS" 2>/dev/null
    rm -rf "$W"
}
trap cleanup EXIT

now() { date +%s.%N; }
secs() { python3 -c "print(f'{$2 - $1:.2f}')"; }
log() { printf '%s\n' "$*" >&2; }

# --- the image, with the guest boot files when it lacks them (images built
# before the recipes installed them; see docs/image-catalog.md) ------------
KERNEL=$(jq -r .kernel_ref "$STORE/images/$IMAGE/manifest.json")
mkdir -p "$W/store/images/$IMAGE" "$W/state/banger/images" "$W/state/banger/kernels"
cp "$STORE/images/$IMAGE/manifest.json" "$W/store/images/$IMAGE/"
ROOTFS=$W/store/images/$IMAGE/rootfs.ext4
cp --sparse=always --reflink=auto "$STORE/images/$IMAGE/rootfs.ext4" "$ROOTFS"
cmds=$W/prepare.debugfs
: >"$cmds"
if ! for u in $(debugfs -R 'ls /etc/systemd/system' "$ROOTFS" 2>/dev/null | tr -s ' ' '\n' | grep '\.service$'); do
        debugfs -R "cat /etc/systemd/system/$u" "$ROOTFS" 2>/dev/null; done | grep -q /run/banger/banger-vsock-agent; then
    {
        echo "rm /etc/fstab"
        echo "write $FIXTURES/fstab /etc/fstab"
        echo "write $FIXTURES/banger-guest-load /usr/local/lib/banger/guest-load"
        for u in banger-guest-apply.service banger-guest-agent.service; do
            echo "write $FIXTURES/$u /etc/systemd/system/$u"
            echo "symlink /etc/systemd/system/multi-user.target.wants/$u /etc/systemd/system/$u"
        done
    } >>"$cmds"
fi
init=$(debugfs -R 'stat /usr/sbin/init' "$ROOTFS" 2>/dev/null | sed -n 's/.*Fast link dest: "\/\(.*\)"/\1/p')
[ -n "$init" ] && printf 'rm /usr/sbin/init\nsymlink /usr/sbin/init ../%s\n' "$init" >>"$cmds"
[ -s "$cmds" ] && debugfs -w -f "$cmds" "$ROOTFS" >/dev/null 2>&1
ln -s "$W/store/images/$IMAGE" "$W/state/banger/images/$IMAGE"
ln -s "$STORE/kernels/$KERNEL" "$W/state/banger/kernels/$KERNEL"

# A tiny fake image for the list benchmark's records (--no-start only).
mkdir -p "$W/state/banger/images/bench-tiny" "$W/state/banger/kernels/bench-tiny-kernel"
truncate -s 32M "$W/state/banger/images/bench-tiny/rootfs.ext4"
zero=$(printf '0%.0s' $(seq 64))
cat >"$W/state/banger/images/bench-tiny/manifest.json" <<EOF
{"format_version":1,"kind":"image","name":"bench-tiny","version":"1","arch":"x86_64","created":0,"recipe_hash":null,"kernel_ref":"bench-tiny-kernel","artifacts":[{"name":"rootfs.ext4","type":"file","size":33554432,"sha256":"$zero"}]}
EOF
echo unused >"$W/state/banger/kernels/bench-tiny-kernel/vmlinux"
cat >"$W/state/banger/kernels/bench-tiny-kernel/manifest.json" <<EOF
{"format_version":1,"kind":"kernel","name":"bench-tiny-kernel","version":"1","arch":"x86_64","created":0,"recipe_hash":null,"kernel_release":"0","artifacts":[{"name":"vmlinux","type":"file","size":7,"sha256":"$zero"}]}
EOF

# --- environment and daemon ------------------------------------------------
mkdir -p "$W/home" "$W/config/banger" "$W/cache" "$W/run"
cat >"$W/config/banger/config.toml" <<EOF
default_image_name = "$IMAGE"
[vm_defaults]
vcpu = 2
memory_mib = 1024
disk_size = "1G"
EOF
export HOME=$W/home XDG_CONFIG_HOME=$W/config XDG_STATE_HOME=$W/state XDG_CACHE_HOME=$W/cache \
    XDG_RUNTIME_DIR=$W/run BANGER_INSTALL_FILE=$W/no-install.toml \
    BANGERD_ROOT_BIN=$BIN/bangerd-root BANGERD_BIN=$BIN/bangerd BANGER_AGENT_BIN=$BIN/banger-vsock-agent
unset BANGER_CONFIG NOTIFY_SOCKET JOURNAL_STREAM
ip netns add "$NS"
ip -n "$NS" link set lo up
ns() { ip netns exec "$NS" "$@"; }
banger() { ns "$BIN/banger" "$@"; }
# Not through `ns`: $! must be bangerd itself (ip netns exec execs it).
ip netns exec "$NS" "$BIN/bangerd" </dev/null >/dev/null 2>&1 &
DAEMON=$!
SOCK=$W/run/banger/bangerd.sock
for _ in $(seq 100); do curl -sf --unix-socket "$SOCK" http://x/v1/status >/dev/null && break; sleep 0.1; done
STATE=$W/state/banger
KEY=$HOME/.local/state/banger/ssh/id_ed25519
KNOWN=$STATE/ssh/known_hosts

BOOT_LIMIT=240 # seconds, as bangerd's own boot timeout
ssh_ready() { # IP START: wait (tightly) until SSH with the pinned key works; 1 after BOOT_LIMIT
    until ns timeout 0.3 bash -c "</dev/tcp/$1/22" 2>/dev/null; do
        python3 -c "import sys,time; sys.exit(time.time() - $2 > $BOOT_LIMIT)" || return 1
        sleep 0.1
    done
    PORT_OPEN=$(now)
    until ns ssh -i "$KEY" -o IdentitiesOnly=yes -o BatchMode=yes -o ConnectTimeout=2 \
        -o UserKnownHostsFile="$KNOWN" -o GlobalKnownHostsFile=/dev/null \
        -o StrictHostKeyChecking=yes -o LogLevel=ERROR "root@$1" true 2>/dev/null; do
        python3 -c "import sys,time; sys.exit(time.time() - $2 > $BOOT_LIMIT)" || return 1
        sleep 0.1
    done
}

# --- 1. boot ---------------------------------------------------------------
phases=()
printf '\n## boot to SSH-ready (%s rounds, %s, 2 vCPU, 1 GiB)\n\n' "$ROUNDS" "$(ns "$BIN/bangerd" --version)"
printf '| round | banger vm create | raw QEMU, same VM (port 22 open) | overhead | banger vm start (2nd boot) |\n|---|---|---|---|---|\n'
for i in $(seq "$ROUNDS"); do
    name=b$i
    t0=$(now); tc0=$t0
    # Each progress line stamped with the time it arrived, for the breakdown.
    if ! banger vm create --name "$name" 2>&1 >/dev/null |
        while IFS= read -r line; do printf '%s %s\n' "$(now)" "$line"; done >"$W/create$i.log"; then
        printf '| %s | failed: %s |\n' "$i" "$(grep -m1 error: "$W/create$i.log" | cut -c1-200)"
        continue
    fi
    t1=$(now)
    create=$(secs "$t0" "$t1")
    vm=$(banger vm show --json "$name")
    id=$(jq -r .id <<<"$vm"); ip=$(jq -r .ip <<<"$vm"); pid=$(jq -r .vmm_pid <<<"$vm")
    tap=$(jq -r .tap <<<"$vm")
    mapfile -d '' argv </proc/"$pid"/cmdline
    vmdir=$STATE/vms/$id; rundir=$W/run/banger/vms/$id
    raw=$W/raw$i; mkdir -p "$raw/run"
    cp "$vmdir/config.ext4" "$raw/config.ext4"
    [ -f "$rundir/initrd.padded" ] && cp "$rundir/initrd.padded" "$raw/run/initrd.padded"
    banger vm stop "$name" >/dev/null 2>&1

    # The raw boot: the same argv with the raw copies, a fresh root clone and
    # work disk, and a tap of its own on the same bridge.
    cp --sparse=always "$ROOTFS" "$raw/root.ext4"
    truncate -s 1G "$raw/work.ext4"
    mkfs.ext4 -q -F -L banger-work -E root_owner=0:0 -m 0 "$raw/work.ext4"
    ns ip tuntap add banger-traw mode tap
    ns ip link set banger-traw master banger0 up
    args=()
    for a in "${argv[@]:1}"; do
        a=${a//$vmdir/$raw}; a=${a//$rundir/$raw\/run}; a=${a//ifname=$tap,/ifname=banger-traw,}
        args+=("$a")
    done
    t0=$(now); ns "${argv[0]}" "${args[@]}"
    if ssh_ready "$ip" "$t0"; then
        t1=$(now); rawt=$(secs "$t0" "$t1"); rawport=$(secs "$t0" "$PORT_OPEN")
    else
        rawt=hung; rawport=-
    fi
    kill -9 "$(cat "$raw/run/qemu.pid")"
    ns ip link del banger-traw

    t0=$(now)
    if banger vm start "$name" >/dev/null 2>&1; then t1=$(now); start=$(secs "$t0" "$t1"); else start=failed; fi
    banger vm delete --force "$name" >/dev/null
    rm -rf "$raw"
    over=$(python3 -c "print(f'{($create / $rawt - 1) * 100:+.0f}%')" 2>/dev/null || echo -)
    printf '| %s | %s s | %s s (%s s) | %s | %s s |\n' "$i" "$create" "$rawt" "$rawport" "$over" "$start"
    # When each phase of the create began, in seconds after the command started.
    phases+=("| $i | $(awk -v t0="$tc0" '{ split($2, p, "]"); sub(/^\[/, "", p[1]);
        if ($2 ~ /^\[/ && !(p[1] in seen)) { seen[p[1]] = 1; printf "%s %.2f, ", p[1], $1 - t0 } }' \
        "$W/create$i.log" | sed 's/, $//') |")
done
printf '\nPhases of `vm create` (seconds after the command started):\n\n| round | phase start times |\n|---|---|\n'
printf '%s\n' "${phases[@]}"

# --- 2. list latency -------------------------------------------------------
for i in $(seq "$RECORDS"); do
    banger vm create --image bench-tiny --name "r$i" --disk-size 16M --no-start >/dev/null 2>&1
done
n=$(banger vm list --json | jq '.vms | length')
stats() { python3 -c "import sys,statistics as s; v=sorted(float(x)*1000 for x in sys.stdin); print(f'median {s.median(v):.1f} ms, p90 {v[int(len(v)*0.9)-1]:.1f} ms, max {v[-1]:.1f} ms')"; }
api=$(for _ in $(seq 50); do curl -s -o /dev/null -w '%{time_total}\n' --unix-socket "$SOCK" http://x/v1/vms; done | stats)
cli=$(for _ in $(seq 20); do t0=$(now); "$BIN/banger" vm list >/dev/null; t1=$(now); python3 -c "print($t1 - $t0)"; done | stats)
printf '\n## list latency with %s VM records\n\n' "$n"
printf -- '- `GET /v1/vms` (curl, 50 runs): %s\n' "$api"
printf -- '- `banger vm list` (the whole CLI process: start, connect, request, table; 20 runs): %s\n' "$cli"
for i in $(seq "$RECORDS"); do banger vm delete "r$i" >/dev/null; done

# --- 3. memory -------------------------------------------------------------
rss() { awk '/^VmRSS/ {print $2}' /proc/"$DAEMON"/status; }
idle=$(rss)
for i in $(seq "$N_VMS"); do
    banger vm create --name "m$i" --vcpu 1 --memory 512M >/dev/null 2>&1 || log "create m$i failed"
done
running=$(banger vm list --json | jq '[.vms[] | select(.state == "running")] | length')
busy=$(rss)
banger vm show "m1" >/dev/null
after_show=$(rss)
hwm=$(awk '/^VmHWM/ {print $2}' /proc/"$DAEMON"/status)
printf '\n## bangerd memory\n\n'
printf -- '- idle (after the list benchmark): %s MiB RSS\n' "$((idle / 1024))"
printf -- '- with %s VMs running: %s MiB RSS (%s MiB after a `vm show`), peak %s MiB\n' \
    "$running" "$((busy / 1024))" "$((after_show / 1024))" "$((hwm / 1024))"
for i in $(seq "$N_VMS"); do banger vm delete --force "m$i" >/dev/null; done
