//! Root, work and config disks, made for real in temp dirs and checked with
//! `SEEK_HOLE`/`SEEK_DATA`, `dumpe2fs` and `debugfs` (no mounts on the host).

mod common;

use std::fs::{self, File};
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use banger_host::probe::{try_reflink, CloneStrategy, ReflinkOutcome};
use banger_vm::disk::{
    build_config_drive, build_config_drive_with, clone_rootfs, create_work_disk, DiskError,
    Payload, PayloadKind, RootFile,
};
use banger_wire::guest::{GuestConfig, GuestFile, SshHostKey, GUEST_CONFIG_VERSION};
use common::{have_program, privileged, run, MountNs};
use nix::unistd::{lseek, Whence};

const MIB: u64 = 1 << 20;

/// Deterministic non-zero bytes, so a hole read back as zeros is caught.
fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| ((i % 251) as u8).wrapping_add(seed) | 1)
        .collect()
}

/// A 12 MiB image: data at 0..64 KiB and 5 MiB..5 MiB+8 KiB, holes elsewhere
/// (including the tail).
fn sparse_image(path: &Path) -> Vec<(u64, Vec<u8>)> {
    let extents = vec![(0, pattern(64 << 10, 3)), (5 * MIB, pattern(8 << 10, 7))];
    let f = File::create(path).unwrap();
    f.set_len(12 * MIB).unwrap();
    for (at, data) in &extents {
        f.write_all_at(data, *at).unwrap();
    }
    f.sync_all().unwrap();
    extents
}

/// The data extents of `path` as `(start, end)` pairs, from SEEK_DATA/SEEK_HOLE.
fn data_extents(path: &Path) -> Vec<(i64, i64)> {
    let f = File::open(path).unwrap();
    let len = f.metadata().unwrap().len() as i64;
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < len {
        let Ok(data) = lseek(&f, pos, Whence::SeekData) else {
            break;
        };
        let hole = lseek(&f, data, Whence::SeekHole).unwrap();
        out.push((data, hole));
        pos = hole;
    }
    out
}

fn assert_same_bytes(a: &Path, b: &Path) {
    let (x, y) = (fs::read(a).unwrap(), fs::read(b).unwrap());
    assert_eq!(x.len(), y.len(), "{} vs {}", a.display(), b.display());
    assert!(x == y, "{} and {} differ", a.display(), b.display());
}

fn partials(dir: &Path) -> Vec<String> {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".partial") || n.starts_with(".banger-cfg-stage-"))
        .collect()
}

#[test]
fn sparse_copy_keeps_holes_length_and_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("rootfs.ext4");
    sparse_image(&src);
    let src_extents = data_extents(&src);
    assert!(
        src_extents.len() >= 2,
        "test filesystem reports no holes: {src_extents:?}"
    );
    let dst = dir.path().join("vm-root.ext4");
    let used = clone_rootfs(&src, &dst, CloneStrategy::SparseCopy).unwrap();
    assert_eq!(used, CloneStrategy::SparseCopy);
    assert_same_bytes(&src, &dst);
    assert_eq!(data_extents(&dst), src_extents);
    let meta = fs::metadata(&dst).unwrap();
    assert!(meta.blocks() * 512 < 2 * MIB, "{} blocks", meta.blocks());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    assert!(partials(dir.path()).is_empty());
}

#[test]
fn clone_of_an_all_hole_and_an_empty_image() {
    let dir = tempfile::tempdir().unwrap();
    let holes = dir.path().join("holes.ext4");
    File::create(&holes).unwrap().set_len(3 * MIB).unwrap();
    let dst = dir.path().join("a");
    clone_rootfs(&holes, &dst, CloneStrategy::SparseCopy).unwrap();
    assert_same_bytes(&holes, &dst);
    assert!(data_extents(&dst).is_empty());
    let empty = dir.path().join("empty.ext4");
    File::create(&empty).unwrap();
    let dst = dir.path().join("b");
    clone_rootfs(&empty, &dst, CloneStrategy::SparseCopy).unwrap();
    assert_eq!(fs::metadata(&dst).unwrap().len(), 0);
}

#[test]
fn reflink_preference_uses_ficlone_where_the_filesystem_has_it() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("rootfs.ext4");
    sparse_image(&src);
    let dst = dir.path().join("root.ext4");
    let used = clone_rootfs(&src, &dst, CloneStrategy::Reflink).unwrap();
    // Same answer as the host probe for this directory: reflink, or the
    // sparse-copy fallback.
    let expected = match try_reflink(dir.path()).unwrap() {
        ReflinkOutcome::Cloned => CloneStrategy::Reflink,
        ReflinkOutcome::Unsupported(_) => CloneStrategy::SparseCopy,
    };
    assert_eq!(used, expected);
    assert_same_bytes(&src, &dst);
    assert_eq!(data_extents(&dst), data_extents(&src));
}

