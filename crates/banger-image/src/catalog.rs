//! The catalog compiled into banger: `images/catalog.toml`.
//!
//! Every entry pins the bundle's size and sha256, so the bundle host (or a
//! mirror given by `catalog_url`) is not trusted. Entries whose sha256 is
//! empty are not published: pulling them fails with the local build command.

use std::sync::OnceLock;

use serde::Deserialize;

use crate::manifest::{validate_name, Kind};

/// The catalog text compiled into the binary.
pub const EMBEDDED: &str = include_str!("../../../images/catalog.toml");

/// Catalog format this code reads.
pub const CATALOG_FORMAT_VERSION: u32 = 1;

/// Errors reading or editing a catalog.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("catalog is invalid: {0}")]
    // Boxed: toml's errors are large and every pull result carries them.
    Parse(#[source] Box<toml::de::Error>),
    #[error("catalog is invalid: {0}")]
    Edit(#[source] Box<toml_edit::TomlError>),
    #[error("catalog is invalid: no [[{kind}]] entries")]
    NoEntries { kind: Kind },
    #[error("catalog format {0} is not supported (this banger reads {CATALOG_FORMAT_VERSION})")]
    Format(u32),
    #[error("catalog entry {name:?}: {reason}")]
    Entry { name: String, reason: String },
    #[error("no {kind} named {name:?} in the catalog (known: {known})")]
    Unknown {
        kind: Kind,
        name: String,
        known: String,
    },
    #[error("catalog base URL {url:?} is not an http(s) URL")]
    BadBaseUrl { url: String },
    #[error("cannot read catalog file {path} (from {CATALOG_FILE_ENV}): {source}")]
    Read {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
}

/// Environment variable naming a catalog file that replaces the embedded
/// one (private mirrors publishing their own bundles, tests).
pub const CATALOG_FILE_ENV: &str = "BANGER_CATALOG_FILE";

/// One bundle the catalog offers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub kind: Kind,
    pub name: String,
    pub version: String,
    /// Relative to the base URL (or absolute `http(s)://`).
    pub url: String,
    /// Bundle size in bytes (0 when unpublished).
    pub size: u64,
    /// Bundle sha256, lowercase hex (empty when unpublished).
    pub sha256: String,
    /// Images: the kernel to pull with them.
    pub kernel_ref: Option<String>,
}

impl Entry {
    /// Whether a bundle was published for this entry.
    pub fn is_published(&self) -> bool {
        !self.sha256.is_empty()
    }

    /// The full download URL under `base_url`.
    pub fn resolve_url(&self, base_url: &str) -> Result<String, CatalogError> {
        if self.url.starts_with("http://") || self.url.starts_with("https://") {
            return Ok(self.url.clone());
        }
        check_base_url(base_url)?;
        Ok(format!(
            "{}/{}",
            base_url.trim_end_matches('/'),
            self.url.trim_start_matches('/')
        ))
    }
}

/// Reject base URLs that cannot work before any network traffic.
pub fn check_base_url(base_url: &str) -> Result<(), CatalogError> {
    let rest = base_url
        .strip_prefix("https://")
        .or_else(|| base_url.strip_prefix("http://"))
        .unwrap_or("");
    if rest.is_empty() || rest.starts_with('/') || base_url.contains(char::is_whitespace) {
        return Err(CatalogError::BadBaseUrl {
            url: base_url.to_owned(),
        });
    }
    Ok(())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCatalog {
    format_version: u32,
    base_url: String,
    #[serde(default)]
    kernel: Vec<RawEntry>,
    #[serde(default)]
    image: Vec<RawEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEntry {
    name: String,
    version: String,
    url: String,
    size: u64,
    sha256: String,
    kernel_ref: Option<String>,
}

/// A parsed catalog.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Catalog {
    /// Default base URL (overridden by `catalog_url`).
    pub base_url: String,
    pub entries: Vec<Entry>,
}

impl Catalog {
    /// The catalog compiled into this binary.
    pub fn embedded() -> &'static Catalog {
        static CATALOG: OnceLock<Catalog> = OnceLock::new();
        CATALOG
            .get_or_init(|| Catalog::parse(EMBEDDED).expect("embedded catalog is valid (tested)"))
    }

    /// The catalog in effect: the file named by [`CATALOG_FILE_ENV`] when
    /// set and non-empty, else the embedded one.
    pub fn from_env() -> Result<std::borrow::Cow<'static, Catalog>, CatalogError> {
        match std::env::var_os(CATALOG_FILE_ENV).filter(|v| !v.is_empty()) {
            Some(path) => {
                let path = std::path::PathBuf::from(path);
                let text = std::fs::read_to_string(&path)
                    .map_err(|source| CatalogError::Read { path, source })?;
                Ok(std::borrow::Cow::Owned(Catalog::parse(&text)?))
            }
            None => Ok(std::borrow::Cow::Borrowed(Catalog::embedded())),
        }
    }

    /// Parse and validate catalog text.
    pub fn parse(text: &str) -> Result<Catalog, CatalogError> {
        let raw: RawCatalog = toml::from_str(text).map_err(|e| CatalogError::Parse(Box::new(e)))?;
        if raw.format_version != CATALOG_FORMAT_VERSION {
            return Err(CatalogError::Format(raw.format_version));
        }
        check_base_url(&raw.base_url)?;
        let mut entries = Vec::new();
        for (kind, list) in [(Kind::Kernel, raw.kernel), (Kind::Image, raw.image)] {
            for e in list {
                let err = |reason: &str| CatalogError::Entry {
                    name: e.name.clone(),
                    reason: reason.to_owned(),
                };
                validate_name(&e.name).map_err(|x| err(&x.to_string()))?;
                if entries
                    .iter()
                    .any(|o: &Entry| o.kind == kind && o.name == e.name)
                {
                    return Err(err("listed twice"));
                }
                if e.url.is_empty() || e.url.contains(char::is_whitespace) {
                    return Err(err("url must be non-empty without spaces"));
                }
                let published = !e.sha256.is_empty();
                if published
                    && !(e.sha256.len() == 64
                        && e.sha256
                            .bytes()
                            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()))
                {
                    return Err(err(
                        "sha256 must be 64 lowercase hex digits (or empty: unpublished)",
                    ));
                }
                if published && e.size == 0 {
                    return Err(err("a published entry needs its size"));
                }
                match (kind, &e.kernel_ref) {
                    (Kind::Image, None) => return Err(err("an image needs kernel_ref")),
                    (Kind::Image, Some(k)) => validate_name(k).map_err(|x| err(&x.to_string()))?,
                    (Kind::Kernel, Some(_)) => return Err(err("a kernel has no kernel_ref")),
                    (Kind::Kernel, None) => {}
                }
                entries.push(Entry {
                    kind,
                    name: e.name,
                    version: e.version,
                    url: e.url,
                    size: e.size,
                    sha256: e.sha256,
                    kernel_ref: e.kernel_ref,
                });
            }
        }
        for e in &entries {
            if let Some(k) = &e.kernel_ref {
                if !entries
                    .iter()
                    .any(|o| o.kind == Kind::Kernel && &o.name == k)
                {
                    return Err(CatalogError::Entry {
                        name: e.name.clone(),
                        reason: format!("kernel_ref {k:?} is not a kernel in the catalog"),
                    });
                }
            }
        }
        Ok(Catalog {
            base_url: raw.base_url,
            entries,
        })
    }

    /// The entry of `kind` named `name`.
    pub fn get(&self, kind: Kind, name: &str) -> Result<&Entry, CatalogError> {
        self.entries
            .iter()
            .find(|e| e.kind == kind && e.name == name)
            .ok_or_else(|| {
                let known: Vec<&str> = self
                    .entries
                    .iter()
                    .filter(|e| e.kind == kind)
                    .map(|e| e.name.as_str())
                    .collect();
                CatalogError::Unknown {
                    kind,
                    name: name.to_owned(),
                    known: known.join(", "),
                }
            })
    }

    /// What pulling `name` installs, in order: an image's kernel first, then
    /// the image; a kernel alone.
    pub fn closure(&self, kind: Kind, name: &str) -> Result<Vec<&Entry>, CatalogError> {
        let entry = self.get(kind, name)?;
        let mut out = Vec::new();
        if let Some(k) = &entry.kernel_ref {
            out.push(self.get(Kind::Kernel, k)?);
        }
        out.push(entry);
        Ok(out)
    }
}

