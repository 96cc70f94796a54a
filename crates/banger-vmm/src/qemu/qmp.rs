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
    #[error("QMP {command} on {socket}: migration {status}: {reason}")]
    MigrationFailed {
        socket: PathBuf,
        command: String,
        status: String,
        reason: String,
    },
    #[error("QMP {command}: cannot encode its arguments: {source}")]
    Encode {
        command: String,
        source: serde_json::Error,
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

/// A migration capability as `migrate-set-capabilities` takes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigrationCapability {
    /// The capability's QAPI name, e.g. `mapped-ram`.
    pub capability: String,
    /// On or off.
    pub state: bool,
}

/// Arguments of `migrate-set-capabilities`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SetCapabilities {
    /// The capabilities to change.
    pub capabilities: Vec<MigrationCapability>,
}

/// A migration channel (QAPI `MigrationChannel`): always the main channel
/// to or from a file here. Typed channels instead of a `file:PATH` URI: the
/// URI form parses `,offset=` out of the path, a channel takes it verbatim.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MigrationChannel {
    /// `main`.
    #[serde(rename = "channel-type")]
    pub channel_type: &'static str,
    /// The file.
    pub addr: FileAddress,
}

/// QAPI `MigrationAddress` with transport `file`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FileAddress {
    /// `file`.
    pub transport: &'static str,
    /// The snapshot file.
    pub filename: String,
    /// Where in it the migration stream starts.
    pub offset: u64,
}

impl MigrationChannel {
    /// The main channel to or from `path`, from its start.
    pub fn file(path: &Path) -> MigrationChannel {
        MigrationChannel {
            channel_type: "main",
            addr: FileAddress {
                transport: "file",
                filename: path.to_string_lossy().into_owned(),
                offset: 0,
            },
        }
    }
}

/// Arguments of `migrate` (outgoing).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Migrate {
    /// Exactly one main channel.
    pub channels: Vec<MigrationChannel>,
}

/// Arguments of `migrate-incoming` (on a QEMU started with `-incoming defer`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MigrateIncoming {
    /// Exactly one main channel.
    pub channels: Vec<MigrationChannel>,
    /// `false`: a failed load leaves QEMU running with the reason in
    /// `query-migrate` (QEMU >= 9.1) instead of exiting with it on stderr.
    #[serde(rename = "exit-on-error")]
    pub exit_on_error: bool,
}

/// A migration's status, from `query-migrate`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MigrationStatus {
    None,
    Setup,
    Cancelling,
    Cancelled,
    Active,
    Completed,
    Failed,
    Device,
    PreSwitchover,
    WaitUnplug,
    /// A state this client does not know (postcopy, colo, newer QEMU).
    #[serde(other)]
    Other,
}

/// The `query-migrate` reply (the fields banger reads).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigrationInfo {
    /// Absent before any migration was started.
    #[serde(default)]
    pub status: Option<MigrationStatus>,
    /// Why it failed, when it did.
    #[serde(rename = "error-desc", default)]
    pub error_desc: Option<String>,
    /// Milliseconds the migration took, once completed.
    #[serde(rename = "total-time", default)]
    pub total_time_ms: Option<u64>,
}

/// The capability that writes RAM pages at fixed offsets of a `file:`
/// target: the file is sparse (only touched pages take disk space) and
/// saving/loading is a straight copy instead of a stream of dirty pages.
pub const MAPPED_RAM: &str = "mapped-ram";

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

    /// `stop`: pause the vCPUs.
    pub async fn stop(&mut self) -> Result<(), QmpError> {
        self.execute::<serde_json::Value>("stop", None)
            .await
            .map(drop)
    }

    /// `migrate-set-capabilities`.
    pub async fn set_migration_capabilities(
        &mut self,
        capabilities: Vec<MigrationCapability>,
    ) -> Result<(), QmpError> {
        let args = args_of(
            "migrate-set-capabilities",
            &SetCapabilities { capabilities },
        )?;
        self.execute::<serde_json::Value>("migrate-set-capabilities", Some(args))
            .await
            .map(drop)
    }

    /// `migrate` to the file `path` (returns once started; poll
    /// [`QmpClient::wait_migration`]).
    pub async fn migrate_to_file(&mut self, path: &Path) -> Result<(), QmpError> {
        let args = args_of(
            "migrate",
            &Migrate {
                channels: vec![MigrationChannel::file(path)],
            },
        )?;
        self.execute::<serde_json::Value>("migrate", Some(args))
            .await
            .map(drop)
    }

    /// `migrate-incoming` from the file `path`, not exiting on a failed load.
    pub async fn migrate_incoming_from_file(&mut self, path: &Path) -> Result<(), QmpError> {
        let args = args_of(
            "migrate-incoming",
            &MigrateIncoming {
                channels: vec![MigrationChannel::file(path)],
                exit_on_error: false,
            },
        )?;
        self.execute::<serde_json::Value>("migrate-incoming", Some(args))
            .await
            .map(drop)
    }

    /// `query-migrate`.
    pub async fn query_migrate(&mut self) -> Result<MigrationInfo, QmpError> {
        self.execute("query-migrate", None).await
    }

    /// Poll `query-migrate` until the migration completed (`Ok(info)`),
    /// failed or was cancelled (`QmpError::MigrationFailed`), or `limit`
    /// passed (`QmpError::Timeout`).
    pub async fn wait_migration(
        &mut self,
        command: &str,
        limit: Duration,
    ) -> Result<MigrationInfo, QmpError> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let info = self.query_migrate().await?;
            match info.status {
                Some(MigrationStatus::Completed) => return Ok(info),
                Some(s @ (MigrationStatus::Failed | MigrationStatus::Cancelled)) => {
                    return Err(QmpError::MigrationFailed {
                        socket: self.socket.clone(),
                        command: command.to_owned(),
                        status: format!("{s:?}").to_lowercase(),
                        reason: info.error_desc.unwrap_or_default(),
                    })
                }
                _ => {}
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(QmpError::Timeout {
                    socket: self.socket.clone(),
                    command: command.to_owned(),
                    secs: limit.as_secs(),
                });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
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

fn args_of<T: Serialize>(command: &str, args: &T) -> Result<serde_json::Value, QmpError> {
    serde_json::to_value(args).map_err(|source| QmpError::Encode {
        command: command.to_owned(),
        source,
    })
}
