//! The host side of the root helper's protocol (`banger_wire::helper`):
//! one JSON object per line on a Unix socket.
//!
//! [`HelperClient`] is what `bangerd` (and `bangerd-root request`) use to
//! send requests; [`framing`] is the bounded line reader both ends share,
//! so `bangerd-root`'s server depends on this crate too. It lives outside
//! `bangerd-root` so that the daemon links neither netlink, nftables nor the
//! image builder just to talk to the helper (docs/ARCHITECTURE.md,
//! "Dependency closures").

pub mod client;
pub mod framing;

pub use client::{ClientError, HelperClient};
