//! Binding the API socket (stale-socket replacement and permissions) and
//! deciding who may talk to it.
//!
//! The socket's mode is only a first fence: every accepted connection is
//! checked with `SO_PEERCRED` ([`PeerPolicy::check`]), because a mode is
//! easy to get wrong (on NixOS every normal user's primary group is
//! `users`, so "the owner's group" admits everyone).

use std::io::ErrorKind;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use nix::unistd::{Gid, Group, Uid, User};

/// Who may connect to the socket besides its owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SocketAccess {
    /// Mode 0600: only the daemon's user (per-user mode, and system mode
    /// without an explicit `socket_group`).
    OwnerOnly,
    /// Mode 0660 with this group (system mode with `socket_group`).
    Group(Gid),
}

/// Errors binding the API socket.
#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    #[error("cannot create socket directory {path}: {source}")]
    CreateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "a process is already serving {path}; is another bangerd running with a different lock?"
    )]
    InUse { path: PathBuf },
    #[error("cannot remove stale socket {path}: {source}")]
    RemoveStale {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot bind {path}: {source}")]
    Bind {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot set mode {mode:o} on {path}: {source}")]
    Chmod {
        path: PathBuf,
        mode: u32,
        source: std::io::Error,
    },
    #[error("cannot give {path} to group {gid}: {source}")]
    Chown {
        path: PathBuf,
        gid: u32,
        source: nix::Error,
    },
    #[error("socket group {name:?} from the install metadata does not exist")]
    UnknownGroup { name: String },
    #[error("cannot look up group {name:?}: {source}")]
    LookupGroup { name: String, source: nix::Error },
}

/// Resolve `socket_group` of a system install by name: `None` (owner only)
/// when it is unset. The owner's primary group is never implied.
pub fn resolve_group(socket_group: Option<&str>) -> Result<Option<SocketGroup>, SocketError> {
    let Some(name) = socket_group else {
        return Ok(None);
    };
    match Group::from_name(name) {
        Ok(Some(g)) => Ok(Some(SocketGroup {
            gid: g.gid.as_raw(),
            name: g.name,
        })),
        Ok(None) => Err(SocketError::UnknownGroup {
            name: name.to_owned(),
        }),
        Err(source) => Err(SocketError::LookupGroup {
            name: name.to_owned(),
            source,
        }),
    }
}

/// A group admitted to the socket (`socket_group`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SocketGroup {
    pub gid: u32,
    pub name: String,
}

/// Who may use the daemon: its owner, root, and the members of an explicit
/// `socket_group`. Checked on every connection, whatever the socket's mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerPolicy {
    pub owner_uid: u32,
    /// For messages only.
    pub owner_name: String,
    pub group: Option<SocketGroup>,
    /// Where an admin sets `socket_group` (named in refusals); `None` for a
    /// per-user daemon, which never admits other users.
    pub group_setting: Option<PathBuf>,
}

/// The credentials of a connected peer, as `SO_PEERCRED` reports them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    pub uid: u32,
    /// Effective gid at `connect` time.
    pub gid: u32,
}

/// Why a peer was turned away; its text is the 403 message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{who} may not use this bangerd: only {allowed} may connect{hint}")]
pub struct PeerRefused {
    /// `uid 1502 (bob)`.
    pub who: String,
    /// `its owner alice (uid 1500), root[ and members of group G]`.
    pub allowed: String,
    pub hint: String,
}

impl PeerPolicy {
    /// The policy of a per-user daemon run by `uid`: that user and root.
    pub fn per_user(uid: u32) -> PeerPolicy {
        PeerPolicy {
            owner_uid: uid,
            owner_name: user_name(uid).unwrap_or_else(|| format!("uid {uid}")),
            group: None,
            group_setting: None,
        }
    }

