//! Installed bundles under the state dir.
//!
//! ```text
//! <state>/images/<name>/manifest.json, rootfs.ext4, origin.json
//! <state>/kernels/<name>/manifest.json, vmlinux, initrd, modules/<release>/..., origin.json
//! <state>/images/.tmp+<name>+XXXXXX/     staging of a pull/build in progress
//! <state>/locks/<kind>-<name>.lock       flock held while a name is written
//! ```
//!
//! A name's directory appears only by `rename(2)` of a complete, verified
//! staging directory, so an installed directory is always whole. Every
//! writer of a name holds its lock; a staging directory left by a crash is
//! removed by the next writer of that name (`+` cannot occur in names, so
//! prefixes never collide).

use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::bundle::{self, BundleError, Expect};
use crate::manifest::{self, validate_name, Kind, Manifest, ManifestError, MANIFEST_FILE};
use crate::progress::{Phase, Progress, ProgressFn};

/// Per-install metadata written beside the manifest.
pub const ORIGIN_FILE: &str = "origin.json";
/// Derived at install of a kernel: its modules tree as a read-only ext4
/// disk, for the initrd's `banger.modules=/dev/vdX` (mounted at
/// `/lib/modules` in the guest).
pub const MODULES_DISK: &str = "modules.ext4";

/// Errors of the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot {op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error(transparent)]
    Name(#[from] ManifestError),
    #[error("installed {kind} {name} at {path} is damaged: {reason}")]
    Damaged {
        kind: Kind,
        name: String,
        path: PathBuf,
        reason: String,
    },
    #[error("bundle {path}: {source}")]
    Bundle { path: PathBuf, source: BundleError },
    #[error("cannot make the modules disk {path}: {reason}")]
    ModulesDisk { path: PathBuf, reason: String },
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> StoreError + 'a {
    move |source| StoreError::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

/// Where an installed bundle came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "source", rename_all = "snake_case", deny_unknown_fields)]
pub enum Origin {
    /// Downloaded from a catalog URL.
    Catalog { url: String, bundle_sha256: String },
    /// Built locally from a recipe.
    Build { bundle_sha256: String },
    /// Installed from a bundle file given by path.
    File { path: String, bundle_sha256: String },
}

/// Contents of `origin.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OriginRecord {
    pub origin: Origin,
    /// Seconds since 1970 when it was installed.
    pub installed_at: u64,
}

/// A bundle installed in the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Installed {
    pub dir: PathBuf,
    pub manifest: Manifest,
    /// `None` only for directories written by an older banger.
    pub origin: Option<OriginRecord>,
}

impl Installed {
    /// Path of the artifact `name` (`rootfs.ext4`, `vmlinux`, `initrd`, `modules`).
    pub fn artifact(&self, name: &str) -> Option<PathBuf> {
        self.manifest.artifact(name).map(|a| self.dir.join(&a.name))
    }

    /// An image's root filesystem.
    pub fn rootfs(&self) -> Option<PathBuf> {
        self.artifact(manifest::ROOTFS)
    }

    /// A kernel's ELF.
    pub fn vmlinux(&self) -> Option<PathBuf> {
        self.artifact(manifest::VMLINUX)
    }

    /// A kernel's initramfs.
    pub fn initrd(&self) -> Option<PathBuf> {
        self.artifact(manifest::INITRD)
    }

    /// A kernel's `modules/<release>` directory (what belongs at
    /// `/lib/modules/<release>` in the guest).
    pub fn modules_dir(&self) -> Option<PathBuf> {
        let release = self.manifest.kernel_release.as_ref()?;
        self.artifact(manifest::MODULES).map(|m| m.join(release))
    }

    /// A kernel's modules as a read-only ext4 disk (see [`MODULES_DISK`]):
    /// attach it and pass `banger.modules=/dev/vdX` on the kernel command
    /// line so the guest's modprobe finds overlay, nf_tables, vsock, ...
    pub fn modules_disk(&self) -> Option<PathBuf> {
        Some(self.dir.join(MODULES_DISK)).filter(|p| p.is_file())
    }
}

