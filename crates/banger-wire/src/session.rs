//! Bodies of the `/v1/vms/{vm}/sessions` routes (`docs/api.md`,
//! `docs/sessions.md`). A session's live state comes from the guest agent
//! ([`crate::guest::GuestSession`]); the daemon adds where it came from.
//!
//! Requests reject unknown fields; answers ([`SessionInfo`], [`SessionList`],
//! [`SessionNames`], [`SessionLogLine`]) tolerate them, and their enums have
//! an `Unknown` value, so a CLI one release older still reads them.

use serde::{Deserialize, Serialize};

pub use crate::guest::{LogStream, SessionStatus, StdinMode};

/// `POST /v1/vms/{vm}/sessions`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionStartRequest {
    pub name: String,
    /// Program and arguments; no shell is involved.
    pub command: Vec<String>,
    /// Default: `/root/repo` when it exists in the guest, else `/root`.
    #[serde(default)]
    pub cwd: Option<String>,
    /// `KEY=VALUE` entries.
    #[serde(default)]
    pub env: Vec<String>,
    #[serde(default)]
    pub stdin_mode: StdinMode,
    #[serde(default)]
    pub require_commands: Vec<String>,
}

/// Where a session's reported state comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SessionSource {
    /// Asked the guest just now.
    Guest,
    /// The VM is not running: the state last seen, kept by the daemon.
    VmNotRunning,
    /// The VM runs but its guest no longer knows the session (it was
    /// rebooted, which ends every session): the state last seen.
    GuestForgot,
    /// The guest agent did not answer: the state last seen.
    AgentUnreachable,
    /// A value this version does not know (a newer daemon).
    #[serde(other)]
    Unknown,
}

/// One session (`GET /v1/vms/{vm}/sessions/{name}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionInfo {
    pub id: String,
    pub name: String,
    pub vm: String,
    pub command: Vec<String>,
    pub cwd: String,
    pub env: Vec<String>,
    pub stdin_mode: StdinMode,
    pub status: SessionStatus,
    pub source: SessionSource,
    /// Why the state is not live, when `source` is not `guest`.
    #[serde(default)]
    pub note: Option<String>,
    pub pid: Option<u32>,
    /// Milliseconds since the Unix epoch.
    pub started_at_ms: Option<u64>,
    pub ended_at_ms: Option<u64>,
    /// The end of stderr once the session ended (a launch failure's reason).
    #[serde(default)]
    pub stderr_tail: Option<String>,
}

/// `GET /v1/vms/{vm}/sessions`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionList {
    pub sessions: Vec<SessionInfo>,
}

/// `GET /v1/sessions`: every VM's session names (completion).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionNames {
    pub sessions: Vec<SessionName>,
}

/// A session's name and VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionName {
    pub vm: String,
    pub name: String,
}

/// `POST /v1/vms/{vm}/sessions/{name}/stop`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionStopRequest {
    /// Seconds between SIGTERM and SIGKILL (default 10).
    #[serde(default)]
    pub grace_secs: Option<u64>,
}

/// `POST /v1/vms/{vm}/sessions/{name}/kill`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionKillRequest {
    /// A name (`TERM`, `SIGKILL`, `hup`) or a number; default `KILL`.
    #[serde(default)]
    pub signal: Option<String>,
}

/// One line of `GET /v1/vms/{vm}/sessions/{name}/logs` (NDJSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionLogLine {
    pub stream: LogStream,
    pub data: String,
}

/// Longest session name.
pub const MAX_SESSION_NAME_LEN: usize = 64;

/// A session name: 1-64 of `[A-Za-z0-9._-]`, not starting with `-` or `.`.
pub fn validate_session_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= MAX_SESSION_NAME_LEN
        && !name.starts_with(['-', '.'])
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "session name {name:?} must be 1-{MAX_SESSION_NAME_LEN} letters, digits, '.', '_' or '-', not starting with '-' or '.'"
        ))
    }
}

/// Signal numbers by name, as `kill -l` lists them on Linux x86_64.
pub const SIGNALS: &[(&str, i32)] = &[
    ("HUP", 1),
    ("INT", 2),
    ("QUIT", 3),
    ("ILL", 4),
    ("TRAP", 5),
    ("ABRT", 6),
    ("BUS", 7),
    ("FPE", 8),
    ("KILL", 9),
    ("USR1", 10),
    ("SEGV", 11),
    ("USR2", 12),
    ("PIPE", 13),
    ("ALRM", 14),
    ("TERM", 15),
    ("STKFLT", 16),
    ("CHLD", 17),
    ("CONT", 18),
    ("STOP", 19),
    ("TSTP", 20),
    ("TTIN", 21),
    ("TTOU", 22),
    ("URG", 23),
    ("XCPU", 24),
    ("XFSZ", 25),
    ("VTALRM", 26),
    ("PROF", 27),
    ("WINCH", 28),
    ("IO", 29),
    ("PWR", 30),
    ("SYS", 31),
];

/// `KILL`, `SIGKILL`, `kill` or `9` → 9; `None` for anything else.
pub fn parse_signal(s: &str) -> Option<i32> {
    if let Ok(n) = s.parse::<i32>() {
        return SIGNALS.iter().any(|&(_, v)| v == n).then_some(n);
    }
    let upper = s.to_ascii_uppercase();
    let name = upper.strip_prefix("SIG").unwrap_or(&upper);
    SIGNALS.iter().find(|&&(n, _)| n == name).map(|&(_, v)| v)
}

/// `9` → `KILL`.
pub fn signal_name(n: i32) -> Option<&'static str> {
    SIGNALS
        .iter()
        .find(|&&(_, v)| v == n)
        .map(|&(name, _)| name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        assert!(validate_session_name("web-1.dev_x").is_ok());
        for bad in ["", "-x", ".x", "a/b", "a b", &"x".repeat(65)] {
            assert!(validate_session_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn signals_parse_by_name_and_number() {
        assert_eq!(parse_signal("KILL"), Some(9));
        assert_eq!(parse_signal("sigterm"), Some(15));
        assert_eq!(parse_signal("2"), Some(2));
        assert_eq!(parse_signal("0"), None);
        assert_eq!(parse_signal("NOPE"), None);
        assert_eq!(signal_name(9), Some("KILL"));
    }
}
