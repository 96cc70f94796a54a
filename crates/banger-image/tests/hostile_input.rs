//! Hostile input for everything banger-image reads from someone else: bundle
//! streams (tar+zstd from a catalog mirror or a file a user was handed),
//! manifests, catalogs, downloaded bzImages, kernels and root filesystems
//! given to `image import`.
//!
//! Property tests run at least 10,000 cases each with cheap generators (tiny
//! archives on tmpfs); a panic fails the test, and so does any refusal that
//! left something behind. The explicit tests name one attack each and check
//! it is refused through the store, with nothing installed and nothing
//! written outside the destination.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use banger_fuzz::{cheap_bytes, config};
use banger_image::bundle::{self, BundleError, Expect, MAX_ENTRIES};
use banger_image::manifest::{Manifest, MAX_MANIFEST_BYTES};
use banger_image::store::{Origin, Store};
use banger_image::{digest, Kind};
use common::*;
use proptest::prelude::*;

/// A scratch directory on tmpfs when there is one: unpacking fsyncs every
/// file, which on a shared disk turns 10,000 cases into minutes.
fn scratch() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        tempfile::tempdir_in(shm).unwrap()
    } else {
        tempfile::tempdir().unwrap()
    }
}

/// An absolute path a hostile entry aims at; it must never appear.
const ESCAPE_ABS: &str = "/dev/shm/banger-hostile-escaped";

/// One tar entry written verbatim, bypassing the tar crate's own checks
/// (an attacker's tar has none).
#[derive(Debug, Clone)]
struct Raw {
    name: Vec<u8>,
    /// A ustar header (whose GNU long-name and pax entries readers apply
    /// to the next entry); otherwise an old v7 header.
    ustar: bool,
    /// ustar prefix (joined before `name` by readers).
    prefix: Vec<u8>,
    kind: u8,
    mode: u32,
    data: Vec<u8>,
    link: Vec<u8>,
}

fn raw(name: &str, kind: u8, data: &[u8]) -> Raw {
    Raw {
        name: name.as_bytes().to_vec(),
        ustar: true,
        prefix: vec![],
        kind,
        mode: 0o644,
        data: data.to_vec(),
        link: vec![],
    }
}

fn link(name: &str, kind: u8, target: &str) -> Raw {
    Raw {
        link: target.as_bytes().to_vec(),
        ..raw(name, kind, b"")
    }
}

fn tar_bytes(entries: &[Raw]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let mut h = if !e.ustar {
            tar::Header::new_old()
        } else {
            let mut h = tar::Header::new_ustar();
            let p = &mut h.as_ustar_mut().expect("ustar").prefix;
            let n = e.prefix.len().min(p.len());
            p[..n].copy_from_slice(&e.prefix[..n]);
            h
        };
        let old = h.as_old_mut();
        let n = e.name.len().min(old.name.len());
        old.name[..n].copy_from_slice(&e.name[..n]);
        let n = e.link.len().min(old.linkname.len());
        old.linkname[..n].copy_from_slice(&e.link[..n]);
        h.set_entry_type(tar::EntryType::new(e.kind));
        h.set_mode(e.mode);
        h.set_size(e.data.len() as u64);
        h.set_cksum();
        b.append(&h, &e.data[..]).unwrap();
    }
    b.into_inner().unwrap()
}

fn bundle_bytes(entries: &[Raw]) -> Vec<u8> {
    zstd::encode_all(&tar_bytes(entries)[..], 1).unwrap()
}

/// The honest kernel bundle `k`: manifest, vmlinux, a one-module tree.
fn honest_kernel() -> &'static Vec<Raw> {
    static K: OnceLock<Vec<Raw>> = OnceLock::new();
    K.get_or_init(|| {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path();
        std::fs::write(src.join("vmlinux"), b"ELF-ish").unwrap();
        std::fs::create_dir_all(src.join("modules/r")).unwrap();
        std::fs::write(src.join("modules/r/a.ko"), b"module").unwrap();
        let mut meta = kernel_meta("k");
        meta.kernel_release = Some("r".into());
        let m = bundle::describe(src, &meta).unwrap();
        vec![
            raw("manifest.json", b'0', &m.to_json()),
            raw("vmlinux", b'0', b"ELF-ish"),
            raw("modules/", b'5', b""),
            raw("modules/r/", b'5', b""),
            raw("modules/r/a.ko", b'0', b"module"),
        ]
    })
}

