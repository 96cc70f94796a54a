//! Moving installed bundles between machines: `banger image export` and
//! `banger image import`.
//!
//! An **export archive** is a plain (uncompressed) tar:
//!
//! ```text
//! banger-export.json          always first: format_version + one entry per bundle
//! kernel-<name>.tar.zst       catalog-format bundles, in the order the index lists them
//! image-<name>.tar.zst
//! ```
//!
//! Each bundle inside is byte for byte what a catalog serves (and what
//! `bundle::pack` writes), so it can also be uploaded to a mirror as is.
//! Import also takes a single catalog bundle (a zstd stream) in place of an
//! archive.
//!
//! Import trusts nothing: the index is bounded and validated, every bundle
//! entry must be the next one the index names with the size it states, its
//! bytes must hash to the index's sha256, and each bundle is unpacked with
//! the same checks as a pull (manifest first, only listed artifacts, every
//! artifact's size and sha256). Nothing is installed until every bundle of
//! the input verified; an image is installed only when its kernel is in the
//! input or already installed.

use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::bundle::{self, BundleError, BundleMeta, Expect, HashingWriter};
use crate::digest::Hasher;
use crate::manifest::{validate_name, Kind, Manifest};
use crate::progress::{Phase, Progress, ProgressFn};
use crate::store::{Installed, NameLock, Origin, Staging, Store, StoreError};

/// Name of the index, the first entry of an export archive.
pub const INDEX_FILE: &str = "banger-export.json";
/// The archive format this code writes and the newest it reads.
pub const FORMAT_VERSION: u32 = 1;
/// Largest index accepted (it is a few hundred bytes).
const MAX_INDEX_BYTES: u64 = 64 << 10;
/// An archive carries an image and its kernel; a little room for more.
const MAX_BUNDLES: usize = 8;
/// How much of a single bundle is read ahead to find its manifest.
const PEEK_BYTES: usize = 1 << 20;
/// zstd frame magic (little-endian 0xFD2FB528): a single bundle.
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

/// Errors of export and import, naming the bundle or entry involved.
#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    #[error("no {kind} named {name:?} is installed in banger's store")]
    NotInstalled { kind: Kind, name: String },
    #[error("image {image} boots kernel {kernel}, which is not installed; install it first (`banger kernel pull {kernel}` or `banger image build {image}`)")]
    KernelMissing { image: String, kernel: String },
    #[error("installed {kind} {name} no longer matches its manifest ({reason}); reinstall it (`banger {kind} delete {name}`, then pull or build it)")]
    Damaged {
        kind: Kind,
        name: String,
        reason: String,
    },
    #[error("cannot pack {kind} {name}: {source}")]
    Pack {
        kind: Kind,
        name: String,
        source: Box<BundleError>,
    },
    #[error("cannot {op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("cannot write the export archive: {0}")]
    Write(#[source] io::Error),
    #[error("{source_name} is neither a banger export archive nor a bundle: {reason}")]
    NotAnArchive { source_name: String, reason: String },
    #[error("{source_name}: invalid {INDEX_FILE}: {reason}")]
    BadIndex { source_name: String, reason: String },
    #[error("{source_name}: export format {found} is newer than this banger reads ({FORMAT_VERSION}): upgrade banger")]
    TooNew { source_name: String, found: u64 },
    #[error("{source_name}: expected entry {expected:?}, found {found:?}")]
    UnexpectedEntry {
        source_name: String,
        expected: String,
        found: String,
    },
    #[error("{source_name}: {file} is {got} bytes, the index says {expected}")]
    EntrySize {
        source_name: String,
        file: String,
        expected: u64,
        got: u64,
    },
    #[error("{source_name}: {file} has sha256 {got}, the index says {expected}")]
    Checksum {
        source_name: String,
        file: String,
        expected: String,
        got: String,
    },
    #[error("{source_name}: bundle {file} is invalid: {source}")]
    Bundle {
        source_name: String,
        file: String,
        source: Box<BundleError>,
    },
    #[error("{source_name}: image {image} needs kernel {kernel}, which is neither in the input nor installed; export it from a machine that has it (`banger image export` includes the kernel) or `banger kernel pull {kernel}` first")]
    NeedsKernel {
        source_name: String,
        image: String,
        kernel: String,
    },
    #[error("{source_name}: {reason}")]
    Stream { source_name: String, reason: String },
    #[error("{kind} {name}: {reason}")]
    Refused {
        kind: Kind,
        name: String,
        reason: String,
    },
    #[error("cannot download {url}: {reason}")]
    Download { url: String, reason: String },
    #[error("{url} answered HTTP {status}")]
    Status { url: String, status: u16 },
    #[error("import task failed: {0}")]
    Task(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Asked before a bundle of the input is unpacked: may this kind and name
/// be installed here? (The daemon refuses names registered from host files.)
pub type AdmitFn<'a> = &'a Admit;

/// The admission check itself (see [`AdmitFn`]).
pub type Admit = dyn Fn(Kind, &str) -> Result<(), String> + Send + Sync;

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> TransferError + 'a {
    move |source| TransferError::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

/// The index of an export archive (`banger-export.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Index {
    pub format_version: u32,
    pub bundles: Vec<IndexEntry>,
}

/// One bundle of an export archive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IndexEntry {
    pub kind: Kind,
    pub name: String,
    /// Its entry in the archive: `<kind>-<name>.tar.zst`.
    pub file: String,
    /// Bytes of the bundle (what a catalog entry's `size` would say).
    pub size: u64,
    /// sha256 of the bundle (what a catalog entry's `sha256` would say).
    pub sha256: String,
}

