//! Finding the config drive by its filesystem label and mounting it
//! read-only.
//!
//! `/dev/disk/by-label` is made by udev, which may not have processed the
//! disk yet when the apply unit runs, so the lookup falls back to walking
//! `/sys/class/block` (filled by the kernel as soon as a disk is probed) and
//! reading each device's ext4 superblock.

use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::mount::{MntFlags, MsFlags};

use crate::ext4;

/// Errors finding or mounting a drive.
#[derive(Debug, thiserror::Error)]
pub enum DriveError {
    #[error("no filesystem labelled {label:?} found (looked in {by_label} and read the superblocks of: {scanned})")]
    NotFound {
        label: String,
        by_label: PathBuf,
        scanned: String,
    },
    #[error("cannot list block devices in {path}: {source}")]
    ListBlock {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot create mount point {path}: {source}")]
    MountPoint {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot mount {device} read-only on {target}: {source}")]
    Mount {
        device: PathBuf,
        target: PathBuf,
        source: nix::Error,
    },
    #[error("cannot unmount {target}: {source}")]
    Unmount { target: PathBuf, source: nix::Error },
}

/// Where block devices are looked up; [`Default`] is the real system.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockLookup {
    /// udev's label symlinks (`/dev/disk/by-label`).
    pub by_label_dir: PathBuf,
    /// The kernel's list of block devices (`/sys/class/block`).
    pub sys_class_block: PathBuf,
    /// Where device nodes live (`/dev`).
    pub dev_dir: PathBuf,
}

impl Default for BlockLookup {
    fn default() -> Self {
        BlockLookup {
            by_label_dir: PathBuf::from("/dev/disk/by-label"),
            sys_class_block: PathBuf::from("/sys/class/block"),
            dev_dir: PathBuf::from("/dev"),
        }
    }
}

impl BlockLookup {
    /// The device holding the ext4 filesystem labelled `label`.
    pub fn find(&self, label: &str) -> Result<PathBuf, DriveError> {
        let link = self.by_label_dir.join(label);
        if link.exists() {
            return Ok(link);
        }
        let entries =
            std::fs::read_dir(&self.sys_class_block).map_err(|source| DriveError::ListBlock {
                path: self.sys_class_block.clone(),
                source,
            })?;
        let mut names: Vec<String> = entries
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        let mut scanned = Vec::new();
        for name in names {
            let sys = self.sys_class_block.join(&name);
            if read_trimmed(&sys.join("size")).as_deref() == Some("0") {
                // Empty devices (unused loop/ram/cdrom) cannot hold a label
                // and reading some of them blocks or logs I/O errors.
                continue;
            }
            let devname = devname_from_uevent(&sys.join("uevent")).unwrap_or(name);
            let device = self.dev_dir.join(&devname);
            scanned.push(devname);
            // Unreadable devices are not ours; keep looking.
            if let Ok(Some(found)) = ext4::read_label(&device) {
                if found == label {
                    return Ok(device);
                }
            }
        }
        Err(DriveError::NotFound {
            label: label.to_owned(),
            by_label: self.by_label_dir.clone(),
            scanned: if scanned.is_empty() {
                "none".to_owned()
            } else {
                scanned.join(", ")
            },
        })
    }

    /// [`find`](Self::find), retrying until `wait` has passed: at early boot
    /// the disk may still be being probed.
    pub fn find_waiting(&self, label: &str, wait: Duration) -> Result<PathBuf, DriveError> {
        let deadline = Instant::now() + wait;
        loop {
            match self.find(label) {
                Ok(dev) => return Ok(dev),
                Err(e) if Instant::now() >= deadline => return Err(e),
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }
}

fn read_trimmed(path: &Path) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_owned())
}

/// `DEVNAME=` from a sysfs `uevent` file: the node's path below `/dev`.
fn devname_from_uevent(path: &Path) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("DEVNAME="))
        .map(str::to_owned)
}

/// A read-only mount that is undone when dropped.
#[derive(Debug)]
pub struct MountGuard {
    target: PathBuf,
    mounted: bool,
}

