//! File operations of the installer: atomic, idempotent, and never following
//! a symlink into somewhere banger does not own.

use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Errors touching the filesystem.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    #[error("cannot {op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("{path} is a symbolic link; refusing to use it (remove it and retry)")]
    Symlink { path: PathBuf },
    #[error("{path} exists and is not a directory")]
    NotDir { path: PathBuf },
    #[error("{path} is a directory where a file belongs")]
    IsDir { path: PathBuf },
    #[error(transparent)]
    Write(#[from] banger_fs::AtomicWriteError),
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> FsError + 'a {
    move |source| FsError::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

/// `abs` (an absolute target path) inside `root`, or itself without a root.
pub fn rooted(root: Option<&Path>, abs: &str) -> PathBuf {
    match root {
        None => PathBuf::from(abs),
        Some(r) => r.join(abs.trim_start_matches('/')),
    }
}

/// Ownership and permission bits of something the installer creates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Perms {
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

impl Perms {
    /// Owned by root:root.
    pub const fn root(mode: u32) -> Perms {
        Perms {
            mode,
            uid: 0,
            gid: 0,
        }
    }

    fn matches(&self, md: &fs::Metadata) -> bool {
        md.mode() & 0o7777 == self.mode && md.uid() == self.uid && md.gid() == self.gid
    }
}

fn same_contents(path: &Path, contents: &[u8]) -> Result<bool, FsError> {
    let mut f = match fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(io_err("open", path)(e)),
    };
    let mut existing = Vec::with_capacity(contents.len());
    f.read_to_end(&mut existing).map_err(io_err("read", path))?;
    Ok(existing == contents)
}

/// Make `path` a regular file with `contents` and `perms`: written to a
/// temporary file beside it and renamed over it, so readers (and running
/// binaries) see either the old or the new file, never a partial one.
/// Returns whether anything changed.
pub fn write_atomic(path: &Path, contents: &[u8], perms: Perms) -> Result<bool, FsError> {
    match fs::symlink_metadata(path) {
        Ok(md) if md.file_type().is_file() && perms.matches(&md) => {
            if same_contents(path, contents)? {
                return Ok(false);
            }
        }
        Ok(md) if md.file_type().is_dir() => {
            return Err(FsError::IsDir {
                path: path.to_owned(),
            })
        }
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err("stat", path)(e)),
    }
    let opts = banger_fs::WriteOptions::mode(perms.mode).owned_by(perms.uid, perms.gid);
    banger_fs::write_atomic(path, &mut &contents[..], opts)?;
    Ok(true)
}

/// Copy the file at `src` to `dst` atomically (see [`write_atomic`]).
pub fn copy_atomic(src: &Path, dst: &Path, perms: Perms) -> Result<bool, FsError> {
    let contents = fs::read(src).map_err(io_err("read", src))?;
    write_atomic(dst, &contents, perms)
}

/// Create parent directories of a path the installer writes (root, 0755).
pub fn ensure_parent(path: &Path) -> Result<(), FsError> {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).map_err(io_err("create directory", parent))?;
    }
    Ok(())
}

/// Make `path` a directory with `perms` (parents created as needed). The
/// directory's contents are never touched, so state survives upgrades.
/// Returns whether anything changed.
pub fn ensure_dir(path: &Path, perms: Perms) -> Result<bool, FsError> {
    let mut changed = false;
    match fs::symlink_metadata(path) {
        Ok(md) if md.file_type().is_symlink() => {
            return Err(FsError::Symlink {
                path: path.to_owned(),
            })
        }
        Ok(md) if !md.is_dir() => {
            return Err(FsError::NotDir {
                path: path.to_owned(),
            })
        }
        Ok(md) if perms.matches(&md) => return Ok(false),
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            ensure_parent(path)?;
            fs::create_dir(path).map_err(io_err("create directory", path))?;
            changed = true;
        }
        Err(e) => return Err(io_err("stat", path)(e)),
    }
    let md = fs::symlink_metadata(path).map_err(io_err("stat", path))?;
    if md.uid() != perms.uid || md.gid() != perms.gid {
        std::os::unix::fs::lchown(path, Some(perms.uid), Some(perms.gid))
            .map_err(io_err("chown", path))?;
        changed = true;
    }
    if md.mode() & 0o7777 != perms.mode {
        fs::set_permissions(path, fs::Permissions::from_mode(perms.mode))
            .map_err(io_err("chmod", path))?;
        changed = true;
    }
    Ok(changed)
}

