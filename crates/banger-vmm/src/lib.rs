//! banger's VMM backends: one [`VmSpec`] run on Firecracker (configured over
//! its REST API) or on QEMU's `microvm` machine (KVM or TCG, controlled
//! over QMP), behind one [`Vmm`] and one persisted [`VmmHandle`].
//!
//! ```text
//! let vmm = Vmm::from_choice(&banger_host::probe::choose_backend(..))?;
//! let handle = vmm.launch(&spec, &LaunchOptions::default()).await?;  // writes run_dir/vmm.json
//! handle.status().await?;                       // Running / Paused / ...
//! handle.shutdown(Duration::from_secs(20)).await?;  // graceful, then forced
//! // after a daemon restart:
//! let handle = VmmHandle::load(&run_dir)?; if handle.is_alive() { .. }
//! ```
//!
//! VMM processes run in their own session with no parent-death signal, so
//! they outlive the daemon; identity is pid + start time ([`process`]).

pub mod agent;
pub mod firecracker;
mod launch;
pub mod process;
pub mod qemu;
pub mod spec;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use agent::{AgentEndpoint, AgentError, AGENT_SERIAL_PORT, AGENT_VSOCK_PORT};
pub use banger_host::probe::{Accel, Backend};
pub use firecracker::{FirecrackerConfig, JailerConfig};
pub use process::{is_same_process, process_start_time, ProcessError};
pub use qemu::QemuConfig;
pub use spec::{AgentSpec, DriveSpec, MacAddr, NetSpec, SpecError, VmSpec};

/// Name of the handle file [`Vmm::launch`] writes into the run directory.
pub const HANDLE_FILE: &str = "vmm.json";

/// Errors of launching and controlling VMMs, each naming what failed.
#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    #[error("invalid VM spec: {0}")]
    Spec(#[from] SpecError),
    #[error(transparent)]
    Process(#[from] ProcessError),
    #[error(transparent)]
    FirecrackerApi(#[from] firecracker::ApiError),
    #[error(transparent)]
    Qmp(#[from] qemu::QmpError),
    #[error("cannot {op} {path}: {source}")]
    Io {
        op: FileOp,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} exists and is not a socket; refusing to replace it")]
    NotASocket { path: PathBuf },
    #[error("cannot start {binary}: {source}")]
    Spawn {
        binary: PathBuf,
        source: std::io::Error,
    },
    #[error("{binary} exited during startup ({status}); its last output:\n{output}")]
    ExitedEarly {
        binary: PathBuf,
        status: EarlyExit,
        output: String,
    },
    #[error("{binary} did not {waited_for} within {secs} s")]
    StartupTimeout {
        binary: PathBuf,
        waited_for: StartupStep,
        secs: u64,
    },
    #[error("pidfile {path} does not hold a pid: {content:?}")]
    BadPidfile { path: PathBuf, content: String },
    #[error("handle file {path} is unreadable: {source}")]
    BadHandle {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("jail path {path}: the Firecracker binary path has no file name")]
    JailNoFileName { path: PathBuf },
    #[error("jail path {path}: {op}: {source}")]
    JailIo {
        op: JailOp,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("jail path {dst}: hard-link {src}{}: {source}", exdev_hint(source))]
    JailLink {
        src: PathBuf,
        dst: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("jail path {path}: not an ELF executable: {source}")]
    JailNotElf {
        path: PathBuf,
        #[source]
        source: goblin::error::Error,
    },
    #[error("jail path {path}: is dynamically linked (it needs {interpreter}), but the jailer runs it in an empty chroot: use a statically linked Firecracker (the released binaries are static musl builds) or turn the jailer off")]
    JailDynamic { path: PathBuf, interpreter: String },
    #[error("VMM process {pid} of {id} did not exit after SIGKILL")]
    Unkillable { id: String, pid: u32 },
    #[error("VM {id} already runs from {run_dir} (VMM process {pid}); stop it first")]
    AlreadyRunning {
        id: String,
        pid: u32,
        run_dir: PathBuf,
    },
    #[error("snapshots are not supported on the {backend:?} backend yet; boot cold (warm_start = \"off\")")]
    SnapshotUnsupported { backend: Backend },
    #[error("VMM process {pid} of {id} is still running; stop it before cleaning up")]
    StillRunning { id: String, pid: u32 },
}

/// A file step of launching or cleaning up a VMM: the path and the OS error
/// say what to fix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileOp {
    Inspect,
    Open,
    OpenForAppending,
    Create,
    Read,
    ReadPidfile,
    Write,
    Remove,
    RemoveJailDir,
    RenameIntoPlace,
    CopyInitrdTo,
    Pad,
    DuplicateHandleOf,
}

impl std::fmt::Display for FileOp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            FileOp::Inspect => "inspect",
            FileOp::Open => "open",
            FileOp::OpenForAppending => "open for appending",
            FileOp::Create => "create",
            FileOp::Read => "read",
            FileOp::ReadPidfile => "read pidfile",
            FileOp::Write => "write",
            FileOp::Remove => "remove",
            FileOp::RemoveJailDir => "remove jail directory",
            FileOp::RenameIntoPlace => "rename into place",
            FileOp::CopyInitrdTo => "copy the initrd to",
            FileOp::Pad => "pad",
            FileOp::DuplicateHandleOf => "duplicate the handle of",
        })
    }
}

