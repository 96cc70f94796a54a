//! `banger vm workspace prepare` (docs/workspace.md): a tar stream from the
//! CLI becomes a directory tree in a running guest, replacing the previous
//! one atomically.
//!
//! The daemon validates the parameters, then runs two scripts over its
//! pinned-key SSH session to the guest:
//!
//! 1. **stage** (the request body on stdin): unpack into a new directory
//!    `<parent>/.<base>.banger-workspace/<random>`, build the git metadata
//!    from the pack the tar carries (metadata modes), check out `--branch`,
//!    and for `readonly` bind-mount the directory read-only onto itself;
//! 2. **commit**, only when the whole body arrived and staging succeeded:
//!    point `<guest_path>` (a symlink) at the new directory with one
//!    `rename(2)` over the old symlink, then delete the trees older than
//!    the one just replaced (that one stays, so a process whose cwd or open
//!    files are in it keeps working until the next prepare).
//!
//! A `guest_path` that is a real directory (from `vm run`, or the user's
//! own) is swapped for the symlink with `renameat2(RENAME_EXCHANGE)`
//! (through perl's `syscall`, as no coreutils of Debian 12 exposes it) and
//! kept as the previous tree.
//!
//! Anything interrupted before the commit leaves the old tree in place; the
//! half-made directory is removed by the next commit.

pub mod api;

use std::net::SocketAddr;
use std::time::Duration;

use banger_state::{VmRecord, VmState};
use banger_wire::api::{ApiError, ErrorCode};
use banger_wire::workspace::{WorkspaceParamError, WorkspaceParams, WorkspaceReport};
use bytes::Bytes;
use futures::{Stream, StreamExt};

use crate::context::Daemon;
use crate::events::EventSink;
use crate::vm::paths::VmPaths;
use crate::vm::SSH_USER;

/// Largest request body (the tar stream) accepted.
pub const MAX_BODY: u64 = 64 << 30;
/// How long the body may pause between two chunks.
pub const BODY_STALL: Duration = Duration::from_secs(60);
/// Bytes of each of the guest scripts' stdout and stderr kept for messages.
const KEEP_OUTPUT: usize = 16 * 1024;
/// Exit status of the stage script when the guest has no git.
const NO_GIT: u32 = 97;
/// Exit status of either script when `guest_path` is not a directory.
const NOT_A_DIR: u32 = 96;

