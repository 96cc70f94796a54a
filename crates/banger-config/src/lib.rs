//! banger's `config.toml`: parsing, validation, provenance, `[vm_defaults]`
//! resolution and the SSH key banger uses to reach its guests.
//!
//! Every key is optional. [`load`] reads a file (a missing file means all
//! defaults), [`parse`] parses text; both reject unknown keys, wrong types and
//! invalid values with errors naming the file, the line and the key
//! (`config.toml:7: file_sync[2].guest: must be under ~/ or /root/`).
//! Every effective value is a [`Setting`] that says where it came from.
//! The user-facing reference is `docs/config.md`.
//!
//! The SSH key functions (`ensure_ssh_key` and friends) are behind the
//! `ssh-key` feature, on by default; the root helper, which only reads the
//! guest range, turns it off and links no key generation.

mod error;
mod parse;
mod show;
#[cfg(feature = "ssh-key")]
mod ssh;
mod units;
mod vm_defaults;

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

pub use error::{ConfigError, Problem};
pub use show::ShownSetting;
#[cfg(feature = "ssh-key")]
pub use ssh::{ensure_ssh_key, public_key_path, read_public_key, SshKeyError};
pub use units::{format_size, parse_size};
pub use vm_defaults::{
    resolve_vm_defaults, HostFacts, VmDefaults, DEFAULT_DISK_BYTES, HOST_MAX_MEMORY_MIB,
    HOST_MAX_VCPU, MIN_DISK_BYTES, MIN_MEMORY_MIB, MIN_VCPU,
};

/// Environment variable overriding `catalog_url`.
pub const CATALOG_URL_ENV: &str = "BANGER_CATALOG_URL";
/// Default `log_level`.
pub const DEFAULT_LOG_LEVEL: &str = "info";
/// Default `default_image_name`.
pub const DEFAULT_IMAGE_NAME: &str = "debian-bookworm";
/// Default `ssh_key_path`, relative to the owner's home.
pub const DEFAULT_SSH_KEY: &str = ".local/state/banger/ssh/id_ed25519";
/// Default `stats_poll_interval`.
pub const DEFAULT_STATS_POLL_INTERVAL: Duration = Duration::from_secs(10);
/// Default `serial_log_max`.
pub const DEFAULT_SERIAL_LOG_MAX: u64 = 2 << 20;
/// Smallest `serial_log_max`.
pub const MIN_SERIAL_LOG_MAX: u64 = 16 << 10;
/// Default `metrics_poll_interval`.
pub const DEFAULT_METRICS_POLL_INTERVAL: Duration = Duration::from_secs(60);
/// Default `bridge_name`.
pub const DEFAULT_BRIDGE_NAME: &str = "banger0";
/// Default `cidr`.
pub const DEFAULT_CIDR: &str = "172.16.0.0/24";
/// Default `tap_pool_size`.
pub const DEFAULT_TAP_POOL_SIZE: u32 = 4;
/// Largest accepted `tap_pool_size` (tap names `banger-t<N>` must fit in 15 bytes).
pub const MAX_TAP_POOL_SIZE: u32 = 4096;
/// Default `default_dns`.
pub const DEFAULT_DNS: &str = "1.1.1.1";
/// Default `catalog_url`.
pub const DEFAULT_CATALOG_URL: &str = "https://images.banger.dev/v1";

/// Where an effective value came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Provenance {
    /// Set in the config file.
    Config,
    /// Set by an environment variable.
    Env,
    /// Derived from this host (CPU count, RAM).
    Host,
    /// banger's built-in default.
    BuiltIn,
}

impl std::fmt::Display for Provenance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Provenance::Config => "config",
            Provenance::Env => "env",
            Provenance::Host => "host",
            Provenance::BuiltIn => "built-in",
        })
    }
}

/// An effective value and where it came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Setting<T> {
    pub value: T,
    pub provenance: Provenance,
}

impl<T> Setting<T> {
    /// A value set in the config file.
    pub fn config(value: T) -> Self {
        Setting {
            value,
            provenance: Provenance::Config,
        }
    }

