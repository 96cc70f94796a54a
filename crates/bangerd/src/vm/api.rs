//! The `/v1/vms` routes. Input that can be checked without making anything
//! (name, sizes, backend, helper) is answered with a plain error response;
//! long operations stream NDJSON progress (`docs/api.md`).

use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Path, RawQuery, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use banger_state::VmRecord;
use banger_wire::api::{ApiError, ErrorCode};
use banger_wire::vm::{
    VmActivityRequest, VmCreateRequest, VmDeleted, VmInfo, VmList, VmPorts, VmStartRequest,
    VmStopRequest, VmTimings,
};
use tokio::io::AsyncReadExt;

use super::paths::VmPaths;
use super::{info, ops, VmError};
use crate::api::support::{stream_operation, Failure, JsonBody};
use crate::context::Daemon;

/// How often `logs?follow=true` looks for new serial output.
const FOLLOW_POLL: Duration = Duration::from_millis(200);

/// Every `/v1/vms` route (merged into the main router).
pub fn routes() -> Router<Arc<Daemon>> {
    Router::new()
        .route("/v1/vms", get(list).post(create))
        .route("/v1/vms/{name}", get(show).delete(delete))
        .route("/v1/vms/{name}/start", post(start))
        .route("/v1/vms/{name}/stop", post(stop))
        .route("/v1/vms/{name}/restart", post(restart))
        .route("/v1/vms/{name}/logs", get(logs))
        .route("/v1/vms/{name}/ports", get(ports))
        .route("/v1/vms/{name}/activity", post(activity))
        .route("/v1/vms/{name}/timings", get(get_timings).post(put_timings))
}

fn fail(e: VmError) -> Failure {
    Failure(ApiError::from(e))
}

fn record(state: &Daemon, name: &str) -> Result<VmRecord, Failure> {
    let db = state.db();
    db.get_vm_by_name(name)
        .map_err(|e| fail(e.into()))?
        .ok_or_else(|| {
            fail(VmError::NotFound {
                name: name.to_owned(),
            })
        })
}

/// Boolean query flags: `?force`, `?force=true`, `?force=1` (`false`/`0`
/// turn them off); anything not in `allowed` is a 400.
fn flags(query: Option<String>, allowed: &[&str]) -> Result<Vec<String>, Failure> {
    let mut on = Vec::new();
    for pair in query
        .as_deref()
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
    {
        let (key, value) = pair.split_once('=').unwrap_or((pair, "true"));
        if !allowed.contains(&key) {
            return Err(Failure::new(
                ErrorCode::BadRequest,
                format!(
                    "unknown query parameter {key:?} (allowed: {})",
                    allowed.join(", ")
                ),
            ));
        }
        match value {
            "" | "1" | "true" | "yes" => on.push(key.to_owned()),
            "0" | "false" | "no" => {}
            other => {
                return Err(Failure::new(
                    ErrorCode::BadRequest,
                    format!("query parameter {key}={other:?}: expected true or false"),
                ))
            }
        }
    }
    Ok(on)
}

async fn list(State(state): State<Arc<Daemon>>) -> Result<Json<VmList>, Failure> {
    let vms = {
        let db = state.db();
        db.list_vms().map_err(|e| fail(e.into()))?
    };
    Ok(Json(VmList {
        vms: vms.iter().map(info::vm_info).collect(),
    }))
}

async fn create(
    State(state): State<Arc<Daemon>>,
    JsonBody(req): JsonBody<VmCreateRequest>,
) -> Result<Response, Failure> {
    let resolved = ops::check_create(&state, &req).map_err(fail)?;
    if !resolved.no_start {
        state.helper.check_available()?;
    }
    Ok(stream_operation(state, move |state, sink| async move {
        ops::create(state, resolved, sink)
            .await
            .map_err(ApiError::from)
    }))
}

async fn show(
    State(state): State<Arc<Daemon>>,
    Path(name): Path<String>,
) -> Result<Json<VmInfo>, Failure> {
    let vm = record(&state, &name)?;
    Ok(Json(info::vm_show(&state, &vm, true).await))
}

