//! The HTTP/1.1 + JSON API under `/v1` (axum). Every failure, including
//! unknown routes, wrong methods and unparsable bodies, is an
//! [`ApiError`] JSON body with the HTTP status of its [`ErrorCode`].

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use banger_host::paths::Layout;
use banger_state::StateDb;
use banger_wire::api::{
    ApiError, DaemonStatus, ErrorCode, NetworkSetupRequest, NetworkTeardownRequest,
    ShutdownResponse, StreamEvent, NDJSON,
};
use serde::de::DeserializeOwned;
use tokio::sync::{mpsc, watch};

use crate::helper::RootHelper;
use crate::network::{self, NetSettings};

/// Everything the handlers share.
#[derive(Debug)]
pub struct AppState {
    /// Paths of this install.
    pub layout: Layout,
    /// Bridge and NAT settings from the config.
    pub net: NetSettings,
    /// The state database (opened and migrated at start).
    pub db: Mutex<StateDb>,
    /// Schema version of `db`, cached for `/v1/status`.
    pub schema_version: u32,
    /// The VMM backend `vmm = auto` resolves to, and why.
    pub backend: (String, String),
    /// How privileged operations are reached.
    pub helper: RootHelper,
    /// When the daemon started (for uptime).
    pub started: Instant,
    /// Set to true to begin a graceful shutdown.
    pub shutdown: watch::Sender<bool>,
    /// Serializes host network changes so two requests never interleave.
    pub network_lock: tokio::sync::Mutex<()>,
    /// VM settings, the VMM launcher and per-VM locks.
    pub vms: crate::vm::VmManager,
}

/// The router with every `/v1` route and the JSON fallbacks.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/v1/status", get(status))
        .route("/v1/shutdown", post(shutdown))
        .route("/v1/config", get(config))
        .route("/v1/network/setup", post(network_setup))
        .route("/v1/network/teardown", post(network_teardown))
        .merge(crate::vm::api::routes())
        .merge(crate::image::api::routes())
        .merge(crate::session::api::routes())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            config_notices,
        ))
        .with_state(state)
        .layer(axum::middleware::map_response(json_rejections))
}

/// axum's own extractor rejections (a path segment that is not UTF-8 after
/// percent-decoding, ...) are plain text; turn every client error that is
/// not JSON yet into an [`ApiError`] with the same status.
async fn json_rejections(response: Response) -> Response {
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !status.is_client_error() || is_json {
        return response;
    }
    let code = match status {
        StatusCode::NOT_FOUND => ErrorCode::NotFound,
        StatusCode::METHOD_NOT_ALLOWED => ErrorCode::MethodNotAllowed,
        _ => ErrorCode::BadRequest,
    };
    // A rejection's text is a short sentence; cap it all the same.
    let text = axum::body::to_bytes(response.into_body(), 4096)
        .await
        .unwrap_or_default();
    let message = String::from_utf8_lossy(&text).trim().to_owned();
    (status, Json(ApiError { code, message })).into_response()
}

/// Before each request: pick up an edited config file (so the handler runs
/// with it). After: tell the client what the user must know about the file.
async fn config_notices(
    State(state): State<Arc<AppState>>,
    req: Request,
    next: axum::middleware::Next,
) -> Response {
    let live = state.vms.live_config();
    live.refresh();
    let notices = live.notices();
    let mut resp = next.run(req).await;
    for notice in notices {
        // Header values cannot hold control characters; a notice is one line.
        let line: String = notice
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
        if let Ok(value) = axum::http::HeaderValue::from_str(&line) {
            resp.headers_mut()
                .append(crate::live_config::CONFIG_NOTICE_HEADER, value);
        }
    }
    resp
}

/// An [`ApiError`] as an HTTP response.
#[derive(Debug)]
pub struct Failure(pub ApiError);

impl Failure {
    /// A failure with `code` and `message`.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Failure {
        Failure(ApiError {
            code,
            message: message.into(),
        })
    }
}

