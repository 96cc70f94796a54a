//! The Unix socket server: peer check, framing, parse, then one operation at
//! a time.

use std::future::Future;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use banger_helper_client::framing::{read_line, LineError, MAX_LINE};
use banger_wire::helper::{HelperError, HelperErrorCode, HelperReply, HelperRequest};
use ipnet::Ipv4Net;
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::unix::OwnedWriteHalf;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Mutex;
use tracing::{debug, info, warn};

use crate::action::{Action, Policy};
use crate::ops;

/// How to run the helper.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServeConfig {
    /// Socket path; a stale socket there is replaced.
    pub socket: PathBuf,
    /// Permission bits of the socket file.
    pub socket_mode: u32,
    /// Owner given to the socket file (`None`: stays root).
    pub socket_uid: Option<u32>,
    /// Group given to the socket file (`None`: unchanged).
    pub socket_gid: Option<u32>,
    /// Whom to serve and what may be touched.
    pub policy: Policy,
    /// Send `READY=1`/`STOPPING=1` to systemd.
    pub notify_systemd: bool,
}

impl ServeConfig {
    /// Child mode: spawned by a per-user daemon; socket mode 0600 owned by
    /// the owner, no systemd notifications (the daemon's `NOTIFY_SOCKET`
    /// belongs to the daemon).
    pub fn child(
        socket: PathBuf,
        owner_uid: u32,
        cidr: Ipv4Net,
        allowed_dirs: Vec<PathBuf>,
    ) -> Self {
        ServeConfig {
            socket,
            socket_mode: 0o600,
            socket_uid: Some(owner_uid),
            socket_gid: None,
            policy: Policy {
                owner_uid,
                owner_gid: None,
                cidr,
                allowed_dirs,
                build: None,
            },
            notify_systemd: false,
        }
    }
}

/// The helper could not start or keep serving.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// Something that is not a socket sits at the socket path.
    #[error("{path} exists and is not a socket; refusing to replace it")]
    NotASocket { path: PathBuf },
    /// A live helper already answers on the socket path.
    #[error("another root helper is already listening on {path}")]
    InUse { path: PathBuf },
    /// Creating or securing the socket failed.
    #[error("cannot {what} {path}: {source}")]
    Socket {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A signal handler could not be installed.
    #[error("cannot install a handler for {signal}: {source}")]
    Signal {
        signal: &'static str,
        #[source]
        source: std::io::Error,
    },
}

struct Shared {
    policy: Policy,
    // Operations change global kernel state; one at a time keeps each
    // check-then-change step consistent.
    ops: Mutex<()>,
    // Builds use gigabytes of scratch space and the same cache: one at a time.
    builds: Mutex<()>,
}

/// A bound helper socket, ready to serve.
#[derive(Debug)]
pub struct Server {
    listener: UnixListener,
    socket: PathBuf,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

impl Server {
    /// Replace a stale socket, bind, and apply mode and ownership. Must be
    /// called inside a tokio runtime.
    pub fn bind(config: &ServeConfig) -> Result<Server, ServeError> {
        let path = &config.socket;
        let sock_err = |what: &'static str| {
            let path = path.clone();
            move |source| ServeError::Socket { what, path, source }
        };
        remove_stale_socket(path)?;
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(parent)
                .map_err(sock_err("create the directory of"))?;
        }
        let listener = UnixListener::bind(path).map_err(sock_err("bind"))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(config.socket_mode))
            .map_err(sock_err("chmod"))?;
        if config.socket_uid.is_some() || config.socket_gid.is_some() {
            std::os::unix::fs::chown(path, config.socket_uid, config.socket_gid)
                .map_err(sock_err("chown"))?;
        }
        Ok(Server {
            listener,
            socket: path.clone(),
            shared: Arc::new(Shared {
                policy: config.policy.clone(),
                ops: Mutex::new(()),
                builds: Mutex::new(()),
            }),
        })
    }

    /// The bound socket path.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Serve connections until `shutdown` completes, let a running operation
    /// finish, then remove the socket.
    pub async fn run_until<F: Future<Output = ()>>(self, shutdown: F) -> Result<(), ServeError> {
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                accepted = self.listener.accept() => match accepted {
                    Ok((stream, _)) => {
                        tokio::spawn(handle_connection(stream, self.shared.clone()));
                    }
                    Err(e) => {
                        // Usually EMFILE/ENFILE: back off instead of spinning.
                        warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
            }
        }
        let _idle = self.shared.ops.lock().await;
        if let Err(e) = std::fs::remove_file(&self.socket) {
            warn!(socket = %self.socket.display(), error = %e, "cannot remove the socket");
        }
        info!("root helper stopped");
        Ok(())
    }
}

