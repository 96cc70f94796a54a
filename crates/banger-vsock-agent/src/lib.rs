//! `banger-vsock-agent`: the guest side of banger.
//!
//! In every VM it runs as root twice: `apply` once per boot before sshd
//! (installs the per-VM config drive: hostname, SSH host key,
//! authorized_keys, `file_sync` payloads; [`apply`]), and `serve` for the
//! lifetime of the guest (health, listening ports, stats over virtio-serial
//! on QEMU or vsock on Firecracker; [`server`]). `bangerd` talks to it with
//! `banger_agent_client::AgentClient`. After a warm restore, `serve`
//! also makes the guest its new VM ([`reidentify`]). The wire types are in [`banger_wire::guest`].

pub mod apply;
pub mod drive;
pub mod ext4;
pub mod init;
pub mod procfs;
pub mod reidentify;
pub mod server;
pub mod session;

#[cfg(test)]
mod test_support;
