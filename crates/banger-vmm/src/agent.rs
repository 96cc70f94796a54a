//! Where and how the host reaches the guest agent (`banger-vsock-agent`).
//!
//! Firecracker exposes the guest's vsock through a Unix socket: the host
//! connects and sends `CONNECT <port>\n`, Firecracker answers `OK <n>\n`
//! and the stream is then connected to the guest's vsock port. QEMU here has
//! no vhost-vsock, so the agent talks over a virtio-serial port whose host
//! side is a listening Unix socket: connecting gives the raw byte stream of
//! `/dev/virtio-ports/org.banger.agent` in the guest (one client at a time).

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

/// Name of the virtio-serial port the guest agent opens on QEMU
/// (`/dev/virtio-ports/org.banger.agent`); defined with the agent protocol.
pub use banger_wire::guest::AGENT_PORT_NAME as AGENT_SERIAL_PORT;
/// vsock port the guest agent listens on under Firecracker.
pub use banger_wire::guest::AGENT_VSOCK_PORT;

/// How long the Firecracker vsock handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// The host side of a VM's agent channel, recorded in [`crate::VmmHandle`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "transport", rename_all = "kebab-case")]
pub enum AgentEndpoint {
    /// Firecracker vsock: connect to `uds_path`, then `CONNECT port`.
    Vsock {
        /// Firecracker's vsock Unix socket (host path).
        uds_path: PathBuf,
        /// Guest context id.
        guest_cid: u32,
        /// Guest vsock port the agent listens on.
        port: u32,
    },
    /// QEMU virtio-serial: connect to `socket`; the stream is the port itself.
    VirtioSerial {
        /// QEMU's listening chardev socket.
        socket: PathBuf,
        /// The guest-visible port name.
        port_name: String,
    },
}

/// Errors connecting to the guest agent.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("cannot connect to the agent socket {socket}: {source}")]
    Connect {
        socket: PathBuf,
        source: std::io::Error,
    },
    #[error("vsock handshake for port {port} on {socket} failed: {source}")]
    Handshake {
        socket: PathBuf,
        port: u32,
        source: std::io::Error,
    },
    #[error("vsock handshake for port {port} on {socket} was refused: got {reply:?} (is the agent listening in the guest?)")]
    Refused {
        socket: PathBuf,
        port: u32,
        reply: String,
    },
}

impl AgentEndpoint {
    /// The host Unix socket of this endpoint.
    pub fn socket(&self) -> &std::path::Path {
        match self {
            AgentEndpoint::Vsock { uds_path, .. } => uds_path,
            AgentEndpoint::VirtioSerial { socket, .. } => socket,
        }
    }

    /// Open a byte stream to the guest agent.
    pub async fn connect(&self) -> Result<UnixStream, AgentError> {
        let socket = self.socket().to_owned();
        let mut stream =
            UnixStream::connect(&socket)
                .await
                .map_err(|source| AgentError::Connect {
                    socket: socket.clone(),
                    source,
                })?;
        if let AgentEndpoint::Vsock { port, .. } = self {
            let port = *port;
            let handshake = vsock_handshake(&mut stream, port);
            let reply = match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await {
                Ok(r) => r.map_err(|source| AgentError::Handshake {
                    socket: socket.clone(),
                    port,
                    source,
                })?,
                Err(_) => {
                    return Err(AgentError::Handshake {
                        socket,
                        port,
                        source: std::io::Error::from(std::io::ErrorKind::TimedOut),
                    })
                }
            };
            if !reply.starts_with("OK ") {
                return Err(AgentError::Refused {
                    socket,
                    port,
                    reply,
                });
            }
        }
        Ok(stream)
    }
}

/// Send `CONNECT port` and read the one-line reply. Reads byte by byte so no
/// byte of the guest's stream after the reply is consumed here.
async fn vsock_handshake(stream: &mut UnixStream, port: u32) -> std::io::Result<String> {
    stream
        .write_all(format!("CONNECT {port}\n").as_bytes())
        .await?;
    let mut line = Vec::new();
    loop {
        let mut b = [0u8; 1];
        if stream.read(&mut b).await? == 0 {
            break;
        }
        if b[0] == b'\n' {
            break;
        }
        line.push(b[0]);
        if line.len() > 64 {
            break;
        }
    }
    Ok(String::from_utf8_lossy(&line).into_owned())
}
