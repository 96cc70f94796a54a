//! Host network setup and teardown through the root helper: the bridge with
//! its address and banger's NAT table. Each step streams a progress event.

use banger_wire::api::{ApiError, ErrorCode, NetworkReport, NetworkSetupRequest};
use banger_wire::helper::{GuestFence, HelperRequest, HelperResponse};

use crate::api::EventSink;
use crate::helper::RootHelper;

/// The network part of the config, in the helper's wire format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetSettings {
    /// `bridge_name`.
    pub bridge: String,
    /// `bridge_ip` with the prefix length of `cidr`, e.g. `172.16.0.1/24`.
    pub address: String,
    /// `cidr`, e.g. `172.16.0.0/24`.
    pub cidr: String,
    /// The `[network]` table: what guests may reach beyond NAT and DNS.
    pub fence: GuestFence,
}

impl NetSettings {
    /// The network part of `config`.
    pub fn from_config(config: &banger_config::Config) -> NetSettings {
        let net = &config.network;
        NetSettings {
            bridge: config.bridge_name.value.clone(),
            address: format!(
                "{}/{}",
                config.bridge_ip.value,
                config.cidr.value.prefix_len()
            ),
            cidr: config.cidr.value.to_string(),
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

    /// The helper request that sets up NAT and the guest fence.
    pub fn ensure_nat(&self) -> HelperRequest {
        HelperRequest::EnsureNat {
            bridge: self.bridge.clone(),
            cidr: self.cidr.clone(),
            address: self.address.clone(),
            fence: self.fence.clone(),
        }
    }
}

/// Ensure the bridge (and NAT unless `req.nat` is false).
pub async fn setup(
    helper: &RootHelper,
    net: &NetSettings,
    req: &NetworkSetupRequest,
    sink: &EventSink,
) -> Result<NetworkReport, ApiError> {
    sink.progress("helper", "checking the root helper").await;
    ping(helper).await?;
    sink.progress(
        "bridge",
        format!(
            "ensuring bridge {} with address {}",
            net.bridge, net.address
        ),
    )
    .await;
    let bridge_changed = done(
        helper
            .request(&HelperRequest::EnsureBridge {
                name: net.bridge.clone(),
                address: net.address.clone(),
            })
            .await?,
    )?;
    sink.progress(
        "bridge",
        outcome(bridge_changed, &format!("bridge {}", net.bridge)),
    )
    .await;
    let mut nat_changed = false;
    if req.nat {
        sink.progress(
            "nat",
            format!("ensuring NAT for {} leaving through other links", net.cidr),
        )
        .await;
        nat_changed = done(helper.request(&net.ensure_nat()).await?)?;
        sink.progress("nat", outcome(nat_changed, "NAT rules"))
            .await;
    }
    Ok(NetworkReport {
        bridge: net.bridge.clone(),
        address: net.address.clone(),
        cidr: net.cidr.clone(),
        nat: req.nat,
        changed: bridge_changed || nat_changed,
    })
}

/// Remove everything banger created on the host network: taps, the bridge and
/// the NAT table.
pub async fn teardown(
    helper: &RootHelper,
    net: &NetSettings,
    sink: &EventSink,
) -> Result<NetworkReport, ApiError> {
    sink.progress("helper", "checking the root helper").await;
    ping(helper).await?;
    sink.progress(
        "teardown",
        format!("removing taps, bridge {} and the NAT table", net.bridge),
    )
    .await;
    let changed = done(
        helper
            .request(&HelperRequest::TeardownAll {
                bridge: net.bridge.clone(),
            })
            .await?,
    )?;
    crate::dns::stop().await;
    let message = if changed {
        "removed"
    } else {
        "nothing to remove"
    };
    sink.progress("teardown", message).await;
    Ok(NetworkReport {
        bridge: net.bridge.clone(),
        address: net.address.clone(),
        cidr: net.cidr.clone(),
        nat: false,
        changed,
    })
}

async fn ping(helper: &RootHelper) -> Result<(), ApiError> {
    match helper.request(&HelperRequest::Ping).await? {
        HelperResponse::Pong { .. } => Ok(()),
        other => Err(unexpected(&other)),
    }
}

fn done(resp: HelperResponse) -> Result<bool, ApiError> {
    match resp {
        HelperResponse::Done { changed } => Ok(changed),
        other => Err(unexpected(&other)),
    }
}

fn unexpected(resp: &HelperResponse) -> ApiError {
    ApiError {
        code: ErrorCode::HelperFailed,
        message: format!("root helper sent an unexpected answer: {resp:?}"),
    }
}

fn outcome(changed: bool, what: &str) -> String {
    if changed {
        format!("{what} set up")
    } else {
        format!("{what} already in place")
    }
}
