//! The config in force, kept in step with `config.toml` while the daemon runs.
//!
//! Before every API request (and every tick of the background loops) the
//! daemon compares the file's identity (device, inode, size, mtime, ctime)
//! with the one it last read; when it changed, the file is parsed again:
//!
//! - a valid file takes effect at once for the keys read per operation
//!   (`default_image_name`, `[vm_defaults]`, `[[file_sync]]`,
//!   `auto_stop_stale_after`, the poll intervals, `tap_pool_size`,
//!   `catalog_url`); the keys bound at start-up (bridge, addresses, DNS,
//!   VMM choice and binaries, SSH key, log level) keep their start-up value
//!   and are named in a notice saying how to restart;
//! - an invalid file changes nothing: the last good config stays in force,
//!   and the parse error (file, line, key) is a notice until the file is
//!   fixed.
//!
//! Notices travel to the CLI in [`CONFIG_NOTICE_HEADER`] response headers,
//! so the next command of any kind shows them.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use banger_config::Config;
use banger_wire::api::InstallMode;

pub use banger_wire::api::CONFIG_NOTICE_HEADER;

/// What identifies one version of the file: an editor that renames a new
/// file over it changes the inode, an in-place write the size or times.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stamp {
    Missing,
    File {
        dev: u64,
        ino: u64,
        size: u64,
        mtime: (i64, i64),
        ctime: (i64, i64),
    },
}

