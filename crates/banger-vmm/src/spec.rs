//! The backend-neutral description of one VM ([`VmSpec`]) and its validation.
//!
//! The daemon fills a [`VmSpec`] from its records (disks it cloned, the tap it
//! got from the root helper, the per-VM run directory) and hands it to
//! [`crate::Vmm::launch`]; both backends read the same fields. [`VmSpec::validate`]
//! runs before anything is spawned so a bad description fails with an error
//! naming the field, never with a half-started VMM.

use std::path::{Path, PathBuf};

pub use banger_wire::vmm::{MacAddr, MacParseError};
use serde::{Deserialize, Serialize};

/// Longest path a Unix socket can bind (`sun_path` is 108 bytes with the NUL).
pub const MAX_SOCKET_PATH: usize = 107;
/// Firecracker's vCPU limit, applied to both backends so a spec runs on either.
pub const MAX_VCPUS: u32 = 32;
/// Smallest guest memory banger accepts: below this no distro kernel boots.
pub const MIN_MEMORY_MIB: u32 = 64;
/// Largest guest memory (1 TiB); the daemon checks host RAM separately.
pub const MAX_MEMORY_MIB: u32 = 1024 * 1024;
/// x86 Linux's `COMMAND_LINE_SIZE` (2048) minus the terminating NUL.
pub const MAX_CMDLINE_BYTES: usize = 2047;
/// At most this many drives (QEMU's microvm has 24 virtio-mmio slots, shared with net and serial).
pub const MAX_DRIVES: usize = 16;
/// The smallest vsock CID a guest may use (0–2 are reserved).
pub const MIN_GUEST_CID: u32 = 3;

/// One VM as both backends understand it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmSpec {
    /// VMM instance id: 1–64 of `[A-Za-z0-9-]`, starting alphanumeric (Firecracker's `--id` rule).
    pub id: String,
    /// Human name, only for logs and the QEMU process title.
    pub name: String,
    /// Number of vCPUs, 1..=[`MAX_VCPUS`].
    pub vcpu: u32,
    /// Guest memory in MiB, [`MIN_MEMORY_MIB`]..=[`MAX_MEMORY_MIB`].
    pub memory_mib: u32,
    /// Kernel image (an ELF `vmlinux` with a PVH note serves both backends).
    pub kernel: PathBuf,
    /// Optional initrd.
    pub initrd: Option<PathBuf>,
    /// Kernel command line, passed through unchanged (Firecracker adds
    /// `root=/dev/vda` itself when a drive has `is_root`).
    pub cmdline: String,
    /// Block devices; the root drive (if any) is attached first so it is `/dev/vda`.
    pub drives: Vec<DriveSpec>,
    /// The guest's single network interface.
    pub net: Option<NetSpec>,
    /// Host file the guest's serial console (ttyS0) is appended to.
    pub serial_log: PathBuf,
    /// Host ↔ guest-agent channel.
    pub agent: Option<AgentSpec>,
    /// Per-VM directory for the control socket, pidfile, VMM log and handle file.
    pub run_dir: PathBuf,
}

/// One block device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DriveSpec {
    /// Drive id: 1–32 of `[A-Za-z0-9_-]` (used in QEMU ids and Firecracker URLs).
    pub id: String,
    /// Raw disk image on the host.
    pub path: PathBuf,
    /// Attach read-only.
    pub read_only: bool,
    /// This is the root filesystem (at most one drive).
    pub is_root: bool,
}

/// The guest network interface: an existing tap device and the guest's MAC.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetSpec {
    /// Host tap device name (made by the root helper before launch).
    pub tap: String,
    /// The guest's MAC address.
    pub mac: MacAddr,
}

/// The guest-agent channel. Firecracker uses a vsock device with `guest_cid`
/// whose host side is the Unix socket `host_socket`; QEMU (no vhost-vsock
/// here) uses a virtio-serial port named [`crate::AGENT_SERIAL_PORT`] backed by
/// a listening Unix socket at `host_socket`, and ignores `guest_cid`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentSpec {
    /// vsock context id of the guest (≥ [`MIN_GUEST_CID`], unique per host).
    pub guest_cid: u32,
    /// Host-side Unix socket the VMM creates (absolute, ≤ [`MAX_SOCKET_PATH`] bytes).
    pub host_socket: PathBuf,
}

