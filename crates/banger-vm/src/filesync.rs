//! `[[file_sync]]`: files and directories from the owner's home copied into
//! every new VM's `/root`, as config-drive payloads the guest agent installs.
//!
//! Rules:
//! - entry *i* lands in the drive at `files/<i>`; [`GuestFile::source`] is `"<i>"`;
//! - a host path that does not exist is skipped with a warning;
//! - a host path reached through a symlink (the entry itself or a parent
//!   directory) is followed only when the resolved path is still inside the
//!   owner's home; otherwise it is skipped with a warning;
//! - a directory is copied recursively with its own permissions (an entry's
//!   `mode` is ignored for directories, with a warning); symlinks and special
//!   files met while recursing are skipped with a warning naming them;
//! - a single file gets the entry's `mode`, else 0600;
//! - any other error (a file or directory that cannot be read, a symlink
//!   loop, more than [`MAX_SYNC_BYTES`] in total) aborts, naming the entry.

use std::fmt;
use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use banger_config::FileSyncEntry;
use banger_wire::guest::GuestFile;

use crate::disk::{Payload, PayloadKind};

/// Most bytes all `file_sync` payloads of one VM may hold together; they are
/// read into memory and written to the config drive.
pub const MAX_SYNC_BYTES: u64 = 256 << 20;

/// Mode of a synced file whose entry gives none.
pub const DEFAULT_FILE_MODE: u32 = 0o600;

/// Errors that abort `file_sync`, naming the entry and the path.
#[derive(Debug, thiserror::Error)]
pub enum FileSyncError {
    #[error("file_sync[{index}]: cannot {op} {}: {source}", path.display())]
    Read {
        index: usize,
        op: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error(
        "file_sync[{index}]: {} brings the total over {limit} bytes; sync less or leave it out",
        path.display()
    )]
    TooLarge {
        index: usize,
        path: PathBuf,
        limit: u64,
    },
}

/// Something skipped, for the user to see (the daemon streams these as
/// warnings).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncWarning {
    /// Index of the `[[file_sync]]` entry.
    pub index: usize,
    /// The host path concerned.
    pub path: PathBuf,
    pub message: String,
}

impl fmt::Display for SyncWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "file_sync[{}]: {}: {}",
            self.index,
            self.path.display(),
            self.message
        )
    }
}

/// What `file_sync` puts on a VM's config drive.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyncPlan {
    /// For [`banger_wire::guest::GuestConfig::files`], in entry order.
    pub files: Vec<GuestFile>,
    /// For [`crate::disk::build_config_drive`].
    pub payloads: Vec<Payload>,
    pub warnings: Vec<SyncWarning>,
}

/// Read the validated `entries` (host paths inside `home`) into a
/// [`SyncPlan`], following the rules in the module docs.
pub fn plan_file_sync(entries: &[FileSyncEntry], home: &Path) -> Result<SyncPlan, FileSyncError> {
    plan_with_limit(entries, home, MAX_SYNC_BYTES)
}

fn plan_with_limit(
    entries: &[FileSyncEntry],
    home: &Path,
    limit: u64,
) -> Result<SyncPlan, FileSyncError> {
    let homes: Vec<PathBuf> = std::iter::once(home.to_owned())
        .chain(fs::canonicalize(home).ok())
        .collect();
    let mut plan = SyncPlan::default();
    let mut total = 0u64;
    for (index, entry) in entries.iter().enumerate() {
        let mut w = Walker {
            index,
            plan: &mut plan,
            total: &mut total,
            limit,
        };
        w.entry(entry, &homes)?;
    }
    Ok(plan)
}

struct Walker<'a> {
    index: usize,
    plan: &'a mut SyncPlan,
    total: &'a mut u64,
    limit: u64,
}

