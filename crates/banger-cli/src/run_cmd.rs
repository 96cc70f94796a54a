//! `banger vm run [PATH] [flags] [-- CMD...]`: create and boot a VM, copy a
//! git workspace into `/root/repo`, then run a command (exiting with its
//! status) or open a shell. See docs/vm-run.md.
//!
//! The VM is created without booting and then started, so a guest that never
//! answers SSH is kept for `banger vm logs` instead of being rolled back.

use std::io::IsTerminal;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::process::{Child, Command, ExitCode, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use banger_wire::api::StreamEvent;
use banger_wire::routes::{self, NoBody};
use banger_wire::vm::{PhaseTiming, VmInfo, VmTimings};
use banger_wire::workspace::{valid_branch, WorkspaceMode, WorkspaceParams};
use clap::Args;

use crate::cli::GlobalArgs;
use crate::client::{self, Client, StreamRenderer};
use crate::shell;
use crate::vm_cmd;
use crate::workspace::Workspace;

/// Where the workspace lands in the guest.
pub const GUEST_REPO: &str = "/root/repo";

/// `banger vm run` flags.
#[derive(Debug, Default, Args)]
pub struct RunArgs {
    /// A directory inside a git repository: the repository's files are copied
    /// to /root/repo (tracked files with their working-tree content). Leave it
    /// out for a bare VM.
    pub path: Option<PathBuf>,
    #[command(flatten)]
    pub spec: vm_cmd::VmSpecArgs,
    /// Delete the VM when the command or shell ends, whatever its status
    /// (kept when the guest never answered SSH, to read its logs).
    #[arg(long)]
    pub rm: bool,
    /// Workspace only: create and check out branch NAME in the guest.
    #[arg(long, value_name = "NAME")]
    pub branch: Option<String>,
    /// Workspace only: the commit --branch starts from (default HEAD).
    #[arg(long, value_name = "REF")]
    pub from: Option<String>,
    /// Workspace only: also copy untracked files (ignored files never go).
    #[arg(long)]
    pub include_untracked: bool,
    /// Workspace only: print the files that would be copied and exit,
    /// creating nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Print how long each phase took.
    #[arg(short, long)]
    pub verbose: bool,
    /// Command to run in the guest (in /root/repo with a workspace, else
    /// /root); each argument reaches the guest as one word, quoted for its
    /// shell. Without it, a shell opens.
    #[arg(last = true, value_name = "CMD")]
    pub command: Vec<String>,
}

/// A flag combination `vm run` refuses before doing anything.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum RunFlagError {
    #[error("{flag} needs a workspace PATH (`banger vm run PATH {flag} ...`)")]
    NeedsWorkspace { flag: &'static str },
    #[error("--from needs --branch (it names the commit the new branch starts from)")]
    FromWithoutBranch,
    #[error("--branch {name:?} is not a valid branch name")]
    BadBranch { name: String },
}

/// Refuse workspace-only flags without a PATH, `--from` without `--branch`,
/// and branch names git would refuse.
pub fn validate(args: &RunArgs) -> Result<(), RunFlagError> {
    if args.path.is_none() {
        let used = [
            ("--branch", args.branch.is_some()),
            ("--from", args.from.is_some()),
            ("--include-untracked", args.include_untracked),
            ("--dry-run", args.dry_run),
        ];
        if let Some((flag, _)) = used.iter().find(|(_, on)| *on) {
            return Err(RunFlagError::NeedsWorkspace { flag });
        }
    }
    if args.from.is_some() && args.branch.is_none() {
        return Err(RunFlagError::FromWithoutBranch);
    }
    if let Some(name) = &args.branch {
        if !valid_branch(name) {
            return Err(RunFlagError::BadBranch { name: name.clone() });
        }
    }
    Ok(())
}

/// The remote shell text of command mode: run `cmd` (each argument one
/// word) in `dir`, with its pid file for Ctrl-C forwarding, and exit with
/// its status (128+N when a signal killed it: the shell survives a SIGINT
/// through its trap and reports the child's status).
pub fn remote_command(dir: &str, token: &str, cmd: &[String]) -> String {
    let pid_file = pid_file(token);
    format!(
        "cd {dir} || exit 1; echo $$ > {pid_file}; trap true INT; {}; s=$?; rm -f {pid_file}; exit $s",
        shell::join(cmd)
    )
}

fn pid_file(token: &str) -> String {
    format!("/tmp/banger-run-{token}.pid")
}

/// The guest command that starts the best-effort mise bootstrap in the
/// background when the repository asks for it.
pub fn tooling_command(repo_name: &str) -> String {
    let log_name: String = repo_name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect();
    let log = format!("/root/.cache/banger/vm-run-tooling-{log_name}.log");
    let tooling = "cd /root/repo; if ! command -v mise >/dev/null 2>&1; then echo 'mise is not installed in this image; skipped'; exit 0; fi; mise trust --yes . && mise install --yes";
    format!(
        "if [ -f {GUEST_REPO}/.mise.toml ] || [ -f {GUEST_REPO}/.tool-versions ]; then \
         mkdir -p /root/.cache/banger; \
         setsid sh -c {} > {log} 2>&1 < /dev/null & \
         fi",
        shell::quote(tooling)
    )
}

/// Set by the SIGINT handler while `vm run` waits for ssh.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_sigint(_: nix::libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Catch SIGINT in this process (a handler, not SIG_IGN, so the ssh we exec
/// gets the default disposition back).
fn catch_sigint() {
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
    let action = SigAction::new(
        SigHandler::Handler(on_sigint),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    let _ = unsafe { sigaction(Signal::SIGINT, &action) };
}

/// Records when each streamed phase first showed up, passing events on.
struct PhaseClock<'a> {
    inner: &'a mut dyn StreamRenderer,
    first: Vec<(String, Instant)>,
}

impl PhaseClock<'_> {
    fn at(&self, phases: &[&str]) -> Option<Instant> {
        self.first
            .iter()
            .filter(|(p, _)| phases.contains(&p.as_str()))
            .map(|(_, t)| *t)
            .min()
    }
}

