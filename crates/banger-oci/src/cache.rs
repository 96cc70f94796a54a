//! The layer cache: `<dir>/blobs/sha256/<hex>`, one file per compressed
//! blob, written to a temporary name and renamed once its digest checked,
//! so a crash or a second pull never sees half a blob. Layers shared by
//! several images are downloaded once. The cache is only a speed-up: every
//! use verifies the digest again while reading (see `flatten`).

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("{0:?} is not a sha256 digest (sha256:<64 hex digits>)")]
    BadDigest(String),
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A validated `sha256:<hex>` digest.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest(String);

impl Digest {
    pub fn parse(s: &str) -> Result<Digest, CacheError> {
        match s.strip_prefix("sha256:") {
            Some(h)
                if h.len() == 64
                    && h.bytes()
                        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) =>
            {
                Ok(Digest(s.to_owned()))
            }
            _ => Err(CacheError::BadDigest(s.to_owned())),
        }
    }

    pub fn hex(&self) -> &str {
        &self.0["sha256:".len()..]
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `sha256:` + the first 12 hex digits, for messages.
    pub fn short(&self) -> &str {
        &self.0[..self.0.len().min(19)]
    }
}

impl std::fmt::Display for Digest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Debug, Clone)]
pub struct LayerCache {
    dir: PathBuf,
}

impl LayerCache {
    /// A cache rooted at `dir` (banger uses `<cache dir>/oci`); created on
    /// first use with mode 0700.
    pub fn new(dir: impl Into<PathBuf>) -> LayerCache {
        LayerCache { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn blobs(&self) -> PathBuf {
        self.dir.join("blobs/sha256")
    }

    pub fn path(&self, digest: &Digest) -> PathBuf {
        self.blobs().join(digest.hex())
    }

    /// The cached blob, when present.
    pub fn get(&self, digest: &Digest) -> Option<PathBuf> {
        let p = self.path(digest);
        p.is_file().then_some(p)
    }

    /// A temporary file in the cache (same filesystem, so the final rename
    /// is atomic); dropped unless [`LayerCache::commit`]ed.
    pub fn temp(&self) -> Result<tempfile::NamedTempFile, CacheError> {
        let blobs = self.blobs();
        create_private_dir(&blobs)?;
        tempfile::Builder::new()
            .prefix(".partial-")
            .tempfile_in(&blobs)
            .map_err(|source| CacheError::Io {
                op: "create a temporary file in",
                path: blobs.clone(),
                source,
            })
    }

    /// Put a verified blob in place.
    pub fn commit(
        &self,
        tmp: tempfile::NamedTempFile,
        digest: &Digest,
    ) -> Result<PathBuf, CacheError> {
        let dest = self.path(digest);
        tmp.persist(&dest).map_err(|e| CacheError::Io {
            op: "rename a downloaded blob to",
            path: dest.clone(),
            source: e.error,
        })?;
        Ok(dest)
    }

    /// Drop a blob that failed verification.
    pub fn evict(&self, digest: &Digest) {
        let _ = std::fs::remove_file(self.path(digest));
    }
}

fn create_private_dir(dir: &Path) -> Result<(), CacheError> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| CacheError::Io {
            op: "create",
            path: dir.to_owned(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn digests_are_strict() {
        let good = format!("sha256:{}", "0a".repeat(32));
        assert_eq!(Digest::parse(&good).unwrap().hex(), "0a".repeat(32));
        for bad in [
            "sha256:../../etc/passwd".to_owned(),
            format!("sha256:{}", "0A".repeat(32)),
            format!("sha512:{}", "0a".repeat(32)),
            format!("sha256:{}/", "0a".repeat(32)),
        ] {
            assert!(Digest::parse(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn commit_is_atomic_and_evict_removes() {
        let dir = tempfile::tempdir().unwrap();
        let cache = LayerCache::new(dir.path().join("oci"));
        let d = Digest::parse(&format!("sha256:{}", "1b".repeat(32))).unwrap();
        assert!(cache.get(&d).is_none());
        let mut t = cache.temp().unwrap();
        t.write_all(b"blob").unwrap();
        assert!(cache.get(&d).is_none(), "not visible before commit");
        let p = cache.commit(t, &d).unwrap();
        assert_eq!(cache.get(&d).as_deref(), Some(p.as_path()));
        assert_eq!(std::fs::read(&p).unwrap(), b"blob");
        let names: Vec<_> = std::fs::read_dir(p.parent().unwrap()).unwrap().collect();
        assert_eq!(names.len(), 1, "no temp file left");
        cache.evict(&d);
        assert!(cache.get(&d).is_none());
    }
}
