//! A small typed QMP client: JSON objects, one per line, over QEMU's
//! `-qmp unix:...` socket. Connecting reads the greeting and negotiates
//! capabilities; asynchronous events arriving between replies are skipped.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;

/// How long one QMP exchange may take.
pub const DEFAULT_QMP_TIMEOUT: Duration = Duration::from_secs(10);

/// Errors of a QMP exchange, naming the socket and command.
#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    #[error("cannot connect to QMP socket {socket}: {source}")]
    Connect {
        socket: PathBuf,
        source: std::io::Error,
    },
    #[error("QMP {command} on {socket}: {source}")]
    Io {
        socket: PathBuf,
        command: String,
        source: std::io::Error,
    },
    #[error("QMP {command} on {socket}: no reply within {secs} s")]
    Timeout {
        socket: PathBuf,
        command: String,
        secs: u64,
    },
    #[error("QMP {command} on {socket}: connection closed before a reply")]
    Closed { socket: PathBuf, command: String },
    #[error("QMP {command} on {socket}: unexpected message {line:?}")]
    Protocol {
        socket: PathBuf,
        command: String,
        line: String,
    },
    #[error("QMP {command} failed: {class}: {desc}")]
    Command {
        command: String,
        class: String,
        desc: String,
    },
}

/// The `query-status` reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QmpStatus {
    /// Whether vCPUs are running.
    pub running: bool,
    /// QEMU's run state: `prelaunch`, `running`, `paused`, `shutdown`,
    /// `internal-error`, `guest-panicked`, ...
    pub status: String,
}

#[derive(Debug, Deserialize)]
struct ErrorBody {
    class: String,
    desc: String,
}

/// A connected, capability-negotiated QMP session.
#[derive(Debug)]
pub struct QmpClient {
    socket: PathBuf,
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
    timeout: Duration,
}

impl QmpClient {
    /// Connect, read the greeting and send `qmp_capabilities`.
    pub async fn connect(socket: &Path) -> Result<QmpClient, QmpError> {
        let stream = UnixStream::connect(socket)
            .await
            .map_err(|source| QmpError::Connect {
                socket: socket.to_owned(),
                source,
            })?;
        let (r, w) = stream.into_split();
        let mut client = QmpClient {
            socket: socket.to_owned(),
            reader: BufReader::new(r),
            writer: w,
            timeout: DEFAULT_QMP_TIMEOUT,
        };
        let line = client.read_message("greeting").await?;
        if line.get("QMP").is_none() {
            return Err(client.protocol("greeting", &line));
        }
        client
            .execute::<serde_json::Value>("qmp_capabilities", None)
            .await?;
        Ok(client)
    }

    fn protocol(&self, command: &str, v: &serde_json::Value) -> QmpError {
        QmpError::Protocol {
            socket: self.socket.clone(),
            command: command.to_owned(),
            line: v.to_string(),
        }
    }

    /// Read the next JSON message (one line).
    async fn read_message(&mut self, command: &str) -> Result<serde_json::Value, QmpError> {
        let mut line = String::new();
        let timeout = self.timeout;
        let n = tokio::time::timeout(timeout, self.reader.read_line(&mut line))
            .await
            .map_err(|_| QmpError::Timeout {
                socket: self.socket.clone(),
                command: command.to_owned(),
                secs: timeout.as_secs(),
            })?
            .map_err(|source| QmpError::Io {
                socket: self.socket.clone(),
                command: command.to_owned(),
                source,
            })?;
        if n == 0 {
            return Err(QmpError::Closed {
                socket: self.socket.clone(),
                command: command.to_owned(),
            });
        }
        serde_json::from_str(line.trim()).map_err(|_| QmpError::Protocol {
            socket: self.socket.clone(),
            command: command.to_owned(),
            line,
        })
    }

    /// Run `command` with optional `arguments` and decode its `return` value.
    pub async fn execute<T: DeserializeOwned>(
        &mut self,
        command: &str,
        arguments: Option<serde_json::Value>,
    ) -> Result<T, QmpError> {
        let mut msg = serde_json::json!({ "execute": command });
        if let Some(args) = arguments {
            msg["arguments"] = args;
        }
        let mut text = msg.to_string();
        text.push('\n');
        let timeout = self.timeout;
        match tokio::time::timeout(timeout, self.writer.write_all(text.as_bytes())).await {
            Ok(Ok(())) => {}
            Ok(Err(source)) => {
                return Err(QmpError::Io {
                    socket: self.socket.clone(),
                    command: command.to_owned(),
                    source,
                })
            }
            Err(_) => {
                return Err(QmpError::Timeout {
                    socket: self.socket.clone(),
                    command: command.to_owned(),
                    secs: timeout.as_secs(),
                })
            }
        }
        loop {
            let reply = self.read_message(command).await?;
            if reply.get("event").is_some() {
                continue;
            }
            if let Some(ret) = reply.get("return") {
                return serde_json::from_value(ret.clone())
                    .map_err(|_| self.protocol(command, &reply));
            }
            if let Some(err) = reply.get("error") {
                let body: ErrorBody = serde_json::from_value(err.clone())
                    .map_err(|_| self.protocol(command, &reply))?;
                return Err(QmpError::Command {
                    command: command.to_owned(),
                    class: body.class,
                    desc: body.desc,
                });
            }
            return Err(self.protocol(command, &reply));
        }
    }

    /// `query-status`.
    pub async fn query_status(&mut self) -> Result<QmpStatus, QmpError> {
        self.execute("query-status", None).await
    }

    /// `system_powerdown`: press the ACPI power button.
    pub async fn system_powerdown(&mut self) -> Result<(), QmpError> {
        self.execute::<serde_json::Value>("system_powerdown", None)
            .await
            .map(drop)
    }

    /// `cont`: start vCPUs of a VM launched paused (`-S`).
    pub async fn cont(&mut self) -> Result<(), QmpError> {
        self.execute::<serde_json::Value>("cont", None)
            .await
            .map(drop)
    }

    /// `quit`: QEMU exits at once. The connection closing before the reply
    /// arrives counts as success.
    pub async fn quit(&mut self) -> Result<(), QmpError> {
        match self.execute::<serde_json::Value>("quit", None).await {
            Ok(_) | Err(QmpError::Closed { .. }) => Ok(()),
            Err(QmpError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::ConnectionReset =>
            {
                Ok(())
            }
            Err(e) => Err(e),
        }
    }
}
