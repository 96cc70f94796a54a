//! Firecracker snapshots, request by request: `PATCH /vm` + `PUT
//! /snapshot/create` on a booted VM, and `PUT /snapshot/load` + `PATCH
//! /drives/{id}` + `PATCH /vm` on a fresh process, against the checking fake
//! API of `tests/common/fake_fc.rs` (shapes from Firecracker's
//! `firecracker.yaml`, its "pre-boot only" / "paused only" rules, and a state
//! file that remembers the snapshotted VM's drives and interfaces); then
//! `Vmm::restore` through a spawned fake Firecracker process.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

use banger_vmm::firecracker::{self, ApiError, FirecrackerPaths, SnapshotPaths};
use banger_vmm::{
    AgentSpec, Backend, BackendConfig, DriveSpec, FirecrackerConfig, JailerConfig, LaunchOptions,
    NetSpec, VmSpec, VmState, Vmm, VmmError, VmmHandle,
};
use common::fake_fc::{Seen, Server};
use common::KillOnDrop;
use serde_json::json;

struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        for sub in ["a", "b", "snap"] {
            std::fs::create_dir(dir.path().join(sub)).unwrap();
            std::fs::create_dir(dir.path().join(sub).join("run")).unwrap();
        }
        std::fs::write(dir.path().join("vmlinux"), b"x").unwrap();
        Fixture { dir }
    }

    fn p(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// VM `vm` (a directory of its own): root and work disk, tap, agent.
    fn spec(&self, vm: &str, tap: &str) -> VmSpec {
        for f in ["root.ext4", "work.ext4"] {
            std::fs::write(self.p(vm).join(f), b"x").unwrap();
        }
        VmSpec {
            id: format!("vm-{vm}"),
            name: vm.into(),
            vcpu: 2,
            memory_mib: 1024,
            kernel: self.p("vmlinux"),
            initrd: None,
            cmdline: "console=ttyS0".into(),
            drives: vec![
                DriveSpec {
                    id: "root".into(),
                    path: self.p(vm).join("root.ext4"),
                    read_only: false,
                    is_root: true,
                },
                DriveSpec {
                    id: "work".into(),
                    path: self.p(vm).join("work.ext4"),
                    read_only: false,
                    is_root: false,
                },
            ],
            net: Some(NetSpec {
                tap: tap.into(),
                mac: "02:fc:00:00:00:0a".parse().unwrap(),
            }),
            serial_log: self.p(vm).join("run/serial.log"),
            agent: Some(AgentSpec {
                guest_cid: 3,
                host_socket: self.p(vm).join("run/agent.sock"),
            }),
            run_dir: self.p(vm).join("run"),
        }
    }

    fn paths(&self, spec: &VmSpec) -> FirecrackerPaths {
        FirecrackerPaths::direct(spec, &spec.run_dir.join("firecracker.log"))
    }

    fn files(&self) -> SnapshotPaths {
        SnapshotPaths {
            state: s(self.p("snap/vmstate")),
            memory: s(self.p("snap/memory")),
        }
    }

    /// A booted VM `a` on a fake API, with a handle pointing at it.
    async fn booted(&self) -> (Server, VmmHandle) {
        let server = Server::start(&self.p("a")).await;
        let spec = self.spec("a", "bgtap1");
        firecracker::configure(&server.client(), &spec, &self.paths(&spec), false)
            .await
            .unwrap();
        let handle = VmmHandle {
            id: spec.id.clone(),
            backend: Backend::Firecracker,
            backend_reason: "test".into(),
            pid: std::process::id(),
            start_time: banger_vmm::process_start_time(std::process::id()).unwrap(),
            control_socket: server.socket.clone(),
            agent: None,
            serial_log: spec.serial_log.clone(),
            vmm_log: spec.run_dir.join("firecracker.log"),
            run_dir: spec.run_dir.clone(),
            pidfile: None,
            jail_dir: None,
        };
        (server, handle)
    }
}

/// Runs only when the restore test starts this executable as its "firecracker".
#[tokio::test]
#[ignore = "helper process for the restore test, started by it"]
async fn fake_firecracker_process() {
    common::fake_fc::run_fake_process().await;
}

fn s(p: PathBuf) -> String {
    p.to_string_lossy().into_owned()
}

fn req(method: &str, path: &str, body: serde_json::Value) -> Seen {
    Seen {
        method: method.into(),
        path: path.into(),
        body,
    }
}

/// The requests after configuration and InstanceStart.
fn after_boot(server: &Server) -> Vec<Seen> {
    let seen = server.seen();
    let start = seen
        .iter()
        .position(|r| r.path == "/actions")
        .expect("the VM was booted");
    seen[start + 1..].to_vec()
}

