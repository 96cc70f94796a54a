//! `banger doctor`: run every host probe, the config and daemon checks, and
//! print them as a table (or JSON with `--json`). Exits non-zero when a
//! required check fails. Never starts the daemon.

use std::io::IsTerminal;
use std::path::Path;
use std::process::ExitCode;

use banger_config::{Config, HostFacts};
use banger_host::paths::Layout;
use banger_host::probe::{host_checks, Check, HostCheckInputs, ProbeEnv, StateDirOwner, Status};
use banger_wire::api::InstallMode;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::cli::{DoctorArgs, GlobalArgs};
use crate::client::{Client, ClientError};

/// Everything doctor found; `--json` prints exactly this.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DoctorReport {
    /// False when any required check failed (doctor then exits 1).
    pub ok: bool,
    pub checks: Vec<Check>,
}

impl DoctorReport {
    fn new(checks: Vec<Check>) -> DoctorReport {
        DoctorReport {
            ok: !checks.iter().any(Check::blocks),
            checks,
        }
    }
}

/// Run `banger doctor`.
pub fn run(global: &GlobalArgs, args: DoctorArgs) -> anyhow::Result<ExitCode> {
    let report = collect(global);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        let stdout = std::io::stdout();
        let style = Style::for_terminal(stdout.is_terminal());
        print!("{}", render(&report, style));
    }
    Ok(if report.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Run every check against the real host.
pub fn collect(global: &GlobalArgs) -> DoctorReport {
    let layout = match Layout::detect() {
        Ok(l) => l,
        Err(e) => {
            // Without a layout there is no state dir or config to probe.
            return DoctorReport::new(vec![Check::fail(
                "install-mode",
                "Install mode",
                e.to_string(),
                "fix the install metadata (or unset BANGER_INSTALL_FILE) and set $HOME",
            )
            .required()]);
        }
    };
    let config_path = banger_config::config_path(global.config.as_deref(), &layout.default_config);
    let (config_check, config) = load_config(&config_path, &layout.home);
    let mut checks = vec![config_check];
    let env = ProbeEnv::host();
    checks.extend(host_checks(&HostCheckInputs {
        env: &env,
        config: &config,
        config_path: &config_path,
        state_dir: &layout.state_dir,
        state_dir_owner: match layout.mode {
            InstallMode::PerUser => StateDirOwner::Caller,
            InstallMode::System => StateDirOwner::Service,
        },
        host_facts: HostFacts::detect(),
    }));
    checks.push(install_mode_check(&layout));
    checks.push(daemon_check(&layout));
    DoctorReport::new(checks)
}

/// `config`: the file parses; on error the rest of doctor uses defaults.
fn load_config(path: &Path, home: &Path) -> (Check, Config) {
    let (id, title) = ("config", "Configuration");
    match banger_config::load(path, home) {
        Ok(cfg) => {
            let detail = match &cfg.source {
                Some(src) => format!("{} is valid", src.display()),
                None => format!("{} does not exist: built-in defaults", path.display()),
            };
            (
                Check::ok(id, title, detail)
                    .with_value(json!(path))
                    .required(),
                cfg,
            )
        }
        Err(e) => (
            Check::fail(
                id,
                title,
                format!("{e} (checks below use the built-in defaults)"),
                format!(
                    "edit {}; `banger config check` lists every problem",
                    path.display()
                ),
            )
            .with_value(json!(path))
            .required(),
            Config::defaults(home),
        ),
    }
}

/// `install-mode`: system or per-user, with the directories in use.
fn install_mode_check(layout: &Layout) -> Check {
    let detail = match (&layout.mode, &layout.install) {
        (InstallMode::System, Some(i)) => format!(
            "system install (owner {}): state {}, socket {}",
            i.owner_user,
            layout.state_dir.display(),
            layout.socket().display()
        ),
        _ => format!(
            "per-user (no system install): state {}, socket {}",
            layout.state_dir.display(),
            layout.socket().display()
        ),
    };
    Check::info("install-mode", "Install mode", detail).with_value(json!({
        "mode": layout.mode,
        "state_dir": layout.state_dir,
        "cache_dir": layout.cache_dir,
        "socket": layout.socket(),
    }))
}

/// `daemon`: whether bangerd answers, asked through the existing socket only.
fn daemon_check(layout: &Layout) -> Check {
    let (id, title) = ("daemon", "Daemon (bangerd)");
    let answer = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start an async runtime: {e}"))
        .and_then(|rt| {
            rt.block_on(async {
                match Client::connect_existing(layout).await? {
                    Some(client) => client.status().await.map(Some),
                    None => Ok(None),
                }
            })
            .map_err(|e: ClientError| e.to_string())
        });
    match answer {
        Ok(Some(st)) if st.version != banger_wire::VERSION => Check::warn(
            id,
            title,
            format!(
                "running (pid {}) but version {} differs from this banger ({})",
                st.pid,
                st.version,
                banger_wire::VERSION
            ),
            match layout.mode {
                InstallMode::PerUser => {
                    "restart it: `banger daemon stop`; the next command starts the new one"
                }
                InstallMode::System => "restart it: `sudo systemctl restart bangerd`",
            },
        )
        .with_value(json!(st)),
        Ok(Some(st)) => Check::ok(
            id,
            title,
            format!(
                "running: pid {}, version {}, up {} s, backend {}",
                st.pid, st.version, st.uptime_secs, st.backend
            ),
        )
        .with_value(json!(st)),
        Ok(None) => match layout.mode {
            InstallMode::PerUser => Check::info(
                id,
                title,
                "not running; the first command that needs it starts it (doctor does not)",
            ),
            InstallMode::System => Check::warn(
                id,
                title,
                format!("not running (no answer on {})", layout.socket().display()),
                "sudo systemctl start bangerd",
            ),
        },
        Err(e) => Check::warn(
            id,
            title,
            e,
            "see `banger daemon status` and the daemon log in the state dir",
        ),
    }
}

/// How the table marks statuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Style {
    /// ✓ ! ✗ · instead of ASCII words.
    pub unicode: bool,
    /// ANSI colours.
    pub color: bool,
}

