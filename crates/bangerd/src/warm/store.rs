//! The snapshot store: per image, one snapshot per machine shape.
//!
//! ```text
//! <state>/snapshots/<image>/<slot>/manifest.json   key, sizes, times (written last)
//! <state>/snapshots/<image>/<slot>/state.bin       VMM memory + device state
//! <state>/snapshots/<image>/<slot>/root.ext4       the root disk at that instant
//! <state>/snapshots/<image>/.tmp-<slot>-<pid>-<n>/ a snapshot being made
//! ```
//!
//! A snapshot is made in a temporary directory and renamed into place as a
//! whole once its manifest is written, so a slot directory either holds a
//! complete snapshot or does not exist; [`reconcile`] removes what a killed
//! daemon left in temporary directories. A slot is `vcpu<N>-mem<M>`: the
//! other parts of the key (image and kernel digests, backend, VMM and banger
//! versions) are checked against the manifest, and a snapshot that no
//! longer matches is never restored: the caller boots cold, says why and
//! (with `warm_start = "auto"`) makes a new one in its place.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// File names inside a slot.
pub const MANIFEST: &str = "manifest.json";
pub const STATE_FILE: &str = "state.bin";
pub const ROOT_DISK: &str = "root.ext4";
const TMP_PREFIX: &str = ".tmp-";

/// What a snapshot depends on: restoring it into anything else would run a
/// guest on a disk, kernel or device model it was not saved with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotKey {
    /// sha256 of the image's rootfs (or, unhashed, its size and mtime).
    pub image_digest: String,
    /// sha256 of the kernel's `vmlinux` (or, unhashed, its size and mtime).
    pub kernel_digest: String,
    pub vcpu: u32,
    pub memory_mib: u32,
    /// `qemu-tcg`, `qemu-kvm`, `firecracker`.
    pub backend: String,
    /// The VMM's `--version` first line: QEMU cannot load another
    /// version's microvm state.
    pub vmm_version: String,
    /// banger's version: the agent inside the snapshot is banger's.
    pub banger_version: String,
}

impl SnapshotKey {
    /// Why `self` (the snapshot's key) does not fit `wanted`, naming the
    /// first part that differs; `None` when it fits.
    pub fn mismatch(&self, wanted: &SnapshotKey) -> Option<String> {
        let parts: [(&str, String, String); 7] = [
            (
                "image",
                self.image_digest.clone(),
                wanted.image_digest.clone(),
            ),
            (
                "kernel",
                self.kernel_digest.clone(),
                wanted.kernel_digest.clone(),
            ),
            ("vcpus", self.vcpu.to_string(), wanted.vcpu.to_string()),
            (
                "memory MiB",
                self.memory_mib.to_string(),
                wanted.memory_mib.to_string(),
            ),
            ("backend", self.backend.clone(), wanted.backend.clone()),
            (
                "VMM version",
                self.vmm_version.clone(),
                wanted.vmm_version.clone(),
            ),
            (
                "banger version",
                self.banger_version.clone(),
                wanted.banger_version.clone(),
            ),
        ];
        parts
            .into_iter()
            .find(|(_, have, want)| have != want)
            .map(|(what, have, want)| {
                format!(
                    "the snapshot's {what} is {}, this VM's is {}",
                    short(&have),
                    short(&want)
                )
            })
    }

    /// The slot directory name of this key.
    pub fn slot(&self) -> String {
        slot_name(self.vcpu, self.memory_mib)
    }
}

/// `vcpu<N>-mem<M>`.
pub fn slot_name(vcpu: u32, memory_mib: u32) -> String {
    format!("vcpu{vcpu}-mem{memory_mib}")
}

fn short(s: &str) -> &str {
    // Digests: the first 12 hex digits say enough.
    if s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
        &s[..12]
    } else {
        s
    }
}

