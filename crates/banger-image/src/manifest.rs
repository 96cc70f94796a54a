//! `manifest.json`: what a bundle holds, versioned.
//!
//! ```json
//! {
//!   "format_version": 1,
//!   "kind": "image",
//!   "name": "debian-bookworm",
//!   "version": "12.2025.1",
//!   "arch": "x86_64",
//!   "created": 1735689600,
//!   "recipe_hash": "<sha256 hex>",
//!   "kernel_ref": "generic-6.12",
//!   "artifacts": [
//!     { "name": "rootfs.ext4", "type": "file", "size": 2147483648, "sha256": "<hex>" }
//!   ]
//! }
//! ```
//!
//! An image holds exactly `rootfs.ext4` and names its kernel in `kernel_ref`.
//! A kernel holds `vmlinux`, optionally `initrd` and the `modules` tree, and
//! states its `kernel_release` (`uname -r`). A tree artifact's size is the sum
//! of its regular files and its sha256 is the tree digest of
//! [`crate::digest::TreeDigest`].

use serde::{Deserialize, Serialize};

/// The bundle format this code writes and the newest it reads.
pub const FORMAT_VERSION: u32 = 1;
/// Name of the manifest inside a bundle and an installed directory.
pub const MANIFEST_FILE: &str = "manifest.json";
/// The only architecture banger builds for.
pub const ARCH: &str = "x86_64";
/// An image's root filesystem artifact.
pub const ROOTFS: &str = "rootfs.ext4";
/// A kernel's ELF artifact (PVH-bootable).
pub const VMLINUX: &str = "vmlinux";
/// A kernel's initramfs artifact (newc cpio).
pub const INITRD: &str = "initrd";
/// A kernel's modules tree (`modules/<kernel_release>/...`).
pub const MODULES: &str = "modules";
/// Largest manifest accepted when unpacking (it is a few hundred bytes).
pub const MAX_MANIFEST_BYTES: u64 = 1 << 20;

/// What a bundle is (one type with the helper request's).
pub use banger_wire::helper::BundleKind as Kind;

/// Whether an artifact is one file or a directory tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ArtifactType {
    File,
    Tree,
}

/// One artifact of a bundle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Artifact {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: ArtifactType,
    /// Bytes of the file, or of all regular files of the tree.
    pub size: u64,
    /// Lowercase hex sha256 of the file, or the tree digest.
    pub sha256: String,
}

/// The parsed `manifest.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format_version: u32,
    pub kind: Kind,
    pub name: String,
    pub version: String,
    pub arch: String,
    /// `SOURCE_DATE_EPOCH` of the build (seconds since 1970, UTC).
    pub created: i64,
    /// sha256 of the recipe the bundle was built from (`None` for bundles
    /// made from a registered, hand-built artifact).
    pub recipe_hash: Option<String>,
    /// Image only: the kernel bundle this image boots with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel_ref: Option<String>,
    /// Kernel only: the release string (`uname -r`), also the directory
    /// name under `modules/`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel_release: Option<String>,
    pub artifacts: Vec<Artifact>,
}

/// Why a manifest is unacceptable.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("manifest is not valid JSON: {0}")]
    Json(#[source] serde_json::Error),
    #[error("manifest has no numeric format_version")]
    NoFormatVersion,
    #[error(
        "bundle format {found} is newer than this banger reads ({FORMAT_VERSION}): upgrade banger"
    )]
    TooNew { found: u64 },
    #[error("invalid name {name:?}: use 1-63 of a-z 0-9 . _ - starting with a letter or digit")]
    BadName { name: String },
    #[error("{field} is invalid: {reason}")]
    BadField { field: &'static str, reason: String },
    #[error("artifact {name:?} does not belong in a {kind} bundle")]
    UnexpectedArtifact { kind: Kind, name: String },
    #[error("artifact {name:?} is listed twice")]
    DuplicateArtifact { name: String },
    #[error("{kind} bundle lacks its required artifact {name:?}")]
    MissingArtifact { kind: Kind, name: &'static str },
}

/// Check a bundle/catalog/recipe name: what becomes a directory name in the store.
pub fn validate_name(name: &str) -> Result<(), ManifestError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(ManifestError::BadName {
            name: name.to_owned(),
        })
    }
}

fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

impl Manifest {
    /// Parse and validate `manifest.json` bytes. The format version is read
    /// first so a newer bundle says "upgrade banger" rather than naming an
    /// unknown field.
    pub fn from_json(bytes: &[u8]) -> Result<Manifest, ManifestError> {
        let value: serde_json::Value =
            serde_json::from_slice(bytes).map_err(ManifestError::Json)?;
        let found = value
            .get("format_version")
            .and_then(serde_json::Value::as_u64)
            .ok_or(ManifestError::NoFormatVersion)?;
        if found > u64::from(FORMAT_VERSION) {
            return Err(ManifestError::TooNew { found });
        }
        let manifest: Manifest = serde_json::from_value(value).map_err(ManifestError::Json)?;
        manifest.validate()?;
        Ok(manifest)
    }

    /// Canonical JSON (pretty, fixed field order, trailing newline), so the
    /// same manifest always packs to the same bytes.
    pub fn to_json(&self) -> Vec<u8> {
        let mut out = serde_json::to_vec_pretty(self).expect("manifest serializes");
        out.push(b'\n');
        out
    }

    /// The artifact named `name`, if listed.
    pub fn artifact(&self, name: &str) -> Option<&Artifact> {
        self.artifacts.iter().find(|a| a.name == name)
    }

    /// Sum of the artifact sizes (what the bundle occupies once installed,
    /// before sparseness).
    pub fn total_size(&self) -> u64 {
        self.artifacts.iter().map(|a| a.size).sum()
    }

    /// Check every rule of the format (see the module docs).
    pub fn validate(&self) -> Result<(), ManifestError> {
        let bad = |field, reason: &str| ManifestError::BadField {
            field,
            reason: reason.to_owned(),
        };
        if self.format_version == 0 {
            return Err(bad("format_version", "must be at least 1"));
        }
        validate_name(&self.name)?;
        if self.version.is_empty() || self.version.len() > 128 || self.version.contains(['/', '\n'])
        {
            return Err(bad(
                "version",
                "must be 1-128 characters without '/' or newlines",
            ));
        }
        if self.arch != ARCH {
            return Err(ManifestError::BadField {
                field: "arch",
                reason: format!("{:?} is not supported (only {ARCH})", self.arch),
            });
        }
        if let Some(h) = &self.recipe_hash {
            if !is_sha256_hex(h) {
                return Err(bad("recipe_hash", "must be 64 lowercase hex digits"));
            }
        }
        let allowed: &[(&str, ArtifactType)] = match self.kind {
            Kind::Image => {
                match &self.kernel_ref {
                    Some(k) => validate_name(k)?,
                    None => return Err(bad("kernel_ref", "an image must name its kernel")),
                }
                if self.kernel_release.is_some() {
                    return Err(bad("kernel_release", "only kernels have a release"));
                }
                &[(ROOTFS, ArtifactType::File)]
            }
            Kind::Kernel => {
                if self.kernel_ref.is_some() {
                    return Err(bad("kernel_ref", "only images reference a kernel"));
                }
                match &self.kernel_release {
                    Some(r) if !r.is_empty() && validate_path_component(r) => {}
                    _ => return Err(bad("kernel_release", "a kernel must state its release")),
                }
                &[
                    (VMLINUX, ArtifactType::File),
                    (INITRD, ArtifactType::File),
                    (MODULES, ArtifactType::Tree),
                ]
            }
        };
        let mut seen = Vec::new();
        for a in &self.artifacts {
            if !allowed.contains(&(a.name.as_str(), a.kind)) {
                return Err(ManifestError::UnexpectedArtifact {
                    kind: self.kind,
                    name: a.name.clone(),
                });
            }
            if seen.contains(&a.name.as_str()) {
                return Err(ManifestError::DuplicateArtifact {
                    name: a.name.clone(),
                });
            }
            seen.push(&a.name);
            if !is_sha256_hex(&a.sha256) {
                return Err(ManifestError::BadField {
                    field: "artifacts.sha256",
                    reason: format!("{}: must be 64 lowercase hex digits", a.name),
                });
            }
        }
        let required = match self.kind {
            Kind::Image => ROOTFS,
            Kind::Kernel => VMLINUX,
        };
        if !seen.contains(&required) {
            return Err(ManifestError::MissingArtifact {
                kind: self.kind,
                name: required,
            });
        }
        Ok(())
    }
}

