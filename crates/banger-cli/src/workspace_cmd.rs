//! `banger vm workspace prepare` and `banger vm acp` (docs/workspace.md).
//!
//! `prepare` builds the tar stream from a local checkout (the file
//! selection, tar and pack code `vm run` uses, [`crate::workspace`]) and
//! streams it as the body of `POST /v1/vms/{name}/workspace`; the daemon
//! unpacks it in the guest and switches the guest path to it atomically.
//!
//! `acp` runs the guest's `opencode acp` over OpenSSH with exactly the
//! arguments of `banger vm ssh` (pinned host key), after a preflight
//! connection that checks the directory and that `opencode` is on the PATH.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, ExitCode, Stdio};

use anyhow::{bail, Context};
use banger_wire::workspace::{
    valid_branch, validate_guest_path, WorkspaceMode, WorkspaceParams, DEFAULT_GUEST_PATH,
};
use bytes::Bytes;
use clap::{Args, Subcommand};

use crate::cli::GlobalArgs;
use crate::client::{self, Client, UploadBody};
use crate::shell;
use crate::vm_cmd;
use crate::workspace::Workspace;

/// The tar entry under `.git` that carries the pack (the daemon's
/// `workspace::PACK_ENTRY`; the guest script looks for this name).
pub const PACK_ENTRY: &str = "banger-workspace.pack";

/// `banger vm workspace` subcommands.
#[derive(Debug, Subcommand)]
pub enum WorkspaceCommand {
    /// Copy a local git checkout into a running VM (default /root/repo),
    /// replacing the previous copy atomically (docs/workspace.md).
    Prepare(PrepareArgs),
}

/// `banger vm workspace prepare` flags.
#[derive(Debug, Args)]
pub struct PrepareArgs {
    /// VM name (it must be running).
    pub vm: String,
    /// A directory inside a git repository (default: the current
    /// directory); the repository's top level is copied.
    #[arg(value_hint = clap::ValueHint::DirPath)]
    pub path: Option<PathBuf>,
    /// Where the tree appears in the guest (a symlink to the current copy).
    #[arg(long, default_value = DEFAULT_GUEST_PATH, value_name = "DIR")]
    pub guest_path: String,
    /// Make the copy read-only in the guest (a read-only bind mount; root in
    /// the guest could remount it).
    #[arg(long)]
    pub readonly: bool,
    /// Create and check out branch NAME in the guest copy.
    #[arg(long, value_name = "NAME")]
    pub branch: Option<String>,
    /// With --branch: the commit NAME starts from (default HEAD).
    #[arg(long, value_name = "REF")]
    pub from: Option<String>,
    /// shallow_metadata (tracked + untracked-not-ignored files, HEAD's
    /// commit as a shallow repository), metadata (with the full history),
    /// or full_copy (the directory as it is, .git and submodules included).
    #[arg(long, default_value = "shallow_metadata", value_name = "MODE")]
    pub mode: WorkspaceMode,
    /// Print what would be sent (one path per line) and exit; the daemon
    /// is not contacted.
    #[arg(long)]
    pub dry_run: bool,
}

/// `banger vm acp` flags.
#[derive(Debug, Args)]
pub struct AcpArgs {
    /// VM name (it must be running).
    pub vm: String,
    /// Directory `opencode acp` runs in (default /root/repo when it exists,
    /// else /root).
    #[arg(long, value_name = "DIR")]
    pub cwd: Option<String>,
}

/// Run `banger vm workspace ...`.
pub fn run(global: &GlobalArgs, cmd: WorkspaceCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        WorkspaceCommand::Prepare(args) => prepare(global, args),
    }
}

/// The parameters (validated) and the workspace of `args`.
pub fn plan(args: &PrepareArgs) -> anyhow::Result<(WorkspaceParams, Workspace)> {
    validate_guest_path(&args.guest_path)?;
    if args.from.is_some() && args.branch.is_none() {
        bail!("--from needs --branch (it names the commit the new branch starts from)");
    }
    if let Some(name) = args.branch.as_deref().filter(|b| !valid_branch(b)) {
        bail!("--branch {name:?} is not a valid branch name");
    }
    let path = args.path.clone().unwrap_or_else(|| PathBuf::from("."));
    let ws = Workspace::for_mode(&path, args.mode)?;
    let from = match &args.branch {
        Some(_) => Some(ws.resolve(args.from.as_deref().unwrap_or("HEAD"))?),
        None => None,
    };
    let params = WorkspaceParams {
        guest_path: args.guest_path.trim_end_matches('/').to_owned(),
        mode: args.mode,
        readonly: args.readonly,
        head: Some(ws.head.clone()),
        host_branch: ws.branch.clone().filter(|b| valid_branch(b)),
        new_branch: args.branch.clone(),
        from,
        size: Some(ws.total_bytes()),
    };
    params.validate()?;
    Ok((params, ws))
}

