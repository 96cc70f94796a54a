//! Shared harness of the VM tests: a network namespace, a private per-user
//! environment with a real `bangerd` inside the namespace, the `banger` CLI
//! run there, a test image, and checks that a deleted VM left nothing.
//!
//! Everything is torn down by [`World`]'s `Drop`, also when a test fails:
//! the daemon is killed, every QEMU whose command line names the test's temp
//! dir is killed, the namespace (with its bridge and taps) is deleted and the
//! temp dir removed.
//!
//! Booting tests need `BANGER_BOOT_TESTS=1` (each TCG boot costs tens of CPU
//! seconds) and an installed image: `BANGER_TEST_STORE` (a banger state dir
//! holding `images/<name>` and `kernels/<name>`, default the caller's
//! `$XDG_STATE_HOME/banger`), `BANGER_TEST_IMAGE` (default
//! `debian-bookworm-minimal`).

#![allow(dead_code)]

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use banger_state::StateDb;
use banger_wire::vm::{VmInfo, VmList};

use crate::common::{self, Daemon, TestEnv};

/// The image the tests boot unless `BANGER_TEST_IMAGE` says otherwise.
pub const DEFAULT_TEST_IMAGE: &str = "debian-bookworm-minimal";

/// The `banger` CLI from the same build.
pub fn cli_bin() -> PathBuf {
    common::daemon_bin().with_file_name("banger")
}

/// The guest agent from the same build (put on every config drive).
pub fn agent_bin() -> PathBuf {
    common::daemon_bin().with_file_name("banger-vsock-agent")
}

/// Whether VM tests can run at all (root, ip, nft, the helper, the CLI and
/// the agent built); prints why not, fails with `BANGER_REQUIRE_PRIVILEGED=1`.
pub fn privileged(test: &str) -> bool {
    common::privileged(test)
        && banger_test_support::Gate::named(test)
            .file(&cli_bin(), "cargo build -p banger-cli")
            .file(&agent_bin(), "cargo build -p banger-vsock-agent")
            .check()
}

/// Whether booting tests are enabled (`BANGER_BOOT_TESTS=1`); prints why not.
pub fn boot_tests(test: &str) -> bool {
    banger_test_support::Gate::named(test).boot_tests().check()
}

