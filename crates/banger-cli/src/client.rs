//! HTTP client for the bangerd API over its Unix socket, and daemon auto-start.
//!
//! [`Client::connect`] is what commands use: in per-user mode it starts a
//! daemon when none answers (serialized by a lock file, so racing CLIs start
//! exactly one); in system mode it only says how to start the service.
//! [`Client::connect_existing`] never starts anything (doctor, completion).
//! All methods are async; sync callers wrap them in a current-thread Tokio
//! runtime.

use std::io::{ErrorKind, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use banger_host::lock::{self, FileLock, LockError};
use banger_host::paths::{ensure_private_dir, Layout, PrivateDirError};
use banger_wire::api::{
    ApiError, DaemonStatus, ErrorCode, InstallMode, LogLevel, ShutdownResponse, StreamEvent,
};
use banger_wire::routes::{self, NoBody, Raw, Target};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use serde::Serialize;

/// This CLI's version, compared with the daemon's at every connection.
const CLI_VERSION: &str = banger_wire::VERSION;

/// Environment variable naming the `bangerd` binary to auto-start.
pub const DAEMON_BIN_ENV: &str = "BANGERD_BIN";

/// How long auto-start waits for a new daemon to answer `/v1/status`.
pub const START_TIMEOUT: Duration = Duration::from_secs(10);

/// How long [`Client::connect_existing`] waits for an existing daemon to answer.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(15);

/// How many lines of the daemon log a failed start shows.
const LOG_TAIL_LINES: usize = 20;

/// Errors talking to (or starting) the daemon.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to bangerd at {socket}: {source}")]
    Connect {
        socket: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "permission denied on the bangerd socket {socket}: it admits only its owner, root and, \
         when the install sets socket_group, that group's members (see `banger system status`)"
    )]
    PermissionDenied { socket: PathBuf },
    /// The daemon's per-connection `SO_PEERCRED` check turned this user away.
    #[error("bangerd on {socket} refused this user: {message}")]
    Refused { socket: PathBuf, message: String },
    #[error(
        "bangerd (system service) is not answering on {socket}; start it with \
         `sudo systemctl start bangerd` and check `banger system status`"
    )]
    SystemDaemonDown { socket: PathBuf },
    #[error(
        "bangerd on {socket} accepts connections but did not answer within {secs} s; see {log}"
    )]
    NotAnswering {
        socket: PathBuf,
        secs: u64,
        log: PathBuf,
    },
    #[error("HTTP exchange with bangerd on {socket} failed ({method} {path}): {source}")]
    Http {
        socket: PathBuf,
        method: Method,
        path: String,
        source: hyper::Error,
    },
    #[error("bangerd answered {method} {path} with {status}: {error} (code {code})", code = error_code(.error))]
    Api {
        method: Method,
        path: String,
        status: u16,
        error: ApiError,
    },
    #[error("bangerd answered {method} {path} with HTTP {status} and a body that is not an API error: {body}")]
    BadStatus {
        method: Method,
        path: String,
        status: u16,
        body: String,
    },
    /// The daemon answering is another banger version. Answers tolerate
    /// additions, but the two are not tested together, so commands refuse
    /// to run until the user restarts the daemon.
    #[error("daemon {daemon}, CLI {cli}: {fix}", fix = skew_fix(*.system))]
    VersionSkew {
        daemon: String,
        cli: &'static str,
        /// The daemon is the system service (restarted with systemctl).
        system: bool,
    },
    #[error("cannot decode the answer of bangerd to {method} {path}: {source}")]
    Decode {
        method: Method,
        path: String,
        source: serde_json::Error,
    },
    #[error("cannot encode the request body for {path}: {source}")]
    Encode {
        path: String,
        source: serde_json::Error,
    },
    #[error("cannot write the answer of {path}: {source}")]
    Output {
        path: String,
        source: std::io::Error,
    },
    #[error("the progress stream of {path} ended without a final result")]
    StreamTruncated { path: String },
    #[error("{path} failed: {error} (code {code})", code = error_code(.error))]
    StreamFailed { path: String, error: ApiError },
    #[error(transparent)]
    RuntimeDir(#[from] PrivateDirError),
    #[error("cannot take the auto-start lock: {0}")]
    Lock(#[source] LockError),
    #[error("cannot remove the stale socket {path}: {source}")]
    RemoveStale {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot start bangerd ({bin}): {source}; set {DAEMON_BIN_ENV} or put bangerd next to banger or on PATH")]
    Spawn {
        bin: PathBuf,
        source: std::io::Error,
    },
    #[error("bangerd exited during start-up ({status}); last lines of {log}:\n{tail}")]
    DaemonExited {
        status: std::process::ExitStatus,
        log: PathBuf,
        tail: String,
    },
    #[error("bangerd did not answer on {socket} within {secs} s; last lines of {log}:\n{tail}")]
    StartTimeout {
        socket: PathBuf,
        secs: u64,
        log: PathBuf,
        tail: String,
    },
}

fn skew_fix(system: bool) -> &'static str {
    if system {
        "restart the service with `sudo systemctl restart bangerd` (running VMs are recovered)"
    } else {
        "run `banger daemon stop` (then the next command starts the new one)"
    }
}

/// Whether a connection accepts a daemon of another version: only the
/// commands that report on it or stop it do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VersionCheck {
    /// A daemon of another version is [`ClientError::VersionSkew`].
    SameVersion,
    /// Any version that answers `/v1/status` will do.
    AnyVersion,
}

