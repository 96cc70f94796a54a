//! The flattened tree → one tar → `mkfs.ext4 -d TAR`. mke2fs (>= 1.47.1)
//! reads ownership, modes, hard links and `SCHILY.xattr.*` records from
//! the tar itself, so the image gets the layers' uid/gid, setuid bits and
//! file capabilities with no root and no fakeroot, as banger's recipe
//! builds already rely on.

use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::flatten::{Content, Kind, Tree};

/// banger's pinned mke2fs configuration (the same as the recipe images).
const MKE2FS_CONF: &[u8] = include_bytes!("../../../images/files/mke2fs.conf");

#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("mkfs.ext4 not found in PATH, /sbin or /usr/sbin: install e2fsprogs >= 1.47.1 (Debian 12: from bookworm-backports)")]
    NoMkfs,
    #[error("mkfs.ext4 -d {tar} failed ({status}): {stderr}")]
    Mkfs {
        tar: PathBuf,
        status: String,
        stderr: String,
    },
    #[error("the image's files need {need} bytes but --size gives {size}: pass a larger --size")]
    TooSmall { need: u64, size: u64 },
}

/// Where and how to make the filesystem.
#[derive(Debug, Clone)]
pub struct Ext4Options {
    /// Bytes; `None`: the content plus headroom (see [`auto_size`]).
    pub size: Option<u64>,
    /// Filesystem UUID (and directory hash seed); derived from the
    /// manifest digest, so one manifest gives one filesystem.
    pub uuid: String,
    /// Inode and superblock times (the image config's `created`, or 0).
    pub epoch: u64,
}

/// Content + 25 % + 512 MiB (package installs on first boot, logs), at
/// least 1 GiB, rounded up to a MiB. The file is sparse.
pub fn auto_size(content: u64, entries: u64) -> u64 {
    let meta = entries * 4096;
    let raw = (content + meta) + (content + meta) / 4 + (512 << 20);
    raw.max(1 << 30).div_ceil(1 << 20) << 20
}

/// A UUID (version 4 layout) from a digest's first bytes.
pub fn uuid_from_digest(hex: &str) -> String {
    let mut b = [0u8; 16];
    for (i, byte) in b.iter_mut().enumerate() {
        *byte = hex
            .get(i * 2..i * 2 + 2)
            .and_then(|s| u8::from_str_radix(s, 16).ok())
            .unwrap_or(0);
    }
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> RootfsError + 'a {
    move |source| RootfsError::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

/// Write `tree` as a pax tar at `dest`.
pub fn write_tar(tree: &Tree, dest: &Path) -> Result<(), RootfsError> {
    let f = std::fs::File::create(dest).map_err(io("create", dest))?;
    let mut b = tar::Builder::new(BufWriter::with_capacity(1 << 20, f));
    // First path written for each inode: later paths become hard links.
    let mut first: std::collections::HashMap<usize, Vec<u8>> = Default::default();
    for (key, node) in tree.iter() {
        if key.is_empty() {
            continue;
        }
        let mut h = tar::Header::new_ustar();
        let mut pax: Vec<(String, Vec<u8>)> = Vec::new();
        let meta = match &node.kind {
            Kind::File(i) => &tree.inode(*i).meta,
            _ => &node.meta,
        };
        let mut body: Box<dyn Read> = Box::new(std::io::empty());
        let mut size = 0;
        match &node.kind {
            Kind::Dir => h.set_entry_type(tar::EntryType::Directory),
            Kind::Fifo => h.set_entry_type(tar::EntryType::Fifo),
            Kind::Symlink(t) => {
                h.set_entry_type(tar::EntryType::Symlink);
                set_link(&mut h, &mut pax, t);
            }
            Kind::File(i) => {
                if let Some(p) = first.get(i) {
                    h.set_entry_type(tar::EntryType::Link);
                    set_link(&mut h, &mut pax, p);
                } else {
                    first.insert(*i, key.to_vec());
                    h.set_entry_type(tar::EntryType::Regular);
                    let inode = tree.inode(*i);
                    size = inode.size;
                    body = match &inode.content {
                        Content::Stored(p) => {
                            Box::new(std::fs::File::open(p).map_err(io("open", p))?)
                        }
                        Content::Inline(bytes) => Box::new(std::io::Cursor::new(bytes.clone())),
                    };
                }
            }
        }
        h.set_size(size);
        h.set_mode(meta.mode);
        h.set_mtime(meta.mtime);
        if meta.uid > 0o7777777 || meta.gid > 0o7777777 {
            pax.push(("uid".into(), meta.uid.to_string().into_bytes()));
            pax.push(("gid".into(), meta.gid.to_string().into_bytes()));
        } else {
            h.set_uid(meta.uid);
            h.set_gid(meta.gid);
        }
        set_name(&mut h, &mut pax, key);
        for (name, value) in &meta.xattrs {
            pax.push((format!("SCHILY.xattr.{name}"), value.clone()));
        }
        if !pax.is_empty() {
            b.append_pax_extensions(pax.iter().map(|(k, v)| (k.as_str(), v.as_slice())))
                .map_err(io("write", dest))?;
        }
        h.set_cksum();
        b.append(&h, body.take(size)).map_err(io("write", dest))?;
    }
    let mut w = b.into_inner().map_err(io("write", dest))?;
    w.flush().map_err(io("write", dest))?;
    Ok(())
}

/// Names up to 100 bytes go in the header; longer ones in a pax `path`
/// record (the header keeps a truncated copy, as pax allows).
fn set_name(h: &mut tar::Header, pax: &mut Vec<(String, Vec<u8>)>, key: &[u8]) {
    let name = &mut h.as_old_mut().name;
    let n = key.len().min(name.len());
    name[..n].copy_from_slice(&key[..n]);
    if key.len() > 100 || !key.is_ascii() {
        pax.push(("path".into(), key.to_vec()));
    }
}

fn set_link(h: &mut tar::Header, pax: &mut Vec<(String, Vec<u8>)>, target: &[u8]) {
    let link = &mut h.as_old_mut().linkname;
    let n = target.len().min(link.len());
    link[..n].copy_from_slice(&target[..n]);
    if target.len() > 100 || !target.is_ascii() {
        pax.push(("linkpath".into(), target.to_vec()));
    }
}

fn find_mkfs() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|d| d.join("mkfs.ext4"))
        .find(|p| p.is_file())
}

