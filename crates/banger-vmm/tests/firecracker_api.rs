//! The Firecracker configuration sequence, request by request, against a
//! Unix-socket HTTP server that checks each request the way Firecracker's
//! API does: bodies against the shapes in Firecracker's OpenAPI spec
//! (`src/firecracker/swagger/firecracker.yaml`, transcribed in
//! `tests/common/fake_fc.rs` independently of banger's own structs), pre-boot-only endpoints, the
//! boot-source-before-InstanceStart rule, and `{"fault_message": ...}`
//! errors.

mod common;

use std::path::PathBuf;

use banger_vmm::firecracker::{self, ActionType, ApiClient, ApiError, FirecrackerPaths};
use banger_vmm::{AgentSpec, DriveSpec, NetSpec, VmSpec};
use common::fake_fc::Server;
use serde_json::{json, Value};

struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        for f in ["vmlinux", "initrd", "root.ext4", "work.ext4"] {
            std::fs::write(dir.path().join(f), b"x").unwrap();
        }
        std::fs::create_dir(dir.path().join("run")).unwrap();
        Fixture { dir }
    }

    fn p(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn full_spec(&self) -> VmSpec {
        VmSpec {
            id: "vm-1".into(),
            name: "dev".into(),
            vcpu: 2,
            memory_mib: 1024,
            kernel: self.p("vmlinux"),
            initrd: Some(self.p("initrd")),
            cmdline: "console=ttyS0 reboot=k panic=1".into(),
            // Work disk listed first on purpose: the root drive must still go first.
            drives: vec![
                DriveSpec {
                    id: "work".into(),
                    path: self.p("work.ext4"),
                    read_only: false,
                    is_root: false,
                },
                DriveSpec {
                    id: "root".into(),
                    path: self.p("root.ext4"),
                    read_only: true,
                    is_root: true,
                },
            ],
            net: Some(NetSpec {
                tap: "bgtap3".into(),
                mac: "02:fc:00:00:00:03".parse().unwrap(),
            }),
            serial_log: self.p("run/serial.log"),
            agent: Some(AgentSpec {
                guest_cid: 7,
                host_socket: self.p("run/agent.sock"),
            }),
            run_dir: self.p("run"),
        }
    }

    fn paths(&self, spec: &VmSpec) -> FirecrackerPaths {
        FirecrackerPaths::direct(spec, &self.p("run/firecracker.log"))
    }
}

fn s(p: PathBuf) -> String {
    p.to_string_lossy().into_owned()
}

#[tokio::test]
async fn full_configuration_sequence_matches_the_documented_api() {
    let fx = Fixture::new();
    let server = Server::start(fx.dir.path()).await;
    let spec = fx.full_spec();
    spec.validate().unwrap();

    firecracker::configure(&server.client(), &spec, &fx.paths(&spec), false)
        .await
        .unwrap();

    assert_eq!(server.violations(), Vec::<String>::new());
    let expected = [
        (
            "/logger",
            json!({"log_path": s(fx.p("run/firecracker.log")), "level": "Info", "show_level": true, "show_log_origin": false}),
        ),
        (
            "/machine-config",
            json!({"vcpu_count": 2, "mem_size_mib": 1024, "smt": false}),
        ),
        (
            "/boot-source",
            json!({"kernel_image_path": s(fx.p("vmlinux")), "initrd_path": s(fx.p("initrd")), "boot_args": "console=ttyS0 reboot=k panic=1"}),
        ),
        (
            "/drives/root",
            json!({"drive_id": "root", "path_on_host": s(fx.p("root.ext4")), "is_root_device": true, "is_read_only": true}),
        ),
        (
            "/drives/work",
            json!({"drive_id": "work", "path_on_host": s(fx.p("work.ext4")), "is_root_device": false, "is_read_only": false}),
        ),
        (
            "/network-interfaces/eth0",
            json!({"iface_id": "eth0", "host_dev_name": "bgtap3", "guest_mac": "02:fc:00:00:00:03"}),
        ),
        (
            "/vsock",
            json!({"guest_cid": 7, "uds_path": s(fx.p("run/agent.sock"))}),
        ),
        ("/actions", json!({"action_type": "InstanceStart"})),
    ];
    let seen = server.seen();
    let got: Vec<(&str, &Value)> = seen.iter().map(|r| (r.path.as_str(), &r.body)).collect();
    let want: Vec<(&str, &Value)> = expected.iter().map(|(p, b)| (*p, b)).collect();
    assert_eq!(got, want);
    assert!(seen.iter().all(|r| r.method == "PUT"));

    // After boot: the state reads Running and Ctrl+Alt+Del is accepted.
    let info = server.client().instance_info().await.unwrap();
    assert_eq!(info.state, "Running");
    assert_eq!(
        firecracker::map_state(&info.state),
        banger_vmm::VmState::Running
    );
    server
        .client()
        .action(ActionType::SendCtrlAltDel)
        .await
        .unwrap();
    assert_eq!(server.violations(), Vec::<String>::new());
}

