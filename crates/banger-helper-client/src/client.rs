//! The client `bangerd` uses to talk to the root helper.

use std::path::{Path, PathBuf};

use banger_wire::helper::{HelperError, HelperReply, HelperRequest, HelperResponse};
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;

use crate::framing::{read_line, LineError};

/// Talking to the root helper failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The socket could not be connected (helper not running, permissions).
    #[error("cannot connect to the root helper at {path}: {source}")]
    Connect {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The connection failed mid-request.
    #[error("root helper connection {path} failed: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The helper (or the caller) broke the line protocol.
    #[error("root helper protocol error on {path}: {message}")]
    Protocol { path: PathBuf, message: String },
    /// The helper refused or failed the request.
    #[error(transparent)]
    Helper(#[from] HelperError),
}

/// One connection to the root helper; requests on it are answered in order.
#[derive(Debug)]
pub struct HelperClient {
    path: PathBuf,
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
}

impl HelperClient {
    /// Connect to the helper socket at `path`.
    pub async fn connect(path: impl AsRef<Path>) -> Result<HelperClient, ClientError> {
        let path = path.as_ref().to_owned();
        let stream = UnixStream::connect(&path)
            .await
            .map_err(|source| ClientError::Connect {
                path: path.clone(),
                source,
            })?;
        let (read, writer) = stream.into_split();
        Ok(HelperClient {
            path,
            reader: BufReader::new(read),
            writer,
        })
    }

    /// Send `request` and wait for its answer; a refusal or failure of the
    /// helper is [`ClientError::Helper`].
    pub async fn request(
        &mut self,
        request: &HelperRequest,
    ) -> Result<HelperResponse, ClientError> {
        let line = serde_json::to_string(request).map_err(|e| self.protocol(e.to_string()))?;
        Ok(self.request_line(&line).await??)
    }

    /// Send one raw request line (no newline) and return the helper's reply
    /// as it came; for diagnostics and protocol tests.
    pub async fn request_line(&mut self, line: &str) -> Result<HelperReply, ClientError> {
        if line.contains('\n') {
            return Err(self.protocol("a request must not contain a newline".into()));
        }
        let mut bytes = Vec::with_capacity(line.len() + 1);
        bytes.extend_from_slice(line.as_bytes());
        bytes.push(b'\n');
        // The helper may answer and close before reading (a rejected peer, an
        // oversized line), so a failed write still leaves a reply to read.
        let written = self.writer.write_all(&bytes).await;
        match read_line(&mut self.reader).await {
            Ok(Some(reply)) => serde_json::from_slice::<HelperReply>(&reply).map_err(|e| {
                self.protocol(format!(
                    "unreadable reply {:?}: {e}",
                    String::from_utf8_lossy(&reply)
                ))
            }),
            Ok(None) => Err(match written {
                Err(source) => ClientError::Io {
                    path: self.path.clone(),
                    source,
                },
                Ok(()) => {
                    self.protocol("the helper closed the connection without answering".into())
                }
            }),
            Err(LineError::TooLong) => Err(self.protocol("reply line too long".into())),
            Err(LineError::Io(source)) => Err(ClientError::Io {
                path: self.path.clone(),
                source,
            }),
        }
    }

    fn protocol(&self, message: String) -> ClientError {
        ClientError::Protocol {
            path: self.path.clone(),
            message,
        }
    }
}