/// Errors of `vm workspace prepare`, each naming the VM.
#[derive(Debug, thiserror::Error)]
pub enum WorkspaceError {
    #[error(transparent)]
    Params(#[from] WorkspaceParamError),
    #[error("no VM named {name:?}")]
    NotFound { name: String },
    #[error("VM {name:?} is {state}: start it with `banger vm start {name}` first")]
    NotRunning { name: String, state: String },
    #[error("VM {name:?}: {what}: {message}")]
    Ssh {
        name: String,
        what: &'static str,
        message: String,
    },
    #[error("VM {name:?}: the upload broke off: {message}")]
    Upload { name: String, message: String },
    #[error("VM {name:?}: the guest has no git, so the metadata modes cannot build {path}/.git; use an image with git, or --mode full_copy")]
    NoGit { name: String, path: String },
    #[error("VM {name:?}: {path} exists in the guest and is not a directory; remove it or pick another --guest-path")]
    NotADirectory { name: String, path: String },
    #[error("VM {name:?}: {step} of {path} failed in the guest (exit {status}): {stderr}")]
    Guest {
        name: String,
        step: &'static str,
        path: String,
        status: String,
        stderr: String,
    },
    #[error("state database: {0}")]
    State(#[from] banger_state::StateError),
}

impl WorkspaceError {
    /// The API error code.
    pub fn code(&self) -> ErrorCode {
        match self {
            WorkspaceError::Params(_)
            | WorkspaceError::NoGit { .. }
            | WorkspaceError::NotADirectory { .. } => ErrorCode::BadRequest,
            WorkspaceError::NotFound { .. } => ErrorCode::NotFound,
            WorkspaceError::NotRunning { .. } => ErrorCode::Conflict,
            WorkspaceError::Upload { .. } => ErrorCode::BadRequest,
            WorkspaceError::State(_) => ErrorCode::State,
            WorkspaceError::Ssh { .. } | WorkspaceError::Guest { .. } => ErrorCode::Internal,
        }
    }
}

impl From<WorkspaceError> for ApiError {
    fn from(e: WorkspaceError) -> ApiError {
        ApiError {
            code: e.code(),
            message: e.to_string(),
        }
    }
}

/// The directory holding the trees of `guest_path`: a hidden sibling.
pub fn trees_dir(guest_path: &str) -> String {
    let path = guest_path.trim_end_matches('/');
    let (parent, base) = path.rsplit_once('/').expect("validated: absolute");
    format!("{parent}/.{base}.banger-workspace")
}

/// The guest script that unpacks the tar on stdin into a new tree and
/// prints its directory as `tree=DIR`. `p` must be validated (every value
/// is then a plain shell word).
pub fn stage_script(p: &WorkspaceParams) -> String {
    let dest = p.guest_path.trim_end_matches('/');
    let trees = trees_dir(dest);
    let mut s = format!(
        "set -eu\n\
         dest={dest}\n\
         trees={trees}\n\
         if [ -e \"$dest\" ] && [ ! -d \"$dest\" ]; then exit {NOT_A_DIR}; fi\n\
         mkdir -p \"$trees\"\n\
         tree=$(mktemp -d \"$trees/XXXXXXXXXX\")\n\
         staged=0\n\
         cleanup() {{ if [ \"$staged\" = 0 ]; then umount -l \"$tree\" 2>/dev/null || true; rm -rf --one-file-system \"$tree\"; fi; }}\n\
         trap cleanup EXIT\n\
         trap 'exit 129' HUP INT TERM PIPE\n\
         chmod 755 \"$tree\"\n\
         tar -x --no-same-owner -C \"$tree\" -f -\n\
         cd \"$tree\"\n"
    );
    if p.mode.builds_git() {
        let head = p
            .head
            .as_deref()
            .expect("validated: metadata modes have head");
        s.push_str(&format!(
            "if ! command -v git >/dev/null 2>&1; then exit {NO_GIT}; fi\n\
             git init -q\n\
             git index-pack --stdin < .git/{PACK_ENTRY} >/dev/null\n\
             rm -f .git/{PACK_ENTRY}\n"
        ));
        if p.mode == banger_wire::workspace::WorkspaceMode::ShallowMetadata {
            // The commits whose parents were left out of the pack.
            s.push_str(&format!("echo {head} > .git/shallow\n"));
            if let Some(from) = p.from.as_deref().filter(|f| *f != head) {
                s.push_str(&format!("echo {from} >> .git/shallow\n"));
            }
        }
        match p.host_branch.as_deref() {
            Some(branch) => s.push_str(&format!(
                "git update-ref refs/heads/{branch} {head}\ngit symbolic-ref HEAD refs/heads/{branch}\n"
            )),
            None => s.push_str(&format!("git update-ref --no-deref HEAD {head}\n")),
        }
        s.push_str("git read-tree HEAD\n");
    }
    if let Some(name) = &p.new_branch {
        let from = p.from.as_deref().unwrap_or("HEAD");
        s.push_str(&format!("git checkout -q -b {name} {from}\n"));
    }
    if p.mode.builds_git() {
        // The pack leaves out the blobs the copied files give; write them
        // (HEAD's blobs for unchanged files). A read-only tree cannot be
        // written later, so it waits; otherwise this runs in the background.
        let hash = "git ls-files -z | xargs -0 -r git hash-object -w -- >/dev/null";
        if p.readonly {
            s.push_str(&format!("{hash}\n"));
        } else {
            s.push_str(&format!(
                "setsid nice -n 19 sh -c '{hash}' >/dev/null 2>&1 </dev/null &\n"
            ));
        }
    }
    if p.readonly {
        s.push_str("mount --bind \"$tree\" \"$tree\"\nmount -o remount,bind,ro \"$tree\"\n");
    }
    s.push_str("staged=1\necho \"tree=$tree\"\n");
    s
}

/// The tar entry that carries the git pack in the metadata modes (git
/// never tracks a path under `.git`, so it cannot collide with a file).
pub const PACK_ENTRY: &str = "banger-workspace.pack";

/// The guest script that makes `guest_path` point at `tree` and removes the
/// trees older than the replaced one. Prints `replaced=0|1`.
pub fn commit_script(guest_path: &str, tree: &str) -> String {
    let dest = guest_path.trim_end_matches('/');
    let trees = trees_dir(dest);
    format!(
        "set -eu\n\
         dest={dest}\n\
         trees={trees}\n\
         tree={tree}\n\
         exec 9>\"$trees/.lock\"\n\
         flock 9\n\
         link=\"$trees/.link-$$\"\n\
         rm -f \"$link\"\n\
         ln -s \"$tree\" \"$link\"\n\
         old=\n\
         replaced=1\n\
         if [ -L \"$dest\" ]; then\n\
         \x20 old=$(readlink \"$dest\")\n\
         \x20 mv -T \"$link\" \"$dest\"\n\
         elif [ ! -e \"$dest\" ]; then\n\
         \x20 replaced=0\n\
         \x20 mv -T \"$link\" \"$dest\"\n\
         elif [ -d \"$dest\" ]; then\n\
         \x20 old=\"$trees/$(basename \"$tree\").before\"\n\
         \x20 if command -v perl >/dev/null 2>&1; then\n\
         \x20   perl -e 'syscall(316, -100, $ARGV[0], -100, $ARGV[1], 2) == 0 or die \"renameat2 $ARGV[1]: $!\\n\"' \"$link\" \"$dest\"\n\
         \x20   mv -T \"$link\" \"$old\"\n\
         \x20 else\n\
         \x20   echo \"banger: no perl in the guest: $dest was replaced with two renames (not atomically)\" >&2\n\
         \x20   mv -T \"$dest\" \"$old\"\n\
         \x20   mv -T \"$link\" \"$dest\"\n\
         \x20 fi\n\
         else\n\
         \x20 rm -f \"$link\"\n\
         \x20 exit {NOT_A_DIR}\n\
         fi\n\
         for d in \"$trees\"/*; do\n\
         \x20 [ -e \"$d\" ] || continue\n\
         \x20 case \"$d\" in \"$tree\"|\"$old\") continue ;; esac\n\
         \x20 umount -l \"$d\" 2>/dev/null || true\n\
         \x20 rm -rf --one-file-system \"$d\"\n\
         done\n\
         echo \"replaced=$replaced\"\n"
    )
}

fn vm_record(state: &Daemon, name: &str) -> Result<VmRecord, WorkspaceError> {
    let db = state.db.lock().unwrap_or_else(|e| e.into_inner());
    db.get_vm_by_name(name)?
        .ok_or_else(|| WorkspaceError::NotFound {
            name: name.to_owned(),
        })
}

/// Check that VM `name` can take a workspace now (before the body is read).
pub fn check(state: &Daemon, name: &str, params: &WorkspaceParams) -> Result<(), WorkspaceError> {
    params.validate()?;
    let vm = vm_record(state, name)?;
    if vm.state != VmState::Running || vm.ip.is_none() {
        return Err(WorkspaceError::NotRunning {
            name: name.to_owned(),
            state: vm.state.to_string(),
        });
    }
    Ok(())
}

fn value_of<'a>(stdout: &'a [u8], key: &str) -> Option<&'a str> {
    std::str::from_utf8(stdout)
        .ok()?
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
}

