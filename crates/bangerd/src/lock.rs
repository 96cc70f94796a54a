//! The daemon lock: an exclusive `flock` on [`Layout::daemon_lock`] held for
//! the daemon's whole life, so a second daemon for the same runtime dir
//! refuses to start instead of stealing the socket.
//!
//! [`Layout::daemon_lock`]: banger_host::paths::Layout::daemon_lock

use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use banger_host::lock::FileLock;

/// Errors taking the daemon lock.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("daemon lock: {0}")]
    Lock(#[source] banger_host::lock::LockError),
    #[error("another bangerd (pid {pid}) is already running (it holds {path}); stop it with `banger daemon stop`")]
    Held { path: PathBuf, pid: String },
    #[error("cannot write the pid into {path}: {source}")]
    WritePid {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The held lock; released when dropped (or when the process dies).
#[derive(Debug)]
pub struct DaemonLock {
    lock: FileLock,
}

impl DaemonLock {
    /// Take the lock without waiting and record our pid in the file.
    pub fn acquire(path: &Path) -> Result<DaemonLock, LockError> {
        let Some(lock) = FileLock::try_exclusive(path).map_err(LockError::Lock)? else {
            // The holder wrote its pid after locking; an empty read only
            // means it is between those two steps.
            let pid = std::fs::read_to_string(path).unwrap_or_default();
            let pid = match pid.trim() {
                "" => "unknown".to_owned(),
                p => p.to_owned(),
            };
            return Err(LockError::Held {
                path: path.to_owned(),
                pid,
            });
        };
        let write = |mut f: &std::fs::File| -> std::io::Result<()> {
            f.set_len(0)?;
            f.seek(SeekFrom::Start(0))?;
            writeln!(f, "{}", std::process::id())?;
            f.flush()
        };
        write(lock.file()).map_err(|source| LockError::WritePid {
            path: path.to_owned(),
            source,
        })?;
        Ok(DaemonLock { lock })
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        self.lock.path()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_acquire_names_the_holder_pid() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bangerd.lock");
        let first = DaemonLock::acquire(&path).unwrap();
        // flock locks belong to the open file description, so a second open
        // in the same process conflicts just like another process would.
        let err = DaemonLock::acquire(&path).unwrap_err();
        match &err {
            LockError::Held { pid, .. } => assert_eq!(pid, &std::process::id().to_string()),
            other => panic!("unexpected error {other:?}"),
        }
        assert!(err.to_string().contains("bangerd.lock"), "{err}");
        drop(first);
        DaemonLock::acquire(&path).unwrap();
    }
}