impl MountGuard {
    /// Where the filesystem is mounted.
    pub fn path(&self) -> &Path {
        &self.target
    }

    /// Unmount now, reporting failure (drop only tries, lazily).
    pub fn unmount(mut self) -> Result<(), DriveError> {
        self.mounted = false;
        nix::mount::umount(&self.target).map_err(|source| DriveError::Unmount {
            target: self.target.clone(),
            source,
        })
    }
}

impl Drop for MountGuard {
    fn drop(&mut self) {
        if self.mounted {
            // Detach so an open file elsewhere cannot keep the drive mounted.
            let _ = nix::mount::umount2(&self.target, MntFlags::MNT_DETACH);
        }
    }
}

/// Mount the ext4 filesystem on `device` read-only (and nosuid, nodev,
/// noexec: it only carries data) on `target`, creating `target` (0700).
pub fn mount_readonly(device: &Path, target: &Path) -> Result<MountGuard, DriveError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(target)
        .map_err(|source| DriveError::MountPoint {
            path: target.to_owned(),
            source,
        })?;
    let flags = MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    nix::mount::mount(Some(device), target, Some("ext4"), flags, None::<&str>).map_err(
        |source| DriveError::Mount {
            device: device.to_owned(),
            target: target.to_owned(),
            source,
        },
    )?;
    Ok(MountGuard {
        target: target.to_owned(),
        mounted: true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::mkfs;

    /// A fake /sys/class/block + /dev made of real ext4 images.
    fn fixture(dir: &Path) -> BlockLookup {
        let lookup = BlockLookup {
            by_label_dir: dir.join("dev/disk/by-label"),
            sys_class_block: dir.join("sys/class/block"),
            dev_dir: dir.join("dev"),
        };
        std::fs::create_dir_all(&lookup.dev_dir).unwrap();
        for (name, label, size) in [
            ("loop0", "", "0"),
            ("vda", "rootfs", "8192"),
            ("vdb", "banger-work", "8192"),
            ("vdc", "banger-cfg", "8192"),
        ] {
            let sys = lookup.sys_class_block.join(name);
            std::fs::create_dir_all(&sys).unwrap();
            std::fs::write(sys.join("size"), format!("{size}\n")).unwrap();
            std::fs::write(
                sys.join("uevent"),
                format!("MAJOR=254\nMINOR=0\nDEVNAME={name}\nDEVTYPE=disk\n"),
            )
            .unwrap();
            if size != "0" {
                mkfs(&lookup.dev_dir.join(name), label);
            }
        }
        lookup
    }

    #[test]
    fn scans_superblocks_when_udev_has_no_label_link() {
        let dir = tempfile::tempdir().unwrap();
        let lookup = fixture(dir.path());
        assert_eq!(
            lookup.find("banger-cfg").unwrap(),
            dir.path().join("dev/vdc")
        );
        assert_eq!(
            lookup.find("banger-work").unwrap(),
            dir.path().join("dev/vdb")
        );
    }

    #[test]
    fn prefers_the_udev_label_link() {
        let dir = tempfile::tempdir().unwrap();
        let lookup = fixture(dir.path());
        std::fs::create_dir_all(&lookup.by_label_dir).unwrap();
        std::os::unix::fs::symlink("../../vdc", lookup.by_label_dir.join("banger-cfg")).unwrap();
        assert_eq!(
            lookup.find("banger-cfg").unwrap(),
            lookup.by_label_dir.join("banger-cfg")
        );
    }

    #[test]
    fn missing_label_lists_what_was_scanned() {
        let dir = tempfile::tempdir().unwrap();
        let lookup = fixture(dir.path());
        let err = lookup
            .find_waiting("nope", Duration::from_millis(0))
            .unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("\"nope\""), "{msg}");
        assert!(msg.contains("vda, vdb, vdc"), "{msg}");
        assert!(!msg.contains("loop0"), "empty devices are skipped: {msg}");
    }
}
