//! A fake Firecracker API server on a Unix socket that checks each request
//! the way Firecracker's API does: bodies against the shapes in
//! Firecracker's OpenAPI spec (`src/firecracker/swagger/firecracker.yaml`,
//! transcribed here independently of banger's own structs), pre-boot-only
//! endpoints, boot-source before `InstanceStart`, and
//! `{"fault_message": ...}` errors.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use banger_vmm::firecracker::ApiClient;
use banger_vmm::MacAddr;
use serde_json::{json, Value};

#[derive(Clone, Copy)]
enum Kind {
    Str,
    Int { min: i64, max: i64 },
    Bool,
    Enum(&'static [&'static str]),
    Object,
    Array,
}

struct Schema {
    required: &'static [(&'static str, Kind)],
    optional: &'static [(&'static str, Kind)],
}

const ANY_INT: Kind = Kind::Int {
    min: 0,
    max: i64::MAX,
};

/// Definitions from firecracker.yaml, by endpoint.
fn schema_for(path: &str) -> Option<Schema> {
    let s = |required, optional| Some(Schema { required, optional });
    if path == "/logger" {
        return s(
            &[],
            &[
                (
                    "level",
                    Kind::Enum(&["Error", "Warning", "Info", "Debug", "Trace", "Off"]),
                ),
                ("log_path", Kind::Str),
                ("show_level", Kind::Bool),
                ("show_log_origin", Kind::Bool),
                ("module", Kind::Str),
            ],
        );
    }
    if path == "/machine-config" {
        return s(
            &[
                ("mem_size_mib", ANY_INT),
                ("vcpu_count", Kind::Int { min: 1, max: 32 }),
            ],
            &[
                ("cpu_template", Kind::Str),
                ("smt", Kind::Bool),
                ("track_dirty_pages", Kind::Bool),
                ("huge_pages", Kind::Enum(&["None", "Transparent", "2M"])),
            ],
        );
    }
    if path == "/boot-source" {
        return s(
            &[("kernel_image_path", Kind::Str)],
            &[("boot_args", Kind::Str), ("initrd_path", Kind::Str)],
        );
    }
    if path.starts_with("/drives/") {
        return s(
            &[("drive_id", Kind::Str), ("is_root_device", Kind::Bool)],
            &[
                ("partuuid", Kind::Str),
                ("cache_type", Kind::Enum(&["Unsafe", "Writeback"])),
                ("is_read_only", Kind::Bool),
                ("path_on_host", Kind::Str),
                ("rate_limiter", Kind::Object),
                ("io_engine", Kind::Enum(&["Sync", "Async"])),
                ("socket", Kind::Str),
            ],
        );
    }
    if path.starts_with("/network-interfaces/") {
        return s(
            &[("host_dev_name", Kind::Str), ("iface_id", Kind::Str)],
            &[
                ("guest_mac", Kind::Str),
                (
                    "mtu",
                    Kind::Int {
                        min: 68,
                        max: 65535,
                    },
                ),
                ("rx_rate_limiter", Kind::Object),
                ("tx_rate_limiter", Kind::Object),
            ],
        );
    }
    if path == "/vsock" {
        return s(
            &[
                (
                    "guest_cid",
                    Kind::Int {
                        min: 3,
                        max: u32::MAX as i64,
                    },
                ),
                ("uds_path", Kind::Str),
            ],
            &[("vsock_id", Kind::Str)],
        );
    }
    if path == "/snapshot/create" {
        return s(
            &[("mem_file_path", Kind::Str), ("snapshot_path", Kind::Str)],
            &[("snapshot_type", Kind::Enum(&["Full", "Diff"]))],
        );
    }
    if path == "/snapshot/load" {
        return s(
            &[("snapshot_path", Kind::Str)],
            &[
                ("enable_diff_snapshots", Kind::Bool),
                ("track_dirty_pages", Kind::Bool),
                ("mem_file_path", Kind::Str),
                ("mem_backend", Kind::Object),
                ("resume_vm", Kind::Bool),
                ("network_overrides", Kind::Array),
                ("vsock_override", Kind::Object),
                ("clock_realtime", Kind::Bool),
            ],
        );
    }
    if path == "/actions" {
        return s(
            &[(
                "action_type",
                Kind::Enum(&["FlushMetrics", "InstanceStart", "SendCtrlAltDel"]),
            )],
            &[],
        );
    }
    None
}