/// The archive entry name of a bundle.
pub fn bundle_file_name(kind: Kind, name: &str) -> String {
    format!("{kind}-{name}.tar.zst")
}

fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

impl Index {
    /// Parse and validate index bytes; the format version is read first so
    /// a newer archive says "upgrade banger".
    pub fn from_json(bytes: &[u8], source_name: &str) -> Result<Index, TransferError> {
        let bad = |reason: String| TransferError::BadIndex {
            source_name: source_name.to_owned(),
            reason,
        };
        let value: serde_json::Value =
            serde_json::from_slice(bytes).map_err(|e| bad(e.to_string()))?;
        let found = value
            .get("format_version")
            .and_then(serde_json::Value::as_u64)
            .ok_or_else(|| bad("no numeric format_version".into()))?;
        if found > u64::from(FORMAT_VERSION) {
            return Err(TransferError::TooNew {
                source_name: source_name.to_owned(),
                found,
            });
        }
        let index: Index = serde_json::from_value(value).map_err(|e| bad(e.to_string()))?;
        index.validate().map_err(bad)?;
        Ok(index)
    }

    fn validate(&self) -> Result<(), String> {
        if self.bundles.is_empty() || self.bundles.len() > MAX_BUNDLES {
            return Err(format!(
                "{} bundles listed (1 to {MAX_BUNDLES} allowed)",
                self.bundles.len()
            ));
        }
        let mut seen = std::collections::HashSet::new();
        for e in &self.bundles {
            validate_name(&e.name).map_err(|err| err.to_string())?;
            if e.file != bundle_file_name(e.kind, &e.name) {
                return Err(format!(
                    "entry {:?} must be named {:?}",
                    e.file,
                    bundle_file_name(e.kind, &e.name)
                ));
            }
            if !is_sha256_hex(&e.sha256) {
                return Err(format!("{}: sha256 is not 64 lowercase hex digits", e.file));
            }
            if !seen.insert((e.kind, e.name.clone())) {
                return Err(format!("{} {} is listed twice", e.kind, e.name));
            }
        }
        Ok(())
    }
}

/// What an export wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exported {
    pub index: Index,
    /// Bytes of the whole archive.
    pub size: u64,
}

/// The packed bundles of an export, ready to be streamed as an archive.
#[derive(Debug)]
pub struct ExportPlan {
    index: Index,
    files: Vec<PathBuf>,
    _scratch: tempfile::TempDir,
}

impl ExportPlan {
    /// The index the archive starts with.
    pub fn index(&self) -> &Index {
        &self.index
    }

