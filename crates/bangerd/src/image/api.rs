//! The `/v1/images` and `/v1/kernels` routes. Pull, build and promote
//! stream NDJSON progress; the rest answer plain JSON (`docs/api.md`).

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::response::Response;
use axum::routing::{get, post};
use axum::{Json, Router};
use banger_image::Kind;
use banger_wire::api::ApiError;
use banger_wire::image::{
    ArtifactDeleted, BuildRequest, ImageInfo, ImageList, ImageRegisterRequest, ImportRequest,
    KernelInfo, KernelList, PromoteRequest, PullRequest, EXPORT_INDEX_HEADER,
};

use super::ImageError;
use crate::api::support::{stream_operation, Failure, JsonBody};
use crate::context::Daemon;

/// Every image and kernel route (merged into the main router).
pub fn routes() -> Router<Arc<Daemon>> {
    Router::new()
        .route("/v1/images", get(list_images))
        .route("/v1/images/register", post(register))
        .route("/v1/images/import", post(import_url))
        .route("/v1/images/import/upload", post(import_upload))
        .route("/v1/images/{name}/export", get(export_image))
        .route("/v1/images/{name}", get(show_image).delete(delete_image))
        .route("/v1/images/{name}/pull", post(pull_image))
        .route("/v1/images/{name}/build", post(build_image))
        .route("/v1/images/{name}/promote", post(promote))
        .route("/v1/kernels", get(list_kernels))
        .route("/v1/kernels/{name}", get(show_kernel).delete(delete_kernel))
        .route("/v1/kernels/{name}/pull", post(pull_kernel))
        .route("/v1/kernels/{name}/build", post(build_kernel))
}

fn fail(e: ImageError) -> Failure {
    Failure(ApiError::from(e))
}

/// Checks that need no work (a valid name, not registered from host files)
/// answer plainly, before a stream starts.
fn checked(state: &Daemon, kind: Kind, name: &str) -> Result<(), Failure> {
    banger_image::manifest::validate_name(name).map_err(|e| fail(e.into()))?;
    super::refuse_registered(state, kind, name).map_err(fail)
}

async fn list_images(State(state): State<Arc<Daemon>>) -> Result<Json<ImageList>, Failure> {
    Ok(Json(ImageList {
        images: super::list_images(&state).map_err(fail)?,
    }))
}

async fn show_image(
    State(state): State<Arc<Daemon>>,
    Path(name): Path<String>,
) -> Result<Json<ImageInfo>, Failure> {
    super::show_image(&state, &name).map(Json).map_err(fail)
}

async fn delete_image(
    State(state): State<Arc<Daemon>>,
    Path(name): Path<String>,
) -> Result<Json<ArtifactDeleted>, Failure> {
    super::delete_image(&state, &name)
        .await
        .map(Json)
        .map_err(fail)
}

async fn list_kernels(State(state): State<Arc<Daemon>>) -> Result<Json<KernelList>, Failure> {
    Ok(Json(KernelList {
        kernels: super::list_kernels(&state).map_err(fail)?,
    }))
}

async fn show_kernel(
    State(state): State<Arc<Daemon>>,
    Path(name): Path<String>,
) -> Result<Json<KernelInfo>, Failure> {
    super::show_kernel(&state, &name).map(Json).map_err(fail)
}

async fn delete_kernel(
    State(state): State<Arc<Daemon>>,
    Path(name): Path<String>,
) -> Result<Json<ArtifactDeleted>, Failure> {
    super::delete_kernel(&state, &name)
        .await
        .map(Json)
        .map_err(fail)
}

async fn register(
    State(state): State<Arc<Daemon>>,
    JsonBody(req): JsonBody<ImageRegisterRequest>,
) -> Result<Json<ImageInfo>, Failure> {
    let st = state.clone();
    tokio::task::spawn_blocking(move || super::register(&st, &req))
        .await
        .map_err(|e| {
            fail(ImageError::Task {
                what: "register",
                reason: e.to_string(),
            })
        })?
        .map(Json)
        .map_err(fail)
}

fn pull(state: Arc<Daemon>, kind: Kind, name: String) -> Result<Response, Failure> {
    checked(&state, kind, &name)?;
    Ok(stream_operation(state, move |state, sink| async move {
        super::pull(&state, kind, &name, &sink)
            .await
            .map_err(ApiError::from)
    }))
}

async fn pull_image(
    State(state): State<Arc<Daemon>>,
    Path(name): Path<String>,
    JsonBody(PullRequest {}): JsonBody<PullRequest>,
) -> Result<Response, Failure> {
    pull(state, Kind::Image, name)
}

