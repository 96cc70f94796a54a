//! The QEMU backend: the exact argument vector, and real QEMU (TCG) runs
//! through `Vmm::launch` with a tiny PVH guest that writes to the serial
//! port: boot, QMP status, agent socket, re-adoption identity, shutdown.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use banger_vmm::qemu::{qemu_args, QemuPaths};
use banger_vmm::{
    Accel, AgentEndpoint, AgentSpec, Backend, BackendConfig, DriveSpec, LaunchOptions, NetSpec,
    QemuConfig, ShutdownOutcome, VmSpec, VmState, Vmm, VmmError, VmmHandle,
};
use common::{qemu_binary, wait_for_text, write_pvh_kernel, KillOnDrop};

fn golden_spec() -> VmSpec {
    VmSpec {
        id: "vm-7".into(),
        name: "golden".into(),
        vcpu: 2,
        memory_mib: 1024,
        kernel: "/k/vmlinux".into(),
        initrd: Some("/k/initrd".into()),
        cmdline: "console=ttyS0 root=/dev/vda rw".into(),
        drives: vec![
            DriveSpec {
                id: "work".into(),
                path: "/d/work,1.ext4".into(),
                read_only: false,
                is_root: false,
            },
            DriveSpec {
                id: "root".into(),
                path: "/d/root.ext4".into(),
                read_only: true,
                is_root: true,
            },
        ],
        net: Some(NetSpec {
            tap: "bgtap7".into(),
            mac: "02:00:00:00:00:07".parse().unwrap(),
        }),
        serial_log: "/r/serial.log".into(),
        agent: Some(AgentSpec {
            guest_cid: 7,
            host_socket: "/r/agent.sock".into(),
        }),
        run_dir: "/r".into(),
    }
}

#[test]
fn argv_golden_tcg() {
    let spec = golden_spec();
    let args = qemu_args(
        Accel::Tcg,
        &spec,
        &QemuPaths::in_run_dir(&spec.run_dir),
        false,
    );
    let expected = [
        "-name",
        "vm-7",
        "-machine",
        "microvm,pit=on,pic=off,rtc=on",
        "-accel",
        "tcg",
        "-cpu",
        "max,-cx16,-svm,-vmx",
        "-m",
        "1024",
        "-smp",
        "2",
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-no-reboot",
        "-chardev",
        "file,id=serial0,path=/r/serial.log,append=on",
        "-serial",
        "chardev:serial0",
        "-kernel",
        "/k/vmlinux",
        "-initrd",
        "/k/initrd",
        "-append",
        "console=ttyS0 root=/dev/vda rw",
        "-drive",
        "id=root,file=/d/root.ext4,format=raw,if=none,readonly=on",
        "-device",
        "virtio-blk-device,drive=root",
        "-drive",
        "id=work,file=/d/work,,1.ext4,format=raw,if=none",
        "-device",
        "virtio-blk-device,drive=work",
        "-netdev",
        "tap,id=net0,ifname=bgtap7,script=no,downscript=no",
        "-device",
        "virtio-net-device,netdev=net0,mac=02:00:00:00:00:07",
        "-device",
        "virtio-serial-device",
        "-chardev",
        "socket,id=agent,path=/r/agent.sock,server=on,wait=off",
        "-device",
        "virtserialport,chardev=agent,name=org.banger.agent",
        "-chardev",
        "socket,id=qmp,path=/r/qmp.sock,server=on,wait=off",
        "-mon",
        "chardev=qmp,mode=control",
        "-pidfile",
        "/r/qemu.pid",
        "-daemonize",
    ];
    assert_eq!(args, expected);
}

#[test]
fn argv_kvm_minimal_paused() {
    let mut spec = golden_spec();
    spec.initrd = None;
    spec.net = None;
    spec.agent = None;
    spec.drives.clear();
    let args = qemu_args(
        Accel::Kvm,
        &spec,
        &QemuPaths::in_run_dir(&spec.run_dir),
        true,
    );
    let joined = args.join(" ");
    assert!(joined.contains("-accel kvm -cpu host"), "{joined}");
    for absent in ["-initrd", "-drive", "-netdev", "virtio-serial", "tcg"] {
        assert!(!joined.contains(absent), "{absent} in {joined}");
    }
    assert_eq!(args.last().map(String::as_str), Some("-S"));
}

