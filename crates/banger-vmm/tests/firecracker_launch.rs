//! `Vmm::launch` with the Firecracker backend, end to end through process
//! spawning: the "firecracker" binary is a script that re-runs this test
//! executable as a fake Firecracker process serving the checking API server
//! of `tests/common/fake_fc.rs` on the `--api-sock` it was given. (The
//! request-level checks live in `firecracker_api.rs`; this covers spawn,
//! socket wait, stdout → serial log, handle, status, shutdown and the
//! failure paths.)

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use banger_vmm::{
    AgentEndpoint, AgentSpec, Backend, BackendConfig, DriveSpec, FirecrackerConfig, LaunchOptions,
    NetSpec, ShutdownOutcome, VmSpec, VmState, Vmm, VmmError, VmmHandle,
};
use common::{wait_for_text, KillOnDrop};

/// Runs only when a launch test starts this executable as its "firecracker".
#[tokio::test]
#[ignore = "helper process for the launch tests, started by them"]
async fn fake_firecracker_process() {
    common::fake_fc::run_fake_process().await;
}

struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        for f in ["vmlinux", "root.ext4"] {
            std::fs::write(dir.path().join(f), b"x").unwrap();
        }
        std::fs::create_dir(dir.path().join("run")).unwrap();
        Fixture { dir }
    }

    fn p(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A "firecracker" that runs the fake with extra environment.
    fn fake_binary(&self, env: &str) -> PathBuf {
        let exe = std::env::current_exe().unwrap();
        self.script(
            "fake-firecracker",
            &format!(
                "FAKE_FC_ARGS=\"$*\" {env} exec {} fake_firecracker_process --exact --ignored --nocapture --test-threads=1\n",
                exe.display()
            ),
        )
    }

    fn script(&self, name: &str, body: &str) -> PathBuf {
        let path = self.p(name);
        std::fs::write(&path, format!("#!/bin/sh\n{body}")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    fn spec(&self) -> VmSpec {
        VmSpec {
            id: "vm-1".into(),
            name: "fc".into(),
            vcpu: 2,
            memory_mib: 512,
            kernel: self.p("vmlinux"),
            initrd: None,
            cmdline: "console=ttyS0 reboot=k panic=1".into(),
            drives: vec![DriveSpec {
                id: "root".into(),
                path: self.p("root.ext4"),
                read_only: false,
                is_root: true,
            }],
            net: Some(NetSpec {
                tap: "bgtap1".into(),
                mac: "02:fc:00:00:00:01".parse().unwrap(),
            }),
            serial_log: self.p("run/serial.log"),
            agent: Some(AgentSpec {
                guest_cid: 9,
                host_socket: self.p("run/agent.sock"),
            }),
            run_dir: self.p("run"),
        }
    }

    fn vmm(&self, binary: PathBuf) -> Vmm {
        Vmm::new(
            BackendConfig::Firecracker(FirecrackerConfig {
                binary,
                jailer: None,
            }),
            "test: fake Firecracker",
        )
    }
}

fn guard(h: &VmmHandle) -> KillOnDrop {
    KillOnDrop {
        pid: h.pid,
        start_time: h.start_time,
    }
}

fn recorded_paths(run: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(run.join("requests.json")).unwrap();
    let list: Vec<serde_json::Value> = serde_json::from_str(&text).unwrap();
    list.iter()
        .map(|r| r["path"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn launch_configures_boots_and_shuts_down_gracefully() {
    let fx = Fixture::new();
    let spec = fx.spec();
    let vmm = fx.vmm(fx.fake_binary(""));
    let handle = vmm.launch(&spec, &LaunchOptions::default()).await.unwrap();
    let _guard = guard(&handle);

    assert_eq!(handle.backend, Backend::Firecracker);
    assert_eq!(handle.control_socket, fx.p("run/firecracker.sock"));
    assert_eq!(
        handle.agent,
        Some(AgentEndpoint::Vsock {
            uds_path: fx.p("run/agent.sock"),
            guest_cid: 9,
            port: banger_vmm::AGENT_VSOCK_PORT,
        })
    );
    assert!(handle.is_alive());
    let ours = banger_vmm::process::session_of(std::process::id()).unwrap();
    assert_ne!(banger_vmm::process::session_of(handle.pid).unwrap(), ours);
    assert_eq!(
        recorded_paths(&spec.run_dir),
        [
            "/logger",
            "/machine-config",
            "/boot-source",
            "/drives/root",
            "/network-interfaces/eth0",
            "/vsock",
            "/actions"
        ]
    );
    assert!(fx.p("run/firecracker.log").exists());
    let serial = wait_for_text(
        &spec.serial_log,
        "fake-firecracker vm-1 console",
        Duration::from_secs(30),
    )
    .await;
    assert!(
        serial.contains("fake-firecracker vm-1 console"),
        "{serial:?}"
    );

    let status = handle.status().await.unwrap();
    assert_eq!(
        (status.state, status.detail.as_str()),
        (VmState::Running, "Running")
    );
    assert_eq!(VmmHandle::load(&spec.run_dir).unwrap(), handle);

    let outcome = handle.shutdown(Duration::from_secs(30)).await.unwrap();
    assert_eq!(outcome, ShutdownOutcome::Graceful);
    assert!(!handle.is_alive());
    for leftover in ["firecracker.sock", "vmm.json"] {
        assert!(
            !fx.p("run").join(leftover).exists(),
            "{leftover} left behind"
        );
    }
}

#[tokio::test]
async fn a_guest_ignoring_ctrl_alt_del_is_killed_after_the_grace_period() {
    let fx = Fixture::new();
    let spec = fx.spec();
    let vmm = fx.vmm(fx.fake_binary("FAKE_FC_IGNORE_CAD=1"));
    let handle = vmm.launch(&spec, &LaunchOptions::default()).await.unwrap();
    let _guard = guard(&handle);
    let outcome = handle.shutdown(Duration::from_millis(300)).await.unwrap();
    assert_eq!(outcome, ShutdownOutcome::Killed);
    assert!(!handle.is_alive());
}

#[tokio::test]
async fn a_rejected_configuration_fails_launch_and_kills_the_process() {
    let fx = Fixture::new();
    let spec = fx.spec();
    let vmm = fx.vmm(fx.fake_binary("FAKE_FC_FAIL=/boot-source"));
    let err = vmm
        .launch(&spec, &LaunchOptions::default())
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, VmmError::FirecrackerApi(_)), "{text}");
    assert!(text.contains("PUT /boot-source"), "{text}");
    assert!(text.contains("injected failure"), "{text}");
    assert!(!fx.p("run/vmm.json").exists());
    // The half-launched process got SIGKILL: its API socket stops answering.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while tokio::net::UnixStream::connect(fx.p("run/firecracker.sock"))
        .await
        .is_ok()
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "fake Firecracker still serving"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn startup_failures_are_reported() {
    let fx = Fixture::new();
    let spec = fx.spec();

    let err = fx
        .vmm(fx.p("no-such-firecracker"))
        .launch(&spec, &LaunchOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(err, VmmError::Spawn { .. }), "{err}");
    assert!(err.to_string().contains("no-such-firecracker"), "{err}");

    // Exits at once, printing why (stderr goes to the serial log).
    let failing = fx.script("fc-fails", "echo 'bad kvm' >&2; exit 3\n");
    let err = fx
        .vmm(failing)
        .launch(&spec, &LaunchOptions::default())
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, VmmError::ExitedEarly { .. }), "{text}");
    assert!(text.contains("bad kvm"), "{text}");

    // Never creates its socket: timed out and killed.
    let pidfile = fx.p("hang.pid");
    let hanging = fx.script(
        "fc-hangs",
        &format!("echo $$ > {}\nexec sleep 600\n", pidfile.display()),
    );
    let opts = LaunchOptions {
        api_timeout: Duration::from_millis(300),
        ..LaunchOptions::default()
    };
    let err = fx.vmm(hanging).launch(&spec, &opts).await.unwrap_err();
    assert!(matches!(err, VmmError::StartupTimeout { .. }), "{err}");
    let pid: u32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let gone = match banger_vmm::process::proc_stat(pid) {
            Err(_) => true,
            Ok(stat) => stat.state == 'Z',
        };
        if gone {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "hanging VMM {pid} was not killed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
