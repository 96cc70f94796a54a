//! `banger vm session attach VM NAME`: this process's stdio to a pipe-mode
//! session through the daemon's attach bridge (`stdio_mux_v1`,
//! `docs/api.md`, `docs/sessions.md`).
//!
//! A line that is exactly `~.` detaches (the session keeps running), as does
//! the end of input on a terminal (Ctrl-D). When the connection to the
//! daemon breaks without an answer (the daemon was restarted or killed),
//! the CLI reconnects for up to [`RECONNECT_FOR`] and asks for output from
//! the byte after the last one it received, so nothing is shown twice or
//! missed.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use banger_wire::attach::{
    ClientControl, Frame, ServerControl, StdioMux, StreamId, MAX_FRAME_PAYLOAD, PROTOCOL,
    SOCKET_NAME,
};
use banger_wire::session::SessionStatus;
use futures::{SinkExt, StreamExt};
use tokio::io::AsyncBufReadExt;
use tokio::sync::mpsc;
use tokio_util::codec::Framed;

use crate::term::StreamEscaper;

/// How long a broken connection is retried.
pub const RECONNECT_FOR: Duration = Duration::from_secs(60);
/// The detach line.
pub const ESCAPE_LINE: &[u8] = b"~.";

/// The bridge socket of the daemon whose API socket is `api_socket`.
pub fn socket_of(api_socket: &Path) -> PathBuf {
    api_socket.with_file_name(SOCKET_NAME)
}

/// What the user typed, for the connection loop.
enum Input {
    Data(Vec<u8>),
    /// `~.`, or Ctrl-D on a terminal.
    Detach,
    /// End of a non-terminal input: stdin is done, output keeps coming
    /// until the session ends.
    Eof,
}

/// Read stdin in pieces of at most one frame, each ending at a line break
/// where there is one, so `~.` is seen as a line.
async fn read_input(tx: mpsc::Sender<Input>) {
    let tty = std::io::stdin().is_terminal();
    let mut reader = tokio::io::BufReader::with_capacity(MAX_FRAME_PAYLOAD, tokio::io::stdin());
    let mut at_line_start = true;
    loop {
        let piece = match reader.fill_buf().await {
            Ok([]) | Err(_) => {
                let _ = tx.send(if tty { Input::Detach } else { Input::Eof }).await;
                return;
            }
            Ok(buf) => {
                let end = buf
                    .iter()
                    .position(|&b| b == b'\n')
                    .map_or(buf.len(), |i| i + 1);
                buf[..end].to_vec()
            }
        };
        reader.consume(piece.len());
        let line = piece.strip_suffix(b"\n").unwrap_or(&piece);
        if at_line_start && line == ESCAPE_LINE {
            let _ = tx.send(Input::Detach).await;
            return;
        }
        at_line_start = piece.ends_with(b"\n");
        if tx.send(Input::Data(piece)).await.is_err() {
            return;
        }
    }
}

/// How one connection ended.
enum Ended {
    Exit(SessionStatus),
    Detached,
    /// The connection broke without an answer: reconnect.
    Lost(String),
}

struct Output {
    escape_out: Option<StreamEscaper>,
    escape_err: Option<StreamEscaper>,
    /// Offsets of the next byte expected on each stream.
    stdout_offset: Option<u64>,
    stderr_offset: Option<u64>,
}

impl Output {
    fn write(&mut self, stream: StreamId, data: &[u8]) -> std::io::Result<()> {
        let (escaper, mut out, offset): (_, Box<dyn Write>, _) = match stream {
            StreamId::Stdout => (
                &mut self.escape_out,
                Box::new(std::io::stdout().lock()),
                &mut self.stdout_offset,
            ),
            _ => (
                &mut self.escape_err,
                Box::new(std::io::stderr().lock()),
                &mut self.stderr_offset,
            ),
        };
        // Guest output is escaped on a terminal, passed on as it is to a
        // pipe or file.
        match escaper {
            Some(e) => out.write_all(e.push(data).as_bytes())?,
            None => out.write_all(data)?,
        }
        out.flush()?;
        if let Some(o) = offset {
            *o += data.len() as u64;
        }
        Ok(())
    }
}