/// Why a [`VmSpec`] was rejected; each variant names the field and the value.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error(
        "id {id:?} is invalid: use 1-64 letters, digits or '-', starting with a letter or digit"
    )]
    BadId { id: String },
    #[error("name {name:?} is invalid: use 1-64 printable characters")]
    BadName { name: String },
    #[error("vcpu {vcpu} is out of range 1..={MAX_VCPUS}")]
    BadVcpu { vcpu: u32 },
    #[error("memory_mib {memory_mib} is out of range {MIN_MEMORY_MIB}..={MAX_MEMORY_MIB}")]
    BadMemory { memory_mib: u32 },
    #[error("{field} path {path} is not absolute")]
    RelativePath { field: String, path: PathBuf },
    #[error("{field} path {path} is not valid UTF-8 (VMM command lines and API bodies need text)")]
    NonUtf8Path { field: String, path: PathBuf },
    #[error("{field} {path} cannot be used: {source}")]
    Inaccessible {
        field: String,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{field} {path} is not a regular file")]
    NotAFile { field: String, path: PathBuf },
    #[error("{field} {path} is not a directory")]
    NotADirectory { field: String, path: PathBuf },
    #[error("{field} {path} is {len} bytes long; Unix sockets allow at most {MAX_SOCKET_PATH}")]
    SocketPathTooLong {
        field: String,
        path: PathBuf,
        len: usize,
    },
    #[error("cmdline is {len} bytes long; the kernel accepts at most {MAX_CMDLINE_BYTES}")]
    CmdlineTooLong { len: usize },
    #[error("cmdline contains a NUL or newline character")]
    CmdlineControlChar,
    #[error("drives: {count} drives given, at most {MAX_DRIVES} are supported")]
    TooManyDrives { count: usize },
    #[error("drives[{index}].id {id:?} is invalid: use 1-32 letters, digits, '-' or '_'")]
    BadDriveId { index: usize, id: String },
    #[error("drives[{index}].id {id:?} is used twice")]
    DuplicateDriveId { index: usize, id: String },
    #[error("drives[{index}] ({id}) is a second root drive; at most one drive may be the root")]
    SecondRootDrive { index: usize, id: String },
    #[error(
        "net.tap {tap:?} is not a valid interface name (1-15 of letters, digits, '-', '_', '.')"
    )]
    BadTapName { tap: String },
    #[error("net.mac {mac} is a multicast or all-zero address; guests need a unicast MAC")]
    BadMac { mac: MacAddr },
    #[error("agent.guest_cid {cid} is invalid: must be at least {MIN_GUEST_CID} and below 2^32-1")]
    BadGuestCid { cid: u32 },
}

impl VmSpec {
    /// Check every field; touches the filesystem only to stat the given paths.
    pub fn validate(&self) -> Result<(), SpecError> {
        if !valid_instance_id(&self.id) {
            return Err(SpecError::BadId {
                id: self.id.clone(),
            });
        }
        if self.name.is_empty()
            || self.name.chars().count() > 64
            || self.name.chars().any(char::is_control)
        {
            return Err(SpecError::BadName {
                name: self.name.clone(),
            });
        }
        if !(1..=MAX_VCPUS).contains(&self.vcpu) {
            return Err(SpecError::BadVcpu { vcpu: self.vcpu });
        }
        if !(MIN_MEMORY_MIB..=MAX_MEMORY_MIB).contains(&self.memory_mib) {
            return Err(SpecError::BadMemory {
                memory_mib: self.memory_mib,
            });
        }
        check_file("kernel", &self.kernel)?;
        if let Some(initrd) = &self.initrd {
            check_file("initrd", initrd)?;
        }
        if self.cmdline.len() > MAX_CMDLINE_BYTES {
            return Err(SpecError::CmdlineTooLong {
                len: self.cmdline.len(),
            });
        }
        if self.cmdline.contains(['\0', '\n', '\r']) {
            return Err(SpecError::CmdlineControlChar);
        }
        self.validate_drives()?;
        if let Some(net) = &self.net {
            if !valid_ifname(&net.tap) {
                return Err(SpecError::BadTapName {
                    tap: net.tap.clone(),
                });
            }
            if net.mac.is_multicast() || net.mac.0 == [0; 6] {
                return Err(SpecError::BadMac { mac: net.mac });
            }
        }
        check_parent_dir("serial_log", &self.serial_log)?;
        if let Some(agent) = &self.agent {
            if agent.guest_cid < MIN_GUEST_CID || agent.guest_cid == u32::MAX {
                return Err(SpecError::BadGuestCid {
                    cid: agent.guest_cid,
                });
            }
            check_socket_path("agent.host_socket", &agent.host_socket)?;
        }
        check_dir("run_dir", &self.run_dir)?;
        // The longest socket a backend puts in run_dir.
        check_socket_path("run_dir", &self.run_dir.join("firecracker.sock"))?;
        Ok(())
    }

