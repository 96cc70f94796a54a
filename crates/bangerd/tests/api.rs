//! The daemon's HTTP API over a real Unix socket, with a real `bangerd`
//! process in a private per-user environment.

mod common;

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::UnixDatagram;
use std::process::Stdio;
use std::time::{Duration, Instant};

use banger_cli::client::ClientError;
use banger_wire::api::{ApiError, DaemonStatus, ErrorCode, InstallMode};
use common::{curl, wait_child, Daemon, TestEnv};

#[tokio::test]
async fn status_over_the_client_and_curl_then_shutdown() {
    let env = TestEnv::new();
    let mut daemon = Daemon::start(&env).await;
    let client = daemon.client();

    let status = client.status().await.unwrap();
    assert_eq!(status.pid, daemon.pid());
    assert_eq!(status.version, banger_wire::VERSION);
    assert_eq!(status.install_mode, InstallMode::PerUser.to_string());
    assert_eq!(status.socket, env.socket().display().to_string());
    assert_eq!(status.state_dir, env.layout.state_dir.display().to_string());
    assert_eq!(status.schema_version, banger_state::SCHEMA_VERSION);
    assert!(!status.backend.is_empty() && !status.backend_reason.is_empty());

    let (code, body) = curl(&env.socket(), &["http://x/v1/status"]);
    assert_eq!(code, 200, "{body}");
    let via_curl: DaemonStatus = serde_json::from_str(&body).unwrap();
    assert_eq!(via_curl.pid, status.pid);

    let meta = std::fs::metadata(env.socket()).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    for dir in [
        &env.layout.state_dir,
        &env.layout.cache_dir,
        &env.layout.runtime_dir,
    ] {
        let mode = std::fs::metadata(dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700, "{}", dir.display());
    }

    // Same shape as `banger config show --json`.
    let config: serde_json::Value = client.get_json("/v1/config").await.unwrap();
    assert_eq!(
        config["bridge_name"],
        serde_json::json!({"value": "banger0", "provenance": "built-in"})
    );
    assert_eq!(config["cidr"]["value"], "172.16.0.0/24");

    let stopped = client.shutdown().await.unwrap();
    assert_eq!(stopped.pid, daemon.pid());
    assert!(daemon.wait_exit().success(), "log:\n{}", env.log());
    assert!(!env.socket().exists(), "socket left behind");
    let log = env.log();
    assert!(
        log.contains("listening") && log.contains("bangerd stopped"),
        "{log}"
    );
}

fn api_error(err: ClientError) -> (u16, ApiError) {
    match err {
        ClientError::Api { status, error, .. } => (status, error),
        other => panic!("expected an API error, got {other:?}"),
    }
}

