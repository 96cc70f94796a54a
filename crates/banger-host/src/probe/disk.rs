//! Free space and the root-disk clone strategy, probed in the state dir.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use nix::unistd::{lseek, Whence};
use serde::{Deserialize, Serialize};

use super::ProbeError;

pub use banger_wire::vmm::CloneStrategy;

/// Result of one real `FICLONE` attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReflinkOutcome {
    /// The clone succeeded and reads back identical.
    Cloned,
    /// The filesystem refused (`EOPNOTSUPP`, `EXDEV`, `EINVAL`, ...).
    Unsupported(nix::errno::Errno),
}

/// Device-mapper availability.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "kebab-case")]
pub enum DmState {
    /// No control node: device-mapper is not in this kernel or not exposed here.
    NoControl,
    /// The control node exists but opening it or talking to it failed.
    NotAccessible { error: String },
    /// The driver answers but has no snapshot target and no module to load.
    NoSnapshotTarget { driver_version: String },
    /// Snapshots can be made.
    Available { driver_version: String },
}

/// What `SEEK_DATA`/`SEEK_HOLE` did on a test file with a hole.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeekProbe {
    /// The hole was reported; false means the filesystem treats the whole
    /// file as data (sparse copy then copies every byte, still correctly).
    pub holes_detected: bool,
}

/// The strategy this host gets and the evidence for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CloneProbe {
    pub strategy: CloneStrategy,
    /// The directory probed (the state dir).
    pub dir: PathBuf,
    /// Why reflink was not chosen (`None` when it was).
    pub reflink_error: Option<String>,
    /// Device-mapper state (`None` when reflink won and it was not probed).
    pub device_mapper: Option<DmState>,
    /// Seek probe result (`None` unless sparse copy was chosen).
    pub seek: Option<SeekProbe>,
}

/// Free space where `dir` is (or will be created).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FreeSpace {
    /// Bytes available to an unprivileged writer.
    pub available: u64,
    /// The existing directory actually measured (`dir` or its nearest ancestor).
    pub measured_at: PathBuf,
}

/// Free space on the filesystem holding `dir`; when `dir` does not exist yet,
/// its nearest existing ancestor is measured.
pub fn free_space(dir: &Path) -> Result<FreeSpace, ProbeError> {
    let at = dir
        .ancestors()
        .find(|p| p.exists())
        .unwrap_or(Path::new("/"));
    let st = nix::sys::statvfs::statvfs(at).map_err(|e| ProbeError::sys("statvfs", at, e))?;
    let available = st.blocks_available().saturating_mul(st.fragment_size());
    Ok(FreeSpace {
        available,
        measured_at: at.to_owned(),
    })
}

/// Name prefix of the probes' scratch directories: one left by a killed
/// process can be recognised and removed.
pub const SCRATCH_PREFIX: &str = ".banger-probe-";

/// Private scratch dir inside `dir`, removed on drop.
fn scratch(dir: &Path) -> Result<tempfile::TempDir, ProbeError> {
    tempfile::Builder::new()
        .prefix(SCRATCH_PREFIX)
        .tempdir_in(dir)
        .map_err(|e| ProbeError::io("create probe directory in", dir, e))
}

fn write_file(path: &Path, data: &[u8]) -> Result<File, ProbeError> {
    let mut f = File::options()
        .read(true)
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|e| ProbeError::io("create", path, e))?;
    f.write_all(data)
        .map_err(|e| ProbeError::io("write", path, e))?;
    f.sync_all().map_err(|e| ProbeError::io("fsync", path, e))?;
    Ok(f)
}

/// Deterministic non-zero filler, so a clone reading back zeros is caught.
fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8 + 1).collect()
}

