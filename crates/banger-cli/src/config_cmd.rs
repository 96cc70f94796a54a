//! `banger config show|check`.

use std::process::ExitCode;

use crate::cli::{ConfigCommand, GlobalArgs};

/// Run a `banger config` subcommand.
pub fn run(_global: &GlobalArgs, _cmd: ConfigCommand) -> anyhow::Result<ExitCode> {
    anyhow::bail!("banger config is not built yet")
}
