//! Real builds of the shipped recipes (root, network to the Debian mirror,
//! minutes). Enabled with BANGER_BUILD_TESTS=1; CI sets it. Bundles are
//! cached by recipe hash in BANGER_BUILD_CACHE (default ~/.cache/banger),
//! except for the reproducibility test, which builds twice from scratch.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use banger_image::build::{self, debugfs, BuildOptions, Built};
use banger_image::store::{Installed, Origin, Store};
use banger_image::{Kind, Progress};

const MINIMAL: &str = "debian-bookworm-minimal";
const KERNEL: &str = "generic-6.12";

/// Whether build tests run here; prints why not.
fn enabled(test: &str) -> bool {
    // Root for mmdebstrap and chroot.
    banger_test_support::Gate::named(test)
        .build_tests()
        .root()
        .tool("mmdebstrap")
        .check()
}

fn shared_cache() -> PathBuf {
    if let Some(c) = std::env::var_os("BANGER_BUILD_CACHE") {
        return PathBuf::from(c);
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache"));
    base.join("banger")
}

fn log(p: Progress) {
    if !p.message.contains(": I: ") {
        eprintln!("[{}] {}", p.phase.as_str(), p.message);
    }
}

fn options(cache: &Path) -> BuildOptions {
    let mut opts = BuildOptions::new(cache);
    // The checkout's recipes (identical to the embedded ones; a unit test
    // checks that), so a failing build names files one can open.
    opts.recipes = banger_image::recipe::RecipeSet::from_dir(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("../../images"),
    )
    .expect("images/ readable");
    opts
}

/// One cached build per kind/name for the whole test binary.
fn shared_build(kind: Kind, name: &'static str) -> &'static Built {
    static KERNEL_BUILD: OnceLock<Built> = OnceLock::new();
    static IMAGE_BUILD: OnceLock<Built> = OnceLock::new();
    let cell = match kind {
        Kind::Kernel => &KERNEL_BUILD,
        Kind::Image => &IMAGE_BUILD,
    };
    cell.get_or_init(|| {
        let start = Instant::now();
        let built = build::build(kind, name, &options(&shared_cache()), &log).unwrap();
        eprintln!(
            "{kind} {name}: {} (cached={}, {:.1}s)",
            built.packed.path.display(),
            built.cached,
            start.elapsed().as_secs_f64()
        );
        built
    })
}

fn install(store: &Store, kind: Kind, name: &str, built: &Built) -> Installed {
    let origin = Origin::Build {
        bundle_sha256: built.packed.sha256.clone(),
    };
    store
        .install_file(&built.packed.path, kind, name, origin, &log)
        .unwrap()
}

#[test]
fn minimal_image_builds_reproducibly() {
    if !enabled("minimal_image_builds_reproducibly") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let mut shas = Vec::new();
    for run in ["a", "b"] {
        let mut opts = options(&tmp.path().join(run));
        opts.force = true;
        let start = Instant::now();
        let built = build::build(Kind::Image, MINIMAL, &opts, &log).unwrap();
        assert!(!built.cached);
        eprintln!(
            "build {run}: {:.1}s, bundle sha256 {}",
            start.elapsed().as_secs_f64(),
            built.packed.sha256
        );
        let rootfs = built
            .packed
            .manifest
            .artifact("rootfs.ext4")
            .unwrap()
            .sha256
            .clone();
        shas.push((
            built.packed.sha256.clone(),
            rootfs,
            built.recipe_hash.clone(),
        ));
        // Free the disk before the next build.
        std::fs::remove_file(&built.packed.path).unwrap();
    }
    assert_eq!(shas[0], shas[1], "two builds of the same recipe differ");
}

#[test]
fn minimal_image_has_no_host_keys_and_the_sshd_policy() {
    if !enabled("minimal_image_has_no_host_keys_and_the_sshd_policy") {
        return;
    }
    let built = shared_build(Kind::Image, MINIMAL);
    let m = &built.packed.manifest;
    assert_eq!(
        (m.kind, m.name.as_str(), m.kernel_ref.as_deref()),
        (Kind::Image, MINIMAL, Some(KERNEL))
    );
    assert_eq!(m.recipe_hash.as_deref(), Some(built.recipe_hash.as_str()));
    let tmp = tempfile::tempdir().unwrap();
    let inst = install(&Store::new(tmp.path()), Kind::Image, MINIMAL, built);
    let rootfs = inst.rootfs().unwrap();
    banger_image::validate::rootfs(&rootfs).unwrap();

    let ssh = debugfs(&rootfs, "ls -l /etc/ssh").unwrap();
    assert!(ssh.contains("sshd_config"), "{ssh}");
    assert!(!ssh.contains("ssh_host_"), "host keys in the image:\n{ssh}");
    let config = debugfs(&rootfs, "cat /etc/ssh/sshd_config").unwrap();
    for line in [
        "PermitRootLogin prohibit-password",
        "PubkeyAuthentication yes",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "AuthorizedKeysFile /root/.ssh/authorized_keys",
        "StrictModes yes",
    ] {
        assert!(
            config.lines().any(|l| l.trim() == line),
            "sshd_config lacks {line:?}:\n{config}"
        );
    }
    assert_eq!(debugfs(&rootfs, "cat /etc/machine-id").unwrap(), "");
    assert_eq!(debugfs(&rootfs, "cat /etc/hostname").unwrap(), "banger\n");
    let wants = debugfs(&rootfs, "ls /etc/systemd/system/multi-user.target.wants").unwrap();
    for unit in ["systemd-networkd.service", "ssh.service"] {
        assert!(wants.contains(unit), "{unit} not enabled:\n{wants}");
    }
    for tool in [
        "/usr/bin/curl",
        "/usr/bin/git",
        "/usr/bin/jq",
        "/usr/sbin/sshd",
        "/usr/bin/ip",
    ] {
        debugfs(&rootfs, &format!("stat {tool}")).unwrap_or_else(|e| panic!("{tool} missing: {e}"));
    }
    assert!(
        debugfs(&rootfs, "stat /usr/bin/docker").is_err(),
        "the minimal image has no Docker"
    );
}

/// The target of the symlink `path` in `rootfs` (debugfs `stat`).
fn link_target(rootfs: &Path, path: &str) -> String {
    let stat = debugfs(rootfs, &format!("stat {path}")).unwrap();
    stat.split("Fast link dest: \"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .unwrap_or_else(|| panic!("{path} is not a symlink:\n{stat}"))
        .to_owned()
}

#[test]
fn minimal_image_carries_the_guest_boot_step() {
    if !enabled("minimal_image_carries_the_guest_boot_step") {
        return;
    }
    let built = shared_build(Kind::Image, MINIMAL);
    let tmp = tempfile::tempdir().unwrap();
    let inst = install(&Store::new(tmp.path()), Kind::Image, MINIMAL, built);
    let rootfs = inst.rootfs().unwrap();
    let images = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../images/files/rootfs");

    // The files, byte for byte as in images/files/rootfs, with their modes.
    for (src, dest, mode) in [
        (
            "banger-guest-load",
            "/usr/local/lib/banger/guest-load",
            "0755",
        ),
        (
            "banger-guest-apply.service",
            "/etc/systemd/system/banger-guest-apply.service",
            "0644",
        ),
        (
            "banger-guest-agent.service",
            "/etc/systemd/system/banger-guest-agent.service",
            "0644",
        ),
        ("fstab", "/etc/fstab", "0644"),
    ] {
        let want = std::fs::read_to_string(images.join(src)).unwrap();
        assert_eq!(
            debugfs(&rootfs, &format!("cat {dest}")).unwrap(),
            want,
            "{dest}"
        );
        let stat = debugfs(&rootfs, &format!("stat {dest}")).unwrap();
        assert!(
            stat.contains(&format!("Mode:  {mode}")) && stat.contains("User:     0"),
            "{dest} is not root-owned {mode}:\n{stat}"
        );
    }
    let fstab = debugfs(&rootfs, "cat /etc/fstab").unwrap();
    assert!(
        fstab
            .lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>()
                == [
                    "LABEL=banger-work",
                    "/root",
                    "ext4",
                    "defaults,nofail,x-systemd.device-timeout=90s",
                    "0",
                    "2"
                ]),
        "no work disk line in /etc/fstab:\n{fstab}"
    );
    let agent = debugfs(
        &rootfs,
        "cat /etc/systemd/system/banger-guest-agent.service",
    )
    .unwrap();
    assert!(
        agent.contains("ExecStart=/run/banger/banger-vsock-agent serve"),
        "{agent}"
    );
    let apply = debugfs(
        &rootfs,
        "cat /etc/systemd/system/banger-guest-apply.service",
    )
    .unwrap();
    assert!(
        apply.contains("ExecStart=/usr/local/lib/banger/guest-load"),
        "{apply}"
    );
    assert!(apply.contains("Before=ssh.service"), "{apply}");

    // Enabled: systemctl's links in multi-user.target.wants.
    for unit in ["banger-guest-apply.service", "banger-guest-agent.service"] {
        assert_eq!(
            link_target(
                &rootfs,
                &format!("/etc/systemd/system/multi-user.target.wants/{unit}")
            ),
            format!("/etc/systemd/system/{unit}")
        );
    }
    // The hand-boot fallback for the host key is enabled too, and the old
    // baked-agent unit is gone.
    assert_eq!(
        link_target(
            &rootfs,
            "/etc/systemd/system/ssh.service.wants/banger-ssh-hostkey.service"
        ),
        "/etc/systemd/system/banger-ssh-hostkey.service"
    );
    assert!(debugfs(
        &rootfs,
        "stat /etc/systemd/system/banger-vsock-agent.service"
    )
    .is_err());
}

#[test]
fn kernel_bundle_boots_via_pvh_with_its_initrd_and_modules() {
    if !enabled("kernel_bundle_boots_via_pvh_with_its_initrd_and_modules") {
        return;
    }
    let built = shared_build(Kind::Kernel, KERNEL);
    let tmp = tempfile::tempdir().unwrap();
    let inst = install(&Store::new(tmp.path()), Kind::Kernel, KERNEL, built);
    let vmlinux = inst.vmlinux().unwrap();
    let info = banger_image::validate::vmlinux(&vmlinux).unwrap();
    assert!(info.pvh_entry > 0);
    let release = inst.manifest.kernel_release.clone().unwrap();
    assert!(release.starts_with("6.12."), "{release}");
    let modules = inst.modules_dir().unwrap();
    assert!(
        modules.join("modules.dep").is_file() && modules.join("modules.dep.bin").is_file(),
        "depmod ran"
    );
    let dep = std::fs::read_to_string(modules.join("modules.dep")).unwrap();
    for m in [
        "overlay.ko",
        "nf_tables.ko",
        "vmw_vsock_virtio_transport.ko",
        "bridge.ko",
    ] {
        assert!(dep.contains(m), "{m} missing from modules.dep");
    }
    let initrd = std::fs::read(inst.initrd().unwrap()).unwrap();
    assert!(initrd.starts_with(b"070701") && initrd.len().is_multiple_of(4096));
    let listing = Command::new("cpio")
        .args(["-t", "--quiet"])
        .stdin(Stdio::from(
            std::fs::File::open(inst.initrd().unwrap()).unwrap(),
        ))
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&listing.stdout);
    for f in [
        "init",
        "bin/busybox",
        "lib/modules/virtio_blk.ko",
        "lib/modules/failover.ko",
        "dev/console",
    ] {
        assert!(
            listing.lines().any(|l| l == f),
            "{f} missing from initrd:\n{listing}"
        );
    }
    let disk = inst.modules_disk().unwrap();
    assert!(debugfs(&disk, &format!("ls /{release}"))
        .unwrap()
        .contains("modules.dep"));
}

/// Kills QEMU when the test ends, however it ends.
struct Qemu(Child);

impl Drop for Qemu {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The host's TSC rate in kHz, passed as `tsc_early_khz`: under TCG the
/// guest TSC runs at the host's rate, and the kernel's own calibration
/// against the emulated PIT fails now and then, which stalls boot for
/// minutes.
fn host_tsc_khz() -> Option<u64> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    let mhz: f64 = cpuinfo
        .lines()
        .find(|l| l.starts_with("cpu MHz"))?
        .split(':')
        .nth(1)?
        .trim()
        .parse()
        .ok()?;
    Some((mhz * 1000.0) as u64)
}

#[test]
fn minimal_image_boots_under_qemu_tcg() {
    if !enabled("minimal_image_boots_under_qemu_tcg") {
        return;
    }
    let kernel = shared_build(Kind::Kernel, KERNEL);
    let image = shared_build(Kind::Image, MINIMAL);
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::new(tmp.path().join("state"));
    let k = install(&store, Kind::Kernel, KERNEL, kernel);
    let i = install(&store, Kind::Image, MINIMAL, image);
    // The VM writes to its root disk: boot a sparse copy.
    let root = tmp.path().join("root.ext4");
    let status = Command::new("cp")
        .arg("--sparse=always")
        .arg(i.rootfs().unwrap())
        .arg(&root)
        .status()
        .unwrap();
    assert!(status.success());
    let serial = tmp.path().join("serial.log");
    let mut append =
        String::from("console=ttyS0 root=/dev/vda rw banger.modules=/dev/vdb modules-load=overlay");
    if let Some(khz) = host_tsc_khz() {
        append.push_str(&format!(" tsc_early_khz={khz}"));
    }
    let drive = |id: &str, path: &Path, ro: bool| {
        format!(
            "id={id},file={},format=raw,if=none{}",
            path.display(),
            if ro { ",readonly=on" } else { "" }
        )
    };
    let child = Command::new("qemu-system-x86_64")
        .args([
            "-M",
            "microvm,pit=on,pic=off,rtc=on",
            "-accel",
            "tcg",
            "-cpu",
            "max,-cx16,-svm,-vmx",
            "-m",
            "1024",
            "-smp",
            "2",
        ])
        .args([
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-no-reboot",
        ])
        .arg("-serial")
        .arg(format!("file:{}", serial.display()))
        .arg("-kernel")
        .arg(k.vmlinux().unwrap())
        .arg("-initrd")
        .arg(k.initrd().unwrap())
        .arg("-append")
        .arg(&append)
        .args([
            "-device",
            "virtio-blk-device,drive=root",
            "-drive",
            &drive("root", &root, false),
        ])
        .args([
            "-device",
            "virtio-blk-device,drive=mods",
            "-drive",
            &drive("mods", &k.modules_disk().unwrap(), true),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("qemu-system-x86_64 runs (apt-get install qemu-system-x86)");
    let mut qemu = Qemu(child);
    let start = Instant::now();
    let deadline = Duration::from_secs(300);
    let log = loop {
        let log = std::fs::read_to_string(&serial).unwrap_or_default();
        if log.contains("Reached target") && log.contains("Multi-User System") {
            break log;
        }
        if log.contains("Kernel panic") || log.contains("banger-initrd: dropping to a shell") {
            panic!("guest failed to boot:\n{log}");
        }
        if let Some(status) = qemu.0.try_wait().unwrap() {
            panic!("qemu exited with {status}:\n{log}");
        }
        if start.elapsed() > deadline {
            panic!("no multi-user marker within {deadline:?}:\n{log}");
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    eprintln!(
        "reached multi-user.target in {:.1}s",
        start.elapsed().as_secs_f64()
    );
    assert!(
        log.contains("EXT4-fs (vda): mounted filesystem"),
        "root mounted"
    );
    // The modules disk works: systemd-modules-load loaded overlay.
    assert!(
        log.contains("Load Kernel Modules"),
        "systemd-modules-load ran:\n{log}"
    );
    assert!(
        !log.contains("Failed to insert module"),
        "a module failed to load:\n{log}"
    );
    assert!(!log.contains("[FAILED]"), "a unit failed:\n{log}");
}
