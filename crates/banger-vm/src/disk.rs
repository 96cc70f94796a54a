//! A VM's disks: the root disk cloned from the image's `rootfs.ext4`, the
//! work disk mounted at `/root`, and the small per-VM config drive.
//!
//! Every disk is written under a temporary name in its final directory and
//! only then linked to its real name, so a crash (or an error half-way) never
//! leaves a half-written disk where a VM would boot from it.

use std::fs::{self, File};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use banger_host::probe::{locate_program, search_path_from, CloneStrategy};
use banger_wire::guest::{
    GuestConfig, CONFIG_DRIVE_LABEL, CONFIG_FILE, FILES_DIR, WORK_DISK_LABEL,
};
use nix::errno::Errno;
use nix::unistd::{lseek, Whence};

use crate::identity::sync_dir;

/// Smallest work disk accepted: room for ext4's metadata and a little data.
pub const MIN_WORK_DISK_BYTES: u64 = 16 << 20;

/// Errors making a VM disk, each naming the path involved.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error("cannot {op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("{op} on {}: {errno}", path.display())]
    Sys {
        op: &'static str,
        path: PathBuf,
        errno: Errno,
    },
    #[error("image {} is not a regular file", path.display())]
    NotAFile { path: PathBuf },
    #[error("{} already exists; refusing to overwrite a VM disk", path.display())]
    Exists { path: PathBuf },
    #[error(
        "a device-mapper snapshot of {} for {} is made by the root helper, not by the daemon",
        src.display(),
        dst.display()
    )]
    DmSnapshotNeedsHelper { src: PathBuf, dst: PathBuf },
    #[error("work disk size {size} bytes for {} is below the minimum of {min} bytes", path.display())]
    TooSmall { path: PathBuf, size: u64, min: u64 },
    #[error("cannot find {program}: {reason} (install e2fsprogs)")]
    ToolMissing {
        program: &'static str,
        reason: String,
    },
    #[error("cannot run {} for {}: {source}", program.display(), path.display())]
    Spawn {
        program: PathBuf,
        path: PathBuf,
        source: io::Error,
    },
    #[error("{} failed for {} ({status}): {stderr}", program.display(), path.display())]
    ToolFailed {
        program: PathBuf,
        path: PathBuf,
        status: std::process::ExitStatus,
        stderr: String,
    },
    #[error("config drive payload {rel:?} for {} is not a relative path inside the drive", image.display())]
    BadPayloadPath { image: PathBuf, rel: PathBuf },
    #[error("cannot encode the guest config for {}: {source}", image.display())]
    Encode {
        image: PathBuf,
        source: serde_json::Error,
    },
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> DiskError {
    let path = path.to_owned();
    move |source| DiskError::Io { op, path, source }
}

fn sys_err(op: &'static str, path: &Path) -> impl FnOnce(Errno) -> DiskError {
    let path = path.to_owned();
    move |errno| DiskError::Sys { op, path, errno }
}

/// A file being written under a temporary name beside its destination;
/// removed on drop unless [`Staged::commit`] linked it into place.
struct Staged {
    file: tempfile::NamedTempFile,
    dst: PathBuf,
}

impl Staged {
    fn new(dst: &Path) -> Result<Staged, DiskError> {
        let dir = parent_dir(dst);
        let name = dst
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let file = tempfile::Builder::new()
            .prefix(&format!(".{name}."))
            .suffix(".partial")
            .permissions(fs::Permissions::from_mode(0o600))
            .tempfile_in(dir)
            .map_err(io_err("create a temporary file in", dir))?;
        Ok(Staged {
            file,
            dst: dst.to_owned(),
        })
    }

    fn path(&self) -> &Path {
        self.file.path()
    }

    /// Flush to disk and link to the destination; `replace` allows an
    /// existing destination to be replaced atomically.
    fn commit(self, replace: bool) -> Result<(), DiskError> {
        self.file
            .as_file()
            .sync_all()
            .map_err(io_err("fsync", self.file.path()))?;
        let dst = self.dst;
        if replace {
            self.file
                .persist(&dst)
                .map_err(|e| io_err("rename into place", &dst)(e.error))?;
        } else {
            self.file.persist_noclobber(&dst).map_err(|e| {
                if e.error.kind() == io::ErrorKind::AlreadyExists {
                    DiskError::Exists { path: dst.clone() }
                } else {
                    io_err("link into place", &dst)(e.error)
                }
            })?;
        }
        let dir = parent_dir(&dst);
        sync_dir(dir).map_err(io_err("fsync directory", dir))
    }
}

fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