    /// A built-in default.
    pub fn built_in(value: T) -> Self {
        Setting {
            value,
            provenance: Provenance::BuiltIn,
        }
    }
}

/// Which VMM runs guests (config key `vmm`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VmmChoice {
    /// Firecracker when its binary and a usable KVM are present, else QEMU.
    Auto,
    /// Always Firecracker.
    Firecracker,
    /// Always QEMU (`microvm` machine; KVM when usable, TCG otherwise).
    Qemu,
}

impl VmmChoice {
    /// The spelling used in `config.toml`.
    pub fn as_str(self) -> &'static str {
        match self {
            VmmChoice::Auto => "auto",
            VmmChoice::Firecracker => "firecracker",
            VmmChoice::Qemu => "qemu",
        }
    }
}

impl std::fmt::Display for VmmChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The raw `[vm_defaults]` table as written in the file (validated, not yet
/// resolved; see [`resolve_vm_defaults`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VmDefaultsConfig {
    pub vcpu: Option<u32>,
    pub memory_mib: Option<u64>,
    /// Bytes (the file says e.g. `"16G"`).
    pub disk_size: Option<u64>,
}

/// The `[network]` table: what guests may reach beyond the default fence
/// (NAT to the outside, DNS on the bridge address). See docs/security.md.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkConfig {
    /// Ports (TCP and UDP) on the bridge address guests may reach.
    pub allow_host_ports: Setting<Vec<u16>>,
    /// Guests may reach each other.
    pub allow_guest_to_guest: Setting<bool>,
    /// Guests may reach 169.254.0.0/16 (link-local, cloud metadata).
    pub allow_link_local: Setting<bool>,
    /// Networks guests must not reach through NAT (e.g. the LAN).
    pub deny_destinations: Setting<Vec<Ipv4Net>>,
}

impl Default for NetworkConfig {
    fn default() -> Self {
        NetworkConfig {
            allow_host_ports: Setting::built_in(Vec::new()),
            allow_guest_to_guest: Setting::built_in(false),
            allow_link_local: Setting::built_in(false),
            deny_destinations: Setting::built_in(Vec::new()),
        }
    }
}

/// One validated `[[file_sync]]` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileSyncEntry {
    /// Absolute host path inside the owner's home (`~/` expanded).
    pub host: PathBuf,
    /// Absolute guest path under `/root/` (`~/` expanded to `/root/`).
    pub guest: PathBuf,
    /// Permission bits for the copied file (`"0644"` in the file).
    pub mode: Option<u32>,
}

/// The effective configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The file it was loaded from (`None`: the file was missing, defaults apply).
    pub source: Option<PathBuf>,
    pub log_level: Setting<String>,
    /// `None`: look the binary up on `PATH`.
    pub firecracker_bin: Setting<Option<PathBuf>>,
    /// `None`: look the binary up on `PATH`.
    pub qemu_bin: Setting<Option<PathBuf>>,
    pub vmm: Setting<VmmChoice>,
    /// Absolute, `~` expanded.
    pub ssh_key_path: Setting<PathBuf>,
    pub default_image_name: Setting<String>,
    /// `None`: stale VMs are never stopped automatically.
    pub auto_stop_stale_after: Setting<Option<Duration>>,
    pub stats_poll_interval: Setting<Duration>,
    pub metrics_poll_interval: Setting<Duration>,
    /// Bytes of a VM's live serial log before it is rotated.
    pub serial_log_max: Setting<u64>,
    pub bridge_name: Setting<String>,
    pub bridge_ip: Setting<Ipv4Addr>,
    pub cidr: Setting<Ipv4Net>,
    pub tap_pool_size: Setting<u32>,
    pub default_dns: Setting<Vec<IpAddr>>,
    /// No trailing slash.
    pub catalog_url: Setting<String>,
    pub vm_defaults: VmDefaultsConfig,
    pub file_sync: Vec<FileSyncEntry>,
    pub network: NetworkConfig,
}

