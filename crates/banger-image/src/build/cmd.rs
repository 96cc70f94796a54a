//! Running the external tools of a build: output lines become progress
//! reports, and a failure carries the command and its last output lines.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

use super::{BuildError, MIN_E2FSPROGS};
use crate::progress::{Phase, Progress, ProgressFn};

/// Lines of output kept for an error message.
const TAIL_LINES: usize = 40;

/// Run `cmd` to completion, forwarding its output lines as progress
/// prefixed with `what` (the tool's name, also the error's).
pub(crate) fn run(
    cmd: &mut Command,
    what: &'static str,
    progress: ProgressFn<'_>,
) -> Result<String, BuildError> {
    let command = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| BuildError::CommandStart {
            tool: what,
            command: command.clone(),
            source,
        })?;
    let tail: Arc<Mutex<VecDeque<String>>> = Arc::default();
    let stdout = child.stdout.take().expect("piped");
    let stderr = child.stderr.take().expect("piped");
    let mut captured = String::new();
    std::thread::scope(|s| {
        let t = tail.clone();
        let err_thread = s.spawn(move || {
            let mut lines = Vec::new();
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                push_tail(&t, &line);
                lines.push(line);
            }
            lines
        });
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            push_tail(&tail, &line);
            progress(Progress::note(Phase::Build, format!("{what}: {line}")));
            captured.push_str(&line);
            captured.push('\n');
        }
        for line in err_thread.join().unwrap_or_default() {
            progress(Progress::note(Phase::Build, format!("{what}: {line}")));
        }
    });
    let status = child.wait().map_err(|source| BuildError::CommandWait {
        tool: what,
        command: command.clone(),
        source,
    })?;
    if status.success() {
        Ok(captured)
    } else {
        let tail = tail
            .lock()
            .map(|t| t.iter().cloned().collect::<Vec<_>>().join("\n"))
            .unwrap_or_default();
        Err(BuildError::Command {
            tool: what,
            command,
            status,
            tail,
        })
    }
}

fn push_tail(tail: &Mutex<VecDeque<String>>, line: &str) {
    if let Ok(mut t) = tail.lock() {
        if t.len() == TAIL_LINES {
            t.pop_front();
        }
        t.push_back(line.to_owned());
    }
}

/// The absolute path of `tool` on `$PATH` (plus the sbin directories,
/// which a non-login root shell may lack).
pub(crate) fn find_tool(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/local/sbin", "/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
}

/// Require `tool`, explaining which package provides it.
pub(crate) fn require_tool(
    tool: &'static str,
    package: &'static str,
    why: &'static str,
) -> Result<PathBuf, BuildError> {
    find_tool(tool).ok_or(BuildError::MissingTool { tool, package, why })
}

/// Parse `mke2fs 1.47.2 (1-Jan-2025)`.
pub(crate) fn parse_e2fsprogs_version(text: &str) -> Option<(u32, u32, u32)> {
    let word = text
        .split_whitespace()
        .skip_while(|w| *w != "mke2fs")
        .nth(1)?;
    let mut it = word.split('.').map(|p| {
        p.chars()
            .take_while(char::is_ascii_digit)
            .collect::<String>()
    });
    let major = it.next()?.parse().ok()?;
    let minor = it.next()?.parse().ok()?;
    let patch = it.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    Some((major, minor, patch))
}

/// `mkfs.ext4`, checked to be new enough for `-d TARBALL`.
pub(crate) fn require_mkfs() -> Result<PathBuf, BuildError> {
    let why = "make a reproducible ext4 from a tarball (mkfs.ext4 -d TARBALL)";
    let mkfs = require_tool("mkfs.ext4", "e2fsprogs", why)?;
    let out =
        Command::new(&mkfs)
            .arg("-V")
            .output()
            .map_err(|source| BuildError::CommandStart {
                tool: "mkfs.ext4 -V",
                command: mkfs.display().to_string(),
                source,
            })?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let found = parse_e2fsprogs_version(&text);
    let (a, b, c) = MIN_E2FSPROGS;
    match found {
        Some(v) if v >= MIN_E2FSPROGS => Ok(mkfs),
        _ => Err(BuildError::OldTool {
            tool: "mkfs.ext4",
            found: found
                .map(|(x, y, z)| format!("{x}.{y}.{z}"))
                .unwrap_or_else(|| text.trim().to_owned()),
            need: format!(
                "{a}.{b}.{c} (Debian 12: apt-get install -t bookworm-backports e2fsprogs)"
            ),
            why,
        }),
    }
}

/// Run one `debugfs` request against an ext4 image (read-only, no mount,
/// no root needed) and return its output.
pub fn debugfs(image: &Path, request: &str) -> Result<String, BuildError> {
    let tool = require_tool("debugfs", "e2fsprogs", "inspect ext4 images")?;
    let out = Command::new(tool)
        .arg("-R")
        .arg(request)
        .arg(image)
        .stdin(Stdio::null())
        .output()
        .map_err(super::io_err("run debugfs on", image))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    // debugfs exits 0 even when the request fails; its errors go to
    // stderr after the version banner.
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| !l.starts_with("debugfs "))
        .collect();
    if !out.status.success() || !errors.is_empty() {
        return Err(BuildError::Debugfs {
            request: request.to_owned(),
            image: image.to_owned(),
            status: out.status,
            errors: errors.join("\n"),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn e2fsprogs_versions_parse() {
        assert_eq!(
            parse_e2fsprogs_version(
                "mke2fs 1.47.2 (1-Jan-2025)\n\tUsing EXT2FS Library version 1.47.2"
            ),
            Some((1, 47, 2))
        );
        assert_eq!(
            parse_e2fsprogs_version("mke2fs 1.47.0 (5-Feb-2023)"),
            Some((1, 47, 0))
        );
        assert_eq!(
            parse_e2fsprogs_version("mke2fs 1.46.6-rc1 (1-Feb-2023)"),
            Some((1, 46, 6))
        );
        assert_eq!(parse_e2fsprogs_version("garbage"), None);
    }

    #[test]
    fn failing_commands_report_their_output() {
        let err = run(
            Command::new("sh").args(["-c", "echo out; echo oops >&2; exit 3"]),
            "demo",
            &crate::progress::ignore,
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("demo failed") && err.contains("oops") && err.contains("exit status: 3"),
            "{err}"
        );
        let ok = run(
            Command::new("sh").args(["-c", "echo a; echo b"]),
            "demo",
            &crate::progress::ignore,
        )
        .unwrap();
        assert_eq!(ok, "a\nb\n");
    }
}