struct Env {
    dir: tempfile::TempDir,
    vmm: Vmm,
}

impl Env {
    fn new() -> Option<Env> {
        let binary = qemu_binary()?;
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("run")).unwrap();
        write_pvh_kernel(&dir.path().join("vmlinux"), "banger-pvh-ok\n");
        // An initrd whose size is not page-aligned (the guest ignores it).
        std::fs::write(dir.path().join("initrd"), vec![0x5a; 5000]).unwrap();
        // A small raw disk so the drive path is exercised too.
        let disk = std::fs::File::create(dir.path().join("disk.raw")).unwrap();
        disk.set_len(1 << 20).unwrap();
        let vmm = Vmm::new(
            BackendConfig::Qemu(QemuConfig {
                binary,
                accel: Accel::Tcg,
            }),
            "test: TCG always works",
        );
        Some(Env { dir, vmm })
    }

    fn p(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn spec(&self) -> VmSpec {
        VmSpec {
            id: "qemu-test".into(),
            name: "qemu test".into(),
            vcpu: 1,
            memory_mib: 128,
            kernel: self.p("vmlinux"),
            initrd: Some(self.p("initrd")),
            cmdline: "console=ttyS0".into(),
            drives: vec![DriveSpec {
                id: "root".into(),
                path: self.p("disk.raw"),
                read_only: false,
                is_root: true,
            }],
            net: None,
            serial_log: self.p("run/serial.log"),
            agent: Some(AgentSpec {
                guest_cid: 3,
                host_socket: self.p("run/agent.sock"),
            }),
            run_dir: self.p("run"),
        }
    }
}

fn guard(h: &VmmHandle) -> KillOnDrop {
    KillOnDrop {
        pid: h.pid,
        start_time: h.start_time,
    }
}

#[tokio::test]
async fn qemu_boots_a_guest_and_shuts_down_without_leftovers() {
    let Some(env) = Env::new() else { return };
    let spec = env.spec();
    let handle = env
        .vmm
        .launch(&spec, &LaunchOptions::default())
        .await
        .unwrap();
    let _guard = guard(&handle);

    assert_eq!(handle.backend, Backend::Qemu { accel: Accel::Tcg });
    assert_eq!(handle.backend_reason, "test: TCG always works");
    assert!(handle.is_alive());
    assert!(banger_vmm::is_same_process(handle.pid, handle.start_time));
    assert!(!banger_vmm::is_same_process(
        handle.pid,
        handle.start_time + 1
    ));
    // Detached: not our child's session, so the daemon's death does not reach it.
    let ours = banger_vmm::process::session_of(std::process::id()).unwrap();
    assert_ne!(banger_vmm::process::session_of(handle.pid).unwrap(), ours);

    let serial = wait_for_text(&spec.serial_log, "banger-pvh-ok", Duration::from_secs(60)).await;
    assert!(serial.contains("banger-pvh-ok"), "serial log: {serial:?}");

    let status = handle.status().await.unwrap();
    assert_eq!(status.state, VmState::Running);
    assert_eq!(status.detail, "running");
    // QEMU got a page-aligned copy of the initrd.
    let padded = std::fs::metadata(env.p("run/initrd.padded")).unwrap();
    assert_eq!(padded.len(), 8192);

    // The agent channel's host side accepts a connection.
    match &handle.agent {
        Some(AgentEndpoint::VirtioSerial { socket, port_name }) => {
            assert_eq!(socket, &env.p("run/agent.sock"));
            assert_eq!(port_name, "org.banger.agent");
        }
        other => panic!("unexpected agent endpoint {other:?}"),
    }
    handle.agent.as_ref().unwrap().connect().await.unwrap();

    // A restarted daemon finds the same handle in the run dir.
    let loaded = VmmHandle::load(&spec.run_dir).unwrap();
    assert_eq!(loaded, handle);
    assert!(loaded.is_alive());

    // The tiny guest ignores the ACPI power button: powerdown, then quit.
    let outcome = handle.shutdown(Duration::from_secs(1)).await.unwrap();
    assert_eq!(outcome, ShutdownOutcome::Terminated);
    assert!(!handle.is_alive());
    assert!(!banger_vmm::is_same_process(handle.pid, handle.start_time));
    assert_eq!(handle.status().await.unwrap().state, VmState::Exited);
    for leftover in [
        "qmp.sock",
        "agent.sock",
        "qemu.pid",
        "vmm.json",
        "initrd.padded",
    ] {
        assert!(
            !env.p("run").join(leftover).exists(),
            "{leftover} left behind"
        );
    }
    assert!(spec.serial_log.exists(), "the serial log is kept");
    // A second shutdown is a no-op.
    assert_eq!(
        handle.shutdown(Duration::from_secs(1)).await.unwrap(),
        ShutdownOutcome::AlreadyExited
    );
}

