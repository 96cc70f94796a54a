//! Firecracker's REST API on its Unix socket: request bodies, the
//! configuration sequence built from a [`VmSpec`], and a small hyper client.
//!
//! Field names follow `src/firecracker/swagger/firecracker.yaml` exactly
//! (definitions `Logger`, `MachineConfiguration`, `BootSource`, `Drive`,
//! `PartialDrive`, `NetworkInterface`, `Vsock`, `InstanceActionInfo`,
//! `InstanceInfo`, `Vm`, `SnapshotCreateParams`, `SnapshotLoadParams`,
//! `MemoryBackend`, `NetworkOverride`, `VsockOverride`, `Error`). The request structs are `deny_unknown_fields` so the same shapes
//! can be parsed strictly, as Firecracker's own parse layer does.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use tokio::net::UnixStream;

use crate::spec::VmSpec;

/// How long one API request may take before it is abandoned.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// `PUT /logger` body (definition `Logger`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Logger {
    /// File (or named pipe) for Firecracker's own log.
    pub log_path: String,
    /// `Error`, `Warning`, `Info`, `Debug`, `Trace` or `Off`.
    pub level: String,
    /// Prefix each line with its level.
    pub show_level: bool,
    /// Prefix each line with the source file and line.
    pub show_log_origin: bool,
}

/// `PUT /machine-config` body (definition `MachineConfiguration`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MachineConfiguration {
    /// Number of vCPUs (1..=32).
    pub vcpu_count: u32,
    /// Guest memory in MiB.
    pub mem_size_mib: u32,
    /// Simultaneous multithreading; banger always disables it.
    pub smt: bool,
}

/// `PUT /boot-source` body (definition `BootSource`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootSource {
    /// Kernel image path as Firecracker sees it.
    pub kernel_image_path: String,
    /// Optional initrd path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initrd_path: Option<String>,
    /// Kernel command line.
    pub boot_args: String,
}

/// `PUT /drives/{drive_id}` body (definition `Drive`, virtio-block fields).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Drive {
    /// Must equal the `{drive_id}` in the URL.
    pub drive_id: String,
    /// Disk image path as Firecracker sees it.
    pub path_on_host: String,
    /// Root device: Firecracker attaches it first (`/dev/vda`) and adds `root=` to the boot args.
    pub is_root_device: bool,
    /// Open the image read-only.
    pub is_read_only: bool,
}

/// `PUT /network-interfaces/{iface_id}` body (definition `NetworkInterface`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkInterface {
    /// Must equal the `{iface_id}` in the URL.
    pub iface_id: String,
    /// Host tap device name.
    pub host_dev_name: String,
    /// Guest MAC, `aa:bb:cc:dd:ee:ff`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest_mac: Option<String>,
}

/// `PUT /vsock` body (definition `Vsock`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Vsock {
    /// Guest context id (≥ 3).
    pub guest_cid: u32,
    /// Unix socket Firecracker creates for host-initiated connections.
    pub uds_path: String,
}

/// The `action_type` values of `InstanceActionInfo`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ActionType {
    /// Boot the configured guest.
    InstanceStart,
    /// Press Ctrl+Alt+Del on the guest's i8042 keyboard (graceful stop).
    SendCtrlAltDel,
    /// Flush metrics to the metrics file.
    FlushMetrics,
}

/// `PUT /actions` body (definition `InstanceActionInfo`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceActionInfo {
    /// The action to run.
    pub action_type: ActionType,
}

/// `PATCH /drives/{drive_id}` body (definition `PartialDrive`): a new
/// backing file for a drive of a running or paused VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartialDrive {
    /// Must equal the `{drive_id}` in the URL.
    pub drive_id: String,
    /// The new disk image path as Firecracker sees it.
    pub path_on_host: String,
}

/// The `state` values of definition `Vm`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum VmRunState {
    /// Stop the vCPUs (required before `PUT /snapshot/create`).
    Paused,
    /// Run them again.
    Resumed,
}

