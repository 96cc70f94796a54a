//! Guest sessions (`banger vm session`, docs/sessions.md): long-lived guest
//! commands supervised **in the guest** by its agent. The daemon keeps only
//! an index (the `sessions` table: id, VM, name, the state last reported)
//! and asks the guest for everything live, so a daemon restart or SIGKILL
//! loses nothing: the next request reads the guest's state again. A VM that
//! is stopped (or was rebooted, which ends every session) reports the
//! state last seen, and says so.

pub mod api;
pub mod attach;

use std::time::Duration;

use banger_state::VmState;
use banger_state::{NamedSession, SessionKind, SessionRecord, StateError, Timestamp, VmRecord};
use banger_wire::api::{ApiError, ErrorCode};
use banger_wire::guest::{
    AgentRequest, AgentResponse, GuestSession, LogStream, SessionLogChunk, SessionSpec,
    SessionStatus,
};
use banger_wire::session::{SessionInfo, SessionSource, SessionStartRequest};

use crate::context::Daemon;
use crate::vm::{info, VmError};

/// Default time between SIGTERM and SIGKILL for `stop`.
pub const DEFAULT_STOP_GRACE: Duration = Duration::from_secs(10);
/// Longest grace a stop may ask for.
pub const MAX_STOP_GRACE: Duration = Duration::from_secs(3600);
/// Bytes asked of the guest per log request.
pub const LOG_CHUNK: u32 = 64 * 1024;

/// Errors of session operations, each naming the VM and session.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("{message}")]
    Invalid { message: String },
    #[error("no session named {name:?} in VM {vm:?} (see `banger vm session list {vm}`)")]
    NotFound { vm: String, name: String },
    #[error("VM {vm:?} already has a session named {name:?} that has not ended; pick another name or stop it with `banger vm session stop {vm} {name}`")]
    NameTaken { vm: String, name: String },
    #[error("VM {vm:?} is {state}: start it with `banger vm start {vm}` first")]
    VmNotRunning { vm: String, state: String },
    #[error("VM {vm:?} is {state}: session logs live in the guest's /run/banger/sessions and end with the VM; `banger vm session show` keeps the stderr tail")]
    LogsGone { vm: String, state: String },
    #[error("the guest of VM {vm:?} refused to start session {name:?}, nothing was started:\n  - {}", problems.join("\n  - "))]
    Preflight {
        vm: String,
        name: String,
        problems: Vec<String>,
    },
    #[error("the guest agent of VM {vm:?} failed to {op} session {name:?}: {message}")]
    Guest {
        vm: String,
        name: String,
        op: &'static str,
        message: String,
    },
    #[error(transparent)]
    Vm(Box<VmError>),
    #[error(transparent)]
    State(Box<StateError>),
}

impl From<VmError> for SessionError {
    fn from(e: VmError) -> Self {
        SessionError::Vm(Box::new(e))
    }
}

impl From<StateError> for SessionError {
    fn from(e: StateError) -> Self {
        SessionError::State(Box::new(e))
    }
}

impl SessionError {
    /// The API error code.
    pub fn code(&self) -> ErrorCode {
        match self {
            SessionError::Invalid { .. } | SessionError::Preflight { .. } => ErrorCode::BadRequest,
            SessionError::NotFound { .. } => ErrorCode::NotFound,
            SessionError::NameTaken { .. }
            | SessionError::VmNotRunning { .. }
            | SessionError::LogsGone { .. } => ErrorCode::Conflict,
            SessionError::Guest { .. } => ErrorCode::Internal,
            SessionError::Vm(e) => e.code(),
            SessionError::State(_) => ErrorCode::State,
        }
    }
}

impl From<SessionError> for ApiError {
    fn from(e: SessionError) -> ApiError {
        ApiError {
            code: e.code(),
            message: e.to_string(),
        }
    }
}

fn vm_record(state: &Daemon, name: &str) -> Result<VmRecord, SessionError> {
    let db = state.db.lock().unwrap_or_else(|e| e.into_inner());
    db.get_vm_by_name(name)?.ok_or_else(|| {
        SessionError::from(VmError::NotFound {
            name: name.to_owned(),
        })
    })
}

