//! `[vm_defaults]` resolution: the config wins, else host heuristics, never
//! below the built-in floors.

use std::path::Path;

use crate::{Config, Provenance, Setting};

/// Fewest vCPUs a VM gets.
pub const MIN_VCPU: u32 = 1;
/// Least memory a VM gets, in MiB.
pub const MIN_MEMORY_MIB: u64 = 512;
/// Smallest root disk, in bytes.
pub const MIN_DISK_BYTES: u64 = 1 << 30;
/// Root disk size when `vm_defaults.disk_size` is unset.
pub const DEFAULT_DISK_BYTES: u64 = 8 << 30;
/// Most vCPUs the host heuristic (a quarter of the host's CPUs) gives.
pub const HOST_MAX_VCPU: u32 = 4;
/// Most memory the host heuristic (an eighth of the host's RAM) gives, in MiB.
pub const HOST_MAX_MEMORY_MIB: u64 = 8 << 10;

const MIB: u64 = 1 << 20;

/// What the heuristics need to know about the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostFacts {
    /// CPUs this process may use.
    pub cpus: u32,
    /// Total RAM (0 when unknown).
    pub mem_bytes: u64,
}

impl HostFacts {
    /// Read the real host: `available_parallelism` and `MemTotal` from
    /// `/proc/meminfo`. Unknown facts fall back to 1 CPU and 0 bytes, which
    /// the floors then cover.
    pub fn detect() -> HostFacts {
        let cpus = std::thread::available_parallelism()
            .map_or(1, |n| u32::try_from(n.get()).unwrap_or(u32::MAX));
        let mem_bytes = std::fs::read_to_string(Path::new("/proc/meminfo"))
            .ok()
            .and_then(|text| mem_total(&text))
            .unwrap_or(0);
        HostFacts { cpus, mem_bytes }
    }
}

/// `MemTotal` in bytes from the text of `/proc/meminfo`.
fn mem_total(meminfo: &str) -> Option<u64> {
    banger_fs::proc::meminfo_bytes(meminfo, "MemTotal").ok()
}

/// The resolved size of a new VM, each value with its provenance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmDefaults {
    pub vcpu: Setting<u32>,
    pub memory_mib: Setting<u64>,
    pub disk_bytes: Setting<u64>,
}

/// Resolve `[vm_defaults]`: a configured value wins; otherwise vCPU is a
/// quarter of the host's CPUs (at most 4) and memory an eighth of its RAM (at
/// most 8 GiB), with provenance `host`; disk is 8 GiB built in. Anything
/// below a floor becomes the floor, with provenance `built-in`.
pub fn resolve_vm_defaults(cfg: &Config, host: &HostFacts) -> VmDefaults {
    let vm = &cfg.vm_defaults;
    let vcpu = pick(vm.vcpu, (host.cpus / 4).min(HOST_MAX_VCPU), MIN_VCPU);
    let memory_mib = pick(
        vm.memory_mib,
        (host.mem_bytes / 8 / MIB).min(HOST_MAX_MEMORY_MIB),
        MIN_MEMORY_MIB,
    );
    let disk_bytes = match vm.disk_size {
        Some(d) if d >= MIN_DISK_BYTES => Setting::config(d),
        Some(_) => Setting::built_in(MIN_DISK_BYTES),
        None => Setting::built_in(DEFAULT_DISK_BYTES),
    };
    VmDefaults {
        vcpu,
        memory_mib,
        disk_bytes,
    }
}

fn pick<T: Ord + Copy>(configured: Option<T>, from_host: T, floor: T) -> Setting<T> {
    match configured {
        Some(v) if v >= floor => Setting::config(v),
        _ if from_host >= floor => Setting {
            value: from_host,
            provenance: Provenance::Host,
        },
        _ => Setting::built_in(floor),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(vcpu: Option<u32>, memory_mib: Option<u64>, disk_size: Option<u64>) -> Config {
        let mut c = Config::defaults(Path::new("/home/a"));
        c.vm_defaults = crate::VmDefaultsConfig {
            vcpu,
            memory_mib,
            disk_size,
        };
        c
    }

    const GIB: u64 = 1 << 30;

    #[test]
    fn config_wins_over_host() {
        let host = HostFacts {
            cpus: 64,
            mem_bytes: 256 * GIB,
        };
        let r = resolve_vm_defaults(&cfg(Some(6), Some(3000), Some(20 * GIB)), &host);
        assert_eq!(r.vcpu, Setting::config(6));
        assert_eq!(r.memory_mib, Setting::config(3000));
        assert_eq!(r.disk_bytes, Setting::config(20 * GIB));
    }

    #[test]
    fn host_heuristics_are_capped() {
        let host = HostFacts {
            cpus: 64,
            mem_bytes: 256 * GIB,
        };
        let r = resolve_vm_defaults(&cfg(None, None, None), &host);
        assert_eq!(
            r.vcpu,
            Setting {
                value: 4,
                provenance: Provenance::Host
            }
        );
        assert_eq!(
            r.memory_mib,
            Setting {
                value: 8192,
                provenance: Provenance::Host
            }
        );
        assert_eq!(r.disk_bytes, Setting::built_in(8 * GIB));
    }

    #[test]
    fn host_heuristics_scale_below_the_caps() {
        let host = HostFacts {
            cpus: 8,
            mem_bytes: 16 * GIB,
        };
        let r = resolve_vm_defaults(&cfg(None, None, None), &host);
        assert_eq!(
            r.vcpu,
            Setting {
                value: 2,
                provenance: Provenance::Host
            }
        );
        assert_eq!(
            r.memory_mib,
            Setting {
                value: 2048,
                provenance: Provenance::Host
            }
        );
    }

    #[test]
    fn small_hosts_get_the_floors() {
        let host = HostFacts {
            cpus: 2,
            mem_bytes: 2 * GIB,
        };
        let r = resolve_vm_defaults(&cfg(None, None, None), &host);
        assert_eq!(r.vcpu, Setting::built_in(MIN_VCPU));
        assert_eq!(r.memory_mib, Setting::built_in(MIN_MEMORY_MIB));
        let unknown = HostFacts {
            cpus: 0,
            mem_bytes: 0,
        };
        let r = resolve_vm_defaults(&cfg(None, None, None), &unknown);
        assert_eq!(r.vcpu, Setting::built_in(1));
        assert_eq!(r.memory_mib, Setting::built_in(512));
    }

    #[test]
    fn configured_values_below_the_floor_never_win() {
        // load() rejects these; a Config built in code must still not go below.
        let host = HostFacts {
            cpus: 1,
            mem_bytes: GIB,
        };
        let r = resolve_vm_defaults(&cfg(Some(0), Some(10), Some(GIB / 2)), &host);
        assert_eq!(r.vcpu, Setting::built_in(1));
        assert_eq!(r.memory_mib, Setting::built_in(512));
        assert_eq!(r.disk_bytes, Setting::built_in(MIN_DISK_BYTES));
    }

    #[test]
    fn meminfo_parsing() {
        let text = "MemTotal:       16303588 kB\nMemFree:         1234 kB\n";
        assert_eq!(mem_total(text), Some(16303588 * 1024));
        assert_eq!(mem_total("MemFree: 1 kB\n"), None);
        assert_eq!(mem_total("MemTotal: x kB\n"), None);
    }

    #[test]
    fn detect_reads_this_host() {
        let h = HostFacts::detect();
        assert!(h.cpus >= 1);
        let expected = mem_total(&std::fs::read_to_string("/proc/meminfo").unwrap()).unwrap();
        assert_eq!(h.mem_bytes, expected);
    }
}