fn prepare(global: &GlobalArgs, args: PrepareArgs) -> anyhow::Result<ExitCode> {
    let (params, ws) = plan(&args)?;
    let size = banger_wire::units::human_bytes(ws.total_bytes());
    if args.dry_run {
        let mut out = std::io::stdout().lock();
        for f in &ws.files {
            writeln!(out, "{}", f.display())?;
        }
        let git = match args.mode {
            WorkspaceMode::ShallowMetadata => format!(
                "plus git metadata: HEAD {} without history (shallow)",
                &ws.head[..12]
            ),
            WorkspaceMode::Metadata => format!(
                "plus git metadata: HEAD {} with its history (commits and trees)",
                &ws.head[..12]
            ),
            WorkspaceMode::FullCopy => "including .git as it is".to_owned(),
        };
        eprintln!(
            "dry run: {} entries ({size}) from {} would go to {} in VM {} ({}; {git}){}; nothing was sent",
            ws.files.len(),
            ws.root.display(),
            params.guest_path,
            args.vm,
            args.mode,
            if args.readonly { ", read-only" } else { "" }
        );
        return Ok(ExitCode::SUCCESS);
    }

    let (runtime, client) = global.connect()?;
    let mut render = client::stderr_renderer();
    let report = upload(&runtime, &client, &args.vm, &params, &ws, render.as_mut())?;
    eprintln!(
        "{} in VM {} is now {} ({size} of files, {}{}){}",
        report.guest_path,
        args.vm,
        ws_root_text(&args),
        report.mode,
        if report.readonly { ", read-only" } else { "" },
        if report.replaced {
            "; the previous copy was replaced"
        } else {
            ""
        }
    );
    Ok(ExitCode::SUCCESS)
}

/// Send `ws` to VM `vm` through the workspace route with `params` (the
/// one copy path of `vm workspace prepare` and `vm run`).
pub fn upload(
    runtime: &tokio::runtime::Runtime,
    client: &Client,
    vm: &str,
    params: &WorkspaceParams,
    ws: &Workspace,
    render: &mut dyn client::StreamRenderer,
) -> anyhow::Result<banger_wire::workspace::WorkspaceReport> {
    let extra: Vec<String> = params.from.iter().cloned().collect();
    let mode = params.mode;
    let ws = ws.clone();
    let (body, writer) = tar_body(move |out| {
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        ws.write_prepare_tar(mode, &extra, PACK_ENTRY, out)
            .map(|_| ())
            .map_err(|e| std::io::Error::other(e.to_string()))
    });
    let result = runtime.block_on(client.call_upload(&params.target(vm), body, render));
    // The writer ends once the body is taken or dropped.
    let written = writer.join();
    match (result, written) {
        (Ok(report), _) => Ok(report),
        // The stream's own error (a file that cannot be read) says more
        // than the daemon's "the upload broke off".
        (Err(e), Ok(Err(local))) => Err(anyhow::Error::new(local).context(e.to_string())),
        (Err(e), _) => Err(e.into()),
    }
}

fn ws_root_text(args: &PrepareArgs) -> String {
    let path = args.path.clone().unwrap_or_else(|| PathBuf::from("."));
    format!("a copy of {}", path.display())
}

/// A request body fed by `write` on a thread of its own (the tar and pack
/// code is blocking I/O): 256 KiB chunks through a small channel, so at
/// most about 1 MiB is buffered. An error of `write` ends the body with that
/// error, which aborts the request (the daemon then switches nothing).
fn tar_body<F>(write: F) -> (UploadBody, std::thread::JoinHandle<std::io::Result<()>>)
where
    F: FnOnce(&mut dyn Write) -> std::io::Result<()> + Send + 'static,
{
    use http_body_util::BodyExt;
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<Bytes>>(4);
    let writer = std::thread::spawn(move || {
        let mut out = ChannelWriter {
            tx: tx.clone(),
            buf: Vec::with_capacity(CHUNK),
        };
        let result = write(&mut out).and_then(|()| out.flush());
        if let Err(e) = &result {
            let _ = tx.blocking_send(Err(std::io::Error::new(e.kind(), e.to_string())));
        }
        result
    });
    let chunks = futures::stream::unfold(rx, |mut rx| async move {
        let next = rx.recv().await?;
        Some((next.map(hyper::body::Frame::data), rx))
    });
    (
        http_body_util::StreamBody::new(chunks).boxed_unsync(),
        writer,
    )
}

