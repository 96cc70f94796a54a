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
    #[error("netlink: cannot {op} {name}: {source}")]
    Netlink {
        op: NetlinkOp,
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
    #[error("tap {name}: {op}: {source}")]
    Tun {
        name: String,
        op: TunOp,
        #[source]
        source: std::io::Error,
    },
    /// `nft` failed or returned something unexpected.
    #[error("nftables: {op}: {}", nft::describe(source))]
    Nft {
        op: NftOp,
        // Boxed for the same reason as the netlink error.
        #[source]
        source: Box<nftables::helper::NftablesError>,
    },
    /// A file operation failed.
    #[error("cannot {op} {path}: {source}")]
    File {
        op: FileOp,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A file passed validation but must not be touched.
    #[error("refusing to touch {path}: {reason}")]
    Refused { path: PathBuf, reason: &'static str },
    /// The `.vm` DNS sockets could not be bound (something else serves port
    /// 53 on the bridge address?).
    #[error("dns: cannot {socket} {at}: {source}")]
    DnsBind {
        socket: DnsSocket,
        at: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// `resolvectl` could not be started.
    #[error("dns: cannot run resolvectl {args}: {source}")]
    ResolvectlStart {
        args: String,
        #[source]
        source: std::io::Error,
    },
    /// `resolvectl` ran and refused.
    #[error("dns: cannot run resolvectl {args}: {stderr}")]
    ResolvectlFailed {
        args: String,
        status: std::process::ExitStatus,
        stderr: String,
    },
    /// Building or installing a bundle failed.
    #[error("building {kind} {name} failed: {source}")]
    Build {
        kind: &'static str,
        name: String,
        // Boxed: a build error carries whole paths and command tails.
        #[source]
        source: Box<build::BuildFailure>,
    },
    /// The build unit answered with an error (its message already names the
    /// build). A string: it crossed a process boundary as a wire reply.
    #[error("{0}")]
    BuildUnit(String),
}

/// The netlink request that failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NetlinkOp {
    List,
    SetUp,
    Delete,
    ListAddressesOf,
    CreateBridge,
    RemoveStaleAddressFrom,
    AddAddressTo,
    AttachToBridge,
}

impl std::fmt::Display for NetlinkOp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            NetlinkOp::List => "list",
            NetlinkOp::SetUp => "set up",
            NetlinkOp::Delete => "delete",
            NetlinkOp::ListAddressesOf => "list addresses of",
            NetlinkOp::CreateBridge => "create bridge",
            NetlinkOp::RemoveStaleAddressFrom => "remove a stale address from",
            NetlinkOp::AddAddressTo => "add an address to",
            NetlinkOp::AttachToBridge => "attach to its bridge",
        })
    }
}

/// The step of making a persistent tap that failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TunOp {
    OpenDevice,
    SetIff,
    SetOwner,
    SetPersist,
}

impl std::fmt::Display for TunOp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TunOp::OpenDevice => "open /dev/net/tun",
            TunOp::SetIff => "TUNSETIFF",
            TunOp::SetOwner => "TUNSETOWNER",
            TunOp::SetPersist => "TUNSETPERSIST",
        })
    }
}

/// The `nft` call that failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NftOp {
    ListTables,
    ListTable,
    ApplyTables,
    DeleteTables,
}

impl std::fmt::Display for NftOp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            NftOp::ListTables => "list tables",
            NftOp::ListTable => "list table banger",
            NftOp::ApplyTables => "apply tables inet banger and bridge banger",
            NftOp::DeleteTables => "delete banger's tables",
        })
    }
}

/// A file step nobody acts on differently: the path and the OS error say
/// what to fix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileOp {
    Read,
    Write,
}

impl std::fmt::Display for FileOp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            FileOp::Read => "read",
            FileOp::Write => "write",
        })
    }
}

/// Which DNS socket could not be bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DnsSocket {
    Udp,
    Tcp,
}

impl std::fmt::Display for DnsSocket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DnsSocket::Udp => "bind UDP",
            DnsSocket::Tcp => "listen on TCP",
        })
    }
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
            | OpError::BuildUnit(_) => HelperErrorCode::Io,
            // Port 53 taken on the bridge address: another DNS server is
            // in the way, which the user can move.
            OpError::DnsBind { source, .. } if source.kind() == std::io::ErrorKind::AddrInUse => {
                HelperErrorCode::Conflict
            }
            OpError::DnsBind { .. }
            | OpError::ResolvectlStart { .. }
            | OpError::ResolvectlFailed { .. } => HelperErrorCode::Io,
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
                    source: Box::new(build::BuildFailure::NoStore),
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

#[cfg(test)]
mod code_tests {
    use super::*;

    fn io(kind: std::io::ErrorKind) -> std::io::Error {
        std::io::Error::from(kind)
    }

    /// Pins the classification the daemon relies on: a host in the way is
    /// a conflict, a refused path is invalid input, a failing step is I/O.
    #[test]
    fn op_errors_map_to_their_wire_codes() {
        let cases = [
            (
                OpError::WrongKind {
                    name: "bg0".into(),
                    found: "veth".into(),
                    expected: "bridge",
                },
                HelperErrorCode::Conflict,
            ),
            (
                OpError::MissingBridge { name: "bg0".into() },
                HelperErrorCode::Conflict,
            ),
            (
                OpError::Refused {
                    path: "/var/cache/banger".into(),
                    reason: "it is a symbolic link",
                },
                HelperErrorCode::Invalid,
            ),
            (
                OpError::File {
                    op: FileOp::Write,
                    path: "/x".into(),
                    source: io(std::io::ErrorKind::PermissionDenied),
                },
                HelperErrorCode::Io,
            ),
            (
                OpError::DnsBind {
                    socket: DnsSocket::Udp,
                    at: "172.16.0.1:53".parse().unwrap(),
                    source: io(std::io::ErrorKind::AddrInUse),
                },
                HelperErrorCode::Conflict,
            ),
            (
                OpError::DnsBind {
                    socket: DnsSocket::Tcp,
                    at: "172.16.0.1:53".parse().unwrap(),
                    source: io(std::io::ErrorKind::PermissionDenied),
                },
                HelperErrorCode::Io,
            ),
            (
                OpError::NetlinkSocket(io(std::io::ErrorKind::PermissionDenied)),
                HelperErrorCode::Netlink,
            ),
            (
                OpError::Build {
                    kind: "image",
                    name: "debian".into(),
                    source: Box::new(build::BuildFailure::NoStore),
                },
                HelperErrorCode::Io,
            ),
        ];
        for (err, code) in cases {
            assert_eq!(err.code(), code, "{err}");
        }
    }

    #[test]
    fn nft_failures_show_what_nft_said() {
        let err = OpError::Nft {
            op: NftOp::ApplyTables,
            source: Box::new(nftables::helper::NftablesError::NftFailed {
                program: "nft".into(),
                hint: "applying ruleset".into(),
                stdout: String::new(),
                stderr: "Error: Could not process rule: No such file or directory\n".into(),
            }),
        };
        assert_eq!(err.code(), HelperErrorCode::Nftables);
        assert_eq!(
            err.to_string(),
            "nftables: apply tables inet banger and bridge banger: Error: Could not process rule: No such file or directory"
        );
        assert!(std::error::Error::source(&err).is_some());
    }
}
