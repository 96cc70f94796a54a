//! Helpers shared by the unit tests.

use std::path::Path;
use std::process::Command;

/// A real ext4 image of 4 MiB made by mke2fs, labelled `label` unless empty,
/// populated from `tree` when given.
pub(crate) fn mkfs(path: &Path, label: &str) {
    mkfs_from(path, label, None);
}

/// Like [`mkfs`], with the contents of `tree` copied in (`mkfs.ext4 -d`).
pub(crate) fn mkfs_from(path: &Path, label: &str, tree: Option<&Path>) {
    let mut cmd = Command::new("mkfs.ext4");
    cmd.args(["-q", "-F"]);
    if !label.is_empty() {
        cmd.args(["-L", label]);
    }
    if let Some(tree) = tree {
        cmd.arg("-d").arg(tree);
    }
    let status = cmd.arg(path).arg("4M").status().expect("run mkfs.ext4");
    assert!(status.success(), "mkfs.ext4 failed for {}", path.display());
}

/// Whether a test that needs root may run; panics when root is required
/// (`BANGER_REQUIRE_PRIVILEGED=1`) but missing, prints why it skips otherwise.
pub(crate) fn privileged(test: &str) -> bool {
    // Mounts and loop devices.
    banger_test_support::Gate::named(test).root().check()
}
