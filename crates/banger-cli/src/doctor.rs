//! `banger doctor`.

use std::process::ExitCode;

use crate::cli::{DoctorArgs, GlobalArgs};

/// Run `banger doctor`.
pub fn run(_global: &GlobalArgs, _args: DoctorArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("banger doctor is not built yet")
}
