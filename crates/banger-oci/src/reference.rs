//! Image references: `[registry/]repository[:tag][@digest]`, parsed by
//! oci-spec's `Reference` (Docker's rules: `debian` is
//! `docker.io/library/debian:latest`).

use std::net::IpAddr;

use oci_client::Reference;

/// A reference that could not be parsed.
#[derive(Debug, thiserror::Error)]
#[error(
    "{input:?} is not an image reference ([REGISTRY/]REPOSITORY[:TAG][@sha256:DIGEST]): {source}"
)]
pub struct ReferenceError {
    pub input: String,
    #[source]
    pub source: oci_client::ParseError,
}

/// A parsed reference, as the user typed it and fully qualified.
#[derive(Debug, Clone)]
pub struct OciRef {
    pub(crate) inner: Reference,
}

impl OciRef {
    pub fn parse(input: &str) -> Result<OciRef, ReferenceError> {
        let inner: Reference = input.parse().map_err(|source| ReferenceError {
            input: input.to_owned(),
            source,
        })?;
        Ok(OciRef { inner })
    }

    /// `docker.io`, `localhost:5000`, ...
    pub fn registry(&self) -> &str {
        self.inner.registry()
    }

    /// The host the client talks to (`index.docker.io` for Docker Hub).
    pub fn resolved_registry(&self) -> &str {
        self.inner.resolve_registry()
    }

    pub fn repository(&self) -> &str {
        self.inner.repository()
    }

    pub fn tag(&self) -> Option<&str> {
        self.inner.tag()
    }

    pub fn digest(&self) -> Option<&str> {
        self.inner.digest()
    }

    /// The fully qualified form, e.g. `docker.io/library/debian:bookworm`.
    pub fn whole(&self) -> String {
        self.inner.whole()
    }

    /// The default image name: the repository's last component and the tag
    /// (or the digest's first 12 hex digits), lowercase, in the character
    /// set image names allow.
    pub fn default_name(&self) -> String {
        let repo = self.repository().rsplit('/').next().unwrap_or("image");
        let suffix = match (self.tag(), self.digest()) {
            (Some(t), _) => t.to_owned(),
            (None, Some(d)) => d
                .split_once(':')
                .map(|(_, h)| h.chars().take(12).collect())
                .unwrap_or_default(),
            (None, None) => "latest".to_owned(),
        };
        let raw = format!("{repo}-{suffix}").to_ascii_lowercase();
        let mut out = String::with_capacity(raw.len());
        for c in raw.chars() {
            let c = if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '-'
            };
            if !(c == '-' && out.ends_with('-')) {
                out.push(c);
            }
        }
        let out = out.trim_matches(['-', '.']).to_owned();
        out.chars().take(63).collect()
    }

    /// Whether plain HTTP may be used: loopback registries always, others
    /// only when listed in `insecure` (config `insecure_registries`).
    pub fn plain_http_allowed(&self, insecure: &[String]) -> bool {
        let reg = self.registry();
        is_loopback_registry(reg) || insecure.iter().any(|i| i == reg)
    }
}

impl std::fmt::Display for OciRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.whole())
    }
}

/// `localhost[:port]`, `127.x.y.z[:port]`, `[::1][:port]`.
pub fn is_loopback_registry(registry: &str) -> bool {
    let host = if let Some(rest) = registry.strip_prefix('[') {
        rest.split_once(']').map(|(h, _)| h).unwrap_or(rest)
    } else {
        registry.split(':').next().unwrap_or(registry)
    };
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_hub_defaults_and_names() {
        let r = OciRef::parse("debian:bookworm").unwrap();
        assert_eq!(r.whole(), "docker.io/library/debian:bookworm");
        assert_eq!(r.resolved_registry(), "index.docker.io");
        assert_eq!(r.default_name(), "debian-bookworm");
        let r = OciRef::parse("localhost:5000/team/Dev_Box:v1.2").unwrap_err();
        assert!(r.to_string().contains("Dev_Box"), "{r}");
        let d = format!("sha256:{}", "ab".repeat(32));
        let r = OciRef::parse(&format!("localhost:5000/team/dev@{d}")).unwrap();
        assert_eq!(r.registry(), "localhost:5000");
        assert_eq!(r.repository(), "team/dev");
        assert_eq!(r.digest(), Some(d.as_str()));
        assert_eq!(r.default_name(), "dev-abababababab");
        let r = OciRef::parse("localhost:5000/x/under_score:t_1").unwrap();
        assert_eq!(r.default_name(), "under-score-t-1");
    }

    #[test]
    fn plain_http_only_for_loopback_or_listed() {
        assert!(is_loopback_registry("[::1]:5000"));
        assert!(!is_loopback_registry("[::2]:5000"));
        let insecure = vec!["reg.lan:5000".to_owned()];
        for (r, ok) in [
            ("localhost:5000/a:b", true),
            ("127.0.0.1:5000/a:b", true),
            ("reg.lan:5000/a:b", true),
            ("reg.lan/a:b", false),
            ("ghcr.io/a:b", false),
            ("localhost.evil.com/a:b", false),
        ] {
            assert_eq!(
                OciRef::parse(r).unwrap().plain_http_allowed(&insecure),
                ok,
                "{r}"
            );
        }
    }
}
