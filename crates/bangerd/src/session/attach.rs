//! The attach bridge (`banger vm session attach`, `docs/api.md`): a Unix
//! socket next to the API socket (mode 0600, every peer checked with
//! `SO_PEERCRED` against the daemon's uid) that speaks `stdio_mux_v1`
//! ([`banger_wire::attach`]) and relays one pipe-mode session per
//! connection.
//!
//! Nothing of a session lives here: each step asks the guest agent
//! ([`AgentRequest::SessionIo`]) to write stdin into the session's FIFO and
//! to read its logs from byte offsets. The guest keeps the FIFO and the
//! logs, so a daemon that dies loses at most the one stdin frame it had read
//! and not yet written; output is read again from the logs by offset.
//!
//! One connection is one task; a client that sends garbage or stops reading
//! is disconnected with a logged reason and never holds up another attach,
//! the API, or the agent channel (the agent lock is held for one step, never
//! while writing to the client).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use banger_state::VmRecord;
use banger_wire::attach::{
    ClientControl, Frame, FrameError, ServerControl, StdioMux, StreamId, MAX_FRAME_PAYLOAD,
    PROTOCOL,
};
use banger_wire::guest::{AgentRequest, AgentResponse, SessionIoChunk, SessionStatus, StdinMode};
use futures::{SinkExt, StreamExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;
use tokio_util::codec::Framed;

use super::{ask, find_record, require_running, unexpected, vm_record, SessionError};
use crate::context::Daemon;
use crate::socket::PeerPolicy;

/// How long a new connection may take to send its hello.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one frame to the client may take to be written; a client that
/// does not read for this long is disconnected (the output stays in the
/// guest's log for the next attach).
pub const CLIENT_WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Attach connections served at once (including ones still in their hello).
pub const MAX_CONNECTIONS: usize = 64;
/// Pause between two agent steps when nothing moved.
pub const IDLE_POLL: Duration = Duration::from_millis(200);
/// Stdin bytes handed to the agent per step (base64 keeps the request line
/// under the agent's 64 KiB limit).
const STDIN_STEP: usize = 32 * 1024;
/// Log bytes asked per stream and step: one frame's worth.
const OUTPUT_STEP: u32 = MAX_FRAME_PAYLOAD as u32;

/// How many steps in a row may find the agent channel busy before the
/// attach gives up.
const BUSY_RETRIES: u32 = 25;

/// Whether `e` failed before the request reached the guest.
fn not_sent(e: &SessionError) -> bool {
    use banger_agent_client::AgentClientError as A;
    matches!(
        e,
        SessionError::Vm(v) if matches!(
            &**v,
            crate::vm::VmError::Agent {
                source: A::Connect { .. } | A::Timeout { op: "connect", .. },
                ..
            }
        )
    )
}

/// Who holds an attach.
#[derive(Debug, Clone)]
struct Holder {
    pid: Option<i32>,
    uid: u32,
    since: SystemTime,
}

/// The attaches of this daemon, by session id. Process memory on purpose: a
/// daemon that died took its connections with it, so a restarted daemon
/// starts with none.
fn attached() -> &'static Mutex<HashMap<String, Holder>> {
    static ATTACHED: OnceLock<Mutex<HashMap<String, Holder>>> = OnceLock::new();
    ATTACHED.get_or_init(Default::default)
}

/// Releases the attach of one session when the connection ends.
struct Claim(String);

impl Drop for Claim {
    fn drop(&mut self) {
        attached()
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.0);
    }
}

fn claim(id: &str, holder: Holder) -> Result<Claim, Holder> {
    let mut map = attached().lock().unwrap_or_else(|e| e.into_inner());
    if let Some(h) = map.get(id) {
        return Err(h.clone());
    }
    map.insert(id.to_owned(), holder);
    Ok(Claim(id.to_owned()))
}

