//! `banger system ...`: the systemd deployment on non-Nix hosts (the NixOS
//! module defines the same units). The work is done by `banger-deploy`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use banger_deploy::status::SystemStatus;

/// `banger system ...`
#[derive(Debug, clap::Subcommand)]
pub enum SystemCommand {
    /// Install banger as two systemd units: `bangerd` (the daemon, as OWNER)
    /// and `bangerd-root` (the root helper). Copies the binaries to
    /// /usr/local, writes /etc/banger/install.toml and the units, creates
    /// /var/lib/banger, /var/cache/banger, /run/banger and /run/banger-root,
    /// then enables and starts both units. Safe to re-run; upgrades keep state.
    /// Needs root: `sudo banger system install --owner "$USER"`.
    Install {
        /// The user the daemon runs as and the only user the root helper serves.
        #[arg(long, value_name = "USER")]
        owner: String,
        /// Install into this staging tree instead of / (for packaging and
        /// tests): no systemctl calls, the owner is looked up in DIR/etc/passwd.
        #[arg(long, value_name = "DIR")]
        root: Option<PathBuf>,
        /// Directory holding the built binaries (default: the directory of
        /// this `banger`).
        #[arg(long, value_name = "DIR")]
        from: Option<PathBuf>,
        /// Also let the members of GROUP use the daemon socket (mode 0660
        /// with that group). Without it only the owner and root may connect.
        #[arg(long, value_name = "GROUP")]
        socket_group: Option<String>,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show the installed units and whether they run, binary versions,
    /// sockets and the owner. Exits non-zero when something is missing.
    Status {
        /// Inspect a staging tree instead of /.
        #[arg(long, value_name = "DIR")]
        root: Option<PathBuf>,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Restart both units (`bangerd-root`, then `bangerd`; running VMs keep
    /// running). Needs root.
    Restart,
    /// Stop and remove the units, binaries, install metadata and runtime
    /// directories. State (/var/lib/banger), cache and /etc/banger/config.toml
    /// stay unless --purge; nothing under home directories is ever removed.
    /// Needs root.
    Uninstall {
        /// Also remove /var/lib/banger, /var/cache/banger and /etc/banger/config.toml.
        #[arg(long)]
        purge: bool,
        /// Uninstall from a staging tree instead of /.
        #[arg(long, value_name = "DIR")]
        root: Option<PathBuf>,
    },
}

/// Run a `banger system` command.
pub fn run(_global: &crate::cli::GlobalArgs, cmd: SystemCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        SystemCommand::Install {
            owner,
            root,
            from,
            socket_group,
            json,
        } => {
            let bin_src_dir = match from {
                Some(dir) => dir,
                None => banger_deploy::install::default_bin_src_dir()
                    .context("cannot find the directory of the running banger; pass --from DIR")?,
            };
            let report = banger_deploy::install(&banger_deploy::InstallOptions {
                owner,
                root: root.clone(),
                bin_src_dir,
                socket_group,
            })?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
                return Ok(ExitCode::SUCCESS);
            }
            let m = &report.metadata;
            let target = root
                .as_ref()
                .map_or("/".into(), |r| r.display().to_string());
            if report.changed.is_empty() {
                println!(
                    "banger {} is already installed in {target}; nothing changed",
                    m.version
                );
            } else {
                println!(
                    "installed banger {} in {target} for {} (uid {})",
                    m.version, m.owner_user, m.owner_uid
                );
                for p in &report.changed {
                    println!("  {}", p.display());
                }
            }
            if report.services_started {
                println!("bangerd-root.service and bangerd.service are enabled and running");
                println!(
                    "{} can now run `banger vm run` without sudo; check with `banger system status`",
                    m.owner_user
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        SystemCommand::Status { root, json } => {
            let st = banger_deploy::status(root.as_deref())?;
            if json {
                println!("{}", serde_json::to_string_pretty(&st)?);
            } else {
                print_status(&st);
            }
            Ok(if st.healthy() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        SystemCommand::Restart => {
            banger_deploy::restart()?;
            println!("restarted bangerd-root.service and bangerd.service");
            Ok(ExitCode::SUCCESS)
        }
        SystemCommand::Uninstall { purge, root } => {
            let report =
                banger_deploy::uninstall(&banger_deploy::UninstallOptions { root, purge })?;
            if report.removed.is_empty() {
                println!("banger is not installed; nothing to remove");
            } else {
                println!("removed:");
                for p in &report.removed {
                    println!("  {}", p.display());
                }
            }
            for w in &report.warnings {
                eprintln!("warning: {w}");
            }
            if !purge {
                println!("state, cache and /etc/banger/config.toml are kept; --purge removes them");
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn print_status(st: &SystemStatus) {
    match (&st.metadata, &st.metadata_error) {
        (Some(m), _) => {
            println!(
                "install:  {} (banger {})",
                st.install_file.display(),
                m.version
            );
            println!(
                "owner:    {} (uid {}, gid {})",
                m.owner_user, m.owner_uid, m.owner_gid
            );
        }
        (None, Some(e)) => println!("install:  unreadable: {e}"),
        (None, None) => {
            println!(
                "install:  not installed ({} is absent); banger runs per-user",
                st.install_file.display()
            );
        }
    }
    for u in &st.units {
        let file = if !u.file_present {
            "missing".to_owned()
        } else if u.matches_builtin == Some(false) {
            "differs from this banger's units (re-run `sudo banger system install`)".to_owned()
        } else {
            "present".to_owned()
        };
        let active = u.active.as_deref().unwrap_or("not queried");
        println!("unit:     {:<22} {active:<10} file {file}", u.name);
    }
    for b in &st.binaries {
        let v = match (b.present, &b.version) {
            (false, _) => "missing".to_owned(),
            (true, Some(v)) => v.clone(),
            (true, None) => "present, --version failed".to_owned(),
        };
        println!("binary:   {:<40} {v}", b.path.display());
    }
    for s in &st.sockets {
        let state = match s.present {
            Some(true) => "listening socket present",
            Some(false) => "absent",
            None => "not visible to this user",
        };
        println!("socket:   {:<40} {state}", s.path.display());
    }
}
