//! Layer tarballs and OCI layouts written by hand for the tests.
#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use sha2::{Digest, Sha256};

pub fn sha(b: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(b)))
}

/// One tar entry.
pub enum E<'a> {
    Dir(&'a str, u32),
    DirOwned(&'a str, u32, u64),
    File(&'a str, u32, &'a [u8]),
    FileOwned(&'a str, u32, u64, &'a [u8]),
    FileX(&'a str, u32, &'a [u8], &'a str, &'a [u8]),
    Sym(&'a str, &'a str),
    Hard(&'a str, &'a str),
    Char(&'a str),
}

/// The uncompressed tar of `entries`.
pub fn tar(entries: &[E<'_>]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let mut h = tar::Header::new_ustar();
        h.set_mtime(1_700_000_000);
        h.set_uid(0);
        h.set_gid(0);
        let (path, data): (&str, &[u8]) = match e {
            E::Dir(p, m) | E::DirOwned(p, m, _) => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(*m);
                if let E::DirOwned(_, _, id) = e {
                    h.set_uid(*id);
                    h.set_gid(*id);
                }
                (p, b"")
            }
            E::File(p, m, d) | E::FileOwned(p, m, _, d) | E::FileX(p, m, d, _, _) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(*m);
                if let E::FileOwned(_, _, id, _) = e {
                    h.set_uid(*id);
                    h.set_gid(*id);
                }
                if let E::FileX(_, _, _, k, v) = e {
                    let key = format!("SCHILY.xattr.{k}");
                    b.append_pax_extensions([(key.as_str(), *v)]).unwrap();
                }
                (p, d)
            }
            E::Sym(p, t) | E::Hard(p, t) => {
                h.set_entry_type(if matches!(e, E::Sym(..)) {
                    tar::EntryType::Symlink
                } else {
                    tar::EntryType::Link
                });
                h.set_mode(0o777);
                let link = &mut h.as_old_mut().linkname;
                link[..t.len()].copy_from_slice(t.as_bytes());
                (p, b"")
            }
            E::Char(p) => {
                h.set_entry_type(tar::EntryType::Char);
                h.set_mode(0o666);
                (p, b"")
            }
        };
        // Raw names: the tests need "../x" and "/abs", which set_path refuses.
        let name = &mut h.as_old_mut().name;
        name[..path.len()].copy_from_slice(path.as_bytes());
        h.set_size(data.len() as u64);
        h.set_cksum();
        b.append(&h, data).unwrap();
    }
    b.into_inner().unwrap()
}

pub fn gzip(raw: &[u8]) -> Vec<u8> {
    let mut z = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    z.write_all(raw).unwrap();
    z.finish().unwrap()
}

/// A layer: (blob, digest, diff_id).
pub struct Layer {
    pub blob: Vec<u8>,
    pub digest: String,
    pub diff_id: String,
}

pub fn layer(entries: &[E<'_>]) -> Layer {
    let raw = tar(entries);
    let blob = gzip(&raw);
    Layer {
        digest: sha(&blob),
        diff_id: sha(&raw),
        blob,
    }
}

/// Write an OCI image layout at `dir` holding one image tagged `tag`.
pub fn oci_layout(dir: &Path, layers: &[&Layer], tag: &str) {
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    let put = |b: &[u8]| {
        let d = sha(b);
        std::fs::write(blobs.join(&d[7..]), b).unwrap();
        d
    };
    for l in layers {
        put(&l.blob);
    }
    let diff_ids: Vec<&str> = layers.iter().map(|l| l.diff_id.as_str()).collect();
    let config = serde_json::json!({
        "created": "2025-01-01T00:00:00Z",
        "architecture": "amd64",
        "os": "linux",
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    });
    let config = serde_json::to_vec(&config).unwrap();
    let config_digest = put(&config);
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": config_digest, "size": config.len()},
        "layers": layers.iter().map(|l| serde_json::json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
            "digest": l.digest, "size": l.blob.len()})).collect::<Vec<_>>(),
    });
    let manifest = serde_json::to_vec(&manifest).unwrap();
    let md = put(&manifest);
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": md, "size": manifest.len(),
            "annotations": {"org.opencontainers.image.ref.name": tag}}],
    });
    std::fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
}

/// `debugfs -R CMD IMG` output.
pub fn debugfs(img: &Path, cmd: &str) -> String {
    let out = std::process::Command::new(which("debugfs"))
        .args(["-R", cmd])
        .arg(img)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A tool from PATH or the sbin directories.
pub fn which(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from(name))
}

