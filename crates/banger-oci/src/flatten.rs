//! Layer flattening: each layer tar is applied, in order, to an in-memory
//! tree whose file contents live in a private content directory. Nothing is
//! ever extracted by path on the host, so no entry can write outside the
//! build directory whatever it claims; hostile entries are refused anyway,
//! with the layer digest and the path, because an image that carries them
//! is broken or malicious.
//!
//! Rules (OCI image spec, layer.md):
//! - `.wh.NAME` deletes NAME (and everything under it) from lower layers;
//! - `.wh..wh..opq` in DIR deletes DIR's lower-layer children;
//! - whiteouts never hide entries of their own layer and never appear in
//!   the result; other `.wh..wh.*` names (aufs bookkeeping) are ignored;
//! - a directory over a directory keeps the children and takes the new
//!   metadata; anything else replaces what was there.
//!
//! Refused: absolute paths, `..`, a path through a symlink or a file, hard
//! links that are absolute, leave the tree or point at something that is
//! not a regular file, device nodes, entries above the size limits, unknown
//! entry types.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

/// Limits on what one image may contain.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest single file.
    pub max_file_bytes: u64,
    /// Sum of all file contents written (before whiteouts).
    pub max_total_bytes: u64,
    /// Entries across all layers.
    pub max_entries: u64,
    /// Largest extended attribute value.
    pub max_xattr_bytes: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_file_bytes: 16 << 30,
            max_total_bytes: 64 << 30,
            max_entries: 4_000_000,
            max_xattr_bytes: 64 << 10,
        }
    }
}

/// Why a layer was refused; every variant names the layer and the path.
#[derive(Debug, thiserror::Error)]
pub enum FlattenError {
    #[error("layer {layer}: entry {path:?} has an absolute path; refusing the image")]
    Absolute { layer: String, path: String },
    #[error("layer {layer}: entry {path:?} contains \"..\"; refusing the image")]
    DotDot { layer: String, path: String },
    #[error("layer {layer}: entry {path:?} goes through {via:?}, which is a {what}, not a directory; refusing the image")]
    ThroughNonDir {
        layer: String,
        path: String,
        via: String,
        what: &'static str,
    },
    #[error("layer {layer}: hard link {path:?} -> {target:?}: {reason}; refusing the image")]
    HardLink {
        layer: String,
        path: String,
        target: String,
        reason: &'static str,
    },
    #[error("layer {layer}: entry {path:?} is a device node; container images must not carry devices (banger's init mounts devtmpfs)")]
    Device { layer: String, path: String },
    #[error("layer {layer}: entry {path:?} is too big: {reason}")]
    TooBig {
        layer: String,
        path: String,
        reason: String,
    },
    #[error("layer {layer}: entry {path:?} has unsupported tar type {kind:?}")]
    Unsupported {
        layer: String,
        path: String,
        kind: u8,
    },
    #[error("layer {layer}: {reason}")]
    Corrupt { layer: String, reason: String },
    #[error("layer {layer}: digest mismatch: expected {expected}, got {actual} (the cached copy was removed; pull again)")]
    Digest {
        layer: String,
        expected: String,
        actual: String,
    },
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Ownership, mode and attributes of a tree entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Meta {
    /// Permission bits incl. setuid/setgid/sticky (`& 0o7777`).
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub mtime: u64,
    /// `(name, value)`, e.g. `security.capability`.
    pub xattrs: Vec<(String, Vec<u8>)>,
}

impl Meta {
    pub fn dir_default() -> Meta {
        Meta {
            mode: 0o755,
            uid: 0,
            gid: 0,
            mtime: 0,
            xattrs: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    Dir,
    /// Index into the inode table (shared by hard links).
    File(usize),
    Symlink(Vec<u8>),
    Fifo,
}

#[derive(Debug, Clone)]
pub struct Node {
    pub kind: Kind,
    /// For files the inode's metadata is authoritative.
    pub meta: Meta,
    /// The layer that last wrote this entry (whiteouts hide only lower ones).
    layer: usize,
}

#[derive(Debug, Clone)]
pub struct Inode {
    pub content: Content,
    pub size: u64,
    pub meta: Meta,
}

/// Where a file's bytes are.
#[derive(Debug, Clone)]
pub enum Content {
    /// A file in the tree's content directory.
    Stored(PathBuf),
    /// Bytes banger adds itself.
    Inline(Vec<u8>),
}

/// The flattened image: paths are `/`-separated byte strings without a
/// leading slash; `""` is the root.
#[derive(Debug)]
pub struct Tree {
    nodes: BTreeMap<Vec<u8>, Node>,
    inodes: Vec<Inode>,
    content_dir: PathBuf,
    limits: Limits,
    written: u64,
    entries: u64,
    layers: usize,
}

/// A reader that hashes what passes through it.
struct HashReader<R> {
    inner: R,
    hash: Sha256,
}

impl<R: Read> Read for HashReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hash.update(&buf[..n]);
        Ok(n)
    }
}

fn hex_digest(h: Sha256) -> String {
    format!("sha256:{}", hex::encode(h.finalize()))
}

fn show(p: &[u8]) -> String {
    String::from_utf8_lossy(p).into_owned()
}

/// A layer to apply: the compressed blob, its digest, and the digest of the
/// uncompressed tar (`diff_id` from the image config) when known.
#[derive(Debug, Clone)]
pub struct LayerInput<'a> {
    pub blob: &'a Path,
    pub digest: &'a str,
    pub diff_id: Option<&'a str>,
}

