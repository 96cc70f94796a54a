//! The controller: executes validated [`Action`]s against the host kernel.
//! Every operation is idempotent and reports whether it changed anything.

pub mod build;
pub mod dns;
mod link;
mod nft;
mod tun;

use std::path::PathBuf;

use banger_wire::helper::{HelperErrorCode, HelperResponse};

use crate::action::{Action, Policy};

pub use nft::TABLE_NAME;

/// A validated operation failed on the host.
#[derive(Debug, thiserror::Error)]
pub enum OpError {
    /// The rtnetlink socket could not be opened.
    #[error("cannot open a netlink socket: {0}")]
    NetlinkSocket(#[source] std::io::Error),
    /// A netlink request failed.
    #[error("netlink: cannot {what} {name}: {source}")]
    Netlink {
        what: &'static str,
        name: String,
        // Boxed: the netlink error embeds a whole message and would bloat
        // every Result in this module.
        #[source]
        source: Box<rtnetlink::Error>,
    },
    /// A link with the requested name exists but is of another kind.
    #[error("link {name} exists but is {found}, not {expected}; refusing to touch it")]
    WrongKind {
        name: String,
        found: String,
        expected: &'static str,
    },
    /// A tap was requested on a bridge that does not exist.
    #[error("bridge {name} does not exist (run ensure_bridge first)")]
    MissingBridge { name: String },
    /// A link vanished between two steps of an operation.
    #[error("link {name} disappeared while it was being configured")]
    Vanished { name: String },
    /// A /dev/net/tun operation failed.
    #[error("tap {name}: {what}: {source}")]
    Tun {
        name: String,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// `nft` failed or returned something unexpected.
    #[error("nftables: {what}: {message}")]
    Nft { what: &'static str, message: String },
    /// A file operation failed.
    #[error("cannot {what} {path}: {source}")]
    File {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A file passed validation but must not be touched.
    #[error("refusing to touch {path}: {reason}")]
    Refused { path: PathBuf, reason: &'static str },
    /// Binding the DNS sockets or configuring systemd-resolved failed.
    #[error("dns: cannot {what}: {message}")]
    Dns { what: String, message: String },
    /// Building or installing a bundle failed.
    #[error("building {kind} {name} failed: {message}")]
    Build {
        kind: &'static str,
        name: String,
        message: String,
    },
    /// The build unit answered with an error (its message already names the
    /// build).
    #[error("{0}")]
    BuildUnit(String),
    /// A thread could not take on the owner's credentials.
    #[error("cannot {what} (uid {uid}): {source}")]
    Credentials {
        what: &'static str,
        uid: u32,
        #[source]
        source: std::io::Error,
    },
}

impl OpError {
    /// The wire error code for this failure.
    pub fn code(&self) -> HelperErrorCode {
        match self {
            OpError::NetlinkSocket(_) | OpError::Netlink { .. } => HelperErrorCode::Netlink,
            OpError::WrongKind { .. }
            | OpError::MissingBridge { .. }
            | OpError::Vanished { .. } => HelperErrorCode::Conflict,
            OpError::Tun { .. }
            | OpError::File { .. }
            | OpError::Build { .. }
            | OpError::BuildUnit(_)
            | OpError::Credentials { .. } => HelperErrorCode::Io,
            OpError::Dns { .. } => HelperErrorCode::Io,
            OpError::Nft { .. } => HelperErrorCode::Nftables,
            OpError::Refused { .. } => HelperErrorCode::Invalid,
        }
    }
}

/// The owner's primary group (from passwd), or the uid when it has none.
fn owner_primary_gid(uid: u32) -> u32 {
    nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
        .ok()
        .flatten()
        .map_or(uid, |u| u.gid.as_raw())
}

/// Execute one validated action.
pub async fn execute(action: &Action, policy: &Policy) -> Result<HelperResponse, OpError> {
    let changed = match action {
        Action::Ping => {
            return Ok(HelperResponse::Pong {
                version: banger_wire::VERSION.to_owned(),
                owner_uid: policy.owner_uid,
            })
        }
        Action::EnsureBridge { name, address } => {
            link::Net::connect()?.ensure_bridge(name, *address).await?
        }
        Action::CreateTap { name, bridge } => {
            link::Net::connect()?
                .create_tap(name, bridge, policy.owner_uid)
                .await?
        }
        Action::DeleteTap { name } => link::Net::connect()?.delete_tap(name).await?,
        Action::EnsureNat {
            bridge,
            cidr,
            address,
            fence,
        } => {
            let forward = nft::enable_ip_forward()?;
            nft::ensure_nat(bridge, *cidr, address.addr(), fence).await? | forward
        }
        Action::RemoveNat => nft::remove_nat().await?,
        Action::TeardownAll { bridge } => {
            let links = link::Net::connect()?.teardown(bridge).await?;
            nft::remove_nat().await? | links
        }
        Action::BuildBundle { kind, name } => {
            let Some(paths) = &policy.build else {
                return Err(OpError::Build {
                    kind: kind.as_str(),
                    name: name.clone(),
                    message: "this helper was started without a store to build into".into(),
                });
            };
            let gid = policy
                .owner_gid
                .unwrap_or_else(|| owner_primary_gid(policy.owner_uid));
            return build::build_bundle(*kind, name, paths, policy.owner_uid, gid).await;
        }
        Action::BindDns { address } => return dns::bind(address.addr()),
        Action::ResolvedLink { bridge, address } => {
            dns::resolved_link(bridge, address.addr()).await?
        }
    };
    Ok(HelperResponse::Done { changed })
}
