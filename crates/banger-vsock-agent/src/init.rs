//! `banger-vsock-agent init`: PID 1 of imported images that have no init
//! system (most container images). `banger image pull` points the image's
//! `/sbin/init` at a copy of the agent; the kernel bundle's initrd
//! `switch_root`s to it. It does what systemd and banger's units do in the
//! recipe images, in this order:
//!
//! 1. mount `/proc`, `/sys`, `/dev`, `/dev/pts`, `/dev/shm`, `/run`, `/tmp`;
//! 2. hand over to the agent on the config drive (`exec`, still PID 1), so
//!    the agent always matches the host, as `banger-guest-load` does;
//! 3. mount the work disk on `/root`, apply the config drive (hostname, host
//!    key, authorized_keys, file_sync), configure the network from `ip=` and
//!    `banger.dns=` on the kernel command line;
//! 4. start the agent's server, and sshd (after the first-boot install of
//!    openssh-server when the image has none); restart them when they die;
//! 5. reap every orphan; on SIGINT (Ctrl-Alt-Del, Firecracker's stop),
//!    SIGUSR2 or SIGPWR power off, on SIGTERM reboot: every process gets
//!    SIGTERM, then SIGKILL, the work disk is unmounted, the root remounted
//!    read-only, and `reboot(2)` is called.
//!
//! PID 1 must never exit (the kernel panics), so every step logs its failure
//! to the console and boot goes on: a VM without network or sshd can still
//! be stopped cleanly and its console read.

use std::collections::HashSet;
use std::ffi::CString;
use std::io;
use std::net::Ipv4Addr;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use banger_wire::guest::CONFIG_DRIVE_LABEL;
use nix::mount::MsFlags;
use nix::sys::signal::{SigSet, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use crate::apply::{self, ApplyOptions, Owner};
use crate::drive::{self, BlockLookup};

/// Where `banger image pull` puts the agent in the image (`/sbin/init`
/// links here).
pub const IMAGE_AGENT: &str = "/usr/local/lib/banger/banger-vsock-agent";
/// The first-boot openssh-server install script `banger image pull` writes
/// when the image has no sshd.
pub const SSHD_INSTALL: &str = "/usr/local/lib/banger/sshd-install";
/// The drive's agent, copied to a tmpfs and exec'd.
pub const RUN_AGENT: &str = "/run/banger/banger-vsock-agent";
/// Label of the per-VM work disk, mounted on `/root`.
pub const WORK_LABEL: &str = "banger-work";
const SSHD: &str = "/usr/sbin/sshd";
const HOST_KEY: &str = "/etc/ssh/ssh_host_ed25519_key";
const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// How long children get between SIGTERM and SIGKILL at shutdown.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// Pause before restarting a service that exited.
const RESTART_PAUSE: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error("banger-vsock-agent init must run as PID 1 (it runs as {pid}): it is the /sbin/init of images imported without an init system")]
    NotPid1 { pid: i32 },
    #[error("mount {fstype} on {target}: {source}")]
    Mount {
        fstype: &'static str,
        target: PathBuf,
        source: nix::Error,
    },
    #[error("kernel command line ip={value:?}: {reason}")]
    BadIp { value: String, reason: &'static str },
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("network interface {iface}: {op}: {source}")]
    Net {
        iface: String,
        op: &'static str,
        source: io::Error,
    },
    #[error("no network interface besides lo appeared in /sys/class/net")]
    NoInterface,
    #[error("exec {path}: {source}")]
    Exec { path: PathBuf, source: io::Error },
    #[error(transparent)]
    Drive(#[from] drive::DriveError),
    #[error(transparent)]
    Apply(#[from] apply::ApplyError),
}

/// `ip=` of the kernel command line (the kernel's nfsroot syntax,
/// `client:server:gateway:netmask:hostname:device:autoconf`, as banger writes
/// it); `None` fields were empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpConfig {
    pub address: Ipv4Addr,
    pub gateway: Option<Ipv4Addr>,
    pub netmask: Ipv4Addr,
    pub hostname: Option<String>,
    pub device: Option<String>,
}

/// What init reads from the kernel command line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BootParams {
    pub ip: Option<IpConfig>,
    /// `banger.dns=ADDR[,ADDR...]`.
    pub dns: Vec<String>,
}

