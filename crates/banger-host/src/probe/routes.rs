//! Host IPv4 routes and their overlap with banger's `cidr`.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use super::ProbeError;

/// One IPv4 route of the host's main table (default routes are left out:
/// they cover everything and never conflict with a local subnet).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostRoute {
    pub dst: Ipv4Net,
    /// Output device; empty for routes without one (`blackhole`, `unreachable`).
    pub dev: String,
}

/// Where the routes were read from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RouteSource {
    /// `ip -j -4 route show`.
    Ip(PathBuf),
    /// `/proc/net/route` (no `ip` binary, or it failed).
    Procfs(PathBuf),
}

/// Parse `ip -j -4 route show` output.
pub fn parse_ip_json_routes(json: &str) -> Result<Vec<HostRoute>, ProbeError> {
    let err = |message: String| ProbeError::Routes {
        source_name: "ip -j route".into(),
        message,
    };
    let entries: Vec<serde_json::Value> =
        serde_json::from_str(json).map_err(|e| err(e.to_string()))?;
    let mut routes = Vec::new();
    for e in entries {
        let dst = e
            .get("dst")
            .and_then(|d| d.as_str())
            .ok_or_else(|| err(format!("entry without dst: {e}")))?;
        if dst == "default" {
            continue;
        }
        let dst = if dst.contains('/') {
            dst.parse::<Ipv4Net>()
                .map_err(|x| err(format!("bad dst {dst:?}: {x}")))?
        } else {
            let ip: Ipv4Addr = dst
                .parse()
                .map_err(|x| err(format!("bad dst {dst:?}: {x}")))?;
            Ipv4Net::from(ip)
        };
        let dev = e
            .get("dev")
            .and_then(|d| d.as_str())
            .unwrap_or_default()
            .to_owned();
        routes.push(HostRoute {
            dst: dst.trunc(),
            dev,
        });
    }
    Ok(routes)
}

/// Parse `/proc/net/route` (hex, host byte order on little-endian x86).
pub fn parse_proc_net_route(text: &str) -> Result<Vec<HostRoute>, ProbeError> {
    let err = |message: String| ProbeError::Routes {
        source_name: "/proc/net/route".into(),
        message,
    };
    let mut routes = Vec::new();
    for line in text.lines().skip(1).filter(|l| !l.trim().is_empty()) {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 8 {
            return Err(err(format!("short line {line:?}")));
        }
        let hex = |s: &str| {
            u32::from_str_radix(s, 16)
                .map(|v| Ipv4Addr::from(v.to_ne_bytes()))
                .map_err(|e| err(format!("bad hex {s:?} in {line:?}: {e}")))
        };
        let (dst, mask) = (hex(f[1])?, hex(f[7])?);
        let prefix = u32::from(mask).leading_ones() as u8;
        if u32::from(mask) != u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0) {
            return Err(err(format!("non-contiguous mask {mask} in {line:?}")));
        }
        if prefix == 0 {
            continue;
        }
        let dst = Ipv4Net::new(dst, prefix).map_err(|e| err(e.to_string()))?;
        routes.push(HostRoute {
            dst: dst.trunc(),
            dev: f[0].to_owned(),
        });
    }
    Ok(routes)
}

/// The host's routes: `ip -j -4 route show` with `ip` from `search_path`,
/// else `proc_net_route`.
pub fn read_host_routes(
    search_path: &[PathBuf],
    proc_net_route: &Path,
) -> Result<(Vec<HostRoute>, RouteSource), ProbeError> {
    if let Ok(ip) = super::locate_program("ip", None, search_path) {
        let out = std::process::Command::new(&ip)
            .args(["-j", "-4", "route", "show"])
            .env("LC_ALL", "C")
            .stdin(std::process::Stdio::null())
            .output();
        if let Some(out) = out.ok().filter(|o| o.status.success()) {
            let routes = parse_ip_json_routes(&String::from_utf8_lossy(&out.stdout))?;
            return Ok((routes, RouteSource::Ip(ip)));
        }
    }
    let text = std::fs::read_to_string(proc_net_route)
        .map_err(|e| ProbeError::io("read", proc_net_route, e))?;
    Ok((
        parse_proc_net_route(&text)?,
        RouteSource::Procfs(proc_net_route.to_owned()),
    ))
}

