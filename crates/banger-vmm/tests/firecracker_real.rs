//! `Vmm::launch` against a real Firecracker binary: every configuration
//! request banger sends must be accepted by Firecracker's own API parser,
//! not only by the checking fake in `tests/common/fake_fc.rs`.
//!
//! No registry ships Firecracker, so this runs only when
//! `BANGER_FIRECRACKER_BIN` points at a binary built beside the project
//! (docs/firecracker.md says how). Optional:
//! - `BANGER_FIRECRACKER_TAP`: an existing tap for `/network-interfaces`
//!   (run the test inside a network namespace that holds it); without it
//!   the VM gets no network interface;
//! - `BANGER_JAILER_BIN`: also launch through the jailer (needs root);
//! - `BANGER_BOOT_KERNEL_DIR` / `BANGER_BOOT_ROOTFS`: the real kernel and
//!   image (as in `boot.rs`); without them a tiny PVH kernel is used.
//!
//! On this project's CI host KVM is nested PVM and Firecracker's vCPU dies
//! early (DESIGN.md), so the test checks what holds on any host: the whole
//! configuration is accepted, `InstanceStart` is accepted, the status is
//! read, the vsock socket exists, and shutdown ends the process.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use banger_vmm::{
    AgentSpec, BackendConfig, DriveSpec, FirecrackerConfig, JailerConfig, LaunchOptions, NetSpec,
    VmSpec, VmState, Vmm,
};
use common::{write_pvh_kernel, KillOnDrop};

fn env_path(var: &str) -> Option<PathBuf> {
    std::env::var_os(var)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("run")).unwrap();
        Fixture { dir }
    }

    fn p(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The real kernel and a scratch copy of the real root disk when given,
    /// else a tiny PVH kernel and an empty disk file.
    fn spec(&self, id: &str) -> VmSpec {
        let (kernel, initrd) = match env_path("BANGER_BOOT_KERNEL_DIR") {
            Some(dir) => {
                let initrd = dir.join("initrd");
                (dir.join("vmlinux"), initrd.exists().then_some(initrd))
            }
            None => {
                let k = self.p("vmlinux");
                write_pvh_kernel(&k, "tiny kernel\n");
                (k, None)
            }
        };
        let root = self.p("root.ext4");
        match env_path("BANGER_BOOT_ROOTFS") {
            Some(src) => {
                std::fs::copy(src, &root).unwrap();
            }
            None => std::fs::write(&root, vec![0u8; 1 << 20]).unwrap(),
        }
        VmSpec {
            id: id.into(),
            name: "fc-real".into(),
            vcpu: 1,
            memory_mib: 256,
            kernel,
            initrd,
            cmdline: "console=ttyS0 reboot=k panic=1".into(),
            drives: vec![DriveSpec {
                id: "root".into(),
                path: root,
                read_only: false,
                is_root: true,
            }],
            net: std::env::var("BANGER_FIRECRACKER_TAP")
                .ok()
                .filter(|t| !t.is_empty())
                .map(|tap| NetSpec {
                    tap,
                    mac: "02:fc:00:00:00:01".parse().unwrap(),
                }),
            serial_log: self.p("run/serial.log"),
            agent: Some(AgentSpec {
                guest_cid: 3,
                host_socket: self.p("run/agent.sock"),
            }),
            run_dir: self.p("run"),
        }
    }
}

/// Both tests may use the one tap given, and a tap has one user at a time.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The endpoints Firecracker logged as received and the number of
/// requests it answered with a success status.
fn logged_requests(log: &str) -> (Vec<String>, usize) {
    let received = log
        .lines()
        .filter_map(|l| l.split("received a ").nth(1))
        .filter_map(|rest| rest.split('"').nth(1))
        .map(ToOwned::to_owned)
        .collect();
    let ok = log
        .lines()
        .filter(|l| l.contains("The request was executed successfully"))
        .count();
    (received, ok)
}