/// A snapshot's manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotManifest {
    pub format_version: u32,
    pub key: SnapshotKey,
    /// Seconds since the epoch when it was saved.
    pub created_unix: u64,
    /// How long the VMM took to write the state file.
    pub save_ms: u64,
    /// Apparent length of `state.bin` (a shorter file is truncated).
    pub state_bytes: u64,
    /// Apparent length of `root.ext4`.
    pub root_bytes: u64,
}

/// The manifest format this daemon writes and reads.
pub const MANIFEST_VERSION: u32 = 1;

/// Errors of the snapshot store, naming the path.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("snapshot store: cannot {op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("snapshot store: manifest {path} is unreadable: {source}")]
    Manifest {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("snapshot store: image name {name:?} cannot be a directory name")]
    BadImageName { name: String },
}

fn io(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> StoreError {
    let path = path.to_owned();
    move |source| StoreError::Io { op, path, source }
}

/// A complete snapshot in the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub dir: PathBuf,
    pub manifest: SnapshotManifest,
    /// Bytes the slot's files take on disk (they are sparse).
    pub disk_bytes: u64,
}

impl Snapshot {
    pub fn state_file(&self) -> PathBuf {
        self.dir.join(STATE_FILE)
    }
    pub fn root_disk(&self) -> PathBuf {
        self.dir.join(ROOT_DISK)
    }
}

/// What [`SnapshotStore::lookup`] found for a VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// A complete snapshot with this key.
    Hit(Snapshot),
    /// None for this image and shape.
    Missing,
    /// One exists but does not fit (the reason says which part); it was
    /// removed, so a new one can take its place.
    Stale(String),
    /// One exists but its files are damaged (the reason says how); it was
    /// removed.
    Damaged(String),
}

/// The store under `<state>/snapshots`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotStore {
    root: PathBuf,
}

impl SnapshotStore {
    pub fn new(state_dir: &Path) -> SnapshotStore {
        SnapshotStore {
            root: state_dir.join("snapshots"),
        }
    }

    /// `<state>/snapshots/<image>`; refuses names that would leave it.
    pub fn image_dir(&self, image: &str) -> Result<PathBuf, StoreError> {
        let ok = !image.is_empty()
            && image != "."
            && image != ".."
            && !image.starts_with('.')
            && !image.contains('/')
            && !image.contains('\0');
        if !ok {
            return Err(StoreError::BadImageName {
                name: image.to_owned(),
            });
        }
        Ok(self.root.join(image))
    }

    /// The snapshot of `image` for `wanted`'s shape, checked against the
    /// whole key and the manifest's file sizes. Stale or damaged ones are
    /// removed (only their own slot).
    pub fn lookup(&self, image: &str, wanted: &SnapshotKey) -> Result<Lookup, StoreError> {
        let dir = self.image_dir(image)?.join(wanted.slot());
        if !dir.exists() {
            return Ok(Lookup::Missing);
        }
        let snap = match read_snapshot(&dir) {
            Ok(s) => s,
            Err(reason) => {
                remove_dir(&dir)?;
                return Ok(Lookup::Damaged(reason));
            }
        };
        if let Some(reason) = snap.manifest.key.mismatch(wanted) {
            remove_dir(&dir)?;
            return Ok(Lookup::Stale(reason));
        }
        Ok(Lookup::Hit(snap))
    }

