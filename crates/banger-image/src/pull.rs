//! Download, verify and install a catalog bundle.
//!
//! The body streams through a sha256 hasher into an unpacker thread that
//! writes a staging directory in the store; only when the byte count and
//! sha256 match the catalog and every artifact matches the manifest is the
//! staging directory renamed into place. On any failure the staging
//! directory is removed (drop guard) and the error says what failed. A lock
//! per name makes a second concurrent pull wait and then find the bundle
//! installed.

use bytes::Bytes;

use crate::bundle::{self, BundleError, Expect};
use crate::catalog::{Catalog, CatalogError, Entry};
use crate::digest;
use crate::manifest::Kind;
use crate::progress::{Phase, Progress, ProgressFn};
use crate::store::{Installed, Origin, Store, StoreError};

/// How often (in bytes) download progress is reported.
const PROGRESS_STEP: u64 = 1 << 20;
/// Body chunks (often 8-16 KiB) are handed to the unpacker thread in
/// batches of this size: one thread wake-up per batch, not per chunk.
const BATCH: usize = 512 << 10;

/// Errors of a pull. Every variant names the URL or name involved.
#[derive(Debug, thiserror::Error)]
pub enum PullError {
    #[error("{kind} {name}{} has no published bundle in this banger's catalog; build locally with `{build}`", needed_by.as_deref().map(|n| format!(" (needed by {n})")).unwrap_or_default())]
    NotPublished {
        kind: Kind,
        name: String,
        /// The entry that was asked for, when this one is its dependency.
        needed_by: Option<String>,
        build: String,
    },
    #[error("cannot reach {url}: {reason}\nthe catalog is unreachable from here; build it locally instead with `{build}`")]
    Unreachable {
        url: String,
        reason: String,
        build: String,
    },
    #[error("{url} answered HTTP {status}; if this mirror does not carry the bundle, build it locally with `{build}`")]
    Status {
        url: String,
        status: u16,
        build: String,
    },
    #[error("{url} announces {got} bytes but the catalog expects {expected}")]
    SizeAnnounced {
        url: String,
        expected: u64,
        got: u64,
    },
    #[error("download of {url} failed after {received} of {expected} bytes: {reason}")]
    Interrupted {
        url: String,
        received: u64,
        expected: u64,
        reason: String,
    },
    #[error("download of {url} ended after {received} of {expected} bytes")]
    Truncated {
        url: String,
        received: u64,
        expected: u64,
    },
    #[error("download of {url} is longer than the {expected} bytes the catalog expects")]
    TooLong { url: String, expected: u64 },
    #[error("checksum mismatch for {url}: expected sha256 {expected}, got {got}")]
    Checksum {
        url: String,
        expected: String,
        got: String,
    },
    #[error("bundle from {url} is invalid: {source}")]
    Bundle { url: String, source: BundleError },
    #[error("bundle from {url} names kernel {got:?} but the catalog says {expected:?}")]
    KernelRef {
        url: String,
        expected: Option<String>,
        got: Option<String>,
    },
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot create the HTTP client: {0}")]
    Client(String),
    #[error("pull task failed: {0}")]
    Task(#[source] tokio::task::JoinError),
}

/// Result of pulling one entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pulled {
    pub installed: Installed,
    /// False when it was already installed (nothing downloaded).
    pub downloaded: bool,
}

/// The full cause chain of an error, one line.
pub(crate) fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let cs = c.to_string();
        if !s.contains(&cs) {
            s.push_str(": ");
            s.push_str(&cs);
        }
        cur = c.source();
    }
    s
}

