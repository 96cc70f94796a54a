//! The directory layout of the two install modes.
//!
//! - **system**: `/etc/banger/install.toml` exists (override the path with
//!   `BANGER_INSTALL_FILE`); state, cache and sockets live where it says
//!   (`/var/lib/banger`, `/var/cache/banger`, `/run/banger`, `/run/banger-root`).
//! - **per-user**: no install; the XDG base directories of the calling user.

use std::path::{Path, PathBuf};

use banger_wire::api::InstallMode;
use banger_wire::install::{InstallMetadata, INSTALL_TOML};

/// Environment variable that points at an alternative install metadata file.
pub const INSTALL_FILE_ENV: &str = "BANGER_INSTALL_FILE";

/// Errors finding the layout.
#[derive(Debug, thiserror::Error)]
pub enum PathsError {
    #[error("cannot read install metadata {path}: {source}")]
    ReadInstall {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("install metadata {path} is invalid: {message} (reinstall with `sudo banger system install`)")]
    ParseInstall { path: PathBuf, message: String },
    #[error("cannot determine the home directory: set $HOME")]
    NoHome,
}

/// Every path a banger process needs, resolved once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    pub mode: InstallMode,
    /// Present in system mode.
    pub install: Option<InstallMetadata>,
    /// The home of the user whose config and `~/` expansion apply (the owner).
    pub home: PathBuf,
    pub state_dir: PathBuf,
    pub cache_dir: PathBuf,
    /// Directory holding the daemon socket and lock.
    pub runtime_dir: PathBuf,
    /// Directory holding the root helper socket.
    pub root_runtime_dir: PathBuf,
    /// Default config file (before `--config` / `BANGER_CONFIG`).
    pub default_config: PathBuf,
}

impl Layout {
    /// Resolve the layout from the environment of the current process.
    pub fn detect() -> Result<Layout, PathsError> {
        let install_path = std::env::var_os(INSTALL_FILE_ENV)
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(INSTALL_TOML));
        let env = |k: &str| {
            std::env::var_os(k)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        };
        let home = env("HOME").ok_or(PathsError::NoHome)?;
        if install_path.exists() {
            let install = read_install(&install_path)?;
            return Ok(Layout::system(install, home));
        }
        Ok(Layout::per_user(
            home,
            env("XDG_CONFIG_HOME"),
            env("XDG_STATE_HOME"),
            env("XDG_CACHE_HOME"),
            env("XDG_RUNTIME_DIR"),
            nix::unistd::getuid().as_raw(),
        ))
    }

    /// The system layout described by `install`.
    pub fn system(install: InstallMetadata, home: PathBuf) -> Layout {
        Layout {
            mode: InstallMode::System,
            state_dir: install.state_dir.clone().into(),
            cache_dir: install.cache_dir.clone().into(),
            runtime_dir: install.run_dir.clone().into(),
            root_runtime_dir: install.root_run_dir.clone().into(),
            default_config: install.config_path.clone().into(),
            install: Some(install),
            home,
        }
    }

    /// The per-user layout from XDG variables (each `None` when unset).
    pub fn per_user(
        home: PathBuf,
        config_home: Option<PathBuf>,
        state_home: Option<PathBuf>,
        cache_home: Option<PathBuf>,
        runtime_dir: Option<PathBuf>,
        uid: u32,
    ) -> Layout {
        let config_home = config_home.unwrap_or_else(|| home.join(".config"));
        let state_home = state_home.unwrap_or_else(|| home.join(".local/state"));
        let cache_home = cache_home.unwrap_or_else(|| home.join(".cache"));
        let runtime = runtime_dir
            .map(|d| d.join("banger"))
            .unwrap_or_else(|| std::env::temp_dir().join(format!("banger-{uid}")));
        Layout {
            mode: InstallMode::PerUser,
            install: None,
            state_dir: state_home.join("banger"),
            cache_dir: cache_home.join("banger"),
            root_runtime_dir: runtime.join("root"),
            runtime_dir: runtime,
            default_config: config_home.join("banger/config.toml"),
            home,
        }
    }

    /// The daemon's API socket.
    pub fn socket(&self) -> PathBuf {
        self.runtime_dir.join("bangerd.sock")
    }

    /// The root helper's socket.
    pub fn helper_socket(&self) -> PathBuf {
        self.root_runtime_dir.join("bangerd-root.sock")
    }

    /// Lock serializing daemon start-up (auto-start races) and held by the
    /// running daemon for its whole life.
    pub fn daemon_lock(&self) -> PathBuf {
        self.runtime_dir.join("bangerd.lock")
    }

    /// Lock a CLI holds while it checks for and auto-starts a per-user daemon,
    /// so two CLIs racing start exactly one daemon.
    pub fn autostart_lock(&self) -> PathBuf {
        self.runtime_dir.join("autostart.lock")
    }

    /// SQLite database.
    pub fn database(&self) -> PathBuf {
        self.state_dir.join("state.db")
    }

    /// Log file used when not running under systemd.
    pub fn log_file(&self) -> PathBuf {
        self.state_dir.join("bangerd.log")
    }

    /// The OpenSSH client config bangerd keeps for VM names: next to the
    /// per-user config, or `~/.config/banger/ssh_config` of the owner in
    /// system mode (whose config lives in `/etc`, which the owner cannot write).
    pub fn ssh_config(&self) -> PathBuf {
        match self.mode {
            InstallMode::PerUser => self
                .default_config
                .parent()
                .map(|d| d.join("ssh_config"))
                .unwrap_or_else(|| self.home.join(".config/banger/ssh_config")),
            InstallMode::System => self.home.join(".config/banger/ssh_config"),
        }
    }
}

