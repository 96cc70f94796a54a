//! Images and kernels: pull from the catalog, build from recipes, list,
//! show, delete, register and promote (`/v1/images`, `/v1/kernels`).
//!
//! Two kinds of artifacts, each with one source of truth:
//!
//! - **Managed** bundles live in the store under the state dir
//!   (`<state>/images/<name>`, `<state>/kernels/<name>`, see
//!   `banger_image::store`). Their `manifest.json` and `origin.json` are the
//!   record; the database has no rows for them.
//! - **Registered** artifacts are host-side files used in place. They have
//!   no store directory, so their record is a row of the database's
//!   `images`/`kernels` tables with `managed = 0`, written only by
//!   [`register`] and removed by delete or [`promote`].
//!
//! A name is one or the other: register refuses names the store has, pull
//! and build refuse names registered from host files, and lookups ask the
//! store first.

pub mod api;
pub mod oci;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use banger_image::catalog::{Catalog, CatalogError};
use banger_image::manifest::{self, validate_name, ManifestError};
use banger_image::pull::PullError;
use banger_image::store::{Import, Installed, Origin, Store, StoreError};
use banger_image::transfer::{self, ExportPlan, ImportedBundle, Source, TransferError};
use banger_image::validate::{self, Artifact, ValidateError};
use banger_image::{Kind, Progress};
use banger_state::{ArtifactSource as DbSource, ImageRecord, KernelRecord, Timestamp};
use banger_wire::api::{ApiError, ErrorCode, StreamEvent};
use banger_wire::image::{
    ArtifactDeleted, ArtifactSource, ImageInfo, ImageRegisterRequest, InstallReport,
    InstalledBundle, KernelInfo,
};

use crate::context::Daemon;
use crate::events::EventSink;