/// The guest's stderr for a message: its last 2 KiB, control characters
/// (terminal escapes from a hostile guest) replaced.
fn guest_text(bytes: &[u8]) -> String {
    let tail = &bytes[bytes.len().saturating_sub(2048)..];
    String::from_utf8_lossy(tail)
        .trim()
        .chars()
        .map(|c| {
            if c.is_control() && c != '\n' {
                '\u{fffd}'
            } else {
                c
            }
        })
        .collect()
}

/// An SSH failure of `what` in VM `name`, from its error.
fn ssh_error<'a>(
    name: &'a str,
    what: &'static str,
) -> impl Fn(&dyn std::fmt::Display) -> WorkspaceError + 'a {
    move |e| WorkspaceError::Ssh {
        name: name.to_owned(),
        what,
        message: e.to_string(),
    }
}

fn status_text(out: &banger_vm::ssh::ExecOutput) -> String {
    match (&out.exit_status, &out.exit_signal) {
        (Some(code), _) => code.to_string(),
        (None, Some(sig)) => format!("signal {sig}"),
        _ => "unknown".to_owned(),
    }
}

/// Unpack `body` (a tar stream) into VM `name` as `params` say, then switch
/// `guest_path` to it. One prepare per VM at a time.
pub async fn prepare<B, E>(
    state: &Daemon,
    name: &str,
    params: WorkspaceParams,
    body: B,
    sink: &EventSink,
) -> Result<WorkspaceReport, WorkspaceError>
where
    B: Stream<Item = Result<Bytes, E>> + Send + Unpin + 'static,
    E: std::fmt::Display,
{
    check(state, name, &params)?;
    let lock = state.vms.lock_for(&format!("workspace\0{name}"));
    let _guard = lock.lock().await;
    let vm = vm_record(state, name)?;
    let ip = vm.ip.ok_or_else(|| WorkspaceError::NotRunning {
        name: name.to_owned(),
        state: vm.state.to_string(),
    })?;
    let ssh_err = |what| ssh_error(name, what);
    let p = VmPaths::new(&state.layout, &vm.id);
    let public = tokio::fs::read_to_string(&p.host_key_pub)
        .await
        .map_err(|e| ssh_err("reading the pinned host key")(&e))?;
    let pinned = banger_vm::ssh::parse_public_key(&public)
        .map_err(|e| ssh_err("parsing the pinned host key")(&e))?;
    let session = banger_vm::ssh::connect(
        SocketAddr::from((ip, 22)),
        SSH_USER,
        &state.vms.config().ssh_key_path.value,
        &pinned,
        Duration::from_secs(30),
    )
    .await
    .map_err(|e| ssh_err("connecting over SSH")(&e))?;
    let result = on_session(name, &session, params, body, sink).await;
    // Closed on every path: a failed prepare must not leave the connection.
    let _ = session.close().await;
    result
}

