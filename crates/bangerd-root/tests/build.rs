//! `build_bundle` through a real helper socket: a real kernel build (root,
//! network to the Debian mirror, minutes), installed into a store owned by
//! an unprivileged owner. Enabled with BANGER_BUILD_TESTS=1 (CI sets it);
//! needs root, skips otherwise unless BANGER_REQUIRE_PRIVILEGED=1.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use banger_wire::helper::{HelperReply, HelperResponse};
use bangerd_root::ops::build::{BuildPaths, BuildRunner};
use bangerd_root::{ServeConfig, Server};

const BIN: &str = env!("CARGO_BIN_EXE_bangerd-root");
/// The owner: `nobody`, so a wrong owner cannot pass by being root.
const OWNER: u32 = 65534;

fn enabled(test: &str) -> bool {
    if std::env::var("BANGER_BUILD_TESTS").as_deref() != Ok("1") {
        eprintln!("skipping {test}: set BANGER_BUILD_TESTS=1 to run image/kernel build tests (root, network, minutes)");
        return false;
    }
    if !nix::unistd::geteuid().is_root() {
        assert!(
            std::env::var("BANGER_REQUIRE_PRIVILEGED").as_deref() != Ok("1"),
            "{test}: BANGER_REQUIRE_PRIVILEGED=1 but not running as root"
        );
        eprintln!("skipping {test}: building needs root");
        return false;
    }
    true
}

/// `bangerd-root request` run as the owner (the client the helper serves).
fn request_as_owner(socket: &Path, json: &str) -> std::process::Child {
    Command::new(BIN)
        .args(["request", "--socket"])
        .arg(socket)
        .arg(json)
        .uid(OWNER)
        .gid(OWNER)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("run bangerd-root request")
}

fn reply(out: Output) -> HelperReply {
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("reply {text:?}: {e}"))
}

/// Every path under `dir` (itself included) not owned by `uid`.
fn not_owned_by(dir: &Path, uid: u32) -> Vec<String> {
    let mut bad = Vec::new();
    let meta = std::fs::symlink_metadata(dir).unwrap();
    if meta.uid() != uid || meta.gid() != uid {
        bad.push(format!("{} {}:{}", dir.display(), meta.uid(), meta.gid()));
    }
    if meta.is_dir() {
        for entry in std::fs::read_dir(dir).unwrap() {
            bad.extend(not_owned_by(&entry.unwrap().path(), uid));
        }
    }
    bad
}

#[tokio::test(flavor = "multi_thread")]
async fn kernel_build_through_the_socket_is_installed_owned_by_the_owner() {
    let test = "kernel_build_through_the_socket_is_installed_owned_by_the_owner";
    if !enabled(test) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let state = tmp.path().join("state");
    std::fs::create_dir(&state).unwrap();
    std::os::unix::fs::chown(&state, Some(OWNER), Some(OWNER)).unwrap();
    let socket = tmp.path().join("run/helper.sock");
    let mut config = ServeConfig::child(
        socket.clone(),
        OWNER,
        "172.16.0.0/24".parse().unwrap(),
        vec![state.clone()],
    );
    config.policy.owner_gid = Some(OWNER);
    config.policy.build = Some(BuildPaths {
        state_dir: state.clone(),
        // A fresh cache: a real build, not a cache hit.
        cache_dir: tmp.path().join("cache"),
        work_dir: None,
        runner: BuildRunner::InProcess,
    });
    let server = Server::bind(&config).unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let served = tokio::spawn(server.run_until(async {
        let _ = stopped.await;
    }));

    let mut build = request_as_owner(
        &socket,
        r#"{"op":"build_bundle","kind":"kernel","name":"generic-6.12"}"#,
    );
    // While the build runs, other connections are served.
    let ping = tokio::task::spawn_blocking({
        let socket = socket.clone();
        move || request_as_owner(&socket, r#"{"op":"ping"}"#).wait_with_output()
    })
    .await
    .unwrap()
    .unwrap();
    assert!(matches!(
        reply(ping),
        Ok(HelperResponse::Pong {
            owner_uid: OWNER,
            ..
        })
    ));
    assert!(
        build.try_wait().unwrap().is_none(),
        "the build was already over when the ping was answered: nothing was proven"
    );
    let out = tokio::task::spawn_blocking(move || {
        let _ = build.stdin.take();
        build.wait_with_output()
    })
    .await
    .unwrap()
    .unwrap();
    let Ok(HelperResponse::Built {
        path,
        version,
        recipe_hash,
        bundle_sha256,
        cached,
    }) = reply(out.clone())
    else {
        panic!("build failed: {}", String::from_utf8_lossy(&out.stdout));
    };
    assert!(!cached);
    assert_eq!(version, "6.12.95-1~bpo12+1");
    assert_eq!((recipe_hash.len(), bundle_sha256.len()), (64, 64));
    let installed = state.join("kernels/generic-6.12");
    assert_eq!(Path::new(&path), installed);
    assert!(installed.join("vmlinux").is_file());
    for dir in [
        installed.as_path(),
        &state.join("kernels"),
        &state.join("locks"),
    ] {
        let bad = not_owned_by(dir, OWNER);
        assert!(bad.is_empty(), "not owned by the owner: {bad:#?}");
    }
    // The daemon, as the owner, can delete what the helper installed.
    let rm = Command::new("rm")
        .arg("-rf")
        .arg(&installed)
        .uid(OWNER)
        .gid(OWNER)
        .status()
        .unwrap();
    assert!(
        rm.success() && !installed.exists(),
        "the owner cannot delete the install"
    );

    let _ = stop.send(());
    served.await.unwrap().unwrap();
}
