//! What a flattened image can boot with, decided at pull time from the
//! tree: its init (systemd or none), whether it has sshd, and which package
//! manager could install it on first boot.

use crate::flatten::{Kind, Tree};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Init {
    /// `/sbin/init` is systemd: banger's units are enabled in it.
    Systemd,
    /// No systemd: banger's own init runs as PID 1.
    Banger,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PackageManager {
    Apt,
    Apk,
    Dnf,
    Microdnf,
    Zypper,
}

impl PackageManager {
    pub fn as_str(self) -> &'static str {
        match self {
            PackageManager::Apt => "apt",
            PackageManager::Apk => "apk",
            PackageManager::Dnf => "dnf",
            PackageManager::Microdnf => "microdnf",
            PackageManager::Zypper => "zypper",
        }
    }

    /// The command that installs the OpenSSH server (non-interactive).
    pub fn install_sshd(self) -> &'static str {
        match self {
            PackageManager::Apt => {
                "apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends openssh-server"
            }
            PackageManager::Apk => "apk add --no-cache openssh-server",
            PackageManager::Dnf => "dnf install -y openssh-server",
            PackageManager::Microdnf => "microdnf install -y openssh-server",
            PackageManager::Zypper => "zypper --non-interactive install openssh-server",
        }
    }
}

/// What the image has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Facts {
    pub init: Init,
    /// Path of sshd in the image, when present.
    pub sshd: Option<String>,
    pub package_manager: Option<PackageManager>,
    /// A POSIX shell (`/bin/sh`), needed by banger's boot scripts.
    pub shell: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    #[error("the image has no sshd and no package manager to install it with (looked for apt-get, apk, dnf, microdnf, zypper): banger reaches VMs over SSH. Use an image with openssh-server or a package manager")]
    NoSshd,
    #[error("the image has no /bin/sh: banger's boot scripts need a POSIX shell")]
    NoShell,
}

const BIN_DIRS: [&str; 4] = ["usr/sbin", "usr/bin", "sbin", "bin"];

fn is_file(tree: &Tree, path: &str) -> bool {
    let Some(key) = tree.resolve(path) else {
        return false;
    };
    tree.iter()
        .find(|(k, _)| *k == key.as_slice())
        .is_some_and(|(_, n)| matches!(n.kind, Kind::File(_)))
}

fn find_bin(tree: &Tree, name: &str) -> Option<String> {
    BIN_DIRS
        .iter()
        .map(|d| format!("{d}/{name}"))
        .find(|p| is_file(tree, p))
        .map(|p| format!("/{p}"))
}

pub fn inspect(tree: &Tree) -> Result<Facts, InspectError> {
    let systemd = ["lib/systemd/systemd", "usr/lib/systemd/systemd"]
        .iter()
        .any(|p| is_file(tree, p))
        && tree
            .resolve("sbin/init")
            .is_some_and(|k| k.ends_with(b"systemd") && is_file(tree, "sbin/init"));
    let sshd = find_bin(tree, "sshd");
    let package_manager = [
        ("apt-get", PackageManager::Apt),
        ("apk", PackageManager::Apk),
        ("dnf", PackageManager::Dnf),
        ("microdnf", PackageManager::Microdnf),
        ("zypper", PackageManager::Zypper),
    ]
    .into_iter()
    .find(|(b, _)| find_bin(tree, b).is_some())
    .map(|(_, pm)| pm);
    let shell = is_file(tree, "bin/sh");
    if sshd.is_none() && package_manager.is_none() {
        return Err(InspectError::NoSshd);
    }
    if !shell {
        return Err(InspectError::NoShell);
    }
    Ok(Facts {
        init: if systemd { Init::Systemd } else { Init::Banger },
        sshd,
        package_manager,
        shell,
    })
}
