//! `bangerd-build`: builds an embedded recipe as root and installs the
//! bundle into the owner's store (see
//! [`banger_wire::helper::HelperRequest::BuildBundle`]). The root helper
//! starts it as its child, or in a transient systemd unit in system mode
//! (`bangerd_root::ops::build`), so the image builder is not linked into the
//! long-running helper. docs/root-helper.md.
//!
//! The owner can write its state and cache directories, so root never opens,
//! writes, chowns or renames anything there: it may have swapped any
//! component for a symlink to a host file. Root builds and keeps its bundle
//! cache in its own work directory, which no other user can change (checked
//! component by component before every build), then opens the finished
//! bundle and hands the descriptor to a thread that has dropped to the
//! owner's uid and gids. That thread copies the bundle into the owner's cache
//! (refusing symlinks) and installs it into the owner's store, with exactly
//! the owner's rights: whatever the owner planted there, it reaches only what
//! the owner could reach anyway, and everything it creates is the owner's
//! without a chown.

use std::fs::File;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Component, Path, PathBuf};

use banger_image::build::{build, BuildOptions, Built};
use banger_image::recipe::RecipeSet;
use banger_image::store::{Installed, Origin, Store};
use banger_image::Progress;
use banger_wire::helper::{BundleKind, HelperErrorCode, HelperResponse};
use bangerd_root::ops::build::BuildPaths;
use nix::errno::Errno;
use nix::fcntl::{openat, openat2, renameat, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{fstatat, mkdirat, Mode, SFlag};
use nix::unistd::{unlinkat, UnlinkatFlags};
use tracing::info;

/// A build named no recipe compiled into the builder.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("no {kind} recipe named {name:?} (known: {known})")]
pub struct UnknownRecipe {
    pub kind: &'static str,
    pub name: String,
    pub known: String,
}

/// `name` if it is exactly one of the embedded recipes of `kind` (so never a
/// path, and never a recipe the owner wrote).
pub fn recipe_name(kind: BundleKind, name: &str) -> Result<String, UnknownRecipe> {
    let known = RecipeSet::embedded().names(kind);
    if known.iter().any(|k| k == name) {
        Ok(name.to_owned())
    } else {
        Err(UnknownRecipe {
            kind: kind.as_str(),
            name: name.to_owned(),
            known: known.join(", "),
        })
    }
}

/// Why a build failed, in the builder; sent to the helper as its typed
/// wire reply ([`BuildError::code`] and the message).
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The image builder failed.
    #[error("building {kind} {name} failed: {source}")]
    Build {
        kind: &'static str,
        name: String,
        // Boxed: a build error carries whole paths and command tails.
        #[source]
        source: Box<banger_image::build::BuildError>,
    },
    /// Installing the bundle into the owner's store failed.
    #[error("building {kind} {name} failed: {source}")]
    Install {
        kind: &'static str,
        name: String,
        #[source]
        source: Box<banger_image::store::StoreError>,
    },
    /// Copying the bundle into the owner's cache, as the owner, failed.
    #[error("building {kind} {name} failed: {source}")]
    HandOver {
        kind: &'static str,
        name: String,
        #[source]
        source: Box<BuildError>,
    },
    /// A file operation failed.
    #[error("cannot {op} {path}: {source}")]
    File {
        op: FileOp,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A path must not be touched (a symlink, or writable by others).
    #[error("refusing to touch {path}: {reason}")]
    Refused { path: PathBuf, reason: &'static str },
    /// A thread could not take on the owner's credentials.
    #[error("cannot {op} (uid {uid}): {source}")]
    Credentials {
        op: CredentialsOp,
        uid: u32,
        #[source]
        source: std::io::Error,
    },
    /// The credential switch returned success but the thread still runs as
    /// someone else.
    #[error("cannot switch to the owner (uid {uid}): still running as {euid}:{egid}")]
    CredentialsUnchanged { uid: u32, euid: u32, egid: u32 },
    /// The thread running as the owner panicked.
    #[error("cannot run as the owner (uid {uid}): the thread panicked")]
    OwnerThreadPanicked { uid: u32 },
}

impl BuildError {
    /// The wire error code for this failure.
    pub fn code(&self) -> HelperErrorCode {
        match self {
            BuildError::Refused { .. } => HelperErrorCode::Invalid,
            BuildError::Build { .. }
            | BuildError::Install { .. }
            | BuildError::HandOver { .. }
            | BuildError::File { .. }
            | BuildError::Credentials { .. }
            | BuildError::CredentialsUnchanged { .. }
            | BuildError::OwnerThreadPanicked { .. } => HelperErrorCode::Io,
        }
    }
}

/// A file step of the build or the hand-over: the path and the OS error say
/// what to fix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileOp {
    Create,
    Stat,
    Remove,
    Open,
    OpenCacheDir,
    OpenBuiltBundle,
    Write,
    RenameIntoPlace,
}

impl std::fmt::Display for FileOp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            FileOp::Create => "create",
            FileOp::Stat => "stat",
            FileOp::Remove => "remove",
            FileOp::Open => "open",
            FileOp::OpenCacheDir => "open the cache directory",
            FileOp::OpenBuiltBundle => "open the built bundle",
            FileOp::Write => "write",
            FileOp::RenameIntoPlace => "rename into place",
        })
    }
}