/// Errors of image and kernel operations, each naming the artifact or path.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("no {kind} named {name:?} is installed or registered")]
    NotFound { kind: Kind, name: String },
    #[error("{kind} {name} is in use by {}; delete {} first", .users.join(", "), if .users.len() == 1 { "it" } else { "them" })]
    InUse {
        kind: Kind,
        name: String,
        users: Vec<String>,
    },
    #[error("{kind} {name} is registered from host files; delete it first (`banger {kind} delete {name}`) or copy it into the store with `banger image promote {name}`")]
    Registered { kind: Kind, name: String },
    #[error("{kind} {name} already exists (installed in the store); delete it first or pick another name")]
    ExistsInStore { kind: Kind, name: String },
    #[error("{kind} {name} already exists (registered); delete it first or pick another name")]
    ExistsRegistered { kind: Kind, name: String },
    #[error(
        "image {name} is already managed by banger's store; only registered images can be promoted"
    )]
    AlreadyManaged { name: String },
    #[error("{message}")]
    BadRequest { message: String },
    #[error(transparent)]
    Name(#[from] ManifestError),
    #[error(transparent)]
    Invalid(#[from] ValidateError),
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error(transparent)]
    Pull(#[from] PullError),
    #[error(transparent)]
    Build(#[from] banger_image::build::BuildError),
    #[error("no recipe for {kind} {name:?} in this banger (recipes: {known})")]
    NoRecipe {
        kind: Kind,
        name: String,
        known: String,
    },
    #[error("building {kind} {name} needs root (mmdebstrap and chroot), and bangerd runs as uid {uid} without a root helper that can build: {reason}. Run banger as root (its per-user daemon then builds in-process) or install the system service with `sudo banger system install` (its root helper builds)")]
    NeedsRoot {
        kind: Kind,
        name: String,
        uid: u32,
        reason: String,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Transfer(#[from] TransferError),
    #[error("image {name} is registered from host files; copy it into the store with `banger image promote {name}`, then export it")]
    ExportRegistered { name: String },
    #[error("the upload broke off: {0}")]
    Upload(#[source] axum::Error),
    #[error("cannot encode the export index: {0}")]
    EncodeIndex(#[source] serde_json::Error),
    #[error(transparent)]
    State(#[from] banger_state::StateError),
    #[error(transparent)]
    Helper(#[from] crate::helper::HelperOpError),
    #[error("{task} task failed: {source}")]
    Task {
        task: ImageTask,
        #[source]
        source: tokio::task::JoinError,
    },
}

/// The blocking image operation whose task panicked or was cancelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageTask {
    Build,
    Delete,
    Promote,
    Export,
    Import,
    Register,
}

impl std::fmt::Display for ImageTask {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ImageTask::Build => "build",
            ImageTask::Delete => "delete",
            ImageTask::Promote => "promote",
            ImageTask::Export => "export",
            ImageTask::Import => "import",
            ImageTask::Register => "register",
        })
    }
}

impl ImageError {
    /// Whether it failed because the catalog has no entry of that name (as
    /// opposed to an entry that could not be fetched).
    pub fn is_unknown_name(&self) -> bool {
        matches!(
            self,
            ImageError::Catalog(CatalogError::Unknown { .. })
                | ImageError::Pull(PullError::Catalog(CatalogError::Unknown { .. }))
        )
    }

    /// The API error code this failure is served with.
    pub fn code(&self) -> ErrorCode {
        match self {
            ImageError::NotFound { .. } | ImageError::NoRecipe { .. } => ErrorCode::NotFound,
            ImageError::InUse { .. }
            | ImageError::Registered { .. }
            | ImageError::ExistsInStore { .. }
            | ImageError::ExistsRegistered { .. }
            | ImageError::AlreadyManaged { .. }
            | ImageError::ExportRegistered { .. } => ErrorCode::Conflict,
            ImageError::BadRequest { .. }
            | ImageError::Name(_)
            | ImageError::Invalid(_)
            | ImageError::Upload(_) => ErrorCode::BadRequest,
            ImageError::NeedsRoot { .. } => ErrorCode::Unsupported,
            ImageError::Catalog(e) => catalog_code(e),
            ImageError::Pull(e) => pull_code(e),
            ImageError::Build(e) => build_code(e),
            ImageError::Store(e) => store_code(e),
            ImageError::Transfer(e) => transfer_code(e),
            ImageError::State(e) => crate::state_code(e),
            ImageError::Helper(e) => e.code(),
            ImageError::EncodeIndex(_) | ImageError::Task { .. } => ErrorCode::Internal,
        }
    }
}

/// A name the catalog does not know is 404; a catalog this banger cannot
/// read is broken on the serving side (500), not the user's request.
fn catalog_code(e: &CatalogError) -> ErrorCode {
    match e {
        CatalogError::Unknown { .. } => ErrorCode::NotFound,
        // The URL comes from the user's config or environment.
        CatalogError::BadBaseUrl { .. } => ErrorCode::BadRequest,
        CatalogError::Parse(_)
        | CatalogError::Edit(_)
        | CatalogError::NoEntries { .. }
        | CatalogError::Format(_)
        | CatalogError::Entry { .. }
        | CatalogError::Read { .. } => ErrorCode::Internal,
    }
}

/// Nothing published is 404; a download the remote broke is the remote's
/// fault (400, nothing here is broken, as for transfers); the rest is ours.
fn pull_code(e: &PullError) -> ErrorCode {
    match e {
        PullError::NotPublished { .. } => ErrorCode::NotFound,
        PullError::Catalog(e) => catalog_code(e),
        PullError::Store(e) => store_code(e),
        PullError::Unreachable { .. }
        | PullError::Status { .. }
        | PullError::SizeAnnounced { .. }
        | PullError::Interrupted { .. }
        | PullError::Truncated { .. }
        | PullError::TooLong { .. }
        | PullError::Checksum { .. }
        | PullError::Bundle { .. }
        | PullError::KernelRef { .. } => ErrorCode::BadRequest,
        PullError::Client(_) | PullError::Task(_) => ErrorCode::Internal,
    }
}

/// A build this daemon cannot do is unsupported (501); a recipe that does
/// not parse or a missing host tool is the host's setup (the message names
/// the package); a failing step is internal.
fn build_code(e: &banger_image::build::BuildError) -> ErrorCode {
    use banger_image::build::BuildError as B;
    match e {
        B::NotRoot { .. } | B::MissingTool { .. } | B::OldTool { .. } => ErrorCode::Unsupported,
        B::Store(e) => store_code(e),
        B::Recipe(_)
        | B::CommandStart { .. }
        | B::CommandWait { .. }
        | B::Command { .. }
        | B::Debugfs { .. }
        | B::Io { .. }
        | B::PinMismatch { .. }
        | B::PinMissing { .. }
        | B::KernelTree(_)
        | B::MissingModule { .. }
        | B::Module { .. }
        | B::BzImage { .. }
        | B::Validate(_)
        | B::Bundle(_)
        | B::Npm { .. }
        | B::Inspect { .. }
        // Opening or taking the build's lock file in the work directory.
        | B::Lock(_) => ErrorCode::Internal,
    }
}

/// A refused name or file is the request's fault (400); a damaged install
/// is this daemon's own data gone bad (500, the message names its path;
/// tests/image_routes.rs pins that `show` of one is 500); the rest is I/O
/// here.
fn store_code(e: &StoreError) -> ErrorCode {
    match e {
        StoreError::Name(_) | StoreError::Invalid(_) => ErrorCode::BadRequest,
        StoreError::Damaged { .. }
        | StoreError::DamagedManifest { .. }
        | StoreError::Io { .. }
        | StoreError::Bundle { .. }
        | StoreError::Describe(_)
        | StoreError::ModulesDisk { .. }
        | StoreError::ModulesTree { .. }
        // Opening or taking the store's lock file (waiting is not an error).
        | StoreError::Lock(_) => ErrorCode::Internal,
    }
}

/// Export and import failures: what the user named is missing (404), the
/// store or a registration stands in the way (409), the input is refused
/// (400); a download that failed is the remote's fault, also 400 (nothing
/// here is broken).
fn transfer_code(e: &TransferError) -> ErrorCode {
    match e {
        TransferError::NotInstalled { .. } => ErrorCode::NotFound,
        TransferError::KernelMissing { .. }
        | TransferError::Damaged { .. }
        | TransferError::Refused { .. }
        | TransferError::NeedsKernel { .. } => ErrorCode::Conflict,
        TransferError::NotAnArchive { .. }
        | TransferError::BadIndex { .. }
        | TransferError::TooNew { .. }
        | TransferError::UnexpectedEntry { .. }
        | TransferError::EntrySize { .. }
        | TransferError::Checksum { .. }
        | TransferError::Bundle { .. }
        | TransferError::Stream { .. }
        | TransferError::Download { .. }
        | TransferError::Status { .. } => ErrorCode::BadRequest,
        TransferError::Pack { .. }
        | TransferError::Io { .. }
        | TransferError::Write(_)
        | TransferError::Task(_)
        | TransferError::Store(_) => ErrorCode::Internal,
    }
}

impl From<ImageError> for ApiError {
    fn from(e: ImageError) -> ApiError {
        ApiError {
            code: e.code(),
            message: e.to_string(),
        }
    }
}

/// The managed store of this daemon.
pub fn store(state: &Daemon) -> Store {
    Store::new(&state.layout.state_dir)
}

/// The catalog base URL: config `catalog_url` (or `BANGER_CATALOG_URL`)
/// when set, else the catalog's own `base_url`.
pub fn base_url(state: &Daemon, catalog: &Catalog) -> String {
    let setting = &state.vms.config().catalog_url;
    match setting.provenance {
        banger_config::Provenance::BuiltIn => catalog.base_url.clone(),
        _ => setting.value.clone(),
    }
}

async fn blocking<T: Send + 'static>(
    task: ImageTask,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ImageError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|source| ImageError::Task { task, source })
}

/// Forwards [`Progress`] reports (sent from any thread) to a stream.
struct Forwarder {
    tx: tokio::sync::mpsc::UnboundedSender<Progress>,
    task: tokio::task::JoinHandle<()>,
}

impl Forwarder {
    fn new(sink: &EventSink) -> Forwarder {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Progress>();
        let sink = sink.clone();
        let task = tokio::spawn(async move {
            while let Some(p) = rx.recv().await {
                sink.send(StreamEvent::Progress {
                    phase: p.phase.as_str().to_owned(),
                    message: p.message,
                    current: p.current,
                    total: p.total,
                })
                .await;
            }
        });
        Forwarder { tx, task }
    }

    /// A progress callback feeding this forwarder.
    fn callback(&self) -> impl Fn(Progress) + Send + Sync + 'static {
        let tx = self.tx.clone();
        move |p| {
            let _ = tx.send(p);
        }
    }

    /// Wait until every report sent so far reached the stream.
    async fn finish(self) {
        drop(self.tx);
        let _ = self.task.await;
    }
}

fn registered_image(state: &Daemon, name: &str) -> Result<Option<ImageRecord>, ImageError> {
    Ok(state.db().get_image(name)?.filter(|r| !r.managed))
}

fn registered_kernel(state: &Daemon, name: &str) -> Result<Option<KernelRecord>, ImageError> {
    Ok(state.db().get_kernel(name)?.filter(|r| !r.managed))
}

/// Refuse to pull or build over a name registered from host files.
pub fn refuse_registered(state: &Daemon, kind: Kind, name: &str) -> Result<(), ImageError> {
    let registered = match kind {
        Kind::Image => registered_image(state, name)?.is_some(),
        Kind::Kernel => registered_kernel(state, name)?.is_some(),
    };
    if registered && store(state).get(kind, name)?.is_none() {
        return Err(ImageError::Registered {
            kind,
            name: name.to_owned(),
        });
    }
    Ok(())
}

fn bundle_report(i: &Installed, fetched: bool) -> InstalledBundle {
    let sha = i.origin.as_ref().and_then(|o| match &o.origin {
        Origin::Catalog { bundle_sha256, .. }
        | Origin::Build { bundle_sha256 }
        | Origin::File { bundle_sha256, .. } => Some(bundle_sha256.clone()),
        Origin::Imported { .. } | Origin::Oci { .. } => None,
    });
    InstalledBundle {
        kind: i.manifest.kind.as_str().to_owned(),
        name: i.manifest.name.clone(),
        version: i.manifest.version.clone(),
        fetched,
        from_cache: false,
        bundle_sha256: sha,
    }
}

/// Pull `kind name` from the catalog (an image's kernel first), streaming
/// download progress into `sink`. Installed entries are not fetched again.
pub async fn pull(
    state: &Daemon,
    kind: Kind,
    name: &str,
    sink: &EventSink,
) -> Result<InstallReport, ImageError> {
    validate_name(name)?;
    refuse_registered(state, kind, name)?;
    let catalog = Catalog::from_env()?;
    let base = base_url(state, &catalog);
    let store = store(state);
    let fwd = Forwarder::new(sink);
    let cb = fwd.callback();
    let result = banger_image::pull::pull_with_deps(&catalog, kind, name, &base, &store, &cb).await;
    drop(cb);
    fwd.finish().await;
    let pulled = result?;
    Ok(InstallReport {
        installed: pulled
            .iter()
            .map(|p| bundle_report(&p.installed, p.downloaded))
            .collect(),
    })
}

/// Build `kind name` from its embedded recipe and install it; an image
/// whose kernel is not installed gets its kernel built first.
pub async fn build(
    state: Arc<Daemon>,
    kind: Kind,
    name: String,
    force: bool,
    sink: &EventSink,
) -> Result<InstallReport, ImageError> {
    validate_name(&name)?;
    refuse_registered(&state, kind, &name)?;
    let recipes = banger_image::recipe::RecipeSet::embedded();
    let known = recipes.names(kind);
    if !known.contains(&name) {
        return Err(ImageError::NoRecipe {
            kind,
            name,
            known: known.join(", "),
        });
    }
    let mut order = Vec::new();
    if kind == Kind::Image {
        let kernel = recipes
            .image(&name)
            .map_err(banger_image::build::BuildError::from)?
            .kernel_ref
            .clone();
        let have = store(&state).get(Kind::Kernel, &kernel)?.is_some()
            || registered_kernel(&state, &kernel)?.is_some();
        if !have {
            order.push((Kind::Kernel, kernel));
        }
    }
    order.push((kind, name));
    let mut installed = Vec::new();
    for (kind, name) in order {
        installed.push(build_one(&state, kind, &name, force, sink).await?);
    }
    Ok(InstallReport { installed })
}

async fn build_one(
    state: &Arc<Daemon>,
    kind: Kind,
    name: &str,
    force: bool,
    sink: &EventSink,
) -> Result<InstalledBundle, ImageError> {
    let euid = nix::unistd::geteuid();
    if !euid.is_root() {
        return build_in_helper(state, kind, name, euid.as_raw(), sink).await;
    }
    sink.progress("build", format!("building {kind} {name} from its recipe"))
        .await;
    let mut opts = banger_image::build::BuildOptions::new(&state.layout.cache_dir);
    opts.force = force;
    opts.source_date_epoch = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|v| v.parse().ok());
    // No agent baked in: the guest loads banger's agent from its config
    // drive at boot, and the recipe hash stays the one the root helper and
    // CI compute for the same recipe.
    let store = store(state);
    let fwd = Forwarder::new(sink);
    let cb = fwd.callback();
    let name2 = name.to_owned();
    let result = blocking(ImageTask::Build, move || {
        banger_image::build::build_and_install(kind, &name2, &opts, &store, &cb)
    })
    .await;
    fwd.finish().await;
    let (built, installed) = result??;
    let mut report = bundle_report(&installed, true);
    report.from_cache = built.cached;
    report.bundle_sha256 = Some(built.packed.sha256);
    Ok(report)
}