/// The honest image bundle `img`: manifest and a small rootfs.
fn honest_image() -> &'static Vec<Raw> {
    static I: OnceLock<Vec<Raw>> = OnceLock::new();
    I.get_or_init(|| {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("rootfs.ext4"), b"ext4-ish root").unwrap();
        let m = bundle::describe(tmp.path(), &image_meta("img")).unwrap();
        vec![
            raw("manifest.json", b'0', &m.to_json()),
            raw("rootfs.ext4", b'0', b"ext4-ish root"),
        ]
    })
}

const PATHS: &[&str] = &[
    "manifest.json",
    "vmlinux",
    "initrd",
    "rootfs.ext4",
    "modules",
    "modules/",
    "modules/r",
    "modules/r/",
    "modules/r/a.ko",
    "modules/r/b.ko",
    "modules/r/sub/",
    "modules/r/sub/x",
    "..",
    "../escaped",
    "../../escaped",
    "modules/../../escaped",
    "modules/r/../../../escaped",
    "/escaped",
    ESCAPE_ABS,
    "./vmlinux",
    "modules/./r/a.ko",
    "modules//r/a.ko",
    "vmlinux/x",
    "rootfs.ext4/x",
    "",
    "/",
    ".",
    "modules/r/a.ko/",
    "evil.sh",
];

fn path_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        6 => prop::sample::select(PATHS).prop_map(|s| s.as_bytes().to_vec()),
        1 => "[a-z./]{0,24}".prop_map(String::into_bytes),
        1 => cheap_bytes(0..100),
    ]
}

/// Regular, hard link, symlink, char, block, dir, fifo, contiguous, GNU
/// long name/link, pax headers, GNU sparse, volume label; or any byte.
fn kind_byte() -> impl Strategy<Value = u8> {
    prop_oneof![
        6 => prop::sample::select(b"0\x0012345679DgxKLSVM".to_vec()),
        1 => any::<u8>(),
    ]
}

fn data_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        2 => prop::sample::select(vec![&b"module"[..], b"ELF-ish", b"ext4-ish root", b""])
            .prop_map(<[u8]>::to_vec),
        2 => cheap_bytes(0..64),
        // A GNU long name or pax record pointing out of the tree.
        1 => prop::sample::select(vec![
            &b"../../escaped\0"[..],
            b"30 path=../../../escaped/file\n",
            b"26 path=/dev/shm/escaped\n",
            b"22 linkpath=/etc/shadow\n",
            b"11 size=99\n",
        ])
        .prop_map(<[u8]>::to_vec),
    ]
}

fn raw_entry() -> impl Strategy<Value = Raw> {
    (
        path_bytes(),
        any::<bool>(),
        prop_oneof![9 => Just(Vec::new()), 1 => path_bytes()],
        kind_byte(),
        prop_oneof![
            Just(0o644u32),
            Just(0o4755),
            any::<u32>().prop_map(|m| m & 0o7777)
        ],
        data_bytes(),
        path_bytes(),
    )
        .prop_map(|(name, ustar, prefix, kind, mode, data, link)| Raw {
            name,
            ustar,
            prefix,
            kind,
            mode,
            data,
            link,
        })
}

#[derive(Debug, Clone)]
enum Edit {
    Insert(usize, Raw),
    Remove(usize),
    Replace(usize, Raw),
    Swap(usize, usize),
    Data(usize, Vec<u8>),
    Kind(usize, u8),
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        3 => (any::<usize>(), raw_entry()).prop_map(|(i, r)| Edit::Insert(i, r)),
        1 => any::<usize>().prop_map(Edit::Remove),
        1 => (any::<usize>(), raw_entry()).prop_map(|(i, r)| Edit::Replace(i, r)),
        1 => (any::<usize>(), any::<usize>()).prop_map(|(i, j)| Edit::Swap(i, j)),
        1 => (any::<usize>(), data_bytes()).prop_map(|(i, d)| Edit::Data(i, d)),
        1 => (any::<usize>(), kind_byte()).prop_map(|(i, k)| Edit::Kind(i, k)),
    ]
}

/// How the compressed stream is damaged after packing.
#[derive(Debug, Clone)]
enum Tail {
    Intact,
    Truncate(usize),
    Garbage(Vec<u8>),
    Flip(usize, u8),
}

fn tail() -> impl Strategy<Value = Tail> {
    prop_oneof![
        12 => Just(Tail::Intact),
        1 => any::<usize>().prop_map(Tail::Truncate),
        1 => cheap_bytes(1..16).prop_map(Tail::Garbage),
        1 => (any::<usize>(), 1..=255u8).prop_map(|(i, x)| Tail::Flip(i, x)),
    ]
}

