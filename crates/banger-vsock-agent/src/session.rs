//! Supervised sessions: long-lived guest commands the host starts and
//! tracks, kept entirely in the guest so that the host daemon can die,
//! restart or reconnect without losing them (`docs/sessions.md`).
//!
//! Each session is a directory `SESSIONS_DIR/<id>/`:
//!
//! | file | written by | what |
//! |---|---|---|
//! | `spec.json` | agent, before launch | the [`SessionSpec`] |
//! | `state.json` | supervisor, atomically | pid, times, exit status or signal |
//! | `stdout.log`, `stderr.log` | the command | its output, appended |
//! | `stdin` | agent (pipe mode) | a FIFO the supervisor keeps open |
//! | `control.sock` | supervisor | `signal N` / `stop MS` requests |
//!
//! The agent starts one **supervisor** per session (`banger-vsock-agent
//! session-supervise DIR`, in a session of its own so it outlives the
//! agent's connection). The supervisor is the command's parent: it is the
//! only process that signals it, and it does so under a lock that is
//! released only after it has seen the exit and before it reaps, so a
//! signal can never reach a recycled pid.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use banger_wire::guest::{
    GuestSession, LogStream, SessionIoChunk, SessionLogChunk, SessionSpec, SessionStatus,
    StdinMode, MAX_SESSION_LOG_CHUNK,
};
use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

/// `PATH` of a session unless its environment sets one: systemd's default.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// How long a start waits for the supervisor to report the launch.
pub const LAUNCH_WAIT: Duration = Duration::from_millis(1500);
/// How much of stderr `show` carries once a session ended.
pub const STDERR_TAIL_BYTES: u64 = 2048;
/// Most bytes of each log one [`SessionStore::io`] returns.
pub const MAX_IO_CHUNK: u32 = 64 * 1024;
/// Longest control request line accepted by a supervisor.
const MAX_CONTROL_LINE: u64 = 128;

/// Errors of session requests; the message is what the host shows.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("invalid session request: {0}")]
    Invalid(String),
    #[error("no session {id} in this guest")]
    NotFound { id: String },
    #[error("a session named {name:?} is still running in this guest (id {id})")]
    NameInUse { name: String, id: String },
    #[error("cannot {op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("cannot start the session supervisor {exe}: {source}")]
    Supervisor { exe: PathBuf, source: io::Error },
    #[error("the session's supervisor did not answer {request:?}: {source}")]
    Control { request: String, source: io::Error },
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> SessionError + 'a {
    move |source| SessionError::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

/// What the supervisor records in `state.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SupervisorState {
    pub status: SessionStatus,
    pub supervisor_pid: u32,
    pub pid: Option<u32>,
    pub started_at_ms: Option<u64>,
    pub ended_at_ms: Option<u64>,
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Sessions under one directory, started through one agent binary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionStore {
    /// `SESSIONS_DIR` in a guest.
    pub root: PathBuf,
    /// The binary that runs `session-supervise` (the agent itself).
    pub agent_exe: PathBuf,
    /// root's home (`/root`): a session without a cwd starts in
    /// `HOME/repo` when that exists (a prepared workspace), else in `HOME`.
    pub home: PathBuf,
}

/// `home/repo` when it is a directory, else `home`.
pub fn default_cwd(home: &Path) -> String {
    let repo = home.join("repo");
    let dir = if repo.is_dir() { repo } else { home.to_owned() };
    dir.to_string_lossy().into_owned()
}

impl Default for SessionStore {
    fn default() -> Self {
        SessionStore {
            root: PathBuf::from(banger_wire::guest::SESSIONS_DIR),
            agent_exe: std::env::current_exe()
                .unwrap_or_else(|_| PathBuf::from(banger_wire::guest::AGENT_RUN_PATH)),
            home: PathBuf::from("/root"),
        }
    }
}

pub use banger_wire::session::validate_session_name as validate_name;

fn validate_id(id: &str) -> Result<(), SessionError> {
    if id.len() == 32 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        Ok(())
    } else {
        Err(SessionError::Invalid(format!(
            "session id {id:?} is not 32 lowercase hex digits"
        )))
    }
}

