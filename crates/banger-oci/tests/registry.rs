//! Pulls from a real registry on loopback: Debian's docker-registry,
//! started per test on a free port with its own storage and config; images
//! are written as OCI layouts by hand and pushed with skopeo.

mod common;

use std::path::Path;

use banger_oci::auth::{credentials_for, Credentials};
use banger_oci::cache::LayerCache;
use banger_oci::flatten::Limits;
use banger_oci::registry::Access;
use banger_oci::{ImportError, ImportOptions, OciRef};
use common::{layer, Registry, E};

fn tools() -> bool {
    common::require("docker-registry", "docker-registry")
        && common::require("skopeo", "skopeo")
        && common::require("htpasswd", "apache2-utils")
        && common::require("debugfs", "e2fsprogs")
}

fn options(reference: &str, cache: &Path, work: &Path, access: Access) -> ImportOptions {
    std::fs::create_dir_all(work).unwrap();
    ImportOptions {
        reference: OciRef::parse(reference).unwrap(),
        access,
        cache: LayerCache::new(cache),
        work_dir: work.to_owned(),
        dest: work.join("rootfs.ext4"),
        size: None,
        platform: Some("linux/amd64".into()),
        limits: Limits::default(),
        agent: None,
        apt_source: None,
    }
}

#[test]
fn pull_flattens_injects_and_reuses_cached_layers() {
    if !tools() {
        return;
    }
    let reg = Registry::start(None);
    let mut base_entries = common::bootable_base();
    base_entries.push(E::File("etc/doomed", 0o644, b"bye"));
    let base = layer(&base_entries);
    let app_a = layer(&[
        E::File("etc/.wh.doomed", 0o644, b""),
        E::File("etc/app", 0o644, b"a"),
    ]);
    let app_b = layer(&[E::File("etc/app", 0o644, b"b")]);
    reg.push(&[&base, &app_a], "team/dev", "a");
    reg.push(&[&base, &app_b], "team/dev", "b");

    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let events = std::sync::Mutex::new(Vec::new());
    let progress = |e| events.lock().unwrap().push(e);
    let opts = options(
        &format!("{}/team/dev:a", reg.addr()),
        &cache,
        &tmp.path().join("a"),
        Access::default(),
    );
    let a = banger_oci::import(&opts, &progress).unwrap();
    assert_eq!((a.layers, a.layers_cached), (2, 0));
    assert!(a.manifest_digest.starts_with("sha256:"));
    assert_eq!(reg.blob_gets(&base.digest), 1);
    assert!(events
        .lock()
        .unwrap()
        .iter()
        .any(|e| matches!(e, banger_oci::progress::Event::LayerDone { .. })));
    let img = &opts.dest;
    let d = |c: &str| common::debugfs(img, c);
    assert_eq!(d("cat /etc/app"), "a");
    assert!(!d("ls /etc").contains("doomed"), "whiteout applied");
    assert!(
        !d("ls /etc/ssh").contains("ssh_host_"),
        "host keys stripped"
    );
    assert!(
        d("ls /etc/systemd/system/multi-user.target.wants").contains("banger-guest-apply.service")
    );
    assert!(d("cat /etc/ssh/sshd_config.d/10-banger.conf")
        .contains("PermitRootLogin prohibit-password"));
    assert_eq!(d("cat /etc/machine-id"), "");

    // Image b shares the base layer: only its own layer is downloaded.
    let opts_b = options(
        &format!("{}/team/dev:b", reg.addr()),
        &cache,
        &tmp.path().join("b"),
        Access::default(),
    );
    let b = banger_oci::import(&opts_b, &banger_oci::progress::ignore).unwrap();
    assert_eq!((b.layers, b.layers_cached), (2, 1));
    assert_eq!(b.downloaded_bytes, app_b.blob.len() as u64);
    assert_eq!(reg.blob_gets(&base.digest), 1, "base layer fetched once");
    assert_eq!(reg.blob_gets(&app_b.digest), 1);
    assert_eq!(common::debugfs(&opts_b.dest, "cat /etc/app"), "b");
    assert!(common::debugfs(&opts_b.dest, "ls /etc").contains("doomed"));

    // A corrupted cache entry is detected, evicted, and a new pull heals it.
    let cached = LayerCache::new(&cache);
    let p = cached
        .get(&banger_oci::cache::Digest::parse(&app_b.digest).unwrap())
        .unwrap();
    let mut bytes = std::fs::read(&p).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&p, bytes).unwrap();
    let err = banger_oci::import(&opts_b, &banger_oci::progress::ignore).unwrap_err();
    assert!(err.to_string().contains("digest mismatch"), "{err}");
    assert!(!p.exists(), "corrupt blob evicted");
    banger_oci::import(&opts_b, &banger_oci::progress::ignore).unwrap();
    assert_eq!(reg.blob_gets(&app_b.digest), 2);
}

