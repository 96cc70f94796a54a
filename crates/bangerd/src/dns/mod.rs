//! The authoritative `.vm` zone: `NAME.vm` → the VM's address.
//!
//! - [`VmZone`] answers from a [`Names`] lookup made per query (the state
//!   database in the daemon), so records follow VM create, start, stop and
//!   delete with nothing to refresh. `NAME.vm` with an address gives an A
//!   record; a VM without one (stopped) or another record type gives an empty
//!   answer; an unknown name gives NXDOMAIN; anything outside `vm.` is
//!   REFUSED (never an open resolver). Negative answers carry the zone's SOA.
//! - [`serve`] runs hickory-server on a UDP socket and a TCP listener;
//!   [`sockets`] gets those, bound to the bridge address port 53, from the
//!   root helper (descriptors passed with `SCM_RIGHTS`), so bangerd itself
//!   never needs privileges. See docs/dns-routing.md.
//! - [`ensure`] starts the server once the bridge exists and asks the helper
//!   to route `.vm` through systemd-resolved; the running server is held in
//!   the daemon context (`Daemon::dns`), [`stop`] drops it.
//! - [`server`]: the zone and the server, which know nothing of the daemon.

pub mod server;
pub mod sockets;

use std::sync::Arc;

use crate::context::Daemon;

pub use server::{
    serve, DnsError, Entry, Names, Running, Verdict, VmZone, RECORD_TTL, TCP_TIMEOUT,
};

/// The zone served by the daemon: VM names from the state database.
pub fn daemon_zone(state: &Arc<Daemon>) -> VmZone {
    let state = Arc::downgrade(state);
    VmZone::new(Arc::new(move |name: &str| {
        let Some(state) = state.upgrade() else {
            return Entry::Missing;
        };
        let db = state.db();
        match db.get_vm_by_name(name) {
            Ok(Some(vm)) => Entry::Vm(vm.ip),
            Ok(None) => Entry::Missing,
            Err(e) => {
                tracing::warn!(vm = name, "DNS lookup failed: {e}");
                Entry::Missing
            }
        }
    }))
}

/// Start serving `.vm` on the bridge address unless already serving, and
/// route `.vm` through systemd-resolved. Call after the bridge exists.
/// Failures are logged: VMs work without names.
pub async fn ensure(state: &Arc<Daemon>) {
    let mut running = state.dns.lock().await;
    if running.is_some() {
        return;
    }
    match start(state).await {
        Ok(r) => *running = Some(r),
        Err(e) => tracing::warn!("the .vm DNS server is not running: {e}"),
    }
}

/// [`ensure`] when the bridge already exists (a daemon restarted beside
/// running VMs); otherwise the first boot or `network setup` starts it.
pub async fn ensure_if_bridge(state: &Arc<Daemon>) {
    let bridge = std::path::Path::new("/sys/class/net").join(&state.net.bridge);
    if bridge.exists() && state.helper.describe().is_some() {
        ensure(state).await;
    }
}

/// Stop serving (the bridge and its address are gone); the next [`ensure`]
/// binds again and re-wires systemd-resolved for the new link.
pub async fn stop(state: &Daemon) {
    if state.dns.lock().await.take().is_some() {
        tracing::info!("stopped serving the .vm zone");
    }
}

async fn start(state: &Arc<Daemon>) -> Result<Running, DnsError> {
    let address = state.net.address();
    let ip = address.addr();
    let (udp, tcp) = sockets::from_helper(&state.helper, &address.to_string()).await?;
    let running = serve(daemon_zone(state), udp, tcp)?;
    tracing::info!(%ip, "serving the .vm zone on {ip}:53");
    let wire = banger_wire::helper::HelperRequest::ResolvedLink {
        bridge: state.net.bridge.clone(),
        address: address.to_string(),
    };
    match state.helper.request(&wire).await {
        Ok(banger_wire::helper::HelperResponse::Done { changed: true }) => {
            tracing::info!(bridge = %state.net.bridge, "systemd-resolved routes .vm to the bridge")
        }
        Ok(_) => tracing::info!(
            "systemd-resolved is not running: route .vm to {ip} yourself (docs/dns-routing.md)"
        ),
        Err(e) => tracing::warn!("cannot route .vm through systemd-resolved: {e}"),
    }
    Ok(running)
}
