//! File helpers every banger process shares (the daemon, the root helper,
//! the installer, the guest agent): one implementation of each job, so a
//! fix to one (a missing fsync, a symlink race) reaches every caller.
//!
//! - [`write_atomic`]: replace a file so readers and crashes see the old
//!   or the new contents, never a mix.
//! - [`proc`]: `/proc/PID/stat` (state, start time), `/proc/meminfo`, and
//!   the rows of the `/proc/net` socket tables.

mod atomic;
pub mod proc;

pub use atomic::{is_missing_dir, write_atomic, AtomicWriteError, WriteOptions};
