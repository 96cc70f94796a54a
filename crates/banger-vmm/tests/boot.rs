//! Boots banger's real kernel bundle and minimal image under QEMU/TCG through
//! `Vmm::launch` and watches the serial console reach userspace, then stops
//! the guest through the ACPI power button. Gated: runs only with
//! `BANGER_BOOT_TESTS=1` (it takes tens of seconds of CPU).
//!
//! Artifacts (defaults are banger's per-user store, see crates/banger-image):
//! - `BANGER_BOOT_KERNEL_DIR`: a kernel bundle directory with `vmlinux` and
//!   optional `initrd` (default `$XDG_STATE_HOME/banger/kernels/generic-6.12`);
//! - `BANGER_BOOT_ROOTFS`: an image's `rootfs.ext4` (default
//!   `$XDG_STATE_HOME/banger/images/debian-bookworm-minimal/rootfs.ext4`);
//!   it is copied (sparse) first, the original is never written.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use banger_vmm::{
    Accel, AgentSpec, BackendConfig, DriveSpec, LaunchOptions, QemuConfig, ShutdownOutcome, VmSpec,
    VmState, Vmm,
};
use common::{qemu_binary, wait_for_text, KillOnDrop};

fn state_dir() -> PathBuf {
    match std::env::var_os("XDG_STATE_HOME") {
        Some(d) if !d.is_empty() => PathBuf::from(d).join("banger"),
        _ => {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".local/state/banger")
        }
    }
}

fn env_path(var: &str, default: PathBuf) -> PathBuf {
    std::env::var_os(var).map(PathBuf::from).unwrap_or(default)
}

/// systemd's first line on the console once it runs as PID 1.
const USERSPACE_MARK: &str = "Welcome to";

#[tokio::test]
async fn real_kernel_and_image_boot_to_userspace_under_tcg() {
    if std::env::var("BANGER_BOOT_TESTS").as_deref() != Ok("1") {
        eprintln!("skipping: set BANGER_BOOT_TESTS=1 to boot the real kernel and image");
        return;
    }
    let Some(qemu) = qemu_binary() else { return };
    let kernel_dir = env_path(
        "BANGER_BOOT_KERNEL_DIR",
        state_dir().join("kernels/generic-6.12"),
    );
    let rootfs = env_path(
        "BANGER_BOOT_ROOTFS",
        state_dir().join("images/debian-bookworm-minimal/rootfs.ext4"),
    );
    let vmlinux = kernel_dir.join("vmlinux");
    assert!(
        vmlinux.is_file() && rootfs.is_file(),
        "BANGER_BOOT_TESTS=1 but {} or {} is missing (set BANGER_BOOT_KERNEL_DIR / BANGER_BOOT_ROOTFS)",
        vmlinux.display(),
        rootfs.display()
    );
    let initrd = Some(kernel_dir.join("initrd")).filter(|p| p.is_file());

    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root.ext4");
    let status = std::process::Command::new("cp")
        .args(["--sparse=always", "--reflink=auto"])
        .arg(&rootfs)
        .arg(&root)
        .status()
        .unwrap();
    assert!(status.success(), "copying {} failed", rootfs.display());
    let work = dir.path().join("work.raw");
    std::fs::File::create(&work)
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    let run = dir.path().join("run");
    std::fs::create_dir(&run).unwrap();

    let spec = VmSpec {
        id: "boot-test".into(),
        name: "boot test".into(),
        vcpu: 2,
        memory_mib: 1024,
        kernel: vmlinux,
        initrd,
        cmdline: "console=ttyS0 root=/dev/vda rw panic=1".into(),
        // The empty work disk comes first in the spec: if it were attached
        // first it would be /dev/vda and the root mount would fail.
        drives: vec![
            DriveSpec {
                id: "work".into(),
                path: work,
                read_only: false,
                is_root: false,
            },
            DriveSpec {
                id: "root".into(),
                path: root,
                read_only: false,
                is_root: true,
            },
        ],
        net: None,
        serial_log: run.join("serial.log"),
        agent: Some(AgentSpec {
            guest_cid: 3,
            host_socket: run.join("agent.sock"),
        }),
        run_dir: run.clone(),
    };
    let vmm = Vmm::new(
        BackendConfig::Qemu(QemuConfig {
            binary: qemu,
            accel: Accel::Tcg,
        }),
        "boot test: TCG",
    );
    let handle = vmm.launch(&spec, &LaunchOptions::default()).await.unwrap();
    let _guard = KillOnDrop {
        pid: handle.pid,
        start_time: handle.start_time,
    };

    // Under TCG on a busy 2-core host the kernel alone can take minutes.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(900);
    let serial = loop {
        let serial = wait_for_text(&spec.serial_log, USERSPACE_MARK, Duration::from_secs(5)).await;
        if serial.contains(USERSPACE_MARK)
            || !handle.is_alive()
            || tokio::time::Instant::now() >= deadline
        {
            break serial;
        }
    };
    assert!(
        serial.contains(USERSPACE_MARK),
        "the guest did not reach userspace (VMM alive: {}); serial log:\n{serial}",
        handle.is_alive()
    );
    assert_eq!(handle.status().await.unwrap().state, VmState::Running);

    // systemd handles the ACPI power button: a clean poweroff ends QEMU.
    let outcome = handle.shutdown(Duration::from_secs(120)).await.unwrap();
    let serial = String::from_utf8_lossy(&std::fs::read(&spec.serial_log).unwrap()).into_owned();
    assert_eq!(outcome, ShutdownOutcome::Graceful, "serial log:\n{serial}");
    assert!(!handle.is_alive());
}