#[tokio::test]
async fn bad_requests_get_json_errors() {
    let env = TestEnv::new();
    let mut daemon = Daemon::start(&env).await;
    let sock = env.socket();

    for body in [
        "{not json",
        r#"{"nat": "yes"}"#,
        r#"{"nat": true, "extra": 1}"#,
    ] {
        let (code, text) = curl(
            &sock,
            &["-X", "POST", "-d", body, "http://x/v1/network/setup"],
        );
        assert_eq!(code, 400, "{body}: {text}");
        let err: ApiError = serde_json::from_str(&text).expect("JSON error body");
        assert_eq!(err.code, ErrorCode::BadRequest, "{body}");
        assert!(
            err.message.starts_with("invalid JSON body"),
            "{}",
            err.message
        );
    }

    let (code, text) = curl(&sock, &["http://x/v1/no-such-thing"]);
    assert_eq!(code, 404);
    let err: ApiError = serde_json::from_str(&text).unwrap();
    assert_eq!(err.code, ErrorCode::NotFound);
    assert!(err.message.contains("/v1/no-such-thing"), "{}", err.message);

    let client = daemon.client();
    let (status, err) = api_error(
        client
            .get_json::<serde_json::Value>("/v2/status")
            .await
            .unwrap_err(),
    );
    assert_eq!((status, err.code), (404, ErrorCode::NotFound));
    let (status, err) = api_error(
        client
            .get_json::<serde_json::Value>("/v1/shutdown")
            .await
            .unwrap_err(),
    );
    assert_eq!((status, err.code), (405, ErrorCode::MethodNotAllowed));

    // Still healthy after all that; SIGTERM stops it cleanly.
    client.status().await.unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(daemon.pid() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    assert!(daemon.wait_exit().success(), "log:\n{}", env.log());
    assert!(!env.socket().exists());
}

#[tokio::test]
async fn stale_socket_is_replaced() {
    let env = TestEnv::new();
    banger_host::paths::ensure_private_dir(&env.layout.runtime_dir).unwrap();
    // What a crashed daemon leaves: a socket file nobody listens on.
    drop(std::os::unix::net::UnixListener::bind(env.socket()).unwrap());
    assert!(env.socket().exists());
    let daemon = Daemon::start(&env).await;
    assert_eq!(daemon.client().status().await.unwrap().pid, daemon.pid());
    assert!(env.log().contains("removed stale socket"), "{}", env.log());
}

#[tokio::test]
async fn second_daemon_is_refused_while_the_first_runs() {
    let env = TestEnv::new();
    let daemon = Daemon::start(&env).await;
    let mut second = env
        .command(common::daemon_bin())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let status = wait_child(&mut second);
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut second.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(!status.success());
    assert!(
        stderr.contains("already running") && stderr.contains(&format!("pid {}", daemon.pid())),
        "{stderr}"
    );
    // The first one is untouched.
    assert_eq!(daemon.client().status().await.unwrap().pid, daemon.pid());
}

/// Receive one datagram from the notify socket as text.
fn recv_notify(sock: &UnixDatagram) -> String {
    let mut buf = [0u8; 4096];
    let n = sock
        .recv(&mut buf)
        .expect("a notification before the timeout");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[tokio::test]
async fn sd_notify_ready_watchdog_and_stopping() {
    let env = TestEnv::new();
    let notify_path = env.dir.path().join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify
        .set_read_timeout(Some(common::PROCESS_TIMEOUT))
        .unwrap();
    let mut cmd = env.command(common::daemon_bin());
    cmd.env("NOTIFY_SOCKET", &notify_path)
        .env("WATCHDOG_USEC", "200000");
    let mut daemon = Daemon::start_with(&env, cmd).await;

    let ready = recv_notify(&notify);
    assert!(ready.contains("READY=1"), "{ready}");
    assert!(ready.contains("STATUS=serving"), "{ready}");
    // Pings keep coming at half the interval until shutdown.
    let mut pings = 0;
    let deadline = Instant::now() + common::PROCESS_TIMEOUT;
    while pings < 2 && Instant::now() < deadline {
        if recv_notify(&notify).contains("WATCHDOG=1") {
            pings += 1;
        }
    }
    assert_eq!(pings, 2, "expected watchdog pings");

    daemon.client().shutdown().await.unwrap();
    assert!(daemon.wait_exit().success());
    notify
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut rest = String::new();
    let mut buf = [0u8; 4096];
    while let Ok(n) = notify.recv(&mut buf) {
        rest.push_str(&String::from_utf8_lossy(&buf[..n]));
        rest.push('\n');
    }
    assert!(rest.contains("STOPPING=1"), "{rest}");
}

#[tokio::test]
async fn under_systemd_logs_go_to_stderr_without_timestamps() {
    let env = TestEnv::new();
    let err_path = env.dir.path().join("stderr.txt");
    let mut cmd = env.command(common::daemon_bin());
    cmd.env("JOURNAL_STREAM", "8:12345")
        .stderr(std::fs::File::create(&err_path).unwrap());
    let mut daemon = Daemon::start_with(&env, cmd).await;
    daemon.client().shutdown().await.unwrap();
    assert!(daemon.wait_exit().success());
    let stderr = std::fs::read_to_string(&err_path).unwrap();
    assert!(stderr.contains("listening"), "{stderr}");
    for line in stderr.lines() {
        // journald adds the time; a line starting with a digit would be ours.
        assert!(
            !line.starts_with(|c: char| c.is_ascii_digit()),
            "timestamped: {line}"
        );
        assert!(!line.contains('\x1b'), "coloured: {line}");
    }
    assert!(!env.layout.log_file().exists(), "no log file under systemd");
}

/// A system install's metadata under `env` (owner: the test's uid), with
/// `extra` TOML lines; returns the install.toml path and the socket.
fn system_install(env: &TestEnv, extra: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    let sys = env.dir.path().join("sys");
    let gid = nix::unistd::getegid().as_raw();
    let uid = nix::unistd::geteuid().as_raw();
    let install = env.dir.path().join("install.toml");
    let p = |s: &str| sys.join(s).display().to_string();
    std::fs::write(
        &install,
        format!(
            "owner_user = \"owner\"\nowner_uid = {uid}\nowner_gid = {gid}\nversion = \"0.1.0\"\n\
             bin_dir = \"/usr/bin\"\nlib_dir = \"/usr/lib/banger\"\n\
             state_dir = \"{}\"\ncache_dir = \"{}\"\nrun_dir = \"{}\"\n\
             root_run_dir = \"{}\"\nconfig_path = \"{}\"\n{extra}",
            p("state"),
            p("cache"),
            p("run"),
            p("root-run"),
            p("config.toml")
        ),
    )
    .unwrap();
    (install, sys.join("run/bangerd.sock"))
}

#[tokio::test]
async fn system_mode_socket_is_owner_only_and_uses_the_system_helper() {
    let env = TestEnv::new();
    let sys = env.dir.path().join("sys");
    let p = |s: &str| sys.join(s).display().to_string();
    let (install, socket) = system_install(&env, "");
    let mut cmd = env.command(common::daemon_bin());
    cmd.env("BANGER_INSTALL_FILE", &install);
    let mut daemon = Daemon::start_at(&env, cmd, &socket).await;
    let client = daemon.client();

    let status = client.status().await.unwrap();
    assert_eq!(status.install_mode, InstallMode::System.to_string());
    assert_eq!(status.state_dir, p("state"));
    let helper_socket = sys.join("root-run/bangerd-root.sock");
    assert_eq!(
        status.root_helper,
        Some(format!("system socket {}", helper_socket.display()))
    );

    // No socket_group: the owner's group is not implied (on NixOS it is
    // `users`, i.e. everyone).
    let meta = std::fs::metadata(&socket).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);

    // No system helper is running here: the route says so, with 503.
    let (code, text) = curl(&socket, &["-X", "POST", "http://x/v1/network/setup"]);
    assert_eq!(
        code, 200,
        "streamed: the helper is only asked once the stream runs"
    );
    let last: banger_wire::api::StreamEvent =
        serde_json::from_str(text.lines().last().unwrap()).unwrap();
    match last {
        banger_wire::api::StreamEvent::Error { error } => {
            assert_eq!(error.code, ErrorCode::HelperUnavailable);
            assert!(
                error.message.contains(&helper_socket.display().to_string()),
                "{}",
                error.message
            );
        }
        other => panic!("expected an error event, got {other:?}"),
    }

    client.shutdown().await.unwrap();
    assert!(daemon.wait_exit().success());
    assert!(!socket.exists());
}

/// `curl` on `socket` as uid/gid 65534 (nobody) with no supplementary
/// groups but CAP_DAC_OVERRIDE, i.e. a peer the socket's mode does not stop:
/// only the daemon's per-connection check stands between it and the API.
/// `None` when this test cannot switch users (not root).
fn curl_as_nobody(test: &str, socket: &std::path::Path) -> Option<(u16, String)> {
    // Connecting as another user needs root.
    if !banger_test_support::Gate::named(test).root().check() {
        return None;
    }
    let mut setpriv = std::process::Command::new("setpriv");
    setpriv.args([
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        "--inh-caps=+dac_override",
        "--ambient-caps=+dac_override",
        "curl",
    ]);
    Some(common::curl_via(setpriv, socket, &["http://x/v1/status"]))
}

/// Every connection's peer is checked: another user who gets past the
/// socket's mode is refused with a 403 naming who may connect, by a
/// per-user daemon and by a system one without socket_group; an explicit
/// socket_group admits its members.
#[tokio::test]
async fn other_users_are_refused_unless_in_an_explicit_socket_group() {
    let test = "other_users_are_refused_unless_in_an_explicit_socket_group";
    let env = TestEnv::new();
    let mut daemon = Daemon::start(&env).await;
    let Some((code, body)) = curl_as_nobody(test, &env.socket()) else {
        return;
    };
    assert_eq!(code, 403, "{body}");
    let err: ApiError = serde_json::from_str(&body).unwrap();
    assert_eq!(err.code, ErrorCode::Forbidden);
    // The daemon runs as the test's user: root here, hence "only root".
    assert_eq!(
        err.message,
        "uid 65534 (nobody) may not use this bangerd: only root may connect; \
         run your own banger as yourself (each user gets their own per-user daemon)"
    );
    // The owner is still served, on the same listener.
    daemon.client().status().await.unwrap();
    daemon.client().shutdown().await.unwrap();
    assert!(daemon.wait_exit().success());

    let (install, socket) = system_install(&env, "");
    let mut cmd = env.command(common::daemon_bin());
    cmd.env("BANGER_INSTALL_FILE", &install);
    let mut daemon = Daemon::start_at(&env, cmd, &socket).await;
    let (code, body) = curl_as_nobody(test, &socket).unwrap();
    assert_eq!(code, 403, "{body}");
    let err: ApiError = serde_json::from_str(&body).unwrap();
    assert!(
        err.message.contains(&format!(
            "may not use this bangerd: only root may connect; \
             an admin can admit a group with socket_group in {}",
            install.display()
        )),
        "{}",
        err.message
    );
    daemon.client().shutdown().await.unwrap();
    assert!(daemon.wait_exit().success());

    // nobody's group (Debian: nogroup, gid 65534) as socket_group.
    let group = nobody_group();
    let (install, socket) = system_install(&env, &format!("socket_group = \"{group}\"\n"));
    let mut cmd = env.command(common::daemon_bin());
    cmd.env("BANGER_INSTALL_FILE", &install);
    let mut daemon = Daemon::start_at(&env, cmd, &socket).await;
    let meta = std::fs::metadata(&socket).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);
    assert_eq!(std::os::unix::fs::MetadataExt::gid(&meta), 65534);
    let (code, body) = curl_as_nobody(test, &socket).unwrap();
    assert_eq!(code, 200, "a member of socket_group is served: {body}");
    let status: DaemonStatus = serde_json::from_str(&body).unwrap();
    assert_eq!(status.install_mode, InstallMode::System.to_string());
    daemon.client().shutdown().await.unwrap();
    assert!(daemon.wait_exit().success());
}