#[test]
fn reflink_on_xfs_shares_extents_and_keeps_holes() {
    const T: &str = "reflink_on_xfs_shares_extents_and_keeps_holes";
    if !privileged(T) || !have_program(T, "/usr/sbin/mkfs.xfs", "xfsprogs") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("xfs.img");
    File::create(&img).unwrap().set_len(320 * MIB).unwrap();
    run(
        "mkfs.xfs",
        &["-q", "-m", "reflink=1", img.to_str().unwrap()],
    );
    let mnt = dir.path().join("mnt");
    fs::create_dir(&mnt).unwrap();
    let ns = MountNs::new();
    ns.mount(&["-o", "loop", img.to_str().unwrap(), mnt.to_str().unwrap()]);
    let inside = ns.path(&mnt);
    let src = inside.join("rootfs.ext4");
    sparse_image(&src);
    let dst = inside.join("root.ext4");
    assert_eq!(
        clone_rootfs(&src, &dst, CloneStrategy::Reflink).unwrap(),
        CloneStrategy::Reflink
    );
    assert_same_bytes(&src, &dst);
    assert_eq!(data_extents(&dst), data_extents(&src));
    // Shared extents: filefrag flags them "shared".
    let frag = run("filefrag", &["-v", dst.to_str().unwrap()]);
    assert!(frag.contains("shared"), "{frag}");
    // Writing the clone leaves the image alone.
    File::options()
        .write(true)
        .open(&dst)
        .unwrap()
        .write_all_at(b"changed", 0)
        .unwrap();
    assert_eq!(&fs::read(&src).unwrap()[..7], &pattern(7, 3)[..]);
    // Same filesystem, sparse preference: no sharing.
    let copy = inside.join("copy.ext4");
    clone_rootfs(&src, &copy, CloneStrategy::SparseCopy).unwrap();
    let frag = run("filefrag", &["-v", copy.to_str().unwrap()]);
    assert!(!frag.contains("shared"), "{frag}");
    assert_same_bytes(&src, &copy);
}

#[test]
fn a_failed_clone_leaves_no_disk_and_no_temporary_file() {
    const T: &str = "a_failed_clone_leaves_no_disk_and_no_temporary_file";
    if !privileged(T) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("rootfs.ext4");
    fs::write(&src, pattern(4 * MIB as usize, 1)).unwrap();
    let small = dir.path().join("small");
    fs::create_dir(&small).unwrap();
    let ns = MountNs::new();
    // A 1 MiB tmpfs: the copy runs out of space half-way.
    ns.mount(&[
        "-t",
        "tmpfs",
        "-o",
        "size=1m",
        "tmpfs",
        small.to_str().unwrap(),
    ]);
    let inside = ns.path(&small);
    let dst = inside.join("root.ext4");
    let err = clone_rootfs(&src, &dst, CloneStrategy::SparseCopy).unwrap_err();
    assert!(matches!(err, DiskError::Io { .. }), "{err}");
    assert!(err.to_string().contains("root.ext4"), "{err}");
    assert!(!dst.exists());
    assert!(partials(&inside).is_empty(), "{:?}", partials(&inside));
}

#[test]
fn clone_refuses_existing_destinations_and_bad_sources() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("rootfs.ext4");
    sparse_image(&src);
    let dst = dir.path().join("root.ext4");
    fs::write(&dst, b"precious").unwrap();
    let err = clone_rootfs(&src, &dst, CloneStrategy::SparseCopy).unwrap_err();
    assert!(matches!(err, DiskError::Exists { .. }), "{err}");
    assert_eq!(fs::read(&dst).unwrap(), b"precious");

    let err = clone_rootfs(dir.path(), &dir.path().join("x"), CloneStrategy::SparseCopy)
        .unwrap_err()
        .to_string();
    assert!(err.contains("not a regular file"), "{err}");
    let missing = dir.path().join("missing.ext4");
    let err = clone_rootfs(&missing, &dir.path().join("y"), CloneStrategy::SparseCopy)
        .unwrap_err()
        .to_string();
    assert!(err.contains("missing.ext4"), "{err}");

    let err = clone_rootfs(&src, &dir.path().join("z"), CloneStrategy::DmSnapshot).unwrap_err();
    assert!(
        matches!(err, DiskError::DmSnapshotNeedsHelper { .. }),
        "{err}"
    );
    assert!(!dir.path().join("z").exists());
    assert!(partials(dir.path()).is_empty());
}