/// Definitions of the PATCH endpoints (post-boot only).
fn patch_schema_for(path: &str) -> Option<Schema> {
    if path == "/vm" {
        return Some(Schema {
            required: &[("state", Kind::Enum(&["Paused", "Resumed"]))],
            optional: &[],
        });
    }
    if path.starts_with("/drives/") {
        return Some(Schema {
            required: &[("drive_id", Kind::Str)],
            optional: &[("path_on_host", Kind::Str), ("rate_limiter", Kind::Object)],
        });
    }
    None
}

/// Nested definitions `MemoryBackend`, `NetworkOverride`, `VsockOverride`.
fn check_load_nested(body: &Value) -> Result<(), String> {
    if let Some(mb) = body.get("mem_backend") {
        check_schema(
            &Schema {
                required: &[
                    ("backend_type", Kind::Enum(&["File", "Uffd"])),
                    ("backend_path", Kind::Str),
                ],
                optional: &[],
            },
            mb,
        )
        .map_err(|e| format!("mem_backend: {e}"))?;
    }
    for o in body
        .get("network_overrides")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        check_schema(
            &Schema {
                required: &[("iface_id", Kind::Str), ("host_dev_name", Kind::Str)],
                optional: &[],
            },
            o,
        )
        .map_err(|e| format!("network_overrides: {e}"))?;
    }
    if let Some(v) = body.get("vsock_override") {
        check_schema(
            &Schema {
                required: &[("uds_path", Kind::Str)],
                optional: &[],
            },
            v,
        )
        .map_err(|e| format!("vsock_override: {e}"))?;
    }
    Ok(())
}

fn check_kind(name: &str, kind: Kind, v: &Value) -> Result<(), String> {
    let ok = match kind {
        Kind::Str => v.is_string(),
        Kind::Int { min, max } => v.as_i64().is_some_and(|n| (min..=max).contains(&n)),
        Kind::Bool => v.is_boolean(),
        Kind::Enum(values) => v.as_str().is_some_and(|s| values.contains(&s)),
        Kind::Object => v.is_object(),
        Kind::Array => v.is_array(),
    };
    if ok {
        Ok(())
    } else {
        Err(format!("field {name}: invalid value {v}"))
    }
}

/// Firecracker's parse layer: unknown fields are rejected (deny_unknown_fields).
fn check_schema(schema: &Schema, body: &Value) -> Result<(), String> {
    let obj = body.as_object().ok_or("body is not a JSON object")?;
    for (key, value) in obj {
        let kind = schema
            .required
            .iter()
            .chain(schema.optional)
            .find(|(k, _)| k == key)
            .map(|(_, kind)| *kind)
            .ok_or_else(|| format!("unknown field `{key}`"))?;
        check_kind(key, kind, value)?;
    }
    for (key, _) in schema.required {
        if !obj.contains_key(*key) {
            return Err(format!("missing field `{key}`"));
        }
    }
    Ok(())
}

/// One request as received.
#[derive(Debug, Clone, PartialEq)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub body: Value,
}

#[derive(Default)]
pub struct FakeVmm {
    pub seen: Vec<Seen>,
    /// Requests this server refused on its own rules (a correct client causes none).
    pub violations: Vec<String>,
    pub started: bool,
    boot_source: bool,
    root_drive: Option<String>,
    /// vCPUs stopped by `PATCH /vm` (or a snapshot loaded without `resume_vm`).
    pub paused: bool,
    /// Ids of the configured (or snapshot-restored) drives and interfaces.
    drives: Vec<String>,
    ifaces: Vec<String>,
    vsock_uds: Option<String>,
    /// Reject this path with this fault (error propagation test).
    pub fail: Option<(String, String)>,
    /// Exit the process after answering `SendCtrlAltDel` (a guest that reboots).
    pub exit_on_ctrl_alt_del: bool,
    /// Write `seen` as JSON here after every request (fake process mode).
    pub record: Option<PathBuf>,
    /// Signalled when the process should exit.
    pub exit: Option<Arc<tokio::sync::Notify>>,
}