    /// Exact byte size of the archive [`ExportPlan::write`] produces.
    pub fn archive_size(&self) -> u64 {
        let index_len = index_json(&self.index).len() as u64;
        let entry = |len: u64| 512 + len.div_ceil(512) * 512;
        entry(index_len)
            + self
                .index
                .bundles
                .iter()
                .map(|b| entry(b.size))
                .sum::<u64>()
            + 1024
    }

    /// Write the archive to `out`.
    pub fn write(&self, out: impl Write) -> Result<Exported, TransferError> {
        let mut counted = HashingWriter {
            inner: out,
            hasher: Hasher::new(),
            count: 0,
        };
        {
            let mut tar = tar::Builder::new(&mut counted);
            let json = index_json(&self.index);
            append(&mut tar, INDEX_FILE, json.len() as u64, &json[..])?;
            for (entry, path) in self.index.bundles.iter().zip(&self.files) {
                let file = std::fs::File::open(path).map_err(io_err("read", path))?;
                append(&mut tar, &entry.file, entry.size, file)?;
            }
            tar.finish().map_err(TransferError::Write)?;
        }
        counted.flush().map_err(TransferError::Write)?;
        Ok(Exported {
            index: self.index.clone(),
            size: counted.count,
        })
    }
}

fn index_json(index: &Index) -> Vec<u8> {
    let mut out = serde_json::to_vec_pretty(index).expect("index serializes");
    out.push(b'\n');
    out
}

fn append<W: Write, R: Read>(
    tar: &mut tar::Builder<W>,
    path: &str,
    size: u64,
    data: R,
) -> Result<(), TransferError> {
    let mut header = tar::Header::new_ustar();
    header.set_entry_type(tar::EntryType::Regular);
    header.set_mode(0o644);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    header.set_size(size);
    tar.append_data(&mut header, path, data)
        .map_err(TransferError::Write)
}

fn installed(store: &Store, kind: Kind, name: &str) -> Result<Installed, TransferError> {
    store
        .get(kind, name)?
        .ok_or_else(|| TransferError::NotInstalled {
            kind,
            name: name.to_owned(),
        })
}

/// Pack installed image `image` and its kernel into catalog-format bundles
/// under a scratch directory in `scratch_parent` (removed when the plan is
/// dropped). Each artifact is re-measured while packing and must match the
/// installed manifest, so an export never carries a store file that
/// changed since it was verified.
pub fn plan_export(
    store: &Store,
    image: &str,
    scratch_parent: &Path,
    progress: ProgressFn<'_>,
) -> Result<ExportPlan, TransferError> {
    let img = installed(store, Kind::Image, image)?;
    let kernel_name = img
        .manifest
        .kernel_ref
        .clone()
        .expect("a validated image manifest names its kernel");
    let kernel =
        store
            .get(Kind::Kernel, &kernel_name)?
            .ok_or_else(|| TransferError::KernelMissing {
                image: image.to_owned(),
                kernel: kernel_name.clone(),
            })?;
    std::fs::create_dir_all(scratch_parent).map_err(io_err("create", scratch_parent))?;
    let scratch = tempfile::Builder::new()
        .prefix(".export-")
        .tempdir_in(scratch_parent)
        .map_err(io_err("create a scratch directory in", scratch_parent))?;
    let mut bundles = Vec::new();
    let mut files = Vec::new();
    for inst in [&kernel, &img] {
        let m = &inst.manifest;
        progress(Progress::note(
            Phase::Pack,
            format!("packing {} {} ({} bytes)", m.kind, m.name, m.total_size()),
        ));
        let file = bundle_file_name(m.kind, &m.name);
        let out = scratch.path().join(&file);
        let packed =
            bundle::pack(&inst.dir, &meta_of(m), &out).map_err(|source| TransferError::Pack {
                kind: m.kind,
                name: m.name.clone(),
                source: Box::new(source),
            })?;
        if packed.manifest != *m {
            return Err(TransferError::Damaged {
                kind: m.kind,
                name: m.name.clone(),
                reason: describe_difference(m, &packed.manifest),
            });
        }
        bundles.push(IndexEntry {
            kind: m.kind,
            name: m.name.clone(),
            file,
            size: packed.size,
            sha256: packed.sha256,
        });
        files.push(out);
    }
    Ok(ExportPlan {
        index: Index {
            format_version: FORMAT_VERSION,
            bundles,
        },
        files,
        _scratch: scratch,
    })
}

