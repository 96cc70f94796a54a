//! Bundle pack/unpack: round trip, reproducibility, and refusal of every
//! kind of tampered or hostile bundle.

mod common;

use std::path::Path;

use banger_image::bundle::{self, BundleError, Expect};
use banger_image::manifest::Manifest;
use banger_image::Kind;
use common::*;

fn expect(kind: Kind, name: &str) -> Expect {
    Expect {
        kind,
        name: Some(name.into()),
    }
}

#[test]
fn kernel_round_trip_restores_every_byte() {
    let tmp = tempfile::tempdir().unwrap();
    let src = kernel_src(&tmp.path().join("src"));
    let packed = bundle::pack(&src, &kernel_meta("k1"), &tmp.path().join("k1.tar.zst")).unwrap();
    assert_eq!(packed.size, std::fs::metadata(&packed.path).unwrap().len());
    assert_eq!(
        packed.sha256,
        banger_image::digest::sha256_file(&packed.path).unwrap().1
    );
    let names: Vec<&str> = packed
        .manifest
        .artifacts
        .iter()
        .map(|a| a.name.as_str())
        .collect();
    assert_eq!(names, ["vmlinux", "initrd", "modules"]);

    let out = tmp.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let m = bundle::unpack_file(&packed.path, &out, &expect(Kind::Kernel, "k1")).unwrap();
    assert_eq!(m, packed.manifest);
    for f in [
        "vmlinux",
        "initrd",
        "modules/6.12.0-test/kernel/fs/overlay.ko.xz",
        "modules/6.12.0-test/modules.dep",
    ] {
        assert_eq!(
            std::fs::read(out.join(f)).unwrap(),
            std::fs::read(src.join(f)).unwrap(),
            "{f}"
        );
    }
    assert!(out.join("modules/6.12.0-test/empty").is_dir());
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(out.join("modules/6.12.0-test/tool"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o755, "executable bit kept, mode normalized");
    assert_eq!(
        Manifest::from_json(&std::fs::read(out.join("manifest.json")).unwrap()).unwrap(),
        m
    );
}

#[test]
fn image_round_trip_keeps_rootfs_sparse() {
    let tmp = tempfile::tempdir().unwrap();
    let size = 64 << 20;
    let src = image_src(&tmp.path().join("src"), size);
    let packed = bundle::pack(&src, &image_meta("img"), &tmp.path().join("img.tar.zst")).unwrap();
    assert!(
        packed.size < 1 << 20,
        "zeros compress away: {} bytes",
        packed.size
    );
    let out = tmp.path().join("out");
    std::fs::create_dir(&out).unwrap();
    bundle::unpack_file(&packed.path, &out, &expect(Kind::Image, "img")).unwrap();
    let rootfs = out.join("rootfs.ext4");
    assert_eq!(
        std::fs::read(&rootfs).unwrap(),
        std::fs::read(src.join("rootfs.ext4")).unwrap()
    );
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(&rootfs).unwrap();
    assert_eq!(meta.len(), size);
    assert!(meta.blocks() * 512 < 4 << 20, "unpacked rootfs is sparse");
}

#[test]
fn packing_is_reproducible_across_copies_with_other_metadata() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let a = kernel_src(&tmp.path().join("a"));
    let b = kernel_src(&tmp.path().join("b"));
    // Different permissions and mtimes in the second tree.
    std::fs::set_permissions(b.join("vmlinux"), std::fs::Permissions::from_mode(0o600)).unwrap();
    let f = std::fs::File::options()
        .write(true)
        .open(b.join("initrd"))
        .unwrap();
    f.set_modified(std::time::UNIX_EPOCH + std::time::Duration::from_secs(12345))
        .unwrap();
    let pa = bundle::pack(&a, &kernel_meta("k"), &tmp.path().join("a.tar.zst")).unwrap();
    let pb = bundle::pack(&b, &kernel_meta("k"), &tmp.path().join("b.tar.zst")).unwrap();
    assert_eq!(pa.sha256, pb.sha256);
    assert_eq!(
        std::fs::read(&pa.path).unwrap(),
        std::fs::read(&pb.path).unwrap()
    );
    // Any content change shows.
    std::fs::write(b.join("modules/6.12.0-test/modules.dep"), b"changed\n").unwrap();
    let pc = bundle::pack(&b, &kernel_meta("k"), &tmp.path().join("c.tar.zst")).unwrap();
    assert_ne!(pa.sha256, pc.sha256);
}

