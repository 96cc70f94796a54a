//! What `vm list`, `vm show` and `vm ports` report: the record, the files,
//! how to SSH in, and what the guest agent says.

use std::time::Duration;

use banger_agent_client::AgentClient;
use banger_state::{VmRecord, VmState};
use banger_vmm::VmmHandle;
use banger_wire::vm::{VmDetails, VmDisks, VmInfo, VmPorts, VmSshAccess};

use super::manager::AgentSample;
use super::paths::{self, VmPaths};
use super::{VmError, VmExtra};
use crate::context::Daemon;

/// How long `vm show` waits for the guest agent.
pub const AGENT_TIMEOUT: Duration = Duration::from_secs(3);

/// The summary of one VM (what `vm list` shows).
pub fn vm_info(vm: &VmRecord) -> VmInfo {
    let extra = VmExtra::from_json(&vm.spec);
    VmInfo {
        id: vm.id.clone(),
        name: vm.name.clone(),
        state: vm.state.to_string(),
        image: vm.image.clone(),
        kernel: vm.kernel.clone(),
        vcpu: vm.vcpu,
        memory_mib: vm.memory_mib,
        disk_bytes: vm.disk_bytes,
        ip: vm.ip.map(|ip| ip.to_string()),
        mac: vm.mac.clone(),
        tap: vm.tap.clone(),
        backend: extra.backend.clone(),
        vmm_pid: vm.vmm_pid,
        created_at: vm.created_at.unix_millis(),
        last_activity_at: vm.last_activity_at.map(|t| t.unix_millis()),
        spec: extra.size.clone(),
        last_error: extra.last_error.clone(),
        details: None,
    }
}

/// Everything about one VM; with `ask_agent`, also the agent's health and
/// stats when it runs.
pub async fn vm_show(state: &Daemon, vm: &VmRecord, ask_agent: bool) -> VmInfo {
    let mut info = vm_info(vm);
    let extra = VmExtra::from_json(&vm.spec);
    let p = VmPaths::new(&state.layout, &vm.id);
    let host_key = tokio::fs::read_to_string(&p.host_key_pub).await.ok();
    let fingerprint = host_key
        .as_deref()
        .and_then(|k| banger_vm::ssh::parse_public_key(k).ok())
        .map(|k| banger_vm::ssh::fingerprint(&k));
    let (mut agent, mut stats, mut agent_error, mut stats_at) = (None, None, None, None);
    if ask_agent && vm.state == VmState::Running {
        let sample = match state.vms.sample(&vm.id) {
            Some(s) => Ok(s),
            None => sample_agent(state, vm).await,
        };
        match sample {
            Ok(s) => {
                stats_at = Some(s.at.unix_millis());
                agent = Some(s.health);
                stats = Some(s.stats);
            }
            Err(e) => agent_error = Some(e.to_string()),
        }
    }
    info.details = Some(VmDetails {
        disks: VmDisks {
            root: p.root_disk.display().to_string(),
            clone_strategy: vm.clone_strategy.map(|s| s.to_string()),
            work: p.work_disk.display().to_string(),
            config: p.config_drive.display().to_string(),
        },
        ssh: VmSshAccess {
            user: super::SSH_USER.to_owned(),
            host: vm.ip.map(|ip| ip.to_string()),
            key: state.vms.config().ssh_key_path.value.display().to_string(),
            known_hosts: paths::known_hosts(&state.layout).display().to_string(),
            host_key_fingerprint: fingerprint,
        },
        serial_log: p.serial_log.display().to_string(),
        run_dir: p.run_dir.display().to_string(),
        backend_reason: extra.backend_reason,
        agent,
        stats,
        agent_error,
        stats_at,
        timings: read_timings(&p.dir).await,
    });
    info
}

/// The phase timings `banger vm run` left in the VM's directory; a file
/// that is missing or does not parse is no timings (they are only shown).
pub async fn read_timings(vm_dir: &std::path::Path) -> Option<banger_wire::vm::VmTimings> {
    let bytes = tokio::fs::read(vm_dir.join(TIMINGS_FILE)).await.ok()?;
    serde_json::from_slice::<banger_wire::vm::VmTimings>(&bytes)
        .ok()
        .filter(|t| !t.phases.is_empty())
}

