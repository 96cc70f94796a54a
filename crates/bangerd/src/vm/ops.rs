//! The VM lifecycle: create, start, stop, restart, delete.
//!
//! A VM holds its VMM process, tap, IP lease and run dir only while it runs;
//! [`release_runtime`] gives all of them back and is idempotent, so a failed
//! start, a stop, a VMM that died on its own and recovery after a daemon
//! restart all end the same way. [`purge`] additionally removes what a VM
//! holds until deleted (record, directory, `known_hosts` line); a failed
//! create ends in it, so it leaves nothing behind.
//!
//! The record is written before each resource is made (the tap name before
//! the helper creates it, the lease in the database before the VMM runs),
//! so whatever a crash or an error interrupts, the record says what to undo.

use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::fs::DirBuilderExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use banger_config::HostFacts;
use banger_image::Kind;
use banger_state::{CloneStrategy, Timestamp, VmPatch, VmRecord, VmState};
use banger_vm::disk::{self, RootFile};
use banger_vm::identity::{self, KnownHosts};
use banger_vmm::process::Pidfd;
use banger_vmm::{
    Accel, AgentSpec, Backend, DriveSpec, LaunchOptions, NetSpec, ShutdownOutcome, VmSpec,
    VmmHandle,
};
use banger_wire::api::{LogLevel, StreamEvent};
use banger_wire::guest::{GuestConfig, SshHostKey, AGENT_BINARY, GUEST_CONFIG_VERSION};
use banger_wire::helper::{HelperRequest, HelperResponse};
use banger_wire::vm::{VmCreateRequest, VmDeleted, VmInfo};

use super::paths::{self, VmPaths};
use super::request::{self, ResolvedCreate};
use super::{agent_binary, info, Pending, VmError, VmExtra, SSH_USER};
use crate::context::Daemon;
use crate::events::EventSink;
use crate::helper::HelperOpError;

/// How long a guest may take from launch to answering SSH (TCG boots of the
/// minimal image take ~10 s on an idle machine, much longer on a busy one).
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(240);
/// How long a guest gets to power off after the ACPI power button.
pub const STOP_GRACE: Duration = Duration::from_secs(30);
/// The user banger logs in as.
/// Tap devices are `banger-t<N>` (the root helper only touches `banger*` links).
pub const TAP_PREFIX: &str = "banger-t";

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> VmError {
    let path = path.to_owned();
    move |source| VmError::Io { op, path, source }
}

/// Lock the state database (never held across an await).
fn find(state: &Daemon, name: &str) -> Result<VmRecord, VmError> {
    state
        .db()
        .get_vm_by_name(name)?
        .ok_or_else(|| VmError::NotFound {
            name: name.to_owned(),
        })
}

/// The files an image boots from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageArtifacts {
    pub image: String,
    pub rootfs: std::path::PathBuf,
    pub kernel: String,
    pub vmlinux: std::path::PathBuf,
    pub initrd: Option<std::path::PathBuf>,
}

/// The image `name` and its kernel, pulled from the catalog first when
/// either is missing (download progress goes into `sink`). When the pull
/// cannot happen (entry unpublished, catalog unreachable) the error says so
/// and names the local build command; see docs/image-catalog.md.
pub async fn ensure_image(
    state: &Daemon,
    name: &str,
    sink: &EventSink,
) -> Result<ImageArtifacts, VmError> {
    let (kind, what) = match find_image(state, name) {
        Ok(Some(found)) => return Ok(found),
        Ok(None) => (Kind::Image, name.to_owned()),
        Err(VmError::KernelMissing { kernel, .. }) => (Kind::Kernel, kernel),
        Err(e) => return Err(e),
    };
    sink.progress(
        "image",
        format!("{kind} {what} is not installed; pulling it from the catalog"),
    )
    .await;
    match crate::image::pull(state, kind, &what, sink).await {
        Ok(_) => {}
        // Not a catalog name either: say what is missing and how to get it.
        Err(e) if e.is_unknown_name() => {
            return Err(match kind {
                Kind::Image => image_missing(&what),
                Kind::Kernel => VmError::KernelMissing {
                    image: name.to_owned(),
                    kernel: what,
                },
            })
        }
        Err(e) => return Err(VmError::Image(e)),
    }
    find_image(state, name)?.ok_or_else(|| image_missing(name))
}

/// An image that is neither installed nor in the catalog: say how to get
/// it, building from a recipe when banger has one.
fn image_missing(name: &str) -> VmError {
    let recipes = banger_image::recipe::RecipeSet::embedded().names(Kind::Image);
    let hint = if recipes.iter().any(|r| r == name) {
        format!("the catalog has no bundle for it; build it from its recipe with `banger image build {name}`")
    } else {
        format!(
            "banger has no catalog entry or recipe of that name (it can build: {}); \
             `banger image list` shows what is installed, `banger image register` adds your own",
            recipes.join(", ")
        )
    };
    VmError::ImageMissing {
        name: name.to_owned(),
        hint,
    }
}

/// The image `name` (installed in the store or registered) with its
/// kernel, `None` when there is no such image; a missing kernel is an
/// error naming both.
pub fn find_image(state: &Daemon, name: &str) -> Result<Option<ImageArtifacts>, VmError> {
    let Some((rootfs, kernel_name)) = crate::image::lookup_image(state, name)? else {
        return Ok(None);
    };
    let kernel = kernel_artifacts(state, name, &kernel_name)?;
    Ok(Some(ImageArtifacts {
        image: name.to_owned(),
        rootfs,
        kernel: kernel_name,
        vmlinux: kernel.0,
        initrd: kernel.1,
    }))
}

fn kernel_artifacts(
    state: &Daemon,
    image: &str,
    kernel: &str,
) -> Result<(std::path::PathBuf, Option<std::path::PathBuf>), VmError> {
    crate::image::lookup_kernel(state, kernel)?.ok_or_else(|| VmError::KernelMissing {
        image: image.to_owned(),
        kernel: kernel.to_owned(),
    })
}

/// Everything about a create request that can be checked before anything
/// is made: name (valid, not taken), sizes (parsable, memory within host
/// RAM), a usable backend and guest network.
pub fn check_create(state: &Daemon, req: &VmCreateRequest) -> Result<ResolvedCreate, VmError> {
    let mgr = &state.vms;
    let resolved = request::resolve_create(req, &mgr.config(), &HostFacts::detect(), || {
        format!("vm-{}", &identity::new_vm_id()[..6])
    })?;
    if state.db().get_vm_by_name(&resolved.name)?.is_some() {
        return Err(VmError::NameTaken {
            name: resolved.name,
        });
    }
    mgr.vmm.as_ref().map_err(|reason| VmError::NoBackend {
        reason: reason.clone(),
    })?;
    mgr.netplan
        .as_ref()
        .map_err(|reason| VmError::InvalidRequest {
            message: format!("the guest network configuration is unusable: {reason}"),
        })?;
    if !resolved.no_start {
        agent_binary(&state.layout)?;
    }
    Ok(resolved)
}

