//! `banger system status`: what is installed, running and listening.

use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use banger_wire::install::InstallMetadata;
use serde::Serialize;

use crate::fsutil;
use crate::install::{placeholders, AGENT, BINARIES};
use crate::owner;
use crate::spec::{Spec, SpecError};
use crate::systemctl;

/// Errors gathering the status (only the built-in data can fail; every
/// probe of the host is reported in the status itself).
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error(transparent)]
    Spec(#[from] SpecError),
}

/// The state of a system install.
#[derive(Debug, Clone, Serialize)]
pub struct SystemStatus {
    /// Staging tree inspected instead of `/`.
    pub root: Option<PathBuf>,
    pub install_file: PathBuf,
    /// Parsed `install.toml`, when present and valid.
    pub metadata: Option<InstallMetadata>,
    /// Why `install.toml` could not be read (absent file → `None` here and in
    /// `metadata`).
    pub metadata_error: Option<String>,
    pub units: Vec<UnitStatus>,
    pub binaries: Vec<BinaryStatus>,
    pub sockets: Vec<SocketStatus>,
}

impl SystemStatus {
    /// Whether `install.toml` exists (the host is in system mode).
    pub fn installed(&self) -> bool {
        self.metadata.is_some() || self.metadata_error.is_some()
    }

    /// Installed, both unit files current and (when queried) both active.
    pub fn healthy(&self) -> bool {
        self.metadata.is_some()
            && self.units.iter().all(|u| {
                u.file_present
                    && u.matches_builtin != Some(false)
                    && u.active.as_deref().is_none_or(|a| a == "active")
            })
            && self.binaries.iter().all(|b| b.present)
    }
}

/// One unit.
#[derive(Debug, Clone, Serialize)]
pub struct UnitStatus {
    pub name: String,
    pub file: PathBuf,
    pub file_present: bool,
    /// Whether the file equals what this banger would write for the
    /// installed owner (`None` when that cannot be determined).
    pub matches_builtin: Option<bool>,
    /// `systemctl is-active` (`None` for a staging tree or without systemd).
    pub active: Option<String>,
}

/// One installed binary.
#[derive(Debug, Clone, Serialize)]
pub struct BinaryStatus {
    pub path: PathBuf,
    pub present: bool,
    /// First line of `BINARY --version`.
    pub version: Option<String>,
}

/// One API socket.
#[derive(Debug, Clone, Serialize)]
pub struct SocketStatus {
    pub path: PathBuf,
    /// `None` when this user may not look (the helper's directory is
    /// closed to everyone but root and the owner's group).
    pub present: Option<bool>,
}

fn version_of(path: &Path) -> Option<String> {
    let out = Command::new(path).arg("--version").output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    out.status
        .success()
        .then(|| text.lines().next().unwrap_or("").trim().to_owned())
}

fn socket_present(path: &Path) -> Option<bool> {
    match std::fs::symlink_metadata(path) {
        Ok(md) => Some(md.file_type().is_socket()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Some(false),
        Err(_) => None,
    }
}

/// Gather the status of the install under `root` (or `/`). Works without
/// root; systemd is queried only for the live system.
pub fn status(root: Option<&Path>) -> Result<SystemStatus, StatusError> {
    let spec = Spec::builtin()?;
    let l = &spec.layout;
    let at = |abs: &str| fsutil::rooted(root, abs);
    let install_file = at(&l.install_toml);
    let (metadata, metadata_error) = match std::fs::read_to_string(&install_file) {
        Ok(text) => match toml::from_str::<InstallMetadata>(&text) {
            Ok(m) => (Some(m), None),
            Err(e) => (None, Some(format!("{}: {e}", install_file.display()))),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => (None, None),
        Err(e) => (None, Some(format!("{}: {e}", install_file.display()))),
    };
    let expected = metadata.as_ref().and_then(|m| {
        let owner = owner::lookup(&m.owner_user, root).ok()?;
        spec.render_units(&placeholders(&owner, &m.bin_dir)).ok()
    });
    let live = root.is_none() && systemctl::systemd_running();
    let units = spec
        .units
        .keys()
        .map(|name| {
            let file_name = format!("{name}.service");
            let file = at(&l.unit_dir).join(&file_name);
            let text = std::fs::read_to_string(&file).ok();
            let matches_builtin = match (&expected, &text) {
                (Some(units), Some(text)) => units
                    .iter()
                    .find(|u| &u.name == name)
                    .map(|u| &u.text() == text),
                _ => None,
            };
            let active =
                live.then(|| systemctl::is_active(&file_name).unwrap_or_else(|e| e.to_string()));
            UnitStatus {
                name: file_name,
                file_present: text.is_some(),
                file,
                matches_builtin,
                active,
            }
        })
        .collect();
    let bin_dir = metadata
        .as_ref()
        .map_or(l.bin_dir.as_str(), |m| m.bin_dir.as_str());
    let lib_dir = metadata
        .as_ref()
        .map_or(l.lib_dir.as_str(), |m| m.lib_dir.as_str());
    let binaries = BINARIES
        .iter()
        .map(|b| at(bin_dir).join(b))
        .chain([at(lib_dir).join(AGENT)])
        .map(|path| BinaryStatus {
            present: path.is_file(),
            version: version_of(&path),
            path,
        })
        .collect();
    let run_dir = metadata
        .as_ref()
        .map_or(l.run_dir.as_str(), |m| m.run_dir.as_str());
    let root_run_dir = metadata
        .as_ref()
        .map_or(l.root_run_dir.as_str(), |m| m.root_run_dir.as_str());
    let sockets = [
        at(run_dir).join("bangerd.sock"),
        at(root_run_dir).join("bangerd-root.sock"),
    ]
    .into_iter()
    .map(|path| SocketStatus {
        present: socket_present(&path),
        path,
    })
    .collect();
    Ok(SystemStatus {
        root: root.map(Path::to_owned),
        install_file,
        metadata,
        metadata_error,
        units,
        binaries,
        sockets,
    })
}