/// The credential change that failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CredentialsOp {
    DropGroups,
    SetGroup,
    SetUid,
}

impl std::fmt::Display for CredentialsOp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            CredentialsOp::DropGroups => "drop the supplementary groups",
            CredentialsOp::SetGroup => "switch to the owner's group",
            CredentialsOp::SetUid => "switch to the owner's uid",
        })
    }
}

/// Build as root in [`BuildPaths::work_dir`], then install the bundle into
/// the owner's store as the owner (`uid`, `gid`), in this process
/// (blocking; minutes).
pub fn build_here(
    kind: BundleKind,
    name: &str,
    paths: &BuildPaths,
    uid: u32,
    gid: u32,
) -> Result<HelperResponse, BuildError> {
    root_private_dir(&paths.work_dir)?;
    // The bundle cache is root's: a cache hit is a bundle root built, never
    // one the owner planted.
    let mut opts = BuildOptions::new(paths.work_dir.join("bundles"));
    opts.work_dir = Some(paths.work_dir.clone());
    let log = |p: Progress| {
        // mmdebstrap's per-package info lines would flood the journal.
        if !p.message.contains(": I: ") {
            info!(phase = p.phase.as_str(), "{kind:?} {name}: {}", p.message);
        }
    };
    let built = build(kind, name, &opts, &log).map_err(|e| BuildError::Build {
        kind: kind.as_str(),
        name: name.to_owned(),
        source: Box::new(e),
    })?;
    let bundle = File::open(&built.packed.path).map_err(|source| BuildError::File {
        op: FileOp::OpenBuiltBundle,
        path: built.packed.path.clone(),
        source,
    })?;
    let installed = as_owner(uid, gid, || {
        hand_over(kind, name, bundle, &built, paths, &log).map_err(|e| match e {
            BuildError::Install { .. } | BuildError::Refused { .. } => e,
            other => BuildError::HandOver {
                kind: kind.as_str(),
                name: name.to_owned(),
                source: Box::new(other),
            },
        })
    })?;
    Ok(HelperResponse::Built {
        path: installed.dir.display().to_string(),
        version: installed.manifest.version.clone(),
        recipe_hash: built.recipe_hash,
        bundle_sha256: built.packed.sha256,
        cached: built.cached,
    })
}