/// Create a VM (and boot it unless `no_start`), streaming progress. On any
/// failure everything made so far is removed again.
pub async fn create(
    state: Arc<Daemon>,
    resolved: ResolvedCreate,
    sink: EventSink,
) -> Result<VmInfo, VmError> {
    let started = Instant::now();
    sink.send(StreamEvent::Log {
        level: LogLevel::Info,
        message: request::spec_line(&resolved.size),
    })
    .await;
    let lock = state.vms.lock_for(&resolved.name);
    let _guard = lock.lock().await;
    sink.progress("image", format!("using image {}", resolved.image))
        .await;
    let image = ensure_image(&state, &resolved.image, &sink).await?;

    let id = identity::new_vm_id();
    let record = new_record(&id, &resolved, &image);
    insert_record(&state, &record)?;
    let result = async {
        define(&state, &record, &image, &sink).await?;
        if !resolved.no_start {
            boot_or_release(&state, &id, &sink).await?;
        }
        set_pending(&state, &id, None)
    }
    .await;
    if let Err(e) = result {
        roll_back_create(&state, &record, &sink).await;
        return Err(e);
    }
    let vm = find(&state, &record.name)?;
    crate::ssh_config::refresh(&state);
    let ready = if resolved.no_start {
        format!("{} created (not started)", vm.name)
    } else {
        format!(
            "{} is up at {} ({:.1} s)",
            vm.name,
            vm.ip.map(|ip| ip.to_string()).unwrap_or_default(),
            started.elapsed().as_secs_f64()
        )
    };
    sink.progress("ready", ready).await;
    Ok(info::vm_info(&vm))
}

/// The record of a VM being created: `Created`, and pending from the first
/// write on, so a daemon killed before the create ends has recovery roll it
/// back (record, disks, lease, tap, VMM).
fn new_record(id: &str, resolved: &ResolvedCreate, image: &ImageArtifacts) -> VmRecord {
    let now = Timestamp::now();
    let extra = VmExtra {
        size: Some(resolved.size.clone()),
        pending: Some(Pending::Create),
        ..VmExtra::default()
    };
    VmRecord {
        id: id.to_owned(),
        name: resolved.name.clone(),
        image: image.image.clone(),
        kernel: image.kernel.clone(),
        state: VmState::Created,
        vcpu: resolved.size.vcpu,
        memory_mib: resolved.size.memory_mib,
        disk_bytes: resolved.size.disk_bytes,
        ip: None,
        mac: identity::vm_mac(id).to_string(),
        tap: None,
        backend: None,
        vmm_pid: None,
        vmm_start_time: None,
        clone_strategy: None,
        created_at: now,
        updated_at: now,
        last_activity_at: None,
        spec: extra.to_json(),
    }
}

/// Insert a new VM's record; a name in use is [`VmError::NameTaken`].
fn insert_record(state: &Daemon, record: &VmRecord) -> Result<(), VmError> {
    state.db().insert_vm(record).map_err(|e| match e {
        banger_state::StateError::AlreadyExists { ref field, .. } if field == "name" => {
            VmError::NameTaken {
                name: record.name.clone(),
            }
        }
        other => VmError::State(other),
    })
}

/// Remove everything a failed create made; a failure of that is reported
/// (the record stays pending, so recovery tries again).
async fn roll_back_create(state: &Daemon, record: &VmRecord, sink: &EventSink) {
    sink.progress(
        "rollback",
        format!("create failed, removing {}", record.name),
    )
    .await;
    if let Err(undo) = purge(state, &record.id).await {
        tracing::error!(vm = %record.name, "rolling back a failed create failed: {undo}");
        sink.send(StreamEvent::Log {
            level: LogLevel::Warn,
            message: format!("cleaning up after the failed create failed: {undo}"),
        })
        .await;
    }
}

/// Record (or clear) the operation under way on VM `id`, in one
/// read-modify-write under the database lock.
fn set_pending(state: &Daemon, id: &str, pending: Option<Pending>) -> Result<(), VmError> {
    let db = state.db();
    let Some(vm) = db.get_vm(id)? else {
        return Ok(());
    };
    let mut extra = VmExtra::from_json(&vm.spec);
    if extra.pending == pending {
        return Ok(());
    }
    extra.pending = pending;
    db.update_vm(
        id,
        &VmPatch {
            spec: Some(extra.to_json()),
            ..VmPatch::default()
        },
    )?;
    Ok(())
}

/// Make a new VM's directory, host key and disks.
async fn define(
    state: &Daemon,
    vm: &VmRecord,
    image: &ImageArtifacts,
    sink: &EventSink,
) -> Result<(), VmError> {
    let p = VmPaths::new(&state.layout, &vm.id);
    let vms_dir = paths::vms_dir(&state.layout);
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&vms_dir)
        .map_err(io_err("create", &vms_dir))?;
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&p.dir)
        .map_err(io_err("create", &p.dir))?;

    sink.progress("identity", "generating the VM's SSH host key")
        .await;
    let key = identity::generate_host_key(&format!("root@{}", vm.name))?;
    write_private(&p.host_key, key.private_openssh.as_bytes(), 0o600)?;
    write_private(&p.host_key_pub, key.public_openssh.as_bytes(), 0o644)?;

    let preferred = match state.vms.clone_strategy(&vms_dir) {
        // No root-helper operation makes device-mapper snapshots yet.
        CloneStrategy::DmSnapshot => CloneStrategy::SparseCopy,
        s => s,
    };
    sink.progress(
        "disk",
        format!("cloning the root disk from {} ({preferred})", image.image),
    )
    .await;
    let (src, dst) = (image.rootfs.clone(), p.root_disk.clone());
    let strategy = blocking(move || disk::clone_rootfs(&src, &dst, preferred)).await??;
    state.db().update_vm(
        &vm.id,
        &VmPatch {
            clone_strategy: Some(Some(strategy)),
            ..VmPatch::default()
        },
    )?;
    sink.progress(
        "disk",
        format!("creating the {} work disk", request::human(vm.disk_bytes)),
    )
    .await;
    let (work, size) = (p.work_disk.clone(), vm.disk_bytes);
    blocking(move || disk::create_work_disk(&work, size)).await??;
    Ok(())
}

fn write_private(path: &Path, data: &[u8], mode: u32) -> Result<(), VmError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(io_err("create", path))?;
    f.write_all(data).map_err(io_err("write", path))
}

/// Run `f` on the blocking pool (file and disk work off the async workers).
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, VmError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|source| VmError::BlockingTask { source })
}

/// Start VM `name` (a no-op when it runs), streaming progress.
pub async fn start(state: Arc<Daemon>, name: String, sink: EventSink) -> Result<VmInfo, VmError> {
    let lock = state.vms.lock_for(&name);
    let _guard = lock.lock().await;
    let vm = find(&state, &name)?;
    if vm.state == VmState::Running {
        sink.progress("ready", format!("{name} is already running"))
            .await;
        return Ok(info::vm_info(&vm));
    }
    boot_and_report(&state, &vm.id, &name, &sink).await
}

/// Boot a defined VM; on failure give back everything the boot took and
/// record the error. Call with the VM's lock held.
/// Boot a defined VM (releasing its runtime on failure) and report it ready.
async fn boot_and_report(
    state: &Arc<Daemon>,
    id: &str,
    name: &str,
    sink: &EventSink,
) -> Result<VmInfo, VmError> {
    let started = Instant::now();
    boot_or_release(state, id, sink).await?;
    let vm = find(state, name)?;
    sink.progress(
        "ready",
        format!(
            "{name} is up at {} ({:.1} s)",
            vm.ip.map(|ip| ip.to_string()).unwrap_or_default(),
            started.elapsed().as_secs_f64()
        ),
    )
    .await;
    Ok(info::vm_info(&vm))
}

async fn boot_or_release(state: &Arc<Daemon>, id: &str, sink: &EventSink) -> Result<(), VmError> {
    let vm = state.db().transition_vm_state(
        id,
        &[VmState::Created, VmState::Stopped, VmState::Error],
        VmState::Starting,
    )?;
    match boot(state, &vm, sink).await {
        Ok(()) => Ok(()),
        Err(e) => {
            if let Err(undo) = release_runtime(state, id, VmState::Error, Some(e.to_string())).await
            {
                tracing::error!(vm = %vm.name, "releasing a failed start failed: {undo}");
            }
            Err(e)
        }
    }
}

