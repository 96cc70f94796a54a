//! Bodies of the `/v1/vms` routes: create, start/stop/restart, delete, list,
//! show, ports. Logs are plain text (`GET /v1/vms/{name}/logs`).

use serde::{Deserialize, Serialize};

use crate::guest::{AgentHealth, GuestStats, ListeningPort};

/// `POST /v1/vms` body (streamed). Every field is optional: unset sizes come
/// from `[vm_defaults]`, an unset image from `default_image_name`, an unset
/// name is generated.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmCreateRequest {
    /// DNS label: 1-63 of `a-z`, `0-9`, `-`, not starting or ending with `-`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vcpu: Option<u32>,
    /// A size like `1G` or `512M`, or a plain number of MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<String>,
    /// Size of the work disk mounted at `/root`, like `16G`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_size: Option<String>,
    /// Create the VM's disks and record but do not boot it.
    #[serde(default)]
    pub no_start: bool,
}

/// `POST /v1/vms/{name}/start` body (an empty body is the same as `{}`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmStartRequest {}

/// `POST /v1/vms/{name}/stop` and `/restart` body.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmStopRequest {
    /// Kill the VMM instead of asking the guest to power off.
    #[serde(default)]
    pub force: bool,
}

/// Result of `DELETE /v1/vms/{name}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmDeleted {
    pub name: String,
    /// False when there was no such VM (delete is idempotent).
    pub existed: bool,
}

/// Where one value of a new VM's size came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SpecSource {
    /// Given in the request (a `banger vm create` flag).
    Flag,
    /// `[vm_defaults]` in the config file.
    Config,
    /// Derived from this host's CPUs or RAM.
    Host,
    /// banger's built-in default.
    BuiltIn,
    /// A source added by a newer daemon.
    #[serde(other)]
    Unknown,
}

impl std::fmt::Display for SpecSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SpecSource::Flag => "flag",
            SpecSource::Config => "config",
            SpecSource::Host => "host",
            SpecSource::BuiltIn => "built-in",
            SpecSource::Unknown => "unknown",
        })
    }
}

/// A new VM's resolved size, each value with its source; sent as the first
/// event of `POST /v1/vms` (a `log` line starting with `spec:`) and kept in
/// [`VmInfo::spec`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmSizeSpec {
    pub vcpu: u32,
    pub vcpu_source: SpecSource,
    pub memory_mib: u64,
    pub memory_source: SpecSource,
    pub disk_bytes: u64,
    pub disk_source: SpecSource,
}

/// A VM's disks on the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmDisks {
    /// Copy-on-write clone of the image's `rootfs.ext4` (`/dev/vda`).
    pub root: String,
    /// `reflink`, `dm-snapshot` or `sparse-copy`.
    pub clone_strategy: Option<String>,
    /// The work disk mounted at `/root` (kept across stop/start).
    pub work: String,
    /// The config drive, rebuilt at every start.
    pub config: String,
}

/// How to reach a VM with OpenSSH: `ssh -i KEY -o UserKnownHostsFile=KNOWN_HOSTS
/// -o StrictHostKeyChecking=yes USER@HOST`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmSshAccess {
    pub user: String,
    /// The VM's address (`None` while stopped).
    pub host: Option<String>,
    /// The private key banger authorizes in every VM.
    pub key: String,
    /// banger's own known_hosts file, holding the VM's pinned host key.
    pub known_hosts: String,
    /// `SHA256:...` fingerprint of the VM's host key.
    pub host_key_fingerprint: Option<String>,
}

/// One VM, as `GET /v1/vms` lists it and `GET /v1/vms/{name}` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VmInfo {
    pub id: String,
    pub name: String,
    /// `created`, `starting`, `running`, `stopping`, `stopped` or `error`.
    pub state: String,
    pub image: String,
    pub kernel: String,
    pub vcpu: u32,
    pub memory_mib: u64,
    /// Size of the work disk.
    pub disk_bytes: u64,
    /// Set while the VM runs.
    pub ip: Option<String>,
    pub mac: String,
    pub tap: Option<String>,
    /// `firecracker`, `qemu-kvm` or `qemu-tcg` (the one it last ran on).
    pub backend: Option<String>,
    pub vmm_pid: Option<u32>,
    /// Milliseconds since the Unix epoch.
    pub created_at: i64,
    /// Last SSH or session activity (milliseconds since the Unix epoch).
    pub last_activity_at: Option<i64>,
    /// The size the VM was created with, and where each value came from.
    pub spec: Option<VmSizeSpec>,
    /// The last start or stop failure, until the next successful start.
    pub last_error: Option<String>,
    /// Details, filled by `GET /v1/vms/{name}` only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<VmDetails>,
}