/// Parse `/proc/cmdline`. `ip=dhcp`, `ip=off` and the like configure
/// nothing (banger always gives a static address).
pub fn parse_cmdline(cmdline: &str) -> Result<BootParams, InitError> {
    let mut params = BootParams::default();
    for arg in cmdline.split_ascii_whitespace() {
        if let Some(v) = arg.strip_prefix("ip=") {
            params.ip = parse_ip(v)?;
        } else if let Some(v) = arg.strip_prefix("banger.dns=") {
            params.dns = v
                .split(',')
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect();
        }
    }
    Ok(params)
}

fn parse_ip(value: &str) -> Result<Option<IpConfig>, InitError> {
    let bad = |reason| InitError::BadIp {
        value: value.to_owned(),
        reason,
    };
    let fields: Vec<&str> = value.split(':').collect();
    if fields.len() < 4 {
        // `dhcp`, `off`, `on`, ...: not a static configuration.
        return Ok(None);
    }
    let addr = |s: &str, reason| -> Result<Option<Ipv4Addr>, InitError> {
        if s.is_empty() {
            Ok(None)
        } else {
            s.parse().map(Some).map_err(|_| bad(reason))
        }
    };
    let address = addr(fields[0], "the client address is not IPv4")?
        .ok_or_else(|| bad("no client address"))?;
    let gateway = addr(fields[2], "the gateway is not IPv4")?;
    let netmask = addr(fields[3], "the netmask is not IPv4")?.ok_or_else(|| bad("no netmask"))?;
    let m = u32::from(netmask);
    if m.leading_ones() != m.count_ones() {
        return Err(bad("the netmask is not contiguous"));
    }
    let text = |i: usize| {
        fields
            .get(i)
            .filter(|s| !s.is_empty())
            .map(|s| (*s).to_owned())
    };
    let device = text(5);
    if device
        .as_deref()
        .is_some_and(|d| d.len() >= libc::IFNAMSIZ || d.contains('/'))
    {
        return Err(bad("the device name is invalid"));
    }
    Ok(Some(IpConfig {
        address,
        gateway,
        netmask,
        hostname: text(4),
        device,
    }))
}

/// `/etc/resolv.conf` for `servers`.
pub fn resolv_conf(servers: &[String]) -> String {
    let mut out = String::from("# Written at boot by banger's init (banger.dns=).\n");
    for s in servers {
        out.push_str(&format!("nameserver {s}\n"));
    }
    out
}

fn log(msg: impl std::fmt::Display) {
    eprintln!("banger-init: {msg}");
}

/// Run as PID 1. `from_drive` is set after the hand-over to the config
/// drive's agent. Returns only when not PID 1.
pub fn run(from_drive: bool) -> InitError {
    let pid = std::process::id();
    if pid != 1 {
        return InitError::NotPid1 { pid: pid as i32 };
    }
    // Signals are taken synchronously in the main loop; children get an
    // unblocked mask back (see `spawn`).
    let mask = handled_signals();
    if let Err(e) = mask.thread_block() {
        log(format!("block signals: {e}"));
    }
    std::env::set_var("PATH", PATH);
    mount_basics();
    // Ctrl-Alt-Del (Firecracker's SendCtrlAltDel) becomes SIGINT to us.
    if let Err(e) = nix::sys::reboot::set_cad_enabled(false) {
        log(format!("disable Ctrl-Alt-Del reboot: {e}"));
    }
    if !from_drive {
        match hand_over() {
            Ok(never) => match never {},
            Err(e) => log(format!("{e}; going on with the image's agent")),
        }
    }
    let params = std::fs::read_to_string("/proc/cmdline")
        .map_err(|source| InitError::Io {
            op: "read",
            path: "/proc/cmdline".into(),
            source,
        })
        .and_then(|c| parse_cmdline(&c))
        .unwrap_or_else(|e| {
            log(e);
            BootParams::default()
        });
    if let Err(e) = set_up(&params) {
        log(e);
    }
    supervise(&mask)
}

