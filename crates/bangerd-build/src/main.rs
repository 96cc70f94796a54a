//! `bangerd-build`: see the `bangerd_build` library and docs/root-helper.md.
//! Prints its answer as one JSON line (a [`HelperReply`]) on stdout; logs go
//! to stderr.

use std::path::PathBuf;
use std::process::ExitCode;

use banger_wire::helper::{BundleKind, HelperError, HelperErrorCode, HelperReply};
use bangerd_root::ops::build::{BuildPaths, BuildRunner, SYSTEM_WORK_DIR};
use bangerd_root::system;
use clap::{Args, Parser};

/// Build an embedded recipe as root and install it into the owner's store
/// as the owner. Started by bangerd-root, not by hand.
#[derive(Debug, Parser)]
#[command(name = "bangerd-build", version = banger_wire::VERSION)]
struct Cli {
    /// `image` or `kernel`.
    #[arg(long)]
    kind: String,
    /// Recipe name, e.g. debian-bookworm.
    #[arg(long)]
    name: String,
    /// System mode (in the transient build unit): install metadata file
    /// naming the state and cache dirs and the owner; scratch space is the
    /// unit's root-owned cache directory.
    #[arg(long, conflicts_with_all = ["state_dir", "cache_dir", "work_dir", "owner_uid", "owner_gid"])]
    install_file: Option<PathBuf>,
    #[command(flatten)]
    child: ChildArgs,
}

/// Child mode: what the helper was started with.
#[derive(Debug, Args)]
struct ChildArgs {
    /// The owner's state dir (its store).
    #[arg(long, required_unless_present = "install_file")]
    state_dir: Option<PathBuf>,
    /// The owner's cache dir.
    #[arg(long, required_unless_present = "install_file")]
    cache_dir: Option<PathBuf>,
    /// Root's scratch space and bundle cache.
    #[arg(long, required_unless_present = "install_file")]
    work_dir: Option<PathBuf>,
    /// The owner's uid.
    #[arg(long, required_unless_present = "install_file")]
    owner_uid: Option<u32>,
    /// The owner's gid.
    #[arg(long, required_unless_present = "install_file")]
    owner_gid: Option<u32>,
}

/// The build paths and owner: from the install metadata (system mode) or
/// the command line (child mode).
fn target(cli: &Cli) -> Result<(BuildPaths, u32, u32), String> {
    // This process is the builder; the runner is not used here.
    let runner = BuildRunner::Child {
        builder: std::env::current_exe().unwrap_or_default(),
    };
    if let Some(install_file) = &cli.install_file {
        let install = system::read_install(install_file).map_err(|e| e.to_string())?;
        let paths = BuildPaths {
            state_dir: PathBuf::from(&install.state_dir),
            cache_dir: PathBuf::from(&install.cache_dir),
            work_dir: PathBuf::from(SYSTEM_WORK_DIR),
            runner,
        };
        return Ok((paths, install.owner_uid, install.owner_gid));
    }
    let c = &cli.child;
    let (Some(state_dir), Some(cache_dir), Some(work_dir), Some(uid), Some(gid)) = (
        c.state_dir.clone(),
        c.cache_dir.clone(),
        c.work_dir.clone(),
        c.owner_uid,
        c.owner_gid,
    ) else {
        return Err(
            "child mode needs --state-dir, --cache-dir, --work-dir, --owner-uid and --owner-gid"
                .into(),
        );
    };
    let paths = BuildPaths {
        state_dir,
        cache_dir,
        work_dir,
        runner,
    };
    Ok((paths, uid, gid))
}

/// The same validation as the helper's (the request's shape), plus that the
/// name is an embedded recipe; then the build in this process.
fn build_bundle(cli: &Cli) -> HelperReply {
    let invalid = |message: String| HelperError {
        code: HelperErrorCode::Invalid,
        message,
    };
    let kind = match cli.kind.as_str() {
        "image" => BundleKind::Image,
        "kernel" => BundleKind::Kernel,
        other => return Err(invalid(format!("kind {other:?} is not image or kernel"))),
    };
    bangerd_root::validate::recipe_name(kind, &cli.name).map_err(|e| invalid(e.to_string()))?;
    let name = bangerd_build::recipe_name(kind, &cli.name).map_err(|e| invalid(e.to_string()))?;
    let (paths, uid, gid) = target(cli).map_err(invalid)?;
    bangerd_build::build_here(kind, &name, &paths, uid, gid).map_err(|e| HelperError {
        code: e.code(),
        message: e.to_string(),
    })
}

fn init_tracing() {
    let builder = tracing_subscriber::fmt().with_writer(std::io::stderr);
    // journald (the transient unit) stamps every line itself.
    if std::env::var_os("JOURNAL_STREAM").is_some() {
        builder.without_time().init();
    } else {
        builder.init();
    }
}

fn main() -> anyhow::Result<ExitCode> {
    let cli = Cli::parse();
    init_tracing();
    let reply = build_bundle(&cli);
    println!("{}", serde_json::to_string(&reply)?);
    Ok(if reply.is_ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
