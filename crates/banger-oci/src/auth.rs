//! Registry credentials from a Docker config file (`~/.docker/config.json`
//! or `$DOCKER_CONFIG/config.json`): the `auths` map with base64
//! `user:password` or `username`/`password`, or an `identitytoken`.
//! Credential helpers (`credsStore`, `credHelpers`) are not run: banger
//! never executes programs named in a user file from its daemon.
//! Secrets are never logged: [`Credentials`]'s `Debug` hides them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use base64::Engine;
use oci_client::secrets::RegistryAuth;
use serde::Deserialize;

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("read docker config {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("docker config {path} is not valid JSON: {source}")]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("docker config {path}: the entry for {registry} has an auth value that is not base64 \"user:password\"")]
    BadAuth { path: PathBuf, registry: String },
}

#[derive(Deserialize, Default)]
struct DockerConfig {
    #[serde(default)]
    auths: BTreeMap<String, AuthEntry>,
}

#[derive(Deserialize, Default)]
struct AuthEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    identitytoken: Option<String>,
}

/// What to present to one registry.
#[derive(Clone)]
pub enum Credentials {
    Anonymous,
    Basic { user: String, password: String },
    Token(String),
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credentials::Anonymous => f.write_str("Anonymous"),
            Credentials::Basic { user, .. } => write!(f, "Basic({user}, <hidden>)"),
            Credentials::Token(_) => f.write_str("Token(<hidden>)"),
        }
    }
}

impl Credentials {
    pub(crate) fn to_registry_auth(&self) -> RegistryAuth {
        match self {
            Credentials::Anonymous => RegistryAuth::Anonymous,
            Credentials::Basic { user, password } => {
                RegistryAuth::Basic(user.clone(), password.clone())
            }
            Credentials::Token(t) => RegistryAuth::Bearer(t.clone()),
        }
    }

    /// The user name, for error messages (never the secret).
    pub fn user(&self) -> Option<&str> {
        match self {
            Credentials::Basic { user, .. } => Some(user),
            _ => None,
        }
    }
}

/// The Docker config file the current user's tools read: `$DOCKER_CONFIG/
/// config.json`, else `$HOME/.docker/config.json`.
pub fn default_docker_config() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("DOCKER_CONFIG") {
        return Some(PathBuf::from(d).join("config.json"));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".docker/config.json"))
}

/// The keys Docker uses for a registry: Docker Hub is stored under its
/// legacy URL.
fn keys_for(registry: &str) -> Vec<String> {
    let mut keys = vec![
        registry.to_owned(),
        format!("https://{registry}"),
        format!("http://{registry}"),
        format!("https://{registry}/v2/"),
        format!("https://{registry}/v1/"),
    ];
    if registry == "docker.io" || registry == "index.docker.io" {
        keys.push("https://index.docker.io/v1/".to_owned());
        keys.push("index.docker.io".to_owned());
        keys.push("docker.io".to_owned());
    }
    keys
}

/// Credentials for `registry` from the Docker config at `path`; a missing
/// file or no entry means anonymous.
pub fn credentials_for(path: &Path, registry: &str) -> Result<Credentials, AuthError> {
    let text = match std::fs::read(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Credentials::Anonymous),
        Err(source) => {
            return Err(AuthError::Read {
                path: path.to_owned(),
                source,
            })
        }
    };
    let config: DockerConfig =
        serde_json::from_slice(&text).map_err(|source| AuthError::Parse {
            path: path.to_owned(),
            source,
        })?;
    let Some(entry) = keys_for(registry).iter().find_map(|k| config.auths.get(k)) else {
        return Ok(Credentials::Anonymous);
    };
    if let Some(t) = entry.identitytoken.as_ref().filter(|t| !t.is_empty()) {
        return Ok(Credentials::Token(t.clone()));
    }
    if let (Some(u), Some(p)) = (&entry.username, &entry.password) {
        return Ok(Credentials::Basic {
            user: u.clone(),
            password: p.clone(),
        });
    }
    let bad = || AuthError::BadAuth {
        path: path.to_owned(),
        registry: registry.to_owned(),
    };
    match &entry.auth {
        Some(a) if !a.is_empty() => {
            let raw = base64::engine::general_purpose::STANDARD
                .decode(a.trim())
                .map_err(|_| bad())?;
            let s = String::from_utf8(raw).map_err(|_| bad())?;
            let (user, password) = s.split_once(':').ok_or_else(bad)?;
            Ok(Credentials::Basic {
                user: user.to_owned(),
                password: password.to_owned(),
            })
        }
        _ => Ok(Credentials::Anonymous),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_auth_entries_and_hides_secrets() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("config.json");
        let enc = base64::engine::general_purpose::STANDARD.encode("alice:s3cret:x");
        std::fs::write(
            &p,
            format!(
                r#"{{"auths":{{"localhost:5000":{{"auth":"{enc}"}},
                   "https://index.docker.io/v1/":{{"username":"bob","password":"pw"}},
                   "bad:1":{{"auth":"!!"}}}},"credsStore":"desktop"}}"#
            ),
        )
        .unwrap();
        let c = credentials_for(&p, "localhost:5000").unwrap();
        let Credentials::Basic { user, password } = &c else {
            panic!("{c:?}")
        };
        assert_eq!((user.as_str(), password.as_str()), ("alice", "s3cret:x"));
        assert!(!format!("{c:?}").contains("s3cret"));
        assert_eq!(
            credentials_for(&p, "docker.io").unwrap().user(),
            Some("bob")
        );
        assert!(matches!(
            credentials_for(&p, "other:1").unwrap(),
            Credentials::Anonymous
        ));
        let e = credentials_for(&p, "bad:1").unwrap_err().to_string();
        assert!(e.contains("bad:1") && e.contains("base64"), "{e}");
        assert!(matches!(
            credentials_for(&dir.path().join("none"), "x").unwrap(),
            Credentials::Anonymous
        ));
    }
}
