//! The parse layer: a wire [`HelperRequest`] becomes a typed [`Action`] whose
//! every argument has been validated against the helper's [`Policy`]. Nothing
//! here touches the host, so it is tested without privileges.

use std::path::PathBuf;

use banger_wire::helper::{BundleKind, HelperRequest};
use ipnet::Ipv4Net;

use crate::ops::build::BuildPaths;
use crate::validate::{self, Fence, IfaceName, ValidateError};

/// What the helper was started with: whom it serves and what it may touch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// The only uid whose requests are served; taps and built bundles go to it.
    pub owner_uid: u32,
    /// The owner's group for built bundles; `None`: its primary group.
    pub owner_gid: Option<u32>,
    /// The configured guest range; bridge addresses and NAT CIDRs must lie in it.
    pub cidr: Ipv4Net,
    /// banger's own state/cache/run directories; paths must resolve under one.
    pub allowed_dirs: Vec<PathBuf>,
    /// Where [`HelperRequest::BuildBundle`] builds and installs; `None`
    /// refuses builds.
    pub build: Option<BuildPaths>,
}

/// A validated operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// See [`HelperRequest::Ping`].
    Ping,
    /// See [`HelperRequest::EnsureBridge`].
    EnsureBridge { name: IfaceName, address: Ipv4Net },
    /// See [`HelperRequest::CreateTap`].
    CreateTap { name: IfaceName, bridge: IfaceName },
    /// See [`HelperRequest::DeleteTap`].
    DeleteTap { name: IfaceName },
    /// See [`HelperRequest::EnsureNat`].
    EnsureNat {
        bridge: IfaceName,
        cidr: Ipv4Net,
        address: Ipv4Net,
        fence: Fence,
    },
    /// See [`HelperRequest::RemoveNat`].
    RemoveNat,
    /// See [`HelperRequest::TeardownAll`].
    TeardownAll { bridge: IfaceName },
    /// See [`HelperRequest::BuildBundle`]; `name` has a recipe name's shape
    /// (the builder checks it is an embedded recipe).
    BuildBundle { kind: BundleKind, name: String },
    /// See [`HelperRequest::BindDns`].
    BindDns { address: Ipv4Net },
    /// See [`HelperRequest::ResolvedLink`].
    ResolvedLink { bridge: IfaceName, address: Ipv4Net },
}