/// The HTTP client pulls use: rustls, 15 s connect and 60 s read timeouts.
pub fn http_client() -> Result<reqwest::Client, PullError> {
    reqwest::Client::builder()
        .user_agent(concat!("banger/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(std::time::Duration::from_secs(15))
        .read_timeout(std::time::Duration::from_secs(60))
        .build()
        .map_err(|e| PullError::Client(chain(&e)))
}

/// Pull `kind name` and what it needs (an image's kernel first) from the
/// catalog at `base_url`. Returns one [`Pulled`] per entry, kernel first.
pub async fn pull_with_deps(
    catalog: &Catalog,
    kind: Kind,
    name: &str,
    base_url: &str,
    store: &Store,
    progress: ProgressFn<'_>,
) -> Result<Vec<Pulled>, PullError> {
    let closure = catalog.closure(kind, name)?;
    // Say first that the entry asked for is unpublished, rather than that
    // its kernel is.
    if let Some(entry) = closure
        .iter()
        .find(|e| (e.kind, e.name.as_str()) == (kind, name) && !e.is_published())
    {
        return Err(PullError::NotPublished {
            kind,
            name: entry.name.clone(),
            needed_by: None,
            build: kind.build_command(name),
        });
    }
    let mut out = Vec::new();
    for entry in closure {
        let pulled = pull(entry, base_url, store, progress).await;
        // Building the requested entry builds its dependencies too, so that
        // is the command to suggest when a dependency cannot be pulled.
        let pulled = pulled.map_err(|e| match e {
            PullError::NotPublished {
                kind: k, name: n, ..
            } if (k, n.as_str()) != (kind, name) => PullError::NotPublished {
                kind: k,
                name: n,
                needed_by: Some(format!("{kind} {name}")),
                build: kind.build_command(name),
            },
            PullError::Unreachable { url, reason, .. } => PullError::Unreachable {
                url,
                reason,
                build: kind.build_command(name),
            },
            PullError::Status { url, status, .. } => PullError::Status {
                url,
                status,
                build: kind.build_command(name),
            },
            other => other,
        })?;
        out.push(pulled);
    }
    Ok(out)
}

/// Pull one catalog entry into the store (see the module docs).
pub async fn pull(
    entry: &Entry,
    base_url: &str,
    store: &Store,
    progress: ProgressFn<'_>,
) -> Result<Pulled, PullError> {
    let build = entry.kind.build_command(&entry.name);
    if !entry.is_published() {
        return Err(PullError::NotPublished {
            kind: entry.kind,
            name: entry.name.clone(),
            needed_by: None,
            build,
        });
    }
    let url = entry.resolve_url(base_url)?;

    let lock = match store.try_lock(entry.kind, &entry.name)? {
        Some(l) => l,
        None => {
            progress(Progress::note(
                Phase::Wait,
                format!(
                    "waiting for another pull or build of {} {}",
                    entry.kind, entry.name
                ),
            ));
            let (store2, kind, name) = (store.clone(), entry.kind, entry.name.clone());
            tokio::task::spawn_blocking(move || store2.lock(kind, &name, || {}))
                .await
                .map_err(PullError::Task)??
        }
    };
    if let Some(installed) = store.get(entry.kind, &entry.name)? {
        return Ok(Pulled {
            installed,
            downloaded: false,
        });
    }
    let staging = store.staging(&lock)?;

    let client = http_client()?;
    progress(Progress::bytes(
        Phase::Download,
        format!("downloading {url}"),
        0,
        Some(entry.size),
    ));
    let response = client
        .get(&url)
        .send()
        .await
        .map_err(|e| PullError::Unreachable {
            url: url.clone(),
            reason: chain(&e),
            build: build.clone(),
        })?;
    let status = response.status();
    if !status.is_success() {
        return Err(PullError::Status {
            url,
            status: status.as_u16(),
            build,
        });
    }
    if let Some(len) = response.content_length() {
        if len != entry.size {
            return Err(PullError::SizeAnnounced {
                url,
                expected: entry.size,
                got: len,
            });
        }
    }
    let mut response = crate::fetch::Fetch::new(client, url.clone(), response);

    let (tx, reader) = crate::fetch::pipe();
    let dest = staging.path().to_owned();
    let expect = Expect {
        kind: entry.kind,
        name: Some(entry.name.clone()),
    };
    let unpacker = tokio::task::spawn_blocking(move || bundle::unpack(reader, &dest, &expect));

    let mut hasher = digest::Hasher::new();
    let mut received = 0u64;
    let mut reported = 0u64;
    let mut sender = Some(tx);
    let mut batch: Vec<Bytes> = Vec::new();
    let mut batch_len = 0usize;
    let download: Result<(), PullError> = loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                received += chunk.len() as u64;
                if received > entry.size {
                    break Err(PullError::TooLong {
                        url: url.clone(),
                        expected: entry.size,
                    });
                }
                hasher.update(&chunk);
                batch_len += chunk.len();
                batch.push(chunk);
                if batch_len >= BATCH {
                    let full = std::mem::take(&mut batch);
                    batch_len = 0;
                    if let Some(tx) = &sender {
                        // A closed channel means the unpacker failed: keep
                        // hashing so the error can say whether the bytes
                        // were wrong (checksum) or the published bundle is
                        // broken.
                        if tx.send(full).await.is_err() {
                            sender = None;
                        }
                    }
                }
                if received - reported >= PROGRESS_STEP || received == entry.size {
                    reported = received;
                    progress(Progress::bytes(
                        Phase::Download,
                        url.clone(),
                        received,
                        Some(entry.size),
                    ));
                }
            }
            Ok(None) => {
                if let Some(tx) = &sender {
                    if !batch.is_empty() && tx.send(std::mem::take(&mut batch)).await.is_err() {
                        sender = None;
                    }
                }
                break Ok(());
            }
            Err(broken) => {
                break Err(PullError::Interrupted {
                    url: url.clone(),
                    received,
                    expected: entry.size,
                    reason: broken.reason,
                })
            }
        }
    };
    drop(sender);
    let unpacked = unpacker.await.map_err(PullError::Task)?;
    // Download failures come first: they explain any unpack error.
    download?;
    if received < entry.size {
        return Err(PullError::Truncated {
            url,
            received,
            expected: entry.size,
        });
    }
    let got = hasher.finish_hex();
    if got != entry.sha256 {
        return Err(PullError::Checksum {
            url,
            expected: entry.sha256.clone(),
            got,
        });
    }
    let manifest = unpacked.map_err(|source| PullError::Bundle {
        url: url.clone(),
        source,
    })?;
    if manifest.kernel_ref != entry.kernel_ref {
        return Err(PullError::KernelRef {
            url,
            expected: entry.kernel_ref.clone(),
            got: manifest.kernel_ref,
        });
    }
    progress(Progress::note(
        Phase::Install,
        format!("installing {} {}", entry.kind, entry.name),
    ));
    let installed = store.commit(
        &lock,
        staging,
        Origin::Catalog {
            url,
            bundle_sha256: entry.sha256.clone(),
        },
    )?;
    Ok(Pulled {
        installed,
        downloaded: true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The daemon spawns pulls on its runtime: the future must be Send.
    #[test]
    fn pull_future_is_send() {
        fn assert_send<T: Send>(_: &T) {}
        let store = Store::new("/nonexistent");
        let entry = Catalog::embedded()
            .get(Kind::Kernel, "generic-6.12")
            .unwrap()
            .clone();
        let progress = |_: Progress| {};
        let fut = pull(&entry, "http://127.0.0.1:9", &store, &progress);
        assert_send(&fut);
        let catalog = Catalog::embedded();
        let fut = pull_with_deps(
            catalog,
            Kind::Image,
            "debian-bookworm",
            "http://127.0.0.1:9",
            &store,
            &progress,
        );
        assert_send(&fut);
    }
}