/// True when `s` is usable as one path component (no separators, not `.`/`..`).
pub(crate) fn validate_path_component(s: &str) -> bool {
    !s.is_empty() && s != "." && s != ".." && !s.contains(['/', '\0']) && s.len() <= 255
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image() -> Manifest {
        Manifest {
            format_version: FORMAT_VERSION,
            kind: Kind::Image,
            name: "debian-bookworm".into(),
            version: "12.1".into(),
            arch: ARCH.into(),
            created: 1_735_689_600,
            recipe_hash: Some("a".repeat(64)),
            kernel_ref: Some("generic-6.12".into()),
            kernel_release: None,
            artifacts: vec![Artifact {
                name: ROOTFS.into(),
                kind: ArtifactType::File,
                size: 10,
                sha256: "b".repeat(64),
            }],
        }
    }

    #[test]
    fn round_trips_through_json() {
        let m = image();
        assert_eq!(Manifest::from_json(&m.to_json()).unwrap(), m);
    }

    #[test]
    fn newer_format_asks_for_upgrade() {
        let mut v: serde_json::Value = serde_json::from_slice(&image().to_json()).unwrap();
        v["format_version"] = 2.into();
        v["future_field"] = true.into();
        let err = Manifest::from_json(&serde_json::to_vec(&v).unwrap()).unwrap_err();
        assert!(matches!(err, ManifestError::TooNew { found: 2 }), "{err}");
        assert!(err.to_string().contains("upgrade banger"));
    }

    #[test]
    fn rejects_each_broken_rule() {
        type Case = (fn(&mut Manifest), &'static str);
        let cases: Vec<Case> = vec![
            (|m| m.name = "../etc".into(), "invalid name"),
            (|m| m.name = "Debian".into(), "invalid name"),
            (|m| m.arch = "aarch64".into(), "arch"),
            (|m| m.kernel_ref = None, "kernel_ref"),
            (|m| m.kernel_release = Some("6.12".into()), "kernel_release"),
            (|m| m.recipe_hash = Some("xyz".into()), "recipe_hash"),
            (|m| m.artifacts[0].sha256 = "B".repeat(64), "rootfs.ext4"),
            (
                |m| m.artifacts[0].name = "vmlinux".into(),
                "does not belong",
            ),
            (|m| m.artifacts.push(m.artifacts[0].clone()), "listed twice"),
            (|m| m.artifacts.clear(), "lacks its required artifact"),
            (|m| m.version = "a/b".into(), "version"),
        ];
        for (break_it, needle) in cases {
            let mut m = image();
            break_it(&mut m);
            let err = m.validate().unwrap_err().to_string();
            assert!(err.contains(needle), "expected {needle:?} in {err:?}");
        }
    }

    #[test]
    fn kernel_rules() {
        let mut m = image();
        m.kind = Kind::Kernel;
        m.kernel_ref = None;
        m.kernel_release = Some("6.12.95+deb12-cloud-amd64".into());
        m.artifacts[0].name = VMLINUX.into();
        m.artifacts.push(Artifact {
            name: MODULES.into(),
            kind: ArtifactType::Tree,
            size: 1,
            sha256: "c".repeat(64),
        });
        m.validate().unwrap();
        m.artifacts[1].kind = ArtifactType::File;
        assert!(m.validate().unwrap_err().to_string().contains("modules"));
        m.artifacts.pop();
        m.kernel_release = Some("../x".into());
        assert!(m
            .validate()
            .unwrap_err()
            .to_string()
            .contains("kernel_release"));
    }

    #[test]
    fn unknown_fields_are_rejected() {
        let mut v: serde_json::Value = serde_json::from_slice(&image().to_json()).unwrap();
        v["surprise"] = 1.into();
        let err = Manifest::from_json(&serde_json::to_vec(&v).unwrap()).unwrap_err();
        assert!(err.to_string().contains("surprise"), "{err}");
    }
}
