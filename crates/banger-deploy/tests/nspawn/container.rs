//! A Debian 12 tree booted with systemd as PID 1 under `systemd-nspawn`, for
//! the end-to-end test of the system install (`tests/nspawn.rs`).
//!
//! - The tree is built once by `build-tree.sh` (mmdebstrap) and cached under
//!   `~/.cache/banger/nspawn/<hash of the script>/`; it is never modified.
//! - Each [`Container`] boots an overlayfs over it (upper and work dirs in a
//!   temp dir), so a run's changes vanish with the temp dir.
//! - Commands run inside with `nsenter` into the container's PID 1 (mount,
//!   UTS, IPC, network and PID namespaces): with `--register=no` there is no
//!   machined to ask, and `systemd-run -M` needs one.
//! - [`Container`]'s `Drop` powers the container off (SIGTERM to nspawn, which
//!   asks systemd to halt; SIGKILL after a grace period), unmounts the
//!   overlay and removes the temp dir, also when the test fails.

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

/// The tree recipe; its hash keys the cache.
const BUILD_SCRIPT: &str = include_str!("build-tree.sh");

/// PATH inside the container (Debian's root PATH).
const ROOT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// PATH of ordinary users inside the container (Debian's default).
const USER_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// The cache directory of built trees.
fn cache_root() -> PathBuf {
    let home = std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "/root".into());
    PathBuf::from(home).join(".cache/banger/nspawn")
}

/// The pristine tree for the current `build-tree.sh`, built when missing
/// (a few minutes: mmdebstrap from the Debian mirror). Concurrent callers
/// wait on a lock; older trees are removed once a new one exists.
pub fn cached_tree() -> PathBuf {
    let key = hex::encode(Sha256::digest(BUILD_SCRIPT.as_bytes()));
    let key = &key[..16];
    let cache = cache_root();
    std::fs::create_dir_all(&cache).unwrap();
    // std's flock; released when `_lock` is dropped at the end of this call.
    let _lock = std::fs::File::create(cache.join(".lock")).unwrap();
    _lock.lock().expect("lock the nspawn tree cache");
    let tree = cache.join(key);
    if tree.join("usr/lib/systemd/systemd").is_file() {
        return tree;
    }
    let staging = cache.join(format!(".{key}.building"));
    let _ = std::fs::remove_dir_all(&staging);
    let script = cache.join(format!(".{key}.sh"));
    std::fs::write(&script, BUILD_SCRIPT).unwrap();
    eprintln!(
        "nspawn: building the container tree {} with mmdebstrap",
        tree.display()
    );
    let started = Instant::now();
    let out = Command::new("bash")
        .arg(&script)
        .arg(&staging)
        .output()
        .expect("run build-tree.sh");
    assert!(
        out.status.success(),
        "build-tree.sh failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::rename(&staging, &tree).unwrap();
    let _ = std::fs::remove_file(&script);
    eprintln!("nspawn: tree built in {:.0?}", started.elapsed());
    for entry in std::fs::read_dir(&cache).unwrap().flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if entry.path() != tree && !name.starts_with('.') {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
    tree
}

/// A host path bind-mounted into the container.
pub struct Bind {
    pub host: PathBuf,
    pub inside: String,
    pub read_only: bool,
}

/// A booted container (see the module docs).
pub struct Container {
    tmp: tempfile::TempDir,
    merged: PathBuf,
    nspawn: Option<Child>,
    leader: u32,
}

fn run_checked(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The pid (in our namespace) of the process whose parent is `parent` and
/// which is PID 1 of its own PID namespace: the container's systemd.
fn find_leader(parent: u32) -> Option<u32> {
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
            continue;
        };
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .map(str::trim)
                .map(str::to_owned)
        };
        let is_child = field("PPid:").and_then(|p| p.parse::<u32>().ok()) == Some(parent);
        let ns_pid_one = field("NSpid:").is_some_and(|ns| {
            let ids: Vec<&str> = ns.split_whitespace().collect();
            ids.len() > 1 && ids.last() == Some(&"1")
        });
        if is_child && ns_pid_one {
            return Some(pid);
        }
    }
    None
}