    /// The decision, given the peer and the gids its user belongs to
    /// (primary and supplementary, from the user database).
    pub fn admits(&self, peer: Peer, member_of: &[u32]) -> bool {
        if peer.uid == 0 || peer.uid == self.owner_uid {
            return true;
        }
        match &self.group {
            Some(g) => peer.gid == g.gid || member_of.contains(&g.gid),
            None => false,
        }
    }

    /// Check `peer`: group memberships are looked up (by uid, in the user
    /// database) only when a group could admit it. The database, not
    /// `/proc/PID/status`, because a pid can be reused by another process
    /// between `connect` and our read.
    pub fn check(&self, peer: Peer) -> Result<(), PeerRefused> {
        let groups = match &self.group {
            Some(_) if peer.uid != 0 && peer.uid != self.owner_uid => member_gids(peer.uid),
            _ => Vec::new(),
        };
        if self.admits(peer, &groups) {
            return Ok(());
        }
        Err(self.refusal(peer.uid, user_name(peer.uid)))
    }

    /// The refusal for `uid` (named `name` when it has one).
    pub fn refusal(&self, uid: u32, name: Option<String>) -> PeerRefused {
        let who = match name {
            Some(n) => format!("uid {uid} ({n})"),
            None => format!("uid {uid}"),
        };
        // A daemon run by root: "its owner root (uid 0) and root" says less.
        let users = match self.owner_uid {
            0 => "root".to_owned(),
            uid => format!("its owner {} (uid {uid}) and root", self.owner_name),
        };
        let (allowed, hint) = match (&self.group, &self.group_setting) {
            (Some(g), _) => (
                format!("{}, and members of group {}", users, g.name),
                format!("; ask an admin to add you to group {}", g.name),
            ),
            (None, Some(setting)) => (
                users,
                format!(
                    "; an admin can admit a group with socket_group in {}",
                    setting.display()
                ),
            ),
            (None, None) => (
                users,
                "; run your own banger as yourself (each user gets their own per-user daemon)"
                    .to_owned(),
            ),
        };
        PeerRefused { who, allowed, hint }
    }
}

fn user_name(uid: u32) -> Option<String> {
    User::from_uid(Uid::from_raw(uid))
        .ok()
        .flatten()
        .map(|u| u.name)
}

/// Every gid the user `uid` belongs to per the user database; empty when
/// the uid has no entry (such a peer is only ever admitted by uid).
fn member_gids(uid: u32) -> Vec<u32> {
    let Ok(Some(user)) = User::from_uid(Uid::from_raw(uid)) else {
        return Vec::new();
    };
    let Ok(name) = std::ffi::CString::new(user.name) else {
        return Vec::new();
    };
    nix::unistd::getgrouplist(&name, user.gid)
        .map(|gs| gs.into_iter().map(Gid::as_raw).collect())
        .unwrap_or_else(|_| vec![user.gid.as_raw()])
}

/// The credentials of the peer of `stream`.
pub fn peer_of(stream: &tokio::net::UnixStream) -> std::io::Result<Peer> {
    let cred = stream.peer_cred()?;
    Ok(Peer {
        uid: cred.uid(),
        gid: cred.gid(),
    })
}

/// The API listener with [`PeerPolicy::check`] applied on accept: refused
/// peers get a 403 with an [`banger_wire::api::ApiError`] body (from a task
/// of their own) and never reach the router.
#[derive(Debug)]
pub struct PeerCheckedListener {
    pub inner: tokio::net::UnixListener,
    pub policy: std::sync::Arc<PeerPolicy>,
}