// The path is ours by configuration, so a dead helper's socket may go; a live
// helper or anything that is not a socket stays.
fn remove_stale_socket(path: &Path) -> Result<(), ServeError> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(ServeError::Socket {
                what: "inspect",
                path: path.into(),
                source,
            })
        }
    };
    if !meta.file_type().is_socket() {
        return Err(ServeError::NotASocket { path: path.into() });
    }
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        return Err(ServeError::InUse { path: path.into() });
    }
    std::fs::remove_file(path).map_err(|source| ServeError::Socket {
        what: "remove the stale socket",
        path: path.into(),
        source,
    })
}

/// Bind per `config`, tell systemd when ready, serve until SIGTERM or SIGINT.
pub async fn serve(config: ServeConfig) -> Result<(), ServeError> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).map_err(|source| ServeError::Signal {
        signal: "SIGTERM",
        source,
    })?;
    let mut int = signal(SignalKind::interrupt()).map_err(|source| ServeError::Signal {
        signal: "SIGINT",
        source,
    })?;
    let server = Server::bind(&config)?;
    info!(
        socket = %server.socket().display(),
        owner_uid = config.policy.owner_uid,
        cidr = %config.policy.cidr,
        "root helper listening"
    );
    let notify = config.notify_systemd;
    if notify {
        if let Err(e) = sd_notify::notify(&[sd_notify::NotifyState::Ready]) {
            warn!(error = %e, "cannot notify systemd");
        }
    }
    server
        .run_until(async move {
            tokio::select! {
                _ = term.recv() => info!("SIGTERM: stopping"),
                _ = int.recv() => info!("SIGINT: stopping"),
            }
            if notify {
                if let Err(e) = sd_notify::notify(&[sd_notify::NotifyState::Stopping]) {
                    warn!(error = %e, "cannot notify systemd");
                }
            }
        })
        .await
}

async fn write_reply(writer: &mut OwnedWriteHalf, reply: &HelperReply) -> std::io::Result<()> {
    // Serializing plain data structs cannot fail.
    let mut line = serde_json::to_vec(reply).unwrap_or_default();
    line.push(b'\n');
    writer.write_all(&line).await
}

fn invalid(message: String) -> HelperReply {
    Err(HelperError {
        code: HelperErrorCode::Invalid,
        message,
    })
}

async fn handle_connection(stream: UnixStream, shared: Arc<Shared>) {
    let cred = match stream.peer_cred() {
        Ok(cred) => cred,
        Err(e) => {
            warn!(error = %e, "cannot read peer credentials; closing");
            return;
        }
    };
    let (read, mut write) = stream.into_split();
    let owner = shared.policy.owner_uid;
    if cred.uid() != owner {
        warn!(uid = cred.uid(), pid = ?cred.pid(), "peer rejected: not the owner");
        let reply = Err(HelperError {
            code: HelperErrorCode::PeerRejected,
            message: format!(
                "peer uid {} is not the owner uid {owner}; only the owner may use the root helper",
                cred.uid()
            ),
        });
        let _ = write_reply(&mut write, &reply).await;
        return;
    }
    let mut reader = BufReader::new(read);
    loop {
        let line = match read_line(&mut reader).await {
            Ok(Some(line)) => line,
            Ok(None) => return,
            Err(LineError::TooLong) => {
                warn!(pid = ?cred.pid(), "request line too long; closing");
                let reply = invalid(format!(
                    "request line exceeds {MAX_LINE} bytes; closing the connection"
                ));
                let _ = write_reply(&mut write, &reply).await;
                return;
            }
            Err(LineError::Io(e)) => {
                debug!(error = %e, "connection read failed");
                return;
            }
        };
        let reply = answer(&line, &shared).await;
        let written = match reply {
            Ok(banger_wire::helper::HelperResponse::DnsSockets { udp, tcp }) => {
                ops::dns::send_sockets(&mut write, &reply, udp, tcp).await
            }
            _ => write_reply(&mut write, &reply).await,
        };
        if let Err(e) = written {
            debug!(error = %e, "connection write failed");
            return;
        }
    }
}

