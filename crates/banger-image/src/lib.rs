//! Images and kernels for banger VMs.
//!
//! - [`manifest`] and [`bundle`]: the versioned bundle format (tar + zstd
//!   holding `manifest.json` and the artifacts), packed reproducibly and
//!   unpacked with every artifact's sha256 verified.
//! - [`catalog`]: the catalog compiled into banger (`images/catalog.toml`).
//! - [`store`]: installed bundles under the state dir, with per-name locks.
//! - `fetch`: downloads that resume after a dropped connection.
//! - `pull`: download + verify + unpack + install, streaming.
//! - [`build`]: reproducible local builds from the recipes in `images/`.
//! - [`transfer`]: export archives and import (archive or single bundle).
//! - [`validate`]: checks for host-side artifacts (ext4 magic, ELF + PVH note).
//!
//! `fetch`, `pull` and `transfer::import_url` are the network side, behind
//! the `pull` feature (on by default; the root helper turns it off).
//!
//! See docs/image-catalog.md and docs/kernel-catalog.md.

pub mod build;
pub mod bundle;
pub mod bzimage;
pub mod catalog;
pub mod cpio;
pub mod digest;
#[cfg(feature = "pull")]
pub mod fetch;
pub mod manifest;
pub mod progress;
#[cfg(feature = "pull")]
pub mod pull;
pub mod recipe;
pub mod store;
pub mod transfer;
pub mod validate;

pub use manifest::{Kind, Manifest};
pub use progress::{Phase, Progress, ProgressFn};
