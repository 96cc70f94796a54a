//! Advisory whole-file locks: the one helper behind every lock banger takes
//! (daemon lock, CLI auto-start lock, image store names, image builds,
//! known_hosts rewrites).
//!
//! These are `flock(2)` locks through std's [`File::lock`]: a lock belongs
//! to the open file description and goes away when it is closed, including
//! when the holder dies by SIGKILL, so a crash never leaves a stale lock to
//! clean up. Being `flock`, they are the same locks `flock(1)` takes.

use std::fs::{File, OpenOptions, TryLockError};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Taking a lock failed (a lock held by someone else is not an error of
/// [`FileLock::try_exclusive`]).
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// The lock file could not be opened or created (a symlink in its place
    /// is refused with `ELOOP`).
    #[error("cannot open lock file {}: {source}", path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// `flock` itself failed.
    #[error("cannot lock {}: {source}", path.display())]
    Lock {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// An exclusive lock on one file, held until dropped.
#[derive(Debug)]
pub struct FileLock {
    file: File,
    path: PathBuf,
}

impl FileLock {
    /// Lock `path` exclusively, waiting for its holder (blocks the thread).
    /// The file is created (mode 0600) if missing.
    pub fn exclusive(path: &Path) -> Result<FileLock, LockError> {
        let file = open(path)?;
        loop {
            match file.lock() {
                Ok(()) => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(source) => {
                    return Err(LockError::Lock {
                        path: path.to_owned(),
                        source,
                    })
                }
            }
        }
        Ok(FileLock {
            file,
            path: path.to_owned(),
        })
    }

    /// Lock `path` exclusively if nobody holds it; `Ok(None)` if someone does.
    /// The file is created (mode 0600) if missing.
    pub fn try_exclusive(path: &Path) -> Result<Option<FileLock>, LockError> {
        let file = open(path)?;
        match file.try_lock() {
            Ok(()) => Ok(Some(FileLock {
                file,
                path: path.to_owned(),
            })),
            Err(TryLockError::WouldBlock) => Ok(None),
            Err(TryLockError::Error(source)) => Err(LockError::Lock {
                path: path.to_owned(),
                source,
            }),
        }
    }

    /// The locked file, open for reading and writing (the daemon keeps its
    /// pid in it).
    pub fn file(&self) -> &File {
        &self.file
    }

    /// The lock file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Whether someone holds a lock on `path`. A file that does not exist or
/// cannot be opened is not held; nothing is created.
pub fn is_held(path: &Path) -> bool {
    let Ok(file) = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
    else {
        return false;
    };
    // A shared probe, dropped at once: it never stands in a holder's way
    // for longer than the call.
    matches!(file.try_lock_shared(), Err(TryLockError::WouldBlock))
}

fn open(path: &Path) -> Result<File, LockError> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        // A lock file is never legitimately a symlink: following one would
        // create or lock a file somewhere else.
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(|source| LockError::Open {
            path: path.to_owned(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_held_lock_is_busy_until_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.lock");
        assert!(!is_held(&path));
        assert!(!path.exists(), "is_held created the file");
        let first = FileLock::exclusive(&path).unwrap();
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        // flock locks belong to the open file description: a second open in
        // this process conflicts just as another process would.
        assert!(FileLock::try_exclusive(&path).unwrap().is_none());
        assert!(is_held(&path));
        drop(first);
        // A process another test forks in this moment holds a copy of the
        // descriptor (and so the flock) until its exec closes it: wait for
        // that, bounded, rather than read a race as a leak.
        let released = (0..500).any(|_| {
            let free = !is_held(&path);
            if !free {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            free
        });
        assert!(released, "the lock was not released after drop");
        let second = FileLock::try_exclusive(&path).unwrap().expect("free again");
        assert_eq!(second.path(), path);
    }

    #[test]
    fn a_symlink_in_place_of_the_lock_file_is_refused_and_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("elsewhere");
        let path = dir.path().join("x.lock");
        std::os::unix::fs::symlink(&target, &path).unwrap();
        for err in [
            FileLock::exclusive(&path).unwrap_err(),
            FileLock::try_exclusive(&path).unwrap_err(),
        ] {
            match &err {
                LockError::Open { path: p, source } => {
                    assert_eq!(p, &path);
                    assert_eq!(source.raw_os_error(), Some(libc::ELOOP), "{err}");
                }
                other => panic!("unexpected error {other:?}"),
            }
            assert!(err.to_string().contains("x.lock"), "{err}");
        }
        assert!(!target.exists(), "the symlink was followed");
    }

    #[test]
    fn a_holder_killed_by_sigkill_releases_the_lock() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.lock");
        // Another process takes the same kind of lock with flock(1) on an
        // inherited descriptor, then becomes `sleep`: the process we kill
        // is the only holder.
        let mut holder = std::process::Command::new("sh")
            .args(["-c", "exec 9>\"$1\" && flock 9 && exec sleep 600", "sh"])
            .arg(&path)
            .spawn()
            .expect("sh runs");
        // Readiness wait, not a timing assertion.
        for _ in 0..2000 {
            if is_held(&path) {
                break;
            }
            if let Some(status) = holder.try_wait().unwrap() {
                panic!("the holder exited with {status} (is util-linux's flock installed?)");
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert!(FileLock::try_exclusive(&path).unwrap().is_none());
        holder.kill().unwrap();
        holder.wait().unwrap();
        // The kernel closed the dead holder's files before it could be reaped.
        let lock = FileLock::try_exclusive(&path).unwrap();
        assert!(lock.is_some(), "the lock outlived its holder");
    }
}