fn error_code(e: &ApiError) -> String {
    serde_json::to_value(e.code)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_else(|| format!("{:?}", e.code))
}

impl ClientError {
    /// The API error behind this failure, when the daemon sent one.
    pub fn api_error(&self) -> Option<&ApiError> {
        match self {
            ClientError::Api { error, .. } | ClientError::StreamFailed { error, .. } => Some(error),
            _ => None,
        }
    }
}

/// A handle on the daemon's API socket. Each request uses its own
/// connection, so a `Client` is cheap to clone and share.
#[derive(Debug, Clone)]
pub struct Client {
    socket: PathBuf,
}

impl Client {
    /// A client for the daemon socket at `socket`, without checking it.
    pub fn at(socket: impl Into<PathBuf>) -> Client {
        Client {
            socket: socket.into(),
        }
    }

    /// Connect to the daemon of `layout`, starting a per-user daemon when none
    /// answers (`config`: the `--config` flag, passed on to the daemon).
    pub async fn connect(layout: &Layout, config: Option<&Path>) -> Result<Client, ClientError> {
        Client::connect_checked(layout, config, VersionCheck::SameVersion).await
    }

    /// [`Client::connect`], accepting a daemon of another version when
    /// `check` says so.
    pub async fn connect_checked(
        layout: &Layout,
        config: Option<&Path>,
        check: VersionCheck,
    ) -> Result<Client, ClientError> {
        if let Some(client) = Client::probe(layout, check).await? {
            return Ok(client);
        }
        match layout.mode {
            InstallMode::System => Err(ClientError::SystemDaemonDown {
                socket: layout.socket(),
            }),
            InstallMode::PerUser => autostart(layout, config).await,
        }
    }

    /// Connect to a daemon that is already answering; `None` when there is
    /// none (no socket, or a stale one). Never starts a daemon.
    pub async fn connect_existing(layout: &Layout) -> Result<Option<Client>, ClientError> {
        Client::probe(layout, VersionCheck::SameVersion).await
    }

    /// [`Client::connect_existing`] for a daemon of any version (`daemon stop`).
    pub async fn connect_existing_any_version(
        layout: &Layout,
    ) -> Result<Option<Client>, ClientError> {
        Client::probe(layout, VersionCheck::AnyVersion).await
    }

    async fn probe(layout: &Layout, check: VersionCheck) -> Result<Option<Client>, ClientError> {
        let client = Client::at(layout.socket());
        let answer = tokio::time::timeout(PROBE_TIMEOUT, client.status())
            .await
            .map_err(|_| ClientError::NotAnswering {
                socket: layout.socket(),
                secs: PROBE_TIMEOUT.as_secs(),
                log: layout.log_file(),
            })?;
        let system = layout.mode == InstallMode::System;
        match answer {
            Ok(status) if check == VersionCheck::SameVersion && status.version != CLI_VERSION => {
                Err(ClientError::VersionSkew {
                    daemon: status.version,
                    cli: CLI_VERSION,
                    system,
                })
            }
            Ok(_) => Ok(Some(client)),
            Err(ClientError::VersionSkew { daemon, cli, .. }) => Err(ClientError::VersionSkew {
                daemon,
                cli,
                system,
            }),
            Err(ClientError::Connect { socket, source }) => {
                if gone(&source) {
                    Ok(None)
                } else if source.kind() == ErrorKind::PermissionDenied {
                    Err(ClientError::PermissionDenied { socket })
                } else {
                    Err(ClientError::Connect { socket, source })
                }
            }
            Err(e) => Err(e),
        }
    }

