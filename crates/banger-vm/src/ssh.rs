//! The daemon's SSH client to its guests (russh), with the host key pinned:
//! banger generated the guest's host key, so any other key is refused
//! outright — there is no trust on first use and no prompt.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use russh::client::{self, Handle};
use russh::keys::{HashAlg, PrivateKeyWithHashAlg, PublicKeyOrCertificate};
use russh::{ChannelMsg, Disconnect, Sig};
use tokio::time::Instant;

/// An SSH public key (the type pinned host keys are given as).
pub use russh::keys::PublicKey;

/// Longest pause between two attempts of [`wait_ready`].
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// First pause of [`wait_ready`]; it doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// Bound on one attempt of [`wait_ready`] (TCP connect, handshake, auth).
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);

/// SSH failures, each naming the guest address (and key file or user).
#[derive(Debug, thiserror::Error)]
pub enum SshError {
    #[error("invalid SSH public key {text:?}: {source}")]
    BadPublicKey {
        text: String,
        source: russh::keys::ssh_key::Error,
    },
    #[error("cannot load SSH key {}: {source}", path.display())]
    LoadKey {
        path: PathBuf,
        source: russh::keys::Error,
    },
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("SSH to {addr} did not complete within {after:?}")]
    Timeout { addr: SocketAddr, after: Duration },
    #[error(
        "{addr} presented host key {got}, not the pinned key {expected}; refusing to connect \
         (the guest is not the VM banger created, or its host key was replaced)"
    )]
    HostKeyMismatch {
        addr: SocketAddr,
        expected: String,
        got: String,
    },
    #[error("SSH handshake with {addr} failed: {source}")]
    Handshake {
        addr: SocketAddr,
        source: russh::Error,
    },
    #[error("{addr} refused key {} for user {user:?}", key_path.display())]
    AuthRejected {
        addr: SocketAddr,
        user: String,
        key_path: PathBuf,
    },
    #[error("SSH channel to {addr} failed: {source}")]
    Channel {
        addr: SocketAddr,
        source: russh::Error,
    },
    #[error("{addr} did not accept SSH within {waited:?}; last attempt: {last}")]
    NotReady {
        addr: SocketAddr,
        waited: Duration,
        last: Box<SshError>,
    },
}

impl SshError {
    /// Whether waiting may help: the guest may still be booting (nothing
    /// listens yet, the handshake is cut short, sshd is up before the agent
    /// installed `authorized_keys`). A wrong host key or an unusable key
    /// file never gets better.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            SshError::Connect { .. }
                | SshError::Timeout { .. }
                | SshError::Handshake { .. }
                | SshError::AuthRejected { .. }
        )
    }
}

/// Parse an OpenSSH public key line (`ssh-ed25519 AAAA... [comment]`), e.g.
/// [`banger_wire::guest::SshHostKey::public_openssh`], for pinning.
pub fn parse_public_key(openssh: &str) -> Result<PublicKey, SshError> {
    PublicKey::from_openssh(openssh.trim()).map_err(|source| SshError::BadPublicKey {
        text: openssh.to_owned(),
        source,
    })
}

/// `SHA256:...` fingerprint, as `ssh-keygen -l` prints it.
pub fn fingerprint(key: &PublicKey) -> String {
    key.fingerprint(HashAlg::Sha256).to_string()
}

/// The russh handler: accepts exactly the pinned key and records what a
/// refused server offered.
struct PinnedHost {
    expected: PublicKey,
    refused: Arc<Mutex<Option<String>>>,
}

impl client::Handler for PinnedHost {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        offered: &PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        let seen = match offered {
            PublicKeyOrCertificate::PublicKey { key, .. } => {
                // Comments are not part of a key's identity.
                if key.key_data() == self.expected.key_data() {
                    return Ok(true);
                }
                fingerprint(key)
            }
            PublicKeyOrCertificate::Certificate(cert) => format!(
                "a host certificate for key {}",
                cert.public_key().fingerprint(HashAlg::Sha256)
            ),
        };
        *self.refused.lock().unwrap_or_else(|e| e.into_inner()) = Some(seen);
        Ok(false)
    }
}

/// An authenticated SSH session with a guest whose host key matched.
pub struct SshSession {
    handle: Handle<PinnedHost>,
    addr: SocketAddr,
}