async fn delete(
    State(state): State<Arc<Daemon>>,
    Path(name): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Json<VmDeleted>, Failure> {
    let force = flags(query, &["force"])?.iter().any(|f| f == "force");
    ops::delete(&state, &name, force)
        .await
        .map(Json)
        .map_err(fail)
}

async fn start(
    State(state): State<Arc<Daemon>>,
    Path(name): Path<String>,
    JsonBody(VmStartRequest {}): JsonBody<VmStartRequest>,
) -> Result<Response, Failure> {
    record(&state, &name)?;
    state.helper.check_available()?;
    Ok(stream_operation(state, move |state, sink| async move {
        ops::start(state, name, sink).await.map_err(ApiError::from)
    }))
}

async fn stop(
    State(state): State<Arc<Daemon>>,
    Path(name): Path<String>,
    JsonBody(VmStopRequest { force }): JsonBody<VmStopRequest>,
) -> Result<Response, Failure> {
    record(&state, &name)?;
    Ok(stream_operation(state, move |state, sink| async move {
        ops::stop(state, name, force, sink)
            .await
            .map_err(ApiError::from)
    }))
}

async fn restart(
    State(state): State<Arc<Daemon>>,
    Path(name): Path<String>,
    JsonBody(VmStopRequest { force }): JsonBody<VmStopRequest>,
) -> Result<Response, Failure> {
    record(&state, &name)?;
    state.helper.check_available()?;
    Ok(stream_operation(state, move |state, sink| async move {
        ops::restart(state, name, force, sink)
            .await
            .map_err(ApiError::from)
    }))
}

async fn ports(
    State(state): State<Arc<Daemon>>,
    Path(name): Path<String>,
) -> Result<Json<VmPorts>, Failure> {
    let vm = record(&state, &name)?;
    info::vm_ports(&state, &vm).await.map(Json).map_err(fail)
}

/// Record activity (an SSH session starting) and answer with the VM's
/// details minus the agent's (what `banger vm ssh` needs).
async fn activity(
    State(state): State<Arc<Daemon>>,
    Path(name): Path<String>,
    JsonBody(VmActivityRequest {}): JsonBody<VmActivityRequest>,
) -> Result<Json<VmInfo>, Failure> {
    let vm = record(&state, &name)?;
    {
        let db = state.db();
        db.touch_vm(&vm.id).map_err(|e| fail(e.into()))?;
    }
    Ok(Json(
        info::vm_show(&state, &record(&state, &name)?, false).await,
    ))
}

/// Where `banger vm run`'s phase timings of a VM are kept: beside its
/// disks, so they go with the VM.
fn timings_path(state: &Daemon, vm: &VmRecord) -> std::path::PathBuf {
    VmPaths::new(&state.layout, &vm.id)
        .dir
        .join(info::TIMINGS_FILE)
}

/// The phase timings `banger vm run` recorded (empty when there are none).
async fn get_timings(
    State(state): State<Arc<Daemon>>,
    Path(name): Path<String>,
) -> Result<Json<VmTimings>, Failure> {
    let vm = record(&state, &name)?;
    let path = timings_path(&state, &vm);
    match tokio::fs::read(&path).await {
        // A file that does not parse is as good as none: it is only shown.
        Ok(bytes) => Ok(Json(serde_json::from_slice(&bytes).unwrap_or_default())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Json(VmTimings::default())),
        Err(source) => Err(fail(VmError::Io {
            op: "read",
            path,
            source,
        })),
    }
}

/// Replace the phase timings `banger vm run` recorded for a VM.
async fn put_timings(
    State(state): State<Arc<Daemon>>,
    Path(name): Path<String>,
    JsonBody(timings): JsonBody<VmTimings>,
) -> Result<Json<VmTimings>, Failure> {
    let vm = record(&state, &name)?;
    let path = timings_path(&state, &vm);
    let bytes = serde_json::to_vec(&timings)
        .map_err(|e| Failure::new(ErrorCode::Internal, format!("encoding the timings: {e}")))?;
    tokio::fs::write(&path, bytes).await.map_err(|source| {
        fail(VmError::Io {
            op: "write",
            path,
            source,
        })
    })?;
    Ok(Json(timings))
}

/// The serial console log as `text/plain`: the rotated part
/// (`serial.log.1`, when there is one) and then the live log. With
/// `?follow=true` the answer keeps going with new output until the client
/// hangs up or the VM is deleted; a rotation of the live log (it shrinks)
/// starts it again from its beginning.
async fn logs(
    State(state): State<Arc<Daemon>>,
    Path(name): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Response, Failure> {
    let follow = flags(query, &["follow"])?.iter().any(|f| f == "follow");
    let vm = record(&state, &name)?;
    let path = VmPaths::new(&state.layout, &vm.id).serial_log;
    // Both files are opened now, so a rotation while the answer is written
    // cannot show the same lines twice or skip the live ones.
    let old = open_log(&super::console::rotated(&path)).await?;
    let live = open_log(&path).await?;
    let dir = path.parent().map(ToOwned::to_owned).unwrap_or_default();
    let log = LogStream {
        old,
        live,
        pos: 0,
        path,
        dir,
        follow,
    };
    let stream = futures::stream::unfold(log, |mut log| async move {
        log.next_chunk()
            .await
            .map(|chunk| (chunk.map(Bytes::from), log))
    });
    Ok((
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        Body::from_stream(stream),
    )
        .into_response())
}

async fn open_log(path: &std::path::Path) -> Result<Option<tokio::fs::File>, Failure> {
    match tokio::fs::File::open(path).await {
        Ok(f) => Ok(Some(f)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(fail(VmError::Io {
            op: "open",
            path: path.to_owned(),
            source,
        })),
    }
}

/// The state of one `logs` answer.
struct LogStream {
    /// The rotated log, read first and then dropped.
    old: Option<tokio::fs::File>,
    live: Option<tokio::fs::File>,
    /// How far into `live` we are.
    pos: u64,
    path: std::path::PathBuf,
    dir: std::path::PathBuf,
    follow: bool,
}

impl LogStream {
    async fn next_chunk(&mut self) -> Option<std::io::Result<Vec<u8>>> {
        use tokio::io::AsyncSeekExt;
        let mut buf = vec![0u8; 64 << 10];
        if let Some(old) = self.old.as_mut() {
            match old.read(&mut buf).await {
                Ok(0) => self.old = None,
                Ok(n) => {
                    buf.truncate(n);
                    return Some(Ok(buf));
                }
                Err(e) => return Some(Err(e)),
            }
        }
        loop {
            if self.live.is_none() {
                self.live = tokio::fs::File::open(&self.path).await.ok();
                self.pos = 0;
            }
            if let Some(f) = self.live.as_mut() {
                match f.read(&mut buf).await {
                    Ok(0) => {
                        // Rotated: the file is shorter than what we read.
                        let len = f.metadata().await.map_or(self.pos, |m| m.len());
                        if len < self.pos {
                            if let Err(e) = f.seek(std::io::SeekFrom::Start(0)).await {
                                return Some(Err(e));
                            }
                            self.pos = 0;
                            continue;
                        }
                    }
                    Ok(n) => {
                        self.pos += n as u64;
                        buf.truncate(n);
                        return Some(Ok(buf));
                    }
                    Err(e) => {
                        self.follow = false;
                        return Some(Err(e));
                    }
                }
            }
            // The VM's directory goes away when it is deleted.
            if !self.follow || !self.dir.exists() {
                return None;
            }
            tokio::time::sleep(FOLLOW_POLL).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_flags() {
        assert!(flags(None, &["force"]).unwrap().is_empty());
        assert_eq!(flags(Some("force".into()), &["force"]).unwrap(), ["force"]);
        assert_eq!(
            flags(Some("force=1".into()), &["force"]).unwrap(),
            ["force"]
        );
        assert!(flags(Some("force=false".into()), &["force"])
            .unwrap()
            .is_empty());
        assert_eq!(
            flags(Some("forse".into()), &["force"]).unwrap_err().0.code,
            ErrorCode::BadRequest
        );
        assert_eq!(
            flags(Some("force=maybe".into()), &["force"])
                .unwrap_err()
                .0
                .code,
            ErrorCode::BadRequest
        );
    }
}
