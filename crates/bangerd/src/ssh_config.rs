//! The OpenSSH client config bangerd keeps for VM names
//! ([`Layout::ssh_config`], normally `~/.config/banger/ssh_config`).
//!
//! It holds one `Host NAME NAME.vm` block per VM (with `HostName` its
//! address while it has one, so `ssh NAME.vm` works without DNS routing) and
//! a `Host *.vm` catch-all, each with `User root`, banger's key and banger's
//! pinned `known_hosts` under `StrictHostKeyChecking yes`. The file is
//! rewritten (temp file + rename, never half-written) whenever a VM is
//! created, deleted, started or stopped; `banger ssh-config --install`
//! includes it from `~/.ssh/config`.

use std::net::Ipv4Addr;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use banger_host::paths::Layout;

use crate::context::Daemon;

/// Why the ssh_config could not be written.
#[derive(Debug, thiserror::Error)]
pub enum SshConfigError {
    #[error("cannot {op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Write(#[from] banger_fs::AtomicWriteError),
    #[error("cannot list VMs for {path}: {source}")]
    State {
        path: PathBuf,
        source: Box<banger_state::StateError>,
    },
}

/// One VM as the ssh_config names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshHost {
    pub name: String,
    /// The VM's address while it holds a lease.
    pub ip: Option<Ipv4Addr>,
}

/// The files every block points at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshFiles {
    /// banger's private key (`ssh_key_path`).
    pub identity: PathBuf,
    /// banger's pinned `known_hosts`.
    pub known_hosts: PathBuf,
}

/// Serializes rewrites: concurrent VM operations each refresh the file.
static WRITE_LOCK: Mutex<()> = Mutex::new(());

/// A path as an ssh_config argument: `%` escaped (ssh expands tokens in
/// these options) and double-quoted when it has blanks.
fn arg(path: &Path) -> String {
    let s = path.display().to_string().replace('%', "%%");
    if s.contains(char::is_whitespace) {
        format!("\"{s}\"")
    } else {
        s
    }
}

/// The ssh_config text for `hosts`.
pub fn render(hosts: &[SshHost], files: &SshFiles) -> String {
    let common = format!(
        "    User root\n    IdentityFile {}\n    IdentitiesOnly yes\n    UserKnownHostsFile {}\n    \
         GlobalKnownHostsFile /dev/null\n    StrictHostKeyChecking yes\n",
        arg(&files.identity),
        arg(&files.known_hosts)
    );
    let mut out = String::from(
        "# Written by bangerd on every VM change; edits are lost.\n\
         # Include it from ~/.ssh/config with `banger ssh-config --install`.\n",
    );
    for h in hosts {
        out.push_str(&format!("\nHost {0} {0}.vm\n", h.name));
        if let Some(ip) = h.ip {
            out.push_str(&format!("    HostName {ip}\n"));
        }
        out.push_str(&common);
    }
    out.push_str("\nHost *.vm\n");
    out.push_str(&common);
    out
}

/// Write `text` to `path` atomically (mode 0600, parent made 0700 when
/// missing); an unchanged file is left alone.
pub fn write(path: &Path, text: &str) -> Result<(), SshConfigError> {
    let io = |op: &'static str, p: &Path| {
        let path = p.to_owned();
        move |source| SshConfigError::Io { op, path, source }
    };
    if std::fs::read_to_string(path).ok().as_deref() == Some(text) {
        return Ok(());
    }
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io("create", dir))?;
    banger_fs::write_atomic(
        path,
        &mut text.as_bytes(),
        banger_fs::WriteOptions::mode(0o600),
    )?;
    Ok(())
}

/// Rewrite the ssh_config of `layout` for the VMs in the database.
pub fn sync(state: &Daemon) -> Result<(), SshConfigError> {
    let path = state.layout.ssh_config();
    let _guard = WRITE_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let vms = state
        .db
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .list_vms()
        .map_err(|source| SshConfigError::State {
            path: path.clone(),
            source: Box::new(source),
        })?;
    let hosts: Vec<SshHost> = vms
        .into_iter()
        .map(|vm| SshHost {
            name: vm.name,
            ip: vm.ip,
        })
        .collect();
    let files = files(&state.layout, &state.vms.config().ssh_key_path.value);
    write(&path, &render(&hosts, &files))
}

/// The key and known_hosts files of `layout` with key `identity`.
pub fn files(layout: &Layout, identity: &Path) -> SshFiles {
    SshFiles {
        identity: identity.to_owned(),
        known_hosts: crate::vm::paths::known_hosts(layout),
    }
}

/// [`sync`], logging a failure: a stale ssh_config must never fail a VM
/// operation that itself succeeded.
pub fn refresh(state: &Daemon) {
    if let Err(e) = sync(state) {
        tracing::warn!("cannot update the ssh_config: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_has_a_block_per_vm_and_the_wildcard() {
        let files = SshFiles {
            identity: "/h/.local/state/banger/ssh/id_ed25519".into(),
            known_hosts: "/h/my state/%known".into(),
        };
        let text = render(
            &[
                SshHost {
                    name: "web".into(),
                    ip: Some(Ipv4Addr::new(172, 16, 0, 2)),
                },
                SshHost {
                    name: "db".into(),
                    ip: None,
                },
            ],
            &files,
        );
        assert!(text.contains("\nHost web web.vm\n    HostName 172.16.0.2\n    User root\n"));
        assert!(text.contains("\nHost db db.vm\n    User root\n"));
        assert!(text.contains("\nHost *.vm\n    User root\n"));
        assert!(text.contains("    UserKnownHostsFile \"/h/my state/%%known\"\n"));
        assert!(text.contains("    IdentityFile /h/.local/state/banger/ssh/id_ed25519\n"));
        assert_eq!(text.matches("StrictHostKeyChecking yes").count(), 3);
    }

    #[test]
    fn write_is_atomic_private_and_skips_unchanged() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cfg/banger/ssh_config");
        write(&path, "a\n").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "a\n");
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        let ino = std::os::unix::fs::MetadataExt::ino(&meta);
        write(&path, "a\n").unwrap();
        let same = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&path).unwrap());
        assert_eq!(ino, same, "an unchanged file is not rewritten");
        write(&path, "b\n").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "b\n");
        let left: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left.len(), 1, "no temp files left: {left:?}");
    }
}
