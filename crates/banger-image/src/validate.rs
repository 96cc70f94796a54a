//! Checks of host-side artifacts: what `image register` and the builds use
//! to refuse a file that cannot boot before a VM tries it.

use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

/// ELF note name/type of the PVH entry point (Xen's
/// `XEN_ELFNOTE_PHYS32_ENTRY`): what Firecracker and QEMU `microvm` need to
/// boot an uncompressed kernel directly.
const PVH_NOTE_NAME: &[u8] = b"Xen";
const PVH_NOTE_TYPE: u32 = 18;
const EXT4_MAGIC: u16 = 0xEF53;

/// Which artifact a check was looking at: the same path checks apply to
/// each, and the message names the kind so the user knows which flag or
/// file to fix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Artifact {
    RootFs,
    Kernel,
    Initrd,
    ModulesDir,
}

impl std::fmt::Display for Artifact {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Artifact::RootFs => "root filesystem",
            Artifact::Kernel => "kernel",
            Artifact::Initrd => "initrd",
            Artifact::ModulesDir => "modules directory",
        })
    }
}

/// What makes a kernel file something other than a bootable x86_64 ELF.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ElfDefect {
    ShortHeader,
    NoMagic,
    Not64BitLittleEndian,
    NotX86_64,
    NotExecutable,
    BadProgramHeaders,
    TruncatedProgramHeaders,
}

impl std::fmt::Display for ElfDefect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ElfDefect::ShortHeader => "shorter than an ELF header",
            ElfDefect::NoMagic => "no ELF magic",
            ElfDefect::Not64BitLittleEndian => "not 64-bit little-endian",
            ElfDefect::NotX86_64 => "machine is not x86_64",
            ElfDefect::NotExecutable => "not an executable (ET_EXEC)",
            ElfDefect::BadProgramHeaders => "bad program header table",
            ElfDefect::TruncatedProgramHeaders => "truncated program headers",
        })
    }
}

/// Why a file was refused.
#[derive(Debug, thiserror::Error)]
pub enum ValidateError {
    #[error("{artifact} path {path} must be absolute")]
    Relative { artifact: Artifact, path: PathBuf },
    #[error("{artifact} {path} cannot be read: {source}")]
    Unreadable {
        artifact: Artifact,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{artifact} {path} is not a regular file")]
    NotFile { artifact: Artifact, path: PathBuf },
    #[error("{artifact} {path} is not a directory")]
    NotDir { artifact: Artifact, path: PathBuf },
    #[error("root filesystem {path} is not ext4 (no ext2/3/4 superblock magic at offset 1080)")]
    NotExt4 { path: PathBuf },
    #[error("kernel {path} is not an x86_64 ELF executable: {defect} (a bzImage/vmlinuz must be converted; see docs/kernel-catalog.md)")]
    NotElf { path: PathBuf, defect: ElfDefect },
    #[error("kernel {path} has no PVH entry note (Xen note type 18): Firecracker and QEMU microvm cannot boot it (needs CONFIG_PVH=y)")]
    NoPvhNote { path: PathBuf },
}

/// Facts about a checked root filesystem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ext4Info {
    /// File size in bytes.
    pub size: u64,
    /// Filesystem UUID, formatted.
    pub uuid: String,
}

/// Facts about a checked kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelInfo {
    /// Physical address of the PVH entry point.
    pub pvh_entry: u64,
}

