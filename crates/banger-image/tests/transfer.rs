//! `image export` / `image import` at the library level: a round trip
//! between two stores gives byte-identical catalog-format bundles; every
//! kind of tampering (bundle bytes, index, entry order, extra entries, a
//! store file changed after install) is refused with nothing installed; a
//! URL import survives a connection that keeps breaking.

mod common;

use std::path::Path;
use std::sync::Arc;

use banger_image::bundle::{self, Packed};
use banger_image::store::{Origin, Store};
use banger_image::transfer::{self, Source, TransferError, INDEX_FILE};
use banger_image::{Kind, Progress};
use common::*;

fn admit_all(_: Kind, _: &str) -> Result<(), String> {
    Ok(())
}

fn quiet(_: Progress) {}

/// Packs test-kernel and image `img` and installs both into a store at
/// `dir/state`; returns the store and the two packed bundles.
fn machine_a(dir: &Path) -> (Store, Packed, Packed) {
    let k = bundle::pack(
        &kernel_src(&dir.join("ksrc")),
        &kernel_meta("test-kernel"),
        &dir.join("k.tar.zst"),
    )
    .unwrap();
    let i = bundle::pack(
        &image_src(&dir.join("isrc"), 8 << 20),
        &image_meta("img"),
        &dir.join("i.tar.zst"),
    )
    .unwrap();
    let store = Store::new(dir.join("state"));
    for (p, kind, name) in [(&k, Kind::Kernel, "test-kernel"), (&i, Kind::Image, "img")] {
        store
            .install_file(
                &p.path,
                kind,
                name,
                Origin::File {
                    path: p.path.display().to_string(),
                    bundle_sha256: p.sha256.clone(),
                },
                &quiet,
            )
            .unwrap();
    }
    (store, k, i)
}

fn export_bytes(store: &Store, scratch: &Path) -> Vec<u8> {
    let plan = transfer::plan_export(store, "img", scratch, &quiet).unwrap();
    let mut out = Vec::new();
    let written = plan.write(&mut out).unwrap();
    assert_eq!(written.size, out.len() as u64);
    assert_eq!(plan.archive_size(), out.len() as u64, "announced size");
    out
}

fn import_bytes(
    store: &Store,
    bytes: &[u8],
) -> Result<Vec<transfer::ImportedBundle>, TransferError> {
    transfer::import(
        bytes,
        store,
        &Source::File("x.banger".into()),
        &admit_all,
        &quiet,
    )
}

fn assert_empty(store: &Store) {
    for kind in [Kind::Image, Kind::Kernel] {
        let left = leftovers(&store.kind_dir(kind));
        assert!(left.is_empty(), "{kind}: {left:?}");
    }
}

/// The archive's entries: (name, bytes).
fn entries(archive: &[u8]) -> Vec<(String, Vec<u8>)> {
    use std::io::Read;
    let mut a = tar::Archive::new(archive);
    a.entries()
        .unwrap()
        .map(|e| {
            let mut e = e.unwrap();
            let name = e.path().unwrap().display().to_string();
            let mut data = Vec::new();
            e.read_to_end(&mut data).unwrap();
            (name, data)
        })
        .collect()
}

fn rebuild(parts: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in parts {
        let mut h = tar::Header::new_ustar();
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        b.append_data(&mut h, name, &data[..]).unwrap();
    }
    b.into_inner().unwrap()
}

