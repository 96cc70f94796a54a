use std::path::PathBuf;

use clap::Parser;

/// The banger daemon: serves the banger API on a Unix socket.
#[derive(Debug, Parser)]
#[command(name = "bangerd", version = banger_wire::VERSION)]
struct Args {
    /// Config file (default: $XDG_CONFIG_HOME/banger/config.toml, or
    /// /etc/banger/config.toml in a system install).
    #[arg(long, env = "BANGER_CONFIG", value_name = "PATH")]
    config: Option<PathBuf>,
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    match bangerd::run(&bangerd::Options {
        config: args.config,
    }) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bangerd: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