const CHUNK: usize = 256 << 10;

struct ChannelWriter {
    tx: tokio::sync::mpsc::Sender<std::io::Result<Bytes>>,
    buf: Vec<u8>,
}

impl Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHUNK {
            self.flush()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK)));
        self.tx.blocking_send(Ok(chunk)).map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::BrokenPipe,
                "the daemon stopped reading the workspace stream",
            )
        })
    }
}

/// Exit status of the acp preflight when the directory is missing.
const ACP_NO_DIR: i32 = 95;
/// Exit status of the acp preflight when `opencode` is not on the PATH.
const ACP_NO_OPENCODE: i32 = 96;

/// The remote shell text choosing the directory: `cwd`, else /root/repo
/// when it exists, else /root.
fn acp_dir(cwd: Option<&str>) -> String {
    match cwd {
        Some(dir) => format!("d={}", shell::quote(dir)),
        None => {
            format!("if [ -d {DEFAULT_GUEST_PATH} ]; then d={DEFAULT_GUEST_PATH}; else d=/root; fi")
        }
    }
}

/// The preflight: the directory exists and `opencode` is on the PATH of a
/// command run over ssh (the same PATH the real run gets).
pub fn acp_preflight(cwd: Option<&str>) -> String {
    format!(
        "{}; [ -d \"$d\" ] || exit {ACP_NO_DIR}; command -v opencode >/dev/null 2>&1 || exit {ACP_NO_OPENCODE}; exit 0",
        acp_dir(cwd)
    )
}

/// The remote command of `vm acp`.
pub fn acp_command(cwd: Option<&str>) -> String {
    format!("{}; cd \"$d\" && exec opencode acp", acp_dir(cwd))
}