pub type Shared = Arc<Mutex<FakeVmm>>;

fn fault(status: StatusCode, msg: impl Into<String>) -> Response {
    (status, axum::Json(json!({ "fault_message": msg.into() }))).into_response()
}

fn path_exists(body: &Value, key: &str) -> Result<(), String> {
    match body.get(key).and_then(Value::as_str) {
        None => Ok(()),
        Some(p) if Path::new(p).exists() => Ok(()),
        Some(p) => Err(format!("{key} {p}: No such file or directory (os error 2)")),
    }
}

/// Firecracker's rules for one PUT, after the schema check.
fn check_rules(vm: &mut FakeVmm, path: &str, body: &Value) -> Result<(), String> {
    let pre_boot_only = path != "/actions" && path != "/snapshot/create";
    if pre_boot_only && vm.started {
        return Err("The requested operation is not supported after starting the microVM.".into());
    }
    match path {
        "/snapshot/load" => {
            // Only a fresh process: nothing configured but the logger.
            if vm
                .seen
                .iter()
                .any(|r| r.method == "PUT" && r.path != "/logger" && r.path != "/snapshot/load")
            {
                return Err("Loading a microVM snapshot not allowed after configuring boot-specific resources.".into());
            }
            check_load_nested(body)?;
            let file_mem = body.get("mem_file_path").is_some();
            let backend_mem = body.get("mem_backend").is_some();
            if file_mem == backend_mem {
                return Err("Exactly one of mem_file_path and mem_backend must be given".into());
            }
            path_exists(body, "snapshot_path")?;
            path_exists(body, "mem_file_path")?;
            if let Some(mb) = body.get("mem_backend") {
                path_exists(mb, "backend_path")?;
            }
            let state: Value = std::fs::read(body["snapshot_path"].as_str().unwrap_or_default())
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok())
                .ok_or("Cannot deserialize the microVM state")?;
            let ids = |key: &str| -> Vec<String> {
                state[key]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect()
            };
            vm.drives = ids("drives");
            vm.ifaces = ids("ifaces");
            for o in body["network_overrides"].as_array().into_iter().flatten() {
                let id = o["iface_id"].as_str().unwrap_or_default();
                if !vm.ifaces.iter().any(|i| i == id) {
                    return Err(format!("Invalid network override: no interface {id}"));
                }
            }
            let uds = body["vsock_override"]["uds_path"]
                .as_str()
                .or(state["vsock_uds"].as_str())
                .unwrap_or_default();
            if !uds.is_empty() && Path::new(uds).exists() {
                return Err(format!(
                    "Cannot create backend for vsock device: {uds}: Address in use"
                ));
            }
            vm.started = true;
            vm.paused = body["resume_vm"] != true;
        }
        "/snapshot/create" => {
            if !vm.started {
                return Err(
                    "The requested operation is not supported before starting the microVM.".into(),
                );
            }
            if !vm.paused {
                return Err("Cannot save the microVM state: the microVM is not paused.".into());
            }
            let state = json!({
                "drives": vm.drives,
                "ifaces": vm.ifaces,
                "vsock_uds": vm.vsock_uds,
            });
            for (key, content) in [
                ("snapshot_path", state.to_string().into_bytes()),
                ("mem_file_path", b"guest memory".to_vec()),
            ] {
                let p = body[key].as_str().unwrap_or_default();
                std::fs::write(p, content).map_err(|e| format!("{key} {p}: {e}"))?;
            }
        }
        "/boot-source" => {
            path_exists(body, "kernel_image_path")?;
            path_exists(body, "initrd_path")?;
            vm.boot_source = true;
        }
        "/actions" => match body["action_type"].as_str() {
            Some("InstanceStart") => {
                if vm.started {
                    return Err("The microVM is already running.".into());
                }
                if !vm.boot_source {
                    return Err("Cannot start microvm without kernel configuration.".into());
                }
                vm.started = true;
            }
            Some("SendCtrlAltDel") if !vm.started => {
                return Err(
                    "The requested operation is not supported before starting the microVM.".into(),
                );
            }
            Some("SendCtrlAltDel") if vm.exit_on_ctrl_alt_del => {
                if let Some(exit) = &vm.exit {
                    exit.notify_one();
                }
            }
            _ => {}
        },
        "/vsock" => {
            let uds = body["uds_path"].as_str().unwrap_or_default();
            if Path::new(uds).exists() {
                return Err(format!(
                    "Cannot create backend for vsock device: {uds}: Address in use"
                ));
            }
            vm.vsock_uds = Some(uds.to_owned());
        }
        p if p.starts_with("/drives/") => {
            let id = &p["/drives/".len()..];
            if body["drive_id"] != id {
                return Err("The id from the path does not match the id from the body!".into());
            }
            path_exists(body, "path_on_host")?;
            vm.drives.push(id.to_owned());
            if body["is_root_device"] == true {
                if vm.root_drive.as_deref().is_some_and(|r| r != id) {
                    return Err("A root block device already exists!".into());
                }
                vm.root_drive = Some(id.to_owned());
            }
        }
        p if p.starts_with("/network-interfaces/") => {
            let id = &p["/network-interfaces/".len()..];
            if body["iface_id"] != id {
                return Err("The id from the path does not match the id from the body!".into());
            }
            if let Some(mac) = body.get("guest_mac").and_then(Value::as_str) {
                mac.parse::<MacAddr>().map_err(|e| e.to_string())?;
            }
            vm.ifaces.push(id.to_owned());
        }
        _ => {}
    }
    Ok(())
}