/// Run `vm session attach`; returns the exit code to leave with.
pub async fn attach(
    api_socket: &Path,
    vm: &str,
    session: &str,
    from_start: bool,
) -> anyhow::Result<i32> {
    let socket = socket_of(api_socket);
    let (tx, mut rx) = mpsc::channel::<Input>(4);
    tokio::spawn(read_input(tx));
    let mut out = Output {
        escape_out: std::io::stdout().is_terminal().then(StreamEscaper::default),
        escape_err: std::io::stderr().is_terminal().then(StreamEscaper::default),
        stdout_offset: from_start.then_some(0),
        stderr_offset: from_start.then_some(0),
    };
    // Stdin read while the connection was down, sent after reconnecting.
    let mut unsent: Vec<Vec<u8>> = Vec::new();
    let mut stdin_done = false;
    let mut lost_since: Option<Instant> = None;
    loop {
        let conn = match tokio::net::UnixStream::connect(&socket).await {
            Ok(c) => c,
            Err(e) => {
                let since = *lost_since.get_or_insert_with(Instant::now);
                if since.elapsed() > RECONNECT_FOR || out.stdout_offset.is_none() {
                    return Err(e).with_context(|| {
                        format!(
                            "cannot connect to the attach socket {} (is bangerd running? `banger daemon status`)",
                            socket.display()
                        )
                    });
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
                continue;
            }
        };
        lost_since = None;
        let ended = session_once(
            conn,
            vm,
            session,
            &mut out,
            &mut rx,
            &mut unsent,
            &mut stdin_done,
        )
        .await?;
        match ended {
            Ended::Exit(status) => {
                return Ok(match status {
                    SessionStatus::Exited { code } => code,
                    SessionStatus::Signaled { signal } => 128 + signal,
                    _ => 1,
                })
            }
            Ended::Detached => return Ok(0),
            Ended::Lost(why) => {
                let since = *lost_since.get_or_insert_with(Instant::now);
                if since.elapsed() > RECONNECT_FOR {
                    bail!("lost the connection to bangerd ({why}) and could not attach again within {} s", RECONNECT_FOR.as_secs());
                }
                eprintln!("banger: connection to bangerd lost ({why}); reconnecting");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    }
}

async fn session_once(
    conn: tokio::net::UnixStream,
    vm: &str,
    session: &str,
    out: &mut Output,
    rx: &mut mpsc::Receiver<Input>,
    unsent: &mut Vec<Vec<u8>>,
    stdin_done: &mut bool,
) -> anyhow::Result<Ended> {
    let mut framed = Framed::new(conn, StdioMux);
    let hello = ClientControl::Hello {
        protocol: PROTOCOL.to_owned(),
        vm: vm.to_owned(),
        session: session.to_owned(),
        stdout_offset: out.stdout_offset,
        stderr_offset: out.stderr_offset,
    };
    if let Err(e) = framed.send(Frame::control(&hello)).await {
        return Ok(Ended::Lost(e.to_string()));
    }
    let welcome = match framed.next().await {
        None => return Ok(Ended::Lost("the daemon closed the connection".into())),
        Some(Err(e)) => return Ok(Ended::Lost(e.to_string())),
        Some(Ok(f)) if f.stream == StreamId::Control => ServerControl::parse(&f.payload)?,
        Some(Ok(f)) => bail!("the daemon sent {:?} before its welcome", f.stream),
    };
    match welcome {
        ServerControl::Welcome {
            stdout_offset,
            stderr_offset,
            ..
        } => {
            out.stdout_offset = Some(stdout_offset);
            out.stderr_offset = Some(stderr_offset);
        }
        ServerControl::Error { message } => bail!("{message}"),
        other => bail!("the daemon answered the hello with {other:?}"),
    }
    for data in unsent.drain(..) {
        if let Err(e) = framed.send(Frame::data(StreamId::Stdin, data)).await {
            return Ok(Ended::Lost(e.to_string()));
        }
    }
    loop {
        tokio::select! {
            frame = framed.next() => {
                let frame = match frame {
                    None => return Ok(Ended::Lost("the daemon closed the connection".into())),
                    Some(Err(e)) => return Ok(Ended::Lost(e.to_string())),
                    Some(Ok(f)) => f,
                };
                match frame.stream {
                    StreamId::Stdout | StreamId::Stderr => {
                        out.write(frame.stream, &frame.payload).context("writing the session's output")?;
                    }
                    StreamId::Control => match ServerControl::parse(&frame.payload)? {
                        ServerControl::Exit { status } => return Ok(Ended::Exit(status)),
                        ServerControl::Detached {} => return Ok(Ended::Detached),
                        ServerControl::Error { message } => bail!("{message}"),
                        ServerControl::Welcome { .. } => bail!("the daemon sent a second welcome"),
                    },
                    StreamId::Stdin => bail!("the daemon sent a stdin frame"),
                }
            }
            input = rx.recv(), if !*stdin_done => {
                let frame = match input {
                    Some(Input::Data(d)) => Frame::data(StreamId::Stdin, d),
                    Some(Input::Detach) => Frame::control(&ClientControl::Detach {}),
                    None | Some(Input::Eof) => { *stdin_done = true; continue; }
                };
                let is_data = frame.stream == StreamId::Stdin;
                if let Err(e) = framed.send(frame.clone()).await {
                    if is_data {
                        unsent.push(frame.payload.to_vec());
                    } else {
                        // A detach that could not be sent: there is no
                        // attach left to detach from.
                        return Ok(Ended::Detached);
                    }
                    return Ok(Ended::Lost(e.to_string()));
                }
            }
        }
    }
}
