//! What this host can do: real probes of the CPU architecture, KVM, VMM
//! binaries, host tools, disk space, the root-disk clone strategy and host
//! routes, plus the VMM backend choice (`vmm = auto`).
//!
//! Every probe takes its inputs (device paths, sysfs root, search path,
//! directories) as parameters so tests can point it at fixtures, and
//! [`ProbeEnv::host`] supplies the real ones used by default. [`checks`] turns
//! probe results into the [`Check`] rows `banger doctor` prints.

mod backend;
pub mod checks;
mod disk;
mod kvm;
mod programs;
mod routes;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use backend::{
    choose_backend, choose_backend_in, decide_backend, Accel, Backend, BackendChoice, BackendFacts,
    BackendUnavailable,
};
pub use checks::{host_checks, Check, HostCheckInputs, StateDirOwner, Status};
pub use disk::{
    free_space, parse_dm_target_names, probe_clone_strategy, probe_device_mapper, probe_seek_hole,
    try_reflink, CloneProbe, CloneStrategy, DmState, FreeSpace, ReflinkOutcome, SeekProbe,
    SCRATCH_PREFIX,
};
pub use kvm::{machine_arch, nested_pvm_loaded, probe_kvm, KvmDevice, KvmState, KVM_API_VERSION};
pub use programs::{
    locate_program, parse_e2fsprogs_version, parse_firecracker_version, parse_qemu_version,
    program_version, search_path_from, HostTool, Version, HOST_TOOLS, REPRODUCIBLE_E2FSPROGS,
};
pub use routes::{
    nets_overlap, overlapping_routes, parse_ip_json_routes, parse_proc_net_route, read_host_routes,
    HostRoute, RouteSource,
};

/// Errors of the host probes, each naming what failed and on which input.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("cannot run {program}: {source}")]
    Spawn {
        program: PathBuf,
        source: std::io::Error,
    },
    #[error("{program} did not finish within {secs} s and was killed")]
    Timeout { program: PathBuf, secs: u64 },
    #[error("{program} exited with {status} and printed nothing usable")]
    NoOutput {
        program: PathBuf,
        status: std::process::ExitStatus,
    },
    #[error("{program} is not in PATH (nor in the sbin directories)")]
    NotInPath { program: String },
    #[error("configured {program} {path} is not usable: {reason}")]
    ConfiguredUnusable {
        program: String,
        path: PathBuf,
        reason: String,
    },
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{op} on {path}: {errno}")]
    Sys {
        op: &'static str,
        path: PathBuf,
        errno: nix::errno::Errno,
    },
    #[error("cannot parse routes from {source_name}: {message}")]
    Routes {
        source_name: String,
        message: String,
    },
}

impl ProbeError {
    fn io(op: &'static str, path: &Path, source: std::io::Error) -> ProbeError {
        ProbeError::Io {
            op,
            path: path.to_owned(),
            source,
        }
    }

    fn sys(op: &'static str, path: &Path, errno: nix::errno::Errno) -> ProbeError {
        ProbeError::Sys {
            op,
            path: path.to_owned(),
            errno,
        }
    }
}

/// The host inputs the probes read. [`ProbeEnv::host`] is the real host;
/// tests replace single fields with fixture paths.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeEnv {
    /// The KVM device (`/dev/kvm`).
    pub dev_kvm: PathBuf,
    /// Root of sysfs (`/sys`); `module/kvm_pvm` and `module/dm_snapshot` are read below it.
    pub sys_root: PathBuf,
    /// The device-mapper control node (`/dev/mapper/control`).
    pub dm_control: PathBuf,
    /// The running kernel's module directory (`/lib/modules/$(uname -r)`).
    pub modules_dir: PathBuf,
    /// IPv4 routing table in procfs (`/proc/net/route`), used when `ip` is missing.
    pub proc_net_route: PathBuf,
    /// Directories searched for programs, in order.
    pub search_path: Vec<PathBuf>,
}

impl ProbeEnv {
    /// The real host: fixed device and procfs paths, `$PATH` plus the sbin
    /// directories (see [`search_path_from`]).
    pub fn host() -> ProbeEnv {
        let release = nix::sys::utsname::uname()
            .map(|u| u.release().to_string_lossy().into_owned())
            .unwrap_or_default();
        ProbeEnv {
            dev_kvm: PathBuf::from("/dev/kvm"),
            sys_root: PathBuf::from("/sys"),
            dm_control: PathBuf::from("/dev/mapper/control"),
            modules_dir: Path::new("/lib/modules").join(release),
            proc_net_route: PathBuf::from("/proc/net/route"),
            search_path: search_path_from(std::env::var_os("PATH").as_deref()),
        }
    }
}
