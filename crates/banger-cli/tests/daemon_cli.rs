//! `banger daemon status|stop` and daemon auto-start with the real binaries:
//! `banger` (this crate) and `bangerd` from the same build directory, in a
//! private per-user environment (temp HOME and XDG dirs, no system install).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use banger_wire::api::DaemonStatus;

fn banger_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_banger"))
}

/// `bangerd` from the same target dir. `cargo test` of the workspace (or
/// `-p bangerd`) builds it; a missing or outdated one fails loudly instead of
/// testing an old daemon.
fn daemon_bin() -> PathBuf {
    let bin = banger_bin().with_file_name("bangerd");
    let built = std::fs::metadata(&bin)
        .and_then(|m| m.modified())
        .unwrap_or_else(|_| panic!("{} is missing: run `cargo build -p bangerd`", bin.display()));
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../bangerd/src");
    for entry in std::fs::read_dir(&src).unwrap() {
        let path = entry.unwrap().path();
        let changed = std::fs::metadata(&path).unwrap().modified().unwrap();
        assert!(
            changed <= built,
            "{} is older than {}: run `cargo build -p bangerd`",
            bin.display(),
            path.display()
        );
    }
    bin
}

/// A temp HOME and XDG dirs; stops any daemon started in it when dropped.
struct Env {
    dir: tempfile::TempDir,
}

