//! The Firecracker backend: one `firecracker --api-sock PATH --id ID`
//! process per VM (optionally under the jailer), configured over its REST
//! API ([`api`]) and started with `InstanceStart`.
//!
//! The guest's serial console is Firecracker's stdout, appended to the
//! spec's `serial_log` (stderr goes there too, so an early failure is visible
//! in `vm logs`); Firecracker's own log goes to `firecracker.log` in the run
//! directory through `PUT /logger`.

pub mod api;
pub mod jailer;

use std::path::{Path, PathBuf};
use std::time::Duration;

use banger_host::probe::Backend;

use crate::agent::{AgentEndpoint, AGENT_VSOCK_PORT};
use crate::launch::{self, LaunchGuard, SocketWait};
use crate::process::{detached_command, process_start_time};
use crate::spec::VmSpec;
use crate::{EarlyExit, FileOp, LaunchOptions, StartupStep, VmState, VmmError, VmmHandle};

pub use api::{
    ActionType, ApiCall, ApiClient, ApiError, FirecrackerPaths, InstanceInfo, SnapshotPaths,
};
pub use jailer::JailerConfig;

/// API socket name inside the run directory (unjailed).
pub const API_SOCKET: &str = "firecracker.sock";
/// Firecracker's own log inside the run directory (unjailed).
pub const VMM_LOG: &str = "firecracker.log";

/// How to run Firecracker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FirecrackerConfig {
    /// The `firecracker` binary.
    pub binary: PathBuf,
    /// Run it through the jailer (requires root).
    pub jailer: Option<JailerConfig>,
}

/// Everything that differs between a direct and a jailed Firecracker.
#[derive(Debug)]
pub(crate) struct Prepared {
    pub program: PathBuf,
    pub args: Vec<String>,
    /// API socket, host path.
    pub api_socket: PathBuf,
    /// Firecracker's log, host path.
    pub vmm_log: PathBuf,
    /// Paths as Firecracker sees them.
    pub paths: FirecrackerPaths,
    /// vsock Unix socket, host path.
    pub vsock_host: Option<PathBuf>,
    /// The jail directory to remove after exit.
    pub jail_dir: Option<PathBuf>,
}

fn prepare_direct(cfg: &FirecrackerConfig, spec: &VmSpec) -> Prepared {
    let api_socket = spec.run_dir.join(API_SOCKET);
    let vmm_log = spec.run_dir.join(VMM_LOG);
    Prepared {
        program: cfg.binary.clone(),
        args: vec![
            "--api-sock".into(),
            api_socket.to_string_lossy().into_owned(),
            "--id".into(),
            spec.id.clone(),
        ],
        paths: FirecrackerPaths::direct(spec, &vmm_log),
        api_socket,
        vmm_log,
        vsock_host: spec.agent.as_ref().map(|a| a.host_socket.clone()),
        jail_dir: None,
    }
}

/// Map `InstanceInfo.state` to the backend-neutral state.
pub fn map_state(state: &str) -> VmState {
    match state {
        "Not started" => VmState::NotStarted,
        "Running" => VmState::Running,
        _ => VmState::Paused,
    }
}

/// Start Firecracker for `spec` and return its handle (see [`crate::Vmm::launch`]).
pub(crate) async fn launch(
    cfg: &FirecrackerConfig,
    reason: &str,
    spec: &VmSpec,
    opts: &LaunchOptions,
) -> Result<VmmHandle, VmmError> {
    let started = spawn(cfg, spec, opts).await?;
    let client = ApiClient::new(&started.prepared.api_socket);
    configure(&client, spec, &started.prepared.paths, opts.start_paused).await?;
    started.finish(reason, spec)
}

/// Where [`restore`] reads a snapshot and [`crate::VmmHandle::save_snapshot`]
/// writes one: two files in the snapshot directory.
pub fn snapshot_files(dir: &Path) -> (PathBuf, PathBuf) {
    (dir.join(SNAPSHOT_STATE), dir.join(SNAPSHOT_MEMORY))
}

/// The microVM state file of a snapshot directory.
pub const SNAPSHOT_STATE: &str = "vmstate";
/// The guest memory file of a snapshot directory.
pub const SNAPSHOT_MEMORY: &str = "memory";

/// Start Firecracker for `spec` from the snapshot in `dir` instead of
/// booting it (see [`crate::Vmm::restore`]).
pub(crate) async fn restore(
    cfg: &FirecrackerConfig,
    reason: &str,
    spec: &VmSpec,
    dir: &Path,
    opts: &LaunchOptions,
) -> Result<VmmHandle, VmmError> {
    if cfg.jailer.is_some() {
        return Err(VmmError::SnapshotUnsupported {
            id: spec.id.clone(),
            why: "Firecracker runs under the jailer, whose chroot cannot see the snapshot directory; turn the jailer off for warm start",
        });
    }
    let (state, memory) = snapshot_files(dir);
    for file in [&state, &memory] {
        std::fs::metadata(file).map_err(|source| VmmError::Io {
            op: FileOp::Inspect,
            path: file.clone(),
            source,
        })?;
    }
    let started = spawn(cfg, spec, opts).await?;
    let client = ApiClient::new(&started.prepared.api_socket).with_timeout(SNAPSHOT_TIMEOUT);
    let files = SnapshotPaths {
        state: state.to_string_lossy().into_owned(),
        memory: memory.to_string_lossy().into_owned(),
    };
    client
        .run(&api::snapshot_restore_calls(
            spec,
            &started.prepared.paths,
            &files,
            opts.start_paused,
        ))
        .await?;
    started.finish(reason, spec)
}

