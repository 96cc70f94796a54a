//! Host network setup and teardown through the root helper: the bridge with
//! its address and banger's NAT table. Each step streams a progress event.

use banger_wire::api::{ApiError, ErrorCode, NetworkReport, NetworkSetupRequest};
use banger_wire::helper::{HelperRequest, HelperResponse};

use crate::context::{Daemon, NetSettings};
use crate::events::EventSink;
use crate::helper::RootHelper;

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
            net.bridge,
            net.address()
        ),
    )
    .await;
    let bridge_changed = done(
        helper
            .request(&HelperRequest::EnsureBridge {
                name: net.bridge.clone(),
                address: net.address().to_string(),
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
        address: net.address().to_string(),
        cidr: net.cidr.to_string(),
        nat: req.nat,
        changed: bridge_changed || nat_changed,
    })
}

/// Remove everything banger created on the host network: taps, the bridge and
/// the NAT table.
pub async fn teardown(state: &Daemon, sink: &EventSink) -> Result<NetworkReport, ApiError> {
    let (helper, net) = (&state.helper, &state.net);
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
    crate::dns::stop(state).await;
    let message = if changed {
        "removed"
    } else {
        "nothing to remove"
    };
    sink.progress("teardown", message).await;
    Ok(NetworkReport {
        bridge: net.bridge.clone(),
        address: net.address().to_string(),
        cidr: net.cidr.to_string(),
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
