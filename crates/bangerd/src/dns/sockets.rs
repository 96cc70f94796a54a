//! Getting the port-53 sockets from the root helper: one
//! [`HelperRequest::BindDns`] on a fresh connection, answered by a reply
//! line that carries the UDP socket and the TCP listener as `SCM_RIGHTS`.

use std::io::{IoSliceMut, Write};
use std::net::{TcpListener, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use banger_wire::helper::{HelperReply, HelperRequest, HelperResponse};
use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};

use crate::helper::RootHelper;

/// How long the helper gets to bind and answer.
const TIMEOUT: Duration = Duration::from_secs(10);
/// Longest reply line accepted.
const MAX_REPLY: usize = 64 * 1024;

/// Why the helper did not hand over the sockets.
#[derive(Debug, thiserror::Error)]
pub enum SocketsError {
    #[error("no root helper: {reason}")]
    Unavailable { reason: String },
    #[error("talking to the root helper at {socket}: {source}")]
    Io {
        socket: PathBuf,
        source: std::io::Error,
    },
    #[error("the root helper refused bind_dns for {address}: {message}")]
    Refused { address: String, message: String },
    #[error("the root helper's bind_dns reply is unusable: {reason}")]
    BadReply { reason: String },
}

/// Ask `helper` for UDP and TCP sockets bound on port 53 of the bridge
/// address `address` (`IP/prefix`).
pub async fn from_helper(
    helper: &RootHelper,
    address: &str,
) -> Result<(UdpSocket, TcpListener), SocketsError> {
    let socket = match helper {
        RootHelper::Child { socket, .. } | RootHelper::System { socket } => socket.clone(),
        RootHelper::Unavailable { reason } => {
            return Err(SocketsError::Unavailable {
                reason: reason.clone(),
            })
        }
    };
    let address = address.to_owned();
    tokio::task::spawn_blocking(move || request(&socket, &address))
        .await
        .map_err(|e| SocketsError::BadReply {
            reason: e.to_string(),
        })?
}

fn request(socket: &Path, address: &str) -> Result<(UdpSocket, TcpListener), SocketsError> {
    let io = |source| SocketsError::Io {
        socket: socket.to_owned(),
        source,
    };
    let mut stream = UnixStream::connect(socket).map_err(io)?;
    stream.set_read_timeout(Some(TIMEOUT)).map_err(io)?;
    stream.set_write_timeout(Some(TIMEOUT)).map_err(io)?;
    let req = HelperRequest::BindDns {
        address: address.to_owned(),
    };
    let mut line = serde_json::to_vec(&req).unwrap_or_default();
    line.push(b'\n');
    stream.write_all(&line).map_err(io)?;
    let (reply, fds) = read_reply(&stream).map_err(io)?;
    let bad = |reason: String| SocketsError::BadReply { reason };
    let reply: HelperReply =
        serde_json::from_slice(&reply).map_err(|e| bad(format!("not a reply line: {e}")))?;
    match reply {
        Ok(HelperResponse::DnsSockets { .. }) => {}
        Ok(other) => return Err(bad(format!("unexpected answer {other:?}"))),
        Err(e) => {
            return Err(SocketsError::Refused {
                address: address.to_owned(),
                message: e.message,
            })
        }
    }
    let mut fds = fds.into_iter();
    let (Some(udp), Some(tcp), None) = (fds.next(), fds.next(), fds.next()) else {
        return Err(bad("expected exactly two descriptors".into()));
    };
    Ok((UdpSocket::from(udp), TcpListener::from(tcp)))
}

/// Read one reply line, collecting every descriptor that arrives with it
/// (owned at once, so none leaks whatever happens next).
fn read_reply(stream: &UnixStream) -> std::io::Result<(Vec<u8>, Vec<OwnedFd>)> {
    let mut line = Vec::new();
    let mut fds = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let mut cmsg = nix::cmsg_space!([RawFd; 4]);
        let mut iov = [IoSliceMut::new(&mut buf)];
        let msg = recvmsg::<()>(
            stream.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::MSG_CMSG_CLOEXEC,
        )
        .map_err(std::io::Error::from)?;
        let n = msg.bytes;
        for c in msg.cmsgs().map_err(std::io::Error::from)? {
            if let ControlMessageOwned::ScmRights(received) = c {
                for fd in received {
                    // SAFETY: the kernel just installed `fd` in this process
                    // for this message; nothing else refers to it.
                    fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
                }
            }
        }
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the helper closed the connection before answering",
            ));
        }
        line.extend_from_slice(&buf[..n]);
        if let Some(end) = line.iter().position(|b| *b == b'\n') {
            line.truncate(end);
            return Ok((line, fds));
        }
        if line.len() > MAX_REPLY {
            return Err(std::io::Error::other("reply line too long"));
        }
    }
}
