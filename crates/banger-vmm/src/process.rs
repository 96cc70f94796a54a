//! VMM process identity, spawning in its own session, waiting and killing.
//!
//! A pid alone does not identify a process across a daemon restart (pids are
//! reused), so banger records the pid together with the process start time
//! (field 22 of `/proc/PID/stat`, in clock ticks since boot) and treats a
//! VMM as alive only when both match and the process is not a zombie.
//! Waiting and signalling go through a pidfd opened after that check, so a
//! signal can never hit a recycled pid.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::time::Duration;

use tokio::io::unix::AsyncFd;

/// Errors of process inspection and control, naming the pid.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("process {pid} does not exist")]
    NoSuchProcess { pid: u32 },
    #[error("cannot read /proc/{pid}/stat: {source}")]
    ReadStat { pid: u32, source: std::io::Error },
    #[error("/proc/{pid}/stat is malformed: {content:?}")]
    MalformedStat { pid: u32, content: String },
    #[error("pidfd_open({pid}) failed: {source}")]
    PidfdOpen { pid: u32, source: std::io::Error },
    #[error("signal {signal} to process {pid} failed: {source}")]
    Signal {
        pid: u32,
        signal: i32,
        source: std::io::Error,
    },
    #[error("waiting for process {pid} failed: {source}")]
    Wait { pid: u32, source: std::io::Error },
    #[error("process {pid} did not exit after SIGKILL")]
    Survived { pid: u32 },
}

pub use banger_fs::proc::{parse_stat, ProcStat};

/// Read `/proc/PID/stat`.
pub fn proc_stat(pid: u32) -> Result<ProcStat, ProcessError> {
    banger_fs::proc::read_stat(pid).map_err(|e| match e {
        banger_fs::proc::StatError::NoSuchProcess { pid } => ProcessError::NoSuchProcess { pid },
        banger_fs::proc::StatError::Read { pid, source } => ProcessError::ReadStat { pid, source },
        banger_fs::proc::StatError::Malformed { pid, content } => {
            ProcessError::MalformedStat { pid, content }
        }
    })
}

/// The start time (field 22 of `/proc/PID/stat`) of a running process.
pub fn process_start_time(pid: u32) -> Result<u64, ProcessError> {
    Ok(proc_stat(pid)?.start_time)
}

/// Whether `pid` is still the process that had `start_time`, and has not exited
/// (a zombie waiting to be reaped counts as exited).
pub fn is_same_process(pid: u32, start_time: u64) -> bool {
    match proc_stat(pid) {
        Ok(stat) => stat.start_time == start_time && !stat.has_exited(),
        Err(_) => false,
    }
}

/// A pidfd for a process whose identity was verified after opening it.
#[derive(Debug)]
pub struct Pidfd {
    pid: u32,
    fd: OwnedFd,
}

impl Pidfd {
    /// Open a pidfd for `pid` if it is still the process started at `start_time`;
    /// `Ok(None)` when that process is gone.
    pub fn open_verified(pid: u32, start_time: u64) -> Result<Option<Pidfd>, ProcessError> {
        let Ok(raw_pid) = libc::pid_t::try_from(pid) else {
            return Ok(None);
        };
        // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1;
        // no memory is passed.
        let ret = unsafe { libc::syscall(libc::SYS_pidfd_open, raw_pid, 0) };
        if ret < 0 {
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::ESRCH) {
                return Ok(None);
            }
            return Err(ProcessError::PidfdOpen { pid, source: err });
        }
        let Ok(raw_fd) = i32::try_from(ret) else {
            return Err(ProcessError::PidfdOpen {
                pid,
                source: std::io::Error::other("pidfd_open returned an out-of-range fd"),
            });
        };
        // SAFETY: raw_fd was just returned by pidfd_open and is owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(raw_fd) };
        // Checked after opening: if the pid was recycled before pidfd_open, the
        // start time differs now; if it matches, the pidfd pins that process.
        if !is_same_process(pid, start_time) {
            return Ok(None);
        }
        Ok(Some(Pidfd { pid, fd }))
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Send `signal` to exactly this process. Sending to one that already
    /// exited is not an error.
    pub fn signal(&self, signal: i32) -> Result<(), ProcessError> {
        // SAFETY: pidfd_send_signal with a valid pidfd, a signal number, a null
        // siginfo pointer (allowed: the kernel fills a default) and no flags.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.fd.as_raw_fd(),
                signal,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
        if ret < 0 {
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::ESRCH) {
                return Ok(());
            }
            return Err(ProcessError::Signal {
                pid: self.pid,
                signal,
                source: err,
            });
        }
        Ok(())
    }

    /// Wait until the process exits (a pidfd turns readable on exit), at most
    /// `timeout`. Returns whether it exited.
    pub async fn wait_exit(&self, timeout: Duration) -> Result<bool, ProcessError> {
        let dup = self.fd.try_clone().map_err(|source| ProcessError::Wait {
            pid: self.pid,
            source,
        })?;
        // SAFETY: `dup` is an OwnedFd, so the fd is valid and open, and it is
        // moved into the AsyncFd, which keeps it (and its number) until drop.
        let afd = unsafe { AsyncFd::register_with_interest(dup, tokio::io::Interest::READABLE) }
            .map_err(|e| ProcessError::Wait {
                pid: self.pid,
                source: e.into_parts().1,
            })?;
        match tokio::time::timeout(timeout, afd.readable()).await {
            Ok(Ok(_guard)) => Ok(true),
            Ok(Err(source)) => Err(ProcessError::Wait {
                pid: self.pid,
                source,
            }),
            Err(_elapsed) => Ok(false),
        }
    }
}

