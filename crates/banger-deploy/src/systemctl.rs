//! Calls to the host's `systemctl`.

use std::path::Path;
use std::process::Command;

/// Errors running `systemctl`.
#[derive(Debug, thiserror::Error)]
pub enum SystemctlError {
    #[error("cannot run `systemctl {args}`: {source}")]
    Spawn {
        args: String,
        source: std::io::Error,
    },
    #[error("`systemctl {args}` failed ({status}): {stderr}")]
    Failed {
        args: String,
        status: std::process::ExitStatus,
        stderr: String,
    },
}

/// Whether systemd is the running init (the test `sd_booted(3)` uses).
pub fn systemd_running() -> bool {
    Path::new("/run/systemd/system").is_dir()
}

/// Run `systemctl ARGS`, returning its standard output.
pub fn run(args: &[&str]) -> Result<String, SystemctlError> {
    let joined = args.join(" ");
    let out = Command::new("systemctl")
        .args(args)
        .output()
        .map_err(|source| SystemctlError::Spawn {
            args: joined.clone(),
            source,
        })?;
    if !out.status.success() {
        return Err(SystemctlError::Failed {
            args: joined,
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `systemctl is-active UNIT` (`active`, `inactive`, `failed`, ...); its
/// exit status only says "not active", so the printed word is the answer.
pub fn is_active(unit: &str) -> Result<String, SystemctlError> {
    let out = Command::new("systemctl")
        .args(["is-active", unit])
        .output()
        .map_err(|source| SystemctlError::Spawn {
            args: format!("is-active {unit}"),
            source,
        })?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}