#[test]
fn export_then_import_on_another_store_gives_the_same_bundles() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, k, i) = machine_a(tmp.path());
    let archive = export_bytes(&a, &tmp.path().join("scratch"));

    let parts = entries(&archive);
    let names: Vec<&str> = parts.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            INDEX_FILE,
            "kernel-test-kernel.tar.zst",
            "image-img.tar.zst"
        ]
    );
    // Catalog format, byte for byte: the bundles installed on A came back.
    assert_eq!(parts[1].1, std::fs::read(&k.path).unwrap());
    assert_eq!(parts[2].1, std::fs::read(&i.path).unwrap());
    let index: transfer::Index = serde_json::from_slice(&parts[0].1).unwrap();
    assert_eq!(index.bundles[0].sha256, k.sha256);
    assert_eq!(index.bundles[1].size, i.size);
    // The scratch packing is gone with the plan.
    assert!(leftovers(&tmp.path().join("scratch")).is_empty());

    let b = Store::new(tmp.path().join("b"));
    let got = import_bytes(&b, &archive).unwrap();
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].installed.manifest, k.manifest, "kernel first");
    assert_eq!(got[1].installed.manifest, i.manifest);
    assert!(got.iter().all(|g| g.changed));
    let img = b.get(Kind::Image, "img").unwrap().unwrap();
    assert_eq!(
        std::fs::read(img.rootfs().unwrap()).unwrap(),
        std::fs::read(
            a.get(Kind::Image, "img")
                .unwrap()
                .unwrap()
                .rootfs()
                .unwrap()
        )
        .unwrap()
    );
    match &img.origin.as_ref().unwrap().origin {
        Origin::File {
            path,
            bundle_sha256,
        } => assert_eq!((path.as_str(), bundle_sha256), ("x.banger", &i.sha256)),
        o => panic!("origin {o:?}"),
    }
    assert!(b
        .get(Kind::Kernel, "test-kernel")
        .unwrap()
        .unwrap()
        .modules_disk()
        .is_some());

    // The same archive again changes nothing.
    let again = import_bytes(&b, &archive).unwrap();
    assert!(again.iter().all(|g| !g.changed), "{again:?}");
}

#[test]
fn a_single_catalog_bundle_imports_when_its_kernel_is_there() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, k, i) = machine_a(tmp.path());
    let b = Store::new(tmp.path().join("b"));
    let image = std::fs::read(&i.path).unwrap();
    let err = import_bytes(&b, &image).unwrap_err();
    assert!(
        matches!(&err, TransferError::NeedsKernel { kernel, .. } if kernel == "test-kernel"),
        "{err}"
    );
    assert!(
        err.to_string().contains("banger kernel pull test-kernel"),
        "{err}"
    );
    assert_empty(&b);

    import_bytes(&b, &std::fs::read(&k.path).unwrap()).unwrap();
    let got = import_bytes(&b, &image).unwrap();
    assert_eq!(got[0].installed.manifest, i.manifest);
    assert_eq!(got[0].bundle_sha256, i.sha256);
}

#[test]
fn tampered_archives_are_refused_and_leave_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, _, _) = machine_a(tmp.path());
    let archive = export_bytes(&a, &tmp.path().join("scratch"));
    let parts = entries(&archive);
    let b = Store::new(tmp.path().join("b"));

    // One flipped byte inside the image bundle.
    let mut flipped = parts.clone();
    let mid = flipped[2].1.len() / 2;
    flipped[2].1[mid] ^= 0x40;
    let err = import_bytes(&b, &rebuild(&flipped)).unwrap_err();
    assert!(matches!(err, TransferError::Checksum { .. }), "{err}");
    assert!(err.to_string().contains("image-img.tar.zst"), "{err}");
    assert_empty(&b);

    // An index whose digest was updated to match a bundle that lies about
    // its contents: the bundle's own manifest check still refuses it.
    let mut forged = flipped.clone();
    let mut index: transfer::Index = serde_json::from_slice(&forged[0].1).unwrap();
    index.bundles[1].sha256 = banger_image::digest::sha256_bytes(&forged[2].1);
    forged[0].1 = serde_json::to_vec(&index).unwrap();
    let err = import_bytes(&b, &rebuild(&forged)).unwrap_err();
    assert!(matches!(err, TransferError::Bundle { .. }), "{err}");
    assert_empty(&b);

    // Entries out of order, an extra entry, a missing entry, no index.
    let swapped = vec![parts[0].clone(), parts[2].clone(), parts[1].clone()];
    let err = import_bytes(&b, &rebuild(&swapped)).unwrap_err();
    assert!(
        matches!(err, TransferError::UnexpectedEntry { .. }),
        "{err}"
    );
    let mut extra = parts.clone();
    extra.push(("evil.sh".into(), b"rm -rf /".to_vec()));
    let err = import_bytes(&b, &rebuild(&extra)).unwrap_err();
    assert!(err.to_string().contains("evil.sh"), "{err}");
    let err = import_bytes(&b, &rebuild(&parts[..2])).unwrap_err();
    assert!(err.to_string().contains("end of the archive"), "{err}");
    let err = import_bytes(&b, &rebuild(&parts[1..])).unwrap_err();
    assert!(err.to_string().contains(INDEX_FILE), "{err}");
    // A truncated archive.
    let err = import_bytes(&b, &archive[..archive.len() / 2]).unwrap_err();
    assert!(!err.to_string().is_empty());
    // Not an archive at all.
    let err = import_bytes(&b, b"hello, world").unwrap_err();
    assert!(matches!(err, TransferError::NotAnArchive { .. }), "{err}");
    assert_empty(&b);
}

