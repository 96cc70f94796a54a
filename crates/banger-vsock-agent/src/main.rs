use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use banger_vsock_agent::apply::{self, ApplyOptions, Owner};
use banger_vsock_agent::drive::BlockLookup;
use banger_vsock_agent::server::{self, AgentContext, Transport};
use banger_wire::guest::CONFIG_DRIVE_LABEL;
use clap::{Args, Parser, Subcommand};

/// banger's guest agent. Without a command it serves (like `serve`).
#[derive(Debug, Parser)]
#[command(name = "banger-vsock-agent", version = banger_wire::VERSION)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Apply the per-VM config drive: hostname, SSH host key,
    /// authorized_keys, file_sync payloads (as root, once per boot, before
    /// sshd). The result is kept in /run/banger/apply.json.
    Apply(ApplyArgs),
    /// Answer the host (health, ports, stats) over virtio-serial or vsock.
    Serve(ServeArgs),
    /// Run as PID 1 of an image without an init system (`banger image pull`
    /// links the image's /sbin/init here): mounts, config drive, network,
    /// sshd and the agent, reaping, clean poweroff. See docs/oci-import.md.
    Init {
        /// Set after the hand-over to the config drive's agent.
        #[arg(long)]
        from_drive: bool,
    },
    /// Supervise one session (started by `serve`; not for direct use).
    #[command(hide = true)]
    SessionSupervise {
        /// The session directory (`/run/banger/sessions/<id>`).
        dir: PathBuf,
    },
}

#[derive(Debug, Args)]
struct ApplyArgs {
    /// Filesystem label of the config drive.
    #[arg(long, default_value = CONFIG_DRIVE_LABEL)]
    drive_label: String,
    /// Where the drive is mounted (read-only) while it is applied.
    #[arg(long, default_value = apply::DEFAULT_MOUNT_DIR, value_name = "DIR")]
    mount_dir: PathBuf,
    /// The guest root to apply into (another directory for image tests; the
    /// kernel hostname is only set when this is /).
    #[arg(long, default_value = "/", value_name = "DIR")]
    root: PathBuf,
    /// How long to wait for the drive to appear.
    #[arg(long, default_value_t = 10, value_name = "SECONDS")]
    wait_secs: u64,
}

#[derive(Debug, Args, Default)]
struct ServeArgs {
    /// Serve on this virtio-serial device
    /// (default: /dev/virtio-ports/org.banger.agent when present).
    #[arg(long, value_name = "DEVICE", conflicts_with = "vsock_port")]
    serial: Option<PathBuf>,
    /// Serve on this vsock port (default when no virtio-serial port: 10240).
    #[arg(long, value_name = "PORT")]
    vsock_port: Option<u32>,
}

fn apply_command(args: ApplyArgs) -> anyhow::Result<()> {
    let opts = ApplyOptions {
        set_kernel_hostname: args.root == std::path::Path::new("/"),
        root: args.root,
        owner: Owner::ROOT,
    };
    let outcome = apply::apply_from_drive(
        &BlockLookup::default(),
        &args.drive_label,
        &args.mount_dir,
        Duration::from_secs(args.wait_secs),
        &opts,
    );
    let recorded = apply::write_record(&opts.root, &outcome, Owner::ROOT);
    let report = outcome?;
    for warning in &report.warnings {
        eprintln!("banger-vsock-agent: warning: {warning}");
    }
    println!(
        "applied config of {} (hostname {}, {} file(s) installed, {} warning(s))",
        report.vm_id,
        report.hostname,
        report.files_installed,
        report.warnings.len()
    );
    recorded?;
    Ok(())
}

fn serve_command(args: ServeArgs) -> anyhow::Result<()> {
    let transport = match (args.serial, args.vsock_port) {
        (Some(path), _) => Transport::Serial(path),
        (None, Some(port)) => Transport::Vsock(port),
        (None, None) => Transport::Auto,
    };
    server::serve(AgentContext::default(), transport)?;
    Ok(())
}

fn main() -> ExitCode {
    // As /sbin/init the kernel passes no arguments we know (maybe `single`
    // or the like): PID 1 is always init.
    if std::process::id() == 1 && std::env::args().nth(1).as_deref() != Some("init") {
        let e = banger_vsock_agent::init::run(false);
        eprintln!("banger-vsock-agent: {e}");
        return ExitCode::FAILURE;
    }
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Command::Apply(args)) => apply_command(args),
        Some(Command::Serve(args)) => serve_command(args),
        None => serve_command(ServeArgs::default()),
        Some(Command::Init { from_drive }) => Err(banger_vsock_agent::init::run(from_drive).into()),
        Some(Command::SessionSupervise { dir }) => {
            banger_vsock_agent::session::supervise(&dir).map_err(anyhow::Error::from)
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("banger-vsock-agent: {e:#}");
            ExitCode::FAILURE
        }
    }
}
