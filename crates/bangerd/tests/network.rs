//! The root helper path: a per-user daemon run as root spawns `bangerd-root`
//! as its child and streams host network setup/teardown through it. Runs
//! inside a network namespace the test creates (and always deletes); a daemon
//! without root gets `helper_unavailable`.

mod common;
mod vm_records;

use std::os::unix::process::CommandExt;
use std::process::Command;

use banger_cli::client::{ClientError, PlainRenderer};
use banger_wire::api::{
    ErrorCode, NetworkReport, NetworkSetupRequest, NetworkTeardownRequest, StreamEvent,
};
use common::{curl, wait_pid_gone, Daemon, TestEnv};

/// A network namespace deleted on drop, even when the test fails.
struct Netns {
    name: String,
}

impl Netns {
    fn new() -> Netns {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!("bangerd-t{}-{n}", std::process::id());
        run("ip", &["netns", "add", &name]);
        let ns = Netns { name };
        run("ip", &["-n", &ns.name, "link", "set", "lo", "up"]);
        ns
    }

    /// `ip -n NS ARGS...` output, or None when it failed.
    fn ip(&self, args: &[&str]) -> Option<String> {
        output(Command::new("ip").args(["-n", &self.name]).args(args))
    }

    fn nft(&self, args: &[&str]) -> Option<String> {
        output(
            Command::new("ip")
                .args(["netns", "exec", &self.name, "nft"])
                .args(args),
        )
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

fn output(cmd: &mut Command) -> Option<String> {
    let out = cmd.output().expect("run command");
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn run(program: &str, args: &[&str]) {
    let out = Command::new(program).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn child_helper_sets_up_and_tears_down_the_network_in_a_netns() {
    if !common::privileged("child_helper_sets_up_and_tears_down_the_network_in_a_netns") {
        return;
    }
    let ns = Netns::new();
    let env = TestEnv::new();
    let mut cmd = env.command("ip");
    cmd.args(["netns", "exec", &ns.name])
        .arg(common::daemon_bin());
    let mut daemon = Daemon::start_with(&env, cmd).await;
    let client = daemon.client();

    // `ip netns exec` execs in place, so the pid is bangerd's own.
    let status = client.status().await.unwrap();
    assert_eq!(status.pid, daemon.pid());
    let helper = status.root_helper.expect("a root helper child");
    let helper_pid: u32 = helper
        .strip_prefix("child pid ")
        .expect(&helper)
        .parse()
        .unwrap();
    let comm = std::fs::read_to_string(format!("/proc/{helper_pid}/comm")).unwrap();
    assert_eq!(comm.trim(), "bangerd-root");

    let mut render = PlainRenderer::new(Vec::new());
    let result = client
        .stream(
            "/v1/network/setup",
            &NetworkSetupRequest::default(),
            &mut render,
        )
        .await
        .unwrap_or_else(|e| panic!("setup failed: {e}; log:\n{}", env.log()));
    let report: NetworkReport = serde_json::from_value(result).unwrap();
    assert!(report.changed && report.nat);
    assert_eq!(report.address, "172.16.0.1/24");
    let lines = String::from_utf8(render.into_inner()).unwrap();
    assert!(
        lines.contains("[bridge] ensuring bridge banger0 with address 172.16.0.1/24\n"),
        "{lines}"
    );
    assert!(lines.contains("[nat] "), "{lines}");

    let addr = ns
        .ip(&["-br", "addr", "show", "dev", "banger0"])
        .expect("bridge exists");
    assert!(addr.contains("172.16.0.1/24"), "{addr}");
    let table = ns
        .nft(&["list", "table", "inet", "banger"])
        .expect("nft table exists");
    assert!(table.contains("masquerade"), "{table}");
    // Fenced by default: guests kept apart on the bridge.
    let bridge_table = ns
        .nft(&["list", "table", "bridge", "banger"])
        .expect("nft bridge table exists");
    assert!(bridge_table.contains("drop"), "{bridge_table}");

    // Idempotent: the second run changes nothing.
    let mut quiet = PlainRenderer::new(Vec::new());
    let again = client
        .stream(
            "/v1/network/setup",
            &NetworkSetupRequest::default(),
            &mut quiet,
        )
        .await
        .unwrap();
    assert!(
        !serde_json::from_value::<NetworkReport>(again)
            .unwrap()
            .changed
    );

    // A running VM keeps the bridge: teardown is refused, naming it, and
    // nothing is removed; `force` tears down anyway.
    let db = banger_state::StateDb::open(&env.layout.database()).unwrap();
    db.insert_vm(&vm_records::record(
        "busy",
        1,
        None,
        banger_state::VmState::Running,
    ))
    .unwrap();
    let (code, body) = curl(
        &env.socket(),
        &["-X", "POST", "-d", "{}", "http://x/v1/network/teardown"],
    );
    assert_eq!(code, 409, "{body}");
    assert!(
        body.contains("VMs still run on the bridge (busy)") && body.contains("--force"),
        "{body}"
    );
    assert!(ns.ip(&["link", "show", "dev", "banger0"]).is_some());

    let mut render = PlainRenderer::new(Vec::new());
    let down = client
        .stream(
            "/v1/network/teardown",
            &NetworkTeardownRequest { force: true },
            &mut render,
        )
        .await
        .unwrap();
    db.delete_vm(&vm_records::record("busy", 1, None, banger_state::VmState::Running).id)
        .unwrap();
    assert!(
        serde_json::from_value::<NetworkReport>(down)
            .unwrap()
            .changed
    );
    assert!(
        ns.ip(&["link", "show", "dev", "banger0"]).is_none(),
        "bridge still there"
    );
    for family in ["inet", "bridge"] {
        assert!(
            ns.nft(&["list", "table", family, "banger"]).is_none(),
            "nft table {family} banger still there"
        );
    }

    // The same stream through curl: NDJSON lines ending in one Done.
    let (code, body) = curl(
        &env.socket(),
        &[
            "-N",
            "-X",
            "POST",
            "-d",
            r#"{"nat":false}"#,
            "http://x/v1/network/setup",
        ],
    );
    assert_eq!(code, 200, "{body}");
    let events: Vec<StreamEvent> = body
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(
        matches!(events.first(), Some(StreamEvent::Progress { .. })),
        "{body}"
    );
    assert!(
        matches!(events.last(), Some(StreamEvent::Done { .. })),
        "{body}"
    );
    assert!(ns.ip(&["link", "show", "dev", "banger0"]).is_some());
    assert!(
        ns.nft(&["list", "table", "inet", "banger"]).is_none(),
        "nat was not asked for"
    );
    let mut quiet = PlainRenderer::new(Vec::new());
    client
        .stream("/v1/network/teardown", &serde_json::json!({}), &mut quiet)
        .await
        .unwrap();
    assert!(ns.ip(&["link", "show", "dev", "banger0"]).is_none());

    // The helper dies with the daemon, even when the daemon is killed.
    daemon.child.kill().unwrap();
    daemon.wait_exit();
    assert!(
        wait_pid_gone(helper_pid),
        "helper {helper_pid} outlived the daemon"
    );
}

#[tokio::test]
async fn without_root_the_network_routes_say_how_to_get_a_helper() {
    let env = TestEnv::new();
    let mut cmd = env.command(common::daemon_bin());
    if nix::unistd::geteuid().is_root() {
        // Run the daemon as `nobody` in a tree it owns.
        let nobody = 65534;
        let out = Command::new("chown")
            .args(["-R", &format!("{nobody}:{nobody}")])
            .arg(env.dir.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        cmd.uid(nobody).gid(nobody);
    }
    let daemon = Daemon::start_with(&env, cmd).await;
    let client = daemon.client();
    assert_eq!(client.status().await.unwrap().root_helper, None);

    let mut render = PlainRenderer::new(Vec::new());
    let err = client
        .stream(
            "/v1/network/setup",
            &NetworkSetupRequest::default(),
            &mut render,
        )
        .await
        .unwrap_err();
    match err {
        ClientError::Api { status, error, .. } => {
            assert_eq!((status, error.code), (503, ErrorCode::HelperUnavailable));
            assert!(
                error.message.contains("sudo banger system install"),
                "{}",
                error.message
            );
        }
        other => panic!("expected helper_unavailable, got {other:?}"),
    }
    assert!(
        render.into_inner().is_empty(),
        "nothing streamed before the error"
    );
}
