//! Value types stored in columns: timestamps and the closed string enums.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::types::{FromSql, FromSqlError, FromSqlResult, ToSql, ToSqlOutput, ValueRef};
use serde::{Deserialize, Serialize};

/// A point in time with millisecond precision, stored as milliseconds since
/// the Unix epoch so values round-trip exactly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Timestamp(i64);

impl Timestamp {
    /// The current wall-clock time.
    pub fn now() -> Timestamp {
        Timestamp::from_system_time(SystemTime::now())
    }

    /// From milliseconds since the Unix epoch.
    pub fn from_unix_millis(ms: i64) -> Timestamp {
        Timestamp(ms)
    }

    /// Milliseconds since the Unix epoch.
    pub fn unix_millis(self) -> i64 {
        self.0
    }

    /// Truncates to milliseconds; times before the epoch are negative.
    pub fn from_system_time(t: SystemTime) -> Timestamp {
        match t.duration_since(UNIX_EPOCH) {
            Ok(d) => Timestamp(i64::try_from(d.as_millis()).unwrap_or(i64::MAX)),
            Err(e) => Timestamp(-i64::try_from(e.duration().as_millis()).unwrap_or(i64::MAX)),
        }
    }

    /// As a [`SystemTime`].
    pub fn to_system_time(self) -> SystemTime {
        let d = Duration::from_millis(self.0.unsigned_abs());
        if self.0 >= 0 {
            UNIX_EPOCH + d
        } else {
            UNIX_EPOCH - d
        }
    }

    /// Time since this instant, zero if it lies in the future (clock steps).
    pub fn elapsed(self) -> Duration {
        SystemTime::now()
            .duration_since(self.to_system_time())
            .unwrap_or_default()
    }
}

impl ToSql for Timestamp {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(self.0.into())
    }
}

impl FromSql for Timestamp {
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
        i64::column_result(value).map(Timestamp)
    }
}

pub use banger_wire::vmm::{CloneStrategy, ParseEnumError, Vmm};

/// A closed enum stored as text: banger-wire's `text_enum!` plus the
/// rusqlite conversions (only enums defined in this crate can have them).
macro_rules! text_enum {
    ($(#[$meta:meta])* $name:ident, $kind:literal { $($body:tt)* }) => {
        banger_wire::text_enum! { $(#[$meta])* $name, $kind { $($body)* } }

        impl ToSql for $name {
            fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
                Ok(self.as_str().into())
            }
        }

        impl FromSql for $name {
            fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
                value.as_str()?.parse().map_err(|e| FromSqlError::Other(Box::new(e)))
            }
        }
    };
}

text_enum! {
    /// Lifecycle state of a VM.
    VmState, "VM state" {
        /// Recorded, never started (or `--no-start`).
        Created = "created",
        /// The VMM is being launched and the guest booted.
        Starting = "starting",
        /// The VMM runs and the guest answered.
        Running = "running",
        /// A graceful stop is in progress.
        Stopping = "stopping",
        /// No VMM process; disks kept.
        Stopped = "stopped",
        /// A start or stop failed; see the daemon log.
        Error = "error",
    }
}

text_enum! {
    /// Where an image or kernel came from.
    ArtifactSource, "artifact source" {
        /// Downloaded from the catalog.
        Pulled = "pulled",
        /// Built locally from its recipe.
        Built = "built",
        /// An existing host-side file registered by path.
        Registered = "registered",
    }
}

text_enum! {
    /// What a session is.
    SessionKind, "session kind" {
        /// An interactive shell (`vm ssh`, `vm run` without a command).
        Shell = "shell",
        /// One command (`vm ssh -- cmd`, `vm run -- cmd`).
        Command = "command",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enums_round_trip_through_text() {
        for s in VmState::ALL {
            assert_eq!(s.as_str().parse::<VmState>().unwrap(), *s);
        }
        for s in CloneStrategy::ALL {
            assert_eq!(s.as_str().parse::<CloneStrategy>().unwrap(), *s);
        }
        let err = "paused".parse::<VmState>().unwrap_err();
        assert_eq!(err.kind, "VM state");
        assert!(
            err.to_string().contains("created, starting, running"),
            "{err}"
        );
    }

    #[test]
    fn serde_uses_the_database_text() {
        assert_eq!(
            serde_json::to_string(&CloneStrategy::DmSnapshot).unwrap(),
            "\"dm-snapshot\""
        );
        assert_eq!(
            serde_json::from_str::<VmState>("\"running\"").unwrap(),
            VmState::Running
        );
    }

    #[test]
    fn timestamp_converts_both_ways() {
        let t = Timestamp::from_unix_millis(1_700_000_000_123);
        assert_eq!(Timestamp::from_system_time(t.to_system_time()), t);
        let before_epoch = Timestamp::from_unix_millis(-1500);
        assert_eq!(
            Timestamp::from_system_time(before_epoch.to_system_time()),
            before_epoch
        );
        assert_eq!(
            Timestamp::from_unix_millis(i64::MAX / 2).elapsed(),
            Duration::ZERO
        );
    }
}