/// A hostile bundle: the honest one edited, or entries from scratch behind
/// the honest manifest, then possibly damaged as a stream.
fn hostile(honest: &'static [Raw]) -> impl Strategy<Value = Vec<u8>> {
    let edited = prop::collection::vec(edit(), 0..4).prop_map(move |edits| {
        let mut e = honest.to_vec();
        for op in edits {
            let len = e.len().max(1);
            match op {
                Edit::Insert(i, r) => e.insert(i % (e.len() + 1), r),
                Edit::Remove(i) if !e.is_empty() => {
                    e.remove(i % len);
                }
                Edit::Replace(i, r) if !e.is_empty() => e[i % len] = r,
                Edit::Swap(i, j) if !e.is_empty() => e.swap(i % len, j % len),
                Edit::Data(i, d) if !e.is_empty() => e[i % len].data = d,
                Edit::Kind(i, k) if !e.is_empty() => e[i % len].kind = k,
                _ => {}
            }
        }
        e
    });
    let scratch_entries = prop::collection::vec(raw_entry(), 0..6).prop_map(move |mut rest| {
        rest.insert(0, honest[0].clone());
        rest
    });
    (prop_oneof![3 => edited, 1 => scratch_entries], tail()).prop_map(|(entries, tail)| {
        let mut bytes = bundle_bytes(&entries);
        match tail {
            Tail::Intact => {}
            Tail::Truncate(n) => bytes.truncate(n % bytes.len()),
            Tail::Garbage(g) => bytes.extend_from_slice(&g),
            Tail::Flip(i, x) => {
                let n = bytes.len();
                bytes[i % n] ^= x;
            }
        }
        bytes
    })
}

fn names(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

/// Everything under `root` is a plain directory or a regular file with one
/// link: no symlink, hard link, device, fifo or socket was created.
fn only_files_and_dirs(root: &Path) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    for entry in std::fs::read_dir(root).unwrap() {
        let path = entry.unwrap().path();
        let m = std::fs::symlink_metadata(&path).unwrap();
        if m.is_dir() {
            only_files_and_dirs(&path)?;
        } else if !(m.is_file() && m.nlink() == 1) {
            return Err(format!("{} is {:?}", path.display(), m.file_type()));
        }
    }
    Ok(())
}

fn nothing_escaped(sandbox: &Path) -> Result<(), String> {
    for p in [
        sandbox.join("escaped"),
        sandbox.parent().unwrap().join("escaped"),
        PathBuf::from(ESCAPE_ABS),
    ] {
        if p.symlink_metadata().is_ok() {
            let _ = std::fs::remove_file(&p);
            return Err(format!("wrote {}", p.display()));
        }
    }
    Ok(())
}