#[test]
fn pack_refuses_symlinks_in_trees() {
    let tmp = tempfile::tempdir().unwrap();
    let src = kernel_src(&tmp.path().join("src"));
    std::os::unix::fs::symlink("/usr/src/linux", src.join("modules/6.12.0-test/build")).unwrap();
    let err = bundle::pack(&src, &kernel_meta("k"), &tmp.path().join("k.tar.zst")).unwrap_err();
    assert!(
        err.to_string().contains("build") && err.to_string().contains("symlink"),
        "{err}"
    );
    assert!(!tmp.path().join("k.tar.zst").exists());
}

#[test]
fn unpack_checks_kind_and_name() {
    let tmp = tempfile::tempdir().unwrap();
    let src = kernel_src(&tmp.path().join("src"));
    let p = bundle::pack(&src, &kernel_meta("k1"), &tmp.path().join("k.tar.zst")).unwrap();
    for (exp, needle) in [
        (expect(Kind::Image, "k1"), "kernel bundle"),
        (expect(Kind::Kernel, "other"), "\"k1\""),
    ] {
        let out = tempfile::tempdir().unwrap();
        let err = bundle::unpack_file(&p.path, out.path(), &exp)
            .unwrap_err()
            .to_string();
        assert!(err.contains(needle), "expected {needle:?} in {err}");
    }
}

/// One raw tar entry for hand-made (hostile) bundles.
struct Raw {
    path: Vec<u8>,
    kind: tar::EntryType,
    data: Vec<u8>,
    link: Vec<u8>,
}

fn file(path: &str, data: &[u8]) -> Raw {
    Raw {
        path: path.into(),
        kind: tar::EntryType::Regular,
        data: data.to_vec(),
        link: vec![],
    }
}

fn dir(path: &str) -> Raw {
    Raw {
        path: path.into(),
        kind: tar::EntryType::Directory,
        data: vec![],
        link: vec![],
    }
}

/// Write entries with names copied verbatim into the header, bypassing the
/// tar crate's own path checks (an attacker's tar has none).
fn raw_bundle(entries: &[Raw]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let mut h = tar::Header::new_old();
        h.as_old_mut().name[..e.path.len()].copy_from_slice(&e.path);
        h.as_old_mut().linkname[..e.link.len()].copy_from_slice(&e.link);
        h.set_entry_type(e.kind);
        h.set_mode(0o644);
        h.set_size(e.data.len() as u64);
        h.set_cksum();
        b.append(&h, &e.data[..]).unwrap();
    }
    zstd::encode_all(&b.into_inner().unwrap()[..], 3).unwrap()
}

/// A valid kernel manifest for a tiny modules tree + vmlinux, and the
/// entries of the honest bundle.
fn honest_kernel() -> (Vec<u8>, Vec<Raw>) {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path();
    std::fs::write(src.join("vmlinux"), b"ELF-ish").unwrap();
    std::fs::create_dir_all(src.join("modules/r")).unwrap();
    std::fs::write(src.join("modules/r/a.ko"), b"module").unwrap();
    let mut meta = kernel_meta("k");
    meta.kernel_release = Some("r".into());
    let m = bundle::describe(src, &meta).unwrap();
    let json = m.to_json();
    let entries = vec![
        file("manifest.json", &json),
        file("vmlinux", b"ELF-ish"),
        dir("modules/"),
        dir("modules/r/"),
        file("modules/r/a.ko", b"module"),
    ];
    (json, entries)
}

fn try_unpack(bytes: &[u8]) -> (Result<Manifest, BundleError>, tempfile::TempDir) {
    let out = tempfile::tempdir().unwrap();
    let r = bundle::unpack(bytes, out.path(), &expect(Kind::Kernel, "k"));
    (r, out)
}

#[test]
fn the_honest_handmade_bundle_unpacks() {
    let (_, entries) = honest_kernel();
    let (r, out) = try_unpack(&raw_bundle(&entries));
    r.unwrap();
    assert_eq!(
        std::fs::read(out.path().join("modules/r/a.ko")).unwrap(),
        b"module"
    );
}