fn meta_of(m: &Manifest) -> BundleMeta {
    BundleMeta {
        kind: m.kind,
        name: m.name.clone(),
        version: m.version.clone(),
        created: m.created,
        recipe_hash: m.recipe_hash.clone(),
        kernel_ref: m.kernel_ref.clone(),
        kernel_release: m.kernel_release.clone(),
    }
}

fn describe_difference(want: &Manifest, got: &Manifest) -> String {
    for a in &want.artifacts {
        match got.artifact(&a.name) {
            None => return format!("{} is missing", a.name),
            Some(b) if b != a => {
                return format!(
                    "{} is {} bytes sha256 {}, the manifest says {} bytes sha256 {}",
                    a.name, b.size, b.sha256, a.size, a.sha256
                )
            }
            Some(_) => {}
        }
    }
    "its files differ from the manifest".into()
}

/// One bundle an import installed (or found already installed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportedBundle {
    pub installed: Installed,
    /// sha256 of the bundle bytes.
    pub bundle_sha256: String,
    /// False when the identical bundle was already installed.
    pub changed: bool,
}

/// Where an import's bytes come from, for the origin record and errors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A file the user named (kept as given, for display).
    File(String),
    /// A URL it was downloaded from.
    Url(String),
}

impl Source {
    fn name(&self) -> &str {
        match self {
            Source::File(s) | Source::Url(s) => s,
        }
    }

    fn origin(&self, bundle_sha256: String) -> Origin {
        match self {
            Source::File(path) => Origin::File {
                path: path.clone(),
                bundle_sha256,
            },
            Source::Url(url) => Origin::Catalog {
                url: url.clone(),
                bundle_sha256,
            },
        }
    }
}

/// A verified bundle waiting in its staging directory for the commit.
struct Staged {
    lock: NameLock,
    staging: Staging,
    manifest: Manifest,
    sha256: String,
}

/// Read an export archive or a single bundle from `reader`, verify every
/// bundle in it and install them (kernels first). Nothing is installed
/// unless all of it verified. Reads `reader` to its end.
pub fn import<R: Read>(
    reader: R,
    store: &Store,
    source: &Source,
    admit: AdmitFn<'_>,
    progress: ProgressFn<'_>,
) -> Result<Vec<ImportedBundle>, TransferError> {
    let ctx = Ctx {
        store,
        source_name: source.name(),
        admit,
        progress,
    };
    let name = source.name();
    let store = ctx.store;
    let mut reader = reader;
    let mut head = Vec::with_capacity(PEEK_BYTES);
    (&mut reader)
        .take(PEEK_BYTES as u64)
        .read_to_end(&mut head)
        .map_err(|e| stream_err(name, e))?;
    let staged = if head.starts_with(&ZSTD_MAGIC) {
        vec![import_bundle(&head, reader, &ctx)?]
    } else if head.len() >= 262 && &head[257..262] == b"ustar" {
        import_archive(io::Cursor::new(head).chain(reader), &ctx)?
    } else {
        return Err(TransferError::NotAnArchive {
            source_name: name.to_owned(),
            reason: if head.is_empty() {
                "it is empty".into()
            } else {
                "it starts with neither a tar header nor a zstd frame".into()
            },
        });
    };
    for s in &staged {
        if let Some(kernel) = &s.manifest.kernel_ref {
            let in_input = staged
                .iter()
                .any(|k| k.manifest.kind == Kind::Kernel && &k.manifest.name == kernel);
            if !in_input && store.get(Kind::Kernel, kernel)?.is_none() {
                return Err(TransferError::NeedsKernel {
                    source_name: name.to_owned(),
                    image: s.manifest.name.clone(),
                    kernel: kernel.clone(),
                });
            }
        }
    }
    let mut staged = staged;
    staged.sort_by_key(|s| s.manifest.kind != Kind::Kernel);
    let mut out = Vec::new();
    for s in staged {
        let (kind, bundle_name) = (s.manifest.kind, s.manifest.name.clone());
        if let Some(current) = store.get(kind, &bundle_name)? {
            let same = match current.origin.as_ref().map(|o| &o.origin) {
                Some(
                    Origin::Catalog { bundle_sha256, .. }
                    | Origin::Build { bundle_sha256 }
                    | Origin::File { bundle_sha256, .. },
                ) => *bundle_sha256 == s.sha256,
                _ => false,
            };
            if same && current.manifest == s.manifest {
                progress(Progress::note(
                    Phase::Install,
                    format!("{kind} {bundle_name} is already installed with the same bytes"),
                ));
                out.push(ImportedBundle {
                    installed: current,
                    bundle_sha256: s.sha256,
                    changed: false,
                });
                continue;
            }
        }
        progress(Progress::note(
            Phase::Install,
            format!("installing {kind} {bundle_name}"),
        ));
        let installed = store.commit(&s.lock, s.staging, source.origin(s.sha256.clone()))?;
        out.push(ImportedBundle {
            installed,
            bundle_sha256: s.sha256,
            changed: true,
        });
    }
    Ok(out)
}

