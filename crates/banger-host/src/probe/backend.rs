//! Which VMM backend runs guests on this host (`vmm = auto | firecracker | qemu`).

use std::path::{Path, PathBuf};

use banger_config::VmmChoice;
use serde::{Deserialize, Serialize};

use super::{locate_program, probe_kvm, KvmState, ProbeEnv};

pub use banger_wire::vmm::{Accel, Backend};

/// The backend the configuration resolves to on this host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendChoice {
    /// The backend VMs get (when `problem` is set: the one that was asked
    /// for or would be used, but cannot run).
    pub backend: Backend,
    /// One sentence saying why, for `doctor`, `daemon status` and logs.
    pub reason: String,
    /// The resolved VMM binary (`None` when it was not found).
    pub binary: Option<PathBuf>,
    /// Set when no VM can start with this choice, saying what to fix.
    pub problem: Option<String>,
}

/// No VM can start with the configured backend.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("backend {backend} is unavailable: {problem}")]
pub struct BackendUnavailable {
    pub backend: Backend,
    pub problem: String,
}

impl BackendChoice {
    /// The backend and its binary, or why VMs cannot start.
    pub fn require(&self) -> Result<(Backend, &Path), BackendUnavailable> {
        match (&self.problem, &self.binary) {
            (None, Some(bin)) => Ok((self.backend, bin)),
            (Some(problem), _) => Err(BackendUnavailable {
                backend: self.backend,
                problem: problem.clone(),
            }),
            (None, None) => Err(BackendUnavailable {
                backend: self.backend,
                problem: "no VMM binary was found".to_owned(),
            }),
        }
    }
}

/// The host facts backend choice depends on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendFacts {
    pub kvm: KvmState,
    /// The Firecracker binary, or why it is missing.
    pub firecracker: Result<PathBuf, String>,
    /// The QEMU binary, or why it is missing.
    pub qemu: Result<PathBuf, String>,
}

/// Pure decision from probed facts (the truth table `choose_backend` uses).
pub fn decide_backend(vmm: VmmChoice, facts: &BackendFacts) -> BackendChoice {
    let kvm_problem = facts.kvm.unusable_reason();
    let qemu_accel = if kvm_problem.is_none() {
        Accel::Kvm
    } else {
        Accel::Tcg
    };
    let qemu_how = match &kvm_problem {
        None => "QEMU with KVM".to_owned(),
        Some(why) => format!("QEMU with TCG software emulation (slower) because {why}"),
    };
    let qemu = Backend::Qemu { accel: qemu_accel };
    let choice = |backend, reason: String, binary: &Result<PathBuf, String>| BackendChoice {
        backend,
        reason,
        binary: binary.as_ref().ok().cloned(),
        problem: None,
    };
    let fail = |backend, reason: String, problem: String, binary: &Result<PathBuf, String>| {
        BackendChoice {
            backend,
            reason,
            binary: binary.as_ref().ok().cloned(),
            problem: Some(problem),
        }
    };
    match vmm {
        VmmChoice::Auto => {
            let fc_why = match (&facts.firecracker, &kvm_problem) {
                (Ok(fc), None) => {
                    return choice(
                        Backend::Firecracker,
                        format!("vmm = auto: Firecracker ({}) with usable KVM", fc.display()),
                        &facts.firecracker,
                    );
                }
                (Err(why), _) => format!("Firecracker is not installed ({why})"),
                (Ok(_), Some(why)) => format!("Firecracker needs KVM and {why}"),
            };
            match &facts.qemu {
                Ok(q) => choice(
                    qemu,
                    format!("vmm = auto: {fc_why}; using {qemu_how} ({})", q.display()),
                    &facts.qemu,
                ),
                Err(qemu_why) => fail(
                    qemu,
                    format!("vmm = auto: {fc_why}, and QEMU is not installed either"),
                    format!(
                        "no usable VMM: {fc_why}; QEMU: {qemu_why}. Install QEMU \
                         (`sudo apt-get install qemu-system-x86`) or set qemu_bin"
                    ),
                    &facts.qemu,
                ),
            }
        }
        VmmChoice::Firecracker => match (&facts.firecracker, &kvm_problem) {
            (Ok(fc), None) => choice(
                Backend::Firecracker,
                format!("vmm = firecracker: {} with usable KVM", fc.display()),
                &facts.firecracker,
            ),
            (Err(why), _) => fail(
                Backend::Firecracker,
                "vmm = firecracker, but Firecracker is not installed".to_owned(),
                format!(
                    "Firecracker not found ({why}): install a release binary from \
                     github.com/firecracker-microvm/firecracker and set firecracker_bin, \
                     or set vmm = \"auto\" to fall back to QEMU"
                ),
                &facts.firecracker,
            ),
            (Ok(_), Some(why)) => fail(
                Backend::Firecracker,
                "vmm = firecracker, but KVM is not usable".to_owned(),
                format!(
                    "Firecracker needs KVM and {why}; set vmm = \"auto\" or \"qemu\" to use \
                     QEMU with TCG"
                ),
                &facts.firecracker,
            ),
        },
        VmmChoice::Qemu => match &facts.qemu {
            Ok(q) => choice(qemu, format!("vmm = qemu: {qemu_how} ({})", q.display()), &facts.qemu),
            Err(why) => fail(
                qemu,
                "vmm = qemu, but QEMU is not installed".to_owned(),
                format!(
                    "QEMU not found ({why}): `sudo apt-get install qemu-system-x86`, or fix qemu_bin"
                ),
                &facts.qemu,
            ),
        },
    }
}

