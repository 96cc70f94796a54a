//! `auto_stop_stale_after`: a VM with an open SSH session keeps running past
//! the limit; once nobody uses it for that long it is stopped. One boot.

mod common;
mod vm_harness;

use std::process::Stdio;
use std::time::{Duration, Instant};

use vm_harness::{boot_tests, cli_bin, privileged, test_image, World};

const LIMIT: Duration = Duration::from_secs(8);

#[tokio::test(flavor = "multi_thread")]
async fn an_idle_vm_is_stopped_but_not_while_someone_is_connected() {
    let test = "an_idle_vm_is_stopped_but_not_while_someone_is_connected";
    if !privileged(test) || !boot_tests(test) {
        return;
    }
    let image = test_image();
    let config = vm_harness::config_with(
        &image.name,
        &format!("auto_stop_stale_after = \"{}s\"", LIMIT.as_secs()),
    );
    let world = World::new(&config, Some(image)).await;
    world.banger_ok(&["vm", "create", "--name", "idle"]);

    // A session open for twice the limit: the VM must stay up all along.
    let session = world
        .command(cli_bin())
        .args([
            "vm",
            "ssh",
            "idle",
            "--",
            "sleep",
            &(LIMIT.as_secs() * 2).to_string(),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = session.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", vm_harness::text(&out));
    assert_eq!(
        world.show("idle").state,
        "running",
        "stopped during an SSH session"
    );

    // Nobody connected: stopped within the limit plus a sweep or two.
    let since = Instant::now();
    let vm = world.wait_state("idle", "stopped", LIMIT * 4);
    assert!(
        since.elapsed() >= LIMIT / 2,
        "stopped too early: {:?}",
        since.elapsed()
    );
    assert_eq!(vm.last_error, None, "an idle stop is a clean stop: {vm:?}");
    assert!(world.qemus().is_empty());
    assert!(
        world.env.log().contains("stopping idle VM"),
        "{}",
        world.log_tail()
    );

    world.banger_ok(&["vm", "delete", "idle"]);
    world.assert_nothing_left("idle", &vm.id, None);
}