impl Tree {
    /// An empty tree (root directory 0755 root:root) storing contents in
    /// `content_dir`, which must exist and be private to the caller.
    pub fn new(content_dir: &Path, limits: Limits) -> Tree {
        let mut nodes = BTreeMap::new();
        nodes.insert(
            Vec::new(),
            Node {
                kind: Kind::Dir,
                meta: Meta::dir_default(),
                layer: 0,
            },
        );
        Tree {
            nodes,
            inodes: Vec::new(),
            content_dir: content_dir.to_owned(),
            limits,
            written: 0,
            entries: 0,
            layers: 0,
        }
    }

    pub fn get(&self, path: &str) -> Option<&Node> {
        self.nodes.get(path.trim_start_matches('/').as_bytes())
    }

    pub fn inode(&self, i: usize) -> &Inode {
        &self.inodes[i]
    }

    /// Entries in path order (parents before children), root first.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &Node)> {
        self.nodes.iter().map(|(k, v)| (k.as_slice(), v))
    }

    /// The bytes of a regular file.
    pub fn read_file(&self, path: &str) -> Option<Vec<u8>> {
        match &self.get(path)?.kind {
            Kind::File(i) => match &self.inodes[*i].content {
                Content::Stored(p) => std::fs::read(p).ok(),
                Content::Inline(b) => Some(b.clone()),
            },
            _ => None,
        }
    }

    /// Sum of regular file sizes (each inode once).
    pub fn content_bytes(&self) -> u64 {
        let mut seen = vec![false; self.inodes.len()];
        let mut sum = 0;
        for n in self.nodes.values() {
            if let Kind::File(i) = n.kind {
                if !seen[i] {
                    seen[i] = true;
                    sum += self.inodes[i].size;
                }
            }
        }
        sum
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.len() <= 1
    }

    /// Resolve `path` inside the tree, following symlinks (absolute ones
    /// from the tree's root, never the host's), at most 40 hops. Returns
    /// the canonical tree path, which may not exist yet in its last part.
    pub fn resolve(&self, path: &str) -> Option<Vec<u8>> {
        let mut hops = 0;
        let mut todo: Vec<Vec<u8>> = split(path.as_bytes()).into_iter().rev().collect();
        let mut cur: Vec<Vec<u8>> = Vec::new();
        while let Some(c) = todo.pop() {
            match c.as_slice() {
                b"." => continue,
                b".." => {
                    cur.pop();
                    continue;
                }
                _ => {}
            }
            cur.push(c);
            let key = cur.join(&b'/');
            if let Some(Node {
                kind: Kind::Symlink(target),
                ..
            }) = self.nodes.get(&key)
            {
                hops += 1;
                if hops > 40 {
                    return None;
                }
                cur.pop();
                if target.starts_with(b"/") {
                    cur.clear();
                }
                for part in split(target).into_iter().rev() {
                    todo.push(part);
                }
            }
        }
        Some(cur.join(&b'/'))
    }

    /// Add (or replace) a file that banger supplies, creating missing
    /// parents 0755 root. `path` is resolved through the tree's symlinks, so
    /// `/sbin/init` lands in `/usr/sbin` on a merged-/usr image.
    pub fn put_file(&mut self, path: &str, bytes: &[u8], mode: u32) {
        let key = self.resolve(path).unwrap_or_else(|| norm_simple(path));
        self.ensure_dirs(&key);
        self.remove_subtree(&key, usize::MAX);
        let meta = Meta {
            mode,
            uid: 0,
            gid: 0,
            mtime: 0,
            xattrs: Vec::new(),
        };
        self.inodes.push(Inode {
            content: Content::Inline(bytes.to_vec()),
            size: bytes.len() as u64,
            meta: meta.clone(),
        });
        let layer = self.layers;
        self.nodes.insert(
            key,
            Node {
                kind: Kind::File(self.inodes.len() - 1),
                meta,
                layer,
            },
        );
    }

    /// Add (or replace) a symlink banger supplies.
    pub fn put_symlink(&mut self, path: &str, target: &str) {
        let parent_resolved = match path.rsplit_once('/') {
            Some((dir, name)) => {
                let mut d = self.resolve(dir).unwrap_or_else(|| norm_simple(dir));
                if !d.is_empty() {
                    d.push(b'/');
                }
                d.extend_from_slice(name.as_bytes());
                d
            }
            None => path.as_bytes().to_vec(),
        };
        self.ensure_dirs(&parent_resolved);
        self.remove_subtree(&parent_resolved, usize::MAX);
        let layer = self.layers;
        self.nodes.insert(
            parent_resolved,
            Node {
                kind: Kind::Symlink(target.as_bytes().to_vec()),
                meta: Meta {
                    mode: 0o777,
                    ..Meta::dir_default()
                },
                layer,
            },
        );
    }

    /// Create a directory banger needs (0755 root) when absent.
    pub fn put_dir(&mut self, path: &str) {
        let key = self.resolve(path).unwrap_or_else(|| norm_simple(path));
        self.ensure_dirs(&key);
        let layer = self.layers;
        self.nodes.entry(key).or_insert(Node {
            kind: Kind::Dir,
            meta: Meta::dir_default(),
            layer,
        });
    }

    /// Delete a path banger must not ship (e.g. SSH host keys).
    pub fn remove(&mut self, path: &str) {
        let key = norm_simple(path);
        self.remove_subtree(&key, usize::MAX);
    }

    /// Make every missing ancestor of `key` a directory; existing
    /// non-directory ancestors are replaced (only used for banger's files).
    fn ensure_dirs(&mut self, key: &[u8]) {
        let layer = self.layers;
        for (i, b) in key.iter().enumerate() {
            if *b == b'/' {
                let anc = key[..i].to_vec();
                match self.nodes.get(&anc) {
                    Some(Node {
                        kind: Kind::Dir, ..
                    }) => {}
                    _ => {
                        self.remove_subtree(&anc, usize::MAX);
                        self.nodes.insert(
                            anc,
                            Node {
                                kind: Kind::Dir,
                                meta: Meta::dir_default(),
                                layer,
                            },
                        );
                    }
                }
            }
        }
    }

    /// Remove `key` and everything under it that a layer below `below`
    /// wrote (`usize::MAX`: everything).
    fn remove_subtree(&mut self, key: &[u8], below: usize) {
        if key.is_empty() {
            self.remove_children(key, below);
            return;
        }
        if self.nodes.get(key).is_some_and(|n| n.layer < below) {
            self.nodes.remove(key);
        }
        self.remove_children(key, below);
    }

    fn remove_children(&mut self, key: &[u8], below: usize) {
        let mut prefix = key.to_vec();
        if !prefix.is_empty() {
            prefix.push(b'/');
        }
        let doomed: Vec<Vec<u8>> = self
            .nodes
            .range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .filter(|(k, n)| !k.is_empty() && n.layer < below)
            .map(|(k, _)| k.clone())
            .collect();
        for k in doomed {
            self.nodes.remove(&k);
        }
    }

    /// Apply one layer blob (gzip, zstd or plain tar, recognised by its
    /// magic bytes), verifying the blob's digest and, when given, the
    /// uncompressed tar's `diff_id`.
    pub fn apply_layer(&mut self, input: &LayerInput<'_>) -> Result<(), FlattenError> {
        self.layers += 1;
        let layer = self.layers;
        let name = input.digest.to_owned();
        let file = std::fs::File::open(input.blob).map_err(|source| FlattenError::Io {
            op: "open layer blob",
            path: input.blob.to_owned(),
            source,
        })?;
        let mut outer = std::io::BufReader::with_capacity(
            1 << 20,
            HashReader {
                inner: file,
                hash: Sha256::new(),
            },
        );
        let magic = {
            use std::io::BufRead;
            let buf = outer.fill_buf().map_err(|e| FlattenError::Corrupt {
                layer: name.clone(),
                reason: e.to_string(),
            })?;
            buf[..buf.len().min(4)].to_vec()
        };
        // Decode in a closure so that, whatever fails inside, the blob is
        // still read to its end and its digest checked first: a corrupt
        // cached blob reads as a digest mismatch (and is evicted).
        let diff = (|| -> Result<String, FlattenError> {
            let decoder: Box<dyn Read + '_> = if magic.starts_with(&[0x1f, 0x8b]) {
                Box::new(flate2::read::MultiGzDecoder::new(&mut outer))
            } else if magic.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
                Box::new(
                    zstd::stream::read::Decoder::with_buffer(&mut outer).map_err(|e| {
                        FlattenError::Corrupt {
                            layer: name.clone(),
                            reason: format!("zstd: {e}"),
                        }
                    })?,
                )
            } else {
                Box::new(&mut outer)
            };
            let mut inner = HashReader {
                inner: decoder,
                hash: Sha256::new(),
            };
            {
                let mut archive = tar::Archive::new(&mut inner);
                let entries = archive.entries().map_err(|e| FlattenError::Corrupt {
                    layer: name.clone(),
                    reason: e.to_string(),
                })?;
                for entry in entries {
                    let entry = entry.map_err(|e| FlattenError::Corrupt {
                        layer: name.clone(),
                        reason: format!("reading the tar: {e}"),
                    })?;
                    self.apply_entry(entry, layer, &name)?;
                }
            }
            // The end-of-archive blocks and any padding count towards the digests.
            std::io::copy(&mut inner, &mut std::io::sink()).map_err(|e| FlattenError::Corrupt {
                layer: name.clone(),
                reason: format!("reading past the end of the tar: {e}"),
            })?;
            Ok(hex_digest(inner.hash))
        })();
        std::io::copy(&mut outer, &mut std::io::sink()).map_err(|source| FlattenError::Io {
            op: "read layer blob",
            path: input.blob.to_owned(),
            source,
        })?;
        let blob_digest = hex_digest(outer.into_inner().hash);
        if blob_digest != input.digest {
            return Err(FlattenError::Digest {
                layer: name,
                expected: input.digest.to_owned(),
                actual: blob_digest,
            });
        }
        let diff = diff?;
        if let Some(want) = input.diff_id {
            if diff != want {
                return Err(FlattenError::Digest {
                    layer: name,
                    expected: format!("diff_id {want}"),
                    actual: diff,
                });
            }
        }
        Ok(())
    }

    fn apply_entry<R: Read>(
        &mut self,
        mut entry: tar::Entry<'_, R>,
        layer: usize,
        lname: &str,
    ) -> Result<(), FlattenError> {
        self.entries += 1;
        let raw = entry.path_bytes().into_owned();
        let err_path = show(&raw);
        if self.entries > self.limits.max_entries {
            return Err(FlattenError::TooBig {
                layer: lname.to_owned(),
                path: err_path,
                reason: format!(
                    "the image has more than {} entries",
                    self.limits.max_entries
                ),
            });
        }
        let Some(key) = normalize(&raw, lname)? else {
            // "./" itself: the root's metadata.
            if entry.header().entry_type().is_dir() {
                let meta = self.meta_of(&mut entry, lname, &err_path)?;
                if let Some(root) = self.nodes.get_mut(&Vec::new()) {
                    root.meta = meta;
                }
            }
            return Ok(());
        };
        let (parent, file_name) = match key.iter().rposition(|b| *b == b'/') {
            Some(i) => (key[..i].to_vec(), key[i + 1..].to_vec()),
            None => (Vec::new(), key.clone()),
        };
        self.check_parents(&key, layer, lname, &err_path)?;
        if file_name == b".wh..wh..opq" {
            self.remove_children(&parent, layer);
            return Ok(());
        }
        if file_name.starts_with(b".wh..wh.") {
            return Ok(());
        }
        if let Some(hidden) = file_name.strip_prefix(b".wh.") {
            let mut target = parent.clone();
            if !target.is_empty() {
                target.push(b'/');
            }
            target.extend_from_slice(hidden);
            self.remove_subtree(&target, layer);
            return Ok(());
        }
        let etype = entry.header().entry_type();
        let meta = self.meta_of(&mut entry, lname, &err_path)?;
        let kind = match etype {
            tar::EntryType::Directory => {
                if let Some(n) = self.nodes.get_mut(&key) {
                    if n.kind == Kind::Dir {
                        n.meta = meta;
                        n.layer = layer;
                        return Ok(());
                    }
                }
                Kind::Dir
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let size = entry.header().size().map_err(|e| FlattenError::Corrupt {
                    layer: lname.to_owned(),
                    reason: format!("{err_path:?}: bad size: {e}"),
                })?;
                if size > self.limits.max_file_bytes {
                    return Err(FlattenError::TooBig {
                        layer: lname.to_owned(),
                        path: err_path,
                        reason: format!(
                            "{size} bytes, the limit for one file is {}",
                            self.limits.max_file_bytes
                        ),
                    });
                }
                self.written += size;
                if self.written > self.limits.max_total_bytes {
                    return Err(FlattenError::TooBig {
                        layer: lname.to_owned(),
                        path: err_path,
                        reason: format!(
                            "the image's files exceed {} bytes",
                            self.limits.max_total_bytes
                        ),
                    });
                }
                let store = self.content_dir.join(self.inodes.len().to_string());
                let f = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&store)
                    .map_err(|source| FlattenError::Io {
                        op: "create",
                        path: store.clone(),
                        source,
                    })?;
                let mut w = std::io::BufWriter::with_capacity(256 << 10, f);
                let copied = std::io::copy(&mut (&mut entry).take(size), &mut w).map_err(|e| {
                    FlattenError::Corrupt {
                        layer: lname.to_owned(),
                        reason: format!("{err_path:?}: {e}"),
                    }
                })?;
                w.flush().map_err(|source| FlattenError::Io {
                    op: "write",
                    path: store.clone(),
                    source,
                })?;
                if copied != size {
                    return Err(FlattenError::Corrupt {
                        layer: lname.to_owned(),
                        reason: format!("{err_path:?}: truncated ({copied} of {size} bytes)"),
                    });
                }
                self.inodes.push(Inode {
                    content: Content::Stored(store),
                    size,
                    meta: meta.clone(),
                });
                Kind::File(self.inodes.len() - 1)
            }
            tar::EntryType::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .map(|t| t.into_owned())
                    .unwrap_or_default();
                if target.is_empty() || target.len() > 4095 || target.contains(&0) {
                    return Err(FlattenError::Corrupt {
                        layer: lname.to_owned(),
                        reason: format!("symlink {err_path:?} has an empty or oversized target"),
                    });
                }
                // Kept verbatim: it resolves inside the guest, and banger
                // never follows it on the host.
                Kind::Symlink(target)
            }
            tar::EntryType::Link => {
                let target = entry
                    .link_name_bytes()
                    .map(|t| t.into_owned())
                    .unwrap_or_default();
                let hl = |reason| FlattenError::HardLink {
                    layer: lname.to_owned(),
                    path: err_path.clone(),
                    target: show(&target),
                    reason,
                };
                if target.starts_with(b"/") {
                    return Err(hl("the target is an absolute path"));
                }
                let tkey = match normalize(&target, lname) {
                    Ok(Some(k)) => k,
                    Ok(None) => return Err(hl("the target is the root directory")),
                    Err(_) => return Err(hl("the target leaves the image")),
                };
                match self.nodes.get(&tkey).map(|n| &n.kind) {
                    Some(Kind::File(i)) => {
                        if tkey == key {
                            return Ok(());
                        }
                        Kind::File(*i)
                    }
                    Some(_) => return Err(hl("the target is not a regular file")),
                    None => return Err(hl("the target does not exist in this or a lower layer")),
                }
            }
            tar::EntryType::Fifo => Kind::Fifo,
            tar::EntryType::Char | tar::EntryType::Block => {
                return Err(FlattenError::Device {
                    layer: lname.to_owned(),
                    path: err_path,
                })
            }
            other => {
                return Err(FlattenError::Unsupported {
                    layer: lname.to_owned(),
                    path: err_path,
                    kind: other.as_byte(),
                })
            }
        };
        // Replace whatever was there (a directory with its whole subtree).
        self.remove_subtree(&key, usize::MAX);
        self.nodes.insert(key, Node { kind, meta, layer });
        Ok(())
    }

    /// Every ancestor must be a directory; missing ones are created 0755
    /// root (tars often omit them). A symlink or file on the way is refused:
    /// following it is how layers write outside the tree.
    fn check_parents(
        &mut self,
        key: &[u8],
        layer: usize,
        lname: &str,
        err_path: &str,
    ) -> Result<(), FlattenError> {
        for (i, b) in key.iter().enumerate() {
            if *b != b'/' {
                continue;
            }
            let anc = &key[..i];
            match self.nodes.get(anc) {
                Some(Node {
                    kind: Kind::Dir, ..
                }) => {}
                Some(n) => {
                    return Err(FlattenError::ThroughNonDir {
                        layer: lname.to_owned(),
                        path: err_path.to_owned(),
                        via: show(anc),
                        what: match n.kind {
                            Kind::Symlink(_) => "symlink",
                            Kind::Fifo => "fifo",
                            _ => "regular file",
                        },
                    })
                }
                None => {
                    self.nodes.insert(
                        anc.to_vec(),
                        Node {
                            kind: Kind::Dir,
                            meta: Meta::dir_default(),
                            layer,
                        },
                    );
                }
            }
        }
        Ok(())
    }

    fn meta_of<R: Read>(
        &self,
        entry: &mut tar::Entry<'_, R>,
        lname: &str,
        err_path: &str,
    ) -> Result<Meta, FlattenError> {
        let h = entry.header();
        let bad = |what: &str, e: std::io::Error| FlattenError::Corrupt {
            layer: lname.to_owned(),
            reason: format!("{err_path:?}: bad {what}: {e}"),
        };
        let mut meta = Meta {
            mode: h.mode().map_err(|e| bad("mode", e))? & 0o7777,
            uid: h.uid().map_err(|e| bad("uid", e))?,
            gid: h.gid().map_err(|e| bad("gid", e))?,
            mtime: h.mtime().unwrap_or(0),
            xattrs: Vec::new(),
        };
        if let Ok(Some(exts)) = entry.pax_extensions() {
            for ext in exts {
                let ext = ext.map_err(|e| bad("pax header", e))?;
                let Ok(key) = ext.key() else { continue };
                let value = ext.value_bytes();
                if let Some(name) = key.strip_prefix("SCHILY.xattr.") {
                    if !keep_xattr(name) {
                        continue;
                    }
                    if value.len() > self.limits.max_xattr_bytes {
                        return Err(FlattenError::TooBig {
                            layer: lname.to_owned(),
                            path: err_path.to_owned(),
                            reason: format!("xattr {name} is {} bytes", value.len()),
                        });
                    }
                    meta.xattrs.push((name.to_owned(), value.to_vec()));
                } else if key == "uid" || key == "gid" {
                    let n: u64 = std::str::from_utf8(value)
                        .ok()
                        .and_then(|s| s.parse().ok())
                        .ok_or_else(|| bad(key, std::io::Error::other("not a number")))?;
                    if key == "uid" {
                        meta.uid = n;
                    } else {
                        meta.gid = n;
                    }
                }
            }
        }
        if meta.uid > u64::from(u32::MAX) || meta.gid > u64::from(u32::MAX) {
            return Err(FlattenError::Corrupt {
                layer: lname.to_owned(),
                reason: format!("{err_path:?}: uid/gid beyond 32 bits"),
            });
        }
        Ok(meta)
    }
}