/// A step of laying out the jailer's chroot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JailOp {
    Create,
    Read,
    ChownToJailIds,
    RemoveStaleLink,
}

impl std::fmt::Display for JailOp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            JailOp::Create => "create",
            JailOp::Read => "read",
            JailOp::ChownToJailIds => "chown to the jail uid/gid",
            JailOp::RemoveStaleLink => "remove the stale link",
        })
    }
}

fn exdev_hint(e: &std::io::Error) -> &'static str {
    if e.raw_os_error() == Some(libc::EXDEV) {
        " (the chroot base must be on the same filesystem as the VM's files)"
    } else {
        ""
    }
}

/// What a VMM that exited during startup left to report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EarlyExit {
    Status(std::process::ExitStatus),
    /// The child was reaped before its pid could be read.
    AlreadyReaped,
    /// It exited, but its status could not be collected.
    Unknown,
}

impl std::fmt::Display for EarlyExit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EarlyExit::Status(s) => s.fmt(f),
            EarlyExit::AlreadyReaped => f.write_str("already reaped"),
            EarlyExit::Unknown => f.write_str("unknown status"),
        }
    }
}

/// What a VMM did not get done within its startup timeout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartupStep {
    /// Firecracker: create its API socket.
    ApiSocket(PathBuf),
    /// QEMU: set the VM up and daemonize.
    SetUp,
}

impl std::fmt::Display for StartupStep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StartupStep::ApiSocket(p) => write!(f, "create its API socket {}", p.display()),
            StartupStep::SetUp => f.write_str("set up the VM"),
        }
    }
}

/// A backend with everything needed to start VMs on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendConfig {
    /// Firecracker (KVM).
    Firecracker(FirecrackerConfig),
    /// QEMU `microvm` with KVM or TCG.
    Qemu(QemuConfig),
}

/// Launch-time choices that are not part of the VM description.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaunchOptions {
    /// Set the VM up but do not run it (Firecracker: no `InstanceStart`;
    /// QEMU: `-S`). [`VmmHandle::start`] runs it later.
    pub start_paused: bool,
    /// How long Firecracker may take to create its API socket.
    pub api_timeout: Duration,
}

impl Default for LaunchOptions {
    fn default() -> LaunchOptions {
        LaunchOptions {
            start_paused: false,
            api_timeout: Duration::from_secs(5),
        }
    }
}

/// Starts VMs on one backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vmm {
    config: BackendConfig,
    reason: String,
}

