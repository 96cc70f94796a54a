//! The pinned-key SSH client against a real OpenSSH server started by the
//! test (`/usr/sbin/sshd -D` on 127.0.0.1, as root, with a temp host key and
//! authorized_keys), and stopped by a Drop guard.

mod common;

use std::fs;
use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use banger_vm::identity::generate_host_key;
use banger_vm::ssh::{connect, fingerprint, parse_public_key, wait_ready, PublicKey, SshError};
use common::{have_program, privileged};
use tokio::time::Instant;

const SSHD: &str = "/usr/sbin/sshd";

fn write_private(path: &Path, text: &str) {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .unwrap();
    f.write_all(text.as_bytes()).unwrap();
}

/// A private sshd; killed on drop. Its log is printed when a test fails.
struct Sshd {
    child: Child,
    dir: tempfile::TempDir,
    addr: SocketAddr,
    host_key: PublicKey,
    client_key: PathBuf,
}

impl Sshd {
    fn start() -> Sshd {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let host = generate_host_key("root@sshd-test").unwrap();
        write_private(&d.join("host_key"), &host.private_openssh);
        let client = generate_host_key("banger-test-client").unwrap();
        let client_key = d.join("client_key");
        write_private(&client_key, &client.private_openssh);
        fs::write(
            d.join("authorized_keys"),
            format!("{}\n", client.public_openssh),
        )
        .unwrap();
        // sshd refuses to start without its privilege-separation directory.
        fs::create_dir_all("/run/sshd").unwrap();
        fs::set_permissions("/run/sshd", fs::Permissions::from_mode(0o755)).unwrap();
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let config = d.join("sshd_config");
        fs::write(
            &config,
            format!(
                "ListenAddress 127.0.0.1\n\
                 HostKey {host_key}\n\
                 AuthorizedKeysFile {auth}\n\
                 PidFile none\n\
                 UsePAM no\n\
                 PasswordAuthentication no\n\
                 KbdInteractiveAuthentication no\n\
                 PermitRootLogin prohibit-password\n\
                 StrictModes no\n\
                 LogLevel VERBOSE\n",
                host_key = d.join("host_key").display(),
                auth = d.join("authorized_keys").display(),
            ),
        )
        .unwrap();
        let log = fs::File::create(d.join("sshd.log")).unwrap();
        let child = Command::new(SSHD)
            // Its own process group, so Drop also kills per-connection children.
            .process_group(0)
            .args(["-D", "-e", "-f"])
            .arg(&config)
            .args(["-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("sshd starts");
        Sshd {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            host_key: parse_public_key(&host.public_openssh).unwrap(),
            client_key,
            dir,
        }
    }

    fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("sshd.log")).unwrap_or_default()
    }

