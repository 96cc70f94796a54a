//! Keeping records true while VMMs live on their own: re-adoption when the
//! daemon starts, a watcher per running VMM that notices it exit, and the
//! `auto_stop_stale_after` sweep.
//!
//! VMMs run in their own session and outlive `bangerd`. A record that says
//! a VM runs is re-adopted only when its VMM is still the same process (pid
//! *and* start time, `/proc/PID/stat` field 22), so a recycled pid is never
//! mistaken for the VM; otherwise the VM is recorded stopped and its tap and
//! lease are given back.
//!
//! The daemon may have been SIGKILLed at any step, so recovery also:
//! rolls back a create that had not finished and finishes a delete that had
//! begun (the record's [`Pending`] says which), stops a VM whose start was
//! interrupted, kills every VMM process that names one of our VMs on its
//! command line but is not the one re-adopted (launched before its pid was
//! recorded), and removes VM and run directories no record owns and taps on
//! the bridge no record holds (a pool tap made, or taken, just before the
//! kill; the new pool numbers from 0 again and would never reuse it).

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use banger_state::{VmRecord, VmState};
use banger_vmm::process::is_same_process;
use banger_vmm::VmmHandle;

use super::ops::{self, kill_strays, release_runtime, watch_exit};
use super::paths::{self, VmPaths};
use super::{Pending, VmExtra};
use crate::context::Daemon;

/// Bring every VM record in line with the processes that really run; call
/// once at daemon start, before serving. Re-adopted VMs get an exit watcher.
pub async fn recover(state: &Arc<Daemon>) {
    let vms = match state.db().list_vms() {
        Ok(v) => v,
        Err(e) => {
            tracing::error!("cannot list VMs to recover them: {e}");
            return;
        }
    };
    for vm in &vms {
        if let Err(e) = recover_one(state, vm).await {
            tracing::error!(vm = %vm.name, "recovery failed: {e}");
        }
    }
    let ids: Vec<&str> = vms.iter().map(|v| v.id.as_str()).collect();
    remove_orphans(state, &ids).await;
    let held: Vec<&str> = vms.iter().filter_map(|v| v.tap.as_deref()).collect();
    remove_stray_taps(state, &held).await;
    crate::ssh_config::refresh(state);
    crate::dns::ensure_if_bridge(state).await;
}

async fn recover_one(state: &Arc<Daemon>, vm: &VmRecord) -> Result<(), super::VmError> {
    if let Some(pending) = VmExtra::from_json(&vm.spec).pending {
        let what = match pending {
            Pending::Create => "rolling back its interrupted create",
            Pending::Delete => "finishing its interrupted delete",
        };
        tracing::warn!(vm = %vm.name, "bangerd stopped in the middle of an operation; {what}");
        return ops::purge(state, &vm.id).await;
    }
    let p = VmPaths::new(&state.layout, &vm.id);
    let alive = match (vm.vmm_pid, vm.vmm_start_time) {
        (Some(pid), Some(start)) => is_same_process(pid, start),
        _ => false,
    };
    let handle = VmmHandle::load(&p.run_dir)
        .ok()
        .filter(|h| Some(h.pid) == vm.vmm_pid && Some(h.start_time) == vm.vmm_start_time);
    match vm.state {
        VmState::Running if alive => {
            let Some(handle) = handle else {
                // Alive but without its handle we cannot control it: stop it
                // rather than leave an unmanageable VM running.
                tracing::warn!(vm = %vm.name, "VMM {:?} runs but its handle in {} is gone; stopping it", vm.vmm_pid, p.run_dir.display());
                return release_runtime(
                    state,
                    &vm.id,
                    VmState::Stopped,
                    Some("bangerd lost the VMM's handle and stopped it".into()),
                )
                .await;
            };
            kill_strays(&vm.id, &vm.name, Some((handle.pid, handle.start_time))).await?;
            tracing::info!(vm = %vm.name, pid = handle.pid, "re-adopted running VM");
            watch_exit(state.clone(), vm.name.clone(), vm.id.clone(), &handle);
            Ok(())
        }
        VmState::Running | VmState::Starting | VmState::Stopping => {
            let why = match vm.state {
                VmState::Stopping => None,
                // Its boot was never seen through (SSH not checked): stop it
                // rather than call a VM of unknown health running.
                VmState::Starting => {
                    tracing::info!(vm = %vm.name, "bangerd stopped while the VM was starting; stopping it");
                    Some(format!(
                        "bangerd stopped while {} was starting; start it again with `banger vm start {}`",
                        vm.name, vm.name
                    ))
                }
                _ => {
                    tracing::info!(vm = %vm.name, "VMM exited while bangerd was not running; marking the VM stopped");
                    Some("the VMM exited while bangerd was not running".to_owned())
                }
            };
            release_runtime(state, &vm.id, VmState::Stopped, why).await
        }
        VmState::Created | VmState::Stopped | VmState::Error => {
            // Left over from an interrupted start or stop.
            if vm.tap.is_some() || vm.ip.is_some() || vm.vmm_pid.is_some() {
                release_runtime(state, &vm.id, vm.state, None).await?;
            }
            kill_strays(&vm.id, &vm.name, None).await
        }
    }
}

