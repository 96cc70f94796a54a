//! The daemon is SIGKILLed while a VM runs: the restarted daemon re-adopts
//! it (same process, SSH works, stop works). Then the VMM dies while the
//! daemon is down: the next daemon marks the VM stopped and gives its tap
//! and lease back. Two boots.

mod common;
mod vm_harness;

use vm_harness::{boot_tests, privileged, test_image, World};

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_daemon_re_adopts_running_vms_and_notices_dead_ones() {
    let test = "a_killed_daemon_re_adopts_running_vms_and_notices_dead_ones";
    if !privileged(test) || !boot_tests(test) {
        return;
    }
    let image = test_image();
    let mut world = World::new(&vm_harness::config(&image.name), Some(image)).await;
    world.banger_ok(&["vm", "create", "--name", "phoenix"]);
    let before = world.show("phoenix");
    let pid = before.vmm_pid.expect("a running VM has a VMM pid");

    world.kill_daemon();
    assert_eq!(world.qemus(), vec![pid], "the VMM outlives the daemon");
    // A client that dies between request and answer (as a killed daemon
    // does) leaves the answer queued in the virtio-serial port for the next
    // client; the new daemon must not take it for the answer to its own.
    {
        use std::io::Write;
        let socket = world
            .env
            .layout
            .runtime_dir
            .join("vms")
            .join(&before.id)
            .join("agent.sock");
        let mut s = std::os::unix::net::UnixStream::connect(&socket).unwrap();
        s.write_all(b"{\"op\":\"stats\"}\n").unwrap();
    }
    world.start_daemon().await;

    let after = world.show("phoenix");
    assert_eq!(after.state, "running", "{after:?}");
    assert_eq!(after.vmm_pid, Some(pid), "same VMM process re-adopted");
    assert_eq!(after.ip, before.ip);
    assert!(
        world.env.log().contains("re-adopted running VM"),
        "{}",
        world.log_tail()
    );
    let host = world.banger_ok(&["vm", "ssh", "phoenix", "--", "hostname"]);
    assert_eq!(host.trim(), "phoenix");
    assert!(
        world
            .env
            .log()
            .contains("discarded stale bytes from the agent channel"),
        "the queued answer was not seen: {}",
        world.log_tail()
    );
    let details = after.details.unwrap();
    assert!(
        details.agent.is_some(),
        "the agent answers the new daemon: {:?}\nlog:\n{}",
        details.agent_error,
        world.log_tail()
    );

    // Stop works across the restart (the handle in the run dir controls it).
    let stopped = world.banger_ok(&["vm", "stop", "phoenix"]);
    assert!(stopped.contains("phoenix is stopped"), "{stopped}");
    assert!(world.qemus().is_empty());
    assert!(!world.ns.links().contains("banger-t"));

    // A VMM that dies while no daemon runs is found dead at the next start.
    world.banger_ok(&["vm", "start", "phoenix"]);
    let running = world.show("phoenix");
    world.kill_daemon();
    let pid = running.vmm_pid.unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    assert!(common::wait_pid_gone(pid));
    assert!(
        world.ns.links().contains("banger-t"),
        "tap still there before recovery"
    );
    world.start_daemon().await;
    let vm = world.show("phoenix");
    assert_eq!(
        (vm.state.as_str(), vm.ip.as_deref(), vm.tap.as_deref()),
        ("stopped", None, None)
    );
    assert!(
        vm.last_error
            .as_deref()
            .is_some_and(|e| e.contains("not running")),
        "{vm:?}"
    );
    assert!(!world.ns.links().contains("banger-t"), "tap released");
    assert!(
        world.db().list_leases().unwrap().is_empty(),
        "lease released"
    );
    let run_dir = world.env.layout.runtime_dir.join("vms").join(&vm.id);
    assert!(!run_dir.exists(), "run dir removed");

    world.banger_ok(&["vm", "delete", "phoenix"]);
    world.assert_nothing_left("phoenix", &vm.id, running.ip.as_deref());
}
