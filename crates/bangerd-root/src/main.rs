//! `bangerd-root`: see the `bangerd_root` library and docs/root-helper.md.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use banger_helper_client::HelperClient;
use bangerd_root::ops::build::{self, BuildPaths, BuildRunner};
use bangerd_root::{system, ServeConfig};
use clap::{Args, Parser, Subcommand};
use ipnet::Ipv4Net;

/// banger's root helper: typed, validated host-kernel operations for bangerd.
#[derive(Debug, Parser)]
#[command(name = "bangerd-root", version = banger_wire::VERSION)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve requests on a Unix socket until SIGTERM/SIGINT.
    Serve(ServeArgs),
    /// Send one raw JSON request line to a running helper and print its reply.
    Request {
        /// Helper socket.
        #[arg(long)]
        socket: PathBuf,
        /// The request, e.g. '{"op":"ping"}'.
        json: String,
    },
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// System mode: read the install metadata, socket in its root_run_dir.
    #[arg(long, conflicts_with_all = ["socket", "owner_uid", "owner_gid", "allowed_dir"])]
    system: bool,
    /// Install metadata file (system mode).
    #[arg(long, env = "BANGER_INSTALL_FILE", default_value = banger_wire::install::INSTALL_TOML, requires = "system")]
    install_file: PathBuf,
    /// Socket to listen on (child mode).
    #[arg(long, required_unless_present = "system")]
    socket: Option<PathBuf>,
    /// The only uid served; taps are given to it (child mode).
    #[arg(long, required_unless_present = "system")]
    owner_uid: Option<u32>,
    /// The owner's group for built bundles (child mode; default: its
    /// primary group).
    #[arg(long)]
    owner_gid: Option<u32>,
    /// The guest range (required in child mode; in system mode it overrides
    /// `cidr` from the installed config file).
    #[arg(long, required_unless_present = "system")]
    cidr: Option<Ipv4Net>,
    /// A directory of banger's that paths may resolve under (repeatable).
    #[arg(long, required_unless_present = "system")]
    allowed_dir: Vec<PathBuf>,
    /// State dir whose store `build_bundle` installs into, as the owner
    /// (child mode; without it builds are refused).
    #[arg(long, requires_all = ["build_cache_dir", "build_work_dir"])]
    build_state_dir: Option<PathBuf>,
    /// The owner's cache dir, where a copy of each built bundle is left
    /// (child mode).
    #[arg(long, requires = "build_state_dir")]
    build_cache_dir: Option<PathBuf>,
    /// Root's scratch space and bundle cache: every component must be a
    /// directory only root can write (child mode).
    #[arg(long, requires = "build_state_dir")]
    build_work_dir: Option<PathBuf>,
    /// The `bangerd-build` executable builds run (default: the one beside
    /// this binary).
    #[arg(long)]
    builder: Option<PathBuf>,
    /// Log filter when RUST_LOG is unset.
    #[arg(long, default_value = "info")]
    log_level: String,
}

fn init_tracing(level: &str) {
    use tracing_subscriber::filter::Targets;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    // `Targets` takes RUST_LOG's `target=level` list (no regex-based span
    // filters: the helper's closure stays small, docs/ARCHITECTURE.md).
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|v| v.parse::<Targets>().ok())
        .or_else(|| level.parse().ok())
        .unwrap_or_else(|| Targets::new().with_default(tracing::Level::INFO));
    let builder = tracing_subscriber::fmt().with_writer(std::io::stderr);
    // journald stamps every line itself.
    if std::env::var_os("JOURNAL_STREAM").is_some() {
        builder.without_time().finish().with(filter).init();
    } else {
        builder.finish().with(filter).init();
    }
}

fn serve_config(args: ServeArgs) -> anyhow::Result<ServeConfig> {
    let builder = match args.builder {
        Some(builder) => builder,
        None => build::default_builder().context("cannot locate bangerd-build")?,
    };
    if args.system {
        let install = system::read_install(&args.install_file)?;
        let cidr = match args.cidr {
            Some(cidr) => cidr,
            None => system::configured_cidr(&install)?,
        };
        return Ok(system::system_config(
            &install,
            &args.install_file,
            builder,
            cidr,
        ));
    }
    let (Some(socket), Some(owner_uid), Some(cidr)) = (args.socket, args.owner_uid, args.cidr)
    else {
        anyhow::bail!("child mode needs --socket, --owner-uid and --cidr");
    };
    let mut config = ServeConfig::child(socket, owner_uid, cidr, args.allowed_dir);
    config.policy.owner_gid = args.owner_gid;
    if let (Some(state_dir), Some(cache_dir), Some(work_dir)) = (
        args.build_state_dir,
        args.build_cache_dir,
        args.build_work_dir,
    ) {
        config.policy.build = Some(BuildPaths {
            state_dir,
            cache_dir,
            work_dir,
            runner: BuildRunner::Child { builder },
        });
    }
    Ok(config)
}

#[tokio::main]
async fn main() -> anyhow::Result<ExitCode> {
    match Cli::parse().command {
        Command::Serve(args) => {
            init_tracing(&args.log_level);
            let config = serve_config(args)?;
            bangerd_root::serve(config).await.context("root helper")?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Request { socket, json } => {
            let mut client = HelperClient::connect(&socket).await?;
            let reply = client.request_line(&json).await?;
            println!("{}", serde_json::to_string(&reply)?);
            Ok(if reply.is_ok() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
    }
}
