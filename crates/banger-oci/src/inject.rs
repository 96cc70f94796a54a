//! banger's guest boot files, added to a flattened systemd image: the same
//! files and units the recipe images carry (images/files/rootfs), enabled
//! the way `systemctl enable` would, plus a first-boot unit that installs
//! openssh-server with the image's package manager when sshd is missing.

use crate::flatten::Tree;
use crate::inspect::{Facts, Init};

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

/// First boot without sshd: install it with the package manager, then
/// start it. Its output goes to the serial console.
fn sshd_install_unit(install: &str) -> String {
    format!(
        "# Installs openssh-server on the first boot of an imported image that has none.
[Unit]
Description=banger: install openssh-server (first boot)
After=network-online.target banger-guest-apply.service banger-cmdline-dns.service
Wants=network-online.target
ConditionPathExists=!/usr/sbin/sshd

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/bin/sh -c '{install}'
ExecStart=/bin/sh -c 'grep -q \"^Include /etc/ssh/sshd_config.d\" /etc/ssh/sshd_config || sed -i \"1i Include /etc/ssh/sshd_config.d/*.conf\" /etc/ssh/sshd_config; rm -f /etc/ssh/ssh_host_*; ssh-keygen -q -t ed25519 -N \"\" -C \"\" -f /etc/ssh/ssh_host_ed25519_key; systemctl enable --now ssh.service sshd.service 2>/dev/null || systemctl start ssh.service || systemctl start sshd.service'
StandardOutput=journal+console
StandardError=journal+console
TimeoutStartSec=15min

[Install]
WantedBy=multi-user.target
"
    )
}

/// Add banger's files to `tree` for the init `facts` found.
pub fn inject(tree: &mut Tree, facts: &Facts) {
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
    match facts.init {
        Init::Systemd => inject_systemd(tree, facts),
        Init::Banger => {}
    }
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
    if facts.sshd.is_none() {
        if let Some(pm) = facts.package_manager {
            let unit = sshd_install_unit(pm.install_sshd());
            tree.put_file(
                "/etc/systemd/system/banger-sshd-install.service",
                unit.as_bytes(),
                0o644,
            );
            enable(tree, "banger-sshd-install.service", "multi-user.target");
        }
    }
}
