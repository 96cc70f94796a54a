//! banger's guest boot files, added to a flattened image. With systemd: the
//! same files and units the recipe images carry (images/files/rootfs),
//! enabled the way `systemctl enable` would. Without: the guest agent as
//! `/sbin/init` (its `init` mode, crates/banger-vsock-agent/src/init.rs).
//! Either way, when sshd is missing, a first-boot script installs
//! openssh-server with the image's package manager.

use crate::flatten::Tree;
use crate::inspect::{Facts, Init, PackageManager};

macro_rules! rootfs_file {
    ($name:literal) => {
        include_bytes!(concat!("../../../images/files/rootfs/", $name)).as_slice()
    };
}

/// Unit files: (name, bytes). Enabled into the listed target.
const UNITS: [(&str, &[u8], &str); 4] = [
    (
        "banger-ssh-hostkey.service",
        rootfs_file!("banger-ssh-hostkey.service"),
        "ssh.service",
    ),
    (
        "banger-cmdline-dns.service",
        rootfs_file!("banger-cmdline-dns.service"),
        "sysinit.target",
    ),
    (
        "banger-guest-apply.service",
        rootfs_file!("banger-guest-apply.service"),
        "multi-user.target",
    ),
    (
        "banger-guest-agent.service",
        rootfs_file!("banger-guest-agent.service"),
        "multi-user.target",
    ),
];

/// sshd settings of banger's images, as a drop-in (sshd keeps the first
/// value it reads, and distributions include sshd_config.d first).
pub const SSHD_DROPIN: &str = "\
# banger: root logs in with a key only; every VM has its own host key.
HostKey /etc/ssh/ssh_host_ed25519_key
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
AuthorizedKeysFile /root/.ssh/authorized_keys
StrictModes yes
";

/// Where banger's first-boot files go in the image.
pub const SSHD_INSTALL: &str = "/usr/local/lib/banger/sshd-install";
pub const AGENT: &str = "/usr/local/lib/banger/banger-vsock-agent";
const APT_SOURCES: &str = "/usr/local/lib/banger/apt-sources.list";
const APT_SOURCE_PARTS: &str = "/usr/local/lib/banger/apt-sources.d";

/// What banger adds besides its fixed files.
#[derive(Debug, Clone, Default)]
pub struct Extras<'a> {
    /// The guest agent binary: PID 1 of images without systemd.
    pub agent: Option<&'a [u8]>,
    /// A `deb ...` line the first-boot openssh-server install uses instead
    /// of the image's apt sources (a local mirror).
    pub apt_source: Option<&'a str>,
}

/// The first-boot install of openssh-server (run by the systemd unit or by
/// banger's init; its output goes to the serial console). It keeps the host
/// key banger pinned (the config drive's, applied before) and drops the
/// other types the package generates.
fn sshd_install_script(install: &str) -> String {
    format!(
        r#"#!/bin/sh
# banger: installs openssh-server on the first boot of an imported image
# that has none (docs/oci-import.md).
set -eu
echo "banger: first boot: installing openssh-server"
policy=
if [ ! -e /usr/sbin/policy-rc.d ]; then
  # No daemon starts from a maintainer script: banger starts sshd itself.
  printf '#!/bin/sh
exit 101
' > /usr/sbin/policy-rc.d
  chmod 0755 /usr/sbin/policy-rc.d
  policy=1
fi
trap '[ -z "$policy" ] || rm -f /usr/sbin/policy-rc.d' EXIT
{install}
conf=/etc/ssh/sshd_config
grep -q '^Include /etc/ssh/sshd_config.d' "$conf" || sed -i '1i Include /etc/ssh/sshd_config.d/*.conf' "$conf"
for t in rsa ecdsa dsa; do rm -f "/etc/ssh/ssh_host_${{t}}_key" "/etc/ssh/ssh_host_${{t}}_key.pub"; done
[ -e /etc/ssh/ssh_host_ed25519_key ] || ssh-keygen -q -t ed25519 -N "" -C "" -f /etc/ssh/ssh_host_ed25519_key
echo "banger: first boot: openssh-server installed"
"#
    )
}

/// The install command for `pm`; with `apt_source`, apt reads only banger's
/// list (so a mirror works without the image's sources or DNS).
fn install_command(pm: PackageManager, apt_source: bool) -> String {
    if pm == PackageManager::Apt && apt_source {
        let o = format!(
            "-o Dir::Etc::SourceList={APT_SOURCES} -o Dir::Etc::SourceParts={APT_SOURCE_PARTS}"
        );
        format!(
            "apt-get {o} update
DEBIAN_FRONTEND=noninteractive apt-get {o} install -y --no-install-recommends openssh-server"
        )
    } else {
        pm.install_sshd().replace(
            " && ", "
",
        )
    }
}

