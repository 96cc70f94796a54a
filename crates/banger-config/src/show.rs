//! The effective configuration as a flat list of keys, for `banger config
//! show` and `banger doctor`.

use std::path::Path;

use toml::Value;

use crate::units::{format_duration, format_size};
use crate::{Config, Provenance, Setting, VmDefaults};

/// One effective key: its config-file name (`vm_defaults.vcpu`), its value
/// written the way the config file would (`"30s"`, `"16G"`; `None` = unset)
/// and where it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct ShownSetting {
    pub key: &'static str,
    pub value: Option<Value>,
    pub provenance: Provenance,
}

impl Config {
    /// Every key in file order, `[vm_defaults]` as resolved in `vm`.
    pub fn effective(&self, vm: &VmDefaults) -> Vec<ShownSetting> {
        fn s(v: impl Into<String>) -> Value {
            Value::String(v.into())
        }
        fn path(p: &Path) -> Value {
            s(p.display().to_string())
        }
        fn int(n: u64) -> Value {
            Value::Integer(i64::try_from(n).unwrap_or(i64::MAX))
        }
        fn row<T>(
            key: &'static str,
            set: &Setting<T>,
            f: impl FnOnce(&T) -> Option<Value>,
        ) -> ShownSetting {
            ShownSetting {
                key,
                value: f(&set.value),
                provenance: set.provenance,
            }
        }
        let file_sync: Vec<Value> = self
            .file_sync
            .iter()
            .map(|e| {
                let mut t = toml::Table::new();
                t.insert("host".into(), path(&e.host));
                t.insert("guest".into(), path(&e.guest));
                if let Some(m) = e.mode {
                    t.insert("mode".into(), s(format!("{m:04o}")));
                }
                Value::Table(t)
            })
            .collect();
        let file_sync_provenance = if self.file_sync.is_empty() {
            Provenance::BuiltIn
        } else {
            Provenance::Config
        };
        vec![
            row("log_level", &self.log_level, |v| Some(s(v))),
            row("firecracker_bin", &self.firecracker_bin, |v| {
                v.as_deref().map(path)
            }),
            row("qemu_bin", &self.qemu_bin, |v| v.as_deref().map(path)),
            row("vmm", &self.vmm, |v| Some(s(v.as_str()))),
            row("ssh_key_path", &self.ssh_key_path, |v| Some(path(v))),
            row("default_image_name", &self.default_image_name, |v| {
                Some(s(v))
            }),
            row("auto_stop_stale_after", &self.auto_stop_stale_after, |v| {
                v.map(|d| s(format_duration(d)))
            }),
            row("stats_poll_interval", &self.stats_poll_interval, |v| {
                Some(s(format_duration(*v)))
            }),
            row("metrics_poll_interval", &self.metrics_poll_interval, |v| {
                Some(s(format_duration(*v)))
            }),
            row("serial_log_max", &self.serial_log_max, |v| {
                Some(s(format_size(*v)))
            }),
            row("bridge_name", &self.bridge_name, |v| Some(s(v))),
            row("bridge_ip", &self.bridge_ip, |v| Some(s(v.to_string()))),
            row("cidr", &self.cidr, |v| Some(s(v.to_string()))),
            row("tap_pool_size", &self.tap_pool_size, |v| {
                Some(int(u64::from(*v)))
            }),
            row("default_dns", &self.default_dns, |v| {
                Some(Value::Array(v.iter().map(|ip| s(ip.to_string())).collect()))
            }),
            row("catalog_url", &self.catalog_url, |v| Some(s(v))),
            row("insecure_registries", &self.insecure_registries, |v| {
                Some(Value::Array(v.iter().map(s).collect()))
            }),
            row("vm_defaults.vcpu", &vm.vcpu, |v| Some(int(u64::from(*v)))),
            row("vm_defaults.memory_mib", &vm.memory_mib, |v| Some(int(*v))),
            row("vm_defaults.disk_size", &vm.disk_bytes, |v| {
                Some(s(format_size(*v)))
            }),
            row(
                "network.allow_host_ports",
                &self.network.allow_host_ports,
                |v| Some(Value::Array(v.iter().map(|p| int(u64::from(*p))).collect())),
            ),
            row(
                "network.allow_guest_to_guest",
                &self.network.allow_guest_to_guest,
                |v| Some(Value::Boolean(*v)),
            ),
            row(
                "network.allow_link_local",
                &self.network.allow_link_local,
                |v| Some(Value::Boolean(*v)),
            ),
            row(
                "network.deny_destinations",
                &self.network.deny_destinations,
                |v| Some(Value::Array(v.iter().map(|n| s(n.to_string())).collect())),
            ),
            ShownSetting {
                key: "file_sync",
                value: Some(Value::Array(file_sync)),
                provenance: file_sync_provenance,
            },
        ]
    }
}

impl ShownSetting {
    /// The value as one line of TOML (`"30s"`, `["1.1.1.1"]`, inline tables
    /// for `file_sync` entries); `None` when unset.
    pub fn value_text(&self) -> Option<String> {
        self.value.as_ref().map(inline_toml)
    }
}

fn inline_toml(v: &Value) -> String {
    match v {
        Value::Array(items) => {
            let items: Vec<String> = items.iter().map(inline_toml).collect();
            format!("[{}]", items.join(", "))
        }
        Value::Table(t) => {
            let fields: Vec<String> = t
                .iter()
                .map(|(k, v)| format!("{k} = {}", inline_toml(v)))
                .collect();
            if fields.is_empty() {
                "{}".to_owned()
            } else {
                format!("{{ {} }}", fields.join(", "))
            }
        }
        other => other.to_string(),
    }
}