#[test]
fn busybox_only_images_are_refused_at_pull() {
    if !tools() {
        return;
    }
    let reg = Registry::start(None);
    let l = layer(&[
        E::Dir("bin", 0o755),
        E::File("bin/busybox", 0o755, b"busybox"),
        E::Hard("bin/sh", "bin/busybox"),
    ]);
    reg.push(&[&l], "tiny/busybox", "1");
    let tmp = tempfile::tempdir().unwrap();
    let opts = options(
        &format!("{}/tiny/busybox:1", reg.addr()),
        &tmp.path().join("cache"),
        &tmp.path().join("w"),
        Access::default(),
    );
    let err = banger_oci::import(&opts, &banger_oci::progress::ignore).unwrap_err();
    assert!(matches!(err, ImportError::Inspect { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("no sshd and no package manager") && msg.contains("tiny/busybox"),
        "{msg}"
    );
    assert!(!opts.dest.exists(), "no rootfs written");
}

#[test]
fn htpasswd_registry_with_docker_config_credentials() {
    if !tools() {
        return;
    }
    let reg = Registry::start(Some(("alice", "correct-horse")));
    let l = layer(&common::bootable_base());
    reg.push(&[&l], "private/img", "v1");
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("config.json");
    let write = |pw: &str| {
        use base64::Engine;
        let enc = base64::engine::general_purpose::STANDARD.encode(format!("alice:{pw}"));
        std::fs::write(
            &config,
            format!(r#"{{"auths":{{"{}":{{"auth":"{enc}"}}}}}}"#, reg.addr()),
        )
        .unwrap();
    };
    let access = |cfg: &Path| Access {
        credentials: Some(credentials_for(cfg, &reg.addr()).unwrap()),
        config_path: Some(cfg.to_owned()),
        insecure: Vec::new(),
    };
    let reference = format!("{}/private/img:v1", reg.addr());

    let anon = options(
        &reference,
        &tmp.path().join("c"),
        &tmp.path().join("w0"),
        Access::default(),
    );
    let err = banger_oci::import(&anon, &banger_oci::progress::ignore)
        .unwrap_err()
        .to_string();
    assert!(err.contains("401") && err.contains("anonymous"), "{err}");

    write("wrong");
    let bad = options(
        &reference,
        &tmp.path().join("c"),
        &tmp.path().join("w1"),
        access(&config),
    );
    let err = banger_oci::import(&bad, &banger_oci::progress::ignore)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("401") && err.contains("\"alice\"") && err.contains(&reg.addr()),
        "{err}"
    );
    assert!(!err.contains("wrong"), "password leaked: {err}");

    write("correct-horse");
    let creds = credentials_for(&config, &reg.addr()).unwrap();
    assert!(matches!(creds, Credentials::Basic { .. }));
    let good = options(
        &reference,
        &tmp.path().join("c"),
        &tmp.path().join("w2"),
        access(&config),
    );
    banger_oci::import(&good, &banger_oci::progress::ignore).unwrap();
    assert!(good.dest.is_file());
}
