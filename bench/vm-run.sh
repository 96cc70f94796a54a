#!/usr/bin/env bash
# `banger vm run`, measured (results: bench/RESULTS.md, section "vm run"):
#
# 1. `banger vm run --name rI -- true` wall time (create, boot, SSH, the
#    command, CLI start to exit) versus the raw boot-to-SSH of the same VM:
#    the same QEMU argv (kernel, initrd, command line, devices) with a fresh
#    clone of the same image and a fresh work disk, timed until `ssh true`
#    with the pinned key succeeds; side by side in each round;
# 2. the workspace copy of a FILES-file / MB-MiB repository: `vm run`'s own
#    "workspace copy" phase (tar stream + blob-less git pack) versus
#    `git ls-files -z | tar --null -T - -c | ssh ... tar -x` into the same
#    guest.
#
# Runs as root in a network namespace of its own with temp HOME/XDG dirs;
# everything is removed on exit. Environment: PROFILE (release|debug,
# default release), ROUNDS (2), FILES (10000), MB (200), WORKSPACE (1; 0
# skips part 2), BANGER_TEST_STORE,
# BANGER_TEST_IMAGE (debian-bookworm-minimal).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
PROFILE=${PROFILE:-release}
ROUNDS=${ROUNDS:-2}
FILES=${FILES:-10000}
MB=${MB:-200}
STORE=${BANGER_TEST_STORE:-${XDG_STATE_HOME:-$HOME/.local/state}/banger}
IMAGE=${BANGER_TEST_IMAGE:-debian-bookworm-minimal}
FIXTURES=$ROOT/images/files/rootfs

[ "$(id -u)" = 0 ] || { echo "vm-run.sh: run as root (network namespace, taps)" >&2; exit 1; }
for tool in jq debugfs mkfs.ext4 qemu-system-x86_64 ssh curl python3 git tar; do
    command -v "$tool" >/dev/null || { echo "vm-run.sh: $tool is missing" >&2; exit 1; }
done
[ -f "$STORE/images/$IMAGE/manifest.json" ] || {
    echo "vm-run.sh: image $IMAGE is not installed in $STORE (set BANGER_TEST_STORE)" >&2
    exit 1
}
BIN=$ROOT/target/$PROFILE
flag=; [ "$PROFILE" = release ] && flag=--release
cargo build $flag -p bangerd -p banger-cli -p bangerd-root -p banger-vsock-agent >&2

W=$(mktemp -d /tmp/banger-bench-run.XXXXXX)
NS=brun-$$
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

# The image, with the guest boot files added when it lacks them (as
# bench/vm-boot.sh and the VM tests' harness do).
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
        echo "rm /etc/fstab"; echo "write $FIXTURES/fstab /etc/fstab"
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

mkdir -p "$W/home" "$W/config/banger" "$W/cache" "$W/run"
cat >"$W/config/banger/config.toml" <<EOF
default_image_name = "$IMAGE"
[vm_defaults]
vcpu = 2
memory_mib = 1024
disk_size = "2G"
EOF
export HOME=$W/home XDG_CONFIG_HOME=$W/config XDG_STATE_HOME=$W/state XDG_CACHE_HOME=$W/cache \
    XDG_RUNTIME_DIR=$W/run BANGER_INSTALL_FILE=$W/no-install.toml \
    BANGERD_ROOT_BIN=$BIN/bangerd-root BANGERD_BIN=$BIN/bangerd BANGER_AGENT_BIN=$BIN/banger-vsock-agent
unset BANGER_CONFIG NOTIFY_SOCKET JOURNAL_STREAM
ip netns add "$NS"
ip -n "$NS" link set lo up
ns() { ip netns exec "$NS" "$@"; }
banger() { ns "$BIN/banger" "$@"; }
ip netns exec "$NS" "$BIN/bangerd" </dev/null >/dev/null 2>&1 &
DAEMON=$!
for _ in $(seq 100); do curl -sf --unix-socket "$W/run/banger/bangerd.sock" http://x/v1/status >/dev/null && break; sleep 0.1; done
STATE=$W/state/banger
KEY=$HOME/.local/state/banger/ssh/id_ed25519
KNOWN=$STATE/ssh/known_hosts
SSH=(-i "$KEY" -o IdentitiesOnly=yes -o BatchMode=yes -o UserKnownHostsFile="$KNOWN"
    -o GlobalKnownHostsFile=/dev/null -o StrictHostKeyChecking=yes -o LogLevel=ERROR)

printf '\nload before: %s\n' "$(cut -d' ' -f1-3 /proc/loadavg)"

