//! `[[file_sync]]` rules on real trees in a temp "home", and the result on a
//! real config drive read back with `debugfs`.

mod common;

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};

use banger_config::FileSyncEntry;
use banger_vm::disk::{build_config_drive, PayloadKind};
use banger_vm::filesync::{plan_file_sync, FileSyncError, SyncPlan};
use banger_wire::guest::{GuestConfig, GuestFile, SshHostKey, GUEST_CONFIG_VERSION};
use common::run;

fn entry(host: &Path, guest: &str, mode: Option<u32>) -> FileSyncEntry {
    FileSyncEntry {
        host: host.to_owned(),
        guest: PathBuf::from(guest),
        mode,
    }
}

fn chmod(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

fn payload<'a>(plan: &'a SyncPlan, rel: &str) -> &'a PayloadKind {
    &plan
        .payloads
        .iter()
        .find(|p| p.rel == Path::new(rel))
        .unwrap_or_else(|| panic!("no payload {rel}: {:?}", rels(plan)))
        .kind
}

fn rels(plan: &SyncPlan) -> Vec<String> {
    plan.payloads
        .iter()
        .map(|p| p.rel.to_string_lossy().into_owned())
        .collect()
}

fn file_kind(mode: u32, contents: &[u8]) -> PayloadKind {
    PayloadKind::File {
        mode,
        contents: contents.to_vec(),
    }
}

/// One tree exercising every rule; returns (home, outside dir, entries).
fn fixture() -> (tempfile::TempDir, tempfile::TempDir, Vec<FileSyncEntry>) {
    let home = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    let h = home.path();
    fs::write(h.join(".gitconfig"), "[user]\n").unwrap();
    fs::write(h.join("notes.txt"), "notes").unwrap();
    fs::write(outside.path().join("secret"), "outside").unwrap();
    symlink(outside.path().join("secret"), h.join("link-out")).unwrap();
    symlink(h.join(".gitconfig"), h.join("link-in")).unwrap();
    symlink(h.join("gone"), h.join("dangling")).unwrap();
    // A directory with nested dirs, modes, an inner symlink and a fifo.
    let nvim = h.join(".config/nvim");
    fs::create_dir_all(nvim.join("lua/plugins")).unwrap();
    fs::write(nvim.join("init.lua"), "require('x')").unwrap();
    chmod(&nvim.join("init.lua"), 0o644);
    fs::write(nvim.join("lua/plugins/a.lua"), "a").unwrap();
    chmod(&nvim.join("lua/plugins/a.lua"), 0o755);
    fs::write(nvim.join("lua/secret.lua"), "s").unwrap();
    chmod(&nvim.join("lua/secret.lua"), 0o400);
    chmod(&nvim.join("lua"), 0o750);
    symlink("/etc/passwd", nvim.join("passwd-link")).unwrap();
    nix::unistd::mkfifo(
        &nvim.join("pipe"),
        nix::sys::stat::Mode::from_bits_truncate(0o600),
    )
    .unwrap();
    symlink(&nvim, h.join("nvim-link")).unwrap();
    let entries = vec![
        entry(&h.join(".gitconfig"), "/root/.gitconfig", Some(0o644)), // 0
        entry(&h.join("notes.txt"), "/root/notes.txt", None),          // 1
        entry(&h.join("missing"), "/root/missing", None),              // 2
        entry(&h.join("link-out"), "/root/secret", None),              // 3
        entry(&h.join("link-in"), "/root/gitconfig2", None),           // 4
        entry(&h.join("dangling"), "/root/dangling", None),            // 5
        entry(&nvim, "/root/.config/nvim", Some(0o600)),               // 6
        entry(&h.join("nvim-link"), "/root/nvim2", None),              // 7
    ];
    (home, outside, entries)
}

#[test]
fn rule_table() {
    let (home, _outside, entries) = fixture();
    let h = home.path();
    let plan = plan_file_sync(&entries, h).unwrap();

    // Guest files: only the entries that were not skipped, in order.
    let got: Vec<(&str, &str, Option<u32>, bool)> = plan
        .files
        .iter()
        .map(|f| (f.source.as_str(), f.dest.as_str(), f.mode, f.is_dir))
        .collect();
    assert_eq!(
        got,
        [
            ("0", "/root/.gitconfig", Some(0o644), false),
            ("1", "/root/notes.txt", Some(0o600), false),
            ("4", "/root/gitconfig2", Some(0o600), false),
            ("6", "/root/.config/nvim", None, true),
            ("7", "/root/nvim2", None, true),
        ]
    );

    // Files: the entry's mode, else 0600; a symlink inside home is followed.
    assert_eq!(payload(&plan, "0"), &file_kind(0o644, b"[user]\n"));
    assert_eq!(payload(&plan, "1"), &file_kind(0o600, b"notes"));
    assert_eq!(payload(&plan, "4"), &file_kind(0o600, b"[user]\n"));

    // Directories keep their own modes, recursively, parents first.
    assert_eq!(
        rels(&plan)
            .into_iter()
            .filter(|r| r.starts_with('6'))
            .collect::<Vec<_>>(),
        [
            "6",
            "6/init.lua",
            "6/lua",
            "6/lua/plugins",
            "6/lua/plugins/a.lua",
            "6/lua/secret.lua"
        ]
    );
    assert_eq!(
        payload(&plan, "6/init.lua"),
        &file_kind(0o644, b"require('x')")
    );
    assert_eq!(
        payload(&plan, "6/lua/plugins/a.lua"),
        &file_kind(0o755, b"a")
    );
    assert_eq!(payload(&plan, "6/lua/secret.lua"), &file_kind(0o400, b"s"));
    assert_eq!(payload(&plan, "6/lua"), &PayloadKind::Dir { mode: 0o750 });
    // A top-level symlink to a directory inside home is followed too.
    assert_eq!(
        payload(&plan, "7/lua/plugins/a.lua"),
        &file_kind(0o755, b"a")
    );

    // Warnings name the entry and the path.
    let warnings: Vec<String> = plan.warnings.iter().map(|w| w.to_string()).collect();
    let expect = [
        ("file_sync[2]", "missing", "does not exist"),
        ("file_sync[3]", "link-out", "outside your home"),
        ("file_sync[5]", "dangling", "missing target"),
        ("file_sync[6]", "nvim", "mode 0600 is ignored"),
        (
            "file_sync[6]",
            "passwd-link",
            "symlink inside a synced directory",
        ),
        ("file_sync[6]", "pipe", "not a regular file or directory"),
        (
            "file_sync[7]",
            "passwd-link",
            "symlink inside a synced directory",
        ),
        ("file_sync[7]", "pipe", "not a regular file or directory"),
    ];
    assert_eq!(warnings.len(), expect.len(), "{warnings:#?}");
    for (w, (index, path, msg)) in warnings.iter().zip(expect) {
        assert!(
            w.starts_with(&format!("{index}: ")) && w.contains(path) && w.contains(msg),
            "{w} (expected {index} {path} {msg})"
        );
    }
    // Nothing from outside home was read.
    for p in &plan.payloads {
        if let PayloadKind::File { contents, .. } = &p.kind {
            assert_ne!(contents, b"outside");
            assert!(!String::from_utf8_lossy(contents).contains("root:x:0:0"));
        }
    }
}