impl fmt::Debug for SshSession {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SshSession")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

/// What a command run with [`SshSession::exec`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecOutput {
    /// The exit status, when the command exited normally.
    pub exit_status: Option<u32>,
    /// The signal name (`TERM`, `KILL`, ...) when it was killed by one.
    pub exit_signal: Option<String>,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

impl ExecOutput {
    /// Exit status 0.
    pub fn success(&self) -> bool {
        self.exit_status == Some(0)
    }
}

fn signal_name(sig: Sig) -> String {
    match sig {
        Sig::Custom(name) => name,
        other => format!("{other:?}"),
    }
}

/// Connect to `addr` as `user` with the private key at `key_path`, accepting
/// only `expected_host_key` as the server's host key, all within `timeout`.
pub async fn connect(
    addr: SocketAddr,
    user: &str,
    key_path: &Path,
    expected_host_key: &PublicKey,
    timeout: Duration,
) -> Result<SshSession, SshError> {
    let key = russh::keys::load_secret_key(key_path, None).map_err(|source| SshError::LoadKey {
        path: key_path.to_owned(),
        source,
    })?;
    let key = Arc::new(key);
    match tokio::time::timeout(
        timeout,
        handshake(addr, user, key_path, key, expected_host_key),
    )
    .await
    {
        Ok(result) => result,
        Err(_) => Err(SshError::Timeout {
            addr,
            after: timeout,
        }),
    }
}

async fn handshake(
    addr: SocketAddr,
    user: &str,
    key_path: &Path,
    key: Arc<russh::keys::PrivateKey>,
    expected: &PublicKey,
) -> Result<SshSession, SshError> {
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|source| SshError::Connect { addr, source })?;
    let _ = stream.set_nodelay(true);
    let refused = Arc::new(Mutex::new(None));
    let handler = PinnedHost {
        expected: expected.clone(),
        refused: refused.clone(),
    };
    let config = Arc::new(client::Config {
        // Long-lived sessions notice a vanished guest.
        keepalive_interval: Some(Duration::from_secs(15)),
        keepalive_max: 3,
        ..Default::default()
    });
    let connected = client::connect_stream(config, stream, handler).await;
    if let Some(got) = refused.lock().unwrap_or_else(|e| e.into_inner()).take() {
        return Err(SshError::HostKeyMismatch {
            addr,
            expected: fingerprint(expected),
            got,
        });
    }
    let mut handle = connected.map_err(|source| SshError::Handshake { addr, source })?;
    let hash_alg = if key.algorithm().is_rsa() {
        handle
            .best_supported_rsa_hash()
            .await
            .map_err(|source| SshError::Handshake { addr, source })?
            .flatten()
    } else {
        None
    };
    let auth = handle
        .authenticate_publickey(user, PrivateKeyWithHashAlg::new(key, hash_alg))
        .await
        .map_err(|source| SshError::Handshake { addr, source })?;
    if !auth.success() {
        return Err(SshError::AuthRejected {
            addr,
            user: user.to_owned(),
            key_path: key_path.to_owned(),
        });
    }
    Ok(SshSession { handle, addr })
}

/// Poll `addr` until an SSH session with the pinned key is established (see
/// [`connect`]), pausing 100 ms, doubling up to 2 s, between attempts. Gives
/// up at `deadline` with [`SshError::NotReady`] carrying the last failure,
/// and at once on a failure that waiting cannot fix (a wrong host key, an
/// unreadable key file).
pub async fn wait_ready(
    addr: SocketAddr,
    user: &str,
    key_path: &Path,
    expected_host_key: &PublicKey,
    deadline: Instant,
) -> Result<SshSession, SshError> {
    let started = Instant::now();
    let mut pause = FIRST_BACKOFF;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let last = if left.is_zero() {
            SshError::Timeout {
                addr,
                after: Duration::ZERO,
            }
        } else {
            match connect(
                addr,
                user,
                key_path,
                expected_host_key,
                left.min(ATTEMPT_TIMEOUT),
            )
            .await
            {
                Ok(session) => return Ok(session),
                Err(e) if !e.is_transient() => return Err(e),
                Err(e) => e,
            }
        };
        let now = Instant::now();
        if now + pause >= deadline {
            return Err(SshError::NotReady {
                addr,
                waited: now - started,
                last: Box::new(last),
            });
        }
        tracing::debug!(%addr, error = %last, "guest SSH not ready yet");
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(MAX_BACKOFF);
    }
}

