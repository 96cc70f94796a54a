//! Turn a compressed x86 `vmlinuz` (bzImage) into the ELF `vmlinux` inside
//! it, which Firecracker and QEMU `microvm` boot via PVH.
//!
//! The boot protocol header (Documentation/arch/x86/boot.rst) gives the
//! payload: it starts `(setup_sects + 1) * 512 + payload_offset` bytes into
//! the file and is `payload_length` bytes long; its last 4 bytes are the
//! decompressed size (for the in-kernel decompressor), not part of the
//! compressed stream. Debian's 6.12 kernels compress it with zstd.

use std::io::Read;

const HDR_MAGIC: &[u8; 4] = b"HdrS";
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];
/// Upper bound for a decompressed kernel: refuses a decompression bomb.
const MAX_VMLINUX: u64 = 512 << 20;

/// Why a vmlinuz could not be converted.
#[derive(Debug, thiserror::Error)]
pub enum BzImageError {
    #[error("not a bzImage: {0}")]
    NotBzImage(String),
    #[error("bzImage payload is {0}, only zstd is supported (Debian 6.12 kernels use zstd)")]
    Compression(&'static str),
    #[error("cannot decompress the zstd payload: {0}")]
    Decompress(#[source] std::io::Error),
    #[error("decompressed payload is not an ELF file")]
    NotElf,
    #[error("decompressed payload exceeds {MAX_VMLINUX} bytes")]
    TooLarge,
}

/// Where the compressed payload sits in a bzImage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Payload {
    pub offset: usize,
    pub length: usize,
}

/// Locate the payload from the boot protocol header.
pub fn payload(bz: &[u8]) -> Result<Payload, BzImageError> {
    let bad = |m: &str| BzImageError::NotBzImage(m.to_owned());
    if bz.len() < 0x250 {
        return Err(bad("file is shorter than the boot header"));
    }
    if &bz[0x202..0x206] != HDR_MAGIC {
        return Err(bad("no HdrS magic at 0x202"));
    }
    let version = u16::from_le_bytes([bz[0x206], bz[0x207]]);
    if version < 0x208 {
        return Err(BzImageError::NotBzImage(format!(
            "boot protocol {version:#x} has no payload fields (needs 2.08+)"
        )));
    }
    let setup_sects = match bz[0x1f1] {
        0 => 4,
        n => usize::from(n),
    };
    let u32_at = |o: usize| u32::from_le_bytes(bz[o..o + 4].try_into().expect("4 bytes")) as usize;
    let offset = (setup_sects + 1) * 512 + u32_at(0x248);
    let length = u32_at(0x24c);
    if length < 8 || offset.checked_add(length).is_none_or(|end| end > bz.len()) {
        return Err(bad("payload lies outside the file"));
    }
    Ok(Payload { offset, length })
}

/// Extract the ELF vmlinux from a bzImage.
pub fn extract_vmlinux(bz: &[u8]) -> Result<Vec<u8>, BzImageError> {
    let p = payload(bz)?;
    // The last 4 bytes are the decompressed size, appended by the build.
    let data = &bz[p.offset..p.offset + p.length - 4];
    let compression = match data {
        [0x28, 0xb5, 0x2f, 0xfd, ..] => None,
        [0x1f, 0x8b, ..] => Some("gzip"),
        [0xfd, b'7', b'z', b'X', b'Z', ..] => Some("xz"),
        [0x02, 0x21, 0x4c, 0x18, ..] => Some("lz4"),
        [0x89, b'L', b'Z', b'O', ..] => Some("lzo"),
        [b'B', b'Z', b'h', ..] => Some("bzip2"),
        [0x5d, 0x00, ..] => Some("lzma"),
        _ => Some("an unknown format"),
    };
    if let Some(c) = compression {
        return Err(BzImageError::Compression(c));
    }
    debug_assert_eq!(data[..4], ZSTD_MAGIC);
    let mut decoder =
        zstd::stream::read::Decoder::with_buffer(data).map_err(BzImageError::Decompress)?;
    // Kernel payloads are compressed with a large window (zstd -22 --ultra).
    decoder
        .window_log_max(31)
        .map_err(BzImageError::Decompress)?;
    let mut out = Vec::new();
    decoder
        .take(MAX_VMLINUX + 1)
        .read_to_end(&mut out)
        .map_err(BzImageError::Decompress)?;
    if out.len() as u64 > MAX_VMLINUX {
        return Err(BzImageError::TooLarge);
    }
    if !out.starts_with(b"\x7fELF") {
        return Err(BzImageError::NotElf);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake bzImage around `payload` (+ the 4-byte size trailer).
    fn fake(payload_bytes: &[u8], setup_sects: u8) -> Vec<u8> {
        let sects = if setup_sects == 0 {
            4
        } else {
            usize::from(setup_sects)
        };
        let mut bz = vec![0u8; (sects + 1) * 512 + 100];
        bz[0x1f1] = setup_sects;
        bz[0x202..0x206].copy_from_slice(HDR_MAGIC);
        bz[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes());
        bz[0x248..0x24c].copy_from_slice(&100u32.to_le_bytes());
        let len = payload_bytes.len() as u32 + 4;
        bz[0x24c..0x250].copy_from_slice(&len.to_le_bytes());
        bz.extend_from_slice(payload_bytes);
        bz.extend_from_slice(&1234u32.to_le_bytes());
        bz.extend_from_slice(b"trailing setup data");
        bz
    }

    #[test]
    fn extracts_zstd_payload() {
        let mut elf = b"\x7fELF".to_vec();
        elf.extend(std::iter::repeat_n(7u8, 100_000));
        let z = zstd::encode_all(&elf[..], 19).unwrap();
        for sects in [0u8, 27] {
            let bz = fake(&z, sects);
            assert_eq!(extract_vmlinux(&bz).unwrap(), elf);
        }
    }

    #[test]
    fn explains_what_is_wrong() {
        assert!(matches!(
            extract_vmlinux(b"short"),
            Err(BzImageError::NotBzImage(_))
        ));
        let mut gz = vec![0x1f, 0x8b];
        gz.extend([0u8; 20]);
        let err = extract_vmlinux(&fake(&gz, 4)).unwrap_err().to_string();
        assert!(err.contains("gzip"), "{err}");
        let not_elf = zstd::encode_all(&b"hello"[..], 3).unwrap();
        assert!(matches!(
            extract_vmlinux(&fake(&not_elf, 4)),
            Err(BzImageError::NotElf)
        ));
        let mut bz = fake(&not_elf, 4);
        bz[0x24c..0x250].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            extract_vmlinux(&bz),
            Err(BzImageError::NotBzImage(_))
        ));
    }
}
