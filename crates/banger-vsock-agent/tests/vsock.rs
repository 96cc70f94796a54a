//! The agent's vsock listener, as far as this host allows: listening needs
//! only AF_VSOCK; a round trip also needs the `vsock_loopback` transport
//! (CID 1), which a guest does not have and this host may not either.

use std::io::{BufRead, BufReader, Write};
use std::os::fd::AsRawFd;
use std::sync::Arc;

use banger_vsock_agent::server::{self, AgentContext, VsockListener};
use banger_wire::guest::AgentResponse;
use nix::sys::socket::{self, AddressFamily, SockFlag, SockType, VsockAddr};

const VMADDR_CID_LOCAL: u32 = 1;

#[test]
fn vsock_listener_serves_requests() {
    // A port of our own so parallel runs do not collide.
    let port = 20_000 + std::process::id() % 20_000;
    let listener = match VsockListener::bind(port) {
        Ok(l) => l,
        Err(server::ServeError::VsockSocket { source }) => {
            banger_test_support::skip(&format!("no AF_VSOCK here ({source})"));
            return;
        }
        Err(e) => panic!("{e}"),
    };
    assert_eq!(listener.port(), port);
    std::thread::spawn(move || server::serve_vsock(Arc::new(AgentContext::default()), &listener));

    let fd = socket::socket(
        AddressFamily::Vsock,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .unwrap();
    let connected = socket::connect(fd.as_raw_fd(), &VsockAddr::new(VMADDR_CID_LOCAL, port));
    // Listening worked; the round trip needs the vsock loopback transport
    // (`vsock_loopback`), which some hosts (this project's CI) cannot load.
    if !banger_test_support::Gate::new()
        .host_feature(
            "vsock-loopback",
            connected.is_ok(),
            &format!("connect to CID 1: {connected:?}"),
        )
        .check()
    {
        return;
    }
    let mut conn = std::fs::File::from(fd);
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    conn.write_all(b"{\"op\":\"health\"}\nbogus\n").unwrap();
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    assert!(matches!(
        serde_json::from_str(&line).unwrap(),
        AgentResponse::Health(_)
    ));
    line.clear();
    reader.read_line(&mut line).unwrap();
    assert!(matches!(
        serde_json::from_str(&line).unwrap(),
        AgentResponse::Error { .. }
    ));
}

#[test]
fn a_taken_port_is_reported_with_its_number() {
    let port = 40_000 + std::process::id() % 20_000;
    let _first = match VsockListener::bind(port) {
        Ok(l) => l,
        Err(e) => {
            banger_test_support::skip(&format!("no AF_VSOCK here ({e})"));
            return;
        }
    };
    let err = VsockListener::bind(port).unwrap_err();
    assert!(
        err.to_string().contains(&format!("vsock port {port}")),
        "{err}"
    );
}
