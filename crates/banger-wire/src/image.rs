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
    /// Imported from an OCI registry (`image pull REGISTRY/REPO:TAG`).
    Oci,
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
            ArtifactSource::Oci => "oci",
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
    /// For an image imported from an OCI registry: the reference and the
    /// digests it resolved to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oci: Option<OciOrigin>,
}

/// True when what the user gave `image pull` names an OCI image rather than
/// a catalog entry: it has a registry or path (`/`), a tag (`:`) or a digest
/// (`@`). Catalog names have none of these, so `banger image pull
/// debian-bookworm` keeps its meaning.
pub fn is_oci_reference(input: &str) -> bool {
    input.contains(['/', ':', '@'])
}

/// Where an OCI import came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OciOrigin {
    /// Fully qualified, e.g. `docker.io/library/debian:bookworm`.
    pub reference: String,
    /// What the reference resolved to (an index's digest for
    /// multi-platform tags): compared by a later pull of the same tag.
    pub reference_digest: String,
    /// The linux/amd64 image manifest's digest.
    pub manifest_digest: String,
}

/// `POST /v1/images/oci/pull` body: import an OCI image (docs/oci-import.md).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OciPullRequest {
    /// `[REGISTRY/]REPOSITORY[:TAG][@sha256:DIGEST]`.
    pub reference: String,
    /// The kernel the image boots with (installed or registered).
    pub kernel_ref: String,
    /// Image name; default: the repository's last part and the tag.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Size of rootfs.ext4 in bytes; default: content plus headroom.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_bytes: Option<u64>,
    /// Only `linux/amd64`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<String>,
    /// `deb [OPTIONS] URI SUITE [COMPONENT...]`: the apt source the
    /// first-boot openssh-server install uses instead of the image's (a
    /// local mirror).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub apt_source: Option<String>,
}

/// The `Done` result of an OCI pull.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OciPullReport {
    pub name: String,
    pub origin: OciOrigin,
    /// The reference digest the previous pull of this image recorded;
    /// `None` on a first pull.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_digest: Option<String>,
    pub layers: u32,
    /// Layers found in the layer cache (not downloaded).
    pub layers_cached: u32,
    pub downloaded_bytes: u64,
    /// Size of rootfs.ext4 (apparent; the file is sparse).
    pub size_bytes: u64,
    /// `systemd` (the image's own) or `banger`.
    pub init: String,
    /// Whether sshd is installed on first boot, and with which package
    /// manager (`apt`, `apk`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sshd_installed_by: Option<String>,
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
    #[test]
    fn catalog_names_are_not_oci_references() {
        use super::is_oci_reference;
        assert!(!is_oci_reference("debian-bookworm"));
        assert!(!is_oci_reference("debian-bookworm-minimal"));
        assert!(is_oci_reference("debian:bookworm"));
        assert!(is_oci_reference("localhost:5000/team/dev"));
        assert!(is_oci_reference("alpine@sha256:abcd"));
        assert!(is_oci_reference("library/alpine"));
    }

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
