//! Deploying banger as two systemd units on a non-Nix host, from the same
//! hardening data the NixOS module uses.
//!
//! - [`spec`]: `nix/units.json` (compiled in) and its rendering into unit
//!   files and a tmpfiles.d snippet.
//! - [`install`]: `banger system install`, `uninstall`, `restart`.
//! - [`status`]: `banger system status`.
//! - [`owner`]: looking up the owner user (host database or staging tree).
//! - [`home`]: banger's directories in the owner's home, created as the owner.

pub mod fsutil;
pub mod home;
pub mod install;
pub mod owner;
pub mod spec;
pub mod status;
pub mod systemctl;

pub use install::{
    install, restart, uninstall, InstallError, InstallOptions, InstallReport, UninstallOptions,
    UninstallReport,
};
pub use status::{status, SystemStatus};
