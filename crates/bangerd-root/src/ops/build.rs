//! Building an embedded recipe as root and installing the bundle into the
//! owner's store (see [`banger_wire::helper::HelperRequest::BuildBundle`]).
//!
//! The owner controls the state and cache directories, so everything root
//! leaves there is handed over with descriptor-relative, never-follow
//! `fchown`s: a component swapped for a symlink mid-walk fails the walk
//! instead of redirecting a chown onto a host file.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use banger_image::build::{build_and_install, BuildOptions};
use banger_image::store::Store;
use banger_image::{Kind, Progress};
use banger_wire::helper::{BundleKind, HelperResponse};
use nix::fcntl::{openat2, AtFlags, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::Mode;
use nix::unistd::{fchown, fchownat, Gid, Uid};
use tracing::info;

use super::OpError;

/// Prefix of the transient units builds run in (system mode).
pub const UNIT_PREFIX: &str = "banger-build-";

/// Root-owned scratch space of builds in transient units
/// (`CacheDirectory=banger-build`): the owner cannot swap paths under it.
pub const SYSTEM_WORK_DIR: &str = "/var/cache/banger-build";

/// Properties of the transient unit a system-mode build runs in. The
/// helper's own sandbox (nix/units.json) cannot run mmdebstrap: it lacks
/// `CAP_SYS_CHROOT`, `CAP_MKNOD`, `CAP_DAC_OVERRIDE`, `CAP_FOWNER`,
/// `CAP_SETUID`/`CAP_SETGID`, forbids setuid files (dpkg installs some) and
/// W^X memory (npm's node). Builds get this looser, short-lived sandbox
/// instead of widening the long-running helper. docs/security.md.
pub const BUILD_UNIT_PROPERTIES: &[&str] = &[
    "CacheDirectory=banger-build",
    "CacheDirectoryMode=0700",
    "ProtectHome=yes",
    "ProtectSystem=full",
    "PrivateTmp=yes",
    "ProtectKernelModules=yes",
    "ProtectKernelLogs=yes",
    "ProtectClock=yes",
    "ProtectHostname=yes",
    "RestrictRealtime=yes",
    "LockPersonality=yes",
    "CapabilityBoundingSet=~CAP_SYS_MODULE CAP_SYS_RAWIO CAP_SYS_BOOT CAP_SYS_TIME CAP_SYS_PTRACE CAP_MAC_ADMIN CAP_MAC_OVERRIDE CAP_BPF CAP_PERFMON",
    "UMask=0022",
    "Nice=10",
    "IOSchedulingClass=idle",
];

/// Where builds run and install.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildPaths {
    /// The owner's state dir; the store lives under it.
    pub state_dir: PathBuf,
    /// The owner's cache dir; finished bundles are cached under it.
    pub cache_dir: PathBuf,
    /// Scratch space (`None`: `<cache_dir>/build`).
    pub work_dir: Option<PathBuf>,
    /// How the build process runs.
    pub runner: BuildRunner,
}

/// How a build runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BuildRunner {
    /// In the helper process (child mode, tests).
    InProcess,
    /// In a transient systemd unit running `bangerd-root build-bundle` with
    /// this install metadata file (system mode).
    TransientUnit { install_file: PathBuf },
}

/// The wire kind as banger-image's kind.
pub fn image_kind(kind: BundleKind) -> Kind {
    match kind {
        BundleKind::Image => Kind::Image,
        BundleKind::Kernel => Kind::Kernel,
    }
}

/// Build and install `kind name` as [`BuildPaths::runner`] says.
pub async fn build_bundle(
    kind: BundleKind,
    name: &str,
    paths: &BuildPaths,
    uid: u32,
    gid: u32,
) -> Result<HelperResponse, OpError> {
    match &paths.runner {
        BuildRunner::InProcess => {
            let (name, paths) = (name.to_owned(), paths.clone());
            tokio::task::spawn_blocking(move || build_here(kind, &name, &paths, uid, gid))
                .await
                .map_err(|e| OpError::Build {
                    kind: kind.as_str(),
                    name: "?".into(),
                    message: format!("build task failed: {e}"),
                })?
        }
        BuildRunner::TransientUnit { install_file } => {
            in_transient_unit(kind, name, install_file).await
        }
    }
}

