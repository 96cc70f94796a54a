//! The installed units checked by systemd itself: `systemd-analyze verify`
//! and the `systemd-analyze security` exposure score recorded in
//! docs/security.md.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;

/// Stage an install plus the distro's base units (verify resolves
/// `network.target`, `multi-user.target`, ... from the staging root).
fn staged() -> Staging {
    let s = Staging::new();
    banger_deploy::install(&s.options()).unwrap();
    let dst = s.root().join("usr/lib/systemd");
    std::fs::create_dir_all(&dst).unwrap();
    let st = Command::new("cp")
        .args(["-a", "/usr/lib/systemd/system"])
        .arg(&dst)
        .status()
        .unwrap();
    assert!(st.success(), "copying the base units failed");
    s
}

fn analyze(root: &Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new("systemd-analyze")
        .args(args)
        .arg(format!("--root={}", root.display()))
        .args(["bangerd.service", "bangerd-root.service"])
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn units_pass_systemd_analyze_verify() {
    let t = "units_pass_systemd_analyze_verify";
    if !root_or_skip(t) || !tool_or_skip(t, "systemd-analyze") {
        return;
    }
    let s = staged();
    let (ok, stdout, stderr) = analyze(s.root(), &["verify"]);
    assert!(ok, "systemd-analyze verify failed:\n{stdout}\n{stderr}");
    let complaints: Vec<&str> = stderr.lines().filter(|l| l.contains("banger")).collect();
    assert!(
        complaints.is_empty(),
        "verify warned about banger's units:\n{stderr}"
    );
}

/// `(unit, score, level)` from `systemd-analyze security` output.
fn exposure(stdout: &str) -> Vec<(String, f64, String)> {
    stdout
        .lines()
        .filter_map(|l| {
            l.trim_start_matches('→')
                .trim()
                .strip_prefix("Overall exposure level for ")
        })
        .map(|rest| {
            let (unit, score) = rest.split_once(": ").unwrap();
            let mut words = score.split_whitespace();
            let value: f64 = words.next().unwrap().parse().unwrap();
            (unit.to_owned(), value, words.next().unwrap().to_owned())
        })
        .collect()
}

#[test]
fn exposure_is_at_most_medium_and_matches_docs() {
    let t = "exposure_is_at_most_medium_and_matches_docs";
    if !root_or_skip(t) || !tool_or_skip(t, "systemd-analyze") {
        return;
    }
    let s = staged();
    let mut scores = Vec::new();
    for unit in ["bangerd.service", "bangerd-root.service"] {
        let out = Command::new("systemd-analyze")
            .args(["security", "--offline=yes", "--no-pager"])
            .arg(format!("--root={}", s.root().display()))
            .arg(unit)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let found = exposure(&stdout);
        assert_eq!(found.len(), 1, "{unit}: no exposure line in\n{stdout}");
        scores.extend(found);
    }
    for (unit, score, level) in &scores {
        assert!(
            ["PERFECT", "SAFE", "OK", "MEDIUM"].contains(&level.as_str()) && *score < 7.5,
            "{unit} is rated {score} {level}; the target is at most MEDIUM"
        );
    }
    // docs/security.md records the scores measured with Debian 12's systemd.
    let version = Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .unwrap();
    if String::from_utf8_lossy(&version.stdout).starts_with("systemd 252 ") {
        let docs = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/security.md"),
        )
        .unwrap();
        for (unit, score, level) in &scores {
            let row = format!("| `{unit}` | {score:.1} {level} |");
            assert!(
                docs.contains(&row),
                "docs/security.md must record {row} (update it)"
            );
        }
    }
}