/// Boot a VM whose record is `Starting`: each step below is one named
/// function; the ones without side effects are unit-tested, the others are
/// covered by the boot tests (`tests/vm_*.rs`). Crash safety: the lease and
/// tap are recorded before they are made, and the VMM's pid right after
/// launch (in [`launch_watched`]), so a daemon killed at any step finds
/// what to release.
async fn boot(state: &Arc<Daemon>, vm: &VmRecord, sink: &EventSink) -> Result<(), VmError> {
    let inputs = BootInputs::resolve(state, vm)?;
    let mut extra = VmExtra::from_json(&vm.spec);
    let net = attach_network(state, vm, &inputs, &extra, sink).await?;
    let host_key = pin_host_key(state, vm, &inputs.paths, net.ip).await?;
    let key_path = state.vms.config().ssh_key_path.value.clone();
    let user_key = user_public_key(&key_path).await?;
    write_config_drive(state, vm, &inputs, &host_key, &user_key, sink).await?;
    let tsc_khz = match inputs.vmm.backend() {
        Backend::Qemu { accel: Accel::Tcg } => tokio::fs::read_to_string("/proc/cpuinfo")
            .await
            .ok()
            .and_then(|t| host_tsc_khz(&t)),
        _ => None,
    };
    let cmdline = kernel_cmdline(&inputs.netplan.kernel_args(net.ip, &vm.name)?, tsc_khz);
    let spec = vm_spec(vm, &inputs, &net, cmdline)?;
    {
        let run_dir = inputs.paths.run_dir.clone();
        blocking(move || prepare_run_dir(&run_dir)).await??;
    }
    sink.progress(
        "boot",
        format!("starting {} on {}", vm.name, inputs.vmm.backend()),
    )
    .await;
    let handle = launch_and_record(state, vm, &inputs, &spec, &mut extra, sink).await?;
    wait_for_ssh(
        vm,
        &inputs.paths,
        &handle,
        net.ip,
        &host_key,
        &key_path,
        sink,
    )
    .await?;
    mark_running(state, vm, extra, net.ip)
}

/// What a boot needs before it changes anything: the backend, the guest
/// network plan, the agent binary, the kernel and the VM's paths.
struct BootInputs<'a> {
    vmm: &'a banger_vmm::Vmm,
    netplan: &'a banger_vm::netplan::NetPlan,
    agent: std::path::PathBuf,
    vmlinux: std::path::PathBuf,
    initrd: Option<std::path::PathBuf>,
    modules_disk: Option<std::path::PathBuf>,
    paths: VmPaths,
}

impl<'a> BootInputs<'a> {
    fn resolve(state: &'a Daemon, vm: &VmRecord) -> Result<BootInputs<'a>, VmError> {
        let mgr = &state.vms;
        let vmm = mgr.vmm.as_ref().map_err(|reason| VmError::NoBackend {
            reason: reason.clone(),
        })?;
        let netplan = mgr
            .netplan
            .as_ref()
            .map_err(|reason| VmError::InvalidRequest {
                message: format!("the guest network configuration is unusable: {reason}"),
            })?;
        let (vmlinux, initrd) = kernel_artifacts(state, &vm.image, &vm.kernel)?;
        Ok(BootInputs {
            vmm,
            netplan,
            agent: agent_binary(&state.layout)?,
            vmlinux,
            initrd,
            modules_disk: crate::image::lookup_modules_disk(state, &vm.kernel)?,
            paths: VmPaths::new(&state.layout, &vm.id),
        })
    }
}

/// The guest's place on the bridge.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Attached {
    ip: Ipv4Addr,
    tap: String,
}

/// Make sure the bridge and NAT exist (and the `.vm` DNS server), lease an
/// address and give the VM a tap.
async fn attach_network(
    state: &Arc<Daemon>,
    vm: &VmRecord,
    inputs: &BootInputs<'_>,
    extra: &VmExtra,
    sink: &EventSink,
) -> Result<Attached, VmError> {
    ensure_bridge(state, sink).await?;
    let ip = {
        let candidates = lease_candidates(extra.last_ip, inputs.netplan);
        state.db().allocate_lease(&vm.id, candidates)?
    };
    let (tap, pooled) = assign_tap(state, &vm.id)?;
    if !pooled {
        helper_done(
            state,
            HelperRequest::CreateTap {
                name: tap.clone(),
                bridge: state.net.bridge.clone(),
            },
        )
        .await?;
    }
    // The bridge exists now, so the pool can be (re)filled for the next start.
    tokio::spawn(refill_taps(state.clone()));
    let from = if pooled { " (ready from the pool)" } else { "" };
    sink.progress("network", format!("address {ip} on tap {tap}{from}"))
        .await;
    Ok(Attached { ip, tap })
}

/// The bridge with its address and NAT (under the network lock), then the
/// `.vm` DNS server on it.
async fn ensure_bridge(state: &Arc<Daemon>, sink: &EventSink) -> Result<(), VmError> {
    let net = &state.net;
    sink.progress(
        "network",
        format!("ensuring bridge {} ({}) and NAT", net.bridge, net.address()),
    )
    .await;
    {
        let _net = state.network_lock.lock().await;
        let bridge = HelperRequest::EnsureBridge {
            name: net.bridge.clone(),
            address: net.address().to_string(),
        };
        helper_done(state, bridge).await?;
        helper_done(state, net.ensure_nat()).await?;
    }
    crate::dns::ensure(state).await;
    Ok(())
}

/// Addresses to lease, in order: the VM's last one (while it is still in
/// the guest network), then the plan's.
fn lease_candidates(
    last_ip: Option<Ipv4Addr>,
    netplan: &banger_vm::netplan::NetPlan,
) -> impl Iterator<Item = Ipv4Addr> + '_ {
    let preferred = last_ip.filter(|ip| netplan.cidr.contains(ip));
    preferred.into_iter().chain(netplan.candidates())
}

/// Read the VM's host key and pin it in banger's `known_hosts` for `ip`
/// before the guest boots: nothing is ever trusted on first use.
async fn pin_host_key(
    state: &Daemon,
    vm: &VmRecord,
    p: &VmPaths,
    ip: Ipv4Addr,
) -> Result<SshHostKey, VmError> {
    let read = |path: std::path::PathBuf| async move {
        tokio::fs::read_to_string(&path)
            .await
            .map_err(io_err("read", &path))
    };
    let host_key = SshHostKey {
        private_openssh: read(p.host_key.clone()).await?,
        public_openssh: read(p.host_key_pub.clone()).await?.trim().to_owned(),
    };
    let known_hosts = KnownHosts::new(paths::known_hosts(&state.layout));
    let (name, public) = (vm.name.clone(), host_key.public_openssh.clone());
    blocking(move || known_hosts.set(&name, ip, &public)).await??;
    Ok(host_key)
}

/// The user's public key (made on first use) for the guest's root account.
async fn user_public_key(key_path: &Path) -> Result<String, VmError> {
    let key_path = key_path.to_owned();
    let key = blocking(move || {
        banger_config::ensure_ssh_key(&key_path)?;
        banger_config::read_public_key(&key_path)
    })
    .await??;
    Ok(key.trim().to_owned())
}