/// `PATCH /vm` body (definition `Vm`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmStateUpdate {
    pub state: VmRunState,
}

/// The `snapshot_type` values of `SnapshotCreateParams`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SnapshotType {
    /// All of guest memory (banger's only kind: a warm snapshot stands alone).
    Full,
    /// Only pages dirtied since the last snapshot (needs dirty page tracking).
    Diff,
}

/// `PUT /snapshot/create` body (definition `SnapshotCreateParams`); the VM
/// must be paused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotCreateParams {
    /// Full or diff (optional in the API, where it defaults to full; banger
    /// always says which).
    pub snapshot_type: SnapshotType,
    /// The microVM state file to write, as Firecracker sees it.
    pub snapshot_path: String,
    /// The guest memory file to write, as Firecracker sees it.
    pub mem_file_path: String,
}

/// The `backend_type` values of `MemoryBackend`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum MemoryBackendType {
    /// Guest memory mapped from a file (private: the file is never written).
    File,
    /// Page faults served by a userfaultfd handler on a Unix socket.
    Uffd,
}

/// Definition `MemoryBackend` of `SnapshotLoadParams.mem_backend`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemoryBackend {
    pub backend_type: MemoryBackendType,
    /// The memory file (`File`) or the handler's socket (`Uffd`).
    pub backend_path: String,
}

/// Definition `NetworkOverride`: the restored VM's own tap for an interface
/// of the snapshot (Firecracker >= 1.12).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkOverride {
    pub iface_id: String,
    pub host_dev_name: String,
}

/// Definition `VsockOverride`: the restored VM's own vsock socket
/// (Firecracker >= 1.16).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VsockOverride {
    pub uds_path: String,
}

/// `PUT /snapshot/load` body (definition `SnapshotLoadParams`), accepted only
/// by a fresh Firecracker process (nothing configured but the logger).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotLoadParams {
    /// The microVM state file, as Firecracker sees it.
    pub snapshot_path: String,
    /// Where guest memory comes from (the API's other way, the deprecated
    /// `mem_file_path`, is never sent).
    pub mem_backend: MemoryBackend,
    /// Resume the vCPUs once loaded.
    pub resume_vm: bool,
    /// Taps replacing the snapshot's (omitted when empty).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub network_overrides: Vec<NetworkOverride>,
    /// Socket replacing the snapshot's vsock socket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vsock_override: Option<VsockOverride>,
}

/// `GET /` response (definition `InstanceInfo`); unknown fields are tolerated
/// because newer Firecracker versions may add some.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceInfo {
    /// Application name (`Firecracker`).
    pub app_name: String,
    /// The `--id` the process was started with.
    pub id: String,
    /// `Not started`, `Running` or `Paused`.
    pub state: String,
    /// Firecracker version.
    pub vmm_version: String,
}

/// Error body of any non-2xx response (definition `Error`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiFault {
    /// Firecracker's description of what was wrong.
    pub fault_message: String,
}

/// One API request of a configuration sequence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiCall {
    /// HTTP method.
    pub method: Method,
    /// Request path, e.g. `/drives/root`.
    pub path: String,
    /// JSON body.
    pub body: serde_json::Value,
}

/// Paths as the Firecracker process sees them: the host paths, or paths
/// inside the jail's chroot when the jailer is used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FirecrackerPaths {
    /// Firecracker's own log file.
    pub log: String,
    /// Kernel image.
    pub kernel: String,
    /// Initrd, when the spec has one.
    pub initrd: Option<String>,
    /// One path per `spec.drives` entry, same order.
    pub drives: Vec<String>,
    /// vsock Unix socket, when the spec has an agent channel.
    pub vsock_uds: Option<String>,
}

