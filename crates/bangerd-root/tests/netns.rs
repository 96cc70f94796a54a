//! The real `bangerd-root` binary in a network namespace of its own, driven
//! over its socket. Needs root; skips (or fails with
//! `BANGER_REQUIRE_PRIVILEGED=1`) otherwise. Every test creates its own
//! namespace and temp dirs and removes them even when it fails.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use banger_helper_client::{ClientError, HelperClient};
use banger_wire::helper::{
    GuestFence, HelperErrorCode, HelperReply, HelperRequest, HelperResponse,
};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_bangerd-root");
const CIDR: &str = "172.16.0.0/24";
const NOBODY: u32 = 65534;

fn privileged() -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    assert!(
        std::env::var("BANGER_REQUIRE_PRIVILEGED").as_deref() != Ok("1"),
        "BANGER_REQUIRE_PRIVILEGED=1 but these tests are not running as root"
    );
    eprintln!("skipping: network namespaces, bridges and taps need root");
    false
}

fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A network namespace deleted on drop.
struct Netns {
    name: String,
}

impl Netns {
    fn new() -> Netns {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "banger-test-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        run(Command::new("ip").args(["netns", "add", &name]));
        Netns { name }
    }

    fn cmd(&self, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name, program]);
        cmd
    }

    fn exec(&self, program: &str, args: &[&str]) -> String {
        run(self.cmd(program).args(args))
    }

    fn json(&self, program: &str, args: &[&str]) -> Value {
        serde_json::from_str(&self.exec(program, args)).unwrap()
    }

    /// Links with what may change: kind, flags, master, IPv4 addresses.
    fn links(&self) -> Vec<Value> {
        let links = self.json("ip", &["-j", "-d", "addr", "show"]);
        let mut out: Vec<Value> = links
            .as_array()
            .unwrap()
            .iter()
            .map(|l| {
                let addrs: Vec<String> = l["addr_info"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|a| a["family"] == "inet")
                    .map(|a| format!("{}/{}", a["local"].as_str().unwrap(), a["prefixlen"]))
                    .collect();
                serde_json::json!({
                    "name": l["ifname"],
                    "kind": l["linkinfo"]["info_kind"],
                    "flags": l["flags"],
                    "master": l["master"],
                    "addrs": addrs,
                })
            })
            .collect();
        out.sort_by_key(|v| v["name"].as_str().unwrap().to_owned());
        out
    }

    fn link(&self, name: &str) -> Option<Value> {
        self.links().into_iter().find(|l| l["name"] == name)
    }

    fn tables(&self) -> Vec<String> {
        let listed = self.json("nft", &["-j", "list", "tables"]);
        listed["nftables"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|o| o.get("table"))
            .map(|t| {
                format!(
                    "{} {}",
                    t["family"].as_str().unwrap(),
                    t["name"].as_str().unwrap()
                )
            })
            .collect()
    }

    fn tap_owner(&self, tap: &str) -> String {
        self.exec("cat", &[&format!("/sys/class/net/{tap}/owner")])
            .trim()
            .to_owned()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.name])
            .status();
    }
}

/// A running helper, killed on drop.
struct HelperProcess {
    child: Child,
}

impl Drop for HelperProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One helper in one namespace with its own dirs. Fields drop in order: the
/// helper before the namespace before the files.
struct Fixture {
    _helper: HelperProcess,
    ns: Netns,
    tmp: tempfile::TempDir,
    socket: PathBuf,
}