fn refuse_existing(path: &Path) -> Result<(), DiskError> {
    match fs::symlink_metadata(path) {
        Ok(_) => Err(DiskError::Exists {
            path: path.to_owned(),
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err("inspect", path)(e)),
    }
}

/// Make `dst`, a VM's root disk, from the image `src` with `preference` (the
/// strategy [`banger_host::probe::probe_clone_strategy`] found for the state
/// dir), and return the strategy actually used:
///
/// - `Reflink`: `FICLONE`; when the filesystem refuses (e.g. `src` and `dst`
///   on different filesystems), falls back to a sparse copy.
/// - `DmSnapshot`: [`DiskError::DmSnapshotNeedsHelper`]; the caller asks the
///   root helper (or falls back to `SparseCopy` itself).
/// - `SparseCopy`: copies only the data extents (`SEEK_DATA`/`SEEK_HOLE`),
///   leaving holes as holes; the copy has the same length and bytes.
///
/// An existing `dst` is refused. The disk is written under a temporary
/// name and linked into place at the end, mode 0600.
pub fn clone_rootfs(
    src: &Path,
    dst: &Path,
    preference: CloneStrategy,
) -> Result<CloneStrategy, DiskError> {
    if preference == CloneStrategy::DmSnapshot {
        return Err(DiskError::DmSnapshotNeedsHelper {
            src: src.to_owned(),
            dst: dst.to_owned(),
        });
    }
    let source = File::open(src).map_err(io_err("open image", src))?;
    let meta = source.metadata().map_err(io_err("inspect image", src))?;
    if !meta.is_file() {
        return Err(DiskError::NotAFile {
            path: src.to_owned(),
        });
    }
    refuse_existing(dst)?;
    let staged = Staged::new(dst)?;
    let used = if preference == CloneStrategy::Reflink && reflink(&source, &staged, src)? {
        CloneStrategy::Reflink
    } else {
        sparse_copy(&source, meta.len(), &staged, src)?;
        CloneStrategy::SparseCopy
    };
    staged.commit(false)?;
    Ok(used)
}

/// `FICLONE` of all of `source` into the staged file; `false` when the
/// filesystem does not do reflinks between these two files.
fn reflink(source: &File, staged: &Staged, src: &Path) -> Result<bool, DiskError> {
    let dst = staged.file.as_file();
    // SAFETY: FICLONE takes the source fd as its integer argument; both fds
    // belong to open files borrowed for the whole call.
    let rc = unsafe { libc::ioctl(dst.as_raw_fd(), libc::FICLONE, source.as_raw_fd()) };
    if rc == 0 {
        return Ok(true);
    }
    match Errno::last() {
        // Not supported here, or src and dst on different filesystems.
        Errno::EOPNOTSUPP | Errno::EXDEV | Errno::EINVAL | Errno::ENOTTY | Errno::ENOSYS => {
            Ok(false)
        }
        errno => Err(DiskError::Sys {
            op: "FICLONE from the image",
            path: src.to_owned(),
            errno,
        }),
    }
}

/// Copy the data extents of `source` (length `len`) into the staged file,
/// which is first sized to `len` so everything not copied stays a hole.
fn sparse_copy(source: &File, len: u64, staged: &Staged, src: &Path) -> Result<(), DiskError> {
    const CHUNK: usize = 1 << 20;
    let dst = staged.file.as_file();
    let dst_path = staged.path();
    dst.set_len(len).map_err(io_err("size", dst_path))?;
    let mut buf = vec![0u8; CHUNK];
    let mut pos: i64 = 0;
    let end = len as i64;
    while pos < end {
        let data = match lseek(source, pos, Whence::SeekData) {
            Ok(d) => d,
            // No data at or after `pos`: the rest is a hole.
            Err(Errno::ENXIO) => break,
            Err(e) => return Err(sys_err("SEEK_DATA", src)(e)),
        };
        let hole = lseek(source, data, Whence::SeekHole).map_err(sys_err("SEEK_HOLE", src))?;
        let mut at = data;
        let stop = hole.min(end);
        while at < stop {
            let want = ((stop - at) as usize).min(CHUNK);
            let n = source
                .read_at(&mut buf[..want], at as u64)
                .map_err(io_err("read image", src))?;
            if n == 0 {
                // The image shrank under us; what was read is all there is.
                return Err(io_err("read image", src)(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("file ended at {at} of {len} bytes while copying"),
                )));
            }
            dst.write_all_at(&buf[..n], at as u64)
                .map_err(io_err("write", dst_path))?;
            at += n as i64;
        }
        pos = stop;
    }
    Ok(())
}

fn mkfs_program() -> Result<PathBuf, DiskError> {
    let search = search_path_from(std::env::var_os("PATH").as_deref());
    locate_program("mkfs.ext4", None, &search).map_err(|e| DiskError::ToolMissing {
        program: "mkfs.ext4",
        reason: e.to_string(),
    })
}