/// Parse one request, refusing unknown fields everywhere: serde's
/// `deny_unknown_fields` covers struct variants, but an internally tagged unit
/// variant (`{"op":"ping","x":1}`) silently ignores what follows its tag.
fn parse_request(text: &str) -> Result<HelperRequest, String> {
    let value: serde_json::Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
    let request: HelperRequest =
        serde_json::from_value(value.clone()).map_err(|e| e.to_string())?;
    if let (serde_json::Value::Object(given), Ok(serde_json::Value::Object(known))) =
        (&value, serde_json::to_value(&request))
    {
        if let Some(extra) = given.keys().find(|k| !known.contains_key(*k)) {
            return Err(format!(
                "unknown field `{extra}` for op `{}`",
                request.op_name()
            ));
        }
    }
    Ok(request)
}

/// Turn one request line (without its newline) into a validated action, or
/// the `Invalid` error the peer gets. Touches nothing: everything a peer can
/// send is refused here before any operation runs.
pub fn parse_line(line: &[u8], policy: &Policy) -> Result<(&'static str, Action), HelperError> {
    let refused = |message: String| HelperError {
        code: HelperErrorCode::Invalid,
        message,
    };
    let Ok(text) = std::str::from_utf8(line) else {
        return Err(refused("malformed request: not valid UTF-8".into()));
    };
    if text.trim().is_empty() {
        return Err(refused(
            "malformed request: empty line, expected one JSON object".into(),
        ));
    }
    let request =
        parse_request(text).map_err(|message| refused(format!("malformed request: {message}")))?;
    let op = request.op_name();
    match Action::parse(request, policy) {
        Ok(action) => Ok((op, action)),
        Err(e) => {
            warn!(op, error = %e, "request rejected");
            Err(refused(format!("{op}: {e}")))
        }
    }
}