impl From<ApiError> for Failure {
    fn from(e: ApiError) -> Failure {
        Failure(e)
    }
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.0.code.http_status())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (status, Json(self.0)).into_response()
    }
}

/// How long a JSON request body may take to arrive in full.
pub const BODY_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// A JSON request body. An empty body means `T::default()`; anything else
/// must parse as `T` (unknown fields rejected), else 400 `bad_request`. The
/// content type is not checked so `curl -d '{}'` works as typed.
#[derive(Debug)]
pub struct JsonBody<T>(pub T);

impl<S, T> FromRequest<S> for JsonBody<T>
where
    S: Send + Sync,
    T: DeserializeOwned + Default,
{
    type Rejection = Failure;

    async fn from_request(req: Request, state: &S) -> Result<Self, Failure> {
        // The head had its own timeout (crate::http); a body that trickles
        // or stops would hold this request forever without this one.
        let read = tokio::time::timeout(BODY_READ_TIMEOUT, Bytes::from_request(req, state));
        let bytes = read
            .await
            .map_err(|_| {
                Failure::new(
                    ErrorCode::BadRequest,
                    format!(
                        "the request body did not arrive within {} s",
                        BODY_READ_TIMEOUT.as_secs()
                    ),
                )
            })?
            .map_err(|r| {
                Failure::new(
                    ErrorCode::BadRequest,
                    format!("cannot read request body: {}", r.body_text()),
                )
            })?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(JsonBody(T::default()));
        }
        match Json::<T>::from_bytes(&bytes) {
            Ok(Json(v)) => Ok(JsonBody(v)),
            Err(r) => Err(Failure::new(
                ErrorCode::BadRequest,
                format!("invalid JSON body: {}", r.body_text()),
            )),
        }
    }
}

async fn not_found(req: Request) -> Failure {
    Failure::new(
        ErrorCode::NotFound,
        format!("no such endpoint: {} {}", req.method(), req.uri().path()),
    )
}

async fn method_not_allowed(req: Request) -> Failure {
    Failure::new(
        ErrorCode::MethodNotAllowed,
        format!(
            "method {} is not allowed on {}",
            req.method(),
            req.uri().path()
        ),
    )
}

/// The current [`DaemonStatus`].
pub fn daemon_status(state: &AppState) -> DaemonStatus {
    DaemonStatus {
        pid: std::process::id(),
        version: banger_wire::VERSION.to_owned(),
        socket: state.layout.socket().display().to_string(),
        uptime_secs: state.started.elapsed().as_secs(),
        state_dir: state.layout.state_dir.display().to_string(),
        cache_dir: state.layout.cache_dir.display().to_string(),
        runtime_dir: state.layout.runtime_dir.display().to_string(),
        backend: state.backend.0.clone(),
        backend_reason: state.backend.1.clone(),
        install_mode: state.layout.mode,
        root_helper: state.helper.describe(),
        schema_version: state.schema_version,
    }
}

async fn status(State(state): State<Arc<AppState>>) -> Json<DaemonStatus> {
    Json(daemon_status(&state))
}

async fn shutdown(State(state): State<Arc<AppState>>) -> Json<ShutdownResponse> {
    tracing::info!("shutdown requested over the API");
    // The graceful shutdown lets this response finish before the server stops.
    state.shutdown.send_replace(true);
    Json(ShutdownResponse {
        pid: std::process::id(),
    })
}

async fn config(State(state): State<Arc<AppState>>) -> Json<serde_json::Value> {
    Json(crate::config_view::effective_json(&state.vms.config()))
}

async fn network_setup(
    State(state): State<Arc<AppState>>,
    JsonBody(req): JsonBody<NetworkSetupRequest>,
) -> Result<Response, Failure> {
    state.helper.check_available()?;
    Ok(stream_operation(state, move |state, sink| async move {
        let _guard = state.network_lock.lock().await;
        let report = network::setup(&state.helper, &state.net, &req, &sink).await?;
        crate::dns::ensure(&state).await;
        Ok(report)
    }))
}

