//! The gates every banger test that needs more than a process goes through:
//! root, a tool on `PATH`, a device or file, a host feature, and the opt-in
//! suites (`BANGER_BOOT_TESTS`, `BANGER_BUILD_TESTS`).
//!
//! A test asks once, at its start:
//!
//! ```no_run
//! if !banger_test_support::Gate::new().root().tool("ip").check() {
//!     return;
//! }
//! ```
//!
//! - A missing requirement prints `skipping TEST: WHY` on stderr and the test
//!   returns, unless `BANGER_REQUIRE_PRIVILEGED=1` (CI, `scripts/test.sh`):
//!   then it panics naming what is missing, so CI cannot pass by skipping.
//! - An opt-in suite that is not enabled skips with the variable to set, in
//!   every mode (CI sets them; a plain `cargo test` stays fast).
//! - A host feature this CI host is known to lack is declared in
//!   `BANGER_HOST_LACKS` (comma-separated, e.g. `vsock-loopback`); only those
//!   skip in strict mode, and they say so.
//!
//! Dev-dependency only: nothing here belongs in a binary.

use std::path::{Path, PathBuf};

/// `BANGER_REQUIRE_PRIVILEGED=1`: every gate must pass (CI).
pub const REQUIRE_ENV: &str = "BANGER_REQUIRE_PRIVILEGED";
/// Opt-in for tests that boot real guests under QEMU.
pub const BOOT_TESTS_ENV: &str = "BANGER_BOOT_TESTS";
/// Opt-in for tests that build images and kernels from recipes.
pub const BUILD_TESTS_ENV: &str = "BANGER_BUILD_TESTS";
/// Host features declared absent on this host (comma-separated).
pub const HOST_LACKS_ENV: &str = "BANGER_HOST_LACKS";

/// Whether missing requirements fail instead of skipping.
pub fn strict() -> bool {
    std::env::var(REQUIRE_ENV).as_deref() == Ok("1")
}

/// Whether the effective user is root.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// `name` found in a `PATH` directory (as the tests will run it).
pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Whether `feature` is declared absent on this host in `BANGER_HOST_LACKS`.
pub fn host_lacks(feature: &str) -> bool {
    std::env::var(HOST_LACKS_ENV)
        .unwrap_or_default()
        .split(',')
        .any(|f| f.trim() == feature)
}

/// The requirements of one test, collected and then checked at once so the
/// message names everything that is missing.
#[derive(Debug)]
#[must_use = "a gate does nothing until .check()"]
pub struct Gate {
    test: String,
    /// Missing requirements: fail in strict mode.
    missing: Vec<String>,
    /// Opt-in suites not enabled: always skip.
    not_enabled: Vec<String>,
    /// Host features declared absent: skip even in strict mode.
    declared_absent: Vec<String>,
}

impl Default for Gate {
    fn default() -> Self {
        Gate::new()
    }
}

impl Gate {
    /// A gate for the running test (named after the test thread, which
    /// libtest names after the test).
    pub fn new() -> Gate {
        let name = std::thread::current()
            .name()
            .filter(|n| *n != "main")
            .unwrap_or("this test")
            .to_owned();
        Gate::named(name)
    }

    /// A gate for `test` (when the thread name is not the test's).
    pub fn named(test: impl Into<String>) -> Gate {
        Gate {
            test: test.into(),
            missing: Vec::new(),
            not_enabled: Vec::new(),
            declared_absent: Vec::new(),
        }
    }

    /// Needs root (network namespaces, loop devices, mounts, chown).
    pub fn root(mut self) -> Gate {
        if !is_root() {
            self.missing.push("not running as root".to_owned());
        }
        self
    }

    /// Needs `tool` on `PATH`.
    pub fn tool(mut self, tool: &str) -> Gate {
        if which(tool).is_none() {
            self.missing.push(format!("`{tool}` is not on PATH"));
        }
        self
    }

    /// Needs every one of `tools` on `PATH`.
    pub fn tools(self, tools: &[&str]) -> Gate {
        tools.iter().fold(self, |g, t| g.tool(t))
    }

    /// Needs `path` to exist; `hint` says how to get it (a package, a
    /// `cargo build`).
    pub fn file(mut self, path: &Path, hint: &str) -> Gate {
        if !path.exists() {
            self.missing
                .push(format!("{} is missing ({hint})", path.display()));
        }
        self
    }

    /// Needs a host feature probed by `present`. When it is absent and this
    /// host declares it absent in `BANGER_HOST_LACKS`, the test skips even in
    /// strict mode; otherwise absence is a missing requirement.
    pub fn host_feature(mut self, feature: &str, present: bool, why: &str) -> Gate {
        if !present {
            if host_lacks(feature) {
                self.declared_absent
                    .push(format!("{feature} ({why}; declared in {HOST_LACKS_ENV})"));
            } else {
                self.missing.push(format!(
                    "{feature}: {why} (set {HOST_LACKS_ENV}={feature} if this host cannot have it)"
                ));
            }
        }
        self
    }