impl axum::serve::Listener for PeerCheckedListener {
    type Io = tokio::net::UnixStream;
    type Addr = tokio::net::unix::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let (stream, addr) = axum::serve::Listener::accept(&mut self.inner).await;
            match admit(&self.policy, &stream) {
                Ok(()) => return (stream, addr),
                Err(refused) => {
                    tokio::spawn(refuse(stream, refused));
                }
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

/// The check made on every accepted connection.
pub fn admit(policy: &PeerPolicy, stream: &tokio::net::UnixStream) -> Result<(), PeerRefused> {
    match peer_of(stream) {
        Ok(peer) => policy.check(peer).inspect_err(|refused| {
            tracing::warn!(uid = peer.uid, "refused API connection: {refused}");
        }),
        // No credentials, no service (this does not happen on Linux).
        Err(e) => Err(PeerRefused {
            who: format!("a peer without credentials ({e})"),
            allowed: policy.refusal(u32::MAX, None).allowed,
            hint: String::new(),
        }),
    }
}

/// Bound on reading a refused peer's request before answering it.
const REFUSE_READ_LIMIT: usize = 16 * 1024;
const REFUSE_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// Answer a refused peer with a 403 and close. Its request head is read
/// first (bounded in size and time), so the client sees the answer rather
/// than a connection reset mid-write.
async fn refuse(mut stream: tokio::net::UnixStream, refused: PeerRefused) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; REFUSE_READ_LIMIT];
    let mut seen = 0;
    let _ = tokio::time::timeout(REFUSE_READ_TIMEOUT, async {
        while seen < buf.len() {
            match stream.read(&mut buf[seen..]).await {
                Ok(0) | Err(_) => break,
                Ok(n) => seen += n,
            }
            if buf[..seen].windows(4).any(|w| w == b"\r\n\r\n") {
                break;
            }
        }
    })
    .await;
    let body = serde_json::to_vec(&banger_wire::api::ApiError {
        code: banger_wire::api::ErrorCode::Forbidden,
        message: refused.to_string(),
    })
    .unwrap_or_default();
    let head = format!(
        "HTTP/1.1 403 Forbidden\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    let _ = tokio::time::timeout(REFUSE_READ_TIMEOUT, async {
        stream.write_all(head.as_bytes()).await?;
        stream.write_all(&body).await?;
        stream.shutdown().await
    })
    .await;
}

/// Remove `path` if it is a socket nobody answers on. Must be called with the
/// daemon lock held, so no other daemon can be binding it at the same moment.
/// Returns whether a stale socket was removed.
pub fn remove_stale(path: &Path) -> Result<bool, SocketError> {
    match std::os::unix::net::UnixStream::connect(path) {
        Ok(_) => Err(SocketError::InUse {
            path: path.to_owned(),
        }),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
        Err(_) => match std::fs::remove_file(path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
            Err(source) => Err(SocketError::RemoveStale {
                path: path.to_owned(),
                source,
            }),
        },
    }
}

