//! The VM bookkeeping the daemon context holds: settings from the config,
//! the VMM launcher, per-VM locks, agent samples and the tap pool. Nothing
//! here runs an operation; `ops`, `recover` and `info` do, through the
//! context.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use banger_config::Config;
use banger_vm::netplan::NetPlan;
use banger_vmm::Vmm;
use banger_wire::vmm::CloneStrategy;

use super::tap_pool;

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
    /// Settings from `live`, the launcher of the backend `choice` (made from
    /// the start-up config; printed once in the log and in `daemon status`)
    /// and the guest network plan.
    pub fn new(
        live: crate::live_config::LiveConfig,
        choice: &banger_host::probe::BackendChoice,
    ) -> VmManager {
        let config = live.started();
        let vmm = Vmm::from_choice(choice).map_err(|e| e.to_string());
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