/// Write a published bundle's `url`, `version`, `size` and `sha256` into
/// catalog text, keeping comments and layout; returns the new text.
pub fn set_published(
    text: &str,
    kind: Kind,
    name: &str,
    version: &str,
    url: &str,
    size: u64,
    sha256: &str,
) -> Result<String, CatalogError> {
    let mut doc: toml_edit::DocumentMut = text
        .parse()
        .map_err(|e: toml_edit::TomlError| CatalogError::Edit(Box::new(e)))?;
    let tables = doc
        .get_mut(kind.as_str())
        .and_then(|i| i.as_array_of_tables_mut())
        .ok_or(CatalogError::NoEntries { kind })?;
    let table = tables
        .iter_mut()
        .find(|t| t.get("name").and_then(|v| v.as_str()) == Some(name))
        .ok_or_else(|| CatalogError::Unknown {
            kind,
            name: name.to_owned(),
            known: String::new(),
        })?;
    table["version"] = toml_edit::value(version);
    table["url"] = toml_edit::value(url);
    table["size"] = toml_edit::value(i64::try_from(size).map_err(|_| CatalogError::Entry {
        name: name.to_owned(),
        reason: "size too large".into(),
    })?);
    table["sha256"] = toml_edit::value(sha256);
    let out = doc.to_string();
    Catalog::parse(&out)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_catalog_parses_and_has_the_promised_entries() {
        let c = Catalog::embedded();
        let image = c.get(Kind::Image, "debian-bookworm").unwrap();
        assert_eq!(image.kernel_ref.as_deref(), Some("generic-6.12"));
        c.get(Kind::Kernel, "generic-6.12").unwrap();
        let order: Vec<&str> = c
            .closure(Kind::Image, "debian-bookworm")
            .unwrap()
            .iter()
            .map(|e| e.name.as_str())
            .collect();
        assert_eq!(order, ["generic-6.12", "debian-bookworm"]);
    }

    #[test]
    fn urls_resolve_against_any_base() {
        let c = Catalog::embedded();
        let e = c.get(Kind::Kernel, "generic-6.12").unwrap();
        let u = e.resolve_url("http://127.0.0.1:8080/mirror/").unwrap();
        assert_eq!(u, format!("http://127.0.0.1:8080/mirror/{}", e.url));
        assert!(e.resolve_url("ftp://x").is_err());
        assert!(e.resolve_url("http://").is_err());
    }

    #[test]
    fn unknown_name_lists_known_ones() {
        let err = Catalog::embedded()
            .get(Kind::Image, "nope")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("nope") && err.contains("debian-bookworm"),
            "{err}"
        );
    }

    #[test]
    fn set_published_edits_in_place_and_revalidates() {
        let sha = "ab".repeat(32);
        let out = set_published(
            EMBEDDED,
            Kind::Image,
            "debian-bookworm",
            "12.9",
            "x.tar.zst",
            42,
            &sha,
        )
        .unwrap();
        assert!(out.contains("# The catalog compiled into"), "comments kept");
        let c = Catalog::parse(&out).unwrap();
        let e = c.get(Kind::Image, "debian-bookworm").unwrap();
        assert_eq!(
            (
                e.size,
                e.sha256.as_str(),
                e.version.as_str(),
                e.url.as_str()
            ),
            (42, sha.as_str(), "12.9", "x.tar.zst")
        );
        assert!(e.is_published());
        let err =
            set_published(EMBEDDED, Kind::Image, "debian-bookworm", "1", "x", 0, &sha).unwrap_err();
        assert!(err.to_string().contains("size"), "{err}");
    }

    #[test]
    fn invalid_catalogs_are_explained() {
        let base = "format_version = 1\nbase_url = \"https://x\"\n";
        let cases = [
            ("format_version = 2\nbase_url = \"https://x\"\n", "format 2"),
            ("format_version = 1\nbase_url = \"x\"\n", "base URL"),
            (&format!("{base}[[image]]\nname=\"a\"\nversion=\"1\"\nurl=\"a\"\nsize=0\nsha256=\"\"\n"), "kernel_ref"),
            (&format!("{base}[[image]]\nname=\"a\"\nversion=\"1\"\nurl=\"a\"\nsize=0\nsha256=\"\"\nkernel_ref=\"k\"\n"), "not a kernel"),
            (&format!("{base}[[kernel]]\nname=\"k\"\nversion=\"1\"\nurl=\"a\"\nsize=1\nsha256=\"XYZ\"\n"), "sha256"),
            (&format!("{base}[[kernel]]\nname=\"K\"\nversion=\"1\"\nurl=\"a\"\nsize=1\nsha256=\"\"\n"), "invalid name"),
            (&format!("{base}[[kernel]]\nname=\"k\"\nversion=\"1\"\nurl=\"a\"\nsize=1\nsha256=\"\"\nextra=1\n"), "extra"),
        ];
        for (text, needle) in cases {
            let err = Catalog::parse(text).unwrap_err().to_string();
            assert!(err.contains(needle), "expected {needle:?} in {err:?}");
        }
    }
}