/// Pause the VM behind `api_socket` and write a full snapshot into `dir`
/// (see [`crate::VmmHandle::save_snapshot`]).
pub(crate) async fn save_snapshot(api_socket: &Path, dir: &Path) -> Result<(), VmmError> {
    let (state, memory) = snapshot_files(dir);
    let files = SnapshotPaths {
        state: state.to_string_lossy().into_owned(),
        memory: memory.to_string_lossy().into_owned(),
    };
    // Writing guest memory takes as long as the disk needs for it: the
    // default per-request timeout is for configuration requests.
    ApiClient::new(api_socket)
        .with_timeout(SNAPSHOT_TIMEOUT)
        .run(&api::snapshot_create_calls(&files))
        .await
        .map_err(Into::into)
}

/// How long `PUT /snapshot/create` or `/snapshot/load` may take.
pub const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(120);

/// A Firecracker process whose API socket is up, not yet configured.
struct Spawned {
    prepared: Prepared,
    child: tokio::process::Child,
    pid: u32,
    start_time: u64,
    guard: LaunchGuard,
}

/// Start the Firecracker process for `spec` and wait for its API socket.
/// Dropping the result kills the process.
async fn spawn(
    cfg: &FirecrackerConfig,
    spec: &VmSpec,
    opts: &LaunchOptions,
) -> Result<Spawned, VmmError> {
    let prepared = match &cfg.jailer {
        None => {
            let p = prepare_direct(cfg, spec);
            launch::create_truncated(&p.vmm_log)?;
            p
        }
        Some(jail) => {
            jailer::require_static(&cfg.binary)?;
            jailer::prepare(jail, &cfg.binary, spec)?
        }
    };
    launch::remove_stale_socket(&prepared.api_socket)?;
    if let Some(vsock) = &prepared.vsock_host {
        launch::remove_stale_socket(vsock)?;
    }
    let serial = launch::open_append(&spec.serial_log)?;
    let serial_err = serial.try_clone().map_err(|source| VmmError::Io {
        op: FileOp::DuplicateHandleOf,
        path: spec.serial_log.clone(),
        source,
    })?;
    tracing::debug!(program = %prepared.program.display(), args = ?prepared.args, "starting Firecracker");
    let mut cmd = detached_command(&prepared.program);
    cmd.args(&prepared.args).stdout(serial).stderr(serial_err);
    let mut child = cmd.spawn().map_err(|source| VmmError::Spawn {
        binary: prepared.program.clone(),
        source,
    })?;
    let pid = child.id().ok_or_else(|| VmmError::ExitedEarly {
        binary: prepared.program.clone(),
        status: EarlyExit::AlreadyReaped,
        output: launch::tail(&spec.serial_log, 20),
    })?;
    let start_time = process_start_time(pid)?;
    let guard = LaunchGuard::new(pid, start_time);

    let ready = launch::wait_for_socket(&prepared.api_socket, opts.api_timeout, || {
        matches!(child.try_wait(), Ok(None))
    })
    .await;
    match ready {
        SocketWait::Ready => {}
        SocketWait::ProcessExited => {
            let status = match child.try_wait() {
                Ok(Some(s)) => EarlyExit::Status(s),
                _ => EarlyExit::Unknown,
            };
            return Err(VmmError::ExitedEarly {
                binary: prepared.program.clone(),
                status,
                output: launch::tail(&spec.serial_log, 20),
            });
        }
        SocketWait::TimedOut => {
            return Err(VmmError::StartupTimeout {
                binary: prepared.program.clone(),
                waited_for: StartupStep::ApiSocket(prepared.api_socket.clone()),
                secs: opts.api_timeout.as_secs(),
            })
        }
    }
    Ok(Spawned {
        prepared,
        child,
        pid,
        start_time,
        guard,
    })
}

impl Spawned {
    /// The VM runs (or waits paused) as configured: write its handle and
    /// keep the process.
    fn finish(self, reason: &str, spec: &VmSpec) -> Result<VmmHandle, VmmError> {
        let Spawned {
            prepared,
            mut child,
            pid,
            start_time,
            mut guard,
        } = self;
        // Reap the child when it exits; after a daemon restart init does that.
        tokio::spawn(async move {
            let _ = child.wait().await;
        });
        let handle = VmmHandle {
            id: spec.id.clone(),
            backend: Backend::Firecracker,
            backend_reason: reason.to_owned(),
            pid,
            start_time,
            control_socket: prepared.api_socket,
            agent: match (&spec.agent, prepared.vsock_host) {
                (Some(a), Some(uds_path)) => Some(AgentEndpoint::Vsock {
                    uds_path,
                    guest_cid: a.guest_cid,
                    port: AGENT_VSOCK_PORT,
                }),
                _ => None,
            },
            serial_log: spec.serial_log.clone(),
            vmm_log: prepared.vmm_log,
            run_dir: spec.run_dir.clone(),
            pidfile: None,
            jail_dir: prepared.jail_dir,
        };
        handle.save()?;
        guard.disarm();
        Ok(handle)
    }
}

/// Send the whole pre-boot configuration for `spec` (see
/// [`api::configuration_calls`]) and, unless `start_paused`, `InstanceStart`.
/// This is exactly what [`crate::Vmm::launch`] sends once the API socket is up.
pub async fn configure(
    client: &ApiClient,
    spec: &VmSpec,
    paths: &FirecrackerPaths,
    start_paused: bool,
) -> Result<(), ApiError> {
    client.run(&api::configuration_calls(spec, paths)).await?;
    if !start_paused {
        client.action(ActionType::InstanceStart).await?;
    }
    Ok(())
}
