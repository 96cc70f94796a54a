//! Building an embedded recipe as root and installing the bundle into the
//! owner's store (see [`banger_wire::helper::HelperRequest::BuildBundle`]).
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
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Component, Path, PathBuf};
use std::process::Stdio;

use banger_image::build::{build, BuildOptions, Built};
use banger_image::store::{Installed, Origin, Store};
use banger_image::Progress;
use banger_wire::helper::{BundleKind, HelperResponse};
use nix::errno::Errno;
use nix::fcntl::{openat, openat2, renameat, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{fstatat, mkdirat, Mode, SFlag};
use nix::unistd::{unlinkat, UnlinkatFlags};
use tracing::info;

use super::OpError;

/// Prefix of the transient units builds run in (system mode).
pub const UNIT_PREFIX: &str = "banger-build-";

/// Root-owned scratch space of builds in transient units
/// (`CacheDirectory=banger-build`): the owner cannot swap paths under it.
pub const SYSTEM_WORK_DIR: &str = "/var/cache/banger-build";

/// Properties of the transient unit a system-mode build runs in (besides
/// `ReadWritePaths=` of the install's state and cache dirs, which the part
/// of the build that runs as the owner writes). The helper's own sandbox
/// (nix/units.json) cannot run mmdebstrap: it lacks the capabilities below,
/// forbids setuid files (dpkg installs some), W^X memory (npm's node) and
/// namespaces. Builds get this looser, short-lived sandbox instead of
/// widening the long-running helper; docs/security.md has the trade-off and
/// both scores.
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
    // mmdebstrap finds mknod refused and bind-mounts the few nodes a chroot
    // needs (null, zero, full, random, urandom, tty) from this private /dev.
    "PrivateDevices=yes",
    "ProtectKernelTunables=yes",
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
    // What the build uses, by whom (docs/root-helper.md):
    // CAP_SYS_ADMIN: mmdebstrap mounts proc, sysfs and the device nodes into
    //   the chroot and unshares namespaces;
    // CAP_SYS_CHROOT: mmdebstrap/dpkg maintainer scripts, `chroot depmod`;
    // CAP_CHOWN, CAP_FOWNER, CAP_FSETID, CAP_DAC_OVERRIDE,
    //   CAP_DAC_READ_SEARCH: dpkg unpacking files of every owner and mode
    //   (setuid ones included) into the tree, mke2fs reading it back;
    // CAP_SETFCAP: dpkg/postinst `setcap` (iputils-ping);
    // CAP_SETUID, CAP_SETGID: apt drops to `_apt` to download, and the
    //   helper drops to the owner to install the result;
    // CAP_KILL: apt and mmdebstrap stop their helper processes (other uids).
    "CapabilityBoundingSet=CAP_SYS_ADMIN CAP_SYS_CHROOT CAP_CHOWN CAP_FOWNER CAP_FSETID \
     CAP_DAC_OVERRIDE CAP_DAC_READ_SEARCH CAP_SETFCAP CAP_SETUID CAP_SETGID CAP_KILL",
    "UMask=0022",
    "Nice=10",
    "IOSchedulingClass=idle",
];

/// Where builds run and install.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildPaths {
    /// The owner's state dir; the store lives under it.
    pub state_dir: PathBuf,
    /// The owner's cache dir; a copy of each finished bundle is left under
    /// `<cache_dir>/{images,kernels}/` for the owner.
    pub cache_dir: PathBuf,
    /// Root's own scratch space and bundle cache: an absolute path whose
    /// every component is a root-owned directory no other user can write
    /// (see [`root_private_dir`]); created 0700 when missing.
    pub work_dir: PathBuf,
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