impl FirecrackerPaths {
    /// The spec's own (host) paths, for a Firecracker that is not jailed.
    pub fn direct(spec: &VmSpec, log: &Path) -> FirecrackerPaths {
        let s = |p: &Path| p.to_string_lossy().into_owned();
        FirecrackerPaths {
            log: s(log),
            kernel: s(&spec.kernel),
            initrd: spec.initrd.as_deref().map(s),
            drives: spec.drives.iter().map(|d| s(&d.path)).collect(),
            vsock_uds: spec.agent.as_ref().map(|a| s(&a.host_socket)),
        }
    }
}

/// The guest network interface id banger uses.
pub const IFACE_ID: &str = "eth0";

fn json<T: Serialize>(value: &T) -> serde_json::Value {
    // Plain structs of strings, integers and bools always serialize.
    serde_json::to_value(value).unwrap_or(serde_json::Value::Null)
}

/// The pre-boot configuration sequence for `spec`, in the order it is sent:
/// logger, machine-config, boot-source, drives (root first),
/// network-interfaces, vsock. `InstanceStart` is not included.
pub fn configuration_calls(spec: &VmSpec, paths: &FirecrackerPaths) -> Vec<ApiCall> {
    let put = |path: String, body: serde_json::Value| ApiCall {
        method: Method::PUT,
        path,
        body,
    };
    let mut calls = vec![
        logger_call(paths),
        put(
            "/machine-config".into(),
            json(&MachineConfiguration {
                vcpu_count: spec.vcpu,
                mem_size_mib: spec.memory_mib,
                smt: false,
            }),
        ),
        put(
            "/boot-source".into(),
            json(&BootSource {
                kernel_image_path: paths.kernel.clone(),
                initrd_path: paths.initrd.clone(),
                boot_args: spec.cmdline.clone(),
            }),
        ),
    ];
    let mut drives: Vec<(usize, &crate::spec::DriveSpec)> =
        spec.drives.iter().enumerate().collect();
    drives.sort_by_key(|(_, d)| !d.is_root);
    for (index, drive) in drives {
        calls.push(put(
            format!("/drives/{}", drive.id),
            json(&Drive {
                drive_id: drive.id.clone(),
                path_on_host: paths.drives.get(index).cloned().unwrap_or_default(),
                is_root_device: drive.is_root,
                is_read_only: drive.read_only,
            }),
        ));
    }
    if let Some(net) = &spec.net {
        calls.push(put(
            format!("/network-interfaces/{IFACE_ID}"),
            json(&NetworkInterface {
                iface_id: IFACE_ID.into(),
                host_dev_name: net.tap.clone(),
                guest_mac: Some(net.mac.to_string()),
            }),
        ));
    }
    if let (Some(agent), Some(uds)) = (&spec.agent, &paths.vsock_uds) {
        calls.push(put(
            "/vsock".into(),
            json(&Vsock {
                guest_cid: agent.guest_cid,
                uds_path: uds.clone(),
            }),
        ));
    }
    calls
}

fn logger_call(paths: &FirecrackerPaths) -> ApiCall {
    ApiCall {
        method: Method::PUT,
        path: "/logger".into(),
        body: json(&Logger {
            log_path: paths.log.clone(),
            level: "Info".into(),
            show_level: true,
            show_log_origin: false,
        }),
    }
}

fn vm_state_call(state: VmRunState) -> ApiCall {
    ApiCall {
        method: Method::PATCH,
        path: "/vm".into(),
        body: json(&VmStateUpdate { state }),
    }
}

/// A snapshot's two files as Firecracker sees them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotPaths {
    /// The microVM state (devices, vCPUs): small.
    pub state: String,
    /// Guest memory: as large as the VM's memory.
    pub memory: String,
}

/// Pause the VM and write a full snapshot of it: `PATCH /vm` `Paused`, then
/// `PUT /snapshot/create`. The VM stays paused (resume it or kill it).
pub fn snapshot_create_calls(files: &SnapshotPaths) -> Vec<ApiCall> {
    vec![
        vm_state_call(VmRunState::Paused),
        ApiCall {
            method: Method::PUT,
            path: "/snapshot/create".into(),
            body: json(&SnapshotCreateParams {
                snapshot_type: SnapshotType::Full,
                snapshot_path: files.state.clone(),
                mem_file_path: files.memory.clone(),
            }),
        },
    ]
}

