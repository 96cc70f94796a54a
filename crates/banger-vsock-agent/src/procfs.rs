//! What the agent reports, read from `/proc` and statvfs: listening
//! sockets with their processes, uptime, load, memory and disk usage.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use banger_wire::guest::{DiskUsage, GuestStats, ListeningPort};

/// Errors reading `/proc` or a filesystem's usage.
#[derive(Debug, thiserror::Error)]
pub enum ProcError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} line {line}: {reason}")]
    Parse {
        path: PathBuf,
        line: usize,
        reason: String,
    },
    #[error("cannot statvfs {path}: {source}")]
    Statvfs { path: PathBuf, source: nix::Error },
}

/// A socket table of `/proc/net`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Proto {
    /// `/proc/net/tcp`
    Tcp,
    /// `/proc/net/tcp6`
    Tcp6,
    /// `/proc/net/udp`
    Udp,
    /// `/proc/net/udp6`
    Udp6,
}

impl Proto {
    /// Every table, in report order.
    pub const ALL: [Proto; 4] = [Proto::Tcp, Proto::Tcp6, Proto::Udp, Proto::Udp6];

    /// The table's file name and the `proto` of [`ListeningPort`].
    pub fn as_str(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Tcp6 => "tcp6",
            Proto::Udp => "udp",
            Proto::Udp6 => "udp6",
        }
    }

    fn is_v6(self) -> bool {
        matches!(self, Proto::Tcp6 | Proto::Udp6)
    }

    fn is_tcp(self) -> bool {
        matches!(self, Proto::Tcp | Proto::Tcp6)
    }
}

/// A listening (TCP) or bound, unconnected (UDP) socket from `/proc/net`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SocketEntry {
    /// Which table it came from.
    pub proto: Proto,
    /// Local address.
    pub address: IpAddr,
    /// Local port.
    pub port: u16,
    /// Socket inode, matched against `/proc/PID/fd/*` -> `socket:[inode]`.
    pub inode: u64,
}

/// `st` of a listening TCP socket.
const TCP_LISTEN: u8 = 0x0A;
/// `st` of a UDP socket that is not connected (`TCP_CLOSE` in the kernel).
const UDP_UNCONNECTED: u8 = 0x07;

/// The listening sockets in the text of `/proc/net/{tcp,tcp6,udp,udp6}`.
///
/// TCP: state LISTEN. UDP: unconnected sockets with a local port (a
/// connected UDP socket is a client, e.g. a DNS lookup in flight).
pub fn parse_net_table(
    proto: Proto,
    path: &Path,
    text: &str,
) -> Result<Vec<SocketEntry>, ProcError> {
    let mut out = Vec::new();
    for row in banger_fs::proc::net_rows(text, proto.is_v6()) {
        let row = row.map_err(|e| ProcError::Parse {
            path: path.to_owned(),
            line: e.line,
            reason: e.reason.to_owned(),
        })?;
        let listening = if proto.is_tcp() {
            row.state == TCP_LISTEN
        } else {
            row.state == UDP_UNCONNECTED && row.remote.1 == 0 && row.local.1 != 0
        };
        if listening {
            out.push(SocketEntry {
                proto,
                address: row.local.0,
                port: row.local.1,
                inode: row.inode,
            });
        }
    }
    Ok(out)
}

/// Seconds since boot from the text of `/proc/uptime`.
pub fn parse_uptime(path: &Path, text: &str) -> Result<u64, ProcError> {
    text.split_whitespace()
        .next()
        .and_then(|s| s.parse::<f64>().ok())
        .map(|secs| secs as u64)
        .ok_or_else(|| ProcError::Parse {
            path: path.to_owned(),
            line: 1,
            reason: "expected seconds as the first field".to_owned(),
        })
}

/// The 1, 5 and 15 minute load averages from the text of `/proc/loadavg`.
pub fn parse_loadavg(path: &Path, text: &str) -> Result<(f64, f64, f64), ProcError> {
    let mut it = text.split_whitespace().map(|s| s.parse::<f64>().ok());
    match (it.next(), it.next(), it.next()) {
        (Some(Some(a)), Some(Some(b)), Some(Some(c))) => Ok((a, b, c)),
        _ => Err(ProcError::Parse {
            path: path.to_owned(),
            line: 1,
            reason: "expected three load averages".to_owned(),
        }),
    }
}