    fn validate_drives(&self) -> Result<(), SpecError> {
        if self.drives.len() > MAX_DRIVES {
            return Err(SpecError::TooManyDrives {
                count: self.drives.len(),
            });
        }
        let mut root_seen = false;
        for (index, drive) in self.drives.iter().enumerate() {
            let id_ok = !drive.id.is_empty()
                && drive.id.len() <= 32
                && drive
                    .id
                    .bytes()
                    .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_');
            if !id_ok {
                return Err(SpecError::BadDriveId {
                    index,
                    id: drive.id.clone(),
                });
            }
            if self.drives[..index].iter().any(|d| d.id == drive.id) {
                return Err(SpecError::DuplicateDriveId {
                    index,
                    id: drive.id.clone(),
                });
            }
            if drive.is_root {
                if root_seen {
                    return Err(SpecError::SecondRootDrive {
                        index,
                        id: drive.id.clone(),
                    });
                }
                root_seen = true;
            }
            check_file(&format!("drives[{index}].path"), &drive.path)?;
        }
        Ok(())
    }

    /// The drives in attach order: the root drive first, the rest as given.
    pub fn drives_in_attach_order(&self) -> Vec<&DriveSpec> {
        let mut drives: Vec<&DriveSpec> = self.drives.iter().collect();
        drives.sort_by_key(|d| !d.is_root);
        drives
    }
}

/// Firecracker's `--id` rule: 1–64 of `[A-Za-z0-9-]`, starting alphanumeric.
pub fn valid_instance_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-')
        && id.as_bytes()[0].is_ascii_alphanumeric()
}

fn valid_ifname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 15
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

fn check_absolute_utf8(field: &str, path: &Path) -> Result<(), SpecError> {
    if !path.is_absolute() {
        return Err(SpecError::RelativePath {
            field: field.to_owned(),
            path: path.to_owned(),
        });
    }
    if path.to_str().is_none() {
        return Err(SpecError::NonUtf8Path {
            field: field.to_owned(),
            path: path.to_owned(),
        });
    }
    Ok(())
}

fn metadata(field: &str, path: &Path) -> Result<std::fs::Metadata, SpecError> {
    std::fs::metadata(path).map_err(|source| SpecError::Inaccessible {
        field: field.to_owned(),
        path: path.to_owned(),
        source,
    })
}

fn check_file(field: &str, path: &Path) -> Result<(), SpecError> {
    check_absolute_utf8(field, path)?;
    if !metadata(field, path)?.is_file() {
        return Err(SpecError::NotAFile {
            field: field.to_owned(),
            path: path.to_owned(),
        });
    }
    Ok(())
}

fn check_dir(field: &str, path: &Path) -> Result<(), SpecError> {
    check_absolute_utf8(field, path)?;
    if !metadata(field, path)?.is_dir() {
        return Err(SpecError::NotADirectory {
            field: field.to_owned(),
            path: path.to_owned(),
        });
    }
    Ok(())
}

fn check_parent_dir(field: &str, path: &Path) -> Result<(), SpecError> {
    check_absolute_utf8(field, path)?;
    let parent = path.parent().unwrap_or(Path::new("/"));
    check_dir(&format!("{field} directory"), parent)
}

