//! Three VMs created at once by three CLI processes get distinct addresses,
//! taps and MACs, and each answers SSH under its own name. Three boots.

mod common;
mod vm_harness;

use std::collections::HashSet;
use std::process::Stdio;

use vm_harness::{boot_tests, cli_bin, privileged, test_image, World};

#[tokio::test(flavor = "multi_thread")]
async fn three_concurrent_creates_get_distinct_addresses_and_all_answer_ssh() {
    let test = "three_concurrent_creates_get_distinct_addresses_and_all_answer_ssh";
    if !privileged(test) || !boot_tests(test) {
        return;
    }
    let image = test_image();
    let world = World::new(&vm_harness::config(&image.name), Some(image)).await;

    let names = ["c1", "c2", "c3"];
    let children: Vec<_> = names
        .iter()
        .map(|name| {
            world
                .command(cli_bin())
                .args(["vm", "create", "--name", name, "--memory", "640M"])
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn banger vm create")
        })
        .collect();
    for (name, child) in names.iter().zip(children) {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "create {name}: {}\nlog:\n{}",
            vm_harness::text(&out),
            world.log_tail()
        );
    }

    let vms = world.list();
    assert_eq!(vms.len(), 3, "{vms:?}");
    let ips: HashSet<_> = vms.iter().filter_map(|v| v.ip.clone()).collect();
    let taps: HashSet<_> = vms.iter().filter_map(|v| v.tap.clone()).collect();
    let macs: HashSet<_> = vms.iter().map(|v| v.mac.clone()).collect();
    assert_eq!((ips.len(), taps.len(), macs.len()), (3, 3, 3), "{vms:?}");
    assert!(vms.iter().all(|v| v.state == "running"), "{vms:?}");
    let leases = world.db().list_leases().unwrap();
    assert_eq!(leases.len(), 3, "{leases:?}");

    for name in names {
        let host = world.banger_ok(&["vm", "ssh", name, "--", "hostname"]);
        assert_eq!(host.trim(), name);
    }
    let table = world.banger_ok(&["vm", "list"]);
    assert_eq!(table.lines().count(), 4, "{table}");
    assert!(table.starts_with("NAME"), "{table}");

    let args: Vec<&str> = ["vm", "delete", "--force"]
        .into_iter()
        .chain(names)
        .collect();
    world.banger_ok(&args);
    for vm in &vms {
        world.assert_nothing_left(&vm.name, &vm.id, vm.ip.as_deref());
    }
}
