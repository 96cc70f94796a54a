//! Runs the real `banger doctor` binary against this host, with HOME and the
//! XDG directories in a temp dir and no system install.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

/// A private HOME with the XDG directories below it.
struct Sandbox {
    dir: tempfile::TempDir,
}

impl Sandbox {
    fn new() -> Sandbox {
        Sandbox {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn doctor(&self, extra_env: &[(&str, &Path)], json: bool) -> Output {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_banger"));
        cmd.arg("doctor")
            .env("HOME", self.dir.path())
            .env("XDG_CONFIG_HOME", self.path("config"))
            .env("XDG_STATE_HOME", self.path("state"))
            .env("XDG_CACHE_HOME", self.path("cache"))
            .env("XDG_RUNTIME_DIR", self.path("run"))
            .env("BANGER_INSTALL_FILE", "/nonexistent/install.toml")
            .env_remove("BANGER_CONFIG")
            .env_remove("NO_COLOR");
        if json {
            cmd.arg("--json");
        }
        for (k, v) in extra_env {
            cmd.env(k, v);
        }
        cmd.output().unwrap()
    }
}

fn parse(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "doctor --json printed invalid JSON ({e}):\n{}\nstderr:\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

fn check<'a>(report: &'a Value, id: &str) -> &'a Value {
    report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == id)
        .unwrap_or_else(|| panic!("no check {id} in {report:#}"))
}

/// Shape of every row, and exit status consistent with the required checks.
fn assert_report_shape(report: &Value, out: &Output) {
    let checks = report["checks"].as_array().expect("checks is an array");
    assert!(!checks.is_empty());
    let mut blocking = false;
    for c in checks {
        let status = c["status"].as_str().expect("status is a string");
        assert!(["ok", "warn", "fail", "info"].contains(&status), "{c}");
        assert!(
            c["id"].is_string() && c["title"].is_string() && c["detail"].is_string(),
            "{c}"
        );
        let required = c["required"].as_bool().expect("required is a bool");
        // Every warning and failure says how to fix it; nothing else carries a fix.
        assert_eq!(
            c["fix"].is_string(),
            matches!(status, "warn" | "fail"),
            "{c}"
        );
        assert!(c["fix"].is_string() || c["fix"].is_null(), "{c}");
        blocking |= required && status == "fail";
    }
    assert_eq!(report["ok"].as_bool(), Some(!blocking), "{report:#}");
    assert_eq!(
        out.status.success(),
        !blocking,
        "exit status {:?} vs {report:#}",
        out.status
    );
}

#[test]
fn json_report_covers_every_check_and_matches_the_exit_status() {
    let sb = Sandbox::new();
    let out = sb.doctor(&[], true);
    let report = parse(&out);
    assert_report_shape(&report, &out);

    for id in [
        "config",
        "arch",
        "kvm-device",
        "kvm-usable",
        "firecracker",
        "qemu",
        "backend",
        "tool:mkfs.ext4",
        "tool:ssh",
        "tool:ssh-keygen",
        "tool:nft",
        "tool:ip",
        "tool:mmdebstrap",
        "tool:zstd",
        "e2fsprogs",
        "state-dir",
        "disk-space",
        "clone-strategy",
        "cidr-routes",
        "vm-defaults",
        "install-mode",
        "daemon",
    ] {
        check(&report, id);
    }

    let strategy = check(&report, "clone-strategy")["value"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        ["reflink", "dm-snapshot", "sparse-copy"].contains(&strategy.as_str()),
        "{strategy}"
    );
    let backend = &check(&report, "backend")["value"]["backend"];
    assert!(
        ["firecracker", "qemu-kvm", "qemu-tcg"].contains(&backend.as_str().unwrap()),
        "{backend}"
    );
    if Path::new("/sys/module/kvm_pvm").exists() {
        let kvm = check(&report, "kvm-usable");
        assert_eq!(kvm["status"], "warn");
        assert!(
            kvm["detail"].as_str().unwrap().contains("QEMU/TCG"),
            "{kvm}"
        );
        assert_ne!(backend, "firecracker");
        assert_ne!(backend, "qemu-kvm");
    }
    let defaults = &check(&report, "vm-defaults")["value"];
    for key in ["vcpu", "memory_mib", "disk_bytes"] {
        assert!(defaults[key]["value"].is_u64(), "{defaults}");
        let prov = defaults[key]["provenance"].as_str().unwrap();
        assert!(["config", "host", "built-in"].contains(&prov), "{defaults}");
    }
    assert_eq!(check(&report, "install-mode")["value"]["mode"], "per-user");
    assert_eq!(
        check(&report, "state-dir")["value"]
            .as_str()
            .map(PathBuf::from),
        Some(sb.path("state/banger"))
    );

    // Doctor only looks: no daemon was started, no socket appeared, and the
    // clone probe left nothing in the state dir.
    assert_eq!(check(&report, "daemon")["status"], "info", "{report:#}");
    assert!(!sb.path("run/banger/bangerd.sock").exists());
    assert_eq!(
        std::fs::read_dir(sb.path("state/banger")).unwrap().count(),
        0
    );
}

#[test]
fn a_missing_configured_qemu_fails_a_required_check() {
    let sb = Sandbox::new();
    let cfg = sb.path("custom.toml");
    std::fs::write(&cfg, "qemu_bin = \"/nonexistent/qemu-system-x86_64\"\n").unwrap();
    let out = sb.doctor(&[("BANGER_CONFIG", &cfg)], true);
    let report = parse(&out);
    assert_report_shape(&report, &out);
    assert!(!out.status.success());
    assert_eq!(report["ok"], false);
    let qemu = check(&report, "qemu");
    assert_eq!(qemu["status"], "fail");
    assert_eq!(qemu["required"], true);
    assert!(
        qemu["detail"]
            .as_str()
            .unwrap()
            .contains("/nonexistent/qemu-system-x86_64"),
        "{qemu}"
    );
    assert!(qemu["fix"].as_str().unwrap().contains("qemu_bin"), "{qemu}");
    assert!(
        qemu["fix"].as_str().unwrap().contains("custom.toml"),
        "{qemu}"
    );
}