    /// The socket this client talks to.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// `GET /v1/status`. An answer that does not parse but names another
    /// version is [`ClientError::VersionSkew`], not a decoding error: that is
    /// what the user can act on.
    pub async fn status(&self) -> Result<DaemonStatus, ClientError> {
        let target = routes::STATUS.target();
        let raw: serde_json::Value = self.get_json(&target.path).await?;
        match serde_json::from_value::<DaemonStatus>(raw.clone()) {
            Ok(status) => Ok(status),
            Err(source) => match raw.get("version").and_then(|v| v.as_str()) {
                Some(daemon) if daemon != CLI_VERSION => Err(ClientError::VersionSkew {
                    daemon: daemon.to_owned(),
                    cli: CLI_VERSION,
                    system: false,
                }),
                _ => Err(ClientError::Decode {
                    method: Method::GET,
                    path: target.path,
                    source,
                }),
            },
        }
    }

    /// `POST /v1/shutdown`: the daemon stops after answering.
    pub async fn shutdown(&self) -> Result<ShutdownResponse, ClientError> {
        self.call(&routes::SHUTDOWN.target(), &NoBody {}).await
    }

    /// One JSON request of a typed route: GET and DELETE send no body, POST
    /// sends `body`.
    pub async fn call<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        target: &Target<Req, Resp>,
        body: &Req,
    ) -> Result<Resp, ClientError> {
        let method = http_method(target.method);
        let path = target.path.as_str();
        let body = match target.method {
            routes::Method::Post => Some(encode(path, body)?),
            routes::Method::Get | routes::Method::Delete => None,
        };
        let resp = self.send(method.clone(), path, body).await?;
        self.decode(method, path, resp).await
    }

    /// A streamed typed route: progress to `renderer`, the `done` result
    /// decoded as the route's answer.
    pub async fn call_stream<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        target: &Target<Req, Resp>,
        body: &Req,
        renderer: &mut dyn StreamRenderer,
    ) -> Result<Resp, ClientError> {
        let result = self.stream(&target.path, body, renderer).await?;
        decode_result(&target.path, result)
    }

    /// A streamed typed route whose request body is a file.
    pub async fn call_upload<Resp: DeserializeOwned>(
        &self,
        target: &Target<Raw, Resp>,
        body: UploadBody,
        renderer: &mut dyn StreamRenderer,
    ) -> Result<Resp, ClientError> {
        let result = self.stream_upload(&target.path, body, renderer).await?;
        decode_result(&target.path, result)
    }

    /// `GET path`, decoding a JSON answer.
    pub async fn get_json<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        let resp = self.send(Method::GET, path, None).await?;
        self.decode(Method::GET, path, resp).await
    }

    /// `POST path` with a JSON body, decoding a JSON answer.
    pub async fn post_json<B: Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        let body = encode(path, body)?;
        let resp = self.send(Method::POST, path, Some(body)).await?;
        self.decode(Method::POST, path, resp).await
    }

    /// `DELETE path`, decoding a JSON answer.
    pub async fn delete_json<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        let resp = self.send(Method::DELETE, path, None).await?;
        self.decode(Method::DELETE, path, resp).await
    }

    /// `GET path` whose answer is raw bytes (e.g. a log), each chunk handed
    /// to `sink` as it arrives; returns when the daemon ends the body.
    pub async fn get_stream(
        &self,
        path: &str,
        sink: &mut dyn FnMut(&[u8]) -> std::io::Result<()>,
    ) -> Result<(), ClientError> {
        let resp = self.send(Method::GET, path, None).await?;
        if !resp.status().is_success() {
            return Err(self.error_from(Method::GET, path, resp).await);
        }
        let mut body = resp.into_body();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|source| self.http_error(Method::GET, path, source))?;
            if let Ok(data) = frame.into_data() {
                if let Err(e) = sink(&data) {
                    // A closed pipe (`banger vm logs | head`) ends the copy quietly.
                    if e.kind() == ErrorKind::BrokenPipe {
                        return Ok(());
                    }
                    return Err(ClientError::Output {
                        path: path.to_owned(),
                        source: e,
                    });
                }
            }
        }
        Ok(())
    }

    /// `POST path` to a streaming endpoint: feed every [`StreamEvent`] to
    /// `renderer` and return the `Done` result (an `Error` event becomes
    /// [`ClientError::StreamFailed`]).
    pub async fn stream<B: Serialize + ?Sized>(
        &self,
        path: &str,
        body: &B,
        renderer: &mut dyn StreamRenderer,
    ) -> Result<serde_json::Value, ClientError> {
        let body = encode(path, body)?;
        let resp = self.send(Method::POST, path, Some(body)).await?;
        self.consume_stream(path, resp, renderer).await
    }

    async fn consume_stream(
        &self,
        path: &str,
        resp: Response<Incoming>,
        renderer: &mut dyn StreamRenderer,
    ) -> Result<serde_json::Value, ClientError> {
        if !resp.status().is_success() {
            return Err(self.error_from(Method::POST, path, resp).await);
        }
        let mut body = resp.into_body();
        let mut lines = LineSplitter::default();
        let outcome = loop {
            let frame = match body.frame().await {
                None => break None,
                Some(frame) => {
                    frame.map_err(|source| self.http_error(Method::POST, path, source))?
                }
            };
            let Ok(data) = frame.into_data() else {
                continue;
            };
            let mut finished = None;
            for line in lines.push(&data) {
                match parse_event(path, &line)? {
                    StreamEvent::Done { result } => finished = Some(Ok(result)),
                    StreamEvent::Error { error } => {
                        finished = Some(Err(ClientError::StreamFailed {
                            path: path.to_owned(),
                            error,
                        }))
                    }
                    event => renderer.event(&event),
                }
            }
            if finished.is_some() {
                break finished;
            }
        };
        // A final line without a newline still counts.
        let outcome = match (outcome, lines.finish()) {
            (Some(o), _) => Some(o),
            (None, Some(line)) => match parse_event(path, &line)? {
                StreamEvent::Done { result } => Some(Ok(result)),
                StreamEvent::Error { error } => Some(Err(ClientError::StreamFailed {
                    path: path.to_owned(),
                    error,
                })),
                event => {
                    renderer.event(&event);
                    None
                }
            },
            (None, None) => None,
        };
        renderer.finish(matches!(outcome, Some(Ok(_))));
        outcome.unwrap_or_else(|| {
            Err(ClientError::StreamTruncated {
                path: path.to_owned(),
            })
        })
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Bytes>,
    ) -> Result<Response<Incoming>, ClientError> {
        let content_type = body.as_ref().map(|_| "application/json");
        let body = Full::new(body.unwrap_or_default())
            .map_err(|never| match never {})
            .boxed_unsync();
        self.send_body(method, path, content_type, body).await
    }

    /// `POST path` with `body` streamed as the request body (e.g. a file),
    /// to a streaming endpoint: as [`Client::stream`].
    pub async fn stream_upload(
        &self,
        path: &str,
        body: UploadBody,
        renderer: &mut dyn StreamRenderer,
    ) -> Result<serde_json::Value, ClientError> {
        let resp = self
            .send_body(Method::POST, path, Some("application/octet-stream"), body)
            .await?;
        self.consume_stream(path, resp, renderer).await
    }

    /// `GET path` whose answer is a download: the successful response, for
    /// its headers and body (an error status becomes the API error).
    pub async fn get_download(&self, path: &str) -> Result<Response<Incoming>, ClientError> {
        let resp = self.send(Method::GET, path, None).await?;
        if !resp.status().is_success() {
            return Err(self.error_from(Method::GET, path, resp).await);
        }
        Ok(resp)
    }

    async fn send_body(
        &self,
        method: Method,
        path: &str,
        content_type: Option<&str>,
        body: UploadBody,
    ) -> Result<Response<Incoming>, ClientError> {
        let stream = tokio::net::UnixStream::connect(&self.socket)
            .await
            .map_err(|source| ClientError::Connect {
                socket: self.socket.clone(),
                source,
            })?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|source| self.http_error(method.clone(), path, source))?;
        // The connection task ends when the response body is done or dropped.
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let mut req = Request::builder()
            .method(method.clone())
            .uri(path)
            .header(hyper::header::HOST, "bangerd");
        if let Some(ct) = content_type {
            req = req.header(hyper::header::CONTENT_TYPE, ct);
        }
        let req = req
            .body(body)
            .expect("method, path and static headers form a valid request");
        let resp = sender
            .send_request(req)
            .await
            .map_err(|source| self.http_error(method, path, source))?;
        show_config_notices(&resp);
        Ok(resp)
    }

    async fn decode<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        resp: Response<Incoming>,
    ) -> Result<T, ClientError> {
        if !resp.status().is_success() {
            return Err(self.error_from(method, path, resp).await);
        }
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|source| self.http_error(method.clone(), path, source))?
            .to_bytes();
        serde_json::from_slice(&bytes).map_err(|source| ClientError::Decode {
            method,
            path: path.to_owned(),
            source,
        })
    }

    async fn error_from(
        &self,
        method: Method,
        path: &str,
        resp: Response<Incoming>,
    ) -> ClientError {
        let status = resp.status();
        let bytes = match resp.into_body().collect().await {
            Ok(b) => b.to_bytes(),
            Err(source) => return self.http_error(method, path, source),
        };
        match api_failure(method, path, status, &bytes) {
            ClientError::Api { error, .. } if error.code == ErrorCode::Forbidden => {
                ClientError::Refused {
                    socket: self.socket.clone(),
                    message: error.message,
                }
            }
            other => other,
        }
    }

    fn http_error(&self, method: Method, path: &str, source: hyper::Error) -> ClientError {
        ClientError::Http {
            socket: self.socket.clone(),
            method,
            path: path.to_owned(),
            source,
        }
    }
}

