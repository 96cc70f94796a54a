//! The registry side: manifest (or index → linux/amd64 manifest), config
//! and layer blobs through `oci-client`, which checks every manifest and
//! blob against its digest. Layers land in the [`LayerCache`]; a layer
//! already there is not downloaded again.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::manifest::{OciDescriptor, OciManifest};
use oci_client::{Client, Reference};
use sha2::{Digest as _, Sha256};
use tokio::io::AsyncWrite;

use crate::auth::Credentials;
use crate::cache::{CacheError, Digest, LayerCache};
use crate::progress::{Event, ProgressFn};
use crate::reference::OciRef;

/// The only platform banger guests run.
pub const PLATFORM: &str = "linux/amd64";

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("{registry} refused the credentials{user}: 401 Unauthorized. Check the entry for {registry} in your Docker config ({config}) or run `docker login {registry}`")]
    Unauthorized {
        registry: String,
        user: String,
        config: String,
    },
    #[error("{reference}: not found in {registry} (wrong repository or tag?): {detail}")]
    NotFound {
        reference: String,
        registry: String,
        detail: String,
    },
    #[error("{reference}: the image index has no {PLATFORM} image (it has: {available}); banger guests are x86_64 Linux")]
    NoPlatform {
        reference: String,
        available: String,
    },
    #[error("--platform {0}: banger guests are linux/amd64 only")]
    BadPlatform(String),
    #[error("{reference}: the image config says {os}/{arch}; banger guests are linux/amd64")]
    WrongArch {
        reference: String,
        os: String,
        arch: String,
    },
    #[error("{reference}: {what}: {source}")]
    Protocol {
        reference: String,
        what: &'static str,
        #[source]
        source: oci_client::errors::OciDistributionError,
    },
    #[error("{reference}: {reason}")]
    Invalid { reference: String, reason: String },
    #[error(transparent)]
    Cache(#[from] CacheError),
}

/// What a pull fetched; every layer is in the cache.
#[derive(Debug, Clone)]
pub struct Fetched {
    /// The digest the reference resolved to (an index's digest for
    /// multi-platform tags): what "did the tag change" compares.
    pub reference_digest: String,
    /// The linux/amd64 image manifest's digest.
    pub manifest_digest: String,
    pub config: oci_spec::image::ImageConfiguration,
    pub layers: Vec<FetchedLayer>,
    /// Bytes downloaded by this pull (layers already cached excluded).
    pub downloaded: u64,
}

#[derive(Debug, Clone)]
pub struct FetchedLayer {
    pub digest: Digest,
    pub size: u64,
    pub diff_id: Option<String>,
    pub path: std::path::PathBuf,
    pub cached: bool,
}

/// How to reach the registry.
#[derive(Debug, Clone, Default)]
pub struct Access {
    pub credentials: Option<Credentials>,
    /// Where the credentials came from, for the 401 message.
    pub config_path: Option<std::path::PathBuf>,
    /// `insecure_registries` from banger's config.
    pub insecure: Vec<String>,
}

fn client_for(r: &OciRef, access: &Access) -> Client {
    let protocol = if r.plain_http_allowed(&access.insecure) {
        ClientProtocol::HttpsExcept(vec![r.resolved_registry().to_owned()])
    } else {
        ClientProtocol::Https
    };
    Client::new(ClientConfig {
        protocol,
        // Selection is done here, to name what the index offers.
        platform_resolver: None,
        max_concurrent_download: 4,
        connect_timeout: Some(std::time::Duration::from_secs(30)),
        read_timeout: Some(std::time::Duration::from_secs(120)),
        ..ClientConfig::default()
    })
}

/// Check `--platform`.
pub fn check_platform(p: Option<&str>) -> Result<(), RegistryError> {
    match p {
        None | Some(PLATFORM) | Some("amd64") | Some("linux/x86_64") => Ok(()),
        Some(other) => Err(RegistryError::BadPlatform(other.to_owned())),
    }
}