/// Download `url` (resuming a dropped connection, see [`crate::fetch`]) and
/// [`import`] it while it streams in: nothing is written but the staging
/// directories, and nothing is installed unless all of it verified.
#[cfg(feature = "pull")]
pub async fn import_url(
    url: &str,
    store: &Store,
    admit: std::sync::Arc<Admit>,
    progress: std::sync::Arc<dyn Fn(Progress) + Send + Sync>,
) -> Result<Vec<ImportedBundle>, TransferError> {
    let download_err = |reason: String| TransferError::Download {
        url: url.to_owned(),
        reason,
    };
    let client = crate::pull::http_client().map_err(|e| download_err(e.to_string()))?;
    let response = client
        .get(url)
        .send()
        .await
        .map_err(|e| download_err(crate::pull::chain(&e)))?;
    if !response.status().is_success() {
        return Err(TransferError::Status {
            url: url.to_owned(),
            status: response.status().as_u16(),
        });
    }
    let total = response.content_length();
    let mut fetch = crate::fetch::Fetch::new(client, url.to_owned(), response);
    let (tx, reader) = crate::fetch::pipe();
    let (store2, source, p2) = (store.clone(), Source::Url(url.to_owned()), progress.clone());
    let task = tokio::task::spawn_blocking(move || import(reader, &store2, &source, &*admit, &*p2));
    let mut sender = Some(tx);
    let mut batch = Vec::new();
    let mut batch_len = 0usize;
    let mut reported = 0u64;
    let downloaded = loop {
        match fetch.chunk().await {
            Ok(Some(chunk)) => {
                batch_len += chunk.len();
                batch.push(chunk);
                if batch_len >= 512 << 10 {
                    batch_len = 0;
                    let full = std::mem::take(&mut batch);
                    match &sender {
                        Some(tx) if tx.send(full).await.is_ok() => {}
                        // The importer stopped (it refused the input): its
                        // error says why; downloading more would not help.
                        _ => break Ok(()),
                    }
                }
                if fetch.received() - reported >= 4 << 20 {
                    reported = fetch.received();
                    progress(Progress::bytes(
                        Phase::Download,
                        url.to_owned(),
                        reported,
                        total,
                    ));
                }
            }
            Ok(None) => {
                if let Some(tx) = &sender {
                    let _ = tx.send(std::mem::take(&mut batch)).await;
                }
                progress(Progress::bytes(
                    Phase::Download,
                    url.to_owned(),
                    fetch.received(),
                    total,
                ));
                break Ok(());
            }
            Err(broken) => {
                break Err(download_err(format!(
                    "failed after {} bytes ({} resumes): {}",
                    fetch.received(),
                    broken.resumes,
                    broken.reason
                )))
            }
        }
    };
    sender.take();
    let imported = task.await.map_err(|e| TransferError::Task(e.to_string()))?;
    // A broken download explains whatever the importer then said.
    downloaded?;
    imported
}