/// Print the daemon's notices about its config file (an invalid edit, keys
/// waiting for a restart) to stderr, each once per process: a command makes
/// several requests and all carry them.
fn show_config_notices(resp: &Response<Incoming>) {
    static SHOWN: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    let mut shown = SHOWN.lock().unwrap_or_else(|e| e.into_inner());
    for value in resp
        .headers()
        .get_all(banger_wire::api::CONFIG_NOTICE_HEADER)
    {
        // Only text reaches the terminal, whatever the header holds.
        let line: String = String::from_utf8_lossy(value.as_bytes())
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
        if !shown.contains(&line) {
            eprintln!("warning: {line}");
            shown.push(line);
        }
    }
}

/// A request body the client can stream (a JSON document or a file).
pub type UploadBody = http_body_util::combinators::UnsyncBoxBody<Bytes, std::io::Error>;

/// The bytes of `file`, read in 1 MiB pieces as the request body.
pub fn file_body(file: tokio::fs::File) -> UploadBody {
    use tokio::io::AsyncReadExt;
    let chunks = futures::stream::unfold(file, |mut file| async move {
        let mut buf = vec![0u8; 1 << 20];
        match file.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok(hyper::body::Frame::data(Bytes::from(buf))), file))
            }
            Err(e) => Some((Err(e), file)),
        }
    });
    http_body_util::StreamBody::new(chunks).boxed_unsync()
}

