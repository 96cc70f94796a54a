//! Hostile request lines for the root helper. The owner's daemon is the only
//! peer, but the owner is exactly who must not reach root through it: every
//! line it can send is either refused with `Invalid` or becomes an action
//! whose every argument satisfies the policy.
//!
//! The parse layer runs 10,000 generated lines; the real server, in a network
//! namespace of its own, answers 10,000 refused lines over one connection and
//! its namespace, nftables ruleset and allowed directories are unchanged
//! afterwards.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use banger_fuzz::{config, noise, CASES};
use banger_wire::helper::{HelperErrorCode, HelperReply, HelperResponse};
use bangerd_root::server::parse_line;
use bangerd_root::validate::IfaceName;
use bangerd_root::{Action, Policy, ServeConfig, Server};
use ipnet::Ipv4Net;
use proptest::prelude::*;
use proptest::test_runner::TestRunner;
use serde_json::{json, Value};

const CIDR: &str = "172.16.0.0/24";

/// The helper's directories, shared by every case: `state` holds a file, a
/// directory and a symlink to `/etc` (which must never validate).
struct Dirs {
    _tmp: tempfile::TempDir,
    state: PathBuf,
    run: PathBuf,
}

fn dirs() -> &'static Dirs {
    static D: OnceLock<Dirs> = OnceLock::new();
    D.get_or_init(|| {
        let tmp = tempfile::tempdir().unwrap();
        let state = tmp.path().join("state");
        let run = tmp.path().join("run");
        std::fs::create_dir_all(state.join("vms/a")).unwrap();
        std::fs::create_dir(&run).unwrap();
        std::fs::write(state.join("vms/a/root.img"), b"disk").unwrap();
        std::os::unix::fs::symlink("/etc", state.join("etc-link")).unwrap();
        std::os::unix::fs::symlink("../..", state.join("up-link")).unwrap();
        Dirs {
            _tmp: tmp,
            state,
            run,
        }
    })
}

fn policy() -> Policy {
    let d = dirs();
    Policy {
        owner_uid: 1000,
        owner_gid: None,
        cidr: CIDR.parse().unwrap(),
        allowed_dirs: vec![d.state.clone(), d.run.clone()],
        build: None,
    }
}

const OPS: &[&str] = &[
    "ping",
    "ensure_bridge",
    "create_tap",
    "delete_tap",
    "ensure_nat",
    "remove_nat",
    "teardown_all",
    "chown_to_owner",
    "build_bundle",
    "bind_dns",
    "resolved_link",
    "run_command",
    "Ping",
    "",
];

const FIELDS: &[&str] = &[
    "name", "address", "bridge", "cidr", "path", "kind", "op", "command", "x",
];

/// Values an attacker would try for each kind of argument, plus the valid
/// ones, so accepted actions are generated too.
fn string_value() -> impl Strategy<Value = String> {
    let d = dirs();
    let paths: Vec<String> = [
        d.state.join("vms/a/root.img"),
        d.state.join("vms/a"),
        d.state.clone(),
        d.run.clone(),
        d.state.join("etc-link"),
        d.state.join("etc-link/shadow"),
        d.state.join("up-link"),
        d.state.join("vms/../../.."),
        d.state.join("missing"),
        d.state.join("vms/a/root.img/"),
        PathBuf::from("/etc/shadow"),
        PathBuf::from("/"),
        PathBuf::from("state/vms/a/root.img"),
    ]
    .iter()
    .map(|p| p.display().to_string())
    .collect();
    let words = vec![
        "banger0",
        "banger-t1",
        "banger-t123456789",
        "banger",
        "bangerAAA",
        "eth0",
        "lo",
        "-banger0",
        "banger0 ",
        "banger0\n",
        "banger0/../eth0",
        "banger\u{0}0",
        "172.16.0.1/24",
        "172.16.0.254/24",
        "172.16.0.0/24",
        "172.16.0.255/24",
        "172.16.0.1/25",
        "172.16.0.1/16",
        "172.16.1.1/24",
        "172.16.0.1",
        "10.0.0.1/8",
        "0.0.0.0/0",
        "172.16.0.128/25",
        "172.16.0.0/16",
        "::1/128",
        "image",
        "kernel",
        "debian-bookworm",
        "generic-6.12",
        "../debian-bookworm",
        "",
        " ",
        "\u{202e}",
    ];
    prop_oneof![
        4 => prop::sample::select(words).prop_map(str::to_owned),
        2 => prop::sample::select(paths),
        1 => "[a-z0-9./-]{0,20}",
        1 => "\\PC{0,12}",
    ]
}