fn validate_spec(spec: &SessionSpec) -> Result<(), SessionError> {
    validate_id(&spec.id)?;
    validate_name(&spec.name).map_err(SessionError::Invalid)?;
    if spec.command.is_empty() || spec.command[0].is_empty() {
        return Err(SessionError::Invalid("the command is empty".into()));
    }
    if !spec.cwd.is_empty() && !spec.cwd.starts_with('/') {
        return Err(SessionError::Invalid(format!(
            "cwd {:?} is not an absolute path",
            spec.cwd
        )));
    }
    for var in &spec.env {
        match var.split_once('=') {
            Some((k, _)) if !k.is_empty() => {}
            _ => {
                return Err(SessionError::Invalid(format!(
                    "environment entry {var:?} is not KEY=VALUE"
                )))
            }
        }
    }
    let all = spec
        .command
        .iter()
        .chain(&spec.env)
        .chain(&spec.require_commands)
        .chain([&spec.cwd, &spec.name]);
    if all.into_iter().any(|s| s.contains('\0')) {
        return Err(SessionError::Invalid("a value contains a NUL byte".into()));
    }
    Ok(())
}

/// The environment a session runs with: a small base, then the spec's.
pub fn session_env(spec: &SessionSpec) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = vec![
        ("PATH".into(), DEFAULT_PATH.into()),
        ("HOME".into(), "/root".into()),
        ("USER".into(), "root".into()),
        ("LOGNAME".into(), "root".into()),
        ("SHELL".into(), "/bin/sh".into()),
        ("LANG".into(), "C.UTF-8".into()),
        ("BANGER_SESSION".into(), spec.name.clone()),
    ];
    for var in &spec.env {
        let (k, v) = var.split_once('=').expect("validated");
        env.retain(|(key, _)| key != k);
        env.push((k.to_owned(), v.to_owned()));
    }
    env
}

fn is_executable_file(path: &Path) -> bool {
    fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Where `program` resolves for a session: a path with a `/` is taken
/// relative to `cwd`; a bare name is searched on `path_var`.
pub fn find_program(program: &str, cwd: &Path, path_var: &str) -> Option<PathBuf> {
    if program.contains('/') {
        let p = cwd.join(program);
        return is_executable_file(&p).then_some(p);
    }
    path_var
        .split(':')
        .filter(|d| !d.is_empty())
        .map(|d| cwd.join(d).join(program))
        .find(|p| is_executable_file(p))
}

/// Everything that would make the launch fail, each named; empty when the
/// session can start.
pub fn preflight(spec: &SessionSpec) -> Vec<String> {
    let mut problems = Vec::new();
    let cwd = Path::new(&spec.cwd);
    match fs::metadata(cwd) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => problems.push(format!("cwd {} is not a directory in the guest", spec.cwd)),
        Err(e) => problems.push(format!(
            "cwd {} does not exist in the guest ({e})",
            spec.cwd
        )),
    }
    let env = session_env(spec);
    let path_var = env
        .iter()
        .find(|(k, _)| k == "PATH")
        .map_or(DEFAULT_PATH, |(_, v)| v.as_str());
    let base = if problems.is_empty() {
        cwd
    } else {
        Path::new("/")
    };
    let mut check = |what: &str, program: &String| {
        if find_program(program, base, path_var).is_none() {
            problems.push(format!(
                "{what} {program:?} is not an executable on the guest's PATH ({path_var})"
            ));
        }
    };
    check("command", &spec.command[0]);
    for required in &spec.require_commands {
        check("required command", required);
    }
    problems
}

/// What a start did.
#[derive(Debug)]
pub enum StartOutcome {
    Started(Box<GuestSession>),
    /// The preflight failed; nothing was created.
    Refused(Vec<String>),
}

impl SessionStore {
    fn dir(&self, id: &str) -> Result<PathBuf, SessionError> {
        validate_id(id)?;
        Ok(self.root.join(id))
    }

