//! The banger daemon `bangerd` as a library; `main.rs` only parses
//! arguments and calls [`daemon::run`].
//!
//! - [`daemon`]: lifecycle (layout, config, logging, lock, state, root
//!   helper, socket, signals, sd-notify).
//! - [`api`]: the HTTP/1.1 + JSON API under `/v1` (axum), its error mapping
//!   and NDJSON progress streams.
//! - [`http`]: serving the API with header-read and write-stall timeouts.
//! - [`helper`]: reaching the root helper (child process or system socket).
//! - [`network`]: the host network operations streamed by the API.
//! - [`image`]: images and kernels (`/v1/images`, `/v1/kernels`).
//! - [`vm`]: VM orchestration (`/v1/vms`), recovery and watchers.
//! - [`lock`], [`socket`], [`notify`], [`logging`]: the pieces of start-up.

pub mod api;
pub mod config_view;
pub mod daemon;
pub mod dns;
pub mod helper;
pub mod http;
pub mod image;
pub mod live_config;
pub mod lock;
pub mod logging;
pub mod network;
pub mod notify;
pub mod session;
pub mod socket;
pub mod ssh_config;
pub mod vm;

pub use daemon::{run, DaemonError, Options};