/// Errors preparing a private directory ([`ensure_private_dir`]).
#[derive(Debug, thiserror::Error)]
pub enum PrivateDirError {
    #[error("cannot create directory {path}: {source}")]
    Create {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot inspect directory {path}: {source}")]
    Inspect {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a plain directory (a symlink or file is in the way); remove it")]
    NotDirectory { path: PathBuf },
    #[error("{path} is owned by uid {owner}, not by uid {uid}; remove it or point XDG_RUNTIME_DIR elsewhere")]
    NotOwned { path: PathBuf, owner: u32, uid: u32 },
    #[error("cannot make {path} private (mode 0700): {source}")]
    Chmod {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Create `path` (and missing parents) with mode 0700, and make sure it is a
/// directory owned by the effective uid with no group/other access. Used for
/// per-user runtime directories, which may sit in a shared `/tmp`.
pub fn ensure_private_dir(path: &Path) -> Result<(), PrivateDirError> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .map_err(|source| PrivateDirError::Create {
            path: path.to_owned(),
            source,
        })?;
    // symlink_metadata: a symlink planted in /tmp must not redirect us.
    let meta = std::fs::symlink_metadata(path).map_err(|source| PrivateDirError::Inspect {
        path: path.to_owned(),
        source,
    })?;
    let uid = nix::unistd::geteuid().as_raw();
    if !meta.is_dir() {
        return Err(PrivateDirError::NotDirectory {
            path: path.to_owned(),
        });
    }
    if meta.uid() != uid {
        return Err(PrivateDirError::NotOwned {
            path: path.to_owned(),
            owner: meta.uid(),
            uid,
        });
    }
    if meta.mode() & 0o077 != 0 {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700)).map_err(
            |source| PrivateDirError::Chmod {
                path: path.to_owned(),
                source,
            },
        )?;
    }
    Ok(())
}

fn read_install(path: &Path) -> Result<InstallMetadata, PathsError> {
    let text = std::fs::read_to_string(path).map_err(|source| PathsError::ReadInstall {
        path: path.to_owned(),
        source,
    })?;
    toml::from_str(&text).map_err(|e| PathsError::ParseInstall {
        path: path.to_owned(),
        message: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_user_defaults_follow_xdg_spec() {
        let l = Layout::per_user("/home/a".into(), None, None, None, None, 1000);
        assert_eq!(l.state_dir, Path::new("/home/a/.local/state/banger"));
        assert_eq!(l.cache_dir, Path::new("/home/a/.cache/banger"));
        assert_eq!(
            l.default_config,
            Path::new("/home/a/.config/banger/config.toml")
        );
        assert_eq!(l.runtime_dir, std::env::temp_dir().join("banger-1000"));
        let l = Layout::per_user(
            "/home/a".into(),
            Some("/c".into()),
            Some("/s".into()),
            Some("/k".into()),
            Some("/run/user/1000".into()),
            1000,
        );
        assert_eq!(l.socket(), Path::new("/run/user/1000/banger/bangerd.sock"));
        assert_eq!(l.database(), Path::new("/s/banger/state.db"));
        assert_eq!(l.default_config, Path::new("/c/banger/config.toml"));
    }

    #[test]
    fn private_dir_is_created_0700_and_tightened() {
        use std::os::unix::fs::PermissionsExt;
        let base = std::env::temp_dir().join(format!("banger-private-test-{}", std::process::id()));
        let dir = base.join("a/b");
        ensure_private_dir(&dir).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700);
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        ensure_private_dir(&dir).unwrap();
        assert_eq!(mode(&dir), 0o700);
        let link = base.join("link");
        std::os::unix::fs::symlink(&dir, &link).unwrap();
        let err = ensure_private_dir(&link).unwrap_err();
        assert!(err.to_string().contains("link"), "{err}");
        std::fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn bad_install_file_names_the_file() {
        let dir = std::env::temp_dir().join(format!("banger-paths-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("install.toml");
        std::fs::write(&p, "owner_user = 3").unwrap();
        let err = read_install(&p).unwrap_err().to_string();
        assert!(err.contains("install.toml"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