impl Container {
    /// Boot `tree` (through an overlay) with `binds`, and wait until systemd
    /// reports the system `running` (or `degraded`, whose failed units are
    /// printed). `/dev/kvm` is passed as a node of our own when the host has
    /// one (binding the host's node would let the container's tmpfiles chown
    /// it), unless the host's KVM is nested PVM: banger refuses that by
    /// looking for `/sys/module/kvm_pvm`, which the container's `/sys` (a
    /// tmpfs here) does not show, so the daemon inside would take KVM.
    pub fn boot(name: &str, tree: &Path, binds: &[Bind], timeout: Duration) -> Container {
        let tmp = tempfile::Builder::new()
            .prefix("banger-nspawn-")
            .tempdir()
            .unwrap();
        let (upper, work, merged) = (
            tmp.path().join("upper"),
            tmp.path().join("work"),
            tmp.path().join("merged"),
        );
        for d in [&upper, &work, &merged] {
            std::fs::create_dir(d).unwrap();
        }
        run_checked(
            Command::new("mount")
                .args(["-t", "overlay", "overlay", "-o"])
                .arg(format!(
                    "lowerdir={},upperdir={},workdir={}",
                    tree.display(),
                    upper.display(),
                    work.display()
                ))
                .arg(&merged),
        );
        let mut container = Container {
            tmp,
            merged,
            nspawn: None,
            leader: 0,
        };

        let mut cmd = Command::new("systemd-nspawn");
        cmd.arg("-D")
            .arg(&container.merged)
            .args([
                "--boot",
                "--register=no",
                "--keep-unit",
                "--private-network",
                "--console=pipe",
                "--quiet",
            ])
            .arg(format!("--machine={name}"));
        let pvm = Path::new("/sys/module/kvm_pvm").exists();
        if let Ok(md) = std::fs::metadata("/dev/kvm") {
            if md.file_type().is_char_device() && !pvm {
                let node = container.tmp.path().join("kvm");
                let dev = md.rdev();
                nix::sys::stat::mknod(
                    &node,
                    nix::sys::stat::SFlag::S_IFCHR,
                    nix::sys::stat::Mode::from_bits_truncate(0o600),
                    dev,
                )
                .expect("mknod a private /dev/kvm node");
                cmd.arg(format!("--bind={}:/dev/kvm", node.display()));
            }
        }
        for b in binds {
            let flag = if b.read_only { "--bind-ro" } else { "--bind" };
            cmd.arg(format!("{flag}={}:{}", b.host.display(), b.inside));
        }
        let log = std::fs::File::create(container.console_log()).unwrap();
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        let child = cmd.spawn().expect("spawn systemd-nspawn");
        let nspawn_pid = child.id();
        container.nspawn = Some(child);

        let deadline = Instant::now() + timeout;
        loop {
            if let Some(pid) = find_leader(nspawn_pid) {
                container.leader = pid;
                break;
            }
            if let Some(status) = container.nspawn.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "systemd-nspawn exited ({status}) before the container started:\n{}",
                    container.console()
                );
            }
            assert!(
                Instant::now() < deadline,
                "the container's PID 1 did not appear:\n{}",
                container.console()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let state = loop {
            let out = container.exec(&["systemctl", "is-system-running", "--wait"], 300);
            let state = String::from_utf8_lossy(&out.stdout).trim().to_owned();
            if state == "running" || state == "degraded" {
                break state;
            }
            assert!(
                Instant::now() < deadline,
                "the container's systemd is {state:?}, not running:\n{}",
                container.console()
            );
            std::thread::sleep(Duration::from_millis(500));
        };
        if state == "degraded" {
            let failed = container.exec(&["systemctl", "--failed", "--no-legend"], 30);
            eprintln!(
                "nspawn: system is degraded (not banger's units, they are not installed yet):\n{}",
                String::from_utf8_lossy(&failed.stdout)
            );
        }
        container
    }

    fn console_log(&self) -> PathBuf {
        self.tmp.path().join("console.log")
    }

    /// What nspawn printed (its errors; systemd stays quiet on a pipe).
    pub fn console(&self) -> String {
        std::fs::read_to_string(self.console_log()).unwrap_or_default()
    }

    /// The container's root as seen from the host (the overlay mount).
    pub fn root(&self) -> &Path {
        &self.merged
    }

    fn nsenter(&self) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg("-t")
            .arg(self.leader.to_string())
            .args(["-m", "-u", "-i", "-n", "-p", "--"]);
        cmd
    }

    /// Run `args` as root inside the container with a clean environment,
    /// killed after `timeout_secs`.
    pub fn exec(&self, args: &[&str], timeout_secs: u32) -> Output {
        let mut cmd = self.nsenter();
        cmd.args([
            "env",
            "-i",
            &format!("PATH={ROOT_PATH}"),
            "HOME=/root",
            "LANG=C.UTF-8",
        ])
        .args(["timeout", "--kill-after=10", &timeout_secs.to_string()])
        .args(args);
        output(cmd)
    }

    /// Run `args` as `user` (runuser, as a login would: the user's HOME, the
    /// default PATH, nothing else inherited), killed after `timeout_secs`.
    pub fn as_user(&self, user: &str, args: &[&str], timeout_secs: u32) -> Output {
        let mut cmd = self.nsenter();
        cmd.args(["env", "-i", &format!("PATH={ROOT_PATH}")])
            .args(["timeout", "--kill-after=10", &timeout_secs.to_string()])
            .args(["runuser", "-u", user, "--", "env", "-i"])
            .arg(format!("PATH={USER_PATH}"))
            .arg(format!("HOME=/home/{user}"))
            .arg(format!("USER={user}"))
            .arg(format!("LOGNAME={user}"))
            .arg("LANG=C.UTF-8")
            .args(args);
        output(cmd)
    }

    /// The journal of `unit` inside the container (for failure messages).
    pub fn journal(&self, unit: &str) -> String {
        let out = self.exec(
            &[
                "journalctl",
                "--no-pager",
                "-o",
                "short-monotonic",
                "-n",
                "80",
                "-u",
                unit,
            ],
            30,
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

fn output(mut cmd: Command) -> Output {
    cmd.stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e}"))
}

impl Drop for Container {
    fn drop(&mut self) {
        if let Some(mut child) = self.nspawn.take() {
            // nspawn turns SIGTERM into an orderly halt of the container's
            // systemd; the PID namespace takes every process (QEMUs too)
            // with it.
            let pid = nix::unistd::Pid::from_raw(child.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(90);
            loop {
                match child.try_wait() {
                    Ok(Some(_)) | Err(_) => break,
                    Ok(None) if Instant::now() >= deadline => {
                        let _ = child.kill();
                        let _ = child.wait();
                        break;
                    }
                    Ok(None) => std::thread::sleep(Duration::from_millis(200)),
                }
            }
        }
        let umount = Command::new("umount").arg(&self.merged).status();
        if !umount.is_ok_and(|s| s.success()) {
            let _ = Command::new("umount").arg("-l").arg(&self.merged).status();
        }
    }
}
