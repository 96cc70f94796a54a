//! The `bangerd` HTTP API: JSON bodies under `/v1`.

use serde::{Deserialize, Serialize};

/// API version prefix; every route lives under it.
pub const API_PREFIX: &str = "/v1";

/// Response header (repeatable) carrying one line the user should read about
/// the daemon's config file: an invalid edit, or changed keys that wait for
/// a restart. The CLI prints each as a warning.
pub const CONFIG_NOTICE_HEADER: &str = "banger-config-notice";

/// Content type of streamed responses: one [`StreamEvent`] JSON object per line.
pub const NDJSON: &str = "application/x-ndjson";

/// How banger was deployed on this host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum InstallMode {
    /// `/etc/banger/install.toml` exists: systemd units, `/var/lib/banger`.
    System,
    /// No install: a daemon per user in the XDG directories, auto-started.
    PerUser,
}

impl std::fmt::Display for InstallMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            InstallMode::System => "system",
            InstallMode::PerUser => "per-user",
        })
    }
}

/// `GET /v1/status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DaemonStatus {
    pub pid: u32,
    pub version: String,
    pub socket: String,
    pub uptime_secs: u64,
    pub state_dir: String,
    pub cache_dir: String,
    pub runtime_dir: String,
    /// The VMM backend `vmm = auto` resolves to on this host, and why.
    pub backend: String,
    pub backend_reason: String,
    /// `system` or `per-user` ([`InstallMode`]'s text): a string, so a
    /// mode added by a newer daemon still parses.
    pub install_mode: String,
    /// Whether a root helper is connected (system unit or per-user child).
    pub root_helper: Option<String>,
    pub schema_version: u32,
}

/// Stable machine-readable error codes of the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    BadRequest,
    /// The connecting user may not use this daemon (checked with
    /// `SO_PEERCRED` on every connection).
    Forbidden,
    NotFound,
    /// The path exists but not with this HTTP method.
    MethodNotAllowed,
    Conflict,
    Unsupported,
    HelperUnavailable,
    HelperFailed,
    State,
    Internal,
    /// A code added by a newer daemon (the message still says what failed).
    #[serde(other)]
    Unknown,
}

impl ErrorCode {
    /// The HTTP status this code is served with.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::BadRequest => 400,
            ErrorCode::Forbidden => 403,
            ErrorCode::NotFound => 404,
            ErrorCode::MethodNotAllowed => 405,
            ErrorCode::Conflict => 409,
            ErrorCode::Unsupported => 501,
            ErrorCode::HelperUnavailable => 503,
            ErrorCode::HelperFailed => 502,
            ErrorCode::State | ErrorCode::Internal | ErrorCode::Unknown => 500,
        }
    }
}

/// Body of every non-2xx response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.message)
    }
}

impl std::error::Error for ApiError {}

/// One line of a streamed (NDJSON) response. A stream always ends with
/// exactly one `Done` or `Error`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum StreamEvent {
    /// A phase began or advanced. `total`/`current` are bytes or items when known.
    Progress {
        phase: String,
        message: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        current: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        total: Option<u64>,
    },
    /// A human-readable note (warnings, notices) to print as-is.
    Log { level: LogLevel, message: String },
    /// The operation succeeded; `result` is the endpoint's JSON result.
    Done { result: serde_json::Value },
    /// The operation failed.
    Error { error: ApiError },
    /// An event added by a newer daemon; clients skip it.
    #[serde(other)]
    Unknown,
}

/// Severity of a [`StreamEvent::Log`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogLevel {
    Info,
    Warn,
    /// A level added by a newer daemon; printed like `Info`.
    #[serde(other)]
    Unknown,
}

/// `POST /v1/shutdown` response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShutdownResponse {
    pub pid: u32,
}

/// `POST /v1/network/setup` body (an empty body means the defaults).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkSetupRequest {
    /// Also install the NAT/forwarding rules (default true); false sets up
    /// only the bridge.
    #[serde(default = "default_true")]
    pub nat: bool,
}

impl Default for NetworkSetupRequest {
    fn default() -> Self {
        NetworkSetupRequest { nat: true }
    }
}

fn default_true() -> bool {
    true
}

/// `POST /v1/network/teardown` body (an empty body is the same as `{}`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkTeardownRequest {
    /// Tear down even while VMs run (they lose their network; refused
    /// with `conflict` otherwise).
    #[serde(default)]
    pub force: bool,
}

/// The `Done` result of the network routes: what the host network looks like now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkReport {
    /// Bridge name (config `bridge_name`).
    pub bridge: String,
    /// Bridge address `IP/prefix` (config `bridge_ip` and the prefix of `cidr`).
    pub address: String,
    /// Guest range (config `cidr`).
    pub cidr: String,
    /// Whether NAT is installed after the operation.
    pub nat: bool,
    /// Whether the operation changed anything on the host.
    pub changed: bool,
}