/// An accepted bundle installed exactly what its manifest lists, verified
/// again from disk.
fn matches_manifest(dir: &Path, m: &Manifest) -> Result<(), String> {
    let mut allowed: BTreeSet<String> = m.artifacts.iter().map(|a| a.name.clone()).collect();
    allowed.insert("manifest.json".into());
    allowed.insert("origin.json".into());
    allowed.insert("modules.ext4".into());
    let extra: Vec<String> = names(dir).difference(&allowed).cloned().collect();
    if !extra.is_empty() {
        return Err(format!("unlisted files installed: {extra:?}"));
    }
    for a in &m.artifacts {
        let p = dir.join(&a.name);
        let got = match a.kind {
            banger_image::manifest::ArtifactType::File => digest::sha256_file(&p),
            banger_image::manifest::ArtifactType::Tree => digest::tree_digest(&p),
        }
        .map_err(|e| e.to_string())?;
        if got != (a.size, a.sha256.clone()) {
            return Err(format!("{} does not match the manifest", a.name));
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(config())]

    /// Unpacking a hostile kernel bundle (trees, links, devices, traversal)
    /// never panics, never writes outside the destination, never creates
    /// anything but plain files and directories, and accepts only what
    /// verifies against the manifest.
    #[test]
    fn hostile_kernel_bundles_never_escape(bytes in hostile(honest_kernel())) {
        let sandbox = scratch();
        let dest = sandbox.path().join("dest");
        std::fs::create_dir(&dest).unwrap();
        let expect = Expect { kind: Kind::Kernel, name: Some("k".into()) };
        let result = bundle::unpack(&bytes[..], &dest, &expect);
        prop_assert_eq!(names(sandbox.path()), BTreeSet::from(["dest".to_owned()]));
        nothing_escaped(sandbox.path()).map_err(TestCaseError::fail)?;
        only_files_and_dirs(&dest).map_err(TestCaseError::fail)?;
        match result {
            Ok(m) => matches_manifest(&dest, &m).map_err(TestCaseError::fail)?,
            Err(e) => prop_assert!(!e.to_string().is_empty()),
        }
    }

    /// Through the store: a refused image bundle leaves no installed name and
    /// no staging directory behind; an accepted one verifies from disk.
    #[test]
    fn refused_bundles_leave_the_store_untouched(bytes in hostile(honest_image())) {
        let sandbox = scratch();
        let file = sandbox.path().join("img.bundle");
        std::fs::write(&file, &bytes).unwrap();
        let store = Store::new(sandbox.path().join("state"));
        let origin = Origin::File { path: file.display().to_string(), bundle_sha256: String::new() };
        let result = store.install_file(&file, Kind::Image, "img", origin, &|_| {});
        nothing_escaped(sandbox.path()).map_err(TestCaseError::fail)?;
        let kind_dir = store.kind_dir(Kind::Image);
        match result {
            Ok(installed) => {
                prop_assert_eq!(leftovers(&kind_dir), vec!["img".to_owned()]);
                only_files_and_dirs(&installed.dir).map_err(TestCaseError::fail)?;
                matches_manifest(&installed.dir, &installed.manifest)
                    .map_err(TestCaseError::fail)?;
            }
            Err(e) => {
                prop_assert!(!e.to_string().is_empty());
                prop_assert_eq!(leftovers(&kind_dir), Vec::<String>::new());
                prop_assert!(store.get(Kind::Image, "img").unwrap().is_none());
            }
        }
    }
}

fn manifest_json() -> serde_json::Value {
    serde_json::from_slice(&honest_kernel()[0].data).unwrap()
}

fn json_value() -> impl Strategy<Value = serde_json::Value> {
    use serde_json::{json, Value};
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        Just(json!(1.5)),
        Just(json!(2)),
        Just(json!(0)),
        prop::sample::select(vec![
            "",
            "k",
            "../etc",
            "/abs",
            "a/b",
            "r",
            ".",
            "..",
            "x86_64",
            "aarch64",
            "image",
            "kernel",
            "file",
            "tree",
            "vmlinux",
            "modules",
            "initrd",
            "rootfs.ext4",
            "generic-6.12",
            "a\nb",
            "A",
            "\u{0}",
        ])
        .prop_map(Value::from),
        "[ -~]{0,70}".prop_map(Value::from),
        Just(json!("a".repeat(64))),
        Just(json!([])),
        Just(json!({})),
        Just(json!([{ "name": "vmlinux", "type": "file", "size": 1, "sha256": "a".repeat(64) }])),
        Just(
            json!([{ "name": "modules", "type": "tree", "size": 0, "sha256": "b".repeat(64) },
                    { "name": "modules", "type": "tree", "size": 0, "sha256": "b".repeat(64) }])
        ),
        Just(json!([{ "name": "../x", "type": "file", "size": 1, "sha256": "a".repeat(64) }])),
    ]
}

const MANIFEST_KEYS: &[&str] = &[
    "format_version",
    "kind",
    "name",
    "version",
    "arch",
    "created",
    "recipe_hash",
    "kernel_ref",
    "kernel_release",
    "artifacts",
    "surprise",
];

proptest! {
    #![proptest_config(config())]

    /// Arbitrary bytes as `manifest.json`: refused or valid, never a panic.
    #[test]
    fn manifest_bytes_never_panic(bytes in cheap_bytes(0..256)) {
        if let Ok(m) = Manifest::from_json(&bytes) {
            prop_assert!(m.validate().is_ok());
        }
    }

    /// A real manifest with fields replaced, removed or added: whatever is
    /// accepted passes every rule and survives a round trip.
    #[test]
    fn mutated_manifests_are_valid_or_refused(
        edits in prop::collection::vec(
            (prop::sample::select(MANIFEST_KEYS), prop::option::of(json_value())), 1..4),
    ) {
        let mut v = manifest_json();
        for (key, value) in edits {
            match value {
                Some(x) => { v[key] = x; }
                None => { v.as_object_mut().unwrap().remove(key); }
            }
        }
        let bytes = serde_json::to_vec(&v).unwrap();
        match Manifest::from_json(&bytes) {
            Ok(m) => {
                prop_assert!(m.validate().is_ok());
                banger_image::manifest::validate_name(&m.name).unwrap();
                prop_assert_eq!(Manifest::from_json(&m.to_json()).unwrap(), m);
            }
            Err(e) => prop_assert!(!e.to_string().is_empty()),
        }
    }
}

