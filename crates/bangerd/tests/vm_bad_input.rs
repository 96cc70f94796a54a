//! Bad `vm create` input gets a clear error and creates nothing: an invalid
//! or duplicate name, an unknown image, memory above host RAM, an
//! unparsable disk size. Uses a tiny fake image and `--no-start`: no boot.

mod common;
mod vm_harness;

use std::path::Path;

use banger_image::manifest::{Artifact, ArtifactType};
use banger_image::{Kind, Manifest};
use vm_harness::{privileged, text, TestImage, World};

/// A store entry that `--no-start` can use: a 32 MiB sparse rootfs and a
/// kernel whose files are never booted.
fn fake_image(root: &Path) -> TestImage {
    let manifest = |kind, name: &str, artifacts: Vec<Artifact>| Manifest {
        format_version: 1,
        kind,
        name: name.into(),
        version: "1".into(),
        arch: "x86_64".into(),
        created: 0,
        recipe_hash: None,
        kernel_ref: (kind == Kind::Image).then(|| "tiny-kernel".to_owned()),
        kernel_release: (kind == Kind::Kernel).then(|| "6.12-test".to_owned()),
        artifacts,
    };
    let file = |name: &str, size| Artifact {
        name: name.into(),
        kind: ArtifactType::File,
        size,
        sha256: "0".repeat(64),
    };
    let image_dir = root.join("tiny");
    std::fs::create_dir_all(&image_dir).unwrap();
    std::fs::File::create(image_dir.join("rootfs.ext4"))
        .unwrap()
        .set_len(32 << 20)
        .unwrap();
    let m = manifest(Kind::Image, "tiny", vec![file("rootfs.ext4", 32 << 20)]);
    std::fs::write(image_dir.join("manifest.json"), m.to_json()).unwrap();
    let kernel_dir = root.join("tiny-kernel");
    std::fs::create_dir_all(&kernel_dir).unwrap();
    std::fs::write(kernel_dir.join("vmlinux"), b"not a kernel").unwrap();
    let m = manifest(Kind::Kernel, "tiny-kernel", vec![file("vmlinux", 12)]);
    std::fs::write(kernel_dir.join("manifest.json"), m.to_json()).unwrap();
    TestImage {
        name: "tiny".into(),
        image_dir,
        kernel: "tiny-kernel".into(),
        kernel_dir,
    }
}

fn assert_fails(world: &World, args: &[&str], needles: &[&str]) {
    let out = world.banger(args);
    assert!(
        !out.status.success(),
        "banger {args:?} succeeded: {}",
        text(&out)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    for needle in needles {
        assert!(
            stderr.contains(needle),
            "banger {args:?}: no {needle:?} in {}",
            text(&out)
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_create_input_is_refused_clearly_and_creates_nothing() {
    if !privileged("bad_create_input_is_refused_clearly_and_creates_nothing") {
        return;
    }
    let store = tempfile::tempdir().unwrap();
    let image = fake_image(store.path());
    let world = World::new(&vm_harness::config(&image.name), Some(image)).await;

    assert_fails(
        &world,
        &["vm", "create", "--name", "Bad_Name"],
        &[
            "invalid VM name \"Bad_Name\"",
            "use lowercase",
            "code bad_request",
        ],
    );
    assert_fails(
        &world,
        &["vm", "create", "--name=x-"],
        &["must not start or end with '-'"],
    );
    assert_fails(
        &world,
        &["vm", "create", "--name", "big", "--memory", "4096G"],
        &["memory 4 TiB is above this host's RAM", "code bad_request"],
    );
    assert_fails(
        &world,
        &["vm", "create", "--name", "disk", "--disk-size", "10GB"],
        &["invalid disk size", "ambiguous"],
    );
    assert_fails(
        &world,
        &["vm", "create", "--name", "disk", "--disk-size", "lots"],
        &["invalid disk size: \"lots\""],
    );
    assert_fails(
        &world,
        &["vm", "create", "--name", "img", "--image", "nope", "--no-start"],
        &[
            "image nope is not installed: banger has no catalog entry or recipe of that name (it can build: debian-bookworm, debian-bookworm-minimal)",
            "code not_found",
        ],
    );

    // A defined-but-not-started VM, then the same name again.
    let created = world.banger_ok(&["vm", "create", "--name", "dup", "--no-start"]);
    assert_eq!(created, "dup is created\n");
    assert_fails(
        &world,
        &["vm", "create", "--name", "dup", "--no-start"],
        &["a VM named \"dup\" already exists", "code conflict"],
    );
    assert_fails(
        &world,
        &["vm", "ssh", "dup", "--", "true"],
        &["VM dup is created; start it with `banger vm start dup`"],
    );
    assert_fails(
        &world,
        &["vm", "start", "nope"],
        &["no VM named \"nope\"", "code not_found"],
    );

    // Nothing but dup exists, and dup holds no runtime resources.
    let vms = world.list();
    assert_eq!(vms.len(), 1, "{vms:?}");
    let dup = &vms[0];
    assert_eq!((dup.name.as_str(), dup.state.as_str()), ("dup", "created"));
    assert_eq!((dup.ip.as_deref(), dup.tap.as_deref()), (None, None));
    let dirs: Vec<_> = std::fs::read_dir(world.env.layout.state_dir.join("vms"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(dirs, vec![dup.id.clone()]);
    assert!(world.db().list_leases().unwrap().is_empty());
    assert!(
        !world.known_hosts().exists(),
        "known_hosts written before any boot"
    );
    assert!(!world.ns.links().contains("banger"), "{}", world.ns.links());

    // The API answers malformed bodies and unknown VMs the same way.
    let (code, body) = common::curl(
        &world.env.socket(),
        &[
            "-X",
            "POST",
            "-d",
            r#"{"name":"x","bogus":1}"#,
            "http://x/v1/vms",
        ],
    );
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("\"code\":\"bad_request\""), "{body}");
    let (code, body) = common::curl(&world.env.socket(), &["http://x/v1/vms/nope"]);
    assert_eq!(code, 404, "{body}");
    let (code, body) = common::curl(
        &world.env.socket(),
        &["-X", "DELETE", "http://x/v1/vms/dup?forse=1"],
    );
    assert_eq!(code, 400, "{body}");

    world.banger_ok(&["vm", "delete", "dup"]);
    world.assert_nothing_left("dup", &dup.id, None);
    assert!(world.list().is_empty());
}