/// Try a real `FICLONE` of a 64 KiB file inside `dir` (files removed after).
pub fn try_reflink(dir: &Path) -> Result<ReflinkOutcome, ProbeError> {
    let tmp = scratch(dir)?;
    let src_path = tmp.path().join("source");
    let dst_path = tmp.path().join("clone");
    let data = pattern(64 * 1024);
    let src = write_file(&src_path, &data)?;
    let mut dst = write_file(&dst_path, &[])?;
    // SAFETY: FICLONE takes the source fd as its integer argument; both fds
    // are open files owned by this function for the whole call.
    let rc = unsafe { libc::ioctl(dst.as_raw_fd(), libc::FICLONE, src.as_raw_fd()) };
    if rc != 0 {
        return Ok(ReflinkOutcome::Unsupported(nix::errno::Errno::last()));
    }
    let mut back = Vec::with_capacity(data.len());
    dst.read_to_end(&mut back)
        .map_err(|e| ProbeError::io("read", &dst_path, e))?;
    if back != data {
        return Err(ProbeError::io(
            "verify reflink clone",
            &dst_path,
            std::io::Error::other("clone content differs from its source"),
        ));
    }
    tmp.close()
        .map_err(|e| ProbeError::io("remove probe directory in", dir, e))?;
    Ok(ReflinkOutcome::Cloned)
}

/// Check that `SEEK_HOLE`/`SEEK_DATA` work on a file with a 4 MiB hole in `dir`.
pub fn probe_seek_hole(dir: &Path) -> Result<SeekProbe, ProbeError> {
    const HOLE_END: u64 = 4 << 20;
    let tmp = scratch(dir)?;
    let path = tmp.path().join("sparse");
    let block = pattern(4096);
    let f = write_file(&path, &block)?;
    f.write_all_at(&block, HOLE_END)
        .map_err(|e| ProbeError::io("write", &path, e))?;
    f.sync_all()
        .map_err(|e| ProbeError::io("fsync", &path, e))?;
    let len = (HOLE_END + block.len() as u64) as i64;
    let hole =
        lseek(&f, 0, Whence::SeekHole).map_err(|e| ProbeError::sys("SEEK_HOLE", &path, e))?;
    // A filesystem without hole support reports only the implicit hole at EOF.
    let holes_detected = hole < len;
    if holes_detected {
        let data = lseek(&f, hole, Whence::SeekData)
            .map_err(|e| ProbeError::sys("SEEK_DATA", &path, e))?;
        if hole < block.len() as i64 || data <= hole || data > HOLE_END as i64 {
            return Err(ProbeError::io(
                "check SEEK_HOLE/SEEK_DATA on",
                &path,
                std::io::Error::other(format!(
                    "inconsistent answers: hole at {hole}, data at {data}, expected data at {HOLE_END}"
                )),
            ));
        }
    }
    tmp.close()
        .map_err(|e| ProbeError::io("remove probe directory in", dir, e))?;
    Ok(SeekProbe { holes_detected })
}

/// `struct dm_ioctl` from `<linux/dm-ioctl.h>`.
#[repr(C)]
struct DmIoctl {
    version: [u32; 3],
    data_size: u32,
    data_start: u32,
    target_count: u32,
    open_count: i32,
    flags: u32,
    event_nr: u32,
    padding: u32,
    dev: u64,
    name: [u8; 128],
    uuid: [u8; 129],
    data: [u8; 7],
}

const _: () = assert!(std::mem::size_of::<DmIoctl>() == 312);

/// A `DM_LIST_VERSIONS` request with room for the answer.
#[repr(C)]
struct DmListVersions {
    header: DmIoctl,
    buf: [u8; 16 * 1024],
}

const DM_LIST_VERSIONS_CMD: u8 = 13;
const DM_BUFFER_FULL_FLAG: u32 = 1 << 8;