fn stamp(path: &Path) -> std::io::Result<Stamp> {
    match std::fs::metadata(path) {
        Ok(m) => Ok(Stamp::File {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime: (m.mtime(), m.mtime_nsec()),
            ctime: (m.ctime(), m.ctime_nsec()),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Stamp::Missing),
        Err(e) => Err(e),
    }
}

#[derive(Debug)]
struct State {
    /// The file version last read; `None` until the first check, so a
    /// change between the start-up load and the first request is seen.
    seen: Option<Stamp>,
    in_force: Arc<Config>,
    /// Why the file as it is now is not in force (one line per problem).
    invalid: Option<String>,
    /// Keys whose file value differs from the value bound at start-up.
    restart: Vec<&'static str>,
}

/// The daemon's config: the start-up one, the one in force, and what the
/// user must be told about the file.
#[derive(Debug)]
pub struct LiveConfig {
    path: PathBuf,
    home: PathBuf,
    mode: InstallMode,
    started: Arc<Config>,
    state: Mutex<State>,
}

impl LiveConfig {
    /// `config` was loaded from `path` at start-up (`home`: the owner's, for
    /// `~/`; `mode`: decides the restart command in notices).
    pub fn new(path: PathBuf, home: PathBuf, mode: InstallMode, config: Config) -> LiveConfig {
        let started = Arc::new(config);
        LiveConfig {
            path,
            home,
            mode,
            state: Mutex::new(State {
                seen: None,
                in_force: started.clone(),
                invalid: None,
                restart: Vec::new(),
            }),
            started,
        }
    }

    /// The config as loaded at start-up (what the bridge, the backend and
    /// the guest network plan were made from).
    pub fn started(&self) -> &Config {
        &self.started
    }

    /// The config in force now.
    pub fn current(&self) -> Arc<Config> {
        self.lock().in_force.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Read the file again if it changed since the last check.
    pub fn refresh(&self) {
        // Stamp first, then read: a write between the two leaves an older
        // stamp behind, so the next check reads the file once more.
        let now = match stamp(&self.path) {
            Ok(s) => s,
            Err(e) => {
                let mut st = self.lock();
                let why = format!("cannot read config file {}: {e}", self.path.display());
                if st.invalid.as_deref() != Some(why.as_str()) {
                    tracing::warn!("{why}; keeping the config in force");
                }
                st.invalid = Some(why);
                st.seen = None;
                return;
            }
        };
        let mut st = self.lock();
        if st.seen == Some(now) {
            return;
        }
        st.seen = Some(now);
        match banger_config::load(&self.path, &self.home) {
            Ok(file) => {
                let (in_force, restart) = in_force(&self.started, file);
                if in_force != *st.in_force {
                    tracing::info!(config = %self.path.display(), "config file changed; new settings in force");
                }
                if !restart.is_empty() && restart != st.restart {
                    tracing::warn!(keys = ?restart, "changed config keys need a daemon restart");
                }
                st.in_force = Arc::new(in_force);
                st.invalid = None;
                st.restart = restart;
            }
            Err(e) => {
                tracing::warn!("config file is invalid; keeping the last good config: {e}");
                st.invalid = Some(e.to_string());
            }
        }
    }

    /// What the user should read now, one line per entry: the parse error of
    /// an invalid file, the keys that wait for a restart.
    pub fn notices(&self) -> Vec<String> {
        let st = self.lock();
        let mut out = Vec::new();
        if let Some(why) = &st.invalid {
            out.extend(why.lines().map(str::to_owned));
            out.push(format!(
                "bangerd keeps using the last valid config until {} is fixed \
                 (`banger config check` shows the problems)",
                self.path.display()
            ));
        }
        if !st.restart.is_empty() {
            out.push(format!(
                "{}: {} changed; bangerd uses the old value until restarted: run {}",
                self.path.display(),
                st.restart.join(", "),
                restart_hint(self.mode)
            ));
        }
        out
    }
}

/// The command that restarts the daemon in `mode`.
pub fn restart_hint(mode: InstallMode) -> &'static str {
    match mode {
        InstallMode::PerUser => "`banger daemon stop` (the next command starts it again)",
        InstallMode::System => "`sudo systemctl restart bangerd`",
    }
}

/// The config in force for file contents `file` in a daemon started with
/// `started`, and the keys that differ but only apply after a restart.
///
/// Every field is named (no `..`): a new config key does not compile until
/// someone decides here whether it can change live.
fn in_force(started: &Config, file: Config) -> (Config, Vec<&'static str>) {
    let Config {
        source,
        log_level,
        firecracker_bin,
        qemu_bin,
        vmm,
        ssh_key_path,
        default_image_name,
        auto_stop_stale_after,
        stats_poll_interval,
        metrics_poll_interval,
        serial_log_max,
        bridge_name,
        bridge_ip,
        cidr,
        tap_pool_size,
        default_dns,
        catalog_url,
        insecure_registries,
        vm_defaults,
        file_sync,
        network,
    } = file;
    let mut restart = Vec::new();
    // Bound at start-up: the logger, the backend, the bridge and NAT, the
    // guest network plan, and the key already in every VM's authorized_keys.
    macro_rules! at_start {
        ($field:ident) => {{
            if $field.value != started.$field.value {
                restart.push(stringify!($field));
            }
            started.$field.clone()
        }};
    }
    let config = Config {
        source,
        log_level: at_start!(log_level),
        firecracker_bin: at_start!(firecracker_bin),
        qemu_bin: at_start!(qemu_bin),
        vmm: at_start!(vmm),
        ssh_key_path: at_start!(ssh_key_path),
        bridge_name: at_start!(bridge_name),
        bridge_ip: at_start!(bridge_ip),
        cidr: at_start!(cidr),
        default_dns: at_start!(default_dns),
        // The guest fence is part of the NAT rules made at start-up (and by
        // `banger network setup`), from the settings read then.
        network: if network != started.network {
            restart.push("network");
            started.network.clone()
        } else {
            network
        },
        // Read by each operation or loop tick.
        serial_log_max,
        default_image_name,
        auto_stop_stale_after,
        stats_poll_interval,
        metrics_poll_interval,
        tap_pool_size,
        catalog_url,
        insecure_registries,
        vm_defaults,
        file_sync,
    };
    (config, restart)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn live(dir: &Path, text: &str) -> LiveConfig {
        let path = dir.join("config.toml");
        std::fs::write(&path, text).unwrap();
        let config = banger_config::load(&path, dir).unwrap();
        LiveConfig::new(path, dir.to_owned(), InstallMode::PerUser, config)
    }

    /// Replace the file the way editors do (new inode), so the change is
    /// seen even within one mtime tick.
    fn rewrite(live: &LiveConfig, text: &str) {
        let tmp = live.path.with_extension("tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, &live.path).unwrap();
    }

    #[test]
    fn live_keys_apply_and_start_keys_wait_for_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let live = live(
            dir.path(),
            "default_image_name = \"a\"\ncidr = \"10.9.0.0/24\"\n",
        );
        live.refresh();
        assert!(live.notices().is_empty(), "{:?}", live.notices());
        rewrite(
            &live,
            "default_image_name = \"b\"\ncidr = \"10.8.0.0/24\"\nbridge_name = \"banger7\"\n\
             [vm_defaults]\nvcpu = 3\n[[file_sync]]\nhost = \"~/x\"\nguest = \"~/x\"\n",
        );
        live.refresh();
        let now = live.current();
        assert_eq!(now.default_image_name.value, "b");
        assert_eq!(now.vm_defaults.vcpu, Some(3));
        assert_eq!(now.file_sync.len(), 1);
        assert_eq!(now.cidr.value.to_string(), "10.9.0.0/24", "cidr waits");
        assert_eq!(now.bridge_name.value, "banger0", "bridge_name waits");
        let notices = live.notices();
        assert_eq!(notices.len(), 1, "{notices:?}");
        assert!(
            notices[0].contains("bridge_name, bridge_ip, cidr changed")
                && notices[0].contains("`banger daemon stop`"),
            "{notices:?}"
        );
        // Back to the start-up values: nothing waits any more.
        rewrite(
            &live,
            "default_image_name = \"b\"\ncidr = \"10.9.0.0/24\"\n",
        );
        live.refresh();
        assert!(live.notices().is_empty(), "{:?}", live.notices());
    }

    #[test]
    fn an_invalid_edit_keeps_the_last_good_config_until_fixed() {
        let dir = tempfile::tempdir().unwrap();
        let live = live(dir.path(), "default_image_name = \"a\"\n");
        rewrite(&live, "default_image_name = \"b\"\n");
        live.refresh();
        rewrite(
            &live,
            "default_image_name = \"c\"\n\n[vm_defaults]\nvcpus = 2\n",
        );
        live.refresh();
        assert_eq!(live.current().default_image_name.value, "b");
        let notices = live.notices().join("\n");
        assert!(
            notices.contains("config.toml:4: vm_defaults.vcpus")
                && notices.contains("keeps using the last valid config"),
            "{notices}"
        );
        rewrite(&live, "default_image_name = \"d\"\n");
        live.refresh();
        assert_eq!(live.current().default_image_name.value, "d");
        assert!(live.notices().is_empty(), "{:?}", live.notices());
    }

    #[test]
    fn a_removed_file_means_defaults_and_system_mode_names_systemctl() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        std::fs::write(&path, "default_image_name = \"a\"\nvmm = \"qemu\"\n").unwrap();
        let config = banger_config::load(&path, dir.path()).unwrap();
        let live = LiveConfig::new(path.clone(), dir.path().into(), InstallMode::System, config);
        std::fs::remove_file(&path).unwrap();
        live.refresh();
        assert_eq!(
            live.current().default_image_name.value,
            banger_config::DEFAULT_IMAGE_NAME
        );
        let notices = live.notices();
        assert!(
            notices.len() == 1
                && notices[0].contains("vmm changed")
                && notices[0].contains("sudo systemctl restart bangerd"),
            "{notices:?}"
        );
    }
}
