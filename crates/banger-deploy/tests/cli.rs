//! `banger system ...` (crates/banger-cli/src/system_cmd.rs) driven through
//! its clap definition, compiled here so the deployment commands are tested
//! with the library they wrap.

mod common;

/// The part of banger-cli's `cli` module that `system_cmd` refers to.
mod cli {
    #[derive(Debug, Clone, clap::Args)]
    pub struct GlobalArgs {}
}

#[path = "../../banger-cli/src/system_cmd.rs"]
mod system_cmd;

use std::process::ExitCode;

use clap::{CommandFactory, Parser};
use common::*;
use system_cmd::SystemCommand;

#[derive(Debug, Parser)]
#[command(name = "banger-system")]
struct Top {
    #[command(subcommand)]
    cmd: SystemCommand,
}

fn parse(args: &[&str]) -> Result<SystemCommand, clap::Error> {
    Top::try_parse_from(std::iter::once("banger-system").chain(args.iter().copied())).map(|t| t.cmd)
}

#[test]
fn command_definitions_are_consistent_and_parse() {
    Top::command().debug_assert();
    assert!(matches!(
        parse(&["install", "--owner", "alice", "--root", "/s"]).unwrap(),
        SystemCommand::Install { ref owner, root: Some(ref r), from: None, socket_group: None, json: false }
            if owner == "alice" && r.as_os_str() == "/s"
    ));
    assert!(matches!(
        parse(&["install", "--owner", "alice", "--socket-group", "banger"]).unwrap(),
        SystemCommand::Install { socket_group: Some(ref g), .. } if g == "banger"
    ));
    assert!(matches!(
        parse(&["uninstall", "--purge"]).unwrap(),
        SystemCommand::Uninstall {
            purge: true,
            root: None
        }
    ));
    assert!(matches!(
        parse(&["restart"]).unwrap(),
        SystemCommand::Restart
    ));
    let err = parse(&["install"]).unwrap_err().to_string();
    assert!(err.contains("--owner"), "{err}");
}

fn run(args: &[&str]) -> ExitCode {
    system_cmd::run(&cli::GlobalArgs {}, parse(args).unwrap()).unwrap()
}

#[test]
fn install_status_uninstall_round_trip_through_the_cli() {
    if !root_or_skip("install_status_uninstall_round_trip_through_the_cli") {
        return;
    }
    let s = Staging::new();
    let root = s.root().to_str().unwrap();
    let from = s.bins.path().to_str().unwrap();
    assert_eq!(
        run(&["status", "--root", root]),
        ExitCode::FAILURE,
        "nothing installed yet"
    );
    assert_eq!(
        run(&["install", "--owner", OWNER, "--root", root, "--from", from]),
        ExitCode::SUCCESS
    );
    assert_eq!(
        run(&["status", "--root", root, "--json"]),
        ExitCode::SUCCESS
    );
    assert!(s
        .root()
        .join("etc/systemd/system/bangerd.service")
        .is_file());
    assert_eq!(
        run(&["uninstall", "--purge", "--root", root]),
        ExitCode::SUCCESS
    );
    assert!(!s.root().join("etc/systemd/system/bangerd.service").exists());
    assert!(!s.root().join("var/lib/banger").exists());

    let err = system_cmd::run(
        &cli::GlobalArgs {},
        parse(&[
            "install",
            "--owner",
            "nobody-here",
            "--root",
            root,
            "--from",
            from,
        ])
        .unwrap(),
    )
    .unwrap_err();
    assert!(format!("{err:#}").contains("\"nobody-here\""), "{err:#}");
}
