//! Reproducible local builds of the recipes in `images/` (see
//! [`crate::recipe`]). Building needs root: mmdebstrap bootstraps Debian
//! and `chroot` runs depmod. Finished bundles are cached by recipe hash
//! under `<cache>/images/<hash>.tar.zst` and `<cache>/kernels/<hash>.tar.zst`,
//! so a second build of an unchanged recipe is a cache hit.

mod cmd;
mod image;
mod kernel;

use std::path::{Path, PathBuf};

use crate::bundle::{BundleError, Packed};
use crate::bzimage::BzImageError;
use crate::manifest::Kind;
use crate::progress::{Phase, Progress, ProgressFn};
use crate::recipe::{RecipeError, RecipeSet};
use crate::store::{Installed, Origin, Store, StoreError};
use crate::validate::ValidateError;

pub use cmd::debugfs;

/// Minimum e2fsprogs for reproducible `mkfs.ext4 -d TARBALL`.
pub const MIN_E2FSPROGS: (u32, u32, u32) = (1, 47, 2);

/// Errors of a build; each names the step, input or tool involved.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("building {kind} {name} needs root (mmdebstrap and chroot): run it through the banger daemon, whose root helper builds, or as root")]
    NotRoot { kind: Kind, name: String },
    #[error("{tool} is needed to {why}: install it (apt-get install {package})")]
    MissingTool {
        tool: &'static str,
        package: &'static str,
        why: &'static str,
    },
    #[error("{tool} {found} is too old: {need} or newer is needed to {why}")]
    OldTool {
        tool: &'static str,
        found: String,
        need: String,
        why: &'static str,
    },
    #[error(transparent)]
    Recipe(#[from] RecipeError),
    #[error("{what} failed ({status}): {command}\n{tail}")]
    Command {
        what: String,
        command: String,
        status: String,
        tail: String,
    },
    #[error("cannot {op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("pinned package {package}={version}: expected .deb sha256 {expected}, got {got}")]
    PinMismatch {
        package: String,
        version: String,
        expected: String,
        got: String,
    },
    #[error("pinned package {package}={version} was not downloaded from {mirror}; if the mirror dropped that version, update the recipe's pins (or use a snapshot.debian.org mirror)")]
    PinMissing {
        package: String,
        version: String,
        mirror: String,
    },
    #[error("kernel package tree: {0}")]
    KernelTree(String),
    #[error("initrd module {module} not found under modules/{release}")]
    MissingModule { module: String, release: String },
    #[error("cannot decompress module {path}: {reason}")]
    Module { path: PathBuf, reason: String },
    #[error("vmlinuz {path}: {source}")]
    BzImage { path: PathBuf, source: BzImageError },
    #[error(transparent)]
    Validate(#[from] ValidateError),
    #[error("packing the bundle: {0}")]
    Bundle(#[from] BundleError),
    #[error("npm package {package}: {reason}")]
    Npm { package: String, reason: String },
    #[error("built image {path} fails its checks: {reason}")]
    Inspect { path: PathBuf, reason: String },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Lock(#[from] banger_host::lock::LockError),
}

pub(crate) fn io_err<'a>(
    op: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> BuildError + 'a {
    move |source| BuildError::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

/// What a build uses besides the recipe.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// Recipes (default: the ones compiled in).
    pub recipes: RecipeSet,
    /// Bundle cache: `<cache_dir>/{images,kernels}/<recipe_hash>.tar.zst`.
    /// A build writes there by path and trusts what it finds there as its
    /// own earlier work, so when root builds for someone else this must be
    /// a directory only root can change (the root helper uses its own
    /// root-owned work dir, never the owner's cache).
    pub cache_dir: PathBuf,
    /// Scratch space (default `<cache_dir>/build`); needs a few GB.
    pub work_dir: Option<PathBuf>,
    /// Overrides the recipe's `source_date_epoch` (callers pass the
    /// `SOURCE_DATE_EPOCH` environment variable here).
    pub source_date_epoch: Option<i64>,
    /// Guest agent binary to install as /usr/local/bin/banger-vsock-agent
    /// (images only).
    pub agent_binary: Option<PathBuf>,
    /// Replaces the recipe's Debian mirror (e.g. a local or snapshot mirror).
    pub mirror: Option<String>,
    /// Replaces the recipe's Debian security mirror.
    pub security_mirror: Option<String>,
    /// Rebuild even when the cache holds a bundle for this recipe hash.
    pub force: bool,
}

impl BuildOptions {
    /// Defaults: embedded recipes, everything else from the recipe.
    pub fn new(cache_dir: impl Into<PathBuf>) -> BuildOptions {
        BuildOptions {
            recipes: RecipeSet::embedded(),
            cache_dir: cache_dir.into(),
            work_dir: None,
            source_date_epoch: None,
            agent_binary: None,
            mirror: None,
            security_mirror: None,
            force: false,
        }
    }

    fn work_root(&self) -> PathBuf {
        self.work_dir
            .clone()
            .unwrap_or_else(|| self.cache_dir.join("build"))
    }
}

/// A finished (or cached) build.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Built {
    pub packed: Packed,
    pub recipe_hash: String,
    /// True when the bundle came from the cache without building.
    pub cached: bool,
}

/// Build the `kind` recipe `name` into a bundle in the cache.
pub fn build(
    kind: Kind,
    name: &str,
    opts: &BuildOptions,
    progress: ProgressFn<'_>,
) -> Result<Built, BuildError> {
    match kind {
        Kind::Kernel => kernel::build(name, opts, progress),
        Kind::Image => image::build(name, opts, progress),
    }
}

/// The recipe hash a build of `kind name` with `opts` would have: the cache
/// key, computable without root (CI uses it to restore its cache).
pub fn recipe_hash(kind: Kind, name: &str, opts: &BuildOptions) -> Result<String, BuildError> {
    match kind {
        Kind::Kernel => kernel::hash(&opts.recipes.kernel(name)?, opts),
        Kind::Image => image::hash(&opts.recipes.image(name)?, opts),
    }
}

/// Build (or take from the cache) and install into `store`.
pub fn build_and_install(
    kind: Kind,
    name: &str,
    opts: &BuildOptions,
    store: &Store,
    progress: ProgressFn<'_>,
) -> Result<(Built, Installed), BuildError> {
    let built = build(kind, name, opts, progress)?;
    let origin = Origin::Build {
        bundle_sha256: built.packed.sha256.clone(),
    };
    let installed = store.install_file(&built.packed.path, kind, name, origin, progress)?;
    Ok((built, installed))
}

/// The cache path of a bundle.
fn cache_path(opts: &BuildOptions, kind: Kind, hash: &str) -> PathBuf {
    let dir = match kind {
        Kind::Image => "images",
        Kind::Kernel => "kernels",
    };
    opts.cache_dir.join(dir).join(format!("{hash}.tar.zst"))
}

/// A cached bundle for `hash`, if one exists and its manifest reads.
fn cached(
    opts: &BuildOptions,
    kind: Kind,
    name: &str,
    hash: &str,
    progress: ProgressFn<'_>,
) -> Option<Built> {
    if opts.force {
        return None;
    }
    let path = cache_path(opts, kind, hash);
    let manifest = crate::bundle::read_manifest(&path).ok()?;
    if manifest.kind != kind
        || manifest.name != name
        || manifest.recipe_hash.as_deref() != Some(hash)
    {
        return None;
    }
    let (size, sha256) = crate::digest::sha256_file(&path).ok()?;
    progress(Progress::note(
        Phase::Build,
        format!("using cached bundle {}", path.display()),
    ));
    Some(Built {
        packed: Packed {
            path,
            manifest,
            size,
            sha256,
        },
        recipe_hash: hash.to_owned(),
        cached: true,
    })
}

fn require_root(kind: Kind, name: &str) -> Result<(), BuildError> {
    if nix::unistd::geteuid().is_root() {
        Ok(())
    } else {
        Err(BuildError::NotRoot {
            kind,
            name: name.to_owned(),
        })
    }
}

/// Scratch directory of one build plus the lock that serializes builds of
/// the same recipe hash; removes leftovers of interrupted builds.
struct Work {
    dir: tempfile::TempDir,
    _lock: banger_host::lock::FileLock,
}

impl Work {
    fn new(opts: &BuildOptions, kind: Kind, name: &str) -> Result<Work, BuildError> {
        let root = opts.work_root();
        std::fs::create_dir_all(&root).map_err(io_err("create", &root))?;
        let lock_path = root.join(format!("{kind}-{name}.lock"));
        let lock = banger_host::lock::FileLock::exclusive(&lock_path)?;
        let prefix = format!("{kind}-{name}+");
        for entry in std::fs::read_dir(&root).map_err(io_err("list", &root))? {
            let entry = entry.map_err(io_err("list", &root))?;
            if entry.file_name().to_string_lossy().starts_with(&prefix) {
                let p = entry.path();
                std::fs::remove_dir_all(&p).map_err(io_err("remove leftover", &p))?;
            }
        }
        let dir = tempfile::Builder::new()
            .prefix(&prefix)
            .tempdir_in(&root)
            .map_err(io_err("create in", &root))?;
        Ok(Work { dir, _lock: lock })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

/// Write the finished bundle to the cache.
fn finish_bundle(
    src: &Path,
    meta: &crate::bundle::BundleMeta,
    opts: &BuildOptions,
    progress: ProgressFn<'_>,
) -> Result<Packed, BuildError> {
    let hash = meta
        .recipe_hash
        .as_deref()
        .expect("builds always have a recipe hash");
    let out = cache_path(opts, meta.kind, hash);
    let dir = out.parent().expect("cache path has a parent");
    std::fs::create_dir_all(dir).map_err(io_err("create", dir))?;
    progress(Progress::note(
        Phase::Build,
        format!("packing {}", out.display()),
    ));
    let packed = crate::bundle::pack(src, meta, &out)?;
    progress(Progress::note(
        Phase::Build,
        format!(
            "{} {} built: {} ({} bytes, sha256 {})",
            meta.kind,
            meta.name,
            out.display(),
            packed.size,
            packed.sha256
        ),
    ));
    Ok(packed)
}

/// `SOURCE_DATE_EPOCH` of a build: the option, else the recipe's.
fn source_date_epoch(opts: &BuildOptions, recipe_value: i64) -> i64 {
    opts.source_date_epoch.unwrap_or(recipe_value)
}