/// Remove a file or symlink; `false` when it was not there.
pub fn remove_file(path: &Path) -> Result<bool, FsError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(io_err("remove", path)(e)),
    }
}

/// Remove a directory tree (a symlink in its place is removed, not
/// followed); `false` when it was not there.
pub fn remove_tree(path: &Path) -> Result<bool, FsError> {
    match fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(io_err("stat", path)(e)),
        Ok(md) if md.is_dir() => {
            fs::remove_dir_all(path).map_err(io_err("remove directory tree", path))?;
            Ok(true)
        }
        Ok(_) => remove_file(path),
    }
}

/// Remove a directory if it is empty; `false` when absent or not empty.
pub fn remove_dir_if_empty(path: &Path) -> Result<bool, FsError> {
    match fs::remove_dir(path) {
        Ok(()) => Ok(true),
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::DirectoryNotEmpty
            ) =>
        {
            Ok(false)
        }
        Err(e) => Err(io_err("remove directory", path)(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn me() -> (u32, u32) {
        (
            nix::unistd::geteuid().as_raw(),
            nix::unistd::getegid().as_raw(),
        )
    }

    #[test]
    fn atomic_write_is_idempotent_and_replaces_symlinks_instead_of_following() {
        let d = tempfile::tempdir().unwrap();
        let (uid, gid) = me();
        let p = d.path().join("f");
        let perms = Perms {
            mode: 0o640,
            uid,
            gid,
        };
        assert!(write_atomic(&p, b"one", perms).unwrap());
        assert!(!write_atomic(&p, b"one", perms).unwrap());
        assert_eq!(fs::metadata(&p).unwrap().mode() & 0o7777, 0o640);
        assert!(write_atomic(
            &p,
            b"one",
            Perms {
                mode: 0o644,
                ..perms
            }
        )
        .unwrap());
        assert!(write_atomic(
            &p,
            b"two",
            Perms {
                mode: 0o644,
                ..perms
            }
        )
        .unwrap());
        assert_eq!(fs::read(&p).unwrap(), b"two");

        let target = d.path().join("target");
        fs::write(&target, b"keep").unwrap();
        let link = d.path().join("link");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        assert!(write_atomic(&link, b"new", perms).unwrap());
        assert_eq!(fs::read(&target).unwrap(), b"keep");
        assert!(fs::symlink_metadata(&link).unwrap().is_file());
        let leftovers: Vec<_> = fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.ends_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }

    #[test]
    fn ensure_dir_fixes_mode_and_refuses_symlinks() {
        let d = tempfile::tempdir().unwrap();
        let (uid, gid) = me();
        let p = d.path().join("a/b");
        let perms = Perms {
            mode: 0o750,
            uid,
            gid,
        };
        assert!(ensure_dir(&p, perms).unwrap());
        assert!(!ensure_dir(&p, perms).unwrap());
        fs::set_permissions(&p, fs::Permissions::from_mode(0o777)).unwrap();
        assert!(ensure_dir(&p, perms).unwrap());
        assert_eq!(fs::metadata(&p).unwrap().mode() & 0o7777, 0o750);

        let link = d.path().join("link");
        std::os::unix::fs::symlink(&p, &link).unwrap();
        let err = ensure_dir(&link, perms).unwrap_err().to_string();
        assert!(
            err.contains("symbolic link") && err.contains("link"),
            "{err}"
        );
        let file = d.path().join("file");
        fs::write(&file, b"").unwrap();
        assert!(ensure_dir(&file, perms)
            .unwrap_err()
            .to_string()
            .contains("not a directory"));
    }

    #[test]
    fn removals_report_whether_something_was_there() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("x/y");
        fs::create_dir_all(&p).unwrap();
        fs::write(p.join("f"), b"").unwrap();
        assert!(!remove_dir_if_empty(&d.path().join("x")).unwrap());
        assert!(remove_tree(&d.path().join("x")).unwrap());
        assert!(!remove_tree(&d.path().join("x")).unwrap());
        assert!(!remove_file(&d.path().join("nope")).unwrap());
        assert_eq!(
            rooted(Some(Path::new("/s")), "/etc/x"),
            Path::new("/s/etc/x")
        );
        assert_eq!(rooted(None, "/etc/x"), Path::new("/etc/x"));
    }
}