/// Mount what every program expects; already mounted ones are left alone
/// (the initrd moves its `/dev` here, and a hand-over runs this twice).
fn mount_basics() {
    let nosuid = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    let mounts: [(&str, &str, MsFlags, Option<&str>); 7] = [
        ("proc", "/proc", nosuid | MsFlags::MS_NOEXEC, None),
        ("sysfs", "/sys", nosuid | MsFlags::MS_NOEXEC, None),
        ("devtmpfs", "/dev", MsFlags::MS_NOSUID, Some("mode=0755")),
        (
            "devpts",
            "/dev/pts",
            MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
            Some("gid=5,mode=0620,ptmxmode=0666"),
        ),
        ("tmpfs", "/dev/shm", nosuid, Some("mode=1777")),
        ("tmpfs", "/run", nosuid, Some("mode=0755")),
        ("tmpfs", "/tmp", nosuid, Some("mode=1777")),
    ];
    for (fstype, target, flags, data) in mounts {
        let mounted = mounted_targets();
        if mounted.contains(target) {
            continue;
        }
        let r = std::fs::create_dir_all(target)
            .map_err(|e| nix::Error::from_raw(e.raw_os_error().unwrap_or(libc::EIO)))
            .and_then(|()| nix::mount::mount(Some(fstype), target, Some(fstype), flags, data));
        if let Err(source) = r {
            log(InitError::Mount {
                fstype,
                target: target.into(),
                source,
            });
        }
    }
}

fn mounted_targets() -> HashSet<String> {
    std::fs::read_to_string("/proc/self/mounts")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(1).map(str::to_owned))
        .collect()
}

/// Copy the config drive's agent to `/run/banger` and exec it as PID 1.
fn hand_over() -> Result<std::convert::Infallible, InitError> {
    let device =
        BlockLookup::default().find_waiting(CONFIG_DRIVE_LABEL, Duration::from_secs(30))?;
    let mount = drive::mount_readonly(&device, Path::new("/run/banger/cfg-load"))?;
    let io = |op, path: &Path| {
        let path = path.to_owned();
        move |source| InitError::Io { op, path, source }
    };
    let tmp = Path::new("/run/banger/banger-vsock-agent.new");
    let src = mount.path().join("banger-vsock-agent");
    std::fs::copy(&src, tmp).map_err(io("copy", &src))?;
    std::fs::set_permissions(tmp, std::fs::Permissions::from_mode(0o755))
        .map_err(io("chmod", tmp))?;
    std::fs::rename(tmp, RUN_AGENT).map_err(io("rename", tmp))?;
    mount.unmount()?;
    let err = Command::new(RUN_AGENT)
        .arg0("banger-vsock-agent")
        .args(["init", "--from-drive"])
        .exec();
    Err(InitError::Exec {
        path: RUN_AGENT.into(),
        source: err,
    })
}

/// Work disk, config drive, network.
fn set_up(params: &BootParams) -> Result<(), InitError> {
    bring_up("lo", None).unwrap_or_else(log);
    // /root must be mounted before the keys land in it.
    match BlockLookup::default().find_waiting(WORK_LABEL, Duration::from_secs(10)) {
        Ok(dev) => {
            if !mounted_targets().contains("/root") {
                nix::mount::mount(
                    Some(&dev),
                    "/root",
                    Some("ext4"),
                    MsFlags::empty(),
                    None::<&str>,
                )
                .map_err(|source| InitError::Mount {
                    fstype: "ext4",
                    target: "/root".into(),
                    source,
                })
                .unwrap_or_else(log);
            }
        }
        Err(e) => log(format!("{e}; /root stays on the root disk")),
    }
    let opts = ApplyOptions {
        root: PathBuf::from("/"),
        owner: Owner::ROOT,
        set_kernel_hostname: true,
    };
    let outcome = apply::apply_from_drive(
        &BlockLookup::default(),
        CONFIG_DRIVE_LABEL,
        Path::new(apply::DEFAULT_MOUNT_DIR),
        Duration::from_secs(10),
        &opts,
    );
    if let Err(e) = apply::write_record(&opts.root, &outcome, Owner::ROOT) {
        log(e);
    }
    match outcome {
        Ok(report) => {
            for w in &report.warnings {
                log(format!("warning: {w}"));
            }
            log(format!(
                "applied config of {} (hostname {})",
                report.vm_id, report.hostname
            ));
        }
        Err(e) => log(e),
    }
    if !params.dns.is_empty() {
        let path = Path::new("/etc/resolv.conf");
        // The image's resolv.conf may be a link into /run; replace it.
        let _ = std::fs::remove_file(path);
        std::fs::write(path, resolv_conf(&params.dns)).unwrap_or_else(|source| {
            log(InitError::Io {
                op: "write",
                path: path.into(),
                source,
            })
        });
    }
    if let Some(ip) = &params.ip {
        let iface = match &ip.device {
            Some(d) => d.clone(),
            None => first_interface(Duration::from_secs(10))?,
        };
        bring_up(&iface, Some(ip))?;
        log(format!(
            "{iface}: {}/{}",
            ip.address,
            u32::from(ip.netmask).count_ones()
        ));
    }
    Ok(())
}

