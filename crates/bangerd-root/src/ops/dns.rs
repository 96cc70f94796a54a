//! Port 53 and systemd-resolved for bangerd's `.vm` DNS server.
//!
//! bangerd runs as the owner and cannot bind port 53; rather than give it
//! `CAP_NET_BIND_SERVICE` (any low port, any address, for its whole life),
//! the helper binds exactly one UDP socket and one TCP listener on the
//! bridge address, port 53, and hands the descriptors over with
//! `SCM_RIGHTS` on the reply line ([`send_sockets`]). The daemon serves on
//! them unprivileged.

use std::net::{Ipv4Addr, SocketAddr, TcpListener, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::path::Path;

use banger_wire::helper::{HelperReply, HelperResponse};
use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
use tokio::net::unix::OwnedWriteHalf;
use tracing::info;

use super::{DnsSocket, OpError};
use crate::validate::IfaceName;

/// The port the `.vm` zone is served on.
pub const DNS_PORT: u16 = 53;

/// systemd-resolved's varlink socket: present while resolved runs.
const RESOLVED_SOCKET: &str = "/run/systemd/resolve/io.systemd.Resolve";

/// Bind UDP and TCP on `address`:53. The descriptors leave this process
/// only through [`send_sockets`], which closes them after sending.
pub fn bind(address: Ipv4Addr) -> Result<HelperResponse, OpError> {
    let at = SocketAddr::from((address, DNS_PORT));
    let err = |socket| move |source| OpError::DnsBind { socket, at, source };
    let udp = UdpSocket::bind(at).map_err(err(DnsSocket::Udp))?;
    // std sets SO_REUSEADDR on listeners: a restarted daemon rebinds at once.
    let tcp = TcpListener::bind(at).map_err(err(DnsSocket::Tcp))?;
    Ok(HelperResponse::DnsSockets {
        udp: udp.into_raw_fd(),
        tcp: tcp.into_raw_fd(),
    })
}

/// Write `reply` (a [`HelperResponse::DnsSockets`] from [`bind`]) with its
/// two descriptors attached, then close them here.
pub async fn send_sockets(
    writer: &mut OwnedWriteHalf,
    reply: &HelperReply,
    udp: RawFd,
    tcp: RawFd,
) -> std::io::Result<()> {
    // SAFETY: `udp` and `tcp` came from `into_raw_fd` in `bind` for this very
    // reply and nothing else owns them; wrapping them closes them on return.
    let fds = unsafe { [OwnedFd::from_raw_fd(udp), OwnedFd::from_raw_fd(tcp)] };
    let raw = [fds[0].as_raw_fd(), fds[1].as_raw_fd()];
    let mut line = serde_json::to_vec(reply).unwrap_or_default();
    line.push(b'\n');
    let stream = writer.as_ref();
    loop {
        stream.writable().await?;
        let sent = stream.try_io(tokio::io::Interest::WRITABLE, || {
            sendmsg::<()>(
                stream.as_raw_fd(),
                &[std::io::IoSlice::new(&line)],
                &[ControlMessage::ScmRights(&raw)],
                MsgFlags::MSG_NOSIGNAL,
                None,
            )
            .map_err(std::io::Error::from)
        });
        match sent {
            // The reply is one short line: a stream socket with an empty
            // buffer takes it whole, or fails.
            Ok(n) if n == line.len() => return Ok(()),
            Ok(n) => {
                return Err(std::io::Error::other(format!(
                    "sent {n} of {} bytes of the reply carrying the DNS sockets",
                    line.len()
                )))
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Whether systemd-resolved is running (its varlink socket exists).
pub fn resolved_running() -> bool {
    Path::new(RESOLVED_SOCKET).exists()
}

/// The fixed `resolvectl` invocations routing `.vm` to `address` via
/// `bridge`: DNS server, routing-only domain, never the default route.
pub fn resolvectl_argv(bridge: &IfaceName, address: Ipv4Addr) -> [Vec<String>; 3] {
    let b = bridge.to_string();
    [
        vec!["dns".into(), b.clone(), address.to_string()],
        vec!["domain".into(), b.clone(), "~vm".into()],
        vec!["default-route".into(), b, "false".into()],
    ]
}

/// Wire `.vm` routing into systemd-resolved for `bridge`; `false` (nothing
/// done, logged) when resolved is not running. resolved forgets per-link
/// settings when the link goes away, so tearing the bridge down undoes this.
pub async fn resolved_link(bridge: &IfaceName, address: Ipv4Addr) -> Result<bool, OpError> {
    if !resolved_running() {
        info!(%bridge, "systemd-resolved is not running; .vm routing left to the host (docs/dns-routing.md)");
        return Ok(false);
    }
    for argv in resolvectl_argv(bridge, address) {
        let out = tokio::process::Command::new("resolvectl")
            .args(&argv)
            .output()
            .await
            .map_err(|source| OpError::ResolvectlStart {
                args: argv.join(" "),
                source,
            })?;
        if !out.status.success() {
            return Err(OpError::ResolvectlFailed {
                args: argv.join(" "),
                status: out.status,
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            });
        }
    }
    info!(%bridge, %address, "systemd-resolved routes .vm to the bridge");
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolvectl_argv_is_fixed() {
        let argv = resolvectl_argv(
            &IfaceName::parse("banger0").unwrap(),
            Ipv4Addr::new(172, 16, 0, 1),
        );
        assert_eq!(argv[0], ["dns", "banger0", "172.16.0.1"]);
        assert_eq!(argv[1], ["domain", "banger0", "~vm"]);
        assert_eq!(argv[2], ["default-route", "banger0", "false"]);
    }

    #[test]
    fn bind_dns_takes_only_a_bridge_address_inside_the_range() {
        use crate::action::{Action, Policy};
        use banger_wire::helper::HelperRequest;
        let policy = Policy {
            owner_uid: 1000,
            owner_gid: None,
            cidr: "172.16.0.0/24".parse().unwrap(),
            allowed_dirs: vec![],
            build: None,
        };
        let parse = |address: &str| {
            Action::parse(
                HelperRequest::BindDns {
                    address: address.into(),
                },
                &policy,
            )
        };
        assert_eq!(
            parse("172.16.0.1/24").unwrap(),
            Action::BindDns {
                address: "172.16.0.1/24".parse().unwrap()
            }
        );
        for bad in [
            "10.0.0.1/24",
            "172.16.0.0/24",
            "172.16.0.1",
            "0.0.0.0/24",
            "::1/128",
        ] {
            assert!(parse(bad).is_err(), "{bad} accepted");
        }
        let link = Action::parse(
            HelperRequest::ResolvedLink {
                bridge: "banger0; rm".into(),
                address: "172.16.0.1/24".into(),
            },
            &policy,
        );
        assert!(link.is_err(), "interface names are validated");
    }

    #[test]
    fn bind_gives_two_open_descriptors() {
        // Port 53 needs root.
        if !banger_test_support::Gate::new().root().check() {
            return;
        }
        // In a private network namespace (this thread's only), never the host's.
        std::thread::spawn(|| {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare the netns");
            let up = std::process::Command::new("ip")
                .args(["link", "set", "lo", "up"])
                .status()
                .expect("run ip");
            assert!(up.success());
            let HelperResponse::DnsSockets { udp, tcp } = bind(Ipv4Addr::LOCALHOST).unwrap() else {
                panic!("bind answers DnsSockets");
            };
            // SAFETY: fresh descriptors from `bind`, owned by nobody else.
            let (udp, tcp) =
                unsafe { (UdpSocket::from_raw_fd(udp), TcpListener::from_raw_fd(tcp)) };
            assert_eq!(udp.local_addr().unwrap().port(), DNS_PORT);
            assert_eq!(tcp.local_addr().unwrap().port(), DNS_PORT);
        })
        .join()
        .expect("netns thread");
    }
}
