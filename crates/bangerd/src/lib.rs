//! The banger daemon `bangerd` as a library; `main.rs` only parses
//! arguments and calls [`daemon::run`].
//!
//! Layers, each importing only the ones above it in this list (checked by
//! `tests/module_graph.rs`):
//!
//! - start-up pieces and leaves: [`lock`], [`socket`], [`notify`],
//!   [`logging`], [`config_view`], [`live_config`], [`helper`], [`events`]
//!   (progress of long operations).
//! - [`context`]: the daemon context ([`context::Daemon`]) every operation
//!   takes, with the state it holds (`vm::manager`, `dns::server`).
//! - the domain: [`vm`] (orchestration, recovery, watchers), [`image`]
//!   (images and kernels), [`dns`] (the `.vm` zone), [`network`] (host
//!   network setup through the root helper), [`ssh_config`].
//! - the HTTP layer: [`api`] (the `/v1` router, its error mapping and
//!   NDJSON streams), `vm::api`, `image::api`, and [`http`] (serving with
//!   header-read and write-stall timeouts).
//! - [`daemon`]: lifecycle (layout, config, logging, lock, state, root
//!   helper, socket, signals, sd-notify), wiring all of the above.

pub mod api;
pub mod config_view;
pub mod context;
pub mod daemon;
pub mod dns;
pub mod events;
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
pub mod warm;

pub use daemon::{run, DaemonError, Options};

// In the crate root, not in `vm` or `image`, so both error mappings use it
// without importing each other (tests/module_graph.rs).
/// A record that exists or is in another state is a conflict; the rest of
/// the database's failures are its own code.
pub(crate) fn state_code(e: &banger_state::StateError) -> banger_wire::api::ErrorCode {
    use banger_state::StateError as S;
    match e {
        S::NotFound { .. } => banger_wire::api::ErrorCode::NotFound,
        // Every address is leased: stop or delete a VM, or widen the range.
        S::AlreadyExists { .. }
        | S::WrongState { .. }
        | S::InUse { .. }
        | S::LeasesExhausted { .. } => banger_wire::api::ErrorCode::Conflict,
        S::Io { .. }
        | S::Open { .. }
        | S::Corrupt { .. }
        | S::NewerSchema { .. }
        | S::Migration { .. }
        | S::WalUnavailable { .. }
        | S::Query { .. } => banger_wire::api::ErrorCode::State,
    }
}