#[test]
fn tampered_and_hostile_bundles_are_refused() {
    let outside = tempfile::tempdir().unwrap();
    let escape = format!("{}/escaped", outside.path().display());
    type Tamper = Box<dyn Fn(&mut Vec<Raw>)>;
    let cases: Vec<(&str, Tamper, &str)> = vec![
        (
            "changed file",
            Box::new(|e| e[1].data = b"ELF-isH".to_vec()),
            "artifact vmlinux: expected",
        ),
        (
            "changed tree file",
            Box::new(|e| e[4].data = b"modulE".to_vec()),
            "artifact modules: expected",
        ),
        (
            "extra tree file",
            Box::new(|e| e.push(file("modules/r/b.ko", b"x"))),
            "artifact modules",
        ),
        (
            "parent escape",
            Box::new(|e| e.push(file("modules/../../escaped", b"x"))),
            "unsafe",
        ),
        (
            "absolute path",
            Box::new(move |e| e.push(file(&escape, b"x"))),
            "absolute path",
        ),
        (
            "dot component",
            Box::new(|e| e.push(file("modules/./r/c.ko", b"x"))),
            "unsafe",
        ),
        (
            "unlisted entry",
            Box::new(|e| e.push(file("evil.sh", b"x"))),
            "not listed",
        ),
        (
            "file artifact as dir",
            Box::new(|e| e.push(file("vmlinux/x", b"x"))),
            "not listed",
        ),
        (
            "symlink",
            Box::new(|e| {
                e.push(Raw {
                    path: b"modules/r/l".to_vec(),
                    kind: tar::EntryType::Symlink,
                    data: vec![],
                    link: b"/etc".to_vec(),
                })
            }),
            "Symlink",
        ),
        (
            "hard link",
            Box::new(|e| {
                e.push(Raw {
                    path: b"modules/r/h".to_vec(),
                    kind: tar::EntryType::Link,
                    data: vec![],
                    link: b"/etc/shadow".to_vec(),
                })
            }),
            "Link",
        ),
        (
            "device node",
            Box::new(|e| {
                e.push(Raw {
                    path: b"modules/r/d".to_vec(),
                    kind: tar::EntryType::Char,
                    data: vec![],
                    link: vec![],
                })
            }),
            "Char",
        ),
        (
            "manifest not first",
            Box::new(|e| e.swap(0, 1)),
            "must start with manifest.json",
        ),
        (
            "missing artifact",
            Box::new(|e| {
                e.remove(1);
            }),
            "vmlinux is listed in the manifest but missing",
        ),
        (
            "duplicate entry",
            Box::new(|e| e.push(file("modules/r/a.ko", b"module"))),
            "twice",
        ),
        (
            "file before its dir",
            Box::new(|e| e.swap(3, 4)),
            "before its parent",
        ),
        (
            "non-UTF-8 name",
            Box::new(|e| {
                e.push(Raw {
                    path: b"modules/r/\xff".to_vec(),
                    kind: tar::EntryType::Regular,
                    data: b"x".to_vec(),
                    link: vec![],
                })
            }),
            "not UTF-8",
        ),
        (
            "oversized artifact",
            Box::new(|e| e[1].data = vec![b'A'; 1 << 16]),
            "too long",
        ),
    ];
    for (what, tamper, needle) in cases {
        let (_, mut entries) = honest_kernel();
        tamper(&mut entries);
        let (r, out) = try_unpack(&raw_bundle(&entries));
        let err = match r {
            Ok(_) => panic!("{what}: accepted"),
            Err(e) => e.to_string(),
        };
        assert!(
            err.contains(needle),
            "{what}: expected {needle:?} in {err:?}"
        );
        assert!(
            !outside.path().join("escaped").exists(),
            "{what}: wrote outside"
        );
        assert!(
            !out.path().parent().unwrap().join("escaped").exists(),
            "{what}: wrote beside dest"
        );
    }
}

#[test]
fn broken_streams_are_refused() {
    let (_, entries) = honest_kernel();
    let good = raw_bundle(&entries);
    // Truncated compressed stream.
    let (r, _o) = try_unpack(&good[..good.len() - 10]);
    assert!(matches!(r, Err(BundleError::Stream(_))), "{r:?}");
    // Trailing garbage after the frame.
    let mut trailing = good.clone();
    trailing.extend_from_slice(b"garbage after the end");
    let (r, _o) = try_unpack(&trailing);
    assert!(matches!(r, Err(BundleError::Stream(_))), "{r:?}");
    // Not zstd at all.
    let (r, _o) = try_unpack(b"this is not a bundle");
    assert!(matches!(r, Err(BundleError::Stream(_))), "{r:?}");
    // A bad manifest.
    let mut bad = entries;
    bad[0].data = br#"{"format_version": 1, "kind": "kernel"}"#.to_vec();
    let (r, _o) = try_unpack(&raw_bundle(&bad));
    assert!(r.unwrap_err().to_string().contains("invalid manifest"));
}

#[test]
fn unpack_never_writes_through_existing_paths() {
    // The destination must be empty; a pre-existing symlink named like an
    // artifact is not followed.
    let (_, entries) = honest_kernel();
    let target = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(target.path().join("victim"), out.path().join("vmlinux")).unwrap();
    let err = bundle::unpack(
        &raw_bundle(&entries)[..],
        out.path(),
        &expect(Kind::Kernel, "k"),
    )
    .unwrap_err();
    assert!(err.to_string().contains("create"), "{err}");
    assert!(!Path::new(&target.path().join("victim")).exists());
}
