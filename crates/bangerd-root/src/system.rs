//! System mode: everything the helper needs comes from the install metadata
//! (`/etc/banger/install.toml`).

use std::path::{Path, PathBuf};

use banger_wire::install::InstallMetadata;
use ipnet::Ipv4Net;

use crate::action::Policy;
use crate::ops::build::{BuildPaths, BuildRunner, SYSTEM_WORK_DIR};
use crate::server::ServeConfig;

/// The guest range used when neither the config nor `--cidr` sets one.
pub const DEFAULT_CIDR: Ipv4Net = match Ipv4Net::new(std::net::Ipv4Addr::new(172, 16, 0, 0), 24) {
    Ok(net) => net,
    Err(_) => panic!("172.16.0.0/24 is a valid network"),
};

/// File name of the helper socket inside `root_run_dir`.
pub const SOCKET_NAME: &str = "bangerd-root.sock";

/// The install metadata could not be used.
#[derive(Debug, thiserror::Error)]
pub enum SystemError {
    /// The file could not be read.
    #[error("cannot read install metadata {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid install metadata.
    #[error("install metadata {path} is invalid: {message}")]
    Parse { path: PathBuf, message: String },
    /// The owner uid has no passwd entry, so its home (for `~/` in the
    /// config) is unknown.
    #[error("owner uid {uid} from the install metadata has no passwd entry")]
    UnknownOwner { uid: u32 },
    /// The config file named by the install metadata is invalid.
    #[error(transparent)]
    Config(#[from] banger_config::ConfigError),
}

/// Read and parse install metadata.
pub fn read_install(path: &Path) -> Result<InstallMetadata, SystemError> {
    let text = std::fs::read_to_string(path).map_err(|source| SystemError::Read {
        path: path.to_owned(),
        source,
    })?;
    toml::from_str(&text).map_err(|e| SystemError::Parse {
        path: path.to_owned(),
        message: e.to_string(),
    })
}

/// The guest range from the config file the install metadata names (a
/// missing file means the default range).
pub fn configured_cidr(install: &InstallMetadata) -> Result<Ipv4Net, SystemError> {
    let uid = nix::unistd::Uid::from_raw(install.owner_uid);
    let owner =
        nix::unistd::User::from_uid(uid)
            .ok()
            .flatten()
            .ok_or(SystemError::UnknownOwner {
                uid: install.owner_uid,
            })?;
    let config = banger_config::load(Path::new(&install.config_path), &owner.dir)?;
    Ok(config.cidr.value)
}

/// The system-mode configuration: socket `<root_run_dir>/bangerd-root.sock`,
/// mode 0660 with the owner's group, serving only the owner uid, paths
/// limited to the state, cache and run dirs; builds run `builder
/// --install-file INSTALL_FILE` in transient units and install into the
/// state dir; notifies systemd.
pub fn system_config(
    install: &InstallMetadata,
    install_file: &Path,
    builder: PathBuf,
    cidr: Ipv4Net,
) -> ServeConfig {
    ServeConfig {
        socket: Path::new(&install.root_run_dir).join(SOCKET_NAME),
        socket_mode: 0o660,
        socket_uid: None,
        socket_gid: Some(install.owner_gid),
        policy: Policy {
            owner_uid: install.owner_uid,
            owner_gid: Some(install.owner_gid),
            cidr,
            allowed_dirs: vec![
                PathBuf::from(&install.state_dir),
                PathBuf::from(&install.cache_dir),
                PathBuf::from(&install.run_dir),
            ],
            build: Some(BuildPaths {
                state_dir: PathBuf::from(&install.state_dir),
                cache_dir: PathBuf::from(&install.cache_dir),
                work_dir: PathBuf::from(SYSTEM_WORK_DIR),
                runner: BuildRunner::TransientUnit {
                    builder,
                    install_file: install_file.to_owned(),
                },
            }),
        },
        notify_systemd: true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INSTALL: &str = r#"
owner_user = "dev"
owner_uid = 1000
owner_gid = 1001
version = "0.1.0"
bin_dir = "/usr/bin"
lib_dir = "/usr/lib/banger"
state_dir = "/var/lib/banger"
cache_dir = "/var/cache/banger"
run_dir = "/run/banger"
root_run_dir = "/run/banger-root"
config_path = "/etc/banger/config.toml"
"#;

    #[test]
    fn system_mode_follows_the_install_metadata() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("install.toml");
        std::fs::write(&path, INSTALL).unwrap();
        let install = read_install(&path).unwrap();
        let builder = PathBuf::from("/usr/bin/bangerd-build");
        let config = system_config(&install, &path, builder.clone(), DEFAULT_CIDR);
        assert_eq!(
            config.socket,
            Path::new("/run/banger-root/bangerd-root.sock")
        );
        assert_eq!(
            (config.socket_mode, config.socket_uid, config.socket_gid),
            (0o660, None, Some(1001))
        );
        assert_eq!(config.policy.owner_uid, 1000);
        assert_eq!(config.policy.cidr.to_string(), "172.16.0.0/24");
        assert_eq!(
            config.policy.allowed_dirs,
            [
                Path::new("/var/lib/banger"),
                Path::new("/var/cache/banger"),
                Path::new("/run/banger")
            ]
        );
        assert!(config.notify_systemd);
        let build = config.policy.build.unwrap();
        assert_eq!(
            (build.state_dir, build.cache_dir, build.work_dir),
            (
                PathBuf::from("/var/lib/banger"),
                PathBuf::from("/var/cache/banger"),
                PathBuf::from(SYSTEM_WORK_DIR)
            )
        );
        assert_eq!(
            build.runner,
            BuildRunner::TransientUnit {
                builder,
                install_file: path
            }
        );
    }

    #[test]
    fn the_range_comes_from_the_installed_config() {
        let tmp = tempfile::tempdir().unwrap();
        let config = tmp.path().join("config.toml");
        let mut install: InstallMetadata = toml::from_str(INSTALL).unwrap();
        install.owner_uid = nix::unistd::getuid().as_raw();
        install.config_path = config.display().to_string();
        assert_eq!(configured_cidr(&install).unwrap(), DEFAULT_CIDR);
        std::fs::write(
            &config,
            "cidr = \"10.77.0.0/24\"\nbridge_ip = \"10.77.0.1\"\n",
        )
        .unwrap();
        assert_eq!(
            configured_cidr(&install).unwrap().to_string(),
            "10.77.0.0/24"
        );
        std::fs::write(&config, "cidr = \"nonsense\"\n").unwrap();
        let msg = configured_cidr(&install).unwrap_err().to_string();
        assert!(msg.contains("cidr"), "{msg}");
    }

    #[test]
    fn broken_install_metadata_names_the_file() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("install.toml");
        std::fs::write(&path, "owner_uid = \"x\"\n").unwrap();
        let msg = read_install(&path).unwrap_err().to_string();
        assert!(
            msg.contains(&path.display().to_string()) && msg.contains("owner_uid"),
            "{msg}"
        );
        let missing = tmp.path().join("nope.toml");
        let msg = read_install(&missing).unwrap_err().to_string();
        assert!(msg.contains("nope.toml"), "{msg}");
    }
}
