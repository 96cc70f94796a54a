//! The bundle file: a zstd-compressed tar of `manifest.json` (first) and the
//! artifacts the manifest lists.
//!
//! Packing is reproducible: entries sorted by path, mtime = the manifest's
//! `created`, uid/gid 0 with empty owner names, modes normalized to
//! 0755/0644, fixed zstd level, no zstd checksum or content size fields.
//! Unpacking trusts nothing: only the listed artifacts, only regular files
//! and directories, only relative paths without `..`, every size and
//! sha256 checked against the manifest, files created fresh (never through
//! an existing path). Long runs of zeros are left as holes, so a sparse
//! `rootfs.ext4` stays sparse on disk.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::digest::{self, DigestError, Hasher, TreeDigest, TreeEntry};
use crate::manifest::{
    Artifact, ArtifactType, Kind, Manifest, ManifestError, ARCH, FORMAT_VERSION, MANIFEST_FILE,
    MAX_MANIFEST_BYTES,
};

/// zstd level of every bundle. Part of the format's reproducibility: the
/// same artifacts packed at another level give another bundle sha256.
pub const ZSTD_LEVEL: i32 = 12;

/// Most entries a bundle may hold. A kernel's modules tree has a few
/// thousand; empty tar entries compress to almost nothing, so without a cap
/// a small hostile bundle could create millions of inodes.
pub const MAX_ENTRIES: usize = 65_536;