fn check_socket_path(field: &str, path: &Path) -> Result<(), SpecError> {
    check_parent_dir(field, path)?;
    let len = path.as_os_str().len();
    if len > MAX_SOCKET_PATH {
        return Err(SpecError::SocketPathTooLong {
            field: field.to_owned(),
            path: path.to_owned(),
            len,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixture {
        dir: tempfile::TempDir,
    }

    impl Fixture {
        fn new() -> Fixture {
            let dir = tempfile::tempdir().unwrap();
            for f in ["vmlinux", "initrd", "root.ext4", "work.ext4"] {
                std::fs::write(dir.path().join(f), b"x").unwrap();
            }
            std::fs::create_dir(dir.path().join("run")).unwrap();
            Fixture { dir }
        }

        fn spec(&self) -> VmSpec {
            let p = |s: &str| self.dir.path().join(s);
            VmSpec {
                id: "vm-1".into(),
                name: "dev box".into(),
                vcpu: 2,
                memory_mib: 1024,
                kernel: p("vmlinux"),
                initrd: Some(p("initrd")),
                cmdline: "console=ttyS0".into(),
                drives: vec![
                    DriveSpec {
                        id: "work".into(),
                        path: p("work.ext4"),
                        read_only: false,
                        is_root: false,
                    },
                    DriveSpec {
                        id: "root".into(),
                        path: p("root.ext4"),
                        read_only: false,
                        is_root: true,
                    },
                ],
                net: Some(NetSpec {
                    tap: "bgtap0".into(),
                    mac: "02:00:00:00:00:01".parse().unwrap(),
                }),
                serial_log: p("run/serial.log"),
                agent: Some(AgentSpec {
                    guest_cid: 3,
                    host_socket: p("run/agent.sock"),
                }),
                run_dir: p("run"),
            }
        }
    }

    #[test]
    fn good_spec_validates_and_orders_root_first() {
        let f = Fixture::new();
        let spec = f.spec();
        spec.validate().unwrap();
        let order: Vec<&str> = spec
            .drives_in_attach_order()
            .iter()
            .map(|d| d.id.as_str())
            .collect();
        assert_eq!(order, ["root", "work"]);
    }

    #[test]
    fn each_bad_field_is_named() {
        let f = Fixture::new();
        type Mutate = fn(&mut VmSpec);
        let cases: Vec<(Mutate, &str)> = vec![
            (|s| s.id = "-lead".into(), "id \"-lead\""),
            (|s| s.id = "a".repeat(65), "id \"aaaa"),
            (|s| s.id = "has space".into(), "id \"has space\""),
            (|s| s.name = String::new(), "name \"\""),
            (|s| s.vcpu = 0, "vcpu 0"),
            (|s| s.vcpu = 33, "vcpu 33"),
            (|s| s.memory_mib = 16, "memory_mib 16"),
            (
                |s| s.kernel = "vmlinux".into(),
                "kernel path vmlinux is not absolute",
            ),
            (
                |s| s.kernel = "/nonexistent/vmlinux".into(),
                "kernel /nonexistent/vmlinux cannot be used",
            ),
            (
                |s| s.initrd = Some(std::env::temp_dir()),
                "is not a regular file",
            ),
            (|s| s.cmdline = "x".repeat(3000), "cmdline is 3000 bytes"),
            (|s| s.cmdline = "a\nb".into(), "cmdline contains"),
            (
                |s| s.drives[0].id = "bad/id".into(),
                "drives[0].id \"bad/id\"",
            ),
            (
                |s| s.drives[1].id = "work".into(),
                "drives[1].id \"work\" is used twice",
            ),
            (
                |s| s.drives[0].is_root = true,
                "drives[1] (root) is a second root drive",
            ),
            (
                |s| s.drives[0].path = "/nonexistent.ext4".into(),
                "drives[0].path /nonexistent.ext4",
            ),
            (
                |s| s.net.as_mut().unwrap().tap = "a-very-long-tap-name".into(),
                "net.tap",
            ),
            (
                |s| s.net.as_mut().unwrap().mac = MacAddr([1, 0, 0, 0, 0, 1]),
                "net.mac 01:00:00:00:00:01",
            ),
            (
                |s| s.net.as_mut().unwrap().mac = MacAddr([0; 6]),
                "net.mac 00:00:00:00:00:00",
            ),
            (
                |s| s.agent.as_mut().unwrap().guest_cid = 2,
                "agent.guest_cid 2",
            ),
            (
                |s| {
                    s.agent.as_mut().unwrap().host_socket =
                        PathBuf::from(format!("/tmp/{}", "s".repeat(120)))
                },
                "agent.host_socket",
            ),
            (
                |s| s.serial_log = "/nonexistent/dir/serial.log".into(),
                "serial_log directory /nonexistent/dir",
            ),
            (
                |s| s.run_dir = "/nonexistent-run".into(),
                "run_dir /nonexistent-run",
            ),
        ];
        for (mutate, expected) in cases {
            let mut spec = f.spec();
            mutate(&mut spec);
            let err = spec.validate().expect_err(expected).to_string();
            assert!(
                err.contains(expected),
                "{err:?} should contain {expected:?}"
            );
        }
    }
}