impl Style {
    /// Unicode and colour on a terminal (colour unless `NO_COLOR` is set),
    /// plain ASCII otherwise.
    pub fn for_terminal(is_tty: bool) -> Style {
        let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
        Style {
            unicode: is_tty,
            color: is_tty && !no_color,
        }
    }

    fn mark(self, status: Status) -> String {
        let (sym, word, code) = match status {
            Status::Ok => ("✓", "ok", "32"),
            Status::Warn => ("!", "warn", "33"),
            Status::Fail => ("✗", "FAIL", "31"),
            Status::Info => ("·", "info", "2"),
        };
        let text = if self.unicode {
            sym.to_owned()
        } else {
            format!("[{word:>4}]")
        };
        if self.color {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text
        }
    }
}

/// The human-readable report: one line per check, its fix indented below,
/// and a summary.
pub fn render(report: &DoctorReport, style: Style) -> String {
    use std::fmt::Write;
    let width = report
        .checks
        .iter()
        .map(|c| c.title.chars().count())
        .max()
        .unwrap_or(0);
    let indent = if style.unicode { 2 } else { 7 } + width + 2;
    let mut out = String::new();
    for c in &report.checks {
        let pad = width - c.title.chars().count();
        let _ = writeln!(
            out,
            "{} {}{}  {}",
            style.mark(c.status),
            c.title,
            " ".repeat(pad),
            c.detail
        );
        if let Some(fix) = &c.fix {
            let _ = writeln!(out, "{}fix: {fix}", " ".repeat(indent));
        }
    }
    let count = |s: Status| report.checks.iter().filter(|c| c.status == s).count();
    let blocking = report.checks.iter().filter(|c| c.blocks()).count();
    let _ = writeln!(
        out,
        "\n{} ok, {} warning(s), {} failed",
        count(Status::Ok),
        count(Status::Warn),
        count(Status::Fail)
    );
    if blocking > 0 {
        let _ = writeln!(
            out,
            "{blocking} required check(s) failed: banger cannot run VMs until they are fixed."
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> DoctorReport {
        DoctorReport::new(vec![
            Check::ok("arch", "CPU architecture", "x86_64").required(),
            Check::warn(
                "kvm-usable",
                "KVM usable",
                "no: nested PVM",
                "nothing to do",
            ),
            Check::fail(
                "qemu",
                "QEMU binary",
                "missing",
                "apt-get install qemu-system-x86",
            )
            .required(),
        ])
    }

    #[test]
    fn ascii_table_marks_and_fixes() {
        let report = sample();
        assert!(!report.ok);
        let text = render(
            &report,
            Style {
                unicode: false,
                color: false,
            },
        );
        assert!(text.is_ascii(), "{text}");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "[  ok] CPU architecture  x86_64");
        assert_eq!(lines[1], "[warn] KVM usable        no: nested PVM");
        assert_eq!(lines[2], "                         fix: nothing to do");
        assert_eq!(lines[3], "[FAIL] QEMU binary       missing");
        assert!(text.contains("1 required check(s) failed"), "{text}");
    }

    #[test]
    fn unicode_table_uses_symbols_and_colour_only_when_asked() {
        let text = render(
            &sample(),
            Style {
                unicode: true,
                color: false,
            },
        );
        assert!(text.starts_with("✓ CPU architecture"), "{text}");
        assert!(
            text.contains("✗ QEMU binary") && !text.contains('\x1b'),
            "{text}"
        );
        let text = render(
            &sample(),
            Style {
                unicode: true,
                color: true,
            },
        );
        assert!(text.contains("\x1b[31m✗\x1b[0m"), "{text}");
    }

    #[test]
    fn report_is_ok_when_only_optional_checks_fail() {
        let r = DoctorReport::new(vec![Check::fail("tool:zstd", "zstd", "missing", "install")]);
        assert!(r.ok);
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["checks"][0]["status"], "fail");
        assert_eq!(json["checks"][0]["required"], false);
    }
}