/// Kill the VMMs of, and remove, VM and run directories that no record owns
/// (`ids`), and clone-strategy probe leftovers. Only entries named like a VM
/// id or a probe's scratch directory are touched.
async fn remove_orphans(state: &Daemon, ids: &[&str]) {
    let run_parent = state.layout.runtime_dir.join("vms");
    for parent in [paths::vms_dir(&state.layout), run_parent] {
        let Ok(entries) = std::fs::read_dir(&parent) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with(banger_host::probe::SCRATCH_PREFIX) {
                // A clone-strategy probe killed with the daemon.
                if let Err(e) = std::fs::remove_dir_all(entry.path()) {
                    tracing::warn!(dir = %entry.path().display(), "cannot remove a probe's leftovers: {e}");
                }
                continue;
            }
            if !is_vm_id(&name) || ids.contains(&name.as_str()) {
                continue;
            }
            tracing::warn!(dir = %entry.path().display(), "removing the directory of a VM that has no record");
            if let Err(e) = kill_strays(&name, &name, None).await {
                tracing::error!(dir = %entry.path().display(), "cannot kill its VMM: {e}");
                continue;
            }
            if let Err(e) = std::fs::remove_dir_all(entry.path()) {
                tracing::error!(dir = %entry.path().display(), "cannot remove it: {e}");
            }
        }
    }
}

/// Delete banger taps on our bridge that no VM record holds (`held`).
async fn remove_stray_taps(state: &Daemon, held: &[&str]) {
    for tap in taps_on_bridge(std::path::Path::new("/sys/class/net"), &state.net.bridge) {
        if held.contains(&tap.as_str()) {
            continue;
        }
        tracing::info!(%tap, "deleting a tap no VM holds (left by an earlier daemon)");
        let req = banger_wire::helper::HelperRequest::DeleteTap { name: tap.clone() };
        if let Err(e) = state.helper.request(&req).await {
            tracing::warn!(%tap, "cannot delete it: {e}");
        }
    }
}

/// Links named `banger-*` under `sys_net` whose bridge master is `bridge`.
fn taps_on_bridge(sys_net: &std::path::Path, bridge: &str) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(sys_net) else {
        return Vec::new();
    };
    let mut taps: Vec<String> = entries
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.starts_with(ops::TAP_PREFIX) || n.starts_with(super::tap_pool::POOL_PREFIX))
        .filter(|n| {
            std::fs::read_link(sys_net.join(n).join("master"))
                .ok()
                .is_some_and(|m| m.file_name().is_some_and(|f| f == bridge))
        })
        .collect();
    taps.sort();
    taps
}