const CATALOG_LINES: &[&str] = &[
    "format_version = 1",
    "format_version = 2",
    "format_version = -1",
    "base_url = \"https://example.test/banger\"",
    "base_url = \"http://\"",
    "base_url = \"https:///etc\"",
    "base_url = \"file:///etc\"",
    "base_url = \"https://a b\"",
    "[[kernel]]",
    "[[image]]",
    "[kernel]",
    "name = \"generic-6.12\"",
    "name = \"debian\"",
    "name = \"../etc\"",
    "name = \"\"",
    "version = \"1\"",
    "url = \"kernels/generic.tar.zst\"",
    "url = \"https://elsewhere.test/x\"",
    "url = \"\"",
    "url = \"a b\"",
    "size = 10",
    "size = 0",
    "size = -5",
    "size = 18446744073709551615",
    "sha256 = \"\"",
    "sha256 = \"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\"",
    "sha256 = \"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\"",
    "kernel_ref = \"generic-6.12\"",
    "kernel_ref = \"missing\"",
    "kernel_ref = 3",
    "surprise = true",
    "[[",
    "= 1",
    "name = \"\\u0000\"",
];

proptest! {
    #![proptest_config(config())]

    /// Arbitrary text as catalog.toml (from `BANGER_CATALOG`): no panic.
    #[test]
    fn catalog_text_never_panics(bytes in cheap_bytes(0..200)) {
        // Mostly TOML punctuation, so the parser gets past the first byte.
        const ALPHABET: &[u8] = b"[]{}=\"'.,#\n \t\\abkns_0129-";
        let text: String = bytes
            .iter()
            .map(|b| match ALPHABET.get(usize::from(*b) % 32) {
                Some(c) => char::from(*c),
                None => char::from_u32(u32::from(*b) * 97).unwrap_or('\u{fffd}'),
            })
            .collect();
        let _ = banger_image::catalog::Catalog::parse(&text);
    }

    /// Catalogs assembled from plausible and hostile lines: whatever is
    /// accepted resolves every entry to an http(s) URL and every name and
    /// kernel_ref is a valid store name.
    #[test]
    fn assembled_catalogs_are_valid_or_refused(
        lines in prop::collection::vec(prop::sample::select(CATALOG_LINES), 0..24),
    ) {
        let text = lines.join("\n");
        match banger_image::catalog::Catalog::parse(&text) {
            Ok(c) => {
                for kind in [Kind::Kernel, Kind::Image] {
                    for name in ["generic-6.12", "debian"] {
                        if let Ok(e) = c.get(kind, name) {
                            banger_image::manifest::validate_name(&e.name).unwrap();
                            if let Some(k) = &e.kernel_ref {
                                prop_assert!(c.get(Kind::Kernel, k).is_ok());
                            }
                            let url = e.resolve_url("https://example.test/banger").unwrap();
                            prop_assert!(url.starts_with("http://") || url.starts_with("https://"));
                            prop_assert!(!url.contains(char::is_whitespace));
                        }
                    }
                }
            }
            Err(e) => prop_assert!(!e.to_string().is_empty()),
        }
    }
}

/// A bzImage-shaped buffer with the given header fields around `payload`.
fn fake_bzimage(
    setup_sects: u8,
    version: u16,
    payload_offset: u32,
    payload_length: u32,
    payload: &[u8],
    magic: bool,
) -> Vec<u8> {
    let sects = if setup_sects == 0 {
        4
    } else {
        usize::from(setup_sects)
    };
    let mut bz = vec![0u8; (sects + 1) * 512];
    bz[0x1f1] = setup_sects;
    if magic {
        bz[0x202..0x206].copy_from_slice(b"HdrS");
    }
    bz[0x206..0x208].copy_from_slice(&version.to_le_bytes());
    bz[0x248..0x24c].copy_from_slice(&payload_offset.to_le_bytes());
    bz[0x24c..0x250].copy_from_slice(&payload_length.to_le_bytes());
    bz.extend_from_slice(payload);
    bz
}

fn bz_payload() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        cheap_bytes(0..64),
        // A zstd frame of ELF-ish or not-ELF content, maybe cut short.
        (cheap_bytes(0..64), any::<bool>(), any::<usize>()).prop_map(|(body, elf, cut)| {
            let mut plain = if elf { b"\x7fELF".to_vec() } else { Vec::new() };
            plain.extend_from_slice(&body);
            let mut z = zstd::encode_all(&plain[..], 1).unwrap();
            if cut % 4 == 0 {
                z.truncate(cut % z.len());
            }
            z.extend_from_slice(&(plain.len() as u32).to_le_bytes());
            z
        }),
        // Magic bytes of every compressor the kernel knows.
        prop::sample::select(vec![
            &b"\x1f\x8b\x08\0\0\0\0\0"[..],
            b"\xfd7zXZ\0\0\0",
            b"\x02\x21\x4c\x18\0\0\0\0",
            b"\x89LZO\0\0\0\0",
            b"BZh91AY&",
            b"\x5d\0\0\x80\0\0\0\0",
            b"\x28\xb5\x2f\xfd\0\0\0\0",
        ])
        .prop_map(<[u8]>::to_vec),
    ]
}