#[test]
fn an_unusable_state_dir_fails_with_a_fix() {
    let sb = Sandbox::new();
    // A regular file where a directory must be: fails even for root.
    let blocker = sb.path("not-a-dir");
    std::fs::write(&blocker, b"").unwrap();
    let out = sb.doctor(&[("XDG_STATE_HOME", &blocker)], true);
    let report = parse(&out);
    assert_report_shape(&report, &out);
    assert!(!out.status.success());
    let state = check(&report, "state-dir");
    assert_eq!(state["status"], "fail");
    assert!(
        state["detail"].as_str().unwrap().contains("not-a-dir"),
        "{state}"
    );
    assert!(state["fix"].is_string());
}

#[test]
fn an_invalid_config_fails_but_the_other_checks_still_run() {
    let sb = Sandbox::new();
    let cfg = sb.path("config/banger/config.toml");
    std::fs::create_dir_all(cfg.parent().unwrap()).unwrap();
    std::fs::write(&cfg, "no_such_key = 1\n").unwrap();
    let out = sb.doctor(&[], true);
    let report = parse(&out);
    assert_report_shape(&report, &out);
    assert!(!out.status.success());
    let c = check(&report, "config");
    assert_eq!(c["status"], "fail");
    assert!(c["detail"].as_str().unwrap().contains("no_such_key"), "{c}");
    assert!(
        c["fix"].as_str().unwrap().contains("banger config check"),
        "{c}"
    );
    check(&report, "clone-strategy");
    check(&report, "backend");
}

#[test]
fn plain_output_is_an_ascii_table_when_not_a_tty() {
    let sb = Sandbox::new();
    let cfg = sb.path("custom.toml");
    std::fs::write(&cfg, "qemu_bin = \"/nonexistent/qemu\"\n").unwrap();
    let out = sb.doctor(&[("BANGER_CONFIG", &cfg)], false);
    let text = String::from_utf8(out.stdout.clone()).unwrap();
    assert!(!out.status.success());
    let marks: Vec<&str> = text.lines().filter(|l| l.starts_with('[')).collect();
    assert!(
        marks.iter().any(|l| l.starts_with("[FAIL] QEMU binary")),
        "{text}"
    );
    assert!(marks.iter().all(|l| {
        ["[  ok]", "[warn]", "[FAIL]", "[info]"]
            .iter()
            .any(|m| l.starts_with(m))
    }));
    assert!(
        text.lines()
            .any(|l| l.trim_start().starts_with("fix: fix or remove qemu_bin")),
        "{text}"
    );
    assert!(text.is_ascii(), "{text}");
    assert!(text.contains("required check(s) failed"), "{text}");
}

/// `bangerd` from the same target dir (built by `cargo test` of the
/// workspace or `cargo build -p bangerd`).
fn daemon_bin() -> PathBuf {
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_banger")).with_file_name("bangerd");
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build -p bangerd`",
        bin.display()
    );
    bin
}

/// Stops the daemon a test started, even when the test fails.
struct DaemonGuard<'a> {
    sb: &'a Sandbox,
    pid: Option<i32>,
}

impl Drop for DaemonGuard<'_> {
    fn drop(&mut self) {
        let _ = self.sb.banger(&["daemon", "stop"]);
        if let Some(pid) = self.pid {
            // SIGKILL only if `daemon stop` left it running; ESRCH otherwise.
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

impl Sandbox {
    fn banger(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_banger"))
            .args(args)
            .env("HOME", self.dir.path())
            .env("XDG_CONFIG_HOME", self.path("config"))
            .env("XDG_STATE_HOME", self.path("state"))
            .env("XDG_CACHE_HOME", self.path("cache"))
            .env("XDG_RUNTIME_DIR", self.path("run"))
            .env("BANGER_INSTALL_FILE", "/nonexistent/install.toml")
            .env("BANGERD_BIN", daemon_bin())
            .env(
                "BANGERD_ROOT_BIN",
                daemon_bin().with_file_name("bangerd-root"),
            )
            .env_remove("BANGER_CONFIG")
            .env_remove("NOTIFY_SOCKET")
            .env_remove("JOURNAL_STREAM")
            .env_remove("WATCHDOG_USEC")
            .output()
            .unwrap()
    }
}

#[test]
fn a_running_daemon_is_reported_with_its_status() {
    let sb = Sandbox::new();
    let mut guard = DaemonGuard { sb: &sb, pid: None };
    // `daemon status` auto-starts the per-user daemon; doctor never would.
    let out = sb.banger(&["daemon", "status", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status: Value = serde_json::from_slice(&out.stdout).unwrap();
    let pid = status["pid"].as_i64().unwrap();
    guard.pid = Some(i32::try_from(pid).unwrap());

    let out = sb.doctor(&[], true);
    let report = parse(&out);
    assert_report_shape(&report, &out);
    let daemon = check(&report, "daemon");
    assert_eq!(daemon["status"], "ok", "{daemon}");
    assert_eq!(daemon["value"]["pid"].as_i64(), Some(pid), "{daemon}");
    // The daemon resolves the backend with the same choose_backend as doctor.
    assert_eq!(
        daemon["value"]["backend"],
        check(&report, "backend")["value"]["backend"]
    );
    drop(guard);
}