fn api_failure(method: Method, path: &str, status: StatusCode, body: &[u8]) -> ClientError {
    match serde_json::from_slice::<ApiError>(body) {
        Ok(error) => ClientError::Api {
            method,
            path: path.to_owned(),
            status: status.as_u16(),
            error,
        },
        Err(_) => ClientError::BadStatus {
            method,
            path: path.to_owned(),
            status: status.as_u16(),
            body: String::from_utf8_lossy(body).chars().take(500).collect(),
        },
    }
}

fn encode<B: Serialize + ?Sized>(path: &str, body: &B) -> Result<Bytes, ClientError> {
    serde_json::to_vec(body)
        .map(Bytes::from)
        .map_err(|source| ClientError::Encode {
            path: path.to_owned(),
            source,
        })
}

fn http_method(m: routes::Method) -> Method {
    match m {
        routes::Method::Get => Method::GET,
        routes::Method::Post => Method::POST,
        routes::Method::Delete => Method::DELETE,
    }
}

fn decode_result<T: DeserializeOwned>(
    path: &str,
    result: serde_json::Value,
) -> Result<T, ClientError> {
    serde_json::from_value(result).map_err(|source| ClientError::Decode {
        method: Method::POST,
        path: path.to_owned(),
        source,
    })
}

fn parse_event(path: &str, line: &[u8]) -> Result<StreamEvent, ClientError> {
    serde_json::from_slice(line).map_err(|source| ClientError::Decode {
        method: Method::POST,
        path: path.to_owned(),
        source,
    })
}

/// Connect errors that mean "no daemon here" (as opposed to "not allowed").
fn gone(e: &std::io::Error) -> bool {
    matches!(e.kind(), ErrorKind::NotFound | ErrorKind::ConnectionRefused)
}

/// The daemon binary: `$BANGERD_BIN`, else `bangerd` next to the current
/// executable, else `bangerd` from `PATH`.
pub fn daemon_binary() -> PathBuf {
    if let Some(p) = std::env::var_os(DAEMON_BIN_ENV).filter(|v| !v.is_empty()) {
        return PathBuf::from(p);
    }
    if let Some(sibling) = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|d| d.join("bangerd")))
        .filter(|p| p.is_file())
    {
        return sibling;
    }
    PathBuf::from("bangerd")
}