fn stream_err(source_name: &str, e: io::Error) -> TransferError {
    TransferError::Stream {
        source_name: source_name.to_owned(),
        reason: e.to_string(),
    }
}

/// What every step of one import needs.
struct Ctx<'a> {
    store: &'a Store,
    source_name: &'a str,
    admit: AdmitFn<'a>,
    progress: ProgressFn<'a>,
}

fn import_bundle<R: Read>(head: &[u8], rest: R, ctx: &Ctx<'_>) -> Result<Staged, TransferError> {
    let source_name = ctx.source_name;
    let manifest = bundle::manifest_from_prefix(head).map_err(|source| TransferError::Bundle {
        source_name: source_name.to_owned(),
        file: source_name.to_owned(),
        source: Box::new(source),
    })?;
    let reader = io::Cursor::new(head).chain(rest);
    stage(
        reader,
        None,
        manifest.kind,
        &manifest.name,
        source_name,
        ctx,
    )
}

fn import_archive<R: Read>(reader: R, ctx: &Ctx<'_>) -> Result<Vec<Staged>, TransferError> {
    let source_name = ctx.source_name;
    let mut archive = tar::Archive::new(reader);
    let mut entries = archive.entries().map_err(|e| stream_err(source_name, e))?;
    let unexpected = |expected: &str, found: String| TransferError::UnexpectedEntry {
        source_name: source_name.to_owned(),
        expected: expected.to_owned(),
        found,
    };
    let entry_name =
        |e: &tar::Entry<'_, _>| -> String { String::from_utf8_lossy(&e.path_bytes()).into_owned() };
    let mut first = match entries.next() {
        Some(e) => e.map_err(|e| stream_err(source_name, e))?,
        None => return Err(unexpected(INDEX_FILE, "the end of the archive".into())),
    };
    if entry_name(&first) != INDEX_FILE
        || first.header().entry_type() != tar::EntryType::Regular
        || first.size() > MAX_INDEX_BYTES
    {
        return Err(unexpected(
            INDEX_FILE,
            format!("{} ({} bytes)", entry_name(&first), first.size()),
        ));
    }
    let mut json = Vec::new();
    (&mut first)
        .take(MAX_INDEX_BYTES)
        .read_to_end(&mut json)
        .map_err(|e| stream_err(source_name, e))?;
    drop(first);
    let index = Index::from_json(&json, source_name)?;
    let mut staged = Vec::new();
    for want in &index.bundles {
        let entry = match entries.next() {
            Some(e) => e.map_err(|e| stream_err(source_name, e))?,
            None => return Err(unexpected(&want.file, "the end of the archive".into())),
        };
        if entry_name(&entry) != want.file || entry.header().entry_type() != tar::EntryType::Regular
        {
            return Err(unexpected(&want.file, entry_name(&entry)));
        }
        if entry.size() != want.size {
            return Err(TransferError::EntrySize {
                source_name: source_name.to_owned(),
                file: want.file.clone(),
                expected: want.size,
                got: entry.size(),
            });
        }
        staged.push(stage(
            entry,
            Some(want),
            want.kind,
            &want.name,
            &want.file,
            ctx,
        )?);
    }
    if let Some(extra) = entries.next() {
        let found = match extra {
            Ok(e) => entry_name(&e),
            Err(e) => return Err(stream_err(source_name, e)),
        };
        return Err(unexpected("the end of the archive", found));
    }
    Ok(staged)
}