#[test]
fn a_stale_partial_file_from_a_crash_does_not_matter() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("rootfs.ext4");
    sparse_image(&src);
    // What a crash mid-copy leaves: a temporary name, never the disk's name.
    let stale = dir.path().join(".root.ext4.AbCdEf.partial");
    fs::write(&stale, b"half").unwrap();
    let dst = dir.path().join("root.ext4");
    clone_rootfs(&src, &dst, CloneStrategy::SparseCopy).unwrap();
    assert_same_bytes(&src, &dst);
    assert_eq!(fs::read(&stale).unwrap(), b"half");
}

fn dumpe2fs(img: &Path) -> String {
    run("dumpe2fs", &["-h", img.to_str().unwrap()])
}

fn header_field<'a>(header: &'a str, name: &str) -> &'a str {
    header
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .unwrap_or_else(|| panic!("no {name} in\n{header}"))
        .trim()
}

fn debugfs(img: &Path, request: &str) -> String {
    run("debugfs", &["-R", request, img.to_str().unwrap()])
}

#[test]
fn work_disk_is_sparse_ext4_owned_by_root_and_never_overwritten() {
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("work.ext4");
    create_work_disk(&disk, 64 * MIB).unwrap();
    let meta = fs::metadata(&disk).unwrap();
    assert_eq!(meta.len(), 64 * MIB);
    assert!(
        meta.blocks() * 512 < 16 * MIB,
        "not sparse: {} blocks",
        meta.blocks()
    );
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let h = dumpe2fs(&disk);
    assert_eq!(header_field(&h, "Filesystem volume name"), "banger-work");
    assert_eq!(header_field(&h, "Reserved block count"), "0");
    let root = debugfs(&disk, "stat /");
    assert!(root.contains("User:     0   Group:     0"), "{root}");

    let before = fs::read(&disk).unwrap();
    let err = create_work_disk(&disk, 64 * MIB).unwrap_err();
    assert!(matches!(err, DiskError::Exists { .. }), "{err}");
    assert!(fs::read(&disk).unwrap() == before, "existing disk changed");

    let err = create_work_disk(&dir.path().join("tiny.ext4"), MIB)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("tiny.ext4") && err.contains("minimum"),
        "{err}"
    );
    assert!(partials(dir.path()).is_empty());
}

fn guest_config(files: Vec<GuestFile>) -> GuestConfig {
    GuestConfig {
        format_version: GUEST_CONFIG_VERSION,
        vm_id: "0123456789abcdef0123456789abcdef".into(),
        hostname: "web".into(),
        authorized_keys: vec!["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIUser user@host".into()],
        ssh_host_key: SshHostKey {
            private_openssh:
                "-----BEGIN OPENSSH PRIVATE KEY-----\nx\n-----END OPENSSH PRIVATE KEY-----\n".into(),
            public_openssh: "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHost root@web".into(),
        },
        files,
    }
}

fn file(rel: &str, mode: u32, contents: &[u8]) -> Payload {
    Payload {
        rel: PathBuf::from(rel),
        kind: PayloadKind::File {
            mode,
            contents: contents.to_vec(),
        },
    }
}

fn dir_payload(rel: &str, mode: u32) -> Payload {
    Payload {
        rel: PathBuf::from(rel),
        kind: PayloadKind::Dir { mode },
    }
}

fn mode_of(img: &Path, path: &str) -> String {
    let stat = debugfs(img, &format!("stat {path}"));
    let mode = stat
        .split("Mode:")
        .nth(1)
        .unwrap_or_else(|| panic!("{path}: {stat}"));
    mode.split_whitespace().next().unwrap().to_owned()
}

