//! The QEMU backend: the `microvm` machine, KVM or TCG, controlled over QMP.
//!
//! The command line is built as an argument vector (never a shell string).
//! QEMU runs with `-daemonize`: the process we spawn exits once the VM is
//! set up (QMP and agent sockets listening, pidfile written), which is a
//! precise readiness signal, and the VM process itself is reparented away
//! from the daemon in its own session, so it outlives a daemon restart.

pub mod qmp;

use std::path::{Path, PathBuf};
use std::time::Duration;

use banger_host::probe::{Accel, Backend};

use crate::agent::{AgentEndpoint, AGENT_SERIAL_PORT};
use crate::launch::{self, LaunchGuard};
use crate::spec::VmSpec;
use crate::{EarlyExit, FileOp, LaunchOptions, StartupStep, VmState, VmmError, VmmHandle};

pub use qmp::{
    MigrationCapability, MigrationInfo, MigrationStatus, QmpClient, QmpError, QmpStatus,
};

/// File names QEMU gets inside the VM's run directory.
pub const QMP_SOCKET: &str = "qmp.sock";
/// QEMU's pidfile (written by QEMU itself after daemonizing).
pub const PIDFILE: &str = "qemu.pid";
/// Startup output (stderr) of QEMU; empty unless QEMU complained.
pub const VMM_LOG: &str = "qemu.log";

/// How to run QEMU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QemuConfig {
    /// `qemu-system-x86_64`.
    pub binary: PathBuf,
    /// KVM or TCG.
    pub accel: Accel,
}

/// Paths in the run directory that appear on QEMU's command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QemuPaths {
    /// QMP control socket.
    pub qmp: PathBuf,
    /// Pidfile.
    pub pidfile: PathBuf,
}

impl QemuPaths {
    /// The standard names inside `run_dir`.
    pub fn in_run_dir(run_dir: &Path) -> QemuPaths {
        QemuPaths {
            qmp: run_dir.join(QMP_SOCKET),
            pidfile: run_dir.join(PIDFILE),
        }
    }
}

/// The page-aligned initrd copy QEMU gets when the original is not aligned.
pub const PADDED_INITRD: &str = "initrd.padded";

const PAGE: u64 = 4096;

/// QEMU's `microvm` places the initrd so that it ends at the top of guest
/// RAM, but the last page of RAM holds the firmware's ACPI tables (e820
/// reserved). An initrd whose size is not a multiple of 4 KiB spills into
/// that page: the two overwrite each other, the kernel then checksums a
/// garbage table hundreds of MB long (minutes under TCG) and the initrd's
/// tail is corrupt. Aligned, it ends exactly below that page. The kernel's
/// initramfs unpacker skips zero padding, so a zero-padded copy in the run
/// directory is equivalent. Returns the path QEMU should load.
pub fn page_aligned_initrd(initrd: &Path, run_dir: &Path) -> Result<PathBuf, VmmError> {
    let io = |op: FileOp, path: &Path| {
        let path = path.to_owned();
        move |source| VmmError::Io { op, path, source }
    };
    let len = std::fs::metadata(initrd)
        .map_err(io(FileOp::Inspect, initrd))?
        .len();
    if len % PAGE == 0 {
        return Ok(initrd.to_owned());
    }
    let padded = run_dir.join(PADDED_INITRD);
    let tmp = run_dir.join(format!(".{PADDED_INITRD}.tmp"));
    std::fs::copy(initrd, &tmp).map_err(io(FileOp::CopyInitrdTo, &tmp))?;
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&tmp)
        .map_err(io(FileOp::Open, &tmp))?;
    file.set_len(len.div_ceil(PAGE) * PAGE)
        .map_err(io(FileOp::Pad, &tmp))?;
    std::fs::rename(&tmp, &padded).map_err(io(FileOp::RenameIntoPlace, &padded))?;
    Ok(padded)
}

/// The `-cpu` model of TCG guests (see [`qemu_args`]).
pub const TCG_CPU: &str = "max,-cx16,-svm,-vmx";

/// QemuOpts values escape a comma by doubling it.
fn opt(value: &Path) -> String {
    value.to_string_lossy().replace(',', ",,")
}

