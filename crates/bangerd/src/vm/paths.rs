//! Where a VM's files live.
//!
//! ```text
//! <state>/vms/<id>/root.ext4, work.ext4, config.ext4   disks (0600)
//! <state>/vms/<id>/ssh_host_ed25519_key{,.pub}         the VM's host key
//! <state>/vms/<id>/serial.log                          serial console, appended
//! <state>/ssh/known_hosts                              banger's known_hosts (pinned keys)
//! <runtime>/vms/<id>/                                  VMM run dir: qmp.sock or
//!                                                      firecracker.sock, agent.sock,
//!                                                      qemu.pid, vmm.json, VMM log
//! ```

use std::path::PathBuf;

use banger_host::paths::Layout;

/// The files of one VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmPaths {
    /// `<state>/vms/<id>`: everything that survives stop/start.
    pub dir: PathBuf,
    pub root_disk: PathBuf,
    pub work_disk: PathBuf,
    pub config_drive: PathBuf,
    /// The host key's private half (OpenSSH format), put on the config drive.
    pub host_key: PathBuf,
    pub host_key_pub: PathBuf,
    pub serial_log: PathBuf,
    /// `<runtime>/vms/<id>`: sockets and the VMM handle, gone after stop.
    pub run_dir: PathBuf,
    /// Host side of the agent channel (inside `run_dir`).
    pub agent_socket: PathBuf,
}

impl VmPaths {
    /// The paths of VM `id` in `layout`.
    pub fn new(layout: &Layout, id: &str) -> VmPaths {
        let dir = vms_dir(layout).join(id);
        let run_dir = layout.runtime_dir.join("vms").join(id);
        VmPaths {
            root_disk: dir.join("root.ext4"),
            work_disk: dir.join("work.ext4"),
            config_drive: dir.join("config.ext4"),
            host_key: dir.join("ssh_host_ed25519_key"),
            host_key_pub: dir.join("ssh_host_ed25519_key.pub"),
            serial_log: dir.join("serial.log"),
            agent_socket: run_dir.join("agent.sock"),
            dir,
            run_dir,
        }
    }
}

/// `<state>/vms`: the parent of every VM directory (where the clone
/// strategy is probed).
pub fn vms_dir(layout: &Layout) -> PathBuf {
    layout.state_dir.join("vms")
}

/// banger's own `known_hosts` file (`<state>/ssh/known_hosts`), next to the
/// default SSH key; never the user's `~/.ssh/known_hosts`.
pub fn known_hosts(layout: &Layout) -> PathBuf {
    layout.state_dir.join("ssh").join("known_hosts")
}
