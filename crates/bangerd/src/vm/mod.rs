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
//! - [`manager`]: the VM bookkeeping the daemon context holds (locks,
//!   agent samples, the VMM launcher).
//!
//! Resources a VM holds only while it runs: its VMM process, its tap, its IP
//! lease and its run dir. Resources it holds until deleted: its record, its
//! directory (root and work disks, host key, serial log) and, once it first
//! started, its line in banger's `known_hosts`. Every operation on one VM runs
//! under that VM's lock, so a watcher never races a stop.

pub mod api;
pub mod console;
pub mod info;
pub mod manager;
pub mod ops;
pub mod paths;
pub mod recover;
pub mod request;
pub mod tap_pool;

use std::path::PathBuf;

use banger_wire::api::{ApiError, ErrorCode};
use serde::{Deserialize, Serialize};

use crate::helper::{HelperCallError, HelperOpError};

/// Environment variable naming the guest agent binary put on config drives.
pub const AGENT_BIN_ENV: &str = "BANGER_AGENT_BIN";

/// The user banger logs in as over SSH.
pub const SSH_USER: &str = "root";

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
    #[error(
        "VM {name} is {state}; stop it first (`banger vm stop {name}`) or delete it with --force"
    )]
    DeleteWhileActive {
        name: String,
        state: banger_state::VmState,
    },
    #[error("VMs cannot start on this host: {reason}")]
    NoBackend { reason: String },
    #[error("the guest agent binary was not found (tried {tried}); set {AGENT_BIN_ENV} or install banger-vsock-agent next to bangerd")]
    NoAgentBinary { tried: String },
    #[error(transparent)]
    Helper(#[from] HelperOpError),
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
    Image(#[from] crate::image::ImageError),
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
        source: banger_agent_client::AgentClientError,
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
    /// A blocking step (disk, file or key work) panicked or was cancelled.
    #[error("a disk or file step of the VM operation did not finish: {source}")]
    BlockingTask { source: tokio::task::JoinError },
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
            VmError::NameTaken { .. }
            | VmError::DeleteWhileActive { .. }
            | VmError::NotRunning { .. } => ErrorCode::Conflict,
            VmError::NotFound { .. }
            | VmError::ImageMissing { .. }
            | VmError::KernelMissing { .. } => ErrorCode::NotFound,
            VmError::NoBackend { .. } | VmError::NoAgentBinary { .. } => ErrorCode::Unsupported,
            VmError::Helper(e) => e.code(),
            VmError::Image(e) => e.code(),
            VmError::State(e) => crate::state_code(e),
            // Request names are checked up front (`InvalidName`); these come
            // from host-side steps (host keys, known_hosts, the configured
            // network, file_sync sources), whose messages name the file.
            VmError::Identity(_) | VmError::NetPlan(_) | VmError::FileSync(_) => {
                ErrorCode::Internal
            }
            // The guest failed to come up or answer: nothing the request
            // could change (the message carries the console's last lines).
            VmError::SshNotReady { .. }
            | VmError::DiedDuringBoot { .. }
            | VmError::Agent { .. }
            | VmError::GuestCommand { .. }
            | VmError::Vmm { .. } => ErrorCode::Internal,
            // A host-side step panicked or was cancelled: a bug here.
            VmError::BlockingTask { .. } => ErrorCode::Internal,
            VmError::Disk(_) | VmError::SshKey(_) | VmError::Store(_) | VmError::Io { .. } => {
                ErrorCode::Internal
            }
        }
    }
}

impl From<HelperCallError> for VmError {
    fn from(e: HelperCallError) -> VmError {
        VmError::Helper(HelperOpError::Call(e))
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

#[cfg(test)]
mod code_tests {
    use super::*;
    use banger_wire::helper::{HelperError, HelperErrorCode};

    fn refused(code: HelperErrorCode) -> VmError {
        VmError::from(HelperCallError::Refused {
            op: "create_tap",
            source: HelperError {
                code,
                message: "refused".into(),
            },
        })
    }

    /// Pins the status of representative failures: what the user named is
    /// missing (404), what stands in the way (409), what they asked is
    /// refused (400), what this host cannot do (501), what broke here (500).
    #[test]
    fn vm_errors_map_to_their_api_codes() {
        let cases = [
            (
                VmError::NotFound { name: "a".into() },
                ErrorCode::NotFound,
                404,
            ),
            (
                VmError::KernelMissing {
                    image: "i".into(),
                    kernel: "k".into(),
                },
                ErrorCode::NotFound,
                404,
            ),
            (
                VmError::NameTaken { name: "a".into() },
                ErrorCode::Conflict,
                409,
            ),
            (
                VmError::DeleteWhileActive {
                    name: "a".into(),
                    state: banger_state::VmState::Running,
                },
                ErrorCode::Conflict,
                409,
            ),
            (
                VmError::State(banger_state::StateError::LeasesExhausted {
                    path: "/db".into(),
                    vm: "a".into(),
                    candidates: 253,
                }),
                ErrorCode::Conflict,
                409,
            ),
            (
                VmError::State(banger_state::StateError::Corrupt {
                    path: "/db".into(),
                    detail: "x".into(),
                }),
                ErrorCode::State,
                500,
            ),
            (
                VmError::InvalidRequest {
                    message: "image name must not be empty".into(),
                },
                ErrorCode::BadRequest,
                400,
            ),
            (
                VmError::NoBackend {
                    reason: "no qemu".into(),
                },
                ErrorCode::Unsupported,
                501,
            ),
            (
                VmError::from(HelperCallError::Unavailable {
                    reason: "not root".into(),
                }),
                ErrorCode::HelperUnavailable,
                503,
            ),
            (refused(HelperErrorCode::Conflict), ErrorCode::Conflict, 409),
            (refused(HelperErrorCode::Io), ErrorCode::HelperFailed, 502),
            (
                VmError::Io {
                    op: "read",
                    path: "/x".into(),
                    source: std::io::Error::from(std::io::ErrorKind::PermissionDenied),
                },
                ErrorCode::Internal,
                500,
            ),
        ];
        for (err, code, status) in cases {
            assert_eq!(err.code(), code, "{err}");
            assert_eq!(ApiError::from(err).code.http_status(), status);
        }
    }

    #[test]
    fn deleting_an_active_vm_names_it_and_the_fix() {
        let err = VmError::DeleteWhileActive {
            name: "web".into(),
            state: banger_state::VmState::Running,
        };
        assert_eq!(
            err.to_string(),
            "VM web is running; stop it first (`banger vm stop web`) or delete it with --force"
        );
    }
}