/// Fetch `r` into `cache`.
pub async fn fetch(
    r: &OciRef,
    access: &Access,
    cache: &LayerCache,
    progress: ProgressFn<'_>,
) -> Result<Fetched, RegistryError> {
    let client = client_for(r, access);
    let creds = access.credentials.clone().unwrap_or(Credentials::Anonymous);
    let auth = creds.to_registry_auth();
    let reference = r.whole();
    let image: &Reference = &r.inner;
    let map = |what: &'static str| {
        let reference = reference.clone();
        let registry = r.registry().to_owned();
        let creds = creds.clone();
        let config = access
            .config_path
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "none read".into());
        move |e: oci_client::errors::OciDistributionError| {
            classify(e, what, reference, registry, &creds, config)
        }
    };
    let (manifest, top_digest) = client
        .pull_manifest(image, &auth)
        .await
        .map_err(map("pull the manifest"))?;
    let (manifest, manifest_digest) = match manifest {
        OciManifest::Image(m) => (m, top_digest.clone()),
        OciManifest::ImageIndex(index) => {
            let pick = index.manifests.iter().find(|m| {
                m.platform
                    .as_ref()
                    .is_some_and(|p| p.os == "linux" && p.architecture == "amd64")
            });
            let Some(entry) = pick else {
                let available: Vec<String> = index
                    .manifests
                    .iter()
                    .filter_map(|m| m.platform.as_ref())
                    .map(|p| format!("{}/{}", p.os, p.architecture))
                    .collect();
                return Err(RegistryError::NoPlatform {
                    reference,
                    available: if available.is_empty() {
                        "no platforms listed".into()
                    } else {
                        available.join(", ")
                    },
                });
            };
            let by_digest = image.clone_with_digest(entry.digest.clone());
            match client
                .pull_manifest(&by_digest, &auth)
                .await
                .map_err(map("pull the linux/amd64 manifest"))?
            {
                (OciManifest::Image(m), d) => (m, d),
                (OciManifest::ImageIndex(_), _) => {
                    return Err(RegistryError::Invalid {
                        reference,
                        reason: "the index's linux/amd64 entry is another index".into(),
                    })
                }
            }
        }
    };
    // The config: small, read whole, digest checked here as well.
    let mut config_bytes = Vec::new();
    client
        .pull_blob(image, &manifest.config, &mut config_bytes)
        .await
        .map_err(map("pull the image config"))?;
    let got = format!("sha256:{}", hex::encode(Sha256::digest(&config_bytes)));
    if got != manifest.config.digest {
        return Err(RegistryError::Invalid {
            reference,
            reason: format!(
                "config digest mismatch: manifest says {}, got {got}",
                manifest.config.digest
            ),
        });
    }
    let config: oci_spec::image::ImageConfiguration = serde_json::from_slice(&config_bytes)
        .map_err(|e| RegistryError::Invalid {
            reference: reference.clone(),
            reason: format!("image config is not valid JSON: {e}"),
        })?;
    let (os, arch) = (config.os().to_string(), config.architecture().to_string());
    if os != "linux" || arch != "amd64" {
        return Err(RegistryError::WrongArch {
            reference,
            os,
            arch,
        });
    }
    let diff_ids = config.rootfs().diff_ids();
    if diff_ids.len() != manifest.layers.len() {
        return Err(RegistryError::Invalid {
            reference,
            reason: format!(
                "{} layers in the manifest but {} diff_ids in the config",
                manifest.layers.len(),
                diff_ids.len()
            ),
        });
    }
    let total: u64 = manifest.layers.iter().map(|l| l.size.max(0) as u64).sum();
    progress(Event::Resolved {
        manifest_digest: manifest_digest.clone(),
        layers: manifest.layers.len(),
        total_bytes: total,
    });
    let mut layers = Vec::new();
    let mut downloaded = 0;
    for (desc, diff_id) in manifest.layers.iter().zip(diff_ids) {
        let digest = Digest::parse(&desc.digest)?;
        let size = desc.size.max(0) as u64;
        if let Some(path) = cache.get(&digest) {
            progress(Event::LayerCached {
                digest: digest.to_string(),
                size,
            });
            layers.push(FetchedLayer {
                digest,
                size,
                diff_id: Some(diff_id.clone()),
                path,
                cached: true,
            });
            continue;
        }
        let path = download(&client, image, desc, &digest, cache, progress)
            .await
            .map_err(|e| match e {
                DownloadError::Oci(e) => map("pull a layer")(e),
                DownloadError::Cache(e) => RegistryError::Cache(e),
            })?;
        downloaded += size;
        layers.push(FetchedLayer {
            digest,
            size,
            diff_id: Some(diff_id.clone()),
            path,
            cached: false,
        });
    }
    Ok(Fetched {
        reference_digest: top_digest,
        manifest_digest,
        config,
        layers,
        downloaded,
    })
}

