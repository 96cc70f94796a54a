//! Wire types shared by every banger process.
//!
//! - [`api`]: the CLI ↔ `bangerd` HTTP/JSON API (`/v1/...`), its error body and
//!   the NDJSON progress stream used by long operations.
//! - [`helper`]: the `bangerd` ↔ `bangerd-root` typed request enum.
//! - [`guest`]: the per-VM config drive contents and the guest agent protocol.
//! - [`image`]: bodies of the `/v1/images` and `/v1/kernels` routes.
//! - [`install`]: `/etc/banger/install.toml`, the system-install metadata.
//! - [`units`]: byte sizes as written (`16G`) and shown (`1.5 GiB`).
//! - [`vm`]: bodies of the `/v1/vms` routes.
//! - [`vmm`]: backend, clone strategy and MAC types every process shares.
//!
//! Everything here is plain data: no I/O, so both sides of every socket agree
//! on the exact shapes and the parse layer can be tested without hardware.

pub mod api;
pub mod guest;
pub mod helper;
pub mod image;
pub mod install;
pub mod units;
pub mod vm;
pub mod vmm;

/// The banger version every binary reports (workspace version).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
