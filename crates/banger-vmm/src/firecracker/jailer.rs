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
use crate::{JailOp, VmmError};

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
    let exec_name = firecracker
        .file_name()
        .ok_or_else(|| VmmError::JailNoFileName {
            path: firecracker.to_owned(),
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

fn jail_err(path: &Path, op: JailOp, source: std::io::Error) -> VmmError {
    VmmError::JailIo {
        op,
        path: path.to_owned(),
        source,
    }
}

fn chown(path: &Path, uid: u32, gid: u32) -> Result<(), VmmError> {
    std::os::unix::fs::chown(path, Some(uid), Some(gid))
        .map_err(|e| jail_err(path, JailOp::ChownToJailIds, e))
}

fn link_into(src: &Path, dst: &Path, uid: u32, gid: u32) -> Result<(), VmmError> {
    match std::fs::remove_file(dst) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(jail_err(dst, JailOp::RemoveStaleLink, e))
        }
        _ => {}
    }
    std::fs::hard_link(src, dst).map_err(|source| VmmError::JailLink {
        src: src.to_owned(),
        dst: dst.to_owned(),
        source,
    })?;
    chown(dst, uid, gid)
}

/// Refuse a dynamically linked Firecracker: the jailer execs it inside a
/// chroot that holds no dynamic loader, and the exec then fails with a bare
/// "No such file or directory" that names neither file.
pub fn require_static(firecracker: &Path) -> Result<(), VmmError> {
    let bytes = std::fs::read(firecracker).map_err(|e| jail_err(firecracker, JailOp::Read, e))?;
    let elf = goblin::elf::Elf::parse(&bytes).map_err(|source| VmmError::JailNotElf {
        path: firecracker.to_owned(),
        source,
    })?;
    match elf.interpreter {
        Some(interp) => Err(VmmError::JailDynamic {
            path: firecracker.to_owned(),
            interpreter: interp.to_owned(),
        }),
        None => Ok(()),
    }
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
    std::fs::create_dir_all(&run).map_err(|e| jail_err(&run, JailOp::Create, e))?;
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

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::*;
    use crate::spec::{AgentSpec, DriveSpec};

    fn config(base: &Path) -> JailerConfig {
        JailerConfig {
            binary: "/usr/bin/jailer".into(),
            uid: 4242,
            gid: 4343,
            chroot_base_dir: base.to_owned(),
            netns: Some("/var/run/netns/banger".into()),
        }
    }

    fn spec(dir: &Path) -> VmSpec {
        for f in ["vmlinux", "initrd", "root.ext4"] {
            std::fs::write(dir.join(f), f).unwrap();
        }
        std::fs::create_dir_all(dir.join("run")).unwrap();
        VmSpec {
            id: "vm-9".into(),
            name: "jailed".into(),
            vcpu: 1,
            memory_mib: 256,
            kernel: dir.join("vmlinux"),
            initrd: Some(dir.join("initrd")),
            cmdline: "console=ttyS0".into(),
            drives: vec![DriveSpec {
                id: "root".into(),
                path: dir.join("root.ext4"),
                read_only: false,
                is_root: true,
            }],
            net: None,
            serial_log: dir.join("run/serial.log"),
            agent: Some(AgentSpec {
                guest_cid: 5,
                host_socket: dir.join("run/agent.sock"),
            }),
            run_dir: dir.join("run"),
        }
    }

    #[test]
    fn jailer_argv_and_in_jail_paths() {
        let cfg = config(Path::new("/srv/jailer"));
        let fc = Path::new("/opt/fc/firecracker");
        assert_eq!(
            jailer_args(&cfg, fc, "vm-9"),
            [
                "--id",
                "vm-9",
                "--exec-file",
                "/opt/fc/firecracker",
                "--uid",
                "4242",
                "--gid",
                "4343",
                "--chroot-base-dir",
                "/srv/jailer",
                "--netns",
                "/var/run/netns/banger",
                "--",
                "--api-sock",
                "/run/firecracker.socket",
            ]
        );
        let layout = jail_layout(&cfg, fc, "vm-9").unwrap();
        assert_eq!(layout.jail_dir, Path::new("/srv/jailer/firecracker/vm-9"));
        assert_eq!(layout.root, Path::new("/srv/jailer/firecracker/vm-9/root"));
        let dir = tempfile::tempdir().unwrap();
        let paths = jail_paths(&spec(dir.path()));
        assert_eq!(paths.kernel, "/vmlinux");
        assert_eq!(paths.initrd.as_deref(), Some("/initrd"));
        assert_eq!(paths.drives, ["/drive-root"]);
        assert_eq!(paths.vsock_uds.as_deref(), Some("/agent.sock"));
        assert_eq!(paths.log, "/firecracker.log");
    }

    #[test]
    fn prepare_links_files_into_the_jail_owned_by_the_jail_user() {
        // chown to the jail uid needs root.
        if !banger_test_support::Gate::new().root().check() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let spec = spec(dir.path());
        let base = dir.path().join("jail");
        let cfg = config(&base);
        let fc = Path::new("/opt/fc/firecracker");
        let prepared = prepare(&cfg, fc, &spec).unwrap();

        let root = base.join("firecracker/vm-9/root");
        assert_eq!(prepared.api_socket, root.join("run/firecracker.socket"));
        assert_eq!(prepared.vsock_host, Some(root.join("agent.sock")));
        assert_eq!(prepared.vmm_log, root.join("firecracker.log"));
        assert_eq!(prepared.jail_dir, Some(base.join("firecracker/vm-9")));
        assert_eq!(prepared.program, Path::new("/usr/bin/jailer"));
        for (inside, original) in [
            ("vmlinux", "vmlinux"),
            ("initrd", "initrd"),
            ("drive-root", "root.ext4"),
        ] {
            let linked = std::fs::metadata(root.join(inside)).unwrap();
            let orig = std::fs::metadata(dir.path().join(original)).unwrap();
            assert_eq!(linked.ino(), orig.ino(), "{inside} is a hard link");
            assert_eq!((linked.uid(), linked.gid()), (4242, 4343), "{inside} owner");
        }
        for owned in ["run", "firecracker.log"] {
            let m = std::fs::metadata(root.join(owned)).unwrap();
            assert_eq!((m.uid(), m.gid()), (4242, 4343), "{owned} owner");
        }
        // Preparing again (a restart) replaces the links.
        prepare(&cfg, fc, &spec).unwrap();
    }

    #[test]
    fn only_a_static_firecracker_can_be_jailed() {
        // Debian's ldconfig is linked statically, its sh dynamically.
        require_static(Path::new("/sbin/ldconfig")).unwrap();
        let err = require_static(Path::new("/bin/sh"))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with(
                "jail path /bin/sh: is dynamically linked (it needs /lib64/ld-linux-x86-64.so.2)"
            ),
            "{err}"
        );
        let dir = tempfile::tempdir().unwrap();
        let text = dir.path().join("firecracker");
        std::fs::write(&text, "#!/bin/sh\n").unwrap();
        let err = require_static(&text).unwrap_err().to_string();
        assert!(err.contains("not an ELF executable"), "{err}");
        let missing = dir.path().join("nope");
        let err = require_static(&missing).unwrap_err().to_string();
        assert!(err.contains("nope") && err.contains("read"), "{err}");
    }
}