/// Accept attach connections until the daemon stops.
pub async fn serve(state: Arc<Daemon>, listener: UnixListener, policy: Arc<PeerPolicy>) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                tracing::warn!("attach socket: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let cred = match stream.peer_cred() {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("attach socket: a peer without credentials ({e}), closed");
                continue;
            }
        };
        let peer = crate::socket::Peer {
            uid: cred.uid(),
            gid: cred.gid(),
        };
        if let Err(refused) = policy.check(peer) {
            tracing::warn!(uid = peer.uid, "refused attach connection: {refused}");
            let mut framed = Framed::new(stream, StdioMux);
            let _ = tokio::time::timeout(
                CLIENT_WRITE_TIMEOUT,
                framed.send(Frame::control(&ServerControl::Error {
                    message: refused.to_string(),
                })),
            )
            .await;
            continue;
        }
        // Bounded, like everything a client can make the daemon hold.
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            tracing::warn!("attach socket: {MAX_CONNECTIONS} connections open, one more refused");
            let mut framed = Framed::new(stream, StdioMux);
            let _ = tokio::time::timeout(
                Duration::from_secs(1),
                framed.send(Frame::control(&ServerControl::Error {
                    message: format!("bangerd already serves {MAX_CONNECTIONS} attach connections"),
                })),
            )
            .await;
            continue;
        };
        let holder = Holder {
            pid: cred.pid(),
            uid: cred.uid(),
            since: SystemTime::now(),
        };
        let state = state.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let mut framed = Framed::new(stream, StdioMux);
            if let Err(reason) = connection(&state, &mut framed, holder).await {
                tracing::info!("attach connection ended: {reason}");
                // Best effort: the client may be gone or not reading.
                let _ = tokio::time::timeout(
                    Duration::from_secs(1),
                    framed.send(Frame::control(&ServerControl::Error {
                        message: reason.to_string(),
                    })),
                )
                .await;
            }
        });
    }
}

