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

use banger_host::lock::{FileLock, LockError};
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
    #[error(transparent)]
    Lock(#[from] LockError),
    #[error("installed {kind} {name} at {path} is damaged: {reason}")]
    Damaged {
        kind: Kind,
        name: String,
        path: PathBuf,
        reason: String,
    },
    #[error("bundle {path}: {source}")]
    Bundle { path: PathBuf, source: BundleError },
    #[error(transparent)]
    Invalid(#[from] crate::validate::ValidateError),
    #[error("cannot describe the imported files: {0}")]
    Describe(BundleError),
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
    /// Copied from host-side files (`image promote` of a registered image).
    Imported { paths: Vec<String> },
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

/// Host-side artifacts to copy into the store as a managed bundle.
#[derive(Debug, Clone, Copy)]
pub enum Import<'a> {
    /// An ext4 root filesystem and the kernel it boots with.
    Image {
        rootfs: &'a Path,
        kernel_ref: &'a str,
    },
    /// An ELF kernel, optional initrd and optional modules directory
    /// (`.../lib/modules/<release>`; its name becomes the kernel release).
    Kernel {
        vmlinux: &'a Path,
        initrd: Option<&'a Path>,
        modules: Option<&'a Path>,
    },
}

/// An exclusive lock on one name; released on drop.
#[derive(Debug)]
pub struct NameLock {
    kind: Kind,
    name: String,
    _lock: FileLock,
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

    fn lock_path(&self, kind: Kind, name: &str) -> Result<PathBuf, StoreError> {
        validate_name(name)?;
        let dir = self.lock_dir();
        std::fs::create_dir_all(&dir).map_err(io_err("create", &dir))?;
        Ok(dir.join(format!("{}-{name}.lock", kind.as_str())))
    }

    /// Take the lock of `name` if it is free.
    pub fn try_lock(&self, kind: Kind, name: &str) -> Result<Option<NameLock>, StoreError> {
        let path = self.lock_path(kind, name)?;
        Ok(FileLock::try_exclusive(&path)?.map(|l| NameLock {
            kind,
            name: name.to_owned(),
            _lock: l,
        }))
    }

    /// Take the lock of `name`, waiting for its holder (blocks the thread).
    /// `on_wait` is called once if the lock is busy.
    pub fn lock(
        &self,
        kind: Kind,
        name: &str,
        on_wait: impl FnOnce(),
    ) -> Result<NameLock, StoreError> {
        if let Some(l) = self.try_lock(kind, name)? {
            return Ok(l);
        }
        on_wait();
        let path = self.lock_path(kind, name)?;
        Ok(NameLock {
            kind,
            name: name.to_owned(),
            _lock: FileLock::exclusive(&path)?,
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
                nix::fcntl::AT_FDCWD,
                &staged,
                nix::fcntl::AT_FDCWD,
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

    /// Copy host-side artifacts into the store as the managed bundle `name`
    /// (replacing an installed one): every file is validated first (absolute,
    /// ext4 / ELF with the PVH note), copied sparsely, described by a fresh
    /// manifest (`recipe_hash` null, `created` now) and committed like a pull.
    pub fn import(
        &self,
        name: &str,
        version: &str,
        import: Import<'_>,
        progress: ProgressFn<'_>,
    ) -> Result<Installed, StoreError> {
        use crate::validate;
        let (kind, kernel_ref, release, mut paths) = match import {
            Import::Image { rootfs, kernel_ref } => {
                validate::rootfs(rootfs)?;
                validate_name(kernel_ref)?;
                (Kind::Image, Some(kernel_ref.to_owned()), None, vec![rootfs])
            }
            Import::Kernel {
                vmlinux,
                initrd,
                modules,
            } => {
                validate::vmlinux(vmlinux)?;
                let mut paths = vec![vmlinux];
                if let Some(i) = initrd {
                    validate::initrd(i)?;
                    paths.push(i);
                }
                let release = match modules {
                    Some(m) => {
                        validate::modules_dir(m)?;
                        paths.push(m);
                        m.file_name().and_then(|n| n.to_str()).map(str::to_owned)
                    }
                    None => None,
                };
                (
                    Kind::Kernel,
                    None,
                    Some(release.unwrap_or_else(|| "unknown".into())),
                    paths,
                )
            }
        };
        let lock = self.lock(kind, name, || {
            progress(Progress::note(
                Phase::Wait,
                format!("waiting for another writer of {kind} {name}"),
            ))
        })?;
        let staging = self.staging(&lock)?;
        let dst = staging.path();
        let copy = |src: &Path, to: &Path| {
            progress(Progress::note(
                Phase::Install,
                format!("copying {}", src.display()),
            ));
            bundle::copy_sparse(src, to)
                .map(|_| ())
                .map_err(|source| StoreError::Bundle {
                    path: src.to_owned(),
                    source,
                })
        };
        match import {
            Import::Image { rootfs, .. } => copy(rootfs, &dst.join(manifest::ROOTFS))?,
            Import::Kernel {
                vmlinux,
                initrd,
                modules,
            } => {
                copy(vmlinux, &dst.join(manifest::VMLINUX))?;
                if let Some(i) = initrd {
                    copy(i, &dst.join(manifest::INITRD))?;
                }
                if let Some(m) = modules {
                    let to = dst
                        .join(manifest::MODULES)
                        .join(release.as_deref().unwrap_or("unknown"));
                    std::fs::create_dir_all(&to).map_err(io_err("create", &to))?;
                    copy_tree(m, &to)?;
                }
            }
        }
        let meta = bundle::BundleMeta {
            kind,
            name: name.to_owned(),
            version: version.to_owned(),
            created: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs() as i64)
                .unwrap_or(0),
            recipe_hash: None,
            kernel_ref,
            kernel_release: release,
        };
        let manifest = bundle::describe(dst, &meta).map_err(StoreError::Describe)?;
        let manifest_path = dst.join(MANIFEST_FILE);
        std::fs::write(&manifest_path, manifest.to_json())
            .map_err(io_err("write", &manifest_path))?;
        let origin = Origin::Imported {
            paths: paths.drain(..).map(|p| p.display().to_string()).collect(),
        };
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

/// Copy a modules tree: regular files and directories; the `build` and
/// `source` links into kernel headers are dropped, other links refused.
pub(crate) fn copy_tree(src: &Path, dst: &Path) -> Result<(), StoreError> {
    for entry in std::fs::read_dir(src).map_err(io_err("list", src))? {
        let entry = entry.map_err(io_err("list", src))?;
        let from = entry.path();
        let to = dst.join(entry.file_name());
        let ft = entry.file_type().map_err(io_err("stat", &from))?;
        if ft.is_dir() {
            std::fs::create_dir(&to).map_err(io_err("create", &to))?;
            copy_tree(&from, &to)?;
        } else if ft.is_file() {
            std::fs::copy(&from, &to).map_err(io_err("copy", &from))?;
        } else if ft.is_symlink() && matches!(entry.file_name().to_str(), Some("build" | "source"))
        {
            continue;
        } else {
            return Err(StoreError::Io {
                op: "copy (only regular files and directories)",
                path: from,
                source: io::Error::from(io::ErrorKind::InvalidInput),
            });
        }
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
    fn import_validates_copies_and_describes() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path().join("state"));
        let ignore = &crate::progress::ignore;
        // Refusals leave nothing behind.
        let text = dir.path().join("not-ext4");
        std::fs::write(&text, b"hello").unwrap();
        let err = store
            .import(
                "img",
                "1",
                Import::Image {
                    rootfs: &text,
                    kernel_ref: "k",
                },
                ignore,
            )
            .unwrap_err();
        assert!(err.to_string().contains("not ext4"), "{err}");
        let rel = Path::new("rootfs.ext4");
        let err = store
            .import(
                "img",
                "1",
                Import::Image {
                    rootfs: rel,
                    kernel_ref: "k",
                },
                ignore,
            )
            .unwrap_err();
        assert!(err.to_string().contains("absolute"), "{err}");
        let err = store
            .import(
                "k",
                "1",
                Import::Kernel {
                    vmlinux: &text,
                    initrd: None,
                    modules: None,
                },
                ignore,
            )
            .unwrap_err();
        assert!(err.to_string().contains("not an x86_64 ELF"), "{err}");
        assert!(store.list(Kind::Image).unwrap().is_empty());

        // A real (sparse) ext4 made by mkfs.ext4.
        let rootfs = dir.path().join("rootfs.ext4");
        let ok = std::process::Command::new("mkfs.ext4")
            .args(["-q", "-F"])
            .arg(&rootfs)
            .arg("64M")
            .status();
        if !matches!(ok, Ok(s) if s.success()) {
            eprintln!("skipping the image half: mkfs.ext4 unavailable");
            return;
        }
        let inst = store
            .import(
                "img",
                "1",
                Import::Image {
                    rootfs: &rootfs,
                    kernel_ref: "k",
                },
                ignore,
            )
            .unwrap();
        assert_eq!(
            std::fs::read(inst.rootfs().unwrap()).unwrap(),
            std::fs::read(&rootfs).unwrap()
        );
        assert_eq!(inst.manifest.kernel_ref.as_deref(), Some("k"));
        assert!(inst.manifest.recipe_hash.is_none());
        assert!(matches!(
            inst.origin.clone().unwrap().origin,
            Origin::Imported { .. }
        ));
        use std::os::unix::fs::MetadataExt;
        let blocks = std::fs::metadata(inst.rootfs().unwrap()).unwrap().blocks();
        assert!(blocks * 512 < 32 << 20, "copied sparsely");

        let elf = crate::validate::tests::tiny_elf(&crate::validate::tests::note(
            b"Xen",
            18,
            &[0, 0, 0, 1],
        ));
        let vmlinux = dir.path().join("vmlinux");
        std::fs::write(&vmlinux, elf).unwrap();
        let modules = dir.path().join("lib/modules/6.1.0-test");
        std::fs::create_dir_all(modules.join("kernel")).unwrap();
        std::fs::write(modules.join("modules.dep"), b"").unwrap();
        std::os::unix::fs::symlink("/usr/src/linux", modules.join("build")).unwrap();
        let k = store
            .import(
                "k",
                "1",
                Import::Kernel {
                    vmlinux: &vmlinux,
                    initrd: None,
                    modules: Some(&modules),
                },
                ignore,
            )
            .unwrap();
        assert_eq!(k.manifest.kernel_release.as_deref(), Some("6.1.0-test"));
        assert!(k.modules_dir().unwrap().join("modules.dep").is_file());
        assert!(!k.modules_dir().unwrap().join("build").exists());
        assert!(k.modules_disk().is_some());
        assert!(k.initrd().is_none());
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
