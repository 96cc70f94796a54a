//! Bridge, tap and address state through rtnetlink.

use std::net::IpAddr;

use futures_util::TryStreamExt;
use ipnet::Ipv4Net;
use rtnetlink::packet_core::Nla;
use rtnetlink::packet_route::address::{AddressAttribute, AddressMessage};
use rtnetlink::packet_route::link::{
    InfoData, InfoKind, InfoTun, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::{Handle, LinkBridge, LinkMessageBuilder, LinkUnspec};

use super::{tun, OpError};
use crate::validate::{IfaceName, IFACE_PREFIX};

// From <linux/if_link.h>: attributes of IFLA_INFO_DATA for kind "tun".
const IFLA_TUN_OWNER: u16 = 1;
const IFLA_TUN_TYPE: u16 = 3;
// From <linux/if_tun.h>: IFLA_TUN_TYPE value of a tap (layer 2) device.
const TUN_TYPE_TAP: u8 = 2;

/// What the kernel says about one link.
#[derive(Debug, Clone)]
pub(super) struct Link {
    index: u32,
    name: String,
    kind: Option<InfoKind>,
    up: bool,
    master: Option<u32>,
    tap: bool,
    tun_owner: Option<u32>,
}

impl Link {
    fn from_message(msg: LinkMessage) -> Link {
        let mut link = Link {
            index: msg.header.index,
            name: String::new(),
            kind: None,
            up: msg.header.flags.contains(LinkFlags::Up),
            master: None,
            tap: false,
            tun_owner: None,
        };
        for attr in msg.attributes {
            match attr {
                LinkAttribute::IfName(name) => link.name = name,
                LinkAttribute::Controller(index) => link.master = Some(index),
                LinkAttribute::LinkInfo(infos) => {
                    for info in infos {
                        match info {
                            LinkInfo::Kind(kind) => link.kind = Some(kind),
                            LinkInfo::Data(InfoData::Tun(nlas)) => link.read_tun(&nlas),
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
        link
    }

    fn read_tun(&mut self, nlas: &[InfoTun]) {
        for nla in nlas {
            let mut value = vec![0u8; nla.value_len()];
            nla.emit_value(&mut value);
            match (nla.kind(), value.as_slice()) {
                (IFLA_TUN_OWNER, &[a, b, c, d]) => {
                    self.tun_owner = Some(u32::from_ne_bytes([a, b, c, d]))
                }
                (IFLA_TUN_TYPE, &[t]) => self.tap = t == TUN_TYPE_TAP,
                _ => {}
            }
        }
    }

    fn kind_name(&self) -> String {
        match &self.kind {
            None => "a device without a link kind".to_owned(),
            Some(InfoKind::Tun) if self.tap => "a tap".to_owned(),
            Some(InfoKind::Tun) => "a tun (layer 3) device".to_owned(),
            Some(InfoKind::Other(kind)) => format!("a {kind}"),
            Some(kind) => format!("a {}", format!("{kind:?}").to_lowercase()),
        }
    }

    fn is_bridge(&self) -> bool {
        self.kind == Some(InfoKind::Bridge)
    }

    fn is_tap(&self) -> bool {
        self.kind == Some(InfoKind::Tun) && self.tap
    }

    fn expect_bridge(&self) -> Result<(), OpError> {
        if self.is_bridge() {
            return Ok(());
        }
        Err(OpError::WrongKind {
            name: self.name.clone(),
            found: self.kind_name(),
            expected: "a bridge",
        })
    }

    fn expect_tap(&self) -> Result<(), OpError> {
        if self.is_tap() {
            return Ok(());
        }
        Err(OpError::WrongKind {
            name: self.name.clone(),
            found: self.kind_name(),
            expected: "a tap",
        })
    }
}

/// An rtnetlink connection in the helper's network namespace.
#[derive(Debug)]
pub(super) struct Net {
    handle: Handle,
}

impl Net {
    /// Open a connection; its task ends when the handle is dropped.
    pub(super) fn connect() -> Result<Net, OpError> {
        let (connection, handle, _) =
            rtnetlink::new_connection().map_err(OpError::NetlinkSocket)?;
        tokio::spawn(connection);
        Ok(Net { handle })
    }

    fn nl_err(what: &'static str, name: &str) -> impl FnOnce(rtnetlink::Error) -> OpError {
        let name = name.to_owned();
        move |source| OpError::Netlink {
            what,
            name,
            source: Box::new(source),
        }
    }

    async fn links(&self) -> Result<Vec<Link>, OpError> {
        let msgs: Vec<LinkMessage> = self
            .handle
            .link()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(Self::nl_err("list", "links"))?;
        Ok(msgs.into_iter().map(Link::from_message).collect())
    }

    // A dump instead of a by-name query: a missing name is a normal answer here,
    // not an error to pick apart.
    async fn link(&self, name: &IfaceName) -> Result<Option<Link>, OpError> {
        Ok(self
            .links()
            .await?
            .into_iter()
            .find(|l| l.name == name.as_str()))
    }

    async fn require(&self, name: &IfaceName) -> Result<Link, OpError> {
        self.link(name).await?.ok_or_else(|| OpError::Vanished {
            name: name.to_string(),
        })
    }

    async fn set_up(&self, link: &Link) -> Result<(), OpError> {
        self.handle
            .link()
            .set(LinkUnspec::new_with_index(link.index).up().build())
            .execute()
            .await
            .map_err(Self::nl_err("set up", &link.name))
    }

    async fn delete(&self, link: &Link) -> Result<(), OpError> {
        self.handle
            .link()
            .del(link.index)
            .execute()
            .await
            .map_err(Self::nl_err("delete", &link.name))
    }

    async fn ipv4_addresses(&self, link: &Link) -> Result<Vec<(AddressMessage, Ipv4Net)>, OpError> {
        let msgs: Vec<AddressMessage> = self
            .handle
            .address()
            .get()
            .set_link_index_filter(link.index)
            .execute()
            .try_collect()
            .await
            .map_err(Self::nl_err("list addresses of", &link.name))?;
        let mut out = Vec::new();
        for msg in msgs {
            if msg.header.family != AddressFamily::Inet {
                continue;
            }
            let local = msg.attributes.iter().find_map(|a| match a {
                AddressAttribute::Local(IpAddr::V4(ip)) => Some(*ip),
                _ => None,
            });
            if let Some(net) = local.and_then(|ip| Ipv4Net::new(ip, msg.header.prefix_len).ok()) {
                out.push((msg, net));
            }
        }
        Ok(out)
    }

    /// Create the bridge if missing, give it exactly `address`, set it up.
    pub(super) async fn ensure_bridge(
        &self,
        name: &IfaceName,
        address: Ipv4Net,
    ) -> Result<bool, OpError> {
        let mut changed = false;
        let bridge = match self.link(name).await? {
            Some(link) => {
                link.expect_bridge()?;
                link
            }
            None => {
                self.handle
                    .link()
                    // Not LinkBridge::new, which also sets it up: the address
                    // goes on first, as for a bridge found down.
                    .add(LinkMessageBuilder::<LinkBridge>::new(name.as_str()).build())
                    .execute()
                    .await
                    .map_err(Self::nl_err("create bridge", name.as_str()))?;
                changed = true;
                self.require(name).await?
            }
        };
        let addresses = self.ipv4_addresses(&bridge).await?;
        // Stale addresses go first: the kernel refuses a second address in the
        // same subnet with the same mask.
        for (msg, net) in &addresses {
            if *net != address {
                self.handle
                    .address()
                    .del(msg.clone())
                    .execute()
                    .await
                    .map_err(Self::nl_err("remove a stale address from", name.as_str()))?;
                changed = true;
            }
        }
        if !addresses.iter().any(|(_, net)| *net == address) {
            self.handle
                .address()
                .add(
                    bridge.index,
                    IpAddr::V4(address.addr()),
                    address.prefix_len(),
                )
                .execute()
                .await
                .map_err(Self::nl_err("add an address to", name.as_str()))?;
            changed = true;
        }
        if !bridge.up {
            self.set_up(&bridge).await?;
            changed = true;
        }
        Ok(changed)
    }

    /// Create a persistent tap owned by `owner`, enslave it to `bridge`, set it up.
    pub(super) async fn create_tap(
        &self,
        name: &IfaceName,
        bridge: &IfaceName,
        owner: u32,
    ) -> Result<bool, OpError> {
        let br = self
            .link(bridge)
            .await?
            .ok_or_else(|| OpError::MissingBridge {
                name: bridge.to_string(),
            })?;
        br.expect_bridge()?;
        let mut changed = false;
        let tap = match self.link(name).await? {
            Some(link) => {
                link.expect_tap()?;
                if link.tun_owner != Some(owner) {
                    tun::create_persistent_tap(name, owner)?;
                    changed = true;
                }
                link
            }
            None => {
                tun::create_persistent_tap(name, owner)?;
                changed = true;
                self.require(name).await?
            }
        };
        if tap.master != Some(br.index) {
            self.handle
                .link()
                .set(
                    LinkUnspec::new_with_index(tap.index)
                        .controller(br.index)
                        .build(),
                )
                .execute()
                .await
                .map_err(Self::nl_err("attach to its bridge", name.as_str()))?;
            changed = true;
        }
        if !tap.up {
            self.set_up(&tap).await?;
            changed = true;
        }
        Ok(changed)
    }

    /// Delete a tap; a missing one is already deleted.
    pub(super) async fn delete_tap(&self, name: &IfaceName) -> Result<bool, OpError> {
        let Some(tap) = self.link(name).await? else {
            return Ok(false);
        };
        tap.expect_tap()?;
        self.delete(&tap).await?;
        Ok(true)
    }

    /// Delete every tap with banger's prefix, then the bridge.
    pub(super) async fn teardown(&self, bridge: &IfaceName) -> Result<bool, OpError> {
        let links = self.links().await?;
        if let Some(br) = links.iter().find(|l| l.name == bridge.as_str()) {
            br.expect_bridge()?;
        }
        let mut changed = false;
        for link in &links {
            let ours = link.name.starts_with(IFACE_PREFIX) && IfaceName::parse(&link.name).is_ok();
            if ours && link.is_tap() {
                self.delete(link).await?;
                changed = true;
            }
        }
        if let Some(br) = links.iter().find(|l| l.name == bridge.as_str()) {
            self.delete(br).await?;
            changed = true;
        }
        Ok(changed)
    }
}