/// Firecracker's rules for one PATCH, after the schema check.
fn check_patch_rules(vm: &mut FakeVmm, path: &str, body: &Value) -> Result<(), String> {
    if !vm.started {
        return Err("The requested operation is not supported before starting the microVM.".into());
    }
    if path == "/vm" {
        vm.paused = body["state"] == "Paused";
        return Ok(());
    }
    let id = &path["/drives/".len()..];
    if body["drive_id"] != id {
        return Err("The id from the path does not match the id from the body!".into());
    }
    if !vm.drives.iter().any(|d| d == id) {
        return Err(format!("Invalid block device ID: {id}"));
    }
    path_exists(body, "path_on_host")
}

async fn handle(
    State(state): State<Shared>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().to_owned();
    let mut vm = state.lock().unwrap();
    let parsed: Value = if body.is_empty() {
        Value::Null
    } else {
        match serde_json::from_slice(&body) {
            Ok(v) => v,
            Err(e) => {
                vm.violations
                    .push(format!("{method} {path}: body is not JSON: {e}"));
                return fault(StatusCode::BAD_REQUEST, format!("body is not JSON: {e}"));
            }
        }
    };
    vm.seen.push(Seen {
        method: method.to_string(),
        path: path.clone(),
        body: parsed.clone(),
    });
    if let Some(record) = &vm.record {
        let list: Vec<Value> = vm
            .seen
            .iter()
            .map(|r| json!({"method": r.method, "path": r.path, "body": r.body}))
            .collect();
        std::fs::write(record, Value::Array(list).to_string()).unwrap();
    }
    if method == Method::GET && path == "/" {
        let state = match (vm.started, vm.paused) {
            (false, _) => "Not started",
            (true, false) => "Running",
            (true, true) => "Paused",
        };
        return axum::Json(json!({
            "app_name": "Firecracker",
            "id": "vm-1",
            "state": state,
            "vmm_version": "1.17.0-dev",
        }))
        .into_response();
    }
    if method != Method::PUT && method != Method::PATCH {
        vm.violations
            .push(format!("{method} {path}: unexpected method"));
        return fault(StatusCode::BAD_REQUEST, "Invalid request method");
    }
    if !headers.contains_key("content-length") {
        vm.violations
            .push(format!("{method} {path}: no Content-Length"));
        return fault(StatusCode::BAD_REQUEST, "missing Content-Length");
    }
    if let Some((fail_path, msg)) = vm.fail.clone() {
        if fail_path == path {
            return fault(StatusCode::BAD_REQUEST, msg);
        }
    }
    if method == Method::PATCH {
        let Some(schema) = patch_schema_for(&path) else {
            vm.violations
                .push(format!("PATCH {path}: unknown endpoint"));
            return fault(
                StatusCode::BAD_REQUEST,
                format!("Invalid request path {path}"),
            );
        };
        if let Err(e) =
            check_schema(&schema, &parsed).and_then(|()| check_patch_rules(&mut vm, &path, &parsed))
        {
            vm.violations.push(format!("PATCH {path}: {e}"));
            return fault(StatusCode::BAD_REQUEST, e);
        }
        return StatusCode::NO_CONTENT.into_response();
    }
    let Some(schema) = schema_for(&path) else {
        vm.violations.push(format!("PUT {path}: unknown endpoint"));
        return fault(
            StatusCode::BAD_REQUEST,
            format!("Invalid request path {path}"),
        );
    };
    if let Err(e) =
        check_schema(&schema, &parsed).and_then(|()| check_rules(&mut vm, &path, &parsed))
    {
        vm.violations.push(format!("PUT {path}: {e}"));
        return fault(StatusCode::BAD_REQUEST, e);
    }
    StatusCode::NO_CONTENT.into_response()
}