/// Start a per-user daemon unless another CLI just did, and wait until it
/// answers.
async fn autostart(layout: &Layout, config: Option<&Path>) -> Result<Client, ClientError> {
    ensure_private_dir(&layout.runtime_dir)?;
    let lock_path = layout.autostart_lock();
    let lock = tokio::task::spawn_blocking(move || FileLock::exclusive(&lock_path))
        .await
        .expect("the lock task does not panic")
        .map_err(ClientError::Lock)?;
    // Another CLI may have started the daemon while we waited for the lock.
    if let Some(client) = Client::connect_existing(layout).await? {
        return Ok(client);
    }
    let socket = layout.socket();
    let mut child = match std::os::unix::net::UnixStream::connect(&socket) {
        // Accepting connections but not answering yet: a daemon still starting.
        Ok(_) => None,
        Err(e) if gone(&e) => {
            if e.kind() == ErrorKind::ConnectionRefused {
                match std::fs::remove_file(&socket) {
                    Ok(()) => {}
                    Err(e) if e.kind() == ErrorKind::NotFound => {}
                    Err(source) => {
                        return Err(ClientError::RemoveStale {
                            path: socket,
                            source,
                        })
                    }
                }
            }
            Some(spawn_daemon(config)?)
        }
        Err(source) => return Err(ClientError::Connect { socket, source }),
    };
    let result = wait_until_up(layout, child.as_mut()).await;
    drop(lock);
    result
}