/// Restore `spec` from a snapshot on a fresh Firecracker process, in the
/// order sent: logger; `PUT /snapshot/load` with the memory file as a `File`
/// backend, the spec's own tap (`network_overrides`) and vsock socket
/// (`vsock_override`), not yet resumed; `PATCH /drives/{id}` for every drive
/// of the spec, because the snapshot names the disks of the VM it was taken
/// from and a restored VM must run on its own; then, unless `start_paused`,
/// `PATCH /vm` `Resumed`. The spec's drives must be those of the snapshot
/// (same ids), and its vCPUs and memory are the snapshot's whatever the spec
/// says.
pub fn snapshot_restore_calls(
    spec: &VmSpec,
    paths: &FirecrackerPaths,
    files: &SnapshotPaths,
    start_paused: bool,
) -> Vec<ApiCall> {
    let mut calls = vec![
        logger_call(paths),
        ApiCall {
            method: Method::PUT,
            path: "/snapshot/load".into(),
            body: json(&SnapshotLoadParams {
                snapshot_path: files.state.clone(),
                mem_backend: MemoryBackend {
                    backend_type: MemoryBackendType::File,
                    backend_path: files.memory.clone(),
                },
                resume_vm: false,
                network_overrides: spec
                    .net
                    .iter()
                    .map(|net| NetworkOverride {
                        iface_id: IFACE_ID.into(),
                        host_dev_name: net.tap.clone(),
                    })
                    .collect(),
                vsock_override: paths
                    .vsock_uds
                    .as_ref()
                    .filter(|_| spec.agent.is_some())
                    .map(|uds| VsockOverride {
                        uds_path: uds.clone(),
                    }),
            }),
        },
    ];
    for (drive, path) in spec.drives.iter().zip(&paths.drives) {
        calls.push(ApiCall {
            method: Method::PATCH,
            path: format!("/drives/{}", drive.id),
            body: json(&PartialDrive {
                drive_id: drive.id.clone(),
                path_on_host: path.clone(),
            }),
        });
    }
    if !start_paused {
        calls.push(vm_state_call(VmRunState::Resumed));
    }
    calls
}

/// Errors talking to Firecracker's API, each naming the endpoint.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("cannot connect to the Firecracker API socket {socket}: {source}")]
    Connect {
        socket: PathBuf,
        source: std::io::Error,
    },
    #[error("{method} {endpoint} on {socket}: HTTP failure: {source}")]
    Http {
        method: Method,
        endpoint: String,
        socket: PathBuf,
        source: hyper::Error,
    },
    #[error("{method} {endpoint} on {socket}: no answer within {secs} s")]
    Timeout {
        method: Method,
        endpoint: String,
        socket: PathBuf,
        secs: u64,
    },
    #[error("{method} {endpoint} was rejected by Firecracker ({status}): {fault_message}")]
    Rejected {
        method: Method,
        endpoint: String,
        status: StatusCode,
        fault_message: String,
    },
    #[error("{method} {endpoint} cannot be sent: {reason}")]
    InvalidRequest {
        method: Method,
        endpoint: String,
        reason: String,
    },
    #[error("{method} {endpoint}: unexpected response body {body:?}: {source}")]
    BadResponse {
        method: Method,
        endpoint: String,
        body: String,
        source: serde_json::Error,
    },
}

/// A client for one Firecracker API socket. Each request uses a fresh
/// HTTP/1.1 connection, so a client can be kept or re-created freely.
#[derive(Debug, Clone)]
pub struct ApiClient {
    socket: PathBuf,
    timeout: Duration,
}

impl ApiClient {
    /// A client for the API socket at `socket`.
    pub fn new(socket: impl Into<PathBuf>) -> ApiClient {
        ApiClient {
            socket: socket.into(),
            timeout: DEFAULT_REQUEST_TIMEOUT,
        }
    }

