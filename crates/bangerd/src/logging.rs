//! `tracing` setup: plain lines on stderr under systemd (journald adds the
//! timestamps and the unit name), otherwise an append-only log file.

use std::fs::OpenOptions;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use tracing_subscriber::EnvFilter;

/// Where log lines go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogTarget {
    /// stderr without timestamps or colours (journald).
    Journal,
    /// Append to this file.
    File(PathBuf),
}

impl LogTarget {
    /// Journal when started by systemd (`JOURNAL_STREAM` is set), else `file`.
    pub fn detect(file: &Path) -> LogTarget {
        if std::env::var_os("JOURNAL_STREAM").is_some_and(|v| !v.is_empty()) {
            LogTarget::Journal
        } else {
            LogTarget::File(file.to_owned())
        }
    }
}

/// Errors setting up logging.
#[derive(Debug, thiserror::Error)]
pub enum LoggingError {
    #[error("cannot open log file {path}: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid log level {level:?}: {message}")]
    Level { level: String, message: String },
    #[error("a global tracing subscriber is already installed")]
    AlreadySet,
}

/// Filter directives keeping the `.vm` DNS server's per-query logging out.
const QUIET_DNS: &str = "hickory_server=error,hickory_proto=error,hickory_net=error";

/// Install the global subscriber. `RUST_LOG` wins over `level` (the config's
/// `log_level`) so one run can be debugged without editing the config.
pub fn init(target: &LogTarget, level: &str) -> Result<(), LoggingError> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(v) if !v.is_empty() => EnvFilter::try_new(&v).map_err(|e| LoggingError::Level {
            level: v.clone(),
            message: e.to_string(),
        })?,
        // hickory-server logs every DNS query at info and junk packets at
        // warn: a guest could fill the log, so only its errors are kept.
        _ => {
            EnvFilter::try_new(format!("{level},{QUIET_DNS}")).map_err(|e| LoggingError::Level {
                level: level.to_owned(),
                message: e.to_string(),
            })?
        }
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false);
    let result = match target {
        LogTarget::Journal => builder
            .without_time()
            .with_target(false)
            .with_writer(std::io::stderr)
            .try_init(),
        LogTarget::File(path) => {
            if let Some(dir) = path.parent() {
                // The log lives in the state dir, which is private.
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(dir)
                    .map_err(|source| LoggingError::Open {
                        path: path.clone(),
                        source,
                    })?;
            }
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o600)
                .open(path)
                .map_err(|source| LoggingError::Open {
                    path: path.clone(),
                    source,
                })?;
            builder.with_writer(Mutex::new(file)).try_init()
        }
    };
    result.map_err(|_| LoggingError::AlreadySet)
}
