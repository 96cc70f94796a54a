//! The one error type of the state database.

use std::path::PathBuf;

/// Everything that can go wrong opening or using the state database. Every
/// variant carries the database path so a message alone says which file.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// A filesystem operation around the database file failed (creating its
    /// directory or the file itself); `op` says which, with its path.
    #[error("state database {path}: cannot {op}: {source}")]
    Io {
        path: PathBuf,
        op: String,
        source: std::io::Error,
    },

    /// SQLite could not open the file (permissions, missing directory, ...).
    #[error("cannot open state database {path}: {source}")]
    Open {
        path: PathBuf,
        source: rusqlite::Error,
    },

    /// The file is not a database or fails `PRAGMA quick_check`. banger never
    /// resets it by itself: the user decides what happens to the old data.
    #[error(
        "state database {path} is corrupt ({detail}); banger will not reset it. \
         Move it aside (for example `mv {path} {path}.corrupt`) and restart bangerd \
         to start with empty state, or restore a backup"
    )]
    Corrupt { path: PathBuf, detail: String },

    /// The database was written by a newer banger.
    #[error(
        "state database {path} has schema version {found}, but this banger supports \
         up to {supported}; upgrade banger (the database was written by a newer version)"
    )]
    NewerSchema {
        path: PathBuf,
        found: u32,
        supported: u32,
    },

    /// Applying a schema migration failed; it was rolled back.
    #[error("state database {path}: migration to schema version {version} failed (rolled back): {source}")]
    Migration {
        path: PathBuf,
        version: u32,
        source: rusqlite::Error,
    },

    /// The database could not be switched to WAL mode (e.g. a filesystem
    /// without shared-memory support).
    #[error("state database {path}: cannot enable WAL journal mode (got {mode:?})")]
    WalUnavailable { path: PathBuf, mode: String },

    /// A statement failed; `op` names what was being done.
    #[error("state database {path}: {op} failed: {source}")]
    Query {
        path: PathBuf,
        op: String,
        source: rusqlite::Error,
    },

    /// No record of `kind` with key `key`.
    #[error("{kind} {key:?} not found (state database {path})")]
    NotFound {
        path: PathBuf,
        kind: &'static str,
        key: String,
    },

    /// A unique field (`field`) already holds `value`.
    #[error("{kind} with {field} {value:?} already exists (state database {path})")]
    AlreadyExists {
        path: PathBuf,
        kind: &'static str,
        field: String,
        value: String,
    },

    /// The record is still referenced (an image used by VMs, a kernel used by
    /// images or VMs); `users` names the referrers.
    #[error("{kind} {key:?} is in use by {}; delete those first (state database {path})", users.join(", "))]
    InUse {
        path: PathBuf,
        kind: &'static str,
        key: String,
        users: Vec<String>,
    },

    /// A compare-and-set state change found the VM in another state.
    #[error("VM {vm:?} is {found}, expected one of [{}] to become {to} (state database {path})",
        expected.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", "))]
    WrongState {
        path: PathBuf,
        vm: String,
        found: crate::VmState,
        expected: Vec<crate::VmState>,
        to: crate::VmState,
    },

    /// Every candidate address is leased.
    #[error("no free IP address for VM {vm:?}: all {candidates} candidates are leased (state database {path})")]
    LeasesExhausted {
        path: PathBuf,
        vm: String,
        candidates: usize,
    },
}
