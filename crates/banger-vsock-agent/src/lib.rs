//! `banger-vsock-agent`: the guest side of banger. It runs as root inside
//! every VM and answers the daemon over vsock (Firecracker) or a
//! virtio-serial port (QEMU): health, listening ports, first-boot apply of
//! the per-VM config. Its protocol and work arrive with the VM lifecycle.

use clap::Parser;

/// Command line of the guest agent.
#[derive(Debug, Parser)]
#[command(name = "banger-vsock-agent", version = banger_wire::VERSION)]
pub struct AgentArgs {}

/// Parse arguments and run the agent; returns the process exit code.
pub fn run() -> anyhow::Result<()> {
    let _args = AgentArgs::parse();
    anyhow::bail!("banger-vsock-agent: the guest protocol is not available in this version")
}
