//! `banger daemon status|stop`.

use std::process::ExitCode;

use crate::cli::{DaemonCommand, GlobalArgs};

/// Run a `banger daemon` subcommand.
pub fn run(_global: &GlobalArgs, _cmd: DaemonCommand) -> anyhow::Result<ExitCode> {
    anyhow::bail!("banger daemon is not built yet")
}