impl Fixture {
    fn start(owner_uid: u32) -> Fixture {
        let tmp = tempfile::tempdir().unwrap();
        for dir in ["state", "run", "outside"] {
            std::fs::create_dir(tmp.path().join(dir)).unwrap();
        }
        let ns = Netns::new();
        let socket = tmp.path().join("sock/bangerd-root.sock");
        let log = std::fs::File::create(tmp.path().join("helper.log")).unwrap();
        let child = ns
            .cmd(BIN)
            .arg("serve")
            .arg("--socket")
            .arg(&socket)
            .args(["--owner-uid", &owner_uid.to_string(), "--cidr", CIDR])
            .arg("--allowed-dir")
            .arg(tmp.path().join("state"))
            .arg("--allowed-dir")
            .arg(tmp.path().join("run"))
            // Whatever the caller's RUST_LOG: warnings must reach the log.
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut helper = HelperProcess { child };
        // Readiness wait, not a timing assertion: the socket appears once bound.
        for _ in 0..400 {
            if let Some(status) = helper.child.try_wait().unwrap() {
                let log = std::fs::read_to_string(tmp.path().join("helper.log")).unwrap();
                panic!("helper exited with {status}: {log}");
            }
            if std::os::unix::net::UnixStream::connect(&socket).is_ok() {
                return Fixture {
                    _helper: helper,
                    ns,
                    tmp,
                    socket,
                };
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        panic!("helper never listened on {}", socket.display());
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.tmp.path().join("helper.log")).unwrap()
    }

    fn dir(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }

    async fn client(&self) -> HelperClient {
        HelperClient::connect(&self.socket).await.unwrap()
    }

    /// Let another uid reach the socket through the temp dirs (0700 by default).
    fn open_dirs_to_everyone(&self) {
        for dir in [self.tmp.path(), self.socket.parent().unwrap()] {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
    }

    /// Send a raw request with the `request` subcommand as another uid.
    fn request_as(&self, uid: u32, json: &str) -> HelperReply {
        let out = Command::new(BIN)
            .arg("request")
            .arg("--socket")
            .arg(&self.socket)
            .arg(json)
            .uid(uid)
            .gid(uid)
            .output()
            .unwrap();
        let stdout = String::from_utf8(out.stdout).unwrap();
        let reply: HelperReply = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
            panic!(
                "no reply ({e}): stdout {stdout:?}, stderr {}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
        assert_eq!(out.status.success(), reply.is_ok());
        reply
    }
}

fn done(changed: bool) -> HelperResponse {
    HelperResponse::Done { changed }
}

fn ensure_bridge() -> HelperRequest {
    HelperRequest::EnsureBridge {
        name: "banger0".into(),
        address: "172.16.0.1/24".into(),
    }
}

fn create_tap(name: &str) -> HelperRequest {
    HelperRequest::CreateTap {
        name: name.into(),
        bridge: "banger0".into(),
    }
}

fn ensure_nat() -> HelperRequest {
    ensure_nat_with(GuestFence::default())
}

fn ensure_nat_with(fence: GuestFence) -> HelperRequest {
    HelperRequest::EnsureNat {
        bridge: "banger0".into(),
        cidr: CIDR.into(),
        address: "172.16.0.1/24".into(),
        fence,
    }
}

/// A fence using every kind of rule the helper writes (so the idempotence
/// checks cover how `nft` lists each of them back).
fn open_fence() -> GuestFence {
    GuestFence {
        allow_host_ports: vec![8080, 3000],
        allow_guest_to_guest: false,
        allow_link_local: false,
        deny_destinations: vec!["192.168.0.0/16".into(), "10.1.2.3/32".into()],
    }
}

fn teardown() -> HelperRequest {
    HelperRequest::TeardownAll {
        bridge: "banger0".into(),
    }
}

#[tokio::test]
async fn setup_creates_bridge_taps_and_table_and_teardown_removes_them() {
    if !privileged() {
        return;
    }
    let fx = Fixture::start(0);
    // A tap someone else made must survive banger's teardown.
    fx.ns
        .exec("ip", &["tuntap", "add", "dev", "othertap", "mode", "tap"]);
    let mut c = fx.client().await;

    assert_eq!(c.request(&ensure_bridge()).await.unwrap(), done(true));
    assert_eq!(
        c.request(&create_tap("banger-t0")).await.unwrap(),
        done(true)
    );
    assert_eq!(
        c.request(&create_tap("banger-t1")).await.unwrap(),
        done(true)
    );
    assert_eq!(c.request(&ensure_nat()).await.unwrap(), done(true));

    let bridge = fx.ns.link("banger0").expect("bridge exists");
    assert_eq!(bridge["kind"], "bridge");
    assert!(
        bridge["flags"].as_array().unwrap().contains(&"UP".into()),
        "{bridge}"
    );
    assert_eq!(bridge["addrs"], serde_json::json!(["172.16.0.1/24"]));
    for tap in ["banger-t0", "banger-t1"] {
        let link = fx.ns.link(tap).expect("tap exists");
        assert_eq!(link["kind"], "tun", "{link}");
        assert_eq!(link["master"], "banger0", "{link}");
        assert!(
            link["flags"].as_array().unwrap().contains(&"UP".into()),
            "{link}"
        );
        assert_eq!(fx.ns.tap_owner(tap), "0");
    }
    for t in ["inet banger", "bridge banger"] {
        assert!(
            fx.ns.tables().contains(&t.to_owned()),
            "{t}: {:?}",
            fx.ns.tables()
        );
    }
    let table = fx.ns.exec("nft", &["list", "table", "inet", "banger"]);
    assert!(
        table.contains("ip saddr 172.16.0.0/24 oifname != \"banger0\" masquerade"),
        "{table}"
    );
    // Fenced: the bridge's traffic ends in drops, never a blanket accept.
    assert!(!table.contains("iifname \"banger0\" accept"), "{table}");
    assert!(table.contains("iifname \"banger0\" drop"), "{table}");
    assert_eq!(
        fx.ns.exec("cat", &["/proc/sys/net/ipv4/ip_forward"]).trim(),
        "1"
    );

    assert_eq!(c.request(&teardown()).await.unwrap(), done(true));
    let left: Vec<String> = fx
        .ns
        .links()
        .iter()
        .map(|l| l["name"].as_str().unwrap().to_owned())
        .collect();
    assert!(!left.iter().any(|n| n.starts_with("banger")), "{left:?}");
    assert!(left.contains(&"othertap".to_owned()), "{left:?}");
    let tables = fx.ns.tables();
    assert!(!tables.iter().any(|t| t.ends_with(" banger")), "{tables:?}");
    // A clean run warns about nothing: in particular the netlink crates
    // parse this kernel's link attributes without complaint.
    let log = fx.log();
    assert!(!log.contains("WARN"), "{log}");
}

#[tokio::test]
async fn every_operation_is_idempotent_and_repairs_drift() {
    if !privileged() {
        return;
    }
    let fx = Fixture::start(0);
    let mut c = fx.client().await;
    let pairs = [
        (ensure_bridge(), true),
        (create_tap("banger-t3"), true),
        (ensure_nat(), true),
        (ensure_nat_with(open_fence()), true),
        (
            ensure_nat_with(GuestFence {
                allow_guest_to_guest: true,
                allow_link_local: true,
                ..open_fence()
            }),
            true,
        ),
        (ensure_nat(), true),
        (
            HelperRequest::DeleteTap {
                name: "banger-t3".into(),
            },
            true,
        ),
        (HelperRequest::RemoveNat, true),
        (create_tap("banger-t4"), true),
        (teardown(), true),
    ];
    for (req, first) in pairs {
        assert_eq!(c.request(&req).await.unwrap(), done(first), "first {req:?}");
        assert_eq!(
            c.request(&req).await.unwrap(),
            done(false),
            "second {req:?}"
        );
    }

    // Drift: an extra address and a downed bridge, a detached tap, a rule
    // slipped into banger's table. Each ensure repairs it once.
    c.request(&ensure_bridge()).await.unwrap();
    c.request(&create_tap("banger-t5")).await.unwrap();
    c.request(&ensure_nat()).await.unwrap();
    fx.ns
        .exec("ip", &["addr", "add", "172.16.0.9/24", "dev", "banger0"]);
    fx.ns.exec("ip", &["link", "set", "banger0", "down"]);
    fx.ns.exec("ip", &["link", "set", "banger-t5", "nomaster"]);
    fx.ns.exec(
        "nft",
        &[
            "add", "rule", "inet", "banger", "forward", "tcp", "dport", "22", "drop",
        ],
    );
    for req in [ensure_bridge(), create_tap("banger-t5"), ensure_nat()] {
        assert_eq!(c.request(&req).await.unwrap(), done(true), "repair {req:?}");
        assert_eq!(
            c.request(&req).await.unwrap(),
            done(false),
            "after repair {req:?}"
        );
    }
    assert_eq!(
        fx.ns.link("banger0").unwrap()["addrs"],
        serde_json::json!(["172.16.0.1/24"])
    );
    assert_eq!(fx.ns.link("banger-t5").unwrap()["master"], "banger0");
    let table = fx.ns.exec("nft", &["list", "table", "inet", "banger"]);
    assert!(!table.contains("dport 22"), "{table}");
}

#[tokio::test]
async fn tables_of_others_survive_every_operation() {
    if !privileged() {
        return;
    }
    let fx = Fixture::start(0);
    fx.ns.exec("nft", &["add", "table", "ip", "other"]);
    fx.ns.exec(
        "nft",
        &["add chain ip other passthrough { type filter hook forward priority 0; policy accept; }"],
    );
    fx.ns.exec(
        "nft",
        &[
            "add",
            "rule",
            "ip",
            "other",
            "passthrough",
            "ip",
            "saddr",
            "10.9.0.0/16",
            "accept",
        ],
    );
    let before = fx.ns.exec("nft", &["-j", "list", "table", "ip", "other"]);

    let mut c = fx.client().await;
    for req in [
        ensure_bridge(),
        ensure_nat(),
        HelperRequest::RemoveNat,
        ensure_nat(),
        ensure_nat(),
        teardown(),
    ] {
        c.request(&req).await.unwrap();
        assert!(
            fx.ns.tables().contains(&"ip other".to_owned()),
            "after {req:?}"
        );
    }
    assert_eq!(
        fx.ns.exec("nft", &["-j", "list", "table", "ip", "other"]),
        before
    );
}

#[tokio::test]
async fn invalid_requests_are_refused_clearly_and_change_nothing() {
    if !privileged() {
        return;
    }
    let fx = Fixture::start(0);
    let mut c = fx.client().await;
    c.request(&ensure_bridge()).await.unwrap();

    // Files that must keep their owner: outside targets owned by nobody.
    let outside = fx.dir("outside").join("precious");
    std::fs::write(&outside, b"x").unwrap();
    std::os::unix::fs::chown(&outside, Some(NOBODY), Some(NOBODY)).unwrap();
    let state = fx.dir("state");
    std::os::unix::fs::symlink(&outside, state.join("escape")).unwrap();
    std::os::unix::fs::symlink(fx.dir("outside"), state.join("escape-dir")).unwrap();
    std::fs::hard_link(&outside, state.join("hardlink")).unwrap();

    let links_before = fx.ns.links();
    let tables_before = fx.ns.tables();
    let s = state.display().to_string();
    let cases: Vec<(String, HelperErrorCode, &str)> = vec![
        (
            r#"{"op":"create_tap","name":"Banger-t0","bridge":"banger0"}"#.into(),
            HelperErrorCode::Invalid,
            "lowercase",
        ),
        (
            r#"{"op":"create_tap","name":"banger-t12345678","bridge":"banger0"}"#.into(),
            HelperErrorCode::Invalid,
            "1 to 15 characters",
        ),
        (
            r#"{"op":"create_tap","name":"tap0","bridge":"banger0"}"#.into(),
            HelperErrorCode::Invalid,
            "prefix",
        ),
        (
            r#"{"op":"create_tap","name":"banger;reboot","bridge":"banger0"}"#.into(),
            HelperErrorCode::Invalid,
            "lowercase",
        ),
        (
            r#"{"op":"create_tap","name":"banger$(id)","bridge":"banger0"}"#.into(),
            HelperErrorCode::Invalid,
            "lowercase",
        ),
        (
            r#"{"op":"create_tap","name":"banger-t0","bridge":"eth0"}"#.into(),
            HelperErrorCode::Invalid,
            "interface name \"eth0\"",
        ),
        (
            r#"{"op":"create_tap","name":"banger-t0","bridge":"banger9"}"#.into(),
            HelperErrorCode::Conflict,
            "bridge banger9 does not exist",
        ),
        (
            r#"{"op":"delete_tap","name":"banger0"}"#.into(),
            HelperErrorCode::Conflict,
            "is a bridge, not a tap",
        ),
        (
            r#"{"op":"delete_tap","name":"lo"}"#.into(),
            HelperErrorCode::Invalid,
            "prefix",
        ),
        (
            r#"{"op":"ensure_bridge","name":"banger0","address":"10.0.0.1/24"}"#.into(),
            HelperErrorCode::Invalid,
            "outside the configured range",
        ),
        (
            r#"{"op":"ensure_bridge","name":"banger0","address":"172.16.0.1/16"}"#.into(),
            HelperErrorCode::Invalid,
            "prefix /16 differs",
        ),
        (
            r#"{"op":"ensure_nat","bridge":"banger0","cidr":"0.0.0.0/0","address":"172.16.0.1/24"}"#.into(),
            HelperErrorCode::Invalid,
            "outside the configured range",
        ),
        (
            r#"{"op":"ensure_nat","bridge":"banger0","cidr":"172.16.0.0/16","address":"172.16.0.1/24"}"#.into(),
            HelperErrorCode::Invalid,
            "outside the configured range",
        ),
        (
            r#"{"op":"ensure_nat","bridge":"docker0","cidr":"172.16.0.0/24","address":"172.16.0.1/24"}"#.into(),
            HelperErrorCode::Invalid,
            "prefix",
        ),
        (
            r#"{"op":"ensure_nat","bridge":"banger0","cidr":"172.16.0.0/24","address":"10.0.0.1/24"}"#
                .into(),
            HelperErrorCode::Invalid,
            "outside the configured range",
        ),
        (
            r#"{"op":"ensure_nat","bridge":"banger0","cidr":"172.16.0.0/24","address":"172.16.0.1/24","fence":{"allow_host_ports":[0]}}"#
                .into(),
            HelperErrorCode::Invalid,
            "port 0",
        ),
        (
            r#"{"op":"ensure_nat","bridge":"banger0","cidr":"172.16.0.0/24","address":"172.16.0.1/24","fence":{"allow_host_ports":[70000]}}"#
                .into(),
            HelperErrorCode::Invalid,
            "malformed",
        ),
        (
            r#"{"op":"ensure_nat","bridge":"banger0","cidr":"172.16.0.0/24","address":"172.16.0.1/24","fence":{"deny_destinations":["10.0.0.1/8"]}}"#
                .into(),
            HelperErrorCode::Invalid,
            "host bits",
        ),
        (
            r#"{"op":"ensure_nat","bridge":"banger0","cidr":"172.16.0.0/24","address":"172.16.0.1/24","fence":{"deny_destinations":["0.0.0.0/0"]}}"#
                .into(),
            HelperErrorCode::Invalid,
            "every destination",
        ),
        (
            r#"{"op":"ensure_nat","bridge":"banger0","cidr":"172.16.0.0/24","address":"172.16.0.1/24","fence":{"deny_destinations":["1.2.3.4/32 accept"]}}"#
                .into(),
            HelperErrorCode::Invalid,
            "not an IPv4 network",
        ),
        (
            r#"{"op":"ensure_nat","bridge":"banger0","cidr":"172.16.0.0/24","address":"172.16.0.1/24","fence":{"allow_everything":true}}"#
                .into(),
            HelperErrorCode::Invalid,
            "unknown field",
        ),
        (
            r#"{"op":"teardown_all","bridge":"lo"}"#.into(),
            HelperErrorCode::Invalid,
            "prefix",
        ),
        // The operation was removed: nothing in banger sent it.
        (
            format!(r#"{{"op":"chown_to_owner","path":"{s}/escape"}}"#),
            HelperErrorCode::Invalid,
            "unknown variant `chown_to_owner`",
        ),
        (
            r#"{"op":"ensure_bridge","name":"banger0""#.into(),
            HelperErrorCode::Invalid,
            "malformed request",
        ),
        (
            r#"{"op":"run_command","cmd":"id"}"#.into(),
            HelperErrorCode::Invalid,
            "unknown variant `run_command`",
        ),
        (
            r#"{"op":"remove_nat","table":"filter"}"#.into(),
            HelperErrorCode::Invalid,
            "unknown field `table`",
        ),
    ];
    for (line, code, needle) in &cases {
        let err = c.request_line(line).await.unwrap().expect_err(line);
        assert_eq!(err.code, *code, "{line}: {}", err.message);
        assert!(err.message.contains(needle), "{line}: {}", err.message);
    }
    assert_eq!(
        c.request(&HelperRequest::Ping).await.unwrap(),
        HelperResponse::Pong {
            version: banger_wire::VERSION.into(),
            owner_uid: 0,
        }
    );

    let mut big = fx.client().await;
    let huge = format!(r#"{{"op":"ping","x":"{}"}}"#, "a".repeat(70_000));
    let err = big.request_line(&huge).await.unwrap().unwrap_err();
    assert!(
        err.message.contains("exceeds 65536 bytes"),
        "{}",
        err.message
    );

    assert_eq!(fx.ns.links(), links_before);
    assert_eq!(fx.ns.tables(), tables_before);
    assert_eq!(std::fs::metadata(&outside).unwrap().uid(), NOBODY);
}

#[tokio::test]
async fn the_owner_is_served_and_every_other_uid_is_rejected() {
    if !privileged() {
        return;
    }
    // Owner nobody: nobody's taps become nobody's; root is refused.
    let fx = Fixture::start(NOBODY);
    fx.open_dirs_to_everyone();
    let before = fx.ns.links();
    let mut root = fx.client().await;
    let err = root.request(&ensure_bridge()).await.unwrap_err();
    let ClientError::Helper(err) = err else {
        panic!("expected a refusal, got {err:?}")
    };
    assert_eq!(err.code, HelperErrorCode::PeerRejected);
    assert!(
        err.message
            .contains("peer uid 0 is not the owner uid 65534"),
        "{}",
        err.message
    );
    assert_eq!(fx.ns.links(), before);

    let bridge = r#"{"op":"ensure_bridge","name":"banger0","address":"172.16.0.1/24"}"#;
    let tap = r#"{"op":"create_tap","name":"banger-t7","bridge":"banger0"}"#;
    assert_eq!(fx.request_as(NOBODY, bridge), Ok(done(true)));
    assert_eq!(fx.request_as(NOBODY, tap), Ok(done(true)));
    assert_eq!(fx.ns.tap_owner("banger-t7"), NOBODY.to_string());

    // Owner root, socket opened to all by mistake: nobody is still refused.
    let fx = Fixture::start(0);
    fx.open_dirs_to_everyone();
    assert_eq!(
        fx.socket.metadata().unwrap().permissions().mode() & 0o777,
        0o600
    );
    let refused = Command::new(BIN)
        .arg("request")
        .arg("--socket")
        .arg(&fx.socket)
        .arg(bridge)
        .uid(NOBODY)
        .gid(NOBODY)
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("Permission denied"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    std::fs::set_permissions(&fx.socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    let before = fx.ns.links();
    let err = fx.request_as(NOBODY, bridge).unwrap_err();
    assert_eq!(err.code, HelperErrorCode::PeerRejected);
    assert!(
        err.message
            .contains("peer uid 65534 is not the owner uid 0"),
        "{}",
        err.message
    );
    assert_eq!(fx.ns.links(), before);
    assert!(fx.ns.link("banger0").is_none());
}

#[test]
fn version_flag_prints_the_workspace_version() {
    let out = run(Command::new(BIN).arg("--version"));
    assert_eq!(out.trim(), format!("bangerd-root {}", banger_wire::VERSION));
}

#[tokio::test]
async fn system_mode_serves_the_installed_owner_and_talks_to_systemd() {
    if !privileged() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let d = |name: &str| tmp.path().join(name).display().to_string();
    let install = format!(
        "owner_user = \"nobody\"\nowner_uid = {NOBODY}\nowner_gid = {NOBODY}\nversion = \"test\"\n\
         bin_dir = \"/usr/bin\"\nlib_dir = \"/usr/lib/banger\"\nstate_dir = \"{}\"\n\
         cache_dir = \"{}\"\nrun_dir = \"{}\"\nroot_run_dir = \"{}\"\nconfig_path = \"{}\"\n",
        d("state"),
        d("cache"),
        d("run"),
        d("root-run"),
        d("config.toml"),
    );
    let install_file = tmp.path().join("install.toml");
    std::fs::write(&install_file, install).unwrap();
    let notify_path = tmp.path().join("notify.sock");
    let notify = std::os::unix::net::UnixDatagram::bind(&notify_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();

    let ns = Netns::new();
    let child = ns
        .cmd(BIN)
        .args(["serve", "--system", "--install-file"])
        .arg(&install_file)
        .env("NOTIFY_SOCKET", &notify_path)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut helper = HelperProcess { child };
    let mut buf = [0u8; 256];
    let n = notify.recv(&mut buf).expect("READY=1 from the helper");
    assert_eq!(&buf[..n], b"READY=1\n");

    let socket = tmp.path().join("root-run/bangerd-root.sock");
    let meta = std::fs::metadata(&socket).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);
    assert_eq!((meta.uid(), meta.gid()), (0, NOBODY));
    let out = Command::new(BIN)
        .arg("request")
        .arg("--socket")
        .arg(&socket)
        .arg(r#"{"op":"ping"}"#)
        .uid(NOBODY)
        .gid(NOBODY)
        .output()
        .unwrap();
    let reply: HelperReply = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        reply,
        Ok(HelperResponse::Pong {
            version: banger_wire::VERSION.into(),
            owner_uid: NOBODY
        })
    );

    let pid = nix::unistd::Pid::from_raw(helper.child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let n = notify.recv(&mut buf).expect("STOPPING=1 from the helper");
    assert_eq!(&buf[..n], b"STOPPING=1\n");
    let status = helper.child.wait().unwrap();
    assert!(status.success(), "{status}");
    assert!(!socket.exists(), "socket removed on shutdown");
}
