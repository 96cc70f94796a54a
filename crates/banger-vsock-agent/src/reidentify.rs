//! Warm start, guest side: turn a guest restored from a shared snapshot
//! into the VM the host describes ([`GuestIdentity`]), and prepare a guest
//! for being snapshotted ([`prepare_snapshot`]).
//!
//! A request is validated whole before anything changes, so a bad field is
//! refused naming it and the guest stays as it was. The steps then run in an
//! order chosen for the attacker's view (docs/warm-start.md, "Guest identity
//! after restore"): clock and entropy first (everything after them reads
//! both), then the work disk (the authorized_keys live on it), then the host
//! key with an sshd restart, hostname and machine-id, and the network last:
//! until the guest has its new address nobody can reach the sshd that
//! still answered with the snapshot's key. Every step compares before it
//! writes, so repeating a request changes nothing (`changed` is empty).

use std::fs::{self, File, OpenOptions};
use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use banger_wire::guest::{
    GuestIdentity, ReidentifyReport, MAX_REIDENTIFY_ENTROPY, MIN_REIDENTIFY_ENTROPY,
    WORK_DISK_LABEL,
};
use nix::mount::{MntFlags, MsFlags};

use crate::apply::{self, ApplyError, ApplyOptions, ApplyReport, Owner};
use crate::drive::{BlockLookup, DriveError};
use crate::procfs;

/// Where the work disk is mounted, as the image's fstab does.
pub const WORK_MOUNT: &str = "/root";
/// The networkd file reidentify writes; it sorts before the one
/// systemd-network-generator made from the snapshot's `ip=` argument, so it
/// is the one networkd applies.
pub const NETWORKD_FILE: &str = "/run/systemd/network/10-banger.network";
/// The public host key sshd was last restarted with by [`reidentify`].
const SSHD_SERVED: &str = "/run/banger/sshd-host-key.pub";
/// Serializes [`reidentify`] and [`prepare_snapshot`].
static STEPS: std::sync::Mutex<()> = std::sync::Mutex::new(());
/// How long systemd-networkd may take to configure the NIC from the new file.
const NETWORKD_WAIT: Duration = Duration::from_secs(20);
/// How long sshd may take to listen again after its restart.
const SSHD_WAIT: Duration = Duration::from_secs(20);
/// The earliest host time accepted (2024-01-01): a host clock before that is
/// broken, and setting the guest to it would break TLS in the guest.
const MIN_UNIX_TIME_NS: u64 = 1_704_067_200 * 1_000_000_000;

// From <linux/random.h> and <linux/fs.h>; libc does not export them.
/// `_IOW('R', 0x03, int[2])`: add entropy and credit it (CAP_SYS_ADMIN).
const RNDADDENTROPY: libc::c_ulong = 0x4008_5203;
/// `_IO('R', 0x07)`: reseed the CRNG from the pool now.
const RNDRESEEDCRNG: libc::c_ulong = 0x5207;
/// `_IO(0x12, 97)`: write back and drop a block device's buffer cache.
const BLKFLSBUF: libc::c_ulong = 0x1261;

