//! Who a VM is: its id, name, MAC address and SSH host key, and the line
//! that pins that host key in banger's own `known_hosts` file.
//!
//! The host generates every VM's SSH host key, so the `known_hosts` entry
//! exists before the guest first boots and nothing is ever trusted on first
//! use.

use std::fs::{self, File};
use std::io;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use banger_host::lock::FileLock;
use banger_wire::guest::SshHostKey;
use rand::RngExt;
use russh::keys::ssh_key::{Algorithm, LineEnding, PrivateKey};
use sha2::{Digest, Sha256};

/// Longest DNS label, and so the longest VM name.
pub const MAX_NAME_LEN: usize = 63;

/// Errors about a VM's identity, each naming the input or file involved.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("invalid VM name {name:?}: {reason}")]
    InvalidName { name: String, reason: String },
    #[error("cannot generate an SSH host key for {comment:?}: {source}")]
    KeyGeneration {
        comment: String,
        source: russh::keys::ssh_key::Error,
    },
    #[error("invalid SSH public key line for VM {name:?}: {reason}")]
    InvalidPublicKey { name: String, reason: String },
    #[error("known_hosts path {} has no parent directory", path.display())]
    NoParent { path: PathBuf },
    #[error(transparent)]
    Write(#[from] banger_fs::AtomicWriteError),
    #[error("cannot {op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error(transparent)]
    Lock(#[from] banger_host::lock::LockError),
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> IdentityError {
    let path = path.to_owned();
    move |source| IdentityError::Io { op, path, source }
}

/// Check that `name` is a DNS label: 1-63 characters of `a-z`, `0-9` and
/// `-`, not starting or ending with `-` (`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`).
/// The name becomes the guest's hostname and `<name>.vm` in banger's DNS.
pub fn validate_vm_name(name: &str) -> Result<(), IdentityError> {
    let fail = |reason: String| {
        Err(IdentityError::InvalidName {
            name: name.to_owned(),
            reason,
        })
    };
    if name.is_empty() {
        return fail("must not be empty".into());
    }
    if name.len() > MAX_NAME_LEN {
        return fail(format!(
            "is {} characters long; a DNS label has at most {MAX_NAME_LEN}",
            name.len()
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !matches!(c, 'a'..='z' | '0'..='9' | '-'))
    {
        let hint = if c.is_ascii_uppercase() {
            " (use lowercase)"
        } else {
            ""
        };
        return fail(format!(
            "contains {c:?}; only lowercase letters a-z, digits and '-' are allowed{hint}"
        ));
    }
    if name.starts_with('-') || name.ends_with('-') {
        return fail("must not start or end with '-'".into());
    }
    Ok(())
}

/// A fresh VM id: 32 lowercase hex digits (128 random bits). Ids are never
/// reused, so they name per-VM directories and database keys safely.
pub fn new_vm_id() -> String {
    let bytes: [u8; 16] = rand::rng().random();
    hex::encode(bytes)
}

pub use banger_wire::vmm::MacAddr;

/// The stable MAC of VM `vm_id`: `02` (locally administered, unicast)
/// followed by the first five bytes of `sha256(vm_id)`. The same id always
/// gives the same address, so a restarted VM keeps its MAC.
pub fn vm_mac(vm_id: &str) -> MacAddr {
    let digest = Sha256::digest(vm_id.as_bytes());
    let mut mac = [0u8; 6];
    mac[0] = 0x02;
    mac[1..].copy_from_slice(&digest[..5]);
    MacAddr(mac)
}

/// Generate a VM's SSH host key: ed25519, in OpenSSH formats, with
/// `comment` (e.g. `root@<name>`) on both halves.
pub fn generate_host_key(comment: &str) -> Result<SshHostKey, IdentityError> {
    let gen_err = |source| IdentityError::KeyGeneration {
        comment: comment.to_owned(),
        source,
    };
    let mut key = PrivateKey::random(&mut rand::rng(), Algorithm::Ed25519).map_err(gen_err)?;
    key.set_comment(comment);
    let private = key.to_openssh(LineEnding::LF).map_err(gen_err)?;
    let public = key.public_key().to_openssh().map_err(gen_err)?;
    Ok(SshHostKey {
        private_openssh: private.to_string(),
        public_openssh: public,
    })
}

/// The host patterns banger pins a VM's key under: `name`, `name.vm` and the
/// VM's address.
pub fn host_patterns(name: &str, ip: Ipv4Addr) -> [String; 3] {
    [name.to_owned(), format!("{name}.vm"), ip.to_string()]
}

/// banger's own `known_hosts` file (never the user's `~/.ssh/known_hosts`).
/// Each VM has one line, `name,name.vm,IP <key type> <base64>`; every change
/// rewrites the file under an exclusive lock (`<file>.lock`) to a temporary
/// file that is renamed over it, mode 0600, so readers (`ssh -o
/// UserKnownHostsFile=...`) never see a half-written file and concurrent
/// updates for different VMs do not lose each other's lines.
#[derive(Debug, Clone)]
pub struct KnownHosts {
    path: PathBuf,
}

impl KnownHosts {
    /// The known_hosts file at `path` (created on the first write).
    pub fn new(path: impl Into<PathBuf>) -> KnownHosts {
        KnownHosts { path: path.into() }
    }

    /// Where the file lives.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Pin `public_openssh` (`ssh-ed25519 AAAA... [comment]`) for VM `name`
    /// at `ip`. Lines naming `name`, `name.vm` or `ip` are replaced (an
    /// address or name reused from a deleted VM must not keep its old key);
    /// all other lines are kept as they are.
    pub fn set(&self, name: &str, ip: Ipv4Addr, public_openssh: &str) -> Result<(), IdentityError> {
        validate_vm_name(name)?;
        let mut fields = public_openssh.split_whitespace();
        let (Some(kind), Some(blob)) = (fields.next(), fields.next()) else {
            return Err(IdentityError::InvalidPublicKey {
                name: name.to_owned(),
                reason: format!("expected \"<type> <base64>\", got {public_openssh:?}"),
            });
        };
        if let Err(e) = russh::keys::ssh_key::PublicKey::from_openssh(&format!("{kind} {blob}")) {
            return Err(IdentityError::InvalidPublicKey {
                name: name.to_owned(),
                reason: e.to_string(),
            });
        }
        let patterns = host_patterns(name, ip);
        let line = format!("{} {kind} {blob}", patterns.join(","));
        self.rewrite(|lines| {
            lines.retain(|l| !line_matches(l, &patterns));
            lines.push(line);
        })
    }

    /// Drop every line naming VM `name` (or `name.vm`, or `ip` when given).
    /// Removing what is not there is not an error.
    pub fn remove(&self, name: &str, ip: Option<Ipv4Addr>) -> Result<(), IdentityError> {
        let mut patterns = vec![name.to_owned(), format!("{name}.vm")];
        patterns.extend(ip.map(|ip| ip.to_string()));
        if !self.path.exists() {
            return Ok(());
        }
        self.rewrite(|lines| lines.retain(|l| !line_matches(l, &patterns)))
    }

    /// The key part (`<type> <base64>`) pinned for host `pattern`, if any.
    pub fn lookup(&self, pattern: &str) -> Result<Option<String>, IdentityError> {
        let text = match fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err("read", &self.path)(e)),
        };
        Ok(text
            .lines()
            .find(|l| line_matches(l, &[pattern.to_owned()]))
            .and_then(|l| l.split_once(char::is_whitespace))
            .map(|(_, key)| key.trim().to_owned()))
    }

    fn rewrite(&self, edit: impl FnOnce(&mut Vec<String>)) -> Result<(), IdentityError> {
        let dir = self
            .path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .ok_or_else(|| IdentityError::NoParent {
                path: self.path.clone(),
            })?;
        fs::create_dir_all(dir).map_err(io_err("create directory", dir))?;
        let _lock = self.lock()?;
        let mut lines: Vec<String> = match fs::read_to_string(&self.path) {
            Ok(text) => text.lines().map(str::to_owned).collect(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(io_err("read", &self.path)(e)),
        };
        edit(&mut lines);
        let mut text = lines.join("\n");
        if !text.is_empty() {
            text.push('\n');
        }
        banger_fs::write_atomic(
            &self.path,
            &mut text.as_bytes(),
            banger_fs::WriteOptions::mode(0o600),
        )?;
        Ok(())
    }

    fn lock(&self) -> Result<FileLock, IdentityError> {
        let mut lock_path = self.path.as_os_str().to_owned();
        lock_path.push(".lock");
        Ok(FileLock::exclusive(Path::new(&lock_path))?)
    }
}

/// Whether a known_hosts line's host field names one of `patterns`.
fn line_matches(line: &str, patterns: &[String]) -> bool {
    let line = line.trim_start();
    if line.is_empty() || line.starts_with('#') {
        return false;
    }
    let mut fields = line.split_whitespace();
    let mut hosts = fields.next().unwrap_or("");
    // `@cert-authority` / `@revoked` markers come before the host field.
    if hosts.starts_with('@') {
        hosts = fields.next().unwrap_or("");
    }
    hosts
        .split(',')
        .any(|h| patterns.iter().any(|p| p.as_str() == h))
}

pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn dns_label_names() {
        for ok in ["a", "web", "web-1", "0", "a1b2", &"x".repeat(63)] {
            validate_vm_name(ok).unwrap_or_else(|e| panic!("{ok:?}: {e}"));
        }
        let cases = [
            ("", "must not be empty"),
            ("-web", "start or end"),
            ("web-", "start or end"),
            ("Web", "use lowercase"),
            ("we_b", "'_'"),
            ("web.vm", "'.'"),
            ("wéb", "'é'"),
            ("a b", "' '"),
        ];
        for (bad, want) in cases {
            let err = validate_vm_name(bad).unwrap_err().to_string();
            assert!(err.contains(&format!("{bad:?}")), "{err}");
            assert!(err.contains(want), "{bad:?}: {err}");
        }
        let long = "x".repeat(64);
        let err = validate_vm_name(&long).unwrap_err().to_string();
        assert!(err.contains("64 characters"), "{err}");
    }

    #[test]
    fn vm_ids_are_hex_and_distinct() {
        let a = new_vm_id();
        let b = new_vm_id();
        assert_eq!(a.len(), 32);
        assert!(a
            .chars()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
        assert_ne!(a, b);
    }

    #[test]
    fn mac_is_stable_local_unicast() {
        let id = "3f2a0c9e5b7d41e8a6c2d9f0b1e4a7c3";
        let mac = vm_mac(id);
        assert_eq!(mac, vm_mac(id));
        assert_ne!(mac, vm_mac("another-id"));
        assert!(mac.is_locally_administered());
        assert!(mac.is_unicast());
        let text = mac.to_string();
        assert!(text.starts_with("02:"), "{text}");
        assert_eq!(text.len(), 17);
        // The tail is the start of sha256(id), so it can be checked by hand.
        let digest = hex::encode(Sha256::digest(id.as_bytes()));
        let tail: String = text[3..].split(':').collect();
        assert_eq!(tail, digest[..10]);
    }

    #[test]
    fn host_key_is_ed25519_and_halves_match() {
        let key = generate_host_key("root@web").unwrap();
        assert!(key
            .private_openssh
            .starts_with("-----BEGIN OPENSSH PRIVATE KEY-----"));
        assert!(key.public_openssh.starts_with("ssh-ed25519 AAAA"));
        assert!(key.public_openssh.ends_with(" root@web"));
        let private = PrivateKey::from_openssh(&key.private_openssh).unwrap();
        let public = russh::keys::ssh_key::PublicKey::from_openssh(&key.public_openssh).unwrap();
        assert_eq!(private.public_key().key_data(), public.key_data());
        let other = generate_host_key("root@web").unwrap();
        assert_ne!(other.public_openssh, key.public_openssh);
    }

    #[test]
    fn known_hosts_line_matching() {
        let p = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(line_matches(
            "web,web.vm,10.0.0.2 ssh-ed25519 AAAA",
            &p(&["web"])
        ));
        assert!(line_matches(
            "web,web.vm,10.0.0.2 ssh-ed25519 AAAA",
            &p(&["10.0.0.2"])
        ));
        assert!(!line_matches("web2,web2.vm ssh-ed25519 AAAA", &p(&["web"])));
        assert!(!line_matches(
            "10.0.0.20 ssh-ed25519 AAAA",
            &p(&["10.0.0.2"])
        ));
        assert!(!line_matches("# web ssh-ed25519 AAAA", &p(&["web"])));
        assert!(line_matches("@revoked web ssh-ed25519 AAAA", &p(&["web"])));
        assert!(!line_matches("", &p(&["web"])));
    }

    fn keygen_find(file: &Path, host: &str) -> Option<String> {
        let out = std::process::Command::new("ssh-keygen")
            .args(["-F", host, "-f"])
            .arg(file)
            .output()
            .expect("ssh-keygen runs (package openssh-client)");
        // ssh-keygen -F exits 1 when the host is not found.
        if !out.status.success() {
            return None;
        }
        let text = String::from_utf8(out.stdout).unwrap();
        let found: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(found.len(), 1, "{host}: {text}");
        let (_, key) = found[0].split_once(' ').unwrap();
        Some(key.to_owned())
    }

    fn key_part(public: &str) -> String {
        public
            .split_whitespace()
            .take(2)
            .collect::<Vec<_>>()
            .join(" ")
    }

    #[test]
    fn known_hosts_round_trip_with_ssh_keygen() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("ssh/known_hosts");
        let kh = KnownHosts::new(&file);
        kh.remove("ghost", None).unwrap();
        assert!(!file.exists(), "remove on a missing file creates nothing");

        let web = generate_host_key("root@web").unwrap();
        let db = generate_host_key("root@db").unwrap();
        let ip_web: Ipv4Addr = "172.30.0.2".parse().unwrap();
        let ip_db: Ipv4Addr = "172.30.0.3".parse().unwrap();
        kh.set("web", ip_web, &web.public_openssh).unwrap();
        // A line banger did not write survives every rewrite.
        let mut text = fs::read_to_string(&file).unwrap();
        text.push_str("# kept comment\nother.example ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKeep\n");
        fs::write(&file, text).unwrap();
        kh.set("db", ip_db, &db.public_openssh).unwrap();

        for host in ["web", "web.vm", "172.30.0.2"] {
            assert_eq!(
                keygen_find(&file, host),
                Some(key_part(&web.public_openssh)),
                "{host}"
            );
        }
        assert_eq!(
            keygen_find(&file, "db.vm"),
            Some(key_part(&db.public_openssh))
        );
        assert_eq!(
            kh.lookup("web.vm").unwrap(),
            Some(key_part(&web.public_openssh))
        );
        let mode = fs::metadata(&file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);

        // web gets a new key and db's old address: db's line for that address goes too.
        let web2 = generate_host_key("root@web").unwrap();
        kh.set("web", ip_db, &web2.public_openssh).unwrap();
        assert_eq!(
            keygen_find(&file, "web"),
            Some(key_part(&web2.public_openssh))
        );
        assert_eq!(
            keygen_find(&file, "172.30.0.3"),
            Some(key_part(&web2.public_openssh))
        );
        assert_eq!(keygen_find(&file, "172.30.0.2"), None);
        assert_eq!(keygen_find(&file, "db"), None);
        assert!(keygen_find(&file, "other.example").is_some());

        kh.remove("web", Some(ip_db)).unwrap();
        assert_eq!(keygen_find(&file, "web"), None);
        assert_eq!(keygen_find(&file, "web.vm"), None);
        let text = fs::read_to_string(&file).unwrap();
        assert!(text.contains("# kept comment\n"), "{text}");
        assert!(text.contains("other.example "), "{text}");
        let leftovers: Vec<_> = fs::read_dir(file.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.starts_with(".known_hosts."))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }

    #[test]
    fn known_hosts_concurrent_updates_keep_every_line() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("known_hosts");
        let keys: Vec<SshHostKey> = (0..8)
            .map(|i| generate_host_key(&format!("root@vm{i}")).unwrap())
            .collect();
        std::thread::scope(|s| {
            for (i, key) in keys.iter().enumerate() {
                let kh = KnownHosts::new(&file);
                s.spawn(move || {
                    let ip = Ipv4Addr::new(10, 9, 0, 2 + i as u8);
                    kh.set(&format!("vm{i}"), ip, &key.public_openssh).unwrap();
                });
            }
        });
        for (i, key) in keys.iter().enumerate() {
            assert_eq!(
                keygen_find(&file, &format!("vm{i}.vm")),
                Some(key_part(&key.public_openssh))
            );
        }
    }

    #[test]
    fn known_hosts_rejects_bad_input() {
        let dir = tempfile::tempdir().unwrap();
        let kh = KnownHosts::new(dir.path().join("known_hosts"));
        let ip = Ipv4Addr::new(10, 0, 0, 2);
        let err = kh.set("web", ip, "not-a-key").unwrap_err().to_string();
        assert!(err.contains("\"web\""), "{err}");
        let err = kh
            .set("web", ip, "ssh-ed25519 AAAAnotbase64!!")
            .unwrap_err()
            .to_string();
        assert!(err.contains("invalid SSH public key"), "{err}");
        let key = generate_host_key("x").unwrap();
        let err = kh.set("Bad_Name", ip, &key.public_openssh).unwrap_err();
        assert!(matches!(err, IdentityError::InvalidName { .. }), "{err}");
        assert!(!kh.path().exists());
    }
}