fn first_interface(wait: Duration) -> Result<String, InitError> {
    let deadline = Instant::now() + wait;
    loop {
        let mut names: Vec<String> = std::fs::read_dir("/sys/class/net")
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n != "lo")
            .collect();
        names.sort();
        if let Some(n) = names.into_iter().next() {
            return Ok(n);
        }
        if Instant::now() >= deadline {
            return Err(InitError::NoInterface);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn sockaddr(addr: Ipv4Addr) -> libc::sockaddr {
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from(addr).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: sockaddr_in and sockaddr have the same size (16 bytes) and
    // sockaddr has no invalid bit patterns.
    unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(sin) }
}

/// Address, netmask, up, default route: the classic ioctls, so the image
/// needs no `ip` and the agent no netlink crate.
fn bring_up(iface: &str, ip: Option<&IpConfig>) -> Result<(), InitError> {
    let err = |op| {
        let iface = iface.to_owned();
        move |source| InitError::Net { iface, op, source }
    };
    // SAFETY: plain socket(2); the fd is owned below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(err("socket")(io::Error::last_os_error()));
    }
    // SAFETY: fd is a fresh descriptor nobody else owns.
    let sock = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let raw = std::os::fd::AsRawFd::as_raw_fd(&sock);
    // SAFETY: ifreq is plain data; all-zero is valid.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(iface.as_bytes()) {
        *dst = *src as libc::c_char;
    }
    let ioctl = |req: libc::c_ulong, arg: *mut libc::c_void, op| {
        // SAFETY: `arg` points to a live ifreq/rtentry of the kind `req` takes.
        if unsafe { libc::ioctl(raw, req as _, arg) } < 0 {
            Err(err(op)(io::Error::last_os_error()))
        } else {
            Ok(())
        }
    };
    if let Some(ip) = ip {
        req.ifr_ifru.ifru_addr = sockaddr(ip.address);
        ioctl(libc::SIOCSIFADDR, (&raw mut req).cast(), "set the address")?;
        req.ifr_ifru.ifru_addr = sockaddr(ip.netmask);
        ioctl(
            libc::SIOCSIFNETMASK,
            (&raw mut req).cast(),
            "set the netmask",
        )?;
    }
    ioctl(libc::SIOCGIFFLAGS, (&raw mut req).cast(), "read the flags")?;
    // SAFETY: SIOCGIFFLAGS filled ifru_flags.
    let flags = unsafe { req.ifr_ifru.ifru_flags };
    req.ifr_ifru.ifru_flags = flags | (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
    ioctl(libc::SIOCSIFFLAGS, (&raw mut req).cast(), "bring up")?;
    if let Some(gw) = ip.and_then(|ip| ip.gateway) {
        // SAFETY: rtentry is plain data; all-zero is valid.
        let mut rt: libc::rtentry = unsafe { std::mem::zeroed() };
        rt.rt_dst = sockaddr(Ipv4Addr::UNSPECIFIED);
        rt.rt_genmask = sockaddr(Ipv4Addr::UNSPECIFIED);
        rt.rt_gateway = sockaddr(gw);
        rt.rt_flags = libc::RTF_UP | libc::RTF_GATEWAY;
        let name = CString::new(iface).map_err(|e| err("name")(io::Error::other(e)))?;
        rt.rt_dev = name.as_ptr().cast_mut();
        ioctl(
            libc::SIOCADDRT,
            (&raw mut rt).cast(),
            "add the default route",
        )?;
    }
    Ok(())
}

fn handled_signals() -> SigSet {
    let mut set = SigSet::empty();
    for s in [
        Signal::SIGCHLD,
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGUSR1,
        Signal::SIGUSR2,
        Signal::SIGPWR,
        Signal::SIGHUP,
    ] {
        set.add(s);
    }
    set
}

