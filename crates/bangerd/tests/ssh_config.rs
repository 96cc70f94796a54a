//! `banger ssh-config --install/--uninstall` against real OpenSSH (`ssh -G`
//! prints the options ssh would use), and the daemon keeping its ssh_config
//! in step with the VM records. No root, no boot.

mod common;
mod vm_records;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use banger_state::{StateDb, VmState};
use bangerd::ssh_config::{render, write, SshFiles, SshHost};
use common::{Daemon, TestEnv};
use vm_records::record;

/// A temp HOME and, outside it, a config dir (so the `Include` line is an
/// absolute path: `ssh -G` expands `~` from the passwd entry, not `$HOME`).
struct Home {
    dir: tempfile::TempDir,
}

impl Home {
    fn new() -> Home {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("home")).unwrap();
        Home { dir }
    }

    fn home(&self) -> PathBuf {
        self.dir.path().join("home")
    }

    fn ssh_config(&self) -> PathBuf {
        self.home().join(".ssh/config")
    }

    fn banger_config(&self) -> PathBuf {
        self.dir.path().join("xdg/banger/ssh_config")
    }

    /// What bangerd writes for VM `sandbox` at 172.16.0.9.
    fn write_banger_config(&self) {
        let files = SshFiles {
            identity: self.dir.path().join("state/ssh/id_ed25519"),
            known_hosts: self.dir.path().join("state/ssh/known_hosts"),
        };
        let hosts = [SshHost {
            name: "sandbox".into(),
            ip: Some("172.16.0.9".parse().unwrap()),
        }];
        write(&self.banger_config(), &render(&hosts, &files)).unwrap();
    }

    fn banger(&self, args: &[&str]) -> Output {
        let root = self.dir.path();
        Command::new(common::daemon_bin().with_file_name("banger"))
            .args(args)
            .env("HOME", self.home())
            .env("XDG_CONFIG_HOME", root.join("xdg"))
            .env("XDG_STATE_HOME", root.join("state"))
            .env("XDG_RUNTIME_DIR", root.join("run"))
            .env("BANGER_INSTALL_FILE", root.join("no-install/install.toml"))
            .env_remove("BANGER_CONFIG")
            .output()
            .expect("run banger")
    }

    fn banger_ok(&self, args: &[&str]) -> String {
        let out = self.banger(args);
        assert!(out.status.success(), "banger {args:?}: {out:?}");
        String::from_utf8(out.stdout).unwrap()
    }

    /// `ssh -G HOST` with our `~/.ssh/config`: option name → value.
    fn ssh_g(&self, host: &str) -> Vec<(String, String)> {
        let out = Command::new("ssh")
            .arg("-F")
            .arg(self.ssh_config())
            .args(["-G", host])
            .output()
            .expect("run ssh -G (install openssh-client)");
        assert!(out.status.success(), "ssh -G {host}: {out:?}");
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .filter_map(|l| l.split_once(' '))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    }

    fn opt(&self, host: &str, key: &str) -> Vec<String> {
        self.ssh_g(host)
            .into_iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v)
            .collect()
    }
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn install_makes_ssh_use_banger_settings_and_uninstall_undoes_it() {
    let h = Home::new();
    h.write_banger_config();
    let line = h.banger_ok(&["ssh-config"]);
    assert_eq!(
        line.trim(),
        format!("Include {}", h.banger_config().display())
    );
    assert!(!h.ssh_config().exists(), "no flag, no change");

    h.banger_ok(&["ssh-config", "--install"]);
    assert_eq!(mode(&h.ssh_config()), 0o600);
    assert_eq!(mode(&h.home().join(".ssh")), 0o700);
    for host in ["sandbox.vm", "sandbox"] {
        assert_eq!(h.opt(host, "hostname"), ["172.16.0.9"], "{host}");
        assert_eq!(h.opt(host, "user"), ["root"]);
        assert_eq!(h.opt(host, "stricthostkeychecking"), ["true"]);
        let kh = h.dir.path().join("state/ssh/known_hosts");
        assert_eq!(
            h.opt(host, "userknownhostsfile"),
            [kh.display().to_string()]
        );
        let key = h.dir.path().join("state/ssh/id_ed25519");
        assert!(
            h.opt(host, "identityfile")
                .contains(&key.display().to_string()),
            "{:?}",
            h.opt(host, "identityfile")
        );
    }
    // Any other .vm name gets the key and the pinned known_hosts, not an address.
    assert_eq!(h.opt("other.vm", "hostname"), ["other.vm"]);
    assert_eq!(h.opt("other.vm", "user"), ["root"]);

    h.banger_ok(&["ssh-config", "--uninstall"]);
    assert_eq!(std::fs::read_to_string(h.ssh_config()).unwrap(), "");
    assert_eq!(h.opt("sandbox.vm", "hostname"), ["sandbox.vm"]);
    let kh = h.dir.path().join("state/ssh/known_hosts");
    assert!(!h
        .opt("sandbox.vm", "userknownhostsfile")
        .iter()
        .any(|f| f.contains(&kh.display().to_string())));
    let key = h.dir.path().join("state/ssh/id_ed25519");
    assert!(!h
        .opt("sandbox.vm", "identityfile")
        .contains(&key.display().to_string()));
    assert_eq!(h.opt("sandbox.vm", "stricthostkeychecking"), ["ask"]);
}