/// Wait until `pid`/`start_time` has exited, at most `timeout`; true when it has.
pub async fn wait_exit(pid: u32, start_time: u64, timeout: Duration) -> Result<bool, ProcessError> {
    match Pidfd::open_verified(pid, start_time)? {
        None => Ok(true),
        Some(pidfd) => pidfd.wait_exit(timeout).await,
    }
}

/// SIGKILL `pid`/`start_time` if it is still that process, then wait for it to
/// be gone (at most `timeout`); true when it is gone.
pub async fn kill_and_wait(
    pid: u32,
    start_time: u64,
    timeout: Duration,
) -> Result<bool, ProcessError> {
    match Pidfd::open_verified(pid, start_time)? {
        None => Ok(true),
        Some(pidfd) => {
            pidfd.signal(libc::SIGKILL)?;
            pidfd.wait_exit(timeout).await
        }
    }
}

/// The flags after which a VMM's argument vector names its VM id: QEMU
/// `-name ID`, Firecracker and its jailer `--id ID`.
pub const ID_FLAGS: [&str; 2] = ["-name", "--id"];

/// Whether an argument vector (`/proc/PID/cmdline`, NUL-separated) names
/// VM `id` right after one of [`ID_FLAGS`].
pub fn cmdline_names_vm(cmdline: &[u8], id: &str) -> bool {
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    args.windows(2)
        .any(|pair| ID_FLAGS.iter().any(|f| pair[0] == f.as_bytes()) && pair[1] == id.as_bytes())
}

/// Every live process of this user whose argument vector names VM `id`
/// (see [`cmdline_names_vm`]), as `(pid, start time)`.
///
/// This is how a VMM is found when no pid of it was recorded: the VM id is
/// on its command line from `execve` on, before any pid could be written
/// anywhere, so a daemon killed between spawn and recording the pid (or in
/// the middle of QEMU's `-daemonize` fork) still finds it after a restart.
/// VM ids are 128 random bits, so another daemon's VMMs never match; only
/// processes of the caller's own uid are returned, so another user cannot
/// get a process of theirs killed by naming our VM.
pub fn processes_naming_vm(id: &str) -> Vec<(u32, u64)> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    live_processes(Some(me), |cmdline| cmdline_names_vm(cmdline, id))
}

/// Live processes (not zombies, not this one) whose argument vector
/// (`/proc/PID/cmdline`) `matches`, owned by `uid` when given, as `(pid,
/// start time)`.
pub fn live_processes(uid: Option<u32>, matches: impl Fn(&[u8]) -> bool) -> Vec<(u32, u64)> {
    use std::os::unix::fs::MetadataExt;
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let own = std::process::id();
    let mut found = Vec::new();
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == own || uid.is_some_and(|u| entry.metadata().ok().map(|m| m.uid()) != Some(u)) {
            continue;
        }
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        if !matches(&cmdline) {
            continue;
        }
        if let Ok(stat) = proc_stat(pid) {
            if !matches!(stat.state, 'Z' | 'X' | 'x') {
                found.push((pid, stat.start_time));
            }
        }
    }
    found
}