proptest! {
    #![proptest_config(config())]

    /// A downloaded vmlinuz with arbitrary header fields and payload: the
    /// payload is located inside the file or refused; only an ELF comes out.
    #[test]
    fn bzimage_headers_never_panic(
        setup_sects in prop_oneof![Just(0u8), Just(1), Just(27), any::<u8>()],
        version in prop_oneof![Just(0x20fu16), Just(0x207), any::<u16>()],
        off in prop_oneof![Just(0u32), 0..128u32, any::<u32>()],
        len in prop_oneof![0..16u32, Just(u32::MAX), any::<u32>(), Just(u32::MAX - 3)],
        exact_len in any::<bool>(),
        magic in prop::bool::weighted(0.95),
        payload in bz_payload(),
        cut in prop::option::weighted(0.1, any::<usize>()),
    ) {
        let len = if exact_len { payload.len() as u32 } else { len };
        let mut bz = fake_bzimage(setup_sects, version, off % 1024, len, &payload, magic);
        if let Some(c) = cut {
            bz.truncate(c % (bz.len() + 1));
        }
        if let Ok(p) = banger_image::bzimage::payload(&bz) {
            prop_assert!(p.offset + p.length <= bz.len());
        }
        match banger_image::bzimage::extract_vmlinux(&bz) {
            Ok(elf) => prop_assert!(elf.starts_with(b"\x7fELF")),
            Err(e) => prop_assert!(!e.to_string().is_empty()),
        }
    }

    /// Arbitrary bytes as a vmlinuz.
    #[test]
    fn bzimage_bytes_never_panic(bytes in cheap_bytes(0..0x300)) {
        let _ = banger_image::bzimage::extract_vmlinux(&bytes);
    }
}

/// An ELF64 header claiming x86_64 ET_EXEC with the given program header
/// table, followed by `rest`.
fn elf_with(phoff: u64, phentsize: u16, phnum: u16, rest: &[u8]) -> Vec<u8> {
    let mut eh = vec![0u8; 64];
    eh[0..4].copy_from_slice(b"\x7fELF");
    eh[4] = 2;
    eh[5] = 1;
    eh[16..18].copy_from_slice(&2u16.to_le_bytes());
    eh[18..20].copy_from_slice(&62u16.to_le_bytes());
    eh[32..40].copy_from_slice(&phoff.to_le_bytes());
    eh[54..56].copy_from_slice(&phentsize.to_le_bytes());
    eh[56..58].copy_from_slice(&phnum.to_le_bytes());
    eh.extend_from_slice(rest);
    eh
}

/// A PT_NOTE program header pointing at `off`/`size`, then note records
/// with arbitrary sizes (the PVH note is name "Xen", type 18).
fn elf_body() -> impl Strategy<Value = (u64, u16, u16, Vec<u8>)> {
    (
        prop_oneof![Just(64u64), 0..200u64, any::<u64>()],
        prop_oneof![Just(56u16), any::<u16>()],
        prop_oneof![Just(1u16), 0..4u16, any::<u16>()],
        prop_oneof![Just(120u64), 0..400u64, any::<u64>()],
        prop_oneof![0..200u64, any::<u64>()],
        prop::collection::vec(
            (
                prop_oneof![Just(4u32), 0..16u32, any::<u32>()],
                prop_oneof![Just(4u32), Just(8), 0..16u32, any::<u32>()],
                prop_oneof![Just(18u32), any::<u32>()],
                cheap_bytes(0..16),
            ),
            0..4,
        ),
    )
        .prop_map(|(phoff, phentsize, phnum, note_off, note_size, notes)| {
            let mut ph = vec![0u8; 56];
            ph[0..4].copy_from_slice(&4u32.to_le_bytes());
            ph[8..16].copy_from_slice(&note_off.to_le_bytes());
            ph[32..40].copy_from_slice(&note_size.to_le_bytes());
            let mut rest = ph;
            for (namesz, descsz, ntype, body) in notes {
                rest.extend_from_slice(&namesz.to_le_bytes());
                rest.extend_from_slice(&descsz.to_le_bytes());
                rest.extend_from_slice(&ntype.to_le_bytes());
                rest.extend_from_slice(b"Xen\0");
                rest.extend_from_slice(&body);
            }
            (phoff, phentsize, phnum, rest)
        })
}