async fn pull_kernel(
    State(state): State<Arc<Daemon>>,
    Path(name): Path<String>,
    JsonBody(PullRequest {}): JsonBody<PullRequest>,
) -> Result<Response, Failure> {
    pull(state, Kind::Kernel, name)
}

fn build(
    state: Arc<Daemon>,
    kind: Kind,
    name: String,
    req: BuildRequest,
) -> Result<Response, Failure> {
    checked(&state, kind, &name)?;
    Ok(stream_operation(state, move |state, sink| async move {
        super::build(state, kind, name, req.force, &sink)
            .await
            .map_err(ApiError::from)
    }))
}

async fn build_image(
    State(state): State<Arc<Daemon>>,
    Path(name): Path<String>,
    JsonBody(req): JsonBody<BuildRequest>,
) -> Result<Response, Failure> {
    build(state, Kind::Image, name, req)
}

async fn build_kernel(
    State(state): State<Arc<Daemon>>,
    Path(name): Path<String>,
    JsonBody(req): JsonBody<BuildRequest>,
) -> Result<Response, Failure> {
    build(state, Kind::Kernel, name, req)
}

async fn promote(
    State(state): State<Arc<Daemon>>,
    Path(name): Path<String>,
    JsonBody(PromoteRequest {}): JsonBody<PromoteRequest>,
) -> Result<Response, Failure> {
    super::promotable(&state, &name).map_err(fail)?;
    Ok(stream_operation(state, move |state, sink| async move {
        super::promote(&state, &name, &sink)
            .await
            .map_err(ApiError::from)
    }))
}

/// The export archive as the response body; packing happens before the
/// response starts, so a failure is a plain JSON error.
async fn export_image(
    State(state): State<Arc<Daemon>>,
    Path(name): Path<String>,
) -> Result<Response, Failure> {
    use axum::http::header;
    use axum::response::IntoResponse;
    let plan = super::plan_export(&state, &name).await.map_err(fail)?;
    let size = plan.archive_size();
    let index = serde_json::to_string(plan.index()).map_err(|e| {
        fail(ImageError::Task {
            what: "export",
            reason: e.to_string(),
        })
    })?;
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<axum::body::Bytes>>(8);
    tokio::task::spawn_blocking(move || {
        let writer = std::io::BufWriter::with_capacity(1 << 20, ChannelWriter { tx: tx.clone() });
        if let Err(e) = plan.write(writer) {
            // The client sees a body shorter than Content-Length.
            tracing::warn!("export of {name} stopped: {e}");
            let _ = tx.blocking_send(Err(std::io::Error::other(e.to_string())));
        }
    });
    let body = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    Ok((
        [
            (header::CONTENT_TYPE, "application/x-tar".to_owned()),
            (header::CONTENT_LENGTH, size.to_string()),
            (header::HeaderName::from_static(EXPORT_INDEX_HEADER), index),
        ],
        axum::body::Body::from_stream(body),
    )
        .into_response())
}

/// Hands written bytes to the response body; a client that went away
/// makes the write fail, which stops the export.
struct ChannelWriter {
    tx: tokio::sync::mpsc::Sender<std::io::Result<axum::body::Bytes>>,
}

impl std::io::Write for ChannelWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.tx
            .blocking_send(Ok(axum::body::Bytes::copy_from_slice(buf)))
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "client went away"))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

async fn import_url(
    State(state): State<Arc<Daemon>>,
    JsonBody(req): JsonBody<ImportRequest>,
) -> Result<Response, Failure> {
    Ok(stream_operation(state, move |state, sink| async move {
        super::import_url(&state, &req.url, &sink)
            .await
            .map_err(ApiError::from)
    }))
}

#[derive(Debug, serde::Deserialize)]
struct UploadQuery {
    /// The file name the client read, recorded as the bundles' origin.
    #[serde(default)]
    name: Option<String>,
}

async fn import_upload(
    State(state): State<Arc<Daemon>>,
    axum::extract::Query(q): axum::extract::Query<UploadQuery>,
    body: axum::body::Body,
) -> Result<Response, Failure> {
    let label: String = q
        .name
        .unwrap_or_else(|| "upload".into())
        .chars()
        .filter(|c| !c.is_control())
        .take(4096)
        .collect();
    Ok(stream_operation(state, move |state, sink| async move {
        super::import_upload(&state, body, label, &sink)
            .await
            .map_err(ApiError::from)
    }))
}
