//! Probe results as doctor rows: each [`Check`] has a status, a detail line
//! and, when it is not ok, how to fix it.

use std::path::{Path, PathBuf};

use banger_config::{format_size, resolve_vm_defaults, Config, HostFacts, VmmChoice};
use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::backend::{FIRECRACKER_PROGRAM, QEMU_PROGRAM};
use super::{
    decide_backend, free_space, locate_program, machine_arch, overlapping_routes,
    parse_e2fsprogs_version, parse_firecracker_version, parse_qemu_version, probe_clone_strategy,
    probe_kvm, program_version, read_host_routes, BackendChoice, BackendFacts, CloneStrategy,
    DmState, HostRoute, KvmDevice, KvmState, ProbeEnv, ProbeError, Version, HOST_TOOLS,
    REPRODUCIBLE_E2FSPROGS,
};

/// Below this much free space in the state dir doctor warns.
pub const WARN_FREE_BYTES: u64 = 10 << 30;
/// Below this much free space in the state dir doctor fails.
pub const FAIL_FREE_BYTES: u64 = 2 << 30;

/// Outcome of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    Warn,
    Fail,
    /// Informational: nothing to pass or fail.
    Info,
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Status::Ok => "ok",
            Status::Warn => "warn",
            Status::Fail => "fail",
            Status::Info => "info",
        })
    }
}

/// One row of `banger doctor`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Check {
    /// Stable identifier for scripts (`kvm-usable`, `tool:nft`, ...).
    pub id: String,
    pub title: String,
    pub status: Status,
    /// A failing required check makes doctor exit non-zero.
    pub required: bool,
    pub detail: String,
    /// How to fix it; set for `warn` and `fail`.
    pub fix: Option<String>,
    /// The machine-readable result (a version, a strategy, sizes...), if any.
    pub value: Option<serde_json::Value>,
}

impl Check {
    fn new(id: &str, title: &str, status: Status, detail: String, fix: Option<String>) -> Check {
        Check {
            id: id.to_owned(),
            title: title.to_owned(),
            status,
            required: false,
            detail,
            fix,
            value: None,
        }
    }

    /// A passing check.
    pub fn ok(id: &str, title: &str, detail: impl Into<String>) -> Check {
        Check::new(id, title, Status::Ok, detail.into(), None)
    }

    /// An informational row.
    pub fn info(id: &str, title: &str, detail: impl Into<String>) -> Check {
        Check::new(id, title, Status::Info, detail.into(), None)
    }

    /// A warning with its fix.
    pub fn warn(id: &str, title: &str, detail: impl Into<String>, fix: impl Into<String>) -> Check {
        Check::new(id, title, Status::Warn, detail.into(), Some(fix.into()))
    }

    /// A failure with its fix.
    pub fn fail(id: &str, title: &str, detail: impl Into<String>, fix: impl Into<String>) -> Check {
        Check::new(id, title, Status::Fail, detail.into(), Some(fix.into()))
    }

    /// Mark the check as required (its failure fails doctor).
    pub fn required(mut self) -> Check {
        self.required = true;
        self
    }

    /// Attach the machine-readable result.
    pub fn with_value(mut self, value: serde_json::Value) -> Check {
        self.value = Some(value);
        self
    }

    /// Whether this check makes doctor exit non-zero.
    pub fn blocks(&self) -> bool {
        self.required && self.status == Status::Fail
    }
}

/// Where the state dir sits relative to the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StateDirOwner {
    /// Per-user mode: the caller owns it and doctor may create it.
    Caller,
    /// System mode: owned by the service user; a caller who cannot write it
    /// gets warnings instead of failures.
    Service,
}

/// Everything the host checks read besides the probe environment.
#[derive(Debug, Clone)]
pub struct HostCheckInputs<'a> {
    pub env: &'a ProbeEnv,
    pub config: &'a Config,
    /// The file the config came from (for fix hints), loaded or not.
    pub config_path: &'a Path,
    pub state_dir: &'a Path,
    pub state_dir_owner: StateDirOwner,
    pub host_facts: HostFacts,
}