impl Vmm {
    /// A VMM launcher for `config`; `reason` says why this backend (and for
    /// QEMU, this accelerator) was chosen, and is recorded in every handle.
    pub fn new(config: BackendConfig, reason: impl Into<String>) -> Vmm {
        Vmm {
            config,
            reason: reason.into(),
        }
    }

    /// The launcher for the backend `banger_host::probe::choose_backend`
    /// picked (Firecracker without jailer), or why none can run.
    pub fn from_choice(
        choice: &banger_host::probe::BackendChoice,
    ) -> Result<Vmm, banger_host::probe::BackendUnavailable> {
        let (backend, binary) = choice.require()?;
        let config = match backend {
            Backend::Firecracker => BackendConfig::Firecracker(FirecrackerConfig {
                binary: binary.to_owned(),
                jailer: None,
            }),
            Backend::Qemu { accel } => BackendConfig::Qemu(QemuConfig {
                binary: binary.to_owned(),
                accel,
            }),
        };
        Ok(Vmm::new(config, choice.reason.clone()))
    }

    /// The backend VMs get (with the QEMU accelerator).
    pub fn backend(&self) -> Backend {
        match &self.config {
            BackendConfig::Firecracker(_) => Backend::Firecracker,
            BackendConfig::Qemu(q) => Backend::Qemu { accel: q.accel },
        }
    }

    /// Why this backend was chosen.
    pub fn reason(&self) -> &str {
        &self.reason
    }

    /// The backend configuration.
    pub fn config(&self) -> &BackendConfig {
        &self.config
    }

    /// Validate `spec`, start its VMM and boot it (unless
    /// `opts.start_paused`). On success the handle is also written to
    /// `run_dir/vmm.json`; on any failure the half-started process is killed.
    /// Refuses while a live VMM's handle is in `run_dir`.
    pub async fn launch(&self, spec: &VmSpec, opts: &LaunchOptions) -> Result<VmmHandle, VmmError> {
        spec.validate()?;
        refuse_if_running(spec)?;
        match &self.config {
            BackendConfig::Firecracker(cfg) => {
                firecracker::launch(cfg, &self.reason, spec, opts).await
            }
            BackendConfig::Qemu(cfg) => qemu::launch(cfg, &self.reason, spec, opts, None).await,
        }
    }

    /// Start a VMM for `spec` from the snapshot file `snapshot` (written by
    /// [`VmmHandle::save_snapshot`] on the same backend, VMM version, vCPU
    /// count and memory size: the caller keys snapshots by those) and run it
    /// (unless `opts.start_paused`). The guest continues where it was saved,
    /// with `spec`'s tap, disks and sockets. On any failure (a corrupt or
    /// truncated file included) the half-started VMM is killed and the error
    /// says why; the caller can then boot cold.
    pub async fn restore(
        &self,
        spec: &VmSpec,
        snapshot: &Path,
        opts: &LaunchOptions,
    ) -> Result<VmmHandle, VmmError> {
        spec.validate()?;
        refuse_if_running(spec)?;
        match &self.config {
            BackendConfig::Firecracker(_) => Err(VmmError::SnapshotUnsupported {
                backend: Backend::Firecracker,
            }),
            BackendConfig::Qemu(cfg) => {
                qemu::launch(cfg, &self.reason, spec, opts, Some(snapshot)).await
            }
        }
    }
}

/// Launching over a live VM would unlink its control socket.
fn refuse_if_running(spec: &VmSpec) -> Result<(), VmmError> {
    if let Ok(previous) = VmmHandle::load(&spec.run_dir) {
        if previous.is_alive() {
            return Err(VmmError::AlreadyRunning {
                id: previous.id,
                pid: previous.pid,
                run_dir: spec.run_dir.clone(),
            });
        }
    }
    Ok(())
}

/// What [`VmmHandle::save_snapshot`] wrote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedSnapshot {
    /// The snapshot file.
    pub path: PathBuf,
    /// Its apparent size in bytes (sparse: RAM size plus device state).
    pub apparent_bytes: u64,
    /// Bytes it occupies on disk.
    pub disk_bytes: u64,
    /// How long the VMM took to write it, in milliseconds.
    pub save_ms: u64,
}