impl Env {
    fn new() -> Env {
        let dir = tempfile::Builder::new()
            .prefix("banger-cli-daemon-")
            .tempdir()
            .unwrap();
        std::fs::create_dir_all(dir.path().join("home")).unwrap();
        Env { dir }
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    fn runtime(&self) -> PathBuf {
        self.path("run/banger")
    }

    fn banger(&self) -> Command {
        let mut cmd = Command::new(banger_bin());
        cmd.env("HOME", self.path("home"))
            .env("XDG_CONFIG_HOME", self.path("config"))
            .env("XDG_STATE_HOME", self.path("state"))
            .env("XDG_CACHE_HOME", self.path("cache"))
            .env("XDG_RUNTIME_DIR", self.path("run"))
            .env("BANGER_INSTALL_FILE", self.path("no-install/install.toml"))
            .env("BANGERD_BIN", daemon_bin())
            .env(
                "BANGERD_ROOT_BIN",
                daemon_bin().with_file_name("bangerd-root"),
            );
        for var in [
            "BANGER_CONFIG",
            "NOTIFY_SOCKET",
            "JOURNAL_STREAM",
            "WATCHDOG_USEC",
        ] {
            cmd.env_remove(var);
        }
        cmd
    }

    /// Write the default config.toml; returns its path.
    fn write_config(&self, text: &str) -> PathBuf {
        let config = self.path("config/banger/config.toml");
        std::fs::create_dir_all(config.parent().unwrap()).unwrap();
        std::fs::write(&config, text).unwrap();
        config
    }

    /// `GET /v1/config` of the running daemon.
    fn served_config(&self) -> serde_json::Value {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let client = banger_cli::client::Client::at(self.runtime().join("bangerd.sock"));
        runtime.block_on(client.get_json("/v1/config")).unwrap()
    }

    fn run(&self, args: &[&str]) -> Output {
        self.banger().args(args).output().unwrap()
    }

    /// Pids of `bangerd` processes whose environment points at this env.
    fn daemons(&self) -> Vec<u32> {
        let marker = format!("XDG_RUNTIME_DIR={}", self.path("run").display());
        let mut pids = Vec::new();
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            if comm.trim() != "bangerd" || stat.contains(") Z ") {
                continue;
            }
            let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
            if environ
                .split(|b| *b == 0)
                .any(|var| var == marker.as_bytes())
            {
                pids.push(pid);
            }
        }
        pids
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        for pid in self.daemons() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
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

/// Whether `pid` is a live process (a zombie has released everything).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z "))
}

#[test]
fn racing_clis_start_exactly_one_daemon() {
    let env = Env::new();
    assert!(!env.runtime().exists());
    let spawn = || {
        env.banger()
            .args(["daemon", "status", "--json"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b) = (spawn(), spawn());
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    assert!(a.status.success(), "{}", text(&a));
    assert!(b.status.success(), "{}", text(&b));
    let sa: DaemonStatus = serde_json::from_slice(&a.stdout).unwrap();
    let sb: DaemonStatus = serde_json::from_slice(&b.stdout).unwrap();
    assert_eq!(sa.pid, sb.pid, "both CLIs talk to the same daemon");
    assert_eq!(env.daemons(), vec![sa.pid], "exactly one bangerd");
    let lock = std::fs::read_to_string(env.runtime().join("bangerd.lock")).unwrap();
    assert_eq!(lock.trim(), sa.pid.to_string());

    // Human output of the running daemon; no second start.
    let out = env.run(&["daemon", "status"]);
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    for field in [
        "pid",
        "version",
        "socket",
        "uptime",
        "state dir",
        "backend",
        "install mode",
    ] {
        assert!(stdout.contains(field), "{field} missing:\n{stdout}");
    }
    assert!(
        stdout.contains(&format!("pid             {}\n", sa.pid)),
        "{stdout}"
    );
    assert!(stdout.contains("install mode    per-user\n"), "{stdout}");

    let out = env.run(&["daemon", "stop"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&format!("bangerd (pid {}) stopped", sa.pid)),
        "{}",
        text(&out)
    );
    // `daemon stop` returns only once the process is gone: no waiting here.
    assert!(
        !alive(sa.pid),
        "bangerd {} still running after `daemon stop` returned",
        sa.pid
    );
    assert!(!env.runtime().join("bangerd.sock").exists());

    let out = env.run(&["daemon", "stop"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("not running"),
        "{}",
        text(&out)
    );
    assert!(env.daemons().is_empty());
}

#[test]
fn a_stale_socket_does_not_stop_auto_start() {
    let env = Env::new();
    std::fs::create_dir_all(env.runtime()).unwrap();
    drop(std::os::unix::net::UnixListener::bind(env.runtime().join("bangerd.sock")).unwrap());
    let out = env.run(&["daemon", "status", "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    let status: DaemonStatus = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(env.daemons(), vec![status.pid]);
}

#[test]
fn failed_auto_start_shows_the_daemon_log() {
    let env = Env::new();
    let config = env.path("bad.toml");
    std::fs::write(&config, "no_such_key = 1\n").unwrap();
    let out = env.run(&["--config", config.to_str().unwrap(), "daemon", "status"]);
    assert!(!out.status.success(), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("bangerd exited during start-up"),
        "{stderr}"
    );
    // The tail of the daemon log carries the daemon's own reason.
    assert!(stderr.contains("no_such_key"), "{stderr}");
    assert!(env.daemons().is_empty());
}

#[test]
fn system_mode_never_auto_starts() {
    let env = Env::new();
    let install = env.path("etc/install.toml");
    std::fs::create_dir_all(install.parent().unwrap()).unwrap();
    let p = |s: &str| env.path(s).display().to_string();
    std::fs::write(
        &install,
        format!(
            "owner_user = \"root\"\nowner_uid = 0\nowner_gid = 0\nversion = \"0.1.0\"\n\
             bin_dir = \"/usr/bin\"\nlib_dir = \"/usr/lib/banger\"\n\
             state_dir = \"{}\"\ncache_dir = \"{}\"\nrun_dir = \"{}\"\n\
             root_run_dir = \"{}\"\nconfig_path = \"{}\"\n",
            p("sys/state"),
            p("sys/cache"),
            p("sys/run"),
            p("sys/root-run"),
            p("sys/config.toml")
        ),
    )
    .unwrap();
    let run = |args: &[&str]| {
        env.banger()
            .env("BANGER_INSTALL_FILE", &install)
            .args(args)
            .output()
            .unwrap()
    };

    let out = run(&["daemon", "status"]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("systemctl start bangerd"),
        "{}",
        text(&out)
    );
    let out = run(&["daemon", "stop"]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("systemctl stop bangerd"),
        "{}",
        text(&out)
    );
    assert!(env.daemons().is_empty());
    assert!(
        !env.path("sys/run").exists(),
        "nothing was started or created"
    );
}

#[test]
fn auto_start_defers_to_a_daemon_that_holds_the_lock() {
    let env = Env::new();
    std::fs::create_dir_all(env.runtime()).unwrap();
    std::fs::set_permissions(
        env.runtime(),
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )
    .unwrap();
    // Play a daemon started by hand that holds the lock but never binds its
    // socket: the CLI's own daemon must give up, and the CLI must keep waiting
    // for the lock holder (until its start timeout) instead of failing on the
    // exit of the daemon it spawned.
    let lock = banger_host::lock::FileLock::exclusive(&env.runtime().join("bangerd.lock")).unwrap();
    std::fs::write(env.runtime().join("bangerd.lock"), "4242\n").unwrap();
    let out = env.run(&["daemon", "status"]);
    assert!(!out.status.success(), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("did not answer"), "{stderr}");
    assert!(
        stderr.contains("another bangerd (pid 4242) is already running"),
        "{stderr}"
    );
    assert!(env.daemons().is_empty());
    drop(lock);
}

#[test]
fn config_endpoint_matches_config_show_json() {
    let env = Env::new();
    env.write_config("bridge_name = \"banger7\"\n[vm_defaults]\nvcpu = 2\n");
    let out = env.run(&["daemon", "status", "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    let shown = env.run(&["config", "show", "--json"]);
    assert!(shown.status.success(), "{}", text(&shown));
    let shown: serde_json::Value = serde_json::from_slice(&shown.stdout).unwrap();
    let served = env.served_config();
    assert_eq!(served, shown);
    assert_eq!(served["bridge_name"]["provenance"], "config");
    assert!(env.run(&["daemon", "stop"]).status.success());
}

#[test]
fn config_edits_reach_the_running_daemon() {
    let env = Env::new();
    let config = env.write_config("default_image_name = \"img-a\"\n[vm_defaults]\nvcpu = 2\n");
    let out = env.run(&["daemon", "status", "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    let pid = serde_json::from_slice::<DaemonStatus>(&out.stdout)
        .unwrap()
        .pid;
    let served = || env.served_config();
    assert_eq!(served()["default_image_name"]["value"], "img-a");

    // A valid edit of live keys (an editor's rename over the file): in
    // force at the next request, no warning, no restart.
    let replace = |text: &str| {
        let tmp = config.with_extension("swp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, &config).unwrap();
    };
    replace(
        "default_image_name = \"img-b\"\n[vm_defaults]\nvcpu = 3\n\n\
         [[file_sync]]\nhost = \"~/.gitconfig\"\nguest = \"~/.gitconfig\"\n",
    );
    let out = env.run(&["daemon", "status", "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(out.stderr.is_empty(), "{}", text(&out));
    assert_eq!(
        serde_json::from_slice::<DaemonStatus>(&out.stdout)
            .unwrap()
            .pid,
        pid
    );
    let now = served();
    assert_eq!(now["default_image_name"]["value"], "img-b");
    assert_eq!(now["vm_defaults.vcpu"]["value"], 3);
    assert_eq!(
        now["file_sync"]["value"][0]["host"],
        env.path("home/.gitconfig").display().to_string()
    );

    // An invalid edit (written in place): the next command names file, line
    // and key, still works, and the last good config stays in force.
    std::fs::write(
        &config,
        "default_image_name = \"img-c\"\n[vm_defaults]\nvcpus = 4\n",
    )
    .unwrap();
    let out = env.run(&["vm", "list"]);
    assert!(out.status.success(), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "warning: {}:3: vm_defaults.vcpus",
            config.display()
        )) && stderr.contains("keeps using the last valid config"),
        "{}",
        text(&out)
    );
    assert_eq!(served()["default_image_name"]["value"], "img-b");
    assert_eq!(served()["vm_defaults.vcpu"]["value"], 3);

    // A key bound at start-up: named with the restart command; live keys of
    // the same edit apply; `config show` says what is in force.
    replace("default_image_name = \"img-d\"\nbridge_name = \"banger9\"\n");
    let out = env.run(&["config", "show"]);
    assert!(out.status.success(), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("bridge_name changed") && stderr.contains("`banger daemon stop`"),
        "{}",
        text(&out)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .find(|l| l.starts_with("bridge_name = "))
        .unwrap_or_else(|| panic!("{stdout}"));
    assert!(
        line.starts_with("bridge_name = \"banger9\"")
            && line.ends_with("# config; bangerd still uses \"banger0\" until restarted"),
        "{stdout}"
    );
    assert_eq!(served()["default_image_name"]["value"], "img-d");
    assert_eq!(served()["bridge_name"]["value"], "banger0");
    let shown = env.run(&["config", "show", "--json"]);
    let shown: serde_json::Value = serde_json::from_slice(&shown.stdout).unwrap();
    assert_eq!(shown["bridge_name"]["in_force"], "banger0");
    assert!(shown["default_image_name"].get("in_force").is_none());

    // After the restart the file is in force and nothing is left to say.
    let out = env.run(&["daemon", "stop"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(!alive(pid));
    let out = env.run(&["daemon", "status"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(out.stderr.is_empty(), "{}", text(&out));
    assert_eq!(served()["bridge_name"]["value"], "banger9");
    assert!(env.run(&["daemon", "stop"]).status.success());
}