/// Run every host probe and return its rows, in doctor's order:
/// architecture, KVM, VMM binaries, the backend choice, host tools, the
/// state dir (space, clone strategy), routes and `[vm_defaults]`.
pub fn host_checks(inputs: &HostCheckInputs<'_>) -> Vec<Check> {
    let env = inputs.env;
    let cfg = inputs.config;
    let cfg_file = inputs.config_path.display().to_string();
    let mut checks = vec![check_arch(&machine_arch())];

    let kvm = probe_kvm(&env.dev_kvm, &env.sys_root);
    checks.push(check_kvm_device(&env.dev_kvm, &kvm));
    checks.push(check_kvm_usable(&kvm));

    let fc_bin = cfg.firecracker_bin.value.as_deref();
    let qemu_bin = cfg.qemu_bin.value.as_deref();
    let fc = locate_program(FIRECRACKER_PROGRAM, fc_bin, &env.search_path);
    let qemu = locate_program(QEMU_PROGRAM, qemu_bin, &env.search_path);
    let vmm = cfg.vmm.value;
    checks.push(check_firecracker(
        &fc,
        fc_bin.is_some(),
        vmm,
        &kvm,
        &cfg_file,
    ));
    checks.push(check_qemu(&qemu, qemu_bin.is_some(), &cfg_file));
    let facts = BackendFacts {
        kvm,
        firecracker: fc.map_err(|e| e.to_string()),
        qemu: qemu.map_err(|e| e.to_string()),
    };
    checks.push(check_backend(&decide_backend(vmm, &facts), &cfg_file));

    checks.extend(check_tools(&env.search_path));
    checks.push(check_e2fsprogs(&env.search_path));

    let state_dir = inputs.state_dir;
    let writable = check_state_dir(state_dir, inputs.state_dir_owner);
    let can_write = writable.status == Status::Ok;
    checks.push(writable);
    checks.push(check_free_space(state_dir));
    checks.push(if can_write {
        check_clone_strategy(
            probe_clone_strategy(state_dir, &env.dm_control, &env.sys_root, &env.modules_dir),
            state_dir,
        )
    } else {
        Check::warn(
            "clone-strategy",
            "Root-disk clone strategy",
            format!(
                "not probed: {} is not writable by this user",
                state_dir.display()
            ),
            "run `banger doctor` as the user that owns the state dir (the bangerd owner)",
        )
    });

    checks.push(check_routes(
        read_host_routes(&env.search_path, &env.proc_net_route).map(|(r, _)| r),
        &cfg.cidr.value,
        &cfg.bridge_name.value,
        &cfg_file,
    ));
    checks.push(check_vm_defaults(cfg, &inputs.host_facts));
    checks
}

/// `arch`: banger's guests and VMMs are x86_64 only.
pub fn check_arch(machine: &str) -> Check {
    let title = "CPU architecture";
    if machine == "x86_64" {
        Check::ok("arch", title, "x86_64")
            .with_value(json!(machine))
            .required()
    } else {
        Check::fail(
            "arch",
            title,
            format!("{machine}: banger's images, kernels and VMM setup are x86_64 only"),
            "run banger on an x86_64 host",
        )
        .with_value(json!(machine))
        .required()
    }
}

/// `kvm-device`: `/dev/kvm` exists and opens read-write.
pub fn check_kvm_device(dev_kvm: &Path, kvm: &KvmState) -> Check {
    let title = "KVM device";
    let dev = dev_kvm.display();
    match &kvm.device {
        KvmDevice::Open { api_version } => Check::ok(
            "kvm-device",
            title,
            format!("{dev} opens read-write (KVM API {api_version})"),
        ),
        KvmDevice::Missing => Check::warn(
            "kvm-device",
            title,
            format!("{dev} does not exist; VMs will run under QEMU/TCG (slower)"),
            "enable virtualization (VT-x/AMD-V) in the firmware and load the module \
             (`sudo modprobe kvm_intel` or `kvm_amd`); in a VM, enable nested virtualization",
        ),
        KvmDevice::NotAccessible { error } => Check::warn(
            "kvm-device",
            title,
            format!("{dev}: {error}; VMs will run under QEMU/TCG (slower)"),
            "add yourself to the kvm group: `sudo usermod -aG kvm $USER`, then log in again",
        ),
    }
}

