//! The `bangerd` → `bangerd-root` protocol.
//!
//! One JSON object per line over a Unix socket: the client writes a
//! [`HelperRequest`], the helper answers with a [`HelperReply`]. There is
//! deliberately no variant that runs an arbitrary command: every privileged
//! operation is named here and every argument is validated by the helper.

use serde::{Deserialize, Serialize};

/// A privileged operation. All variants are idempotent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum HelperRequest {
    /// Liveness and identity check.
    Ping,
    /// Create the bridge if missing, set it up and give it `address`
    /// (`IP/prefix`, inside the configured CIDR).
    EnsureBridge { name: String, address: String },
    /// Create a persistent tap owned by the owner uid and attach it to `bridge`.
    CreateTap { name: String, bridge: String },
    /// Delete a tap banger created.
    DeleteTap { name: String },
    /// Masquerade `cidr` leaving through any interface but `bridge` and fence
    /// the guests in, in banger's own nftables tables: from `bridge` the host
    /// accepts only DNS on `address` (the bridge's `IP/prefix`, as for
    /// `EnsureBridge`) plus what `fence` opens, guests cannot reach each
    /// other, link-local addresses nor `fence.deny_destinations`.
    EnsureNat {
        bridge: String,
        cidr: String,
        address: String,
        #[serde(default)]
        fence: GuestFence,
    },
    /// Drop banger's nftables table.
    RemoveNat,
    /// Remove everything banger created: taps with banger's prefix, the
    /// bridge, and the nftables table.
    TeardownAll { bridge: String },
    /// Build the embedded recipe `name` of `kind` as root (mmdebstrap needs
    /// it) and install the bundle into the owner's store as the owner.
    /// Answered with [`HelperResponse::Built`] when the build is done.
    BuildBundle { kind: BundleKind, name: String },
    /// Bind a UDP socket and a TCP listener on port 53 of `address` (the
    /// bridge's `IP/prefix`, as for `EnsureBridge`) for bangerd's `.vm`
    /// DNS server, and pass them to the caller. Answered with
    /// [`HelperResponse::DnsSockets`], whose line carries the two descriptors
    /// as `SCM_RIGHTS` ancillary data (UDP first).
    BindDns { address: String },
    /// On systemd-resolved hosts, send `.vm` queries to `address` through
    /// link `bridge` (per-link DNS server, routing-only domain `~vm`, not a
    /// default route; `address` is the bridge's `IP/prefix`). `changed` is
    /// false when resolved is not running.
    ResolvedLink { bridge: String, address: String },
}

/// What a guest may reach beyond the default (NAT to the outside and DNS on
/// the bridge address); the config's `[network]` table. The default opens
/// nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GuestFence {
    /// TCP and UDP ports on the bridge address that guests may reach.
    pub allow_host_ports: Vec<u16>,
    /// Let guests reach each other (on the bridge and through the host).
    pub allow_guest_to_guest: bool,
    /// Let guests reach 169.254.0.0/16 (cloud metadata services live there).
    pub allow_link_local: bool,
    /// IPv4 networks (`a.b.c.d/len`) guests must not reach through NAT, e.g.
    /// the LAN.
    pub deny_destinations: Vec<String>,
}

/// What a bundle is: what a [`HelperRequest::BuildBundle`] builds, what
/// banger-image stores (serialized `"image"` / `"kernel"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BundleKind {
    /// A root filesystem image (`images/image/<name>.toml`).
    Image,
    /// A kernel (`images/kernel/<name>.toml`).
    Kernel,
}

impl BundleKind {
    /// `image` or `kernel`, as in CLI commands and store directories.
    pub fn as_str(self) -> &'static str {
        match self {
            BundleKind::Image => "image",
            BundleKind::Kernel => "kernel",
        }
    }

    /// The command that builds `name` locally from its recipe.
    pub fn build_command(self, name: &str) -> String {
        format!("banger {} build {name}", self.as_str())
    }
}

