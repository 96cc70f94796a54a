//! A download that survives a dropped connection: when the body breaks off,
//! the rest is asked for with `Range: bytes=N-` (pinned to the same object
//! by `If-Range` with its strong ETag or Last-Modified) and the caller keeps
//! receiving bytes as if nothing happened. A server that cannot resume
//! (answers 200, or a range that does not start at N) ends the download
//! with the original error; callers verify size and sha256 at the end
//! either way.

use std::collections::VecDeque;
use std::io::{self, Read};
use std::time::Duration;

use bytes::Bytes;
use reqwest::header::{HeaderValue, CONTENT_RANGE, ETAG, IF_RANGE, LAST_MODIFIED, RANGE};
use reqwest::StatusCode;

/// Resume attempts after the first connection breaks.
pub const MAX_RESUMES: u32 = 4;
/// Pause before the first resume; doubled for each further one.
const FIRST_BACKOFF: Duration = Duration::from_millis(500);

/// A body being downloaded, resumed transparently (see the module docs).
#[derive(Debug)]
pub struct Fetch {
    client: reqwest::Client,
    url: String,
    response: reqwest::Response,
    received: u64,
    validator: Option<HeaderValue>,
    resumes: u32,
}

/// How a download ended early.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Broken {
    /// The error of the connection that broke (with the resume outcome).
    pub reason: String,
    /// Resumes tried.
    pub resumes: u32,
}

impl Fetch {
    /// Wrap a successful (2xx) response of `GET url`.
    pub fn new(client: reqwest::Client, url: String, response: reqwest::Response) -> Fetch {
        let headers = response.headers();
        // Only a strong ETag may pin a byte range (RFC 9110 §13.1.5).
        let validator = headers
            .get(ETAG)
            .filter(|v| !v.as_bytes().starts_with(b"W/"))
            .or_else(|| headers.get(LAST_MODIFIED))
            .cloned();
        Fetch {
            client,
            url,
            response,
            received: 0,
            validator,
            resumes: 0,
        }
    }

    /// Bytes handed out so far.
    pub fn received(&self) -> u64 {
        self.received
    }

    /// Resumes that succeeded or were tried so far.
    pub fn resumes(&self) -> u32 {
        self.resumes
    }

    /// The next piece of the body; `Ok(None)` at its end.
    pub async fn chunk(&mut self) -> Result<Option<Bytes>, Broken> {
        loop {
            match self.response.chunk().await {
                Ok(Some(c)) => {
                    self.received += c.len() as u64;
                    return Ok(Some(c));
                }
                Ok(None) => return Ok(None),
                Err(e) => {
                    let reason = crate::pull::chain(&e);
                    self.resume(reason).await?;
                }
            }
        }
    }

    /// Replace the broken response by one for the remaining bytes.
    async fn resume(&mut self, reason: String) -> Result<(), Broken> {
        let mut last = reason;
        while self.resumes < MAX_RESUMES {
            tokio::time::sleep(FIRST_BACKOFF * 2u32.pow(self.resumes)).await;
            self.resumes += 1;
            let mut req = self
                .client
                .get(&self.url)
                .header(RANGE, format!("bytes={}-", self.received));
            if let Some(v) = &self.validator {
                req = req.header(IF_RANGE, v.clone());
            }
            let response = match req.send().await {
                Ok(r) => r,
                Err(e) => {
                    last = format!(
                        "{last}; resume {}: {}",
                        self.resumes,
                        crate::pull::chain(&e)
                    );
                    continue;
                }
            };
            let starts_here = response
                .headers()
                .get(CONTENT_RANGE)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("bytes "))
                .and_then(|v| v.split_once('-'))
                .and_then(|(start, _)| start.parse::<u64>().ok())
                == Some(self.received);
            if response.status() == StatusCode::PARTIAL_CONTENT && starts_here {
                self.response = response;
                return Ok(());
            }
            // The server cannot (or, the object having changed, will not)
            // continue where we are: retrying would not help.
            return Err(Broken {
                reason: format!(
                    "{last}; the server did not resume at byte {} (HTTP {})",
                    self.received,
                    response.status().as_u16()
                ),
                resumes: self.resumes,
            });
        }
        Err(Broken {
            reason: last,
            resumes: self.resumes,
        })
    }
}

/// A bounded channel from async code (a download, a request body) to a
/// blocking `Read` on another thread (an unpacker). Batches of chunks keep
/// thread wake-ups down; at most 8 batches are in flight, so a slow reader
/// slows the sender instead of buffering the whole body.
pub fn pipe() -> (tokio::sync::mpsc::Sender<Vec<Bytes>>, PipeReader) {
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    (
        tx,
        PipeReader {
            rx,
            queue: VecDeque::new(),
        },
    )
}

/// The blocking end of [`pipe`]; reads 0 once every sender is dropped.
#[derive(Debug)]
pub struct PipeReader {
    rx: tokio::sync::mpsc::Receiver<Vec<Bytes>>,
    queue: VecDeque<Bytes>,
}

impl Read for PipeReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match self.queue.front_mut() {
                Some(front) if !front.is_empty() => {
                    let n = buf.len().min(front.len());
                    buf[..n].copy_from_slice(&front[..n]);
                    let _ = front.split_to(n);
                    return Ok(n);
                }
                Some(_) => {
                    self.queue.pop_front();
                }
                None => match self.rx.blocking_recv() {
                    Some(batch) => self.queue.extend(batch),
                    None => return Ok(0),
                },
            }
        }
    }
}