impl Config {
    /// Every key at its built-in default, for the owner whose home is `home`.
    pub fn defaults(home: &Path) -> Config {
        let cidr: Ipv4Net = DEFAULT_CIDR
            .parse()
            .expect("DEFAULT_CIDR is a valid network");
        Config {
            source: None,
            log_level: Setting::built_in(DEFAULT_LOG_LEVEL.to_owned()),
            firecracker_bin: Setting::built_in(None),
            qemu_bin: Setting::built_in(None),
            vmm: Setting::built_in(VmmChoice::Auto),
            ssh_key_path: Setting::built_in(home.join(DEFAULT_SSH_KEY)),
            default_image_name: Setting::built_in(DEFAULT_IMAGE_NAME.to_owned()),
            auto_stop_stale_after: Setting::built_in(None),
            stats_poll_interval: Setting::built_in(DEFAULT_STATS_POLL_INTERVAL),
            metrics_poll_interval: Setting::built_in(DEFAULT_METRICS_POLL_INTERVAL),
            serial_log_max: Setting::built_in(DEFAULT_SERIAL_LOG_MAX),
            bridge_name: Setting::built_in(DEFAULT_BRIDGE_NAME.to_owned()),
            bridge_ip: Setting::built_in(first_host(cidr)),
            cidr: Setting::built_in(cidr),
            tap_pool_size: Setting::built_in(DEFAULT_TAP_POOL_SIZE),
            default_dns: Setting::built_in(vec![DEFAULT_DNS
                .parse()
                .expect("DEFAULT_DNS is a valid address")]),
            catalog_url: Setting::built_in(DEFAULT_CATALOG_URL.to_owned()),
            vm_defaults: VmDefaultsConfig::default(),
            file_sync: Vec::new(),
            network: NetworkConfig::default(),
        }
    }
}

/// The first usable address of `net`: the default `bridge_ip` when only
/// `cidr` is configured.
pub(crate) fn first_host(net: Ipv4Net) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(net.network()).wrapping_add(1))
}

/// Environment variables that override config keys.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EnvOverrides {
    /// `BANGER_CATALOG_URL` (empty counts as unset).
    pub catalog_url: Option<String>,
}

impl EnvOverrides {
    /// Read the overrides from this process's environment.
    pub fn from_process() -> EnvOverrides {
        EnvOverrides {
            catalog_url: std::env::var(CATALOG_URL_ENV)
                .ok()
                .filter(|v| !v.is_empty()),
        }
    }
}

/// The config file to use: `--config` / `BANGER_CONFIG` (clap merges the two
/// into `flag`) when given, else `default`.
pub fn config_path(flag: Option<&Path>, default: &Path) -> PathBuf {
    flag.unwrap_or(default).to_path_buf()
}

/// Load `path` (a missing file means all defaults) with the process's
/// environment overrides; `home` is the owner's home, used for `~/`.
pub fn load(path: &Path, home: &Path) -> Result<Config, ConfigError> {
    load_with(path, home, &EnvOverrides::from_process())
}

/// [`load`] with explicit environment overrides.
pub fn load_with(path: &Path, home: &Path, env: &EnvOverrides) -> Result<Config, ConfigError> {
    match std::fs::read_to_string(path) {
        Ok(src) => parse_with(&src, path, home, env),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut cfg = Config::defaults(home);
            parse::apply_env(&mut cfg, env)?;
            Ok(cfg)
        }
        Err(source) => Err(ConfigError::Read {
            path: path.to_owned(),
            source,
        }),
    }
}

/// Parse config text; `origin` names it in errors and becomes
/// [`Config::source`]. Applies the process's environment overrides.
pub fn parse(src: &str, origin: &Path, home: &Path) -> Result<Config, ConfigError> {
    parse_with(src, origin, home, &EnvOverrides::from_process())
}

/// [`parse`] with explicit environment overrides.
pub fn parse_with(
    src: &str,
    origin: &Path,
    home: &Path,
    env: &EnvOverrides,
) -> Result<Config, ConfigError> {
    let mut cfg = parse::parse_document(src, origin, home)?;
    parse::apply_env(&mut cfg, env)?;
    Ok(cfg)
}
