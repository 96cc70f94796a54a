//! `/proc` parsing shared by host and guest: `/proc/PID/stat` (process
//! state and start time: the VMM supervisor, the CLI's daemon check) and
//! `/proc/meminfo` fields (host memory for VM defaults, guest stats) and
//! the rows of `/proc/net/{tcp,tcp6,udp,udp6}` (the agent's port list, the
//! daemon's idle check).

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// What `/proc/PID/stat` says about a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcStat {
    /// Field 3: `R`, `S`, `D`, `Z` (zombie), `X` (dead), ...
    pub state: char,
    /// Field 22: start time in clock ticks after boot.
    pub start_time: u64,
}

impl ProcStat {
    /// A zombie or a dead task (`Z`, `X`, and `x` from kernels 2.6.33–3.13):
    /// it has exited even if its parent has not reaped it yet.
    pub fn has_exited(&self) -> bool {
        matches!(self.state, 'Z' | 'X' | 'x')
    }
}

/// Why `/proc/PID/stat` gave no [`ProcStat`].
#[derive(Debug, thiserror::Error)]
pub enum StatError {
    #[error("process {pid} does not exist")]
    NoSuchProcess { pid: u32 },
    #[error("cannot read /proc/{pid}/stat: {source}")]
    Read { pid: u32, source: io::Error },
    #[error("/proc/{pid}/stat is malformed: {content:?}")]
    Malformed { pid: u32, content: String },
}

/// Parse the contents of `/proc/PID/stat`. The command name (field 2) may
/// contain spaces and parentheses, so fields are counted from the last `)`.
pub fn parse_stat(content: &str) -> Option<ProcStat> {
    let rest = &content[content.rfind(')')? + 1..];
    let mut fields = rest.split_ascii_whitespace();
    let state = fields.next()?.chars().next()?;
    // After the state (field 3), field 22 is the 19th remaining field.
    let start_time = fields.nth(18)?.parse().ok()?;
    Some(ProcStat { state, start_time })
}

/// Read and parse `/proc/PID/stat`.
pub fn read_stat(pid: u32) -> Result<ProcStat, StatError> {
    let content = match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(c) => c,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(StatError::NoSuchProcess { pid })
        }
        // ESRCH (3 on Linux): the process exited between open and read.
        Err(e) if e.raw_os_error() == Some(3) => return Err(StatError::NoSuchProcess { pid }),
        Err(source) => return Err(StatError::Read { pid, source }),
    };
    parse_stat(&content).ok_or(StatError::Malformed { pid, content })
}

/// Why a `/proc/meminfo` field could not be read; `line` is 1-based.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MeminfoError {
    #[error("{key} missing")]
    Missing { key: String },
    #[error("line {line}: {key} has no numeric value")]
    NotNumeric { key: String, line: usize },
    #[error("line {line}: {key} has unknown unit {unit:?}")]
    UnknownUnit {
        key: String,
        line: usize,
        unit: String,
    },
    #[error("line {line}: {key} overflows 64 bits in bytes")]
    Overflow { key: String, line: usize },
}

/// Field `key` (e.g. `MemTotal`) of `/proc/meminfo` text, in bytes: the
/// value is in `kB` (KiB), or a plain count when no unit follows.
pub fn meminfo_bytes(text: &str, key: &str) -> Result<u64, MeminfoError> {
    for (i, line) in text.lines().enumerate() {
        let Some((k, rest)) = line.split_once(':') else {
            continue;
        };
        if k != key {
            continue;
        }
        let (key, line) = (key.to_owned(), i + 1);
        let mut parts = rest.split_whitespace();
        let value: u64 =
            parts
                .next()
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| MeminfoError::NotNumeric {
                    key: key.clone(),
                    line,
                })?;
        let scale = match parts.next() {
            Some("kB") => 1024,
            None => 1,
            Some(unit) => {
                return Err(MeminfoError::UnknownUnit {
                    key,
                    line,
                    unit: unit.to_owned(),
                })
            }
        };
        return value
            .checked_mul(scale)
            .ok_or(MeminfoError::Overflow { key, line });
    }
    Err(MeminfoError::Missing {
        key: key.to_owned(),
    })
}

/// One row of `/proc/net/{tcp,tcp6,udp,udp6}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NetRow {
    /// `local_address`.
    pub local: (IpAddr, u16),
    /// `rem_address`.
    pub remote: (IpAddr, u16),
    /// `st`: the kernel's TCP state number (`01` ESTABLISHED, `0A` LISTEN;
    /// `07` for an unconnected UDP socket).
    pub state: u8,
    /// The socket inode, as in `/proc/PID/fd/*` -> `socket:[inode]`.
    pub inode: u64,
}

/// A row of a `/proc/net` table that does not parse: its 1-based line
/// number and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {reason}")]
pub struct NetRowError {
    /// 1-based, the header being line 1.
    pub line: usize,
    /// What is wrong with it.
    pub reason: &'static str,
}