    /// Every complete snapshot of `image` (for `image show`).
    pub fn list(&self, image: &str) -> Result<Vec<Snapshot>, StoreError> {
        let dir = self.image_dir(image)?;
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io("list", &dir)(e)),
        };
        let mut out = Vec::new();
        for entry in entries {
            let entry = entry.map_err(io("list", &dir))?;
            let name = entry.file_name();
            if name.to_string_lossy().starts_with('.') {
                continue;
            }
            if let Ok(s) = read_snapshot(&entry.path()) {
                out.push(s);
            }
        }
        out.sort_by(|a, b| a.dir.cmp(&b.dir));
        Ok(out)
    }

    /// Remove every snapshot of `image` (`image delete`, `image warm --clear`);
    /// returns how many complete ones there were.
    pub fn clear(&self, image: &str) -> Result<usize, StoreError> {
        let n = self.list(image)?.len();
        remove_dir(&self.image_dir(image)?)?;
        Ok(n)
    }

    /// Remove the snapshot in `dir` (a restore found it damaged).
    pub fn discard(&self, snap: &Snapshot) -> Result<(), StoreError> {
        remove_dir(&snap.dir)
    }

    /// A fresh temporary directory for a snapshot of `image` in `slot`.
    pub fn begin(&self, image: &str, slot: &str) -> Result<PendingSnapshot, StoreError> {
        let image_dir = self.image_dir(image)?;
        std::fs::create_dir_all(&image_dir).map_err(io("create", &image_dir))?;
        use std::sync::atomic::{AtomicU64, Ordering};
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let tmp = image_dir.join(format!("{TMP_PREFIX}{slot}-{}-{n}", std::process::id()));
        std::fs::create_dir(&tmp).map_err(io("create", &tmp))?;
        Ok(PendingSnapshot {
            tmp,
            target: image_dir.join(slot),
            done: false,
        })
    }

    /// Start-up: remove every temporary directory (a snapshot a killed
    /// daemon was making) and every slot without a readable manifest.
    /// Returns the removed paths.
    pub fn reconcile(&self) -> Result<Vec<PathBuf>, StoreError> {
        let mut removed = Vec::new();
        let images = match std::fs::read_dir(&self.root) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(removed),
            Err(e) => return Err(io("list", &self.root)(e)),
        };
        for image in images {
            let image = image.map_err(io("list", &self.root))?.path();
            let Ok(slots) = std::fs::read_dir(&image) else {
                continue;
            };
            for slot in slots {
                let slot = slot.map_err(io("list", &image))?.path();
                let name = slot
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                if name.starts_with(TMP_PREFIX) || read_snapshot(&slot).is_err() {
                    remove_dir(&slot)?;
                    removed.push(slot);
                }
            }
        }
        Ok(removed)
    }
}

/// A snapshot being made: files go into [`PendingSnapshot::dir`], then
/// [`PendingSnapshot::publish`] writes the manifest and renames the
/// directory into place. Dropped unpublished, the directory is removed.
#[derive(Debug)]
pub struct PendingSnapshot {
    tmp: PathBuf,
    target: PathBuf,
    done: bool,
}

impl PendingSnapshot {
    pub fn dir(&self) -> &Path {
        &self.tmp
    }
    pub fn state_file(&self) -> PathBuf {
        self.tmp.join(STATE_FILE)
    }
    pub fn root_disk(&self) -> PathBuf {
        self.tmp.join(ROOT_DISK)
    }

    /// Write the manifest (sizes taken from the files), make everything
    /// durable and replace the slot's previous snapshot, if any.
    pub fn publish(mut self, key: SnapshotKey, save_ms: u64) -> Result<Snapshot, StoreError> {
        let len = |p: PathBuf| {
            std::fs::metadata(&p)
                .map(|m| m.len())
                .map_err(io("inspect", &p))
        };
        let manifest = SnapshotManifest {
            format_version: MANIFEST_VERSION,
            key,
            created_unix: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            save_ms,
            state_bytes: len(self.state_file())?,
            root_bytes: len(self.root_disk())?,
        };
        for f in [self.state_file(), self.root_disk()] {
            std::fs::File::open(&f)
                .and_then(|f| f.sync_all())
                .map_err(io("sync", &f))?;
        }
        let text = serde_json::to_vec_pretty(&manifest).map_err(|source| StoreError::Manifest {
            path: self.tmp.join(MANIFEST),
            source,
        })?;
        let mpath = self.tmp.join(MANIFEST);
        banger_fs::write_atomic(
            &mpath,
            &mut text.as_slice(),
            banger_fs::WriteOptions::mode(0o600),
        )
        .map_err(|e| {
            let (path, source) = e.into_parts();
            StoreError::Io {
                op: "write",
                path,
                source,
            }
        })?;
        // rename(2) cannot replace a non-empty directory: the old snapshot
        // goes first. Between the two steps the slot is simply empty.
        if self.target.exists() {
            remove_dir(&self.target)?;
        }
        std::fs::rename(&self.tmp, &self.target).map_err(io("rename into place", &self.target))?;
        if let Some(parent) = self.target.parent() {
            let _ = std::fs::File::open(parent).and_then(|d| d.sync_all());
        }
        self.done = true;
        read_snapshot(&self.target).map_err(|reason| StoreError::Io {
            op: "read back",
            path: self.target.clone(),
            source: std::io::Error::other(reason),
        })
    }
}