/// Build through the root helper (system install): one request answered
/// when the bundle is installed in our store, so progress is a note.
async fn build_in_helper(
    state: &Daemon,
    kind: Kind,
    name: &str,
    uid: u32,
    sink: &EventSink,
) -> Result<InstalledBundle, ImageError> {
    use crate::helper::{HelperCallError, HelperOpError};
    use banger_wire::helper::{HelperRequest, HelperResponse};
    let needs_root = |reason: String| ImageError::NeedsRoot {
        kind,
        name: name.to_owned(),
        uid,
        reason,
    };
    if let crate::helper::RootHelper::Unavailable { reason } = &state.helper {
        tracing::info!("no root helper for a build: {reason}");
        return Err(needs_root("no root helper is connected".into()));
    }
    sink.progress(
        "build",
        format!("the root helper is building {kind} {name} from its recipe (minutes; no progress until done)"),
    )
    .await;
    let req = HelperRequest::BuildBundle {
        kind,
        name: name.to_owned(),
    };
    match state.helper.request(&req).await {
        Ok(HelperResponse::Built {
            version,
            bundle_sha256,
            cached,
            ..
        }) => Ok(InstalledBundle {
            kind: kind.as_str().to_owned(),
            name: name.to_owned(),
            version,
            fetched: true,
            from_cache: cached,
            bundle_sha256: Some(bundle_sha256),
        }),
        Ok(other) => Err(HelperOpError::unexpected(&req, &other).into()),
        Err(HelperCallError::Unavailable { reason }) => Err(needs_root(reason)),
        Err(e) => Err(HelperOpError::Call(e).into()),
    }
}