/// Whether `name` looks like a VM id (`identity::new_vm_id`: 32 lowercase hex digits).
fn is_vm_id(name: &str) -> bool {
    name.len() == 32 && name.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// How often the auto-stop loop looks at the config again while
/// `auto_stop_stale_after` is unset.
const UNSET_RECHECK: Duration = Duration::from_secs(10);

/// Stop running VMs with no SSH or session activity for
/// `auto_stop_stale_after` (when set). An established SSH connection from
/// this host to the guest counts as activity. The setting is read again at
/// every tick, so an edit of the config file applies without a restart.
pub async fn auto_stop_loop(state: Arc<Daemon>) {
    loop {
        let tick = match state.vms.config().auto_stop_stale_after.value {
            Some(after) => (after / 10).clamp(Duration::from_secs(1), Duration::from_secs(60)),
            None => UNSET_RECHECK,
        };
        tokio::time::sleep(tick).await;
        // The value after the sleep decides: the user may have changed it.
        state.vms.live_config().refresh();
        let Some(after) = state.vms.config().auto_stop_stale_after.value else {
            continue;
        };
        let Some(running) = running_vms(&state, "auto-stop") else {
            continue;
        };
        let connections = established_peers().await;
        for (vm, verdict) in idle_verdicts(&running, &connections, after) {
            match verdict {
                Idle::Connected => {
                    let _ = state.db().touch_vm(&vm.id);
                }
                Idle::Recent => {}
                Idle::Stale(idle) => {
                    tracing::info!(vm = %vm.name, ?idle, "stopping idle VM (auto_stop_stale_after)");
                    let sink = crate::events::EventSink::discard();
                    if let Err(e) = ops::stop(state.clone(), vm.name.clone(), false, sink).await {
                        tracing::warn!(vm = %vm.name, "auto-stop failed: {e}");
                    }
                }
            }
        }
    }
}

/// The VMs whose record says they run; `None` (logged for the loop named
/// `what`) when the database cannot list them.
fn running_vms(state: &Daemon, what: &str) -> Option<Vec<VmRecord>> {
    match state.db().list_vms() {
        Ok(v) => Some(
            v.into_iter()
                .filter(|v| v.state == VmState::Running)
                .collect(),
        ),
        Err(e) => {
            tracing::warn!("{what}: cannot list VMs: {e}");
            None
        }
    }
}

/// Sample every running VM's agent (health and stats) every
/// `stats_poll_interval`, so `vm show` answers from memory.
pub async fn stats_loop(state: Arc<Daemon>) {
    loop {
        let every = state
            .vms
            .config()
            .stats_poll_interval
            .value
            .max(Duration::from_secs(1));
        tokio::time::sleep(every).await;
        let Some(running) = running_vms(&state, "stats") else {
            continue;
        };
        let ids: Vec<&str> = running.iter().map(|v| v.id.as_str()).collect();
        state.vms.retain_samples(&ids);
        let results = each_within(&running, SAMPLE_TIMEOUT, |vm| {
            super::info::sample_agent(&state, vm)
        })
        .await;
        for (vm, result) in running.iter().zip(results) {
            let failure = match result {
                Some(Ok(_)) => continue,
                Some(Err(e)) => e.to_string(),
                None => format!("no answer within {SAMPLE_TIMEOUT:?}"),
            };
            tracing::debug!(vm = %vm.name, "stats sample failed: {failure}");
            state.vms.set_sample(&vm.id, None);
        }
    }
}

/// How long one VM's stats sample may take (agent lock, connect, drain,
/// two requests) before it counts as failed.
pub const SAMPLE_TIMEOUT: Duration = Duration::from_secs(10);

/// Run `f` for every item at once, each bounded by `limit`: one guest that
/// never answers costs the others nothing. `None` is a timeout; results come
/// in the order of `items`.
pub async fn each_within<'a, T, F, Fut, R>(items: &'a [T], limit: Duration, f: F) -> Vec<Option<R>>
where
    F: Fn(&'a T) -> Fut,
    Fut: std::future::Future<Output = R>,
{
    futures::future::join_all(
        items
            .iter()
            .map(|item| async { tokio::time::timeout(limit, f(item)).await.ok() }),
    )
    .await
}

/// What the auto-stop sweep makes of one running VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Idle {
    /// An SSH connection to it is open: activity now.
    Connected,
    /// Used less than the limit ago.
    Recent,
    /// Unused for this long, at least the limit: stop it.
    Stale(Duration),
}

