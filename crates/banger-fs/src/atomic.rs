//! Atomic file replacement.

use std::fs::{self, File, OpenOptions, Permissions};
use std::io::{self, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Mode and owner of a file [`write_atomic`] writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteOptions {
    /// Final permission bits (the temporary file is 0600 until then).
    pub mode: u32,
    /// `(uid, gid)` to give the file; `None` keeps the writer's.
    pub owner: Option<(u32, u32)>,
}

impl WriteOptions {
    /// A file with `mode`, owned by the writing process.
    pub fn mode(mode: u32) -> WriteOptions {
        WriteOptions { mode, owner: None }
    }

    /// The same, owned by `uid:gid`.
    pub fn owned_by(self, uid: u32, gid: u32) -> WriteOptions {
        WriteOptions {
            owner: Some((uid, gid)),
            ..self
        }
    }
}

/// Which step of [`write_atomic`] failed, and on which path.
#[derive(Debug, thiserror::Error)]
pub enum AtomicWriteError {
    #[error("cannot create a temporary file in {dir}: {source}")]
    CreateTemp { dir: PathBuf, source: io::Error },
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
    #[error("cannot chown {path} to {uid}:{gid}: {source}")]
    Chown {
        path: PathBuf,
        uid: u32,
        gid: u32,
        source: io::Error,
    },
    #[error("cannot set the mode of {path} to {mode:o}: {source}")]
    Chmod {
        path: PathBuf,
        mode: u32,
        source: io::Error,
    },
    #[error("cannot sync {path} to disk: {source}")]
    Sync { path: PathBuf, source: io::Error },
    #[error("cannot rename a temporary file over {path}: {source}")]
    Rename { path: PathBuf, source: io::Error },
    #[error("cannot sync directory {dir}: {source}")]
    SyncDir { dir: PathBuf, source: io::Error },
}

impl AtomicWriteError {
    /// The path the failing step worked on.
    pub fn path(&self) -> &Path {
        match self {
            AtomicWriteError::CreateTemp { dir, .. } | AtomicWriteError::SyncDir { dir, .. } => dir,
            AtomicWriteError::Write { path, .. }
            | AtomicWriteError::Chown { path, .. }
            | AtomicWriteError::Chmod { path, .. }
            | AtomicWriteError::Sync { path, .. }
            | AtomicWriteError::Rename { path, .. } => path,
        }
    }

    /// The path and the I/O error, for callers whose errors have that shape.
    pub fn into_parts(self) -> (PathBuf, io::Error) {
        match self {
            AtomicWriteError::CreateTemp { dir, source }
            | AtomicWriteError::SyncDir { dir, source } => (dir, source),
            AtomicWriteError::Write { path, source }
            | AtomicWriteError::Chown { path, source, .. }
            | AtomicWriteError::Chmod { path, source, .. }
            | AtomicWriteError::Sync { path, source }
            | AtomicWriteError::Rename { path, source } => (path, source),
        }
    }

    /// The underlying I/O error.
    pub fn io_source(&self) -> &io::Error {
        match self {
            AtomicWriteError::CreateTemp { source, .. }
            | AtomicWriteError::Write { source, .. }
            | AtomicWriteError::Chown { source, .. }
            | AtomicWriteError::Chmod { source, .. }
            | AtomicWriteError::Sync { source, .. }
            | AtomicWriteError::Rename { source, .. }
            | AtomicWriteError::SyncDir { source, .. } => source,
        }
    }
}

/// Replace `path` with everything read from `contents`: written to a new
/// temporary file beside it (unique name, `O_CREAT|O_EXCL`, 0600, so a
/// planted file or symlink is never opened and nobody reads a half-written
/// secret), chowned then chmodded (chown clears set-id bits), fsynced,
/// renamed over `path` (a symlink at `path` is replaced, not followed),
/// then the directory is fsynced so the rename survives a power cut.
/// On any failure the temporary file is removed and `path` is untouched.
pub fn write_atomic(
    path: &Path,
    contents: &mut dyn Read,
    opts: WriteOptions,
) -> Result<(), AtomicWriteError> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let (mut file, tmp_path) =
        create_temp(dir, &name).map_err(|source| AtomicWriteError::CreateTemp {
            dir: dir.to_owned(),
            source,
        })?;
    let result = finish(&mut file, &tmp_path, path, contents, opts);
    if result.is_err() {
        let _ = fs::remove_file(&tmp_path);
    }
    result?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| AtomicWriteError::SyncDir {
            dir: dir.to_owned(),
            source,
        })
}

/// A new file `.NAME.<pid>.<n><nanos>.tmp` in `dir`, created with
/// `O_CREAT|O_EXCL` (never opens what is already there, symlinks included)
/// and mode 0600. Without the tempfile crate: the guest agent and the root
/// helper keep their dependency closures small.
fn create_temp(dir: &Path, name: &str) -> io::Result<(File, PathBuf)> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut last = None;
    for _ in 0..64 {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let tmp = dir.join(format!(".{name}.{}.{n}{nanos:x}.tmp", std::process::id()));
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
        {
            Ok(f) => return Ok((f, tmp)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| io::Error::from(io::ErrorKind::AlreadyExists)))
}