impl std::fmt::Display for BundleKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl HelperRequest {
    /// Short operation name for logs and errors.
    pub fn op_name(&self) -> &'static str {
        match self {
            HelperRequest::Ping => "ping",
            HelperRequest::EnsureBridge { .. } => "ensure_bridge",
            HelperRequest::CreateTap { .. } => "create_tap",
            HelperRequest::DeleteTap { .. } => "delete_tap",
            HelperRequest::EnsureNat { .. } => "ensure_nat",
            HelperRequest::RemoveNat => "remove_nat",
            HelperRequest::TeardownAll { .. } => "teardown_all",
            HelperRequest::BuildBundle { .. } => "build_bundle",
            HelperRequest::BindDns { .. } => "bind_dns",
            HelperRequest::ResolvedLink { .. } => "resolved_link",
        }
    }
}

/// A successful answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum HelperResponse {
    /// Answer to [`HelperRequest::Ping`].
    Pong { version: String, owner_uid: u32 },
    /// The operation completed; `changed` is false when it was already done.
    Done { changed: bool },
    /// Answer to [`HelperRequest::BuildBundle`]: the bundle is installed at
    /// `path` (the store directory, owned by the owner). `cached` is true when
    /// the build cache already held a bundle of the same recipe hash.
    Built {
        path: String,
        version: String,
        recipe_hash: String,
        bundle_sha256: String,
        cached: bool,
    },
    /// Answer to [`HelperRequest::BindDns`]: the helper's descriptor numbers
    /// of the sockets sent along (informational; the receiver gets its own).
    DnsSockets { udp: i32, tcp: i32 },
}

/// Why the helper refused or failed a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HelperErrorCode {
    /// The connecting process is not the owner.
    PeerRejected,
    /// The request did not parse or an argument failed validation.
    Invalid,
    /// A netlink operation failed.
    Netlink,
    /// An nftables operation failed.
    Nftables,
    /// A file or device operation failed.
    Io,
    /// The host state does not allow the operation: a link with that name
    /// exists but is of another kind, or a required bridge is missing.
    Conflict,
}

/// Error answer of the helper.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("root helper: {message}")]
pub struct HelperError {
    pub code: HelperErrorCode,
    pub message: String,
}

/// One answer line: `{"Ok": {...}}` or `{"Err": {...}}`.
pub type HelperReply = Result<HelperResponse, HelperError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_wire_shape_is_tagged_by_op() {
        let req = HelperRequest::CreateTap {
            name: "bgtap0".into(),
            bridge: "banger0".into(),
        };
        let s = serde_json::to_string(&req).unwrap();
        assert_eq!(
            s,
            r#"{"op":"create_tap","name":"bgtap0","bridge":"banger0"}"#
        );
        assert_eq!(serde_json::from_str::<HelperRequest>(&s).unwrap(), req);
    }

    #[test]
    fn build_bundle_wire_shape() {
        let req = HelperRequest::BuildBundle {
            kind: BundleKind::Kernel,
            name: "generic-6.12".into(),
        };
        let s = serde_json::to_string(&req).unwrap();
        assert_eq!(
            s,
            r#"{"op":"build_bundle","kind":"kernel","name":"generic-6.12"}"#
        );
        assert_eq!(serde_json::from_str::<HelperRequest>(&s).unwrap(), req);
        assert!(serde_json::from_str::<HelperRequest>(
            r#"{"op":"build_bundle","kind":"rootfs","name":"x"}"#
        )
        .is_err());
    }

    #[test]
    fn unknown_ops_and_fields_are_rejected() {
        assert!(serde_json::from_str::<HelperRequest>(r#"{"op":"exec","cmd":"sh"}"#).is_err());
        assert!(serde_json::from_str::<HelperRequest>(
            r#"{"op":"delete_tap","name":"bgtap0","extra":1}"#
        )
        .is_err());
    }
}