async fn launch_and_check(vmm: Vmm, spec: VmSpec) {
    let _one = ONE_AT_A_TIME.lock().await;
    let handle = vmm
        .launch(&spec, &LaunchOptions::default())
        .await
        .unwrap_or_else(|e| {
            let serial = std::fs::read_to_string(&spec.serial_log).unwrap_or_default();
            panic!("real Firecracker refused banger's configuration: {e}\nserial log:\n{serial}")
        });
    let _kill = KillOnDrop {
        pid: handle.pid,
        start_time: handle.start_time,
    };
    // The vCPU may already have died on a host with unusable KVM; the
    // configuration and InstanceStart were accepted either way.
    if handle.is_alive() {
        match handle.status().await {
            Ok(status) => assert!(
                matches!(status.state, VmState::Running | VmState::Exited),
                "unexpected status after InstanceStart: {status:?}"
            ),
            Err(e) => assert!(!handle.is_alive(), "status failed on a live process: {e}"),
        }
    }
    if let Some(agent) = &spec.agent {
        let sock = match &handle.agent {
            Some(banger_vmm::AgentEndpoint::Vsock { uds_path, .. }) => uds_path.clone(),
            other => panic!("expected a vsock agent endpoint, got {other:?}"),
        };
        assert!(
            sock.ends_with(agent.host_socket.file_name().unwrap()),
            "{sock:?}"
        );
        assert!(
            sock.exists() || !handle.is_alive(),
            "Firecracker did not create the vsock socket {sock:?}"
        );
    }
    let log = std::fs::read_to_string(&handle.vmm_log).unwrap_or_default();
    eprintln!("{}:\n{log}", handle.vmm_log.display());
    let (received, ok) = logged_requests(&log);
    let mut expected = vec!["/machine-config", "/boot-source", "/drives/root"];
    if spec.net.is_some() {
        expected.push("/network-interfaces/eth0");
    }
    expected.extend(["/vsock", "/actions"]);
    // The logger is configured by the first request, so it logs from the second on.
    assert_eq!(
        &received[..expected.len().min(received.len())],
        expected,
        "{log}"
    );
    assert!(ok >= expected.len(), "only {ok} requests succeeded:\n{log}");
    let outcome = handle.shutdown(Duration::from_secs(5)).await.unwrap();
    eprintln!("shutdown outcome: {outcome:?}");
    assert!(!handle.is_alive());
}

#[tokio::test]
async fn real_firecracker_accepts_bangers_configuration() {
    let Some(binary) = env_path("BANGER_FIRECRACKER_BIN") else {
        eprintln!(
            "skipping: set BANGER_FIRECRACKER_BIN to a Firecracker binary (docs/firecracker.md)"
        );
        return;
    };
    let fx = Fixture::new();
    let vmm = Vmm::new(
        BackendConfig::Firecracker(FirecrackerConfig {
            binary,
            jailer: None,
        }),
        "test: real Firecracker",
    );
    launch_and_check(vmm, fx.spec("fc-real-1")).await;
}

#[tokio::test]
async fn real_jailer_runs_firecracker_with_bangers_configuration() {
    let (Some(binary), Some(jailer)) = (
        env_path("BANGER_FIRECRACKER_BIN"),
        env_path("BANGER_JAILER_BIN"),
    ) else {
        eprintln!(
            "skipping: set BANGER_FIRECRACKER_BIN and BANGER_JAILER_BIN (docs/firecracker.md)"
        );
        return;
    };
    if !banger_test_support::Gate::new().root().check() {
        return;
    }
    let fx = Fixture::new();
    let chroot = fx.p("jail");
    std::fs::create_dir(&chroot).unwrap();
    let vmm = Vmm::new(
        BackendConfig::Firecracker(FirecrackerConfig {
            binary,
            jailer: Some(JailerConfig {
                binary: jailer,
                uid: 65534,
                gid: 65534,
                chroot_base_dir: chroot,
                netns: None,
            }),
        }),
        "test: real Firecracker under the jailer",
    );
    launch_and_check(vmm, fx.spec("fc-real-2")).await;
}
