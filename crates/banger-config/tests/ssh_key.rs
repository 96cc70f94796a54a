//! SSH key creation with real files and the real `ssh-keygen`.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use banger_config::{
    ensure_ssh_key, parse_with, public_key_path, read_public_key, EnvOverrides, Provenance,
    SshKeyError,
};

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
}

/// `ssh-keygen -l -f PATH` (fingerprint); panics with its stderr on failure.
fn fingerprint(p: &Path) -> String {
    let out = Command::new("ssh-keygen")
        .arg("-l")
        .arg("-f")
        .arg(p)
        .output()
        .expect("ssh-keygen must be installed (Debian package openssh-client)");
    assert!(
        out.status.success(),
        "ssh-keygen -l -f {} failed: {}",
        p.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    // "256 SHA256:... comment (ED25519)": the hash identifies the key.
    text.split_whitespace().nth(1).unwrap().to_owned()
}

#[test]
fn default_key_is_created_once_with_private_permissions() {
    let home = tempfile::tempdir().unwrap();
    let cfg = parse_with(
        "",
        Path::new("c.toml"),
        home.path(),
        &EnvOverrides::default(),
    )
    .unwrap();
    let key = cfg.ssh_key_path.value.clone();
    assert_eq!(key, home.path().join(".local/state/banger/ssh/id_ed25519"));
    assert!(!key.exists());

    ensure_ssh_key(&key).unwrap();
    let pub_path = public_key_path(&key);
    assert_eq!(
        pub_path,
        home.path().join(".local/state/banger/ssh/id_ed25519.pub")
    );
    assert_eq!(mode(&key), 0o600);
    assert_eq!(mode(&pub_path), 0o644);
    for dir in [
        ".local",
        ".local/state",
        ".local/state/banger",
        ".local/state/banger/ssh",
    ] {
        assert_eq!(mode(&home.path().join(dir)), 0o700, "{dir}");
    }
    let private_text = std::fs::read_to_string(&key).unwrap();
    assert!(private_text.starts_with("-----BEGIN OPENSSH PRIVATE KEY-----"));
    let public = read_public_key(&key).unwrap();
    assert!(public.starts_with("ssh-ed25519 "), "{public}");
    assert!(public.ends_with(" banger"), "{public}");

    // ssh-keygen reads both halves and they are the same key.
    let fp = fingerprint(&key);
    assert!(fp.starts_with("SHA256:"), "{fp}");
    assert_eq!(fingerprint(&pub_path), fp);

    // Idempotent: a second call changes nothing.
    let public_text = std::fs::read_to_string(&pub_path).unwrap();
    ensure_ssh_key(&key).unwrap();
    assert_eq!(std::fs::read_to_string(&key).unwrap(), private_text);
    assert_eq!(std::fs::read_to_string(&pub_path).unwrap(), public_text);
    // No temporary files are left behind.
    let names: Vec<_> = std::fs::read_dir(key.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    let mut names = names;
    names.sort();
    assert_eq!(names, ["id_ed25519", "id_ed25519.pub"]);
}

#[test]
fn configured_key_in_the_old_config_dir_keeps_working() {
    let home = tempfile::tempdir().unwrap();
    let old_dir = home.path().join(".config/banger/ssh");
    std::fs::create_dir_all(&old_dir).unwrap();
    let old_key = old_dir.join("id_ed25519");
    let status = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "old-banger", "-f"])
        .arg(&old_key)
        .status()
        .expect("ssh-keygen must be installed (Debian package openssh-client)");
    assert!(status.success());
    let before_private = std::fs::read(&old_key).unwrap();
    let before_public = std::fs::read(public_key_path(&old_key)).unwrap();
    let fp = fingerprint(&old_key);

    for spelling in [
        "~/.config/banger/ssh/id_ed25519".to_owned(),
        old_key.display().to_string(),
    ] {
        let src = format!("ssh_key_path = \"{spelling}\"\n");
        let cfg = parse_with(
            &src,
            Path::new("c.toml"),
            home.path(),
            &EnvOverrides::default(),
        )
        .unwrap();
        assert_eq!(cfg.ssh_key_path.value, old_key);
        assert_eq!(cfg.ssh_key_path.provenance, Provenance::Config);
        ensure_ssh_key(&cfg.ssh_key_path.value).unwrap();
        assert_eq!(std::fs::read(&old_key).unwrap(), before_private);
        assert_eq!(
            std::fs::read(public_key_path(&old_key)).unwrap(),
            before_public
        );
        assert_eq!(fingerprint(&old_key), fp);
        assert!(read_public_key(&old_key).unwrap().ends_with(" old-banger"));
    }
    assert!(!home
        .path()
        .join(".local/state/banger/ssh/id_ed25519")
        .exists());
}

#[test]
fn missing_public_half_is_rewritten_from_the_private_key() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("k");
    ensure_ssh_key(&key).unwrap();
    let public = read_public_key(&key).unwrap();
    std::fs::remove_file(public_key_path(&key)).unwrap();
    ensure_ssh_key(&key).unwrap();
    assert_eq!(read_public_key(&key).unwrap(), public);
    assert_eq!(fingerprint(&public_key_path(&key)), fingerprint(&key));
}

#[test]
fn concurrent_first_use_creates_exactly_one_key() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("ssh/id_ed25519");
    let results: Vec<Result<(), SshKeyError>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8).map(|_| s.spawn(|| ensure_ssh_key(&key))).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for r in results {
        r.unwrap();
    }
    assert_eq!(fingerprint(&public_key_path(&key)), fingerprint(&key));
    assert_eq!(std::fs::read_dir(key.parent().unwrap()).unwrap().count(), 2);
}

#[test]
fn bad_existing_paths_are_errors_naming_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let as_dir = dir.path().join("is-a-dir");
    std::fs::create_dir(&as_dir).unwrap();
    let err = ensure_ssh_key(&as_dir).unwrap_err();
    assert!(matches!(err, SshKeyError::NotAFile { .. }), "{err:?}");
    assert!(err.to_string().contains("is-a-dir"));

    let garbage = dir.path().join("garbage");
    std::fs::write(&garbage, "not a key\n").unwrap();
    let err = ensure_ssh_key(&garbage).unwrap_err();
    assert!(matches!(err, SshKeyError::Parse { .. }), "{err:?}");
    assert!(err.to_string().contains("garbage"));
    assert_eq!(std::fs::read_to_string(&garbage).unwrap(), "not a key\n");

    // A file where a directory must be.
    let blocker = dir.path().join("blocker");
    std::fs::write(&blocker, "").unwrap();
    let err = ensure_ssh_key(&blocker.join("id")).unwrap_err();
    assert!(err.to_string().contains("blocker"), "{err}");
}
