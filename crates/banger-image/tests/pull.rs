//! Pulls against a real HTTP server on 127.0.0.1 started by each test:
//! success, wrong checksum, truncated body, 404, server gone mid-transfer,
//! unreachable catalog, concurrent pulls. After every failure the store
//! holds nothing but its lock directory.

mod common;

use std::path::Path;
use std::sync::Mutex;

use banger_image::bundle::{self, Packed};
use banger_image::catalog::Entry;
use banger_image::pull::{self, PullError};
use banger_image::store::{Origin, Store};
use banger_image::{Kind, Progress};
use common::*;

/// A kernel bundle of about 1.5 MB (incompressible), packed once per test.
fn kernel_bundle(dir: &Path, name: &str) -> (Packed, Vec<u8>) {
    let src = kernel_src(&dir.join("src"));
    std::fs::write(src.join("vmlinux"), noise(1_500_000, 9)).unwrap();
    let p = bundle::pack(
        &src,
        &kernel_meta(name),
        &dir.join(format!("{name}.tar.zst")),
    )
    .unwrap();
    let bytes = std::fs::read(&p.path).unwrap();
    (p, bytes)
}

fn entry_for(p: &Packed, url: &str) -> Entry {
    Entry {
        kind: p.manifest.kind,
        name: p.manifest.name.clone(),
        version: p.manifest.version.clone(),
        url: url.into(),
        size: p.size,
        sha256: p.sha256.clone(),
        kernel_ref: p.manifest.kernel_ref.clone(),
    }
}

fn store_clean(store: &Store) {
    for kind in [Kind::Image, Kind::Kernel] {
        let left = leftovers(&store.kind_dir(kind));
        assert!(
            left.is_empty(),
            "leftovers in {}: {left:?}",
            store.kind_dir(kind).display()
        );
    }
}

#[tokio::test]
async fn pull_installs_verified_bundle_and_second_pull_is_a_no_op() {
    let tmp = tempfile::tempdir().unwrap();
    let (p, bytes) = kernel_bundle(tmp.path(), "k");
    let server = TestServer::start();
    server.route("/b/k.tar.zst", Behavior::Full(bytes));
    let store = Store::new(tmp.path().join("state"));
    let entry = entry_for(&p, "k.tar.zst");
    let seen: Mutex<Vec<Progress>> = Mutex::new(Vec::new());
    let record = |pr: Progress| seen.lock().unwrap().push(pr);

    let base = format!("{}/b/", server.base_url);
    let pulled = pull::pull(&entry, &base, &store, &record).await.unwrap();
    assert!(pulled.downloaded);
    let inst = &pulled.installed;
    assert_eq!(inst.manifest, p.manifest);
    assert_eq!(inst.dir, store.dir(Kind::Kernel, "k").unwrap());
    assert_eq!(
        std::fs::read(inst.vmlinux().unwrap()).unwrap(),
        noise(1_500_000, 9)
    );
    assert!(inst.modules_dir().unwrap().join("modules.dep").is_file());
    let disk = inst.modules_disk().expect("modules disk made at install");
    banger_image::validate::rootfs(&disk).unwrap();
    let listing = banger_image::build::debugfs(&disk, "ls -l /6.12.0-test").unwrap();
    assert!(listing.contains("modules.dep"), "{listing}");
    match &inst.origin.as_ref().unwrap().origin {
        Origin::Catalog { url, bundle_sha256 } => {
            assert_eq!(url, &format!("{}/b/k.tar.zst", server.base_url));
            assert_eq!(bundle_sha256, &p.sha256);
        }
        other => panic!("origin {other:?}"),
    }
    let progress = seen.lock().unwrap().clone();
    let last_download = progress
        .iter()
        .rev()
        .find(|x| x.phase == banger_image::Phase::Download)
        .unwrap();
    assert_eq!(
        (last_download.current, last_download.total),
        (Some(p.size), Some(p.size))
    );

    let again = pull::pull(&entry, &base, &store, &banger_image::progress::ignore)
        .await
        .unwrap();
    assert!(!again.downloaded);
    assert_eq!(server.hits("/b/k.tar.zst"), 1);
    assert_eq!(store.list(Kind::Kernel).unwrap().len(), 1);
    assert_eq!(leftovers(&store.kind_dir(Kind::Kernel)), ["k"]);
}