    /// Check `spec` and, when every check passes, start its supervisor.
    pub fn start(&self, spec: &SessionSpec) -> Result<StartOutcome, SessionError> {
        validate_spec(spec)?;
        let mut spec = spec.clone();
        if spec.cwd.is_empty() {
            spec.cwd = default_cwd(&self.home);
        }
        let spec = &spec;
        let problems = preflight(spec);
        if !problems.is_empty() {
            return Ok(StartOutcome::Refused(problems));
        }
        for other in self.list()? {
            if other.spec.name == spec.name {
                if !other.status.is_ended() {
                    return Err(SessionError::NameInUse {
                        name: spec.name.clone(),
                        id: other.spec.id,
                    });
                }
                // An ended session's name may be reused: the new one replaces it.
                let old = self.root.join(&other.spec.id);
                fs::remove_dir_all(&old).map_err(io_err("remove", &old))?;
            }
        }
        fs::create_dir_all(&self.root).map_err(io_err("create", &self.root))?;
        fs::set_permissions(&self.root, fs::Permissions::from_mode(0o700))
            .map_err(io_err("chmod", &self.root))?;
        let dir = self.dir(&spec.id)?;
        fs::create_dir(&dir).map_err(io_err("create", &dir))?;
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))
            .map_err(io_err("chmod", &dir))?;
        let spec_path = dir.join("spec.json");
        write_atomic(
            &spec_path,
            &serde_json::to_vec_pretty(spec).expect("spec serializes"),
        )?;
        if spec.stdin == StdinMode::Pipe {
            let fifo = dir.join("stdin");
            nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).map_err(
                |e| SessionError::Io {
                    op: "mkfifo",
                    path: fifo.clone(),
                    source: e.into(),
                },
            )?;
        }
        let mut cmd = Command::new(&self.agent_exe);
        cmd.arg("session-supervise")
            .arg(&dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // SAFETY: setsid is async-signal-safe; nothing else runs between
        // fork and exec.
        unsafe {
            cmd.pre_exec(|| nix::unistd::setsid().map(|_| ()).map_err(io::Error::from));
        }
        let mut child = cmd.spawn().map_err(|source| SessionError::Supervisor {
            exe: self.agent_exe.clone(),
            source,
        })?;
        // The supervisor is our child: reap it whenever it ends.
        std::thread::spawn(move || child.wait());
        let deadline = Instant::now() + LAUNCH_WAIT;
        loop {
            let session = self.show(&spec.id)?;
            if session.status != (SessionStatus::Starting {}) || Instant::now() >= deadline {
                return Ok(StartOutcome::Started(Box::new(session)));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// One session as it is now.
    pub fn show(&self, id: &str) -> Result<GuestSession, SessionError> {
        let dir = self.dir(id)?;
        let spec_path = dir.join("spec.json");
        let spec: SessionSpec = match fs::read(&spec_path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| SessionError::Io {
                op: "parse",
                path: spec_path.clone(),
                source: io::Error::new(io::ErrorKind::InvalidData, e),
            })?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(SessionError::NotFound { id: id.to_owned() })
            }
            Err(e) => return Err(io_err("read", &spec_path)(e)),
        };
        let state = read_state(&dir)?;
        let (mut status, pid, started_at_ms, ended_at_ms) = match state {
            Some(s) => {
                let mut status = s.status;
                if !status.is_ended() && !process_alive(s.supervisor_pid) {
                    status = SessionStatus::Lost {
                        message: "its supervisor died without recording an end".into(),
                    };
                }
                (status, s.pid, s.started_at_ms, s.ended_at_ms)
            }
            None => (SessionStatus::Starting {}, None, None, None),
        };
        if status == (SessionStatus::Starting {}) {
            // A supervisor that never wrote its state within a long while is gone.
            let age = fs::metadata(&spec_path)
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok());
            if age.is_some_and(|a| a > Duration::from_secs(30)) {
                status = SessionStatus::Lost {
                    message: "its supervisor never reported the launch".into(),
                };
            }
        }
        let stderr_tail = if status.is_ended() {
            Some(log_tail(
                &dir.join(LogStream::Stderr.file_name()),
                STDERR_TAIL_BYTES,
            ))
        } else {
            None
        };
        Ok(GuestSession {
            spec,
            status,
            pid,
            started_at_ms,
            ended_at_ms,
            stderr_tail,
        })
    }

    /// Every session, oldest first. Entries that are not sessions are skipped.
    pub fn list(&self) -> Result<Vec<GuestSession>, SessionError> {
        let entries = match fs::read_dir(&self.root) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_err("read", &self.root)(e)),
        };
        let mut out = Vec::new();
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(id) = name.to_str() else { continue };
            if validate_id(id).is_err() {
                continue;
            }
            match self.show(id) {
                Ok(s) => out.push(s),
                Err(SessionError::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        out.sort_by(|a, b| (a.started_at_ms, &a.spec.id).cmp(&(b.started_at_ms, &b.spec.id)));
        Ok(out)
    }

    /// Read a log from `offset` (see [`banger_wire::guest::AgentRequest::SessionLogs`]).
    pub fn logs(
        &self,
        id: &str,
        stream: LogStream,
        offset: u64,
        max_bytes: u32,
        tail_lines: Option<u32>,
    ) -> Result<SessionLogChunk, SessionError> {
        let session = self.show(id)?;
        let ended = session.status.is_ended();
        let path = self.dir(id)?.join(stream.file_name());
        let max = u64::from(max_bytes.clamp(1, MAX_SESSION_LOG_CHUNK));
        let mut file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Ok(SessionLogChunk {
                    offset,
                    data: String::new(),
                    next_offset: offset,
                    ended,
                })
            }
            Err(e) => return Err(io_err("open", &path)(e)),
        };
        let len = file.metadata().map_err(io_err("stat", &path))?.len();
        let mut start = offset.min(len);
        if let Some(lines) = tail_lines {
            start = tail_start(&mut file, len, max, lines).map_err(io_err("read", &path))?;
        }
        file.seek(SeekFrom::Start(start))
            .map_err(io_err("seek", &path))?;
        let mut buf = Vec::new();
        file.take(max)
            .read_to_end(&mut buf)
            .map_err(io_err("read", &path))?;
        let (data, used) = decode_prefix(&buf);
        Ok(SessionLogChunk {
            offset: start,
            data,
            next_offset: start + used as u64,
            ended,
        })
    }

    /// One attach step: write what fits of `stdin` into a pipe-mode
    /// session's FIFO without blocking, then read each log from its offset
    /// (raw bytes; an offset past the end means the end, so `u64::MAX`
    /// with `max_bytes` 0 asks for the current lengths). The state is read
    /// first: when it says ended, the logs read after it are complete.
    pub fn io(
        &self,
        id: &str,
        stdin: &[u8],
        stdout_offset: u64,
        stderr_offset: u64,
        max_bytes: u32,
    ) -> Result<SessionIoChunk, SessionError> {
        let session = self.show(id)?;
        let dir = self.dir(id)?;
        let mut written = 0;
        if !stdin.is_empty() {
            if session.spec.stdin != StdinMode::Pipe {
                return Err(SessionError::Invalid(format!(
                    "session {:?} has no stdin (started with --stdin-mode detached)",
                    session.spec.name
                )));
            }
            // Input for a session that ended goes nowhere; the caller sees
            // the end in `status`.
            if !session.status.is_ended() {
                written = write_fifo(&dir.join("stdin"), stdin)?;
            }
        }
        let max = u64::from(max_bytes.min(MAX_IO_CHUNK));
        let (stdout_offset, stdout) =
            read_raw(&dir.join(LogStream::Stdout.file_name()), stdout_offset, max)?;
        let (stderr_offset, stderr) =
            read_raw(&dir.join(LogStream::Stderr.file_name()), stderr_offset, max)?;
        Ok(SessionIoChunk {
            stdin_written: written as u32,
            stdout_offset,
            stdout,
            stderr_offset,
            stderr,
            status: session.status,
            pid: session.pid,
        })
    }

    /// Ask the supervisor to send `request` (`signal N` or `stop MS`).
    /// A session that already ended is left alone; either way the answer
    /// is the session as it is afterwards.
    pub fn control(&self, id: &str, request: &str) -> Result<GuestSession, SessionError> {
        let session = self.show(id)?;
        if session.status.is_ended() {
            return Ok(session);
        }
        let sock = self.dir(id)?.join("control.sock");
        let control_err = |source| SessionError::Control {
            request: request.to_owned(),
            source,
        };
        match UnixStream::connect(&sock) {
            Ok(mut stream) => {
                stream
                    .set_read_timeout(Some(Duration::from_secs(2)))
                    .map_err(control_err)?;
                stream
                    .write_all(format!("{request}\n").as_bytes())
                    .map_err(control_err)?;
                let mut answer = String::new();
                BufReader::new(stream)
                    .take(MAX_CONTROL_LINE)
                    .read_line(&mut answer)
                    .map_err(control_err)?;
                let answer = answer.trim();
                // An empty answer is EOF: the signalled command ended and
                // the supervisor exited before its control thread replied
                // (seen with `stop` under load); the state read below says
                // how it ended.
                if !answer.is_empty() && answer != "ok" && answer != "ended" {
                    return Err(control_err(io::Error::other(answer.to_owned())));
                }
            }
            // The supervisor removes its socket when the command ended.
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
                ) => {}
            Err(e) => return Err(control_err(e)),
        }
        // Give a signalled command a moment to be reaped so the answer
        // shows its end when it was quick.
        let deadline = Instant::now() + Duration::from_millis(500);
        loop {
            let now = self.show(id)?;
            if now.status.is_ended() || Instant::now() >= deadline {
                return Ok(now);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Write what fits of `data` into the FIFO at `path`. Non-blocking: the
/// agent serves every other request on the same thread, and a command that
/// does not read must not stall them; the caller retries the rest.
fn write_fifo(path: &Path, data: &[u8]) -> Result<usize, SessionError> {
    let mut fifo = OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW)
        .open(path)
        .map_err(io_err("open", path))?;
    let meta = fifo.metadata().map_err(io_err("stat", path))?;
    if !meta.file_type().is_fifo() {
        return Err(SessionError::Invalid(format!(
            "{} is not a FIFO",
            path.display()
        )));
    }
    let mut written = 0;
    while written < data.len() {
        match fifo.write(&data[written..]) {
            Ok(0) => break,
            Ok(n) => written += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(io_err("write", path)(e)),
        }
    }
    Ok(written)
}

/// Up to `max` bytes of the file at `path` from `offset` (clamped to its
/// length), and where they start. A log not yet created is empty.
fn read_raw(path: &Path, offset: u64, max: u64) -> Result<(u64, Vec<u8>), SessionError> {
    let mut file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((0, Vec::new())),
        Err(e) => return Err(io_err("open", path)(e)),
    };
    let len = file.metadata().map_err(io_err("stat", path))?.len();
    let start = offset.min(len);
    file.seek(SeekFrom::Start(start))
        .map_err(io_err("seek", path))?;
    let mut buf = Vec::new();
    file.take(max)
        .read_to_end(&mut buf)
        .map_err(io_err("read", path))?;
    Ok((start, buf))
}

