//! `banger completion` driven by real shells: bash (the script installed
//! where bash-completion's loader finds it, the registered completion
//! function called the way bash calls it) and fish (`complete -C`, fish's own
//! completion engine). Against a running `bangerd` with two VM records the
//! names come back; with no daemon nothing does, and nothing starts one.
//!
//! Needs `bangerd` built next to `banger` (`cargo build -p bangerd`), bash
//! with bash-completion, and fish (`scripts/deps.sh` installs them).

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use banger_cli::client::Client;
use banger_host::paths::Layout;
use banger_state::{StateDb, Timestamp, VmRecord, VmState};

/// Bound for anything to finish; generous for a loaded machine.
const TIMEOUT: Duration = Duration::from_secs(60);

fn banger_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_banger"))
}

/// A private per-user environment: HOME and XDG dirs in a temp dir.
struct Env {
    dir: tempfile::TempDir,
    layout: Layout,
}

impl Env {
    fn new() -> Env {
        let dir = tempfile::tempdir().unwrap();
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
        std::fs::create_dir_all(&layout.state_dir).unwrap();
        Env { dir, layout }
    }

    fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let root = self.dir.path();
        let path = format!(
            "{}:{}",
            banger_bin().parent().unwrap().display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let mut cmd = Command::new(program);
        cmd.env("HOME", &self.layout.home)
            .env("PATH", path)
            .env("XDG_CONFIG_HOME", root.join("config"))
            .env("XDG_STATE_HOME", root.join("state"))
            .env("XDG_CACHE_HOME", root.join("cache"))
            .env("XDG_DATA_HOME", root.join("data"))
            .env("XDG_RUNTIME_DIR", root.join("run"))
            .env("BANGER_INSTALL_FILE", root.join("no-install/install.toml"))
            .env_remove("BANGER_CONFIG")
            .env_remove("NOTIFY_SOCKET")
            .current_dir(&self.layout.home)
            .stdin(Stdio::null());
        cmd
    }

