//! Serving the API router over HTTP/1.1 on the Unix socket, with the
//! timeouts `axum::serve` does not offer: any local process that may connect
//! could otherwise hold a connection (and its task) forever.
//!
//! - **Header read / idle:** a request head must be complete within
//!   [`HEADER_READ_TIMEOUT`] of the connection being ready for it: after
//!   accept, and after each response on a kept-alive connection (so it is
//!   the idle timeout too). hyper closes the connection otherwise.
//! - **Write stall:** a response the client does not take any byte of for
//!   [`WRITE_STALL_TIMEOUT`] ends the connection ([`StallGuard`]); that also
//!   drops a streamed body, which ends `logs?follow` and unblocks the final
//!   line of a progress stream ([`crate::api::EventSink`]).
//!
//! Generic over axum's [`Listener`] so a listener that vets its peers plugs
//! in unchanged.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use axum::serve::Listener;
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::watch;

/// How long a client may take to send a request head, counted from accept
/// or from the end of the previous response on the same connection.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a response may wait for the client to take any of its bytes.
pub const WRITE_STALL_TIMEOUT: Duration = Duration::from_secs(60);

/// The timeouts of one server (tests shorten them).
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// See [`HEADER_READ_TIMEOUT`].
    pub header_read: Duration,
    /// See [`WRITE_STALL_TIMEOUT`].
    pub write_stall: Duration,
}

impl Default for Timeouts {
    fn default() -> Timeouts {
        Timeouts {
            header_read: HEADER_READ_TIMEOUT,
            write_stall: WRITE_STALL_TIMEOUT,
        }
    }
}

/// Serve `router` on `listener` until `stop` turns true, then stop accepting
/// and wait for the open connections to finish their current request (the
/// caller bounds that wait).
pub async fn serve<L: Listener>(
    mut listener: L,
    router: Router,
    timeouts: Timeouts,
    mut stop: watch::Receiver<bool>,
) {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(timeouts.header_read)
        .keep_alive(true);
    loop {
        let (io, _) = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop.wait_for(|s| *s) => break,
        };
        let io = TokioIo::new(StallGuard::new(io, timeouts.write_stall));
        let service = TowerToHyperService::new(router.clone());
        let conn = graceful.watch(http.serve_connection(io, service));
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!("API connection ended: {e}");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

/// An IO whose writes fail with `TimedOut` once the peer has taken nothing
/// for `limit` while a write waits.
#[derive(Debug)]
pub struct StallGuard<T> {
    io: T,
    limit: Duration,
    stalled: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<T> StallGuard<T> {
    /// Wrap `io`.
    pub fn new(io: T, limit: Duration) -> StallGuard<T> {
        StallGuard {
            io,
            limit,
            stalled: None,
        }
    }

    /// `poll` made progress: forget the stall; it is waiting: start (or keep)
    /// the stall clock and fail when it ran out.
    fn watch<R>(&mut self, cx: &mut Context<'_>, poll: Poll<io::Result<R>>) -> Poll<io::Result<R>> {
        if poll.is_ready() {
            self.stalled = None;
            return poll;
        }
        let limit = self.limit;
        let sleep = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        ready!(sleep.as_mut().poll(cx));
        Poll::Ready(Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("the client took no response bytes for {limit:?}"),
        )))
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for StallGuard<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for StallGuard<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.io).poll_write(cx, buf);
        self.watch(cx, poll)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let poll = Pin::new(&mut self.io).poll_flush(cx);
        self.watch(cx, poll)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let poll = Pin::new(&mut self.io).poll_shutdown(cx);
        self.watch(cx, poll)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.watch(cx, poll)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn a_peer_that_stops_reading_fails_the_write_after_the_limit() {
        let (ours, mut theirs) = tokio::net::UnixStream::pair().unwrap();
        let mut guarded = StallGuard::new(ours, Duration::from_millis(300));
        let chunk = vec![7u8; 64 << 10];
        // Fill the socket buffer; the peer reads nothing.
        let err = tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                if let Err(e) = guarded.write_all(&chunk).await {
                    return e;
                }
            }
        })
        .await
        .expect("the stalled write must fail, not wait forever");
        assert_eq!(err.kind(), io::ErrorKind::TimedOut, "{err}");
        // A peer that reads keeps the writer going: progress resets the clock.
        let (ours, mut reader) = tokio::net::UnixStream::pair().unwrap();
        let mut guarded = StallGuard::new(ours, Duration::from_secs(5));
        let drain = tokio::spawn(async move {
            let mut buf = vec![0u8; 64 << 10];
            let mut total = 0usize;
            while total < 8 << 20 {
                total += reader.read(&mut buf).await.unwrap();
            }
        });
        for _ in 0..128 {
            guarded.write_all(&chunk).await.unwrap();
        }
        drain.await.unwrap();
        drop(theirs.shutdown().await);
    }
}