/// Bind the API socket at `path` (replacing a stale one) with the permissions
/// `access` asks for. Needs a Tokio runtime.
pub fn bind(path: &Path, access: &SocketAccess) -> Result<tokio::net::UnixListener, SocketError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|source| SocketError::CreateDir {
            path: dir.to_owned(),
            source,
        })?;
    }
    if remove_stale(path)? {
        tracing::info!(socket = %path.display(), "removed stale socket");
    }
    let listener = tokio::net::UnixListener::bind(path).map_err(|source| SocketError::Bind {
        path: path.to_owned(),
        source,
    })?;
    let mode = match access {
        SocketAccess::OwnerOnly => 0o600,
        SocketAccess::Group(gid) => {
            nix::unistd::chown(path, None, Some(*gid)).map_err(|source| SocketError::Chown {
                path: path.to_owned(),
                gid: gid.as_raw(),
                source,
            })?;
            0o660
        }
    };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(|source| {
        SocketError::Chmod {
            path: path.to_owned(),
            mode,
            source,
        }
    })?;
    Ok(listener)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileTypeExt;

    #[tokio::test]
    async fn stale_socket_is_replaced_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.sock");
        // A socket whose listener is gone: connecting is refused.
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        assert!(path.exists());
        let _l = bind(&path, &SocketAccess::OwnerOnly).unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        assert!(meta.file_type().is_socket());
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        std::os::unix::net::UnixStream::connect(&path).unwrap();
    }

    #[tokio::test]
    async fn live_socket_is_not_taken_over() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.sock");
        let _live = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let err = bind(&path, &SocketAccess::OwnerOnly).unwrap_err();
        assert!(matches!(err, SocketError::InUse { .. }), "{err}");
    }

    #[tokio::test]
    async fn group_access_sets_0660_and_group() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.sock");
        let gid = nix::unistd::getegid();
        let _l = bind(&path, &SocketAccess::Group(gid)).unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o660);
        assert_eq!(std::os::unix::fs::MetadataExt::gid(&meta), gid.as_raw());
    }

    #[test]
    fn unknown_socket_group_is_named_and_unset_means_owner_only() {
        let err = resolve_group(Some("no-such-group-banger")).unwrap_err();
        assert!(err.to_string().contains("no-such-group-banger"), "{err}");
        assert_eq!(resolve_group(None).unwrap(), None);
        assert_eq!(resolve_group(Some("root")).unwrap().unwrap().gid, 0);
    }

    fn policy(group: Option<u32>) -> PeerPolicy {
        PeerPolicy {
            owner_uid: 1500,
            owner_name: "alice".into(),
            group: group.map(|gid| SocketGroup {
                gid,
                name: "banger".into(),
            }),
            group_setting: Some("/etc/banger/install.toml".into()),
        }
    }

    #[test]
    fn owner_and_root_are_admitted_and_a_shared_primary_group_is_not() {
        let p = policy(None);
        // alice's primary group is `users` (100), as on NixOS.
        assert!(p.admits(
            Peer {
                uid: 1500,
                gid: 100
            },
            &[100]
        ));
        assert!(p.admits(Peer { uid: 0, gid: 0 }, &[]));
        // bob shares `users` with alice: that grants nothing.
        assert!(!p.admits(
            Peer {
                uid: 1502,
                gid: 100
            },
            &[100]
        ));
        assert!(!p.admits(
            Peer {
                uid: 1502,
                gid: 1500
            },
            &[1500]
        ));
    }

    #[test]
    fn an_explicit_group_admits_its_members_only() {
        let p = policy(Some(2000));
        assert!(p.admits(
            Peer {
                uid: 1502,
                gid: 100
            },
            &[100, 2000]
        ));
        assert!(p.admits(
            Peer {
                uid: 1503,
                gid: 2000
            },
            &[]
        ));
        assert!(!p.admits(
            Peer {
                uid: 1504,
                gid: 100
            },
            &[100, 27]
        ));
        assert!(p.admits(
            Peer {
                uid: 1500,
                gid: 100
            },
            &[]
        ));
    }

    #[test]
    fn refusals_name_the_peer_and_who_may_connect() {
        let msg = policy(None).refusal(1502, Some("bob".into())).to_string();
        assert_eq!(
            msg,
            "uid 1502 (bob) may not use this bangerd: only its owner alice (uid 1500) and root \
             may connect; an admin can admit a group with socket_group in /etc/banger/install.toml"
        );
        let msg = policy(Some(2000)).refusal(77, None).to_string();
        assert!(msg.starts_with("uid 77 may not use"), "{msg}");
        assert!(
            msg.contains("only its owner alice (uid 1500) and root, and members of group banger may connect; ask an admin"),
            "{msg}"
        );
        let msg = PeerPolicy::per_user(0).refusal(1502, None).to_string();
        assert!(
            msg.contains("only root may connect; run your own banger as yourself"),
            "{msg}"
        );
    }

    #[test]
    fn check_uses_the_user_database_for_memberships() {
        // root's groups include gid 0 on every host; nobody's do not.
        let mut p = policy(Some(0));
        p.owner_uid = 1;
        assert!(p
            .check(Peer {
                uid: 65534,
                gid: 65534
            })
            .is_err());
        let err = policy(None)
            .check(Peer {
                uid: 65534,
                gid: 65534,
            })
            .unwrap_err();
        assert!(err.who.contains("65534"), "{err}");
        assert!(policy(None).check(Peer { uid: 0, gid: 0 }).is_ok());
    }
}