#[tokio::test]
async fn save_snapshot_pauses_then_creates_a_full_snapshot() {
    let fx = Fixture::new();
    let (server, handle) = fx.booted().await;

    handle.save_snapshot(&fx.p("snap")).await.unwrap();

    assert_eq!(server.violations(), Vec::<String>::new());
    assert_eq!(
        after_boot(&server),
        [
            req("PATCH", "/vm", json!({"state": "Paused"})),
            req(
                "PUT",
                "/snapshot/create",
                json!({
                    "snapshot_type": "Full",
                    "snapshot_path": s(fx.p("snap/vmstate")),
                    "mem_file_path": s(fx.p("snap/memory")),
                })
            ),
        ]
    );
    assert_eq!(
        firecracker::snapshot_files(&fx.p("snap")),
        (fx.p("snap/vmstate"), fx.p("snap/memory"))
    );
    assert!(fx.p("snap/vmstate").is_file() && fx.p("snap/memory").is_file());
    // It stays paused until resumed.
    let status = handle.status().await.unwrap();
    assert_eq!(status.state, VmState::Paused);
    handle.resume().await.unwrap();
    assert_eq!(handle.status().await.unwrap().state, VmState::Running);
    assert_eq!(
        server.seen().last().unwrap(),
        &req("GET", "/", serde_json::Value::Null)
    );
    assert_eq!(
        server.seen()[server.seen().len() - 2],
        req("PATCH", "/vm", json!({"state": "Resumed"}))
    );
}

#[tokio::test]
async fn restore_calls_load_on_the_new_vms_own_tap_socket_and_disks() {
    let fx = Fixture::new();
    let (_a, handle) = fx.booted().await;
    handle.save_snapshot(&fx.p("snap")).await.unwrap();

    // VM b: its own tap, run dir (agent socket, log) and disks.
    let server = Server::start(&fx.p("b")).await;
    let spec = fx.spec("b", "bgtap2");
    let calls =
        firecracker::api::snapshot_restore_calls(&spec, &fx.paths(&spec), &fx.files(), false);
    server.client().run(&calls).await.unwrap();

    assert_eq!(server.violations(), Vec::<String>::new());
    assert_eq!(
        server.seen(),
        [
            req(
                "PUT",
                "/logger",
                json!({"log_path": s(fx.p("b/run/firecracker.log")), "level": "Info", "show_level": true, "show_log_origin": false})
            ),
            req(
                "PUT",
                "/snapshot/load",
                json!({
                    "snapshot_path": s(fx.p("snap/vmstate")),
                    "mem_backend": {"backend_type": "File", "backend_path": s(fx.p("snap/memory"))},
                    "resume_vm": false,
                    "network_overrides": [{"iface_id": "eth0", "host_dev_name": "bgtap2"}],
                    "vsock_override": {"uds_path": s(fx.p("b/run/agent.sock"))},
                })
            ),
            req(
                "PATCH",
                "/drives/root",
                json!({"drive_id": "root", "path_on_host": s(fx.p("b/root.ext4"))})
            ),
            req(
                "PATCH",
                "/drives/work",
                json!({"drive_id": "work", "path_on_host": s(fx.p("b/work.ext4"))})
            ),
            req("PATCH", "/vm", json!({"state": "Resumed"})),
        ]
    );
    let info = server.client().instance_info().await.unwrap();
    assert_eq!(info.state, "Running");
}

#[tokio::test]
async fn a_paused_restore_waits_and_a_vm_without_net_or_agent_sends_no_overrides() {
    let fx = Fixture::new();
    let (_a, handle) = fx.booted().await;
    handle.save_snapshot(&fx.p("snap")).await.unwrap();

    let server = Server::start(&fx.p("b")).await;
    let mut spec = fx.spec("b", "bgtap2");
    spec.net = None;
    spec.agent = None;
    let calls =
        firecracker::api::snapshot_restore_calls(&spec, &fx.paths(&spec), &fx.files(), true);
    server.client().run(&calls).await.unwrap();

    assert_eq!(server.violations(), Vec::<String>::new());
    let seen = server.seen();
    assert_eq!(
        seen.iter().map(|r| r.path.as_str()).collect::<Vec<_>>(),
        ["/logger", "/snapshot/load", "/drives/root", "/drives/work"]
    );
    let load = &seen[1].body;
    assert!(load.get("network_overrides").is_none(), "{load}");
    assert!(load.get("vsock_override").is_none(), "{load}");
    assert_eq!(
        server.client().instance_info().await.unwrap().state,
        "Paused"
    );
}

