//! `POST /v1/vms/{name}/workspace` (docs/api.md): the query holds the
//! [`WorkspaceParams`], the body is the tar stream; the answer streams
//! progress and ends with the [`banger_wire::workspace::WorkspaceReport`].

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::response::Response;
use axum::routing::post;
use axum::Router;
use banger_wire::api::ApiError;
use banger_wire::routes;
use banger_wire::workspace::WorkspaceParams;

use crate::api::support::{stream_operation, Failure};
use crate::context::Daemon;

/// The workspace route (merged into the main router).
pub fn routes() -> Router<Arc<Daemon>> {
    Router::new().route(routes::VM_WORKSPACE.path(), post(prepare))
}

async fn prepare(
    State(state): State<Arc<Daemon>>,
    Path(name): Path<String>,
    Query(params): Query<WorkspaceParams>,
    body: axum::body::Body,
) -> Result<Response, Failure> {
    // Refused before a byte of the body is read.
    super::check(&state, &name, &params).map_err(|e| Failure(ApiError::from(e)))?;
    Ok(stream_operation(state, move |state, sink| async move {
        super::prepare(&state, &name, params, body.into_data_stream(), &sink)
            .await
            .map_err(ApiError::from)
    }))
}
