//! Flattening real layer tarballs into a tree and an ext4 image (made by
//! the real mkfs.ext4, checked with debugfs).

mod common;

use banger_oci::flatten::{FlattenError, Kind, LayerInput, Limits, Tree};
use common::{layer, E};

const CAP: &[u8] = &[
    1, 0, 0, 2, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
]; // cap_net_raw+ep

fn apply(tree: &mut Tree, dir: &std::path::Path, l: &common::Layer) -> Result<(), FlattenError> {
    let p = dir.join(&l.digest[7..]);
    std::fs::write(&p, &l.blob).unwrap();
    tree.apply_layer(&LayerInput {
        blob: &p,
        digest: &l.digest,
        diff_id: Some(&l.diff_id),
    })
}

#[test]
fn whiteouts_opaque_dirs_hard_links_modes_and_xattrs_reach_the_ext4() {
    let tmp = tempfile::tempdir().unwrap();
    let content = tmp.path().join("content");
    std::fs::create_dir(&content).unwrap();
    let mut tree = Tree::new(&content, Limits::default());
    let base = layer(&[
        E::Dir("etc", 0o755),
        E::File("etc/old", 0o644, b"old"),
        E::Dir("etc/gone", 0o755),
        E::File("etc/gone/inner", 0o644, b"x"),
        E::Dir("opq", 0o755),
        E::File("opq/a", 0o644, b"a"),
        E::File("opq/b", 0o644, b"b"),
        E::Dir("usr", 0o755),
        E::Dir("usr/bin", 0o755),
        E::File("usr/bin/su", 0o4755, b"su-binary"),
        E::File("usr/bin/wall", 0o2755, b"wall"),
        E::FileX("usr/bin/ping", 0o755, b"ping", "security.capability", CAP),
        E::Dir("tmp", 0o1777),
        E::DirOwned("home/u", 0o750, 1000),
        E::FileOwned("home/u/notes", 0o600, 1000, b"mine"),
    ]);
    let top = layer(&[
        E::File("etc/.wh.old", 0o644, b""),
        E::File("etc/.wh.gone", 0o644, b""),
        E::File("opq/.wh..wh..opq", 0o644, b""),
        E::File("opq/c", 0o644, b"c"),
        E::Hard("usr/bin/su2", "usr/bin/su"),
        E::Sym("usr/bin/link", "/usr/bin/su"),
        E::File("etc/new", 0o640, b"new"),
    ]);
    apply(&mut tree, tmp.path(), &base).unwrap();
    apply(&mut tree, tmp.path(), &top).unwrap();
    assert!(tree.get("etc/old").is_none(), "whiteout removes the file");
    assert!(tree.get("etc/gone").is_none() && tree.get("etc/gone/inner").is_none());
    assert!(
        tree.get("etc/.wh.old").is_none(),
        "whiteouts are not in the result"
    );
    assert!(tree.get("opq/a").is_none() && tree.get("opq/b").is_none());
    assert_eq!(
        tree.read_file("opq/c").unwrap(),
        b"c",
        "same-layer entry survives opaque"
    );
    let (Kind::File(a), Kind::File(b)) = (
        &tree.get("usr/bin/su").unwrap().kind,
        &tree.get("usr/bin/su2").unwrap().kind,
    ) else {
        panic!("files")
    };
    assert_eq!(a, b, "hard link shares the inode");

    let tar = tmp.path().join("rootfs.tar");
    banger_oci::rootfs::write_tar(&tree, &tar).unwrap();
    let img = tmp.path().join("rootfs.ext4");
    let size = banger_oci::rootfs::mkfs(
        &tar,
        &img,
        tmp.path(),
        &tree,
        &banger_oci::rootfs::Ext4Options {
            size: None,
            uuid: banger_oci::rootfs::uuid_from_digest(&"ab".repeat(32)),
            epoch: 1_735_689_600,
        },
    )
    .unwrap();
    assert!(size >= 1 << 30);
    let d = |c: &str| common::debugfs(&img, c);
    let etc = d("ls -l /etc");
    assert!(
        !etc.contains(" old") && !etc.contains("gone") && etc.contains("new"),
        "{etc}"
    );
    let opq = d("ls /opq");
    assert!(
        opq.contains("c") && !opq.contains(" a ") && !opq.contains(" b "),
        "{opq}"
    );
    let su = d("stat /usr/bin/su");
    assert!(
        su.contains("Mode:  04755") && su.contains("Links: 2"),
        "{su}"
    );
    assert_eq!(
        su.lines().next().unwrap().split_whitespace().nth(1),
        d("stat /usr/bin/su2")
            .lines()
            .next()
            .unwrap()
            .split_whitespace()
            .nth(1),
        "one inode"
    );
    assert!(d("stat /usr/bin/wall").contains("Mode:  02755"));
    assert!(d("stat /tmp").contains("Mode:  01777"));
    let home = d("stat /home/u/notes");
    assert!(home.contains("User:  1000   Group:  1000"), "{home}");
    let ea = d("ea_list /usr/bin/ping");
    assert!(
        ea.contains("security.capability (20) = 01 00 00 02 00 20"),
        "{ea}"
    );
    assert!(d("stat /usr/bin/link").contains("Fast link dest: \"/usr/bin/su\""));
    assert_eq!(d("cat /usr/bin/su"), "su-binary");
}