/// VM names per image and per kernel.
fn vm_users(state: &Daemon) -> Result<(UsersMap, UsersMap), ImageError> {
    let mut by_image = UsersMap::new();
    let mut by_kernel = UsersMap::new();
    for vm in state.db().list_vms()? {
        by_image
            .entry(vm.image.clone())
            .or_default()
            .push(vm.name.clone());
        by_kernel.entry(vm.kernel).or_default().push(vm.name);
    }
    Ok((by_image, by_kernel))
}

type UsersMap = BTreeMap<String, Vec<String>>;

fn origin_text(o: &Origin) -> (ArtifactSource, Option<String>) {
    match o {
        Origin::Catalog { url, .. } => (ArtifactSource::Catalog, Some(url.clone())),
        Origin::Build { .. } => (ArtifactSource::Build, None),
        Origin::File { path, .. } => (ArtifactSource::File, Some(path.clone())),
        Origin::Imported { paths } => (ArtifactSource::Imported, Some(paths.join(", "))),
        Origin::Oci { reference, .. } => (ArtifactSource::Oci, Some(reference.clone())),
    }
}

fn managed_image_info(i: &Installed, users: &UsersMap) -> ImageInfo {
    let (source, origin) = i
        .origin
        .as_ref()
        .map(|o| origin_text(&o.origin))
        .unwrap_or((ArtifactSource::File, None));
    ImageInfo {
        name: i.manifest.name.clone(),
        version: i.manifest.version.clone(),
        arch: i.manifest.arch.clone(),
        kernel: i.manifest.kernel_ref.clone().unwrap_or_default(),
        size_bytes: i.manifest.artifact(manifest::ROOTFS).map_or(0, |a| a.size),
        source,
        origin,
        managed: true,
        rootfs: i
            .rootfs()
            .map(|p| p.display().to_string())
            .unwrap_or_default(),
        created: Some(i.manifest.created),
        installed_at: i.origin.as_ref().map(|o| o.installed_at),
        recipe_hash: i.manifest.recipe_hash.clone(),
        used_by: users.get(&i.manifest.name).cloned().unwrap_or_default(),
        oci: origin_of(i),
    }
}

fn registered_image_info(r: &ImageRecord, users: &UsersMap) -> ImageInfo {
    ImageInfo {
        name: r.name.clone(),
        version: r.version.clone(),
        arch: r.arch.clone(),
        kernel: r.kernel_ref.clone(),
        size_bytes: r.size_bytes,
        source: ArtifactSource::Registered,
        origin: Some(r.rootfs_path.display().to_string()),
        managed: false,
        rootfs: r.rootfs_path.display().to_string(),
        created: None,
        installed_at: Some((r.created_at.unix_millis().max(0) / 1000) as u64),
        recipe_hash: r.recipe_hash.clone(),
        used_by: users.get(&r.name).cloned().unwrap_or_default(),
        oci: None,
    }
}

fn managed_kernel_info(i: &Installed, images: &UsersMap, vms: &UsersMap) -> KernelInfo {
    let (source, origin) = i
        .origin
        .as_ref()
        .map(|o| origin_text(&o.origin))
        .unwrap_or((ArtifactSource::File, None));
    let name = &i.manifest.name;
    KernelInfo {
        name: name.clone(),
        version: i.manifest.version.clone(),
        release: i.manifest.kernel_release.clone(),
        size_bytes: i.manifest.total_size(),
        source,
        origin,
        managed: true,
        vmlinux: i
            .vmlinux()
            .map(|p| p.display().to_string())
            .unwrap_or_default(),
        initrd: i.initrd().map(|p| p.display().to_string()),
        modules: i.modules_dir().map(|p| p.display().to_string()),
        created: Some(i.manifest.created),
        installed_at: i.origin.as_ref().map(|o| o.installed_at),
        used_by_images: images.get(name).cloned().unwrap_or_default(),
        used_by_vms: vms.get(name).cloned().unwrap_or_default(),
    }
}