    /// Change the per-request timeout.
    pub fn with_timeout(mut self, timeout: Duration) -> ApiClient {
        self.timeout = timeout;
        self
    }

    /// The socket this client talks to.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Send one request; returns the body of a 2xx response, or
    /// [`ApiError::Rejected`] carrying Firecracker's `fault_message`.
    pub async fn request(
        &self,
        method: Method,
        endpoint: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<Bytes, ApiError> {
        let fut = self.request_inner(method.clone(), endpoint, body);
        match tokio::time::timeout(self.timeout, fut).await {
            Ok(r) => r,
            Err(_) => Err(ApiError::Timeout {
                method,
                endpoint: endpoint.to_owned(),
                socket: self.socket.clone(),
                secs: self.timeout.as_secs(),
            }),
        }
    }

    async fn request_inner(
        &self,
        method: Method,
        endpoint: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<Bytes, ApiError> {
        let http_err = |source| ApiError::Http {
            method: method.clone(),
            endpoint: endpoint.to_owned(),
            socket: self.socket.clone(),
            source,
        };
        let stream =
            UnixStream::connect(&self.socket)
                .await
                .map_err(|source| ApiError::Connect {
                    socket: self.socket.clone(),
                    source,
                })?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(http_err)?;
        let conn_task = tokio::spawn(conn);
        let mut req = Request::builder()
            .method(method.clone())
            .uri(endpoint)
            .header(hyper::header::HOST, "localhost")
            .header(hyper::header::ACCEPT, "application/json");
        let payload = match body {
            Some(b) => {
                req = req.header(hyper::header::CONTENT_TYPE, "application/json");
                Bytes::from(b.to_string())
            }
            None => Bytes::new(),
        };
        let req = req
            .body(Full::new(payload))
            .map_err(|e| ApiError::InvalidRequest {
                method: method.clone(),
                endpoint: endpoint.to_owned(),
                reason: e.to_string(),
            })?;
        let resp = sender.send_request(req).await.map_err(http_err)?;
        let status = resp.status();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(http_err)?
            .to_bytes();
        conn_task.abort();
        if status.is_success() {
            return Ok(bytes);
        }
        let fault_message = match serde_json::from_slice::<ApiFault>(&bytes) {
            Ok(f) => f.fault_message,
            Err(_) => String::from_utf8_lossy(&bytes).into_owned(),
        };
        Err(ApiError::Rejected {
            method,
            endpoint: endpoint.to_owned(),
            status,
            fault_message,
        })
    }

    /// `PUT endpoint` with a JSON body.
    pub async fn put<T: Serialize>(&self, endpoint: &str, body: &T) -> Result<(), ApiError> {
        self.request(Method::PUT, endpoint, Some(&json(body)))
            .await
            .map(drop)
    }

    /// Send every call in order, stopping at the first failure.
    pub async fn run(&self, calls: &[ApiCall]) -> Result<(), ApiError> {
        for call in calls {
            self.request(call.method.clone(), &call.path, Some(&call.body))
                .await?;
        }
        Ok(())
    }

    /// `PUT /actions` with `action_type`.
    pub async fn action(&self, action_type: ActionType) -> Result<(), ApiError> {
        self.put("/actions", &InstanceActionInfo { action_type })
            .await
    }

    /// `PATCH /vm`: pause or resume the vCPUs of a booted VM.
    pub async fn set_vm_state(&self, state: VmRunState) -> Result<(), ApiError> {
        let call = vm_state_call(state);
        self.request(call.method, &call.path, Some(&call.body))
            .await
            .map(drop)
    }

    /// `GET /`: the instance id, state and version.
    pub async fn instance_info(&self) -> Result<InstanceInfo, ApiError> {
        let body = self.request(Method::GET, "/", None).await?;
        serde_json::from_slice(&body).map_err(|source| ApiError::BadResponse {
            method: Method::GET,
            endpoint: "/".into(),
            body: String::from_utf8_lossy(&body).into_owned(),
            source,
        })
    }
}