#[tokio::test]
async fn qemu_paused_launch_reports_prelaunch_until_started() {
    let Some(env) = Env::new() else { return };
    let spec = env.spec();
    let opts = LaunchOptions {
        start_paused: true,
        ..LaunchOptions::default()
    };
    let handle = env.vmm.launch(&spec, &opts).await.unwrap();
    let _guard = guard(&handle);

    let status = handle.status().await.unwrap();
    assert_eq!(status.state, VmState::NotStarted);
    assert_eq!(status.detail, "prelaunch");

    // QMP errors carry QEMU's class and description.
    let mut qmp = banger_vmm::qemu::QmpClient::connect(&handle.control_socket)
        .await
        .unwrap();
    let err = qmp
        .execute::<serde_json::Value>("no-such-command", None)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, banger_vmm::qemu::QmpError::Command { class, .. } if class == "CommandNotFound"),
        "{err}"
    );
    drop(qmp);

    handle.start().await.unwrap();
    assert_eq!(handle.status().await.unwrap().state, VmState::Running);

    // A VMM that dies (here: killed) is noticed, and cleanup removes its files.
    handle.kill().await.unwrap();
    assert!(handle.wait_exit(Duration::from_secs(10)).await.unwrap());
    assert!(!handle.is_alive());
    handle.cleanup().unwrap();
    assert!(!env.p("run/qmp.sock").exists());
}

#[tokio::test]
async fn qemu_startup_failure_reports_qemu_output_and_leaves_no_process() {
    let Some(env) = Env::new() else { return };
    std::fs::write(env.p("vmlinux"), b"not a kernel").unwrap();
    let spec = env.spec();
    let err = env
        .vmm
        .launch(&spec, &LaunchOptions::default())
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, VmmError::ExitedEarly { .. }), "{text}");
    assert!(text.contains("qemu-system-x86_64"), "{text}");
    assert!(
        text.to_lowercase().contains("kernel"),
        "QEMU's complaint should be quoted: {text}"
    );
    assert!(!env.p("run/qemu.pid").exists());
}

#[tokio::test]
async fn cleanup_and_relaunch_refuse_while_the_vmm_runs() {
    let Some(env) = Env::new() else { return };
    let spec = env.spec();
    let handle = env
        .vmm
        .launch(&spec, &LaunchOptions::default())
        .await
        .unwrap();
    let _guard = guard(&handle);
    let err = handle.cleanup().unwrap_err();
    assert!(matches!(err, VmmError::StillRunning { .. }), "{err}");
    assert!(env.p("run/qmp.sock").exists());
    // A second launch into the same run dir must not disturb the live VM.
    let err = env
        .vmm
        .launch(&spec, &LaunchOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(err, VmmError::AlreadyRunning { .. }), "{err}");
    assert_eq!(handle.status().await.unwrap().state, VmState::Running);
    handle.kill().await.unwrap();
    handle.cleanup().unwrap();
}

