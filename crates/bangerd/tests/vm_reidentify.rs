//! The guest side of warm start (docs/warm-start.md, "Guest identity after
//! restore"), on a real guest booted under QEMU/TCG: the agent's
//! `prepare_snapshot` and `reidentify` make a running VM a second machine.
//!
//! One boot. The daemon is killed after `vm create` (the VMM lives on) so
//! the test owns the agent channel. Then:
//!
//! 1. `prepare_snapshot` refuses while a guest process uses /root, then
//!    unmounts the work disk from /root;
//! 2. `reidentify` to a second identity: new hostname, MAC, address,
//!    machine-id, host key, clock (two days ahead) and host entropy, with
//!    the work disk mounted again; a fresh ssh with only the new key pinned
//!    sees each item, the old key is refused, the old address is gone,
//!    and /root holds the file written before;
//! 3. the same request again changes nothing;
//! 4. with systemd-networkd stopped, a new address is set directly and
//!    networkd stays stopped;
//! 5. a request with a bad MAC is refused naming `mac`, and nothing changed.

mod common;
mod vm_harness;

use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use banger_agent_client::{AgentClient, AgentClientError};
use banger_wire::guest::{GuestIdentity, SshHostKey};
use vm_harness::{boot_tests, privileged, test_image, World};

const NEW_MAC: &str = "02:5a:5a:00:00:2a";
const NEW_MACHINE_ID: &str = "5a5a5a5a0123456789abcdef01234567";
const TWO_DAYS_NS: u64 = 2 * 86_400 * 1_000_000_000;

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

/// `ssh root@ip -- script` from the namespace with only `known_hosts`
/// trusted (strict checking); returns (success, stdout, stderr).
fn ssh(
    world: &World,
    key: &Path,
    known_hosts: &Path,
    ip: &str,
    script: &str,
) -> (bool, String, String) {
    let out = world
        .command("ssh")
        .args(["-F", "/dev/null", "-i"])
        .arg(key)
        .arg("-o")
        .arg(format!("UserKnownHostsFile={}", known_hosts.display()))
        .args([
            "-o",
            "GlobalKnownHostsFile=/dev/null",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            "BatchMode=yes",
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "ConnectTimeout=20",
            &format!("root@{ip}"),
            "--",
            script,
        ])
        .stdin(Stdio::null())
        .output()
        .expect("run ssh");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `KEY=value` lines of a guest script's output.
fn field<'a>(out: &'a str, key: &str) -> &'a str {
    out.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("no {key}= in:\n{out}"))
        .trim()
}

const PROBE: &str = "echo hostname=$(hostname); echo mac=$(cat /sys/class/net/eth0/address); \
     echo addr=$(ip -4 -o addr show dev eth0 | awk '{print $4}' | tr '\\n' ' '); \
     echo gw=$(ip route show default | awk '{print $3}'); \
     echo dns=$(awk '/^nameserver/{print $2}' /etc/resolv.conf | tr '\\n' ' '); \
     echo machine_id=$(cat /etc/machine-id); echo now=$(date +%s); \
     echo root_src=$(findmnt -n -o SOURCE /root); echo marker=$(cat /root/marker 2>&1); \
     echo etc_hostname=$(cat /etc/hostname)";

