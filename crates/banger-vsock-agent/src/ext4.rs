//! Reading an ext2/3/4 volume label straight from the superblock, so the
//! config drive can be found before udev has created `/dev/disk/by-label`
//! and without `blkid` in the guest.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Byte offset of the primary superblock on the device.
const SUPERBLOCK_OFFSET: u64 = 1024;
/// Bytes of the superblock we look at (magic, revision, volume name).
const SUPERBLOCK_READ: usize = 0x88;
const MAGIC_OFFSET: usize = 0x38;
const EXT_MAGIC: u16 = 0xEF53;
const REV_LEVEL_OFFSET: usize = 0x4C;
const VOLUME_NAME_OFFSET: usize = 0x78;
const VOLUME_NAME_LEN: usize = 16;

/// Errors reading a superblock.
#[derive(Debug, thiserror::Error)]
pub enum Ext4Error {
    #[error("cannot open {path} to read its ext4 superblock: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read the ext4 superblock of {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The volume label of the ext2/3/4 filesystem on `device`.
///
/// `Ok(None)` when the device holds no ext filesystem (wrong magic, too
/// short) or the filesystem has no label.
pub fn read_label(device: &Path) -> Result<Option<String>, Ext4Error> {
    let file = File::open(device).map_err(|source| Ext4Error::Open {
        path: device.to_owned(),
        source,
    })?;
    let mut sb = [0u8; SUPERBLOCK_READ];
    let mut filled = 0;
    // read_exact_at would turn a short device into an error; a device too
    // small to hold a superblock is simply "not ext4".
    while filled < sb.len() {
        match file.read_at(&mut sb[filled..], SUPERBLOCK_OFFSET + filled as u64) {
            Ok(0) => return Ok(None),
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(source) => {
                return Err(Ext4Error::Read {
                    path: device.to_owned(),
                    source,
                })
            }
        }
    }
    Ok(label_from_superblock(&sb))
}

/// The label in a superblock's first [`SUPERBLOCK_READ`] bytes, if it is an
/// ext superblock with a non-empty label.
fn label_from_superblock(sb: &[u8]) -> Option<String> {
    let magic = u16::from_le_bytes([sb[MAGIC_OFFSET], sb[MAGIC_OFFSET + 1]]);
    if magic != EXT_MAGIC {
        return None;
    }
    let rev = u32::from_le_bytes(
        sb[REV_LEVEL_OFFSET..REV_LEVEL_OFFSET + 4]
            .try_into()
            .expect("4-byte slice"),
    );
    // Revision 0 superblocks end before the volume name field.
    if rev == 0 {
        return None;
    }
    let raw = &sb[VOLUME_NAME_OFFSET..VOLUME_NAME_OFFSET + VOLUME_NAME_LEN];
    let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
    if end == 0 {
        return None;
    }
    Some(String::from_utf8_lossy(&raw[..end]).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::mkfs;

    #[test]
    fn reads_the_label_mkfs_wrote() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("cfg.ext4");
        mkfs(&img, "banger-cfg");
        assert_eq!(read_label(&img).unwrap().as_deref(), Some("banger-cfg"));
    }

    #[test]
    fn full_length_label_has_no_terminator() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("long.ext4");
        mkfs(&img, "sixteen-chars-ab");
        assert_eq!(
            read_label(&img).unwrap().as_deref(),
            Some("sixteen-chars-ab")
        );
    }

    #[test]
    fn unlabelled_filesystem_has_no_label() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("plain.ext4");
        mkfs(&img, "");
        assert_eq!(read_label(&img).unwrap(), None);
    }

    #[test]
    fn non_ext_data_and_short_files_are_not_ext4() {
        let dir = tempfile::tempdir().unwrap();
        let zeros = dir.path().join("zeros");
        std::fs::write(&zeros, vec![0u8; 8192]).unwrap();
        assert_eq!(read_label(&zeros).unwrap(), None);
        let short = dir.path().join("short");
        std::fs::write(&short, b"tiny").unwrap();
        assert_eq!(read_label(&short).unwrap(), None);
    }

    #[test]
    fn missing_device_error_names_it() {
        let err = read_label(Path::new("/nonexistent/banger-dev")).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/banger-dev"), "{err}");
    }
}