/// `(MemTotal, MemAvailable)` in bytes from the text of `/proc/meminfo`.
pub fn parse_meminfo(path: &Path, text: &str) -> Result<(u64, u64), ProcError> {
    use banger_fs::proc::{meminfo_bytes, MeminfoError};
    let field = |key| {
        meminfo_bytes(text, key).map_err(|e| ProcError::Parse {
            path: path.to_owned(),
            line: match &e {
                MeminfoError::Missing { .. } => 0,
                MeminfoError::NotNumeric { line, .. }
                | MeminfoError::UnknownUnit { line, .. }
                | MeminfoError::Overflow { line, .. } => *line,
            },
            reason: e.to_string(),
        })
    };
    Ok((field("MemTotal")?, field("MemAvailable")?))
}

/// The socket inode in a `/proc/PID/fd/N` link target (`socket:[12345]`).
fn socket_inode(link: &Path) -> Option<u64> {
    link.to_str()?
        .strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

/// Map socket inodes to the lowest pid holding them and its `comm`.
///
/// Processes that exit or whose fds cannot be read while we walk are
/// skipped: the answer is a snapshot.
pub fn socket_owners(proc_root: &Path) -> HashMap<u64, (u32, String)> {
    let mut pids: Vec<u32> = match std::fs::read_dir(proc_root) {
        Ok(d) => d
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .collect(),
        Err(_) => return HashMap::new(),
    };
    pids.sort_unstable();
    let mut owners = HashMap::new();
    for pid in pids {
        let dir = proc_root.join(pid.to_string());
        let Ok(fds) = std::fs::read_dir(dir.join("fd")) else {
            continue;
        };
        let mut comm = None;
        for fd in fds.filter_map(Result::ok) {
            let Some(inode) = std::fs::read_link(fd.path())
                .ok()
                .as_deref()
                .and_then(socket_inode)
            else {
                continue;
            };
            if owners.contains_key(&inode) {
                continue;
            }
            let name = comm
                .get_or_insert_with(|| {
                    std::fs::read_to_string(dir.join("comm"))
                        .map(|s| s.trim_end_matches('\n').to_owned())
                        .unwrap_or_default()
                })
                .clone();
            owners.insert(inode, (pid, name));
        }
    }
    owners
}

/// Every listening TCP/UDP socket, IPv4 and IPv6, with its process.
pub fn listening_ports(proc_root: &Path) -> Result<Vec<ListeningPort>, ProcError> {
    let mut entries = Vec::new();
    for proto in Proto::ALL {
        let path = proc_root.join("net").join(proto.as_str());
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            // tcp6/udp6 are absent when IPv6 is disabled.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(source) => return Err(ProcError::Read { path, source }),
        };
        entries.extend(parse_net_table(proto, &path, &text)?);
    }
    let owners = socket_owners(proc_root);
    let mut ports: Vec<ListeningPort> = entries
        .into_iter()
        .map(|e| {
            let owner = owners.get(&e.inode);
            ListeningPort {
                proto: e.proto.as_str().to_owned(),
                address: e.address.to_string(),
                port: e.port,
                pid: owner.map(|o| o.0),
                process: owner.map(|o| o.1.clone()),
            }
        })
        .collect();
    ports.sort_by(|a, b| (&a.proto, a.port, &a.address).cmp(&(&b.proto, b.port, &b.address)));
    ports.dedup();
    Ok(ports)
}

fn read(path: PathBuf) -> Result<(PathBuf, String), ProcError> {
    match std::fs::read_to_string(&path) {
        Ok(t) => Ok((path, t)),
        Err(source) => Err(ProcError::Read { path, source }),
    }
}

/// Seconds since boot.
pub fn uptime_secs(proc_root: &Path) -> Result<u64, ProcError> {
    let (path, text) = read(proc_root.join("uptime"))?;
    parse_uptime(&path, &text)
}

/// Usage of the filesystem holding `path`.
pub fn disk_usage(path: &Path) -> Result<DiskUsage, ProcError> {
    let st = nix::sys::statvfs::statvfs(path).map_err(|source| ProcError::Statvfs {
        path: path.to_owned(),
        source,
    })?;
    let frsize = st.fragment_size();
    let total = st.blocks() * frsize;
    let free = st.blocks_free() * frsize;
    Ok(DiskUsage {
        mount: path.display().to_string(),
        total_bytes: total,
        used_bytes: total.saturating_sub(free),
    })
}