impl StreamRenderer for PhaseClock<'_> {
    fn event(&mut self, event: &StreamEvent) {
        if let StreamEvent::Progress { phase, .. } = event {
            if !self.first.iter().any(|(p, _)| p == phase) {
                self.first.push((phase.clone(), Instant::now()));
            }
        }
        self.inner.event(event);
    }

    fn finish(&mut self, success: bool) {
        self.inner.finish(success);
    }
}

fn progress(render: &mut dyn StreamRenderer, phase: &str, message: String) {
    render.event(&StreamEvent::Progress {
        phase: phase.to_owned(),
        message,
        current: None,
        total: None,
    });
}

fn add(phases: &mut Vec<PhaseTiming>, phase: &str, millis: u64) {
    phases.push(PhaseTiming {
        phase: phase.to_owned(),
        millis,
    });
}

fn since(from: Instant, to: Instant) -> u64 {
    to.saturating_duration_since(from).as_millis() as u64
}

/// One line per phase, for `--verbose` and `banger vm show`.
pub fn format_timings(t: &VmTimings) -> String {
    t.phases
        .iter()
        .map(|p| format!("{:<15} {:.1} s\n", p.phase, p.millis as f64 / 1000.0))
        .collect()
}

/// Run `banger vm run`.
pub fn run(global: &GlobalArgs, args: RunArgs) -> anyhow::Result<ExitCode> {
    validate(&args)?;
    let ws = match &args.path {
        Some(p) => Some(Workspace::open(p, args.include_untracked)?),
        None => None,
    };
    let new_branch = match (&ws, &args.branch) {
        (Some(ws), Some(name)) => {
            let from = ws.resolve(args.from.as_deref().unwrap_or("HEAD"))?;
            Some((name.clone(), from))
        }
        _ => None,
    };
    if args.dry_run {
        let ws = ws.as_ref().expect("validate: --dry-run has a PATH");
        for f in &ws.files {
            println!("{}", f.display());
        }
        eprintln!(
            "dry run: {} files ({}) from {} would go to {GUEST_REPO}; nothing was created",
            ws.files.len(),
            banger_wire::units::human_bytes(ws.total_bytes()),
            ws.root.display()
        );
        return Ok(ExitCode::SUCCESS);
    }

    let (runtime, client) = global.connect()?;
    let mut render = client::stderr_renderer();
    let mut phases: Vec<PhaseTiming> = Vec::new();

    // Create (image, disks) without booting, then start: a failed create is
    // rolled back by the daemon; a failed start leaves the VM to inspect.
    let req = args.spec.request(true);
    let mut clock = PhaseClock {
        inner: render.as_mut(),
        first: Vec::new(),
    };
    let t0 = Instant::now();
    let Some(created) = unless_interrupted(&runtime, vm_cmd::create_vm(&client, &req, &mut clock))
    else {
        clock.finish(false);
        return interrupted(&runtime, &client, args.spec.name.as_deref(), args.rm);
    };
    let created = created?;
    let t1 = Instant::now();
    let disk_at = clock.at(&["identity", "disk"]).unwrap_or(t1);
    add(&mut phases, "resolve image", since(t0, disk_at));
    add(&mut phases, "clone disk", since(disk_at, t1));
    let name = created.name.clone();

    clock.first.clear();
    let Some(started) = unless_interrupted(&runtime, vm_cmd::start_vm(&client, &name, &mut clock))
    else {
        clock.finish(false);
        return interrupted(&runtime, &client, Some(&name), args.rm);
    };
    let t2 = Instant::now();
    let ssh_at = clock.at(&["ssh"]).unwrap_or(t2);
    drop(clock);
    if let Err(e) = started {
        if ssh_wait_timed_out(&e) {
            eprintln!(
                "{name} did not answer SSH in time; it is kept so you can see why: \
                 `banger vm logs {name}`, then `banger vm delete --force {name}`"
            );
        } else {
            // It never came up: nothing of it is worth keeping.
            let _ = runtime.block_on(delete(&client, &name));
        }
        return Err(e);
    }
    add(&mut phases, "boot", since(t1, ssh_at));
    add(&mut phases, "SSH ready", since(ssh_at, t2));

    let target = runtime.block_on(vm_cmd::ssh_target(&client, &name));
    let ip = target.as_ref().ok().and_then(|vm| vm.ip.clone());
    let outcome = target.and_then(|vm| {
        in_vm(
            &args,
            &vm,
            ws.as_ref(),
            new_branch.as_ref(),
            render.as_mut(),
            &mut phases,
            DaemonCalls {
                record: &|phases| {
                    let _ = runtime.block_on(record_timings(&client, &name, phases));
                },
                upload: &|params, ws, render| {
                    crate::workspace_cmd::upload(&runtime, &client, &name, params, ws, render)
                        .map(|_| ())
                },
            },
        )
    });
    let timings = VmTimings { phases };
    if args.rm {
        if let Err(e) = runtime.block_on(delete(&client, &name)) {
            eprintln!("warning: deleting {name} failed: {e:#}");
        }
    } else {
        let _ = runtime.block_on(record_timings(&client, &name, &timings.phases));
        if outcome.is_ok() {
            eprintln!(
                "{name} keeps running{}: `banger vm ssh {name}` to reconnect, \
                 `banger vm stop {name}` to stop it, `banger vm delete --force {name}` to delete it",
                ip.map(|ip| format!(" at {ip}")).unwrap_or_default()
            );
        } else {
            eprintln!("{name} is kept: `banger vm ssh {name}` to look, `banger vm delete --force {name}` to delete it");
        }
    }
    if args.verbose {
        eprint!("{}", format_timings(&timings));
    }
    outcome
}