/// Whether `name` is installed; when the privileged gates are set, a
/// missing tool fails the test instead of skipping it.
pub fn require(name: &str, package: &str) -> bool {
    if which(name).is_file() {
        return true;
    }
    if std::env::var_os("BANGER_REQUIRE_PRIVILEGED").is_some() {
        panic!("{name} is missing: apt-get install {package} (scripts/deps.sh)");
    }
    eprintln!("skipping: {name} not installed (apt-get install {package})");
    false
}

/// The files an image needs to pass banger's inspection: systemd as init,
/// a shell, sshd.
pub fn bootable_base() -> Vec<E<'static>> {
    vec![
        E::Dir("bin", 0o755),
        E::File("bin/sh", 0o755, b"#!sh"),
        E::Dir("lib", 0o755),
        E::Dir("lib/systemd", 0o755),
        E::File("lib/systemd/systemd", 0o755, b"systemd"),
        E::Dir("lib/systemd/system", 0o755),
        E::File(
            "lib/systemd/system/systemd-networkd.service",
            0o644,
            b"[Unit]",
        ),
        E::Dir("sbin", 0o755),
        E::Sym("sbin/init", "/lib/systemd/systemd"),
        E::Dir("usr", 0o755),
        E::Dir("usr/sbin", 0o755),
        E::File("usr/sbin/sshd", 0o755, b"sshd"),
        E::Dir("etc", 0o755),
        E::Dir("etc/ssh", 0o755),
        E::File("etc/ssh/ssh_host_ed25519_key", 0o600, b"SECRET"),
    ]
}

/// Debian's docker-registry on a free loopback port, with its own storage,
/// config and (optionally) htpasswd file; killed on drop.
pub struct Registry {
    child: Child,
    port: u16,
    log: PathBuf,
    _dir: tempfile::TempDir,
    creds: Option<(String, String)>,
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Registry {
    pub fn start(auth: Option<(&str, &str)>) -> Registry {
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut auth_yaml = String::new();
        if let Some((u, p)) = auth {
            let out = Command::new(which("htpasswd"))
                .args(["-Bbn", u, p])
                .output()
                .unwrap();
            assert!(out.status.success());
            std::fs::write(dir.path().join("htpasswd"), &out.stdout).unwrap();
            auth_yaml = format!(
                "auth:\n  htpasswd:\n    realm: banger-test\n    path: {}\n",
                dir.path().join("htpasswd").display()
            );
        }
        let config = format!(
            "version: 0.1\nlog:\n  level: info\n  accesslog:\n    disabled: false\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n{auth_yaml}",
            dir.path().join("storage").display()
        );
        let cfg = dir.path().join("config.yml");
        std::fs::write(&cfg, config).unwrap();
        let log = dir.path().join("registry.log");
        let child = Command::new(which("docker-registry"))
            .arg("serve")
            .arg(&cfg)
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::File::create(dir.path().join("stderr.log")).unwrap())
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let reg = Registry {
            child,
            port,
            log,
            _dir: dir,
            creds: auth.map(|(u, p)| (u.to_owned(), p.to_owned())),
        };
        for _ in 0..200 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return reg;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        panic!("docker-registry did not listen on {port}");
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Push an OCI layout of `layers` as `repo:tag` with skopeo.
    pub fn push(&self, layers: &[&Layer], repo: &str, tag: &str) {
        let dir = tempfile::tempdir().unwrap();
        oci_layout(dir.path(), layers, tag);
        let mut cmd = Command::new(which("skopeo"));
        cmd.args(["--insecure-policy", "copy", "-q", "--dest-tls-verify=false"]);
        if let Some((u, p)) = &self.creds {
            cmd.arg(format!("--dest-creds={u}:{p}"));
        }
        let out = cmd
            .arg(format!("oci:{}:{tag}", dir.path().display()))
            .arg(format!("docker://{}/{repo}:{tag}", self.addr()))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "skopeo copy: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// GET requests for one blob, from the registry's access log (stderr
    /// carries the app log, stdout the access log; both are searched).
    pub fn blob_gets(&self, digest: &str) -> usize {
        let mut text = std::fs::read_to_string(&self.log).unwrap_or_default();
        text += &std::fs::read_to_string(self._dir.path().join("stderr.log")).unwrap_or_default();
        text.lines()
            .filter(|l| l.contains("\"GET /v2/") && l.contains(&format!("/blobs/{digest}")))
            .count()
    }
}