fn file_size(p: &Path) -> u64 {
    std::fs::metadata(p).map_or(0, |m| m.len())
}

fn registered_kernel_info(r: &KernelRecord, images: &UsersMap, vms: &UsersMap) -> KernelInfo {
    let size = file_size(&r.vmlinux_path) + r.initrd_path.as_deref().map_or(0, file_size);
    KernelInfo {
        name: r.name.clone(),
        version: r.version.clone(),
        release: r
            .modules_path
            .as_deref()
            .and_then(|m| m.file_name())
            .map(|n| n.to_string_lossy().into_owned()),
        size_bytes: size,
        source: ArtifactSource::Registered,
        origin: Some(r.vmlinux_path.display().to_string()),
        managed: false,
        vmlinux: r.vmlinux_path.display().to_string(),
        initrd: r.initrd_path.as_ref().map(|p| p.display().to_string()),
        modules: r.modules_path.as_ref().map(|p| p.display().to_string()),
        created: None,
        installed_at: Some((r.created_at.unix_millis().max(0) / 1000) as u64),
        used_by_images: images.get(&r.name).cloned().unwrap_or_default(),
        used_by_vms: vms.get(&r.name).cloned().unwrap_or_default(),
    }
}

/// Every readable bundle of `kind` in the store. A damaged directory is
/// logged and left out, so one bad entry does not hide the others (`show`
/// and `delete` of that name still reach it).
fn installed(state: &Daemon, kind: Kind) -> Result<Vec<Installed>, ImageError> {
    let store = store(state);
    let dir = store.kind_dir(kind);
    let entries = match std::fs::read_dir(&dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(StoreError::Io {
                op: "list",
                path: dir,
                source,
            }
            .into())
        }
    };
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| validate_name(n).is_ok())
        .collect();
    names.sort();
    let mut out = Vec::new();
    for name in names {
        match store.get(kind, &name) {
            Ok(Some(i)) => out.push(i),
            Ok(None) => {}
            Err(e) => tracing::warn!("leaving {kind} {name} out of the list: {e}"),
        }
    }
    Ok(out)
}

/// Every image, managed and registered, by name.
pub fn list_images(state: &Daemon) -> Result<Vec<ImageInfo>, ImageError> {
    let (users, _) = vm_users(state)?;
    let mut out: BTreeMap<String, ImageInfo> = BTreeMap::new();
    for r in state.db().list_images()?.iter().filter(|r| !r.managed) {
        out.insert(r.name.clone(), registered_image_info(r, &users));
    }
    // The store wins over a row left by an interrupted promote.
    for i in installed(state, Kind::Image)? {
        out.insert(i.manifest.name.clone(), managed_image_info(&i, &users));
    }
    Ok(out.into_values().collect())
}

/// One image.
pub fn show_image(state: &Daemon, name: &str) -> Result<ImageInfo, ImageError> {
    validate_name(name)?;
    let (users, _) = vm_users(state)?;
    if let Some(i) = store(state).get(Kind::Image, name)? {
        return Ok(managed_image_info(&i, &users));
    }
    match registered_image(state, name)? {
        Some(r) => Ok(registered_image_info(&r, &users)),
        None => Err(ImageError::NotFound {
            kind: Kind::Image,
            name: name.to_owned(),
        }),
    }
}

/// Image names per kernel, over managed and registered images.
fn image_users(state: &Daemon) -> Result<UsersMap, ImageError> {
    let mut map = UsersMap::new();
    for i in list_images(state)? {
        map.entry(i.kernel).or_default().push(i.name);
    }
    Ok(map)
}

/// Every kernel, managed and registered, by name.
pub fn list_kernels(state: &Daemon) -> Result<Vec<KernelInfo>, ImageError> {
    let (_, vms) = vm_users(state)?;
    let images = image_users(state)?;
    let mut out: BTreeMap<String, KernelInfo> = BTreeMap::new();
    for r in state.db().list_kernels()?.iter().filter(|r| !r.managed) {
        out.insert(r.name.clone(), registered_kernel_info(r, &images, &vms));
    }
    for i in installed(state, Kind::Kernel)? {
        out.insert(
            i.manifest.name.clone(),
            managed_kernel_info(&i, &images, &vms),
        );
    }
    Ok(out.into_values().collect())
}

/// One kernel.
pub fn show_kernel(state: &Daemon, name: &str) -> Result<KernelInfo, ImageError> {
    validate_name(name)?;
    let (_, vms) = vm_users(state)?;
    let images = image_users(state)?;
    if let Some(i) = store(state).get(Kind::Kernel, name)? {
        return Ok(managed_kernel_info(&i, &images, &vms));
    }
    match registered_kernel(state, name)? {
        Some(r) => Ok(registered_kernel_info(&r, &images, &vms)),
        None => Err(ImageError::NotFound {
            kind: Kind::Kernel,
            name: name.to_owned(),
        }),
    }
}

/// Delete an image (store directory or registration) unless a VM uses it.
/// Registered files themselves are left alone.
pub async fn delete_image(state: &Daemon, name: &str) -> Result<ArtifactDeleted, ImageError> {
    validate_name(name)?;
    let (users, _) = vm_users(state)?;
    if let Some(vms) = users.get(name) {
        return Err(ImageError::InUse {
            kind: Kind::Image,
            name: name.to_owned(),
            users: vms.iter().map(|v| format!("VM {v}")).collect(),
        });
    }
    let store = store(state);
    let n = name.to_owned();
    let in_store = blocking(ImageTask::Delete, move || store.delete(Kind::Image, &n)).await??;
    let in_db = match registered_image(state, name)? {
        Some(_) => state.db().delete_image(name)?,
        None => false,
    };
    Ok(ArtifactDeleted {
        name: name.to_owned(),
        existed: in_store || in_db,
    })
}

