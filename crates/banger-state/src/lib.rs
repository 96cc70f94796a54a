//! bangerd's persistent state: one SQLite database (`state.db` in the state
//! directory) in WAL mode with foreign keys on, versioned by
//! `PRAGMA user_version` and migrated forward at open.
//!
//! - [`StateDb`] owns one connection. It is `Send` but not `Sync`: share it
//!   behind a mutex, or open one handle per thread/process — concurrent
//!   writers on separate handles are serialized by SQLite (`BEGIN IMMEDIATE`
//!   plus a busy timeout), so every write method is safe across processes.
//! - Records: [`VmRecord`], [`ImageRecord`], [`KernelRecord`], [`Lease`],
//!   [`SessionRecord`]. A VM's IP lives only in `ip_leases`; `VmRecord::ip`
//!   is read through a join, and deleting a VM drops its lease and sessions.
//! - Every change touching more than one row runs in one transaction.
//! - A corrupt file or a schema newer than [`SCHEMA_VERSION`] is an error
//!   ([`StateError::Corrupt`], [`StateError::NewerSchema`]); the file is never
//!   reset or modified in that case.

mod artifacts;
mod error;
mod leases;
mod migrations;
mod sessions;
mod sql;
mod types;
mod vms;

use std::fs::{DirBuilder, OpenOptions};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rusqlite::{Connection, Transaction, TransactionBehavior};

pub use artifacts::{ImageRecord, KernelRecord};
pub use error::StateError;
pub use leases::Lease;
pub use migrations::SCHEMA_VERSION;
pub use sessions::{NamedSession, SessionRecord};
pub use types::{
    ArtifactSource, CloneStrategy, ParseEnumError, SessionKind, Timestamp, VmState, Vmm,
};
pub use vms::{VmPatch, VmRecord};

/// How long a statement waits for another connection's lock before failing
/// with "database is locked".
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// A handle on the state database.
#[derive(Debug)]
pub struct StateDb {
    conn: Connection,
    path: PathBuf,
    version: u32,
}

impl StateDb {
    /// Open (creating if needed) the database at `path`, creating missing
    /// parent directories with mode 0700, check its integrity, switch it to
    /// WAL and apply pending migrations.
    pub fn open(path: &Path) -> Result<StateDb, StateError> {
        let path = path.to_path_buf();
        if let Some(dir) = path
            .parent()
            .filter(|d| !d.as_os_str().is_empty() && !d.exists())
        {
            DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|source| StateError::Io {
                    path: path.clone(),
                    op: format!("create directory {}", dir.display()),
                    source,
                })?;
        }
        // SQLite gives the -wal and -shm files the main file's mode, so
        // creating it 0600 up front keeps all three private to the owner.
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
        {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(source) => {
                return Err(StateError::Io {
                    op: "create the database file".into(),
                    path,
                    source,
                })
            }
        }
        let conn = Connection::open(&path).map_err(|source| StateError::Open {
            path: path.clone(),
            source,
        })?;
        StateDb::init(conn, path, true)
    }

    /// A fresh, fully migrated database in memory (tests, dry runs).
    pub fn open_in_memory() -> Result<StateDb, StateError> {
        let path = PathBuf::from(":memory:");
        let conn = Connection::open_in_memory().map_err(|source| StateError::Open {
            path: path.clone(),
            source,
        })?;
        StateDb::init(conn, path, false)
    }

    fn init(conn: Connection, path: PathBuf, on_disk: bool) -> Result<StateDb, StateError> {
        let err = |op: &str| {
            let path = path.clone();
            let op = op.to_owned();
            move |e| sql::query_error(&path, &op, e)
        };
        conn.busy_timeout(BUSY_TIMEOUT)
            .map_err(err("set busy_timeout"))?;
        // Reading the header is what detects "file is not a database"; nothing
        // below writes until the checks have passed.
        let found = migrations::user_version(&conn, &path)?;
        if on_disk {
            quick_check(&conn, &path)?;
        }
        if found > SCHEMA_VERSION {
            return Err(StateError::NewerSchema {
                path,
                found,
                supported: SCHEMA_VERSION,
            });
        }
        if on_disk {
            let mode = enable_wal(&conn).map_err(err("enable WAL journal mode"))?;
            if !mode.eq_ignore_ascii_case("wal") {
                return Err(StateError::WalUnavailable { path, mode });
            }
        }
        conn.pragma_update(None, "foreign_keys", true)
            .map_err(err("enable foreign keys"))?;
        let version = migrations::migrate(&conn, &path)?;
        Ok(StateDb {
            conn,
            path,
            version,
        })
    }

    /// The database file (`:memory:` for [`StateDb::open_in_memory`]).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The schema version after migration; equals [`SCHEMA_VERSION`].
    pub fn schema_version(&self) -> u32 {
        self.version
    }

    /// Run `f` in one `BEGIN IMMEDIATE` transaction: the write lock is taken up
    /// front, so read-then-write sequences cannot race other connections.
    /// Rolled back when `f` fails.
    fn write<T>(
        &self,
        op: &str,
        f: impl FnOnce(&Transaction<'_>) -> Result<T, StateError>,
    ) -> Result<T, StateError> {
        // `new_unchecked` because methods take `&self`; StateDb is !Sync and
        // no method nests transactions, so there is never a second one open.
        let tx = Transaction::new_unchecked(&self.conn, TransactionBehavior::Immediate)
            .map_err(|e| self.query_error(op, e))?;
        let value = f(&tx)?;
        tx.commit().map_err(|e| self.query_error(op, e))?;
        Ok(value)
    }

    fn query_error(&self, op: &str, e: rusqlite::Error) -> StateError {
        sql::query_error(&self.path, op, e)
    }
}

