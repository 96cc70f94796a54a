//! What every route module shares: the [`Failure`] response, the
//! [`JsonBody`] extractor and streamed responses ([`stream_operation`]).

use std::convert::Infallible;

use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, Request};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use banger_wire::api::{ApiError, ErrorCode, StreamEvent, NDJSON};
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;

use crate::events::{EventSink, STREAM_BUFFER};

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
    use std::sync::Arc;
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
}