/// A fake Firecracker API on a Unix socket in a temp dir.
pub struct Server {
    pub state: Shared,
    pub socket: PathBuf,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    pub async fn start(dir: &Path) -> Server {
        Server::start_at(dir.join("api.sock")).await
    }

    pub async fn start_at(socket: PathBuf) -> Server {
        let listener = tokio::net::UnixListener::bind(&socket).unwrap();
        let state: Shared = Arc::default();
        let app = Router::new().fallback(handle).with_state(state.clone());
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Server {
            state,
            socket,
            task,
        }
    }

    pub fn client(&self) -> ApiClient {
        ApiClient::new(&self.socket)
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.state.lock().unwrap().seen.clone()
    }

    pub fn violations(&self) -> Vec<String> {
        self.state.lock().unwrap().violations.clone()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The body of a fake Firecracker process: a test executable started by a
/// launch/restore test as its "firecracker" (arguments in `FAKE_FC_ARGS`)
/// serves the checking API on `--api-sock`, records every request in
/// `requests.json` beside it, prints a console line and exits after
/// `SendCtrlAltDel` (unless `FAKE_FC_IGNORE_CAD`); `FAKE_FC_FAIL=PATH`
/// rejects requests to PATH.
pub async fn run_fake_process() {
    let Ok(args) = std::env::var("FAKE_FC_ARGS") else {
        eprintln!("FAKE_FC_ARGS is not set: this is only a helper for the launch tests");
        return;
    };
    let args: Vec<&str> = args.split(' ').collect();
    let arg = |name: &str| {
        let i = args.iter().position(|a| *a == name).unwrap();
        args[i + 1].to_owned()
    };
    let (api_sock, id) = (PathBuf::from(arg("--api-sock")), arg("--id"));
    let server = Server::start_at(api_sock.clone()).await;
    let exit = Arc::new(tokio::sync::Notify::new());
    {
        let mut vm = server.state.lock().unwrap();
        vm.exit_on_ctrl_alt_del = std::env::var_os("FAKE_FC_IGNORE_CAD").is_none();
        vm.exit = Some(exit.clone());
        vm.record = Some(api_sock.with_file_name("requests.json"));
        vm.fail = std::env::var("FAKE_FC_FAIL")
            .ok()
            .map(|p| (p, "injected failure".to_owned()));
    }
    println!("fake-firecracker {id} console");
    exit.notified().await;
    // Let the answer to SendCtrlAltDel go out, then "the guest rebooted".
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    std::process::exit(0);
}