/// The rows of a `/proc/net` socket table (`v6` for `tcp6`/`udp6`), header
/// skipped and blank lines ignored; a malformed row is an `Err` the caller
/// may skip or report.
pub fn net_rows(text: &str, v6: bool) -> impl Iterator<Item = Result<NetRow, NetRowError>> + '_ {
    text.lines()
        .enumerate()
        .skip(1)
        .filter(|(_, line)| !line.trim().is_empty())
        .map(move |(i, line)| {
            let bad = |reason| NetRowError {
                line: i + 1,
                reason,
            };
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() < 10 {
                return Err(bad("fewer than 10 fields"));
            }
            Ok(NetRow {
                local: parse_endpoint(fields[1], v6).ok_or_else(|| bad("bad local address"))?,
                remote: parse_endpoint(fields[2], v6).ok_or_else(|| bad("bad remote address"))?,
                state: u8::from_str_radix(fields[3], 16).map_err(|_| bad("bad state"))?,
                inode: fields[9].parse().map_err(|_| bad("bad inode"))?,
            })
        })
}

/// `ADDR:PORT` as printed by the kernel: the address is the in-memory
/// (network order) bytes printed as native-endian 32-bit words.
fn parse_endpoint(s: &str, v6: bool) -> Option<(IpAddr, u16)> {
    let (addr, port) = s.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let word = |i: usize| -> Option<[u8; 4]> {
        let hex = addr.get(i * 8..i * 8 + 8)?;
        Some(u32::from_str_radix(hex, 16).ok()?.to_ne_bytes())
    };
    let ip = if v6 {
        if addr.len() != 32 {
            return None;
        }
        let mut bytes = [0u8; 16];
        for i in 0..4 {
            bytes[i * 4..i * 4 + 4].copy_from_slice(&word(i)?);
        }
        IpAddr::V6(Ipv6Addr::from(bytes))
    } else {
        if addr.len() != 8 {
            return None;
        }
        IpAddr::V4(Ipv4Addr::from(word(0)?))
    };
    Some((ip, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_hostile_command_names() {
        let tail = "S 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 424242 20 21";
        let stat = parse_stat(&format!("123 (qemu) x (y) {tail}")).unwrap();
        assert_eq!(
            stat,
            ProcStat {
                state: 'S',
                start_time: 424242
            }
        );
        // A name that looks like a zombie state does not fool the parser.
        let stat = parse_stat(&format!("7 (a) Z (b) {tail}")).unwrap();
        assert!(!stat.has_exited());
        assert!(parse_stat("123 (truncated) S 1 2").is_none());
        assert!(parse_stat("no parenthesis").is_none());
        assert!(parse_stat("1 (x) S 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 nan").is_none());
    }

    #[test]
    fn meminfo_fields() {
        let text = "MemTotal:       16303588 kB\nMemFree:         1234 kB\nHugePages_Total:       0\nMemAvailable: x kB\nOdd: 5 MB\nHuge: 18446744073709551615 kB\n";
        assert_eq!(meminfo_bytes(text, "MemTotal"), Ok(16303588 * 1024));
        assert_eq!(meminfo_bytes(text, "HugePages_Total"), Ok(0));
        // A key is matched whole: `Mem` is not `MemTotal`.
        assert!(matches!(
            meminfo_bytes(text, "Mem"),
            Err(MeminfoError::Missing { .. })
        ));
        assert_eq!(
            meminfo_bytes(text, "MemAvailable"),
            Err(MeminfoError::NotNumeric {
                key: "MemAvailable".into(),
                line: 4
            })
        );
        assert!(matches!(
            meminfo_bytes(text, "Odd"),
            Err(MeminfoError::UnknownUnit { line: 5, .. })
        ));
        assert!(matches!(
            meminfo_bytes(text, "Huge"),
            Err(MeminfoError::Overflow { line: 6, .. })
        ));
        let real = std::fs::read_to_string("/proc/meminfo").unwrap();
        assert!(meminfo_bytes(&real, "MemTotal").unwrap() > 0);
    }

    #[test]
    fn exited_states() {
        let st = |state| ProcStat {
            state,
            start_time: 0,
        };
        // The CLI's copy missed `x`; the VMM supervisor's had it.
        for s in ['Z', 'X', 'x'] {
            assert!(st(s).has_exited(), "{s}");
        }
        for s in ['R', 'S', 'D', 'T', 't', 'I'] {
            assert!(!st(s).has_exited(), "{s}");
        }
    }

    #[test]
    fn reads_this_process_and_a_reaped_one() {
        let me = read_stat(std::process::id()).unwrap();
        assert!(!me.has_exited());
        assert!(me.start_time > 0);
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        assert!(matches!(
            read_stat(pid),
            Err(StatError::NoSuchProcess { pid: p }) if p == pid
        ));
    }
}
