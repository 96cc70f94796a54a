//! Reaching the root helper: the `bangerd-root` child this daemon spawns in
//! per-user mode when run as root, the system unit's socket in system mode,
//! or nothing (privileged routes then answer `helper_unavailable`).

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use banger_helper_client::{ClientError, HelperClient};
use banger_wire::api::{ApiError, ErrorCode};
use banger_wire::helper::{HelperError, HelperRequest, HelperResponse};

/// Environment variable naming the `bangerd-root` binary to spawn.
pub const HELPER_BIN_ENV: &str = "BANGERD_ROOT_BIN";

/// How long to wait for a freshly spawned helper to answer a ping.
pub const HELPER_START_TIMEOUT: Duration = Duration::from_secs(10);

/// How privileged operations are reached.
#[derive(Debug, Clone)]
pub enum RootHelper {
    /// A `bangerd-root` child of this daemon.
    Child { pid: u32, socket: PathBuf },
    /// The system `bangerd-root.service` socket.
    System { socket: PathBuf },
    /// No helper; `reason` says how to get one.
    Unavailable { reason: String },
}

/// Errors of one helper request.
#[derive(Debug, thiserror::Error)]
pub enum HelperCallError {
    #[error("{reason}")]
    Unavailable { reason: String },
    /// The helper's error names the socket.
    #[error("root helper is not answering: {source}")]
    Connect {
        socket: PathBuf,
        source: ClientError,
    },
    #[error("root helper failed {op}: {source}")]
    Transport {
        socket: PathBuf,
        op: &'static str,
        source: ClientError,
    },
    #[error("root helper refused {op}: {source}")]
    Refused {
        op: &'static str,
        source: HelperError,
    },
}

impl HelperCallError {
    /// Helper errors keep their own codes (`helper_unavailable`, `helper_failed`).
    pub fn code(&self) -> ErrorCode {
        match self {
            HelperCallError::Unavailable { .. } | HelperCallError::Connect { .. } => {
                ErrorCode::HelperUnavailable
            }
            HelperCallError::Transport { .. } | HelperCallError::Refused { .. } => {
                ErrorCode::HelperFailed
            }
        }
    }
}

impl From<HelperCallError> for ApiError {
    fn from(e: HelperCallError) -> ApiError {
        ApiError {
            code: e.code(),
            message: e.to_string(),
        }
    }
}

/// A helper request that failed, or that was answered with a response of
/// another request: the failure VM and image operations share when they
/// need the root helper.
#[derive(Debug, thiserror::Error)]
pub enum HelperOpError {
    #[error(transparent)]
    Call(#[from] HelperCallError),
    #[error("the root helper sent an unexpected answer to {op}: {answer}")]
    UnexpectedAnswer { op: &'static str, answer: String },
}

impl HelperOpError {
    /// The API error code this failure is served with.
    pub fn code(&self) -> ErrorCode {
        match self {
            HelperOpError::Call(e) => e.code(),
            HelperOpError::UnexpectedAnswer { .. } => ErrorCode::HelperFailed,
        }
    }

    /// `answer` was not what `req` expects.
    pub fn unexpected(req: &HelperRequest, answer: &impl std::fmt::Debug) -> HelperOpError {
        HelperOpError::UnexpectedAnswer {
            op: req.op_name(),
            answer: format!("{answer:?}"),
        }
    }
}

impl RootHelper {
    /// The text of `DaemonStatus.root_helper`.
    pub fn describe(&self) -> Option<String> {
        match self {
            RootHelper::Child { pid, .. } => Some(format!("child pid {pid}")),
            RootHelper::System { socket } => Some(format!("system socket {}", socket.display())),
            RootHelper::Unavailable { .. } => None,
        }
    }

    /// Fail fast (before a stream starts) when there is no helper at all.
    pub fn check_available(&self) -> Result<(), ApiError> {
        match self {
            RootHelper::Unavailable { reason } => Err(ApiError {
                code: ErrorCode::HelperUnavailable,
                message: reason.clone(),
            }),
            _ => Ok(()),
        }
    }

    /// Send one request and wait for its answer.
    pub async fn request(&self, req: &HelperRequest) -> Result<HelperResponse, HelperCallError> {
        let socket = match self {
            RootHelper::Child { socket, .. } | RootHelper::System { socket } => socket,
            RootHelper::Unavailable { reason } => {
                return Err(HelperCallError::Unavailable {
                    reason: reason.clone(),
                })
            }
        };
        call(socket, req).await
    }
}

async fn call(socket: &Path, req: &HelperRequest) -> Result<HelperResponse, HelperCallError> {
    let mut client =
        HelperClient::connect(socket)
            .await
            .map_err(|source| HelperCallError::Connect {
                socket: socket.to_owned(),
                source,
            })?;
    match client.request(req).await {
        Ok(resp) => Ok(resp),
        Err(ClientError::Helper(source)) => Err(HelperCallError::Refused {
            op: req.op_name(),
            source,
        }),
        Err(source) => Err(HelperCallError::Transport {
            socket: socket.to_owned(),
            op: req.op_name(),
            source,
        }),
    }
}

/// Errors starting the helper child.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error("cannot create helper socket directory {path}: {source}")]
    CreateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot prepare helper socket {path}: {source}")]
    Socket {
        path: PathBuf,
        source: crate::socket::SocketError,
    },
    #[error("cannot start root helper {bin}: {source}")]
    Spawn {
        bin: PathBuf,
        source: std::io::Error,
    },
    #[error("root helper {bin} exited during start-up ({status}); see the daemon log")]
    Exited {
        bin: PathBuf,
        status: std::process::ExitStatus,
    },
    #[error("root helper {bin} did not answer a ping on {socket} within {secs} s: {last}")]
    Timeout {
        bin: PathBuf,
        socket: PathBuf,
        secs: u64,
        last: String,
    },
}

/// What the child helper gets on its command line.
#[derive(Debug, Clone)]
pub struct ChildSpec {
    /// `bangerd-root` binary.
    pub bin: PathBuf,
    /// Socket it listens on.
    pub socket: PathBuf,
    /// The only uid it serves (ours).
    pub owner_uid: u32,
    /// The guest range it accepts.
    pub cidr: String,
    /// Directories its path arguments must lie under.
    pub allowed_dirs: Vec<PathBuf>,
    /// Where its stderr goes (`None`: inherit ours).
    pub log_file: Option<PathBuf>,
}

/// The running helper child; killed by [`HelperChild::stop`], and by the
/// kernel (`PR_SET_PDEATHSIG`) if the daemon dies first.
#[derive(Debug)]
pub struct HelperChild {
    child: Child,
    bin: PathBuf,
    socket: PathBuf,
}

/// The helper binary: `$BANGERD_ROOT_BIN`, else `bangerd-root` next to the
/// current executable, else `bangerd-root` from `PATH`.
pub fn helper_binary() -> PathBuf {
    if let Some(p) = std::env::var_os(HELPER_BIN_ENV).filter(|v| !v.is_empty()) {
        return PathBuf::from(p);
    }
    if let Some(sibling) = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|d| d.join("bangerd-root")))
        .filter(|p| p.is_file())
    {
        return sibling;
    }
    PathBuf::from("bangerd-root")
}

