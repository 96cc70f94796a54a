//! The helper runs builds in the `bangerd-build` executable, never in its
//! own process: these requests go through a real helper socket and are
//! answered by the builder (or by the helper failing to start it). No root,
//! no network: the builder refuses before it builds anything.

use std::path::Path;

use banger_wire::helper::{HelperErrorCode, HelperReply, HelperResponse};
use bangerd_root::ops::build::{BuildPaths, BuildRunner};
use bangerd_root::{ServeConfig, Server};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

const BUILDER: &str = env!("CARGO_BIN_EXE_bangerd-build");

/// Serve a child-mode helper for the current user whose builds run
/// `builder`, send `json`, return the reply.
async fn ask(tmp: &Path, builder: &Path, json: &str) -> HelperReply {
    let socket = tmp.join("helper.sock");
    let uid = nix::unistd::getuid().as_raw();
    let mut config = ServeConfig::child(
        socket.clone(),
        uid,
        "172.16.0.0/24".parse().unwrap(),
        vec![tmp.to_owned()],
    );
    config.policy.owner_gid = Some(nix::unistd::getgid().as_raw());
    config.policy.build = Some(BuildPaths {
        state_dir: tmp.join("state"),
        cache_dir: tmp.join("cache"),
        work_dir: tmp.join("work"),
        runner: BuildRunner::Child {
            builder: builder.to_owned(),
        },
    });
    let server = Server::bind(&config).unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let served = tokio::spawn(server.run_until(async {
        let _ = stopped.await;
    }));
    let stream = UnixStream::connect(&socket).await.unwrap();
    let (read, mut write) = stream.into_split();
    write
        .write_all(format!("{json}\n").as_bytes())
        .await
        .unwrap();
    let mut line = String::new();
    BufReader::new(read).read_line(&mut line).await.unwrap();
    let _ = stop.send(());
    served.await.unwrap().unwrap();
    serde_json::from_str(line.trim()).unwrap_or_else(|e| panic!("reply {line:?}: {e}"))
}

/// A well-formed name that is no embedded recipe passes the helper (which
/// links no recipes) and is refused by the builder, which names the ones it
/// knows; nothing is created.
#[tokio::test]
async fn unknown_recipes_are_refused_by_the_builder() {
    let tmp = tempfile::tempdir().unwrap();
    let err = ask(
        tmp.path(),
        Path::new(BUILDER),
        r#"{"op":"build_bundle","kind":"kernel","name":"my-kernel"}"#,
    )
    .await
    .unwrap_err();
    assert!(
        err.message
            .contains("no kernel recipe named \"my-kernel\" (known: generic-6.12)"),
        "{}",
        err.message
    );
    for dir in ["state", "cache", "work"] {
        assert!(!tmp.path().join(dir).exists(), "{dir} was created");
    }
}

/// A malformed name never reaches the builder: the helper refuses it as
/// invalid (a builder that cannot run would answer differently).
#[tokio::test]
async fn malformed_names_are_refused_by_the_helper() {
    let tmp = tempfile::tempdir().unwrap();
    let err = ask(
        tmp.path(),
        &tmp.path().join("no-builder"),
        r#"{"op":"build_bundle","kind":"image","name":"../debian-bookworm"}"#,
    )
    .await
    .unwrap_err();
    assert_eq!(err.code, HelperErrorCode::Invalid, "{}", err.message);
    assert!(err.message.contains("is invalid"), "{}", err.message);
}

/// A helper whose builder is missing says which executable it could not run.
#[tokio::test]
async fn a_missing_builder_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("no-builder");
    let reply = ask(
        tmp.path(),
        &missing,
        r#"{"op":"build_bundle","kind":"kernel","name":"generic-6.12"}"#,
    )
    .await;
    let err = match reply {
        Err(e) => e,
        Ok(HelperResponse::Built { .. }) | Ok(_) => panic!("built without a builder: {reply:?}"),
    };
    assert!(
        err.message
            .contains(&format!("cannot run {}", missing.display())),
        "{}",
        err.message
    );
}