/// Errors of reidentify and prepare-snapshot, naming the field or the
/// step and its input.
#[derive(Debug, thiserror::Error)]
pub enum ReidentifyError {
    #[error("reidentify refused, nothing changed: {field} {value:?} is invalid: {reason}")]
    Invalid {
        field: &'static str,
        value: String,
        reason: String,
    },
    #[error("reidentify refused, nothing changed: {0}")]
    InvalidApply(ApplyError),
    #[error(transparent)]
    Apply(#[from] ApplyError),
    #[error(transparent)]
    Drive(#[from] DriveError),
    #[error("cannot {op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        command: String,
        status: String,
        stderr: String,
    },
    #[error("cannot set the guest clock to {unix_time_ns} ns: {source}")]
    Clock {
        unix_time_ns: u64,
        source: nix::Error,
    },
    #[error("cannot {op} on /dev/random: {source}")]
    Entropy { op: &'static str, source: io::Error },
    #[error("no network interface besides lo in {dir}")]
    NoNic { dir: PathBuf },
    #[error("{count} network interfaces besides lo in {dir} ({names}); a banger VM has one")]
    ManyNics {
        dir: PathBuf,
        count: usize,
        names: String,
    },
    #[error("cannot mount {device} on {target}: {source}")]
    Mount {
        device: PathBuf,
        target: PathBuf,
        source: nix::Error,
    },
    #[error("cannot unmount {target}: {source} (a process in the guest still uses it: stop it before snapshotting)")]
    Unmount { target: PathBuf, source: nix::Error },
    #[error("{target} is mounted from {found}, not from the work disk {device}: refusing to mount over it")]
    ForeignMount {
        target: PathBuf,
        found: String,
        device: PathBuf,
    },
}

impl ReidentifyError {
    fn invalid(field: &'static str, value: impl Into<String>, reason: impl Into<String>) -> Self {
        ReidentifyError::Invalid {
            field,
            value: value.into(),
            reason: reason.into(),
        }
    }
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> ReidentifyError + 'a {
    move |source| ReidentifyError::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

/// A [`GuestIdentity`] that passed every check, in the forms the steps use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checked {
    pub mac: [u8; 6],
    pub entropy: Vec<u8>,
}

/// Check every field of `id`; the first bad one is named.
pub fn validate(id: &GuestIdentity) -> Result<Checked, ReidentifyError> {
    if id.vm_id.is_empty()
        || id.vm_id.len() > 64
        || !id
            .vm_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(ReidentifyError::invalid(
            "vm_id",
            &id.vm_id,
            "1 to 64 letters, digits, '-' or '_'",
        ));
    }
    apply::validate_hostname(&id.hostname).map_err(ReidentifyError::InvalidApply)?;
    let mac = parse_mac(&id.mac)?;
    validate_network(id)?;
    apply::validate_host_key(&id.ssh_host_key).map_err(ReidentifyError::InvalidApply)?;
    apply::validate_authorized_keys(&id.authorized_keys).map_err(ReidentifyError::InvalidApply)?;
    validate_machine_id(&id.machine_id)?;
    if id.unix_time_ns < MIN_UNIX_TIME_NS {
        return Err(ReidentifyError::invalid(
            "unix_time_ns",
            id.unix_time_ns.to_string(),
            "before 2024-01-01: the host clock is wrong",
        ));
    }
    let entropy = decode_hex(&id.entropy_hex).ok_or_else(|| {
        ReidentifyError::invalid(
            "entropy_hex",
            short(&id.entropy_hex),
            "not an even number of hex digits",
        )
    })?;
    if !(MIN_REIDENTIFY_ENTROPY..=MAX_REIDENTIFY_ENTROPY).contains(&entropy.len()) {
        return Err(ReidentifyError::invalid(
            "entropy_hex",
            short(&id.entropy_hex),
            format!(
                "{} bytes; {MIN_REIDENTIFY_ENTROPY} to {MAX_REIDENTIFY_ENTROPY} are needed",
                entropy.len()
            ),
        ));
    }
    Ok(Checked { mac, entropy })
}

/// The first characters of a long value, for an error message.
fn short(s: &str) -> String {
    s.chars().take(24).collect()
}

fn parse_mac(text: &str) -> Result<[u8; 6], ReidentifyError> {
    let bad = |reason: &str| ReidentifyError::invalid("mac", text, reason);
    let parts: Vec<&str> = text.split(':').collect();
    if parts.len() != 6 {
        return Err(bad("six ':'-separated hex octets are needed"));
    }
    let mut mac = [0u8; 6];
    for (slot, part) in mac.iter_mut().zip(&parts) {
        if part.len() != 2 {
            return Err(bad("each octet is two hex digits"));
        }
        *slot = u8::from_str_radix(part, 16).map_err(|_| bad("not hex"))?;
    }
    if mac[0] & 1 == 1 {
        return Err(bad("a multicast address cannot be a NIC's address"));
    }
    if mac == [0; 6] {
        return Err(bad("the all-zero address cannot be a NIC's address"));
    }
    Ok(mac)
}

fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn validate_network(id: &GuestIdentity) -> Result<(), ReidentifyError> {
    let p = id.prefix_len;
    if !(8..=30).contains(&p) {
        return Err(ReidentifyError::invalid(
            "prefix_len",
            p.to_string(),
            "8 to 30 (room for the guest and its gateway)",
        ));
    }
    let mask = u32::MAX << (32 - p);
    let net = u32::from(id.address) & mask;
    let bcast = net | !mask;
    let host_address = |field: &'static str, a: Ipv4Addr| {
        let v = u32::from(a);
        if a.is_loopback() || a.is_multicast() || a.is_unspecified() || a.is_broadcast() {
            return Err(ReidentifyError::invalid(
                field,
                a.to_string(),
                "not a unicast address",
            ));
        }
        if v & mask != net {
            return Err(ReidentifyError::invalid(
                field,
                a.to_string(),
                format!("outside {}/{p}", Ipv4Addr::from(net)),
            ));
        }
        if v == net || v == bcast {
            return Err(ReidentifyError::invalid(
                field,
                a.to_string(),
                format!(
                    "the network or broadcast address of {}/{p}",
                    Ipv4Addr::from(net)
                ),
            ));
        }
        Ok(())
    };
    host_address("address", id.address)?;
    host_address("gateway", id.gateway)?;
    if id.gateway == id.address {
        return Err(ReidentifyError::invalid(
            "gateway",
            id.gateway.to_string(),
            "the same as the guest's address",
        ));
    }
    if id.dns.is_empty() || id.dns.len() > 3 {
        return Err(ReidentifyError::invalid(
            "dns",
            format!("{:?}", id.dns),
            "1 to 3 name servers (resolv.conf uses at most 3)",
        ));
    }
    if let Some(bad) = id
        .dns
        .iter()
        .find(|a| a.is_unspecified() || a.is_multicast())
    {
        return Err(ReidentifyError::invalid(
            "dns",
            bad.to_string(),
            "not a unicast address",
        ));
    }
    Ok(())
}

fn validate_machine_id(id: &str) -> Result<(), ReidentifyError> {
    if id.len() != 32 || !id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return Err(ReidentifyError::invalid(
            "machine_id",
            id,
            "32 lowercase hex digits are needed",
        ));
    }
    if id.bytes().all(|b| b == b'0') {
        return Err(ReidentifyError::invalid(
            "machine_id",
            id,
            "all zero is not an id",
        ));
    }
    Ok(())
}

fn decode_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

/// The real guest: `/`, `/sys`, `/proc`, `/dev`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct System {
    /// Where the work disk is mounted ([`WORK_MOUNT`]).
    pub work_mount: PathBuf,
    pub sys_net: PathBuf,
    pub proc_root: PathBuf,
    pub lookup: BlockLookup,
}