/// `kvm-usable`: KVM can run our guests (not nested PVM).
pub fn check_kvm_usable(kvm: &KvmState) -> Check {
    let title = "KVM usable for guests";
    match kvm.unusable_reason() {
        None => Check::ok(
            "kvm-usable",
            title,
            "yes: Firecracker or QEMU with KVM can run guests",
        )
        .with_value(json!(true)),
        Some(why) if kvm.nested_pvm && matches!(kvm.device, KvmDevice::Open { .. }) => Check::warn(
            "kvm-usable",
            title,
            format!("no: {why}; the QEMU/TCG fallback will be used"),
            "nothing to do for TCG (slower, fully working); for hardware speed run banger on a \
             host with regular (non-PVM) KVM",
        )
        .with_value(json!(false)),
        Some(why) => Check::warn(
            "kvm-usable",
            title,
            format!("no: {why}; the QEMU/TCG fallback will be used"),
            "see the kvm-device check",
        )
        .with_value(json!(false)),
    }
}

fn version_line(bin: &Path, args: &[&str]) -> Result<String, String> {
    program_version(bin, args).map_err(|e| e.to_string())
}

/// `firecracker`: the binary and its version.
pub fn check_firecracker(
    found: &Result<PathBuf, ProbeError>,
    configured: bool,
    vmm: VmmChoice,
    kvm: &KvmState,
    config_file: &str,
) -> Check {
    let (id, title) = ("firecracker", "Firecracker binary");
    match found {
        Ok(bin) => match version_line(bin, &["--version"]) {
            Ok(line) => match parse_firecracker_version(&line) {
                Some(v) => Check::ok(id, title, format!("{} (v{v})", bin.display()))
                    .with_value(json!({ "path": bin, "version": v })),
                None => Check::warn(
                    id,
                    title,
                    format!("{}: unexpected `--version` output {line:?}", bin.display()),
                    "point firecracker_bin at a Firecracker release binary",
                ),
            },
            Err(e) => Check::warn(
                id,
                title,
                format!("{} does not run: {e}", bin.display()),
                "reinstall Firecracker or fix firecracker_bin",
            ),
        },
        Err(e) if configured || matches!(e, ProbeError::ConfiguredUnusable { .. }) => {
            Check::fail(
                id,
                title,
                e.to_string(),
                format!("fix or remove firecracker_bin in {config_file}"),
            )
            .required()
        }
        Err(_) if vmm == VmmChoice::Qemu => {
            Check::info(id, title, "not installed (not needed: vmm = qemu)")
        }
        Err(_) if !kvm.usable() => Check::info(
            id,
            title,
            "not installed (not needed here: Firecracker needs a usable KVM)",
        ),
        Err(e) => Check::warn(
            id,
            title,
            format!("{e}; QEMU will run VMs instead"),
            "install a release binary from https://github.com/firecracker-microvm/firecracker/releases \
             into PATH, or set firecracker_bin",
        ),
    }
}

/// `qemu`: the QEMU system emulator and its version.
pub fn check_qemu(
    found: &Result<PathBuf, ProbeError>,
    configured: bool,
    config_file: &str,
) -> Check {
    let (id, title) = ("qemu", "QEMU binary");
    match found {
        Ok(bin) => match version_line(bin, &["--version"]) {
            Ok(line) => match parse_qemu_version(&line) {
                Some(v) => qemu_version_check(bin, &v),
                None => Check::warn(
                    id,
                    title,
                    format!("{}: unexpected `--version` output {line:?}", bin.display()),
                    "point qemu_bin at qemu-system-x86_64",
                ),
            },
            Err(e) => Check::warn(
                id,
                title,
                format!("{} does not run: {e}", bin.display()),
                "reinstall QEMU: `sudo apt-get install --reinstall qemu-system-x86`",
            ),
        },
        Err(e) if configured || matches!(e, ProbeError::ConfiguredUnusable { .. }) => Check::fail(
            id,
            title,
            e.to_string(),
            format!("fix or remove qemu_bin in {config_file}"),
        )
        .required(),
        Err(e) => Check::warn(
            id,
            title,
            e.to_string(),
            "`sudo apt-get install qemu-system-x86` (on Debian 12 with qemu-utils from \
             backports: `sudo apt-get install -t bookworm-backports qemu-system-x86`)",
        ),
    }
}