async fn answer(line: &[u8], shared: &Shared) -> HelperReply {
    let (op, action) = parse_line(line, &shared.policy)?;
    // A build takes minutes and touches no kernel state the other operations
    // check: it waits only for other builds, so taps and pings go on.
    let _one_at_a_time = if matches!(action, Action::BuildBundle { .. }) {
        shared.builds.lock().await
    } else {
        shared.ops.lock().await
    };
    match ops::execute(&action, &shared.policy).await {
        Ok(response) => {
            info!(op, ?response, "done");
            Ok(response)
        }
        Err(e) => {
            warn!(op, error = %e, "operation failed");
            Err(HelperError {
                code: e.code(),
                message: format!("{op}: {e}"),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use banger_helper_client::{ClientError, HelperClient};
    use banger_wire::helper::HelperResponse;

    async fn start(dir: &Path, owner_uid: u32) -> (PathBuf, tokio::sync::oneshot::Sender<()>) {
        let socket = dir.join("run/helper.sock");
        let config = ServeConfig::child(
            socket.clone(),
            owner_uid,
            "172.16.0.0/24".parse().unwrap(),
            vec![dir.join("state")],
        );
        let server = Server::bind(&config).unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel();
        tokio::spawn(server.run_until(async {
            let _ = rx.await;
        }));
        (socket, tx)
    }

    fn me() -> u32 {
        nix::unistd::geteuid().as_raw()
    }

    #[tokio::test]
    async fn bad_requests_get_clear_errors_and_the_connection_stays_usable() {
        let tmp = tempfile::tempdir().unwrap();
        let (socket, _stop) = start(tmp.path(), me()).await;
        let mode = std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let mut client = HelperClient::connect(&socket).await.unwrap();
        let cases = [
            ("{not json", "malformed request"),
            ("", "empty line"),
            (r#"{"op":"exec","cmd":"sh"}"#, "unknown variant `exec`"),
            (
                r#"{"op":"delete_tap","name":"banger-t0","force":true}"#,
                "unknown field `force`",
            ),
            (r#"{"op":"delete_tap"}"#, "missing field `name`"),
            (
                r#"{"op":"delete_tap","name":"eth0"}"#,
                "delete_tap: interface name \"eth0\"",
            ),
            (
                r#"{"op":"chown_to_owner","path":"/etc/shadow"}"#,
                "unknown variant `chown_to_owner`",
            ),
            (r#"[1,2,3]"#, "malformed request"),
            (
                r#"{"op":"ping","as_uid":0}"#,
                "unknown field `as_uid` for op `ping`",
            ),
            (
                r#"{"op":"build_bundle","kind":"image","name":"../../../etc/debian-bookworm"}"#,
                "build_bundle: image recipe name \"../../../etc/debian-bookworm\" is invalid",
            ),
            (
                r#"{"op":"build_bundle","kind":"rootfs","name":"debian-bookworm"}"#,
                "unknown variant `rootfs`",
            ),
        ];
        for (line, needle) in cases {
            let err = client.request_line(line).await.unwrap().unwrap_err();
            assert_eq!(err.code, HelperErrorCode::Invalid, "{line}");
            assert!(err.message.contains(needle), "{line}: {}", err.message);
        }
        // A valid build on a helper started without a store is refused.
        let err = client
            .request_line(r#"{"op":"build_bundle","kind":"kernel","name":"generic-6.12"}"#)
            .await
            .unwrap()
            .unwrap_err();
        assert!(
            err.message.contains("started without a store"),
            "{}",
            err.message
        );
        let pong = client.request(&HelperRequest::Ping).await.unwrap();
        assert_eq!(
            pong,
            HelperResponse::Pong {
                version: banger_wire::VERSION.into(),
                owner_uid: me()
            }
        );
    }

    #[tokio::test]
    async fn an_oversized_line_is_refused_and_the_connection_closed() {
        let tmp = tempfile::tempdir().unwrap();
        let (socket, _stop) = start(tmp.path(), me()).await;
        let mut client = HelperClient::connect(&socket).await.unwrap();
        let huge = format!(r#"{{"op":"ping","pad":"{}"}}"#, "x".repeat(MAX_LINE));
        let err = client.request_line(&huge).await.unwrap().unwrap_err();
        assert_eq!(err.code, HelperErrorCode::Invalid);
        assert!(
            err.message.contains("exceeds 65536 bytes"),
            "{}",
            err.message
        );
        let after = client.request(&HelperRequest::Ping).await.unwrap_err();
        assert!(
            matches!(after, ClientError::Io { .. } | ClientError::Protocol { .. }),
            "{after:?}"
        );
        // A fresh connection works.
        let mut again = HelperClient::connect(&socket).await.unwrap();
        again.request(&HelperRequest::Ping).await.unwrap();
    }

    #[tokio::test]
    async fn a_peer_that_is_not_the_owner_is_rejected() {
        // Serving another uid means chowning the socket to it, and connecting
        // to another uid's 0600 socket anyway needs root: exactly the peer the
        // check is for (root is not the owner here).
        if !nix::unistd::geteuid().is_root() {
            assert!(
                std::env::var("BANGER_REQUIRE_PRIVILEGED").as_deref() != Ok("1"),
                "BANGER_REQUIRE_PRIVILEGED=1 but not running as root"
            );
            eprintln!("skipping: giving the socket to another uid needs root");
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let (socket, _stop) = start(tmp.path(), 4242).await;
        let mut client = HelperClient::connect(&socket).await.unwrap();
        let err = client.request(&HelperRequest::Ping).await.unwrap_err();
        let ClientError::Helper(err) = err else {
            panic!("expected a helper error, got {err:?}")
        };
        assert_eq!(err.code, HelperErrorCode::PeerRejected);
        assert!(
            err.message.contains("is not the owner uid"),
            "{}",
            err.message
        );
    }

    #[tokio::test]
    async fn stale_sockets_are_replaced_but_live_ones_and_files_are_not() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("s.sock");
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        let config =
            ServeConfig::child(path.clone(), me(), "172.16.0.0/24".parse().unwrap(), vec![]);
        let server = Server::bind(&config).unwrap();
        assert!(matches!(
            Server::bind(&config),
            Err(ServeError::InUse { .. })
        ));
        drop(server);
        let file = tmp.path().join("plain");
        std::fs::write(&file, b"keep me").unwrap();
        let config = ServeConfig {
            socket: file.clone(),
            ..config
        };
        let err = Server::bind(&config).unwrap_err();
        assert!(matches!(err, ServeError::NotASocket { .. }), "{err}");
        assert_eq!(std::fs::read(&file).unwrap(), b"keep me");
    }
}
