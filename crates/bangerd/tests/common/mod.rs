//! Shared harness: a private per-user environment (HOME and every XDG dir in
//! a temp dir, no system install) and a real `bangerd` process in it.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use banger_cli::client::Client;
use banger_host::paths::Layout;

/// Generous bound for a daemon to come up or go away on a loaded machine.
pub const PROCESS_TIMEOUT: Duration = Duration::from_secs(30);

/// A temp HOME with XDG dirs, and the per-user layout they give.
pub struct TestEnv {
    pub dir: tempfile::TempDir,
    pub layout: Layout,
}

impl TestEnv {
    pub fn new() -> TestEnv {
        let dir = tempfile::Builder::new()
            .prefix("bangerd-test-")
            .tempdir()
            .unwrap();
        let root = dir.path();
        let layout = Layout::per_user(
            root.join("home"),
            Some(root.join("config")),
            Some(root.join("state")),
            Some(root.join("cache")),
            Some(root.join("run")),
            nix::unistd::getuid().as_raw(),
        );
        std::fs::create_dir_all(&layout.home).unwrap();
        TestEnv { dir, layout }
    }

    /// A command with this environment instead of the caller's HOME/XDG.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let root = self.dir.path();
        let mut cmd = Command::new(program);
        cmd.env("HOME", &self.layout.home)
            .env("XDG_CONFIG_HOME", root.join("config"))
            .env("XDG_STATE_HOME", root.join("state"))
            .env("XDG_CACHE_HOME", root.join("cache"))
            .env("XDG_RUNTIME_DIR", root.join("run"))
            .env("BANGER_INSTALL_FILE", root.join("no-install/install.toml"))
            .env("BANGERD_ROOT_BIN", helper_bin())
            .env("RUST_LOG", "debug");
        for var in [
            "BANGER_CONFIG",
            "NOTIFY_SOCKET",
            "JOURNAL_STREAM",
            "WATCHDOG_USEC",
            "WATCHDOG_PID",
        ] {
            cmd.env_remove(var);
        }
        cmd
    }

    pub fn socket(&self) -> PathBuf {
        self.layout.socket()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.layout.log_file()).unwrap_or_default()
    }
}

/// The `bangerd` binary under test.
pub fn daemon_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_bangerd"))
}

/// `bangerd-root` from the same build (built by `cargo test` of the workspace
/// or of `-p bangerd-root`).
pub fn helper_bin() -> PathBuf {
    daemon_bin().with_file_name("bangerd-root")
}

/// A running `bangerd`, stopped (SIGKILL) when dropped if still running.
pub struct Daemon {
    pub child: Child,
    pub socket: PathBuf,
}

impl Daemon {
    /// Start `bangerd` in `env` and wait until `/v1/status` answers.
    pub async fn start(env: &TestEnv) -> Daemon {
        Daemon::start_with(env, env.command(daemon_bin())).await
    }

    /// Start a prepared command (e.g. under `ip netns exec`) and wait.
    pub async fn start_with(env: &TestEnv, cmd: Command) -> Daemon {
        Daemon::start_at(env, cmd, &env.socket()).await
    }

    /// Start a prepared command whose socket is at `socket` and wait.
    pub async fn start_at(env: &TestEnv, mut cmd: Command, socket: &Path) -> Daemon {
        cmd.stdin(Stdio::null()).stdout(Stdio::null());
        let child = cmd.spawn().expect("spawn bangerd");
        let mut daemon = Daemon {
            child,
            socket: socket.to_owned(),
        };
        let client = Client::at(&daemon.socket);
        let deadline = Instant::now() + PROCESS_TIMEOUT;
        loop {
            if let Some(status) = daemon.child.try_wait().unwrap() {
                panic!(
                    "bangerd exited during start-up ({status}); log:\n{}",
                    env.log()
                );
            }
            if client.status().await.is_ok() {
                return daemon;
            }
            assert!(
                Instant::now() < deadline,
                "bangerd did not answer; log:\n{}",
                env.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn client(&self) -> Client {
        Client::at(&self.socket)
    }

    /// Wait for the process to exit on its own.
    pub fn wait_exit(&mut self) -> ExitStatus {
        wait_child(&mut self.child)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Wait (bounded) for `child` to exit.
pub fn wait_child(child: &mut Child) -> ExitStatus {
    wait_child_within(child, PROCESS_TIMEOUT)
        .unwrap_or_else(|| panic!("process {} did not exit", child.id()))
}

/// `child`'s exit status, or `None` when it still runs after `limit`.
pub fn wait_child_within(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Wait (bounded) until `pid` is gone or a zombie; false on timeout.
pub fn wait_pid_gone(pid: u32) -> bool {
    let deadline = Instant::now() + PROCESS_TIMEOUT;
    while Instant::now() < deadline {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Err(_) => return true,
            Ok(stat) if stat.contains(") Z ") => return true,
            Ok(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
    false
}

/// `curl --unix-socket SOCK` with extra args; returns (HTTP status, body).
pub fn curl(socket: &Path, args: &[&str]) -> (u16, String) {
    curl_via(Command::new("curl"), socket, args)
}

/// [`curl`] run by `cmd`: `curl` itself, or a wrapper (`setpriv ... curl`)
/// whose last argument is `curl`.
pub fn curl_via(mut cmd: Command, socket: &Path, args: &[&str]) -> (u16, String) {
    let out = cmd
        .args(["-sS", "--max-time", "20", "--unix-socket"])
        .arg(socket)
        .args(["-w", "\n%{http_code}"])
        .args(args)
        .output()
        .expect("run curl");
    assert!(
        out.status.success(),
        "curl failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let (body, code) = text.rsplit_once('\n').expect("status line");
    (code.trim().parse().unwrap(), body.to_owned())
}

/// Whether privileged tests can run; prints why not (and fails when
/// `BANGER_REQUIRE_PRIVILEGED=1`).
pub fn privileged(test: &str) -> bool {
    banger_test_support::Gate::named(test)
        .root()
        .tools(&["ip", "nft"])
        .file(&helper_bin(), "cargo build -p bangerd-root")
        .check()
}