/// Build, install and hand the result to `uid:gid`, in this process
/// (blocking; minutes).
pub fn build_here(
    kind: BundleKind,
    name: &str,
    paths: &BuildPaths,
    uid: u32,
    gid: u32,
) -> Result<HelperResponse, OpError> {
    let build_err = |message: String| OpError::Build {
        kind: kind.as_str(),
        name: name.to_owned(),
        message,
    };
    let mut opts = BuildOptions::new(&paths.cache_dir);
    opts.work_dir = paths.work_dir.clone();
    opts.owner = Some((uid, gid));
    let store = Store::new(&paths.state_dir);
    let log = |p: Progress| {
        // mmdebstrap's per-package info lines would flood the journal.
        if !p.message.contains(": I: ") {
            info!(phase = p.phase.as_str(), "{kind:?} {name}: {}", p.message);
        }
    };
    let (built, installed) = build_and_install(image_kind(kind), name, &opts, &store, &log)
        .map_err(|e| build_err(e.to_string()))?;
    let kind_dir = store.kind_dir(image_kind(kind));
    let rel = installed
        .dir
        .strip_prefix(&paths.state_dir)
        .map_err(|_| {
            build_err(format!(
                "installed outside the store: {}",
                installed.dir.display()
            ))
        })?
        .to_owned();
    // The store's own directories may have been created just now, by root.
    for dir in [
        kind_dir
            .strip_prefix(&paths.state_dir)
            .unwrap_or(Path::new("")),
        Path::new("locks"),
    ] {
        give_tree(&paths.state_dir, dir, uid, gid, false)?;
    }
    let lock = PathBuf::from("locks").join(format!("{}-{name}.lock", kind.as_str()));
    give_tree(&paths.state_dir, &lock, uid, gid, false)?;
    give_tree(&paths.state_dir, &rel, uid, gid, true)?;
    Ok(HelperResponse::Built {
        path: installed.dir.display().to_string(),
        version: installed.manifest.version.clone(),
        recipe_hash: built.recipe_hash,
        bundle_sha256: built.packed.sha256,
        cached: built.cached,
    })
}

fn file_err(what: &'static str, path: &Path) -> impl FnOnce(nix::Error) -> OpError {
    let path = path.to_owned();
    move |e| OpError::File {
        what,
        path,
        source: e.into(),
    }
}

/// `fchown` `rel` (beneath `base`, no symlink anywhere on the way) to
/// `uid:gid`, and with `recursive` everything under it. A missing `rel` is
/// not an error (nothing to hand over).
fn give_tree(base: &Path, rel: &Path, uid: u32, gid: u32, recursive: bool) -> Result<(), OpError> {
    let full = base.join(rel);
    let base_fd = nix::fcntl::open(
        base,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(file_err("open the state directory", base))?;
    // SAFETY: `open` returned a fresh descriptor that nothing else owns.
    let base_fd = unsafe { OwnedFd::from_raw_fd(base_fd) };
    let target = if rel.as_os_str().is_empty() {
        Path::new(".")
    } else {
        rel
    };
    let how = OpenHow::new()
        .flags(OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK)
        .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_SYMLINKS);
    let fd = match openat2(base_fd.as_raw_fd(), target, how) {
        Ok(fd) => fd,
        Err(nix::errno::Errno::ENOENT) => return Ok(()),
        Err(e) => return Err(file_err("open", &full)(e)),
    };
    // SAFETY: `openat2` returned a fresh descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    give_fd(fd, &full, uid, gid, recursive)
}