fn json_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        8 => string_value().prop_map(Value::from),
        1 => Just(Value::Null),
        1 => any::<i64>().prop_map(Value::from),
        1 => any::<bool>().prop_map(Value::from),
        1 => string_value().prop_map(|s| json!([s])),
        1 => string_value().prop_map(|s| json!({ "name": s })),
    ]
}

/// One request line: a JSON object built from an op and fields, possibly
/// damaged, or raw bytes.
fn request_object() -> impl Strategy<Value = Vec<u8>> {
    (
        prop::option::weighted(0.95, prop::sample::select(OPS)),
        prop::collection::vec((prop::sample::select(FIELDS), json_value()), 0..4),
    )
        .prop_map(|(op, fields)| {
            let mut o = serde_json::Map::new();
            if let Some(op) = op {
                o.insert("op".into(), Value::from(op));
            }
            for (k, v) in fields {
                if k != "op" || o.get("op").is_none() {
                    o.insert(k.into(), v);
                }
            }
            serde_json::to_vec(&Value::Object(o)).unwrap()
        })
}

fn request_line() -> impl Strategy<Value = Vec<u8>> {
    let damaged = (request_object(), any::<usize>(), any::<u8>()).prop_map(|(mut b, i, x)| {
        let n = b.len();
        match x % 3 {
            0 => b.truncate(i % n),
            1 => b[i % n] = x,
            _ => b.extend_from_slice(b"{}"),
        }
        b
    });
    prop_oneof![
        6 => request_object(),
        2 => damaged,
        1 => (0..200usize, any::<u64>()).prop_map(|(n, seed)| noise(n, seed)),
    ]
    // One line: the framing splits at newlines before parsing.
    .prop_map(|b| b.into_iter().filter(|&c| c != b'\n').collect())
}

fn iface_ok(name: &IfaceName) -> bool {
    IfaceName::parse(name.as_str()).as_ref() == Ok(name)
        && name.as_str().starts_with("banger")
        && name.as_str().len() <= 15
}

fn bridge_address_ok(a: &Ipv4Net, range: Ipv4Net) -> bool {
    a.prefix_len() == range.prefix_len()
        && range.contains(&a.addr())
        && a.addr() != range.network()
        && a.addr() != range.broadcast()
}

/// Everything an accepted action carries satisfies the policy.
fn check_action(action: &Action, range: Ipv4Net) -> Result<(), String> {
    let ok = match action {
        Action::Ping | Action::RemoveNat => true,
        Action::EnsureBridge { name, address } => {
            iface_ok(name) && bridge_address_ok(address, range)
        }
        Action::CreateTap { name, bridge } => iface_ok(name) && iface_ok(bridge) && name != bridge,
        Action::DeleteTap { name } | Action::TeardownAll { bridge: name } => iface_ok(name),
        Action::EnsureNat {
            bridge,
            cidr,
            address,
            fence,
        } => {
            iface_ok(bridge)
                && cidr.trunc() == *cidr
                && range.contains(cidr)
                && bridge_address_ok(address, range)
                && fence.allow_host_ports.len() <= bangerd_root::validate::MAX_FENCE_ENTRIES
                && !fence.allow_host_ports.contains(&0)
                && fence.deny_destinations.len() <= bangerd_root::validate::MAX_FENCE_ENTRIES
                && fence
                    .deny_destinations
                    .iter()
                    .all(|n| n.trunc() == *n && n.prefix_len() > 0)
        }
        // The helper checks the shape only (the builder knows the recipes):
        // never a path, an option or a hidden name.
        Action::BuildBundle { kind: _, name } => {
            (1..=64).contains(&name.len())
                && name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
                && !name.starts_with(['-', '.'])
                && !name.contains("..")
        }
        Action::BindDns { address } => bridge_address_ok(address, range),
        Action::ResolvedLink { bridge, address } => {
            iface_ok(bridge) && bridge_address_ok(address, range)
        }
    };
    if ok {
        Ok(())
    } else {
        Err(format!("accepted an action outside the policy: {action:?}"))
    }
}

proptest! {
    #![proptest_config(config())]

    /// Every line is refused with `Invalid` and a message, or becomes an
    /// action inside the policy.
    #[test]
    fn request_lines_are_refused_or_within_policy(line in request_line()) {
        let policy = policy();
        match parse_line(&line, &policy) {
            Ok((op, action)) => {
                prop_assert!(!op.is_empty());
                check_action(&action, policy.cidr).map_err(TestCaseError::fail)?;
            }
            Err(e) => {
                prop_assert_eq!(e.code, HelperErrorCode::Invalid);
                prop_assert!(!e.message.is_empty());
            }
        }
    }
}

