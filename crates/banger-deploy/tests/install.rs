//! `banger system install/uninstall/status --root` into staging trees.

mod common;

use std::path::Path;

use banger_deploy::install::{AGENT, BINARIES};
use banger_deploy::spec::Spec;
use banger_deploy::{install, status, uninstall, UninstallOptions};
use banger_wire::install::InstallMetadata;
use common::*;

#[test]
fn install_into_staging_tree_creates_layout_with_modes_and_owners() {
    if !root_or_skip("install_into_staging_tree_creates_layout_with_modes_and_owners") {
        return;
    }
    let s = Staging::new();
    let report = install(&s.options()).unwrap();
    assert!(!report.services_started, "--root never calls systemctl");
    let r = s.root();
    for b in BINARIES {
        assert_eq!(
            perms(&r.join("usr/local/bin").join(b)),
            (0o755, 0, 0),
            "{b}"
        );
    }
    assert_eq!(
        perms(&r.join("usr/local/lib/banger").join(AGENT)),
        (0o755, 0, 0)
    );
    assert!(
        !r.join("usr/local/bin").join(AGENT).exists(),
        "the agent lives under lib/"
    );
    assert_eq!(
        perms(&r.join("var/lib/banger")),
        (0o750, OWNER_UID, OWNER_GID)
    );
    assert_eq!(
        perms(&r.join("var/cache/banger")),
        (0o750, OWNER_UID, OWNER_GID)
    );
    assert_eq!(perms(&r.join("run/banger")), (0o755, OWNER_UID, OWNER_GID));
    assert_eq!(perms(&r.join("run/banger-root")), (0o750, 0, OWNER_GID));
    for f in [
        "etc/banger/install.toml",
        "etc/tmpfiles.d/banger.conf",
        "etc/systemd/system/bangerd.service",
        "etc/systemd/system/bangerd-root.service",
    ] {
        assert_eq!(perms(&r.join(f)), (0o644, 0, 0), "{f}");
    }

    let meta: InstallMetadata =
        toml::from_str(&std::fs::read_to_string(r.join("etc/banger/install.toml")).unwrap())
            .unwrap();
    assert_eq!(meta, report.metadata);
    assert_eq!(
        (meta.owner_user.as_str(), meta.owner_uid, meta.owner_gid),
        (OWNER, OWNER_UID, OWNER_GID)
    );
    assert_eq!(meta.version, banger_wire::VERSION);
    assert_eq!(meta.bin_dir, "/usr/local/bin");
    assert_eq!(meta.lib_dir, "/usr/local/lib/banger");
    assert_eq!(meta.state_dir, "/var/lib/banger");
    assert_eq!(meta.root_run_dir, "/run/banger-root");

    let daemon = std::fs::read_to_string(r.join("etc/systemd/system/bangerd.service")).unwrap();
    assert!(daemon.contains(&format!("\nUser={OWNER}\n")), "{daemon}");
    assert!(
        daemon.contains(&format!("\nGroup={OWNER_GROUP}\n")),
        "{daemon}"
    );
    assert!(
        daemon.contains("\nExecStart=/usr/local/bin/bangerd\n"),
        "{daemon}"
    );
    let tmpfiles = std::fs::read_to_string(r.join("etc/tmpfiles.d/banger.conf")).unwrap();
    assert!(tmpfiles.contains(&format!("d /run/banger-root 0750 root {OWNER_GROUP} -")));

    let st = status(Some(r)).unwrap();
    assert!(st.installed() && st.healthy(), "{st:#?}");
    assert!(st
        .units
        .iter()
        .all(|u| u.matches_builtin == Some(true) && u.active.is_none()));
    for b in &st.binaries {
        let name = b.path.file_name().unwrap().to_str().unwrap();
        assert_eq!(
            b.version.as_deref(),
            Some(&*format!("{name} {}", banger_wire::VERSION))
        );
    }
    assert!(st.sockets.iter().all(|s| s.present == Some(false)));
}

#[test]
fn install_twice_gives_a_byte_identical_tree_and_changes_nothing() {
    if !root_or_skip("install_twice_gives_a_byte_identical_tree_and_changes_nothing") {
        return;
    }
    let s = Staging::new();
    let first = install(&s.options()).unwrap();
    assert!(!first.changed.is_empty());
    let before = snapshot(s.root());
    let second = install(&s.options()).unwrap();
    assert_eq!(second.changed, Vec::<std::path::PathBuf>::new());
    assert_eq!(snapshot(s.root()), before);
}