    /// Part of the booting suite (`BANGER_BOOT_TESTS=1`).
    pub fn boot_tests(self) -> Gate {
        self.opt_in(
            BOOT_TESTS_ENV,
            "boot real guests under QEMU (minutes of CPU)",
        )
    }

    /// Part of the build suite (`BANGER_BUILD_TESTS=1`).
    pub fn build_tests(self) -> Gate {
        self.opt_in(
            BUILD_TESTS_ENV,
            "build images and kernels (root, the Debian mirror, minutes)",
        )
    }

    fn opt_in(mut self, var: &str, what: &str) -> Gate {
        if std::env::var(var).as_deref() != Ok("1") {
            self.not_enabled.push(format!("set {var}=1 to {what}"));
        }
        self
    }

    /// Whether the test may run. Prints why not on stderr and returns
    /// false; panics instead when a requirement is missing and
    /// `BANGER_REQUIRE_PRIVILEGED=1`.
    pub fn check(self) -> bool {
        match self.verdict(strict()) {
            Verdict::Run => true,
            Verdict::Skip(why) => {
                eprintln!("skipping {}: {why}", self.test);
                false
            }
            Verdict::Fail(why) => panic!("{}: {why}", self.test),
        }
    }

    fn verdict(&self, strict: bool) -> Verdict {
        if !self.not_enabled.is_empty() {
            return Verdict::Skip(self.not_enabled.join("; "));
        }
        if !self.missing.is_empty() {
            let why = self.missing.join(", ");
            return if strict {
                Verdict::Fail(format!("{why}; {REQUIRE_ENV}=1 requires it"))
            } else {
                Verdict::Skip(why)
            };
        }
        if !self.declared_absent.is_empty() {
            return Verdict::Skip(format!(
                "this host lacks {}",
                self.declared_absent.join(", ")
            ));
        }
        Verdict::Run
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    Run,
    Skip(String),
    Fail(String),
}

/// Fail or skip from inside a test, after a probe the gate cannot express
/// (a tool that exists but refuses, a socket family the kernel lacks):
/// panics in strict mode, else prints `skipping TEST: WHY`. Use as
/// `return skip("why");`.
pub fn skip(why: &str) {
    let test = std::thread::current()
        .name()
        .unwrap_or("this test")
        .to_owned();
    if strict() {
        panic!("{test}: {why}; {REQUIRE_ENV}=1 requires it");
    }
    eprintln!("skipping {test}: {why}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_requirements_fail_only_in_strict_mode() {
        let g = Gate::named("t").tool("banger-no-such-tool-xyz");
        assert!(
            matches!(g.verdict(false), Verdict::Skip(w) if w.contains("banger-no-such-tool-xyz"))
        );
        assert!(matches!(g.verdict(true), Verdict::Fail(w) if w.contains(REQUIRE_ENV)));
        let g = Gate::named("t").file(Path::new("/nonexistent/banger"), "apt-get install x");
        assert!(matches!(g.verdict(true), Verdict::Fail(w) if w.contains("apt-get install x")));
    }

    #[test]
    fn present_requirements_run() {
        let g = Gate::named("t").tool("sh").file(Path::new("/"), "");
        assert_eq!(g.verdict(true), Verdict::Run);
        assert!(which("sh").is_some());
    }

    #[test]
    fn root_is_checked_against_the_effective_uid() {
        let g = Gate::named("t").root();
        let expected = if is_root() {
            Verdict::Run
        } else {
            g.verdict(false)
        };
        assert_eq!(g.verdict(false), expected);
        assert_eq!(g.missing.is_empty(), is_root());
    }

    #[test]
    fn host_features_skip_in_strict_mode_only_when_declared() {
        let absent = Gate {
            declared_absent: vec!["vsock-loopback (x)".into()],
            ..Gate::named("t")
        };
        assert!(matches!(absent.verdict(true), Verdict::Skip(w) if w.contains("vsock-loopback")));
        let undeclared = Gate::named("t").host_feature("banger-undeclared-feature", false, "probe");
        assert!(matches!(undeclared.verdict(true), Verdict::Fail(w) if w.contains(HOST_LACKS_ENV)));
        assert_eq!(
            Gate::named("t").host_feature("x", true, "").verdict(true),
            Verdict::Run
        );
    }

    #[test]
    fn a_disabled_opt_in_skips_even_in_strict_mode() {
        let g = Gate {
            not_enabled: vec!["set BANGER_BOOT_TESTS=1 to boot".into()],
            missing: vec!["not running as root".into()],
            ..Gate::named("t")
        };
        assert!(matches!(g.verdict(true), Verdict::Skip(w) if w.contains("BANGER_BOOT_TESTS")));
    }
}