#[test]
fn long_paths_survive_the_tar() {
    let tmp = tempfile::tempdir().unwrap();
    let content = tmp.path().join("content");
    std::fs::create_dir(&content).unwrap();
    let mut tree = Tree::new(&content, Limits::default());
    let long = format!("d/{}/{}", "x".repeat(120), "y".repeat(120));
    tree.put_file(&long, b"deep", 0o644);
    tree.put_symlink("d/l", &format!("/{long}"));
    let tar = tmp.path().join("t.tar");
    banger_oci::rootfs::write_tar(&tree, &tar).unwrap();
    let img = tmp.path().join("i.ext4");
    banger_oci::rootfs::mkfs(
        &tar,
        &img,
        tmp.path(),
        &tree,
        &banger_oci::rootfs::Ext4Options {
            size: Some(64 << 20),
            uuid: banger_oci::rootfs::uuid_from_digest(&"cd".repeat(32)),
            epoch: 0,
        },
    )
    .unwrap();
    assert_eq!(common::debugfs(&img, &format!("cat /{long}")), "deep");
}

/// Each hostile layer is refused with its digest and path, and nothing
/// appears outside the content directory.
#[test]
fn hostile_layers_are_refused_and_write_nothing_outside() {
    let outside = tempfile::tempdir().unwrap();
    let victim = outside.path().join("victim");
    let victim_s = victim.to_str().unwrap().to_owned();
    let rel_escape = format!("../../../../../../..{victim_s}");
    let cases: Vec<(&str, Vec<E<'_>>, &str)> = vec![
        (
            "dotdot",
            vec![E::File(&rel_escape, 0o644, b"pwn")],
            "\"..\"",
        ),
        (
            "absolute",
            vec![E::File(&victim_s, 0o644, b"pwn")],
            "absolute path",
        ),
        (
            "through a symlink",
            vec![
                E::Sym("escape", outside.path().to_str().unwrap()),
                E::File("escape/victim", 0o644, b"pwn"),
            ],
            "is a symlink",
        ),
        (
            "absolute hard link",
            vec![E::Hard("passwd", "/etc/passwd")],
            "absolute",
        ),
        (
            "hard link out",
            vec![E::Hard("passwd", "../../etc/passwd")],
            "leaves the image",
        ),
        ("device", vec![E::Char("dev/sda")], "device node"),
    ];
    for (what, entries, needle) in cases {
        let tmp = tempfile::tempdir().unwrap();
        let content = tmp.path().join("content");
        std::fs::create_dir(&content).unwrap();
        let mut tree = Tree::new(&content, Limits::default());
        let l = layer(&entries);
        let err = apply(&mut tree, tmp.path(), &l).unwrap_err().to_string();
        assert!(err.contains(&l.digest), "{what}: {err}");
        assert!(err.contains(needle), "{what}: {err}");
        assert!(!victim.exists(), "{what}: wrote outside");
        assert_eq!(
            std::fs::read_dir(outside.path()).unwrap().count(),
            0,
            "{what}"
        );
    }
}

#[test]
fn oversize_entries_and_digest_mismatch_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let content = tmp.path().join("content");
    std::fs::create_dir(&content).unwrap();
    let limits = Limits {
        max_file_bytes: 10,
        ..Limits::default()
    };
    let mut tree = Tree::new(&content, limits);
    let l = layer(&[E::File("big", 0o644, &[0u8; 11])]);
    let e = apply(&mut tree, tmp.path(), &l).unwrap_err().to_string();
    assert!(e.contains("\"big\"") && e.contains("too big"), "{e}");

    let mut tree = Tree::new(&content, Limits::default());
    let mut l = layer(&[E::File("f", 0o644, b"x")]);
    l.diff_id = common::sha(b"something else");
    let e = apply(&mut tree, tmp.path(), &l).unwrap_err();
    assert!(matches!(e, FlattenError::Digest { .. }), "{e}");
}
