//! `/etc/banger/install.toml`: written by `banger system install` or the
//! NixOS module, read by every banger process to find the system layout.

use serde::{Deserialize, Serialize};

/// Default location of the install metadata.
pub const INSTALL_TOML: &str = "/etc/banger/install.toml";

/// System-install metadata. Its presence switches banger to system mode.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstallMetadata {
    /// The user `bangerd` runs as and the only uid the root helper serves.
    pub owner_user: String,
    pub owner_uid: u32,
    pub owner_gid: u32,
    /// Optional group allowed on the daemon socket (mode 0660 when set).
    #[serde(default)]
    pub socket_group: Option<String>,
    pub version: String,
    pub bin_dir: String,
    pub lib_dir: String,
    pub state_dir: String,
    pub cache_dir: String,
    pub run_dir: String,
    pub root_run_dir: String,
    pub config_path: String,
}
