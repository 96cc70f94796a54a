//! The `banger` command line: argument parsing ([`cli`]) and one module per
//! command group. `main.rs` only calls [`run`].

pub mod attach_cmd;
pub mod cli;
pub mod client;
pub mod completion_cmd;
pub mod config_cmd;
pub mod daemon_cmd;
pub mod doctor;
pub mod image_cmd;
pub mod network_cmd;
pub mod run_cmd;
pub mod session_cmd;
pub mod shell;
pub mod ssh_config_cmd;
pub mod system_cmd;
pub mod term;
pub mod vm_cmd;
pub mod workspace;

use clap::Parser;

/// Parse the process arguments, run the command, and return the exit code.
pub fn run() -> std::process::ExitCode {
    completion_cmd::complete_if_asked();
    let args = cli::Cli::parse();
    match dispatch(args) {
        Ok(code) => code,
        Err(e) => {
            // Daemon errors can quote a guest (its console, its agent).
            eprintln!("error: {}", term::text(&format!("{e:#}")));
            std::process::ExitCode::FAILURE
        }
    }
}

fn dispatch(args: cli::Cli) -> anyhow::Result<std::process::ExitCode> {
    use cli::Command;
    let global = args.global;
    match args.command {
        Command::Config(c) => config_cmd::run(&global, c),
        Command::Daemon(c) => daemon_cmd::run(&global, c),
        Command::Doctor(c) => doctor::run(&global, c),
        Command::Image(c) => image_cmd::run_image(&global, c),
        Command::Kernel(c) => image_cmd::run_kernel(&global, c),
        Command::Network(c) => network_cmd::run(&global, c),
        Command::System(c) => {
            let root = nix::unistd::geteuid().is_root();
            if let system_cmd::SystemCommand::Uninstall { root: None, .. } = &c {
                if root {
                    network_cmd::remove_before_uninstall();
                }
            }
            system_cmd::run(&global, c)
        }
        Command::Vm(c) => vm_cmd::run(&global, c),
        Command::SshConfig(c) => ssh_config_cmd::run(&global, c),
        Command::Completion(c) => completion_cmd::run(&global, c),
        Command::Version => {
            println!("banger {}", banger_wire::VERSION);
            Ok(std::process::ExitCode::SUCCESS)
        }
    }
}