#[test]
fn upgrade_in_place_keeps_state_and_repairs_modes() {
    if !root_or_skip("upgrade_in_place_keeps_state_and_repairs_modes") {
        return;
    }
    let s = Staging::new();
    install(&s.options()).unwrap();
    let r = s.root();
    let db = r.join("var/lib/banger/state.db");
    std::fs::write(&db, b"rows").unwrap();
    std::fs::write(r.join("var/cache/banger/image.tar.zst"), b"bundle").unwrap();
    std::fs::write(r.join("etc/banger/config.toml"), b"log_level = \"debug\"\n").unwrap();
    std::os::unix::fs::chown(r.join("var/lib/banger"), Some(0), Some(0)).unwrap();
    write_bin(&s.bins.path().join("bangerd"), "bangerd 99.0.0");

    let report = install(&s.options()).unwrap();
    assert!(
        report.changed.contains(&r.join("usr/local/bin/bangerd")),
        "{:?}",
        report.changed
    );
    assert!(report.changed.contains(&r.join("var/lib/banger")));
    assert_eq!(
        perms(&r.join("var/lib/banger")),
        (0o750, OWNER_UID, OWNER_GID)
    );
    assert_eq!(std::fs::read(&db).unwrap(), b"rows");
    assert_eq!(
        std::fs::read(r.join("var/cache/banger/image.tar.zst")).unwrap(),
        b"bundle"
    );
    assert_eq!(
        std::fs::read_to_string(r.join("etc/banger/config.toml")).unwrap(),
        "log_level = \"debug\"\n"
    );
    let st = status(Some(r)).unwrap();
    let bangerd = st
        .binaries
        .iter()
        .find(|b| b.path.ends_with("bin/bangerd"))
        .unwrap();
    assert_eq!(bangerd.version.as_deref(), Some("bangerd 99.0.0"));
}

/// Paths under `root` that mention banger.
fn banger_paths(root: &Path) -> Vec<String> {
    snapshot(root)
        .into_keys()
        .map(|p| p.display().to_string())
        .filter(|p| p.contains("banger"))
        .collect()
}

#[test]
fn uninstall_removes_everything_installed_and_purge_removes_state() {
    if !root_or_skip("uninstall_removes_everything_installed_and_purge_removes_state") {
        return;
    }
    let s = Staging::new();
    let r = s.root();
    // The owner's own config lives under the home and must survive a purge.
    let home_cfg = r.join("home/alice/.config/banger/config.toml");
    std::fs::create_dir_all(home_cfg.parent().unwrap()).unwrap();
    std::fs::write(&home_cfg, b"vmm = \"qemu\"\n").unwrap();
    let base = snapshot(r);

    install(&s.options()).unwrap();
    std::fs::write(r.join("var/lib/banger/state.db"), b"rows").unwrap();
    std::fs::write(r.join("etc/banger/config.toml"), b"").unwrap();
    let report = uninstall(&UninstallOptions {
        root: Some(r.to_owned()),
        purge: false,
    })
    .unwrap();
    assert!(report.warnings.is_empty(), "{:?}", report.warnings);
    let left = banger_paths(r);
    assert_eq!(
        left,
        [
            "etc/banger",
            "etc/banger/config.toml",
            "home/alice/.config/banger",
            "home/alice/.config/banger/config.toml",
            "var/cache/banger",
            "var/lib/banger",
            "var/lib/banger/state.db",
        ],
        "plain uninstall keeps state, cache and the admin's config only"
    );
    assert!(!status(Some(r)).unwrap().installed());

    let report = uninstall(&UninstallOptions {
        root: Some(r.to_owned()),
        purge: true,
    })
    .unwrap();
    assert!(report.removed.contains(&r.join("var/lib/banger")));
    assert_eq!(
        banger_paths(r),
        [
            "home/alice/.config/banger",
            "home/alice/.config/banger/config.toml"
        ]
    );
    // Only empty standard parent directories remain beyond the base tree.
    let extra: Vec<_> = snapshot(r)
        .into_iter()
        .filter(|(p, _)| !base.contains_key(p))
        .filter(|(_, what)| !what.starts_with("dir "))
        .collect();
    assert!(extra.is_empty(), "{extra:?}");

    // Uninstalling what is not installed is fine.
    let report = uninstall(&UninstallOptions {
        root: Some(r.to_owned()),
        purge: true,
    })
    .unwrap();
    assert!(report.removed.is_empty(), "{:?}", report.removed);
}

