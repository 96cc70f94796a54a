//! Shared helpers of banger-deploy's integration tests.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// Whether privileged tests must run (CI) rather than skip.
pub fn required() -> bool {
    std::env::var("BANGER_REQUIRE_PRIVILEGED").as_deref() == Ok("1")
}

/// `true` when running as root; otherwise prints why the test is skipped
/// (or panics when privileged tests are required).
pub fn root_or_skip(test: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    assert!(
        !required(),
        "{test}: needs root and BANGER_REQUIRE_PRIVILEGED=1 is set"
    );
    eprintln!("skipping {test}: needs root (chown to the owner's uid)");
    false
}

/// `true` when `tool` is on PATH; otherwise skips like [`root_or_skip`].
pub fn tool_or_skip(test: &str, tool: &str) -> bool {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
        .unwrap_or(false);
    if found {
        return true;
    }
    assert!(
        !required(),
        "{test}: {tool} is not installed and BANGER_REQUIRE_PRIVILEGED=1 is set"
    );
    eprintln!("skipping {test}: {tool} is not installed");
    false
}

/// The owner the staging trees contain.
pub const OWNER: &str = "alice";
pub const OWNER_UID: u32 = 1500;
pub const OWNER_GID: u32 = 1600;
pub const OWNER_GROUP: &str = "devs";

/// A staging root with `etc/passwd` and `etc/group` naming [`OWNER`], plus a
/// directory of fake built binaries (shell scripts that print a version).
pub struct Staging {
    pub dir: tempfile::TempDir,
    pub bins: tempfile::TempDir,
}

impl Staging {
    pub fn new() -> Staging {
        let dir = tempfile::tempdir().unwrap();
        let etc = dir.path().join("etc");
        std::fs::create_dir_all(&etc).unwrap();
        std::fs::write(
            etc.join("passwd"),
            format!(
                "root:x:0:0:root:/root:/bin/sh\n{OWNER}:x:{OWNER_UID}:{OWNER_GID}:Alice:/home/{OWNER}:/bin/bash\n"
            ),
        )
        .unwrap();
        std::fs::write(
            etc.join("group"),
            format!("root:x:0:\n{OWNER_GROUP}:x:{OWNER_GID}:\n"),
        )
        .unwrap();
        let bins = tempfile::tempdir().unwrap();
        for name in [
            "banger",
            "bangerd",
            "bangerd-root",
            "bangerd-build",
            "banger-vsock-agent",
        ] {
            write_bin(
                &bins.path().join(name),
                &format!("{name} {}", banger_wire::VERSION),
            );
        }
        Staging { dir, bins }
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    pub fn options(&self) -> banger_deploy::InstallOptions {
        banger_deploy::InstallOptions {
            owner: OWNER.into(),
            root: Some(self.root().to_owned()),
            bin_src_dir: self.bins.path().to_owned(),
            socket_group: None,
        }
    }
}

/// A shell script printing `version` for `--version`.
pub fn write_bin(path: &Path, version: &str) {
    std::fs::write(path, format!("#!/bin/sh\necho '{version}'\n")).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// Every path under `root` (relative) with its type, mode, owner and a hash
/// of its contents or link target.
pub fn snapshot(root: &Path) -> BTreeMap<PathBuf, String> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, String>) {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap())
            .collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let p = e.path();
            let md = std::fs::symlink_metadata(&p).unwrap();
            let what = if md.is_dir() {
                walk(root, &p, out);
                "dir".to_owned()
            } else if md.file_type().is_symlink() {
                format!("link:{}", std::fs::read_link(&p).unwrap().display())
            } else {
                hex::encode(Sha256::digest(std::fs::read(&p).unwrap()))
            };
            let rel = p.strip_prefix(root).unwrap().to_owned();
            out.insert(
                rel,
                format!("{what} {:o} {}:{}", md.mode() & 0o7777, md.uid(), md.gid()),
            );
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

/// Mode and owner of `path`.
pub fn perms(path: &Path) -> (u32, u32, u32) {
    let md = std::fs::symlink_metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    (md.mode() & 0o7777, md.uid(), md.gid())
}