impl Drop for PendingSnapshot {
    fn drop(&mut self) {
        if !self.done {
            let _ = std::fs::remove_dir_all(&self.tmp);
        }
    }
}

/// Read and check a slot: the manifest parses and has this daemon's format,
/// and both files are there with the recorded lengths.
fn read_snapshot(dir: &Path) -> Result<Snapshot, String> {
    let mpath = dir.join(MANIFEST);
    let text =
        std::fs::read(&mpath).map_err(|e| format!("cannot read {}: {e}", mpath.display()))?;
    let manifest: SnapshotManifest = serde_json::from_slice(&text)
        .map_err(|e| format!("manifest {} does not parse: {e}", mpath.display()))?;
    if manifest.format_version != MANIFEST_VERSION {
        return Err(format!(
            "manifest {} has format {}, this daemon reads {MANIFEST_VERSION}",
            mpath.display(),
            manifest.format_version
        ));
    }
    let mut disk_bytes = 0;
    for (name, want) in [
        (STATE_FILE, manifest.state_bytes),
        (ROOT_DISK, manifest.root_bytes),
    ] {
        let p = dir.join(name);
        let meta = std::fs::symlink_metadata(&p)
            .map_err(|e| format!("cannot inspect {}: {e}", p.display()))?;
        if !meta.file_type().is_file() {
            return Err(format!("{} is not a regular file", p.display()));
        }
        if meta.len() != want {
            return Err(format!(
                "{} is {} bytes, the manifest says {want} (truncated or replaced)",
                p.display(),
                meta.len()
            ));
        }
        use std::os::unix::fs::MetadataExt;
        disk_bytes += meta.blocks() * 512;
    }
    Ok(Snapshot {
        dir: dir.to_owned(),
        manifest,
        disk_bytes,
    })
}

