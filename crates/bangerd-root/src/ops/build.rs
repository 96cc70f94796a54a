//! Building an embedded recipe as root and installing the bundle into the
//! owner's store (see [`banger_wire::helper::HelperRequest::BuildBundle`]).
//!
//! The helper does not build: it starts the `bangerd-build` executable (the
//! `bangerd-build` crate, which holds the image builder and the hand-over to
//! the owner) as its child, or in a transient systemd unit in system mode,
//! and relays its one-line typed answer. The builder's code and dependencies
//! (banger-image, mmdebstrap's driver, zstd, tar) stay out of the
//! long-running helper (docs/ARCHITECTURE.md, "Dependency closures").

use std::path::{Path, PathBuf};
use std::process::Stdio;

use banger_wire::helper::{BundleKind, HelperResponse};

use super::OpError;

/// File name of the builder executable, installed beside `bangerd-root`.
pub const BUILDER_NAME: &str = "bangerd-build";

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

/// How a build runs: always in a `bangerd-build` process of its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BuildRunner {
    /// `builder` as a child of the helper, told the paths and the owner on
    /// its command line (child mode, tests).
    Child { builder: PathBuf },
    /// `builder` in a transient systemd unit with
    /// [`BUILD_UNIT_PROPERTIES`], reading this install metadata file
    /// (system mode).
    TransientUnit {
        builder: PathBuf,
        install_file: PathBuf,
    },
}

/// The builder installed beside the running helper (`bin/bangerd-build`
/// next to `bin/bangerd-root`): never looked up in `PATH`, which root's
/// callers may not control.
pub fn default_builder() -> std::io::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe.parent().ok_or_else(|| {
        std::io::Error::other(format!("{} has no parent directory", exe.display()))
    })?;
    Ok(dir.join(BUILDER_NAME))
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
        BuildRunner::Child { builder } => {
            let mut cmd = tokio::process::Command::new(builder);
            cmd.args(["--kind", kind.as_str(), "--name", name])
                .arg("--state-dir")
                .arg(&paths.state_dir)
                .arg("--cache-dir")
                .arg(&paths.cache_dir)
                .arg("--work-dir")
                .arg(&paths.work_dir)
                .args([
                    "--owner-uid",
                    &uid.to_string(),
                    "--owner-gid",
                    &gid.to_string(),
                ]);
            run_builder(kind, name, cmd, builder).await
        }
        BuildRunner::TransientUnit {
            builder,
            install_file,
        } => in_transient_unit(kind, name, paths, builder, install_file).await,
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

/// Run `bangerd-build` in a transient unit with [`BUILD_UNIT_PROPERTIES`]
/// and read its one-line JSON answer.
async fn in_transient_unit(
    kind: BundleKind,
    name: &str,
    paths: &BuildPaths,
    builder: &Path,
    install_file: &Path,
) -> Result<HelperResponse, OpError> {
    let mut cmd = tokio::process::Command::new("systemd-run");
    cmd.args(["--quiet", "--wait", "--collect", "--pipe"])
        .args(unit_options(kind, name, paths))
        .arg("--")
        .arg(builder)
        .arg("--install-file")
        .arg(install_file)
        .args(["--kind", kind.as_str(), "--name", name]);
    run_builder(kind, name, cmd, Path::new("systemd-run")).await
}

/// Run the builder (`cmd`; `program` names it in errors) and read its
/// one-line JSON answer: a typed `Built`, or the builder's own error.
async fn run_builder(
    kind: BundleKind,
    name: &str,
    mut cmd: tokio::process::Command,
    program: &Path,
) -> Result<HelperResponse, OpError> {
    let build_err = |message: String| OpError::Build {
        kind: kind.as_str(),
        name: name.to_owned(),
        message,
    };
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let out = cmd
        .output()
        .await
        .map_err(|e| build_err(format!("cannot run {}: {e}", program.display())))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout.lines().rev().find(|l| !l.trim().is_empty());
    match last.map(serde_json::from_str::<banger_wire::helper::HelperReply>) {
        Some(Ok(Ok(resp @ HelperResponse::Built { .. }))) if out.status.success() => Ok(resp),
        Some(Ok(Ok(other))) => Err(build_err(format!(
            "the builder answered {other:?} ({}), not a built bundle",
            out.status
        ))),
        Some(Ok(Err(e))) => Err(OpError::BuildUnit(e.message)),
        _ => {
            let stderr = String::from_utf8_lossy(&out.stderr);
            let tail: Vec<&str> = stderr.lines().rev().take(20).collect();
            Err(build_err(format!(
                "the builder failed ({}): {}",
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
        let mut service = String::from(
            "[Service]\nExecStart=/usr/local/bin/bangerd-build --kind kernel --name generic-6.12\n",
        );
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
            runner: BuildRunner::Child {
                builder: "/usr/local/bin/bangerd-build".into(),
            },
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
