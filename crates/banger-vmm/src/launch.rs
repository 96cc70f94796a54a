//! Small file and process helpers shared by both backends' launch code.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::FileTypeExt;
use std::path::Path;
use std::time::Duration;

use crate::{FileOp, VmmError};

/// Remove a leftover Unix socket at `path` (a VMM refuses to bind over one);
/// anything that is not a socket is left alone and reported.
pub(crate) fn remove_stale_socket(path: &Path) -> Result<(), VmmError> {
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(VmmError::Io {
            op: FileOp::Inspect,
            path: path.to_owned(),
            source,
        }),
        Ok(meta) if meta.file_type().is_socket() || meta.file_type().is_symlink() => {
            remove_file_if_exists(path)
        }
        Ok(_) => Err(VmmError::NotASocket {
            path: path.to_owned(),
        }),
    }
}

/// `rm -f`.
pub(crate) fn remove_file_if_exists(path: &Path) -> Result<(), VmmError> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(VmmError::Io {
            op: FileOp::Remove,
            path: path.to_owned(),
            source: e,
        }),
        _ => Ok(()),
    }
}

/// Create or truncate `path`, mode 0600.
pub(crate) fn create_truncated(path: &Path) -> Result<File, VmmError> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|source| VmmError::Io {
            op: FileOp::Create,
            path: path.to_owned(),
            source,
        })
}

/// Open `path` for appending, creating it (mode 0600).
pub(crate) fn open_append(path: &Path) -> Result<File, VmmError> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(path)
        .map_err(|source| VmmError::Io {
            op: FileOp::OpenForAppending,
            path: path.to_owned(),
            source,
        })
}

/// The last `lines` lines of a log file (at most 8 KiB read), for error messages.
pub(crate) fn tail(path: &Path, lines: usize) -> String {
    let Ok(mut f) = File::open(path) else {
        return format!("({} is unreadable)", path.display());
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(8192)));
    let mut buf = Vec::new();
    let _ = f.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf);
    let all: Vec<&str> = text.lines().collect();
    let shown = all[all.len().saturating_sub(lines)..].join("\n");
    if shown.trim().is_empty() {
        format!("(nothing in {})", path.display())
    } else {
        shown
    }
}

/// Read a pid written by a VMM.
pub(crate) fn read_pidfile(path: &Path) -> Result<u32, VmmError> {
    let content = std::fs::read_to_string(path).map_err(|source| VmmError::Io {
        op: FileOp::ReadPidfile,
        path: path.to_owned(),
        source,
    })?;
    content
        .trim()
        .parse()
        .ok()
        .filter(|pid: &u32| *pid > 1)
        .ok_or(VmmError::BadPidfile {
            path: path.to_owned(),
            content,
        })
}

/// Kills a half-launched VMM when launch fails or is cancelled.
#[derive(Debug)]
pub(crate) struct LaunchGuard {
    pid: u32,
    start_time: u64,
    armed: bool,
}

impl LaunchGuard {
    pub(crate) fn new(pid: u32, start_time: u64) -> LaunchGuard {
        LaunchGuard {
            pid,
            start_time,
            armed: true,
        }
    }

    /// Launch succeeded: the process is the caller's now.
    pub(crate) fn disarm(&mut self) {
        self.armed = false;
    }
}

impl Drop for LaunchGuard {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        match crate::process::Pidfd::open_verified(self.pid, self.start_time) {
            Ok(Some(pidfd)) => {
                if let Err(e) = pidfd.signal(libc::SIGKILL) {
                    tracing::warn!("cannot kill half-launched VMM {}: {e}", self.pid);
                }
            }
            Ok(None) => {}
            Err(e) => tracing::warn!("cannot kill half-launched VMM {}: {e}", self.pid),
        }
    }
}

/// What waiting for a VMM's API socket ended with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SocketWait {
    Ready,
    ProcessExited,
    TimedOut,
}

/// Poll until a Unix socket at `path` accepts connections, `still_running`
/// says the process died, or `timeout` passes.
pub(crate) async fn wait_for_socket(
    path: &Path,
    timeout: Duration,
    mut still_running: impl FnMut() -> bool,
) -> SocketWait {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if tokio::net::UnixStream::connect(path).await.is_ok() {
            return SocketWait::Ready;
        }
        if !still_running() {
            return SocketWait::ProcessExited;
        }
        if tokio::time::Instant::now() >= deadline {
            return SocketWait::TimedOut;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