fn spawn_daemon(config: Option<&Path>) -> Result<Child, ClientError> {
    use std::os::unix::process::CommandExt;
    let bin = daemon_binary();
    let mut cmd = Command::new(&bin);
    if let Some(config) = config {
        cmd.arg("--config").arg(config);
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // The daemon is not a systemd service here, whatever our environment says.
    for var in [
        "JOURNAL_STREAM",
        "NOTIFY_SOCKET",
        "WATCHDOG_USEC",
        "WATCHDOG_PID",
        "LISTEN_FDS",
    ] {
        cmd.env_remove(var);
    }
    // SAFETY: setsid is async-signal-safe; the closure runs in the forked
    // child before exec and touches no other state.
    unsafe {
        cmd.pre_exec(|| {
            nix::unistd::setsid()
                .map(drop)
                .map_err(std::io::Error::from)
        });
    }
    cmd.spawn()
        .map_err(|source| ClientError::Spawn { bin, source })
}

async fn wait_until_up(
    layout: &Layout,
    mut child: Option<&mut Child>,
) -> Result<Client, ClientError> {
    let client = Client::at(layout.socket());
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if let Some(c) = child.as_deref_mut() {
            if let Ok(Some(status)) = c.try_wait() {
                // It may have lost to a daemon started by hand that holds the
                // daemon lock and is still starting: wait for that one.
                if client.status().await.is_ok() {
                    return Ok(client);
                }
                if !lock::is_held(&layout.daemon_lock()) {
                    let log = layout.log_file();
                    let tail = log_tail(&log, LOG_TAIL_LINES);
                    return Err(ClientError::DaemonExited { status, log, tail });
                }
                child = None;
            }
        }
        match client.status().await {
            Ok(_) => return Ok(client),
            Err(ClientError::Connect { .. } | ClientError::Http { .. }) => {}
            Err(e) => return Err(e),
        }
        if Instant::now() >= deadline {
            let log = layout.log_file();
            let tail = log_tail(&log, LOG_TAIL_LINES);
            return Err(ClientError::StartTimeout {
                socket: layout.socket(),
                secs: START_TIMEOUT.as_secs(),
                log,
                tail,
            });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The last `n` lines of `path`, indented, or a note that it cannot be read.
pub fn log_tail(path: &Path, n: usize) -> String {
    match std::fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let lines: Vec<&str> = text.lines().collect();
            let start = lines.len().saturating_sub(n);
            if lines.is_empty() {
                "  (the log is empty)".to_owned()
            } else {
                lines[start..]
                    .iter()
                    .map(|l| format!("  {l}"))
                    .collect::<Vec<_>>()
                    .join("\n")
            }
        }
        Err(e) => format!("  (cannot read the log: {e})"),
    }
}

/// Renders the events of a streamed operation ([`Client::stream`]).
pub trait StreamRenderer {
    /// One `Progress` or `Log` event (the final `Done`/`Error` is returned by
    /// [`Client::stream`] instead).
    fn event(&mut self, event: &StreamEvent);
    /// The stream ended; `success` tells whether it ended with `Done`.
    fn finish(&mut self, success: bool);
}

/// The renderer for this process: progress bars when stderr is a terminal,
/// plain `[phase] message` lines otherwise.
pub fn stderr_renderer() -> Box<dyn StreamRenderer> {
    if std::io::stderr().is_terminal() {
        Box::new(ProgressRenderer::default())
    } else {
        Box::new(PlainRenderer::new(std::io::stderr()))
    }
}

/// Plain lines for logs and pipes: `[phase] message` whenever the phase or
/// message changes (count-only updates are not repeated), notes as-is and
/// warnings prefixed with `warning:`.
#[derive(Debug)]
pub struct PlainRenderer<W: Write> {
    out: W,
    last: Option<(String, String)>,
}

impl<W: Write> PlainRenderer<W> {
    /// Write lines to `out`.
    pub fn new(out: W) -> PlainRenderer<W> {
        PlainRenderer { out, last: None }
    }

    /// The writer back (tests read what was rendered).
    pub fn into_inner(self) -> W {
        self.out
    }
}

impl<W: Write> StreamRenderer for PlainRenderer<W> {
    fn event(&mut self, event: &StreamEvent) {
        // Progress output must never fail the operation it reports on.
        let _ = match event {
            StreamEvent::Progress {
                phase,
                message,
                total,
                ..
            } => {
                let (phase, message) = (crate::term::line(phase), crate::term::line(message));
                let key = (phase.to_string(), message.to_string());
                if self.last.as_ref() == Some(&key) {
                    return;
                }
                self.last = Some(key);
                match total {
                    Some(t) => writeln!(
                        self.out,
                        "[{phase}] {message} ({})",
                        banger_wire::units::human_bytes(*t)
                    ),
                    None => writeln!(self.out, "[{phase}] {message}"),
                }
            }
            StreamEvent::Log {
                level: LogLevel::Info | LogLevel::Unknown,
                message,
            } => writeln!(self.out, "{}", crate::term::text(message)),
            StreamEvent::Log {
                level: LogLevel::Warn,
                message,
            } => {
                writeln!(self.out, "warning: {}", crate::term::text(message))
            }
            StreamEvent::Done { .. } | StreamEvent::Error { .. } | StreamEvent::Unknown => Ok(()),
        };
    }

    fn finish(&mut self, _success: bool) {
        let _ = self.out.flush();
    }
}

/// indicatif progress on a terminal: one line per phase, a bar with bytes,
/// rate and ETA when the total is known, a spinner otherwise.
#[derive(Debug, Default)]
pub struct ProgressRenderer {
    current: Option<(String, indicatif::ProgressBar)>,
}

impl ProgressRenderer {
    fn bar_for(&mut self, phase: &str, total: Option<u64>) -> &indicatif::ProgressBar {
        use indicatif::{ProgressBar, ProgressStyle};
        let same_phase = self.current.as_ref().is_some_and(|(p, _)| p == phase);
        if !same_phase {
            if let Some((_, bar)) = self.current.take() {
                bar.finish();
            }
            let bar = match total {
                Some(t) => {
                    let bar = ProgressBar::new(t);
                    if let Ok(style) = ProgressStyle::with_template(
                        "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}",
                    ) {
                        bar.set_style(style.progress_chars("=> "));
                    }
                    bar
                }
                None => {
                    let bar = ProgressBar::new_spinner();
                    if let Ok(style) = ProgressStyle::with_template("{spinner} {msg}") {
                        bar.set_style(style);
                    }
                    bar.enable_steady_tick(Duration::from_millis(100));
                    bar
                }
            };
            self.current = Some((phase.to_owned(), bar));
        }
        let (_, bar) = self.current.as_ref().expect("set just above");
        if let Some(t) = total {
            bar.set_length(t);
        }
        bar
    }
}

impl StreamRenderer for ProgressRenderer {
    fn event(&mut self, event: &StreamEvent) {
        match event {
            StreamEvent::Progress {
                phase,
                message,
                current,
                total,
            } => {
                let bar = self.bar_for(phase, *total);
                bar.set_message(format!(
                    "[{}] {}",
                    crate::term::line(phase),
                    crate::term::line(message)
                ));
                if let Some(c) = current {
                    bar.set_position(*c);
                }
            }
            StreamEvent::Log { level, message } => {
                let message = crate::term::text(message);
                let line = match level {
                    LogLevel::Info | LogLevel::Unknown => message.into_owned(),
                    LogLevel::Warn => format!("warning: {message}"),
                };
                match &self.current {
                    Some((_, bar)) => bar.println(line),
                    None => eprintln!("{line}"),
                }
            }
            StreamEvent::Done { .. } | StreamEvent::Error { .. } | StreamEvent::Unknown => {}
        }
    }

    fn finish(&mut self, success: bool) {
        if let Some((_, bar)) = self.current.take() {
            if success {
                bar.finish();
            } else {
                bar.abandon();
            }
        }
    }
}

/// Splits a byte stream into lines (NDJSON), across chunk boundaries; blank
/// lines are skipped.
#[derive(Debug, Default)]
pub struct LineSplitter {
    buf: Vec<u8>,
}

impl LineSplitter {
    /// Add a chunk; returns the lines it completed.
    pub fn push(&mut self, chunk: &[u8]) -> Vec<Vec<u8>> {
        self.buf.extend_from_slice(chunk);
        let mut lines = Vec::new();
        while let Some(i) = self.buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.buf.drain(..=i).collect();
            let line = line.trim_ascii();
            if !line.is_empty() {
                lines.push(line.to_vec());
            }
        }
        lines
    }

    /// The unterminated rest, if any.
    pub fn finish(&mut self) -> Option<Vec<u8>> {
        let rest = std::mem::take(&mut self.buf);
        let rest = rest.trim_ascii();
        (!rest.is_empty()).then(|| rest.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_error_bodies_become_typed_errors() {
        let body = br#"{"code":"not_found","message":"no such endpoint: GET /v1/nope"}"#;
        let err = api_failure(Method::GET, "/v1/nope", StatusCode::NOT_FOUND, body);
        let text = err.to_string();
        assert!(
            text.contains("no such endpoint") && text.contains("not_found"),
            "{text}"
        );
        assert_eq!(
            err.api_error().unwrap().code,
            banger_wire::api::ErrorCode::NotFound
        );

        let err = api_failure(Method::GET, "/x", StatusCode::BAD_GATEWAY, b"<html>");
        assert!(
            matches!(err, ClientError::BadStatus { status: 502, .. }),
            "{err}"
        );
    }

    #[test]
    fn plain_renderer_prints_phase_lines() {
        let progress = |phase: &str, message: &str, current, total| StreamEvent::Progress {
            phase: phase.into(),
            message: message.into(),
            current,
            total,
        };
        let events = [
            progress("helper", "checking the root helper", None, None),
            progress(
                "download",
                "fetching rootfs",
                Some(0),
                Some(2 * 1024 * 1024),
            ),
            progress(
                "download",
                "fetching rootfs",
                Some(1024 * 1024),
                Some(2 * 1024 * 1024),
            ),
            StreamEvent::Log {
                level: LogLevel::Warn,
                message: "slow mirror".into(),
            },
            progress("bridge", "bridge banger0 set up", None, None),
            StreamEvent::Log {
                level: LogLevel::Info,
                message: "all good".into(),
            },
            StreamEvent::Done {
                result: serde_json::json!({}),
            },
        ];
        let mut r = PlainRenderer::new(Vec::new());
        for e in &events {
            r.event(e);
        }
        r.finish(true);
        let out = String::from_utf8(r.into_inner()).unwrap();
        assert_eq!(
            out,
            "[helper] checking the root helper\n\
             [download] fetching rootfs (2 MiB)\n\
             warning: slow mirror\n\
             [bridge] bridge banger0 set up\n\
             all good\n"
        );
    }

    #[test]
    fn ndjson_lines_survive_chunk_boundaries() {
        let mut s = LineSplitter::default();
        assert!(s.push(b"{\"a\":").is_empty());
        assert_eq!(
            s.push(b"1}\n\n{\"b\":2}\n{\"c\""),
            vec![b"{\"a\":1}".to_vec(), b"{\"b\":2}".to_vec()]
        );
        assert_eq!(s.finish(), Some(b"{\"c\"".to_vec()));
        assert_eq!(s.finish(), None);
    }

    #[test]
    fn log_tail_keeps_the_last_lines() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("bangerd.log");
        std::fs::write(&log, "a\nb\nc\n").unwrap();
        assert_eq!(log_tail(&log, 2), "  b\n  c");
        assert!(log_tail(&dir.path().join("none"), 2).contains("cannot read"));
    }
}