/// QEMU 5.2 gave the `microvm` machine ACPI, through which banger's guests
/// find their disks and network (the kernel has no virtio-mmio command-line
/// devices): older ones cannot boot them.
pub const QEMU_FLOOR: Version = Version(5, 2, 0);
/// The oldest QEMU our CI boots guests with: Debian 12's 7.2 (Ubuntu 24.04
/// ships 8.2). Its TCG mis-emulates `cmpxchg16b`, which banger's TCG guests
/// therefore do not get (`-cpu max,-cx16`, crates/banger-vmm/src/qemu).
pub const QEMU_TESTED_FLOOR: Version = Version(7, 2, 0);

/// The `qemu` row for a binary that reports version `v`.
fn qemu_version_check(bin: &Path, v: &str) -> Check {
    let (id, title) = ("qemu", "QEMU binary");
    let value = json!({ "path": bin, "version": v });
    let fix = "install QEMU 7.2 or newer: `sudo apt-get install qemu-system-x86` \
               (Debian 12, Ubuntu 24.04), or point qemu_bin at a newer build";
    match Version::parse_prefix(v) {
        Some(parsed) if parsed < QEMU_FLOOR => Check::fail(
            id,
            title,
            format!(
                "{} ({v}) is older than {QEMU_FLOOR}, whose microvm machine first has the ACPI \
                 tables banger's guests find their devices through",
                bin.display()
            ),
            fix,
        ),
        Some(parsed) if parsed < QEMU_TESTED_FLOOR => Check::warn(
            id,
            title,
            format!(
                "{} ({v}) is older than {QEMU_TESTED_FLOOR}, the oldest QEMU banger is tested with",
                bin.display()
            ),
            fix,
        ),
        _ => Check::ok(id, title, format!("{} ({v})", bin.display())),
    }
    .with_value(value)
}

/// `backend`: what `vmm` resolves to here.
pub fn check_backend(choice: &BackendChoice, config_file: &str) -> Check {
    let (id, title) = ("backend", "VMM backend");
    let value = json!({ "backend": choice.backend.to_string(), "binary": choice.binary });
    match &choice.problem {
        None => Check::ok(id, title, format!("{}: {}", choice.backend, choice.reason)),
        Some(problem) => Check::fail(
            id,
            title,
            format!("{}: {}", choice.backend, choice.reason),
            format!("{problem} (config: {config_file})"),
        ),
    }
    .with_value(value)
    .required()
}

/// `tool:<name>`: each host program of [`HOST_TOOLS`].
pub fn check_tools(search_path: &[PathBuf]) -> Vec<Check> {
    HOST_TOOLS
        .iter()
        .map(|t| {
            let id = format!("tool:{}", t.name);
            let title = format!("{} ({})", t.name, t.package);
            match locate_program(t.name, None, search_path) {
                Ok(p) => Check::ok(&id, &title, format!("{} ({})", p.display(), t.purpose))
                    .with_value(json!(p)),
                Err(_) => {
                    let detail = format!("not found; {}", t.purpose);
                    let fix = format!("sudo apt-get install {}", t.package);
                    if t.required {
                        Check::fail(&id, &title, detail, fix).required()
                    } else {
                        Check::warn(&id, &title, detail, fix)
                    }
                }
            }
        })
        .collect()
}