/// Run `banger vm acp`: preflight over one ssh connection, then replace this
/// process with the ssh that carries `opencode acp` (its stdio and exit
/// status are ours).
pub fn acp(global: &GlobalArgs, args: AcpArgs) -> anyhow::Result<ExitCode> {
    let vm = {
        let (runtime, client) = global.connect()?;
        runtime.block_on(vm_cmd::ssh_target(&client, &args.vm))?
    };
    let cwd = args.cwd.as_deref();
    let mut check = vec!["-T".to_owned()];
    check.extend(vm_cmd::ssh_args(&vm, &[acp_preflight(cwd)])?);
    let status = Command::new("ssh")
        .args(&check)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .status()
        .context("cannot run `ssh` (install the OpenSSH client)")?;
    let name = &args.vm;
    match status.code() {
        Some(0) => {}
        Some(ACP_NO_DIR) => bail!(
            "--cwd {}: no such directory in VM {name}",
            cwd.unwrap_or_default()
        ),
        Some(ACP_NO_OPENCODE) => bail!(
            "opencode is not on the PATH of VM {name}, so `opencode acp` cannot run; install it in \
             the guest, e.g. `banger vm ssh {name} -- mise use -g opencode` (with mise's shims on \
             the PATH of ssh commands) or `banger vm ssh {name} -- npm install -g opencode-ai`, \
             then check with `banger vm ssh {name} -- command -v opencode`"
        ),
        _ => bail!(
            "checking for opencode in VM {name} over ssh failed (exit {})",
            crate::run_cmd::exit_code(status)
        ),
    }
    use std::os::unix::process::CommandExt;
    // -T: no terminal, so bytes pass unchanged; -e none: no escape character.
    let mut argv = vec!["-T".to_owned(), "-e".to_owned(), "none".to_owned()];
    argv.extend(vm_cmd::ssh_args(&vm, &[acp_command(cwd)])?);
    let err = Command::new("ssh").args(&argv).exec();
    Err(anyhow::Error::new(err).context("cannot run `ssh` (install the OpenSSH client)"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workspace::tests::sh;

    fn args(path: &std::path::Path, mode: WorkspaceMode) -> PrepareArgs {
        PrepareArgs {
            vm: "box".into(),
            path: Some(path.to_owned()),
            guest_path: DEFAULT_GUEST_PATH.into(),
            readonly: false,
            branch: None,
            from: None,
            mode,
            dry_run: false,
        }
    }

    /// The metadata modes send tracked and untracked-not-ignored files and
    /// refuse submodules naming full_copy; full_copy sends everything.
    #[test]
    fn modes_select_their_files() {
        let dir = tempfile::tempdir().unwrap();
        let sub = tempfile::tempdir().unwrap();
        sh(
            sub.path(),
            "git init -q -b main . && echo s > s.txt && git add -A && git commit -qm s",
        );
        sh(
            dir.path(),
            "git init -q -b main .
             echo ignored.log > .gitignore
             echo a > a.txt
             git add -A && git commit -qm init
             echo u > untracked.txt
             echo i > ignored.log",
        );
        let (params, ws) = plan(&args(dir.path(), WorkspaceMode::ShallowMetadata)).unwrap();
        assert_eq!(params.head.as_deref(), Some(ws.head.as_str()));
        assert_eq!(params.host_branch.as_deref(), Some("main"));
        let names: Vec<String> = ws.files.iter().map(|f| f.display().to_string()).collect();
        assert_eq!(names, [".gitignore", "a.txt", "untracked.txt"]);

        sh(
            dir.path(),
            &format!(
                "git -c protocol.file.allow=always submodule add -q {} vendor/sub && git commit -qm sub",
                sub.path().display()
            ),
        );
        let err = plan(&args(dir.path(), WorkspaceMode::Metadata)).unwrap_err();
        assert!(err.to_string().contains("use `--mode full_copy`"), "{err}");
        let (_, ws) = plan(&args(dir.path(), WorkspaceMode::FullCopy)).unwrap();
        let names: Vec<String> = ws.files.iter().map(|f| f.display().to_string()).collect();
        for want in ["ignored.log", ".git/HEAD", "vendor/sub/s.txt", ".git/refs"] {
            assert!(names.iter().any(|n| n == want), "{want} missing: {names:?}");
        }
    }

    /// The shallow pack holds HEAD's commit and trees but not its parent;
    /// a guest made from the tar is a valid shallow repository.
    #[test]
    fn a_shallow_tar_unpacks_into_a_shallow_repository() {
        let dir = tempfile::tempdir().unwrap();
        sh(
            dir.path(),
            "git init -q -b main .
             echo 1 > a && git add -A && git commit -qm one
             mkdir d && echo 2 > d/b && git add -A && git commit -qm two",
        );
        let (_, ws) = plan(&args(dir.path(), WorkspaceMode::ShallowMetadata)).unwrap();
        let mut tar = Vec::new();
        ws.write_prepare_tar(WorkspaceMode::ShallowMetadata, &[], PACK_ENTRY, &mut tar)
            .unwrap();
        let guest = tempfile::tempdir().unwrap();
        tar::Archive::new(tar.as_slice())
            .unpack(guest.path())
            .unwrap();
        sh(
            guest.path(),
            &format!(
                "git init -q
                 git index-pack --stdin < .git/{PACK_ENTRY} >/dev/null
                 rm .git/{PACK_ENTRY}
                 echo {head} > .git/shallow
                 git update-ref refs/heads/main {head}
                 git symbolic-ref HEAD refs/heads/main
                 git read-tree HEAD
                 test \"$(git rev-list --count HEAD)\" = 1
                 git ls-tree -r HEAD | grep -q d/b
                 git ls-files -z | xargs -0 git hash-object -w -- >/dev/null
                 test -z \"$(git status --porcelain)\"
                 git fsck --no-progress 2>&1 | (! grep -q .)",
                head = ws.head
            ),
        );
    }

    #[test]
    fn acp_runs_in_the_workspace_or_root_or_cwd() {
        let c = acp_command(None);
        assert!(
            c.contains("if [ -d /root/repo ]; then d=/root/repo; else d=/root; fi"),
            "{c}"
        );
        assert!(c.ends_with("cd \"$d\" && exec opencode acp"), "{c}");
        let c = acp_command(Some("/srv/it's"));
        assert!(c.starts_with("d='/srv/it'\\''s';"), "{c}");
        let p = acp_preflight(None);
        assert!(p.contains(&format!("|| exit {ACP_NO_OPENCODE}")), "{p}");
    }
}