fn require_running(vm: &VmRecord) -> Result<(), SessionError> {
    if vm.state == VmState::Running {
        Ok(())
    } else {
        Err(SessionError::VmNotRunning {
            vm: vm.name.clone(),
            state: vm.state.to_string(),
        })
    }
}

fn random_id() -> String {
    let mut bytes = [0u8; 16];
    getrandom(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn getrandom(buf: &mut [u8]) {
    use std::io::Read;
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(buf))
        .expect("/dev/urandom is readable");
}

/// Ask the VM's agent `request`; an `Error` answer becomes
/// [`SessionError::Guest`].
async fn ask(
    state: &Daemon,
    vm: &VmRecord,
    name: &str,
    op: &'static str,
    request: AgentRequest,
) -> Result<AgentResponse, SessionError> {
    let mut conn = info::connect_agent(state, vm).await?;
    let answer = conn
        .request(&request)
        .await
        .map_err(|source| VmError::Agent {
            name: vm.name.clone(),
            source,
        })?;
    match answer {
        AgentResponse::Error { message } => Err(SessionError::Guest {
            vm: vm.name.clone(),
            name: name.to_owned(),
            op,
            message,
        }),
        other => Ok(other),
    }
}

fn unexpected(vm: &VmRecord, name: &str, op: &'static str, got: &AgentResponse) -> SessionError {
    SessionError::Guest {
        vm: vm.name.clone(),
        name: name.to_owned(),
        op,
        message: format!("unexpected answer {got:?}"),
    }
}

fn exit_code_of(status: &SessionStatus) -> Option<i32> {
    match status {
        SessionStatus::Exited { code } => Some(*code),
        SessionStatus::Signaled { signal } => Some(128 + signal),
        _ => None,
    }
}

/// Record what the guest said about one session.
fn remember(state: &Daemon, id: &str, g: &GuestSession) -> Result<(), SessionError> {
    let json = serde_json::to_string(g).expect("GuestSession serializes");
    let ended = g.status.is_ended().then(|| {
        g.ended_at_ms
            .map_or_else(Timestamp::now, |ms| Timestamp::from_unix_millis(ms as i64))
    });
    let db = state.db.lock().unwrap_or_else(|e| e.into_inner());
    db.update_session_guest(id, &json, ended, exit_code_of(&g.status))?;
    Ok(())
}

fn info_from(
    vm: &VmRecord,
    s: &NamedSession,
    g: Option<GuestSession>,
    source: SessionSource,
) -> SessionInfo {
    let last: Option<GuestSession> = g.or_else(|| {
        s.guest_json
            .as_deref()
            .and_then(|j| serde_json::from_str(j).ok())
    });
    let (mut status, note) = match source {
        SessionSource::Guest => (None, None),
        SessionSource::VmNotRunning => (
            None,
            Some(format!(
                "VM {} is {}: the state last seen is shown; a session does not outlive its VM",
                vm.name, vm.state
            )),
        ),
        SessionSource::GuestForgot => (
            None,
            Some(format!(
                "the guest of VM {} no longer knows this session (the VM was stopped or rebooted since); the state last seen is shown",
                vm.name
            )),
        ),
        SessionSource::AgentUnreachable => (
            None,
            Some(format!(
                "the guest agent of VM {} did not answer; the state last seen is shown",
                vm.name
            )),
        ),
    };
    let mut info = match last {
        Some(g) => SessionInfo {
            id: s.record.id.clone(),
            name: s.name.clone(),
            vm: vm.name.clone(),
            command: g.spec.command,
            cwd: g.spec.cwd,
            env: g.spec.env,
            stdin_mode: g.spec.stdin,
            status: g.status,
            source,
            note: None,
            pid: g.pid,
            started_at_ms: g.started_at_ms,
            ended_at_ms: g.ended_at_ms,
            stderr_tail: g.stderr_tail,
        },
        None => SessionInfo {
            id: s.record.id.clone(),
            name: s.name.clone(),
            vm: vm.name.clone(),
            command: s
                .record
                .command
                .as_deref()
                .and_then(|c| serde_json::from_str(c).ok())
                .unwrap_or_default(),
            cwd: String::new(),
            env: Vec::new(),
            stdin_mode: Default::default(),
            status: SessionStatus::Starting {},
            source,
            note: None,
            pid: None,
            started_at_ms: Some(s.record.started_at.unix_millis() as u64),
            ended_at_ms: None,
            stderr_tail: None,
        },
    };
    // A session whose guest is gone (VM stopped or rebooted) has ended,
    // whatever it was doing when last seen.
    if matches!(
        source,
        SessionSource::VmNotRunning | SessionSource::GuestForgot
    ) && !info.status.is_ended()
    {
        status = Some(SessionStatus::Lost {
            message: format!("it was still running when VM {} stopped", vm.name),
        });
    }
    if let Some(st) = status {
        info.status = st;
        if info.ended_at_ms.is_none() {
            info.ended_at_ms = s.record.ended_at.map(|t| t.unix_millis() as u64);
        }
    }
    info.note = note;
    info
}

/// Every session of VM `vm_name`, read live from the guest when it runs.
pub async fn list(state: &Daemon, vm_name: &str) -> Result<Vec<SessionInfo>, SessionError> {
    let vm = vm_record(state, vm_name)?;
    let records = {
        let db = state.db.lock().unwrap_or_else(|e| e.into_inner());
        db.list_named_sessions(&vm.id)?
    };
    if records.is_empty() {
        return Ok(Vec::new());
    }
    if vm.state != VmState::Running {
        return Ok(records
            .iter()
            .map(|s| info_from(&vm, s, None, SessionSource::VmNotRunning))
            .collect());
    }
    let guest = match ask(state, &vm, "*", "list", AgentRequest::SessionList {}).await {
        Ok(AgentResponse::Sessions { sessions }) => Some(sessions),
        Ok(other) => return Err(unexpected(&vm, "*", "list", &other)),
        Err(e) => {
            tracing::info!(vm = %vm.name, "session list: agent unreachable: {e}");
            None
        }
    };
    let mut out = Vec::with_capacity(records.len());
    for s in &records {
        out.push(reconcile(state, &vm, s, guest.as_deref())?);
    }
    Ok(out)
}

/// Combine a record with the guest's list (`None`: the agent did not answer).
fn reconcile(
    state: &Daemon,
    vm: &VmRecord,
    s: &NamedSession,
    guest: Option<&[GuestSession]>,
) -> Result<SessionInfo, SessionError> {
    let Some(guest) = guest else {
        return Ok(info_from(vm, s, None, SessionSource::AgentUnreachable));
    };
    match guest.iter().find(|g| g.spec.id == s.record.id) {
        Some(g) => {
            remember(state, &s.record.id, g)?;
            Ok(info_from(vm, s, Some(g.clone()), SessionSource::Guest))
        }
        None => {
            let info = info_from(vm, s, None, SessionSource::GuestForgot);
            if s.record.ended_at.is_none() {
                let db = state.db.lock().unwrap_or_else(|e| e.into_inner());
                let json = s.guest_json.clone().unwrap_or_else(|| "null".into());
                db.update_session_guest(&s.record.id, &json, Some(Timestamp::now()), None)?;
            }
            Ok(info)
        }
    }
}

fn find_record(state: &Daemon, vm: &VmRecord, name: &str) -> Result<NamedSession, SessionError> {
    let db = state.db.lock().unwrap_or_else(|e| e.into_inner());
    db.list_named_sessions(&vm.id)?
        .into_iter()
        .find(|s| s.name == name)
        .ok_or_else(|| SessionError::NotFound {
            vm: vm.name.clone(),
            name: name.to_owned(),
        })
}

/// One session, live when its VM runs.
pub async fn show(state: &Daemon, vm_name: &str, name: &str) -> Result<SessionInfo, SessionError> {
    let vm = vm_record(state, vm_name)?;
    let s = find_record(state, &vm, name)?;
    if vm.state != VmState::Running {
        return Ok(info_from(&vm, &s, None, SessionSource::VmNotRunning));
    }
    match ask(
        state,
        &vm,
        name,
        "show",
        AgentRequest::SessionShow {
            id: s.record.id.clone(),
        },
    )
    .await
    {
        Ok(AgentResponse::Session(g)) => reconcile(state, &vm, &s, Some(&[g])),
        Ok(other) => Err(unexpected(&vm, name, "show", &other)),
        Err(SessionError::Guest { message, .. }) if message.starts_with("no session") => {
            reconcile(state, &vm, &s, Some(&[]))
        }
        Err(e) => {
            tracing::info!(vm = %vm.name, session = name, "session show: {e}");
            reconcile(state, &vm, &s, None)
        }
    }
}

/// Check and start a session.
pub async fn start(
    state: &Daemon,
    vm_name: &str,
    req: SessionStartRequest,
) -> Result<SessionInfo, SessionError> {
    banger_wire::session::validate_session_name(&req.name)
        .map_err(|message| SessionError::Invalid { message })?;
    if req.command.is_empty() || req.command[0].is_empty() {
        return Err(SessionError::Invalid {
            message: "the command is empty: give it after `--`".into(),
        });
    }
    if let Some(cwd) = &req.cwd {
        if !cwd.starts_with('/') {
            return Err(SessionError::Invalid {
                message: format!("--cwd {cwd:?} must be an absolute guest path"),
            });
        }
    }
    for var in &req.env {
        if var.split_once('=').is_none_or(|(k, _)| k.is_empty()) {
            return Err(SessionError::Invalid {
                message: format!("--env {var:?} is not KEY=VALUE"),
            });
        }
    }
    let vm = vm_record(state, vm_name)?;
    require_running(&vm)?;
    // One start or stop per VM at a time, so two starts of one name race
    // on nothing but the database's unique index.
    let lock = state.vms.lock_for(&vm.name);
    let _guard = lock.lock().await;
    // Refresh what the guest knows, so a name whose session ended while
    // nobody looked can be reused.
    let _ = list(state, &vm.name).await?;
    let id = random_id();
    let now = Timestamp::now();
    let record = NamedSession {
        record: SessionRecord {
            id: id.clone(),
            vm_id: vm.id.clone(),
            kind: SessionKind::Command,
            command: Some(serde_json::to_string(&req.command).expect("strings serialize")),
            started_at: now,
            last_activity_at: now,
            ended_at: None,
            exit_code: None,
        },
        name: req.name.clone(),
        guest_json: None,
    };
    {
        let db = state.db.lock().unwrap_or_else(|e| e.into_inner());
        db.insert_named_session(&record, true)
            .map_err(|e| match e {
                StateError::AlreadyExists { .. } => SessionError::NameTaken {
                    vm: vm.name.clone(),
                    name: req.name.clone(),
                },
                other => other.into(),
            })?;
    }
    let spec = SessionSpec {
        id: id.clone(),
        name: req.name.clone(),
        command: req.command,
        cwd: req.cwd.unwrap_or_default(),
        env: req.env,
        stdin: req.stdin_mode,
        require_commands: req.require_commands,
    };
    let forget = |state: &Daemon| {
        let db = state.db.lock().unwrap_or_else(|e| e.into_inner());
        let _ = db.delete_session(&id);
    };
    let answer = ask(
        state,
        &vm,
        &req.name,
        "start",
        AgentRequest::SessionStart { spec },
    )
    .await;
    match answer {
        Ok(AgentResponse::Session(g)) => {
            remember(state, &id, &g)?;
            Ok(info_from(&vm, &record, Some(g), SessionSource::Guest))
        }
        Ok(AgentResponse::SessionRefused { problems }) => {
            forget(state);
            Err(SessionError::Preflight {
                vm: vm.name.clone(),
                name: req.name,
                problems,
            })
        }
        Ok(other) => {
            forget(state);
            Err(unexpected(&vm, &req.name, "start", &other))
        }
        Err(e) => {
            forget(state);
            Err(e)
        }
    }
}

/// `stop` (SIGTERM, SIGKILL after `grace`) or `kill` (one signal).
pub async fn signal(
    state: &Daemon,
    vm_name: &str,
    name: &str,
    what: Signal,
) -> Result<SessionInfo, SessionError> {
    let vm = vm_record(state, vm_name)?;
    let s = find_record(state, &vm, name)?;
    require_running(&vm)?;
    let id = s.record.id.clone();
    let (op, request) = match what {
        Signal::Stop { grace } => (
            "stop",
            AgentRequest::SessionStop {
                id,
                grace_ms: grace.as_millis() as u64,
            },
        ),
        Signal::Send(signal) => ("signal", AgentRequest::SessionSignal { id, signal }),
    };
    match ask(state, &vm, name, op, request).await {
        Ok(AgentResponse::Session(g)) => reconcile(state, &vm, &s, Some(&[g])),
        Ok(other) => Err(unexpected(&vm, name, op, &other)),
        Err(SessionError::Guest { message, .. }) if message.starts_with("no session") => {
            reconcile(state, &vm, &s, Some(&[]))
        }
        Err(e) => Err(e),
    }
}

/// What [`signal`] sends.
#[derive(Debug, Clone, Copy)]
pub enum Signal {
    Stop { grace: Duration },
    Send(i32),
}

/// Where a log read is.
#[derive(Debug)]
pub struct LogCursor {
    pub vm: VmRecord,
    pub name: String,
    pub id: String,
    /// Each stream asked for, with its next offset; `None` until the first
    /// read (which honours `tail`).
    pub streams: Vec<(LogStream, Option<u64>)>,
    pub tail: Option<u32>,
}

/// Open a log read of a session (its VM must run: logs live in the guest).
pub fn open_logs(
    state: &Daemon,
    vm_name: &str,
    name: &str,
    streams: Vec<LogStream>,
    tail: Option<u32>,
) -> Result<LogCursor, SessionError> {
    let vm = vm_record(state, vm_name)?;
    let s = find_record(state, &vm, name)?;
    if vm.state != VmState::Running {
        return Err(SessionError::LogsGone {
            vm: vm.name.clone(),
            state: vm.state.to_string(),
        });
    }
    Ok(LogCursor {
        vm,
        name: name.to_owned(),
        id: s.record.id,
        streams: streams.into_iter().map(|s| (s, None)).collect(),
        tail,
    })
}

/// Read what is new on every stream of `cursor`: the chunks (with their
/// stream) and whether the session has ended with nothing left to read.
pub async fn read_logs(
    state: &Daemon,
    cursor: &mut LogCursor,
) -> Result<(Vec<(LogStream, String)>, bool), SessionError> {
    let mut out = Vec::new();
    let mut all_done = true;
    for (stream, next) in cursor.streams.iter_mut() {
        loop {
            let request = AgentRequest::SessionLogs {
                id: cursor.id.clone(),
                stream: *stream,
                offset: next.unwrap_or(0),
                max_bytes: LOG_CHUNK,
                tail_lines: if next.is_none() { cursor.tail } else { None },
            };
            let chunk: SessionLogChunk =
                match ask(state, &cursor.vm, &cursor.name, "read the logs of", request).await? {
                    AgentResponse::SessionLog(c) => c,
                    other => {
                        return Err(unexpected(
                            &cursor.vm,
                            &cursor.name,
                            "read the logs of",
                            &other,
                        ))
                    }
                };
            let got = chunk.next_offset > chunk.offset;
            *next = Some(chunk.next_offset);
            if !chunk.data.is_empty() {
                out.push((*stream, chunk.data));
            }
            if !got {
                if !chunk.ended {
                    all_done = false;
                }
                break;
            }
            // A full chunk: there may be more right away.
            if chunk.next_offset - chunk.offset < u64::from(LOG_CHUNK) / 2 {
                if !chunk.ended {
                    all_done = false;
                }
                break;
            }
        }
    }
    Ok((out, all_done))
}