impl Default for System {
    fn default() -> Self {
        System {
            work_mount: PathBuf::from(WORK_MOUNT),
            sys_net: PathBuf::from("/sys/class/net"),
            proc_root: PathBuf::from("/proc"),
            lookup: BlockLookup::default(),
        }
    }
}

/// Apply `id` to this guest (as root, in the real `/`).
pub fn reidentify(sys: &System, id: &GuestIdentity) -> Result<ReidentifyReport, ReidentifyError> {
    let checked = validate(id)?;
    // vsock serves each connection on its own thread: two requests must
    // not interleave their steps (a poisoned lock only means an earlier
    // request panicked; the steps are safe to run again).
    let _one_at_a_time = STEPS.lock().unwrap_or_else(|p| p.into_inner());
    let mut changed = Vec::new();
    let mut warnings = Vec::new();
    let mut note = |what: &str, did: bool| {
        if did {
            changed.push(what.to_owned());
        }
    };

    let mut step_ms = Vec::new();
    let mut since = Instant::now();
    let mut lap = |step: &str| {
        step_ms.push((step.to_owned(), since.elapsed().as_millis() as u64));
        since = Instant::now();
    };
    let clock_step_ms = set_clock(id.unix_time_ns)?;
    lap("clock");
    let entropy_bits_credited = add_entropy(&checked.entropy)?;
    lap("entropy");

    let opts = ApplyOptions::system();
    let work_disk = if id.mount_work_disk {
        let (device, mounted) = mount_work_disk(&sys.lookup, &sys.work_mount)?;
        note("work_disk", mounted);
        Some(device.display().to_string())
    } else {
        None
    };
    lap("work_disk");
    let keys_file = Path::new("/").join(apply::AUTHORIZED_KEYS);
    let before = fs::read(&keys_file).ok();
    apply::install_authorized_keys(&id.authorized_keys, &opts)?;
    note("authorized_keys", fs::read(&keys_file).ok() != before);

    let key_changed = host_key_differs(id)?;
    if key_changed {
        apply::install_host_key(&id.ssh_host_key, &opts)?;
    }
    note("ssh_host_key", key_changed);
    // Restarted even when nothing can reach the guest yet: a restored sshd
    // holds the snapshot's key in memory. The marker is written only once
    // sshd was restarted with this key, so a request that failed between
    // the key and the restart restarts it when repeated.
    let served = Path::new(SSHD_SERVED);
    let public = id.ssh_host_key.public_openssh.trim();
    if key_changed || read_trimmed(served).as_deref() != Some(public) {
        restart_sshd(sys, &mut warnings)?;
        fs::create_dir_all("/run/banger").map_err(io_err("create", Path::new("/run/banger")))?;
        apply::write_atomic(
            served,
            &mut format!("{public}\n").as_bytes(),
            0o644,
            Owner::ROOT,
        )
        .map_err(ApplyError::from)?;
    }

    lap("ssh");
    let hostname_changed = current_hostname().as_deref() != Some(id.hostname.as_str())
        || fs::read_to_string("/etc/hostname")
            .ok()
            .as_deref()
            .map(str::trim)
            != Some(id.hostname.as_str());
    apply::write_hostname(&id.hostname, &opts)?;
    note("hostname", hostname_changed);
    note(
        "machine_id",
        write_machine_id(Path::new("/etc/machine-id"), &id.machine_id)?,
    );

    lap("names");
    let nic = find_nic(&sys.sys_net)?;
    let (mac_changed, address_changed) =
        configure_network(sys, &nic, id, &checked.mac, &mut warnings)?;
    note("mac", mac_changed);
    note("address", address_changed);
    note(
        "dns",
        write_resolv_conf(Path::new("/etc/resolv.conf"), &id.dns)?,
    );
    lap("network");

    // Health reports the VM this guest now is.
    let record = Ok(ApplyReport {
        vm_id: id.vm_id.clone(),
        hostname: id.hostname.clone(),
        files_installed: 0,
        warnings: warnings.clone(),
    });
    apply::write_record(Path::new("/"), &record, Owner::ROOT)?;

    Ok(ReidentifyReport {
        hostname: current_hostname().unwrap_or_default(),
        mac: read_trimmed(&sys.sys_net.join(&nic).join("address")).unwrap_or_default(),
        addresses: ipv4_addresses(&nic)?,
        machine_id: fs::read_to_string("/etc/machine-id")
            .map(|s| s.trim().to_owned())
            .unwrap_or_default(),
        clock_step_ms,
        entropy_bits_credited,
        entropy_avail: read_trimmed(&sys.proc_root.join("sys/kernel/random/entropy_avail"))
            .and_then(|s| s.parse().ok())
            .unwrap_or(0),
        vmgenid: has_vmgenid(),
        work_disk,
        changed,
        warnings,
        step_ms,
    })
}

fn read_trimmed(path: &Path) -> Option<String> {
    fs::read_to_string(path).ok().map(|s| s.trim().to_owned())
}

fn current_hostname() -> Option<String> {
    nix::unistd::gethostname()
        .ok()
        .map(|h| h.to_string_lossy().into_owned())
}