/// Systemd: the unit running [`SSHD_INSTALL`], then starting sshd.
const SSHD_INSTALL_UNIT: &str = "# Installs openssh-server on the first boot of an imported image that has none.
[Unit]
Description=banger: install openssh-server (first boot)
After=network-online.target banger-guest-apply.service banger-cmdline-dns.service
Wants=network-online.target
ConditionPathExists=!/usr/sbin/sshd

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/bin/sh /usr/local/lib/banger/sshd-install
ExecStart=/bin/sh -c 'systemctl enable --now ssh.service 2>/dev/null || systemctl enable --now sshd.service'
StandardOutput=journal+console
StandardError=journal+console
TimeoutStartSec=15min

[Install]
WantedBy=multi-user.target
";

/// Add banger's files to `tree` for the init `facts` found.
pub fn inject(tree: &mut Tree, facts: &Facts, extras: &Extras<'_>) {
    tree.put_file(
        "/usr/local/lib/banger/guest-load",
        rootfs_file!("banger-guest-load"),
        0o755,
    );
    tree.put_file(
        "/usr/local/lib/banger/cmdline-dns",
        rootfs_file!("cmdline-dns"),
        0o755,
    );
    tree.put_file("/etc/fstab", rootfs_file!("fstab"), 0o644);
    tree.put_file("/etc/hostname", rootfs_file!("hostname"), 0o644);
    tree.put_file("/etc/hosts", rootfs_file!("hosts"), 0o644);
    tree.put_file("/etc/resolv.conf", rootfs_file!("resolv.conf"), 0o644);
    // Empty: every VM's first boot makes its own ids.
    tree.put_file("/etc/machine-id", b"", 0o444);
    tree.put_dir("/usr/lib/modules");
    tree.put_dir("/root");
    tree.put_file(
        "/etc/ssh/sshd_config.d/10-banger.conf",
        SSHD_DROPIN.as_bytes(),
        0o644,
    );
    for key in ["rsa", "ecdsa", "ed25519", "dsa"] {
        tree.remove(&format!("/etc/ssh/ssh_host_{key}_key"));
        tree.remove(&format!("/etc/ssh/ssh_host_{key}_key.pub"));
    }
    if facts.sshd.is_none() {
        if let Some(pm) = facts.package_manager {
            let script = sshd_install_script(&install_command(pm, extras.apt_source.is_some()));
            tree.put_file(SSHD_INSTALL, script.as_bytes(), 0o755);
            if let Some(line) = extras.apt_source {
                tree.put_file(APT_SOURCES, format!("{line}\n").as_bytes(), 0o644);
                tree.put_dir(APT_SOURCE_PARTS);
            }
        }
    }
    match facts.init {
        Init::Systemd => inject_systemd(tree, facts),
        Init::Banger => inject_init(tree, extras.agent.unwrap_or_default()),
    }
}

/// banger's init: the agent, and `/sbin/init` a relative link to it (the
/// initrd checks the link from outside the new root).
fn inject_init(tree: &mut Tree, agent: &[u8]) {
    tree.put_file(AGENT, agent, 0o755);
    let dir = tree.resolve("/sbin").unwrap_or_else(|| b"sbin".to_vec());
    let depth = dir.split(|b| *b == b'/').filter(|c| !c.is_empty()).count();
    let target = format!("{}{}", "../".repeat(depth), AGENT.trim_start_matches('/'));
    tree.remove(&format!("/{}/init", String::from_utf8_lossy(&dir)));
    tree.put_symlink("/sbin/init", &target);
}

fn enable(tree: &mut Tree, unit: &str, target: &str) {
    tree.put_symlink(
        &format!("/etc/systemd/system/{target}.wants/{unit}"),
        &format!("/etc/systemd/system/{unit}"),
    );
}

fn inject_systemd(tree: &mut Tree, facts: &Facts) {
    for (name, bytes, target) in UNITS {
        tree.put_file(&format!("/etc/systemd/system/{name}"), bytes, 0o644);
        enable(tree, name, target);
    }
    // ip= on the kernel command line becomes a networkd config.
    for (unit, target) in [
        ("systemd-networkd.service", "multi-user.target"),
        ("systemd-network-generator.service", "sysinit.target"),
    ] {
        for dir in ["lib/systemd/system", "usr/lib/systemd/system"] {
            let path = format!("/{dir}/{unit}");
            if tree
                .resolve(&path)
                .is_some_and(|k| tree.get(&String::from_utf8_lossy(&k)).is_some())
            {
                tree.put_symlink(&format!("/etc/systemd/system/{target}.wants/{unit}"), &path);
                break;
            }
        }
    }
    if facts.sshd.is_none() && facts.package_manager.is_some() {
        tree.put_file(
            "/etc/systemd/system/banger-sshd-install.service",
            SSHD_INSTALL_UNIT.as_bytes(),
            0o644,
        );
        enable(tree, "banger-sshd-install.service", "multi-user.target");
    }
}
