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

/// Properties of the transient unit a system-mode build runs in (besides
/// `ReadWritePaths=` of the install's state and cache dirs). The helper's own
/// sandbox (nix/units.json) cannot run mmdebstrap: it lacks
/// `CAP_SYS_CHROOT`, `CAP_MKNOD`, `CAP_DAC_OVERRIDE`, `CAP_FOWNER`,
/// `CAP_SETUID`/`CAP_SETGID`, forbids setuid files (dpkg installs some), W^X
/// memory (npm's node) and device nodes beyond its allow-list. Builds get
/// this looser, short-lived sandbox instead of widening the long-running
/// helper; docs/security.md has the trade-off and both scores.
pub const BUILD_UNIT_PROPERTIES: &[&str] = &[
    "CacheDirectory=banger-build",
    "CacheDirectoryMode=0700",
    // npm keeps its cache in $HOME; /root is hidden.
    "Environment=HOME=/var/cache/banger-build",
    "ProtectSystem=strict",
    "ProtectHome=yes",
    "PrivateTmp=yes",
    "PrivateIPC=yes",
    "PrivateMounts=yes",
    "ProtectKernelModules=yes",
    "ProtectKernelLogs=yes",
    "ProtectControlGroups=yes",
    "ProtectClock=yes",
    "ProtectHostname=yes",
    // mmdebstrap's root mode unshares these four for its chroot helpers.
    "RestrictNamespaces=mnt pid uts ipc",
    "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK",
    "RestrictRealtime=yes",
    "LockPersonality=yes",
    "SystemCallArchitectures=native",
    "CapabilityBoundingSet=~CAP_SYS_MODULE CAP_SYS_RAWIO CAP_SYS_BOOT CAP_SYS_TIME CAP_SYS_PTRACE \
     CAP_MAC_ADMIN CAP_MAC_OVERRIDE CAP_BPF CAP_PERFMON CAP_NET_ADMIN CAP_SYS_PACCT \
     CAP_LINUX_IMMUTABLE CAP_IPC_LOCK CAP_SYS_TTY_CONFIG CAP_BLOCK_SUSPEND CAP_LEASE \
     CAP_AUDIT_CONTROL CAP_AUDIT_READ CAP_AUDIT_WRITE CAP_NET_BIND_SERVICE \
     CAP_NET_BROADCAST CAP_NET_RAW CAP_WAKE_ALARM CAP_SYSLOG",
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
            let (owned, paths) = (name.to_owned(), paths.clone());
            tokio::task::spawn_blocking(move || build_here(kind, &owned, &paths, uid, gid))
                .await
                .map_err(|e| OpError::Build {
                    kind: kind.as_str(),
                    name: name.to_owned(),
                    message: format!("build task failed: {e}"),
                })?
        }
        BuildRunner::TransientUnit { install_file } => {
            in_transient_unit(kind, name, paths, install_file).await
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

/// The unit's name, type, description and properties as `systemd-run`
/// options.
pub fn unit_options(kind: BundleKind, name: &str, paths: &BuildPaths) -> Vec<String> {
    let mut out = vec![
        format!("--unit={}", unit_name(kind, name)),
        "--service-type=exec".to_owned(),
        format!("--description=banger: build {} {name}", kind.as_str()),
    ];
    out.extend(
        BUILD_UNIT_PROPERTIES
            .iter()
            .map(|p| format!("--property={p}")),
    );
    out.push(format!(
        "--property=ReadWritePaths=\"{}\" \"{}\"",
        paths.state_dir.display(),
        paths.cache_dir.display()
    ));
    out
}

/// Run `bangerd-root build-bundle` in a transient unit with
/// [`BUILD_UNIT_PROPERTIES`] and read its one-line JSON answer.
async fn in_transient_unit(
    kind: BundleKind,
    name: &str,
    paths: &BuildPaths,
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
    cmd.args(["--quiet", "--wait", "--collect", "--pipe"])
        .args(unit_options(kind, name, paths))
        .arg("--")
        .arg(exe)
        .args(["build-bundle", "--install-file"])
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
        Some(Ok(Err(e))) => Err(OpError::BuildUnit(e.message)),
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The transient unit as a unit file, for `systemd-analyze`.
    fn unit_file(options: &[String]) -> String {
        let mut service = String::from("[Service]\nExecStart=/usr/local/bin/bangerd-root build-bundle --kind kernel --name generic-6.12\n");
        let mut unit = String::from("[Unit]\n");
        for o in options {
            if let Some(p) = o.strip_prefix("--property=") {
                service.push_str(&format!("{p}\n"));
            } else if let Some(t) = o.strip_prefix("--service-type=") {
                service.push_str(&format!("Type={t}\n"));
            } else if let Some(d) = o.strip_prefix("--description=") {
                unit.push_str(&format!("Description={d}\n"));
            }
        }
        format!("{unit}{service}")
    }

    /// The exposure score docs/security.md gives for the build unit is the
    /// one `systemd-analyze security --offline=yes` computes for it.
    #[test]
    fn build_unit_score_matches_the_docs() {
        let paths = BuildPaths {
            state_dir: "/var/lib/banger".into(),
            cache_dir: "/var/cache/banger".into(),
            work_dir: Some(SYSTEM_WORK_DIR.into()),
            runner: BuildRunner::InProcess,
        };
        let options = unit_options(BundleKind::Kernel, "generic-6.12", &paths);
        assert_eq!(options[0], "--unit=banger-build-kernel-generic-6.12");
        assert!(options
            .iter()
            .any(|o| o == r#"--property=ReadWritePaths="/var/lib/banger" "/var/cache/banger""#));
        // Scores differ between systemd versions; the docs record Debian 12's.
        let version = std::process::Command::new("systemd-analyze")
            .arg("--version")
            .output();
        if !version.is_ok_and(|v| String::from_utf8_lossy(&v.stdout).starts_with("systemd 252 ")) {
            eprintln!("skipping the score check: needs systemd-analyze from systemd 252");
            return;
        }
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("etc/systemd/system");
        std::fs::create_dir_all(&dir).unwrap();
        let unit = "banger-build-kernel-generic-6.12.service";
        std::fs::write(dir.join(unit), unit_file(&options)).unwrap();
        let out = std::process::Command::new("systemd-analyze")
            .args(["security", "--offline=yes", "--no-pager"])
            .arg(format!("--root={}", root.path().display()))
            .arg(unit)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let score = text
            .lines()
            .find_map(|l| l.split("Overall exposure level for ").nth(1))
            .and_then(|r| r.split(": ").nth(1))
            .and_then(|r| r.split_whitespace().next())
            .unwrap_or_else(|| {
                panic!(
                    "no score in:\n{text}\n{}",
                    String::from_utf8_lossy(&out.stderr)
                )
            });
        let docs = include_str!("../../../../docs/security.md");
        let row = format!("| `banger-build-*.service` (transient, per build) | {score} ");
        assert!(
            docs.contains(&row),
            "docs/security.md lacks the row {row:?}: the build unit's score changed"
        );
    }
}
