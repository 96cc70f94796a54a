//! The HTTP/1.1 + JSON API under `/v1` (axum). Every failure, including
//! unknown routes, wrong methods and unparsable bodies, is an
//! [`ApiError`] JSON body with the HTTP status of its [`ErrorCode`].

pub mod support;

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use banger_wire::api::{
    ApiError, DaemonStatus, ErrorCode, NetworkSetupRequest, NetworkTeardownRequest,
    ShutdownResponse,
};
use banger_wire::routes;

use crate::context::Daemon;
use crate::network;
use support::{stream_operation, Failure, JsonBody};

pub use support::BODY_READ_TIMEOUT;

/// The router with every `/v1` route and the JSON fallbacks.
pub fn router(state: Arc<Daemon>) -> Router {
    Router::new()
        .route(routes::STATUS.path(), get(status))
        .route(routes::SHUTDOWN.path(), post(shutdown))
        .route(routes::CONFIG.path(), get(config))
        .route(routes::NETWORK_SETUP.path(), post(network_setup))
        .route(routes::NETWORK_TEARDOWN.path(), post(network_teardown))
        .merge(crate::vm::api::routes())
        .merge(crate::image::api::routes())
        .merge(crate::session::api::routes())
        .merge(crate::workspace::api::routes())
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
    State(state): State<Arc<Daemon>>,
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
pub fn daemon_status(state: &Daemon) -> DaemonStatus {
    DaemonStatus {
        pid: std::process::id(),
        version: banger_wire::VERSION.to_owned(),
        socket: state.layout.socket().display().to_string(),
        uptime_secs: state.started.elapsed().as_secs(),
        state_dir: state.layout.state_dir.display().to_string(),
        cache_dir: state.layout.cache_dir.display().to_string(),
        runtime_dir: state.layout.runtime_dir.display().to_string(),
        backend: state.backend.backend.to_string(),
        backend_reason: crate::config_view::backend_reason(&state.backend),
        install_mode: state.layout.mode.to_string(),
        root_helper: state.helper.describe(),
        schema_version: state.schema_version,
    }
}

async fn status(State(state): State<Arc<Daemon>>) -> Json<DaemonStatus> {
    Json(daemon_status(&state))
}

async fn shutdown(State(state): State<Arc<Daemon>>) -> Json<ShutdownResponse> {
    tracing::info!("shutdown requested over the API");
    // The graceful shutdown lets this response finish before the server stops.
    state.shutdown.send_replace(true);
    Json(ShutdownResponse {
        pid: std::process::id(),
    })
}

async fn config(State(state): State<Arc<Daemon>>) -> Json<serde_json::Value> {
    Json(crate::config_view::effective_json(&state.vms.config()))
}

async fn network_setup(
    State(state): State<Arc<Daemon>>,
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
    State(state): State<Arc<Daemon>>,
    JsonBody(NetworkTeardownRequest { force }): JsonBody<NetworkTeardownRequest>,
) -> Result<Response, Failure> {
    state.helper.check_available()?;
    if !force {
        let running: Vec<String> = {
            state
                .db()
                .list_vms()
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
        let report = network::teardown(&state, &sink).await;
        // The teardown deleted every banger tap, idle pool taps included.
        state.vms.taps.forget();
        report
    }))
}
