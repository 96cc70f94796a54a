//! `POST /v1/oci/pull`: import an OCI image from a registry into the store
//! (banger-oci does the work; docs/oci-import.md). The result is a managed
//! image like a catalog pull, with `origin.json` recording the reference
//! and the digests it resolved to.

use std::path::PathBuf;
use std::sync::Arc;

use banger_image::bundle::{self, BundleMeta};
use banger_image::manifest::{validate_name, MANIFEST_FILE, ROOTFS};
use banger_image::store::{Origin, StoreError};
use banger_image::{Kind, Phase, Progress};
use banger_oci::progress::Event;
use banger_oci::{ImportError, OciRef};
use banger_wire::api::{ApiError, ErrorCode};
use banger_wire::image::{OciOrigin, OciPullReport, OciPullRequest};

use super::{lookup_kernel, origin_of, refuse_registered, store, Forwarder, ImageError};
use crate::context::Daemon;
use crate::events::EventSink;

#[derive(Debug, thiserror::Error)]
pub enum OciPullError {
    #[error(transparent)]
    Reference(#[from] banger_oci::reference::ReferenceError),
    #[error("kernel {0:?} is not installed or registered: `banger kernel pull {0}` first, or pass another --kernel-ref")]
    NoKernel(String),
    #[error("image {name} exists and was not imported from {reference} ({what}); delete it first or pass --name")]
    Taken {
        name: String,
        reference: String,
        what: String,
    },
    #[error(transparent)]
    Auth(#[from] banger_oci::auth::AuthError),
    #[error(transparent)]
    Import(#[from] ImportError),
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("describe the imported image: {0}")]
    Describe(#[source] banger_image::bundle::BundleError),
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("import task failed: {0}")]
    Task(String),
}

impl OciPullError {
    fn code(&self) -> ErrorCode {
        use banger_oci::registry::RegistryError as R;
        match self {
            OciPullError::Reference(_) | OciPullError::Auth(_) => ErrorCode::BadRequest,
            OciPullError::NoKernel(_) => ErrorCode::NotFound,
            OciPullError::Taken { .. } => ErrorCode::Conflict,
            OciPullError::Image(e) => e.code(),
            OciPullError::Import(ImportError::Registry(R::NotFound { .. })) => ErrorCode::NotFound,
            OciPullError::Import(ImportError::Registry(R::Unauthorized { .. })) => {
                ErrorCode::Forbidden
            }
            OciPullError::Import(ImportError::Registry(
                R::NoPlatform { .. } | R::BadPlatform(_) | R::WrongArch { .. },
            ))
            | OciPullError::Import(ImportError::Inspect { .. }) => ErrorCode::Unsupported,
            OciPullError::Import(ImportError::AptSource { .. }) => ErrorCode::BadRequest,
            OciPullError::Import(ImportError::Flatten(_) | ImportError::Registry(_)) => {
                ErrorCode::BadRequest
            }
            _ => ErrorCode::Internal,
        }
    }
}

impl From<OciPullError> for ApiError {
    fn from(e: OciPullError) -> ApiError {
        ApiError {
            code: e.code(),
            message: e.to_string(),
        }
    }
}

/// Checks that need no network, answered before the stream starts.
pub fn prepare(state: &Daemon, req: &OciPullRequest) -> Result<(OciRef, String), OciPullError> {
    let r = OciRef::parse(&req.reference)?;
    let name = req.name.clone().unwrap_or_else(|| r.default_name());
    validate_name(&name).map_err(|e| OciPullError::Image(e.into()))?;
    refuse_registered(state, Kind::Image, &name)?;
    if lookup_kernel(state, &req.kernel_ref)?.is_none() {
        return Err(OciPullError::NoKernel(req.kernel_ref.clone()));
    }
    banger_oci::registry::check_platform(req.platform.as_deref())
        .map_err(|e| OciPullError::Import(e.into()))?;
    if let Some(line) = &req.apt_source {
        banger_oci::import::check_apt_source(line)?;
    }
    Ok((r, name))
}

fn to_progress(e: Event) -> Progress {
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    match e {
        Event::Resolved {
            manifest_digest,
            layers,
            total_bytes,
        } => Progress::note(
            Phase::Download,
            format!(
                "manifest {manifest_digest}: {layers} layers, {:.1} MiB",
                mib(total_bytes)
            ),
        ),
        Event::LayerCached { digest, size } => Progress::note(
            Phase::Download,
            format!("layer {digest} cached ({:.1} MiB)", mib(size)),
        ),
        Event::LayerBytes {
            digest,
            done,
            total,
            rate,
        } => Progress::bytes(
            Phase::Download,
            format!("layer {digest} {:.1} MiB/s", mib(rate)),
            done,
            Some(total),
        ),
        Event::LayerDone { digest, size } => Progress::note(
            Phase::Download,
            format!(
                "layer {digest} done ({:.1} MiB, digest verified)",
                mib(size)
            ),
        ),
        Event::Apply {
            index,
            count,
            digest,
        } => Progress::note(
            Phase::Unpack,
            format!("applying layer {}/{count} {digest}", index + 1),
        ),
        Event::Note(m) => Progress::note(Phase::Build, m),
    }
}

/// Import `req` as image `name`.
pub async fn pull(
    state: Arc<Daemon>,
    req: OciPullRequest,
    sink: &EventSink,
) -> Result<OciPullReport, OciPullError> {
    let (reference, name) = prepare(&state, &req)?;
    let fwd = Forwarder::new(sink);
    let cb = fwd.callback();
    let st = state.clone();
    let result = tokio::task::spawn_blocking(move || {
        run(&st, &req, reference, name, &|e| cb(to_progress(e)))
    })
    .await;
    fwd.finish().await;
    result.map_err(|e| OciPullError::Task(e.to_string()))?
}

fn run(
    state: &Daemon,
    req: &OciPullRequest,
    reference: OciRef,
    name: String,
    progress: banger_oci::progress::ProgressFn<'_>,
) -> Result<OciPullReport, OciPullError> {
    let store = store(state);
    let whole = reference.whole();
    let previous = match store.get(Kind::Image, &name)? {
        None => None,
        Some(i) => match origin_of(&i) {
            Some(o) if o.reference == whole => Some(o.reference_digest),
            other => {
                return Err(OciPullError::Taken {
                    name,
                    reference: whole,
                    what: match other {
                        Some(o) => format!("it came from {}", o.reference),
                        None => "it is not an OCI import".into(),
                    },
                })
            }
        },
    };
    let docker_config = banger_oci::auth::default_docker_config();
    let credentials = match &docker_config {
        Some(p) => banger_oci::auth::credentials_for(p, reference.registry())?,
        None => banger_oci::auth::Credentials::Anonymous,
    };
    let cache_dir = state.layout.cache_dir.join("oci");
    let work = cache_dir.join("work");
    banger_host::paths::ensure_private_dir(&cache_dir)
        .and_then(|()| banger_host::paths::ensure_private_dir(&work))
        .map_err(|e| OciPullError::Io {
            op: "create",
            path: work.clone(),
            source: std::io::Error::other(e.to_string()),
        })?;
    let lock = store.lock(Kind::Image, &name, || {
        progress(Event::Note(format!(
            "waiting for another writer of image {name}"
        )))
    })?;
    let staging = store.staging(&lock)?;
    let opts = banger_oci::ImportOptions {
        reference,
        access: banger_oci::registry::Access {
            credentials: Some(credentials),
            config_path: docker_config,
            insecure: state.vms.config().insecure_registries.value.clone(),
        },
        cache: banger_oci::cache::LayerCache::new(&cache_dir),
        work_dir: work,
        dest: staging.path().join(ROOTFS),
        size: req.size_bytes,
        platform: req.platform.clone(),
        limits: Default::default(),
        // Only images without systemd need it; a missing agent fails those.
        agent: crate::vm::agent_binary(&state.layout).ok(),
        apt_source: req.apt_source.clone(),
    };
    let imported = banger_oci::import(&opts, progress)?;
    let short = imported
        .manifest_digest
        .strip_prefix("sha256:")
        .unwrap_or(&imported.manifest_digest);
    let meta = BundleMeta {
        kind: Kind::Image,
        name: name.clone(),
        version: short[..short.len().min(12)].to_owned(),
        created: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0),
        recipe_hash: None,
        kernel_ref: Some(req.kernel_ref.clone()),
        kernel_release: None,
    };
    progress(Event::Note("hashing rootfs.ext4 for the manifest".into()));
    let manifest = bundle::describe(staging.path(), &meta).map_err(OciPullError::Describe)?;
    let manifest_path = staging.path().join(MANIFEST_FILE);
    std::fs::write(&manifest_path, manifest.to_json()).map_err(|source| OciPullError::Io {
        op: "write",
        path: manifest_path.clone(),
        source,
    })?;
    let origin = OciOrigin {
        reference: imported.reference.clone(),
        reference_digest: imported.reference_digest.clone(),
        manifest_digest: imported.manifest_digest.clone(),
    };
    store.commit(
        &lock,
        staging,
        Origin::Oci {
            reference: origin.reference.clone(),
            reference_digest: origin.reference_digest.clone(),
            manifest_digest: origin.manifest_digest.clone(),
        },
    )?;
    Ok(OciPullReport {
        name,
        origin,
        previous_digest: previous,
        layers: imported.layers as u32,
        layers_cached: imported.layers_cached as u32,
        downloaded_bytes: imported.downloaded_bytes,
        size_bytes: imported.size_bytes,
        init: match imported.facts.init {
            banger_oci::inspect::Init::Systemd => "systemd".into(),
            banger_oci::inspect::Init::Banger => "banger".into(),
        },
        sshd_installed_by: if imported.facts.sshd.is_none() {
            imported
                .facts
                .package_manager
                .map(|p| p.as_str().to_owned())
        } else {
            None
        },
    })
}
