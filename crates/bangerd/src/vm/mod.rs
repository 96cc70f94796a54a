//! VM orchestration: create, start, stop, restart, delete, list, show, logs
//! and ports, plus recovery after a daemon restart and the watchers that
//! notice a VMM dying on its own or a VM idle for too long.
//!
//! - [`request`]: a create body resolved and checked before anything exists.
//! - [`ops`]: the lifecycle operations and the resources they hold.
//! - [`recover`]: re-adoption at start-up, exit watchers, `auto_stop_stale_after`.
//! - [`info`]: what `list`/`show`/`ports` report.
//! - [`api`]: the `/v1/vms` routes.
//! - [`paths`]: where a VM's files live.
//! - [`console`]: the serial log's cap and rotation, reading its tail.
//! - [`tap_pool`]: taps made ahead of time (`tap_pool_size`).
//!
//! Resources a VM holds only while it runs: its VMM process, its tap, its IP
//! lease and its run dir. Resources it holds until deleted: its record, its
//! directory (root and work disks, host key, serial log) and, once it first
//! started, its line in banger's `known_hosts`. Every operation on one VM runs
//! under that VM's lock, so a watcher never races a stop.

pub mod api;
pub mod console;
pub mod info;
pub mod ops;
pub mod paths;
pub mod recover;
pub mod request;
pub mod tap_pool;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use banger_config::Config;
use banger_vm::netplan::NetPlan;
use banger_vmm::Vmm;
use banger_wire::api::{ApiError, ErrorCode};
use banger_wire::vmm::CloneStrategy;
use serde::{Deserialize, Serialize};

use crate::helper::HelperCallError;

/// Environment variable naming the guest agent binary put on config drives.
pub const AGENT_BIN_ENV: &str = "BANGER_AGENT_BIN";

/// Where a system install puts the guest agent.
pub const SYSTEM_AGENT_PATH: &str = "/usr/local/lib/banger/banger-vsock-agent";