/// Run `mkfs.ext4 ARGS` for `path`; a failure carries the tool's stderr.
fn run_mkfs(args: &[&std::ffi::OsStr], path: &Path) -> Result<(), DiskError> {
    let program = mkfs_program()?;
    let out = Command::new(&program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .map_err(|source| DiskError::Spawn {
            program: program.clone(),
            path: path.to_owned(),
            source,
        })?;
    if out.status.success() {
        return Ok(());
    }
    let mut stderr = String::from_utf8_lossy(&out.stderr).trim().to_owned();
    if stderr.is_empty() {
        stderr = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    }
    Err(DiskError::ToolFailed {
        program,
        path: path.to_owned(),
        status: out.status,
        stderr,
    })
}

/// Create a VM's work disk at `path`: a sparse file of `size_bytes` holding
/// an empty ext4 labelled [`WORK_DISK_LABEL`] whose root directory is owned
/// by root (`mkfs.ext4 -q -F -L banger-work -E root_owner=0:0 -m 0`). Work
/// disks survive stop/start, so an existing `path` is refused rather than
/// reformatted.
pub fn create_work_disk(path: &Path, size_bytes: u64) -> Result<(), DiskError> {
    if size_bytes < MIN_WORK_DISK_BYTES {
        return Err(DiskError::TooSmall {
            path: path.to_owned(),
            size: size_bytes,
            min: MIN_WORK_DISK_BYTES,
        });
    }
    refuse_existing(path)?;
    let staged = Staged::new(path)?;
    staged
        .file
        .as_file()
        .set_len(size_bytes)
        .map_err(io_err("size", staged.path()))?;
    let target = staged.path().as_os_str();
    run_mkfs(
        &[
            "-q".as_ref(),
            "-F".as_ref(),
            "-L".as_ref(),
            WORK_DISK_LABEL.as_ref(),
            "-E".as_ref(),
            "root_owner=0:0".as_ref(),
            "-m".as_ref(),
            "0".as_ref(),
            target,
        ],
        path,
    )?;
    staged.commit(false)
}

/// One entry of the config drive's `files/` tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Payload {
    /// Path relative to [`FILES_DIR`]; parents come before their children.
    pub rel: PathBuf,
    pub kind: PayloadKind,
}

/// What a [`Payload`] is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PayloadKind {
    /// A directory with these permission bits.
    Dir { mode: u32 },
    /// A regular file with these permission bits and contents.
    File { mode: u32, contents: Vec<u8> },
}

/// Bytes the config drive gets beyond what its content needs: the journal,
/// group descriptors, bitmaps and inode tables of a small ext4.
const CONFIG_DRIVE_SLACK: u64 = 4 << 20;

/// Image size for `content` bytes in `entries` inodes: each file rounded up
/// to 4 KiB blocks, an inode table sized for the count, an eighth more for
/// indirect and extent blocks, plus fixed slack; whole MiB.
fn config_drive_size(content: u64, entries: u64) -> u64 {
    let raw = content + content / 8 + entries * 512 + CONFIG_DRIVE_SLACK;
    raw.div_ceil(1 << 20) << 20
}

/// Build the per-VM config drive at `image`: stage a directory holding
/// [`CONFIG_FILE`] (the `config` JSON) and [`FILES_DIR`]`/…` (the payloads),
/// then `mkfs.ext4 -q -L banger-cfg -d STAGE` an image sized from the content.
/// No root and no mount are needed. The image is written under a temporary
/// name and renamed over any previous one (the drive is rebuilt on each
/// start); it is mode 0600 because it carries the VM's private host key.
/// The staging directory is always removed.
pub fn build_config_drive(
    image: &Path,
    config: &GuestConfig,
    payloads: &[Payload],
) -> Result<(), DiskError> {
    build_config_drive_with(image, config, payloads, &[])
}

/// A host file copied to the config drive's root, e.g. the guest agent
/// binary ([`banger_wire::guest::AGENT_BINARY`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootFile {
    /// File name at the drive's root (one path component, not
    /// [`CONFIG_FILE`] or [`FILES_DIR`]).
    pub name: String,
    /// Host file to copy.
    pub source: PathBuf,
    /// Permission bits on the drive.
    pub mode: u32,
}