async fn network_teardown(
    State(state): State<Arc<AppState>>,
    JsonBody(NetworkTeardownRequest { force }): JsonBody<NetworkTeardownRequest>,
) -> Result<Response, Failure> {
    state.helper.check_available()?;
    if !force {
        let running: Vec<String> = {
            let db = state.db.lock().unwrap_or_else(|e| e.into_inner());
            db.list_vms()
                .map_err(|e| Failure::new(ErrorCode::State, e.to_string()))?
                .into_iter()
                .filter(|v| {
                    matches!(
                        v.state,
                        banger_state::VmState::Running
                            | banger_state::VmState::Starting
                            | banger_state::VmState::Stopping
                    )
                })
                .map(|v| v.name)
                .collect()
        };
        if !running.is_empty() {
            return Err(Failure::new(
                ErrorCode::Conflict,
                format!(
                    "VMs still run on the bridge ({}): stop them first, or tear down \
                     anyway with --force (they lose their network)",
                    running.join(", ")
                ),
            ));
        }
    }
    Ok(stream_operation(state, move |state, sink| async move {
        let _guard = state.network_lock.lock().await;
        let report = network::teardown(&state.helper, &state.net, &sink).await;
        // The teardown deleted every banger tap, idle pool taps included.
        state.vms.taps.forget();
        report
    }))
}

/// How many NDJSON lines a streamed response buffers for a slow client
/// before progress lines are dropped.
pub const STREAM_BUFFER: usize = 64;

/// Sends [`StreamEvent`]s of one streamed response as NDJSON lines.
///
/// Progress and log lines never wait for the client: an operation holds
/// locks (a VM's, the network's) while it reports, and a client that stops
/// reading must not hold them with it. When [`STREAM_BUFFER`] lines are
/// unread, further ones are dropped (and counted in the next line that fits);
/// only the final `Done`/`Error`, sent after the operation let go of
/// everything, waits for room.
#[derive(Debug, Clone)]
pub struct EventSink {
    tx: mpsc::Sender<Bytes>,
    dropped: Arc<std::sync::atomic::AtomicU64>,
}

fn ndjson_line(event: &StreamEvent) -> Option<Bytes> {
    match serde_json::to_vec(event) {
        Ok(mut line) => {
            line.push(b'\n');
            Some(Bytes::from(line))
        }
        Err(e) => {
            tracing::error!("cannot serialize stream event {event:?}: {e}");
            None
        }
    }
}

impl EventSink {
    fn new(tx: mpsc::Sender<Bytes>) -> EventSink {
        EventSink {
            tx,
            dropped: Arc::default(),
        }
    }

    /// Send one progress or log event without waiting: a client that reads
    /// slowly loses progress lines, one that went away loses all of them, and
    /// neither stops the operation (host changes half-done are worse than an
    /// unread progress line).
    pub async fn send(&self, event: StreamEvent) {
        use std::sync::atomic::Ordering;
        let dropped = self.dropped.load(Ordering::Relaxed);
        if dropped > 0 {
            let note = StreamEvent::Log {
                level: banger_wire::api::LogLevel::Warn,
                message: format!("{dropped} progress lines were dropped: the client reads slowly"),
            };
            if let Some(line) = ndjson_line(&note) {
                if self.tx.try_send(line).is_ok() {
                    self.dropped.fetch_sub(dropped, Ordering::Relaxed);
                }
            }
        }
        let Some(line) = ndjson_line(&event) else {
            return;
        };
        match self.tx.try_send(line) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                tracing::debug!("stream client went away; continuing the operation");
            }
        }
    }

    /// Send the last event of a stream, waiting for room: the operation is
    /// over and holds nothing, and the client needs this line most. A client
    /// that never reads again is cut off by the server's write-stall timeout,
    /// which closes the channel.
    async fn send_final(&self, event: StreamEvent) {
        if let Some(line) = ndjson_line(&event) {
            if self.tx.send(line).await.is_err() {
                tracing::debug!("stream client went away before the result");
            }
        }
    }

    /// A sink whose events go nowhere (operations started by the daemon itself).
    pub fn discard() -> EventSink {
        let (tx, _) = mpsc::channel(1);
        EventSink::new(tx)
    }

    /// Convenience for a [`StreamEvent::Progress`] without counts.
    pub async fn progress(&self, phase: &str, message: impl Into<String>) {
        self.send(StreamEvent::Progress {
            phase: phase.to_owned(),
            message: message.into(),
            current: None,
            total: None,
        })
        .await;
    }
}