/// Make `dest` (ext4) from the tar at `tar`; `work` holds the mke2fs.conf.
pub fn mkfs(
    tar: &Path,
    dest: &Path,
    work: &Path,
    tree: &Tree,
    opts: &Ext4Options,
) -> Result<u64, RootfsError> {
    let mkfs = find_mkfs().ok_or(RootfsError::NoMkfs)?;
    let content = tree.content_bytes();
    let entries = tree.len() as u64;
    let size = match opts.size {
        Some(s) => {
            let need = content + entries * 4096;
            if s < need {
                return Err(RootfsError::TooSmall { need, size: s });
            }
            s
        }
        None => auto_size(content, entries),
    };
    let conf = work.join("mke2fs.conf");
    std::fs::write(&conf, MKE2FS_CONF).map_err(io("write", &conf))?;
    // Twice the entries, at least the default ratio's count: first boot
    // installs packages.
    let inodes = (entries * 2 + 65536).max(size / 16384);
    let out = Command::new(mkfs)
        .args(["-q", "-F", "-t", "ext4", "-L", "rootfs", "-m", "1"])
        .arg("-N")
        .arg(inodes.to_string())
        .args(["-U", &opts.uuid, "-E"])
        .arg(format!("hash_seed={},root_owner=0:0", opts.uuid))
        .arg("-d")
        .arg(tar)
        .arg(dest)
        .arg(format!("{}k", size / 1024))
        .env("MKE2FS_CONFIG", &conf)
        .env("E2FSPROGS_FAKE_TIME", opts.epoch.to_string())
        .env("SOURCE_DATE_EPOCH", opts.epoch.to_string())
        .stdin(Stdio::null())
        .output()
        .map_err(io("run mkfs.ext4 for", dest))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(20).collect();
        return Err(RootfsError::Mkfs {
            tar: tar.to_owned(),
            status: out.status.to_string(),
            stderr: tail.into_iter().rev().collect::<Vec<_>>().join("\n"),
        });
    }
    Ok(size)
}