/// Step `CLOCK_REALTIME` to the host's time; returns the step in ms.
fn set_clock(unix_time_ns: u64) -> Result<i64, ReidentifyError> {
    let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_REALTIME).map_err(|source| {
        ReidentifyError::Clock {
            unix_time_ns,
            source,
        }
    })?;
    let now_ns = i128::from(now.tv_sec()) * 1_000_000_000 + i128::from(now.tv_nsec());
    let step_ms = ((i128::from(unix_time_ns) - now_ns) / 1_000_000) as i64;
    let secs = (unix_time_ns / 1_000_000_000) as libc::time_t;
    let nsecs = (unix_time_ns % 1_000_000_000) as libc::c_long;
    nix::time::clock_settime(
        nix::time::ClockId::CLOCK_REALTIME,
        nix::sys::time::TimeSpec::new(secs, nsecs),
    )
    .map_err(|source| ReidentifyError::Clock {
        unix_time_ns,
        source,
    })?;
    Ok(step_ms)
}

/// Mix `bytes` into the kernel's pool crediting 8 bits per byte, then
/// reseed the CRNG so `/dev/urandom` and `getrandom` output diverges from
/// every other VM restored from the same snapshot at once. Returns the
/// bits credited.
fn add_entropy(bytes: &[u8]) -> Result<u32, ReidentifyError> {
    let random = OpenOptions::new()
        .write(true)
        .open("/dev/random")
        .map_err(|source| ReidentifyError::Entropy { op: "open", source })?;
    let bits = u32::try_from(bytes.len() * 8).expect("entropy is at most 4096 bytes");
    // struct rand_pool_info { int entropy_count; int buf_size; __u32 buf[]; },
    // built in u32 words so it is int-aligned.
    let mut info = vec![0u32; 2 + bytes.len().div_ceil(4)];
    info[0] = bits;
    info[1] = bytes.len() as u32;
    for (i, chunk) in bytes.chunks(4).enumerate() {
        let mut word = [0u8; 4];
        word[..chunk.len()].copy_from_slice(chunk);
        info[2 + i] = u32::from_ne_bytes(word);
    }
    // SAFETY: `info` is a valid rand_pool_info whose buf_size bytes of
    // buffer follow the two ints within the allocation; the kernel only
    // reads it during the call.
    let rc = unsafe { libc::ioctl(random.as_raw_fd(), RNDADDENTROPY, info.as_ptr()) };
    if rc != 0 {
        return Err(ReidentifyError::Entropy {
            op: "RNDADDENTROPY",
            source: io::Error::last_os_error(),
        });
    }
    // SAFETY: RNDRESEEDCRNG takes no argument.
    let rc = unsafe { libc::ioctl(random.as_raw_fd(), RNDRESEEDCRNG) };
    if rc != 0 {
        return Err(ReidentifyError::Entropy {
            op: "RNDRESEEDCRNG",
            source: io::Error::last_os_error(),
        });
    }
    Ok(bits)
}

/// Whether Linux's vmgenid driver is bound to a device (ACPI `VMGENCTR` or
/// the devicetree node): then the kernel reseeds by itself on restore.
fn has_vmgenid() -> bool {
    [
        "/sys/bus/acpi/drivers/vmgenid",
        "/sys/bus/platform/drivers/vmgenid",
    ]
    .iter()
    .filter_map(|d| fs::read_dir(d).ok())
    .flatten()
    .flatten()
    .any(|e| e.file_name().to_string_lossy().contains(':'))
}

fn host_key_differs(id: &GuestIdentity) -> Result<bool, ReidentifyError> {
    let (private, public) =
        apply::validate_host_key(&id.ssh_host_key).map_err(ReidentifyError::InvalidApply)?;
    let (private, public) = apply::host_key_files(private, public);
    let path = Path::new("/").join(apply::HOST_KEY);
    Ok(
        fs::read_to_string(&path).ok().as_deref() != Some(private.as_str())
            || fs::read_to_string(path.with_extension("pub"))
                .ok()
                .as_deref()
                != Some(public.as_str()),
    )
}

