//! Finding programs and asking their versions.

use std::ffi::OsStr;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::unistd::AccessFlags;
use serde::{Deserialize, Serialize};

use super::ProbeError;

/// How long a `--version` run may take before it is killed.
const VERSION_TIMEOUT: Duration = Duration::from_secs(10);

/// Directories appended to `$PATH` when missing from it: Debian leaves the
/// sbin directories out of ordinary users' PATH, yet `mkfs.ext4`, `nft` and
/// `ip` live there and run fine (or run in the root helper).
const SBIN_DIRS: [&str; 3] = ["/usr/local/sbin", "/usr/sbin", "/sbin"];

/// The e2fsprogs release whose `mkfs.ext4 -d TARBALL` honours
/// `SOURCE_DATE_EPOCH`, needed for reproducible image builds.
pub const REPRODUCIBLE_E2FSPROGS: Version = Version(1, 47, 2);

/// A host program later commands run, with the Debian package providing it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostTool {
    pub name: &'static str,
    pub package: &'static str,
    /// What banger uses it for (shown by doctor).
    pub purpose: &'static str,
    /// Whether daily VM use needs it (doctor fails instead of warning).
    pub required: bool,
}

/// Every host program banger runs, in the order doctor lists them.
pub const HOST_TOOLS: &[HostTool] = &[
    HostTool {
        name: "mkfs.ext4",
        package: "e2fsprogs",
        purpose: "creates VM work disks and image root filesystems",
        required: true,
    },
    HostTool {
        name: "ssh",
        package: "openssh-client",
        purpose: "`banger vm ssh` connects to guests with it",
        required: true,
    },
    HostTool {
        name: "ssh-keygen",
        package: "openssh-client",
        purpose: "inspects keys and banger's known_hosts",
        required: false,
    },
    HostTool {
        name: "nft",
        package: "nftables",
        purpose: "the root helper sets up guest NAT with it",
        required: true,
    },
    HostTool {
        name: "ip",
        package: "iproute2",
        purpose: "reads host routes (doctor) and helps debugging guest networking",
        required: false,
    },
    HostTool {
        name: "mmdebstrap",
        package: "mmdebstrap",
        purpose: "builds images locally from their recipes",
        required: false,
    },
    HostTool {
        name: "zstd",
        package: "zstd",
        purpose: "unpacks kernel payloads when building kernel bundles",
        required: false,
    },
];

/// `$PATH` (as given) followed by the sbin directories it lacks. Empty
/// entries are skipped rather than meaning the current directory.
pub fn search_path_from(path_var: Option<&OsStr>) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = path_var
        .map(|v| {
            std::env::split_paths(v)
                .filter(|p| !p.as_os_str().is_empty())
                .collect()
        })
        .unwrap_or_default();
    for sbin in SBIN_DIRS {
        if !dirs.iter().any(|d| d == Path::new(sbin)) {
            dirs.push(PathBuf::from(sbin));
        }
    }
    dirs
}

fn executable_file(path: &Path) -> Result<(), String> {
    let meta = std::fs::metadata(path).map_err(|e| e.to_string())?;
    if !meta.is_file() {
        return Err("not a regular file".to_owned());
    }
    nix::unistd::access(path, AccessFlags::X_OK).map_err(|e| format!("not executable: {e}"))
}

/// Find `name`: the configured path when given (a bare name is looked up in
/// `search_path`), else the first executable `name` in `search_path`.
pub fn locate_program(
    name: &str,
    configured: Option<&Path>,
    search_path: &[PathBuf],
) -> Result<PathBuf, ProbeError> {
    let lookup = |wanted: &OsStr| {
        search_path
            .iter()
            .map(|d| d.join(wanted))
            .find(|p| executable_file(p).is_ok())
    };
    let not_in_path = |program: String| ProbeError::NotInPath { program };
    match configured {
        Some(path) if path.components().count() > 1 || path.is_absolute() => {
            executable_file(path).map_err(|reason| ProbeError::ConfiguredUnusable {
                program: name.to_owned(),
                path: path.to_owned(),
                reason,
            })?;
            Ok(path.to_owned())
        }
        Some(bare) => {
            lookup(bare.as_os_str()).ok_or_else(|| not_in_path(bare.to_string_lossy().into_owned()))
        }
        None => lookup(OsStr::new(name)).ok_or_else(|| not_in_path(name.to_owned())),
    }
}

