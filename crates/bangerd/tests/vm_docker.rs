//! Docker in the golden image (`debian-bookworm`), end to end: the booted VM
//! is `running` (docker.socket and every other unit fine), the kernel
//! bundle's modules load (nf_tables, overlay, veth, br_netfilter for
//! dockerd), a tiny image made here (static busybox, `docker import`ed: no
//! registry is reachable from a test guest) runs, and a port it publishes
//! with `docker run -p` answers from the host.
//!
//! Needs the golden image installed in `BANGER_TEST_STORE` (scripts/test.sh
//! builds it, cached by recipe hash) and a static busybox on the host
//! (`busybox-static`).

mod common;
mod vm_harness;

use std::io::Write;
use std::process::Stdio;
use std::time::{Duration, Instant};

use vm_harness::{boot_tests, privileged, test_image_named, text, World};

const GOLDEN: &str = "debian-bookworm";

/// A root filesystem tarball holding only a static busybox, `sh` and
/// `httpd` links to it and a page carrying `token`.
fn busybox_rootfs_tar(dir: &std::path::Path, token: &str) -> Vec<u8> {
    let busybox = ["/usr/bin/busybox", "/bin/busybox"]
        .into_iter()
        .map(std::path::Path::new)
        .find(|p| p.is_file())
        .expect("a static busybox on the host (apt-get install busybox-static)");
    let root = dir.join("rootfs");
    std::fs::create_dir_all(root.join("bin")).unwrap();
    std::fs::create_dir_all(root.join("www")).unwrap();
    std::fs::copy(busybox, root.join("bin/busybox")).unwrap();
    for applet in ["sh", "httpd", "cat"] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).unwrap();
    }
    std::fs::write(root.join("www/index.html"), format!("{token}\n")).unwrap();
    let out = std::process::Command::new("tar")
        .arg("-C")
        .arg(&root)
        .args(["--owner=0", "--group=0", "-cf", "-", "."])
        .output()
        .unwrap();
    assert!(out.status.success(), "tar: {out:?}");
    out.stdout
}

/// `docker ARGS` in the VM `dock`, which must succeed; its stdout.
fn docker(world: &World, args: &[&str]) -> String {
    let mut all = vec!["vm", "ssh", "dock", "--", "docker"];
    all.extend_from_slice(args);
    world.banger_ok(&all)
}

#[tokio::test(flavor = "multi_thread")]
async fn golden_image_runs_a_container_with_a_published_port() {
    let test = "golden_image_runs_a_container_with_a_published_port";
    if !privileged(test) || !boot_tests(test) {
        return;
    }
    let image = test_image_named(GOLDEN);
    let world = World::new(&vm_harness::config(&image.name), Some(image)).await;
    let out = world.banger(&["vm", "create", "--name", "dock", "--memory", "1G"]);
    assert!(
        out.status.success(),
        "create failed: {}\nlog:\n{}",
        text(&out),
        world.log_tail()
    );
    let ip = world.show("dock").ip.expect("a running VM has an address");

    // Every unit fine (docker.socket included) and the modules disk in place.
    vm_harness::assert_system_running(&world, "dock");
    // The modules dockerd needs for its NAT chains, bridge, veth pairs and
    // overlay2 storage, loaded from the modules disk.
    for m in ["nf_tables", "overlay", "br_netfilter", "veth"] {
        world.banger_ok(&["vm", "ssh", "dock", "--", "modprobe", m]);
    }

    // The image travels on ssh's stdin: `docker import -` reads it (and the
    // client's first call starts docker.service through docker.socket).
    let tmp = tempfile::tempdir().unwrap();
    let token = format!("banger-docker-{}", std::process::id());
    let tar = busybox_rootfs_tar(tmp.path(), &token);
    let mut import = world
        .command(vm_harness::cli_bin())
        .args(["vm", "ssh", "dock", "--", "docker", "import", "-", "tiny:1"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    import.stdin.take().unwrap().write_all(&tar).unwrap();
    let out = import.wait_with_output().unwrap();
    assert!(out.status.success(), "docker import failed: {}", text(&out));

    let hello = docker(
        &world,
        &["run", "--rm", "tiny:1", "/bin/cat", "/www/index.html"],
    );
    assert_eq!(hello.trim(), token, "the container's own file");

    docker(
        &world,
        &[
            "run",
            "-d",
            "--name",
            "web",
            "-p",
            "8080:80",
            "tiny:1",
            "/bin/httpd",
            "-f",
            "-p",
            "80",
            "-h",
            "/www",
        ],
    );
    // From the host (the test's namespace), through the guest's published
    // port: dockerd's DNAT (nf_tables) into the container's veth.
    let url = format!("http://{ip}:8080/");
    let deadline = Instant::now() + Duration::from_secs(120);
    let body = loop {
        let out = world
            .command("curl")
            .args(["-sS", "--max-time", "10", &url])
            .output()
            .expect("run curl");
        let body = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        if body == token || Instant::now() > deadline {
            break format!("{body}\n{}", text(&out));
        }
        std::thread::sleep(Duration::from_secs(1));
    };
    assert!(
        body.starts_with(&format!("{token}\n")),
        "{url} did not serve the container's page: {body}"
    );

    world.banger_ok(&["vm", "delete", "--force", "dock"]);
}
