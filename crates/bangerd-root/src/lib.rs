//! `bangerd-root`: banger's root helper.
//!
//! A small privileged process that performs only named host-kernel
//! operations for `bangerd` (bridge, taps, NAT, DNS sockets, image builds).
//! Requests arrive as one JSON object per line on a Unix socket
//! ([`banger_wire::helper`]); the peer is checked with `SO_PEERCRED` against
//! the owner uid; every argument is validated ([`validate`]) into a typed
//! [`action::Action`] before [`ops`] touches the kernel. There is no way to
//! run an arbitrary command. See `docs/root-helper.md`.

pub mod action;
pub mod ops;
pub mod server;
pub mod system;
pub mod validate;

pub use action::{Action, Policy};
pub use server::{serve, ServeConfig, ServeError, Server};