/// Extended attributes carried into the image: file capabilities and other
/// `security.*`, `user.*`, `trusted.*` (overlayfs's own excepted). ACLs
/// (`system.*`) are dropped: mkfs.ext4 does not restore them from a tar.
fn keep_xattr(name: &str) -> bool {
    (name.starts_with("security.") || name.starts_with("user.") || name.starts_with("trusted."))
        && !name.starts_with("trusted.overlay.")
}

fn split(p: &[u8]) -> Vec<Vec<u8>> {
    p.split(|b| *b == b'/')
        .filter(|c| !c.is_empty())
        .map(|c| c.to_vec())
        .collect()
}

fn norm_simple(p: &str) -> Vec<u8> {
    split(p.as_bytes()).join(&b'/')
}

/// A tar path as a tree key: `./` prefixes and `.` components dropped;
/// absolute paths and `..` refused. `None` for the root itself.
fn normalize(raw: &[u8], lname: &str) -> Result<Option<Vec<u8>>, FlattenError> {
    if raw.starts_with(b"/") {
        return Err(FlattenError::Absolute {
            layer: lname.to_owned(),
            path: show(raw),
        });
    }
    let mut parts: Vec<&[u8]> = Vec::new();
    for c in raw.split(|b| *b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => {
                return Err(FlattenError::DotDot {
                    layer: lname.to_owned(),
                    path: show(raw),
                })
            }
            c if c.len() > 255 || c.contains(&0) => {
                return Err(FlattenError::Corrupt {
                    layer: lname.to_owned(),
                    reason: format!("entry {:?} has an invalid name", show(raw)),
                })
            }
            c => parts.push(c),
        }
    }
    if parts.is_empty() {
        return Ok(None);
    }
    let key = parts.join(&b'/');
    if key.len() > 4095 {
        return Err(FlattenError::Corrupt {
            layer: lname.to_owned(),
            reason: format!("entry path is {} bytes long", key.len()),
        });
    }
    Ok(Some(key))
}
