//! `banger network setup|teardown`: the host side of guest networking (the
//! bridge, banger's taps and its nftables table), made and removed through
//! the daemon and its root helper. VM starts set the network up by
//! themselves; these commands are for preparing a host and for removing
//! everything banger put on it.

use std::process::ExitCode;

use banger_host::paths::Layout;
use banger_wire::api::{NetworkReport, NetworkSetupRequest, NetworkTeardownRequest};
use banger_wire::routes::{self, Route};
use clap::Subcommand;

use crate::cli::GlobalArgs;
use crate::client::{self, Client};

/// `banger network ...`
#[derive(Debug, Subcommand)]
#[command(after_help = "Examples:
  banger network setup              bridge, address and NAT for the guest range
  banger network teardown           remove the bridge, banger's taps and its nftables table
  banger network teardown --force   even while VMs run (they lose their network)")]
pub enum NetworkCommand {
    /// Create the bridge with its address and the NAT rules for the guest
    /// range (what the first VM start does anyway). Idempotent.
    Setup {
        /// Only the bridge and its address, no NAT or forwarding rules.
        #[arg(long)]
        no_nat: bool,
    },
    /// Remove the bridge, every banger tap and banger's nftables table.
    /// Refused while VMs run unless --force. Idempotent.
    Teardown {
        /// Tear down even while VMs run (they lose their network).
        #[arg(long)]
        force: bool,
    },
}

/// Run a `banger network` subcommand.
pub fn run(global: &GlobalArgs, cmd: NetworkCommand) -> anyhow::Result<ExitCode> {
    let runtime = crate::cli::runtime()?;
    let layout = Layout::detect()?;
    runtime.block_on(async {
        let client = Client::connect(&layout, global.config.as_deref()).await?;
        let line = match cmd {
            NetworkCommand::Setup { no_nat } => {
                let r = stream(
                    &client,
                    routes::NETWORK_SETUP,
                    &NetworkSetupRequest { nat: !no_nat },
                )
                .await?;
                setup_line(&r)
            }
            NetworkCommand::Teardown { force } => teardown_line(&teardown(&client, force).await?),
        };
        println!("{line}");
        Ok(ExitCode::SUCCESS)
    })
}

/// Tear the host network down through `client`'s daemon.
pub async fn teardown(client: &Client, force: bool) -> anyhow::Result<NetworkReport> {
    stream(
        client,
        routes::NETWORK_TEARDOWN,
        &NetworkTeardownRequest { force },
    )
    .await
}

async fn stream<B: serde::Serialize>(
    client: &Client,
    route: Route<B, NetworkReport>,
    body: &B,
) -> anyhow::Result<NetworkReport> {
    let mut render = client::stderr_renderer();
    Ok(client
        .call_stream(&route.target(), body, render.as_mut())
        .await?)
}

/// What `banger network setup` prints.
pub fn setup_line(r: &NetworkReport) -> String {
    format!(
        "bridge {} at {} for guests in {}, NAT {}{}",
        r.bridge,
        r.address,
        r.cidr,
        if r.nat { "on" } else { "off" },
        if r.changed { "" } else { " (already so)" }
    )
}

/// What `banger network teardown` prints.
pub fn teardown_line(r: &NetworkReport) -> String {
    if r.changed {
        format!(
            "removed bridge {}, banger's taps and its nftables table",
            r.bridge
        )
    } else {
        format!(
            "nothing to remove (no bridge {}, taps or banger table)",
            r.bridge
        )
    }
}

/// Before `banger system uninstall` removes the units (run as root), have
/// the running system daemon remove the bridge,
/// banger's taps and its nftables table (VMs are killed with the units
/// anyway); nothing of banger's is then left in the host network. A daemon
/// that is not running or fails leaves a warning naming the manual fix.
pub fn remove_before_uninstall() {
    let outcome = (|| -> anyhow::Result<Option<String>> {
        let layout = banger_host::paths::Layout::detect()?;
        if layout.mode != banger_wire::api::InstallMode::System {
            return Ok(None);
        }
        let runtime = crate::cli::runtime()?;
        runtime.block_on(async {
            let Some(client) = Client::connect_existing(&layout).await? else {
                return Ok(None);
            };
            let report = teardown(&client, true).await?;
            Ok(Some(teardown_line(&report)))
        })
    })();
    match outcome {
        Ok(Some(line)) => println!("{line}"),
        Ok(None) => {}
        Err(e) => eprintln!(
            "warning: could not remove banger's host network through the daemon: {e:#}\n\
             (remove it by hand: `ip link del BRIDGE` for the config's bridge_name, default banger0, and `nft delete table inet banger`)"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(nat: bool, changed: bool) -> NetworkReport {
        NetworkReport {
            bridge: "banger0".into(),
            address: "172.16.0.1/24".into(),
            cidr: "172.16.0.0/24".into(),
            nat,
            changed,
        }
    }

    #[test]
    fn lines_say_what_the_host_has_now() {
        assert_eq!(
            setup_line(&report(true, true)),
            "bridge banger0 at 172.16.0.1/24 for guests in 172.16.0.0/24, NAT on"
        );
        assert_eq!(
            setup_line(&report(false, false)),
            "bridge banger0 at 172.16.0.1/24 for guests in 172.16.0.0/24, NAT off (already so)"
        );
        assert_eq!(
            teardown_line(&report(false, true)),
            "removed bridge banger0, banger's taps and its nftables table"
        );
        assert!(teardown_line(&report(false, false)).starts_with("nothing to remove"));
    }
}