/// Delete a kernel unless an image or a VM uses it.
pub async fn delete_kernel(state: &Daemon, name: &str) -> Result<ArtifactDeleted, ImageError> {
    validate_name(name)?;
    let (_, vms) = vm_users(state)?;
    let images = image_users(state)?;
    let mut users: Vec<String> = images
        .get(name)
        .into_iter()
        .flatten()
        .map(|i| format!("image {i}"))
        .collect();
    users.extend(
        vms.get(name)
            .into_iter()
            .flatten()
            .map(|v| format!("VM {v}")),
    );
    if !users.is_empty() {
        return Err(ImageError::InUse {
            kind: Kind::Kernel,
            name: name.to_owned(),
            users,
        });
    }
    let store = store(state);
    let n = name.to_owned();
    let in_store = blocking(ImageTask::Delete, move || store.delete(Kind::Kernel, &n)).await??;
    let in_db = match registered_kernel(state, name)? {
        Some(_) => state.db().delete_kernel(name)?,
        None => false,
    };
    Ok(ArtifactDeleted {
        name: name.to_owned(),
        existed: in_store || in_db,
    })
}

fn abs(artifact: Artifact, p: &str) -> Result<PathBuf, ImageError> {
    let path = PathBuf::from(p);
    if !path.is_absolute() {
        return Err(ValidateError::Relative { artifact, path }.into());
    }
    Ok(path)
}

fn taken(state: &Daemon, kind: Kind, name: &str) -> Result<(), ImageError> {
    let name = name.to_owned();
    if store(state).get(kind, &name)?.is_some() {
        Err(ImageError::ExistsInStore { kind, name })
    } else if match kind {
        Kind::Image => registered_image(state, &name)?.is_some(),
        Kind::Kernel => registered_kernel(state, &name)?.is_some(),
    } {
        Err(ImageError::ExistsRegistered { kind, name })
    } else {
        Ok(())
    }
}

/// Register host-side files as an image (and, with explicit kernel paths, a
/// kernel of the same name). Every path must be absolute and pass the
/// checks of `banger_image::validate` (ext4 magic, x86_64 ELF with a PVH
/// note, readable initrd, modules directory).
pub fn register(state: &Daemon, req: &ImageRegisterRequest) -> Result<ImageInfo, ImageError> {
    validate_name(&req.name)?;
    let rootfs = abs(Artifact::RootFs, &req.rootfs)?;
    let kernel = RegisterKernel::from_request(req)?;
    let info = validate::rootfs(&rootfs)?;
    kernel.validate()?;
    taken(state, Kind::Image, &req.name)?;
    let kernel_name = kernel.install(state, &req.name)?;
    let record = ImageRecord {
        name: req.name.clone(),
        version: "registered".into(),
        arch: manifest::ARCH.into(),
        kernel_ref: kernel_name,
        rootfs_path: rootfs,
        rootfs_sha256: None,
        size_bytes: info.size,
        source: DbSource::Registered,
        managed: false,
        recipe_hash: None,
        created_at: Timestamp::now(),
    };
    state.db().insert_image(&record)?;
    show_image(state, &req.name)
}

/// The kernel a registered image boots: an installed one by name, or host
/// files registered with the image (under the image's name).
enum RegisterKernel {
    Ref(String),
    Paths {
        vmlinux: PathBuf,
        initrd: Option<PathBuf>,
        modules: Option<PathBuf>,
    },
}

impl RegisterKernel {
    /// Exactly one of `kernel_ref` and the kernel paths; paths absolute.
    fn from_request(req: &ImageRegisterRequest) -> Result<RegisterKernel, ImageError> {
        let bad = |message: &str| ImageError::BadRequest {
            message: message.into(),
        };
        let kernel_paths = req.initrd.is_some() || req.modules.is_some() || req.kernel.is_some();
        match (&req.kernel_ref, &req.kernel) {
            (Some(_), _) if kernel_paths => Err(bad(
                "give either kernel_ref or kernel paths (kernel, initrd, modules), not both",
            )),
            (Some(k), _) => {
                validate_name(k)?;
                Ok(RegisterKernel::Ref(k.clone()))
            }
            (None, None) if kernel_paths => Err(bad("initrd and modules need the kernel path too")),
            (None, None) => Err(bad(
                "a registered image needs a kernel: give kernel_ref (an installed kernel) or the kernel path",
            )),
            (None, Some(k)) => Ok(RegisterKernel::Paths {
                vmlinux: abs(Artifact::Kernel, k)?,
                initrd: req.initrd.as_deref().map(|p| abs(Artifact::Initrd, p)).transpose()?,
                modules: req
                    .modules
                    .as_deref()
                    .map(|p| abs(Artifact::ModulesDir, p))
                    .transpose()?,
            }),
        }
    }

    /// The host files are what they claim to be.
    fn validate(&self) -> Result<(), ImageError> {
        if let RegisterKernel::Paths {
            vmlinux,
            initrd,
            modules,
        } = self
        {
            validate::vmlinux(vmlinux)?;
            if let Some(i) = initrd {
                validate::initrd(i)?;
            }
            if let Some(m) = modules {
                validate::modules_dir(m)?;
            }
        }
        Ok(())
    }

