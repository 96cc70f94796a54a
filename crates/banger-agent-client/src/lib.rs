//! The host side of the guest agent protocol (`banger_wire::guest`), for
//! `bangerd`: send an [`AgentRequest`] line, read the [`AgentResponse`]
//! line, with a timeout.
//!
//! It lives apart from `banger-vsock-agent` (the guest's binary) so that the
//! daemon does not link the guest's mount and apply code, and the guest agent
//! does not link tokio (docs/ARCHITECTURE.md, "Dependency closures").
//!
//! The stream is whatever reaches the guest agent: QEMU's virtio-serial
//! chardev socket ([`AgentClient::connect_unix`]) or a Firecracker vsock
//! stream after its `CONNECT` handshake ([`AgentClient::from_stream`]).

use std::path::{Path, PathBuf};
use std::time::Duration;

use banger_wire::guest::{
    AgentHealth, AgentRequest, AgentResponse, GuestIdentity, GuestStats, ListeningPort,
    ReidentifyReport,
};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;

/// Longest response line accepted (a port list of a busy guest fits easily).
pub const MAX_RESPONSE_LINE: usize = 4 * 1024 * 1024;

/// Errors talking to the guest agent.
#[derive(Debug, thiserror::Error)]
pub enum AgentClientError {
    #[error("cannot connect to the agent socket {path}: {source}")]
    Connect {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the agent did not answer {op} within {after:?} (is banger-vsock-agent running in the guest?)")]
    Timeout { op: &'static str, after: Duration },
    #[error("agent connection failed during {op}: {source}")]
    Io {
        op: &'static str,
        source: std::io::Error,
    },
    #[error("the agent closed the connection before answering {op}")]
    Closed { op: &'static str },
    #[error("the agent's answer to {op} is longer than {MAX_RESPONSE_LINE} bytes")]
    TooLong { op: &'static str },
    #[error("the agent's answer to {op} is not a response ({source}): {line:?}")]
    Decode {
        op: &'static str,
        line: String,
        source: serde_json::Error,
    },
    #[error(
        "this agent connection lost track of its answers after an earlier failure; connect again"
    )]
    Desynchronized,
    #[error("the agent answered {op} with an error: {message}")]
    Agent { op: &'static str, message: String },
    #[error("the agent answered {op} with an unexpected {got} response")]
    Unexpected { op: &'static str, got: &'static str },
}

/// A connection to one guest agent; one request at a time.
#[derive(Debug)]
pub struct AgentClient {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
    timeout: Duration,
    broken: bool,
}

impl AgentClient {
    /// Default time a request may take, including the guest's answer.
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

    /// Connect to a Unix socket whose stream is the agent channel (QEMU's
    /// virtio-serial chardev socket).
    pub async fn connect_unix(path: impl AsRef<Path>) -> Result<Self, AgentClientError> {
        let path = path.as_ref();
        let connect = UnixStream::connect(path);
        let stream = tokio::time::timeout(Self::DEFAULT_TIMEOUT, connect)
            .await
            .unwrap_or_else(|_| Err(std::io::Error::from(std::io::ErrorKind::TimedOut)))
            .map_err(|source| AgentClientError::Connect {
                path: path.to_owned(),
                source,
            })?;
        Ok(Self::from_stream(stream))
    }

    /// Use an already connected stream (e.g. after the Firecracker vsock
    /// `CONNECT` handshake).
    pub fn from_stream(stream: UnixStream) -> Self {
        let (read, write) = stream.into_split();
        AgentClient {
            reader: BufReader::new(read),
            writer: write,
            timeout: Self::DEFAULT_TIMEOUT,
            broken: false,
        }
    }

    /// Set the per-request timeout.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Send `request` and wait for its response. An [`AgentResponse::Error`]
    /// is returned as `Ok`; transport failures are `Err`, after which the
    /// connection is unusable (a late answer could be taken for the next
    /// request's) and every further call fails with `Desynchronized`.
    pub async fn request(
        &mut self,
        request: &AgentRequest,
    ) -> Result<AgentResponse, AgentClientError> {
        if self.broken {
            return Err(AgentClientError::Desynchronized);
        }
        let op = op_name(request);
        let result = match tokio::time::timeout(self.timeout, self.exchange(op, request)).await {
            Ok(r) => r,
            Err(_) => Err(AgentClientError::Timeout {
                op,
                after: self.timeout,
            }),
        };
        if result.is_err() {
            self.broken = true;
        }
        result
    }

    async fn exchange(
        &mut self,
        op: &'static str,
        request: &AgentRequest,
    ) -> Result<AgentResponse, AgentClientError> {
        let mut line = serde_json::to_vec(request).expect("AgentRequest always serializes");
        line.push(b'\n');
        let io = |source| AgentClientError::Io { op, source };
        self.writer.write_all(&line).await.map_err(io)?;
        self.writer.flush().await.map_err(io)?;
        let mut answer = Vec::new();
        (&mut self.reader)
            .take(MAX_RESPONSE_LINE as u64 + 1)
            .read_until(b'\n', &mut answer)
            .await
            .map_err(io)?;
        if answer.last() != Some(&b'\n') {
            return Err(if answer.len() > MAX_RESPONSE_LINE {
                AgentClientError::TooLong { op }
            } else {
                AgentClientError::Closed { op }
            });
        }
        serde_json::from_slice(&answer).map_err(|source| AgentClientError::Decode {
            op,
            line: String::from_utf8_lossy(&answer).trim_end().to_owned(),
            source,
        })
    }

    /// Health of the guest.
    pub async fn health(&mut self) -> Result<AgentHealth, AgentClientError> {
        match self.request(&AgentRequest::Health {}).await? {
            AgentResponse::Health(h) => Ok(h),
            other => Err(unexpected("health", other)),
        }
    }

    /// Listening sockets in the guest.
    pub async fn ports(&mut self) -> Result<Vec<ListeningPort>, AgentClientError> {
        match self.request(&AgentRequest::Ports {}).await? {
            AgentResponse::Ports { ports } => Ok(ports),
            other => Err(unexpected("ports", other)),
        }
    }

    /// Load, memory and disk usage of the guest.
    pub async fn stats(&mut self) -> Result<GuestStats, AgentClientError> {
        match self.request(&AgentRequest::Stats {}).await? {
            AgentResponse::Stats(s) => Ok(s),
            other => Err(unexpected("stats", other)),
        }
    }

    /// Make a restored guest the VM `identity` describes (network, hostname,
    /// host key, machine-id, clock, entropy, work disk). Nothing may connect
    /// to the guest's network before this returned: until then sshd may
    /// still answer with the snapshot's key. Slow guests (TCG, fsck of the
    /// work disk) need a longer timeout than [`Self::DEFAULT_TIMEOUT`]; see
    /// [`Self::with_timeout`]. A refused request (a bad field, named in the
    /// message) is `Err(AgentClientError::Agent)` and changed nothing.
    pub async fn reidentify(
        &mut self,
        identity: GuestIdentity,
    ) -> Result<ReidentifyReport, AgentClientError> {
        let request = AgentRequest::Reidentify {
            identity: Box::new(identity),
        };
        match self.request(&request).await? {
            AgentResponse::Reidentified(r) => Ok(r),
            other => Err(unexpected("reidentify", other)),
        }
    }

    /// Before saving a snapshot: sync and unmount the work disk. Returns the
    /// device that was unmounted from `/root`, if any.
    pub async fn prepare_snapshot(&mut self) -> Result<Option<String>, AgentClientError> {
        match self.request(&AgentRequest::PrepareSnapshot {}).await? {
            AgentResponse::SnapshotReady { unmounted } => Ok(unmounted),
            other => Err(unexpected("prepare snapshot", other)),
        }
    }
}

fn op_name(request: &AgentRequest) -> &'static str {
    match request {
        AgentRequest::Health {} => "health",
        AgentRequest::Ports {} => "ports",
        AgentRequest::Stats {} => "stats",
        AgentRequest::SessionStart { .. } => "session start",
        AgentRequest::SessionList {} => "session list",
        AgentRequest::SessionShow { .. } => "session show",
        AgentRequest::SessionLogs { .. } => "session logs",
        AgentRequest::SessionStop { .. } => "session stop",
        AgentRequest::SessionSignal { .. } => "session signal",
        AgentRequest::SessionIo { .. } => "session io",
        AgentRequest::Reidentify { .. } => "reidentify",
        AgentRequest::PrepareSnapshot {} => "prepare snapshot",
    }
}

fn unexpected(op: &'static str, response: AgentResponse) -> AgentClientError {
    match response {
        AgentResponse::Error { message } => AgentClientError::Agent { op, message },
        AgentResponse::Health(_) => AgentClientError::Unexpected { op, got: "health" },
        AgentResponse::Ports { .. } => AgentClientError::Unexpected { op, got: "ports" },
        AgentResponse::Stats(_) => AgentClientError::Unexpected { op, got: "stats" },
        AgentResponse::Session(_) => AgentClientError::Unexpected { op, got: "session" },
        AgentResponse::Sessions { .. } => AgentClientError::Unexpected {
            op,
            got: "sessions",
        },
        AgentResponse::SessionRefused { .. } => AgentClientError::Unexpected {
            op,
            got: "session_refused",
        },
        AgentResponse::SessionLog(_) => AgentClientError::Unexpected {
            op,
            got: "session_log",
        },
        AgentResponse::SessionIo(_) => AgentClientError::Unexpected {
            op,
            got: "session_io",
        },
        AgentResponse::Reidentified(_) => AgentClientError::Unexpected {
            op,
            got: "reidentified",
        },
        AgentResponse::SnapshotReady { .. } => AgentClientError::Unexpected {
            op,
            got: "snapshot_ready",
        },
    }
}