/// Plan the `file_sync` copies (warnings go to the client) and write the
/// config drive: the guest config plus the agent binary.
async fn write_config_drive(
    state: &Daemon,
    vm: &VmRecord,
    inputs: &BootInputs<'_>,
    host_key: &SshHostKey,
    user_key: &str,
    sink: &EventSink,
) -> Result<(), VmError> {
    let plan = {
        let (entries, home) = (
            state.vms.config().file_sync.clone(),
            state.layout.home.clone(),
        );
        blocking(move || banger_vm::filesync::plan_file_sync(&entries, &home)).await??
    };
    for w in &plan.warnings {
        sink.send(StreamEvent::Log {
            level: LogLevel::Warn,
            message: w.to_string(),
        })
        .await;
    }
    sink.progress("config", "writing the config drive").await;
    let guest = guest_config(vm, user_key, host_key, plan.files);
    let (image, payloads) = (inputs.paths.config_drive.clone(), plan.payloads);
    let root = [RootFile {
        name: AGENT_BINARY.to_owned(),
        source: inputs.agent.clone(),
        mode: 0o755,
    }];
    blocking(move || disk::build_config_drive_with(&image, &guest, &payloads, &root)).await??;
    Ok(())
}

/// What the guest agent applies at first boot.
fn guest_config(
    vm: &VmRecord,
    user_key: &str,
    host_key: &SshHostKey,
    files: Vec<banger_wire::guest::GuestFile>,
) -> GuestConfig {
    GuestConfig {
        format_version: GUEST_CONFIG_VERSION,
        vm_id: vm.id.clone(),
        hostname: vm.name.clone(),
        authorized_keys: vec![user_key.trim().to_owned()],
        ssh_host_key: host_key.clone(),
        files,
    }
}

/// The guest kernel's command line before drives are added: the serial
/// console, the root disk, `panic=1` (with QEMU's -no-reboot a guest kernel
/// that panics ends its VMM at once instead of spinning until the boot
/// timeout), the network arguments and, under TCG, the host's TSC rate.
fn kernel_cmdline(net_args: &str, tsc_khz: Option<u64>) -> String {
    let mut cmdline = format!("console=ttyS0 root=/dev/vda rw panic=1 {net_args}");
    if let Some(khz) = tsc_khz {
        cmdline.push_str(&format!(" tsc_early_khz={khz}"));
    }
    cmdline
}

/// The VM's disks, root first, then the rest in this order: vda, vdb, ...
/// in the guest. The kernel's modules (netfilter, overlay, veth, bridge...
/// for Docker) are one read-only disk shared by every VM of that kernel;
/// the initrd mounts it at /lib/modules before systemd starts, told where
/// by the `banger.modules=` argument returned with the drives.
fn drives(p: &VmPaths, modules_disk: Option<&Path>) -> (Vec<DriveSpec>, Option<String>) {
    let drive = |id: &str, path: &Path, read_only, is_root| DriveSpec {
        id: id.into(),
        path: path.to_owned(),
        read_only,
        is_root,
    };
    let mut drives = vec![
        drive("root", &p.root_disk, false, true),
        drive("work", &p.work_disk, false, false),
        drive("config", &p.config_drive, true, false),
    ];
    let modules_arg = modules_disk.map(|disk| {
        let arg = format!(
            "banger.modules=/dev/vd{}",
            char::from(b'a' + drives.len() as u8)
        );
        drives.push(drive("modules", disk, true, false));
        arg
    });
    (drives, modules_arg)
}

/// The VMM's description of the VM.
fn vm_spec(
    vm: &VmRecord,
    inputs: &BootInputs<'_>,
    net: &Attached,
    mut cmdline: String,
) -> Result<VmSpec, VmError> {
    let memory_mib = u32::try_from(vm.memory_mib).map_err(|_| VmError::InvalidRequest {
        message: format!("memory {} MiB is too large", vm.memory_mib),
    })?;
    let p = &inputs.paths;
    let (drives, modules_arg) = drives(p, inputs.modules_disk.as_deref());
    if let Some(arg) = modules_arg {
        cmdline.push(' ');
        cmdline.push_str(&arg);
    }
    Ok(VmSpec {
        id: vm.id.clone(),
        name: vm.name.clone(),
        vcpu: vm.vcpu,
        memory_mib,
        kernel: inputs.vmlinux.clone(),
        initrd: inputs.initrd.clone(),
        cmdline,
        drives,
        net: Some(NetSpec {
            tap: net.tap.clone(),
            mac: identity::vm_mac(&vm.id),
        }),
        serial_log: p.serial_log.clone(),
        agent: Some(AgentSpec {
            guest_cid: guest_cid(inputs.netplan.cidr.network(), net.ip),
            host_socket: p.agent_socket.clone(),
        }),
        run_dir: p.run_dir.clone(),
    })
}

/// Launch the VMM (its pid is recorded right after each launch), record the
/// backend it ran on and watch it for an exit of its own.
async fn launch_and_record(
    state: &Arc<Daemon>,
    vm: &VmRecord,
    inputs: &BootInputs<'_>,
    spec: &VmSpec,
    extra: &mut VmExtra,
    sink: &EventSink,
) -> Result<VmmHandle, VmError> {
    let record = |h: &VmmHandle| record_vmm(state, &vm.id, h);
    let handle = launch_watched(inputs.vmm, spec, &vm.name, sink, record).await?;
    extra.backend = Some(handle.backend.to_string());
    extra.backend_reason = Some(handle.backend_reason.clone());
    state.db().update_vm(
        &vm.id,
        &VmPatch {
            spec: Some(extra.to_json()),
            ..VmPatch::default()
        },
    )?;
    watch_exit(state.clone(), vm.name.clone(), vm.id.clone(), &handle);
    Ok(handle)
}

/// Wait until the guest answers SSH with its pinned host key, or fail with
/// its console's last lines when the VMM exits or [`BOOT_TIMEOUT`] passes.
async fn wait_for_ssh(
    vm: &VmRecord,
    p: &VmPaths,
    handle: &VmmHandle,
    ip: Ipv4Addr,
    host_key: &SshHostKey,
    key_path: &Path,
    sink: &EventSink,
) -> Result<(), VmError> {
    sink.progress("ssh", format!("waiting for SSH on {ip}:22"))
        .await;
    let not_ready = |source, console| VmError::SshNotReady {
        name: vm.name.clone(),
        source: Box::new(source),
        console,
    };
    let pinned = banger_vm::ssh::parse_public_key(&host_key.public_openssh)
        .map_err(|source| not_ready(source, String::new()))?;
    let addr = SocketAddr::from((ip, 22));
    let deadline = tokio::time::Instant::now() + BOOT_TIMEOUT;
    let exited = async {
        // Err: the pidfd cannot be watched; treat it like an exit.
        while let Ok(false) = handle.wait_exit(Duration::from_secs(3600)).await {}
    };
    tokio::select! {
        ready = async {
            wait_port(addr, deadline).await;
            banger_vm::ssh::wait_ready(addr, SSH_USER, key_path, &pinned, deadline).await
        } => {
            let session = ready.map_err(|source| not_ready(source, console_tail(&p.serial_log)))?;
            let _ = session.close().await;
            Ok(())
        }
        () = exited => Err(VmError::DiedDuringBoot {
            name: vm.name.clone(),
            console: console_tail(&p.serial_log),
        }),
    }
}

/// Record the VM running at `ip` (the address it prefers next time).
fn mark_running(
    state: &Daemon,
    vm: &VmRecord,
    mut extra: VmExtra,
    ip: Ipv4Addr,
) -> Result<(), VmError> {
    extra.last_ip = Some(ip);
    extra.last_error = None;
    {
        let db = state.db();
        db.update_vm(
            &vm.id,
            &VmPatch {
                state: Some(VmState::Running),
                spec: Some(extra.to_json()),
                ..VmPatch::default()
            },
        )?;
        db.touch_vm(&vm.id)?;
    }
    crate::ssh_config::refresh(state);
    Ok(())
}