/// Where to start reading to get at most `lines` lines from the end,
/// looking back at most `max` bytes.
fn tail_start(file: &mut File, len: u64, max: u64, lines: u32) -> io::Result<u64> {
    let from = len.saturating_sub(max);
    file.seek(SeekFrom::Start(from))?;
    let mut buf = Vec::new();
    file.take(len - from).read_to_end(&mut buf)?;
    let body = buf.strip_suffix(b"\n").unwrap_or(&buf);
    let mut seen = 0u32;
    for (i, &b) in body.iter().enumerate().rev() {
        if b == b'\n' {
            seen += 1;
            if seen == lines {
                return Ok(from + i as u64 + 1);
            }
        }
    }
    if lines == 0 {
        return Ok(len);
    }
    Ok(from)
}

/// Text of `buf` and how many bytes it used: an incomplete UTF-8 sequence
/// at the end is left for the next read; invalid bytes are replaced.
pub fn decode_prefix(buf: &[u8]) -> (String, usize) {
    let mut end = buf.len();
    if let Err(e) = std::str::from_utf8(buf) {
        if e.error_len().is_none() && buf.len() - e.valid_up_to() < 4 {
            end = e.valid_up_to();
            // Only hold back when what precedes is a clean boundary;
            // otherwise earlier invalid bytes are replaced below anyway.
        }
    }
    (String::from_utf8_lossy(&buf[..end]).into_owned(), end)
}