    async fn ready(&self) -> banger_vm::ssh::SshSession {
        let deadline = Instant::now() + Duration::from_secs(30);
        match wait_ready(
            self.addr,
            "root",
            &self.client_key,
            &self.host_key,
            deadline,
        )
        .await
        {
            Ok(s) => s,
            Err(e) => panic!(
                "sshd never became ready: {e}\n--- sshd log ---\n{}",
                self.log()
            ),
        }
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let group = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn can_run(test: &str) -> bool {
    privileged(test) && have_program(test, SSHD, "openssh-server")
}

#[tokio::test]
async fn exec_collects_output_and_exit_status() {
    if !can_run("exec_collects_output_and_exit_status") {
        return;
    }
    let sshd = Sshd::start();
    let session = sshd.ready().await;
    assert_eq!(session.addr(), sshd.addr);

    let out = session
        .exec("echo out; echo err >&2; printf 'no newline'; exit 3")
        .await
        .unwrap();
    assert_eq!(out.exit_status, Some(3));
    assert_eq!(out.exit_signal, None);
    assert_eq!(out.stdout, b"out\nno newline");
    assert_eq!(out.stderr, b"err\n");
    assert!(!out.success());

    let out = session.exec("id -u").await.unwrap();
    assert!(out.success());
    assert_eq!(out.stdout, b"0\n");

    // Large output arrives whole (several channel windows).
    let out = session.exec("head -c 3000000 /dev/zero").await.unwrap();
    assert!(out.success());
    assert_eq!(out.stdout.len(), 3_000_000);

    // Commands may run concurrently on one session.
    let (a, b) = tokio::join!(session.exec("echo a"), session.exec("echo b"));
    assert_eq!(a.unwrap().stdout, b"a\n");
    assert_eq!(b.unwrap().stdout, b"b\n");

    let out = session.exec("kill -TERM $$").await.unwrap();
    assert_eq!(out.exit_signal.as_deref(), Some("TERM"));
    assert_eq!(out.exit_status, None);

    session.close().await.unwrap();
}

#[tokio::test]
async fn a_host_key_other_than_the_pinned_one_is_refused() {
    if !can_run("a_host_key_other_than_the_pinned_one_is_refused") {
        return;
    }
    let sshd = Sshd::start();
    // The server is up and answers with its real key.
    sshd.ready().await.close().await.unwrap();

    let wrong = parse_public_key(&generate_host_key("other").unwrap().public_openssh).unwrap();
    let err = connect(
        sshd.addr,
        "root",
        &sshd.client_key,
        &wrong,
        Duration::from_secs(10),
    )
    .await
    .unwrap_err();
    match &err {
        SshError::HostKeyMismatch { expected, got, .. } => {
            assert_eq!(expected, &fingerprint(&wrong));
            assert_eq!(got, &fingerprint(&sshd.host_key));
        }
        other => panic!("expected HostKeyMismatch, got {other}"),
    }
    assert!(err.to_string().contains(&sshd.addr.to_string()), "{err}");

    // wait_ready does not retry a wrong host key: it fails with the same error,
    // not NotReady, although the deadline is far away.
    let deadline = Instant::now() + Duration::from_secs(600);
    let err = wait_ready(sshd.addr, "root", &sshd.client_key, &wrong, deadline)
        .await
        .unwrap_err();
    assert!(matches!(err, SshError::HostKeyMismatch { .. }), "{err}");
    // Refused before authentication: the only login is the one from ready().
    assert_eq!(
        sshd.log().matches("Accepted publickey").count(),
        1,
        "{}",
        sshd.log()
    );
}

#[tokio::test]
async fn an_unauthorized_client_key_is_rejected_until_the_deadline() {
    if !can_run("an_unauthorized_client_key_is_rejected_until_the_deadline") {
        return;
    }
    let sshd = Sshd::start();
    sshd.ready().await.close().await.unwrap();
    let stranger = sshd.dir.path().join("stranger_key");
    write_private(
        &stranger,
        &generate_host_key("stranger").unwrap().private_openssh,
    );
    let err = connect(
        sshd.addr,
        "root",
        &stranger,
        &sshd.host_key,
        Duration::from_secs(10),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, SshError::AuthRejected { .. }), "{err}");
    assert!(err.to_string().contains("stranger_key"), "{err}");

    let deadline = Instant::now() + Duration::from_millis(500);
    let err = wait_ready(sshd.addr, "root", &stranger, &sshd.host_key, deadline)
        .await
        .unwrap_err();
    match err {
        // The last attempt is either rejected, or cut short by the deadline
        // when a loaded host makes it start with only milliseconds left;
        // either way the unauthorized key never got in.
        SshError::NotReady { last, .. } => assert!(
            matches!(
                *last,
                SshError::AuthRejected { .. } | SshError::Timeout { .. }
            ),
            "{last}"
        ),
        other => panic!("expected NotReady, got {other}"),
    }
}

#[tokio::test]
async fn nothing_listening_is_not_ready_with_the_connect_error() {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let dir = tempfile::tempdir().unwrap();
    let key_path = dir.path().join("key");
    write_private(&key_path, &generate_host_key("c").unwrap().private_openssh);
    let pinned = parse_public_key(&generate_host_key("h").unwrap().public_openssh).unwrap();
    let deadline = Instant::now() + Duration::from_millis(400);
    let err = wait_ready(addr, "root", &key_path, &pinned, deadline)
        .await
        .unwrap_err();
    let SshError::NotReady { last, addr: a, .. } = err else {
        panic!("expected NotReady, got {err}");
    };
    assert_eq!(a, addr);
    assert!(matches!(*last, SshError::Connect { .. }), "{last}");
}

#[tokio::test]
async fn unusable_key_files_fail_at_once_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let pinned = parse_public_key(&generate_host_key("h").unwrap().public_openssh).unwrap();
    let addr: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let missing = dir.path().join("missing_key");
    let deadline = Instant::now() + Duration::from_secs(600);
    let err = wait_ready(addr, "root", &missing, &pinned, deadline)
        .await
        .unwrap_err();
    assert!(matches!(err, SshError::LoadKey { .. }), "{err}");
    assert!(err.to_string().contains("missing_key"), "{err}");
    let garbage = dir.path().join("garbage_key");
    fs::write(&garbage, "not a key").unwrap();
    let err = connect(addr, "root", &garbage, &pinned, Duration::from_secs(5))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("garbage_key"), "{err}");
    let err = parse_public_key("ssh-ed25519 !!").unwrap_err();
    assert!(err.to_string().contains("ssh-ed25519 !!"), "{err}");
}
