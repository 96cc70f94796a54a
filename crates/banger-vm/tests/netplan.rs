//! The kernel command line checked against the real systemd-network-generator.

mod common;

use std::fs;
use std::net::Ipv4Addr;
use std::process::Command;

use banger_vm::netplan::NetPlan;
use common::have_program;

const GENERATOR: &str = "/lib/systemd/systemd-network-generator";

#[test]
fn systemd_network_generator_configures_every_physical_link_but_not_lo() {
    const T: &str = "systemd_network_generator_configures_every_physical_link_but_not_lo";
    if !have_program(T, GENERATOR, "systemd") {
        return;
    }
    let plan = NetPlan::new(
        "172.30.0.0/24".parse().unwrap(),
        "172.30.0.1".parse().unwrap(),
        vec!["9.9.9.9".parse().unwrap()],
    )
    .unwrap();
    let args = plan
        .kernel_args(Ipv4Addr::new(172, 30, 0, 7), "web-1")
        .unwrap();
    let root = tempfile::tempdir().unwrap();
    let cmdline = format!("console=ttyS0 {args} quiet");
    let out = Command::new(GENERATOR)
        .arg(format!("--root={}", root.path().display()))
        .arg("--")
        .args(cmdline.split(' '))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dir = root.path().join("run/systemd/network");
    let files: Vec<_> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    let unit = fs::read_to_string(&files[0]).unwrap();
    let lines: Vec<&str> = unit.lines().map(str::trim).collect();
    for want in [
        "Type=!loopback",
        "DHCP=no",
        "Hostname=web-1",
        "Address=172.30.0.7/24",
        "Gateway=172.30.0.1",
    ] {
        assert!(lines.contains(&want), "{want} missing from\n{unit}");
    }
    assert!(
        !lines.iter().any(|l| l.starts_with("Name=")),
        "matches by name:\n{unit}"
    );
}