impl Action {
    /// Validate every argument of `req` against `policy`.
    pub fn parse(req: HelperRequest, policy: &Policy) -> Result<Action, ValidateError> {
        Ok(match req {
            HelperRequest::Ping => Action::Ping,
            HelperRequest::EnsureBridge { name, address } => Action::EnsureBridge {
                name: IfaceName::parse(&name)?,
                address: validate::bridge_address(&address, policy.cidr)?,
            },
            HelperRequest::CreateTap { name, bridge } => {
                let name = IfaceName::parse(&name)?;
                let bridge = IfaceName::parse(&bridge)?;
                if name == bridge {
                    return Err(ValidateError::Conflicting(format!(
                        "tap and bridge are both named {name:?}"
                    )));
                }
                Action::CreateTap { name, bridge }
            }
            HelperRequest::DeleteTap { name } => Action::DeleteTap {
                name: IfaceName::parse(&name)?,
            },
            HelperRequest::EnsureNat {
                bridge,
                cidr,
                address,
                fence,
            } => Action::EnsureNat {
                bridge: IfaceName::parse(&bridge)?,
                cidr: validate::nat_cidr(&cidr, policy.cidr)?,
                address: validate::bridge_address(&address, policy.cidr)?,
                fence: validate::fence(&fence)?,
            },
            HelperRequest::RemoveNat => Action::RemoveNat,
            HelperRequest::TeardownAll { bridge } => Action::TeardownAll {
                bridge: IfaceName::parse(&bridge)?,
            },
            HelperRequest::BuildBundle { kind, name } => Action::BuildBundle {
                name: validate::recipe_name(kind, &name)?,
                kind,
            },
            HelperRequest::BindDns { address } => Action::BindDns {
                address: validate::bridge_address(&address, policy.cidr)?,
            },
            HelperRequest::ResolvedLink { bridge, address } => Action::ResolvedLink {
                bridge: IfaceName::parse(&bridge)?,
                address: validate::bridge_address(&address, policy.cidr)?,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn policy(dir: &Path) -> Policy {
        Policy {
            owner_uid: 1000,
            owner_gid: None,
            cidr: "172.16.0.0/24".parse().unwrap(),
            allowed_dirs: vec![dir.to_owned()],
            build: None,
        }
    }

    #[test]
    fn valid_requests_become_typed_actions() {
        let tmp = tempfile::tempdir().unwrap();
        let p = policy(tmp.path());
        let a = Action::parse(
            HelperRequest::EnsureBridge {
                name: "banger0".into(),
                address: "172.16.0.1/24".into(),
            },
            &p,
        )
        .unwrap();
        assert_eq!(
            a,
            Action::EnsureBridge {
                name: IfaceName::parse("banger0").unwrap(),
                address: "172.16.0.1/24".parse().unwrap()
            }
        );
        assert_eq!(
            Action::parse(HelperRequest::RemoveNat, &p).unwrap(),
            Action::RemoveNat
        );
        assert_eq!(
            Action::parse(
                HelperRequest::BuildBundle {
                    kind: BundleKind::Kernel,
                    name: "generic-6.12".into()
                },
                &p
            )
            .unwrap(),
            Action::BuildBundle {
                kind: BundleKind::Kernel,
                name: "generic-6.12".into()
            }
        );
    }

    #[test]
    fn each_argument_is_validated() {
        let tmp = tempfile::tempdir().unwrap();
        let p = policy(tmp.path());
        let cases = [
            (
                HelperRequest::CreateTap {
                    name: "banger-t0".into(),
                    bridge: "br0".into(),
                },
                "interface name \"br0\"",
            ),
            (
                HelperRequest::CreateTap {
                    name: "banger0".into(),
                    bridge: "banger0".into(),
                },
                "both named",
            ),
            (
                HelperRequest::DeleteTap {
                    name: "eth0".into(),
                },
                "interface name \"eth0\"",
            ),
            (
                HelperRequest::EnsureNat {
                    bridge: "banger0".into(),
                    cidr: "0.0.0.0/0".into(),
                    address: "172.16.0.1/24".into(),
                    fence: Default::default(),
                },
                "outside the configured range",
            ),
            (
                HelperRequest::EnsureNat {
                    bridge: "banger0".into(),
                    cidr: "172.16.0.0/24".into(),
                    address: "172.16.0.1/24".into(),
                    fence: banger_wire::helper::GuestFence {
                        deny_destinations: vec!["192.168.1.0/16".into()],
                        ..Default::default()
                    },
                },
                "guest fence: deny_destinations: \"192.168.1.0/16\" has host bits set",
            ),
            (
                HelperRequest::EnsureBridge {
                    name: "banger0".into(),
                    address: "192.168.1.1/24".into(),
                },
                "outside the configured range",
            ),
            (
                HelperRequest::TeardownAll {
                    bridge: "lo".into(),
                },
                "interface name \"lo\"",
            ),
            (
                HelperRequest::BuildBundle {
                    kind: BundleKind::Image,
                    name: "../image/debian-bookworm".into(),
                },
                "image recipe name \"../image/debian-bookworm\" is invalid",
            ),
            (
                HelperRequest::BuildBundle {
                    kind: BundleKind::Kernel,
                    name: "/etc/passwd".into(),
                },
                "kernel recipe name \"/etc/passwd\" is invalid",
            ),
            (
                HelperRequest::BuildBundle {
                    kind: BundleKind::Image,
                    name: "--help".into(),
                },
                "must start with a letter or digit",
            ),
            (
                HelperRequest::BuildBundle {
                    kind: BundleKind::Image,
                    name: "debian..bookworm".into(),
                },
                "must not contain",
            ),
            (
                HelperRequest::BuildBundle {
                    kind: BundleKind::Kernel,
                    name: "Generic 6.12".into(),
                },
                "only lowercase ASCII letters",
            ),
        ];
        for (req, needle) in cases {
            let msg = Action::parse(req.clone(), &p).unwrap_err().to_string();
            assert!(msg.contains(needle), "{req:?}: {msg}");
        }
    }
}
