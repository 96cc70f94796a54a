//! Boots banger's real kernel bundle and minimal image under QEMU/TCG through
//! `Vmm::launch` and watches the serial console reach userspace, then stops
//! it (ACPI power button, then QEMU `quit`). It also checks the drive order:
//! an empty work disk listed before the root disk must not become
//! `/dev/vda`, and the modules disk listed last must be `/dev/vdc`. Gated: runs only with
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

/// The host TSC rate (a TCG guest's TSC follows it). Without it the guest
/// calibrates against the emulated PIT, which fails on a busy host and
/// leaves the kernel waiting for a timer tick forever (bangerd passes the
/// same `tsc_early_khz=`).
fn host_tsc_khz() -> Option<u64> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    let line = cpuinfo.lines().find(|l| l.starts_with("cpu MHz"))?;
    let mhz: f64 = line.split(':').nth(1)?.trim().parse().ok()?;
    Some((mhz * 1000.0).round() as u64)
}

/// systemd's first line on the console once it runs as PID 1.
const USERSPACE_MARK: &str = "Welcome to";

#[tokio::test]
async fn real_kernel_and_image_boot_to_userspace_under_tcg() {
    if !banger_test_support::Gate::new().boot_tests().check() {
        return;
    }
    let Some(qemu) = qemu_binary() else { return };
    boot_and_stop(qemu).await;
}

/// The same boot with Debian 12's own QEMU (7.2), the oldest a supported
/// distribution ships: `BANGER_BOOT_OLD_QEMU` names a `qemu-system-x86_64`
/// (scripts/qemu-bookworm.sh makes one from bookworm's packages without
/// installing them). Its TCG gets `cmpxchg16b`'s flags wrong; without
/// the `-cx16` of banger's `-cpu max,-cx16,-svm,-vmx` this guest panics within seconds.
#[tokio::test]
async fn debian12_qemu_7_2_boots_the_real_kernel_and_image() {
    if !banger_test_support::Gate::new().boot_tests().check() {
        return;
    }
    let Some(qemu) = std::env::var_os("BANGER_BOOT_OLD_QEMU").map(PathBuf::from) else {
        banger_test_support::skip(
            "BANGER_BOOT_OLD_QEMU is not set: run `scripts/qemu-bookworm.sh` and export the \
             path it prints (scripts/test.sh does)",
        );
        return;
    };
    let out = std::process::Command::new(&qemu)
        .arg("--version")
        .output()
        .unwrap_or_else(|e| panic!("{} does not run: {e}", qemu.display()));
    let version = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        version.starts_with("QEMU emulator version 7.2."),
        "{} is not QEMU 7.2: {version}",
        qemu.display()
    );
    boot_and_stop(qemu).await;
}

/// Boot the real kernel and image with `qemu` through `Vmm::launch`, check
/// the drive order and the modules disk, then stop the VM.
async fn boot_and_stop(qemu: PathBuf) {
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
    // The kernel's modules (the ACPI power button driver among them) reach
    // the guest on a read-only ext4 disk that the initrd mounts at
    // /lib/modules (`banger.modules=`); without it the guest cannot see
    // the power button and only a forced stop ends it.
    let modules_tree = kernel_dir.join("modules");
    let modules = modules_tree.is_dir().then(|| {
        let img = dir.path().join("modules.ext4");
        let status = std::process::Command::new("mkfs.ext4")
            .args(["-q", "-F", "-d"])
            .arg(&modules_tree)
            .arg(&img)
            .arg("256M")
            .status()
            .unwrap();
        assert!(
            status.success(),
            "mkfs.ext4 -d {} failed",
            modules_tree.display()
        );
        img
    });

    let spec = VmSpec {
        id: "boot-test".into(),
        name: "boot test".into(),
        vcpu: 2,
        memory_mib: 1024,
        kernel: vmlinux,
        initrd,
        // Drives after the root keep their order: work is vdb, modules vdc.
        cmdline: format!(
            "console=ttyS0 root=/dev/vda rw panic=1{}{}",
            if modules.is_some() {
                " banger.modules=/dev/vdc"
            } else {
                ""
            },
            host_tsc_khz()
                .map(|k| format!(" tsc_early_khz={k}"))
                .unwrap_or_default()
        ),
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
        ]
        .into_iter()
        .chain(modules.clone().map(|path| DriveSpec {
            id: "modules".into(),
            path,
            read_only: true,
            is_root: false,
        }))
        .collect(),
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
        "the guest did not reach userspace (VMM alive: {}); serial log:\n{serial}\nVMM log ({}):\n{}",
        handle.is_alive(),
        handle.vmm_log.display(),
        std::fs::read_to_string(&handle.vmm_log).unwrap_or_else(|e| format!("unreadable: {e}"))
    );
    assert_eq!(handle.status().await.unwrap().state, VmState::Running);

    if modules.is_some() {
        // The modules disk was found at /dev/vdc: udev loaded the ACPI
        // button driver from it.
        // Wait for the very line checked: "input: Power Button as ..." can
        // come first.
        let serial = wait_for_text(
            &spec.serial_log,
            "ACPI: button: Power Button",
            Duration::from_secs(60),
        )
        .await;
        assert!(
            serial.contains("ACPI: button: Power Button"),
            "the button driver did not load from the modules disk; serial log:\n{serial}"
        );
    }
    // A guest whose memory management broke (a mis-emulated instruction)
    // can still print the marks above before it dies.
    let serial = std::fs::read_to_string(&spec.serial_log).unwrap();
    for bad in ["Kernel panic", "general protection fault", "Oops:", "BUG:"] {
        assert!(
            !serial.contains(bad),
            "the guest kernel reported {bad:?}; serial log:\n{serial}"
        );
    }
    assert!(handle.is_alive(), "the VMM exited; serial log:\n{serial}");
    // Whether the guest acts on the power button depends on the image
    // (logind, or acpid); the minimal image has neither, so QEMU is told
    // to quit after the grace period. Either way, no SIGKILL is needed.
    let outcome = handle.shutdown(Duration::from_secs(30)).await.unwrap();
    eprintln!("shutdown outcome: {outcome:?}");
    assert!(
        matches!(
            outcome,
            ShutdownOutcome::Graceful | ShutdownOutcome::Terminated
        ),
        "{outcome:?}"
    );
    assert!(!handle.is_alive());
}