fn log_tail(path: &Path, max: u64) -> String {
    let Ok(mut f) = File::open(path) else {
        return String::new();
    };
    let len = f.metadata().map_or(0, |m| m.len());
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(max)));
    let mut buf = Vec::new();
    let _ = f.take(max).read_to_end(&mut buf);
    String::from_utf8_lossy(&buf).into_owned()
}

fn process_alive(pid: u32) -> bool {
    let Ok(raw) = i32::try_from(pid) else {
        return false;
    };
    match signal::kill(Pid::from_raw(raw), None) {
        Ok(()) => !is_zombie(pid),
        Err(nix::Error::EPERM) => true,
        Err(_) => false,
    }
}

fn is_zombie(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}

fn read_state(dir: &Path) -> Result<Option<SupervisorState>, SessionError> {
    let path = dir.join("state.json");
    match fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| SessionError::Io {
                op: "parse",
                path,
                source: io::Error::new(io::ErrorKind::InvalidData, e),
            }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err("read", &path)(e)),
    }
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), SessionError> {
    let owner = crate::apply::Owner {
        uid: nix::unistd::getuid().as_raw(),
        gid: nix::unistd::getgid().as_raw(),
    };
    crate::apply::write_atomic(path, &mut &bytes[..], 0o600, owner).map_err(|f| SessionError::Io {
        op: f.op,
        path: f.path,
        source: f.source,
    })
}