/// The QEMU system emulator banger runs.
pub(crate) const QEMU_PROGRAM: &str = "qemu-system-x86_64";
/// The Firecracker binary name looked up on the search path.
pub(crate) const FIRECRACKER_PROGRAM: &str = "firecracker";

/// [`choose_backend`] against an explicit [`ProbeEnv`].
pub fn choose_backend_in(
    env: &ProbeEnv,
    vmm: VmmChoice,
    firecracker_bin: Option<&Path>,
    qemu_bin: Option<&Path>,
) -> BackendChoice {
    let facts = BackendFacts {
        kvm: probe_kvm(&env.dev_kvm, &env.sys_root),
        firecracker: locate_program(FIRECRACKER_PROGRAM, firecracker_bin, &env.search_path)
            .map_err(|e| e.to_string()),
        qemu: locate_program(QEMU_PROGRAM, qemu_bin, &env.search_path).map_err(|e| e.to_string()),
    };
    decide_backend(vmm, &facts)
}

/// Resolve `vmm` on this host: `auto` picks Firecracker when it is installed
/// and KVM is usable, else QEMU with KVM when usable, else QEMU with TCG.
/// Explicit choices are honoured; when they cannot run, the result carries a
/// `problem`. `firecracker_bin`/`qemu_bin` are the config values (`None`:
/// search `$PATH`).
pub fn choose_backend(
    vmm: VmmChoice,
    firecracker_bin: Option<&Path>,
    qemu_bin: Option<&Path>,
) -> BackendChoice {
    choose_backend_in(&ProbeEnv::host(), vmm, firecracker_bin, qemu_bin)
}

#[cfg(test)]
mod tests {
    use super::super::{KvmDevice, KVM_API_VERSION};
    use super::*;

    const FC: &str = "/opt/fc/firecracker";
    const QEMU: &str = "/usr/bin/qemu-system-x86_64";

    fn facts(fc: bool, kvm_usable: bool, qemu: bool) -> BackendFacts {
        BackendFacts {
            kvm: KvmState {
                device: KvmDevice::Open {
                    api_version: KVM_API_VERSION,
                },
                nested_pvm: !kvm_usable,
            },
            firecracker: if fc {
                Ok(FC.into())
            } else {
                Err("not in PATH".into())
            },
            qemu: if qemu {
                Ok(QEMU.into())
            } else {
                Err("not in PATH".into())
            },
        }
    }

    const KVM: Backend = Backend::Qemu { accel: Accel::Kvm };
    const TCG: Backend = Backend::Qemu { accel: Accel::Tcg };