#[test]
fn a_symlinked_parent_leaving_home_is_refused_too() {
    let home = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    fs::write(outside.path().join("f"), "x").unwrap();
    symlink(outside.path(), home.path().join("dots")).unwrap();
    let plan = plan_file_sync(
        &[entry(&home.path().join("dots/f"), "/root/f", None)],
        home.path(),
    )
    .unwrap();
    assert!(plan.files.is_empty() && plan.payloads.is_empty());
    assert!(plan.warnings[0].message.contains("outside your home"));
}

#[test]
fn a_home_reached_through_a_symlink_still_counts_as_home() {
    let real = tempfile::tempdir().unwrap();
    let links = tempfile::tempdir().unwrap();
    let home = links.path().join("home");
    symlink(real.path(), &home).unwrap();
    fs::write(real.path().join("f"), "x").unwrap();
    let plan = plan_file_sync(&[entry(&home.join("f"), "/root/f", None)], &home).unwrap();
    assert!(plan.warnings.is_empty(), "{:?}", plan.warnings);
    assert_eq!(plan.files.len(), 1);
}

#[test]
fn errors_other_than_missing_abort_naming_the_entry() {
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    fs::write(h.join("ok"), "x").unwrap();
    // A symlink loop cannot be resolved, even by root.
    symlink(h.join("loop-b"), h.join("loop-a")).unwrap();
    symlink(h.join("loop-a"), h.join("loop-b")).unwrap();
    let entries = [
        entry(&h.join("ok"), "/root/ok", None),
        entry(&h.join("loop-a"), "/root/loop", None),
    ];
    let err = plan_file_sync(&entries, h).unwrap_err();
    assert!(matches!(err, FileSyncError::Read { index: 1, .. }), "{err}");
    let text = err.to_string();
    assert!(
        text.starts_with("file_sync[1]: ") && text.contains("loop-a"),
        "{text}"
    );

    if !nix::unistd::geteuid().is_root() {
        // Root reads anything, so an unreadable file is only an error for others.
        fs::write(h.join("locked"), "x").unwrap();
        chmod(&h.join("locked"), 0o000);
        let err = plan_file_sync(&[entry(&h.join("locked"), "/root/l", None)], h).unwrap_err();
        assert!(matches!(err, FileSyncError::Read { index: 0, .. }), "{err}");
    }
}

#[test]
fn plan_lands_on_a_real_config_drive() {
    let (home, _outside, entries) = fixture();
    let plan = plan_file_sync(&entries, home.path()).unwrap();
    let out = tempfile::tempdir().unwrap();
    let img = out.path().join("config.ext4");
    let config = GuestConfig {
        format_version: GUEST_CONFIG_VERSION,
        vm_id: "id".into(),
        hostname: "web".into(),
        authorized_keys: vec![],
        ssh_host_key: SshHostKey {
            private_openssh: "p".into(),
            public_openssh: "q".into(),
        },
        files: plan.files.clone(),
    };
    build_config_drive(&img, &config, &plan.payloads).unwrap();
    let img_s = img.to_str().unwrap();
    let json = run("debugfs", &["-R", "cat /banger.json", img_s]);
    let back: GuestConfig = serde_json::from_str(&json).unwrap();
    assert_eq!(back.files, plan.files);
    // Every GuestFile's source exists on the drive with the planned content.
    for f in &back.files {
        let GuestFile { source, .. } = f;
        let listing = run("debugfs", &["-R", &format!("stat /files/{source}"), img_s]);
        assert!(listing.contains("Inode:"), "{listing}");
    }
    assert_eq!(
        run("debugfs", &["-R", "cat /files/6/lua/plugins/a.lua", img_s]),
        "a"
    );
    let stat = run("debugfs", &["-R", "stat /files/6/lua/secret.lua", img_s]);
    assert!(stat.contains("Mode:  0400"), "{stat}");
    let ls = run("debugfs", &["-R", "ls -l /files/6", img_s]);
    assert!(!ls.contains("passwd-link") && !ls.contains("pipe"), "{ls}");
}
