//! Binding the API socket: stale-socket replacement and permissions.

use std::io::ErrorKind;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use nix::unistd::{Gid, Group};

/// Who may connect to the socket besides its owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SocketAccess {
    /// Mode 0600: only the daemon's user (per-user mode).
    OwnerOnly,
    /// Mode 0660 with this group (system mode).
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

/// Resolve the socket group of a system install: `socket_group` by name, else
/// the owner's primary group.
pub fn system_access(
    socket_group: Option<&str>,
    owner_gid: u32,
) -> Result<SocketAccess, SocketError> {
    match socket_group {
        None => Ok(SocketAccess::Group(Gid::from_raw(owner_gid))),
        Some(name) => match Group::from_name(name) {
            Ok(Some(g)) => Ok(SocketAccess::Group(g.gid)),
            Ok(None) => Err(SocketError::UnknownGroup {
                name: name.to_owned(),
            }),
            Err(source) => Err(SocketError::LookupGroup {
                name: name.to_owned(),
                source,
            }),
        },
    }
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
    fn unknown_socket_group_is_named() {
        let err = system_access(Some("no-such-group-banger"), 0).unwrap_err();
        assert!(err.to_string().contains("no-such-group-banger"), "{err}");
        assert_eq!(
            system_access(None, 42).unwrap(),
            SocketAccess::Group(Gid::from_raw(42))
        );
    }
}