/// Create `dir` (mode 0700) where missing and make sure no user but root can
/// change any component of it: each is a real directory (not a symlink)
/// owned by root, and none is writable by group or others, except an
/// intermediate directory with the sticky bit (`/tmp`), where others cannot
/// rename or remove root's entries. Root then uses paths under `dir` freely.
pub fn root_private_dir(dir: &Path) -> Result<(), BuildError> {
    let refused = |path: &Path, reason| BuildError::Refused {
        path: path.to_owned(),
        reason,
    };
    if !dir.is_absolute() {
        return Err(refused(dir, "the build work directory must be absolute"));
    }
    let mut cur = PathBuf::from("/");
    let mut parts = dir.components().skip(1).peekable();
    while let Some(part) = parts.next() {
        let Component::Normal(part) = part else {
            return Err(refused(
                dir,
                "the build work directory contains '..' or '.'",
            ));
        };
        cur.push(part);
        let last = parts.peek().is_none();
        // The parent was checked already, so this mkdir cannot be redirected.
        match std::fs::DirBuilder::new().mode(0o700).create(&cur) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(source) => {
                return Err(BuildError::File {
                    op: FileOp::Create,
                    path: cur,
                    source,
                })
            }
        }
        let meta = std::fs::symlink_metadata(&cur).map_err(|source| BuildError::File {
            op: FileOp::Stat,
            path: cur.clone(),
            source,
        })?;
        if !meta.file_type().is_dir() {
            return Err(refused(&cur, "it is not a directory (a symbolic link?)"));
        }
        if meta.uid() != 0 {
            return Err(refused(
                &cur,
                "root builds only under directories root owns",
            ));
        }
        let others_write = meta.mode() & 0o022 != 0;
        let sticky = meta.mode() & 0o1000 != 0;
        if others_write && (last || !sticky) {
            return Err(refused(&cur, "users other than root can write it"));
        }
    }
    Ok(())
}

/// Run `f` on a fresh thread whose uid and gids are the owner's.
///
/// glibc's `setresuid`/`setgroups` switch every thread of the process (its
/// setxid broadcast), which would leave the helper unprivileged; the raw
/// system calls change only the calling thread, and that thread ends with
/// `f`, so root's credentials never come back to code that ran as the owner.
fn as_owner<T: Send>(
    uid: u32,
    gid: u32,
    f: impl FnOnce() -> Result<T, BuildError> + Send,
) -> Result<T, BuildError> {
    let cred_err = |op: CredentialsOp| {
        move |source: std::io::Error| BuildError::Credentials { op, uid, source }
    };
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                // SAFETY: plain system calls on this thread's credentials
                // with integer arguments (a null, empty group list).
                let rc = unsafe {
                    libc::syscall(libc::SYS_setgroups, 0usize, std::ptr::null::<libc::gid_t>())
                };
                if rc != 0 {
                    return Err(cred_err(CredentialsOp::DropGroups)(
                        std::io::Error::last_os_error(),
                    ));
                }
                // SAFETY: as above.
                if unsafe { libc::syscall(libc::SYS_setresgid, gid, gid, gid) } != 0 {
                    return Err(cred_err(CredentialsOp::SetGroup)(
                        std::io::Error::last_os_error(),
                    ));
                }
                // SAFETY: as above.
                if unsafe { libc::syscall(libc::SYS_setresuid, uid, uid, uid) } != 0 {
                    return Err(cred_err(CredentialsOp::SetUid)(
                        std::io::Error::last_os_error(),
                    ));
                }
                // geteuid/getegid read the calling thread's credentials.
                // SAFETY: no arguments, cannot fail.
                let (euid, egid) = unsafe { (libc::geteuid(), libc::getegid()) };
                if (euid, egid) != (uid, gid) {
                    return Err(BuildError::CredentialsUnchanged { uid, euid, egid });
                }
                f()
            })
            .join()
            .unwrap_or_else(|_| Err(BuildError::OwnerThreadPanicked { uid }))
    })
}