impl Walker<'_> {
    fn warn(&mut self, path: &Path, message: impl Into<String>) {
        self.plan.warnings.push(SyncWarning {
            index: self.index,
            path: path.to_owned(),
            message: message.into(),
        });
    }

    fn err(&self, op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> FileSyncError {
        let (index, path) = (self.index, path.to_owned());
        move |source| FileSyncError::Read {
            index,
            op,
            path,
            source,
        }
    }

    fn entry(&mut self, entry: &FileSyncEntry, homes: &[PathBuf]) -> Result<(), FileSyncError> {
        let host = &entry.host;
        match fs::symlink_metadata(host) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                self.warn(host, "does not exist; skipped");
                return Ok(());
            }
            Err(e) => return Err(self.err("inspect", host)(e)),
        }
        let resolved = match fs::canonicalize(host) {
            Ok(p) => p,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                self.warn(host, "is a symlink to a missing target; skipped");
                return Ok(());
            }
            Err(e) => return Err(self.err("resolve", host)(e)),
        };
        let inside = homes
            .iter()
            .any(|h| resolved.starts_with(h) && resolved != *h);
        if !inside {
            self.warn(
                host,
                format!(
                    "resolves to {}, outside your home; symlinks are followed only inside it; skipped",
                    resolved.display()
                ),
            );
            return Ok(());
        }
        let meta = fs::metadata(&resolved).map_err(self.err("inspect", &resolved))?;
        let rel = PathBuf::from(self.index.to_string());
        let source = self.index.to_string();
        let dest = entry.guest.to_string_lossy().into_owned();
        if meta.is_file() {
            let mode = entry.mode.unwrap_or(DEFAULT_FILE_MODE);
            self.file(&resolved, rel, mode)?;
            self.plan.files.push(GuestFile {
                source,
                dest,
                mode: Some(mode),
                is_dir: false,
            });
        } else if meta.is_dir() {
            if let Some(mode) = entry.mode {
                self.warn(
                    host,
                    format!("is a directory; mode {mode:04o} is ignored (entries keep their own)"),
                );
            }
            self.dir(&resolved, rel, meta.permissions().mode())?;
            self.plan.files.push(GuestFile {
                source,
                dest,
                mode: None,
                is_dir: true,
            });
        } else {
            self.warn(host, "is not a regular file or directory; skipped");
        }
        Ok(())
    }

    fn file(&mut self, path: &Path, rel: PathBuf, mode: u32) -> Result<(), FileSyncError> {
        let contents = fs::read(path).map_err(self.err("read", path))?;
        *self.total += contents.len() as u64;
        if *self.total > self.limit {
            return Err(FileSyncError::TooLarge {
                index: self.index,
                path: path.to_owned(),
                limit: self.limit,
            });
        }
        self.plan.payloads.push(Payload {
            rel,
            kind: PayloadKind::File {
                mode: mode & 0o7777,
                contents,
            },
        });
        Ok(())
    }

    fn dir(&mut self, path: &Path, rel: PathBuf, mode: u32) -> Result<(), FileSyncError> {
        self.plan.payloads.push(Payload {
            rel: rel.clone(),
            kind: PayloadKind::Dir {
                mode: mode & 0o7777,
            },
        });
        let mut children: Vec<fs::DirEntry> = fs::read_dir(path)
            .and_then(|it| it.collect::<io::Result<_>>())
            .map_err(self.err("list", path))?;
        // Sorted, so the same tree always gives the same drive.
        children.sort_by_key(|e| e.file_name());
        for child in children {
            let child_path = child.path();
            let meta =
                fs::symlink_metadata(&child_path).map_err(self.err("inspect", &child_path))?;
            let child_rel = rel.join(child.file_name());
            let file_type = meta.file_type();
            if file_type.is_symlink() {
                self.warn(
                    &child_path,
                    "is a symlink inside a synced directory; skipped",
                );
            } else if file_type.is_dir() {
                self.dir(&child_path, child_rel, meta.permissions().mode())?;
            } else if file_type.is_file() {
                self.file(&child_path, child_rel, meta.permissions().mode())?;
            } else {
                self.warn(
                    &child_path,
                    "is not a regular file or directory (socket, fifo or device); skipped",
                );
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn total_size_is_capped_and_the_entry_named() {
        let home = tempfile::tempdir().unwrap();
        let a = home.path().join("a");
        let b = home.path().join("b");
        fs::write(&a, vec![1u8; 600]).unwrap();
        fs::create_dir(&b).unwrap();
        fs::write(b.join("x"), vec![2u8; 500]).unwrap();
        let entries = [
            FileSyncEntry {
                host: a.clone(),
                guest: "/root/a".into(),
                mode: None,
            },
            FileSyncEntry {
                host: b.clone(),
                guest: "/root/b".into(),
                mode: None,
            },
        ];
        let plan = plan_with_limit(&entries[..1], home.path(), 1000).unwrap();
        assert_eq!(plan.payloads.len(), 1);
        let err = plan_with_limit(&entries, home.path(), 1000).unwrap_err();
        match &err {
            FileSyncError::TooLarge { index, path, .. } => {
                assert_eq!(*index, 1);
                assert_eq!(path, &b.join("x"));
            }
            other => panic!("{other}"),
        }
        assert!(err.to_string().starts_with("file_sync[1]: "), "{err}");
    }
}