/// Top the tap pool up to `tap_pool_size` (in the background of a start).
async fn refill_taps(state: Arc<Daemon>) {
    let want = state.vms.config().tap_pool_size.value as usize;
    let cx = super::tap_pool::RefillContext {
        helper: &state.helper,
        db: &state.db,
        bridge: &state.net.bridge,
        want,
    };
    state.vms.taps.refill(cx).await;
}

/// Watch the VMM behind `handle` and, when it exits while its record still
/// says it runs (not stopped by banger), record the VM stopped and give its
/// tap and lease back.
pub fn watch_exit(state: Arc<Daemon>, name: String, id: String, handle: &VmmHandle) {
    let (pid, start) = (handle.pid, handle.start_time);
    tokio::spawn(async move {
        match Pidfd::open_verified(pid, start) {
            Ok(Some(pidfd)) => loop {
                match pidfd.wait_exit(Duration::from_secs(24 * 3600)).await {
                    Ok(true) => break,
                    Ok(false) => continue,
                    Err(e) => {
                        tracing::warn!(vm = %name, "cannot watch VMM {pid}: {e}");
                        return;
                    }
                }
            },
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(vm = %name, "cannot watch VMM {pid}: {e}");
                return;
            }
        }
        let lock = state.vms.lock_for(&name);
        let _guard = lock.lock().await;
        let vm = match state.db().get_vm(&id) {
            Ok(Some(vm)) => vm,
            _ => return,
        };
        let ours = vm.vmm_pid == Some(pid) && vm.vmm_start_time == Some(start);
        if !ours || !matches!(vm.state, VmState::Running | VmState::Starting) {
            return;
        }
        tracing::warn!(vm = %name, pid, "the VMM exited on its own; marking the VM stopped");
        let why = format!("the VMM (pid {pid}) exited on its own; see `banger vm logs {name}`");
        if let Err(e) = release_runtime(&state, &id, VmState::Stopped, Some(why)).await {
            tracing::error!(vm = %name, "cleaning up after the VMM exited failed: {e}");
        }
    });
}

/// The last lines of a serial log for an error message (a failed create
/// removes the log with the VM), without terminal escapes.
pub fn console_tail(path: &Path) -> String {
    const LINES: usize = 25;
    let Ok(bytes) = super::console::read_tail(path, 16 << 10) else {
        return format!("({} is unreadable)", path.display());
    };
    let text = String::from_utf8_lossy(&bytes);
    let clean: String = text
        .chars()
        .filter(|c| *c == '\n' || *c == '\t' || !c.is_control())
        .collect();
    let lines: Vec<&str> = clean.lines().filter(|l| !l.trim().is_empty()).collect();
    let shown = lines[lines.len().saturating_sub(LINES)..].join("\n");
    if shown.is_empty() {
        "(the serial console is empty)".to_owned()
    } else {
        shown
    }
}

/// How long a guest may stay silent on its serial console after launch
/// before its boot counts as stalled (a healthy one prints within a second).
pub const FIRST_OUTPUT_TIMEOUT: Duration = Duration::from_secs(30);

/// How many times in a row a guest may crash before its console exists
/// and be launched again (each such crash costs about a second).
pub const EARLY_CRASH_LAUNCHES: u32 = 5;

/// Launch the VMM and watch the serial console: a guest that prints nothing
/// within [`FIRST_OUTPUT_TIMEOUT`] is launched once more, and one whose VMM
/// exits before it printed anything up to [`EARLY_CRASH_LAUNCHES`] times in
/// all. The early crash seen here (a "divide error" in `start_kernel`: a
/// PIT tick delivered as vector 0 by QEMU's unprogrammed 8259, half the
/// boots on a busy host) is gone with `pic=off`; the relaunch stays as a
/// guard against other early-boot failures, each of which costs about a
/// second. What is left is reported by the boot timeout or the exit check.
///
/// `record` runs right after each launch, before anything else: once it
/// has written the VMM's pid and start time, a restarted daemon finds the
/// process by them (before that, by the VM id on its command line).
async fn launch_watched(
    vmm: &banger_vmm::Vmm,
    spec: &VmSpec,
    name: &str,
    sink: &EventSink,
    record: impl Fn(&VmmHandle) -> Result<(), VmError>,
) -> Result<VmmHandle, VmError> {
    let vmm_err = |source: banger_vmm::VmmError| VmError::Vmm {
        name: name.to_owned(),
        source: Box::new(source),
    };
    let (mut stalls, mut crashes) = (0, 0);
    loop {
        let before = file_len(&spec.serial_log);
        let handle = vmm
            .launch(spec, &LaunchOptions::default())
            .await
            .map_err(vmm_err)?;
        record(&handle)?;
        let seen = first_output(&spec.serial_log, before, &handle, FIRST_OUTPUT_TIMEOUT).await;
        match seen {
            Console::Printed => return Ok(handle),
            Console::Silent if stalls == 1 => return Ok(handle),
            Console::ExitedSilently if crashes + 1 == EARLY_CRASH_LAUNCHES => return Ok(handle),
            Console::Silent => stalls += 1,
            Console::ExitedSilently => crashes += 1,
        }
        let message = match seen {
            Console::Silent => format!(
                "{name} printed nothing on its console within {} s of launch (an early-boot \
                 stall of the VMM); starting it again",
                FIRST_OUTPUT_TIMEOUT.as_secs()
            ),
            _ => format!(
                "{name}'s VMM exited before the guest printed anything (an early-boot \
                 crash of the guest kernel); starting it again"
            ),
        };
        tracing::warn!(vm = %name, "{message}");
        sink.send(StreamEvent::Log {
            level: LogLevel::Warn,
            message,
        })
        .await;
        handle.kill().await.map_err(vmm_err)?;
        handle.cleanup().map_err(vmm_err)?;
    }
}

/// Write a just-launched VMM's backend, pid and start time to VM `id`'s record.
fn record_vmm(state: &Daemon, id: &str, handle: &VmmHandle) -> Result<(), VmError> {
    state.db().update_vm(
        id,
        &VmPatch {
            backend: Some(Some(handle.backend.vmm())),
            vmm_pid: Some(Some(handle.pid)),
            vmm_start_time: Some(Some(handle.start_time)),
            ..VmPatch::default()
        },
    )?;
    Ok(())
}

fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len())
}

/// What a freshly launched guest's console did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Console {
    /// It grew: the kernel runs.
    Printed,
    /// Nothing within the timeout.
    Silent,
    /// The VMM exited without a line (a panic before the console exists,
    /// with `panic=1`).
    ExitedSilently,
}

