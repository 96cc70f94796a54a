//! Shared helpers of the banger-vm integration tests.
#![allow(dead_code)]

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// Whether a test that needs root can run (the shared gate: skips saying
/// why, fails when `BANGER_REQUIRE_PRIVILEGED=1`).
pub fn privileged(test: &str) -> bool {
    banger_test_support::Gate::named(test).root().check()
}

/// Whether the program at `path` exists (the shared gate; CI installs it).
pub fn have_program(test: &str, path: &str, package: &str) -> bool {
    banger_test_support::Gate::named(test)
        .file(Path::new(path), &format!("apt-get install {package}"))
        .check()
}

/// A private mount namespace held open by a `sleep` child: filesystems are
/// mounted inside it with `nsenter`, and reached from this process through
/// `/proc/PID/root/...`, so nothing is ever mounted in the host's namespace.
/// Dropping it kills the child; the kernel then unmounts everything and
/// frees the loop devices (`mount -o loop` sets autoclear).
pub struct MountNs {
    child: Child,
}

impl MountNs {
    pub fn new() -> MountNs {
        let mut cmd = Command::new("unshare");
        cmd.args(["--mount", "--propagation", "private", "sleep", "3600"])
            .stdin(Stdio::null());
        // SAFETY: prctl is async-signal-safe and touches only the child; it
        // makes the namespace holder die with the test thread that made it.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().expect("unshare runs");
        let ns = MountNs { child };
        // `unshare` execs `sleep` once the namespace exists.
        let own = std::fs::read_link("/proc/self/ns/mnt").unwrap();
        for _ in 0..500 {
            let exe = std::fs::read_link(format!("/proc/{}/exe", ns.pid())).ok();
            let mnt = std::fs::read_link(format!("/proc/{}/ns/mnt", ns.pid())).ok();
            if exe.is_some_and(|e| e.ends_with("sleep")) && mnt.is_some_and(|m| m != own) {
                return ns;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        panic!("unshare did not enter a new mount namespace");
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Run `mount ARGS` inside the namespace.
    pub fn mount(&self, args: &[&str]) {
        let out = Command::new("nsenter")
            .arg("-t")
            .arg(self.pid().to_string())
            .arg("-m")
            .arg("mount")
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "mount {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `path` (absolute) as seen inside the namespace.
    pub fn path(&self, path: &Path) -> PathBuf {
        let rel = path.strip_prefix("/").expect("absolute path");
        PathBuf::from(format!("/proc/{}/root", self.pid())).join(rel)
    }
}

impl Drop for MountNs {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Run a program and return its stdout, failing the test with its stderr.
pub fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}