#[tokio::test]
async fn a_pull_resumes_where_a_dropped_connection_left_off() {
    let tmp = tempfile::tempdir().unwrap();
    let (p, bytes) = kernel_bundle(tmp.path(), "k");
    let server = TestServer::start();
    // Every connection breaks after 600 kB: the ~1.6 MB bundle takes three.
    server.route("/k.tar.zst", Behavior::Flaky(bytes, 600_000));
    let store = Store::new(tmp.path().join("state"));
    let entry = entry_for(&p, "k.tar.zst");
    let pulled = pull::pull(
        &entry,
        &server.base_url,
        &store,
        &banger_image::progress::ignore,
    )
    .await
    .unwrap();
    assert_eq!(pulled.installed.manifest, p.manifest);
    assert_eq!(server.hits("/k.tar.zst"), 3);
}

#[tokio::test]
async fn wrong_checksum_is_reported_with_both_digests_and_leaves_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let (p, bytes) = kernel_bundle(tmp.path(), "k");
    let server = TestServer::start();
    server.route("/k.tar.zst", Behavior::Full(bytes));
    let store = Store::new(tmp.path().join("state"));
    let mut entry = entry_for(&p, "k.tar.zst");
    entry.sha256 = "0".repeat(64);
    let err = pull::pull(
        &entry,
        &server.base_url,
        &store,
        &banger_image::progress::ignore,
    )
    .await
    .unwrap_err();
    assert!(matches!(err, PullError::Checksum { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains(&"0".repeat(64)) && msg.contains(&p.sha256) && msg.contains("/k.tar.zst"),
        "{msg}"
    );
    assert!(store.get(Kind::Kernel, "k").unwrap().is_none());
    store_clean(&store);
}

#[tokio::test]
async fn garbage_with_the_right_size_is_a_checksum_error_not_a_format_error() {
    let tmp = tempfile::tempdir().unwrap();
    let (p, bytes) = kernel_bundle(tmp.path(), "k");
    let server = TestServer::start();
    server.route("/k.tar.zst", Behavior::Full(noise(bytes.len(), 77)));
    let store = Store::new(tmp.path().join("state"));
    let err = pull::pull(
        &entry_for(&p, "k.tar.zst"),
        &server.base_url,
        &store,
        &banger_image::progress::ignore,
    )
    .await
    .unwrap_err();
    assert!(matches!(err, PullError::Checksum { .. }), "{err}");
    store_clean(&store);
}

#[tokio::test]
async fn truncated_body_is_reported_with_byte_counts() {
    let tmp = tempfile::tempdir().unwrap();
    let (p, bytes) = kernel_bundle(tmp.path(), "k");
    let server = TestServer::start();
    let half = bytes.len() / 2;
    server.route("/cl.tar.zst", Behavior::Truncate(bytes.clone(), half));
    server.route("/eof.tar.zst", Behavior::ShortNoLength(bytes, half));
    let store = Store::new(tmp.path().join("state"));

    let err = pull::pull(
        &entry_for(&p, "cl.tar.zst"),
        &server.base_url,
        &store,
        &banger_image::progress::ignore,
    )
    .await
    .unwrap_err();
    assert!(matches!(err, PullError::Interrupted { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains(&format!("of {} bytes", p.size)) && msg.contains("/cl.tar.zst"),
        "{msg}"
    );
    store_clean(&store);

    let err = pull::pull(
        &entry_for(&p, "eof.tar.zst"),
        &server.base_url,
        &store,
        &banger_image::progress::ignore,
    )
    .await
    .unwrap_err();
    match &err {
        PullError::Truncated {
            received, expected, ..
        } => assert_eq!((*received, *expected), (half as u64, p.size)),
        other => panic!("expected Truncated, got {other}"),
    }
    store_clean(&store);
}

#[tokio::test]
async fn not_found_names_the_url_and_the_build_command() {
    let tmp = tempfile::tempdir().unwrap();
    let (p, _) = kernel_bundle(tmp.path(), "k");
    let server = TestServer::start();
    let store = Store::new(tmp.path().join("state"));
    let err = pull::pull(
        &entry_for(&p, "missing.tar.zst"),
        &server.base_url,
        &store,
        &banger_image::progress::ignore,
    )
    .await
    .unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(err, PullError::Status { status: 404, .. }),
        "{msg}"
    );
    assert!(
        msg.contains("/missing.tar.zst") && msg.contains("banger kernel build k"),
        "{msg}"
    );
    store_clean(&store);
}

#[tokio::test]
async fn server_gone_mid_transfer_then_unreachable_suggests_local_build() {
    let tmp = tempfile::tempdir().unwrap();
    let (p, bytes) = kernel_bundle(tmp.path(), "k");
    let server = TestServer::start();
    server.route("/k.tar.zst", Behavior::DieAfter(bytes, 300_000));
    let store = Store::new(tmp.path().join("state"));
    let entry = entry_for(&p, "k.tar.zst");
    let err = pull::pull(
        &entry,
        &server.base_url,
        &store,
        &banger_image::progress::ignore,
    )
    .await
    .unwrap_err();
    assert!(
        matches!(
            err,
            PullError::Interrupted {
                received: 300_000,
                ..
            }
        ),
        "{err}"
    );
    assert!(server.is_stopped());
    store_clean(&store);

    // The server is gone now: the next pull cannot connect.
    let err = pull::pull(
        &entry,
        &server.base_url,
        &store,
        &banger_image::progress::ignore,
    )
    .await
    .unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, PullError::Unreachable { .. }), "{msg}");
    assert!(
        msg.contains("banger kernel build k") && msg.contains(&server.base_url),
        "{msg}"
    );
    store_clean(&store);
}