    /// The kernel's name for image `image`: a reference must be installed;
    /// paths are recorded as a registered kernel named like the image.
    fn install(self, state: &Daemon, image: &str) -> Result<String, ImageError> {
        match self {
            RegisterKernel::Ref(k) => {
                let have = store(state).get(Kind::Kernel, &k)?.is_some()
                    || registered_kernel(state, &k)?.is_some();
                if !have {
                    return Err(ImageError::NotFound {
                        kind: Kind::Kernel,
                        name: k,
                    });
                }
                Ok(k)
            }
            RegisterKernel::Paths {
                vmlinux,
                initrd,
                modules,
            } => {
                taken(state, Kind::Kernel, image)?;
                state.db().insert_kernel(&KernelRecord {
                    name: image.to_owned(),
                    version: "registered".into(),
                    vmlinux_path: vmlinux,
                    initrd_path: initrd,
                    modules_path: modules,
                    sha256: None,
                    source: DbSource::Registered,
                    managed: false,
                    created_at: Timestamp::now(),
                })?;
                Ok(image.to_owned())
            }
        }
    }
}

/// The registration of `name` if it can be promoted: registered, and not
/// already in the store.
pub fn promotable(state: &Daemon, name: &str) -> Result<ImageRecord, ImageError> {
    validate_name(name)?;
    if store(state).get(Kind::Image, name)?.is_some() {
        return Err(ImageError::AlreadyManaged {
            name: name.to_owned(),
        });
    }
    registered_image(state, name)?.ok_or_else(|| ImageError::NotFound {
        kind: Kind::Image,
        name: name.to_owned(),
    })
}

/// Copy a registered image (and its registered kernel) into the managed
/// store; afterwards the name is served from the store and the
/// registration is gone. The host files are left in place.
pub async fn promote(
    state: &Daemon,
    name: &str,
    sink: &EventSink,
) -> Result<ImageInfo, ImageError> {
    let image = promotable(state, name)?;
    let store = store(state);
    let kernel = image.kernel_ref.clone();
    let fwd = Forwarder::new(sink);
    let result = async {
        if store.get(Kind::Kernel, &kernel)?.is_none() {
            if let Some(k) = registered_kernel(state, &kernel)? {
                sink.progress("promote", format!("copying kernel {kernel} into the store"))
                    .await;
                let (s, cb, kn) = (store.clone(), fwd.callback(), kernel.clone());
                blocking(ImageTask::Promote, move || {
                    s.import(
                        &kn,
                        &k.version,
                        Import::Kernel {
                            vmlinux: &k.vmlinux_path,
                            initrd: k.initrd_path.as_deref(),
                            modules: k.modules_path.as_deref(),
                        },
                        &cb,
                    )
                })
                .await??;
                state.db().remove_registered_kernel(&kernel)?;
            }
        }
        sink.progress("promote", format!("copying image {name} into the store"))
            .await;
        let (s, cb, n) = (store.clone(), fwd.callback(), name.to_owned());
        blocking(ImageTask::Promote, move || {
            s.import(
                &n,
                &image.version,
                Import::Image {
                    rootfs: &image.rootfs_path,
                    kernel_ref: &image.kernel_ref,
                },
                &cb,
            )
        })
        .await??;
        state.db().remove_registered_image(name)?;
        Ok::<(), ImageError>(())
    }
    .await;
    fwd.finish().await;
    result?;
    show_image(state, name)
}

/// The files an image boots from, from the store or a registration;
/// `None` when no image of that name exists.
pub fn lookup_image(state: &Daemon, name: &str) -> Result<Option<(PathBuf, String)>, StoreError> {
    if validate_name(name).is_err() {
        return Ok(None);
    }
    if let Some(i) = store(state).get(Kind::Image, name)? {
        let rootfs = i.rootfs().ok_or_else(|| StoreError::Damaged {
            kind: Kind::Image,
            name: name.to_owned(),
            path: i.dir.clone(),
            reason: "it has no rootfs.ext4".into(),
        })?;
        let kernel = i
            .manifest
            .kernel_ref
            .clone()
            .ok_or_else(|| StoreError::Damaged {
                kind: Kind::Image,
                name: name.to_owned(),
                path: i.dir.clone(),
                reason: "its manifest names no kernel".into(),
            })?;
        return Ok(Some((rootfs, kernel)));
    }
    let row = state
        .db()
        .get_image(name)
        .ok()
        .flatten()
        .filter(|r| !r.managed);
    Ok(row.map(|r| (r.rootfs_path, r.kernel_ref)))
}

/// The read-only ext4 disk holding an installed kernel's modules (made at
/// install), `None` for a registered kernel or one without modules.
pub fn lookup_modules_disk(state: &Daemon, name: &str) -> Result<Option<PathBuf>, StoreError> {
    if validate_name(name).is_err() {
        return Ok(None);
    }
    Ok(store(state)
        .get(Kind::Kernel, name)?
        .and_then(|k| k.modules_disk()))
}

/// A kernel's `vmlinux` and initrd, from the store or a registration.
pub fn lookup_kernel(
    state: &Daemon,
    name: &str,
) -> Result<Option<(PathBuf, Option<PathBuf>)>, StoreError> {
    if validate_name(name).is_err() {
        return Ok(None);
    }
    if let Some(k) = store(state).get(Kind::Kernel, name)? {
        let vmlinux = k.vmlinux().ok_or_else(|| StoreError::Damaged {
            kind: Kind::Kernel,
            name: name.to_owned(),
            path: k.dir.clone(),
            reason: "it has no vmlinux".into(),
        })?;
        return Ok(Some((vmlinux, k.initrd())));
    }
    let row = state
        .db()
        .get_kernel(name)
        .ok()
        .flatten()
        .filter(|r| !r.managed);
    Ok(row.map(|r| (r.vmlinux_path, r.initrd_path)))
}