/// Physical address of the tiny guest's code and message (see `common`).
const GUEST_LOAD: u64 = 0x10_0000;

async fn guest_page(handle: &VmmHandle, dump: &std::path::Path) -> Vec<u8> {
    let mut qmp = banger_vmm::qemu::QmpClient::connect(&handle.control_socket)
        .await
        .unwrap();
    qmp.execute::<serde_json::Value>(
        "pmemsave",
        Some(serde_json::json!({
            "val": GUEST_LOAD,
            "size": 4096,
            "filename": dump.to_string_lossy(),
        })),
    )
    .await
    .unwrap();
    std::fs::read(dump).unwrap()
}

fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

#[tokio::test]
async fn qemu_snapshot_saves_and_restores_guest_memory_and_rejects_a_damaged_file() {
    let Some(env) = Env::new() else { return };
    let spec = env.spec();
    let handle = env
        .vmm
        .launch(&spec, &LaunchOptions::default())
        .await
        .unwrap();
    let _guard = guard(&handle);
    let serial = wait_for_text(&spec.serial_log, "banger-pvh-ok", Duration::from_secs(60)).await;
    assert!(serial.contains("banger-pvh-ok"), "serial log: {serial:?}");

    let snap = env.p("snap.bin");
    let saved = handle.save_snapshot(&snap).await.unwrap();
    assert_eq!(saved.path, snap);
    // The VMM is gone and its run-dir files with it: nothing resumes the
    // saved guest behind the snapshot's back.
    assert!(!handle.is_alive());
    assert!(!env.p("run/qmp.sock").exists());
    assert!(!env.p("run/vmm.json").exists());
    // mapped-ram: the whole 128 MiB of RAM at fixed offsets, sparse on disk.
    assert!(saved.apparent_bytes >= 128 << 20, "{saved:?}");
    assert!(saved.disk_bytes < saved.apparent_bytes, "{saved:?}");
    assert_eq!(
        std::fs::metadata(&snap).unwrap().len(),
        saved.apparent_bytes
    );

    // The restoring QEMU gets a kernel that would print something else: the
    // guest's memory must come from the snapshot, not from a fresh boot.
    write_pvh_kernel(&env.p("vmlinux"), "cold-booted!!\n");
    let restored = env
        .vmm
        .restore(&spec, &snap, &LaunchOptions::default())
        .await
        .unwrap();
    let _guard2 = guard(&restored);
    assert_ne!(restored.pid, handle.pid);
    assert_eq!(restored.status().await.unwrap().state, VmState::Running);
    let page = guest_page(&restored, &env.p("page.bin")).await;
    assert!(contains(&page, "banger-pvh-ok"), "restored memory");
    assert!(!contains(&page, "cold-booted!!"), "freshly loaded kernel");
    assert_eq!(VmmHandle::load(&spec.run_dir).unwrap(), restored);
    restored.kill().await.unwrap();
    restored.cleanup().unwrap();

    // A truncated snapshot fails to load with QEMU's reason, and leaves no
    // VMM behind (the caller boots cold).
    let file = std::fs::OpenOptions::new().write(true).open(&snap).unwrap();
    file.set_len(saved.apparent_bytes / 2).unwrap();
    drop(file);
    let err = env
        .vmm
        .restore(&spec, &snap, &LaunchOptions::default())
        .await
        .unwrap_err();
    assert!(
        matches!(
            &err,
            VmmError::Qmp(banger_vmm::qemu::QmpError::MigrationFailed { .. })
        ),
        "{err}"
    );
    let pid: u32 = std::fs::read_to_string(env.p("run/qemu.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists()
            || std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .map(|s| s.contains(") Z "))
                .unwrap_or(true),
        "QEMU {pid} of the failed restore still runs"
    );

    // Garbage is refused the same way.
    std::fs::write(&snap, vec![0x42u8; 1 << 20]).unwrap();
    let err = env
        .vmm
        .restore(&spec, &snap, &LaunchOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(&err, VmmError::Qmp(_)), "{err}");
}