/// The full argument vector (without the program) for `spec` under `accel`.
pub fn qemu_args(
    accel: Accel,
    spec: &VmSpec,
    paths: &QemuPaths,
    start_paused: bool,
) -> Vec<String> {
    let mut a: Vec<String> = Vec::new();
    let mut push = |items: &[&str]| a.extend(items.iter().map(|s| (*s).to_owned()));
    push(&["-name", &spec.id]);
    // Without the PIT, PVH boot under TCG hangs calibrating the TSC. No
    // 8259 PIC: a PVH boot has no firmware to program it, so its vector
    // base stays 0 and a pending PIT tick arrives as vector 0 the moment
    // the kernel enables interrupts in start_kernel: a "divide error" panic
    // before the console exists (half the boots on a busy host). The guest
    // takes the PIT through the IOAPIC instead.
    push(&["-machine", "microvm,pit=on,pic=off,rtc=on"]);
    match accel {
        Accel::Kvm => push(&["-accel", "kvm", "-cpu", "host"]),
        // No CMPXCHG16B under TCG: Debian 12's QEMU (7.2.22) computes the
        // flags of `cmpxchg16b` wrongly (EFLAGS comes back holding RAX's low
        // bits, so ZF is random). The kernel's SLUB fast path
        // (`this_cpu_cmpxchg16b`) then takes a failed exchange for a
        // successful one, the slab freelists corrupt, and the guest dies
        // within seconds (GPF in kmem_cache_alloc / unlink_anon_vmas).
        // Without the CPUID bit the kernel uses its cmpxchg16b emulation
        // and SLUB its slab lock; under TCG that costs nothing measurable.
        // No SVM/VMX either: nested virtualization under TCG is useless, and
        // with the kernel's modules on hand udev would load kvm_amd/kvm_intel
        // (and kvm) for each vCPU at boot, the slowest modules there are,
        // delaying every other device (the work disk past its timeout).
        Accel::Tcg => push(&["-accel", "tcg", "-cpu", TCG_CPU]),
    }
    push(&[
        "-m",
        &spec.memory_mib.to_string(),
        "-smp",
        &spec.vcpu.to_string(),
    ]);
    // -display none rather than -nographic: -nographic claims stdio, which
    // -daemonize forbids. -no-reboot: a guest reboot ends the VMM, as on Firecracker.
    push(&[
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-no-reboot",
    ]);
    push(&[
        "-chardev",
        &format!("file,id=serial0,path={},append=on", opt(&spec.serial_log)),
        "-serial",
        "chardev:serial0",
    ]);
    push(&["-kernel", &spec.kernel.to_string_lossy()]);
    if let Some(initrd) = &spec.initrd {
        push(&["-initrd", &initrd.to_string_lossy()]);
    }
    push(&["-append", &spec.cmdline]);
    for drive in spec.drives_in_attach_order() {
        let ro = if drive.read_only { ",readonly=on" } else { "" };
        push(&[
            "-drive",
            &format!(
                "id={},file={},format=raw,if=none{ro}",
                drive.id,
                opt(&drive.path)
            ),
            "-device",
            &format!("virtio-blk-device,drive={}", drive.id),
        ]);
    }
    if let Some(net) = &spec.net {
        push(&[
            "-netdev",
            &format!("tap,id=net0,ifname={},script=no,downscript=no", net.tap),
            "-device",
            &format!("virtio-net-device,netdev=net0,mac={}", net.mac),
        ]);
    }
    if let Some(agent) = &spec.agent {
        push(&[
            "-device",
            "virtio-serial-device",
            "-chardev",
            &format!(
                "socket,id=agent,path={},server=on,wait=off",
                opt(&agent.host_socket)
            ),
            "-device",
            &format!("virtserialport,chardev=agent,name={AGENT_SERIAL_PORT}"),
        ]);
    }
    push(&[
        "-chardev",
        &format!("socket,id=qmp,path={},server=on,wait=off", opt(&paths.qmp)),
        "-mon",
        "chardev=qmp,mode=control",
    ]);
    push(&["-pidfile", &paths.pidfile.to_string_lossy(), "-daemonize"]);
    if start_paused {
        push(&["-S"]);
    }
    a
}