#[tokio::test]
async fn minimal_spec_sends_no_optional_devices() {
    let fx = Fixture::new();
    let server = Server::start(fx.dir.path()).await;
    let mut spec = fx.full_spec();
    spec.initrd = None;
    spec.net = None;
    spec.agent = None;
    spec.drives.retain(|d| d.is_root);

    firecracker::configure(&server.client(), &spec, &fx.paths(&spec), false)
        .await
        .unwrap();

    assert_eq!(server.violations(), Vec::<String>::new());
    let seen = server.seen();
    let paths: Vec<&str> = seen.iter().map(|r| r.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "/logger",
            "/machine-config",
            "/boot-source",
            "/drives/root",
            "/actions"
        ]
    );
    assert_eq!(
        seen[2].body,
        json!({"kernel_image_path": s(fx.p("vmlinux")), "boot_args": "console=ttyS0 reboot=k panic=1"})
    );
}

#[tokio::test]
async fn start_paused_configures_everything_but_does_not_boot() {
    let fx = Fixture::new();
    let server = Server::start(fx.dir.path()).await;
    let spec = fx.full_spec();

    firecracker::configure(&server.client(), &spec, &fx.paths(&spec), true)
        .await
        .unwrap();
    assert!(server.seen().iter().all(|r| r.path != "/actions"));
    let info = server.client().instance_info().await.unwrap();
    assert_eq!(info.state, "Not started");
    assert_eq!(
        firecracker::map_state(&info.state),
        banger_vmm::VmState::NotStarted
    );

    // A later start is the InstanceStart action alone.
    server
        .client()
        .action(ActionType::InstanceStart)
        .await
        .unwrap();
    assert_eq!(
        server.client().instance_info().await.unwrap().state,
        "Running"
    );
    assert_eq!(server.violations(), Vec::<String>::new());
}

#[tokio::test]
async fn a_rejected_request_surfaces_with_its_endpoint_and_stops_the_sequence() {
    let fx = Fixture::new();
    let server = Server::start(fx.dir.path()).await;
    server.state.lock().unwrap().fail = Some((
        "/drives/root".into(),
        "Unable to create the block device: BackingFile(Os { code: 13 })".into(),
    ));
    let spec = fx.full_spec();

    let err = firecracker::configure(&server.client(), &spec, &fx.paths(&spec), false)
        .await
        .unwrap_err();

    match &err {
        ApiError::Rejected {
            endpoint,
            status,
            fault_message,
            ..
        } => {
            assert_eq!(endpoint, "/drives/root");
            assert_eq!(status.as_u16(), 400);
            assert_eq!(
                fault_message,
                "Unable to create the block device: BackingFile(Os { code: 13 })"
            );
        }
        other => panic!("expected Rejected, got {other:?}"),
    }
    let text = err.to_string();
    assert!(text.contains("PUT /drives/root"), "{text}");
    assert!(text.contains("BackingFile"), "{text}");
    let paths: Vec<String> = server.seen().into_iter().map(|r| r.path).collect();
    assert_eq!(
        paths,
        ["/logger", "/machine-config", "/boot-source", "/drives/root"],
        "nothing may be sent after a rejected request"
    );
}

#[tokio::test]
async fn the_fake_enforces_firecracker_ordering_rules() {
    // The server's own rules are what the sequence test relies on; show they bite.
    let fx = Fixture::new();
    let server = Server::start(fx.dir.path()).await;
    let err = server
        .client()
        .action(ActionType::InstanceStart)
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("PUT /actions was rejected by Firecracker (400 Bad Request): Cannot start microvm without kernel configuration."),
        "{err}"
    );
    let err = server
        .client()
        .put(
            "/vsock",
            &json!({"guest_cid": 3, "uds_path": "/x", "extra": 1}),
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("unknown field `extra`"), "{err}");

    let spec = fx.full_spec();
    firecracker::configure(&server.client(), &spec, &fx.paths(&spec), false)
        .await
        .unwrap();
    let err = server
        .client()
        .put(
            "/machine-config",
            &json!({"vcpu_count": 1, "mem_size_mib": 128}),
        )
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("after starting the microVM"),
        "{err}"
    );
}

#[tokio::test]
async fn connection_failure_names_the_socket() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("missing.sock");
    let err = ApiClient::new(&socket).instance_info().await.unwrap_err();
    assert!(matches!(err, ApiError::Connect { .. }));
    assert!(err.to_string().contains("missing.sock"), "{err}");
}