/// Pack installed image `name` and its kernel for an export (in the cache
/// dir's `export/` scratch space, removed when the plan is dropped).
pub async fn plan_export(state: &Daemon, name: &str) -> Result<ExportPlan, ImageError> {
    validate_name(name)?;
    let store = store(state);
    if store.get(Kind::Image, name)?.is_none() {
        if registered_image(state, name)?.is_some() {
            return Err(ImageError::ExportRegistered {
                name: name.to_owned(),
            });
        }
        return Err(ImageError::NotFound {
            kind: Kind::Image,
            name: name.to_owned(),
        });
    }
    let (n, scratch) = (name.to_owned(), state.layout.cache_dir.join("export"));
    Ok(blocking(ImageTask::Export, move || {
        transfer::plan_export(&store, &n, &scratch, &banger_image::progress::ignore)
    })
    .await??)
}

/// The import admission check: names registered from host files stay so.
fn admit(state: Arc<Daemon>) -> impl Fn(Kind, &str) -> Result<(), String> + Send + Sync {
    move |kind, name| refuse_registered(&state, kind, name).map_err(|e| e.to_string())
}

fn import_report(imported: Vec<ImportedBundle>) -> InstallReport {
    InstallReport {
        installed: imported
            .iter()
            .map(|b| bundle_report(&b.installed, b.changed))
            .collect(),
    }
}

/// Download an export archive or bundle from `url` and install it.
pub async fn import_url(
    state: &Arc<Daemon>,
    url: &str,
    sink: &EventSink,
) -> Result<InstallReport, ImageError> {
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(ImageError::BadRequest {
            message: format!("{url:?} is not an http:// or https:// URL; give a local file to `banger image import FILE` instead"),
        });
    }
    let fwd = Forwarder::new(sink);
    let cb = fwd.callback();
    let result = transfer::import_url(
        url,
        &store(state),
        Arc::new(admit(state.clone())),
        Arc::new(cb),
    )
    .await;
    fwd.finish().await;
    Ok(import_report(result?))
}

/// Install an export archive or bundle uploaded as a request body; `label`
/// (the file name the client gave) is recorded as its origin.
pub async fn import_upload(
    state: &Arc<Daemon>,
    body: axum::body::Body,
    label: String,
    sink: &EventSink,
) -> Result<InstallReport, ImageError> {
    use futures::StreamExt;
    let fwd = Forwarder::new(sink);
    let (cb, store, adm) = (fwd.callback(), store(state), admit(state.clone()));
    let (tx, reader) = banger_image::fetch::pipe();
    let task = tokio::task::spawn_blocking(move || {
        transfer::import(reader, &store, &Source::File(label), &adm, &cb)
    });
    let mut chunks = body.into_data_stream();
    let mut broken = None;
    while let Some(chunk) = chunks.next().await {
        match chunk {
            // A closed pipe means the importer refused the input; its error
            // says why.
            Ok(c) => {
                if tx.send(vec![c]).await.is_err() {
                    break;
                }
            }
            Err(e) => {
                broken = Some(e);
                break;
            }
        }
    }
    drop(tx);
    let result = task.await.map_err(|source| ImageError::Task {
        task: ImageTask::Import,
        source,
    })?;
    fwd.finish().await;
    if let Some(e) = broken {
        return Err(ImageError::Upload(e));
    }
    Ok(import_report(result?))
}

/// The OCI origin of an installed image, for `image show`.
pub fn origin_of(i: &Installed) -> Option<banger_wire::image::OciOrigin> {
    match &i.origin.as_ref()?.origin {
        banger_image::store::Origin::Oci {
            reference,
            reference_digest,
            manifest_digest,
        } => Some(banger_wire::image::OciOrigin {
            reference: reference.clone(),
            reference_digest: reference_digest.clone(),
            manifest_digest: manifest_digest.clone(),
        }),
        _ => None,
    }
}

#[cfg(test)]
mod code_tests {
    use super::*;

    /// Pins representative statuses, including errors nested in the
    /// library's enums (catalog, pull, store, build), which are classified
    /// variant by variant too.
    #[test]
    fn image_errors_map_to_their_api_codes() {
        let json_err = serde_json::from_str::<u32>("x").unwrap_err();
        let cases = [
            (
                ImageError::NotFound {
                    kind: Kind::Image,
                    name: "a".into(),
                },
                ErrorCode::NotFound,
            ),
            (
                ImageError::Catalog(CatalogError::Unknown {
                    kind: Kind::Kernel,
                    name: "k".into(),
                    known: "generic-6.12".into(),
                }),
                ErrorCode::NotFound,
            ),
            (
                ImageError::Pull(PullError::NotPublished {
                    kind: Kind::Image,
                    name: "a".into(),
                    needed_by: None,
                    build: "banger image build a".into(),
                }),
                ErrorCode::NotFound,
            ),
            (
                ImageError::ExistsRegistered {
                    kind: Kind::Image,
                    name: "a".into(),
                },
                ErrorCode::Conflict,
            ),
            (
                ImageError::Store(StoreError::Damaged {
                    kind: Kind::Image,
                    name: "a".into(),
                    path: "/s/a".into(),
                    reason: "manifest missing".into(),
                }),
                ErrorCode::Internal,
            ),
            (
                ImageError::Invalid(ValidateError::Relative {
                    artifact: Artifact::Kernel,
                    path: "vmlinux".into(),
                }),
                ErrorCode::BadRequest,
            ),
            (
                ImageError::Build(banger_image::build::BuildError::NotRoot {
                    kind: Kind::Image,
                    name: "a".into(),
                }),
                ErrorCode::Unsupported,
            ),
            (ImageError::EncodeIndex(json_err), ErrorCode::Internal),
        ];
        for (err, code) in cases {
            assert_eq!(err.code(), code, "{err}");
        }
    }

    #[test]
    fn a_taken_name_says_where_it_is_taken() {
        let err = ImageError::ExistsInStore {
            kind: Kind::Kernel,
            name: "generic-6.12".into(),
        };
        assert_eq!(
            err.to_string(),
            "kernel generic-6.12 already exists (installed in the store); delete it first or pick another name"
        );
    }
}