#[tokio::test]
async fn snapshot_rules_are_enforced_and_rejections_name_the_endpoint() {
    let fx = Fixture::new();
    // Create on a running VM (not paused): rejected.
    let (server, _handle) = fx.booted().await;
    let create = firecracker::api::snapshot_create_calls(&fx.files());
    let err = server.client().run(&create[1..]).await.unwrap_err();
    match err {
        ApiError::Rejected {
            endpoint, status, ..
        } => assert_eq!(
            (endpoint.as_str(), status.as_u16()),
            ("/snapshot/create", 400)
        ),
        other => panic!("unexpected {other:?}"),
    }

    // Load on a process that was configured for a boot: rejected, and the
    // error says which request failed.
    let server = Server::start(&fx.p("b")).await;
    let spec = fx.spec("b", "bgtap2");
    let client = server.client();
    client
        .run(&firecracker::api::configuration_calls(
            &spec,
            &fx.paths(&spec),
        ))
        .await
        .unwrap();
    let calls =
        firecracker::api::snapshot_restore_calls(&spec, &fx.paths(&spec), &fx.files(), false);
    let err = client.run(&calls).await.unwrap_err();
    assert!(
        matches!(&err, ApiError::Rejected { endpoint, .. } if endpoint == "/snapshot/load"),
        "{err:?}"
    );
    assert!(err.to_string().contains("PUT /snapshot/load"), "{err}");
    // Nothing was sent after the failing request.
    assert_eq!(server.seen().last().unwrap().path, "/snapshot/load");
}

/// `Vmm::restore` end to end: spawn, socket wait, the restore sequence,
/// handle; the fake process is this test executable (see
/// `firecracker_launch.rs`).
#[tokio::test]
async fn vmm_restore_spawns_and_loads_and_refuses_what_it_cannot_do() {
    let fx = Fixture::new();
    let (_a, handle) = fx.booted().await;
    handle.save_snapshot(&fx.p("snap")).await.unwrap();

    let fake = fx.p("fake-firecracker");
    std::fs::write(
        &fake,
        format!(
            "#!/bin/sh\nFAKE_FC_ARGS=\"$*\" exec {} fake_firecracker_process --exact --ignored --nocapture --test-threads=1\n",
            std::env::current_exe().unwrap().display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    let vmm = Vmm::new(
        BackendConfig::Firecracker(FirecrackerConfig {
            binary: fake.clone(),
            jailer: None,
        }),
        "test: fake Firecracker",
    );

    // No snapshot there: nothing is started.
    let spec = fx.spec("b", "bgtap2");
    let err = vmm
        .restore(&spec, &fx.p("b"), &LaunchOptions::default())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, VmmError::Io { path, .. } if *path == fx.p("b/vmstate")),
        "{err:?}"
    );
    assert!(!fx.p("b/run/firecracker.sock").exists());

    let restored = vmm
        .restore(&spec, &fx.p("snap"), &LaunchOptions::default())
        .await
        .unwrap();
    let _guard = KillOnDrop {
        pid: restored.pid,
        start_time: restored.start_time,
    };
    assert!(restored.is_alive());
    assert_eq!(VmmHandle::load(&spec.run_dir).unwrap(), restored);
    let text = std::fs::read_to_string(fx.p("b/run/requests.json")).unwrap();
    let list: Vec<serde_json::Value> = serde_json::from_str(&text).unwrap();
    let paths: Vec<&str> = list.iter().map(|r| r["path"].as_str().unwrap()).collect();
    assert_eq!(
        paths,
        [
            "/logger",
            "/snapshot/load",
            "/drives/root",
            "/drives/work",
            "/vm"
        ]
    );
    assert_eq!(restored.status().await.unwrap().state, VmState::Running);
    // Restoring over a live VM is refused like launching over one.
    let err = vmm
        .restore(&spec, &fx.p("snap"), &LaunchOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(err, VmmError::AlreadyRunning { .. }), "{err:?}");
    restored.kill().await.unwrap();

    // Jailed: its chroot cannot see the snapshot; refused before spawning.
    let jailed = Vmm::new(
        BackendConfig::Firecracker(FirecrackerConfig {
            binary: fake,
            jailer: Some(JailerConfig {
                binary: fx.p("jailer"),
                uid: 1000,
                gid: 1000,
                chroot_base_dir: fx.p("jail"),
                netns: None,
            }),
        }),
        "test",
    );
    let spec = fx.spec("a", "bgtap3");
    let err = jailed
        .restore(&spec, &fx.p("snap"), &LaunchOptions::default())
        .await
        .unwrap_err();
    assert!(
        matches!(err, VmmError::SnapshotUnsupported { .. }),
        "{err:?}"
    );
}