# --- 1. vm run -- true versus the raw boot to SSH ---------------------------
printf '\n## `vm run -- true` vs raw boot to SSH (%s rounds, 2 vCPU, 1 GiB)\n\n' "$ROUNDS"
printf '| round | banger vm run -- true | raw QEMU to `ssh true` | overhead |\n|---|---|---|---|\n'
for i in $(seq "$ROUNDS"); do
    name=r$i
    t0=$(now)
    if ! banger vm run --name "$name" -- true >/dev/null 2>"$W/run$i.log"; then
        printf '| %s | failed: %s |\n' "$i" "$(grep -m1 error: "$W/run$i.log" | cut -c1-200)"
        continue
    fi
    t1=$(now); run=$(secs "$t0" "$t1")
    vm=$(banger vm show --json "$name")
    id=$(jq -r .id <<<"$vm"); ip=$(jq -r .ip <<<"$vm"); pid=$(jq -r .vmm_pid <<<"$vm"); tap=$(jq -r .tap <<<"$vm")
    mapfile -d '' argv </proc/"$pid"/cmdline
    vmdir=$STATE/vms/$id; rundir=$W/run/banger/vms/$id
    raw=$W/raw$i; mkdir -p "$raw/run"
    cp "$vmdir/config.ext4" "$raw/config.ext4"
    [ -f "$rundir/initrd.padded" ] && cp "$rundir/initrd.padded" "$raw/run/initrd.padded"
    banger vm stop --force "$name" >/dev/null 2>&1
    cp --sparse=always "$ROOTFS" "$raw/root.ext4"
    truncate -s 2G "$raw/work.ext4"
    mkfs.ext4 -q -F -L banger-work -E root_owner=0:0 -m 0 "$raw/work.ext4"
    ns ip tuntap add banger-traw mode tap
    ns ip link set banger-traw master banger0 up
    args=()
    for a in "${argv[@]:1}"; do
        a=${a//$vmdir/$raw}; a=${a//$rundir/$raw\/run}; a=${a//ifname=$tap,/ifname=banger-traw,}
        args+=("$a")
    done
    t0=$(now); ns "${argv[0]}" "${args[@]}"
    rawt=hung
    # Port 22 first, with short connects (as bench/vm-boot.sh and bangerd
    # do): an ssh to a guest whose NIC is not up yet waits out ARP.
    while python3 -c "import sys,time; sys.exit(time.time() - $t0 > 240)"; do
        ns timeout 0.3 bash -c "</dev/tcp/$ip/22" 2>/dev/null || { sleep 0.1; continue; }
        if ns ssh "${SSH[@]}" -o ConnectTimeout=2 "root@$ip" true 2>/dev/null; then
            rawt=$(secs "$t0" "$(now)"); break
        fi
        sleep 0.1
    done
    kill -9 "$(cat "$raw/run/qemu.pid")" 2>/dev/null || true
    ns ip link del banger-traw
    banger vm delete --force "$name" >/dev/null
    rm -rf "$raw"
    over=$(python3 -c "print(f'{($run / $rawt - 1) * 100:+.0f}%')" 2>/dev/null || echo -)
    printf '| %s | %s s | %s s | %s |\n' "$i" "$run" "$rawt" "$over"
done

# --- 2. workspace copy ------------------------------------------------------
[ "${WORKSPACE:-1}" = 1 ] || exit 0
repo=$W/repo
mkdir -p "$repo"
python3 - "$repo" "$FILES" "$MB" <<'EOF'
import os, sys
root, files, mb = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
size = mb * 1024 * 1024 // files
for i in range(files):
    d = os.path.join(root, f"d{i // 100:03d}")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, f"f{i:05d}.bin"), "wb") as f:
        f.write(os.urandom(size))
EOF
git -C "$repo" init -q
git -C "$repo" add -A
git -C "$repo" -c user.name=b -c user.email=b@example.org commit -qm files
repo_mb=$(du -sm --exclude=.git "$repo" | cut -f1)
git_mb=$(du -sm "$repo/.git" | cut -f1)
out=$(banger vm run --name ws --verbose "$repo" -- true 2>&1 >/dev/null) || { echo "$out" >&2; exit 1; }
copy=$(awk '/^workspace copy/ {print $3}' <<<"$out")
ip=$(banger vm show --json ws | jq -r .ip)
# vm run leaves a nice'd `git hash-object -w` running in the guest (it
# rebuilds the blobs of the copied files); the baseline must not share the
# guest's CPUs with it.
t0=$(now)
ns ssh "${SSH[@]}" "root@$ip" 'while pgrep -f "[g]it hash-object" >/dev/null; do sleep 1; done'
hashed=$(secs "$t0" "$(now)")
t0=$(now)
(cd "$repo" && git ls-files -z | tar --null -T - -c) |
    ns ssh "${SSH[@]}" "root@$ip" 'mkdir -p /root/base && tar -x -C /root/base'
t1=$(now); base=$(secs "$t0" "$t1")
count=$(ns ssh "${SSH[@]}" "root@$ip" 'find /root/repo -path /root/repo/.git -prune -o -type f -print | wc -l; find /root/base -type f | wc -l' | tr '\n' ' ')
banger vm delete --force ws >/dev/null
printf '\n## workspace copy: %s files, %s MiB in the working tree (.git %s MiB)\n\n' "$FILES" "$repo_mb" "$git_mb"
printf '| banger vm run (tar stream + blob-less git pack) | git ls-files \\| tar \\| ssh tar -x | files in guest (vm run, baseline) |\n|---|---|---|\n'
printf '| %s s | %s s | %s|\n' "$copy" "$base" "$count"
printf '\nThe background blob rebuild in the guest went on for %s s after vm run returned.\n' "$hashed"
printf '\nload after: %s\n' "$(cut -d' ' -f1-3 /proc/loadavg)"