/// Whether the console grows past `before` within `timeout`, or the VMM
/// exits first.
async fn first_output(path: &Path, before: u64, handle: &VmmHandle, timeout: Duration) -> Console {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if file_len(path) > before {
            return Console::Printed;
        }
        if !handle.is_alive() {
            // It may have printed just before exiting.
            return if file_len(path) > before {
                Console::Printed
            } else {
                Console::ExitedSilently
            };
        }
        if tokio::time::Instant::now() >= deadline {
            return Console::Silent;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// How long one probe of the guest's SSH port may take.
const PORT_PROBE_TIMEOUT: Duration = Duration::from_millis(300);
/// Pause between two probes of the guest's SSH port.
const PORT_PROBE_PAUSE: Duration = Duration::from_millis(100);

/// Wait until `addr` accepts TCP connections (or `deadline`). A connect to a
/// guest whose interface is not up yet blocks for the ARP timeout (~3 s) and
/// SSH retries back off up to 2 s, so polling SSH alone notices a booted
/// guest seconds late; short bounded probes notice it within ~0.1 s.
async fn wait_port(addr: SocketAddr, deadline: tokio::time::Instant) {
    while tokio::time::Instant::now() < deadline {
        let probe = tokio::time::timeout(PORT_PROBE_TIMEOUT, tokio::net::TcpStream::connect(addr));
        if let Ok(Ok(_stream)) = probe.await {
            return;
        }
        tokio::time::sleep(PORT_PROBE_PAUSE).await;
    }
}

/// The host's TSC rate in kHz from `/proc/cpuinfo` (`cpu MHz` of the first
/// CPU), which a TCG guest's TSC follows. Given to the guest kernel as
/// `tsc_early_khz=`: its own calibration against the emulated PIT fails on a
/// busy host, and a guest whose TSC rate stays unknown stalls in early boot
/// ("tsc: Unable to calibrate against PIT ... could not calculate TSC khz").
pub fn host_tsc_khz(cpuinfo: &str) -> Option<u64> {
    let line = cpuinfo.lines().find(|l| l.starts_with("cpu MHz"))?;
    let mhz: f64 = line.split(':').nth(1)?.trim().parse().ok()?;
    let khz = (mhz * 1000.0).round();
    (1.0..1e9).contains(&khz).then_some(khz as u64)
}

/// vsock context id of a guest: unique per address in the range, never 0-2.
fn guest_cid(network: Ipv4Addr, ip: Ipv4Addr) -> u32 {
    banger_vmm::spec::MIN_GUEST_CID + u32::from(ip).wrapping_sub(u32::from(network))
}

fn prepare_run_dir(dir: &Path) -> Result<(), VmError> {
    if let Some(parent) = dir.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(parent)
            .map_err(io_err("create", parent))?;
    }
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => Err(io_err("create", dir)(e)),
        _ => Ok(()),
    }
}

/// Take a ready tap from the pool, else pick the lowest free `banger-t<N>`,
/// and record it on the VM, in one go under the database lock so two starts
/// never pick the same tap. True when the tap came from the pool (it exists
/// already; any other still has to be created).
fn assign_tap(state: &Daemon, id: &str) -> Result<(String, bool), VmError> {
    let db = state.db();
    let vms = db.list_vms()?;
    if let Some(tap) = vms.iter().find(|v| v.id == id).and_then(|v| v.tap.clone()) {
        return Ok((tap, false));
    }
    let pooled = state.vms.taps.take();
    let used: std::collections::HashSet<String> = vms.into_iter().filter_map(|v| v.tap).collect();
    let tap = pooled.clone().unwrap_or_else(|| {
        (0u32..)
            .map(|n| format!("{TAP_PREFIX}{n}"))
            .find(|t| !used.contains(t))
            .expect("an unbounded range always has a free name")
    });
    db.update_vm(
        id,
        &VmPatch {
            tap: Some(Some(tap.clone())),
            ..VmPatch::default()
        },
    )?;
    Ok((tap, pooled.is_some()))
}

async fn helper_done(state: &Daemon, req: HelperRequest) -> Result<bool, VmError> {
    match state.helper.request(&req).await? {
        HelperResponse::Done { changed } => Ok(changed),
        other => Err(HelperOpError::unexpected(&req, &other).into()),
    }
}

