//! Ordered schema migrations, tracked with `PRAGMA user_version`.

use std::path::Path;

use rusqlite::{Connection, Transaction, TransactionBehavior};

use crate::{sql, StateError};

/// Migration `i` takes the schema from version `i` to `i + 1`. Append only:
/// a released migration is never edited.
const MIGRATIONS: &[&str] = &[
    include_str!("../migrations/0001_initial.sql"),
    include_str!("../migrations/0002_leases_sessions.sql"),
    include_str!("../migrations/0003_session_names.sql"),
];

/// The schema version this build creates and understands.
pub const SCHEMA_VERSION: u32 = MIGRATIONS.len() as u32;

/// The stored schema version.
pub(crate) fn user_version(conn: &Connection, path: &Path) -> Result<u32, StateError> {
    let v: i64 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .map_err(|e| sql::query_error(path, "read PRAGMA user_version", e))?;
    u32::try_from(v).map_err(|_| StateError::Corrupt {
        path: path.to_owned(),
        detail: format!("negative schema version {v}"),
    })
}

/// Apply every pending migration, each in its own IMMEDIATE transaction that
/// re-reads the version, so two processes opening the same file at once
/// apply each step exactly once.
pub(crate) fn migrate(conn: &Connection, path: &Path) -> Result<u32, StateError> {
    if user_version(conn, path)? == SCHEMA_VERSION {
        return Ok(SCHEMA_VERSION);
    }
    for (target, sql) in (1..).zip(MIGRATIONS) {
        let failed = |source| StateError::Migration {
            path: path.to_owned(),
            version: target,
            source,
        };
        let tx =
            Transaction::new_unchecked(conn, TransactionBehavior::Immediate).map_err(failed)?;
        let found = user_version(&tx, path)?;
        if found > SCHEMA_VERSION {
            return Err(StateError::NewerSchema {
                path: path.to_owned(),
                found,
                supported: SCHEMA_VERSION,
            });
        }
        if found >= target {
            continue;
        }
        tx.execute_batch(sql).map_err(failed)?;
        tx.pragma_update(None, "user_version", target)
            .map_err(failed)?;
        tx.commit().map_err(failed)?;
    }
    Ok(SCHEMA_VERSION)
}
