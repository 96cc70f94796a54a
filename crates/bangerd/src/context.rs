//! The daemon context: what every operation of the running daemon shares
//! (paths, settings, the state database, the root helper, VM bookkeeping,
//! the `.vm` DNS server). Domain modules (`vm`, `image`, `dns`, `network`,
//! `ssh_config`) take a [`Daemon`]; the HTTP layer (`api`, `vm::api`,
//! `image::api`) holds one and calls into the domain. The context imports
//! no operation, so nothing here leads back to its users.

use std::net::Ipv4Addr;
use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

use banger_host::paths::Layout;
use banger_state::StateDb;
use banger_wire::helper::{GuestFence, HelperRequest};
use ipnet::Ipv4Net;
use tokio::sync::watch;

use crate::helper::RootHelper;
use crate::vm::manager::VmManager;

/// Everything the daemon's operations share, built once at start-up.
#[derive(Debug)]
pub struct Daemon {
    /// Paths of this install.
    pub layout: Layout,
    /// Bridge and NAT settings from the config.
    pub net: NetSettings,
    /// The state database (opened and migrated at start).
    pub db: Mutex<StateDb>,
    /// Schema version of `db`, cached for `/v1/status`.
    pub schema_version: u32,
    /// The VMM backend the config resolves to, and why.
    pub backend: banger_host::probe::BackendChoice,
    /// How privileged operations are reached.
    pub helper: RootHelper,
    /// When the daemon started (for uptime).
    pub started: Instant,
    /// Set to true to begin a graceful shutdown.
    pub shutdown: watch::Sender<bool>,
    /// Serializes host network changes so two requests never interleave.
    pub network_lock: tokio::sync::Mutex<()>,
    /// VM settings, the VMM launcher and per-VM locks.
    pub vms: VmManager,
    /// The `.vm` DNS server while it serves (see [`crate::dns::ensure`]).
    pub dns: tokio::sync::Mutex<Option<crate::dns::server::Running>>,
}

impl Daemon {
    /// The state database, even after a panic poisoned its lock (each
    /// statement is a transaction of its own; nothing is left half-done).
    pub fn db(&self) -> MutexGuard<'_, StateDb> {
        self.db.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The network part of the config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetSettings {
    /// `bridge_name`.
    pub bridge: String,
    /// `bridge_ip`.
    pub bridge_ip: Ipv4Addr,
    /// `cidr`, e.g. `172.16.0.0/24`.
    pub cidr: Ipv4Net,
    /// The `[network]` table: what guests may reach beyond NAT and DNS.
    pub fence: GuestFence,
}

impl NetSettings {
    /// The network part of `config`.
    pub fn from_config(config: &banger_config::Config) -> NetSettings {
        let net = &config.network;
        NetSettings {
            bridge: config.bridge_name.value.clone(),
            bridge_ip: config.bridge_ip.value,
            cidr: config.cidr.value,
            fence: GuestFence {
                allow_host_ports: net.allow_host_ports.value.clone(),
                allow_guest_to_guest: net.allow_guest_to_guest.value,
                allow_link_local: net.allow_link_local.value,
                deny_destinations: net
                    .deny_destinations
                    .value
                    .iter()
                    .map(ToString::to_string)
                    .collect(),
            },
        }
    }

    /// The bridge's address with the prefix length of `cidr`, e.g.
    /// `172.16.0.1/24`.
    pub fn address(&self) -> Ipv4Net {
        Ipv4Net::new_assert(self.bridge_ip, self.cidr.prefix_len())
    }

    /// The helper request that sets up NAT and the guest fence.
    pub fn ensure_nat(&self) -> HelperRequest {
        HelperRequest::EnsureNat {
            bridge: self.bridge.clone(),
            cidr: self.cidr.to_string(),
            address: self.address().to_string(),
            fence: self.fence.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bridge_address_takes_the_prefix_of_the_network() {
        let mut config = banger_config::Config::defaults(std::path::Path::new("/home/u"));
        config.bridge_ip.value = Ipv4Addr::new(10, 9, 8, 1);
        config.cidr.value = "10.9.8.0/22".parse().unwrap();
        let net = NetSettings::from_config(&config);
        assert_eq!(net.address().to_string(), "10.9.8.1/22");
        match net.ensure_nat() {
            HelperRequest::EnsureNat { cidr, address, .. } => {
                assert_eq!(
                    (cidr.as_str(), address.as_str()),
                    ("10.9.8.0/22", "10.9.8.1/22")
                );
            }
            other => panic!("{other:?}"),
        }
    }
}