/// An exclusive lock on one name; released on drop.
#[derive(Debug)]
pub struct NameLock {
    kind: Kind,
    name: String,
    _lock: nix::fcntl::Flock<std::fs::File>,
}

impl NameLock {
    /// The locked kind.
    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// The locked name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// A staging directory for one name; removed on drop unless committed.
#[derive(Debug)]
pub struct Staging {
    dir: tempfile::TempDir,
}

impl Staging {
    /// Where to unpack.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

/// The image/kernel store rooted at the state dir.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Store {
    root: PathBuf,
}

impl Store {
    /// The store under `state_dir` (directories are created on first write).
    pub fn new(state_dir: impl Into<PathBuf>) -> Store {
        Store {
            root: state_dir.into(),
        }
    }

    /// Directory holding all bundles of `kind`.
    pub fn kind_dir(&self, kind: Kind) -> PathBuf {
        self.root.join(match kind {
            Kind::Image => "images",
            Kind::Kernel => "kernels",
        })
    }

    /// Directory of the lock files.
    pub fn lock_dir(&self) -> PathBuf {
        self.root.join("locks")
    }

    /// Where `name` is (or would be) installed.
    pub fn dir(&self, kind: Kind, name: &str) -> Result<PathBuf, StoreError> {
        validate_name(name)?;
        Ok(self.kind_dir(kind).join(name))
    }

    /// The installed bundle `name`, if any.
    pub fn get(&self, kind: Kind, name: &str) -> Result<Option<Installed>, StoreError> {
        let dir = self.dir(kind, name)?;
        let manifest_path = dir.join(MANIFEST_FILE);
        let bytes = match std::fs::read(&manifest_path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound && !dir.exists() => return Ok(None),
            Err(e) => return Err(io_err("read", &manifest_path)(e)),
        };
        let damaged = |reason: String| StoreError::Damaged {
            kind,
            name: name.to_owned(),
            path: dir.clone(),
            reason,
        };
        let manifest = Manifest::from_json(&bytes).map_err(|e| damaged(e.to_string()))?;
        if manifest.kind != kind || manifest.name != name {
            return Err(damaged(format!(
                "manifest describes {} {}",
                manifest.kind, manifest.name
            )));
        }
        let origin_path = dir.join(ORIGIN_FILE);
        let origin = match std::fs::read(&origin_path) {
            Ok(b) => Some(
                serde_json::from_slice(&b).map_err(|e| damaged(format!("{ORIGIN_FILE}: {e}")))?,
            ),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(io_err("read", &origin_path)(e)),
        };
        Ok(Some(Installed {
            dir,
            manifest,
            origin,
        }))
    }