#[test]
fn install_is_idempotent_and_keeps_the_rest_of_the_file() {
    let h = Home::new();
    h.write_banger_config();
    std::fs::create_dir_all(h.home().join(".ssh")).unwrap();
    let mine = "# my settings\nServerAliveInterval 30\n\nHost work\n    HostName 10.9.8.7\n    User alice\n\nHost *\n    User bob\n";
    std::fs::write(h.ssh_config(), mine).unwrap();
    std::fs::set_permissions(h.ssh_config(), std::fs::Permissions::from_mode(0o640)).unwrap();

    h.banger_ok(&["ssh-config", "--install"]);
    let once = std::fs::read_to_string(h.ssh_config()).unwrap();
    h.banger_ok(&["ssh-config", "--install"]);
    let twice = std::fs::read_to_string(h.ssh_config()).unwrap();
    assert_eq!(once, twice);
    assert_eq!(twice.matches("# >>> banger ssh-config >>>").count(), 1);
    assert!(
        twice.ends_with(mine),
        "the user's text follows unchanged:\n{twice}"
    );
    assert_eq!(mode(&h.ssh_config()), 0o640);

    // The user's blocks keep working, and banger's win for its hosts even
    // though `Host *` says otherwise.
    assert_eq!(h.opt("work", "hostname"), ["10.9.8.7"]);
    assert_eq!(h.opt("work", "user"), ["alice"]);
    assert_eq!(h.opt("elsewhere", "user"), ["bob"]);
    assert_eq!(h.opt("sandbox.vm", "user"), ["root"]);
    assert_eq!(h.opt("sandbox.vm", "hostname"), ["172.16.0.9"]);

    h.banger_ok(&["ssh-config", "--uninstall"]);
    assert_eq!(std::fs::read_to_string(h.ssh_config()).unwrap(), mine);
    assert_eq!(mode(&h.ssh_config()), 0o640);
    h.banger_ok(&["ssh-config", "--uninstall"]);
    assert_eq!(std::fs::read_to_string(h.ssh_config()).unwrap(), mine);
}

#[test]
fn a_symlinked_config_is_followed_only_inside_home() {
    let h = Home::new();
    std::fs::create_dir_all(h.home().join(".ssh")).unwrap();
    let outside = h.dir.path().join("outside-config");
    std::fs::write(&outside, "Host x\n").unwrap();
    std::os::unix::fs::symlink(&outside, h.ssh_config()).unwrap();
    let out = h.banger(&["ssh-config", "--install"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("symlink") && err.contains("outside"), "{err}");
    assert_eq!(std::fs::read_to_string(&outside).unwrap(), "Host x\n");

    // A dotfiles checkout inside the home is edited through the link.
    std::fs::remove_file(h.ssh_config()).unwrap();
    let inside = h.home().join("dotfiles/ssh_config");
    std::fs::create_dir_all(inside.parent().unwrap()).unwrap();
    std::fs::write(&inside, "Host x\n").unwrap();
    std::os::unix::fs::symlink(&inside, h.ssh_config()).unwrap();
    h.banger_ok(&["ssh-config", "--install"]);
    assert!(std::fs::symlink_metadata(h.ssh_config())
        .unwrap()
        .file_type()
        .is_symlink());
    let text = std::fs::read_to_string(&inside).unwrap();
    assert!(text.starts_with("# >>> banger ssh-config >>>\n") && text.ends_with("Host x\n"));
}

#[tokio::test]
async fn the_daemon_rewrites_its_ssh_config_when_vms_come_and_go() {
    let env = TestEnv::new();
    std::fs::create_dir_all(&env.layout.state_dir).unwrap();
    {
        let db = StateDb::open(&env.layout.database()).unwrap();
        db.insert_vm(&record("alpha", 1, None, VmState::Created))
            .unwrap();
        db.insert_vm(&record("beta", 2, None, VmState::Created))
            .unwrap();
    }
    let _daemon = Daemon::start(&env).await;
    let path = env.layout.ssh_config();
    let text = std::fs::read_to_string(&path).expect("bangerd wrote its ssh_config at start");
    assert!(text.contains("\nHost alpha alpha.vm\n"), "{text}");
    assert!(text.contains("\nHost beta beta.vm\n"), "{text}");
    assert!(text.contains("\nHost *.vm\n"), "{text}");
    assert!(text.contains(&format!(
        "UserKnownHostsFile {}",
        env.layout.state_dir.join("ssh/known_hosts").display()
    )));

    let out = env
        .command(common::daemon_bin().with_file_name("banger"))
        .args(["vm", "delete", "alpha"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(!text.contains("alpha"), "{text}");
    assert!(text.contains("\nHost beta beta.vm\n"), "{text}");
}
