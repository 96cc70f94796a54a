//! The real `banger` binary against a fake daemon of another version: a real
//! HTTP/1.1 server (hyper) on the per-user socket, answering with the JSON an
//! older or newer `bangerd` sends. The CLI must name both versions and the
//! fix, never print a decoding error, and still be able to stop the daemon.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;

const CLI: &str = env!("CARGO_PKG_VERSION");

/// `GET /v1/status` of a daemon from before `schema_version` and
/// `root_helper` existed: the current CLI cannot parse it.
fn old_status(pid: u32) -> String {
    serde_json::json!({
        "pid": pid, "version": "0.0.1", "socket": "/x.sock", "uptime_secs": 5,
        "state_dir": "/s", "cache_dir": "/c", "runtime_dir": "/r",
        "backend": "qemu-tcg", "backend_reason": "", "install_mode": "per-user"
    })
    .to_string()
}

/// `GET /v1/status` of a newer daemon: every field this CLI knows, plus
/// fields and an install mode it does not.
fn new_status(pid: u32, version: &str) -> String {
    serde_json::json!({
        "pid": pid, "version": version, "socket": "/x.sock", "uptime_secs": 5,
        "state_dir": "/s", "cache_dir": "/c", "runtime_dir": "/r",
        "backend": "qemu-tcg", "backend_reason": "no kvm", "install_mode": "container",
        "root_helper": null, "schema_version": 99, "sessions": 2,
        "features": {"snapshots": true}
    })
    .to_string()
}

/// A fake `bangerd`: answers `path` with the given JSON, anything else with
/// the daemon's 404 body; records every `METHOD path` it was asked.
struct FakeDaemon {
    requests: Arc<Mutex<Vec<String>>>,
    _runtime: tokio::runtime::Runtime,
}

impl FakeDaemon {
    fn serve(socket: &Path, answers: BTreeMap<&'static str, String>) -> FakeDaemon {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let listener = {
            let _guard = runtime.enter();
            tokio::net::UnixListener::bind(socket).unwrap()
        };
        let requests = Arc::new(Mutex::new(Vec::new()));
        let answers = Arc::new(answers);
        let seen = requests.clone();
        runtime.spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let (answers, seen) = (answers.clone(), seen.clone());
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let key = format!("{} {}", req.method(), req.uri().path());
                        seen.lock().unwrap().push(key.clone());
                        let (status, body) = match answers.get(key.as_str()) {
                            Some(body) => (200, body.clone()),
                            None => (
                                404,
                                format!(
                                    r#"{{"code":"not_found","message":"no such endpoint: {key}"}}"#
                                ),
                            ),
                        };
                        async move {
                            Ok::<_, std::convert::Infallible>(
                                Response::builder()
                                    .status(status)
                                    .header("content-type", "application/json")
                                    .body(Full::new(Bytes::from(body)))
                                    .unwrap(),
                            )
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        FakeDaemon {
            requests,
            _runtime: runtime,
        }
    }

    fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }
}

/// A private per-user environment whose socket the fake daemon holds.
struct Env {
    dir: tempfile::TempDir,
}

impl Env {
    fn new() -> Env {
        let dir = tempfile::Builder::new()
            .prefix("banger-cli-skew-")
            .tempdir()
            .unwrap();
        for d in ["home", "run/banger"] {
            std::fs::create_dir_all(dir.path().join(d)).unwrap();
        }
        use std::os::unix::fs::PermissionsExt;
        for d in ["run", "run/banger"] {
            std::fs::set_permissions(dir.path().join(d), std::fs::Permissions::from_mode(0o700))
                .unwrap();
        }
        Env { dir }
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("run/banger/bangerd.sock")
    }

    fn run(&self, args: &[&str]) -> Output {
        let p = |s: &str| self.dir.path().join(s);
        Command::new(env!("CARGO_BIN_EXE_banger"))
            .args(args)
            .env("HOME", p("home"))
            .env("XDG_CONFIG_HOME", p("config"))
            .env("XDG_STATE_HOME", p("state"))
            .env("XDG_CACHE_HOME", p("cache"))
            .env("XDG_RUNTIME_DIR", p("run"))
            .env("BANGER_INSTALL_FILE", p("no-install/install.toml"))
            // Starting a daemon would be a bug here: make it fail loudly.
            .env("BANGERD_BIN", p("no-such-bangerd"))
            .env_remove("BANGER_CONFIG")
            .output()
            .unwrap()
    }
}