/// [`build_config_drive`] plus `root_files` copied to the drive's root.
pub fn build_config_drive_with(
    image: &Path,
    config: &GuestConfig,
    payloads: &[Payload],
    root_files: &[RootFile],
) -> Result<(), DiskError> {
    let dir = parent_dir(image);
    let stage = tempfile::Builder::new()
        .prefix(".banger-cfg-stage-")
        .tempdir_in(dir)
        .map_err(io_err("create a staging directory in", dir))?;
    let root = stage.path();
    let json = serde_json::to_vec_pretty(config).map_err(|source| DiskError::Encode {
        image: image.to_owned(),
        source,
    })?;
    let config_path = root.join(CONFIG_FILE);
    write_new(&config_path, &json, 0o600)?;
    let files = root.join(FILES_DIR);
    fs::create_dir(&files).map_err(io_err("create", &files))?;
    let mut content = json.len() as u64;
    let mut entries = 3u64;
    let mut dirs = Vec::new();
    for p in payloads {
        if p.rel.as_os_str().is_empty()
            || !p
                .rel
                .components()
                .all(|c| matches!(c, std::path::Component::Normal(_)))
        {
            return Err(DiskError::BadPayloadPath {
                image: image.to_owned(),
                rel: p.rel.clone(),
            });
        }
        let at = files.join(&p.rel);
        entries += 1;
        match &p.kind {
            PayloadKind::Dir { mode } => {
                fs::create_dir(&at).map_err(io_err("create", &at))?;
                content += 4096;
                // Permissions are applied after the children are written, so
                // a read-only source directory still gets its contents.
                dirs.push((at, *mode));
            }
            PayloadKind::File { mode, contents } => {
                write_new(&at, contents, *mode)?;
                content += (contents.len() as u64).next_multiple_of(4096);
            }
        }
    }
    for f in root_files {
        let rel = Path::new(&f.name);
        let single = rel.components().count() == 1
            && matches!(
                rel.components().next(),
                Some(std::path::Component::Normal(_))
            );
        if !single || f.name == CONFIG_FILE || f.name == FILES_DIR {
            return Err(DiskError::BadPayloadPath {
                image: image.to_owned(),
                rel: rel.to_owned(),
            });
        }
        let at = root.join(rel);
        let copied = fs::copy(&f.source, &at).map_err(io_err("copy", &f.source))?;
        fs::set_permissions(&at, fs::Permissions::from_mode(f.mode & 0o7777))
            .map_err(io_err("set permissions of", &at))?;
        entries += 1;
        content += copied.next_multiple_of(4096);
    }
    for (at, mode) in dirs.iter().rev() {
        fs::set_permissions(at, fs::Permissions::from_mode(*mode & 0o7777))
            .map_err(io_err("set permissions of", at))?;
    }
    let size = config_drive_size(content, entries);
    let staged = Staged::new(image)?;
    staged
        .file
        .as_file()
        .set_len(size)
        .map_err(io_err("size", staged.path()))?;
    let inodes = (entries + 64).to_string();
    let target = staged.path().as_os_str();
    let result = run_mkfs(
        &[
            "-q".as_ref(),
            "-F".as_ref(),
            "-L".as_ref(),
            CONFIG_DRIVE_LABEL.as_ref(),
            "-N".as_ref(),
            inodes.as_ref(),
            "-d".as_ref(),
            root.as_os_str(),
            target,
        ],
        image,
    );
    // Restore write permission so the staging tree can be removed even when
    // a payload directory was read-only.
    for (at, _) in &dirs {
        let _ = fs::set_permissions(at, fs::Permissions::from_mode(0o700));
    }
    result?;
    stage
        .close()
        .map_err(io_err("remove the staging directory in", dir))?;
    staged.commit(true)
}

fn write_new(path: &Path, data: &[u8], mode: u32) -> Result<(), DiskError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io_err("create", path))?;
    f.write_all(data).map_err(io_err("write", path))?;
    // The umask does not apply to an explicit chmod.
    f.set_permissions(fs::Permissions::from_mode(mode & 0o7777))
        .map_err(io_err("set permissions of", path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mkfs_failure_carries_the_tools_stderr_and_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("no/such/dir/disk.ext4");
        let err = run_mkfs(&["-q".as_ref(), img.as_os_str(), "8M".as_ref()], &img).unwrap_err();
        let DiskError::ToolFailed { ref stderr, .. } = err else {
            panic!("expected ToolFailed, got {err}");
        };
        assert!(stderr.contains("No such file or directory"), "{stderr}");
        let text = err.to_string();
        assert!(text.contains("mkfs.ext4"), "{text}");
        assert!(text.contains("no/such/dir/disk.ext4"), "{text}");
    }

    #[test]
    fn config_drive_size_grows_with_content() {
        let empty = config_drive_size(0, 3);
        assert_eq!(empty % (1 << 20), 0);
        assert!(empty >= CONFIG_DRIVE_SLACK);
        let big = config_drive_size(100 << 20, 10);
        assert!(big >= (100 << 20) + (100 << 20) / 8, "{big}");
        assert!(config_drive_size(0, 100_000) > empty);
    }
}