async fn on_session<B, E>(
    name: &str,
    session: &banger_vm::ssh::SshSession,
    params: WorkspaceParams,
    body: B,
    sink: &EventSink,
) -> Result<WorkspaceReport, WorkspaceError>
where
    B: Stream<Item = Result<Bytes, E>> + Send + Unpin + 'static,
    E: std::fmt::Display,
{
    let ssh_err = |what| ssh_error(name, what);
    let dest = params.guest_path.trim_end_matches('/').to_owned();
    sink.progress(
        "workspace",
        format!("unpacking into a new tree beside {dest} ({})", params.mode),
    )
    .await;

    let (counted, received) = bounded(body, params.size, sink.clone());
    let staged = session
        .exec_with_input(&stage_script(&params), counted, KEEP_OUTPUT)
        .await
        .map_err(|e| ssh_err("running the stage script")(&e))?;
    let out = staged.map_err(|message| WorkspaceError::Upload {
        name: name.to_owned(),
        message,
    })?;
    let guest_fail = |step, out: &banger_vm::ssh::ExecOutput| match out.exit_status {
        Some(NO_GIT) => WorkspaceError::NoGit {
            name: name.to_owned(),
            path: dest.clone(),
        },
        Some(NOT_A_DIR) => WorkspaceError::NotADirectory {
            name: name.to_owned(),
            path: dest.clone(),
        },
        _ => WorkspaceError::Guest {
            name: name.to_owned(),
            step,
            path: dest.clone(),
            status: status_text(out),
            stderr: guest_text(&out.stderr),
        },
    };
    if !out.success() {
        return Err(guest_fail("unpacking", &out));
    }
    let Some(tree) = value_of(&out.stdout, "tree")
        .map(str::to_owned)
        .filter(|t| {
            // Put in the commit script unquoted: plain path characters only.
            t.starts_with(&trees_dir(&dest))
                && t.bytes().all(|b| {
                    b.is_ascii_alphanumeric()
                        || matches!(b, b'/' | b'.' | b'_' | b'-' | b'+' | b'@')
                })
        })
    else {
        return Err(WorkspaceError::Guest {
            name: name.to_owned(),
            step: "unpacking",
            path: dest.clone(),
            status: "0".into(),
            stderr: "the stage script did not name its tree".into(),
        });
    };
    let bytes = received.load(std::sync::atomic::Ordering::Relaxed);
    sink.progress("workspace", format!("switching {dest} to the new tree"))
        .await;
    let out = session
        .exec(&commit_script(&dest, &tree))
        .await
        .map_err(|e| ssh_err("running the commit script")(&e))?;
    if !out.success() {
        return Err(guest_fail("switching to the new tree", &out));
    }
    Ok(WorkspaceReport {
        guest_path: dest,
        tree,
        mode: params.mode,
        readonly: params.readonly,
        bytes,
        replaced: value_of(&out.stdout, "replaced") == Some("1"),
    })
}