    /// Install the bash script where bash-completion's loader looks.
    fn install_bash(&self) {
        let out = self
            .command(banger_bin())
            .args(["completion", "bash"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        let dir = self.dir.path().join("data/bash-completion/completions");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("banger"), &out.stdout).unwrap();
    }

    /// The candidates bash offers for `banger WORDS<TAB>` (the last word is
    /// the one being completed, `""` after a space), through the completion
    /// bash-completion loads for `banger`.
    fn bash_complete(&self, words: &[&str]) -> Vec<String> {
        let quoted: Vec<String> = words.iter().map(|w| format!("'{w}'")).collect();
        let script = format!(
            r#"
set -u
source /usr/share/bash-completion/bash_completion
_completion_loader banger
spec=$(complete -p banger) || exit 3
case "$spec" in *"-o default"*) echo "falls back to file names: $spec" >&2; exit 4;; esac
COMP_WORDS=(banger {words})
COMP_CWORD=${{#COMP_WORDS[@]}}; COMP_CWORD=$((COMP_CWORD - 1))
COMP_LINE="${{COMP_WORDS[*]}}"
COMP_POINT=${{#COMP_LINE}}
COMP_TYPE=63
func=$(printf '%s\n' "$spec" | sed -n 's/.*-F \([^ ]*\) .*/\1/p')
"$func" banger '{cur}' '{prev}'
printf '%s\n' "${{COMPREPLY[@]}}"
"#,
            words = quoted.join(" "),
            cur = words.last().copied().unwrap_or_default(),
            prev = words
                .len()
                .checked_sub(2)
                .map(|i| words[i])
                .unwrap_or("banger"),
        );
        let out = run_bounded(self.command("bash").args(["--norc", "-c", &script]));
        assert!(
            out.status.success(),
            "bash completion failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.stderr.is_empty(),
            "stderr: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        lines(&out.stdout)
    }

    /// The candidates fish offers for `banger WORDS... <TAB>`.
    fn fish_complete(&self, words: &[&str]) -> Vec<String> {
        let line = format!("banger {} ", words.join(" "));
        let script = format!("banger completion fish | source; complete -C '{line}'");
        let out = run_bounded(self.command("fish").args(["--no-config", "-c", &script]));
        assert!(out.status.success(), "{out:?}");
        assert!(
            out.stderr.is_empty(),
            "stderr: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // fish prints "candidate<TAB>description".
        lines(&out.stdout)
            .into_iter()
            .map(|l| l.split('\t').next().unwrap_or_default().to_owned())
            .collect()
    }
}

/// The candidates that are not flags (`--help` and friends are offered too).
fn values(candidates: Vec<String>) -> Vec<String> {
    let mut v: Vec<String> = candidates
        .into_iter()
        .filter(|c| !c.starts_with('-'))
        .collect();
    v.sort();
    v
}

fn lines(bytes: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(bytes)
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Run `cmd`, killing it if it outlives [`TIMEOUT`] (a completion that
/// hangs is a failure, not a stuck test run).
fn run_bounded(cmd: &mut Command) -> Output {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn shell");
    let deadline = Instant::now() + TIMEOUT;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("{cmd:?} did not finish within {TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

fn record(name: &str, n: u8) -> VmRecord {
    let now = Timestamp::now();
    VmRecord {
        id: format!("{n:02x}{}", "c".repeat(30)),
        name: name.into(),
        image: "img".into(),
        kernel: "k".into(),
        state: VmState::Stopped,
        vcpu: 1,
        memory_mib: 256,
        disk_bytes: 1 << 30,
        ip: None,
        mac: format!("02:00:00:00:01:{n:02x}"),
        tap: None,
        backend: None,
        vmm_pid: None,
        vmm_start_time: None,
        clone_strategy: None,
        created_at: now,
        updated_at: now,
        last_activity_at: None,
        spec: serde_json::json!({}),
    }
}

/// `bangerd` in `env`, killed on drop.
struct Daemon(std::process::Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_daemon(env: &Env) -> Daemon {
    let bin = banger_bin().with_file_name("bangerd");
    assert!(
        bin.is_file(),
        "{} is not built: run `cargo build -p bangerd` first",
        bin.display()
    );
    let mut cmd = env.command(&bin);
    cmd.stdout(Stdio::null()).stderr(Stdio::null());
    let daemon = Daemon(cmd.spawn().unwrap());
    let client = Client::at(env.layout.socket());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let deadline = Instant::now() + TIMEOUT;
    while rt.block_on(client.status()).is_err() {
        assert!(Instant::now() < deadline, "bangerd did not answer");
        std::thread::sleep(Duration::from_millis(50));
    }
    daemon
}

fn have(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

fn require_shells() {
    for (check, what) in [
        (
            Path::new("/usr/share/bash-completion/bash_completion").is_file(),
            "bash-completion",
        ),
        (have("fish"), "fish"),
    ] {
        assert!(
            check,
            "{what} is not installed (scripts/deps.sh installs it)"
        );
    }
}

#[test]
fn vm_names_come_from_the_running_daemon() {
    require_shells();
    let env = Env::new();
    {
        let db = StateDb::open(&env.layout.database()).unwrap();
        db.insert_vm(&record("alpha", 1)).unwrap();
        db.insert_vm(&record("bravo", 2)).unwrap();
    }
    let _daemon = start_daemon(&env);
    env.install_bash();

    assert_eq!(
        values(env.bash_complete(&["vm", "ssh", ""])),
        ["alpha", "bravo"]
    );
    assert_eq!(env.bash_complete(&["vm", "ssh", "b"]), ["bravo"]);
    // `vm delete` takes several names.
    assert_eq!(
        values(env.bash_complete(&["vm", "delete", "alpha", ""])),
        ["alpha", "bravo"]
    );
    // Subcommands come from the same binary.
    let subs = env.bash_complete(&["vm", "s"]);
    for sub in ["ssh", "start", "stop", "show"] {
        assert!(subs.contains(&sub.to_owned()), "{subs:?}");
    }

    assert_eq!(
        values(env.fish_complete(&["vm", "ssh"])),
        ["alpha", "bravo"]
    );
}

#[test]
fn with_no_daemon_nothing_is_offered_and_none_is_started() {
    require_shells();
    let env = Env::new();
    env.install_bash();
    // Files in the working directory must not be offered either.
    std::fs::write(env.layout.home.join("alpha.txt"), "").unwrap();

    let names = values(env.bash_complete(&["vm", "ssh", ""]));
    assert!(names.is_empty(), "{names:?}");
    let names = values(env.fish_complete(&["vm", "ssh"]));
    assert!(names.is_empty(), "{names:?}");
    assert!(env.bash_complete(&["vm", "ssh", "a"]).is_empty());
    assert!(!env.layout.socket().exists(), "completion started a daemon");
    // Flags and subcommands need no daemon.
    assert!(env.bash_complete(&["vm", ""]).contains(&"ssh".to_owned()));
}

#[test]
fn help_shows_every_shells_recipe() {
    let env = Env::new();
    let out = env
        .command(banger_bin())
        .args(["completion", "--help"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "bash-completion/completions/banger",
        "source <(banger completion zsh)",
        "~/.config/fish/completions/banger.fish",
        "Invoke-Expression",
    ] {
        assert!(help.contains(needle), "{needle} missing from:\n{help}");
    }
}