/// Where a VM is in its life, as its VMM reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum VmState {
    /// Configured but not booted (Firecracker `Not started`, QEMU `prelaunch`).
    NotStarted,
    /// vCPUs running.
    Running,
    /// vCPUs stopped (paused, or another non-running QEMU state).
    Paused,
    /// The guest powered off but the VMM process is still there.
    Shutdown,
    /// The VMM reports the guest failed (QEMU `internal-error`, `guest-panicked`, `io-error`).
    Crashed,
    /// The VMM process is gone.
    Exited,
}

/// A VM's state plus the VMM's own word for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmStatus {
    /// Backend-neutral state.
    pub state: VmState,
    /// What the VMM said (`Running`, `prelaunch`, ...), or `exited`.
    pub detail: String,
}

/// How [`VmmHandle::shutdown`] ended the VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ShutdownOutcome {
    /// The process was already gone.
    AlreadyExited,
    /// The guest shut down by itself after Ctrl+Alt+Del / ACPI power button.
    Graceful,
    /// The VMM was told to quit (QEMU `quit`) after the grace period.
    Terminated,
    /// The VMM was SIGKILLed.
    Killed,
}

/// A running (or once running) VMM: everything needed to control it, also
/// after a daemon restart (it is serialized to `run_dir/vmm.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmmHandle {
    /// The spec's id.
    pub id: String,
    /// Backend and accelerator.
    pub backend: Backend,
    /// Why this backend/accelerator was used (print it once to the user).
    pub backend_reason: String,
    /// VMM process id.
    pub pid: u32,
    /// Field 22 of `/proc/PID/stat` at launch; identity together with `pid`.
    pub start_time: u64,
    /// Firecracker API socket or QEMU QMP socket.
    pub control_socket: PathBuf,
    /// How to reach the guest agent, when the spec had a channel.
    pub agent: Option<AgentEndpoint>,
    /// Serial console log (appended).
    pub serial_log: PathBuf,
    /// The VMM's own log (Firecracker logger / QEMU startup stderr).
    pub vmm_log: PathBuf,
    /// The per-VM run directory.
    pub run_dir: PathBuf,
    /// QEMU's pidfile.
    pub pidfile: Option<PathBuf>,
    /// The jailer's directory, removed by [`VmmHandle::cleanup`].
    pub jail_dir: Option<PathBuf>,
}

/// Time a VMM gets to exit after `quit` or SIGKILL.
const FORCED_EXIT_WAIT: Duration = Duration::from_secs(10);

impl VmmHandle {
    fn handle_path(run_dir: &Path) -> PathBuf {
        run_dir.join(HANDLE_FILE)
    }

    /// Write this handle to `run_dir/vmm.json` (atomically).
    pub fn save(&self) -> Result<(), VmmError> {
        let path = Self::handle_path(&self.run_dir);
        let text = serde_json::to_vec_pretty(self).map_err(|source| VmmError::BadHandle {
            path: path.clone(),
            source,
        })?;
        // 0644 as the plain write this replaced made it (umask 022).
        banger_fs::write_atomic(
            &path,
            &mut text.as_slice(),
            banger_fs::WriteOptions::mode(0o644),
        )
        .map_err(|e| {
            let (path, source) = e.into_parts();
            VmmError::Io {
                op: FileOp::Write,
                path,
                source,
            }
        })
    }

    /// Read the handle a launch wrote into `run_dir` (re-adoption after a
    /// daemon restart; check [`VmmHandle::is_alive`] next).
    pub fn load(run_dir: &Path) -> Result<VmmHandle, VmmError> {
        let path = Self::handle_path(run_dir);
        let text = std::fs::read(&path).map_err(|source| VmmError::Io {
            op: FileOp::Read,
            path: path.clone(),
            source,
        })?;
        serde_json::from_slice(&text).map_err(|source| VmmError::BadHandle { path, source })
    }