#[tokio::test]
async fn wrong_announced_length_and_oversized_body_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let (p, bytes) = kernel_bundle(tmp.path(), "k");
    let server = TestServer::start();
    let mut longer = bytes.clone();
    longer.extend_from_slice(b"more");
    server.route("/long.tar.zst", Behavior::Full(longer.clone()));
    server.route(
        "/long-eof.tar.zst",
        Behavior::ShortNoLength(longer.clone(), longer.len()),
    );
    let store = Store::new(tmp.path().join("state"));
    let err = pull::pull(
        &entry_for(&p, "long.tar.zst"),
        &server.base_url,
        &store,
        &banger_image::progress::ignore,
    )
    .await
    .unwrap_err();
    assert!(matches!(err, PullError::SizeAnnounced { .. }), "{err}");
    let err = pull::pull(
        &entry_for(&p, "long-eof.tar.zst"),
        &server.base_url,
        &store,
        &banger_image::progress::ignore,
    )
    .await
    .unwrap_err();
    assert!(matches!(err, PullError::TooLong { .. }), "{err}");
    store_clean(&store);
}

#[tokio::test]
async fn published_bundle_with_bad_content_is_a_bundle_error() {
    // The catalog pins exactly these (broken) bytes: the checksum passes and
    // the unpacker's verdict is what the user sees.
    let tmp = tempfile::tempdir().unwrap();
    let (p, mut bytes) = kernel_bundle(tmp.path(), "k");
    let n = bytes.len();
    bytes[n - 100] ^= 0xff;
    let server = TestServer::start();
    server.route("/k.tar.zst", Behavior::Full(bytes.clone()));
    let mut entry = entry_for(&p, "k.tar.zst");
    entry.sha256 = banger_image::digest::sha256_bytes(&bytes);
    let store = Store::new(tmp.path().join("state"));
    let err = pull::pull(
        &entry,
        &server.base_url,
        &store,
        &banger_image::progress::ignore,
    )
    .await
    .unwrap_err();
    assert!(matches!(err, PullError::Bundle { .. }), "{err}");
    assert!(err.to_string().contains("/k.tar.zst"));
    store_clean(&store);
}

#[tokio::test]
async fn unpublished_entry_says_how_to_build() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::new(tmp.path().join("state"));
    let entry = banger_image::catalog::Catalog::embedded()
        .get(Kind::Image, "debian-bookworm")
        .unwrap()
        .clone();
    let mut e = entry.clone();
    e.sha256.clear();
    let err = pull::pull(
        &e,
        "http://127.0.0.1:9",
        &store,
        &banger_image::progress::ignore,
    )
    .await
    .unwrap_err();
    assert!(
        err.to_string()
            .contains("banger image build debian-bookworm"),
        "{err}"
    );
    store_clean(&store);
}

#[tokio::test]
async fn an_unpublished_kernel_names_the_image_build() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::new(tmp.path().join("state"));
    let catalog = |image_sha: &str| {
        banger_image::catalog::Catalog::parse(&format!(
            "format_version = 1\nbase_url = \"http://127.0.0.1:9\"\n\
             [[kernel]]\nname = \"k\"\nversion = \"1\"\nurl = \"k.tar.zst\"\nsize = 0\nsha256 = \"\"\n\
             [[image]]\nname = \"i\"\nversion = \"1\"\nkernel_ref = \"k\"\nurl = \"i.tar.zst\"\n\
             size = 10\nsha256 = \"{image_sha}\"\n"
        ))
        .unwrap()
    };
    let pull = |c: banger_image::catalog::Catalog| {
        let store = store.clone();
        async move {
            pull::pull_with_deps(
                &c,
                Kind::Image,
                "i",
                "http://127.0.0.1:9",
                &store,
                &banger_image::progress::ignore,
            )
            .await
            .unwrap_err()
            .to_string()
        }
    };
    // The image is published, its kernel is not: building the image builds both.
    let err = pull(catalog(&"a".repeat(64))).await;
    assert_eq!(
        err,
        "kernel k (needed by image i) has no published bundle in this banger's catalog; \
         build locally with `banger image build i`"
    );
    // Neither is: the image is named first.
    let err = pull(catalog("")).await;
    assert_eq!(
        err,
        "image i has no published bundle in this banger's catalog; \
         build locally with `banger image build i`"
    );
    store_clean(&store);
}