fn remove_dir(dir: &Path) -> Result<(), StoreError> {
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io("remove", dir)(e)),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> SnapshotKey {
        SnapshotKey {
            image_digest: "a".repeat(64),
            kernel_digest: "b".repeat(64),
            vcpu: 2,
            memory_mib: 1024,
            backend: "qemu-tcg".into(),
            vmm_version: "QEMU emulator version 10.0.2".into(),
            banger_version: "0.1.0".into(),
        }
    }

    fn make(store: &SnapshotStore, image: &str, k: &SnapshotKey) -> Snapshot {
        let p = store.begin(image, &k.slot()).unwrap();
        std::fs::write(p.state_file(), vec![1u8; 4096]).unwrap();
        std::fs::File::create(p.root_disk())
            .unwrap()
            .set_len(1 << 20)
            .unwrap();
        p.publish(k.clone(), 5).unwrap()
    }

    #[test]
    fn a_published_snapshot_is_found_only_under_its_whole_key() {
        let dir = tempfile::tempdir().unwrap();
        let store = SnapshotStore::new(dir.path());
        assert_eq!(store.lookup("deb", &key()).unwrap(), Lookup::Missing);
        let snap = make(&store, "deb", &key());
        assert_eq!(snap.manifest.state_bytes, 4096);
        assert_eq!(snap.manifest.root_bytes, 1 << 20);
        assert_eq!(store.lookup("deb", &key()).unwrap(), Lookup::Hit(snap));
        assert_eq!(store.list("deb").unwrap().len(), 1);

        // Another shape is another slot: missing, and the first one stays.
        let mut bigger = key();
        bigger.memory_mib = 2048;
        assert_eq!(store.lookup("deb", &bigger).unwrap(), Lookup::Missing);

        // Same slot, rebuilt image: stale with the reason, and removed.
        let mut rebuilt = key();
        rebuilt.image_digest = "c".repeat(64);
        match store.lookup("deb", &rebuilt).unwrap() {
            Lookup::Stale(why) => {
                assert!(why.contains("image is aaaaaaaaaaaa"), "{why}");
                assert!(why.contains("cccccccccccc"), "{why}");
            }
            other => panic!("{other:?}"),
        }
        assert!(store.list("deb").unwrap().is_empty());
        let mut qemu = key();
        qemu.vmm_version = "QEMU emulator version 10.1.0".into();
        assert!(key()
            .mismatch(&qemu)
            .unwrap()
            .contains("VMM version is QEMU emulator version 10.0.2"));
    }

    #[test]
    fn a_truncated_state_file_is_damaged_and_only_its_slot_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        let store = SnapshotStore::new(dir.path());
        let snap = make(&store, "deb", &key());
        let mut other = key();
        other.vcpu = 1;
        let kept = make(&store, "deb", &other);
        std::fs::OpenOptions::new()
            .write(true)
            .open(snap.state_file())
            .unwrap()
            .set_len(100)
            .unwrap();
        match store.lookup("deb", &key()).unwrap() {
            Lookup::Damaged(why) => assert!(why.contains("truncated"), "{why}"),
            other => panic!("{other:?}"),
        }
        assert!(!snap.dir.exists());
        assert_eq!(store.list("deb").unwrap(), vec![kept]);
    }

    #[test]
    fn unpublished_and_killed_snapshots_leave_nothing_after_reconcile() {
        let dir = tempfile::tempdir().unwrap();
        let store = SnapshotStore::new(dir.path());
        let good = make(&store, "deb", &key());
        // Dropped before publish (an error path): gone at once.
        let p = store.begin("deb", "vcpu1-mem512").unwrap();
        let tmp = p.dir().to_owned();
        std::fs::write(p.state_file(), b"partial").unwrap();
        drop(p);
        assert!(!tmp.exists());
        // A daemon killed mid-save: the temporary dir outlives it...
        let p = store.begin("deb", "vcpu1-mem512").unwrap();
        let tmp = p.dir().to_owned();
        std::fs::write(p.state_file(), b"partial").unwrap();
        std::mem::forget(p);
        // ... and a slot without a manifest is no snapshot either.
        let bare = store.image_dir("deb").unwrap().join("vcpu4-mem512");
        std::fs::create_dir(&bare).unwrap();
        std::fs::write(bare.join(STATE_FILE), b"x").unwrap();
        let mut removed = store.reconcile().unwrap();
        removed.sort();
        let mut want = vec![tmp.clone(), bare.clone()];
        want.sort();
        assert_eq!(removed, want);
        assert!(!tmp.exists() && !bare.exists());
        assert_eq!(store.list("deb").unwrap(), vec![good]);
        assert_eq!(store.clear("deb").unwrap(), 1);
        assert!(!store.image_dir("deb").unwrap().exists());
    }

    #[test]
    fn image_names_cannot_leave_the_store() {
        let store = SnapshotStore::new(Path::new("/s"));
        for bad in ["", ".", "..", "../x", "a/b", ".hidden"] {
            assert!(store.image_dir(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            store.image_dir("debian-bookworm").unwrap(),
            Path::new("/s/snapshots/debian-bookworm")
        );
    }
}
