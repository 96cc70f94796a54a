//! Small SQL helpers shared by the record modules.

use std::ffi::OsString;
use std::net::Ipv4Addr;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use rusqlite::types::{FromSql, FromSqlError, FromSqlResult, ToSql, ToSqlOutput, ValueRef};
use rusqlite::ErrorCode;

use crate::StateError;

/// Wrap a rusqlite error; corruption found at any point is reported as
/// [`StateError::Corrupt`] so the user always gets the move-aside advice.
pub(crate) fn query_error(path: &Path, op: &str, e: rusqlite::Error) -> StateError {
    match e.sqlite_error_code() {
        Some(ErrorCode::NotADatabase | ErrorCode::DatabaseCorrupt) => StateError::Corrupt {
            path: path.to_owned(),
            detail: e.to_string(),
        },
        _ => StateError::Query {
            path: path.to_owned(),
            op: op.to_owned(),
            source: e,
        },
    }
}

/// For a UNIQUE or PRIMARY KEY violation, the `table.column` it names.
pub(crate) fn unique_violation(e: &rusqlite::Error) -> Option<&str> {
    match e {
        rusqlite::Error::SqliteFailure(f, Some(msg))
            if f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE
                || f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY =>
        {
            // "UNIQUE constraint failed: vms.name"
            msg.rsplit(": ").next()
        }
        _ => None,
    }
}

/// A path stored as TEXT with its exact bytes, so non-UTF-8 paths survive.
pub(crate) struct SqlPath<'a>(pub &'a Path);

impl ToSql for SqlPath<'_> {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::Borrowed(ValueRef::Text(
            self.0.as_os_str().as_bytes(),
        )))
    }
}

/// Reads a column written by [`SqlPath`].
pub(crate) struct PathCol(pub PathBuf);

impl FromSql for PathCol {
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
        match value {
            ValueRef::Text(b) | ValueRef::Blob(b) => {
                Ok(PathCol(PathBuf::from(OsString::from_vec(b.to_vec()))))
            }
            _ => Err(FromSqlError::InvalidType),
        }
    }
}

/// Reads a value stored as its text form (`FromStr`): IPv4 addresses and the
/// closed enums banger-wire owns (rusqlite's traits cannot be implemented
/// for those types here).
pub(crate) struct TextCol<T>(pub T);

/// An IPv4 address stored as dotted-quad text.
pub(crate) type IpCol = TextCol<Ipv4Addr>;

impl<T> FromSql for TextCol<T>
where
    T: std::str::FromStr,
    T::Err: std::error::Error + Send + Sync + 'static,
{
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
        value
            .as_str()?
            .parse()
            .map(TextCol)
            .map_err(|e| FromSqlError::Other(Box::new(e)))
    }
}

/// Reads a JSON document stored as text.
pub(crate) struct JsonCol(pub serde_json::Value);

impl FromSql for JsonCol {
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
        serde_json::from_str(value.as_str()?)
            .map(JsonCol)
            .map_err(|e| FromSqlError::Other(Box::new(e)))
    }
}