/// SIGKILL every process [`processes_naming_vm`] finds for `id` except
/// `keep` (a re-adopted VMM), and wait for each to go (at most `timeout`
/// apiece). Returns the pids killed; an error names one that survived.
pub async fn kill_processes_naming_vm(
    id: &str,
    keep: Option<(u32, u64)>,
    timeout: Duration,
) -> Result<Vec<u32>, ProcessError> {
    let mut killed = Vec::new();
    for (pid, start) in processes_naming_vm(id) {
        if Some((pid, start)) == keep {
            continue;
        }
        if !kill_and_wait(pid, start, timeout).await? {
            return Err(ProcessError::Survived { pid });
        }
        killed.push(pid);
    }
    Ok(killed)
}

/// A `tokio::process::Command` for a VMM that must outlive the daemon: a new
/// session (no controlling terminal, no SIGHUP/SIGINT from the daemon's
/// terminal or process group), no parent-death signal, stdin from /dev/null.
pub fn detached_command(program: &Path) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(program);
    cmd.stdin(std::process::Stdio::null());
    cmd.kill_on_drop(false);
    // SAFETY: the closure runs in the forked child before exec and calls only
    // setsid(2), which is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd
}

/// The session id of `pid` (`getsid(2)`).
pub fn session_of(pid: u32) -> Result<u32, ProcessError> {
    let raw = libc::pid_t::try_from(pid).map_err(|_| ProcessError::NoSuchProcess { pid })?;
    // SAFETY: getsid takes a pid and returns a sid or -1; no memory is passed.
    let sid = unsafe { libc::getsid(raw) };
    if sid < 0 {
        return Err(ProcessError::NoSuchProcess { pid });
    }
    u32::try_from(sid).map_err(|_| ProcessError::NoSuchProcess { pid })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_ids_are_matched_only_after_an_id_flag() {
        let id = "0123456789abcdef0123456789abcdef";
        let qemu = format!("qemu-system-x86_64\0-name\0{id}\0-m\0512\0");
        assert!(cmdline_names_vm(qemu.as_bytes(), id));
        let fc = format!("firecracker\0--api-sock\0/run/x.sock\0--id\0{id}\0");
        assert!(cmdline_names_vm(fc.as_bytes(), id));
        // The id elsewhere (a path, another flag's value, a prefix) is no match.
        for other in [
            format!("qemu\0-pidfile\0/run/vms/{id}/qemu.pid\0"),
            format!("qemu\0-m\0{id}\0"),
            format!("qemu\0-name\0{id}x\0"),
            format!("qemu\0-name\0{}\0", &id[..31]),
            format!("{id}\0-name\0"),
        ] {
            assert!(!cmdline_names_vm(other.as_bytes(), id), "{other:?}");
        }
    }

    #[tokio::test]
    async fn processes_naming_a_vm_are_found_and_killed() {
        let id = format!("{:032x}", u128::from(std::process::id()) << 64 | 0xbeef);
        // `read` is a shell builtin: one process, blocked on the open pipe,
        // whose argument vector names the VM like a VMM's does.
        let mut child = std::process::Command::new("sh")
            .args(["-c", "read x", "sh", "-name", &id])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let pid = child.id();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !processes_naming_vm(&id).iter().any(|(p, _)| *p == pid) {
            assert!(std::time::Instant::now() < deadline, "not found");
            std::thread::sleep(Duration::from_millis(20));
        }
        let start = process_start_time(pid).unwrap();
        // A kept process survives the sweep.
        let killed = kill_processes_naming_vm(&id, Some((pid, start)), Duration::from_secs(5))
            .await
            .unwrap();
        assert!(killed.is_empty());
        assert!(is_same_process(pid, start));
        let killed = kill_processes_naming_vm(&id, None, Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(killed, vec![pid]);
        child.wait().unwrap();
        assert!(processes_naming_vm(&id).is_empty());
    }

    #[test]
    fn own_process_identity() {
        let me = std::process::id();
        let start = process_start_time(me).unwrap();
        assert!(is_same_process(me, start));
        assert!(!is_same_process(me, start + 1));
    }
}