/// A long-running child restarted when it exits, or a one-shot.
struct Service {
    name: &'static str,
    argv: Vec<String>,
    pid: Option<Pid>,
    start_at: Option<Instant>,
    restart: bool,
}

impl Service {
    fn new(name: &'static str, argv: &[&str], restart: bool) -> Service {
        Service {
            name,
            argv: argv.iter().map(|s| (*s).to_owned()).collect(),
            pid: None,
            start_at: None,
            restart,
        }
    }

    fn start(&mut self) {
        self.start_at = None;
        let mut cmd = Command::new(&self.argv[0]);
        cmd.args(&self.argv[1..]).env("PATH", PATH);
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                // Children start with the signals init blocks unblocked,
                // in their own session.
                let mut all: libc::sigset_t = std::mem::zeroed();
                libc::sigemptyset(&mut all);
                libc::sigprocmask(libc::SIG_SETMASK, &all, std::ptr::null_mut());
                libc::setsid();
                Ok(())
            });
        }
        match cmd.spawn() {
            Ok(child) => {
                log(format!("started {} (pid {})", self.name, child.id()));
                self.pid = Some(Pid::from_raw(child.id() as i32));
            }
            Err(e) => {
                log(format!("start {} ({}): {e}", self.name, self.argv[0]));
                if self.restart {
                    self.start_at = Some(Instant::now() + RESTART_PAUSE * 5);
                }
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Halt {
    PowerOff,
    Reboot,
}

/// The main loop: start services, reap, restart, and shut down on a signal.
fn supervise(mask: &SigSet) -> ! {
    let me = std::env::current_exe().unwrap_or_else(|_| PathBuf::from(RUN_AGENT));
    let me = me.to_string_lossy().into_owned();
    let mut agent = Service::new("guest agent", &[&me, "serve"], true);
    let mut sshd = Service::new("sshd", &[SSHD, "-D", "-e"], true);
    let mut install = Service::new("openssh-server install", &["/bin/sh", SSHD_INSTALL], false);
    agent.start();
    if Path::new(SSHD).exists() {
        start_sshd(&mut sshd);
    } else if Path::new(SSHD_INSTALL).exists() {
        log("no sshd: installing openssh-server (first boot)");
        install.start();
    } else {
        log("no sshd and no install script: the VM is not reachable over SSH");
    }
    loop {
        let now = Instant::now();
        for s in [&mut agent, &mut sshd] {
            if s.start_at.is_some_and(|t| t <= now) {
                if s.name == "sshd" {
                    start_sshd(s);
                } else {
                    s.start();
                }
            }
        }
        let signal = wait_signal(mask, Duration::from_millis(500));
        match signal {
            Some(Signal::SIGCHLD) | None => {}
            Some(Signal::SIGTERM) => shutdown(Halt::Reboot),
            Some(Signal::SIGINT | Signal::SIGUSR2 | Signal::SIGPWR | Signal::SIGUSR1) => {
                shutdown(Halt::PowerOff)
            }
            Some(other) => log(format!("ignoring {other}")),
        }
        for (pid, status) in reap() {
            for s in [&mut agent, &mut sshd, &mut install] {
                if s.pid == Some(pid) {
                    s.pid = None;
                    log(format!("{} exited: {status}", s.name));
                    if s.restart {
                        s.start_at = Some(Instant::now() + RESTART_PAUSE);
                    }
                }
            }
            if install.pid.is_none() && install.argv.len() == 2 && sshd.pid.is_none() {
                // The install finished (one way or the other): sshd now.
                install.argv.push("done".into());
                if Path::new(SSHD).exists() {
                    start_sshd(&mut sshd);
                } else {
                    log(format!(
                        "{SSHD} is still missing after {SSHD_INSTALL}; see its output above"
                    ));
                }
            }
        }
    }
}

fn start_sshd(sshd: &mut Service) {
    // sshd's privilege separation directory lives on the /run tmpfs.
    let _ = std::fs::create_dir_all("/run/sshd");
    if !Path::new(HOST_KEY).exists() {
        // No config drive: a key of this VM's own, never the image's.
        let r = Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", "", "-f", HOST_KEY])
            .status();
        if !r.is_ok_and(|s| s.success()) {
            log("ssh-keygen for the host key failed");
        }
    }
    sshd.start();
}

fn wait_signal(mask: &SigSet, timeout: Duration) -> Option<Signal> {
    let ts = libc::timespec {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_nsec: libc::c_long::from(timeout.subsec_nanos() as i32),
    };
    // SAFETY: `mask` is a valid sigset; no siginfo is requested.
    let n = unsafe { libc::sigtimedwait(mask.as_ref(), std::ptr::null_mut(), &ts) };
    if n < 0 {
        return None;
    }
    Signal::try_from(n).ok()
}

/// Reap every exited child (our services and every orphan).
fn reap() -> Vec<(Pid, String)> {
    let mut out = Vec::new();
    loop {
        match waitpid(None::<Pid>, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(pid, code)) => out.push((pid, format!("exit status {code}"))),
            Ok(WaitStatus::Signaled(pid, sig, _)) => out.push((pid, format!("killed by {sig}"))),
            Ok(WaitStatus::StillAlive) | Err(_) => return out,
            Ok(_) => {}
        }
    }
}

fn shutdown(halt: Halt) -> ! {
    log(match halt {
        Halt::PowerOff => "powering off",
        Halt::Reboot => "rebooting",
    });
    // SAFETY: kill(-1) signals every process but init itself.
    unsafe { libc::kill(-1, libc::SIGTERM) };
    let deadline = Instant::now() + STOP_GRACE;
    while Instant::now() < deadline {
        reap();
        if matches!(
            waitpid(None::<Pid>, Some(WaitPidFlag::WNOHANG)),
            Err(nix::Error::ECHILD)
        ) {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // SAFETY: as above.
    unsafe { libc::kill(-1, libc::SIGKILL) };
    while waitpid(None::<Pid>, None).is_ok() {}
    nix::unistd::sync();
    for target in ["/root", "/tmp"] {
        if let Err(e) = nix::mount::umount(target) {
            log(format!("unmount {target}: {e}"));
        }
    }
    if let Err(e) = nix::mount::mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
        None::<&str>,
    ) {
        log(format!("remount / read-only: {e}"));
    }
    nix::unistd::sync();
    let how = match halt {
        Halt::PowerOff => nix::sys::reboot::RebootMode::RB_POWER_OFF,
        Halt::Reboot => nix::sys::reboot::RebootMode::RB_AUTOBOOT,
    };
    let e = nix::sys::reboot::reboot(how);
    log(format!("reboot(2): {e:?}"));
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_bangers_ip_and_dns() {
        let p = parse_cmdline(
            "console=ttyS0 root=/dev/vda ip=172.30.0.7::172.30.0.1:255.255.255.0:web-1::off banger.dns=1.1.1.1,9.9.9.9 quiet",
        )
        .unwrap();
        assert_eq!(
            p.ip,
            Some(IpConfig {
                address: Ipv4Addr::new(172, 30, 0, 7),
                gateway: Some(Ipv4Addr::new(172, 30, 0, 1)),
                netmask: Ipv4Addr::new(255, 255, 255, 0),
                hostname: Some("web-1".into()),
                device: None,
            })
        );
        assert_eq!(p.dns, ["1.1.1.1", "9.9.9.9"]);
        assert_eq!(
            resolv_conf(&p.dns)
                .lines()
                .filter(|l| l.starts_with("nameserver"))
                .count(),
            2
        );
    }

    #[test]
    fn dhcp_and_absent_ip_configure_nothing() {
        assert_eq!(parse_cmdline("ip=dhcp").unwrap().ip, None);
        assert_eq!(parse_cmdline("ro quiet").unwrap(), BootParams::default());
    }

    #[test]
    fn hostile_ip_values_are_refused() {
        for bad in [
            "ip=::1.2.3.4:255.255.255.0",
            "ip=10.0.0.2::10.0.0.1:255.0.255.0",
            "ip=10.0.0.2::gw:255.255.255.0",
            "ip=10.0.0.2::10.0.0.1:255.255.255.0:h:../../etc:off",
            "ip=10.0.0.2::10.0.0.1:255.255.255.0:h:averyveryverylongname:off",
        ] {
            assert!(
                matches!(parse_cmdline(bad), Err(InitError::BadIp { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn refuses_to_run_unless_pid_1() {
        assert!(matches!(run(false), InitError::NotPid1 { .. }));
    }
}
