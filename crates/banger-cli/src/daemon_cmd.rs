//! `banger daemon status|stop`.

use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use banger_host::paths::Layout;
use banger_wire::api::{DaemonStatus, InstallMode};

use crate::cli::{DaemonCommand, GlobalArgs};
use crate::client::{Client, ClientError, VersionCheck};

/// How long `banger daemon stop` waits for the daemon process to exit.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);

/// Run a `banger daemon` subcommand.
pub fn run(global: &GlobalArgs, cmd: DaemonCommand) -> anyhow::Result<ExitCode> {
    let runtime = crate::cli::runtime()?;
    let layout = Layout::detect()?;
    runtime.block_on(async {
        match cmd {
            DaemonCommand::Status { json } => status(&layout, global.config.as_deref(), json).await,
            DaemonCommand::Stop => stop(&layout).await,
        }
    })
}

async fn status(layout: &Layout, config: Option<&Path>, json: bool) -> anyhow::Result<ExitCode> {
    // Status is how a user finds out which daemon answers: any version will do.
    let client = Client::connect_checked(layout, config, VersionCheck::AnyVersion).await?;
    let status = client.status().await?;
    if status.version != banger_wire::VERSION {
        eprintln!(
            "warning: {}",
            ClientError::VersionSkew {
                daemon: status.version.clone(),
                cli: banger_wire::VERSION,
                system: layout.mode == InstallMode::System,
            }
        );
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        print!("{}", format_status(&status));
    }
    Ok(ExitCode::SUCCESS)
}

/// The human-readable `banger daemon status` table.
pub fn format_status(s: &DaemonStatus) -> String {
    let backend = if s.backend_reason.is_empty() {
        s.backend.clone()
    } else {
        format!("{} ({})", s.backend, s.backend_reason)
    };
    let rows = [
        ("pid", s.pid.to_string()),
        ("version", s.version.clone()),
        ("socket", s.socket.clone()),
        ("uptime", format_uptime(s.uptime_secs)),
        ("install mode", s.install_mode.to_string()),
        ("state dir", s.state_dir.clone()),
        ("cache dir", s.cache_dir.clone()),
        ("runtime dir", s.runtime_dir.clone()),
        ("backend", backend),
        (
            "root helper",
            s.root_helper.clone().unwrap_or_else(|| "none".to_owned()),
        ),
        ("schema version", s.schema_version.to_string()),
    ];
    rows.iter().map(|(k, v)| format!("{k:<15} {v}\n")).collect()
}

/// `93784` → `1d 2h 3m 4s`; leading zero units are left out.
pub fn format_uptime(secs: u64) -> String {
    let parts = [
        (secs / 86400, "d"),
        (secs / 3600 % 24, "h"),
        (secs / 60 % 60, "m"),
        (secs % 60, "s"),
    ];
    let text: Vec<String> = parts
        .iter()
        .skip_while(|(n, unit)| *n == 0 && *unit != "s")
        .map(|(n, unit)| format!("{n}{unit}"))
        .collect();
    text.join(" ")
}

async fn stop(layout: &Layout) -> anyhow::Result<ExitCode> {
    if layout.mode == InstallMode::System {
        anyhow::bail!(
            "bangerd runs as the system service here; stop it with `sudo systemctl stop bangerd`"
        );
    }
    let Some(client) = Client::connect_existing_any_version(layout).await? else {
        println!("bangerd is not running");
        return Ok(ExitCode::SUCCESS);
    };
    let pid = client.shutdown().await?.pid;
    let deadline = Instant::now() + STOP_TIMEOUT;
    while process_alive(pid) {
        if Instant::now() >= deadline {
            anyhow::bail!(
                "bangerd (pid {pid}) is still shutting down after {} s; check again with \
                 `banger daemon status`, and see {}",
                STOP_TIMEOUT.as_secs(),
                layout.log_file().display()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!("bangerd (pid {pid}) stopped");
    Ok(ExitCode::SUCCESS)
}

/// Whether `pid` is a live process. A zombie counts as gone: an auto-started
/// daemon's parent may be a reaper that never waits for it.
fn process_alive(pid: u32) -> bool {
    banger_fs::proc::read_stat(pid).is_ok_and(|s| !s.has_exited())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uptime_drops_leading_zero_units() {
        assert_eq!(format_uptime(0), "0s");
        assert_eq!(format_uptime(59), "59s");
        assert_eq!(format_uptime(3600), "1h 0m 0s");
        assert_eq!(format_uptime(93784), "1d 2h 3m 4s");
    }

    #[test]
    fn zombies_and_reaped_children_are_not_alive() {
        assert!(process_alive(std::process::id()));
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        // Not reaped yet: once `true` exits it is a zombie.
        let zombie = |pid: u32| {
            std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| s.contains(") Z "))
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !zombie(pid) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(zombie(pid), "child {pid} never became a zombie");
        assert!(!process_alive(pid));
        child.wait().unwrap();
        assert!(!process_alive(pid));
    }

    #[test]
    fn status_table_names_every_field() {
        let s = DaemonStatus {
            pid: 42,
            version: "0.1.0".into(),
            socket: "/run/x.sock".into(),
            uptime_secs: 61,
            state_dir: "/s".into(),
            cache_dir: "/c".into(),
            runtime_dir: "/r".into(),
            backend: "qemu-tcg".into(),
            backend_reason: "KVM is nested PVM".into(),
            install_mode: InstallMode::PerUser.to_string(),
            root_helper: None,
            schema_version: 3,
        };
        let text = format_status(&s);
        for needle in [
            "pid             42\n",
            "uptime          1m 1s\n",
            "install mode    per-user\n",
            "backend         qemu-tcg (KVM is nested PVM)\n",
            "root helper     none\n",
            "schema version  3\n",
        ] {
            assert!(text.contains(needle), "{needle:?} missing in\n{text}");
        }
    }
}