/// Where `banger vm run`'s phase timings of a VM are kept, in its directory.
pub const TIMINGS_FILE: &str = "timings.json";

/// Ask a running VM's agent for its health and stats now, and remember the
/// answer for `vm show`.
pub async fn sample_agent(state: &Daemon, vm: &VmRecord) -> Result<AgentSample, VmError> {
    let agent_err = |source| VmError::Agent {
        name: vm.name.clone(),
        source,
    };
    let mut client = connect_agent(state, vm).await?;
    let health = client.health().await.map_err(agent_err)?;
    let stats = client.stats().await.map_err(agent_err)?;
    let sample = AgentSample {
        at: banger_state::Timestamp::now(),
        health,
        stats,
    };
    state.vms.set_sample(&vm.id, Some(sample.clone()));
    Ok(sample)
}

/// How long a fresh agent connection is drained of stale bytes.
const DRAIN_QUIET: Duration = Duration::from_millis(100);

/// At most this many stale bytes are drained: a real leftover is one
/// answer line; a guest that keeps writing is refused, not read forever.
pub const DRAIN_MAX_BYTES: usize = 256 << 10;

/// Draining ends after this long even if bytes keep trickling in.
pub const DRAIN_MAX_TIME: Duration = Duration::from_secs(2);

/// A connection to one VM's guest agent, holding that VM's agent lock: QEMU's
/// virtio-serial socket serves one client at a time, so the stats sampler,
/// `vm show` and `vm ports` take turns instead of stalling each other.
#[derive(Debug)]
pub struct AgentConn {
    client: AgentClient,
    _turn: tokio::sync::OwnedMutexGuard<()>,
}

impl std::ops::Deref for AgentConn {
    type Target = AgentClient;
    fn deref(&self) -> &AgentClient {
        &self.client
    }
}

impl std::ops::DerefMut for AgentConn {
    fn deref_mut(&mut self) -> &mut AgentClient {
        &mut self.client
    }
}

/// Open a connection to a running VM's guest agent.
pub async fn connect_agent(state: &Daemon, vm: &VmRecord) -> Result<AgentConn, VmError> {
    let agent_err = |source| VmError::Agent {
        name: vm.name.clone(),
        source,
    };
    if vm.state != VmState::Running {
        return Err(VmError::NotRunning {
            name: vm.name.clone(),
        });
    }
    let p = VmPaths::new(&state.layout, &vm.id);
    let handle = VmmHandle::load(&p.run_dir).map_err(|source| VmError::Vmm {
        name: vm.name.clone(),
        source: Box::new(source),
    })?;
    let Some(endpoint) = handle.agent else {
        return Err(VmError::NotRunning {
            name: vm.name.clone(),
        });
    };
    let timeout = || {
        agent_err(banger_agent_client::AgentClientError::Timeout {
            op: "connect",
            after: AGENT_TIMEOUT,
        })
    };
    let turn = tokio::time::timeout(AGENT_TIMEOUT, state.vms.agent_lock_for(&vm.id).lock_owned())
        .await
        .map_err(|_| timeout())?;
    let mut stream = tokio::time::timeout(AGENT_TIMEOUT, endpoint.connect())
        .await
        .map_err(|_| timeout())?
        .map_err(|e| {
            agent_err(banger_agent_client::AgentClientError::Connect {
                path: endpoint.socket().to_owned(),
                source: std::io::Error::other(e.to_string()),
            })
        })?;
    drain_stale(&mut stream).await.map_err(|e| {
        agent_err(banger_agent_client::AgentClientError::Io {
            op: "drain stale answers",
            source: std::io::Error::other(e),
        })
    })?;
    Ok(AgentConn {
        client: AgentClient::from_stream(stream).with_timeout(AGENT_TIMEOUT),
        _turn: turn,
    })
}

/// Discard what arrives on a fresh agent connection before the first
/// request. A virtio-serial port keeps what the guest wrote while no host
/// was connected (the answer to a request whose client died, e.g. a killed
/// daemon) and QEMU hands it to the next client, which would take it for the
/// answer to its own first request. Bounded by [`DRAIN_MAX_BYTES`] and
/// [`DRAIN_MAX_TIME`]: a guest that does not go quiet is an error.
pub async fn drain_stale<S: tokio::io::AsyncRead + Unpin>(
    stream: &mut S,
) -> Result<usize, DrainError> {
    drain_within(stream, DRAIN_QUIET, DRAIN_MAX_TIME).await
}

