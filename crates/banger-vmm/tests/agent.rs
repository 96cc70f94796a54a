//! Connecting to the guest agent: Firecracker's vsock `CONNECT` handshake
//! on its Unix socket, and QEMU's raw virtio-serial socket, each against a
//! listener that speaks the host side of that protocol.

use banger_vmm::{AgentEndpoint, AgentError, AGENT_VSOCK_PORT};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixListener;

/// Firecracker's side: read `CONNECT <port>\n`; answer `OK <n>\n` and send
/// `greeting` right behind it, or close without a word when `refuse`.
async fn fake_vsock_muxer(listener: UnixListener, refuse: bool, greeting: &'static [u8]) -> String {
    let (stream, _) = listener.accept().await.unwrap();
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line).await.unwrap();
    let mut stream = reader.into_inner();
    if !refuse {
        // Reply and first guest bytes in one write: the client must not eat them.
        let mut out = b"OK 1073741824\n".to_vec();
        out.extend_from_slice(greeting);
        stream.write_all(&out).await.unwrap();
    }
    line
}

#[tokio::test]
async fn vsock_handshake_names_the_port_and_keeps_following_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let uds = dir.path().join("agent.sock");
    let server = tokio::spawn(fake_vsock_muxer(
        UnixListener::bind(&uds).unwrap(),
        false,
        b"hello",
    ));
    let endpoint = AgentEndpoint::Vsock {
        uds_path: uds,
        guest_cid: 3,
        port: AGENT_VSOCK_PORT,
    };
    let mut stream = endpoint.connect().await.unwrap();
    let mut buf = [0u8; 5];
    stream.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"hello");
    assert_eq!(
        server.await.unwrap(),
        format!("CONNECT {AGENT_VSOCK_PORT}\n")
    );
}

#[tokio::test]
async fn vsock_refusal_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let uds = dir.path().join("agent.sock");
    let server = tokio::spawn(fake_vsock_muxer(
        UnixListener::bind(&uds).unwrap(),
        true,
        b"",
    ));
    let endpoint = AgentEndpoint::Vsock {
        uds_path: uds,
        guest_cid: 3,
        port: 52,
    };
    let err = endpoint.connect().await.unwrap_err();
    server.await.unwrap();
    assert!(matches!(err, AgentError::Refused { port: 52, .. }), "{err}");
    assert!(err.to_string().contains("agent listening"), "{err}");
}

#[tokio::test]
async fn virtio_serial_is_a_plain_stream() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("agent.sock");
    let listener = UnixListener::bind(&socket).unwrap();
    let server = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut buf = [0u8; 4];
        s.read_exact(&mut buf).await.unwrap();
        s.write_all(&buf).await.unwrap();
    });
    let endpoint = AgentEndpoint::VirtioSerial {
        socket,
        port_name: banger_vmm::AGENT_SERIAL_PORT.into(),
    };
    let mut stream = endpoint.connect().await.unwrap();
    stream.write_all(b"ping").await.unwrap();
    let mut buf = [0u8; 4];
    stream.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"ping");
    server.await.unwrap();
}

#[tokio::test]
async fn missing_socket_is_named() {
    let endpoint = AgentEndpoint::VirtioSerial {
        socket: "/nonexistent/agent.sock".into(),
        port_name: banger_vmm::AGENT_SERIAL_PORT.into(),
    };
    let err = endpoint.connect().await.unwrap_err();
    assert!(err.to_string().contains("/nonexistent/agent.sock"), "{err}");
}