    /// Every installed bundle of `kind`, sorted by name.
    pub fn list(&self, kind: Kind) -> Result<Vec<Installed>, StoreError> {
        let dir = self.kind_dir(kind);
        let rd = match std::fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_err("list", &dir)(e)),
        };
        let mut names = Vec::new();
        for entry in rd {
            let entry = entry.map_err(io_err("list", &dir))?;
            if let Some(name) = entry.file_name().to_str() {
                if validate_name(name).is_ok() {
                    names.push(name.to_owned());
                }
            }
        }
        names.sort();
        let mut out = Vec::new();
        for name in names {
            if let Some(i) = self.get(kind, &name)? {
                out.push(i);
            }
        }
        Ok(out)
    }

    fn lock_file(&self, kind: Kind, name: &str) -> Result<(PathBuf, std::fs::File), StoreError> {
        validate_name(name)?;
        let dir = self.lock_dir();
        std::fs::create_dir_all(&dir).map_err(io_err("create", &dir))?;
        let path = dir.join(format!("{}-{name}.lock", kind.as_str()));
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io_err("open lock", &path))?;
        Ok((path, file))
    }

    /// Take the lock of `name` if it is free.
    pub fn try_lock(&self, kind: Kind, name: &str) -> Result<Option<NameLock>, StoreError> {
        use nix::fcntl::{Flock, FlockArg};
        let (path, file) = self.lock_file(kind, name)?;
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(l) => Ok(Some(NameLock {
                kind,
                name: name.to_owned(),
                _lock: l,
            })),
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => Ok(None),
            Err((_, e)) => Err(io_err("lock", &path)(e.into())),
        }
    }

    /// Take the lock of `name`, waiting for its holder (blocks the thread).
    /// `on_wait` is called once if the lock is busy.
    pub fn lock(
        &self,
        kind: Kind,
        name: &str,
        on_wait: impl FnOnce(),
    ) -> Result<NameLock, StoreError> {
        use nix::fcntl::{Flock, FlockArg};
        if let Some(l) = self.try_lock(kind, name)? {
            return Ok(l);
        }
        on_wait();
        let (path, file) = self.lock_file(kind, name)?;
        let lock = Flock::lock(file, FlockArg::LockExclusive)
            .map_err(|(_, e)| io_err("lock", &path)(e.into()))?;
        Ok(NameLock {
            kind,
            name: name.to_owned(),
            _lock: lock,
        })
    }

    /// A fresh staging directory for the locked name, after removing any
    /// left behind by an interrupted writer.
    pub fn staging(&self, lock: &NameLock) -> Result<Staging, StoreError> {
        let dir = self.kind_dir(lock.kind);
        std::fs::create_dir_all(&dir).map_err(io_err("create", &dir))?;
        self.remove_leftovers(lock)?;
        let tmp = tempfile::Builder::new()
            .prefix(&format!(".tmp+{}+", lock.name))
            .tempdir_in(&dir)
            .map_err(io_err("create staging directory in", &dir))?;
        Ok(Staging { dir: tmp })
    }

    fn remove_leftovers(&self, lock: &NameLock) -> Result<(), StoreError> {
        let dir = self.kind_dir(lock.kind);
        let prefixes = [
            format!(".tmp+{}+", lock.name),
            format!(".del+{}+", lock.name),
        ];
        for entry in std::fs::read_dir(&dir).map_err(io_err("list", &dir))? {
            let entry = entry.map_err(io_err("list", &dir))?;
            let fname = entry.file_name();
            let Some(s) = fname.to_str() else { continue };
            if prefixes.iter().any(|p| s.starts_with(p.as_str())) {
                let p = entry.path();
                std::fs::remove_dir_all(&p).map_err(io_err("remove leftover", &p))?;
            }
        }
        Ok(())
    }

    /// Move a complete staging directory into place as the locked name
    /// (replacing an installed one atomically), recording `origin`.
    pub fn commit(
        &self,
        lock: &NameLock,
        staging: Staging,
        origin: Origin,
    ) -> Result<Installed, StoreError> {
        let record = OriginRecord {
            origin,
            installed_at: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
        };
        if lock.kind == Kind::Kernel {
            make_modules_disk(staging.path())?;
        }
        let origin_path = staging.path().join(ORIGIN_FILE);
        let mut json = serde_json::to_vec_pretty(&record).expect("origin serializes");
        json.push(b'\n');
        std::fs::write(&origin_path, json).map_err(io_err("write", &origin_path))?;
        let staged = staging.dir.keep();
        let dest = self.dir(lock.kind, &lock.name)?;
        let result = if dest.exists() {
            // Swap atomically, then delete the old tree from its new place.
            nix::fcntl::renameat2(
                None,
                &staged,
                None,
                &dest,
                nix::fcntl::RenameFlags::RENAME_EXCHANGE,
            )
            .map_err(|e| io_err("replace", &dest)(e.into()))
            .and_then(|()| {
                let old = staged.with_file_name(format!(".del+{}+old", lock.name));
                std::fs::rename(&staged, &old).map_err(io_err("rename", &staged))?;
                std::fs::remove_dir_all(&old).map_err(io_err("remove", &old))
            })
        } else {
            std::fs::rename(&staged, &dest).map_err(io_err("rename into place", &dest))
        };
        if let Err(e) = result {
            let _ = std::fs::remove_dir_all(&staged);
            return Err(e);
        }
        sync_dir(&self.kind_dir(lock.kind))?;
        self.get(lock.kind, &lock.name)?
            .ok_or_else(|| StoreError::Damaged {
                kind: lock.kind,
                name: lock.name.clone(),
                path: dest,
                reason: "vanished right after install".into(),
            })
    }

    /// Unpack and verify the bundle file at `path`, then install it as
    /// `name` (replacing an installed one).
    pub fn install_file(
        &self,
        path: &Path,
        kind: Kind,
        name: &str,
        origin: Origin,
        progress: ProgressFn<'_>,
    ) -> Result<Installed, StoreError> {
        let lock = self.lock(kind, name, || {
            progress(Progress::note(
                Phase::Wait,
                format!("waiting for another writer of {kind} {name}"),
            ))
        })?;
        let staging = self.staging(&lock)?;
        progress(Progress::note(
            Phase::Unpack,
            format!("unpacking {}", path.display()),
        ));
        let expect = Expect {
            kind,
            name: Some(name.to_owned()),
        };
        bundle::unpack_file(path, staging.path(), &expect).map_err(|source| {
            StoreError::Bundle {
                path: path.to_owned(),
                source,
            }
        })?;
        progress(Progress::note(
            Phase::Install,
            format!("installing {kind} {name}"),
        ));
        self.commit(&lock, staging, origin)
    }

    /// Remove `name`; returns whether it was installed. Callers check first
    /// that no VM uses it.
    pub fn delete(&self, kind: Kind, name: &str) -> Result<bool, StoreError> {
        let lock = self.lock(kind, name, || {})?;
        let dest = self.dir(kind, name)?;
        if !dest.exists() {
            return Ok(false);
        }
        // Rename first so a crash mid-delete never leaves a half directory
        // under the real name.
        let doomed = self
            .kind_dir(kind)
            .join(format!(".del+{}+{}", lock.name, std::process::id()));
        std::fs::rename(&dest, &doomed).map_err(io_err("rename", &dest))?;
        std::fs::remove_dir_all(&doomed).map_err(io_err("remove", &doomed))?;
        Ok(true)
    }
}