/// Run `program args...` (stdin closed, `LC_ALL=C`) and return the first
/// non-empty line of its stdout, else of its stderr (mke2fs and ssh print
/// their version there). The exit status is ignored when a line came out:
/// `mkfs.ext4 -V` exits non-zero.
pub fn program_version(program: &Path, args: &[&str]) -> Result<String, ProbeError> {
    let mut child = Command::new(program)
        .args(args)
        .env("LC_ALL", "C")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| ProbeError::Spawn {
            program: program.to_owned(),
            source,
        })?;
    // Read both pipes on threads so a chatty program cannot block on a full pipe.
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut p) = pipe {
                // A read error just truncates what we parse.
                let _ = p.read_to_end(&mut buf);
            }
            buf
        })
    };
    let out = drain(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let err = drain(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let deadline = Instant::now() + VERSION_TIMEOUT;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
            Ok(None) => {
                // Not reaped yet, so the pid is still ours to kill.
                let _ = child.kill();
                let _ = child.wait();
                return Err(ProbeError::Timeout {
                    program: program.to_owned(),
                    secs: VERSION_TIMEOUT.as_secs(),
                });
            }
            Err(source) => {
                return Err(ProbeError::Spawn {
                    program: program.to_owned(),
                    source,
                })
            }
        }
    };
    let stdout = out.join().unwrap_or_default();
    let stderr = err.join().unwrap_or_default();
    [stdout, stderr]
        .iter()
        .find_map(|bytes| {
            String::from_utf8_lossy(bytes)
                .lines()
                .map(str::trim)
                .find(|l| !l.is_empty())
                .map(str::to_owned)
        })
        .ok_or(ProbeError::NoOutput {
            program: program.to_owned(),
            status,
        })
}

/// A `major.minor.patch` version (missing parts are 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Version(pub u32, pub u32, pub u32);

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.0, self.1, self.2)
    }
}

impl Version {
    /// Parse the leading `N[.N[.N]]` of `s`, ignoring any suffix (`-rc1`, `+ds`).
    pub fn parse_prefix(s: &str) -> Option<Version> {
        let mut parts = [0u32; 3];
        let mut rest = s;
        for (i, part) in parts.iter_mut().enumerate() {
            let digits = rest
                .find(|c: char| !c.is_ascii_digit())
                .unwrap_or(rest.len());
            if digits == 0 {
                if i == 0 {
                    return None;
                }
                break;
            }
            *part = rest[..digits].parse().ok()?;
            rest = &rest[digits..];
            match rest.strip_prefix('.') {
                Some(r) if r.starts_with(|c: char| c.is_ascii_digit()) => rest = r,
                _ => break,
            }
        }
        Some(Version(parts[0], parts[1], parts[2]))
    }
}

/// The version in `firecracker --version`'s first line (`Firecracker v1.7.0`).
pub fn parse_firecracker_version(line: &str) -> Option<String> {
    let mut words = line.split_whitespace();
    if !words.next()?.eq_ignore_ascii_case("firecracker") {
        return None;
    }
    let v = words.next()?;
    let v = v.strip_prefix('v').unwrap_or(v);
    Version::parse_prefix(v).map(|_| v.to_owned())
}

/// The version in `qemu-system-x86_64 --version`'s first line
/// (`QEMU emulator version 10.0.2 (Debian 1:10.0.2+ds-2)`).
pub fn parse_qemu_version(line: &str) -> Option<String> {
    let rest = line.trim().strip_prefix("QEMU emulator version ")?;
    let v = rest.split_whitespace().next()?;
    Version::parse_prefix(v).map(|_| v.to_owned())
}