/// `e2fsprogs`: the mke2fs version (>= 1.47.2 for reproducible `-d TARBALL` builds).
pub fn check_e2fsprogs(search_path: &[PathBuf]) -> Check {
    let (id, title) = ("e2fsprogs", "e2fsprogs version");
    let fix = format!(
        "reproducible image builds (`mkfs.ext4 -d TARBALL`) need e2fsprogs >= {REPRODUCIBLE_E2FSPROGS}; \
         on Debian 12: `sudo apt-get install -t bookworm-backports e2fsprogs`"
    );
    let Ok(mkfs) = locate_program("mkfs.ext4", None, search_path) else {
        return Check::warn(
            id,
            title,
            "mkfs.ext4 not found",
            "sudo apt-get install e2fsprogs",
        );
    };
    match version_line(&mkfs, &["-V"]).map(|l| (parse_e2fsprogs_version(&l), l)) {
        Ok((Some(v), _)) if v >= REPRODUCIBLE_E2FSPROGS => Check::ok(
            id,
            title,
            format!("{v}: reproducible image builds supported"),
        )
        .with_value(json!(v.to_string())),
        Ok((Some(v), _)) => Check::warn(
            id,
            title,
            format!("{v}: VMs work, but locally built images are not byte-reproducible"),
            fix,
        )
        .with_value(json!(v.to_string())),
        Ok((None, line)) => Check::warn(
            id,
            title,
            format!("cannot parse `mkfs.ext4 -V` output {line:?}"),
            fix,
        ),
        Err(e) => Check::warn(id, title, e, fix),
    }
}

/// `state-dir`: the state dir exists (per-user mode: created 0700 if
/// missing) and this user can create files in it.
pub fn check_state_dir(dir: &Path, owner: StateDirOwner) -> Check {
    use std::os::unix::fs::DirBuilderExt;
    let (id, title) = ("state-dir", "State directory writable");
    let shown = dir.display();
    let created = if owner == StateDirOwner::Caller && !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map(|()| true)
    } else {
        Ok(false)
    };
    let probe = created.and_then(|created| tempfile::tempfile_in(dir).map(|_| created));
    match (probe, owner) {
        (Ok(true), _) => Check::ok(id, title, format!("{shown} (created)")).required(),
        (Ok(false), _) => Check::ok(id, title, shown.to_string()).required(),
        (Err(e), StateDirOwner::Caller) => Check::fail(
            id,
            title,
            format!("{shown}: {e}"),
            "make it a writable directory owned by you, or point XDG_STATE_HOME elsewhere",
        )
        .required(),
        (Err(e), StateDirOwner::Service) => Check::warn(
            id,
            title,
            format!("{shown}: {e} (it belongs to the bangerd service user)"),
            "run `banger doctor` as the bangerd owner (or root) to probe the state dir",
        ),
    }
    .with_value(json!(dir))
}

/// `disk-space`: free space where disks and images live.
pub fn check_free_space(dir: &Path) -> Check {
    let (id, title) = ("disk-space", "Free disk in the state dir");
    let free = match free_space(dir) {
        Ok(f) => f,
        Err(e) => {
            return Check::fail(
                id,
                title,
                e.to_string(),
                "make the state dir's filesystem reachable",
            )
            .required()
        }
    };
    let human = banger_wire::units::human_bytes(free.available);
    let detail = format!("{human} free at {}", free.measured_at.display());
    let fix = "free space there, or move the state dir (XDG_STATE_HOME, or the system install's \
               state_dir) to a bigger filesystem";
    let check = if free.available < FAIL_FREE_BYTES {
        Check::fail(
            id,
            title,
            format!("{detail}; at least 2 GiB is needed"),
            fix,
        )
    } else if free.available < WARN_FREE_BYTES {
        Check::warn(
            id,
            title,
            format!("{detail}; under 10 GiB fits only a few VMs"),
            fix,
        )
    } else {
        Check::ok(id, title, detail)
    };
    check.with_value(json!(free.available)).required()
}