/// Build `modules.ext4` from `modules/` of a staged kernel: the tree's
/// root holds `<release>/...`, as `/lib/modules` expects. No journal (it is
/// mounted read-only); mkfs.ext4 needs no root for a file.
fn make_modules_disk(staged: &Path) -> Result<(), StoreError> {
    let modules = staged.join(manifest::MODULES);
    if !modules.is_dir() {
        return Ok(());
    }
    let out = staged.join(MODULES_DISK);
    let fail = |reason: String| StoreError::ModulesDisk {
        path: out.clone(),
        reason,
    };
    let (tree_bytes, _) = crate::digest::tree_digest(&modules).map_err(|e| fail(e.to_string()))?;
    // Room for metadata and 4 KiB blocks of small files, rounded to 1 MiB.
    let size = ((tree_bytes * 3 / 2 + (16 << 20)) >> 20) << 20;
    let output = std::process::Command::new("mkfs.ext4")
        .args([
            "-q",
            "-F",
            "-t",
            "ext4",
            "-O",
            "^has_journal",
            "-L",
            "modules",
            "-m",
            "0",
        ])
        .args(["-E", "root_owner=0:0", "-d"])
        .arg(&modules)
        .arg(&out)
        .arg(format!("{}k", size / 1024))
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| fail(format!("cannot run mkfs.ext4 (install e2fsprogs): {e}")))?;
    if !output.status.success() {
        return Err(fail(format!(
            "mkfs.ext4 {}: {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    Ok(())
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    std::fs::File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(io_err("sync", dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_validated_before_touching_paths() {
        let s = Store::new("/nonexistent");
        assert!(s.dir(Kind::Image, "../x").is_err());
        assert!(s.get(Kind::Image, "a/b").is_err());
    }

    #[test]
    fn missing_store_lists_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::new(dir.path().join("state"));
        assert!(s.list(Kind::Kernel).unwrap().is_empty());
        assert!(s.get(Kind::Kernel, "k").unwrap().is_none());
        assert!(!s.delete(Kind::Kernel, "k").unwrap());
    }
}