/// [`drain_stale`] with its quiet period and time bound given.
async fn drain_within<S: tokio::io::AsyncRead + Unpin>(
    stream: &mut S,
    quiet_for: Duration,
    max_time: Duration,
) -> Result<usize, DrainError> {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 4096];
    let mut total = 0usize;
    let deadline = tokio::time::Instant::now() + max_time;
    loop {
        let quiet = (tokio::time::Instant::now() + quiet_for).min(deadline);
        match tokio::time::timeout_at(quiet, stream.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => {
                total += n;
                tracing::debug!(bytes = n, "discarded stale bytes from the agent channel");
                if total > DRAIN_MAX_BYTES {
                    return Err(DrainError::TooMuch { bytes: total });
                }
            }
            Err(_) if tokio::time::Instant::now() >= deadline => {
                return Err(DrainError::NeverQuiet { bytes: total });
            }
            _ => return Ok(total),
        }
    }
}

/// Why a fresh agent connection could not be drained.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DrainError {
    /// More than [`DRAIN_MAX_BYTES`] arrived before the first request.
    #[error(
        "the agent channel sent {bytes} bytes before any request (more than {DRAIN_MAX_BYTES})"
    )]
    TooMuch { bytes: usize },
    /// Bytes kept arriving for [`DRAIN_MAX_TIME`].
    #[error(
        "the agent channel kept sending for {DRAIN_MAX_TIME:?} before any request ({bytes} bytes)"
    )]
    NeverQuiet { bytes: usize },
}

/// The guest's listening sockets, from its agent.
pub async fn vm_ports(state: &Daemon, vm: &VmRecord) -> Result<VmPorts, VmError> {
    let mut client = connect_agent(state, vm).await?;
    let ports = client.ports().await.map_err(|source| VmError::Agent {
        name: vm.name.clone(),
        source,
    })?;
    Ok(VmPorts {
        name: vm.name.clone(),
        ip: vm.ip.map(|ip| ip.to_string()),
        ports,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn a_stale_answer_is_drained_and_then_the_channel_is_quiet() {
        let (mut ours, mut guest) = tokio::net::UnixStream::pair().unwrap();
        guest.write_all(b"{\"stale\":true}\n").await.unwrap();
        assert_eq!(drain_stale(&mut ours).await, Ok(15));
        assert_eq!(drain_stale(&mut ours).await, Ok(0));
    }

    #[tokio::test]
    async fn a_guest_that_floods_the_agent_channel_is_refused_by_size() {
        let (mut ours, mut guest) = tokio::net::UnixStream::pair().unwrap();
        let flood = tokio::spawn(async move {
            let chunk = vec![b'x'; 64 << 10];
            while guest.write_all(&chunk).await.is_ok() {}
        });
        let result = tokio::time::timeout(Duration::from_secs(60), drain_stale(&mut ours))
            .await
            .expect("draining must end on its own");
        assert!(
            matches!(result, Err(DrainError::TooMuch { bytes }) if bytes > DRAIN_MAX_BYTES),
            "{result:?}"
        );
        drop(ours);
        flood.await.unwrap();
    }

    #[tokio::test]
    async fn a_guest_that_trickles_forever_is_refused_by_time() {
        let (mut ours, mut guest) = tokio::net::UnixStream::pair().unwrap();
        // A byte every 20 ms never leaves a quiet second (even on a loaded
        // machine), so only the time bound can end this drain.
        let trickle = tokio::spawn(async move {
            while guest.write_all(b"x").await.is_ok() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
        let drain = drain_within(&mut ours, Duration::from_secs(1), Duration::from_secs(3));
        let result = tokio::time::timeout(Duration::from_secs(60), drain)
            .await
            .expect("draining must end on its own");
        assert!(
            matches!(result, Err(DrainError::NeverQuiet { bytes }) if bytes <= DRAIN_MAX_BYTES),
            "{result:?}"
        );
        drop(ours);
        trickle.await.unwrap();
    }
}