/// Why an attach connection ended other than by exit or detach.
#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    #[error("protocol error: {0}")]
    Protocol(#[from] FrameError),
    #[error("the client did not send its hello within {} s", HELLO_TIMEOUT.as_secs())]
    NoHello,
    #[error("the first frame must be a hello control message (stdio_mux_v1)")]
    NotHello,
    #[error("protocol {got:?} is not supported; this daemon speaks {PROTOCOL}")]
    Version { got: String },
    #[error("{0}")]
    Session(#[from] SessionError),
    #[error("session {name:?} of VM {vm:?} has no stdin to attach to (started with --stdin-mode detached); read its output with `banger vm session logs {vm} {name} -f`")]
    NotPipe { vm: String, name: String },
    #[error("session {name:?} of VM {vm:?} has ended ({status:?}); see `banger vm session show {vm} {name}` and `logs`")]
    Ended {
        vm: String,
        name: String,
        status: SessionStatus,
    },
    #[error("session {name:?} of VM {vm:?} is already attached by {who} since {since}; detach that one first (`~.` in its terminal)")]
    Busy {
        vm: String,
        name: String,
        who: String,
        since: String,
    },
    #[error("the client did not read for {} s: disconnected (its output stays in the session's logs)", CLIENT_WRITE_TIMEOUT.as_secs())]
    SlowClient,
    #[error("{0:?} frames are not accepted from a client")]
    WrongStream(StreamId),
}

type Conn = Framed<UnixStream, StdioMux>;

async fn send<S>(sink: &mut S, frame: Frame) -> Result<(), AttachError>
where
    S: futures::Sink<Frame, Error = FrameError> + Unpin,
{
    match tokio::time::timeout(CLIENT_WRITE_TIMEOUT, sink.send(frame)).await {
        Ok(r) => r.map_err(AttachError::Protocol),
        Err(_) => Err(AttachError::SlowClient),
    }
}

/// One agent step for session `id`.
async fn step(
    state: &Daemon,
    vm: &VmRecord,
    name: &str,
    request: AgentRequest,
) -> Result<SessionIoChunk, SessionError> {
    match ask(state, vm, name, "attach to", request).await? {
        AgentResponse::SessionIo(c) => Ok(c),
        other => Err(unexpected(vm, name, "attach to", &other)),
    }
}

/// What the client's frames turn into for the relay loop.
enum Input {
    Stdin(bytes::Bytes),
    Detach,
    Failed(AttachError),
}

async fn connection(state: &Daemon, framed: &mut Conn, holder: Holder) -> Result<(), AttachError> {
    let first = match tokio::time::timeout(HELLO_TIMEOUT, framed.next()).await {
        Err(_) => return Err(AttachError::NoHello),
        Ok(None) => return Ok(()),
        Ok(Some(frame)) => frame?,
    };
    if first.stream != StreamId::Control {
        return Err(AttachError::NotHello);
    }
    let ClientControl::Hello {
        protocol,
        vm: vm_name,
        session: name,
        stdout_offset,
        stderr_offset,
    } = ClientControl::parse(&first.payload)?
    else {
        return Err(AttachError::NotHello);
    };
    if protocol != PROTOCOL {
        return Err(AttachError::Version { got: protocol });
    }
    let vm = vm_record(state, &vm_name)?;
    let record = find_record(state, &vm, &name)?;
    require_running(&vm)?;
    let id = record.record.id.clone();
    let info = super::show(state, &vm_name, &name).await?;
    if info.stdin_mode != StdinMode::Pipe {
        return Err(AttachError::NotPipe { vm: vm_name, name });
    }
    let _claim = claim(&id, holder).map_err(|h| AttachError::Busy {
        vm: vm_name.clone(),
        name: name.clone(),
        who: match h.pid {
            Some(pid) => format!("pid {pid} (uid {})", h.uid),
            None => format!("uid {}", h.uid),
        },
        since: humantime::format_rfc3339_seconds(h.since).to_string(),
    })?;
    // Where output starts: the client's offsets, else the current ends.
    let now = step(
        state,
        &vm,
        &name,
        AgentRequest::SessionIo {
            id: id.clone(),
            stdin: Vec::new(),
            stdout_offset: stdout_offset.unwrap_or(u64::MAX),
            stderr_offset: stderr_offset.unwrap_or(u64::MAX),
            max_bytes: 0,
        },
    )
    .await?;
    if now.status.is_ended() && stdout_offset.is_none() && stderr_offset.is_none() {
        return Err(AttachError::Ended {
            vm: vm_name,
            name,
            status: now.status,
        });
    }
    let (mut out_off, mut err_off) = (now.stdout_offset, now.stderr_offset);
    send(
        framed,
        Frame::control(&ServerControl::Welcome {
            protocol: PROTOCOL.to_owned(),
            session_id: id.clone(),
            pid: now.pid,
            stdout_offset: out_off,
            stderr_offset: err_off,
        }),
    )
    .await?;
    tracing::info!(vm = %vm_name, session = %name, "attached");

    let (mut sink, mut frames) = framed.split();
    // Capacity 1: the reader takes the next stdin frame only when the relay
    // took the last, so a client cannot make the daemon buffer more than
    // two frames, and stdin waits in the client's socket instead.
    let (tx, mut rx) = mpsc::channel::<Input>(1);
    let reader = async move {
        while let Some(frame) = frames.next().await {
            let input = match frame {
                Err(e) => Input::Failed(e.into()),
                Ok(f) => match f.stream {
                    StreamId::Stdin => Input::Stdin(f.payload),
                    StreamId::Control => match ClientControl::parse(&f.payload) {
                        Ok(ClientControl::Detach {}) => Input::Detach,
                        Ok(ClientControl::Hello { .. }) => Input::Failed(AttachError::Protocol(
                            FrameError::Control("a second hello".into()),
                        )),
                        Err(e) => Input::Failed(e.into()),
                    },
                    other => Input::Failed(AttachError::WrongStream(other)),
                },
            };
            let stop = !matches!(input, Input::Stdin(_));
            if tx.send(input).await.is_err() || stop {
                break;
            }
        }
        // EOF from the client (the channel closes): the relay writes what
        // stdin is pending and ends, as for a detach without the answer.
        drop(tx);
        std::future::pending::<()>().await;
    };
    let result = tokio::select! {
        () = reader => unreachable!("the reader never completes"),
        r = relay(state, &vm, &name, &id, &mut sink, &mut rx, &mut out_off, &mut err_off) => r,
    };
    tracing::info!(vm = %vm_name, session = %name, "detached");
    result
}

#[allow(clippy::too_many_arguments)]
async fn relay(
    state: &Daemon,
    vm: &VmRecord,
    name: &str,
    id: &str,
    sink: &mut futures::stream::SplitSink<&mut Conn, Frame>,
    rx: &mut mpsc::Receiver<Input>,
    out_off: &mut u64,
    err_off: &mut u64,
) -> Result<(), AttachError> {
    let mut pending: Vec<u8> = Vec::new();
    let mut client_gone = false;
    let mut idle = false;
    loop {
        // Wait for input only when the last step moved nothing.
        if pending.is_empty() && !client_gone {
            let input = if idle {
                tokio::select! {
                    i = rx.recv() => Some(i),
                    _ = tokio::time::sleep(IDLE_POLL) => None,
                }
            } else {
                match rx.try_recv() {
                    Ok(i) => Some(Some(i)),
                    Err(mpsc::error::TryRecvError::Empty) => None,
                    Err(mpsc::error::TryRecvError::Disconnected) => Some(None),
                }
            };
            match input {
                None => {}
                Some(None) => client_gone = true,
                Some(Some(Input::Stdin(b))) => pending.extend_from_slice(&b),
                Some(Some(Input::Detach)) => {
                    send(sink, Frame::control(&ServerControl::Detached {})).await?;
                    return Ok(());
                }
                Some(Some(Input::Failed(e))) => return Err(e),
            }
        }
        if client_gone && pending.is_empty() {
            return Ok(());
        }
        let n = pending.len().min(STDIN_STEP);
        let request = AgentRequest::SessionIo {
            id: id.to_owned(),
            stdin: pending[..n].to_vec(),
            stdout_offset: *out_off,
            stderr_offset: *err_off,
            max_bytes: OUTPUT_STEP,
        };
        let mut busy = 0;
        let chunk = loop {
            match step(state, vm, name, request.clone()).await {
                // The agent channel was busy (other attaches, `vm show`, the
                // stats sampler) or reconnecting: nothing was sent, so the
                // same step can be tried again without writing stdin twice.
                Err(e) if not_sent(&e) && busy < BUSY_RETRIES => {
                    busy += 1;
                    tokio::time::sleep(IDLE_POLL).await;
                }
                other => break other?,
            }
        };
        // The guest is untrusted: it cannot make us drop more than we sent.
        pending.drain(..(chunk.stdin_written as usize).min(n));
        let output = !chunk.stdout.is_empty() || !chunk.stderr.is_empty();
        let moved = chunk.stdin_written > 0 || output;
        for (stream, data, off) in [
            (StreamId::Stdout, chunk.stdout, &mut *out_off),
            (StreamId::Stderr, chunk.stderr, &mut *err_off),
        ] {
            // Frames of at most the protocol's limit, whatever the guest sent.
            for piece in data.chunks(MAX_FRAME_PAYLOAD) {
                *off += piece.len() as u64;
                send(sink, Frame::data(stream, piece.to_vec())).await?;
            }
        }
        if chunk.status.is_ended() && !output {
            // Input for an ended session goes nowhere.
            send(
                sink,
                Frame::control(&ServerControl::Exit {
                    status: chunk.status,
                }),
            )
            .await?;
            return Ok(());
        }
        idle = !moved;
    }
}