impl HelperChild {
    /// Spawn the helper. Call this from the thread that lives as long as the
    /// daemon (the main thread): `PR_SET_PDEATHSIG` fires when the *thread*
    /// that forked exits, not the process.
    pub fn spawn(spec: &ChildSpec) -> Result<HelperChild, SpawnError> {
        use std::os::unix::fs::DirBuilderExt;
        use std::os::unix::process::CommandExt;

        if let Some(dir) = spec.socket.parent() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|source| SpawnError::CreateDir {
                    path: dir.to_owned(),
                    source,
                })?;
        }
        crate::socket::remove_stale(&spec.socket).map_err(|source| SpawnError::Socket {
            path: spec.socket.clone(),
            source,
        })?;

        let mut cmd = Command::new(&spec.bin);
        cmd.arg("serve")
            .arg("--socket")
            .arg(&spec.socket)
            .arg("--owner-uid")
            .arg(spec.owner_uid.to_string())
            .arg("--cidr")
            .arg(&spec.cidr);
        for dir in &spec.allowed_dirs {
            cmd.arg("--allowed-dir").arg(dir);
        }
        cmd.stdin(Stdio::null()).stdout(Stdio::null());
        if let Some(log) = &spec.log_file {
            // Append, like the daemon's own writer, so lines interleave whole.
            match File::options().create(true).append(true).open(log) {
                Ok(f) => {
                    cmd.stderr(f);
                }
                Err(e) => tracing::warn!("cannot open {} for the helper: {e}", log.display()),
            }
        }
        // Its stderr is a log file or the journal, never a terminal.
        cmd.env("NO_COLOR", "1");
        // systemd's notify/watchdog variables are the daemon's, not the child's.
        for var in ["NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"] {
            cmd.env_remove(var);
        }
        let parent = nix::unistd::getpid();
        // SAFETY: the closure runs in the forked child before exec and only
        // calls async-signal-safe functions (prctl, getppid, _exit).
        unsafe {
            cmd.pre_exec(move || {
                if libc::prctl(
                    libc::PR_SET_PDEATHSIG,
                    libc::SIGTERM as libc::c_ulong,
                    0,
                    0,
                    0,
                ) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                // The daemon may have died between fork and prctl.
                if libc::getppid() != parent.as_raw() {
                    libc::_exit(1);
                }
                Ok(())
            });
        }
        let child = cmd.spawn().map_err(|source| SpawnError::Spawn {
            bin: spec.bin.clone(),
            source,
        })?;
        tracing::info!(pid = child.id(), bin = %spec.bin.display(), "spawned root helper");
        Ok(HelperChild {
            child,
            bin: spec.bin.clone(),
            socket: spec.socket.clone(),
        })
    }

    /// The child's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The child's socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Wait until the helper answers a ping (or exits, or `timeout` passes).
    pub async fn wait_ready(&mut self, timeout: Duration) -> Result<(), SpawnError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(SpawnError::Exited {
                    bin: self.bin.clone(),
                    status,
                });
            }
            let last = match call(&self.socket, &HelperRequest::Ping).await {
                Ok(HelperResponse::Pong { .. }) => return Ok(()),
                Ok(other) => format!("unexpected answer {other:?}"),
                Err(e) => e.to_string(),
            };
            if Instant::now() >= deadline {
                return Err(SpawnError::Timeout {
                    bin: self.bin.clone(),
                    socket: self.socket.clone(),
                    secs: timeout.as_secs(),
                    last,
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGTERM the helper and reap it; SIGKILL after `grace`.
    pub fn stop(mut self, grace: Duration) {
        use nix::sys::signal::{kill, Signal};
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        let _ = kill(pid, Signal::SIGTERM);
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            match self.child.try_wait() {
                Ok(Some(status)) => {
                    tracing::info!(%status, "root helper stopped");
                    return;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                Err(_) => break,
            }
        }
        tracing::warn!("root helper did not stop within {grace:?}; killing it");
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