#[test]
fn symlinks_and_traversal_never_validate_for_chown() {
    let d = dirs();
    let policy = policy();
    for path in [
        d.state.join("etc-link"),
        d.state.join("etc-link/shadow"),
        d.state.join("up-link"),
        d.state.join("vms/../../.."),
    ] {
        let line = json!({ "op": "chown_to_owner", "path": path }).to_string();
        let err = parse_line(line.as_bytes(), &policy).unwrap_err();
        assert_eq!(err.code, HelperErrorCode::Invalid, "{path:?}");
        assert!(err.message.contains("chown_to_owner"), "{}", err.message);
    }
}

/// Snapshot of the calling thread's network namespace: links and nftables.
fn netns_state() -> (String, String) {
    let links = std::fs::read_to_string("/proc/thread-self/net/dev").unwrap();
    let links: Vec<&str> = links
        .lines()
        .skip(2)
        .filter_map(|l| l.split(':').next())
        .map(str::trim)
        .collect();
    let nft = std::process::Command::new("nft")
        .args(["list", "ruleset"])
        .output()
        .expect("nft is needed by the root helper (scripts/deps.sh installs it)");
    assert!(nft.status.success(), "{nft:?}");
    (
        links.join(" "),
        String::from_utf8_lossy(&nft.stdout).into_owned(),
    )
}

fn tree(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let m = e.path().symlink_metadata().unwrap();
        out.push(format!("{} {:?}", e.path().display(), m.file_type()));
        if m.is_dir() {
            out.extend(tree(&e.path()));
        }
    }
    out.sort();
    out
}

#[test]
fn the_server_refuses_hostile_lines_and_changes_nothing() {
    if !nix::unistd::geteuid().is_root() {
        assert!(
            std::env::var("BANGER_REQUIRE_PRIVILEGED").as_deref() != Ok("1"),
            "BANGER_REQUIRE_PRIVILEGED=1 but this test is not running as root"
        );
        eprintln!("skipping: a network namespace needs root");
        return;
    }
    let d = dirs();
    let tmp = tempfile::tempdir().unwrap();
    let socket = tmp.path().join("helper.sock");
    let me = nix::unistd::getuid().as_raw();
    let serve_config = ServeConfig::child(
        socket.clone(),
        me,
        CIDR.parse().unwrap(),
        vec![d.state.clone(), d.run.clone()],
    );
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    // The server and every operation it could run live on this one thread,
    // in a network namespace of its own.
    let server = std::thread::spawn(move || {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        let before = netns_state();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let server = Server::bind(&serve_config).unwrap();
            ready_tx.send(()).unwrap();
            server
                .run_until(async {
                    let _ = stop_rx.await;
                })
                .await
                .unwrap();
        });
        (before, netns_state())
    });
    ready_rx.recv().unwrap();
    let files_before = tree(&d.state);

    let stream = UnixStream::connect(&socket).unwrap();
    let reader = std::cell::RefCell::new(BufReader::new(stream.try_clone().unwrap()));
    let writer = std::cell::RefCell::new(stream);
    let exchange = |line: &[u8]| -> HelperReply {
        let mut w = writer.borrow_mut();
        w.write_all(line).unwrap();
        w.write_all(b"\n").unwrap();
        let mut answer = String::new();
        reader.borrow_mut().read_line(&mut answer).unwrap();
        serde_json::from_str(&answer).unwrap_or_else(|e| panic!("{e}: {answer:?}"))
    };
    let policy = policy();
    // 10,000 refused lines: accepted ones would really run, so they are
    // skipped (and do not count).
    let mut runner = TestRunner::new(ProptestConfig {
        max_global_rejects: CASES * 2,
        ..config()
    });
    runner
        .run(&request_line(), |line| {
            // The server's framing drops one `\r` before the newline (CRLF).
            let framed = line.strip_suffix(b"\r").unwrap_or(&line);
            let expected = parse_line(framed, &policy);
            prop_assume!(expected.is_err());
            let expected = expected.unwrap_err();
            match exchange(&line) {
                Err(e) => {
                    prop_assert_eq!(e.code, HelperErrorCode::Invalid);
                    prop_assert_eq!(e.message, expected.message);
                }
                Ok(r) => prop_assert!(false, "refused line {:?} got {:?}", line, r),
            }
            Ok(())
        })
        .unwrap();
    // The connection still serves.
    let pong = exchange(br#"{"op":"ping"}"#).unwrap();
    assert!(matches!(pong, HelperResponse::Pong { owner_uid, .. } if owner_uid == me));
    stop_tx.send(()).unwrap();
    let (before, after) = server.join().unwrap();
    assert_eq!(before, after, "a refused request changed the namespace");
    assert_eq!(
        files_before,
        tree(&d.state),
        "a refused request changed files"
    );
}