/// Run `fut` to its end, or stop waiting for it at the first Ctrl-C
/// (`None`); the daemon goes on with the operation either way.
fn unless_interrupted<T>(
    runtime: &tokio::runtime::Runtime,
    fut: impl std::future::Future<Output = T>,
) -> Option<T> {
    runtime.block_on(async {
        tokio::select! {
            done = fut => Some(done),
            _ = tokio::signal::ctrl_c() => None,
        }
    })
}

/// Ctrl-C before the VM answered SSH: with `--rm` and a known name, delete
/// the VM (the daemon first finishes the step it is in); exit 130.
fn interrupted(
    runtime: &tokio::runtime::Runtime,
    client: &Client,
    name: Option<&str>,
    rm: bool,
) -> anyhow::Result<ExitCode> {
    match (name, rm) {
        (Some(name), true) => {
            eprintln!("interrupted: deleting {name} once its current step ends");
            if let Err(e) = runtime.block_on(delete(client, name)) {
                eprintln!("warning: deleting {name} failed: {e:#}");
            }
        }
        (Some(name), false) => eprintln!(
            "interrupted: {name} is left as it is; `banger vm delete --force {name}` removes it"
        ),
        (None, _) => {
            eprintln!("interrupted while creating the VM; it may be left: see `banger vm list`")
        }
    }
    Ok(ExitCode::from(130))
}