#[test]
fn an_admission_refusal_installs_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, _, _) = machine_a(tmp.path());
    let archive = export_bytes(&a, &tmp.path().join("scratch"));
    let b = Store::new(tmp.path().join("b"));
    let refuse_img = |kind: Kind, name: &str| {
        if kind == Kind::Image && name == "img" {
            Err("registered from host files".to_owned())
        } else {
            Ok(())
        }
    };
    let err = transfer::import(
        &archive[..],
        &b,
        &Source::File("x".into()),
        &refuse_img,
        &quiet,
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("registered from host files"),
        "{err}"
    );
    assert_empty(&b);
}

#[test]
fn export_refuses_a_store_file_changed_since_install() {
    use std::os::unix::fs::FileExt;
    let tmp = tempfile::tempdir().unwrap();
    let (a, _, _) = machine_a(tmp.path());
    let rootfs = a
        .get(Kind::Image, "img")
        .unwrap()
        .unwrap()
        .rootfs()
        .unwrap();
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&rootfs)
        .unwrap();
    f.write_all_at(b"tampered", 4096).unwrap();
    let err = transfer::plan_export(&a, "img", &tmp.path().join("scratch"), &quiet).unwrap_err();
    assert!(matches!(err, TransferError::Damaged { .. }), "{err}");
    assert!(err.to_string().contains("rootfs.ext4"), "{err}");
    assert!(leftovers(&tmp.path().join("scratch")).is_empty());

    let err = transfer::plan_export(&a, "nope", &tmp.path().join("scratch"), &quiet).unwrap_err();
    assert!(matches!(err, TransferError::NotInstalled { .. }), "{err}");
}

#[tokio::test]
async fn url_import_resumes_through_a_connection_that_keeps_breaking() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, _, i) = machine_a(tmp.path());
    let archive = export_bytes(&a, &tmp.path().join("scratch"));
    let server = TestServer::start();
    // Each response carries at most 40% of the archive: three connections.
    let piece = archive.len() * 2 / 5;
    server.route("/x.banger", Behavior::Flaky(archive.clone(), piece));
    let b = Store::new(tmp.path().join("b"));
    let url = format!("{}/x.banger", server.base_url);
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let s2 = seen.clone();
    let got = transfer::import_url(
        &url,
        &b,
        Arc::new(admit_all),
        Arc::new(move |p: Progress| s2.lock().unwrap().push(p)),
    )
    .await
    .unwrap();
    assert_eq!(server.hits("/x.banger"), 3, "two resumes");
    assert_eq!(got[1].installed.manifest, i.manifest);
    match &got[1].installed.origin.as_ref().unwrap().origin {
        Origin::Catalog { url: u, .. } => assert_eq!(u, &url),
        o => panic!("origin {o:?}"),
    }
    let last = seen
        .lock()
        .unwrap()
        .iter()
        .rev()
        .find(|p| p.phase.as_str() == "download")
        .cloned()
        .unwrap();
    assert_eq!(last.current, Some(archive.len() as u64));

    // A server that cannot resume: the download fails, naming the bytes.
    let c = Store::new(tmp.path().join("c"));
    server.route("/cut.banger", Behavior::Truncate(archive.clone(), piece));
    let err = transfer::import_url(
        &format!("{}/cut.banger", server.base_url),
        &c,
        Arc::new(admit_all),
        Arc::new(quiet),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, TransferError::Download { .. }), "{err}");
    assert!(err.to_string().contains("did not resume"), "{err}");
    assert_empty(&c);

    server.route("/gone", Behavior::Status(404));
    let err = transfer::import_url(
        &format!("{}/gone", server.base_url),
        &c,
        Arc::new(admit_all),
        Arc::new(quiet),
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("HTTP 404"), "{err}");
}