#[tokio::test(flavor = "multi_thread")]
async fn reidentify_makes_a_running_guest_another_vm() {
    let test = "reidentify_makes_a_running_guest_another_vm";
    if !privileged(test) || !boot_tests(test) {
        return;
    }
    let image = test_image();
    let mut world = World::new(&vm_harness::config(&image.name), Some(image)).await;
    world.banger_ok(&["vm", "create", "--name", "box"]);
    let vm = world.show("box");
    let old_ip = vm.ip.clone().expect("a running VM has an address");
    world.banger_ok(&[
        "vm",
        "ssh",
        "box",
        "--",
        "sh",
        "-c",
        "echo on-the-work-disk > /root/marker && sync",
    ]);
    let before = world.banger_ok(&["vm", "ssh", "box", "--", "sh", "-c", PROBE]);
    assert_eq!(field(&before, "marker"), "on-the-work-disk", "{before}");
    let old_machine_id = field(&before, "machine_id").to_owned();
    assert_ne!(old_machine_id, NEW_MACHINE_ID);
    let prefix: u8 = field(&before, "addr")
        .split('/')
        .nth(1)
        .and_then(|p| p.trim().parse().ok())
        .unwrap_or_else(|| panic!("no prefix in {before}"));
    let gateway: Ipv4Addr = field(&before, "gw").parse().unwrap();
    let dns = field(&before, "dns")
        .split_whitespace()
        .map(|a| a.parse().unwrap())
        .collect();
    // Another address of the same guest network (the host routes it).
    let old: Ipv4Addr = old_ip.parse().unwrap();
    let new_ip = Ipv4Addr::from(u32::from(old) + 3);
    assert_ne!(new_ip, gateway);

    // The test's own second identity: a new host key and the user's key.
    let tmp = tempfile::tempdir().unwrap();
    let host_key = tmp.path().join("host_key");
    let gen = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "", "-f"])
        .arg(&host_key)
        .status()
        .unwrap();
    assert!(gen.success());
    let new_public = std::fs::read_to_string(host_key.with_extension("pub"))
        .unwrap()
        .trim()
        .to_owned();
    let user_key = world.env.layout.home.join(banger_config::DEFAULT_SSH_KEY);
    let user_public = std::fs::read_to_string(user_key.with_extension("pub"))
        .unwrap()
        .trim()
        .to_owned();
    let vm_dir = world.env.layout.state_dir.join("vms").join(&vm.id);
    let old_public = std::fs::read_to_string(vm_dir.join("ssh_host_ed25519_key.pub"))
        .unwrap()
        .trim()
        .to_owned();
    let new_known = tmp.path().join("known_new");
    std::fs::write(&new_known, format!("{new_ip} {new_public}\n")).unwrap();
    let old_known = tmp.path().join("known_old");
    std::fs::write(&old_known, format!("{new_ip} {old_public}\n")).unwrap();

    let identity = |unix_time_ns: u64| GuestIdentity {
        vm_id: "5a5a5a5a5a5a5a5a".into(),
        hostname: "second".into(),
        mac: NEW_MAC.into(),
        address: new_ip,
        prefix_len: prefix,
        gateway,
        dns: Vec::clone(&dns),
        ssh_host_key: SshHostKey {
            private_openssh: std::fs::read_to_string(&host_key).unwrap(),
            public_openssh: new_public.clone(),
        },
        authorized_keys: vec![user_public.clone()],
        machine_id: NEW_MACHINE_ID.into(),
        unix_time_ns,
        entropy_hex: "c3".repeat(32) + &"5a".repeat(32),
        mount_work_disk: true,
    };

    // The test owns the agent channel from here on.
    world.kill_daemon();
    let socket = world
        .env
        .layout
        .runtime_dir
        .join("vms")
        .join(&vm.id)
        .join("agent.sock");
    let mut agent = AgentClient::connect_unix(&socket)
        .await
        .unwrap()
        .with_timeout(Duration::from_secs(180));

    // 1. Ready for a snapshot: the work disk is unmounted; not while a
    // process in the guest still uses /root (the snapshot would then hold
    // that disk's state).
    let old_at_old = tmp.path().join("known_old_at_old");
    std::fs::write(&old_at_old, format!("{old_ip} {old_public}\n")).unwrap();
    let (ok, _, err) = ssh(
        &world,
        &user_key,
        &old_at_old,
        &old_ip,
        "cd /root && { setsid sleep 600 </dev/null >/dev/null 2>&1 & echo $! > /run/busy.pid; }",
    );
    assert!(ok, "{err}");
    match agent.prepare_snapshot().await {
        Err(AgentClientError::Agent { message, .. }) => {
            assert!(message.contains("cannot unmount /root"), "{message}")
        }
        other => panic!("a busy /root was unmounted: {other:?}"),
    }
    let (ok, _, err) = ssh(
        &world,
        &user_key,
        &old_at_old,
        &old_ip,
        "p=$(cat /run/busy.pid); kill $p; while kill -0 $p 2>/dev/null; do :; done",
    );
    assert!(ok, "{err}");
    let unmounted = agent.prepare_snapshot().await.unwrap();
    assert!(
        unmounted
            .as_deref()
            .is_some_and(|d| d.starts_with("/dev/vd")),
        "{unmounted:?}"
    );
    assert_eq!(agent.prepare_snapshot().await.unwrap(), None, "second call");

    // 2. The second identity.
    let sent_ns = now_ns() + TWO_DAYS_NS;
    let started = std::time::Instant::now();
    let report = agent.reidentify(identity(sent_ns)).await.unwrap();
    // For the record (bench/ has the warm numbers), not an assertion.
    eprintln!(
        "reidentify took {:?}, in the guest {:?}",
        started.elapsed(),
        report.step_ms
    );
    for item in [
        "work_disk",
        "ssh_host_key",
        "hostname",
        "machine_id",
        "mac",
        "address",
    ] {
        assert!(
            report.changed.iter().any(|c| c == item),
            "{item}: {report:?}"
        );
    }
    assert_eq!(report.hostname, "second");
    assert_eq!(report.mac, NEW_MAC);
    assert_eq!(report.addresses, vec![format!("{new_ip}/{prefix}")]);
    assert_eq!(report.machine_id, NEW_MACHINE_ID);
    assert_eq!(report.entropy_bits_credited, 64 * 8);
    assert!(report.entropy_avail > 0, "{report:?}");
    assert!(
        report.clock_step_ms > 86_400_000,
        "the clock was not stepped forward: {report:?}"
    );
    assert!(report.work_disk.is_some(), "{report:?}");
    assert!(report.warnings.is_empty(), "{report:?}");

    let (ok, after, err) = ssh(&world, &user_key, &new_known, &new_ip.to_string(), PROBE);
    assert!(ok, "ssh with the new pinned key failed: {err}");
    assert_eq!(field(&after, "hostname"), "second");
    assert_eq!(field(&after, "etc_hostname"), "second");
    assert_eq!(field(&after, "mac"), NEW_MAC);
    assert_eq!(field(&after, "addr"), format!("{new_ip}/{prefix}"));
    assert_eq!(field(&after, "gw"), gateway.to_string());
    assert_eq!(field(&after, "machine_id"), NEW_MACHINE_ID);
    assert_eq!(field(&after, "marker"), "on-the-work-disk", "{after}");
    assert!(field(&after, "root_src").starts_with("/dev/vd"), "{after}");
    let guest_now: u64 = field(&after, "now").parse().unwrap();
    let expected = sent_ns / 1_000_000_000;
    assert!(
        guest_now + 5 >= expected && guest_now <= expected + 600,
        "guest clock {guest_now}, host sent {expected}"
    );
    let (ok, _, err) = ssh(&world, &user_key, &old_known, &new_ip.to_string(), "true");
    assert!(
        !ok,
        "the snapshot's host key still answers at the new address"
    );
    assert!(
        err.contains("REMOTE HOST IDENTIFICATION HAS CHANGED")
            || err.contains("Host key verification failed"),
        "{err}"
    );
    let ping = world
        .command("ping")
        .args(["-c", "1", "-W", "3", &old_ip])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(!ping.success(), "the old address {old_ip} still answers");

    // 3. The same identity again: nothing to change.
    let started = std::time::Instant::now();
    let again = agent
        .reidentify(identity(now_ns() + TWO_DAYS_NS))
        .await
        .unwrap();
    eprintln!("repeated reidentify took {:?}", started.elapsed());
    assert!(again.changed.is_empty(), "{again:?}");
    let (ok, _, err) = ssh(&world, &user_key, &new_known, &new_ip.to_string(), "true");
    assert!(ok, "ssh after the repeated reidentify failed: {err}");

    // 4. Without systemd-networkd (an image or a warming boot that does
    // not use it) the address is set directly and networkd is not started.
    let (ok, _, err) = ssh(
        &world,
        &user_key,
        &new_known,
        &new_ip.to_string(),
        "systemctl stop systemd-networkd.socket systemd-networkd.service",
    );
    assert!(ok, "{err}");
    let third_ip = Ipv4Addr::from(u32::from(new_ip) + 1);
    let mut third = identity(now_ns());
    third.address = third_ip;
    let report = agent.reidentify(third).await.unwrap();
    assert_eq!(report.changed, vec!["address".to_owned()], "{report:?}");
    assert_eq!(report.addresses, vec![format!("{third_ip}/{prefix}")]);
    std::fs::write(&new_known, format!("{third_ip} {new_public}\n")).unwrap();
    let (ok, out, err) = ssh(
        &world,
        &user_key,
        &new_known,
        &third_ip.to_string(),
        "systemctl is-active systemd-networkd.service; ip -4 -o addr show dev eth0",
    );
    assert!(!ok || out.contains("inactive"), "{out}{err}");
    assert!(
        out.contains("inactive"),
        "networkd was started again: {out}{err}"
    );
    assert!(out.contains(&format!("{third_ip}/{prefix}")), "{out}");
    assert!(!out.contains(&format!("{new_ip}/")), "{out}");

    // 5. A bad field is refused, naming it, and nothing changes.
    let mut bad = identity(now_ns());
    bad.hostname = "third".into();
    bad.mac = "01:00:5e:00:00:01".into();
    match agent.reidentify(bad).await {
        Err(AgentClientError::Agent { message, .. }) => {
            assert!(message.contains("mac"), "{message}");
            assert!(message.contains("nothing changed"), "{message}");
        }
        other => panic!("a multicast MAC was not refused: {other:?}"),
    }
    assert_eq!(agent.health().await.unwrap().hostname, "second");
}