/// Switch to WAL (persistent in the file). Leaving rollback mode needs an
/// exclusive lock, and SQLite answers BUSY at once, without the busy handler,
/// when another connection is doing the same; so retry until [`BUSY_TIMEOUT`].
fn enable_wal(conn: &Connection) -> rusqlite::Result<String> {
    let start = Instant::now();
    loop {
        match conn.pragma_update_and_check(None, "journal_mode", "wal", |r| r.get(0)) {
            Err(e)
                if e.sqlite_error_code() == Some(rusqlite::ErrorCode::DatabaseBusy)
                    && start.elapsed() < BUSY_TIMEOUT =>
            {
                std::thread::sleep(Duration::from_millis(5));
            }
            result => return result,
        }
    }
}

fn quick_check(conn: &Connection, path: &Path) -> Result<(), StateError> {
    let corrupt = |detail: String| StateError::Corrupt {
        path: path.to_owned(),
        detail,
    };
    let mut stmt = conn
        .prepare("PRAGMA quick_check(5)")
        .map_err(|e| sql::query_error(path, "PRAGMA quick_check", e))?;
    let rows = stmt
        .query_map([], |r| r.get::<_, String>(0))
        .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
        .map_err(|e| sql::query_error(path, "PRAGMA quick_check", e))?;
    if rows.len() == 1 && rows[0] == "ok" {
        Ok(())
    } else {
        Err(corrupt(format!("PRAGMA quick_check: {}", rows.join("; "))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_db_is_send() {
        fn assert_send<T: Send>() {}
        assert_send::<StateDb>();
    }

    #[test]
    fn in_memory_is_fully_migrated_with_foreign_keys() {
        let db = StateDb::open_in_memory().unwrap();
        assert_eq!(db.schema_version(), SCHEMA_VERSION);
        let fk: i64 = db
            .conn
            .pragma_query_value(None, "foreign_keys", |r| r.get(0))
            .unwrap();
        assert_eq!(fk, 1);
        let timeout: i64 = db
            .conn
            .pragma_query_value(None, "busy_timeout", |r| r.get(0))
            .unwrap();
        assert_eq!(timeout, BUSY_TIMEOUT.as_millis() as i64);
    }
}
