//! The session routes (docs/api.md, "Sessions"). The VM path parameter is
//! `{name}` like every `/v1/vms/{name}` route (the router requires one name
//! per position).

use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Path, RawQuery, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use banger_wire::api::{ApiError, ErrorCode};
use banger_wire::guest::LogStream;
use banger_wire::routes;
use banger_wire::session::{
    parse_signal, SessionInfo, SessionKillRequest, SessionList, SessionLogLine, SessionName,
    SessionNames, SessionStartRequest, SessionStopRequest,
};

use super::{SessionError, Signal, DEFAULT_STOP_GRACE, MAX_STOP_GRACE};
use crate::api::support::{Failure, JsonBody};
use crate::context::Daemon;

/// How often `logs?follow=true` asks the guest for more.
const FOLLOW_POLL: Duration = Duration::from_millis(500);

/// Every session route (merged into the main router).
pub fn routes() -> Router<Arc<Daemon>> {
    Router::new()
        .route(routes::SESSION_NAMES.path(), get(all_names))
        .route(routes::SESSION_LIST.path(), get(list).post(start))
        .route(routes::SESSION_SHOW.path(), get(show))
        .route(routes::SESSION_STOP.path(), post(stop))
        .route(routes::SESSION_KILL.path(), post(kill))
        .route(routes::SESSION_LOGS.path(), get(logs))
}

fn fail(e: SessionError) -> Failure {
    Failure(ApiError::from(e))
}

fn bad(message: String) -> Failure {
    Failure::new(ErrorCode::BadRequest, message)
}

async fn all_names(State(state): State<Arc<Daemon>>) -> Result<Json<SessionNames>, Failure> {
    let db = state.db.lock().unwrap_or_else(|e| e.into_inner());
    let vms = db.list_vms().map_err(|e| fail(e.into()))?;
    let sessions = db
        .list_all_named_sessions()
        .map_err(|e| fail(e.into()))?
        .into_iter()
        .filter_map(|s| {
            let vm = vms.iter().find(|v| v.id == s.record.vm_id)?;
            Some(SessionName {
                vm: vm.name.clone(),
                name: s.name,
            })
        })
        .collect();
    Ok(Json(SessionNames { sessions }))
}

async fn list(
    State(state): State<Arc<Daemon>>,
    Path(name): Path<String>,
) -> Result<Json<SessionList>, Failure> {
    let sessions = super::list(&state, &name).await.map_err(fail)?;
    Ok(Json(SessionList { sessions }))
}

async fn start(
    State(state): State<Arc<Daemon>>,
    Path(name): Path<String>,
    JsonBody(req): JsonBody<SessionStartRequest>,
) -> Result<Json<SessionInfo>, Failure> {
    super::start(&state, &name, req)
        .await
        .map(Json)
        .map_err(fail)
}

async fn show(
    State(state): State<Arc<Daemon>>,
    Path((name, session)): Path<(String, String)>,
) -> Result<Json<SessionInfo>, Failure> {
    super::show(&state, &name, &session)
        .await
        .map(Json)
        .map_err(fail)
}

async fn stop(
    State(state): State<Arc<Daemon>>,
    Path((name, session)): Path<(String, String)>,
    JsonBody(req): JsonBody<SessionStopRequest>,
) -> Result<Json<SessionInfo>, Failure> {
    let grace = req
        .grace_secs
        .map_or(DEFAULT_STOP_GRACE, Duration::from_secs);
    if grace > MAX_STOP_GRACE {
        return Err(bad(format!(
            "grace_secs {} is more than {} seconds",
            grace.as_secs(),
            MAX_STOP_GRACE.as_secs()
        )));
    }
    super::signal(&state, &name, &session, Signal::Stop { grace })
        .await
        .map(Json)
        .map_err(fail)
}

async fn kill(
    State(state): State<Arc<Daemon>>,
    Path((name, session)): Path<(String, String)>,
    JsonBody(req): JsonBody<SessionKillRequest>,
) -> Result<Json<SessionInfo>, Failure> {
    let text = req.signal.unwrap_or_else(|| "KILL".into());
    let signal = parse_signal(&text).ok_or_else(|| {
        bad(format!(
            "unknown signal {text:?} (a name like TERM, KILL, HUP or a number 1-31)"
        ))
    })?;
    super::signal(&state, &name, &session, Signal::Send(signal))
        .await
        .map(Json)
        .map_err(fail)
}

/// `stream=stdout|stderr|both`, `tail=N`, `follow[=true]`.
fn log_query(query: Option<String>) -> Result<(Vec<LogStream>, Option<u32>, bool), Failure> {
    let mut streams = vec![LogStream::Stdout, LogStream::Stderr];
    let mut tail = None;
    let mut follow = false;
    for pair in query
        .as_deref()
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
    {
        let (key, value) = pair.split_once('=').unwrap_or((pair, "true"));
        match key {
            "stream" => {
                streams = match value {
                    "stdout" => vec![LogStream::Stdout],
                    "stderr" => vec![LogStream::Stderr],
                    "both" => vec![LogStream::Stdout, LogStream::Stderr],
                    other => {
                        return Err(bad(format!(
                            "stream={other:?}: expected stdout, stderr or both"
                        )))
                    }
                }
            }
            "tail" => {
                tail = Some(
                    value
                        .parse::<u32>()
                        .map_err(|_| bad(format!("tail={value:?}: expected a number of lines")))?,
                )
            }
            "follow" => {
                follow = match value {
                    "" | "1" | "true" | "yes" => true,
                    "0" | "false" | "no" => false,
                    other => return Err(bad(format!("follow={other:?}: expected true or false"))),
                }
            }
            other => {
                return Err(bad(format!(
                    "unknown query parameter {other:?} (allowed: stream, tail, follow)"
                )))
            }
        }
    }
    Ok((streams, tail, follow))
}

async fn logs(
    State(state): State<Arc<Daemon>>,
    Path((name, session)): Path<(String, String)>,
    RawQuery(query): RawQuery,
) -> Result<Response, Failure> {
    let (streams, tail, follow) = log_query(query)?;
    let mut cursor = super::open_logs(&state, &name, &session, streams, tail).map_err(fail)?;
    // The first read happens before the answer starts, so a guest that
    // cannot be asked is a plain error response.
    let (first, done) = super::read_logs(&state, &mut cursor).await.map_err(fail)?;
    let lines = |chunks: Vec<(LogStream, String)>| -> Bytes {
        let mut out = Vec::new();
        for (stream, data) in chunks {
            serde_json::to_writer(&mut out, &SessionLogLine { stream, data })
                .expect("log lines serialize");
            out.push(b'\n');
        }
        Bytes::from(out)
    };
    let head = lines(first);
    let more = follow && !done;
    let tail_stream = futures::stream::unfold(
        (state, cursor, more),
        move |(state, mut cursor, more)| async move {
            if !more {
                return None;
            }
            loop {
                tokio::time::sleep(FOLLOW_POLL).await;
                match super::read_logs(&state, &mut cursor).await {
                    Ok((chunks, done)) => {
                        if chunks.is_empty() && !done {
                            continue;
                        }
                        return Some((
                            Ok::<Bytes, std::io::Error>(lines(chunks)),
                            (state, cursor, !done),
                        ));
                    }
                    Err(e) => {
                        return Some((
                            Err(std::io::Error::other(e.to_string())),
                            (state, cursor, false),
                        ))
                    }
                }
            }
        },
    );
    let body = futures::stream::once(async move { Ok(head) }).chain(tail_stream);
    Ok((
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(body),
    )
        .into_response())
}

use futures::StreamExt as _;