/// Errors of VM operations, each naming the VM or input involved.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error(transparent)]
    InvalidName(banger_vm::identity::IdentityError),
    #[error("{message}")]
    InvalidRequest { message: String },
    #[error("a VM named {name:?} already exists")]
    NameTaken { name: String },
    #[error("no VM named {name:?}")]
    NotFound { name: String },
    #[error("image {name} is not installed: {hint}")]
    ImageMissing { name: String, hint: String },
    #[error("kernel {kernel} (needed by image {image}) is not installed: run `banger kernel pull {kernel}` or `banger kernel build {kernel}`")]
    KernelMissing { image: String, kernel: String },
    #[error("installed {kind} {name} is unusable: {reason}")]
    BadArtifact {
        kind: &'static str,
        name: String,
        reason: String,
    },
    #[error("VM {name} is {state}; {hint}")]
    WrongState {
        name: String,
        state: String,
        hint: String,
    },
    #[error("VMs cannot start on this host: {reason}")]
    NoBackend { reason: String },
    #[error("the guest agent binary was not found (tried {tried}); set {AGENT_BIN_ENV} or install banger-vsock-agent next to bangerd")]
    NoAgentBinary { tried: String },
    #[error(transparent)]
    Helper(#[from] HelperCallError),
    #[error("the root helper sent an unexpected answer to {op}: {answer}")]
    HelperAnswer { op: &'static str, answer: String },
    #[error(transparent)]
    State(#[from] banger_state::StateError),
    #[error(transparent)]
    Disk(#[from] banger_vm::disk::DiskError),
    #[error(transparent)]
    Identity(#[from] banger_vm::identity::IdentityError),
    #[error(transparent)]
    NetPlan(#[from] banger_vm::netplan::NetPlanError),
    #[error(transparent)]
    FileSync(#[from] banger_vm::filesync::FileSyncError),
    #[error(transparent)]
    SshKey(#[from] banger_config::SshKeyError),
    #[error(transparent)]
    Store(#[from] banger_image::store::StoreError),
    #[error(transparent)]
    Image(Box<crate::image::ImageError>),
    #[error("VM {name}: {source}")]
    Vmm {
        name: String,
        source: Box<banger_vmm::VmmError>,
    },
    #[error("VM {name} did not become reachable over SSH: {source}; last lines of its serial console:\n{console}")]
    SshNotReady {
        name: String,
        source: Box<banger_vm::ssh::SshError>,
        console: String,
    },
    #[error("VM {name}: the VMM exited while the guest was booting; last lines of its serial console:\n{console}")]
    DiedDuringBoot { name: String, console: String },
    #[error("VM {name}: guest agent: {source}")]
    Agent {
        name: String,
        source: banger_vsock_agent::client::AgentClientError,
    },
    #[error("`{command}` failed in VM {name} (exit status {status:?}): {stderr}")]
    GuestCommand {
        name: String,
        command: &'static str,
        status: Option<u32>,
        stderr: String,
    },
    #[error("VM {name} is not running, so its agent cannot be asked")]
    NotRunning { name: String },
    #[error("cannot {op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
}

impl VmError {
    /// The API error code this failure is served with.
    pub fn code(&self) -> ErrorCode {
        match self {
            VmError::InvalidName(_) | VmError::InvalidRequest { .. } => ErrorCode::BadRequest,
            VmError::NameTaken { .. } | VmError::WrongState { .. } | VmError::NotRunning { .. } => {
                ErrorCode::Conflict
            }
            VmError::NotFound { .. }
            | VmError::ImageMissing { .. }
            | VmError::KernelMissing { .. } => ErrorCode::NotFound,
            VmError::NoBackend { .. } | VmError::NoAgentBinary { .. } => ErrorCode::Unsupported,
            VmError::Helper(e) => helper_code(e),
            VmError::Image(e) => e.code(),
            VmError::HelperAnswer { .. } => ErrorCode::HelperFailed,
            VmError::State(banger_state::StateError::AlreadyExists { .. }) => ErrorCode::Conflict,
            VmError::State(banger_state::StateError::WrongState { .. }) => ErrorCode::Conflict,
            VmError::State(_) => ErrorCode::State,
            _ => ErrorCode::Internal,
        }
    }
}

/// Helper errors keep their own codes (`helper_unavailable`, `helper_failed`).
fn helper_code(e: &HelperCallError) -> ErrorCode {
    match e {
        HelperCallError::Unavailable { .. } | HelperCallError::Connect { .. } => {
            ErrorCode::HelperUnavailable
        }
        HelperCallError::Transport { .. } | HelperCallError::Refused { .. } => {
            ErrorCode::HelperFailed
        }
    }
}

impl From<VmError> for ApiError {
    fn from(e: VmError) -> ApiError {
        ApiError {
            code: e.code(),
            message: e.to_string(),
        }
    }
}

/// What banger keeps in a VM record's `spec_json`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmExtra {
    /// The size asked for, with sources (for `show` and the `spec:` line).
    #[serde(default)]
    pub size: Option<banger_wire::vm::VmSizeSpec>,
    /// The address the VM had last; preferred again at the next start.
    #[serde(default)]
    pub last_ip: Option<std::net::Ipv4Addr>,
    /// The last start/stop failure or unexpected exit.
    #[serde(default)]
    pub last_error: Option<String>,
    /// `firecracker`, `qemu-kvm` or `qemu-tcg` as last launched.
    #[serde(default)]
    pub backend: Option<String>,
    /// Why that backend was used.
    #[serde(default)]
    pub backend_reason: Option<String>,
    /// A create or delete under way: recorded before its first step and
    /// cleared by its last, so a daemon killed in between finds it at the
    /// next start and finishes it (see [`recover`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending: Option<Pending>,
}

/// An operation whose interruption recovery must finish.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Pending {
    /// `vm create` has not finished: an interrupted one is rolled back.
    Create,
    /// `vm delete` (or a failed create's rollback) began: it is finished.
    Delete,
}

impl VmExtra {
    /// Read a record's `spec_json` (unknown or missing fields are defaults).
    pub fn from_json(v: &serde_json::Value) -> VmExtra {
        serde_json::from_value(v.clone()).unwrap_or_default()
    }

    /// As stored in `spec_json`.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or(serde_json::Value::Null)
    }
}

/// The daemon's VM state that is not in the database: settings from the
/// config, the VMM launcher, and one lock per VM name.
#[derive(Debug)]
pub struct VmManager {
    /// The config file's settings, re-read when the file changes.
    config: crate::live_config::LiveConfig,
    /// Guest addresses, gateway and DNS.
    pub netplan: Result<NetPlan, String>,
    /// The launcher for the chosen backend, or why none can run.
    pub vmm: Result<Vmm, String>,
    /// The clone strategy probed in the VMs directory (probed once, lazily).
    clone_strategy: Mutex<Option<CloneStrategy>>,
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// The agent's last answers per VM id, refreshed every `stats_poll_interval`.
    samples: Mutex<HashMap<String, AgentSample>>,
    /// One agent connection at a time per VM id.
    agent_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Taps ready for the next starts.
    pub taps: tap_pool::TapPool,
}

/// One poll of a VM's agent.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentSample {
    /// When it was taken.
    pub at: banger_state::Timestamp,
    pub health: banger_wire::guest::AgentHealth,
    pub stats: banger_wire::guest::GuestStats,
}

impl VmManager {
    /// Settings from `live`; resolves the backend and the guest network plan
    /// from the start-up config now (the backend is printed once in the log
    /// and in `daemon status`).
    pub fn new(live: crate::live_config::LiveConfig) -> VmManager {
        let config = live.started();
        let choice = banger_host::probe::choose_backend(
            config.vmm.value,
            config.firecracker_bin.value.as_deref(),
            config.qemu_bin.value.as_deref(),
        );
        let vmm = Vmm::from_choice(&choice).map_err(|e| e.to_string());
        match &vmm {
            Ok(v) => {
                tracing::info!(backend = %v.backend(), "VMs run on {}: {}", v.backend(), v.reason())
            }
            Err(e) => tracing::warn!("VMs cannot start: {e}"),
        }
        VmManager {
            netplan: NetPlan::from_config(config).map_err(|e| e.to_string()),
            vmm,
            config: live,
            clone_strategy: Mutex::new(None),
            locks: Mutex::new(HashMap::new()),
            samples: Mutex::new(HashMap::new()),
            agent_locks: Mutex::new(HashMap::new()),
            taps: tap_pool::TapPool::default(),
        }
    }

    /// The config in force (vm_defaults, SSH key, file_sync, timers).
    pub fn config(&self) -> Arc<Config> {
        self.config.current()
    }

    /// The config file watcher behind [`VmManager::config`].
    pub fn live_config(&self) -> &crate::live_config::LiveConfig {
        &self.config
    }

    /// The lock serializing every operation on VM `name`.
    pub fn lock_for(&self, name: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.locks.lock().unwrap_or_else(|e| e.into_inner());
        locks.entry(name.to_owned()).or_default().clone()
    }

    /// The lock giving one agent connection at a time to VM `id`.
    pub fn agent_lock_for(&self, id: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.agent_locks.lock().unwrap_or_else(|e| e.into_inner());
        locks.entry(id.to_owned()).or_default().clone()
    }

    /// Forget the lock of a deleted VM (when nobody else holds it).
    pub fn forget_lock(&self, name: &str) {
        let mut locks = self.locks.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(l) = locks.get(name) {
            // Ours plus the map's: nobody else waits on it.
            if Arc::strong_count(l) <= 2 {
                locks.remove(name);
            }
        }
    }

    /// The last agent sample of VM `id` if it is at most two poll intervals old.
    pub fn sample(&self, id: &str) -> Option<AgentSample> {
        let samples = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        let limit = self.config().stats_poll_interval.value * 2;
        samples.get(id).filter(|s| s.at.elapsed() <= limit).cloned()
    }

    /// Record (or with `None`, forget) VM `id`'s agent sample.
    pub fn set_sample(&self, id: &str, sample: Option<AgentSample>) {
        let mut samples = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        match sample {
            Some(s) => samples.insert(id.to_owned(), s),
            None => samples.remove(id),
        };
    }

    /// Keep only the samples (and idle agent locks) of `ids`.
    pub fn retain_samples(&self, ids: &[&str]) {
        let mut samples = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        samples.retain(|id, _| ids.contains(&id.as_str()));
        let mut locks = self.agent_locks.lock().unwrap_or_else(|e| e.into_inner());
        locks.retain(|id, l| ids.contains(&id.as_str()) || Arc::strong_count(l) > 1);
    }

    /// The root-disk clone strategy for `dir`, probed on first use.
    pub fn clone_strategy(&self, dir: &std::path::Path) -> CloneStrategy {
        let mut cached = self
            .clone_strategy
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(s) = *cached {
            return s;
        }
        let env = banger_host::probe::ProbeEnv::host();
        let strategy = match banger_host::probe::probe_clone_strategy(
            dir,
            &env.dm_control,
            &env.sys_root,
            &env.modules_dir,
        ) {
            Ok(p) => p.strategy,
            Err(e) => {
                tracing::warn!(
                    "cannot probe the clone strategy in {}: {e}; using sparse copies",
                    dir.display()
                );
                CloneStrategy::SparseCopy
            }
        };
        tracing::info!(%strategy, dir = %dir.display(), "root disks are cloned by {strategy}");
        *cached = Some(strategy);
        strategy
    }
}

/// The guest agent binary to put on config drives: `$BANGER_AGENT_BIN`, else
/// `banger-vsock-agent` next to the daemon's executable, else in the system
/// install's `lib_dir` (`/usr/local/lib/banger`, or the Nix store path the
/// install metadata names).
pub fn agent_binary(layout: &banger_host::paths::Layout) -> Result<PathBuf, VmError> {
    let mut tried = Vec::new();
    if let Some(p) = std::env::var_os(AGENT_BIN_ENV).filter(|v| !v.is_empty()) {
        let p = PathBuf::from(p);
        if p.is_file() {
            return Ok(p);
        }
        tried.push(format!("{AGENT_BIN_ENV}={}", p.display()));
    }
    let mut candidates: Vec<PathBuf> = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|d| d.join("banger-vsock-agent")))
        .into_iter()
        .collect();
    if let Some(install) = &layout.install {
        candidates.push(PathBuf::from(&install.lib_dir).join("banger-vsock-agent"));
    }
    candidates.push(PathBuf::from(SYSTEM_AGENT_PATH));
    for c in candidates {
        if c.is_file() {
            return Ok(c);
        }
        tried.push(c.display().to_string());
    }
    Err(VmError::NoAgentBinary {
        tried: tried.join(", "),
    })
}