/// Errors packing or unpacking a bundle.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("cannot {op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Digest(#[from] DigestError),
    #[error("invalid manifest: {0}")]
    Manifest(#[from] ManifestError),
    #[error("bundle is not a valid tar+zstd stream: {0}")]
    Stream(#[source] io::Error),
    #[error("bundle must start with {MANIFEST_FILE}, found {found:?}")]
    ManifestNotFirst { found: String },
    #[error("bundle entry {path:?} is unsafe: {reason}")]
    UnsafePath { path: String, reason: &'static str },
    #[error("bundle entry {path:?} is not listed in the manifest")]
    Unlisted { path: String },
    #[error("bundle entry {path:?} has unsupported type {kind} (only files and directories)")]
    UnsupportedEntry { path: String, kind: String },
    #[error("bundle entry {path:?} appears twice")]
    Duplicate { path: String },
    #[error("artifact {name}: expected {expected_size} bytes sha256 {expected}, got {got_size} bytes sha256 {got}")]
    Mismatch {
        name: String,
        expected: String,
        got: String,
        expected_size: u64,
        got_size: u64,
    },
    #[error("artifact {name} is listed in the manifest but missing from the bundle")]
    Missing { name: String },
    #[error("bundle is a {size}-byte manifest, expected at most {MAX_MANIFEST_BYTES} bytes")]
    ManifestTooLarge { size: u64 },
    #[error("bundle is a {found} bundle, expected a {expected} bundle")]
    WrongKind { found: Kind, expected: Kind },
    #[error("bundle is named {found:?}, expected {expected:?}")]
    WrongName { found: String, expected: String },
    #[error("bundle is longer than {MAX_ENTRIES} entries (at {at:?}), expected at most {MAX_ENTRIES} entries")]
    TooManyEntries { at: String },
    #[error("artifact source {path} is missing: {source}")]
    MissingSource {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> BundleError + 'a {
    move |source| BundleError::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

/// The bundle-level facts the caller decides; artifacts are measured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BundleMeta {
    pub kind: Kind,
    pub name: String,
    pub version: String,
    /// Seconds since 1970 (`SOURCE_DATE_EPOCH`); also every entry's mtime.
    pub created: i64,
    pub recipe_hash: Option<String>,
    pub kernel_ref: Option<String>,
    pub kernel_release: Option<String>,
}

/// A bundle file that was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packed {
    pub path: PathBuf,
    pub manifest: Manifest,
    /// Size of the bundle file.
    pub size: u64,
    /// sha256 of the bundle file: what a catalog entry pins.
    pub sha256: String,
}

/// The artifacts present in `src` for `kind`, in manifest order.
fn present_artifacts(src: &Path, kind: Kind) -> Vec<(&'static str, ArtifactType)> {
    use crate::manifest::{INITRD, MODULES, ROOTFS, VMLINUX};
    let candidates: &[(&'static str, ArtifactType)] = match kind {
        Kind::Image => &[(ROOTFS, ArtifactType::File)],
        Kind::Kernel => &[
            (VMLINUX, ArtifactType::File),
            (INITRD, ArtifactType::File),
            (MODULES, ArtifactType::Tree),
        ],
    };
    candidates
        .iter()
        .copied()
        .filter(|(name, _)| src.join(name).exists())
        .collect()
}

/// Measure the artifacts in `src` (`rootfs.ext4`; or `vmlinux`, `initrd`,
/// `modules/`) and return the manifest describing them.
pub fn describe(src: &Path, meta: &BundleMeta) -> Result<Manifest, BundleError> {
    let mut artifacts = Vec::new();
    for (name, kind) in present_artifacts(src, meta.kind) {
        let path = src.join(name);
        let (size, sha256) = match kind {
            ArtifactType::File => digest::sha256_file(&path)?,
            ArtifactType::Tree => digest::tree_digest(&path)?,
        };
        artifacts.push(Artifact {
            name: name.to_owned(),
            kind,
            size,
            sha256,
        });
    }
    let manifest = Manifest {
        format_version: FORMAT_VERSION,
        kind: meta.kind,
        name: meta.name.clone(),
        version: meta.version.clone(),
        arch: ARCH.to_owned(),
        created: meta.created,
        recipe_hash: meta.recipe_hash.clone(),
        kernel_ref: meta.kernel_ref.clone(),
        kernel_release: meta.kernel_release.clone(),
        artifacts,
    };
    manifest.validate()?;
    Ok(manifest)
}

/// Pack the artifacts in `src` into the bundle file `out` (replaced
/// atomically: written beside it, then renamed).
pub fn pack(src: &Path, meta: &BundleMeta, out: &Path) -> Result<Packed, BundleError> {
    let manifest = describe(src, meta)?;
    let parent = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let tmp = tempfile::Builder::new()
        .prefix(".bundle-")
        .tempfile_in(parent)
        .map_err(io_err("create a temporary file in", parent))?;
    let hashing = HashingWriter {
        inner: io::BufWriter::with_capacity(1 << 20, tmp),
        hasher: Hasher::new(),
        count: 0,
    };
    let mut encoder =
        zstd::Encoder::new(hashing, ZSTD_LEVEL).map_err(io_err("compress into", out))?;
    encoder
        .include_checksum(false)
        .map_err(io_err("configure zstd for", out))?;
    encoder
        .include_contentsize(false)
        .map_err(io_err("configure zstd for", out))?;
    let mut tar = tar::Builder::new(encoder);
    let mtime = u64::try_from(meta.created).unwrap_or(0);
    let json = manifest.to_json();
    append(
        &mut tar,
        MANIFEST_FILE,
        tar::EntryType::Regular,
        0o644,
        mtime,
        json.len() as u64,
        &json[..],
        out,
    )?;
    for a in &manifest.artifacts {
        let path = src.join(&a.name);
        match a.kind {
            ArtifactType::File => {
                let file = std::fs::File::open(&path).map_err(io_err("read", &path))?;
                let meta = file.metadata().map_err(io_err("stat", &path))?;
                let mode = digest::normalized_file_mode(meta.permissions().mode());
                let reader = io::BufReader::with_capacity(1 << 20, file);
                append(
                    &mut tar,
                    &a.name,
                    tar::EntryType::Regular,
                    mode,
                    mtime,
                    meta.len(),
                    reader,
                    out,
                )?;
            }
            ArtifactType::Tree => {
                append(
                    &mut tar,
                    &format!("{}/", a.name),
                    tar::EntryType::Directory,
                    0o755,
                    mtime,
                    0,
                    io::empty(),
                    out,
                )?;
                for (rel, p, m) in digest::walk_tree(&path)? {
                    let name = format!("{}/{rel}", a.name);
                    if m.is_dir() {
                        append(
                            &mut tar,
                            &format!("{name}/"),
                            tar::EntryType::Directory,
                            0o755,
                            mtime,
                            0,
                            io::empty(),
                            out,
                        )?;
                    } else {
                        let mode = digest::normalized_file_mode(m.permissions().mode());
                        let f = std::fs::File::open(&p).map_err(io_err("read", &p))?;
                        append(
                            &mut tar,
                            &name,
                            tar::EntryType::Regular,
                            mode,
                            mtime,
                            m.len(),
                            f,
                            out,
                        )?;
                    }
                }
            }
        }
    }
    let encoder = tar.into_inner().map_err(io_err("write", out))?;
    let hashing = encoder.finish().map_err(io_err("write", out))?;
    let HashingWriter {
        inner,
        hasher,
        count,
    } = hashing;
    let file = inner.into_inner().map_err(|e| BundleError::Io {
        op: "write",
        path: out.to_owned(),
        source: e.into_error(),
    })?;
    file.as_file().sync_all().map_err(io_err("sync", out))?;
    file.persist(out).map_err(|e| BundleError::Io {
        op: "rename into",
        path: out.to_owned(),
        source: e.error,
    })?;
    Ok(Packed {
        path: out.to_owned(),
        manifest,
        size: count,
        sha256: hasher.finish_hex(),
    })
}

#[allow(clippy::too_many_arguments)]
fn append<W: Write, R: Read>(
    tar: &mut tar::Builder<W>,
    path: &str,
    kind: tar::EntryType,
    mode: u32,
    mtime: u64,
    size: u64,
    data: R,
    out: &Path,
) -> Result<(), BundleError> {
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(kind);
    header.set_mode(mode);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(mtime);
    header.set_size(size);
    tar.append_data(&mut header, path, data)
        .map_err(io_err("write", out))
}

/// A writer that hashes and counts what passes through.
#[derive(Debug)]
pub struct HashingWriter<W> {
    pub inner: W,
    pub hasher: Hasher,
    pub count: u64,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// What the caller expects to find in a bundle being unpacked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expect {
    pub kind: Kind,
    /// The catalog/store name the bundle must carry, when known.
    pub name: Option<String>,
}

/// Unpack a bundle stream into `dest` (an existing, empty directory),
/// verifying everything; returns the manifest. Reads `reader` to its end,
/// so a caller hashing the stream sees every byte. On error `dest` holds
/// partial output that the caller must remove.
pub fn unpack<R: Read>(reader: R, dest: &Path, expect: &Expect) -> Result<Manifest, BundleError> {
    let decoder = zstd::Decoder::new(reader).map_err(BundleError::Stream)?;
    let mut archive = tar::Archive::new(decoder);
    let manifest = unpack_entries(&mut archive, dest, expect)?;
    // Drain the tar padding and the end of the zstd frame: a truncated or
    // trailing-garbage stream must fail here, not go unnoticed.
    let mut decoder = archive.into_inner();
    io::copy(&mut decoder, &mut io::sink()).map_err(BundleError::Stream)?;
    let mut raw = decoder.finish();
    io::copy(&mut raw, &mut io::sink()).map_err(BundleError::Stream)?;
    Ok(manifest)
}

/// Unpack the bundle file at `path` (see [`unpack`]).
pub fn unpack_file(path: &Path, dest: &Path, expect: &Expect) -> Result<Manifest, BundleError> {
    let file = std::fs::File::open(path).map_err(io_err("open", path))?;
    unpack(io::BufReader::with_capacity(1 << 20, file), dest, expect)
}

/// The manifest of a bundle whose first bytes are `prefix` (the manifest is
/// the first entry, so the first zstd block holds it): lets a stream be
/// routed by kind and name before it is unpacked.
pub fn manifest_from_prefix(prefix: &[u8]) -> Result<Manifest, BundleError> {
    first_manifest(prefix)
}

/// Read and validate only the manifest (first entry) of a bundle file.
pub fn read_manifest(path: &Path) -> Result<Manifest, BundleError> {
    let file = std::fs::File::open(path).map_err(io_err("open", path))?;
    first_manifest(io::BufReader::new(file))
}

/// The validated manifest at the start of a bundle stream; reads no further.
fn first_manifest<R: Read>(reader: R) -> Result<Manifest, BundleError> {
    let decoder = zstd::Decoder::new(reader).map_err(BundleError::Stream)?;
    let mut archive = tar::Archive::new(decoder);
    let mut entries = archive.entries().map_err(BundleError::Stream)?;
    let mut first = match entries.next() {
        Some(e) => e.map_err(BundleError::Stream)?,
        None => {
            return Err(BundleError::ManifestNotFirst {
                found: "an empty archive".into(),
            })
        }
    };
    read_manifest_entry(&mut first).map(|(m, _)| m)
}

fn read_manifest_entry<R: Read>(
    first: &mut tar::Entry<'_, R>,
) -> Result<(Manifest, Vec<u8>), BundleError> {
    let first_path = entry_path(first)?;
    if first_path != MANIFEST_FILE || first.header().entry_type() != tar::EntryType::Regular {
        return Err(BundleError::ManifestNotFirst { found: first_path });
    }
    if first.size() > MAX_MANIFEST_BYTES {
        return Err(BundleError::ManifestTooLarge { size: first.size() });
    }
    let mut json = Vec::new();
    first.read_to_end(&mut json).map_err(BundleError::Stream)?;
    Ok((Manifest::from_json(&json)?, json))
}

/// Progress of one tree artifact while unpacking.
#[derive(Default)]
struct TreeState {
    digest: TreeDigest,
    root_seen: bool,
    /// Bytes of the tree's files written so far: bounded by the manifest's
    /// size as they arrive, so a lying tree cannot fill the disk either.
    written: u64,
}

fn unpack_entries<R: Read>(
    archive: &mut tar::Archive<R>,
    dest: &Path,
    expect: &Expect,
) -> Result<Manifest, BundleError> {
    let mut entries = archive.entries().map_err(BundleError::Stream)?;
    let mut first = match entries.next() {
        Some(e) => e.map_err(BundleError::Stream)?,
        None => {
            return Err(BundleError::ManifestNotFirst {
                found: "an empty archive".into(),
            })
        }
    };
    let (manifest, json) = read_manifest_entry(&mut first)?;
    drop(first);
    if manifest.kind != expect.kind {
        return Err(BundleError::WrongKind {
            found: manifest.kind,
            expected: expect.kind,
        });
    }
    if let Some(name) = &expect.name {
        if &manifest.name != name {
            return Err(BundleError::WrongName {
                found: manifest.name.clone(),
                expected: name.clone(),
            });
        }
    }
    let manifest_path = dest.join(MANIFEST_FILE);
    write_new(&manifest_path, 0o644)?
        .write_all(&json)
        .map_err(io_err("write", &manifest_path))?;

    let mut files_done: Vec<&str> = Vec::new();
    let mut trees: BTreeMap<&str, TreeState> = manifest
        .artifacts
        .iter()
        .filter(|a| a.kind == ArtifactType::Tree)
        .map(|a| (a.name.as_str(), TreeState::default()))
        .collect();
    let mut seen_paths = std::collections::HashSet::new();

    for entry in entries {
        let mut entry = entry.map_err(BundleError::Stream)?;
        let path = entry_path(&entry)?;
        if seen_paths.len() >= MAX_ENTRIES {
            return Err(BundleError::TooManyEntries { at: path });
        }
        if !seen_paths.insert(path.clone()) {
            return Err(BundleError::Duplicate { path });
        }
        let (top, rest) = match path.split_once('/') {
            Some((t, r)) => (t, Some(r)),
            None => (path.as_str(), None),
        };
        let artifact = manifest
            .artifacts
            .iter()
            .find(|a| a.name == top)
            .ok_or_else(|| BundleError::Unlisted { path: path.clone() })?;
        let etype = entry.header().entry_type();
        let target = dest.join(&path);
        match (artifact.kind, rest) {
            (ArtifactType::File, None) => {
                require_type(&path, etype, tar::EntryType::Regular)?;
                let (size, sha) = write_entry(&mut entry, &target, 0o644, Some((artifact, 0)))?;
                check(artifact, size, &sha)?;
                files_done.push(&artifact.name);
            }
            (ArtifactType::File, Some(_)) => return Err(BundleError::Unlisted { path }),
            (ArtifactType::Tree, None) => {
                require_type(&path, etype, tar::EntryType::Directory)?;
                make_dir(&target)?;
                trees.get_mut(top).expect("tree listed").root_seen = true;
            }
            (ArtifactType::Tree, Some(rel)) => {
                let state = trees.get_mut(top).expect("tree listed");
                if !state.root_seen {
                    return Err(BundleError::UnsafePath {
                        path,
                        reason: "appears before its directory",
                    });
                }
                let parent = target.parent().expect("joined path has a parent");
                if !parent.is_dir() {
                    return Err(BundleError::UnsafePath {
                        path,
                        reason: "appears before its parent directory",
                    });
                }
                match etype {
                    tar::EntryType::Directory => {
                        make_dir(&target)?;
                        state.digest.add(TreeEntry::Dir {
                            path: rel.to_owned(),
                        });
                    }
                    tar::EntryType::Regular => {
                        let mode =
                            digest::normalized_file_mode(entry.header().mode().unwrap_or(0o644));
                        let (size, sha256) = write_entry(
                            &mut entry,
                            &target,
                            mode,
                            Some((artifact, state.written)),
                        )?;
                        state.written += size;
                        state.digest.add(TreeEntry::File {
                            path: rel.to_owned(),
                            mode,
                            size,
                            sha256,
                        });
                    }
                    other => return Err(unsupported(path, other)),
                }
            }
        }
    }

    for a in &manifest.artifacts {
        match a.kind {
            ArtifactType::File if !files_done.contains(&a.name.as_str()) => {
                return Err(BundleError::Missing {
                    name: a.name.clone(),
                })
            }
            ArtifactType::File => {}
            ArtifactType::Tree => {
                let state = trees.remove(a.name.as_str()).expect("tree listed");
                if !state.root_seen {
                    return Err(BundleError::Missing {
                        name: a.name.clone(),
                    });
                }
                let (size, sha) = state.digest.finish();
                check(a, size, &sha)?;
            }
        }
    }
    Ok(manifest)
}

fn unsupported(path: String, t: tar::EntryType) -> BundleError {
    // The tar crate's Debug of a type byte it does not know is an internal
    // variant name; say which byte it was instead.
    let kind = match format!("{t:?}") {
        known if !known.starts_with("__") => known,
        _ => format!("byte {:?}", char::from(t.as_byte())),
    };
    BundleError::UnsupportedEntry { path, kind }
}

fn require_type(path: &str, got: tar::EntryType, want: tar::EntryType) -> Result<(), BundleError> {
    if got == want {
        Ok(())
    } else {
        Err(unsupported(path.to_owned(), got))
    }
}

fn check(a: &Artifact, size: u64, sha: &str) -> Result<(), BundleError> {
    if size == a.size && sha == a.sha256 {
        Ok(())
    } else {
        Err(BundleError::Mismatch {
            name: a.name.clone(),
            expected: a.sha256.clone(),
            got: sha.to_owned(),
            expected_size: a.size,
            got_size: size,
        })
    }
}

/// The entry's path, normalized (no trailing `/`), refusing anything that
/// could leave the destination.
fn entry_path<R: Read>(entry: &tar::Entry<'_, R>) -> Result<String, BundleError> {
    let raw = entry.path_bytes();
    let s = std::str::from_utf8(&raw)
        .map_err(|_| BundleError::UnsafePath {
            path: String::from_utf8_lossy(&raw).into_owned(),
            reason: "not UTF-8",
        })?
        .to_owned();
    let trimmed = s.trim_end_matches('/');
    if trimmed.is_empty() {
        return Err(BundleError::UnsafePath {
            path: s,
            reason: "empty path",
        });
    }
    if s.starts_with('/') {
        return Err(BundleError::UnsafePath {
            path: s,
            reason: "absolute path",
        });
    }
    if s.contains('\0') || s.contains("//") {
        return Err(BundleError::UnsafePath {
            path: s,
            reason: "malformed path",
        });
    }
    // Split by hand: Path::components() silently drops `.` components.
    if trimmed.split('/').any(|c| c == "." || c == "..") {
        return Err(BundleError::UnsafePath {
            path: s,
            reason: "contains . or .. components",
        });
    }
    Ok(trimmed.to_owned())
}

fn make_dir(path: &Path) -> Result<(), BundleError> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .mode(0o755)
        .create(path)
        .map_err(io_err("create directory", path))
}

fn write_new(path: &Path, mode: u32) -> Result<std::fs::File, BundleError> {
    // create_new: never write through a path that already exists (a link,
    // or a file of an earlier entry).
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(io_err("create", path))
}

/// Copy one entry into a new file, hashing it and leaving zero blocks as
/// holes. An artifact may not exceed its manifest size (`limit`: the
/// artifact and the bytes of it already written): a lying bundle cannot
/// fill the disk.
fn write_entry<R: Read>(
    reader: &mut R,
    path: &Path,
    mode: u32,
    limit: Option<(&Artifact, u64)>,
) -> Result<(u64, String), BundleError> {
    let file = write_new(path, mode)?;
    let mut w = SparseWriter::new(file);
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = reader.read(&mut buf).map_err(BundleError::Stream)?;
        if n == 0 {
            break;
        }
        if let Some((a, before)) = limit {
            let got_size = before.saturating_add(w.len + n as u64);
            if got_size > a.size {
                return Err(BundleError::Mismatch {
                    name: a.name.clone(),
                    expected: a.sha256.clone(),
                    got: "(not computed: too long)".into(),
                    expected_size: a.size,
                    got_size,
                });
            }
        }
        w.write(&buf[..n]).map_err(io_err("write", path))?;
    }
    w.finish().map_err(io_err("write", path))
}

/// Copy a file to a new file `dst`, leaving zero blocks as holes; returns
/// its size and sha256.
pub fn copy_sparse(src: &Path, dst: &Path) -> Result<(u64, String), BundleError> {
    let mut file = std::fs::File::open(src).map_err(io_err("open", src))?;
    let mode = file
        .metadata()
        .map_err(io_err("stat", src))?
        .permissions()
        .mode();
    write_entry(&mut file, dst, digest::normalized_file_mode(mode), None)
}

/// Block size below which zero runs are written rather than skipped.
const HOLE_BLOCK: usize = 4096;
static ZEROS: [u8; HOLE_BLOCK] = [0; HOLE_BLOCK];

/// Writeback is started every this many bytes, so the final fsync finds
/// little left to write.
const WRITEBACK_STEP: u64 = 16 << 20;

/// Writes a stream at increasing offsets, skipping all-zero aligned blocks
/// so they become holes, and hashing everything. Whole blocks are written
/// straight from the caller's buffer; only a partial block is kept back.
struct SparseWriter {
    file: std::fs::File,
    hasher: Hasher,
    /// Bytes received so far.
    len: u64,
    /// Offset up to which writeback has been started.
    flushed: u64,
    /// A partial block starting at offset `len - pending.len()`.
    pending: Vec<u8>,
}

impl SparseWriter {
    fn new(file: std::fs::File) -> SparseWriter {
        SparseWriter {
            file,
            hasher: Hasher::new(),
            len: 0,
            flushed: 0,
            pending: Vec::with_capacity(HOLE_BLOCK),
        }
    }

    fn write(&mut self, mut data: &[u8]) -> io::Result<()> {
        self.hasher.update(data);
        let mut offset = self.len - self.pending.len() as u64;
        self.len += data.len() as u64;
        if !self.pending.is_empty() {
            let take = (HOLE_BLOCK - self.pending.len()).min(data.len());
            self.pending.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.pending.len() < HOLE_BLOCK {
                return Ok(());
            }
            write_blocks(&self.file, &self.pending, offset)?;
            self.pending.clear();
            offset += HOLE_BLOCK as u64;
        }
        let whole = data.len() / HOLE_BLOCK * HOLE_BLOCK;
        write_blocks(&self.file, &data[..whole], offset)?;
        self.pending.extend_from_slice(&data[whole..]);
        let written = self.len - self.pending.len() as u64;
        if written - self.flushed >= WRITEBACK_STEP {
            start_writeback(&self.file, self.flushed, written - self.flushed);
            self.flushed = written;
        }
        Ok(())
    }

    fn finish(self) -> io::Result<(u64, String)> {
        let offset = self.len - self.pending.len() as u64;
        write_blocks(&self.file, &self.pending, offset)?;
        // Trailing holes need the length set explicitly.
        self.file.set_len(self.len)?;
        self.file.sync_all()?;
        Ok((self.len, self.hasher.finish_hex()))
    }
}

/// Write `data` at `offset`, skipping all-zero blocks and coalescing runs
/// of non-zero blocks into single writes.
fn write_blocks(file: &std::fs::File, data: &[u8], offset: u64) -> io::Result<()> {
    let mut run_start: Option<usize> = None;
    let mut off = 0;
    while off < data.len() {
        let end = (off + HOLE_BLOCK).min(data.len());
        let zero = data[off..end] == ZEROS[..end - off];
        match (zero, run_start) {
            (false, None) => run_start = Some(off),
            (true, Some(s)) => {
                file.write_all_at(&data[s..off], offset + s as u64)?;
                run_start = None;
            }
            _ => {}
        }
        off = end;
    }
    if let Some(s) = run_start {
        file.write_all_at(&data[s..], offset + s as u64)?;
    }
    Ok(())
}

/// Ask the kernel to start writing `[offset, offset+len)` back now
/// (asynchronously), overlapping disk writes with the download instead of
/// leaving them all to the final fsync. Best effort: errors surface at fsync.
fn start_writeback(file: &std::fs::File, offset: u64, len: u64) {
    use std::os::fd::AsRawFd;
    let (Ok(off), Ok(n)) = (i64::try_from(offset), i64::try_from(len)) else {
        return;
    };
    // SAFETY: sync_file_range only reads its integer arguments; the fd is
    // owned by `file` and stays open for the duration of the call.
    unsafe {
        libc::sync_file_range(file.as_raw_fd(), off, n, libc::SYNC_FILE_RANGE_WRITE);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sparse_writer_keeps_content_and_makes_holes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let file = std::fs::File::create(&path).unwrap();
        let mut w = SparseWriter::new(file);
        let mut data = vec![0u8; 8 << 20];
        data[5000] = 1;
        data[(3 << 20) + 7] = 2;
        for chunk in data.chunks(333_333) {
            w.write(chunk).unwrap();
        }
        w.write(&[0u8; 10]).unwrap();
        data.extend_from_slice(&[0u8; 10]);
        let (len, sha) = w.finish().unwrap();
        assert_eq!(len, data.len() as u64);
        assert_eq!(sha, digest::sha256_bytes(&data));
        assert_eq!(std::fs::read(&path).unwrap(), data);
        use std::os::unix::fs::MetadataExt;
        let allocated = std::fs::metadata(&path).unwrap().blocks() * 512;
        assert!(
            allocated < 1 << 20,
            "expected holes, {allocated} bytes allocated"
        );
    }
}