/// Target names in a `DM_LIST_VERSIONS` answer: a chain of
/// `struct dm_target_versions { u32 next; u32 version[3]; char name[]; }`
/// where `next` is the offset of the following entry (0 ends the chain).
pub fn parse_dm_target_names(data: &[u8]) -> Vec<String> {
    let mut names = Vec::new();
    let mut at = 0usize;
    while let Some(entry) = data.get(at..).filter(|e| e.len() > 16) {
        let next = u32::from_ne_bytes([entry[0], entry[1], entry[2], entry[3]]) as usize;
        let name = &entry[16..];
        let end = name.iter().position(|&b| b == 0).unwrap_or(name.len());
        names.push(String::from_utf8_lossy(&name[..end]).into_owned());
        if next == 0 {
            break;
        }
        at += next;
    }
    names
}

/// Whether the `dm-snapshot` module is loaded or can be loaded on demand
/// (the kernel requests `dm-snapshot` when a snapshot table is created).
fn snapshot_module_available(sys_root: &Path, modules_dir: &Path) -> bool {
    if sys_root.join("module/dm_snapshot").exists() {
        return true;
    }
    ["modules.builtin", "modules.dep"].iter().any(|f| {
        std::fs::read_to_string(modules_dir.join(f)).is_ok_and(|text| {
            text.lines().any(|l| {
                let path = l.split(':').next().unwrap_or("");
                path.rsplit('/')
                    .next()
                    .is_some_and(|base| base.starts_with("dm-snapshot.ko"))
            })
        })
    })
}

/// Open the device-mapper control node and ask which targets it has; the
/// snapshot target counts as available when listed or loadable as a module.
pub fn probe_device_mapper(control: &Path, sys_root: &Path, modules_dir: &Path) -> DmState {
    let file = match File::options().read(true).write(true).open(control) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return DmState::NoControl,
        Err(e) => {
            return DmState::NotAccessible {
                error: e.to_string(),
            }
        }
        Ok(f) => f,
    };
    let mut req = Box::new(DmListVersions {
        header: DmIoctl {
            // Interface 4.0.0: every kernel with dm-ioctl v4 accepts it.
            version: [4, 0, 0],
            data_size: std::mem::size_of::<DmListVersions>() as u32,
            data_start: std::mem::size_of::<DmIoctl>() as u32,
            target_count: 0,
            open_count: 0,
            flags: 0,
            event_nr: 0,
            padding: 0,
            dev: 0,
            name: [0; 128],
            uuid: [0; 129],
            data: [0; 7],
        },
        buf: [0; 16 * 1024],
    });
    let request =
        nix::request_code_readwrite!(0xfd, DM_LIST_VERSIONS_CMD, std::mem::size_of::<DmIoctl>());
    // SAFETY: DM_LIST_VERSIONS reads a dm_ioctl header and writes at most
    // `data_size` bytes from its start; `req` is a live, exclusively borrowed
    // buffer of exactly that size for the duration of the call.
    let rc = unsafe {
        libc::ioctl(
            file.as_raw_fd(),
            request as _,
            &mut *req as *mut DmListVersions,
        )
    };
    if rc != 0 {
        let errno = nix::errno::Errno::last();
        return DmState::NotAccessible {
            error: format!("DM_LIST_VERSIONS failed: {errno}"),
        };
    }
    let h = &req.header;
    let driver_version = format!("{}.{}.{}", h.version[0], h.version[1], h.version[2]);
    let start = (h.data_start as usize).saturating_sub(std::mem::size_of::<DmIoctl>());
    let end = (h.data_size as usize).saturating_sub(std::mem::size_of::<DmIoctl>());
    let listed = if h.flags & DM_BUFFER_FULL_FLAG == 0 {
        parse_dm_target_names(req.buf.get(start..end.min(req.buf.len())).unwrap_or(&[]))
    } else {
        Vec::new()
    };
    if listed.iter().any(|n| n == "snapshot") || snapshot_module_available(sys_root, modules_dir) {
        DmState::Available { driver_version }
    } else {
        DmState::NoSnapshotTarget { driver_version }
    }
}

