//! `banger system install`, `uninstall` and `restart`.
//!
//! Everything the installer writes comes from [`crate::spec`] (units,
//! tmpfiles, directory modes, layout), so a non-Nix host ends up with the
//! same units as the NixOS module produces.

use std::path::{Path, PathBuf};

use banger_wire::install::InstallMetadata;
use serde::Serialize;

use crate::fsutil::{self, FsError, Perms};
use crate::home::{self, HomeError};
use crate::owner::{self, Owner, OwnerError};
use crate::spec::{Placeholders, RenderedUnit, Spec, SpecError};
use crate::systemctl::{self, SystemctlError};

/// The binaries installed into the bin directory (`bangerd-build` beside
/// `bangerd-root`, which runs it for image builds).
pub const BINARIES: [&str; 4] = ["banger", "bangerd", "bangerd-root", "bangerd-build"];
/// The guest agent, installed into the lib directory.
pub const AGENT: &str = "banger-vsock-agent";

/// Errors of install, uninstall and restart.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("`banger system {action}` changes system files and services and needs root: run it with sudo")]
    NotRoot { action: &'static str },
    #[error("systemd is not running as init on this host, so the units cannot be started; use --root DIR to install into a staging tree")]
    NoSystemd,
    #[error("binary {name} not found (looked for {}); build the workspace (`cargo build --release`) or pass --from DIR", searched.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "))]
    MissingBinary {
        name: &'static str,
        searched: Vec<PathBuf>,
    },
    #[error("tmpfiles entry {line:?} in nix/units.json is not `d PATH MODE USER GROUP -`")]
    BadTmpfilesLine { line: String },
    #[error("socket group {name:?} does not exist on this host (create it with `groupadd {name}`, or leave --socket-group out so only the owner and root may connect)")]
    UnknownSocketGroup { name: String },
    #[error("cannot serialize the install metadata: {0}")]
    Metadata(#[from] toml::ser::Error),
    #[error(transparent)]
    Spec(#[from] SpecError),
    #[error(transparent)]
    Owner(#[from] OwnerError),
    #[error(transparent)]
    Fs(#[from] FsError),
    #[error(transparent)]
    Home(#[from] HomeError),
    #[error(transparent)]
    Systemctl(#[from] SystemctlError),
}

/// What `install` does.
#[derive(Debug, Clone)]
pub struct InstallOptions {
    /// The user `bangerd` runs as; the only user the root helper serves.
    pub owner: String,
    /// Install into this staging tree instead of `/` (no systemctl calls;
    /// the owner is looked up in the tree's `etc/passwd`).
    pub root: Option<PathBuf>,
    /// Directory holding the built binaries (the agent may also be in
    /// `../lib/banger/`).
    pub bin_src_dir: PathBuf,
    /// A group whose members may also use the daemon socket (`socket_group`
    /// in install.toml). `None`: only the owner and root.
    pub socket_group: Option<String>,
}

/// What `install` did.
#[derive(Debug, Clone, Serialize)]
pub struct InstallReport {
    pub metadata: InstallMetadata,
    /// Files and directories created or modified (empty on a re-run).
    pub changed: Vec<PathBuf>,
    /// Whether the units were enabled and (re)started.
    pub services_started: bool,
}

/// What `uninstall` does.
#[derive(Debug, Clone, Default)]
pub struct UninstallOptions {
    /// Staging tree instead of `/`.
    pub root: Option<PathBuf>,
    /// Also remove state, cache and `/etc/banger/config.toml`.
    pub purge: bool,
}

/// What `uninstall` did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct UninstallReport {
    pub removed: Vec<PathBuf>,
    /// Best-effort steps that failed without stopping the uninstall.
    pub warnings: Vec<String>,
}

fn require_root(action: &'static str) -> Result<(), InstallError> {
    if nix::unistd::geteuid().is_root() {
        Ok(())
    } else {
        Err(InstallError::NotRoot { action })
    }
}

/// The directory of the running executable: where `banger system install`
/// looks for the binaries by default.
pub fn default_bin_src_dir() -> std::io::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    Ok(exe
        .parent()
        .map(Path::to_owned)
        .unwrap_or_else(|| PathBuf::from(".")))
}

/// Placeholder values for `owner` with binaries in `bin_dir`.
pub fn placeholders(owner: &Owner, bin_dir: &str) -> Placeholders {
    Placeholders {
        owner: owner.name.clone(),
        group: owner.group.clone(),
        home: owner.home.display().to_string(),
        bin_dir: bin_dir.to_owned(),
    }
}

/// The install metadata for `owner` in the spec's layout.
pub fn metadata(spec: &Spec, owner: &Owner) -> InstallMetadata {
    let l = &spec.layout;
    InstallMetadata {
        owner_user: owner.name.clone(),
        owner_uid: owner.uid,
        owner_gid: owner.gid,
        socket_group: None,
        version: banger_wire::VERSION.to_owned(),
        bin_dir: l.bin_dir.clone(),
        lib_dir: l.lib_dir.clone(),
        state_dir: l.state_dir.clone(),
        cache_dir: l.cache_dir.clone(),
        run_dir: l.run_dir.clone(),
        root_run_dir: l.root_run_dir.clone(),
        config_path: l.config_path.clone(),
    }
}

/// The text of `/etc/banger/install.toml`.
pub fn render_install_toml(meta: &InstallMetadata) -> Result<String, InstallError> {
    Ok(format!(
        "# Written by `banger system install`; read by every banger process.\n{}",
        toml::to_string(meta)?
    ))
}

/// A directory from a tmpfiles `d` line with its resolved ownership.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManagedDir {
    pub path: String,
    pub perms: Perms,
}

/// The directories the tmpfiles lines declare, with user and group names
/// resolved against `owner` (the lines only name root and the owner).
pub fn managed_dirs(spec: &Spec, owner: &Owner) -> Result<Vec<ManagedDir>, InstallError> {
    let ph = placeholders(owner, &spec.layout.bin_dir);
    spec.render_tmpfiles_lines(&ph)?
        .into_iter()
        .map(|line| {
            let bad = || InstallError::BadTmpfilesLine { line: line.clone() };
            let f: Vec<&str> = line.split_whitespace().collect();
            let [kind, path, mode, user, group, _age] = f[..] else {
                return Err(bad());
            };
            if kind != "d" {
                return Err(bad());
            }
            let mode = u32::from_str_radix(mode, 8).map_err(|_| bad())?;
            let uid = match user {
                "root" => 0,
                u if u == owner.name => owner.uid,
                _ => return Err(bad()),
            };
            let gid = match group {
                "root" => 0,
                g if g == owner.group => owner.gid,
                _ => return Err(bad()),
            };
            Ok(ManagedDir {
                path: path.to_owned(),
                perms: Perms { mode, uid, gid },
            })
        })
        .collect()
}

struct Sources {
    bins: Vec<(&'static str, PathBuf)>,
    agent: PathBuf,
}

fn find_sources(dir: &Path) -> Result<Sources, InstallError> {
    let find = |name: &'static str, candidates: Vec<PathBuf>| {
        candidates
            .iter()
            .find(|p| p.is_file())
            .cloned()
            .ok_or(InstallError::MissingBinary {
                name,
                searched: candidates,
            })
    };
    let bins = BINARIES
        .iter()
        .map(|&name| Ok((name, find(name, vec![dir.join(name)])?)))
        .collect::<Result<Vec<_>, InstallError>>()?;
    let agent = find(
        AGENT,
        vec![dir.join(AGENT), dir.join("../lib/banger").join(AGENT)],
    )?;
    Ok(Sources { bins, agent })
}

fn unit_names(units: &[RenderedUnit]) -> Vec<String> {
    units.iter().map(RenderedUnit::file_name).collect()
}

/// Install banger as the two systemd units (see the module docs).
/// Idempotent: a second run with the same inputs changes nothing and
/// reports an empty `changed`. State under the state and cache directories
/// is never touched.
pub fn install(opts: &InstallOptions) -> Result<InstallReport, InstallError> {
    require_root("install")?;
    let root = opts.root.as_deref();
    if root.is_none() && !systemctl::systemd_running() {
        return Err(InstallError::NoSystemd);
    }
    // Compute everything before touching the system, so bad input fails
    // with nothing half-installed.
    let spec = Spec::builtin()?;
    let l = &spec.layout;
    let owner = owner::lookup(&opts.owner, root)?;
    let sources = find_sources(&opts.bin_src_dir)?;
    let units = spec.render_units(&placeholders(&owner, &l.bin_dir))?;
    let tmpfiles = spec.render_tmpfiles(&placeholders(&owner, &l.bin_dir))?;
    let dirs = managed_dirs(&spec, &owner)?;
    let mut meta = metadata(&spec, &owner);
    if let Some(name) = &opts.socket_group {
        // The daemon refuses to start with an unknown group; say so now.
        // A staging tree's groups are the tree builder's business.
        if root.is_none() && !matches!(nix::unistd::Group::from_name(name), Ok(Some(_))) {
            return Err(InstallError::UnknownSocketGroup { name: name.clone() });
        }
        meta.socket_group = Some(name.clone());
    }
    let install_toml = render_install_toml(&meta)?;

    let mut changed = Vec::new();
    let mut note = |path: PathBuf, did: bool| {
        if did {
            changed.push(path);
        }
    };
    let at = |abs: &str| fsutil::rooted(root, abs);

    for dir in [&l.bin_dir, &l.lib_dir] {
        let p = at(dir);
        fsutil::ensure_parent(&p)?;
        note(p.clone(), fsutil::ensure_dir(&p, Perms::root(0o755))?);
    }
    for (name, src) in &sources.bins {
        let dst = at(&l.bin_dir).join(name);
        note(
            dst.clone(),
            fsutil::copy_atomic(src, &dst, Perms::root(0o755))?,
        );
    }
    let agent_dst = at(&l.lib_dir).join(AGENT);
    note(
        agent_dst.clone(),
        fsutil::copy_atomic(&sources.agent, &agent_dst, Perms::root(0o755))?,
    );

    for d in &dirs {
        let p = at(&d.path);
        note(p.clone(), fsutil::ensure_dir(&p, d.perms)?);
    }
    // bangerd may write only these under the home, and cannot create them
    // itself: made here, as the owner. In a staging tree the owner's uid
    // means nothing on this host; whoever builds the tree's homes makes them.
    if root.is_none() {
        for p in home::ensure_home_dirs(&owner, &owner.home, &spec.home_dirs)? {
            note(p, true);
        }
    }
    for (file, text) in [
        (&l.install_toml, &install_toml),
        (&l.tmpfiles_conf, &tmpfiles),
    ] {
        let p = at(file);
        if let Some(parent) = p.parent() {
            note(
                parent.to_owned(),
                fsutil::ensure_dir(parent, Perms::root(0o755))?,
            );
        }
        note(
            p.clone(),
            fsutil::write_atomic(&p, text.as_bytes(), Perms::root(0o644))?,
        );
    }
    // Units last: they must never point at binaries that are not there yet.
    let unit_dir = at(&l.unit_dir);
    note(
        unit_dir.clone(),
        fsutil::ensure_dir(&unit_dir, Perms::root(0o755))?,
    );
    for u in &units {
        let p = unit_dir.join(u.file_name());
        note(
            p.clone(),
            fsutil::write_atomic(&p, u.text().as_bytes(), Perms::root(0o644))?,
        );
    }

    let mut services_started = false;
    if root.is_none() {
        let names = unit_names(&units);
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        systemctl::run(&["daemon-reload"])?;
        systemctl::run(&[&["enable"], &names[..]].concat())?;
        // Restart only when something changed, so a re-run does not bounce
        // a healthy daemon; `start` is a no-op for running units.
        let verb = if changed.is_empty() {
            "start"
        } else {
            "restart"
        };
        systemctl::run(&[&[verb], &names[..]].concat())?;
        services_started = true;
    }
    Ok(InstallReport {
        metadata: meta,
        changed,
        services_started,
    })
}

/// Restart both units (after a config change, for example).
pub fn restart() -> Result<(), InstallError> {
    require_root("restart")?;
    if !systemctl::systemd_running() {
        return Err(InstallError::NoSystemd);
    }
    let spec = Spec::builtin()?;
    let names: Vec<String> = spec.units.keys().map(|n| format!("{n}.service")).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    systemctl::run(&[&["restart"], &names[..]].concat())?;
    Ok(())
}

/// Remove what `install` created: units, tmpfiles entry, install metadata,
/// binaries and the runtime directories; with `purge` also state, cache and
/// the system config file. Nothing outside the spec's layout is touched (in
/// particular nothing under users' homes).
pub fn uninstall(opts: &UninstallOptions) -> Result<UninstallReport, InstallError> {
    require_root("uninstall")?;
    let root = opts.root.as_deref();
    let spec = Spec::builtin()?;
    let l = &spec.layout;
    let at = |abs: &str| fsutil::rooted(root, abs);
    let mut report = UninstallReport::default();
    let unit_files: Vec<(String, PathBuf)> = spec
        .units
        .keys()
        .map(|n| {
            (
                format!("{n}.service"),
                at(&l.unit_dir).join(format!("{n}.service")),
            )
        })
        .collect();

    let live = root.is_none() && systemctl::systemd_running();
    if live {
        // The daemon first, so it is not left without its helper.
        for (name, file) in unit_files.iter().rev() {
            if !file.exists() {
                continue;
            }
            if let Err(e) = systemctl::run(&["disable", "--now", name]) {
                report.warnings.push(e.to_string());
            }
            // KillMode=process lets VMMs outlive a daemon restart; on
            // uninstall they must go too.
            let _ = systemctl::run(&["kill", "--kill-whom=all", "--signal=SIGKILL", name]);
        }
    }

    let mut rm = |path: PathBuf, did: bool| {
        if did {
            report.removed.push(path);
        }
    };
    for (_, file) in &unit_files {
        rm(file.clone(), fsutil::remove_file(file)?);
    }
    for file in [&l.tmpfiles_conf, &l.install_toml] {
        let p = at(file);
        rm(p.clone(), fsutil::remove_file(&p)?);
    }
    for name in BINARIES {
        let p = at(&l.bin_dir).join(name);
        rm(p.clone(), fsutil::remove_file(&p)?);
    }
    let agent = at(&l.lib_dir).join(AGENT);
    rm(agent.clone(), fsutil::remove_file(&agent)?);
    let lib = at(&l.lib_dir);
    rm(lib.clone(), fsutil::remove_dir_if_empty(&lib)?);
    // Runtime directories hold only sockets of the now stopped services.
    for dir in [&l.run_dir, &l.root_run_dir] {
        let p = at(dir);
        rm(p.clone(), fsutil::remove_tree(&p)?);
    }
    if opts.purge {
        for dir in [&l.state_dir, &l.cache_dir] {
            let p = at(dir);
            rm(p.clone(), fsutil::remove_tree(&p)?);
        }
        let cfg = at(&l.config_path);
        rm(cfg.clone(), fsutil::remove_file(&cfg)?);
    }
    if let Some(etc) = at(&l.install_toml).parent() {
        rm(etc.to_owned(), fsutil::remove_dir_if_empty(etc)?);
    }

    if live {
        // reset-failed first: asking about a unit by name loads it, so
        // after the reload it could stay behind as a `not-found` entry; the
        // reload then drops both units, now without files or state.
        for (name, _) in &unit_files {
            let _ = systemctl::run(&["reset-failed", name]);
        }
        if let Err(e) = systemctl::run(&["daemon-reload"]) {
            report.warnings.push(e.to_string());
        }
    }
    Ok(report)
}