/// The verdict for each running VM: an established connection from this
/// host to its port 22 counts as activity; otherwise the last recorded
/// activity (or, never used, the last change of its record) decides.
pub fn idle_verdicts<'a>(
    running: &'a [VmRecord],
    connections: &[(Ipv4Addr, u16)],
    after: Duration,
) -> Vec<(&'a VmRecord, Idle)> {
    running
        .iter()
        .map(|vm| {
            if vm.ip.is_some_and(|ip| connections.contains(&(ip, 22))) {
                return (vm, Idle::Connected);
            }
            let idle = vm.last_activity_at.unwrap_or(vm.updated_at).elapsed();
            (
                vm,
                if idle < after {
                    Idle::Recent
                } else {
                    Idle::Stale(idle)
                },
            )
        })
        .collect()
}

/// Remote `(address, port)` of every established IPv4 TCP connection in
/// this network namespace (`/proc/net/tcp`).
async fn established_peers() -> Vec<(Ipv4Addr, u16)> {
    tokio::fs::read_to_string("/proc/net/tcp")
        .await
        .map(|t| parse_proc_net_tcp(&t))
        .unwrap_or_default()
}

/// The remote ends of the ESTABLISHED (`01`) rows of `/proc/net/tcp`;
/// malformed rows are skipped (this only delays an idle stop).
fn parse_proc_net_tcp(text: &str) -> Vec<(Ipv4Addr, u16)> {
    banger_fs::proc::net_rows(text, false)
        .filter_map(Result::ok)
        .filter(|row| row.state == 0x01)
        .filter_map(|row| match row.remote {
            (std::net::IpAddr::V4(addr), port) => Some((addr, port)),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two agent endpoints on real sockets: one served by the real agent
    /// request loop, one that accepts and never answers (a hung guest). Both
    /// are sampled in one round: the silent one times out, and the other is
    /// served while the silent one is still being waited for (sampled one
    /// after another, it would only be reached once the silent one gave up).
    #[tokio::test]
    async fn one_silent_agent_does_not_stall_the_others() {
        use banger_agent_client::AgentClient;
        use banger_vsock_agent::server::{serve_stream, AgentContext};
        use std::sync::Mutex;
        use tokio::io::AsyncReadExt;

        let events = Arc::new(Mutex::new(Vec::new()));
        let dir = tempfile::tempdir().unwrap();
        let answering = dir.path().join("answering.sock");
        let silent = dir.path().join("silent.sock");
        let listener = std::os::unix::net::UnixListener::bind(&answering).unwrap();
        let log = events.clone();
        std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            log.lock().unwrap().push("answering served");
            let mut reader = std::io::BufReader::new(stream.try_clone().unwrap());
            let mut writer = stream;
            let _ = serve_stream(&AgentContext::default(), &mut reader, &mut writer);
        });
        let silent_listener = tokio::net::UnixListener::bind(&silent).unwrap();
        let log = events.clone();
        let hung = tokio::spawn(async move {
            let (mut stream, _) = silent_listener.accept().await.unwrap();
            // Never answer; note when the sampler gives up (EOF).
            let mut buf = [0u8; 1024];
            while stream.read(&mut buf).await.is_ok_and(|n| n > 0) {}
            log.lock().unwrap().push("silent given up");
        });

        // Silent first: sampled one after another, it would delay the other.
        let endpoints = [silent.clone(), answering.clone()];
        let results = tokio::time::timeout(
            Duration::from_secs(120),
            each_within(&endpoints, Duration::from_secs(5), |path| async move {
                // The client's own timeout is far longer than the per-VM
                // bound: only `each_within` can end the silent one.
                let mut client = AgentClient::connect_unix(path)
                    .await?
                    .with_timeout(Duration::from_secs(3600));
                client.health().await
            }),
        )
        .await
        .expect("a round of samples must end");
        assert!(results[0].is_none(), "the silent agent must time out");
        let health = results[1]
            .as_ref()
            .expect("the answering agent is not bounded by the silent one")
            .as_ref()
            .expect("the answering agent answers");
        assert!(!health.version.is_empty());
        hung.await.unwrap();
        assert_eq!(
            *events.lock().unwrap(),
            ["answering served", "silent given up"],
            "the answering agent was only asked after the silent one timed out"
        );
    }

    fn vm(name: &str, ip: u8, idle_secs: i64) -> VmRecord {
        let now = banger_state::Timestamp::now().unix_millis();
        VmRecord {
            id: format!("id-{name}"),
            name: name.into(),
            image: "i".into(),
            kernel: "k".into(),
            state: VmState::Running,
            vcpu: 1,
            memory_mib: 512,
            disk_bytes: 1 << 30,
            ip: Some(Ipv4Addr::new(172, 16, 0, ip)),
            mac: format!("02:00:00:00:00:{ip:02x}"),
            tap: None,
            backend: None,
            vmm_pid: None,
            vmm_start_time: None,
            clone_strategy: None,
            created_at: banger_state::Timestamp::from_unix_millis(0),
            updated_at: banger_state::Timestamp::from_unix_millis(now - 1000),
            last_activity_at: Some(banger_state::Timestamp::from_unix_millis(
                now - idle_secs * 1000,
            )),
            spec: serde_json::Value::Null,
        }
    }

    #[test]
    fn idle_vms_are_stale_unless_someone_is_connected() {
        let vms = [vm("fresh", 2, 5), vm("old", 3, 3600), vm("busy", 4, 3600)];
        let connections = [
            (Ipv4Addr::new(172, 16, 0, 4), 22),
            (Ipv4Addr::new(172, 16, 0, 3), 80),
        ];
        let verdicts: Vec<(&str, Idle)> =
            idle_verdicts(&vms, &connections, Duration::from_secs(600))
                .into_iter()
                .map(|(v, i)| (v.name.as_str(), i))
                .collect();
        assert_eq!(verdicts[0], ("fresh", Idle::Recent));
        assert!(matches!(verdicts[1], ("old", Idle::Stale(d)) if d >= Duration::from_secs(3599)));
        assert_eq!(verdicts[2], ("busy", Idle::Connected));
        // Never used: the record's last change counts.
        let mut never = vm("never", 5, 0);
        never.last_activity_at = None;
        let v = idle_verdicts(std::slice::from_ref(&never), &[], Duration::from_millis(1));
        assert!(matches!(v[0].1, Idle::Stale(_)));
    }

    #[test]
    fn only_banger_taps_on_our_bridge_are_strays() {
        let dir = tempfile::tempdir().unwrap();
        let link = |name: &str, master: Option<&str>| {
            let d = dir.path().join(name);
            std::fs::create_dir(&d).unwrap();
            if let Some(m) = master {
                std::os::unix::fs::symlink(format!("../{m}"), d.join("master")).unwrap();
            }
        };
        link("banger0", None);
        link("banger-t3", Some("banger0"));
        link("banger-p9", Some("banger0"));
        link("banger-p1", Some("other0"));
        link("banger-t4", None);
        link("eth0", Some("banger0"));
        assert_eq!(
            taps_on_bridge(dir.path(), "banger0"),
            ["banger-p9", "banger-t3"]
        );
    }

    #[test]
    fn vm_ids_are_32_lowercase_hex_digits() {
        assert!(is_vm_id(&banger_vm::identity::new_vm_id()));
        for bad in [
            "",
            "..",
            "0123456789abcdef0123456789abcdeF",
            "0123456789abcdef0123456789abcde",
            "tmp",
        ] {
            assert!(!is_vm_id(bad), "{bad}");
        }
    }

    #[test]
    fn proc_net_tcp_lists_established_peers() {
        let text = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
   0: 00000000:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0 100 0 0 10 0\n\
   1: 010010AC:D2F0 020010AC:0016 01 00000000:00000000 02:000A7B1F 00000000     0        0 2 2 0 20 4 30 10 -1\n\
   2: 010010AC:D2F2 030010AC:0050 06 00000000:00000000 03:00001234 00000000     0        0 0 3 0\n";
        assert_eq!(
            parse_proc_net_tcp(text),
            vec![(Ipv4Addr::new(172, 16, 0, 2), 22)]
        );
    }
}