#[tokio::test]
async fn concurrent_pulls_download_once() {
    let tmp = tempfile::tempdir().unwrap();
    let (p, bytes) = kernel_bundle(tmp.path(), "k");
    let server = TestServer::start();
    server.route("/k.tar.zst", Behavior::Slow(bytes));
    let store = Store::new(tmp.path().join("state"));
    let entry = entry_for(&p, "k.tar.zst");
    let waited: Mutex<Vec<Progress>> = Mutex::new(Vec::new());
    let on_progress = |pr: Progress| {
        if pr.phase == banger_image::Phase::Wait {
            waited.lock().unwrap().push(pr);
        }
    };
    let (a, b) = tokio::join!(
        pull::pull(&entry, &server.base_url, &store, &on_progress),
        pull::pull(&entry, &server.base_url, &store, &on_progress),
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(server.hits("/k.tar.zst"), 1, "exactly one download");
    assert!(
        a.downloaded != b.downloaded,
        "one downloaded, the other found it installed"
    );
    assert_eq!(a.installed, b.installed);
    assert_eq!(
        waited.lock().unwrap().len(),
        1,
        "the second pull reported that it waited"
    );

    // And from two threads with their own runtimes (as two daemons would).
    let store2 = Store::new(tmp.path().join("state2"));
    std::thread::scope(|s| {
        let hs: Vec<_> = (0..2)
            .map(|_| {
                s.spawn(|| {
                    tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .unwrap()
                        .block_on(pull::pull(
                            &entry,
                            &server.base_url,
                            &store2,
                            &banger_image::progress::ignore,
                        ))
                        .unwrap()
                })
            })
            .collect();
        let results: Vec<_> = hs.into_iter().map(|h| h.join().unwrap()).collect();
        assert_eq!(results.iter().filter(|r| r.downloaded).count(), 1);
    });
    assert_eq!(
        server.hits("/k.tar.zst"),
        2,
        "one more download for the second store"
    );
}

#[tokio::test]
async fn pull_with_deps_installs_kernel_then_image() {
    let tmp = tempfile::tempdir().unwrap();
    let ksrc = kernel_src(&tmp.path().join("ksrc"));
    let kp = bundle::pack(
        &ksrc,
        &kernel_meta("test-kernel"),
        &tmp.path().join("k.tar.zst"),
    )
    .unwrap();
    let isrc = image_src(&tmp.path().join("isrc"), 8 << 20);
    let ip = bundle::pack(&isrc, &image_meta("img"), &tmp.path().join("i.tar.zst")).unwrap();
    let text = format!(
        "format_version = 1\nbase_url = \"http://unused.invalid\"\n\
         [[kernel]]\nname = \"test-kernel\"\nversion = \"1\"\nurl = \"k.tar.zst\"\nsize = {}\nsha256 = \"{}\"\n\
         [[image]]\nname = \"img\"\nversion = \"1\"\nurl = \"i.tar.zst\"\nsize = {}\nsha256 = \"{}\"\nkernel_ref = \"test-kernel\"\n",
        kp.size, kp.sha256, ip.size, ip.sha256
    );
    let catalog = banger_image::catalog::Catalog::parse(&text).unwrap();
    let server = TestServer::start();
    server.route(
        "/k.tar.zst",
        Behavior::Full(std::fs::read(&kp.path).unwrap()),
    );
    server.route(
        "/i.tar.zst",
        Behavior::Full(std::fs::read(&ip.path).unwrap()),
    );
    let store = Store::new(tmp.path().join("state"));
    let pulled = pull::pull_with_deps(
        &catalog,
        Kind::Image,
        "img",
        &server.base_url,
        &store,
        &banger_image::progress::ignore,
    )
    .await
    .unwrap();
    let names: Vec<_> = pulled
        .iter()
        .map(|p| p.installed.manifest.name.clone())
        .collect();
    assert_eq!(names, ["test-kernel", "img"]);
    let img = store.get(Kind::Image, "img").unwrap().unwrap();
    assert_eq!(img.manifest.kernel_ref.as_deref(), Some("test-kernel"));
    assert_eq!(
        std::fs::read(img.rootfs().unwrap()).unwrap(),
        std::fs::read(isrc.join("rootfs.ext4")).unwrap()
    );
}