/// Whether a failed start is the daemon giving up on the guest's SSH (its
/// `SshNotReady` error): the VM is then kept for `banger vm logs`.
fn ssh_wait_timed_out(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        cause
            .downcast_ref::<client::ClientError>()
            .and_then(client::ClientError::api_error)
            .is_some_and(|api| api.message.contains("did not become reachable over SSH"))
    })
}

async fn delete(client: &Client, name: &str) -> anyhow::Result<()> {
    let target = routes::VM_DELETE.at(name).query("force", "true");
    client.call(&target, &NoBody {}).await?;
    Ok(())
}

async fn record_timings(client: &Client, name: &str, phases: &[PhaseTiming]) -> anyhow::Result<()> {
    let body = VmTimings {
        phases: phases.to_vec(),
    };
    client.call(&routes::VM_TIMINGS_PUT.at(name), &body).await?;
    Ok(())
}

/// Sends a workspace through the daemon's workspace route.
type Upload<'a> =
    dyn Fn(&WorkspaceParams, &Workspace, &mut dyn StreamRenderer) -> anyhow::Result<()> + 'a;

/// What `in_vm` asks of the daemon (through the caller's runtime and client).
struct DaemonCalls<'a> {
    /// Record the phase timings.
    record: &'a dyn Fn(&[PhaseTiming]),
    /// Send the workspace.
    upload: &'a Upload<'a>,
}

/// Everything after the VM answers SSH: workspace copy, then the command or
/// the shell. Returns the exit code of `vm run`.
fn in_vm(
    args: &RunArgs,
    vm: &VmInfo,
    ws: Option<&Workspace>,
    new_branch: Option<&(String, String)>,
    render: &mut dyn StreamRenderer,
    phases: &mut Vec<PhaseTiming>,
    daemon: DaemonCalls<'_>,
) -> anyhow::Result<ExitCode> {
    let DaemonCalls { record, upload } = daemon;
    if let Some(ws) = ws {
        let t = Instant::now();
        progress(
            render,
            "workspace",
            format!(
                "copying {} files ({}) to {GUEST_REPO}",
                ws.files.len(),
                banger_wire::units::human_bytes(ws.total_bytes())
            ),
        );
        copy_workspace(vm, ws, new_branch, render, upload)?;
        phases.push(PhaseTiming {
            phase: "workspace copy".into(),
            millis: since(t, Instant::now()),
        });
        progress(
            render,
            "workspace",
            format!(
                "{GUEST_REPO} is a git repository at {}{}",
                &ws.head[..12],
                new_branch
                    .map(|(b, _)| format!(", on new branch {b}"))
                    .unwrap_or_default()
            ),
        );
    }
    render.finish(true);
    record(phases);

    let dir = if ws.is_some() { GUEST_REPO } else { "/root" };
    let tty = std::io::stdin().is_terminal();
    catch_sigint();
    let t = Instant::now();
    let status = if args.command.is_empty() {
        if ws.is_some() {
            eprint!("{}", next_steps(&vm.name));
        }
        let mut ssh = vm_cmd::ssh_args(
            vm,
            &if ws.is_some() {
                vec![format!(
                    "cd {GUEST_REPO} && exec \"${{SHELL:-/bin/sh}}\" -l"
                )]
            } else {
                Vec::new()
            },
        )?;
        if tty && ws.is_some() {
            ssh.insert(0, "-t".into());
        }
        let mut child = spawn_ssh(&ssh, false)?;
        wait_child(&mut child, &|| {})?
    } else {
        let token = format!(
            "{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos())
        );
        let mut ssh = vm_cmd::ssh_args(vm, &[remote_command(dir, &token, &args.command)])?;
        if tty {
            // Ctrl-C travels as a byte to the guest's terminal.
            ssh.insert(0, "-t".into());
        } else {
            ssh.insert(0, "-T".into());
        }
        // Without a terminal, ssh is kept out of the terminal's SIGINT and
        // banger passes each Ctrl-C on to the guest command's process group.
        let mut child = spawn_ssh(&ssh, !tty)?;
        let forward = || {
            let pid = pid_file(&token);
            let kill = format!(
                "p=$(cat {pid} 2>/dev/null) && {{ kill -INT -- -$p 2>/dev/null || pkill -INT -P $p; }}"
            );
            if let Ok(args) = vm_cmd::ssh_args(vm, &[kill]) {
                let _ = Command::new("ssh")
                    .arg("-T")
                    .args(args)
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .status();
            }
        };
        wait_child(&mut child, &forward)?
    };
    phases.push(PhaseTiming {
        phase: "command".into(),
        millis: since(t, Instant::now()),
    });
    Ok(ExitCode::from(exit_code(status)))
}