/// What `GET /v1/vms/{name}` adds to [`VmInfo`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VmDetails {
    pub disks: VmDisks,
    pub ssh: VmSshAccess,
    /// The serial console log (what `banger vm logs` shows).
    pub serial_log: String,
    /// The VMM's run directory (control and agent sockets).
    pub run_dir: String,
    /// Why the backend was chosen.
    pub backend_reason: Option<String>,
    /// The guest agent's health, when the VM runs and the agent answers.
    pub agent: Option<AgentHealth>,
    /// Guest load, memory and disk usage from the agent.
    pub stats: Option<GuestStats>,
    /// Why `agent`/`stats` are missing while the VM runs.
    pub agent_error: Option<String>,
    /// When `agent`/`stats` were sampled (milliseconds since the Unix epoch):
    /// the daemon polls every `stats_poll_interval`.
    #[serde(default)]
    pub stats_at: Option<i64>,
    /// The phase timings `banger vm run` recorded for this VM, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timings: Option<VmTimings>,
}

/// `GET /v1/vms` answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VmList {
    pub vms: Vec<VmInfo>,
}

/// `GET /v1/vms/{name}/ports` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmPorts {
    pub name: String,
    pub ip: Option<String>,
    pub ports: Vec<ListeningPort>,
}

/// `POST /v1/vms/{name}/activity`: the CLI reports an SSH session starting,
/// which keeps the VM from being stopped by `auto_stop_stale_after`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmActivityRequest {}

/// One phase of `banger vm run` and how long it took.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PhaseTiming {
    /// `resolve image`, `clone disk`, `boot`, `SSH ready`, `workspace copy`
    /// or `command`.
    pub phase: String,
    pub millis: u64,
}

/// `POST /v1/vms/{name}/timings` body and `GET` answer: the phase timings
/// `banger vm run` measured (shown by `banger vm show`). Empty when the VM
/// was not made by `vm run`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmTimings {
    pub phases: Vec<PhaseTiming>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_request_defaults_and_rejects_unknown_fields() {
        let req: VmCreateRequest = serde_json::from_str("{}").unwrap();
        assert_eq!(req, VmCreateRequest::default());
        let req: VmCreateRequest =
            serde_json::from_str(r#"{"name":"a","memory":"1G","no_start":true}"#).unwrap();
        assert_eq!(req.name.as_deref(), Some("a"));
        assert!(req.no_start);
        assert!(serde_json::from_str::<VmCreateRequest>(r#"{"nmae":"a"}"#).is_err());
        assert_eq!(
            serde_json::to_string(&VmCreateRequest {
                name: Some("a".into()),
                ..Default::default()
            })
            .unwrap(),
            r#"{"name":"a","no_start":false}"#
        );
    }

    #[test]
    fn timings_default_to_empty_and_tolerate_added_fields() {
        let t: VmTimings =
            serde_json::from_str(r#"{"phases":[{"phase":"boot","millis":1500}]}"#).unwrap();
        assert_eq!(t.phases[0].phase, "boot");
        assert_eq!(t.phases[0].millis, 1500);
        assert_eq!(VmTimings::default().phases.len(), 0);
        // Also part of `vm show`'s answer, so a newer daemon's field must parse.
        let t: VmTimings =
            serde_json::from_str(r#"{"phases":[{"phase":"boot","millis":1,"cpu":2}],"x":1}"#)
                .unwrap();
        assert_eq!(t.phases[0].millis, 1);
    }

    #[test]
    fn spec_source_is_kebab_case() {
        assert_eq!(
            serde_json::to_string(&SpecSource::BuiltIn).unwrap(),
            "\"built-in\""
        );
        assert_eq!(SpecSource::Flag.to_string(), "flag");
    }
}
