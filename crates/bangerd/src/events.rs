//! Progress of long operations: an [`EventSink`] carries [`StreamEvent`]s
//! from an operation (VM start, image pull, network setup) to whoever
//! started it, as NDJSON lines; `crate::api::support::stream_operation`
//! turns them into a streamed HTTP response.

use std::sync::Arc;

use axum::body::Bytes;
use banger_wire::api::StreamEvent;
use tokio::sync::mpsc;

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
    pub(crate) fn new(tx: mpsc::Sender<Bytes>) -> EventSink {
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
    pub(crate) async fn send_final(&self, event: StreamEvent) {
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

#[cfg(test)]
mod tests {
    use super::*;

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