fn write_state(dir: &Path, state: &SupervisorState) -> Result<(), SessionError> {
    write_atomic(
        &dir.join("state.json"),
        &serde_json::to_vec_pretty(state).expect("state serializes"),
    )
}

fn open_log(path: &Path) -> Result<File, SessionError> {
    OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(io_err("open", path))
}

/// Shared between the supervisor's waiter and its control thread.
struct Child {
    pgid: Pid,
    exited: bool,
}

fn send(child: &Mutex<Child>, sig: Signal) -> &'static str {
    let c = child.lock().unwrap_or_else(|e| e.into_inner());
    if c.exited {
        return "ended";
    }
    // The whole process group: a shell's children get it too.
    let _ = signal::killpg(c.pgid, sig);
    "ok"
}

fn serve_control(listener: UnixListener, child: Arc<Mutex<Child>>) {
    for conn in listener.incoming() {
        let Ok(conn) = conn else { continue };
        let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
        let mut line = String::new();
        let Ok(reader) = conn.try_clone() else {
            continue;
        };
        if BufReader::new(reader)
            .take(MAX_CONTROL_LINE)
            .read_line(&mut line)
            .is_err()
        {
            continue;
        }
        let answer = match line.trim().split_once(' ') {
            Some(("signal", n)) => {
                match n.parse::<i32>().ok().and_then(|n| Signal::try_from(n).ok()) {
                    Some(sig) => send(&child, sig),
                    None => "bad signal",
                }
            }
            Some(("stop", ms)) => match ms.parse::<u64>() {
                Ok(ms) => {
                    let answer = send(&child, Signal::SIGTERM);
                    let child = Arc::clone(&child);
                    std::thread::spawn(move || {
                        std::thread::sleep(Duration::from_millis(ms));
                        send(&child, Signal::SIGKILL);
                    });
                    answer
                }
                Err(_) => "bad grace",
            },
            _ => "bad request",
        };
        let mut conn = conn;
        let _ = conn.write_all(format!("{answer}\n").as_bytes());
    }
}