impl SshSession {
    /// The guest address this session is connected to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Run `command` (a shell command line, as `ssh host command` would)
    /// and collect its exit status and output. Several commands may run on
    /// one session, one after another or at once.
    pub async fn exec(&self, command: &str) -> Result<ExecOutput, SshError> {
        let addr = self.addr;
        let channel_err = |source| SshError::Channel { addr, source };
        let mut channel = self
            .handle
            .channel_open_session()
            .await
            .map_err(channel_err)?;
        channel.exec(true, command).await.map_err(channel_err)?;
        let mut out = ExecOutput {
            exit_status: None,
            exit_signal: None,
            stdout: Vec::new(),
            stderr: Vec::new(),
        };
        // Output may still arrive after the exit status; read until the
        // channel is closed.
        while let Some(msg) = channel.wait().await {
            match msg {
                ChannelMsg::Data { data } => out.stdout.extend_from_slice(&data),
                ChannelMsg::ExtendedData { data, ext: 1 } => out.stderr.extend_from_slice(&data),
                ChannelMsg::ExitStatus { exit_status } => out.exit_status = Some(exit_status),
                ChannelMsg::ExitSignal {
                    signal_name: sig, ..
                } => out.exit_signal = Some(signal_name(sig)),
                _ => {}
            }
        }
        Ok(out)
    }

    /// Run `command` with `input`'s chunks as its stdin (then end-of-file),
    /// collecting at most `keep` bytes of each of stdout and stderr (the
    /// rest is read and dropped, so a chatty command never stalls the
    /// connection). Input and output flow at the same time. An error from
    /// `input` stops the upload: the channel is closed without end-of-file
    /// and that error is returned.
    pub async fn exec_with_input<S, E>(
        &self,
        command: &str,
        input: S,
        keep: usize,
    ) -> Result<Result<ExecOutput, E>, SshError>
    where
        S: futures::Stream<Item = Result<bytes::Bytes, E>> + Unpin,
    {
        use futures::StreamExt;
        let addr = self.addr;
        let channel_err = |source| SshError::Channel { addr, source };
        let channel = self
            .handle
            .channel_open_session()
            .await
            .map_err(channel_err)?;
        channel.exec(true, command).await.map_err(channel_err)?;
        let (mut read, write) = channel.split();
        // A broken input ends the wait for output too: the command's
        // answer to a cut-off stdin is not worth waiting for.
        let broken = tokio::sync::Notify::new();
        let send = async {
            let mut input = input;
            while let Some(chunk) = input.next().await {
                match chunk {
                    Ok(bytes) => {
                        if write.data_bytes(bytes).await.is_err() {
                            // The command stopped reading (it exited): its
                            // status says why.
                            return Ok(());
                        }
                    }
                    Err(e) => {
                        broken.notify_one();
                        let _ = write.close().await;
                        return Err(e);
                    }
                }
            }
            let _ = write.eof().await;
            Ok(())
        };
        let receive = async {
            let mut out = ExecOutput {
                exit_status: None,
                exit_signal: None,
                stdout: Vec::new(),
                stderr: Vec::new(),
            };
            let push = |buf: &mut Vec<u8>, data: &[u8]| {
                let room = keep.saturating_sub(buf.len());
                buf.extend_from_slice(&data[..data.len().min(room)]);
            };
            loop {
                let msg = tokio::select! {
                    msg = read.wait() => msg,
                    () = broken.notified() => None,
                };
                let Some(msg) = msg else { break };
                match msg {
                    ChannelMsg::Data { data } => push(&mut out.stdout, &data),
                    ChannelMsg::ExtendedData { data, ext: 1 } => push(&mut out.stderr, &data),
                    ChannelMsg::ExitStatus { exit_status } => out.exit_status = Some(exit_status),
                    ChannelMsg::ExitSignal {
                        signal_name: sig, ..
                    } => out.exit_signal = Some(signal_name(sig)),
                    _ => {}
                }
            }
            out
        };
        let (sent, out) = tokio::join!(send, receive);
        Ok(sent.map(|()| out))
    }

    /// Say goodbye to the server and close the connection.
    pub async fn close(self) -> Result<(), SshError> {
        let addr = self.addr;
        self.handle
            .disconnect(Disconnect::ByApplication, "", "en")
            .await
            .map_err(|source| SshError::Channel { addr, source })
    }
}
