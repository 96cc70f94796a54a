//! One VM's whole life through the real CLI and daemon, in a network
//! namespace, booted under QEMU: create → ssh → write in /root → stop →
//! start → the file is still there → ports → show/logs → the VMM dies on
//! its own and is noticed → delete → nothing left. Two boots.

mod common;
mod vm_harness;

use std::time::Duration;

use vm_harness::{boot_tests, privileged, test_image, text, World};

/// Names of the links in the test's namespace.
fn link_names(world: &World) -> Vec<String> {
    world
        .ns
        .links()
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(|n| n.split('@').next().unwrap_or(n).to_owned())
        .collect()
}

/// Wait until `tap_pool_size` (default 4) idle pool taps exist besides
/// the one a running VM took from the pool (`in_use`).
fn wait_for_full_pool(world: &World, in_use: Option<&str>) -> Vec<String> {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let pool: Vec<String> = link_names(world)
            .into_iter()
            .filter(|n| n.starts_with("banger-p") && Some(n.as_str()) != in_use)
            .collect();
        if pool.len() == 4 || std::time::Instant::now() > deadline {
            assert_eq!(pool.len(), 4, "pool taps: {pool:?}");
            return pool;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn create_ssh_stop_start_ports_delete_leaves_nothing() {
    let test = "create_ssh_stop_start_ports_delete_leaves_nothing";
    if !privileged(test) || !boot_tests(test) {
        return;
    }
    let image = test_image();
    let world = World::new(&vm_harness::config(&image.name), Some(image)).await;

    let out = world.banger(&["vm", "create", "--name", "life", "--memory", "1G"]);
    assert!(
        out.status.success(),
        "create failed: {}\nlog:\n{}",
        text(&out),
        world.log_tail()
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with("spec: vcpu 2 (config), memory 1 GiB (flag), disk 1 GiB (config)\n"),
        "{stderr}"
    );
    assert!(
        stderr.contains("[ssh] waiting for SSH on 172.16.0."),
        "{stderr}"
    );
    let vm = world.show("life");
    assert_eq!(vm.state, "running");
    let ip = vm.ip.clone().expect("a running VM has an address");
    let details = vm.details.clone().unwrap();
    assert_eq!(details.ssh.host.as_deref(), Some(ip.as_str()));
    // The first start finds the tap pool empty and makes its own tap; the
    // pool is filled behind it.
    let first_tap = vm.tap.clone().expect("a running VM has a tap");
    assert!(first_tap.starts_with("banger-t"), "{first_tap}");
    let pool = wait_for_full_pool(&world, None);
    assert!(
        matches!(
            details.disks.clone_strategy.as_deref(),
            Some("reflink" | "sparse-copy")
        ),
        "{:?}",
        details.disks
    );
    assert_eq!(vm.backend.as_deref(), Some("qemu-tcg"));
    let agent = details.agent.expect("the agent answers in a running VM");
    assert_eq!(agent.applied, Some(Ok(())), "config drive applied");
    assert_eq!(agent.hostname, "life");
    let stats = details.stats.expect("guest stats");
    assert!(stats.mem_total_bytes > 512 << 20, "{stats:?}");
    assert_eq!(
        stats.work_disk.as_ref().map(|d| d.mount.as_str()),
        Some("/root"),
        "the work disk is /root: {stats:?}"
    );

    // `vm ssh` runs OpenSSH with StrictHostKeyChecking=yes against banger's
    // known_hosts: it only works because the pinned key is the guest's.
    let uname = world.banger_ok(&["vm", "ssh", "life", "--", "uname", "-a"]);
    assert!(uname.starts_with("Linux life "), "{uname}");
    vm_harness::assert_system_running(&world, "life");
    let guest_key = world.banger_ok(&[
        "vm",
        "ssh",
        "life",
        "--",
        "cat",
        "/etc/ssh/ssh_host_ed25519_key.pub",
    ]);
    let known = std::fs::read_to_string(world.known_hosts()).unwrap();
    let pinned = known
        .lines()
        .find(|l| l.split_whitespace().next() == Some(&format!("life,life.vm,{ip}")))
        .unwrap_or_else(|| panic!("no known_hosts line for life: {known}"));
    let key_of = |line: &str| {
        line.split_whitespace()
            .skip(1)
            .take(2)
            .collect::<Vec<_>>()
            .join(" ")
    };
    assert_eq!(
        key_of(pinned),
        guest_key
            .split_whitespace()
            .take(2)
            .collect::<Vec<_>>()
            .join(" ")
    );
    // And a wrong pinned key is refused (strict checking is really on).
    let wrong = world.env.dir.path().join("wrong_known_hosts");
    let other = banger_vm::identity::generate_host_key("x").unwrap();
    std::fs::write(&wrong, format!("{ip} {}\n", other.public_openssh)).unwrap();
    let refused = world
        .command("ssh")
        .args([
            "-i",
            &details.ssh.key,
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "BatchMode=yes",
        ])
        .arg(format!("-oUserKnownHostsFile={}", wrong.display()))
        .args([
            "-o",
            "GlobalKnownHostsFile=/dev/null",
            "-o",
            "StrictHostKeyChecking=yes",
        ])
        .arg(format!("root@{ip}"))
        .arg("true")
        .output()
        .unwrap();
    assert!(!refused.status.success(), "a wrong pinned key was accepted");
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("HOST IDENTIFICATION HAS CHANGED"),
        "{}",
        text(&refused)
    );

    // Exit status propagates; files in /root live on the work disk.
    let failed = world.banger(&["vm", "ssh", "life", "--", "exit", "7"]);
    assert_eq!(failed.status.code(), Some(7), "{}", text(&failed));
    world.banger_ok(&[
        "vm",
        "ssh",
        "life",
        "--",
        "sh",
        "-c",
        "echo persisted > /root/marker && sync",
    ]);

    let stopped = world.banger_ok(&["vm", "stop", "life"]);
    assert!(stopped.contains("life is stopped"), "{stopped}");
    assert!(world.qemus().is_empty(), "QEMU left after stop");
    assert!(
        !link_names(&world).contains(&first_tap),
        "tap {first_tap} left after stop"
    );
    assert_eq!(wait_for_full_pool(&world, None), pool, "the pool is kept");
    let vm = world.show("life");
    assert_eq!(
        (vm.state.as_str(), vm.ip.as_deref(), vm.tap.as_deref()),
        ("stopped", None, None)
    );
    assert!(
        world.db().list_leases().unwrap().is_empty(),
        "lease kept while stopped"
    );

    let started = world.banger(&["vm", "start", "life"]);
    assert!(started.status.success(), "{}", text(&started));
    let marker = world.banger_ok(&["vm", "ssh", "life", "--", "cat", "/root/marker"]);
    assert_eq!(marker, "persisted\n");
    let vm = world.show("life");
    // This start took a ready tap from the pool, which is refilled.
    let second_tap = vm.tap.clone().expect("a running VM has a tap");
    assert!(pool.contains(&second_tap), "{second_tap} not from {pool:?}");
    assert!(
        String::from_utf8_lossy(&started.stderr).contains("(ready from the pool)"),
        "{}",
        text(&started)
    );
    let refilled = wait_for_full_pool(&world, Some(&second_tap));
    assert!(!refilled.contains(&second_tap), "{refilled:?}");
    assert_eq!(
        vm.ip.as_deref(),
        Some(ip.as_str()),
        "the address is kept when free"
    );

    let ports = world.banger_ok(&["vm", "ports", "life"]);
    let sshd = ports
        .lines()
        .find(|l| l.split_whitespace().nth(2) == Some("22"))
        .unwrap_or_else(|| panic!("no port 22: {ports}"));
    assert!(sshd.contains("sshd"), "{ports}");
    let logs = world.banger_ok(&["vm", "logs", "life"]);
    assert!(
        logs.contains("Linux version"),
        "serial log: {}",
        &logs[..logs.len().min(2000)]
    );

    // `logs?follow=true` keeps streaming: curl gives up, not the daemon.
    let followed = std::process::Command::new("curl")
        .args(["-sN", "--max-time", "2", "--unix-socket"])
        .arg(world.env.socket())
        .arg("http://x/v1/vms/life/logs?follow=true")
        .output()
        .unwrap();
    assert_eq!(followed.status.code(), Some(28), "{}", text(&followed));
    assert!(String::from_utf8_lossy(&followed.stdout).contains("Linux version"));

    // Deleting a running VM needs --force.
    let refused = world.banger(&["vm", "delete", "life"]);
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("--force"),
        "{}",
        text(&refused)
    );

    // A VMM that dies on its own is noticed and its tap and lease released.
    let pids = world.qemus();
    assert_eq!(pids.len(), 1, "{pids:?}");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pids[0] as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let vm = world.wait_state("life", "stopped", Duration::from_secs(30));
    assert!(
        vm.last_error
            .as_deref()
            .is_some_and(|e| e.contains("exited on its own")),
        "{vm:?}"
    );
    assert!(
        !link_names(&world).contains(&second_tap),
        "tap {second_tap} left after the VMM died"
    );
    assert!(
        world.db().list_leases().unwrap().is_empty(),
        "lease left after the VMM died"
    );

    let id = vm.id.clone();
    let deleted = world.banger_ok(&["vm", "delete", "life"]);
    assert_eq!(deleted, "deleted life\n");
    world.assert_nothing_left("life", &id, Some(&ip));
    // Idempotent.
    assert_eq!(
        world.banger_ok(&["vm", "delete", "life"]),
        "life does not exist\n"
    );
}