fn give_fd(fd: OwnedFd, path: &Path, uid: u32, gid: u32, recursive: bool) -> Result<(), OpError> {
    let (u, g) = (Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid)));
    fchown(fd.as_raw_fd(), u, g).map_err(file_err("chown", path))?;
    let is_dir = nix::sys::stat::fstat(fd.as_raw_fd())
        .map_err(file_err("stat", path))?
        .st_mode
        & libc::S_IFMT
        == libc::S_IFDIR;
    if !recursive || !is_dir {
        return Ok(());
    }
    let dup =
        nix::unistd::dup(fd.as_raw_fd()).map_err(file_err("duplicate the descriptor of", path))?;
    let mut dir = nix::dir::Dir::from_fd(dup).map_err(file_err("list", path))?;
    let dir_fd = dir.as_raw_fd();
    let entries: Vec<(std::ffi::CString, Option<nix::dir::Type>)> = dir
        .iter()
        .filter_map(Result::ok)
        .filter(|e| ![&b"."[..], &b".."[..]].contains(&e.file_name().to_bytes()))
        .map(|e| (e.file_name().to_owned(), e.file_type()))
        .collect();
    for (name, ty) in entries {
        let child = path.join(std::ffi::OsStr::from_bytes(name.to_bytes()));
        if ty == Some(nix::dir::Type::Directory) {
            let sub = nix::fcntl::openat(
                Some(dir_fd),
                name.as_c_str(),
                OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                Mode::empty(),
            )
            .map_err(file_err("open", &child))?;
            // SAFETY: `openat` returned a fresh descriptor that nothing else owns.
            give_fd(unsafe { OwnedFd::from_raw_fd(sub) }, &child, uid, gid, true)?;
        } else {
            fchownat(
                Some(dir_fd),
                name.as_c_str(),
                u,
                g,
                AtFlags::AT_SYMLINK_NOFOLLOW,
            )
            .map_err(file_err("chown", &child))?;
        }
    }
    Ok(())
}

/// Run `bangerd-root build-bundle` in a transient unit with
/// [`BUILD_UNIT_PROPERTIES`] and read its one-line JSON answer.
async fn in_transient_unit(
    kind: BundleKind,
    name: &str,
    install_file: &Path,
) -> Result<HelperResponse, OpError> {
    let build_err = |message: String| OpError::Build {
        kind: kind.as_str(),
        name: name.to_owned(),
        message,
    };
    let exe = std::env::current_exe()
        .map_err(|e| build_err(format!("cannot find the helper binary: {e}")))?;
    let mut cmd = tokio::process::Command::new("systemd-run");
    cmd.arg(format!("--unit={}", unit_name(kind, name)))
        .args([
            "--quiet",
            "--wait",
            "--collect",
            "--pipe",
            "--service-type=exec",
        ])
        .arg(format!(
            "--description=banger: build {} {name}",
            kind.as_str()
        ));
    for p in BUILD_UNIT_PROPERTIES {
        cmd.arg(format!("--property={p}"));
    }
    cmd.arg("--")
        .arg(exe)
        .arg("build-bundle")
        .arg("--install-file")
        .arg(install_file)
        .args(["--kind", kind.as_str(), "--name", name])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let out = cmd
        .output()
        .await
        .map_err(|e| build_err(format!("cannot run systemd-run: {e}")))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout.lines().rev().find(|l| !l.trim().is_empty());
    match last.map(serde_json::from_str::<banger_wire::helper::HelperReply>) {
        Some(Ok(Ok(resp))) if out.status.success() => Ok(resp),
        Some(Ok(Err(e))) => Err(build_err(e.message)),
        _ => {
            let stderr = String::from_utf8_lossy(&out.stderr);
            let tail: Vec<&str> = stderr.lines().rev().take(20).collect();
            Err(build_err(format!(
                "build unit failed ({}): {}",
                out.status,
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            )))
        }
    }
}

/// Name of the transient unit building `kind name`.
pub fn unit_name(kind: BundleKind, name: &str) -> String {
    format!("{UNIT_PREFIX}{}-{name}", kind.as_str())
}