/// Decide the clone strategy for disks kept in `dir`, trying each for real:
/// reflink, else a device-mapper snapshot, else a sparse copy (after checking
/// `SEEK_DATA`/`SEEK_HOLE` work). Probe files are removed.
pub fn probe_clone_strategy(
    dir: &Path,
    dm_control: &Path,
    sys_root: &Path,
    modules_dir: &Path,
) -> Result<CloneProbe, ProbeError> {
    let reflink_error = match try_reflink(dir)? {
        ReflinkOutcome::Cloned => {
            return Ok(CloneProbe {
                strategy: CloneStrategy::Reflink,
                dir: dir.to_owned(),
                reflink_error: None,
                device_mapper: None,
                seek: None,
            });
        }
        ReflinkOutcome::Unsupported(errno) => format!("FICLONE failed: {errno}"),
    };
    let dm = probe_device_mapper(dm_control, sys_root, modules_dir);
    if matches!(dm, DmState::Available { .. }) {
        return Ok(CloneProbe {
            strategy: CloneStrategy::DmSnapshot,
            dir: dir.to_owned(),
            reflink_error: Some(reflink_error),
            device_mapper: Some(dm),
            seek: None,
        });
    }
    let seek = probe_seek_hole(dir)?;
    Ok(CloneProbe {
        strategy: CloneStrategy::SparseCopy,
        dir: dir.to_owned(),
        reflink_error: Some(reflink_error),
        device_mapper: Some(dm),
        seek: Some(seek),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_leftovers(dir: &Path) {
        let left: Vec<_> = std::fs::read_dir(dir).unwrap().collect();
        assert!(left.is_empty(), "probe files left behind: {left:?}");
    }

    /// What coreutils thinks: `cp --reflink=always` succeeds iff FICLONE does.
    fn cp_reflink_works(dir: &Path) -> bool {
        let a = dir.join("cp-src");
        std::fs::write(&a, pattern(8192)).unwrap();
        let ok = std::process::Command::new("cp")
            .arg("--reflink=always")
            .arg(&a)
            .arg(dir.join("cp-dst"))
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap()
            .success();
        let _ = std::fs::remove_file(dir.join("cp-dst"));
        std::fs::remove_file(a).unwrap();
        ok
    }

    #[test]
    fn clone_strategy_is_probed_for_real_and_matches_cp_reflink() {
        let dir = tempfile::tempdir().unwrap();
        let probe = probe_clone_strategy(
            dir.path(),
            Path::new("/dev/mapper/control"),
            Path::new("/sys"),
            Path::new("/lib/modules/none"),
        )
        .unwrap();
        no_leftovers(dir.path());
        let reflink = cp_reflink_works(dir.path());
        assert_eq!(
            probe.strategy == CloneStrategy::Reflink,
            reflink,
            "{probe:?}"
        );
        assert_eq!(probe.reflink_error.is_none(), reflink, "{probe:?}");
        match probe.strategy {
            CloneStrategy::Reflink => assert!(probe.device_mapper.is_none()),
            CloneStrategy::DmSnapshot => {
                assert!(matches!(
                    probe.device_mapper,
                    Some(DmState::Available { .. })
                ))
            }
            CloneStrategy::SparseCopy => {
                assert!(probe.seek.is_some());
                assert!(!matches!(
                    probe.device_mapper,
                    Some(DmState::Available { .. })
                ));
            }
        }
        assert_eq!(
            try_reflink(dir.path()).unwrap() == ReflinkOutcome::Cloned,
            reflink,
            "try_reflink disagrees with cp --reflink=always"
        );
        no_leftovers(dir.path());
    }

    #[test]
    fn seek_hole_probe_runs_and_cleans_up() {
        let dir = tempfile::tempdir().unwrap();
        let seek = probe_seek_hole(dir.path()).unwrap();
        no_leftovers(dir.path());
        // The temp dir sits on ext4/xfs/btrfs/tmpfs in practice, all of which report holes.
        let fs_type = nix::sys::statfs::statfs(dir.path())
            .unwrap()
            .filesystem_type();
        if [
            nix::sys::statfs::EXT4_SUPER_MAGIC,
            nix::sys::statfs::TMPFS_MAGIC,
            nix::sys::statfs::XFS_SUPER_MAGIC,
            nix::sys::statfs::BTRFS_SUPER_MAGIC,
        ]
        .contains(&fs_type)
        {
            assert!(seek.holes_detected);
        }
    }

    #[test]
    fn probing_an_unwritable_dir_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("plain-file");
        std::fs::write(&file, b"").unwrap();
        let err = try_reflink(&file).unwrap_err().to_string();
        assert!(err.contains("plain-file"), "{err}");
    }

    #[test]
    fn device_mapper_absent_control_and_fixture_modules() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            probe_device_mapper(&dir.path().join("control"), dir.path(), dir.path()),
            DmState::NoControl
        );
        let sys = dir.path().join("sys");
        let modules = dir.path().join("modules");
        std::fs::create_dir_all(&modules).unwrap();
        assert!(!snapshot_module_available(&sys, &modules));
        std::fs::write(
            modules.join("modules.dep"),
            "kernel/drivers/md/dm-mod.ko.xz:\nkernel/drivers/md/dm-snapshot.ko.xz: kernel/drivers/md/dm-bufio.ko.xz\n",
        )
        .unwrap();
        assert!(snapshot_module_available(&sys, &modules));
        std::fs::remove_file(modules.join("modules.dep")).unwrap();
        std::fs::create_dir_all(sys.join("module/dm_snapshot")).unwrap();
        assert!(snapshot_module_available(&sys, &modules));
    }

    #[test]
    fn device_mapper_on_a_non_dm_node_is_not_accessible() {
        let dir = tempfile::tempdir().unwrap();
        let fake = dir.path().join("control");
        std::fs::write(&fake, b"").unwrap();
        match probe_device_mapper(&fake, dir.path(), dir.path()) {
            DmState::NotAccessible { error } => assert!(error.contains("DM_LIST_VERSIONS")),
            other => panic!("expected NotAccessible, got {other:?}"),
        }
    }

    fn target_entry(name: &str, last: bool) -> Vec<u8> {
        // Entries are 8-byte aligned like the kernel's.
        let len = (16 + name.len() + 1).next_multiple_of(8);
        let mut e = vec![0u8; len];
        let next = if last { 0 } else { len as u32 };
        e[..4].copy_from_slice(&next.to_ne_bytes());
        e[4..8].copy_from_slice(&1u32.to_ne_bytes());
        e[16..16 + name.len()].copy_from_slice(name.as_bytes());
        e
    }

    #[test]
    fn dm_target_list_parses() {
        let mut buf = target_entry("snapshot-merge", false);
        buf.extend(target_entry("snapshot", false));
        buf.extend(target_entry("linear", true));
        buf.extend([0xff; 32]);
        assert_eq!(
            parse_dm_target_names(&buf),
            ["snapshot-merge", "snapshot", "linear"]
        );
        assert!(parse_dm_target_names(&[]).is_empty());
        // A `next` pointing past the buffer stops instead of panicking.
        let mut bad = target_entry("striped", false);
        bad[..4].copy_from_slice(&4096u32.to_ne_bytes());
        assert_eq!(parse_dm_target_names(&bad), ["striped"]);
    }

    #[test]
    fn free_space_measures_the_nearest_existing_ancestor() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("a/b/c");
        let fs = free_space(&missing).unwrap();
        assert_eq!(fs.measured_at, dir.path());
        let st = nix::sys::statvfs::statvfs(dir.path()).unwrap();
        assert!(fs.available > 0);
        assert!(fs.available <= st.blocks() * st.fragment_size());
    }
}