/// The argument vector of a VM restored from a snapshot: the VM's own
/// description (its tap, MAC, disks, sockets) exactly as a cold launch gets
/// it, paused (`-S`), waiting for `migrate-incoming` (`-incoming defer`).
/// QEMU needs the same machine, devices in the same order and the same RAM
/// size as at save time; the backing files and host-side names may differ.
pub fn restore_args(accel: Accel, spec: &VmSpec, paths: &QemuPaths) -> Vec<String> {
    let mut a = qemu_args(accel, spec, paths, true);
    a.extend(["-incoming".to_owned(), "defer".to_owned()]);
    a
}

/// How long saving or loading a snapshot may take: about 1.4 s for 1 GiB
/// under TCG here, on a busy disk much longer.
pub const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(300);

fn mapped_ram_on() -> Vec<MigrationCapability> {
    vec![MigrationCapability {
        capability: qmp::MAPPED_RAM.to_owned(),
        state: true,
    }]
}

/// Pause the VM behind `qmp`, write its RAM and device state to `path`
/// (created by QEMU; mapped-ram, so sparse) and wait until it is complete.
/// The VM stays paused; the caller quits it.
pub async fn save_to_file(qmp: &mut QmpClient, path: &Path) -> Result<MigrationInfo, QmpError> {
    qmp.stop().await?;
    qmp.set_migration_capabilities(mapped_ram_on()).await?;
    qmp.migrate_to_file(path).await?;
    qmp.wait_migration("migrate", SNAPSHOT_TIMEOUT).await
}

/// Load `path` into a QEMU started with [`restore_args`] and wait until the
/// load completed; the VM is then paused (`cont` runs it).
pub async fn load_from_file(qmp: &mut QmpClient, path: &Path) -> Result<MigrationInfo, QmpError> {
    // The destination reads the file's layout only with the capability set.
    qmp.set_migration_capabilities(mapped_ram_on()).await?;
    qmp.migrate_incoming_from_file(path).await?;
    qmp.wait_migration("migrate-incoming", SNAPSHOT_TIMEOUT)
        .await
}

/// Map QEMU's run state to the backend-neutral one.
pub fn map_status(status: &str) -> VmState {
    match status {
        "prelaunch" => VmState::NotStarted,
        "running" => VmState::Running,
        "shutdown" => VmState::Shutdown,
        "internal-error" | "guest-panicked" | "io-error" => VmState::Crashed,
        _ => VmState::Paused,
    }
}

/// How long the daemonizing QEMU may take to set the VM up.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);

