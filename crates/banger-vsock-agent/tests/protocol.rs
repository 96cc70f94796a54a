//! The host client against the agent's server loop over real Unix sockets,
//! the way `bangerd` reaches a QEMU guest (a chardev socket whose stream is
//! the guest's virtio-serial port).

use std::io::BufReader;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::time::Duration;

use banger_agent_client::{AgentClient, AgentClientError};
use banger_vsock_agent::server::{self, AgentContext};
use banger_wire::guest::{AgentRequest, AgentResponse};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};

/// Listen on `path` and serve every connection with the agent's loop, the
/// way the guest answers whoever is connected to the chardev socket.
fn spawn_agent(path: &Path, ctx: AgentContext) {
    let listener = UnixListener::bind(path).unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let conn = conn.unwrap();
            let mut writer = conn.try_clone().unwrap();
            let ctx = ctx.clone();
            std::thread::spawn(move || {
                server::serve_stream(&ctx, &mut BufReader::new(conn), &mut writer).unwrap();
            });
        }
    });
}

fn socket_path(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().join("agent.sock")
}

#[tokio::test]
async fn health_ports_and_stats_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let path = socket_path(&dir);
    spawn_agent(&path, AgentContext::default());
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();

    let mut client = AgentClient::connect_unix(&path).await.unwrap();
    let health = client.health().await.unwrap();
    assert_eq!(health.version, banger_wire::VERSION);
    assert_eq!(
        health.hostname,
        nix::unistd::gethostname().unwrap().to_string_lossy()
    );

    let ports = client.ports().await.unwrap();
    let ours = ports
        .iter()
        .find(|p| p.proto == "tcp" && p.port == port)
        .unwrap_or_else(|| panic!("port {port} not in {ports:#?}"));
    assert_eq!(ours.pid, Some(std::process::id()));
    assert_eq!(ours.address, "127.0.0.1");

    let stats = client.stats().await.unwrap();
    assert!(stats.mem_total_bytes > 0);
    assert!(stats.root_disk.is_some());

    // The same connection keeps working for more requests.
    assert!(matches!(
        client.request(&AgentRequest::Health {}).await.unwrap(),
        AgentResponse::Health(_)
    ));
}

#[tokio::test]
async fn malformed_line_gets_an_error_and_the_connection_lives_on() {
    let dir = tempfile::tempdir().unwrap();
    let path = socket_path(&dir);
    spawn_agent(&path, AgentContext::default());

    let mut stream = tokio::net::UnixStream::connect(&path).await.unwrap();
    stream
        .write_all(b"{\"op\":\"health\", \"extra\": 1}\nnot json at all\n")
        .await
        .unwrap();
    let mut reader = tokio::io::BufReader::new(&mut stream);
    for _ in 0..2 {
        let mut line = String::new();
        reader.read_line(&mut line).await.unwrap();
        match serde_json::from_str::<AgentResponse>(&line).unwrap() {
            AgentResponse::Error { message } => {
                assert!(message.starts_with("malformed request"), "{message}")
            }
            other => panic!("expected an error, got {other:?}"),
        }
    }
    drop(reader);
    let mut client = AgentClient::from_stream(stream);
    assert!(client.health().await.is_ok());
}

#[tokio::test]
async fn silent_agent_times_out_and_the_connection_is_retired() {
    let dir = tempfile::tempdir().unwrap();
    let path = socket_path(&dir);
    // Accepts and reads, never answers: a guest whose agent is wedged.
    let listener = UnixListener::bind(&path).unwrap();
    let held = std::thread::spawn(move || listener.accept().unwrap());

    let mut client = AgentClient::connect_unix(&path)
        .await
        .unwrap()
        .with_timeout(Duration::from_millis(200));
    let err = client.health().await.unwrap_err();
    assert!(
        matches!(err, AgentClientError::Timeout { op: "health", .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("banger-vsock-agent"), "{err}");
    let err = client.ports().await.unwrap_err();
    assert!(matches!(err, AgentClientError::Desynchronized), "{err:?}");
    drop(held.join().unwrap());
}

#[tokio::test]
async fn closed_connection_and_missing_socket_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = socket_path(&dir);
    let err = AgentClient::connect_unix(&path).await.unwrap_err();
    assert!(err.to_string().contains(path.to_str().unwrap()), "{err}");

    let listener = UnixListener::bind(&path).unwrap();
    let closer = std::thread::spawn(move || drop(listener.accept().unwrap()));
    let mut client = AgentClient::connect_unix(&path).await.unwrap();
    closer.join().unwrap();
    let err = client.stats().await.unwrap_err();
    assert!(
        matches!(
            err,
            AgentClientError::Closed { op: "stats" } | AgentClientError::Io { op: "stats", .. }
        ),
        "{err:?}"
    );
}