proptest! {
    #![proptest_config(config())]

    /// A kernel or root filesystem handed to `image import`: ELF program
    /// headers and note records with arbitrary offsets and sizes, and
    /// arbitrary superblocks, are read without panicking or reading outside
    /// the file.
    #[test]
    fn imported_kernels_and_rootfs_never_panic(
        (phoff, phentsize, phnum, rest) in elf_body(),
        junk in cheap_bytes(0..2048),
        elf in any::<bool>(),
    ) {
        let dir = scratch();
        let path = dir.path().join("vmlinux");
        let bytes = if elf { elf_with(phoff, phentsize, phnum, &rest) } else { junk.clone() };
        std::fs::write(&path, &bytes).unwrap();
        let _ = banger_image::validate::vmlinux(&path);
        let path = dir.path().join("rootfs.ext4");
        std::fs::write(&path, &junk).unwrap();
        match banger_image::validate::rootfs(&path) {
            Ok(info) => {
                prop_assert_eq!(&junk[1024 + 0x38..1024 + 0x3a], &[0x53, 0xef][..]);
                prop_assert_eq!(info.uuid.len(), 36);
            }
            Err(e) => prop_assert!(!e.to_string().is_empty()),
        }
    }
}

// ---------------------------------------------------------------------------
// One test per attack, through the store: refused, named, nothing installed.

/// Install `entries` as kernel `k` into a fresh store; returns the error
/// text after checking that nothing was installed or left staged and
/// nothing was written outside.
fn refused_by_store(what: &str, entries: &[Raw]) -> String {
    let sandbox = scratch();
    let file = sandbox.path().join("k.bundle");
    std::fs::write(&file, bundle_bytes(entries)).unwrap();
    let store = Store::new(sandbox.path().join("state"));
    let origin = Origin::File {
        path: file.display().to_string(),
        bundle_sha256: String::new(),
    };
    let err = match store.install_file(&file, Kind::Kernel, "k", origin, &|_| {}) {
        Ok(_) => panic!("{what}: accepted"),
        Err(e) => e.to_string(),
    };
    assert_eq!(
        leftovers(&store.kind_dir(Kind::Kernel)),
        Vec::<String>::new(),
        "{what}: left something in the store"
    );
    assert!(store.get(Kind::Kernel, "k").unwrap().is_none(), "{what}");
    nothing_escaped(sandbox.path()).unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        !Path::new("/etc/banger-hostile").exists(),
        "{what}: wrote /etc"
    );
    err
}

fn with(extra: Vec<Raw>) -> Vec<Raw> {
    let mut e = honest_kernel().clone();
    e.extend(extra);
    e
}

#[test]
fn the_honest_kernel_installs_through_the_store() {
    let sandbox = scratch();
    let file = sandbox.path().join("k.bundle");
    std::fs::write(&file, bundle_bytes(honest_kernel())).unwrap();
    let store = Store::new(sandbox.path().join("state"));
    let origin = Origin::File {
        path: file.display().to_string(),
        bundle_sha256: String::new(),
    };
    let installed = store
        .install_file(&file, Kind::Kernel, "k", origin, &|_| {})
        .unwrap();
    assert_eq!(
        std::fs::read(installed.dir.join("modules/r/a.ko")).unwrap(),
        b"module"
    );
}

#[test]
fn path_traversal_is_refused() {
    for name in [
        "../escaped",
        "../../escaped",
        "modules/../../escaped",
        "modules/r/../../../escaped",
        "modules/r/..",
    ] {
        let err = refused_by_store(name, &with(vec![raw(name, b'0', b"x")]));
        assert!(err.contains("contains . or .. components"), "{name}: {err}");
    }
    // The same through a GNU long name and a pax path record, which replace
    // the header's name field.
    let long = Raw {
        name: b"././@LongLink".to_vec(),
        ..raw("", b'L', b"modules/../../escaped\0")
    };
    let err = refused_by_store(
        "GNU long name",
        &with(vec![long, raw("modules/r/ok", b'0', b"x")]),
    );
    assert!(err.contains(". or .."), "{err}");
    let pax = raw("pax", b'x', b"30 path=modules/../../escaped\n");
    let err = refused_by_store(
        "pax path",
        &with(vec![pax, raw("modules/r/ok", b'0', b"x")]),
    );
    assert!(err.contains(". or .."), "{err}");
}