/// `clone-strategy`: how root disks are cloned here.
pub fn check_clone_strategy(probe: Result<super::CloneProbe, ProbeError>, dir: &Path) -> Check {
    let (id, title) = ("clone-strategy", "Root-disk clone strategy");
    let probe = match probe {
        Ok(p) => p,
        Err(e) => {
            return Check::fail(
                id,
                title,
                format!("probing {} failed: {e}", dir.display()),
                "make the state dir a local filesystem that supports ordinary file I/O",
            )
            .required()
        }
    };
    let detail = match probe.strategy {
        CloneStrategy::Reflink => "reflink: root disks are instant copy-on-write clones".to_owned(),
        CloneStrategy::DmSnapshot => format!(
            "dm-snapshot: no reflink here ({}); root disks are device-mapper snapshots",
            probe.reflink_error.as_deref().unwrap_or("-")
        ),
        CloneStrategy::SparseCopy => {
            let dm = match &probe.device_mapper {
                Some(DmState::NoControl) | None => "no device-mapper".to_owned(),
                Some(DmState::NotAccessible { error }) => format!("device-mapper: {error}"),
                Some(DmState::NoSnapshotTarget { .. }) => {
                    "device-mapper without the snapshot target".to_owned()
                }
                Some(DmState::Available { .. }) => "device-mapper available".to_owned(),
            };
            let holes = match probe.seek {
                Some(s) if s.holes_detected => "holes are skipped",
                _ => "this filesystem reports no holes, so every byte is copied",
            };
            format!(
                "sparse-copy: no reflink ({}), {dm}; root disks are sparse copies ({holes})",
                probe.reflink_error.as_deref().unwrap_or("-")
            )
        }
    };
    Check::ok(id, title, detail)
        .with_value(json!(probe.strategy.to_string()))
        .required()
}

/// The first network of `cidr`'s size inside the private ranges that no route touches.
fn suggest_free_cidr(cidr: &Ipv4Net, routes: &[HostRoute], bridge: &str) -> Option<Ipv4Net> {
    let prefix = cidr.prefix_len().max(16);
    ["172.16.0.0/12", "10.0.0.0/8", "192.168.0.0/16"]
        .iter()
        .filter_map(|r| r.parse::<Ipv4Net>().ok())
        .filter_map(|range| range.subnets(prefix.max(range.prefix_len())).ok())
        .flatten()
        .find(|n| overlapping_routes(n, routes, bridge).is_empty())
}

/// `cidr-routes`: banger's `cidr` must not overlap a host route (other than
/// its own bridge's).
pub fn check_routes(
    routes: Result<Vec<HostRoute>, ProbeError>,
    cidr: &Ipv4Net,
    bridge: &str,
    config_file: &str,
) -> Check {
    let (id, title) = ("cidr-routes", "Guest network vs host routes");
    let routes = match routes {
        Ok(r) => r,
        Err(e) => {
            return Check::warn(
                id,
                title,
                format!("cannot read host routes: {e}"),
                "sudo apt-get install iproute2",
            )
        }
    };
    let hits = overlapping_routes(cidr, &routes, bridge);
    if hits.is_empty() {
        return Check::ok(id, title, format!("{cidr} overlaps no host route"))
            .with_value(json!([]))
            .required();
    }
    let list: Vec<String> = hits
        .iter()
        .map(|r| format!("{} dev {}", r.dst, r.dev))
        .collect();
    let suggestion = suggest_free_cidr(cidr, &routes, bridge)
        .map(|n| format!(" (e.g. cidr = \"{n}\")"))
        .unwrap_or_default();
    Check::fail(
        id,
        title,
        format!("{cidr} overlaps host route(s): {}", list.join(", ")),
        format!(
            "set `cidr` (and `bridge_ip` inside it) in {config_file} to a network no host \
             route covers{suggestion}"
        ),
    )
    .with_value(json!(list))
    .required()
}

