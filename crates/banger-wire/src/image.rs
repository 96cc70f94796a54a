//! Bodies of the `/v1/images` and `/v1/kernels` routes: pull and build
//! (streamed), list, show, delete, register and promote.

use serde::{Deserialize, Serialize};

/// Where an installed image or kernel came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ArtifactSource {
    /// Downloaded from the catalog (or a mirror given by `catalog_url`).
    Catalog,
    /// Built locally from its recipe in `images/`.
    Build,
    /// Installed from a bundle file.
    File,
    /// Copied into the store from host-side files (`image promote`).
    Imported,
    /// Host-side files used in place (`image register`); not managed.
    Registered,
    /// A source added by a newer daemon.
    #[serde(other)]
    Unknown,
}

impl std::fmt::Display for ArtifactSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ArtifactSource::Catalog => "catalog",
            ArtifactSource::Build => "build",
            ArtifactSource::File => "file",
            ArtifactSource::Imported => "imported",
            ArtifactSource::Registered => "registered",
            ArtifactSource::Unknown => "unknown",
        })
    }
}

/// One image, as `GET /v1/images` and `GET /v1/images/{name}` report it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageInfo {
    pub name: String,
    pub version: String,
    pub arch: String,
    /// The kernel it boots with.
    pub kernel: String,
    /// Size of `rootfs.ext4` in bytes (apparent size; the file is sparse).
    pub size_bytes: u64,
    pub source: ArtifactSource,
    /// Catalog URL, bundle path or the host paths it was copied from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
    /// Whether its files live in banger's store (deleted with it).
    pub managed: bool,
    /// The root filesystem file.
    pub rootfs: String,
    /// When the image was built (seconds since 1970; `SOURCE_DATE_EPOCH`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<i64>,
    /// When it was installed or registered here (seconds since 1970).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub installed_at: Option<u64>,
    /// Hash of the recipe it was built from, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recipe_hash: Option<String>,
    /// Names of the VMs created from it.
    pub used_by: Vec<String>,
}

/// `GET /v1/images`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageList {
    pub images: Vec<ImageInfo>,
}

/// One kernel, as `GET /v1/kernels` and `GET /v1/kernels/{name}` report it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KernelInfo {
    pub name: String,
    pub version: String,
    /// `uname -r` of the kernel, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release: Option<String>,
    /// Bytes of vmlinux, initrd and modules together.
    pub size_bytes: u64,
    pub source: ArtifactSource,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
    pub managed: bool,
    pub vmlinux: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initrd: Option<String>,
    /// The `lib/modules/<release>` tree.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub modules: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub installed_at: Option<u64>,
    /// Images whose `kernel_ref` names it.
    pub used_by_images: Vec<String>,
    /// VMs created with it.
    pub used_by_vms: Vec<String>,
}

/// `GET /v1/kernels`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KernelList {
    pub kernels: Vec<KernelInfo>,
}

/// `POST /v1/images/{name}/pull` and `/v1/kernels/{name}/pull` body (an
/// empty body is the same as `{}`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PullRequest {}

/// `POST /v1/images/import` body: an export archive or a single bundle to
/// download (resumably) and install. A file is uploaded to
/// `POST /v1/images/import/upload` as the raw request body instead.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImportRequest {
    /// `http://` or `https://` URL.
    pub url: String,
}

/// Response header of `GET /v1/images/{name}/export` carrying the index
/// (JSON, one line) so a client can name what it received.
pub const EXPORT_INDEX_HEADER: &str = "x-banger-export-index";

/// What a client reads of that header: the bundles, in archive order.
/// Tolerant of fields it does not know (the archive's index has more).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportIndexSummary {
    pub bundles: Vec<ExportedBundle>,
}

/// One bundle of an export archive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportedBundle {
    /// `image` or `kernel`.
    pub kind: String,
    pub name: String,
    pub size: u64,
    pub sha256: String,
}

/// One bundle a pull or build installed (or found installed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstalledBundle {
    /// `image` or `kernel`.
    pub kind: String,
    pub name: String,
    pub version: String,
    /// False when it was already installed and nothing was fetched or built.
    pub fetched: bool,
    /// A build that took the bundle of the same recipe hash from the build
    /// cache instead of building (it was still installed).
    #[serde(default)]
    pub from_cache: bool,
    /// Bundle sha256, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bundle_sha256: Option<String>,
}

/// The `Done` result of pull and build: what is installed now, kernel first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstallReport {
    pub installed: Vec<InstalledBundle>,
}

/// `POST /v1/images/{name}/build` and `/v1/kernels/{name}/build` body.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BuildRequest {
    /// Rebuild even when the build cache holds a bundle of this recipe.
    #[serde(default)]
    pub force: bool,
}

/// `POST /v1/images/register` body. Paths are absolute; give either
/// `kernel_ref` (an installed or registered kernel) or `kernel` (with
/// optional `initrd` and `modules`), which registers a kernel of the same
/// name as the image.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageRegisterRequest {
    pub name: String,
    pub rootfs: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel_ref: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initrd: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub modules: Option<String>,
}

/// `POST /v1/images/{name}/promote` body (an empty body is the same as `{}`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PromoteRequest {}

/// Result of `DELETE /v1/images/{name}` and `DELETE /v1/kernels/{name}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArtifactDeleted {
    pub name: String,
    /// False when there was nothing of that name (delete is idempotent).
    pub existed: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn register_body_rejects_unknown_fields_and_skips_unset_paths() {
        let req = ImageRegisterRequest {
            name: "mine".into(),
            rootfs: "/srv/rootfs.ext4".into(),
            kernel_ref: Some("generic-6.12".into()),
            ..Default::default()
        };
        let s = serde_json::to_string(&req).unwrap();
        assert_eq!(
            s,
            r#"{"name":"mine","rootfs":"/srv/rootfs.ext4","kernel_ref":"generic-6.12"}"#
        );
        assert_eq!(
            serde_json::from_str::<ImageRegisterRequest>(&s).unwrap(),
            req
        );
        assert!(serde_json::from_str::<ImageRegisterRequest>(
            r#"{"name":"a","rootfs":"/r","bogus":1}"#
        )
        .is_err());
    }

    #[test]
    fn sources_serialize_as_their_display_names() {
        for s in [
            ArtifactSource::Catalog,
            ArtifactSource::Build,
            ArtifactSource::File,
            ArtifactSource::Imported,
            ArtifactSource::Registered,
        ] {
            assert_eq!(serde_json::to_string(&s).unwrap(), format!("\"{s}\""));
        }
    }
}