#[test]
fn absolute_paths_are_refused() {
    for name in [ESCAPE_ABS, "/etc/banger-hostile", "/modules/r/a.ko"] {
        let err = refused_by_store(name, &with(vec![raw(name, b'0', b"x")]));
        assert!(err.contains("absolute path"), "{name}: {err}");
    }
}

#[test]
fn symlinks_out_of_the_tree_are_refused() {
    // The link, then a file written through it: the link is refused first.
    for target in ["/etc", "../../..", "/dev/shm"] {
        let err = refused_by_store(
            target,
            &with(vec![
                link("modules/r/l", b'2', target),
                raw("modules/r/l/banger-hostile", b'0', b"x"),
            ]),
        );
        assert!(err.contains("unsupported type Symlink"), "{target}: {err}");
    }
    // A top-level artifact as a symlink.
    let mut e = honest_kernel().clone();
    e[1] = link("vmlinux", b'2', "/etc/shadow");
    let err = refused_by_store("vmlinux symlink", &e);
    assert!(err.contains("unsupported type Symlink"), "{err}");
}

#[test]
fn hard_links_are_refused() {
    for target in ["/etc/shadow", "../../escaped", "vmlinux", "modules/r/a.ko"] {
        let err = refused_by_store(target, &with(vec![link("modules/r/h", b'1', target)]));
        assert!(err.contains("unsupported type Link"), "{target}: {err}");
    }
    let mut e = honest_kernel().clone();
    e[1] = link("vmlinux", b'1', "/etc/shadow");
    let err = refused_by_store("vmlinux hard link", &e);
    assert!(err.contains("unsupported type Link"), "{err}");
}

#[test]
fn device_nodes_fifos_and_other_types_are_refused() {
    for (kind, name) in [
        (b'3', "Char"),
        (b'4', "Block"),
        (b'6', "Fifo"),
        (b'7', "Continuous"),
        // The tar reader itself refuses a sparse entry without a GNU header.
        (b'S', "sparse"),
        (b'V', "unsupported type byte 'V'"),
    ] {
        let err = refused_by_store(name, &with(vec![raw("modules/r/dev", kind, b"")]));
        assert!(err.contains(name), "{name}: {err}");
        if kind == b'S' {
            continue;
        }
        let mut e = honest_kernel().clone();
        e[1].kind = kind;
        let err = refused_by_store(name, &e);
        assert!(err.contains("vmlinux"), "{name}: {err}");
    }
}

#[test]
fn oversize_entries_are_refused_before_they_are_written() {
    // A file artifact longer than the manifest says.
    let mut e = honest_kernel().clone();
    e[1].data = vec![b'A'; 1 << 20];
    let err = refused_by_store("oversize vmlinux", &e);
    assert!(err.contains("too long"), "{err}");
    // A tree file longer than the whole tree: refused while streaming, not
    // after writing it all and comparing digests.
    let mut e = honest_kernel().clone();
    e[4].data = vec![b'B'; 1 << 20];
    let err = refused_by_store("oversize tree file", &e);
    assert!(err.contains("too long"), "{err}");
    // Many small tree files that together exceed the tree's size.
    let err = refused_by_store(
        "tree total",
        &with(vec![
            raw("modules/r/b.ko", b'0', b"module"),
            raw("modules/r/c.ko", b'0', b"module"),
        ]),
    );
    assert!(err.contains("too long"), "{err}");
    // A manifest beyond its cap.
    let mut e = honest_kernel().clone();
    e[0].data = vec![b' '; MAX_MANIFEST_BYTES as usize + 1];
    let err = refused_by_store("oversize manifest", &e);
    assert!(err.contains("manifest"), "{err}");
}

#[test]
fn a_flood_of_empty_entries_is_capped() {
    let mut e = honest_kernel().clone();
    e.extend((0..MAX_ENTRIES).map(|i| raw(&format!("modules/r/{i}/"), b'5', b"")));
    let err = refused_by_store("entry flood", &e);
    assert!(err.contains(&format!("{MAX_ENTRIES} entries")), "{err}");
}

#[test]
fn bundle_errors_name_the_entry() {
    // The unpacker's own error (not only the store's wrapper) names the path.
    let sandbox = scratch();
    let entries = with(vec![raw("modules/../../escaped", b'0', b"x")]);
    let err = bundle::unpack(
        &bundle_bytes(&entries)[..],
        sandbox.path(),
        &Expect {
            kind: Kind::Kernel,
            name: Some("k".into()),
        },
    )
    .unwrap_err();
    assert!(
        matches!(&err, BundleError::UnsafePath { path, .. } if path == "modules/../../escaped"),
        "{err}"
    );
}