    /// Whether the VMM process is still the one launched (pid + start time).
    pub fn is_alive(&self) -> bool {
        is_same_process(self.pid, self.start_time)
    }

    /// Ask the VMM for the VM's state; [`VmState::Exited`] when the process is gone.
    pub async fn status(&self) -> Result<VmStatus, VmmError> {
        if !self.is_alive() {
            return Ok(exited());
        }
        let result = match self.backend {
            Backend::Firecracker => firecracker::ApiClient::new(&self.control_socket)
                .instance_info()
                .await
                .map(|info| VmStatus {
                    state: firecracker::map_state(&info.state),
                    detail: info.state,
                })
                .map_err(VmmError::from),
            Backend::Qemu { .. } => match qemu::QmpClient::connect(&self.control_socket).await {
                Ok(mut qmp) => qmp
                    .query_status()
                    .await
                    .map(|s| VmStatus {
                        state: qemu::map_status(&s.status),
                        detail: s.status,
                    })
                    .map_err(VmmError::from),
                Err(e) => Err(e.into()),
            },
        };
        // The process may have exited while we asked.
        match result {
            Err(_) if !self.is_alive() => Ok(exited()),
            other => other,
        }
    }

    /// Boot a VM launched with [`LaunchOptions::start_paused`]
    /// (Firecracker `InstanceStart`, QEMU `cont`).
    pub async fn start(&self) -> Result<(), VmmError> {
        match self.backend {
            Backend::Firecracker => firecracker::ApiClient::new(&self.control_socket)
                .action(firecracker::ActionType::InstanceStart)
                .await
                .map_err(Into::into),
            Backend::Qemu { .. } => {
                let mut qmp = qemu::QmpClient::connect(&self.control_socket).await?;
                qmp.cont().await.map_err(Into::into)
            }
        }
    }

    /// Wait at most `timeout` for the VMM to exit; true when it has.
    pub async fn wait_exit(&self, timeout: Duration) -> Result<bool, VmmError> {
        Ok(process::wait_exit(self.pid, self.start_time, timeout).await?)
    }

    /// Pause the VM, write its memory and device state to `path` (which must
    /// not exist: write to a temporary name and rename it into place after),
    /// then end the VMM and clean up its run-dir files. The disks are not
    /// part of the file: copy them while the VMM is gone, before anything
    /// else writes to them. On failure the VMM is ended too, and the partial
    /// file is removed.
    pub async fn save_snapshot(&self, path: &Path) -> Result<SavedSnapshot, VmmError> {
        let result = match self.backend {
            Backend::Firecracker => Err(VmmError::SnapshotUnsupported {
                backend: Backend::Firecracker,
            }),
            Backend::Qemu { .. } => {
                let started = std::time::Instant::now();
                async {
                    let mut qmp = qemu::QmpClient::connect(&self.control_socket).await?;
                    qemu::save_to_file(&mut qmp, path).await?;
                    let save_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
                    qmp.quit().await?;
                    Ok::<u64, VmmError>(save_ms)
                }
                .await
            }
        };
        // Whatever happened, this VMM does not run on: a VM resumed after a
        // half-made snapshot would write to disks the snapshot may share.
        if !self.wait_exit(FORCED_EXIT_WAIT).await? {
            self.kill().await?;
        }
        self.cleanup()?;
        let save_ms = match result {
            Ok(ms) => ms,
            Err(e) => {
                launch::remove_file_if_exists(path)?;
                return Err(e);
            }
        };
        let meta = std::fs::metadata(path).map_err(|source| VmmError::Io {
            op: FileOp::Inspect,
            path: path.to_owned(),
            source,
        })?;
        use std::os::unix::fs::MetadataExt;
        Ok(SavedSnapshot {
            path: path.to_owned(),
            apparent_bytes: meta.len(),
            disk_bytes: meta.blocks() * 512,
            save_ms,
        })
    }