#[test]
fn install_fails_cleanly_on_bad_input() {
    if !root_or_skip("install_fails_cleanly_on_bad_input") {
        return;
    }
    let s = Staging::new();
    let before = snapshot(s.root());
    let mut opts = s.options();
    opts.owner = "mallory".into();
    let err = install(&opts).unwrap_err().to_string();
    assert!(
        err.contains("\"mallory\"") && err.contains("etc/passwd"),
        "{err}"
    );
    let mut opts = s.options();
    std::fs::remove_file(s.bins.path().join("bangerd-root")).unwrap();
    opts.bin_src_dir = s.bins.path().to_owned();
    let err = install(&opts).unwrap_err().to_string();
    assert!(
        err.contains("bangerd-root") && err.contains("cargo build"),
        "{err}"
    );
    assert_eq!(
        snapshot(s.root()),
        before,
        "a failed install touches nothing"
    );
}

#[test]
fn agent_is_also_found_in_a_nix_style_lib_dir() {
    if !root_or_skip("agent_is_also_found_in_a_nix_style_lib_dir") {
        return;
    }
    let s = Staging::new();
    let pkg = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(pkg.path().join("bin")).unwrap();
    std::fs::create_dir_all(pkg.path().join("lib/banger")).unwrap();
    for b in BINARIES {
        write_bin(&pkg.path().join("bin").join(b), b);
    }
    write_bin(&pkg.path().join("lib/banger").join(AGENT), "agent");
    let mut opts = s.options();
    opts.bin_src_dir = pkg.path().join("bin");
    install(&opts).unwrap();
    let agent = std::fs::read_to_string(s.root().join("usr/local/lib/banger").join(AGENT)).unwrap();
    assert!(agent.contains("agent"));
}

#[test]
fn unit_files_are_what_the_spec_renders() {
    if !root_or_skip("unit_files_are_what_the_spec_renders") {
        return;
    }
    let s = Staging::new();
    install(&s.options()).unwrap();
    let spec = Spec::builtin().unwrap();
    let owner = banger_deploy::owner::lookup(OWNER, Some(s.root())).unwrap();
    for u in spec
        .render_units(&banger_deploy::install::placeholders(
            &owner,
            &spec.layout.bin_dir,
        ))
        .unwrap()
    {
        let on_disk =
            std::fs::read_to_string(s.root().join("etc/systemd/system").join(u.file_name()))
                .unwrap();
        assert_eq!(on_disk, u.text());
    }
}

/// Run by `not_root_is_refused_with_a_sudo_hint` as an unprivileged child
/// (ignored in normal runs: it needs the parent's environment).
#[test]
#[ignore = "child of not_root_is_refused_with_a_sudo_hint"]
fn child_install_as_unprivileged_user() {
    let root = std::env::var_os("BANGER_DEPLOY_TEST_CHILD").expect("run by the parent test");
    let opts = banger_deploy::InstallOptions {
        owner: OWNER.into(),
        root: Some(root.into()),
        bin_src_dir: "/nonexistent".into(),
        socket_group: None,
    };
    let err = install(&opts).unwrap_err().to_string();
    assert!(err.contains("needs root") && err.contains("sudo"), "{err}");
    let err = uninstall(&UninstallOptions::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("uninstall") && err.contains("sudo"), "{err}");
    let err = banger_deploy::restart().unwrap_err().to_string();
    assert!(err.contains("restart") && err.contains("sudo"), "{err}");
}

#[test]
fn not_root_is_refused_with_a_sudo_hint() {
    if !root_or_skip("not_root_is_refused_with_a_sudo_hint")
        || !tool_or_skip("not_root_is_refused_with_a_sudo_hint", "setpriv")
    {
        return;
    }
    let s = Staging::new();
    let exe = std::env::current_exe().unwrap();
    let out = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(&exe)
        .args([
            "--exact",
            "child_install_as_unprivileged_user",
            "--ignored",
            "--nocapture",
        ])
        .env("BANGER_DEPLOY_TEST_CHILD", s.root())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("1 passed"), "{stdout}");
}