/// As the owner: copy `bundle` to `<cache_dir>/{images,kernels}/<hash>.tar.zst`
/// (refusing symlinks there) and install it into the store.
fn hand_over(
    kind: BundleKind,
    name: &str,
    mut bundle: File,
    built: &Built,
    paths: &BuildPaths,
    log: &(dyn Fn(Progress) + Send + Sync),
) -> Result<Installed, BuildError> {
    let kind_name = match kind {
        BundleKind::Image => "images",
        BundleKind::Kernel => "kernels",
    };
    let dir_path = paths.cache_dir.join(kind_name);
    let file_name = format!("{}.tar.zst", built.recipe_hash);
    let dest = dir_path.join(&file_name);
    let partial = format!(".{file_name}.partial");
    let cache = nix::fcntl::open(
        &paths.cache_dir,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(no_symlink(FileOp::OpenCacheDir, &paths.cache_dir))?;
    match mkdirat(&cache, kind_name, Mode::from_bits_truncate(0o750)) {
        Ok(()) | Err(Errno::EEXIST) => {}
        Err(e) => return Err(file_err(FileOp::Create, &dir_path)(e)),
    }
    let how = OpenHow::new()
        .flags(OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_SYMLINKS);
    let dir = openat2(&cache, kind_name, how).map_err(no_symlink(FileOp::Open, &dir_path))?;
    let dirfd = &dir;
    match unlinkat(dirfd, partial.as_str(), UnlinkatFlags::NoRemoveDir) {
        Ok(()) | Err(Errno::ENOENT) => {}
        Err(e) => return Err(file_err(FileOp::Remove, &dir_path.join(&partial))(e)),
    }
    let out = openat(
        dirfd,
        partial.as_str(),
        OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::from_bits_truncate(0o640),
    )
    .map_err(file_err(FileOp::Create, &dir_path.join(&partial)))?;
    let mut out = File::from(out);
    std::io::copy(&mut bundle, &mut out)
        .and_then(|_| out.sync_all())
        .map_err(|source| BuildError::File {
            op: FileOp::Write,
            path: dir_path.join(&partial),
            source,
        })?;
    drop(out);
    // A symlink here is the owner's own business (rename would replace the
    // link, not follow it), but it is a sign of tampering: say so.
    match fstatat(
        dirfd,
        file_name.as_str(),
        nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
    ) {
        Ok(st) if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFLNK => {
            let _ = unlinkat(dirfd, partial.as_str(), UnlinkatFlags::NoRemoveDir);
            return Err(BuildError::Refused {
                path: dest,
                reason: "it is a symbolic link (remove it; the next build writes the bundle there)",
            });
        }
        Ok(_) | Err(Errno::ENOENT) => {}
        Err(e) => return Err(file_err(FileOp::Stat, &dest)(e)),
    }
    renameat(dirfd, partial.as_str(), dirfd, file_name.as_str())
        .map_err(file_err(FileOp::RenameIntoPlace, &dest))?;
    let store = Store::new(&paths.state_dir);
    let origin = Origin::Build {
        bundle_sha256: built.packed.sha256.clone(),
    };
    store
        .install_file(&dest, kind, name, origin, log)
        .map_err(|e| BuildError::Install {
            kind: kind.as_str(),
            name: name.to_owned(),
            source: Box::new(e),
        })
}

fn file_err(op: FileOp, path: &Path) -> impl FnOnce(Errno) -> BuildError {
    let path = path.to_owned();
    move |e| BuildError::File {
        op,
        path,
        source: e.into(),
    }
}

/// Like [`file_err`], but a symlink where a directory belongs (`ELOOP`, or
/// `ENOTDIR` from `O_DIRECTORY|O_NOFOLLOW`) is named as such.
fn no_symlink(op: FileOp, path: &Path) -> impl FnOnce(Errno) -> BuildError {
    let path = path.to_owned();
    move |e| match e {
        Errno::ELOOP | Errno::ENOTDIR => BuildError::Refused {
            path,
            reason:
                "it is a symbolic link or not a directory (remove it; the next build recreates it)",
        },
        e => file_err(op, &path)(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_embedded_recipes_are_built() {
        assert_eq!(
            recipe_name(BundleKind::Kernel, "generic-6.12").unwrap(),
            "generic-6.12"
        );
        let cases = [
            (
                BundleKind::Image,
                "debian-sid",
                "no image recipe named \"debian-sid\" (known: debian-bookworm, debian-bookworm-minimal)",
            ),
            (
                BundleKind::Kernel,
                "debian-bookworm",
                "no kernel recipe named \"debian-bookworm\" (known: generic-6.12)",
            ),
            (BundleKind::Kernel, "my-kernel", "no kernel recipe named \"my-kernel\""),
            (
                BundleKind::Image,
                "../image/debian-bookworm",
                "no image recipe named \"../image/debian-bookworm\"",
            ),
            (BundleKind::Kernel, "/etc/passwd", "no kernel recipe named \"/etc/passwd\""),
            (BundleKind::Image, "debian-bookworm.toml", "no image recipe named"),
        ];
        for (kind, name, needle) in cases {
            let msg = recipe_name(kind, name).unwrap_err().to_string();
            assert!(msg.contains(needle), "{kind:?} {name}: {msg}");
        }
    }
}