/// The body as a stream that fails past [`MAX_BODY`] bytes or after a
/// [`BODY_STALL`] pause, reporting progress (against `size`, the content
/// bytes the client announced) every 2 % of it (or 64 MiB without a size).
fn bounded<B, E>(
    body: B,
    size: Option<u64>,
    sink: EventSink,
) -> (
    impl Stream<Item = Result<Bytes, String>> + Unpin,
    std::sync::Arc<std::sync::atomic::AtomicU64>,
)
where
    B: Stream<Item = Result<Bytes, E>> + Send + Unpin + 'static,
    E: std::fmt::Display,
{
    use std::sync::atomic::{AtomicU64, Ordering};
    let total = std::sync::Arc::new(AtomicU64::new(0));
    let seen = total.clone();
    let step = size.map_or(64 << 20, |s| (s / 50).max(1 << 20));
    let stream = futures::stream::unfold(
        (body, 0u64, 0u64, false),
        move |(mut body, n, shown, over)| {
            let sink = sink.clone();
            let seen = seen.clone();
            async move {
                if over {
                    return None;
                }
                let next = match tokio::time::timeout(BODY_STALL, body.next()).await {
                    Err(_) => Some(Err(format!("no data for {} s", BODY_STALL.as_secs()))),
                    Ok(None) => None,
                    Ok(Some(Err(e))) => Some(Err(e.to_string())),
                    Ok(Some(Ok(chunk))) => {
                        let n2 = n + chunk.len() as u64;
                        if n2 > MAX_BODY {
                            Some(Err(format!(
                                "the workspace stream is larger than {}",
                                banger_wire::units::human_bytes(MAX_BODY)
                            )))
                        } else {
                            Some(Ok(chunk))
                        }
                    }
                }?;
                let n2 = n + next.as_ref().map_or(0, |c| c.len() as u64);
                seen.store(n2, Ordering::Relaxed);
                let mut shown2 = shown;
                if n2 >= shown + step {
                    shown2 = n2;
                    sink.send(banger_wire::api::StreamEvent::Progress {
                        phase: "upload".into(),
                        message: format!("received {}", banger_wire::units::human_bytes(n2)),
                        current: Some(n2),
                        // Tar headers and the pack come on top of the
                        // announced file content: no bar past its end.
                        total: size.filter(|s| *s >= n2),
                    })
                    .await;
                }
                let failed = next.is_err();
                Some((next, (body, n2, shown2, failed)))
            }
        },
    );
    (Box::pin(stream), total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use banger_wire::workspace::WorkspaceMode;
    use std::process::{Command, Stdio};

    fn params(dest: &str, mode: WorkspaceMode) -> WorkspaceParams {
        WorkspaceParams {
            guest_path: dest.to_owned(),
            mode,
            ..Default::default()
        }
    }

    fn run(script: &str, stdin: &[u8]) -> std::process::Output {
        use std::io::Write;
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(script)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut input = child.stdin.take().unwrap();
        let _ = input.write_all(stdin);
        drop(input);
        child.wait_with_output().unwrap()
    }

    fn tar_of(files: &[(&str, &str)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (path, body) in files {
            let mut h = tar::Header::new_gnu();
            h.set_size(body.len() as u64);
            h.set_mode(0o644);
            b.append_data(&mut h, path, body.as_bytes()).unwrap();
        }
        b.into_inner().unwrap()
    }

    fn prepare_here(dest: &str, files: &[(&str, &str)]) -> (String, String) {
        let out = run(
            &stage_script(&params(dest, WorkspaceMode::FullCopy)),
            &tar_of(files),
        );
        assert!(out.status.success(), "{out:?}");
        let tree = value_of(&out.stdout, "tree").unwrap().to_owned();
        let out = run(&commit_script(dest, &tree), b"");
        assert!(out.status.success(), "{out:?}");
        (tree, value_of(&out.stdout, "replaced").unwrap().to_owned())
    }

    /// The scripts run here as they do in a guest (full_copy, no mounts):
    /// a first tree, a replacement keeping the previous one, a third that
    /// removes the first, and a real directory exchanged for the symlink.
    #[test]
    fn trees_replace_each_other_and_one_previous_is_kept() {
        let tmp = tempfile::tempdir().unwrap();
        let dest = format!("{}/ws/repo", tmp.path().display());
        let (t1, r) = prepare_here(&dest, &[("a", "1"), ("d/b", "1")]);
        assert_eq!(r, "0");
        assert_eq!(std::fs::read_to_string(format!("{dest}/d/b")).unwrap(), "1");
        let (t2, r) = prepare_here(&dest, &[("a", "2")]);
        assert_eq!(r, "1");
        assert_eq!(std::fs::read_to_string(format!("{dest}/a")).unwrap(), "2");
        assert!(!std::path::Path::new(&format!("{dest}/d")).exists());
        assert!(std::path::Path::new(&t1).is_dir(), "the previous tree went");
        let (t3, _) = prepare_here(&dest, &[("a", "3")]);
        assert!(!std::path::Path::new(&t1).exists(), "an old tree stayed");
        assert!(std::path::Path::new(&t2).is_dir());
        assert_eq!(
            std::fs::read_link(&dest).unwrap().to_str(),
            Some(t3.as_str())
        );

        // A plain directory (vm run's copy) is exchanged, and kept.
        let plain = format!("{}/ws/plain", tmp.path().display());
        std::fs::create_dir_all(&plain).unwrap();
        std::fs::write(format!("{plain}/old"), "x").unwrap();
        let (_, r) = prepare_here(&plain, &[("new", "y")]);
        assert_eq!(r, "1");
        assert!(std::path::Path::new(&format!("{plain}/new")).is_file());
        let kept: Vec<_> = std::fs::read_dir(trees_dir(&plain))
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.path().join("old").is_file())
            .collect();
        assert_eq!(kept.len(), 1, "the replaced directory was not kept");
    }

    #[test]
    fn a_broken_tar_or_a_file_in_the_way_changes_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let dest = format!("{}/repo", tmp.path().display());
        prepare_here(&dest, &[("a", "1")]);
        let mut broken = tar_of(&[("a", "2"), ("b", "2")]);
        broken.truncate(700);
        let out = run(
            &stage_script(&params(&dest, WorkspaceMode::FullCopy)),
            &broken,
        );
        assert!(!out.status.success(), "{out:?}");
        assert_eq!(std::fs::read_to_string(format!("{dest}/a")).unwrap(), "1");
        // The failed stage removed its directory: only the current tree.
        let trees = std::fs::read_dir(trees_dir(&dest)).unwrap();
        let trees = trees.filter(|e| {
            !e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with('.')
        });
        assert_eq!(trees.count(), 1);

        let file = format!("{}/file", tmp.path().display());
        std::fs::write(&file, "x").unwrap();
        let out = run(&stage_script(&params(&file, WorkspaceMode::FullCopy)), b"");
        assert_eq!(out.status.code(), Some(NOT_A_DIR as i32), "{out:?}");
    }

    #[test]
    fn guest_output_in_messages_is_bounded_and_defanged() {
        let mut noisy = vec![b'x'; 5000];
        noisy.extend_from_slice(b"\x1b]52;c;aGk=\x07 tar: error\n");
        let text = guest_text(&noisy);
        assert!(text.chars().count() <= 2048, "{}", text.len());
        assert!(!text.contains(['\x1b', '\x07']), "{text:?}");
        assert!(text.ends_with("tar: error"), "{text:?}");
    }

    #[test]
    fn metadata_scripts_build_git_and_shallow_marks_head() {
        let head = "a".repeat(40);
        let mut p = params("/root/repo", WorkspaceMode::ShallowMetadata);
        p.head = Some(head.clone());
        p.host_branch = Some("main".into());
        p.readonly = true;
        p.validate().unwrap();
        let s = stage_script(&p);
        assert!(s.contains(&format!("echo {head} > .git/shallow")), "{s}");
        assert!(s.contains("git symbolic-ref HEAD refs/heads/main"), "{s}");
        assert!(s.contains("mount -o remount,bind,ro"), "{s}");
        assert!(!s.contains("setsid"), "a read-only tree hashes first: {s}");
        p.mode = WorkspaceMode::Metadata;
        p.readonly = false;
        let s = stage_script(&p);
        assert!(!s.contains(".git/shallow"), "{s}");
        assert!(!s.contains("mount --bind"), "{s}");
        for script in [
            s,
            commit_script("/root/repo", "/root/.repo.banger-workspace/x"),
        ] {
            let out = Command::new("sh")
                .arg("-n")
                .arg("-c")
                .arg(&script)
                .output()
                .unwrap();
            assert!(out.status.success(), "{script}: {out:?}");
        }
        assert_eq!(trees_dir("/root/repo/"), "/root/.repo.banger-workspace");
    }
}