fn finish(
    file: &mut File,
    tmp_path: &Path,
    path: &Path,
    contents: &mut dyn Read,
    opts: WriteOptions,
) -> Result<(), AtomicWriteError> {
    io::copy(contents, file).map_err(|source| AtomicWriteError::Write {
        path: tmp_path.to_owned(),
        source,
    })?;
    if let Some((uid, gid)) = opts.owner {
        std::os::unix::fs::fchown(&*file, Some(uid), Some(gid)).map_err(|source| {
            AtomicWriteError::Chown {
                path: tmp_path.to_owned(),
                uid,
                gid,
                source,
            }
        })?;
    }
    file.set_permissions(Permissions::from_mode(opts.mode))
        .map_err(|source| AtomicWriteError::Chmod {
            path: tmp_path.to_owned(),
            mode: opts.mode,
            source,
        })?;
    file.sync_all().map_err(|source| AtomicWriteError::Sync {
        path: tmp_path.to_owned(),
        source,
    })?;
    fs::rename(tmp_path, path).map_err(|source| AtomicWriteError::Rename {
        path: path.to_owned(),
        source,
    })
}

/// Whether `e` came from the temporary file's creation with the target's
/// directory missing (callers that create directories lazily check this).
pub fn is_missing_dir(e: &AtomicWriteError) -> bool {
    matches!(e, AtomicWriteError::CreateTemp { source, .. } if source.kind() == io::ErrorKind::NotFound)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn replaces_contents_with_the_asked_mode_and_leaves_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config");
        fs::write(&path, "old and longer").unwrap();
        fs::set_permissions(&path, Permissions::from_mode(0o666)).unwrap();
        write_atomic(&path, &mut &b"new"[..], WriteOptions::mode(0o640)).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"new");
        assert_eq!(fs::metadata(&path).unwrap().mode() & 0o7777, 0o640);
        assert_eq!(names(dir.path()), ["config"]);
        // An empty source makes an empty file, not a missing one.
        write_atomic(&path, &mut io::empty(), WriteOptions::mode(0o600)).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"");
    }

    #[test]
    fn a_symlink_at_the_target_is_replaced_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        fs::write(&victim, "keep").unwrap();
        let path = dir.path().join("link");
        std::os::unix::fs::symlink(&victim, &path).unwrap();
        write_atomic(&path, &mut &b"mine"[..], WriteOptions::mode(0o600)).unwrap();
        assert_eq!(fs::read(&victim).unwrap(), b"keep");
        assert!(fs::symlink_metadata(&path).unwrap().file_type().is_file());
        assert_eq!(fs::read(&path).unwrap(), b"mine");
    }

    #[test]
    fn planted_temp_names_are_not_reused() {
        // The copies this replaced used a fixed temp name (`.NAME.tmp`); a
        // symlink planted there must neither be followed nor block the write.
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        fs::write(&victim, "keep").unwrap();
        for planted in [".target.tmp", ".target.banger-tmp"] {
            std::os::unix::fs::symlink(&victim, dir.path().join(planted)).unwrap();
        }
        let path = dir.path().join("target");
        write_atomic(&path, &mut &b"x"[..], WriteOptions::mode(0o600)).unwrap();
        assert_eq!(fs::read(&victim).unwrap(), b"keep");
        assert_eq!(fs::read(&path).unwrap(), b"x");
    }

    #[test]
    fn a_failed_read_leaves_the_old_file_and_no_temp() {
        struct Broken;
        impl Read for Broken {
            fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
                Err(io::Error::other("source broke"))
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        fs::write(&path, "old").unwrap();
        let err = write_atomic(&path, &mut Broken, WriteOptions::mode(0o600)).unwrap_err();
        assert!(matches!(err, AtomicWriteError::Write { .. }), "{err}");
        assert_eq!(fs::read(&path).unwrap(), b"old");
        assert_eq!(names(dir.path()), ["f"]);
    }

    #[test]
    fn a_directory_target_or_missing_dir_fails_naming_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("sub");
        fs::create_dir(&sub).unwrap();
        let err = write_atomic(&sub, &mut &b"x"[..], WriteOptions::mode(0o600)).unwrap_err();
        assert!(matches!(err, AtomicWriteError::Rename { .. }), "{err}");
        assert_eq!(err.path(), sub);
        assert_eq!(names(dir.path()), ["sub"]);

        let missing = dir.path().join("nope/file");
        let err = write_atomic(&missing, &mut &b"x"[..], WriteOptions::mode(0o600)).unwrap_err();
        assert!(is_missing_dir(&err), "{err}");
        assert!(err.to_string().contains("nope"), "{err}");
    }

    #[test]
    fn owner_is_applied_before_the_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("owned");
        let (uid, gid) = (
            fs::metadata(dir.path()).unwrap().uid(),
            fs::metadata(dir.path()).unwrap().gid(),
        );
        // Same owner as the writer: works as root and as a user; the set-gid
        // bit survives because chmod runs after chown.
        let opts = WriteOptions::mode(0o2750).owned_by(uid, gid);
        write_atomic(&path, &mut &b"x"[..], opts).unwrap();
        let md = fs::metadata(&path).unwrap();
        assert_eq!((md.uid(), md.gid()), (uid, gid));
        assert_eq!(md.mode() & 0o7777, 0o2750);
    }
}