fn open_file(artifact: Artifact, path: &Path) -> Result<std::fs::File, ValidateError> {
    if !path.is_absolute() {
        return Err(ValidateError::Relative {
            artifact,
            path: path.to_owned(),
        });
    }
    let unreadable = |source| ValidateError::Unreadable {
        artifact,
        path: path.to_owned(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(unreadable)?;
    if !meta.is_file() {
        return Err(ValidateError::NotFile {
            artifact,
            path: path.to_owned(),
        });
    }
    std::fs::File::open(path).map_err(|source| ValidateError::Unreadable {
        artifact,
        path: path.to_owned(),
        source,
    })
}

/// An absolute path to an ext4 image.
pub fn rootfs(path: &Path) -> Result<Ext4Info, ValidateError> {
    let mut f = open_file(Artifact::RootFs, path)?;
    let mut sb = [0u8; 1024];
    let read = f
        .seek(SeekFrom::Start(1024))
        .and_then(|_| f.read_exact(&mut sb));
    match read {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
            return Err(ValidateError::NotExt4 {
                path: path.to_owned(),
            })
        }
        Err(source) => {
            return Err(ValidateError::Unreadable {
                artifact: Artifact::RootFs,
                path: path.to_owned(),
                source,
            })
        }
    }
    if u16::from_le_bytes([sb[0x38], sb[0x39]]) != EXT4_MAGIC {
        return Err(ValidateError::NotExt4 {
            path: path.to_owned(),
        });
    }
    let u = &sb[0x68..0x78];
    let uuid = format!(
        "{}-{}-{}-{}-{}",
        hex::encode(&u[0..4]),
        hex::encode(&u[4..6]),
        hex::encode(&u[6..8]),
        hex::encode(&u[8..10]),
        hex::encode(&u[10..16])
    );
    let size = f.metadata().map(|m| m.len()).unwrap_or(0);
    Ok(Ext4Info { size, uuid })
}

/// An absolute path to an ELF x86_64 kernel with the PVH note.
pub fn vmlinux(path: &Path) -> Result<KernelInfo, ValidateError> {
    let mut f = open_file(Artifact::Kernel, path)?;
    let not_elf = |defect| ValidateError::NotElf {
        path: path.to_owned(),
        defect,
    };
    let unreadable = |source| ValidateError::Unreadable {
        artifact: Artifact::Kernel,
        path: path.to_owned(),
        source,
    };
    let mut eh = [0u8; 64];
    f.read_exact(&mut eh)
        .map_err(|_| not_elf(ElfDefect::ShortHeader))?;
    if &eh[0..4] != b"\x7fELF" {
        return Err(not_elf(ElfDefect::NoMagic));
    }
    if eh[4] != 2 || eh[5] != 1 {
        return Err(not_elf(ElfDefect::Not64BitLittleEndian));
    }
    let u16_at = |b: &[u8], o: usize| u16::from_le_bytes([b[o], b[o + 1]]);
    let u32_at = |b: &[u8], o: usize| u32::from_le_bytes(b[o..o + 4].try_into().expect("4 bytes"));
    let u64_at = |b: &[u8], o: usize| u64::from_le_bytes(b[o..o + 8].try_into().expect("8 bytes"));
    if u16_at(&eh, 18) != 62 {
        return Err(not_elf(ElfDefect::NotX86_64));
    }
    if u16_at(&eh, 16) != 2 {
        return Err(not_elf(ElfDefect::NotExecutable));
    }
    let phoff = u64_at(&eh, 32);
    let phentsize = usize::from(u16_at(&eh, 54));
    let phnum = usize::from(u16_at(&eh, 56));
    if phentsize < 56 || phnum == 0 || phnum > 256 {
        return Err(not_elf(ElfDefect::BadProgramHeaders));
    }
    let mut ph = vec![0u8; phentsize * phnum];
    f.seek(SeekFrom::Start(phoff))
        .and_then(|_| f.read_exact(&mut ph))
        .map_err(|_| not_elf(ElfDefect::TruncatedProgramHeaders))?;
    for i in 0..phnum {
        let h = &ph[i * phentsize..(i + 1) * phentsize];
        const PT_NOTE: u32 = 4;
        if u32_at(h, 0) != PT_NOTE {
            continue;
        }
        let (off, size) = (u64_at(h, 8), u64_at(h, 32));
        if size > 1 << 20 {
            continue;
        }
        let mut notes = vec![0u8; size as usize];
        f.seek(SeekFrom::Start(off))
            .and_then(|_| f.read_exact(&mut notes))
            .map_err(unreadable)?;
        if let Some(entry) = find_pvh_note(&notes) {
            return Ok(KernelInfo { pvh_entry: entry });
        }
    }
    Err(ValidateError::NoPvhNote {
        path: path.to_owned(),
    })
}

fn find_pvh_note(mut notes: &[u8]) -> Option<u64> {
    let align4 = |n: usize| (n + 3) & !3;
    while notes.len() >= 12 {
        let namesz = u32::from_le_bytes(notes[0..4].try_into().ok()?) as usize;
        let descsz = u32::from_le_bytes(notes[4..8].try_into().ok()?) as usize;
        let ntype = u32::from_le_bytes(notes[8..12].try_into().ok()?);
        let name_end = 12 + align4(namesz);
        let desc_end = name_end.checked_add(align4(descsz))?;
        if desc_end > notes.len() {
            return None;
        }
        let name = &notes[12..12 + namesz];
        if ntype == PVH_NOTE_TYPE && name.strip_suffix(b"\0").unwrap_or(name) == PVH_NOTE_NAME {
            let desc = &notes[name_end..name_end + descsz];
            return match descsz {
                4 => Some(u64::from(u32::from_le_bytes(desc.try_into().ok()?))),
                8 => Some(u64::from_le_bytes(desc.try_into().ok()?)),
                _ => None,
            };
        }
        notes = &notes[desc_end..];
    }
    None
}

/// An absolute path to an initramfs (any format the kernel accepts: only
/// existence and readability are checked).
pub fn initrd(path: &Path) -> Result<u64, ValidateError> {
    let f = open_file(Artifact::Initrd, path)?;
    Ok(f.metadata().map(|m| m.len()).unwrap_or(0))
}

/// An absolute path to a modules tree (`/lib/modules/<release>`).
pub fn modules_dir(path: &Path) -> Result<(), ValidateError> {
    if !path.is_absolute() {
        return Err(ValidateError::Relative {
            artifact: Artifact::ModulesDir,
            path: path.to_owned(),
        });
    }
    let meta = std::fs::metadata(path).map_err(|source| ValidateError::Unreadable {
        artifact: Artifact::ModulesDir,
        path: path.to_owned(),
        source,
    })?;
    if !meta.is_dir() {
        return Err(ValidateError::NotDir {
            artifact: Artifact::ModulesDir,
            path: path.to_owned(),
        });
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A minimal ELF64 x86_64 executable with one PT_NOTE holding `notes`.
    pub(crate) fn tiny_elf(notes: &[u8]) -> Vec<u8> {
        let mut f = vec![0u8; 64 + 56];
        f[0..4].copy_from_slice(b"\x7fELF");
        f[4] = 2;
        f[5] = 1;
        f[6] = 1;
        f[16..18].copy_from_slice(&2u16.to_le_bytes());
        f[18..20].copy_from_slice(&62u16.to_le_bytes());
        f[32..40].copy_from_slice(&64u64.to_le_bytes());
        f[54..56].copy_from_slice(&56u16.to_le_bytes());
        f[56..58].copy_from_slice(&1u16.to_le_bytes());
        let ph = &mut f[64..120];
        ph[0..4].copy_from_slice(&4u32.to_le_bytes());
        ph[8..16].copy_from_slice(&120u64.to_le_bytes());
        ph[32..40].copy_from_slice(&(notes.len() as u64).to_le_bytes());
        f.extend_from_slice(notes);
        f
    }

    pub(crate) fn note(name: &[u8], ntype: u32, desc: &[u8]) -> Vec<u8> {
        let mut n = Vec::new();
        n.extend_from_slice(&(name.len() as u32 + 1).to_le_bytes());
        n.extend_from_slice(&(desc.len() as u32).to_le_bytes());
        n.extend_from_slice(&ntype.to_le_bytes());
        n.extend_from_slice(name);
        n.push(0);
        while n.len() % 4 != 0 {
            n.push(0);
        }
        n.extend_from_slice(desc);
        while n.len() % 4 != 0 {
            n.push(0);
        }
        n
    }

    #[test]
    fn pvh_note_is_found_after_other_notes() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("vmlinux");
        let mut notes = note(b"GNU", 3, &[1, 2, 3, 4, 5, 6, 7, 8]);
        notes.extend(note(b"Xen", 18, &0x0100_0000u32.to_le_bytes()));
        std::fs::write(&p, tiny_elf(&notes)).unwrap();
        assert_eq!(vmlinux(&p).unwrap().pvh_entry, 0x0100_0000);
        std::fs::write(&p, tiny_elf(&note(b"GNU", 3, &[0; 4]))).unwrap();
        assert!(matches!(vmlinux(&p), Err(ValidateError::NoPvhNote { .. })));
    }

    #[test]
    fn non_elf_and_relative_and_missing_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("vmlinuz");
        let mut bz = vec![0u8; 1024];
        bz[0x202..0x206].copy_from_slice(b"HdrS");
        std::fs::write(&p, &bz).unwrap();
        let err = vmlinux(&p).unwrap_err();
        assert!(matches!(err, ValidateError::NotElf { .. }), "{err}");
        assert!(matches!(
            vmlinux(Path::new("vmlinux")),
            Err(ValidateError::Relative { .. })
        ));
        let err = vmlinux(&dir.path().join("missing"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("missing"), "{err}");
        assert!(matches!(
            vmlinux(dir.path()),
            Err(ValidateError::NotFile { .. })
        ));
    }

    #[test]
    fn ext4_magic_is_checked() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("rootfs.ext4");
        let mut img = vec![0u8; 4096];
        std::fs::write(&p, &img).unwrap();
        assert!(matches!(rootfs(&p), Err(ValidateError::NotExt4 { .. })));
        std::fs::write(&p, b"short").unwrap();
        assert!(matches!(rootfs(&p), Err(ValidateError::NotExt4 { .. })));
        img[1024 + 0x38..1024 + 0x3a].copy_from_slice(&EXT4_MAGIC.to_le_bytes());
        img[1024 + 0x68] = 0xab;
        std::fs::write(&p, &img).unwrap();
        let info = rootfs(&p).unwrap();
        assert_eq!(info.size, 4096);
        assert!(info.uuid.starts_with("ab000000-"), "{}", info.uuid);
        assert!(matches!(
            rootfs(Path::new("rel.ext4")),
            Err(ValidateError::Relative { .. })
        ));
    }

    #[test]
    fn mkfs_made_image_passes() {
        // A real ext4 made by mkfs.ext4 (no root needed for a file).
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("real.ext4");
        if !banger_test_support::Gate::new().tool("mkfs.ext4").check() {
            return;
        }
        let ok = std::process::Command::new("mkfs.ext4")
            .args(["-q", "-F", "-U", "12345678-1234-1234-1234-123456789abc"])
            .arg(&p)
            .arg("8M")
            .status()
            .expect("run mkfs.ext4");
        assert!(ok.success(), "mkfs.ext4 failed: {ok}");
        assert_eq!(
            rootfs(&p).unwrap().uuid,
            "12345678-1234-1234-1234-123456789abc"
        );
    }

    #[test]
    fn modules_dir_checks() {
        let dir = tempfile::tempdir().unwrap();
        modules_dir(dir.path()).unwrap();
        let f = dir.path().join("f");
        std::fs::write(&f, b"").unwrap();
        assert!(matches!(modules_dir(&f), Err(ValidateError::NotDir { .. })));
        assert!(matches!(
            modules_dir(Path::new("x")),
            Err(ValidateError::Relative { .. })
        ));
        assert!(initrd(&f).is_ok());
    }
}
