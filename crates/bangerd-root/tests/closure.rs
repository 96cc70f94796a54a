//! The two binaries that run as root (the host's helper and the guest agent)
//! keep small dependency closures (docs/ARCHITECTURE.md, "Dependency
//! closures"). The measure is the number of distinct lines of
//! `cargo tree -p PACKAGE -e normal --prefix none`, the same command the
//! docs quote; `cargo tree --offline` needs no network once the lock file's
//! crates are fetched, which a build of this test already did.

use std::collections::BTreeSet;
use std::process::Command;

/// The root helper's ceiling: the measured closure (the target is
/// at most 110).
/// The image builder is `bangerd-build`, not the helper: a dependency on
/// banger-image here fails this. Lower this as it shrinks; never raise it
/// without saying why there.
/// 102 → 103: banger-fs (the shared atomic-write and /proc helpers; no
/// dependency of its own besides thiserror).
/// 103 → 104: base64, for the session_io log chunks in banger-wire
/// (the attach frame codec and its tokio-util stay behind the `attach` feature).
const ROOT_HELPER_MAX: usize = 104;

/// The guest agent's ceiling (it is copied onto every VM's config drive).
/// 43 → 44: banger-fs, as for the helper. 44 → 45: base64, as for the helper.
const GUEST_AGENT_MAX: usize = 45;

/// Distinct lines of `cargo tree -p package -e normal --prefix none`.
fn closure(package: &str) -> BTreeSet<String> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let manifest = concat!(env!("CARGO_MANIFEST_DIR"), "/../../Cargo.toml");
    let out = Command::new(&cargo)
        .args(["tree", "--offline", "--locked", "--manifest-path", manifest])
        .args(["-p", package, "-e", "normal", "--prefix", "none"])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cargo:?} tree: {e}"));
    assert!(
        out.status.success(),
        "cargo tree -p {package} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .expect("cargo tree prints UTF-8")
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_owned)
        .collect()
}

fn check(package: &str, max: usize) {
    let lines = closure(package);
    assert!(
        lines.iter().any(|l| l.starts_with(&format!("{package} v"))),
        "cargo tree -p {package} does not list {package} itself: {lines:#?}"
    );
    assert!(
        lines.len() <= max,
        "{package}'s dependency closure grew to {} lines (at most {max}); \
         see docs/ARCHITECTURE.md, \"Dependency closures\":\n{}",
        lines.len(),
        lines.into_iter().collect::<Vec<_>>().join("\n")
    );
}

#[test]
fn root_helper_closure_stays_small() {
    check("bangerd-root", ROOT_HELPER_MAX);
}

#[test]
fn guest_agent_closure_stays_small() {
    check("banger-vsock-agent", GUEST_AGENT_MAX);
}

/// The daemon reaches the helper and the agent through their client crates,
/// never by linking the other processes' code.
#[test]
fn the_daemon_links_neither_the_helper_nor_the_agent() {
    let lines = closure("bangerd");
    for other in ["bangerd-root v", "banger-vsock-agent v"] {
        assert!(
            !lines.iter().any(|l| l.starts_with(other)),
            "bangerd depends on {other}…; use banger-helper-client / banger-agent-client"
        );
    }
    for client in ["banger-helper-client v", "banger-agent-client v"] {
        assert!(
            lines.iter().any(|l| l.starts_with(client)),
            "bangerd no longer lists {client}… (was the client moved again?)"
        );
    }
}
