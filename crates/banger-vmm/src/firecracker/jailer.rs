//! Running Firecracker under its jailer (chroot, uid/gid drop, optional netns).
//!
//! The jailer builds `<chroot_base_dir>/<exec-file name>/<id>/root`, leaves
//! an existing directory as it is, copies Firecracker in and execs it there
//! (same pid, since `--new-pid-ns` and `--daemonize` are not used: our own
//! session and stdio carry over). Before spawning it, banger puts the VM's
//! files into that root as hard links owned by the jail uid/gid, so the
//! chroot base must be on the same filesystem as the disks. Hard links share
//! the inode: the chown applies to the originals too, which is what lets the
//! jailed uid open them. Needs root (the jailer itself refuses otherwise).

use std::path::{Path, PathBuf};

use super::api::FirecrackerPaths;
use super::Prepared;
use crate::spec::VmSpec;
use crate::VmmError;

/// API socket path inside the jail (Firecracker's default).
pub const JAIL_API_SOCKET: &str = "/run/firecracker.socket";

/// How to run the jailer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JailerConfig {
    /// The `jailer` binary (same version as Firecracker).
    pub binary: PathBuf,
    /// uid Firecracker runs as.
    pub uid: u32,
    /// gid Firecracker runs as.
    pub gid: u32,
    /// Base of the chroot jails (jailer default `/srv/jailer`).
    pub chroot_base_dir: PathBuf,
    /// Network namespace to join (`/var/run/netns/NAME`), if any.
    pub netns: Option<PathBuf>,
}

/// The jail directory (`<base>/<exec name>/<id>`) and its `root`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JailLayout {
    /// Removed after the VM exits.
    pub jail_dir: PathBuf,
    /// The chroot.
    pub root: PathBuf,
}

/// Where the jailer will put the chroot for `id`.
pub fn jail_layout(
    cfg: &JailerConfig,
    firecracker: &Path,
    id: &str,
) -> Result<JailLayout, VmmError> {
    let exec_name = firecracker.file_name().ok_or_else(|| VmmError::Jail {
        path: firecracker.to_owned(),
        reason: "the Firecracker binary path has no file name".into(),
    })?;
    let jail_dir = cfg.chroot_base_dir.join(exec_name).join(id);
    Ok(JailLayout {
        root: jail_dir.join("root"),
        jail_dir,
    })
}

/// The jailer's argument vector; everything after `--` goes to Firecracker
/// (the jailer adds `--id` itself).
pub fn jailer_args(cfg: &JailerConfig, firecracker: &Path, id: &str) -> Vec<String> {
    let mut args = vec![
        "--id".to_owned(),
        id.to_owned(),
        "--exec-file".to_owned(),
        firecracker.to_string_lossy().into_owned(),
        "--uid".to_owned(),
        cfg.uid.to_string(),
        "--gid".to_owned(),
        cfg.gid.to_string(),
        "--chroot-base-dir".to_owned(),
        cfg.chroot_base_dir.to_string_lossy().into_owned(),
    ];
    if let Some(netns) = &cfg.netns {
        args.push("--netns".to_owned());
        args.push(netns.to_string_lossy().into_owned());
    }
    args.extend(["--", "--api-sock", JAIL_API_SOCKET].map(str::to_owned));
    args
}

/// The file names the VM's artifacts get inside the jail root, and the
/// matching in-jail paths Firecracker is told about.
pub fn jail_paths(spec: &VmSpec) -> FirecrackerPaths {
    FirecrackerPaths {
        log: "/firecracker.log".into(),
        kernel: "/vmlinux".into(),
        initrd: spec.initrd.as_ref().map(|_| "/initrd".into()),
        drives: spec
            .drives
            .iter()
            .map(|d| format!("/drive-{}", d.id))
            .collect(),
        vsock_uds: spec.agent.as_ref().map(|_| "/agent.sock".into()),
    }
}

fn jail_err(path: &Path, what: &str, e: std::io::Error) -> VmmError {
    VmmError::Jail {
        path: path.to_owned(),
        reason: format!("{what}: {e}"),
    }
}

fn chown(path: &Path, uid: u32, gid: u32) -> Result<(), VmmError> {
    std::os::unix::fs::chown(path, Some(uid), Some(gid))
        .map_err(|e| jail_err(path, "chown to the jail uid/gid", e))
}

fn link_into(src: &Path, dst: &Path, uid: u32, gid: u32) -> Result<(), VmmError> {
    match std::fs::remove_file(dst) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(jail_err(dst, "remove the stale link", e))
        }
        _ => {}
    }
    std::fs::hard_link(src, dst).map_err(|e| {
        let hint = if e.raw_os_error() == Some(libc::EXDEV) {
            " (the chroot base must be on the same filesystem as the VM's files)"
        } else {
            ""
        };
        jail_err(dst, &format!("hard-link {}{hint}", src.display()), e)
    })?;
    chown(dst, uid, gid)
}

/// Lay out the jail root for `spec` and return what to spawn.
pub(crate) fn prepare(
    cfg: &JailerConfig,
    firecracker: &Path,
    spec: &VmSpec,
) -> Result<Prepared, VmmError> {
    let layout = jail_layout(cfg, firecracker, &spec.id)?;
    let root = &layout.root;
    let run = root.join("run");
    std::fs::create_dir_all(&run).map_err(|e| jail_err(&run, "create", e))?;
    chown(&run, cfg.uid, cfg.gid)?;
    let paths = jail_paths(spec);
    let inside = |p: &str| root.join(p.trim_start_matches('/'));
    link_into(&spec.kernel, &inside(&paths.kernel), cfg.uid, cfg.gid)?;
    if let (Some(src), Some(dst)) = (&spec.initrd, &paths.initrd) {
        link_into(src, &inside(dst), cfg.uid, cfg.gid)?;
    }
    for (drive, dst) in spec.drives.iter().zip(&paths.drives) {
        link_into(&drive.path, &inside(dst), cfg.uid, cfg.gid)?;
    }
    let vmm_log = inside(&paths.log);
    crate::launch::create_truncated(&vmm_log)?;
    chown(&vmm_log, cfg.uid, cfg.gid)?;
    Ok(Prepared {
        program: cfg.binary.clone(),
        args: jailer_args(cfg, firecracker, &spec.id),
        api_socket: inside(JAIL_API_SOCKET),
        vmm_log,
        vsock_host: paths.vsock_uds.as_deref().map(inside),
        paths,
        jail_dir: Some(layout.jail_dir),
    })
}
