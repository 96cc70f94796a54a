//! The SSH key banger uses to log in to its guests.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use ssh_key::{Algorithm, LineEnding, PrivateKey};

/// Why the SSH key could not be found or created.
#[derive(Debug, thiserror::Error)]
pub enum SshKeyError {
    #[error("SSH key path {} has no parent directory", path.display())]
    NoParent { path: PathBuf },
    #[error("cannot create SSH key directory {}: {source}", path.display())]
    CreateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot inspect SSH key {}: {source}", path.display())]
    Stat {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("SSH key {} exists but is not a regular file", path.display())]
    NotAFile { path: PathBuf },
    #[error("cannot read SSH key {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{} is not an OpenSSH private key: {source}", path.display())]
    Parse {
        path: PathBuf,
        source: ssh_key::Error,
    },
    #[error("cannot generate an ed25519 key for {}: {source}", path.display())]
    Generate {
        path: PathBuf,
        source: ssh_key::Error,
    },
    #[error("cannot write {}: {source}", path.display())]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// `<path>.pub`, where the public half of the key at `path` lives.
pub fn public_key_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".pub");
    PathBuf::from(s)
}

/// Make sure an OpenSSH private key exists at `path` and its public half at
/// `<path>.pub`. A missing key is created once: ed25519, mode 0600, missing
/// directories 0700. An existing key (also one in the old
/// `~/.config/banger/ssh/`, or the user's own) is never modified; only a
/// missing `.pub` is rewritten from it. Safe to call from several processes
/// at once: exactly one key wins.
pub fn ensure_ssh_key(path: &Path) -> Result<(), SshKeyError> {
    if exists(path)? {
        return ensure_public_key(path);
    }
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
    let dir = dir.ok_or_else(|| SshKeyError::NoParent {
        path: path.to_owned(),
    })?;
    create_private_dirs(dir)?;

    let mut key = PrivateKey::random(&mut rand::rng(), Algorithm::Ed25519).map_err(|source| {
        SshKeyError::Generate {
            path: path.to_owned(),
            source,
        }
    })?;
    key.set_comment("banger");
    let private = key
        .to_openssh(LineEnding::LF)
        .map_err(|source| SshKeyError::Generate {
            path: path.to_owned(),
            source,
        })?;
    let public = public_line(&key, path)?;

    let tmp_private = TempFile::write(dir, path, "key", private.as_bytes(), 0o600)?;
    let tmp_public = TempFile::write(dir, path, "pub", public.as_bytes(), 0o644)?;
    // A hard link never replaces an existing file, so when two processes race
    // exactly one key lands at `path`; the loser adopts it.
    match fs::hard_link(&tmp_private.path, path) {
        Ok(()) => {
            let pub_path = public_key_path(path);
            fs::rename(&tmp_public.path, &pub_path).map_err(|source| SshKeyError::Write {
                path: pub_path,
                source,
            })?;
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            drop((tmp_private, tmp_public));
            ensure_public_key(path)
        }
        Err(source) => Err(SshKeyError::Write {
            path: path.to_owned(),
            source,
        }),
    }
}

/// The OpenSSH public key line (`ssh-ed25519 AAAA... comment`) of the key at
/// `path`, read from `<path>.pub`.
pub fn read_public_key(path: &Path) -> Result<String, SshKeyError> {
    let pub_path = public_key_path(path);
    let text = fs::read_to_string(&pub_path).map_err(|source| SshKeyError::Read {
        path: pub_path,
        source,
    })?;
    Ok(text.trim().to_owned())
}

fn exists(path: &Path) -> Result<bool, SshKeyError> {
    // Follows symlinks: a key linked from elsewhere is the user's choice.
    match fs::metadata(path) {
        Ok(m) if m.is_file() => Ok(true),
        Ok(_) => Err(SshKeyError::NotAFile {
            path: path.to_owned(),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(source) => Err(SshKeyError::Stat {
            path: path.to_owned(),
            source,
        }),
    }
}

/// Check that the existing key at `path` parses, and write its `.pub` if missing.
fn ensure_public_key(path: &Path) -> Result<(), SshKeyError> {
    let text = fs::read(path).map_err(|source| SshKeyError::Read {
        path: path.to_owned(),
        source,
    })?;
    // The public half is stored in the clear even in passphrase-protected keys.
    let key = PrivateKey::from_openssh(&text).map_err(|source| SshKeyError::Parse {
        path: path.to_owned(),
        source,
    })?;
    let pub_path = public_key_path(path);
    if exists(&pub_path)? {
        return Ok(());
    }
    let public = public_line(&key, path)?;
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = TempFile::write(dir, path, "pub", public.as_bytes(), 0o644)?;
    fs::rename(&tmp.path, &pub_path).map_err(|source| SshKeyError::Write {
        path: pub_path,
        source,
    })
}

fn public_line(key: &PrivateKey, path: &Path) -> Result<String, SshKeyError> {
    let line = key
        .public_key()
        .to_openssh()
        .map_err(|source| SshKeyError::Generate {
            path: path.to_owned(),
            source,
        })?;
    Ok(format!("{line}\n"))
}

/// Create the missing ancestors of `dir` with mode 0700 (umask aside);
/// existing directories are left as they are.
fn create_private_dirs(dir: &Path) -> Result<(), SshKeyError> {
    let missing: Vec<&Path> = dir
        .ancestors()
        .take_while(|d| !d.as_os_str().is_empty() && !d.exists())
        .collect();
    for d in missing.into_iter().rev() {
        match fs::DirBuilder::new().mode(0o700).create(d) {
            Ok(()) => {
                fs::set_permissions(d, fs::Permissions::from_mode(0o700)).map_err(|source| {
                    SshKeyError::CreateDir {
                        path: d.to_owned(),
                        source,
                    }
                })?
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && d.is_dir() => {}
            Err(source) => {
                return Err(SshKeyError::CreateDir {
                    path: d.to_owned(),
                    source,
                })
            }
        }
    }
    Ok(())
}

/// A uniquely named file beside the key, removed on drop unless renamed away.
struct TempFile {
    path: PathBuf,
}

impl TempFile {
    fn write(
        dir: &Path,
        key: &Path,
        tag: &str,
        data: &[u8],
        mode: u32,
    ) -> Result<TempFile, SshKeyError> {
        let name = key
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let nonce: u64 = rand::random();
        let path = dir.join(format!(
            ".{name}.{tag}.{}.{nonce:016x}.tmp",
            std::process::id()
        ));
        let err = |source| SshKeyError::Write {
            path: path.clone(),
            source,
        };
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&path)
            .map_err(err)?;
        let tmp = TempFile { path: path.clone() };
        // The umask may have cleared bits of `mode`; the key must be exactly 0600.
        f.set_permissions(fs::Permissions::from_mode(mode))
            .map_err(err)?;
        f.write_all(data).map_err(err)?;
        f.sync_all().map_err(err)?;
        Ok(tmp)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        // Already renamed or linked-and-unneeded: either way it must go.
        let _ = fs::remove_file(&self.path);
    }
}