/// What `vm run` in workspace mode without a command prints before the
/// shell opens: how to reach the VM from elsewhere.
pub fn next_steps(name: &str) -> String {
    format!(
        "next steps, from another terminal:\n\
         \x20 banger vm ssh {name}                      # another shell\n\
         \x20 banger vm acp {name}                      # an ACP agent (opencode) in {GUEST_REPO}\n\
         \x20 banger vm session start {name} --name dev -- CMD...   # a long-lived command\n\
         \x20 banger vm workspace prepare {name} PATH   # refresh {GUEST_REPO} from your checkout\n"
    )
}

/// The status `vm run` exits with: the command's, 128+N for a signal.
pub fn exit_code(status: ExitStatus) -> u8 {
    match (status.code(), status.signal()) {
        (Some(c), _) => c as u8,
        (None, Some(sig)) => (128 + sig) as u8,
        _ => 1,
    }
}

fn spawn_ssh(args: &[String], own_group: bool) -> anyhow::Result<Child> {
    let mut cmd = Command::new("ssh");
    cmd.args(args);
    if own_group {
        cmd.process_group(0);
    }
    cmd.spawn()
        .context("cannot run `ssh` (install the OpenSSH client)")
}

fn wait_child(child: &mut Child, on_interrupt: &dyn Fn()) -> anyhow::Result<ExitStatus> {
    INTERRUPTED.store(false, Ordering::SeqCst);
    loop {
        if let Some(status) = child.try_wait().context("waiting for ssh")? {
            return Ok(status);
        }
        if INTERRUPTED.swap(false, Ordering::SeqCst) {
            on_interrupt();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Copy the workspace into /root/repo through the daemon's workspace route
/// (the path of `vm workspace prepare`, in `metadata` mode: the selected
/// files and HEAD's history), then start the mise bootstrap.
fn copy_workspace(
    vm: &VmInfo,
    ws: &Workspace,
    new_branch: Option<&(String, String)>,
    render: &mut dyn StreamRenderer,
    upload: &Upload,
) -> anyhow::Result<()> {
    let params = WorkspaceParams {
        guest_path: GUEST_REPO.to_owned(),
        mode: WorkspaceMode::Metadata,
        readonly: false,
        head: Some(ws.head.clone()),
        host_branch: ws.branch.clone().filter(|b| valid_branch(b)),
        new_branch: new_branch.map(|(b, _)| b.clone()),
        from: new_branch.map(|(_, f)| f.clone()),
        size: Some(ws.total_bytes()),
    };
    upload(&params, ws, render)?;
    let tooling = vm_cmd::ssh_args(vm, &[tooling_command(&ws.name)])?;
    let status = Command::new("ssh")
        .arg("-T")
        .args(&tooling)
        .stdin(Stdio::null())
        .status()
        .context("cannot run `ssh` (install the OpenSSH client)")?;
    if !status.success() {
        eprintln!(
            "warning: starting the mise bootstrap in {GUEST_REPO} failed (exit {})",
            exit_code(status)
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn parse(argv: &[&str]) -> RunArgs {
        let cli = crate::cli::Cli::try_parse_from(argv).unwrap();
        match cli.command {
            crate::cli::Command::Vm(vm_cmd::VmCommand::Run(args)) => args,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_four_shapes_parse() {
        let a = parse(&["banger", "vm", "run"]);
        assert!(a.path.is_none() && a.command.is_empty());
        let a = parse(&["banger", "vm", "run", "./repo"]);
        assert_eq!(a.path, Some(PathBuf::from("./repo")));
        let a = parse(&["banger", "vm", "run", "./repo", "--", "make", "test"]);
        assert_eq!(a.command, ["make", "test"]);
        let a = parse(&["banger", "vm", "run", "--rm", "--", "script.sh"]);
        assert!(a.rm && a.path.is_none());
        assert_eq!(a.command, ["script.sh"]);
        assert_eq!(validate(&a), Ok(()));
    }

    #[test]
    fn workspace_flags_need_a_path() {
        for (flag, argv) in [
            ("--branch", vec!["--branch", "x"]),
            ("--from", vec!["--from", "main"]),
            ("--include-untracked", vec!["--include-untracked"]),
            ("--dry-run", vec!["--dry-run"]),
        ] {
            let mut full = vec!["banger", "vm", "run"];
            full.extend(argv);
            full.extend(["--", "true"]);
            let err = validate(&parse(&full)).unwrap_err();
            assert_eq!(err, RunFlagError::NeedsWorkspace { flag });
            assert!(err.to_string().starts_with(flag), "{err}");
        }
        let a = parse(&["banger", "vm", "run", ".", "--from", "main"]);
        assert_eq!(validate(&a), Err(RunFlagError::FromWithoutBranch));
        let a = parse(&["banger", "vm", "run", ".", "--branch", "a b"]);
        assert!(matches!(validate(&a), Err(RunFlagError::BadBranch { .. })));
        let a = parse(&[
            "banger", "vm", "run", ".", "--branch", "feat/x", "--from", "v1",
        ]);
        assert_eq!(validate(&a), Ok(()));
    }

    #[test]
    fn commands_are_quoted_word_by_word() {
        let cmd = remote_command(
            "/root/repo",
            "t",
            &["sh".into(), "-c".into(), "echo 'hi' && exit 7".into()],
        );
        assert_eq!(
            cmd,
            "cd /root/repo || exit 1; echo $$ > /tmp/banger-run-t.pid; trap true INT; \
             sh -c 'echo '\\''hi'\\'' && exit 7'; s=$?; rm -f /tmp/banger-run-t.pid; exit $s"
        );
    }

    #[test]
    fn only_an_ssh_wait_timeout_keeps_the_vm() {
        use banger_wire::api::{ApiError, ErrorCode};
        let failed = |message: &str| {
            anyhow::Error::new(client::ClientError::StreamFailed {
                path: "/v1/vms/x/start".into(),
                error: ApiError {
                    code: ErrorCode::Internal,
                    message: message.into(),
                },
            })
        };
        assert!(ssh_wait_timed_out(&failed(
            "VM x did not become reachable over SSH: timed out; last lines of its serial console:\n..."
        )));
        assert!(!ssh_wait_timed_out(&failed(
            "VM x: the VMM exited while the guest was booting"
        )));
        assert!(!ssh_wait_timed_out(&anyhow::anyhow!(
            "did not become reachable over SSH (not from the daemon)"
        )));
    }

    #[test]
    fn signals_become_128_plus_n() {
        assert_eq!(exit_code(ExitStatus::from_raw(7 << 8)), 7);
        assert_eq!(exit_code(ExitStatus::from_raw(2)), 130);
    }
}
