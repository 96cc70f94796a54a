//! The clap command tree. Help texts here are the user's first documentation:
//! keep them in step with README.md and docs/.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// One-command development sandboxes on Firecracker microVMs.
#[derive(Debug, Parser)]
#[command(name = "banger", version = banger_wire::VERSION, propagate_version = true)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// Options accepted by every command.
#[derive(Debug, Clone, Args)]
pub struct GlobalArgs {
    /// Config file (default: $XDG_CONFIG_HOME/banger/config.toml).
    #[arg(long, global = true, env = "BANGER_CONFIG", value_name = "PATH")]
    pub config: Option<PathBuf>,
}

impl GlobalArgs {
    /// The runtime a command runs on and a client of the daemon (started
    /// when none runs): how most commands begin.
    pub fn connect(&self) -> anyhow::Result<(tokio::runtime::Runtime, crate::client::Client)> {
        let runtime = runtime()?;
        let layout = banger_host::paths::Layout::detect()?;
        let client = runtime.block_on(crate::client::Client::connect(
            &layout,
            self.config.as_deref(),
        ))?;
        Ok((runtime, client))
    }
}

/// The single-threaded runtime every command runs on.
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    use anyhow::Context as _;
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// Top-level commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Show or validate the configuration.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Inspect or stop the banger daemon (bangerd).
    #[command(subcommand)]
    Daemon(DaemonCommand),
    /// Check that this host can run banger VMs, and say how to fix what is missing.
    Doctor(DoctorArgs),
    /// Pull, build, list, inspect, register and delete root filesystem images.
    #[command(subcommand)]
    Image(crate::image_cmd::ImageCommand),
    /// Pull, build, list, inspect and delete guest kernels.
    #[command(subcommand)]
    Kernel(crate::image_cmd::KernelCommand),
    /// Set up or remove the host network for guests (bridge, taps, NAT).
    #[command(subcommand)]
    Network(crate::network_cmd::NetworkCommand),
    /// Install, inspect or remove banger's systemd units (bangerd, bangerd-root).
    #[command(subcommand)]
    System(crate::system_cmd::SystemCommand),
    /// Create, run, inspect and remove VMs.
    #[command(subcommand)]
    Vm(crate::vm_cmd::VmCommand),
    /// Print a shell completion script (bash, zsh, fish, powershell); see
    /// `banger completion --help` for how to install it.
    Completion(crate::completion_cmd::CompletionArgs),
    /// Print or install the ~/.ssh/config line that makes `ssh NAME.vm` work.
    SshConfig(crate::ssh_config_cmd::SshConfigArgs),
    /// Print the banger version.
    Version,
}

/// `banger config ...`
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Print the effective configuration, each value with where it came from
    /// (config, host, built-in).
    Show {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Validate a config file (default: the active one); exits non-zero on error.
    Check {
        /// File to check instead of the active config.
        path: Option<PathBuf>,
    },
}

/// `banger daemon ...`
#[derive(Debug, Subcommand)]
pub enum DaemonCommand {
    /// Show pid, version, socket, uptime, state dir, backend, install mode, root
    /// helper and schema version. In per-user mode this starts the daemon if
    /// none is running.
    Status {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Stop the daemon (per-user mode; use `systemctl stop bangerd` in system mode).
    Stop,
}

/// `banger doctor`
#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}