/// Load, memory, and usage of `root_mount` and `work_mount`. The work disk
/// is `None` when `work_mount` is not a separate filesystem (the work disk
/// did not mount), so the root disk is not reported twice.
pub fn guest_stats(
    proc_root: &Path,
    root_mount: &Path,
    work_mount: &Path,
) -> Result<GuestStats, ProcError> {
    let (path, text) = read(proc_root.join("loadavg"))?;
    let (load1, load5, load15) = parse_loadavg(&path, &text)?;
    let (path, text) = read(proc_root.join("meminfo"))?;
    let (mem_total_bytes, mem_available_bytes) = parse_meminfo(&path, &text)?;
    let root_disk = disk_usage(root_mount).ok();
    let separate = match (
        nix::sys::stat::stat(root_mount),
        nix::sys::stat::stat(work_mount),
    ) {
        (Ok(r), Ok(w)) => r.st_dev != w.st_dev,
        _ => false,
    };
    let work_disk = if separate {
        disk_usage(work_mount).ok()
    } else {
        None
    };
    Ok(GuestStats {
        load1,
        load5,
        load15,
        mem_total_bytes,
        mem_available_bytes,
        root_disk,
        work_disk,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    // Captured from a Debian 12 guest with sshd, systemd-resolved-free DNS
    // lookups in flight, and a web server on IPv4 and IPv6.
    const TCP: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 14211 1 0000000000000000 100 0 0 10 0
   1: 0100007F:0CEA 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 20817 1 0000000000000000 100 0 0 10 0
   2: 0F02000A:0016 0202000A:D5C2 01 00000000:00000000 02:0009FB8C 00000000     0        0 20101 2 0000000000000000 20 4 29 10 -1
   3: 0F02000A:A2F6 5DB8D822:0050 06 00000000:00000000 03:00001634 00000000     0        0 0 3 0000000000000000
";
    const TCP6: &str = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000000000000:0016 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 14213 1 0000000000000000 100 0 0 10 0
   1: 00000000000000000000000001000000:1F90 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 20999 1 0000000000000000 100 0 0 10 0
   2: 0000000000000000FFFF00000100007F:0050 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 21000 1 0000000000000000 100 0 0 10 0
   3: B80D01200000000000000000010000FE:0016 B80D01200000000000000000020000FE:C350 01 00000000:00000000 02:00000E2A 00000000     0        0 21001 4 0000000000000000 20 4 30 10 -1
";
    const UDP: &str = "   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops
  247: 00000000:0044 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 15880 2 0000000000000000 0
  371: 3500007F:0035 00000000:0000 07 00000000:00000000 00:00000000 00000000   101        0 15002 2 0000000000000000 0
  900: 0F02000A:E2B1 0202000A:0035 01 00000000:00000000 00:00000000 00000000     0        0 22222 2 0000000000000000 0
";
    const UDP6: &str = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops
  110: 00000000000000000000000000000000:14E9 00000000000000000000000000000000:0000 07 00000000:00000000 00:00000000 00000000   104        0 16001 2 0000000000000000 0
";

    fn parse(proto: Proto, text: &str) -> Vec<(String, u16, u64)> {
        parse_net_table(proto, Path::new("/proc/net/x"), text)
            .unwrap()
            .into_iter()
            .map(|e| (e.address.to_string(), e.port, e.inode))
            .collect()
    }

    #[test]
    fn tcp_keeps_only_listeners() {
        assert_eq!(
            parse(Proto::Tcp, TCP),
            vec![
                ("0.0.0.0".into(), 22, 14211),
                ("127.0.0.1".into(), 3306, 20817)
            ]
        );
    }

    #[test]
    fn tcp6_addresses_including_v4_mapped() {
        assert_eq!(
            parse(Proto::Tcp6, TCP6),
            vec![
                ("::".into(), 22, 14213),
                ("::1".into(), 8080, 20999),
                ("::ffff:127.0.0.1".into(), 80, 21000),
            ]
        );
    }

    #[test]
    fn udp_skips_connected_sockets() {
        assert_eq!(
            parse(Proto::Udp, UDP),
            vec![
                ("0.0.0.0".into(), 68, 15880),
                ("127.0.0.53".into(), 53, 15002)
            ]
        );
        assert_eq!(parse(Proto::Udp6, UDP6), vec![("::".into(), 5353, 16001)]);
    }

    #[test]
    fn malformed_table_names_file_and_line() {
        let text = "header\n   0: 0100007F:0016 00000000:0000 0A 0:0 0:0 0 0 0 notanumber 1\n";
        let err = parse_net_table(Proto::Tcp, Path::new("/proc/net/tcp"), text).unwrap_err();
        assert_eq!(err.to_string(), "/proc/net/tcp line 2: bad inode");
        let err = parse_net_table(
            Proto::Tcp6,
            Path::new("/proc/net/tcp6"),
            "h\n 0: 0100007F:0016 x 0A\n",
        )
        .unwrap_err();
        assert!(err.to_string().contains("line 2"), "{err}");
    }

    #[test]
    fn uptime_loadavg_meminfo() {
        let p = Path::new("/proc/x");
        assert_eq!(parse_uptime(p, "3605.72 7011.30\n").unwrap(), 3605);
        assert_eq!(
            parse_loadavg(p, "0.52 0.31 0.12 2/141 1234\n").unwrap(),
            (0.52, 0.31, 0.12)
        );
        let meminfo = "MemTotal:        1004852 kB\nMemFree:          713588 kB\nMemAvailable:     812004 kB\nBuffers:           12000 kB\nHugePages_Total:       0\n";
        assert_eq!(
            parse_meminfo(p, meminfo).unwrap(),
            (1004852 * 1024, 812004 * 1024)
        );
        assert!(parse_meminfo(p, "MemFree: 1 kB\n").is_err());
        assert!(parse_loadavg(p, "0.1 x").is_err());
        assert!(parse_uptime(p, "").is_err());
    }

    #[test]
    fn socket_link_targets() {
        assert_eq!(socket_inode(Path::new("socket:[20817]")), Some(20817));
        assert_eq!(socket_inode(Path::new("pipe:[20817]")), None);
        assert_eq!(socket_inode(Path::new("/dev/null")), None);
    }

    /// The name the kernel gives this test process (`comm`: the executable
    /// name cut to 15 bytes).
    fn expected_comm() -> String {
        let exe = std::env::current_exe().unwrap();
        let name = exe.file_name().unwrap().to_string_lossy().into_owned();
        name.chars().take(15).collect()
    }

    #[test]
    fn finds_this_process_listeners_in_real_proc() {
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let tcp_port = tcp.local_addr().unwrap().port();
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let udp_port = udp.local_addr().unwrap().port();
        let tcp6 = std::net::TcpListener::bind("[::1]:0").ok();

        let ports = listening_ports(Path::new("/proc")).unwrap();
        let me = std::process::id();
        let find = |proto: &str, port: u16| {
            ports
                .iter()
                .find(|p| p.proto == proto && p.port == port)
                .unwrap_or_else(|| panic!("{proto} port {port} not in {ports:#?}"))
        };
        for (proto, port, addr) in [
            ("tcp", tcp_port, "127.0.0.1"),
            ("udp", udp_port, "127.0.0.1"),
        ] {
            let p = find(proto, port);
            assert_eq!(p.address, addr);
            assert_eq!(p.pid, Some(me));
            assert_eq!(p.process.as_deref(), Some(expected_comm().as_str()));
        }
        match tcp6 {
            Some(l) => {
                let p = find("tcp6", l.local_addr().unwrap().port());
                assert_eq!((p.address.as_str(), p.pid), ("::1", Some(me)));
            }
            None => eprintln!("no IPv6 loopback here: tcp6 part skipped"),
        }
    }

    #[test]
    fn real_stats_are_plausible() {
        let s = guest_stats(Path::new("/proc"), Path::new("/"), Path::new("/")).unwrap();
        assert!(s.mem_total_bytes > 0 && s.mem_available_bytes <= s.mem_total_bytes);
        assert!(s.load1 >= 0.0);
        let root = s.root_disk.unwrap();
        assert!(root.total_bytes > 0 && root.used_bytes <= root.total_bytes);
        assert_eq!(root.mount, "/");
        assert_eq!(s.work_disk, None, "same filesystem is not reported twice");
        assert!(uptime_secs(Path::new("/proc")).unwrap() > 0);
    }
}