/// Build as root in [`BuildPaths::work_dir`], then install the bundle into
/// the owner's store as the owner (`uid`, `gid`), in this process
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
    let built = build(kind, name, &opts, &log).map_err(|e| build_err(e.to_string()))?;
    let bundle = File::open(&built.packed.path).map_err(|source| OpError::File {
        what: "open the built bundle",
        path: built.packed.path.clone(),
        source,
    })?;
    let installed = as_owner(uid, gid, || {
        hand_over(kind, name, bundle, &built, paths, &log).map_err(|e| match e {
            OpError::Build { .. } | OpError::Refused { .. } => e,
            other => build_err(other.to_string()),
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
pub fn root_private_dir(dir: &Path) -> Result<(), OpError> {
    let refused = |path: &Path, reason| OpError::Refused {
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
                return Err(OpError::File {
                    what: "create",
                    path: cur,
                    source,
                })
            }
        }
        let meta = std::fs::symlink_metadata(&cur).map_err(|source| OpError::File {
            what: "stat",
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
    f: impl FnOnce() -> Result<T, OpError> + Send,
) -> Result<T, OpError> {
    let cred_err = |what: &'static str| {
        move |source: std::io::Error| OpError::Credentials { what, uid, source }
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
                    return Err(cred_err("drop the supplementary groups")(
                        std::io::Error::last_os_error(),
                    ));
                }
                // SAFETY: as above.
                if unsafe { libc::syscall(libc::SYS_setresgid, gid, gid, gid) } != 0 {
                    return Err(cred_err("switch to the owner's group")(
                        std::io::Error::last_os_error(),
                    ));
                }
                // SAFETY: as above.
                if unsafe { libc::syscall(libc::SYS_setresuid, uid, uid, uid) } != 0 {
                    return Err(cred_err("switch to the owner's uid")(
                        std::io::Error::last_os_error(),
                    ));
                }
                // geteuid/getegid read the calling thread's credentials.
                // SAFETY: no arguments, cannot fail.
                let (euid, egid) = unsafe { (libc::geteuid(), libc::getegid()) };
                if (euid, egid) != (uid, gid) {
                    return Err(cred_err("switch to the owner")(std::io::Error::other(
                        format!("still running as {euid}:{egid}"),
                    )));
                }
                f()
            })
            .join()
            .unwrap_or_else(|_| {
                Err(cred_err("run as the owner")(std::io::Error::other(
                    "the thread panicked",
                )))
            })
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
) -> Result<Installed, OpError> {
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
    .map_err(no_symlink("open the cache directory", &paths.cache_dir))?;
    // SAFETY: `open` returned a fresh descriptor that nothing else owns.
    let cache = unsafe { OwnedFd::from_raw_fd(cache) };
    match mkdirat(
        Some(cache.as_raw_fd()),
        kind_name,
        Mode::from_bits_truncate(0o750),
    ) {
        Ok(()) | Err(Errno::EEXIST) => {}
        Err(e) => return Err(file_err("create", &dir_path)(e)),
    }
    let how = OpenHow::new()
        .flags(OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_SYMLINKS);
    let dir = openat2(cache.as_raw_fd(), kind_name, how).map_err(no_symlink("open", &dir_path))?;
    // SAFETY: `openat2` returned a fresh descriptor that nothing else owns.
    let dir = unsafe { OwnedFd::from_raw_fd(dir) };
    let dirfd = Some(dir.as_raw_fd());
    match unlinkat(dirfd, partial.as_str(), UnlinkatFlags::NoRemoveDir) {
        Ok(()) | Err(Errno::ENOENT) => {}
        Err(e) => return Err(file_err("remove", &dir_path.join(&partial))(e)),
    }
    let out = openat(
        dirfd,
        partial.as_str(),
        OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::from_bits_truncate(0o640),
    )
    .map_err(file_err("create", &dir_path.join(&partial)))?;
    // SAFETY: `openat` returned a fresh descriptor that nothing else owns.
    let mut out = File::from(unsafe { OwnedFd::from_raw_fd(out) });
    std::io::copy(&mut bundle, &mut out)
        .and_then(|_| out.sync_all())
        .map_err(|source| OpError::File {
            what: "write",
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
            return Err(OpError::Refused {
                path: dest,
                reason: "it is a symbolic link (remove it; the next build writes the bundle there)",
            });
        }
        Ok(_) | Err(Errno::ENOENT) => {}
        Err(e) => return Err(file_err("stat", &dest)(e)),
    }
    renameat(dirfd, partial.as_str(), dirfd, file_name.as_str())
        .map_err(file_err("rename into place", &dest))?;
    let store = Store::new(&paths.state_dir);
    let origin = Origin::Build {
        bundle_sha256: built.packed.sha256.clone(),
    };
    store
        .install_file(&dest, kind, name, origin, log)
        .map_err(|e| OpError::Build {
            kind: kind.as_str(),
            name: name.to_owned(),
            message: e.to_string(),
        })
}

fn file_err(what: &'static str, path: &Path) -> impl FnOnce(Errno) -> OpError {
    let path = path.to_owned();
    move |e| OpError::File {
        what,
        path,
        source: e.into(),
    }
}

/// Like [`file_err`], but a symlink where a directory belongs (`ELOOP`, or
/// `ENOTDIR` from `O_DIRECTORY|O_NOFOLLOW`) is named as such.
fn no_symlink(what: &'static str, path: &Path) -> impl FnOnce(Errno) -> OpError {
    let path = path.to_owned();
    move |e| match e {
        Errno::ELOOP | Errno::ENOTDIR => OpError::Refused {
            path,
            reason:
                "it is a symbolic link or not a directory (remove it; the next build recreates it)",
        },
        e => file_err(what, &path)(e),
    }
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
        Some(Ok(Ok(resp @ HelperResponse::Built { .. }))) if out.status.success() => Ok(resp),
        Some(Ok(Ok(other))) => Err(build_err(format!(
            "the build unit answered {other:?} ({}), not a built bundle",
            out.status
        ))),
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
            work_dir: SYSTEM_WORK_DIR.into(),
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