/// Run `op` in its own task and stream its events, ending with exactly one
/// `Done` (its result) or `Error`.
pub(crate) fn stream_operation<S, F, Fut, R>(state: S, op: F) -> Response
where
    S: Send + 'static,
    F: FnOnce(S, EventSink) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<R, ApiError>> + Send + 'static,
    R: serde::Serialize,
{
    let (tx, rx) = mpsc::channel::<Bytes>(STREAM_BUFFER);
    let sink = EventSink::new(tx);
    tokio::spawn(async move {
        let last = match op(state, sink.clone()).await {
            Ok(result) => match serde_json::to_value(&result) {
                Ok(result) => StreamEvent::Done { result },
                Err(e) => StreamEvent::Error {
                    error: ApiError {
                        code: ErrorCode::Internal,
                        message: format!("cannot serialize the result: {e}"),
                    },
                },
            },
            Err(error) => {
                tracing::warn!(code = ?error.code, "streamed operation failed: {}", error.message);
                StreamEvent::Error { error }
            }
        };
        sink.send_final(last).await;
    });
    let body = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|line| (Ok::<_, Infallible>(line), rx))
    });
    ([(header::CONTENT_TYPE, NDJSON)], Body::from_stream(body)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// A client that starts a streamed operation and never reads the body:
    /// the operation still runs to its end and lets go of its lock, and what
    /// a reader finally gets is the result plus a note about dropped lines.
    #[tokio::test]
    async fn a_client_that_stops_reading_never_blocks_the_operation_or_its_lock() {
        let lock = Arc::new(tokio::sync::Mutex::new(()));
        let (finished_tx, finished_rx) = tokio::sync::oneshot::channel();
        let response = stream_operation(lock.clone(), move |lock, sink| async move {
            {
                let _held = lock.lock().await;
                for i in 0..20 * STREAM_BUFFER {
                    sink.progress("flood", format!("line {i}")).await;
                }
            }
            let _ = finished_tx.send(());
            Ok::<_, ApiError>("done")
        });
        tokio::time::timeout(Duration::from_secs(60), finished_rx)
            .await
            .expect("the operation must finish while nobody reads its stream")
            .unwrap();
        assert!(
            lock.try_lock().is_ok(),
            "the operation's lock is still held"
        );

        let body = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        let lines: Vec<StreamEvent> = body
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_slice(l).unwrap())
            .collect();
        assert!(lines.len() <= STREAM_BUFFER + 1, "{} lines", lines.len());
        assert!(
            matches!(lines.last(), Some(StreamEvent::Done { result }) if result == "done"),
            "{lines:?}"
        );
    }

    #[tokio::test]
    async fn dropped_progress_lines_are_counted_for_the_reader() {
        let (tx, mut rx) = mpsc::channel(2);
        let sink = EventSink::new(tx);
        for i in 0..5 {
            sink.progress("p", format!("{i}")).await;
        }
        rx.recv().await.unwrap();
        rx.recv().await.unwrap();
        sink.progress("p", "after").await;
        let note: StreamEvent = serde_json::from_slice(&rx.recv().await.unwrap()).unwrap();
        assert!(
            matches!(&note, StreamEvent::Log { message, .. } if message.starts_with("3 progress lines were dropped")),
            "{note:?}"
        );
        let next: StreamEvent = serde_json::from_slice(&rx.recv().await.unwrap()).unwrap();
        assert!(
            matches!(&next, StreamEvent::Progress { message, .. } if message == "after"),
            "{next:?}"
        );
    }
}