#[test]
fn config_drive_holds_the_config_and_payloads() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("config.ext4");
    let config = guest_config(vec![
        GuestFile {
            source: "0".into(),
            dest: "/root/.gitconfig".into(),
            mode: Some(0o644),
            is_dir: false,
        },
        GuestFile {
            source: "1".into(),
            dest: "/root/.config/nvim".into(),
            mode: None,
            is_dir: true,
        },
    ]);
    let big = pattern(3 * MIB as usize, 9);
    let payloads = vec![
        file("0", 0o644, b"[user]\n\tname = A\n"),
        dir_payload("1", 0o750),
        dir_payload("1/lua", 0o500),
        file("1/lua/init.lua", 0o600, b"print('hi')\n"),
        file("1/big.bin", 0o640, &big),
    ];
    build_config_drive(&img, &config, &payloads).unwrap();

    assert_eq!(
        fs::metadata(&img).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let h = dumpe2fs(&img);
    assert_eq!(header_field(&h, "Filesystem volume name"), "banger-cfg");
    let json = debugfs(&img, "cat /banger.json");
    let back: GuestConfig = serde_json::from_str(&json).unwrap();
    assert_eq!(back, config);
    assert_eq!(debugfs(&img, "cat /files/0"), "[user]\n\tname = A\n");
    assert_eq!(debugfs(&img, "cat /files/1/lua/init.lua"), "print('hi')\n");
    let out = std::process::Command::new("debugfs")
        .args(["-R", "cat /files/1/big.bin", img.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.stdout == big, "big payload differs");
    assert_eq!(mode_of(&img, "/files/0"), "0644");
    assert_eq!(mode_of(&img, "/files/1"), "0750");
    assert_eq!(mode_of(&img, "/files/1/lua"), "0500");
    assert_eq!(mode_of(&img, "/files/1/lua/init.lua"), "0600");
    assert_eq!(mode_of(&img, "/banger.json"), "0600");
    assert!(
        partials(dir.path()).is_empty(),
        "{:?}",
        partials(dir.path())
    );

    // Rebuilt on the next start: the new drive replaces the old one.
    let mut changed = config.clone();
    changed.hostname = "web2".into();
    build_config_drive(&img, &changed, &[]).unwrap();
    let back: GuestConfig = serde_json::from_str(&debugfs(&img, "cat /banger.json")).unwrap();
    assert_eq!(back.hostname, "web2");
    assert!(partials(dir.path()).is_empty());
}

#[test]
fn config_drive_carries_root_files_such_as_the_agent_binary() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("config.ext4");
    let agent = dir.path().join("agent-bin");
    let body = pattern(5 * MIB as usize, 11);
    fs::write(&agent, &body).unwrap();
    let root = [RootFile {
        name: "banger-vsock-agent".into(),
        source: agent.clone(),
        mode: 0o755,
    }];
    build_config_drive_with(&img, &guest_config(vec![]), &[], &root).unwrap();
    let out = std::process::Command::new("debugfs")
        .args(["-R", "cat /banger-vsock-agent", img.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.stdout == body, "agent binary differs on the drive");
    assert_eq!(mode_of(&img, "/banger-vsock-agent"), "0755");
    assert!(debugfs(&img, "cat /banger.json").contains("\"hostname\""));

    for bad in ["banger.json", "files", "a/b", "..", ""] {
        let root = [RootFile {
            name: bad.into(),
            source: agent.clone(),
            mode: 0o755,
        }];
        let err = build_config_drive_with(&img, &guest_config(vec![]), &[], &root).unwrap_err();
        assert!(
            matches!(err, DiskError::BadPayloadPath { .. }),
            "{bad}: {err}"
        );
    }
    let missing = [RootFile {
        name: "x".into(),
        source: dir.path().join("nope"),
        mode: 0o755,
    }];
    let err = build_config_drive_with(&img, &guest_config(vec![]), &[], &missing).unwrap_err();
    assert!(err.to_string().contains("nope"), "{err}");
    assert!(partials(dir.path()).is_empty());
}

#[test]
fn config_drive_sizes_itself_for_many_small_files() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("config.ext4");
    let mut payloads = vec![dir_payload("0", 0o755)];
    for i in 0..3000 {
        payloads.push(file(&format!("0/f{i}"), 0o644, format!("{i}\n").as_bytes()));
    }
    build_config_drive(&img, &guest_config(vec![]), &payloads).unwrap();
    assert_eq!(debugfs(&img, "cat /files/0/f2999"), "2999\n");
    let h = dumpe2fs(&img);
    let size = header_field(&h, "Block count").parse::<u64>().unwrap()
        * header_field(&h, "Block size").parse::<u64>().unwrap();
    assert!(size < 64 * MIB, "drive is {size} bytes");
}

#[test]
fn config_drive_rejects_payload_paths_leaving_the_drive() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("config.ext4");
    for rel in ["../escape", "/abs", "", "a/../../b"] {
        let err =
            build_config_drive(&img, &guest_config(vec![]), &[file(rel, 0o600, b"x")]).unwrap_err();
        assert!(
            matches!(err, DiskError::BadPayloadPath { .. }),
            "{rel}: {err}"
        );
    }
    assert!(!img.exists());
    assert!(
        partials(dir.path()).is_empty(),
        "{:?}",
        partials(dir.path())
    );
}
