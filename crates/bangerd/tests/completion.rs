//! `banger completion` driven by real shells: bash (the script installed
//! where bash-completion's loader finds it, the registered completion
//! function called the way bash calls it) and fish (`complete -C`, fish's own
//! completion engine). Against a running `bangerd` with two VM records the
//! names come back; with no daemon nothing does, and nothing starts one.
//!
//! Needs bash with bash-completion, and fish (`scripts/deps.sh` installs them).

mod common;
mod vm_records;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use banger_state::{StateDb, VmState};
use common::{Daemon, TestEnv};
use vm_records::record;

/// Bound for a shell to finish; generous for a loaded machine.
const TIMEOUT: Duration = Duration::from_secs(60);

fn banger_bin() -> PathBuf {
    common::daemon_bin().with_file_name("banger")
}

/// A shell command in `env`, with `banger` on PATH, run from the home (whose
/// files must never be offered).
fn shell(env: &TestEnv, program: &str) -> Command {
    let path = format!(
        "{}:{}",
        banger_bin().parent().unwrap().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut cmd = env.command(program);
    cmd.env("PATH", path)
        .env("XDG_DATA_HOME", env.dir.path().join("data"))
        .current_dir(&env.layout.home)
        .stdin(Stdio::null());
    cmd
}

/// Install the bash script where bash-completion's loader looks.
fn install_bash(env: &TestEnv) {
    let out = shell(env, "banger")
        .args(["completion", "bash"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let dir = env.dir.path().join("data/bash-completion/completions");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("banger"), &out.stdout).unwrap();
}

/// The candidates bash offers for `banger WORDS<TAB>` (the last word is
/// the one being completed, `""` after a space), through the completion
/// bash-completion loads for `banger`.
fn bash_complete(env: &TestEnv, words: &[&str]) -> Vec<String> {
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
    let out = run_bounded(shell(env, "bash").args(["--norc", "-c", &script]));
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
fn fish_complete(env: &TestEnv, words: &[&str]) -> Vec<String> {
    let line = format!("banger {} ", words.join(" "));
    let script = format!("banger completion fish | source; complete -C '{line}'");
    let out = run_bounded(shell(env, "fish").args(["--no-config", "-c", &script]));
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

#[tokio::test]
async fn vm_names_come_from_the_running_daemon() {
    require_shells();
    let env = TestEnv::new();
    std::fs::create_dir_all(&env.layout.state_dir).unwrap();
    {
        let db = StateDb::open(&env.layout.database()).unwrap();
        db.insert_vm(&record("alpha", 1, None, VmState::Stopped))
            .unwrap();
        db.insert_vm(&record("bravo", 2, None, VmState::Stopped))
            .unwrap();
    }
    let _daemon = Daemon::start(&env).await;
    install_bash(&env);

    assert_eq!(
        values(bash_complete(&env, &["vm", "ssh", ""])),
        ["alpha", "bravo"]
    );
    assert_eq!(bash_complete(&env, &["vm", "ssh", "b"]), ["bravo"]);
    // `vm delete` takes several names.
    assert_eq!(
        values(bash_complete(&env, &["vm", "delete", "alpha", ""])),
        ["alpha", "bravo"]
    );
    // Subcommands come from the same binary.
    let subs = bash_complete(&env, &["vm", "s"]);
    for sub in ["ssh", "start", "stop", "show"] {
        assert!(subs.contains(&sub.to_owned()), "{subs:?}");
    }

    assert_eq!(
        values(fish_complete(&env, &["vm", "ssh"])),
        ["alpha", "bravo"]
    );
}

#[test]
fn with_no_daemon_nothing_is_offered_and_none_is_started() {
    require_shells();
    let env = TestEnv::new();
    install_bash(&env);
    // Files in the working directory must not be offered either.
    std::fs::write(env.layout.home.join("alpha.txt"), "").unwrap();

    let names = values(bash_complete(&env, &["vm", "ssh", ""]));
    assert!(names.is_empty(), "{names:?}");
    let names = values(fish_complete(&env, &["vm", "ssh"]));
    assert!(names.is_empty(), "{names:?}");
    assert!(bash_complete(&env, &["vm", "ssh", "a"]).is_empty());
    assert!(!env.layout.socket().exists(), "completion started a daemon");
    // Flags and subcommands need no daemon.
    assert!(bash_complete(&env, &["vm", ""]).contains(&"ssh".to_owned()));
}

#[test]
fn help_shows_every_shells_recipe() {
    let env = TestEnv::new();
    let out = shell(&env, "banger")
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