/// Start QEMU for `spec` and return its handle (see [`crate::Vmm::launch`]).
pub(crate) async fn launch(
    cfg: &QemuConfig,
    reason: &str,
    spec: &VmSpec,
    opts: &LaunchOptions,
    restore_from: Option<&Path>,
) -> Result<VmmHandle, VmmError> {
    let paths = QemuPaths::in_run_dir(&spec.run_dir);
    let vmm_log = spec.run_dir.join(VMM_LOG);
    launch::remove_stale_socket(&paths.qmp)?;
    if let Some(agent) = &spec.agent {
        launch::remove_stale_socket(&agent.host_socket)?;
    }
    launch::remove_file_if_exists(&paths.pidfile)?;
    let mut spec = spec.clone();
    if let Some(initrd) = &spec.initrd {
        spec.initrd = Some(page_aligned_initrd(initrd, &spec.run_dir)?);
    }
    let spec = &spec;
    let log = launch::create_truncated(&vmm_log)?;
    let log_err = log.try_clone().map_err(|source| VmmError::Io {
        op: FileOp::DuplicateHandleOf,
        path: vmm_log.clone(),
        source,
    })?;
    let args = match restore_from {
        Some(_) => restore_args(cfg.accel, spec, &paths),
        None => qemu_args(cfg.accel, spec, &paths, opts.start_paused),
    };
    tracing::debug!(binary = %cfg.binary.display(), ?args, "starting QEMU");
    let mut cmd = tokio::process::Command::new(&cfg.binary);
    cmd.args(&args)
        .stdin(std::process::Stdio::null())
        .stdout(log)
        .stderr(log_err)
        .kill_on_drop(true);
    let mut child = cmd.spawn().map_err(|source| VmmError::Spawn {
        binary: cfg.binary.clone(),
        source,
    })?;
    let status = match tokio::time::timeout(STARTUP_TIMEOUT, child.wait()).await {
        Ok(Ok(status)) => status,
        Ok(Err(source)) => {
            return Err(VmmError::Spawn {
                binary: cfg.binary.clone(),
                source,
            })
        }
        Err(_) => {
            // kill_on_drop ends the still-daemonizing parent.
            return Err(VmmError::StartupTimeout {
                binary: cfg.binary.clone(),
                waited_for: StartupStep::SetUp,
                secs: STARTUP_TIMEOUT.as_secs(),
            });
        }
    };
    if !status.success() {
        return Err(VmmError::ExitedEarly {
            binary: cfg.binary.clone(),
            status: EarlyExit::Status(status),
            output: launch::tail(&vmm_log, 20),
        });
    }
    let pid = launch::read_pidfile(&paths.pidfile)?;
    let start_time = crate::process::process_start_time(pid)?;
    let mut guard = LaunchGuard::new(pid, start_time);
    // The QMP socket listens before QEMU's parent exits; this checks that the
    // VM is in the state the caller asked for.
    let mut qmp = QmpClient::connect(&paths.qmp).await?;
    if let Some(snapshot) = restore_from {
        let loaded = async {
            let info = load_from_file(&mut qmp, snapshot).await?;
            if !opts.start_paused {
                qmp.cont().await?;
            }
            Ok::<_, QmpError>(info)
        }
        .await;
        match loaded {
            Ok(info) => {
                tracing::debug!(pid, ms = ?info.total_time_ms, snapshot = %snapshot.display(), "snapshot loaded");
            }
            Err(e) => {
                // Gone before we return: the caller boots cold next, on the
                // same tap, which this QEMU still holds until it has exited.
                drop(qmp);
                crate::process::kill_and_wait(pid, start_time, STARTUP_TIMEOUT).await?;
                guard.disarm();
                return Err(e.into());
            }
        }
    }
    let status = qmp.query_status().await?;
    tracing::debug!(pid, status = %status.status, "QEMU is up");
    let handle = VmmHandle {
        id: spec.id.clone(),
        backend: Backend::Qemu { accel: cfg.accel },
        backend_reason: reason.to_owned(),
        pid,
        start_time,
        control_socket: paths.qmp,
        agent: spec.agent.as_ref().map(|a| AgentEndpoint::VirtioSerial {
            socket: a.host_socket.clone(),
            port_name: AGENT_SERIAL_PORT.to_owned(),
        }),
        serial_log: spec.serial_log.clone(),
        vmm_log,
        run_dir: spec.run_dir.clone(),
        pidfile: Some(paths.pidfile),
        jail_dir: None,
    };
    handle.save()?;
    guard.disarm();
    Ok(handle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unaligned_initrd_gets_a_zero_padded_copy() {
        let dir = tempfile::tempdir().unwrap();
        let aligned = dir.path().join("aligned");
        std::fs::write(&aligned, vec![7u8; 8192]).unwrap();
        assert_eq!(page_aligned_initrd(&aligned, dir.path()).unwrap(), aligned);

        let odd = dir.path().join("odd");
        std::fs::write(&odd, vec![7u8; 5000]).unwrap();
        let padded = page_aligned_initrd(&odd, dir.path()).unwrap();
        assert_eq!(padded, dir.path().join(PADDED_INITRD));
        let bytes = std::fs::read(&padded).unwrap();
        assert_eq!(bytes.len(), 8192);
        assert!(bytes[..5000].iter().all(|b| *b == 7));
        assert!(bytes[5000..].iter().all(|b| *b == 0));
        assert_eq!(
            std::fs::read(&odd).unwrap().len(),
            5000,
            "original untouched"
        );
    }
}