/// Restart sshd so it serves the new host key, and wait until it listens
/// again. With systemd, `systemctl restart` (Debian's ssh.service keeps
/// open sessions, KillMode=process); without, SIGHUP to the pid in
/// /run/sshd.pid (sshd re-executes itself and rereads its keys).
fn restart_sshd(sys: &System, warnings: &mut Vec<String>) -> Result<(), ReidentifyError> {
    if Path::new("/run/systemd/system").is_dir() {
        let unit = ["ssh.service", "sshd.service"].into_iter().find(|u| {
            Command::new("systemctl")
                .args(["is-active", "--quiet", u])
                .status()
                .is_ok_and(|s| s.success())
        });
        match unit {
            Some(unit) => run(Command::new("systemctl").args(["restart", unit]))?,
            None => {
                warnings
                    .push("sshd is not running: the new host key is used when it starts".into());
                return Ok(());
            }
        }
    } else {
        let pid = read_trimmed(Path::new("/run/sshd.pid")).and_then(|p| p.parse::<i32>().ok());
        match pid {
            Some(pid) => nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGHUP,
            )
            .map_err(|e| ReidentifyError::Io {
                op: "signal sshd (SIGHUP) from",
                path: PathBuf::from("/run/sshd.pid"),
                source: e.into(),
            })?,
            None => {
                warnings.push("no sshd to restart (/run/sshd.pid)".into());
                return Ok(());
            }
        }
    }
    let deadline = Instant::now() + SSHD_WAIT;
    loop {
        let listening = procfs::listening_ports(&sys.proc_root)
            .map(|ports| {
                ports.iter().any(|p| {
                    p.port == 22
                        && p.proto.starts_with("tcp")
                        && p.process.as_deref().is_some_and(|n| n.starts_with("sshd"))
                })
            })
            .unwrap_or(false);
        if listening {
            return Ok(());
        }
        if Instant::now() > deadline {
            warnings.push(format!(
                "sshd did not listen on port 22 within {SSHD_WAIT:?} of its restart"
            ));
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Write `/etc/machine-id`; returns whether it changed. When it is a mount
/// point (systemd bind-mounts /run/machine-id over it on a read-only root)
/// it is written in place, since a rename onto a mount point fails.
fn write_machine_id(path: &Path, id: &str) -> Result<bool, ReidentifyError> {
    let text = format!("{id}\n");
    if fs::read_to_string(path).ok().as_deref() == Some(text.as_str()) {
        return Ok(false);
    }
    match apply::write_atomic(path, &mut text.as_bytes(), 0o444, Owner::ROOT) {
        Ok(()) => Ok(true),
        Err(fail) if fail.source.raw_os_error() == Some(libc::EBUSY) => {
            fs::write(path, text).map_err(io_err("write", path))?;
            Ok(true)
        }
        Err(fail) => Err(ApplyError::from(fail).into()),
    }
}

fn write_resolv_conf(path: &Path, dns: &[IpAddr]) -> Result<bool, ReidentifyError> {
    let text: String = dns.iter().map(|a| format!("nameserver {a}\n")).collect();
    if fs::read_to_string(path).ok().as_deref() == Some(text.as_str()) {
        return Ok(false);
    }
    apply::write_atomic(path, &mut text.as_bytes(), 0o644, Owner::ROOT)
        .map_err(ApplyError::from)?;
    Ok(true)
}

/// The VM's one NIC: the only link in `sys_net` besides `lo` that is backed
/// by a device (virtual links made inside the guest, e.g. Docker's, have
/// no `device`).
pub fn find_nic(sys_net: &Path) -> Result<String, ReidentifyError> {
    let mut nics: Vec<String> = fs::read_dir(sys_net)
        .map_err(io_err("list", sys_net))?
        .flatten()
        .filter(|e| e.path().join("device").exists())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n != "lo")
        .collect();
    nics.sort();
    match nics.len() {
        0 => Err(ReidentifyError::NoNic {
            dir: sys_net.to_owned(),
        }),
        1 => Ok(nics.remove(0)),
        count => Err(ReidentifyError::ManyNics {
            dir: sys_net.to_owned(),
            count,
            names: nics.join(", "),
        }),
    }
}

fn run(cmd: &mut Command) -> Result<(), ReidentifyError> {
    let command = format!(
        "{} {}",
        cmd.get_program().to_string_lossy(),
        cmd.get_args()
            .map(|a| a.to_string_lossy())
            .collect::<Vec<_>>()
            .join(" ")
    );
    let out = cmd.output().map_err(|e| ReidentifyError::Command {
        command: command.clone(),
        status: "not started".into(),
        stderr: e.to_string(),
    })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(ReidentifyError::Command {
            command,
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        })
    }
}

fn ip(args: &[&str]) -> Result<(), ReidentifyError> {
    run(Command::new("ip").args(args))
}

/// The NIC's IPv4 addresses as `a.b.c.d/p`.
fn ipv4_addresses(nic: &str) -> Result<Vec<String>, ReidentifyError> {
    let out = Command::new("ip")
        .args(["-4", "-o", "addr", "show", "dev", nic])
        .output()
        .map_err(|e| ReidentifyError::Command {
            command: format!("ip -4 -o addr show dev {nic}"),
            status: "not started".into(),
            stderr: e.to_string(),
        })?;
    Ok(parse_ip_addr_lines(&String::from_utf8_lossy(&out.stdout)))
}

/// Addresses from `ip -4 -o addr show` lines (`2: eth0    inet 10.0.0.2/24 brd ...`).
fn parse_ip_addr_lines(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            words.find(|w| *w == "inet")?;
            words.next().map(str::to_owned)
        })
        .collect()
}

/// networkd's config for the VM's address, in the form
/// systemd-network-generator writes for banger's `ip=...:off`.
fn networkd_config(nic: &str, id: &GuestIdentity) -> String {
    let dns: String = id.dns.iter().map(|a| format!("DNS={a}\n")).collect();
    format!(
        "# Written by banger-vsock-agent reidentify (warm start); replaces the\n\
         # snapshot's ip= from the kernel command line.\n\
         [Match]\nName={nic}\n\n[Link]\nActivationPolicy=up\n\n\
         [Network]\nDHCP=no\nLinkLocalAddressing=no\nIPv6AcceptRA=no\n{dns}\n\
         [Address]\nAddress={}/{}\n\n[Route]\nGateway={}\n",
        id.address, id.prefix_len, id.gateway
    )
}

