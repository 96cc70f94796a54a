//! CPU architecture and KVM.

use std::os::fd::AsRawFd;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// The only KVM API version Linux has ever shipped; anything else is broken.
pub const KVM_API_VERSION: i32 = 12;

// KVM_GET_API_VERSION = _IO(KVMIO, 0x00) from <linux/kvm.h>.
nix::ioctl_none!(kvm_get_api_version, 0xAE, 0x00);

/// The machine hardware name of the running kernel (`uname -m`).
pub fn machine_arch() -> String {
    match nix::sys::utsname::uname() {
        Ok(u) => u.machine().to_string_lossy().into_owned(),
        // uname(2) cannot fail on Linux; fall back to the build target.
        Err(_) => std::env::consts::ARCH.to_owned(),
    }
}

/// What opening the KVM device gave.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "kebab-case")]
pub enum KvmDevice {
    /// The device node does not exist (no KVM module, or not exposed here).
    Missing,
    /// It exists but this user cannot open it read-write.
    NotAccessible { error: String },
    /// It opened read-write and answered `KVM_GET_API_VERSION`.
    Open { api_version: i32 },
}

/// The KVM facts backend choice and doctor need.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvmState {
    pub device: KvmDevice,
    /// `kvm_pvm` is loaded: KVM is a nested PVM hypervisor on which our
    /// guests are unusably slow and die (`KVM_EXIT_INTERNAL_ERROR`).
    pub nested_pvm: bool,
}

impl KvmState {
    /// Whether guests can run with hardware acceleration.
    pub fn usable(&self) -> bool {
        self.unusable_reason().is_none()
    }

    /// Why KVM cannot be used, or `None` when it can.
    pub fn unusable_reason(&self) -> Option<String> {
        match &self.device {
            KvmDevice::Missing => Some("/dev/kvm does not exist".to_owned()),
            KvmDevice::NotAccessible { error } => {
                Some(format!("/dev/kvm cannot be opened read-write: {error}"))
            }
            KvmDevice::Open { api_version } if *api_version != KVM_API_VERSION => Some(format!(
                "/dev/kvm reports API version {api_version}, expected {KVM_API_VERSION}"
            )),
            KvmDevice::Open { .. } if self.nested_pvm => Some(
                "KVM is nested PVM (kvm_pvm is loaded), on which guests are unusably slow and crash"
                    .to_owned(),
            ),
            KvmDevice::Open { .. } => None,
        }
    }
}

/// Whether the `kvm_pvm` module is loaded, read from `<sys_root>/module/kvm_pvm`.
pub fn nested_pvm_loaded(sys_root: &Path) -> bool {
    sys_root.join("module/kvm_pvm").exists()
}

/// Open `dev_kvm` read-write, ask its API version, and look for nested PVM.
pub fn probe_kvm(dev_kvm: &Path, sys_root: &Path) -> KvmState {
    let device = match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(dev_kvm)
    {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => KvmDevice::Missing,
        Err(e) => KvmDevice::NotAccessible {
            error: e.to_string(),
        },
        // SAFETY: KVM_GET_API_VERSION takes no argument and only returns an
        // int; the fd is valid for the duration of the call.
        Ok(file) => match unsafe { kvm_get_api_version(file.as_raw_fd()) } {
            Ok(api_version) => KvmDevice::Open { api_version },
            Err(errno) => KvmDevice::NotAccessible {
                error: format!("KVM_GET_API_VERSION failed: {errno}"),
            },
        },
    };
    KvmState {
        device,
        nested_pvm: nested_pvm_loaded(sys_root),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kvm_pvm_is_detected_from_a_fixture_sysfs() {
        let sys = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(sys.path().join("module/kvm")).unwrap();
        assert!(!nested_pvm_loaded(sys.path()));
        std::fs::create_dir_all(sys.path().join("module/kvm_pvm")).unwrap();
        assert!(nested_pvm_loaded(sys.path()));
    }

    #[test]
    fn usable_needs_an_open_device_the_right_api_and_no_pvm() {
        let open = KvmDevice::Open {
            api_version: KVM_API_VERSION,
        };
        assert!(KvmState {
            device: open.clone(),
            nested_pvm: false
        }
        .usable());
        let pvm = KvmState {
            device: open,
            nested_pvm: true,
        };
        assert!(pvm.unusable_reason().unwrap().contains("kvm_pvm"));
        let missing = KvmState {
            device: KvmDevice::Missing,
            nested_pvm: false,
        };
        assert!(missing
            .unusable_reason()
            .unwrap()
            .contains("does not exist"));
        let denied = KvmState {
            device: KvmDevice::NotAccessible {
                error: "Permission denied".into(),
            },
            nested_pvm: false,
        };
        assert!(denied
            .unusable_reason()
            .unwrap()
            .contains("Permission denied"));
        let odd = KvmState {
            device: KvmDevice::Open { api_version: 11 },
            nested_pvm: false,
        };
        assert!(odd.unusable_reason().unwrap().contains("API version 11"));
    }

    #[test]
    fn a_missing_device_node_is_reported_as_missing() {
        let dir = tempfile::tempdir().unwrap();
        let state = probe_kvm(&dir.path().join("kvm"), dir.path());
        assert_eq!(state.device, KvmDevice::Missing);
    }

    #[test]
    fn a_regular_file_is_not_a_kvm_device() {
        let dir = tempfile::tempdir().unwrap();
        let fake = dir.path().join("kvm");
        std::fs::write(&fake, b"").unwrap();
        match probe_kvm(&fake, dir.path()).device {
            KvmDevice::NotAccessible { error } => assert!(error.contains("KVM_GET_API_VERSION")),
            other => panic!("expected NotAccessible, got {other:?}"),
        }
    }

    #[test]
    fn the_real_host_probe_agrees_with_sysfs() {
        let state = probe_kvm(Path::new("/dev/kvm"), Path::new("/sys"));
        assert_eq!(state.nested_pvm, Path::new("/sys/module/kvm_pvm").exists());
        assert_eq!(
            matches!(state.device, KvmDevice::Missing),
            !Path::new("/dev/kvm").exists()
        );
    }

    #[test]
    fn machine_arch_matches_uname() {
        let out = std::process::Command::new("uname")
            .arg("-m")
            .output()
            .unwrap();
        assert_eq!(machine_arch(), String::from_utf8_lossy(&out.stdout).trim());
    }
}
