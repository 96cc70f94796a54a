//! The whole import: fetch → flatten → inspect → inject → tar → ext4.

use std::path::PathBuf;

use crate::cache::LayerCache;
use crate::flatten::{FlattenError, LayerInput, Limits, Tree};
use crate::inspect::{Facts, Init, InspectError, PackageManager};
use crate::progress::{Event, ProgressFn};
use crate::reference::OciRef;
use crate::registry::{Access, Fetched, RegistryError};
use crate::rootfs::{Ext4Options, RootfsError};

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(transparent)]
    Flatten(#[from] FlattenError),
    #[error("{reference}: {source}")]
    Inspect {
        reference: String,
        #[source]
        source: InspectError,
    },
    #[error("{reference}: the image has no systemd, so banger's init (the guest agent) becomes its /sbin/init, but no guest agent binary was given to the import")]
    NoAgent { reference: String },
    #[error("read the guest agent {path}: {source}")]
    ReadAgent {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("apt source {line:?}: {reason}")]
    AptSource { line: String, reason: &'static str },
    #[error(transparent)]
    Rootfs(#[from] RootfsError),
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("start the async runtime: {0}")]
    Runtime(#[source] std::io::Error),
}

#[derive(Debug, Clone)]
pub struct ImportOptions {
    pub reference: OciRef,
    pub access: Access,
    pub cache: LayerCache,
    /// A private directory; the import's scratch space (file contents, the
    /// tar) lives in a temporary directory inside it, removed on return.
    pub work_dir: PathBuf,
    /// Where `rootfs.ext4` goes.
    pub dest: PathBuf,
    pub size: Option<u64>,
    pub platform: Option<String>,
    pub limits: Limits,
    /// The guest agent binary, injected as `/sbin/init` into images
    /// without systemd.
    pub agent: Option<PathBuf>,
    /// One `deb ...` line the first-boot openssh-server install uses instead
    /// of the image's apt sources (`--apt-source`).
    pub apt_source: Option<String>,
}

/// What an import produced.
#[derive(Debug, Clone)]
pub struct Imported {
    pub reference: String,
    pub reference_digest: String,
    pub manifest_digest: String,
    pub size_bytes: u64,
    pub facts: Facts,
    pub layers: usize,
    pub layers_cached: usize,
    pub downloaded_bytes: u64,
}

/// Fetch and build, blocking (the daemon runs it on a blocking thread).
pub fn import(opts: &ImportOptions, progress: ProgressFn<'_>) -> Result<Imported, ImportError> {
    crate::registry::check_platform(opts.platform.as_deref())?;
    if let Some(line) = &opts.apt_source {
        check_apt_source(line)?;
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(ImportError::Runtime)?;
    let fetched = rt.block_on(crate::registry::fetch(
        &opts.reference,
        &opts.access,
        &opts.cache,
        progress,
    ))?;
    build(opts, &fetched, progress)
}

/// Flatten fetched layers and make the ext4.
pub fn build(
    opts: &ImportOptions,
    fetched: &Fetched,
    progress: ProgressFn<'_>,
) -> Result<Imported, ImportError> {
    let reference = opts.reference.whole();
    // Removed on every exit, success or failure.
    let scratch = tempfile::Builder::new()
        .prefix("oci-import-")
        .tempdir_in(&opts.work_dir)
        .map_err(|source| ImportError::Io {
            op: "create a scratch directory in",
            path: opts.work_dir.clone(),
            source,
        })?;
    let mut tree = Tree::new(scratch.path(), opts.limits.clone());
    let count = fetched.layers.len();
    for (index, layer) in fetched.layers.iter().enumerate() {
        progress(Event::Apply {
            index,
            count,
            digest: layer.digest.to_string(),
        });
        let r = tree.apply_layer(&LayerInput {
            blob: &layer.path,
            digest: layer.digest.as_str(),
            diff_id: layer.diff_id.as_deref(),
        });
        if let Err(e) = r {
            if matches!(e, FlattenError::Digest { .. }) {
                opts.cache.evict(&layer.digest);
            }
            return Err(e.into());
        }
    }
    let facts = crate::inspect::inspect(&tree).map_err(|source| ImportError::Inspect {
        reference: reference.clone(),
        source,
    })?;
    let agent = match (facts.init, &opts.agent) {
        (Init::Systemd, _) => None,
        (Init::Banger, None) => return Err(ImportError::NoAgent { reference }),
        (Init::Banger, Some(path)) => {
            Some(
                std::fs::read(path).map_err(|source| ImportError::ReadAgent {
                    path: path.clone(),
                    source,
                })?,
            )
        }
    };
    if let Some(line) = &opts.apt_source {
        check_apt_source(line)?;
        if facts.sshd.is_none() && facts.package_manager != Some(PackageManager::Apt) {
            return Err(ImportError::AptSource {
                line: line.clone(),
                reason: "the image installs openssh-server without apt; leave --apt-source out",
            });
        }
    }
    crate::inject::inject(
        &mut tree,
        &facts,
        &crate::inject::Extras {
            agent: agent.as_deref(),
            apt_source: opts.apt_source.as_deref(),
        },
    );
    progress(Event::Note(format!(
        "writing the root filesystem ({} entries, {} bytes of files)",
        tree.len(),
        tree.content_bytes()
    )));
    let tar = scratch.path().join("rootfs.tar");
    crate::rootfs::write_tar(&tree, &tar)?;
    let hex = fetched
        .manifest_digest
        .strip_prefix("sha256:")
        .unwrap_or(&fetched.manifest_digest);
    let epoch = fetched
        .config
        .created()
        .as_deref()
        .and_then(parse_rfc3339_epoch)
        .unwrap_or(0);
    let size = crate::rootfs::mkfs(
        &tar,
        &opts.dest,
        scratch.path(),
        &tree,
        &Ext4Options {
            size: opts.size,
            uuid: crate::rootfs::uuid_from_digest(hex),
            epoch,
        },
    )?;
    drop(tree);
    drop(scratch);
    Ok(Imported {
        reference,
        reference_digest: fetched.reference_digest.clone(),
        manifest_digest: fetched.manifest_digest.clone(),
        size_bytes: size,
        facts,
        layers: count,
        layers_cached: fetched.layers.iter().filter(|l| l.cached).count(),
        downloaded_bytes: fetched.downloaded,
    })
}

/// One apt source line, `deb [OPTIONS] URI SUITE [COMPONENT...]`: it is
/// written into the image as a file, so no newline may smuggle in more.
pub fn check_apt_source(line: &str) -> Result<(), ImportError> {
    let bad = |reason| ImportError::AptSource {
        line: line.to_owned(),
        reason,
    };
    if line.len() > 1024 {
        return Err(bad("longer than 1024 bytes"));
    }
    if line.chars().any(char::is_control) {
        return Err(bad("one line without control characters, please"));
    }
    let rest = line
        .strip_prefix("deb ")
        .ok_or_else(|| bad("must start with `deb ` (a one-line apt source)"))?;
    let rest = match rest.trim_start().strip_prefix('[') {
        Some(r) => {
            r.split_once(']')
                .ok_or_else(|| bad("unclosed [options]"))?
                .1
        }
        None => rest,
    };
    let mut words = rest.split_whitespace();
    match (words.next(), words.next()) {
        (Some(uri), Some(_suite)) if uri.contains("://") => Ok(()),
        _ => Err(bad("expected `deb [OPTIONS] URI SUITE [COMPONENT...]`")),
    }
}

/// `YYYY-MM-DDTHH:MM:SS...` → seconds since the epoch (UTC; offsets and
/// fractions ignored: only used as a stable timestamp).
fn parse_rfc3339_epoch(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    if b.len() < 19 {
        return None;
    }
    let num = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    let (y, m, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hh, mm, ss) = (num(11..13)?, num(14..16)?, num(17..19)?);
    // Days from civil (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146097 + doe - 719468;
    u64::try_from(days * 86400 + hh * 3600 + mm * 60 + ss).ok()
}

#[cfg(test)]
mod tests {
    #[test]
    fn apt_sources() {
        for ok in [
            "deb [trusted=yes] http://172.16.0.1:8080/ ./",
            "deb http://deb.debian.org/debian bookworm main",
        ] {
            super::check_apt_source(ok).unwrap();
        }
        for bad in [
            "deb http://x/ ./\ndeb http://evil/ ./",
            "rm -rf /",
            "deb [trusted=yes http://x/ ./",
            "deb http://x/",
            "deb nouri suite",
        ] {
            assert!(super::check_apt_source(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn rfc3339() {
        assert_eq!(super::parse_rfc3339_epoch("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            super::parse_rfc3339_epoch("2025-01-01T00:00:00.123Z"),
            Some(1735689600)
        );
        assert_eq!(super::parse_rfc3339_epoch("bad"), None);
    }
}