/// `vm-defaults`: the size new VMs get, with provenance.
pub fn check_vm_defaults(cfg: &Config, host: &HostFacts) -> Check {
    let d = resolve_vm_defaults(cfg, host);
    let detail = format!(
        "vcpu {} ({}), memory {} MiB ({}), disk {} ({})",
        d.vcpu.value,
        d.vcpu.provenance,
        d.memory_mib.value,
        d.memory_mib.provenance,
        format_size(d.disk_bytes.value),
        d.disk_bytes.provenance,
    );
    Check::info("vm-defaults", "Effective [vm_defaults]", detail).with_value(json!({
        "vcpu": { "value": d.vcpu.value, "provenance": d.vcpu.provenance },
        "memory_mib": { "value": d.memory_mib.value, "provenance": d.memory_mib.provenance },
        "disk_bytes": { "value": d.disk_bytes.value, "provenance": d.disk_bytes.provenance },
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    #[test]
    fn arch_check() {
        assert_eq!(check_arch("x86_64").status, Status::Ok);
        let c = check_arch("aarch64");
        assert!(c.blocks() && c.fix.is_some() && c.detail.contains("aarch64"));
    }

    #[test]
    fn route_overlap_fails_with_a_suggestion() {
        let routes = vec![
            HostRoute {
                dst: net("172.16.0.0/16"),
                dev: "docker0".into(),
            },
            HostRoute {
                dst: net("172.17.0.0/24"),
                dev: "eth1".into(),
            },
            HostRoute {
                dst: net("172.16.0.0/24"),
                dev: "banger0".into(),
            },
        ];
        let c = check_routes(
            Ok(routes.clone()),
            &net("172.16.0.0/24"),
            "banger0",
            "cfg.toml",
        );
        assert!(c.blocks(), "{c:?}");
        assert!(
            c.detail.contains("172.16.0.0/16 dev docker0"),
            "{}",
            c.detail
        );
        assert!(!c.detail.contains("banger0"), "{}", c.detail);
        let fix = c.fix.unwrap();
        assert!(
            fix.contains("cfg.toml") && fix.contains("172.17.1.0/24"),
            "{fix}"
        );
        let c = check_routes(Ok(routes), &net("10.77.0.0/24"), "banger0", "cfg.toml");
        assert_eq!(c.status, Status::Ok);
        let c = check_routes(
            Err(ProbeError::Routes {
                source_name: "x".into(),
                message: "y".into(),
            }),
            &net("10.77.0.0/24"),
            "banger0",
            "cfg.toml",
        );
        assert_eq!(c.status, Status::Warn);
        assert!(!c.blocks());
    }

    #[test]
    fn free_space_thresholds() {
        // Measured for real; the status must agree with the thresholds.
        let dir = tempfile::tempdir().unwrap();
        let c = check_free_space(dir.path());
        let free = c.value.as_ref().and_then(|v| v.as_u64()).unwrap();
        let want = if free < FAIL_FREE_BYTES {
            Status::Fail
        } else if free < WARN_FREE_BYTES {
            Status::Warn
        } else {
            Status::Ok
        };
        assert_eq!(c.status, want);
    }

    #[test]
    fn state_dir_is_created_or_fails_with_a_fix() {
        let base = tempfile::tempdir().unwrap();
        let dir = base.path().join("state/banger");
        let c = check_state_dir(&dir, StateDirOwner::Caller);
        assert_eq!(c.status, Status::Ok, "{c:?}");
        assert!(c.detail.contains("created"));
        assert_eq!(
            std::fs::read_dir(&dir).unwrap().count(),
            0,
            "probe file left behind"
        );
        let file = base.path().join("file");
        std::fs::write(&file, b"").unwrap();
        let c = check_state_dir(&file.join("banger"), StateDirOwner::Caller);
        assert!(c.blocks() && c.fix.is_some(), "{c:?}");
        let c = check_state_dir(&file.join("banger"), StateDirOwner::Service);
        assert_eq!(c.status, Status::Warn);
        assert!(!file.join("banger").exists());
    }

    #[test]
    fn missing_tools_name_their_debian_package() {
        let empty = tempfile::tempdir().unwrap();
        let checks = check_tools(&[empty.path().to_owned()]);
        assert_eq!(checks.len(), HOST_TOOLS.len());
        for (c, t) in checks.iter().zip(HOST_TOOLS) {
            assert_eq!(c.id, format!("tool:{}", t.name));
            assert_eq!(c.blocks(), t.required);
            assert_eq!(
                c.status,
                if t.required {
                    Status::Fail
                } else {
                    Status::Warn
                }
            );
            assert!(c.fix.as_deref().unwrap().ends_with(t.package), "{c:?}");
        }
    }

    #[test]
    fn qemu_versions_against_the_floors() {
        let bin = Path::new("/usr/bin/qemu-system-x86_64");
        // Debian 12, Ubuntu 24.04, backports: all boot our guests.
        for v in ["7.2.22", "8.2.2", "10.0.2"] {
            let c = qemu_version_check(bin, v);
            assert_eq!(c.status, Status::Ok, "{v}: {c:?}");
            assert_eq!(c.value.as_ref().unwrap()["version"], v);
        }
        let c = qemu_version_check(bin, "6.2.0");
        assert_eq!(c.status, Status::Warn, "{c:?}");
        assert!(c.detail.contains("7.2.0, the oldest"), "{c:?}");
        // Ubuntu 20.04's QEMU: microvm without ACPI.
        let c = qemu_version_check(bin, "4.2.1");
        assert_eq!(c.status, Status::Fail, "{c:?}");
        assert!(c.detail.contains("older than 5.2.0"), "{c:?}");
        assert!(c.fix.as_deref().unwrap().contains("7.2 or newer"), "{c:?}");
    }

    #[test]
    fn configured_binaries_that_are_missing_are_required_failures() {
        let env = ProbeEnv::host();
        let bad = Path::new("/nonexistent/qemu-system-x86_64");
        let c = check_qemu(
            &locate_program(QEMU_PROGRAM, Some(bad), &env.search_path),
            true,
            "c.toml",
        );
        assert!(
            c.blocks() && c.fix.as_deref().unwrap().contains("qemu_bin"),
            "{c:?}"
        );
        let kvm = KvmState {
            device: KvmDevice::Missing,
            nested_pvm: false,
        };
        let fc = locate_program(FIRECRACKER_PROGRAM, Some(bad), &env.search_path);
        let c = check_firecracker(&fc, true, VmmChoice::Auto, &kvm, "c.toml");
        assert!(
            c.blocks() && c.fix.as_deref().unwrap().contains("firecracker_bin"),
            "{c:?}"
        );
        let empty = tempfile::tempdir().unwrap();
        let fc = locate_program(FIRECRACKER_PROGRAM, None, &[empty.path().to_owned()]);
        let c = check_firecracker(&fc, false, VmmChoice::Auto, &kvm, "c.toml");
        assert_eq!(c.status, Status::Info, "{c:?}");
    }

    #[test]
    fn kvm_rows_explain_the_tcg_fallback() {
        let pvm = KvmState {
            device: KvmDevice::Open { api_version: 12 },
            nested_pvm: true,
        };
        let c = check_kvm_usable(&pvm);
        assert_eq!(c.status, Status::Warn);
        assert!(
            c.detail.contains("kvm_pvm") && c.detail.contains("QEMU/TCG"),
            "{}",
            c.detail
        );
        assert!(!c.blocks());
        let denied = KvmState {
            device: KvmDevice::NotAccessible {
                error: "Permission denied".into(),
            },
            nested_pvm: false,
        };
        let c = check_kvm_device(Path::new("/dev/kvm"), &denied);
        assert!(c.fix.unwrap().contains("usermod -aG kvm"));
    }

    #[test]
    fn host_checks_run_for_real_with_unique_ids() {
        let home = tempfile::tempdir().unwrap();
        let cfg = Config::defaults(home.path());
        let env = ProbeEnv::host();
        let state = home.path().join("state");
        let checks = host_checks(&HostCheckInputs {
            env: &env,
            config: &cfg,
            config_path: &home.path().join("config.toml"),
            state_dir: &state,
            state_dir_owner: StateDirOwner::Caller,
            host_facts: HostFacts::detect(),
        });
        let mut ids: Vec<&str> = checks.iter().map(|c| c.id.as_str()).collect();
        for want in [
            "arch",
            "kvm-usable",
            "backend",
            "clone-strategy",
            "cidr-routes",
            "vm-defaults",
        ] {
            assert!(ids.contains(&want), "{want} missing from {ids:?}");
        }
        for c in &checks {
            assert_eq!(
                c.fix.is_some(),
                matches!(c.status, Status::Warn | Status::Fail),
                "{c:?}"
            );
        }
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), checks.len());
        assert_eq!(
            std::fs::read_dir(&state).unwrap().count(),
            0,
            "probe files left behind"
        );
    }
}