/// nobody's group (Debian: nogroup, gid 65534).
fn nobody_group() -> String {
    nix::unistd::Group::from_gid(65534.into())
        .unwrap()
        .expect("a group with gid 65534")
        .name
}

/// `banger vm session attach` as uid 65534 with CAP_DAC_OVERRIDE, i.e. past
/// the attach socket's mode: its stderr.
fn attach_as_nobody(env: &TestEnv, install: Option<&std::path::Path>) -> String {
    let cli = common::daemon_bin().with_file_name("banger");
    let mut cmd = env.command("setpriv");
    cmd.args([
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        "--inh-caps=+dac_override",
        "--ambient-caps=+dac_override",
    ])
    .arg(cli)
    .args(["vm", "session", "attach", "box", "s"])
    .stdin(Stdio::null());
    if let Some(install) = install {
        cmd.env("BANGER_INSTALL_FILE", install);
    }
    let out = cmd.output().expect("run setpriv banger");
    assert!(!out.status.success());
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The attach bridge (it carries sessions' stdin) admits the owner and root
/// only: mode 0600, and every connection's peer checked, also where
/// `socket_group` opens the API to a group.
#[tokio::test]
async fn the_attach_socket_refuses_other_users_even_in_socket_group() {
    let test = "the_attach_socket_refuses_other_users_even_in_socket_group";
    if !banger_test_support::Gate::named(test).root().check() {
        return;
    }
    let env = TestEnv::new();
    let mut daemon = Daemon::start(&env).await;
    let attach = env.socket().with_file_name("attach.sock");
    let meta = std::fs::metadata(&attach).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let e = attach_as_nobody(&env, None);
    assert!(
        e.contains("uid 65534 (nobody) may not use this bangerd"),
        "{e}"
    );
    // Connections that never say hello are bounded: the one past the limit
    // is answered with an error at once; the others stay open.
    let held: Vec<std::os::unix::net::UnixStream> = (0..64)
        .map(|_| std::os::unix::net::UnixStream::connect(&attach).unwrap())
        .collect();
    let mut extra = std::os::unix::net::UnixStream::connect(&attach).unwrap();
    extra
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut answer = Vec::new();
    std::io::Read::read_to_end(&mut extra, &mut answer).unwrap();
    let frame = tokio_util::codec::Decoder::decode(
        &mut banger_wire::attach::StdioMux,
        &mut bytes::BytesMut::from(&answer[..]),
    )
    .unwrap()
    .expect("an error frame");
    match banger_wire::attach::ServerControl::parse(&frame.payload).unwrap() {
        banger_wire::attach::ServerControl::Error { message } => {
            assert!(
                message.contains("already serves 64 attach connections"),
                "{message}"
            )
        }
        other => panic!("{other:?}"),
    }
    drop(held);
    daemon.client().shutdown().await.unwrap();
    assert!(daemon.wait_exit().success());
    assert!(!attach.exists(), "removed on shutdown");

    let group = nobody_group();
    let (install, socket) = system_install(&env, &format!("socket_group = \"{group}\"\n"));
    let mut cmd = env.command(common::daemon_bin());
    cmd.env("BANGER_INSTALL_FILE", &install);
    let mut daemon = Daemon::start_at(&env, cmd, &socket).await;
    let meta = std::fs::metadata(socket.with_file_name("attach.sock")).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let e = attach_as_nobody(&env, Some(&install));
    assert!(
        e.contains("uid 65534 (nobody) may not use this bangerd"),
        "a socket_group member may use the API, not attach: {e}"
    );
    daemon.client().shutdown().await.unwrap();
    assert!(daemon.wait_exit().success());
}