/// The supervisor (`banger-vsock-agent session-supervise DIR`): launch the
/// command of `DIR/spec.json`, record it, wait for it, record its end.
pub fn supervise(dir: &Path) -> Result<(), SessionError> {
    let spec_path = dir.join("spec.json");
    let spec: SessionSpec =
        serde_json::from_slice(&fs::read(&spec_path).map_err(io_err("read", &spec_path))?)
            .map_err(|e| SessionError::Io {
                op: "parse",
                path: spec_path.clone(),
                source: io::Error::new(io::ErrorKind::InvalidData, e),
            })?;
    let supervisor_pid = std::process::id();
    let stdout = open_log(&dir.join(LogStream::Stdout.file_name()))?;
    let mut stderr = open_log(&dir.join(LogStream::Stderr.file_name()))?;
    // Keep the FIFO open for reading and writing for the session's whole
    // life: the command then never reads EOF between two attaches.
    let mut _keep_open = None;
    let stdin = match spec.stdin {
        StdinMode::Detached => Stdio::null(),
        StdinMode::Pipe => {
            let fifo = dir.join("stdin");
            let meta = fs::symlink_metadata(&fifo).map_err(io_err("stat", &fifo))?;
            if !meta.file_type().is_fifo() {
                return Err(SessionError::Invalid(format!(
                    "{} is not a FIFO",
                    fifo.display()
                )));
            }
            let rw = OpenOptions::new()
                .read(true)
                .write(true)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&fifo)
                .map_err(io_err("open", &fifo))?;
            let r = OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&fifo)
                .map_err(io_err("open", &fifo))?;
            _keep_open = Some(rw);
            Stdio::from(r)
        }
    };
    let sock = dir.join("control.sock");
    let _ = fs::remove_file(&sock);
    let listener = UnixListener::bind(&sock).map_err(io_err("bind", &sock))?;
    let mut state = SupervisorState {
        status: SessionStatus::Starting {},
        supervisor_pid,
        pid: None,
        started_at_ms: Some(now_ms()),
        ended_at_ms: None,
    };
    let mut cmd = Command::new(&spec.command[0]);
    cmd.args(&spec.command[1..])
        .current_dir(&spec.cwd)
        .env_clear()
        .envs(session_env(&spec))
        .stdin(stdin)
        .stdout(stdout)
        .stderr(stderr.try_clone().map_err(io_err("dup", dir))?)
        .process_group(0);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            let message = format!("cannot execute {:?}: {e}", spec.command[0]);
            let _ = writeln!(stderr, "banger: {message}");
            state.status = SessionStatus::LaunchFailed { message };
            state.ended_at_ms = Some(now_ms());
            let _ = fs::remove_file(&sock);
            return write_state(dir, &state);
        }
    };
    let pid = child.id();
    state.pid = Some(pid);
    state.status = SessionStatus::Running {};
    write_state(dir, &state)?;
    let shared = Arc::new(Mutex::new(Child {
        pgid: Pid::from_raw(pid as i32),
        exited: false,
    }));
    {
        let shared = Arc::clone(&shared);
        std::thread::spawn(move || serve_control(listener, shared));
    }
    // See the exit without reaping, then mark it under the lock, then reap:
    // no signal can be sent to the pid once it could be reused.
    loop {
        match nix::sys::wait::waitid(
            nix::sys::wait::Id::Pid(Pid::from_raw(pid as i32)),
            nix::sys::wait::WaitPidFlag::WEXITED | nix::sys::wait::WaitPidFlag::WNOWAIT,
        ) {
            Ok(_) => break,
            Err(nix::Error::EINTR) => continue,
            Err(e) => {
                let _ = writeln!(stderr, "banger: waiting for the command failed: {e}");
                break;
            }
        }
    }
    let status = {
        let mut c = shared.lock().unwrap_or_else(|e| e.into_inner());
        c.exited = true;
        child.wait().map_err(io_err("wait for", dir))?
    };
    state.ended_at_ms = Some(now_ms());
    state.status = match (status.code(), status.signal()) {
        (Some(code), _) => SessionStatus::Exited { code },
        (None, Some(signal)) => SessionStatus::Signaled { signal },
        (None, None) => SessionStatus::Lost {
            message: format!("unknown wait status {status:?}"),
        },
    };
    let _ = fs::remove_file(&sock);
    write_state(dir, &state)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cut_character_is_left_for_the_next_read() {
        let s = "aé".as_bytes();
        assert_eq!(decode_prefix(&s[..2]), ("a".to_owned(), 1));
        assert_eq!(decode_prefix(s), ("aé".to_owned(), 3));
        assert_eq!(decode_prefix(b"a\xffb"), ("a\u{fffd}b".to_owned(), 3));
    }

    #[test]
    fn tail_finds_the_last_lines() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("log");
        fs::write(&p, "1\n2\n3\n").unwrap();
        let mut f = File::open(&p).unwrap();
        assert_eq!(tail_start(&mut f, 6, 100, 2).unwrap(), 2);
        assert_eq!(tail_start(&mut f, 6, 100, 5).unwrap(), 0);
        assert_eq!(tail_start(&mut f, 6, 100, 0).unwrap(), 6);
    }
}