    #[test]
    fn truth_table() {
        use VmmChoice::*;
        // (vmm, firecracker installed, kvm usable, qemu installed) -> (backend, usable)
        let table = [
            (Auto, true, true, true, Backend::Firecracker, true),
            (Auto, true, true, false, Backend::Firecracker, true),
            (Auto, true, false, true, TCG, true),
            (Auto, false, true, true, KVM, true),
            (Auto, false, false, true, TCG, true),
            (Auto, true, false, false, TCG, false),
            (Auto, false, true, false, KVM, false),
            (Auto, false, false, false, TCG, false),
            (Firecracker, true, true, true, Backend::Firecracker, true),
            (Firecracker, true, true, false, Backend::Firecracker, true),
            (Firecracker, true, false, true, Backend::Firecracker, false),
            (Firecracker, false, true, true, Backend::Firecracker, false),
            (
                Firecracker,
                false,
                false,
                false,
                Backend::Firecracker,
                false,
            ),
            (Qemu, true, true, true, KVM, true),
            (Qemu, true, false, true, TCG, true),
            (Qemu, false, false, true, TCG, true),
            (Qemu, true, true, false, KVM, false),
            (Qemu, false, false, false, TCG, false),
        ];
        for (vmm, fc, kvm, qemu, backend, usable) in table {
            let c = decide_backend(vmm, &facts(fc, kvm, qemu));
            let case = format!("vmm={vmm} fc={fc} kvm={kvm} qemu={qemu}: {c:?}");
            assert_eq!(c.backend, backend, "{case}");
            assert_eq!(c.problem.is_none(), usable, "{case}");
            assert_eq!(c.require().is_ok(), usable, "{case}");
            assert!(c.reason.starts_with(&format!("vmm = {vmm}")), "{case}");
            if usable {
                let want = if backend == Backend::Firecracker {
                    FC
                } else {
                    QEMU
                };
                assert_eq!(c.binary.as_deref(), Some(Path::new(want)), "{case}");
            }
        }
    }

    #[test]
    fn reasons_explain_the_fallback() {
        let c = decide_backend(VmmChoice::Auto, &facts(true, false, true));
        assert!(
            c.reason.contains("kvm_pvm") && c.reason.contains("TCG"),
            "{}",
            c.reason
        );
        let c = decide_backend(VmmChoice::Auto, &facts(false, true, true));
        assert!(
            c.reason.contains("not installed") && c.reason.contains("KVM"),
            "{}",
            c.reason
        );
        let c = decide_backend(VmmChoice::Firecracker, &facts(true, false, true));
        let err = c.require().unwrap_err().to_string();
        assert!(
            err.contains("firecracker") && err.contains(r#"vmm = "auto""#),
            "{err}"
        );
        let c = decide_backend(VmmChoice::Auto, &facts(false, false, false));
        assert!(c.problem.unwrap().contains("qemu-system-x86"));
    }

    #[test]
    fn display_names() {
        assert_eq!(Backend::Firecracker.to_string(), "firecracker");
        assert_eq!(KVM.to_string(), "qemu-kvm");
        assert_eq!(TCG.to_string(), "qemu-tcg");
    }

    #[test]
    fn this_host_is_decided_from_real_probes() {
        let env = ProbeEnv::host();
        let c = choose_backend(VmmChoice::Qemu, None, None);
        let kvm = probe_kvm(&env.dev_kvm, &env.sys_root);
        let qemu = locate_program(QEMU_PROGRAM, None, &env.search_path);
        assert_eq!(c.problem.is_none(), qemu.is_ok(), "{c:?}");
        let accel = if kvm.usable() { Accel::Kvm } else { Accel::Tcg };
        assert_eq!(c.backend, Backend::Qemu { accel });
        // A configured path that does not exist is never replaced by a PATH lookup.
        let c = choose_backend(VmmChoice::Qemu, None, Some(Path::new("/nonexistent/qemu")));
        assert!(c.problem.unwrap().contains("/nonexistent/qemu"));
    }
}