/// MAC, address, route and neighbour table of `nic`; returns (mac changed,
/// address changed).
fn configure_network(
    sys: &System,
    nic: &str,
    id: &GuestIdentity,
    mac: &[u8; 6],
    warnings: &mut Vec<String>,
) -> Result<(bool, bool), ReidentifyError> {
    let want_mac = format_mac(mac);
    let want_addr = format!("{}/{}", id.address, id.prefix_len);
    let have_mac = read_trimmed(&sys.sys_net.join(nic).join("address")).unwrap_or_default();
    let mac_changed = have_mac != want_mac;

    // networkd first, while the old address is still up: once it rereads
    // its files it owns the new address, and never puts the old one back
    // when the link comes up again.
    let networkd_dir = Path::new(NETWORKD_FILE).parent().expect("has a parent");
    let uses_networkd = networkd_dir.is_dir() || Path::new("/run/systemd/netif").is_dir();
    let config = networkd_config(nic, id);
    let config_changed =
        uses_networkd && fs::read_to_string(NETWORKD_FILE).ok().as_deref() != Some(config.as_str());
    if config_changed {
        fs::create_dir_all(networkd_dir).map_err(io_err("create", networkd_dir))?;
        apply::write_atomic(
            Path::new(NETWORKD_FILE),
            &mut config.as_bytes(),
            0o644,
            Owner::ROOT,
        )
        .map_err(ApplyError::from)?;
    }

    let addresses = ipv4_addresses(nic)?;
    let address_changed = addresses != [want_addr.clone()];
    if mac_changed {
        ip(&["link", "set", "dev", nic, "down"])?;
        ip(&["link", "set", "dev", nic, "address", &want_mac])?;
    }
    if address_changed {
        ip(&["addr", "flush", "dev", nic])?;
    }
    if mac_changed || address_changed {
        // Peers' MACs learnt by the snapshot's guest are someone else's now.
        ip(&["neigh", "flush", "dev", nic])?;
    }
    // Only a running networkd that manages the link can put the snapshot's
    // address back. A warming boot without `ip=` leaves the link unmanaged
    // and saves the restart (about a second under TCG).
    let networkd_running = uses_networkd && networkd_manages(sys, nic);
    if networkd_running && (config_changed || mac_changed || address_changed) {
        // A restart rather than `networkctl reload`: that needs D-Bus,
        // which the minimal images do not run. Until networkd has
        // configured the link from the new file it may put the snapshot's
        // address back, so it is waited for.
        run(Command::new("systemctl").args(["restart", "systemd-networkd.service"]))?;
    }
    ip(&["link", "set", "dev", nic, "up"])?;
    if networkd_running {
        wait_networkd(sys, nic, warnings);
    }
    ip(&["addr", "replace", &want_addr, "dev", nic])?;
    ip(&[
        "route",
        "replace",
        "default",
        "via",
        &id.gateway.to_string(),
        "dev",
        nic,
    ])?;
    // Anything else (the snapshot's address re-added by a networkd that
    // had not reloaded yet) goes.
    for stale in ipv4_addresses(nic)?.into_iter().filter(|a| *a != want_addr) {
        ip(&["addr", "del", &stale, "dev", nic])?;
    }
    Ok((mac_changed, address_changed))
}

/// Whether systemd-networkd runs and manages `nic` (its link state file
/// does not say `unmanaged`).
fn networkd_manages(sys: &System, nic: &str) -> bool {
    let active = Command::new("systemctl")
        .args(["is-active", "--quiet", "systemd-networkd.service"])
        .status()
        .is_ok_and(|s| s.success());
    let Some(index) = read_trimmed(&sys.sys_net.join(nic).join("ifindex")) else {
        return active;
    };
    let state = fs::read_to_string(Path::new("/run/systemd/netif/links").join(index));
    active && !state.is_ok_and(|t| t.lines().any(|l| l == "ADMIN_STATE=unmanaged"))
}