/// Unpack one bundle stream into a staging directory of its locked name,
/// verifying it (and, for archive entries, its size and sha256 against the
/// index).
fn stage<R: Read>(
    reader: R,
    want: Option<&IndexEntry>,
    kind: Kind,
    name: &str,
    file: &str,
    ctx: &Ctx<'_>,
) -> Result<Staged, TransferError> {
    let Ctx {
        store,
        source_name,
        admit,
        progress,
    } = *ctx;
    admit(kind, name).map_err(|reason| TransferError::Refused {
        kind,
        name: name.to_owned(),
        reason,
    })?;
    let lock = store.lock(kind, name, || {
        progress(Progress::note(
            Phase::Wait,
            format!("waiting for another writer of {kind} {name}"),
        ))
    })?;
    let staging = store.staging(&lock)?;
    progress(Progress::bytes(
        Phase::Unpack,
        format!("verifying {kind} {name}"),
        0,
        want.map(|w| w.size),
    ));
    let mut counting = CountingReader {
        inner: reader,
        hasher: Hasher::new(),
        count: 0,
        reported: 0,
        total: want.map(|w| w.size),
        message: format!("verifying {kind} {name}"),
        progress,
    };
    let expect = Expect {
        kind,
        name: Some(name.to_owned()),
    };
    let unpacked = bundle::unpack(&mut counting, staging.path(), &expect);
    // Whatever the unpacker left unread still counts toward the checksum.
    io::copy(&mut counting, &mut io::sink()).map_err(|e| stream_err(source_name, e))?;
    let got = counting.hasher.finish_hex();
    if let Some(w) = want {
        if got != w.sha256 {
            return Err(TransferError::Checksum {
                source_name: source_name.to_owned(),
                file: file.to_owned(),
                expected: w.sha256.clone(),
                got,
            });
        }
    }
    let manifest = unpacked.map_err(|source| TransferError::Bundle {
        source_name: source_name.to_owned(),
        file: file.to_owned(),
        source: Box::new(source),
    })?;
    Ok(Staged {
        lock,
        staging,
        manifest,
        sha256: got,
    })
}

/// Hashes and counts what is read through it, reporting byte progress.
struct CountingReader<'a, R> {
    inner: R,
    hasher: Hasher,
    count: u64,
    reported: u64,
    total: Option<u64>,
    message: String,
    progress: ProgressFn<'a>,
}

impl<R: Read> Read for CountingReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        if self.count - self.reported >= 4 << 20 || (n == 0 && self.count != self.reported) {
            self.reported = self.count;
            (self.progress)(Progress::bytes(
                Phase::Unpack,
                self.message.clone(),
                self.count,
                self.total,
            ));
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(kind: Kind, name: &str) -> IndexEntry {
        IndexEntry {
            kind,
            name: name.into(),
            file: bundle_file_name(kind, name),
            size: 10,
            sha256: "ab".repeat(32),
        }
    }

    fn json(index: &Index) -> Vec<u8> {
        serde_json::to_vec(index).unwrap()
    }

    #[test]
    fn index_validation_refuses_what_could_mislead_the_import() {
        let good = Index {
            format_version: 1,
            bundles: vec![entry(Kind::Kernel, "k1"), entry(Kind::Image, "i1")],
        };
        Index::from_json(&json(&good), "x").unwrap();

        let mut renamed = good.clone();
        renamed.bundles[0].file = "../etc/passwd".into();
        let err = Index::from_json(&json(&renamed), "x").unwrap_err();
        assert!(err.to_string().contains("must be named"), "{err}");

        let mut bad_name = good.clone();
        bad_name.bundles[1].name = "../x".into();
        assert!(Index::from_json(&json(&bad_name), "x").is_err());

        let mut twice = good.clone();
        twice.bundles.push(entry(Kind::Image, "i1"));
        let err = Index::from_json(&json(&twice), "x").unwrap_err();
        assert!(err.to_string().contains("listed twice"), "{err}");

        let mut bad_sha = good.clone();
        bad_sha.bundles[0].sha256 = "AB".repeat(32);
        assert!(Index::from_json(&json(&bad_sha), "x").is_err());

        let empty = Index {
            format_version: 1,
            bundles: vec![],
        };
        assert!(Index::from_json(&json(&empty), "x").is_err());

        let newer = br#"{"format_version": 2, "bundles": [], "signature": "x"}"#;
        let err = Index::from_json(newer, "f.tar").unwrap_err();
        assert!(err.to_string().contains("upgrade banger"), "{err}");

        let unknown = br#"{"format_version": 1, "bundles": [], "extra": 1}"#;
        assert!(Index::from_json(unknown, "x").is_err());
    }
}