/// The e2fsprogs version in `mkfs.ext4 -V`'s first line (`mke2fs 1.47.2 (1-Jan-2025)`).
pub fn parse_e2fsprogs_version(line: &str) -> Option<Version> {
    let mut words = line.split_whitespace();
    if words.next()? != "mke2fs" {
        return None;
    }
    Version::parse_prefix(words.next()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn version_lines_parse() {
        assert_eq!(
            parse_firecracker_version("Firecracker v1.7.0").as_deref(),
            Some("1.7.0")
        );
        assert_eq!(
            parse_firecracker_version("Firecracker v1.12.0-dev").as_deref(),
            Some("1.12.0-dev")
        );
        assert_eq!(
            parse_firecracker_version("firecracker 1.4.1").as_deref(),
            Some("1.4.1")
        );
        assert_eq!(parse_firecracker_version("Cloud Hypervisor v40.0"), None);
        assert_eq!(parse_firecracker_version("Firecracker"), None);
        assert_eq!(
            parse_qemu_version(
                "QEMU emulator version 10.0.2 (Debian 1:10.0.2+ds-2+deb13u1~bpo12+1)"
            )
            .as_deref(),
            Some("10.0.2")
        );
        assert_eq!(
            parse_qemu_version("QEMU emulator version 7.2.15").as_deref(),
            Some("7.2.15")
        );
        assert_eq!(parse_qemu_version("qemu-img version 10.0.2"), None);
        assert_eq!(
            parse_e2fsprogs_version("mke2fs 1.47.2 (1-Jan-2025)"),
            Some(Version(1, 47, 2))
        );
        assert_eq!(
            parse_e2fsprogs_version("mke2fs 1.47.0 (5-Feb-2023)"),
            Some(Version(1, 47, 0))
        );
        assert_eq!(
            parse_e2fsprogs_version("mke2fs 1.46.6-rc1 (1-Feb-2023)"),
            Some(Version(1, 46, 6))
        );
        assert_eq!(parse_e2fsprogs_version("Usage: mkfs.ext4 ..."), None);
    }

    #[test]
    fn versions_order_numerically() {
        assert!(Version(1, 47, 0) < REPRODUCIBLE_E2FSPROGS);
        assert!(Version(1, 47, 10) > REPRODUCIBLE_E2FSPROGS);
        assert!(Version(2, 0, 0) > REPRODUCIBLE_E2FSPROGS);
        assert_eq!(Version::parse_prefix("1.47"), Some(Version(1, 47, 0)));
        assert_eq!(Version::parse_prefix("9.2p1"), Some(Version(9, 2, 0)));
        assert_eq!(Version::parse_prefix("v1"), None);
        assert_eq!(REPRODUCIBLE_E2FSPROGS.to_string(), "1.47.2");
    }

    #[test]
    fn search_path_appends_missing_sbin_dirs_once() {
        let p = search_path_from(Some(OsStr::new("/usr/bin::/usr/sbin")));
        assert_eq!(
            p,
            ["/usr/bin", "/usr/sbin", "/usr/local/sbin", "/sbin"]
                .map(PathBuf::from)
                .to_vec()
        );
        assert_eq!(search_path_from(None).len(), 3);
    }

    fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        p
    }

    #[test]
    fn locate_finds_executables_in_order_and_honours_configured_paths() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        std::fs::write(a.path().join("tool"), "not executable").unwrap();
        let in_b = script(b.path(), "tool", "exit 0");
        let path = vec![a.path().to_owned(), b.path().to_owned()];
        assert_eq!(locate_program("tool", None, &path).unwrap(), in_b);
        let err = locate_program("absent", None, &path)
            .unwrap_err()
            .to_string();
        assert!(err.contains("absent") && err.contains("PATH"), "{err}");
        // An explicit path must itself be usable; PATH is not consulted.
        let err = locate_program("tool", Some(&a.path().join("tool")), &path).unwrap_err();
        assert!(err.to_string().contains("not executable"), "{err}");
        let err = locate_program("tool", Some(Path::new("/nonexistent/tool")), &path).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/tool"), "{err}");
        // A bare configured name is looked up in the search path.
        assert_eq!(
            locate_program("x", Some(Path::new("tool")), &path).unwrap(),
            in_b
        );
    }

    #[test]
    fn program_version_takes_the_first_line_of_stdout_else_stderr() {
        // `sh -c` rather than freshly written scripts: exec'ing a file just
        // written races with forks in parallel tests (ETXTBSY).
        let sh = Path::new("/bin/sh");
        let out = program_version(sh, &["-c", "echo; echo 'Firecracker v1.7.0'; echo second"]);
        assert_eq!(out.unwrap(), "Firecracker v1.7.0");
        let err = program_version(sh, &["-c", "echo 'mke2fs 1.47.2 (1-Jan-2025)' >&2; exit 1"]);
        assert_eq!(err.unwrap(), "mke2fs 1.47.2 (1-Jan-2025)");
        let e = program_version(sh, &["-c", "exit 3"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("/bin/sh") && e.contains('3'), "{e}");
        let d = tempfile::tempdir().unwrap();
        let e = program_version(&d.path().join("missing"), &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("missing"), "{e}");
    }

    #[test]
    fn real_mkfs_ext4_version_parses_when_installed() {
        let path = search_path_from(std::env::var_os("PATH").as_deref());
        let Ok(mkfs) = locate_program("mkfs.ext4", None, &path) else {
            banger_test_support::skip("mkfs.ext4 is not installed");
            return;
        };
        let line = program_version(&mkfs, &["-V"]).unwrap();
        assert!(parse_e2fsprogs_version(&line).is_some(), "{line}");
    }
}