fn text(out: &Output) -> String {
    format!(
        "status {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A pid that no process has (a child that was started and reaped).
fn dead_pid() -> u32 {
    let mut child = Command::new("true").spawn().unwrap();
    let pid = child.id();
    child.wait().unwrap();
    pid
}

#[test]
fn an_older_daemon_whose_status_does_not_parse_is_named_with_the_fix() {
    let env = Env::new();
    let daemon = FakeDaemon::serve(
        &env.socket(),
        BTreeMap::from([("GET /v1/status", old_status(dead_pid()))]),
    );
    let out = env.run(&["vm", "list"]);
    assert!(!out.status.success(), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let expected = format!(
        "daemon 0.0.1, CLI {CLI}: run `banger daemon stop` (then the next command starts the new one)"
    );
    assert!(stderr.contains(&expected), "{}", text(&out));
    assert!(!stderr.contains("decode"), "{}", text(&out));
    // It stopped at the version check: no request beyond the status probe.
    assert!(
        daemon.requests().iter().all(|r| r == "GET /v1/status"),
        "{:?}",
        daemon.requests()
    );
}

#[test]
fn a_newer_daemon_is_reported_shown_and_stopped() {
    let env = Env::new();
    let pid = dead_pid();
    let daemon = FakeDaemon::serve(
        &env.socket(),
        BTreeMap::from([
            ("GET /v1/status", new_status(pid, "99.1.0")),
            (
                "POST /v1/shutdown",
                serde_json::json!({"pid": pid, "drained_vms": 0}).to_string(),
            ),
        ]),
    );
    let expected = format!("daemon 99.1.0, CLI {CLI}: run `banger daemon stop`");

    let out = env.run(&["vm", "list"]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(&expected),
        "{}",
        text(&out)
    );

    // Status shows the newer daemon (unknown fields and values included) and warns.
    let out = env.run(&["daemon", "status"]);
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("version         99.1.0\n"),
        "{}",
        text(&out)
    );
    assert!(
        stdout.contains("install mode    container\n"),
        "{}",
        text(&out)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(&expected),
        "{}",
        text(&out)
    );

    // The fix the message names works against that daemon.
    let out = env.run(&["daemon", "stop"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&format!("bangerd (pid {pid}) stopped")),
        "{}",
        text(&out)
    );
    assert!(
        daemon.requests().contains(&"POST /v1/shutdown".to_owned()),
        "{:?}",
        daemon.requests()
    );
}

#[test]
fn a_same_version_daemon_with_added_fields_is_used() {
    let env = Env::new();
    let vms = serde_json::json!({
        "vms": [{
            "id": "01", "name": "web", "state": "hibernated", "image": "debian", "kernel": "k",
            "vcpu": 2, "memory_mib": 1024, "disk_bytes": 1073741824, "ip": "10.0.0.2",
            "mac": "02:00:00:00:00:01", "tap": null, "backend": "qemu-tcg", "vmm_pid": null,
            "created_at": 0, "last_activity_at": null, "spec": null, "last_error": null,
            "snapshot": "s1"
        }],
        "next_page": null
    });
    let _daemon = FakeDaemon::serve(
        &env.socket(),
        BTreeMap::from([
            ("GET /v1/status", new_status(dead_pid(), CLI)),
            ("GET /v1/vms", vms.to_string()),
        ]),
    );
    let out = env.run(&["vm", "list"]);
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("web ") && l.contains("hibernated")),
        "{}",
        text(&out)
    );
}

#[test]
fn session_answers_with_added_fields_and_unknown_states_are_shown() {
    let env = Env::new();
    let list = serde_json::json!({
        "sessions": [{
            "id": "i1", "name": "web", "vm": "dev", "command": ["npm", "run", "dev"],
            "cwd": "/root/repo", "env": [], "stdin_mode": "detached",
            "status": {"state": "paused", "since_ms": 5}, "source": "snapshot", "note": null,
            "pid": 42, "started_at_ms": 1, "ended_at_ms": null, "stderr_tail": null,
            "attached_clients": 1
        }],
        "next_page": null
    });
    let daemon = FakeDaemon::serve(
        &env.socket(),
        BTreeMap::from([
            ("GET /v1/status", new_status(dead_pid(), CLI)),
            ("GET /v1/vms/dev/sessions", list.to_string()),
        ]),
    );
    let out = env.run(&["vm", "session", "list", "dev"]);
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("web ") && l.contains("unknown") && l.contains("42")),
        "{}",
        text(&out)
    );
    assert!(
        daemon
            .requests()
            .contains(&"GET /v1/vms/dev/sessions".to_owned()),
        "{:?}",
        daemon.requests()
    );
}