/// Wait until networkd has configured `nic` from [`NETWORKD_FILE`]
/// (its state file in /run/systemd/netif/links says so); a warning when it
/// does not within [`NETWORKD_WAIT`].
fn wait_networkd(sys: &System, nic: &str, warnings: &mut Vec<String>) {
    let Some(index) = read_trimmed(&sys.sys_net.join(nic).join("ifindex")) else {
        return;
    };
    let state = Path::new("/run/systemd/netif/links").join(index);
    let deadline = Instant::now() + NETWORKD_WAIT;
    loop {
        let text = fs::read_to_string(&state).unwrap_or_default();
        let value = |key: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
                .map(str::to_owned)
        };
        let admin = value("ADMIN_STATE");
        if value("NETWORK_FILE").as_deref() == Some(NETWORKD_FILE)
            && matches!(
                admin.as_deref(),
                Some("configured" | "failed" | "unmanaged")
            )
        {
            if admin.as_deref() != Some("configured") {
                warnings.push(format!(
                    "systemd-networkd reports {nic} {}",
                    admin.unwrap_or_default()
                ));
            }
            return;
        }
        if Instant::now() > deadline {
            warnings.push(format!(
                "systemd-networkd did not configure {nic} from {NETWORKD_FILE} within {NETWORKD_WAIT:?} ({})",
                text.lines().filter(|l| l.starts_with("ADMIN_STATE") || l.starts_with("NETWORK_FILE")).collect::<Vec<_>>().join(", ")
            ));
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The work disk's device and whether this call mounted it. Already
/// mounted from that device: nothing to do. Mounted from anything else:
/// refused.
fn mount_work_disk(
    lookup: &BlockLookup,
    target: &Path,
) -> Result<(PathBuf, bool), ReidentifyError> {
    let device = work_device(lookup.find_waiting(WORK_DISK_LABEL, Duration::from_secs(10))?);
    if let Some(found) = mounted_device(target)? {
        let dev_rdev = fs::metadata(&device)
            .map_err(io_err("stat", &device))?
            .rdev();
        if found == dev_rdev {
            return Ok((device, false));
        }
        return Err(ReidentifyError::ForeignMount {
            target: target.to_owned(),
            found: format!(
                "device {}:{}",
                libc::major(found as libc::dev_t),
                libc::minor(found as libc::dev_t)
            ),
            device,
        });
    }
    // Blocks of the snapshot's placeholder disk may still be cached for
    // this device: drop them before anything reads the VM's own disk.
    flush_buffers(&device)?;
    // As a cold boot's systemd-fsck does (fstab pass 2); the host sizes the
    // filesystem, so nothing is grown here.
    // e2fsck -p: 0 clean, 1 errors fixed; more is a disk to look at by hand.
    let out = Command::new("e2fsck")
        .args(["-p"])
        .arg(&device)
        .output()
        .map_err(|e| ReidentifyError::Command {
            command: format!("e2fsck -p {}", device.display()),
            status: "not started".into(),
            stderr: e.to_string(),
        })?;
    if !matches!(out.status.code(), Some(0 | 1)) {
        return Err(ReidentifyError::Command {
            command: format!("e2fsck -p {}", device.display()),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stdout).trim().to_owned(),
        });
    }
    nix::mount::mount(
        Some(&device),
        target,
        Some("ext4"),
        MsFlags::empty(),
        None::<&str>,
    )
    .map_err(|source| ReidentifyError::Mount {
        device: device.clone(),
        target: target.to_owned(),
        source,
    })?;
    Ok((device, true))
}

/// The device node itself (`/dev/vdb`) rather than udev's label link, so
/// answers and errors name the disk.
fn work_device(found: PathBuf) -> PathBuf {
    fs::canonicalize(&found).unwrap_or(found)
}

/// The device number mounted at `target`, if `target` is a mount point.
fn mounted_device(target: &Path) -> Result<Option<u64>, ReidentifyError> {
    let meta = fs::metadata(target).map_err(io_err("stat", target))?;
    let parent = target.parent().unwrap_or(Path::new("/"));
    let parent_meta = fs::metadata(parent).map_err(io_err("stat", parent))?;
    Ok((meta.dev() != parent_meta.dev()).then_some(meta.dev()))
}

fn flush_buffers(device: &Path) -> Result<(), ReidentifyError> {
    let file = File::open(device).map_err(io_err("open", device))?;
    // SAFETY: BLKFLSBUF takes no argument and acts on the open device.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), BLKFLSBUF, 0) };
    if rc != 0 {
        return Err(ReidentifyError::Io {
            op: "flush the buffers (BLKFLSBUF) of",
            path: device.to_owned(),
            source: io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// Before a snapshot: sync, unmount the work disk from `/root` and drop its
/// cached blocks, so nothing of it is in the snapshot's memory. Returns the
/// device that was unmounted.
pub fn prepare_snapshot(sys: &System) -> Result<Option<String>, ReidentifyError> {
    let _one_at_a_time = STEPS.lock().unwrap_or_else(|p| p.into_inner());
    nix::unistd::sync();
    let target = sys.work_mount.as_path();
    if mounted_device(target)?.is_none() {
        return Ok(None);
    }
    let device = work_device(sys.lookup.find(WORK_DISK_LABEL)?);
    nix::mount::umount2(target, MntFlags::empty()).map_err(|source| ReidentifyError::Unmount {
        target: target.to_owned(),
        source,
    })?;
    flush_buffers(&device)?;
    let drop_caches = sys.proc_root.join("sys/vm/drop_caches");
    fs::write(&drop_caches, "3\n").map_err(io_err("write", &drop_caches))?;
    Ok(Some(device.display().to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use banger_wire::guest::SshHostKey;

    pub(crate) fn identity() -> GuestIdentity {
        GuestIdentity {
            vm_id: "0123456789abcdef".into(),
            hostname: "web-2".into(),
            mac: "02:fc:00:00:00:07".into(),
            address: Ipv4Addr::new(172, 30, 0, 7),
            prefix_len: 24,
            gateway: Ipv4Addr::new(172, 30, 0, 1),
            dns: vec!["1.1.1.1".parse().unwrap()],
            ssh_host_key: SshHostKey {
                private_openssh:
                    "-----BEGIN OPENSSH PRIVATE KEY-----\nAAAA\n-----END OPENSSH PRIVATE KEY-----\n"
                        .into(),
                public_openssh: "ssh-ed25519 AAAAC3Nz host".into(),
            },
            authorized_keys: vec!["ssh-ed25519 AAAAC3Nz user".into()],
            machine_id: "0123456789abcdef0123456789abcdef".into(),
            unix_time_ns: 1_800_000_000_000_000_000,
            entropy_hex: "ab".repeat(64),
            mount_work_disk: true,
        }
    }

    fn refused_field(id: &GuestIdentity) -> String {
        match validate(id) {
            Err(ReidentifyError::Invalid { field, .. }) => field.to_owned(),
            Err(ReidentifyError::InvalidApply(e)) => format!("apply: {e}"),
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn a_good_identity_passes_and_decodes() {
        let checked = validate(&identity()).unwrap();
        assert_eq!(checked.mac, [0x02, 0xfc, 0, 0, 0, 7]);
        assert_eq!(checked.entropy, vec![0xab; 64]);
        // Uppercase MACs (as some VMMs print them) are the same MAC.
        let mut id = identity();
        id.mac = "02:FC:00:00:00:07".into();
        assert_eq!(validate(&id).unwrap().mac, checked.mac);
    }

    #[test]
    fn each_bad_field_is_named() {
        type Breaker = Box<dyn Fn(&mut GuestIdentity)>;
        let cases: Vec<(&str, Breaker)> = vec![
            ("vm_id", Box::new(|i| i.vm_id = "a/b".into())),
            ("mac", Box::new(|i| i.mac = "02:fc:00:00:00".into())),
            ("mac", Box::new(|i| i.mac = "02:fc:00:00:00:zz".into())),
            ("mac", Box::new(|i| i.mac = "01:00:5e:00:00:01".into())),
            ("mac", Box::new(|i| i.mac = "00:00:00:00:00:00".into())),
            ("mac", Box::new(|i| i.mac = "002:fc:0:00:00:07".into())),
            ("prefix_len", Box::new(|i| i.prefix_len = 31)),
            ("prefix_len", Box::new(|i| i.prefix_len = 0)),
            (
                "address",
                Box::new(|i| i.address = Ipv4Addr::new(172, 30, 0, 0)),
            ),
            (
                "address",
                Box::new(|i| i.address = Ipv4Addr::new(172, 30, 0, 255)),
            ),
            (
                "address",
                Box::new(|i| i.address = Ipv4Addr::new(127, 0, 0, 1)),
            ),
            (
                "gateway",
                Box::new(|i| i.gateway = Ipv4Addr::new(10, 0, 0, 1)),
            ),
            ("gateway", Box::new(|i| i.gateway = i.address)),
            ("dns", Box::new(|i| i.dns.clear())),
            (
                "dns",
                Box::new(|i| i.dns = vec!["0.0.0.0".parse().unwrap()]),
            ),
            (
                "dns",
                Box::new(|i| i.dns = vec!["1.1.1.1".parse().unwrap(); 4]),
            ),
            (
                "machine_id",
                Box::new(|i| i.machine_id = "ABCDEF".repeat(5) + "01"),
            ),
            ("machine_id", Box::new(|i| i.machine_id = "0".repeat(32))),
            ("machine_id", Box::new(|i| i.machine_id = "abc".into())),
            ("unix_time_ns", Box::new(|i| i.unix_time_ns = 5)),
            ("entropy_hex", Box::new(|i| i.entropy_hex = "ab".repeat(63))),
            (
                "entropy_hex",
                Box::new(|i| i.entropy_hex = "ab".repeat(4097)),
            ),
            ("entropy_hex", Box::new(|i| i.entropy_hex = "xy".repeat(64))),
            ("entropy_hex", Box::new(|i| i.entropy_hex = "a".repeat(129))),
        ];
        for (field, break_it) in cases {
            let mut id = identity();
            break_it(&mut id);
            assert_eq!(refused_field(&id), field, "{id:?}");
            let message = validate(&id).unwrap_err().to_string();
            assert!(message.contains("nothing changed"), "{message}");
        }
    }

    #[test]
    fn hostname_host_key_and_authorized_keys_use_the_apply_checks() {
        let mut id = identity();
        id.hostname = "-bad".into();
        assert!(refused_field(&id).contains("hostname"));
        let mut id = identity();
        id.ssh_host_key.public_openssh = "ssh-rsa AAAA".into();
        assert!(refused_field(&id).contains("host key"));
        let mut id = identity();
        id.authorized_keys = vec!["ssh-ed25519 A\nssh-ed25519 B".into()];
        assert!(refused_field(&id).contains("authorized_keys[0]"));
    }

    #[test]
    fn networkd_config_names_the_nic_address_route_and_dns() {
        let mut id = identity();
        id.dns.push("2606:4700:4700::1111".parse().unwrap());
        let text = networkd_config("eth0", &id);
        for line in [
            "Name=eth0",
            "Address=172.30.0.7/24",
            "Gateway=172.30.0.1",
            "DNS=1.1.1.1",
            "DNS=2606:4700:4700::1111",
            "DHCP=no",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing:\n{text}");
        }
    }

    #[test]
    fn ip_addr_lines_give_the_addresses() {
        let text = "2: eth0    inet 172.30.0.7/24 brd 172.30.0.255 scope global eth0\\       valid_lft forever preferred_lft forever\n\
                    2: eth0    inet 10.1.2.3/8 scope global secondary eth0\n";
        assert_eq!(
            parse_ip_addr_lines(text),
            vec!["172.30.0.7/24".to_owned(), "10.1.2.3/8".to_owned()]
        );
        assert!(parse_ip_addr_lines("").is_empty());
    }

    #[test]
    fn the_nic_is_the_one_device_backed_link() {
        let dir = tempfile::tempdir().unwrap();
        let net = dir.path();
        let link = |name: &str, device: bool| {
            fs::create_dir_all(net.join(name)).unwrap();
            if device {
                fs::create_dir_all(net.join(name).join("device")).unwrap();
            }
        };
        assert!(matches!(find_nic(net), Err(ReidentifyError::NoNic { .. })));
        link("lo", false);
        link("docker0", false);
        link("eth0", true);
        assert_eq!(find_nic(net).unwrap(), "eth0");
        link("eth1", true);
        let e = find_nic(net).unwrap_err().to_string();
        assert!(e.contains("eth0, eth1"), "{e}");
    }

    #[test]
    fn machine_id_is_replaced_only_when_it_differs() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("machine-id");
        fs::write(&path, "ffffffffffffffffffffffffffffffff\n").unwrap();
        let id = "0123456789abcdef0123456789abcdef";
        assert!(write_machine_id(&path, id).unwrap());
        assert_eq!(fs::read_to_string(&path).unwrap(), format!("{id}\n"));
        assert!(!write_machine_id(&path, id).unwrap());
    }
}