/// Whether two networks share any address.
pub fn nets_overlap(a: &Ipv4Net, b: &Ipv4Net) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// Routes overlapping `cidr`, except those through banger's own bridge.
pub fn overlapping_routes(
    cidr: &Ipv4Net,
    routes: &[HostRoute],
    own_bridge: &str,
) -> Vec<HostRoute> {
    routes
        .iter()
        .filter(|r| r.dev != own_bridge && nets_overlap(cidr, &r.dst))
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    #[test]
    fn overlap_math() {
        let cidr = net("172.16.0.0/24");
        assert!(nets_overlap(&cidr, &net("172.16.0.0/24")));
        assert!(nets_overlap(&cidr, &net("172.16.0.0/12")));
        assert!(nets_overlap(&cidr, &net("172.16.0.128/25")));
        assert!(nets_overlap(&cidr, &net("172.16.0.77/32")));
        assert!(!nets_overlap(&cidr, &net("172.16.1.0/24")));
        assert!(!nets_overlap(&cidr, &net("172.15.255.0/24")));
        assert!(!nets_overlap(&cidr, &net("10.0.0.0/8")));
        assert!(nets_overlap(&net("10.0.0.0/8"), &net("0.0.0.0/0")));
    }

    #[test]
    fn own_bridge_and_unrelated_routes_are_not_conflicts() {
        let routes = vec![
            HostRoute {
                dst: net("172.16.0.0/24"),
                dev: "banger0".into(),
            },
            HostRoute {
                dst: net("192.0.2.0/24"),
                dev: "eth0".into(),
            },
            HostRoute {
                dst: net("172.16.0.0/16"),
                dev: "docker0".into(),
            },
            HostRoute {
                dst: net("172.16.0.9/32"),
                dev: String::new(),
            },
        ];
        let hits = overlapping_routes(&net("172.16.0.0/24"), &routes, "banger0");
        assert_eq!(hits, routes[2..].to_vec());
        assert!(overlapping_routes(&net("10.9.0.0/24"), &routes, "banger0").is_empty());
    }

    #[test]
    fn ip_json_routes_parse() {
        let json = r#"[{"dst":"default","gateway":"192.0.2.1","dev":"eth0","flags":[]},
            {"dst":"192.0.2.0/24","dev":"eth0","protocol":"kernel","scope":"link","prefsrc":"192.0.2.2","flags":[]},
            {"dst":"10.1.2.3","gateway":"192.0.2.1","dev":"eth0","flags":[]},
            {"type":"blackhole","dst":"172.16.0.0/12","flags":[]}]"#;
        let routes = parse_ip_json_routes(json).unwrap();
        assert_eq!(
            routes,
            vec![
                HostRoute {
                    dst: net("192.0.2.0/24"),
                    dev: "eth0".into()
                },
                HostRoute {
                    dst: net("10.1.2.3/32"),
                    dev: "eth0".into()
                },
                HostRoute {
                    dst: net("172.16.0.0/12"),
                    dev: String::new()
                },
            ]
        );
        assert!(parse_ip_json_routes("[]").unwrap().is_empty());
        let err = parse_ip_json_routes(r#"[{"dst":"nonsense/99"}]"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("nonsense/99"), "{err}");
        assert!(parse_ip_json_routes("not json").is_err());
    }

    #[test]
    fn proc_net_route_parses() {
        let text =
            "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
            eth0\t00000000\t010200C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n\
            eth0\t000200C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n\
            docker0\t000010AC\t00000000\t0001\t0\t0\t0\t0000FFFF\t0\t0\t0\n";
        assert_eq!(
            parse_proc_net_route(text).unwrap(),
            vec![
                HostRoute {
                    dst: net("192.0.2.0/24"),
                    dev: "eth0".into()
                },
                HostRoute {
                    dst: net("172.16.0.0/16"),
                    dev: "docker0".into()
                },
            ]
        );
        let bad = "Iface\tDestination\n eth0\tZZ\t0\t0\t0\t0\t0\t00FFFFFF\n";
        assert!(parse_proc_net_route(bad)
            .unwrap_err()
            .to_string()
            .contains("ZZ"));
        let holey = "h\neth0\t000200C0\t0\t0\t0\t0\t0\t00FF00FF\n";
        assert!(parse_proc_net_route(holey)
            .unwrap_err()
            .to_string()
            .contains("non-contiguous"));
    }

    #[test]
    fn both_route_sources_agree_on_this_host() {
        let search = super::super::search_path_from(std::env::var_os("PATH").as_deref());
        let proc = Path::new("/proc/net/route");
        let (mut via_ip, source) = read_host_routes(&search, proc).unwrap();
        if !matches!(source, RouteSource::Ip(_)) {
            banger_test_support::skip("`ip` is not installed: nothing to compare with");
            return;
        }
        let mut via_proc = parse_proc_net_route(&std::fs::read_to_string(proc).unwrap()).unwrap();
        // /proc/net/route lists only the main table, like `ip route show`.
        let key = |r: &HostRoute| (r.dst, r.dev.clone());
        via_ip.retain(|r| !r.dev.is_empty());
        via_ip.sort_by_key(key);
        via_proc.sort_by_key(key);
        assert_eq!(via_ip, via_proc);
    }
}
