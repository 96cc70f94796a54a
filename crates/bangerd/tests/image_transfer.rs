//! `banger image export` on one machine and `banger image import` on
//! another, through the real CLI and two daemons with separate state (each
//! in its own network namespace): the exported file holds the image and its
//! kernel as catalog-format bundles, the second machine installs both from
//! the file and from an http:// URL, boots a VM from the imported image,
//! and refuses a corrupted copy with nothing installed.

mod common;
mod vm_harness;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use vm_harness::{boot_tests, config, privileged, text, TestImage, World};

/// The test store's image and kernel exactly as installed (not the prepared
/// copy the other VM tests boot, which is modified and so no longer matches
/// its manifest: export would rightly refuse it).
fn pristine_image() -> TestImage {
    let store = PathBuf::from(
        std::env::var_os("BANGER_TEST_STORE").expect("BANGER_TEST_STORE names the test store"),
    );
    let name = std::env::var("BANGER_TEST_IMAGE")
        .unwrap_or_else(|_| vm_harness::DEFAULT_TEST_IMAGE.into());
    let image_dir = store.join("images").join(&name);
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(image_dir.join("manifest.json")).unwrap()).unwrap();
    let kernel = manifest["kernel_ref"].as_str().unwrap().to_owned();
    TestImage {
        kernel_dir: store.join("kernels").join(&kernel),
        name,
        image_dir,
        kernel,
    }
}

fn sha256(path: &Path) -> String {
    banger_image::digest::sha256_file(path).unwrap().1
}

/// A python http.server on 127.0.0.1 inside `world`'s namespace serving `dir`.
struct HttpServer(std::process::Child);

impl HttpServer {
    fn start(world: &World, dir: &Path, port: u16) -> HttpServer {
        let child = world
            .command("python3")
            .args(["-m", "http.server", "--bind", "127.0.0.1"])
            .arg(port.to_string())
            .arg("--directory")
            .arg(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 -m http.server");
        let deadline = std::time::Instant::now() + common::PROCESS_TIMEOUT;
        loop {
            let probe = world
                .command("python3")
                .args([
                    "-c",
                    &format!("import socket; socket.create_connection(('127.0.0.1', {port}), 1)"),
                ])
                .stderr(Stdio::null())
                .status()
                .unwrap();
            if probe.success() {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "http.server did not start"
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        HttpServer(child)
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_exported_image_imports_and_boots_on_another_machine() {
    if !privileged("image_transfer") || !boot_tests("image_transfer") {
        return;
    }
    let image = pristine_image();
    let name = image.name.clone();
    let kernel = image.kernel.clone();
    let a = World::new(&config(&name), Some(image.clone())).await;
    let out_dir = tempfile::tempdir().unwrap();
    let file = out_dir.path().join("img.banger.tar");
    let file_arg = file.to_str().unwrap();

    // Export on A.
    let out = a.banger(&["image", "export", &name, "-o", file_arg]);
    assert!(out.status.success(), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("kernel {kernel} + image {name}")),
        "{err}"
    );
    // Refuses to overwrite without --force.
    let out = a.banger(&["image", "export", &name, "-o", file_arg]);
    assert!(!out.status.success());
    assert!(text(&out).contains("--force"), "{}", text(&out));
    // A name that is not installed.
    let nope = out_dir.path().join("nope.tar");
    let out = a.banger(&["image", "export", "nope", "-o", nope.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(text(&out).contains("nope"), "{}", text(&out));
    assert!(!nope.exists(), "a failed export left {}", nope.display());
    let left: Vec<_> = std::fs::read_dir(out_dir.path()).unwrap().collect();
    assert_eq!(left.len(), 1, "only the first export's file: {left:?}");

    // The file holds the two catalog-format bundles behind the index, with
    // the sha256 the installed origin records for each.
    let listing = Command::new("tar").arg("-tf").arg(&file).output().unwrap();
    let names = String::from_utf8_lossy(&listing.stdout).into_owned();
    assert_eq!(
        names.lines().collect::<Vec<_>>(),
        [
            "banger-export.json".to_owned(),
            format!("kernel-{kernel}.tar.zst"),
            format!("image-{name}.tar.zst")
        ],
    );
    let unpacked = tempfile::tempdir().unwrap();
    let st = Command::new("tar")
        .arg("-xf")
        .arg(&file)
        .arg("-C")
        .arg(unpacked.path())
        .status()
        .unwrap();
    assert!(st.success());
    let origin: serde_json::Value =
        serde_json::from_slice(&std::fs::read(image.image_dir.join("origin.json")).unwrap())
            .unwrap();
    assert_eq!(
        sha256(&unpacked.path().join(format!("image-{name}.tar.zst"))),
        origin["origin"]["bundle_sha256"].as_str().unwrap(),
        "the exported image bundle is the one that was installed, byte for byte"
    );

    // Import on B, a machine with an empty store.
    let b = World::new(&config(&name), None).await;
    let out = b.banger(&["image", "import", file_arg]);
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(stdout.contains(&format!("kernel {kernel}")), "{stdout}");
    assert!(stdout.contains(&format!("image {name}")), "{stdout}");
    let shown = b.banger_ok(&["image", "show", &name, "--json"]);
    let info: serde_json::Value = serde_json::from_str(&shown).unwrap();
    assert_eq!(info["kernel"], kernel.as_str(), "{shown}");
    // Again: nothing changes.
    let again = b.banger_ok(&["image", "import", file_arg]);
    assert!(again.contains("already installed, identical"), "{again}");

    // The imported image boots.
    let out = b.banger(&["vm", "run", "--rm", "--", "cat", "/etc/os-release"]);
    assert!(
        out.status.success(),
        "{}\nlog:\n{}",
        text(&out),
        b.log_tail()
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("bookworm"),
        "{}",
        text(&out)
    );

    // A corrupted copy is refused on a third store, which stays empty.
    let c = World::new(&config(&name), None).await;
    let bad = out_dir.path().join("bad.banger.tar");
    let mut bytes = std::fs::read(&file).unwrap();
    let at = bytes.len() - 100_000;
    bytes[at] ^= 0xff;
    std::fs::write(&bad, &bytes).unwrap();
    let out = c.banger(&["image", "import", bad.to_str().unwrap()]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("sha256"), "{}", text(&out));
    let list = c.banger_ok(&["image", "list", "--json"]);
    assert!(!list.contains(&name), "{list}");

    // The same file over http:// installs on C.
    let _server = HttpServer::start(&c, out_dir.path(), 18_731);
    let out = c.banger(&["image", "import", "http://127.0.0.1:18731/img.banger.tar"]);
    assert!(out.status.success(), "{}\n{}", text(&out), c.log_tail());
    let shown = c.banger_ok(&["image", "show", &name, "--json"]);
    assert!(
        shown.contains("http://127.0.0.1:18731/img.banger.tar"),
        "{shown}"
    );
}