enum DownloadError {
    Oci(oci_client::errors::OciDistributionError),
    Cache(CacheError),
}

async fn download(
    client: &Client,
    image: &Reference,
    desc: &OciDescriptor,
    digest: &Digest,
    cache: &LayerCache,
    progress: ProgressFn<'_>,
) -> Result<std::path::PathBuf, DownloadError> {
    let tmp = cache.temp().map_err(DownloadError::Cache)?;
    let file = tokio::fs::File::from_std(tmp.reopen().map_err(|source| {
        DownloadError::Cache(CacheError::Io {
            op: "open",
            path: tmp.path().to_owned(),
            source,
        })
    })?);
    let mut w = Counting {
        inner: tokio::io::BufWriter::with_capacity(1 << 20, file),
        done: 0,
        total: desc.size.max(0) as u64,
        digest: digest.to_string(),
        start: Instant::now(),
        last: None,
        progress: Arc::new(progress),
    };
    // pull_blob checks the bytes against the descriptor's digest (and the
    // registry's Docker-Content-Digest header) before returning Ok.
    client
        .pull_blob(image, desc, &mut w)
        .await
        .map_err(DownloadError::Oci)?;
    tokio::io::AsyncWriteExt::flush(&mut w.inner)
        .await
        .map_err(|e| DownloadError::Oci(e.into()))?;
    progress(Event::LayerDone {
        digest: digest.to_string(),
        size: w.done,
    });
    drop(w);
    cache.commit(tmp, digest).map_err(DownloadError::Cache)
}

/// An `AsyncWrite` that counts bytes and reports progress (at most every
/// 250 ms).
struct Counting<'a, W> {
    inner: W,
    done: u64,
    total: u64,
    digest: String,
    start: Instant,
    last: Option<Instant>,
    progress: Arc<ProgressFn<'a>>,
}

impl<W: AsyncWrite + Unpin> AsyncWrite for Counting<'_, W> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = &mut *self;
        let r = Pin::new(&mut this.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = r {
            this.done += n as u64;
            let now = Instant::now();
            if this
                .last
                .is_none_or(|l| now.duration_since(l).as_millis() >= 250)
            {
                this.last = Some(now);
                let secs = now.duration_since(this.start).as_secs_f64().max(0.001);
                (this.progress)(Event::LayerBytes {
                    digest: this.digest.clone(),
                    done: this.done,
                    total: this.total,
                    rate: (this.done as f64 / secs) as u64,
                });
            }
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

fn classify(
    e: oci_client::errors::OciDistributionError,
    what: &'static str,
    reference: String,
    registry: String,
    creds: &Credentials,
    config: String,
) -> RegistryError {
    use oci_client::errors::OciDistributionError as E;
    let unauthorized = || RegistryError::Unauthorized {
        registry: registry.clone(),
        user: creds
            .user()
            .map(|u| format!(" of user {u:?}"))
            .unwrap_or_else(|| " (anonymous: no credentials found)".into()),
        config: config.clone(),
    };
    match &e {
        E::UnauthorizedError { .. } | E::AuthenticationFailure(_) => unauthorized(),
        E::ServerError { code: 401, .. } => unauthorized(),
        E::RegistryError { envelope, .. }
            if envelope.errors.iter().any(|x| {
                let c = format!("{:?}", x.code);
                c.contains("Unauthorized") || c.contains("Denied")
            }) =>
        {
            unauthorized()
        }
        E::ServerError { code: 404, .. } | E::ImageManifestNotFoundError(_) => {
            RegistryError::NotFound {
                reference,
                registry,
                detail: e.to_string(),
            }
        }
        E::RegistryError { envelope, .. }
            if envelope
                .errors
                .iter()
                .any(|x| format!("{:?}", x.code).contains("Unknown")) =>
        {
            RegistryError::NotFound {
                reference,
                registry,
                detail: e.to_string(),
            }
        }
        _ => RegistryError::Protocol {
            reference,
            what,
            source: e,
        },
    }
}