/// A network namespace, deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new() -> Netns {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!("bvm-{}-{n}", std::process::id());
        run_ok(Command::new("ip").args(["netns", "add", &name]));
        let ns = Netns { name };
        run_ok(Command::new("ip").args(["-n", &ns.name, "link", "set", "lo", "up"]));
        ns
    }

    /// Links in the namespace (`ip -br link`).
    pub fn links(&self) -> String {
        output_text(Command::new("ip").args(["-n", &self.name, "-br", "link"]))
    }

    /// nftables ruleset in the namespace.
    pub fn ruleset(&self) -> String {
        output_text(
            Command::new("ip").args(["netns", "exec", &self.name, "nft", "list", "ruleset"]),
        )
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

fn run_ok(cmd: &mut Command) {
    let out = cmd.output().expect("run command");
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn output_text(cmd: &mut Command) -> String {
    let out = cmd.output().expect("run command");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Pids of processes whose command line mentions `needle` (our QEMUs: their
/// disks and sockets live in the test's temp dir).
pub fn processes_mentioning(needle: &str) -> Vec<u32> {
    banger_vmm::process::live_processes(None, |cmdline| {
        let text = String::from_utf8_lossy(cmdline).replace('\0', " ");
        text.contains("qemu") && text.contains(needle)
    })
    .into_iter()
    .map(|(pid, _)| pid)
    .collect()
}

/// The test image: an installed image and kernel, with the guest boot files
/// of the image recipes (`images/files/rootfs`) added when the image lacks
/// them (images built before the recipes installed them).
#[derive(Debug, Clone)]
pub struct TestImage {
    pub name: String,
    /// Directory to link as `<state>/images/<name>`.
    pub image_dir: PathBuf,
    pub kernel: String,
    /// Directory to link as `<state>/kernels/<kernel>`.
    pub kernel_dir: PathBuf,
}

fn default_store() -> PathBuf {
    match std::env::var_os("XDG_STATE_HOME").filter(|v| !v.is_empty()) {
        Some(d) => PathBuf::from(d).join("banger"),
        None => {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".local/state/banger")
        }
    }
}

fn debugfs(image: &Path, request: &str) -> String {
    let out = Command::new("debugfs")
        .args(["-R", request])
        .arg(image)
        .stderr(Stdio::null())
        .output()
        .expect("run debugfs");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The recipes' own copy of the guest boot files (one copy for images and
/// tests).
fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../images/files/rootfs")
}

/// Find the test image and prepare it (once per build; cached in the
/// target dir under a lock). Panics with instructions when it is missing.
pub fn test_image() -> TestImage {
    test_image_named(
        &std::env::var("BANGER_TEST_IMAGE").unwrap_or_else(|_| DEFAULT_TEST_IMAGE.into()),
    )
}

/// [`test_image`] for the image `name` of `BANGER_TEST_STORE`.
pub fn test_image_named(name: &str) -> TestImage {
    let store = std::env::var_os("BANGER_TEST_STORE")
        .map(PathBuf::from)
        .unwrap_or_else(default_store);
    let name = name.to_owned();
    let src_dir = store.join("images").join(&name);
    let manifest: serde_json::Value = match std::fs::read(src_dir.join("manifest.json")) {
        Ok(b) => serde_json::from_slice(&b).expect("image manifest is JSON"),
        Err(e) => panic!(
            "BANGER_BOOT_TESTS=1 but image {name} is not installed in {} ({e}); build it with \
             `banger image build {name}` or point BANGER_TEST_STORE at a state dir holding it",
            store.display()
        ),
    };
    let kernel = manifest["kernel_ref"]
        .as_str()
        .expect("image manifest names its kernel")
        .to_owned();
    let kernel_dir = store.join("kernels").join(&kernel);
    assert!(
        kernel_dir.join("vmlinux").is_file(),
        "kernel {kernel} of image {name} is not installed in {}",
        store.display()
    );
    let rootfs = src_dir.join("rootfs.ext4");
    let meta = std::fs::metadata(&rootfs).expect("image rootfs.ext4");

    // Keyed by the source image and the fixture files, so a rebuilt image or
    // changed fixtures make a new copy.
    let mut key = format!("{}:{}:{}", rootfs.display(), meta.len(), meta.mtime());
    for f in [
        "banger-guest-load",
        "banger-guest-apply.service",
        "banger-guest-agent.service",
        "fstab",
    ] {
        key.push_str(&std::fs::read_to_string(fixtures().join(f)).unwrap());
    }
    let digest = {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        key.hash(&mut h);
        h.finish()
    };
    let cache = Path::new(env!("CARGO_TARGET_TMPDIR")).join("vm-test-images");
    std::fs::create_dir_all(&cache).unwrap();
    let _lock = banger_host::lock::FileLock::exclusive(&cache.join(".lock"))
        .expect("lock the test image cache");
    let prepared = cache.join(format!("{name}-{digest:016x}"));
    if !prepared.join("rootfs.ext4").is_file() {
        let staging = cache.join(format!(".staging-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&staging);
        std::fs::create_dir_all(&staging).unwrap();
        for f in ["manifest.json", "origin.json"] {
            if src_dir.join(f).is_file() {
                std::fs::copy(src_dir.join(f), staging.join(f)).unwrap();
            }
        }
        let copy = staging.join("rootfs.ext4");
        run_ok(
            Command::new("cp")
                .args(["--sparse=always", "--reflink=auto"])
                .arg(&rootfs)
                .arg(&copy),
        );
        prepare_rootfs(&copy);
        std::fs::rename(&staging, &prepared).unwrap();
        // Copies of older images or fixtures are never used again.
        for entry in std::fs::read_dir(&cache).unwrap().flatten() {
            let file_name = entry.file_name();
            let other = file_name.to_string_lossy();
            if other.starts_with(&format!("{name}-")) && entry.path() != prepared {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }
    TestImage {
        name,
        image_dir: prepared,
        kernel,
        kernel_dir,
    }
}

/// Add what the VM tests need to a copy of an image: the guest boot files
/// (unless the image already runs the agent from `/run/banger`), and a
/// relative `/usr/sbin/init` link (the kernel bundle's initrd checks
/// `-x /newroot/sbin/init`, which an absolute link fails outside the new root).
fn prepare_rootfs(rootfs: &Path) {
    let mut cmds = String::new();
    let units = debugfs(rootfs, "ls -p /etc/systemd/system");
    let has_loader = units
        .lines()
        .filter_map(|l| l.split('/').nth(5))
        .filter(|f| f.ends_with(".service"))
        .any(|unit| {
            debugfs(rootfs, &format!("cat /etc/systemd/system/{unit}"))
                .contains("/run/banger/banger-vsock-agent")
        });
    if !has_loader {
        eprintln!(
            "test image {}: no guest boot step; adding the recipes' files with debugfs",
            rootfs.display()
        );
        let f = fixtures();
        let write = |src: &str, dest: &str| format!("write {} {dest}\n", f.join(src).display());
        cmds.push_str("rm /etc/fstab\n");
        cmds.push_str(&write("fstab", "/etc/fstab"));
        cmds.push_str("mkdir /usr/local/lib/banger\n");
        cmds.push_str(&write(
            "banger-guest-load",
            "/usr/local/lib/banger/guest-load",
        ));
        for unit in ["banger-guest-apply.service", "banger-guest-agent.service"] {
            cmds.push_str(&write(unit, &format!("/etc/systemd/system/{unit}")));
            cmds.push_str(&format!(
                "symlink /etc/systemd/system/multi-user.target.wants/{unit} /etc/systemd/system/{unit}\n"
            ));
        }
    }
    let init = debugfs(rootfs, "stat /usr/sbin/init");
    if let Some(dest) = init
        .split("Fast link dest: \"")
        .nth(1)
        .and_then(|r| r.split('"').next())
    {
        if let Some(rel) = dest.strip_prefix('/') {
            cmds.push_str(&format!(
                "rm /usr/sbin/init\nsymlink /usr/sbin/init ../{rel}\n"
            ));
        }
    }
    if cmds.is_empty() {
        return;
    }
    let script = rootfs.with_extension("debugfs");
    std::fs::write(&script, cmds).unwrap();
    let out = Command::new("debugfs")
        .arg("-w")
        .arg("-f")
        .arg(&script)
        .arg(rootfs)
        .output()
        .expect("run debugfs -w");
    assert!(out.status.success(), "debugfs -w failed: {out:?}");
    let _ = std::fs::remove_file(&script);
    let check = Command::new("e2fsck")
        .args(["-fn"])
        .arg(rootfs)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "prepared test image is inconsistent: {}",
        String::from_utf8_lossy(&check.stdout)
    );
}

/// A test's whole world: namespace, environment, daemon, image.
pub struct World {
    pub daemon: Option<Daemon>,
    pub env: TestEnv,
    pub ns: Netns,
    pub image: Option<TestImage>,
}

impl World {
    /// A namespace and a private environment with `config` as config.toml
    /// and, when given, `image` installed; the daemon is started.
    pub async fn new(config: &str, image: Option<TestImage>) -> World {
        let ns = Netns::new();
        let env = TestEnv::new();
        let state = &env.layout.state_dir;
        if let Some(img) = &image {
            for (kind, name, dir) in [
                ("images", &img.name, &img.image_dir),
                ("kernels", &img.kernel, &img.kernel_dir),
            ] {
                let parent = state.join(kind);
                std::fs::create_dir_all(&parent).unwrap();
                std::os::unix::fs::symlink(dir, parent.join(name)).unwrap();
            }
        }
        let cfg = env.layout.default_config.clone();
        std::fs::create_dir_all(cfg.parent().unwrap()).unwrap();
        std::fs::write(&cfg, config).unwrap();
        let mut world = World {
            daemon: None,
            env,
            ns,
            image,
        };
        world.start_daemon().await;
        world
    }

    /// A command run inside the namespace with the test's environment.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = self.env.command("ip");
        cmd.args(["netns", "exec", &self.ns.name])
            .arg(program)
            .env("BANGER_AGENT_BIN", agent_bin())
            .env("BANGERD_BIN", common::daemon_bin());
        cmd
    }

    /// Start (or restart) the daemon in the namespace.
    pub async fn start_daemon(&mut self) {
        let cmd = self.command(common::daemon_bin());
        self.daemon = Some(Daemon::start_with(&self.env, cmd).await);
    }

    /// SIGKILL the daemon (its VMMs keep running).
    pub fn kill_daemon(&mut self) {
        if let Some(mut d) = self.daemon.take() {
            d.child.kill().unwrap();
            d.wait_exit();
        }
    }

    /// Run `banger ARGS` in the namespace.
    pub fn banger(&self, args: &[&str]) -> Output {
        self.command(cli_bin())
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run banger")
    }

    /// Run `banger ARGS` and insist it succeeds; returns stdout.
    pub fn banger_ok(&self, args: &[&str]) -> String {
        let out = self.banger(args);
        assert!(
            out.status.success(),
            "banger {args:?} failed ({}):\nstdout: {}\nstderr: {}\ndaemon log tail:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.log_tail()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The last lines of the daemon log (for failure messages).
    pub fn log_tail(&self) -> String {
        let log = self.env.log();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// `banger vm list --json`.
    pub fn list(&self) -> Vec<VmInfo> {
        let text = self.banger_ok(&["vm", "list", "--json"]);
        serde_json::from_str::<VmList>(&text).unwrap().vms
    }

    /// `banger vm show --json NAME`.
    pub fn show(&self, name: &str) -> VmInfo {
        serde_json::from_str(&self.banger_ok(&["vm", "show", "--json", name])).unwrap()
    }

    /// `banger vm session show --json VM SESSION`.
    pub fn session_show(&self, vm: &str, session: &str) -> banger_wire::session::SessionInfo {
        let out = self.banger_ok(&["vm", "session", "show", vm, session, "--json"]);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
    }

    /// Poll `vm list` until `name` is in `state` (bounded).
    pub fn wait_state(&self, name: &str, state: &str, within: Duration) -> VmInfo {
        let deadline = Instant::now() + within;
        loop {
            if let Some(vm) = self.list().into_iter().find(|v| v.name == name) {
                if vm.state == state {
                    return vm;
                }
                assert!(
                    Instant::now() < deadline,
                    "VM {name} is {} after {within:?}, expected {state}; log:\n{}",
                    vm.state,
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// A handle on the state database (WAL: safe beside the daemon).
    pub fn db(&self) -> StateDb {
        StateDb::open(&self.env.layout.database()).unwrap()
    }

    /// banger's known_hosts file.
    pub fn known_hosts(&self) -> PathBuf {
        self.env.layout.state_dir.join("ssh/known_hosts")
    }

    /// QEMU processes of this test.
    pub fn qemus(&self) -> Vec<u32> {
        processes_mentioning(&self.env.dir.path().display().to_string())
    }

    /// Assert that VM `name` (with id `id`, last at `ip`) left nothing:
    /// no process, tap, lease, record, disk, run-dir socket or known_hosts line.
    pub fn assert_nothing_left(&self, name: &str, id: &str, ip: Option<&str>) {
        assert!(
            self.qemus().is_empty(),
            "QEMU still running: {:?}",
            self.qemus()
        );
        let links = self.ns.links();
        assert!(!links.contains("banger-t"), "taps left: {links}");
        let db = self.db();
        assert!(
            db.get_vm_by_name(name).unwrap().is_none(),
            "record of {name} left"
        );
        let leases = db.list_leases().unwrap();
        assert!(
            leases.iter().all(|l| l.vm_id != id),
            "lease of {name} left: {leases:?}"
        );
        let vm_dir = self.env.layout.state_dir.join("vms").join(id);
        assert!(!vm_dir.exists(), "{} left", vm_dir.display());
        let run_dir = self.env.layout.runtime_dir.join("vms").join(id);
        assert!(!run_dir.exists(), "{} left", run_dir.display());
        let known = std::fs::read_to_string(self.known_hosts()).unwrap_or_default();
        for line in known.lines() {
            let hosts: Vec<&str> = line
                .split_whitespace()
                .next()
                .unwrap_or("")
                .split(',')
                .collect();
            assert!(
                !hosts.contains(&name) && ip.is_none_or(|ip| !hosts.contains(&ip)),
                "known_hosts still names {name}: {line}"
            );
        }
        if let Some(ip) = ip {
            let rules = self.ns.ruleset();
            assert!(!rules.contains(ip), "nft rules mention {ip}: {rules}");
        }
    }
}

impl Drop for World {
    fn drop(&mut self) {
        if let Some(mut d) = self.daemon.take() {
            let _ = d.child.kill();
            let _ = d.child.wait();
        }
        for pid in self.qemus() {
            // Only QEMUs whose command line names this test's own temp dir.
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
            common::wait_pid_gone(pid);
        }
        // Ns and env drop next (fields), deleting the namespace and the dir.
    }
}

/// Poll `f` every 0.3 s until it holds; panics naming `what` after `within`.
pub fn wait_until(what: &str, within: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// Run `script` with `sh -e` in `dir` under a fixed git identity, with
/// `HOME=dir` so the host's git config stays out; it must succeed. Returns
/// its trimmed stdout.
pub fn git_sh(dir: &Path, script: &str) -> String {
    let out = Command::new("sh")
        .arg("-ec")
        .arg(script)
        .current_dir(dir)
        .env("GIT_AUTHOR_NAME", "t")
        .env("GIT_AUTHOR_EMAIL", "t@example.org")
        .env("GIT_COMMITTER_NAME", "t")
        .env("GIT_COMMITTER_EMAIL", "t@example.org")
        .env("HOME", dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{script}: {out:?}");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Minimal config for the VM tests.
pub fn config(image: &str) -> String {
    config_with(image, "")
}

/// [`config`] with more top-level keys (`key = value` lines).
pub fn config_with(image: &str, top_level: &str) -> String {
    format!(
        "default_image_name = \"{image}\"\nlog_level = \"debug\"\n{top_level}\n\n[vm_defaults]\nvcpu = 2\nmemory_mib = 768\ndisk_size = \"1G\"\n"
    )
}

/// stdout and stderr of a command, for messages.
pub fn text(out: &Output) -> String {
    format!(
        "status {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The booted guest `name` is healthy as a system, not only reachable:
/// `systemctl is-system-running --wait` says `running` (no failed unit), the
/// kernel bundle's modules are at /lib/modules/$(uname -r), and modprobe
/// loads one that no boot step loads (so it came from the modules disk).
pub fn assert_system_running(world: &World, name: &str) {
    let out = world.banger(&[
        "vm",
        "ssh",
        name,
        "--",
        "systemctl",
        "is-system-running",
        "--wait",
    ]);
    let state = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    if state != "running" {
        let failed = world.banger(&[
            "vm",
            "ssh",
            name,
            "--",
            "systemctl",
            "--failed",
            "--no-pager",
            "--full",
        ]);
        panic!(
            "{name}: is-system-running says {state:?}; failed units:\n{}",
            text(&failed)
        );
    }
    // One plain word per argument: no shell syntax, whatever quoting
    // `vm ssh` applies.
    let release = world.banger_ok(&["vm", "ssh", name, "--", "uname", "-r"]);
    let dep = format!("/lib/modules/{}/modules.dep", release.trim());
    let out = world.banger(&["vm", "ssh", name, "--", "test", "-s", &dep]);
    assert!(out.status.success(), "{name}: no {dep}: {}", text(&out));
    world.banger_ok(&["vm", "ssh", name, "--", "modprobe", "dummy"]);
    let lsmod = world.banger_ok(&["vm", "ssh", name, "--", "lsmod"]);
    assert!(
        lsmod
            .lines()
            .any(|l| l.split_whitespace().next() == Some("dummy")),
        "{name}: modprobe dummy did not load it:\n{lsmod}"
    );
}