    /// SIGKILL the VMM (if it is still this process) and wait for it to go.
    pub async fn kill(&self) -> Result<(), VmmError> {
        if process::kill_and_wait(self.pid, self.start_time, FORCED_EXIT_WAIT).await? {
            Ok(())
        } else {
            Err(VmmError::Unkillable {
                id: self.id.clone(),
                pid: self.pid,
            })
        }
    }

    /// Stop the VM: ask the guest to shut down (Firecracker `SendCtrlAltDel`,
    /// QEMU `system_powerdown`) and wait up to `graceful`; then QEMU `quit`;
    /// then SIGKILL. Removes the run-dir files afterwards ([`VmmHandle::cleanup`]).
    pub async fn shutdown(&self, graceful: Duration) -> Result<ShutdownOutcome, VmmError> {
        let Some(pidfd) = process::Pidfd::open_verified(self.pid, self.start_time)? else {
            self.cleanup()?;
            return Ok(ShutdownOutcome::AlreadyExited);
        };
        let asked = match self.backend {
            Backend::Firecracker => firecracker::ApiClient::new(&self.control_socket)
                .action(firecracker::ActionType::SendCtrlAltDel)
                .await
                .map_err(VmmError::from),
            Backend::Qemu { .. } => match qemu::QmpClient::connect(&self.control_socket).await {
                Ok(mut qmp) => qmp.system_powerdown().await.map_err(VmmError::from),
                Err(e) => Err(e.into()),
            },
        };
        let mut outcome = None;
        match asked {
            Ok(()) => {
                if pidfd.wait_exit(graceful).await? {
                    outcome = Some(ShutdownOutcome::Graceful);
                } else {
                    tracing::info!(id = %self.id, "guest did not shut down within {graceful:?}");
                }
            }
            // A guest that never booted cannot react; go straight on.
            Err(e) => tracing::info!(id = %self.id, "graceful shutdown request failed: {e}"),
        }
        if outcome.is_none() && matches!(self.backend, Backend::Qemu { .. }) {
            if let Ok(mut qmp) = qemu::QmpClient::connect(&self.control_socket).await {
                if qmp.quit().await.is_ok() && pidfd.wait_exit(FORCED_EXIT_WAIT).await? {
                    outcome = Some(ShutdownOutcome::Terminated);
                }
            }
        }
        if outcome.is_none() {
            pidfd.signal(libc::SIGKILL)?;
            if !pidfd.wait_exit(FORCED_EXIT_WAIT).await? {
                return Err(VmmError::Unkillable {
                    id: self.id.clone(),
                    pid: self.pid,
                });
            }
            outcome = Some(ShutdownOutcome::Killed);
        }
        self.cleanup()?;
        Ok(outcome.unwrap_or(ShutdownOutcome::Killed))
    }

    /// Remove what the VMM left in the run directory (control and agent
    /// sockets, pidfile, padded initrd copy, handle file, jail directory). Logs are kept. Refuses
    /// while the process is alive.
    pub fn cleanup(&self) -> Result<(), VmmError> {
        if self.is_alive() {
            return Err(VmmError::StillRunning {
                id: self.id.clone(),
                pid: self.pid,
            });
        }
        launch::remove_file_if_exists(&self.control_socket)?;
        if let Some(agent) = &self.agent {
            launch::remove_file_if_exists(agent.socket())?;
        }
        if let Some(pidfile) = &self.pidfile {
            launch::remove_file_if_exists(pidfile)?;
        }
        if matches!(self.backend, Backend::Qemu { .. }) {
            launch::remove_file_if_exists(&self.run_dir.join(qemu::PADDED_INITRD))?;
        }
        if let Some(jail) = &self.jail_dir {
            match std::fs::remove_dir_all(jail) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(VmmError::Io {
                        op: FileOp::RemoveJailDir,
                        path: jail.clone(),
                        source: e,
                    })
                }
                _ => {}
            }
        }
        launch::remove_file_if_exists(&Self::handle_path(&self.run_dir))
    }
}

fn exited() -> VmStatus {
    VmStatus {
        state: VmState::Exited,
        detail: "exited".into(),
    }
}