/// Give back everything VM `id` holds while running: kill its VMM if it is
/// still there, remove its run dir, delete its tap, release its lease; then
/// record `to` (and `error`, when given; a clean stop clears it). Idempotent.
pub async fn release_runtime(
    state: &Daemon,
    id: &str,
    to: VmState,
    error: Option<String>,
) -> Result<(), VmError> {
    let Some(vm) = state.db().get_vm(id)? else {
        return Ok(());
    };
    let p = VmPaths::new(&state.layout, id);
    kill_vmm(&vm, &p).await?;
    match tokio::fs::remove_dir_all(&p.run_dir).await {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(io_err("remove", &p.run_dir)(e))
        }
        _ => {}
    }
    let mut tap_error = None;
    let mut tap_left = vm.tap.clone();
    if let Some(tap) = &vm.tap {
        match helper_done(state, HelperRequest::DeleteTap { name: tap.clone() }).await {
            Ok(_) => tap_left = None,
            Err(e) => tap_error = Some(e),
        }
    }
    let mut extra = VmExtra::from_json(&vm.spec);
    if let Some(ip) = vm.ip {
        extra.last_ip = Some(ip);
    }
    if error.is_some() || to == VmState::Stopped {
        extra.last_error = error;
    }
    state.db().update_vm(
        id,
        &VmPatch {
            state: Some(to),
            tap: Some(tap_left),
            vmm_pid: Some(None),
            vmm_start_time: Some(None),
            spec: Some(extra.to_json()),
            release_lease: true,
            ..VmPatch::default()
        },
    )?;
    crate::ssh_config::refresh(state);
    match tap_error {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Make sure the VM's VMM process is gone (by its handle, else by the
/// recorded pid and start time) and its run-dir files removed.
async fn kill_vmm(vm: &VmRecord, p: &VmPaths) -> Result<(), VmError> {
    let vmm_err = |source: banger_vmm::VmmError| VmError::Vmm {
        name: vm.name.clone(),
        source: Box::new(source),
    };
    match VmmHandle::load(&p.run_dir) {
        Ok(handle) => {
            if handle.is_alive() {
                handle.kill().await.map_err(vmm_err)?;
            }
            handle.cleanup().map_err(vmm_err)?;
        }
        Err(_) => {
            if let (Some(pid), Some(start)) = (vm.vmm_pid, vm.vmm_start_time) {
                let gone = banger_vmm::process::kill_and_wait(pid, start, Duration::from_secs(10))
                    .await
                    .map_err(|e| vmm_err(e.into()))?;
                if !gone {
                    return Err(vmm_err(banger_vmm::VmmError::Unkillable {
                        id: vm.id.clone(),
                        pid,
                    }));
                }
            }
        }
    }
    kill_strays(&vm.id, &vm.name, None).await
}

/// Kill every VMM process of VM `id` but `keep`, found by the id on its
/// command line: one launched by a daemon that was killed before it
/// recorded the pid, or while QEMU was still daemonizing.
pub(super) async fn kill_strays(
    id: &str,
    name: &str,
    keep: Option<(u32, u64)>,
) -> Result<(), VmError> {
    let killed = banger_vmm::process::kill_processes_naming_vm(id, keep, Duration::from_secs(10))
        .await
        .map_err(|e| VmError::Vmm {
            name: name.to_owned(),
            source: Box::new(e.into()),
        })?;
    if !killed.is_empty() {
        tracing::warn!(vm = %name, ?killed, "killed VMM processes of the VM that no record named");
    }
    Ok(())
}

/// Stop VM `name`: ask the guest to power off (the VMM is killed after
/// [`STOP_GRACE`]), or kill it at once with `force`. Stopping a stopped VM
/// is a no-op.
pub async fn stop(
    state: Arc<Daemon>,
    name: String,
    force: bool,
    sink: EventSink,
) -> Result<VmInfo, VmError> {
    let lock = state.vms.lock_for(&name);
    let _guard = lock.lock().await;
    stop_locked(&state, &name, force, &sink).await?;
    Ok(info::vm_info(&find(&state, &name)?))
}

async fn stop_locked(
    state: &Daemon,
    name: &str,
    force: bool,
    sink: &EventSink,
) -> Result<(), VmError> {
    let vm = find(state, name)?;
    match vm.state {
        VmState::Created | VmState::Stopped => {
            sink.progress("stop", format!("{name} is not running"))
                .await;
            return Ok(());
        }
        VmState::Error => {
            // A failed start already gave everything back; this clears leftovers.
            release_runtime(state, &vm.id, VmState::Stopped, None).await?;
            sink.progress("stop", format!("{name} is not running"))
                .await;
            return Ok(());
        }
        VmState::Running | VmState::Starting | VmState::Stopping => {}
    }
    state.db().transition_vm_state(
        &vm.id,
        &[VmState::Running, VmState::Starting, VmState::Stopping],
        VmState::Stopping,
    )?;
    let p = VmPaths::new(&state.layout, &vm.id);
    if let Ok(handle) = VmmHandle::load(&p.run_dir) {
        if handle.is_alive() {
            let outcome = if force {
                sink.progress("stop", format!("killing the VMM of {name}"))
                    .await;
                handle.kill().await.map(|()| ShutdownOutcome::Killed)
            } else {
                sink.progress("stop", format!("asking {name} to power off"))
                    .await;
                graceful_stop(state, &vm, &handle).await
            };
            let outcome = outcome.map_err(|source| VmError::Vmm {
                name: name.to_owned(),
                source: Box::new(source),
            })?;
            let how = match outcome {
                ShutdownOutcome::AlreadyExited => "it had already exited",
                ShutdownOutcome::Graceful => "the guest powered off",
                ShutdownOutcome::Terminated => {
                    "the guest did not power off in time; QEMU was told to quit"
                }
                ShutdownOutcome::Killed => "the VMM was killed",
            };
            sink.progress("stop", format!("{name} stopped: {how}"))
                .await;
        }
    }
    release_runtime(state, &vm.id, VmState::Stopped, None).await
}

/// Power a guest off: `systemctl poweroff` over SSH (minimal images have no
/// ACPI power-button handler: logind needs D-Bus), then the VMM's own
/// shutdown (ACPI power button, QEMU `quit`, SIGKILL) for what is left of
/// [`STOP_GRACE`].
async fn graceful_stop(
    state: &Daemon,
    vm: &VmRecord,
    handle: &VmmHandle,
) -> Result<ShutdownOutcome, banger_vmm::VmmError> {
    let started = Instant::now();
    if let Some(ip) = vm.ip {
        match ssh_poweroff(state, vm, ip).await {
            Ok(()) => {
                if handle.wait_exit(STOP_GRACE).await? {
                    handle.cleanup()?;
                    return Ok(ShutdownOutcome::Graceful);
                }
            }
            Err(e) => tracing::info!(vm = %vm.name, "poweroff over SSH failed: {e}"),
        }
    }
    let left = STOP_GRACE.saturating_sub(started.elapsed());
    handle.shutdown(left.max(Duration::from_secs(5))).await
}

/// systemd: --no-block, so the answer comes back before sshd goes down.
/// Images imported without systemd run banger's init (the guest agent as
/// PID 1), which powers off on SIGUSR2 after the answer is sent.
const POWEROFF_COMMAND: &str =
    "if [ -d /run/systemd/system ]; then systemctl poweroff --no-block; else kill -USR2 1; fi";

async fn ssh_poweroff(state: &Daemon, vm: &VmRecord, ip: Ipv4Addr) -> Result<(), VmError> {
    let p = VmPaths::new(&state.layout, &vm.id);
    let public = tokio::fs::read_to_string(&p.host_key_pub)
        .await
        .map_err(io_err("read", &p.host_key_pub))?;
    let ssh_err = |source| VmError::SshNotReady {
        name: vm.name.clone(),
        source: Box::new(source),
        console: String::new(),
    };
    let pinned = banger_vm::ssh::parse_public_key(&public).map_err(ssh_err)?;
    let session = banger_vm::ssh::connect(
        SocketAddr::from((ip, 22)),
        SSH_USER,
        &state.vms.config().ssh_key_path.value,
        &pinned,
        Duration::from_secs(5),
    )
    .await
    .map_err(ssh_err)?;
    let out = session.exec(POWEROFF_COMMAND).await.map_err(ssh_err)?;
    let _ = session.close().await;
    if out.success() {
        Ok(())
    } else {
        Err(VmError::GuestCommand {
            name: vm.name.clone(),
            command: POWEROFF_COMMAND,
            status: out.exit_status,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        })
    }
}

/// Stop then start VM `name` under one lock.
pub async fn restart(
    state: Arc<Daemon>,
    name: String,
    force: bool,
    sink: EventSink,
) -> Result<VmInfo, VmError> {
    let lock = state.vms.lock_for(&name);
    let _guard = lock.lock().await;
    stop_locked(&state, &name, force, &sink).await?;
    let vm = find(&state, &name)?;
    boot_and_report(&state, &vm.id, &name, &sink).await
}

/// Delete VM `name` and everything it has. A running VM needs `force`
/// (its VMM is killed). Deleting a VM that does not exist is not an error.
pub async fn delete(state: &Daemon, name: &str, force: bool) -> Result<VmDeleted, VmError> {
    let lock = state.vms.lock_for(name);
    let guard = lock.lock().await;
    let Some(vm) = state.db().get_vm_by_name(name)? else {
        return Ok(VmDeleted {
            name: name.to_owned(),
            existed: false,
        });
    };
    if matches!(
        vm.state,
        VmState::Running | VmState::Starting | VmState::Stopping
    ) && !force
    {
        return Err(VmError::DeleteWhileActive {
            name: name.to_owned(),
            state: vm.state,
        });
    }
    purge(state, &vm.id).await?;
    drop(guard);
    state.vms.forget_lock(name);
    tracing::info!(vm = %name, id = %vm.id, "VM deleted");
    Ok(VmDeleted {
        name: name.to_owned(),
        existed: true,
    })
}

/// Remove VM `id` completely: its runtime resources, its `known_hosts`
/// line, its directory and its record. Idempotent.
pub async fn purge(state: &Daemon, id: &str) -> Result<(), VmError> {
    let Some(vm) = state.db().get_vm(id)? else {
        return Ok(());
    };
    // From here on a killed daemon finishes the delete when it restarts.
    set_pending(state, id, Some(Pending::Delete))?;
    release_runtime(state, id, VmState::Stopped, None).await?;
    let last_ip = vm.ip.or(VmExtra::from_json(&vm.spec).last_ip);
    KnownHosts::new(paths::known_hosts(&state.layout)).remove(&vm.name, last_ip)?;
    let p = VmPaths::new(&state.layout, id);
    match std::fs::remove_dir_all(&p.dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(io_err("remove", &p.dir)(e))
        }
        _ => {}
    }
    state.db().delete_vm(id)?;
    crate::ssh_config::refresh(state);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan() -> banger_vm::netplan::NetPlan {
        banger_vm::netplan::NetPlan::new(
            "172.30.0.0/29".parse().unwrap(),
            Ipv4Addr::new(172, 30, 0, 1),
            vec!["1.1.1.1".parse().unwrap()],
        )
        .unwrap()
    }

    fn paths() -> VmPaths {
        let layout = banger_host::paths::Layout::per_user(
            "/home/u".into(),
            None,
            None,
            None,
            Some("/run/user/1000".into()),
            1000,
        );
        VmPaths::new(&layout, "0123456789abcdef")
    }

    #[test]
    fn the_last_address_is_leased_again_only_inside_the_network() {
        let plan = plan();
        let hosts: Vec<Ipv4Addr> = (2..=6).map(|i| Ipv4Addr::new(172, 30, 0, i)).collect();
        let again: Vec<_> = lease_candidates(Some(Ipv4Addr::new(172, 30, 0, 5)), &plan).collect();
        assert_eq!(again[0], Ipv4Addr::new(172, 30, 0, 5));
        assert_eq!(again[1..], hosts[..]);
        let moved: Vec<_> = lease_candidates(Some(Ipv4Addr::new(10, 0, 0, 5)), &plan).collect();
        assert_eq!(moved, hosts);
        assert_eq!(lease_candidates(None, &plan).collect::<Vec<_>>(), hosts);
    }

    #[test]
    fn the_cmdline_panics_out_and_carries_the_tsc_rate_only_when_known() {
        let net = "ip=172.30.0.2::172.30.0.1:255.255.255.248:web::off";
        assert_eq!(
            kernel_cmdline(net, None),
            format!("console=ttyS0 root=/dev/vda rw panic=1 {net}")
        );
        assert!(kernel_cmdline(net, Some(2_600_000)).ends_with(" tsc_early_khz=2600000"));
    }

    #[test]
    fn drives_put_root_first_and_name_the_modules_disk_for_the_initrd() {
        let p = paths();
        let (plain, arg) = drives(&p, None);
        let ids: Vec<&str> = plain.iter().map(|d| d.id.as_str()).collect();
        assert_eq!(ids, ["root", "work", "config"]);
        assert_eq!(arg, None);
        assert!(plain[0].is_root && !plain[0].read_only);
        assert!(plain[2].read_only && plain[2].path == p.config_drive);
        let modules = Path::new("/cache/modules.ext4");
        let (with, arg) = drives(&p, Some(modules));
        assert_eq!(arg.as_deref(), Some("banger.modules=/dev/vdd"));
        assert_eq!(with[3].path, modules);
        assert!(with[3].read_only && !with[3].is_root);
        assert_eq!(with.iter().filter(|d| d.is_root).count(), 1);
    }

    fn created_record() -> VmRecord {
        let resolved = ResolvedCreate {
            name: "web".into(),
            image: "debian".into(),
            size: banger_wire::vm::VmSizeSpec {
                vcpu: 2,
                vcpu_source: banger_wire::vm::SpecSource::Flag,
                memory_mib: 512,
                memory_source: banger_wire::vm::SpecSource::Flag,
                disk_bytes: 1 << 30,
                disk_source: banger_wire::vm::SpecSource::Flag,
            },
            no_start: false,
        };
        let image = ImageArtifacts {
            image: "debian".into(),
            rootfs: "/cache/rootfs.ext4".into(),
            kernel: "generic".into(),
            vmlinux: "/cache/vmlinux".into(),
            initrd: None,
        };
        new_record("0123456789abcdef", &resolved, &image)
    }

    /// A new record is pending from its first write, so a daemon killed
    /// before the create ends rolls it back at the next start.
    #[test]
    fn a_new_record_is_created_and_pending_a_create() {
        let vm = created_record();
        assert_eq!(vm.state, VmState::Created);
        assert_eq!(VmExtra::from_json(&vm.spec).pending, Some(Pending::Create));
        assert_eq!((vm.vcpu, vm.memory_mib, vm.disk_bytes), (2, 512, 1 << 30));
        assert_eq!(vm.mac, identity::vm_mac(&vm.id).to_string());
        assert_eq!((vm.tap, vm.ip, vm.vmm_pid), (None, None, None));
    }

    #[test]
    fn the_guest_config_authorizes_the_trimmed_user_key_and_carries_the_host_key() {
        let vm = created_record();
        let host = SshHostKey {
            private_openssh: "PRIVATE".into(),
            public_openssh: "ssh-ed25519 AAAA host".into(),
        };
        let g = guest_config(&vm, "  ssh-ed25519 BBBB me@laptop\n", &host, Vec::new());
        assert_eq!(g.authorized_keys, ["ssh-ed25519 BBBB me@laptop"]);
        assert_eq!(
            (g.vm_id.as_str(), g.hostname.as_str()),
            (vm.id.as_str(), "web")
        );
        assert_eq!(g.ssh_host_key, host);
        assert_eq!(g.format_version, GUEST_CONFIG_VERSION);
    }

    #[test]
    fn tsc_rate_comes_from_cpuinfo() {
        let cpuinfo = "processor\t: 0\nmodel name\t: Intel(R) Xeon(R)\ncpu MHz\t\t: 2600.000\n\nprocessor\t: 1\ncpu MHz\t\t: 1200.5\n";
        assert_eq!(host_tsc_khz(cpuinfo), Some(2_600_000));
        assert_eq!(host_tsc_khz("cpu MHz : 1999.9996\n"), Some(2_000_000));
        assert_eq!(host_tsc_khz("model name : arm\n"), None);
        assert_eq!(host_tsc_khz("cpu MHz : fast\n"), None);
    }

    #[test]
    fn console_tail_keeps_the_last_lines_without_escapes() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("serial.log");
        let mut text = String::new();
        for i in 0..40 {
            text.push_str(&format!("line {i}\x1b[0m\r\n"));
        }
        std::fs::write(&log, text).unwrap();
        let tail = console_tail(&log);
        assert!(tail.starts_with("line 15[0m\nline 16"), "{tail:?}");
        assert!(tail.ends_with("line 39[0m"), "{tail:?}");
        assert!(console_tail(&dir.path().join("none")).contains("unreadable"));
    }

    /// A handle on this test process: alive for as long as the test runs.
    fn own_handle(dir: &Path) -> VmmHandle {
        let pid = std::process::id();
        VmmHandle {
            id: "t".into(),
            backend: Backend::Qemu { accel: Accel::Tcg },
            backend_reason: String::new(),
            pid,
            start_time: banger_vmm::process_start_time(pid).unwrap(),
            control_socket: dir.join("qmp.sock"),
            agent: None,
            serial_log: dir.join("serial.log"),
            vmm_log: dir.join("qemu.log"),
            run_dir: dir.to_owned(),
            pidfile: None,
            jail_dir: None,
        }
    }

    #[tokio::test]
    async fn first_output_sees_the_console_grow_or_times_out() {
        let dir = tempfile::tempdir().unwrap();
        let handle = own_handle(dir.path());
        let log = dir.path().join("serial.log");
        std::fs::write(&log, "previous boot\n").unwrap();
        let before = file_len(&log);
        let silent = first_output(&log, before, &handle, Duration::from_millis(300)).await;
        assert_eq!(silent, Console::Silent);
        let writer = {
            let log = log.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(200)).await;
                use std::io::Write;
                let mut f = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
                f.write_all(b"[    0.000000] Linux version\n").unwrap();
            })
        };
        assert_eq!(
            first_output(&log, before, &handle, Duration::from_secs(10)).await,
            Console::Printed
        );
        writer.await.unwrap();
        // A VMM that is gone: printed before it went, or not.
        let mut dead = handle.clone();
        dead.start_time += 1;
        assert_eq!(
            first_output(&log, before, &dead, Duration::from_secs(10)).await,
            Console::Printed
        );
        assert_eq!(
            first_output(&log, file_len(&log), &dead, Duration::from_secs(10)).await,
            Console::ExitedSilently
        );
    }

    #[test]
    fn guest_cids_are_unique_and_above_the_reserved_ones() {
        let net = Ipv4Addr::new(172, 16, 0, 0);
        assert_eq!(guest_cid(net, Ipv4Addr::new(172, 16, 0, 2)), 5);
        assert_ne!(
            guest_cid(net, Ipv4Addr::new(172, 16, 0, 2)),
            guest_cid(net, Ipv4Addr::new(172, 16, 0, 3))
        );
    }

    #[test]
    fn a_missing_image_with_a_recipe_is_built_else_listed() {
        let with_recipe = image_missing("debian-bookworm-minimal").to_string();
        assert_eq!(
            with_recipe,
            "image debian-bookworm-minimal is not installed: the catalog has no bundle for it; \
             build it from its recipe with `banger image build debian-bookworm-minimal`"
        );
        let unknown = image_missing("nope").to_string();
        assert!(
            unknown.starts_with(
                "image nope is not installed: banger has no catalog entry or recipe of that name \
                 (it can build: debian-bookworm, debian-bookworm-minimal); "
            ),
            "{unknown}"
        );
        assert!(unknown.contains("banger image register"), "{unknown}");
    }
}
